"""``multimodal evaluate image-to-text``: does the caption of a real test image name its item?

Captions of Fashion-MNIST test images (never trained on) are read for item names: every
singular and plural phrase of every class (:data:`multimodal.data.images.SYNONYMS`, as whole
words; the longest match wins, so "t-shirt" is not read as "shirt"). A caption is right when
the item it names is the image's class, wrong when it names another, and unnamed when it names
none. The report gives the accuracy overall and per class, next to the rate of a majority
guess (10%), and a few captions as examples.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from multimodal.data.images import CLASS_NAMES, FASHION_MNIST_DIR, SYNONYMS, FashionMNISTDataset
from multimodal.errors import InputError
from multimodal.evaluation.image import pick_per_class
from multimodal.pipelines import load_pipeline


def _phrases() -> list[tuple[str, int]]:
    """(phrase, class) for every synonym, longest first."""
    pairs = {(phrase.lower(), label) for label, synonyms in enumerate(SYNONYMS)
             for pair in synonyms for phrase in pair if phrase}
    return sorted(pairs, key=lambda p: -len(p[0]))


_PATTERNS = [(re.compile(r"(?<![\w-])" + re.escape(p) + r"(?![\w-])"), label)
             for p, label in _phrases()]


def named_class(caption: str) -> int | None:
    """The class whose longest phrase occurs in ``caption`` (whole words), or ``None``."""
    text = caption.lower()
    best: tuple[int, int] | None = None  # (length, class)
    for pattern, label in _PATTERNS:
        match = pattern.search(text)
        if match and (best is None or len(match.group(0)) > best[0]):
            best = (len(match.group(0)), label)
    return None if best is None else best[1]


def evaluate_image_to_text(*, checkpoint=None, num_samples: int = 32, seed: int = 0,
                           root: str = FASHION_MNIST_DIR, device: str = "cpu",
                           batch_size: int = 64) -> dict[str, Any]:
    """Caption ``num_samples`` test images per class and score the item names.

    Args:
        checkpoint: Checkpoint or run directory (default: the embedded one).
        num_samples: Test images per class (drawn with ``seed``).
        root: Fashion-MNIST directory.
        device: Where the pipeline runs (``"cpu"``, ``"cuda"``, ``"mps"``).
        batch_size: Images captioned per call.

    Returns:
        ``{"item_accuracy", "unnamed_rate", "per_class": {name: accuracy}, "chance",
        "examples": [...]}``.

    Raises:
        InputError: ``num_samples`` below 1.
        CheckpointError: the checkpoint has no captioner.
        DataError: Fashion-MNIST is not installed.
    """
    if num_samples < 1:
        raise InputError(f"num_samples (per class) must be >= 1, got {num_samples}")
    pipe = load_pipeline("image-to-text", checkpoint, device=device)
    test = FashionMNISTDataset(split="val", root=root)
    labels = torch.tensor(test.labels)
    generator = torch.Generator().manual_seed(seed)
    chosen = pick_per_class(labels, num_samples, generator)
    images = test.get_images(chosen.tolist())  # (k, 1, 32, 32) in [-1, 1]
    pixels = ((images[:, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    captions: list[str] = []
    for start in range(0, len(pixels), batch_size):
        captions += pipe(list(pixels[start:start + batch_size])).texts
    named = [named_class(c) for c in captions]
    truth = labels[chosen].tolist()
    right = [n == t for n, t in zip(named, truth)]
    per_class = {CLASS_NAMES[c]: sum(r for r, t in zip(right, truth) if t == c)
                 / max(1, truth.count(c)) for c in range(len(CLASS_NAMES))}
    examples = [{"class": CLASS_NAMES[t], "caption": c}
                for t, c in list(zip(truth, captions))[::max(1, len(captions) // 10)]]
    return {"task": "image-to-text", "checkpoint_id": pipe.checkpoint_id,
            "num_images": len(captions), "item_accuracy": sum(right) / len(right),
            "unnamed_rate": named.count(None) / len(named), "chance": 1 / len(CLASS_NAMES),
            "per_class": per_class, "examples": examples}
