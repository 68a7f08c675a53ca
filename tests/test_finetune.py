"""Fine-tuning from a checkpoint: frozen modules, LoRA adapters, and init_from that does not fit."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from multimodal.errors import CheckpointError, ConfigError
from multimodal.pipelines import load_pipeline
from multimodal.testing import tiny_config
from multimodal.checkpoint import find_checkpoint, load_checkpoint
from multimodal.training.trainer import Trainer, train

from conftest import requires_fashion_mnist


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny text model to fine-tune."""
    out = tmp_path_factory.mktemp("base")
    return train(tiny_config(train={"max_steps": 2}), out_dir=out, progress=False)["checkpoint"]


def _weights(run):
    return load_file(str(find_checkpoint(run) / "model.safetensors"))


def test_frozen_backbone_keeps_its_weights(base, tmp_path):
    config = tiny_config(init_from=base, train={"max_steps": 3, "freeze": ["backbone.blocks"]})
    train(config, out_dir=tmp_path, progress=False)
    before, after = load_file(str(find_checkpoint(base) / "model.safetensors")), _weights(tmp_path)
    blocks = [k for k in before if k.startswith("backbone.blocks.")]
    assert blocks and all(torch.equal(before[k], after[k]) for k in blocks)
    assert not torch.equal(before["backbone.tok_embeddings.weight"],
                           after["backbone.tok_embeddings.weight"])  # the rest trained
    with pytest.raises(ConfigError, match="train.freeze: 'backbone.blox' names no parameters"):
        Trainer(tiny_config(init_from=base, train={"freeze": ["backbone.blox"]}),
                out_dir=tmp_path / "bad", progress=False)


def test_lora_trains_adapters_only_and_reloads_as_trained(base, tmp_path):
    config = tiny_config(init_from=base, train={"max_steps": 4, "lr": 1e-2,
                                                "lora": {"rank": 4, "alpha": 8}})
    trainer = Trainer(config, out_dir=tmp_path, progress=False)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable)
    assert not any(".base_layer." in n for n in trainable)
    trainer.fit()
    before, after = load_file(str(find_checkpoint(base) / "model.safetensors")), _weights(tmp_path)
    qkv = "backbone.blocks.0.attn.qkv"
    assert torch.equal(after[f"{qkv}.base_layer.weight"], before[f"{qkv}.weight"])
    assert after[f"{qkv}.lora_B.default.weight"].abs().sum() > 0  # B starts at 0: it moved

    # the checkpoint rebuilds the adapters; outputs equal the trained model's
    ids = torch.tensor([[1, 5, 9, 13]])
    loaded = load_checkpoint(tmp_path)
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.backbone(ids), trainer.model.backbone(ids))
    pipe = load_pipeline("text-generation", tmp_path)
    assert isinstance(pipe("The", max_new_tokens=4, seed=0).texts[0], str)
    with pytest.raises(ConfigError, match="train.lora.modules .* matches no linear layer"):
        Trainer(tiny_config(init_from=base, train={"lora": {"modules": "nothing"}}),
                out_dir=tmp_path / "bad", progress=False)
    with pytest.raises(ConfigError, match=r"unknown key 'train.lora.rnk' \(did you mean "
                                          r"'train.lora.rank'\?\); accepted: rank"):
        Trainer(tiny_config(init_from=base, train={"lora": {"rnk": 4}}),
                out_dir=tmp_path / "bad2", progress=False)


def test_init_from_a_different_architecture_names_missing_and_unexpected(base, tmp_path):
    with pytest.raises(CheckpointError) as err:
        Trainer(tiny_config(init_from=base, backbone={"depth": 3}), out_dir=tmp_path,
                progress=False)
    assert "missing weights" in str(err.value) and "backbone.blocks.2." in str(err.value)
    with pytest.raises(CheckpointError, match=r"shape mismatch: backbone.blocks.0.attn.proj.weight: checkpoint \(32, 32\) vs model \(48, 48\)"):
        Trainer(tiny_config(init_from=base, backbone={"dim": 48}), out_dir=tmp_path / "b",
                progress=False)


def test_freeze_and_lora_together_and_nothing_left_to_train(base, tmp_path):
    config = tiny_config(init_from=base, train={"max_steps": 2, "freeze": ["backbone"],
                                                "lora": {"rank": 2}})
    trainer = Trainer(config, out_dir=tmp_path, progress=False)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    trainer.fit()
    with pytest.raises(ConfigError, match="train.freeze leaves nothing to train"):
        Trainer(tiny_config(init_from=base, train={"freeze": ["backbone"]}),
                out_dir=tmp_path / "none", progress=False)
    with pytest.raises(ConfigError, match=r"'train.lora.dropout' must be in \[0, 1\)"):
        Trainer(tiny_config(init_from=base, train={"lora": {"dropout": 2}}),
                out_dir=tmp_path / "drop", progress=False)


def test_init_from_composes_parts_of_several_checkpoints(base, tmp_path):
    other = train(tiny_config(seed=1, train={"max_steps": 2}), out_dir=tmp_path / "other",
                  progress=False)["checkpoint"]
    config = tiny_config(init_from=[str(base), {"from": str(other),
                                                "take": ["backbone.blocks.0"]}],
                         train={"max_steps": 1})
    trainer = Trainer(config, out_dir=tmp_path / "run", progress=False)
    state, a, b = trainer.model.state_dict(), _weights(base), _weights(other)
    assert any(k.startswith("backbone.blocks.0.") for k in a)
    for key in a:
        expected = b[key] if key.startswith("backbone.blocks.0.") else a[key]
        assert torch.equal(state[key], expected), key
    # the text tokenizer came from the first entry, which takes everything
    assert trainer.tokenizers["text"].encode("hello") == \
        load_checkpoint(base).tokenizers["text"].encode("hello")
    # a tokenizer no entry gives is fitted, as in a run without init_from
    config["init_from"] = [{"from": str(other), "take": ["backbone"]}]
    assert Trainer(config, out_dir=tmp_path / "run2", progress=False).tokenizers["text"].is_trained


def test_init_from_entries_that_do_not_fit_say_what_is_accepted(base, tmp_path):
    def start(init_from):
        Trainer(tiny_config(init_from=init_from), out_dir=tmp_path, progress=False)

    with pytest.raises(ConfigError, match="non-empty list of prefixes"):
        start([{"from": str(base), "take": []}])
    with pytest.raises(ConfigError, match=r"init_from\[0\]: got .*\{from: PATH, take"):
        start([{"path": str(base)}])
    with pytest.raises(ConfigError, match="take 'decoders.image' names no weights; it has: "
                                          "backbone"):
        start([{"from": str(base), "take": ["decoders.image"]}])
    with pytest.raises(ConfigError, match="take 'tokenizers.audio': it has no such "
                                          "tokenizer; it has: text"):
        start([{"from": str(base), "take": ["tokenizers.audio"]}])
    with pytest.raises(ConfigError, match=r"init_from\[1\]: checkpoint not found"):
        start([str(base), str(tmp_path / "nowhere")])


def test_init_from_skip_keeps_those_weights_fresh(base, tmp_path):
    # (what a layer reading a backbone of another width needs; shapes equal here)
    config = tiny_config(init_from=[{"from": str(base), "skip": ["backbone.blocks.1"]}],
                         train={"max_steps": 1})
    state = Trainer(config, out_dir=tmp_path / "run", progress=False).model.state_dict()
    fresh = Trainer(tiny_config(train={"max_steps": 1}), out_dir=tmp_path / "fresh",
                    progress=False).model.state_dict()
    weights = _weights(base)
    skipped = [k for k in weights if k.startswith("backbone.blocks.1.")]
    assert skipped and all(torch.equal(state[k], fresh[k]) for k in skipped)
    assert not all(torch.equal(state[k], weights[k]) for k in skipped)
    assert all(torch.equal(state[k], weights[k]) for k in weights if k not in skipped)
    with pytest.raises(ConfigError, match=r"init_from\[0\]: skip 'decoders.image' names "
                                          "none of the weights this entry gives"):
        Trainer(tiny_config(init_from=[{"from": str(base), "take": ["backbone"],
                                        "skip": ["decoders.image"]}]),
                out_dir=tmp_path / "bad", progress=False)
    with pytest.raises(ConfigError, match="'skip' must be a list of weight prefixes"):
        Trainer(tiny_config(init_from=[{"from": str(base), "skip": "backbone"}]),
                out_dir=tmp_path / "bad2", progress=False)


def test_init_from_skip_may_name_a_layer_new_in_a_taken_part(base, tmp_path):
    # a deeper model: its extra block is new inside the taken backbone (as a pooled_proj
    # added to a taken decoder) and starts fresh
    depth = len({k.split(".")[2] for k in _weights(base) if k.startswith("backbone.blocks.")})
    deeper = {"backbone": {"depth": depth + 1}, "train": {"max_steps": 1}}
    config = tiny_config(init_from=[{"from": str(base), "take": ["backbone"],
                                     "skip": [f"backbone.blocks.{depth}"]}], **deeper)
    state = Trainer(config, out_dir=tmp_path / "run", progress=False).model.state_dict()
    weights = _weights(base)
    assert all(torch.equal(state[k], weights[k]) for k in weights if k.startswith("backbone."))
    assert any(k.startswith(f"backbone.blocks.{depth}.") for k in state)
    with pytest.raises(CheckpointError, match=rf"skip 'backbone.blocks.{depth + 1}' names no "
                                              "weight of the model"):
        Trainer(tiny_config(init_from=[{"from": str(base), "take": ["backbone"],
                                        "skip": [f"backbone.blocks.{depth + 1}"]}], **deeper),
                out_dir=tmp_path / "bad", progress=False)


@requires_fashion_mnist
def test_compose_joins_decoders_of_stages_that_froze_one_backbone(tmp_path):
    from multimodal.checkpoint import compose_checkpoint, export_checkpoint
    from multimodal.testing import tiny_image_config

    def run(name, **train_settings):
        config = tiny_image_config(train={"max_steps": 2, **train_settings})
        return train(config, out_dir=tmp_path / name, progress=False)["checkpoint"]

    base = run("base")
    # a parallel stage on base's frozen backbone trains its image decoder further
    stage = train(tiny_image_config(init_from=base, train={"max_steps": 2,
                                                           "freeze": ["backbone"]}),
                  out_dir=tmp_path / "stage", progress=False)["checkpoint"]
    composed = compose_checkpoint(base, [(stage, "decoders.image")])
    mine, theirs = composed.model.state_dict(), load_checkpoint(stage).model.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)  # here: all of stage
    out = export_checkpoint(base, tmp_path / "joined", dtype=None,
                            takes=[(stage, "decoders.image")])
    joined = load_checkpoint(out).model.state_dict()
    assert all(torch.equal(joined[k], theirs[k]) for k in joined)
    with pytest.raises(CheckpointError, match="name one of its decoders: decoders.image"):
        compose_checkpoint(base, [(stage, "decoders.audio")])
    moved = train(tiny_image_config(init_from=base, train={"max_steps": 2}),
                  out_dir=tmp_path / "moved", progress=False)["checkpoint"]
    with pytest.raises(CheckpointError, match="its backbone is not the one of"):
        compose_checkpoint(base, [(moved, "decoders.image")])


def test_init_from_take_can_rename_a_part(base, tmp_path):
    config = tiny_config(init_from=[str(base), {"from": str(base), "take": {
        "backbone.blocks.1": "backbone.blocks.0"}}], train={"max_steps": 1})
    state, weights = Trainer(config, out_dir=tmp_path, progress=False).model.state_dict(), \
        _weights(base)
    block0 = [k for k in weights if k.startswith("backbone.blocks.0.")]
    assert block0 and all(torch.equal(state[k.replace(".0.", ".1.", 1)], weights[k])
                          for k in block0)
    assert not torch.equal(weights["backbone.blocks.1.attn.qkv.weight"],
                           weights["backbone.blocks.0.attn.qkv.weight"])
    with pytest.raises(ConfigError, match="maps a tokenizer to weights"):
        Trainer(tiny_config(init_from=[{"from": str(base), "take": {"tokenizers.text":
                                                                    "backbone"}}]),
                out_dir=tmp_path / "b", progress=False)


@requires_fashion_mnist
def test_a_loss_that_reaches_only_frozen_weights_is_logged_not_backpropagated(tmp_path):
    from multimodal.testing import tiny_image_config

    config = tiny_image_config(
        decoders={"caption": {"type": "latent_captioner"}},
        data={"caption": {"type": "fashion_mnist", "max_items": 64}},
        train={"max_steps": 2, "eval_every": 0, "freeze": ["backbone", "decoders.caption"]})
    trainer = Trainer(config, out_dir=tmp_path, progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.fit()
    after = trainer.model.state_dict()
    assert result["loss_caption"] > 0  # still measured
    assert all(torch.equal(before[k], after[k]) for k in before
               if k.startswith(("backbone.", "decoders.caption.")))
    assert any(not torch.equal(before[k], after[k]) for k in before
               if k.startswith("decoders.image."))


def test_a_model_trained_from_init_from_loads_after_its_sources_are_gone(base, tmp_path):
    import shutil

    source = tmp_path / "source"
    shutil.copytree(find_checkpoint(base), source)
    made = train(tiny_config(init_from=[{"from": str(source), "take": ["backbone"]}],
                             train={"max_steps": 1}), out_dir=tmp_path / "run",
                 progress=False)["checkpoint"]
    shutil.rmtree(source)
    assert load_checkpoint(made).config["init_from"][0]["from"] == str(source)
    with pytest.raises(ConfigError, match=r"init_from\[0\]: checkpoint not found"):
        Trainer(load_checkpoint(made).config, out_dir=tmp_path / "again", progress=False)
