"""Video modality: the spatio-temporal DiT against the image DiT, the frame VAE, the pipeline,
MP4/GIF files and the CLI. Everything runs on tiny untrained components and needs no dataset."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from multimodal.cli import main
from multimodal.errors import CheckpointError, InputError
from multimodal.modalities.image import ImageVAETokenizer, LatentDiT
from multimodal.modalities.video import LatentVideoDiT, VideoVAETokenizer
from multimodal.modalities.video import files
from multimodal.pipelines import load_pipeline
from multimodal.testing import (TINY, tiny_backbone, tiny_image_checkpoint,
                                tiny_video_checkpoint, tiny_video_pipeline)

DIT = TINY["decoders"]["latent_dit"]


@pytest.fixture(scope="module")
def pipe():
    return tiny_video_pipeline()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.set_num_threads(1)
    return tiny_video_checkpoint(tmp_path_factory.mktemp("video") / "ckpt")


def _inputs(b=3, t=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, 4, 12, 12, generator=g)
    context = torch.randn(b, 5, 32, generator=g)
    mask = torch.ones(b, 5, dtype=torch.bool)
    mask[0, 3:] = False
    return x, torch.tensor([3, 400, 999])[:b], context, mask


# -- the denoiser -------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_zeroed_temporal_layers_give_the_image_path(prediction_type):
    backbone = tiny_backbone().eval()
    image = LatentDiT(backbone=backbone, sample_size=12, prediction_type=prediction_type,
                      **DIT).eval()
    video = LatentVideoDiT.from_image_denoiser(image, backbone=backbone, num_frames=4).eval()
    assert video.noise_schedule == image.noise_schedule
    x, t, context, mask = _inputs(t=4)
    with torch.no_grad():
        one = video(x[:, :1], t, context, mask)[:, 0]
        torch.testing.assert_close(one, image(x[:, 0], t, context, mask), rtol=0, atol=0)
        # Every frame of a longer clip too: zero temporal layers leave frames independent.
        for f in range(4):
            torch.testing.assert_close(video(x, t, context, mask)[:, f],
                                       image(x[:, f], t, context, mask), rtol=1e-5, atol=1e-5)
        # Temporal weights that were trained (non-zero) are reset by load_image_denoiser.
        for layer in video.temporal:
            layer.proj_out.weight.normal_(0, 0.5)
        video.motion_field["out"].weight.normal_(0, 0.5)
        assert not torch.allclose(video(x[:, :1], t, context, mask)[:, 0],
                                  image(x[:, 0], t, context, mask))
        video.load_image_denoiser(image)
        torch.testing.assert_close(video(x[:, :1], t, context, mask)[:, 0],
                                   image(x[:, 0], t, context, mask), rtol=0, atol=0)


def test_temporal_layers_mix_frames_in_order():
    video = LatentVideoDiT(backbone=tiny_backbone(), **TINY["decoders"]["latent_video_dit"]).eval()
    with torch.no_grad():
        for layer in video.temporal:
            layer.proj_out.weight.normal_(0, 0.5)
    x, t, context, mask = _inputs(t=6)
    changed = x.clone()
    changed[:, 0] += 1.0
    with torch.no_grad():
        out, out_changed = video(x, t, context, mask), video(changed, t, context, mask)
        assert not torch.allclose(out[:, 5], out_changed[:, 5])  # frame 0 reaches frame 5
        # Rotary positions: reversing time is not the same as reversing the output.
        assert not torch.allclose(video(x.flip(1), t, context, mask), out.flip(1), atol=1e-4)
    assert out.shape == (3, 6, 4, 12, 12)
    with pytest.raises(ValueError, match="max_frames = 8"):
        video(torch.zeros(1, 9, 4, 12, 12), t[:1], context[:1])


def test_frame_positions_tell_identical_frames_apart():
    """Without absolute frame positions a model cannot place frame 0 differently from frame 7
    at high noise, and so cannot learn a direction (see the denoiser's docstring)."""
    x, t, context, mask = _inputs(t=4)
    same = x[:, :1].expand(-1, 4, -1, -1, -1)  # four identical frames
    outputs = {}
    for frame_positions in (False, True):
        torch.manual_seed(0)
        video = LatentVideoDiT(backbone=tiny_backbone(), frame_positions=frame_positions,
                               **TINY["decoders"]["latent_video_dit"]).eval()
        with torch.no_grad():
            for layer in video.temporal:
                layer.proj_out.weight.normal_(0, 0.5)
                layer.cross_out.weight.normal_(0, 0.5)
            outputs[frame_positions] = video(same, t, context, mask)
    unplaced, placed = outputs[False], outputs[True]
    torch.testing.assert_close(unplaced[:, 0], unplaced[:, 3], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(placed[:, 0], placed[:, 3], atol=1e-3)


def test_motion_field_reads_the_prompt_from_the_first_step():
    """The motion field's zero output projection gets a gradient at initialisation, and once
    it is non-zero two prompts give two different biases over frames and places."""
    video = LatentVideoDiT(backbone=tiny_backbone(), **TINY["decoders"]["latent_video_dit"])
    x, t, context, mask = _inputs(t=4)
    video(x, t, context, mask).square().mean().backward()
    out = video.motion_field["out"]
    assert out.weight.grad is not None and out.weight.grad.abs().sum() > 0
    with torch.no_grad():
        out.weight.normal_(0, 0.5)
        field = video.field(context, mask, 4)  # (b, t, m, w)
    assert field.shape == (3, 4, 36, 16)
    assert not torch.allclose(field[0], field[1])  # the prompt
    assert not torch.allclose(field[:, 0], field[:, 3])  # the frame


def test_image_denoiser_of_other_sizes_is_refused():
    backbone = tiny_backbone()
    video = LatentVideoDiT(backbone=backbone, **TINY["decoders"]["latent_video_dit"])
    other = LatentDiT(backbone=backbone, num_layers=3, num_attention_heads=2, attention_head_dim=8)
    with pytest.raises(CheckpointError, match="does not fit.*unexpected net.transformer_blocks.2"):
        video.load_image_denoiser(other)
    with pytest.raises(ValueError, match="num_frames <= max_frames"):
        LatentVideoDiT(backbone=backbone, num_frames=16, max_frames=8)


def test_frame_vae_encodes_clips_and_shares_the_image_format(tmp_path):
    vae = VideoVAETokenizer(**TINY["tokenizers"]["video_vae"])
    assert vae.fit_on == "video" and vae.latent_shape == (4, 12, 12)
    clips = [{"video": torch.rand(8, 1, 48, 48) * 2 - 1} for _ in range(3)]
    vae.fit(clips, progress=False)
    z = vae.encode_video(torch.stack([c["video"] for c in clips]))
    assert z.shape == (3, 8, 4, 12, 12)
    torch.testing.assert_close(z[1, 2], vae.encode(clips[1]["video"][2:3])[0])
    assert vae.decode_video(z).shape == (3, 8, 1, 48, 48)
    vae.save(tmp_path)
    as_image = ImageVAETokenizer.load(tmp_path, image_size=48,
                                      **TINY["tokenizers"]["image_vae"])
    torch.testing.assert_close(as_image.encode(clips[0]["video"]), z[0])


# -- the pipeline -------------------------------------------------------------------------------
def test_seeded_generation_is_reproducible(pipe):
    kwargs = dict(num_inference_steps=3, num_samples=2, progress=False)
    a = pipe("a sneaker moving left", seed=7, **kwargs)
    b = pipe("a sneaker moving left", seed=7, **kwargs)
    c = pipe("a sneaker moving left", seed=8, **kwargs)
    assert len(a.videos) == 2 and a.videos[0].shape == (8, 48, 48) and a.videos[0].dtype == np.uint8
    assert all(np.array_equal(x, y) for x, y in zip(a.videos, b.videos))
    assert not np.array_equal(a.videos[0], c.videos[0])
    assert not np.array_equal(a.videos[0], a.videos[1])
    assert a.latents.shape == (2, 8, 4, 12, 12) and a.num_frames == 8
    assert pipe("a bag going up", num_frames=3, seed=0, num_inference_steps=2,
                progress=False).videos[0].shape == (3, 48, 48)


def test_batched_guidance_equals_two_forwards(pipe):
    kwargs = dict(seed=3, num_inference_steps=3, num_samples=2, progress=False,
                  negative_prompt="a bag")
    batched = pipe("a coat sliding right", **kwargs).latents
    pipe.batch_guidance = False
    try:
        two = pipe("a coat sliding right", **kwargs).latents
    finally:
        pipe.batch_guidance = True
    # A batch of 4 and two of 2 take different fp32 GEMM kernels on some CPUs; over 3 steps
    # of the video DiT that moves a few latents by ~1e-4 (measured), far below a real error.
    torch.testing.assert_close(batched, two, rtol=1e-3, atol=5e-4)


def test_bad_pipeline_input_names_the_limit(pipe):
    with pytest.raises(InputError, match=r"from 2 \(the minimum\) to 8 \(the most this model"):
        pipe("a bag", num_frames=1)
    with pytest.raises(InputError, match="to 8 .*max_frames.*got 9"):
        pipe("a bag", num_frames=9)
    with pytest.raises(InputError, match=r"fps must be a number in \[0.1, 100\]"):
        pipe("a bag", fps=0)
    with pytest.raises(InputError, match="num_inference_steps"):
        pipe("a bag", num_inference_steps=0)
    # A direction word never seen in training is not an error: the clip is made anyway.
    assert pipe("a bag moving diagonally", num_inference_steps=1, seed=0,
                progress=False).videos[0].shape == (8, 48, 48)


# -- files --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fps", [10.0, 25.0, 4.0])
def test_mp4_and_gif_read_back_with_their_frame_count_and_fps(tmp_path, fps):
    frames = np.zeros((12, 48, 48), np.uint8)
    for t in range(12):
        frames[t, 10:30, 2 + 2 * t : 12 + 2 * t] = 200
    (tmp_path / "a.mp4").write_bytes(files.mp4_bytes(frames, fps))
    (tmp_path / "a.gif").write_bytes(files.gif_bytes(frames, fps))
    for name in ("a.mp4", "a.gif"):
        info = files.read_video_info(tmp_path / name)
        assert info["frames"] == 12 and info["fps"] == pytest.approx(fps) and \
            info["size"] == (48, 48), name
    back = files.read_video_frames(tmp_path / "a.gif")
    assert back.shape == (12, 48, 48, 3) and np.array_equal(back[..., 0], frames)
    mp4 = files.read_video_frames(tmp_path / "a.mp4")[..., 0].astype(int)
    assert np.abs(mp4 - frames).mean() < 3  # H.264 is lossy, but close
    assert files.frame_strip(frames).shape == (48, 12 * 48)


def test_cli_writes_mp4_gif_sidecar_and_strip(checkpoint, tmp_path, capsys):
    out = tmp_path / "clips"
    assert main(["generate", "text-to-video", "--checkpoint", str(checkpoint), "--prompt",
                 "a sneaker moving left", "--num-samples", "2", "--num-frames", "6", "--fps",
                 "5", "--seed", "4", "--num-inference-steps", "2", "--strip", "--out",
                 str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["000.gif", "000.json", "000.mp4", "000.png", "001.gif", "001.json",
                     "001.mp4", "001.png"]
    meta = json.loads((out / "000.json").read_text())
    assert meta["prompt"] == "a sneaker moving left" and meta["seed"] == 4
    assert meta["num_frames"] == 6 and meta["fps"] == 5.0 and meta["sample"] == 0
    assert meta["files"] == ["000.mp4", "000.gif", "000.png"]
    for name in ("000.mp4", "001.gif"):
        info = files.read_video_info(out / name)
        assert info["frames"] == 6 and info["fps"] == pytest.approx(5.0)
    with Image.open(out / "000.png") as strip:
        assert strip.size == (6 * 48, 48)
    pipe = load_pipeline("text-to-video", checkpoint)
    again = pipe("a sneaker moving left", num_samples=2, num_frames=6, seed=4,
                 num_inference_steps=2, progress=False)
    assert np.array_equal(files.read_video_frames(out / "001.gif")[..., 0], again.videos[1])
    assert "seed 4" in capsys.readouterr().out


def test_cli_without_ffmpeg_writes_gifs_and_warns(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(files, "ffmpeg_available", lambda: False)
    out = tmp_path / "gif_only"
    assert main(["generate", "text-to-video", "--checkpoint", str(checkpoint), "--prompt",
                 "a bag going up", "--num-inference-steps", "2", "--seed", "0", "--out",
                 str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["000.gif", "000.json"]
    assert "warning: ffmpeg is not available" in capsys.readouterr().err


def test_cli_bad_input_exits_2_without_partial_files(checkpoint, tmp_path, capsys):
    out = tmp_path / "never"
    for bad, message in ((["--num-frames", "1"], "from 2 (the minimum) to 8"),
                         (["--num-frames", "40"], "max_frames), got 40"),
                         (["--fps", "500"], "fps must be a number")):
        assert main(["generate", "text-to-video", "--checkpoint", str(checkpoint), "--prompt",
                     "a coat", "--num-inference-steps", "2", "--out", str(out), *bad]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["generate", "text-to-video", "--checkpoint", str(checkpoint), "--out",
                 str(blocker), "--num-inference-steps", "2"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["generate", "text-to-video", "--checkpoint", str(checkpoint), "--out",
                 str(blocker / "under_a_file"), "--num-inference-steps", "2"]) == 2
    assert "cannot write to output directory" in capsys.readouterr().err


def test_checkpoint_without_video_decoder(tmp_path):
    image = tiny_image_checkpoint(tmp_path / "image")
    with pytest.raises(CheckpointError, match="has no decoders.video.*text-to-video needs"):
        load_pipeline("text-to-video", image)


@pytest.mark.slow  # runs an example
def test_text_to_video_example(checkpoint, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "examples" / "text_to_video.py"),
                          "a bag going up", "--checkpoint", str(checkpoint), "--steps", "2",
                          "--out", str(tmp_path / "ex")], cwd=root, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "clip 1: 8 frames at 10 fps" in out.stdout
    assert sorted(p.name for p in (tmp_path / "ex").iterdir()) == [
        "000.gif", "000.mp4", "001.gif", "001.mp4", "strip.png"]
