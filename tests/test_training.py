import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from multimodal.errors import CheckpointError, ConfigError, DataError, TrainingError
from multimodal.pipelines import load_pipeline
from multimodal.testing import tiny_config
from multimodal.checkpoint import find_checkpoint, load_checkpoint
from multimodal.training.trainer import Trainer, train

from conftest import requires_fortunes

pytestmark = requires_fortunes


def test_tiny_config_trains_and_loss_falls(tmp_path):
    trainer = Trainer(tiny_config(train={"max_steps": 30, "eval_every": 0}), out_dir=tmp_path,
                      progress=False)
    first = trainer.train_step()["loss"]
    result = trainer.fit()
    assert result["loss"] < first - 1.0
    assert result["val_text_bpb"] > 0
    assert (tmp_path / "log.csv").is_file()


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    trainer = Trainer(tiny_config(), out_dir=tmp_path, progress=False)
    trainer.fit()
    loaded = load_checkpoint(tmp_path)  # a run directory means its newest checkpoint
    assert loaded.path.name == "step_000008"
    ids = torch.randint(0, loaded.model.backbone.vocab_size, (2, 16))
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model.decoders["text"](trainer.model.backbone(ids))
        got = loaded.model.decoders["text"](loaded.model.backbone(ids))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    text = "A banker is a fellow"
    assert loaded.tokenizers["text"].encode(text) == trainer.tokenizers["text"].encode(text)
    saved = (loaded.path / "config.yaml").read_text()
    assert "byte_bpe" in saved and "max_steps: 8" in saved


def test_resume_matches_uninterrupted_run(tmp_path):
    config = tiny_config(train={"max_steps": 8, "checkpoint_every": 4})
    full = Trainer(config, out_dir=tmp_path / "full", progress=False)
    full.fit()

    # A run killed at step 6, after its checkpoint at step 4: steps 5 and 6 are lost.
    interrupted = Trainer(config, out_dir=tmp_path / "part", progress=False)
    for _ in range(4):
        interrupted.train_step()
    interrupted.save()
    for _ in range(2):
        interrupted.train_step()
    interrupted.close()  # the killed run's lock is gone with its process
    del interrupted
    resumed = Trainer(config, out_dir=tmp_path / "part", resume=True, progress=False)
    assert resumed.step == 4
    resumed.fit()
    a = load_file(find_checkpoint(tmp_path / "full") / "model.safetensors")
    b = load_file(find_checkpoint(tmp_path / "part") / "model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)


def test_resume_refuses_a_different_model(tmp_path):
    train(tiny_config(train={"max_steps": 2}), out_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="different backbone"):
        Trainer(tiny_config(backbone={"depth": 3}), out_dir=tmp_path, resume=True,
                progress=False)


def test_resume_without_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="--resume"):
        Trainer(tiny_config(), out_dir=tmp_path / "empty", resume=True, progress=False)


def test_partial_and_missing_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing")
    train(tiny_config(train={"max_steps": 2}), out_dir=tmp_path / "run", progress=False)
    ckpt = find_checkpoint(tmp_path / "run")
    partial = tmp_path / "partial"
    shutil.copytree(ckpt, partial)
    (partial / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="partial: missing meta.json"):
        load_checkpoint(partial)
    # A crashed save leaves only a temporary directory, which is ignored.
    shutil.copytree(ckpt, ckpt.parent / ".step_000009.tmp-123")
    assert find_checkpoint(tmp_path / "run") == ckpt


def test_checkpoint_from_an_incompatible_config(tmp_path):
    train(tiny_config(train={"max_steps": 2}), out_dir=tmp_path, progress=False)
    ckpt = find_checkpoint(tmp_path)
    config = (ckpt / "config.yaml").read_text().replace("depth: 2", "depth: 3")
    (ckpt / "config.yaml").write_text(config)
    with pytest.raises(CheckpointError, match="missing weights.*blocks.2"):
        load_checkpoint(ckpt)
    (ckpt / "config.yaml").write_text(config.replace("type: lm_head", "type: nothing"))
    with pytest.raises(CheckpointError, match="unusable config"):
        load_checkpoint(ckpt)


def test_corrupt_weights_file(tmp_path):
    train(tiny_config(train={"max_steps": 2}), out_dir=tmp_path, progress=False)
    ckpt = find_checkpoint(tmp_path)
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_checkpoint(ckpt)


def test_nan_loss_stops_with_last_checkpoint(tmp_path):
    trainer = Trainer(tiny_config(train={"max_steps": 6, "checkpoint_every": 2}),
                      out_dir=tmp_path, progress=False)
    for _ in range(2):
        trainer.train_step()
    trainer.save()
    with torch.no_grad():
        trainer.model.backbone.norm.weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="step_000002"):
        trainer.fit()


def test_missing_dataset_for_decoder(tmp_path):
    config = tiny_config()
    del config["data"]
    with pytest.raises(ConfigError, match="decoders.text has no dataset"):
        Trainer(config, out_dir=tmp_path, progress=False)


def test_non_utf8_text_files(tmp_path):
    (tmp_path / "a.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    config = tiny_config(data={"text": {"type": "text_files", "paths": str(tmp_path / "*.txt")}})
    with pytest.raises(DataError, match="not UTF-8.*offset 3"):
        Trainer(config, out_dir=tmp_path / "run", progress=False)


def test_text_files_with_no_match(tmp_path):
    config = tiny_config(data={"text": {"type": "text_files", "paths": str(tmp_path / "*.md")}})
    with pytest.raises(DataError, match="no text files match"):
        Trainer(config, out_dir=tmp_path / "run", progress=False)


def test_fortunes_split_is_deterministic_and_disjoint():
    from multimodal.data.text import FortunesDataset

    train_docs = FortunesDataset(split="train", files=["literature", "fortunes"])
    val_docs = FortunesDataset(split="val", files=["literature", "fortunes"])
    again = FortunesDataset(split="val", files=["literature", "fortunes"])
    assert list(val_docs) == list(again)
    assert not set(train_docs) & set(val_docs)
    assert 0 < len(val_docs) < 0.15 * len(train_docs)
    assert all("\n%\n" not in doc for doc in train_docs)


def test_learning_rate_follows_the_shared_schedule(tmp_path):
    # warm-up to lr over 2 steps, then cosine decay to lr * 0.1 at max_steps (8)
    trainer = Trainer(tiny_config(train={"lr": 1.0, "min_lr_ratio": 0.1, "eval_every": 0,
                                         "checkpoint_every": 0}),
                      out_dir=tmp_path, progress=False)
    lrs = [trainer.train_step()["lr"] for _ in range(8)]
    assert lrs[:2] == pytest.approx([0.5, 1.0])
    assert lrs[5] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert lrs[2] > lrs[3] > lrs[7] > 0.1


def test_generation_pipeline_is_seeded_and_validates_input(tmp_path):
    train(tiny_config(train={"max_steps": 2}), out_dir=tmp_path, progress=False)
    pipe = load_pipeline("text-generation", tmp_path)
    a = pipe("The", max_new_tokens=12, seed=5, num_samples=2, stop_at_eos=False)
    b = pipe("The", max_new_tokens=12, seed=5, num_samples=2, stop_at_eos=False)
    assert a.texts == b.texts and len(a.token_ids[0]) == 12
    greedy = pipe("The", max_new_tokens=8, do_sample=False, stop_at_eos=False)
    assert len(greedy.token_ids[0]) == 8
    from multimodal.errors import InputError

    for kwargs in ({"max_new_tokens": 0}, {"max_new_tokens": 10_000}, {"num_samples": 0},
                   {"temperature": 0.0}, {"top_p": 1.5}, {"top_k": 0}):
        with pytest.raises(InputError):
            pipe("The", **kwargs)
    with pytest.raises(InputError, match="must be a string"):
        pipe(None)
    with pytest.warns(UserWarning, match="keeping the last"):
        out = pipe("word " * 200, max_new_tokens=4)
    assert len(out.token_ids[0]) <= 4


def test_streamer_prints_what_is_returned(tmp_path):
    from multimodal.pipelines.text_generation import TextStreamer

    train(tiny_config(train={"max_steps": 2}), out_dir=tmp_path, progress=False)
    pipe = load_pipeline("text-generation", tmp_path)
    pieces = []
    out = pipe("A", max_new_tokens=20, seed=1, streamer=TextStreamer(pipe.tokenizer, pieces.append))
    assert "".join(pieces) == out.texts[0]


def test_ema_weights_follow_the_formula_resume_exactly_and_are_what_pipelines_load(tmp_path):
    config = tiny_config(train={"max_steps": 6, "checkpoint_every": 3, "ema_decay": 0.5,
                                "keep_checkpoints": 5})
    trainer = Trainer(config, out_dir=tmp_path / "full", progress=False)
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    expected = dict(start)
    for step in range(1, 4):  # diffusers' EMAModel: decay 0 at step 1, then (1+s)/(10+s)
        trainer.train_step()
        decay = 0.0 if step == 1 else min(0.5, step / (9 + step))
        expected = {n: decay * expected[n] + (1 - decay) * p.detach()
                    for n, p in trainer.model.named_parameters()}
    trainer.save()
    ema = load_file(find_checkpoint(tmp_path / "full") / "ema.safetensors")
    for name, value in expected.items():
        torch.testing.assert_close(ema[name], value, msg=name)
    raw = load_file(find_checkpoint(tmp_path / "full") / "model.safetensors")
    assert any(not torch.equal(raw[n], ema[n]) for n in expected)
    trainer.fit()

    # resumed from step 3, the EMA ends where the uninterrupted run's does
    part = Trainer(config, out_dir=tmp_path / "part", progress=False)
    for _ in range(3):
        part.train_step()
    part.save()
    part.close()  # as if killed: its lock is gone with it
    Trainer(config, out_dir=tmp_path / "part", resume=True, progress=False).fit()
    a = load_file(find_checkpoint(tmp_path / "full") / "ema.safetensors")
    b = load_file(find_checkpoint(tmp_path / "part") / "ema.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)

    loaded = load_checkpoint(tmp_path / "full")  # pipelines and exports get the EMA weights
    state = loaded.model.state_dict()
    for key in a:
        torch.testing.assert_close(state[key], a[key], rtol=0, atol=0, msg=key)
    raw_model = load_checkpoint(tmp_path / "full", ema=False).model.state_dict()
    assert any(not torch.equal(raw_model[k], a[k]) for k in a)
    # so does a run that starts from it (init_from)
    started = Trainer({**tiny_config(), "init_from": str(tmp_path / "full")},
                      out_dir=tmp_path / "next", progress=False).model.state_dict()
    for key in a:
        torch.testing.assert_close(started[key], a[key], rtol=0, atol=0, msg=key)
    with pytest.raises(ConfigError, match="'train.ema_decay' must be in"):
        Trainer(tiny_config(train={"ema_decay": 1.5}), out_dir=tmp_path / "bad", progress=False)


def test_sampling_shares_skip_modalities_by_the_step_seed(tmp_path):
    from multimodal.testing import tiny_image_config

    config = tiny_image_config(decoders={"caption": {"type": "latent_captioner"}},
                               data={"caption": {"type": "fashion_mnist", "max_items": 64}},
                               train={"max_steps": 12, "sampling": {"caption": 0.5},
                                      "eval_every": 0, "checkpoint_every": 0})
    trainer = Trainer(config, out_dir=tmp_path, progress=False)
    steps = [trainer.train_step() for _ in range(12)]
    trained = [m["loss_caption"] > 0 for m in steps]
    assert all(m["loss_image"] > 0 for m in steps)
    assert 2 <= sum(trained) <= 10  # about half, from the step seeds
    again = Trainer(config, out_dir=tmp_path / "again", progress=False)
    assert [again.train_step()["loss_caption"] > 0 for _ in range(12)] == trained
    with pytest.raises(ConfigError, match=r"'train.sampling.caption' must be a share of steps "
                                          r"in \[0, 1\]"):
        Trainer(tiny_image_config(decoders={"caption": {"type": "latent_captioner"}},
                                  data={"caption": {"type": "fashion_mnist", "max_items": 64}},
                                  train={"sampling": {"caption": 1.5}}),
                out_dir=tmp_path / "bad", progress=False)


def test_a_modality_with_sampling_0_rests_without_its_data(tmp_path):
    from multimodal.testing import tiny_image_config

    first = tiny_image_config(decoders={"caption": {"type": "latent_captioner"}},
                              data={"caption": {"type": "fashion_mnist", "max_items": 64}},
                              train={"max_steps": 2, "eval_every": 0, "checkpoint_every": 0})
    made = train(first, out_dir=tmp_path / "first", progress=False)["checkpoint"]
    # The next stage trains the image decoder alone; the caption decoder rests, and its
    # dataset is gone from the config: it is neither needed nor read.
    second = {**first, "data": {"image": first["data"]["image"]}, "init_from": str(made),
              "train": {**first["train"], "sampling": {"caption": 0}}}
    trainer = Trainer(second, out_dir=tmp_path / "second", progress=False)
    assert set(trainer.train_data) == {"image"} and set(trainer.val_data) <= {"image"}
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    steps = [trainer.train_step() for _ in range(2)]
    assert all(m["loss_caption"] == 0 and m["loss_image"] > 0 for m in steps)
    after = trainer.model.state_dict()
    for key in before:
        if key.startswith("decoders.caption."):
            torch.testing.assert_close(after[key], before[key], rtol=0, atol=0, msg=key)
    assert any(not torch.equal(after[k], before[k]) for k in before
               if k.startswith("decoders.image."))
    saved = load_checkpoint(trainer.save()).model.state_dict()
    assert any(k.startswith("decoders.caption.") for k in saved)

    with pytest.raises(ConfigError, match="rests every modality"):
        Trainer({**second, "train": {**second["train"], "sampling": {"caption": 0, "image": 0}}},
                out_dir=tmp_path / "none", progress=False)


def test_previews_are_written_after_each_checkpoint(tmp_path):
    config = tiny_config(train={"max_steps": 4, "checkpoint_every": 2,
                                "preview_prompts": ["The", "A"]})
    train(config, out_dir=tmp_path, progress=False)
    for step in ("step_000002", "step_000004"):
        for k in ("00", "01"):
            text = (tmp_path / "previews" / step / k / "000.txt").read_text()
            assert text.startswith("The" if k == "00" else "A")


def test_config_problems_stop_the_trainer_before_any_work(tmp_path, monkeypatch):
    import multimodal.training.trainer as trainer_module

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the config was validated")

    monkeypatch.setattr(trainer_module, "build_datasets", no_work)
    monkeypatch.setattr(trainer_module, "build_tokenizers", no_work)
    config = tiny_config(init_from=[str(tmp_path / "gone"), {"from": str(tmp_path),
                                                             "take": []}],
                         train={"loss_weights": {"txet": 2.0}, "ema_decay": 1.5})
    with pytest.raises(ConfigError) as info:
        Trainer(config, out_dir=tmp_path / "run", progress=False)
    message = str(info.value)
    assert "4 config errors" in message
    assert "'train.loss_weights.txet': no such modality (did you mean 'text'?)" in message
    assert "'train.ema_decay' must be in (0, 1)" in message
    assert "init_from[0]: checkpoint not found" in message  # read from disk, with the others
    assert "init_from[1]: 'from' must be a path and 'take' a non-empty list" in message
