"""A memory plan before launch: what one process of a run will hold, and the largest batch
that fits.

:func:`memory_plan` builds the model of a config on PyTorch's ``meta`` device (shapes, no
memory, no data, no tokenizer fitting: a plan of a model larger than this machine costs
nothing) and counts, per process:

* **parameters**: every weight, fp32; ``strategy: fsdp`` keeps ``1/N`` of each (its first
  axis padded to a multiple of ``N``, as ``fully_shard`` does);
* **gradients** and **optimizer state** (AdamW: two moments and a step count per trainable
  weight), likewise whole or ``1/N``;
* **activations**: the tensors autograd keeps for the backward pass, counted by running each
  modality's loss on ``meta`` tensors of the process's micro-batch under
  ``torch.autograd.graph.saved_tensors_hooks`` (bytes of each saved activation, weights not
  counted), at 1 and 2 samples, so the figure is ``fixed + per_sample * batch``; with
  ``train.activation_checkpointing`` only the blocks' inputs are kept, plus one block's
  activations while it is recomputed;
* **working memory**: the gradient buffers of the largest activation at the start of the
  backward pass (two of its size), or with checkpointing one block's recomputed activations
  when larger; under DDP the flat all-reduce bucket (one more copy of the gradients); under FSDP the
  gathered root unit (its weights and their gradients, whole) and two gathered blocks (the
  one computing and the one prefetched), their gradients before the reduce-scatter.

Only modalities whose batches can be made from shapes alone are probed (text: token windows
of ``train.seq_len``); the plan names the others, whose activations it leaves out (its total
is then a lower bound).

The largest batch that fits solves ``total(batch) <= memory`` for a global batch that splits
evenly over the processes.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from multimodal.builders import build_modalities, build_model, build_tokenizers
from multimodal.errors import InputError
from multimodal.nn.lora import apply_lora, freeze
from multimodal.train_config import TrainConfig, sampling_shares
from multimodal.training.fsdp import repeated_blocks

_UNITS = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9,
          "T": 1e12, "TB": 1e12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_memory(text: str) -> int:
    """Bytes of a size such as ``24GB``, ``80GiB``, ``512MB`` or ``1e9``.

    Raises:
        InputError: not a size.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else ""
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise InputError(f"--memory {text!r} is not a size; give e.g. 24GB, 80GiB or 512MB")
    return int(float(match.group(1)) * _UNITS[unit])


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


@dataclass
class MemoryPlan:
    """Bytes one process holds (see the module docstring); ``total`` at ``batch_size``."""

    strategy: str
    precision: str
    device: str
    processes: int
    batch_size: int
    activation_checkpointing: bool
    params: int
    grads: int
    optimizer: int
    activations: int
    working: int
    activation_fixed: int
    activation_per_sample: int
    working_per_sample: int
    not_estimated: list[str] = field(default_factory=list)
    memory: int | None = None

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations + self.working

    def total_at(self, batch_size: int) -> int:
        """The total at another global batch size."""
        local = batch_size // self.processes
        static = self.params + self.grads + self.optimizer
        working = self.working - self.working_per_sample * (self.batch_size // self.processes)
        return int(static + working + self.activation_fixed
                   + (self.activation_per_sample + self.working_per_sample) * local)

    @property
    def fits(self) -> bool:
        return self.memory is None or self.total <= self.memory

    @property
    def largest_batch(self) -> int | None:
        """The largest global batch (a multiple of the process count) whose total fits
        ``memory``; 0 when not even the model fits; ``None`` without a memory."""
        if self.memory is None:
            return None
        per = self.activation_per_sample + self.working_per_sample
        room = self.memory - self.total_at(0)
        if room < 0:
            return 0
        if per <= 0:
            return None
        return int(room // per) * self.processes

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total, "fits": self.fits,
                "largest_batch": self.largest_batch}

    def format(self) -> str:
        """The plan as a user reads it."""
        n = self.processes
        head = (f"memory plan, per process: strategy {self.strategy}, {n} process"
                f"{'es' if n > 1 else ''}, precision {self.precision} on {self.device}, "
                f"global batch {self.batch_size} ({self.batch_size // n} per process)"
                + (", activation checkpointing" if self.activation_checkpointing else ""))
        rows = [("parameters", self.params), ("gradients", self.grads),
                ("optimizer state", self.optimizer), ("activations", self.activations),
                ("working memory", self.working)]
        lines = [head] + [f"  {name:16s} {_size(value):>10s}" for name, value in rows]
        lines.append(f"  {'total':16s} {_size(self.total):>10s}")
        if self.not_estimated:
            lines.append(f"  (activations of {', '.join(self.not_estimated)} not estimated: "
                         "the total is a lower bound)")
        if self.memory is not None:
            verdict = "fits" if self.fits else "does NOT fit"
            lines.append(f"  memory {_size(self.memory)}: {verdict}; the largest global batch "
                         f"that fits: {self.largest_batch}")
        return "\n".join(lines)


# -- counting ----------------------------------------------------------------------------------
def _sharded_bytes(p: torch.Tensor, processes: int) -> int:
    if processes <= 1 or p.dim() == 0:
        return p.numel() * p.element_size()
    rows = math.ceil(p.shape[0] / processes)
    return rows * (p.numel() // max(p.shape[0], 1)) * p.element_size()


class _PlannedTokenizer:
    """An untrained tokenizer's sizes, as the builder reads them (the BPE's target
    vocabulary), without fitting it."""

    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer

    def __getattr__(self, name: str) -> Any:
        if name == "vocab_size" and hasattr(self._tokenizer, "target_vocab_size"):
            return self._tokenizer.target_vocab_size
        return getattr(self._tokenizer, name)


def build_planned_model(config: dict, checkpoint_dir: Path | None = None) -> nn.Module:
    """The model of ``config`` on the ``meta`` device, frozen and adapted as the trainer
    does (``train.freeze``, ``train.lora``); of a run resumed from ``checkpoint_dir``, built
    from that checkpoint's tokenizers and stored files, as the trainer builds it."""
    # deferred: checkpoint.py imports the pipelines' modules; only a resumed plan reads one
    from multimodal.checkpoint import load_tokenizers

    cfg = TrainConfig.from_config(config)
    built = (load_tokenizers(Path(checkpoint_dir), config) if checkpoint_dir is not None
             else build_tokenizers(config))
    tokenizers = {k: _PlannedTokenizer(t) for k, t in built.items()}
    with torch.device("meta"):
        model = build_model(config, tokenizers, adapters=False, checkpoint_dir=checkpoint_dir)
        if cfg.freeze:
            freeze(model, list(cfg.freeze))
        if cfg.lora is not None:
            apply_lora(model, **asdict(cfg.lora))
    return model


def _probe_batch(name: str, modality: Any, config: dict, local: int) -> dict | None:
    """A batch of ``local`` samples made from shapes alone, or ``None`` (not probed)."""
    if type(modality).__name__ == "TextModality":
        seq_len = TrainConfig.from_config(config).seq_len
        return {"input_ids": torch.zeros(local, seq_len + 1, dtype=torch.long, device="meta")}
    return None


@dataclass
class _Saved:
    total: int = 0
    largest: int = 0
    in_blocks: dict[int, int] = field(default_factory=dict)
    block_inputs: int = 0


def _saved_activations(model: nn.Module, loss_fn) -> _Saved:
    """Bytes autograd saves while ``loss_fn()`` runs (weights and their views not counted),
    in all and per repeated block, and the blocks' input bytes."""
    weights = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: set[int] = set()  # storages counted (one tensor is often saved by several ops)
    saved = _Saved()
    current: list[int] = []
    handles = []
    for i, (_, block) in enumerate(repeated_blocks(model)):
        def enter(module, args, kwargs, i=i):
            current.append(i)
            first = next((a for a in args if torch.is_tensor(a)), None)
            if first is not None and first.is_floating_point():
                saved.block_inputs += first.numel() * first.element_size()

        def leave(*_):
            current.pop()  # (returns None: the block's output stands)

        handles.append(block.register_forward_pre_hook(enter, with_kwargs=True))
        handles.append(block.register_forward_hook(leave))

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage._cdata in weights or storage._cdata in seen or not t.is_floating_point():
            return t
        seen.add(storage._cdata)
        nbytes = storage.nbytes()
        saved.total += nbytes
        saved.largest = max(saved.largest, nbytes)
        if current:
            saved.in_blocks[current[-1]] = saved.in_blocks.get(current[-1], 0) + nbytes
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss_fn()
    finally:
        for h in handles:
            h.remove()
    return saved


def memory_plan(config: dict, *, processes: int = 1, device: str = "cpu",
                memory: int | None = None, model: nn.Module | None = None,
                checkpoint_dir: Path | None = None) -> MemoryPlan:
    """The memory one process of a run of ``config`` holds (see the module docstring).

    Args:
        config: A validated config.
        processes: Processes of the job (``torchrun``'s world size).
        device: ``"cpu"`` or ``"cuda"`` (bf16 compute under FSDP on CUDA).
        memory: Bytes one process may use, for ``fits`` and the largest batch.
        model: The model on ``meta`` (default: built from ``config``).
        checkpoint_dir: The checkpoint a resumed run starts from: the model is built from
            its tokenizers and stored files (a pretrained folder need not exist any more).
    """
    cfg = TrainConfig.from_config(config)
    model = model if model is not None else build_planned_model(config, checkpoint_dir)
    fsdp = cfg.strategy == "fsdp"
    shards = processes if fsdp else 1
    params = [p for p in model.parameters()]
    trainable = [p for p in params if p.requires_grad]
    param_bytes = sum(_sharded_bytes(p, shards) for p in params)
    grad_bytes = sum(_sharded_bytes(p, shards) for p in trainable)
    optim_bytes = 2 * grad_bytes + 4 * len(trainable)

    # activations: each active modality's loss on meta tensors, at 1 and 2 samples
    modalities = build_modalities(config)
    shares = sampling_shares(config)
    fixed = per_sample = largest = 0
    not_estimated = []
    blocks = repeated_blocks(model)
    for name, modality in modalities.items():
        if shares[name] <= 0:
            continue
        probes = []
        for local in (1, 2):
            batch = _probe_batch(name, modality, config, local)
            if batch is None:
                break
            probes.append(_saved_activations(model, lambda b=batch, n=name, m=modality: m.loss(
                model.backbone, model.decoders[n], b)))
        if not probes:
            not_estimated.append(name)
            continue
        kept = [_kept_activations(s, cfg.activation_checkpointing) for s in probes]
        per = max(kept[1] - kept[0], 0)
        per_sample = max(per_sample, per)
        fixed = max(fixed, kept[0] - per)
        # the backward pass either holds the gradients of the largest activation (at its
        # start) or, with checkpointing, one block's recomputed activations (later)
        recompute = max(probes[1].in_blocks.values(), default=0) \
            if cfg.activation_checkpointing else 0
        largest = max(largest, probes[1].largest, recompute // 2)  # per sample
    local = cfg.batch_size // processes
    activations = fixed + per_sample * local

    # working memory: gradients of the largest activation, and the strategy's buffers
    working_fixed = 0
    if fsdp:
        in_blocks = {id(p) for _, b in blocks for p in b.parameters()}
        scale = 0.5 if device.startswith("cuda") and cfg.precision == "bf16" else 1.0
        root = sum(p.numel() * p.element_size() for p in params if id(p) not in in_blocks)
        root_grads = sum(p.numel() * p.element_size() for p in trainable
                         if id(p) not in in_blocks)
        block = max((sum(p.numel() * p.element_size() for p in b.parameters())
                     for _, b in blocks), default=0)
        block_grads = max((sum(p.numel() * p.element_size() for p in b.parameters()
                               if p.requires_grad) for _, b in blocks), default=0)
        working_fixed = int(scale * (root + 2 * block)) + root_grads + 2 * block_grads
    elif processes > 1:
        working_fixed = sum(p.numel() * p.element_size() for p in trainable)  # the flat bucket
    working_per_sample = largest
    return MemoryPlan(
        strategy=cfg.strategy, precision=cfg.precision, device=device, processes=processes,
        batch_size=cfg.batch_size, activation_checkpointing=cfg.activation_checkpointing,
        params=param_bytes, grads=grad_bytes, optimizer=optim_bytes, activations=activations,
        working=working_fixed + working_per_sample * local, activation_fixed=fixed,
        activation_per_sample=per_sample, working_per_sample=working_per_sample,
        not_estimated=not_estimated, memory=memory)


def _kept_activations(saved: _Saved, checkpointing: bool) -> int:
    """Saved bytes, or with activation checkpointing: those outside the blocks and each
    block's input (one block's recomputed activations count as working memory)."""
    if not checkpointing or not saved.in_blocks:
        return saved.total
    return saved.total - sum(saved.in_blocks.values()) + saved.block_inputs


def default_memory(device: torch.device, local_processes: int) -> int | None:
    """The memory one process may use when none is given: the GPU's memory on CUDA; on CPU
    the machine's available memory shared by the processes on it (``None`` when unknown)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // max(local_processes, 1)
    except OSError:
        return None
    return None


def peak_allocated(fn) -> tuple[Any, int]:
    """Run ``fn()`` and measure the peak of the bytes it allocated through PyTorch's
    allocators and still held (the profiler's memory events, ``profile_memory=True``: every
    tensor allocation and free, in time order), above what was held before it.

    Returns:
        ``(fn's result, peak bytes)``.
    """
    # deferred: the profiler is needed only to measure
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return result, peak
