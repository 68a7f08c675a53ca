"""``multimodal evaluate TASK``: quality figures of a checkpoint, next to a reference.

Each task's evaluator lives in its own module, imported on demand.
"""

from __future__ import annotations

import importlib

from multimodal.errors import UnknownComponentError, did_you_mean

EVALUATORS = {
    "text-generation": "multimodal.evaluation.text:evaluate_text_generation",
    "text-to-image": "multimodal.evaluation.image:evaluate_text_to_image",
    "text-to-audio": "multimodal.evaluation.audio:evaluate_text_to_audio",
    "text-to-video": "multimodal.evaluation.video:evaluate_text_to_video",
    "image-to-text": "multimodal.evaluation.caption:evaluate_image_to_text",
}


def evaluate(task: str, **kwargs) -> dict:
    """Run the evaluator of ``task``; keyword arguments go to it.

    Raises:
        UnknownComponentError: no evaluator for ``task`` (lists those there are).
    """
    if task not in EVALUATORS:
        raise UnknownComponentError(
            f"no evaluation for task '{task}'{did_you_mean(task, EVALUATORS)}; "
            f"tasks with an evaluation: {', '.join(EVALUATORS)}")
    module, name = EVALUATORS[task].split(":")
    return getattr(importlib.import_module(module), name)(**kwargs)
