"""Nothing lost, nothing silent: config files of any size or shape, and plugins that fail in
any way, each end in one bounded message while everything else keeps working."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from multimodal import cli
from multimodal.config import (MAX_CONFIG_BYTES, MAX_DEPTH, MAX_KEY_CHARS, apply_overrides,
                               dump_yaml, load_config, parse_yaml, validate_config)
from multimodal.errors import EXCERPT_CHARS, ConfigError, excerpt
from multimodal.registry import (REGISTRIES, load_plugins, plugin_failures,
                                 restored_registries)

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
FORTUNES = CONFIGS / "text_fortunes.yaml"
# A message may quote a value in part; anything longer than this quoted whole is a bug.
BOUND = 2000


def _error(call, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert len(message) < BOUND, message[:300]
    return message


def _write(tmp_path, text: str | bytes, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# -- excerpt -------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["x" * 10_000, list(range(10_000)), {"k": "v" * 10_000}])
def test_excerpt_is_bounded_and_marks_the_cut(value):
    text = excerpt(value)
    assert text.endswith("...") and len(text) == EXCERPT_CHARS + 3
    assert text.startswith(repr(value)[:20])


def test_excerpt_of_a_short_value_is_its_repr_and_of_an_unprintable_one_its_type():
    assert excerpt("lm_head") == "'lm_head'"
    assert excerpt([1, 2]) == "[1, 2]"
    assert excerpt(10 ** 5000) == f"<int of {(10 ** 5000).bit_length()} bits>"

    class Broken:
        def __repr__(self):
            raise RuntimeError("no repr")

    assert excerpt(Broken()) == "<Broken>"


# -- sizes ---------------------------------------------------------------------------------------
def test_a_file_above_the_limit_is_refused_before_parsing_naming_size_and_limit(tmp_path):
    path = _write(tmp_path, "seed: 0\n# " + "x" * MAX_CONFIG_BYTES + "\n")
    message = _error(load_config, path)
    assert f"is {path.stat().st_size} bytes" in message
    assert f"limit of {MAX_CONFIG_BYTES} bytes (1.0 MiB)" in message


def test_text_above_the_limit_is_refused_by_parse_yaml():
    message = _error(parse_yaml, "a: " + "x" * MAX_CONFIG_BYTES, "note.yaml")
    assert "note.yaml" in message and str(MAX_CONFIG_BYTES) in message


def test_a_huge_override_value_is_refused_and_the_other_overrides_still_reported():
    message = _error(load_config, FORTUNES, ["train.lr=" + "1" * (MAX_CONFIG_BYTES + 1),
                                             "no_equals_sign" + "z" * 5000])
    assert "2 config errors" in message
    assert "override train.lr" in message and str(MAX_CONFIG_BYTES) in message
    assert "'no_equals_signzzz" in message and "... is not of the form" in message


# -- shapes --------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100_000])
def test_nesting_deeper_than_the_limit_is_a_config_error_not_recursion(tmp_path, depth):
    path = _write(tmp_path, "train: {freeze: " + "[" * depth + "]" * depth + "}\n")
    message = _error(load_config, path)
    assert f"nests deeper than {MAX_DEPTH} levels" in message and "config.yaml:1:" in message


def test_nesting_up_to_the_limit_parses():
    text = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    value = parse_yaml(text)
    for _ in range(MAX_DEPTH - 1):
        value = value[0]
    assert value == []


def test_block_nesting_is_counted_like_flow_nesting(tmp_path):
    text = "".join("  " * i + f"k{i}:\n" for i in range(MAX_DEPTH + 1))
    text += "  " * (MAX_DEPTH + 1) + "x: 1\n"
    assert f"nests deeper than {MAX_DEPTH}" in _error(load_config, _write(tmp_path, text))


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):  # 9 ** 9 strings once expanded
        prev, name = chr(96 + i), chr(97 + i)
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    message = _error(load_config, _write(tmp_path, "\n".join(lines) + "\n"))
    assert "alias '*a'" in message and "config.yaml:2:" in message
    assert "not accepted" in message


def test_an_alias_in_an_override_is_refused_too():
    message = _error(load_config, FORTUNES, ["train.freeze=[&a [x], *a]"])
    assert "alias '*a'" in message and "override train.freeze" in message


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")) + sorted(
    (CONFIGS.parent / "multimodal" / "tasks").glob("*.yaml")) + [
    CONFIGS.parent / "multimodal" / "assets" / "joint" / "config.yaml"],
    ids=lambda p: p.name)
def test_shipped_yaml_files_use_no_alias_and_stay_within_the_limits(path):
    parse_yaml(path.read_text(encoding="utf-8"), str(path))


def test_dump_yaml_writes_a_shared_value_twice_so_it_reads_back():
    shared = [1, 2]
    assert parse_yaml(dump_yaml({"a": shared, "b": shared})) == {"a": [1, 2], "b": [1, 2]}


def test_non_string_keys_are_each_reported_and_nothing_crashes(tmp_path):
    path = _write(tmp_path, "task: text-generation\nbackbone: {type: transformer}\n"
                            "decoders: {1: {type: lm_head}, text: {type: lm_head}}\n"
                            "train: {2.5: 3, null: 4}\n")
    message = _error(load_config, path)
    assert "a key of 'decoders' is 1 (int); keys are names (strings)" in message
    assert "a key of 'train' is 2.5 (float)" in message
    assert "a key of 'train' is None (NoneType)" in message


def test_a_huge_key_is_refused_and_quoted_in_part(tmp_path):
    key = "k" * 50_000
    # "? key" is YAML's explicit key: a plain "key: 1" stops at 1024 characters
    message = _error(load_config, _write(tmp_path, f"task: text-generation\n? {key}\n: 1\n"))
    assert f"50000 characters long (the limit is {MAX_KEY_CHARS})" in message
    assert "'kkkkk" in message and "..." in message


def test_a_config_built_in_python_of_any_depth_or_holding_itself_is_a_config_error():
    deep: dict = {}
    node = deep
    for _ in range(10_000):
        node["a"] = node = {}
    assert "nests deeper than" in _error(validate_config, deep)
    loop: dict = {}
    loop["train"] = loop
    assert "nests deeper than" in _error(validate_config, loop)


def test_an_override_key_deeper_than_the_limit_is_refused():
    message = _error(apply_overrides, {}, [".".join(["a"] * 10_000) + "=1"])
    assert f"more than {MAX_DEPTH} parts" in message


@pytest.mark.parametrize("content, expected", [
    (os.urandom(4096) + b"\xff\xfe", "is not UTF-8 text"),
    ("seed: caf\xe9\n".encode("latin-1"), "is not UTF-8 text"),
    (b"seed: \x00\x01\x02\n", "special characters are not allowed"),
    ("seed: " + "9" * 10_000 + "\n", "cannot be read"),  # above Python's int digit limit
    ("a: !!python/object:os.system x\n", "could not determine a constructor"),
])
def test_junk_is_one_bounded_config_error(tmp_path, content, expected):
    assert expected in _error(load_config, _write(tmp_path, content))


def test_a_directory_is_refused(tmp_path):
    (tmp_path / "dir.yaml").mkdir()
    assert "(it is a directory)" in _error(load_config, tmp_path / "dir.yaml")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    os.mkfifo(tmp_path / "pipe.yaml")  # reading it would block for ever
    assert "is not a regular file" in _error(load_config, tmp_path / "pipe.yaml")


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero here")
def test_a_device_is_refused_without_reading_it():
    assert "is not a regular file" in _error(load_config, "/dev/zero")


def test_a_base_file_that_is_a_device_or_a_nul_name_is_refused(tmp_path):
    path = _write(tmp_path, "base: /dev/zero\n")
    assert "is not a regular file" in _error(load_config, path)
    assert "embedded null byte" in _error(load_config, _write(tmp_path, 'base: "a\\0b"\n'))


def test_base_files_referenced_past_the_budget_are_refused(tmp_path):
    # Each file names the next 8 times: 8 ** 4 reads without a budget.
    for level in range(4):
        _write(tmp_path, f"base: [{', '.join([f'l{level + 1}.yaml'] * 8)}]\n", f"l{level}.yaml")
    _write(tmp_path, "seed: 0\n", "l4.yaml")
    assert "more than 64 base: files" in _error(load_config, tmp_path / "l0.yaml",
                                                validate=False)


def test_a_task_file_goes_through_the_same_limits(tmp_path):
    from multimodal.pipelines.composed import read_task_file

    (tmp_path / "task.yaml").mkdir()
    assert "task file not found" in _error(read_task_file, tmp_path / "task.yaml")
    path = _write(tmp_path, "task: x\nsteps: &s {a: 1}\ncombine: *s\n", "t.yaml")
    assert "alias '*s'" in _error(read_task_file, path)


# -- bounded messages ------------------------------------------------------------------------
HUGE = "q" * 100_000


@pytest.mark.parametrize("override", [
    f"task={HUGE}",
    f"seed={HUGE}",
    f"train.device={HUGE}",
    f"train.max_steps=[{', '.join(['1'] * 20_000)}]",
    f"train.loss_weights.text={HUGE}",
    f"train.sampling.text=[{HUGE}]",
    f"train.lora.rank={HUGE}",
    f"init_from={{from: {HUGE}, take: 3}}",
    f"init_from=[{{from: a, skip: {HUGE}}}]",
    f"backbone={HUGE}",
    f"backbone.type={HUGE}",
    f"backbone.depth={HUGE}",
    f"decoders.text={HUGE}",
    f"train.lora={HUGE}",
    f"out_dir=[{HUGE}]",
])
def test_a_huge_bad_value_is_quoted_in_part_only(override):
    message = _error(load_config, FORTUNES, [override])
    assert "q" * (EXCERPT_CHARS + 1) not in message and "1, 1, " * 100 not in message
    assert "..." in message


def test_many_problems_are_counted_past_the_listed_ones(tmp_path):
    keys = "".join(f"unknown_{i}: 1\n" for i in range(500))
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, keys))
    message = str(info.value)
    assert message.startswith("502 config errors") and message.endswith("\n  ... and 402 more")
    assert len(info.value.problems) == 502 and message.count("\n  - ") == 100


def test_the_cli_reports_a_typo_in_one_message(capsys):
    code = cli.main(["train", str(CONFIGS / "text_to_image_fashion.yaml"),
                     "train.loss_weights.imgae=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "'train.loss_weights.imgae': no such modality (did you mean 'image'?)" in err
    assert "Traceback" not in err


# -- plugins ---------------------------------------------------------------------------------
class PluginCrash(BaseException):
    """Not an Exception: what a careless plugin might raise."""


def _half_then(error: BaseException):
    """A plugin ``register`` that registers in three registries, then raises ``error``."""

    def register(registries):
        registries["decoders"].register("half_head", type("HalfHead", (), {}))
        registries["losses"].register("half_loss", lambda: None)
        registries["decoders"].unregister("lm_head")  # even a removal is undone
        raise error

    return register


def _ep(name, load):
    return SimpleNamespace(name=name, value=f"{name}_pkg:register", load=load)


@pytest.fixture
def registries(monkeypatch):
    monkeypatch.delenv("MULTIMODAL_STRICT_PLUGINS", raising=False)
    failures = dict(plugin_failures)
    with restored_registries() as registries:
        yield registries
    plugin_failures.clear()
    plugin_failures.update(failures)


ERRORS = [SystemExit(3), SystemExit(), PluginCrash("custom"), RuntimeError("boom"),
          ImportError("no module named 'dep'"), GeneratorExit()]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_a_plugin_failing_half_way_is_skipped_whole(registries, error):
    before = {kind: registry.snapshot() for kind, registry in registries.items()}
    with pytest.warns(RuntimeWarning, match=f"plugin 'half' .* skipped: {type(error).__name__}"):
        load_plugins([_ep("half", lambda: _half_then(error))])
    assert {kind: registry.snapshot() for kind, registry in registries.items()} == before
    assert "lm_head" in registries["decoders"] and "half_head" not in registries["decoders"]
    assert plugin_failures["half"].startswith(type(error).__name__)


def test_sys_exit_in_a_plugin_names_the_exit_code(registries):
    with pytest.warns(RuntimeWarning, match="SystemExit: exit code 3"):
        load_plugins([_ep("half", lambda: _half_then(SystemExit(3)))])


@pytest.mark.parametrize("error", [SystemExit(1), PluginCrash("x"), SyntaxError("bad syntax"),
                                   ModuleNotFoundError("No module named 'x'")],
                         ids=lambda e: type(e).__name__)
def test_an_entry_point_that_fails_at_import_is_skipped(registries, error):
    def load():
        registries["decoders"].register("import_time_head", object)  # a decorator at import
        raise error

    good = []
    with pytest.warns(RuntimeWarning, match=f"plugin 'bad' .* skipped: {type(error).__name__}"):
        load_plugins([_ep("bad", load), _ep("good", lambda: good.append)])
    assert "import_time_head" not in registries["decoders"]
    assert good == [REGISTRIES] and "good" not in plugin_failures


def test_keyboard_interrupt_is_not_swallowed_but_still_undone(registries):
    with pytest.raises(KeyboardInterrupt):
        load_plugins([_ep("half", lambda: _half_then(KeyboardInterrupt()))])
    assert "half_head" not in registries["decoders"] and "lm_head" in registries["decoders"]


@pytest.mark.parametrize("error", [SystemExit(2), PluginCrash("custom")],
                         ids=lambda e: type(e).__name__)
def test_strict_plugins_raise_anything_and_leave_nothing(registries, monkeypatch, error):
    monkeypatch.setenv("MULTIMODAL_STRICT_PLUGINS", "1")
    with pytest.raises(type(error)):
        load_plugins([_ep("half", lambda: _half_then(error))])
    assert "half_head" not in registries["decoders"] and "half_loss" not in registries["losses"]


def test_a_huge_plugin_error_is_bounded_in_the_warning(registries):
    with pytest.warns(RuntimeWarning) as record:
        load_plugins([_ep("half", lambda: _half_then(RuntimeError("e" * 100_000)))])
    assert len(str(record[0].message)) < BOUND


def test_a_spec_failing_half_way_through_registering_leaves_nothing(registries):
    from dataclasses import replace

    from multimodal.plugins import register_modality
    from multimodal.registry import specs

    spec = replace(specs.get("text"), name="notes", modality_id=None,
                   components={"losses": {"notes_loss": object, "Bad Name": object}})
    with pytest.raises(ValueError, match="snake_case"):
        register_modality(registries, spec)
    assert "notes_loss" not in registries["losses"] and "notes" not in registries["specs"]


def test_list_prints_the_failed_plugin_and_everything_else(registries, monkeypatch, capsys):
    from multimodal import registry

    monkeypatch.setattr(registry, "_loaded", False)  # load the plugins again, as at start-up
    monkeypatch.setattr(registry, "installed_entry_points",
                        lambda group: [_ep("exiting", lambda: _half_then(SystemExit(4)))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(["list"]) == 0
    out, err = capsys.readouterr()
    assert "plugin exiting failed to load: SystemExit: exit code 4" in err
    assert "lm_head" in out and "half_head" not in out and "text-generation" in out


def test_generation_works_after_a_plugin_exits_half_way(registries, tmp_path):
    from multimodal.testing import tiny_pipeline

    with pytest.warns(RuntimeWarning, match="plugin 'half'"):
        load_plugins([_ep("half", lambda: _half_then(SystemExit(1)))])
    pipe = tiny_pipeline("text-generation", tmp_path)
    out = pipe("the", max_new_tokens=4, seed=0)
    assert len(out.samples) == 1 and isinstance(out.samples[0], str)
    assert sys.exc_info() == (None, None, None)


def test_a_key_given_twice_is_refused_not_silently_dropped(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("base: configs/text_tiny.yaml\ntrain: {lr: 0.5}\nseed: 1\ntrain: {max_steps: 1}\n")
    with pytest.raises(ConfigError, match=r"dup.yaml:4:1: key 'train' is given twice.*line 2"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="given twice"):
        load_config("configs/text_tiny.yaml", ["train={lr: 0.5, lr: 0.1}"])
