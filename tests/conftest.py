import os
from pathlib import Path

import pytest
import torch

FORTUNES = Path("/usr/share/games/fortunes")

requires_fortunes = pytest.mark.skipif(
    not (FORTUNES / "literature").is_file(), reason="Debian package 'fortunes' not installed")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("MULTIMODAL_TEST_THREADS", "1")))
    yield
