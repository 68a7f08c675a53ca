"""Smoke tests: each example script runs as a user would run it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from multimodal.testing import tiny_config
from multimodal.training.trainer import train

from conftest import requires_espeak, requires_fashion_mnist, requires_fortunes

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # every example script runs in a subprocess


def run_example(name, *args, cwd=ROOT):
    # torch's thread count as in-process tests (conftest.py): threads beyond the free cores
    # make small models many times slower on a busy machine
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("MULTIMODAL_TEST_THREADS", "1"))
    return subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)


@requires_fortunes
def test_text_generation_example(tmp_path):
    train(tiny_config(train={"max_steps": 2}), out_dir=tmp_path, progress=False)
    out = run_example("text_generation.py", "Once", "--checkpoint", str(tmp_path),
                      "--max-new-tokens", "8")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Once") and "sample 2:" in out.stdout


@requires_fortunes
def test_train_text_example(tmp_path):
    out = run_example("train_text.py", "--steps", "3", "--out-dir", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr
    assert "bits per byte" in out.stdout
    assert (tmp_path / "run" / "checkpoints" / "step_000003" / "model.safetensors").is_file()


def test_text_to_image_example(tmp_path):
    from multimodal.testing import tiny_image_checkpoint

    ckpt = tiny_image_checkpoint(tmp_path / "ckpt")
    out = run_example("text_to_image.py", "a bag", "--checkpoint", str(ckpt), "--out",
                      str(tmp_path / "out"), "--steps", "2")
    assert out.returncode == 0, out.stderr
    for name in ("samples.png", "edited.png", "inpainted.png"):
        assert (tmp_path / "out" / name).is_file()


@requires_fashion_mnist
def test_image_to_text_example(tmp_path):
    from multimodal.registry import specs

    config = specs.get("caption").tiny_config()
    config["decoders"]["image"] = {"type": "latent_dit", "num_layers": 2,
                                   "num_attention_heads": 2, "attention_head_dim": 8}
    config["data"]["image"] = dict(config["data"]["caption"])
    config["tokenizers"]["image"]["fit_on"] = "image"
    train(config, out_dir=tmp_path / "run", progress=False)
    out = run_example("image_to_text.py", "--checkpoint", str(tmp_path / "run"), "--steps", "2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("-> captioned") == 5


@requires_espeak
def test_text_to_audio_example(tmp_path, monkeypatch):
    from multimodal.registry import specs

    monkeypatch.setenv("MULTIMODAL_CACHE", str(tmp_path / "cache"))  # espeak renders
    train(specs.get("audio").tiny_config(), out_dir=tmp_path / "run", progress=False)
    out = run_example("text_to_audio.py", "seven", "--checkpoint", str(tmp_path / "run"),
                      "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    for vocoder in ("parallel", "autoregressive", "griffin-lim"):
        assert (tmp_path / "out" / f"{vocoder}.wav").read_bytes()[:4] == b"RIFF"
    assert "phonemes:" in out.stdout


def test_text_to_video_example(tmp_path):
    from multimodal.testing import tiny_video_checkpoint

    ckpt = tiny_video_checkpoint(tmp_path / "ckpt")
    out = run_example("text_to_video.py", "a bag moving up", "--checkpoint", str(ckpt),
                      "--out", str(tmp_path / "out"), "--steps", "2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("8 frames at 10 fps") == 2
    for name in ("000.gif", "001.gif", "strip.png"):
        assert (tmp_path / "out" / name).is_file()


@requires_espeak
@requires_fashion_mnist
@requires_fortunes
def test_train_joint_example(tmp_path, monkeypatch):
    monkeypatch.setenv("MULTIMODAL_CACHE", str(tmp_path / "cache"))  # espeak renders
    out = run_example("train_joint.py", "--steps", "2", "--out-dir", str(tmp_path / "run"),
                      "--out", str(tmp_path / "out"), "--inference-steps", "2")
    assert out.returncode == 0, out.stderr
    for name in ("text", "image", "caption", "video", "audio"):
        assert f"{name:>7}: train loss" in out.stdout
    assert (tmp_path / "run" / "checkpoints" / "step_000002" / "model.safetensors").is_file()
    for name in ("text.txt", "image.png", "audio.wav", "video.gif"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    for task in ("text-generation", "text-to-image", "text-to-audio", "text-to-video"):
        assert f"{task} -> " in out.stdout


@requires_fashion_mnist
def test_finetune_images_example(tmp_path):
    import yaml

    from multimodal.testing import tiny_image_checkpoint

    ckpt = tiny_image_checkpoint(tmp_path / "ckpt")
    run = tmp_path / "run"
    out = run_example("finetune_images.py", "--checkpoint", str(ckpt), "--steps", "2",
                      "--num-images", "8", "--batch-size", "4", "--inference-steps", "2",
                      "--out-dir", str(run))
    assert out.returncode == 0, out.stderr
    assert len((run / "my_images" / "images.jsonl").read_text().splitlines()) == 8
    config = yaml.safe_load((run / "finetune.yaml").read_text())
    assert config["init_from"] == str(ckpt) and config["train"]["lora"] == {"rank": 8}
    assert config["data"]["image"]["type"] == "image_folder"
    assert f"multimodal train {run / 'finetune.yaml'} init_from={ckpt}" in out.stdout
    assert (run / "checkpoints" / "step_000002" / "model.safetensors").is_file()
    assert Image.open(run / "grid.png").size == (8 * 32, 2 * 32)

    # the user's own folder, backbone frozen instead of adapters
    out = run_example("finetune_images.py", "--checkpoint", str(ckpt), "--steps", "1",
                      "--folder", str(run / "my_images"), "--freeze-backbone",
                      "--inference-steps", "2", "--out-dir", str(tmp_path / "frozen"))
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load((tmp_path / "frozen" / "finetune.yaml").read_text())
    assert config["train"]["freeze"] == ["backbone"] and "lora" not in config["train"]


@requires_fashion_mnist
def test_finetune_images_example_on_a_colour_checkpoint(tmp_path):
    import json

    import numpy as np
    import yaml

    from multimodal.testing import tiny_image_checkpoint

    # a tiny RGB 64x64 checkpoint, like the emoji model; the example folder is made in colour
    ckpt = tiny_image_checkpoint(tmp_path / "ckpt", "latent_dit", image_channels=3,
                                 image_size=64)
    run = tmp_path / "run"
    out = run_example("finetune_images.py", "--checkpoint", str(ckpt), "--steps", "2",
                      "--num-images", "6", "--batch-size", "4", "--inference-steps", "2",
                      "--out-dir", str(run))
    assert out.returncode == 0, out.stderr
    first = json.loads((run / "my_images" / "images.jsonl").read_text().splitlines()[0])
    assert first["caption"].startswith("a photo of my red ")
    with Image.open(run / "my_images" / first["image"]) as image:
        assert image.mode == "RGBA" and image.size == (28, 28)
        assert (np.asarray(image)[..., 3] == 0).any()  # a transparent background
    data = yaml.safe_load((run / "finetune.yaml").read_text())["data"]["image"]
    assert (data["channels"], data["image_size"]) == (3, 64)
    with Image.open(run / "grid.png") as grid:
        assert grid.mode == "RGB" and grid.size == (8 * 64, 2 * 64)
