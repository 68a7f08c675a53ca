"""A pretrained diffusers UNet2DConditionModel as the image decoder (``decoders.image: {type:
diffusers_denoiser, path: DIR}``; docs/design.md, "Hugging Face folders").

Tiny random UNets written with diffusers' ``save_pretrained`` stand in for pretrained folders:
one whose cross-attention width is the tiny backbone's (32: states fed directly), one of
another width (24: through the learned projection). Its output is the UNet's own forward; its
schedule and prediction type come from the folder's scheduler config; it trains (all of it,
or frozen with LoRA adapters and the projection), generates through the image pipelines and
loads from its checkpoint after the folder is gone. And the bad input: folders that are not
diffusers models, pickle-only weights, another model class, a UNet needing other inputs, and
channels or sizes that do not fit the VAE.

Axes: b batch, n prompt tokens, d backbone width, l latent channels, y x latent side.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from multimodal.builders import build_component
from multimodal.errors import ConfigError
from multimodal.testing import (tiny_backbone, tiny_diffusers_denoiser, tiny_diffusers_vae,
                                tiny_image_config, tiny_image_folder, tiny_tokenizers)

WIDTH = 32  # the tiny backbone's
SECTION = re.escape("'decoders.image' (diffusers_denoiser)")


@pytest.fixture(scope="module")
def vae_tokenizers():
    """Tokenizers whose image VAE (tiny ``image_vae``) makes (4, 8, 8) latents, 4x down."""
    return tiny_tokenizers()


def _build(path, tokenizers, backbone=None, **kwargs):
    return build_component("decoders", {"type": "diffusers_denoiser", "path": str(path),
                                        **kwargs},
                           "decoders.image", backbone=backbone or tiny_backbone(),
                           tokenizers=tokenizers)


def _inputs(dim: int):
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 4, 8, 8, generator=generator)  # (b, l, y, x)
    context = torch.randn(2, 5, dim, generator=generator)  # (b, n, d)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])  # (b, n)
    return x_t, torch.tensor([10, 900]), context, mask


# -- in: the UNet's own forward ------------------------------------------------------------------
@pytest.mark.parametrize("cross_attention_dim", [WIDTH, 24], ids=["direct", "projected"])
def test_output_is_the_unets_own_forward(tmp_path, vae_tokenizers, cross_attention_dim, caplog):
    from diffusers import UNet2DConditionModel

    folder = tiny_diffusers_denoiser(tmp_path / "sd", cross_attention_dim=cross_attention_dim)
    with caplog.at_level(logging.INFO, logger="multimodal.modalities.image.diffusers_denoiser"):
        decoder = _build(folder, vae_tokenizers).eval()
    unet = UNet2DConditionModel.from_pretrained(folder, local_files_only=True).eval()
    x_t, timesteps, context, mask = _inputs(WIDTH)
    with torch.no_grad():
        ours = decoder(x_t, timesteps, context, mask)
        if cross_attention_dim == WIDTH:
            assert decoder.context_proj is None
            assert "directly (width 32)" in caplog.text
        else:  # the projection aside, the UNet's forward on the projected states
            assert decoder.context_proj.in_features == WIDTH
            assert decoder.context_proj.out_features == 24
            assert "width 24, the backbone gives 32: a learned linear projection" in caplog.text
            context = decoder.context_proj(context)
        theirs = unet(x_t, timesteps, encoder_hidden_states=context,
                      encoder_attention_mask=mask).sample
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert decoder.latent_shape == (4, 8, 8) and decoder.size_multiple == 2


@pytest.mark.parametrize("unet_args", [{"cross_attention_dim": WIDTH},
                                       {"cross_attention_dim": 24},
                                       {"cross_attention_dim": 24, "encoder_hid_dim": 16}],
                         ids=["direct", "projected", "projected_twice"])
def test_the_export_reads_the_backbones_states_as_the_decoder_does(tmp_path, vae_tokenizers,
                                                                   unet_args):
    """The exported UNet takes the backbone's states itself: the decoder's projection becomes
    its encoder_hid_proj, composed with the UNet's own where it had one."""
    from types import SimpleNamespace

    from diffusers import DDPMScheduler, UNet2DConditionModel

    from multimodal.interop.hf_export import ExportReport, _export_unet

    folder = tiny_diffusers_denoiser(tmp_path / "sd", scheduler={"beta_end": 0.015},
                                     **unet_args)
    decoder = _build(folder, vae_tokenizers).eval()
    loaded = SimpleNamespace(model=SimpleNamespace(decoders={"image": decoder}))
    report = ExportReport(out=tmp_path / "hf")
    _export_unet(loaded, "image", tmp_path / "hf" / "unet", tmp_path / "hf" / "scheduler",
                 report, part="unet")
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "hf" / "unet",
                                                local_files_only=True).eval()
    x_t, timesteps, context, mask = _inputs(WIDTH)
    with torch.no_grad():
        theirs = unet(x_t, timesteps, encoder_hidden_states=context,
                      encoder_attention_mask=mask).sample
        ours = decoder(x_t, timesteps, context, mask)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    assert report.measured["max |UNet output difference| (unet)"] <= 1e-5
    scheduler = DDPMScheduler.from_pretrained(tmp_path / "hf" / "scheduler")
    assert {k: scheduler.config[k] for k in decoder.noise_schedule} == decoder.noise_schedule


def test_schedule_and_prediction_type_come_from_the_folders_scheduler(tmp_path, vae_tokenizers):
    schedule = {"num_train_timesteps": 500, "beta_start": 0.00085, "beta_end": 0.012,
                "beta_schedule": "scaled_linear", "prediction_type": "v_prediction"}
    folder = tiny_diffusers_denoiser(tmp_path / "sd", scheduler=schedule)
    decoder = _build(folder, vae_tokenizers)
    assert decoder.prediction_type == "v_prediction" and decoder.noise_schedule == schedule
    assert decoder.training_scheduler.config.num_train_timesteps == 500
    # a key of the config wins over the folder's
    assert _build(folder, vae_tokenizers, prediction_type="epsilon").prediction_type == "epsilon"
    # a diffusers pipeline folder (model_index.json) is read through its unet/
    (tmp_path / "sd" / "model_index.json").write_text(json.dumps(
        {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}))
    assert _build(tmp_path / "sd", vae_tokenizers).noise_schedule == schedule
    # no scheduler config: diffusers' DDPM defaults
    plain = _build(tiny_diffusers_denoiser(tmp_path / "plain"), vae_tokenizers)
    assert plain.noise_schedule == {"num_train_timesteps": 1000, "beta_start": 1e-4,
                                    "beta_end": 0.02, "beta_schedule": "linear",
                                    "prediction_type": "epsilon"}


# -- training, generation, the checkpoint's copy -------------------------------------------------
def _config(tmp_path, unet, vae, **train) -> dict:
    """A text-to-image config of the tiny backbone, the diffusers VAE (frozen, 32x32 grey ->
    (4, 4, 4) latents) and the diffusers UNet, on a folder of 40 tiny images."""
    images = tiny_image_folder(tmp_path / "images", count=40)
    return tiny_image_config(
        tokenizers={"image": {"type": "diffusers_vae", "path": str(vae), "image_size": 32}},
        decoders={"image": {"type": "diffusers_denoiser", "path": str(unet)}},
        data={"image": {"type": "image_folder", "path": images, "val_fraction": 0.0}},
        train={"max_steps": 4, "batch_size": 8, "eval_every": 0, "checkpoint_every": 4,
               **train})


def test_trains_generates_and_loads_without_its_folder(tmp_path):
    from multimodal.pipelines import load_pipeline
    from multimodal.training.trainer import Trainer, train

    sources = tmp_path / "sources"
    unet = tiny_diffusers_denoiser(sources / "sd", sample_size=4, cross_attention_dim=24,
                                   scheduler={"prediction_type": "v_prediction"})
    vae = tiny_diffusers_vae(sources / "vae")
    trainer = Trainer(_config(tmp_path, unet, vae), out_dir=tmp_path / "run", progress=False)
    decoder = trainer.model.decoders["image"]
    assert decoder.prediction_type == "v_prediction" and decoder.context_proj is not None
    losses = [trainer.train_step()["loss"]]
    result = trainer.fit()
    losses.append(result["loss"])
    assert all(math.isfinite(v) for v in losses)
    checkpoint = Path(result["checkpoint"])
    before = load_file(unet / "diffusion_pytorch_model.safetensors")
    after = load_file(checkpoint / "model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[f"decoders.image.net.{k}"])]
    assert changed, "no weight of the UNet trained"
    assert {"decoders/image/config.json", "decoders/image/scheduler_config.json"} <= {
        str(p.relative_to(checkpoint)) for p in checkpoint.rglob("*.json")}

    pipe = load_pipeline("text-to-image", checkpoint)
    assert pipe.denoiser.prediction_type == "v_prediction"
    out = pipe(["a vertical bar", "a square blob"], num_inference_steps=3, guidance_scale=3.0,
               seed=0, progress=False)
    assert [image.shape for image in out.images] == [(32, 32)] * 2
    edited = load_pipeline("inpainting", checkpoint)(
        "a square blob", image=out.images[0], mask=np.pad(np.full((16, 16), 255, np.uint8), 8),
        num_inference_steps=2, seed=1, progress=False).images[0]
    assert np.array_equal(edited[:8], out.images[0][:8])  # kept outside the mask

    shutil.rmtree(sources)  # the checkpoint keeps what it needs
    again = load_pipeline("text-to-image", checkpoint)
    assert again.denoiser.prediction_type == "v_prediction"
    replayed = again(["a vertical bar", "a square blob"], num_inference_steps=3,
                     guidance_scale=3.0, seed=0, progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(out.images, replayed.images))
    # and the run resumes without them (built from the checkpoint's files, as loading is)
    config = trainer.config
    longer = dict(config, train={**config["train"], "max_steps": 6})
    resumed = train(longer, out_dir=tmp_path / "run", resume=True, allow_changes=["max_steps"],
                    progress=False)
    assert resumed["step"] == 6 and math.isfinite(resumed["loss"])

    # out: multimodal export --format hf writes the trained UNet (and the VAE) for diffusers,
    # and says what it leaves out
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from multimodal.cli import main

    assert main(["export", resumed["checkpoint"], str(tmp_path / "hf"), "--format", "hf"]) == 0
    unet_out = UNet2DConditionModel.from_pretrained(tmp_path / "hf", subfolder="unet",
                                                    local_files_only=True)
    assert unet_out.config.encoder_hid_dim == WIDTH  # reads the backbone's states
    scheduler = DDPMScheduler.from_pretrained(tmp_path / "hf", subfolder="scheduler")
    assert scheduler.config.prediction_type == "v_prediction"
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "## Not exported" in card and "`tokenizers.text (byte_bpe)`" in card
    assert "`backbone (transformer)`" in card  # (no text decoder: no transformers model)


def test_a_sharded_checkpoint_keeps_the_unets_files_too(tmp_path):
    from multimodal.checkpoint import consolidate_checkpoint, is_sharded
    from multimodal.pipelines import load_pipeline
    from multimodal.training.trainer import Trainer

    sources = tmp_path / "sources"
    unet = tiny_diffusers_denoiser(sources / "sd", sample_size=4, cross_attention_dim=24)
    trainer = Trainer(_config(tmp_path, unet, tiny_diffusers_vae(sources / "vae"),
                              max_steps=1, checkpoint_every=1),
                      out_dir=tmp_path / "run", progress=False)
    trainer.fit()
    sharded = trainer._save_sharded()  # the path of every rank under strategy fsdp
    assert is_sharded(sharded) and (sharded / "decoders" / "image" / "config.json").is_file()
    shutil.rmtree(sources)
    converted = consolidate_checkpoint(sharded, tmp_path / "converted")
    images = [load_pipeline("text-to-image", path)("a vertical bar", num_inference_steps=2,
                                                   seed=0, progress=False).images[0]
              for path in (sharded, converted)]
    assert np.array_equal(images[0], images[1])


def test_a_composed_model_takes_the_unet_with_its_files(tmp_path):
    from multimodal.checkpoint import compose_checkpoint
    from multimodal.modalities.image.diffusers_denoiser import DiffusersDenoiser
    from multimodal.testing import TINY
    from multimodal.training.trainer import train

    sources = tmp_path / "sources"
    unet = tiny_diffusers_denoiser(sources / "sd", sample_size=4, cross_attention_dim=24)
    vae = tiny_diffusers_vae(sources / "vae")
    checkpoints = {}
    for name, decoder in (("unet", None), ("base", {"type": "latent_unet", "sample_size": 4,
                                                    **TINY["decoders"]["latent_unet"]})):
        config = _config(tmp_path, unet, vae, max_steps=1, checkpoint_every=1,
                         freeze=["backbone"])  # one backbone for both: they can be joined
        if decoder is not None:
            config["decoders"]["image"] = decoder
        checkpoints[name] = train(config, out_dir=tmp_path / name, progress=False)["checkpoint"]
    shutil.rmtree(sources)
    composed = compose_checkpoint(checkpoints["base"], [(checkpoints["unet"], "decoders.image")])
    decoder = composed.model.decoders["image"]
    assert isinstance(decoder, DiffusersDenoiser)
    theirs = load_file(Path(checkpoints["unet"]) / "model.safetensors")
    for key, value in decoder.state_dict().items():
        assert torch.equal(value, theirs[f"decoders.image.{key}"]), key


def test_a_frozen_unet_trains_its_projection_and_lora_adapters(tmp_path):
    from multimodal.checkpoint import load_checkpoint
    from multimodal.training.trainer import train

    unet = tiny_diffusers_denoiser(tmp_path / "sd", sample_size=4, cross_attention_dim=24)
    vae = tiny_diffusers_vae(tmp_path / "vae")
    lora = {"rank": 2, "modules": r"decoders\.image\.net\..*attn2\.to_(q|v)"}
    result = train(_config(tmp_path, unet, vae, max_steps=2, checkpoint_every=2,
                           freeze=["backbone", "decoders.image.net"], lora=lora),
                   out_dir=tmp_path / "run", progress=False)
    assert math.isfinite(result["loss"])
    weights = load_file(Path(result["checkpoint"]) / "model.safetensors")
    source = load_file(unet / "diffusion_pytorch_model.safetensors")
    for key, value in source.items():  # the UNet's own weights stay as the folder gave them
        name = f"decoders.image.net.{key}"
        if name not in weights:  # an adapted layer keeps its weight as base_layer
            stem, leaf = name.rsplit(".", 1)
            name = f"{stem}.base_layer.{leaf}"
        assert torch.equal(weights[name], value), key
    assert any(k.endswith("lora_B.default.weight") and weights[k].abs().sum() > 0
               for k in weights)
    model = load_checkpoint(result["checkpoint"]).model  # adapters re-applied on load
    assert any("lora_A" in name for name, _ in model.decoders["image"].named_parameters())


# -- bad input -----------------------------------------------------------------------------------
def test_a_folder_that_is_not_a_diffusers_unet_is_named(tmp_path, vae_tokenizers):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    with pytest.raises(ConfigError, match=rf"{SECTION}.*not a diffusers model folder.*notes"
                                          r".*Accepted: a UNet2DConditionModel folder"):
        _build(empty, vae_tokenizers)
    # a pipeline folder without model_index.json: pointed at its unet/
    tiny_diffusers_denoiser(tmp_path / "pipe")  # writes pipe/unet/, no model_index.json
    with pytest.raises(ConfigError, match=r"its UNet is probably .*pipe/unet"):
        _build(tmp_path / "pipe", vae_tokenizers)
    with pytest.raises(ConfigError, match="denoiser folder not found"):
        _build(tmp_path / "missing", vae_tokenizers)
    with pytest.raises(ConfigError, match="is a file"):
        _build(empty / "notes.txt", vae_tokenizers)
    # pickle weights only: refused, never unpickled
    pickled = tiny_diffusers_denoiser(tmp_path / "pickled")
    (pickled / "diffusion_pytorch_model.safetensors").unlink()
    (pickled / "diffusion_pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(ConfigError, match=r"only pickle weights \(diffusion_pytorch_model\.bin\)"):
        _build(pickled, vae_tokenizers)
    # another model class: a VAE is no denoiser
    vae = tiny_diffusers_vae(tmp_path / "vae")
    with pytest.raises(ConfigError, match="holds an AutoencoderKL, not a UNet2DConditionModel"):
        _build(vae, vae_tokenizers)


def test_a_unet_that_needs_other_inputs_is_refused(tmp_path, vae_tokenizers):
    labels = tiny_diffusers_denoiser(tmp_path / "labels", class_embed_type="projection",
                                     projection_class_embeddings_input_dim=8, in_channels=3)
    with pytest.raises(ConfigError) as info:
        _build(labels, vae_tokenizers)
    assert len(info.value.problems) == 2  # all at once: its inputs and the VAE's latents
    assert "needs class labels" in str(info.value) and "which the backbone does not give" in \
        str(info.value) and "in_channels 3 and out_channels 3" in str(info.value)
    sample = tiny_diffusers_denoiser(tmp_path / "x0", scheduler={"prediction_type": "sample"})
    with pytest.raises(ConfigError, match=r"prediction_type 'sample'.*epsilon or v_prediction"):
        _build(sample, vae_tokenizers)
    assert _build(sample, vae_tokenizers, prediction_type="epsilon").prediction_type == "epsilon"


def test_channels_and_size_that_do_not_fit_the_vae_are_named(tmp_path, vae_tokenizers):
    from multimodal.training.trainer import Trainer

    wrong = tiny_diffusers_denoiser(tmp_path / "wrong", in_channels=3, sample_size=16)
    with pytest.raises(ConfigError) as info:
        _build(wrong, vae_tokenizers)
    message = str(info.value)
    assert "in_channels 3 and out_channels 3 must both be the image tokenizer's latent " \
           "channels, 4" in message
    assert "sample_size 16 (16x16 latents, y x) is not the image tokenizer's latent size 8x8" \
        in message and "image_size to 64" in message
    variance = tiny_diffusers_denoiser(tmp_path / "variance", out_channels=8)
    with pytest.raises(ConfigError, match="in_channels 4 and out_channels 8"):
        _build(variance, vae_tokenizers)
    # in a run: refused when the model is built, before any step (a frozen diffusers VAE)
    config = _config(tmp_path, tiny_diffusers_denoiser(tmp_path / "big", sample_size=8),
                     tiny_diffusers_vae(tmp_path / "vae"))
    with pytest.raises(ConfigError, match=r"sample_size 8 \(8x8 latents, y x\) is not the image "
                                          r"tokenizer's latent size 4x4 .*image_size to 64"):
        Trainer(config, out_dir=tmp_path / "run", progress=False)
    assert not list((tmp_path / "run").glob("checkpoints/step_*"))
