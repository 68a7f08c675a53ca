"""The sketch modality's :class:`~multimodal.plugins.ModalitySpec` (stroke tokens on a grid,
the stroke head, ``text-to-sketch``; files are a rendered PNG with the settings in a text
chunk, and a JSON beside it with the settings and the strokes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multimodal.io import atomic_write_bytes, atomic_write_text
from multimodal.modalities.image.files import png_bytes
from multimodal.plugins import ModalitySpec
from multimodal_sketch.data import QuickDrawNdjson, ShapeSketches
from multimodal_sketch.head import SKETCH_MODALITY_ID, StrokeHead
from multimodal_sketch.modality import SketchModality
from multimodal_sketch.pipeline import TextToSketchPipeline, render
from multimodal_sketch.tokenizer import StrokeTokenizer

# Sizes the conformance kit and the tests build at: seconds on one CPU thread.
TINY_GRID = 16


UNSET_SIZE = 64  # pixels per side of a sketch written without settings


def _generate(pipeline, prompt: str, seed: int) -> np.ndarray:
    """One sketch of ``prompt``: (k, 3) stroke-3 points."""
    return pipeline(prompt, seed=seed, max_tokens=24).sketches[0]


def write_sketch(strokes: np.ndarray, path: Path, metadata: dict[str, Any] | None = None
                 ) -> list[Path]:
    """Write a sketch as ``path`` (a PNG rendered at ``metadata["size"]`` pixels, default 64,
    the settings in its text chunk) and the JSON of the same stem (the settings and the
    strokes, rounded to 4 decimals), each atomically.

    Returns:
        ``[png, json]``.
    """
    path = Path(path)
    meta = dict(metadata or {})
    size = meta.get("size", UNSET_SIZE)
    atomic_write_bytes(path, png_bytes(render(strokes, size), meta))
    record = dict(meta, strokes=np.round(np.asarray(strokes, np.float64), 4).tolist())
    atomic_write_text(path.with_suffix(".json"), json.dumps(record) + "\n")
    return [path, path.with_suffix(".json")]


def read_sketch(path: Path) -> np.ndarray:
    """The strokes of a sketch written by :func:`write_sketch` (from the JSON beside the
    PNG): (k, 3) float32."""
    record = json.loads(Path(path).with_suffix(".json").read_text(encoding="utf-8"))
    return np.asarray(record["strokes"], np.float32).reshape(-1, 3)


def example_sketch() -> torch.Tensor:
    """A fixed small sketch: a triangle and a line under it, (6, 3) stroke-3 (absolute)."""
    return torch.tensor([[0.20, 0.70, 0.0], [0.50, 0.20, 0.0], [0.80, 0.70, 0.0],
                         [0.20, 0.70, 1.0], [0.10, 0.90, 0.0], [0.90, 0.90, 1.0]])


def tiny_config() -> dict:
    """A complete config of a toy text-to-sketch model: 64 shape sketches on a 16x16 grid, a
    2-block backbone of width 32, 4 steps (a few seconds on one CPU thread)."""
    return {
        "task": "text-to-sketch",
        "seed": 0,
        "tokenizers": {"text": {"type": "byte_bpe", "vocab_size": 300},
                       "sketch": {"type": "stroke_tokens", "grid_size": TINY_GRID}},
        "backbone": {"type": "transformer", "dim": 32, "depth": 2, "num_heads": 4,
                     "max_seq_len": 128},
        "decoders": {"sketch": {"type": "stroke_head", "grid_size": TINY_GRID,
                                "max_tokens": 64}},
        "data": {"sketch": {"type": "shape_sketches", "num_sketches": 64, "val_sketches": 16}},
        "train": {"max_steps": 4, "batch_size": 4, "seq_len": 96, "warmup_steps": 2,
                  "lr": 3e-3, "eval_every": 2, "eval_batches": 2, "checkpoint_every": 4,
                  "log_every": 1, "keep_checkpoints": 2},
    }


SPEC = ModalitySpec(
    name="sketch", modality=SketchModality, decoder="stroke_head", tokenizer="stroke_tokens",
    task="text-to-sketch", generate=_generate, writer=write_sketch, reader=read_sketch,
    suffix=".png", example_input=example_sketch, input_shape=(None, 3), encoded_shape=(None,),
    tiny_config=tiny_config, modality_id=SKETCH_MODALITY_ID,
    components={"tokenizers": {"stroke_tokens": StrokeTokenizer},
                "decoders": {"stroke_head": StrokeHead},
                "datasets": {"shape_sketches": ShapeSketches,
                             "quickdraw_ndjson": QuickDrawNdjson},
                "pipelines": {"text-to-sketch": TextToSketchPipeline}})
