"""YAML configs: loading, ``base:`` inheritance, dotted overrides and validation.

A config is a YAML mapping of sections::

    base: text_base.yaml          # optional, relative to this file; a list is merged in order
    task: text-generation         # a registered pipeline name
    seed: 0
    tokenizers: {text: {type: byte_bpe, vocab_size: 4096}}
    backbone: {type: transformer, dim: 256, depth: 6}
    decoders: {text: {type: lm_head}}
    data: {text: {type: fortunes}}
    train: {max_steps: 3000, batch_size: 32}

Every field is checked against the constructor it feeds (its keyword arguments and their type
annotations) before anything is built, and every problem in the file is reported at once, each
with its dotted key and a did-you-mean. Overrides from the command line use the same dotted keys:
``train.max_steps=100 backbone.depth=4``; their values are parsed as YAML.

Only :mod:`multimodal.builders` turns a validated config into objects.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, Union

import yaml

from multimodal.errors import ConfigError, UnknownComponentError, did_you_mean


# -- YAML --------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str = "<string>") -> Any:
    """Parse YAML text safely (no Python tags).

    Raises:
        ConfigError: a syntax error, with the file, line and column.
    """
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"YAML syntax error at {where}: {problem}") from None


def dump_yaml(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


# -- loading -----------------------------------------------------------------------------------
def load_config(
    path: str | Path, overrides: Iterable[str] = (), *, validate: bool = True
) -> dict:
    """Load a config file, resolve ``base:`` files, apply dotted overrides and validate.

    Args:
        path: The YAML file.
        overrides: ``"dotted.key=value"`` strings; values are parsed as YAML.
        validate: Check every section against its constructor (default ``True``).

    Returns:
        The resolved config as plain dicts, lists and scalars (``base`` removed).

    Raises:
        ConfigError: missing, empty or malformed file, a cycle of ``base:`` files, a bad
            override, or any validation problem (all reported together).
    """
    config = _load_with_bases(Path(path), chain=())
    override_keys = apply_overrides(config, overrides)
    if validate:
        validate_config(config, source=str(path), override_keys=override_keys)
    return config


def _load_with_bases(path: Path, chain: tuple[Path, ...]) -> dict:
    if not path.is_file():
        hint = " (it is a directory)" if path.is_dir() else ""
        raise ConfigError(f"config file not found: {path}{hint}")
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"cycle of base: files: {cycle}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text: {exc}") from None
    data = parse_yaml(text, str(path))
    if data is None:
        raise ConfigError(
            f"config file {path} is empty: expected a mapping of sections "
            "(task, backbone, decoders, data, train, ...)"
        )
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} holds a {type(data).__name__}; expected a mapping of sections "
            "(task, backbone, decoders, data, train, ...)"
        )
    bases = data.pop("base", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: 'base' must be a file name or a list of file names")
    merged: dict = {}
    for base in bases:
        merged = merge(merged, _load_with_bases(path.parent / base, (*chain, resolved)))
    return merge(merged, data)


def merge(base: dict, child: dict) -> dict:
    """Deep-merge ``child`` into a copy of ``base``.

    A component section whose ``type`` changes is replaced, not merged, so that the keys of the
    old type do not leak into the new one.
    """
    out = copy.deepcopy(base)
    for key, value in child.items():
        old = out.get(key)
        if (
            isinstance(old, dict)
            and isinstance(value, dict)
            and not ("type" in value and "type" in old and value["type"] != old["type"])
        ):
            out[key] = merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overrides(config: dict, overrides: Iterable[str]) -> set[str]:
    """Apply ``"a.b.c=value"`` overrides in place; return the dotted keys set.

    Raises:
        ConfigError: an override without ``=``, with an empty key, or that descends into a
            value that is not a mapping.
    """
    keys: set[str] = set()
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"override '{item}' is not of the form dotted.key=value")
            continue
        dotted, raw = item.split("=", 1)
        dotted = dotted.strip()
        parts = dotted.split(".")
        if not dotted or any(not p for p in parts):
            problems.append(f"override '{item}' has an empty key")
            continue
        value = parse_yaml(raw, f"override {dotted}") if raw.strip() else None
        node = config
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                prefix = ".".join(parts[: i + 1])
                problems.append(
                    f"override '{item}': '{prefix}' is a {type(child).__name__}, not a section"
                )
                break
            node = child
        else:
            node[parts[-1]] = value
            keys.add(dotted)
    if problems:
        raise ConfigError(problems)
    return keys


# -- validation --------------------------------------------------------------------------------
# The top-level sections. A "component" section names a registered type; "components" is a
# mapping of such sections, one per modality or per name.
TOP_LEVEL: dict[str, Any] = {
    "task": ("pipeline", None),
    "seed": ("value", int),
    "out_dir": ("value", str),
    "init_from": ("value", Union[str, list, None]),  # see checkpoint.parse_init_from
    "tokenizers": ("components", "tokenizers"),
    "backbone": ("component", "backbones"),
    "decoders": ("components", "decoders"),
    "data": ("components", "datasets"),
    "train": ("dataclass", "multimodal.training.trainer:TrainConfig"),
    "safety": ("dataclass", "multimodal.safety:SafetyConfig"),
}


def validate_config(
    config: dict, *, source: str | None = None, override_keys: Iterable[str] = ()
) -> None:
    """Check a resolved config against the registered constructors.

    Raises:
        ConfigError: listing every problem, each with its dotted key.
    """
    problems: list[tuple[str, str]] = []
    for key, value in config.items():
        if key not in TOP_LEVEL:
            problems.append((key, f"unknown section '{key}'{did_you_mean(key, TOP_LEVEL)}; "
                                  f"accepted: {', '.join(TOP_LEVEL)}"))
            continue
        what, arg = TOP_LEVEL[key]
        if what == "value":
            problems += _check_value(key, value, arg)
        elif what == "pipeline":
            problems += _check_task(key, value)
        elif what == "component":
            problems += check_component(key, value, arg)
        elif what == "components":
            if not isinstance(value, dict):
                problems.append((key, f"'{key}' must be a mapping of name -> {{type: ...}}"))
                continue
            for name, section in value.items():
                problems += check_component(f"{key}.{name}", section, arg)
        elif what == "dataclass":
            problems += check_dataclass(key, value, _import(arg))
    if problems:
        overrides = set(override_keys)
        messages = []
        for dotted, message in problems:
            from_override = any(dotted == k or dotted.startswith(k + ".") or k.startswith(dotted + ".")
                                for k in overrides)
            messages.append(f"{message} (from a command-line override)" if from_override else message)
        raise ConfigError(messages, source=source)


def _import(spec: str) -> Any:
    import importlib

    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _check_task(key: str, value: Any) -> list[tuple[str, str]]:
    from multimodal.registry import pipelines

    if not isinstance(value, str):
        return [(key, f"'{key}' must be a task name, got {value!r}")]
    try:
        pipelines.get(value)
    except UnknownComponentError as exc:
        return [(key, f"'{key}': {exc}")]
    return []


def check_component(dotted: str, section: Any, kind: str) -> list[tuple[str, str]]:
    """Check one ``{type: name, **kwargs}`` section against the registered constructor."""
    from multimodal.registry import get_registry

    if not isinstance(section, dict):
        return [(dotted, f"'{dotted}' must be a mapping with a 'type' key, got {section!r}")]
    registry = get_registry(kind)
    if "type" not in section:
        return [(dotted, f"'{dotted}' has no 'type'; registered {kind}: "
                         f"{', '.join(registry.names())}")]
    try:
        target = registry.get(section["type"])
    except UnknownComponentError as exc:
        return [(f"{dotted}.type", f"'{dotted}.type': {exc}")]
    fields = {k: v for k, v in section.items() if k != "type"}
    return check_kwargs(dotted, fields, target)


def constructor_params(target: Any) -> tuple[dict[str, inspect.Parameter], dict[str, Any], set[str]]:
    """Return ``(parameters, type hints, injected names)`` of a component's constructor.

    Injected names (``target.injected_args``) are supplied by the builder, not by a config.
    """
    func = target.__init__ if inspect.isclass(target) else target
    sig = inspect.signature(func)
    params = {
        name: p
        for name, p in sig.parameters.items()
        if name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }
    try:
        hints = typing.get_type_hints(func)
    except Exception:
        hints = {}
    injected = set(getattr(target, "injected_args", ()))
    return params, hints, injected


def check_kwargs(dotted: str, fields: dict, target: Any) -> list[tuple[str, str]]:
    params, hints, injected = constructor_params(target)
    accepted = [n for n in params if n not in injected]
    problems = []
    for name, value in fields.items():
        key = f"{dotted}.{name}"
        if name in injected:
            problems.append((key, f"'{key}' is set by the builder and cannot be configured"))
        elif name not in params:
            close = did_you_mean(name, accepted).replace(" '", f" '{dotted}.")
            problems.append((key, f"unknown key '{key}'{close}; "
                                  f"accepted: {', '.join(accepted) or '(none)'}"))
        elif name in hints:
            problems += _check_value(key, value, hints[name])
    for name, p in params.items():
        if p.default is p.empty and name not in injected and name not in fields:
            problems.append((f"{dotted}.{name}", f"missing required key '{dotted}.{name}'"))
    return problems


def check_dataclass(dotted: str, section: Any, cls: type) -> list[tuple[str, str]]:
    if section is None:
        return []
    if not isinstance(section, dict):
        return [(dotted, f"'{dotted}' must be a mapping, got {section!r}")]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    problems = []
    for name, value in section.items():
        key = f"{dotted}.{name}"
        if name not in fields:
            close = did_you_mean(name, fields).replace(" '", f" '{dotted}.")
            problems.append((key, f"unknown key '{key}'{close}; "
                                  f"accepted: {', '.join(fields)}"))
        else:
            problems += _check_value(key, value, hints[name])
    return problems


def _check_value(key: str, value: Any, annotation: Any) -> list[tuple[str, str]]:
    if type_matches(value, annotation):
        return []
    return [(key, f"'{key}' must be {describe_type(annotation)}, got {value!r} "
                  f"({type(value).__name__})")]


def type_matches(value: Any, annotation: Any) -> bool:
    """Whether a YAML value fits a constructor annotation (ints are accepted for floats)."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Union or origin is types.UnionType:
        return any(type_matches(value, a) for a in args)
    if origin is Literal:
        return value in args
    if origin in (tuple, list, typing.Sequence) or annotation in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if not args:
            return True
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(type_matches(v, a) for v, a in zip(value, args))
        return all(type_matches(v, args[0]) for v in value)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def describe_type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Union or origin is types.UnionType:
        return " or ".join(describe_type(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (tuple, list):
        return "a list"
    if annotation is type(None) or annotation is None:
        return "null"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
             dict: "a mapping"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))
