"""The caption modality's :class:`~multimodal.plugins.ModalitySpec` (image latents read by the
backbone, the tied LM head writes; ``image-to-text``; files are UTF-8 ``.txt``)."""

from __future__ import annotations

import numpy as np

from multimodal.modalities.image.caption import CaptionModality
from multimodal.specs.image import SPEC as IMAGE
from multimodal.specs.text import read_text, write_text
from multimodal.plugins import ModalitySpec, register_modality
from multimodal.registry import REGISTRIES
from multimodal.testing import tiny_image_config


def _generate(pipeline, prompt: str, seed: int) -> str:
    """Caption a fixed 28x28 image (a bright block) by sampling with ``seed``; the prompt is
    not used (captioning reads an image)."""
    image = np.zeros((28, 28), np.uint8)
    image[6:22, 8:20] = 200
    return pipeline(image, max_new_tokens=8, do_sample=True, seed=seed).texts[0]


def _tiny_config() -> dict:
    config = tiny_image_config(train={"lr": 1e-2})
    config["decoders"] = {"caption": {"type": "latent_captioner"}}
    config["data"] = {"caption": config["data"].pop("image")}
    config["tokenizers"]["image"]["fit_on"] = "caption"
    config["task"] = "image-to-text"
    return config


SPEC = ModalitySpec(
    name="caption", modality=CaptionModality, decoder="latent_captioner",
    tokenizer="image_vae", task="image-to-text", generate=_generate,
    writer=write_text, reader=read_text, suffix=".txt",
    example_input=IMAGE.example_input, input_shape=IMAGE.input_shape,
    encoded_shape=IMAGE.encoded_shape, tiny_config=_tiny_config)

register_modality(REGISTRIES, SPEC)
