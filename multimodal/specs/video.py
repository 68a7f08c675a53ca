"""The video modality's :class:`~multimodal.plugins.ModalitySpec` (per-frame VAE latents,
latent video DiT, ``text-to-video``; files are GIF here, MP4 too from the CLI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from multimodal.io import atomic_write_bytes
from multimodal.modalities.video.files import gif_bytes, read_video_frames
from multimodal.modalities.video.modality import VideoModality
from multimodal.plugins import ModalitySpec, register_modality
from multimodal.registry import REGISTRIES
from multimodal.testing import tiny_video_config

FPS = 8


def _generate(pipeline, prompt: str, seed: int) -> np.ndarray:
    return pipeline(prompt, num_inference_steps=2, seed=seed, progress=False).videos[0]


def write_gif(frames: np.ndarray, path: Path) -> None:
    atomic_write_bytes(Path(path), gif_bytes(frames, FPS))


def read_gif(path: Path) -> np.ndarray:
    """(t, h, w) uint8 frames of a grayscale GIF."""
    return read_video_frames(path)[..., 0]


def _example():
    import torch

    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, 8, 1, 48, 48, generator=generator) * 2 - 1  # (b, t, c, h, w)


def _tiny_config() -> dict:
    return tiny_video_config()


SPEC = ModalitySpec(
    name="video", modality=VideoModality, decoder="latent_video_dit", tokenizer="video_vae",
    task="text-to-video", generate=_generate, writer=write_gif, reader=read_gif, suffix=".gif",
    example_input=_example, input_shape=(1, 8, 1, 48, 48), encoded_shape=(1, 8, 4, 12, 12),
    tiny_config=_tiny_config, encode=lambda tok, videos: tok.encode_video(videos),
    decode=lambda tok, latents: tok.decode_video(latents), modality_id=3)

register_modality(REGISTRIES, SPEC)
