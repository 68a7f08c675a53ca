"""Text generation: the shared backbone and the LM head, decoded token by token with a KV cache.

Axes: b batch (samples), n tokens, v vocabulary.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from multimodal.pipelines.base import (Pipeline, check_bool, check_float, check_int,
                                       check_num_samples, check_text, seeded)
from multimodal.pipelines.sampling import sample_next_token
from multimodal.registry import pipelines
from multimodal.safety import policy_of


@dataclass
class TextGenerationOutput:
    """What :class:`TextGenerationPipeline` returns.

    Attributes:
        texts: One continuation per sample (the prompt not repeated).
        token_ids: The generated ids of each sample, end-of-text excluded.
        prompt: The prompt as used (after any truncation).
        seed: The seed used.
        input_prompt: The prompt as given (written with the files).
        max_new_tokens, do_sample, temperature, top_k, top_p, checkpoint_id: The settings used.
    """

    texts: list[str]
    token_ids: list[list[int]] = field(repr=False)
    prompt: str = ""
    seed: int | None = None
    input_prompt: str = ""
    max_new_tokens: int = 100
    do_sample: bool = True
    temperature: float = 0.8
    top_k: int | None = 50
    top_p: float | None = 0.95
    checkpoint_id: str = "none"

    @property
    def samples(self) -> list[str]:
        """The texts as written to files: the given prompt followed by each continuation."""
        return [self.input_prompt + text for text in self.texts]

    def metadata(self, index: int) -> dict[str, Any]:
        """The settings of sample ``index`` (written next to its text)."""
        return {"task": "text-generation", "prompt": self.input_prompt, "seed": self.seed,
                "sample": index, "num_samples": len(self.texts),
                "max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
                "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                "checkpoint_id": self.checkpoint_id}


class TextStreamer:
    """Prints one sample's text as it is generated, whole characters only.

    Args:
        tokenizer: Decodes the ids seen so far.
        write: Called with each new piece of text (default: ``sys.stdout`` write + flush).
        prefix: Written before the first piece (the prompt, echoed): only once generation
            runs, so a call its pipeline refuses prints nothing.
    """

    def __init__(self, tokenizer, write: Callable[[str], None] | None = None,
                 prefix: str = ""):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.printed = 0
        self.prefix = prefix
        self.write = write or (lambda s: (sys.stdout.write(s), sys.stdout.flush()))

    def _emit(self, piece: str) -> None:
        if self.prefix:
            piece, self.prefix = self.prefix + piece, ""
        self.write(piece)

    def start(self) -> None:
        """Called by the pipeline once its arguments are checked: writes the prefix."""
        if self.prefix:
            self._emit("")

    def put(self, token_id: int) -> None:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its other bytes
            return
        self._emit(text[self.printed:])
        self.printed = len(text)

    def end(self) -> None:
        text = self.tokenizer.decode(self.ids)
        self._emit(text[self.printed:])
        self.printed = len(text)


@pipelines.register("text-generation")
class TextGenerationPipeline(Pipeline):
    """Generate text from a prompt.

    Args:
        backbone: The shared Transformer.
        lm_head: The text decoder.
        tokenizer: The text tokenizer (byte-level BPE).
        checkpoint_id: Recorded with outputs.

    Prompts longer than the context are truncated from the left, keeping the most recent
    tokens, with a warning.
    """

    task = "text-generation"
    produces = "text"  # what its outputs hold: the spec whose writer writes them
    parts = {"backbone": "backbone", "lm_head": "decoders.text", "tokenizer": "tokenizers.text"}
    needs = "a text decoder and tokenizer (train e.g. configs/text_fortunes.yaml)"

    def __init__(self, *, backbone, lm_head, tokenizer, checkpoint_id: str = "none"):
        self.backbone, self.lm_head, self.tokenizer = backbone, lm_head, tokenizer
        self.checkpoint_id = checkpoint_id

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def encode_prompt(self, prompt: str, max_new_tokens: int) -> list[int]:
        """End-of-text (start of a document) + the prompt's ids, truncated from the left."""
        budget = self.backbone.max_seq_len - max_new_tokens
        ids = [self.tokenizer.eos_id] + self.tokenizer.encode(prompt)
        if len(ids) > budget:
            warnings.warn(
                f"the prompt has {len(ids)} tokens; with max_new_tokens={max_new_tokens} the "
                f"context ({self.backbone.max_seq_len}) holds {budget}: keeping the last {budget}",
                stacklevel=3)
            ids = ids[-budget:]
        return ids

    @torch.inference_mode()
    def __call__(self, prompt: str = "", *, max_new_tokens: int | None = None,
                 do_sample: bool = True,
                 temperature: float = 0.8, top_k: int | None = 50, top_p: float | None = 0.95,
                 num_samples: int = 1, seed: int | None = None,
                 generator: torch.Generator | None = None, stop_at_eos: bool = True,
                 streamer: TextStreamer | None = None) -> TextGenerationOutput:
        """Continue ``prompt``.

        Args:
            prompt: Text to continue; ``""`` starts a new document.
            max_new_tokens: Tokens to generate at most (1 .. ``max_seq_len - 1``; default:
                100, or half the model's context if that is shorter).
            do_sample: Sample; ``False`` is greedy decoding.
            temperature: Sampling temperature (> 0).
            top_k: Keep the ``k`` most likely tokens (``None``: keep all).
            top_p: Nucleus sampling threshold in (0, 1] (``None``: off).
            num_samples: Continuations generated together (>= 1).
            seed: Seed of the sampling generator (``generator`` wins when both are given).
            stop_at_eos: Stop a sample at end-of-text.
            streamer: Receives sample 0's tokens as they are made.

        Returns:
            :class:`TextGenerationOutput`.

        Raises:
            InputError: an argument outside the ranges above, or a prompt that is not a string.
        """
        check_text("prompt", prompt)
        policy_of(self).check(prompt, task="text-generation")
        limit = self.backbone.max_seq_len - 1
        if max_new_tokens is None:
            max_new_tokens = min(100, self.backbone.max_seq_len // 2)
        check_int("max_new_tokens", max_new_tokens, 1, limit,
                  accepted=f"an integer in 1..{limit} (the context is "
                           f"{self.backbone.max_seq_len})")
        check_num_samples(num_samples)
        check_bool("do_sample", do_sample)
        check_bool("stop_at_eos", stop_at_eos)
        temperature = check_float(
            "temperature", temperature, 0.0, lo_open=do_sample,
            accepted="a finite number > 0 (use do_sample=False for greedy)" if do_sample
            else "a finite number >= 0")
        top_k = check_int("top_k", top_k, 1, optional=True,
                          accepted="a positive integer or None")
        top_p = check_float("top_p", top_p, 0.0, 1.0, lo_open=True, optional=True,
                            accepted="a number in (0, 1] or None")
        generator, seed = seeded(seed, generator)
        if streamer is not None and hasattr(streamer, "start"):
            streamer.start()

        ids = self.encode_prompt(prompt, max_new_tokens)
        prompt_used = self.tokenizer.decode(ids)
        device = self.device
        input_ids = torch.tensor([ids] * num_samples, device=device)  # (b, n)
        cache = self.backbone.new_kv_cache(num_samples, len(ids) + max_new_tokens)
        eos = self.tokenizer.eos_id
        generated = torch.empty(num_samples, 0, dtype=torch.long, device=device)
        finished = torch.zeros(num_samples, dtype=torch.bool, device=device)

        logits = self.lm_head(self.backbone(input_ids, kv_cache=cache)[:, -1])  # (b, v)
        for _ in range(max_new_tokens):
            next_ids = sample_next_token(logits.cpu(), do_sample=do_sample,
                                         temperature=temperature, top_k=top_k, top_p=top_p,
                                         generator=generator).to(device)
            next_ids = torch.where(finished, eos, next_ids)
            generated = torch.cat([generated, next_ids[:, None]], dim=1)
            if streamer is not None and not finished[0] and next_ids[0] != eos:
                streamer.put(int(next_ids[0]))
            if stop_at_eos:
                finished |= next_ids == eos
                if bool(finished.all()):
                    break
            if generated.shape[1] == max_new_tokens:
                break
            logits = self.lm_head(self.backbone(next_ids[:, None], kv_cache=cache)[:, -1])
        if streamer is not None:
            streamer.end()

        token_ids = []
        for row in generated.tolist():
            if stop_at_eos and eos in row:
                row = row[: row.index(eos)]
            token_ids.append(row)
        texts = [self.tokenizer.decode(row) for row in token_ids]
        return TextGenerationOutput(
            texts=texts, token_ids=token_ids, prompt=prompt_used, seed=seed, input_prompt=prompt,
            max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
            top_k=top_k, top_p=top_p, checkpoint_id=self.checkpoint_id)
