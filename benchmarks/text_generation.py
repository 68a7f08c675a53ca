"""Benchmark the text model against Hugging Face reference implementations.

Three parts, in one run:

(a) Decode speed. The project's KV-cached greedy decoding (``TextGenerationPipeline.__call__``
    with ``do_sample=False``) against ``transformers.LlamaForCausalLM.generate`` (greedy, KV
    cache, SDPA attention, fp32) at the same width, depth, heads and vocabulary, with *our*
    weights copied into the Hugging Face model. Before timing, the two models must give the
    same logits on a random sequence, and greedy decoding is checked to give identical tokens
    (``tokens_match``). Tokens/s count generated tokens (prefill included in the time) at each
    batch size; ours and HF runs alternate so that background load hits both alike. With
    ``--with-compiled``, a copy of our pipeline after ``pipe.compile()`` (its compiled decode
    step) runs in the same rotation, its first call per batch size (the compilation) untimed.

(b) Training speed. One optimizer step (backbone + tied LM head + cross-entropy + backward +
    gradient clipping + AdamW, as ``Trainer.train_step`` does through ``TextModality.loss``)
    against the same step of ``LlamaForCausalLM`` (``labels=`` loss) with the same weights,
    batch and optimizer settings, in fp32 and under bf16 autocast. Model FLOPs utilisation is
    ``(6 N + 12 L H Q T) * tokens/s / peak``, where N counts every backbone parameter except
    the modality-type embedding (a lookup), the tied token embedding counted once (it is the
    LM head matmul); L layers, H heads, Q head width, T sequence length. The peak of each
    precision is a large square matmul timed in the same run with the same thread count.

(c) Quality. Validation bits per byte of our model trained by the project's ``Trainer`` on the
    config (default ``configs/text_fortunes.yaml``), against a Hugging Face ``GPT2LMHeadModel``
    of the same width, depth, heads, context and vocabulary, trained on the same batches
    (``TextModality.sample`` with ``step_generator(seed, step)``), same tokenizer, learning-rate
    schedule (``cosine_with_warmup``), AdamW settings, clipping and precision, and evaluated on the same
    validation windows by the same ``TextModality.evaluate``.

Human-readable lines are printed as the parts run; the last line is one JSON object with
every figure.

Run (from the repository root)::

    .venv/bin/python benchmarks/text_generation.py                    # everything
    .venv/bin/python benchmarks/text_generation.py --skip-train       # (a) and (b) only
    .venv/bin/python benchmarks/text_generation.py --train-steps 20   # quick smoke run
    .venv/bin/python benchmarks/text_generation.py --threads 1 --repeats 5
    .venv/bin/python benchmarks/text_generation.py --skip-train --skip-train-speed \
        --profile-decode                                              # where decoding spends time
    .venv/bin/python benchmarks/text_generation.py --skip-train --with-compiled \
        --checkpoint runs/text_fortunes                               # trained weights; + compile

``--checkpoint`` decodes with trained weights (default: random weights of the config's size,
with the modality embedding and norm gains redrawn so the weight-mapping check covers them).
The Hugging Face Llama is built without special token ids, so ``generate`` neither stops at
nor suppresses any token. Prompts pass through a stand-in tokenizer that reads ids written as
text, so both sides decode from exactly the same ids.

Timings on a shared or loaded machine are noisy: prefer ``--threads`` below the number of idle
cores, and read the best-of-repeats figures (the medians are printed too).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common import log, timed  # noqa: E402

from multimodal.backbone.transformer import MODALITY_IDS, TransformerBackbone  # noqa: E402
from multimodal.config import load_config  # noqa: E402
from multimodal.modalities.text.head import LMHead  # noqa: E402
from multimodal.modalities.text.modality import TextModality  # noqa: E402
from multimodal.pipelines.text_generation import TextGenerationPipeline  # noqa: E402
from multimodal.nn.schedules import cosine_with_warmup  # noqa: E402
from multimodal.train_config import TrainConfig  # noqa: E402
from multimodal.training.trainer import (  # noqa: E402
    autocast_for, param_groups, step_generator)

TEXT = MODALITY_IDS["text"]


# -- helpers ----------------------------------------------------------------------------------


def autocast(precision: str):
    """A fresh autocast context for ``precision`` ("fp32": none, "bf16": CPU bf16 autocast)."""
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def summarise(tokens: int, seconds: list[float]) -> dict[str, float]:
    """Best and median tokens/s of repeated timings of ``tokens`` tokens."""
    return {"best": tokens / min(seconds), "median": tokens / statistics.median(seconds)}


# -- models -----------------------------------------------------------------------------------
def model_size(config: dict) -> dict:
    """Backbone keyword arguments of ``config`` with the text vocabulary filled in."""
    size = {k: v for k, v in config["backbone"].items() if k != "type"}
    size["vocab_size"] = config["tokenizers"]["text"].get("vocab_size", 4096)
    return size


def random_model(size: dict, seed: int) -> tuple[TransformerBackbone, LMHead]:
    """Our backbone and tied LM head, randomly initialised.

    The modality-type embedding (zeros at init) and the RMSNorm gains (ones) are redrawn at
    random, so that the check against the Hugging Face copy covers their mapping too.
    """
    torch.manual_seed(seed)
    backbone = TransformerBackbone(**size)
    with torch.no_grad():
        backbone.modality_embeddings.weight.normal_(std=0.02)
        for module in backbone.modules():
            if isinstance(module, nn.RMSNorm):
                module.weight.uniform_(0.8, 1.2)
    return backbone, LMHead(backbone=backbone)


def checkpoint_model(path: str) -> tuple[TransformerBackbone, nn.Module]:
    from multimodal.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    return ckpt.model.backbone, ckpt.model.decoders["text"]


def llama_from_ours(backbone: TransformerBackbone, head: nn.Module):
    """A ``LlamaForCausalLM`` (fp32, SDPA) computing the same function as ``backbone`` + ``head``.

    Our text positions get ``modality_embeddings[text]`` added to the token embedding, so HF's
    input embedding is their sum; the LM head (tied to the *token* embedding in our model) is
    copied to an untied ``lm_head``. q/k/v and gate/up are split out of the fused matrices.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=backbone.vocab_size, hidden_size=backbone.dim,
        intermediate_size=backbone.hidden_dim, num_hidden_layers=backbone.depth,
        num_attention_heads=backbone.num_heads, num_key_value_heads=backbone.num_kv_heads,
        max_position_embeddings=backbone.max_seq_len, rms_norm_eps=backbone.norm.eps,
        rope_theta=10000.0, attention_bias=False, mlp_bias=False, hidden_act="silu",
        tie_word_embeddings=False, attention_dropout=0.0, attn_implementation="sdpa",
        # No special ids: otherwise generate() inherits eos 2 and, with min_new_tokens, adds
        # logits processors that forbid token 2 (changing greedy tokens and adding work).
        bos_token_id=None, eos_token_id=None, pad_token_id=None)
    model = LlamaForCausalLM(config).float()
    if model.config._attn_implementation != "sdpa":
        raise RuntimeError(f"HF model uses {model.config._attn_implementation!r}, not sdpa")
    if model.generation_config.eos_token_id is not None:
        raise RuntimeError("the HF model has an end-of-sequence id; generate() would treat it "
                           "specially")

    q_rows = backbone.num_heads * (backbone.dim // backbone.num_heads)
    kv_rows = backbone.num_kv_heads * (backbone.dim // backbone.num_heads)
    state = {
        "model.embed_tokens.weight":
            backbone.tok_embeddings.weight + backbone.modality_embeddings.weight[TEXT],
        "lm_head.weight": head.weight,
        "model.norm.weight": backbone.norm.weight,
    }
    for i, block in enumerate(backbone.blocks):
        q, k, v = block.attn.qkv.weight.split([q_rows, kv_rows, kv_rows])
        gate, up = block.mlp.w13.weight.chunk(2)
        prefix = f"model.layers.{i}."
        state.update({
            prefix + "input_layernorm.weight": block.attn_norm.weight,
            prefix + "self_attn.q_proj.weight": q,
            prefix + "self_attn.k_proj.weight": k,
            prefix + "self_attn.v_proj.weight": v,
            prefix + "self_attn.o_proj.weight": block.attn.proj.weight,
            prefix + "post_attention_layernorm.weight": block.mlp_norm.weight,
            prefix + "mlp.gate_proj.weight": gate,
            prefix + "mlp.up_proj.weight": up,
            prefix + "mlp.down_proj.weight": block.mlp.w2.weight,
        })
    with torch.no_grad():
        model.load_state_dict({k: v.detach().clone().float() for k, v in state.items()},
                              strict=True)
    return model


def describe(backbone: TransformerBackbone) -> dict:
    return {"dim": backbone.dim, "depth": backbone.depth, "num_heads": backbone.num_heads,
            "num_kv_heads": backbone.num_kv_heads, "hidden_dim": backbone.hidden_dim,
            "vocab_size": backbone.vocab_size, "max_seq_len": backbone.max_seq_len}


# -- (a) decode speed -------------------------------------------------------------------------
class IdTokenizer:
    """Stands in for the BPE tokenizer so that the pipeline sees exact ids: text is ids
    written in decimal, separated by spaces. Only the prompt and the final outputs pass
    through it, so it does not touch the decode loop being timed."""

    def __init__(self, eos_id: int):
        self.eos_id = eos_id

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in text.split()]

    def decode(self, ids) -> str:
        return " ".join(str(int(i)) for i in ids)


@torch.inference_mode()
def max_logit_diff(backbone, head, hf, *, length: int, seed: int) -> float:
    """Largest |ours - HF| logit on a random (2, length) sequence."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, backbone.vocab_size, (2, length), generator=g)
    return (head(backbone(ids)) - hf(input_ids=ids).logits).abs().max().item()


def bench_decode(backbone, head, hf, args) -> dict:
    """Tokens/s of our pipeline and of HF ``generate`` at each batch size, and whether the
    greedy tokens agree; with ``--with-compiled``, of our pipeline after ``pipe.compile()``
    too (on a copy of the model, so the eager pipeline stays eager)."""
    from transformers import GenerationConfig

    eos = 0  # the BPE tokenizer's <|endoftext|>; the pipeline starts every prompt with it
    pipe = TextGenerationPipeline(backbone=backbone, lm_head=head, tokenizer=IdTokenizer(eos))
    compiled = None
    if args.with_compiled:
        backbone_copy, head_copy = copy.deepcopy((backbone, head))  # the head's tie kept
        compiled = TextGenerationPipeline(backbone=backbone_copy, lm_head=head_copy,
                                          tokenizer=IdTokenizer(eos)).compile()
    g = torch.Generator().manual_seed(args.seed)
    body = torch.randint(2, backbone.vocab_size, (args.prompt_len - 1,), generator=g).tolist()
    prompt = IdTokenizer(eos).decode(body)  # the pipeline prepends eos: prompt_len ids in all
    new = args.new_tokens
    gen_config = GenerationConfig(max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                  num_beams=1, use_cache=True, eos_token_id=None,
                                  pad_token_id=eos)

    results, all_match = {}, True
    for batch in args.batch_sizes:
        input_ids = torch.tensor([[eos] + body] * batch)

        def ours():
            return pipe(prompt, max_new_tokens=new, do_sample=False, num_samples=batch,
                        stop_at_eos=False, seed=0).token_ids

        def theirs():
            with torch.inference_mode():
                out = hf.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                  generation_config=gen_config)
            return out[:, input_ids.shape[1]:].tolist()

        def ours_compiled():
            return compiled(prompt, max_new_tokens=new, do_sample=False, num_samples=batch,
                            stop_at_eos=False, seed=0).token_ids

        runs = {"ours": ours, "hf": theirs}
        if compiled is not None:
            runs["ours_compiled"] = ours_compiled
            start = time.perf_counter()
            compiled_ids = ours_compiled()  # compiles the decode step for this batch size
            compile_s = time.perf_counter() - start
            log(f"  batch {batch:2d}: first compiled call (compiling) {compile_s:.1f} s; "
                f"tokens as eager: {compiled_ids == ours()}")
        ours_ids, hf_ids = ours(), theirs()  # first calls double as warm-up
        for _ in range(args.warmup - 1):
            for run in runs.values():
                run()
        if any(len(row) != new for row in ours_ids + hf_ids):
            raise RuntimeError("a decoder stopped before max_new_tokens")
        match = ours_ids == hf_ids
        all_match &= match
        first_diff = None
        if not match:
            first_diff = min(next((j for j, (a, b) in enumerate(zip(ra, rb)) if a != b), new)
                             for ra, rb in zip(ours_ids, hf_ids))

        seconds = {name: [] for name in runs}
        for _ in range(args.repeats):  # alternate, so that background load hits all alike
            for name, run in runs.items():
                seconds[name].append(timed(run))
        tokens = batch * new
        ours_tps, hf_tps = summarise(tokens, seconds["ours"]), summarise(tokens, seconds["hf"])
        ratio = ours_tps["best"] / hf_tps["best"]
        results[f"batch_{batch}"] = {
            "ours_tok_s": round(ours_tps["best"], 1),
            "ours_tok_s_median": round(ours_tps["median"], 1),
            "hf_tok_s": round(hf_tps["best"], 1),
            "hf_tok_s_median": round(hf_tps["median"], 1),
            "ratio": round(ratio, 3),
            "ratio_median": round(ours_tps["median"] / hf_tps["median"], 3),
            "tokens_match": match,
            "first_mismatch": first_diff,
        }
        log(f"  batch {batch:2d}: ours {ours_tps['best']:8.1f} tok/s "
            f"(median {ours_tps['median']:.1f}) | HF generate {hf_tps['best']:8.1f} tok/s "
            f"(median {hf_tps['median']:.1f}) | ours/HF {ratio:.2f}x | tokens match: {match}")
        if compiled is not None:
            comp = summarise(tokens, seconds["ours_compiled"])
            matches = compiled_ids == hf_ids
            results[f"batch_{batch}"].update({
                "ours_compiled_tok_s": round(comp["best"], 1),
                "ours_compiled_tok_s_median": round(comp["median"], 1),
                "compiled_ratio": round(comp["best"] / hf_tps["best"], 3),
                "compiled_ratio_median": round(comp["median"] / hf_tps["median"], 3),
                "compiled_tokens_match": matches, "compile_s": round(compile_s, 1)})
            all_match &= matches
            log(f"  batch {batch:2d}: ours + pipe.compile() {comp['best']:8.1f} tok/s (median "
                f"{comp['median']:.1f}) | ours compiled/HF {comp['best'] / hf_tps['best']:.2f}x "
                f"| tokens match: {matches}")
    results["tokens_match"] = all_match
    if args.profile_decode:
        profile_decode(pipe, prompt, new)
    return results


def profile_decode(pipe, prompt: str, new_tokens: int) -> None:
    """Print where one batch-1 pipeline call spends its time, per operator and per
    Python function."""
    import cProfile
    import pstats

    from torch.profiler import profile

    def call():
        pipe(prompt, max_new_tokens=new_tokens, do_sample=False, stop_at_eos=False, seed=0)

    with profile() as prof:
        call()
    log(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    profiler = cProfile.Profile()
    profiler.runcall(call)
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(15)


# -- (b) training speed -----------------------------------------------------------------------
def matmul_peak(dtype: torch.dtype, size: int, repeats: int) -> float:
    """Best FLOP/s of a (size x size) @ (size x size) matmul in ``dtype``."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(2):
        a @ b
    best = min(timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best


def flops_per_token(backbone: TransformerBackbone, seq_len: int) -> tuple[int, int]:
    """``(N, 6 N + 12 L H Q T)``: N is every backbone parameter but the modality-type
    embedding, with the tied token embedding counted once (as the LM head matmul)."""
    n = sum(p.numel() for p in backbone.parameters()) - backbone.modality_embeddings.weight.numel()
    head_dim = backbone.dim // backbone.num_heads
    return n, 6 * n + 12 * backbone.depth * backbone.num_heads * head_dim * seq_len


def bench_train(config: dict, args) -> dict:
    """Tokens/s and MFU of our training step and of the HF Llama step, fp32 and bf16."""
    cfg = TrainConfig.from_config(config)
    batch_size, seq_len = args.train_batch or cfg.batch_size, args.seq_len or cfg.seq_len
    size = model_size(config)
    backbone, head = random_model(size, args.seed)
    hf = llama_from_ours(backbone, head)
    backbone.train(), hf.train()
    modality = TextModality()

    def adamw(model):  # the Trainer's optimizer
        return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                 betas=cfg.betas, fused=False)

    ours_opt, hf_opt = adamw(backbone), adamw(hf)
    g = torch.Generator().manual_seed(args.seed)
    batch = {"input_ids": torch.randint(0, backbone.vocab_size, (batch_size, seq_len + 1),
                                        generator=g)}

    def step(model, optimizer, loss_fn, precision):
        def run():
            with autocast(precision):
                loss = loss_fn()
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return run

    def ours_loss():  # exactly the Trainer's objective
        return modality.loss(backbone, head, batch)[0]

    inputs = batch["input_ids"][:, :-1]  # HF shifts labels itself: same seq_len positions

    def hf_loss():
        return hf(input_ids=inputs, labels=inputs).loss

    n_params, fpt = flops_per_token(backbone, seq_len)
    log(f"  N = {n_params:,} parameters (tied embedding once, modality embedding excluded); "
        f"{fpt / 1e6:.2f} MFLOP per token")

    tokens = batch_size * seq_len
    results = {"batch_size": batch_size, "seq_len": seq_len, "params": n_params,
               "flops_per_token": fpt, "peak_gflops": {}}
    compiled = torch.compile(backbone) if args.with_compiled else None
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        # The peak is timed just before and just after this precision's steps, and the
        # higher figure kept, so that a change in background load does not inflate the MFU.
        peak = matmul_peak(dtype, args.peak_size, args.repeats)
        runs = {"ours": step(backbone, ours_opt, ours_loss, precision),
                "hf": step(hf, hf_opt, hf_loss, precision)}
        if compiled is not None:
            runs["ours_compiled"] = step(
                backbone, ours_opt, lambda: modality.loss(compiled, head, batch)[0], precision)
        for run in runs.values():
            for _ in range(args.warmup + 1):
                run()
        seconds = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                seconds[name].append(timed(run))
        row = {}
        for name in runs:
            tps = summarise(tokens, seconds[name])
            row[f"{name}_tok_s"] = round(tps["best"], 1)
            row[f"{name}_tok_s_median"] = round(tps["median"], 1)
        peak = max(peak, matmul_peak(dtype, args.peak_size, args.repeats))
        results["peak_gflops"][precision] = round(peak / 1e9, 2)
        for name in runs:
            row[f"{name}_mfu"] = round(fpt * row[f"{name}_tok_s"] / peak, 4)
        row["ratio"] = round(row["ours_tok_s"] / row["hf_tok_s"], 3)
        row["ratio_median"] = round(row["ours_tok_s_median"] / row["hf_tok_s_median"], 3)
        results[precision] = row
        extra = (f" | ours+torch.compile {row['ours_compiled_tok_s']:.0f} tok/s "
                 f"(MFU {row['ours_compiled_mfu']:.1%})" if compiled is not None else "")
        log(f"  {precision}: matmul peak ({args.peak_size}^3) {peak / 1e9:.1f} GFLOP/s")
        log(f"  {precision}: ours {row['ours_tok_s']:7.0f} tok/s (median "
            f"{row['ours_tok_s_median']:.0f}, MFU {row['ours_mfu']:.1%}) | HF Llama "
            f"{row['hf_tok_s']:7.0f} tok/s (median {row['hf_tok_s_median']:.0f}, MFU "
            f"{row['hf_mfu']:.1%}) | ours/HF {row['ratio']:.2f}x{extra}")
    return results


# -- (c) quality ------------------------------------------------------------------------------
class GPT2Body(nn.Module):
    """A GPT-2 trunk behind our backbone's call signature (ids -> final hidden states), so that
    ``TextModality.loss`` and ``TextModality.evaluate`` run on it unchanged."""

    def __init__(self, gpt2):
        super().__init__()
        self.transformer = gpt2.transformer

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.transformer(input_ids=input_ids).last_hidden_state


def train_gpt2(trainer, steps: int) -> dict:
    """Train a same-size GPT-2 on the batches ``trainer`` drew, the way ``train_step`` does;
    return its validation metrics and training tokens/s."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg, seed, device = trainer.cfg, trainer.seed, trainer.device
    backbone = trainer.model.backbone
    modality = trainer.modalities["text"]
    stream_index = list(trainer.modalities).index("text")
    dropout = trainer.config["backbone"].get("dropout", 0.0)
    torch.manual_seed(seed)
    gpt2 = GPT2LMHeadModel(GPT2Config(
        vocab_size=backbone.vocab_size, n_positions=backbone.max_seq_len, n_embd=backbone.dim,
        n_layer=backbone.depth, n_head=backbone.num_heads, resid_pdrop=dropout,
        embd_pdrop=dropout, attn_pdrop=dropout, tie_word_embeddings=True,
        attn_implementation="sdpa")).to(device)
    body, head = GPT2Body(gpt2), gpt2.lm_head
    optimizer = torch.optim.AdamW(param_groups(gpt2, cfg.weight_decay), lr=cfg.lr,
                                  betas=cfg.betas, fused=False)
    amp = autocast_for(device, cfg.precision)

    tokens, start = 0.0, time.perf_counter()
    for step in range(steps):
        lr = cfg.lr * cosine_with_warmup(step, warmup_steps=cfg.warmup_steps,
                                         total_steps=cfg.max_steps, min_lr_ratio=cfg.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        gpt2.train()
        torch.manual_seed(seed * 7919 + step)
        for micro in range(cfg.grad_accum_steps):
            batch = modality.sample(trainer.train_data["text"], batch_size=cfg.batch_size,
                                    generator=step_generator(seed, step, micro, stream_index))
            batch = {k: v.to(device) for k, v in batch.items()}
            with amp():
                loss, info = modality.loss(body, head, batch)
            (loss / cfg.grad_accum_steps).backward()
            tokens += info["tokens"]
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(gpt2.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
            log(f"    gpt2 step {step + 1}/{steps}: loss {loss.item():.3f}")
    seconds = time.perf_counter() - start

    gpt2.eval()
    metrics = modality.evaluate(body, head, trainer.val_data["text"],
                                batch_size=cfg.batch_size, max_batches=cfg.eval_batches,
                                autocast=amp)
    params = sum(p.numel() for p in gpt2.parameters())
    return {**metrics, "tokens_per_s": tokens / seconds, "params": params}


def bench_quality(args) -> dict:
    """Train ours (project Trainer) and GPT-2 on the same data; compare validation bpb."""
    from multimodal.training.trainer import Trainer

    base = load_config(args.config)
    steps = args.train_steps or TrainConfig.from_config(base).max_steps
    overrides = [f"train.max_steps={steps}", "train.eval_every=0", "train.checkpoint_every=0",
                 f"train.num_threads={args.threads}"]
    config = load_config(args.config, overrides)
    with tempfile.TemporaryDirectory(prefix="bench_text_") as out_dir:
        trainer = Trainer(config, out_dir=out_dir, progress=False)
        if "text" not in trainer.val_data:
            raise RuntimeError("the config's text data has no validation split")
        log(f"  training ours for {steps} steps ({trainer.cfg.precision}, batch "
            f"{trainer.cfg.batch_size} x {trainer.cfg.seq_len})...")
        ours = trainer.fit()
        log(f"    ours: val loss {ours['val_text_loss']:.4f} nats/token, "
            f"bpb {ours['val_text_bpb']:.4f}, {ours['tokens_per_s']:.0f} train tok/s")
        log(f"  training GPT-2 for {steps} steps on the same batches...")
        gpt2 = train_gpt2(trainer, steps)
        log(f"    gpt2: val loss {gpt2['loss']:.4f} nats/token, bpb {gpt2['bpb']:.4f}, "
            f"{gpt2['tokens_per_s']:.0f} train tok/s")
        ours_params = sum(p.numel() for p in trainer.model.parameters())
    return {
        "config": str(args.config), "steps": steps, "precision": trainer.cfg.precision,
        "ours_val_loss": round(ours["val_text_loss"], 5),
        "ours_bpb": round(ours["val_text_bpb"], 5),
        "gpt2_val_loss": round(gpt2["loss"], 5), "gpt2_bpb": round(gpt2["bpb"], 5),
        "bpb_ratio": round(ours["val_text_bpb"] / gpt2["bpb"], 4),
        "ours_params": ours_params, "gpt2_params": gpt2["params"],
        "ours_train_tok_s": round(ours["tokens_per_s"], 1),
        "gpt2_train_tok_s": round(gpt2["tokens_per_s"], 1),
    }


# -- main -------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "text_fortunes.yaml"),
                   help="model/training config (default: configs/text_fortunes.yaml)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="torch CPU threads for every part (default: all available cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each measurement")
    g = p.add_argument_group("(a) decoding")
    g.add_argument("--checkpoint", help="decode with trained weights from this checkpoint or "
                   "run directory (default: random weights of the config's size)")
    g.add_argument("--prompt-len", type=int, default=16, help="prompt tokens (eos included)")
    g.add_argument("--new-tokens", type=int, default=128, help="tokens generated per sample")
    g.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    g.add_argument("--atol", type=float, default=1e-4,
                   help="largest logit difference accepted between ours and HF")
    g.add_argument("--profile-decode", action="store_true",
                   help="also print operator and Python profiles of one batch-1 decode")
    g = p.add_argument_group("(b) training step")
    g.add_argument("--train-batch", type=int, help="default: the config's train.batch_size")
    g.add_argument("--seq-len", type=int, help="default: the config's train.seq_len")
    g.add_argument("--peak-size", type=int, default=2048, help="side of the peak matmul")
    g.add_argument("--with-compiled", action="store_true",
                   help="also time (a) decoding after pipe.compile() and (b) our training "
                        "step with the backbone under torch.compile (for reference; the "
                        "headline figures are eager, what runs by default)")
    g = p.add_argument_group("(c) quality")
    g.add_argument("--train-steps", type=int,
                   help="optimizer steps for both models (default: the config's max_steps)")
    g.add_argument("--skip-train", action="store_true", help="run only parts (a) and (b)")
    g.add_argument("--skip-decode", action="store_true", help="skip part (a)")
    g.add_argument("--skip-train-speed", action="store_true", help="skip part (b)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import transformers

    args = parse_args(argv)
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    report = {"threads": torch.get_num_threads(), "torch": torch.__version__,
              "transformers": transformers.__version__, "cpu_count": os.cpu_count()}
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{torch.get_num_threads()} thread(s) of {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.2f}")
    report["load_average_start"] = round(os.getloadavg()[0], 2)

    if not args.skip_decode:
        if args.checkpoint:
            backbone, head = checkpoint_model(args.checkpoint)
            source = f"checkpoint {args.checkpoint}"
        else:
            backbone, head = random_model(model_size(config), args.seed)
            source = "random weights"
        backbone.eval()
        hf = llama_from_ours(backbone, head).eval()
        log(f"(a) decoding: {describe(backbone)}, {source}, fp32, prompt {args.prompt_len} + "
            f"{args.new_tokens} new tokens, greedy")
        diff = max_logit_diff(backbone, head, hf, length=min(64, backbone.max_seq_len),
                              seed=args.seed)
        log(f"  max |logit difference| ours vs HF Llama: {diff:.3g}")
        if not diff <= args.atol:
            raise SystemExit(f"the HF copy disagrees with our model (max logit diff {diff:.3g} "
                             f"> {args.atol}); the weight mapping is wrong")
        report["decode"] = {"model": describe(backbone), "weights": source,
                            "max_abs_logit_diff": diff, "prompt_tokens": args.prompt_len,
                            "new_tokens": args.new_tokens,
                            **bench_decode(backbone, head, hf, args)}
        del backbone, head, hf

    if not args.skip_train_speed:
        log("(b) training step (forward + loss + backward + clip + AdamW)")
        report["train_speed"] = bench_train(config, args)

    if not args.skip_train:
        log("(c) validation bits per byte, ours vs GPT-2 of the same size")
        report["quality"] = bench_quality(args)
        torch.set_num_threads(args.threads)

    report["load_average_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
