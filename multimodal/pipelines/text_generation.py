"""Text generation: the shared backbone and the LM head, decoded token by token with a KV cache.

Axes: b batch (samples), n tokens, v vocabulary.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from multimodal.errors import InputError
from multimodal.pipelines.base import (Pipeline, check_bool, check_float, check_int,
                                       check_num_samples, check_prompts, check_seed,
                                       check_seed_or_generator, check_text, prompt_seed,
                                       runtime_settings, seeded)
from multimodal.pipelines.sampling import sample_next_token
from multimodal.registry import pipelines
from multimodal.safety import policy_of


@dataclass
class TextGenerationOutput:
    """What :class:`TextGenerationPipeline` returns.

    A call with a list of prompts returns its texts flat in prompt order (``num_samples`` of
    prompt 0, then of prompt 1, ...; transformers' layout with ``num_return_sequences``), and
    records ``prompt``, ``input_prompt`` and ``seed`` per prompt (lists): :meth:`metadata`
    gives each sample its own prompt and seed, with which it replays alone.

    Attributes:
        texts: One continuation per sample (the prompt not repeated).
        token_ids: The generated ids of each sample, end-of-text excluded.
        prompt: The prompt as used (after any truncation).
        seed: The seed used.
        input_prompt: The prompt as given (written with the files).
        max_new_tokens, do_sample, temperature, top_k, top_p, checkpoint_id: The settings used.
        repetition_penalty, stop_strings: transformers' settings, as used (recorded in the
            metadata when they are not the defaults, 1.0 and none).
        num_samples_per_prompt: Samples of each prompt of a list call (``None``: one prompt).
        runtime: How the pipeline ran where that changes the numbers (``torch_dtype`` when
            not float32, ``device`` when not the CPU), written with every sample.
    """

    texts: list[str]
    token_ids: list[list[int]] = field(repr=False)
    prompt: str | list[str] = ""
    seed: int | list[int | None] | None = None
    input_prompt: str | list[str] = ""
    max_new_tokens: int = 100
    do_sample: bool = True
    temperature: float = 0.8
    top_k: int | None = 50
    top_p: float | None = 0.95
    checkpoint_id: str = "none"
    repetition_penalty: float = 1.0
    stop_strings: list[str] | None = None
    num_samples_per_prompt: int | None = None
    runtime: dict[str, str] = field(default_factory=dict)

    def _locate(self, index: int) -> tuple[int | None, int, int]:
        """``(prompt index or None, sample within its prompt, samples of that prompt)``."""
        if self.num_samples_per_prompt is None:
            return None, index, len(self.texts)
        n = self.num_samples_per_prompt
        return index // n, index % n, n

    @property
    def samples(self) -> list[str]:
        """The texts as written to files: the given prompt followed by each continuation."""
        if self.num_samples_per_prompt is None:
            return [self.input_prompt + text for text in self.texts]
        return [self.input_prompt[self._locate(i)[0]] + text for i, text in enumerate(self.texts)]

    def metadata(self, index: int) -> dict[str, Any]:
        """The settings of sample ``index`` (written next to its text)."""
        group, sample, count = self._locate(index)
        prompt, seed = self.input_prompt, self.seed
        if group is not None:
            prompt, seed = prompt[group], seed[group]
        meta = {"task": "text-generation", "prompt": prompt, "seed": seed,
                "sample": sample, "num_samples": count,
                "max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
                "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                "checkpoint_id": self.checkpoint_id}
        if self.repetition_penalty != 1.0:
            meta["repetition_penalty"] = self.repetition_penalty
        if self.stop_strings:
            meta["stop_strings"] = list(self.stop_strings)
        meta.update(self.runtime)
        return meta


class TextStreamer:
    """Prints one sample's text as it is generated, whole characters only.

    It follows transformers' streamer protocol, as the pipeline calls it: ``put`` first with
    the prompt's ids (a (1, n) tensor: skipped here, ``prefix`` is written instead), then with
    each new token (a (1,) tensor), and ``end`` once. transformers' own ``TextStreamer`` and
    ``TextIteratorStreamer`` work with the pipeline as well.

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
        self.prompt_seen = False
        self.write = write or (lambda s: (sys.stdout.write(s), sys.stdout.flush()))

    def _emit(self, piece: str) -> None:
        if self.prefix:
            piece, self.prefix = self.prefix + piece, ""
        self.write(piece)

    def put(self, value: torch.Tensor) -> None:
        """The prompt's ids (first call: writes ``prefix``), then new tokens (1,) or (1, k)."""
        if not self.prompt_seen:
            self.prompt_seen = True
            if self.prefix:
                self._emit("")
            return
        self.ids += value.reshape(-1).tolist()
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its other bytes
            return
        self._emit(text[self.printed:])
        self.printed = len(text)

    def end(self) -> None:
        text = self.tokenizer.decode(self.ids)
        self._emit(text[self.printed:])
        self.printed = len(text)


def repetition_penalized(logits: torch.Tensor, seen: list[list[int]], penalty: float
                         ) -> torch.Tensor:
    """transformers' ``RepetitionPenaltyLogitsProcessor`` (Keskar et al. 2019, CTRL,
    https://arxiv.org/abs/1909.05858): the logit of every token a row has seen (prompt
    included) divided by ``penalty`` when positive, multiplied when negative.

    Args:
        logits: (b, v) scores.
        seen: Per row, the ids seen so far.
        penalty: > 0; 1 changes nothing, > 1 discourages repeats.

    Returns:
        (b, v) float32 scores.
    """
    logits = logits.float().clone()
    for row, ids in enumerate(seen):
        index = torch.tensor(sorted(set(ids)), dtype=torch.long, device=logits.device)
        score = logits[row, index]
        logits[row, index] = torch.where(score < 0, score * penalty, score / penalty)
    return logits


def decode_step_compile_kwargs(compile_kwargs: dict[str, Any], device: Any = "cpu"
                               ) -> dict[str, Any]:
    """``torch.compile`` arguments of the decode step for :meth:`Pipeline.compile`'s
    ``compile_kwargs``: shapes static unless ``dynamic`` is given; with inductor (the default
    backend) and no ``mode``, its C++ wrapper (the Python wrapper's overhead per kernel is
    what a small model's step is short of), and on a CPU, frozen weights and autotuned
    matmuls too: inductor's C++ GEMM template then beats MKL at a few rows (it needs the
    weights as constants), the most of the measured gain (``benchmarks/text_generation.py
    --with-compiled``). Given ``options`` win over these."""
    kwargs = {"dynamic": False, **compile_kwargs}
    if kwargs.get("backend", "inductor") == "inductor" and kwargs.get("mode") is None:
        options = {"cpp_wrapper": True}
        if torch.device(device).type == "cpu":  # quiet: no table of timings on stderr
            options.update(freezing=True, max_autotune=True, autotune_num_choices_displayed=0,
                           max_autotune_report_choices_stats=False)
        kwargs["options"] = {**options, **(kwargs.get("options") or {})}
    return kwargs


class CompiledDecodeStep:
    """``lm_head(backbone.decode_step(input_ids, input_pos, kv_cache)[:, -1])`` through
    ``torch.compile``: next-token logits (b, v) of ``input_ids`` (b, n) at positions
    ``input_pos`` (n,) on a static cache. What :meth:`TextGenerationPipeline.compile` sets up.

    Compiled at the first call of each batch size, as its own function: dynamo keeps compiled
    graphs per code object (8 at most), and no graph of another pipeline may serve this one.
    With frozen weights (inductor's ``freezing`` option, the default on a CPU), the weights
    are constants of the compiled code (prepacked for its matmuls); a weight changed or
    replaced afterwards (new values in place, ``to(dtype)``) compiles the step again at the
    next call rather than decode with stale weights.

    Args:
        backbone: A backbone with ``decode_step`` (:class:`TransformerBackbone`).
        lm_head: The text decoder.
        compile_kwargs: ``torch.compile``'s keyword arguments, as
            :meth:`~multimodal.pipelines.base.Pipeline.compile` takes them (completed by
            :func:`decode_step_compile_kwargs`).
        device: Where the pipeline runs (picks the defaults).
    """

    def __init__(self, backbone, lm_head, compile_kwargs: dict[str, Any],
                 device: Any = "cpu"):
        self.backbone, self.lm_head = backbone, lm_head
        self.compile_kwargs = decode_step_compile_kwargs(compile_kwargs, device)
        self.freezing = bool((self.compile_kwargs.get("options") or {}).get("freezing"))
        self._compiled: Callable | None = None
        self._weights: list[tuple[int, int]] = []

    def __getstate__(self) -> dict[str, Any]:  # a copy compiles its own (on its own weights)
        return {**self.__dict__, "_compiled": None, "_weights": []}

    def _weights_now(self) -> list[tuple[int, int]]:
        # inference tensors keep no version counter (nor change in place outside inference)
        return [(t.data_ptr(), 0 if t.is_inference() else t._version)
                for module in (self.backbone, self.lm_head)
                for t in (*module.parameters(), *module.buffers())]

    def prepare(self, kv_cache, backbone, lm_head) -> None:
        """Before a decode loop on ``kv_cache`` by the pipeline's ``backbone`` and
        ``lm_head``: the cache's length marked dynamic (one graph for every prompt and
        ``max_new_tokens``), and a recompile if the networks were replaced or, with frozen
        weights, their weights changed."""
        import torch._dynamo  # deferred: the compiler stack, only when compiled

        for buffer in kv_cache.keys + kv_cache.values:  # (b, k, m, e)
            torch._dynamo.maybe_mark_dynamic(buffer, 2)
        if backbone is not self.backbone or lm_head is not self.lm_head:
            self.backbone, self.lm_head, self._compiled = backbone, lm_head, None
        if self.freezing and self._weights_now() != self._weights:
            self._compiled = None

    def _build(self) -> Callable:
        backbone, lm_head = self.backbone, self.lm_head

        def decode_step(input_ids, input_pos, kv_cache):
            return lm_head(backbone.decode_step(input_ids, input_pos, kv_cache)[:, -1])

        decode_step.__code__ = decode_step.__code__.replace()  # a code object of its own
        if self.freezing:
            self._weights = self._weights_now()
        return torch.compile(decode_step, **self.compile_kwargs)

    def __call__(self, input_ids: torch.Tensor, input_pos: torch.Tensor, kv_cache
                 ) -> torch.Tensor:
        if self._compiled is None:
            self._compiled = self._build()
        if not self.freezing:
            return self._compiled(input_ids, input_pos, kv_cache)
        # deferred: the compiler stack, only when compiled
        from torch._inductor import config

        # Dynamo makes the weights constants or graph inputs from the global config as it
        # traces, before the compile options apply: freezing has to be on then.
        with config.patch(freezing=True):
            return self._compiled(input_ids, input_pos, kv_cache)


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
        self._compiled_step: CompiledDecodeStep | None = None  # set by compile()

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
    def __call__(self, prompt: str | list[str] = "", *, max_new_tokens: int | None = None,
                 do_sample: bool = True,
                 temperature: float = 0.8, top_k: int | None = 50, top_p: float | None = 0.95,
                 repetition_penalty: float = 1.0, stop_strings: str | list[str] | None = None,
                 num_samples: int = 1, num_return_sequences: int | None = None,
                 seed: int | None = None, generator: torch.Generator | None = None,
                 stop_at_eos: bool = True, streamer: Any = None) -> TextGenerationOutput:
        """Continue ``prompt`` (or every prompt of a list).

        Args:
            prompt: Text to continue; ``""`` starts a new document. A list continues each:
                prompts of the same token length decode together in one batch (the backbone
                has no padding mask), and prompt ``i`` samples from its own generator, seeded
                from ``seed`` (:func:`~multimodal.pipelines.base.prompt_seed`, recorded), so it
                gives what it gives alone with that seed (the same draws; a batch's logits
                may round differently in the last bits).
            max_new_tokens: Tokens to generate at most (1 .. ``max_seq_len - 1``; default:
                100, or half the model's context if that is shorter).
            do_sample: Sample; ``False`` is greedy decoding.
            temperature: Sampling temperature (> 0).
            top_k: Keep the ``k`` most likely tokens (``None``: keep all).
            top_p: Nucleus sampling threshold in (0, 1] (``None``: off).
            repetition_penalty: transformers' penalty on tokens already seen, prompt
                included (> 0; 1 is off, the default; 1.2 is common).
            stop_strings: A string or strings that end a sample once its text contains one
                (kept in the text, as transformers does).
            num_samples: Continuations of each prompt (>= 1).
            num_return_sequences: transformers' name of ``num_samples`` (give one of the two).
            seed: Seed of the sampling generator (not with ``generator``).
            stop_at_eos: Stop a sample at end-of-text.
            streamer: Receives the prompt's ids, then sample 0's tokens as they are made, as
                tensors, then ``end()`` (transformers' ``put``/``end`` protocol: its
                ``TextStreamer`` and ``TextIteratorStreamer`` work); one prompt and one sample
                only.

        Returns:
            :class:`TextGenerationOutput`.

        Raises:
            InputError: an argument outside the ranges above, or a prompt that is not a string.
        """
        prompts, is_list = check_prompts(prompt)
        for text in prompts:
            policy_of(self).check(text, task="text-generation")
        if num_return_sequences is not None:
            if num_samples != 1 and num_samples != num_return_sequences:
                raise InputError(f"num_samples={num_samples!r} and num_return_sequences="
                                 f"{num_return_sequences!r} name the same setting; give one")
            num_samples = num_return_sequences
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
        repetition_penalty = check_float("repetition_penalty", repetition_penalty, 0.0,
                                         lo_open=True, accepted="a finite number > 0 (1: off)")
        stops = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings or [])
        for stop in stops:
            if not check_text("stop_strings", stop):
                raise InputError("stop_strings: a stop string must not be empty")
        if streamer is not None and (is_list or num_samples > 1):
            raise InputError("a streamer takes one prompt and one sample (transformers' "
                             "streamers take batch size 1); give prompt as a string and "
                             "num_samples / num_return_sequences 1")
        base = check_seed(seed)
        check_seed_or_generator([base], generator)
        seeds: list[int | None] = [seed] if not is_list else \
            [None if base is None else prompt_seed(base, i) for i in range(len(prompts))]
        generators = []
        for i, prompt_seed_ in enumerate(seeds):
            gen, seeds[i] = seeded(prompt_seed_, generator)
            generators.append(gen)

        ids = [self.encode_prompt(text, max_new_tokens) for text in prompts]
        if streamer is not None:
            streamer.put(torch.tensor([ids[0]]))  # (1, n): the prompt, as transformers does
        by_length: dict[int, list[int]] = {}
        for i, prompt_ids in enumerate(ids):
            by_length.setdefault(len(prompt_ids), []).append(i)
        tokens: list[list[int]] = [[] for _ in range(len(prompts) * num_samples)]
        for group in by_length.values():
            rows = self._decode(
                [ids[i] for i in group], [generators[i] for i in group], num_samples,
                max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty, stops=stops,
                stop_at_eos=stop_at_eos, streamer=streamer if group[0] == 0 else None)
            for k, i in enumerate(group):
                tokens[i * num_samples : (i + 1) * num_samples] = \
                    rows[k * num_samples : (k + 1) * num_samples]
        if streamer is not None:
            streamer.end()

        texts = [self.tokenizer.decode(row) for row in tokens]
        used = [self.tokenizer.decode(prompt_ids) for prompt_ids in ids]
        return TextGenerationOutput(
            texts=texts, token_ids=tokens, prompt=used if is_list else used[0],
            seed=seeds if is_list else seeds[0], input_prompt=prompts if is_list else prompt,
            max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
            top_k=top_k, top_p=top_p, checkpoint_id=self.checkpoint_id,
            repetition_penalty=repetition_penalty, stop_strings=stops or None,
            num_samples_per_prompt=num_samples if is_list else None,
            runtime=runtime_settings(self))

    def _decode(self, ids: list[list[int]], generators: list[torch.Generator],
                num_samples: int, *, max_new_tokens: int, do_sample: bool, temperature: float,
                top_k: int | None, top_p: float | None, repetition_penalty: float,
                stops: list[str], stop_at_eos: bool, streamer: Any) -> list[list[int]]:
        """One KV-cached decode loop over prompts of one token length, ``num_samples`` rows
        each; prompt ``k``'s rows sample from ``generators[k]``. Returns the generated ids of
        every row (prompt-major), end-of-text excluded when ``stop_at_eos``; ``streamer``
        gets row 0's tokens."""
        device, eos = self.device, self.tokenizer.eos_id
        input_ids = torch.tensor([row for row in ids for _ in range(num_samples)],
                                 device=device)  # (b, n)
        b, n = input_ids.shape
        cache = self.backbone.new_kv_cache(b, n + max_new_tokens)
        # Compiled (see compile()): the backbone's decode step on a static cache, positions as a
        # tensor; the prefill through it uncompiled. Eager: forward, which attends to the
        # positions written so far only (the static step reads the whole cache: ~10% slower
        # at batch 8 uncompiled).
        compiled = self._compiled_step
        if compiled is not None:
            compiled.prepare(cache, self.backbone, self.lm_head)
            input_pos = torch.tensor([n], device=device)  # (1,): the position fed next
            with torch.compiler.set_stance("force_eager"):  # the LM head's compiled forward too
                logits = self._step(input_ids, torch.arange(n, device=device), cache)  # (b, v)
        else:
            logits = self.lm_head(self.backbone(input_ids, kv_cache=cache)[:, -1])
        tokens: list[list[int]] = [[] for _ in range(b)]
        done = [False] * b
        finished = torch.zeros(b, dtype=torch.bool)  # ``done`` as a tensor: those are fed eos
        for step in range(max_new_tokens):
            logits = logits.cpu()
            if repetition_penalty != 1.0:
                logits = repetition_penalized(
                    logits, [ids[r // num_samples] + tokens[r] for r in range(b)],
                    repetition_penalty)
            picks = [  # each prompt's rows from its own generator
                sample_next_token(logits[k * num_samples : (k + 1) * num_samples],
                                  do_sample=do_sample, temperature=temperature, top_k=top_k,
                                  top_p=top_p, generator=gen)
                for k, gen in enumerate(generators)]
            next_ids = picks[0] if len(picks) == 1 else torch.cat(picks)  # (b,)
            for r, token in enumerate(next_ids.tolist()):
                if done[r]:
                    continue
                if stop_at_eos and token == eos:
                    done[r] = finished[r] = True
                    continue
                tokens[r].append(token)
                if r == 0 and streamer is not None:
                    streamer.put(next_ids[:1].clone())  # (1,), as transformers does
                if stops and any(s in self.tokenizer.decode(tokens[r]) for s in stops):
                    done[r] = finished[r] = True
            if all(done) or step == max_new_tokens - 1:
                break
            feed = next_ids.masked_fill(finished, eos).to(device)[:, None]  # (b, 1)
            if compiled is not None:
                logits = compiled(feed, input_pos, cache)
                input_pos += 1
            else:
                logits = self.lm_head(self.backbone(feed, kv_cache=cache)[:, -1])
        return tokens

    def _step(self, input_ids: torch.Tensor, input_pos: torch.Tensor, kv_cache) -> torch.Tensor:
        """One decode step on the static cache, uncompiled: next-token logits (b, v) after
        ``input_ids`` (b, n) at positions ``input_pos`` (n,) (what
        :class:`CompiledDecodeStep` compiles)."""
        return self.lm_head(self.backbone.decode_step(input_ids, input_pos, kv_cache)[:, -1])

    def compile(self, **compile_kwargs: Any) -> TextGenerationPipeline:
        """:meth:`Pipeline.compile` (the backbone and the LM head in place), and from now on
        the decode step, where decoding spends its time, as :class:`CompiledDecodeStep`: the
        backbone's ``decode_step`` on a static KV cache and the LM head, one graph per batch
        size (the cache length is marked dynamic, so prompts and ``max_new_tokens`` of any
        length share it), compiled with ``dynamic=False`` and, with inductor, its C++
        wrapper, and on a CPU frozen weights and autotuned matmuls
        (:func:`decode_step_compile_kwargs`; gpt-fast's compiled decode step). Measured on a
        2-core CPU with the 6 x 256 model: 2-2.7x the eager pipeline's tokens/s at batch 1,
        1.3-1.4x at batch 8, after a first call of each batch size that compiles for 15-40 s.
        The prompt's prefill runs through the same step uncompiled (its length varies).
        ``compile_kwargs`` as :meth:`Pipeline.compile` takes them; ``dynamic`` and
        ``options`` apply to the step as well. Backbones without ``decode_step`` (a
        transformers model) decode through their compiled forward.

        Returns:
            The pipeline itself.

        Raises:
            InputError: ``torch.compile`` cannot run here (see
                :func:`~multimodal.pipelines.base.check_compile`).
        """
        super().compile(**compile_kwargs)
        if hasattr(self.backbone, "decode_step"):
            self._compiled_step = CompiledDecodeStep(self.backbone, self.lm_head,
                                                     compile_kwargs, self.device)
        return self
