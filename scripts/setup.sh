#!/usr/bin/env bash
# Set up multimodal on a fresh Debian/Ubuntu machine:
#   1. the data packages (fortunes, Fashion-MNIST, espeak-ng, a word list) and the headless
#      browser the server's page is tested in (chromium, chromium-driver) through apt, when
#      apt is available;
#   2. a virtual environment at .venv with the package and its test extras.
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
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import multimodal, torch, pytest" >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.multimodal-installed ]; then
    echo "setup: installing multimodal and its dependencies into .venv (a few minutes the first time)"
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e ".[test]"
    touch .venv/.multimodal-installed
fi
echo "setup: done"
