"""multimodal replay: any output file regenerates from the settings it carries."""

from __future__ import annotations

import json

import pytest

from multimodal.cli import main
from multimodal.errors import InputError
from multimodal.replay import read_settings, replay
from multimodal.testing import tiny_config, tiny_image_checkpoint
from multimodal.training.trainer import train


def test_text_and_image_outputs_replay_identically(tmp_path, capsys):
    text_ckpt = train(tiny_config(train={"max_steps": 2}), out_dir=tmp_path / "text",
                      progress=False)["checkpoint"]
    assert main(["generate", "text-generation", "--checkpoint", text_ckpt, "--prompt", "The",
                 "--max-new-tokens", "8", "--num-samples", "2", "--seed", "5",
                 "--out", str(tmp_path / "gen")]) == 0
    result = replay(tmp_path / "gen" / "001.txt", checkpoint=text_ckpt, out=tmp_path / "again")
    assert result["identical"] and result["replayed"].endswith("001.txt")

    image_ckpt = str(tiny_image_checkpoint(tmp_path / "image"))
    assert main(["generate", "text-to-image", "--checkpoint", image_ckpt, "--prompt", "a bag",
                 "--num-inference-steps", "2", "--num-samples", "2", "--seed", "1",
                 "--no-progress", "--out", str(tmp_path / "img")]) == 0
    capsys.readouterr()
    assert main(["replay", str(tmp_path / "img" / "001.png"), "--checkpoint", image_ckpt,
                 "--out", str(tmp_path / "img2")]) == 0
    assert "is identical to" in capsys.readouterr().out

    # a different model is refused, naming both ids
    other = str(tiny_image_checkpoint(tmp_path / "other", denoiser="latent_dit"))
    with pytest.raises(InputError, match="was made by checkpoint .* but .* is"):
        replay(tmp_path / "img" / "000.png", checkpoint=other, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_files_without_settings_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_settings(tmp_path / "nothing.png")
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    with pytest.raises(InputError, match="has no settings file a.json beside it"):
        read_settings(tmp_path / "a.wav")
    (tmp_path / "a.json").write_text("{broken")
    with pytest.raises(InputError, match="is not valid JSON"):
        read_settings(tmp_path / "a.wav")
    (tmp_path / "b.json").write_text(json.dumps({"task": "text-to-nothing"}))
    with pytest.raises(InputError, match="'text-to-nothing', which is not registered"):
        replay(tmp_path / "b.json")
    (tmp_path / "c.bmp").write_bytes(b"BM")
    with pytest.raises(InputError, match="cannot read settings from a .bmp file"):
        read_settings(tmp_path / "c.bmp")


def test_bad_png_settings_and_grids_are_clear_errors(tmp_path):
    import numpy as np
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("multimodal", "{not json")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "bad.png", pnginfo=info)
    with pytest.raises(InputError, match="metadata is not valid JSON"):
        read_settings(tmp_path / "bad.png")
    info = PngInfo()
    info.add_text("multimodal", json.dumps({"task": "text-to-image", "sample": None,
                                            "num_samples": 4}))
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "grid.png", pnginfo=info)
    with pytest.raises(InputError, match="shows 4 samples together"):
        replay(tmp_path / "grid.png")
    with pytest.raises(InputError, match="is a directory"):
        read_settings(tmp_path)


def test_an_edit_names_the_input_replay_lacks():
    from multimodal.registry import pipelines
    from multimodal.replay import call_kwargs

    settings = {"task": "image-to-image", "prompt": "a bag", "seed": 0, "strength": 0.6}
    with pytest.raises(InputError, match="image-to-image needs its 'image' input, which the "
                                         "file does not record .it records: task, prompt"):
        call_kwargs(pipelines.get("image-to-image"), "image-to-image", settings)
