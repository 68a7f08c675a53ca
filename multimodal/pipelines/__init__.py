"""Inference pipelines, one file per task; each owns its sampling loop (diffusers style)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from multimodal.errors import CheckpointError, UnknownComponentError, did_you_mean

# Checkpoints used when none is given, shipped inside the package (``assets/<name>``): the
# joint model (configs/joint_tiny*.yaml) serves every built-in task; a plugin's pipeline names
# its own with a ``default_checkpoint_name`` class attribute.
ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_CHECKPOINT_NAME = "joint"


def default_checkpoint(task: str = "text-generation") -> Path:
    """The embedded default checkpoint of ``task``.

    Raises:
        UnknownComponentError: unknown task.
        CheckpointError: it is not there (a source checkout without the asset).
    """
    from multimodal.registry import pipelines
    from multimodal.checkpoint import is_complete

    cls = pipelines.get(task)
    name = getattr(cls, "default_checkpoint_name", DEFAULT_CHECKPOINT_NAME)
    path = ASSETS / name
    if not is_complete(path):
        raise CheckpointError(
            f"the embedded default checkpoint of {task} is missing ({path}); pass "
            "checkpoint=... (CLI: --checkpoint DIR), or train one from configs/")
    return path


def load_pipeline(task: str, checkpoint: str | Path | None = None, *,
                  device: str = "cpu", **kwargs: Any):
    """Load the pipeline of ``task`` from a checkpoint.

    Args:
        task: A task name in the Hugging Face convention, e.g. ``"text-generation"``.
        checkpoint: A checkpoint directory or a run directory (its newest checkpoint); default:
            the embedded default checkpoint. A composed task (``text-to-audiovisual``) takes
            ``{step: directory}`` instead.
        device: ``"cpu"`` or ``"cuda"``.

    Returns:
        The pipeline; call it with a prompt.

    Raises:
        UnknownComponentError: unknown task (lists the known ones).
        CheckpointError: missing, partial or incompatible checkpoint, or one without the
            decoder the task needs.
        ConfigError: the checkpoint's ``safety.blocklist`` cannot be read.
        InputError: an unknown device, or CUDA asked for where there is none.

    The pipeline's prompts are checked by the ``safety:`` policy of the checkpoint's config
    (``pipe.safety``; see :mod:`multimodal.safety`) before anything is generated.
    """
    from multimodal.registry import pipelines

    try:
        cls = pipelines.get(task)
    except UnknownComponentError:
        known = pipelines.names()
        raise UnknownComponentError(
            f"unknown task '{task}'{did_you_mean(task, known)}; known tasks: {', '.join(known)}"
        ) from None
    check_device(device)
    if getattr(cls, "composed", False):  # each step resolves its own checkpoint
        return cls.from_checkpoint(checkpoint, device=device, **kwargs)
    from multimodal.safety import SafetyPolicy
    from multimodal.checkpoint import find_checkpoint, read_config

    path = default_checkpoint(task) if checkpoint is None else checkpoint
    pipe = cls.from_checkpoint(path, device=device, **kwargs)
    found = find_checkpoint(path)
    pipe.safety = SafetyPolicy.from_config(read_config(found), checkpoint=found)
    return pipe


def require_parts(ckpt, task: str, found: dict[str, bool], needs: str) -> None:
    """Raise :class:`CheckpointError` naming every part of ``found`` (config key -> present)
    that the checkpoint ``ckpt`` lacks, and what ``task`` ``needs`` (a phrase, with the config
    to train)."""
    missing = [key for key, present in found.items() if not present]
    if missing:
        raise CheckpointError(f"checkpoint {ckpt.path} has no {', '.join(missing)}; "
                              f"{task} needs {needs}")


def check_device(device: Any) -> None:
    """Raise :class:`InputError` unless ``device`` is ``"cpu"``, or ``"cuda"``/``"cuda:N"`` with
    CUDA available."""
    import torch

    from multimodal.errors import InputError

    name = str(device)
    if name != "cpu" and not (name == "cuda" or (name.startswith("cuda:")
                                                 and name[5:].isdigit())):
        raise InputError(f"unknown device {name!r}; use 'cpu' or 'cuda' (or 'cuda:N')")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} asked for, but CUDA is not available here; use 'cpu'")
