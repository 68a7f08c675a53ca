"""Latents as backbone tokens: a ViT-style patch embedding (Dosovitskiy et al. 2021, "An Image
is Worth 16x16 Words", https://arxiv.org/abs/2010.11929) of VAE latents.

The latent grid is cut into ``p x p`` patches; each patch is projected linearly to the backbone
width ``d`` and given a learned position embedding, so an image becomes ``(y / p) * (x / p)``
tokens the shared backbone reads through ``inputs_embeds`` (with modality id ``image``). Used
for image-to-text and joint training; :func:`unpatchify` is the exact inverse of
:func:`patchify`.

Axes: b batch, l latent channels, y x latent height and width, p patch side, n tokens
(``(y / p) * (x / p)``), d backbone width.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn


def patchify(latents: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(b, l, y, x) latents -> (b, n, p*p*l) flattened patches, row-major over the grid."""
    return rearrange(latents, "b l (gy p1) (gx p2) -> b (gy gx) (p1 p2 l)",
                     p1=patch_size, p2=patch_size)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple[int, int]) -> torch.Tensor:
    """(b, n, p*p*l) patches -> (b, l, y, x) latents; ``grid`` is (y / p, x / p)."""
    return rearrange(patches, "b (gy gx) (p1 p2 l) -> b l (gy p1) (gx p2)",
                     gy=grid[0], gx=grid[1], p1=patch_size, p2=patch_size)


class LatentPatchEmbed(nn.Module):
    """VAE latents -> backbone tokens.

    Args:
        dim: Backbone width ``d``.
        latent_channels: ``l`` (default 4).
        sample_size: Latent side ``y = x`` (default 8).
        patch_size: Patch side ``p``; must divide ``sample_size`` (default 2: 16 tokens).

    Raises:
        ValueError: ``patch_size`` does not divide ``sample_size``.
    """

    def __init__(self, *, dim: int, latent_channels: int = 4, sample_size: int = 8,
                 patch_size: int = 2):
        super().__init__()
        if sample_size % patch_size:
            raise ValueError(f"patch_size {patch_size} must divide sample_size {sample_size}")
        self.patch_size = patch_size
        self.grid = (sample_size // patch_size, sample_size // patch_size)
        self.proj = nn.Linear(patch_size * patch_size * latent_channels, dim)
        self.pos_embedding = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], dim))
        nn.init.normal_(self.pos_embedding, std=0.02)

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """(b, l, y, x) latents -> (b, n, d) tokens."""
        return self.proj(patchify(latents, self.patch_size)) + self.pos_embedding
