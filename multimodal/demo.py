"""``multimodal demo``: one output of every task the embedded models can do, in one folder.

Writes ``text.txt`` (+ ``text.json``) from the text model and, when the text-to-image model is
there, ``image.png``: one sample for each of ten prompts naming the Fashion-MNIST items, as a
grid (2 rows of 5; each 32x32 sample upscaled 4x, nearest neighbour), its prompts, seed and
settings in the PNG's text chunk.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

from multimodal.io import atomic_write_bytes, atomic_write_text, prepare_out_dir

TEXT_PROMPT = "The secret of life is"
IMAGE_PROMPTS = ("a t-shirt", "a pair of trousers", "a pullover", "a dress", "a coat",
                 "a sandal", "a shirt", "a sneaker", "a bag", "an ankle boot")


def run_demo(out_dir: str | Path, *, checkpoint=None, seed: int = 0) -> Iterator[str]:
    """Generate with the embedded (or given) checkpoints; yield a line per file written.

    Args:
        out_dir: Output directory (created).
        checkpoint: Use this checkpoint for every task it supports instead of the embedded ones.
        seed: Seed of every sample.

    Raises:
        CheckpointError: no usable checkpoint for text generation.
        InputError: ``out_dir`` cannot be written.
    """
    from multimodal.errors import CheckpointError
    from multimodal.pipelines import load_pipeline

    out = prepare_out_dir(out_dir)

    start = time.perf_counter()
    pipe = load_pipeline("text-generation", checkpoint)
    result = pipe(TEXT_PROMPT, max_new_tokens=120, seed=seed)
    text = TEXT_PROMPT + result.texts[0]
    atomic_write_text(out / "text.txt", text + "\n")
    meta = {"task": "text-generation", "prompt": TEXT_PROMPT, "seed": seed,
            "max_new_tokens": 120, "checkpoint_id": pipe.checkpoint_id}
    atomic_write_text(out / "text.json", json.dumps(meta, indent=1) + "\n")
    yield f"text-generation ({time.perf_counter() - start:.1f} s) -> {out / 'text.txt'}:"
    yield "  " + text.strip().replace("\n", "\n  ")

    start = time.perf_counter()
    try:
        image_pipe = load_pipeline("text-to-image", checkpoint)
    except CheckpointError as exc:
        yield f"text-to-image: skipped ({exc})"
        return
    from multimodal.pipelines.text_to_image import image_grid, png_bytes

    samples, settings = [], None
    for prompt in IMAGE_PROMPTS:
        result = image_pipe(prompt, seed=seed, progress=False)
        samples.append(result.images[0].repeat(4, axis=0).repeat(4, axis=1))
        settings = result.metadata(0)
    settings = dict(settings, prompt=list(IMAGE_PROMPTS), sample=None, grid="2 rows of 5")
    atomic_write_bytes(out / "image.png", png_bytes(image_grid(samples, columns=5), settings))
    yield (f"text-to-image ({time.perf_counter() - start:.1f} s) -> {out / 'image.png'}: "
           + ", ".join(IMAGE_PROMPTS))
