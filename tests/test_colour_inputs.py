"""Images users bring, in any mode and size: image-to-image and inpainting inputs, masks, and a
user's own folder fine-tuning a colour checkpoint.

Transparency is composited on white (as the emoji training data is), for grey and colour models
alike; any size is resized to the model's; masks are black and white or transparent where to
regenerate (OpenAI's), and a colour mask, a mask of another size or a dataset of another
channel count or size than the checkpoint's is refused with a message that names it.

Axes: h w height width, c channels.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from multimodal.data.images import ImageFolderDataset, composite, flatten_image, pil_to_array
from multimodal.errors import DataError, InputError
from multimodal.modalities.image.files import load_image_array, load_mask_array
from multimodal.testing import same_components, tiny_image_checkpoint, tiny_image_pipeline


def rgba_image(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    """(h, w, 4) uint8: random colours, alpha 0 on the left third, 255 on the right third and
    random between."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    pixels[:, : w // 3, 3] = 0
    pixels[:, 2 * w // 3 :, 3] = 255
    return pixels


def on_white(rgba: np.ndarray) -> np.ndarray:
    """The reference "over" operator in floats: (h, w, c + 1) -> (h, w, c) uint8."""
    alpha = rgba[..., -1:].astype(np.float64) / 255
    return np.rint(rgba[..., :-1] * alpha + 255 * (1 - alpha)).astype(np.uint8)


@pytest.fixture(scope="module")
def colour():
    """An untrained tiny colour pipeline, 3 channels at 64x64, like the emoji model."""
    return tiny_image_pipeline(image_channels=3, image_size=64)


@pytest.fixture(scope="module")
def grey():
    return tiny_image_pipeline()


def keep(pipe, image):
    """The image as the model reads it: image-to-image at strength 0 returns it unchanged."""
    return same_components(pipe, "image-to-image")("x", image=image, strength=0.0, seed=0,
                                        progress=False).images[0]


# -- reading one image ---------------------------------------------------------------------
def test_composite_is_the_rounded_over_operator_and_the_emoji_data_uses_it():
    from multimodal.data import emoji

    rgba = rgba_image(32, 48)
    rgba[0, :4] = [[0, 0, 0, 0], [255, 255, 255, 255], [1, 2, 3, 128], [200, 100, 0, 1]]
    got = composite(rgba.transpose(2, 0, 1)[None], (255, 255, 255))[0].transpose(1, 2, 0)
    assert np.array_equal(got, on_white(rgba))
    assert np.array_equal(got[0, :2], [[255, 255, 255], [255, 255, 255]])
    grey = composite(rgba[..., 2:].transpose(2, 0, 1)[None], (255,))  # LA: (1, 2, h, w)
    assert np.array_equal(grey[0, 0], on_white(rgba[..., 2:])[..., 0])
    assert emoji.composite is composite  # the training data and the inputs: one operator


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA", "P", "L+key", "RGB+key"])
def test_every_kind_of_transparency_is_composited_on_white(mode):
    if mode == "RGBA":
        image, expected = Image.fromarray(rgba_image()), on_white(rgba_image())
    elif mode == "LA":
        la = rgba_image()[..., 2:]
        image, expected = Image.fromarray(la), on_white(la)[..., 0]
    elif mode in ("PA", "P"):
        image = Image.new("P", (3, 1))
        image.putpalette([255, 0, 0, 0, 0, 255, 10, 20, 30])
        image.putdata([0, 1, 2])
        if mode == "P":
            image.info["transparency"] = 0  # index 0 (red) is clear
            expected = np.array([[[255, 255, 255], [0, 0, 255], [10, 20, 30]]], np.uint8)
        else:
            image = image.convert("PA")
            image.putpixel((1, 0), (1, 0))  # blue, clear
            expected = np.array([[[255, 0, 0], [255, 255, 255], [10, 20, 30]]], np.uint8)
    elif mode == "L+key":  # a grey PNG's tRNS colour key
        image = Image.fromarray(np.array([[0, 100, 0]], np.uint8))
        image.info["transparency"] = 0
        expected = np.array([[255, 100, 255]], np.uint8)
    else:
        image = Image.fromarray(np.array([[[0, 0, 0], [10, 20, 30]]], np.uint8))
        image.info["transparency"] = (0, 0, 0)
        expected = np.array([[[255, 255, 255], [10, 20, 30]]], np.uint8)
    flat = flatten_image(image)
    assert flat.mode == ("L" if expected.ndim == 2 else "RGB") and flat.size == image.size
    assert np.array_equal(np.asarray(flat), expected)
    assert np.array_equal(load_image_array(image, what="image"), expected)


def test_other_modes_are_converted_and_float_is_refused():
    sixteen = Image.fromarray(np.array([[0, 257 * 100, 65535]], np.uint16))  # a 16-bit PNG
    assert sixteen.mode.startswith("I")
    assert np.array_equal(np.asarray(flatten_image(sixteen)), [[0, 100, 255]])  # not clipped
    assert np.asarray(flatten_image(Image.new("CMYK", (1, 1), (0, 255, 255, 0)))).tolist() == \
        [[[255, 0, 0]]]
    assert np.asarray(flatten_image(Image.new("1", (2, 1), 1))).tolist() == [[255, 255]]
    with pytest.raises(DataError, match="32-bit float pixels.*no 8-bit reading; give an 8- or "
                                        "16-bit PNG"):
        flatten_image(Image.new("F", (2, 2)))
    with pytest.raises(InputError, match=r"^image: a F image"):
        load_image_array(Image.new("F", (2, 2)), what="image")


def test_arrays_of_every_channel_count_and_the_ones_refused():
    grey = np.full((4, 5), 7, np.uint8)
    assert np.array_equal(load_image_array(grey[..., None], what="image"), grey)
    la = np.stack([grey, np.zeros_like(grey)], axis=2)  # all clear
    assert np.array_equal(load_image_array(la, what="image"), np.full((4, 5), 255))
    assert load_image_array(rgba_image(4, 5), what="image").shape == (4, 5, 3)
    with pytest.raises(InputError, match=r"c 1, 2 \(grey \+ alpha\), 3 \(RGB\) or 4 \(RGBA\), "
                                         r"got ndarray of shape \(4, 5, 5\)"):
        load_image_array(np.zeros((4, 5, 5), np.uint8), what="image")
    with pytest.raises(InputError, match=r"image is empty \(0x0 pixels\)"):
        load_image_array(np.zeros((0, 0), np.uint8), what="image")


def test_pil_to_array_resizes_any_size_to_the_models():
    dot = Image.fromarray(np.array([[[200, 10, 10, 128]]], np.uint8))  # 1x1, half clear
    pixels = pil_to_array(dot, size=64, channels=3)
    assert pixels.shape == (3, 64, 64)
    assert np.array_equal(np.unique(pixels.reshape(3, -1), axis=1).ravel(), [227, 132, 132])
    wide = Image.fromarray(rgba_image(30, 90))
    assert pil_to_array(wide, size=64, channels=1).shape == (1, 64, 64)


# -- image-to-image and inpainting ---------------------------------------------------------
def test_rgba_inputs_are_composited_on_white_for_colour_and_grey_models(colour, grey):
    rgba = rgba_image()
    assert np.array_equal(keep(colour, rgba), on_white(rgba))  # exactly the emoji data's
    # a grey model sees the same white background, in grey (luma)
    expected = np.asarray(Image.fromarray(on_white(rgba_image(32, 32))).convert("L"))
    assert np.array_equal(keep(grey, rgba_image(32, 32)), expected)
    # edited for real, the output has the model's format
    out = same_components(colour, "image-to-image")("a cat", image=rgba, strength=0.5,
                                         num_inference_steps=2, seed=0, progress=False)
    assert out.images[0].shape == (64, 64, 3)


def test_a_1x1_and_a_4000x4000_rgba_image_are_resized_to_the_model(colour, tmp_path):
    dot = keep(colour, np.array([[[0, 0, 255, 0]]], np.uint8))  # one clear pixel
    assert dot.shape == (64, 64, 3) and (dot == 255).all()
    big = np.zeros((4000, 4000, 4), np.uint8)
    big[..., 0], big[:2000, :, 3] = 255, 255  # top half opaque red, bottom half clear
    Image.fromarray(big).save(tmp_path / "big.png")
    seen = keep(colour, str(tmp_path / "big.png"))
    assert seen.shape == (64, 64, 3)
    assert (seen[:30] == [255, 0, 0]).all() and (seen[34:] == 255).all()


def test_inpainting_keeps_the_composited_pixels_in_colour(colour):
    rgba = rgba_image()
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 40:] = 255
    out = same_components(colour, "inpainting")("a dog", image=rgba, mask=mask, num_inference_steps=2,
                                     seed=0, progress=False).images[0]
    assert np.array_equal(out[:, :40], on_white(rgba)[:, :40])


def test_grey_checkpoint_still_names_the_channel_mismatch_for_colour_rgba(grey):
    mask = np.zeros((32, 32), np.uint8)
    mask[:8] = 255
    with pytest.raises(InputError, match=r"channel mismatch: .*grayscale \(1 channel\) but the "
                                         r"image to inpaint is in colour \(3 channels\)"):
        same_components(grey, "inpainting")("a bag", image=rgba_image(32, 32), mask=mask,
                                 num_inference_steps=2, progress=False)
    # grey with alpha is grey: accepted, the kept pixels composited on white
    la = rgba_image(32, 32)[..., 2:]
    out = same_components(grey, "inpainting")("a bag", image=la, mask=mask, num_inference_steps=2, seed=0,
                                   progress=False)
    assert np.array_equal(out.images[0][8:], on_white(la)[8:, :, 0])


def mask_modes() -> dict[str, Image.Image]:
    """The same mask (left half regenerate) in every mode."""
    white = np.zeros((4, 6), np.uint8)
    white[:, :3] = 255
    palette = Image.fromarray(white).convert("P")
    clear = np.full((4, 6, 4), 90, np.uint8)  # OpenAI's: the image, clear where to regenerate
    clear[:, :3, 3], clear[:, 3:, 3] = 0, 255
    opaque = np.dstack([np.repeat(white[..., None], 3, axis=2), np.full((4, 6), 255, np.uint8)])
    return {"L": Image.fromarray(white), "1": Image.fromarray(white).convert("1"),
            "RGB": Image.fromarray(white).convert("RGB"), "P": palette,
            "RGBA clear": Image.fromarray(clear), "RGBA opaque": Image.fromarray(opaque),
            "LA clear": Image.fromarray(clear[..., 2:])}


@pytest.mark.parametrize("mode", list(mask_modes()))
def test_masks_of_every_mode_read_the_same(mode):
    expected = np.zeros((4, 6), np.uint8)
    expected[:, :3] = 255
    assert np.array_equal(load_mask_array(mask_modes()[mode]), expected)


def test_masks_that_say_nothing_clear_are_refused(colour):
    red = np.zeros((4, 6, 3), np.uint8)
    red[:, :3, 0] = 255
    with pytest.raises(InputError, match=r"mask is in colour \(pixel x=0, y=0 is \(255, 0, 0\)\)"
                                         r"; a mask is black and white: white = regenerate"):
        load_mask_array(red)
    jpeg_noise = np.full((4, 6, 3), 250, np.uint8)
    jpeg_noise[..., 1] = 240  # a white mask saved as a colour JPEG: still grey
    assert (load_mask_array(jpeg_noise) == 255).all()
    sixteen = np.zeros((4, 6), np.uint16)
    sixteen[:, :3] = 65535  # a 16-bit grey mask reads as images do: scaled to 8 bits
    expected = np.where(sixteen > 0, 255, 0).astype(np.uint8)
    assert np.array_equal(load_mask_array(Image.fromarray(sixteen)), expected)
    with pytest.raises(InputError, match=r"an? F \(32-bit\) mask is not accepted"):
        load_mask_array(Image.fromarray(np.zeros((4, 6), np.float32)))
    with pytest.raises(InputError, match=r"the mask is 32x32 pixels but the image is 64x64"):
        same_components(colour, "inpainting")("a dog", image=rgba_image(), mask=np.zeros((32, 32), np.uint8),
                                   num_inference_steps=2, progress=False)


def test_the_server_reads_masks_by_the_same_rule():
    pytest.importorskip("fastapi")
    from multimodal.serve.errors import APIError
    from multimodal.serve.images import _mask

    def png(image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    for image in mask_modes().values():
        assert np.array_equal(_mask(png(image), np.zeros((4, 6), np.uint8)),
                              load_mask_array(image))
    with pytest.raises(APIError, match="mask is in colour"):
        _mask(png(Image.new("RGB", (6, 4), (255, 0, 0))), np.zeros((4, 6), np.uint8))


# -- a user's colour folder fine-tunes a colour checkpoint ----------------------------------
def mixed_folder(directory) -> str:
    """Six images of every size and mode a user has, with captions; the list file's path."""
    directory.mkdir(parents=True, exist_ok=True)
    images = {
        "dot.png": Image.fromarray(np.array([[[220, 30, 30, 255]]], np.uint8)),  # 1x1 RGBA
        "big.png": Image.fromarray(rgba_image(300, 200)),  # RGBA, not square
        "photo.png": Image.fromarray(rgba_image(64, 64)[..., :3]),  # RGB at the model's size
        "grey.png": Image.fromarray(rgba_image(28, 28)[..., 0]),  # L at Fashion-MNIST's size
        "ghost.png": Image.fromarray(rgba_image(40, 24)[..., 2:]),  # LA
        "deep.png": Image.fromarray(np.full((16, 16), 40000, np.uint16)),  # 16-bit grey
    }
    lines = []
    for name, image in images.items():
        image.save(directory / name)
        lines.append(json.dumps({"image": name, "caption": f"my {name[:-4]} emoji"}))
    path = directory / "images.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_image_folder_reads_any_size_and_mode_as_the_configs_format(tmp_path):
    path = mixed_folder(tmp_path / "folder")
    data = ImageFolderDataset(path=path, channels=3, image_size=64, val_fraction=0.0)
    images = data.get_images()
    assert images.shape == (6, 3, 64, 64) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    by_name = dict(zip((p.split("/")[-1] for p in map(str, data.paths)), images))
    assert torch.allclose(by_name["dot.png"][:, 0, 0], torch.tensor([220, 30, 30]) / 127.5 - 1)
    assert (by_name["big.png"][:, :, :5] == 1).all()  # its clear left third: white
    assert (by_name["ghost.png"][:, :, :5] == 1).all()
    assert torch.allclose(by_name["deep.png"], torch.full((3, 64, 64), 156 / 127.5 - 1))
    grey = ImageFolderDataset(path=path, channels=1, image_size=32, val_fraction=0.0)
    assert grey.get_images().shape == (6, 1, 32, 32)
    with pytest.raises(DataError, match="image_size must be a positive integer"):
        ImageFolderDataset(path=path, image_size=0)
    with pytest.raises(DataError, match=r"channels must be 1 \(grey\) or 3 \(RGB\), got 4"):
        ImageFolderDataset(path=path, channels=4)


def finetune_config(checkpoint, folder: str, **data) -> dict:
    """What examples/finetune_images.py writes: the checkpoint's parts, LoRA, its folder."""
    from multimodal.checkpoint import read_config

    base = read_config(checkpoint)
    return {"task": "text-to-image", "seed": 0, "init_from": str(checkpoint),
            "tokenizers": base["tokenizers"], "backbone": base["backbone"],
            "decoders": base["decoders"],
            "data": {"image": {"type": "image_folder", "path": folder, "val_fraction": 0.0,
                               **data}},
            "train": {"max_steps": 2, "batch_size": 4, "seq_len": 32, "warmup_steps": 1,
                      "lr": 1e-3, "eval_every": 0, "checkpoint_every": 0,
                      "keep_checkpoints": 1, "log_every": 1, "lora": {"rank": 4}}}


@pytest.fixture(scope="module")
def colour_checkpoint(tmp_path_factory):
    return tiny_image_checkpoint(tmp_path_factory.mktemp("colour") / "ckpt", "latent_dit",
                                 image_channels=3, image_size=64)


def test_a_colour_folder_fine_tunes_a_colour_checkpoint(colour_checkpoint, tmp_path):
    from multimodal.pipelines import load_pipeline
    from multimodal.training.trainer import train

    folder = mixed_folder(tmp_path / "folder")
    result = train(finetune_config(colour_checkpoint, folder, channels=3, image_size=64),
                   out_dir=tmp_path / "run", progress=False)
    assert result["step"] == 2 and np.isfinite(result["loss_image"])
    pipe = load_pipeline("text-to-image", result["checkpoint"])
    image = pipe("my dot emoji", num_inference_steps=2, seed=0, progress=False).images[0]
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8


@pytest.mark.parametrize("data, got", [({"channels": 1, "image_size": 64}, "grey 64x64"),
                                       ({"channels": 3, "image_size": 32}, "RGB 32x32"),
                                       ({}, "grey 32x32")])  # image_folder's defaults
def test_a_folder_read_in_another_format_than_the_checkpoint_is_refused(colour_checkpoint,
                                                                        tmp_path, data, got):
    from multimodal.training.trainer import Trainer

    folder = mixed_folder(tmp_path / "folder")
    with pytest.raises(DataError, match=rf"data.image: channel/size mismatch: the dataset's "
                                        rf"images are {got} .* reads RGB 64x64 \(3, 64, 64\); "
                                        r".*data.image.channels: 3 and data.image.image_size: "
                                        "64"):
        Trainer(finetune_config(colour_checkpoint, folder, **data), out_dir=tmp_path / "run",
                progress=False)
