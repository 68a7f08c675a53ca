"""Errors raised for user mistakes.

Every error a user can cause is a subclass of :class:`MultimodalError` and of the builtin
exception a Python user would expect (``ValueError``, ``KeyError``, ``FileNotFoundError``), so
``except ValueError`` keeps working. The CLI prints ``str(error)`` and exits non-zero; only
``--debug`` shows a traceback (diffusers: "raising concise error messages is preferred to
silently correcting").
"""

from __future__ import annotations

import difflib
from typing import Iterable


class MultimodalError(Exception):
    """Base class of every error a user of ``multimodal`` can cause."""


EXCERPT_CHARS = 80  # at most this much of a value's repr goes into a message
MAX_LISTED_PROBLEMS = 100  # a message lists this many problems, then counts the rest


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """``repr(value)``, cut to its first ``limit`` characters and ``...`` when longer.

    Every message that quotes a user's value goes through here, so a megabyte of YAML or a
    huge override never becomes a megabyte of error message. Never raises: a value whose
    ``repr`` fails (an int too long to print, a broken object) is described by its type.
    """
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - e.g. an int above sys.get_int_max_str_digits()
        size = f" of {value.bit_length()} bits" if isinstance(value, int) else ""
        return f"<{type(value).__name__}{size}>"
    return clip(text, limit)


def clip(text: str, limit: int = 4 * EXCERPT_CHARS) -> str:
    """``text`` cut to its first ``limit`` characters and ``...`` when longer: for the message
    of an error raised elsewhere (a constructor's, a plugin's) that may quote a value whole."""
    return text if len(text) <= limit else text[:limit] + "..."


class ConfigError(MultimodalError, ValueError):
    """A config file or override is wrong. The message lists every problem found, one a line
    (the first :data:`MAX_LISTED_PROBLEMS`, then how many more)."""

    def __init__(self, problems: str | list[str], *, source: str | None = None):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        if len(self.problems) == 1:
            message = f"config error{where}: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems[:MAX_LISTED_PROBLEMS])
            if len(self.problems) > MAX_LISTED_PROBLEMS:
                lines += f"\n  ... and {len(self.problems) - MAX_LISTED_PROBLEMS} more"
            message = f"{len(self.problems)} config errors{where}:\n{lines}"
        super().__init__(message)


class UnknownComponentError(MultimodalError, KeyError):
    """A name was looked up in a registry and is not there."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class DuplicateRegistrationError(MultimodalError, ValueError):
    """A different object was registered under a name that is already taken."""


class CheckpointError(MultimodalError, ValueError):
    """A checkpoint directory is missing, partial, or does not match the config."""


class DataError(MultimodalError, ValueError):
    """A data source is missing, unreadable or malformed."""


class InputError(MultimodalError, ValueError):
    """An argument given to a pipeline or the CLI is outside what is accepted."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""`` when none is close
    (or ``name`` is too long to be a misspelt name)."""
    name = name if isinstance(name, str) else excerpt(name)  # str() of a huge int raises
    if len(name) > 4 * EXCERPT_CHARS:  # difflib's cost grows with the name
        return ""
    matches = difflib.get_close_matches(name, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""


class TrainingError(MultimodalError, RuntimeError):
    """Training cannot go on (for example the loss became NaN); names the last good checkpoint."""
