"""Image modality: VAE tokenizer, patches, denoisers, schedulers and the three pipelines.

Everything here runs on tiny untrained components and needs no dataset."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from multimodal.cli import main
from multimodal.errors import CheckpointError, InputError, UnknownComponentError
from multimodal.modalities.image import (ImageVAETokenizer, LatentPatchEmbed, patchify,
                                         unpatchify)
from multimodal.pipelines import load_pipeline
from multimodal.pipelines.base import sample_generators
from multimodal.modalities.image.files import image_grid, png_bytes, read_png_metadata
from multimodal.registry import decoders, schedulers
from multimodal.testing import (TINY, same_components, tiny_backbone, tiny_image_checkpoint,
                                tiny_image_pipeline)

SCHEDULERS = ("ddpm", "ddim", "dpm_solver_multistep", "euler")


@pytest.fixture(scope="module")
def pipe():
    return tiny_image_pipeline()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.set_num_threads(1)
    return tiny_image_checkpoint(tmp_path_factory.mktemp("image") / "ckpt")


def random_image(size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


# -- tokenizer, patches, denoisers ---------------------------------------------------------------
def test_vae_fit_save_load_round_trip(tmp_path):
    vae = ImageVAETokenizer(**TINY["tokenizers"]["image_vae"])
    assert not vae.is_trained
    images = [{"image": torch.rand(1, 32, 32) * 2 - 1} for _ in range(16)]
    vae.fit(images, seed=0, progress=False)
    assert vae.is_trained and vae.scaling_factor != 1.0
    x = torch.stack([item["image"] for item in images[:4]])
    z = vae.encode(x)
    assert z.shape == (4, 4, 8, 8)
    torch.testing.assert_close(vae.encode(x), z, rtol=0, atol=0)  # the posterior mean
    decoded = vae.decode(z)
    assert decoded.shape == (4, 1, 32, 32) and decoded.abs().max() <= 1
    vae.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae.json", "vae.safetensors"]
    loaded = ImageVAETokenizer.load(tmp_path, **TINY["tokenizers"]["image_vae"])
    assert loaded.is_trained and loaded.scaling_factor == vae.scaling_factor
    torch.testing.assert_close(loaded.encode(x), z, rtol=0, atol=0)
    torch.testing.assert_close(loaded.decode(z), decoded, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="do not fit"):
        ImageVAETokenizer.load(tmp_path, block_out_channels=[8, 16, 32], norm_num_groups=8)
    (tmp_path / "vae.json").unlink()
    with pytest.raises(CheckpointError, match="missing vae.json"):
        ImageVAETokenizer.load(tmp_path, **TINY["tokenizers"]["image_vae"])


def test_vae_rejects_bad_sizes():
    with pytest.raises(ValueError, match="norm_num_groups"):
        ImageVAETokenizer(block_out_channels=(8, 12), norm_num_groups=8)
    with pytest.raises(ValueError, match="down-sampling factor"):
        ImageVAETokenizer(block_out_channels=(8,) * 7, norm_num_groups=8)


def test_patchify_is_inverted_by_unpatchify():
    latents = torch.randn(2, 4, 8, 8)
    patches = patchify(latents, 2)
    assert patches.shape == (2, 16, 16)
    torch.testing.assert_close(patches[0, 1], latents[0, :, 0:2, 2:4].permute(1, 2, 0).flatten())
    torch.testing.assert_close(unpatchify(patches, 2, (4, 4)), latents, rtol=0, atol=0)
    embed = LatentPatchEmbed(dim=32, patch_size=2)
    assert embed(latents).shape == (2, embed.num_tokens, 32) == (2, 16, 32)
    with pytest.raises(ValueError, match="divide"):
        LatentPatchEmbed(dim=32, patch_size=3)


@pytest.mark.parametrize("name", ["latent_unet", "latent_dit"])
@pytest.mark.parametrize("prediction_type, pooled", [("epsilon", False), ("v_prediction", True)])
def test_denoisers_shapes_and_padding_mask(name, prediction_type, pooled):
    backbone = tiny_backbone()
    model = decoders.get(name)(backbone=backbone, prediction_type=prediction_type,
                               pooled_conditioning=pooled, **TINY["decoders"][name]).eval()
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 900])
    context = torch.randn(2, 5, backbone.dim)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        out = model(x, t, context, mask)
        assert out.shape == x.shape
        # Padding positions are invisible: changing them leaves the first sample unchanged.
        changed = context.clone()
        changed[0, 3:] = 100.0
        torch.testing.assert_close(model(x, t, changed, mask)[0], out[0])
        # The prompt matters (with pooling, through its last real token too).
        changed[0, 2] = -3.0
        assert not torch.allclose(model(x, t, changed, mask)[0], out[0])
    assert model.noise_schedule["prediction_type"] == prediction_type


def test_dit_forward_is_pixart_with_a_pooled_prompt():
    backbone = tiny_backbone()
    plain = decoders.get("latent_dit")(backbone=backbone, pooled_conditioning=False,
                                       **TINY["decoders"]["latent_dit"]).eval()
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([1, 500, 999])
    context = torch.randn(3, 5, backbone.dim)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, 3:] = False
    with torch.no_grad():
        reference = plain.net(x, encoder_hidden_states=context, timestep=t,
                              added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                              encoder_attention_mask=mask).sample
        torch.testing.assert_close(plain(x, t, context, mask), reference, rtol=0, atol=0)
    pooled = plain.pooled(context, mask)
    torch.testing.assert_close(pooled[0], context[0, 2])
    torch.testing.assert_close(pooled[1], context[1, 4])


def test_denoiser_rejects_bad_arguments():
    with pytest.raises(ValueError, match="prediction_type"):
        decoders.get("latent_unet")(backbone=tiny_backbone(), prediction_type="sample")
    with pytest.raises(ValueError, match="cond_dropout"):
        decoders.get("latent_dit")(backbone=tiny_backbone(), cond_dropout=1.0)


# -- sampling ------------------------------------------------------------------------------------
def _diffusers_scheduler(name, noise_schedule):
    """The diffusers scheduler our registry name stands for, built without our code."""
    from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                           EulerDiscreteScheduler)

    common = dict(noise_schedule, timestep_spacing="trailing")
    return {
        "ddpm": lambda: DDPMScheduler(**common, clip_sample=False),
        "ddim": lambda: DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True),
        "dpm_solver_multistep": lambda: DPMSolverMultistepScheduler(
            **common, algorithm_type="dpmsolver++", solver_order=2),
        "euler": lambda: EulerDiscreteScheduler(**common),
    }[name]()


@torch.no_grad()
def bare_diffusers_loop(pipe, name, *, prompt, seed, steps, guidance_scale, num_samples):
    """Classifier-free guidance driven by hand, the way the diffusers pipelines do it."""
    scheduler = _diffusers_scheduler(name, pipe.denoiser.noise_schedule)
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn((num_samples, 4, 8, 8), generator=generator) * scheduler.init_noise_sigma
    step_generators = sample_generators(seed, generator, num_samples)
    tok = pipe.tokenizer
    rows = [[tok.eos_id], [tok.eos_id] + tok.encode(prompt)]
    ids = torch.full((2, len(rows[1])), tok.pad_id)
    mask = torch.zeros((2, len(rows[1])), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = True
    context = pipe.backbone(ids).repeat_interleave(num_samples, dim=0)
    mask = mask.repeat_interleave(num_samples, dim=0)
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        eps = pipe.denoiser(model_input, t.expand(2 * num_samples), context, mask)
        uncond, cond = eps.chunk(2)
        eps = uncond + guidance_scale * (cond - uncond)
        # each sample's step noise from its own generator (sample i whatever num_samples is)
        latents = scheduler.step(eps, t, latents, generator=step_generators).prev_sample
    return latents


def test_every_scheduler_is_registered():
    assert set(SCHEDULERS) <= set(schedulers.names())


@pytest.mark.parametrize("name", SCHEDULERS)
def test_scheduler_swap_matches_a_bare_diffusers_loop(pipe, name):
    kwargs = dict(prompt="a pair of sneakers", seed=3, steps=6, guidance_scale=2.5,
                  num_samples=2)
    ours = pipe(kwargs["prompt"], seed=kwargs["seed"], num_inference_steps=kwargs["steps"],
                guidance_scale=kwargs["guidance_scale"], num_samples=kwargs["num_samples"],
                scheduler=name, progress=False)
    expected = bare_diffusers_loop(pipe, name, **kwargs)
    torch.testing.assert_close(ours.latents, expected, rtol=0, atol=0)
    assert ours.scheduler == name


def test_seeded_generation_is_reproducible_and_samples_differ(pipe):
    a = pipe("a bag", seed=7, num_samples=3, num_inference_steps=4, progress=False)
    b = pipe("a bag", seed=7, num_samples=3, num_inference_steps=4, progress=False)
    c = pipe("a bag", seed=8, num_samples=3, num_inference_steps=4, progress=False)
    with_generator = pipe("a bag", generator=torch.Generator().manual_seed(7), num_samples=3,
                          num_inference_steps=4, progress=False)
    assert all(np.array_equal(x, y) for x, y in zip(a.images, b.images))
    assert all(np.array_equal(x, y) for x, y in zip(a.images, with_generator.images))
    assert not np.array_equal(a.images[0], c.images[0])
    assert not np.array_equal(a.images[0], a.images[1])  # samples of one prompt differ
    assert len(a.images) == 3 and a.images[0].shape == (32, 32) and a.images[0].dtype == np.uint8
    assert a.seed == 7 and a.metadata(1)["sample"] == 1


def test_batched_guidance_equals_two_forwards(pipe):
    batched = pipe("a coat", seed=1, num_samples=2, num_inference_steps=3, progress=False)
    pipe.batch_guidance = False
    try:
        separate = pipe("a coat", seed=1, num_samples=2, num_inference_steps=3, progress=False)
    finally:
        pipe.batch_guidance = True
    torch.testing.assert_close(separate.latents, batched.latents, rtol=1e-4, atol=1e-4)


def test_empty_prompt_is_unconditional_and_negative_prompt_steers(pipe):
    kwargs = dict(seed=2, num_samples=1, num_inference_steps=3, progress=False)
    empty = pipe("", guidance_scale=4.0, **kwargs)
    unguided = pipe("", guidance_scale=1.0, **kwargs)
    torch.testing.assert_close(empty.latents, unguided.latents, rtol=0, atol=0)
    plain = pipe("a dress", **kwargs)
    negative = pipe("a dress", negative_prompt="a coat", **kwargs)
    assert not torch.equal(plain.latents, negative.latents)
    assert negative.metadata(0)["negative_prompt"] == "a coat"


def test_image_to_image_strength_zero_returns_the_input(pipe):
    img2img = same_components(pipe, "image-to-image")
    image = random_image()
    out = img2img("a shirt", image=image, strength=0.0, num_samples=2, seed=0, progress=False)
    assert all(np.array_equal(o, image) for o in out.images)
    # A 28x28 picture is padded with black, like Fashion-MNIST in training.
    small = random_image(28)
    padded = img2img("a shirt", image=small, strength=0.0, seed=0, progress=False).images[0]
    assert padded.shape == (32, 32) and np.array_equal(padded[2:30, 2:30], small)
    assert padded[:2].max() == 0
    edited = img2img("a shirt", image=image, strength=0.5, num_inference_steps=4, seed=0,
                     progress=False)
    assert not np.array_equal(edited.images[0], image)
    assert edited.metadata(0)["strength"] == 0.5


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpm_solver_multistep"])
def test_inpainting_keeps_unmasked_pixels(pipe, scheduler):
    inpaint = same_components(pipe, "inpainting")
    image = random_image()
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :12] = 255  # regenerate the left part
    out = inpaint("a sandal", image=image, mask=mask, num_samples=2, num_inference_steps=4,
                  seed=0, scheduler=scheduler, progress=False)
    for result in out.images:
        assert np.array_equal(result[:, 12:], image[:, 12:])
        assert not np.array_equal(result[:, :12], image[:, :12])


def test_png_metadata_round_trips(tmp_path):
    meta = {"prompt": "a café boot 🙂", "seed": 5, "num_inference_steps": 20,
            "guidance_scale": 3.0, "checkpoint_id": "abc"}
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes(random_image(), meta))
    assert read_png_metadata(path) == meta
    assert np.array_equal(np.asarray(Image.open(path)), random_image())
    assert image_grid([random_image()] * 5).shape == (64, 96)


# -- bad input -----------------------------------------------------------------------------------
def test_bad_pipeline_input(pipe, tmp_path):
    with pytest.raises(UnknownComponentError, match="did you mean 'dpm_solver_multistep'"):
        pipe("a bag", scheduler="dpm_solver", progress=False)
    for kwargs, message in [({"num_samples": 0}, "num_samples"),
                            ({"num_inference_steps": 0}, "num_inference_steps"),
                            ({"guidance_scale": -1.0}, "guidance_scale")]:
        with pytest.raises(InputError, match=message):
            pipe("a bag", progress=False, **kwargs)
    with pytest.raises(InputError, match="must be a string"):
        pipe(None)
    with pytest.raises(InputError, match="takes no image"):
        pipe("a bag", image=random_image())
    img2img, inpaint = same_components(pipe, "image-to-image"), same_components(pipe, "inpainting")
    for strength in (-0.1, 1.5):
        with pytest.raises(InputError, match=r"strength must be in \[0, 1\]"):
            img2img("a bag", image=random_image(), strength=strength)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    with pytest.raises(InputError, match="cannot read image .*notes.png"):
        img2img("a bag", image=not_an_image)
    with pytest.raises(InputError, match="not found"):
        img2img("a bag", image=tmp_path / "missing.png")
    with pytest.raises(InputError, match="the mask is 16x16 pixels but the image is 32x32"):
        inpaint("a bag", image=random_image(), mask=random_image(16))


def test_checkpoint_without_image_decoder(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_pipeline("text-to-image", tmp_path / "nothing")


# -- command line --------------------------------------------------------------------------------
def test_cli_generates_pngs_with_metadata(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["generate", "text-to-image", "--checkpoint", str(checkpoint), "--prompt", "a bag",
            "--num-samples", "2", "--seed", "4", "--num-inference-steps", "3",
            "--scheduler", "euler", "--out", str(out), "--grid", "--no-progress"]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["000.png", "001.png", "grid.png"]
    meta = read_png_metadata(out / "001.png")
    assert meta["prompt"] == "a bag" and meta["seed"] == 4 and meta["sample"] == 1
    assert meta["num_inference_steps"] == 3 and meta["scheduler"] == "euler"
    assert meta["guidance_scale"] == 4.0 and len(meta["checkpoint_id"]) == 12
    assert "000.png" in capsys.readouterr().out
    # The same seed gives the same files; image-to-image with strength 0 returns its input.
    again = tmp_path / "again"
    assert main(argv[:-4] + ["--out", str(again), "--no-progress"]) == 0
    assert (again / "000.png").read_bytes() == (out / "000.png").read_bytes()
    edit = tmp_path / "edit"
    assert main(["generate", "image-to-image", "--checkpoint", str(checkpoint), "--prompt",
                 "a coat", "--image", str(out / "000.png"), "--strength", "0", "--out",
                 str(edit), "--no-progress"]) == 0
    assert np.array_equal(np.asarray(Image.open(edit / "000.png")),
                          np.asarray(Image.open(out / "000.png")))
    assert json.loads(Image.open(edit / "000.png").text["multimodal"])["strength"] == 0.0


def test_cli_bad_input_exits_2_without_partial_files(checkpoint, tmp_path, capsys):
    image, small_mask, text = tmp_path / "img.png", tmp_path / "mask.png", tmp_path / "bad.png"
    Image.fromarray(random_image()).save(image)
    Image.fromarray(random_image(16)).save(small_mask)
    text.write_text("not an image")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    base = ["--checkpoint", str(checkpoint), "--prompt", "a bag", "--no-progress"]
    cases = [
        (["text-to-image", "--num-samples", "0"], "num_samples must be an integer >= 1"),
        (["text-to-image", "--scheduler", "eulr"], "did you mean 'euler'"),
        (["image-to-image", "--image", str(image), "--strength", "1.5"], "strength must be in"),
        (["image-to-image", "--image", str(text)], "cannot read image"),
        (["inpainting", "--image", str(image), "--mask", str(small_mask)], "the mask is 16x16"),
    ]
    for i, (args, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        assert main(["generate", *args, *base, "--out", str(out)]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert not out.exists(), f"{args} left {out} behind"
    assert main(["generate", "text-to-image", *base, "--out", str(blocker)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["generate", "text-to-image", *base, "--out", str(blocker / "sub")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_caption_reader_takes_the_longest_whole_word_item():
    from multimodal.evaluation.caption import named_class

    assert named_class("a photo of a t-shirt") == 0      # not "shirt"
    assert named_class("a grey sweatshirt") == 2         # pullover synonyms, not "shirt"
    assert named_class("two shirts") == 6
    assert named_class("an ankle boot") == named_class("boots") == 9
    assert named_class("a pair of trousers") == 1
    assert named_class("nothing at all") is None


def test_image_to_text_input_errors(tmp_path):
    import numpy as np

    from multimodal.errors import InputError
    from multimodal.modalities.image.caption import LatentCaptioner
    from multimodal.modalities.image.vae import ImageVAETokenizer
    from multimodal.pipelines.image_to_text import ImageToTextPipeline
    from multimodal.testing import tiny_tokenizer

    backbone = tiny_backbone().eval()
    vae = ImageVAETokenizer(**TINY["tokenizers"]["image_vae"])
    vae.fit([{"image": torch.zeros(1, 32, 32)}] * 8, progress=False)
    pipe = ImageToTextPipeline(backbone=backbone, captioner=LatentCaptioner(backbone=backbone),
                               vae=vae, tokenizer=tiny_tokenizer())
    image = np.zeros((28, 28), np.uint8)
    out = pipe([image, image], max_new_tokens=3)
    assert len(out.texts) == 2 and out.texts[0] == out.texts[1]  # greedy: same image, same text
    with pytest.raises(InputError, match="image file not found"):
        pipe(str(tmp_path / "none.png"))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot read image .*bad.png"):
        pipe(str(tmp_path / "bad.png"))
    with pytest.raises(InputError, match="give at least one image"):
        pipe([])
    with pytest.raises(InputError, match="max_new_tokens must be an integer in 1..47"):
        pipe(image, max_new_tokens=0)
    with pytest.raises(InputError, match="must be a file path, a PIL image or a uint8 array"):
        pipe(3.5)


def test_image_to_text_kv_cached_decoding_equals_the_full_forward():
    """Captions decoded with the backbone's KV cache are the captions of re-running the whole
    prefix for every token (greedy, and sampled with one seed)."""
    from multimodal.modalities.image.caption import LatentCaptioner
    from multimodal.modalities.image.vae import ImageVAETokenizer
    from multimodal.pipelines.image_to_text import ImageToTextPipeline
    from multimodal.testing import tiny_tokenizer

    torch.manual_seed(0)
    backbone = tiny_backbone().eval()
    vae = ImageVAETokenizer(**TINY["tokenizers"]["image_vae"])
    vae.fit([{"image": torch.rand(1, 32, 32) * 2 - 1} for _ in range(8)], progress=False)
    tokenizer = tiny_tokenizer()
    with torch.no_grad():  # untrained tied weights predict end-of-text at once: not here
        backbone.tok_embeddings.weight[tokenizer.eos_id] = 0.0
    pipe = ImageToTextPipeline(backbone=backbone, captioner=LatentCaptioner(backbone=backbone),
                               vae=vae, tokenizer=tokenizer)
    images = [random_image(seed=i) for i in range(3)]
    for kwargs in ({"max_new_tokens": 16},
                   {"max_new_tokens": 16, "do_sample": True, "temperature": 2.0, "seed": 3}):
        pipe.use_kv_cache = True
        cached = pipe(images, **kwargs)
        pipe.use_kv_cache = False
        full = pipe(images, **kwargs)
        assert cached.texts == full.texts and all(cached.texts), kwargs
        assert len(set(cached.texts)) > 1, kwargs  # the images are read
    pipe.use_kv_cache = True


def test_captioner_with_its_own_encoder_and_decoder_layers():
    """``encoder_layers`` see the whole image (bidirectional), ``decoder_layers`` are causal
    after the backbone (a later caption token changes no earlier logit), and the pipeline
    decodes with them (no backbone cache then)."""
    from multimodal.errors import ConfigError
    from multimodal.modalities.image.caption import LatentCaptioner
    from multimodal.modalities.image.vae import ImageVAETokenizer
    from multimodal.pipelines.image_to_text import ImageToTextPipeline
    from multimodal.testing import tiny_tokenizer

    torch.manual_seed(0)
    backbone = tiny_backbone().eval()
    captioner = LatentCaptioner(backbone=backbone, encoder_layers=2, decoder_layers=2).eval()
    latents = torch.randn(2, *captioner.latent_shape)
    ids = torch.randint(0, backbone.vocab_size, (2, 6))
    with torch.no_grad():
        logits = captioner(latents, ids)
        changed = ids.clone()
        changed[:, -1] = (ids[:, -1] + 1) % backbone.vocab_size
        torch.testing.assert_close(captioner(latents, changed)[:, :-1], logits[:, :-1])
        corner = latents.clone()
        corner[:, :, -1, -1] += 3.0  # the last patch: the encoder carries it to every token
        tokens, moved = captioner.image_tokens(latents), captioner.image_tokens(corner)
        assert not torch.allclose(tokens[:, 0], moved[:, 0])
    assert {n.split(".")[0] for n, _ in captioner.named_parameters()} == {
        "patch_embed", "encoder", "decoder"}
    with pytest.raises(ConfigError, match="decoder_layers must be >= 0"):
        LatentCaptioner(backbone=backbone, decoder_layers=-1)
    # without them it draws only its patch embedding's random numbers, as before they existed
    from multimodal.modalities.image.patches import LatentPatchEmbed

    torch.manual_seed(1)
    LatentCaptioner(backbone=backbone)
    after_captioner = torch.rand(3)
    torch.manual_seed(1)
    LatentPatchEmbed(dim=backbone.dim)
    assert torch.equal(after_captioner, torch.rand(3))

    vae = ImageVAETokenizer(**TINY["tokenizers"]["image_vae"])
    vae.fit([{"image": torch.rand(1, 32, 32) * 2 - 1} for _ in range(8)], progress=False)
    tokenizer = tiny_tokenizer()
    with torch.no_grad():
        backbone.tok_embeddings.weight[tokenizer.eos_id] = 0.0
    pipe = ImageToTextPipeline(backbone=backbone, captioner=captioner, vae=vae,
                               tokenizer=tokenizer)
    texts = pipe([random_image(seed=i) for i in range(2)], max_new_tokens=8).texts
    assert len(texts) == 2 and all(texts)


def test_oversized_images_are_refused_clearly(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from multimodal.errors import InputError
    from multimodal.modalities.image.files import load_image_array

    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10,000 pixels is a "bomb" now
    with pytest.raises(InputError, match="too large to read safely"):
        load_image_array(str(tmp_path / "big.png"), what="image")


def test_export_casts_model_and_tokenizer_weights_to_fp16_and_loads_back(tmp_path):
    from safetensors.torch import load_file

    from multimodal.pipelines import load_pipeline
    from multimodal.checkpoint import export_checkpoint

    source = tiny_image_checkpoint(tmp_path / "src")
    shipped = export_checkpoint(source, tmp_path / "shipped")
    vae = load_file(str(shipped / "tokenizers" / "image" / "vae.safetensors"))
    assert {v.dtype for v in vae.values() if v.is_floating_point()} == {torch.float16}
    a = load_pipeline("text-to-image", source)("a bag", num_inference_steps=2, seed=0,
                                               progress=False).images[0]
    b = load_pipeline("text-to-image", shipped)("a bag", num_inference_steps=2, seed=0,
                                                progress=False).images[0]
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0  # fp16 rounding only


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_diffusion_loss_is_min_snr_weighted_mse_for_images_and_videos(prediction_type):
    from multimodal.modalities.image.diffusion import diffusion_loss
    from multimodal.modalities.image.schedulers import ddpm

    scheduler = ddpm(num_train_timesteps=100, prediction_type=prediction_type)
    generator = torch.Generator().manual_seed(0)
    timesteps = torch.tensor([3, 50, 99])
    for shape in ((3, 4, 8, 8), (3, 2, 4, 8, 8)):  # (b, l, y, x) and (b, t, l, y, x)
        x0, noise, prediction = (torch.randn(shape, generator=generator) for _ in range(3))
        target = noise if prediction_type == "epsilon" else \
            scheduler.get_velocity(x0, noise, timesteps)
        error = (prediction - target).square().flatten(1).mean(1)  # (b,)
        snr = scheduler.alphas_cumprod[timesteps] / (1 - scheduler.alphas_cumprod[timesteps])
        weight = snr.clamp(max=2.0) / (snr if prediction_type == "epsilon" else snr + 1)
        kwargs = dict(x0=x0, noise=noise, timesteps=timesteps, scheduler=scheduler,
                      prediction_type=prediction_type)
        assert torch.allclose(diffusion_loss(prediction, **kwargs), error.mean())
        assert torch.allclose(diffusion_loss(prediction, snr_gamma=2.0, **kwargs),
                              (error * weight).mean())
