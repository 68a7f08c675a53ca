"""Sketch datasets: procedurally drawn shapes, and Quick, Draw! drawings.

Every item is ``{"strokes": FloatTensor (n, 3), "caption": str, "label": int}``. ``strokes``
is the stroke-3 format of Sketch-RNN (Ha & Eck 2017, "A Neural Representation of Sketch
Drawings", https://arxiv.org/abs/1704.03477) with ABSOLUTE coordinates instead of offsets:

* column 0, 1: ``x``, ``y`` of a pen position, in [0, 1] of the canvas width and height;
  ``(0, 0)`` is the top-left corner and ``y`` grows downwards (image and Quick, Draw!
  convention);
* column 2: ``pen_lift``, 1 on the last point of each stroke (the pen leaves the paper after
  it), 0 elsewhere.

Axes: n points, m points of one stroke.
"""

from __future__ import annotations

import glob
import json
import math
import os
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from multimodal.data import check_split, in_split
from multimodal.errors import DataError, did_you_mean

# The shapes ``shape_sketches`` draws, in label order, and the nouns a caption may use.
SHAPES = ("circle", "square", "triangle", "star", "zigzag", "spiral", "cross", "house")
SHAPE_NOUNS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "round circle"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "star": ("star",),
    "zigzag": ("zigzag", "zigzag line"),
    "spiral": ("spiral",),
    "cross": ("cross", "plus sign"),
    "house": ("house", "house with a pointed roof"),
}
# The words that tell which shape a caption names (for tests and label checks).
SHAPE_KEYWORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle",), "square": ("square", "box"), "triangle": ("triangle",),
    "star": ("star",), "zigzag": ("zigzag",), "spiral": ("spiral",),
    "cross": ("cross", "plus"), "house": ("house",),
}
# Largest rotation (degrees) each shape is drawn with; circles and spirals turn freely.
MAX_ROTATION = {"circle": 180.0, "square": 12.0, "triangle": 12.0, "star": 15.0,
                "zigzag": 20.0, "spiral": 180.0, "cross": 12.0, "house": 8.0}
# Half-size (radius of the shape's bounding circle, canvas units) of each size word.
SIZES = {"small": (0.12, 0.20), "medium": (0.20, 0.30), "big": (0.30, 0.42)}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "medium": ("",), "big": ("big", "large")}
_SPLIT_CODE = {"train": 0, "val": 1}


# -- drawing -------------------------------------------------------------------------------------
def _closed(points: list[tuple[float, float]]) -> np.ndarray:
    return np.asarray(points + points[:1], dtype=np.float64)


def _rotated_start(points: list[tuple[float, float]], rng: np.random.Generator) -> list:
    """The same closed outline, started at a random vertex and drawn in a random direction."""
    start = int(rng.integers(len(points)))
    points = points[start:] + points[:start]
    return points if rng.random() < 0.5 else points[:1] + points[1:][::-1]


def shape_strokes(shape: str, rng: np.random.Generator) -> list[np.ndarray]:
    """The strokes of ``shape`` in unit coordinates: centred on ``(0, 0)``, inside the unit
    circle, ``y`` down. Returns a list of (m, 2) float64 arrays, one per stroke."""
    if shape == "circle":
        n = int(rng.integers(14, 21))
        start, direction = rng.uniform(0, 2 * math.pi), rng.choice([-1.0, 1.0])
        overshoot = rng.uniform(0.0, 0.35)  # hands close a circle a little past the start
        angles = start + direction * np.linspace(0, 2 * math.pi + overshoot, n + 1)
        aspect = rng.uniform(0.8, 1.0)
        radius = 1.0 + rng.normal(0, 0.03, n + 1)
        return [np.stack([radius * np.cos(angles), aspect * radius * np.sin(angles)], 1)]
    if shape == "square":
        s = 0.7
        return [_closed(_rotated_start([(-s, -s), (s, -s), (s, s), (-s, s)], rng))]
    if shape == "triangle":
        corners = [(math.cos(a), math.sin(a)) for a in np.radians([-90, 30, 150])]
        return [_closed(_rotated_start(corners, rng))]
    if shape == "star":
        outer = [(math.cos(a), math.sin(a)) for a in np.radians(-90 + 72 * np.arange(5))]
        if rng.random() < 0.5:  # a pentagram in one line: every second point
            return [np.asarray([outer[i % 5] for i in range(0, 11, 2)], dtype=np.float64)]
        inner = [(0.4 * math.cos(a), 0.4 * math.sin(a))
                 for a in np.radians(-54 + 72 * np.arange(5))]
        outline = [p for pair in zip(outer, inner) for p in pair]
        return [_closed(outline)]
    if shape == "zigzag":
        segments = int(rng.integers(4, 8))
        amplitude = rng.uniform(0.25, 0.5)
        x = np.linspace(-1.0, 1.0, segments + 1) * 0.95
        y = amplitude * np.where(np.arange(segments + 1) % 2 == 0, 1.0, -1.0)
        line = np.stack([x, y], 1)
        return [line if rng.random() < 0.5 else line[::-1]]
    if shape == "spiral":
        turns = rng.uniform(2.0, 3.0)
        n = int(round(turns * 9))
        theta = np.linspace(0, turns * 2 * math.pi, n)
        r = 0.08 + 0.92 * theta / theta[-1]
        direction = rng.choice([-1.0, 1.0])
        line = np.stack([r * np.cos(direction * theta), r * np.sin(direction * theta)], 1)
        return [line if rng.random() < 0.7 else line[::-1]]  # mostly drawn from the middle
    if shape == "cross":
        bars = [np.asarray([(-0.9, 0.0), (0.9, 0.0)]), np.asarray([(0.0, -0.9), (0.0, 0.9)])]
        order = rng.permutation(2)
        return [bars[i] if rng.random() < 0.8 else bars[i][::-1] for i in order]
    if shape == "house":
        body = _closed(_rotated_start([(-0.6, 0.0), (0.6, 0.0), (0.6, 0.8), (-0.6, 0.8)], rng))
        roof = np.asarray([(-0.7, 0.0), (0.0, -0.75), (0.7, 0.0)])
        strokes = [body, roof if rng.random() < 0.7 else roof[::-1]]
        if rng.random() < 0.5:
            strokes.append(np.asarray([(-0.15, 0.8), (-0.15, 0.4), (0.15, 0.4), (0.15, 0.8)]))
        return strokes
    raise ValueError(f"unknown shape {shape!r}{did_you_mean(shape, SHAPES)}; "
                     f"shapes: {', '.join(SHAPES)}")


def to_stroke3(strokes: Sequence[np.ndarray]) -> torch.Tensor:
    """(m, 2) strokes -> (n, 3) float32 points with ``pen_lift`` 1 on each stroke's last."""
    parts = []
    for stroke in strokes:
        lift = np.zeros((len(stroke), 1))
        lift[-1] = 1.0
        parts.append(np.concatenate([stroke, lift], 1))
    return torch.from_numpy(np.concatenate(parts, 0).astype(np.float32))


def _place_words(cx: float, cy: float) -> str:
    """Where a shape centred at ``(cx, cy)`` sits, in words ("" in the middle)."""
    horizontal = "left" if cx < 0.4 else "right" if cx > 0.6 else ""
    vertical = "top" if cy < 0.4 else "bottom" if cy > 0.6 else ""
    if horizontal and vertical:
        return f"in the {vertical} {horizontal} corner"
    if horizontal:
        return f"on the {horizontal}"
    if vertical:
        return f"at the {vertical}"
    return ""


def draw_shape(shape: str, rng: np.random.Generator, *, jitter: float = 0.008
               ) -> tuple[torch.Tensor, str]:
    """Draw one ``shape`` at a random size, place and rotation, with hand-drawn jitter.

    Args:
        shape: One of :data:`SHAPES`.
        rng: The only source of randomness.
        jitter: Standard deviation of the Gaussian wobble added to every point (canvas units).

    Returns:
        ``(strokes (n, 3) float32 with x, y in [0, 1], caption)``; the caption names the
        shape and, truthfully, its size and place when it mentions them.
    """
    size = ("small", "medium", "big")[int(rng.integers(3))]
    radius = rng.uniform(*SIZES[size])
    cx, cy = rng.uniform(radius + 0.03, 0.97 - radius, size=2)
    angle = math.radians(rng.uniform(-MAX_ROTATION[shape], MAX_ROTATION[shape]))
    rotation = np.asarray([[math.cos(angle), -math.sin(angle)],
                           [math.sin(angle), math.cos(angle)]])
    strokes = []
    for stroke in shape_strokes(shape, rng):
        points = stroke @ rotation.T * radius + (cx, cy)
        points = points + rng.normal(0, jitter, points.shape)
        strokes.append(np.clip(points, 0.0, 1.0))

    noun = SHAPE_NOUNS[shape][int(rng.integers(len(SHAPE_NOUNS[shape])))]
    words = []
    if size != "medium" and rng.random() < 0.6:
        words.append(SIZE_WORDS[size][int(rng.integers(len(SIZE_WORDS[size])))])
    words.append(noun)
    place = _place_words(cx, cy)
    if place and rng.random() < 0.6:
        words.append(place)
    prefix = ("", "", "", "", "a drawing of ", "a sketch of ")[int(rng.integers(6))]
    caption = prefix + "a " + " ".join(words)
    return to_stroke3(strokes), caption


class ShapeSketches(Sequence[dict]):
    """Procedurally drawn sketches of simple shapes, with captions.

    Shapes: circle, square, triangle, star, zigzag, spiral, cross (plus sign) and house, drawn
    as one to three strokes at a random size (small, medium, big), place and rotation, with
    slight hand-drawn jitter. Captions vary: "a circle", "a big star", "a small triangle on
    the left", "a sketch of a zigzag line", ... Item ``i`` of a split draws shape
    ``shapes[i % len(shapes)]`` (balanced labels) and is a pure function of
    ``(seed, split, i)``.

    Args:
        split: ``"train"`` or ``"val"`` (set by the builder).
        num_sketches: Sketches in the training split (default 4000).
        val_sketches: Sketches in the validation split (default 200).
        seed: Seed of the drawings (default 0).
        shapes: The shapes to draw (default all of :data:`SHAPES`); labels index this list.
        jitter: Hand-drawn wobble, the standard deviation of the noise added to every point in
            canvas units (default 0.008).

    Raises:
        ValueError: an unknown shape, a negative count or jitter.
    """

    injected_args = ("split",)

    def __init__(self, *, split: Literal["train", "val"] = "train", num_sketches: int = 4000,
                 val_sketches: int = 200, seed: int = 0, shapes: list[str] | None = None,
                 jitter: float = 0.008):
        check_split(split)
        self.shapes = tuple(shapes) if shapes is not None else SHAPES
        if not self.shapes:
            raise ValueError(f"shapes is empty; name some of: {', '.join(SHAPES)}")
        for shape in self.shapes:
            if shape not in SHAPES:
                raise ValueError(f"unknown shape {shape!r}{did_you_mean(shape, SHAPES)}; "
                                 f"shapes: {', '.join(SHAPES)}")
        if num_sketches < 0 or val_sketches < 0:
            raise ValueError(f"num_sketches and val_sketches must be >= 0, got "
                             f"{num_sketches} and {val_sketches}")
        if jitter < 0:
            raise ValueError(f"jitter must be >= 0, got {jitter}")
        self.split, self.seed, self.jitter = split, seed, jitter
        self.count = num_sketches if split == "train" else val_sketches
        self.items = [self._draw(i) for i in range(self.count)]
        self.captions = [item["caption"] for item in self.items]
        self.labels = [item["label"] for item in self.items]

    def _draw(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, _SPLIT_CODE[self.split], index])
        label = index % len(self.shapes)
        strokes, caption = draw_shape(self.shapes[label], rng, jitter=self.jitter)
        return {"strokes": strokes, "caption": caption, "label": label}

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):
        return self.items[index]


# -- Quick, Draw! ----------------------------------------------------------------------------------
QUICKDRAW_FORMAT = (
    "one JSON object per line with 'word' (a non-empty string) and 'drawing' (a non-empty list "
    "of strokes, each [[x0, x1, ...], [y0, y1, ...]] of equal length, coordinates 0..255: the "
    "'simplified' Quick, Draw! ndjson, e.g. full_simplified_cat.ndjson from "
    "https://github.com/googlecreativelab/quickdraw-dataset)")


def parse_quickdraw_line(line: str, where: str) -> tuple[str, torch.Tensor, dict]:
    """One line of a simplified Quick, Draw! ndjson file.

    Args:
        line: The line's text.
        where: ``file:line`` for messages.

    Returns:
        ``(word, strokes (n, 3) float32 with x, y in [0, 1], the record)``.

    Raises:
        DataError: the line is not such a record (says which part is wrong, and what is
            accepted).
    """
    def bad(problem: str) -> DataError:
        return DataError(f"{where}: {problem}; accepted: {QUICKDRAW_FORMAT}")

    try:
        record = json.loads(line)
    except ValueError as exc:
        raise bad(f"not JSON ({exc})") from None
    if not isinstance(record, dict):
        raise bad(f"a {type(record).__name__}, not a JSON object")
    word = record.get("word")
    if not isinstance(word, str) or not word.strip():
        raise bad(f"'word' must be a non-empty string, got {word!r}")
    drawing = record.get("drawing")
    if not isinstance(drawing, list) or not drawing:
        raise bad(f"'drawing' must be a non-empty list of strokes, got {drawing!r:.60}")
    strokes = []
    for s, stroke in enumerate(drawing):
        if (not isinstance(stroke, list) or len(stroke) < 2
                or not all(isinstance(axis, list) for axis in stroke)):
            raise bad(f"stroke {s} must be [[x...], [y...]], got {stroke!r:.60}")
        xs, ys = stroke[0], stroke[1]
        if len(xs) != len(ys) or not xs:
            raise bad(f"stroke {s} has {len(xs)} x and {len(ys)} y coordinates; they must be "
                      "equal and at least one")
        try:
            points = np.asarray([xs, ys], dtype=np.float64).T  # (m, 2)
        except (TypeError, ValueError):
            raise bad(f"stroke {s} holds coordinates that are not numbers") from None
        if not np.isfinite(points).all() or points.min() < 0 or points.max() > 255:
            raise bad(f"stroke {s} has coordinates outside 0..255 (raw, unsimplified "
                      "drawings must be simplified first)")
        strokes.append(points / 255.0)
    return word.strip(), to_stroke3(strokes), record


class QuickDrawNdjson(Sequence[dict]):
    """Drawings from Quick, Draw! simplified ndjson files, the word as the caption.

    Coordinates 0..255 become [0, 1]; the label is the index of the word among the sorted
    words found. The train/validation split is a checksum of each drawing's ``key_id`` (or its
    file and line), so it is stable when files are added or reordered.

    Args:
        path: A file, a glob pattern or a list of them (``~`` and ``**`` allowed).
        split: ``"train"`` or ``"val"`` (set by the builder).
        val_fraction: Share of drawings held out for validation (default 0.05).
        max_items: Keep at most this many drawings of the split, per file (default all).
        words: Keep only drawings of these words (default all).
        recognized_only: Keep only drawings the game's classifier recognised.

    Raises:
        DataError: no file matches, a file is unreadable, a line is malformed (names the file,
            the line and what is accepted), or nothing is left.
    """

    injected_args = ("split",)

    def __init__(self, *, path: str | list[str], split: Literal["train", "val"] = "train",
                 val_fraction: float = 0.05, max_items: int | None = None,
                 words: list[str] | None = None, recognized_only: bool = False):
        check_split(split)
        patterns = [path] if isinstance(path, str) else list(path)
        files: list[Path] = []
        for pattern in patterns:
            expanded = os.path.expanduser(pattern)
            matched = sorted(glob.glob(expanded, recursive=True))
            if not matched:
                raise DataError(f"Quick, Draw! file not found: {pattern}; expected "
                                f"{QUICKDRAW_FORMAT}")
            files += [Path(m) for m in matched if Path(m).is_file()]
        if not files:
            raise DataError(f"no Quick, Draw! files match {patterns} (only directories)")
        wanted = set(words) if words is not None else None
        found: list[tuple[str, torch.Tensor]] = []
        for file in files:
            try:
                lines = file.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise DataError(f"cannot read Quick, Draw! file {file}: {exc}") from None
            kept = 0
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                where = f"{file}:{number}"
                word, strokes, record = parse_quickdraw_line(line, where)
                if wanted is not None and word not in wanted:
                    continue
                if recognized_only and record.get("recognized") is False:
                    continue
                if not in_split(str(record.get("key_id", where)), split, val_fraction):
                    continue
                found.append((word, strokes))
                kept += 1
                if max_items is not None and kept >= max_items:
                    break
        if not found:
            raise DataError(f"no {split} drawings in {', '.join(map(str, files))}"
                            + (f" for the words {sorted(wanted)}" if wanted is not None else ""))
        self.words = sorted({word for word, _ in found})
        index = {word: i for i, word in enumerate(self.words)}
        self.items = [{"strokes": strokes, "caption": word, "label": index[word]}
                      for word, strokes in found]
        self.captions = [item["caption"] for item in self.items]
        self.labels = [item["label"] for item in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]
