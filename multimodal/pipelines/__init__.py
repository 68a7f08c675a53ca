"""Inference pipelines, one file per task; each owns its sampling loop (diffusers style)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from multimodal.errors import CheckpointError, UnknownComponentError, did_you_mean

# The checkpoint used when none is given: shipped inside the package.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "default"


def default_checkpoint() -> Path:
    """The embedded default checkpoint.

    Raises:
        CheckpointError: it is not there (a source checkout without the asset).
    """
    from multimodal.training.checkpoint import is_complete

    if not is_complete(DEFAULT_CHECKPOINT):
        raise CheckpointError(
            f"the embedded default checkpoint is missing ({DEFAULT_CHECKPOINT}); pass "
            "checkpoint=... (CLI: --checkpoint DIR), or train one: "
            "multimodal train configs/text_fortunes.yaml")
    return DEFAULT_CHECKPOINT


def load_pipeline(task: str, checkpoint: str | Path | None = None, *,
                  device: str = "cpu", **kwargs: Any):
    """Load the pipeline of ``task`` from a checkpoint.

    Args:
        task: A task name in the Hugging Face convention, e.g. ``"text-generation"``.
        checkpoint: A checkpoint directory or a run directory (its newest checkpoint); default:
            the embedded default checkpoint.
        device: ``"cpu"`` or ``"cuda"``.

    Returns:
        The pipeline; call it with a prompt.

    Raises:
        UnknownComponentError: unknown task (lists the known ones).
        CheckpointError: missing, partial or incompatible checkpoint, or one without the
            decoder the task needs.
    """
    from multimodal.registry import pipelines

    try:
        cls = pipelines.get(task)
    except UnknownComponentError:
        known = pipelines.names()
        raise UnknownComponentError(
            f"unknown task '{task}'{did_you_mean(task, known)}; known tasks: {', '.join(known)}"
        ) from None
    path = default_checkpoint() if checkpoint is None else checkpoint
    return cls.from_checkpoint(path, device=device, **kwargs)
