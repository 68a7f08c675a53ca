"""The stroke tokenizer: absolute pen positions quantised to a G x G grid.

A sketch (stroke-3 with absolute coordinates, see :mod:`multimodal_sketch.data`) becomes::

    NEW_STROKE p p p ... NEW_STROKE p p ... END

where each ``p = y * G + x`` is the grid cell of one pen position (``x, y`` in 0..G-1), a
point in the same cell as the one before it is dropped, and ``NEW_STROKE`` puts the pen down
for a new stroke. Decoding puts each point at the centre of its cell, so a round trip moves a
point by at most half a cell (``0.5 / G`` of the canvas) on each axis. Ids: ``0 .. G*G - 1``
the cells, then ``NEW_STROKE = G*G``, ``END = G*G + 1``, ``PAD = G*G + 2``.

Nothing is learnt: the tokenizer is trained as soon as it is built.

Axes: n points, m tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multimodal.errors import CheckpointError, DataError, InputError

FORMAT = "multimodal-sketch/stroke_tokens/1"
FILE_NAME = "stroke_tokens.json"


def as_strokes(strokes: Any) -> np.ndarray:
    """A tensor, array or nested list of stroke-3 points -> (n, 3) float64 array.

    Raises:
        DataError: not an (n, 3) array of finite numbers.
    """
    if torch.is_tensor(strokes):
        strokes = strokes.detach().cpu().double().numpy()
    try:
        array = np.asarray(strokes, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"strokes must be an (n, 3) array of x, y, pen_lift, got "
                        f"{type(strokes).__name__}") from None
    if array.ndim != 2 or array.shape[1] != 3:
        raise DataError(f"strokes must be an (n, 3) array of x, y in [0, 1] and pen_lift, "
                        f"got shape {tuple(array.shape)}")
    if not np.isfinite(array).all():
        raise DataError("strokes hold NaN or infinite values")
    return array


class StrokeTokenizer:
    """Quantises absolute pen positions to a ``grid_size`` x ``grid_size`` grid.

    Args:
        grid_size: Cells per side ``G`` (2..256, default 32); the vocabulary is ``G*G + 3``.

    Raises:
        ValueError: ``grid_size`` outside 2..256.
    """

    fit_on = "sketch"  # nothing to learn; named for the trainer's stage one (see Tokenizer)

    def __init__(self, *, grid_size: int = 32):
        if (isinstance(grid_size, bool) or not isinstance(grid_size, int)
                or not 2 <= grid_size <= 256):
            raise ValueError(f"grid_size must be an integer in 2..256, got {grid_size!r}")
        self.grid_size = grid_size

    # -- the trainer's interface -------------------------------------------------------------
    @property
    def is_trained(self) -> bool:
        """Always ``True``: the grid needs no fitting."""
        return True

    def fit(self, data: Any = None, **_: Any) -> "StrokeTokenizer":
        """Nothing to learn; returns ``self``."""
        return self

    def save(self, directory: str | Path) -> None:
        """Write ``stroke_tokens.json`` (the format and ``grid_size``) into ``directory``."""
        path = Path(directory) / FILE_NAME
        path.write_text(json.dumps({"format": FORMAT, "grid_size": self.grid_size}) + "\n",
                        encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path, **config: Any) -> "StrokeTokenizer":
        """Read what :meth:`save` wrote; ``config`` is the config section (its ``grid_size``
        must agree with the file's).

        Raises:
            CheckpointError: the file is missing or unreadable, of another format, or its grid
                differs from ``config``'s.
        """
        path = Path(directory) / FILE_NAME
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"stroke tokenizer file not found: {path}") from None
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read stroke tokenizer {path}: {exc}") from None
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a stroke tokenizer file of format {FORMAT!r}")
        grid = saved.get("grid_size")
        if "grid_size" in config and config["grid_size"] != grid:
            raise CheckpointError(f"{path} holds a {grid}x{grid} grid but the config asks for "
                                  f"grid_size {config['grid_size']}")
        try:
            return cls(grid_size=grid)
        except ValueError as exc:
            raise CheckpointError(f"{path}: {exc}") from None

    # -- ids ---------------------------------------------------------------------------------
    @property
    def num_cells(self) -> int:
        """``G * G``: the ids of grid cells are ``0 .. num_cells - 1``."""
        return self.grid_size * self.grid_size

    @property
    def new_stroke_id(self) -> int:
        return self.num_cells

    @property
    def end_id(self) -> int:
        return self.num_cells + 1

    @property
    def pad_id(self) -> int:
        return self.num_cells + 2

    @property
    def vocab_size(self) -> int:
        """``G * G + 3``: the cells, NEW_STROKE, END and PAD."""
        return self.num_cells + 3

    def cells(self, xy: np.ndarray) -> np.ndarray:
        """(n, 2) positions in [0, 1] (clamped) -> (n,) int64 cell ids ``y * G + x``."""
        grid = self.grid_size
        index = np.clip(np.floor(np.clip(xy, 0.0, 1.0) * grid), 0, grid - 1).astype(np.int64)
        return index[:, 1] * grid + index[:, 0]

    def centres(self, ids: np.ndarray) -> np.ndarray:
        """(n,) cell ids -> (n, 2) float positions of the cell centres in [0, 1]."""
        ids = np.asarray(ids, dtype=np.int64)
        return (np.stack([ids % self.grid_size, ids // self.grid_size], 1) + 0.5) / self.grid_size

    def encode(self, strokes: Any) -> torch.Tensor:
        """Stroke-3 points (absolute) -> token ids.

        Args:
            strokes: (n, 3) tensor, array or list: ``x``, ``y`` in [0, 1] (values outside
                are clamped) and ``pen_lift`` (> 0.5: the stroke ends at this point; the last
                stroke ends at the last point either way).

        Returns:
            (m,) int64: ``NEW_STROKE`` and the stroke's cells for each stroke, then ``END``.
            Points in the cell of the point before them are dropped; an empty sketch is
            ``[END]``.

        Raises:
            DataError: not an (n, 3) array of finite numbers.
        """
        array = as_strokes(strokes)
        cells = self.cells(array[:, :2]).tolist()
        lifts = (array[:, 2] > 0.5).tolist()
        ids: list[int] = []
        pen_down = False
        for cell, lift in zip(cells, lifts):
            if not pen_down:
                ids.append(self.new_stroke_id)
                ids.append(cell)
                pen_down = True
            elif cell != ids[-1]:
                ids.append(cell)
            if lift:
                pen_down = False
        ids.append(self.end_id)
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids: Any) -> torch.Tensor:
        """Token ids -> stroke-3 points at the cell centres.

        Args:
            ids: (m,) ints (tensor, array or list). Reading stops at ``END``; ``PAD`` is
                skipped; cells before the first ``NEW_STROKE`` start a stroke; a stroke
                without cells is dropped.

        Returns:
            (k, 3) float32: ``x``, ``y`` in (0, 1), ``pen_lift`` 1 on each stroke's last
            point; (0, 3) for an empty sketch.

        Raises:
            InputError: an id outside ``0 .. vocab_size - 1``.
        """
        if torch.is_tensor(ids):
            ids = ids.detach().cpu().reshape(-1).tolist()
        else:
            ids = np.asarray(ids, dtype=np.int64).reshape(-1).tolist()
        strokes: list[list[int]] = []
        current: list[int] = []
        for token in ids:
            if not 0 <= token < self.vocab_size:
                raise InputError(f"token id {token} is outside the stroke vocabulary "
                                 f"0..{self.vocab_size - 1} (grid {self.grid_size})")
            if token == self.end_id:
                break
            if token == self.pad_id:
                continue
            if token == self.new_stroke_id:
                if current:
                    strokes.append(current)
                current = []
            else:
                current.append(token)
        if current:
            strokes.append(current)
        if not strokes:
            return torch.zeros((0, 3), dtype=torch.float32)
        rows = []
        for stroke in strokes:
            lift = np.zeros((len(stroke), 1))
            lift[-1] = 1.0
            rows.append(np.concatenate([self.centres(np.asarray(stroke)), lift], 1))
        return torch.from_numpy(np.concatenate(rows, 0).astype(np.float32))

    def __repr__(self) -> str:
        return f"StrokeTokenizer(grid_size={self.grid_size}, vocab_size={self.vocab_size})"
