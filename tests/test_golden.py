"""Golden slices (diffusers style): a fixed seed, tiny modules, a 3x3 corner of the output
compared with recorded values at a tolerance of 1e-4.

They fail when a refactor changes what a module computes (or how it draws its initial
weights), and when a dependency changes under us: ``LatentDiT.forward`` reaches into diffusers'
PixArt internals (``pos_embed``, ``adaln_single``, ``caption_projection``, the blocks'
``timestep`` argument), so a diffusers release that changes them fails here rather than in a
user's samples. pyproject.toml pins diffusers to the range these values were recorded with.

Provenance: every value below was recorded once on CPU (torch 2.11.0, diffusers 0.42.1,
Python 3.11, fp32; identical with 1 and 2 threads) by running the body of each test and
printing ``[[round(float(v), 6) for v in row] for row in corner]``. To re-record after an
INTENDED change, do the same, paste the new rows and say why in the commit message.

Axes: b batch, n tokens, d width, l latent channels, y x latent height width, m mel bins,
f frames, q mu-law classes, s samples.
"""

from __future__ import annotations

import torch

from multimodal.backbone.transformer import TransformerBackbone
from multimodal.modalities.audio.wavenet import ParallelWaveGANGenerator, WaveNetVocoder
from multimodal.modalities.image.denoiser import LatentDiT

ATOL = 1e-4


def _check(corner: torch.Tensor, golden: list[list[float]]) -> None:
    expected = torch.tensor(golden, dtype=corner.dtype)
    assert corner.shape == expected.shape == (3, 3)
    torch.testing.assert_close(corner, expected, atol=ATOL, rtol=0)


def _tiny_backbone() -> TransformerBackbone:
    torch.manual_seed(0)
    return TransformerBackbone(vocab_size=97, dim=32, depth=2, num_heads=4,
                               max_seq_len=64).eval()


def test_backbone_golden_slice():
    backbone = _tiny_backbone()
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(1))  # (b, n)
    with torch.no_grad():
        h = backbone(ids)  # (b, n, d)
    assert h.shape == (2, 10, 32)
    _check(h[1, -3:, -3:], [[-1.261611, 0.555295, -0.000493],
                            [1.23276, -0.122451, -0.329551],
                            [0.692953, 0.760467, 1.144239]])


def test_latent_dit_golden_slice():
    backbone = _tiny_backbone()  # only its width (32) reaches the DiT
    torch.manual_seed(0)
    dit = LatentDiT(backbone=backbone, num_layers=2, num_attention_heads=2,
                    attention_head_dim=8).eval()
    generator = torch.Generator().manual_seed(2)
    x_t = torch.randn(2, 4, 8, 8, generator=generator)  # (b, l, y, x)
    context = torch.randn(2, 5, 32, generator=generator)  # (b, n, d)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])  # (b, n): padding in item 1
    with torch.no_grad():
        out = dit(x_t, torch.tensor([10, 700]), context, mask)  # (b, l, y, x)
    assert out.shape == x_t.shape
    _check(out[1, -1, -3:, -3:], [[-0.889955, 1.06619, 0.080526],
                                  [0.88601, -0.35327, -0.25247],
                                  [-1.185918, 0.434509, -0.563668]])


def test_wavenet_vocoder_golden_slice():
    torch.manual_seed(0)
    vocoder = WaveNetVocoder(residual_channels=8, skip_channels=8, num_layers=4,
                             dilation_cycle=4, cond_channels=8, mel_channels=16,
                             hop_length=16).eval()
    generator = torch.Generator().manual_seed(3)
    mel = torch.randn(2, 16, 4, generator=generator)  # (b, m, f)
    audio = torch.rand(2, 64, generator=generator) - 0.5  # (b, s), s = f * hop_length
    with torch.no_grad():
        logits = vocoder(audio, mel)  # (b, q, s) teacher-forced
    assert logits.shape == (2, 256, 64)
    _check(logits[1, -3:, -3:], [[-0.063856, 0.031085, -0.09707],
                                 [0.020775, 0.015437, 0.025731],
                                 [-0.070397, 0.006525, -0.107304]])


def test_parallel_wavegan_generator_golden_slice():
    torch.manual_seed(0)
    generator_net = ParallelWaveGANGenerator(residual_channels=8, gate_channels=16,
                                             skip_channels=8, num_layers=2, dilation_cycle=2,
                                             cond_channels=8, fold=4, mel_channels=16,
                                             hop_length=16).eval()
    generator = torch.Generator().manual_seed(4)
    mel = torch.randn(3, 16, 4, generator=generator)  # (b, m, f)
    noise = torch.randn(3, 64, generator=generator)  # (b, s)
    with torch.no_grad():
        wave = generator_net(mel, noise=noise)  # (b, s) in [-1, 1]
    assert wave.shape == (3, 64)
    _check(wave[:, -3:], [[-0.090451, -0.05949, 0.068093],
                          [-0.089975, -0.064922, 0.051505],
                          [-0.13987, -0.02073, 0.021162]])
