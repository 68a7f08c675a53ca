import json
import subprocess
import sys
from pathlib import Path

import pytest

from multimodal.cli import main
from multimodal.testing import tiny_config
from multimodal.config import dump_yaml

from conftest import requires_fortunes


def run(*argv):
    """Run the CLI in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "multimodal", *argv], capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    config = root / "tiny.yaml"
    config.write_text(dump_yaml(tiny_config(train={"max_steps": 4})))
    out = run("train", str(config), "train.max_steps=3", "--out-dir", str(root / "run"),
              "--no-progress")
    assert out.returncode == 0, out.stderr
    return root


@pytest.mark.slow  # CLI subprocesses, trains
@requires_fortunes
def test_train_then_generate_streams_and_writes_files(trained):
    result = run("generate", "text-generation", "--checkpoint", str(trained / "run"),
                 "--prompt", "The", "--max-new-tokens", "10", "--seed", "3",
                 "--out", str(trained / "gen"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("The")
    text = (trained / "gen" / "000.txt").read_text()
    assert text.strip() == result.stdout.strip()
    meta = json.loads((trained / "gen" / "000.json").read_text())
    assert meta["seed"] == 3 and meta["prompt"] == "The" and len(meta["checkpoint_id"]) == 12
    again = run("generate", "text-generation", "--checkpoint", str(trained / "run"),
                "--prompt", "The", "--max-new-tokens", "10", "--seed", "3")
    assert again.stdout == result.stdout


@pytest.mark.slow  # CLI subprocesses, trains
@requires_fortunes
def test_resume_of_a_finished_run(trained):
    out = run("train", str(trained / "tiny.yaml"), "train.max_steps=3", "--out-dir",
              str(trained / "run"), "--resume", "--no-progress")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["step"] == 3


@pytest.mark.parametrize("argv, message", [
    (["generate", "text-gen", "--prompt", "x"], "did you mean 'text-generation'"),
    (["generate", "text-generation", "--checkpoint", "/nonexistent"], "checkpoint not found"),
    (["train", "/nonexistent.yaml"], "config file not found"),
    (["list", "decoder"], "did you mean 'decoders'"),
    (["evaluate", "text-to-nothing"], "tasks with an evaluation: text-generation"),
])
def test_bad_input_gives_one_message_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_config_errors_exit_2_without_traceback(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("  \n")
    assert main(["train", str(empty)]) == 2
    assert "is empty" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(dump_yaml(tiny_config()))
    assert main(["train", str(bad), "backbone.dpth=3"]) == 2
    assert "did you mean 'backbone.depth'" in capsys.readouterr().err


@pytest.mark.slow  # a CLI subprocess
def test_debug_shows_the_traceback():
    out = run("--debug", "train", "/nonexistent.yaml")
    assert out.returncode != 0 and "Traceback" in out.stderr


@pytest.mark.slow  # CLI subprocesses, trains
def test_unwritable_output_directory(trained, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = run("generate", "text-generation", "--checkpoint", str(trained / "run"),
              "--prompt", "a", "--max-new-tokens", "2", "--out", str(blocker))
    assert out.returncode == 2 and "is a file" in out.stderr


@pytest.mark.slow  # a CLI subprocess
def test_list_shows_components_and_owners():
    out = run("list")
    assert out.returncode == 0
    assert "transformer" in out.stdout and "multimodal.backbone.transformer" in out.stdout
    assert "text-generation" in out.stdout


def test_import_is_cheap():
    code = "import sys, multimodal; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False"


def test_task_options_come_from_the_call_signature():
    """A pipeline's keyword arguments become options: type and default from the signature,
    bool a flag, Literal a choice, help from the docstring; objects are left out."""
    from typing import Literal

    import torch

    from multimodal.cli import task_options, task_parser

    class Toy:
        produces = "image"

        def __call__(self, prompt: str, *, num_steps: int = 3, scale: float | None = None,
                     mode: Literal["fast", "slow"] = "fast", sharp: bool = False,
                     smooth: bool = True, generator: torch.Generator | None = None,
                     progress: bool = True):
            """Draw.

            Args:
                prompt: What to draw.
                num_steps: Steps,
                    at least 1.
            """

    options = {o.dest: o for o in task_options(Toy, "toy")}
    assert list(options) == ["prompt", "num_steps", "scale", "mode", "sharp", "smooth"]
    assert options["num_steps"].kwargs["help"] == "Steps, at least 1."
    ns = task_parser(Toy, "toy", list(options.values()), prog="toy").parse_args(
        ["--prompt", "a", "--scale", "2", "--mode", "slow", "--sharp", "--no-smooth",
         "--grid", "--no-progress"])
    assert (ns.prompt, ns.num_steps, ns.scale, ns.mode, ns.sharp, ns.smooth) == \
        ("a", 3, 2.0, "slow", True, False)
    assert ns.grid and ns.no_progress and ns.out == "out/toy"
    with pytest.raises(SystemExit):
        task_parser(Toy, "toy", list(options.values()), prog="toy").parse_args(
            ["--prompt", "a", "--mode", "medium"])


def test_write_outputs_writes_every_sample_or_nothing(tmp_path):
    from multimodal.outputs import _WRITERS, register_writer, write_outputs
    from multimodal.pipelines.text_generation import TextGenerationOutput

    output = TextGenerationOutput(texts=[" one", " two"], token_ids=[[], []], seed=4,
                                  input_prompt="Say")
    written = write_outputs(output, tmp_path / "ok", produces="text")
    assert [p.name for p in written] == ["000.txt", "000.json", "001.txt", "001.json"]
    assert (tmp_path / "ok" / "001.txt").read_text() == "Say two\n"
    assert json.loads((tmp_path / "ok" / "001.json").read_text())["sample"] == 1

    def flaky(sample, path, metadata=None):
        path.write_text(sample)
        if metadata["sample"] == 1:
            raise OSError("disk full")

    register_writer("flaky", flaky, ".txt")
    try:
        with pytest.raises(OSError, match="disk full"):
            write_outputs(output, tmp_path / "bad", produces="flaky")
    finally:
        del _WRITERS["flaky"]
    assert not (tmp_path / "bad").exists()
