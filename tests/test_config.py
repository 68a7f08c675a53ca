import textwrap
from dataclasses import dataclass

import pytest

from multimodal.config import check_component, load_config, merge, validate_config
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


# -- semantic checks: every problem at once, before any work -----------------------------------
def test_semantic_problems_are_reported_with_every_other_problem(tmp_path):
    bad = GOOD.replace("train: {max_steps: 10, lr: 1e-3}", """train:
  max_steps: 10
  batch_size: 0
  device: gpu
  ema_decay: 1.5
  loss_weights: {txet: 1.0}
  sampling: {text: 2}
  lora: {rank: 0, alpha: 16, modules: "(", dropuot: 0.1}
""").replace("dim: 64", "dim: 64, dpth: 2")
    bad += "init_from: [{path: elsewhere}]\n"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, bad))
    message = str(info.value)
    for expected in ("unknown key 'backbone.dpth'",
                     "'train.batch_size' must be an integer >= 1, got 0",
                     "'train.device' is 'gpu'; accepted: 'auto', 'cpu', 'cuda'",
                     "'train.ema_decay' must be in (0, 1)",
                     "'train.loss_weights.txet': no such modality (did you mean 'text'?)",
                     "'train.sampling.text' must be a share of steps in [0, 1]",
                     "'train.lora.rank' must be an integer >= 1",
                     "'train.lora.modules' is not a regular expression",
                     "unknown key 'train.lora.dropuot' (did you mean 'train.lora.dropout'?)",
                     "init_from[0]: got {'path': 'elsewhere'}"):
        assert expected in message, expected
    assert "10 config errors" in message


def test_a_loss_weights_typo_is_reported_by_load_config_from_the_override():
    with pytest.raises(ConfigError) as info:
        load_config("configs/text_to_image_fashion.yaml", ["train.loss_weights.imgae=1"])
    message = str(info.value)
    assert "'train.loss_weights.imgae': no such modality (did you mean 'image'?)" in message
    assert "from a command-line override" in message


def test_datasets_and_tokenizer_data_are_checked_before_anything_is_built(tmp_path):
    image = {"type": "image_vae"}
    config = {"task": "text-to-image", "tokenizers": {"text": {"type": "byte_bpe"},
                                                      "image": image},
              "backbone": {"type": "transformer"},
              "decoders": {"text": {"type": "lm_head"}, "image": {"type": "latent_dit"}},
              "data": {"text": {"type": "fortunes"}}}
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    message = str(info.value)
    assert "decoders.image has no dataset" in message
    assert "tokenizers.image learns from data.image, but the config has no data.image" in message
    # resting the image decoder needs no dataset, but the VAE then has nothing to fit on ...
    config["train"] = {"sampling": {"image": 0}}
    with pytest.raises(ConfigError, match="train.sampling.image is 0 .* or take "
                                          "tokenizers.image from init_from") as info:
        validate_config(config)
    assert "has no dataset" not in str(info.value)
    # ... unless init_from gives it (known without opening the checkpoint)
    config["init_from"] = [{"from": "runs/elsewhere", "take": ["tokenizers.image"]}]
    validate_config(config)


def test_validate_config_does_not_open_init_from_checkpoints_unless_asked(tmp_path):
    config = load_config(write(tmp_path, GOOD + f"init_from: {tmp_path / 'gone'}\n"))
    calls = []

    def check(cfg):
        calls.append(cfg)
        return [("init_from", "init_from: checkpoint not found")]

    with pytest.raises(ConfigError) as info:
        validate_config({**config, "seed": "x"}, checks=[check])
    assert "checkpoint not found" in str(info.value) and "'seed' must be an integer" in str(info.value)
    assert calls


# -- the builder: nested components and dataclass arguments ------------------------------------
@dataclass
class _Stage:
    steps: int
    lr: float = 1e-3


class _Vocoder:
    def __init__(self, *, channels: int = 8):
        if channels < 1:
            raise ConfigError("channels must be >= 1")
        self.channels = channels


class _Tokenizer:
    component_args = {"vocoders": "vocoders"}

    def __init__(self, *, vocoders: dict | None = None, stages: dict[str, _Stage] | None = None,
                 schedule: _Stage | None = None):
        self.vocoders, self.stages, self.schedule = vocoders, stages, schedule

    @classmethod
    def load(cls, directory, **kwargs):
        return cls(**kwargs)


def test_nested_components_and_dataclass_arguments_are_checked_and_built(tmp_path):
    from multimodal.builders import build_component
    from multimodal.checkpoint import load_tokenizer
    from multimodal.registry import restored_registries

    with restored_registries() as registries:
        registries["vocoders"].register("test_vocoder", _Vocoder)
        registries["tokenizers"].register("test_mel", _Tokenizer)
        section = {"type": "test_mel",
                   "vocoders": {"fast": {"type": "test_vocoder", "chanels": 4},
                                "slow": {"type": "test_vocodr"}},
                   "stages": {"a": {"step": 3}}, "schedule": {"steps": "many"}}
        problems = check_component("tokenizers.audio", section, "tokenizers")
        messages = " | ".join(m for _, m in problems)
        assert ("unknown key 'tokenizers.audio.vocoders.fast.chanels' (did you mean "
                "'tokenizers.audio.vocoders.fast.channels'?)") in messages
        assert "'tokenizers.audio.vocoders.slow.type'" in messages and \
            "did you mean 'test_vocoder'" in messages
        assert ("unknown key 'tokenizers.audio.stages.a.step' (did you mean "
                "'tokenizers.audio.stages.a.steps'?)") in messages
        assert "missing required key 'tokenizers.audio.stages.a.steps'" in messages
        assert "'tokenizers.audio.schedule.steps' must be an integer" in messages

        good = {"type": "test_mel", "vocoders": {"fast": {"type": "test_vocoder", "channels": 4}},
                "stages": {"a": {"steps": 3}}}
        assert check_component("tokenizers.audio", good, "tokenizers") == []
        for tok in (build_component("tokenizers", good, "tokenizers.audio"),
                    load_tokenizer(good, tmp_path, dotted="tokenizers.audio")):
            assert isinstance(tok.vocoders["fast"], _Vocoder) and tok.vocoders["fast"].channels == 4
            assert tok.stages == {"a": {"steps": 3}}  # the plain mapping it was checked as
        # a ConfigError raised by a constructor gets the dotted key of what it builds
        broken = {**good, "vocoders": {"fast": {"type": "test_vocoder", "channels": 0}}}
        with pytest.raises(ConfigError, match=r"'tokenizers.audio.vocoders.fast' "
                                              r"\(test_vocoder\): channels must be >= 1"):
            build_component("tokenizers", broken, "tokenizers.audio")


@pytest.mark.parametrize("weight", ["-1", ".nan", ".inf"])
def test_a_negative_or_non_finite_loss_weight_is_refused(weight):
    # A negative weight trained by gradient ascent (found by a new user); NaN/inf poison it.
    with pytest.raises(ConfigError) as info:
        load_config("configs/text_tiny.yaml", [f"train.loss_weights.text={weight}"])
    assert "'train.loss_weights.text' must be a finite number >= 0" in str(info.value)
