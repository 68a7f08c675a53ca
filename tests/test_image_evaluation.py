"""``multimodal evaluate text-to-image``: the classifier, the Frechet distance and the report."""

import json

import pytest
import torch

from multimodal.cli import main
from multimodal.evaluation.image import frechet_distance, rms_pairwise_distance
from multimodal.testing import tiny_image_config
from multimodal.training.trainer import train

from conftest import requires_fashion_mnist


def test_frechet_distance_of_known_gaussians():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=generator)
    b = torch.randn(4000, 3, generator=generator)
    assert frechet_distance(a, b) < 0.02
    shifted = frechet_distance(a, b + torch.tensor([2.0, 0.0, 0.0]))
    assert shifted == pytest.approx(4.0, abs=0.1)
    # Twice the standard deviation: trace term (1 + 4 - 2 * 2) per dimension.
    assert frechet_distance(a, 2 * b) == pytest.approx(3.0, abs=0.1)


def test_pairwise_distance_and_duplicates():
    images = torch.zeros(3, 1, 4, 4)
    images[1] = 1.0
    mean, duplicates = rms_pairwise_distance(images)
    assert mean == pytest.approx(2 / 3) and duplicates == pytest.approx(1 / 3)


@pytest.mark.slow  # an evaluation
@requires_fashion_mnist
def test_evaluate_reports_every_class_next_to_real_data(tmp_path, monkeypatch):
    monkeypatch.setenv("MULTIMODAL_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    train(tiny_image_config(train={"max_steps": 2, "eval_every": 0}), out_dir=run,
          progress=False)
    from multimodal.evaluation.image import evaluate_text_to_image

    settings = {"epochs": 1, "max_items": 2000}
    report = evaluate_text_to_image(checkpoint=run, num_samples=2, num_inference_steps=2,
                                    progress=False, classifier_settings=settings)
    assert len(list((tmp_path / "cache").glob("fashion_classifier-*.safetensors"))) == 1
    assert set(report["accuracy"]) == {"t-shirt/top", "trouser", "pullover", "dress", "coat",
                                       "sandal", "shirt", "sneaker", "bag", "ankle boot"}
    for figures in report["accuracy"].values():
        assert 0 <= figures["generated"] <= 1 and 0 <= figures["real"] <= 1
    assert report["accuracy_real_mean"] > 0.3  # even this quickly trained classifier
    assert report["min_ratio"] == min(v["ratio"] for v in report["accuracy"].values())
    assert report["frechet_distance"] > report["frechet_distance_real_floor"] > 0
    assert 0 < report["pairwise_distance"] and 0 < report["pairwise_distance_real"]
    json.dumps(report)
    again = evaluate_text_to_image(checkpoint=run, num_samples=2, num_inference_steps=2,
                                   progress=False, classifier_settings=settings)
    assert again["accuracy"] == report["accuracy"]  # cached classifier, same seed


def test_evaluate_without_an_image_checkpoint(tmp_path, capsys):
    assert main(["evaluate", "text-to-image", "--checkpoint", str(tmp_path / "none")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
