"""The audio modality's :class:`~multimodal.plugins.ModalitySpec` (log-mel frames and their
vocoders, the mel decoder, ``text-to-audio``; files are 16 kHz PCM-16 WAV, settings in a
sidecar ``.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multimodal.io import atomic_write_text
from multimodal.modalities.audio.files import SAMPLE_RATE, read_wav, write_wav
from multimodal.modalities.audio.modality import AudioModality
from multimodal.plugins import ModalitySpec, register_modality
from multimodal.registry import REGISTRIES
from multimodal.testing import tiny_audio_config


def _generate(pipeline, prompt: str, seed: int) -> np.ndarray:
    return pipeline(prompt, seed=seed, progress=False).audios[0]


def write_audio(audio: np.ndarray, path: Path, metadata: dict[str, Any] | None = None
                ) -> list[Path]:
    """Write a waveform (t,) in [-1, 1] to ``path`` as 16-bit WAV at
    ``metadata["sample_rate"]`` (default 16 kHz) and, with ``metadata``, the settings to the
    JSON of the same stem (UTF-8, not escaped), each atomically.

    Returns:
        The paths written.
    """
    path = Path(path)
    write_wav(audio, path, (metadata or {}).get("sample_rate", SAMPLE_RATE))
    if metadata is None:
        return [path]
    atomic_write_text(path.with_suffix(".json"),
                      json.dumps(metadata, indent=1, ensure_ascii=False) + "\n")
    return [path, path.with_suffix(".json")]


def _example():
    t = torch.arange(SAMPLE_RATE) / SAMPLE_RATE
    # (b, t): 1 s of 220 Hz. The time axis is free in input_shape: decoding gives frames x
    # hop samples (16,128), not the 16,000 encoded.
    return (0.5 * torch.sin(2 * torch.pi * 220 * t))[None]


def _tiny_config() -> dict:
    return tiny_audio_config()


SPEC = ModalitySpec(
    name="audio", modality=AudioModality, decoder="mel_decoder", tokenizer="log_mel",
    task="text-to-audio", generate=_generate, writer=write_audio, reader=read_wav, suffix=".wav",
    example_input=_example, input_shape=(1, None), encoded_shape=(1, 80, 63),
    tiny_config=_tiny_config, modality_id=2, requires=("espeak-ng",))

register_modality(REGISTRIES, SPEC)
