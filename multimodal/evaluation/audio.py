"""``multimodal evaluate text-to-audio``: is the speech intelligible, and how close is it to
espeak-ng's own rendering?

Two figures, for each vocoder and for Griffin-Lim side by side, from the SAME predicted mel:

* **Word accuracy** of our own word recogniser: a small CNN over log-mel frames, trained once
  (cached in ``$MULTIMODAL_CACHE``) on espeak-ng renderings of a closed vocabulary of
  :data:`RECOGNISER_WORDS` in voices and speeds the text-to-audio model never trained on
  (:data:`RECOGNISER_VOICES`). The vocabulary holds the digits, the Fashion-MNIST item names,
  words the model was trained on as single words ("seen") and dictionary words of the fortunes
  corpus beyond its training vocabulary ("unseen"). The recogniser's accuracy on real espeak
  renderings in the model's voice is reported as the reference.
* **Mel-cepstral distortion** (MCD, Kubichek 1993) in dB between the generated audio and
  espeak-ng's rendering of the same text in the same voice: 13 mel-cepstral coefficients
  (DCT-II of the 80-bin log-mel of the peak-normalised audio, floored 60 dB below its loudest
  bin, c0 left out), frames aligned by dynamic time warping,
  ``10 / ln 10 * sqrt(2 * sum_d (c_d - c'_d)^2)`` averaged over the path. The vocoders are also
  scored on copy synthesis (espeak's own mel in, audio out), which isolates the vocoder.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from multimodal.data.audio import SAMPLE_RATE, common_words, fortune_sentences, speak
from multimodal.errors import InputError
from multimodal.io import atomic_write_bytes, cache_root
from multimodal.modalities.audio.features import LogMel
from multimodal.nn.dsp import create_dct
from multimodal.pipelines import load_pipeline

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ITEMS = ("t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
         "ankle boot")
# Voices the text-to-audio configs never train on (variants of espeak-ng's English voices).
RECOGNISER_VOICES = ("en-us+m1", "en-us+m2", "en-us+f1", "en-us+f2", "en-gb+m4", "en-gb+f4",
                     "en-gb-x-rp+m5", "en-029+m6", "en-gb-scotland+f5", "en-us+klatt")
SPEEDS = (145, 175, 205)  # words per minute
RECOGNISER_SETTINGS = {"seen_words": 40, "unseen_words": 40, "seen_rank": (30, 3000),
                       "unseen_rank": (3000, 6000), "width": 32, "epochs": 20,
                       "batch_size": 64, "lr": 2e-3, "seed": 0,
                       "voices": RECOGNISER_VOICES, "speeds": SPEEDS}
MFCC_COEFFICIENTS = 13
DYNAMIC_RANGE_DB = 60.0  # log-mel floor below the loudest bin, for the cepstral distortion
EVAL_SENTENCES = 4


def recogniser_words(settings: dict | None = None) -> dict[str, list[str]]:
    """The closed vocabulary, by group: ``digits``, ``items``, ``seen``, ``unseen``."""
    settings = dict(RECOGNISER_SETTINGS, **(settings or {}))
    ranked = common_words(fortune_sentences("/usr/share/games/fortunes"), 6000)
    rng = random.Random(settings["seed"])
    lo, hi = settings["seen_rank"]
    taken = set(DIGITS) | set(ITEMS)
    seen = [w for w in ranked[lo:hi] if w not in taken and len(w) >= 3]
    lo, hi = settings["unseen_rank"]
    unseen = [w for w in ranked[lo:hi] if w not in taken and len(w) >= 3]
    return {"digits": list(DIGITS), "items": list(ITEMS),
            "seen": sorted(rng.sample(seen, min(settings["seen_words"], len(seen)))),
            "unseen": sorted(rng.sample(unseen, min(settings["unseen_words"], len(unseen))))}


class WordRecogniser(nn.Module):
    """Log-mel (b, 80, f), any f -> logits over the vocabulary: four conv blocks (3x3 conv,
    batch norm, ReLU, 2x2 max-pool) on the (mel, time) plane, mean + max pooling over time."""

    def __init__(self, *, num_words: int, width: int = 64):
        super().__init__()
        layers, channels = [], 1
        for out in (width // 2, width, width, 2 * width):
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(),
                       nn.MaxPool2d(2)]
            channels = out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(2 * channels * 5, num_words)

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        x = log_mel - log_mel.mean(dim=(1, 2), keepdim=True)  # loudness-invariant
        x = x / x.std(dim=(1, 2), keepdim=True).clamp(min=1e-3)
        h = self.body(x[:, None])  # (b, c, 5, f / 16)
        h = torch.cat([h.mean(-1), h.amax(-1)], 1).flatten(1)
        return self.head(h)


@lru_cache(maxsize=1)
def _features():
    return LogMel()


def _log_mel(wave: np.ndarray | torch.Tensor, frames: int | None = None) -> torch.Tensor:
    """(80, f) natural-log mel of a 16 kHz waveform; padded with silence or cut to ``frames``."""
    mel = _features()(torch.as_tensor(wave, dtype=torch.float32))[0]
    if frames is not None:
        mel = F.pad(mel, (0, max(0, frames - mel.shape[-1])), value=math.log(1e-5))[:, :frames]
    return mel


RECOGNISER_FRAMES = 96  # 1.5 s: every single word of the vocabulary fits


def load_recogniser(*, progress: bool = True, settings: dict | None = None
                    ) -> tuple[WordRecogniser, list[str], dict[str, list[str]]]:
    """The word recogniser, read from the cache or trained on espeak-ng renderings of the
    vocabulary in :data:`RECOGNISER_VOICES` at :data:`SPEEDS` (about a minute on CPU).

    Returns:
        ``(model, vocabulary, groups)``.

    Raises:
        DataError: espeak-ng or the fortunes corpus is missing.
    """
    from safetensors.torch import load_file, save


    settings = dict(RECOGNISER_SETTINGS, **(settings or {}))
    groups = recogniser_words(settings)
    vocabulary = [w for g in groups.values() for w in g]
    key = hashlib.sha256(json.dumps([settings, vocabulary], sort_keys=True).encode()
                         ).hexdigest()[:16]
    path = cache_root() / f"word_recogniser-{key}.safetensors"
    model = WordRecogniser(num_words=len(vocabulary), width=settings["width"])
    if path.is_file():
        try:
            model.load_state_dict(load_file(str(path)))
            return model.eval(), vocabulary, groups
        except Exception:  # a corrupt cache entry is rebuilt
            pass
    _train_recogniser(model, vocabulary, settings, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save({k: v.contiguous() for k, v in model.state_dict().items()}))
    return model.eval(), vocabulary, groups


def _render_words(words: list[str], voices, speeds) -> tuple[torch.Tensor, torch.Tensor]:
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(i, w, v, s) for i, w in enumerate(words) for v in voices for s in speeds]
    with ThreadPoolExecutor(max_workers=2) as pool:
        waves = list(pool.map(lambda job: speak(job[1], job[2], speed=job[3])[0], jobs))
    mels = torch.stack([_log_mel(w, RECOGNISER_FRAMES) for w in waves])
    return mels, torch.tensor([j[0] for j in jobs])


def _train_recogniser(model: WordRecogniser, vocabulary: list[str], settings: dict,
                      progress: bool) -> None:
    from tqdm.auto import tqdm

    mels, labels = _render_words(vocabulary, settings["voices"], settings["speeds"])
    generator = torch.Generator().manual_seed(settings["seed"])
    torch.manual_seed(settings["seed"])
    batch = settings["batch_size"]
    steps_per_epoch = max(1, len(labels) // batch)
    total = settings["epochs"] * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings["lr"], total_steps=total)
    model.train()
    bar = tqdm(total=total, desc="train word recogniser", disable=not progress, leave=False)
    for _ in range(settings["epochs"]):
        order = torch.randperm(len(labels), generator=generator)
        for s in range(steps_per_epoch):
            index = order[s * batch:(s + 1) * batch]
            x = mels[index]
            # robustness: a random shift in time, a random tilt of the spectrum, noise
            shift = int(torch.randint(-8, 9, (1,), generator=generator))
            x = torch.roll(x, shift, dims=-1)
            tilt = torch.linspace(-1, 1, x.shape[1])[None, :, None] * \
                torch.randn((len(index), 1, 1), generator=generator) * 0.5
            x = x + tilt + 0.3 * torch.randn(x.shape, generator=generator)
            loss = F.cross_entropy(model(x), labels[index], label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            bar.update(1)
    bar.close()
    model.eval()


@torch.no_grad()
def recognise(model: WordRecogniser, waves: list[np.ndarray]) -> list[int]:
    """Index of the most likely vocabulary word for each waveform (16 kHz)."""
    mels = torch.stack([_log_mel(w, RECOGNISER_FRAMES) for w in waves])
    return model(mels).argmax(-1).tolist()


def mel_cepstrum(wave: np.ndarray) -> np.ndarray:
    """(frames, 13) mel-cepstral coefficients c1..c13 of a 16 kHz waveform: DCT-II (orthonormal)
    of the 80-bin natural-log mel of the peak-normalised waveform, floored at
    :data:`DYNAMIC_RANGE_DB` below its loudest bin (so digital silence and a vocoder's faint
    noise floor count the same), frames more than that below the loudest frame removed."""
    wave = np.asarray(wave, dtype=np.float32)
    wave = wave / max(float(np.abs(wave).max()), 1e-9)
    mel = _log_mel(wave)  # (80, f)
    floor = float(mel.max()) - DYNAMIC_RANGE_DB / 20 * math.log(10)
    mel = mel.clamp(min=floor)
    dct = create_dct(MFCC_COEFFICIENTS + 1, mel.shape[0], norm="ortho")
    cep = (mel.T @ dct)[:, 1:]  # (f, 13), c0 (energy) left out
    keep = mel.max(0).values > floor + 1e-3  # frames with anything above the floor
    return cep[keep].numpy().astype(np.float64)


def dtw_path_cost(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-frame Euclidean distance along the dynamic-time-warping path of ``a`` (n, d)
    and ``b`` (m, d) (steps: right, down, diagonal)."""
    cost = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))  # (n, m)
    n, m = cost.shape
    total = np.full((n + 1, m + 1), np.inf)
    length = np.zeros((n + 1, m + 1))
    total[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            options = ((total[i - 1, j - 1], length[i - 1, j - 1]), (total[i - 1, j],
                       length[i - 1, j]), (total[i, j - 1], length[i, j - 1]))
            best, steps = min(options, key=lambda o: o[0])
            total[i, j] = cost[i - 1, j - 1] + best
            length[i, j] = steps + 1
    return float(total[n, m] / length[n, m])


def mel_cepstral_distortion(reference: np.ndarray, generated: np.ndarray) -> float:
    """MCD in dB between two 16 kHz waveforms (DTW-aligned; see the module docstring)."""
    a, b = mel_cepstrum(reference), mel_cepstrum(generated)
    if len(a) == 0 or len(b) == 0:
        return float("inf")
    return 10.0 / math.log(10.0) * math.sqrt(2.0) * dtw_path_cost(a, b)


def evaluate_text_to_audio(*, checkpoint=None, num_samples: int = 32, seed: int = 0,
                           voice: str | None = None, vocoders: tuple[str, ...] | None = None,
                           autoregressive_samples: int = 8, progress: bool = True,
                           device: str = "cpu", recogniser_settings: dict | None = None
                           ) -> dict[str, Any]:
    """Evaluate a text-to-audio checkpoint; see the module docstring.

    Args:
        checkpoint: Checkpoint or run directory (default: the embedded one).
        num_samples: Words spoken per vocoder, drawn evenly from the vocabulary's groups.
        seed: Seed of the vocoders' noise and of the choice of words.
        voice: The model's voice to evaluate (default: its first).
        vocoders: Which to compare (default: every configured one and ``griffin-lim``).
        autoregressive_samples: At most this many words for the (slow) autoregressive vocoder.
        progress: Show a bar while the recogniser trains.
        device: Where the pipeline runs (``"cpu"``, ``"cuda"``, ``"mps"``).
        recogniser_settings: Overrides of :data:`RECOGNISER_SETTINGS` (for quick tests).

    Returns:
        The report (JSON-serialisable).

    Raises:
        InputError: ``num_samples`` below 4, or an unknown voice or vocoder.
        CheckpointError: the checkpoint is missing or has no audio decoder.
        DataError: espeak-ng or the fortunes corpus is missing.
    """
    if num_samples < 4:
        raise InputError(f"num_samples must be >= 4 (one word per group), got {num_samples}")
    pipe = load_pipeline("text-to-audio", checkpoint, device=device)
    voice = voice or pipe.voices[0]
    pipe.phonemes.voice_id(voice)
    names = list(vocoders or pipe.audio.available_vocoders)
    for name in names:
        if name not in pipe.audio.available_vocoders:
            raise InputError(f"unknown vocoder {name!r}; this model has: "
                             f"{', '.join(pipe.audio.available_vocoders)}")
    model, vocabulary, groups = load_recogniser(progress=progress, settings=recogniser_settings)
    rng = random.Random(seed)
    per_group = max(1, num_samples // len(groups))
    chosen = [(g, w) for g, words in groups.items()
              for w in rng.sample(words, min(per_group, len(words)))]
    sentences = []
    for sentence in rng.sample(fortune_sentences("/usr/share/games/fortunes"), 50):
        if len(sentences) < EVAL_SENTENCES and len(sentence.split()) <= 10 and \
                len(pipe.phonemes.encode(sentence, voice)) <= pipe.max_phonemes:
            sentences.append(sentence)

    references = {text: speak(text, voice)[0] for text in [w for _, w in chosen] + sentences}
    real_pred = recognise(model, [references[w] for _, w in chosen])
    report: dict[str, Any] = {
        "task": "text-to-audio", "checkpoint_id": pipe.checkpoint_id, "voice": voice,
        "words": [w for _, w in chosen], "sentences": sentences,
        "recogniser_vocabulary": len(vocabulary),
        "recogniser_voices": list(dict(RECOGNISER_SETTINGS, **(recogniser_settings or {}))
                                  ["voices"]),
        "real_espeak": _accuracy(chosen, real_pred, vocabulary),
        "vocoders": {},
    }
    for name in names:
        limit = autoregressive_samples if name == "autoregressive" else len(chosen)
        subset = chosen[:: max(1, math.ceil(len(chosen) / limit))]
        texts = [w for _, w in subset] + (sentences if name != "autoregressive" else [])
        start = time.perf_counter()
        audio_seconds, waves = 0.0, {}
        for i, text in enumerate(texts):
            out = pipe(text, voice=voice, vocoder=name, seed=seed + i, progress=False)
            waves[text] = out.audios[0]
            audio_seconds += len(out.audios[0]) / SAMPLE_RATE
        compute = time.perf_counter() - start
        pred = recognise(model, [waves[w] for _, w in subset])
        copy = [_copy_synthesis(pipe, references[t], name, seed) for t in texts[:8]]
        report["vocoders"][name] = {
            **_accuracy(subset, pred, vocabulary),
            "mcd_db": float(np.mean([mel_cepstral_distortion(references[t], waves[t])
                                     for t in texts])),
            "mcd_copy_synthesis_db": float(np.mean([mel_cepstral_distortion(references[t], c)
                                                    for t, c in zip(texts, copy)])),
            "real_time_factor": compute / max(audio_seconds, 1e-9),
            "samples": len(texts),
        }
    default = pipe.audio.default_vocoder
    if default in report["vocoders"] and "griffin-lim" in report["vocoders"]:
        report["default_vocoder"] = default
        report["default_beats_griffin_lim_mcd"] = (
            report["vocoders"][default]["mcd_db"] < report["vocoders"]["griffin-lim"]["mcd_db"])
        report["quality_bar_met"] = (report["vocoders"][default]["word_accuracy"] >= 0.8
                                     and report["default_beats_griffin_lim_mcd"])
    return report


def _copy_synthesis(pipe, reference: np.ndarray, vocoder: str, seed: int) -> np.ndarray:
    """Vocode espeak's own mel (the vocoder alone, no acoustic model)."""
    mel = pipe.audio.encode(torch.as_tensor(reference))
    wave = pipe.audio.decode(mel, vocoder=vocoder, generator=torch.Generator().manual_seed(seed))
    return wave[0].numpy()


def _accuracy(chosen: list[tuple[str, str]], predicted: list[int], vocabulary: list[str]
              ) -> dict[str, Any]:
    hits: dict[str, list[bool]] = {}
    for (group, word), p in zip(chosen, predicted):
        hits.setdefault(group, []).append(vocabulary[p] == word)
    every = [h for g in hits.values() for h in g]
    return {"word_accuracy": float(np.mean(every)) if every else 0.0,
            "by_group": {g: float(np.mean(h)) for g, h in hits.items()}}
