"""Nothing lost, nothing silent: the generation arguments every pipeline refuses, the steps and
rates outputs record, per-sample randomness, files never overwritten unasked, text that stays
text."""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from multimodal.cli import main
from multimodal.data.espeak import foreign_letters
from multimodal.errors import InputError
from multimodal.modalities.video.files import (ffmpeg_available, gif_bytes, gif_timing,
                                               mp4_bytes, read_video_frames, read_video_info)
from multimodal.outputs import write_outputs
from multimodal.pipelines import load_pipeline
from multimodal.pipelines.text_to_video import VideoGenerationOutput
from multimodal.testing import tiny_image_pipeline, tiny_video_pipeline


@pytest.fixture(scope="module")
def image_pipe():
    return tiny_image_pipeline("image-to-image")


@pytest.fixture(scope="module")
def t2i_pipe():
    return tiny_image_pipeline("text-to-image")


@pytest.fixture(scope="module")
def video_pipe():
    return tiny_video_pipeline()


@pytest.fixture(scope="module")
def text_pipe():
    return load_pipeline("text-generation")


@pytest.fixture(scope="module")
def audio_pipe():
    return load_pipeline("text-to-audio")


def _image(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (32, 32), dtype=np.uint8)


# -- 8: image-to-image runs at least one step when strength > 0 --------------------------------
def test_small_strength_runs_one_step_and_records_it(image_pipe):
    image = _image()
    out = image_pipe("a bag", image=image, strength=0.01, num_inference_steps=10, seed=0,
                     progress=False)
    assert out.metadata(0)["steps_run"] == 1
    assert out.latents is not None  # a step ran: the image went through the sampler
    assert not np.array_equal(out.images[0], image)


def test_strength_zero_returns_the_image_and_says_zero_steps(image_pipe):
    image = _image()
    out = image_pipe("a bag", image=image, strength=0.0, num_inference_steps=10, seed=0,
                     progress=False)
    assert np.array_equal(out.images[0], image)
    assert out.metadata(0)["steps_run"] == 0


def test_usual_strength_records_the_steps_it_ran(image_pipe):
    out = image_pipe("a bag", image=_image(), strength=0.6, num_inference_steps=5, seed=0,
                     progress=False)
    assert out.metadata(0)["steps_run"] == 3  # int(5 * 0.6)


# -- 9: non-finite floats, and metadata JSON can carry --------------------------------------
NON_FINITE = [float("inf"), float("-inf"), float("nan")]


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("name", ["guidance_scale", "strength"])
def test_image_floats_must_be_finite(image_pipe, name, value):
    kwargs = {"image": _image(), "num_inference_steps": 2, "seed": 0, "progress": False,
              name: value}
    with pytest.raises(InputError, match=name):
        image_pipe("a bag", **kwargs)


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("name", ["fps", "guidance_scale"])
def test_video_floats_must_be_finite(video_pipe, name, value):
    with pytest.raises(InputError, match=name):
        video_pipe("a bag", num_inference_steps=1, seed=0, progress=False, **{name: value})


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("name", ["temperature", "top_p"])
def test_text_floats_must_be_finite(text_pipe, name, value):
    with pytest.raises(InputError, match=name):
        text_pipe("a", max_new_tokens=1, seed=0, **{name: value})


@pytest.mark.parametrize("temperature", [1e-10, 1e-40, 1e-300])
def test_a_tiny_temperature_is_greedy_not_nan(text_pipe, temperature):
    tiny = text_pipe("Hi", max_new_tokens=5, seed=0, temperature=temperature)
    assert tiny.texts == text_pipe("Hi", max_new_tokens=5, do_sample=False).texts


@pytest.mark.parametrize("fps", [0.0999, 1e-3, 1e-300])
def test_too_slow_a_frame_rate_is_refused_before_generating(video_pipe, fps):
    with pytest.raises(InputError, match=r"fps.*\[0.1, 100\]"):
        video_pipe("a bag", num_inference_steps=1, seed=0, progress=False, fps=fps)


def test_a_speech_prompt_too_long_for_a_command_line_says_so(audio_pipe):
    with pytest.raises(InputError, match="too long for espeak-ng's command line"):
        audio_pipe("seven " * 30000, seed=0)


@pytest.mark.parametrize("value", NON_FINITE + [10**400])
def test_length_scale_must_be_finite(audio_pipe, value):
    with pytest.raises(InputError, match="length_scale"):
        audio_pipe("seven", seed=0, length_scale=value, progress=False)


def test_cli_guidance_inf_writes_nothing(tmp_path, capsys):
    out = tmp_path / "inf"
    rc = main(["generate", "text-to-image", "--prompt", "a bag", "--guidance-scale", "inf",
               "--num-inference-steps", "1", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "guidance_scale" in err and "inf" in err
    assert not out.exists() or not any(out.iterdir())


@dataclass
class _Output:
    value: float

    @property
    def samples(self):
        return ["text"]

    def metadata(self, index):
        return {"task": "text-generation", "temperature": self.value}


@pytest.mark.parametrize("value", NON_FINITE)
def test_write_outputs_refuses_settings_json_cannot_carry(tmp_path, value):
    with pytest.raises(InputError, match="temperature"):
        write_outputs(_Output(value), tmp_path / "o", produces="text")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


# -- 10: sample i does not depend on num_samples ---------------------------------------------
@pytest.mark.parametrize("scheduler", ["ddpm", "euler", "ddim"])
def test_image_sample_zero_independent_of_num_samples(t2i_pipe, scheduler):
    one = t2i_pipe("a bag", num_inference_steps=3, seed=5, scheduler=scheduler,
                   progress=False)
    three = t2i_pipe("a bag", num_inference_steps=3, seed=5, scheduler=scheduler,
                     num_samples=3, progress=False)
    # equal up to the float noise of a larger batch's matmuls (a shared generator moves them
    # by whole units)
    assert torch.allclose(one.latents[0], three.latents[0], rtol=1e-4, atol=1e-3)
    assert not torch.allclose(three.latents[1], three.latents[0], atol=1e-1)


def test_video_sample_zero_independent_of_num_samples(video_pipe):
    one = video_pipe("a bag", num_inference_steps=2, seed=1, scheduler="ddpm", progress=False)
    two = video_pipe("a bag", num_inference_steps=2, seed=1, scheduler="ddpm", num_samples=2,
                     progress=False)
    assert torch.allclose(one.latents[0], two.latents[0], rtol=1e-4, atol=1e-3)


# -- 11: GIF timing and MP4 padding ---------------------------------------------------------
def _gif_durations(data: bytes) -> list[int]:
    with Image.open(io.BytesIO(data)) as image:
        return [frame.info["duration"] for frame in ImageSequence.Iterator(image)]


def _clip(num_frames=8, size=48):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (num_frames, size, size), dtype=np.uint8)


@pytest.mark.parametrize("fps", [15.0, 12.0, 7.0, 24.0])
def test_gif_total_length_matches_fps(fps):
    frames = _clip(12)
    durations = _gif_durations(gif_bytes(frames, fps))
    assert len(durations) == 12
    assert abs(sum(durations) / 1000 - 12 / fps) <= 0.005  # the clip's length, to 1/200 s
    assert read_video_info_bytes(gif_bytes(frames, fps))["fps"] == pytest.approx(fps, rel=0.01)


def read_video_info_bytes(data: bytes):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.gif"
        path.write_bytes(data)
        return read_video_info(path)


def test_gif_at_10_fps_is_unchanged_and_above_50_warns():
    assert _gif_durations(gif_bytes(_clip(), 10.0)) == [100] * 8
    assert gif_timing(8, 10.0) == ([10] * 8, 10.0)
    with pytest.warns(UserWarning, match="50"):
        gif_bytes(_clip(4), 60.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gif_bytes(_clip(4), 50.0)


def test_video_metadata_records_the_real_gif_rate():
    clip = _clip(8, 40)
    meta = VideoGenerationOutput(videos=[clip], num_frames=8, fps=15.0).metadata(0)
    assert meta["fps"] == 15.0 and meta["gif_fps"] == pytest.approx(8 / 0.53, abs=1e-3)
    assert meta["frame_size"] == [40, 40] and meta["mp4_padded_size"] == [48, 48]
    meta10 = VideoGenerationOutput(videos=[_clip()], num_frames=8, fps=10.0).metadata(0)
    assert not {"gif_fps", "frame_size", "mp4_padded_size"} & set(meta10)


@pytest.mark.skipif(not ffmpeg_available(), reason="no ffmpeg")
def test_mp4_pads_instead_of_stretching_and_reading_crops_back(tmp_path):
    frames = np.zeros((4, 40, 40), np.uint8)
    frames[:, :, 20:] = 255  # right half white: a stretch would move the edge
    data = mp4_bytes(frames, 10.0)
    (tmp_path / "raw.mp4").write_bytes(data)
    decoded = read_video_frames(tmp_path / "raw.mp4")[..., 0].astype(int)
    assert decoded.shape[1:] == (48, 48)
    assert np.abs(decoded[:, :40, :40] - frames).mean() < 4
    assert decoded[:, 42:, :].max() < 30 and decoded[:, :, 44:].max() < 30  # black padding
    output = VideoGenerationOutput(videos=[frames], num_frames=4, fps=10.0)
    write_outputs(output, tmp_path / "v", produces="video")
    assert read_video_frames(tmp_path / "v" / "000.mp4").shape[1:3] == (40, 40)


# -- 12: no silent overwrite -----------------------------------------------------------------
def _gen_text(out, *extra):
    return main(["generate", "text-generation", "--prompt", "a", "--max-new-tokens", "2",
                 "--seed", "0", "--out", str(out), *extra])


def test_generate_refuses_to_overwrite_and_names_the_files(tmp_path, capsys):
    out = tmp_path / "t"
    assert _gen_text(out) == 0
    before = (out / "000.txt").read_bytes()
    (out / "000.txt").write_text("mine")
    capsys.readouterr()
    assert _gen_text(out) == 2
    err = capsys.readouterr().err
    assert "000.txt" in err and "--overwrite" in err
    assert (out / "000.txt").read_text() == "mine"
    assert _gen_text(out, "--overwrite") == 0
    assert (out / "000.txt").read_bytes() == before


def test_write_outputs_overwrite_flag(tmp_path):
    output = _Output(1.0)
    write_outputs(output, tmp_path, produces="text")
    with pytest.raises(InputError, match="000"):
        write_outputs(output, tmp_path, produces="text")
    assert write_outputs(output, tmp_path, produces="text", overwrite=True)


def test_replay_into_the_originals_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "t"
    assert _gen_text(out) == 0
    original = (out / "000.txt").read_bytes()
    assert main(["replay", str(out / "000.txt"), "--out", str(out)]) == 2
    assert "already exist" in capsys.readouterr().err
    assert (out / "000.txt").read_bytes() == original
    assert main(["replay", str(out / "000.txt"), "--out", str(tmp_path / "fresh")]) == 0


# -- 13: text that spells a special token stays text -----------------------------------------
def test_special_token_spellings_encode_as_text(text_pipe):
    tok = text_pipe.tokenizer
    for text in ["<|endoftext|>", "a <|pad|> b", "x<|endoftext|><|endoftext|>y"]:
        ids = tok.encode(text)
        assert tok.eos_id not in ids and tok.pad_id not in ids
        assert tok.decode(ids) == text
        assert tok.encode_batch([text, "plain"])[0] == ids
    plain = "The secret of life is"
    assert tok.encode(plain) == tok._tok.encode(plain).ids


def test_refused_text_generation_prints_nothing_on_stdout(capsys):
    rc = main(["generate", "text-generation", "--prompt", "The secret", "--top-p", "2"])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == "" and "top_p" in captured.err


# -- 14: a script the voice cannot speak ------------------------------------------------------
def test_foreign_letters():
    assert foreign_letters("你好 world", "en-us+f3") == ["你", "好"]
    assert foreign_letters("Привет", "en-gb") == ["П", "р", "и", "в", "е", "т"]
    assert foreign_letters("café naïve 42", "en-us") == []
    assert foreign_letters("你好", "cmn") == []  # not a Latin-script voice: not checked


def test_chinese_prompt_to_english_voice_is_refused(audio_pipe):
    with pytest.raises(InputError, match="cannot speak"):
        audio_pipe("你好", voice="en-us", seed=0, progress=False)


# -- the general rules -----------------------------------------------------------------------
BAD_SEEDS = [2**64, -1, True, 1.5, "3", 10**5000]


@pytest.mark.parametrize("seed", BAD_SEEDS, ids=lambda s: type(s).__name__)
def test_every_pipeline_refuses_bad_seeds(t2i_pipe, video_pipe, text_pipe, audio_pipe, seed):
    calls = [lambda: t2i_pipe("a", seed=seed, num_inference_steps=1, progress=False),
             lambda: video_pipe("a", seed=seed, num_inference_steps=1, progress=False),
             lambda: text_pipe("a", seed=seed, max_new_tokens=1),
             lambda: audio_pipe("seven", seed=seed, progress=False)]
    for call in calls:
        with pytest.raises(InputError, match="seed") as info:
            call()
        assert len(str(info.value)) < 300  # a bounded excerpt of the value


def test_largest_seed_is_accepted(t2i_pipe):
    out = t2i_pipe("a", seed=2**64 - 1, num_inference_steps=1, progress=False)
    assert out.seed == 2**64 - 1


@pytest.mark.parametrize("name,value", [("num_samples", True), ("num_samples", 0),
                                        ("num_samples", 2.0), ("num_samples", 10**30),
                                        ("num_inference_steps", True),
                                        ("num_inference_steps", "3"),
                                        ("guidance_scale", "4"), ("guidance_scale", True),
                                        ("progress", 1), ("scheduler", 3)])
def test_image_arguments_of_wrong_type_or_range(t2i_pipe, name, value):
    kwargs = {"num_inference_steps": 1, "seed": 0, "progress": False, name: value}
    with pytest.raises(InputError, match=name):
        t2i_pipe("a", **kwargs)


@pytest.mark.parametrize("name,value", [("max_new_tokens", True), ("num_samples", True),
                                        ("top_k", True), ("top_k", 2.5), ("do_sample", 1),
                                        ("temperature", "hot"), ("max_new_tokens", 10**40)])
def test_text_arguments_of_wrong_type_or_range(text_pipe, name, value):
    kwargs = {"max_new_tokens": 1, "seed": 0, name: value}
    with pytest.raises(InputError, match=name):
        text_pipe("a", **kwargs)


@pytest.mark.parametrize("name,value", [("num_samples", True), ("num_frames", True),
                                        ("fps", "10"), ("fps", 0)])
def test_video_arguments_of_wrong_type_or_range(video_pipe, name, value):
    with pytest.raises(InputError, match=name):
        video_pipe("a", num_inference_steps=1, seed=0, progress=False, **{name: value})


@pytest.mark.parametrize("text", ["a\x00b", "a\udc80b", "bell\x07", "x\x1b[31m"])
def test_prompts_files_cannot_carry_are_refused(t2i_pipe, video_pipe, text_pipe, audio_pipe,
                                                text):
    with pytest.raises(InputError, match="prompt"):
        t2i_pipe(text, num_inference_steps=1, seed=0, progress=False)
    with pytest.raises(InputError, match="negative_prompt"):
        t2i_pipe("a", negative_prompt=text, num_inference_steps=1, seed=0, progress=False)
    with pytest.raises(InputError, match="prompt"):
        video_pipe(text, num_inference_steps=1, seed=0, progress=False)
    with pytest.raises(InputError, match="prompt"):
        text_pipe(text, max_new_tokens=1, seed=0)
    with pytest.raises(InputError, match="prompt"):
        audio_pipe(text, seed=0, progress=False)
    with pytest.raises(InputError, match="voice"):
        audio_pipe("seven", voice="en-us" + text, seed=0, progress=False)


def test_newlines_and_tabs_stay_allowed(text_pipe):
    assert text_pipe("a\n\tb", max_new_tokens=1, seed=0).input_prompt == "a\n\tb"


def test_cli_control_character_prompt_is_one_line(tmp_path, capsys):
    rc = main(["generate", "text-to-image", "--prompt", "a\udc80", "--out", str(tmp_path / "o"),
               "--num-inference-steps", "1", "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""
    assert captured.err.count("\n") == 1 and "prompt" in captured.err


def test_replay_refuses_a_recorded_prompt_with_nul(tmp_path, capsys):
    (tmp_path / "000.txt").write_text("x")
    (tmp_path / "000.json").write_text(json.dumps(
        {"task": "text-generation", "prompt": "a\u0000b", "seed": 0, "max_new_tokens": 1}))
    rc = main(["replay", str(tmp_path / "000.txt"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "prompt" in err and "control character" in err


# -- dtypes: the three the pipelines run in, and no other -----------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, "float64", torch.int8])
def test_torch_dtype_other_than_the_three_is_refused_alike(t2i_pipe, dtype):
    accepted = r"torch_dtype must be torch.float32, torch.float16 or torch.bfloat16"
    with pytest.raises(InputError, match=accepted):
        load_pipeline("text-to-image", torch_dtype=dtype)
    if isinstance(dtype, torch.dtype):  # a positional string is a device, as diffusers'
        with pytest.raises(InputError, match=accepted):
            t2i_pipe.to(dtype)
        with pytest.raises(InputError, match=accepted):
            t2i_pipe.to("cpu", dtype)
    with pytest.raises(InputError, match=accepted):
        t2i_pipe.to(dtype=dtype)
    assert t2i_pipe.dtype == torch.float32  # refused before anything moved


# -- sizes: every wrong side in one message -------------------------------------------------------
@pytest.mark.parametrize("height, width, got", [(50, 50, "height=50 and width=50"),
                                                ("a", 7, "height='a' and width=7")])
def test_both_wrong_sides_are_named_in_one_message(t2i_pipe, height, width, got):
    with pytest.raises(InputError, match=r"^height and width must each be a multiple of 8 "
                                         rf"from 8 to 128 pixels .*the default\), got {got}$"):
        t2i_pipe("a", height=height, width=width, num_inference_steps=1, progress=False)
    with pytest.raises(InputError, match=r"^width must be a multiple of 8 .*got 50$"):
        t2i_pipe("a", height=32, width=50, num_inference_steps=1, progress=False)


# -- steps_run: always recorded, never an argument -------------------------------------------------
def test_steps_run_is_recorded_for_every_image_and_video_run(t2i_pipe, video_pipe, tmp_path):
    from multimodal.modalities.image.files import read_png_metadata
    from multimodal.registry import pipelines
    from multimodal.replay import call_kwargs

    image = t2i_pipe(["a", "b"], num_samples=2, num_inference_steps=3, seed=0, progress=False)
    assert [image.metadata(k)["steps_run"] for k in range(4)] == [3] * 4
    assert all(part.metadata(0)["steps_run"] == 3 for part in image.split())
    write_outputs(image, tmp_path / "img", produces="image")
    settings = read_png_metadata(tmp_path / "img" / "001.png")
    assert settings["steps_run"] == 3  # in the file
    kwargs = call_kwargs(pipelines.get("text-to-image"), "text-to-image", settings)
    assert "steps_run" not in kwargs and kwargs["num_inference_steps"] == 3  # replay ignores it
    clip = video_pipe("a", num_inference_steps=2, seed=0, progress=False)
    assert clip.metadata(0)["steps_run"] == 2
    assert "steps_run" not in call_kwargs(pipelines.get("text-to-video"), "text-to-video",
                                          clip.metadata(0))


# -- text-to-audio records checkpoint_id, as every task; old files say checkpoint ---------------
def test_audio_records_checkpoint_id_and_old_files_still_replay(audio_pipe, tmp_path):
    from multimodal.replay import replay

    out = audio_pipe("seven", seed=2, progress=False)
    meta = out.metadata(0)
    assert meta["checkpoint_id"] == audio_pipe.checkpoint_id and "checkpoint" not in meta
    write_outputs(out, tmp_path / "new", produces="audio")
    sidecar = json.loads((tmp_path / "new" / "000.json").read_text())
    assert sidecar["checkpoint_id"] == audio_pipe.checkpoint_id
    # a file made before the rename: the same WAV, its JSON saying "checkpoint"
    old = tmp_path / "old"
    old.mkdir()
    (old / "000.wav").write_bytes((tmp_path / "new" / "000.wav").read_bytes())
    legacy = {("checkpoint" if k == "checkpoint_id" else k): v for k, v in sidecar.items()}
    (old / "000.json").write_text(json.dumps(legacy))
    assert replay(old / "000.wav", out=tmp_path / "again")["identical"]
    # the old key is read, not ignored: another model's id under it is refused
    (old / "000.json").write_text(json.dumps({**legacy, "checkpoint": "another-model"}))
    with pytest.raises(InputError, match="was made by checkpoint another-model, but the one "
                                         "loaded is"):
        replay(old / "000.wav", out=tmp_path / "refused")
