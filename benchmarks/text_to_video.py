"""Benchmark the text-to-video pipeline: speed, batched guidance, and motion against a
frame-by-frame image baseline.

Three parts, in one run:

(a) Speed at the default settings (DPM-Solver++, 25 steps, guidance 4, the model's training
    length in frames, one clip per call): seconds per clip and per frame, best of repeats,
    VAE decoding included.

(b) Batched guidance. The unconditional and conditional branches of classifier-free guidance
    in one forward (``batch_guidance = True``, the default) against two forwards per step, at 1
    and 4 clips per call (target >= 1.4x at one clip, as for text-to-image).

(c) Motion. Direction accuracy (the centre of mass's least-squares trajectory, as in
    ``multimodal evaluate text-to-video``) of clips from held-out prompts of every class and
    direction, for the video model and for the text-to-image model applied frame by frame with
    the same caption (target: the video model at least 50 points above the baseline).

Human-readable lines are printed as the parts run; the last line is one JSON object with every
figure.

Run (from the repository root)::

    .venv/bin/python benchmarks/text_to_video.py --checkpoint runs/text_to_video_moving
    .venv/bin/python benchmarks/text_to_video.py --smoke     # trains a toy model; a minute

Timings on a shared or loaded machine are noisy: prefer ``--threads`` below the number of idle
cores, and read the best-of-repeats figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import best_of, log  # noqa: E402

from multimodal.pipelines import load_pipeline  # noqa: E402


def part_a(pipe, args) -> dict:
    frames = pipe.denoiser.num_frames
    log(f"(a) speed at the defaults: {args.steps} steps, guidance 4, {frames} frames, one clip")
    best = best_of({"clip": lambda: pipe("a sneaker moving left", seed=0, progress=False,
                                         num_inference_steps=args.steps)}, args.repeats)
    seconds = best["clip"]
    log(f"    {seconds:.2f} s per clip, {seconds / frames * 1e3:.1f} ms per frame")
    return {"steps": args.steps, "num_frames": frames, "seconds_per_clip": seconds,
            "seconds_per_frame": seconds / frames}


def part_b(pipe, args) -> dict:
    log("(b) batched classifier-free guidance vs two forwards per step")
    out = {}
    for samples in (1, 4):
        def run(batched: bool, samples=samples):
            pipe.batch_guidance = batched
            try:
                pipe("a bag going up", seed=0, num_inference_steps=args.steps,
                     num_samples=samples, progress=False)
            finally:
                pipe.batch_guidance = True
        best = best_of({"batched": lambda: run(True), "two": lambda: run(False)}, args.repeats)
        speedup = best["two"] / best["batched"]
        log(f"    {samples} clip(s): batched {best['batched']:.2f} s, two forwards "
            f"{best['two']:.2f} s, speed-up {speedup:.2f}x (target >= 1.4x)")
        out[f"samples_{samples}"] = {"batched_s": best["batched"], "two_forwards_s": best["two"],
                                     "speedup": speedup}
    out["meets_target"] = out["samples_1"]["speedup"] >= 1.4
    return out


def part_c(pipe, image_pipe, args) -> dict:
    from multimodal.evaluation.video import (centre_of_mass, evaluation_prompts,
                                             generate_frame_by_frame, generate_video_clips,
                                             motion_direction)

    prompts = evaluation_prompts(args.per_class)
    directions = [d for _, d, _, count in prompts for _ in range(count)]
    frames = pipe.denoiser.num_frames
    log(f"(c) direction accuracy, {len(directions)} clips of held-out prompts: video model vs "
        "the image model frame by frame")
    sampling = dict(num_inference_steps=args.steps, guidance_scale=4.0)
    out = {}
    for name, make in (
            ("video", lambda: generate_video_clips(pipe, prompts, seed=args.seed, **sampling)),
            ("frame_by_frame_image", lambda: generate_frame_by_frame(
                image_pipe, prompts, seed=args.seed, num_frames=frames,
                canvas_size=pipe.vae.image_size, **sampling))):
        start = time.perf_counter()
        clips = make()
        seconds = time.perf_counter() - start
        moved = motion_direction(centre_of_mass((clips + 1) / 2))
        accuracy = sum(m == d for m, d in zip(moved, directions)) / len(directions)
        out[name] = {"direction_accuracy": accuracy,
                     "not_moving_rate": sum(m is None for m in moved) / len(moved),
                     "seconds_per_clip": seconds / len(directions)}
        log(f"    {name}: direction accuracy {accuracy * 100:.1f}%, "
            f"{seconds / len(directions):.2f} s per clip")
    out["margin_points"] = 100 * (out["video"]["direction_accuracy"]
                                  - out["frame_by_frame_image"]["direction_accuracy"])
    out["meets_target"] = out["margin_points"] >= 50
    log(f"    margin {out['margin_points']:+.1f} points (target >= +50)")
    return out


def smoke_checkpoints(directory: Path) -> tuple[Path, Path]:
    """Train the toy text-to-video model of the tests (seconds) and save a toy image model."""
    from multimodal.testing import tiny_image_checkpoint, tiny_video_config
    from multimodal.training.trainer import train

    log("--smoke: training a toy text-to-video model")
    train(tiny_video_config(train={"max_steps": 10, "eval_every": 0}), out_dir=directory / "video",
          progress=False)
    return directory / "video", tiny_image_checkpoint(directory / "image", denoiser="latent_dit")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a trained text-to-video run or checkpoint")
    parser.add_argument("--baseline-checkpoint", default=None,
                        help="text-to-image checkpoint of the baseline (default: embedded)")
    parser.add_argument("--smoke", action="store_true",
                        help="train a toy model and run every part with small numbers")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=4, help="clips per class in (c)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", nargs="*", default=[], choices=["a", "b", "c"])
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.checkpoint and not args.smoke:
        parser.error("pass --checkpoint DIR (a trained run) or --smoke")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, baseline = args.checkpoint, args.baseline_checkpoint
        if args.smoke:
            checkpoint, baseline = smoke_checkpoints(Path(tmp))
            args.repeats, args.per_class, args.steps = min(args.repeats, 2), 1, 4
        pipe = load_pipeline("text-to-video", checkpoint)
        log(f"checkpoint {pipe.checkpoint_id}, {torch.get_num_threads()} threads")
        report = {"checkpoint_id": pipe.checkpoint_id, "threads": torch.get_num_threads(),
                  "smoke": args.smoke}
        if "a" not in args.skip:
            report["a"] = part_a(pipe, args)
        if "b" not in args.skip:
            report["b"] = part_b(pipe, args)
        if "c" not in args.skip:
            image_pipe = load_pipeline("text-to-image", baseline)
            report["baseline_checkpoint_id"] = image_pipe.checkpoint_id
            report["c"] = part_c(pipe, image_pipe, args)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
