"""Real speech: the English prompts of Asterisk, the telephone exchange, read by one
professional US English speaker (Debian ``asterisk-core-sounds-en-g722``, transcripts in
``asterisk-core-sounds-en``).

The Debian packages install about 570 prompts (about 25 minutes) as raw G.722 files, 16 kHz
mono, under ``/usr/share/asterisk/sounds/en_US_f_Allison/`` (``digits/1.g722``,
``vm-intro.g722``, ...), and their transcripts as ``name: text`` lines in
``/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz``. The transcripts describe
some prompts instead of transcribing them (``beep: [this is a simple beep tone]``,
``silence/1: (1 second of silence)``, ``confbridge-join: <beep ascending>``): those are left out,
and so is a listed prompt without its audio file. Inline notes are removed (``letters/at: at
[@]`` -> ``at``, ``spy-iax2: IAX (note: does not say "2")`` -> ``IAX``) and the keypad's
symbols written as the speaker says them (``*`` -> ``star``, ``#`` -> ``pound``); numerals stay,
and espeak-ng reads them (``Press 1`` -> ``pɹˈɛs wˈʌn``), as in the rest of the speech data.

Items follow :mod:`multimodal.data.audio`: ``{"text": str, "audio": (s,) float32 tensor in
[-1, 1] at 16,000 Hz, "voice": the speaker's name, "phonemes": IPA, "language": the espeak-ng
voice that made the phonemes}``.

The audio is decoded once with the ffmpeg that ``imageio-ffmpeg`` ships and cached as the
decoder's 16-bit PCM (lossless: G.722 decodes to 16-bit samples) in
``$MULTIMODAL_CACHE/asterisk_speech/<key>.safetensors``, where the key is a sha256 of the
transcript file and of every audio file's name and bytes, so a new package version (or any
changed file) makes a new cache; the PCM's own sha256 is stored beside it and checked on every
load, and a cache that fails the check is decoded again. The phonemes of each language are
cached next to it (a JSON file keyed by the texts, the language and the espeak-ng version).
Train and validation are split by prompt name (a checksum, :func:`multimodal.data.in_split`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import subprocess
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np

from multimodal.data import check_split, in_split
from multimodal.data.audio import SAMPLE_RATE, _SpeechItems, espeak_version
from multimodal.data.espeak import language_of, phonemize
from multimodal.errors import DataError
from multimodal.io import atomic_write_bytes, atomic_write_text, cache_root
from multimodal.registry import datasets

SOUNDS_DIR = "/usr/share/asterisk/sounds/en_US_f_Allison"
TRANSCRIPTS = "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
INSTALL = "apt-get install asterisk-core-sounds-en-g722 asterisk-core-sounds-en"
CACHE_FORMAT = "asterisk_speech/1"  # bump when decoding or text cleaning changes

# A transcript that only describes the prompt: "[ascending tones]", "<beep ascending>",
# "(1 second of silence)".
_DESCRIPTION = re.compile(r"\s*(\[[^\]]*\]|<[^>]*>|\([^)]*\))\s*")
# The keypad's symbols as the prompts say them ("press * to toggle pause").
_KEYPAD = {"*": "star", "#": "pound"}


def read_transcripts(path: Path) -> list[tuple[str, str]]:
    """``[(prompt name, transcript)]`` from a ``core-sounds-<lang>.txt`` file (gzipped or
    not): ``name: text`` lines; ``;`` comments and blank lines are skipped.

    Raises:
        DataError: the file is missing or unreadable, a line has no ``name:``, or a name is
            listed twice (names the file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"asterisk_speech: transcript file {path} not found; install it with "
                        f"`{INSTALL}`")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as exc:
        raise DataError(f"asterisk_speech: cannot read transcript file {path}: {exc}") from None
    entries: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        name, colon, transcript = line.partition(":")
        name = name.strip()
        if not colon or not name or " " in name:
            raise DataError(f"{path}:{number}: expected 'name: text', got {line[:80]!r}")
        if name in seen:
            raise DataError(f"{path}:{number}: prompt {name!r} is listed twice (first at line "
                            f"{seen[name]})")
        seen[name] = number
        entries.append((name, transcript.strip()))
    return entries


def clean_transcript(transcript: str) -> str | None:
    """The words a prompt speaks, or None when its transcript only describes it.

    Bracketed, angle-bracketed and parenthesised parts are notes and are removed
    (``"dash [-]"`` -> ``"dash"``); a transcript that is nothing but notes (``"[beep]"``)
    gives None. ``*`` and ``#`` become ``star`` and ``pound``; whitespace is collapsed.
    """
    words = _DESCRIPTION.sub(" ", transcript)
    for symbol, word in _KEYPAD.items():
        words = words.replace(symbol, f" {word} ")
    words = " ".join(words.split())
    words = re.sub(r"\s+([,.;:!?])", r"\1", words)  # "pound ." -> "pound."
    return words if re.search(r"[A-Za-z0-9]", words) else None


def ffmpeg_exe() -> str:
    """The ffmpeg binary that imageio-ffmpeg ships.

    Raises:
        DataError: imageio-ffmpeg is missing or has no binary for this platform.
    """
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as exc:
        raise DataError(f"asterisk_speech decodes G.722 with imageio-ffmpeg's ffmpeg, which is "
                        f"not available ({exc}); install it with `pip install imageio-ffmpeg`"
                        ) from None


def decode(path: Path, ffmpeg: str) -> np.ndarray:
    """The audio of one prompt file as 16 kHz mono 16-bit PCM, ``(s,)`` int16. A ``.g722``
    file is raw G.722 (no header); any other file is read by ffmpeg's own detection (WAV,
    GSM, ...) and resampled to 16 kHz.

    Raises:
        DataError: ffmpeg cannot decode the file, or it holds no audio (names the file).
    """
    source = ["-f", "g722"] if path.suffix == ".g722" else []
    try:
        out = subprocess.run([ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error",
                              *source, "-i", str(path), "-f", "s16le", "-ac", "1",
                              "-ar", str(SAMPLE_RATE), "-"],
                             capture_output=True, check=True, timeout=120)
    except subprocess.CalledProcessError as exc:
        detail = exc.stderr.decode(errors="replace").strip().splitlines()
        raise DataError(f"asterisk_speech: cannot decode {path}: "
                        f"{detail[-1] if detail else f'ffmpeg exit status {exc.returncode}'}"
                        ) from None
    except (OSError, subprocess.SubprocessError) as exc:
        raise DataError(f"asterisk_speech: cannot run ffmpeg on {path}: {exc}") from None
    pcm = np.frombuffer(out.stdout, dtype="<i2").astype(np.int16)
    if len(pcm) == 0:
        raise DataError(f"asterisk_speech: {path} holds no audio")
    return pcm


def _source_key(entries: list[tuple[str, Path]], transcripts: Path) -> str:
    """sha256 of the cache format, the transcript file and every audio file's name and bytes."""
    digest = hashlib.sha256(CACHE_FORMAT.encode())
    digest.update(transcripts.read_bytes())
    for name, path in entries:
        digest.update(name.encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def decode_to(path: Path, prompts: list[tuple[str, str, Path]], *, num_workers: int) -> None:
    """Decode ``(name, text, audio file)`` prompts into one safetensors file: 16-bit PCM
    concatenated, ``offsets``, and the items (name, text) and the PCM's sha256 as metadata,
    written atomically."""
    from safetensors.numpy import save
    from tqdm.auto import tqdm

    ffmpeg = ffmpeg_exe()
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        waves = list(tqdm(pool.map(lambda p: decode(p[2], ffmpeg), prompts), total=len(prompts),
                          desc="asterisk G.722", disable=None, leave=False))
    offsets = np.cumsum([0] + [len(w) for w in waves]).astype(np.int64)
    pcm = np.concatenate(waves)
    items = [(name, text) for name, text, _ in prompts]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save({"audio": pcm, "offsets": offsets},
                                  metadata={"items": json.dumps(items), "format": CACHE_FORMAT,
                                            "sha256": hashlib.sha256(pcm.tobytes()).hexdigest()}))


def load_cache(path: Path) -> tuple[list[tuple[str, str]], np.ndarray, np.ndarray] | None:
    """``(items, pcm (S,) int16, offsets)`` of a cache file, or None when it is missing,
    unreadable or fails its sha256 check."""
    from safetensors import SafetensorError, safe_open
    from safetensors.numpy import load_file

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "np") as fh:
            meta = fh.metadata() or {}
        arrays = load_file(str(path))
        pcm, offsets = arrays["audio"], arrays["offsets"]
        items = [tuple(item) for item in json.loads(meta["items"])]
    except (OSError, SafetensorError, KeyError, ValueError) as exc:
        warnings.warn(f"the cached audio {path} is unreadable ({exc}); decoding again",
                      stacklevel=3)
        return None
    if meta.get("format") != CACHE_FORMAT or \
            hashlib.sha256(pcm.tobytes()).hexdigest() != meta.get("sha256") or \
            len(offsets) != len(items) + 1 or int(offsets[-1]) != len(pcm):
        warnings.warn(f"the cached audio {path} fails its checksum; decoding again",
                      stacklevel=3)
        return None
    return items, pcm, offsets


def phonemize_all(texts: list[str], language: str, *, cache_dir: Path, num_workers: int
                  ) -> list[str]:
    """:func:`phonemize` of each text in ``language``, cached in ``cache_dir`` as JSON keyed by
    the texts, the language and the espeak-ng version."""
    key = hashlib.sha256(json.dumps([espeak_version(), language_of(language), texts])
                         .encode()).hexdigest()[:16]
    path = cache_dir / f"phonemes-{key}.json"
    if path.is_file():
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(cached, list) and len(cached) == len(texts):
                return [str(p) for p in cached]
        except (OSError, ValueError):
            pass  # a broken cache file: phonemize again below
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        phonemes = list(pool.map(lambda t: phonemize(t, language), texts))
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(phonemes, ensure_ascii=False))
    return phonemes


@datasets.register("asterisk_speech")
class AsteriskSpeechDataset(_SpeechItems):
    """One professional US English speaker: the prompts of Asterisk's English core sounds
    (Debian ``asterisk-core-sounds-en-g722`` and ``asterisk-core-sounds-en``), at 16,000 Hz.

    Prompts whose transcript is only a description (tones, beeps, silence) or whose audio file
    is missing are left out (:attr:`skipped` lists them); the texts are cleaned by
    :func:`clean_transcript` and phonemised by espeak-ng in ``language``.

    Args:
        split: ``"train"`` or ``"val"`` (set by the builder).
        voice: Name of the speaker (default ``"asterisk"``): the voice a fine-tuned model
            generates under (list it in ``tokenizers.phonemes.voices``).
        language: The espeak-ng voice that phonemises the texts (default ``"en-us"``); give
            the same in ``tokenizers.phonemes.languages`` (``{asterisk: en-us}``).
        val_fraction: Share of prompts held out (checksum of the prompt name; default 0.05).
        max_seconds: Longer prompts are left out (default None: keep all; the longest is
            about 50 seconds).
        sounds_dir: The prompts' folder (default ``/usr/share/asterisk/sounds/en_US_f_Allison``).
        transcripts: The transcript file (default
            ``/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz``).
        extension: The audio files' extension (default ``"g722"``; ``"wav"`` reads the 8 kHz
            ``asterisk-core-sounds-en-wav`` package, resampled to 16 kHz).
        cache_dir: Where the decoded audio is cached (default
            ``$MULTIMODAL_CACHE/asterisk_speech``).
        num_workers: Parallel ffmpeg and espeak-ng processes while decoding (default 2).

    Raises:
        DataError: the packages are not installed (names the ``apt-get`` command), the
            transcript file is missing or malformed, an audio file cannot be decoded (names
            the file), no prompt is left, or espeak-ng is missing.
    """

    def __init__(self, *, split: Literal["train", "val"] = "train", voice: str = "asterisk",
                 language: str = "en-us", val_fraction: float = 0.05,
                 max_seconds: float | None = None, sounds_dir: str = SOUNDS_DIR,
                 transcripts: str = TRANSCRIPTS, extension: str = "g722",
                 cache_dir: str | None = None, num_workers: int = 2):
        check_split(split)
        sounds, transcript_file = Path(sounds_dir), Path(transcripts)
        if not sounds.is_dir():
            raise DataError(f"asterisk_speech: {sounds} not found; the recordings are not "
                            f"installed: `{INSTALL}`")
        suffix = "." + extension.lstrip(".")
        prompts: list[tuple[str, str, Path]] = []
        self.skipped: dict[str, list[str]] = {"description": [], "missing audio": []}
        for name, transcript in read_transcripts(transcript_file):
            text = clean_transcript(transcript)
            audio = sounds / f"{name}{suffix}"
            if text is None:
                self.skipped["description"].append(name)
            elif not audio.is_file():
                self.skipped["missing audio"].append(name)
            else:
                prompts.append((name, text, audio))
        if not prompts:
            raise DataError(f"asterisk_speech: no prompt of {transcript_file} has both a spoken "
                            f"transcript and a {suffix} file in {sounds}")
        directory = Path(cache_dir) if cache_dir else cache_root() / "asterisk_speech"
        path = directory / f"{_source_key([(n, a) for n, _, a in prompts], transcript_file)}" \
                           ".safetensors"
        cached = load_cache(path)
        if cached is None:
            decode_to(path, prompts, num_workers=num_workers)
            cached = load_cache(path)
            assert cached is not None, path  # just written and checked
        items, self._pcm, offsets = cached
        keep = [i for i, (name, _) in enumerate(items) if in_split(name, split, val_fraction)
                and (max_seconds is None or
                     offsets[i + 1] - offsets[i] <= max_seconds * SAMPLE_RATE)]
        self.names = [items[i][0] for i in keep]
        self.texts = [items[i][1] for i in keep]
        self._spans = [(int(offsets[i]), int(offsets[i + 1])) for i in keep]
        self.voices = [voice] * len(keep)
        self.language = language
        self.phonemes = phonemize_all(self.texts, language, cache_dir=directory,
                                      num_workers=num_workers)

    def _audio(self, index: int) -> np.ndarray:
        start, end = self._spans[index]
        return self._pcm[start:end].astype(np.float32) / 32768.0
