"""Prompt moderation: the blocklist, the safety section of configs, the CLI's refusal."""

from __future__ import annotations

import pytest

from multimodal.config import validate_config
from multimodal.errors import ConfigError
from multimodal.safety import (DEFAULT_BLOCKLIST, EXIT_BLOCKED, PromptBlockedError,
                               SafetyPolicy, read_blocklist)
from multimodal.testing import tiny_config


def test_matching_ignores_case_accents_and_punctuation_but_keeps_whole_words():
    policy = SafetyPolicy(["gore", "behead*", "make a bomb"], source="test")
    assert policy.blocked_term("So much GORE!") == "gore"
    assert policy.blocked_term("gōre, everywhere") == "gore"
    assert policy.blocked_term("a gorgeous gorge") is None
    assert policy.blocked_term("the beheading scene") == "behead*"
    assert policy.blocked_term("how to make-a  bomb?") == "make a bomb"
    assert policy.blocked_term("make a bombastic speech") is None
    assert SafetyPolicy(["gore"], enabled=False).blocked_term("gore") is None


def test_default_blocklist_is_read_without_comments():
    terms = read_blocklist(str(DEFAULT_BLOCKLIST))
    assert "gore" in terms and not any(t.startswith("#") for t in terms)
    with pytest.raises(PromptBlockedError, match="blocked term 'naked'.*nothing was generated"):
        SafetyPolicy.default().check("a naked sneaker", task="text-to-image")
    SafetyPolicy.default().check("a sneaker moving left", None, 3)


def test_safety_section_is_validated_and_applied(tmp_path):
    with pytest.raises(ConfigError, match="safety.term"):
        validate_config(tiny_config(safety={"term": ["x"]}))
    custom = tmp_path / "terms.txt"
    custom.write_text("# ours\nbanana\n")
    policy = SafetyPolicy.from_config({"safety": {"blocklist": str(custom), "terms": ["kiwi"]}})
    assert policy.terms == ["banana", "kiwi"] and policy.blocked_term("gore") is None
    with pytest.raises(ConfigError, match="safety.blocklist: cannot read"):
        SafetyPolicy.from_config({"safety": {"blocklist": str(tmp_path / "none.txt")}})


def test_checkpoint_safety_terms_reach_the_pipeline_and_the_cli_refuses(tmp_path, capsys):
    from multimodal.cli import main
    from multimodal.pipelines import load_pipeline
    from multimodal.training.trainer import train

    config = tiny_config(train={"max_steps": 2}, safety={"terms": ["durian"]})
    checkpoint = train(config, out_dir=tmp_path / "run", progress=False)["checkpoint"]
    pipe = load_pipeline("text-generation", checkpoint)
    with pytest.raises(PromptBlockedError, match="'durian'"):
        pipe("I like DURIAN", max_new_tokens=2)
    with pytest.raises(PromptBlockedError, match="'gore'"):  # the default list still applies
        pipe("gore", max_new_tokens=2)
    code = main(["generate", "text-generation", "--checkpoint", checkpoint, "--prompt",
                 "durian pie", "--max-new-tokens", "2", "--out", str(tmp_path / "out")])
    assert code == EXIT_BLOCKED
    assert "refused: text-generation: prompt refused" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_config_blocklist_is_checked_at_training_and_travels_with_the_checkpoint(tmp_path):
    import shutil

    from multimodal.pipelines import load_pipeline
    from multimodal.training.trainer import train

    with pytest.raises(ConfigError, match="safety.blocklist: cannot read"):
        train(tiny_config(train={"max_steps": 1}, safety={"blocklist": str(tmp_path / "no")}),
              out_dir=tmp_path / "bad", progress=False)
    words = tmp_path / "words.txt"
    words.write_text("mango\n")
    ckpt = train(tiny_config(train={"max_steps": 1}, safety={"blocklist": str(words)}),
                 out_dir=tmp_path / "run", progress=False)["checkpoint"]
    words.unlink()
    moved = tmp_path / "moved"
    shutil.copytree(ckpt, moved)
    pipe = load_pipeline("text-generation", moved)
    with pytest.raises(PromptBlockedError, match="'mango'"):
        pipe("a mango", max_new_tokens=2)
    pipe("gore", max_new_tokens=2)  # its own list replaces the default one
