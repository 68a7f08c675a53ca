"""``init_from``: start a model from one checkpoint, or compose it from parts of several.

The language (``init_from`` as a path, or a list of ``{from, take, skip}`` entries) is parsed
and checked here, before any tokenizer is fitted; :func:`merge_init_weights` then gathers the
weights the entries give, for :func:`multimodal.checkpoint.load_weights` with ``adapt=True``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from multimodal.checkpoint import (find_checkpoint, generation_weights, load_tokenizer,
                                   read_weights, tokenizer_names)
from multimodal.errors import CheckpointError, ConfigError


@dataclass(frozen=True)
class InitSource:
    """One entry of ``init_from``: a checkpoint and the parts taken from it.

    ``take`` pairs each part of the new model with the part of the checkpoint it starts from:
    weight prefixes (``backbone``, ``decoders.video``) or tokenizers (``tokenizers.audio``);
    ``None`` takes everything the checkpoint has, under the same names. ``skip`` names weight
    prefixes of the new model that start fresh instead (layers whose shape changed).
    """

    path: Path
    take: tuple[tuple[str, str], ...] | None = None
    skip: tuple[str, ...] = ()

    def tokenizer_dir(self, name: str) -> Path | None:
        """Where this entry gives tokenizer ``name`` from, or ``None``."""
        if self.take is None:
            found = self.path / "tokenizers" / name
            return found if found.is_dir() else None
        for target, source in self.take:
            if target == f"tokenizers.{name}":
                return self.path / "tokenizers" / source.split(".", 1)[1]
        return None


def parse_init_from(value: Any) -> list[InitSource]:
    """Resolve ``init_from``: a checkpoint (or run directory), or a list of entries, each a
    checkpoint or ``{from: CHECKPOINT, take: PARTS, skip: PREFIXES}``. ``PARTS`` is a list of
    weight prefixes and tokenizers (``[decoders.image, tokenizers.audio]``), or a mapping that
    renames them, ``{tokenizers.video: tokenizers.image}`` (the new model's part: the
    checkpoint's part); without it the entry gives everything. ``skip`` lists weight prefixes of
    the new model that keep their fresh initialisation: the layers that read a backbone of
    another width, say (``decoders.image.net.caption_projection``).

    Entries apply in order; a later one replaces what an earlier one gave. This composes a
    model from parts trained apart, e.g. a backbone and video decoder from one run, the image
    decoder from another and the audio tokenizer (vocoder) from a third.

    Raises:
        ConfigError: an entry of the wrong shape, or an empty ``take``.
        CheckpointError: a checkpoint that is missing or partial (see :func:`find_checkpoint`).
    """
    if value is None:
        return []
    entries = value if isinstance(value, list) else [value]
    accepted = ("init_from takes a checkpoint path, or a list of entries each a path or "
                "{from: PATH, take: [backbone, decoders.NAME, tokenizers.NAME, ...]} (or take: "
                "{NEW_PART: CHECKPOINT_PART, ...} to rename; skip: [PREFIX, ...] keeps those "
                "weights fresh)")
    sources = []
    for i, entry in enumerate(entries):
        where = f"init_from[{i}]" if isinstance(value, list) else "init_from"
        if isinstance(entry, str):
            sources.append(InitSource(_find_init(where, entry)))
            continue
        if (not isinstance(entry, dict) or "from" not in entry
                or set(entry) - {"from", "take", "skip"}):
            raise ConfigError(f"{where}: got {entry!r}; {accepted}")
        take, skip = entry.get("take"), entry.get("skip", [])
        if "take" not in entry:
            pairs = None  # everything the checkpoint has
        elif isinstance(take, dict):
            pairs = list(take.items())
        else:
            pairs = [(t, t) for t in take] if isinstance(take, list) else []
        if not isinstance(entry["from"], str) or pairs == [] or not all(
                isinstance(p, str) and p for pair in pairs or [] for p in pair):
            raise ConfigError(f"{where}: 'from' must be a path and 'take' a non-empty list of "
                              f"prefixes, got {entry!r}; {accepted}")
        if not isinstance(skip, list) or not all(isinstance(p, str) and p and
                                                 not p.startswith("tokenizers.") for p in skip):
            raise ConfigError(f"{where}: 'skip' must be a list of weight prefixes, got "
                              f"{skip!r}; {accepted}")
        bad = [f"{t}: {s}" for t, s in pairs or []
               if t.startswith("tokenizers.") != s.startswith("tokenizers.")]
        if bad:
            raise ConfigError(f"{where}: take maps a tokenizer to weights or back: "
                              f"{', '.join(bad)}; {accepted}")
        path = _find_init(where, entry["from"])
        keys = functools.cache(lambda: _weight_names(path / "model.safetensors"))  # read once
        for _, part in pairs or []:  # checked here, before any tokenizer is fitted
            if not part.startswith("tokenizers."):
                _require_part(path, part, keys())
            elif not (path / "tokenizers" / part.split(".", 1)[1]).is_dir():
                raise CheckpointError(f"init_from {path}: take '{part}': it has no such "
                                      f"tokenizer; it has: "
                                      f"{', '.join(tokenizer_names(path)) or 'none'}")
        if skip:  # each must name weights that this entry gives
            given = [new for new, _ in _renamed(keys(), pairs)]
            for prefix in skip:
                if not any(_in_part(k, prefix) for k in given):
                    raise CheckpointError(f"{where}: skip '{prefix}' names none of the weights "
                                          f"this entry gives")
        sources.append(InitSource(path, None if pairs is None else tuple(pairs), tuple(skip)))
    return sources


def _renamed(keys, pairs) -> list[tuple[str, str]]:
    """``(new name, checkpoint name)`` of each weight among ``keys`` that an entry taking
    ``pairs`` gives (``None``: all of them, unrenamed)."""
    if pairs is None:
        return [(k, k) for k in keys]
    return [(target + k[len(part):], k) for target, part in pairs
            if not part.startswith("tokenizers.") for k in keys if _in_part(k, part)]


def _in_part(key: str, part: str) -> bool:
    return key == part or key.startswith(part + ".")


def _require_part(path: Path, part: str, keys) -> None:
    """Raise :class:`CheckpointError` unless weight prefix ``part`` names one of ``keys``."""
    if not any(_in_part(k, part) for k in keys):
        tops = sorted({".".join(k.split(".")[:2]) if k.startswith("decoders.")
                       else k.split(".")[0] for k in keys})
        raise CheckpointError(f"init_from {path}: take '{part}' names no weights; "
                              f"it has: {', '.join(tops)}")


def _find_init(where: str, path: str) -> Path:
    try:
        return find_checkpoint(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{where}: {exc}") from None


def _weight_names(file: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            return list(f.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read weights {file}: {exc}") from None


def merge_init_weights(sources: list[InitSource],
                       model: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The weights that ``init_from`` gives, later entries replacing earlier ones; with
    ``model``, the weights an entry skips (and no other entry gives) are the model's own
    fresh ones. Each checkpoint gives the weights its pipelines generate with
    (:func:`generation_weights`: the EMA weights where it has them).

    Raises:
        CheckpointError: an unreadable file, or a ``take`` part that names no weight (also
            checked by :func:`parse_init_from`).
    """
    merged: dict[str, torch.Tensor] = {}
    for src in sources:
        weights = read_weights(generation_weights(src.path))
        for _, part in src.take or []:
            if not part.startswith("tokenizers."):  # (checked by parse_init_from too)
                _require_part(src.path, part, weights)
        merged.update({new: weights[old] for new, old in _renamed(weights, src.take)
                       if not any(_in_part(new, p) for p in src.skip)})
    skipped = [p for src in sources for p in src.skip]
    if model is not None and skipped:
        merged.update({k: v for k, v in model.state_dict().items()
                       if k not in merged and any(_in_part(k, p) for p in skipped)})
    return merged


def load_init_tokenizers(sources: list[InitSource], config: dict) -> dict[str, Any]:
    """The tokenizers of ``config`` that ``init_from`` gives (the last entry giving each);
    the others are left out, for the trainer to fit."""
    loaded = {}
    for name, section in (config.get("tokenizers") or {}).items():
        given = [d for d in (s.tokenizer_dir(name) for s in sources) if d is not None]
        if given:
            loaded[name] = load_tokenizer(section, given[-1])
    return loaded


