"""Text generation: the shared backbone and the LM head, decoded token by token with a KV cache.

Axes: b batch (samples), n tokens, v vocabulary.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from multimodal.errors import CheckpointError, InputError
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
    """

    texts: list[str]
    token_ids: list[list[int]] = field(repr=False)
    prompt: str = ""
    seed: int | None = None


class TextStreamer:
    """Prints one sample's text as it is generated, whole characters only.

    Args:
        tokenizer: Decodes the ids seen so far.
        write: Called with each new piece of text (default: ``sys.stdout`` write + flush).
    """

    def __init__(self, tokenizer, write: Callable[[str], None] | None = None):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.printed = 0
        self.write = write or (lambda s: (sys.stdout.write(s), sys.stdout.flush()))

    def put(self, token_id: int) -> None:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its other bytes
            return
        self.write(text[self.printed:])
        self.printed = len(text)

    def end(self) -> None:
        text = self.tokenizer.decode(self.ids)
        self.write(text[self.printed:])
        self.printed = len(text)


@pipelines.register("text-generation")
class TextGenerationPipeline:
    """Generate text from a prompt.

    Args:
        backbone: The shared Transformer.
        lm_head: The text decoder.
        tokenizer: The text tokenizer (byte-level BPE).
        checkpoint_id: Recorded with outputs.

    Prompts longer than the context are truncated from the left, keeping the most recent
    tokens, with a warning.
    """

    produces = "text"  # what its outputs hold (task files check combiner inputs)

    def __init__(self, *, backbone, lm_head, tokenizer, checkpoint_id: str = "none"):
        self.backbone, self.lm_head, self.tokenizer = backbone, lm_head, tokenizer
        self.checkpoint_id = checkpoint_id

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str = "cpu") -> "TextGenerationPipeline":
        """Load from a checkpoint (or a run directory's newest one).

        Raises:
            CheckpointError: unusable checkpoint, or one without a text decoder.
        """
        from multimodal.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path, device=device)
        if "text" not in ckpt.model.decoders or "text" not in ckpt.tokenizers:
            raise CheckpointError(f"checkpoint {ckpt.path} has no text decoder and tokenizer; "
                                  "text-generation needs decoders.text and tokenizers.text")
        return cls(backbone=ckpt.model.backbone, lm_head=ckpt.model.decoders["text"],
                   tokenizer=ckpt.tokenizers["text"], checkpoint_id=ckpt.checkpoint_id)

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
    def __call__(self, prompt: str = "", *, max_new_tokens: int = 100, do_sample: bool = True,
                 temperature: float = 0.8, top_k: int | None = 50, top_p: float | None = 0.95,
                 num_samples: int = 1, seed: int | None = None,
                 generator: torch.Generator | None = None, stop_at_eos: bool = True,
                 streamer: TextStreamer | None = None) -> TextGenerationOutput:
        """Continue ``prompt``.

        Args:
            prompt: Text to continue; ``""`` starts a new document.
            max_new_tokens: Tokens to generate at most (1 .. ``max_seq_len - 1``).
            do_sample: Sample; ``False`` is greedy decoding.
            temperature: Sampling temperature (> 0).
            top_k: Keep the ``k`` most likely tokens (``None``: all).
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
        if not isinstance(prompt, str):
            raise InputError(f"prompt must be a string, got {type(prompt).__name__}")
        policy_of(self).check(prompt, task="text-generation")
        limit = self.backbone.max_seq_len - 1
        if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= limit:
            raise InputError(f"max_new_tokens must be an integer in 1..{limit} (the context "
                             f"is {self.backbone.max_seq_len}), got {max_new_tokens!r}")
        if not isinstance(num_samples, int) or num_samples < 1:
            raise InputError(f"num_samples must be an integer >= 1, got {num_samples!r}")
        if do_sample and not temperature > 0:
            raise InputError(f"temperature must be > 0 (use do_sample=False for greedy), "
                             f"got {temperature!r}")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise InputError(f"top_k must be a positive integer or None, got {top_k!r}")
        if top_p is not None and not 0 < top_p <= 1:
            raise InputError(f"top_p must be in (0, 1] or None, got {top_p!r}")
        if generator is None:
            generator = torch.Generator()
            if seed is None:
                seed = int(torch.randint(0, 2**31 - 1, ()).item())
            generator.manual_seed(seed)

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
        return TextGenerationOutput(texts=texts, token_ids=token_ids, prompt=prompt_used,
                                    seed=seed)

    # -- command line -----------------------------------------------------------------------
    @staticmethod
    def add_cli_arguments(parser) -> None:
        parser.add_argument("--prompt", default="", help="text to continue ('' starts afresh)")
        parser.add_argument("--max-new-tokens", type=int, default=None,
                            help="tokens to generate (default: 100, or half the model's "
                                 "context if that is shorter)")
        parser.add_argument("--temperature", type=float, default=0.8)
        parser.add_argument("--top-k", type=int, default=50)
        parser.add_argument("--top-p", type=float, default=0.95)
        parser.add_argument("--greedy", action="store_true", help="greedy decoding")
        parser.add_argument("--num-samples", type=int, default=1)
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument("--out", help="also write 000.txt (+ 000.json settings), ... here")

    def run_cli(self, args) -> int:
        import json

        import contextlib

        from multimodal.io import OutputFiles

        policy_of(self).check(args.prompt, task="text-generation")  # before echoing it
        max_new_tokens = args.max_new_tokens
        if max_new_tokens is None:
            max_new_tokens = min(100, self.backbone.max_seq_len // 2)
        with (OutputFiles(args.out) if args.out else contextlib.nullcontext()) as out:
            stream = args.num_samples == 1
            if stream:
                sys.stdout.write(args.prompt)
                sys.stdout.flush()
            result = self(args.prompt, max_new_tokens=max_new_tokens,
                          do_sample=not args.greedy, temperature=args.temperature,
                          top_k=args.top_k, top_p=args.top_p, num_samples=args.num_samples,
                          seed=args.seed,
                          streamer=TextStreamer(self.tokenizer) if stream else None)
            if stream:
                print()
            else:
                for i, text in enumerate(result.texts):
                    print(f"--- sample {i}\n{args.prompt}{text}")
            if out is not None:
                for i, text in enumerate(result.texts):
                    out.write(f"{i:03d}.txt", args.prompt + text + "\n")
                    meta = {"task": "text-generation", "prompt": args.prompt,
                            "seed": result.seed, "sample": i, "num_samples": len(result.texts),
                            "max_new_tokens": max_new_tokens,
                            "do_sample": not args.greedy, "temperature": args.temperature,
                            "top_k": args.top_k, "top_p": args.top_p,
                            "checkpoint_id": self.checkpoint_id}
                    out.write(f"{i:03d}.json", json.dumps(meta, indent=1) + "\n")
        return 0
