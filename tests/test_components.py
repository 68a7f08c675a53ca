"""Every registered component is built from its tiny settings and run once (timm style).

The tests are parametrised over the registries, so a component is tested the day it is
registered: it needs an entry in ``multimodal.testing.TINY`` (else its test fails, naming the
missing entry) and, for tokenizers and decoders, an exercise below that knows its call
convention (else its test fails, naming the missing exercise). A ``vocoders`` registry, when
``multimodal.registry.KINDS`` has one, is picked up automatically.

Axes: b batch, n tokens, d width, l latent channels, y x latent height width, t frames,
m mel bins, f mel frames, s samples.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from conftest import requires_espeak, requires_fashion_mnist, requires_fortunes
from multimodal.registry import KINDS, get_registry
from multimodal.testing import TINY, tiny_backbone, tiny_component, tiny_tokenizer

BUILT_KINDS = [k for k in ("backbones", "tokenizers", "decoders", "schedulers", "datasets",
                          "vocoders") if k in KINDS]

# Components that need a system package to be built or read.
NEEDS = {
    ("tokenizers", "espeak_phonemes"): requires_espeak,
    ("decoders", "mel_decoder"): requires_espeak,
    ("datasets", "fortunes"): requires_fortunes,
    ("datasets", "fashion_mnist"): requires_fashion_mnist,
    ("datasets", "moving_fashion_mnist"): requires_fashion_mnist,
    ("datasets", "espeak_speech"): requires_espeak,
    ("datasets", "audio_folder"): requires_espeak,
    ("datasets", "asterisk_speech"): requires_espeak,
}


def _builtin(kind: str) -> list[str]:
    """Built-in names of ``kind`` (installed plugins test their own, with check_modality)."""
    return sorted(e.name for e in get_registry(kind).entries()
                  if e.owner.startswith("multimodal."))


def _params() -> list:
    params = []
    for kind in BUILT_KINDS:
        for name in _builtin(kind):
            marks = [NEEDS[kind, name]] if (kind, name) in NEEDS else []
            params.append(pytest.param(kind, name, id=f"{kind}-{name}", marks=marks))
    return params


def _finite(x: torch.Tensor, what: str) -> None:
    assert torch.isfinite(x).all(), f"{what} has non-finite values"


# -- backbones -----------------------------------------------------------------------------------
def _exercise_backbone(backbone) -> None:
    ids = torch.randint(0, backbone.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h = backbone.eval()(ids)  # (b, n, d)
    assert h.shape == (2, 8, backbone.dim)
    _finite(h, "hidden states")


# -- tokenizers ----------------------------------------------------------------------------------
def _exercise_byte_bpe(tok) -> None:
    from multimodal.testing import _FALLBACK_CORPUS

    tok.fit(_FALLBACK_CORPUS)
    text = "The only way to get rid of a temptation 🙂"
    ids = tok.encode(text)
    assert ids and max(ids) < tok.vocab_size
    assert tok.decode(ids) == text


def _exercise_hf_tokenizer(tok) -> None:
    assert tok.is_trained  # pretrained: never fitted
    text = "The only way to get rid of a temptation 🙂 <|endoftext|>"
    ids = tok.encode(text)
    assert ids and max(ids) < tok.vocab_size and tok.eos_id not in ids  # a spelling is text
    assert tok.decode(ids) == text


def _exercise_image_vae(tok) -> None:
    images = torch.rand(2, tok.in_channels, tok.image_size, tok.image_size) * 2 - 1  # (b, c, h, w)
    latents = tok.encode(images)
    side = tok.image_size // tok.downsample_factor
    assert latents.shape == (2, tok.latent_channels, side, side)
    back = tok.decode(latents)
    assert back.shape == images.shape
    _finite(back, "decoded images")
    assert back.abs().max() <= 1


def _exercise_video_vae(tok) -> None:
    clips = torch.rand(2, 3, tok.in_channels, tok.image_size, tok.image_size) * 2 - 1
    latents = tok.encode_video(clips)  # (b, t, l, y, x)
    side = tok.image_size // tok.downsample_factor
    assert latents.shape == (2, 3, tok.latent_channels, side, side)
    back = tok.decode_video(latents)
    assert back.shape == clips.shape
    _finite(back, "decoded clips")


def _exercise_espeak_phonemes(tok) -> None:
    ids = tok.encode("hello there", tok.voices[0])
    assert len(ids) > 2 and max(ids) < tok.vocab_size
    assert tok.decode(ids)  # IPA
    assert tok.voice_id(tok.voices[-1]) == len(tok.voices) - 1


def _exercise_log_mel(tok) -> None:
    frames = 4
    wave = 0.3 * torch.sin(torch.arange(2 * frames * tok.hop_length).float() * 0.05)
    mel = tok.encode(wave.view(2, -1))  # (b, m, f + 1)
    assert mel.shape == (2, tok.n_mels, frames + 1)
    _finite(mel, "log-mel")
    for vocoder in tok.available_vocoders:  # griffin-lim's STFT needs > 2 frames
        audio = tok.decode(mel[..., :frames], vocoder=vocoder,
                           generator=torch.Generator().manual_seed(0))
        assert audio.shape == (2, frames * tok.hop_length), vocoder
        _finite(audio, f"audio of the {vocoder} vocoder")
        assert audio.abs().max() <= 1 + 1e-6, vocoder


TOKENIZERS: dict[str, Callable[[Any], None]] = {
    "byte_bpe": _exercise_byte_bpe,
    "image_vae": _exercise_image_vae,
    "hf_tokenizer": _exercise_hf_tokenizer,
    "diffusers_vae": _exercise_image_vae,
    "video_vae": _exercise_video_vae,
    "espeak_phonemes": _exercise_espeak_phonemes,
    "log_mel": _exercise_log_mel,
}


# -- decoders ------------------------------------------------------------------------------------
def _context(dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    context = torch.randn(2, 5, dim)  # (b, n, d) backbone states of a prompt
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])  # (b, n)
    return context, mask


def _exercise_lm_head(decoder, backbone) -> None:
    logits = decoder(torch.randn(2, 6, backbone.dim))
    assert logits.shape == (2, 6, backbone.vocab_size)
    _finite(logits, "logits")


def _exercise_latent_denoiser(decoder, backbone) -> None:
    x_t = torch.randn(2, *decoder.latent_shape)  # (b, l, y, x)
    out = decoder(x_t, torch.tensor([10, 900]), *_context(backbone.dim))
    assert out.shape == x_t.shape
    _finite(out, "prediction")


def _exercise_latent_video_dit(decoder, backbone) -> None:
    x_t = torch.randn(2, *decoder.latent_shape)  # (b, t, l, y, x)
    assert x_t.dim() == 5
    out = decoder(x_t, torch.tensor([10, 900]), *_context(backbone.dim))
    assert out.shape == x_t.shape
    _finite(out, "prediction")


def _exercise_latent_captioner(decoder, backbone) -> None:
    latents = torch.randn(2, *decoder.latent_shape)
    ids = torch.randint(0, backbone.vocab_size, (2, 5))
    logits = decoder(latents, ids)
    assert logits.shape == (2, 5, backbone.vocab_size)
    _finite(logits, "logits")


def _exercise_mel_decoder(decoder, backbone) -> None:
    n = 7
    ids = torch.randint(3, decoder.phoneme_embedding.num_embeddings, (2, n))
    voices = torch.tensor([0, len(decoder.voices) - 1])
    mel, frames = decoder.generate(backbone, ids, voices)  # (b, m, f), (b,)
    assert mel.shape[:2] == (2, decoder.n_mels) and mel.shape[2] == int(frames.max())
    assert (frames >= n).all()  # at least one frame a phoneme
    _finite(mel, "mel")
    mask = torch.ones(2, n, dtype=torch.bool)
    target = torch.randn(2, decoder.n_mels, 2 * n)
    loss, metrics = decoder.loss(backbone, ids, mask, voices, target, torch.tensor([2 * n, n + 3]))
    assert loss.dim() == 0 and torch.isfinite(loss), metrics


DECODERS: dict[str, Callable[[Any, Any], None]] = {
    "lm_head": _exercise_lm_head,
    "latent_unet": _exercise_latent_denoiser,
    "latent_dit": _exercise_latent_denoiser,
    "diffusers_denoiser": _exercise_latent_denoiser,
    "latent_video_dit": _exercise_latent_video_dit,
    "latent_captioner": _exercise_latent_captioner,
    "mel_decoder": _exercise_mel_decoder,
}


# -- schedulers ----------------------------------------------------------------------------------
def _exercise_scheduler(scheduler) -> None:
    generator = torch.Generator().manual_seed(0)
    scheduler.set_timesteps(4)
    assert len(scheduler.timesteps) == 4
    x_t = torch.randn(2, 4, 8, 8, generator=generator) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x_t, t)
        x_t = scheduler.step(0.1 * model_input, t, x_t).prev_sample
    assert x_t.shape == (2, 4, 8, 8)
    _finite(x_t, "sample")


# -- datasets ------------------------------------------------------------------------------------
def _exercise_dataset(dataset) -> None:
    assert len(dataset) > 0
    item = dataset[0]
    if isinstance(item, str):  # a text document
        assert item.strip()
        return
    assert isinstance(item, dict) and item, f"items are str or dict, got {type(item).__name__}"
    shapes = {"image": 3, "video": 4, "audio": 1}  # (c, h, w), (t, c, h, w), (s,)
    media = [k for k in shapes if k in item]
    assert media, f"an item has none of {sorted(shapes)}: {sorted(item)}"
    for key in media:
        value = item[key]
        assert torch.is_tensor(value) and value.dim() == shapes[key], (key, getattr(value, "shape", None))
        assert value.is_floating_point() and value.numel() > 0
        _finite(value, key)
        assert value.abs().max() <= 1 + 1e-6, f"{key} is outside [-1, 1]"
    for key in ("caption", "text"):
        if key in item:
            assert isinstance(item[key], str) and item[key].strip()


# -- vocoders (a registry kind once audio vocoders are registered by name) ------------------------
def _exercise_vocoder(vocoder) -> None:
    m, hop = vocoder.mel_channels, vocoder.hop_length
    frames = max(2, -(-1100 // hop))  # the MR-STFT loss's 1024-point FFT needs > 512 samples
    generator = torch.Generator().manual_seed(0)
    mel = torch.randn(2, m, frames, generator=generator)  # (b, m, f)
    audio = 0.5 * torch.rand(2, frames * hop, generator=generator) - 0.25  # (b, s)
    vocoder.eval()
    with torch.no_grad():
        loss = vocoder.loss(audio, mel, generator=generator)
        assert loss.dim() == 0 and torch.isfinite(loss)
        if hasattr(vocoder, "generate"):
            out = vocoder.generate(mel, generator=generator)
        else:
            out = vocoder(mel, generator=generator)
    assert out.shape == (2, frames * hop)
    _finite(out, "audio")
    assert out.abs().max() <= 1 + 1e-6


# -- the tests -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", BUILT_KINDS)
def test_every_built_in_component_has_tiny_settings(kind):
    missing = set(_builtin(kind)) - set(TINY.get(kind, {}))
    assert not missing, f"add tiny kwargs for {kind} {sorted(missing)} to multimodal/testing.py"


@pytest.mark.parametrize("kind, name", _params())
def test_component_builds_from_tiny_settings_and_runs(kind, name, tmp_path):
    assert name in TINY.get(kind, {}), (
        f"{kind} '{name}' is registered but has no TINY[{kind!r}][{name!r}] in "
        "multimodal/testing.py: add the kwargs that build it in milliseconds")
    component = tiny_component(kind, name, tmp_path)
    if kind == "backbones":
        _exercise_backbone(component)
    elif kind == "tokenizers":
        assert name in TOKENIZERS, f"add an encode/decode exercise for tokenizer '{name}' here"
        TOKENIZERS[name](component)
    elif kind == "decoders":
        assert name in DECODERS, f"add a forward exercise for decoder '{name}' here"
        # tiny_component built it on a fresh tiny backbone; run it on the same kind of backbone
        backbone = _backbone_of(component)
        with torch.no_grad():
            DECODERS[name](component.eval(), backbone)
    elif kind == "schedulers":
        _exercise_scheduler(component)
    elif kind == "datasets":
        _exercise_dataset(component)
    elif kind == "vocoders":
        _exercise_vocoder(component)
    else:  # pragma: no cover - BUILT_KINDS lists the kinds above
        raise AssertionError(kind)


def _backbone_of(decoder):
    """The backbone a decoder was built on (held or tied), else a fresh tiny one."""
    for attr in ("_backbone", "backbone"):
        held = getattr(decoder, attr, None)
        if isinstance(held, list) and held:
            return held[0]
        if isinstance(held, torch.nn.Module):
            return held
    return tiny_backbone().eval()


def test_tiny_component_refuses_a_component_without_tiny_settings():
    with pytest.raises(KeyError, match="no tiny settings for decoders 'no_such_decoder'"):
        tiny_component("decoders", "no_such_decoder")


def test_the_tiny_text_tokenizer_is_trained():
    tok = tiny_tokenizer()
    assert tok.is_trained and tok.vocab_size <= TINY["tokenizers"]["byte_bpe"]["vocab_size"]
