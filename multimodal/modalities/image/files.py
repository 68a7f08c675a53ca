"""Image files: PNG with the generation settings as JSON in a tEXt chunk; reading the images
users give (paths, PIL images or uint8 arrays); tiling samples into a grid.

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

from multimodal.errors import InputError
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


def load_image_array(source: Any, *, what: str) -> np.ndarray:
    """A path, PIL image or uint8 array -> uint8 array (h, w) or (h, w, c), unchanged in size.

    Raises:
        InputError: a missing, unreadable or non-image file, or an array that is not an image.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            raise InputError(f"{what} {path} is a directory; give an image file")
        if not path.is_file():
            raise InputError(f"{what} file not found: {path}")
        try:
            with Image.open(path) as image:
                image.load()
                return _pil_array(image)
        except Image.DecompressionBombError as exc:
            raise InputError(f"{what} {path} is too large to read safely ({exc}); give an "
                             "image of at most a few thousand pixels a side") from None
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise InputError(f"cannot read {what} {path}: not an image Pillow can decode "
                             f"({type(exc).__name__}: {exc})") from None
    if isinstance(source, Image.Image):
        return _pil_array(source)
    if isinstance(source, np.ndarray) and source.dtype == np.uint8 and source.ndim in (2, 3):
        return source
    raise InputError(f"{what} must be a file path, a PIL image or a uint8 array (h, w[, c]), "
                     f"got {type(source).__name__}")


def _pil_array(image) -> np.ndarray:
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        if image.mode == "RGBA":
            image = image.convert("RGB")
    return np.asarray(image)


def write_png(image: np.ndarray, path: Path, metadata: dict[str, Any] | None = None) -> None:
    """Write a uint8 (h, w) or (h, w, 3) image to ``path`` atomically, ``metadata`` in its
    tEXt chunk."""
    atomic_write_bytes(Path(path), png_bytes(image, metadata or {}))


def read_png(path: Path) -> np.ndarray:
    """The pixels of a PNG as a uint8 array (h, w) or (h, w, c)."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image)
