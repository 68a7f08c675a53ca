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
annotations) or the dataclass that describes it (``train:``: :mod:`multimodal.train_config`),
then what types cannot say (shares of steps in [0, 1], loss weights of modalities the config
has, a dataset for every decoder that trains, data for every tokenizer to fit, the shape of
``init_from``), before anything is built; every problem in the file is reported at once, each
with its dotted key and a did-you-mean. This module reads no file but YAML: the checks that
open ``init_from`` checkpoints are passed in by the trainer (``checks``). Overrides from the command line use the same dotted keys:
``train.max_steps=100 backbone.depth=4``; their values are parsed as YAML.

Only :mod:`multimodal.builders` turns a validated config into objects.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import os
import re
import stat
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Union

import yaml

from multimodal.errors import (ConfigError, UnknownComponentError, clip, did_you_mean,
                             excerpt)
from multimodal.registry import get_registry, modalities, pipelines, tokenizers
from multimodal.safety import SafetyConfig
from multimodal.train_config import (TrainConfig, init_from_entries, sampling_shares,
                                     tokenizers_taken, train_problems)


# -- YAML --------------------------------------------------------------------------------------
# What a config may be, checked before (sizes) or while (depth, aliases) it is parsed, so a file
# of any size or shape ends in one ConfigError, never in a RecursionError, a hang or a blown-up
# memory. The shipped configs are a few kilobytes, nest 5 deep and use no anchors.
MAX_CONFIG_BYTES = 1 << 20  # 1 MiB: a config file, a task file, a saved config, an override
MAX_DEPTH = 32  # nested mappings and lists, counted from the top of the config
MAX_KEY_CHARS = 256  # a key is a name
MAX_BASE_FILES = 64  # base: files read for one config, every reference counted


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``), and refuses
    what a config never needs: nesting deeper than :data:`MAX_DEPTH` (PyYAML composes
    recursively) and aliases (``*name``: the "billion laughs" document ``b: &b [*a, *a, ...]``
    expands to gigabytes when merged, copied or printed)."""

    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise ConfigError(f"YAML alias '*{self.peek_event().anchor[:MAX_KEY_CHARS]}' at "
                              f"{self.name}:{mark.line + 1}:{mark.column + 1}: aliases (&name "
                              "... *name) are not accepted in configs; write the value out, or "
                              "share it through a base: file")
        nests = self.check_event(yaml.MappingStartEvent, yaml.SequenceStartEvent)
        self._depth += nests
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError(f"{self.name}:{mark.line + 1}:{mark.column + 1} nests deeper "
                                  f"than {MAX_DEPTH} levels of mappings and lists")
            return super().compose_node(parent, index)
        finally:
            self._depth -= nests

    def construct_mapping(self, node, deep=False):
        """Refuse a key given twice in one mapping (YAML keeps the last silently, so a
        second ``train:`` block would drop the first)."""
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key is reported where keys are checked
                continue
            if first is not key_node.start_mark:
                mark = key_node.start_mark
                raise ConfigError(
                    f"{self.name}:{mark.line + 1}:{mark.column + 1}: key "
                    f"{excerpt(key)} is given twice in one mapping (first at line "
                    f"{first.line + 1}); YAML would keep only the last: merge them into one")
        return super().construct_mapping(node, deep=deep)


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


def _size(n: int) -> str:
    return f"{n} bytes ({n / (1 << 20):.1f} MiB)" if n >= 1 << 20 else f"{n} bytes"


def parse_yaml(text: str, source: str = "<string>") -> Any:
    """Parse YAML text safely (no Python tags, no aliases, at most :data:`MAX_DEPTH` levels,
    at most :data:`MAX_CONFIG_BYTES`).

    Raises:
        ConfigError: a syntax error, with the file, line and column; text above the size
            limit (refused before parsing), nesting too deep, an alias, or a value YAML cannot
            build (an integer of 5000 digits).
    """
    if len(text) > MAX_CONFIG_BYTES:  # characters: at least as many bytes
        raise ConfigError(f"{source} is {len(text)} characters, above the limit of "
                          f"{MAX_CONFIG_BYTES} (1 MiB) for a config; refusing to parse it")
    loader = None
    try:
        loader = _Loader(text)  # reads every character: a NUL or control byte raises here
        loader.name = source
        return loader.get_single_data()
    except ConfigError:
        raise
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"YAML syntax error at {where}: {problem}") from None
    except RecursionError:  # the depth check above should make this unreachable
        raise ConfigError(f"{source} nests too deep to read") from None
    except (ValueError, TypeError, OverflowError) as exc:  # a scalar YAML cannot build
        raise ConfigError(f"{source} holds a value that cannot be read: "
                          f"{type(exc).__name__}: {clip(str(exc), 200)}") from None
    finally:
        if loader is not None:
            loader.dispose()


class _Dumper(yaml.SafeDumper):
    """SafeDumper that writes a value shared by two keys twice, never as ``&id001 ... *id001``
    (which :func:`parse_yaml` refuses)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(config: dict) -> str:
    return yaml.dump(config, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def read_yaml_file(path: str | Path, what: str = "config file") -> Any:
    """Read and parse one YAML file within the limits of :func:`parse_yaml`.

    Only a regular file is read (a directory, a FIFO or a device such as ``/dev/zero`` is
    refused without reading, so nothing hangs), and only up to :data:`MAX_CONFIG_BYTES`.

    Args:
        path: The file.
        what: What it is, for messages (``"config file"``, ``"task file"``).

    Raises:
        ConfigError: missing, not a regular file, too large, not UTF-8, or not YAML.
    """
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO does not wait for a writer; the fstat below refuses it.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} not found: {path} (it is a directory)") from None
    except (OSError, ValueError) as exc:  # permissions, a NUL in the name, a name too long
        raise ConfigError(f"cannot read {what} {excerpt(str(path))}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"{what} not found: {path} (it is a directory)")
        raise ConfigError(f"{what} {path} is not a regular file (a FIFO, socket or device); "
                          "give the path of a YAML file")
    with os.fdopen(fd, "rb") as file:
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{what} {path} is {_size(info.st_size)}, above the limit of "
                              f"{_size(MAX_CONFIG_BYTES)} for a config; refusing to read it")
        data = file.read(MAX_CONFIG_BYTES + 1)  # a file that grew since fstat
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{what} {path} is above the limit of {_size(MAX_CONFIG_BYTES)} for "
                          "a config; refusing to read it")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text: {exc}") from None
    return parse_yaml(text, str(path))


def shape_problems(config: Any, at: str = "") -> list[Problem]:
    """What no config may hold, whatever its sections: a key that is not a string or is
    longer than :data:`MAX_KEY_CHARS`, nesting deeper than :data:`MAX_DEPTH`. Walks without
    recursion, so a config built in Python of any depth (even one that holds itself) is safe.
    """
    problems: list[Problem] = []
    stack: list[tuple[str, Any, int]] = [(at, config, 0)]
    while stack:
        dotted, value, depth = stack.pop()
        if not isinstance(value, (dict, list, tuple)):
            continue
        where = f"'{dotted}'" if dotted else "the top level"
        if depth >= MAX_DEPTH:
            problems.append((dotted, f"{where} nests deeper than {MAX_DEPTH} levels of "
                                     "mappings and lists"))
            continue
        if isinstance(value, dict):
            items = list(value.items())
        else:
            items = [(f"[{i}]", v) for i, v in enumerate(value)]
        for key, child in items:
            if isinstance(value, dict) and not isinstance(key, str):
                problems.append((dotted, f"a key of {where} is {excerpt(key)} "
                                         f"({type(key).__name__}); keys are names (strings)"))
                continue
            if len(key) > MAX_KEY_CHARS:
                problems.append((dotted, f"a key of {where} is {len(key)} characters long "
                                         f"(the limit is {MAX_KEY_CHARS}): {excerpt(key)}"))
                continue
            sep = "" if not dotted or key.startswith("[") else "."
            stack.append((f"{dotted}{sep}{key}", child, depth + 1))
    return problems


# -- loading -----------------------------------------------------------------------------------
def load_config(
    path: str | Path, overrides: Iterable[str] = (), *, validate: bool = True,
    checks: Iterable[Check] = (),
) -> dict:
    """Load a config file, resolve ``base:`` files, apply dotted overrides and validate.

    Args:
        path: The YAML file (a regular file of at most :data:`MAX_CONFIG_BYTES`).
        overrides: ``"dotted.key=value"`` strings; values are parsed as YAML.
        validate: Check every section against its constructor, and the semantic checks
            (default ``True``; see :func:`validate_config`).
        checks: Further checks reported with the others (see :func:`validate_config`), e.g.
            ``[init_from_problems]`` to open the ``init_from`` checkpoints as training will.

    Returns:
        The resolved config as plain dicts, lists and scalars (``base`` removed).

    Raises:
        ConfigError: missing, empty, oversized or malformed file (see :func:`read_yaml_file`),
            a cycle of ``base:`` files or more than :data:`MAX_BASE_FILES` of them, a bad
            override, or any validation problem (all reported together).
    """
    config = _load_with_bases(Path(path), chain=(), budget=[MAX_BASE_FILES])
    override_keys = apply_overrides(config, overrides)
    if validate:
        validate_config(config, source=str(path), override_keys=override_keys,
                        checks=checks)
    return config


def _load_with_bases(path: Path, chain: tuple[Path, ...], budget: list[int] | None = None
                     ) -> dict:
    budget = [MAX_BASE_FILES] if budget is None else budget
    try:
        resolved = path.resolve()
    except (OSError, ValueError, RuntimeError) as exc:  # a NUL in the name, a symlink loop
        raise ConfigError(f"cannot read config file {excerpt(str(path))}: {exc}") from None
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"cycle of base: files: {cycle}")
    data = read_yaml_file(path)
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
        raise ConfigError(f"{path}: 'base' must be a file name or a list of file names, got "
                          f"{excerpt(bases)}")
    merged: dict = {}
    for base in bases:
        budget[0] -= 1
        if budget[0] < 0:
            raise ConfigError(f"{path}: more than {MAX_BASE_FILES} base: files in all (every "
                              "reference counted); a config needs a handful")
        merged = merge(merged, _load_with_bases(path.parent / base, (*chain, resolved), budget))
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
        ConfigError: an override without ``=``, with an empty key, a key of more than
            :data:`MAX_DEPTH` parts or a part longer than :data:`MAX_KEY_CHARS`, a value that
            :func:`parse_yaml` refuses, or one that descends into a value that is not a
            mapping. Every bad override is listed, each quoted in part (:func:`excerpt`).
    """
    keys: set[str] = set()
    problems = []
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            problems.append(f"override {excerpt(item)} is not of the form dotted.key=value")
            continue
        dotted, raw = item.split("=", 1)
        dotted = dotted.strip()
        parts = dotted.split(".")
        if not dotted or any(not p for p in parts):
            problems.append(f"override {excerpt(item)} has an empty key")
            continue
        if len(parts) > MAX_DEPTH or any(len(p) > MAX_KEY_CHARS for p in parts):
            problems.append(f"override {excerpt(item)}: the key has more than {MAX_DEPTH} parts "
                            f"or a part longer than {MAX_KEY_CHARS} characters")
            continue
        try:
            value = parse_yaml(raw, f"override {clip(dotted)}") if raw.strip() else None
        except ConfigError as exc:
            problems += exc.problems
            continue
        node = config
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                prefix = ".".join(parts[: i + 1])
                problems.append(
                    f"override {excerpt(item)}: '{prefix}' is a {type(child).__name__}, not a "
                    "section"
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
    "init_from": ("init_from", None),  # train_config.init_from_entries
    "tokenizers": ("components", "tokenizers"),
    "backbone": ("component", "backbones"),
    "decoders": ("components", "decoders"),
    "data": ("components", "datasets"),
    "train": ("dataclass", TrainConfig),
    "safety": ("dataclass", SafetyConfig),
}

Problem = tuple[str, str]  # (dotted key, message)
Check = Callable[[dict], list[Problem]]


def validate_config(
    config: dict, *, source: str | None = None, override_keys: Iterable[str] = (),
    checks: Iterable[Check] = (),
) -> None:
    """Check a resolved config: every section against its constructor or dataclass, then what
    types cannot say (see :func:`semantic_problems`). Reads no file but the config.

    Args:
        config: The resolved config.
        source: Where it came from, for the message.
        override_keys: Dotted keys set by command-line overrides (their problems say so).
        checks: Further checks, each ``check(config) -> [(dotted key, message), ...]``, whose
            problems are reported with the others: the trainer passes
            :func:`multimodal.training.init_from.init_from_problems`, which opens the
            ``init_from`` checkpoints (a checkpoint's saved config is read without it, so a
            model trained from other checkpoints loads after they are gone).

    Raises:
        ConfigError: listing every problem, each with its dotted key.
    """
    problems = shape_problems(config)
    if not problems:  # the checks below assume string keys and a bounded depth
        problems = structure_problems(config)
        problems += semantic_problems(config)
        for check in checks:
            problems += check(config)
    if problems:
        overrides = set(override_keys)
        messages = []
        for dotted, message in problems:
            from_override = any(dotted == k or dotted.startswith(k + ".") or k.startswith(dotted + ".")
                                for k in overrides)
            messages.append(f"{message} (from a command-line override)" if from_override else message)
        raise ConfigError(messages, source=source)


def structure_problems(config: dict) -> list[Problem]:
    """Each section against its constructor's arguments and annotations, or its dataclass."""
    problems: list[Problem] = []
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
        elif what == "init_from":
            problems += init_from_entries(value)[1]
        elif what == "component":
            problems += check_component(key, value, arg)
        elif what == "components":
            if not isinstance(value, dict):
                problems.append((key, f"'{key}' must be a mapping of name -> {{type: ...}}"))
                continue
            for name, section in value.items():
                problems += check_component(f"{key}.{name}", section, arg)
        elif what == "dataclass":
            problems += check_dataclass(key, value, arg)
    for key, example in (("backbone", "backbone: {type: transformer}"),
                         ("decoders", "decoders: {text: {type: lm_head}}")):
        if not config.get(key):
            problems.append((key, f"the config has no '{key}' section: add one, e.g. {example}"))
    return problems


def semantic_problems(config: dict) -> list[Problem]:
    """What a type annotation cannot say: the ``train:`` values (:func:`train_problems`), a
    decoder for every registered modality, a dataset for every modality that trains, and data
    for every tokenizer that must be fitted (where ``init_from`` says, without opening its
    checkpoints, which tokenizers it gives)."""
    problems = train_problems(config)
    decoders = config.get("decoders")
    if not isinstance(decoders, dict):
        return problems
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    registered = modalities.names()
    for name in decoders:
        if name not in registered:
            problems.append((f"decoders.{name}", f"'decoders.{name}' is not a registered "
                                                 f"modality{did_you_mean(name, registered)}; "
                                                 f"registered: {', '.join(registered)}"))
    if any(p[0].startswith("train.sampling") for p in problems):
        return problems  # the shares below would be guesses
    shares = sampling_shares(config)
    for name in decoders:
        if shares[name] > 0 and name not in data:
            problems.append((f"data.{name}", f"decoders.{name} has no dataset: add data.{name}: "
                                             "{type: ...}, or rest it with "
                                             f"train.sampling.{name}: 0"))
    given = tokenizers_taken(init_from_entries(config.get("init_from"))[0])
    if given is not None:  # else init_from_problems knows, from the checkpoints
        problems += fit_on_problems(config, given)
    return problems


def fit_on_problems(config: dict, given: set[str]) -> list[Problem]:
    """A problem for each tokenizer of ``config`` that must be fitted (``init_from`` does not
    give it: not in ``given``) on a modality that has no data to fit it on, or rests."""
    sections = config.get("tokenizers")
    if not isinstance(sections, dict):
        return []
    decoders, data = config.get("decoders") or {}, config.get("data") or {}
    shares = sampling_shares(config)
    problems = []
    for name, section in sections.items():
        if name in given or not isinstance(section, dict) or section.get("type") not in tokenizers:
            continue
        if getattr(tokenizers.get(section["type"]), "pretrained", lambda _: False)(section):
            continue  # read from a pretrained folder and not fine-tuned: nothing to fit
        fit_on = section.get("fit_on", getattr(tokenizers.get(section["type"]), "fit_on", None))
        if not isinstance(fit_on, str) or fit_on == "text":  # "text": every modality's texts
            continue
        if fit_on in decoders and fit_on in data and shares.get(fit_on, 0) > 0:
            continue
        if shares.get(fit_on) == 0:
            why = (f"train.sampling.{fit_on} is 0 (the modality rests): give a share above 0, "
                   f"or take tokenizers.{name} from init_from")
        else:
            why = (f"the config has no {'data' if fit_on in decoders else 'decoders'}.{fit_on} "
                   f"to train on; add it, or take tokenizers.{name} from init_from")
        problems.append((f"tokenizers.{name}", f"tokenizers.{name} learns from data.{fit_on}, "
                                               f"but {why}"))
    return problems


def _check_task(key: str, value: Any) -> list[Problem]:
    if not isinstance(value, str):
        return [(key, f"'{key}' must be a task name, got {excerpt(value)}")]
    try:
        pipelines.get(value)
    except UnknownComponentError as exc:
        return [(key, f"'{key}': {exc}")]
    return []


def check_component(dotted: str, section: Any, kind: str) -> list[Problem]:
    """Check one ``{type: name, **kwargs}`` section against the registered constructor."""
    if not isinstance(section, dict):
        return [(dotted, f"'{dotted}' must be a mapping with a 'type' key, got "
                         f"{excerpt(section)}")]
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


def check_kwargs(dotted: str, fields: dict, target: Any) -> list[Problem]:
    """Check a component's configured keyword arguments against its constructor.

    An argument listed in ``target.component_args`` (``{"vocoders": "vocoders"}``) holds a
    mapping ``{name: {type: ..., **kwargs}}`` of components of that registry kind, each checked
    like a section of its own; an argument annotated with a dataclass (or ``dict[str,
    SomeDataclass]``) is checked field by field. A key of ``target.moved_args`` (``{old key:
    where it went}``, for configs of an older layout) is reported with its message.
    """
    params, hints, injected = constructor_params(target)
    nested = getattr(target, "component_args", {})
    moved = {k: v for k, v in getattr(target, "moved_args", {}).items() if k not in params}
    accepted = [n for n in params if n not in injected]
    problems = []
    for name, value in fields.items():
        key = f"{dotted}.{name}"
        if name in injected:
            problems.append((key, f"'{key}' is set by the builder and cannot be configured"))
        elif name in moved:  # a key of an older layout: say where it went
            problems.append((key, f"unknown key '{key}': {moved[name]}"))
        elif name not in params:
            close = did_you_mean(name, accepted).replace(" '", f" '{dotted}.")
            problems.append((key, f"unknown key '{key}'{close}; "
                                  f"accepted: {', '.join(accepted) or '(none)'}"))
        elif name in nested:
            problems += _check_components(key, value, nested[name])
        elif name in hints:
            problems += _check_value(key, value, hints[name])
    for name, p in params.items():
        if p.default is p.empty and name not in injected and name not in fields:
            problems.append((f"{dotted}.{name}", f"missing required key '{dotted}.{name}'"))
    return problems


def _check_components(dotted: str, value: Any, kind: str) -> list[Problem]:
    """A ``{name: {type: ..., **kwargs}}`` mapping of components of ``kind`` (or null)."""
    if value is None:
        return []
    if not isinstance(value, dict):
        return [(dotted, f"'{dotted}' must be a mapping of name -> {{type: ...}} ({kind}), "
                         f"got {excerpt(value)}")]
    problems = []
    for name, section in value.items():
        problems += check_component(f"{dotted}.{name}", section, kind)
    return problems


def check_dataclass(dotted: str, section: Any, cls: type) -> list[Problem]:
    """Check a mapping against the fields of dataclass ``cls`` (``None`` passes)."""
    if section is None:
        return []
    if not isinstance(section, dict):
        return [(dotted, f"'{dotted}' must be a mapping, got {excerpt(section)}")]
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
    for name, f in fields.items():
        if (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                and name not in section):
            problems.append((f"{dotted}.{name}", f"missing required key '{dotted}.{name}'"))
    return problems


def _check_value(key: str, value: Any, annotation: Any) -> list[Problem]:
    nested = _nested_dataclass(annotation)
    if nested is not None and value is not None:
        cls, per_name = nested
        if not per_name:
            return check_dataclass(key, value, cls)
        if not isinstance(value, dict):
            return [(key, f"'{key}' must be a mapping of name -> {cls.__name__} fields, got "
                          f"{excerpt(value)}")]
        return [p for name, v in value.items() for p in check_dataclass(f"{key}.{name}", v, cls)]
    if type_matches(value, annotation):
        return []
    return [(key, f"'{key}' must be {describe_type(annotation)}, got {excerpt(value)} "
                  f"({type(value).__name__})")]


def _nested_dataclass(annotation: Any) -> tuple[type, bool] | None:
    """``(cls, False)`` for an annotation ``cls`` or ``cls | None`` with ``cls`` a dataclass,
    ``(cls, True)`` for ``dict[str, cls]`` (or ``| None``), else ``None``."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(inner) != 1:
            return None
        annotation = inner[0]
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        return annotation, False
    args = typing.get_args(annotation)
    if (typing.get_origin(annotation) is dict and len(args) == 2
            and dataclasses.is_dataclass(args[1]) and isinstance(args[1], type)):
        return args[1], True
    return None


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
