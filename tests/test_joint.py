"""configs/tiny.yaml: one shared backbone with every decoder, trained together, serving every
task from one checkpoint, alone and under torchrun."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from multimodal.config import load_config
from multimodal.pipelines import load_pipeline
from multimodal.checkpoint import find_checkpoint
from multimodal.training.trainer import train

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.yaml"

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")


@pytest.fixture(scope="module")
def joint(tmp_path_factory):
    root = tmp_path_factory.mktemp("joint")
    old = os.environ.get("MULTIMODAL_CACHE")
    os.environ["MULTIMODAL_CACHE"] = str(root / "cache")
    try:
        result = train(load_config(TINY), out_dir=root / "run", progress=False)
    finally:
        if old is None:
            os.environ.pop("MULTIMODAL_CACHE")
        else:
            os.environ["MULTIMODAL_CACHE"] = old
    return root, result


def test_every_decoder_trains_on_the_shared_backbone(joint):
    _, result = joint
    for name in ("text", "image", "caption", "video", "audio"):
        assert result[f"loss_{name}"] > 0 and f"val_{name}_loss" in result


def test_one_checkpoint_serves_every_task(joint):
    import numpy as np

    root, _ = joint
    run = root / "run"
    assert isinstance(load_pipeline("text-generation", run)("A", max_new_tokens=3,
                                                            seed=0).texts[0], str)
    image = load_pipeline("text-to-image", run)("a bag", num_inference_steps=2, seed=0,
                                                progress=False).images[0]
    assert image.dtype == np.uint8
    clip = load_pipeline("text-to-video", run)("a bag moving up", num_inference_steps=2,
                                               seed=0, progress=False).videos[0]
    assert clip.shape[0] == 8
    assert isinstance(load_pipeline("image-to-text", run)(image, max_new_tokens=3).texts[0],
                      str)
    wave = load_pipeline("text-to-audio", run)("seven", seed=0, progress=False).audios[0]
    assert wave.ndim == 1 and len(wave) > 0


@pytest.mark.slow  # torchrun, 2 processes
def test_tiny_joint_runs_under_torchrun_with_two_processes(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MULTIMODAL_CACHE=str(tmp_path / "cache"))
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "multimodal", "train", str(TINY), "train.max_steps=2", "--out-dir",
         str(tmp_path / "run"), "--no-progress"], capture_output=True, text=True, env=env,
        timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (find_checkpoint(tmp_path / "run") / "model.safetensors").is_file()


def test_demo_writes_every_output_from_one_checkpoint(joint, tmp_path):
    import json

    import numpy as np
    from PIL import Image

    from multimodal.demo import VIDEO_PROMPTS, run_demo
    from multimodal.modalities.video.files import ffmpeg_available, read_video_info
    from multimodal.modalities.image.files import read_png_metadata

    root, _ = joint
    lines = list(run_demo(tmp_path / "demo", checkpoint=root / "run"))
    out = tmp_path / "demo"
    assert not any("skipped" in line for line in lines), lines
    assert (out / "text.txt").read_text().startswith("The secret of life is")
    assert Image.open(out / "image.png").size == (5 * 128, 2 * 128)
    assert (out / "audio.wav").stat().st_size > 44
    gif = read_video_info(out / "video.gif")
    assert gif["frames"] == 8 and gif["fps"] == 10
    if ffmpeg_available():
        assert read_video_info(out / "video.mp4")["frames"] == 8
    strip = np.asarray(Image.open(out / "video.png"))
    assert strip.shape == (len(VIDEO_PROMPTS) * 96, 8 * 96)
    assert read_png_metadata(out / "video.png")["prompt"] == list(VIDEO_PROMPTS)
    assert json.loads((out / "video.json").read_text())["prompt"] == VIDEO_PROMPTS[0]
