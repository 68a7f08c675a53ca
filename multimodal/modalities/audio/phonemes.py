"""The phoneme tokenizer of speech: a fixed symbol table turns the IPA that espeak-ng prints
(:func:`multimodal.data.espeak.phonemize`, the text front end Piper and VITS use) into ids.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from multimodal.data.espeak import DEFAULT_VOICES, phonemize
from multimodal.errors import InputError
from multimodal.registry import tokenizers

# Padding, start and end, then every symbol espeak-ng's English voices print with --ipa
# (and the rest of its IPA inventory, so other languages map too).
PAD, BOS, EOS = "_", "^", "$"
SYMBOLS = (
    [PAD, BOS, EOS, " ", ",", "-"]
    + list("abcdefghijklmnopqrstuvwxyz")
    + list("æçðøħŋœɐɑɒɓɔɕɖɗɘəɚɛɜɝɞɟɠɡɢɣɤɥɦɧɨɪɫɬɭɮɯɰɱɲɳɴɵɶɸɹɺɻɽɾʀʁʂʃʄʈʉʊʋʌʍʎʏʐʑʒʔʕʘʙʛʜʝʟʡʢ")
    + list("ˈˌːˑ̩̃ʰʲʷ̪ᵻ̝̞")
    + ["θ"]  # appended later: tables saved in older checkpoints keep their ids
)


@tokenizers.register("espeak_phonemes")
class PhonemeTokenizer:
    """Text -> espeak-ng IPA -> ids over the fixed table :data:`SYMBOLS` (no fitting).

    Ids: ``pad_id`` 0, ``bos_id`` 1, ``eos_id`` 2; :meth:`encode` returns
    ``[bos] + symbols + [eos]``. Characters outside the table are dropped (and counted in
    ``unknown_count``).

    It also holds the table of voices (speakers) the acoustic decoder learns one embedding
    for, and the language each one's text is phonemised in: a speaker named in ``languages``
    (a user's own voice, ``me``) reads that espeak-ng language; any other voice name is itself
    an espeak-ng voice (``en-gb+m3``) and reads its own.

    Args:
        voices: Speaker names; the first is the default (default ``en-us``, ``en-us+f3``,
            ``en-gb+m3``, ``en-us+m7``, espeak-ng's own voices).
        languages: ``{speaker: espeak-ng voice}`` for speakers that are not espeak-ng voices,
            e.g. ``{me: en-gb}`` for recordings of British English (default none).
        max_phonemes: Longest accepted phoneme sequence, start and end included (default 256);
            :meth:`encode` raises :class:`InputError` above it.

    Raises:
        ValueError: no voice, or ``languages`` naming a speaker ``voices`` does not list.
    """

    fit_on = "text"
    is_trained = True

    def __init__(self, *, voices: tuple[str, ...] = DEFAULT_VOICES,
                 languages: dict[str, str] | None = None, max_phonemes: int = 256):
        voices = tuple(voices)
        if not voices:
            raise ValueError("espeak_phonemes needs at least one voice")
        languages = dict(languages or {})
        unknown = [k for k in languages if k not in voices]
        if unknown:
            raise ValueError(f"espeak_phonemes: languages names {', '.join(map(repr, unknown))}, "
                             f"which voices does not list ({', '.join(voices)}); give each "
                             "speaker in voices and its espeak-ng language here")
        bad = [k for k, v in languages.items() if not isinstance(v, str) or not v.strip()]
        if bad:
            raise ValueError(f"espeak_phonemes: the language of {bad[0]!r} must be an espeak-ng "
                             "voice name such as en-us or en-gb")
        self.voices = voices
        self.languages = languages
        self.max_phonemes = max_phonemes
        self.symbols = list(SYMBOLS)
        self.index = {s: i for i, s in enumerate(self.symbols)}
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2
        self.unknown_count = 0

    def voice_id(self, voice: str | None) -> int:
        """Index of ``voice`` in ``voices`` (``None``: the first, the default voice).

        Raises:
            InputError: an unknown voice (the message lists the known ones).
        """
        if voice is None:
            return 0
        if voice not in self.voices:
            raise InputError(f"unknown voice {voice!r}; this model knows: "
                             f"{', '.join(self.voices)}")
        return self.voices.index(voice)

    def language_of(self, voice: str | None) -> str:
        """The espeak-ng voice that phonemises text for speaker ``voice`` (``None``: the
        default voice's)."""
        voice = self.voices[0] if voice is None else voice
        return self.languages.get(voice, voice)

    @property
    def vocab_size(self) -> int:
        return len(self.symbols)

    def fit(self, data: Any, **_: Any) -> "PhonemeTokenizer":
        return self  # a fixed table: nothing to learn

    def ids_from_ipa(self, ipa: str) -> list[int]:
        """``[bos] + ids of the IPA characters + [eos]`` (unknown characters dropped)."""
        ids = [self.index[c] for c in ipa if c in self.index]
        self.unknown_count += len(ipa) - len(ids)
        return [self.bos_id] + ids + [self.eos_id]

    def unknown_symbols(self, ipa: str) -> list[str]:
        """The characters of ``ipa`` that this table does not have (dropped by
        :meth:`ids_from_ipa`)."""
        return sorted({c for c in ipa if c not in self.index})

    def encode(self, text: str, voice: str = "en-us", *, max_phonemes: int | None = None
               ) -> list[int]:
        """Phoneme ids of ``text`` read in speaker ``voice``'s language (:meth:`language_of`),
        at most ``max_phonemes``
        (default: the tokenizer's ``max_phonemes``).

        Raises:
            InputError: ``text`` is empty, has no letter or digit (nothing pronounceable; a
                text of symbols alone is refused rather than spelt out), or is longer than
                ``max_phonemes``.
            DataError: espeak-ng is missing or does not know the voice.
        """
        if not text or not text.strip():
            raise InputError("the prompt is empty: give the text to speak")
        if not any(c.isalnum() for c in text):  # espeak-ng would spell out the symbols
            raise InputError(f"nothing pronounceable in {text!r}: give words or numbers")
        ipa = phonemize(text, self.language_of(voice))
        ids = self.ids_from_ipa(ipa)
        dropped = self.unknown_symbols(ipa)
        if dropped:
            warnings.warn(f"this model's phoneme table lacks {' '.join(dropped)}: those sounds "
                          "are left out (retrain with the current table to have them)",
                          stacklevel=2)
        if len(ids) <= 2 or not any(c.isalpha() for c in ipa):
            raise InputError(f"nothing pronounceable in {text!r}: give words or numbers")
        limit = self.max_phonemes if max_phonemes is None else min(max_phonemes,
                                                                    self.max_phonemes)
        if len(ids) > limit:
            raise InputError(
                f"{text[:40]!r}... is {len(ids)} phonemes long; this model reads at most {limit} "
                f"phonemes per sentence (about {max(1, limit // 12)} words): split it with "
                "full stops")
        return ids

    def decode(self, ids: list[int]) -> str:
        """The IPA string of ``ids`` (start, end and padding left out)."""
        return "".join(self.symbols[i] for i in ids if i > 2)

    def save(self, directory: str | Path) -> None:
        (Path(directory) / "phonemes.txt").write_text("\n".join(self.symbols), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path, **config: Any) -> "PhonemeTokenizer":
        tok = cls(**config)
        path = Path(directory) / "phonemes.txt"
        if path.is_file():
            tok.symbols = path.read_text(encoding="utf-8").split("\n")
            tok.index = {s: i for i, s in enumerate(tok.symbols)}
        return tok
