"""Data-parallel training under torchrun: 2 CPU processes equal 1 with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from multimodal.config import dump_yaml
from multimodal.errors import ConfigError
from multimodal.testing import tiny_config
from multimodal.checkpoint import find_checkpoint
from multimodal.training.distributed import Distributed, check_shardable
from multimodal.training.trainer import train


@pytest.mark.slow  # torchrun
def test_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    config = tiny_config(train={"max_steps": 4, "batch_size": 4, "checkpoint_every": 4,
                                "eval_every": 4, "num_threads": 1})
    path = tmp_path / "tiny.yaml"
    path.write_text(dump_yaml(config))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "multimodal", "train", str(path), "--out-dir", str(tmp_path / "ddp"),
         "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    train(config, out_dir=tmp_path / "single", progress=False)

    ddp = load_file(find_checkpoint(tmp_path / "ddp") / "model.safetensors")
    single = load_file(find_checkpoint(tmp_path / "single") / "model.safetensors")
    assert ddp.keys() == single.keys()
    worst = max((ddp[k] - single[k]).abs().max().item() for k in ddp)
    assert worst < 1e-5, f"parameters differ by up to {worst}"
    # The logged losses (averaged over the ranks) are the single run's, step by step, and
    # they moved: the runs trained. Rank 0 alone wrote the log.
    logs = [_losses(tmp_path / run / "log.csv") for run in ("ddp", "single")]
    assert len(logs[0]) == 4 and logs[0] == pytest.approx(logs[1], abs=1e-4)
    assert logs[0][-1] < logs[0][0]
    assert not (tmp_path / "ddp" / ".tokenizers-shared").exists()


_TEARDOWN = """
import os, torch
from multimodal.training.distributed import init_distributed, shutdown
dist = init_distributed(torch.device("cpu"))
torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))])  # imports torch._dynamo, as training does
dist.barrier()
shutdown(dist)
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
with open(os.path.join(os.path.dirname(__file__), f"rank{dist.rank}.txt"), "w") as fh:
    fh.write(str(sum(n.startswith("pt_gloo") for n in names)))  # gloo threads left
"""


@pytest.mark.slow  # torchrun
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads threads from /proc")
def test_the_process_group_and_its_threads_end_with_training(tmp_path):
    # Gloo worker threads left running into interpreter shutdown abort the process now and
    # then; they are left when something still holds the process group after it is destroyed.
    script = tmp_path / "teardown.py"
    script.write_text(_TEARDOWN)
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script)], capture_output=True, text=True, timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr[-3000:]
    left = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert left == ["0", "0"], f"gloo threads left after shutdown, per rank: {left}"


def _losses(path):
    import csv

    with open(path, newline="") as fh:
        return [float(row["loss"]) for row in csv.DictReader(fh)]


def test_more_processes_than_batch_shards_is_a_clear_error():
    with pytest.raises(ConfigError, match="train.batch_size 4 is the global batch and must split "
                                          "evenly over the 8 processes"):
        check_shardable(Distributed(rank=0, world_size=8), 4)
    with pytest.raises(ConfigError, match="use a multiple of 3"):
        check_shardable(Distributed(rank=0, world_size=3), 4)
    check_shardable(Distributed(rank=1, world_size=2), 4)


def test_each_rank_keeps_its_own_slice_of_the_global_batch():
    batch = {"ids": torch.arange(8).view(4, 2), "names": list("abcd"), "scale": 2.0}
    first = Distributed(rank=0, world_size=2).shard(batch, 4)
    second = Distributed(rank=1, world_size=2).shard(batch, 4)
    assert first["ids"].tolist() == [[0, 1], [2, 3]] and second["names"] == ["c", "d"]
    assert torch.equal(torch.cat([first["ids"], second["ids"]]), batch["ids"])
    assert first["scale"] == 2.0
