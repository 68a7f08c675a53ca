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

# Every linear layer of the backbone's blocks: attention q/k/v + output, the SwiGLU MLP.
DEFAULT_LORA_MODULES = r"backbone\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(w13|w2))"


def apply_lora(model: torch.nn.Module, *, rank: int = 8, alpha: float = 16.0,
               dropout: float = 0.0, modules: str = DEFAULT_LORA_MODULES) -> list[str]:
    """Wrap the matching linear layers of ``model`` in LoRA layers, in place.

    Args:
        model: The model to adapt; its other parameters keep their ``requires_grad``.
        rank: Rank ``r`` of the update, >= 1 (default 8).
        alpha: Scale numerator: the update is ``alpha / r * B A`` (default 16).
        dropout: Dropout on the adapter's input, in [0, 1) (default 0).
        modules: Regular expression over full module names (``backbone.blocks.0.attn.qkv``,
            ``decoders.image.net.transformer_blocks.0.attn1.to_q``, ...) of the linear layers
            to adapt (default: every linear layer of the backbone's blocks).

    Returns:
        The names of the adapted layers.

    Raises:
        ConfigError: no linear layer matches ``modules``.
    """
    # Deferred: peft imports transformers (seconds), needed only when a config has train.lora.
    from peft import LoraConfig, inject_adapter_in_model

    pattern = re.compile(modules)
    targets = [name for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and pattern.fullmatch(name)]
    if not targets:
        linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        raise ConfigError(f"train.lora.modules {modules!r} matches no linear layer; "
                          f"linear layers: {', '.join(linear[:8])}"
                          + (f" and {len(linear) - 8} more" if len(linear) > 8 else ""))
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
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
