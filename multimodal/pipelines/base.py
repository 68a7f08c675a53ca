"""What every pipeline shares: loading from a checkpoint, and the seed of its random draws.

A pipeline class names the checkpoint parts its constructor takes in ``parts`` (constructor
argument -> config key, e.g. ``{"denoiser": "decoders.image"}``) and what to train when they
are missing in ``needs``; :meth:`Pipeline.from_checkpoint` does the rest, so no pipeline
copies the load / check / build stanza.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from multimodal.checkpoint import LoadedCheckpoint, load_checkpoint
from multimodal.errors import CheckpointError


def draw_seed() -> int:
    """A random seed from torch's global generator (recorded with outputs, so a run without
    ``seed`` can still be replayed)."""
    return int(torch.randint(0, 2**31 - 1, ()).item())


def seeded(seed: int | None, generator: torch.Generator | None = None
           ) -> tuple[torch.Generator, int | None]:
    """``(generator, seed)``: ``generator`` itself when one is given (``seed`` returned as is),
    else a CPU generator seeded with ``seed``, drawn by :func:`draw_seed` when ``None``."""
    if generator is not None:
        return generator, seed
    if seed is None:
        seed = draw_seed()
    return torch.Generator().manual_seed(seed), seed


def require_parts(ckpt, task: str, found: dict[str, bool], needs: str) -> None:
    """Raise :class:`CheckpointError` naming every part of ``found`` (config key -> present)
    that the checkpoint ``ckpt`` lacks, and what ``task`` ``needs`` (a phrase, with the config
    to train)."""
    missing = [key for key, present in found.items() if not present]
    if missing:
        raise CheckpointError(f"checkpoint {ckpt.path} has no {', '.join(missing)}; "
                              f"{task} needs {needs}")


def checkpoint_part(ckpt: LoadedCheckpoint, key: str) -> Any:
    """The part of a loaded checkpoint at config key ``key`` (``"backbone"``,
    ``"decoders.NAME"`` or ``"tokenizers.NAME"``), or ``None`` when it has none."""
    if key == "backbone":
        return ckpt.model.backbone
    kind, _, name = key.partition(".")
    if kind == "decoders":
        return ckpt.model.decoders[name] if name in ckpt.model.decoders else None
    if kind == "tokenizers":
        return ckpt.tokenizers.get(name)
    raise ValueError(f"unknown checkpoint part {key!r}")  # a bug in a pipeline's table


class Pipeline:
    """Base of the pipelines: one :meth:`from_checkpoint` driven by the class's ``parts``.

    Class attributes:
        task: The task name it is registered under.
        produces: What its outputs hold, the name of a spec whose writer writes them
            (``"text"``, ``"image"``, ``"audio"``, ``"video"``, ...).
        parts: Constructor argument -> config key of the checkpoint part it takes; a tuple of
            keys takes the first the checkpoint has (``("tokenizers.video",
            "tokenizers.image")``). Tokenizers with a ``to`` method are moved to the device.
        needs: What the task needs, said when parts are missing (with the config to train).
    """

    task: ClassVar[str] = ""
    produces: ClassVar[str] = ""
    parts: ClassVar[dict[str, str | tuple[str, ...]]] = {}
    needs: ClassVar[str] = ""

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str = "cpu"):
        """Load from a checkpoint (or a run directory's newest one).

        Raises:
            CheckpointError: unusable checkpoint, or one without the parts the task needs.
        """
        return cls.from_loaded(load_checkpoint(path, device=device), device=device)

    @classmethod
    def from_loaded(cls, ckpt: LoadedCheckpoint, *, device: str = "cpu"):
        """Build from an already loaded checkpoint (see :meth:`from_checkpoint`).

        Raises:
            CheckpointError: it lacks a part the task needs (every missing part named).
        """
        found, present = {}, {}
        for arg, keys in cls.parts.items():
            keys = (keys,) if isinstance(keys, str) else keys
            part = next((p for p in (checkpoint_part(ckpt, k) for k in keys) if p is not None),
                        None)
            label = keys[0] if len(keys) == 1 else \
                f"{keys[0]} (or .{', .'.join(k.partition('.')[2] for k in keys[1:])})"
            present[label] = part is not None
            if part is not None and keys[0].startswith("tokenizers.") and hasattr(part, "to"):
                part = part.to(device)
            found[arg] = part
        require_parts(ckpt, cls.task, present, cls.needs)
        return cls(**found, checkpoint_id=ckpt.checkpoint_id)
