"""``image-to-text``: caption an image with the shared backbone (see
:mod:`multimodal.modalities.image.caption`).

The image is brought to the training format (a 28x28 image padded to 32x32 as Fashion-MNIST
is, any other size resized; grayscale or RGB as the VAE reads), encoded to latents, read by the
backbone as patch tokens, and the caption is decoded token by token (greedy by default;
sampling with temperature / top-k / top-p and a seed) until end-of-text. The image tokens and
end-of-text run through the backbone once; each caption token then runs alone, reading the
earlier positions from the backbone's KV cache (as text-generation decodes).

Axes: k images, m image tokens, n caption tokens, d backbone width, v vocabulary.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from multimodal.backbone.transformer import MODALITY_IDS
from multimodal.data.images import pil_to_array
from multimodal.errors import InputError
from multimodal.modalities.image.files import load_image_array
from multimodal.pipelines.base import (Pipeline, check_bool, check_float, check_int,
                                       check_seed, check_text, runtime_settings, seeded)
from multimodal.pipelines.sampling import sample_next_token
from multimodal.registry import pipelines

# What ``images`` may be: one image (a file path, a PIL image or a uint8 array) or a list.
ImagesInput = Union[str, os.PathLike, Image.Image, np.ndarray, list, tuple]


@dataclass
class CaptionOutput:
    """What :class:`ImageToTextPipeline` returns.

    Attributes:
        texts: One caption per image.
        seed: The seed used (``None`` for greedy decoding).
        checkpoint_id: The model that wrote them.
        images: The images as given, as text (a path as given; ``None`` for an image given as
            pixels), written with each caption.
        max_new_tokens, do_sample, temperature, top_k, top_p: The settings used.
        runtime: How the pipeline ran where that changes the numbers (``torch_dtype`` when
            not float32, ``device`` when not the CPU), written with every caption.
    """

    texts: list[str]
    seed: int | None = None
    checkpoint_id: str = "none"
    images: list[str | None] = field(default_factory=list)
    max_new_tokens: int = 24
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    runtime: dict[str, str] = field(default_factory=dict)

    @property
    def samples(self) -> list[str]:
        """The captions, one per image (what the writer writes)."""
        return self.texts

    def metadata(self, index: int) -> dict[str, Any]:
        """The settings of caption ``index`` (written next to it); ``top_k`` and ``top_p``
        only when set."""
        meta = {"task": "image-to-text",
                "image": self.images[index] if index < len(self.images) else None,
                "sample": index, "seed": self.seed, "max_new_tokens": self.max_new_tokens,
                "do_sample": self.do_sample, "temperature": self.temperature,
                "checkpoint_id": self.checkpoint_id}
        for name in ("top_k", "top_p"):
            if getattr(self, name) is not None:
                meta[name] = getattr(self, name)
        meta.update(self.runtime)
        return meta


@pipelines.register("image-to-text")
class ImageToTextPipeline(Pipeline):
    """Caption images (prefix captioning on the shared backbone)."""

    task = "image-to-text"
    produces = "text"  # what its outputs hold: the spec whose writer writes them
    parts = {"backbone": "backbone", "captioner": "decoders.caption", "vae": "tokenizers.image",
             "tokenizer": "tokenizers.text"}
    needs = ("a latent_captioner, an image_vae and a text tokenizer (train e.g. "
             "configs/image_to_text_fashion.yaml)")

    def __init__(self, *, backbone, captioner, vae, tokenizer, checkpoint_id: str = "none"):
        self.backbone, self.captioner, self.vae = backbone, captioner, vae
        self.tokenizer, self.checkpoint_id = tokenizer, checkpoint_id
        self.use_kv_cache = True  # False re-runs the whole prefix per token (for tests)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def pixels(self, images: Any) -> torch.Tensor:
        """One image or a list (paths, PIL images, uint8 arrays) -> (k, c, s, s) in [-1, 1].

        Raises:
            InputError: an unreadable or non-image input, or an empty list.
        """
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        if not items:
            raise InputError("give at least one image to caption")
        rows = []
        for i, item in enumerate(items):
            raw = load_image_array(item, what=f"image {i}" if len(items) > 1 else "image")
            rows.append(pil_to_array(Image.fromarray(raw), size=(self.vae.height, self.vae.width),
                                     channels=self.vae.in_channels))
        return torch.from_numpy(np.stack(rows)).float() / 127.5 - 1.0

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The tied LM head: (k, d) -> (k, v) float."""
        return F.linear(hidden, self.backbone.tok_embeddings.weight).float()

    @torch.no_grad()
    def __call__(self, images: ImagesInput, *, max_new_tokens: int = 24, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None) -> CaptionOutput:
        """Caption ``images`` (a path, PIL image, uint8 array, or a list of them).

        Args:
            images: The image(s) to caption (PNG, JPEG, ...).
            max_new_tokens: Longest caption in tokens (1 .. context - image tokens - 1).
            do_sample: Sample instead of greedy decoding (default greedy).
            temperature: Sampling temperature (> 0).
            top_k: Sample among the ``k`` most likely tokens only (default all).
            top_p: Nucleus sampling threshold in (0, 1] (default off).
            seed: Seed of the sampling (random when sampling without one).

        Returns:
            :class:`CaptionOutput`.

        Raises:
            InputError: bad images or settings.
        """
        limit = self.backbone.max_seq_len - self.captioner.num_image_tokens - 1
        check_int("max_new_tokens", max_new_tokens, 1, limit)
        check_bool("do_sample", do_sample)
        temperature = check_float("temperature", temperature, 0.0, lo_open=do_sample)
        top_k = check_int("top_k", top_k, 1, optional=True, accepted="a positive integer or None")
        top_p = check_float("top_p", top_p, 0.0, 1.0, lo_open=True, optional=True,
                            accepted="a number in (0, 1] or None")
        check_seed(seed)
        for i, item in enumerate(images if isinstance(images, (list, tuple)) else [images]):
            if isinstance(item, str):
                check_text("images" if isinstance(images, (list, tuple)) and len(images) > 1
                           else "image", item)
        pixels = self.pixels(images)
        generator = None
        if do_sample:
            generator, seed = seeded(seed)
        self.backbone.eval()
        self.captioner.eval()
        # the VAE stays float32; the captioner reads its latents in its own dtype (bf16 after
        # .to(dtype=...))
        latents = self.vae.encode(pixels.to(self.vae.device)).to(
            self.device, next(self.captioner.parameters()).dtype)
        eos, k, device = self.tokenizer.eos_id, len(pixels), self.device
        ids = torch.full((k, 1), eos, dtype=torch.long, device=device)  # (k, n)
        done = torch.zeros(k, dtype=torch.bool, device=device)
        # the captioner's own decoder layers keep no cache: then re-run the prefix per token
        cached = self.use_kv_cache and getattr(self.captioner, "decoder", None) is None
        if cached:
            m = self.captioner.num_image_tokens
            cache = self.backbone.new_kv_cache(k, m + 1 + max_new_tokens)
            prefix = torch.cat([self.captioner.image_tokens(latents),
                                self.backbone.tok_embeddings(ids)], dim=1)  # (k, m + 1, d)
            modality = torch.tensor([MODALITY_IDS["image"]] * m + [MODALITY_IDS["text"]],
                                    device=device)
            hidden = self.backbone(inputs_embeds=prefix, kv_cache=cache,
                                   modality_ids=modality[None].expand(k, -1))
            logits = self._logits(hidden[:, -1])  # (k, v)
        for step in range(max_new_tokens):
            if not cached:
                logits = self.captioner(latents, ids)[:, -1].float()  # (k, v)
            nxt = sample_next_token(logits.cpu(), do_sample=do_sample, temperature=temperature,
                                    top_k=top_k, top_p=top_p, generator=generator)
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt.to(device))
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done |= nxt == eos
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            if cached:
                hidden = self.backbone(inputs_embeds=self.backbone.tok_embeddings(nxt[:, None]),
                                       modality_ids=MODALITY_IDS["text"], kv_cache=cache)
                logits = self._logits(hidden[:, -1])
        texts = []
        for row in ids[:, 1:].tolist():
            row = row[: row.index(eos)] if eos in row else row
            texts.append(self.tokenizer.decode(row).strip())
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        names = [str(item) if isinstance(item, (str, os.PathLike)) else None for item in items]
        return CaptionOutput(texts=texts, seed=seed if do_sample else None,
                             checkpoint_id=self.checkpoint_id, images=names,
                             max_new_tokens=max_new_tokens, do_sample=do_sample,
                             temperature=temperature, top_k=top_k, top_p=top_p,
                             runtime=runtime_settings(self))
