"""Data-parallel training across processes started by ``torchrun`` (gloo on CPU, NCCL on CUDA).

``torchrun --standalone --nproc_per_node=N -m multimodal train CONFIG`` starts N copies of the
trainer; :func:`init_distributed` reads torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``) and joins the process group. Every rank draws the
same global batch from the step's seeded generator and keeps its own 1/N slice of it (a
distributed sampler without a data loader, so batches stay a pure function of the step and
``--resume`` stays exact); after the backward passes the gradients are averaged with one
all-reduce over a flat bucket, which is what ``DistributedDataParallel`` computes (Li et al.
2020, https://arxiv.org/abs/2006.15704), without its module wrapper: the trainer calls each
modality's ``loss(backbone, decoder, batch)`` separately, which does not fit DDP's
one-forward-per-backward contract. Rank 0 alone fits the tokenizers, writes checkpoints and
logs, and shows the progress bar. ``train.strategy: fsdp`` shards the model instead
(:mod:`multimodal.training.fsdp`); batches are drawn and cut the same way.

Several machines: ``torchrun --nnodes=2 --nproc_per_node=N --rdzv-backend=c10d
--rdzv-endpoint=HOST:PORT -m multimodal train CONFIG`` on each (the same command; HOST is one
of them). ``LOCAL_RANK`` picks the GPU on each machine, ``RANK`` the slice of the batch; the
run directory must be on a file system every machine sees (rank 0 hands its fitted tokenizers
over through it, and every rank writes its shard of a sharded checkpoint there).

Fitting the tokenizers can take longer than the process group's timeout (gloo's default is 30
minutes; a speech config's vocoder fits for about 40), so the other ranks do not wait for it in
a collective: they poll for the file rank 0 writes when it is done (:func:`wait_for_file`, no
time limit; torchrun ends them if rank 0 fails), then meet it at a barrier.
"""

from __future__ import annotations

import importlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from multimodal.errors import ConfigError, TrainingError


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job (``world_size`` 1: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: bool = False  # whether this process joined a process group (fsdp: even alone)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def all_reduce_mean_(self, tensors: list[torch.Tensor]) -> None:
        """Average ``tensors`` in place across ranks (one all-reduce of a flat bucket)."""
        if not self.enabled or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        torch.distributed.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Copy rank 0's ``tensors`` to every rank, in place."""
        if self.enabled:
            for t in tensors:
                torch.distributed.broadcast(t, src=0)

    def shard(self, batch: dict, batch_size: int) -> dict:
        """This rank's slice of a global batch of ``batch_size``: every tensor (or list) whose
        first axis is ``batch_size`` is cut into ``world_size`` equal parts."""
        if not self.enabled:
            return batch
        per = batch_size // self.world_size
        lo, hi = self.rank * per, (self.rank + 1) * per
        out = {}
        for key, value in batch.items():
            if torch.is_tensor(value) and value.dim() and value.shape[0] == batch_size:
                out[key] = value[lo:hi]
            elif isinstance(value, (list, tuple)) and len(value) == batch_size:
                out[key] = value[lo:hi]
            else:
                out[key] = value
        return out


def under_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (which sets ``RANK`` and
    ``WORLD_SIZE``)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: torch.device, *, strategy: str = "ddp") -> Distributed:
    """Join the process group torchrun describes in the environment (no-op without one,
    and for a single ``ddp`` process).

    Args:
        device: This process's device type decides the backend: NCCL on CUDA, else gloo.
        strategy: ``"fsdp"`` needs ``torchrun`` and joins a group even as its only process
            (FSDP's collectives need one).

    Raises:
        ConfigError: CUDA training with more processes than GPUs; ``fsdp`` without
            ``torchrun``.
    """
    if strategy == "fsdp" and not under_torchrun():
        raise ConfigError(
            "train.strategy is 'fsdp', which shards the model over the processes of a "
            "torchrun job, but this process was not started by torchrun; launch it with "
            "`torchrun --standalone --nproc_per_node=N -m multimodal train CONFIG` (N >= 1), "
            "or train without sharding: train.strategy=ddp")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and strategy != "fsdp":
        return Distributed()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(f"process {rank} wants GPU {local}, but only "
                              f"{torch.cuda.device_count()} are visible; lower --nproc_per_node")
        torch.cuda.set_device(local)
    if not torch.distributed.is_initialized():
        # Imported lazily (by the first optimizer), torch._dynamo keeps references to the
        # process group that exists then, so destroy_process_group cannot free it and its gloo
        # worker threads outlive the interpreter: now and then one releases a tensor during
        # interpreter shutdown and the process aborts ("terminate called without an active
        # exception"). Imported before the group exists, it keeps none.
        importlib.import_module("torch._dynamo")
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank=rank, world_size=world, local_rank=local, group=True)


def check_shardable(dist: Distributed, batch_size: int) -> None:
    """Raise :class:`ConfigError` unless the global ``batch_size`` splits evenly over ranks."""
    if dist.enabled and (batch_size < dist.world_size or batch_size % dist.world_size):
        raise ConfigError(
            f"train.batch_size {batch_size} is the global batch and must split evenly over the "
            f"{dist.world_size} processes (one shard each); use a multiple of "
            f"{dist.world_size} (e.g. {dist.world_size * (batch_size // dist.world_size + 1)}) "
            f"or fewer processes")


def wait_for_file(path: Path, *, failed: Path | None = None, poll_s: float = 1.0) -> None:
    """Block, with no time limit, until ``path`` exists (written by rank 0 when a long step
    is done).

    Raises:
        TrainingError: ``failed`` appeared instead (rank 0 gave up; its own error says why).
    """
    while not path.exists():
        if failed is not None and failed.exists():
            raise TrainingError(f"process 0 failed while this one waited for {path}; see "
                                "its error")
        time.sleep(poll_s)


def shutdown(dist: Distributed) -> None:
    if dist.group and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def metric_tensor(metrics: dict[str, Any]) -> tuple[list[str], torch.Tensor]:
    keys = sorted(k for k, v in metrics.items() if isinstance(v, float))
    return keys, torch.tensor([metrics[k] for k in keys], dtype=torch.float64)
