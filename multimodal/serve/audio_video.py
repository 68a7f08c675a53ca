"""``POST /v1/audio/speech`` (text-to-audio) and the video jobs of ``/v1/videos``
(text-to-video), in OpenAI's shapes.

Speech with ``stream_format: "sse"`` is sent as it is made: a ``speech.audio.delta`` event
(base64 16-bit PCM, 16 kHz mono) for each piece the vocoder makes (the pipeline's
``chunk_callback``: 256 ms pieces, 64 ms for the autoregressive vocoder, and the pauses
between sentences), then ``speech.audio.done`` with the metadata. Requests are checked before
the stream starts (a bad one is a 400, as unstreamed); an error after the start (a silent
result) is an ``error`` event. The pieces are at the vocoder's level: the other
answers are peak-normalised over the whole clip, which is known only at the end, so the done
event's ``gain`` is what turns the streamed samples into them (for ``griffin-lim`` into the
same spectrum: its streamed phases are its own, see
:meth:`~multimodal.modalities.audio.features.LogMel.griffin_lim_stream`). With
``response_format: "wav"`` the first delta starts with a WAV header whose sizes say "unknown",
as streaming WAV writers do. ``stream_format: "audio"`` sends the finished answer in pieces.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from multimodal.pipelines.text_to_video import DEFAULT_FPS
from multimodal.serve.engine import SpeechJob, VideoJob
from multimodal.serve.errors import APIError, from_exception
from multimodal.serve.images import _form
from multimodal.serve.media import check_size, header_json
from multimodal.serve.schemas import SpeechRequest, VideoRequest, parse
from multimodal.serve.scheduler import Job

router = APIRouter()
CHUNK_SECONDS = 0.25  # audio per streamed chunk
MAX_VIDEO_JOBS = 256  # finished jobs kept for GET; the oldest finished ones go first


def _pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def _wav_header(sample_rate: int) -> bytes:
    """The 44-byte header of a 16-bit mono PCM WAV of unknown length (RIFF and data sizes
    0xFFFFFFFF, as ffmpeg writes to a pipe): the samples follow as they are made."""
    unknown = struct.pack("<I", 0xFFFFFFFF)
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return b"RIFF" + unknown + b"WAVEfmt " + fmt + b"data" + unknown


@router.post("/v1/audio/speech")
async def speech(request: Request):
    service = request.app.state.service
    body = await service.read(request, SpeechRequest)
    pipe = service.pipe("text-to-audio")
    voice = body.voice if isinstance(body.voice, str) else body.voice.id
    if voice not in pipe.voices:
        raise APIError(400, f"unknown voice {voice!r}; this model speaks with: "
                            f"{', '.join(pipe.voices)}", param="voice", code="invalid_voice")
    kwargs = {"prompt": body.input, "voice": voice, "length_scale": 1.0 / body.speed,
              "seed": body.seed, "vocoder": body.vocoder}
    try:  # the pipeline's checks (and the safety policy) before anything is queued
        pipe.phoneme_chunks(body.input, voice)
        pipe.safety.check(body.input, task="text-to-audio")
        if body.vocoder is not None and body.vocoder not in pipe.audio.available_vocoders:
            raise APIError(400, f"unknown vocoder {body.vocoder!r}; this model has: "
                                f"{', '.join(pipe.audio.available_vocoders)}", param="vocoder")
    except Exception as exc:
        error = from_exception(exc)
        error.param = error.param or "input"
        raise error from None
    job = Job("speech", object(), SpeechJob(kwargs))
    if body.stream_format == "sse":
        return _speech_events(request, job, body.response_format, pipe.audio.sample_rate)
    audio, rate, wav, metadata = await service.wait(request, job, "text-to-audio")
    data = wav if body.response_format == "wav" else _pcm16(audio)
    media = "audio/wav" if body.response_format == "wav" else "audio/pcm"
    headers = {"X-Multimodal-Metadata": header_json(metadata), "X-Sample-Rate": str(rate)}
    step = int(CHUNK_SECONDS * rate) * 2  # bytes of 16-bit samples
    chunks = [data[i : i + step] for i in range(0, len(data), step)]
    if body.stream_format == "audio":
        async def raw():
            for chunk in chunks:
                yield chunk
        return StreamingResponse(raw(), media_type=media, headers=headers)
    return Response(data, media_type=media, headers=headers)


def _speech_events(request: Request, job: Job, response_format: str,
                   sample_rate: int) -> StreamingResponse:
    """The job's audio as ``speech.audio.delta`` events while it is made, then
    ``speech.audio.done`` with its metadata and ``gain`` (see the module docstring)."""
    usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    header = [_wav_header(sample_rate)] if response_format == "wav" else []
    peak = 0.0  # of the streamed samples

    def events(item) -> list[dict]:
        nonlocal peak
        _, audio = item
        if not audio.size:
            return []
        peak = max(peak, float(np.abs(audio).max()))
        data = (header.pop() if header else b"") + _pcm16(audio)
        return [{"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")}]

    def final(result) -> list[dict]:
        audio, _, _, metadata = result
        gain = float(np.abs(audio).max()) / peak if peak else 1.0
        return [{"type": "speech.audio.done", "metadata": metadata, "gain": gain,
                 "usage": usage}]

    return request.app.state.service.stream(request, job, "text-to-audio", events, final,
                                            headers={"X-Sample-Rate": str(sample_rate)})


# -- videos ------------------------------------------------------------------------------------
async def _video_fields(request: Request) -> tuple[dict[str, Any], bool]:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        fields, files = await _form(request)
        if files:
            name = next(iter(files))
            raise APIError(400, f"{name}: reference images are not supported by this model",
                           param=name, code="unsupported_parameter")
        return fields, True
    return await request.app.state.service.body(request), False


@router.post("/v1/videos")
async def create_video(request: Request):
    service = request.app.state.service
    fields, form = await _video_fields(request)
    body = parse(VideoRequest, fields, form=form)
    service.check_model(body.model)
    pipe = service.pipe("text-to-video")
    fps = body.fps or DEFAULT_FPS
    num_frames = body.num_frames
    if num_frames is None and body.seconds is not None:
        try:
            seconds = float(body.seconds)
        except ValueError:
            raise APIError(400, f"seconds: a number of seconds, got {body.seconds!r}",
                           param="seconds") from None
        num_frames = round(seconds * fps)
    steps = body.num_inference_steps or 25
    guidance = 4.0 if body.guidance_scale is None else body.guidance_scale
    try:  # the pipeline's checks (and the safety policy) before anything is queued
        pipe._check_arguments(body.prompt, body.negative_prompt, steps, guidance, 1, 1.0)
        num_frames = pipe._check_frames(num_frames)
        if body.scheduler is not None:
            pipe.make_scheduler(body.scheduler)
    except Exception as exc:
        error = from_exception(exc)
        if error.param is None and "num_frames" in str(exc):
            error.param = "seconds" if body.num_frames is None else "num_frames"
        raise error from None
    height, width = pipe.vae.height, pipe.vae.width
    check_size(body.size, height, width)
    kwargs = {"prompt": body.prompt, "negative_prompt": body.negative_prompt,
              "num_frames": num_frames, "fps": fps, "num_inference_steps": steps,
              "guidance_scale": guidance, "seed": body.seed}
    if body.scheduler is not None:
        kwargs["scheduler"] = body.scheduler
    record = VideoJob(kwargs, body.prompt, service.engine.model_id,
                      seconds=f"{num_frames / fps:g}", size=f"{width}x{height}")
    job = Job("video", record.id, record)
    future = service.scheduler.submit(job)
    future.add_done_callback(lambda f: f.cancelled() or f.exception())  # errors live on record
    record.cancel = job.cancelled
    _keep(service.videos, record)
    return JSONResponse(record.body())


def _keep(videos: dict[str, VideoJob], record: VideoJob) -> None:
    videos[record.id] = record
    finished = [v for v in videos.values() if v.status in ("completed", "failed")]
    for old in finished[: max(0, len(videos) - MAX_VIDEO_JOBS)]:
        del videos[old.id]


def _video(request: Request, video_id: str) -> VideoJob:
    record = request.app.state.service.videos.get(video_id)
    if record is None:
        raise APIError(404, f"no video '{video_id}'", param="video_id", code="not_found")
    return record


@router.get("/v1/videos")
async def list_videos(request: Request):
    videos = [v.body() for v in request.app.state.service.videos.values()]
    return JSONResponse({"object": "list", "data": videos, "has_more": False,
                         "first_id": videos[0]["id"] if videos else None,
                         "last_id": videos[-1]["id"] if videos else None})


@router.get("/v1/videos/{video_id}")
async def get_video(request: Request, video_id: str):
    return JSONResponse(_video(request, video_id).body())


@router.get("/v1/videos/{video_id}/content")
async def video_content(request: Request, video_id: str, variant: str = "video"):
    record = _video(request, video_id)
    if variant != "video":
        raise APIError(400, f"variant: only 'video' (the MP4) is available, got {variant!r}",
                       param="variant")
    if record.status != "completed":
        raise APIError(400, f"video '{video_id}' is {record.status}, not completed; poll GET "
                            f"/v1/videos/{video_id}", param="video_id", code="video_not_ready")
    return Response(record.content, media_type="video/mp4",
                    headers={"X-Multimodal-Metadata": header_json(record.metadata or {})})


@router.delete("/v1/videos/{video_id}")
async def delete_video(request: Request, video_id: str):
    record = _video(request, video_id)
    if record.cancel is not None:
        record.cancel.set()  # stops it at its next step if it runs
    del request.app.state.service.videos[video_id]
    return JSONResponse({"id": video_id, "object": "video.deleted", "deleted": True})
