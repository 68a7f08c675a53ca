"""Video datasets: Moving Fashion-MNIST clips match their captions; a user's MP4/GIF folder."""

import numpy as np
import pytest
import torch

from multimodal.data.images import SYNONYMS, FashionMNISTDataset
from multimodal.data.video import (DIRECTION_PHRASES, DIRECTIONS, VIDEO_TEMPLATES,
                                   MovingFashionMNISTDataset, VideoFolderDataset)
from multimodal.errors import DataError
from multimodal.evaluation.video import HELD_OUT_TEMPLATES, centre_of_mass, motion_direction
from multimodal.testing import tiny_video_folder

from conftest import requires_fashion_mnist


def _names(label):
    return [p for pair in SYNONYMS[label] for p in pair if p]


@requires_fashion_mnist
def test_clip_motion_matches_its_caption():
    ds = MovingFashionMNISTDataset(split="val", val_clips=60)
    sprites = FashionMNISTDataset(split="val")._pixels
    clips = ds.get_videos()
    assert clips.shape == (60, 16, 1, 48, 48) and clips.min() == -1 and clips.max() <= 1
    assert set(ds.directions) == set(DIRECTIONS)
    for i in range(len(ds)):
        direction, caption = ds.directions[i], ds.caption(i)
        assert any(name in caption for name in _names(ds.labels[i])), caption
        words = {p for d, phrases in DIRECTION_PHRASES.items() if d == direction for p in phrases}
        assert any(caption.endswith(w) or f" {w} " in caption for w in words), caption
        xs, ys = ds.positions(i)
        along, fixed = (xs, ys) if direction in ("left", "right") else (ys, xs)
        assert len(set(fixed.tolist())) == 1  # a straight line
        step = np.diff(along)
        sign = 1 if direction in ("right", "down") else -1
        assert (sign * step >= 0).all() and sign * (along[-1] - along[0]) >= 12
        assert along.min() >= 0 and along.max() <= 48 - 28
        # The real sprite, unscaled, at those positions.
        frame = ((clips[i, 5, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
        sprite = sprites[ds._sprite_index[i]]
        assert np.array_equal(frame[ys[5] : ys[5] + 28, xs[5] : xs[5] + 28], sprite)
        assert frame.sum() == sprite.astype(np.int64).sum()
    moved = motion_direction(centre_of_mass((clips[:, :, 0] + 1) / 2))
    assert moved == ds.directions


@requires_fashion_mnist
def test_clips_are_deterministic_with_a_seed_and_captions_vary():
    a = MovingFashionMNISTDataset(num_clips=40, num_frames=8)
    b = MovingFashionMNISTDataset(num_clips=40, num_frames=8)
    other = MovingFashionMNISTDataset(num_clips=40, num_frames=8, seed=1)
    assert torch.equal(a.get_videos(), b.get_videos()) and a.captions == b.captions
    assert not torch.equal(a.get_videos(), other.get_videos())
    assert a.get_videos().shape == (40, 8, 1, 48, 48)
    assert torch.equal(a[3]["video"], a.get_videos([3])[0]) and a[3]["caption"] == a.captions[3]
    many = MovingFashionMNISTDataset(num_clips=400, num_frames=8).captions
    assert len(set(many)) > 300
    # Evaluation prompts are phrased in ways no training caption is.
    held = [t.split("{a}")[0].strip() or t.split("{a}")[1].split("{d}")[0].strip()
            for t in HELD_OUT_TEMPLATES]
    for caption in many:
        for marker in held:
            assert marker not in caption, (marker, caption)
    assert not set(HELD_OUT_TEMPLATES) & set(VIDEO_TEMPLATES)


@requires_fashion_mnist
def test_bounce_reflects_off_the_edges_and_canvas_grows():
    ds = MovingFashionMNISTDataset(num_clips=20, bounce=True, max_speed=4.0)
    for i in range(len(ds)):
        xs, ys = ds.positions(i)
        assert xs.min() >= 0 and ys.min() >= 0 and max(xs.max(), ys.max()) <= 20
    assert any(len(set(np.sign(np.diff(ds.positions(i)[0 if ds.directions[i] in
                                                        ("left", "right") else 1])))) > 1
               for i in range(len(ds)))  # some clip turns round
    big = MovingFashionMNISTDataset(num_clips=2, canvas_size=64, num_frames=8)
    assert big.get_videos().shape == (2, 8, 1, 64, 64)


@requires_fashion_mnist
def test_bad_dataset_arguments_name_the_limit():
    with pytest.raises(DataError, match="num_frames must be >= 8"):
        MovingFashionMNISTDataset(num_frames=4)
    with pytest.raises(DataError, match="canvas_size must be >= 48"):
        MovingFashionMNISTDataset(canvas_size=32)
    with pytest.raises(DataError, match=r"lower it to <= 1\.333.*bounce"):
        MovingFashionMNISTDataset(max_speed=3.0)
    with pytest.raises(DataError, match="unknown direction"):
        MovingFashionMNISTDataset(directions=["sideways"])


def test_video_folder_reads_mp4_and_gif(tmp_path):
    path = tiny_video_folder(tmp_path / "clips", count=6)
    ds = VideoFolderDataset(path=path, val_fraction=0.0, num_frames=8, frame_size=48)
    assert len(ds) == 6 and ds.captions[0] == "a square moving right"
    videos = ds.get_videos()
    assert videos.shape == (6, 8, 1, 48, 48)
    for i in range(6):  # MP4 (lossy) and GIF clips both show the square moving
        moved = motion_direction(centre_of_mass((videos[i : i + 1, :, 0] + 1) / 2))[0]
        assert moved == ("right" if i % 2 == 0 else "down")
    assert ds.get_frames([9]).shape == (1, 1, 48, 48)
    with pytest.raises(DataError, match="needs at least 9"):
        VideoFolderDataset(path=path, val_fraction=0.0, num_frames=9).get_videos([0])
    (tmp_path / "clips" / "clips" / "001.gif").unlink()
    with pytest.raises(DataError, match="not found.*001.gif"):
        VideoFolderDataset(path=path, val_fraction=0.0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"clip": "x.mp4", "caption": "c"}\n')
    with pytest.raises(DataError, match="bad.jsonl:1: a record needs a string 'video'"):
        VideoFolderDataset(path=str(bad))


def test_centred_paths_cross_the_centre_and_keep_the_motion():
    from multimodal.data.video import DIRECTION_VECTORS

    ds = MovingFashionMNISTDataset(num_clips=24, num_frames=9, centred=True)
    plain = MovingFashionMNISTDataset(num_clips=24, num_frames=9)
    assert ds.directions == plain.directions and ds.labels == plain.labels
    for i in range(len(ds)):
        xs, ys = ds.positions(i)
        dx, dy = DIRECTION_VECTORS[ds.directions[i]]
        along, cross = (xs, ys) if dx else (ys, xs)
        assert (cross == 10).all()  # (48 - 28) / 2
        assert abs(along[4] - 10) <= 1  # the middle frame is centred
        steps = np.diff(along) * (dx + dy)
        assert (steps >= 0).all() and steps.sum() > 0
