"""``multimodal plot RUN``: a PNG of a run's loss curves and learning rate, drawn from its
``log.csv``.

Two panels side by side, :data:`WIDTH` x :data:`HEIGHT` pixels: on the left the training loss
of each modality (``loss_<name>`` columns, solid lines), its validation loss where the run
measured one (``val_<name>_loss``, dots on the same colour) and, when the run trains more than
one modality, the weighted total (``loss``, black); on the right the learning rate (``lr``).
The loss axis is logarithmic when every loss is positive.

Drawn with matplotlib's Agg canvas on a ``Figure`` of its own (no pyplot, no global backend,
no display needed) and written atomically: the PNG appears whole or not at all.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from multimodal.errors import InputError
from multimodal.io import atomic_write_bytes

LOG_FILE = "log.csv"
DEFAULT_NAME = "loss_curves.png"
WIDTH, HEIGHT, DPI = 1200, 450, 100  # pixels of the PNG; inches are these over DPI


@dataclass
class PlotReport:
    """What :func:`plot_run` drew.

    Attributes:
        path: The PNG written.
        rows: Rows of ``log.csv`` read.
        first_step: The first step logged.
        last_step: The last step logged.
        modalities: The modalities whose loss is drawn, in column order.
    """

    path: Path
    rows: int
    first_step: int
    last_step: int
    modalities: list[str]


def read_log(path: Path) -> tuple[list[str], list[dict[str, float]]]:
    """``(columns, rows)`` of a ``log.csv``: each row ``{column: value}`` with the cells that
    hold a number (validation columns are empty on the steps without a validation). A trailing
    partial line (a run killed mid-row) is left out, as the trainer drops it on resume.

    Raises:
        InputError: the file cannot be read, has no ``step`` column, or holds a cell that is
            not a number (naming its line and column).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    reader = csv.DictReader(io.StringIO(text[:text.rfind("\n") + 1]))
    columns = list(reader.fieldnames or [])
    if "step" not in columns:
        raise InputError(f"{path} has no 'step' column (its header: "
                         f"{', '.join(columns) or 'none'}); is it a training log.csv?")
    rows = []
    for row in reader:
        values = {}
        for column, cell in row.items():
            if column is None or cell in (None, ""):
                continue
            try:
                values[column] = float(cell)
            except ValueError:
                raise InputError(f"{path}, line {reader.line_num}: column {column!r} holds "
                                 f"{cell[:40]!r}, not a number") from None
        if "step" in values:
            rows.append(values)
    return columns, rows


def plot_run(run: str | Path, out: str | Path | None = None, *,
             overwrite: bool = False) -> PlotReport:
    """Draw the loss curves per modality and the learning rate of a run into a PNG.

    Args:
        run: A run folder (the ``out_dir`` of ``multimodal train``, holding ``log.csv``), or
            a ``log.csv`` itself.
        out: The PNG to write (default: ``loss_curves.png`` in the run folder). Its folder is
            created if needed.
        overwrite: Replace ``out`` if it exists (default: refuse).

    Returns:
        A :class:`PlotReport`; the PNG is :data:`WIDTH` x :data:`HEIGHT` pixels, RGBA.

    Raises:
        InputError: ``run`` does not exist or holds no ``log.csv``; the log has no rows or no
            loss column; ``out`` is not a ``.png`` file name, or exists and ``overwrite`` is
            not set.
    """
    run = Path(run)
    if run.is_dir():
        log = run / LOG_FILE
        if not log.is_file():
            raise InputError(f"{run} holds no {LOG_FILE}: give a run folder (the out_dir of "
                             "`multimodal train`) or its log.csv")
        folder = run
    elif run.is_file():
        log, folder = run, run.parent
    else:
        raise InputError(f"{run} does not exist: give a run folder (the out_dir of "
                         "`multimodal train`) or its log.csv")
    out = Path(out) if out is not None else folder / DEFAULT_NAME
    if out.suffix.lower() != ".png":
        raise InputError(f"--out {out}: the plot is a PNG; give a file name ending in .png")
    if out.is_dir():
        raise InputError(f"--out {out} is a folder; give a file name ending in .png")
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists: refusing to overwrite it; give another --out, or "
                         "--overwrite to replace it")

    columns, rows = read_log(log)
    if not rows:
        raise InputError(f"{log} has no rows yet: the run logs its first row after "
                         "train.log_every steps")
    modalities = [c[len("loss_"):] for c in columns if c.startswith("loss_")]
    if not modalities and "loss" not in columns:
        raise InputError(f"{log} has no loss column (its header: {', '.join(columns)}); is "
                         "it a training log.csv?")

    png = _draw(rows, modalities, title=folder.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, png)
    steps = [int(r["step"]) for r in rows]
    return PlotReport(path=out, rows=len(rows), first_step=min(steps), last_step=max(steps),
                      modalities=modalities)


def _draw(rows: list[dict[str, float]], modalities: list[str], *, title: str) -> bytes:
    """The PNG bytes of the two panels."""
    # deferred: matplotlib (~0.5 s to import) loads for this command only, not with the CLI
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    loss_ax, lr_ax = figure.subplots(1, 2, width_ratios=(2, 1))
    figure.suptitle(title)

    def series(column: str) -> tuple[list[float], list[float]]:
        points = [(r["step"], r[column]) for r in rows
                  if column in r and math.isfinite(r[column])]
        return [s for s, _ in points], [v for _, v in points]

    drawn: list[float] = []
    colours = [f"C{i % 10}" for i in range(len(modalities))]
    for name, colour in zip(modalities, colours):
        steps, values = series(f"loss_{name}")
        loss_ax.plot(steps, values, color=colour, linewidth=1.2, label=f"{name} (train)")
        drawn += values
        steps, values = series(f"val_{name}_loss")
        if values:
            loss_ax.plot(steps, values, color=colour, linestyle=":", marker="o", markersize=3,
                         label=f"{name} (validation)")
            drawn += values
    if len(modalities) != 1:  # one modality: the total is its loss times its weight
        steps, values = series("loss")
        loss_ax.plot(steps, values, color="black", linewidth=1.5, label="total (weighted)")
        drawn += values
    if drawn and min(drawn) > 0:
        loss_ax.set_yscale("log")
    for ax in (loss_ax, lr_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("loss per modality")
    loss_ax.grid(True, which="both", alpha=0.3)
    loss_ax.legend(fontsize="small")

    steps, values = series("lr")
    if values:
        lr_ax.plot(steps, values, color="C3", linewidth=1.2)
    else:
        lr_ax.text(0.5, 0.5, "no learning rate logged", ha="center", va="center",
                   transform=lr_ax.transAxes)
    lr_ax.set_xlabel("step")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_title("learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    lr_ax.grid(True, alpha=0.3)

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
