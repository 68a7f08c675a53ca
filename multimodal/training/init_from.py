"""``init_from``: start a model from one checkpoint, or compose it from parts of several.

The language (``init_from`` as a path, or a list of ``{from, take, skip}`` entries) is parsed
without opening a file by :func:`multimodal.train_config.init_from_entries`, as part of every
config's validation. Here the entries meet their checkpoints: :func:`init_from_problems` is the
check the trainer adds to :func:`multimodal.config.validate_config` (each checkpoint exists,
each ``take`` names something in it, each ``skip`` names weights the entry gives, and every
tokenizer that no entry gives can be fitted), so these problems are reported with all the
others, before any tokenizer is fitted; :func:`merge_init_weights` then gathers the weights
the entries give, for :func:`multimodal.checkpoint.load_weights` with ``adapt=True``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from multimodal.checkpoint import (find_checkpoint, generation_weights, is_sharded,
                                   load_tokenizer, read_weights, sharded_keys, tokenizer_names)
from multimodal.config import fit_on_problems
from multimodal.errors import CheckpointError, ConfigError
from multimodal.train_config import InitEntry, init_from_entries, tokenizers_taken

Problem = tuple[str, str]  # (dotted key, message)


@dataclass(frozen=True)
class InitSource:
    """One entry of ``init_from`` with its checkpoint found: see
    :class:`multimodal.train_config.InitEntry` for ``take`` and ``skip``."""

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


def init_from_problems(config: dict) -> list[Problem]:
    """The problems of ``config["init_from"]`` found by opening its checkpoints, and the
    tokenizers that must be fitted but have nothing to fit on once the checkpoints say which
    tokenizers they give (a check for :func:`multimodal.config.validate_config`)."""
    entries, _ = init_from_entries(config.get("init_from"))  # (malformed: reported already)
    sources, problems = _resolve(entries)
    if tokenizers_taken(entries) is None and len(sources) == len(entries):  # else known
        given = {name for name in config.get("tokenizers") or {}
                 if any(s.tokenizer_dir(name) for s in sources)}
        problems += fit_on_problems(config, given)
    return problems


def parse_init_from(value: Any) -> list[InitSource]:
    """The checkpoints and parts that ``init_from`` gives, in order (a later entry replaces
    what an earlier one gave). See :func:`multimodal.train_config.init_from_entries` for the
    language.

    Raises:
        ConfigError: every problem of every entry, its shape or what its checkpoint lacks
            (also reported by :func:`init_from_problems` when the config is validated).
    """
    entries, problems = init_from_entries(value)
    sources, found = _resolve(entries)
    problems += found
    if problems:
        raise ConfigError([message for _, message in problems])
    return sources


def _resolve(entries: list[InitEntry]) -> tuple[list[InitSource], list[Problem]]:
    """Find each entry's checkpoint and check its ``take`` and ``skip`` against it."""
    sources, problems = [], []
    for entry in entries:
        where = entry.where
        try:
            path = find_checkpoint(entry.checkpoint)
        except CheckpointError as exc:
            problems.append((where, f"{where}: {exc}"))
            continue
        keys = functools.cache(lambda: _weight_names(path / "model.safetensors"))  # read once
        found = []
        try:
            for _, part in entry.take or []:
                if not part.startswith("tokenizers."):
                    _require_part(path, part, keys())
                elif not (path / "tokenizers" / part.split(".", 1)[1]).is_dir():
                    found.append(f"{where}: init_from {path}: take '{part}': it has no such "
                                 f"tokenizer; it has: {', '.join(tokenizer_names(path)) or 'none'}")
            given = [new for new, _ in _renamed(keys(), entry.take)] if entry.skip else []
            # A prefix may also name a layer the new model adds inside a part this entry
            # takes (a fresh pooled_proj in a taken decoder); merge_init_weights then checks
            # that the model has it.
            taken = [new for new, _ in entry.take or []]
            found += [f"{where}: skip '{prefix}' names none of the weights this entry gives "
                      f"and lies in no part it takes"
                      for prefix in entry.skip
                      if not any(_in_part(k, prefix) for k in given)
                      and not any(_in_part(prefix, part) for part in taken)]
        except CheckpointError as exc:
            found.append(f"{where}: {exc}")
        problems += [(where, message) for message in found]
        if not found:
            sources.append(InitSource(path, entry.take, entry.skip))
    return sources, problems


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


def _weight_names(file: Path) -> list[str]:
    if not file.exists() and is_sharded(file.parent):  # a sharded checkpoint (strategy fsdp)
        return [k[len("model."):] for k in sharded_keys(file.parent) if k.startswith("model.")]
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
            checked by :func:`init_from_problems`).
    """
    merged: dict[str, torch.Tensor] = {}
    for src in sources:
        weights = read_weights(generation_weights(src.path))
        for _, part in src.take or []:
            if not part.startswith("tokenizers."):  # (checked by init_from_problems too)
                _require_part(src.path, part, weights)
        merged.update({new: weights[old] for new, old in _renamed(weights, src.take)
                       if not any(_in_part(new, p) for p in src.skip)})
    skipped = [p for src in sources for p in src.skip]
    if model is not None and skipped:
        own = model.state_dict()
        unknown = [p for p in skipped if not any(_in_part(k, p) for k in own)]
        if unknown:
            raise CheckpointError(f"init_from skip {', '.join(map(repr, unknown))} names no "
                                  f"weight of the model built from the config")
        merged.update({k: v for k, v in own.items()
                       if k not in merged and any(_in_part(k, p) for p in skipped)})
    return merged


def load_init_tokenizers(sources: list[InitSource], config: dict) -> dict[str, Any]:
    """The tokenizers of ``config`` that ``init_from`` gives (the last entry giving each);
    the others are left out, for the trainer to fit."""
    loaded = {}
    for name, section in (config.get("tokenizers") or {}).items():
        given = [d for d in (s.tokenizer_dir(name) for s in sources) if d is not None]
        if given:
            loaded[name] = load_tokenizer(section, given[-1], dotted=f"tokenizers.{name}")
    return loaded


