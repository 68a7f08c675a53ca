"""Text-to-image and image-to-text quality on colour emoji, judged by an independent recogniser.

Used by ``multimodal evaluate text-to-image`` and ``multimodal evaluate image-to-text`` when the
checkpoint was trained on the ``emoji`` reader (:mod:`multimodal.data.emoji`; see
:func:`multimodal.evaluation.image_data_type`).

The recogniser. A small CNN (:class:`EmojiRecogniser`) is trained once on the real artwork of
the emoji reader's TRAIN split (~1,729 concepts), in the Twemoji and OpenMoji styles only
(skin-tone variants included), with random crops, shifts, small rotations and slight
brightness/contrast changes (no flips and no hue change: orientation and colour carry
meaning). Noto is held out: it is the reference style the recogniser never saw. The weights
are cached as safetensors in ``$MULTIMODAL_CACHE`` or ``~/.cache/multimodal`` (see
:func:`multimodal.io.cache_root`), named ``emoji_recogniser-<key>.safetensors`` where the key
hashes its settings, its classes and its training pixels.

The concepts. :data:`COMMON_CONCEPTS` lists 50 everyday concepts of the training split in
five categories (animals, food, vehicles, faces, objects), spelled as the reader names them.

Text-to-image (:func:`evaluate_text_to_image_emoji`). Samples of every common concept are drawn
from prompts the training captions never use (:data:`multimodal.data.emoji.HELD_OUT_TEMPLATES`),
and every figure stands next to the same figure of REAL images of those concepts in each
style (twemoji and openmoji: styles the recogniser saw; noto: held out, the reference):

* ``top5`` / ``top1``: share of images whose recogniser top-5 (top-1) class is the prompted
  concept, overall, per category and the minimum over categories.
* ``frechet_distance``: the Frechet distance (Heusel et al. 2017, FID,
  https://arxiv.org/abs/1706.08500) in the recogniser's penultimate features between samples
  and real images of the same concepts, next to the real-vs-real floor (disjoint real subsets
  of matching size and concept balance against the same reference).
* ``saturation``: mean HSV saturation over the FOREGROUND pixels (not near-white) of each image,
  averaged over images; ``saturation_ratio = samples / real`` (a washed-out model scores low).

Quality bars (issue 16): ``top5 >= 0.6`` overall, every category's ``top5 > 0.3``,
``saturation_ratio >= 0.8``.

Image-to-text (:func:`evaluate_image_to_text_emoji`). The real Noto images of the common
concepts are captioned; a caption is right when the concept it names (the longest concept name
found in it, as whole words, case-insensitive, skin-tone phrases ignored) is the image's.
Bar: a share of at least 0.5.

Axes: k images, c channels (3, RGB), s image side, f features, n classes.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from multimodal.data.emoji import HELD_OUT_TEMPLATES, SKIN_TONES, STYLES, EmojiDataset
from multimodal.data.images import uint8_to_float
from multimodal.errors import DataError, InputError, did_you_mean
from multimodal.evaluation import checkpoint_config
from multimodal.evaluation.image import frechet_distance
from multimodal.io import atomic_write_bytes, cache_root
from multimodal.pipelines import load_pipeline

# Everyday concepts, 10 per category, all in the emoji reader's training split (val_fraction
# 0.1), spelled as the reader names them (``EmojiDataset.concept_names``).
COMMON_CONCEPTS: dict[str, tuple[str, ...]] = {
    "animals": ("dog face", "cat face", "lion", "pig face", "cow face", "elephant", "penguin",
                "tropical fish", "frog", "butterfly"),
    "food": ("red apple", "banana", "grapes", "strawberry", "watermelon", "carrot", "pizza",
             "hamburger", "doughnut", "birthday cake"),
    "vehicles": ("automobile", "bus", "bicycle", "airplane", "rocket", "sailboat", "locomotive",
                 "ambulance", "taxi", "motorcycle"),
    "faces": ("grinning face", "face with tears of joy", "smiling face with heart-eyes",
              "winking face", "crying face", "angry face", "smiling face with sunglasses",
              "thinking face", "sleeping face", "face screaming in fear"),
    "objects": ("light bulb", "key", "guitar", "scissors", "hammer", "laptop", "mobile phone",
                "alarm clock", "soccer ball", "wrapped gift"),
}
HELD_OUT_STYLE = "noto"  # the style the recogniser (and the bar's reference) never trains on
# Part of the recogniser's cache key: change any value and it is trained afresh.
RECOGNISER_SETTINGS: dict[str, Any] = {
    "version": 1,
    "styles": ["twemoji", "openmoji"],  # Noto held out
    "val_fraction": 0.1,  # the reader's split: classes are the training split's concepts
    "width": 16,  # channels of the first stage (x2, x4, x8 after)
    "input_size": 32,  # images are resized to this side before the first convolution
    "epochs": 24,
    "batch_size": 64,
    "lr": 3e-3,
    "weight_decay": 5e-4,
    "label_smoothing": 0.1,
    "dropout": 0.1,
    "min_crop_area": 0.7,  # random resized crop of 0.7-1.0 of the area
    "max_rotation": 10.0,  # degrees
    "jitter": 0.1,  # brightness +-0.1 (of the [-1, 1] range), contrast 1 +- 0.15
    "seed": 0,
}
# A pixel is foreground when some channel is darker than this (in [0, 1]): 0.9 ~ 230/255.
FOREGROUND_BELOW = 0.9
# Reader arguments that say where the data lives, taken from the checkpoint's data section.
_LOCATION_KEYS = ("cache_dir", "archive_dir", "npm", "sha256")
_TONE_PATTERN = re.compile(
    r"\s*,?\s*(?:with\s+)?(?:%s)(?:\s+and\s+(?:%s))?\s+skin(?:\s+tones?)?" % (
        ("|".join(sorted(map(re.escape, SKIN_TONES.values()), key=len, reverse=True)),) * 2))


# -- the recogniser --------------------------------------------------------------------------------
class EmojiRecogniser(nn.Module):
    """A small VGG-style CNN for RGB emoji: four stages of 3x3 convolutions with BatchNorm and
    ReLU (widths ``w, 2w, 4w, 8w``, max-pooling between), global average pooling, a linear
    head.

    Args:
        num_classes: Classes ``n`` (the concepts of the emoji training split).
        width: Channels ``w`` of the first stage (default 16).
        input_size: Side the images are resized to first (antialiased bilinear; default 32,
            a multiple of 8).
        dropout: Dropout before the head (default 0.1).
    """

    def __init__(self, *, num_classes: int, width: int = 16, input_size: int = 32,
                 dropout: float = 0.1):
        super().__init__()
        if input_size % 8 or input_size < 8:
            raise ValueError(f"input_size must be a positive multiple of 8, got {input_size}")
        self.input_size = input_size

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True)]

        w = width
        self.body = nn.Sequential(
            *block(3, w), *block(w, w), nn.MaxPool2d(2),  # s/2
            *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),  # s/4
            *block(2 * w, 4 * w), *block(4 * w, 4 * w), nn.MaxPool2d(2),  # s/8
            *block(4 * w, 8 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten())  # (k, 8w)
        self.feature_dim = 8 * w
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(8 * w, num_classes)
        # channels-last convolutions: about 1.3x faster on one CPU thread (measured here)
        self.to(memory_format=torch.channels_last)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Images (k, 3, s, s) in [-1, 1], any side -> penultimate features (k, f = 8w)."""
        if images.shape[-2:] != (self.input_size, self.input_size):
            images = F.interpolate(images, size=(self.input_size, self.input_size),
                                   mode="bilinear", antialias=True, align_corners=False)
        return self.body(images.contiguous(memory_format=torch.channels_last))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (k, 3, s, s) in [-1, 1] -> logits (k, n)."""
        return self.head(self.dropout(self.features(images)))


def augment(images: torch.Tensor, generator: torch.Generator, *, min_crop_area: float = 0.7,
            max_rotation: float = 10.0, jitter: float = 0.1) -> torch.Tensor:
    """Random views of emoji on white: a random resized crop of ``min_crop_area``-1 of the
    area whose window may leave the image by 5% of its side (padded white), a rotation of up
    to ``max_rotation`` degrees, brightness +-``jitter`` and contrast 1 +- 1.5 ``jitter``.
    No flips and no hue change: orientation and colour carry meaning. (A random Gaussian blur
    was tried as well: it lowered the held-out Noto top-1 from 0.46 to 0.40.)

    Args:
        images: (k, 3, s, s) in [-1, 1].
        generator: The CPU generator to draw from.

    Returns:
        (k, 3, s, s) in [-1, 1].
    """
    k = images.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(k, generator=generator)

    scale = uniform(min_crop_area, 1.0).sqrt()  # the window's side, as a share of the image's
    angle = uniform(-max_rotation, max_rotation) * (math.pi / 180)
    reach = 1.0 - scale + 0.1  # the window's centre, in [-1, 1] coordinates
    shift_x, shift_y = uniform(-1, 1) * reach, uniform(-1, 1) * reach
    cos, sin = angle.cos() * scale, angle.sin() * scale
    theta = torch.stack([torch.stack([cos, -sin, shift_x], -1),
                         torch.stack([sin, cos, shift_y], -1)], 1)  # (k, 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # grid_sample pads with zeros: sample (x - 1) so that the padding comes back as white (1)
    views = F.grid_sample(images - 1.0, grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False) + 1.0
    contrast = uniform(1 - 1.5 * jitter, 1 + 1.5 * jitter)[:, None, None, None]
    brightness = uniform(-jitter, jitter)[:, None, None, None]
    mean = views.mean(dim=(1, 2, 3), keepdim=True)
    return ((views - mean) * contrast + mean + brightness).clamp(-1.0, 1.0)


@dataclass
class Recogniser:
    """The trained recogniser and what its classes are.

    Attributes:
        model: The network, in eval mode.
        concept_keys: The concept (its code, :attr:`multimodal.data.emoji.Concept.key`) of
            every class, in class order.
        path: The cache file its weights live in.
    """

    model: EmojiRecogniser
    concept_keys: tuple[str, ...]
    path: Path

    def class_of(self, concept_key: str) -> int:
        """The class index of a concept.

        Raises:
            DataError: the recogniser was not trained on it (a validation-split concept).
        """
        try:
            return self.concept_keys.index(concept_key)
        except ValueError:
            raise DataError(f"the emoji recogniser has no class for concept {concept_key}: it "
                            "knows the concepts of the training split only") from None

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, chunk: int = 512
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (k, 3, s, s) in [-1, 1] -> (logits (k, n), penultimate features (k, f))."""
        logits, features = [], []
        for start in range(0, len(images), chunk):
            f = self.model.features(images[start:start + chunk].float())
            features.append(f)
            logits.append(self.model.head(f))
        if not logits:
            return (torch.zeros(0, len(self.concept_keys)),
                    torch.zeros(0, self.model.feature_dim))
        return torch.cat(logits), torch.cat(features)


def load_recogniser(*, settings: Mapping[str, Any] | None = None, progress: bool = True,
                    data_kwargs: Mapping[str, Any] | None = None) -> Recogniser:
    """The emoji recogniser: read from the cache, or trained on the real training split and
    cached (about 10 minutes on one CPU thread with the default settings).

    Args:
        settings: Overrides of :data:`RECOGNISER_SETTINGS` (part of the cache key).
        progress: Show a bar while training.
        data_kwargs: Where the emoji reader finds its data (``cache_dir``, ``archive_dir``,
            ``npm``, ``sha256``; see :class:`multimodal.data.emoji.EmojiDataset`); default its
            own defaults.

    Returns:
        The :class:`Recogniser`.

    Raises:
        InputError: an unknown setting (named, with the accepted ones).
        DataError: the emoji data cannot be read or fetched (see the reader).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file, save

    unknown = sorted(set(settings or {}) - set(RECOGNISER_SETTINGS))
    if unknown:
        raise InputError(f"unknown recogniser setting(s) {unknown}"
                         f"{did_you_mean(unknown[0], RECOGNISER_SETTINGS)}; accepted: "
                         f"{', '.join(RECOGNISER_SETTINGS)}")
    settings = {**RECOGNISER_SETTINGS, **(settings or {})}
    train_set = EmojiDataset(split="train", styles=tuple(settings["styles"]),
                             val_fraction=settings["val_fraction"], **(data_kwargs or {}))
    labels = train_set.split_concepts()
    concept_keys = tuple(train_set.concepts[c].key for c in labels)
    pixels = train_set.get_pixels()  # (k, 3, 64, 64) uint8
    fingerprint = hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()
    key = hashlib.sha256(json.dumps({"settings": settings, "classes": concept_keys,
                                     "pixels": fingerprint}, sort_keys=True).encode()
                         ).hexdigest()[:16]
    path = cache_root() / f"emoji_recogniser-{key}.safetensors"
    model = EmojiRecogniser(num_classes=len(concept_keys), width=settings["width"],
                            input_size=settings["input_size"], dropout=settings["dropout"])
    if path.is_file():
        try:
            with safe_open(str(path), "pt") as handle:
                stored = tuple(json.loads((handle.metadata() or {})["concept_keys"]))
            if stored == concept_keys:
                model.load_state_dict(load_file(str(path)))
                return Recogniser(model.eval(), concept_keys, path)
        except Exception:  # a corrupt or foreign cache entry is rebuilt
            pass
    class_index = {label: i for i, label in enumerate(labels)}
    targets = torch.tensor([class_index[label] for label in train_set.labels])
    _train_recogniser(model, pixels, targets, settings, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"concept_keys": json.dumps(concept_keys), "settings": json.dumps(settings)}
    atomic_write_bytes(path, save({k: v.contiguous() for k, v in model.state_dict().items()},
                                  metadata=metadata))
    return Recogniser(model.eval(), concept_keys, path)


def _train_recogniser(model: EmojiRecogniser, pixels: np.ndarray, targets: torch.Tensor,
                      settings: Mapping[str, Any], progress: bool) -> None:
    """AdamW with a one-cycle schedule and label smoothing on augmented views of ``pixels``
    ((k, 3, s, s) uint8) with classes ``targets`` (k,).

    The images are resized to the network's input side once (as :meth:`EmojiRecogniser.
    features` resizes at test time) and augmented there. Every class is drawn equally often:
    an epoch draws k images with replacement, each with probability 1 / (images of its class),
    so a concept with six skin tones is not seen six times as often as an apple.
    """
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(settings["seed"])
    torch.manual_seed(settings["seed"])
    size = model.input_size
    images = torch.cat([F.interpolate(uint8_to_float(pixels[i:i + 1024]), size=(size, size),
                                      mode="bilinear", antialias=True, align_corners=False)
                        for i in range(0, len(pixels), 1024)])  # (k, 3, size, size)
    count = len(targets)
    weights = 1.0 / torch.bincount(targets).double()[targets]  # (k,)
    batch = min(settings["batch_size"], count)
    steps_per_epoch = max(1, count // batch)
    total = settings["epochs"] * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"],
                                  weight_decay=settings["weight_decay"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings["lr"], total_steps=total)
    model.train()
    bar = tqdm(total=total, desc="train emoji recogniser", disable=not progress)
    for _ in range(settings["epochs"]):
        order = torch.multinomial(weights, steps_per_epoch * batch, replacement=True,
                                  generator=generator)
        for step in range(steps_per_epoch):
            index = order[step * batch:(step + 1) * batch]
            views = augment(images[index], generator, min_crop_area=settings["min_crop_area"],
                            max_rotation=settings["max_rotation"], jitter=settings["jitter"])
            loss = F.cross_entropy(model(views), targets[index],
                                   label_smoothing=settings["label_smoothing"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    model.eval()


# -- concepts and scores ---------------------------------------------------------------------------
def resolve_concepts(concept_names: Sequence[str], split_labels: Iterable[int],
                     concepts: Mapping[str, Sequence[str]] = COMMON_CONCEPTS
                     ) -> dict[str, list[int]]:
    """The labels of ``concepts`` (``{category: [name]}``), by category.

    Args:
        concept_names: The reader's name of every concept, by label
            (``EmojiDataset.concept_names``).
        split_labels: The labels of the training split (``EmojiDataset.split_concepts()``).
        concepts: The names to look up (default :data:`COMMON_CONCEPTS`).

    Returns:
        ``{category: [label]}`` in the order given.

    Raises:
        DataError: names that are no concept (each with a did-you-mean) or that are not in the
            training split; all are listed at once.
    """
    index = {name: label for label, name in enumerate(concept_names)}
    allowed = set(split_labels)
    problems, resolved = [], {}
    for category, names in concepts.items():
        resolved[category] = []
        for name in names:
            if name not in index:
                problems.append(f"'{name}' ({category}) is not an emoji concept"
                                f"{did_you_mean(name, index)}")
            elif index[name] not in allowed:
                problems.append(f"'{name}' ({category}) is a validation concept, not one of "
                                "the training split")
            else:
                resolved[category].append(index[name])
    if problems:
        raise DataError("common emoji concepts not usable: " + "; ".join(problems))
    return resolved


def topk_hits(logits: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """Whether each target class is among the ``k`` highest logits: logits (m, n), targets
    (m,) -> bool (m,)."""
    top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices  # (m, k)
    return (top == targets[:, None]).any(-1)


def hsv_saturation(images: torch.Tensor, *, foreground_below: float = FOREGROUND_BELOW
                   ) -> torch.Tensor:
    """Mean HSV saturation ``(max - min) / max`` of the RGB channels over the foreground
    pixels of each image: those with some channel below ``foreground_below`` (in [0, 1]),
    i.e. not near-white. An image without foreground pixels scores 0.

    Args:
        images: (k, 3, s, s) in [-1, 1].

    Returns:
        (k,) in [0, 1].
    """
    rgb = ((images.float() + 1) / 2).clamp(0, 1)
    high, low = rgb.amax(1), rgb.amin(1)  # (k, s, s)
    saturation = torch.where(high > 0, (high - low) / high.clamp_min(1e-8),
                             torch.zeros_like(high))
    foreground = (low < foreground_below).float()
    return (saturation * foreground).sum((1, 2)) / foreground.sum((1, 2)).clamp_min(1.0)


def _by_category(values: Sequence[float], categories: Sequence[str]) -> dict[str, float]:
    """Mean of ``values`` per category, in first-seen order."""
    found: dict[str, list[float]] = {}
    for value, category in zip(values, categories):
        found.setdefault(category, []).append(float(value))
    return {category: float(np.mean(v)) for category, v in found.items()}


def recognition_scores(recogniser: Recogniser, logits: torch.Tensor, concept_keys: Sequence[str],
                       categories: Sequence[str]) -> dict[str, Any]:
    """Top-5 and top-1 shares of images of known concepts, overall and per category.

    Args:
        recogniser: Maps concept keys to classes.
        logits: (m, n) of the images.
        concept_keys: The true concept of every image (m,).
        categories: The category of every image (m,).

    Returns:
        ``{"top5", "top1", "top5_per_category", "top1_per_category", "min_category_top5"}``.
    """
    targets = torch.tensor([recogniser.class_of(key) for key in concept_keys])
    top5 = topk_hits(logits, targets, 5).double()
    top1 = topk_hits(logits, targets, 1).double()
    per5 = _by_category(top5.tolist(), categories)
    return {"top5": float(top5.mean()), "top1": float(top1.mean()), "top5_per_category": per5,
            "top1_per_category": _by_category(top1.tolist(), categories),
            "min_category_top5": min(per5.values())}


class ConceptNamer:
    """Which concept a caption names: the longest concept name (canonical, Unicode or short
    name, :attr:`multimodal.data.emoji.Concept.names`) found in it as whole words,
    case-insensitive, with an optional plural ``s``/``es``, after skin-tone phrases ("with
    medium-dark skin tone") are removed. "green apple" is thus read as the green apple, not
    as the red one whose short name is "apple".

    Args:
        names: Every concept's names, by label.
    """

    def __init__(self, names: Sequence[Sequence[str]]):
        phrases: dict[str, set[int]] = {}
        for label, concept_names in enumerate(names):
            for name in concept_names:
                phrase = _normalise(name)
                if phrase:
                    phrases.setdefault(phrase, set()).add(label)
        self._patterns = [(phrase, re.compile(r"(?<![\w'-])" + re.escape(phrase)
                                              + r"(?:e?s)?(?![\w'-])"), labels)
                          for phrase, labels in sorted(phrases.items(), key=lambda p: -len(p[0]))]

    def named(self, caption: str) -> set[int]:
        """The labels whose name is the longest found in ``caption`` (empty when none)."""
        text = _TONE_PATTERN.sub("", _normalise(caption))
        best, found = 0, set()
        for phrase, pattern, labels in self._patterns:  # longest first
            if len(phrase) < best:
                break
            if phrase in text and pattern.search(text):
                best = len(phrase)
                found |= labels
        return found

    def names_concept(self, caption: str, label: int) -> bool:
        """Whether ``caption`` names concept ``label``."""
        return label in self.named(caption)


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower().replace("\u2019", "'").replace("_", " ")).strip()


# -- the checkpoint's data ---------------------------------------------------------------------
def _emoji_section(checkpoint, task: str) -> dict:
    """The emoji data section of a checkpoint's config (``data.caption`` first for
    image-to-text, else ``data.image``), or ``{}``."""
    data = (checkpoint_config(task, checkpoint) or {}).get("data") or {}
    order = ("caption", "image") if task == "image-to-text" else ("image",)
    for slot in order:
        section = data.get(slot)
        if isinstance(section, dict) and section.get("type") == "emoji":
            return section
    return {}


def _reader(section: Mapping[str, Any], settings: Mapping[str, Any], *,
            styles: Sequence[str] = STYLES, skin_tones: bool = False) -> EmojiDataset:
    """The training split of the emoji reader, where the checkpoint's data lives."""
    return EmojiDataset(split="train", styles=tuple(styles), skin_tones=skin_tones,
                        val_fraction=settings["val_fraction"],
                        **{k: section[k] for k in _LOCATION_KEYS if k in section})


def _concept_table(data: EmojiDataset, concepts: Mapping[str, Sequence[str]]
                   ) -> list[tuple[str, int]]:
    """``[(category, label)]`` of the concepts, checked against the reader."""
    resolved = resolve_concepts(data.concept_names, data.split_concepts(), concepts)
    return [(category, label) for category, labels in resolved.items() for label in labels]


# -- text-to-image -----------------------------------------------------------------------------
def generate_concept_samples(pipe, data: EmojiDataset, labels: Sequence[int], *,
                             per_concept: int, prompts_per_concept: int = 4, seed: int = 0,
                             chunk: int = 16, **call_kwargs) -> tuple[torch.Tensor, list[int],
                                                                       list[str]]:
    """Samples of every concept from held-out phrasings (:meth:`EmojiDataset.held_out_prompt`).

    ``per_concept`` samples are split over ``prompts_per_concept`` phrasings (fewer when that
    would leave a phrasing under two samples, at most the 10 there are); prompt ``j`` of concept ``c`` has the seed
    ``seed * 1_000_003 + 16 c + j``, so each sample replays alone.

    Returns:
        ``(images (k, 3, s, s) in [-1, 1], the concept label of each (k,), the prompts)``.
    """
    # distinct phrasings only (the templates cycle), each with two or more samples
    prompts_per_concept = max(1, min(prompts_per_concept, per_concept // 2,
                                     len(HELD_OUT_TEMPLATES)))
    counts = [per_concept // prompts_per_concept + (j < per_concept % prompts_per_concept)
              for j in range(prompts_per_concept)]
    jobs = [(data.held_out_prompt(label, label + j), count, seed * 1_000_003 + 16 * label + j,
             label) for label in labels for j, count in enumerate(counts) if count]
    images, owners = [], []
    for count in sorted(set(c for _, c, _, _ in jobs)):  # one batched call per count
        same = [job for job in jobs if job[1] == count]
        for start in range(0, len(same), chunk):
            part = same[start:start + chunk]
            out = pipe([p for p, _, _, _ in part], num_samples=count,
                       seed=[s for _, _, s, _ in part], **call_kwargs)
            for image in out.images:
                pixels = np.asarray(image)
                if pixels.ndim == 2:  # a grayscale model: its grey in all three channels
                    pixels = np.repeat(pixels[..., None], 3, axis=2)
                images.append(torch.from_numpy(pixels.transpose(2, 0, 1).copy()))
            owners += [label for _, _, _, label in part for _ in range(count)]
    stacked = torch.stack(images).float() / 127.5 - 1.0  # (k, 3, s, s)
    return stacked, owners, [p for p, _, _, _ in jobs]


def frechet_with_floor(sample_features: torch.Tensor, sample_concepts: Sequence[int],
                       real_features: torch.Tensor, real_concepts: Sequence[int], *,
                       repeats: int = 10, seed: int = 0) -> tuple[float, float]:
    """Frechet distance of samples to real images next to the real-vs-real floor.

    Per repeat, every concept's real images are split in two: a probe of ``floor(m_c / 2)``
    images and the reference (the rest). The floor is the distance of the probe to the
    reference; the samples' figure is that of as many samples per concept as the probe has,
    drawn at random, to the same reference. Both are averaged over ``repeats`` draws (the
    distance of small sets is biased upwards; equal sizes make the two comparable).

    Args:
        sample_features: (k, f); sample_concepts: (k,) concept of each.
        real_features: (m, f); real_concepts: (m,) concept of each (two or more per concept).

    Returns:
        ``(samples to reference, probe to reference)``.
    """
    generator = torch.Generator().manual_seed(seed)
    sample_concepts, real_concepts = torch.tensor(sample_concepts), torch.tensor(real_concepts)
    generated, floor = [], []
    for _ in range(repeats):
        probe, reference, drawn = [], [], []
        for concept in real_concepts.unique().tolist():
            real = torch.nonzero(real_concepts == concept)[:, 0]
            real = real[torch.randperm(len(real), generator=generator)]
            own = torch.nonzero(sample_concepts == concept)[:, 0]
            own = own[torch.randperm(len(own), generator=generator)]
            size = min(len(real) // 2, len(own))
            probe.append(real[:size])
            reference.append(real[size:])
            drawn.append(own[:size])
        probe, reference, drawn = torch.cat(probe), torch.cat(reference), torch.cat(drawn)
        if len(probe) < 2:
            raise InputError("too few real images per concept for a Frechet distance: each "
                             "concept needs two or more, and two or more concepts")
        generated.append(frechet_distance(sample_features[drawn], real_features[reference]))
        floor.append(frechet_distance(real_features[probe], real_features[reference]))
    return float(np.mean(generated)), float(np.mean(floor))


def emoji_judge(checkpoint=None, *, recogniser_settings: dict | None = None,
                progress: bool = True) -> tuple[Recogniser, Any, dict]:
    """What judges a text-to-image emoji checkpoint: ``(recogniser, the reader of its emoji
    data (all styles, training split), the recogniser's settings)``. The recogniser's classes
    are the concepts of the checkpoint's training split (its ``val_fraction``);
    ``recogniser_settings`` override :data:`RECOGNISER_SETTINGS`.

    Raises:
        CheckpointError, DataError: as :func:`evaluate_text_to_image_emoji`.
    """
    section = _emoji_section(checkpoint, "text-to-image")
    settings = {**RECOGNISER_SETTINGS,
                "val_fraction": section.get("val_fraction", RECOGNISER_SETTINGS["val_fraction"]),
                **(recogniser_settings or {})}
    recogniser = load_recogniser(settings=settings, progress=progress,
                                 data_kwargs={k: section[k] for k in _LOCATION_KEYS
                                              if k in section})
    return recogniser, _reader(section, settings), settings


def evaluate_text_to_image_emoji(*, checkpoint=None, num_samples: int = 8, seed: int = 0,
                                 prompts_per_concept: int = 4, num_inference_steps: int = 25,
                                 guidance_scale: float = 4.0, scheduler: str | None = None,
                                 concepts: Mapping[str, Sequence[str]] = COMMON_CONCEPTS,
                                 progress: bool = True, device: str = "cpu",
                                 recogniser_settings: Mapping[str, Any] | None = None
                                 ) -> dict[str, Any]:
    """Evaluate an emoji text-to-image checkpoint; see the module docstring.

    Args:
        checkpoint: Checkpoint or run directory (default: the embedded one). Its
            ``data.image`` section (an ``emoji`` reader) says where the data lives.
        num_samples: Samples generated PER CONCEPT (default 8, >= 2), split over
            ``prompts_per_concept`` held-out phrasings (default 4). The images are (s, s, 3)
            uint8 as the pipeline returns them; the recogniser resizes them.
        seed: Seed of the samples and of the Frechet subsets.
        num_inference_steps, guidance_scale, scheduler: Sampling settings.
        concepts: ``{category: [concept name]}`` to judge (default :data:`COMMON_CONCEPTS`).
        progress: Show a bar while the recogniser trains.
        device: Where the pipeline runs.
        recogniser_settings: Overrides of :data:`RECOGNISER_SETTINGS` (for quick tests).

    Returns:
        The report (JSON-serialisable): ``generated`` and ``real[style]`` (each with ``top5``,
        ``top1``, per-category shares, ``min_category_top5``, ``saturation``),
        ``saturation_real``, ``saturation_ratio``, ``frechet_distance``,
        ``frechet_distance_real_floor``, ``recogniser`` (its accuracy on every training
        concept per style), ``quality_bars`` and ``quality_bar_met``.

    Raises:
        InputError: ``num_samples`` below 2.
        CheckpointError: the checkpoint is missing or has no image decoder.
        DataError: the emoji data cannot be read, or a concept is unknown or not in the
            training split.
    """
    if num_samples < 2:
        raise InputError(f"num_samples (per concept) must be >= 2 (each concept's samples are "
                         f"split over at least two held-out phrasings), got {num_samples}")
    pipe = load_pipeline("text-to-image", checkpoint, device=device)
    recogniser, data, settings = emoji_judge(checkpoint, recogniser_settings=recogniser_settings,
                                             progress=progress)
    table = _concept_table(data, concepts)
    category_of = {label: category for category, label in table}
    keys = [c.key for c in data.concepts]

    # Real images: one per style and concept (no skin-tone variants; the prompts name none).
    real_logits, real_features = recogniser(data.get_images())
    styles = data.image_styles
    everything = {}
    for style in STYLES:
        rows = [i for i, s in enumerate(styles) if s == style]
        targets = torch.tensor([recogniser.class_of(keys[data.image_concepts[i]]) for i in rows])
        everything[style] = {f"top{k}": float(topk_hits(real_logits[rows], targets, k).double()
                                              .mean()) for k in (1, 5)}
        everything[style].update(images=len(rows),
                                 seen_in_training=style in settings["styles"])
    common_rows = [i for i, c in enumerate(data.image_concepts) if c in category_of]
    real_saturation = hsv_saturation(data.get_images(common_rows))
    real = {}
    for style in STYLES:
        rows = [i for i in common_rows if styles[i] == style]
        concepts_of = [data.image_concepts[i] for i in rows]
        real[style] = {**recognition_scores(recogniser, real_logits[rows],
                                            [keys[c] for c in concepts_of],
                                            [category_of[c] for c in concepts_of]),
                       "saturation": float(hsv_saturation(data.get_images(rows)).mean()),
                       "seen_by_recogniser": style in settings["styles"]}

    images, owners, prompts = generate_concept_samples(
        pipe, data, [label for _, label in table], per_concept=num_samples,
        prompts_per_concept=prompts_per_concept, seed=seed, progress=False,
        num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
        scheduler=scheduler)
    logits, features = recogniser(images)
    generated = recognition_scores(recogniser, logits, [keys[c] for c in owners],
                                   [category_of[c] for c in owners])
    sample_saturation = hsv_saturation(images)
    generated["saturation"] = float(sample_saturation.mean())
    targets = torch.tensor([recogniser.class_of(keys[c]) for c in owners])
    hits = topk_hits(logits, targets, 5).double().tolist()
    names = data.concept_names
    generated["top5_per_concept"] = _by_category(hits, [names[c] for c in owners])

    frechet, floor = frechet_with_floor(
        features, owners, real_features[common_rows],
        [data.image_concepts[i] for i in common_rows], seed=seed)
    saturation_real = float(real_saturation.mean())
    ratio = generated["saturation"] / saturation_real if saturation_real else 0.0
    bars = {"top5_at_least_0.6": generated["top5"] >= 0.6,
            "every_category_top5_above_0.3": generated["min_category_top5"] > 0.3,
            "saturation_ratio_at_least_0.8": ratio >= 0.8}
    return {
        "task": "text-to-image",
        "evaluation": "emoji",
        "checkpoint_id": pipe.checkpoint_id,
        "samples_per_concept": num_samples,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "scheduler": scheduler or "dpm_solver_multistep",
        "concepts": {category: [names[label] for c, label in table if c == category]
                     for category in dict.fromkeys(c for c, _ in table)},
        "prompts_example": prompts[::max(1, len(prompts) // 10)],
        "recogniser": {"file": recogniser.path.name, "classes": len(recogniser.concept_keys),
                       "trained_on": list(settings["styles"]), "held_out": [
                           s for s in STYLES if s not in settings["styles"]],
                       "accuracy_all_training_concepts": everything},
        "generated": generated,
        "real": real,
        "saturation_real": saturation_real,
        "saturation_ratio": ratio,
        "saturation_pixels": f"foreground: pixels with some channel below {FOREGROUND_BELOW}",
        "frechet_distance": frechet,
        "frechet_distance_real_floor": floor,
        "quality_bars": bars,
        "quality_bar_met": all(bars.values()),
    }


# -- image-to-text -----------------------------------------------------------------------------
def evaluate_image_to_text_emoji(*, checkpoint=None, num_samples: int = 8, seed: int = 0,
                                 style: str = HELD_OUT_STYLE,
                                 concepts: Mapping[str, Sequence[str]] = COMMON_CONCEPTS,
                                 device: str = "cpu", batch_size: int = 64,
                                 max_new_tokens: int = 24) -> dict[str, Any]:
    """Caption real emoji of the common concepts and score whether each caption names its
    concept (see :class:`ConceptNamer`).

    Args:
        checkpoint: Checkpoint or run directory (default: the embedded one). Its
            ``data.caption`` (else ``data.image``) emoji section says where the data lives.
        num_samples: Images per concept at most (default 8): the base image of ``style`` and
            then its skin-tone variants, where it has any.
        seed: Unused by greedy captions; kept for the CLI's uniform arguments.
        style: The style captioned (default ``"noto"``, the one held out of the recogniser;
            the report says whether the captioner's training data had it).
        concepts: ``{category: [concept name]}`` (default :data:`COMMON_CONCEPTS`).
        device: Where the pipeline runs.
        batch_size: Images per pipeline call.
        max_new_tokens: Longest caption.

    Returns:
        ``{"named_rate", "per_category", "min_category", "unnamed_rate", "named_rate_bar",
        "quality_bar_met", "style", "style_seen_in_training", "examples", ...}`` (JSON-serialisable). The images
        go to the pipeline as (s, s, 3) uint8 RGB arrays.

    Raises:
        InputError: ``num_samples`` below 1.
        CheckpointError: the checkpoint has no captioner.
        DataError: the emoji data cannot be read; an unknown style; a concept is unknown or
            not in the training split.
    """
    if num_samples < 1:
        raise InputError(f"num_samples (per concept) must be >= 1, got {num_samples}")
    pipe = load_pipeline("image-to-text", checkpoint, device=device)
    section = _emoji_section(checkpoint, "image-to-text")
    settings = {"val_fraction": section.get("val_fraction",
                                            RECOGNISER_SETTINGS["val_fraction"])}
    data = _reader(section, settings, styles=(style,), skin_tones=True)
    table = _concept_table(data, concepts)
    category_of = {label: category for category, label in table}
    rows: list[int] = []
    for _, label in table:  # the base image first (no tone), then the variants
        own = [i for i, c in enumerate(data.image_concepts) if c == label]
        own.sort(key=lambda i: data.image_tones[i] is not None)
        rows += own[:num_samples]
    pixels = data.get_pixels(rows).transpose(0, 2, 3, 1)  # (k, s, s, 3) uint8
    captions: list[str] = []
    for start in range(0, len(rows), batch_size):
        captions += pipe(list(pixels[start:start + batch_size]),
                         max_new_tokens=max_new_tokens).texts
    namer = ConceptNamer([c.names for c in data.concepts])
    truth = [data.image_concepts[i] for i in rows]
    named = [namer.named(c) for c in captions]
    right = [t in n for t, n in zip(truth, named)]
    per_category = _by_category(right, [category_of[t] for t in truth])
    rate = sum(right) / len(right)
    styles_trained = section.get("styles", list(STYLES))
    names = data.concept_names
    return {"task": "image-to-text", "evaluation": "emoji", "checkpoint_id": pipe.checkpoint_id,
            "style": style, "style_seen_in_training": style in styles_trained,
            "num_images": len(captions), "named_rate": rate,
            "per_category": per_category, "min_category": min(per_category.values()),
            "unnamed_rate": sum(not n for n in named) / len(named),
            "named_rate_bar": 0.5, "quality_bar_met": rate >= 0.5,
            "examples": [{"concept": names[t], "caption": c, "right": r}
                         for t, c, r in list(zip(truth, captions, right))
                         [::max(1, len(captions) // 12)]]}
