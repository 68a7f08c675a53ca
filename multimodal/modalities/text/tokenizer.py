"""Byte-level BPE tokenizer (Radford et al. 2019, GPT-2; Sennrich et al. 2016, BPE) built with
Hugging Face ``tokenizers``.

Byte-level pre-tokenisation maps every UTF-8 byte to a symbol, so any Unicode string encodes
and decodes back exactly, and there is no unknown token.

Text is text: a string that spells a special token (``"<|endoftext|>"``) encodes as its
ordinary bytes, never as the control token (HF ``tokenizers`` matches added tokens in any
text it encodes, so :meth:`ByteBPETokenizer.encode` cuts those spellings out and encodes them
through the BPE model alone). The code adds special tokens by id (``eos_id``) where it means
them. Text without such a spelling encodes exactly as before.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from tokenizers import decoders as byte_decoders  # not the registry of our decoders

from multimodal.errors import CheckpointError
from multimodal.registry import tokenizers

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)


def token_id_list(ids: Any) -> list[int]:
    """``ids`` (one id, a sequence of ids, or a 0-d or 1-d tensor or array) as a list of ints.

    Raises:
        TypeError: anything else, naming what is accepted.
    """
    if hasattr(ids, "tolist"):  # torch tensors, numpy arrays and scalars
        ids = ids.tolist()
    if isinstance(ids, int) and not isinstance(ids, bool):
        return [ids]
    try:
        out = list(ids)
    except TypeError:
        raise TypeError(f"decode takes a token id or a sequence of ids, got "
                        f"{type(ids).__name__}") from None
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in out):
        raise TypeError("decode takes a token id or a sequence of ids (ints)")
    return out


@tokenizers.register("byte_bpe")
class ByteBPETokenizer:
    """Byte-level BPE text tokenizer.

    Args:
        vocab_size: Target vocabulary size, special tokens and the 256 byte symbols included
            (default 4096; at least 258).
        min_frequency: A pair must occur this often to be merged (default 2).

    A new tokenizer is untrained; :meth:`train` learns the merges from a corpus, and
    :meth:`load` reads the ``tokenizer.json`` that :meth:`save` writes into a directory.
    """

    fit_on = "text"  # the trainer fits it on the texts of every modality (see Tokenizer)

    def __init__(self, *, vocab_size: int = 4096, min_frequency: int = 2):
        if vocab_size < 258:
            raise ValueError(f"vocab_size must be at least 258 (256 bytes + 2 specials), "
                             f"got {vocab_size}")
        self.target_vocab_size = vocab_size
        self.min_frequency = min_frequency
        self._tok = None
        self._byte_lengths: list[int] | None = None

    # -- building ---------------------------------------------------------------------------
    def train(self, texts: Iterable[str]) -> "ByteBPETokenizer":
        """Learn the BPE merges from ``texts``; returns ``self``."""
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = byte_decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=self.target_vocab_size,
            min_frequency=self.min_frequency,
            special_tokens=[EOS_TOKEN, PAD_TOKEN],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        self._tok = tok
        self._byte_lengths = None
        return self

    @property
    def is_trained(self) -> bool:
        return self._tok is not None

    def fit(self, texts: Iterable[str], **_: object) -> "ByteBPETokenizer":
        """The trainer's entry point: :meth:`train` on ``texts``."""
        return self.train(texts)

    @classmethod
    def load(cls, path: str | Path, **_: object) -> "ByteBPETokenizer":
        """Read ``tokenizer.json`` (``path`` is the file or the directory holding it).

        Raises:
            CheckpointError: the file is missing or not a tokenizer file.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise CheckpointError(f"tokenizer file not found: {path}")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path} is not a valid tokenizer.json: {exc}") from None
        self = cls(vocab_size=max(tok.get_vocab_size(), 258))
        self._tok = tok
        return self

    def save(self, path: str | Path) -> None:
        """Write ``tokenizer.json`` into the directory ``path`` (or to ``path`` if it is a
        ``.json`` file name)."""
        path = Path(path)
        self._require_trained().save(str(path if path.suffix == ".json" else path / "tokenizer.json"))

    def _require_trained(self):
        if self._tok is None:
            raise RuntimeError("the tokenizer is not trained: call train() or load() first")
        return self._tok

    # -- use --------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self._require_trained().get_vocab_size()

    @property
    def eos_id(self) -> int:
        return self._require_trained().token_to_id(EOS_TOKEN)

    @property
    def pad_id(self) -> int:
        return self._require_trained().token_to_id(PAD_TOKEN)

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` as text: no special token added, and none made of a spelling of one
        (``"<|endoftext|>"`` in ``text`` encodes as its bytes)."""
        tok = self._require_trained()
        if not self._spells_special(text):
            return tok.encode(text).ids
        ids: list[int] = []
        for i, piece in enumerate(self._special_pattern().split(text)):
            if not piece:
                continue
            ids += self._encode_plain(piece) if i % 2 else tok.encode(piece).ids
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """:meth:`encode` of each text (batched where no text spells a special token)."""
        if any(self._spells_special(text) for text in texts):
            return [self.encode(text) for text in texts]
        return [e.ids for e in self._require_trained().encode_batch(texts)]

    def _special_pattern(self) -> re.Pattern:
        """Splits text at the spellings of the special tokens (kept, at odd indices)."""
        tok = self._require_trained()
        if getattr(self, "_pattern_of", None) is not tok:  # once per trained or loaded model
            tokens = sorted({t.content for t in tok.get_added_tokens_decoder().values()}
                            | set(SPECIAL_TOKENS), key=len, reverse=True)
            self._pattern = re.compile("(" + "|".join(map(re.escape, tokens)) + ")")
            self._pattern_of = tok
        return self._pattern

    def _spells_special(self, text: str) -> bool:
        return isinstance(text, str) and self._special_pattern().search(text) is not None

    def _encode_plain(self, text: str) -> list[int]:
        """Ids of ``text`` through the pre-tokenizer and the BPE model only (no added-token
        matching): what the text's bytes are, as for any other text."""
        tok = self._require_trained()
        ids: list[int] = []
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(text):
            ids += [token.id for token in tok.model.tokenize(word)]
        return ids

    def decode(self, ids: int | Iterable[int], *, skip_special_tokens: bool = True,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        """Text of ``ids`` (one id, a sequence or a 1-d tensor, as transformers' ``decode``
        takes, so its ``TextStreamer`` works); special tokens are dropped unless
        ``skip_special_tokens=False``. Bytes that do not yet form a whole UTF-8 character
        decode to U+FFFD. ``clean_up_tokenization_spaces`` is accepted and has nothing to do:
        byte-level BPE gives the text's own spaces back."""
        return self._require_trained().decode(token_id_list(ids),
                                              skip_special_tokens=skip_special_tokens)

    def token_byte_lengths(self) -> list[int]:
        """UTF-8 bytes each id stands for (special tokens: 1, the separator they replace);
        used to turn a loss per token into bits per byte."""
        if self._byte_lengths is None:
            byte_of = {ch: b for b, ch in _bytes_to_unicode().items()}
            tok = self._require_trained()
            specials = {EOS_TOKEN, PAD_TOKEN}
            lengths = [1] * tok.get_vocab_size()
            for token, idx in tok.get_vocab().items():
                if token not in specials:
                    lengths[idx] = sum(1 for ch in token if ch in byte_of)
            self._byte_lengths = lengths
        return self._byte_lengths

    def __repr__(self) -> str:
        size = self._tok.get_vocab_size() if self._tok is not None else "untrained"
        return f"ByteBPETokenizer(vocab_size={size})"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable-character table, the one ByteLevel pre-tokenisation uses."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))

