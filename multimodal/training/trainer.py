"""One training loop for every modality.

``train(config)`` builds tokenizers, data, the shared backbone and the decoders from a resolved
config, then runs AdamW with linear warm-up and cosine decay (Loshchilov & Hutter 2017), gradient
accumulation and clipping, optional bf16 autocast, periodic validation and atomic checkpoints.

Every random draw of step ``s`` comes from generators seeded with ``(seed, s)``, and the learning
rate is a function of ``s`` alone, so a run resumed from a checkpoint continues exactly as the
uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import csv
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from multimodal.builders import build_datasets, build_modalities, build_model, build_tokenizers
from multimodal.checkpoint import (find_checkpoint, load_optimizer_state, load_tokenizers,
                                   load_weights, prune_checkpoints, read_config, save_checkpoint)
from multimodal.errors import CheckpointError, ConfigError, DataError, TrainingError
from multimodal.nn.lora import apply_lora, freeze, lora_settings
from multimodal.safety import CHECKPOINT_BLOCKLIST, SafetyPolicy
from multimodal.training.distributed import (check_shardable, init_distributed, metric_tensor,
                                             shutdown)
from multimodal.training.init_from import (load_init_tokenizers, merge_init_weights,
                                          parse_init_from)


@dataclass
class TrainConfig:
    """The ``train:`` section of a config.

    Attributes:
        max_steps: Optimizer steps in all.
        batch_size: Sequences per micro-batch, per modality: the global micro-batch, split
            evenly over the processes of a ``torchrun`` job.
        seq_len: Tokens per training window (text).
        grad_accum_steps: Micro-batches per optimizer step.
        lr: Peak learning rate.
        min_lr_ratio: Final learning rate as a share of ``lr`` (cosine decay).
        warmup_steps: Linear warm-up steps.
        weight_decay: AdamW decay on matrices (not on norms and biases).
        betas: AdamW betas.
        grad_clip: Clip the global gradient norm to this (0 turns clipping off).
        precision: ``"fp32"`` or ``"bf16"`` (autocast; CPU and CUDA).
        loss_weights: Weight of each modality's loss (default 1 each).
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
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        compile: Compile the backbone with ``torch.compile`` (inductor). Measured on 2 CPU
            cores for ``text_fortunes``: 1.06x faster steps after a ~25 s compile.
        ema_decay: Keep an exponential moving average of the weights with this decay (e.g.
            0.999; diffusers' ``EMAModel``, warm-up ``(1 + s) / (10 + s)``), saved as
            ``ema.safetensors`` beside the weights and used by pipelines and exports
            (default ``None``: off). Usual for diffusion decoders (Ho et al. 2020).
        freeze: Module prefixes whose weights do not train, e.g. ``[backbone]`` (fine-tuning a
            decoder on the ``init_from`` model).
        lora: Low-rank adapters, e.g. ``{rank: 8, alpha: 16}`` (see
            :class:`multimodal.nn.lora.LoRASettings`; default off).
        preview_prompts: After every checkpoint, generate from these prompts with the config's
            task (seed 0) into ``<run>/previews/step_N/``, to watch a run as it learns
            (default none; a preview that fails is a warning, not a stop).
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
    loss_weights: dict | None = None
    sampling: dict | None = None
    eval_every: int = 200
    eval_batches: int = 20
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    num_threads: int | None = None
    device: str = "auto"
    compile: bool = False
    ema_decay: float | None = None
    freeze: list | None = None
    lora: dict | None = None
    preview_prompts: list | None = None

    @classmethod
    def from_config(cls, config: dict) -> "TrainConfig":
        section = dict(config.get("train") or {})
        if "betas" in section:
            section["betas"] = tuple(section["betas"])
        return cls(**section)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate at ``step``: linear warm-up to ``lr``, cosine decay to ``lr*min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but CUDA is not available; use 'cpu' or 'auto'")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device {name!r} is not a device; use 'auto', 'cpu' or 'cuda'") from None


def autocast_for(device: torch.device, precision: str):
    """A context-manager factory: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def step_generator(seed: int, step: int, micro: int = 0, stream: int = 0) -> torch.Generator:
    """The generator for one micro-batch: a pure function of its coordinates."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + step) * 1_009 + micro * 17 + stream)
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
        config: The resolved, validated config (see :func:`multimodal.config.load_config`).
        out_dir: Run directory (default ``config["out_dir"]`` or ``runs/<task>``); holds
            ``checkpoints/step_*`` and ``log.csv``.
        resume: Continue from the newest checkpoint in ``out_dir``.
        progress: Show a tqdm progress bar.

    Raises:
        ConfigError, DataError, CheckpointError: on bad config, data or checkpoint.
    """

    def __init__(self, config: dict, *, out_dir: str | Path | None = None, resume: bool = False,
                 progress: bool = True):
        self.config = config
        self.cfg = TrainConfig.from_config(config)
        self.seed = int(config.get("seed", 0))
        self.out_dir = Path(out_dir or config.get("out_dir") or f"runs/{config.get('task', 'run')}")
        self.progress = progress
        self.device = resolve_device(self.cfg.device)
        self.dist = init_distributed(self.device)
        check_shardable(self.dist, self.cfg.batch_size)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if self.cfg.num_threads:
            torch.set_num_threads(self.cfg.num_threads)
        elif self.dist.enabled and self.device.type == "cpu":
            torch.set_num_threads(1)  # one thread per rank: ranks must not oversubscribe
        torch.manual_seed(self.seed)

        resume_from = None
        if resume:
            try:
                resume_from = find_checkpoint(self.out_dir)
            except CheckpointError as exc:
                raise CheckpointError(f"--resume: {exc}") from None
            self._check_resumable(resume_from)
        init_sources = [] if resume_from else parse_init_from(config.get("init_from"))

        self.modalities = build_modalities(config)
        self.sampling = self._sampling_shares()
        active = [m for m in self.modalities if self.sampling[m] > 0]  # the others rest
        train_sets = build_datasets(config, "train", active)
        missing = [m for m in active if m not in train_sets]
        if missing:
            raise ConfigError([f"decoders.{m} has no dataset: add data.{m}: {{type: ...}}"
                               for m in missing])

        if resume_from is not None:
            self.tokenizers = load_tokenizers(resume_from, config)
        else:  # init_from gives some (or all); the others are fitted here
            given = load_init_tokenizers(init_sources, config)
            if set(given) == set(config.get("tokenizers") or {}):
                self.tokenizers = given
            elif not self.dist.enabled:
                self.tokenizers = {**build_tokenizers(config), **given}
                self._fit_tokenizers(train_sets)
            else:  # rank 0 fits, the others load what it saved
                shared = self.out_dir / ".tokenizers-shared"
                if self.dist.is_main:
                    self.tokenizers = {**build_tokenizers(config), **given}
                    self._fit_tokenizers(train_sets)
                    _save_tokenizers(self.tokenizers, shared)
                self.dist.barrier()
                if not self.dist.is_main:
                    self.tokenizers = load_tokenizers(shared, config)
                self.dist.barrier()
                if self.dist.is_main:
                    shutil.rmtree(shared, ignore_errors=True)

        self.extra_files = _safety_files(config)
        self.model = build_model(config, self.tokenizers, adapters=False).to(self.device)
        if init_sources:  # (none when resuming)
            load_weights(self.model, merge_init_weights(init_sources, self.model), adapt=True)
        if self.cfg.freeze:
            freeze(self.model, list(self.cfg.freeze))
        lora = lora_settings(self.cfg.lora)
        if lora is not None:  # after init_from: the adapters start from the given model
            apply_lora(self.model, lora)  # (frozen modules stay frozen; adapters train)
            self.model.to(self.device)
        if not any(p.requires_grad for p in self.model.parameters()):
            raise ConfigError("train.freeze leaves nothing to train; freeze less, or add "
                              "train.lora adapters")

        self.dist.broadcast_(list(self.model.state_dict().values()))  # start identical
        if self.cfg.compile:
            self.model.backbone.compile(dynamic=False)  # in place: state_dict keys unchanged
        self.train_data = {m: self.modalities[m].prepare(train_sets[m], self.tokenizers,
                                                         seq_len=self.cfg.seq_len)
                           for m in active}
        self.val_data = {}
        for m, ds in build_datasets(config, "val", active).items():
            try:
                self.val_data[m] = self.modalities[m].prepare(ds, self.tokenizers,
                                                              seq_len=self.cfg.seq_len)
            except DataError:
                pass  # too little validation data: training goes on without it

        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, self.cfg.weight_decay), lr=self.cfg.lr,
            betas=self.cfg.betas)
        self.autocast = autocast_for(self.device, self.cfg.precision)
        self.ema = None
        if self.cfg.ema_decay is not None:
            if not 0.0 < self.cfg.ema_decay < 1.0:
                raise ConfigError(f"train.ema_decay must be in (0, 1), e.g. 0.999; got "
                                  f"{self.cfg.ema_decay}")
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.model.parameters(), decay=self.cfg.ema_decay, foreach=True)
        weights = self.cfg.loss_weights or {}
        unknown = [k for k in weights if k not in self.modalities]
        if unknown:
            raise ConfigError([f"train.loss_weights.{k}: no such modality; configured: "
                               f"{', '.join(self.modalities)}" for k in unknown])
        self.loss_weights = {m: float(weights.get(m, 1.0)) for m in self.modalities}
        self.step = 0
        self.last_checkpoint: Path | None = None
        self.history: list[dict] = []
        if resume_from is not None:
            self._resume(resume_from)

    # -- set-up helpers ---------------------------------------------------------------------
    def _sampling_shares(self) -> dict[str, float]:
        """``train.sampling`` checked, with the default share 1 filled in for each modality."""
        sampling = self.cfg.sampling or {}
        if not isinstance(sampling, dict):
            raise ConfigError(f"train.sampling must map modalities to shares of steps, e.g. "
                              f"{{audio: 0.5}}; got {sampling!r}")
        bad = [f"train.sampling.{k}: no such modality; configured: {', '.join(self.modalities)}"
               for k in sampling if k not in self.modalities]
        bad += [f"train.sampling.{k}: a share of steps in [0, 1] (0 rests it), got {v!r}"
                for k, v in sampling.items() if k in self.modalities
                and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1)]
        if bad:
            raise ConfigError(bad)
        shares = {m: float(sampling.get(m, 1.0)) for m in self.modalities}
        if not any(shares.values()):
            raise ConfigError("train.sampling rests every modality (all 0); give at least one a "
                              "share above 0")
        return shares

    def _fit_tokenizers(self, train_sets: dict) -> None:
        """Fit each untrained tokenizer, before the backbone trains (stage one)."""
        for name, tok in self.tokenizers.items():
            if tok.is_trained:
                continue
            if tok.fit_on == "text":
                data: Any = [t for m, ds in train_sets.items()
                             for t in self.modalities[m].text_corpus(ds)]
                if not data:
                    raise DataError(f"tokenizers.{name}: no text to fit the text tokenizer on")
            elif tok.fit_on in train_sets:
                data = train_sets[tok.fit_on]
            elif self.sampling.get(tok.fit_on) == 0:
                raise ConfigError(f"tokenizers.{name} learns from data.{tok.fit_on}, but "
                                  f"train.sampling.{tok.fit_on} is 0 (the modality rests): "
                                  f"give a share above 0, or take tokenizers.{name} from "
                                  "init_from")
            else:
                raise ConfigError(f"tokenizers.{name} learns from data.{tok.fit_on}, which the "
                                  f"config does not have")
            tok.fit(data, seed=self.seed, device=self.device, progress=self.progress)

    def _check_resumable(self, path: Path) -> None:
        saved = read_config(path)
        diffs = [k for k in ("tokenizers", "backbone", "decoders", "seed")
                 if saved.get(k) != self.config.get(k)]
        if diffs:
            raise CheckpointError(
                f"--resume: the checkpoint {path} was made with a different "
                f"{', '.join(diffs)} than this config; resume with the same model config, or "
                "start a new run in another out_dir")

    def _resume(self, path: Path) -> None:
        load_weights(self.model, path / "model.safetensors")
        state = load_optimizer_state(path, self.optimizer)
        self.step = int(state["step"])
        if self.ema is not None:
            from safetensors.torch import load_file

            file = path / "ema.safetensors"
            if not file.is_file():
                raise CheckpointError(f"--resume: {path} has no ema.safetensors, but "
                                      "train.ema_decay is set; resume with the same config")
            saved = load_file(str(file))
            self.ema.shadow_params = [saved[name].to(p) for name, p in
                                      self.model.named_parameters()]
            self.ema.optimization_step = self.step
        self.last_checkpoint = path

    # -- the loop ---------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One optimizer step over ``grad_accum_steps`` micro-batches of every modality."""
        cfg = self.cfg
        lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        torch.manual_seed(self.seed * 7919 + self.step)  # dropout and other in-model noise
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
                    loss, info = modality.loss(self.model.backbone, self.model.decoders[name], batch)
                if not torch.isfinite(loss):  # stop on every rank together, below
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
            metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(
                self.model.parameters(), cfg.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.model.parameters())
        self.step += 1
        return metrics

    def evaluate(self) -> dict[str, float]:
        """Validation metrics of every modality with validation data, prefixed ``val_`` (on
        rank 0 only under ``torchrun``)."""
        if not self.dist.is_main:
            return {}
        self.model.eval()
        out = {}
        for name, data in self.val_data.items():
            result = self.modalities[name].evaluate(
                self.model.backbone, self.model.decoders[name], data,
                batch_size=self.cfg.batch_size, max_batches=self.cfg.eval_batches,
                autocast=self.autocast)
            out.update({f"val_{name}_{k}": v for k, v in result.items()})
        return out

    def save(self) -> Path:
        if not self.dist.is_main:  # rank 0 writes; the weights are the same everywhere
            self.last_checkpoint = self.out_dir / "checkpoints" / f"step_{self.step:06d}"
            return self.last_checkpoint
        path = save_checkpoint(
            self.out_dir / "checkpoints" / f"step_{self.step:06d}", model=self.model,
            config=self.config, tokenizers=self.tokenizers, step=self.step,
            optimizer=self.optimizer, trainer_state={"step": self.step,
                                                     "train": asdict(self.cfg)},
            ema=self.ema_state_dict(), extra_files=self.extra_files)
        prune_checkpoints(self.out_dir, self.cfg.keep_checkpoints)
        self.last_checkpoint = path
        if self.cfg.preview_prompts:
            self.preview(path)
        return path

    def preview(self, checkpoint: Path) -> None:
        """Generate from ``train.preview_prompts`` with the checkpoint just written, through the
        task's own command line, into ``<run>/previews/step_N/<k>/``."""
        import argparse
        import contextlib
        import io
        import warnings

        from multimodal.pipelines import load_pipeline
        from multimodal.registry import pipelines

        task = self.config.get("task", "")
        out = self.out_dir / "previews" / f"step_{self.step:06d}"
        try:
            cls = pipelines.get(task)
            parser = argparse.ArgumentParser()
            cls.add_cli_arguments(parser)
            pipe = load_pipeline(task, checkpoint, device=str(self.device))
            for k, prompt in enumerate(self.cfg.preview_prompts):
                argv = ["--prompt", str(prompt), "--seed", "0", "--out", str(out / f"{k:02d}")]
                if any(a.dest == "no_progress" for a in parser._actions):
                    argv.append("--no-progress")
                with contextlib.redirect_stdout(io.StringIO()):
                    pipe.run_cli(parser.parse_args(argv))
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - a preview never stops training
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
        """Train to ``max_steps``; return the final metrics and the last checkpoint path."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        log = _CsvLog(self.out_dir / "log.csv") if self.dist.is_main else None
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
                    self.history.append({"step": self.step, **metrics})
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}",
                                tok_s=f"{metrics['tokens_per_s']:.0f}", refresh=False)
                if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or done:
                    self.save()
                last = metrics
        finally:
            bar.close()
        self.dist.barrier()  # every rank done (and rank 0's checkpoint written)
        if not last:  # already at max_steps (a finished run resumed)
            last = self.evaluate()
        return {"step": self.step, "checkpoint": str(self.last_checkpoint), **last}


class _CsvLog:
    """Appends metric rows to a CSV file, widening the header when new metrics appear."""

    def __init__(self, path: Path):
        self.path = path
        self.fields: list[str] = []
        if path.is_file():
            with open(path, newline="") as fh:
                self.fields = next(csv.reader(fh), [])

    def write(self, row: dict) -> None:
        new = [k for k in row if k not in self.fields]
        if new:
            rows = []
            if self.path.is_file() and self.fields:
                with open(self.path, newline="") as fh:
                    rows = list(csv.DictReader(fh))
            self.fields += new
            with open(self.path, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=self.fields)
                writer.writeheader()
                writer.writerows(rows)
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.fields).writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _safety_files(config: dict) -> dict[str, bytes]:
    """Check the config's safety policy now (not at the first generation) and return its own
    blocklist, to be copied into every checkpoint.

    Raises:
        ConfigError: the blocklist cannot be read.
    """
    SafetyPolicy.from_config(config)
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
        shutdown(trainer.dist)
