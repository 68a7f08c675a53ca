"""Training the video modality end to end, initialising it from a text-to-image checkpoint, and
``multimodal evaluate text-to-video``."""

import json

import pytest
import torch
from safetensors.torch import load_file

from multimodal.cli import main
from multimodal.config import load_config
from multimodal.errors import ConfigError
from multimodal.modalities.video import files
from multimodal.testing import TINY, tiny_image_checkpoint, tiny_video_config
from multimodal.checkpoint import find_checkpoint, load_checkpoint
from multimodal.training.trainer import Trainer

from conftest import requires_fashion_mnist


def test_shipped_video_configs_validate():
    config = load_config("configs/text_to_video_moving.yaml")
    assert config["decoders"]["video"]["type"] == "latent_video_dit"
    assert config["init_from"] == "runs/text_to_image_fashion_ft"
    tiny = load_config("configs/text_to_video_tiny.yaml")
    assert tiny["data"]["video"]["num_frames"] == 8
    with pytest.raises(ConfigError, match="did you mean 'decoders.video.max_frames'"):
        load_config("configs/text_to_video_tiny.yaml", ["decoders.video.max_frame=4"])


@requires_fashion_mnist
def test_cli_trains_the_tiny_config_and_generates(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "configs/text_to_video_tiny.yaml", "train.max_steps=3",
                 "--out-dir", str(run), "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["step"] == 3 and result["val_video_loss"] > 0
    out = tmp_path / "gen"
    assert main(["generate", "text-to-video", "--checkpoint", str(run), "--prompt",
                 "a sneaker moving left", "--num-inference-steps", "2", "--seed", "1",
                 "--out", str(out), "--no-progress"]) == 0
    meta = json.loads((out / "000.json").read_text())
    assert meta["checkpoint_id"] == load_checkpoint(run).checkpoint_id
    assert files.read_video_info(out / "000.mp4")["frames"] == 8


@requires_fashion_mnist
def test_video_training_resumes_exactly(tmp_path):
    config = tiny_video_config(train={"max_steps": 4, "checkpoint_every": 2, "eval_every": 0})
    Trainer(config, out_dir=tmp_path / "full", progress=False).fit()
    interrupted = Trainer(config, out_dir=tmp_path / "part", progress=False)
    for _ in range(2):
        interrupted.train_step()
    interrupted.save()
    interrupted.train_step()
    del interrupted
    resumed = Trainer(config, out_dir=tmp_path / "part", resume=True, progress=False)
    assert resumed.step == 2
    resumed.fit()
    a = load_file(find_checkpoint(tmp_path / "full") / "model.safetensors")
    b = load_file(find_checkpoint(tmp_path / "part") / "model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)


@requires_fashion_mnist
def test_init_from_a_text_to_image_checkpoint(tmp_path):
    image = tiny_image_checkpoint(tmp_path / "image", denoiser="latent_dit")
    config = tiny_video_config(init_from=str(image), train={"max_steps": 2, "eval_every": 0})
    # Frames share the image model's latent space: its VAE, read at the frame size.
    config["tokenizers"] = {"text": {"type": "byte_bpe", "vocab_size": 300},
                            "image": {"type": "image_vae", **TINY["tokenizers"]["image_vae"],
                                      "image_size": 48}}
    trainer = Trainer(config, out_dir=tmp_path / "run", progress=False)
    weights = load_file(str(image / "model.safetensors"))
    state = trainer.model.state_dict()
    spatial = {k: v for k, v in weights.items() if k.startswith("decoders.image.")}
    assert spatial and all(torch.equal(state["decoders.video." + k[len("decoders.image."):]], v)
                           for k, v in spatial.items())
    assert all(torch.equal(state[k], v) for k, v in weights.items() if k.startswith("backbone."))
    assert all(not state[k].any() for k in state if ".proj_out." in k and "temporal" in k)
    assert trainer.tokenizers["image"].scaling_factor == \
        load_checkpoint(image).tokenizers["image"].scaling_factor
    assert trainer.fit()["step"] == 2
    # A checkpoint without a DiT cannot initialise the video denoiser.
    unet = tiny_image_checkpoint(tmp_path / "unet", denoiser="latent_unet")
    with pytest.raises(Exception, match="no DiT denoiser"):
        Trainer(dict(config, init_from=str(unet)), out_dir=tmp_path / "run2", progress=False)


@pytest.mark.slow  # an evaluation
@requires_fashion_mnist
def test_evaluate_reports_video_baseline_and_real_clips(tmp_path, monkeypatch):
    from multimodal.evaluation.video import evaluate_text_to_video

    monkeypatch.setenv("MULTIMODAL_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    Trainer(tiny_video_config(train={"max_steps": 1, "eval_every": 0}), out_dir=run,
            progress=False).fit()
    image = tiny_image_checkpoint(tmp_path / "image")
    report = evaluate_text_to_video(checkpoint=run, baseline_checkpoint=image, num_samples=1,
                                    num_inference_steps=2, progress=False,
                                    classifier_settings={"epochs": 1, "max_items": 2000})
    json.dumps(report)
    assert report["real"]["direction_accuracy"] == 1.0  # the trajectory measure on real clips
    assert report["real"]["item_accuracy"] > 0.3 and report["real"]["identity_stability"] > 0.5
    for key in ("video", "frame_by_frame_image_baseline"):
        figures = report[key]
        assert set(figures["item_accuracy_per_class"]) == set(report["real"]
                                                              ["item_accuracy_per_class"])
        assert 0 <= figures["direction_accuracy"] <= 1 and 0 <= figures["item_ratio"]
    assert report["direction_margin_points"] == pytest.approx(
        100 * (report["video"]["direction_accuracy"]
               - report["frame_by_frame_image_baseline"]["direction_accuracy"]))
    assert set(report["quality_bar"]) == {"item_ratio_at_least_0.85",
                                          "direction_accuracy_at_least_0.9",
                                          "identity_stability_at_least_0.9_of_real"}


def test_evaluate_without_a_video_checkpoint(tmp_path, capsys):
    assert main(["evaluate", "text-to-video", "--checkpoint", str(tmp_path / "none")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
