"""Smoke tests: each example script runs as a user would run it."""

import subprocess
import sys
from pathlib import Path

from multimodal.testing import tiny_config
from multimodal.training.trainer import train

from conftest import requires_fashion_mnist, requires_fortunes

ROOT = Path(__file__).resolve().parent.parent


def run_example(name, *args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


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
