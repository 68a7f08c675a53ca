"""``multimodal evaluate TASK``: quality figures of a checkpoint, next to a reference.

Each task's evaluator lives in its own module, imported on demand. Where a task has
evaluations for several kinds of data, the checkpoint's config picks one: the ``type`` of its
image data (``data.image``; for image-to-text ``data.caption`` first), e.g. ``emoji`` checkpoints
get :mod:`multimodal.evaluation.emoji` and the rest the Fashion-MNIST evaluations.
"""

from __future__ import annotations

import importlib

from multimodal.checkpoint import find_checkpoint, read_config
from multimodal.errors import MultimodalError, UnknownComponentError, did_you_mean
from multimodal.pipelines import default_checkpoint

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


def checkpoint_config(task: str, checkpoint=None) -> dict | None:
    """The config saved in ``checkpoint`` (a checkpoint or run directory; ``None``: the
    embedded default of ``task``), or ``None`` when there is no readable checkpoint there
    (the evaluator then loads it and says what is wrong)."""
    try:
        path = default_checkpoint(task) if checkpoint is None else checkpoint
        return read_config(find_checkpoint(path))
    except (MultimodalError, TypeError, OSError):
        return None


def image_data_type(task: str, checkpoint=None) -> str | None:
    """The ``type`` of the data a checkpoint's images came from (``data.image``; for
    image-to-text ``data.caption`` first), e.g. ``"emoji"``; ``None`` when there is none."""
    data = (checkpoint_config(task, checkpoint) or {}).get("data") or {}
    for slot in ("caption", "image") if task == "image-to-text" else ("image",):
        section = data.get(slot)
        if isinstance(section, dict) and section.get("type"):
            return section["type"]
    return None


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
