"""``POST /v1/completions`` and ``POST /v1/chat/completions`` (text-generation; a chat message
with an image is captioned through image-to-text)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from multimodal.pipelines.batching import TextRequest, check_text_request
from multimodal.serve.engine import CaptionJob
from multimodal.serve.errors import APIError, from_exception
from multimodal.serve.media import decode_data_url
from multimodal.serve.schemas import MAX_PROMPTS, ChatRequest, CompletionRequest
from multimodal.serve.scheduler import Job
from multimodal.serve.service import sse

router = APIRouter()


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    return () if stop is None else (stop,) if isinstance(stop, str) else tuple(stop)


def _text_requests(service, prompts: list[str], body, max_tokens: int | None
                   ) -> list[TextRequest]:
    """One checked :class:`TextRequest` per prompt (each a 400 naming the field if bad)."""
    pipe = service.pipe("text-generation")
    if max_tokens is None:
        max_tokens = min(100, pipe.backbone.max_seq_len // 2)
    requests = []
    for prompt in prompts:
        request = TextRequest(
            prompt=prompt, max_new_tokens=max_tokens, num_samples=body.n, seed=body.seed,
            do_sample=body.temperature > 0,
            temperature=body.temperature if body.temperature > 0 else 1.0,
            top_p=None if body.top_p >= 1.0 else body.top_p, stop=_stops(body.stop))
        try:
            requests.append(check_text_request(pipe, request))
        except Exception as exc:
            error = from_exception(exc)
            if error.param is None and error.code != "content_policy_violation":
                first = str(exc).split(" ", 1)[0]
                error.param = {"max_new_tokens": "max_tokens", "num_samples": "n"}.get(
                    first, first if first in type(body).model_fields else None)
            raise error from None
    return requests


def _choice_metadata(result, sample: int, stop: tuple[str, ...]) -> dict[str, Any]:
    meta = result.outputs[sample].metadata(0)
    meta.update(stop=list(stop), finish_reason=result.finish_reasons[sample])
    return meta


def _usage(results) -> dict[str, int]:
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(len(o.token_ids[0]) for r in results for o in r.outputs)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


@router.post("/v1/completions")
async def completions(request: Request):
    service = request.app.state.service
    body = await service.read(request, CompletionRequest)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not 1 <= len(prompts) <= MAX_PROMPTS:
        raise APIError(400, f"prompt: give 1 to {MAX_PROMPTS} prompts, got {len(prompts)}",
                       param="prompt")
    requests = _text_requests(service, prompts, body, body.max_tokens)
    job = Job("text", "text", requests)
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
            "created": int(time.time()), "model": service.engine.model_id,
            "system_fingerprint": service.engine.checkpoint_id}
    n = body.n
    if body.stream:
        def events(item) -> list[dict]:
            _, p, sample, piece = item
            return [{**head, "choices": [{"index": p * n + sample, "text": piece,
                                          "logprobs": None, "finish_reason": None}]}]

        def final(results) -> list[dict]:
            out = [{**head, "choices": [{"index": p * n + j, "text": "", "logprobs": None,
                                         "finish_reason": _finish(r.finish_reasons[j]),
                                         "metadata": _choice_metadata(r, j, requests[p].stop)}]}
                   for p, r in enumerate(results) for j in range(n)]
            if (body.stream_options or {}).get("include_usage"):
                out.append({**head, "choices": [], "usage": _usage(results)})
            return out

        return service.stream(request, job, "text-generation", events, final, done_marker=True)
    results = await service.wait(request, job, "text-generation")
    choices = [{"index": p * n + j,
                "text": (prompts[p] if body.echo else "") + r.outputs[j].texts[0],
                "logprobs": None, "finish_reason": _finish(r.finish_reasons[j]),
                "metadata": _choice_metadata(r, j, requests[p].stop)}
               for p, r in enumerate(results) for j in range(n)]
    return JSONResponse({**head, "choices": choices, "usage": _usage(results)})


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _chat_prompt(messages) -> tuple[str, list[Any]]:
    """The messages as one prompt for the text model (their texts, one a line) and the image
    parts of the last user message."""
    lines, images = [], []
    for i, message in enumerate(messages):
        content = message.content
        if content is None:
            continue
        if isinstance(content, str):
            lines.append(content)
            continue
        for part in content:
            if part.type == "text":
                lines.append(part.text)
            elif i == len(messages) - 1:
                images.append(part.image_url.url)
            else:
                raise APIError(400, "only the last message may carry an image (it is "
                                    "captioned)", param=f"messages.{i}.content",
                               code="invalid_value")
    return "\n".join(lines), images


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    service = request.app.state.service
    body = await service.read(request, ChatRequest)
    prompt, images = _chat_prompt(body.messages)
    max_tokens = body.max_completion_tokens or body.max_tokens
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()),
            "model": service.engine.model_id, "system_fingerprint": service.engine.checkpoint_id}
    if images:
        return await _caption(service, request, body, images, max_tokens, head)
    requests = _text_requests(service, [prompt], body, max_tokens)
    job = Job("text", "text", requests)
    if body.stream:
        def events(item) -> list[dict]:
            _, _, sample, piece = item
            return [_chunk(head, sample, {"content": piece})]

        def final(results) -> list[dict]:
            r = results[0]
            out = [_chunk(head, j, {}, _finish(r.finish_reasons[j]),
                          metadata=_choice_metadata(r, j, requests[0].stop))
                   for j in range(body.n)]
            if (body.stream_options or {}).get("include_usage"):
                out.append({**head, "object": "chat.completion.chunk", "choices": [],
                            "usage": _usage(results)})
            return out

        response = service.stream(request, job, "text-generation", events, final, done_marker=True)
        return _with_roles(response, head, body.n)
    results = await service.wait(request, job, "text-generation")
    r = results[0]
    choices = [{"index": j, "message": {"role": "assistant", "content": r.outputs[j].texts[0],
                                        "refusal": None},
                "logprobs": None, "finish_reason": _finish(r.finish_reasons[j]),
                "metadata": _choice_metadata(r, j, requests[0].stop)} for j in range(body.n)]
    return JSONResponse({**head, "object": "chat.completion", "choices": choices,
                         "usage": _usage(results)})


def _chunk(head: dict, index: int, delta: dict, finish: str | None = None, **extra) -> dict:
    return {**head, "object": "chat.completion.chunk",
            "choices": [{"index": index, "delta": delta, "logprobs": None,
                         "finish_reason": finish, **extra}]}


def _with_roles(response, head: dict, n: int):
    """Start a chat stream with each choice's ``{"role": "assistant"}`` delta, as OpenAI's."""
    inner = response.body_iterator

    async def body():
        for j in range(n):
            yield sse(_chunk(head, j, {"role": "assistant", "content": ""}))
        async for chunk in inner:
            yield chunk

    response.body_iterator = body()
    return response


async def _caption(service, request, body, images: list[str], max_tokens, head):
    """Caption the image of a chat message (image-to-text)."""
    pipe = service.pipe("image-to-text")
    if len(images) != 1:
        raise APIError(400, f"give one image to caption, got {len(images)}",
                       param="messages", code="invalid_value")
    image = decode_data_url(images[0], "image_url")
    kwargs = {"max_new_tokens": max_tokens or 24, "do_sample": body.temperature > 0,
              "temperature": body.temperature if body.temperature > 0 else 1.0,
              "top_p": None if body.top_p >= 1.0 else body.top_p, "seed": body.seed}
    limit = pipe.backbone.max_seq_len - pipe.captioner.num_image_tokens - 1
    if not 1 <= kwargs["max_new_tokens"] <= limit:
        raise APIError(400, f"max_tokens: captions are at most {limit} tokens here, got "
                            f"{kwargs['max_new_tokens']}", param="max_tokens")
    job = Job("caption", object(), CaptionJob(image, kwargs, body.n))
    output = await service.wait(request, job, "image-to-text")
    metadata = [output.metadata(j) for j in range(body.n)]
    if body.stream:  # the caption is made whole: one delta per choice, then its finish
        events = []
        for j in range(body.n):
            events.append(_chunk(head, j, {"role": "assistant", "content": output.texts[j]}))
            events.append(_chunk(head, j, {}, "stop", metadata=metadata[j]))

        async def send():
            for event in events:
                yield sse(event)
            yield b"data: [DONE]\n\n"
        return StreamingResponse(send(), media_type="text/event-stream")
    choices = [{"index": j, "message": {"role": "assistant", "content": output.texts[j],
                                        "refusal": None},
                "logprobs": None, "finish_reason": "stop", "metadata": metadata[j]}
               for j in range(body.n)]
    return JSONResponse({**head, "object": "chat.completion", "choices": choices,
                         "usage": {"prompt_tokens": 0, "completion_tokens": 0,
                                   "total_tokens": 0}})
