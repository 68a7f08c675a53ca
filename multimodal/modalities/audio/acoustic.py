"""The acoustic decoder: phoneme states of the shared backbone -> mel frames.

Non-autoregressive, FastSpeech 2 style (Ren et al. 2020, https://arxiv.org/abs/2006.04558)
with the alignment learned as in Glow-TTS / Grad-TTS (Kim et al. 2020,
https://arxiv.org/abs/2005.11129; Popov et al. 2021, https://arxiv.org/abs/2105.06337):

1. Phoneme ids are embedded and read by the shared backbone (modality id ``audio``); the
   backbone is causal, so two non-causal convolution blocks let each phoneme see its
   neighbours on both sides. A voice embedding is added.
2. Each phoneme predicts a mean mel frame ``mu`` (80 bins). In training, monotonic alignment
   search (MAS, Glow-TTS section 3.2) finds the most likely monotonic, surjective alignment of
   the real mel frames to the phonemes under ``N(mu_i, I)``; it gives each phoneme a duration
   (frames), and the "prior" loss pulls ``mu`` toward its aligned frames.
3. A duration predictor (two convolutions, FastSpeech 2) regresses ``log(1 + duration)`` from
   the (detached) phoneme states.
4. The length regulator repeats each phoneme's state and ``mu`` for its duration; a stack of
   dilated residual convolutions over frames (with the position inside the phoneme as input)
   predicts the mel as a residual on ``mu``; trained with an L1 loss.

At inference the predicted durations (times ``length_scale``) replace the alignment.

Axes: b batch, n phonemes, d backbone width, f frames, m mel bins, c decoder channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from multimodal.errors import ConfigError
from multimodal.registry import decoders

NEG_INF = -1e9
AUDIO_MODALITY_ID = 2  # multimodal.backbone.transformer.MODALITY_IDS["audio"]


@torch.no_grad()
def monotonic_alignment_search(log_p: torch.Tensor, text_lengths: torch.Tensor,
                               mel_lengths: torch.Tensor) -> torch.Tensor:
    """Most likely monotonic alignment of frames to phonemes (Glow-TTS, algorithm 1).

    Every frame goes to one phoneme, phonemes in order, each phoneme at least one frame.

    Args:
        log_p: (b, n, f) log-likelihood of frame j under phoneme i.
        text_lengths: (b,) phonemes per item (``<= n``).
        mel_lengths: (b,) frames per item (``<= f`` and ``>= text_lengths``).

    Returns:
        (b, n) int64 durations in frames, summing to ``mel_lengths``; 0 on padding.
    """
    b, n, f = log_p.shape
    log_p = log_p.float().masked_fill(
        torch.arange(n, device=log_p.device)[None, :, None] >= text_lengths[:, None, None],
        NEG_INF)
    q = torch.full((b, n, f), NEG_INF, device=log_p.device)
    q[:, 0, 0] = log_p[:, 0, 0]
    pad = torch.full((b, 1), NEG_INF, device=log_p.device)
    for j in range(1, f):
        prev = q[:, :, j - 1]
        q[:, :, j] = log_p[:, :, j] + torch.maximum(prev, torch.cat([pad, prev[:, :-1]], 1))
    rows = torch.arange(b, device=log_p.device)
    durations = torch.zeros((b, n), dtype=torch.long, device=log_p.device)
    index = (text_lengths - 1).clone()
    for j in range(f - 1, -1, -1):
        active = j < mel_lengths
        durations[rows[active], index[active]] += 1
        if j == 0:
            break
        stay = q[rows, index, j - 1]
        move = q[rows, (index - 1).clamp(min=0), j - 1]
        index = torch.where(active & (index > 0) & (move >= stay), index - 1, index)
    return durations


def expand(states: torch.Tensor, durations: torch.Tensor, num_frames: int | None = None
           ) -> torch.Tensor:
    """The length regulator: repeat phoneme ``i``'s vector ``durations[i]`` times.

    Args:
        states: (b, n, d).
        durations: (b, n) int64 frames per phoneme.
        num_frames: Output length (default: the longest item), zero-padded.

    Returns:
        (b, f, d).
    """
    total = durations.sum(1)
    f = int(total.max()) if num_frames is None else num_frames
    ends = durations.cumsum(1)  # (b, n)
    frames = torch.arange(f, device=states.device)
    # phoneme index of each frame: the number of phoneme ends at or before it
    index = (frames[None, :, None] >= ends[:, None, :]).sum(-1).clamp(max=states.shape[1] - 1)
    out = states.gather(1, index[..., None].expand(-1, -1, states.shape[-1]))
    return out * (frames[None, :] < total[:, None])[..., None]


def position_features(durations: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(b, f, 2): each frame's relative position inside its phoneme (0..1) and the phoneme's
    ``log(1 + duration)``."""
    starts = durations.cumsum(1) - durations
    d = durations.float()[..., None]
    per_phoneme = torch.cat([starts.float()[..., None], d], -1)  # (b, n, 2)
    expanded = expand(per_phoneme, durations, num_frames)  # (b, f, 2): start, duration
    frames = torch.arange(num_frames, device=durations.device).float()
    rel = (frames[None] - expanded[..., 0]) / expanded[..., 1].clamp(min=1)
    return torch.stack([rel, torch.log1p(expanded[..., 1])], -1)


class ConvBlock(nn.Module):
    """Pre-norm residual block: LayerNorm -> Conv1d(k, dilation) -> GELU -> Conv1d(1)."""

    def __init__(self, channels: int, kernel_size: int, dilation: int = 1, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.conv = nn.Conv1d(channels, channels, kernel_size, dilation=dilation,
                              padding=dilation * (kernel_size - 1) // 2)
        self.proj = nn.Conv1d(channels, channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (b, l, c), mask (b, l) bool -> (b, l, c)."""
        h = self.norm(x).masked_fill(~mask[..., None], 0).transpose(1, 2)
        h = self.proj(F.gelu(self.conv(h))).transpose(1, 2)
        return (x + self.dropout(h)).masked_fill(~mask[..., None], 0)


@decoders.register("mel_decoder")
class MelDecoder(nn.Module):
    """Phoneme ids + voice -> normalised log-mel frames through the shared backbone
    (see the module docstring).

    Args:
        backbone: The shared Transformer (injected).
        tokenizers: The configured tokenizers (injected): ``phonemes`` (an
            ``espeak_phonemes``: symbol table and voices) and ``audio`` (a ``log_mel``: the
            number of mel bins).
        encoder_layers: Non-causal conv blocks after the backbone (default 2).
        decoder_channels: Width ``c`` of the frame decoder (default 256).
        decoder_layers: Residual conv blocks of the frame decoder (default 6; dilations cycle
            1, 2, 4).
        kernel_size: Convolution width, odd (default 5).
        duration_channels: Width of the duration predictor (default 256).
        dropout: Dropout in the conv blocks (default 0.1).
        prior_weight, duration_weight: Weights of the prior and duration losses against the
            mel L1 loss (defaults 1.0 and 1.0).

    Raises:
        ConfigError: the ``phonemes`` or ``audio`` tokenizer is missing, or ``kernel_size`` is
            even.
    """

    injected_args = ("backbone", "tokenizers")

    def __init__(self, *, backbone: nn.Module, tokenizers: dict, encoder_layers: int = 2,
                 decoder_channels: int = 256, decoder_layers: int = 6, kernel_size: int = 5,
                 duration_channels: int = 256, dropout: float = 0.1, prior_weight: float = 1.0,
                 duration_weight: float = 1.0):
        super().__init__()
        missing = [k for k in ("phonemes", "audio") if k not in (tokenizers or {})]
        if missing:
            raise ConfigError([f"the mel decoder needs tokenizers[{k!r}] "
                               f"({'espeak_phonemes' if k == 'phonemes' else 'log_mel'})"
                               for k in missing])
        if kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be odd, got {kernel_size}")
        phonemes, audio = tokenizers["phonemes"], tokenizers["audio"]
        d = backbone.dim
        self.n_mels = audio.n_mels
        self.voices = list(phonemes.voices)
        self.prior_weight, self.duration_weight = prior_weight, duration_weight
        self.phoneme_embedding = nn.Embedding(phonemes.vocab_size, d)
        nn.init.normal_(self.phoneme_embedding.weight, std=0.02)
        self.voice_embedding = nn.Embedding(len(self.voices), d)
        nn.init.normal_(self.voice_embedding.weight, std=0.02)
        self.encoder = nn.ModuleList(ConvBlock(d, kernel_size, 1, dropout)
                                     for _ in range(encoder_layers))
        self.encoder_norm = nn.LayerNorm(d)
        self.to_mu = nn.Linear(d, self.n_mels)
        self.duration = nn.ModuleList([nn.Conv1d(d, duration_channels, 3, padding=1),
                                       nn.Conv1d(duration_channels, duration_channels, 3,
                                                 padding=1)])
        self.duration_norms = nn.ModuleList([nn.LayerNorm(duration_channels)
                                             for _ in range(2)])
        self.duration_out = nn.Linear(duration_channels, 1)
        self.frame_in = nn.Linear(d + self.n_mels + 2, decoder_channels)
        self.frame_voice = nn.Embedding(len(self.voices), decoder_channels)
        nn.init.zeros_(self.frame_voice.weight)
        self.decoder = nn.ModuleList(ConvBlock(decoder_channels, kernel_size, 2 ** (i % 3),
                                               dropout) for i in range(decoder_layers))
        self.decoder_norm = nn.LayerNorm(decoder_channels)
        self.frame_out = nn.Linear(decoder_channels, self.n_mels)
        nn.init.zeros_(self.frame_out.weight)
        nn.init.zeros_(self.frame_out.bias)

    # -- pieces ----------------------------------------------------------------------------
    def encode(self, backbone: nn.Module, phoneme_ids: torch.Tensor,
               phoneme_mask: torch.Tensor, voice_ids: torch.Tensor) -> torch.Tensor:
        """Phoneme states (b, n, d): backbone, voice, non-causal conv blocks."""
        x = backbone(inputs_embeds=self.phoneme_embedding(phoneme_ids),
                     modality_ids=AUDIO_MODALITY_ID)
        x = (x + self.voice_embedding(voice_ids)[:, None]).masked_fill(~phoneme_mask[..., None], 0)
        for block in self.encoder:
            x = block(x, phoneme_mask)
        return self.encoder_norm(x)

    def log_durations(self, states: torch.Tensor, phoneme_mask: torch.Tensor) -> torch.Tensor:
        """Predicted ``log(1 + frames)`` per phoneme (b, n)."""
        h = states
        for conv, norm in zip(self.duration, self.duration_norms):
            h = h.masked_fill(~phoneme_mask[..., None], 0)
            h = norm(F.gelu(conv(h.transpose(1, 2)).transpose(1, 2)))
        return self.duration_out(h)[..., 0].masked_fill(~phoneme_mask, 0)

    def decode_frames(self, states: torch.Tensor, mu: torch.Tensor, durations: torch.Tensor,
                      voice_ids: torch.Tensor, num_frames: int | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Length-regulate and decode.

        Returns:
            ``(mel (b, m, f), mu_frames (b, m, f), frame_mask (b, f))``.
        """
        f = int(durations.sum(1).max()) if num_frames is None else num_frames
        frame_mask = torch.arange(f, device=states.device)[None] < durations.sum(1)[:, None]
        h_frames = expand(states, durations, f)
        mu_frames = expand(mu, durations, f)
        positions = position_features(durations, f).to(h_frames.dtype)  # float32 -> bf16/fp16
        x = self.frame_in(torch.cat([h_frames, mu_frames, positions], -1))
        x = (x + self.frame_voice(voice_ids)[:, None]).masked_fill(~frame_mask[..., None], 0)
        for block in self.decoder:
            x = block(x, frame_mask)
        mel = mu_frames + self.frame_out(self.decoder_norm(x))
        mel = mel.masked_fill(~frame_mask[..., None], 0)
        return mel.transpose(1, 2), mu_frames.transpose(1, 2), frame_mask

    # -- training and inference ---------------------------------------------------------------
    def loss(self, backbone: nn.Module, phoneme_ids: torch.Tensor, phoneme_mask: torch.Tensor,
             voice_ids: torch.Tensor, mel: torch.Tensor, mel_lengths: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss: ``L1(mel) + prior_weight * prior + duration_weight * duration``.

        Args:
            backbone: The shared Transformer.
            phoneme_ids, phoneme_mask: (b, n).
            voice_ids: (b,) indices into ``voices``.
            mel: (b, m, f) normalised log-mel, zero-padded.
            mel_lengths: (b,) frames per item (each >= its phoneme count).

        Returns:
            ``(loss, {"mel_l1", "prior", "duration"})``.
        """
        states = self.encode(backbone, phoneme_ids, phoneme_mask, voice_ids)
        mu = self.to_mu(states)  # (b, n, m)
        target = mel.transpose(1, 2).float()  # (b, f, m)
        with torch.no_grad():
            mu_f = mu.float()
            log_p = (-0.5 * target.square().sum(-1)[:, None, :]
                     + mu_f @ target.transpose(1, 2)
                     - 0.5 * mu_f.square().sum(-1)[..., None])  # (b, n, f)
            durations = monotonic_alignment_search(log_p, phoneme_mask.sum(1), mel_lengths)
        f = mel.shape[-1]
        prediction, mu_frames, frame_mask = self.decode_frames(states, mu, durations, voice_ids, f)
        valid = frame_mask[:, None, :].float()  # (b, 1, f)
        count = valid.sum() * self.n_mels
        mel_l1 = ((prediction.float() - mel.float()).abs() * valid).sum() / count
        prior = 0.5 * ((mu_frames.float() - mel.float()).square() * valid).sum() / count
        log_d = self.log_durations(states.detach(), phoneme_mask)
        target_d = torch.log1p(durations.float())
        duration = ((log_d.float() - target_d).square() * phoneme_mask).sum() / phoneme_mask.sum()
        loss = mel_l1 + self.prior_weight * prior + self.duration_weight * duration
        return loss, {"mel_l1": mel_l1.item(), "prior": prior.item(),
                      "duration": duration.item()}

    @torch.no_grad()
    def generate(self, backbone: nn.Module, phoneme_ids: torch.Tensor, voice_ids: torch.Tensor, *,
                 phoneme_mask: torch.Tensor | None = None, length_scale: float = 1.0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mel frames for phoneme sequences.

        Args:
            backbone: The shared Transformer.
            phoneme_ids: (b, n) int64 (start and end symbols included).
            voice_ids: (b,) indices into ``voices``.
            phoneme_mask: (b, n) bool (default: all real).
            length_scale: Multiplies every predicted duration (> 1 speaks slower).

        Returns:
            ``(mel (b, m, f) normalised log-mel, frames (b,) int64 per item)``.
        """
        if phoneme_mask is None:
            phoneme_mask = torch.ones_like(phoneme_ids, dtype=torch.bool)
        states = self.encode(backbone, phoneme_ids, phoneme_mask, voice_ids)
        mu = self.to_mu(states)
        log_d = self.log_durations(states, phoneme_mask)
        durations = torch.clamp(torch.round(torch.expm1(log_d.float()) * length_scale), min=1)
        durations = (durations.long() * phoneme_mask).long()
        mel, _, _ = self.decode_frames(states, mu, durations, voice_ids)
        return mel, durations.sum(1)
