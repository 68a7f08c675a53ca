import warnings
from types import SimpleNamespace

import pytest

from multimodal import list_components
from multimodal.errors import DuplicateRegistrationError, UnknownComponentError
from multimodal.registry import KINDS, REGISTRIES, Registry, get_registry, load_plugins
from multimodal.testing import TINY


def test_every_kind_has_a_registry():
    assert set(REGISTRIES) == set(KINDS)
    assert "transformer" in list_components("backbones")["backbones"]


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in (
    "backbones", "tokenizers", "decoders", "schedulers", "datasets", "vocoders")])
def test_every_registered_component_has_a_tiny_factory(kind):
    """Every built-in component of the kinds that tests/test_components.py does not build and
    run (it builds every backbone, tokenizer, decoder, scheduler, dataset and vocoder from its
    tiny settings); pipelines, modalities and specs run end to end in test_plugins.py's
    check_modality. Installed plugins test their own, with check_modality."""
    builtin = {e.name for e in get_registry(kind).entries()
               if e.owner.startswith("multimodal.") or e.owner.endswith("(composed task)")}
    missing = builtin - set(TINY[kind])
    assert not missing, f"add tiny kwargs for {kind} {sorted(missing)} to multimodal/testing.py"


def test_unknown_name_suggests_closest_and_lists_registered():
    with pytest.raises(UnknownComponentError) as info:
        get_registry("backbones").get("transformr")
    message = str(info.value)
    assert "did you mean 'transformer'" in message
    assert "registered backbones: hf_causal_lm, transformer" in message


def test_unknown_kind():
    with pytest.raises(UnknownComponentError, match="did you mean 'decoders'"):
        get_registry("decoder")


def test_duplicate_registration_names_both_owners():
    registry = Registry("widgets")

    @registry.register("thing")
    class First:
        pass

    registry.register("thing", First)  # the same object again is harmless

    with pytest.raises(DuplicateRegistrationError) as info:
        @registry.register("thing")
        class Second:
            pass

    assert "First" in str(info.value) and "Second" in str(info.value)


def test_names_must_be_snake_case():
    with pytest.raises(ValueError, match="snake_case"):
        Registry("widgets").register("Bad Name", object())


def _entry_point(name, load):
    return SimpleNamespace(name=name, value=f"{name}_pkg:register", load=load)


def test_broken_plugin_warns_and_core_keeps_working(monkeypatch):
    def load():
        raise ImportError("no module named 'missing_dep'")

    monkeypatch.delenv("MULTIMODAL_STRICT_PLUGINS", raising=False)
    with pytest.warns(RuntimeWarning, match="plugin 'broken'.*missing_dep"):
        load_plugins([_entry_point("broken", load)])
    assert "transformer" in get_registry("backbones")


def test_strict_plugins_raise(monkeypatch):
    def load():
        raise ImportError("boom")

    monkeypatch.setenv("MULTIMODAL_STRICT_PLUGINS", "1")
    with pytest.raises(ImportError, match="boom"):
        load_plugins([_entry_point("broken", load)])


def test_plugin_register_function_receives_registries():
    seen = {}

    def register(registries):
        seen.update(registries)
        registries["losses"].register("plugin_test_loss", lambda: None, owner="plugin test")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_plugins([_entry_point("good", lambda: register)])
    try:
        assert set(seen) == set(KINDS)
        assert get_registry("losses").entry("plugin_test_loss").owner == "plugin test"
    finally:
        get_registry("losses").unregister("plugin_test_loss")


def test_a_builtin_that_fails_to_import_is_raised_at_every_lookup(monkeypatch):
    from multimodal import registry

    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "_builtin_failure", None)
    monkeypatch.setattr(registry, "_BUILTIN_MODULES",
                        ("multimodal.backbone.transformer", "multimodal.no_such_builtin"))
    for _ in range(2):  # not "unknown component" from a half-filled registry the second time
        with pytest.raises(registry.BuiltinImportError, match="multimodal.no_such_builtin") as info:
            get_registry("decoders").get("lm_head")
        assert isinstance(info.value.__cause__, ModuleNotFoundError)
    with pytest.raises(registry.BuiltinImportError):
        get_registry("backbones").names()
