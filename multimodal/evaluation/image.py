"""Text-to-image quality on Fashion-MNIST, judged by an independent classifier.

A small CNN is trained on the real Fashion-MNIST training set (once; cached as safetensors in
``$MULTIMODAL_CACHE`` or ``~/.cache/multimodal``, see :func:`multimodal.io.cache_root`; keyed by a hash of its settings). For every
class, samples are generated from prompts phrased in ways the training captions never use
(:data:`HELD_OUT_TEMPLATES`), and the report puts each figure next to its real-data reference:

* ``accuracy[class]``: share of samples the classifier assigns to the prompted class, next to
  its accuracy on the real test images of that class; ``ratio = generated / real`` and
  ``min_ratio`` over classes (the quality bar is ``min_ratio >= 0.9``).
* ``frechet_distance``: the Frechet distance (Heusel et al. 2017, FID,
  https://arxiv.org/abs/1706.08500) between generated samples and real test images in the
  classifier's penultimate features, next to the real-vs-real floor: a disjoint real test
  subset with the same size and class balance as the samples, against the same reference.
* ``pairwise_distance``: mean RMS pixel distance (pixels in [0, 1]) between samples of one
  prompt, next to the same for random pairs of real test images of one class, and
  ``duplicate_pair_rate``: share of sample pairs of one prompt that are (nearly) identical.

Axes: k images, f features.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from multimodal.data.images import CLASS_NAMES, FASHION_MNIST_DIR, SYNONYMS, FashionMNISTDataset
from multimodal.errors import InputError
from multimodal.io import atomic_write_bytes, cache_root
from multimodal.pipelines import load_pipeline

# Prompt phrasings the training captions never use (a test checks this), filled with each
# class's canonical name: {a} with its article, {p} plural.
HELD_OUT_TEMPLATES = (
    "a picture of {a}", "show me some {p}", "I would like {a}", "{p}, please", "generate {a}",
    "here is {a}", "can you make {a}?", "{a} lying flat",
)
CLASSIFIER_SETTINGS = {"version": 1, "epochs": 3, "batch_size": 128, "lr": 2e-3, "seed": 0,
                       "max_items": None}


def held_out_prompt(label: int, index: int) -> str:
    """Prompt ``index`` (cycling over :data:`HELD_OUT_TEMPLATES`) for class ``label``."""
    singular, plural = SYNONYMS[label][0]
    with_article = (("an " if singular[0] in "aeiou" else "a ") + singular) if singular \
        else f"a pair of {plural}"
    return HELD_OUT_TEMPLATES[index % len(HELD_OUT_TEMPLATES)].format(a=with_article, p=plural)


# -- the classifier --------------------------------------------------------------------------------
class FashionClassifier(nn.Module):
    """A small CNN for 32x32 grayscale images in [-1, 1]; ``features`` are its penultimate
    activations (f = 128)."""

    def __init__(self, *, num_classes: int = 10, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width // 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 16x16
            nn.Conv2d(width // 2, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4x4
            nn.Flatten(), nn.Linear(2 * width * 16, feature_dim), nn.ReLU())
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(k, 1, 32, 32) -> (k, f)."""
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(k, 1, 32, 32) -> (k, 10) logits."""
        return self.head(self.dropout(self.features(images)))


def load_classifier(*, root: str = FASHION_MNIST_DIR, progress: bool = True,
                    settings: dict | None = None) -> FashionClassifier:
    """The Fashion-MNIST classifier: read from the cache, or trained on the real training set
    (a minute or two on CPU) and cached.

    Args:
        root: Fashion-MNIST directory.
        progress: Show a bar while training.
        settings: Overrides of :data:`CLASSIFIER_SETTINGS` (part of the cache key).

    Raises:
        DataError: Fashion-MNIST is not installed.
    """
    from safetensors.torch import load_file, save


    settings = dict(CLASSIFIER_SETTINGS, **(settings or {}))
    train_set = FashionMNISTDataset(split="train", root=root, max_items=settings["max_items"])
    key = hashlib.sha256(json.dumps({**settings, "n": len(train_set)},
                                    sort_keys=True).encode()).hexdigest()[:16]
    path = cache_root() / f"fashion_classifier-{key}.safetensors"
    model = FashionClassifier()
    if path.is_file():
        try:
            model.load_state_dict(load_file(str(path)))
            return model.eval()
        except Exception:  # a corrupt cache entry is rebuilt
            pass
    _train_classifier(model, train_set, settings, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save({k: v.contiguous() for k, v in model.state_dict().items()}))
    return model.eval()


def _train_classifier(model: FashionClassifier, train_set, settings: dict, progress: bool) -> None:
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(settings["seed"])
    torch.manual_seed(settings["seed"])
    images = train_set.get_images()  # (k, 1, 32, 32)
    labels = torch.tensor(train_set.labels)
    batch = settings["batch_size"]
    steps_per_epoch = len(labels) // batch
    total = settings["epochs"] * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings["lr"], total_steps=total)
    model.train()
    bar = tqdm(total=total, desc="train evaluation classifier", disable=not progress)
    for _ in range(settings["epochs"]):
        order = torch.randperm(len(labels), generator=generator)
        for s in range(steps_per_epoch):
            index = order[s * batch : (s + 1) * batch]
            x = images[index]
            # A one-pixel random shift: robustness to the small misalignments samples have.
            dx, dy = torch.randint(-1, 2, (2,), generator=generator).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(x), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            bar.update(1)
    bar.close()
    model.eval()


@torch.no_grad()
def classify(model: FashionClassifier, images: torch.Tensor, chunk: int = 1000
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (k, 1, 32, 32) in [-1, 1] -> (predicted labels (k,), features (k, f))."""
    preds, feats = [], []
    for i in range(0, len(images), chunk):
        f = model.features(images[i : i + chunk])
        feats.append(f)
        preds.append(model.head(f).argmax(-1))
    return torch.cat(preds), torch.cat(feats)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to features a (k1, f) and b (k2, f):
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)``."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    evals, evecs = torch.linalg.eigh(cov_a)
    sqrt_a = evecs @ torch.diag(evals.clamp_min(0).sqrt()) @ evecs.T
    cross = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def rms_pairwise_distance(images: torch.Tensor) -> tuple[float, float]:
    """(mean RMS distance over pairs, share of pairs closer than 1/255) of images (k, ...) in
    [0, 1]."""
    flat = images.flatten(1).double()
    k = flat.shape[0]
    if k < 2:
        return 0.0, 0.0
    d = torch.cdist(flat, flat) / flat.shape[1] ** 0.5
    pairs = d[torch.triu_indices(k, k, offset=1).unbind()]
    return float(pairs.mean()), float((pairs < 1 / 255).double().mean())


# -- the evaluation --------------------------------------------------------------------------------
def generate_class_samples(pipe, *, per_class: int, seed: int = 0, prompts_per_class: int = 4,
                           progress: bool = False, **call_kwargs) -> dict[int, list[torch.Tensor]]:
    """Samples of every class from held-out prompts: ``{label: [(k, 1, 32, 32) in [-1, 1] per
    prompt]}``; ``per_class`` samples split over ``prompts_per_class`` prompts (fewer when
    that would leave a prompt under two samples)."""
    samples: dict[int, list[torch.Tensor]] = {}
    generator = torch.Generator().manual_seed(seed)
    prompts_per_class = max(1, min(prompts_per_class, per_class // 2))  # >= 2 samples each
    counts = [per_class // prompts_per_class + (i < per_class % prompts_per_class)
              for i in range(prompts_per_class)]
    for label in range(len(CLASS_NAMES)):
        samples[label] = []
        for j, count in enumerate(c for c in counts if c):
            out = pipe(held_out_prompt(label, label + j), num_samples=count,
                       generator=generator, progress=progress, **call_kwargs)
            pixels = torch.from_numpy(np.stack(out.images)).float()[:, None]  # (k, 1, h, w)
            samples[label].append(pixels / 127.5 - 1.0)
    return samples


def pick_per_class(labels: torch.Tensor, per_class: int,
                   generator: torch.Generator) -> torch.Tensor:
    """Indices of ``per_class`` items of every class (k,), drawn with ``generator``, class by
    class (fewer where a class has fewer)."""
    return torch.cat([torch.nonzero(labels == c)[:, 0][
        torch.randperm(int((labels == c).sum()), generator=generator)[:per_class]]
        for c in range(len(CLASS_NAMES))])


def class_accuracy(classifier, samples: dict[int, list[torch.Tensor]]) -> dict[int, float]:
    """Share of each class's samples the classifier assigns to that class."""
    return {label: float((classify(classifier, torch.cat(chunks))[0] == label).double().mean())
            for label, chunks in samples.items()}


def evaluate_text_to_image(*, checkpoint=None, num_samples: int = 32, seed: int = 0,
                           num_inference_steps: int = 25, guidance_scale: float = 4.0,
                           scheduler: str | None = None, root: str = FASHION_MNIST_DIR,
                           progress: bool = True, device: str = "cpu",
                           classifier_settings: dict | None = None) -> dict[str, Any]:
    """Evaluate a text-to-image checkpoint; see the module docstring.

    Args:
        checkpoint: Checkpoint or run directory (default: the embedded one).
        num_samples: Samples generated PER CLASS (split over 4 held-out prompts).
        seed: Seed of the samples.
        num_inference_steps, guidance_scale, scheduler: Sampling settings.
        root: Fashion-MNIST directory.
        progress: Show a bar while the classifier trains.
        device: Where the pipeline runs.
        classifier_settings: Overrides of :data:`CLASSIFIER_SETTINGS` (for quick tests).

    Returns:
        The report (JSON-serialisable).

    Raises:
        InputError: ``num_samples`` below 2.
        CheckpointError: the checkpoint is missing or has no image decoder.
        DataError: Fashion-MNIST is not installed.
    """
    if num_samples < 2:
        raise InputError(f"num_samples (per class) must be >= 2 to judge variety, got {num_samples}")
    pipe = load_pipeline("text-to-image", checkpoint, device=device)
    classifier = load_classifier(root=root, progress=progress, settings=classifier_settings)
    test = FashionMNISTDataset(split="val", root=root)
    real_images, real_labels = test.get_images(), torch.tensor(test.labels)
    real_pred, real_feat = classify(classifier, real_images)

    samples = generate_class_samples(pipe, per_class=num_samples, seed=seed, progress=False,
                                     num_inference_steps=num_inference_steps,
                                     guidance_scale=guidance_scale, scheduler=scheduler)
    generated = torch.cat([torch.cat(chunks) for chunks in samples.values()])
    gen_acc = class_accuracy(classifier, samples)

    # Reference = real test images minus a probe of the samples' size and class balance.
    generator = torch.Generator().manual_seed(seed)
    probe = pick_per_class(real_labels, num_samples, generator)
    reference = torch.ones(len(real_labels), dtype=torch.bool)
    reference[probe] = False
    _, gen_feat = classify(classifier, generated)

    per_class = {}
    distances, duplicates, real_distances = [], [], []
    for c, name in enumerate(CLASS_NAMES):
        real_acc = float((real_pred[real_labels == c] == c).double().mean())
        per_class[name] = {"generated": gen_acc[c], "real": real_acc,
                           "ratio": gen_acc[c] / real_acc if real_acc else 0.0}
        for chunk in samples[c]:
            mean_d, dup = rms_pairwise_distance((chunk + 1) / 2)
            distances.append(mean_d)
            duplicates.append(dup)
        real_distances.append(rms_pairwise_distance((real_images[probe[real_labels[probe] == c]]
                                                     + 1) / 2)[0])
    ratios = [v["ratio"] for v in per_class.values()]
    return {
        "task": "text-to-image",
        "checkpoint_id": pipe.checkpoint_id,
        "samples_per_class": num_samples,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "scheduler": scheduler or "dpm_solver_multistep",
        "prompts_example": [held_out_prompt(c, c) for c in range(len(CLASS_NAMES))],
        "accuracy": per_class,
        "accuracy_generated_mean": float(np.mean([v["generated"] for v in per_class.values()])),
        "accuracy_real_mean": float(np.mean([v["real"] for v in per_class.values()])),
        "min_ratio": min(ratios),
        "quality_bar_met": min(ratios) >= 0.9,
        "frechet_distance": frechet_distance(gen_feat, real_feat[reference]),
        "frechet_distance_real_floor": frechet_distance(real_feat[probe], real_feat[reference]),
        "pairwise_distance": float(np.mean(distances)),
        "pairwise_distance_real": float(np.mean(real_distances)),
        "duplicate_pair_rate": float(np.mean(duplicates)),
    }
