"""The video modality's :class:`~multimodal.plugins.ModalitySpec` (per-frame VAE latents,
latent video DiT, ``text-to-video``; files are MP4 (with ffmpeg) and GIF, settings in a sidecar
``.json``, and on request a PNG strip of the frames)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multimodal.io import atomic_write_bytes, atomic_write_text
from multimodal.modalities.image.files import png_bytes
from multimodal.modalities.video.files import clip_bytes, frame_strip, read_video_frames
from multimodal.modalities.video.modality import VideoModality
from multimodal.plugins import ModalitySpec, register_modality
from multimodal.registry import REGISTRIES
from multimodal.testing import tiny_video_config

FPS = 8  # frames per second of a clip written without settings


def _generate(pipeline, prompt: str, seed: int) -> np.ndarray:
    return pipeline(prompt, num_inference_steps=2, seed=seed, progress=False).videos[0]


def write_clip(frames: np.ndarray, path: Path, metadata: dict[str, Any] | None = None, *,
               strip: bool = False) -> list[Path]:
    """Write a clip (t, h, w[, c]) uint8 at ``metadata["fps"]`` (default 8) as the MP4 and the
    GIF of ``path``'s stem (the MP4 skipped with a warning when there is no ffmpeg), with
    ``strip`` also a PNG of the frames side by side (the settings in its text chunk), and, with
    ``metadata``, the JSON of the same stem: the settings and the ``files`` written. Each file
    is written atomically.

    Returns:
        The paths written: ``000.mp4``, ``000.gif``[, ``000.png``][, ``000.json``].
    """
    path = Path(path)
    meta = metadata or {}
    files = {path.with_suffix(suffix): data
             for suffix, data in clip_bytes(frames, meta.get("fps", FPS)).items()}
    if strip:
        files[path.with_suffix(".png")] = png_bytes(frame_strip(frames), meta)
    for target, data in files.items():
        atomic_write_bytes(target, data)
    written = list(files)
    if metadata is not None:
        sidecar = path.with_suffix(".json")
        atomic_write_text(sidecar, json.dumps({**metadata, "files": [p.name for p in files]},
                                              indent=1) + "\n")
        written.append(sidecar)
    return written


def read_gif(path: Path) -> np.ndarray:
    """(t, h, w) uint8 frames of a grayscale GIF."""
    return read_video_frames(path)[..., 0]


def _example():
    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, 8, 1, 48, 48, generator=generator) * 2 - 1  # (b, t, c, h, w)


def _tiny_config() -> dict:
    return tiny_video_config()


SPEC = ModalitySpec(
    name="video", modality=VideoModality, decoder="latent_video_dit", tokenizer="video_vae",
    task="text-to-video", generate=_generate, writer=write_clip, reader=read_gif, suffix=".gif",
    example_input=_example, input_shape=(1, 8, 1, 48, 48), encoded_shape=(1, 8, 4, 12, 12),
    tiny_config=_tiny_config, encode=lambda tok, videos: tok.encode_video(videos),
    decode=lambda tok, latents: tok.decode_video(latents), modality_id=3)

register_modality(REGISTRIES, SPEC)
