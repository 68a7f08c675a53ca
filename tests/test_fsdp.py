"""FSDP2 (train.strategy: fsdp), sharded checkpoints, activation checkpointing, the memory
plan and multi-node launches."""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from conftest import requires_fortunes
from safetensors.torch import load_file

from multimodal.checkpoint import (consolidate_checkpoint, find_checkpoint, is_sharded,
                                   list_checkpoints, read_weights, sharded_keys,
                                   sharded_model_weights)
from multimodal.cli import main
from multimodal.config import dump_yaml, validate_config
from multimodal.errors import ConfigError, InputError, TrainingError
from multimodal.pipelines import load_pipeline
from multimodal.testing import tiny_config
from multimodal.training.fsdp import repeated_blocks
from multimodal.training.plan import memory_plan, parse_memory, peak_allocated
from multimodal.training.trainer import Trainer, train

# 2 processes vs 1 on the same global batch: the sums of the batch are split differently,
# so the parameters agree to float rounding (measured: 1.5e-7 after 4 steps), not bitwise.
PARITY = 1e-5
_ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _torchrun(tmp_path, config: dict, out: str, *extra: str, nproc: int = 2):
    path = tmp_path / f"{out}.yaml"
    path.write_text(dump_yaml(config))
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         f"--nproc_per_node={nproc}", "-m", "multimodal", "train", str(path), "--out-dir",
         str(tmp_path / out), "--no-progress", *extra],
        capture_output=True, text=True, env=_ENV, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]


def _losses(path):
    with open(path, newline="") as fh:
        return [float(row["loss"]) for row in csv.DictReader(fh)]


def _fsdp_config(**train):
    return tiny_config(train={"max_steps": 6, "batch_size": 4, "checkpoint_every": 3,
                              "eval_every": 6, "num_threads": 1, "keep_checkpoints": 3,
                              "strategy": "fsdp", **train})


def _worst(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _without_last(src, dst):
    shutil.copytree(src, dst)
    shutil.rmtree(list_checkpoints(dst)[-1])


# -- 2 CPU processes (gloo) ----------------------------------------------------------------------
@requires_fortunes
@pytest.mark.slow  # torchrun
def test_fsdp_equals_one_process_and_its_sharded_checkpoint_resumes_with_two_and_one(tmp_path):
    config = _fsdp_config()
    _torchrun(tmp_path, config, "fsdp")
    last = find_checkpoint(tmp_path / "fsdp")
    assert is_sharded(last) and not (last / "model.safetensors").exists()
    assert len(list((last / "sharded").glob("*.safetensors"))) == 2  # one file per process

    # the same global batch in one process: the same parameters, the same logged losses
    single = dict(config, train=dict(config["train"], strategy="ddp"))
    train(single, out_dir=tmp_path / "single", progress=False)
    fsdp = sharded_model_weights(last)
    one = read_weights(find_checkpoint(tmp_path / "single") / "model.safetensors")
    assert _worst(fsdp, one) < PARITY
    losses = _losses(tmp_path / "fsdp" / "log.csv")
    assert losses == pytest.approx(_losses(tmp_path / "single" / "log.csv"), abs=1e-4)
    assert losses[-1] < losses[0]

    # resumed from step 3 with 2 processes: bitwise the run that was not interrupted,
    # weights and optimizer state alike
    _without_last(tmp_path / "fsdp", tmp_path / "again")
    _torchrun(tmp_path, config, "again", "--resume")
    resumed = find_checkpoint(tmp_path / "again")
    assert resumed.name == last.name
    whole = {k: v for k, v in _all_tensors(last).items()}
    assert _worst(_all_tensors(resumed), whole) == 0.0

    # resumed from step 3 with 1 process (strategy ddp reads the sharded checkpoint): the
    # state it starts from is the saved one exactly; it goes on as one process does
    _without_last(tmp_path / "fsdp", tmp_path / "one")
    trainer = Trainer(single, out_dir=tmp_path / "one", resume=True, progress=False)
    step3 = find_checkpoint(tmp_path / "one")
    saved = _all_tensors(step3)
    assert trainer.step == 3
    assert _worst({f"model.{k}": v for k, v in trainer.model.state_dict().items()},
                  {k: v for k, v in saved.items() if k.startswith("model.")}) == 0.0
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    state = {f"optim.{names[id(p)]}.{k}": v for p, s in trainer.optimizer.state.items()
             for k, v in s.items()}
    assert _worst(state, {k: v for k, v in saved.items() if k.startswith("optim.")}) == 0.0
    trainer.fit()
    continued = read_weights(find_checkpoint(tmp_path / "one") / "model.safetensors")
    assert _worst(continued, fsdp) < PARITY


@requires_fortunes
@pytest.mark.slow  # torchrun
def test_fsdp_keeps_sharded_ema_weights_that_equal_one_process_and_resume_exactly(tmp_path):
    config = _fsdp_config(ema_decay=0.5)
    _torchrun(tmp_path, config, "fsdp")
    last = find_checkpoint(tmp_path / "fsdp")
    single = dict(config, train=dict(config["train"], strategy="ddp"))
    train(single, out_dir=tmp_path / "single", progress=False)
    one = find_checkpoint(tmp_path / "single")
    ema = sharded_model_weights(last, ema=True)
    assert _worst(ema, read_weights(one / "ema.safetensors")) < PARITY
    assert _worst(ema, sharded_model_weights(last)) > 1e-4  # an average, not the weights

    # resumed with 2 processes: the EMA shards too, bitwise
    _without_last(tmp_path / "fsdp", tmp_path / "again")
    _torchrun(tmp_path, config, "again", "--resume")
    assert _worst(_all_tensors(find_checkpoint(tmp_path / "again")), _all_tensors(last)) == 0.0

    # generation reads the EMA weights, as from a whole checkpoint; so does the conversion
    pipe = load_pipeline("text-generation", last)
    assert _worst({k: v for k, v in pipe.backbone.state_dict().items()},
                  {k[len("backbone."):]: v for k, v in ema.items()
                   if k.startswith("backbone.")}) == 0.0
    whole = consolidate_checkpoint(last, tmp_path / "whole")
    assert _worst(read_weights(whole / "ema.safetensors"), ema) == 0.0
    assert _worst(read_weights(whole / "model.safetensors"), sharded_model_weights(last)) == 0.0


def _all_tensors(path) -> dict[str, torch.Tensor]:
    """Every tensor of a sharded checkpoint, whole."""
    from multimodal.checkpoint import read_sharded

    template = {}
    with __import__("safetensors").safe_open(
            str(next((path / "sharded").glob("*.safetensors"))), framework="pt"):
        pass
    for key, shape in sharded_keys(path).items():
        template[key] = torch.empty(shape, dtype=torch.float32)
    read_sharded(path, template)
    return template


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@requires_fortunes
@pytest.mark.slow  # two torchrun "nodes" on loopback
def test_two_nodes_on_loopback_equal_one_process(tmp_path):
    config = _fsdp_config(max_steps=3, checkpoint_every=3, eval_every=3)
    path = tmp_path / "tiny.yaml"
    path.write_text(dump_yaml(config))
    endpoint = f"127.0.0.1:{_free_port()}"
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
         "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", "--rdzv-id=loopback",
         "-m", "multimodal", "train", str(path), "--out-dir", str(tmp_path / "nodes"),
         "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_ENV) for _ in range(2)]
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    single = dict(config, train=dict(config["train"], strategy="ddp"))
    train(single, out_dir=tmp_path / "single", progress=False)
    two = sharded_model_weights(find_checkpoint(tmp_path / "nodes"))
    assert len(list((find_checkpoint(tmp_path / "nodes") / "sharded").glob("*"))) == 2
    one = read_weights(find_checkpoint(tmp_path / "single") / "model.safetensors")
    assert _worst(two, one) < PARITY


_CUDA_CHECK = """
import json, sys, torch
from multimodal.config import parse_yaml
from multimodal.training.trainer import Trainer
config = parse_yaml(open(sys.argv[1]).read(), sys.argv[1])
trainer = Trainer(config, out_dir=sys.argv[2], progress=False)
block = trainer.model.backbone.blocks[0].attn
seen = []
block.register_forward_pre_hook(lambda m, a: seen.append(str(m.qkv.weight.dtype)))
result = trainer.fit()
if trainer.dist.is_main:
    json.dump({"dtypes": sorted(set(seen)), "loss": result["loss"],
               "stored": str(next(trainer.model.parameters()).dtype)},
              open(sys.argv[3], "w"))
"""


@requires_fortunes
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (NCCL, bf16)")
def test_fsdp_on_cuda_computes_in_bf16_and_keeps_fp32_weights(tmp_path):
    nproc = min(2, torch.cuda.device_count())
    config = _fsdp_config(batch_size=4, precision="bf16", device="cuda", max_steps=6)
    path = tmp_path / "cuda.yaml"
    path.write_text(dump_yaml(config))
    script = tmp_path / "check.py"
    script.write_text(_CUDA_CHECK)
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         f"--nproc_per_node={nproc}", str(script), str(path), str(tmp_path / "run"),
         str(tmp_path / "out.json")], capture_output=True, text=True, env=_ENV, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    import json

    out = json.loads((tmp_path / "out.json").read_text())
    assert out["dtypes"] == ["torch.bfloat16"]  # gathered for the compute in bf16
    assert out["stored"] == "torch.float32"  # the sharded weights stay fp32
    weights = sharded_model_weights(find_checkpoint(tmp_path / "run"))
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values())
    losses = _losses(tmp_path / "run" / "log.csv")
    assert losses[-1] < losses[0]


# -- one process ---------------------------------------------------------------------------------
def test_fsdp_without_torchrun_is_refused_before_any_work(tmp_path, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="strategy is 'fsdp'.*not started by torchrun.*"
                                          "torchrun --standalone --nproc_per_node=N"):
        Trainer(tiny_config(train={"strategy": "fsdp"}), out_dir=tmp_path / "run",
                progress=False)
    assert not (tmp_path / "run").exists()


def test_an_unknown_strategy_is_a_config_error():
    with pytest.raises(ConfigError, match=r"'train\.strategy' must be one of 'ddp', 'fsdp', got 'fsd'"):
        validate_config(tiny_config(train={"strategy": "fsd"}))
    validate_config(tiny_config(train={"strategy": "fsdp", "ema_decay": 0.99}))  # sharded too


def test_repeated_blocks_are_the_backbone_blocks():
    from multimodal.testing import tiny_backbone

    names = [n for n, _ in repeated_blocks(torch.nn.ModuleDict({"backbone": tiny_backbone()}))]
    assert names == ["backbone.blocks.0", "backbone.blocks.1"]


@requires_fortunes
def test_a_sharded_checkpoint_resumes_exactly_generates_and_converts(tmp_path):
    # A sharded checkpoint written by one process (the code path of every rank): resuming
    # from it is bitwise the uninterrupted run; generate reads it as it is; converted, it is
    # the single-folder format with the same weights.
    config = tiny_config(train={"max_steps": 4, "checkpoint_every": 4, "eval_every": 4})
    train(config, out_dir=tmp_path / "whole", progress=False)
    trainer = Trainer(dict(config, train=dict(config["train"], max_steps=2)),
                      out_dir=tmp_path / "sharded", progress=False)
    trainer.fit()
    sharded = trainer._save_sharded()  # the step-2 checkpoint again, sharded
    assert is_sharded(sharded) and not (sharded / "model.safetensors").exists()
    resumed = Trainer(config, out_dir=tmp_path / "sharded", resume=True, progress=False,
                      allow_changes=["max_steps"])
    assert resumed.step == 2
    resumed.fit()
    end = find_checkpoint(tmp_path / "sharded") / "model.safetensors"
    whole = find_checkpoint(tmp_path / "whole") / "model.safetensors"
    assert _worst(load_file(end), load_file(whole)) == 0.0

    converted = consolidate_checkpoint(sharded, tmp_path / "converted")
    assert _worst(load_file(converted / "model.safetensors"),
                  sharded_model_weights(sharded)) == 0.0
    texts = [load_pipeline("text-generation", str(p))("The", max_new_tokens=8, seed=0).texts
             for p in (sharded, converted)]
    assert texts[0] == texts[1]
    with pytest.raises(Exception, match="not a sharded checkpoint"):
        consolidate_checkpoint(converted, tmp_path / "again")


@requires_fortunes
def test_activation_checkpointing_trains_the_same_weights(tmp_path):
    results = {}
    for on in (False, True):
        config = tiny_config(train={"max_steps": 3, "checkpoint_every": 3, "eval_every": 3,
                                    "activation_checkpointing": on},
                             backbone={"dropout": 0.1})  # the replayed masks must match
        train(config, out_dir=tmp_path / str(on), progress=False)
        results[on] = load_file(find_checkpoint(tmp_path / str(on)) / "model.safetensors")
    assert _worst(results[True], results[False]) < 1e-6


# -- the memory plan -----------------------------------------------------------------------------
@requires_fortunes
@pytest.mark.parametrize("dim,depth,checkpointing", [(32, 2, False), (32, 2, True),
                                                     (128, 4, False), (128, 4, True)])
def test_the_plan_is_within_30_percent_of_the_measured_peak(tmp_path, dim, depth,
                                                            checkpointing):
    # Measured: the weights' bytes (held before the steps) plus the peak of what two
    # training steps allocate through PyTorch's CPU allocator (profiler memory events):
    # gradients and optimizer state appear in the first step, activations in each.
    config = tiny_config(backbone={"dim": dim, "depth": depth, "num_heads": 4},
                         tokenizers={"text": {"vocab_size": 512}},
                         train={"batch_size": 8, "max_steps": 2,
                                "activation_checkpointing": checkpointing})
    plan = memory_plan(config)
    trainer = Trainer(config, out_dir=tmp_path / "run", progress=False)
    weights = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
    _, peak = peak_allocated(lambda: [trainer.train_step() for _ in range(2)])
    trainer.close()
    measured = weights + peak
    assert plan.params == weights
    assert abs(plan.total - measured) / measured < 0.30, (plan.format(), measured)


def test_the_plan_shards_with_fsdp_and_saves_with_checkpointing():
    base = tiny_config(backbone={"dim": 64, "depth": 4, "num_heads": 4},
                       train={"batch_size": 8})
    ddp = memory_plan(base, processes=2)
    fsdp = memory_plan(dict(base, train=dict(base["train"], strategy="fsdp")), processes=2)
    ckpt = memory_plan(dict(base, train=dict(base["train"], activation_checkpointing=True)))
    assert fsdp.params < 0.6 * ddp.params and fsdp.optimizer < 0.6 * ddp.optimizer
    assert ckpt.activations < 0.5 * memory_plan(base).activations
    limit = memory_plan(base).total_at(16)
    fitted = memory_plan(base, memory=limit)
    assert fitted.largest_batch == 16 and fitted.fits
    assert memory_plan(base, memory=limit // 10).largest_batch < 8


def test_parse_memory():
    assert parse_memory("24GB") == 24 * 10**9 and parse_memory("1GiB") == 2**30
    assert parse_memory("512 MB") == 512 * 10**6
    for bad in ("lots", "-1GB", "3 parsecs"):
        with pytest.raises(InputError, match="not a size"):
            parse_memory(bad)


def test_a_run_that_does_not_fit_is_refused_with_the_plan(tmp_path):
    with pytest.raises(TrainingError, match="does not fit in memory(.|\n)*memory plan, per "
                                            "process(.|\n)*largest global batch"):
        Trainer(tiny_config(), out_dir=tmp_path / "run", progress=False, memory=10_000)
    assert not (tmp_path / "run").exists()


def test_train_plan_prints_and_exits(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(dump_yaml(tiny_config()))
    assert main(["train", str(path), "--plan", "--memory", "24GB", "--processes", "2",
                 "train.strategy=fsdp", "--out-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "strategy fsdp, 2 processes" in out and "fits; the largest global batch" in out
    assert main(["train", str(path), "--plan", "--memory", "10KB"]) == 1
    assert "does NOT fit" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()  # a plan trains nothing
