"""The text modality's :class:`~multimodal.plugins.ModalitySpec` (byte-level BPE, tied LM head,
``text-generation``; files are UTF-8 ``.txt``, one sample and a newline, settings in a sidecar
``.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from multimodal.io import atomic_write_text
from multimodal.modalities.text.modality import TextModality
from multimodal.plugins import ModalitySpec, register_modality
from multimodal.registry import REGISTRIES
from multimodal.testing import tiny_config


def _generate(pipeline, prompt: str, seed: int) -> str:
    return pipeline(prompt, max_new_tokens=12, seed=seed).texts[0]


def write_text(text: str, path: Path, metadata: dict[str, Any] | None = None) -> list[Path]:
    """Write ``text`` and a newline to ``path`` (UTF-8) and, with ``metadata``, the settings
    to the JSON of the same stem, each atomically.

    Returns:
        The paths written.
    """
    path = Path(path)
    atomic_write_text(path, text + "\n")
    if metadata is None:
        return [path]
    atomic_write_text(path.with_suffix(".json"), json.dumps(metadata, indent=1) + "\n")
    return [path, path.with_suffix(".json")]


def read_text(path: Path) -> str:
    """The text of a file written by :func:`write_text` (its final newline removed)."""
    text = Path(path).read_text(encoding="utf-8")
    return text[:-1] if text.endswith("\n") else text


def _encode(tokenizer, text: str):
    return torch.tensor(tokenizer.encode(text))


def _decode(tokenizer, ids) -> str:
    return tokenizer.decode(ids.tolist())


def _tiny_config() -> dict:
    return tiny_config(train={"max_steps": 4, "checkpoint_every": 4})


SPEC = ModalitySpec(
    name="text", modality=TextModality, decoder="lm_head", tokenizer="byte_bpe",
    task="text-generation", generate=_generate,
    writer=write_text, reader=read_text, suffix=".txt",
    example_input=lambda: "A stitch in time saves nine.", input_shape=(),
    encoded_shape=(None,), tiny_config=_tiny_config, encode=_encode, decode=_decode,
    modality_id=0)

register_modality(REGISTRIES, SPEC)
