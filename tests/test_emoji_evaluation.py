"""``multimodal evaluate`` for emoji checkpoints (multimodal/evaluation/emoji.py) on tiny fake
npm packages (no network, no real data): the recogniser and its cache, the concept lookup,
the scores (top-k, saturation, caption naming, the Frechet floor), the reports and the
dispatch from ``evaluate``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from multimodal.cli import main
from multimodal.data.emoji import STYLES, EmojiDataset
from multimodal.errors import DataError, InputError
from multimodal.evaluation import evaluate, image_data_type
from multimodal.evaluation import emoji as emoji_eval
from multimodal.evaluation.emoji import (COMMON_CONCEPTS, ConceptNamer, augment,
                                         evaluate_image_to_text_emoji,
                                         evaluate_text_to_image_emoji, frechet_with_floor,
                                         hsv_saturation, load_recogniser, resolve_concepts,
                                         topk_hits)
from multimodal.testing import TINY, tiny_emoji_packages, tiny_image_checkpoint, tiny_image_config

# The two concepts of the fake packages (multimodal.testing.tiny_emoji_packages).
FAKE_CONCEPTS = {"people": ("waving hand",), "food": ("red apple",)}
# A recogniser that trains in well under a second on the fake images.
TINY_RECOGNISER = {"width": 4, "input_size": 16, "epochs": 40, "batch_size": 4, "lr": 1e-2,
                   "val_fraction": 0.0}


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """``(archive_dir, sha256 per style)`` of the three fake packages."""
    return tiny_emoji_packages(tmp_path_factory.mktemp("emoji"))


@pytest.fixture
def data_kwargs(packages, tmp_path):
    archive_dir, sha = packages
    return {"archive_dir": str(archive_dir), "sha256": sha,
            "cache_dir": str(tmp_path / "emoji-cache")}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MULTIMODAL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def emoji_checkpoint(path: Path, data_kwargs: dict) -> Path:
    """A tiny, untrained RGB checkpoint (64x64 VAE, DiT and captioner) whose config reads the
    fake emoji packages, for text-to-image and image-to-text."""
    from multimodal.checkpoint import save_checkpoint
    from multimodal.model import MultimodalModel
    from multimodal.modalities.image.vae import ImageVAETokenizer
    from multimodal.registry import decoders
    from multimodal.testing import tiny_backbone, tiny_tokenizer

    backbone = tiny_backbone().eval()
    dit = {**TINY["decoders"]["latent_dit"], "sample_size": 16}
    captioner = {"sample_size": 16, "patch_size": 4}
    vae_kwargs = {**TINY["tokenizers"]["image_vae"], "in_channels": 3, "image_size": 64}
    vae = ImageVAETokenizer(**vae_kwargs)
    generator = torch.Generator().manual_seed(0)
    vae.fit([{"image": torch.rand(3, 64, 64, generator=generator) * 2 - 1} for _ in range(8)],
            progress=False)
    model = MultimodalModel(backbone=backbone, decoders={
        "image": decoders.get("latent_dit")(backbone=backbone, **dit),
        "caption": decoders.get("latent_captioner")(backbone=backbone, **captioner)})
    section = {"type": "emoji", "val_fraction": 0.0, **data_kwargs}
    config = tiny_image_config()
    config["tokenizers"]["image"] = {"type": "image_vae", **vae_kwargs}
    config["decoders"] = {"image": {"type": "latent_dit", **dit},
                          "caption": {"type": "latent_captioner", **captioner}}
    config["data"] = {"image": dict(section), "caption": dict(section)}
    return save_checkpoint(path, model=model.eval(), config=config,
                           tokenizers={"text": tiny_tokenizer(), "image": vae})


# -- the recogniser --------------------------------------------------------------------------
def test_recogniser_learns_the_training_styles_and_is_cached(data_kwargs, cache, monkeypatch):
    recogniser = load_recogniser(settings=TINY_RECOGNISER, progress=False,
                                 data_kwargs=data_kwargs)
    assert recogniser.concept_keys == ("1F44B", "1F34E")  # waving hand, red apple
    files = list(cache.glob("emoji_recogniser-*.safetensors"))
    assert files == [recogniser.path]
    with safe_open(str(recogniser.path), "pt") as handle:  # safetensors, never a pickle
        assert json.loads(handle.metadata()["concept_keys"]) == ["1F44B", "1F34E"]

    seen = EmojiDataset(split="train", styles=("twemoji", "openmoji"), val_fraction=0.0,
                        **data_kwargs)
    logits, features = recogniser(seen.get_images())
    assert logits.shape == (len(seen), 2) and features.shape == (len(seen), 32)
    targets = torch.tensor([recogniser.class_of(seen.concepts[c].key) for c in seen.labels])
    assert topk_hits(logits, targets, 1).all()  # red and yellow discs are told apart

    def no_training(*args, **kwargs):
        raise AssertionError("the cached recogniser should have been read")

    monkeypatch.setattr(emoji_eval, "_train_recogniser", no_training)
    again = load_recogniser(settings=TINY_RECOGNISER, progress=False, data_kwargs=data_kwargs)
    torch.testing.assert_close(again(seen.get_images())[0], logits)
    with pytest.raises(AssertionError, match="cached recogniser"):  # new settings, new key
        load_recogniser(settings={**TINY_RECOGNISER, "epochs": 2}, progress=False,
                        data_kwargs=data_kwargs)
    with pytest.raises(InputError, match=r"unknown recogniser setting\(s\) \['widht'\] "
                                         r"\(did you mean 'width'\?\)"):
        load_recogniser(settings={"widht": 4}, data_kwargs=data_kwargs)
    with pytest.raises(DataError, match="no class for concept 1F600"):
        recogniser.class_of("1F600")


def test_a_corrupt_cache_entry_is_trained_again(data_kwargs, cache):
    first = load_recogniser(settings=TINY_RECOGNISER, progress=False, data_kwargs=data_kwargs)
    first.path.write_bytes(b"not safetensors")
    again = load_recogniser(settings=TINY_RECOGNISER, progress=False, data_kwargs=data_kwargs)
    assert again.path == first.path and again.path.stat().st_size > 100


def test_augment_keeps_white_orientation_and_range():
    generator = torch.Generator().manual_seed(0)
    white = torch.ones(3, 3, 32, 32)
    assert torch.equal(augment(white, generator, jitter=0.0), white)  # padding is white too
    images = torch.ones(8, 3, 32, 32)
    images[:, 1:, :, :16] = -1.0  # left half red, right half white
    views = augment(images, generator)
    assert views.shape == images.shape and views.min() >= -1 and views.max() <= 1
    left, right = views[:, 1, :, :12].mean(), views[:, 1, :, 20:].mean()
    assert left < 0 < right  # never flipped
    red = views[:, 0].mean() > views[:, 1].mean()
    assert red  # no hue change: the red stays red
    again = augment(images, torch.Generator().manual_seed(0))
    assert torch.equal(augment(images, torch.Generator().manual_seed(0)), again)


# -- concepts and scores ---------------------------------------------------------------------
def test_common_concepts_are_fifty_in_five_categories():
    names = [n for group in COMMON_CONCEPTS.values() for n in group]
    assert len(names) >= 40 and len(set(names)) == len(names)
    assert set(COMMON_CONCEPTS) == {"animals", "food", "vehicles", "faces", "objects"}
    assert all(8 <= len(group) <= 10 for group in COMMON_CONCEPTS.values())


def test_concept_lookup_names_every_problem():
    names = ["waving hand", "red apple", "green apple"]
    assert resolve_concepts(names, [0, 1], FAKE_CONCEPTS) == {"people": [0], "food": [1]}
    with pytest.raises(DataError, match=r"'red aple' \(food\) is not an emoji concept \(did you "
                                        r"mean 'red apple'\?\); 'green apple' \(food\) is a "
                                        r"validation concept"):
        resolve_concepts(names, [0, 1], {"food": ("red aple", "green apple")})


@pytest.mark.slow  # reads the real emoji rasters (seconds)
@pytest.mark.skipif(not list((Path(os.environ.get("MULTIMODAL_CACHE") or
                                   Path.home() / ".cache" / "multimodal")
                              / "emoji" / "rasters").glob("twemoji-*.safetensors")),
                    reason="the real emoji data is not cached")
def test_common_concepts_are_in_the_real_training_split():
    data = EmojiDataset(split="train", styles=("twemoji",), skin_tones=False)
    resolved = resolve_concepts(data.concept_names, data.split_concepts())
    assert sum(map(len, resolved.values())) == sum(map(len, COMMON_CONCEPTS.values()))


def test_topk_hits():
    logits = torch.tensor([[5.0, 4, 3, 2, 1, 0, -1], [0, 1, 2, 3, 4, 5, 6], [1, 0, 0, 0, 0, 0, 0]])
    targets = torch.tensor([0, 1, 6])
    assert topk_hits(logits, targets, 1).tolist() == [True, False, False]
    assert topk_hits(logits, targets, 5).tolist() == [True, False, True]  # 6 ties past 5th
    assert topk_hits(logits[:, :3], torch.tensor([2, 0, 1]), 5).all()  # k beyond the classes


def test_saturation_over_the_foreground():
    def image(rgb, area: slice = slice(None)):
        pixels = torch.ones(3, 8, 8)
        pixels[:, area] = torch.tensor(rgb, dtype=torch.float)[:, None, None] / 127.5 - 1
        return pixels

    images = torch.stack([image((255, 0, 0)), image((255, 0, 0), slice(0, 2)),  # red, a band
                          image((255, 255, 255)), image((128, 128, 128)),  # white, grey
                          image((255, 128, 128)), image((0, 0, 0))])  # pink, black
    saturation = hsv_saturation(images)
    assert saturation.tolist() == pytest.approx([1.0, 1.0, 0.0, 0.0, 127 / 255, 0.0], abs=1e-6)


def test_concept_namer_reads_whole_names_longest_first():
    namer = ConceptNamer([("red apple", "apple"), ("green apple",), ("waving hand", "wave"),
                          ("woman\u2019s hat",), ("pineapple",)])
    assert namer.named("A Red Apple emoji") == {0}
    assert namer.named("an apple") == {0}
    assert namer.named("apples, please") == {0}  # a plural
    assert namer.named("a green apple") == {1}  # not the red apple's short name
    assert namer.named("pineapple sticker") == {4}  # whole words: no apple here
    assert namer.named("waving hand with medium-dark skin tone") == {2}
    assert namer.named("wave: light and dark skin") == {2}
    assert namer.named("a woman's hat, flat") == {3}
    assert namer.named("a grinning face") == set()
    assert namer.names_concept("two red apples", 0) and not namer.names_concept("apple", 1)


def test_frechet_floor_matches_real_and_flags_a_shift():
    generator = torch.Generator().manual_seed(0)
    concepts = [c for c in range(4) for _ in range(60)]
    real = torch.randn(240, 3, generator=generator) + torch.tensor(concepts)[:, None]
    same = torch.randn(240, 3, generator=generator) + torch.tensor(concepts)[:, None]
    generated, floor = frechet_with_floor(same, concepts, real, concepts, repeats=3)
    assert floor < 0.5 and generated < 0.5
    shifted, floor_again = frechet_with_floor(same + 2.0, concepts, real, concepts, repeats=3)
    assert floor_again == floor and shifted == pytest.approx(12.0, rel=0.2)  # 3 dims x 2^2
    with pytest.raises(InputError, match="too few real images"):
        frechet_with_floor(same, concepts, real[:1], [0])


# -- reports and dispatch --------------------------------------------------------------------
def test_text_to_image_report(tmp_path, data_kwargs, cache):
    checkpoint = emoji_checkpoint(tmp_path / "ckpt", data_kwargs)
    report = evaluate_text_to_image_emoji(
        checkpoint=checkpoint, num_samples=2, num_inference_steps=1, concepts=FAKE_CONCEPTS,
        progress=False, recogniser_settings=TINY_RECOGNISER)
    json.dumps(report)
    assert report["evaluation"] == "emoji" and report["samples_per_concept"] == 2
    assert report["concepts"] == {"people": ["waving hand"], "food": ["red apple"]}
    assert report["recogniser"]["trained_on"] == ["twemoji", "openmoji"]
    assert report["recogniser"]["held_out"] == ["noto"]
    assert set(report["real"]) == set(STYLES)
    assert not report["real"]["noto"]["seen_by_recogniser"]
    assert report["recogniser"]["accuracy_all_training_concepts"]["twemoji"]["top1"] == 1.0
    # Two classes: the top 5 always holds the concept.
    assert report["generated"]["top5"] == 1.0 and report["real"]["noto"]["top5"] == 1.0
    assert set(report["generated"]["top5_per_category"]) == {"people", "food"}
    assert 0 <= report["generated"]["top1"] <= 1
    # Flat discs (fake twemoji): (220, 30, 30) and (250, 200, 40); Noto draws 255 - them.
    assert report["real"]["twemoji"]["saturation"] == pytest.approx(
        (190 / 220 + 210 / 250) / 2, abs=1e-4)
    assert report["real"]["noto"]["saturation"] == pytest.approx(
        (190 / 225 + 210 / 215) / 2, abs=1e-4)
    assert report["saturation_ratio"] == pytest.approx(
        report["generated"]["saturation"] / report["saturation_real"])
    assert report["frechet_distance"] >= 0 and report["frechet_distance_real_floor"] >= 0
    assert set(report["quality_bars"]) == {"top5_at_least_0.6", "every_category_top5_above_0.3",
                                           "saturation_ratio_at_least_0.8"}
    assert report["quality_bar_met"] == all(report["quality_bars"].values())
    with pytest.raises(InputError, match="num_samples .* must be >= 2"):
        evaluate_text_to_image_emoji(checkpoint=checkpoint, num_samples=1)


def test_prompts_are_held_out_and_seeded_per_prompt(tmp_path, data_kwargs):
    calls = []

    class Pipe:
        def __call__(self, prompts, *, num_samples, seed, **kwargs):
            calls.append((list(prompts), num_samples, list(seed)))
            colour = np.zeros((64, 64, 3), np.uint8)
            return type("Out", (), {"images": [colour] * (len(prompts) * num_samples)})

    data = EmojiDataset(split="train", val_fraction=0.0, **data_kwargs)
    images, owners, prompts = emoji_eval.generate_concept_samples(
        Pipe(), data, [0, 1], per_concept=5, prompts_per_concept=2, seed=3)
    assert images.shape == (10, 3, 64, 64) and float(images.max()) == -1.0
    assert sorted(owners) == [0] * 5 + [1] * 5
    assert prompts == ["a picture of a waving hand", "show me a waving hand",
                       "show me a red apple", "I would like a red apple"]
    # seed 3 * 1_000_003 + 16 * concept + phrasing; 5 samples = 3 of phrasing 0, 2 of 1
    assert [(c[1], c[2]) for c in calls] == [(2, [3_000_010, 3_000_026]),
                                             (3, [3_000_009, 3_000_025])]


def test_image_to_text_scores_captions_of_noto_images(tmp_path, data_kwargs, monkeypatch):
    checkpoint = emoji_checkpoint(tmp_path / "ckpt", data_kwargs)
    seen = []

    class Captioner:
        checkpoint_id = "fake"

        def __call__(self, images, max_new_tokens):
            seen.extend(images)
            return type("Out", (), {"texts": ["a shiny apple emoji"] * len(images)})

    monkeypatch.setattr(emoji_eval, "load_pipeline", lambda task, checkpoint, device: Captioner())
    report = evaluate_image_to_text_emoji(checkpoint=checkpoint, concepts=FAKE_CONCEPTS)
    json.dumps(report)
    # Noto's hand (and its skin-tone variant) and apple, as (64, 64, 3) uint8
    assert len(seen) == 3 and seen[0].shape == (64, 64, 3) and seen[0].dtype == np.uint8
    assert report["style"] == "noto" and report["style_seen_in_training"]
    assert report["per_category"] == {"people": 0.0, "food": 1.0}
    assert report["named_rate"] == pytest.approx(1 / 3) and not report["quality_bar_met"]
    assert report["unnamed_rate"] == 0.0  # the hands are named, wrongly
    one = evaluate_image_to_text_emoji(checkpoint=checkpoint, concepts=FAKE_CONCEPTS,
                                       num_samples=1)
    assert one["num_images"] == 2 and one["named_rate"] == 0.5 and one["min_category"] == 0.0


def test_image_to_text_with_the_real_pipeline(tmp_path, data_kwargs):
    checkpoint = emoji_checkpoint(tmp_path / "ckpt", data_kwargs)
    report = evaluate_image_to_text_emoji(checkpoint=checkpoint, concepts=FAKE_CONCEPTS,
                                          max_new_tokens=3)
    assert report["num_images"] == 3 and 0 <= report["named_rate"] <= 1
    assert all(isinstance(e["caption"], str) for e in report["examples"])


def test_evaluate_dispatches_on_the_checkpoints_image_data(tmp_path, data_kwargs, monkeypatch,
                                                           capsys):
    emoji = emoji_checkpoint(tmp_path / "emoji", data_kwargs)
    fashion = tiny_image_checkpoint(tmp_path / "fashion")
    assert image_data_type("text-to-image", emoji) == "emoji"
    assert image_data_type("image-to-text", emoji) == "emoji"
    assert image_data_type("text-to-image", fashion) == "fashion_mnist"
    assert image_data_type("text-to-image", tmp_path / "none") is None

    called = []
    for module, name in [(emoji_eval, "evaluate_text_to_image_emoji"),
                         (emoji_eval, "evaluate_image_to_text_emoji"),
                         ("multimodal.evaluation.image", "evaluate_text_to_image"),
                         ("multimodal.evaluation.caption", "evaluate_image_to_text")]:
        monkeypatch.setattr(module if not isinstance(module, str) else
                            __import__(module, fromlist=[name]), name,
                            lambda name=name, **kwargs: called.append((name, kwargs)) or
                            {"evaluator": name})
    assert evaluate("text-to-image", checkpoint=emoji)["evaluator"] == \
        "evaluate_text_to_image_emoji"
    assert evaluate("image-to-text", checkpoint=emoji)["evaluator"] == \
        "evaluate_image_to_text_emoji"
    assert evaluate("text-to-image", checkpoint=fashion)["evaluator"] == "evaluate_text_to_image"
    assert evaluate("image-to-text", checkpoint=fashion)["evaluator"] == "evaluate_image_to_text"
    # The CLI passes --num-samples only when given, so each evaluation keeps its own default.
    assert main(["evaluate", "text-to-image", "--checkpoint", str(emoji)]) == 0
    name, kwargs = called[-1]
    assert name == "evaluate_text_to_image_emoji" and kwargs["checkpoint"] == str(emoji)
    assert "num_samples" not in kwargs
    assert json.loads(capsys.readouterr().out)["evaluator"] == "evaluate_text_to_image_emoji"
    assert main(["evaluate", "text-to-image", "--checkpoint", str(emoji), "--num-samples",
                 "3"]) == 0
    assert called[-1][1]["num_samples"] == 3
