#!/usr/bin/env bash
# Set up multimodal on a fresh Debian/Ubuntu machine:
#   1. the data packages (fortunes, Fashion-MNIST, espeak-ng, a word list) and the headless
#      browser the server's page is tested in (chromium, chromium-driver) through apt, when
#      apt is available;
#   2. a virtual environment at .venv (or $VENV) with torch, the package and its test extras.
# Which torch: $TORCH_SPEC when set (pip arguments naming a torch 2.11 or newer build, e.g. a
# local CPU-only wheel, or "torch==2.11.0+cpu --index-url URL" with PyTorch's CPU or ROCm
# package index); else the torch the environment already has (a .venv made with
# --system-site-packages sees the system's); else torch==2.11.0 from PyPI, the version
# tests/test_golden.py was recorded with (the CUDA build on Linux: 5.3 GB). The torch in place
# is kept; one older than 2.11 is refused before the package installs.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES="fortunes dataset-fashion-mnist espeak-ng wamerican chromium chromium-driver libcairo2"
missing=""
for pkg in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "setup: installing data packages:$missing"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then
        echo "setup: installing data packages with sudo:$missing"
        sudo apt-get update -qq
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    else
        echo "setup: WARNING: cannot install the Debian packages$missing (no apt-get, or not root)." >&2
        echo "setup: training on the built-in data sources needs them; generation from the" >&2
        echo "setup: embedded checkpoint and your own data still work." >&2
    fi
fi

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
DEFAULT_TORCH_SPEC="torch==2.11.0"
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
if ! "$VENV/bin/python" -c "import multimodal, torch, pytest" >/dev/null 2>&1 \
   || [ pyproject.toml -nt "$VENV/.multimodal-installed" ]; then
    echo "setup: installing multimodal and its dependencies into $VENV (a few minutes the first time)"
    $PIP install -q --upgrade pip >/dev/null
    if [ -n "${TORCH_SPEC:-}" ]; then
        echo "setup: installing torch as TORCH_SPEC says: $TORCH_SPEC"
        # shellcheck disable=SC2086  # pip arguments: split on purpose
        $PIP install -q $TORCH_SPEC
    elif installed=$("$VENV/bin/python" -c "import torch; print(torch.__version__)" 2>/dev/null); then
        echo "setup: keeping the torch $installed already installed (TORCH_SPEC chooses another)"
    else
        echo "setup: installing $DEFAULT_TORCH_SPEC (TORCH_SPEC chooses another build)"
        # shellcheck disable=SC2086
        $PIP install -q $DEFAULT_TORCH_SPEC
    fi
    # the version pip knows (2.11.0), not torch.__version__ (2.11.0+cu130): pip pins by the former
    torch_version=$("$VENV/bin/python" -c "from importlib.metadata import version; print(version('torch'))" 2>/dev/null || true)
    case "$torch_version" in
        2.1[1-9].*|2.[2-9][0-9].*|[3-9].*) ;;
        *) echo "setup: ERROR: torch ${torch_version:-(none)} is in $VENV; multimodal needs torch" \
                "2.11 or newer. Set TORCH_SPEC to the pip arguments of one, e.g." \
                "TORCH_SPEC=\"torch==2.11.0\"" >&2
           exit 1 ;;
    esac
    # the torch in place stays (a CPU or ROCm build is not swapped for PyPI's CUDA one)
    $PIP install -q -e ".[test]" "torch==$torch_version"
    touch "$VENV/.multimodal-installed"
fi
echo "setup: done (torch $("$VENV/bin/python" -c "import torch; print(torch.__version__)" 2>/dev/null))"
