"""Sampling schedulers, chosen by registry name: factories that build a diffusers scheduler from
a denoiser's training noise schedule.

* ``ddpm``: ancestral sampling of Ho et al. 2020 (https://arxiv.org/abs/2006.11239).
* ``ddim``: deterministic DDIM, Song et al. 2021 (https://arxiv.org/abs/2010.02502).
* ``dpm_solver_multistep``: DPM-Solver++ (2M), Lu et al. 2022
  (https://arxiv.org/abs/2211.01095); good samples in 15-25 steps.
* ``euler``: Euler's method on the probability-flow ODE in sigma space, Karras et al. 2022
  (https://arxiv.org/abs/2206.00364); needs ``scale_model_input`` and ``init_noise_sigma``,
  which the pipeline applies to every scheduler.

All use "trailing" timestep spacing (Lin et al. 2023, https://arxiv.org/abs/2305.08891), so the
first step starts at the last training timestep, where the latents are pure noise.

Pipelines own the loop; a scheduler never calls a model.
"""

from __future__ import annotations

from typing import Any

from multimodal.registry import schedulers

SPACING = "trailing"


def _schedule_kwargs(num_train_timesteps: int, beta_start: float, beta_end: float,
                     beta_schedule: str, prediction_type: str) -> dict[str, Any]:
    return {"num_train_timesteps": num_train_timesteps, "beta_start": beta_start,
            "beta_end": beta_end, "beta_schedule": beta_schedule,
            "prediction_type": prediction_type, "timestep_spacing": SPACING}


@schedulers.register("ddpm")
def ddpm(*, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
         beta_schedule: str = "linear", prediction_type: str = "epsilon"):
    """DDPM ancestral sampler (diffusers ``DDPMScheduler``)."""
    from diffusers import DDPMScheduler  # deferred: diffusers takes ~1.5 s to import

    return DDPMScheduler(**_schedule_kwargs(num_train_timesteps, beta_start, beta_end,
                                            beta_schedule, prediction_type), clip_sample=False)


@schedulers.register("ddim")
def ddim(*, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
         beta_schedule: str = "linear", prediction_type: str = "epsilon"):
    """Deterministic DDIM sampler (diffusers ``DDIMScheduler``, eta 0)."""
    from diffusers import DDIMScheduler  # deferred: diffusers takes ~1.5 s to import

    return DDIMScheduler(**_schedule_kwargs(num_train_timesteps, beta_start, beta_end,
                                            beta_schedule, prediction_type),
                         clip_sample=False, set_alpha_to_one=True)


@schedulers.register("dpm_solver_multistep")
def dpm_solver_multistep(*, num_train_timesteps: int = 1000, beta_start: float = 1e-4,
                         beta_end: float = 0.02, beta_schedule: str = "linear",
                         prediction_type: str = "epsilon"):
    """DPM-Solver++ 2M (diffusers ``DPMSolverMultistepScheduler``, ``dpmsolver++``)."""
    from diffusers import DPMSolverMultistepScheduler  # deferred: diffusers takes ~1.5 s to import

    return DPMSolverMultistepScheduler(
        **_schedule_kwargs(num_train_timesteps, beta_start, beta_end, beta_schedule,
                           prediction_type),
        algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True)


@schedulers.register("euler")
def euler(*, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
          beta_schedule: str = "linear", prediction_type: str = "epsilon"):
    """Euler sampler in sigma space (diffusers ``EulerDiscreteScheduler``)."""
    from diffusers import EulerDiscreteScheduler  # deferred: diffusers takes ~1.5 s to import

    return EulerDiscreteScheduler(**_schedule_kwargs(num_train_timesteps, beta_start, beta_end,
                                                     beta_schedule, prediction_type))


def make_scheduler(name: str, noise_schedule: dict[str, Any]):
    """Build the scheduler registered as ``name`` for a denoiser's ``noise_schedule``.

    Raises:
        UnknownComponentError: no scheduler of that name (with a did-you-mean).
    """
    return schedulers.get(name)(**noise_schedule)
