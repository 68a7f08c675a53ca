"""Image training objective: latent diffusion conditioned on the shared backbone.

Training images are encoded ONCE by the fitted VAE (Rombach et al. 2022, LDM,
https://arxiv.org/abs/2112.10752), so the denoiser trains in the small latent space. Each
step: run the backbone on the captions, replace a share ``cond_dropout`` of them by the empty
caption (classifier-free guidance, Ho & Salimans 2022, https://arxiv.org/abs/2207.12598), noise
the latents to a random timestep with the denoiser's DDPM schedule (Ho et al. 2020,
https://arxiv.org/abs/2006.11239) and regress ``eps`` (or ``v``) with a mean squared error.

Every random draw of a batch (which images, noise, timesteps, which captions are dropped) is
made in :meth:`ImageModality.sample` from the trainer's generator; :meth:`~ImageModality.loss`
draws nothing, so a resumed run repeats the uninterrupted one exactly.

Captions are tokenised as the text pipeline does prompts: end-of-text first (the start of a
document), then the caption's ids, padded at the END (the backbone is causal, so padding after
the text does not change the states of real tokens) with a mask that hides the padding from
cross-attention. The empty caption is end-of-text alone.

Axes: b batch, n caption tokens, d backbone width, l latent channels, y x latent height and
width, k items.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from multimodal.errors import DataError
from multimodal.modalities.image.diffusion import diffusion_loss
from multimodal.modalities.image.vae import dataset_images
from multimodal.registry import modalities

EVAL_SEED = 1234
ENCODE_CHUNK = 512


def encode_captions(tokenizer, captions: Sequence[str], *, max_len: int,
                    pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Tokenise captions for the backbone: end-of-text, the caption's ids, then padding.

    Args:
        tokenizer: The text tokenizer (``eos_id``, ``pad_id``, ``encode_batch``).
        captions: k texts; ``""`` is the empty (unconditional) caption.
        max_len: Longest sequence kept; longer captions are cut at the end.
        pad_to: Pad to this length (default: the longest caption, at most ``max_len``).

    Returns:
        ``(ids (k, n) int64, mask (k, n) bool, number of captions cut)``.
    """
    eos, pad = tokenizer.eos_id, tokenizer.pad_id
    unique = sorted(set(captions))
    encoded = dict(zip(unique, tokenizer.encode_batch(unique))) if unique else {}
    rows = [[eos] + encoded[c] for c in captions]
    cut = sum(len(r) > max_len for r in rows)
    rows = [r[:max_len] for r in rows]
    length = pad_to or max((len(r) for r in rows), default=1)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return ids, mask, cut


def encode_dataset(vae, dataset: Any) -> torch.Tensor:
    """Latents (k, l, y, x) of every item of ``dataset``, encoded in chunks, on the CPU.

    A dataset whose items share images (one image under several captions) says so with
    ``item_images`` ((k,) ints: the distinct image of each item) and
    ``get_distinct_images(indices)`` ((m, c, h, w) in [-1, 1]); each distinct image is then
    encoded once.
    """
    item_images = getattr(dataset, "item_images", None)
    if item_images is not None:
        rows = torch.as_tensor(list(item_images), dtype=torch.long)
        count = int(rows.max()) + 1 if len(rows) else 0
        get = dataset.get_distinct_images
    else:
        rows, count = None, len(dataset)
        get = lambda indices: dataset_images(dataset, indices)  # noqa: E731
    latents = torch.cat([
        vae.encode(get(list(range(i, min(count, i + ENCODE_CHUNK))))).cpu()
        for i in tqdm(range(0, count, ENCODE_CHUNK), desc="encode images", leave=False,
                      disable=None)])
    return latents if rows is None else latents[rows]


@dataclass
class LatentCaptions:
    """A dataset encoded once: latents and tokenised captions.

    Attributes:
        latents: (k, l, y, x) scaled VAE latents.
        caption_ids: (k, n) int64, end-of-text first, padded.
        caption_mask: (k, n) bool, ``True`` on real tokens.
        labels: (k,) int64 (-1 where the dataset has none).
        empty_ids: (n,) the empty caption (end-of-text, then padding).
        empty_mask: (n,) its mask.
    """

    latents: torch.Tensor
    caption_ids: torch.Tensor
    caption_mask: torch.Tensor
    labels: torch.Tensor
    empty_ids: torch.Tensor
    empty_mask: torch.Tensor

    def __len__(self) -> int:
        return self.latents.shape[0]


def _describe(shape: tuple[int, int, int]) -> str:
    """``(c, h, w)`` -> ``"RGB 64x64"``, ``"grey 96x48"`` (width x height, as image sizes are
    written)."""
    kind = {1: "grey", 3: "RGB"}.get(shape[0], f"{shape[0]}-channel")
    return f"{kind} {shape[2]}x{shape[1]}"


@modalities.register("image")
class ImageModality:
    """Text-to-image latent diffusion on the shared backbone (see the module docstring)."""

    name = "image"

    def text_corpus(self, dataset: Any) -> Iterator[str]:
        """The captions of ``dataset``."""
        captions = getattr(dataset, "captions", None)
        return iter(captions if captions is not None else (item["caption"] for item in dataset))

    def _check_images(self, dataset: Any, vae: Any) -> None:
        """The dataset's images have the shape (c, h, w) the image tokenizer was fitted at, so
        that a grey dataset never trains a colour model, nor a 32x32 one a 64x64 model, nor a
        96x48 one a square model (height and width are checked apart). (A VAE being fitted
        checks this itself; one from ``init_from`` is checked only here.)

        Raises:
            DataError: naming both shapes and the keys to set.
        """
        expected = (vae.in_channels, vae.height, vae.width)
        got = tuple(dataset_images(dataset, [0]).shape[1:])
        if got != expected:
            size = expected[1] if expected[1] == expected[2] else list(expected[1:])
            raise DataError(
                f"data.{self.name}: channel/size mismatch: the dataset's images are "
                f"{_describe(got)} (c, h, w) = {got} but the model's image tokenizer "
                f"(tokenizers.image) reads {_describe(expected)} {expected}; give the data the "
                f"model's format (image_folder: data.{self.name}.channels: {expected[0]} and "
                f"data.{self.name}.image_size: {size} ([height, width]); its images are "
                f"converted and fitted to them as data.{self.name}.aspect says: stretch, pad "
                "or crop) or use a checkpoint made for the data's")

    def prepare(self, dataset: Any, tokenizers: dict, *, seq_len: int) -> LatentCaptions:
        """Encode every image with ``tokenizers["image"]`` and tokenise every caption with
        ``tokenizers["text"]``, padded to the longest caption (at most ``seq_len`` tokens).

        Raises:
            DataError: the dataset is empty, a tokenizer is missing, or the images' shape
                (c, h, w) is not the image tokenizer's (channels and size).
        """
        missing = [k for k in ("image", "text") if k not in tokenizers]
        if missing:
            raise DataError("the image modality needs "
                            + " and ".join(f"tokenizers[{k!r}]" for k in missing)
                            + " (an image_vae and a byte_bpe)")
        if len(dataset) == 0:
            raise DataError("the image dataset is empty")
        vae, text = tokenizers["image"], tokenizers["text"]
        self._check_images(dataset, vae)
        n = len(dataset)
        latents = encode_dataset(vae, dataset)
        captions = list(self.text_corpus(dataset))
        ids, mask, cut = encode_captions(text, captions, max_len=seq_len)
        if cut:
            warnings.warn(f"{cut} of {n} captions are longer than train.seq_len = {seq_len} "
                          "tokens and were cut at the end; raise train.seq_len", stacklevel=2)
        empty_ids, empty_mask, _ = encode_captions(text, [""], max_len=seq_len,
                                                   pad_to=ids.shape[1])
        labels = getattr(dataset, "labels", None)
        labels = torch.tensor(list(labels) if labels is not None else
                              [item["label"] for item in dataset], dtype=torch.long)
        return LatentCaptions(latents=latents, caption_ids=ids, caption_mask=mask,
                              labels=labels, empty_ids=empty_ids[0], empty_mask=empty_mask[0])

    def sample(self, prepared: LatentCaptions, *, batch_size: int,
               generator: torch.Generator) -> dict:
        """A random batch; every draw comes from ``generator``.

        Returns:
            ``{"latents" (b, l, y, x), "caption_ids" (b, n), "caption_mask" (b, n),
            "noise" (b, l, y, x), "t_uniform" (b,) in [0, 1) (the timestep, as a share of the
            schedule), "drop_uniform" (b,) in [0, 1) (caption dropped where below
            ``cond_dropout``), "empty_ids" (n,), "empty_mask" (n,)}``.
        """
        index = torch.randint(0, len(prepared), (batch_size,), generator=generator)
        return _batch(prepared, index, generator, drop_captions=True)

    def eval_batches(self, prepared: LatentCaptions, *, batch_size: int,
                     max_batches: int) -> Iterator[dict]:
        """Consecutive items from the start, with noise and timesteps from a fixed seed and no
        caption dropout: the same batches at every evaluation."""
        generator = torch.Generator().manual_seed(EVAL_SEED)
        for b in range(max_batches):
            start = b * batch_size
            if start >= len(prepared):
                return
            index = torch.arange(start, min(len(prepared), start + batch_size))
            yield _batch(prepared, index, generator, drop_captions=False)

    def loss(self, backbone, decoder, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean squared error of the denoiser's ``eps`` (or ``v``) prediction, weighted per
        sample by Min-SNR when the decoder's ``snr_gamma`` is set.

        Raises:
            ConfigError: the VAE's latents do not fit the denoiser.
        """
        x0, noise = batch["latents"], batch["noise"]  # (b, l, y, x)
        decoder.check_latents(x0)
        drop = (batch["drop_uniform"] < decoder.cond_dropout)[:, None]  # (b, 1)
        ids = torch.where(drop, batch["empty_ids"], batch["caption_ids"])  # (b, n)
        mask = torch.where(drop, batch["empty_mask"], batch["caption_mask"])
        length = int(mask.sum(1).max())  # columns past the longest caption are all padding
        ids, mask = ids[:, :length], mask[:, :length]
        context = backbone(ids)  # (b, n, d)
        scheduler = decoder.training_scheduler
        num_train = decoder.num_train_timesteps
        timesteps = (batch["t_uniform"] * num_train).long().clamp_(max=num_train - 1)
        x_t = scheduler.add_noise(x0, noise, timesteps)
        prediction = decoder(x_t, timesteps, context, mask)
        loss = diffusion_loss(prediction, x0=x0, noise=noise, timesteps=timesteps,
                              scheduler=scheduler, prediction_type=decoder.prediction_type,
                              snr_gamma=decoder.snr_gamma)
        return loss, {"tokens": float(mask.sum()) + x0[:, 0].numel()}

    @torch.no_grad()
    def evaluate(self, backbone, decoder, prepared: LatentCaptions, *, batch_size: int,
                 max_batches: int, autocast=None) -> dict[str, float]:
        """Validation denoising loss over fixed batches (noise, timesteps from a fixed seed)."""
        total, count = 0.0, 0
        device = next(decoder.parameters()).device
        for batch in self.eval_batches(prepared, batch_size=batch_size, max_batches=max_batches):
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast() if autocast else contextlib.nullcontext():
                loss, _ = self.loss(backbone, decoder, batch)
            size = batch["latents"].shape[0]
            total += loss.item() * size
            count += size
        return {"loss": total / count} if count else {}


def _batch(prepared: LatentCaptions, index: torch.Tensor, generator: torch.Generator, *,
           drop_captions: bool) -> dict:
    """The items ``index`` of ``prepared`` with noise and timestep draws from ``generator``
    (in this order: noise, timesteps, then caption-dropout draws when ``drop_captions``;
    without it no caption is dropped)."""
    latents = prepared.latents[index]
    k = len(index)
    noise = torch.randn(latents.shape, generator=generator)
    t_uniform = torch.rand(k, generator=generator)
    drop_uniform = torch.rand(k, generator=generator) if drop_captions else torch.ones(k)
    return {"latents": latents, "caption_ids": prepared.caption_ids[index],
            "caption_mask": prepared.caption_mask[index], "noise": noise,
            "t_uniform": t_uniform, "drop_uniform": drop_uniform,
            "empty_ids": prepared.empty_ids, "empty_mask": prepared.empty_mask}
