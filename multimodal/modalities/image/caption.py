"""Image-to-text: the shared backbone reads an image's VAE latent patches, the tied LM head writes
its caption (a prefix captioner: the image tokens come first, then the caption's, causally;
the "prefix LM" recipe of SimVLM, Wang et al. 2022, https://arxiv.org/abs/2108.10904, on
ViT-style latent patches, Dosovitskiy et al. 2021).

The decoder ``latent_captioner`` owns the patch embedding and, with ``encoder_layers > 0``, a
small bidirectional ViT encoder over the patches (Dosovitskiy et al. 2021): the backbone and its
token embedding (as the output projection) are the ones every other modality uses, so
captioning trains the same network that conditions the image, video and speech decoders. When
that backbone is frozen (a joint model whose other decoders read it), the encoder is what learns
to see, and the backbone reads its output as a soft prefix: the recipe of LLaVA's first stage
(Liu et al. 2023, https://arxiv.org/abs/2304.08485), with the vision tower trained. The modality
``caption`` reads any image dataset (image + caption) and its loss is the next-token
cross-entropy of the caption, end-of-text included, given the image.

Axes: b batch, l latent channels, y x latent sides, m image tokens, n caption tokens, d
backbone width, v vocabulary.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from multimodal.backbone.transformer import MODALITY_IDS
from multimodal.errors import ConfigError
from multimodal.modalities.image.modality import ImageModality, LatentCaptions
from multimodal.modalities.image.patches import LatentPatchEmbed
from multimodal.registry import decoders, modalities

IGNORE = -100


@decoders.register("latent_captioner")
class LatentCaptioner(nn.Module):
    """Latent patches -> backbone prefix; backbone states -> caption logits (tied head).

    Args:
        backbone: The shared backbone (set by the builder).
        latent_channels: ``l`` of the image VAE (default 4).
        sample_size: Latent side (default 8: 32x32 images, 4x VAE).
        patch_size: Patch side (default 2: 16 image tokens).
        encoder_layers: Pre-norm Transformer encoder layers (``torch.nn.TransformerEncoder``,
            bidirectional over the image tokens, width ``d``) between the patch embedding and
            the backbone (default 0: the patches go straight in).
        encoder_heads: Attention heads of those layers and of the decoder's (default 4; must
            divide ``d``).
        decoder_layers: Causal pre-norm Transformer layers of the captioner's own after the
            backbone, over its image and caption states, before the tied head (default 0).
            With a frozen backbone they are what learns the caption's language; the
            backbone's key-value cache then serves no more, and captions re-run the prefix
            per token (short captions: cheap).
    """

    injected_args = ("backbone",)

    def __init__(self, *, backbone: nn.Module, latent_channels: int = 4, sample_size: int = 8,
                 patch_size: int = 2, encoder_layers: int = 0, encoder_heads: int = 4,
                 decoder_layers: int = 0):
        super().__init__()
        if min(encoder_layers, decoder_layers) < 0 or encoder_heads < 1 \
                or backbone.dim % encoder_heads:
            raise ConfigError(f"latent_captioner: encoder_layers and decoder_layers must be "
                              f">= 0 (got {encoder_layers}, {decoder_layers}) and "
                              f"encoder_heads >= 1 must divide the backbone width "
                              f"{backbone.dim} (got {encoder_heads})")
        self.patch_embed = LatentPatchEmbed(dim=backbone.dim, latent_channels=latent_channels,
                                            sample_size=sample_size, patch_size=patch_size)
        def layers(count: int) -> nn.TransformerEncoder:
            # built only when asked for: a captioner without them draws no random numbers
            # for them, so its initialisation (and the model's after it) is unchanged
            layer = nn.TransformerEncoderLayer(backbone.dim, encoder_heads,
                                               dim_feedforward=4 * backbone.dim, dropout=0.0,
                                               activation="gelu", batch_first=True,
                                               norm_first=True)
            return nn.TransformerEncoder(layer, count, enable_nested_tensor=False)

        self.encoder = self.decoder = None
        if encoder_layers:
            self.encoder = nn.Sequential(layers(encoder_layers), nn.LayerNorm(backbone.dim))
        if decoder_layers:  # residual refinements of the backbone's states (no final norm)
            self.decoder = layers(decoder_layers)
        self._backbone = [backbone]  # not registered twice: it is saved under the model
        self.latent_shape = (latent_channels, sample_size, sample_size)

    @property
    def num_image_tokens(self) -> int:
        return self.patch_embed.num_tokens

    def check_latents(self, latents: torch.Tensor) -> None:
        if tuple(latents.shape[1:]) != self.latent_shape:
            raise ConfigError(f"the image tokenizer makes latents {tuple(latents.shape[1:])} but "
                              f"the captioner reads {self.latent_shape}; set its "
                              "latent_channels / sample_size to the VAE's")

    def image_tokens(self, latents: torch.Tensor) -> torch.Tensor:
        """(b, l, y, x) scaled VAE latents -> (b, m, d) the backbone's image prefix."""
        image = self.patch_embed(latents)
        return image if self.encoder is None else self.encoder(image)

    def forward(self, latents: torch.Tensor, ids: torch.Tensor,
                kv_cache: Any = None) -> torch.Tensor:
        """Logits of the token after each caption position.

        Args:
            latents: (b, l, y, x) scaled VAE latents.
            ids: (b, n) caption ids so far (end-of-text first).

        Returns:
            (b, n, v) logits: row i predicts caption token i + 1.
        """
        backbone = self._backbone[0]
        image = self.image_tokens(latents)  # (b, m, d)
        text = backbone.tok_embeddings(ids)  # (b, n, d)
        m = image.shape[1]
        modality = torch.cat([torch.full((m,), MODALITY_IDS["image"]),
                              torch.full((ids.shape[1],), MODALITY_IDS["text"])]).to(ids.device)
        hidden = backbone(inputs_embeds=torch.cat([image, text], dim=1),
                          modality_ids=modality[None].expand(ids.shape[0], -1))
        if self.decoder is not None:
            causal = nn.Transformer.generate_square_subsequent_mask(
                hidden.shape[1], device=hidden.device, dtype=hidden.dtype)
            hidden = self.decoder(hidden, mask=causal, is_causal=True)
        return F.linear(hidden[:, m:], backbone.tok_embeddings.weight)


@modalities.register("caption")
class CaptionModality(ImageModality):
    """Captioning on the shared backbone: next-token cross-entropy of each image's caption.

    Data and preparation are the image modality's (``data.caption`` names any image dataset;
    images are encoded once with ``tokenizers.image``); each caption ends with end-of-text so
    the model learns where to stop.
    """

    name = "caption"

    def prepare(self, dataset: Any, tokenizers: dict, *, seq_len: int) -> LatentCaptions:
        prepared = super().prepare(dataset, tokenizers, seq_len=seq_len - 1)
        eos, pad = tokenizers["text"].eos_id, tokenizers["text"].pad_id
        lengths = prepared.caption_mask.sum(1)  # (k,)
        ids = torch.cat([prepared.caption_ids,
                         torch.full((len(prepared), 1), pad, dtype=torch.long)], dim=1)
        ids[torch.arange(len(prepared)), lengths] = eos  # end of caption
        prepared.caption_ids = ids
        prepared.caption_mask = torch.arange(ids.shape[1])[None] <= lengths[:, None]
        return prepared

    def sample(self, prepared: LatentCaptions, *, batch_size: int,
               generator: torch.Generator) -> dict:
        """``{"latents" (b, l, y, x), "caption_ids" (b, n), "caption_mask" (b, n)}``."""
        index = torch.randint(0, len(prepared), (batch_size,), generator=generator)
        return self._batch(prepared, index)

    @staticmethod
    def _batch(prepared: LatentCaptions, index: torch.Tensor) -> dict:
        mask = prepared.caption_mask[index]
        length = int(mask.sum(1).max())
        return {"latents": prepared.latents[index],
                "caption_ids": prepared.caption_ids[index, :length],
                "caption_mask": mask[:, :length]}

    def eval_batches(self, prepared: LatentCaptions, *, batch_size: int,
                     max_batches: int) -> Iterator[dict]:
        """Consecutive items from the start (nothing random)."""
        for b in range(max_batches):
            start = b * batch_size
            if start >= len(prepared):
                return
            yield self._batch(prepared, torch.arange(start, min(len(prepared),
                                                                start + batch_size)))

    def loss(self, backbone, decoder, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean cross-entropy (nats) of caption tokens 1.. given the image and the tokens
        before them."""
        decoder.check_latents(batch["latents"])
        ids, mask = batch["caption_ids"], batch["caption_mask"]
        logits = decoder(batch["latents"], ids[:, :-1])  # (b, n - 1, v)
        targets = ids[:, 1:].masked_fill(~mask[:, 1:], IGNORE)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                               ignore_index=IGNORE)
        return loss, {"tokens": float(mask[:, 1:].sum())}

    @torch.no_grad()
    def evaluate(self, backbone, decoder, prepared: LatentCaptions, *, batch_size: int,
                 max_batches: int, autocast=None) -> dict[str, float]:
        """Validation cross-entropy and next-token accuracy over the first captions."""
        nats = tokens = right = 0.0
        device = next(decoder.parameters()).device
        for batch in self.eval_batches(prepared, batch_size=batch_size, max_batches=max_batches):
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast() if autocast else contextlib.nullcontext():
                logits = decoder(batch["latents"], batch["caption_ids"][:, :-1])
            keep = batch["caption_mask"][:, 1:]
            targets = batch["caption_ids"][:, 1:]
            nats += F.cross_entropy(logits[keep].float(), targets[keep], reduction="sum").item()
            right += (logits[keep].argmax(-1) == targets[keep]).sum().item()
            tokens += keep.sum().item()
        return {"loss": nats / tokens, "token_accuracy": right / tokens} if tokens else {}
