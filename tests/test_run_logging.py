"""A run's logs beyond log.csv: TensorBoard event files with the same numbers (rewound on
--resume like the CSV), and ``multimodal plot RUN``, a PNG of the loss curves and the
learning rate."""

import csv
import math
import shutil

import numpy as np
from conftest import requires_fortunes
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from multimodal.cli import main
from multimodal.plot import DEFAULT_NAME, HEIGHT, WIDTH, plot_run
from multimodal.testing import tiny_config
from multimodal.training.trainer import train


def _log_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _events(run):
    """``{tag: [(step, value), ...]}`` as TensorBoard shows the run (orphans purged)."""
    board = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    board.Reload()
    return {tag: [(e.step, e.value) for e in board.Scalars(tag)]
            for tag in board.Tags()["scalars"]}


def _csv_series(rows):
    """``{column: [(step, value), ...]}`` of the cells that hold a number."""
    series = {}
    for row in rows:
        for column, cell in row.items():
            if column != "step" and cell != "":
                series.setdefault(column, []).append((int(row["step"]), float(cell)))
    return series


def _assert_same(events, rows):
    expected = _csv_series(rows)
    assert sorted(events) == sorted(expected)
    for tag, points in expected.items():
        got = events[tag]
        assert [s for s, _ in got] == [s for s, _ in points], tag
        for (_, value), (_, want) in zip(got, points):
            # log.csv keeps 6 significant digits (a relative error up to 5e-6), TensorBoard
            # a float32 (6e-8)
            assert math.isclose(value, want, rel_tol=5.1e-6, abs_tol=1e-12), (tag, value, want)


# -- TensorBoard -----------------------------------------------------------------------------------
@requires_fortunes
def test_tensorboard_events_hold_the_numbers_of_log_csv(tmp_path):
    train(tiny_config(train={"max_steps": 6, "eval_every": 3, "checkpoint_every": 6}),
          out_dir=tmp_path, progress=False)
    rows = _log_rows(tmp_path / "log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    events = _events(tmp_path)
    assert {"loss", "loss_text", "lr", "grad_norm", "val_text_loss"} <= set(events)
    assert [s for s, _ in events["val_text_loss"]] == [3, 6]
    _assert_same(events, rows)
    # the same run drawn by `multimodal plot`
    report = plot_run(tmp_path)
    assert report.modalities == ["text"] and (report.rows, report.last_step) == (6, 6)
    assert _pixels_near(report.path, (31, 119, 180)) > 200  # the text loss, C0 blue


@requires_fortunes
def test_a_resumed_run_rewinds_the_events_as_it_rewinds_log_csv(tmp_path):
    config = tiny_config(train={"max_steps": 8, "checkpoint_every": 4, "eval_every": 0})
    train(config, out_dir=tmp_path, progress=False)
    assert [s for s, _ in _events(tmp_path)["loss"]] == list(range(1, 9))
    # killed after logging step 8, before its checkpoint was complete: resumed from step 4,
    # logging only the last step this time (log_every may change on --resume)
    shutil.rmtree(tmp_path / "checkpoints" / "step_000008")
    train(tiny_config(train={"max_steps": 8, "checkpoint_every": 4, "eval_every": 0,
                             "log_every": 10}),
          out_dir=tmp_path, resume=True, progress=False)
    rows = _log_rows(tmp_path / "log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 8]
    # steps 5..7 of the first process are gone from TensorBoard's view too, and step 8 is the
    # resumed run's
    events = _events(tmp_path)
    assert [s for s, _ in events["loss"]] == [1, 2, 3, 4, 8]
    _assert_same(events, rows)
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2


# -- multimodal plot ------------------------------------------------------------------------------
def _write_log(path, rows, columns):
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _joint_log(run, steps=40):
    run.mkdir(parents=True, exist_ok=True)
    rows = [{"step": s, "lr": 1e-3 * min(1.0, s / 10), "loss": 6.0 / s ** 0.5 + 1.0 / s,
             "loss_text": 5.0 / s ** 0.5, "loss_image": 1.0 / s,
             "val_text_loss": 5.2 / s ** 0.5 if s % 10 == 0 else "",
             "val_image_loss": ""} for s in range(1, steps + 1)]
    _write_log(run / "log.csv", rows, list(rows[0]))
    return run


def _pixels_near(path, rgb, tolerance=30):
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((np.abs(image - np.array(rgb)).sum(axis=-1) < tolerance).sum())


def test_plot_draws_each_modality_and_the_learning_rate(tmp_path, capsys):
    run = _joint_log(tmp_path / "run")
    assert main(["plot", str(run)]) == 0
    out = run / DEFAULT_NAME
    assert "wrote" in capsys.readouterr().out
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (WIDTH, HEIGHT)
    # matplotlib's first colours: text C0 blue, image C1 orange, the learning rate C3 red
    for name, rgb in (("text", (31, 119, 180)), ("image", (255, 127, 14)),
                      ("lr", (214, 39, 40))):
        assert _pixels_near(out, rgb) > 200, name
    # the same log without the image column draws no orange line
    only_text = tmp_path / "text"
    only_text.mkdir()
    rows = _log_rows(run / "log.csv")
    columns = ["step", "lr", "loss", "loss_text", "val_text_loss"]
    _write_log(only_text / "log.csv", [{c: r[c] for c in columns} for r in rows], columns)
    report = plot_run(only_text)
    assert report.modalities == ["text"] and (report.first_step, report.last_step) == (1, 40)
    assert _pixels_near(report.path, (255, 127, 14)) < 20


def test_plot_takes_the_log_file_itself_and_an_out_in_a_new_folder(tmp_path):
    run = _joint_log(tmp_path / "run", steps=3)
    report = plot_run(run / "log.csv", tmp_path / "figures" / "curves.png")
    assert report.path.is_file() and report.rows == 3
    assert report.modalities == ["text", "image"]


def test_plot_refuses_bad_input_clearly(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["plot", str(empty)]) == 2
    assert f"{empty} holds no log.csv" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "gone")]) == 2
    assert "does not exist" in capsys.readouterr().err

    header_only = tmp_path / "new"
    header_only.mkdir()
    (header_only / "log.csv").write_text("step,lr,loss,loss_text\n")
    assert main(["plot", str(header_only)]) == 2
    assert "has no rows yet" in capsys.readouterr().err
    assert not (header_only / DEFAULT_NAME).exists()

    not_a_log = tmp_path / "other"
    not_a_log.mkdir()
    (not_a_log / "log.csv").write_text("name,size\na,1\n")
    assert main(["plot", str(not_a_log)]) == 2
    assert "no 'step' column" in capsys.readouterr().err
    (not_a_log / "log.csv").write_text("step,loss\n1,0.5\n2,lots\n")
    assert main(["plot", str(not_a_log)]) == 2
    assert "line 3: column 'loss' holds 'lots'" in capsys.readouterr().err

    run = _joint_log(tmp_path / "run", steps=5)
    assert main(["plot", str(run), "--out", str(tmp_path / "curves.jpg")]) == 2
    assert "ending in .png" in capsys.readouterr().err
    target = tmp_path / "curves.png"
    target.write_bytes(b"mine")
    assert main(["plot", str(run), "--out", str(target)]) == 2
    assert "exists: refusing to overwrite" in capsys.readouterr().err
    assert target.read_bytes() == b"mine"
    assert main(["plot", str(run), "--out", str(target), "--overwrite"]) == 0
    with Image.open(target) as image:
        assert image.size == (WIDTH, HEIGHT)
    # written through a temporary sibling: nothing else is left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["empty", "new", "other", "run", "curves.png"])


def test_plot_skips_a_partial_last_row_as_the_trainer_does(tmp_path):
    run = _joint_log(tmp_path / "run", steps=4)
    with open(run / "log.csv", "a") as fh:
        fh.write("5,0.0")  # a run killed mid-row
    report = plot_run(run)
    assert (report.rows, report.last_step) == (4, 4)
