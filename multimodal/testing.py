"""Tiny factories for every registered component, for tests (diffusers / timm style).

``TINY[kind][name]`` gives keyword arguments that build the component in milliseconds;
``tiny_component(kind, name)`` builds it with the context it needs (a trained tiny tokenizer,
a tiny backbone). The test suite is parametrised over the registries and fails for a
registered component that has no entry here, so a new component is tested the day it lands.

The package's own imports sit inside the helpers: the built-in specs import this module (for
their tiny configs) while the registry is loading its built-ins, so importing the rest of the
package here would re-enter that load.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

# A small corpus of real English (from the fortunes package when installed, else this).
_FALLBACK_CORPUS = [
    "A banker is a fellow who lends you his umbrella when the sun is shining "
    "and wants it back the minute it begins to rain.\n",
    "A classic is something that everyone wants to have read and nobody wants to read.\n",
    "The only way to get rid of a temptation is to yield to it.\n",
    "Ünïcödé, emoji 🙂, tabs\tand\nnewlines survive byte-level BPE.\n",
] * 8

TINY: dict[str, dict[str, dict[str, Any]]] = {
    "backbones": {"transformer": {"dim": 32, "depth": 2, "num_heads": 4, "max_seq_len": 64},
                  # a tiny random transformers folder, written on first use (tiny_hf_folder)
                  "hf_causal_lm": {"path": "__HF_CAUSAL_LM__", "max_seq_len": 64}},
    "tokenizers": {
        "byte_bpe": {"vocab_size": 300},
        "hf_tokenizer": {"path": "__HF_CAUSAL_LM__"},
        "diffusers_vae": {"path": "__DIFFUSERS_VAE__", "image_size": 32},
        "image_vae": {"block_out_channels": [8, 16, 16], "norm_num_groups": 8, "fit_steps": 4,
                      "batch_size": 8},
        "video_vae": {"block_out_channels": [8, 16, 16], "norm_num_groups": 8, "fit_steps": 4,
                      "batch_size": 8},
        "espeak_phonemes": {"voices": ["en-us", "en-us+f3"]},
        "log_mel": {"vocoders": {"parallel": {"type": "parallel_wavegan", "residual_channels": 8,
                                              "gate_channels": 16, "skip_channels": 8,
                                              "num_layers": 2, "cond_channels": 8},
                                 "autoregressive": {"type": "wavenet", "residual_channels": 8,
                                                    "skip_channels": 8, "num_layers": 4,
                                                    "dilation_cycle": 4, "cond_channels": 8}},
                    "vocoder_fit": {"parallel": {"steps": 4, "batch_size": 2,
                                                 "segment_frames": 8},
                                    "autoregressive": {"steps": 4, "batch_size": 2,
                                                       "segment_frames": 4}}},
    },
    "decoders": {
        "lm_head": {},
        "latent_unet": {"block_out_channels": [16, 32], "norm_num_groups": 8,
                        "num_attention_heads": 2},
        "latent_dit": {"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 8},
        # a tiny random diffusers UNet folder (latents of tiny_tokenizers()'s image_vae)
        "diffusers_denoiser": {"path": "__DIFFUSERS_DENOISER__"},
        "mel_decoder": {"decoder_channels": 32, "decoder_layers": 2, "duration_channels": 32},
        "latent_captioner": {},
        "latent_video_dit": {"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 8,
                             "num_frames": 8, "max_frames": 8},
    },
    "datasets": {
        "fortunes": {"files": ["literature"]},
        "text_files": {"paths": "__TEXT_FILES__"},  # replaced by a temporary file in tests
        "fashion_mnist": {"max_items": 256},
        "image_folder": {"path": "__IMAGE_LIST__"},  # replaced by a temporary JSONL in tests
        # fake npm packages in a temporary folder (with their sha256 and a cache beside them)
        "emoji": {"archive_dir": "__EMOJI_PACKAGES__", "val_fraction": 0.0},
        "moving_fashion_mnist": {"num_clips": 32, "val_clips": 8, "num_frames": 8},
        "video_folder": {"path": "__VIDEO_LIST__", "num_frames": 8},  # a temporary JSONL
        "espeak_speech": {"voices": ["en-us", "en-us+f3"], "texts": ["one", "two", "shirt"]},
        "audio_folder": {"path": "__AUDIO_FOLDER__"},  # an LJSpeech-layout temporary directory
        # a fake asterisk-core-sounds layout: G.722 prompts + a gzipped transcript file
        "asterisk_speech": {"sounds_dir": "__ASTERISK_SOUNDS__", "val_fraction": 0.0},
    },
    "pipelines": {"text-generation": {}, "text-to-image": {}, "image-to-image": {},
                  "inpainting": {}, "text-to-video": {}, "text-to-audio": {},
                  "text-to-audiovisual": {}, "image-to-text": {}},
    "modalities": {"text": {}, "image": {}, "video": {}, "audio": {}, "caption": {}},
    "schedulers": {name: {"num_train_timesteps": 100}
                   for name in ("ddpm", "ddim", "dpm_solver_multistep", "euler")},
    "losses": {},
    # Specs are checked whole by check_modality (tests/test_plugins.py), not built from kwargs.
    "specs": {"text": {}, "image": {}, "video": {}, "audio": {}, "caption": {}},
    "combiners": {"mux_audio_video": {}},
    "vocoders": {"parallel_wavegan": {"residual_channels": 8, "gate_channels": 16,
                                      "skip_channels": 8, "num_layers": 2, "cond_channels": 8},
                 "wavenet": {"residual_channels": 8, "skip_channels": 8, "num_layers": 4,
                             "dilation_cycle": 4, "cond_channels": 8}},
}


@lru_cache(maxsize=None)
def tiny_tokenizer(vocab_size: int = 300):
    """A byte-level BPE tokenizer trained on a few sentences."""
    # deferred: the specs import this module while the registry loads its built-ins
    from multimodal.modalities.text.tokenizer import ByteBPETokenizer

    return ByteBPETokenizer(vocab_size=vocab_size).train(_FALLBACK_CORPUS)


def tiny_backbone(**overrides):
    # deferred: the specs import this module while the registry loads its built-ins
    from multimodal.backbone.transformer import TransformerBackbone

    kwargs = dict(TINY["backbones"]["transformer"], vocab_size=tiny_tokenizer().vocab_size)
    kwargs.update(overrides)
    return TransformerBackbone(**kwargs)


def tiny_config(**sections: Any) -> dict:
    """A resolved config of a toy text model (trains a few steps in about a second).

    Keyword arguments replace or deep-merge into whole sections, e.g.
    ``tiny_config(train={"max_steps": 4})``.
    """
    # deferred: the specs import this module while the registry loads its built-ins
    from multimodal.config import merge

    config = {
        "task": "text-generation",
        "seed": 0,
        "tokenizers": {"text": {"type": "byte_bpe", "vocab_size": 300}},
        "backbone": {"type": "transformer", **TINY["backbones"]["transformer"]},
        "decoders": {"text": {"type": "lm_head"}},
        "data": {"text": {"type": "fortunes", "files": ["literature"]}},
        "train": {"max_steps": 8, "batch_size": 4, "seq_len": 32, "warmup_steps": 2,
                  "lr": 3e-3, "eval_every": 4, "eval_batches": 2, "checkpoint_every": 4,
                  "log_every": 1, "keep_checkpoints": 3},
    }
    return merge(config, copy.deepcopy(sections))


def tiny_pipeline(task: str, tmp_path) -> Any:
    """Train a tiny model for ``task`` into ``tmp_path`` and load its pipeline."""
    # deferred: the specs import this module while the registry loads its built-ins
    from multimodal.pipelines import load_pipeline
    from multimodal.training.trainer import train

    result = train(tiny_config(train={"max_steps": 2}), out_dir=tmp_path, progress=False)
    return load_pipeline(task, result["checkpoint"])


def tiny_image_config(**sections: Any) -> dict:
    """A resolved config of a toy text-to-image model on 256 Fashion-MNIST images (a few
    seconds for a few steps on CPU; needs the Debian package ``dataset-fashion-mnist``).

    Keyword arguments replace or deep-merge into whole sections, as for :func:`tiny_config`.
    """
    # deferred: the specs import this module while the registry loads its built-ins
    from multimodal.config import merge

    config = {
        "task": "text-to-image",
        "seed": 0,
        "tokenizers": {"text": {"type": "byte_bpe", "vocab_size": 300},
                       "image": {"type": "image_vae", **TINY["tokenizers"]["image_vae"]}},
        "backbone": {"type": "transformer", **TINY["backbones"]["transformer"]},
        "decoders": {"image": {"type": "latent_unet", **TINY["decoders"]["latent_unet"]}},
        "data": {"image": {"type": "fashion_mnist", **TINY["datasets"]["fashion_mnist"]}},
        "train": {"max_steps": 8, "batch_size": 16, "seq_len": 32, "warmup_steps": 2,
                  "lr": 3e-3, "eval_every": 4, "eval_batches": 2, "checkpoint_every": 4,
                  "log_every": 1, "keep_checkpoints": 3},
    }
    return merge(config, copy.deepcopy(sections))


def _tiny_latent_size(image_size) -> int | list[int]:
    """The denoiser's ``sample_size`` for a tiny VAE's ``image_size`` (an int or [h, w])."""
    # deferred: the specs import this module while the registry loads its built-ins
    from multimodal.data.images import image_height_width

    height, width = image_height_width(image_size)
    factor = 2 ** (len(TINY["tokenizers"]["image_vae"]["block_out_channels"]) - 1)
    return height // factor if height == width else [height // factor, width // factor]


def tiny_image_pipeline(task: str = "text-to-image", denoiser: str = "latent_unet", *,
                        image_channels: int = 1, image_size: int | tuple[int, int] = 32,
                        **denoiser_overrides):
    """An untrained image pipeline of tiny components, built in milliseconds (no data): grey
    32x32 by default, ``image_channels=3, image_size=64`` for one like the emoji model,
    ``image_size=(h, w)`` for a rectangular one."""
    # deferred: the specs import this module while the registry loads its built-ins
    from multimodal.modalities.image.vae import ImageVAETokenizer
    from multimodal.registry import decoders, pipelines

    backbone = tiny_backbone().eval()
    vae_kwargs = dict(TINY["tokenizers"]["image_vae"], in_channels=image_channels,
                      image_size=image_size)
    kwargs = {**TINY["decoders"][denoiser], "sample_size": _tiny_latent_size(image_size),
              **denoiser_overrides}
    model = decoders.get(denoiser)(backbone=backbone, **kwargs).eval()
    vae = ImageVAETokenizer(**vae_kwargs)  # after the denoiser: its random draws come first
    return pipelines.get(task)(backbone=backbone, denoiser=model, vae=vae,
                               tokenizer=tiny_tokenizer(), checkpoint_id="tiny")


def same_components(pipe: Any, task: str) -> Any:
    """The image pipeline of ``task`` (``"image-to-image"``, ``"inpainting"``, ...) on the very
    components of ``pipe`` (as diffusers' ``Pipeline(**pipe.components)``)."""
    # deferred: the specs import this module while the registry loads its built-ins
    from multimodal.registry import pipelines

    return pipelines.get(task)(backbone=pipe.backbone, denoiser=pipe.denoiser, vae=pipe.vae,
                               tokenizer=pipe.tokenizer, checkpoint_id=pipe.checkpoint_id)


def tiny_image_folder(directory, *, count: int = 40, fmt: str = "jsonl", size: int = 28) -> str:
    """Write ``count`` small grayscale PNGs (two kinds: bars and blobs) with captions and their
    list file (``images.jsonl`` or ``images.csv``) into ``directory``; return the list path."""
    import csv
    import json
    from pathlib import Path

    import numpy as np
    from PIL import Image

    directory = Path(directory)
    (directory / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    records = []
    for i in range(count):
        pixels = np.zeros((size, size), np.uint8)
        if i % 2:
            pixels[:, size // 3 : 2 * size // 3] = 200 + rng.integers(0, 50)
            caption, label = "a vertical bar", 1
        else:
            pixels[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 150 + rng.integers(0, 100)
            caption, label = "a square blob", 0
        Image.fromarray(pixels).save(directory / "img" / f"{i:03d}.png")
        records.append({"image": f"img/{i:03d}.png", "caption": caption, "label": label})
    if fmt == "csv":
        path = directory / "images.csv"
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["image", "caption", "label"])
            writer.writeheader()
            writer.writerows(records)
    else:
        path = directory / "images.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def tiny_image_checkpoint(path, denoiser: str = "latent_unet", *, image_channels: int = 1,
                          image_size: int | tuple[int, int] = 32):
    """Save a checkpoint of tiny, barely trained image components (no dataset needed): a VAE
    fitted for a few steps on random images, an untrained backbone and denoiser; grey 32x32 by
    default, ``image_channels=3, image_size=64`` for a colour one like the emoji model,
    ``image_size=(h, w)`` for a rectangular one. Returns the checkpoint directory."""
    import torch

    # deferred: the specs import this module while the registry loads its built-ins
    from multimodal.model import MultimodalModel
    from multimodal.checkpoint import save_checkpoint

    pipe = tiny_image_pipeline(denoiser=denoiser, image_channels=image_channels,
                               image_size=image_size)
    generator = torch.Generator().manual_seed(0)
    shape = pipe.vae.image_shape
    images = [{"image": torch.rand(shape, generator=generator) * 2 - 1} for _ in range(16)]
    pipe.vae.fit(images, progress=False)
    config = tiny_image_config(
        tokenizers={"image": {"in_channels": image_channels,
                              "image_size": (list(image_size) if isinstance(image_size, tuple)
                                             else image_size)}},
        decoders={"image": {"type": denoiser, **TINY["decoders"][denoiser],
                            "sample_size": _tiny_latent_size(image_size)}})
    model = MultimodalModel(backbone=pipe.backbone, decoders={"image": pipe.denoiser})
    return save_checkpoint(path, model=model, config=config,
                           tokenizers={"text": pipe.tokenizer, "image": pipe.vae})


# -- video -------------------------------------------------------------------------------------
def tiny_video_config(**sections: Any) -> dict:
    """A resolved config of a toy text-to-video model on 32 Moving Fashion-MNIST clips of 8
    frames (seconds for a few steps on CPU; needs ``dataset-fashion-mnist``).

    Keyword arguments replace or deep-merge into whole sections, as for :func:`tiny_config`.
    """
    # deferred: the specs import this module while the registry loads its built-ins
    from multimodal.config import merge

    config = {
        "task": "text-to-video",
        "seed": 0,
        "tokenizers": {"text": {"type": "byte_bpe", "vocab_size": 300},
                       "video": {"type": "video_vae", **TINY["tokenizers"]["video_vae"]}},
        "backbone": {"type": "transformer", **TINY["backbones"]["transformer"]},
        "decoders": {"video": {"type": "latent_video_dit",
                               **TINY["decoders"]["latent_video_dit"]}},
        "data": {"video": {"type": "moving_fashion_mnist",
                           **TINY["datasets"]["moving_fashion_mnist"]}},
        "train": {"max_steps": 4, "batch_size": 4, "seq_len": 64, "warmup_steps": 2,
                  "lr": 3e-3, "eval_every": 2, "eval_batches": 2, "checkpoint_every": 4,
                  "log_every": 1, "keep_checkpoints": 2},
    }
    return merge(config, copy.deepcopy(sections))


def tiny_video_pipeline(**denoiser_overrides):
    """An untrained text-to-video pipeline of tiny components, built in milliseconds."""
    # deferred: the specs import this module while the registry loads its built-ins
    from multimodal.modalities.video import LatentVideoDiT, VideoVAETokenizer
    from multimodal.pipelines.text_to_video import TextToVideoPipeline

    backbone = tiny_backbone().eval()
    kwargs = dict(TINY["decoders"]["latent_video_dit"], **denoiser_overrides)
    denoiser = LatentVideoDiT(backbone=backbone, **kwargs).eval()
    vae = VideoVAETokenizer(**TINY["tokenizers"]["video_vae"])
    return TextToVideoPipeline(backbone=backbone, denoiser=denoiser, vae=vae,
                               tokenizer=tiny_tokenizer(), checkpoint_id="tiny")


def tiny_video_checkpoint(path):
    """Save a checkpoint of tiny, barely trained video components (no dataset needed): a VAE
    fitted for a few steps on random frames, an untrained backbone and denoiser whose temporal
    layers are randomised (not zero) so time matters. Returns the checkpoint directory."""
    import torch

    # deferred: the specs import this module while the registry loads its built-ins
    from multimodal.model import MultimodalModel
    from multimodal.checkpoint import save_checkpoint

    pipe = tiny_video_pipeline()
    generator = torch.Generator().manual_seed(0)
    frames = [{"image": torch.rand(1, 48, 48, generator=generator) * 2 - 1} for _ in range(16)]
    # deferred: the specs import this module while the registry loads its built-ins
    from multimodal.modalities.image.vae import ImageVAETokenizer

    ImageVAETokenizer.fit(pipe.vae, frames, progress=False)  # frames as images
    with torch.no_grad():
        for layer in pipe.denoiser.temporal:
            layer.proj_out.weight.normal_(0, 0.2, generator=generator)
    config = tiny_video_config()
    model = MultimodalModel(backbone=pipe.backbone, decoders={"video": pipe.denoiser})
    return save_checkpoint(path, model=model, config=config,
                           tokenizers={"text": pipe.tokenizer, "video": pipe.vae})


def tiny_video_folder(directory, *, count: int = 6, num_frames: int = 8, size: int = 40) -> str:
    """Write ``count`` small GIF and MP4 clips (a bright square moving right or down) with
    captions and their ``videos.jsonl`` into ``directory``; return the list path."""
    import json
    from pathlib import Path

    import numpy as np

    # deferred: the specs import this module while the registry loads its built-ins
    from multimodal.modalities.video.files import gif_bytes, mp4_bytes

    directory = Path(directory)
    (directory / "clips").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        frames = np.zeros((num_frames, size, size), np.uint8)
        for t in range(num_frames):
            x, y = (4 + 2 * t, 12) if i % 2 == 0 else (12, 4 + 2 * t)
            frames[t, y : y + 12, x : x + 12] = 220
        name = f"clips/{i:03d}." + ("gif" if i % 3 else "mp4")
        data = gif_bytes(frames, 10) if name.endswith("gif") else mp4_bytes(frames, 10)
        (directory / name).write_bytes(data)
        caption = "a square moving right" if i % 2 == 0 else "a square moving down"
        records.append({"video": name, "caption": caption, "label": i % 2})
    path = directory / "videos.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


# -- audio -------------------------------------------------------------------------------------
def tiny_audio_config(**sections: Any) -> dict:
    """A resolved config of a toy text-to-speech model: 20 short texts in 2 espeak-ng voices,
    tiny vocoders fitted for a few steps (seconds on CPU; needs ``espeak-ng``; rendered speech
    is cached under :func:`multimodal.io.cache_root`).

    Keyword arguments replace or deep-merge into whole sections, as for :func:`tiny_config`.
    """
    # deferred: the specs import this module while the registry loads its built-ins
    from multimodal.config import merge

    voices = ["en-us", "en-us+f3"]
    config = {
        "task": "text-to-audio",
        "seed": 0,
        "tokenizers": {"phonemes": {"type": "espeak_phonemes", "voices": voices},
                       "audio": {"type": "log_mel", **TINY["tokenizers"]["log_mel"]}},
        "backbone": {"type": "transformer", **TINY["backbones"]["transformer"]},
        "decoders": {"audio": {"type": "mel_decoder", **TINY["decoders"]["mel_decoder"]}},
        "data": {"audio": {"type": "espeak_speech", "voices": voices, "val_fraction": 0.2,
                           "texts": ["zero", "one", "two", "three", "four", "five", "six",
                                     "seven", "eight", "nine", "shirt", "trousers", "bag",
                                     "sneaker", "dress", "coat", "sandal", "pullover",
                                     "ankle boot", "hello there"]}},
        "train": {"max_steps": 6, "batch_size": 4, "seq_len": 64, "lr": 1e-3,
                  "warmup_steps": 2, "eval_every": 3, "eval_batches": 1, "checkpoint_every": 6,
                  "log_every": 1, "keep_checkpoints": 2},
    }
    return merge(config, copy.deepcopy(sections))


# -- the conformance kit ---------------------------------------------------------------------------
class ConformanceError(AssertionError):
    """A modality broke the contract :func:`check_modality` checks (the message says where)."""


def check_modality(spec, tmp_path, *, prompt: str = "a small test", overfit_steps: int = 8
                   ) -> dict[str, Any]:
    """Check that a modality keeps the framework's contract, end to end at toy size.

    Run it in a plugin's own tests (``tests/test_plugins.py`` runs it over every built-in)::

        from multimodal.testing import check_modality

        def test_conformance(tmp_path):
            check_modality(registry.specs.get("sketch"), tmp_path)

    In order, it:

    1. builds and trains ``spec.tiny_config()`` for its few steps (tokenizers fitted first)
       and saves a checkpoint;
    2. encodes ``spec.example_input()`` with the fitted tokenizer to ``spec.encoded_shape`` and
       decodes it back to ``spec.input_shape`` (text: back to the same string);
    3. takes ``overfit_steps`` optimizer steps on one fixed batch and checks the loss fell;
    4. loads the checkpoint and checks that the loaded model's loss on a fixed batch equals the
       trained model's exactly (save -> load gives identical outputs);
    5. generates twice from the loaded pipeline with one seed and checks the samples are
       identical (seeded sampling is deterministic);
    6. writes a sample with ``spec.writer`` and reads it back with ``spec.reader``: same shape
       (same text).

    Args:
        spec: A :class:`multimodal.plugins.ModalitySpec`.
        tmp_path: A scratch directory (pytest's ``tmp_path``).
        prompt: The prompt to generate from.
        overfit_steps: Steps of step 3.

    Returns:
        What was measured: ``{"encoded_shape", "loss_before", "loss_after", "file"}``.

    Raises:
        ConformanceError: the first broken check, saying which and what was seen.
    """
    from pathlib import Path

    import numpy as np
    import torch

    # deferred: the specs import this module while the registry loads its built-ins
    from multimodal.config import validate_config
    from multimodal.pipelines import load_pipeline
    from multimodal.plugins import shape_matches, shape_of, spec_problems
    from multimodal.checkpoint import find_checkpoint, load_checkpoint
    from multimodal.training.trainer import Trainer, step_generator

    def fail(step: str, message: str) -> None:
        raise ConformanceError(f"modality '{spec.name}', {step}: {message}")

    problems = spec_problems(spec)
    if problems:
        fail("spec", "; ".join(problems))
    tmp_path = Path(tmp_path)

    # 1. build tiny, fit, train, save
    config = spec.tiny_config()
    validate_config(config)
    if spec.name not in (config.get("decoders") or {}):
        fail("tiny_config", f"has no decoders.{spec.name}")
    trainer = Trainer(config, out_dir=tmp_path / "run", progress=False)
    trainer.fit()
    checkpoint = find_checkpoint(tmp_path / "run")

    # 2. encode -> decode
    encoded_shape = None
    if spec.tokenizer is not None:
        slots = [k for k, section in config["tokenizers"].items()
                 if section.get("type") == spec.tokenizer]
        if not slots:
            fail("tiny_config", f"has no tokenizer of type {spec.tokenizer}")
        tokenizer = trainer.tokenizers[slots[0]]
    else:
        tokenizer = trainer.tokenizers.get("text")
    if tokenizer is not None:
        example = spec.example_input()
        with torch.no_grad():
            codes = spec.encode(tokenizer, example)
            encoded_shape = shape_of(codes)
            if not shape_matches(encoded_shape, spec.encoded_shape):
                fail("encode", f"gave shape {encoded_shape}, spec says {spec.encoded_shape}")
            decoded = spec.decode(tokenizer, codes)
        if isinstance(example, str):
            if decoded != example:
                fail("decode", f"gave {decoded!r}, not the example {example!r}")
        elif not shape_matches(shape_of(decoded), spec.input_shape):
            fail("decode", f"gave shape {shape_of(decoded)}, spec says {spec.input_shape}")

    # 3. a training step lowers the loss (overfitting one fixed batch)
    modality, data = trainer.modalities[spec.name], trainer.train_data[spec.name]
    backbone, decoder = trainer.model.backbone, trainer.model.decoders[spec.name]

    def fixed_batch() -> dict:
        return modality.sample(data, batch_size=trainer.cfg.batch_size,
                               generator=step_generator(123, 0))

    def loss_of(model_backbone, model_decoder, batch) -> float:
        with torch.no_grad():
            return float(modality.loss(model_backbone, model_decoder, batch)[0])

    batch = fixed_batch()
    trainer.model.eval()
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    before = loss_of(backbone, decoder, batch)
    optimizer = torch.optim.Adam(trainer.model.parameters(), lr=trainer.cfg.lr)
    torch.manual_seed(0)
    for _ in range(overfit_steps):
        loss, _ = modality.loss(backbone, decoder, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = loss_of(backbone, decoder, batch)
    if not np.isfinite(after) or not after < before:
        fail("training", f"{overfit_steps} steps on one batch moved the loss from {before:.5g} "
                         f"to {after:.5g}; it should fall")
    trainer.model.load_state_dict(state)  # back to the checkpoint's weights

    # 4. save -> load: identical outputs
    loaded = load_checkpoint(checkpoint)
    loaded.model.eval()
    again = loss_of(loaded.model.backbone, loaded.model.decoders[spec.name], fixed_batch())
    if again != before:
        fail("save -> load", f"the loaded model's loss {again!r} differs from the trained "
                             f"model's {before!r} on the same batch")

    # 5. seeded sampling is deterministic
    pipeline = load_pipeline(spec.task, checkpoint)
    first, second = (spec.generate(pipeline, prompt, 7) for _ in range(2))
    if isinstance(first, str) or isinstance(second, str):
        same = first == second
    else:
        same = shape_of(first) == shape_of(second) and np.array_equal(np.asarray(first),
                                                                      np.asarray(second))
    if not same:
        fail("sampling", "two samples with seed 7 differ")

    # 6. the writer produces a readable file
    path = tmp_path / f"sample{spec.suffix}"
    spec.writer(first, path)
    if not path.is_file() or path.stat().st_size == 0:
        fail("writer", f"wrote no file at {path}")
    back = spec.reader(path)
    if isinstance(first, str):
        if back != first:
            fail("reader", f"read back {back!r}, wrote {first!r}")
    elif shape_of(back) != shape_of(first):
        fail("reader", f"read back shape {shape_of(back)}, wrote {shape_of(first)}")
    return {"encoded_shape": encoded_shape, "loss_before": before, "loss_after": after,
            "file": str(path)}


# -- tiny components by registry name (tests/test_components.py) -------------------------------
# Placeholders in TINY["datasets"] that name files; tiny_dataset_kwargs writes those files.
_DATA_PLACEHOLDERS = ("__TEXT_FILES__", "__IMAGE_LIST__", "__VIDEO_LIST__", "__AUDIO_FOLDER__",
                      "__EMOJI_PACKAGES__", "__ASTERISK_SOUNDS__")


def tiny_emoji_packages(directory) -> tuple[Any, dict[str, str]]:
    """Write fake versions of the three emoji npm packages into ``directory``, laid out as the
    real ones (``package/emoji.json`` + ``package/img/<set>/64/*.png``; ``package/data/
    openmoji.json`` + ``package/color/svg/*.svg``), each named ``NAME-VERSION.tgz`` as
    ``npm pack`` names it. Concepts: a waving hand (sort order 1, with a medium-dark skin-tone
    variant in the PNG sets) and a red apple, plus a ``Component`` entry and an
    OpenMoji-only extra, which the reader leaves out.

    Returns:
        ``(archive folder, {style: sha256 of its archive})``, for ``EmojiDataset(archive_dir=...,
        sha256=...)``.
    """
    import hashlib
    import io
    import json
    import tarfile
    from pathlib import Path

    import numpy as np
    from PIL import Image

    # deferred: the specs import this module while the registry loads its built-ins
    from multimodal.data.emoji import PACKAGES

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    def png(colour: tuple[int, int, int]) -> bytes:
        # (64, 64, 4): a disc of ``colour`` on a transparent square
        yy, xx = np.mgrid[:64, :64]
        disc = (yy - 32) ** 2 + (xx - 32) ** 2 < 24 ** 2
        rgba = np.zeros((64, 64, 4), np.uint8)
        rgba[disc] = (*colour, 255)
        buffer = io.BytesIO()
        Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
        return buffer.getvalue()

    def svg(colour: str) -> bytes:
        return (f'<svg viewBox="0 0 72 72" xmlns="http://www.w3.org/2000/svg"><circle cx="36" '
                f'cy="36" r="22" fill="{colour}" stroke="#000" stroke-width="3"/></svg>').encode()

    emoji_json = [
        {"unified": "1F44B", "image": "1f44b.png", "name": "WAVING HAND SIGN",
         "short_name": "wave", "short_names": ["wave"], "category": "People & Body",
         "subcategory": "hand-fingers-open", "sort_order": 1,
         "skin_variations": {"1F3FE": {"unified": "1F44B-1F3FE", "image": "1f44b-1f3fe.png"}}},
        {"unified": "1F34E", "image": "1f34e.png", "name": "RED APPLE", "short_name": "apple",
         "short_names": ["apple"], "category": "Food & Drink", "subcategory": "food-fruit",
         "sort_order": 2},
        {"unified": "1F3FB", "image": "1f3fb.png", "name": "EMOJI MODIFIER FITZPATRICK TYPE-1-2",
         "short_name": "skin-tone-2", "short_names": ["skin-tone-2"], "category": "Component",
         "subcategory": "skin-tone", "sort_order": 3},
    ]
    openmoji_json = [
        {"hexcode": "1F44B", "annotation": "waving hand", "group": "people-body",
         "tags": "hand, hello, wave", "openmoji_tags": "", "skintone": "",
         "skintone_base_hexcode": ""},
        {"hexcode": "1F34E", "annotation": "red apple", "group": "food-drink",
         "tags": "apple, fruit, red", "openmoji_tags": "", "skintone": "",
         "skintone_base_hexcode": ""},
        {"hexcode": "E000", "annotation": "openmoji logo", "group": "extras-openmoji",
         "tags": "", "openmoji_tags": "", "skintone": "", "skintone_base_hexcode": ""},
    ]
    colours = {"1f44b": (250, 200, 40), "1f44b-1f3fe": (120, 70, 30), "1f34e": (220, 30, 30),
               "1f3fb": (250, 220, 190)}
    files = {
        "twemoji": {"emoji.json": json.dumps(emoji_json).encode(), "README.md": b"fake\n",
                    **{f"img/twitter/64/{c}.png": png(v) for c, v in colours.items()}},
        "noto": {"emoji.json": json.dumps(emoji_json).encode(),
                 **{f"img/google/64/{c}.png": png(tuple(255 - x for x in v))
                    for c, v in colours.items()}},
        "openmoji": {"data/openmoji.json": json.dumps(openmoji_json).encode(),
                     "color/svg/1F44B.svg": svg("#fcea2b"), "color/svg/1F34E.svg": svg("#ea5a47"),
                     "color/svg/E000.svg": svg("#3f3f3f"), "black/svg/1F34E.svg": svg("none")},
    }
    sha256 = {}
    for style, members in files.items():
        path = directory / PACKAGES[style].filename
        with tarfile.open(path, "w:gz") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(f"package/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        sha256[style] = hashlib.sha256(path.read_bytes()).hexdigest()
    return directory, sha256


def _tiny_emoji_kwargs(directory) -> dict[str, Any]:
    """``archive_dir``, ``sha256`` and ``cache_dir`` of fake emoji packages in ``directory``."""
    from pathlib import Path

    archives, sha256 = tiny_emoji_packages(Path(directory) / "archives")
    return {"archive_dir": str(archives), "sha256": sha256,
            "cache_dir": str(Path(directory) / "cache")}


def tiny_text_files(directory, *, count: int = 40) -> str:
    """Write ``count`` short text files (one document each) into ``directory``; return a glob
    pattern that matches them."""
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (directory / f"doc{i:03d}.txt").write_text(_FALLBACK_CORPUS[i % 4].replace("\n", " ")
                                                   + f"Number {i}.\n", encoding="utf-8")
    return str(directory / "*.txt")


def tiny_audio_folder(directory, *, count: int = 8, seconds: float = 0.5) -> str:
    """Write ``count`` short 16 kHz tones with texts in the LJSpeech layout
    (``metadata.csv`` + ``wavs/<id>.wav``) into ``directory``; return the directory."""
    from pathlib import Path

    import numpy as np
    import soundfile as sf

    directory = Path(directory)
    (directory / "wavs").mkdir(parents=True, exist_ok=True)
    t = np.arange(int(16_000 * seconds)) / 16_000
    lines = []
    for i in range(count):
        wave = 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t)  # (s,) in [-1, 1]
        sf.write(directory / "wavs" / f"clip{i}.wav", wave.astype(np.float32), 16_000)
        lines.append(f"clip{i}|Number {i} is here.")
    (directory / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(directory)


# (prompt name, transcript) of the fake Asterisk sounds, in the real file's form; the last two
# have no audio file: a description and a prompt whose file is missing.
TINY_ASTERISK_PROMPTS = (("activated", "Activated."),
                         ("digits/7", "seven"),
                         ("vm-next", "Press 6 to play the next message."),
                         ("dictate/forhelp", "press * for help [beep]"),
                         ("beep", "[this is a simple beep tone]"),
                         ("pls-try-call-later", "Please try your call later."))


def tiny_asterisk_sounds(directory, *, seconds: float = 0.4) -> dict[str, str]:
    """Write a fake ``asterisk-core-sounds-en(-g722)`` layout into ``directory``: raw G.722
    files (``<sounds>/<name>.g722``, short 16 kHz tones encoded with imageio-ffmpeg's ffmpeg)
    for the first four of :data:`TINY_ASTERISK_PROMPTS`, ``beep.g722`` too, and the gzipped
    transcript file listing all six.

    Returns:
        ``{"sounds_dir", "transcripts", "cache_dir"}``, keyword arguments of
        ``asterisk_speech``.
    """
    import gzip
    import subprocess
    from pathlib import Path

    import imageio_ffmpeg

    directory = Path(directory)
    sounds = directory / "sounds" / "en_US_f_Allison"
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    for i, (name, _) in enumerate(TINY_ASTERISK_PROMPTS[:5]):
        # a (300 + 100 i) Hz sine at amplitude 0.5 (lavfi's sine is 1/8, so volume 4)
        target = sounds / f"{name}.g722"
        target.parent.mkdir(parents=True, exist_ok=True)
        tone = f"sine=frequency={300 + 100 * i}:sample_rate=16000:duration={seconds * (1 + i / 4)}"
        subprocess.run([ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
                        "-f", "lavfi", "-i", tone, "-af", "volume=4", "-c:a", "g722",
                        "-f", "g722", str(target)], check=True, capture_output=True, timeout=60)
    lines = ["; Core Asterisk Sounds in English", ""]
    lines += [f"{name}: {text}" for name, text in TINY_ASTERISK_PROMPTS]
    docs = directory / "doc" / "asterisk-core-sounds-en"
    docs.mkdir(parents=True, exist_ok=True)
    transcripts = docs / "core-sounds-en.txt.gz"
    transcripts.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode("utf-8")))
    return {"sounds_dir": str(sounds), "transcripts": str(transcripts),
            "cache_dir": str(directory / "cache")}


def tiny_dataset_kwargs(name: str, directory) -> dict[str, Any]:
    """``TINY["datasets"][name]`` with its file placeholders replaced by small files written
    into ``directory`` (text files, an image list, a video list, an LJSpeech folder, fake
    emoji packages, a fake Asterisk sounds layout)."""
    from pathlib import Path

    kwargs = copy.deepcopy(TINY["datasets"][name])
    writers = {"__TEXT_FILES__": tiny_text_files, "__IMAGE_LIST__": tiny_image_folder,
               "__VIDEO_LIST__": tiny_video_folder, "__AUDIO_FOLDER__": tiny_audio_folder,
               "__EMOJI_PACKAGES__": _tiny_emoji_kwargs,
               "__ASTERISK_SOUNDS__": tiny_asterisk_sounds}
    for key, value in list(kwargs.items()):
        if isinstance(value, str) and value in _DATA_PLACEHOLDERS:
            written = writers[value](Path(directory) / name)
            if isinstance(written, dict):  # several arguments at once (emoji: archives + sha256)
                kwargs.update(written)
            else:
                kwargs[key] = written
    return kwargs


def tiny_tokenizers() -> dict[str, Any]:
    """Untrained tiny tokenizers under the slot names decoders expect (``text`` is trained:
    a backbone's vocabulary comes from it)."""
    # deferred, as in every helper here: the specs import TINY while the registry loads its
    # built-ins, so importing this module must not import the registry's modules
    from multimodal.builders import build_component

    def build(name: str) -> Any:  # as a config builds it (log_mel's vocoders are components)
        section = {"type": name, **copy.deepcopy(TINY["tokenizers"][name])}
        return build_component("tokenizers", section, f"tokenizers.{name}")

    return {"text": tiny_tokenizer(), "image": build("image_vae"), "video": build("video_vae"),
            "phonemes": build("espeak_phonemes"), "audio": build("log_mel")}


def tiny_component(kind: str, name: str, directory=None) -> Any:
    """Build the registered component ``kind``/``name`` from ``TINY[kind][name]``, with what the
    builder would inject (a tiny backbone, tiny tokenizers, ``split="train"``) — through
    :func:`multimodal.builders.build_component`, as a config would build it.

    Args:
        kind: A registry kind with tiny settings, e.g. ``"decoders"``.
        name: A registered name of that kind.
        directory: Where datasets that read files get theirs (needed for those).

    Raises:
        KeyError: ``TINY`` has no entry for the component (add one above).
    """
    # deferred: the builders import the model and config floors, which the specs (importers of
    # TINY, while the registry loads) must not pull in
    from multimodal.builders import build_component

    if name not in TINY.get(kind, {}):
        raise KeyError(f"no tiny settings for {kind} '{name}': add TINY[{kind!r}][{name!r}] "
                       "to multimodal/testing.py")
    if kind == "datasets":
        if directory is None:
            raise ValueError(f"datasets '{name}' needs a directory for its files")
        section = {"type": name, **tiny_dataset_kwargs(name, directory)}
    else:
        section = {"type": name, **copy.deepcopy(TINY[kind][name])}
        for key, value in section.items():
            if value in _FOLDER_PLACEHOLDERS:
                section[key] = str(tiny_hf_folder(value))
    tokenizers = tiny_tokenizers() if kind == "decoders" else {}
    context: dict[str, Any] = {"vocab_size": tiny_tokenizer().vocab_size, "split": "train",
                               "tokenizers": tokenizers}
    if kind == "decoders":
        context["backbone"] = tiny_backbone()
    return build_component(kind, section, f"{kind}.{name}", **context)


# -- stand-ins for pretrained Hugging Face folders -----------------------------------------------
_FOLDER_PLACEHOLDERS = ("__HF_CAUSAL_LM__", "__DIFFUSERS_VAE__", "__DIFFUSERS_DENOISER__")


def tiny_hf_causal_lm(directory, *, architecture: str = "llama", seed: int = 0):
    """Write a tiny random transformers causal LM (``"llama"``: untied head, grouped-query
    attention; ``"gpt2"``: tied head, learned positions) and its fast tokenizer (the tiny
    byte-level BPE) into ``directory`` with ``save_pretrained``: a stand-in for a pretrained
    model folder. Returns the folder."""
    from pathlib import Path

    import torch
    from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                              PreTrainedTokenizerFast)

    # deferred: the specs import this module while the registry loads its built-ins
    from multimodal.modalities.text.tokenizer import EOS_TOKEN, PAD_TOKEN

    bpe = tiny_tokenizer()
    ids = {"bos_token_id": bpe.eos_id, "eos_token_id": bpe.eos_id, "pad_token_id": bpe.pad_id}
    torch.manual_seed(seed)
    if architecture == "llama":
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=bpe.vocab_size, hidden_size=32, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=128, tie_word_embeddings=False, **ids))
    elif architecture == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=bpe.vocab_size, n_embd=32, n_layer=2,
                                           n_head=4, n_positions=128, **ids))
    else:
        raise ValueError(f"architecture must be 'llama' or 'gpt2', got {architecture!r}")
    folder = Path(directory)
    model.save_pretrained(str(folder), safe_serialization=True)
    PreTrainedTokenizerFast(tokenizer_object=copy.deepcopy(bpe._tok), eos_token=EOS_TOKEN,
                            bos_token=EOS_TOKEN, pad_token=PAD_TOKEN).save_pretrained(str(folder))
    return folder


def tiny_diffusers_vae(directory, *, in_channels: int = 1, seed: int = 0,
                       scaling_factor: float = 0.7, shift_factor: float | None = 0.1):
    """Write a tiny random diffusers ``AutoencoderKL`` (8x down-sampling of 32x32 images to
    4x4x4 latents) into ``directory`` with ``save_pretrained``: a stand-in for a pretrained VAE
    folder. Returns the folder."""
    from pathlib import Path

    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=in_channels, out_channels=in_channels,
                        down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(8, 8, 16, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=8, sample_size=32,
                        scaling_factor=scaling_factor, shift_factor=shift_factor)
    vae.save_pretrained(str(Path(directory)), safe_serialization=True)
    return Path(directory)


def tiny_diffusers_denoiser(directory, *, cross_attention_dim: int = 24, sample_size: int = 8,
                            in_channels: int = 4, out_channels: int | None = None,
                            scheduler: dict[str, Any] | None = None, seed: int = 0, **unet: Any):
    """Write a tiny random diffusers ``UNet2DConditionModel`` (two levels of widths 8 and 16,
    cross-attention of width ``cross_attention_dim`` in both) into ``directory/unet`` with
    ``save_pretrained``, and, when ``scheduler`` is given, a ``DDPMScheduler`` of those
    settings into ``directory/scheduler``: a stand-in for a pretrained Stable Diffusion style
    folder. ``unet`` overrides other arguments of the UNet. Returns the UNet's folder."""
    from pathlib import Path

    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    kwargs = {"sample_size": sample_size, "in_channels": in_channels,
              "out_channels": in_channels if out_channels is None else out_channels,
              "down_block_types": ("CrossAttnDownBlock2D",) * 2,
              "up_block_types": ("CrossAttnUpBlock2D",) * 2, "block_out_channels": (8, 16),
              "layers_per_block": 1, "norm_num_groups": 8, "attention_head_dim": 2,
              "cross_attention_dim": cross_attention_dim, **unet}
    folder = Path(directory) / "unet"
    UNet2DConditionModel(**kwargs).save_pretrained(str(folder), safe_serialization=True)
    if scheduler is not None:
        DDPMScheduler(**scheduler).save_pretrained(str(Path(directory) / "scheduler"))
    return folder


@lru_cache(maxsize=None)
def tiny_hf_folder(placeholder: str):
    """The folder a ``TINY`` placeholder stands for, written once per process into a
    temporary directory removed at exit."""
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    root = Path(tempfile.mkdtemp(prefix="multimodal-tiny-hf-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    if placeholder == "__HF_CAUSAL_LM__":
        return tiny_hf_causal_lm(root / "llama")
    if placeholder == "__DIFFUSERS_DENOISER__":
        return tiny_diffusers_denoiser(root / "sd")
    return tiny_diffusers_vae(root / "vae")
