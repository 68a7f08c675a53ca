"""Audio files: mono 16-bit PCM WAV (soundfile); generation settings go in a sidecar JSON.

Axes: t samples.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from multimodal.io import atomic_write_bytes

SAMPLE_RATE = 16_000  # Hz, the rate of every built-in speech model


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """A mono 16-bit PCM WAV file of ``audio`` (float in [-1, 1])."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(audio, dtype=np.float32), sample_rate, subtype="PCM_16",
             format="WAV")
    return buffer.getvalue()


def write_wav(audio: np.ndarray, path: Path, sample_rate: int = SAMPLE_RATE) -> None:
    """Write a float waveform (t,) in [-1, 1] to ``path`` as 16-bit WAV, atomically."""
    atomic_write_bytes(Path(path), wav_bytes(audio, sample_rate))


def read_wav(path: Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A WAV file as float32 (t,).

    Raises:
        ValueError: the file's rate is not ``sample_rate`` Hz.
    """
    import soundfile

    audio, rate = soundfile.read(str(path), dtype="float32")
    if rate != sample_rate:
        raise ValueError(f"{path}: {rate} Hz, expected {sample_rate}")
    return audio
