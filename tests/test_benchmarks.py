"""The text-to-image benchmark (benchmarks/text_to_image.py) on a toy colour model trained on
the fake emoji packages: every part runs on the emoji path and reports its figures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # spawns the benchmark script (about 20 s on one thread)


def test_text_to_image_benchmark_smoke_on_emoji(tmp_path):
    # a private cache: the smoke recogniser is trained on the fake packages
    env = dict(os.environ, MULTIMODAL_CACHE=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "text_to_image.py"),
                          "--smoke", "emoji", "--threads", "1", "--no-progress"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["data"] == "emoji" and report["smoke"] is True and report["threads"] == 1
    a, b, c, d = (report[part] for part in "abcd")
    assert a["identical"] and a["image_shape"] == [64, 64, 3]  # RGB 64x64, as the bare loop
    assert set(b) == {"samples_1", "samples_8", "meets_target"}
    # (c): the recogniser judged the same seeds under both samplers, and says how few there were
    assert c["quality"] == "top5" and c["concepts"] == {"food": ["red apple"]}
    assert c["samples"] == 1 and 0 <= c["disagreements"] <= c["samples"]
    for name, steps in (("dpm_solver_multistep", 20), ("ddpm", 1000)):
        assert c[name]["steps"] == steps and 0 <= c[name]["top5"] <= 1
    assert c["accuracy_gap_points"] == pytest.approx(
        (c["ddpm"]["top5"] - c["dpm_solver_multistep"]["top5"]) * 100)
    assert d["steps"] == 25 and d["scheduler"] == "dpm_solver_multistep"
    assert d["seconds_per_image"] == d["samples_1"]["seconds_per_call"]
