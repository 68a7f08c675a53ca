"""The image tokenizer: a small KL-regularised autoencoder (diffusers ``AutoencoderKL``) that maps
images to the latents the denoiser works in (Rombach et al. 2022, "High-Resolution Image
Synthesis with Latent Diffusion Models", https://arxiv.org/abs/2112.10752, section 3).

It is fitted on the training images before the backbone trains (``fit_on = "image"``), like
the BPE tokenizer is fitted on text. After fitting, latents are shifted and scaled to zero mean
and unit variance over the training images (the "scaling factor" of Stable Diffusion, here
measured instead of fixed), so the diffusion noise schedule sees unit-variance data.

``encode`` returns the posterior mean (no sampling), so it is deterministic.

The VAE is convolutional: it encodes and decodes images of any height and width that divide
by its down-sampling factor, not only the ``image_size`` it was fitted at (which may be a
rectangle, ``[height, width]``).

Axes: b batch, c image channels, h w image height and width, l latent channels,
y x latent height and width (``h / 2**(len(block_out_channels) - 1)``, likewise ``w``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm.auto import tqdm

from multimodal.checkpoint import load_weights
from multimodal.data.images import image_height_width, size_setting
from multimodal.errors import CheckpointError, DataError
from multimodal.nn.schedules import cosine_with_warmup
from multimodal.registry import tokenizers

WEIGHTS_FILE = "vae.safetensors"
META_FILE = "vae.json"
FORMAT = "multimodal-image-vae/1"


def dataset_images(data: Any, indices: torch.Tensor | list[int] | None = None) -> torch.Tensor:
    """Images (k, c, h, w) in [-1, 1] of a dataset, in bulk when it offers ``get_images``."""
    if hasattr(data, "get_images"):
        return data.get_images(None if indices is None else
                               [int(i) for i in (indices.tolist() if torch.is_tensor(indices)
                                                 else indices)])
    chosen = range(len(data)) if indices is None else [int(i) for i in indices]
    return torch.stack([data[i]["image"] for i in chosen])


@tokenizers.register("image_vae")
class ImageVAETokenizer:
    """Images <-> latents through a small ``AutoencoderKL``.

    Args:
        in_channels: Image channels ``c`` (1 grayscale, 3 RGB; default 1).
        latent_channels: Latent channels ``l`` (default 4).
        block_out_channels: Encoder widths per stage; each stage after the first halves the
            side (default (32, 64, 64): 32x32 -> 8x8).
        layers_per_block: ResNet layers per stage (default 1).
        norm_num_groups: GroupNorm groups; must divide every width (default 16).
        mid_block_attention: Self-attention in the middle block (default ``False``).
        image_size: Side of square images, or ``[height, width]`` of rectangular ones, each
            a multiple of the down-sampling factor (default 32). The size it is fitted at and
            the images' default size; it encodes and decodes other multiples too.
        fit_steps: Optimizer steps of :meth:`fit` (default 1500).
        batch_size: Images per fit step (default 64).
        lr: AdamW learning rate, cosine-decayed to 10% (default 2e-3).
        kl_weight: Weight of the KL term (per latent element) against the per-pixel
            reconstruction error (default 1e-6; tiny, as in LDM, so the latents keep detail).
        reconstruction_loss: ``"l1"`` (sharper; LDM's choice) or ``"mse"`` (default ``"l1"``).
        num_threads: CPU threads while fitting (default: torch's setting).
        fit_on: The ``data:`` entry whose images it is fitted on (default ``"image"``; e.g.
            ``"caption"`` in a captioning-only run).

    Raises:
        ValueError: widths that ``norm_num_groups`` does not divide, or an image size that is
            not a positive integer or pair, or that the down-sampling does not divide.
    """

    fit_on = "image"

    def __init__(self, *, in_channels: int = 1, latent_channels: int = 4,
                 block_out_channels: tuple[int, ...] = (32, 64, 64), layers_per_block: int = 1,
                 norm_num_groups: int = 16, mid_block_attention: bool = False,
                 image_size: int | tuple[int, int] = 32, fit_steps: int = 1500,
                 batch_size: int = 64,
                 lr: float = 2e-3, kl_weight: float = 1e-6,
                 reconstruction_loss: Literal["l1", "mse"] = "l1",
                 num_threads: int | None = None, fit_on: str = "image"):
        from diffusers import AutoencoderKL  # deferred: diffusers takes ~1.5 s to import

        block_out_channels = tuple(block_out_channels)
        bad = [w for w in block_out_channels if w % norm_num_groups]
        if bad:
            raise ValueError(f"norm_num_groups ({norm_num_groups}) must divide every width of "
                             f"block_out_channels {block_out_channels}")
        factor = 2 ** (len(block_out_channels) - 1)
        height, width = image_height_width(image_size)
        if height % factor or width % factor:
            raise ValueError(f"image_size {image_size} must divide by the down-sampling factor "
                             f"{factor} of {len(block_out_channels)} stages (height and width)")
        self.fit_on = fit_on
        self.in_channels, self.latent_channels = in_channels, latent_channels
        self._set_size(height, width)
        self.downsample_factor = factor
        self.fit_steps, self.batch_size, self.lr = fit_steps, batch_size, lr
        self.kl_weight, self.num_threads = kl_weight, num_threads
        if reconstruction_loss not in ("l1", "mse"):
            raise ValueError(f"reconstruction_loss must be 'l1' or 'mse', got {reconstruction_loss!r}")
        self.reconstruction_loss = reconstruction_loss
        self.vae = AutoencoderKL(
            in_channels=in_channels, out_channels=in_channels,
            down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
            up_block_types=("UpDecoderBlock2D",) * len(block_out_channels),
            block_out_channels=block_out_channels, layers_per_block=layers_per_block,
            latent_channels=latent_channels, norm_num_groups=norm_num_groups,
            sample_size=height if height == width else [height, width],
            mid_block_add_attention=mid_block_attention,
        ).eval().requires_grad_(False)
        self.scaling_factor = 1.0
        self.shift_factor = 0.0
        self._trained = False

    # -- Tokenizer protocol ---------------------------------------------------------------------
    @property
    def is_trained(self) -> bool:
        return self._trained

    def _set_size(self, height: int, width: int) -> None:
        """The training size: ``height``, ``width`` and ``image_size`` (an integer for a
        square, else ``(height, width)``)."""
        self.height, self.width = height, width
        self.image_size = size_setting(height, width)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(c, h, w) of the images it is fitted on (and makes by default)."""
        return (self.in_channels, self.height, self.width)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(l, y, x) of one image's latents at the training size."""
        f = self.downsample_factor
        return (self.latent_channels, self.height // f, self.width // f)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def to(self, device: str | torch.device) -> "ImageVAETokenizer":
        self.vae.to(device)
        return self

    def fit(self, data: Any, *, seed: int = 0, device: Any = "cpu",
            progress: bool = True) -> "ImageVAETokenizer":
        """Train the autoencoder on ``data`` (a dataset of ``{"image": ...}`` items), then
        measure the latent shift and scale.

        Loss per batch: ``error(x_rec, x) + kl_weight * KL(q(z|x) || N(0, I)) / (l y x)``
        (error: mean L1 or squared error per pixel), with ``z`` sampled from the posterior
        (the reparameterisation trick).

        Raises:
            DataError: the dataset is empty or its images have the wrong shape.
        """
        n = len(data)
        if n == 0:
            raise DataError("the image dataset is empty: nothing to fit the VAE on")
        probe = dataset_images(data, [0])
        expected = self.image_shape
        if tuple(probe.shape[1:]) != expected:
            raise DataError(f"the VAE expects images of shape (c, h, w) = {expected}, the "
                            f"dataset gives {tuple(probe.shape[1:])}; set its in_channels / "
                            "image_size ([height, width] for a rectangle) to match the data")
        threads = torch.get_num_threads()
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        generator = torch.Generator().manual_seed(seed)
        vae = self.vae.to(device).train().requires_grad_(True)
        optimizer = torch.optim.AdamW(vae.parameters(), lr=self.lr, weight_decay=0.0)
        warmup = max(1, self.fit_steps // 20)
        bar = tqdm(range(self.fit_steps), desc="fit image VAE", disable=not progress,
                   dynamic_ncols=True)
        try:
            for step in bar:
                lr_scale = cosine_with_warmup(step, warmup_steps=warmup,
                                              total_steps=self.fit_steps, min_lr_ratio=0.1)
                for group in optimizer.param_groups:
                    group["lr"] = self.lr * lr_scale
                indices = torch.randint(0, n, (self.batch_size,), generator=generator)
                x = dataset_images(data, indices).to(device)  # (b, c, h, w)
                posterior = vae.encode(x).latent_dist
                z = posterior.mean + posterior.std * torch.randn(
                    posterior.mean.shape, generator=generator).to(device)
                x_rec = vae.decode(z).sample
                error = F.l1_loss if self.reconstruction_loss == "l1" else F.mse_loss
                rec = error(x_rec.float(), x)
                kl = posterior.kl().mean() / z[0].numel()
                loss = rec + self.kl_weight * kl
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
                optimizer.step()
                if step % 10 == 0:
                    bar.set_postfix(rec=f"{rec.item():.4f}", kl=f"{kl.item():.2f}", refresh=False)
        finally:
            bar.close()
            vae.eval().requires_grad_(False)
            torch.set_num_threads(threads)
        self.fit_stats = {f"final_{self.reconstruction_loss}": float(rec.item())}
        self._measure_latent_scale(data, generator)
        self._trained = True
        return self

    @torch.no_grad()
    def _measure_latent_scale(self, data: Any, generator: torch.Generator,
                              num_images: int = 2048) -> None:
        """Set ``shift_factor`` and ``scaling_factor`` to the mean and 1/std of raw latents."""
        n = len(data)
        indices = torch.randperm(n, generator=generator)[: min(n, num_images)]
        raw = self._encode_raw(dataset_images(data, indices))
        self.shift_factor = float(raw.mean())
        self.scaling_factor = float(1.0 / raw.std().clamp_min(1e-6))

    def save(self, directory: str | Path) -> None:
        """Write ``vae.safetensors`` (weights) and ``vae.json`` (latent scale and shape)."""
        if not self._trained:
            raise RuntimeError("the image VAE is not trained: call fit() or load() first")
        directory = Path(directory)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.vae.state_dict().items()}
        save_file(weights, directory / WEIGHTS_FILE, metadata={"format": "pt"})
        meta = {"format": FORMAT, "scaling_factor": self.scaling_factor,
                "shift_factor": self.shift_factor, "latent_shape": list(self.latent_shape),
                "in_channels": self.in_channels, "image_size": self.image_size,
                "height": self.height, "width": self.width,
                **getattr(self, "fit_stats", {})}
        (directory / META_FILE).write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, directory: str | Path, **config: Any) -> "ImageVAETokenizer":
        """Rebuild from ``directory``; ``config`` is the ``tokenizers.image`` section.

        Raises:
            CheckpointError: files missing or unreadable, or weights that do not fit ``config``.
        """
        directory = Path(directory)
        missing = [f for f in (WEIGHTS_FILE, META_FILE) if not (directory / f).is_file()]
        if missing:
            raise CheckpointError(f"image VAE in {directory} is partial: missing "
                                  f"{', '.join(missing)}")
        try:
            meta = json.loads((directory / META_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read {directory / META_FILE}: {exc}") from None
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{directory / META_FILE} has format {meta.get('format')!r}; "
                                  f"this version reads {FORMAT!r}")
        self = cls(**config)
        load_weights(self.vae, directory / WEIGHTS_FILE)
        self.scaling_factor = float(meta["scaling_factor"])
        self.shift_factor = float(meta["shift_factor"])
        self._trained = True
        return self

    # -- use ------------------------------------------------------------------------------------
    def _encode_raw(self, images: torch.Tensor, chunk: int = 512) -> torch.Tensor:
        device = self.device
        parts = [self.vae.encode(images[i : i + chunk].to(device)).latent_dist.mean
                 for i in range(0, len(images), chunk)]
        return torch.cat(parts) if parts else torch.zeros(0, *self.latent_shape, device=device)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (b, c, h, w) in [-1, 1] -> scaled latents (b, l, y, x), about unit variance
        (``h`` and ``w`` multiples of ``downsample_factor``; ``y = h / factor``)."""
        return (self._encode_raw(images.float()) - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, chunk: int = 512) -> torch.Tensor:
        """Scaled latents (b, l, y, x) -> images (b, c, h, w) (``h = y * factor``), clamped to
        [-1, 1]."""
        device = self.device
        raw = latents.float().to(device) / self.scaling_factor + self.shift_factor
        parts = [self.vae.decode(raw[i : i + chunk]).sample for i in range(0, len(raw), chunk)]
        return torch.cat(parts).clamp(-1, 1)

    def __repr__(self) -> str:
        state = f"scale={self.scaling_factor:.3f}" if self._trained else "untrained"
        return f"ImageVAETokenizer(latents={self.latent_shape}, {state})"
