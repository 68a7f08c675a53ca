"""``multimodal export CHECKPOINT OUT --format hf``: a checkpoint as Hugging Face folders.

What ``OUT`` holds::

    OUT/
      config.json model.safetensors generation_config.json   the backbone + text LM head as a
      tokenizer.json tokenizer_config.json                    transformers causal LM and its
                                                              fast tokenizer
      vae/                   each image VAE tokenizer as a diffusers AutoencoderKL folder
                             (``<name>_vae/`` for tokenizers other than ``image``)
      unet/ scheduler/       an image decoder built on a diffusers UNet2DConditionModel
                             (``latent_unet``, ``diffusers_denoiser``) as a UNet folder that
                             reads the backbone's states (a ``context_proj`` folded in as the
                             UNet's ``encoder_hid_proj``), and its noise schedule as a
                             DDPMScheduler config
                             (``<name>_unet/``, ``<name>_scheduler/`` for other decoders)
      lora/                  with ``lora=True``: the LoRA adapters as a PEFT adapter folder
      README.md              the model card: config, data, measured figures

``AutoModelForCausalLM.from_pretrained(OUT)`` gives the checkpoint's text logits,
``AutoTokenizer.from_pretrained(OUT)`` its token ids, ``AutoencoderKL.from_pretrained(OUT,
subfolder="vae")`` its latents (``(latent_dist.mean - shift_factor) * scaling_factor``), and
``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(OUT), OUT / "lora")`` the
adapted model, ``UNet2DConditionModel.from_pretrained(OUT, subfolder="unet")`` the image
decoder's predictions given the backbone's states of a prompt. What has no Hugging Face form (our
own denoisers, the mel decoder, the vocoders, the captioner) is listed in the report and the model
card, and stays in the multimodal checkpoint. The export checks itself: it loads what it wrote with transformers, diffusers
and peft and compares logits, ids and latents with the checkpoint's (the differences are in the
model card); a difference above the tolerance is an error and nothing is written.

The built-in backbone is LLaMA's block (RMSNorm, rotary positions in the "rotate half" layout
of ``LlamaAttention``, SwiGLU, no biases), so it becomes a ``LlamaForCausalLM``: the fused
``qkv`` and ``w13`` projections are split (no permutation: the rotary layouts are the same),
the text row of the modality-type embedding is added to the input embeddings (text positions
always carry it), and the LM head is written untied (its weight is the token embedding
without that row). An ``hf_causal_lm`` backbone is written as the transformers model it is
(its text row is held at zero). Without ``lora``, LoRA adapters are merged into the weights;
with it, ``OUT`` holds the base weights and ``lora/`` the adapters.

Writes are all-or-nothing: everything goes into a temporary sibling of ``OUT`` that is renamed
into place when complete; an ``OUT`` that is a file, or a folder that is not empty, is refused.

Axes: b batch, n tokens, d width, v vocabulary, r LoRA rank.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from multimodal.checkpoint import LoadedCheckpoint, load_checkpoint
from multimodal.config import dump_yaml
from multimodal.errors import CheckpointError, InputError
from multimodal.io import check_new_folder, default_mode
from multimodal.modalities.text.tokenizer import EOS_TOKEN, PAD_TOKEN

# Checked after writing: the largest |difference| allowed, relative to the largest |value|.
LOGITS_RTOL = 1e-4
LATENTS_RTOL = 1e-4
PROBE_TEXT = "The only way to get rid of a temptation is to yield to it."


@dataclass
class ExportReport:
    """What :func:`export_hf` wrote and measured.

    Attributes:
        out: The folder written.
        parts: ``{part: what it is}`` (``"text"``, ``"vae"``, ``"lora"``, ``"unet"``).
        measured: ``{figure: value}``: the round-trip differences (max |logits difference|,
            max |latents difference|, max |UNet output difference|, whether the token ids
            matched).
        not_exported: The checkpoint's decoders and tokenizers that have no Hugging Face form
            (``"decoders.audio (mel_decoder)"``, ...): they stay in the checkpoint.
    """

    out: Path
    parts: dict[str, str] = field(default_factory=dict)
    measured: dict[str, Any] = field(default_factory=dict)
    not_exported: list[str] = field(default_factory=list)


def export_hf(checkpoint: str | Path, out: str | Path, *, lora: bool = False) -> ExportReport:
    """Write a checkpoint as Hugging Face folders (see the module docstring).

    Args:
        checkpoint: A checkpoint or run directory (its EMA weights where it has them).
        out: The folder to create; it must not exist, or be empty.
        lora: Write the LoRA adapters as a PEFT folder ``out/lora`` beside the base weights
            (default: merge them into the weights).

    Returns:
        :class:`ExportReport`.

    Raises:
        InputError: ``out`` is a file or a folder that is not empty, ``lora`` for a checkpoint
            without LoRA adapters, or a checkpoint with nothing these formats hold.
        CheckpointError: the checkpoint cannot be loaded, its backbone has no transformers
            form, or the written folders do not reproduce it (a bug: nothing is left).
    """
    out = check_new_folder(out)
    loaded = load_checkpoint(checkpoint)
    adapted = _adapted_modules(loaded.model)
    if lora and not adapted:
        raise InputError(f"checkpoint {loaded.path} has no LoRA adapters (its config has no "
                         "train.lora): export it without --lora")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    report = ExportReport(out=out)
    try:
        decoders = loaded.model.decoders
        exported = set()
        if "text" in decoders and "text" in loaded.tokenizers:
            _export_text(loaded, tmp, report, lora=lora, adapted=adapted)
            exported |= {"decoders.text", "tokenizers.text"}
        for name, tok in loaded.tokenizers.items():
            if _is_autoencoder_kl(getattr(tok, "vae", None)):
                _export_vae(tok, tmp / ("vae" if name == "image" else f"{name}_vae"), report,
                            part="vae" if name == "image" else f"{name}_vae")
                exported.add(f"tokenizers.{name}")
        for name, decoder in decoders.items():
            if _is_diffusers_unet(getattr(decoder, "net", None)):  # latent_unet too
                prefix = "" if name == "image" else f"{name}_"
                _export_unet(loaded, name, tmp / f"{prefix}unet", tmp / f"{prefix}scheduler",
                             report, part=f"{prefix}unet")
                exported.add(f"decoders.{name}")
        config = loaded.config
        report.not_exported = [
            f"{section}.{name} ({(config.get(section) or {}).get(name, {}).get('type', '?')})"
            for section, names in (("decoders", decoders), ("tokenizers", loaded.tokenizers))
            for name in names if f"{section}.{name}" not in exported]
        if "decoders.text" not in exported:  # the backbone goes with the text model only
            report.not_exported.insert(0, f"backbone ({config['backbone'].get('type', '?')})")
        if not report.parts:
            raise InputError(f"checkpoint {loaded.path} has neither a text decoder with its "
                             "tokenizer nor an image VAE: nothing to export as Hugging Face "
                             "folders")
        (tmp / "README.md").write_text(model_card(loaded, report), encoding="utf-8")
        for f in [tmp, *tmp.rglob("*")]:  # safetensors writes 0600 files
            os.chmod(f, default_mode(directory=f.is_dir()))
        check_new_folder(out)  # nothing appeared there while this ran
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.out = out
    return report


def _is_autoencoder_kl(module: Any) -> bool:
    return type(module).__name__ == "AutoencoderKL"


def _is_diffusers_unet(module: Any) -> bool:
    return type(module).__name__ == "UNet2DConditionModel"


def _adapted_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """``{full name: peft LoRA layer}`` of the model's adapted linear layers."""
    return {name: module for name, module in model.named_modules()
            if hasattr(module, "base_layer") and hasattr(module, "lora_A")}


def _linear_weight(module: torch.nn.Module, *, merged: bool) -> torch.Tensor:
    """The (out, in) weight of a linear layer; of a LoRA layer, the base weight plus (when
    ``merged``) its update ``alpha / r * B A``."""
    if hasattr(module, "base_layer"):
        weight = module.base_layer.weight.detach()
        if merged:
            weight = weight + module.get_delta_weight("default").detach()
        return weight
    return module.weight.detach()


# -- the text model ------------------------------------------------------------------------------
def _export_text(loaded: LoadedCheckpoint, tmp: Path, report: ExportReport, *, lora: bool,
                 adapted: dict) -> None:
    # deferred: transformers takes seconds to import; only this export needs it
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    backbone, head = loaded.model.backbone, loaded.model.decoders["text"]
    tokenizer = loaded.tokenizers["text"]
    if hasattr(backbone, "blocks") and hasattr(backbone, "rotary"):
        hf_model, adapter = _llama_from_backbone(loaded, backbone, head, tokenizer,
                                                 merged=not lora)
    elif hasattr(backbone, "model") and hasattr(backbone.model, "save_pretrained"):
        hf_model, adapter = _clean_hf_model(backbone, head, merged=not lora)
    else:
        raise CheckpointError(f"checkpoint {loaded.path}: backbone "
                              f"{loaded.config['backbone'].get('type')!r} has no transformers "
                              "form to export")
    hf_model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.eos_id, eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id)
    hf_model.save_pretrained(str(tmp), safe_serialization=True)
    _fast_tokenizer(tokenizer).save_pretrained(str(tmp))
    report.parts["text"] = (f"{type(hf_model).__name__} ({sum(p.numel() for p in hf_model.parameters()):,} "
                            f"parameters) + tokenizer ({tokenizer.vocab_size} ids)")
    unexported = sorted(n for n in adapted if not n.startswith(("backbone.", "decoders.text.")))
    if lora:
        lora_settings = (loaded.config.get("train") or {}).get("lora") or {}
        _write_adapter(tmp / "lora", adapter, rank=int(lora_settings.get("rank", 8)),
                       alpha=float(lora_settings.get("alpha", 16.0)),
                       dropout=float(lora_settings.get("dropout", 0.0)),
                       fan_in_fan_out=any(getattr(m, "fan_in_fan_out", False)
                                          for n, m in adapted.items()
                                          if n.startswith("backbone.")))
        report.parts["lora"] = (f"PEFT LoRA adapter: {len(adapter) // 2} matrices pairs on "
                                f"{len({k.rsplit('.lora_', 1)[0] for k in adapter})} layers")
    if unexported:
        warnings.warn(f"LoRA adapters on {', '.join(unexported[:4])}"
                      + (f" and {len(unexported) - 4} more" if len(unexported) > 4 else "")
                      + " are not part of the Hugging Face export (only the backbone and the "
                      "text head are)", stacklevel=3)
        report.measured["lora layers not exported"] = len(unexported)

    # The check: the written folder, read back by transformers (and peft), gives our logits.
    ids = torch.tensor([[tokenizer.eos_id] + tokenizer.encode(PROBE_TEXT)])[:, :backbone.max_seq_len]
    with torch.no_grad():
        ours = head(backbone(ids)).float()  # (1, n, v)
        theirs_model = AutoModelForCausalLM.from_pretrained(
            str(tmp), local_files_only=True, dtype=torch.float32).eval()
        if lora:
            # deferred: peft imports transformers (seconds), needed only for LoRA exports
            from peft import PeftModel

            theirs_model = PeftModel.from_pretrained(theirs_model, str(tmp / "lora")).eval()
        theirs = theirs_model(input_ids=ids).logits.float()
    diff = float((ours - theirs).abs().max())
    report.measured["max |logits difference|"] = diff
    report.measured["logits probe"] = f"{ids.shape[1]} tokens, |logits| up to " \
                                      f"{float(ours.abs().max()):.3g}"
    if diff > LOGITS_RTOL * max(1.0, float(ours.abs().max())):
        raise CheckpointError(f"the exported model's logits differ from the checkpoint's by "
                              f"{diff:.3g} (tolerance {LOGITS_RTOL:g} relative); nothing was "
                              "written")
    theirs_tok = AutoTokenizer.from_pretrained(str(tmp), local_files_only=True)
    same = theirs_tok.encode(PROBE_TEXT, add_special_tokens=False) == tokenizer.encode(PROBE_TEXT)
    report.measured["tokenizer ids identical"] = same
    if not same:
        raise CheckpointError("the exported tokenizer encodes the probe text differently from "
                              "the checkpoint's; nothing was written")


def _llama_config(loaded: LoadedCheckpoint, backbone, tokenizer):
    # deferred: transformers takes seconds to import; only this export needs it
    from transformers import LlamaConfig

    section = loaded.config["backbone"]
    theta = float(section.get("rope_theta", 10000.0))
    return LlamaConfig(
        vocab_size=backbone.vocab_size, hidden_size=backbone.dim,
        intermediate_size=backbone.hidden_dim, num_hidden_layers=backbone.depth,
        num_attention_heads=backbone.num_heads, num_key_value_heads=backbone.num_kv_heads,
        head_dim=backbone.dim // backbone.num_heads, max_position_embeddings=backbone.max_seq_len,
        rms_norm_eps=float(backbone.norm.eps), hidden_act="silu", attention_bias=False,
        mlp_bias=False, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
        bos_token_id=tokenizer.eos_id, eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id)


def _llama_from_backbone(loaded, backbone, head, tokenizer, *, merged: bool):
    """A ``LlamaForCausalLM`` holding the built-in backbone's weights, and its PEFT adapter
    tensors (``{peft key: tensor}``; empty without LoRA)."""
    # deferred: transformers takes seconds to import; only this export needs it
    from transformers import LlamaForCausalLM

    config = _llama_config(loaded, backbone, tokenizer)
    h, k, e = backbone.num_heads, backbone.num_kv_heads, backbone.dim // backbone.num_heads
    f = backbone.hidden_dim
    # Text positions always add modality row 0 to their token embedding: fold it in.
    embed = backbone.tok_embeddings.weight.detach() \
        + backbone.modality_embeddings.weight.detach()[0]
    state = {"model.embed_tokens.weight": embed,
             "model.norm.weight": backbone.norm.weight.detach(),
             "lm_head.weight": _linear_weight(head.proj, merged=merged)
             if not head.tie_weights else head.weight.detach()}
    adapter: dict[str, torch.Tensor] = {}
    for i, block in enumerate(backbone.blocks):
        pre = f"model.layers.{i}."
        q, kk, v = _linear_weight(block.attn.qkv, merged=merged).split([h * e, k * e, k * e])
        gate, up = _linear_weight(block.mlp.w13, merged=merged).split([f, f])
        state.update({
            pre + "self_attn.q_proj.weight": q, pre + "self_attn.k_proj.weight": kk,
            pre + "self_attn.v_proj.weight": v,
            pre + "self_attn.o_proj.weight": _linear_weight(block.attn.proj, merged=merged),
            pre + "mlp.gate_proj.weight": gate, pre + "mlp.up_proj.weight": up,
            pre + "mlp.down_proj.weight": _linear_weight(block.mlp.w2, merged=merged),
            pre + "input_layernorm.weight": block.attn_norm.weight.detach(),
            pre + "post_attention_layernorm.weight": block.mlp_norm.weight.detach()})
        # One LoRA update B A of a fused layer is, split by rows of B, the updates of its
        # parts with the same A: q/k/v of qkv, gate/up of w13.
        for module, names, sizes in (
                (block.attn.qkv, ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                 (h * e, k * e, k * e)),
                (block.attn.proj, ("self_attn.o_proj",), None),
                (block.mlp.w13, ("mlp.gate_proj", "mlp.up_proj"), (f, f)),
                (block.mlp.w2, ("mlp.down_proj",), None)):
            if hasattr(module, "lora_A"):
                a = module.lora_A["default"].weight.detach()  # (r, in)
                b = module.lora_B["default"].weight.detach()  # (out, r)
                for name, b_part in zip(names, b.split(sizes) if sizes else (b,)):
                    adapter[f"base_model.model.{pre}{name}.lora_A.weight"] = a
                    adapter[f"base_model.model.{pre}{name}.lora_B.weight"] = b_part
    if not head.tie_weights and hasattr(head.proj, "lora_A"):
        adapter["base_model.model.lm_head.lora_A.weight"] = head.proj.lora_A["default"].weight
        adapter["base_model.model.lm_head.lora_B.weight"] = head.proj.lora_B["default"].weight
    model = LlamaForCausalLM(config)
    model.load_state_dict({k: v.float().contiguous() for k, v in state.items()}, strict=True)
    return model.eval(), {k: v.detach().float().clone() for k, v in adapter.items()}


def _plain_state_dict(module: torch.nn.Module, *, merged: bool
                      ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``module``'s state dict without peft's wrapping (its LoRA updates merged into the
    weights when ``merged``), and its adapters as PEFT adapter tensors."""
    state: dict[str, torch.Tensor] = {}
    for key, value in module.state_dict().items():
        if ".lora_" in key or ".base_layer." in key:
            continue
        state[key] = value.detach()
    adapter: dict[str, torch.Tensor] = {}
    for name, layer in _adapted_modules(module).items():
        state[f"{name}.weight"] = _linear_weight(layer, merged=merged)
        if getattr(layer.base_layer, "bias", None) is not None:
            state[f"{name}.bias"] = layer.base_layer.bias.detach()
        adapter[f"base_model.model.{name}.lora_A.weight"] = layer.lora_A["default"].weight.detach()
        adapter[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B["default"].weight.detach()
    return state, adapter


def _clean_hf_model(backbone, head, *, merged: bool):
    """The ``hf_causal_lm`` backbone's transformers model without peft's wrapping (adapters
    merged when ``merged``), and its PEFT adapter tensors."""
    # deferred: transformers takes seconds to import; only this export needs it
    from transformers import AutoModelForCausalLM

    inner = backbone.model
    if float(backbone.modality_embeddings.weight.detach()[0].abs().max()) != 0.0:
        raise CheckpointError("the text row of the backbone's modality embedding is not zero, "
                              "so the transformers model alone does not give its text logits")
    state, adapter = _plain_state_dict(inner, merged=merged)
    model = AutoModelForCausalLM.from_config(copy.deepcopy(inner.config), dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if k == "lm_head.weight"} if inner.config.tie_word_embeddings \
        else set()
    if set(missing) - tied or unexpected:
        raise CheckpointError(f"the backbone's weights do not fit a fresh "
                              f"{type(model).__name__}: missing {sorted(missing)[:4]}, "
                              f"unexpected {sorted(unexpected)[:4]}")
    return model.eval(), {k: v.detach().float().clone() for k, v in adapter.items()}


def _fast_tokenizer(tokenizer):
    """The text tokenizer as a ``PreTrainedTokenizerFast`` (``tokenizer.json``)."""
    # deferred: transformers takes seconds to import; only this export needs it
    from transformers import PreTrainedTokenizerFast

    if hasattr(tokenizer, "hf_tokenizer"):  # hf_tokenizer: the one it was read from
        return tokenizer.hf_tokenizer
    inner = getattr(tokenizer, "_tok", None)
    if inner is None:
        raise CheckpointError(f"the text tokenizer {tokenizer!r} has no tokenizer.json form")
    return PreTrainedTokenizerFast(tokenizer_object=copy.deepcopy(inner), eos_token=EOS_TOKEN,
                                   bos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
                                   clean_up_tokenization_spaces=False)


def _write_adapter(directory: Path, adapter: dict[str, torch.Tensor], *, rank: int,
                   alpha: float, dropout: float, fan_in_fan_out: bool = False) -> None:
    """A PEFT LoRA adapter folder: ``adapter_config.json`` + ``adapter_model.safetensors``
    (``fan_in_fan_out`` for GPT-2's transposed ``Conv1D`` layers)."""
    # deferred: peft imports transformers (seconds), needed only for LoRA exports
    from peft import LoraConfig

    targets = sorted({k[len("base_model.model."):].rsplit(".lora_", 1)[0] for k in adapter})
    directory.mkdir()
    LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
               fan_in_fan_out=fan_in_fan_out, bias="none", task_type="CAUSAL_LM",
               base_model_name_or_path="..").save_pretrained(str(directory))
    save_file(adapter, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})


# -- the image VAE -------------------------------------------------------------------------------
def _export_vae(tok, directory: Path, report: ExportReport, *, part: str) -> None:
    # deferred: diffusers takes ~1.5 s to import; only this export needs it
    from diffusers import AutoencoderKL

    vae = copy.deepcopy(tok.vae).float().cpu()
    vae.register_to_config(scaling_factor=float(tok.scaling_factor),
                           shift_factor=float(tok.shift_factor))
    vae.save_pretrained(str(directory), safe_serialization=True)
    height, width = int(tok.height), int(tok.width)
    images = torch.rand(2, int(tok.in_channels), height, width,
                        generator=torch.Generator().manual_seed(0)) * 2 - 1  # (b, c, h, w)
    ours = tok.encode(images).float().cpu()
    theirs_vae = AutoencoderKL.from_pretrained(str(directory), local_files_only=True,
                                               torch_dtype=torch.float32).eval()
    with torch.no_grad():
        mean = theirs_vae.encode(images).latent_dist.mean
    cfg = theirs_vae.config
    theirs = (mean - cfg.shift_factor) * cfg.scaling_factor
    diff = float((ours - theirs).abs().max())
    report.measured[f"max |latents difference| ({part})"] = diff
    if diff > LATENTS_RTOL * max(1.0, float(ours.abs().max())):
        raise CheckpointError(f"the exported VAE's latents differ from the checkpoint's by "
                              f"{diff:.3g}; nothing was written")
    report.parts[part] = (f"AutoencoderKL ({tok.in_channels} channels, {width}x{height} -> "
                          f"{tuple(tok.latent_shape)} latents, scaling_factor "
                          f"{tok.scaling_factor:.4g}, shift_factor {tok.shift_factor:.4g})")


# -- the image denoiser (a diffusers UNet) -------------------------------------------------------
def _export_unet(loaded: LoadedCheckpoint, name: str, directory: Path, scheduler_dir: Path,
                 report: ExportReport, *, part: str) -> None:
    """A decoder built on a UNet2DConditionModel (``latent_unet``, ``diffusers_denoiser``) as
    a UNet folder that reads the backbone's states (b, n, d) itself, and its noise schedule as a
    DDPMScheduler folder. A ``latent_unet`` with ``pooled_conditioning`` also reads
    ``class_labels``: the state of the prompt's last real token (b, d).

    A ``diffusers_denoiser``'s ``context_proj`` (d -> the UNet's conditioning width), where it has one,
    becomes the UNet's ``encoder_hid_proj`` (``encoder_hid_dim_type: text_proj``); where the
    UNet already had one (w -> its cross-attention width) the two linear maps are composed into
    one. LoRA adapters of the UNet are merged.
    """
    # deferred: diffusers takes ~1.5 s to import; only this export needs it
    from diffusers import DDPMScheduler, UNet2DConditionModel

    decoder = loaded.model.decoders[name]
    net, proj = decoder.net, getattr(decoder, "context_proj", None)
    width = int(getattr(decoder, "backbone_width", None) or net.config.cross_attention_dim)
    pooled = bool(getattr(decoder, "pooled_conditioning", False))
    config = {k: v for k, v in net.config.items() if not k.startswith("_")}
    state, _ = _plain_state_dict(net, merged=True)
    state = {k: v.float().cpu() for k, v in state.items()}
    if proj is not None:
        weight, bias = proj.weight.detach().float().cpu(), proj.bias.detach().float().cpu()
        if "encoder_hid_proj.weight" in state:  # the UNet's own text_proj after ours
            outer_w, outer_b = state["encoder_hid_proj.weight"], state["encoder_hid_proj.bias"]
            weight, bias = outer_w @ weight, outer_w @ bias + outer_b
        state["encoder_hid_proj.weight"], state["encoder_hid_proj.bias"] = weight, bias
        config.update(encoder_hid_dim=width, encoder_hid_dim_type="text_proj")
    unet = UNet2DConditionModel.from_config(config)
    missing, unexpected = unet.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"decoders.{name}'s weights do not fit a fresh "
                              f"UNet2DConditionModel: missing {sorted(missing)[:4]}, "
                              f"unexpected {sorted(unexpected)[:4]}")
    unet.save_pretrained(str(directory), safe_serialization=True)
    DDPMScheduler(**decoder.noise_schedule).save_pretrained(str(scheduler_dir))

    # The check: the folder, read back by diffusers, predicts what the decoder predicts.
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, *decoder.latent_shape, generator=generator)  # (b, l, y, x)
    timesteps = torch.tensor([10, decoder.num_train_timesteps - 1])  # (b,)
    context = torch.randn(2, 5, width, generator=generator)  # (b, n, d)
    theirs_unet = UNet2DConditionModel.from_pretrained(str(directory), local_files_only=True,
                                                       torch_dtype=torch.float32).eval()
    with torch.no_grad():
        ours = decoder(x_t, timesteps, context).float()
        theirs = theirs_unet(x_t, timesteps, encoder_hidden_states=context,
                             class_labels=context[:, -1] if pooled else None).sample
    diff = float((ours - theirs).abs().max())
    report.measured[f"max |UNet output difference| ({part})"] = diff
    if diff > LATENTS_RTOL * max(1.0, float(ours.abs().max())):
        raise CheckpointError(f"the exported UNet's predictions differ from decoders.{name}'s "
                              f"by {diff:.3g}; nothing was written")
    folded = " (its context projection folded into encoder_hid_proj)" if proj is not None else ""
    report.parts[part] = (f"UNet2DConditionModel ({sum(p.numel() for p in unet.parameters()):,} "
                          f"parameters), reads the backbone's states of width "
                          f"{width}{folded}"
                          + ("; class_labels: the state of the prompt's last real token"
                             if pooled else "")
                          + f"; predicts {decoder.prediction_type} "
                          f"of {tuple(decoder.latent_shape)} latents; its noise schedule in "
                          f"`{scheduler_dir.name}/`")


# -- the model card ------------------------------------------------------------------------------
def _recorded_figures(loaded: LoadedCheckpoint) -> dict[str, str]:
    """The last value of each metric the run logged up to this checkpoint's step
    (``log.csv`` of its run directory), and the tokenizers' fitting figures."""
    figures: dict[str, str] = {}
    step = loaded.meta.get("step", 0)
    log = loaded.path.parent.parent / "log.csv"
    if log.is_file():
        try:
            rows = list(csv.DictReader(io.StringIO(log.read_text(encoding="utf-8"))))
        except (OSError, csv.Error):
            rows = []
        for row in rows:
            try:
                if int(row.get("step") or -1) > step:
                    continue
            except ValueError:
                continue
            for key, value in row.items():
                if key and key not in ("step", "time", "elapsed") and value not in ("", None):
                    figures[key] = value
    for name in sorted(loaded.tokenizers):
        meta = loaded.path / "tokenizers" / name / "vae.json"
        if meta.is_file():
            try:
                data = json.loads(meta.read_text())
            except (OSError, ValueError):
                continue
            for key, value in data.items():
                if key.startswith("final_"):
                    figures[f"tokenizers.{name} {key}"] = f"{value:.4g}"
    return figures


def model_card(loaded: LoadedCheckpoint, report: ExportReport) -> str:
    """The README.md of an export: what it holds and how to load it, the measured round-trip
    differences, the run's recorded figures, the data and the full config."""
    config = loaded.config
    lines = ["---", "library_name: transformers" if "text" in report.parts else
             "library_name: diffusers", "tags: [multimodal]", "---", "",
             f"# {loaded.path.parent.parent.name if loaded.path.parent.name == 'checkpoints' else loaded.path.name}",
             "", f"Exported from the `multimodal` checkpoint `{loaded.path}` (id "
             f"`{loaded.checkpoint_id}`, step {loaded.meta.get('step', 0)}), task "
             f"`{config.get('task', '?')}`.", "", "## Contents", ""]
    where = {"text": "`./`", "lora": "`lora/`"}
    for part, what in report.parts.items():
        lines.append(f"- {where.get(part, f'`{part}/`')}: {what}")
    lines += ["", "## Use", "", "```python"]
    if "text" in report.parts:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer",
                  "model = AutoModelForCausalLM.from_pretrained(OUT)",
                  "tokenizer = AutoTokenizer.from_pretrained(OUT)"]
    if "lora" in report.parts:
        lines += ["from peft import PeftModel",
                  "model = PeftModel.from_pretrained(model, f\"{OUT}/lora\")"]
    for part in report.parts:
        if part.endswith("vae"):
            lines += ["from diffusers import AutoencoderKL",
                      f"vae = AutoencoderKL.from_pretrained(OUT, subfolder=\"{part}\")",
                      "latents = (vae.encode(images).latent_dist.mean - "
                      "vae.config.shift_factor) * vae.config.scaling_factor"]
        if part.endswith("unet"):
            scheduler = part[:-len("unet")] + "scheduler"
            lines += ["from diffusers import DDPMScheduler, UNet2DConditionModel",
                      f"unet = UNet2DConditionModel.from_pretrained(OUT, subfolder=\"{part}\")",
                      f"scheduler = DDPMScheduler.from_pretrained(OUT, subfolder=\"{scheduler}\")",
                      "# states: the backbone's final hidden states of the prompt (b, n, d)",
                      "prediction = unet(latents, t, encoder_hidden_states=states).sample"]
    lines += ["```", "", "Text prompts start with the end-of-text token (it separates the "
              "training documents), as `multimodal generate text-generation` does.", "",
              "## Measured", "", "Checked when exported (the folders read back by "
              "transformers/diffusers/peft against the checkpoint):", ""]
    for key, value in report.measured.items():
        lines.append(f"- {key}: {value:.3g}" if isinstance(value, float)
                     else f"- {key}: {value}")
    figures = _recorded_figures(loaded)
    if figures:
        lines += ["", "Recorded by the training run up to this step:", "",
                  "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in figures.items()]
    if report.not_exported:
        lines += ["", "## Not exported", "", "These parts have no Hugging Face form; they stay in "
                  "the `multimodal` checkpoint (`multimodal generate --checkpoint ...`):", ""]
        lines += [f"- `{part}`" for part in report.not_exported]
    lines += ["", "## Data", "", "```yaml", dump_yaml({"data": config.get("data") or {}}).strip(),
              "```", "", "## Config", "", "```yaml", dump_yaml(config).strip(), "```", ""]
    return "\n".join(lines)
