"""The embedded default (``multimodal/assets/joint``): every built-in task loads the one joint
checkpoint without a checkpoint argument, and the assets fit the 64 MB budget."""

from __future__ import annotations

import json

import pytest

from multimodal.pipelines import ASSETS, default_checkpoint, load_pipeline

BUILT_IN_TASKS = ("text-generation", "text-to-image", "image-to-image", "inpainting",
                  "image-to-text", "text-to-audio", "text-to-video")


@pytest.mark.parametrize("task", BUILT_IN_TASKS)
def test_every_built_in_task_loads_the_embedded_joint_model(task):
    assert default_checkpoint(task) == ASSETS / "joint"
    pipe = load_pipeline(task)
    meta = json.loads((ASSETS / "joint" / "meta.json").read_text())
    assert pipe.checkpoint_id == meta["checkpoint_id"]


def test_embedded_defaults_fit_the_budget():
    size = sum(f.stat().st_size for f in ASSETS.rglob("*") if f.is_file())
    assert size <= 64e6, f"multimodal/assets holds {size / 1e6:.1f} MB; the budget is 64 MB"
