"""The audio modality's :class:`~multimodal.plugins.ModalitySpec` (log-mel frames and their
vocoders, the mel decoder, ``text-to-audio``; files are 16 kHz PCM-16 WAV)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from multimodal.modalities.audio.files import SAMPLE_RATE, read_wav, write_wav
from multimodal.modalities.audio.modality import AudioModality
from multimodal.plugins import ModalitySpec, register_modality
from multimodal.registry import REGISTRIES
from multimodal.testing import tiny_audio_config


def _generate(pipeline, prompt: str, seed: int) -> np.ndarray:
    return pipeline(prompt, seed=seed, progress=False).audios[0]


def _example():
    import torch

    t = torch.arange(SAMPLE_RATE) / SAMPLE_RATE
    # (b, t): 1 s of 220 Hz. The time axis is free in input_shape: decoding gives frames x
    # hop samples (16,128), not the 16,000 encoded.
    return (0.5 * torch.sin(2 * torch.pi * 220 * t))[None]


def _tiny_config() -> dict:
    return tiny_audio_config()


SPEC = ModalitySpec(
    name="audio", modality=AudioModality, decoder="mel_decoder", tokenizer="log_mel",
    task="text-to-audio", generate=_generate, writer=write_wav, reader=read_wav, suffix=".wav",
    example_input=_example, input_shape=(1, None), encoded_shape=(1, 80, 63),
    tiny_config=_tiny_config, modality_id=2, requires=("espeak-ng",))

register_modality(REGISTRIES, SPEC)
