"""Tiny factories for every registered component, for tests (diffusers / timm style).

``TINY[kind][name]`` gives keyword arguments that build the component in milliseconds;
``tiny_component(kind, name)`` builds it with the context it needs (a trained tiny tokenizer,
a tiny backbone). The test suite is parametrised over the registries and fails for a
registered component that has no entry here, so a new component is tested the day it lands.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

# A small corpus of real English (from the fortunes package when installed, else this).
_FALLBACK_CORPUS = [
    "A banker is a fellow who lends you his umbrella when the sun is shining "
    "and wants it back the minute it begins to rain.\n",
    "A classic is something that everyone wants to have read and nobody wants to read.\n",
    "The only way to get rid of a temptation is to yield to it.\n",
    "Ünïcödé, emoji 🙂, tabs\tand\nnewlines survive byte-level BPE.\n",
] * 8

TINY: dict[str, dict[str, dict[str, Any]]] = {
    "backbones": {"transformer": {"dim": 32, "depth": 2, "num_heads": 4, "max_seq_len": 64}},
    "tokenizers": {"byte_bpe": {"vocab_size": 300}},
    "decoders": {"lm_head": {}},
    "datasets": {
        "fortunes": {"files": ["literature"]},
        "text_files": {"paths": "__TEXT_FILES__"},  # replaced by a temporary file in tests
    },
    "pipelines": {"text-generation": {}},
    "modalities": {"text": {}},
    "schedulers": {},
    "losses": {},
}


@lru_cache(maxsize=None)
def tiny_tokenizer(vocab_size: int = 300):
    """A byte-level BPE tokenizer trained on a few sentences."""
    from multimodal.modalities.text.tokenizer import ByteBPETokenizer

    return ByteBPETokenizer(vocab_size=vocab_size).train(_FALLBACK_CORPUS)


def tiny_backbone(**overrides):
    from multimodal.backbone.transformer import TransformerBackbone

    kwargs = dict(TINY["backbones"]["transformer"], vocab_size=tiny_tokenizer().vocab_size)
    kwargs.update(overrides)
    return TransformerBackbone(**kwargs)


def tiny_config(**sections: Any) -> dict:
    """A resolved config of a toy text model (trains a few steps in about a second).

    Keyword arguments replace or deep-merge into whole sections, e.g.
    ``tiny_config(train={"max_steps": 4})``.
    """
    from multimodal.config import merge

    config = {
        "task": "text-generation",
        "seed": 0,
        "tokenizers": {"text": {"type": "byte_bpe", "vocab_size": 300}},
        "backbone": {"type": "transformer", **TINY["backbones"]["transformer"]},
        "decoders": {"text": {"type": "lm_head"}},
        "data": {"text": {"type": "fortunes", "files": ["literature"]}},
        "train": {"max_steps": 8, "batch_size": 4, "seq_len": 32, "warmup_steps": 2,
                  "lr": 3e-3, "eval_every": 4, "eval_batches": 2, "checkpoint_every": 4,
                  "log_every": 1, "keep_checkpoints": 3},
    }
    return merge(config, copy.deepcopy(sections))


def tiny_pipeline(task: str, tmp_path) -> Any:
    """Train a tiny model for ``task`` into ``tmp_path`` and load its pipeline."""
    from multimodal.pipelines import load_pipeline
    from multimodal.training.trainer import train

    result = train(tiny_config(train={"max_steps": 2}), out_dir=tmp_path, progress=False)
    return load_pipeline(task, result["checkpoint"])
