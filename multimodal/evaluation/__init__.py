"""``multimodal evaluate TASK``: quality figures of a checkpoint, next to a reference.

Each task's evaluator lives in its own module, imported on demand. Where a task has
evaluations for several kinds of data, the checkpoint's config picks one: the ``type`` of its
image data (``data.image``; for image-to-text ``data.caption`` first), e.g. ``emoji`` checkpoints
get :mod:`multimodal.evaluation.emoji` and the rest the Fashion-MNIST evaluations.
"""

from __future__ import annotations

import importlib

from multimodal.errors import UnknownComponentError, did_you_mean
from multimodal.pipelines import checkpoint_config, image_data_type

__all__ = ["DATA_EVALUATORS", "EVALUATORS", "checkpoint_config", "evaluate", "image_data_type"]

EVALUATORS = {
    "text-generation": "multimodal.evaluation.text:evaluate_text_generation",
    "text-to-image": "multimodal.evaluation.image:evaluate_text_to_image",
    "text-to-audio": "multimodal.evaluation.audio:evaluate_text_to_audio",
    "text-to-video": "multimodal.evaluation.video:evaluate_text_to_video",
    "image-to-text": "multimodal.evaluation.caption:evaluate_image_to_text",
}
# (task, the checkpoint's image data type) -> the evaluator that replaces EVALUATORS[task].
DATA_EVALUATORS = {
    ("text-to-image", "emoji"): "multimodal.evaluation.emoji:evaluate_text_to_image_emoji",
    ("image-to-text", "emoji"): "multimodal.evaluation.emoji:evaluate_image_to_text_emoji",
}


def evaluate(task: str, **kwargs) -> dict:
    """Run the evaluator of ``task`` (for the checkpoint's kind of data); keyword arguments go
    to it.

    Raises:
        UnknownComponentError: no evaluator for ``task`` (lists those there are).
    """
    if task not in EVALUATORS:
        raise UnknownComponentError(
            f"no evaluation for task '{task}'{did_you_mean(task, EVALUATORS)}; "
            f"tasks with an evaluation: {', '.join(EVALUATORS)}")
    target = EVALUATORS[task]
    if any(t == task for t, _ in DATA_EVALUATORS):
        kind = image_data_type(task, kwargs.get("checkpoint"))
        target = DATA_EVALUATORS.get((task, kind), target)
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)(**kwargs)
