"""A pretrained ``AutoencoderKL`` from a local diffusers folder as the image tokenizer
(``tokenizers.image: {type: diffusers_vae, path: DIR}``): a Stable Diffusion style VAE, frozen
(``fit_steps: 0``, the default) or fine-tuned on the training images first (``fit_steps > 0``,
the fitting of :class:`ImageVAETokenizer`).

Latents are the folder's convention: ``(mean - shift_factor) * scaling_factor`` with the
``scaling_factor`` and ``shift_factor`` (0 when absent) of its ``config.json``, as diffusers'
pipelines scale them; fine-tuning keeps them. A checkpoint keeps the VAE as a diffusers folder in
``tokenizers/<name>/`` and loads that copy, never ``path``.

Axes: b batch, c image channels, h w image height and width, l latent channels, y x latent
height and width.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

from multimodal.data.images import image_height_width
from multimodal.errors import CheckpointError, DataError
from multimodal.modalities.image.vae import ImageVAETokenizer
from multimodal.registry import tokenizers


def _load_vae(folder: Path):
    # deferred: diffusers takes ~1.5 s to import
    from diffusers import AutoencoderKL

    if not folder.is_dir():
        raise ValueError(f"VAE folder not found: {folder}")
    config_file = folder / "config.json"
    if not config_file.is_file():
        present = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
        raise ValueError(f"{folder} is not a diffusers model folder: it has no config.json "
                         f"(it holds {present})")
    try:
        config = AutoencoderKL.load_config(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {config_file}: {str(exc).splitlines()[0]}") from None
    kind = config.get("_class_name")
    if kind != "AutoencoderKL":
        what = kind or "model of unknown class"
        article = "an" if what[0].lower() in "aeiou" else "a"
        raise ValueError(f"{folder} holds {article} {what}, not an "
                         "AutoencoderKL")
    if not (folder / "diffusion_pytorch_model.safetensors").is_file():
        raise ValueError(f"{folder} has no diffusion_pytorch_model.safetensors (pickle weights "
                         "are never loaded; save it with safe_serialization=True)")
    try:
        vae = AutoencoderKL.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                            torch_dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"cannot load the VAE in {folder}: {str(exc).splitlines()[0]}") from None
    return vae.eval().requires_grad_(False)


@tokenizers.register("diffusers_vae")
class DiffusersVAETokenizer(ImageVAETokenizer):
    """Images <-> latents through a pretrained diffusers ``AutoencoderKL``.

    Args:
        path: The folder (``config.json`` + ``diffusion_pytorch_model.safetensors``).
        image_size: Side of square training images, or ``[height, width]`` (default: the
            VAE's ``sample_size``); each must divide by the VAE's down-sampling factor.
        fit_steps: Fine-tuning steps on the training images before the backbone trains
            (default 0: frozen).
        batch_size, lr, kl_weight, reconstruction_loss, num_threads, fit_on: Fine-tuning
            settings, as for ``image_vae`` (used only when ``fit_steps > 0``).

    Raises:
        ValueError: ``path`` is not a diffusers ``AutoencoderKL`` folder, or ``image_size`` does
            not divide by the down-sampling factor.
    """

    @staticmethod
    def pretrained(section: dict) -> bool:
        """Whether a ``tokenizers.<name>`` section needs no data: frozen (``fit_steps`` 0)."""
        steps = section.get("fit_steps", 0)
        return isinstance(steps, int) and steps <= 0

    def __init__(self, *, path: str, image_size: int | tuple[int, int] | None = None,
                 fit_steps: int = 0,
                 batch_size: int = 16, lr: float = 1e-4, kl_weight: float = 1e-6,
                 reconstruction_loss: Literal["l1", "mse"] = "l1",
                 num_threads: int | None = None, fit_on: str = "image"):
        # The parent's __init__ builds a fresh VAE; this one is read, so the attributes the
        # parent's methods use are set here.
        self.vae = _load_vae(Path(path).expanduser())
        self._configure(image_size=image_size, fit_steps=fit_steps, batch_size=batch_size,
                        lr=lr, kl_weight=kl_weight, reconstruction_loss=reconstruction_loss,
                        num_threads=num_threads, fit_on=fit_on)
        self._trained = fit_steps <= 0

    def _configure(self, *, image_size, fit_steps, batch_size, lr, kl_weight,
                   reconstruction_loss, num_threads, fit_on) -> None:
        cfg = self.vae.config
        self.in_channels, self.latent_channels = int(cfg.in_channels), int(cfg.latent_channels)
        self.downsample_factor = 2 ** (len(cfg.block_out_channels) - 1)
        size = cfg.sample_size if image_size is None else image_size
        height, width = image_height_width(
            [int(v) for v in size] if isinstance(size, (list, tuple)) else int(size))
        if height % self.downsample_factor or width % self.downsample_factor:
            raise ValueError(f"image_size {size} must divide by the VAE's down-sampling "
                             f"factor {self.downsample_factor} (height and width)")
        self._set_size(height, width)
        if reconstruction_loss not in ("l1", "mse"):
            raise ValueError(f"reconstruction_loss must be 'l1' or 'mse', got "
                             f"{reconstruction_loss!r}")
        self.fit_steps, self.batch_size, self.lr = fit_steps, batch_size, lr
        self.kl_weight, self.num_threads = kl_weight, num_threads
        self.reconstruction_loss, self.fit_on = reconstruction_loss, fit_on
        self.scaling_factor = float(cfg.scaling_factor if cfg.scaling_factor is not None else 1.0)
        shift = getattr(cfg, "shift_factor", None)
        self.shift_factor = float(shift) if shift is not None else 0.0

    def _measure_latent_scale(self, data: Any, generator: torch.Generator,
                              num_images: int = 2048) -> None:
        """Fine-tuning keeps the folder's ``scaling_factor`` and ``shift_factor``."""

    def save(self, directory: str | Path) -> None:
        """Write the VAE as a diffusers folder (``save_pretrained``) into ``directory``."""
        self.vae.save_pretrained(str(directory), safe_serialization=True)

    @classmethod
    def load(cls, directory: str | Path, **config: Any) -> "DiffusersVAETokenizer":
        """Read the copy a checkpoint holds in ``directory``; ``config`` is the
        ``tokenizers.image`` section (its ``path`` is not read).

        Raises:
            CheckpointError: the directory holds no loadable AutoencoderKL.
        """
        config.pop("path", None)
        self = cls.__new__(cls)
        try:
            self.vae = _load_vae(Path(directory))
        except ValueError as exc:
            raise CheckpointError(f"image VAE in {directory}: {exc}") from None
        settings = {k: config.get(k, v) for k, v in (
            ("image_size", None), ("fit_steps", 0), ("batch_size", 16), ("lr", 1e-4),
            ("kl_weight", 1e-6), ("reconstruction_loss", "l1"), ("num_threads", None),
            ("fit_on", "image"))}
        self._configure(**settings)
        self._trained = True
        return self

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (b, c, h, w) in [-1, 1] -> scaled latents (b, l, y, x).

        Raises:
            DataError: images of other channels than the VAE's, or a height or width that is
                not a multiple of its down-sampling factor.
        """
        factor = self.downsample_factor
        if images.dim() != 4 or images.shape[1] != self.in_channels or \
                images.shape[2] % factor or images.shape[3] % factor:
            raise DataError(f"the VAE of tokenizers.image takes images (b, c, h, w) of "
                            f"{self.in_channels} channel(s) with h and w multiples of {factor} "
                            f"(fitted at {self.image_shape}), the data gives "
                            f"{tuple(images.shape[1:])}; use data of {self.in_channels} "
                            "channel(s), or a VAE made for the data's channels, and set "
                            "image_size to the data's size")
        return super().encode(images)

    def __repr__(self) -> str:
        return (f"DiffusersVAETokenizer(latents={self.latent_shape}, "
                f"scale={self.scaling_factor:.4f})")
