"""A spatio-temporal latent denoiser: the image DiT with factorised attention over time.

Each block of the text-to-image DiT (``latent_dit``: PixArt-alpha blocks, spatial self-attention,
cross-attention to the prompt's backbone states, MLP, adaLN-single timestep modulation) runs on
every frame; after it, a temporal self-attention layer lets every spatial token attend to the
same token in the other frames (factorised space-time attention: Ho et al. 2022, "Video
Diffusion Models", https://arxiv.org/abs/2204.03458; Bertasius et al. 2021, TimeSformer,
https://arxiv.org/abs/2102.05095). Frame order enters through rotary position embeddings on the
temporal queries and keys (Su et al. 2021, https://arxiv.org/abs/2104.09864), which depend only
on the distance between frames. Which way things move is in the prompt, so each temporal layer
is also modulated (adaLN, Peebles & Xie 2023, https://arxiv.org/abs/2212.09748) by the
timestep and the pooled prompt (the causal backbone's state at the prompt's last token), and
then cross-attends from the frame sequence to the prompt's tokens: direct paths from "moving
left" to the layers that make motion, besides the spatial layers' per-frame cross-attention.
(In a 1,500-step run with the modulation alone the pooled states of "... moving left" and
"... moving right" stayed 0.97 cosine-similar and motion followed the noise, not the prompt.)

Rotary positions alone say how far apart two frames are, not which frame is first, and that
is not enough to learn a direction: at high noise, where a sample's layout is decided, a model
that cannot tell frame 0 from frame 7 can only predict the item smeared along its whole path,
which is the same for "left" and "right", so the direction word lowers the loss by nothing.
A learnt frame embedding that starts at zero does not escape this either (it is a saddle: the
frame embedding gets a gradient to become asymmetric only once the direction word is read, and
the other way round; measured: after 500 steps its first and last frames were 0.98
cosine-similar and swapping "left" for "right" changed no denoising error). So, as in
AnimateDiff's motion modules, each temporal layer adds fixed sinusoidal absolute frame
positions to its input (the queries, keys and values of the self-attention and the queries of
the cross-attention), from the first step, inside the layer: its zero output keeps the image
model's output at initialisation.

Even so, none of these paths gives the direction word a first-order gradient: an output that
depends on the word, the frame and the place together needs products of weights that all start
at zero or at random. (Measured, v-prediction and frame positions, 1,000 steps: swapping "left"
for "right" moved the prediction 1-3% as far as swapping the item; each seed moved the same way
whatever the prompt said.) The **motion field** gives it one: the prompt (the masked mean and
the last state of its tokens, projected to a vector ``c``) multiplies fixed sinusoidal
space-time positions ``P[t, m]`` (diffusers' ``get_3d_sincos_pos_embed``, as CogVideoX uses),
and a zero-initialised projection adds ``W (c * P[t, m])`` to each frame token before the
first block: a learnt, prompt-dependent bias over where and when, whose gradient pairs the
words with the frame and the place directly.

The temporal layers' output projections start at zero, so an untrained video denoiser is the
image denoiser applied to each frame: after :meth:`LatentVideoDiT.load_image_denoiser` its
spatial layers are the image model's and a clip of one frame gives the image model's output
exactly (the Make-A-Video / AnimateDiff route: Singer et al. 2022,
https://arxiv.org/abs/2209.14792; Guo et al. 2023, https://arxiv.org/abs/2307.04725). The
parameter names of the spatial part are those of ``latent_dit``, so its weights copy over.

Axes: b batch, t frames, l latent channels, y x latent height and width, m spatial tokens per
frame ``(y / p) * (x / p)``, w DiT width, n caption tokens, d backbone width, h heads, e head
width.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from multimodal.errors import CheckpointError, ConfigError
from multimodal.modalities.image.denoiser import BetaSchedule, LatentDiT, PredictionType
from multimodal.modalities.image.patches import unpatchify
from multimodal.nn.attention import RotaryEmbedding, apply_rotary
from multimodal.registry import decoders


def zero_(*linears: nn.Linear) -> None:
    """Zero the weights and biases of ``linears`` (residual outputs that start as nothing)."""
    for linear in linears:
        nn.init.zeros_(linear.weight)
        nn.init.zeros_(linear.bias)


class TemporalAttention(nn.Module):
    """Pre-norm self-attention across frames at each spatial position, with rotary frame
    positions and a zero-initialised output projection (a residual branch that starts as the
    identity). With ``conditioned``, the norm's output is shifted and scaled per clip from a
    conditioning vector (adaLN; the modulation starts at zero, so at first it is plain). With
    ``cross_attention``, a second residual branch (zero-initialised output) lets every frame
    token attend to the prompt's tokens.

    Args:
        dim: Width ``w``.
        num_heads: Heads ``h``; ``w / h`` must be even (rotary).
        max_frames: Longest clip ``t`` (size of the rotary table).
        conditioned: Take a (b, w) conditioning vector in :meth:`forward` (default ``False``).
        cross_attention: Attend to prompt tokens (b, n, w) given to :meth:`forward`
            (default ``False``).
        frame_positions: Add fixed sinusoidal absolute frame positions (Vaswani et al. 2017,
            as in AnimateDiff) to the self-attention's input and the cross-attention's
            queries (default ``False``; not weights, so checkpoints do not change).
    """

    def __init__(self, *, dim: int, num_heads: int, max_frames: int, conditioned: bool = False,
                 cross_attention: bool = False, frame_positions: bool = False):
        super().__init__()
        if dim % num_heads or (dim // num_heads) % 2:
            raise ValueError(f"temporal attention needs a width ({dim}) that divides into "
                             f"{num_heads} heads of even width")
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj_out = nn.Linear(dim, dim)
        self.rotary = RotaryEmbedding(head_dim=dim // num_heads, max_seq_len=max_frames)
        table = None
        if frame_positions:  # (max_frames, w)
            # deferred: diffusers takes ~1.5 s to import
            from diffusers.models.embeddings import get_1d_sincos_pos_embed_from_grid

            table = get_1d_sincos_pos_embed_from_grid(dim, torch.arange(max_frames),
                                                      output_type="pt").float()
        self.register_buffer("frame_positions", table, persistent=False)
        self.modulation = None
        if conditioned:
            self.modulation = nn.Linear(dim, 2 * dim)
        self.cross_norm = self.cross_q = self.cross_kv = self.cross_out = None
        if cross_attention:
            self.cross_norm = nn.LayerNorm(dim)
            self.cross_q = nn.Linear(dim, dim)
            self.cross_kv = nn.Linear(dim, 2 * dim)
            self.cross_out = nn.Linear(dim, dim)
        self.zero_outputs_()  # starts as the identity: the image model

    def zero_outputs_(self) -> None:
        """Zero every residual branch's output (and the modulation): the layer becomes the
        identity."""
        zero_(*filter(None, (self.proj_out, self.modulation, self.cross_out)))

    def forward(self, tokens: torch.Tensor, num_frames: int,
                cond: torch.Tensor | None = None, text: torch.Tensor | None = None,
                text_bias: torch.Tensor | None = None) -> torch.Tensor:
        """((b t), m, w) tokens -> ((b t), m, w), mixing information across the t frames;
        ``cond`` (b, w) is required when the layer is ``conditioned``, ``text`` (b, n, w)
        (and optionally its additive key bias (b, 1, n), -inf-like on padding) when it has
        ``cross_attention``."""
        m = tokens.shape[1]
        x = rearrange(tokens, "(b t) m w -> (b m) t w", t=num_frames)
        h = self.norm(x)
        if self.modulation is not None:
            if cond is None:
                raise ValueError("a conditioned temporal layer needs cond (b, w)")
            shift, scale = repeat(self.modulation(F.silu(cond)), "b (two w) -> two (b m) 1 w",
                                  two=2, m=m)
            h = h * (1 + scale) + shift
        positions = 0 if self.frame_positions is None else self.frame_positions[:num_frames]
        h = h + positions
        q, k, v = rearrange(self.qkv(h), "bm t (three h e) -> three bm h t e",
                            three=3, h=self.num_heads)
        cos, sin = self.rotary(0, num_frames)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        attended = F.scaled_dot_product_attention(q, k, v)  # (b m, h, t, e)
        x = x + self.proj_out(rearrange(attended, "bm h t e -> bm t (h e)"))
        if self.cross_q is not None:
            if text is None:
                raise ValueError("a temporal layer with cross_attention needs text (b, n, w)")
            q = rearrange(self.cross_q(self.cross_norm(x) + positions), "bm t (h e) -> bm h t e",
                          h=self.num_heads)
            k, v = rearrange(self.cross_kv(text), "b n (two h e) -> two b h n e", two=2,
                             h=self.num_heads)
            k, v = (repeat(z, "b h n e -> (b m) h n e", m=m) for z in (k, v))
            bias = None if text_bias is None else repeat(text_bias, "b 1 n -> (b m) 1 1 n", m=m)
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            x = x + self.cross_out(rearrange(attended, "bm h t e -> bm t (h e)"))
        return rearrange(x, "(b m) t w -> (b t) m w", m=m)


@decoders.register("latent_video_dit")
class LatentVideoDiT(LatentDiT):
    """The image DiT (``latent_dit``) on latent videos, a temporal attention after each block.

    Args:
        backbone: The shared backbone (set by the builder).
        in_channels: Latent channels ``l`` (default 4; must match the VAE).
        sample_size: Latent side of one frame (default 12: 48x48 frames, 4x VAE).
        num_frames: Frames per clip in training and, by default, in generation (default 16).
        max_frames: Longest clip the model accepts (default 16; at least ``num_frames``).
        patch_size, num_layers, num_attention_heads, attention_head_dim: As for ``latent_dit``
            (defaults 2, 6, 4, 32); keep them equal to an image DiT's to initialise from it.
        num_train_timesteps, beta_start, beta_end, beta_schedule, prediction_type,
            cond_dropout, snr_gamma, pooled_conditioning: As for ``latent_dit``.
        temporal_conditioning: Modulate the temporal layers by the timestep and the pooled
            prompt (adaLN; default ``True``).
        temporal_cross_attention: Let the temporal layers attend to the prompt's tokens
            (default ``True``). Without both, the direction words reach the temporal layers
            only through the spatial layers' cross-attention.
        frame_positions: Give the temporal layers absolute sinusoidal frame positions
            (default ``True``). Without them the model knows only the distance between frames
            and does not learn the prompt's direction (see the module docstring).
        motion_field: Add the prompt-modulated space-time position bias to the input tokens
            (zero at first; default ``True``; see the module docstring).

    Raises:
        ValueError: ``max_frames`` below ``num_frames``, ``num_frames`` below 1, or sizes the
            patches or heads do not divide.
    """

    def __init__(self, *, backbone: nn.Module, in_channels: int = 4, sample_size: int = 12,
                 num_frames: int = 16, max_frames: int = 16, patch_size: int = 2,
                 num_layers: int = 6, num_attention_heads: int = 4, attention_head_dim: int = 32,
                 num_train_timesteps: int = 1000, beta_start: float = 1e-4,
                 beta_end: float = 0.02, beta_schedule: BetaSchedule = "linear",
                 prediction_type: PredictionType = "epsilon", cond_dropout: float = 0.1,
                 snr_gamma: float | None = None, pooled_conditioning: bool = False,
                 temporal_conditioning: bool = True, temporal_cross_attention: bool = True,
                 frame_positions: bool = True, motion_field: bool = True):
        if num_frames < 1 or max_frames < num_frames:
            raise ValueError(f"need 1 <= num_frames <= max_frames, got num_frames {num_frames}, "
                             f"max_frames {max_frames}")
        super().__init__(backbone=backbone, in_channels=in_channels, sample_size=sample_size,
                         patch_size=patch_size, num_layers=num_layers,
                         num_attention_heads=num_attention_heads,
                         attention_head_dim=attention_head_dim,
                         num_train_timesteps=num_train_timesteps, beta_start=beta_start,
                         beta_end=beta_end, beta_schedule=beta_schedule,
                         prediction_type=prediction_type, cond_dropout=cond_dropout,
                         snr_gamma=snr_gamma, pooled_conditioning=pooled_conditioning)
        self.num_frames, self.max_frames = num_frames, max_frames
        width = num_attention_heads * attention_head_dim
        self.temporal = nn.ModuleList(
            TemporalAttention(dim=width, num_heads=num_attention_heads, max_frames=max_frames,
                              conditioned=temporal_conditioning,
                              cross_attention=temporal_cross_attention,
                              frame_positions=frame_positions)
            for _ in range(num_layers))
        self.temporal_conditioning = temporal_conditioning
        self.motion_field = None
        if motion_field:  # the prompt times fixed space-time positions, zero at first
            # deferred: diffusers takes ~1.5 s to import
            from diffusers.models.embeddings import get_3d_sincos_pos_embed

            grid = sample_size // patch_size
            table = get_3d_sincos_pos_embed(width, grid, max_frames, output_type="pt")
            self.register_buffer("space_time", table.float(), persistent=False)  # (t, m, w)
            self.motion_field = nn.ModuleDict({
                "prompt": nn.Linear(2 * backbone.dim, width),
                "out": nn.Linear(width, width)})
            zero_(self.motion_field["out"])
        if temporal_conditioning:  # the pooled prompt, projected: what motion the clip wants
            self.motion_embed = nn.Sequential(nn.Linear(backbone.dim, width), nn.SiLU(),
                                              nn.Linear(width, width))

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """(l, y, x) of one frame's latents."""
        return (self.in_channels, self.sample_size, self.sample_size)

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """(t, l, y, x) of a default-length clip's latents."""
        return (self.num_frames, *self.frame_shape)

    def check_latents(self, latents: torch.Tensor) -> None:
        """Raise a clear error when latent videos (b, t, l, y, x) do not fit this denoiser.

        Raises:
            ConfigError: wrong frame shape or more than ``max_frames`` frames.
        """
        if latents.dim() != 5 or tuple(latents.shape[2:]) != self.frame_shape:
            raise ConfigError(
                f"the video tokenizer makes latents of shape {tuple(latents.shape[1:])} "
                f"(t, l, y, x) but the video denoiser reads frames of {self.frame_shape}; set "
                "its in_channels / sample_size to the VAE's latent_channels / "
                "image_size // 2**(stages - 1)")
        if latents.shape[1] > self.max_frames:
            raise ConfigError(f"clips of {latents.shape[1]} frames are longer than the video "
                              f"denoiser's max_frames = {self.max_frames}")

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predict ``eps`` or ``v`` for every frame.

        Args:
            x_t: Noisy latent videos (b, t, l, y, x), t <= ``max_frames``.
            timesteps: (b,) training timesteps, one per clip.
            context: Backbone hidden states of the prompt (b, n, d).
            context_mask: (b, n) bool, ``True`` for real tokens.

        Returns:
            (b, t, l, y, x) prediction.
        """
        net, (b, t) = self.net, x_t.shape[:2]
        if t > self.max_frames:
            raise ValueError(f"{t} frames is more than max_frames = {self.max_frames}")
        frames = rearrange(x_t, "b t l y x -> (b t) l y x")
        tokens = net.pos_embed(frames)  # ((b t), m, w)
        if self.motion_field is not None:
            tokens = tokens + rearrange(self.field(context, context_mask, t),
                                        "b t m w -> (b t) m w")
        t_emb = net.adaln_single.emb(timesteps, resolution=None, aspect_ratio=None,
                                     batch_size=b, hidden_dtype=tokens.dtype)  # (b, w)
        motion = None
        if self.temporal_conditioning:
            motion = t_emb + self.motion_embed(self.pooled(context, context_mask))  # (b, w)
        if self.pooled_conditioning:
            t_emb = t_emb + self.pooled_proj(self.pooled(context, context_mask))
        modulation = net.adaln_single.linear(net.adaln_single.silu(t_emb))  # (b, 6 w)
        clip_text = net.caption_projection(context)  # (b, n, w)
        clip_bias = None
        if context_mask is not None:  # (b, 1, n): 0 on real tokens, -10000 on padding
            clip_bias = ((1 - context_mask.to(tokens.dtype)) * -10000.0)[:, None]
        # Every frame of a clip sees its clip's timestep and prompt.
        t_emb = repeat(t_emb, "b w -> (b t) w", t=t)
        modulation = repeat(modulation, "b w -> (b t) w", t=t)
        text = repeat(clip_text, "b n w -> (b t) n w", t=t)
        bias = None if clip_bias is None else repeat(clip_bias, "b 1 n -> (b t) 1 n", t=t)
        for block, temporal in zip(net.transformer_blocks, self.temporal):
            tokens = block(tokens, encoder_hidden_states=text, encoder_attention_mask=bias,
                           timestep=modulation)
            tokens = temporal(tokens, t, motion, clip_text, clip_bias)
        shift, scale = (net.scale_shift_table[None] + t_emb[:, None]).chunk(2, dim=1)
        tokens = net.norm_out(tokens) * (1 + scale) + shift
        grid = (x_t.shape[-2] // self.patch_size, x_t.shape[-1] // self.patch_size)
        out = unpatchify(net.proj_out(tokens), self.patch_size, grid)  # ((b t), l, y, x)
        return rearrange(out, "(b t) l y x -> b t l y x", b=b)

    def field(self, context: torch.Tensor, context_mask: torch.Tensor | None,
              num_frames: int) -> torch.Tensor:
        """The motion field (b, t, m, w): ``W (c * P[t, m])`` with ``c`` the projected
        masked mean and last state of the prompt (see the module docstring)."""
        if context_mask is None:
            mean = context.mean(1)
        else:
            weights = context_mask.to(context.dtype)[..., None]  # (b, n, 1)
            mean = (context * weights).sum(1) / weights.sum(1).clamp_min(1)
        prompt = self.motion_field["prompt"](
            torch.cat([mean, self.pooled(context, context_mask)], dim=-1))  # (b, w)
        positions = self.space_time[:num_frames].to(prompt.dtype)  # (t, m, w)
        return self.motion_field["out"](prompt[:, None, None] * positions[None])

    # -- initialising from an image denoiser ------------------------------------------------
    def spatial_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights shared with ``latent_dit`` (everything but the temporal layers and
        their conditioning)."""
        return {k: v for k, v in self.state_dict().items()
                if not k.startswith(("temporal.", "motion_embed.", "motion_field."))}

    @torch.no_grad()
    def load_image_denoiser(self, image_denoiser: LatentDiT | dict[str, torch.Tensor], *,
                            zero_temporal: bool = True) -> "LatentVideoDiT":
        """Copy a ``latent_dit``'s weights into the spatial layers (Make-A-Video, AnimateDiff).

        Args:
            image_denoiser: A :class:`LatentDiT` or its state dict, of the same sizes.
            zero_temporal: Also reset the temporal output projections, their modulations and
                the motion field's output to zero, so the model equals the image model frame
                by frame (default ``True``).

        Returns:
            ``self``.

        Raises:
            CheckpointError: the image denoiser's weights do not fit (names them).
        """
        state = image_denoiser.state_dict() if isinstance(image_denoiser, nn.Module) \
            else image_denoiser
        own = self.spatial_state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        mismatched = [f"{k}: image {tuple(state[k].shape)} vs video {tuple(own[k].shape)}"
                      for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
        if missing or unexpected or mismatched:
            raise CheckpointError(
                "the image denoiser does not fit the video denoiser's spatial layers (give "
                "the video denoiser the image DiT's patch_size, num_layers, "
                "num_attention_heads, attention_head_dim and pooled_conditioning): "
                + "; ".join(filter(None, [
                    f"missing {', '.join(missing[:5])}" if missing else "",
                    f"unexpected {', '.join(unexpected[:5])}" if unexpected else "",
                    f"shape mismatch {'; '.join(mismatched[:5])}" if mismatched else ""])))
        for key, value in own.items():
            value.copy_(state[key].to(value.dtype))
        if zero_temporal:
            for layer in self.temporal:
                layer.zero_outputs_()
            if self.motion_field is not None:
                zero_(self.motion_field["out"])
        return self

    @classmethod
    def from_image_denoiser(cls, image_denoiser: LatentDiT, *, backbone: nn.Module,
                            sample_size: int | None = None, num_frames: int = 16,
                            max_frames: int | None = None) -> "LatentVideoDiT":
        """A video denoiser with ``image_denoiser``'s sizes, schedule and weights, and zeroed
        temporal layers.

        Args:
            image_denoiser: A trained :class:`LatentDiT`.
            backbone: The shared backbone it reads prompts from.
            sample_size: Latent side of a frame (default: the image denoiser's).
            num_frames, max_frames: As in the constructor (``max_frames`` defaults to
                ``num_frames``).
        """
        net = image_denoiser.net.config
        schedule = image_denoiser.noise_schedule
        video = cls(backbone=backbone, in_channels=image_denoiser.in_channels,
                    sample_size=sample_size or image_denoiser.sample_size,
                    num_frames=num_frames, max_frames=max_frames or num_frames,
                    patch_size=image_denoiser.patch_size, num_layers=net.num_layers,
                    num_attention_heads=net.num_attention_heads,
                    attention_head_dim=net.attention_head_dim,
                    num_train_timesteps=schedule["num_train_timesteps"],
                    beta_start=schedule["beta_start"], beta_end=schedule["beta_end"],
                    beta_schedule=schedule["beta_schedule"],
                    prediction_type=schedule["prediction_type"],
                    cond_dropout=image_denoiser.cond_dropout,
                    snr_gamma=image_denoiser.snr_gamma,
                    pooled_conditioning=image_denoiser.pooled_conditioning)
        return video.load_image_denoiser(image_denoiser)

    def init_weights_from(self, weights: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Weights for this decoder built from another checkpoint's (``init_from``): the
        spatial layers from the first image DiT found (``decoders.<name>.net.*``), the temporal
        layers as they are (zero output projections).

        Raises:
            CheckpointError: the checkpoint holds no image DiT.
        """
        prefixes = sorted({k.split(".net.")[0] + "." for k in weights
                           if k.startswith("decoders.") and ".net.transformer_blocks." in k})
        if not prefixes:
            raise CheckpointError("init_from: the checkpoint has no DiT denoiser to initialise "
                                  "the video denoiser's spatial layers from (train a "
                                  "text-to-image model with a latent_dit image denoiser)")
        image_state = {k[len(prefixes[0]):]: v for k, v in weights.items()
                       if k.startswith(prefixes[0])}
        return dict(self.load_image_denoiser(image_state).state_dict())
