import os
from pathlib import Path

import pytest
import torch

FORTUNES = Path("/usr/share/games/fortunes")

requires_fortunes = pytest.mark.skipif(
    not (FORTUNES / "literature").is_file(), reason="Debian package 'fortunes' not installed")

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

requires_fashion_mnist = pytest.mark.skipif(
    not (FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian package 'dataset-fashion-mnist' not installed")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("MULTIMODAL_TEST_THREADS", "1")))
    yield


def _has_espeak() -> bool:
    import shutil

    return shutil.which("espeak-ng") is not None


requires_espeak = pytest.mark.skipif(not _has_espeak(),
                                     reason="Debian package 'espeak-ng' not installed")


@pytest.fixture(scope="session")
def serve_engine(tmp_path_factory):
    """The tiny joint checkpoint (configs/tiny.yaml), trained once per session and loaded as
    the server's Engine: shared by tests/test_serve.py and tests/test_serve_page.py."""
    from live_server import train_tiny_engine

    return train_tiny_engine(tmp_path_factory.mktemp("serve"))
