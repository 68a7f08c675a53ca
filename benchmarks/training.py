"""Benchmark joint training: throughput per modality, data parallelism, and the demo.

Three parts, in one run:

(a) Joint throughput. One trainer of a joint config (default ``configs/tiny.yaml``: every
    decoder on one backbone); each modality's sample + forward + backward is timed on its own,
    alternating over the modalities for ``--steps`` rounds (best of rounds per modality).
    Reports samples per second for each modality and each decoder's share of a joint step.

(b) Data parallelism. ``torchrun --standalone --nproc_per_node=2`` (one thread per process) and
    one process train the same config and global batch for ``--ddp-steps``; the parameters must
    agree (max abs difference) and the efficiency is the speed-up over one process with one
    thread, divided by 2 (1.0: perfect), also given against one process with 2 threads.

(d) Sharding. On a text config (default ``configs/text_tiny.yaml``, ``--fsdp-config``):
    FSDP2 (``train.strategy=fsdp``, eager and with ``train.compile``) and DDP on 2 processes
    against one process, same global batch, ``--fsdp-steps`` steps: the largest parameter
    difference and the throughput ratio.
    Then per process, under torchrun, with and without sharding and activation
    checkpointing: the measured peak memory (the weights held plus the peak of what two
    training steps allocate through PyTorch's CPU allocator, from the profiler's memory
    events) next to the memory plan's prediction (``multimodal train --plan``).

(c) The demo. ``multimodal demo`` in a fresh process: wall time and peak resident memory of
    the whole process (``getrusage`` of the child), as a user sees them.

Human-readable lines are printed as the parts run; the last line is one JSON object with every
figure.

Run (from the repository root)::

    .venv/bin/python benchmarks/training.py
    .venv/bin/python benchmarks/training.py --steps 20 --ddp-steps 20 --skip-demo
    .venv/bin/python benchmarks/training.py --only-sharding     # part (d) alone
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def joint_throughput(config: dict, steps: int, tmp: Path) -> dict:
    from multimodal.training.trainer import Trainer, step_generator

    trainer = Trainer(config, out_dir=tmp / "joint", progress=False)
    trainer.model.train()
    times: dict[str, list[float]] = {name: [] for name in trainer.train_data}  # (none resting)
    for step in range(steps):
        for i, (name, modality) in enumerate(trainer.modalities.items()):
            if name not in trainer.train_data:
                continue
            start = time.perf_counter()
            batch = modality.sample(trainer.train_data[name], batch_size=trainer.cfg.batch_size,
                                    generator=step_generator(0, step, 0, i))
            loss, _ = modality.loss(trainer.model.backbone, trainer.model.decoders[name], batch)
            loss.backward()
            times[name].append(time.perf_counter() - start)
        trainer.optimizer.zero_grad(set_to_none=True)
    best = {name: min(t) for name, t in times.items()}
    total = sum(best.values())
    return {"batch_size": trainer.cfg.batch_size,
            "samples_per_s": {n: trainer.cfg.batch_size / t for n, t in best.items()},
            "share": {n: t / total for n, t in best.items()},
            "joint_step_s": total}


def _log_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def data_parallel(config_path: Path, overrides: list[str], steps: int, tmp: Path) -> dict:
    from safetensors.torch import load_file

    from multimodal.checkpoint import find_checkpoint

    args = [str(config_path), f"train.max_steps={steps}", f"train.checkpoint_every={steps}",
            "train.eval_every=0", "train.log_every=1", *overrides]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    runs = {"ddp_2x1": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node=2", "-m", "multimodal", "train", *args,
                        "train.num_threads=1"],
            "single_1": [sys.executable, "-m", "multimodal", "train", *args,
                         "train.num_threads=1"],
            "single_2": [sys.executable, "-m", "multimodal", "train", *args,
                         "train.num_threads=2"]}
    for name, command in runs.items():
        out = tmp / name
        proc = subprocess.run(command + ["--out-dir", str(out), "--no-progress"],
                              capture_output=True, text=True, env=env)
        if proc.returncode:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-2000:]}")
        # the trainer logs tokens per second averaged over the run (all ranks together)
        log(f"  {name}: {float(_log_rows(out / 'log.csv')[-1]['tokens_per_s']):,.0f} tokens/s")
    a = load_file(str(find_checkpoint(tmp / "ddp_2x1") / "model.safetensors"))
    b = load_file(str(find_checkpoint(tmp / "single_1") / "model.safetensors"))
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    rates = {name: float(_log_rows(tmp / name / "log.csv")[-1]["tokens_per_s"])
             for name in runs}
    return {"steps": steps, "max_param_diff": diff,
            "tokens_per_s": rates,
            "speedup_vs_1x1": rates["ddp_2x1"] / rates["single_1"],
            "efficiency_vs_1x1": rates["ddp_2x1"] / rates["single_1"] / 2,
            "speedup_vs_1x2": rates["ddp_2x1"] / rates["single_2"]}


_MEASURE = """
import json, sys, torch, warnings
warnings.filterwarnings("ignore")
from multimodal.config import load_config
from multimodal.training.plan import memory_plan, peak_allocated
from multimodal.training.trainer import Trainer
config = load_config(sys.argv[1], sys.argv[4:])
trainer = Trainer(config, out_dir=sys.argv[2], progress=False)
plan = memory_plan(config, processes=trainer.dist.world_size)
held = sum(p.to_local().numel() * p.element_size() if hasattr(p, "to_local")
           else p.numel() * p.element_size() for p in trainer.model.parameters())
_, peak = peak_allocated(lambda: [trainer.train_step() for _ in range(2)])
trainer.close()
with open(sys.argv[3] + f".{trainer.dist.rank}", "w") as fh:
    json.dump({"measured": held + peak, "planned": plan.total}, fh)
"""


def sharding(config_path: Path, steps: int, tmp: Path) -> dict:
    from multimodal.checkpoint import find_checkpoint, read_weights

    args = [str(config_path), f"train.max_steps={steps}", f"train.checkpoint_every={steps}",
            "train.eval_every=0", "train.log_every=1", "train.num_threads=1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2"]
    runs = {"fsdp_2x1": torchrun + ["-m", "multimodal", "train", *args,
                                    "train.strategy=fsdp"],
            # compiled after sharding (its tokens/s include the compile, once per process)
            "fsdp_compile_2x1": torchrun + ["-m", "multimodal", "train", *args,
                                            "train.strategy=fsdp", "train.compile=true"],
            "ddp_2x1": torchrun + ["-m", "multimodal", "train", *args],
            "single_1": [sys.executable, "-m", "multimodal", "train", *args]}
    for name, command in runs.items():
        proc = subprocess.run(command + ["--out-dir", str(tmp / name), "--no-progress"],
                              capture_output=True, text=True, env=env)
        if proc.returncode:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-2000:]}")
    weights = {name: read_weights(find_checkpoint(tmp / name) / "model.safetensors")
               for name in runs}  # (a sharded checkpoint is read whole)
    rates = {name: float(_log_rows(tmp / name / "log.csv")[-1]["tokens_per_s"])
             for name in runs}
    diff = {name: max((weights[name][k] - weights["single_1"][k]).abs().max().item()
                      for k in weights[name]) for name in runs if name != "single_1"}
    report = {"steps": steps, "max_param_diff_vs_single": diff, "tokens_per_s": rates,
              "throughput_vs_single": {n: rates[n] / rates["single_1"]
                                       for n in runs if n != "single_1"}}
    script = tmp / "measure.py"
    script.write_text(_MEASURE)
    memory = {}
    for name, extra in {"ddp": [], "ddp_checkpointing": ["train.activation_checkpointing=true"],
                        "fsdp": ["train.strategy=fsdp"],
                        "fsdp_checkpointing": ["train.strategy=fsdp",
                                               "train.activation_checkpointing=true"]}.items():
        out = tmp / f"memory_{name}.json"
        proc = subprocess.run(torchrun + [str(script), str(config_path),
                                          str(tmp / f"memory_{name}"), str(out),
                                          "train.num_threads=1", *extra],
                              capture_output=True, text=True, env=env)
        if proc.returncode:
            raise SystemExit(f"memory {name} failed:\n{proc.stderr[-2000:]}")
        ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in (0, 1)]
        memory[name] = {"measured_mb": [r["measured"] / 1e6 for r in ranks],
                        "planned_mb": ranks[0]["planned"] / 1e6,
                        "plan_over_measured": ranks[0]["planned"] / ranks[0]["measured"]}
    report["memory_per_process"] = memory
    return report


def demo(tmp: Path) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "multimodal", "demo", "--out",
                           str(tmp / "demo")], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"demo failed:\n{proc.stderr[-2000:]}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"wall_s": wall, "peak_rss_mb": peak_kb / 1024,
            "files": sorted(p.name for p in (tmp / "demo").iterdir())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"))
    parser.add_argument("--steps", type=int, default=10, help="rounds of part (a)")
    parser.add_argument("--ddp-steps", type=int, default=10, help="steps of part (b)")
    parser.add_argument("--threads", type=int, default=2, help="threads of part (a)")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--fsdp-config", default=str(ROOT / "configs" / "text_tiny.yaml"),
                        help="config of part (d)")
    parser.add_argument("--fsdp-steps", type=int, default=10, help="steps of part (d)")
    parser.add_argument("--only-sharding", action="store_true", help="part (d) alone")
    args = parser.parse_args()

    from multimodal.config import load_config

    torch.set_num_threads(args.threads)
    report: dict = {"config": args.config}
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ.setdefault("MULTIMODAL_CACHE", str(tmp / "cache"))
        if args.only_sharding:
            return _report_sharding(report, args, tmp)
        log(f"(a) joint throughput, {args.steps} rounds, {args.threads} threads")
        report["joint"] = joint_throughput(load_config(args.config), args.steps, tmp)
        for name, rate in report["joint"]["samples_per_s"].items():
            log(f"  {name:8s} {rate:8.1f} samples/s  "
                f"{100 * report['joint']['share'][name]:5.1f}% of a joint step")
        log(f"(b) 2-process data parallelism vs 1 process, {args.ddp_steps} steps")
        report["ddp"] = data_parallel(Path(args.config), [], args.ddp_steps, tmp)
        log(f"  parameters differ by at most {report['ddp']['max_param_diff']:.2e}; "
            f"speed-up {report['ddp']['speedup_vs_1x1']:.2f}x over 1 thread "
            f"(efficiency {report['ddp']['efficiency_vs_1x1']:.2f}), "
            f"{report['ddp']['speedup_vs_1x2']:.2f}x over 1 process with 2 threads")
        _report_sharding(report, args, tmp, last=False)
        if not args.skip_demo:
            log("(c) multimodal demo")
            report["demo"] = demo(tmp)
            log(f"  {report['demo']['wall_s']:.1f} s, peak {report['demo']['peak_rss_mb']:.0f} MB:"
                f" {', '.join(report['demo']['files'])}")
    print(json.dumps(report))


def _report_sharding(report: dict, args, tmp: Path, last: bool = True) -> None:
    log(f"(d) FSDP2 and DDP vs 1 process on {Path(args.fsdp_config).name}, "
        f"{args.fsdp_steps} steps; memory per process")
    report["sharding"] = sharding(Path(args.fsdp_config), args.fsdp_steps, tmp)
    shard = report["sharding"]
    for name in shard["throughput_vs_single"]:
        log(f"  {name}: parameters differ by at most "
            f"{shard['max_param_diff_vs_single'][name]:.2e}, throughput "
            f"{shard['throughput_vs_single'][name]:.2f}x one process")
    for name, row in shard["memory_per_process"].items():
        log(f"  {name:18s} measured {row['measured_mb'][0]:.2f} / {row['measured_mb'][1]:.2f} "
            f"MB (rank 0 / 1), planned {row['planned_mb']:.2f} MB "
            f"({row['plan_over_measured']:.2f}x)")
    if last:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
