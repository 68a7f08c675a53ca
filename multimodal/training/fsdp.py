"""Fully sharded data parallelism (FSDP2) and activation checkpointing for the trainer.

``train.strategy: fsdp`` shards the parameters, gradients and optimizer state of the model
over the processes of a ``torchrun`` job with PyTorch's ``fully_shard`` (FSDP2: each
parameter a ``DTensor`` cut along its first axis; Zhao et al. 2023,
https://arxiv.org/abs/2304.11277). The units of communication are the model's *repeated
blocks* (the children of every ``nn.ModuleList`` whose items share one class: the backbone's
Transformer blocks, a DiT's blocks), each all-gathered just before its forward and backward
and freed after; everything else (embeddings, norms, heads, the rest of each decoder) forms the
root unit, gathered for the whole of a loss computation.

The trainer calls each modality's ``loss(backbone, decoder, batch)``, which may call any
method of a decoder, not only ``forward``: so the root unit is a small module,
:class:`LossRunner`, whose ``forward`` runs a function of the model, and FSDP's hooks wrap
that call. The tied LM head reads the embedding of the root unit, gathered for the whole call.

Mixed precision (:func:`shard_model`): with ``precision: bf16`` on CUDA the gathered
parameters are bf16 for the compute and gradients are reduced in fp32
(``MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)``); on CPU the parameters
stay fp32 and the trainer's bf16 autocast, when asked for, does the casting as without FSDP.
Frozen parameters (``train.freeze``) and LoRA's frozen base weights are sharded too and get no
gradient; only the parameters that train have optimizer state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def repeated_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every repeated block: an item of an ``nn.ModuleList`` of two or
    more modules of one class, outermost lists only (a block's own inner lists stay in it)."""
    found: list[tuple[str, nn.Module]] = []
    taken: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in taken):
            continue
        if (isinstance(module, nn.ModuleList) and len(module) >= 2
                and len({type(m) for m in module}) == 1
                and any(True for _ in module[0].parameters())):
            found += [(f"{name}.{i}", m) for i, m in enumerate(module)]
            taken += [f"{name}.{i}" for i in range(len(module))]
    return found


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Recompute every repeated block's activations in the backward pass instead of keeping
    them (non-reentrant ``torch.utils.checkpoint``, which replays the block's random state, so
    dropout draws the same masks and training stays exact). Parameter names do not change.
    Only while gradients are recorded: generation is untouched.

    Returns:
        The number of blocks checkpointed.
    """
    blocks = repeated_blocks(model)
    for _, block in blocks:
        block.forward = _checkpointed(block.forward)
    return len(blocks)


def _checkpointed(forward: Callable) -> Callable:
    @functools.wraps(forward)
    def run(*args, **kwargs):
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return run


class LossRunner(nn.Module):
    """The root FSDP unit: ``runner(fn, *args)`` is ``fn(model, *args)`` with the model's
    parameters gathered (see the module docstring)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self.model, *args)


def shard_model(model: nn.Module, *, device: torch.device, world_size: int,
                precision: str) -> LossRunner:
    """Shard ``model`` in place over ``world_size`` processes (the default process group
    must exist) and return the :class:`LossRunner` to compute losses through.

    Args:
        model: The whole model, identical on every process, already on ``device``.
        device: This process's device (``cpu`` under gloo, ``cuda:N`` under NCCL).
        world_size: Processes in the job.
        precision: ``"fp32"`` or ``"bf16"`` (bf16 compute on CUDA; see the module docstring).
    """
    # deferred: torch.distributed.fsdp pulls in the distributed tensor machinery, which a
    # run without strategy fsdp never needs
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    on_gpu = device.type == "cuda" and precision == "bf16"
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if on_gpu else None,
                                  reduce_dtype=torch.float32)
    for _, block in repeated_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    runner = LossRunner(model)
    fully_shard(runner, mesh=mesh, mp_policy=policy)
    return runner


def full_value(tensor: torch.Tensor) -> torch.Tensor:
    """The whole value of a possibly sharded tensor (a collective when it is a ``DTensor``)."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
