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


def test_a_bf16_output_records_its_dtype_and_replays_in_it(tmp_path, capsys):
    from multimodal.modalities.image.files import read_png, write_png

    ckpt = str(tiny_image_checkpoint(tmp_path / "image"))
    made = ["generate", "text-to-image", "--checkpoint", ckpt, "--prompt", "a bag",
            "--num-inference-steps", "3", "--seed", "1", "--no-progress"]
    assert main(made + ["--torch-dtype", "bfloat16", "--out", str(tmp_path / "bf16")]) == 0
    assert main(made + ["--out", str(tmp_path / "fp32")]) == 0
    settings = read_settings(tmp_path / "bf16" / "000.png")
    assert settings["torch_dtype"] == "bfloat16" and "device" not in settings  # made on a CPU
    assert "torch_dtype" not in read_settings(tmp_path / "fp32" / "000.png")  # as old files
    capsys.readouterr()
    assert main(["replay", str(tmp_path / "bf16" / "000.png"), "--checkpoint", ckpt,
                 "--out", str(tmp_path / "again")]) == 0
    assert "is identical to" in capsys.readouterr().out
    assert read_settings(tmp_path / "again" / "000.png")["torch_dtype"] == "bfloat16"

    # the recorded dtype is what makes it identical: the same file without it (an old file)
    # replays in float32, as before, and differs
    old = {k: v for k, v in settings.items() if k != "torch_dtype"}
    write_png(read_png(tmp_path / "bf16" / "000.png"), tmp_path / "old.png", old)
    result = replay(tmp_path / "old.png", checkpoint=ckpt, out=tmp_path / "as_fp32")
    assert not result["identical"]
    assert read_png(tmp_path / "as_fp32" / "000.png").tolist() == \
        read_png(tmp_path / "fp32" / "000.png").tolist()

    # a dtype no pipeline runs in is refused, naming what is accepted, before any work
    write_png(read_png(tmp_path / "old.png"), tmp_path / "int8.png",
              {**settings, "torch_dtype": "int8"})
    with pytest.raises(InputError, match="records torch_dtype 'int8'.*expected one of"):
        replay(tmp_path / "int8.png", checkpoint=ckpt, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()

    # made on another kind of device: replayed here, with a warning that says where it was made
    write_png(read_png(tmp_path / "old.png"), tmp_path / "cuda.png", {**old, "device": "cuda"})
    with pytest.warns(UserWarning, match="was made on cuda; replaying on cpu.*--device cuda"):
        replay(tmp_path / "cuda.png", checkpoint=ckpt, out=tmp_path / "y")


def test_a_bf16_text_replays_in_bf16(tmp_path):
    out = tmp_path / "gen"
    assert main(["generate", "text-generation", "--prompt", "The", "--max-new-tokens", "12",
                 "--seed", "3", "--dtype", "bf16", "--out", str(out)]) == 0
    assert read_settings(out / "000.txt")["torch_dtype"] == "bfloat16"
    result = replay(out / "000.txt", out=tmp_path / "again")
    assert result["identical"] and result["output"].metadata(0)["torch_dtype"] == "bfloat16"


@pytest.mark.slow  # runs the embedded video model's 25 steps three times
def test_a_composed_output_replays_each_step_in_its_dtype(tmp_path, capsys):
    from multimodal.modalities.video.files import ffmpeg_available

    if not ffmpeg_available():
        pytest.skip("text-to-audiovisual writes an MP4 with sound, which needs ffmpeg")
    assert main(["generate", "text-to-audiovisual", "--prompt", "a bag moving up", "--seed",
                 "3", "--torch-dtype", "bf16", "--no-progress",
                 "--out", str(tmp_path / "av")]) == 0
    settings = read_settings(tmp_path / "av" / "000.mp4")
    assert {s["torch_dtype"] for s in settings["steps"].values()} == {"bfloat16"}
    assert replay(tmp_path / "av" / "000.mp4", out=tmp_path / "again")["identical"]
    # without the steps' dtypes (a file made before they were recorded): float32, different
    for step in settings["steps"].values():
        del step["torch_dtype"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "000.mp4").write_bytes((tmp_path / "av" / "000.mp4").read_bytes())
    (tmp_path / "old" / "000.json").write_text(json.dumps(settings))
    assert not replay(tmp_path / "old" / "000.mp4", out=tmp_path / "as_fp32")["identical"]
