"""``multimodal demo``: one output of every task the embedded models can do, in one folder.

Writes ``text.txt`` (+ ``text.json``) from the text model and, for each other task whose
model is there (else a "skipped" line):

* ``image.png``: one sample for each prompt of :data:`IMAGE_PROMPTS` for the image data the
  checkpoint was trained on (16 common emoji concepts as a 4x4 grid of 64x64 colour samples
  upscaled 2x; the ten Fashion-MNIST items as 2 rows of 5 of 32x32 grey samples upscaled 4x;
  nearest neighbour), its prompts, seed and settings in the PNG's text chunk;
* ``audio.wav`` (+ ``audio.json``): :data:`AUDIO_PROMPT` spoken, 16 kHz;
* ``video.mp4`` and ``video.gif`` (+ ``video.json``): :data:`VIDEO_PROMPTS`' first clip at
  10 frames per second (the MP4 is skipped with a warning when no ffmpeg is available), and
  ``video.png``: every prompt's clip as one row of frames (48x48 each, upscaled 2x), its
  prompts and settings in the PNG's text chunk.

The demo writes these fixed names and nothing else, and a rerun replaces them (the README's
command is meant to be run again and again); ``multimodal generate`` instead refuses files it
would overwrite unless given ``--overwrite``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from multimodal.errors import CheckpointError
from multimodal.io import atomic_write_bytes, atomic_write_text, prepare_out_dir
from multimodal.modalities.audio.files import wav_bytes
from multimodal.modalities.image.files import image_grid, png_bytes
from multimodal.modalities.video import files
from multimodal.pipelines import check_device, image_data_type, load_pipeline

TEXT_PROMPT = "The secret of life is"
AUDIO_PROMPT = "Seven. A sneaker and a bag."
VIDEO_PROMPTS = ("a sneaker moving left", "a bag moving right", "a dress moving up",
                 "an ankle boot moving down")
# The image grid's prompts by the checkpoint's image dataset (``data.image.type``); the first
# entry serves any other.
IMAGE_PROMPTS = {
    "fashion_mnist": ("a t-shirt", "a pair of trousers", "a pullover", "a dress", "a coat",
                      "a sandal", "a shirt", "a sneaker", "a bag", "an ankle boot"),
    "emoji": ("a red apple", "a banana", "a slice of pizza", "a pineapple",
              "a cat face", "a dog face", "a frog", "a penguin",
              "a red car", "a rocket", "a bicycle", "an airplane",
              "a grinning face", "a red heart", "a sunflower", "an umbrella"),
}


def run_demo(out_dir: str | Path, *, checkpoint=None, seed: int = 0,
             device: str = "cpu") -> Iterator[str]:
    """Generate with the embedded (or given) checkpoints; yield a line per file written.

    Args:
        out_dir: Output directory (created).
        checkpoint: Use this checkpoint for every task it supports instead of the embedded ones.
        seed: Seed of every sample.
        device: Where the networks run: ``"cpu"``, ``"cuda"`` (``"cuda:N"``) or ``"mps"``.

    Raises:
        CheckpointError: no usable checkpoint for text generation.
        InputError: ``out_dir`` cannot be written; an unknown or unavailable ``device``
            (refused before anything is written).
    """
    check_device(device)
    out = prepare_out_dir(out_dir)

    start = time.perf_counter()
    pipe = load_pipeline("text-generation", checkpoint, device=device)
    max_new_tokens = min(120, pipe.backbone.max_seq_len - 1)  # a toy model's context is short
    result = pipe(TEXT_PROMPT, max_new_tokens=max_new_tokens, seed=seed)
    text = TEXT_PROMPT + result.texts[0]
    atomic_write_text(out / "text.txt", text + "\n")
    meta = {"task": "text-generation", "prompt": TEXT_PROMPT, "seed": seed,
            "max_new_tokens": max_new_tokens, "checkpoint_id": pipe.checkpoint_id}
    atomic_write_text(out / "text.json", json.dumps(meta, indent=1) + "\n")
    yield f"text-generation ({time.perf_counter() - start:.1f} s) -> {out / 'text.txt'}:"
    yield "  " + text.strip().replace("\n", "\n  ")

    for task, step in (("text-to-image", _image), ("text-to-audio", _audio),
                       ("text-to-video", _video)):
        start = time.perf_counter()
        try:
            pipe = load_pipeline(task, checkpoint, device=device)
        except CheckpointError as exc:
            yield f"{task}: skipped ({exc})"
            continue
        line = step(pipe, out, seed, checkpoint) if step is _image else step(pipe, out, seed)
        yield f"{task} ({time.perf_counter() - start:.1f} s) -> {line}"


def image_prompts(checkpoint=None) -> tuple[str, ...]:
    """The demo's image prompts for what ``checkpoint`` (default: the embedded one) drew in
    training: :data:`IMAGE_PROMPTS` of its ``data.image.type``."""
    kind = image_data_type("text-to-image", checkpoint)
    return IMAGE_PROMPTS.get(kind, IMAGE_PROMPTS["fashion_mnist"])


def _image(image_pipe, out: Path, seed: int, checkpoint=None) -> str:
    prompts = image_prompts(checkpoint)
    columns = 4 if len(prompts) == 16 else 5
    samples, settings = [], None
    for prompt in prompts:
        result = image_pipe(prompt, seed=seed, progress=False)
        scale = max(1, 128 // result.images[0].shape[0])  # 32 -> 4x, 64 -> 2x
        samples.append(result.images[0].repeat(scale, axis=0).repeat(scale, axis=1))
        settings = result.metadata(0)
    settings = dict(settings, prompt=list(prompts), sample=None,
                    grid=f"{len(prompts) // columns} rows of {columns}")
    atomic_write_bytes(out / "image.png", png_bytes(image_grid(samples, columns=columns),
                                                    settings))
    return f"{out / 'image.png'}: " + ", ".join(prompts)


def _audio(audio_pipe, out: Path, seed: int) -> str:
    result = audio_pipe(AUDIO_PROMPT, seed=seed, progress=False)
    atomic_write_bytes(out / "audio.wav", wav_bytes(result.audios[0], result.sample_rate))
    atomic_write_text(out / "audio.json", json.dumps(result.metadata(0), indent=1,
                                                     ensure_ascii=False) + "\n")
    seconds = len(result.audios[0]) / result.sample_rate
    return f"{out / 'audio.wav'}: {AUDIO_PROMPT!r} ({seconds:.1f} s, {result.vocoder} vocoder)"


def _video(video_pipe, out: Path, seed: int) -> str:
    clips, settings = [], None
    for prompt in VIDEO_PROMPTS:
        result = video_pipe(prompt, seed=seed, progress=False)
        clips.append(result.videos[0])
        settings = settings or result.metadata(0)
    first, fps = clips[0], settings["fps"]
    written = []
    for suffix, data in files.clip_bytes(first, fps).items():
        atomic_write_bytes(out / f"video{suffix}", data)
        written.append(f"video{suffix}")
    atomic_write_text(out / "video.json", json.dumps(dict(settings, files=written), indent=1)
                      + "\n")
    rows = np.concatenate([files.frame_strip(clip) for clip in clips], axis=0)
    strip_settings = dict(settings, prompt=list(VIDEO_PROMPTS), sample=None,
                          grid="one row of frames per prompt")
    atomic_write_bytes(out / "video.png",
                       png_bytes(rows.repeat(2, axis=0).repeat(2, axis=1), strip_settings))
    names = ", ".join(str(out / name) for name in written + ["video.png"])
    return (f"{names}: {VIDEO_PROMPTS[0]!r} ({len(first)} frames at {fps:g} fps; "
            f"video.png: {len(clips)} prompts)")
