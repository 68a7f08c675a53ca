"""The image path in colour: a 3-channel VAE at 64x64, text-to-image, negative prompts,
batched guidance, image-to-image and inpainting in RGB, RGB PNGs with their settings, the
emoji dataset through the image modality, and a grayscale checkpoint refusing colour
inpainting.

Axes: s samples, c channels, h w height width, l latent channels, y x latent height width.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multimodal.errors import InputError
from multimodal.modalities.image.files import png_bytes, read_png_metadata
from multimodal.modalities.image.modality import ImageModality
from multimodal.modalities.image.vae import ImageVAETokenizer
from multimodal.testing import (TINY, same_components, tiny_emoji_packages,
                                tiny_image_pipeline, tiny_tokenizer)


@pytest.fixture(scope="module")
def pipe():
    """An untrained tiny RGB pipeline: a 3-channel VAE on 64x64 images (16x16 latents)."""
    return tiny_image_pipeline(denoiser="latent_dit", image_channels=3, image_size=64)


def colour_image(size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_vae_round_trips_rgb_shapes(pipe):
    images = torch.rand(2, 3, 64, 64) * 2 - 1  # (b, c, h, w)
    latents = pipe.vae.encode(images)
    assert latents.shape == (2, 4, 16, 16) and pipe.vae.latent_shape == (4, 16, 16)
    assert pipe.vae.decode(latents).shape == (2, 3, 64, 64)


def test_text_to_image_makes_rgb_and_guidance_is_batched(pipe):
    out = pipe("a red apple", num_samples=2, num_inference_steps=3, seed=0, progress=False)
    assert [im.shape for im in out.images] == [(64, 64, 3)] * 2
    assert all(im.dtype == np.uint8 for im in out.images)
    assert out.latents.shape == (2, 4, 16, 16)
    pipe.batch_guidance = False
    try:
        separate = pipe("a red apple", num_samples=2, num_inference_steps=3, seed=0,
                        progress=False)
    finally:
        pipe.batch_guidance = True
    torch.testing.assert_close(separate.latents, out.latents, rtol=1e-3, atol=1e-3)
    negative = pipe("a red apple", negative_prompt="a green apple", num_inference_steps=3,
                    seed=0, progress=False)
    assert not torch.equal(negative.latents, out.latents[:1])


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim", "euler", "dpm_solver_multistep"])
def test_every_scheduler_runs_in_colour(pipe, scheduler):
    out = pipe("a cat", num_inference_steps=3, seed=1, scheduler=scheduler, progress=False)
    assert out.images[0].shape == (64, 64, 3)


def test_image_to_image_and_inpainting_in_colour(pipe):
    image = colour_image()
    img2img, inpaint = same_components(pipe, "image-to-image"), same_components(pipe, "inpainting")
    same = img2img("a cat", image=image, strength=0.0, seed=0, progress=False)
    assert np.array_equal(same.images[0], image)  # strength 0: the colour input unchanged
    edited = img2img("a cat", image=image, strength=0.5, num_inference_steps=4, seed=0,
                     progress=False)
    assert edited.images[0].shape == (64, 64, 3)
    # a grayscale or RGBA input becomes RGB for a colour model
    grey = img2img("a cat", image=image[..., 0], strength=0.0, seed=0, progress=False)
    assert grey.images[0].shape == (64, 64, 3)
    mask = np.zeros((64, 64), np.uint8)
    mask[:, :24] = 255  # regenerate the left part
    out = inpaint("a dog", image=image, mask=mask, num_inference_steps=3, seed=0,
                  progress=False)
    result = out.images[0]
    assert result.shape == (64, 64, 3)
    assert np.array_equal(result[:, 24:], image[:, 24:])  # kept pixels, exactly, in colour
    assert not np.array_equal(result[:, :24], image[:, :24])


def test_rgb_png_carries_its_settings(pipe, tmp_path):
    out = pipe("a blue car", num_inference_steps=2, seed=3, progress=False)
    path = tmp_path / "car.png"
    path.write_bytes(png_bytes(out.images[0], out.metadata(0)))
    from PIL import Image

    with Image.open(path) as image:
        assert image.mode == "RGB" and image.size == (64, 64)
        assert np.array_equal(np.asarray(image), out.images[0])
    assert read_png_metadata(path)["prompt"] == "a blue car"


def test_grey_checkpoint_refuses_colour_inpainting():
    grey = tiny_image_pipeline("inpainting")
    mask = np.zeros((32, 32), np.uint8)
    mask[:8] = 255
    with pytest.raises(InputError, match=r"channel mismatch: .*grayscale \(1 channel\) but the "
                                         r"image to inpaint is in colour \(3 channels\)"):
        grey("a bag", image=colour_image(32), mask=mask, num_inference_steps=2, progress=False)
    # a grey picture stored as RGB loses nothing: accepted
    flat = np.repeat(colour_image(32)[..., :1], 3, axis=2)
    out = grey("a bag", image=flat, mask=mask, num_inference_steps=2, seed=0, progress=False)
    assert out.images[0].shape == (32, 32)
    assert np.array_equal(out.images[0][8:], flat[8:, :, 0])


def test_emoji_items_encode_once_per_image(tmp_path):
    from multimodal.data.emoji import EmojiDataset

    archives, sha = tiny_emoji_packages(tmp_path / "archives")
    data = EmojiDataset(split="train", archive_dir=str(archives), sha256=sha,
                        cache_dir=str(tmp_path / "cache"), val_fraction=0.0,
                        captions_per_image=3)
    vae = ImageVAETokenizer(**{**TINY["tokenizers"]["image_vae"], "in_channels": 3,
                               "image_size": 64})
    vae.fit(data, progress=False)
    prepared = ImageModality().prepare(data, {"image": vae, "text": tiny_tokenizer()},
                                       seq_len=64)
    assert prepared.latents.shape == (len(data), 4, 16, 16) and len(data) == 24
    torch.testing.assert_close(prepared.latents[0], prepared.latents[2])  # same image
    direct = vae.encode(data.get_images([0, 3]))
    torch.testing.assert_close(prepared.latents[[0, 3]], direct, rtol=1e-4, atol=1e-5)
