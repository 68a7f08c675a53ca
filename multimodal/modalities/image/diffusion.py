"""The denoising loss of latent diffusion, shared by the image and video objectives.

The denoiser predicts the noise ``eps`` (Ho et al. 2020, "Denoising Diffusion Probabilistic
Models", https://arxiv.org/abs/2006.11239) or the velocity ``v = sqrt(alpha_bar) eps -
sqrt(1 - alpha_bar) x0`` (Salimans & Ho 2022, https://arxiv.org/abs/2202.00512) of the noised
latents ``x_t``; the loss is the mean squared error per item, optionally weighted by Min-SNR
(Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy",
https://arxiv.org/abs/2303.09556), then averaged over the batch.

Axes: b batch; ``...`` the latent axes of one item ((l, y, x) for an image, (t, l, y, x) for a
video).
"""

from __future__ import annotations

from typing import Any

import torch
from einops import reduce


def diffusion_loss(prediction: torch.Tensor, *, x0: torch.Tensor, noise: torch.Tensor,
                   timesteps: torch.Tensor, scheduler: Any, prediction_type: str,
                   snr_gamma: float | None = None) -> torch.Tensor:
    """Mean squared error of an ``eps`` or ``v`` prediction, Min-SNR weighted per item.

    Args:
        prediction: (b, ...) the denoiser's output for ``x_t = scheduler.add_noise(x0, noise,
            timesteps)``.
        x0: (b, ...) clean latents.
        noise: (b, ...) the Gaussian noise added to them.
        timesteps: (b,) long training timesteps.
        scheduler: The denoiser's training scheduler (a diffusers DDPM scheduler: its
            ``alphas_cumprod`` and ``get_velocity``).
        prediction_type: ``"epsilon"`` or ``"v_prediction"``.
        snr_gamma: Min-SNR's ``gamma``: each item's error is scaled by ``min(snr, gamma) /
            snr`` (epsilon) or ``min(snr, gamma) / (snr + 1)`` (v); ``None`` leaves it out.

    Returns:
        The scalar loss (float32).
    """
    if prediction_type == "epsilon":
        target = noise
    else:
        target = scheduler.get_velocity(x0, noise, timesteps)
    error = reduce((prediction.float() - target.float()).square(), "b ... -> b", "mean")
    if snr_gamma is not None:
        alphas_cumprod = scheduler.alphas_cumprod.to(x0.device)[timesteps]  # (b,)
        snr = alphas_cumprod / (1 - alphas_cumprod)
        clipped = snr.clamp(max=snr_gamma)
        # min(snr, gamma) on the x0 error, whose eps error is snr times larger, v's snr + 1
        error = error * (clipped / snr if prediction_type == "epsilon" else clipped / (snr + 1))
    return error.mean()
