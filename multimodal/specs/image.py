"""The image modality's :class:`~multimodal.plugins.ModalitySpec` (VAE latents, latent DiT,
``text-to-image``; files are PNG with the settings in a text chunk)."""

from __future__ import annotations

import numpy as np
import torch

from multimodal.modalities.image.files import read_png, write_png
from multimodal.modalities.image.modality import ImageModality
from multimodal.plugins import ModalitySpec, register_modality
from multimodal.registry import REGISTRIES
from multimodal.testing import TINY, tiny_image_config


def _generate(pipeline, prompt: str, seed: int) -> np.ndarray:
    return pipeline(prompt, num_inference_steps=2, seed=seed, progress=False).images[0]


def _example():
    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, 1, 32, 32, generator=generator) * 2 - 1  # (b, c, h, w) in [-1, 1]


def _tiny_config() -> dict:
    return tiny_image_config(decoders={"image": {"type": "latent_dit",
                                                 **TINY["decoders"]["latent_dit"]}})


SPEC = ModalitySpec(
    name="image", modality=ImageModality, decoder="latent_dit", tokenizer="image_vae",
    task="text-to-image", generate=_generate, writer=write_png, reader=read_png, suffix=".png",
    example_input=_example, input_shape=(1, 1, 32, 32), encoded_shape=(1, 4, 8, 8),
    tiny_config=_tiny_config, modality_id=1)

register_modality(REGISTRIES, SPEC)
