import textwrap

import pytest

from multimodal.config import load_config, merge
from multimodal.errors import ConfigError

GOOD = """
task: text-generation
tokenizers: {text: {type: byte_bpe, vocab_size: 512}}
backbone: {type: transformer, dim: 64, depth: 2, num_heads: 4}
decoders: {text: {type: lm_head}}
data: {text: {type: fortunes}}
train: {max_steps: 10, lr: 1e-3}
"""


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_good_config_loads_and_reads_exponent_floats(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config["train"]["lr"] == pytest.approx(1e-3)
    assert isinstance(config["train"]["lr"], float)


def test_empty_and_whitespace_config(tmp_path):
    for text in ("", "   \n\n"):
        with pytest.raises(ConfigError, match="is empty"):
            load_config(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "task: text-generation\nbackbone: {type: transformer\ntrain: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{path}:" in str(info.value)
    assert "YAML syntax error" in str(info.value)


def test_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="holds a list"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_all_problems_reported_together_with_dotted_keys(tmp_path):
    bad = GOOD.replace("depth: 2", "dpth: 2").replace("max_steps: 10", "max_steps: ten")
    bad += "trian: {}\n"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, bad))
    message = str(info.value)
    assert "3 config errors" in message
    assert "unknown key 'backbone.dpth' (did you mean 'backbone.depth'?)" in message
    assert "'train.max_steps' must be an integer, got 'ten'" in message
    assert "unknown section 'trian' (did you mean 'train'?)" in message


def test_unknown_component_type(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD.replace("type: lm_head", "type: lm_haed")))
    assert "'decoders.text.type'" in str(info.value)
    assert "did you mean 'lm_head'" in str(info.value)


def test_injected_argument_cannot_be_configured(tmp_path):
    with pytest.raises(ConfigError, match="'backbone.vocab_size' is set by the builder"):
        load_config(write(tmp_path, GOOD.replace("dim: 64", "dim: 64, vocab_size: 9")))


def test_unknown_task(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'text-generation'"):
        load_config(write(tmp_path, GOOD.replace("task: text-generation", "task: text-generaton")))


def test_overrides_set_values_and_bad_overrides_are_errors(tmp_path):
    path = write(tmp_path, GOOD)
    config = load_config(path, ["train.max_steps=3", "backbone.dropout=0.1"])
    assert config["train"]["max_steps"] == 3 and config["backbone"]["dropout"] == 0.1
    with pytest.raises(ConfigError) as info:
        load_config(path, ["backbone.dpth=4"])
    assert "did you mean 'backbone.depth'" in str(info.value)
    assert "from a command-line override" in str(info.value)
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(path, ["train.max_steps"])
    with pytest.raises(ConfigError, match="is a int, not a section"):
        load_config(path, ["train.max_steps.x=1"])


def test_base_inheritance_merges_and_type_change_replaces(tmp_path):
    write(tmp_path, GOOD, "base.yaml")
    child = write(tmp_path, """
        base: base.yaml
        backbone: {depth: 3}
        data: {text: {type: text_files, paths: "*.txt"}}
    """)
    config = load_config(child)
    assert config["backbone"] == {"type": "transformer", "dim": 64, "depth": 3, "num_heads": 4}
    assert config["data"]["text"] == {"type": "text_files", "paths": "*.txt"}
    assert "base" not in config


def test_base_cycle(tmp_path):
    write(tmp_path, "base: b.yaml\n", "a.yaml")
    write(tmp_path, "base: a.yaml\n", "b.yaml")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_merge_does_not_mutate():
    base = {"a": {"b": 1}}
    out = merge(base, {"a": {"c": 2}})
    assert base == {"a": {"b": 1}} and out == {"a": {"b": 1, "c": 2}}


def test_shipped_configs_are_valid():
    from pathlib import Path

    for path in sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml")):
        load_config(path)
