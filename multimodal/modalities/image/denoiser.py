"""Latent diffusion denoisers conditioned on the shared backbone's hidden states for the prompt.

A denoiser predicts the noise ``eps`` (or the velocity ``v``, Salimans & Ho 2022,
https://arxiv.org/abs/2202.00512) in noisy VAE latents ``x_t``, cross-attending to the
backbone's states of the caption (Rombach et al. 2022, LDM, https://arxiv.org/abs/2112.10752).
Two are registered:

* ``latent_unet``: a small diffusers ``UNet2DConditionModel`` (the LDM / Stable Diffusion UNet).
* ``latent_dit``: a Diffusion Transformer (Peebles & Xie 2023, https://arxiv.org/abs/2212.09748)
  with cross-attention to the text and adaLN-single timestep conditioning, as in PixArt-alpha
  (Chen et al. 2023, https://arxiv.org/abs/2310.00426): diffusers ``PixArtTransformer2DModel``.

Each holds its training noise schedule (DDPM, Ho et al. 2020, https://arxiv.org/abs/2006.11239)
and the prompt-dropout rate for classifier-free guidance (Ho & Salimans 2022,
https://arxiv.org/abs/2207.12598) as plain arguments. Models never sample: the pipelines own
the loop and build their schedulers from :attr:`LatentDenoiser.noise_schedule`.

Both are trained at one latent size (``sample_size``: a square's side or ``[y, x]``) and run at
others (the pipelines' ``height`` and ``width``): the UNet is convolutional, and the DiT's
sin-cos position table is rebuilt for each patch grid (diffusers ``PatchEmbed``), its
coordinates spread over the training grid's range on each axis (PixArt's interpolated
positions, https://arxiv.org/abs/2310.00426, section 2.3) whatever the grid's size. Sizes far
from the training size are supported, not good: the models learnt one.

Axes: b batch, l latent channels, y x latent height and width, n caption tokens, d backbone
width.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from multimodal.data.images import image_height_width
from multimodal.errors import ConfigError
from multimodal.modalities.image.patches import unpatchify
from multimodal.modalities.image.schedulers import ddpm
from multimodal.registry import decoders

PredictionType = Literal["epsilon", "v_prediction"]
BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]


class LatentDenoiser(nn.Module):
    """Shared part of the latent denoisers: the noise schedule and the call convention.

    Subclasses build ``self.net`` and implement :meth:`forward`.
    """

    injected_args = ("backbone",)

    # Latent sides it runs at must be multiples of this (the UNet's down-sampling, the DiT's
    # patch side); subclasses set it.
    size_multiple = 1

    def _set_schedule(self, *, in_channels: int, sample_size: int | tuple[int, int],
                      num_train_timesteps: int,
                      beta_start: float, beta_end: float, beta_schedule: str,
                      prediction_type: str, cond_dropout: float,
                      snr_gamma: float | None) -> None:
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', "
                             f"got {prediction_type!r}")
        if not 0 <= cond_dropout < 1:
            raise ValueError(f"cond_dropout must be in [0, 1), got {cond_dropout}")
        if snr_gamma is not None and not snr_gamma > 0:
            raise ValueError(f"snr_gamma must be > 0 or null, got {snr_gamma}")
        self.in_channels, self.sample_size = in_channels, sample_size
        self.sample_height, self.sample_width = image_height_width(sample_size,
                                                                   what="sample_size")
        self.num_train_timesteps = num_train_timesteps
        self.prediction_type = prediction_type
        self.cond_dropout = cond_dropout
        self.snr_gamma = snr_gamma
        self.noise_schedule: dict[str, Any] = {
            "num_train_timesteps": num_train_timesteps, "beta_start": beta_start,
            "beta_end": beta_end, "beta_schedule": beta_schedule,
            "prediction_type": prediction_type}
        self._training_scheduler = None

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(l, y, x) of the latents it is trained on (it also reads other multiples of
        :attr:`size_multiple`)."""
        return (self.in_channels, self.sample_height, self.sample_width)

    @property
    def training_scheduler(self):
        """The DDPM scheduler of the training noise schedule (``add_noise``, ``get_velocity``)."""
        if self._training_scheduler is None:
            self._training_scheduler = ddpm(**self.noise_schedule)
        return self._training_scheduler

    def check_latents(self, latents: torch.Tensor) -> None:
        """Raise a clear error when the VAE's training latents do not fit this denoiser (the
        training size: a config mismatch).

        Raises:
            ConfigError: the shapes differ (names the arguments to change).
        """
        if tuple(latents.shape[1:]) != self.latent_shape:
            raise ConfigError(
                f"the image tokenizer makes latents of shape {tuple(latents.shape[1:])} but "
                f"the denoiser reads {self.latent_shape} (l, y, x); set its in_channels / "
                "sample_size to the VAE's latent_channels / image_size // 2**(stages - 1) "
                "([y, x] for a rectangle)")

    @staticmethod
    def pooled(context: torch.Tensor, context_mask: torch.Tensor | None) -> torch.Tensor:
        """The backbone state of each prompt's last real token (b, d): the causal backbone's
        summary of the whole prompt (for the end-of-text-only empty prompt, a constant)."""
        if context_mask is None:
            return context[:, -1]
        last = context_mask.long().sum(1).clamp_min(1) - 1  # (b,)
        return context[torch.arange(context.shape[0], device=context.device), last]

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predict ``eps`` or ``v`` (see ``prediction_type``).

        Args:
            x_t: Noisy latents (b, l, y, x).
            timesteps: Training timesteps (b,) in [0, num_train_timesteps), int or float.
            context: Backbone hidden states of the prompt (b, n, d).
            context_mask: (b, n) bool, ``True`` for real tokens, ``False`` for padding.

        Returns:
            (b, l, y, x) prediction.
        """
        raise NotImplementedError


@decoders.register("latent_unet")
class LatentUNet(LatentDenoiser):
    """A small text-conditioned UNet (diffusers ``UNet2DConditionModel``) on VAE latents.

    Args:
        backbone: The shared backbone (set by the builder); cross-attention reads its width.
        in_channels: Latent channels ``l`` (default 4; must match the VAE).
        sample_size: Latent side ``y = x``, or ``[y, x]`` (default 8; must match the VAE's
            training size); each a multiple of ``2**(levels - 1)``.
        block_out_channels: Widths per resolution; every level has cross-attention
            (default (64, 128): 8x8 and 4x4).
        layers_per_block: ResNet + attention layers per level (default 1).
        num_attention_heads: Heads of every attention layer (default 4).
        norm_num_groups: GroupNorm groups (default 32).
        num_train_timesteps, beta_start, beta_end, beta_schedule: The DDPM noise schedule
            (default 1000 steps, linear 1e-4 .. 0.02).
        prediction_type: ``"epsilon"`` or ``"v_prediction"`` (default ``"epsilon"``).
        cond_dropout: Share of training captions replaced by the empty caption, for
            classifier-free guidance (default 0.1).
        snr_gamma: Min-SNR loss weighting ``min(SNR, gamma) / SNR`` (Hang et al. 2023,
            https://arxiv.org/abs/2303.09556; faster convergence), or null for the plain
            mean squared error (default null).
        pooled_conditioning: Also add the pooled prompt (the backbone state of its last token,
            projected) to the timestep embedding, as Imagen (Saharia et al. 2022,
            https://arxiv.org/abs/2205.11487) and SDXL do: a global path besides
            cross-attention (default ``False``; in 800-step trials on Fashion-MNIST it did not
            help).
    """

    def __init__(self, *, backbone: nn.Module, in_channels: int = 4,
                 sample_size: int | tuple[int, int] = 8,
                 block_out_channels: tuple[int, ...] = (64, 128), layers_per_block: int = 1,
                 num_attention_heads: int = 4, norm_num_groups: int = 32,
                 num_train_timesteps: int = 1000, beta_start: float = 1e-4,
                 beta_end: float = 0.02, beta_schedule: BetaSchedule = "linear",
                 prediction_type: PredictionType = "epsilon", cond_dropout: float = 0.1,
                 snr_gamma: float | None = None, pooled_conditioning: bool = False):
        from diffusers import UNet2DConditionModel  # deferred: diffusers takes ~1.5 s to import

        super().__init__()
        self._set_schedule(in_channels=in_channels, sample_size=sample_size,
                           num_train_timesteps=num_train_timesteps, beta_start=beta_start,
                           beta_end=beta_end, beta_schedule=beta_schedule,
                           prediction_type=prediction_type, cond_dropout=cond_dropout,
                           snr_gamma=snr_gamma)
        block_out_channels = tuple(block_out_channels)
        levels = len(block_out_channels)
        self.size_multiple = 2 ** (levels - 1)
        if self.sample_height % self.size_multiple or self.sample_width % self.size_multiple:
            raise ValueError(f"sample_size {sample_size} must divide by 2**{levels - 1} for "
                             f"{levels} levels of block_out_channels")
        if any(w % norm_num_groups for w in block_out_channels):
            raise ValueError(f"norm_num_groups ({norm_num_groups}) must divide every width of "
                             f"block_out_channels {block_out_channels}")
        self.net = UNet2DConditionModel(
            sample_size=(sample_size if isinstance(sample_size, int)
                         else (self.sample_height, self.sample_width)),
            in_channels=in_channels, out_channels=in_channels,
            down_block_types=("CrossAttnDownBlock2D",) * levels,
            up_block_types=("CrossAttnUpBlock2D",) * levels,
            block_out_channels=block_out_channels, layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups, cross_attention_dim=backbone.dim,
            # diffusers' UNet calls the number of heads "attention_head_dim" (a naming quirk
            # it keeps for Stable Diffusion configs); num_attention_heads is refused there.
            attention_head_dim=num_attention_heads,
            # The pooled prompt, projected and added to the timestep embedding (Imagen, SDXL).
            class_embed_type="projection" if pooled_conditioning else None,
            projection_class_embeddings_input_dim=backbone.dim if pooled_conditioning else None,
        )
        self.pooled_conditioning = pooled_conditioning

    def forward(self, x_t, timesteps, context, context_mask=None):
        pooled = self.pooled(context, context_mask) if self.pooled_conditioning else None
        return self.net(x_t, timesteps, encoder_hidden_states=context, class_labels=pooled,
                        encoder_attention_mask=context_mask).sample  # (b, l, y, x)


@decoders.register("latent_dit")
class LatentDiT(LatentDenoiser):
    """A Diffusion Transformer (PixArt-alpha blocks) cross-attending to the prompt, on latents.

    Each block: self-attention over latent patches, cross-attention to the prompt, MLP, all
    modulated by adaLN-single from the timestep (and pooled prompt) embedding.

    Args:
        backbone: The shared backbone (set by the builder); its width is projected to the DiT's.
        in_channels: Latent channels ``l`` (default 4; must match the VAE).
        sample_size: Latent side, or ``[y, x]`` (default 8; must match the VAE's training
            size); each a multiple of ``patch_size``.
        patch_size: Latent patch side; tokens = (y / patch_size) (x / patch_size) (default 2:
            16 at 8x8).
        num_layers: Transformer blocks (default 6).
        num_attention_heads: Heads (default 4).
        attention_head_dim: Width per head; the DiT's width is heads x this (default 32).
        num_train_timesteps, beta_start, beta_end, beta_schedule, prediction_type,
            cond_dropout, snr_gamma, pooled_conditioning: As for ``latent_unet`` (the pooled
            prompt joins adaLN's timestep embedding).
    """

    def __init__(self, *, backbone: nn.Module, in_channels: int = 4,
                 sample_size: int | tuple[int, int] = 8,
                 patch_size: int = 2, num_layers: int = 6, num_attention_heads: int = 4,
                 attention_head_dim: int = 32, num_train_timesteps: int = 1000,
                 beta_start: float = 1e-4, beta_end: float = 0.02,
                 beta_schedule: BetaSchedule = "linear",
                 prediction_type: PredictionType = "epsilon", cond_dropout: float = 0.1,
                 snr_gamma: float | None = None, pooled_conditioning: bool = False):
        from diffusers import PixArtTransformer2DModel  # deferred: diffusers takes ~1.5 s to import

        super().__init__()
        self._set_schedule(in_channels=in_channels, sample_size=sample_size,
                           num_train_timesteps=num_train_timesteps, beta_start=beta_start,
                           beta_end=beta_end, beta_schedule=beta_schedule,
                           prediction_type=prediction_type, cond_dropout=cond_dropout,
                           snr_gamma=snr_gamma)
        if self.sample_height % patch_size or self.sample_width % patch_size:
            raise ValueError(f"sample_size {sample_size} must divide by patch_size {patch_size}")
        self.size_multiple = patch_size
        width = num_attention_heads * attention_head_dim
        self.net = PixArtTransformer2DModel(
            num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim,
            in_channels=in_channels, out_channels=in_channels, num_layers=num_layers,
            cross_attention_dim=width, patch_size=patch_size,
            # PixArt's config holds one side; it sets the position table's range (base_size:
            # the longer side, in patches) and the grid it is precomputed for. Other grids,
            # a rectangle's included, get theirs rebuilt by PatchEmbed at each forward.
            sample_size=max(self.sample_height, self.sample_width),
            num_embeds_ada_norm=num_train_timesteps, caption_channels=backbone.dim,
            use_additional_conditions=False, interpolation_scale=1)
        self.patch_size = patch_size
        self.pooled_conditioning = pooled_conditioning
        if pooled_conditioning:
            self.pooled_proj = nn.Sequential(nn.Linear(backbone.dim, width), nn.SiLU(),
                                             nn.Linear(width, width))

    def forward(self, x_t, timesteps, context, context_mask=None):
        # PixArt's forward, written out so the pooled prompt can join the timestep embedding.
        net, b = self.net, x_t.shape[0]
        bias = None
        if context_mask is not None:  # (b, 1, n): 0 on real tokens, -10000 on padding
            bias = (1 - context_mask.to(x_t.dtype))[:, None] * -10000.0
        tokens = net.pos_embed(x_t)  # (b, m, w), m = (y / p) * (x / p)
        t_emb = net.adaln_single.emb(timesteps, resolution=None, aspect_ratio=None,
                                     batch_size=b, hidden_dtype=tokens.dtype)  # (b, w)
        if self.pooled_conditioning:
            t_emb = t_emb + self.pooled_proj(self.pooled(context, context_mask))
        modulation = net.adaln_single.linear(net.adaln_single.silu(t_emb))  # (b, 6 w)
        text = net.caption_projection(context)  # (b, n, w)
        for block in net.transformer_blocks:
            tokens = block(tokens, encoder_hidden_states=text, encoder_attention_mask=bias,
                           timestep=modulation)
        shift, scale = (net.scale_shift_table[None] + t_emb[:, None]).chunk(2, dim=1)
        tokens = net.norm_out(tokens) * (1 + scale) + shift
        grid = (x_t.shape[-2] // self.patch_size, x_t.shape[-1] // self.patch_size)
        return unpatchify(net.proj_out(tokens), self.patch_size, grid)  # (b, l, y, x)
