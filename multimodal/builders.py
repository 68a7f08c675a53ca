"""The only code that reads configs and calls constructors.

Every component is named by ``type:`` within its slot and looked up in the registry of that
slot's kind; the other keys of the section are its keyword arguments. Arguments that come from
other components (a backbone's ``vocab_size`` from the text tokenizer, a decoder's
``backbone``) are "injected": listed in the component's ``injected_args`` and passed here.
"""

from __future__ import annotations

from typing import Any, Iterable

from multimodal.config import constructor_params
from multimodal.errors import ConfigError, MultimodalError
from multimodal.model import MultimodalModel
from multimodal.nn.lora import apply_lora, lora_settings
from multimodal.registry import get_registry, modalities


def build_component(kind: str, section: dict, dotted: str, **context: Any) -> Any:
    """Build one ``{type: name, **kwargs}`` section of ``kind``.

    ``context`` holds values the builder can inject; only those the constructor lists in
    ``injected_args`` are passed.

    Raises:
        ConfigError: the constructor rejected its arguments (the message names ``dotted``).
    """
    target = get_registry(kind).get(section["type"])
    _, _, injected = constructor_params(target)
    kwargs = {k: v for k, v in section.items() if k != "type"}
    for name in injected:
        if name in context:
            kwargs[name] = context[name]
    try:
        return target(**kwargs)
    except MultimodalError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"'{dotted}' ({section['type']}): {exc}") from exc


def build_tokenizers(config: dict) -> dict[str, Any]:
    """Untrained tokenizers named in ``config["tokenizers"]``."""
    return {name: build_component("tokenizers", section, f"tokenizers.{name}")
            for name, section in (config.get("tokenizers") or {}).items()}


def build_datasets(config: dict, split: str, names: Iterable[str] | None = None) -> dict[str, Any]:
    """Datasets of ``config["data"]`` for ``split`` ("train" or "val")."""
    sections = config.get("data") or {}
    return {name: build_component("datasets", section, f"data.{name}", split=split)
            for name, section in sections.items() if names is None or name in names}


def build_model(config: dict, tokenizers: dict[str, Any], *, adapters: bool = True):
    """The backbone and decoders of ``config``, with injected sizes from ``tokenizers``, and
    the LoRA adapters of ``train.lora`` unless ``adapters`` is false (the trainer adds them
    after loading ``init_from``).

    Raises:
        ConfigError: no backbone or decoder is configured, or a decoder has no modality.
    """
    if "backbone" not in config:
        raise ConfigError("the config has no 'backbone' section")
    decoders = config.get("decoders") or {}
    if not decoders:
        raise ConfigError("the config has no 'decoders' section: name at least one, e.g. "
                          "decoders: {text: {type: lm_head}}")
    unknown = [f"decoders.{n}" for n in decoders if n not in modalities]
    if unknown:
        raise ConfigError([f"'{k}' is not a registered modality; registered: "
                           f"{', '.join(modalities.names())}" for k in unknown])
    text = tokenizers.get("text")
    context = {"vocab_size": text.vocab_size if text is not None else 1}
    backbone = build_component("backbones", config["backbone"], "backbone", **context)
    built = {name: build_component("decoders", section, f"decoders.{name}",
                                   backbone=backbone, tokenizers=tokenizers, **context)
             for name, section in decoders.items()}
    model = MultimodalModel(backbone=backbone, decoders=built)
    if adapters:
        lora = lora_settings((config.get("train") or {}).get("lora"))
        if lora is not None:
            apply_lora(model, lora)
    return model


def build_modalities(config: dict) -> dict[str, Any]:
    """One modality objective per configured decoder."""
    return {name: modalities.get(name)() for name in (config.get("decoders") or {})}
