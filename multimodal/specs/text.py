"""The text modality's :class:`~multimodal.plugins.ModalitySpec` (byte-level BPE, tied LM head,
``text-generation``; files are UTF-8 ``.txt``)."""

from __future__ import annotations

from pathlib import Path

from multimodal.io import atomic_write_text
from multimodal.modalities.text.modality import TextModality
from multimodal.plugins import ModalitySpec, register_modality
from multimodal.registry import REGISTRIES
from multimodal.testing import tiny_config


def _generate(pipeline, prompt: str, seed: int) -> str:
    return pipeline(prompt, max_new_tokens=12, seed=seed).texts[0]


def _encode(tokenizer, text: str):
    import torch

    return torch.tensor(tokenizer.encode(text))


def _decode(tokenizer, ids) -> str:
    return tokenizer.decode(ids.tolist())


def _tiny_config() -> dict:
    return tiny_config(train={"max_steps": 4, "checkpoint_every": 4})


SPEC = ModalitySpec(
    name="text", modality=TextModality, decoder="lm_head", tokenizer="byte_bpe",
    task="text-generation", generate=_generate,
    writer=lambda text, path: atomic_write_text(Path(path), text),
    reader=lambda path: Path(path).read_text(encoding="utf-8"), suffix=".txt",
    example_input=lambda: "A stitch in time saves nine.", input_shape=(),
    encoded_shape=(None,), tiny_config=_tiny_config, encode=_encode, decode=_decode,
    modality_id=0)

register_modality(REGISTRIES, SPEC)
