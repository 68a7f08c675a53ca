"""The run directory's rules: one run per folder, a lock while it runs, a log that never lies.

* A fresh run refuses an ``out_dir`` that already holds checkpoints (:func:`check_fresh`): it
  would otherwise prune the older run's checkpoints and its own by step number, and
  ``generate`` would pick up whichever is newest.
* :class:`RunLock` holds ``out_dir/.lock`` with ``fcntl.flock`` while a run writes there, so a
  second run into the same folder is refused, naming the first (pid, host, since). The OS
  releases a flock when its process dies, so a killed run never leaves a stale lock behind.
* :class:`RunLog` writes ``log.csv``: each row in one ``write()`` followed by ``fsync``, a
  short write (full disk) cut back off, a trailing partial line dropped when the file is
  opened, and on ``--resume`` the rows after the resumed step dropped (rewritten atomically),
  so the log is the log of the run the checkpoints continue.
* :class:`RunBoard` writes the same rows as TensorBoard scalars in ``tensorboard/``, rewound
  on ``--resume`` like the CSV (TensorBoard's ``purge_step``).
* :func:`resume_changes` lists the ``train.*`` settings a ``--resume`` would change.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from multimodal.errors import CheckpointError, ConfigError, TrainingError
from multimodal.io import atomic_write_text
from multimodal.train_config import TrainConfig

LOCK_FILE = ".lock"

# train.* settings that do not change what the run computes: a --resume may change them freely.
HARMLESS_CHANGES = frozenset({"eval_every", "log_every", "checkpoint_every", "keep_checkpoints",
                              "num_threads", "device", "preview_prompts", "eval_batches",
                              "compile", "strategy", "activation_checkpointing"})


def run_dir(config: dict, out_dir: str | Path | None = None) -> Path:
    """The run directory of ``config``: ``out_dir`` when given, else the config's
    ``out_dir``, else ``runs/<task>``."""
    return Path(out_dir or config.get("out_dir") or f"runs/{config.get('task', 'run')}")


def check_fresh(out_dir: Path) -> None:
    """Refuse to start a new run in ``out_dir`` if it already holds checkpoints (complete or
    partial).

    Raises:
        CheckpointError: naming the folder and what to do instead.
    """
    directory = out_dir / "checkpoints"
    found = sorted(p.name for p in directory.glob("step_*")) if directory.is_dir() else []
    if found:
        raise CheckpointError(
            f"{out_dir} already holds the checkpoints of a run ({', '.join(found[-3:])}); a "
            "run folder is never shared: continue that run with --resume, give another "
            "out_dir (--out-dir), or remove the folder")


class RunLock:
    """An exclusive ``flock`` on ``out_dir/.lock``, which records the holder (pid, host, start
    time) for the message of a run that is refused.

    Raises:
        TrainingError: another live process holds the lock.
    """

    _fh = None

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / LOCK_FILE
        self._fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.seek(0)
            owner = self._fh.read()
            self._fh.close()
            self._fh = None
            raise TrainingError(f"{out_dir} is in use by another run ({_describe(owner)}); "
                                "wait for it to end, or give another out_dir") from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                   "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        self._fh.flush()

    @property
    def held(self) -> bool:
        return self._fh is not None

    def release(self) -> None:
        """Let go of the lock (the file stays: removing it would race a run taking it)."""
        if self._fh is not None:
            self._fh.close()  # closing the descriptor releases the flock
            self._fh = None

    def __del__(self) -> None:
        self.release()


def _describe(owner: str) -> str:
    try:
        info = json.loads(owner)
        return f"pid {info['pid']} on {info['host']}, since {info['since']}"
    except (ValueError, KeyError, TypeError):
        return "owner unknown"


class RunLog:
    """``log.csv``: metric rows, the header widened when new metrics appear.

    Args:
        path: The CSV file.
        start_step: The step the run starts from: rows after it (from a run that went on past
            the checkpoint it is resumed from) are dropped, and so is a trailing partial row.
    """

    def __init__(self, path: Path, *, start_step: int = 0):
        self.path = Path(path)
        self.fields: list[str] = []
        rows: list[dict] = []
        if self.path.is_file():
            text = self.path.read_text(encoding="utf-8", errors="replace")
            complete = text[:text.rfind("\n") + 1]  # a crash mid-row leaves no newline
            reader = csv.DictReader(io.StringIO(complete))
            self.fields = list(reader.fieldnames or [])
            rows = [r for r in reader if _step(r) is not None and _step(r) <= start_step
                    and None not in r and None not in r.values()]
            if rows != list(csv.DictReader(io.StringIO(text))):
                self._rewrite(rows)

    def write(self, row: dict) -> None:
        """Append one row; raises :class:`TrainingError` naming the file when it cannot."""
        row = {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
        new = [k for k in row if k not in self.fields]
        try:
            if new:
                rows = list(csv.DictReader(io.StringIO(self.path.read_text(encoding="utf-8")))) \
                    if self.path.is_file() and self.fields else []
                self.fields += new
                self._rewrite(rows + [row])
                return
            self._append(_csv_text([row], self.fields, header=False))
        except OSError as exc:
            raise TrainingError(f"cannot write the training log {self.path}: "
                                f"{exc.strerror or exc}") from None

    def _append(self, text: str) -> None:
        data = text.encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            try:
                written = os.write(fd, data)  # one write: a row is whole or absent
                if written != len(data):
                    raise OSError(28, os.strerror(28))  # a short write: the disk is full
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, size)  # take the partial row back off
                raise
        finally:
            os.close(fd)

    def _rewrite(self, rows: list[dict]) -> None:
        atomic_write_text(self.path, _csv_text(rows, self.fields, header=True))


class RunBoard:
    """TensorBoard event files in ``out_dir/tensorboard/``: each row :class:`RunLog` writes,
    as one scalar per metric under its ``log.csv`` column name (``loss``, ``loss_text``,
    ``lr``, ``val_text_loss``, ...) at its step, flushed with the row.

    A resumed run opens the folder with ``purge_step=start_step + 1``: TensorBoard then hides
    the events an earlier process wrote after the resumed checkpoint, as :class:`RunLog` drops
    those rows (the row of ``start_step`` itself was logged before the checkpoint and stays).

    Args:
        directory: The event folder (``out_dir/tensorboard``).
        start_step: The step the run starts from (0 for a new run).
    """

    def __init__(self, directory: Path, *, start_step: int = 0):
        # deferred: TensorBoard's writer (protobuf, ~0.2 s) loads when a run logs, not with
        # every command of the CLI, which imports the trainer
        from torch.utils.tensorboard import SummaryWriter

        self.directory = Path(directory)
        self._writer = SummaryWriter(str(self.directory),
                                     purge_step=start_step + 1 if start_step else None)

    def write(self, row: dict) -> None:
        """Add each number of ``row`` (except ``step``) as a scalar at ``row["step"]``."""
        step = int(row["step"])
        for name, value in row.items():
            if name != "step" and isinstance(value, (int, float)):
                self._writer.add_scalar(name, float(value), step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def _csv_text(rows: list[dict], fields: list[str], *, header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _step(row: dict) -> int | None:
    try:
        return int(row.get("step") or "")
    except ValueError:
        return None


def resume_changes(saved: dict, config: dict) -> dict[str, tuple[Any, Any]]:
    """``{key: (old, new)}`` for each ``train.*`` setting (and ``seed``) of ``config`` that
    differs from the checkpoint's ``saved`` config and changes what the run computes (not
    those in :data:`HARMLESS_CHANGES`)."""
    old, new = _plain(asdict(TrainConfig.from_config(saved))), \
        _plain(asdict(TrainConfig.from_config(config)))
    changes = {f"train.{k}": (old[k], new[k]) for k in old
               if k not in HARMLESS_CHANGES and old[k] != new[k]}
    if int(saved.get("seed", 0)) != int(config.get("seed", 0)):
        changes["seed"] = (saved.get("seed", 0), config.get("seed", 0))
    return changes


def allowed_change_keys(names: Iterable[str]) -> set[str]:
    """The dotted keys of ``--allow-changes`` (``max_steps`` and ``train.max_steps`` alike).

    Raises:
        ConfigError: a name that is no ``train.*`` setting nor ``seed``.
    """
    known = {f"train.{k}" for k in TrainConfig.__dataclass_fields__} | {"seed"}
    keys = set()
    for name in names:
        for part in str(name).split(","):
            part = part.strip()
            if not part:
                continue
            key = part if part in known else f"train.{part}"
            if key not in known:
                raise ConfigError(f"--allow-changes: {part!r} is not a train setting; give "
                                  "names such as max_steps or train.lr")
            keys.add(key)
    return keys


def _plain(value: Any) -> Any:
    """Tuples as lists, so a value read back from YAML compares equal."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
