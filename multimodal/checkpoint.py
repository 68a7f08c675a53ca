"""Checkpoints: a directory of safetensors weights, the resolved config and the tokenizers.

Layout of one checkpoint::

    step_000500/
      config.yaml              the fully resolved config: rebuilds the exact pipeline
      model.safetensors        weights (no pickle anywhere)
      tokenizers/<name>/       each trained tokenizer (text: tokenizer.json)
      optimizer.safetensors    optimizer tensors (training checkpoints only)
      trainer_state.json       step, optimizer hyper-parameters, metrics
      meta.json                written last: format, step, checkpoint id

A run with ``train.strategy: fsdp`` writes *sharded* checkpoints instead: ``model.safetensors``
and ``optimizer.safetensors`` are replaced by ``sharded/``, one safetensors file per process
written by ``torch.distributed.checkpoint`` (its Hugging Face storage writer: each file's JSON
header records where its pieces sit in the whole tensors), holding ``model.<name>`` and
``optim.<name>.<state>`` tensors; the optimizer's parameter groups are JSON in
``trainer_state.json``. Any number of processes reads it back, one plain process included
(:func:`read_sharded`), so a sharded checkpoint resumes at another process count, loads for
generation as it is, and converts to the single-folder format
(:func:`consolidate_checkpoint`). Reading it unpickles nothing: the reader takes its layout from
the safetensors headers (JSON), never from DCP's pickled ``.metadata`` file, which is not
written.

A checkpoint is written into a temporary sibling directory and renamed into place only when
complete, so a killed run never leaves a broken checkpoint under a real name. A run directory
holds ``checkpoints/step_*``; wherever a checkpoint is asked for, a run directory means its
newest complete checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from multimodal.builders import DECODER_FILES_DIR, build_model, component_kwargs
from multimodal.config import dump_yaml, parse_yaml, validate_config
from multimodal.errors import CheckpointError, ConfigError, excerpt
from multimodal.io import default_mode, sha256_file
from multimodal.safety import CHECKPOINT_BLOCKLIST

FORMAT = "multimodal-checkpoint/1"
REQUIRED_FILES = ("config.yaml", "model.safetensors", "meta.json")
SHARDED_DIR = "sharded"  # a sharded checkpoint's weights and optimizer state, in place of
# model.safetensors and optimizer.safetensors


# -- writing -----------------------------------------------------------------------------------
def save_checkpoint(path: str | Path, *, model: torch.nn.Module, config: dict,
                    tokenizers: dict[str, Any], step: int = 0,
                    optimizer: torch.optim.Optimizer | None = None,
                    trainer_state: dict | None = None, dtype: torch.dtype | None = None,
                    ema: dict[str, torch.Tensor] | None = None,
                    extra_files: dict[str, bytes] | None = None,
                    tokenizer_dtype: torch.dtype | None = None) -> Path:
    """Write a checkpoint directory atomically.

    Args:
        path: The checkpoint directory to create (replaced if it exists).
        model: Its ``state_dict`` is saved (cast to ``dtype`` when given, e.g. fp16 to ship).
        config: The resolved config.
        tokenizers: ``{name: tokenizer}``; each is saved with ``save(directory)``.
        step: Training step, recorded in ``meta.json``.
        optimizer: Saved too when given, for ``--resume``.
        trainer_state: JSON-serialisable training state.
        ema: The EMA weights (a full state dict), saved as ``ema.safetensors``.
        extra_files: ``{name: bytes}`` written beside them (a config's safety blocklist).
        tokenizer_dtype: Also cast the tokenizers' floating-point weights (VAEs, vocoders) to
            this dtype (their loaders cast them back).

    Returns:
        ``path``.

    Raises:
        CheckpointError: the checkpoint cannot be written (a full disk, no permission): names
            the path and the reason; nothing is left under ``path``'s name.
    """
    path = Path(path)
    try:
        return _save_checkpoint(path, model=model, config=config, tokenizers=tokenizers,
                                step=step, optimizer=optimizer, trainer_state=trainer_state,
                                dtype=dtype, ema=ema, extra_files=extra_files,
                                tokenizer_dtype=tokenizer_dtype)
    except (OSError, SafetensorError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
        raise CheckpointError(f"cannot write checkpoint {path}: {reason}{where}") from None


def unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` with every tensor that shares memory with an earlier one copied:
    safetensors refuses shared tensors, and a tied head (GPT-2's ``lm_head`` is its token
    embedding) names one tensor twice in a ``state_dict``. Loading writes the same values into
    both names, so the tie holds."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for key, value in tensors.items():
        where = (value.untyped_storage().data_ptr(), value.untyped_storage().nbytes())
        if value.numel() and where in seen:
            value = value.clone()
        elif value.numel():
            seen.add(where)
        out[key] = value
    return out


def _save_checkpoint(path: Path, *, model, config, tokenizers, step, optimizer, trainer_state,
                     dtype, ema, extra_files, tokenizer_dtype) -> Path:
    """See :func:`save_checkpoint`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        os.chmod(tmp, default_mode(directory=True))
        weights = unshared({k: (v.to(dtype) if dtype is not None and v.is_floating_point()
                                else v).detach().cpu().contiguous()
                            for k, v in model.state_dict().items()})
        save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
        # Files a module needs beside its weights to be rebuilt (a transformers backbone's
        # config.json, a diffusers denoiser's), so a model loads after the folder it was read
        # from is gone.
        for name, data in model_files(model).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        if ema is not None:
            save_file(unshared({k: v.detach().cpu().contiguous() for k, v in ema.items()}),
                      tmp / "ema.safetensors", metadata={"format": "pt"})
        _write_config_and_tokenizers(tmp, config, tokenizers, extra_files)
        if tokenizers and tokenizer_dtype is not None:
            for file in (tmp / "tokenizers").rglob("*.safetensors"):
                tensors = load_file(str(file))
                save_file({k: v.to(tokenizer_dtype) if v.is_floating_point() else v
                           for k, v in tensors.items()}, file, metadata={"format": "pt"})
        if optimizer is not None:
            tensors, groups = _flatten_optimizer(optimizer.state_dict())
            save_file(tensors, tmp / "optimizer.safetensors")
            state = dict(trainer_state or {}, param_groups=groups)
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
        elif trainer_state is not None:
            (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
        meta = {"format": FORMAT, "step": step,
                "checkpoint_id": sha256_file(tmp / "model.safetensors")[:12]}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        _move_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def model_files(model: torch.nn.Module) -> dict[str, bytes]:
    """``{path in the checkpoint: bytes}`` of the files the model's parts need beside their
    weights to be rebuilt without the folders they were read from: the backbone's
    ``checkpoint_files()`` (paths as it gives them, e.g. ``backbone/config.json``) and each
    decoder's, under ``decoders/<name>/`` (where :func:`multimodal.builders.build_model` finds
    them again)."""
    files = dict(getattr(getattr(model, "backbone", None), "checkpoint_files", dict)())
    for name, decoder in getattr(model, "decoders", {}).items():
        for file, data in getattr(decoder, "checkpoint_files", dict)().items():
            files[f"{DECODER_FILES_DIR}/{name}/{file}"] = data
    return files


def _fsync_dir(directory: Path) -> None:
    for f in directory.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], list]:
    tensors = {}
    for idx, state in state_dict["state"].items():
        for name, value in state.items():
            value = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
    return tensors, state_dict["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": groups}


def _write_config_and_tokenizers(tmp: Path, config: dict, tokenizers: dict | None,
                                 extra_files: dict[str, bytes] | None) -> None:
    """What every checkpoint holds beside its weights: the resolved config, the extra files
    (a config's own blocklist) and each tokenizer in ``tokenizers/<name>/``."""
    (tmp / "config.yaml").write_text(dump_yaml(config), encoding="utf-8")
    for name, data in (extra_files or {}).items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)  # decoders/<name>/config.json
        (tmp / name).write_bytes(data)
    if tokenizers:
        (tmp / "tokenizers").mkdir()
        for name, tok in tokenizers.items():
            (tmp / "tokenizers" / name).mkdir()
            tok.save(tmp / "tokenizers" / name)


def _move_into_place(tmp: Path, path: Path) -> None:
    """Make the complete checkpoint folder ``tmp`` the checkpoint ``path``, atomically: the
    usual permissions (safetensors writes 0600 files), synced, renamed over any older one."""
    for f in tmp.rglob("*"):
        os.chmod(f, default_mode(directory=f.is_dir()))
    _fsync_dir(tmp)
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    _fsync_dir(path.parent)


def prune_checkpoints(run_dir: str | Path, keep: int, *, protect: Path | None = None) -> None:
    """Delete all but the newest ``keep`` complete checkpoints of a run, and the leftovers
    of interrupted saves (``.step_N.tmp-*`` and ``.step_N.old-PID``); ``protect`` (the
    checkpoint just written) is never deleted. Call it only while holding the run's lock."""
    directory = Path(run_dir) / "checkpoints"
    for stale in [*directory.glob(".*.tmp-*"), *directory.glob(".*.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    complete = list_checkpoints(run_dir)
    for old in complete[:-keep] if keep > 0 else []:
        if protect is None or old.resolve() != Path(protect).resolve():
            shutil.rmtree(old, ignore_errors=True)


# -- finding -----------------------------------------------------------------------------------
def is_complete(path: Path) -> bool:
    if is_sharded(path):
        return all((path / f).is_file() for f in REQUIRED_FILES if f != "model.safetensors")
    return path.is_dir() and all((path / f).is_file() for f in REQUIRED_FILES)


def is_sharded(path: Path) -> bool:
    """Whether ``path`` is a sharded checkpoint (``sharded/`` with safetensors files)."""
    directory = Path(path) / SHARDED_DIR
    return directory.is_dir() and any(directory.glob("*.safetensors"))


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run directory, oldest first."""
    directory = Path(run_dir) / "checkpoints"
    if not directory.is_dir():
        return []
    found = [p for p in directory.glob("step_*") if is_complete(p)]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]) if p.name.split("_")[1].isdigit() else -1)


def find_checkpoint(path: str | Path) -> Path:
    """Resolve a checkpoint directory, or a run directory to its newest complete checkpoint.

    Raises:
        CheckpointError: nothing there, or only partial checkpoints (names the missing files).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a file; expected a checkpoint directory "
                              "(holding config.yaml, model.safetensors, meta.json) or a run "
                              "directory (holding checkpoints/step_*)")
    if is_complete(path):
        return path
    found = list_checkpoints(path)
    if found:
        return found[-1]
    present = {f for f in REQUIRED_FILES if (path / f).is_file()}
    if present:
        missing = sorted(set(REQUIRED_FILES) - present)
        raise CheckpointError(f"checkpoint {path} is partial: missing {', '.join(missing)}")
    raise CheckpointError(f"no checkpoint in {path}: expected config.yaml, model.safetensors "
                          "and meta.json, or a run directory with checkpoints/step_*")


# -- reading -----------------------------------------------------------------------------------
@dataclass
class LoadedCheckpoint:
    """What :func:`load_checkpoint` returns."""

    path: Path
    config: dict
    model: torch.nn.Module
    tokenizers: dict[str, Any]
    meta: dict = field(default_factory=dict)

    @property
    def checkpoint_id(self) -> str:
        return self.meta.get("checkpoint_id", "unknown")


def read_config(path: Path) -> dict:
    """The validated config saved in a checkpoint.

    Raises:
        CheckpointError: unreadable, or incompatible with the registered components.
    """
    try:
        config = parse_yaml((path / "config.yaml").read_text(encoding="utf-8"),
                            str(path / "config.yaml"))
        if not isinstance(config, dict):
            raise ConfigError("config.yaml is not a mapping")
        validate_config(config, source=str(path / "config.yaml"))
    except (ConfigError, OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} has an unusable config: {exc}") from None
    return config


def read_meta(path: Path) -> dict:
    try:
        meta = json.loads((path / "meta.json").read_text())
        if not isinstance(meta, dict):
            raise ValueError("expected a JSON mapping")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} has an unreadable meta.json: {exc}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')!r}; "
                              f"this version reads {FORMAT!r}")
    return meta


def load_tokenizers(path: Path, config: dict) -> dict[str, Any]:
    loaded = {}
    for name, section in (config.get("tokenizers") or {}).items():
        directory = path / "tokenizers" / name
        if not directory.is_dir():
            raise CheckpointError(f"checkpoint {path} is partial: missing tokenizers/{name}/")
        loaded[name] = load_tokenizer(section, directory, dotted=f"tokenizers.{name}")
    return loaded


def load_tokenizer(section: dict, directory: Path, *, dotted: str = "tokenizers") -> Any:
    """The tokenizer of config ``section`` (``{type: ..., **kwargs}``) at ``dotted``, read
    from ``directory``: ``cls.load(directory, **kwargs)`` with the keyword arguments the
    builder would construct it with (nested components built; see
    :func:`multimodal.builders.component_kwargs`)."""
    cls, kwargs = component_kwargs("tokenizers", section, dotted)
    return cls.load(directory, **kwargs)


def tokenizer_names(path: Path) -> list[str]:
    root = path / "tokenizers"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def generation_weights(path: Path) -> Path:
    """The weights file a checkpoint generates with: its EMA weights (``ema.safetensors``,
    from ``train.ema_decay``) where it has them, else ``model.safetensors``."""
    ema = path / "ema.safetensors"
    return ema if ema.is_file() else path / "model.safetensors"


def read_weights(file: Path) -> dict[str, torch.Tensor]:
    file = Path(file)
    if file.name == "model.safetensors" and not file.exists() and is_sharded(file.parent):
        return sharded_model_weights(file.parent)  # a sharded checkpoint, read whole
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read weights {file}: {exc}") from None


def load_weights(model: torch.nn.Module, file: Path | dict, *, strict: bool = True,
                 adapt: bool = False) -> dict[str, list]:
    """Load safetensors weights (a file, or a dict already read) into ``model``, cast to the
    model's dtypes.

    With ``adapt`` (``init_from`` another model), a decoder that has no weights in the file
    builds its own from the others through its ``init_weights_from(weights)`` method when it
    has one (a video denoiser from an image DiT) or else keeps its fresh initialisation (with a
    warning naming it), and weights of decoders the model lacks are dropped.

    Returns:
        ``{"missing": [...], "unexpected": [...]}`` (both empty when ``strict``).

    Raises:
        CheckpointError: unreadable file; with ``strict``, missing or unexpected weights or a
            shape mismatch, each named.
    """
    if isinstance(file, dict):  # weights already read (merge_init_weights)
        weights, origin = file, "init_from"
    else:
        weights, origin = read_weights(file), f"init_from {file.parent}"
    fresh: list[str] = []
    if adapt:
        weights = _adapt_weights(model, weights)
        own = model.state_dict()
        fresh = [name for name in getattr(model, "decoders", {})
                 if any(k.startswith(f"decoders.{name}.") for k in own)
                 and not any(k.startswith(f"decoders.{name}.") for k in weights)]
        if fresh:
            warnings.warn(f"{origin}: it has no weights for "
                          f"{', '.join('decoders.' + n for n in fresh)}, which start from "
                          "scratch", stacklevel=2)
    expected = model.state_dict()
    missing = sorted(k for k in set(expected) - set(weights)
                     if not any(k.startswith(f"decoders.{n}.") for n in fresh))
    unexpected = sorted(set(weights) - set(expected))
    mismatched = [f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in sorted(set(weights) & set(expected))
                  if weights[k].shape != expected[k].shape]
    problems = []
    if mismatched:
        problems.append("shape mismatch: " + "; ".join(mismatched[:10]))
    if strict and missing:
        problems.append(f"missing weights ({len(missing)}): {', '.join(missing[:10])}")
    if strict and unexpected:
        problems.append(f"unexpected weights ({len(unexpected)}): {', '.join(unexpected[:10])}")
    if problems:
        where = "the init_from weights" if isinstance(file, dict) else f"weights in {file}"
        raise CheckpointError(f"{where} do not fit the model built from its config: "
                              + " | ".join(problems))
    weights = {k: v.to(expected[k].dtype) for k, v in weights.items() if k in expected}
    model.load_state_dict(weights, strict=False)
    return {"missing": missing, "unexpected": unexpected}


def _adapt_weights(model: torch.nn.Module, weights: dict) -> dict:
    """See ``adapt`` in :func:`load_weights`."""
    decoders = getattr(model, "decoders", {})
    adapted = dict(weights)
    for name, decoder in decoders.items():
        prefix = f"decoders.{name}."
        hook = getattr(decoder, "init_weights_from", None)
        if hook is not None and not any(k.startswith(prefix) for k in weights):
            adapted.update({prefix + k: v for k, v in hook(weights).items()})
    return {k: v for k, v in adapted.items()
            if not k.startswith("decoders.") or k.split(".")[1] in decoders}


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu",
                    ema: bool = True) -> LoadedCheckpoint:
    """Rebuild the model and tokenizers saved in a checkpoint (or a run's newest one).

    With ``ema`` (default) the EMA weights are loaded where the checkpoint has them
    (``ema.safetensors``, or the ``ema.*`` shards of a sharded checkpoint, from
    ``train.ema_decay``); else the raw weights.

    Raises:
        CheckpointError: missing, partial or incompatible checkpoint (see :func:`find_checkpoint`
            and :func:`load_weights`).
    """
    path = find_checkpoint(path)
    meta = read_meta(path)
    config = read_config(path)
    tokenizers = load_tokenizers(path, config)
    try:
        model = build_model(config, tokenizers, checkpoint_dir=path)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path}: cannot build its model: {exc}") from None
    if is_sharded(path):  # converted in memory: read every shard into the whole model
        load_weights(model, sharded_model_weights(path, ema=ema))
    else:
        load_weights(model, generation_weights(path) if ema else path / "model.safetensors")
    model.to(device).eval()
    return LoadedCheckpoint(path=path, config=config, model=model, tokenizers=tokenizers,
                            meta=meta)


def load_optimizer_state(path: Path, optimizer: torch.optim.Optimizer) -> dict:
    """Restore an optimizer saved by :func:`save_checkpoint`; return the trainer state.

    Raises:
        CheckpointError: the checkpoint holds no optimizer state or it does not fit.
    """
    file, state_file = path / "optimizer.safetensors", path / "trainer_state.json"
    if not file.is_file() or not state_file.is_file():
        raise CheckpointError(f"checkpoint {path} holds no optimizer state to resume from")
    state = read_trainer_state(path)
    tensors = read_weights(file)
    try:
        optimizer.load_state_dict(_unflatten_optimizer(tensors, state.pop("param_groups")))
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"optimizer state in {path} does not fit this model: {exc}") from None
    return state


def read_trainer_state(path: Path) -> dict:
    """A checkpoint's ``trainer_state.json`` (the step, the optimizer's parameter groups).

    Raises:
        CheckpointError: unreadable or malformed, naming the file.
    """
    file = path / "trainer_state.json"
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
        step = state.get("step") if isinstance(state, dict) else None
        if not isinstance(step, int) or isinstance(step, bool) or step < 0 \
                or not isinstance(state.get("param_groups", []), list):
            raise ValueError("expected a mapping with an integer step >= 0")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {file}: {exc}") from None
    meta_step = read_meta(path).get("step")
    if step != meta_step:
        raise CheckpointError(f"{file} says step {excerpt(step)} but the checkpoint's meta.json "
                              f"says {excerpt(meta_step)}: the files disagree")
    return state


def check_checkpoint_files(path: Path) -> None:
    """Open every file a ``--resume`` reads from checkpoint ``path`` (the safetensors
    headers, which also catch a truncated file, and the JSON files), without loading weights.

    Raises:
        CheckpointError: naming the first broken file.
    """
    read_meta(path)
    read_trainer_state(path)
    if is_sharded(path):
        sharded_keys(path)
        return
    for name in ("model.safetensors", "optimizer.safetensors", "ema.safetensors"):
        file = path / name
        if name == "ema.safetensors" and not file.exists():
            continue
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read weights {file}: {exc}") from None


def export_checkpoint(source: str | Path, destination: str | Path, *,
                      dtype: torch.dtype | None = torch.float16,
                      takes: list[tuple[str | Path, str]] | None = None) -> Path:
    """Copy a checkpoint for shipping: weights only (no optimizer state), the model's and the
    tokenizers' weights cast to ``dtype`` (EMA weights where the checkpoint has them); with
    ``takes``, decoders of other stages joined in (:func:`compose_checkpoint`).

    Weights are cast back to the model's dtype (fp32) when loaded.
    """
    loaded = compose_checkpoint(source, takes) if takes else load_checkpoint(source)
    blocklist = loaded.path / CHECKPOINT_BLOCKLIST
    return save_checkpoint(destination, model=loaded.model, config=loaded.config,
                           tokenizers=loaded.tokenizers, step=loaded.meta.get("step", 0),
                           dtype=dtype, tokenizer_dtype=dtype,
                           extra_files={CHECKPOINT_BLOCKLIST: blocklist.read_bytes()}
                           if blocklist.is_file() else None)


def _same_tokenizer(a: Path, b: Path, name: str) -> bool:
    """Whether two checkpoints saved the same tokenizer ``name``: the same files, equal bytes
    but for JSON files, whose shared keys must agree (a fit's statistics, such as a VAE's
    final loss, are kept only by the run that fitted it)."""
    files = [sorted(p.relative_to(d) for p in d.rglob("*") if p.is_file())
             for d in (a / "tokenizers" / name, b / "tokenizers" / name)]
    if files[0] != files[1]:
        return False
    for rel in files[0]:
        x, y = a / "tokenizers" / name / rel, b / "tokenizers" / name / rel
        if rel.suffix == ".json":
            dx, dy = (json.loads(f.read_text(encoding="utf-8")) for f in (x, y))
            if not (isinstance(dx, dict) and isinstance(dy, dict)):
                if dx != dy:
                    return False
            elif any(dx[k] != dy[k] for k in dx.keys() & dy.keys()):
                return False
        elif sha256_file(x) != sha256_file(y):
            return False
    return True


def compose_checkpoint(base: str | Path, takes: list[tuple[str | Path, str]]) -> LoadedCheckpoint:
    """``base`` with decoders taken from other checkpoints that share its frozen backbone.

    Two stages that freeze the same backbone and train different decoders can run side by
    side; this joins them. Each ``(source, "decoders.NAME")`` brings that decoder's weights,
    its config section (and ``data.NAME``, for the record) and any tokenizer the base lacks.

    Raises:
        CheckpointError: a part that is not ``decoders.NAME`` or that the source lacks, a
            backbone that differs from the base's in any weight (the decoder was fitted to
            another backbone), or a tokenizer both have that differs.
    """
    loaded = load_checkpoint(base)
    config = {**loaded.config, "decoders": dict(loaded.config.get("decoders") or {})}
    config["data"] = dict(loaded.config.get("data") or {})
    config["tokenizers"] = dict(loaded.config.get("tokenizers") or {})
    tokenizers, weights = dict(loaded.tokenizers), loaded.model.state_dict()
    backbone = {k: v for k, v in weights.items() if k.startswith("backbone.")}
    taken_from: dict[str, Path] = {}  # decoder -> the checkpoint holding its saved files
    for source, part in takes:
        src = load_checkpoint(source)
        name = part.removeprefix("decoders.")
        if not part.startswith("decoders.") or name not in (src.config.get("decoders") or {}):
            raise CheckpointError(f"cannot take '{part}' from {src.path}: name one of its "
                                  f"decoders: " + ", ".join(f"decoders.{d}" for d in
                                                            src.config.get("decoders") or {}))
        theirs = src.model.state_dict()
        differ = [k for k, v in backbone.items()
                  if k not in theirs or not torch.equal(theirs[k].to(v.dtype), v)]
        if differ or any(k.startswith("backbone.") and k not in backbone for k in theirs):
            raise CheckpointError(f"cannot take '{part}' from {src.path}: its backbone is not "
                                  f"the one of {loaded.path} ({len(differ)} weights differ, "
                                  f"e.g. {differ[:1]}); decoders join only across stages that "
                                  "froze the same backbone")
        for tok in src.config.get("tokenizers") or {}:
            if tok not in tokenizers:
                tokenizers[tok] = src.tokenizers[tok]
                config["tokenizers"][tok] = src.config["tokenizers"][tok]
            elif not _same_tokenizer(src.path, loaded.path, tok):
                raise CheckpointError(f"cannot take '{part}' from {src.path}: its tokenizer "
                                      f"'{tok}' differs from the one of {loaded.path}")
        config["decoders"][name] = src.config["decoders"][name]
        taken_from[name] = src.path
        if name in (src.config.get("data") or {}):
            config["data"][name] = src.config["data"][name]
        weights = {k: v for k, v in weights.items() if not k.startswith(part + ".")}
        weights.update({k: v for k, v in theirs.items() if k.startswith(part + ".")})
    validate_config(config, source=f"{loaded.path} composed")
    try:
        model = build_model(config, tokenizers, checkpoint_dir=loaded.path,
                            decoder_sources=taken_from)
    except ConfigError as exc:
        raise CheckpointError(f"cannot build the composed model: {exc}") from None
    load_weights(model, weights)
    return LoadedCheckpoint(path=loaded.path, config=config, model=model.eval(),
                            tokenizers=tokenizers, meta=loaded.meta)


# -- sharded checkpoints (train.strategy: fsdp) ------------------------------------------------
def save_sharded_checkpoint(path: str | Path, *, state: dict[str, torch.Tensor], config: dict,
                            tokenizers: dict[str, Any], step: int, trainer_state: dict,
                            is_main: bool, extra_files: dict[str, bytes] | None = None) -> Path:
    """Write a sharded checkpoint; every process of the job calls it (a collective).

    Args:
        path: The checkpoint directory to create (replaced if it exists).
        state: ``{"model.<name>": tensor, "optim.<name>.<state>": tensor}``: this process's
            ``DTensor`` shards, or plain tensors (the same on every process; one writes them).
        config, tokenizers, step, extra_files: As for :func:`save_checkpoint` (process 0
            writes them).
        trainer_state: JSON state: the step, the train settings, the optimizer's parameter
            groups (``param_groups``, with parameter names).
        is_main: Whether this is process 0, which writes everything but the shards.

    Returns:
        ``path``.

    Raises:
        CheckpointError: the checkpoint cannot be written, naming the path and the reason.
    """
    # deferred: torch.distributed.checkpoint is needed by sharded checkpoints only
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-sharded"  # one name all processes know
    barrier = torch.distributed.barrier if torch.distributed.is_initialized() else (lambda: None)
    try:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / SHARDED_DIR).mkdir(parents=True)
        barrier()
        with _single_process_is_meant():
            dcp.save({k: v.detach() for k, v in state.items()},
                     storage_writer=HuggingFaceStorageWriter(str(tmp / SHARDED_DIR),
                                                             save_distributed=True))
        if is_main:
            os.chmod(tmp, default_mode(directory=True))
            _write_config_and_tokenizers(tmp, config, tokenizers, extra_files)
            (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
            digest = hashlib.sha256("".join(
                sha256_file(f) for f in sorted((tmp / SHARDED_DIR).glob("*"))).encode())
            shards = len(list((tmp / SHARDED_DIR).glob("*.safetensors")))
            meta = {"format": FORMAT, "step": step, "sharded": {"files": shards},
                    "checkpoint_id": digest.hexdigest()[:12]}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            _move_into_place(tmp, path)
    except (OSError, SafetensorError, RuntimeError) as exc:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CheckpointError(f"cannot write checkpoint {path}: {reason}") from None
    barrier()  # no process goes on (or prunes) before the checkpoint is in place
    return path


@contextlib.contextmanager
def _single_process_is_meant():
    """Silence DCP's warning that, without a process group, it saves or loads in one
    process: here that is the intent (a reader on its own, a one-process writer)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable")
        yield


def sharded_keys(path: Path) -> dict[str, tuple[int, ...]]:
    """``{name: whole shape}`` of every tensor of sharded checkpoint ``path``, from the
    safetensors headers of its files (JSON; nothing is unpickled).

    Raises:
        CheckpointError: a file that does not open, named.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted((Path(path) / SHARDED_DIR).glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                extra = json.loads((f.metadata() or {}).get("DCP_SHARDING_INFO", "{}"))
                for key in f.keys():
                    shape = f.get_slice(key).get_shape()
                    offsets = extra.get(key, {}).get("saved_offsets", [0] * len(shape))
                    whole = tuple(s + o for s, o in zip(shape, offsets))
                    shapes[key] = tuple(max(a, b) for a, b in zip(shapes.get(key, whole), whole))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read weights {file}: {exc}") from None
    return shapes


def read_sharded(path: Path, template: dict[str, torch.Tensor]) -> None:
    """Fill ``template`` (``{name: tensor}``, plain tensors or this process's ``DTensor``
    shards) in place from sharded checkpoint ``path``, whatever the process count that wrote
    it. Each process reads on its own (no collective).

    Raises:
        CheckpointError: a name the checkpoint lacks, a shape that differs, an unreadable file.
    """
    # deferred: torch.distributed.checkpoint is needed by sharded checkpoints only
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    saved = sharded_keys(path)
    missing = sorted(set(template) - set(saved))
    mismatched = [f"{k}: checkpoint {saved[k]} vs model {tuple(v.shape)}"
                  for k, v in template.items() if k in saved and saved[k] != tuple(v.shape)]
    if missing or mismatched:
        raise CheckpointError(f"sharded checkpoint {path} does not fit this model: "
                              + " | ".join(filter(None, [
                                  f"missing ({len(missing)}): {', '.join(missing[:10])}"
                                  if missing else "",
                                  "shape mismatch: " + "; ".join(mismatched[:10])
                                  if mismatched else ""])))
    try:
        with _single_process_is_meant():
            dcp.load(template, no_dist=True,
                     storage_reader=HuggingFaceStorageReader(str(path / SHARDED_DIR)))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read sharded checkpoint {path}: {exc}") from None


def sharded_model_weights(path: Path, *, ema: bool = False) -> dict[str, torch.Tensor]:
    """The whole model weights of sharded checkpoint ``path`` (``{name: tensor}``, as
    ``model.safetensors`` would hold them); with ``ema``, its EMA weights in place of the
    parameters where it has them (as ``ema.safetensors`` would hold them)."""
    saved = sharded_keys(path)
    template = {}
    with safe_open(str(next((path / SHARDED_DIR).glob("*.safetensors"))), framework="pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    for key, shape in saved.items():
        if key.startswith("model.") or (ema and key.startswith("ema.")):
            dtype = _SAFETENSORS_DTYPES.get(dtypes.get(key, "F32"), torch.float32)
            template[key] = torch.empty(shape, dtype=dtype)
    read_sharded(path, template)
    weights = {k[len("model."):]: v for k, v in template.items() if k.startswith("model.")}
    weights.update({k[len("ema."):]: v for k, v in template.items() if k.startswith("ema.")})
    return weights


def has_sharded_ema(path: Path) -> bool:
    """Whether sharded checkpoint ``path`` holds EMA weights (``train.ema_decay``)."""
    return any(key.startswith("ema.") for key in sharded_keys(path))


_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "F64": torch.float64, "I64": torch.int64, "I32": torch.int32,
                       "BOOL": torch.bool, "U8": torch.uint8}


def consolidate_checkpoint(source: str | Path, destination: str | Path) -> Path:
    """Convert a sharded checkpoint (or a run's newest) into the single-folder format
    (``model.safetensors``, ``ema.safetensors`` where it has EMA weights, the config, the
    tokenizers; no optimizer state), for generation
    and for tools that read that format. One process, no ``torchrun``.

    Raises:
        CheckpointError: ``source`` is not a sharded checkpoint, or does not load.
    """
    path = find_checkpoint(source)
    if not is_sharded(path):
        raise CheckpointError(f"{path} is not a sharded checkpoint (it holds "
                              "model.safetensors already)")
    loaded = load_checkpoint(path, ema=False)
    blocklist = loaded.path / CHECKPOINT_BLOCKLIST
    return save_checkpoint(destination, model=loaded.model, config=loaded.config,
                           tokenizers=loaded.tokenizers, step=loaded.meta.get("step", 0),
                           ema=sharded_model_weights(path, ema=True)
                           if has_sharded_ema(path) else None,
                           extra_files={CHECKPOINT_BLOCKLIST: blocklist.read_bytes()}
                           if blocklist.is_file() else None)
