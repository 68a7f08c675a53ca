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

(c) The demo. ``multimodal demo`` in a fresh process: wall time and peak resident memory of
    the whole process (``getrusage`` of the child), as a user sees them.

Human-readable lines are printed as the parts run; the last line is one JSON object with every
figure.

Run (from the repository root)::

    .venv/bin/python benchmarks/training.py
    .venv/bin/python benchmarks/training.py --steps 20 --ddp-steps 20 --skip-demo
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
    args = parser.parse_args()

    from multimodal.config import load_config

    torch.set_num_threads(args.threads)
    report: dict = {"config": args.config}
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ.setdefault("MULTIMODAL_CACHE", str(tmp / "cache"))
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
        if not args.skip_demo:
            log("(c) multimodal demo")
            report["demo"] = demo(tmp)
            log(f"  {report['demo']['wall_s']:.1f} s, peak {report['demo']['peak_rss_mb']:.0f} MB:"
                f" {', '.join(report['demo']['files'])}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
