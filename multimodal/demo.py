"""``multimodal demo``: one output of every task the checkpoint can do, written to a folder."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

from multimodal.io import atomic_write_text, prepare_out_dir

TEXT_PROMPT = "The secret of life is"


def run_demo(out_dir: str | Path, *, checkpoint=None, seed: int = 0) -> Iterator[str]:
    """Generate with the default (or given) checkpoint; yield a line per file written.

    Raises:
        CheckpointError: no usable checkpoint.
        InputError: ``out_dir`` cannot be written.
    """
    from multimodal.pipelines import default_checkpoint
    from multimodal.pipelines.text_generation import TextGenerationPipeline

    out = prepare_out_dir(out_dir)
    path = checkpoint or default_checkpoint("text-generation")

    start = time.perf_counter()
    pipe = TextGenerationPipeline.from_checkpoint(path)
    result = pipe(TEXT_PROMPT, max_new_tokens=120, seed=seed)
    text = TEXT_PROMPT + result.texts[0]
    atomic_write_text(out / "text.txt", text + "\n")
    meta = {"task": "text-generation", "prompt": TEXT_PROMPT, "seed": seed,
            "max_new_tokens": 120, "checkpoint_id": pipe.checkpoint_id}
    atomic_write_text(out / "text.json", json.dumps(meta, indent=1) + "\n")
    yield f"text-generation ({time.perf_counter() - start:.1f} s) -> {out / 'text.txt'}:"
    yield "  " + text.strip().replace("\n", "\n  ")
