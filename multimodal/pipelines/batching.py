"""Several requests in one model call: batched text decoding and batched text-to-image.

A server receives many small requests at once; running them one by one leaves the matmuls
small. These functions run a list of requests through ONE model call each, and give every
request exactly the randomness it would have had alone, so a request's output does not depend
on what it was batched with:

* text (:func:`generate_text_batch`): every sample (row) samples from its own
  ``torch.Generator`` (a request's first sample from its ``seed``, sample ``j`` from
  ``derive_seed(seed, j)``), with its own temperature, top-k, top-p, length and stop strings.
  The backbone has no padding mask, so rows decode together only when their prompts have the
  same length: requests are grouped by prompt length and each group is one decode loop.
  A request's first sample with a given seed is the text ``TextGenerationPipeline`` makes
  with that seed alone (``num_samples=1``), up to the stop strings (cut before the stop, as
  OpenAI's API; the pipeline's ``stop_strings`` keep it in the text, as transformers).
* text-to-image (:func:`generate_images_batch`): requests that share the number of steps,
  the scheduler and the guidance scale denoise together, through the pipeline's own loop
  called with a list of prompts (one seed per prompt), so request ``r`` is the image the
  pipeline makes alone with its seed.

Axes: b rows (samples of all requests), n tokens, v vocabulary, s samples, l latent channels,
y x latent height and width, d backbone width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from multimodal.errors import InputError
from multimodal.pipelines.base import (check_bool, check_float, check_int, check_num_samples,
                                       check_seed, check_text, derive_seed, runtime_settings,
                                       seeded)
from multimodal.pipelines.sampling import sample_next_token
from multimodal.pipelines.text_generation import TextGenerationOutput
from multimodal.pipelines.text_to_image import ImageGenerationOutput, StepCallback
from multimodal.safety import policy_of

MAX_STOP_STRINGS = 4  # as OpenAI's API


# -- text ----------------------------------------------------------------------------------------
@dataclass
class TextRequest:
    """One text request of a batch.

    Attributes:
        prompt: Text to continue.
        max_new_tokens: Tokens to generate at most per sample.
        num_samples: Continuations of this prompt (rows of the batch).
        seed: Seed of sample 0; sample ``j`` uses ``derive_seed(seed, j)`` (``None``: drawn).
        do_sample, temperature, top_k, top_p: As :class:`TextGenerationPipeline`'s.
        stop: Strings that end a sample (not included in its text).
    """

    prompt: str
    max_new_tokens: int = 16
    num_samples: int = 1
    seed: int | None = None
    do_sample: bool = True
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()


@dataclass
class TextResult:
    """What one :class:`TextRequest` got.

    Attributes:
        outputs: One single-sample :class:`TextGenerationOutput` per sample, each with the seed
            that replays it alone (``num_samples=1``).
        finish_reasons: Per sample: ``"stop"`` (end-of-text or a stop string), ``"length"``
            (``max_new_tokens`` reached) or ``"cancelled"``.
        prompt_tokens: Tokens of the prompt as read (end-of-text included).
    """

    outputs: list[TextGenerationOutput] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    prompt_tokens: int = 0


def check_text_request(pipe, request: TextRequest) -> TextRequest:
    """Check ``request`` as the pipeline checks its arguments (and the safety policy), so a bad
    request is refused alone before it joins a batch; returns it with a seed drawn if none.

    Raises:
        InputError: naming the argument; PromptBlockedError: a blocked prompt.
    """
    check_text("prompt", request.prompt)
    policy_of(pipe).check(request.prompt, task="text-generation")
    limit = pipe.backbone.max_seq_len - 1
    check_int("max_new_tokens", request.max_new_tokens, 1, limit,
              accepted=f"an integer in 1..{limit} (the context is {limit + 1} tokens)")
    check_num_samples(request.num_samples)
    check_bool("do_sample", request.do_sample)
    check_float("temperature", request.temperature, 0.0, lo_open=request.do_sample)
    check_int("top_k", request.top_k, 1, optional=True, accepted="a positive integer or None")
    check_float("top_p", request.top_p, 0.0, 1.0, lo_open=True, optional=True,
                accepted="a number in (0, 1] or None")
    if len(request.stop) > MAX_STOP_STRINGS:
        raise InputError(f"stop: at most {MAX_STOP_STRINGS} strings, got {len(request.stop)}")
    for text in request.stop:
        if not check_text("stop", text):
            raise InputError("stop: a stop string must not be empty")
    _, request.seed = seeded(check_seed(request.seed))
    return request


class _Row:
    """One sample being decoded: its generator, settings, tokens and streamed text."""

    def __init__(self, request: TextRequest, index: int, sample: int, seed: int):
        self.request, self.index, self.sample, self.seed = request, index, sample, seed
        self.generator = torch.Generator().manual_seed(seed)
        self.tokens: list[int] = []
        self.text = ""  # the final text once finished
        self.sent = 0  # characters handed to on_text
        self.finish: str | None = None


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Characters at the end of ``text`` that may be the start of a stop string."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                longest = max(longest, k)
                break
    return longest


@torch.inference_mode()
def generate_text_batch(pipe, requests: Sequence[TextRequest], *,
                        on_text: Callable[[int, int, str], None] | None = None,
                        cancelled: Callable[[int], bool] | None = None) -> list[TextResult]:
    """Continue every request's prompt; rows of equal prompt length decode together.

    Args:
        pipe: A :class:`~multimodal.pipelines.text_generation.TextGenerationPipeline`.
        requests: Checked requests (:func:`check_text_request`).
        on_text: ``on_text(request, sample, piece)`` with each new piece of a sample's text,
            whole characters only and never past a stop string.
        cancelled: ``cancelled(request)``: stop that request's rows (checked every token).

    Returns:
        One :class:`TextResult` per request, in order.
    """
    tokenizer = pipe.tokenizer
    results = [TextResult() for _ in requests]
    groups: dict[int, list[_Row]] = {}
    prompt_ids = []
    for r, request in enumerate(requests):
        ids = pipe.encode_prompt(request.prompt, request.max_new_tokens)
        prompt_ids.append(ids)
        results[r].prompt_tokens = len(ids)
        for j in range(request.num_samples):
            seed = request.seed if j == 0 else derive_seed(request.seed, j)
            groups.setdefault(len(ids), []).append(_Row(request, r, j, seed))
    for rows in groups.values():
        _decode_rows(pipe, rows, [prompt_ids[row.index] for row in rows], on_text, cancelled)
    all_rows = sorted((row for rows in groups.values() for row in rows),
                      key=lambda row: (row.index, row.sample))
    for row in all_rows:
        request = row.request
        ids = prompt_ids[row.index]
        results[row.index].outputs.append(TextGenerationOutput(
            texts=[row.text], token_ids=[row.tokens], prompt=tokenizer.decode(ids),
            seed=row.seed, input_prompt=request.prompt, max_new_tokens=request.max_new_tokens,
            do_sample=request.do_sample, temperature=request.temperature, top_k=request.top_k,
            top_p=request.top_p, checkpoint_id=pipe.checkpoint_id,
            runtime=runtime_settings(pipe)))
        results[row.index].finish_reasons.append(row.finish or "length")
    return results


def _decode_rows(pipe, rows: list[_Row], ids: list[list[int]], on_text, cancelled) -> None:
    """One KV-cached decode loop over ``rows`` (prompts of one length)."""
    tokenizer, eos, device = pipe.tokenizer, pipe.tokenizer.eos_id, pipe.device
    longest = max(row.request.max_new_tokens for row in rows)
    input_ids = torch.tensor(ids, device=device)  # (b, n)
    cache = pipe.backbone.new_kv_cache(len(rows), input_ids.shape[1] + longest)
    logits = pipe.lm_head(pipe.backbone(input_ids, kv_cache=cache)[:, -1]).cpu()  # (b, v)
    for _ in range(longest):
        next_ids = []
        for b, row in enumerate(rows):
            if row.finish is None and cancelled is not None and cancelled(row.index):
                row.finish, row.text = "cancelled", tokenizer.decode(row.tokens)
            if row.finish is not None:
                next_ids.append(eos)
                continue
            request = row.request
            token = int(sample_next_token(
                logits[b : b + 1], do_sample=request.do_sample, temperature=request.temperature,
                top_k=request.top_k, top_p=request.top_p, generator=row.generator)[0])
            next_ids.append(token)
            _advance(row, token, eos, tokenizer, on_text)
        if all(row.finish is not None for row in rows):
            break
        step = torch.tensor(next_ids, device=device)[:, None]  # (b, 1)
        logits = pipe.lm_head(pipe.backbone(step, kv_cache=cache)[:, -1]).cpu()


def _advance(row: _Row, token: int, eos: int, tokenizer, on_text) -> None:
    """Add ``token`` to ``row``: finish it at end-of-text, a stop string or its length, and
    hand the text that is certain to stay to ``on_text``."""
    stops = row.request.stop
    if token == eos:
        row.finish = "stop"
        text = tokenizer.decode(row.tokens)
    else:
        row.tokens.append(token)
        text = tokenizer.decode(row.tokens)
        cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
        if cut >= 0:
            row.finish, text = "stop", text[:cut]
        elif len(row.tokens) >= row.request.max_new_tokens:
            row.finish = "length"
    if row.finish is not None:
        row.text = text
        ready = len(text)
    elif text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its other bytes
        return
    else:
        ready = len(text) - _held_back(text, stops)
    if on_text is not None and ready > row.sent:
        on_text(row.index, row.sample, text[row.sent : ready])
    row.sent = max(row.sent, ready)


# -- text-to-image -------------------------------------------------------------------------------
@dataclass
class ImageRequest:
    """One text-to-image request of a batch (the settings batched together are arguments of
    :func:`generate_images_batch`)."""

    prompt: str
    negative_prompt: str | None = None
    num_samples: int = 1
    seed: int | None = None


def image_branches(prompt: str, negative_prompt: str | None, guidance_scale: float) -> int:
    """Guidance branches a request runs (2: unconditional and conditional, 1: one), as
    ``LatentDiffusionPipeline.generate`` decides; requests batch only with equal branches."""
    uncond = "" if negative_prompt is None else negative_prompt
    return 2 if guidance_scale not in (0.0, 1.0) and uncond != prompt else 1


def generate_images_batch(pipe, requests: Sequence[ImageRequest], *, num_inference_steps: int,
                          guidance_scale: float, scheduler: str | None = None,
                          height: int | None = None, width: int | None = None,
                          callback_on_step_end: StepCallback | None = None
                          ) -> list[ImageGenerationOutput]:
    """Text-to-image for several requests in one denoising loop: the pipeline called with the
    list of their prompts, negative prompts, counts and seeds.

    Args:
        pipe: A :class:`~multimodal.pipelines.text_to_image.TextToImagePipeline`.
        requests: Requests whose :func:`image_branches` agree.
        num_inference_steps, guidance_scale, scheduler: Shared by the batch, as for the
            pipeline.
        height, width: The batch's size in pixels (``None``: the size the model was trained
            at), as for the pipeline.
        callback_on_step_end: diffusers' ``f(pipe, step_index, timestep, callback_kwargs)``
            after every step; ``callback_kwargs["latents"]`` (s, l, y, x) holds every sample of
            every request, in request order.

    Returns:
        One :class:`ImageGenerationOutput` per request: what ``pipe(prompt, seed=seed, ...)``
        gives alone.

    Raises:
        InputError: a bad argument (the pipeline's checks), or requests whose branches differ.
    """
    for request in requests:  # every request's own refusal before the branch check
        pipe._check_arguments(request.prompt, request.negative_prompt, num_inference_steps,
                              guidance_scale, request.num_samples, 1.0)
    branches = {image_branches(r.prompt, r.negative_prompt, guidance_scale) for r in requests}
    if len(branches) != 1:
        raise InputError("requests batched together must all run guidance, or all not")
    output = pipe.generate([r.prompt for r in requests],
                           negative_prompt=[r.negative_prompt for r in requests],
                           num_samples=[r.num_samples for r in requests],
                           seed=[r.seed for r in requests],
                           num_inference_steps=num_inference_steps,
                           guidance_scale=guidance_scale, scheduler=scheduler, height=height,
                           width=width, progress=False,
                           callback_on_step_end=callback_on_step_end)
    return output.split()
