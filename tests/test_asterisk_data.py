"""The ``asterisk_speech`` reader (multimodal/data/asterisk.py): real recordings of one speaker
from Debian's Asterisk sounds, on a fake layout written by ``multimodal.testing`` (G.722 files
encoded with imageio-ffmpeg's ffmpeg, a gzipped transcript file in the real format), and once
on the real packages when they are installed.

Axes: s samples.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import requires_espeak
from multimodal.data import asterisk, in_split
from multimodal.data.asterisk import (SOUNDS_DIR, TRANSCRIPTS, AsteriskSpeechDataset,
                                      clean_transcript, read_transcripts)
from multimodal.errors import DataError
from multimodal.registry import datasets
from multimodal.testing import TINY_ASTERISK_PROMPTS, tiny_asterisk_sounds

pytestmark = requires_espeak  # every item is phonemised by espeak-ng


@pytest.fixture
def layout(tmp_path) -> dict[str, str]:
    return tiny_asterisk_sounds(tmp_path / "asterisk")


def test_registered():
    assert datasets.get("asterisk_speech") is AsteriskSpeechDataset


@pytest.mark.parametrize("transcript, expected", [
    ("Activated.", "Activated."),
    ("[ascending tones]", None),
    ("<beep ascending>", None),
    ("(1 second of silence)", None),
    ("at [@]", "at"),
    ("space [ ]", "space"),
    ('IAX (note: does not say "2")', "IAX"),
    ("press the pound key. (simple tone sound plays)", "press the pound key."),
    ("press * to toggle pause, press # to enter",
     "press star to toggle pause, press pound to enter"),
    ("Enter a filename followed by # or just # to exit",
     "Enter a filename followed by pound or just pound to exit"),
    ("Press 1 for", "Press 1 for"),
    ("  ... using your  keypad.", "... using your keypad."),
])
def test_clean_transcript(transcript, expected):
    assert clean_transcript(transcript) == expected


def test_reads_the_layout_and_skips_descriptions_and_missing_audio(layout):
    data = AsteriskSpeechDataset(**layout, val_fraction=0.0)
    assert data.names == ["activated", "digits/7", "vm-next", "dictate/forhelp"]
    assert data.texts == ["Activated.", "seven", "Press 6 to play the next message.",
                          "press star for help"]
    assert data.skipped == {"description": ["beep"], "missing audio": ["pls-try-call-later"]}
    assert len(data) == 4
    # the tones last 0.4 s * (1 + i/4); G.722 keeps the sample count
    assert data.durations == pytest.approx([0.4, 0.5, 0.6, 0.7], abs=1e-3)
    item = data[2]
    assert set(item) == {"text", "audio", "voice", "phonemes", "language"}
    assert item["voice"] == "asterisk" and item["language"] == "en-us"
    assert "sˈɪks" in item["phonemes"]  # the numeral is read by espeak-ng: "six"
    assert data[3]["phonemes"].startswith("pɹˈɛs stˈɑːɹ")
    audio = item["audio"]  # (s,)
    assert audio.dtype == torch.float32 and audio.shape == (int(0.6 * 16_000),)
    assert audio.abs().max() <= 1


def test_decoded_audio_is_the_encoded_tone(layout):
    """The first prompt is a 300 Hz sine at amplitude 0.5 before G.722 encoding: the decoded
    audio keeps its pitch and level (G.722 is a 64 kbit/s codec: within a few per cent)."""
    audio = AsteriskSpeechDataset(**layout, val_fraction=0.0)[0]["audio"].numpy()  # (s,)
    middle = audio[800:-800]  # the codec's start-up transient aside
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(len(middle))))
    peak_hz = np.argmax(spectrum) * 16_000 / len(middle)
    assert peak_hz == pytest.approx(300, abs=5)
    assert np.abs(middle).max() == pytest.approx(0.5, rel=0.05)


def test_split_is_by_prompt_name(layout):
    train = AsteriskSpeechDataset(**layout, split="train", val_fraction=0.5)
    val = AsteriskSpeechDataset(**layout, split="val", val_fraction=0.5)
    names = [name for name, _ in TINY_ASTERISK_PROMPTS[:4]]
    assert sorted(train.names + val.names) == sorted(names)
    assert val.names == [n for n in names if in_split(n, "val", 0.5)]
    assert train.names == [n for n in names if in_split(n, "train", 0.5)]


def test_voice_language_and_max_seconds(layout):
    data = AsteriskSpeechDataset(**layout, val_fraction=0.0, voice="allison",
                                 language="en-gb", max_seconds=0.55)
    assert data.names == ["activated", "digits/7"]
    assert {data[i]["voice"] for i in range(len(data))} == {"allison"}
    assert data[0]["language"] == "en-gb"
    assert data.phonemes[1] == "sˈɛvən"


def test_the_cache_is_read_and_a_corrupted_one_decoded_again(layout, monkeypatch):
    first = AsteriskSpeechDataset(**layout, val_fraction=0.0)
    (cache_file,) = Path(layout["cache_dir"]).glob("*.safetensors")
    assert len(list(Path(layout["cache_dir"]).glob("phonemes-*.json"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache holds the audio")

    with monkeypatch.context() as patch:
        patch.setattr(asterisk, "decode", no_decoding)
        again = AsteriskSpeechDataset(**layout, val_fraction=0.0)
    assert torch.equal(again[1]["audio"], first[1]["audio"])

    raw = bytearray(cache_file.read_bytes())
    raw[-200] ^= 0xFF  # a flipped byte inside the PCM
    cache_file.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="fails its checksum; decoding again"):
        repaired = AsteriskSpeechDataset(**layout, val_fraction=0.0)
    assert torch.equal(repaired[3]["audio"], first[3]["audio"])


def test_a_changed_file_makes_a_new_cache(layout, tmp_path):
    AsteriskSpeechDataset(**layout, val_fraction=0.0)
    other = tiny_asterisk_sounds(tmp_path / "other", seconds=0.3)  # same names, other audio
    shutil.copy(Path(other["sounds_dir"]) / "digits" / "7.g722",
                Path(layout["sounds_dir"]) / "digits" / "7.g722")
    data = AsteriskSpeechDataset(**layout, val_fraction=0.0)
    assert len(list(Path(layout["cache_dir"]).glob("*.safetensors"))) == 2
    assert data.durations[1] == pytest.approx(0.3 * 1.25, abs=1e-3)


def test_errors_name_the_package_and_the_file(layout, tmp_path):
    with pytest.raises(DataError, match=r"not installed: `apt-get install "
                                        r"asterisk-core-sounds-en-g722 asterisk-core-sounds-en`"):
        AsteriskSpeechDataset(**{**layout, "sounds_dir": str(tmp_path / "nowhere")})
    missing = tmp_path / "none.txt.gz"
    with pytest.raises(DataError, match=f"transcript file {missing} not found.*apt-get install"):
        AsteriskSpeechDataset(**{**layout, "transcripts": str(missing)})
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(gzip.compress(b"; comment\nactivated Activated.\n"))
    with pytest.raises(DataError, match=f"{bad}:2: expected 'name: text'"):
        AsteriskSpeechDataset(**{**layout, "transcripts": str(bad)})
    twice = tmp_path / "twice.txt"
    twice.write_text("seven: 7\nseven: seven\n", encoding="utf-8")
    with pytest.raises(DataError, match="'seven' is listed twice"):
        read_transcripts(twice)
    with pytest.raises(DataError, match=f"cannot read transcript file {bad}"):
        bad.write_bytes(b"\x1f\x8b not gzip")
        AsteriskSpeechDataset(**{**layout, "transcripts": str(bad)})


def test_unreadable_audio_names_the_file(layout):
    empty = Path(layout["sounds_dir"]) / "vm-next.g722"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=f"{empty} holds no audio"):
        AsteriskSpeechDataset(**layout)
    broken = Path(layout["sounds_dir"]) / "activated.wav"
    broken.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    for name in ("digits/7", "vm-next", "dictate/forhelp"):  # only "activated" has a WAV
        (Path(layout["sounds_dir"]) / f"{name}.g722").unlink()
    with pytest.raises(DataError, match=f"cannot decode {broken}"):
        AsteriskSpeechDataset(**layout, extension="wav")


def _installed() -> bool:
    return Path(SOUNDS_DIR, "vm-next.g722").is_file() and Path(TRANSCRIPTS).is_file()


@pytest.mark.skipif(not _installed(), reason="Debian packages 'asterisk-core-sounds-en-g722' "
                                             "and 'asterisk-core-sounds-en' not installed")
def test_the_real_packages():
    """Decoded once into $MULTIMODAL_CACHE (about 20 s on 2 cores), then read from there.
    Figures of asterisk-core-sounds-en(-g722) 1.6.1-1: 569 transcripts, 17 descriptions (tones,
    beeps, silence), 1 without audio, 551 prompts kept, 24.3 minutes."""
    train = AsteriskSpeechDataset(split="train")
    val = AsteriskSpeechDataset(split="val")
    assert 540 <= len(train) + len(val) <= 575
    assert not set(train.names) & set(val.names)
    assert 15 <= len(val) <= 45  # val_fraction 0.05
    minutes = (sum(train.durations) + sum(val.durations)) / 60
    assert 22 <= minutes <= 27
    assert len(train.skipped["description"]) >= 10  # beeps, tones, silence
    assert "beep" in train.skipped["description"]
    index = train.names.index("vm-next") if "vm-next" in train.names else None
    if index is not None:
        assert train[index]["text"] == "Press 6 to play the next message."
    assert all(p for p in train.phonemes)
    item = train[0]
    assert item["audio"].abs().max() <= 1 and item["audio"].abs().max() > 0.1
