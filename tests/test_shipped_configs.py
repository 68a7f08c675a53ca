"""Every shipped config is built, not only validated.

Each ``configs/*.yaml`` is loaded (``base:`` resolved, validated), shrunk to tiny sizes (the
backbone, decoder and tokenizer sections get the numbers of ``multimodal.testing.TINY`` merged
over theirs; ``init_from`` and ``out_dir``, which name runs that do not exist here, are dropped;
no data is read), and its tokenizers and model are built through ``multimodal.builders``, as the
trainer builds them. So a constructor argument renamed under a config, a decoder whose injected
arguments changed, or a tokenizer a decoder needs but the config lacks fails here, not after
an hour of someone's training run.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from multimodal.builders import build_model, build_tokenizers
from multimodal.config import load_config, merge
from multimodal.registry import get_registry
from multimodal.testing import TINY, tiny_tokenizer

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))

# Backbone arguments that must not outlive the tiny width (4 heads of 8).
_BACKBONE_DROP = ("num_kv_heads", "hidden_dim")


def shrink(config: dict) -> dict:
    """A copy of ``config`` at tiny size, without ``init_from`` and ``out_dir``."""
    config = copy.deepcopy(config)
    config.pop("init_from", None)
    config.pop("out_dir", None)
    backbone = config["backbone"]
    for key in _BACKBONE_DROP:
        backbone.pop(key, None)
    config["backbone"] = merge(backbone, TINY["backbones"].get(backbone["type"], {}))
    for slot in ("tokenizers", "decoders"):
        sections = config.get(slot) or {}
        for name, section in sections.items():
            tiny = copy.deepcopy(TINY[slot].get(section["type"], {}))
            sections[name] = merge(section, tiny)
    return config


def _tokenizers(config: dict) -> dict:
    built = build_tokenizers(config)
    for name, section in config.get("tokenizers", {}).items():
        if section["type"] == "byte_bpe":  # untrained BPE has no vocabulary yet
            built[name] = tiny_tokenizer(TINY["tokenizers"]["byte_bpe"]["vocab_size"])
    return built


def test_there_are_shipped_configs():
    assert len(CONFIGS) >= 10, CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_builds_at_tiny_size(path):
    config = shrink(load_config(path))
    tokenizers = _tokenizers(config)
    assert set(tokenizers) == set(config.get("tokenizers") or {})
    for name, section in (config.get("tokenizers") or {}).items():
        if section["type"] != "byte_bpe":
            assert isinstance(tokenizers[name], get_registry("tokenizers").get(section["type"]))

    model = build_model(config, tokenizers)

    assert model.backbone.dim == TINY["backbones"]["transformer"]["dim"]
    assert set(model.decoders) == set(config["decoders"]), (
        f"{path.name} names decoders {sorted(config['decoders'])}, the model has "
        f"{sorted(model.decoders)}")
    for name, section in config["decoders"].items():
        cls = get_registry("decoders").get(section["type"])
        assert isinstance(model.decoders[name], cls), (name, type(model.decoders[name]))
    n_params = sum(p.numel() for p in model.parameters())
    assert 0 < n_params < 5_000_000, f"{path.name} did not shrink: {n_params:,} parameters"
    assert all(torch.isfinite(p).all() for p in model.parameters())
