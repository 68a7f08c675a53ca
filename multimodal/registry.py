"""Registries that name every component.

One :class:`Registry` per kind of component (``backbones``, ``tokenizers``, ``decoders``,
``schedulers``, ``datasets``, ``pipelines``, ``modalities``, ``losses``, ``specs``: each
modality's :class:`multimodal.plugins.ModalitySpec`, ``combiners``, which compose
pipelines' outputs in task files, and ``vocoders``, the audio tokenizer's mel-to-waveform
models). A component registers
itself with a decorator and a short snake_case name::

    from multimodal.registry import decoders

    @decoders.register("lm_head")
    class LMHead(nn.Module): ...

Configs then name it as ``type: lm_head`` inside the slot of that kind; a config can never name
a free import path, so a YAML file cannot run arbitrary code.

Built-in components live in the modules listed in ``_BUILTIN_MODULES`` and are imported on the
first lookup, which keeps ``import multimodal`` cheap. A built-in module that fails to import
is a broken installation: its error is raised again (naming the module) on every later lookup,
never reported as an unknown component of a half-filled registry. Third-party plugins are
found through the entry-point group ``multimodal.plugins``; each entry point names a ``register(registries)``
function that receives the mapping ``{kind: Registry}``. A plugin that fails to import or to
register (any error, even ``sys.exit()``, but Ctrl-C) is skipped whole, nothing it registered
kept, with one warning naming it (or an error when ``MULTIMODAL_STRICT_PLUGINS=1``); the core
keeps working.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import re
import threading
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points as installed_entry_points
from typing import Any, Callable, Iterator

from multimodal.errors import (DuplicateRegistrationError, UnknownComponentError, clip,
                               did_you_mean, excerpt)

KINDS = (
    "backbones",
    "tokenizers",
    "decoders",
    "schedulers",
    "datasets",
    "pipelines",
    "modalities",
    "losses",
    "specs",
    "combiners",
    "vocoders",
)

# Modules that register the built-in components; imported on first lookup.
_BUILTIN_MODULES = (
    "multimodal.backbone.transformer",
    "multimodal.backbone.hf",
    "multimodal.modalities.text",
    "multimodal.data.text",
    "multimodal.pipelines.text_generation",
    "multimodal.modalities.image",
    "multimodal.data.images",
    "multimodal.data.emoji",
    "multimodal.pipelines.text_to_image",
    "multimodal.pipelines.image_to_text",
    "multimodal.modalities.video",
    "multimodal.data.video",
    "multimodal.pipelines.text_to_video",
    "multimodal.modalities.audio",
    "multimodal.data.audio",
    "multimodal.data.asterisk",
    "multimodal.pipelines.text_to_audio",
    # Each modality's ModalitySpec, once its components are registered.
    "multimodal.specs.text",
    "multimodal.specs.image",
    "multimodal.specs.caption",
    "multimodal.specs.video",
    "multimodal.specs.audio",
    "multimodal.pipelines.composed",  # task files, once every pipeline they name is there
)

PLUGIN_GROUP = "multimodal.plugins"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_\-]*$")


@dataclass(frozen=True)
class Entry:
    """One registered component: its name, the object, and where it was defined."""

    name: str
    obj: Any
    owner: str  # "module:qualname", or the plugin's name for plugin components

    @property
    def summary(self) -> str:
        if isinstance(getattr(self.obj, "summary", None), str):
            return self.obj.summary
        doc = inspect.getdoc(self.obj) or ""
        return doc.strip().splitlines()[0] if doc else ""


class Registry:
    """A name -> component mapping for one kind of component.

    Args:
        kind: The kind this registry holds, e.g. ``"decoders"``; used in error messages.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    # -- registration -----------------------------------------------------------------------
    def register(self, name: str, obj: Any = None, *, owner: str | None = None):
        """Register ``obj`` under ``name``; usable as ``@registry.register("name")``.

        Raises:
            ValueError: ``name`` is not snake_case (letters, digits, ``_`` or ``-``).
            DuplicateRegistrationError: a different object already holds ``name``; the message
                names both owners.
        """
        self.check_name(name)

        def decorator(target: Any) -> Any:
            self.check_free(name, target, owner=owner)
            if name not in self._entries:
                self._entries[name] = Entry(name, target, owner or _owner_of(target))
            return target

        return decorator if obj is None else decorator(obj)

    # -- lookup -----------------------------------------------------------------------------
    def get(self, name: str) -> Any:
        """Return the component registered as ``name``.

        Raises:
            UnknownComponentError: no such name; the message gives the closest match and the
                registered names.
        """
        return self.entry(name).obj

    def entry(self, name: str) -> Entry:
        load_builtins()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            known = sorted(self._entries)
            raise UnknownComponentError(
                f"unknown {self._singular} {excerpt(name)}{did_you_mean(name, known)}; "
                f"registered {self.kind}: {', '.join(known) or '(none)'}"
            ) from None

    def names(self) -> list[str]:
        load_builtins()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        load_builtins()
        return [self._entries[n] for n in sorted(self._entries)]

    def __contains__(self, name: object) -> bool:
        load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def check_name(self, name: Any) -> None:
        """Raise ``ValueError`` when ``name`` is not a lower-case snake_case string."""
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(
                f"cannot register {excerpt(name)} in {self.kind}: names are lower-case snake_case "
                "(letters, digits, '_' or '-', starting with a letter)"
            )

    def check_free(self, name: str, obj: Any, *, owner: str | None = None) -> None:
        """Raise :class:`DuplicateRegistrationError` (naming both owners) when ``name`` is
        held by an object other than ``obj``; registers nothing."""
        existing = self._entries.get(name)
        if existing is not None and existing.obj is not obj and not _equal(existing.obj, obj):
            raise DuplicateRegistrationError(
                f"{self.kind} name '{name}' is already taken by {existing.owner}; "
                f"refusing to register {owner or _owner_of(obj)} under the same name")

    def snapshot(self) -> dict[str, Entry]:
        """A copy of the entries, for :meth:`restore` (loads nothing)."""
        return dict(self._entries)

    def restore(self, saved: dict[str, Entry]) -> None:
        """Put the entries back as they were at :meth:`snapshot`."""
        self._entries.clear()
        self._entries.update(saved)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests and plugin reloading)."""
        self._entries.pop(name, None)

    @property
    def _singular(self) -> str:
        return self.kind[:-1] if self.kind.endswith("s") else self.kind

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._entries)})"


def _equal(a: Any, b: Any) -> bool:
    """Equal values (two equal specs), never raising."""
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - objects whose == fails are not equal
        return False


def _owner_of(obj: Any) -> str:
    module = getattr(obj, "__module__", "?")
    qualname = getattr(obj, "__qualname__", type(obj).__name__)
    return f"{module}:{qualname}"


REGISTRIES: dict[str, Registry] = {kind: Registry(kind) for kind in KINDS}
backbones = REGISTRIES["backbones"]
tokenizers = REGISTRIES["tokenizers"]
decoders = REGISTRIES["decoders"]
schedulers = REGISTRIES["schedulers"]
datasets = REGISTRIES["datasets"]
pipelines = REGISTRIES["pipelines"]
modalities = REGISTRIES["modalities"]
losses = REGISTRIES["losses"]
specs = REGISTRIES["specs"]
combiners = REGISTRIES["combiners"]
vocoders = REGISTRIES["vocoders"]


def get_registry(kind: str) -> Registry:
    """Return the registry of ``kind`` (one of :data:`KINDS`).

    Raises:
        UnknownComponentError: ``kind`` is not a registry kind.
    """
    try:
        return REGISTRIES[kind]
    except KeyError:
        raise UnknownComponentError(
            f"unknown component kind '{kind}'{did_you_mean(kind, KINDS)}; "
            f"kinds: {', '.join(KINDS)}"
        ) from None


@contextlib.contextmanager
def restored_registries() -> Iterator[dict[str, Registry]]:
    """Yield :data:`REGISTRIES` (built-ins loaded) and put every registry back as it was on
    exit, so a test can register plugins or specs without leaking them into other tests."""
    load_builtins()
    saved = {kind: registry.snapshot() for kind, registry in REGISTRIES.items()}
    try:
        yield REGISTRIES
    finally:
        for kind, entries in saved.items():
            REGISTRIES[kind].restore(entries)


@contextlib.contextmanager
def all_or_nothing(registries: dict[str, Registry] | None = None) -> Iterator[None]:
    """Undo every registration made inside the block when it raises anything (an exception,
    ``SystemExit``, ``KeyboardInterrupt``), then let it propagate: a plugin or spec that fails
    half-way leaves no component behind. Loads nothing.

    Args:
        registries: ``{kind: Registry}`` (default: :data:`REGISTRIES`).
    """
    registries = REGISTRIES if registries is None else registries
    saved = {kind: registry.snapshot() for kind, registry in registries.items()}
    try:
        yield
    except BaseException:
        for kind, registry in registries.items():
            registry.restore(saved[kind])
        raise


# -- built-ins and plugins ------------------------------------------------------------------
_loaded = False
_loading = threading.RLock()
_builtin_failure: tuple[str, BaseException] | None = None  # (module, error) of a failed import
plugin_failures: dict[str, str] = {}


class BuiltinImportError(ImportError):
    """A module of built-in components failed to import (the installation is broken)."""


def load_builtins() -> None:
    """Import the built-in component modules and the installed plugins, once.

    Raises:
        BuiltinImportError: a built-in module failed to import, now or at an earlier lookup;
            it names the module and is chained to the original error.
    """
    global _loaded, _builtin_failure
    if not _loaded:
        with _loading:
            if not _loaded:
                _loaded = True  # set first: the modules below look components up, calling us back
                for module in _BUILTIN_MODULES:
                    try:
                        importlib.import_module(module)
                    except Exception as exc:  # recorded, raised below and at every lookup
                        _builtin_failure = (module, exc)
                        break
                else:
                    load_plugins()
    if _builtin_failure is not None:
        module, exc = _builtin_failure
        raise BuiltinImportError(f"the built-in components of {module} failed to import, so "
                                 f"the registries are incomplete: {type(exc).__name__}: "
                                 f"{exc}") from exc


def load_plugins(entry_points: list | None = None) -> None:
    """Call ``register(REGISTRIES)`` for every ``multimodal.plugins`` entry point.

    A plugin that fails, at import (``ep.load()``: a missing dependency, a syntax error, a
    ``sys.exit()`` at import) or in its ``register`` (any exception, ``SystemExit`` or other
    ``BaseException`` but ``KeyboardInterrupt``), is skipped whole: whatever it registered
    before failing is removed again (:func:`all_or_nothing`), it gives one warning naming it
    and the error, and it is listed in :data:`plugin_failures` (``multimodal list`` prints
    them); every other component keeps working. With the environment variable
    ``MULTIMODAL_STRICT_PLUGINS=1`` the failure is raised instead (still undone).

    Args:
        entry_points: The entry points to load (for tests); default: the installed ones.
    """
    if entry_points is None:
        entry_points = list(installed_entry_points(group=PLUGIN_GROUP))
    strict = os.environ.get("MULTIMODAL_STRICT_PLUGINS", "") not in ("", "0")
    for ep in entry_points:
        name = str(getattr(ep, "name", "?"))
        try:
            with all_or_nothing():
                register: Callable = ep.load()
                register(REGISTRIES)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - a broken plugin must not break the core
            error = describe_failure(exc)
            plugin_failures[name] = error
            if strict:
                raise
            warnings.warn(
                f"multimodal plugin '{clip(name)}' ({clip(str(getattr(ep, 'value', '?')))}) "
                f"failed to load and is skipped: {error}",
                RuntimeWarning,
                stacklevel=2,
            )
        else:
            plugin_failures.pop(name, None)


def describe_failure(exc: BaseException) -> str:
    """``"TypeName: message"`` of an error (bounded), never raising: ``SystemExit: exit
    code 3`` for ``sys.exit(3)``."""
    try:
        if isinstance(exc, SystemExit):
            code = exc.code
            message = code if isinstance(code, str) else f"exit code {excerpt(code)}"
        else:
            message = str(exc)
    except Exception:  # noqa: BLE001 - an error whose str() fails
        message = ""
    name = type(exc).__name__
    return f"{name}: {clip(message)}" if message else name
