"""``image-to-text``: caption an image with the shared backbone (see
:mod:`multimodal.modalities.image.caption`).

The image is brought to the training format (a 28x28 image padded to 32x32 as Fashion-MNIST
is, any other size resized; grayscale or RGB as the VAE reads), encoded to latents, read by the
backbone as patch tokens, and the caption is decoded token by token (greedy by default;
sampling with temperature / top-k / top-p and a seed) until end-of-text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multimodal.errors import InputError
from multimodal.pipelines import require_parts
from multimodal.pipelines.sampling import sample_next_token
from multimodal.registry import pipelines


@dataclass
class CaptionOutput:
    """What :class:`ImageToTextPipeline` returns.

    Attributes:
        texts: One caption per image.
        seed: The seed used (``None`` for greedy decoding).
        checkpoint_id: The model that wrote them.
    """

    texts: list[str]
    seed: int | None = None
    checkpoint_id: str = "none"


@pipelines.register("image-to-text")
class ImageToTextPipeline:
    """Caption images (prefix captioning on the shared backbone)."""

    produces = "text"  # what its outputs hold (task files check combiner inputs)

    task = "image-to-text"

    def __init__(self, *, backbone, captioner, vae, tokenizer, checkpoint_id: str = "none"):
        self.backbone, self.captioner, self.vae = backbone, captioner, vae
        self.tokenizer, self.checkpoint_id = tokenizer, checkpoint_id

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str = "cpu") -> "ImageToTextPipeline":
        """Load from a checkpoint (or a run directory's newest one).

        Raises:
            CheckpointError: unusable checkpoint, or one without a captioner, image VAE or
                text tokenizer.
        """
        from multimodal.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path, device=device)
        require_parts(ckpt, cls.task, {"decoders.caption": "caption" in ckpt.model.decoders,
                                       "tokenizers.image": "image" in ckpt.tokenizers,
                                       "tokenizers.text": "text" in ckpt.tokenizers},
                      "a latent_captioner, an image_vae and a text tokenizer (train e.g. "
                      "configs/image_to_text_fashion.yaml)")
        return cls(backbone=ckpt.model.backbone, captioner=ckpt.model.decoders["caption"],
                   vae=ckpt.tokenizers["image"].to(device), tokenizer=ckpt.tokenizers["text"],
                   checkpoint_id=ckpt.checkpoint_id)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def pixels(self, images: Any) -> torch.Tensor:
        """One image or a list (paths, PIL images, uint8 arrays) -> (k, c, s, s) in [-1, 1].

        Raises:
            InputError: an unreadable or non-image input, or an empty list.
        """
        from PIL import Image

        from multimodal.data.images import pil_to_array
        from multimodal.modalities.image.files import load_image_array

        items = list(images) if isinstance(images, (list, tuple)) else [images]
        if not items:
            raise InputError("give at least one image to caption")
        rows = []
        for i, item in enumerate(items):
            raw = load_image_array(item, what=f"image {i}" if len(items) > 1 else "image")
            rows.append(pil_to_array(Image.fromarray(raw), size=self.vae.image_size,
                                     channels=self.vae.in_channels))
        return torch.from_numpy(np.stack(rows)).float() / 127.5 - 1.0

    @torch.no_grad()
    def __call__(self, images: Any, *, max_new_tokens: int = 24, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None) -> CaptionOutput:
        """Caption ``images`` (a path, PIL image, uint8 array, or a list of them).

        Args:
            max_new_tokens: Longest caption in tokens (1 .. context - image tokens - 1).
            do_sample: Sample instead of greedy decoding (default greedy).
            temperature, top_k, top_p: Sampling settings, as for text-generation.
            seed: Seed of the sampling (random when sampling without one).

        Raises:
            InputError: bad images or settings.
        """
        limit = self.backbone.max_seq_len - self.captioner.num_image_tokens - 1
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or \
                not 1 <= max_new_tokens <= limit:
            raise InputError(f"max_new_tokens must be an integer in 1..{limit}, "
                             f"got {max_new_tokens!r}")
        if do_sample and not temperature > 0:
            raise InputError(f"temperature must be > 0, got {temperature!r}")
        pixels = self.pixels(images)
        generator = None
        if do_sample:
            if seed is None:
                seed = int(torch.randint(0, 2**31 - 1, ()).item())
            generator = torch.Generator().manual_seed(seed)
        self.backbone.eval()
        self.captioner.eval()
        latents = self.vae.encode(pixels.to(self.vae.device)).to(self.device)
        eos = self.tokenizer.eos_id
        ids = torch.full((len(pixels), 1), eos, dtype=torch.long, device=self.device)
        done = torch.zeros(len(pixels), dtype=torch.bool, device=self.device)
        for _ in range(max_new_tokens):
            logits = self.captioner(latents, ids)[:, -1].float()  # (k, v)
            nxt = sample_next_token(logits.cpu(), do_sample=do_sample, temperature=temperature,
                                    top_k=top_k, top_p=top_p, generator=generator)
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt.to(self.device))
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done |= nxt == eos
            if bool(done.all()):
                break
        texts = []
        for row in ids[:, 1:].tolist():
            row = row[: row.index(eos)] if eos in row else row
            texts.append(self.tokenizer.decode(row).strip())
        return CaptionOutput(texts=texts, seed=seed if do_sample else None,
                             checkpoint_id=self.checkpoint_id)

    # -- command line -----------------------------------------------------------------------
    @classmethod
    def add_cli_arguments(cls, parser) -> None:
        parser.add_argument("--image", required=True, nargs="+",
                            help="image file(s) to caption (PNG, JPEG, ...)")
        parser.add_argument("--max-new-tokens", type=int, default=24)
        parser.add_argument("--do-sample", action="store_true",
                            help="sample instead of greedy decoding")
        parser.add_argument("--temperature", type=float, default=1.0)
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument("--out", default=None,
                            help="also write 000.txt + 000.json per image here")

    def run_cli(self, args) -> int:
        """Print one caption per image (and write them with their settings to ``--out``)."""
        import contextlib

        from multimodal.io import OutputFiles

        with (OutputFiles(args.out) if args.out else contextlib.nullcontext()) as out:
            result = self(args.image, max_new_tokens=args.max_new_tokens,
                          do_sample=args.do_sample, temperature=args.temperature,
                          seed=args.seed)
            for i, (path, text) in enumerate(zip(args.image, result.texts)):
                print(f"{path}: {text}")
                if out is not None:
                    out.write(f"{i:03d}.txt", text + "\n")
                    meta = {"task": self.task, "image": str(path), "sample": i,
                            "seed": result.seed, "max_new_tokens": args.max_new_tokens,
                            "do_sample": args.do_sample, "temperature": args.temperature,
                            "checkpoint_id": self.checkpoint_id}
                    out.write(f"{i:03d}.json", json.dumps(meta, indent=1) + "\n")
        return 0
