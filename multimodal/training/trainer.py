"""One training loop for every modality.

``train(config)`` validates a resolved config (every problem at once, the ``init_from``
checkpoints opened), then sets up in named steps: the device, where the run starts (``--resume``
or ``init_from``), the tokenizers (fitted first), the model, the data, the optimizer and the EMA.
It runs AdamW with linear warm-up and cosine decay (Loshchilov & Hutter 2017,
:func:`multimodal.nn.schedules.cosine_with_warmup`), gradient accumulation and clipping,
optional bf16 autocast, periodic validation and atomic checkpoints.

Every random draw of step ``s`` comes from generators seeded with ``(seed, s)``, and the learning
rate is a function of ``s`` alone, so a run resumed from a checkpoint continues exactly as the
uninterrupted run would have.

The run directory follows the rules of :mod:`multimodal.training.run_dir`: checked for writing
and locked before any set-up, never shared by two runs, its ``log.csv`` rewound to the resumed
step, and removed again when this run created it and failed before writing anything. Rank 0
writes each row of ``log.csv`` to TensorBoard event files in ``tensorboard/`` too.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from multimodal.builders import (
    build_datasets,
    build_modalities,
    build_model,
    build_tokenizers,
)
from multimodal.checkpoint import (
    check_checkpoint_files,
    find_checkpoint,
    is_sharded,
    list_checkpoints,
    load_optimizer_state,
    load_tokenizers,
    load_weights,
    model_files,
    prune_checkpoints,
    read_config,
    read_sharded,
    read_trainer_state,
    read_weights,
    save_checkpoint,
    save_sharded_checkpoint,
    sharded_keys,
)
from multimodal.config import validate_config
from multimodal.errors import CheckpointError, ConfigError, DataError, TrainingError
from multimodal.io import atomic_write_text, prepare_out_dir
from multimodal.nn.lora import apply_lora, freeze
from multimodal.nn.schedules import cosine_with_warmup
from multimodal.outputs import write_outputs
from multimodal.registry import pipelines
from multimodal.safety import CHECKPOINT_BLOCKLIST, SafetyPolicy
from multimodal.train_config import TrainConfig, sampling_shares
from multimodal.training.distributed import (
    check_shardable,
    init_distributed,
    metric_tensor,
    shutdown,
    wait_for_file,
)
from multimodal.training.fsdp import apply_activation_checkpointing, full_value, shard_model
from multimodal.training.plan import MemoryPlan, default_memory, memory_plan
from multimodal.training.init_from import (
    init_from_problems,
    load_init_tokenizers,
    merge_init_weights,
    parse_init_from,
)
from multimodal.training.run_dir import (
    LOCK_FILE,
    RunBoard,
    RunLock,
    RunLog,
    allowed_change_keys,
    check_fresh,
    resume_changes,
    run_dir,
)

_SHARED_TOKENIZERS = ".tokenizers-shared"  # rank 0 hands its fitted tokenizers to the others


def resolve_device(name: str) -> torch.device:
    """The device of ``train.device`` (a validated name) on this machine.

    Raises:
        ConfigError: CUDA or MPS is asked for but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but CUDA is not available; use 'cpu' or 'auto'")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device is {name!r} but MPS is not available here (it needs "
                          "Apple silicon and a torch built with MPS); use 'cpu' or 'auto'")
    return torch.device(name)


def autocast_for(device: torch.device, precision: str):
    """A context-manager factory: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def step_generator(seed: int, step: int, micro: int = 0, stream: int = 0) -> torch.Generator:
    """The generator for one micro-batch: a pure function of its coordinates."""
    g = torch.Generator()
    # modulo 2**64, what manual_seed takes (the same value as before for every usual seed)
    g.manual_seed(((seed * 1_000_003 + step) * 1_009 + micro * 17 + stream) % 2**64)
    return g


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay matrices and embeddings, not norms or biases (nanoGPT)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    """Trains the model of a resolved config.

    Args:
        config: The resolved config (see :func:`multimodal.config.load_config`); validated
            here, with the ``init_from`` checkpoints opened, before any work.
        out_dir: Run directory (default ``config["out_dir"]`` or ``runs/<task>``); holds
            ``checkpoints/step_*`` and ``log.csv``. A new run refuses one that already holds
            checkpoints; it is locked (``out_dir/.lock``) from here until :meth:`fit` returns
            or :meth:`close`, so a second run into it is refused.
        resume: Continue from the newest checkpoint in ``out_dir``, with the same settings.
        allow_changes: With ``resume``, the ``train.*`` settings (``max_steps`` or
            ``train.max_steps``) this config may change from the checkpoint's, on purpose
            (extending a run); any other change that shapes the run is refused.
        progress: Show a tqdm progress bar.
        memory: Bytes one process may use (``--memory``): a run whose memory plan
            (:func:`multimodal.training.plan.memory_plan`) exceeds it is refused before any
            set-up. Default: the GPU's memory on CUDA, the machine's available memory shared
            by its processes on CPU.

    Raises:
        ConfigError, DataError, CheckpointError: on bad config, data or checkpoint.
        TrainingError: ``out_dir`` is in use by another run.
        InputError: ``out_dir`` cannot be written.
    """

    def __init__(self, config: dict, *, out_dir: str | Path | None = None, resume: bool = False,
                 allow_changes: tuple[str, ...] | list[str] = (), progress: bool = True,
                 memory: int | None = None):
        # Every problem of the config at once, before any work (the init_from checkpoints are
        # opened unless resuming, which does not read them).
        validate_config(config, checks=() if resume else (init_from_problems,))
        self.config = config
        self.cfg = TrainConfig.from_config(config)
        self.seed = int(config.get("seed", 0))
        self.out_dir = run_dir(config, out_dir)
        self.progress = progress
        self.allow_changes = allowed_change_keys(allow_changes)
        if self.allow_changes and not resume:
            raise ConfigError("--allow-changes applies to --resume only: a new run takes its "
                              "settings from the config")
        self.extra_files = _safety_files(config)
        self.lock: RunLock | None = None
        self._created_out_dir = False
        self._setup_device()
        self._check_memory(memory, resume)
        self._claim_out_dir(resume)
        try:
            resume_from, init_sources = self._resolve_start(resume)
            train_sets = self._setup_datasets()
            self._setup_tokenizers(resume_from, init_sources, train_sets)
            self._setup_model(init_sources, resume_from)
            self._setup_data(train_sets)
            self._setup_optimizer()
            self._setup_ema()
            self.step = 0
            self.last_checkpoint: Path | None = None
            self.history: list[dict] = []
            if resume_from is not None:
                self._resume(resume_from)
        except BaseException:
            self._abandon_out_dir()
            raise

    # -- set-up steps -----------------------------------------------------------------------
    def _setup_device(self) -> None:
        """The device, this process's place in a ``torchrun`` job, and torch's threads."""
        self.device = resolve_device(self.cfg.device)
        self.dist = init_distributed(self.device, strategy=self.cfg.strategy)
        check_shardable(self.dist, self.cfg.batch_size)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if self.cfg.num_threads:
            torch.set_num_threads(self.cfg.num_threads)
        elif self.dist.enabled and self.device.type == "cpu":
            torch.set_num_threads(1)  # one thread per rank: ranks must not oversubscribe
        torch.manual_seed(self.seed)

    def _check_memory(self, memory: int | None, resume: bool = False) -> None:
        """Refuse, before any set-up, a run whose memory plan does not fit ``memory`` (or the
        device's memory), printing the plan."""
        local = int(os.environ.get("LOCAL_WORLD_SIZE", self.dist.world_size))
        limit = memory if memory is not None else default_memory(self.device, local)
        resumed = None
        if resume:
            with contextlib.suppress(CheckpointError):  # (--resume then says what is missing)
                resumed = find_checkpoint(self.out_dir)
        try:
            self.plan: MemoryPlan | None = memory_plan(
                self.config, processes=self.dist.world_size, device=self.device.type,
                memory=limit, checkpoint_dir=resumed)
        except Exception as exc:  # noqa: BLE001 - a plan the model cannot be probed for
            if memory is not None:  # asked for: say why there is none
                raise TrainingError(f"--memory: no memory plan for this config: "
                                    f"{type(exc).__name__}: {exc}") from None
            self.plan = None  # (a safety check only: training goes on without it)
            return
        if not self.plan.fits:
            raise TrainingError("this run does not fit in memory; lower train.batch_size "
                                "(or use strategy fsdp, activation checkpointing, more "
                                "processes):\n" + self.plan.format())

    def _claim_out_dir(self, resume: bool) -> None:
        """Before any set-up: rank 0 creates ``out_dir``, checks that it can be written and
        locks it; a new run refuses a folder that holds another run's checkpoints."""
        if self.dist.is_main:
            self._created_out_dir = not self.out_dir.exists()
            prepare_out_dir(self.out_dir)
            try:
                self.lock = RunLock(self.out_dir)
            except BaseException:
                self._abandon_out_dir()
                raise
        try:
            if not resume:
                check_fresh(self.out_dir)
        except BaseException:
            self._abandon_out_dir()
            raise

    def _abandon_out_dir(self) -> None:
        """A set-up that failed: let go of the lock, and remove ``out_dir`` if this run
        created it and wrote nothing there."""
        if self.lock is not None:
            self.lock.release()
        if self._created_out_dir and self.out_dir.is_dir() and all(
                p.name in (LOCK_FILE, _SHARED_TOKENIZERS) for p in self.out_dir.iterdir()):
            shutil.rmtree(self.out_dir, ignore_errors=True)

    def close(self) -> None:
        """Release ``out_dir``'s lock (:meth:`fit` does when it returns)."""
        if self.lock is not None:
            self.lock.release()

    def _resolve_start(self, resume: bool) -> tuple[Path | None, list]:
        """``(checkpoint to resume from, init_from sources)``: at most one is set."""
        if not resume:
            return None, parse_init_from(self.config.get("init_from"))
        try:
            resume_from = find_checkpoint(self.out_dir)
        except CheckpointError as exc:
            raise CheckpointError(f"--resume: {exc}") from None
        with self._naming_fallback(resume_from):
            saved = read_config(resume_from)
            check_checkpoint_files(resume_from)  # a truncated file fails now, not after set-up
        self._check_resumable(resume_from, saved)
        return resume_from, []

    @contextlib.contextmanager
    def _naming_fallback(self, path: Path):
        """Turn an unreadable file of checkpoint ``path`` into a :class:`CheckpointError`
        that names the complete checkpoint before it, to fall back to."""
        try:
            yield
        except (CheckpointError, OSError, ValueError, KeyError) as exc:
            older = [p for p in list_checkpoints(self.out_dir)
                     if int(p.name.split("_")[1]) < int(path.name.split("_")[1])]
            fallback = (f"the previous complete checkpoint is {older[-1]}: move {path} out of "
                        f"{path.parent} and --resume again to continue from it"
                        if older else "there is no earlier checkpoint to fall back to")
            message = str(exc) if str(exc).startswith("--resume") else f"--resume: {exc}"
            raise CheckpointError(f"{message}; {fallback}") from None

    def _setup_datasets(self) -> dict[str, Any]:
        """Each modality's objective and share of steps; the training datasets of those that
        train (the others rest: their data is not read)."""
        self.modalities = build_modalities(self.config)
        self.sampling = sampling_shares(self.config)
        self.active = [m for m in self.modalities if self.sampling[m] > 0]
        return build_datasets(self.config, "train", self.active)

    def _setup_tokenizers(self, resume_from: Path | None, init_sources: list,
                          train_sets: dict) -> None:
        """Load the tokenizers a checkpoint gives; fit the others (rank 0 under torchrun)."""
        if resume_from is not None:
            with self._naming_fallback(resume_from):
                self.tokenizers = load_tokenizers(resume_from, self.config)
            return
        given = load_init_tokenizers(init_sources, self.config)
        if set(given) == set(self.config.get("tokenizers") or {}):
            self.tokenizers = given
        elif not self.dist.enabled:
            self.tokenizers = {**build_tokenizers(self.config), **given}
            self._fit_tokenizers(train_sets)
        else:  # rank 0 fits, the others load what it saved
            shared = self.out_dir / _SHARED_TOKENIZERS
            done, failed = shared / "DONE", shared / "FAILED"
            if self.dist.is_main:
                shutil.rmtree(shared, ignore_errors=True)  # a killed run's leftovers
            self.dist.barrier()  # no rank looks for DONE before the old one is gone
            if self.dist.is_main:
                try:
                    self.tokenizers = {**build_tokenizers(self.config), **given}
                    self._fit_tokenizers(train_sets)
                    _save_tokenizers(self.tokenizers, shared)
                except BaseException:
                    shared.mkdir(parents=True, exist_ok=True)
                    failed.touch()
                    raise
                atomic_write_text(done, "")
            else:  # fitting can outlast the process group's timeout: wait on a file
                wait_for_file(done, failed=failed)
            self.dist.barrier()
            if not self.dist.is_main:
                self.tokenizers = load_tokenizers(shared, self.config)
            self.dist.barrier()
            if self.dist.is_main:
                shutil.rmtree(shared, ignore_errors=True)

    def _setup_model(self, init_sources: list, resume_from: Path | None = None) -> None:
        """Build the model, load ``init_from``, freeze, add LoRA adapters, start every rank
        from the same weights. A resumed run builds it from the files its checkpoint stored
        (a pretrained folder's config, a diffusers UNet's): the folders it started from are not
        read again, so a run resumes after they are gone."""
        self.model = build_model(self.config, self.tokenizers, adapters=False,
                                 checkpoint_dir=resume_from).to(self.device)
        if init_sources:
            load_weights(self.model, merge_init_weights(init_sources, self.model), adapt=True)
        if self.cfg.freeze:
            freeze(self.model, list(self.cfg.freeze))
        if self.cfg.lora is not None:  # after init_from: the adapters start from the given model
            apply_lora(self.model, **asdict(self.cfg.lora))  # (frozen modules stay frozen)
            self.model.to(self.device)
        if not any(p.requires_grad for p in self.model.parameters()):
            raise ConfigError("train.freeze leaves nothing to train; freeze less, or add "
                              "train.lora adapters")
        self.dist.broadcast_(list(self.model.state_dict().values()))  # start identical
        if self.cfg.activation_checkpointing:
            apply_activation_checkpointing(self.model)
        self.runner = None  # strategy fsdp: the root unit every loss is computed through
        if self.cfg.strategy == "fsdp":
            self.runner = shard_model(self.model, device=self.device,
                                      world_size=self.dist.world_size,
                                      precision=self.cfg.precision)
        if self.cfg.compile:  # after sharding: FSDP2's hooks stay outside the compiled code
            self.model.backbone.compile(dynamic=False)  # in place: state_dict keys unchanged

    def _setup_data(self, train_sets: dict) -> None:
        """Each training modality's prepared data, and its validation data where it has
        enough."""
        seq_len = self.cfg.seq_len
        self.train_data = {m: self.modalities[m].prepare(train_sets[m], self.tokenizers,
                                                         seq_len=seq_len)
                           for m in self.active}
        self.val_data = {}
        for m, ds in build_datasets(self.config, "val", self.active).items():
            try:
                self.val_data[m] = self.modalities[m].prepare(ds, self.tokenizers,
                                                              seq_len=seq_len)
            except DataError:
                pass  # too little validation data: training goes on without it

    def _setup_optimizer(self) -> None:
        """AdamW over the trainable weights, autocast, and the weight of each loss."""
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, self.cfg.weight_decay), lr=self.cfg.lr,
            betas=self.cfg.betas)
        self.autocast = autocast_for(self.device, self.cfg.precision)
        weights = self.cfg.loss_weights or {}
        self.loss_weights = {m: float(weights.get(m, 1.0)) for m in self.modalities}

    def _setup_ema(self) -> None:
        """diffusers' ``EMAModel`` of all weights when ``train.ema_decay`` is set."""
        self.ema = None
        if self.cfg.ema_decay is not None:
            self.ema = EMAModel(self.model.parameters(), decay=self.cfg.ema_decay, foreach=True)

    def _fit_tokenizers(self, train_sets: dict) -> None:
        """Fit each untrained tokenizer, before the backbone trains (stage one). Its data is
        there: :func:`multimodal.config.fit_on_problems` checked that. A modality with a
        ``check_data(dataset, tokenizers)`` checks its data against them first."""
        for modality, dataset in train_sets.items():
            check = getattr(self.modalities[modality], "check_data", None)
            if check is not None:
                check(dataset, self.tokenizers)
        for name, tok in self.tokenizers.items():
            if tok.is_trained:
                continue
            if tok.fit_on == "text":
                data: Any = [t for m, ds in train_sets.items()
                             for t in self.modalities[m].text_corpus(ds)]
                if not data:
                    raise DataError(f"tokenizers.{name}: no text to fit the text tokenizer on")
            else:
                data = train_sets[tok.fit_on]
            tok.fit(data, seed=self.seed, device=self.device, progress=self.progress)

    def _check_resumable(self, path: Path, saved: dict) -> None:
        """Refuse a checkpoint (whose config is ``saved``) of another model, or a config that
        changes how the run goes on (``train.*`` settings that shape it, the seed) unless
        ``allow_changes`` names them."""
        diffs = [k for k in ("tokenizers", "backbone", "decoders")
                 if saved.get(k) != self.config.get(k)]
        if diffs:
            raise CheckpointError(
                f"--resume: the checkpoint {path} was made with a different "
                f"{', '.join(diffs)} than this config; resume with the same model config, or "
                "start a new run in another out_dir")
        changes = {k: v for k, v in resume_changes(saved, self.config).items()
                   if k not in self.allow_changes}
        if changes:
            listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
            raise CheckpointError(
                f"--resume: this config changes settings of the run in {path}: {listed}. "
                "Resuming would silently change the run (its schedule, its batches); resume "
                "with the checkpoint's settings, or change them on purpose with "
                f"--allow-changes {','.join(changes)}")

    def _resume(self, path: Path) -> None:
        file = path / "ema.safetensors"
        has_ema = (any(k.startswith("ema.") for k in sharded_keys(path)) if is_sharded(path)
                   else file.is_file())
        if self.ema is not None and not has_ema:
            raise CheckpointError(f"--resume: {path} has no EMA weights, but "
                                  "train.ema_decay is set; resume with the same config")
        if is_sharded(path):
            with self._naming_fallback(path):
                self._resume_sharded(path)
            self.last_checkpoint = path
            return
        if self.runner is not None:
            raise CheckpointError(
                f"--resume: {path} is a whole (unsharded) checkpoint; a strategy fsdp run "
                "resumes from sharded ones. Resume it with train.strategy=ddp, or start a "
                f"sharded run from its weights with init_from={path}")
        with self._naming_fallback(path):
            load_weights(self.model, path / "model.safetensors")
            state = load_optimizer_state(path, self.optimizer)
            self.step = int(state["step"])
            if self.ema is not None:
                saved = read_weights(file)
                missing = [n for n, _ in self.model.named_parameters() if n not in saved]
                if missing:
                    raise CheckpointError(f"{file} lacks {len(missing)} of the model's "
                                          f"weights (first: {missing[0]})")
                self.ema.shadow_params = [saved[name].to(p) for name, p in
                                          self.model.named_parameters()]
                self.ema.optimization_step = self.step
        self.last_checkpoint = path

    # -- the loop ---------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One optimizer step over ``grad_accum_steps`` micro-batches of every modality."""
        cfg = self.cfg
        lr = cfg.lr * cosine_with_warmup(self.step, warmup_steps=cfg.warmup_steps,
                                         total_steps=cfg.max_steps,
                                         min_lr_ratio=cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        torch.manual_seed((self.seed * 7919 + self.step) % 2**64)  # dropout, in-model noise
        metrics: dict[str, float] = {"lr": lr, "loss": 0.0, "tokens": 0.0, "bad_loss": 0.0,
                                     **{f"loss_{name}": 0.0 for name in self.modalities}}
        bad = ""
        for micro in range(cfg.grad_accum_steps):
            draws = torch.rand(len(self.modalities),
                               generator=step_generator(self.seed, self.step, micro, 9973))
            for i, (name, modality) in enumerate(self.modalities.items()):
                if draws[i] >= self.sampling[name]:  # this modality sits this one out
                    continue
                # Every rank draws the same global batch and keeps its shard of it.
                batch = modality.sample(self.train_data[name], batch_size=cfg.batch_size,
                                        generator=step_generator(self.seed, self.step, micro, i))
                batch = {k: v.to(self.device) if torch.is_tensor(v) else v
                         for k, v in self.dist.shard(batch, cfg.batch_size).items()}
                with self.autocast():
                    loss, info = self._loss(name, modality, batch)
                if not self._all_finite(loss):  # stop on every rank together, below
                    bad, metrics["bad_loss"] = f"{name} loss is {loss.item()}", 1.0
                    continue
                if loss.requires_grad:  # not when train.freeze covers all this loss reaches
                    (self.loss_weights[name] * loss / cfg.grad_accum_steps).backward()
                metrics[f"loss_{name}"] += loss.item() / cfg.grad_accum_steps
                metrics["loss"] += self.loss_weights[name] * loss.item() / cfg.grad_accum_steps
                metrics["tokens"] += info.get("tokens", 0.0)
        if self.dist.enabled:  # average the metrics and the gradients over the ranks
            keys, values = metric_tensor(metrics)
            self.dist.all_reduce_mean_([values])
            metrics.update({k: float(v) for k, v in zip(keys, values)})
            metrics["tokens"] *= self.dist.world_size
            if self.runner is None:  # (FSDP reduce-scattered them in the backward pass)
                grads = [p.grad for p in self.model.parameters() if p.grad is not None]
                self.dist.all_reduce_mean_(grads)
        if metrics.pop("bad_loss"):
            where = (f"the last good checkpoint is {self.last_checkpoint}"
                     if self.last_checkpoint else "no checkpoint was written yet")
            raise TrainingError(
                f"{bad or 'a loss on another process is not finite'} at step {self.step}; "
                f"stopped. {where}. Lower train.lr, raise train.warmup_steps, or use "
                "precision fp32")
        if cfg.grad_clip > 0:
            metrics["grad_norm"] = float(full_value(torch.nn.utils.clip_grad_norm_(
                self.model.parameters(), cfg.grad_clip)))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.model.parameters())
        self.step += 1
        return metrics

    def _loss(self, name: str, modality, batch: dict) -> tuple[torch.Tensor, dict]:
        """``modality.loss`` on this rank's batch (through the FSDP root unit when sharded)."""
        if self.runner is None:
            return modality.loss(self.model.backbone, self.model.decoders[name], batch)
        return self.runner(lambda model, b: modality.loss(model.backbone, model.decoders[name],
                                                          b), batch)

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite here and, when sharded, on every rank: under FSDP the
        backward pass is a collective, so every rank skips it or none does."""
        finite = bool(torch.isfinite(loss))
        if self.runner is None or not self.dist.enabled:
            return finite
        flag = torch.tensor([float(finite)], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item())

    def evaluate(self) -> dict[str, float]:
        """Validation metrics of every modality with validation data, prefixed ``val_`` (on
        rank 0 only under ``torchrun``; sharded, every rank computes them with it, since
        every forward gathers weights from all)."""
        if not self.dist.is_main and self.runner is None:
            return {}
        self.model.eval()
        out = {}
        for name, data in self.val_data.items():
            def run(model, name=name, data=data):
                return self.modalities[name].evaluate(
                    model.backbone, model.decoders[name], data,
                    batch_size=self.cfg.batch_size, max_batches=self.cfg.eval_batches,
                    autocast=self.autocast)
            result = run(self.model) if self.runner is None else self.runner(run)
            out.update({f"val_{name}_{k}": v for k, v in result.items()})
        if self.runner is not None:
            self.runner.reshard()
        return out if self.dist.is_main else {}

    def save(self) -> Path:
        if self.runner is not None:
            return self._save_sharded()
        if not self.dist.is_main:  # rank 0 writes; the weights are the same everywhere
            self.last_checkpoint = self.out_dir / "checkpoints" / f"step_{self.step:06d}"
            return self.last_checkpoint
        try:
            path = save_checkpoint(
                self.out_dir / "checkpoints" / f"step_{self.step:06d}", model=self.model,
                config=self.config, tokenizers=self.tokenizers, step=self.step,
                optimizer=self.optimizer, trainer_state={"step": self.step,
                                                         "train": asdict(self.cfg)},
                ema=self.ema_state_dict(), extra_files=self.extra_files)
        except CheckpointError as exc:
            where = (f"the last good checkpoint is {self.last_checkpoint}"
                     if self.last_checkpoint else "no checkpoint was written yet")
            raise TrainingError(f"{exc}; stopped at step {self.step}, {where}. Free space (or "
                                "fix the folder) and continue with --resume") from None
        prune_checkpoints(self.out_dir, self.cfg.keep_checkpoints, protect=path)
        self.last_checkpoint = path
        if self.cfg.preview_prompts:
            self.preview(path)
        return path

    def _save_sharded(self) -> Path:
        """Every rank writes its shards of the weights and the optimizer state (strategy
        fsdp); rank 0 the rest, prunes and previews."""
        if self.runner is not None:
            self.runner.reshard()
        path = self.out_dir / "checkpoints" / f"step_{self.step:06d}"
        names = {id(p): n for n, p in self.model.named_parameters()}
        state = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if self.ema is not None:  # sharded as the parameters are
            state.update({f"ema.{name}": shadow for (name, _), shadow in
                          zip(self.model.named_parameters(), self.ema.shadow_params)})
        for p, values in self.optimizer.state.items():
            state.update({f"optim.{names[id(p)]}.{k}": v for k, v in values.items()
                          if torch.is_tensor(v)})
        groups = [{**{k: v for k, v in g.items() if k != "params"},
                   "params": [names[id(p)] for p in g["params"]]}
                  for g in self.optimizer.param_groups]
        try:
            save_sharded_checkpoint(
                path, state=state, config=self.config, tokenizers=self.tokenizers,
                step=self.step, is_main=self.dist.is_main,
                # the files a part needs to be rebuilt without its folder, as save_checkpoint
                # writes them (an hf_causal_lm's config.json, a diffusers denoiser's)
                extra_files={**self.extra_files, **model_files(self.model)},
                trainer_state={"step": self.step, "train": asdict(self.cfg),
                               "param_groups": groups})
        except CheckpointError as exc:
            where = (f"the last good checkpoint is {self.last_checkpoint}"
                     if self.last_checkpoint else "no checkpoint was written yet")
            raise TrainingError(f"{exc}; stopped at step {self.step}, {where}. Free space (or "
                                "fix the folder) and continue with --resume") from None
        self.last_checkpoint = path
        if self.dist.is_main:
            prune_checkpoints(self.out_dir, self.cfg.keep_checkpoints, protect=path)
            if self.cfg.preview_prompts:
                self.preview(path)
        return path

    def _resume_sharded(self, path: Path) -> None:
        """Restore the weights, optimizer state and EMA weights of a sharded checkpoint,
        written by any number of processes, into this run (sharded or not)."""
        saved = sharded_keys(path)
        names = dict(self.model.named_parameters())
        template = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if self.ema is not None:
            template.update({f"ema.{name}": torch.empty_like(p) for name, p in names.items()})
        optim: dict[str, dict[str, torch.Tensor]] = {}
        for name, p in names.items():
            keys = [k for k in (f"optim.{name}.step", f"optim.{name}.exp_avg",
                                f"optim.{name}.exp_avg_sq") if k in saved]
            if not keys or not p.requires_grad:
                continue
            optim[name] = {
                "step": torch.zeros((), dtype=torch.float32),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
            template.update({f"optim.{name}.{k}": v for k, v in optim[name].items()})
        read_sharded(path, template)
        self.model.load_state_dict({k[len("model."):]: v for k, v in template.items()
                                    if k.startswith("model.")})
        for name, values in optim.items():
            self.optimizer.state[names[name]] = values
        if self.ema is not None:
            self.ema.shadow_params = [template[f"ema.{name}"] for name in names]
        state = read_trainer_state(path)
        for group, saved_group in zip(self.optimizer.param_groups, state.get("param_groups", [])):
            group.update({k: (tuple(v) if k == "betas" else v)
                          for k, v in saved_group.items() if k != "params"})
        self.step = int(state["step"])
        if self.ema is not None:
            self.ema.optimization_step = self.step

    def preview(self, checkpoint: Path) -> None:
        """Generate from ``train.preview_prompts`` with the checkpoint just written, through the
        task's pipeline (seed 0), into ``<run>/previews/step_N/<k>/``; a preview that fails is
        a warning, not a stop."""
        task = self.config.get("task", "")
        out = self.out_dir / "previews" / f"step_{self.step:06d}"
        try:
            pipe = pipelines.get(task).from_checkpoint(checkpoint, device=str(self.device))
            quiet = {"progress": False} if "progress" in inspect.signature(pipe).parameters else {}
            for k, prompt in enumerate(self.cfg.preview_prompts):
                output = pipe(prompt, seed=0, **quiet)
                # a run resumed from an earlier checkpoint draws its previews again
                write_outputs(output, out / f"{k:02d}", produces=pipe.produces, overwrite=True)
        except Exception as exc:  # noqa: BLE001 - a preview never stops training
            warnings.warn(f"preview at step {self.step} failed: {type(exc).__name__}: {exc}",
                          stacklevel=2)
        finally:
            self.model.train()

    def ema_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The model's state dict with the EMA weights in place of its parameters."""
        if self.ema is None:
            return None
        state = dict(self.model.state_dict())
        for (name, _), shadow in zip(self.model.named_parameters(), self.ema.shadow_params):
            state[name] = shadow
        return state

    def fit(self) -> dict[str, Any]:
        """Train to ``max_steps``; return the final metrics and the last checkpoint path.
        Releases ``out_dir``'s lock when it returns (taken again if called again)."""
        if self.dist.is_main and (self.lock is None or not self.lock.held):
            self.lock = RunLock(prepare_out_dir(self.out_dir))  # fit() called again
        try:
            return self._fit()
        finally:
            self.close()

    def _fit(self) -> dict[str, Any]:
        cfg = self.cfg
        log = RunLog(self.out_dir / "log.csv", start_step=self.step) if self.dist.is_main \
            else None
        board = RunBoard(self.out_dir / "tensorboard", start_step=self.step) \
            if self.dist.is_main else None
        bar = tqdm(total=cfg.max_steps, initial=self.step,
                   disable=not self.progress or not self.dist.is_main,
                   desc=f"train {self.out_dir.name}", dynamic_ncols=True)
        last: dict[str, float] = {}
        t0, tokens = time.perf_counter(), 0.0
        try:
            while self.step < cfg.max_steps:
                metrics = self.train_step()
                tokens += metrics["tokens"]
                elapsed = time.perf_counter() - t0
                metrics["tokens_per_s"] = tokens / elapsed if elapsed > 0 else 0.0
                done = self.step >= cfg.max_steps
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or done:
                    metrics.update(self.evaluate())
                if log and (self.step % cfg.log_every == 0 or done
                            or any(k.startswith("val_") for k in metrics)):
                    log.write({"step": self.step, **metrics})
                    board.write({"step": self.step, **metrics})
                    self.history.append({"step": self.step, **metrics})
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}",
                                tok_s=f"{metrics['tokens_per_s']:.0f}", refresh=False)
                if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or done:
                    self.save()
                last = metrics
        finally:
            bar.close()
            if board:
                board.close()
        self.dist.barrier()  # every rank done (and rank 0's checkpoint written)
        if not last:  # already at max_steps (a finished run resumed)
            last = self.evaluate()
        return {"step": self.step, "checkpoint": str(self.last_checkpoint), **last}


def _safety_files(config: dict) -> dict[str, bytes]:
    """Check the config's safety policy now (not at the first generation) and return its own
    blocklist, to be copied into every checkpoint.

    Raises:
        ConfigError: the blocklist cannot be read.
    """
    SafetyPolicy.from_config(config)  # checks the file: UTF-8 text, one term a line, bounded
    blocklist = (config.get("safety") or {}).get("blocklist")
    return {CHECKPOINT_BLOCKLIST: Path(blocklist).read_bytes()} if blocklist else {}


def _save_tokenizers(tokenizers: dict[str, Any], directory: Path) -> None:
    """Save tokenizers as a checkpoint holds them (``directory/tokenizers/<name>/``)."""
    for name, tok in tokenizers.items():
        (directory / "tokenizers" / name).mkdir(parents=True, exist_ok=True)
        tok.save(directory / "tokenizers" / name)


def train(config: dict, **kwargs) -> dict[str, Any]:
    """Build a :class:`Trainer` for ``config`` and run it; see its arguments. Under
    ``torchrun`` the process group is left when training ends."""
    trainer = Trainer(config, **kwargs)
    try:
        return trainer.fit()
    finally:
        trainer.close()
        shutdown(trainer.dist)
