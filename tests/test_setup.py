"""The set-up keeps a torch the user chose (``TORCH_SPEC``, or one already installed) instead
of forcing the pin, and refuses one the package cannot run on, before installing the rest.
scripts/setup.sh runs here against a stand-in python that records each pip call."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / "scripts" / "setup.sh"


# -- scripts/setup.sh: which torch ----------------------------------------------------------------
FAKE_PYTHON = """#!/usr/bin/env bash
# stands in for the venv's python: logs each call, and "has" torch once a torch is installed
echo "$*" >> "$FAKE_STATE/calls"
case "$*" in
    "-c import multimodal, torch, pytest") exit 1 ;;
    "-c import torch; print(torch.__version__)" | \
    "-c from importlib.metadata import version; print(version('torch'))")
        [ -f "$FAKE_STATE/torch" ] && cat "$FAKE_STATE/torch" && exit 0; exit 1 ;;
esac
if [ "$1 $2 $3" = "-m pip install" ]; then
    for arg in "$@"; do
        case "$arg" in torch==*) echo "${arg#torch==}" > "$FAKE_STATE/torch" ;; esac
    done
fi
exit 0
"""


def _data_packages_missing() -> bool:
    text = SETUP.read_text()
    packages = text.split('PACKAGES="', 1)[1].split('"', 1)[0].split()
    for package in packages:
        found = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                               capture_output=True, text=True, check=False) if shutil.which("dpkg-query") \
            else None
        if found is None or "install ok installed" not in found.stdout:
            return True
    return False


def _setup(tmp_path, *, torch_spec=None, installed=None):
    """``(returncode, pip installs after pip's own upgrade, stdout + stderr, marker written)``."""
    venv, state = tmp_path / "venv", tmp_path / "state"
    (venv / "bin").mkdir(parents=True)
    state.mkdir()
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    if installed:
        (state / "torch").write_text(installed + "\n")
    env = {k: v for k, v in os.environ.items() if k != "TORCH_SPEC"}
    env.update(VENV=str(venv), FAKE_STATE=str(state))
    if torch_spec:
        env["TORCH_SPEC"] = torch_spec
    done = subprocess.run(["bash", str(SETUP)], env=env, capture_output=True, text=True,
                          cwd=tmp_path, check=False)
    installs = [line for line in (state / "calls").read_text().splitlines()
                if line.startswith("-m pip install") and "--upgrade pip" not in line]
    return (done.returncode, installs, done.stdout + done.stderr,
            (venv / ".multimodal-installed").exists())


needs_data_packages = pytest.mark.skipif(
    _data_packages_missing(), reason="setup.sh would install Debian packages first")


@needs_data_packages
def test_setup_installs_the_recorded_torch_by_default(tmp_path):
    rc, installs, out, marked = _setup(tmp_path)
    assert rc == 0 and marked, out
    assert installs == ["-m pip install -q torch==2.11.0",
                        "-m pip install -q -e .[test] torch==2.11.0"]
    assert "done (torch 2.11.0)" in out


@needs_data_packages
def test_setup_honours_torch_spec(tmp_path):
    spec = "torch==2.11.0+cpu --index-url https://example.invalid/cpu"
    rc, installs, out, marked = _setup(tmp_path, torch_spec=spec, installed="2.11.0")
    assert rc == 0 and marked, out
    assert installs == [f"-m pip install -q {spec}",
                        "-m pip install -q -e .[test] torch==2.11.0+cpu"]
    assert f"TORCH_SPEC says: {spec}" in out


@needs_data_packages
def test_setup_keeps_a_torch_already_installed(tmp_path):
    rc, installs, out, marked = _setup(tmp_path, installed="2.11.0+rocm7.0")
    assert rc == 0 and marked, out
    assert installs == ["-m pip install -q -e .[test] torch==2.11.0+rocm7.0"]
    assert "keeping the torch 2.11.0+rocm7.0" in out


@needs_data_packages
def test_setup_keeps_a_newer_torch(tmp_path):
    # no torchaudio has to match it: the audio code is plain torch (multimodal/nn/dsp.py)
    rc, installs, out, marked = _setup(tmp_path, torch_spec="/opt/wheels/torch-2.13.0+cpu.whl",
                                       installed="2.13.0+cpu")
    assert rc == 0 and marked, out
    assert installs == ["-m pip install -q /opt/wheels/torch-2.13.0+cpu.whl",
                        "-m pip install -q -e .[test] torch==2.13.0+cpu"]


@needs_data_packages
@pytest.mark.parametrize("version", ["2.10.0+cpu", "1.13.1"])
def test_setup_refuses_an_older_torch_before_installing(tmp_path, version):
    rc, installs, out, marked = _setup(tmp_path, installed=version)
    assert rc == 1 and not marked
    assert installs == []
    assert f"torch {version} is in" in out and "needs torch 2.11 or newer" in out
    assert "TORCH_SPEC" in out
