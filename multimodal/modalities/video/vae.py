"""The video tokenizer: the image VAE applied frame by frame, giving a latent video (t, l, y, x).

Frames are images, so a clip is encoded by the image tokenizer's ``AutoencoderKL`` one frame at a
time (the route of Make-A-Video, Singer et al. 2022, https://arxiv.org/abs/2209.14792, and Video
LDM, Blattmann et al. 2023, https://arxiv.org/abs/2304.08818: keep the image model's latent
space, learn only time). The VAE is fully convolutional, so an image VAE trained on 32x32
pictures encodes 48x48 frames into 12x12 latents unchanged.

``video_vae`` is :class:`~multimodal.modalities.image.vae.ImageVAETokenizer` fitted on the
frames of the video dataset (``fit_on = "video"``); it saves and loads in the image VAE's
format, so either kind reads the other's files. The video modality and pipeline use
``tokenizers.video`` when configured, else ``tokenizers.image`` (one latent space for images and
frames, as a config that initialises from a text-to-image checkpoint has).

Axes: b batch, t frames, c image channels, h w frame height and width, l latent channels,
y x latent height and width, k frames in all.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from einops import rearrange

from multimodal.errors import DataError
from multimodal.modalities.image.vae import ImageVAETokenizer
from multimodal.registry import tokenizers


class FrameView:
    """The frames of a video dataset as an image dataset (``len``, ``get_images``), for the
    VAE fit: frame ``i`` is frame ``i % t`` of clip ``i // t``."""

    def __init__(self, videos: Any):
        self.videos = videos
        if len(videos) == 0:
            raise DataError("the video dataset is empty")
        probe = videos.get_videos([0]) if hasattr(videos, "get_videos") else \
            videos[0]["video"][None]
        self.num_frames = probe.shape[1]

    def __len__(self) -> int:
        return len(self.videos) * self.num_frames

    def get_images(self, indices=None) -> torch.Tensor:
        """Frames (k, c, h, w) in [-1, 1] of flat indices (default: all)."""
        if hasattr(self.videos, "get_frames"):
            return self.videos.get_frames(indices)
        t = self.num_frames
        chosen = range(len(self)) if indices is None else [int(i) for i in indices]
        return torch.stack([self.videos[i // t]["video"][i % t] for i in chosen])


def frame_tokenizer(tokenizers: dict[str, Any]) -> Any:
    """The tokenizer the video modality encodes frames with: ``tokenizers["video"]``, else
    ``tokenizers["image"]``; ``None`` when neither is configured."""
    return tokenizers.get("video", tokenizers.get("image"))


def encode_video(vae: Any, videos: torch.Tensor) -> torch.Tensor:
    """Clips (b, t, c, h, w) in [-1, 1] -> scaled latents (b, t, l, y, x), frame by frame."""
    b = videos.shape[0]
    latents = vae.encode(rearrange(videos, "b t c h w -> (b t) c h w"))
    return rearrange(latents, "(b t) l y x -> b t l y x", b=b)


def decode_video(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents (b, t, l, y, x) -> clips (b, t, c, h, w) in [-1, 1], frame by frame."""
    b = latents.shape[0]
    frames = vae.decode(rearrange(latents, "b t l y x -> (b t) l y x"))
    return rearrange(frames, "(b t) c h w -> b t c h w", b=b)


@tokenizers.register("video_vae")
class VideoVAETokenizer(ImageVAETokenizer):
    """The image VAE fitted on video frames: clips <-> latent videos (t, l, y, x).

    Takes the arguments of ``image_vae`` (see :class:`ImageVAETokenizer`); ``image_size`` is
    the frame side (default 48: Moving Fashion-MNIST's canvas, 12x12 latents with three
    stages).
    """

    fit_on = "video"

    def __init__(self, *, in_channels: int = 1, latent_channels: int = 4,
                 block_out_channels: tuple[int, ...] = (32, 64, 64), layers_per_block: int = 1,
                 norm_num_groups: int = 16, mid_block_attention: bool = False,
                 image_size: int = 48, fit_steps: int = 1500, batch_size: int = 64,
                 lr: float = 2e-3, kl_weight: float = 1e-6,
                 reconstruction_loss: Literal["l1", "mse"] = "l1",
                 num_threads: int | None = None, fit_on: str = "video"):
        # Spelled out (not **kwargs): the config validator reads this signature.
        super().__init__(in_channels=in_channels, latent_channels=latent_channels,
                         block_out_channels=block_out_channels,
                         layers_per_block=layers_per_block, norm_num_groups=norm_num_groups,
                         mid_block_attention=mid_block_attention, image_size=image_size,
                         fit_steps=fit_steps, batch_size=batch_size, lr=lr,
                         kl_weight=kl_weight, reconstruction_loss=reconstruction_loss,
                         num_threads=num_threads, fit_on=fit_on)

    def fit(self, data: Any, *, seed: int = 0, device: Any = "cpu",
            progress: bool = True) -> "VideoVAETokenizer":
        """Fit on every frame of ``data`` (a video dataset); see :meth:`ImageVAETokenizer.fit`.

        Raises:
            DataError: the dataset is empty or its frames have the wrong shape.
        """
        return super().fit(FrameView(data), seed=seed, device=device, progress=progress)

    def encode_video(self, videos: torch.Tensor) -> torch.Tensor:
        """Clips (b, t, c, h, w) in [-1, 1] -> scaled latents (b, t, l, y, x)."""
        return encode_video(self, videos)

    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (b, t, l, y, x) -> clips (b, t, c, h, w) in [-1, 1]."""
        return decode_video(self, latents)

    def __repr__(self) -> str:
        return "Video" + super().__repr__()
