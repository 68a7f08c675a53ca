"""Text-to-sketch: stroke tokens sampled one by one after the prompt, then rendered.

The prompt is tokenised as in training (end-of-text, then its ids; ``""`` is the empty,
unconditional caption) and run through the shared backbone once; stroke tokens then follow
one at a time with the backbone's KV cache. Tokens that cannot come next are masked before
sampling: ``PAD`` always, anything but ``NEW_STROKE`` first, ``NEW_STROKE`` or ``END`` right
after ``NEW_STROKE`` (a stroke has at least one point), and the cell just drawn (the tokenizer
never repeats one). A sample stops at ``END`` or after ``max_tokens`` tokens. All randomness
comes from one ``torch.Generator`` seeded with ``seed``, so a seed reproduces the sketches.

Prompts are checked against the safety policy (:mod:`multimodal.safety`: the checkpoint's
``safety:`` section, else the packaged blocklist) before anything is generated. The pipeline
writes no file and knows no command line: ``multimodal generate text-to-sketch`` derives its
options from :meth:`TextToSketchPipeline.__call__`, and the sketch spec's writer writes each
sample as a PNG and a JSON that record the settings under the names of ``__call__``'s
arguments, so ``multimodal replay 000.png`` regenerates it.

Axes: s samples, n positions, v stroke vocabulary, k points.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from multimodal.errors import CheckpointError, DataError, InputError
from multimodal.pipelines.base import Pipeline, seeded
from multimodal.pipelines.sampling import sample_next_token
from multimodal.safety import policy_of
from multimodal_sketch.tokenizer import as_strokes

TASK = "text-to-sketch"


MAX_SIZE = 4096  # pixels per side of a rendered sketch
DEFAULT_SIZE = 128  # pixels per side of a written sketch


def render(strokes: Any, size: int = 64, *, line_width: int | None = None) -> np.ndarray:
    """Draw a sketch: white strokes on black.

    Args:
        strokes: (k, 3) stroke-3 points with absolute ``x``, ``y`` in [0, 1] (tensor, array or
            list; see :mod:`multimodal_sketch.data`).
        size: Image side in pixels (default 64).
        line_width: Stroke width in pixels (default ``max(1, size // 32)``).

    Returns:
        (size, size) uint8 image: 0 where the paper is blank, 255 where ink is.

    Raises:
        InputError: not (k, 3) finite points, or a size outside 8 .. MAX_SIZE.
    """
    if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= MAX_SIZE:
        raise InputError(f"size must be an integer from 8 to {MAX_SIZE} pixels, got {size!r}")
    try:
        points = as_strokes(strokes)
    except DataError as exc:
        raise InputError(str(exc)) from None
    width = line_width or max(1, size // 32)
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    scale = size - 1
    start = 0
    for i in range(len(points)):
        if points[i, 2] > 0.5 or i == len(points) - 1:
            xy = [(float(x) * scale, float(y) * scale) for x, y in points[start : i + 1, :2]]
            if len(xy) == 1:
                x, y = xy[0]
                r = width / 2
                draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
            else:
                draw.line(xy, fill=255, width=width, joint="curve")
            start = i + 1
    return np.asarray(image)


@dataclass
class SketchGenerationOutput:
    """What :class:`TextToSketchPipeline` returns.

    Attributes:
        sketches: One (k, 3) float32 array per sample: absolute ``x``, ``y`` in [0, 1] and
            ``pen_lift`` (stroke-3, absolute).
        token_ids: The stroke tokens of each sample (``END`` excluded).
        prompt: The prompt as used (after any truncation).
        seed, temperature, top_k, max_tokens, checkpoint_id: The settings used.
        size: Side in pixels of the written PNG of each sketch.
    """

    sketches: list[np.ndarray]
    token_ids: list[list[int]] = field(repr=False, default_factory=list)
    prompt: str = ""
    seed: int | None = None
    temperature: float = 1.0
    top_k: int | None = None
    max_tokens: int = 0
    checkpoint_id: str = "none"
    size: int = DEFAULT_SIZE

    @property
    def samples(self) -> list[np.ndarray]:
        """The sketches, one per sample (what the sketch writer renders and writes)."""
        return self.sketches

    def metadata(self, index: int | None = None) -> dict[str, Any]:
        """The settings of sample ``index``, as written into its PNG and JSON."""
        return {"task": TASK, "prompt": self.prompt, "seed": self.seed, "sample": index,
                "num_samples": len(self.sketches), "temperature": self.temperature,
                "top_k": self.top_k, "max_tokens": self.max_tokens,
                "checkpoint_id": self.checkpoint_id, "size": self.size}

    def images(self, size: int = 64) -> list[np.ndarray]:
        """The sketches rendered with :func:`render`: (size, size) uint8 each."""
        return [render(sketch, size) for sketch in self.sketches]


class TextToSketchPipeline(Pipeline):
    """Generate sketches (pen strokes) from a prompt.

    Args:
        backbone: The shared Transformer.
        decoder: The sketch decoder (``stroke_head``).
        tokenizer: The text tokenizer.
        stroke_tokenizer: The stroke tokenizer (``stroke_tokens``).
        checkpoint_id: Recorded with outputs.

    Raises:
        CheckpointError: the stroke tokenizer's grid differs from the decoder's.
    """

    task = TASK
    produces = "sketch"  # the spec whose writer writes its outputs
    default_checkpoint_name = TASK  # multimodal/assets/text-to-sketch when one is shipped
    parts = {"backbone": "backbone", "decoder": "decoders.sketch", "tokenizer": "tokenizers.text",
             "stroke_tokenizer": "tokenizers.sketch"}
    needs = ("a stroke_head decoder, a stroke_tokens and a text tokenizer (train "
             "examples/plugins/sketch/configs/sketch_shapes.yaml)")

    def __init__(self, *, backbone, decoder, tokenizer, stroke_tokenizer,
                 checkpoint_id: str = "none"):
        if stroke_tokenizer.grid_size != decoder.grid_size:
            raise CheckpointError(f"the stroke tokenizer's grid ({stroke_tokenizer.grid_size}) "
                                  f"differs from the decoder's ({decoder.grid_size})")
        self.backbone, self.decoder = backbone, decoder
        self.tokenizer, self.stroke_tokenizer = tokenizer, stroke_tokenizer
        self.checkpoint_id = checkpoint_id

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    def _check(self, prompt, num_samples, temperature, top_k, seed, max_tokens, size) -> int:
        if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= MAX_SIZE:
            raise InputError(f"size must be from 8 to {MAX_SIZE} pixels, got {size!r}")
        if not isinstance(prompt, str):
            raise InputError(f"prompt must be a string, got {type(prompt).__name__}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise InputError(f"num_samples must be an integer >= 1, got {num_samples!r}")
        if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                or not temperature > 0):
            raise InputError(f"temperature must be a number > 0, got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                                  or top_k < 1):
            raise InputError(f"top_k must be a positive integer or None, got {top_k!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise InputError(f"seed must be an integer or None, got {seed!r}")
        limit = self.backbone.max_seq_len - 1
        if max_tokens is None:
            max_tokens = min(self.decoder.max_tokens, limit)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or \
                not 1 <= max_tokens <= limit:
            raise InputError(f"max_tokens must be an integer in 1..{limit} (the context is "
                             f"{self.backbone.max_seq_len}), got {max_tokens!r}")
        return max_tokens

    def legal_mask(self, previous: torch.Tensor, step: int) -> torch.Tensor:
        """Which tokens may come next: (s, v) bool, given the (s,) previous stroke tokens."""
        d = self.decoder
        s = previous.shape[0]
        legal = torch.ones((s, d.vocab_size), dtype=torch.bool)
        legal[:, d.pad_id] = False
        if step == 0:
            legal[:] = False
            legal[:, d.new_stroke_id] = True
            return legal
        after_new = previous == d.new_stroke_id
        legal[after_new, d.new_stroke_id] = False
        legal[after_new, d.end_id] = False
        rows = torch.nonzero(previous < d.num_cells).flatten()
        legal[rows, previous[rows]] = False  # no repeated cell
        return legal

    @torch.inference_mode()
    def __call__(self, prompt: str = "", *, num_samples: int = 1, temperature: float = 1.0,
                 top_k: int | None = None, seed: int | None = None,
                 max_tokens: int | None = None, size: int = DEFAULT_SIZE,
                 generator: torch.Generator | None = None) -> SketchGenerationOutput:
        """Draw sketches of ``prompt``.

        Args:
            prompt: What to draw, e.g. ``"a big star"``; ``""`` draws unconditionally.
            num_samples: Sketches drawn together (>= 1).
            temperature: Sampling temperature (> 0; lower is tidier, default 1).
            top_k: Sample among the ``k`` most likely tokens only (default all).
            seed: Seed of the sampling generator (random when neither it nor ``generator``
                is given).
            max_tokens: Stroke tokens at most per sketch (default the decoder's
                ``max_tokens``; at most ``max_seq_len - 1``). Prompts longer than the rest of
                the context are cut at the end, with a warning.
            size: Side in pixels of the PNG each sketch is written as, 8 .. 4096 (default
                128; recorded, the strokes do not depend on it).
            generator: A CPU ``torch.Generator`` to draw from instead of ``seed``.

        Returns:
            :class:`SketchGenerationOutput` with ``num_samples`` sketches.

        Raises:
            InputError: an argument outside the ranges above, or a prompt that is not a string.
            PromptBlockedError: the prompt contains a term of the safety blocklist (an
                ``InputError``); nothing is generated.
        """
        max_tokens = self._check(prompt, num_samples, temperature, top_k, seed, max_tokens,
                                 size)
        policy_of(self).check(prompt, task=TASK)
        generator, seed = seeded(seed, generator)
        d, device = self.decoder, self.device
        ids = [self.tokenizer.eos_id] + self.tokenizer.encode(prompt)
        budget = self.backbone.max_seq_len - max_tokens
        if len(ids) > budget:
            warnings.warn(f"the prompt has {len(ids)} tokens; with max_tokens={max_tokens} the "
                          f"context ({self.backbone.max_seq_len}) holds {budget}: keeping the "
                          f"first {budget}", stacklevel=2)
            ids = ids[:budget]
        prompt_used = self.tokenizer.decode(ids)

        s = num_samples
        text = torch.tensor([ids] * s, device=device)  # (s, n)
        cache = self.backbone.new_kv_cache(s, len(ids) + max_tokens)
        logits = d(self.backbone, text, torch.full_like(text, d.pad_id),
                   torch.zeros_like(text, dtype=torch.bool), kv_cache=cache)[:, -1]  # (s, v)
        previous = torch.full((s,), d.pad_id, dtype=torch.long)
        finished = torch.zeros(s, dtype=torch.bool)
        generated = []
        for step in range(max_tokens):
            scores = logits.float().cpu().masked_fill(~self.legal_mask(previous, step),
                                                      float("-inf"))
            token = sample_next_token(scores, temperature=float(temperature), top_k=top_k,
                                      generator=generator)
            token = torch.where(finished, d.end_id, token)
            generated.append(token)
            finished |= token == d.end_id
            if bool(finished.all()) or step == max_tokens - 1:
                break
            step_ids = token[:, None].to(device)
            logits = d(self.backbone, torch.zeros_like(step_ids), step_ids,
                       torch.ones_like(step_ids, dtype=torch.bool), kv_cache=cache)[:, -1]
            previous = token

        rows = torch.stack(generated, 1).tolist()  # (s, steps)
        token_ids = [row[: row.index(d.end_id)] if d.end_id in row else row for row in rows]
        sketches = [self.stroke_tokenizer.decode(row).numpy() for row in token_ids]
        return SketchGenerationOutput(sketches=sketches, token_ids=token_ids, prompt=prompt_used,
                                      seed=seed, temperature=float(temperature), top_k=top_k,
                                      max_tokens=max_tokens, checkpoint_id=self.checkpoint_id,
                                      size=size)
