"""A pretrained text tokenizer from a local Hugging Face folder (``tokenizers.text: {type:
hf_tokenizer, path: DIR}``), the companion of the ``hf_causal_lm`` backbone.

It is loaded with ``transformers.AutoTokenizer`` (``local_files_only``, a fast tokenizer) and
answers what the code asks of :class:`multimodal.modalities.text.tokenizer.ByteBPETokenizer`:
``encode`` (text as text: no special token added, none made of a spelling of one), ``decode``
(special tokens dropped), ``eos_id``, ``pad_id``, ``vocab_size``, ``token_byte_lengths``. It is
trained already: the trainer never fits it. A checkpoint keeps a copy (``save_pretrained``
files in ``tokenizers/<name>/``) and loads that copy, never ``path``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

from multimodal.errors import CheckpointError
from multimodal.modalities.text.tokenizer import _bytes_to_unicode, token_id_list
from multimodal.registry import tokenizers

_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")  # SentencePiece byte fallback


def _load(folder: Path, what: str):
    # deferred: transformers takes seconds to import; only this tokenizer needs it
    from transformers import AutoTokenizer

    if not folder.is_dir():
        raise ValueError(f"tokenizer folder not found: {folder}")
    known = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((folder / name).is_file() for name in known):
        raise ValueError(f"{folder} holds no Hugging Face tokenizer (none of "
                         f"{', '.join(known)}); {what}")
    try:
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True, use_fast=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot load the tokenizer in {folder}: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"the tokenizer in {folder} has no fast (tokenizer.json) form")
    if tok.eos_token_id is None:
        raise ValueError(f"the tokenizer in {folder} has no end-of-text token (eos_token), "
                         "which separates documents in training and starts a prompt")
    return tok


@tokenizers.register("hf_tokenizer")
class HFTokenizer:
    """Text <-> ids through a pretrained Hugging Face tokenizer.

    Args:
        path: The folder holding it (``tokenizer.json`` + ``tokenizer_config.json``, as
            ``save_pretrained`` writes; usually the backbone's model folder).

    Raises:
        ValueError: no tokenizer in ``path``, no fast form, or no end-of-text token.
    """

    fit_on = "text"  # never fitted: it is trained already (is_trained)

    def __init__(self, *, path: str):
        self._tok = _load(Path(path).expanduser(), "set tokenizers.text.path to the folder of "
                                                  "the model's tokenizer")
        self._byte_lengths: list[int] | None = None

    @property
    def is_trained(self) -> bool:
        return True

    def fit(self, texts: Any = None, **_: object) -> "HFTokenizer":
        """Nothing to learn: a pretrained tokenizer keeps its vocabulary."""
        return self

    def save(self, directory: str | Path) -> None:
        """Write the tokenizer's files (``save_pretrained``) into ``directory``."""
        self._tok.save_pretrained(str(directory))

    @classmethod
    def load(cls, directory: str | Path, **_: object) -> "HFTokenizer":
        """Read the copy a checkpoint holds in ``directory`` (not the original ``path``).

        Raises:
            CheckpointError: the directory holds no loadable tokenizer.
        """
        self = cls.__new__(cls)
        try:
            self._tok = _load(Path(directory), "the checkpoint is partial")
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
        self._byte_lengths = None
        return self

    @property
    def hf_tokenizer(self):
        """The ``transformers`` tokenizer itself."""
        return self._tok

    # -- use --------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return len(self._tok)

    @property
    def eos_id(self) -> int:
        return int(self._tok.eos_token_id)

    @property
    def pad_id(self) -> int:
        pad = self._tok.pad_token_id
        return int(pad if pad is not None else self._tok.eos_token_id)

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` as text: no special token added, and a spelling of one
        (``"</s>"``) encodes as its characters."""
        return self._tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return self._tok(list(texts), add_special_tokens=False,
                         split_special_tokens=True)["input_ids"]

    def decode(self, ids: int | Iterable[int], *, skip_special_tokens: bool = True,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        """Text of ``ids`` (one id, a sequence or a 1-d tensor, as transformers' ``decode``
        takes); special tokens are dropped unless ``skip_special_tokens=False``."""
        return self._tok.decode(token_id_list(ids), skip_special_tokens=skip_special_tokens,
                                clean_up_tokenization_spaces=clean_up_tokenization_spaces)

    def token_byte_lengths(self) -> list[int]:
        """UTF-8 bytes each id stands for (special tokens: 1), for bits per byte: byte-level
        BPE symbols count one byte each, SentencePiece ``<0xNN>`` tokens one, others their
        text (``▁`` a space)."""
        if self._byte_lengths is None:
            byte_of = _bytes_to_unicode()
            byte_chars = set(byte_of.values())
            specials = set(self._tok.all_special_ids)
            tokens = self._tok.convert_ids_to_tokens(list(range(len(self._tok))))
            lengths = []
            for idx, token in enumerate(tokens):
                if idx in specials or token is None:
                    lengths.append(1)
                elif _BYTE_TOKEN.match(token):
                    lengths.append(1)
                elif all(ch in byte_chars for ch in token):
                    lengths.append(max(1, len(token)))
                else:
                    lengths.append(max(1, len(token.replace("\u2581", " ").encode("utf-8"))))
            self._byte_lengths = lengths
        return self._byte_lengths

    def __repr__(self) -> str:
        return f"HFTokenizer({type(self._tok).__name__}, vocab_size={len(self._tok)})"
