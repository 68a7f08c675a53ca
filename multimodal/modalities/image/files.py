"""Image files: PNG with the generation settings as JSON in a tEXt chunk; reading the images
and inpainting masks users give (paths, PIL images or uint8 arrays, any mode and size); tiling
samples into a grid.

Axes: h w height and width, c channels.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from einops import rearrange

from multimodal.data.images import flatten_image
from multimodal.errors import DataError, InputError
from multimodal.io import atomic_write_bytes

PNG_METADATA_KEY = "multimodal"


def png_bytes(image: np.ndarray, metadata: dict[str, Any]) -> bytes:
    """Encode a uint8 (h, w) or (h, w, 3) image as PNG with ``metadata`` as JSON in a tEXt chunk
    (ASCII-escaped, so any prompt survives the Latin-1 chunk)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PNG_METADATA_KEY, json.dumps(metadata, ensure_ascii=True))
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_png_metadata(path: str | Path) -> dict[str, Any]:
    """The settings a pipeline wrote into a PNG.

    Raises:
        InputError: the file is not a PNG written by these pipelines.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            text = image.text.get(PNG_METADATA_KEY) if hasattr(image, "text") else None
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None
    if text is None:
        raise InputError(f"{path} carries no '{PNG_METADATA_KEY}' metadata")
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: its '{PNG_METADATA_KEY}' metadata is not valid JSON: "
                         f"{exc}") from None
    if not isinstance(settings, dict):
        raise InputError(f"{path}: its '{PNG_METADATA_KEY}' metadata is not a JSON object")
    return settings


def image_grid(images: list[np.ndarray], columns: int | None = None) -> np.ndarray:
    """Tile same-sized (h, w[, c]) images into one, row by row (empty cells black)."""
    count = len(images)
    columns = columns or int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / columns))
    cells = list(images) + [np.zeros_like(images[0])] * (rows * columns - count)
    return rearrange(np.stack(cells), "(r k) h w ... -> (r h) (k w) ...", r=rows, k=columns)


def open_image(source: Any, *, what: str) -> Any:
    """A path, PIL image or uint8 array -> a loaded PIL image in its own mode and size.

    Arrays: (h, w) grey, (h, w, 1) grey, (h, w, 2) grey + alpha, (h, w, 3) RGB, (h, w, 4) RGBA.

    Raises:
        InputError: a missing, unreadable or non-image file, one too large to decode safely
            (Pillow's decompression-bomb limit, about 89 million pixels), an empty image, or an
            array that is not one of the above.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            raise InputError(f"{what} {path} is a directory; give an image file")
        if not path.is_file():
            raise InputError(f"{what} file not found: {path}")
        try:
            with Image.open(path) as opened:
                opened.load()
                image = opened.copy()  # the file closes with the block
        except Image.DecompressionBombError as exc:
            raise InputError(f"{what} {path} is too large to read safely ({exc}); give an "
                             "image of at most a few thousand pixels a side") from None
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise InputError(f"cannot read {what} {path}: not an image Pillow can decode "
                             f"({type(exc).__name__}: {exc})") from None
    elif isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray) and source.dtype == np.uint8 and (
            source.ndim == 2 or source.ndim == 3 and source.shape[2] in (1, 2, 3, 4)):
        image = Image.fromarray(source[..., 0] if source.ndim == 3 and source.shape[2] == 1
                                else source)
    else:
        shape = f" of shape {source.shape} and dtype {source.dtype}" \
            if isinstance(source, np.ndarray) else ""
        raise InputError(f"{what} must be a file path, a PIL image or a uint8 array (h, w) or "
                         f"(h, w, c) with c 1, 2 (grey + alpha), 3 (RGB) or 4 (RGBA), got "
                         f"{type(source).__name__}{shape}")
    if image.width < 1 or image.height < 1:
        raise InputError(f"{what} is empty ({image.width}x{image.height} pixels)")
    return image


def load_image_array(source: Any, *, what: str) -> np.ndarray:
    """A path, PIL image or uint8 array (see :func:`open_image`) -> uint8 (h, w) grey or
    (h, w, 3) RGB, unchanged in size, as an image viewer shows it: transparency (RGBA, LA, P
    with a transparent colour) composited on white, as the emoji training data is made; 16-bit
    grey scaled to 8 bits (:func:`~multimodal.data.images.flatten_image`).

    Raises:
        InputError: as :func:`open_image`, or a mode with no 8-bit reading (32-bit float).
    """
    image = open_image(source, what=what)
    try:
        return np.asarray(flatten_image(image))
    except DataError as exc:
        raise InputError(f"{what}: {exc}") from None


MASK_COLOUR_TOLERANCE = 32  # levels a mask's R, G, B may differ by (JPEG noise) and be grey


def load_mask_array(source: Any, *, what: str = "mask") -> np.ndarray:
    """An inpainting mask (path, PIL image or uint8 array, see :func:`open_image`) ->
    (h, w) uint8, 255 = regenerate, 0 = keep, unchanged in size.

    How each kind of mask is read:

    * Grey (L, 1, or RGB/P whose R, G, B agree within :data:`MASK_COLOUR_TOLERANCE` levels):
      white (> 127) = regenerate, black = keep.
    * With an alpha channel or a transparent colour (RGBA, LA, PA, P or L with transparency)
      that is not opaque everywhere: OpenAI's convention, clear (alpha < 128) = regenerate,
      opaque = keep; the colours are not read. An opaque one is read as grey, above.

    Raises:
        InputError: as :func:`open_image`; a colour mask (a colour pixel says nothing about
            regenerate or keep), or a 32-bit (integer or float) mask. A 16-bit grey mask is
            scaled to 8 bits, as images are.
    """
    image = open_image(source, what=what)
    if image.mode.startswith("I") or image.mode == "F":  # 16-bit grey reads as images do
        try:
            image = flatten_image(image)
        except DataError:
            raise InputError(f"{what}: a {image.mode} (32-bit) mask is not accepted; give an "
                             "8- or 16-bit black and white PNG (white = regenerate, black = "
                             "keep)") from None
    if "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info:
        alpha = np.asarray(image.convert("RGBA"))[..., 3]
        if (alpha < 255).any():
            return np.where(alpha < 128, 255, 0).astype(np.uint8)
    rgb = np.asarray(image.convert("RGB"))
    spread = rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2)
    if (spread > MASK_COLOUR_TOLERANCE).any():
        y, x = np.unravel_index(int(np.argmax(spread)), spread.shape)
        raise InputError(
            f"{what} is in colour (pixel x={x}, y={y} is {tuple(int(v) for v in rgb[y, x])}); "
            "a mask is black and white: white = regenerate, black = keep (or transparent = "
            "regenerate, opaque = keep, OpenAI's convention)")
    grey = np.asarray(image.convert("L"))
    return np.where(grey > 127, 255, 0).astype(np.uint8)


def write_png(image: np.ndarray, path: Path, metadata: dict[str, Any] | None = None) -> None:
    """Write a uint8 (h, w) or (h, w, 3) image to ``path`` atomically, ``metadata`` in its
    tEXt chunk."""
    atomic_write_bytes(Path(path), png_bytes(image, metadata or {}))


def read_png(path: Path) -> np.ndarray:
    """The pixels of a PNG as a uint8 array (h, w) or (h, w, c)."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image)
