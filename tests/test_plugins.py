"""Modality specs, the conformance kit over every registered modality, and plugin loading."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from multimodal.errors import ConfigError, DuplicateRegistrationError
from multimodal.plugins import register_modality, spec_problems
from multimodal.registry import restored_registries, specs
from multimodal.testing import ConformanceError, check_modality


@pytest.mark.parametrize("name", specs.names())
def test_conformance(name, tmp_path, monkeypatch):
    """Every registered modality, built-in or plugin, passes the conformance kit."""
    spec = specs.get(name)
    missing = [tool for tool in spec.requires if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    monkeypatch.setenv("MULTIMODAL_CACHE", str(tmp_path / "cache"))
    result = check_modality(spec, tmp_path)
    assert result["loss_after"] < result["loss_before"]


@pytest.fixture
def registries():
    """The real registries, restored to their state before the test afterwards."""
    with restored_registries() as registries:
        yield registries


# -- the conformance kit can fail ---------------------------------------------------------------
def test_conformance_kit_reports_a_wrong_encoded_shape(tmp_path):
    from dataclasses import replace

    spec = replace(specs.get("text"), encoded_shape=(3, None))
    with pytest.raises(ConformanceError, match=r"modality 'text', encode: gave shape \(\d+,\), "
                                               r"spec says \(3, None\)"):
        check_modality(spec, tmp_path)


def test_conformance_kit_reports_a_writer_that_writes_nothing(tmp_path):
    from dataclasses import replace

    spec = replace(specs.get("text"), writer=lambda sample, path: None)
    with pytest.raises(ConformanceError, match="modality 'text', writer: wrote no file"):
        check_modality(spec, tmp_path)


def test_conformance_kit_reports_nondeterministic_sampling(tmp_path):
    from dataclasses import replace

    import numpy as np

    rng = np.random.default_rng()
    spec = replace(specs.get("text"), generate=lambda pipe, prompt, seed: str(rng.random()))
    with pytest.raises(ConformanceError, match="sampling: two samples with seed 7 differ"):
        check_modality(spec, tmp_path)


# -- registration ------------------------------------------------------------------------------
def _spec(**changes):
    from dataclasses import replace

    return replace(specs.get("text"), **{"name": "notes", "modality_id": None, **changes})


def test_incomplete_spec_is_rejected_with_every_problem_and_registers_nothing(registries):
    spec = _spec(writer=None, input_shape=(0, "x"), suffix="png")
    with pytest.raises(ConfigError) as err:
        register_modality(registries, spec)
    message = str(err.value)
    assert "modality spec 'notes': writer: missing (a callable" in message
    assert "input_shape: (0, 'x') is not a shape" in message
    assert "suffix: 'png' should start with '.'" in message
    assert "notes" not in registries["specs"] and "notes" not in registries["modalities"]


def test_spec_whose_example_does_not_have_its_declared_shape_is_rejected(registries):
    import torch

    spec = _spec(example_input=lambda: torch.zeros(2, 5), input_shape=(2, 4))
    assert spec_problems(spec) == ["example_input() has shape (2, 5), but input_shape says "
                                   "(2, 4)"]
    with pytest.raises(ConfigError, match="example_input"):
        register_modality(registries, spec)


def test_spec_naming_unknown_decoder_is_rejected(registries):
    with pytest.raises(ConfigError, match="decoders has no 'stroke_hed'; register it first"):
        register_modality(registries, _spec(decoder="stroke_hed"))


def test_spec_taking_a_used_name_is_refused_naming_both_owners(registries):
    class OtherHead:
        """Another head."""

    spec = _spec(components={"decoders": {"lm_head": OtherHead}})
    with pytest.raises(DuplicateRegistrationError) as err:
        register_modality(registries, spec)
    assert "multimodal.modalities.text.head:LMHead" in str(err.value)
    assert "modality spec 'notes'" in str(err.value)
    assert "notes" not in registries["specs"]  # refused whole, nothing half-registered


def test_spec_taking_a_used_modality_id_is_refused(registries):
    with pytest.raises(ConfigError, match="modality_id 1 is already used by 'image'; free ids: 4"):
        register_modality(registries, _spec(modality_id=1))


def test_a_complete_spec_registers_and_is_listed(registries):
    class NotesModality:
        """Notes."""

    spec = _spec(modality=NotesModality, modality_id=5)
    register_modality(registries, spec)
    assert registries["specs"].get("notes") is spec
    assert registries["modalities"].get("notes") is NotesModality
    assert "lm_head -> text-generation" not in registries["specs"].entry("notes").summary
    assert registries["specs"].entry("notes").summary.startswith("byte_bpe -> lm_head")


# -- composition by YAML -----------------------------------------------------------------------
def _task_file(tmp_path, text):
    path = tmp_path / "task.yaml"
    path.write_text(text)
    return path


def test_task_file_naming_an_unknown_pipeline_is_a_config_error_with_did_you_mean(tmp_path):
    from multimodal.pipelines.composed import read_task_file

    path = _task_file(tmp_path, """
task: my-av
steps:
  video: {task: text-to-vidoe}
  audio: {task: text-to-audio, voise: en-us}
combine: {type: mux_audio_vidoe, video: video, audio: audio}
""")
    with pytest.raises(ConfigError) as err:
        read_task_file(path)
    message = str(err.value)
    assert "steps.video.task: no pipeline 'text-to-vidoe' (did you mean 'text-to-video'?)" in message
    assert "steps.audio.voise: text-to-audio takes no such argument (did you mean 'voice'?)" in message
    assert "combine.type: no combiner 'mux_audio_vidoe' (did you mean 'mux_audio_video'?)" in message


def test_task_file_combining_a_missing_step_is_a_config_error(tmp_path):
    from multimodal.pipelines.composed import read_task_file

    path = _task_file(tmp_path, """
task: my-av
steps: {clip: {task: text-to-video}, speech: {task: text-to-audio}}
combine: {type: mux_audio_video, video: clip, audio: audio}
""")
    with pytest.raises(ConfigError, match="combine.audio: no step named 'audio'"):
        read_task_file(path)


def _outputs(num_frames, fps, seconds, rate=16_000):
    import numpy as np

    from multimodal.pipelines.text_to_audio import AudioGenerationOutput
    from multimodal.pipelines.text_to_video import VideoGenerationOutput

    frames = np.zeros((num_frames, 48, 48), np.uint8)
    for t in range(num_frames):
        frames[t, 10:30, t:t + 20] = 200
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return {"video": VideoGenerationOutput(videos=[frames], fps=fps),
            "audio": AudioGenerationOutput(audios=[wave], sample_rate=rate)}


@pytest.mark.parametrize("seconds", [0.7, 2.5])  # speech shorter, then longer than the clip
def test_mux_gives_one_video_and_one_audio_stream_of_equal_duration(tmp_path, seconds):
    from multimodal.modalities.video.files import ffmpeg_available, read_av_info
    from multimodal.outputs import write_audiovisual
    from multimodal.pipelines.composed import mux_audio_video

    if not ffmpeg_available():
        pytest.skip("no ffmpeg")
    assert write_audiovisual(mux_audio_video(_outputs(16, 10.0, seconds)),
                             tmp_path / "av.mp4") == [tmp_path / "av.mp4"]
    info = read_av_info(tmp_path / "av.mp4")
    assert info["video_streams"] == 1 and info["audio_streams"] == 1
    assert info["frames"] == 16
    assert info["video_seconds"] == pytest.approx(max(1.6, seconds), abs=0.02)
    assert info["audio_seconds"] == pytest.approx(info["video_seconds"], abs=0.07)  # AAC frames


def test_text_to_audiovisual_cli_end_to_end(tmp_path, monkeypatch, capsys):
    """The composed task runs both tiny models and writes one MP4 with sound; a bad
    --checkpoint step is refused before anything is written."""
    import json

    from multimodal.cli import main
    from multimodal.modalities.video.files import ffmpeg_available, read_av_info
    from multimodal.testing import tiny_audio_config, tiny_video_checkpoint
    from multimodal.training.trainer import Trainer

    if not ffmpeg_available() or shutil.which("espeak-ng") is None:
        pytest.skip("needs ffmpeg and espeak-ng")
    monkeypatch.setenv("MULTIMODAL_CACHE", str(tmp_path / "cache"))
    video = tiny_video_checkpoint(tmp_path / "video")
    Trainer(tiny_audio_config(), out_dir=tmp_path / "audio", progress=False).fit()
    common = ["generate", "text-to-audiovisual", "--prompt", "a bag moving up", "--seed", "3",
              "--no-progress", "--checkpoint", f"video={video}",
              "--checkpoint", f"audio={tmp_path / 'audio'}"]
    assert main(common + ["--out", str(tmp_path / "av")]) == 0
    info = read_av_info(tmp_path / "av" / "000.mp4")
    assert (info["video_streams"], info["audio_streams"]) == (1, 1)
    assert info["audio_seconds"] == pytest.approx(info["video_seconds"], abs=0.07)
    meta = json.loads((tmp_path / "av" / "000.json").read_text())
    assert meta["prompt"] == "a bag moving up" and meta["seed"] == 3
    assert set(meta["steps"]) == {"video", "audio"}
    assert main(common[:-2] + ["--checkpoint", "vidoe=x", "--out", str(tmp_path / "bad")]) == 2
    assert "no step named 'vidoe' (did you mean 'video'?)" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


# -- the example plugin, installed the way pip would, used from the CLI, then removed -----------
PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "plugins" / "sketch"


def _install_entry_point(site: Path) -> None:
    """What ``pip install`` leaves for the entry point: a dist-info with entry_points.txt."""
    info = site / "multimodal_sketch-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: multimodal-sketch\n"
                                   "Version: 0.1.0\n")
    (info / "entry_points.txt").write_text("[multimodal.plugins]\n"
                                           "sketch = multimodal_sketch:register\n")


def _cli(args, pythonpath, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, pythonpath)),
               OMP_NUM_THREADS="1", MULTIMODAL_CACHE=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, "-m", "multimodal", *args], capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.mark.slow  # pip-installs the example plugin
def test_example_plugin_installs_trains_generates_and_uninstalls(tmp_path):
    site = tmp_path / "site"
    _install_entry_point(site)
    path = [site, PLUGIN]
    listed = _cli(["list", "specs"], path, tmp_path)
    assert listed.returncode == 0 and "sketch" in listed.stdout, listed.stderr
    run = tmp_path / "run"
    trained = _cli(["train", str(PLUGIN / "configs" / "sketch_tiny.yaml"), "--out-dir", str(run),
                    "--no-progress"], path, tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    made = _cli(["generate", "text-to-sketch", "--checkpoint", str(run), "--prompt", "a star",
                 "--seed", "0", "--out", str(tmp_path / "out")], path, tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    assert (tmp_path / "out" / "000.png").stat().st_size > 0

    # uninstalled: the core works, and the plugin's task is a clear error
    listed = _cli(["list", "specs"], [], tmp_path)
    assert listed.returncode == 0 and "sketch" not in listed.stdout
    gone = _cli(["generate", "text-to-sketch", "--prompt", "a star"], [], tmp_path)
    assert gone.returncode == 2 and "unknown task 'text-to-sketch'" in gone.stderr


def test_example_plugin_passes_the_conformance_kit(tmp_path, registries, monkeypatch):
    from importlib.metadata import EntryPoint

    from multimodal.registry import PLUGIN_GROUP, load_plugins, plugin_failures

    monkeypatch.syspath_prepend(str(PLUGIN))
    load_plugins([EntryPoint(name="sketch", value="multimodal_sketch:register",
                             group=PLUGIN_GROUP)])
    assert "sketch" not in plugin_failures
    result = check_modality(registries["specs"].get("sketch"), tmp_path, prompt="a big star")
    assert result["file"].endswith(".png")


def test_a_plugin_that_fails_to_import_warns_once_and_the_rest_works(registries, monkeypatch):
    from importlib.metadata import EntryPoint

    from multimodal.registry import PLUGIN_GROUP, load_plugins

    monkeypatch.delenv("MULTIMODAL_STRICT_PLUGINS", raising=False)
    broken = EntryPoint(name="broken", value="multimodal_no_such_plugin:register",
                        group=PLUGIN_GROUP)
    with pytest.warns(RuntimeWarning, match="plugin 'broken' .* failed to load and is skipped: "
                                            "ModuleNotFoundError"):
        load_plugins([broken])
    assert "text-to-image" in registries["pipelines"]
    monkeypatch.setenv("MULTIMODAL_STRICT_PLUGINS", "1")
    with pytest.raises(ModuleNotFoundError):
        load_plugins([broken])


def test_task_files_check_names_and_what_each_step_makes(tmp_path):
    from multimodal.pipelines.composed import composed_task, read_task_file

    swapped = _task_file(tmp_path, """
task: my-av
steps: {video: {task: text-to-audio}, audio: {task: text-to-video}}
combine: {type: mux_audio_video, video: video, audio: audio}
""")
    with pytest.raises(ConfigError) as err:
        read_task_file(swapped)
    assert "combine.video: step 'video' runs text-to-audio, which makes audio; " \
           "mux_audio_video needs video there" in str(err.value)
    taken = _task_file(tmp_path, """
task: text-to-image
steps: {video: {task: text-to-video}, audio: {task: text-to-audio}}
combine: {type: mux_audio_video}
""")
    with pytest.raises(ConfigError, match="'text-to-image' is already a pipeline"):
        composed_task(taken)


def test_spec_registering_one_name_twice_or_a_bad_components_shape_is_refused(registries):
    class Other:
        """Another objective."""

    with pytest.raises(ConfigError, match="registers two different modalities under 'notes'"):
        register_modality(registries, _spec(components={"modalities": {"notes": Other}}))
    assert "notes" not in registries["modalities"]
    with pytest.raises(ConfigError, match=r"components: a mapping \{kind: \{name: object\}\}"):
        register_modality(registries, _spec(components={"decoders": Other}))
