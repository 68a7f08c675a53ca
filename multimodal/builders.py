"""The only code that reads configs and calls constructors.

Every component is named by ``type:`` within its slot and looked up in the registry of that
slot's kind; the other keys of the section are its keyword arguments. Arguments that come from
other components (a backbone's ``vocab_size`` from the text tokenizer, a decoder's
``backbone``) are "injected": listed in the component's ``injected_args`` and passed here.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

from multimodal.config import constructor_params
from multimodal.errors import ConfigError, MultimodalError, clip
from multimodal.model import MultimodalModel
from multimodal.nn.lora import apply_lora
from multimodal.registry import get_registry, modalities
from multimodal.train_config import TrainConfig

DECODER_FILES_DIR = "decoders"  # a checkpoint's decoders/<name>/: files a decoder stored


def build_component(kind: str, section: dict, dotted: str, **context: Any) -> Any:
    """Build one ``{type: name, **kwargs}`` section of ``kind``.

    ``context`` holds values the builder can inject; only those the constructor lists in
    ``injected_args`` are passed. The components nested in an argument of
    ``component_args`` are built first (see :func:`component_kwargs`).

    Raises:
        ConfigError: the constructor rejected its arguments (a ``ConfigError``, ``ValueError``
            or ``TypeError``), as ``'<dotted>' (<type>): <message>``.
    """
    target, kwargs = component_kwargs(kind, section, dotted, **context)
    try:
        return target(**kwargs)
    except ConfigError as exc:
        raise ConfigError([f"'{dotted}' ({section['type']}): {clip(p)}"
                           for p in exc.problems]) from exc
    except MultimodalError:  # a DataError or CheckpointError says what it is about
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"'{dotted}' ({section['type']}): {clip(str(exc))}") from exc


def component_kwargs(kind: str, section: dict, dotted: str, **context: Any
                     ) -> tuple[Any, dict[str, Any]]:
    """The registered class of a ``{type: name, **kwargs}`` section and the keyword arguments
    to call it (or its ``load``) with: the section's own, the injected ones from ``context``,
    and for each argument of ``target.component_args`` (``{"vocoders": "vocoders"}``) the
    built components ``{name: object}`` of its ``{name: {type: ..., **kwargs}}`` mapping, each
    built from the registry of that kind with the same ``context``. An argument annotated with
    a dataclass is passed as the plain mapping it was checked as.
    """
    target = get_registry(kind).get(section["type"])
    _, _, injected = constructor_params(target)
    kwargs = {k: v for k, v in section.items() if k != "type"}
    for name, nested_kind in getattr(target, "component_args", {}).items():
        if kwargs.get(name) is not None:
            kwargs[name] = {sub: build_component(nested_kind, nested, f"{dotted}.{name}.{sub}",
                                                 **context)
                            for sub, nested in kwargs[name].items()}
    for name in injected:
        if name in context:
            kwargs[name] = context[name]
    return target, kwargs


def build_tokenizers(config: dict) -> dict[str, Any]:
    """Untrained tokenizers named in ``config["tokenizers"]``."""
    return {name: build_component("tokenizers", section, f"tokenizers.{name}")
            for name, section in (config.get("tokenizers") or {}).items()}


def build_datasets(config: dict, split: str, names: Iterable[str] | None = None) -> dict[str, Any]:
    """Datasets of ``config["data"]`` for ``split`` ("train" or "val")."""
    sections = config.get("data") or {}
    return {name: build_component("datasets", section, f"data.{name}", split=split)
            for name, section in sections.items() if names is None or name in names}


def build_model(config: dict, tokenizers: dict[str, Any], *, adapters: bool = True,
                checkpoint_dir: Any = None, decoder_sources: dict[str, Any] | None = None):
    """The backbone and decoders of a validated ``config``, with injected sizes from
    ``tokenizers``, and the LoRA adapters of ``train.lora`` unless ``adapters`` is false (the
    trainer adds them after loading ``init_from``). ``checkpoint_dir`` (a checkpoint being
    loaded) is injected where a component asks for it: a transformers backbone rebuilds itself
    from the files it stored there instead of reading its pretrained folder; a decoder that
    stored files (:func:`multimodal.checkpoint.model_files`) gets their folder,
    ``decoders/<name>/``, as ``files_dir``: of ``checkpoint_dir``, or of
    ``decoder_sources[name]`` (the checkpoint a composed model took that decoder from).
    """
    sources = {name: checkpoint_dir for name in config["decoders"]}
    sources.update(decoder_sources or {})
    text = tokenizers.get("text")
    context = {"vocab_size": text.vocab_size if text is not None else 1,
               "checkpoint_dir": checkpoint_dir}
    backbone = build_component("backbones", config["backbone"], "backbone", **context)
    built = {name: build_component(
                 "decoders", section, f"decoders.{name}", backbone=backbone,
                 tokenizers=tokenizers, **context,
                 files_dir=None if sources[name] is None
                 else Path(sources[name]) / DECODER_FILES_DIR / name)
             for name, section in config["decoders"].items()}
    model = MultimodalModel(backbone=backbone, decoders=built)
    lora = TrainConfig.from_config(config).lora
    if adapters and lora is not None:
        apply_lora(model, **asdict(lora))
    return model


def build_modalities(config: dict) -> dict[str, Any]:
    """One modality objective per configured decoder."""
    return {name: modalities.get(name)() for name in (config.get("decoders") or {})}
