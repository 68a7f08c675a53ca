"""``POST /v1/images/generations`` (text-to-image, batched; ``stream`` with partial images)
and ``POST /v1/images/edits`` (image-to-image; inpainting with a mask).

``size`` is OpenAI's ``"WIDTHxHEIGHT"``: any size the pipeline's ``check_size`` accepts
(multiples of the VAE's factor times the denoiser's, up to 4x the longer training side), or
``"auto"`` (the default): the size the model was trained at. Edits resize their image (and
mask) to it."""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
from PIL import Image
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from multimodal.errors import InputError
from multimodal.modalities.image.files import load_mask_array
from multimodal.pipelines.batching import ImageRequest, image_branches
from multimodal.pipelines.text_to_image import DEFAULT_GUIDANCE, DEFAULT_SCHEDULER
from multimodal.serve.engine import EditJob, ImageJob
from multimodal.serve.errors import APIError, from_exception
from multimodal.serve.media import decode_image, image_size
from multimodal.serve.schemas import ImageEditRequest, ImageGenerationRequest, parse
from multimodal.serve.scheduler import Job

router = APIRouter()
DEFAULT_STEPS = 25
MAX_UPLOAD_FILES = 4


def _settings(pipe, body) -> tuple[int, float, str, int, int]:
    """``(steps, guidance, scheduler, height, width)`` after the pipeline's own checks (prompt,
    safety policy and size included), so nothing bad is queued."""
    steps = body.num_inference_steps or DEFAULT_STEPS
    guidance = DEFAULT_GUIDANCE if body.guidance_scale is None else body.guidance_scale
    scheduler = body.scheduler or DEFAULT_SCHEDULER
    try:
        pipe._check_arguments(body.prompt, body.negative_prompt, steps, guidance, body.n, 1.0)
        pipe.make_scheduler(scheduler)
    except Exception as exc:
        error = from_exception(exc)
        if error.param is None:
            error.param = "scheduler" if "scheduler" in str(exc) else None
        raise error from None
    height, width = image_size(body.size, pipe)
    return steps, guidance, scheduler, height, width


def _size(height: int, width: int) -> str:
    """OpenAI's ``size`` of the images made: width first."""
    return f"{width}x{height}"


def _events(prefix: str, size: str):
    """The stream's ``events`` and ``final`` for ``image_generation`` / ``image_edit``."""
    common = {"size": size, "quality": "auto", "background": "opaque", "output_format": "png"}
    usage = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
             "output_tokens": 0, "total_tokens": 0}

    def events(item) -> list[dict]:
        _, index, _, b64 = item
        return [{"type": f"{prefix}.partial_image", "b64_json": b64,
                 "created_at": int(time.time()), "partial_image_index": index, **common}]

    def final(images) -> list[dict]:
        return [{"type": f"{prefix}.completed", "b64_json": b64, "created_at": int(time.time()),
                 "usage": usage, "metadata": meta, **common} for b64, meta in images]

    return events, final


def _response(images: list[tuple[str, dict]], size: str) -> JSONResponse:
    return JSONResponse({"created": int(time.time()), "output_format": "png", "size": size,
                         "data": [{"b64_json": b64, "revised_prompt": None, "metadata": meta}
                                  for b64, meta in images]})


@router.post("/v1/images/generations")
async def generations(request: Request):
    service = request.app.state.service
    body = await service.read(request, ImageGenerationRequest)
    pipe = service.pipe("text-to-image")
    steps, guidance, scheduler, height, width = _settings(pipe, body)
    payload = ImageJob(ImageRequest(body.prompt, body.negative_prompt, body.n, body.seed),
                       steps, guidance, scheduler, body.partial_images or 0, height, width)
    # one denoising loop makes one size: only requests of the same size batch together
    key = (steps, guidance, scheduler, height, width,
           image_branches(body.prompt, body.negative_prompt, guidance))
    job = Job("image", key, payload)
    if body.stream:
        events, final = _events("image_generation", _size(height, width))
        return service.stream(request, job, "text-to-image", events, final)
    return _response(await service.wait(request, job, "text-to-image"), _size(height, width))


async def _form(request: Request) -> tuple[dict[str, str], dict[str, list[UploadFile]]]:
    """A multipart body's text fields and files (``image[]`` read as ``image``)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise APIError(400, "send the image edit as multipart/form-data (image, prompt, ...)",
                       code="invalid_content_type")
    try:
        form = await request.form(max_files=MAX_UPLOAD_FILES, max_fields=64)
    except Exception as exc:  # malformed multipart, too many parts
        raise APIError(400, f"the multipart body cannot be read: {exc}",
                       code="invalid_multipart") from None
    fields: dict[str, str] = {}
    files: dict[str, list[UploadFile]] = {}
    for name, value in form.multi_items():
        name = name[:-2] if name.endswith("[]") else name
        if isinstance(value, UploadFile):
            files.setdefault(name, []).append(value)
        elif name in fields:
            raise APIError(400, f"field '{name}' is given twice", param=name)
        else:
            fields[name] = value
    return fields, files


def _mask(data: bytes, image: np.ndarray) -> np.ndarray:
    """The mask as the pipeline reads it (255 = regenerate; the rule of
    :func:`~multimodal.modalities.image.files.load_mask_array`): black and white, or, with an
    alpha channel that is not opaque everywhere, OpenAI's convention (clear = regenerate)."""
    decode_image(data, "mask")  # a readable image of an accepted size, else 400
    try:
        with Image.open(io.BytesIO(data)) as raw:
            raw.load()
            mask = load_mask_array(raw, what="mask")
    except InputError as exc:
        raise APIError(400, str(exc), param="mask", code="invalid_mask") from None
    if mask.shape[:2] != image.shape[:2]:
        raise APIError(400, f"mask: the mask is {mask.shape[1]}x{mask.shape[0]} pixels but "
                            f"the image is {image.shape[1]}x{image.shape[0]}; give a mask of the "
                            "image's size", param="mask", code="invalid_mask")
    return mask


@router.post("/v1/images/edits")
async def edits(request: Request):
    service = request.app.state.service
    fields, files = await _form(request)
    for name in fields:
        if name in ("image", "mask"):
            raise APIError(400, f"{name}: upload it as a file", param=name)
    unknown = [name for name in files if name not in ("image", "mask")]
    if unknown:
        raise APIError(400, f"unknown file field '{unknown[0]}'; send image and mask",
                       param=unknown[0], code="unknown_parameter")
    body = parse(ImageEditRequest, fields, form=True)
    service.check_model(body.model)
    if len(files.get("image", [])) != 1 or len(files.get("mask", [])) > 1:
        raise APIError(400, "image: upload exactly one image (and at most one mask)",
                       param="image", code="invalid_value")
    image = decode_image(await files["image"][0].read(), "image")
    mask = None
    if files.get("mask"):
        mask = _mask(await files["mask"][0].read(), image)
    task = "inpainting" if mask is not None else "image-to-image"
    pipe = service.pipe(task)
    steps, guidance, scheduler, height, width = _settings(pipe, body)
    kwargs: dict[str, Any] = {  # the image (and mask) are resized to height x width
        "prompt": body.prompt, "image": image, "negative_prompt": body.negative_prompt,
        "num_inference_steps": steps, "guidance_scale": guidance, "num_samples": body.n,
        "seed": body.seed, "scheduler": scheduler, "height": height, "width": width}
    if mask is not None:
        kwargs["mask"] = mask
    if body.strength is not None:
        kwargs["strength"] = body.strength
    job = Job("edit", object(), EditJob(task, kwargs, body.partial_images or 0))
    if body.stream:
        events, final = _events("image_edit", _size(height, width))
        return service.stream(request, job, task, events, final)
    return _response(await service.wait(request, job, task), _size(height, width))
