"""The ``train:`` section of a config, and the checks of it that need the rest of the config.

:class:`TrainConfig` is the section as a dataclass; :func:`multimodal.config.validate_config`
checks its keys and types field by field against it (``train.lora`` against
:class:`LoRASettings`), then calls :func:`train_problems` for what types cannot say (a share of
steps in [0, 1], a loss weight for a modality the config has, a regular expression that
compiles) and :func:`init_from_entries` for the shape of ``init_from``. Nothing here reads a
file: the ``init_from`` checks that open checkpoints live in
:mod:`multimodal.training.init_from`.

Every check returns ``(dotted key, message)`` pairs, so the validator reports them together
with every other problem of the file.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from multimodal.errors import did_you_mean, excerpt

Problems = list[tuple[str, str]]


@dataclass
class LoRASettings:
    """The ``train.lora`` section: low-rank adapters (see :func:`multimodal.nn.lora.apply_lora`).

    Attributes:
        rank: Rank ``r`` of the update, >= 1 (default 8).
        alpha: Scale numerator, > 0: the update is ``alpha / r * B A`` (default 16).
        dropout: Dropout on the adapter's input, in [0, 1) (default 0).
        modules: Regular expression over full module names (``backbone.blocks.0.attn.qkv``,
            ``decoders.image.net.transformer_blocks.0.attn1.to_q``, ...) of the linear layers
            to adapt (default ``None``: every linear layer of the backbone's blocks, of a
            built-in or a transformers backbone alike; see
            :func:`multimodal.nn.lora.default_lora_modules`).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    modules: str | None = None


@dataclass
class TrainConfig:
    """The ``train:`` section of a config.

    Attributes:
        max_steps: Optimizer steps in all (>= 1).
        batch_size: Sequences per micro-batch, per modality (>= 1): the global micro-batch,
            split evenly over the processes of a ``torchrun`` job.
        seq_len: Tokens per training window (text).
        grad_accum_steps: Micro-batches per optimizer step (>= 1).
        lr: Peak learning rate.
        min_lr_ratio: Final learning rate as a share of ``lr`` (cosine decay).
        warmup_steps: Linear warm-up steps.
        weight_decay: AdamW decay on matrices (not on norms and biases).
        betas: AdamW betas.
        grad_clip: Clip the global gradient norm to this (0 turns clipping off).
        precision: ``"fp32"`` or ``"bf16"`` (autocast; CPU and CUDA).
        loss_weights: Weight of each modality's loss (default 1 each); keys are names of
            ``decoders``.
        sampling: Share of steps (micro-batches) in which each modality trains, in [0, 1]
            (default 1 each): ``{audio: 0.5}`` trains the speech decoder every other step on
            average, drawn from the step's seed (so resume and torchrun stay exact). ``0``
            rests a modality: its decoder stays in the model and its checkpoints, unchanged,
            and its data is neither read nor encoded (a later stage of a joint model that
            trains one decoder need not encode the datasets of the others).
        eval_every: Validate every this many steps (0: only at the end).
        eval_batches: Validation batches per evaluation.
        checkpoint_every: Checkpoint every this many steps (0: only at the end).
        keep_checkpoints: Newest checkpoints kept.
        log_every: Steps between log lines in ``log.csv``.
        num_threads: CPU threads for torch (default: torch's choice; 1 per process under
            ``torchrun``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
        compile: Compile the backbone with ``torch.compile`` (inductor). Measured on 2 CPU
            cores for ``text_fortunes``: 1.06x faster steps after a ~25 s compile.
        ema_decay: Keep an exponential moving average of the weights with this decay, in
            (0, 1) (e.g. 0.999; diffusers' ``EMAModel``, warm-up ``(1 + s) / (10 + s)``), saved
            as ``ema.safetensors`` beside the weights and used by pipelines and exports
            (default ``None``: off). Usual for diffusion decoders (Ho et al. 2020).
        freeze: Module prefixes whose weights do not train, e.g. ``[backbone]`` (fine-tuning a
            decoder on the ``init_from`` model).
        lora: Low-rank adapters, e.g. ``{rank: 8, alpha: 16}`` (:class:`LoRASettings`;
            default off).
        preview_prompts: After every checkpoint, generate from these prompts with the config's
            task (seed 0) into ``<run>/previews/step_N/``, to watch a run as it learns
            (default none; a preview that fails is a warning, not a stop).
        strategy: How a ``torchrun`` job splits the work (default ``"ddp"``): ``"ddp"`` keeps
            a whole copy of the model on every process and averages the gradients;
            ``"fsdp"`` shards parameters, gradients and optimizer state over the processes
            (PyTorch's FSDP2 ``fully_shard``; bf16 compute with fp32 gradient reductions on
            CUDA with ``precision: bf16``) and writes sharded checkpoints, EMA weights sharded
            as the parameters are; ``compile`` compiles the backbone after sharding.
            ``"fsdp"`` needs ``torchrun`` (any ``--nproc_per_node``, 1 included).
        activation_checkpointing: Keep only each repeated block's input during the forward
            pass and recompute the rest in the backward pass (``torch.utils.checkpoint``,
            non-reentrant): less activation memory for about one more forward of compute.
    """

    max_steps: int = 1000
    batch_size: int = 32
    seq_len: int = 128
    grad_accum_steps: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    precision: Literal["fp32", "bf16"] = "fp32"
    loss_weights: dict[str, float] | None = None
    sampling: dict[str, float] | None = None
    eval_every: int = 200
    eval_batches: int = 20
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    num_threads: int | None = None
    device: str = "auto"
    compile: bool = False
    ema_decay: float | None = None
    freeze: list[str] | None = None
    lora: LoRASettings | None = None
    preview_prompts: list[str] | None = None
    strategy: Literal["ddp", "fsdp"] = "ddp"
    activation_checkpointing: bool = False

    @classmethod
    def from_config(cls, config: dict) -> "TrainConfig":
        """The ``train:`` section of a validated config (missing keys take their defaults)."""
        section = dict(config.get("train") or {})
        if "betas" in section:
            section["betas"] = tuple(section["betas"])
        if section.get("lora") is not None:
            section["lora"] = LoRASettings(**section["lora"])
        return cls(**section)


# -- checks that need more than a type -----------------------------------------------------------
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 0 .. 2**64 - 1

# The range of each number of the train section: (lower test, upper test, what is accepted).
# Every float must also be finite: an infinite lr trains to NaN weights.
_ANY = lambda v: True  # noqa: E731 - a table of one-line tests reads best as lambdas
_RANGES = {
    "max_steps": (lambda v: v >= 1, _ANY, "an integer >= 1"),
    "batch_size": (lambda v: v >= 1, _ANY, "an integer >= 1"),
    "grad_accum_steps": (lambda v: v >= 1, _ANY, "an integer >= 1"),
    "seq_len": (lambda v: v >= 1, _ANY, "an integer >= 1"),
    "lr": (lambda v: v > 0, _ANY, "a finite number > 0, e.g. 1e-3"),
    "min_lr_ratio": (lambda v: v >= 0, lambda v: v <= 1, "a number in [0, 1]"),
    "warmup_steps": (lambda v: v >= 0, _ANY, "an integer >= 0"),
    "weight_decay": (lambda v: v >= 0, _ANY, "a finite number >= 0"),
    "betas": (lambda v: v >= 0, lambda v: v < 1, "two numbers in [0, 1), e.g. [0.9, 0.95]"),
    "grad_clip": (lambda v: v >= 0, _ANY, "a finite number >= 0 (0 turns clipping off)"),
    "eval_every": (lambda v: v >= 0, _ANY, "an integer >= 0 (0: only at the end)"),
    "eval_batches": (lambda v: v >= 1, _ANY, "an integer >= 1"),
    "checkpoint_every": (lambda v: v >= 0, _ANY, "an integer >= 0 (0: only at the end)"),
    "keep_checkpoints": (lambda v: v >= 1, _ANY, "an integer >= 1"),
    "log_every": (lambda v: v >= 1, _ANY, "an integer >= 1"),
    "num_threads": (lambda v: v >= 1, _ANY, "an integer >= 1"),
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def train_problems(config: dict) -> Problems:
    """The problems of ``config["train"]`` that its field types do not catch.

    Assumes each field already has its annotated type where it is set (values of the wrong type
    are reported by the validator and skipped here).
    """
    section = config.get("train") or {}
    if not isinstance(section, dict):
        return []
    decoders = config.get("decoders")
    modalities = list(decoders) if isinstance(decoders, dict) else []
    known = ", ".join(modalities) or "(none)"
    problems: Problems = []
    seed = config.get("seed")
    if _is_number(seed) and not 0 <= seed <= MAX_SEED:
        problems.append(("seed", f"'seed' must be an integer in 0..2**64-1, got {excerpt(seed)}"))
    for key, (low, high, accepted) in _RANGES.items():
        values = section.get(key)
        for value in (values if key == "betas" and isinstance(values, (list, tuple))
                      else [values]):
            if _is_number(value) and not (math.isfinite(value) and low(value) and high(value)):
                problems.append((f"train.{key}", f"'train.{key}' must be {accepted}, got "
                                                 f"{excerpt(value)}"))
                break
    device = section.get("device")
    if isinstance(device, str) and not _DEVICE.match(device):
        problems.append(("train.device", f"'train.device' is {excerpt(device)}; accepted: 'auto', "
                                         "'cpu', 'cuda', 'cuda:N' or 'mps'"))
    ema = section.get("ema_decay")
    if _is_number(ema) and not 0 < ema < 1:
        problems.append(("train.ema_decay", f"'train.ema_decay' must be in (0, 1), e.g. 0.999; "
                                            f"got {excerpt(ema)}"))
    for name, accepted in (("loss_weights", "a finite number >= 0 (a negative weight would "
                                             "climb the loss)"),
                           ("sampling", "a share of steps in [0, 1] (0 rests it)")):
        shares = section.get(name)
        if not isinstance(shares, dict):
            continue
        for modality, value in shares.items():
            key = f"train.{name}.{modality}"
            if modality not in modalities:
                problems.append((key, f"'{key}': no such modality"
                                      f"{did_you_mean(modality, modalities)}; the config's "
                                      f"modalities (decoders): {known}"))
            elif (not _is_number(value) or not math.isfinite(value) or value < 0
                  or (name == "sampling" and value > 1)):
                problems.append((key, f"'{key}' must be {accepted}, got {excerpt(value)}"))
    sampling = section.get("sampling")
    if (isinstance(sampling, dict) and modalities
            and all(_is_number(sampling.get(m, 1)) and sampling.get(m, 1) == 0
                    for m in modalities)):
        problems.append(("train.sampling", "'train.sampling' rests every modality (all 0); give "
                                           "at least one a share above 0"))
    problems += _lora_problems(section.get("lora"))
    return problems


def _lora_problems(lora: Any) -> Problems:
    if not isinstance(lora, dict):
        return []
    problems: Problems = []
    rank, alpha, dropout = lora.get("rank"), lora.get("alpha"), lora.get("dropout")
    if isinstance(rank, int) and rank < 1:
        problems.append(("train.lora.rank", f"'train.lora.rank' must be an integer >= 1, got "
                                            f"{excerpt(rank)}"))
    if _is_number(alpha) and alpha <= 0:
        problems.append(("train.lora.alpha", f"'train.lora.alpha' must be a positive number, "
                                             f"got {excerpt(alpha)}"))
    if _is_number(dropout) and not 0 <= dropout < 1:
        problems.append(("train.lora.dropout", f"'train.lora.dropout' must be in [0, 1), got "
                                               f"{excerpt(dropout)}"))
    if isinstance(lora.get("modules"), str):
        try:
            re.compile(lora["modules"])
        except re.error as exc:
            problems.append(("train.lora.modules", f"'train.lora.modules' is not a regular "
                                                   f"expression: {exc}"))
    return problems


def sampling_shares(config: dict) -> dict[str, float]:
    """The share of steps of each modality of a validated config (default 1)."""
    sampling = (config.get("train") or {}).get("sampling") or {}
    return {m: float(sampling.get(m, 1.0)) for m in config.get("decoders") or {}}


# -- init_from: the language, without reading a checkpoint -------------------------------------
INIT_FROM_ACCEPTED = (
    "init_from takes a checkpoint path, or a list of entries each a path or "
    "{from: PATH, take: [backbone, decoders.NAME, tokenizers.NAME, ...]} (or take: "
    "{NEW_PART: CHECKPOINT_PART, ...} to rename; skip: [PREFIX, ...] keeps those weights fresh)")


@dataclass(frozen=True)
class InitEntry:
    """One entry of ``init_from`` as written: where it sits, the checkpoint it names, and what
    it takes.

    ``take`` pairs each part of the new model with the part of the checkpoint it starts from:
    weight prefixes (``backbone``, ``decoders.video``) or tokenizers (``tokenizers.audio``);
    ``None`` takes everything the checkpoint has, under the same names. ``skip`` names weight
    prefixes of the new model that start fresh instead (layers whose shape changed).
    """

    where: str  # "init_from" or "init_from[i]"
    checkpoint: str
    take: tuple[tuple[str, str], ...] | None = None
    skip: tuple[str, ...] = field(default=())


def init_from_entries(value: Any) -> tuple[list[InitEntry], Problems]:
    """Parse ``init_from`` (``None``, a checkpoint path, or a list of entries, each a path or
    ``{from: PATH, take: PARTS, skip: PREFIXES}``) without opening a checkpoint.

    ``PARTS`` is a list of weight prefixes and tokenizers (``[decoders.image,
    tokenizers.audio]``), or a mapping that renames them, ``{tokenizers.video:
    tokenizers.image}`` (the new model's part: the checkpoint's part); without it the entry
    gives everything. ``skip`` lists weight prefixes of the new model that keep their fresh
    initialisation.

    Returns:
        The well-formed entries, in order, and a problem for each malformed one.
    """
    if value is None:
        return [], []
    if not isinstance(value, (str, list)):
        return [], [("init_from", f"'init_from' is {excerpt(value)}; {INIT_FROM_ACCEPTED}")]
    entries, problems = [], []
    for i, entry in enumerate(value if isinstance(value, list) else [value]):
        where = f"init_from[{i}]" if isinstance(value, list) else "init_from"
        parsed, problem = _init_entry(where, entry)
        if problem:
            problems.append((where, f"{where}: {problem}; {INIT_FROM_ACCEPTED}"))
        else:
            entries.append(parsed)
    return entries, problems


def _init_entry(where: str, entry: Any) -> tuple[InitEntry | None, str]:
    if isinstance(entry, str):
        return InitEntry(where, entry), ""
    if not isinstance(entry, dict) or "from" not in entry or set(entry) - {"from", "take", "skip"}:
        return None, f"got {excerpt(entry)}"
    take, skip = entry.get("take"), entry.get("skip", [])
    if "take" not in entry:
        pairs = None  # everything the checkpoint has
    elif isinstance(take, dict):
        pairs = list(take.items())
    else:
        pairs = [(t, t) for t in take] if isinstance(take, list) else []
    if not isinstance(entry["from"], str) or pairs == [] or not all(
            isinstance(p, str) and p for pair in pairs or [] for p in pair):
        return None, ("'from' must be a path and 'take' a non-empty list of prefixes, got "
                      f"{excerpt(entry)}")
    if not isinstance(skip, list) or not all(isinstance(p, str) and p
                                             and not p.startswith("tokenizers.") for p in skip):
        return None, f"'skip' must be a list of weight prefixes, got {excerpt(skip)}"
    crossed = [f"{t}: {s}" for t, s in pairs or []
               if t.startswith("tokenizers.") != s.startswith("tokenizers.")]
    if crossed:
        return None, f"take maps a tokenizer to weights or back: {excerpt(', '.join(crossed))}"
    return InitEntry(where, entry["from"], None if pairs is None else tuple(pairs),
                     tuple(skip)), ""


def tokenizers_taken(entries: list[InitEntry]) -> set[str] | None:
    """The tokenizer names that ``init_from`` entries give, when known without opening the
    checkpoints; ``None`` when an entry takes everything its checkpoint has."""
    if any(e.take is None for e in entries):
        return None
    return {target.split(".", 1)[1] for e in entries for target, _ in e.take
            if target.startswith("tokenizers.")}
