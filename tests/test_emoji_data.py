"""The emoji dataset reader on tiny fake packages (no network): fetching with a stand-in npm,
checksums and re-fetching, captions, the split by concept, compositing, and the errors."""

from __future__ import annotations

import sys
import tarfile
from dataclasses import replace

import numpy as np
import pytest

from multimodal.data.emoji import (HELD_OUT_TEMPLATES, PACKAGES, TEMPLATES, EmojiDataset,
                                   check_styles, code_key, composite, fetch_package,
                                   parse_background, sha256_file, tone_phrase)
from multimodal.errors import DataError
from multimodal.testing import tiny_emoji_packages


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """``(archive_dir, sha256 per style)`` of the three fake packages."""
    return tiny_emoji_packages(tmp_path_factory.mktemp("emoji"))


def fake_npm(tmp_path, archive_dir, *, fail: str | None = None):
    """A stand-in for npm: ``npm pack NAME@VERSION`` copies NAME-VERSION.tgz from
    ``archive_dir`` into the working directory and counts its calls in ``calls.txt``; with
    ``fail`` it prints that as npm's error and exits 1."""
    script = tmp_path / "npm"
    script.write_text(f"""#!{sys.executable}
import shutil, sys
from pathlib import Path
with open({str(tmp_path / 'calls.txt')!r}, "a") as fh:
    fh.write(" ".join(sys.argv[1:]) + "\\n")
if {fail!r}:
    print({fail!r}, file=sys.stderr)
    sys.exit(1)
name, version = sys.argv[2].rsplit("@", 1)
shutil.copy(Path({str(archive_dir)!r}) / f"{{name}}-{{version}}.tgz", f"{{name}}-{{version}}.tgz")
""")
    script.chmod(0o755)
    return str(script)


def calls(tmp_path) -> list[str]:
    path = tmp_path / "calls.txt"
    return path.read_text().splitlines() if path.exists() else []


def dataset(packages, tmp_path, **kwargs) -> EmojiDataset:
    archive_dir, sha = packages
    return EmojiDataset(**{"split": "train", "archive_dir": str(archive_dir), "sha256": sha,
                           "cache_dir": str(tmp_path / "cache"), "val_fraction": 0.0,
                           **kwargs})


# -- fetching and checksums ------------------------------------------------------------------
def test_fetches_with_npm_once_and_checks_the_sha256(packages, tmp_path):
    archive_dir, sha = packages
    npm = fake_npm(tmp_path, archive_dir)
    kwargs = dict(split="train", sha256=sha, cache_dir=str(tmp_path / "cache"), npm=npm,
                  val_fraction=0.0)
    first = EmojiDataset(**kwargs)
    fetched = sorted(c.split()[1] for c in calls(tmp_path))
    assert fetched == sorted(p.spec for p in PACKAGES.values())
    assert all("--ignore-scripts" in c for c in calls(tmp_path))
    again = EmojiDataset(**kwargs)  # cached archives and rasters: npm is not run again
    assert len(calls(tmp_path)) == 3
    assert np.array_equal(first.get_pixels(), again.get_pixels())
    assert first.captions == again.captions


def test_a_corrupted_archive_is_fetched_again(packages, tmp_path):
    archive_dir, sha = packages
    npm = fake_npm(tmp_path, archive_dir)
    package = replace(PACKAGES["openmoji"], sha256=sha["openmoji"])
    cache = tmp_path / "cache"
    path = fetch_package(package, cache_dir=cache, npm=npm)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="corrupted .*fetching openmoji@17.0.0 again"):
        again = fetch_package(package, cache_dir=cache, npm=npm)
    assert sha256_file(again) == sha["openmoji"] and len(calls(tmp_path)) == 2


def test_a_download_that_still_mismatches_is_an_error(packages, tmp_path):
    archive_dir, _ = packages
    npm = fake_npm(tmp_path, archive_dir)
    wrong = replace(PACKAGES["noto"], sha256="0" * 64)
    with pytest.raises(DataError, match="served emoji-datasource-google@16.0.0 with sha256 "
                                        ".*pinned to 0000.*nothing was kept"):
        fetch_package(wrong, cache_dir=tmp_path / "cache", npm=npm)
    assert not list((tmp_path / "cache" / "archives").glob("*.tgz"))  # nothing kept
    with pytest.raises(DataError, match="has sha256 .*pinned to 0000"):
        fetch_package(wrong, cache_dir=tmp_path / "cache", archive_dir=archive_dir)


def test_npm_missing_or_failing_says_what_to_install(packages, tmp_path):
    _, sha = packages
    with pytest.raises(DataError, match=r"npm is not installed.*apt-get install npm"):
        EmojiDataset(split="train", sha256=sha, cache_dir=str(tmp_path / "c1"),
                     npm=str(tmp_path / "no-such-npm"))
    npm = fake_npm(tmp_path, tmp_path, fail="npm error code ETARGET\nnpm error notarget "
                                            "No matching version found for openmoji@17.0.0.")
    with pytest.raises(DataError, match=r"npm could not fetch the pinned package "
                                        r".*\(npm error code ETARGET\).*npm view"):
        EmojiDataset(split="train", sha256=sha, cache_dir=str(tmp_path / "c2"), npm=npm)
    with pytest.raises(DataError, match="not in archive_dir"):
        EmojiDataset(split="train", sha256=sha, cache_dir=str(tmp_path / "c3"),
                     archive_dir=str(tmp_path / "empty"))


def test_a_truncated_archive_names_itself(packages, tmp_path):
    archive_dir, sha = packages
    broken = tmp_path / "broken"
    broken.mkdir()
    for style, package in PACKAGES.items():
        data = (archive_dir / package.filename).read_bytes()
        (broken / package.filename).write_bytes(data[: len(data) // 2])
    cut = {s: sha256_file(broken / p.filename) for s, p in PACKAGES.items()}
    with pytest.raises(DataError, match="cannot read the package archive"):
        EmojiDataset(split="train", sha256=cut, archive_dir=str(broken),
                     cache_dir=str(tmp_path / "cache"))


# -- items, captions, split ------------------------------------------------------------------
def test_items_are_rgb_on_the_background_with_concept_labels(packages, tmp_path):
    data = dataset(packages, tmp_path)
    # 2 concepts (apple, waving hand) x twemoji and noto (+1 skin tone each for the hand), and
    # OpenMoji's apple and hand; the openmoji-only extra and the component are left out.
    assert data.concept_names == ["waving hand", "red apple"]
    assert len(data) == 8
    assert sorted(data.image_styles) == ["noto"] * 3 + ["openmoji"] * 2 + ["twemoji"] * 3
    images = data.get_images()
    assert images.shape == (8, 3, 64, 64) and images.dtype.is_floating_point
    assert float(images.min()) >= -1 and float(images.max()) <= 1
    item = data[0]
    assert item["image"].shape == (3, 64, 64) and item["label"] in (0, 1)
    pixels = data.get_pixels()
    assert (pixels[:, :, 0, 0] == 255).all()  # the transparent corner is white
    black = dataset(packages, tmp_path, background="black")
    assert (black.get_pixels()[:, :, 0, 0] == 0).all()
    assert data.item_styles == data.image_styles and data.item_images == list(range(8))
    tones = [t for t in data.tones if t]
    assert tones == ["medium-dark", "medium-dark"]


def test_captions_name_the_concept_style_and_tone(packages, tmp_path):
    data = dataset(packages, tmp_path, style_rate=1.0, captions_per_image=20)
    assert len(data) == 8 * 20
    assert data.labels[:20] == [data.labels[0]] * 20  # one image, 20 phrasings
    for i, caption in enumerate(data.captions):
        image = data.image_of(i)
        concept = data.concepts[data.image_concepts[image]]
        assert any(name in caption for name in concept.names), caption
        style = data.image_styles[image]
        assert any(p in caption for p in {"twemoji": ("Twemoji", "Twitter", "flat"),
                                          "noto": ("Noto", "Google", "shaded", "glossy"),
                                          "openmoji": ("OpenMoji", "outline", "line art")}[style])
        if data.image_tones[image]:
            assert "medium-dark skin" in caption
    assert len(set(data.captions)) > 40  # varied phrasings
    assert any("hello" in c or "wave" in c for c in data.captions)  # keywords are used
    plain = dataset(packages, tmp_path, style_rate=0.0)
    assert not any(w in c for c in plain.captions for w in ("Twemoji", "Noto", "OpenMoji"))
    again = dataset(packages, tmp_path, style_rate=1.0, captions_per_image=20)
    assert again.captions == data.captions  # deterministic


def test_held_out_phrasings_never_appear_in_training(packages, tmp_path):
    heads = {t.split("{")[0].strip() for t in HELD_OUT_TEMPLATES if t.split("{")[0].strip()}
    assert not any(t.startswith(tuple(heads)) for t in TEMPLATES)
    data = dataset(packages, tmp_path, captions_per_image=50)
    for caption in data.captions:
        assert not caption.startswith(tuple(heads)), caption
    prompt = data.held_out_prompt(1, 0, style="noto")
    assert prompt == "a picture of a red apple, in the Noto style"
    assert data.held_out_prompt(0, 7, tone="dark") == "draw a waving hand with dark skin tone"


def test_split_holds_whole_concepts(packages, tmp_path):
    train = dataset(packages, tmp_path, val_fraction=0.5)
    val = dataset(packages, tmp_path, val_fraction=0.5, split="val")
    assert train.split_concepts() and val.split_concepts()
    assert not set(train.split_concepts()) & set(val.split_concepts())
    assert len(train) + len(val) == 8
    assert train.concept_names == val.concept_names  # labels mean the same in both splits


def test_a_style_can_be_held_out(packages, tmp_path):
    data = dataset(packages, tmp_path, styles=["twemoji", "openmoji"], skin_tones=False)
    assert set(data.image_styles) == {"twemoji", "openmoji"}
    assert all(t is None for t in data.image_tones)
    assert len(data) == 4
    small = dataset(packages, tmp_path, image_size=32, styles=["noto", "openmoji"])
    assert small.get_images().shape[1:] == (3, 32, 32)


def test_composite_and_background_parsing():
    rgba = np.zeros((1, 4, 2, 2), np.uint8)
    rgba[0, :, 0, 0] = (200, 0, 0, 255)  # opaque red
    rgba[0, :, 0, 1] = (200, 0, 0, 0)  # fully transparent
    rgba[0, :, 1, 0] = (0, 0, 0, 128)  # half black
    rgb = composite(rgba, (255, 255, 255))
    assert tuple(rgb[0, :, 0, 0]) == (200, 0, 0)
    assert tuple(rgb[0, :, 0, 1]) == (255, 255, 255)
    assert tuple(rgb[0, :, 1, 0]) == (127, 127, 127)
    assert parse_background("white") == (255, 255, 255)
    assert parse_background("#102030") == (16, 32, 48)
    assert parse_background([1, 2, 3]) == (1, 2, 3)
    with pytest.raises(DataError, match="background must be a colour name"):
        parse_background("blurple")


def test_codes_and_tones():
    assert code_key("2764-fe0f") == "2764"
    assert tone_phrase("1F44B-1F3FE") == "medium-dark"
    assert tone_phrase("1F9D1-1F3FB-200D-1F91D-200D-1F9D1-1F3FF") == "light and dark"
    assert tone_phrase("1F34E") is None


def test_bad_arguments_say_what_is_accepted(packages, tmp_path):
    with pytest.raises(DataError, match=r"unknown emoji style 'twitter' \(did you mean "
                                        r"'twemoji'\?\); accepted: twemoji, noto, openmoji"):
        check_styles(["twitter"])
    with pytest.raises(DataError, match=r"unknown emoji style 'notto' \(did you mean 'noto'"):
        dataset(packages, tmp_path, styles=["notto"])
    with pytest.raises(DataError, match="styles must be a non-empty list"):
        check_styles("twemoji")
    with pytest.raises(DataError, match="image_size must be an integer in"):
        dataset(packages, tmp_path, image_size=4)
    with pytest.raises(DataError, match="split must be"):
        dataset(packages, tmp_path, split="test")
    with pytest.raises(DataError, match="emoji val split is empty"):
        dataset(packages, tmp_path, split="val")  # val_fraction 0: no concept is held out


def test_fake_archives_have_the_package_layout(packages):
    archive_dir, _ = packages
    with tarfile.open(archive_dir / PACKAGES["twemoji"].filename) as tar:
        names = tar.getnames()
    assert "package/emoji.json" in names and any(n.startswith("package/img/twitter/64/")
                                                 for n in names)
