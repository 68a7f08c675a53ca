"""The modality plugin contract: :class:`ModalitySpec` and :func:`register_modality`.

A modality is a tokenizer, a decoder on the shared backbone, a training objective, a pipeline
that generates it and a writer for its files. A :class:`ModalitySpec` names them together, with
an example input and its shape, so the framework (and the conformance kit,
:func:`multimodal.testing.check_modality`) can treat every modality alike, built-in or plugin.

A plugin is an installable package that declares an entry point in the group
``multimodal.plugins`` whose target is a ``register(registries)`` function::

    # pyproject.toml
    [project.entry-points."multimodal.plugins"]
    sketch = "multimodal_sketch:register"

    # multimodal_sketch/__init__.py
    from multimodal.plugins import ModalitySpec, register_modality

    def register(registries):
        register_modality(registries, SPEC)

:func:`register_modality` checks the spec first and registers nothing from a spec that is
incomplete; its components then join the registries under their own names, and a name that is
already taken is refused naming both owners (:class:`~multimodal.errors.DuplicateRegistrationError`).
See ``docs/plugins.md`` for a walk-through of the example plugin in ``examples/plugins/sketch``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from multimodal.backbone.transformer import MODALITY_IDS
from multimodal.errors import ConfigError, clip, excerpt
from multimodal.registry import all_or_nothing

# A shape may leave an axis free (a clip's length, a sentence's token count) with ``None``.
Shape = tuple


def default_encode(tokenizer: Any, example: Any) -> Any:
    """``tokenizer.encode(example)``."""
    return tokenizer.encode(example)


def default_decode(tokenizer: Any, codes: Any) -> Any:
    """``tokenizer.decode(codes)``."""
    return tokenizer.decode(codes)


@dataclass(frozen=True)
class ModalitySpec:
    """Everything one modality brings, under the names the registries know it by.

    Args:
        name: The modality's name: its key under ``decoders:``, ``data:`` and in the
            ``modalities`` registry (snake_case).
        modality: The training objective class (:class:`multimodal.modalities.base.Modality`:
            ``prepare``, ``sample``, ``eval_batches``, ``text_corpus``, ``loss``,
            ``evaluate``).
        decoder: Registered name of the decoder that generates it (``decoders`` registry).
        tokenizer: Registered name of the tokenizer that turns its media into what the
            decoder reads and writes (``tokenizers`` registry), or ``None`` when the backbone's
            text ids are its tokens (text).
        task: Registered name of the pipeline that generates it from a prompt.
        generate: ``generate(pipeline, prompt, seed) -> sample``: one sample of the media from
            a loaded pipeline, at a small setting, for the conformance kit.
        writer: ``writer(sample, path, metadata=None)``: writes one generated sample to
            ``path`` atomically, and ``metadata`` (the settings of the sample, a JSON-able
            dict) with it: inside the file where the format has room (a PNG's text chunk),
            else in the ``.json`` of the same stem. It may write other files of ``path``'s stem
            (a video's MP4 beside its GIF) and returns the paths it wrote (``None``: just
            ``path``). :func:`multimodal.outputs.write_outputs` writes every sample of a
            pipeline's output through the writer of the spec its pipeline ``produces``.
        reader: ``reader(path) -> sample``: reads such a file back (an array, or text).
        suffix: File suffix the writer produces, e.g. ``".wav"``.
        example_input: ``example_input() -> media``: one input the tokenizer encodes.
        input_shape: Shape of ``example_input()`` (``None`` for a free axis; ``()`` for text).
        encoded_shape: Shape of its encoding (tokens or latents; ``None`` for a free axis).
        tiny_config: ``tiny_config() -> dict``: a complete config (task, tokenizers,
            backbone, decoders, data, train) that trains the modality in seconds on a CPU.
        encode, decode: ``encode(tokenizer, media) -> codes``, ``decode(tokenizer, codes) ->
            media`` (default: the tokenizer's ``encode`` / ``decode``).
        modality_id: The backbone's modality-type id its embeddings carry, if it feeds the
            backbone embeddings of its own (below the backbone's ``num_modalities``; two
            modalities may not share one).
        components: ``{kind: {name: object}}``: components to register with the spec (its
            tokenizer, decoder, datasets, pipeline, objective), e.g.
            ``{"decoders": {"stroke_head": StrokeHead}}``.
        requires: Executables the tiny config needs on ``PATH`` (e.g. ``("espeak-ng",)``);
            the conformance kit skips a spec whose requirements are missing.
    """

    name: str
    modality: type
    decoder: str
    tokenizer: str | None
    task: str
    generate: Callable[[Any, str, int], Any]
    writer: Callable[..., Any]
    reader: Callable[[Path], Any]
    suffix: str
    example_input: Callable[[], Any]
    input_shape: Shape
    encoded_shape: Shape
    tiny_config: Callable[[], dict]
    encode: Callable[[Any, Any], Any] = default_encode
    decode: Callable[[Any, Any], Any] = default_decode
    modality_id: int | None = None
    components: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    requires: tuple[str, ...] = ()


    @property
    def summary(self) -> str:
        """One line for ``multimodal list specs``."""
        return (f"{self.tokenizer or 'text ids'} -> {self.decoder}; {self.task} writes "
                f"{self.suffix}")


_CALLABLES = ("modality", "generate", "writer", "reader", "example_input", "tiny_config",
              "encode", "decode")
_NAMES = ("name", "decoder", "task", "suffix")


def spec_problems(spec: Any) -> list[str]:
    """What is missing or wrong in ``spec``, without building anything heavier than its
    example input (empty when it is complete)."""
    if not isinstance(spec, ModalitySpec):
        return [f"expected a multimodal.plugins.ModalitySpec, got {type(spec).__name__}"]
    problems = []
    for name in _NAMES:
        if not isinstance(getattr(spec, name), str) or not getattr(spec, name):
            problems.append(f"{name}: missing (a non-empty string)")
    if spec.tokenizer is not None and (not isinstance(spec.tokenizer, str) or not spec.tokenizer):
        problems.append("tokenizer: a registered tokenizer name, or None for text ids")
    for name in _CALLABLES:
        if not callable(getattr(spec, name)):
            problems.append(f"{name}: missing (a callable; see ModalitySpec)")
    if isinstance(spec.suffix, str) and spec.suffix and not spec.suffix.startswith("."):
        problems.append(f"suffix: {excerpt(spec.suffix)} should start with '.', e.g. '.png'")
    for name in ("input_shape", "encoded_shape"):
        shape = getattr(spec, name)
        if not isinstance(shape, tuple) or not all(
                d is None or (isinstance(d, int) and not isinstance(d, bool) and d > 0)
                for d in shape):
            problems.append(f"{name}: {excerpt(shape)} is not a shape (a tuple of positive ints, "
                            "None for a free axis)")
    if spec.modality_id is not None and (not isinstance(spec.modality_id, int)
                                         or spec.modality_id < 0):
        problems.append(f"modality_id: {excerpt(spec.modality_id)} is not a non-negative int")
    if not isinstance(spec.components, Mapping) or not all(
            isinstance(v, Mapping) for v in spec.components.values()):
        problems.append("components: a mapping {kind: {name: object}}, e.g. "
                        "{'decoders': {'stroke_head': StrokeHead}}")
    if problems or not callable(spec.example_input):
        return problems
    try:
        example = spec.example_input()
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return [f"example_input() failed: {type(exc).__name__}: {clip(str(exc))}"]
    actual = shape_of(example)
    if not shape_matches(actual, spec.input_shape):
        problems.append(f"example_input() has shape {actual}, but input_shape says "
                        f"{spec.input_shape}")
    return problems


def shape_of(value: Any) -> tuple:
    """The shape of a tensor or array; ``()`` for text and scalars."""
    shape = getattr(value, "shape", None)
    return tuple(int(d) for d in shape) if shape is not None else ()


def shape_matches(actual: tuple, declared: tuple) -> bool:
    """Whether ``actual`` fits ``declared`` (``None`` matches any size on that axis)."""
    return len(actual) == len(declared) and all(d is None or a == d
                                                for a, d in zip(actual, declared))


def register_modality(registries: Mapping[str, Any], spec: ModalitySpec) -> ModalitySpec:
    """Check ``spec`` and register it with its components.

    Args:
        registries: The ``{kind: Registry}`` mapping a plugin's ``register`` receives
            (:data:`multimodal.registry.REGISTRIES`).
        spec: The modality's spec.

    Returns:
        ``spec``.

    Raises:
        ConfigError: the spec is incomplete or wrong (every problem listed; nothing is
            registered), it names a decoder, tokenizer or pipeline that neither it nor the
            registries hold, or its ``modality_id`` is taken.
        DuplicateRegistrationError: one of its names is already taken (names both owners).
        ValueError: one of its names is not snake_case.

    Nothing of a spec that fails, here or half-way through registering, stays registered.
    """
    problems = spec_problems(spec)
    if problems:
        label = getattr(spec, "name", None) or "?"
        raise ConfigError([f"modality spec '{label}': {p}" for p in problems])
    kinds = dict(spec.components)
    unknown_kinds = [k for k in kinds if k not in registries]
    if unknown_kinds:
        raise ConfigError([f"modality spec '{spec.name}': components.{k}: not a registry "
                           f"kind; kinds: {', '.join(registries)}" for k in unknown_kinds])
    for kind, needed in (("decoders", spec.decoder), ("tokenizers", spec.tokenizer),
                         ("pipelines", spec.task)):
        if needed is None or needed in kinds.get(kind, {}):
            continue
        if needed not in registries[kind]:
            raise ConfigError(f"modality spec '{spec.name}': {kind} has no '{needed}'; "
                              f"register it first or list it in components.{kind}")
    if spec.modality_id is not None:
        taken = modality_ids(registries)
        holder = taken.get(spec.modality_id)
        if holder is not None and holder != spec.name:
            raise ConfigError(f"modality spec '{spec.name}': modality_id {spec.modality_id} is "
                              f"already used by '{holder}'; free ids: "
                              f"{free_modality_ids(taken)}")
    owner = f"{getattr(spec.modality, '__module__', '?')} (modality spec '{spec.name}')"
    # Refuse a taken name before registering anything, so a refused spec leaves no trace.
    planned = [(kind, name, obj) for kind, entries in kinds.items()
               for name, obj in entries.items()]
    planned.append(("modalities", spec.name, spec.modality))
    planned.append(("specs", spec.name, spec))
    seen: dict[tuple[str, str], Any] = {}
    for kind, name, obj in planned:
        registries[kind].check_name(name)  # raises ValueError for a name no config can say
        registries[kind].check_free(name, obj, owner=owner)  # raises, naming both owners
        if seen.setdefault((kind, name), obj) is not obj:
            raise ConfigError(f"modality spec '{spec.name}' registers two different "
                              f"{kind} under '{name}' (components.{kind} and the spec itself)")
    with all_or_nothing(registries):  # all of the spec or, if one fails, none of it
        for kind, name, obj in planned:
            registries[kind].register(name, obj, owner=owner if kind == "specs" else None)
    return spec


def modality_ids(registries: Mapping[str, Any] | None = None) -> dict[int, str]:
    """Backbone modality-type ids in use: the built-in ones and those of registered specs."""
    taken = {i: name for name, i in MODALITY_IDS.items()}
    if registries is not None:
        for entry in registries["specs"].entries():
            if entry.obj.modality_id is not None:
                taken.setdefault(entry.obj.modality_id, entry.name)
    return taken


def free_modality_ids(taken: dict[int, str], limit: int = 8) -> str:
    free = [str(i) for i in range(limit) if i not in taken]
    return ", ".join(free) or f"none below {limit} (raise backbone.num_modalities)"

