"""Image datasets: Fashion-MNIST with captions, and a user's image folder (JSONL or CSV)."""

import gzip
import random
import re

import numpy as np
import pytest
import torch

from multimodal.data.images import (CLASS_NAMES, SYNONYMS, TEMPLATES, FashionMNISTDataset,
                                    ImageFolderDataset, class_caption)
from multimodal.errors import DataError
from multimodal.evaluation.image import HELD_OUT_TEMPLATES, held_out_prompt
from multimodal.testing import tiny_image_folder

from conftest import FASHION_MNIST, requires_fashion_mnist


def names_of(label):
    return {w for pair in SYNONYMS[label] for w in pair if w}


def test_captions_name_their_class_in_varied_phrasings():
    rng = random.Random(0)
    for label in range(len(CLASS_NAMES)):
        captions = {class_caption(label, rng) for _ in range(400)}
        assert len(captions) > 60, CLASS_NAMES[label]
        for caption in captions:
            assert any(re.search(rf"\b{re.escape(n)}\b", caption) for n in names_of(label)), caption
    assert {"ankle boot", "an ankle boot", "a photo of an ankle boot", "a boot"} <= {
        class_caption(9, rng) for _ in range(5000)}
    assert {"trousers", "a pair of trousers"} <= {class_caption(1, rng) for _ in range(5000)}
    assert {"bag", "a handbag"} <= {class_caption(8, rng) for _ in range(5000)}


def test_evaluation_prompts_are_held_out_of_training_captions():
    rng = random.Random(1)
    training = {class_caption(label, rng) for label in range(10) for _ in range(3000)}
    prompts = {held_out_prompt(label, i) for label in range(10) for i in range(8)}
    assert not prompts & training
    stems = {t.split("{")[0].strip() for t in HELD_OUT_TEMPLATES if t.split("{")[0].strip()}
    assert not any(t.startswith(stem) for t in TEMPLATES for stem in stems)


@requires_fashion_mnist
def test_fashion_mnist_items_labels_and_captions():
    train = FashionMNISTDataset(split="train")
    val = FashionMNISTDataset(split="val", max_items=100)
    assert len(train) == 60_000 and len(val) == 100
    with gzip.open(FASHION_MNIST / "t10k-labels-idx1-ubyte.gz") as fh:
        raw_labels = np.frombuffer(fh.read(), np.uint8, offset=8)
    assert val.labels == raw_labels[:100].tolist()
    item = val[0]
    assert set(item) == {"image", "caption", "label"}
    image = item["image"]
    assert image.shape == (1, 32, 32) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1
    assert torch.all(image[:, :2] == -1) and torch.all(image[:, :, -2:] == -1)  # black padding
    with gzip.open(FASHION_MNIST / "t10k-images-idx3-ubyte.gz") as fh:
        raw = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    torch.testing.assert_close(image[0, 2:30, 2:30], torch.tensor(raw[0]).float() / 127.5 - 1)
    torch.testing.assert_close(val.get_images([0, 1])[0], image)
    for i in range(100):
        caption = val[i]["caption"]
        assert any(re.search(rf"\b{re.escape(n)}\b", caption) for n in names_of(val.labels[i]))
    again = FashionMNISTDataset(split="val", max_items=100)
    assert again.captions == val.captions  # deterministic per index
    reseeded = FashionMNISTDataset(split="val", max_items=100, caption_seed=1)
    assert reseeded.captions != val.captions and reseeded.labels == val.labels
    assert len(set(train.captions[:5000])) > 500


def test_fashion_mnist_missing_names_the_package(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as info:
        FashionMNISTDataset(split="train", root=str(tmp_path))
    assert str(tmp_path) in str(info.value)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03bad"))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="IDX"):
        FashionMNISTDataset(split="train", root=str(tmp_path))


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_image_folder_reads_jsonl_and_csv(tmp_path, fmt):
    path = tiny_image_folder(tmp_path, count=60, fmt=fmt)
    train = ImageFolderDataset(path=path, split="train", val_fraction=0.2)
    val = ImageFolderDataset(path=path, split="val", val_fraction=0.2)
    assert len(train) + len(val) == 60 and 0 < len(val) < 30
    assert not set(train.paths) & set(val.paths)
    item = train[0]
    assert item["image"].shape == (1, 32, 32) and item["caption"] in ("a vertical bar",
                                                                       "a square blob")
    assert item["label"] == (1 if item["caption"] == "a vertical bar" else 0)
    assert train.get_images([0, 1]).shape == (2, 1, 32, 32)
    rgb = ImageFolderDataset(path=path, split="train", channels=3, image_size=16, val_fraction=0.2)
    assert rgb[0]["image"].shape == (3, 16, 16)
    # the folder itself, holding its one list, reads the same
    from pathlib import Path
    folder = ImageFolderDataset(path=str(Path(path).parent), split="train", val_fraction=0.2)
    assert folder.paths == train.paths


def test_a_folder_with_no_or_two_lists_is_refused(tmp_path):
    with pytest.raises(DataError, match="is a folder with 0 list files .none.; give one JSONL"):
        ImageFolderDataset(path=str(tmp_path))
    (tmp_path / "a.jsonl").write_text("")
    (tmp_path / "b.csv").write_text("image,caption\n")
    with pytest.raises(DataError, match="is a folder with 2 list files .a.jsonl, b.csv."):
        ImageFolderDataset(path=str(tmp_path))


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="not found"):
        ImageFolderDataset(path=str(tmp_path / "none.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.png", "caption": "x"}\nnot json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not a JSON object"):
        ImageFolderDataset(path=str(bad))
    bad.write_text('{"image": "a.png"}\n')
    with pytest.raises(DataError, match="needs a string 'image'.*'caption'"):
        ImageFolderDataset(path=str(bad))
    missing = tmp_path / "missing.csv"
    missing.write_text("image,caption\nnope.png,a thing\n")
    with pytest.raises(DataError, match="nope.png .*missing.csv:2"):
        ImageFolderDataset(path=str(missing), val_fraction=0.0)
    header = tmp_path / "header.csv"
    header.write_text("file,text\na.png,x\n")
    with pytest.raises(DataError, match="must name 'image' and 'caption'"):
        ImageFolderDataset(path=str(header))
    (tmp_path / "fake.png").write_text("not an image")
    listing = tmp_path / "fake.jsonl"
    listing.write_text('{"image": "fake.png", "caption": "x"}\n')
    dataset = ImageFolderDataset(path=str(listing), val_fraction=0.0)
    with pytest.raises(DataError, match="cannot read image .*fake.png"):
        dataset[0]


def test_distractor_words_never_name_an_item_and_keep_the_caption():
    from multimodal.data.images import add_distractors, distractor_words

    words = set(distractor_words())
    for label in range(10):
        for name in names_of(label):
            assert not set(name.replace("-", " ").split()) & words, name
    rng = random.Random(0)
    for _ in range(50):
        caption = class_caption(3, rng)
        padded = add_distractors(caption, rng)
        assert caption in padded and len(padded.split()) > len(caption.split())


@requires_fashion_mnist
def test_distractor_rate_pads_that_share_of_captions():
    plain = FashionMNISTDataset(max_items=400)
    padded = FashionMNISTDataset(max_items=400, distractor_rate=0.5)
    changed = sum(a != b for a, b in zip(plain.captions, padded.captions))
    assert 140 < changed < 260
    assert all(a in b for a, b in zip(plain.captions, padded.captions))
    with pytest.raises(DataError, match="distractor_rate"):
        FashionMNISTDataset(max_items=4, distractor_rate=1.5)
