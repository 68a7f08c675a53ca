"""Benchmark the text-to-audio stack: its vocoders against their baselines.

(a) Fast WaveNet. Cached autoregressive generation (per-layer queues, Paine et al. 2016)
    against the naive loop that runs the full forward over the receptive-field window for
    every sample, for 1 s of audio (16,000 samples). The naive loop over all 16,000 samples
    takes minutes, so it is timed over ``--naive-samples`` samples once its window is full
    (its per-sample cost is constant from then on: the window length is the receptive field)
    and extrapolated; the cached loop is timed over the whole second, best of 2 (eager, and with the
    ``torch.compile``d step unless ``--no-compile``). Target: >= 100x.

(b) Real-time factor (seconds of compute per second of 16 kHz audio) of the Parallel WaveGAN
    generator (target <= 0.05 on 2 threads), of cached WaveNet, and of Griffin-Lim
    (``LogMel.griffin_lim``, 64 iterations), the baseline.

(c) End-to-end text-to-WAV real-time factor of the pipeline (espeak-ng phonemes, backbone,
    mel decoder, vocoder, peak normalisation, WAV encoding) for each vocoder, over
    :data:`PROMPTS` (the autoregressive vocoder on the first one only).

Human-readable lines are printed as the parts run; the last line is one JSON object with every
figure. With ``--checkpoint`` (a text-to-audio checkpoint or run directory) the vocoders are the
trained ones and (c) runs on that model; without it (a) and (b) use the constructor defaults
with random weights (timings do not depend on the weights) and (c) uses the embedded default
model when there is one.

Run (from the repository root)::

    .venv/bin/python benchmarks/text_to_audio.py                  # untrained default sizes
    .venv/bin/python benchmarks/text_to_audio.py --checkpoint runs/text_to_audio_speech

Timings on a shared or loaded machine are noisy: prefer ``--threads`` below the number of idle
cores, and read the best-of-repeats figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import log, timed  # noqa: E402

from multimodal.modalities.audio.features import SAMPLE_RATE, LogMel  # noqa: E402
from multimodal.modalities.audio.wavenet import (ParallelWaveGANGenerator,  # noqa: E402
                                                 WaveNetVocoder)

PROMPTS = ("seven", "A pair of trousers and an ankle boot.",
           "The secret of life is to get up early, and then to sleep all afternoon.")


def build_vocoders(pipe=None, *, wavenet_args: dict | None = None,
                   parallel_args: dict | None = None
                   ) -> tuple[WaveNetVocoder, ParallelWaveGANGenerator]:
    """The trained vocoders of a text-to-audio pipeline, or (without one) the two vocoders at
    their constructor defaults updated by ``wavenet_args`` and ``parallel_args``."""
    if pipe is not None:
        return pipe.audio.vocoders["autoregressive"].eval(), pipe.audio.vocoders["parallel"].eval()
    return (WaveNetVocoder(**(wavenet_args or {})).eval(),
            ParallelWaveGANGenerator(**(parallel_args or {})).eval())


def part_c(pipe, *, repeats: int = 2) -> dict:
    """End-to-end text-to-WAV real-time factor per vocoder (best of ``repeats``)."""
    from multimodal.modalities.audio.files import wav_bytes

    log("(c) end-to-end text -> WAV real-time factor")
    out = {}
    for vocoder in pipe.audio.available_vocoders:
        prompts = PROMPTS[:1] if vocoder == "autoregressive" else PROMPTS
        best, audio_s = float("inf"), 0.0
        for _ in range(1 if vocoder == "autoregressive" else repeats):
            start = time.perf_counter()
            audio_s = 0.0
            for i, prompt in enumerate(prompts):
                result = pipe(prompt, vocoder=vocoder, seed=i, progress=False)
                wav_bytes(result.audios[0], result.sample_rate)
                audio_s += len(result.audios[0]) / result.sample_rate
            best = min(best, time.perf_counter() - start)
        out[vocoder] = {"real_time_factor": best / audio_s, "audio_seconds": audio_s}
        log(f"    {vocoder:<18}{best / audio_s:>10.4f}  ({audio_s:.1f} s of audio)")
    return out


def mel_of(seconds: float, hop_length: int, seed: int = 0) -> torch.Tensor:
    """A (1, 80, frames) normalised mel covering ``seconds`` (random: timing only)."""
    frames = max(1, round(seconds * SAMPLE_RATE / hop_length))
    return torch.randn(1, 80, frames, generator=torch.Generator().manual_seed(seed))


def part_a(ar: WaveNetVocoder, *, naive_samples: int = 300, compile: bool = True) -> dict:
    """Cached vs naive autoregressive generation of 1 s of audio."""
    log(f"(a) Fast WaveNet (cached) vs the naive loop, 1 s of audio; receptive field "
        f"{ar.receptive_field} samples, {len(ar.dilations)} layers, "
        f"{ar.residual_channels} residual channels")
    mel = mel_of(1.0, ar.hop_length)
    num_samples = mel.shape[-1] * ar.hop_length
    seed = torch.Generator().manual_seed(0)
    window = ar.receptive_field
    # the naive loop: time samples [window, window + naive_samples) (full window) only
    fill = timed(lambda: ar.generate_naive(mel, window, generator=seed.manual_seed(0)))
    total = timed(lambda: ar.generate_naive(mel, window + naive_samples,
                                            generator=seed.manual_seed(0)))
    naive_per_sample = max(total - fill, 1e-9) / naive_samples
    naive_1s = naive_per_sample * SAMPLE_RATE
    out = {"receptive_field": window, "naive_per_sample_s": naive_per_sample,
           "naive_1s_extrapolated_s": naive_1s}
    cached = min(timed(lambda: ar.generate(mel, generator=seed.manual_seed(0)))
                 for _ in range(2))
    out["cached_1s_s"] = cached / num_samples * SAMPLE_RATE
    out["cached_samples_per_s"] = num_samples / cached
    out["speedup"] = naive_1s / out["cached_1s_s"]
    log(f"    naive   {naive_per_sample * 1e3:8.2f} ms/sample (timed over {naive_samples} "
        f"full-window samples) -> {naive_1s:8.1f} s per second of audio (extrapolated)")
    log(f"    cached  {cached / num_samples * 1e6:8.1f} us/sample "
        f"({out['cached_samples_per_s']:.0f} samples/s) -> {out['cached_1s_s']:8.2f} s per "
        f"second; speed-up {out['speedup']:.0f}x (target >= 100x)")
    if compile:
        compile_s = timed(lambda: ar.generate(mel[..., :2], compile=True))
        compiled = min(timed(lambda: ar.generate(mel, generator=seed.manual_seed(0),
                                                 compile=True)) for _ in range(2))
        same = (ar.generate(mel[..., :8], generator=seed.manual_seed(1)) ==
                ar.generate(mel[..., :8], generator=seed.manual_seed(1), compile=True))
        out["compiled_equal_fraction"] = same.float().mean().item()  # near-ties may diverge
        out.update(compile_s=compile_s, compiled_1s_s=compiled / num_samples * SAMPLE_RATE,
                   compiled_samples_per_s=num_samples / compiled,
                   compiled_speedup=naive_1s / (compiled / num_samples * SAMPLE_RATE))
        log(f"    compiled {compiled / num_samples * 1e6:7.1f} us/sample "
            f"({out['compiled_samples_per_s']:.0f} samples/s) -> {out['compiled_1s_s']:8.2f} s "
            f"per second; speed-up {out['compiled_speedup']:.0f}x; compiled once in "
            f"{compile_s:.1f} s; {out['compiled_equal_fraction'] * 100:.1f}% of 2,048 samples "
            "identical to the eager loop's")
    out["meets_target"] = max(out["speedup"], out.get("compiled_speedup", 0)) >= 100
    return out


def part_b(ar: WaveNetVocoder, parallel: ParallelWaveGANGenerator, *, seconds: float = 4.0,
           repeats: int = 3, cached_rtf: float | None = None) -> dict:
    """Real-time factors of the vocoders and of Griffin-Lim."""
    log(f"(b) real-time factor (compute s per s of audio), {seconds:g} s clips, best of "
        f"{repeats}")
    mel = mel_of(seconds, parallel.hop_length)
    audio_s = mel.shape[-1] * parallel.hop_length / SAMPLE_RATE
    with torch.inference_mode():
        parallel(mel[..., :4])  # warm-up
        pwg = min(timed(lambda: parallel(mel, generator=torch.Generator().manual_seed(0)))
                  for _ in range(repeats)) / audio_s
    features = LogMel()
    log_mel = features(torch.randn(1, mel.shape[-1] * features.hop_length) * 0.1)
    griffin_lim = min(timed(lambda: features.griffin_lim(log_mel)) for _ in range(repeats))
    griffin_lim /= audio_s
    if cached_rtf is None:
        short = mel_of(0.25, ar.hop_length)
        cached_rtf = timed(lambda: ar.generate(short)) / (
            short.shape[-1] * ar.hop_length / SAMPLE_RATE)
    out = {"parallel_wavegan": pwg, "wavenet_cached": cached_rtf, "griffin_lim": griffin_lim,
           "meets_target": pwg <= 0.05}
    log(f"    {'vocoder':<18}{'RTF':>10}")
    for name, value in (("Parallel WaveGAN", pwg), ("WaveNet (cached)", cached_rtf),
                        ("Griffin-Lim (64)", griffin_lim)):
        log(f"    {name:<18}{value:>10.4f}")
    log(f"    Parallel WaveGAN target <= 0.05: {'met' if pwg <= 0.05 else 'missed'}")
    return out


def vocoder_figures(ar: WaveNetVocoder, parallel: ParallelWaveGANGenerator, threads: int, *,
                    naive_samples: int = 300, compile: bool = True, seconds: float = 4.0,
                    repeats: int = 3) -> dict:
    """Parts (a) and (b) for the given (trained or untrained) vocoders on ``threads`` CPU
    threads; returns ``{"a": ..., "b": ...}``."""
    torch.set_num_threads(threads)
    ar, parallel = ar.eval(), parallel.eval()
    a = part_a(ar, naive_samples=naive_samples, compile=compile)
    b = part_b(ar, parallel, seconds=seconds, repeats=repeats,
               cached_rtf=min(a["cached_1s_s"], a.get("compiled_1s_s", float("inf"))))
    return {"a": a, "b": b}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a text-to-audio checkpoint or run directory "
                        "(default: untrained default sizes for (a), (b); the embedded model "
                        "for (c))")
    parser.add_argument("--wavenet-args", type=json.loads, default={},
                        help="JSON constructor arguments of WaveNetVocoder, "
                        'e.g. \'{"num_layers": 20}\'')
    parser.add_argument("--parallel-args", type=json.loads, default={},
                        help="JSON constructor arguments of ParallelWaveGANGenerator")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--naive-samples", type=int, default=300,
                        help="full-window samples the naive loop is timed over in (a)")
    parser.add_argument("--seconds", type=float, default=4.0, help="clip length in (b)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the torch.compile'd WaveNet step in (a)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from multimodal.errors import CheckpointError
    from multimodal.pipelines import load_pipeline

    try:
        pipe = load_pipeline("text-to-audio", args.checkpoint)
    except CheckpointError as exc:
        if args.checkpoint:
            raise
        log(f"(c) skipped: {exc}")
        pipe = None
    ar, parallel = build_vocoders(pipe if args.checkpoint else None,
                                  wavenet_args=args.wavenet_args,
                                  parallel_args=args.parallel_args)
    log(f"{torch.get_num_threads()} threads; WaveNet {sum(p.numel() for p in ar.parameters())} "
        f"parameters, Parallel WaveGAN {sum(p.numel() for p in parallel.parameters())}")
    report = {"threads": torch.get_num_threads(), "checkpoint": args.checkpoint,
              "wavenet_args": args.wavenet_args, "parallel_args": args.parallel_args,
              **vocoder_figures(ar, parallel, args.threads, naive_samples=args.naive_samples,
                                compile=not args.no_compile, seconds=args.seconds,
                                repeats=args.repeats)}
    if pipe is not None:
        report["c"] = part_c(pipe, repeats=args.repeats)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
