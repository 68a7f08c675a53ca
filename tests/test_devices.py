"""Devices, dtypes and torch.compile as diffusers and transformers users expect them: the
device names every command and ``load_pipeline`` take (MPS where it is there, a clear refusal
where it is not), bf16 and fp16 on a CPU against float32 with stated tolerances, and
``pipe.compile()`` / ``load_pipeline(..., compile=True)`` / ``generate --compile`` in place
with the uncompiled outputs."""

from __future__ import annotations

import copy
import importlib
import inspect

import numpy as np
import pytest
import torch

import multimodal
import multimodal.pipelines as pipelines_module
from multimodal.cli import main
from multimodal.errors import ConfigError, InputError
from multimodal.evaluation import DATA_EVALUATORS, EVALUATORS
from multimodal.modalities.audio.wavenet import WaveNetVocoder
from multimodal.pipelines import check_device, load_pipeline, prepare
from multimodal.pipelines.base import Pipeline, check_compile, seeded
from multimodal.registry import pipelines as pipeline_registry
from multimodal.testing import tiny_image_pipeline, tiny_video_pipeline
from multimodal.training.trainer import resolve_device

# Half precision against float32 on a CPU, the embedded (trained) checkpoint, the same seed.
# Measured on 2026-12-03 (bf16 / fp16): next-token probabilities moved by at most 0.0094 /
# 0.00096 (greedy decoding agreed on 10 / 12 of 12 tokens); 8-step text-to-image pixels of "a
# bag" by 1.7 / 0.2 of 255 levels on average (single pixels up to 31 / 4 levels: the sampler
# carries a rounding difference along); the acoustic decoder's normalised log-mel (std 0.77)
# by at most 0.022 / 0.0022. The bounds leave about 3x room and still fail a wrong cast
# (float32 tables mixed into a half model, a half scheduler).
HALF_TOLERANCES = {
    torch.bfloat16: {"prob": 0.03, "pixel_mean": 5 / 255, "mel": 0.08},
    torch.float16: {"prob": 0.005, "pixel_mean": 1 / 255, "mel": 0.01},
}
IMAGE_STEPS = {"num_inference_steps": 8, "progress": False}
AUDIO_PROMPT = "Seven. A sneaker and a bag."


@pytest.fixture
def no_mps(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def with_mps(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)


# -- devices -------------------------------------------------------------------------------------
def test_check_device_accepts_mps_where_it_is_available(with_mps):
    for name in ("mps", "mps:0", torch.device("mps"), "cpu"):
        check_device(name)
    with pytest.raises(InputError, match="MPS has one device"):
        check_device("mps:1")


def test_check_device_refuses_mps_where_it_is_not(no_mps):
    for name in ("mps", "mps:0"):
        with pytest.raises(InputError) as info:
            check_device(name)
        assert str(info.value) == (
            f"device {name!r} asked for, but MPS is not available here (it needs Apple silicon "
            "and a torch built with MPS); use 'cpu'")
    with pytest.raises(InputError, match="MPS is not available"):
        load_pipeline("text-generation", device="mps")  # before any weight loads
    with pytest.raises(ConfigError, match="train.device is 'mps' but MPS is not available"):
        resolve_device("mps")


@pytest.mark.parametrize("name", ["tpu", "cuda:x", "mps:", "cpu:0", "gpu"])
def test_unknown_device_names_what_is_accepted(name):
    with pytest.raises(InputError, match="use 'cpu', 'cuda' \\(or 'cuda:N'\\) or 'mps'"):
        check_device(name)


def test_pipeline_to_checks_the_device(no_mps):
    pipe = tiny_image_pipeline()
    with pytest.raises(InputError, match="MPS is not available"):
        pipe.to("mps")
    with pytest.raises(InputError, match="unknown device 'gpu'"):
        pipe.to(device="gpu")


@pytest.mark.parametrize("argv", [
    ["demo", "--out", "{tmp}/demo"],
    ["evaluate", "text-generation"],
    ["generate", "text-generation", "--prompt", "x"],
    ["replay", "{tmp}/nothing.png"],
    ["serve"],
])
def test_every_command_that_runs_a_model_takes_device(argv, tmp_path, capsys, no_mps):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--device", "mps"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "device 'mps' asked for, but MPS is not available here" in err, err
    assert "Traceback" not in err and not (tmp_path / "demo").exists()


def test_train_help_says_where_the_device_is_set(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "train.device" in " ".join(capsys.readouterr().out.split())


def test_demo_and_evaluate_pass_the_device_down(monkeypatch, tmp_path):
    seen = []

    class Stop(Exception):
        pass

    def fake_load(task, checkpoint=None, *, device="cpu", **kwargs):
        seen.append((task, device))
        raise Stop

    monkeypatch.setattr("multimodal.demo.load_pipeline", fake_load)
    monkeypatch.setattr("multimodal.demo.check_device", lambda device: None)  # no GPU here
    with pytest.raises(Stop):
        main(["demo", "--out", str(tmp_path / "demo"), "--device", "cuda:1"])
    assert seen == [("text-generation", "cuda:1")]

    calls = []
    monkeypatch.setattr("multimodal.cli.check_device", lambda device: None)
    monkeypatch.setattr("multimodal.cli.evaluate", lambda task, **kw: calls.append(kw) or {})
    assert main(["evaluate", "text-to-image", "--device", "cuda:1"]) == 0
    assert calls[0]["device"] == "cuda:1"


def test_every_evaluator_takes_device():
    for target in list(EVALUATORS.values()) + list(DATA_EVALUATORS.values()):
        module, name = target.split(":")
        function = getattr(importlib.import_module(module), name)
        parameter = inspect.signature(function).parameters.get("device")
        assert parameter is not None and parameter.default == "cpu", target


def test_a_generator_off_the_cpu_is_refused():
    class OnGpu(torch.Generator):  # no GPU here: a generator that says it is on one
        @property
        def device(self):
            return torch.device("cuda", 0)

    with pytest.raises(InputError, match="generator is on cuda:0; give a CPU torch.Generator"):
        seeded(None, OnGpu())
    with pytest.raises(InputError, match="generator is on cuda:0"):
        tiny_image_pipeline()("a bag", generator=OnGpu(), **IMAGE_STEPS)


# -- dtypes --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fp32_pipes():
    return {task: load_pipeline(task) for task in
            ("text-generation", "text-to-image", "image-to-text", "text-to-audio")}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_on_cpu_matches_fp32(fp32_pipes, dtype, recwarn):
    tol = HALF_TOLERANCES[dtype]
    half = {task: copy.deepcopy(pipe).to(dtype) for task, pipe in fp32_pipes.items()}

    # text-generation: next-token probabilities, and the sampling loop itself
    text32, text16 = fp32_pipes["text-generation"], half["text-generation"]
    assert next(text16.backbone.parameters()).dtype == dtype
    ids = torch.tensor([[text32.tokenizer.eos_id]
                        + text32.tokenizer.encode("The cat sat on the mat and looked at the")])
    with torch.no_grad():
        p32 = text32.lm_head(text32.backbone(ids)).float().softmax(-1)
        p16 = text16.lm_head(text16.backbone(ids)).float().softmax(-1)
    assert (p32 - p16).abs().max() <= tol["prob"]
    greedy32 = text32("The cat", max_new_tokens=12, do_sample=False).token_ids[0]
    greedy16 = text16("The cat", max_new_tokens=12, do_sample=False).token_ids[0]
    assert greedy16[:3] == greedy32[:3]  # later tokens may flip where two are near-equal

    # text-to-image: the same seed, pixels in [0, 1]
    image32 = fp32_pipes["text-to-image"]("a bag", seed=1, output_type="np", **IMAGE_STEPS)
    image16 = half["text-to-image"]("a bag", seed=1, output_type="np", **IMAGE_STEPS)
    assert half["text-to-image"].dtype == dtype and np.isfinite(image16.images).all()
    assert np.abs(image32.images - image16.images).mean() <= tol["pixel_mean"]

    # image-to-text: the same caption of the same picture
    picture = (image32.images[0] * 255).round().astype(np.uint8)
    assert half["image-to-text"]([picture]).texts == fp32_pipes["image-to-text"]([picture]).texts

    # text-to-audio: the acoustic decoder's mel (the vocoders stay float32)
    speech32 = fp32_pipes["text-to-audio"](AUDIO_PROMPT, seed=0, progress=False)
    speech16 = half["text-to-audio"](AUDIO_PROMPT, seed=0, progress=False)
    assert next(half["text-to-audio"].decoder.parameters()).dtype == dtype
    mel32, mel16 = speech32.mels[0], speech16.mels[0]
    # the same durations (a duration rounding the other way would shift every later frame)
    assert mel16.shape == mel32.shape and mel16.dtype == torch.float32
    assert (mel32 - mel16).abs().max() <= tol["mel"]
    assert np.isfinite(speech16.audios[0]).all()
    assert len(speech16.audios[0]) == len(speech32.audios[0])

    warned = [str(w.message) for w in recwarn if "float16 on a CPU" in str(w.message)]
    assert bool(warned) == (dtype == torch.float16)  # fp16 on a CPU warns, bf16 does not


def test_load_pipeline_torch_dtype_for_audio_and_composed():
    speech = load_pipeline("text-to-audio", torch_dtype="bf16")  # once refused: float32 only
    assert next(speech.decoder.parameters()).dtype == torch.bfloat16
    assert next(speech.backbone.parameters()).dtype == torch.bfloat16
    with pytest.raises(InputError, match="torch_dtype must be torch.float32"):
        load_pipeline("text-to-audio", torch_dtype="int8")
    # a composed task casts and compiles every step (what load_pipeline does with its steps)
    audiovisual = pipeline_registry.get("text-to-audiovisual")(
        {"video": tiny_video_pipeline(), "audio": speech})
    with pytest.warns(UserWarning, match="float16 on a CPU computes correctly but slowly"):
        assert prepare(audiovisual, torch.float16, compile=False) is audiovisual
    for step in audiovisual.steps.values():
        assert next(step.backbone.parameters()).dtype == torch.float16
    audiovisual.compile(backend="eager")
    assert all(_compiled(step.backbone) for step in audiovisual.steps.values())


def test_generate_torch_dtype_flag(tmp_path, capsys):
    out = tmp_path / "text"
    assert main(["generate", "text-generation", "--prompt", "The", "--max-new-tokens", "4",
                 "--seed", "0", "--dtype", "bf16", "--out", str(out)]) == 0
    assert (out / "000.txt").is_file()
    with pytest.raises(SystemExit):
        main(["generate", "text-generation", "--prompt", "The", "--torch-dtype", "int8"])
    err = capsys.readouterr().err
    assert "invalid choice: 'int8'" in err and "'bfloat16'" in err


# -- torch.compile -------------------------------------------------------------------------------
def _compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def test_compile_is_in_place_and_keeps_state_dict_keys():
    pipe = tiny_image_pipeline()
    keys = {name: list(getattr(pipe, name).state_dict()) for name in ("backbone", "denoiser")}
    assert pipe.compile(backend="eager") is pipe  # nothing compiles until the first call
    for name, before in keys.items():
        module = getattr(pipe, name)
        assert _compiled(module) and list(module.state_dict()) == before, name
        assert not any(k.startswith("_orig_mod") for k in module.state_dict())


def test_compile_reaches_the_vocoders():
    speech = load_pipeline("text-to-audio")
    speech.compile(backend="eager")
    assert _compiled(speech.backbone) and _compiled(speech.decoder)
    for name, vocoder in speech.audio.vocoders.items():
        assert _compiled(vocoder), name
        if isinstance(vocoder, WaveNetVocoder):  # sampling runs its own step, not forward
            assert vocoder.compile_generation is False  # only inductor compiles the step
    speech.audio.compile()  # the default backend: inductor
    assert all(v.compile_generation for v in speech.audio.vocoders.values()
               if isinstance(v, WaveNetVocoder))


def test_compile_refuses_what_cannot_run(monkeypatch):
    with pytest.raises(InputError, match="unknown torch.compile backend 'no-such'"):
        tiny_image_pipeline().compile(backend="no-such")
    with pytest.raises(InputError, match="compile must be True or False"):
        multimodal.load_pipeline("text-generation", compile="yes")  # the public one passes it

    from torch._inductor import cpp_builder
    from torch._inductor.exc import InvalidCxxCompiler

    def no_compiler():
        raise InvalidCxxCompiler

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    with pytest.raises(InputError, match="needs a C\\+\\+ compiler for CPU code"):
        load_pipeline("text-generation", compile=True)
    check_compile("cpu", "aot_eager")  # no C++ needed there
    monkeypatch.setattr("torch.utils._triton.has_triton", lambda: False)
    with pytest.raises(InputError, match="needs Triton for CUDA"):
        check_compile("cuda", "inductor")


def test_generate_compile_flag_compiles_before_generating(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(pipelines_module, "check_compile", lambda *a, **k: None)
    monkeypatch.setattr(Pipeline, "compile",
                        lambda self, **kw: calls.append((self.task, kw)) or self)
    assert main(["generate", "text-generation", "--prompt", "The", "--max-new-tokens", "3",
                 "--compile", "--out", str(tmp_path / "t")]) == 0
    assert calls == [("text-generation", {})]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_pipelines_match_uncompiled(backend):
    """Tens of seconds (aot_eager) to minutes (inductor, which writes and builds C++) of
    compiling on a CPU."""
    try:
        check_compile("cpu", backend)
    except InputError as exc:
        pytest.skip(str(exc))
    image = tiny_image_pipeline()
    kwargs = {"seed": 1, "num_inference_steps": 3, "progress": False, "output_type": "np"}
    eager = image("a bag", **kwargs).images
    compiled = copy.deepcopy(image).compile(backend=backend)
    assert np.abs(compiled("a bag", **kwargs).images - eager).max() <= 1e-4
    assert np.abs(compiled("a bag", **kwargs).images - eager).max() <= 1e-4  # compiled code

    text = load_pipeline("text-generation")
    expected = text("The cat", max_new_tokens=12, do_sample=False).token_ids
    text.compile(backend=backend)
    assert text("The cat", max_new_tokens=12, do_sample=False).token_ids == expected
