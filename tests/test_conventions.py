"""diffusers' and transformers' argument names: each against the same call through the
project's own names (equal outputs), prompt lists against prompts alone, output types, the
diffusers step callback and its early stop, transformers' streamers, bf16 against fp32."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import TextIteratorStreamer
from transformers import TextStreamer as HFTextStreamer
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

import multimodal
from multimodal.cli import main
from multimodal.errors import InputError
from multimodal.pipelines import load_pipeline
from multimodal.pipelines.batching import ImageRequest, generate_images_batch
from multimodal.pipelines.text_generation import TextStreamer, repetition_penalized
from multimodal.replay import replay
from multimodal.testing import tiny_image_pipeline, tiny_video_pipeline

STEPS = {"num_inference_steps": 4, "progress": False}
# bf16 keeps 8 bits of mantissa: over a 4-step loop the decoded pixels of the tiny model move
# by about 0.01 of the [0, 1] range (3 of 255 levels); 0.05 leaves room and still fails a
# wrong cast (an fp16/bf16 scheduler or a skipped guidance branch moves them by far more).
BF16_PIXEL_TOLERANCE = 0.05
BF16_PROB_TOLERANCE = 0.02  # next-token probabilities of bf16 vs fp32 networks
LIST_LATENT_TOLERANCE = 5e-3  # a prompt alone vs in a padded list batch (float rounding)


@pytest.fixture(scope="module")
def t2i():
    return tiny_image_pipeline("text-to-image")


@pytest.fixture(scope="module")
def text_pipe():
    return load_pipeline("text-generation")


def _same_images(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


# -- diffusers -----------------------------------------------------------------------------------
def test_num_images_per_prompt_is_num_samples(t2i):
    ours = t2i("a bag", num_samples=3, seed=4, **STEPS)
    theirs = t2i("a bag", num_images_per_prompt=3, seed=4, **STEPS)
    assert len(theirs.images) == 3 and _same_images(ours.images, theirs.images)
    with pytest.raises(InputError, match="num_images_per_prompt"):
        t2i("a bag", num_samples=2, num_images_per_prompt=3, **STEPS)


def test_prompt_list_equals_each_prompt_alone(t2i):
    prompts = ["a bag", "a shirt with long sleeves", ""]
    negatives = ["a shoe", None, "a bag"]
    out = t2i(prompts, negative_prompt=negatives, num_images_per_prompt=2, seed=7, **STEPS)
    assert len(out.images) == 6  # flat, prompt-major, as diffusers
    for k in range(6):
        meta = out.metadata(k)
        assert meta["prompt"] == prompts[k // 2] and meta["sample"] == k % 2
        assert meta["negative_prompt"] == negatives[k // 2] and meta["num_samples"] == 2
    assert out.metadata(0)["seed"] == 7  # the first prompt keeps the call's seed
    assert len({out.metadata(k)["seed"] for k in (0, 2, 4)}) == 3
    for i, prompt in enumerate(prompts):
        meta = out.metadata(2 * i)
        alone = t2i(prompt, negative_prompt=negatives[i], num_samples=2, seed=meta["seed"],
                    **STEPS)
        # the same draws; the prompts padded to the longest round the floats differently,
        # by about 1e-4 in the latents and at most one of 255 levels in the pixels (a wrong
        # seed or a mixed-up prompt moves them by tens of levels)
        torch.testing.assert_close(alone.latents, out.latents[2 * i : 2 * i + 2], rtol=0,
                                   atol=LIST_LATENT_TOLERANCE)
        for a, b in zip(alone.images, out.images[2 * i : 2 * i + 2]):
            assert np.abs(a.astype(int) - b).max() <= 1, prompt
    parts = out.split()
    assert [p.prompt for p in parts] == prompts and all(len(p.images) == 2 for p in parts)


def test_prompt_list_argument_errors(t2i):
    with pytest.raises(InputError, match="negative_prompt has 1 items but there are 2"):
        t2i(["a", "b"], negative_prompt=["x"], **STEPS)
    with pytest.raises(InputError, match="empty list"):
        t2i([], **STEPS)
    with pytest.raises(InputError, match=r"prompt\[1\] must be a string .prompt must be a "
                                         "string or a non-empty list of strings"):
        t2i(["a bag", None], **STEPS)
    with pytest.raises(InputError, match="output_type"):
        t2i("a bag", output_type="latent", **STEPS)


def test_output_types(t2i):
    base = t2i("a bag", num_samples=2, seed=3, **STEPS)
    side = base.images[0].shape[0]
    pil = t2i("a bag", num_samples=2, seed=3, output_type="pil", **STEPS)
    assert all(isinstance(im, Image.Image) for im in pil.images) and len(pil.images) == 2
    assert _same_images([np.asarray(im) for im in pil.images], base.images)
    arr = t2i("a bag", num_samples=2, seed=3, output_type="np", **STEPS)
    assert arr.images.shape == (2, side, side, 1) and arr.images.dtype == np.float32
    np.testing.assert_array_equal(arr.images[..., 0] * 255, np.stack(base.images))
    pt = t2i("a bag", num_samples=2, seed=3, output_type="pt", **STEPS)
    assert isinstance(pt.images, torch.Tensor) and pt.images.shape == (2, 1, side, side)
    assert float(pt.images.min()) >= 0 and float(pt.images.max()) <= 1
    assert _same_images(pt.samples, base.images)  # the writer's uint8 images, whatever the type


def test_callback_on_step_end_diffusers_form(t2i):
    seen = []

    def callback(pipe, step_index, timestep, callback_kwargs):
        assert pipe is t2i and set(callback_kwargs) == {"latents"}
        seen.append((step_index, int(timestep), callback_kwargs["latents"].clone()))
        return callback_kwargs

    with_cb = t2i("a bag", seed=2, callback_on_step_end=callback,
                  callback_on_step_end_tensor_inputs=["latents"], **STEPS)
    plain = t2i("a bag", seed=2, **STEPS)
    assert _same_images(with_cb.images, plain.images)
    sched = t2i.make_scheduler()
    sched.set_timesteps(4)
    assert [s for s, _, _ in seen] == [0, 1, 2, 3]
    assert [t for _, t, _ in seen] == [int(t) for t in sched.timesteps]
    assert torch.equal(seen[-1][2], plain.latents)

    def replace_latents(pipe, step_index, timestep, callback_kwargs):  # a returned dict counts
        return {"latents": torch.zeros_like(callback_kwargs["latents"])}

    zeroed = t2i("a bag", seed=2, callback_on_step_end=replace_latents, **STEPS)
    assert float(zeroed.latents.abs().max()) == 0.0
    with pytest.raises(InputError, match="callback_on_step_end_tensor_inputs"):
        t2i("a bag", callback_on_step_end=callback,
            callback_on_step_end_tensor_inputs=["prompt_embeds"], **STEPS)


@pytest.mark.parametrize("flag", ["interrupt", "_interrupt"])
def test_callback_stops_early_and_records_it(t2i, flag):
    calls = []

    def stop_after_two(pipe, step_index, timestep, callback_kwargs):
        calls.append(step_index)
        if step_index == 1:
            setattr(pipe, flag, True)  # diffusers' callbacks set pipe._interrupt
        return callback_kwargs

    out = t2i("a bag", seed=2, callback_on_step_end=stop_after_two, num_inference_steps=6,
              progress=False)
    assert calls == [0, 1]
    assert out.metadata(0)["steps_run"] == 2 and out.steps_run == 2
    full = t2i("a bag", seed=2, num_inference_steps=6, progress=False)  # the flag is reset
    assert full.metadata(0)["steps_run"] == 6  # recorded always, not only when stopped
    assert not torch.equal(out.latents, full.latents)


def test_video_callback_diffusers_form_and_early_stop():
    pipe = tiny_video_pipeline()

    def stop(p, step_index, timestep, callback_kwargs):
        assert callback_kwargs["latents"].ndim == 5  # (s, t, l, y, x)
        p.interrupt = step_index == 0
        return callback_kwargs

    out = pipe("a sneaker moving left", seed=1, num_inference_steps=3, progress=False,
               callback_on_step_end=stop)
    assert out.metadata(0)["steps_run"] == 1


# -- diffusers: generator lists, video and audio --------------------------------------------------
def _generators(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_generator_list_gives_each_image_its_generator(t2i):
    both = t2i("a bag", generator=_generators(11, 12), num_images_per_prompt=2, **STEPS)
    alone = [t2i("a bag", generator=g, **STEPS) for g in _generators(11, 12)]
    # image i is what generator[i] makes alone (up to the float rounding of a batch of two);
    # a shared generator or swapped ones move the latents by whole units
    for i, single in enumerate(alone):
        torch.testing.assert_close(both.latents[i : i + 1], single.latents, rtol=0,
                                   atol=LIST_LATENT_TOLERANCE)
        assert np.abs(both.images[i].astype(int) - single.images[0]).max() <= 1
    assert not torch.allclose(both.latents[0], both.latents[1], atol=0.1)
    # with a prompt list: one generator per image, prompt-major
    prompts = ["a bag", "a shirt with long sleeves"]
    listed = t2i(prompts, generator=_generators(11, 12), **STEPS)
    for i, prompt in enumerate(prompts):
        single = t2i(prompt, generator=_generators(11 + i)[0], **STEPS)
        torch.testing.assert_close(listed.latents[i : i + 1], single.latents, rtol=0,
                                   atol=LIST_LATENT_TOLERANCE)


def test_generator_list_errors(t2i):
    with pytest.raises(InputError, match="generator is a list of 2 but the call makes 3"):
        t2i("a bag", generator=_generators(1, 2), num_images_per_prompt=3, **STEPS)
    with pytest.raises(InputError, match="generator is a list of 0"):
        t2i("a bag", generator=[], **STEPS)
    with pytest.raises(InputError, match="seed and a list of generators"):
        t2i("a bag", generator=_generators(1), seed=3, **STEPS)
    with pytest.raises(InputError, match=r"generator\[1\] must be a torch.Generator"):
        t2i("a bag", generator=[torch.Generator(), 5], num_images_per_prompt=2, **STEPS)


@pytest.fixture(scope="module")
def t2v():
    return tiny_video_pipeline()


VIDEO_STEPS = {"num_inference_steps": 3, "progress": False}


def test_num_videos_per_prompt_is_num_samples(t2v):
    ours = t2v("a bag moving up", num_samples=2, seed=4, **VIDEO_STEPS)
    theirs = t2v("a bag moving up", num_videos_per_prompt=2, seed=4, **VIDEO_STEPS)
    assert len(theirs.videos) == 2 and _same_images(ours.videos, theirs.videos)
    with pytest.raises(InputError, match="num_videos_per_prompt"):
        t2v("a bag", num_samples=2, num_videos_per_prompt=3, **VIDEO_STEPS)


def test_video_prompt_list_equals_each_prompt_alone(t2v):
    prompts = ["a sneaker moving left", "a bag moving up", ""]
    negatives = ["a bag", None, "a shoe"]
    out = t2v(prompts, negative_prompt=negatives, num_videos_per_prompt=2, seed=7,
              **VIDEO_STEPS)
    assert len(out.videos) == 6  # flat, prompt-major, as diffusers
    for k in range(6):
        meta = out.metadata(k)
        assert meta["prompt"] == prompts[k // 2] and meta["sample"] == k % 2
        assert meta["negative_prompt"] == negatives[k // 2] and meta["num_samples"] == 2
    assert out.metadata(0)["seed"] == 7  # the first prompt keeps the call's seed
    assert len({out.metadata(k)["seed"] for k in (0, 2, 4)}) == 3
    for i, prompt in enumerate(prompts):
        alone = t2v(prompt, negative_prompt=negatives[i], num_samples=2,
                    seed=out.metadata(2 * i)["seed"], **VIDEO_STEPS)
        # the same draws; prompts padded to the longest round the floats differently
        torch.testing.assert_close(alone.latents, out.latents[2 * i : 2 * i + 2], rtol=0,
                                   atol=LIST_LATENT_TOLERANCE)
        for a, b in zip(alone.videos, out.videos[2 * i : 2 * i + 2]):
            assert np.abs(a.astype(int) - b).max() <= 1, prompt
    parts = out.split()
    assert [p.prompt for p in parts] == prompts and all(len(p.videos) == 2 for p in parts)
    assert [p.seed for p in parts] == [out.metadata(k)["seed"] for k in (0, 2, 4)]


def test_video_generator_list_gives_each_clip_its_generator(t2v):
    both = t2v("a bag moving up", generator=_generators(11, 12), num_videos_per_prompt=2,
               **VIDEO_STEPS)
    for i, gen in enumerate(_generators(11, 12)):
        single = t2v("a bag moving up", generator=gen, **VIDEO_STEPS)
        torch.testing.assert_close(both.latents[i : i + 1], single.latents, rtol=0,
                                   atol=LIST_LATENT_TOLERANCE)
        assert np.abs(both.videos[i].astype(int) - single.videos[0]).max() <= 1
    with pytest.raises(InputError, match="generator is a list of 1 but the call makes 2"):
        t2v("a bag", generator=_generators(1), num_videos_per_prompt=2, **VIDEO_STEPS)


def test_video_prompt_list_argument_errors(t2v):
    with pytest.raises(InputError, match="prompt is an empty list; give a string or a "
                                         "non-empty list of strings"):
        t2v([], **VIDEO_STEPS)
    with pytest.raises(InputError, match=r"prompt\[1\] must be a string"):
        t2v(["a bag", 3], **VIDEO_STEPS)
    with pytest.raises(InputError, match="negative_prompt has 1 items but there are 2"):
        t2v(["a", "b"], negative_prompt=["x"], **VIDEO_STEPS)
    with pytest.raises(InputError, match=r"negative_prompt\[0\] must be a string or None"):
        t2v(["a", "b"], negative_prompt=[1, None], **VIDEO_STEPS)
    with pytest.raises(InputError, match="negative_prompt is a list but prompt is one string"):
        t2v("a", negative_prompt=["x"], **VIDEO_STEPS)


@pytest.fixture(scope="module")
def t2a():
    return load_pipeline("text-to-audio")


AUDIO = {"vocoder": "parallel", "progress": False}  # a vocoder that draws noise


def test_num_waveforms_per_prompt_is_num_samples(t2a):
    ours = t2a("seven", num_samples=2, seed=4, **AUDIO)
    theirs = t2a("seven", num_waveforms_per_prompt=2, seed=4, **AUDIO)
    assert len(theirs.audios) == 2 and _same_images(ours.audios, theirs.audios)
    assert not np.array_equal(theirs.audios[0], theirs.audios[1])
    with pytest.raises(InputError, match="num_waveforms_per_prompt"):
        t2a("seven", num_samples=2, num_waveforms_per_prompt=3, **AUDIO)


def test_audio_prompt_list_equals_each_prompt_alone(t2a):
    prompts = ["seven", "two four", "six"]
    out = t2a(prompts, num_waveforms_per_prompt=2, seed=5, **AUDIO)
    assert len(out.audios) == 6 and len(out.mels) == 3
    assert out.metadata(0)["seed"] == 5 and len({out.metadata(k)["seed"] for k in (0, 2, 4)}) == 3
    for i, prompt in enumerate(prompts):
        meta = out.metadata(2 * i + 1)
        assert meta["prompt"] == prompt and meta["sample"] == 1 and meta["num_samples"] == 2
        alone = t2a(prompt, num_samples=2, seed=meta["seed"], **AUDIO)
        assert _same_images(alone.audios, out.audios[2 * i : 2 * i + 2]), prompt  # exactly
        assert meta["phonemes"] == alone.metadata(1)["phonemes"]
        assert torch.equal(alone.mels[0], out.mels[i])
    parts = out.split()
    assert [p.prompt for p in parts] == prompts and all(len(p.audios) == 2 for p in parts)


def test_audio_generator_list_and_errors(t2a):
    both = t2a("seven", generator=_generators(1, 2), num_waveforms_per_prompt=2, **AUDIO)
    alone = [t2a("seven", generator=g, **AUDIO).audios[0] for g in _generators(1, 2)]
    assert _same_images(both.audios, alone)
    listed = t2a(["seven", "six"], generator=_generators(1, 2), **AUDIO)
    assert np.array_equal(listed.audios[0], alone[0])
    assert np.array_equal(listed.audios[1],
                          t2a("six", generator=_generators(2)[0], **AUDIO).audios[0])
    with pytest.raises(InputError, match="generator is a list of 2 but the call makes 1"):
        t2a("seven", generator=_generators(1, 2), **AUDIO)
    with pytest.raises(InputError, match="empty list"):
        t2a([], **AUDIO)
    with pytest.raises(InputError, match=r"prompt\[0\] must be a string"):
        t2a([None], **AUDIO)
    with pytest.raises(InputError, match="prompt must be a string or a non-empty list"):
        t2a(7, **AUDIO)


# -- a seed and a generator: one of them ---------------------------------------------------------
@pytest.mark.parametrize("task", ["text-to-image", "image-to-image", "inpainting",
                                  "text-to-video", "text-to-audio"])
def test_seed_with_one_generator_is_refused_as_with_a_list(task, t2i, t2v, t2a):
    """The samples would come from the generator while the files record the seed, so a replay
    would make others: refused alike for one generator and for a list of them."""
    image = np.zeros((32, 32), np.uint8)
    mask = np.full((32, 32), 255, np.uint8)
    pipe, kwargs = {
        "text-to-image": (t2i, STEPS),
        "image-to-image": (tiny_image_pipeline("image-to-image"), {**STEPS, "image": image}),
        "inpainting": (tiny_image_pipeline("inpainting"),
                       {**STEPS, "image": image, "mask": mask}),
        "text-to-video": (t2v, VIDEO_STEPS),
        "text-to-audio": (t2a, AUDIO),
    }[task]
    with pytest.raises(InputError, match="seed and a generator were both given; give one"):
        pipe("seven", generator=torch.Generator().manual_seed(0), seed=1, **kwargs)
    with pytest.raises(InputError, match="seed and a generator were both given"):
        pipe(["seven", "six"], generator=torch.Generator().manual_seed(0), seed=1, **kwargs)
    with pytest.raises(InputError, match="seed and a list of generators were both given"):
        pipe("seven", generator=_generators(0), seed=1, **kwargs)
    # either alone still runs (seed 0 is a seed, not "no seed")
    assert pipe("seven", generator=torch.Generator().manual_seed(0), **kwargs).seed is None
    assert pipe("seven", seed=0, **kwargs).seed == 0


# -- callback_on_step_end checked before the loop --------------------------------------------------
@pytest.mark.parametrize("callback", [3, "x", object()])
@pytest.mark.parametrize("task", ["text-to-image", "image-to-image", "text-to-video"])
def test_a_callback_that_is_not_callable_is_refused_up_front(task, callback, t2i, t2v):
    pipe, kwargs = {"text-to-image": (t2i, STEPS),
                    "image-to-image": (tiny_image_pipeline("image-to-image"),
                                       {**STEPS, "image": np.zeros((32, 32), np.uint8)}),
                    "text-to-video": (t2v, VIDEO_STEPS)}[task]
    with pytest.raises(InputError, match=r"callback_on_step_end must be a callable "
                                         r"f\(pipe, step_index, timestep, callback_kwargs\) "
                                         r"-> dict, got "):
        pipe("a bag", callback_on_step_end=callback, **kwargs)
    for names in (None, 5, "latents", ["latents", "prompt_embeds"], [["latents"]]):
        with pytest.raises(InputError, match="callback_on_step_end_tensor_inputs must be a "
                                             r"list of \['latents'\]"):
            pipe("a bag", callback_on_step_end=lambda *a: None,
                 callback_on_step_end_tensor_inputs=names, **kwargs)
    with pytest.raises(InputError, match="callback_on_step_end must be a callable .* it "
                                         "returned 7 at step 0"):
        pipe("a bag", callback_on_step_end=lambda *a: 7, **kwargs)


# -- output_type for video and audio (diffusers' TextToVideoSD and AudioLDM forms) --------------
def test_video_output_types(t2v, tmp_path):
    base = t2v("a bag moving up", num_videos_per_prompt=2, seed=3, **VIDEO_STEPS)
    frames = np.stack(base.videos)  # (s, t, h, w) uint8: the tiny model is grayscale
    if frames.ndim == 4:
        frames = frames[..., None]  # (s, t, h, w, c)
    arr = t2v("a bag moving up", num_videos_per_prompt=2, seed=3, output_type="np",
              **VIDEO_STEPS)
    assert isinstance(arr.videos, np.ndarray) and arr.videos.dtype == np.float32
    assert arr.videos.shape == frames.shape
    np.testing.assert_array_equal(arr.videos * 255, frames)
    pt = t2v("a bag moving up", num_videos_per_prompt=2, seed=3, output_type="pt",
             **VIDEO_STEPS)
    assert isinstance(pt.videos, torch.Tensor) and pt.videos.dtype == torch.float32
    s, t, h, w, c = frames.shape
    assert pt.videos.shape == (s, t, c, h, w)
    assert float(pt.videos.min()) >= 0 and float(pt.videos.max()) <= 1
    torch.testing.assert_close(pt.videos.permute(0, 1, 3, 4, 2), torch.from_numpy(arr.videos))
    pil = t2v("a bag moving up", num_videos_per_prompt=2, seed=3, output_type="pil",
              **VIDEO_STEPS)
    assert len(pil.videos) == 2 and all(len(clip) == t for clip in pil.videos)
    assert all(isinstance(frame, Image.Image) for clip in pil.videos for frame in clip)
    assert np.array_equal(np.asarray(pil.videos[1][2]), base.videos[1][2])
    for out in (arr, pt, pil):  # the uint8 clips and the settings whatever the form
        assert _same_images(out.samples, base.videos)
        assert out.metadata(1) == base.metadata(1)
    parts = t2v(["a bag moving up", "a sneaker moving left"], seed=3, output_type="np",
                **VIDEO_STEPS).split()
    assert [p.videos.shape[0] for p in parts] == [1, 1] and len(parts[1].samples) == 1
    with pytest.raises(InputError, match="output_type must be one of uint8, pil, np, pt, got "
                                         "'latent'"):
        t2v("a bag", output_type="latent", **VIDEO_STEPS)


def test_audio_output_types(t2a):
    base = t2a(["seven", "six"], seed=3, **AUDIO)
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in base.audios)
    assert t2a("seven", seed=3, output_type="np", **AUDIO).audios[0].tobytes() == \
        base.audios[0].tobytes()  # "np" is the default
    pt = t2a(["seven", "six"], seed=3, output_type="pt", **AUDIO)
    assert all(isinstance(a, torch.Tensor) and a.dtype == torch.float32 for a in pt.audios)
    assert _same_images([a.numpy() for a in pt.audios], base.audios)
    assert _same_images(pt.samples, base.audios)  # the writer's numpy waveforms
    assert pt.metadata(1) == base.metadata(1)
    assert [len(p.samples) for p in pt.split()] == [1, 1]
    with pytest.raises(InputError, match="output_type must be one of np, pt, got 'pil'"):
        t2a("seven", output_type="pil", **AUDIO)


@pytest.mark.parametrize("task", ["text-to-video", "text-to-audio"])
def test_output_type_is_no_command_line_option(task, capsys):
    with pytest.raises(SystemExit):
        main(["generate", task, "--help"])
    assert "--output-type" not in capsys.readouterr().out


def test_server_batch_runs_the_pipeline_with_a_prompt_list(t2i):
    requests = [ImageRequest("a bag", num_samples=2, seed=5),
                ImageRequest("a sneaker", negative_prompt="a bag", seed=6)]
    outputs = generate_images_batch(t2i, requests, num_inference_steps=3, guidance_scale=4.0)
    for request, output in zip(requests, outputs):
        alone = t2i(request.prompt, negative_prompt=request.negative_prompt,
                    num_samples=request.num_samples, seed=request.seed, num_inference_steps=3,
                    progress=False)
        assert output.seed == request.seed
        for a, b in zip(alone.images, output.images):  # float rounding of the padded batch
            assert np.abs(a.astype(int) - b).max() <= 1


def test_bf16_matches_fp32_within_tolerance(t2i):
    fp32 = t2i("a bag", seed=1, output_type="np", **STEPS).images
    pipe = copy.deepcopy(t2i).to("cpu", torch.bfloat16)  # the same weights, in bf16
    assert pipe.dtype == torch.bfloat16 and next(pipe.backbone.parameters()).dtype == \
        torch.bfloat16
    bf16 = pipe("a bag", seed=1, output_type="np", **STEPS).images
    assert np.abs(fp32 - bf16).max() <= BF16_PIXEL_TOLERANCE


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 inference is for GPUs")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_cuda_matches_fp32(t2i, dtype):
    fp32 = t2i("a bag", seed=1, output_type="np", **STEPS).images
    pipe = copy.deepcopy(t2i).to("cuda", dtype)
    half = pipe("a bag", seed=1, output_type="np", **STEPS).images
    assert np.abs(fp32 - half).max() <= BF16_PIXEL_TOLERANCE


def test_bf16_video_matches_fp32():
    pipe = tiny_video_pipeline()
    kwargs = {"seed": 1, "num_inference_steps": 3, "progress": False}
    fp32 = pipe("a bag", **kwargs).videos[0].astype(np.float32) / 255
    half = copy.deepcopy(pipe).to(torch.bfloat16)
    assert half.dtype == torch.bfloat16
    bf16 = half("a bag", **kwargs).videos[0] / 255
    assert np.abs(fp32 - bf16).max() <= BF16_PIXEL_TOLERANCE
    # text-to-audio, image-to-text and fp16 on a CPU: tests/test_devices.py


def test_torch_dtype_text_matches_fp32_within_tolerance(text_pipe):
    bf16 = multimodal.load_pipeline("text-generation", torch_dtype=torch.bfloat16)  # public
    assert next(bf16.backbone.parameters()).dtype == torch.bfloat16
    ids = torch.tensor([[text_pipe.tokenizer.eos_id]
                        + text_pipe.tokenizer.encode("The cat sat on the mat")])
    with torch.no_grad():
        p32 = text_pipe.lm_head(text_pipe.backbone(ids)).float().softmax(-1)
        p16 = bf16.lm_head(bf16.backbone(ids)).float().softmax(-1)
    assert (p32 - p16).abs().max() <= BF16_PROB_TOLERANCE
    out = bf16("The", max_new_tokens=8, seed=0)  # the sampling loop runs in bf16
    assert len(out.token_ids[0]) >= 1
    with pytest.raises(InputError, match="torch_dtype"):
        load_pipeline("text-generation", torch_dtype=torch.int8)


# -- transformers --------------------------------------------------------------------------------
def test_num_return_sequences_is_num_samples(text_pipe):
    ours = text_pipe("The", max_new_tokens=10, num_samples=3, seed=2)
    theirs = text_pipe("The", max_new_tokens=10, num_return_sequences=3, seed=2)
    assert ours.texts == theirs.texts and len(theirs.texts) == 3


def test_text_prompt_list_equals_each_prompt_alone(text_pipe):
    prompts = ["The", "Once upon a time there", "A"]  # two lengths: two decode loops
    out = text_pipe(prompts, max_new_tokens=10, num_return_sequences=2, seed=9)
    assert len(out.texts) == 6
    for i, prompt in enumerate(prompts):
        meta = out.metadata(2 * i)
        assert meta["prompt"] == prompt and meta["sample"] == 0 and meta["num_samples"] == 2
        alone = text_pipe(prompt, max_new_tokens=10, num_samples=2, seed=meta["seed"])
        assert alone.texts == out.texts[2 * i : 2 * i + 2], prompt
        assert out.samples[2 * i] == prompt + out.texts[2 * i]
    assert out.metadata(0)["seed"] == 9


def test_repetition_penalty_is_transformers(text_pipe):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=generator)
    seen = [[1, 2, 2, 7], [0], [49, 3]]
    processor = RepetitionPenaltyLogitsProcessor(penalty=1.3)
    expected = torch.cat([processor(torch.tensor([ids]), logits[r : r + 1].clone())
                          for r, ids in enumerate(seen)])
    torch.testing.assert_close(repetition_penalized(logits, seen, 1.3), expected)
    plain = text_pipe("The the the", max_new_tokens=16, do_sample=False)
    penalized = text_pipe("The the the", max_new_tokens=16, do_sample=False,
                          repetition_penalty=1.5)
    assert penalized.texts != plain.texts
    assert penalized.metadata(0)["repetition_penalty"] == 1.5
    assert "repetition_penalty" not in plain.metadata(0)


def test_stop_strings_end_the_sample_as_transformers(text_pipe):
    full = text_pipe("The", max_new_tokens=30, do_sample=False)
    text = full.texts[0]
    stop = text[6:9]
    assert stop.strip()
    out = text_pipe("The", max_new_tokens=30, do_sample=False, stop_strings=[stop])
    tokens = out.token_ids[0]
    assert tokens == full.token_ids[0][: len(tokens)] and len(tokens) < len(full.token_ids[0])
    assert stop in out.texts[0]  # kept, as transformers keeps it
    assert stop not in text_pipe.tokenizer.decode(tokens[:-1])  # it stopped at the first one
    assert text_pipe("The", max_new_tokens=30, do_sample=False,
                     stop_strings=stop).texts == out.texts  # one string or a list


def test_transformers_text_streamer_prints_the_text(text_pipe, capsys):
    out = text_pipe("The", max_new_tokens=12, seed=1,
                    streamer=HFTextStreamer(text_pipe.tokenizer))
    assert capsys.readouterr().out == "The" + out.texts[0] + "\n"
    out = text_pipe("The", max_new_tokens=12, seed=1,
                    streamer=HFTextStreamer(text_pipe.tokenizer, skip_prompt=True))
    assert capsys.readouterr().out == out.texts[0] + "\n"


@pytest.mark.parametrize("decode_kwargs", [{}, {"skip_special_tokens": True}])
def test_transformers_text_streamer_across_newlines(text_pipe, capsys, decode_kwargs):
    # after a newline transformers' streamer decodes one id (an int) with its decode_kwargs:
    # generated text (fortunes) has newlines almost everywhere
    text = "One line.\nAnother, caf\u00e9\n\nand the end"
    ids = text_pipe.tokenizer.encode(text)
    streamer = HFTextStreamer(text_pipe.tokenizer, **decode_kwargs)
    for i in ids:
        streamer.put(torch.tensor([i]))
    streamer.end()
    assert capsys.readouterr().out == text + "\n"


def test_tokenizer_decode_takes_what_transformers_passes(text_pipe):
    tok = text_pipe.tokenizer
    ids = tok.encode("a bag\n")
    assert tok.decode(ids) == tok.decode(torch.tensor(ids)) == tok.decode(tuple(ids)) == "a bag\n"
    assert tok.decode(ids[0]) == tok.decode(torch.tensor(ids[0])) == tok.decode(ids[:1])
    with pytest.raises(TypeError, match="token id or a sequence of ids"):
        tok.decode("a bag")
    with pytest.raises(TypeError, match="token id or a sequence of ids"):
        tok.decode(1.5)


def test_transformers_text_iterator_streamer(text_pipe):
    streamer = TextIteratorStreamer(text_pipe.tokenizer, skip_prompt=True, timeout=600)
    result = {}
    worker = threading.Thread(target=lambda: result.update(out=text_pipe(
        "Once", max_new_tokens=12, seed=4, streamer=streamer)))
    worker.start()
    pieces = list(streamer)
    worker.join()
    assert len(pieces) > 1 and "".join(pieces) == result["out"].texts[0]


def test_text_streamer_with_several_samples_or_a_seed_and_generator_is_refused(text_pipe):
    # transformers refuses a streamer for a batch; streaming sample 0 of several in silence
    # would hide the others
    with pytest.raises(InputError, match="one prompt and one sample"):
        text_pipe("a", num_return_sequences=2, max_new_tokens=4,
                  streamer=HFTextStreamer(text_pipe.tokenizer))
    with pytest.raises(InputError, match="seed and a generator were both given"):
        text_pipe("a", max_new_tokens=4, seed=1, generator=torch.Generator().manual_seed(0))
    with pytest.raises(InputError, match=r"prompt\[1\] must be a string"):
        text_pipe(["a", 1], max_new_tokens=4)


def test_own_streamer_follows_the_same_protocol(text_pipe):
    pieces = []
    out = text_pipe("The", max_new_tokens=12, seed=1,
                    streamer=TextStreamer(text_pipe.tokenizer, pieces.append, prefix="The"))
    assert "".join(pieces) == "The" + out.texts[0]
    with pytest.raises(InputError, match="streamer takes one prompt"):
        text_pipe(["a", "b"], max_new_tokens=4, streamer=TextStreamer(text_pipe.tokenizer))


# -- the command line and replay -------------------------------------------------------------
def test_cli_hides_the_aliases_and_replays_transformers_settings(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["generate", "text-to-image", "--help"])
    help_text = capsys.readouterr().out
    assert "--num-samples" in help_text and "--prompt" in help_text
    for hidden in ("--num-images-per-prompt", "--output-type", "--callback"):
        assert hidden not in help_text
    for task, hidden in (("text-to-video", "--num-videos-per-prompt"),
                         ("text-to-audio", "--num-waveforms-per-prompt")):
        with pytest.raises(SystemExit):
            main(["generate", task, "--help"])
        help_text = capsys.readouterr().out
        assert "--num-samples" in help_text and hidden not in help_text, task
    out = tmp_path / "gen"
    assert main(["generate", "text-generation", "--prompt", "The", "--max-new-tokens", "20",
                 "--seed", "3", "--repetition-penalty", "1.3", "--stop-strings", "e",
                 "--out", str(out)]) == 0
    result = replay(out / "000.txt", out=tmp_path / "again")
    assert result["identical"]
    assert result["kwargs"]["stop_strings"] == ["e"]
    assert result["kwargs"]["repetition_penalty"] == 1.3
