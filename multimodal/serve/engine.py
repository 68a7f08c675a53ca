"""The model side of the server: one checkpoint loaded once, every task it serves, and the
runners the scheduler calls on its worker threads (one model call per batch of jobs).

Runners return one result (or exception) per job and never raise for one job's fault; they
write outputs through the CLI's writers (:mod:`multimodal.serve.media`), so what a client gets
carries the provenance a file from ``multimodal generate`` carries.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multimodal.checkpoint import load_checkpoint
from multimodal.errors import CheckpointError
from multimodal.pipelines import default_checkpoint
from multimodal.pipelines.batching import (ImageRequest, generate_images_batch,
                                           generate_text_batch)
from multimodal.registry import pipelines as pipeline_registry
from multimodal.safety import SafetyPolicy
from multimodal.serve.errors import from_exception
from multimodal.serve.media import encode_files, png_data
from multimodal.serve.scheduler import Cancelled, Job, Runner


class Engine:
    """Every pipeline of one checkpoint, built from one load (shared backbone and tokenizers).

    Args:
        checkpoint: A checkpoint or run directory (default: the embedded joint model).
        device: ``"cpu"``, ``"cuda"`` (``"cuda:N"``) or ``"mps"``.

    Attributes:
        pipes: Task name -> pipeline, for every built-in task the checkpoint can do.
        model_id: The name clients pass as ``model`` (the checkpoint directory's name).
    """

    def __init__(self, checkpoint: str | Path | None = None, *, device: str = "cpu"):
        path = Path(checkpoint) if checkpoint is not None else default_checkpoint()
        ckpt = load_checkpoint(path, device=device)  # reads and validates the config, once
        safety = SafetyPolicy.from_config(ckpt.config, checkpoint=ckpt.path)
        self.pipes: dict[str, Any] = {}
        for task in pipeline_registry.names():
            cls = pipeline_registry.get(task)
            if getattr(cls, "composed", False) or not hasattr(cls, "from_loaded"):
                continue  # composed tasks load their own checkpoints per step
            try:
                pipe = cls.from_loaded(ckpt, device=device)
            except CheckpointError:
                continue  # a part this task needs is not in the checkpoint
            pipe.safety = safety
            self.pipes[task] = pipe
        if not self.pipes:
            raise CheckpointError(f"checkpoint {ckpt.path} serves no task")
        self.model_id = path.resolve().name
        self.checkpoint_id = ckpt.checkpoint_id
        self.created = int(time.time())

    def runners(self) -> dict[str, Runner]:
        """The scheduler's runners of the tasks this checkpoint serves."""
        table = {"text": (self.run_text, "text-generation", "main", 32),
                 "caption": (self.run_each, "image-to-text", "main", 1),
                 "image": (self.run_images, "text-to-image", "main", 16),
                 "edit": (self.run_each, "image-to-image", "main", 1),
                 "speech": (self.run_each, "text-to-audio", "main", 1),
                 "video": (self.run_each, "text-to-video", "video", 1)}
        return {kind: Runner(run, lane, max_batch) for kind, (run, task, lane, max_batch)
                in table.items() if task in self.pipes}

    # -- text ------------------------------------------------------------------------------
    def run_text(self, jobs: list[Job]) -> list[Any]:
        """Every prompt of every job in one :func:`generate_text_batch` call. A job's payload
        is a list of :class:`TextRequest`; its result the list of their ``TextResult``s.
        Streams ``("text", prompt index, sample, piece)`` to each job's ``emit``."""
        flat, owner = [], []
        for job in jobs:
            for i, request in enumerate(job.payload):
                flat.append(request)
                owner.append((job, i))

        def on_text(r: int, sample: int, piece: str) -> None:
            job, i = owner[r]
            if job.emit is not None:
                job.emit(("text", i, sample, piece))

        results = generate_text_batch(self.pipes["text-generation"], flat, on_text=on_text,
                                      cancelled=lambda r: owner[r][0].cancelled.is_set())
        grouped: dict[int, list] = {id(job): [] for job in jobs}
        for (job, _), result in zip(owner, results):
            grouped[id(job)].append(result)
        return [grouped[id(job)] for job in jobs]

    # -- text-to-image ---------------------------------------------------------------------
    def run_images(self, jobs: list[Job]) -> list[Any]:
        """Text-to-image jobs of one key (steps, guidance, scheduler, size, branches) in one
        loop. A payload is :class:`ImageJob`; the result a list of ``(PNG b64, metadata)``."""
        pipe = self.pipes["text-to-image"]
        first = jobs[0].payload
        offsets, start = [], 0
        for job in jobs:
            offsets.append(start)
            start += job.payload.request.num_samples

        def on_step(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
            # diffusers' callback_on_step_end form; cancelling raises (nothing to decode)
            if all(job.cancelled.is_set() for job in jobs):
                raise Cancelled()
            latents, num_steps = callback_kwargs["latents"], pipe.num_timesteps
            for job, offset in zip(jobs, offsets):
                index = preview_index(step, num_steps, job.payload.partial_images)
                if index is None or job.emit is None or job.cancelled.is_set():
                    continue
                part = latents[offset : offset + job.payload.request.num_samples]
                for sample, image in enumerate(decode_preview(pipe, part)):
                    job.emit(("partial", index, sample, png_data(image, {"preview": True})))
            return callback_kwargs

        try:
            outputs = generate_images_batch(
                pipe, [job.payload.request for job in jobs],
                num_inference_steps=first.num_inference_steps,
                guidance_scale=first.guidance_scale, scheduler=first.scheduler,
                height=first.height, width=first.width, callback_on_step_end=on_step)
        except Exception as exc:  # one job's fault fails the batch: retry each alone
            if len(jobs) == 1 or isinstance(exc, Cancelled):
                return [exc] * len(jobs)
            return [self.run_images([job])[0] for job in jobs]
        return [[(png_data(image, output.metadata(i)), output.metadata(i))
                 for i, image in enumerate(output.images)] for output in outputs]

    # -- one job per call: captions, edits, speech, video -------------------------------------
    def run_each(self, jobs: list[Job]) -> list[Any]:
        results = []
        for job in jobs:
            try:
                results.append(job.payload.run(self, job))
            except Exception as exc:
                results.append(exc)
        return results


def preview_index(step: int, num_steps: int, partial_images: int) -> int | None:
    """The partial image sent after ``step`` (0-based) of ``num_steps``, or ``None``:
    ``partial_images`` previews spread evenly, the last one before the final image."""
    for k in range(partial_images):
        if step == max(0, math.ceil((k + 1) * num_steps / (partial_images + 1)) - 1):
            return k
    return None


def decode_preview(pipe, latents: torch.Tensor) -> list[np.ndarray]:
    """Images of intermediate latents (s, l, y, x), as the final decode makes them."""
    with torch.no_grad():
        pixels = pipe._to_uint8(pipe.vae.decode(latents.clone()))
    return [pipe._to_output(p) for p in pixels]


@dataclass
class ImageJob:
    """A text-to-image request: what is batched, and its batch key's settings (a batch makes
    one size: ``height`` x ``width`` pixels, ``None`` the training size)."""

    request: ImageRequest
    num_inference_steps: int
    guidance_scale: float
    scheduler: str | None
    partial_images: int = 0
    height: int | None = None
    width: int | None = None


@dataclass
class CaptionJob:
    """Caption one image ``n`` times (image-to-text)."""

    image: np.ndarray
    kwargs: dict[str, Any]
    n: int = 1

    def run(self, engine: Engine, job: Job) -> Any:
        return engine.pipes["image-to-text"]([self.image] * self.n, **self.kwargs)


@dataclass
class EditJob:
    """Image-to-image (no mask) or inpainting (a mask): ``[(PNG b64, metadata)]``."""

    task: str
    kwargs: dict[str, Any]
    partial_images: int = 0

    def run(self, engine: Engine, job: Job) -> Any:
        pipe = engine.pipes[self.task]

        def on_step(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
            if job.cancelled.is_set():
                raise Cancelled()
            index = preview_index(step, pipe.num_timesteps, self.partial_images)
            if index is not None and job.emit is not None:
                latents = callback_kwargs["latents"]
                for sample, image in enumerate(decode_preview(pipe, latents)):
                    job.emit(("partial", index, sample, png_data(image, {"preview": True})))
            return callback_kwargs

        output = pipe(**self.kwargs, progress=False, callback_on_step_end=on_step)
        return [(png_data(image, output.metadata(i)), output.metadata(i))
                for i, image in enumerate(output.images)]


@dataclass
class SpeechJob:
    """Text-to-audio: ``(waveform float32 (t,), sample rate, WAV bytes, metadata)``. Streamed
    (the job has ``emit``): ``("audio", piece)`` for each piece of float32 audio as the vocoder
    makes it (at the vocoder's level: the pipeline's ``chunk_callback``)."""

    kwargs: dict[str, Any]

    def run(self, engine: Engine, job: Job) -> Any:
        pipe = engine.pipes["text-to-audio"]
        on_chunk = None
        if job.emit is not None:
            def on_chunk(index: int, audio: np.ndarray) -> None:
                if job.cancelled.is_set():
                    raise Cancelled()  # the client went away: stop vocoding
                job.emit(("audio", audio))
        output = pipe(**self.kwargs, progress=False, chunk_callback=on_chunk)
        files = encode_files(output, pipe.produces)[0]
        return output.audios[0], output.sample_rate, files[".wav"], output.metadata(0)


@dataclass
class VideoJob:
    """A text-to-video job of /v1/videos, with the state ``GET /v1/videos/{id}`` reports."""

    kwargs: dict[str, Any]
    prompt: str
    model: str
    seconds: str
    size: str
    id: str = field(default_factory=lambda: f"video_{uuid.uuid4().hex}")
    created_at: int = field(default_factory=lambda: int(time.time()))
    status: str = "queued"
    progress: int = 0
    completed_at: int | None = None
    error: dict[str, Any] | None = None
    content: bytes | None = None
    metadata: dict[str, Any] | None = None
    cancel: Any = None  # the scheduler job's cancelled event, once queued

    def run(self, engine: Engine, job: Job) -> Any:
        pipe = engine.pipes["text-to-video"]
        self.status = "in_progress"

        def on_step(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
            if job.cancelled.is_set():
                raise Cancelled()
            self.progress = min(99, int(100 * (step + 1) / pipe.num_timesteps))
            return callback_kwargs

        try:
            output = pipe(**self.kwargs, progress=False, callback_on_step_end=on_step)
            files = encode_files(output, pipe.produces)[0]
            if ".mp4" not in files:
                raise RuntimeError("no MP4 was written (ffmpeg unavailable: pip install "
                                   "imageio-ffmpeg)")
        except Exception as exc:
            error = from_exception(exc)
            self.status, self.error = "failed", {"code": error.code or error.type,
                                                 "message": error.message}
            return exc
        self.content, self.metadata = files[".mp4"], output.metadata(0)
        self.status, self.progress, self.completed_at = "completed", 100, int(time.time())
        return self

    def body(self) -> dict[str, Any]:
        """The job as OpenAI's ``Video`` object (plus the outputs' settings as
        ``metadata``)."""
        return {"id": self.id, "object": "video", "model": self.model, "status": self.status,
                "progress": self.progress, "created_at": self.created_at,
                "completed_at": self.completed_at, "expires_at": None, "prompt": self.prompt,
                "seconds": self.seconds, "size": self.size, "remixed_from_video_id": None,
                "error": self.error, "metadata": self.metadata}
