"""Video training objective: latent video diffusion conditioned on the shared backbone.

As for images (:mod:`multimodal.modalities.image.modality`), but every item is a clip: its
frames are encoded ONCE by the frame tokenizer (``tokenizers.video``, else ``tokenizers.image``)
into a latent video (t, l, y, x); each step noises whole clips to one random timestep per clip
(Ho et al. 2022, "Video Diffusion Models", https://arxiv.org/abs/2204.03458), drops a share
``cond_dropout`` of the captions for classifier-free guidance, and regresses ``eps`` (or ``v``)
with a mean squared error over every frame, weighted by Min-SNR when the decoder's
``snr_gamma`` is set.

Every random draw is made in :meth:`VideoModality.sample` from the trainer's generator
(in this order: clips, noise, timesteps, caption dropout), so a resumed run repeats the
uninterrupted one exactly.

Axes: b batch, t frames, l latent channels, y x latent height and width, n caption tokens,
d backbone width, k clips.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from tqdm.auto import tqdm

from multimodal.errors import DataError
from multimodal.modalities.image.diffusion import diffusion_loss
from multimodal.modalities.image.modality import ImageModality, LatentCaptions, encode_captions
from multimodal.modalities.video.vae import encode_video, frame_tokenizer
from multimodal.registry import modalities

ENCODE_CLIPS = 64  # clips encoded per VAE call


@modalities.register("video")
class VideoModality(ImageModality):
    """Text-to-video latent diffusion on the shared backbone (see the module docstring)."""

    name = "video"

    def prepare(self, dataset: Any, tokenizers: dict, *, seq_len: int) -> LatentCaptions:
        """Encode every clip frame by frame and tokenise every caption.

        Returns:
            :class:`LatentCaptions` with ``latents`` (k, t, l, y, x).

        Raises:
            DataError: the dataset is empty, a tokenizer is missing, or the frames do not have
                the frame tokenizer's size.
        """
        vae = frame_tokenizer(tokenizers)
        if vae is None or "text" not in tokenizers:
            raise DataError("the video modality needs tokenizers['text'] (a byte_bpe) and a "
                            "frame tokenizer: tokenizers['video'] (a video_vae) or "
                            "tokenizers['image']")
        if len(dataset) == 0:
            raise DataError("the video dataset is empty")
        n = len(dataset)
        probe = _videos(dataset, [0])
        expected = (vae.in_channels, vae.height, vae.width)
        if tuple(probe.shape[2:]) != expected:
            raise DataError(f"the video dataset has frames of shape {tuple(probe.shape[2:])} but "
                            f"the frame tokenizer reads {expected}; set its image_size / "
                            "in_channels (or the dataset's canvas_size / frame_size) to match")
        latents = torch.cat([
            encode_video(vae, _videos(dataset, range(i, min(n, i + ENCODE_CLIPS)))).cpu()
            for i in tqdm(range(0, n, ENCODE_CLIPS), desc="encode clips", leave=False,
                          disable=None)])
        captions = list(self.text_corpus(dataset))
        ids, mask, cut = encode_captions(tokenizers["text"], captions, max_len=seq_len)
        if cut:
            warnings.warn(f"{cut} of {n} captions are longer than train.seq_len = {seq_len} "
                          "tokens and were cut at the end; raise train.seq_len", stacklevel=2)
        empty_ids, empty_mask, _ = encode_captions(tokenizers["text"], [""], max_len=seq_len,
                                                   pad_to=ids.shape[1])
        labels = getattr(dataset, "labels", None)
        labels = torch.tensor(list(labels) if labels is not None else
                              [item["label"] for item in dataset], dtype=torch.long)
        return LatentCaptions(latents=latents, caption_ids=ids, caption_mask=mask,
                              labels=labels, empty_ids=empty_ids[0], empty_mask=empty_mask[0])

    def loss(self, backbone, decoder, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean squared error of the denoiser's prediction over every frame of every clip.

        Raises:
            ConfigError: the latents do not fit the denoiser.
        """
        x0, noise = batch["latents"], batch["noise"]  # (b, t, l, y, x)
        decoder.check_latents(x0)
        drop = (batch["drop_uniform"] < decoder.cond_dropout)[:, None]  # (b, 1)
        ids = torch.where(drop, batch["empty_ids"], batch["caption_ids"])  # (b, n)
        mask = torch.where(drop, batch["empty_mask"], batch["caption_mask"])
        length = int(mask.sum(1).max())  # columns past the longest caption are all padding
        ids, mask = ids[:, :length], mask[:, :length]
        context = backbone(ids)  # (b, n, d)
        scheduler = decoder.training_scheduler
        num_train = decoder.num_train_timesteps
        timesteps = (batch["t_uniform"] * num_train).long().clamp_(max=num_train - 1)  # (b,)
        # diffusers' add_noise broadcasts over trailing axes: frames share their clip's step.
        x_t = scheduler.add_noise(x0, noise, timesteps)
        prediction = decoder(x_t, timesteps, context, mask)  # (b, t, l, y, x)
        loss = diffusion_loss(prediction, x0=x0, noise=noise, timesteps=timesteps,
                              scheduler=scheduler, prediction_type=decoder.prediction_type,
                              snr_gamma=decoder.snr_gamma)
        return loss, {"tokens": float(mask.sum()) + x0[:, :, 0].numel()}


def _videos(dataset: Any, indices) -> torch.Tensor:
    """Clips (k, t, c, h, w) in [-1, 1], in bulk when the dataset offers ``get_videos``."""
    indices = [int(i) for i in indices]
    if hasattr(dataset, "get_videos"):
        return dataset.get_videos(indices)
    return torch.stack([dataset[i]["video"] for i in indices])

