"""Non-square images: ``image_size: [height, width]`` in data and VAE, ``height``/``width`` at
generation (diffusers' names), how another aspect ratio is fitted (stretch, pad, crop), and the
refusals that name what is accepted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from multimodal.checkpoint import read_config
from multimodal.cli import main
from multimodal.data.images import ImageFolderDataset, pil_to_array
from multimodal.errors import DataError, InputError
from multimodal.modalities.image.files import read_png_metadata
from multimodal.modalities.image.vae import ImageVAETokenizer
from multimodal.replay import replay
from multimodal.testing import TINY, tiny_image_checkpoint, tiny_image_pipeline

RED, BLUE, GREEN, WHITE = (200, 0, 0), (0, 0, 200), (0, 150, 0), (255, 255, 255)


def stripes(*colours: tuple[int, int, int], height: int = 4, band: int = 2) -> Image.Image:
    """An RGB image of vertical bands ``band`` pixels wide, one per colour, left to right."""
    pixels = np.zeros((height, band * len(colours), 3), np.uint8)
    for i, colour in enumerate(colours):
        pixels[:, i * band : (i + 1) * band] = colour
    return Image.fromarray(pixels)


# -- fitting another aspect ratio: exact on hand-made images ----------------------------------
def test_stretch_pad_and_crop_fit_a_wide_image():
    wide = stripes(GREEN, RED, BLUE, GREEN)  # 8 wide x 4 high
    expected_row = np.array([GREEN] * 2 + [RED] * 2 + [BLUE] * 2 + [GREEN] * 2).T  # (3, 8)

    stretched = pil_to_array(wide, size=8, channels=3)  # the old behaviour, still the default
    assert stretched.shape == (3, 8, 8)
    assert (stretched == expected_row[:, None, :]).all()  # each column kept, made taller

    padded = pil_to_array(wide, size=8, channels=3, aspect="pad")
    assert (padded[:, 2:6] == expected_row[:, None, :]).all()  # centred, unscaled
    assert (padded[:, :2] == 255).all() and (padded[:, 6:] == 255).all()  # white letterbox
    grey = pil_to_array(wide, size=8, channels=1, aspect="pad")
    assert (grey[:, :2] == 0).all() and (grey[:, 6:] == 0).all()  # black for grey images
    assert grey[0, 2, 0] == round(0.299 * 0 + 0.587 * 150 + 0.114 * 0)  # green's luma
    custom = pil_to_array(wide, size=8, channels=3, aspect="pad", pad_colour=[10, 20, 30])
    assert (custom[:, 0, 0] == [10, 20, 30]).all()

    cropped = pil_to_array(wide, size=4, channels=3, aspect="crop")  # the centred 4x4
    assert (cropped[:, :, :2] == np.array(RED)[:, None, None]).all()
    assert (cropped[:, :, 2:] == np.array(BLUE)[:, None, None]).all()

    # [height, width]: a tall image cropped to a wide box keeps its middle rows
    tall = stripes(RED, BLUE, height=12, band=2).transpose(Image.Transpose.ROTATE_90)
    rows = pil_to_array(tall, size=(2, 12), channels=3, aspect="crop")  # from 12 x 4
    assert rows.shape == (3, 2, 12)
    with pytest.raises(ValueError, match="aspect must be one of stretch, pad, crop"):
        pil_to_array(wide, size=8, channels=3, aspect="fit")


def test_image_folder_reads_rectangles_in_each_aspect(tmp_path):
    stripes(GREEN, RED, BLUE, GREEN, height=4).save(tmp_path / "wide.png")  # 8x4
    stripes(RED, BLUE, height=8).save(tmp_path / "square.png")  # 4x8: tall
    (tmp_path / "list.jsonl").write_text(
        "".join(json.dumps({"image": n, "caption": n}) + "\n" for n in ("wide.png", "square.png")))
    path = str(tmp_path / "list.jsonl")
    for aspect in ("stretch", "pad", "crop"):
        data = ImageFolderDataset(path=path, image_size=[4, 8], channels=3, aspect=aspect,
                                  val_fraction=0.0)
        images = data.get_images()
        assert images.shape == (2, 3, 4, 8) and data[0]["image"].shape == (3, 4, 8)
        assert (data.height, data.width, data.image_size) == (4, 8, (4, 8))
    # the 8x4 image already has the box's shape: the same pixels in every aspect
    by_aspect = {a: ImageFolderDataset(path=path, image_size=[4, 8], channels=3, aspect=a,
                                       val_fraction=0.0).get_images() for a in
                 ("stretch", "pad", "crop")}
    wide_index = [p.name for p in data.paths].index("wide.png")
    assert all(torch.equal(by_aspect["pad"][wide_index], v[wide_index])
               for v in by_aspect.values())
    tall_index = 1 - wide_index
    padded = by_aspect["pad"][tall_index]  # the tall image letterboxed: white both sides
    assert (padded[:, :, :2] == 1).all() and (padded[:, :, -2:] == 1).all()
    assert ImageFolderDataset(path=path, image_size=8, val_fraction=0.0).image_size == 8

    for kwargs, message in (
            ({"image_size": [0, 8]}, (r"image_size must be a positive integer .* or \[height, "
                                      r"width\] .*got \[0, 8\]")),
            ({"image_size": [4, 8, 2]}, r"image_size must be .*got \[4, 8, 2\]"),
            ({"aspect": "fit"}, "aspect must be one of stretch, pad, crop .*got 'fit'"),
            ({"pad_colour": [1, 2]}, r"pad_colour must be a grey level 0-255 or \[r, g, b\]")):
        with pytest.raises(DataError, match=message):
            ImageFolderDataset(path=path, **kwargs)


# -- the VAE and the denoisers at other sizes ---------------------------------------------------
def test_a_rectangular_vae_encodes_its_size_and_other_multiples():
    vae = ImageVAETokenizer(**TINY["tokenizers"]["image_vae"], image_size=[16, 32])
    assert (vae.height, vae.width, vae.image_size) == (16, 32, (16, 32))
    assert vae.latent_shape == (4, 4, 8) and vae.image_shape == (1, 16, 32)
    latents = vae.encode(torch.zeros(2, 1, 16, 32))
    assert latents.shape == (2, 4, 4, 8)
    assert vae.decode(torch.zeros(1, 4, 6, 2)).shape == (1, 1, 24, 8)  # convolutional
    with pytest.raises(ValueError, match=r"image_size \[16, 30\] must divide by the "
                                         r"down-sampling factor 4 .*\(height and width\)"):
        ImageVAETokenizer(**TINY["tokenizers"]["image_vae"], image_size=[16, 30])
    with pytest.raises(ValueError, match=r"must be a positive integer .* or \[height, width\]"):
        ImageVAETokenizer(**TINY["tokenizers"]["image_vae"], image_size=[16])


@pytest.mark.parametrize("denoiser", ["latent_unet", "latent_dit"])
def test_generation_at_another_height_and_width(denoiser):
    pipe = tiny_image_pipeline(denoiser=denoiser)  # trained at 32x32
    run = {"num_inference_steps": 2, "seed": 3, "progress": False}
    default = pipe("a bag", **run)
    same = pipe("a bag", height=32, width=32, **run)
    assert np.array_equal(default.images[0], same.images[0])  # None is the training size
    assert default.metadata(0)["height"] == 32 and default.metadata(0)["width"] == 32
    wide = pipe("a bag", height=24, width=56, num_samples=2, **run)
    assert [image.shape for image in wide.images] == [(24, 56)] * 2
    assert wide.latents.shape == (2, 4, 6, 14)
    assert (wide.metadata(1)["height"], wide.metadata(1)["width"]) == (24, 56)
    assert wide.images[0].std() > 0  # not a blank decode
    pt = pipe("a bag", height=8, width=128, output_type="pt", **run).images
    assert pt.shape == (1, 1, 8, 128)


def test_the_dit_rebuilds_its_positions_for_each_grid():
    pipe = tiny_image_pipeline(denoiser="latent_dit", image_size=(16, 32))
    embed = pipe.denoiser.net.pos_embed
    x = torch.zeros(1, 4, 4, 8)  # (b, l, y, x) at the training size: 2x4 patches
    tokens = embed(x)  # (b, m, w), zero latents: the position table alone (plus the bias)
    bias = embed.proj.bias
    positions = tokens[0] - bias
    assert positions.shape == (8, 16)
    assert not torch.allclose(positions[0], positions[1])
    # the sin-cos table of a 2x4 grid over the longer side's range (base_size 4 patches)
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    expected = get_2d_sincos_pos_embed(16, (2, 4), base_size=4, interpolation_scale=1,
                                       output_type="pt")
    assert torch.allclose(positions, expected.float(), atol=1e-5)
    taller = embed(torch.zeros(1, 4, 8, 8))[0] - bias  # 4x4 patches: another table
    assert taller.shape == (16, 16)
    # PixArt's interpolated grid: the first row and column are the same position everywhere
    assert torch.allclose(taller[0], positions[0], atol=1e-6)


def test_editing_at_another_size_keeps_the_unmasked_pixels():
    pipe = tiny_image_pipeline("inpainting", image_channels=3, image_size=32)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 80, 3), dtype=np.uint8)
    mask = np.zeros((40, 80), np.uint8)
    mask[:, 40:] = 255
    out = pipe("a", image=image, mask=mask, height=40, width=80, num_inference_steps=2,
               seed=0, progress=False)
    assert out.images[0].shape == (40, 80, 3)
    assert np.array_equal(out.images[0][:, :40], image[:, :40])  # same size: no resampling
    edit = tiny_image_pipeline("image-to-image")
    result = edit("a", image=image, strength=0.0, height=16, width=48, progress=False)
    assert result.images[0].shape == (16, 48) and result.metadata(0)["width"] == 48


@pytest.mark.parametrize("kwargs, message", [
    ({"height": 30}, (r"height must be a multiple of 8 from 8 to 128 pixels \(the VAE's "
                      r"down-sampling factor 4 times the denoiser's 2; at most 4x the longer "
                      r"side of the size the model was trained at, 32x32 \(width x height\), "
                      r"the default\), got 30")),
    ({"width": 136}, r"width must be a multiple of 8 from 8 to 128 pixels .*got 136"),
    ({"width": 0}, r"width must be a multiple of 8 .*got 0"),
    ({"height": "32"}, r"height must be a multiple of 8 .*got '32'"),
    ({"height": True}, r"height must be a multiple of 8 .*got True"),
])
def test_sizes_that_are_not_accepted_are_refused_naming_what_is(kwargs, message):
    pipe = tiny_image_pipeline()
    with pytest.raises(InputError, match=message):
        pipe("a", num_inference_steps=1, progress=False, **kwargs)


def test_the_dit_multiple_is_its_patch_side_times_the_vae_factor():
    pipe = tiny_image_pipeline(denoiser="latent_dit", patch_size=4)
    assert pipe.size_limits() == (16, 128, (32, 32))
    with pytest.raises(InputError, match="width must be a multiple of 16 from 16 to 128"):
        pipe("a", width=40, num_inference_steps=1, progress=False)


# -- the command line and replay ---------------------------------------------------------------
def test_cli_height_width_and_replay_of_a_rectangle(tmp_path, capsys):
    checkpoint = str(tiny_image_checkpoint(tmp_path / "ckpt", "latent_dit", image_size=(16, 32)))
    out = tmp_path / "img"
    assert main(["generate", "text-to-image", "--checkpoint", checkpoint, "--prompt", "a bar",
                 "--num-inference-steps", "2", "--seed", "4", "--height", "24", "--width", "40",
                 "--no-progress", "--out", str(out)]) == 0
    with Image.open(out / "000.png") as image:
        assert image.size == (40, 24)
    settings = read_png_metadata(out / "000.png")
    assert (settings["height"], settings["width"]) == (24, 40)
    result = replay(out / "000.png", checkpoint=checkpoint, out=tmp_path / "again")
    assert result["identical"] and result["kwargs"]["height"] == 24
    assert result["output"].images[0].shape == (24, 40)
    # the default is the checkpoint's own rectangle
    assert main(["generate", "text-to-image", "--checkpoint", checkpoint, "--prompt", "a bar",
                 "--num-inference-steps", "1", "--no-progress", "--out",
                 str(tmp_path / "default")]) == 0
    with Image.open(tmp_path / "default" / "000.png") as image:
        assert image.size == (32, 16)
    capsys.readouterr()
    assert main(["generate", "text-to-image", "--checkpoint", checkpoint, "--prompt", "a",
                 "--height", "20", "--no-progress", "--out", str(tmp_path / "bad")]) == 2
    assert "height must be a multiple of 8" in capsys.readouterr().err


# -- training on rectangles, and fine-tuning refusals -------------------------------------------
def wide_folder(directory, *, count: int = 12) -> str:
    """``count`` 48x24 grey PNGs (wider than high): a bar left or right, captioned."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        pixels = np.zeros((24, 48), np.uint8)
        side = "left" if i % 2 else "right"
        if side == "left":
            pixels[6:18, 4:20] = 220
        else:
            pixels[6:18, 28:44] = 220
        Image.fromarray(pixels).save(directory / f"{i:02d}.png")
        lines.append(json.dumps({"image": f"{i:02d}.png", "caption": f"a bar on the {side}"}))
    (directory / "list.jsonl").write_text("\n".join(lines) + "\n")
    return str(directory / "list.jsonl")


def rectangle_config(folder: str, denoiser: str = "latent_dit", **data) -> dict:
    from multimodal.testing import tiny_image_config

    return tiny_image_config(
        tokenizers={"image": {"image_size": [16, 32], "fit_steps": 2, "batch_size": 4}},
        decoders={"image": {"type": denoiser, **TINY["decoders"][denoiser],
                            "sample_size": [4, 8]}},
        data={"image": {"type": "image_folder", "path": folder, "image_size": [16, 32],
                        "aspect": "pad", "val_fraction": 0.0, **data}},
        train={"max_steps": 2, "batch_size": 4, "eval_every": 0, "checkpoint_every": 0,
               "keep_checkpoints": 1})


def test_training_on_rectangles_end_to_end_and_fine_tune_refusals(tmp_path):
    from multimodal.pipelines import load_pipeline
    from multimodal.training.trainer import Trainer, train

    folder = wide_folder(tmp_path / "data")
    result = train(rectangle_config(folder), out_dir=tmp_path / "run", progress=False)
    assert result["step"] == 2 and np.isfinite(result["loss_image"])
    pipe = load_pipeline("text-to-image", result["checkpoint"])
    assert (pipe.vae.height, pipe.vae.width, pipe.denoiser.latent_shape) == (16, 32, (4, 4, 8))
    image = pipe("a bar on the left", num_inference_steps=2, seed=0, progress=False).images[0]
    assert image.shape == (16, 32)
    assert pipe("a bar", height=32, width=16, num_inference_steps=1, seed=0,
                progress=False).images[0].shape == (32, 16)

    # a fine-tune reading the folder at another size than the checkpoint's VAE is refused
    base = read_config(Path(result["checkpoint"]))
    for size, got in ((32, "grey 32x32"), ([32, 16], "grey 16x32")):
        config = {**rectangle_config(folder, image_size=size), "init_from": result["checkpoint"],
                  "tokenizers": base["tokenizers"]}
        with pytest.raises(DataError, match=rf"channel/size mismatch: the dataset's images are "
                                            rf"{got} .*reads grey 32x16 \(1, 16, 32\); .*"
                                            r"data.image.image_size: \[16, 32\]"):
            Trainer(config, out_dir=tmp_path / "refused", progress=False)


def test_a_vae_being_fitted_refuses_data_of_another_size(tmp_path):
    vae = ImageVAETokenizer(**TINY["tokenizers"]["image_vae"], image_size=[16, 32])
    data = [{"image": torch.zeros(1, 32, 16)}]
    with pytest.raises(DataError, match=r"expects images of shape \(c, h, w\) = \(1, 16, 32\), "
                                        r"the dataset gives \(1, 32, 16\).*\[height, width\]"):
        vae.fit(data, progress=False)
