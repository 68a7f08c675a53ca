"""Prompt moderation: a blocklist applied before any generation.

Every pipeline checks its prompt with its :class:`SafetyPolicy` before it generates anything
(not the negative prompt, which names what to steer away from); a blocked prompt raises :class:`PromptBlockedError`, and the CLI exits with
:data:`EXIT_BLOCKED` (3) after printing the refusal. The policy comes from the ``safety:``
section of the checkpoint's config (``SafetyConfig``); without one, the packaged default
blocklist (``multimodal/safety/blocklist.txt``) applies.

Matching normalises both sides the same way (Unicode NFKC, case folded, accents dropped, every
run of non-letters and non-digits a single space) and compares whole words, so "Gore!" matches
``gore`` and "gorgeous" does not; a term ending in ``*`` matches any word that starts with it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from multimodal.errors import ConfigError, InputError

DEFAULT_BLOCKLIST = Path(__file__).resolve().parent / "blocklist.txt"
CHECKPOINT_BLOCKLIST = "safety_blocklist.txt"  # a config's own blocklist, copied into checkpoints
EXIT_BLOCKED = 3
MAX_BLOCKLIST_BYTES = 1 << 20  # a blocklist is copied into every checkpoint: keep it a list
MAX_TERM_CHARS = 200  # one term (a word or a phrase) a line


class PromptBlockedError(InputError):
    """A prompt matched the safety blocklist; nothing was generated."""


@dataclass
class SafetyConfig:
    """The ``safety:`` section of a config.

    Attributes:
        enabled: Check prompts at all (default ``True``).
        blocklist: A file of blocked terms, one a line (default: the packaged
            ``multimodal/safety/blocklist.txt``).
        terms: More blocked terms, added to the file's.
    """

    enabled: bool = True
    blocklist: str | None = None
    terms: list = field(default_factory=list)


def normalise(text: str) -> str:
    """NFKC, case folded, accents dropped, non-alphanumeric runs -> one space, padded with
    spaces so whole-word matching is a substring test."""
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).casefold())
    text = "".join(c for c in text if not unicodedata.combining(c))
    return " " + " ".join(re.findall(r"[^\W_]+", text)) + " "


class SafetyPolicy:
    """Blocks prompts that contain any of ``terms``.

    Args:
        terms: Blocked words or phrases (``*`` at the end: any ending).
        source: Where the terms came from, for messages.
        enabled: ``False`` lets every prompt through.
    """

    def __init__(self, terms: list[str], *, source: str = "", enabled: bool = True):
        self.enabled, self.source = enabled, source
        self.terms = [t for t in (str(t).strip() for t in terms) if t]
        self._patterns = []
        for term in self.terms:
            words = normalise(term.rstrip("*")).strip()
            if not words:
                continue
            tail = r"\w*" if term.endswith("*") else ""
            self._patterns.append((term, re.compile(r" " + re.escape(words) + tail + r" ")))

    @classmethod
    def from_config(cls, config: dict | None, checkpoint: Path | None = None) -> "SafetyPolicy":
        """The policy of a resolved config (its ``safety:`` section, else the default).

        Args:
            checkpoint: The checkpoint the config came from: a blocklist of the config's own
                is read from the copy the trainer put there (:data:`CHECKPOINT_BLOCKLIST`),
                so a moved checkpoint keeps its policy.

        Raises:
            ConfigError: the blocklist file cannot be read.
        """
        section = SafetyConfig(**((config or {}).get("safety") or {}))
        path = Path(section.blocklist) if section.blocklist else DEFAULT_BLOCKLIST
        if section.blocklist and checkpoint is not None \
                and (Path(checkpoint) / CHECKPOINT_BLOCKLIST).is_file():
            path = Path(checkpoint) / CHECKPOINT_BLOCKLIST
        return cls(read_blocklist(str(path)) + list(section.terms), source=str(path),
                   enabled=section.enabled)

    @classmethod
    def default(cls) -> "SafetyPolicy":
        return cls.from_config(None)

    def blocked_term(self, text: str | None) -> str | None:
        """The first blocked term ``text`` contains, or ``None``."""
        if not self.enabled or not text:
            return None
        normal = normalise(text)
        for term, pattern in self._patterns:
            if pattern.search(normal):
                return term
        return None

    def check(self, *texts: Any, task: str = "") -> None:
        """Raise :class:`PromptBlockedError` if any of ``texts`` (prompts; ``None`` and
        non-strings are skipped) contains a blocked term."""
        for text in texts:
            term = self.blocked_term(text) if isinstance(text, str) else None
            if term is not None:
                raise PromptBlockedError(
                    f"{task + ': ' if task else ''}prompt refused by the safety policy: it "
                    f"contains the blocked term '{term}' (blocklist {self.source}); nothing "
                    "was generated. Rephrase the prompt, or set safety.terms / "
                    "safety.blocklist in the model's config")


@lru_cache(maxsize=8)
def read_blocklist(path: str) -> list[str]:
    """The terms of a blocklist file (comments and blank lines skipped).

    The file must be UTF-8 text of at most :data:`MAX_BLOCKLIST_BYTES`, one term of at most
    :data:`MAX_TERM_CHARS` characters a line (a trainer copies it into every checkpoint, so a
    binary or a huge file is refused rather than copied).

    Raises:
        ConfigError: the file cannot be read, or is not such a list.
    """
    file = Path(path)
    try:
        if file.exists() and not file.is_file():
            raise ConfigError(f"safety.blocklist: {path} is not a file; give a text file of "
                              "blocked terms, one a line")
        size = file.stat().st_size
        if size > MAX_BLOCKLIST_BYTES:
            raise ConfigError(f"safety.blocklist: {path} is {size} bytes; a blocklist is a "
                              f"text file of at most {MAX_BLOCKLIST_BYTES} bytes, one term a "
                              "line")
        text = file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"safety.blocklist: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"safety.blocklist: {path} is not UTF-8 text (byte {exc.start}); "
                          "give a text file of blocked terms, one a line") from None
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if any(unicodedata.category(c) == "Cc" and c != "\t" for c in line):
            raise ConfigError(f"safety.blocklist: {path} line {number} holds control "
                              "characters; it does not look like a text file of terms")
        if len(line.strip()) > MAX_TERM_CHARS:
            raise ConfigError(f"safety.blocklist: {path} line {number} is "
                              f"{len(line.strip())} characters long; give one term (a word "
                              f"or a phrase of at most {MAX_TERM_CHARS} characters) a line")
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def policy_of(pipeline: Any) -> SafetyPolicy:
    """The pipeline's policy (set by ``load_pipeline`` from its checkpoint), else the
    default."""
    policy = getattr(pipeline, "safety", None)
    if policy is None:
        policy = _default_policy()
    return policy


@lru_cache(maxsize=1)
def _default_policy() -> SafetyPolicy:
    return SafetyPolicy.default()
