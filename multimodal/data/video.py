"""Video datasets: Moving Fashion-MNIST, built on the fly from the real Fashion-MNIST images, and
a user's own clips with captions.

Moving Fashion-MNIST follows the Moving MNIST recipe (Srivastava et al. 2015, "Unsupervised
Learning of Video Representations using LSTMs", https://arxiv.org/abs/1502.04681): one item, an
unscaled 28x28 Fashion-MNIST sprite, moves in a straight line over a black canvas (48x48 by
default), left, right, up or down, at a constant speed; with ``bounce`` it reflects off the
edges. Every clip is a pure function of ``(seed, split, index)``: which sprite, the direction,
the speed, the start and the caption's phrasing, so the dataset needs no storage and is the same
on every machine. Captions name the item and the motion in varied phrasings ("a sneaker moving
left", "a handbag sliding to the right", "an ankle boot going up"); with ``bounce`` they name
the direction of the first move.

Every item is a dict::

    {"video": float tensor (t, c, h, w) in [-1, 1], "caption": str, "label": int (-1 if none)}

Bulk access for the VAE fit and the video modality: ``get_videos(indices)`` -> (k, t, c, h, w),
``get_frames(indices)`` -> (k, c, h, w) over the flattened ``clip * t + frame`` index, and the
lists ``captions`` and ``labels`` (and ``directions`` for Moving Fashion-MNIST).

Axes: k items, t frames, c channels, h w height width.
"""

from __future__ import annotations

import random
import zlib
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from multimodal.data import check_split, read_media_split
from multimodal.data.images import FASHION_MNIST_DIR, SYNONYMS, FashionMNISTDataset, uint8_to_float
from multimodal.errors import DataError
from multimodal.registry import datasets

SPRITE = 28  # Fashion-MNIST's side
MIN_FRAMES = 8
MIN_CANVAS = 48
DIRECTIONS = ("left", "right", "up", "down")
# Unit motion per direction in image coordinates (x to the right, y DOWN).
DIRECTION_VECTORS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}

# Caption phrasings. Prompts used by the evaluation ("a video of ... moving left", "... that
# moves up") are deliberately NOT here: see multimodal.evaluation.video.HELD_OUT_TEMPLATES.
VERBS = ("moving", "moving", "sliding", "going", "drifting", "gliding", "travelling", "heading",
         "floating", "shifting")
DIRECTION_PHRASES = {
    "left": ("left", "left", "to the left", "leftward", "towards the left"),
    "right": ("right", "right", "to the right", "rightward", "towards the right"),
    "up": ("up", "up", "upward", "upwards", "to the top"),
    "down": ("down", "down", "downward", "downwards", "to the bottom"),
}
VIDEO_TEMPLATES = (
    "{a} {v} {d}", "{a} {v} {d}", "{a} {v} {d}", "{n} {v} {d}", "{a} {v} {d} on a black background",
    "{a} {v} {d} across the frame", "a clip of {a} {v} {d}", "{a}, {v} {d}",
    "an animation of {a} {v} {d}", "{a} is {v} {d}", "footage of {a} {v} {d}",
    "{a} {v} slowly {d}",
)


def item_phrase(label: int, rng: random.Random) -> tuple[str, str]:
    """``(with article, bare noun)`` for class ``label``: the canonical name half the time,
    else a synonym ("a sneaker", "a pair of jeans")."""
    synonyms = SYNONYMS[label]
    singular, plural = synonyms[0] if rng.random() < 0.5 else rng.choice(synonyms)
    if singular:
        return ("an " if singular[0] in "aeiou" else "a ") + singular, singular
    return f"a pair of {plural}", plural


def motion_caption(label: int, direction: str, rng: random.Random) -> str:
    """A caption naming item ``label`` and ``direction`` in a phrasing drawn from ``rng``."""
    with_article, noun = item_phrase(label, rng)
    return rng.choice(VIDEO_TEMPLATES).format(a=with_article, n=noun, v=rng.choice(VERBS),
                                              d=rng.choice(DIRECTION_PHRASES[direction]))


def clip_rng(seed: int, split: str, index: int, stream: str) -> random.Random:
    """The generator of one clip's ``stream`` ("motion" or "caption"): a pure function."""
    return random.Random(zlib.crc32(f"{seed}/{split}/{index}/{stream}".encode()))


def trajectory(start: float, velocity: float, num_frames: int, room: int,
               bounce: bool) -> np.ndarray:
    """Integer positions (t,) along one axis: ``start + velocity * frame``, reflected into
    ``[0, room]`` when ``bounce`` (a triangle wave), rounded to whole pixels."""
    raw = start + velocity * np.arange(num_frames, dtype=np.float64)
    if bounce and room > 0:
        period = 2 * room
        raw = np.mod(raw, period)
        raw = np.where(raw > room, period - raw, raw)
    return np.clip(np.rint(raw), 0, room).astype(np.int64)


def render_clip(sprite: np.ndarray, xs: np.ndarray, ys: np.ndarray, canvas: int) -> np.ndarray:
    """Paste a (28, 28) uint8 sprite at top-left corners ``(xs[i], ys[i])`` of black
    ``canvas`` x ``canvas`` frames: (t, canvas, canvas) uint8."""
    frames = np.zeros((len(xs), canvas, canvas), dtype=np.uint8)
    for i, (x, y) in enumerate(zip(xs, ys)):
        frames[i, y : y + SPRITE, x : x + SPRITE] = sprite
    return frames


def _frames_to_float(pixels: np.ndarray):
    """(k, t, c, h, w) or (k, c, h, w) uint8 -> float tensor in [-1, 1]."""
    return uint8_to_float(pixels)


class _VideoItems(Sequence[dict]):
    """Item access and frame views shared by the video datasets (``get_videos``, ``caption``
    and ``labels`` come from the subclass)."""

    num_frames: int

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index %= len(self)
        return {"video": self.get_videos([index])[0], "caption": self.caption(index),
                "label": self.labels[index]}

    def get_frames(self, indices: Sequence[int] | None = None):
        """Frames (k, c, h, w) in [-1, 1] of flat indices ``clip * num_frames + frame``
        (default: every frame of every clip)."""
        import torch

        t = self.num_frames
        flat = list(range(len(self) * t)) if indices is None else [int(i) for i in indices]
        clips = sorted({i // t for i in flat})
        if not clips:
            return self.get_videos([]).flatten(0, 1)
        videos = self.get_videos(clips)  # (k, t, c, h, w)
        where = {c: j for j, c in enumerate(clips)}
        return torch.stack([videos[where[i // t], i % t] for i in flat])

    @property
    def captions(self) -> list[str]:
        """Every item's caption, in order."""
        if getattr(self, "_captions", None) is None:
            self._captions = [self.caption(i) for i in range(len(self))]
        return self._captions


# -- Moving Fashion-MNIST ------------------------------------------------------------------------
@datasets.register("moving_fashion_mnist")
class MovingFashionMNISTDataset(_VideoItems):
    """Moving Fashion-MNIST: one real Fashion-MNIST item moving left, right, up or down.

    Items: ``{"video": (t, 1, s, s) float in [-1, 1], "caption": str, "label": int}``. The
    training split takes its sprites from the 60k training images, ``"val"`` from the 10k test
    images, so no validation sprite is seen in training.

    Args:
        split: ``"train"`` or ``"val"``; set by the builder.
        root: Directory of the Fashion-MNIST IDX files (default
            ``/usr/share/datasets/fashion-mnist``).
        num_clips: Clips in the training split (default 10000).
        val_clips: Clips in the validation split (default 256).
        num_frames: Frames per clip ``t`` (>= 8; default 16).
        canvas_size: Side ``s`` of the black canvas (>= 48; default 48: with a 4x down-sampling
            VAE, 12x12 latents).
        bounce: Reflect off the canvas edges instead of staying inside it (default ``False``:
            the whole straight path fits the canvas).
        min_speed, max_speed: Speed range in pixels per frame (default: without bounce, 60% to
            100% of ``(canvas_size - 28) / (num_frames - 1)``, so the item crosses most of
            the free room; with bounce, twice that).
        directions: The directions drawn from (default all four).
        centred: Send every path through the canvas centre: the item is centred across the
            motion and its path is symmetric about the centre, so mid-clip it sits where
            Fashion-MNIST centres it, and only the sprite, direction and speed vary (default
            ``False``: start and cross-axis position are drawn too). A video model learns
            the prompt's direction much sooner on these (see configs/text_to_video_moving.yaml).
        seed: Seed of the clips: sprite, direction, speed and start (default 0).
        caption_seed: Seed of the caption phrasings (default 0).

    Raises:
        DataError: a Fashion-MNIST file is missing (``apt-get install dataset-fashion-mnist``),
            fewer than 8 frames, a canvas under 48 pixels, an unknown direction, or speeds that
            do not fit the canvas without ``bounce``.
    """

    injected_args = ("split",)

    def __init__(self, *, split: Literal["train", "val"] = "train", root: str | None = None,
                 num_clips: int = 10000, val_clips: int = 256, num_frames: int = 16,
                 canvas_size: int = 48, bounce: bool = False, min_speed: float | None = None,
                 max_speed: float | None = None,
                 directions: tuple[str, ...] = DIRECTIONS, centred: bool = False,
                 seed: int = 0, caption_seed: int = 0):
        check_split(split)
        if num_frames < MIN_FRAMES:
            raise DataError(f"num_frames must be >= {MIN_FRAMES}, got {num_frames}")
        if canvas_size < MIN_CANVAS:
            raise DataError(f"canvas_size must be >= {MIN_CANVAS} pixels, got {canvas_size}")
        if num_clips < 1 or val_clips < 1:
            raise DataError(f"num_clips and val_clips must be >= 1, got {num_clips}, {val_clips}")
        directions = tuple(directions)
        unknown = [d for d in directions if d not in DIRECTIONS]
        if unknown or not directions:
            raise DataError(f"unknown direction(s) {unknown or directions}; known: "
                            f"{', '.join(DIRECTIONS)}")
        room = canvas_size - SPRITE
        fit = room / (num_frames - 1) * (2 if bounce else 1)
        max_speed = fit if max_speed is None else float(max_speed)
        min_speed = 0.6 * max_speed if min_speed is None else float(min_speed)
        if not 0 < min_speed <= max_speed:
            raise DataError(f"need 0 < min_speed <= max_speed, got {min_speed}, {max_speed}")
        if not bounce and max_speed * (num_frames - 1) > room + 1e-9:
            raise DataError(
                f"max_speed {max_speed:g} px/frame moves the item {max_speed * (num_frames - 1):g} "
                f"px in {num_frames} frames, more than the {room} px of free room on a "
                f"{canvas_size}px canvas; lower it to <= {room / (num_frames - 1):.4g}, enlarge "
                "canvas_size, or set bounce: true")
        source = FashionMNISTDataset(split=split, root=root or FASHION_MNIST_DIR)
        self._sprites = source._pixels  # (n, 28, 28) uint8
        self._sprite_labels = np.asarray(source.labels, dtype=np.int64)
        self.split, self.seed, self.caption_seed = split, seed, caption_seed
        self.num_frames, self.canvas_size, self.bounce = num_frames, canvas_size, bounce
        self.min_speed, self.max_speed, self.direction_set = min_speed, max_speed, directions
        self.centred = centred
        count = num_clips if split == "train" else val_clips
        order = np.random.default_rng([seed, 0 if split == "train" else 1]).permutation(
            len(self._sprites))
        self._sprite_index = order[np.arange(count) % len(order)]
        self.labels: list[int] = self._sprite_labels[self._sprite_index].tolist()
        self.directions: list[str] = [self._motion(i)[0] for i in range(count)]
        self._captions: list[str] | None = None

    def __len__(self) -> int:
        return len(self._sprite_index)

    def _motion(self, index: int) -> tuple[str, float, float, float]:
        """``(direction, speed, start along the motion, cross-axis position)`` of clip
        ``index``."""
        rng = clip_rng(self.seed, self.split, index, "motion")
        direction = rng.choice(self.direction_set)
        speed = rng.uniform(self.min_speed, self.max_speed)
        room = self.canvas_size - SPRITE
        travel = speed * (self.num_frames - 1)
        sign = sum(DIRECTION_VECTORS[direction])
        if self.bounce:
            start = rng.uniform(0, room)
        elif sign > 0:
            start = rng.uniform(0, max(0.0, room - travel))
        else:
            start = rng.uniform(min(room, travel), room)
        cross = rng.uniform(0, room)
        if self.centred:  # the same draws as above, so other clips do not change
            start = room / 2 if self.bounce else (room - sign * travel) / 2
            cross = room / 2
        return direction, speed, start, cross

    def positions(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-left corners ``(xs (t,), ys (t,))`` of the sprite in clip ``index``."""
        direction, speed, start, cross = self._motion(index)
        dx, dy = DIRECTION_VECTORS[direction]
        room = self.canvas_size - SPRITE
        along = trajectory(start, speed * (dx + dy), self.num_frames, room, self.bounce)
        fixed = np.full(self.num_frames, int(round(cross)), dtype=np.int64)
        return (along, fixed) if dx else (fixed, along)

    def caption(self, index: int) -> str:
        """The caption of clip ``index``."""
        rng = clip_rng(self.caption_seed, self.split, index, "caption")
        return motion_caption(self.labels[index], self.directions[index], rng)

    def clip_pixels(self, index: int) -> np.ndarray:
        """Clip ``index`` as (t, s, s) uint8."""
        xs, ys = self.positions(index)
        return render_clip(self._sprites[self._sprite_index[index]], xs, ys, self.canvas_size)

    def get_videos(self, indices: Sequence[int] | None = None):
        """Clips (k, t, 1, s, s) float in [-1, 1] of ``indices`` (default: all)."""
        chosen = range(len(self)) if indices is None else [int(i) for i in indices]
        t, s = self.num_frames, self.canvas_size
        pixels = np.zeros((len(chosen), t, 1, s, s), dtype=np.uint8)
        for j, i in enumerate(chosen):
            pixels[j, :, 0] = self.clip_pixels(i)
        return _frames_to_float(pixels)


# -- a user's clips ------------------------------------------------------------------------------
def read_video_file(path: Path) -> np.ndarray:
    """Decode an MP4 (through imageio-ffmpeg) or a GIF (Pillow) into (t, h, w, 3) uint8.

    Raises:
        DataError: missing, unreadable, or not a video these readers decode.
    """
    if not path.is_file():
        raise DataError(f"video file not found: {path}")
    try:
        if path.suffix.lower() == ".gif":
            from PIL import Image, ImageSequence

            with Image.open(path) as image:
                frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(image)]
        else:
            import imageio.v2 as imageio

            with imageio.get_reader(str(path), "ffmpeg") as reader:
                frames = [np.asarray(f)[..., :3] for f in reader]
    except DataError:
        raise
    except Exception as exc:  # imageio raises many kinds; each means "cannot decode this file"
        raise DataError(f"cannot read video {path}: {type(exc).__name__}: {exc}") from None
    if not frames:
        raise DataError(f"video {path} has no frames")
    return np.stack(frames)


@datasets.register("video_folder")
class VideoFolderDataset(_VideoItems):
    """A user's own clips (MP4 or GIF) with captions, listed in a JSONL or CSV file.

    JSONL: one object a line, ``{"video": "clips/001.mp4", "caption": "a red ball rolling
    left"}`` with an optional integer ``"label"``. CSV: a header row naming ``video`` and
    ``caption`` (and optionally ``label``). Paths are relative to the list file's directory (or
    ``root``). Each clip is decoded (MP4 through imageio-ffmpeg, GIF through Pillow), its first
    ``num_frames`` frames taken every ``frame_stride``-th frame, converted to grayscale
    (``channels: 1``) or RGB and resized to ``frame_size`` square (bicubic; aspect ratio not
    kept).

    Args:
        path: The ``.jsonl`` or ``.csv`` file.
        split: ``"train"`` or ``"val"`` (set by the builder); decided by a CRC32 of each video
            path, so it is stable when records are added.
        root: Directory the paths are relative to (default: the list file's directory).
        num_frames: Frames taken from each clip (>= 1; default 16).
        frame_stride: Take every this-many-th frame (default 1).
        frame_size: Side of the square frames (default 48).
        channels: 1 (grayscale) or 3 (RGB) (default 1).
        val_fraction: Share of records held out for validation (default 0.05).

    Raises:
        DataError: the list file is missing or malformed (names the line), or names a missing
            file; a clip that cannot be decoded or is shorter than ``num_frames * frame_stride``
            is reported when it is read.
    """

    injected_args = ("split",)

    def __init__(self, *, path: str, split: Literal["train", "val"] = "train",
                 root: str | None = None, num_frames: int = 16, frame_stride: int = 1,
                 frame_size: int = 48, channels: Literal[1, 3] = 1, val_fraction: float = 0.05):
        check_split(split)
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 or 3, got {channels}")
        if num_frames < 1 or frame_stride < 1:
            raise DataError(f"num_frames and frame_stride must be >= 1, got {num_frames}, "
                            f"{frame_stride}")
        self.num_frames, self.frame_stride = num_frames, frame_stride
        self.frame_size, self.channels = frame_size, channels
        _, self.paths, self._captions, self.labels = read_media_split(
            path, "video", split=split, val_fraction=val_fraction, root=root)
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def caption(self, index: int) -> str:
        return self._captions[index]

    def clip_pixels(self, index: int) -> np.ndarray:
        """Clip ``index`` as (t, c, s, s) uint8."""
        if index not in self._cache:
            from PIL import Image

            path = self.paths[index]
            frames = read_video_file(path)
            need = (self.num_frames - 1) * self.frame_stride + 1
            if len(frames) < need:
                raise DataError(f"video {path} has {len(frames)} frames; data.video needs at "
                                f"least {need} (num_frames {self.num_frames}, frame_stride "
                                f"{self.frame_stride})")
            chosen = frames[: need : self.frame_stride]
            mode, size = ("L" if self.channels == 1 else "RGB"), self.frame_size
            out = []
            for frame in chosen:
                image = Image.fromarray(frame).convert(mode)
                if image.size != (size, size):
                    image = image.resize((size, size), Image.Resampling.BICUBIC)
                pixels = np.asarray(image)
                out.append(pixels[None] if self.channels == 1 else pixels.transpose(2, 0, 1))
            self._cache[index] = np.stack(out)
        return self._cache[index]

    def get_videos(self, indices: Sequence[int] | None = None):
        """Clips (k, t, c, s, s) float in [-1, 1] of ``indices`` (default: all)."""
        chosen = range(len(self)) if indices is None else [int(i) for i in indices]
        t, c, s = self.num_frames, self.channels, self.frame_size
        pixels = np.stack([self.clip_pixels(i) for i in chosen]) if len(chosen) else \
            np.zeros((0, t, c, s, s), np.uint8)
        return _frames_to_float(pixels)
