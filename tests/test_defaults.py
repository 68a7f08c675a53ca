"""The embedded defaults (``multimodal/assets``): every built-in generation task loads one
without a checkpoint, and together they fit the 40 MB budget."""

from __future__ import annotations

import json

import pytest

from multimodal.pipelines import ASSETS, default_checkpoint, load_pipeline


@pytest.mark.parametrize("task", ("text-generation", "text-to-image", "image-to-image",
                                  "inpainting", "text-to-audio", "text-to-video"))
def test_every_generation_task_loads_its_embedded_default(task):
    pipe = load_pipeline(task)
    meta = json.loads((default_checkpoint(task) / "meta.json").read_text())
    assert pipe.checkpoint_id == meta["checkpoint_id"]


def test_embedded_defaults_fit_the_budget():
    size = sum(f.stat().st_size for f in ASSETS.rglob("*") if f.is_file())
    assert size <= 40e6, f"multimodal/assets holds {size / 1e6:.1f} MB; the budget is 40 MB"
