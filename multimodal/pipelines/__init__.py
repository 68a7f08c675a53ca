"""Inference pipelines, one file per task; each owns its sampling loop (diffusers style)."""

from __future__ import annotations

from pathlib import Path

import torch

from multimodal.checkpoint import find_checkpoint, is_complete, load_checkpoint, read_config
from multimodal.errors import (CheckpointError, MultimodalError, UnknownComponentError,
                               did_you_mean)
from multimodal.pipelines.base import (Pipeline, check_bool, check_compile, check_device,
                                       check_dtype, draw_seed, require_parts, seeded)
from multimodal.registry import pipelines as pipeline_registry
from multimodal.safety import SafetyPolicy

__all__ = [
    "ASSETS",
    "DEFAULT_CHECKPOINT_NAME",
    "Pipeline",
    "check_device",
    "checkpoint_config",
    "default_checkpoint",
    "draw_seed",
    "image_data_type",
    "load_pipeline",
    "prepare",
    "require_parts",
    "seeded",
]

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
    cls = pipeline_registry.get(task)
    name = getattr(cls, "default_checkpoint_name", DEFAULT_CHECKPOINT_NAME)
    path = ASSETS / name
    if not is_complete(path):
        raise CheckpointError(
            f"the embedded default checkpoint of {task} is missing ({path}); pass "
            "checkpoint=... (CLI: --checkpoint DIR), or train one from configs/")
    return path


def checkpoint_config(task: str, checkpoint=None) -> dict | None:
    """The config saved in ``checkpoint`` (a checkpoint or run directory; ``None``: the
    embedded default of ``task``), or ``None`` when there is no readable checkpoint there
    (loading it then says what is wrong). The demo and ``multimodal evaluate`` choose their
    prompts and judges by it."""
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


def load_pipeline(task: str, checkpoint: str | Path | None = None, *,
                  device: str = "cpu", torch_dtype: torch.dtype | str | None = None,
                  compile: bool = False):
    """Load the pipeline of ``task`` from a checkpoint.

    Args:
        task: A task name in the Hugging Face convention, e.g. ``"text-generation"``.
        checkpoint: A checkpoint directory or a run directory (its newest checkpoint); default:
            the embedded default checkpoint. A composed task (``text-to-audiovisual``) takes
            ``{step: directory}`` instead.
        device: ``"cpu"``, ``"cuda"`` (or ``"cuda:N"``) or ``"mps"`` (Apple silicon; or
            ``"mps:0"``).
        torch_dtype: The networks' dtype, as diffusers' and transformers' ``from_pretrained``
            take it: ``torch.bfloat16`` (CPUs and GPUs), ``torch.float16`` (GPUs; on a CPU it
            runs, slowly, with a warning), or their names (``"bf16"``, ``"fp16"``, ...);
            default float32. See :meth:`Pipeline.to`.
        compile: Compile the networks with ``torch.compile`` (see :meth:`Pipeline.compile`;
            the first call of each shape compiles, seconds to minutes on a CPU).

    Returns:
        The pipeline; call it with a prompt.

    Raises:
        UnknownComponentError: unknown task (lists the known ones).
        CheckpointError: missing, partial or incompatible checkpoint, or one without the
            decoder the task needs.
        ConfigError: the checkpoint's ``safety.blocklist`` cannot be read.
        InputError: an unknown device, or CUDA or MPS asked for where there is none; a
            ``torch_dtype`` that is not a floating dtype; ``compile`` not a bool, or
            ``torch.compile`` unable to work here (see :meth:`Pipeline.compile`).
        TypeError: an unknown keyword argument (Python names it).

    The pipeline's prompts are checked by the ``safety:`` policy of the checkpoint's config
    (``pipe.safety``; see :mod:`multimodal.safety`) before anything is generated.
    """
    try:
        cls = pipeline_registry.get(task)
    except UnknownComponentError:
        known = pipeline_registry.names()
        raise UnknownComponentError(
            f"unknown task '{task}'{did_you_mean(task, known)}; known tasks: {', '.join(known)}"
        ) from None
    check_device(device)
    dtype = None if torch_dtype is None else check_dtype(torch_dtype)
    check_bool("compile", compile)
    if compile:
        check_compile(device)  # before any weight loads
    if getattr(cls, "composed", False):  # each step resolves its own checkpoint
        pipe = cls.from_checkpoint(checkpoint, device=device)
        return prepare(pipe, dtype, compile)
    path = default_checkpoint(task) if checkpoint is None else checkpoint
    if hasattr(cls, "from_loaded"):
        ckpt = load_checkpoint(path, device=device)  # reads and validates the config, once
        pipe = cls.from_loaded(ckpt, device=device)
        config, found = ckpt.config, ckpt.path
    else:  # a plugin's pipeline that loads itself
        pipe = cls.from_checkpoint(path, device=device)
        found = find_checkpoint(path)
        config = read_config(found)
    pipe.safety = SafetyPolicy.from_config(config, checkpoint=found)
    return prepare(pipe, dtype, compile)


def prepare(pipe, dtype: torch.dtype | None = None, compile: bool = False):
    """``pipe`` in ``dtype`` (``None``: as loaded) and, with ``compile``, compiled: what
    :func:`load_pipeline` does after loading, for a pipeline loaded another way (the CLI's
    task files)."""
    if dtype is not None:
        pipe.to(dtype=dtype)
    if compile:
        pipe.compile()
    return pipe
