"""Image-to-text: the shared backbone reads an image's VAE latent patches, the tied LM head writes
its caption (a prefix captioner: the image tokens come first, then the caption's, causally;
the "prefix LM" recipe of SimVLM, Wang et al. 2022, https://arxiv.org/abs/2108.10904, on
ViT-style latent patches, Dosovitskiy et al. 2021).

The decoder ``latent_captioner`` owns only the patch embedding: the backbone and its token
embedding (as the output projection) are the ones every other modality uses, so captioning
trains the same network that conditions the image, video and speech decoders. The modality
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
    """

    injected_args = ("backbone",)

    def __init__(self, *, backbone: nn.Module, latent_channels: int = 4, sample_size: int = 8,
                 patch_size: int = 2):
        super().__init__()
        self.patch_embed = LatentPatchEmbed(dim=backbone.dim, latent_channels=latent_channels,
                                            sample_size=sample_size, patch_size=patch_size)
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
        image = self.patch_embed(latents)  # (b, m, d)
        text = backbone.tok_embeddings(ids)  # (b, n, d)
        m = image.shape[1]
        modality = torch.cat([torch.full((m,), MODALITY_IDS["image"]),
                              torch.full((ids.shape[1],), MODALITY_IDS["text"])]).to(ids.device)
        hidden = backbone(inputs_embeds=torch.cat([image, text], dim=1),
                          modality_ids=modality[None].expand(ids.shape[0], -1))
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
