"""Media in and out of the server: data URLs and uploads in, the CLI's files out.

Outputs are written with :func:`multimodal.outputs.write_outputs`, the CLI's writer, into a
temporary directory and read back, so a PNG carries the same tEXt provenance and a clip the
same sidecar settings as ``multimodal generate`` writes.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from multimodal.errors import InputError
from multimodal.modalities.image.files import load_image_array, png_bytes
from multimodal.outputs import write_outputs
from multimodal.serve.errors import APIError, bad_request

MAX_IMAGE_PIXELS = 4096 * 4096
# OpenAI's ``size``: "WIDTHxHEIGHT" in pixels (up to 9 digits a side: longer is malformed)
SIZE = re.compile(r"([0-9]{1,9})x([0-9]{1,9})")


def encode_files(output: Any, produces: str) -> list[dict[str, bytes]]:
    """Every sample of a pipeline output as the files the CLI writes: ``[{suffix: bytes}]``
    (``.png``; ``.wav`` + ``.json``; ``.mp4`` + ``.gif`` + ``.json``)."""
    with tempfile.TemporaryDirectory(prefix="multimodal-serve-") as tmp:
        paths = write_outputs(output, tmp, produces=produces)
        files: list[dict[str, bytes]] = [{} for _ in output.samples]
        for path in paths:
            files[int(Path(path).stem)][Path(path).suffix] = Path(path).read_bytes()
    return files


def decode_image(data: bytes, what: str) -> np.ndarray:
    """Uploaded bytes -> a uint8 image array.

    Raises:
        APIError: 400 when the bytes are not an image Pillow decodes (or one far too large).
    """
    if not data:
        raise bad_request(f"{what}: the file is empty; upload a PNG or JPEG image", param=what,
                          code="invalid_image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise bad_request(f"{what}: {image.width}x{image.height} pixels is too large",
                                  param=what, code="invalid_image")
            image.load()
            return load_image_array(image, what=what)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise bad_request(f"{what}: not an image (PNG, JPEG, ...) Pillow can decode "
                          f"({type(exc).__name__})", param=what, code="invalid_image") from None


def decode_data_url(url: str, what: str) -> np.ndarray:
    """An ``data:image/...;base64,...`` URL -> a uint8 image array (remote URLs are refused:
    the server fetches nothing).

    Raises:
        APIError: 400 for anything else.
    """
    if not url.startswith("data:"):
        raise bad_request(f"{what}: only data URLs (data:image/png;base64,...) are accepted; "
                          "this server fetches no remote images", param=what,
                          code="invalid_image_url")
    header, _, payload = url.partition(",")
    if not header.endswith(";base64"):
        raise bad_request(f"{what}: the data URL must be base64 (data:image/png;base64,...)",
                          param=what, code="invalid_image_url")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{what}: the data URL's base64 is malformed", param=what,
                          code="invalid_image_url") from None
    return decode_image(data, what)


def png_data(image: np.ndarray, metadata: dict[str, Any]) -> str:
    """A uint8 image as base64 PNG with ``metadata`` in its tEXt chunk."""
    return base64.b64encode(png_bytes(image, metadata)).decode("ascii")


def header_json(metadata: dict[str, Any]) -> str:
    """``metadata`` as one ASCII line for a response header."""
    return json.dumps(metadata, ensure_ascii=True, separators=(",", ":"))


def image_size(size: Any, pipe, param: str = "size") -> tuple[int, int]:
    """OpenAI's ``size`` of an image request as the ``(height, width)`` ``pipe`` (a latent
    diffusion pipeline) makes: ``"WIDTHxHEIGHT"`` in pixels (width first, as OpenAI's
    ``"1024x1536"``), any size the pipeline's ``check_size`` accepts; ``None`` or ``"auto"``:
    the size the model was trained at.

    Raises:
        APIError: 400 (code ``invalid_size``) naming the accepted sizes.
    """
    if size in (None, "auto"):
        return pipe.check_size(None, None)
    match = SIZE.fullmatch(size) if isinstance(size, str) else None
    if match is None:
        multiple, largest, (height, width) = pipe.size_limits()
        raise APIError(400, f"{param}: give 'WIDTHxHEIGHT' in pixels, each side a multiple of "
                            f"{multiple} from {multiple} to {largest} (the model's size is "
                            f"'{width}x{height}'), or 'auto'; got {str(size)[:40]!r}",
                       param=param, code="invalid_size")
    try:
        return pipe.check_size(int(match[2]), int(match[1]))
    except InputError as exc:
        raise APIError(400, f"{param} {size!r} (width x height): {exc}", param=param,
                       code="invalid_size") from None


def check_size(size: str | None, height: int, width: int, param: str = "size") -> None:
    """Accept ``None``, ``"auto"`` or exactly the model's ``WxH`` (videos: the video pipeline
    makes only the size it was trained at).

    Raises:
        APIError: 400 naming the size the model makes.
    """
    if size in (None, "auto", f"{width}x{height}"):
        return
    raise APIError(400, f"{param}: this model makes {width}x{height} images; use size "
                        f"'{width}x{height}' or 'auto', got {size!r}", param=param,
                   code="invalid_size")
