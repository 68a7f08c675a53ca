"""Fine-tuning helpers for the builder and the trainer: frozen modules and low-rank adapters (LoRA, Hu et al. 2021,
https://arxiv.org/abs/2106.09685, through Hugging Face ``peft``).

``train.freeze`` lists module prefixes whose weights stay as ``init_from`` gave them (e.g.
``[backbone]`` to train only a decoder). ``train.lora`` (checked as
:class:`multimodal.train_config.LoRASettings`) wraps every ``nn.Linear`` whose full
name matches ``modules`` (a regular expression) in a LoRA layer: the base weight is frozen and
two low-rank matrices ``B A`` (``B`` starting at zero, so training starts from the given model)
learn the update ``W + (alpha / rank) B A``. Everything else keeps training unless frozen.

A LoRA model's state dict holds the adapters beside the frozen base weights
(``...qkv.base_layer.weight``, ``...qkv.lora_A.default.weight``), and its config keeps
``train.lora``, so :func:`multimodal.builders.build_model` re-applies the adapters when a
checkpoint is loaded and pipelines run the adapted model as it was trained.
"""

from __future__ import annotations

import re

import torch

from multimodal.errors import ConfigError

# The default of a backbone that names none (its ``lora_modules``): every linear layer in it.
DEFAULT_LORA_MODULES = r"backbone\..+"


def is_linear(module: torch.nn.Module) -> bool:
    """A layer LoRA can adapt: an ``nn.Linear``, or transformers' ``Conv1D`` (GPT-2's
    linear layer, its weight stored (in, out): peft's ``fan_in_fan_out``)."""
    return isinstance(module, torch.nn.Linear) or (
        type(module).__name__ == "Conv1D" and hasattr(module, "nf"))


def default_lora_modules(model: torch.nn.Module) -> str:
    """``train.lora.modules`` when a config leaves it out: the backbone's ``lora_modules``
    (a pattern inside the backbone: every linear layer of its blocks or decoder layers),
    under ``backbone.``."""
    inside = getattr(getattr(model, "backbone", None), "lora_modules", None)
    return rf"backbone\.{inside}" if inside else DEFAULT_LORA_MODULES


def apply_lora(model: torch.nn.Module, *, rank: int = 8, alpha: float = 16.0,
               dropout: float = 0.0, modules: str | None = None) -> list[str]:
    """Wrap the matching linear layers of ``model`` in LoRA layers, in place.

    Args:
        model: The model to adapt; its other parameters keep their ``requires_grad``.
        rank: Rank ``r`` of the update, >= 1 (default 8).
        alpha: Scale numerator: the update is ``alpha / r * B A`` (default 16).
        dropout: Dropout on the adapter's input, in [0, 1) (default 0).
        modules: Regular expression over full module names (``backbone.blocks.0.attn.qkv``,
            ``backbone.model.model.layers.0.self_attn.q_proj``,
            ``decoders.image.net.transformer_blocks.0.attn1.to_q``, ...) of the linear layers
            to adapt (default: :func:`default_lora_modules`, every linear layer of the
            backbone's blocks, of a built-in or a transformers backbone alike).

    Returns:
        The names of the adapted layers.

    Raises:
        ConfigError: no linear layer matches ``modules``.
    """
    # Deferred: peft imports transformers (seconds), needed only when a config has train.lora.
    from peft import LoraConfig, inject_adapter_in_model

    modules = modules if modules is not None else default_lora_modules(model)
    pattern = re.compile(modules)
    targets = [name for name, module in model.named_modules()
               if is_linear(module) and pattern.fullmatch(name)]
    if not targets:
        linear = [n for n, m in model.named_modules() if is_linear(m)]
        raise ConfigError(f"train.lora.modules {modules!r} matches no linear layer; "
                          f"linear layers: {', '.join(linear[:8])}"
                          + (f" and {len(linear) - 8} more" if len(linear) > 8 else ""))
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    # GPT-2's Conv1D layers store their weight transposed; peft adapts them with
    # fan_in_fan_out (set per layer: it corrects a mixed model itself)
    conv1d = all(not isinstance(m, torch.nn.Linear) for n, m in model.named_modules()
                 if n in set(targets))
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        fan_in_fan_out=conv1d)
    inject_adapter_in_model(config, model)
    # peft freezes everything but the adapters; only the adapted base weights should be.
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.requires_grad_(True)
        elif ".base_layer." not in name:
            param.requires_grad_(trainable.get(name, True))
        else:
            param.requires_grad_(False)
    return targets


def freeze(model: torch.nn.Module, prefixes: list[str]) -> int:
    """Stop training every parameter whose name starts with one of ``prefixes``.

    Returns:
        How many parameters were frozen.

    Raises:
        ConfigError: a prefix matches no parameter (names the top-level modules).
    """
    names = [n for n, _ in model.named_parameters()]
    count = 0
    for prefix in prefixes:
        hits = [n for n in names if n == prefix or n.startswith(prefix.rstrip(".") + ".")]
        if not hits:
            tops = sorted({".".join(n.split(".")[:2]) for n in names})
            raise ConfigError(f"train.freeze: '{prefix}' names no parameters; modules: "
                              f"{', '.join(tops)}")
        for name, param in model.named_parameters():
            if name in hits:
                param.requires_grad_(False)
                count += param.numel()
    return count
