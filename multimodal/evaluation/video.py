"""Text-to-video quality on Moving Fashion-MNIST: item, motion direction and identity.

Clips are generated for every class and direction from prompts phrased in ways the training
captions never use (:data:`HELD_OUT_TEMPLATES`). Every figure is reported for three sets of
clips: the video model's, a baseline that applies a text-to-image model frame by frame with the
same caption (each frame an independent sample, centred on the canvas), and real Moving
Fashion-MNIST validation clips (sprites never seen in training):

* ``item_accuracy``: share of frames the Fashion-MNIST classifier of the text-to-image
  evaluation (:func:`multimodal.evaluation.image.load_classifier`, trained once and cached)
  assigns to the prompted class. Each frame is cropped to the 28x28 box around the object's
  centre of mass and padded to 32x32, the classifier's input. ``item_ratio`` = generated /
  real, overall and per class (the quality bar is an overall ratio >= 0.85).
* ``direction_accuracy``: share of clips whose centre of mass travels the prompted way: the
  least-squares slope of the centre's x and y over the frames, the larger axis deciding, and at
  least ``min_travel`` pixels over the clip (else the clip counts as not moving). Bar: >= 0.9.
* ``identity_stability``: per clip, the share of frames the classifier puts in the clip's
  majority class, averaged over clips; ``feature_similarity``: the mean cosine similarity of
  the classifier's features between consecutive frames. The bar: identity stability at least
  90% of the real clips'.

Axes: k clips, t frames, h w height and width, f features.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from multimodal.data.images import CLASS_NAMES, FASHION_MNIST_DIR, SYNONYMS
from multimodal.data.video import DIRECTIONS, SPRITE, MovingFashionMNISTDataset
from multimodal.errors import InputError
from multimodal.evaluation.image import classify, load_classifier
from multimodal.pipelines import load_pipeline

# Prompt phrasings the training captions never use (a test checks this): {a} the item with its
# article, {d} the direction word.
HELD_OUT_TEMPLATES = ("a video of {a} moving {d}", "{a} that moves {d}", "watch {a} move {d}",
                      "see {a} go {d}")
MIN_TRAVEL = 3.0  # pixels over the clip below which a clip counts as not moving
ITEM_RATIO_BAR, DIRECTION_BAR, IDENTITY_RATIO_BAR = 0.85, 0.9, 0.9


def held_out_prompt(label: int, direction: str, index: int) -> str:
    """Prompt ``index`` (cycling over :data:`HELD_OUT_TEMPLATES`) for class ``label``."""
    singular, plural = SYNONYMS[label][0]
    with_article = (("an " if singular[0] in "aeiou" else "a ") + singular) if singular \
        else f"a pair of {plural}"
    return HELD_OUT_TEMPLATES[index % len(HELD_OUT_TEMPLATES)].format(a=with_article,
                                                                      d=direction)


# -- measuring clips -----------------------------------------------------------------------------
def centre_of_mass(clips: torch.Tensor) -> torch.Tensor:
    """Clips (k, t, h, w) with intensities >= 0 -> centres (k, t, 2) as (x, y) pixels; an
    empty frame gives the canvas centre."""
    k, t, h, w = clips.shape
    mass = clips.double().clamp_min(0)
    total = mass.sum(dim=(2, 3))  # (k, t)
    ys = torch.arange(h, dtype=torch.float64)
    xs = torch.arange(w, dtype=torch.float64)
    cx = (mass.sum(2) * xs).sum(-1) / total.clamp_min(1e-9)
    cy = (mass.sum(3) * ys).sum(-1) / total.clamp_min(1e-9)
    empty = total <= 1e-9
    cx[empty], cy[empty] = (w - 1) / 2, (h - 1) / 2
    return torch.stack([cx, cy], dim=-1).float()


def motion_direction(centres: torch.Tensor, *, min_travel: float = MIN_TRAVEL) -> list[str | None]:
    """Direction of travel of each clip from its centres (k, t, 2): ``"left"``, ``"right"``,
    ``"up"``, ``"down"`` (image y grows downwards), or ``None`` when the fitted travel over the
    clip is under ``min_travel`` pixels."""
    k, t, _ = centres.shape
    frames = torch.arange(t, dtype=torch.float64) - (t - 1) / 2
    c = centres.double() - centres.double().mean(1, keepdim=True)
    slope = (c * frames[None, :, None]).sum(1) / frames.square().sum().clamp_min(1e-9)  # (k, 2)
    travel = slope * (t - 1)
    out: list[str | None] = []
    for dx, dy in travel.tolist():
        if max(abs(dx), abs(dy)) < min_travel:
            out.append(None)
        elif abs(dx) >= abs(dy):
            out.append("right" if dx > 0 else "left")
        else:
            out.append("down" if dy > 0 else "up")
    return out


def crop_items(frames: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Frames (k, h, w) in [-1, 1] and centres (k, 2) -> the 28x28 box around each centre
    (clamped inside the frame), padded with black to (k, 1, 32, 32): the classifier's input."""
    k, h, w = frames.shape
    out = torch.full((k, 1, 32, 32), -1.0)
    side = min(SPRITE, h, w)
    pad = (32 - side) // 2
    for i in range(k):
        x0 = int(round(float(centres[i, 0]) - (side - 1) / 2))
        y0 = int(round(float(centres[i, 1]) - (side - 1) / 2))
        x0, y0 = min(max(x0, 0), w - side), min(max(y0, 0), h - side)
        out[i, 0, pad : pad + side, pad : pad + side] = frames[i, y0 : y0 + side, x0 : x0 + side]
    return out


def clip_figures(classifier, clips: torch.Tensor, labels: list[int],
                 directions: list[str]) -> dict[str, Any]:
    """Figures of clips (k, t, h, w) in [-1, 1] prompted (or labelled) with ``labels`` and
    ``directions``: per-class item accuracy, direction accuracy, identity stability, feature
    similarity."""
    k, t, h, w = clips.shape
    centres = centre_of_mass((clips + 1) / 2)  # (k, t, 2)
    crops = crop_items(clips.reshape(k * t, h, w), centres.reshape(k * t, 2))
    predicted, features = classify(classifier, crops)
    predicted, features = predicted.view(k, t), features.view(k, t, -1)
    target = torch.tensor(labels)[:, None]
    correct = (predicted == target).double()  # (k, t)
    per_class = {CLASS_NAMES[c]: float(correct[target[:, 0] == c].mean())
                 for c in sorted(set(labels))}
    moved = motion_direction(centres)
    direction_hits = [m == d for m, d in zip(moved, directions)]
    per_direction = {d: float(np.mean([hit for hit, dd in zip(direction_hits, directions)
                                       if dd == d]))
                     for d in DIRECTIONS if d in directions}
    majority = torch.mode(predicted, dim=1).values[:, None]
    stability = (predicted == majority).double().mean(1)  # (k,)
    similarity = F.cosine_similarity(features[:, 1:], features[:, :-1], dim=-1) if t > 1 \
        else torch.ones(k, 1)
    return {"item_accuracy": float(correct.mean()), "item_accuracy_per_class": per_class,
            "direction_accuracy": float(np.mean(direction_hits)),
            "direction_accuracy_per_direction": per_direction,
            "not_moving_rate": float(np.mean([m is None for m in moved])),
            "identity_stability": float(stability.mean()),
            "feature_similarity": float(similarity.mean())}


# -- generating ----------------------------------------------------------------------------------
def evaluation_prompts(per_class: int) -> list[tuple[int, str, str, int]]:
    """``[(label, direction, prompt, count)]``: ``per_class`` clips of every class spread over
    the four directions (``(label + j) % 4``), each direction with its own held-out prompt."""
    out = []
    for label in range(len(CLASS_NAMES)):
        counts: dict[str, int] = {}
        for j in range(per_class):
            direction = DIRECTIONS[(label + j) % len(DIRECTIONS)]
            counts[direction] = counts.get(direction, 0) + 1
        for j, (direction, count) in enumerate(counts.items()):
            out.append((label, direction, held_out_prompt(label, direction, label + j), count))
    return out


def generate_video_clips(pipe, prompts, *, seed: int, num_frames: int | None = None,
                         **call_kwargs) -> torch.Tensor:
    """Clips (k, t, h, w) in [-1, 1] of a text-to-video pipeline for ``prompts`` (see
    :func:`evaluation_prompts`)."""
    generator = torch.Generator().manual_seed(seed)
    clips = []
    for _, _, prompt, count in prompts:
        out = pipe(prompt, num_samples=count, num_frames=num_frames, generator=generator,
                   progress=False, **call_kwargs)
        clips += [torch.from_numpy(v).float() / 127.5 - 1.0 for v in out.videos]
    return torch.stack(clips)


def generate_frame_by_frame(image_pipe, prompts, *, seed: int, num_frames: int,
                            canvas_size: int, **call_kwargs) -> torch.Tensor:
    """The baseline: every frame an independent text-to-image sample of the same caption,
    centred on a black ``canvas_size`` canvas; clips (k, t, h, w) in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    clips = []
    for _, _, prompt, count in prompts:
        for _ in range(count):
            out = image_pipe(prompt, num_samples=num_frames, generator=generator,
                             progress=False, **call_kwargs)
            frames = torch.from_numpy(np.stack(out.images)).float() / 127.5 - 1.0  # (t, s, s)
            side = frames.shape[-1]
            if side > canvas_size:
                raise ValueError(f"the image model's {side}px images do not fit the video's "
                                 f"{canvas_size}px frames")
            canvas = torch.full((num_frames, canvas_size, canvas_size), -1.0)
            top = (canvas_size - side) // 2
            canvas[:, top : top + side, top : top + side] = frames
            clips.append(canvas)
    return torch.stack(clips)


def evaluate_text_to_video(*, checkpoint=None, num_samples: int = 32, seed: int = 0,
                           num_inference_steps: int = 25, guidance_scale: float = 4.0,
                           scheduler: str | None = None, num_frames: int | None = None,
                           baseline_checkpoint=None, baseline: bool = True,
                           root: str = FASHION_MNIST_DIR, progress: bool = True,
                           device: str = "cpu",
                           classifier_settings: dict | None = None) -> dict[str, Any]:
    """Evaluate a text-to-video checkpoint; see the module docstring.

    Args:
        checkpoint: Checkpoint or run directory (default: the embedded one).
        num_samples: Clips generated PER CLASS, spread over the four directions (>= 1).
        seed: Seed of the clips.
        num_inference_steps, guidance_scale, scheduler: Sampling settings (both models).
        num_frames: Frames per clip (default: the video model's training length).
        baseline_checkpoint: The text-to-image checkpoint of the frame-by-frame baseline
            (default: the embedded text-to-image model).
        baseline: Also evaluate the frame-by-frame baseline (default ``True``).
        root: Fashion-MNIST directory.
        progress: Show a bar while the classifier trains.
        device: Where the pipelines run.
        classifier_settings: Overrides of the classifier's settings (for quick tests).

    Returns:
        The report (JSON-serialisable).

    Raises:
        InputError: ``num_samples`` below 1, or a model that does not make grayscale frames.
        CheckpointError: a checkpoint is missing or lacks the needed decoder.
        DataError: Fashion-MNIST is not installed.
    """
    if num_samples < 1:
        raise InputError(f"num_samples (clips per class) must be >= 1, got {num_samples}")
    pipe = load_pipeline("text-to-video", checkpoint, device=device)
    if pipe.vae.in_channels != 1:
        raise InputError("this evaluation is for grayscale Moving Fashion-MNIST models; the "
                         f"checkpoint makes {pipe.vae.in_channels}-channel frames")
    frames = num_frames or pipe.denoiser.num_frames
    canvas = pipe.vae.image_size
    classifier = load_classifier(root=root, progress=progress, settings=classifier_settings)
    prompts = evaluation_prompts(num_samples)
    labels = [label for label, _, _, count in prompts for _ in range(count)]
    directions = [d for _, d, _, count in prompts for _ in range(count)]
    sampling = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                    scheduler=scheduler)

    real_set = MovingFashionMNISTDataset(split="val", root=root, num_frames=max(frames, 8),
                                         canvas_size=canvas, val_clips=max(len(labels), 200))
    real_clips = real_set.get_videos()[:, :frames, 0]  # (k, t, h, w)
    real = clip_figures(classifier, real_clips, real_set.labels, real_set.directions)

    video_clips = generate_video_clips(pipe, prompts, seed=seed, num_frames=frames, **sampling)
    video = clip_figures(classifier, video_clips[:, :, :, :], labels, directions)
    _add_ratios(video, real)
    report: dict[str, Any] = {
        "task": "text-to-video", "checkpoint_id": pipe.checkpoint_id,
        "clips_per_class": num_samples, "num_frames": frames, "canvas_size": canvas,
        "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
        "scheduler": scheduler or "dpm_solver_multistep",
        "prompts_example": [p for _, _, p, _ in prompts[:: max(1, len(prompts) // 8)]],
        "video": video, "real": real,
    }
    if baseline:
        image_pipe = load_pipeline("text-to-image", baseline_checkpoint, device=device)
        base_clips = generate_frame_by_frame(image_pipe, prompts, seed=seed, num_frames=frames,
                                             canvas_size=canvas, **sampling)
        base = clip_figures(classifier, base_clips, labels, directions)
        _add_ratios(base, real)
        report["frame_by_frame_image_baseline"] = {"checkpoint_id": image_pipe.checkpoint_id,
                                                   **base}
        report["direction_margin_points"] = 100 * (video["direction_accuracy"]
                                                   - base["direction_accuracy"])
    report["quality_bar"] = {
        "item_ratio_at_least_0.85": video["item_ratio"] >= ITEM_RATIO_BAR,
        "direction_accuracy_at_least_0.9": video["direction_accuracy"] >= DIRECTION_BAR,
        "identity_stability_at_least_0.9_of_real": video["identity_ratio"] >= IDENTITY_RATIO_BAR,
    }
    report["quality_bar_met"] = all(report["quality_bar"].values())
    return report


def _add_ratios(figures: dict, real: dict) -> None:
    """Add ``item_ratio`` (overall and per class) and ``identity_ratio`` against ``real``."""
    figures["item_ratio"] = figures["item_accuracy"] / real["item_accuracy"] \
        if real["item_accuracy"] else 0.0
    figures["item_ratio_per_class"] = {
        name: (acc / real["item_accuracy_per_class"][name]
               if real["item_accuracy_per_class"].get(name) else 0.0)
        for name, acc in figures["item_accuracy_per_class"].items()}
    figures["identity_ratio"] = figures["identity_stability"] / real["identity_stability"] \
        if real["identity_stability"] else 0.0
