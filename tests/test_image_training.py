"""Training the image modality end to end: VAE fit, latent diffusion on the shared backbone,
checkpoints, exact resume, and the pipelines loaded from the result."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from multimodal.config import load_config
from multimodal.errors import ConfigError
from multimodal.pipelines import load_pipeline
from multimodal.testing import tiny_image_config, tiny_image_folder
from multimodal.checkpoint import find_checkpoint, load_checkpoint
from multimodal.training.trainer import Trainer

from conftest import requires_fashion_mnist


def test_shipped_configs_validate():
    config = load_config("configs/text_to_image_fashion.yaml")
    assert config["decoders"]["image"]["type"] == "latent_dit"
    tiny = load_config("configs/text_to_image_tiny.yaml")
    assert tiny["data"]["image"]["max_items"] == 256
    with pytest.raises(ConfigError, match="did you mean 'decoders.image.num_layers'"):
        load_config("configs/text_to_image_tiny.yaml", ["decoders.image.num_layer=2"])
    with pytest.raises(ConfigError, match="prediction_type' must be one of"):
        load_config("configs/text_to_image_tiny.yaml", ["decoders.image.prediction_type=x0"])


@pytest.mark.slow  # trains for real
@requires_fashion_mnist
def test_tiny_image_config_trains_and_loads_into_pipelines(tmp_path):
    trainer = Trainer(tiny_image_config(train={"max_steps": 30, "eval_every": 0}),
                      out_dir=tmp_path, progress=False)
    assert trainer.tokenizers["image"].is_trained and trainer.tokenizers["text"].is_trained
    assert "sneaker" in trainer.tokenizers["text"].decode(
        trainer.tokenizers["text"].encode("a sneaker"))  # fitted on the captions
    first = trainer.train_step()["loss"]
    result = trainer.fit()
    assert result["loss"] < 0.7 * first
    assert result["val_image_loss"] > 0
    pipe = load_pipeline("text-to-image", tmp_path)
    out = pipe("a bag", num_samples=2, seed=0, num_inference_steps=3, progress=False)
    assert out.checkpoint_id == load_checkpoint(tmp_path).checkpoint_id
    assert len(out.images) == 2 and out.images[0].shape == (32, 32)
    inpaint = load_pipeline("inpainting", tmp_path)
    image = out.images[0]
    mask = np.zeros_like(image)
    mask[8:24, 8:24] = 255
    edited = inpaint("a coat", image=image, mask=mask, num_inference_steps=3, seed=1,
                     progress=False).images[0]
    keep = mask == 0
    assert np.array_equal(edited[keep], image[keep])


@requires_fashion_mnist
def test_cli_trains_the_tiny_config_and_generates(tmp_path, capsys):
    from multimodal.cli import main
    from multimodal.modalities.image.files import read_png_metadata

    run = tmp_path / "run"
    assert main(["train", "configs/text_to_image_tiny.yaml", "train.max_steps=2",
                 "--out-dir", str(run), "--no-progress"]) == 0
    assert main(["generate", "text-to-image", "--checkpoint", str(run), "--prompt", "a boot",
                 "--num-inference-steps", "2", "--seed", "1", "--out", str(tmp_path / "gen"),
                 "--no-progress"]) == 0
    assert read_png_metadata(tmp_path / "gen" / "000.png")["checkpoint_id"] == \
        load_checkpoint(run).checkpoint_id


@requires_fashion_mnist
def test_image_training_resumes_exactly(tmp_path):
    config = tiny_image_config(train={"max_steps": 6, "checkpoint_every": 3, "eval_every": 0})
    full = Trainer(config, out_dir=tmp_path / "full", progress=False)
    full.fit()
    interrupted = Trainer(config, out_dir=tmp_path / "part", progress=False)
    for _ in range(3):
        interrupted.train_step()
    interrupted.save()
    interrupted.train_step()
    del interrupted
    resumed = Trainer(config, out_dir=tmp_path / "part", resume=True, progress=False)
    assert resumed.step == 3
    resumed.fit()
    a = load_file(find_checkpoint(tmp_path / "full") / "model.safetensors")
    b = load_file(find_checkpoint(tmp_path / "part") / "model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)


def test_image_folder_trains_with_the_dit(tmp_path):
    path = tiny_image_folder(tmp_path / "data", count=40)
    config = tiny_image_config(
        decoders={"image": {"type": "latent_dit", "num_layers": 2, "num_attention_heads": 2,
                            "attention_head_dim": 8, "prediction_type": "v_prediction"}},
        data={"image": {"type": "image_folder", "path": path, "val_fraction": 0.2}},
        train={"max_steps": 4, "eval_every": 2, "checkpoint_every": 4})
    result = Trainer(config, out_dir=tmp_path / "run", progress=False).fit()
    assert result["step"] == 4 and np.isfinite(result["val_image_loss"])
    pipe = load_pipeline("text-to-image", tmp_path / "run")
    assert pipe.denoiser.prediction_type == "v_prediction"
    assert pipe("a vertical bar", num_inference_steps=2, seed=0, progress=False).images[0].shape \
        == (32, 32)


def test_latents_that_do_not_fit_the_denoiser(tmp_path):
    path = tiny_image_folder(tmp_path / "data", count=8)
    config = tiny_image_config(decoders={"image": {"sample_size": 4}},
                               data={"image": {"type": "image_folder", "path": path,
                                               "val_fraction": 0.0}},
                               train={"max_steps": 1})
    trainer = Trainer(config, out_dir=tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match=r"latents of shape \(4, 8, 8\).*reads \(4, 4, 4\)"):
        trainer.train_step()
