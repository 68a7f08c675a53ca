"""Speech datasets: English rendered by the Debian ``espeak-ng`` synthesiser, and a user's own
recordings in the LJSpeech layout.

Items are ``{"text": str, "audio": (t,) float32 tensor in [-1, 1] at 16,000 Hz, "voice": str,
"phonemes": str}``; ``phonemes`` is espeak-ng's IPA for the text in that voice's language
(the text-to-phoneme front end, as Piper and VITS use it; see
:mod:`multimodal.modalities.audio.phonemes`).

``espeak_speech`` renders its texts once and caches the result in
``$MULTIMODAL_CACHE/espeak_speech/<key>.safetensors`` (default ``~/.cache/multimodal``), where
the key hashes every setting and the espeak-ng version, so the same settings always give the
same audio. The train/validation split is a checksum of each text (as for text datasets).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from multimodal.data import check_split, in_split
from multimodal.data.espeak import DEFAULT_VOICES, phonemize
from multimodal.data.images import DICTIONARY, SYNONYMS
from multimodal.data.text import FortunesDataset
from multimodal.errors import DataError
from multimodal.io import atomic_write_bytes, cache_root
from multimodal.registry import datasets

SAMPLE_RATE = 16_000
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                "seventeen", "eighteen", "nineteen")
TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
SILENCE_THRESHOLD = 1e-3  # peak amplitude below which leading/trailing samples are trimmed
SILENCE_MARGIN = 0.05  # seconds of silence kept before and after the speech


def espeak_version() -> str:
    """The installed espeak-ng's version line.

    Raises:
        DataError: espeak-ng is not installed.
    """
    try:
        out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True,
                             check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        raise DataError("espeak-ng is not installed or does not run; install it with "
                        "`apt-get install espeak-ng`") from None
    return out.stdout.strip()


def check_voice(voice: str) -> None:
    """Raise :class:`DataError` unless ``voice`` is ``language[+variant]`` with a variant that
    espeak-ng knows (espeak-ng itself ignores an unknown variant silently); an unknown language
    is caught by :func:`speak`."""
    if "+" not in voice:
        return
    variant = voice.split("+", 1)[1]
    try:
        out = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True,
                             check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        raise DataError("espeak-ng is not installed or does not run; install it with "
                        "`apt-get install espeak-ng`") from None
    variants = sorted({field[3:] for line in out.splitlines() for field in line.split()
                       if field.startswith("!v/")})
    if variant not in variants:
        raise DataError(f"espeak-ng has no voice variant {variant!r} (in voice {voice!r}); "
                        f"variants: {', '.join(variants[:40])}, ...")


def speak(text: str, voice: str, *, speed: int | None = None) -> tuple[np.ndarray, str]:
    """Render ``text`` with espeak-ng in ``voice`` (at ``speed`` words per minute; default
    espeak-ng's 175).

    Returns:
        ``(audio (t,) float32 at 16,000 Hz in [-1, 1], IPA phonemes)``; leading and trailing
        silence are trimmed to :data:`SILENCE_MARGIN` seconds.

    Raises:
        DataError: espeak-ng is missing or fails (unknown voice, for example).
    """
    import soundfile as sf
    import torch

    # deferred with torch: importing data/ stays cheap
    from multimodal.nn.dsp import resample

    try:
        rate = [] if speed is None else ["-s", str(int(speed))]
        out = subprocess.run(["espeak-ng", "-v", voice, *rate, "--ipa", "--stdout", "--", text],
                             capture_output=True, check=True, timeout=60)
    except OSError:
        raise DataError("espeak-ng is not installed; install it with "
                        "`apt-get install espeak-ng`") from None
    except subprocess.SubprocessError as exc:
        detail = getattr(exc, "stderr", b"") or b""
        raise DataError(f"espeak-ng failed on voice {voice!r}: "
                        f"{detail.decode(errors='replace').strip() or exc}") from None
    start = out.stdout.find(b"RIFF")
    if start < 0:
        raise DataError(f"espeak-ng wrote no audio for {text!r} in voice {voice!r}")
    ipa = " , ".join(line.strip() for line in out.stdout[:start].decode("utf-8", "replace")
                     .splitlines() if line.strip())
    audio, rate = sf.read(io.BytesIO(out.stdout[start:]), dtype="float32")
    wave = resample(torch.from_numpy(audio), rate, SAMPLE_RATE).numpy()
    return trim_silence(wave), ipa


def trim_silence(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Cut leading and trailing silence down to :data:`SILENCE_MARGIN` seconds."""
    loud = np.flatnonzero(np.abs(wave) > SILENCE_THRESHOLD)
    if len(loud) == 0:
        return wave
    margin = int(SILENCE_MARGIN * sample_rate)
    return wave[max(0, loud[0] - margin): loud[-1] + 1 + margin]


# -- the texts --------------------------------------------------------------------------------
def number_texts() -> list[str]:
    """0-100 in words and numerals, and a few larger numerals."""
    words = list(NUMBER_WORDS) + [t if u == 0 else f"{t} {NUMBER_WORDS[u]}"
                                  for t in TENS for u in range(10)] + ["one hundred"]
    numerals = [str(i) for i in range(101)]
    rng = random.Random(0)
    numerals += [str(rng.randint(101, 9999)) for _ in range(60)]
    return words + numerals


def garment_texts() -> list[str]:
    """Every Fashion-MNIST item name and synonym, singular and plural."""
    return sorted({phrase for pairs in SYNONYMS for pair in pairs for phrase in pair if phrase})


_WORD = re.compile(r"[A-Za-z][a-z']*[a-z]|[A-Za-z]")


def fortune_sentences(root: str) -> list[str]:
    """Sentences of 3-14 plain words from the fortunes corpus, in corpus order."""
    docs = list(FortunesDataset(split="train", root=root)) + \
        list(FortunesDataset(split="val", root=root))
    sentences = []
    for doc in docs:
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
            words = sentence.split()
            if 3 <= len(words) <= 14 and all(w.isascii() for w in words) and \
                    re.fullmatch(r"[A-Za-z0-9 ,;:'.!?-]+", sentence):
                sentences.append(sentence)
    return sentences


def common_words(sentences: Sequence[str], count: int) -> list[str]:
    """The ``count`` most frequent lower-case words of ``sentences`` that are in
    ``/usr/share/dict/words`` (all frequent words when no dictionary is installed)."""
    counts = Counter(w.lower() for s in sentences for w in _WORD.findall(s))
    vocabulary = None
    if DICTIONARY.is_file():
        vocabulary = set(DICTIONARY.read_text(encoding="utf-8", errors="ignore").split())
    ranked = [w for w, _ in counts.most_common() if "'" not in w and (len(w) > 1 or w in "ai") and
              (vocabulary is None or w in vocabulary)]
    return ranked[:count]


def espeak_texts(*, num_words: int, num_phrases: int, num_sentences: int, seed: int,
                 fortunes_root: str) -> list[str]:
    """The texts of ``espeak_speech``: numbers, item names, common words, phrases, sentences
    (deduplicated, in a fixed order)."""
    rng = random.Random(seed)
    sentences = fortune_sentences(fortunes_root)
    texts = number_texts() + garment_texts() + common_words(sentences, num_words)
    picked = rng.sample(sentences, min(num_sentences, len(sentences)))
    texts += picked
    for _ in range(num_phrases):
        words = rng.choice(sentences).split()
        n = rng.randint(2, min(5, len(words)))
        start = rng.randint(0, len(words) - n)
        texts.append(" ".join(words[start:start + n]).strip(",;:.!?-"))
    seen: set[str] = set()
    return [t for t in texts if t and not (t in seen or seen.add(t))]


class _SpeechItems(Sequence[dict]):
    """Items from parallel lists ``texts``, ``voices``, ``phonemes`` and a ``_audio(i)``;
    ``language`` (the espeak-ng voice that made ``phonemes``) is :attr:`language` when set,
    else the item's voice (espeak-ng's own voices speak their own language)."""

    texts: list[str]
    voices: list[str]
    phonemes: list[str]
    language: str | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index):
        import torch

        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return {"text": self.texts[index], "audio": torch.from_numpy(self._audio(index)),
                "voice": self.voices[index], "phonemes": self.phonemes[index],
                "language": self.language or self.voices[index]}

    @property
    def durations(self) -> list[float]:
        """Seconds of each item."""
        return [len(self._audio(i)) / SAMPLE_RATE for i in range(len(self))]


@datasets.register("espeak_speech")
class EspeakSpeechDataset(_SpeechItems):
    """English speech rendered with espeak-ng (a formant synthesiser) at 16,000 Hz.

    Texts: the numbers 0-100 in words and numerals (and some larger numerals), every
    Fashion-MNIST item name, the ``num_words`` most frequent dictionary words of the fortunes
    corpus as single-word utterances, ``num_phrases`` 2-5 word spans and ``num_sentences``
    sentences of the fortunes corpus. Single words, numbers and item names are rendered in
    every voice; phrases and sentences in one voice each, chosen with ``seed``.

    Args:
        split: ``"train"`` or ``"val"`` (set by the builder).
        voices: espeak-ng voice names, ``language[+variant]`` (``espeak-ng --voices=en`` and
            ``--voices=variant`` list them; default ``en-us``, ``en-us+f3``, ``en-gb+m3``,
            ``en-us+m7``).
        num_words, num_phrases, num_sentences: How many of each (defaults 3000, 2000, 2000).
        max_seconds: Longer renderings are dropped (default 6.0).
        val_fraction: Share of texts held out (default 0.03).
        seed: Picks phrases, sentences and their voices (default 0).
        fortunes_root: The fortunes corpus (default ``/usr/share/games/fortunes``).
        cache_dir: Where renderings are cached (default ``$MULTIMODAL_CACHE/espeak_speech``).
        num_workers: Parallel espeak-ng processes while rendering (default 2).
        texts: Render exactly these texts (each in every voice) instead of the built-in
            selection; ``num_words``, ``num_phrases`` and ``num_sentences`` are then unused.

    Raises:
        DataError: espeak-ng or the fortunes corpus is missing, or a voice is unknown.
    """

    def __init__(self, *, split: Literal["train", "val"] = "train",
                 voices: tuple[str, ...] = DEFAULT_VOICES, num_words: int = 3000,
                 num_phrases: int = 2000, num_sentences: int = 2000, max_seconds: float = 6.0,
                 val_fraction: float = 0.03, seed: int = 0,
                 fortunes_root: str = "/usr/share/games/fortunes",
                 cache_dir: str | None = None, num_workers: int = 2,
                 texts: list[str] | None = None):
        check_split(split)
        voices = tuple(voices)
        if not voices:
            raise DataError("espeak_speech needs at least one voice")
        version = espeak_version()
        if texts is not None:
            texts = [str(t) for t in texts if str(t).strip()]
            if not texts:
                raise DataError("espeak_speech: texts is empty")
            singles = set(texts)
        else:
            texts = espeak_texts(num_words=num_words, num_phrases=num_phrases,
                                 num_sentences=num_sentences, seed=seed,
                                 fortunes_root=fortunes_root)
            singles = set(number_texts()) | set(garment_texts())
            singles |= {t for t in texts if " " not in t}
        rng = random.Random(seed)
        jobs = [(t, v) for t in texts for v in (voices if t in singles else (rng.choice(voices),))]
        key = hashlib.sha256(json.dumps([version, jobs, max_seconds]).encode()).hexdigest()[:16]
        directory = Path(cache_dir) if cache_dir else cache_root() / "espeak_speech"
        path = directory / f"{key}.safetensors"
        if not path.is_file():
            render_to(path, jobs, num_workers=num_workers, max_seconds=max_seconds)
        self._load(path, split, val_fraction)

    def _load(self, path: Path, split: str, val_fraction: float) -> None:
        from safetensors import safe_open
        from safetensors.numpy import load_file

        with safe_open(str(path), "np") as fh:
            meta = json.loads(fh.metadata()["items"])
        arrays = load_file(str(path))
        keep = [i for i, item in enumerate(meta) if in_split(item[0], split, val_fraction)]
        self.texts = [meta[i][0] for i in keep]
        self.voices = [meta[i][1] for i in keep]
        self.phonemes = [meta[i][2] for i in keep]
        offsets = arrays["offsets"]
        self._spans = [(int(offsets[i]), int(offsets[i + 1])) for i in keep]
        self._pcm = arrays["audio"]

    def _audio(self, index: int) -> np.ndarray:
        start, end = self._spans[index]
        return self._pcm[start:end].astype(np.float32) / 32768.0


def render_to(path: Path, jobs: list[tuple[str, str]], *, num_workers: int,
              max_seconds: float) -> None:
    """Render ``(text, voice)`` jobs with espeak-ng into one safetensors file (16-bit PCM
    concatenated, ``offsets``, and the items as JSON metadata), written atomically."""
    from safetensors.numpy import save
    from tqdm.auto import tqdm

    voices = sorted({v for _, v in jobs})
    for voice in voices:  # fail fast, with the voice's name, before rendering thousands
        check_voice(voice)
        speak("test", voice)
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        results = list(tqdm(pool.map(lambda job: speak(*job), jobs), total=len(jobs),
                            desc="espeak-ng", disable=None, leave=False))
    items, chunks, offsets = [], [], [0]
    for (text, voice), (wave, ipa) in zip(jobs, results):
        if len(wave) > max_seconds * SAMPLE_RATE or not ipa:
            continue
        pcm = np.clip(np.round(wave * 32767), -32768, 32767).astype(np.int16)
        chunks.append(pcm)
        offsets.append(offsets[-1] + len(pcm))
        items.append((text, voice, ipa))
    path.parent.mkdir(parents=True, exist_ok=True)
    if not items:
        raise DataError("espeak-ng rendered nothing usable (every text too long or silent)")
    atomic_write_bytes(path, save({"audio": np.concatenate(chunks),
                                   "offsets": np.asarray(offsets, np.int64)},
                                  metadata={"items": json.dumps(items),
                                            "format": "espeak_speech/1"}))


@datasets.register("audio_folder")
class AudioFolderDataset(_SpeechItems):
    """A user's recordings in the LJSpeech layout: ``<path>/metadata.csv`` with lines
    ``id|text`` (or LJSpeech's ``id|text|normalised text``, whose last column is used) and
    ``<path>/wavs/<id>.wav``. Audio is mixed to mono and resampled to 16,000 Hz.

    Args:
        path: The dataset directory.
        split: ``"train"`` or ``"val"`` (set by the builder).
        voice: Name of the speaker (default ``"speaker"``), any name: the voice a fine-tuned
            model generates under (list it in ``tokenizers.phonemes.voices``).
        language: The espeak-ng voice that phonemises the texts (default ``"en-us"``); give
            the same in ``tokenizers.phonemes.languages`` (``{speaker: en-us}``) so that
            generation reads prompts the way training read the texts.
        val_fraction: Share of clips held out (checksum of the id; default 0.05).
        max_seconds: Longer clips are skipped (default 10.0).

    Raises:
        DataError: the directory, metadata or a listed WAV is missing or unreadable, or a
            metadata line is malformed (names the file and line).
    """

    def __init__(self, *, path: str, split: Literal["train", "val"] = "train",
                 voice: str = "speaker", language: str = "en-us", val_fraction: float = 0.05,
                 max_seconds: float = 10.0):
        import soundfile as sf
        import torch

        # deferred with torch: importing data/ stays cheap
        from multimodal.nn.dsp import resample

        check_split(split)
        root = Path(path)
        meta = root / "metadata.csv"
        if not meta.is_file():
            raise DataError(f"audio_folder: {meta} not found; expected the LJSpeech layout "
                            "(metadata.csv with 'id|text' lines and wavs/<id>.wav)")
        self.texts, self.voices, self.phonemes, self._waves = [], [], [], []
        self.language = language
        with meta.open(encoding="utf-8", errors="strict", newline="") as fh:
            rows = list(csv.reader(fh, delimiter="|", quoting=csv.QUOTE_NONE))
        for line, row in enumerate(rows, 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2 or not row[0].strip() or not row[-1].strip():
                raise DataError(f"{meta}:{line}: expected 'id|text', got {'|'.join(row)!r}")
            clip, text = row[0].strip(), row[-1].strip()
            if not in_split(clip, split, val_fraction):
                continue
            wav = root / "wavs" / f"{clip}.wav"
            try:
                audio, rate = sf.read(str(wav), dtype="float32", always_2d=True)
            except Exception as exc:  # soundfile raises several types
                raise DataError(f"{meta}:{line}: cannot read {wav}: {exc}") from None
            if len(audio) > max_seconds * rate:
                continue
            wave = torch.from_numpy(audio.mean(axis=1))
            if rate != SAMPLE_RATE:
                wave = resample(wave, rate, SAMPLE_RATE)
            self.texts.append(text)
            self.voices.append(voice)
            self.phonemes.append(phonemize(text, language))
            self._waves.append(wave.numpy())

    def _audio(self, index: int) -> np.ndarray:
        return self._waves[index]
