"""Learning-rate schedules: linear warm-up, then cosine decay to a floor (SGDR, Loshchilov &
Hutter 2017, https://arxiv.org/abs/1608.03983, without restarts).

One schedule serves every optimiser of the project: the trainer, the VAE fit and the vocoder
fit. It is a pure function of the step, so a resumed run sets the same rate as the run that was
never interrupted. Diffusers' ``get_cosine_schedule_with_warmup`` decays to zero and warms up
from zero; this one warms up to ``(step + 1) / warmup_steps`` and keeps a floor, so
:func:`cosine_schedule_with_warmup` wraps it in a ``LambdaLR`` for code that wants a torch
scheduler.
"""

from __future__ import annotations

import math

import torch


def cosine_with_warmup(step: int, *, warmup_steps: int, total_steps: int,
                       min_lr_ratio: float = 0.0) -> float:
    """The multiplier of the peak learning rate at ``step`` (0-based).

    Args:
        step: The optimizer step about to be taken.
        warmup_steps: Steps of linear warm-up, ``(step + 1) / warmup_steps`` (>= 1).
        total_steps: Steps in all; the cosine reaches ``min_lr_ratio`` here and stays.
        min_lr_ratio: The floor, as a share of the peak rate (default 0).

    Returns:
        A float in ``(0, 1]``.
    """
    warmup_steps = max(1, warmup_steps)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_schedule_with_warmup(optimizer: torch.optim.Optimizer, *, warmup_steps: int,
                                total_steps: int, min_lr_ratio: float = 0.0
                                ) -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`cosine_with_warmup` as a torch ``LambdaLR`` over ``optimizer``'s peak rates."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_with_warmup(step, warmup_steps=warmup_steps,
                                                   total_steps=total_steps,
                                                   min_lr_ratio=min_lr_ratio))
