"""The run directory: nothing lost, nothing silent (one run per folder, a lock, an honest log,
clear errors on a full disk or a broken checkpoint, refused setting changes on --resume)."""

import csv
import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
import torch
from conftest import requires_fortunes

import multimodal.checkpoint as checkpoint_module
from multimodal.checkpoint import find_checkpoint, list_checkpoints
from multimodal.cli import _parser, main
from multimodal.config import dump_yaml
from multimodal.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    InputError,
    TrainingError,
)
from multimodal.testing import tiny_config
from multimodal.training import run_dir
from multimodal.training.distributed import wait_for_file
from multimodal.training.run_dir import RunLock, RunLog
from multimodal.training.trainer import Trainer, train


def _steps(log):
    with open(log, newline="") as fh:
        return [int(row["step"]) for row in csv.DictReader(fh)]


# -- 1. a run folder is never shared -------------------------------------------------------------
@requires_fortunes
def test_a_new_run_refuses_a_folder_that_holds_checkpoints(tmp_path):
    train(tiny_config(train={"max_steps": 4, "checkpoint_every": 2}), out_dir=tmp_path,
          progress=False)
    before = list_checkpoints(tmp_path)
    assert [p.name for p in before] == ["step_000002", "step_000004"]
    with pytest.raises(CheckpointError, match="--resume.*another out_dir.*remove"):
        Trainer(tiny_config(train={"max_steps": 2}), out_dir=tmp_path, progress=False)
    assert list_checkpoints(tmp_path) == before  # nothing pruned, nothing written
    # the refused run let go of the lock: the run can be continued
    Trainer(tiny_config(train={"max_steps": 4, "checkpoint_every": 2}), out_dir=tmp_path,
            resume=True, progress=False).close()


# -- 2. a lock on out_dir ------------------------------------------------------------------------
@requires_fortunes
def test_a_second_run_in_a_locked_folder_is_refused_naming_the_owner(tmp_path):
    first = Trainer(tiny_config(train={"max_steps": 2}), out_dir=tmp_path, progress=False)
    with pytest.raises(TrainingError, match=f"in use by another run \\(pid {os.getpid()} on "):
        Trainer(tiny_config(train={"max_steps": 2}), out_dir=tmp_path, progress=False)
    first.fit()  # fit releases the lock when it returns
    RunLock(tmp_path).release()


def test_a_lock_left_by_a_dead_process_does_not_block(tmp_path):
    holder = ("import fcntl, json, os, sys\n"
              "fh = open(sys.argv[1], 'a+'); fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
              "fh.write(json.dumps({'pid': os.getpid(), 'host': 'h', 'since': 't'})); "
              "fh.flush(); os._exit(0)\n")  # dies holding it, no clean-up
    subprocess.run([sys.executable, "-c", holder, str(tmp_path / ".lock")], check=True)
    lock = RunLock(tmp_path)
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    with pytest.raises(TrainingError, match=f"pid {os.getpid()}"):
        RunLock(tmp_path)
    lock.release()


# -- 3. log.csv: rewound on resume, never a malformed row ---------------------------------------
@requires_fortunes
def test_log_is_rewound_to_the_resumed_step_and_drops_a_partial_row(tmp_path):
    config = tiny_config(train={"max_steps": 8, "checkpoint_every": 4, "eval_every": 0})
    train(config, out_dir=tmp_path, progress=False)
    log = tmp_path / "log.csv"
    assert _steps(log) == list(range(1, 9))
    # killed after logging step 8 and half of a row, before its checkpoint was complete
    shutil.rmtree(tmp_path / "checkpoints" / "step_000008")
    with open(log, "a") as fh:
        fh.write("9,0.0")
    train(config, out_dir=tmp_path, resume=True, progress=False)
    assert _steps(log) == list(range(1, 9))  # each step once
    with open(log, newline="") as fh:
        rows = list(csv.reader(fh))
    assert len({len(r) for r in rows}) == 1 and log.read_text().endswith("\n")


def test_a_short_write_leaves_no_partial_row(tmp_path, monkeypatch):
    log = RunLog(tmp_path / "log.csv")
    log.write({"step": 1, "loss": 1.5})
    before = (tmp_path / "log.csv").read_bytes()
    real_write = os.write
    monkeypatch.setattr(run_dir.os, "write", lambda fd, data: real_write(fd, data[:3]))
    with pytest.raises(TrainingError, match="log.csv.*No space left"):
        log.write({"step": 2, "loss": 1.25})
    monkeypatch.undo()
    assert (tmp_path / "log.csv").read_bytes() == before
    log.write({"step": 2, "loss": 1.25})
    assert _steps(tmp_path / "log.csv") == [1, 2]


# -- 4. a full disk, an unwritable out_dir -------------------------------------------------------
@requires_fortunes
def test_a_full_disk_while_saving_is_one_line_naming_the_path_and_the_last_checkpoint(
        tmp_path, monkeypatch, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(dump_yaml(tiny_config(train={"max_steps": 4, "checkpoint_every": 2})))
    real_save, calls = checkpoint_module.save_file, []

    def save_file(tensors, filename, metadata=None):
        calls.append(filename)
        if "step_000004" in str(filename):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint_module, "save_file", save_file)
    assert main(["train", str(config), "--out-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "cannot write checkpoint" in err and "step_000004" in err
    assert "No space left on device" in err
    assert "last good checkpoint is" in err and "step_000002" in err
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step_000002"]


@requires_fortunes
def test_an_unwritable_out_dir_is_found_before_set_up(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setattr(Trainer, "_setup_datasets",
                        lambda self: pytest.fail("set-up began before out_dir was checked"))
    with pytest.raises(InputError, match="cannot write to output directory"):
        Trainer(tiny_config(), out_dir=blocker / "run", progress=False)
    with pytest.raises(InputError, match="is a file"):
        Trainer(tiny_config(), out_dir=blocker, progress=False)


# -- 5. --resume with changed settings -----------------------------------------------------------
@requires_fortunes
def test_resume_refuses_changed_train_settings_unless_allowed(tmp_path):
    train(tiny_config(train={"max_steps": 2}), out_dir=tmp_path, progress=False)
    changed = tiny_config(train={"max_steps": 4, "lr": 1e-3, "betas": [0.8, 0.95]}, seed=1)
    with pytest.raises(CheckpointError) as info:
        Trainer(changed, out_dir=tmp_path, resume=True, progress=False)
    message = str(info.value)
    for part in ("train.max_steps: 2 -> 4", "train.lr: 0.003 -> 0.001",
                 "train.betas: [0.9, 0.95] -> [0.8, 0.95]", "seed: 0 -> 1",
                 "--allow-changes train.max_steps,train.lr,train.betas,seed"):
        assert part in message, message
    # settings that do not change the result may change freely
    Trainer(tiny_config(train={"max_steps": 2, "log_every": 5, "eval_batches": 1,
                               "keep_checkpoints": 1}),
            out_dir=tmp_path, resume=True, progress=False).close()
    with pytest.raises(ConfigError, match="'max_stepz' is not a train setting"):
        Trainer(tiny_config(), out_dir=tmp_path, resume=True, allow_changes=["max_stepz"],
                progress=False)
    with pytest.raises(ConfigError, match="--resume only"):
        Trainer(tiny_config(), out_dir=tmp_path / "new", allow_changes=["max_steps"],
                progress=False)
    # extending a run on purpose
    result = train(tiny_config(train={"max_steps": 4}), out_dir=tmp_path, resume=True,
                   allow_changes=["max_steps"], progress=False)
    assert result["step"] == 4 and find_checkpoint(tmp_path).name == "step_000004"


def test_allow_changes_and_flags_after_overrides_on_the_command_line():
    args = _parser().parse_args(["train", "c.yaml", "train.max_steps=9", "--resume",
                                 "train.lr=0.1", "--allow-changes", "max_steps,lr"])
    assert args.overrides == ["train.max_steps=9", "train.lr=0.1"]
    assert args.resume and args.allow_changes == ["max_steps,lr"]
    assert run_dir.allowed_change_keys(args.allow_changes) == {"train.max_steps", "train.lr"}


# -- 6. --resume on a broken checkpoint ----------------------------------------------------------
@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("two")
    config = tiny_config(train={"max_steps": 4, "checkpoint_every": 2, "ema_decay": 0.5})
    train(config, out_dir=root / "run", progress=False)
    return config, root / "run"


@requires_fortunes
@pytest.mark.parametrize("name, damage", [
    ("optimizer.safetensors", "truncate"), ("model.safetensors", "truncate"),
    ("ema.safetensors", "truncate"), ("trainer_state.json", '{"step": '),
    ("meta.json", "[1, "), ("config.yaml", "backbone: [")])
def test_resume_on_a_broken_file_names_it_and_the_checkpoint_to_fall_back_to(
        two_checkpoints, tmp_path, name, damage):
    config, run = two_checkpoints
    shutil.copytree(run, tmp_path / "run")
    file = tmp_path / "run" / "checkpoints" / "step_000004" / name
    if damage == "truncate":
        file.write_bytes(file.read_bytes()[:len(file.read_bytes()) // 2])
    else:
        file.write_text(damage)
    with pytest.raises(CheckpointError) as info:
        Trainer(config, out_dir=tmp_path / "run", resume=True, progress=False)
    message = str(info.value)
    assert name in message and "previous complete checkpoint is" in message, message
    assert str(tmp_path / "run" / "checkpoints" / "step_000002") in message
    # the only checkpoint broken: nothing to fall back to, said so
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step_000002")
    with pytest.raises(CheckpointError, match="no earlier checkpoint"):
        Trainer(config, out_dir=tmp_path / "run", resume=True, progress=False)


@requires_fortunes
def test_resume_on_an_ema_file_missing_a_weight_names_it(two_checkpoints, tmp_path):
    from safetensors.torch import load_file, save_file
    config, run = two_checkpoints
    shutil.copytree(run, tmp_path / "run")
    file = tmp_path / "run" / "checkpoints" / "step_000004" / "ema.safetensors"
    tensors = load_file(str(file))
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    save_file(tensors, str(file))  # a readable file, not the model's weights
    with pytest.raises(CheckpointError) as info:
        Trainer(config, out_dir=tmp_path / "run", resume=True, progress=False)
    assert "ema.safetensors" in str(info.value) and dropped in str(info.value)
    assert "previous complete checkpoint is" in str(info.value)


# -- 7. blocklist, leftovers, a failed start, the tokenizer wait ---------------------------------
@requires_fortunes
@pytest.mark.parametrize("content, message", [
    (b"gore\n\x00\x01\x02\xff\xfe", "not UTF-8 text"),
    (b"gore\n\x00\x01\x02", "control characters"),
    (b"x" * ((1 << 20) + 1), "bytes; a blocklist is a text file of at most"),
    (b"word " * 100, "characters long; give one term"),
    (None, "is not a file")])
def test_a_blocklist_must_be_a_bounded_text_file_of_terms(tmp_path, monkeypatch, content,
                                                          message):
    blocklist = tmp_path / "blocklist"
    if content is None:
        blocklist.mkdir()
    else:
        blocklist.write_bytes(content)
    monkeypatch.setattr(Trainer, "_setup_datasets",
                        lambda self: pytest.fail("set-up began before the blocklist was checked"))
    with pytest.raises(ConfigError, match=message):
        Trainer(tiny_config(safety={"blocklist": str(blocklist)}), out_dir=tmp_path / "run",
                progress=False)


@requires_fortunes
def test_leftovers_of_interrupted_saves_are_pruned(tmp_path):
    config = tiny_config(train={"max_steps": 2, "checkpoint_every": 1, "keep_checkpoints": 1})
    trainer = Trainer(config, out_dir=tmp_path, progress=False)
    (tmp_path / "checkpoints" / ".step_000001.old-4242").mkdir(parents=True)
    (tmp_path / "checkpoints" / ".step_000001.tmp-abc").mkdir()
    trainer.fit()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000002"]


@requires_fortunes
def test_a_run_that_fails_in_set_up_removes_the_out_dir_it_created(tmp_path, monkeypatch):
    def too_little(self, train_sets):
        raise DataError("too little data")

    monkeypatch.setattr(Trainer, "_setup_data", too_little)
    with pytest.raises(DataError):
        Trainer(tiny_config(), out_dir=tmp_path / "new" / "run", progress=False)
    assert not (tmp_path / "new" / "run").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made stays
    with pytest.raises(DataError):
        Trainer(tiny_config(), out_dir=tmp_path / "mine", progress=False)
    assert (tmp_path / "mine").is_dir()
    RunLock(tmp_path / "mine").release()  # and its lock was let go


def test_other_ranks_wait_for_the_tokenizers_without_a_time_limit(tmp_path):
    done, failed = tmp_path / "DONE", tmp_path / "FAILED"
    timer = threading.Timer(0.3, done.touch)
    timer.start()
    start = time.monotonic()
    wait_for_file(done, failed=failed, poll_s=0.05)
    assert done.exists() and time.monotonic() - start >= 0.25
    timer.join()
    failed.touch()
    with pytest.raises(TrainingError, match="process 0 failed"):
        wait_for_file(tmp_path / "never", failed=failed, poll_s=0.01)


def test_checkpoint_save_errors_name_the_path(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint_module, "save_file", full)
    with pytest.raises(CheckpointError, match=f"cannot write checkpoint {tmp_path / 'ck'}: "
                                              "No space left on device"):
        checkpoint_module.save_checkpoint(tmp_path / "ck", model=torch.nn.Linear(2, 2),
                                          config={}, tokenizers={})
    assert list(tmp_path.iterdir()) == []  # the temporary directory is gone too


@pytest.mark.slow  # torchrun
def test_a_torchrun_run_that_fails_on_too_little_data_leaves_no_out_dir(tmp_path):
    (tmp_path / "a.txt").write_text("hello world\n")
    config = tiny_config(data={"text": {"type": "text_files", "paths": str(tmp_path / "a.txt")}},
                         train={"batch_size": 4, "num_threads": 1})
    (tmp_path / "tiny.yaml").write_text(dump_yaml(config))
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "multimodal", "train", str(tmp_path / "tiny.yaml"), "--out-dir",
         str(tmp_path / "run"), "--no-progress"], capture_output=True, text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300, check=False)
    assert run.returncode != 0 and "fewer than one training window" in run.stderr
    assert not (tmp_path / "run").exists()


# -- the trial's findings: numbers of the train section, a state file that lies ------------------
@pytest.mark.parametrize("override, message", [
    ("train.lr=.inf", "'train.lr' must be a finite number > 0"),
    ("train.lr=.nan", "'train.lr' must be a finite number > 0"),
    ("train.lr=-1", "'train.lr' must be a finite number > 0"),
    ("train.lr=1e-400", "'train.lr' must be a finite number > 0, e.g. 1e-3, got 0.0"),
    ("train.betas=[2, -1]", "'train.betas' must be two numbers in [0, 1)"),
    ("train.grad_clip=.inf", "'train.grad_clip' must be a finite number >= 0"),
    ("train.min_lr_ratio=2", "'train.min_lr_ratio' must be a number in [0, 1]"),
    ("train.keep_checkpoints=0", "'train.keep_checkpoints' must be an integer >= 1"),
    ("seed=18446744073709551616", "'seed' must be an integer in 0..2**64-1"),
    ("seed=-1", "'seed' must be an integer in 0..2**64-1"),
])
def test_train_numbers_out_of_range_are_config_errors(override, message):
    from multimodal.config import load_config

    with pytest.raises(ConfigError) as info:
        load_config("configs/text_tiny.yaml", [override])
    assert message in str(info.value)


def test_the_largest_seed_seeds_every_generator():
    from multimodal.training.trainer import step_generator

    assert step_generator(2**64 - 1, 10**9, 3, 1).initial_seed() < 2**64


@requires_fortunes
@pytest.mark.parametrize("step", ["true", "-5", "7", "1e21"])
def test_a_trainer_state_whose_step_disagrees_is_refused(two_checkpoints, tmp_path, step):
    config, run = two_checkpoints
    shutil.copytree(run, tmp_path / "run")
    file = tmp_path / "run" / "checkpoints" / "step_000004" / "trainer_state.json"
    state = json.loads(file.read_text())
    file.write_text(json.dumps(state).replace('"step": 4', f'"step": {step}', 1))
    with pytest.raises(CheckpointError, match="trainer_state.json") as info:
        Trainer(config, out_dir=tmp_path / "run", resume=True, progress=False)
    assert "previous complete checkpoint is" in str(info.value)
