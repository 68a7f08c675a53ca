"""The audio tokenizer: waveforms <-> normalised log-mel frames, and back to waveforms through a
vocoder.

``encode`` computes the log-mel of :mod:`~multimodal.modalities.audio.features` and normalises
each bin with the mean and standard deviation measured on the training audio (saved in the
checkpoint). ``decode`` turns normalised frames back into 16 kHz audio with one of:

* ``"parallel"``: a Parallel WaveGAN generator (one forward pass over noise);
* ``"autoregressive"``: a WaveNet with cached (Fast WaveNet) sample-by-sample generation;
* ``"griffin-lim"``: the un-learned baseline (inverse mel filter bank + Griffin-Lim).

Like the image VAE, the tokenizer is fitted before the backbone trains (``fit_on = "audio"``):
first the statistics, then each configured vocoder on random aligned segments of the training
audio (see :func:`multimodal.modalities.audio.wavenet.train_vocoder`).

Axes: b batch, t samples, m mel bins, f frames.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Literal

import torch

from multimodal.checkpoint import load_weights
from multimodal.errors import CheckpointError, ConfigError, DataError, InputError
from multimodal.registry import tokenizers

VOCODERS = ("parallel", "autoregressive", "griffin-lim")
META_FILE = "mel.json"
FORMAT = "multimodal-log-mel/1"
STATS_ITEMS = 2000  # utterances the normalisation statistics are measured on
_TRAINING_KEYS = ("steps", "batch_size", "segment_frames", "lr", "warmup_steps", "lambda_adv",
                  "adversarial_start")


def _split_vocoder_config(name: str, section: dict | None) -> tuple[dict, dict]:
    """``{"steps": .., "batch_size": .., ..., <model args>}`` -> (model args, training args)."""
    section = dict(section or {})
    training = {k: section.pop(k) for k in _TRAINING_KEYS if k in section}
    return section, training


@tokenizers.register("log_mel")
class LogMelTokenizer:
    """16 kHz audio <-> per-bin normalised log-mel frames (b, m, f), with vocoders.

    Args:
        n_fft: FFT size and window in samples (default 1024).
        hop_length: Samples per frame (default 256: 62.5 frames per second).
        n_mels: Mel bins ``m`` (default 80).
        f_min, f_max: Filter bank range in Hz (default 0 and 8,000).
        parallel: The Parallel WaveGAN vocoder: constructor arguments of
            :class:`~multimodal.modalities.audio.wavenet.ParallelWaveGANGenerator` plus its
            training settings ``steps``, ``batch_size``, ``segment_frames``, ``lr``,
            ``lambda_adv``, ``adversarial_start``; ``None`` leaves it out.
        autoregressive: The same for
            :class:`~multimodal.modalities.audio.wavenet.WaveNetVocoder`; ``None`` leaves it
            out.
        default_vocoder: What :meth:`decode` uses unless told (default ``"parallel"``).
        num_threads: CPU threads while fitting (default: torch's setting).

    Raises:
        ConfigError: an unknown vocoder argument, or a default vocoder that is not configured.
    """

    fit_on = "audio"

    def __init__(self, *, n_fft: int = 1024, hop_length: int = 256, n_mels: int = 80,
                 f_min: float = 0.0, f_max: float = 8000.0, parallel: dict | None = None,
                 autoregressive: dict | None = None,
                 default_vocoder: Literal["parallel", "autoregressive", "griffin-lim"] = "parallel",
                 num_threads: int | None = None):
        from multimodal.modalities.audio.features import LogMel
        from multimodal.modalities.audio.wavenet import ParallelWaveGANGenerator, WaveNetVocoder

        self.features = LogMel(n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, f_min=f_min,
                               f_max=f_max)
        self.n_mels, self.hop_length = n_mels, hop_length
        self.sample_rate = self.features.sample_rate
        self.num_threads = num_threads
        self.mean = torch.zeros(n_mels)
        self.std = torch.ones(n_mels)
        self.vocoders: dict[str, torch.nn.Module] = {}
        self.training: dict[str, dict] = {}
        self.vocoder_args: dict[str, dict] = {}  # every constructor argument, defaults included
        for name, cls, section in (("parallel", ParallelWaveGANGenerator, parallel),
                                   ("autoregressive", WaveNetVocoder, autoregressive)):
            if section is None:
                continue
            model_args, self.training[name] = _split_vocoder_config(name, section)
            try:
                self.vocoders[name] = cls(mel_channels=n_mels, hop_length=hop_length,
                                          **model_args).eval()
            except TypeError as exc:
                raise ConfigError(f"tokenizers.audio.{name}: {exc}; accepted: the arguments of "
                                  f"{cls.__name__} and {', '.join(_TRAINING_KEYS)}") from None
            defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()
                        if p.default is not inspect.Parameter.empty}
            self.vocoder_args[name] = {**defaults, **model_args, "mel_channels": n_mels,
                                       "hop_length": hop_length}
        if default_vocoder != "griffin-lim" and default_vocoder not in self.vocoders:
            raise ConfigError(f"tokenizers.audio.default_vocoder is {default_vocoder!r} but "
                              f"that vocoder is not configured; configured: "
                              f"{', '.join(self.vocoders) or 'none'} (or 'griffin-lim')")
        self.default_vocoder = default_vocoder
        self._trained = False

    # -- Tokenizer protocol ---------------------------------------------------------------------
    @property
    def is_trained(self) -> bool:
        return self._trained

    @property
    def available_vocoders(self) -> list[str]:
        """The configured vocoders, then ``"griffin-lim"``."""
        return list(self.vocoders) + ["griffin-lim"]

    def to(self, device: Any) -> "LogMelTokenizer":
        for vocoder in self.vocoders.values():
            vocoder.to(device)
        return self

    @torch.no_grad()
    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """(b, t) or (t,) float waveform at 16 kHz in [-1, 1] -> normalised log-mel
        (b, m, t // hop_length + 1)."""
        mel = self.features(wave.float().cpu())
        return (mel - self.mean[:, None]) / self.std[:, None]

    @torch.no_grad()
    def encode_many(self, waves: list[torch.Tensor], *, normalise: bool = True
                    ) -> list[torch.Tensor]:
        """One (m, t // hop_length + 1) log-mel per clip (normalised unless told), in order.
        (Batching clips of similar length was measured no faster on CPU.)"""
        mels = [self.features(w.float().cpu())[0] for w in waves]
        if normalise:
            mels = [(m - self.mean[:, None]) / self.std[:, None] for m in mels]
        return mels

    def denormalise(self, mel: torch.Tensor) -> torch.Tensor:
        """Normalised frames -> natural-log mel magnitudes."""
        return mel * self.std[:, None].to(mel) + self.mean[:, None].to(mel)

    @torch.no_grad()
    def decode(self, mel: torch.Tensor, *, vocoder: str | None = None,
               generator: torch.Generator | None = None, progress: bool = False
               ) -> torch.Tensor:
        """Normalised log-mel (b, m, f) -> waveform (b, f * hop_length) at 16 kHz.

        Args:
            vocoder: ``"parallel"``, ``"autoregressive"`` or ``"griffin-lim"`` (default
                ``default_vocoder``).
            generator: Source of the vocoder's noise (parallel) or sampling (autoregressive).
            progress: Show a progress bar (autoregressive generation is sample by sample).

        Raises:
            InputError: an unknown or unconfigured vocoder, or a mel of the wrong shape.
        """
        name = vocoder or self.default_vocoder
        if name not in self.available_vocoders:
            raise InputError(f"unknown vocoder {name!r}; this model has: "
                             f"{', '.join(self.available_vocoders)}")
        if mel.dim() != 3 or mel.shape[1] != self.n_mels:
            raise InputError(f"mel must be (batch, {self.n_mels}, frames), got "
                             f"{tuple(mel.shape)}")
        if name == "griffin-lim":
            seed = 0 if generator is None else int(torch.randint(0, 2**31 - 1, (1,),
                                                                 generator=generator))
            wave = self.features.griffin_lim(self.denormalise(mel.float().cpu()),
                                             generator_seed=seed)
            return torch.nn.functional.pad(wave, (0, mel.shape[-1] * self.hop_length
                                                  - wave.shape[-1]))
        model = self.vocoders[name]
        mel = mel.to(next(model.parameters()).device, torch.float32)
        if name == "autoregressive":
            return model.generate(mel, generator=generator, progress=progress).float().cpu()
        return model(mel, generator=generator).float().cpu()

    def fit(self, data: Any, *, seed: int = 0, device: Any = "cpu",
            progress: bool = True) -> "LogMelTokenizer":
        """Measure the normalisation statistics on ``data`` (items with ``"audio"``), then
        train each configured vocoder on random aligned segments of it.

        Raises:
            DataError: the dataset is empty or has no clip as long as a training segment.
        """
        from multimodal.modalities.audio.wavenet import train_vocoder

        if len(data) == 0:
            raise DataError("the audio dataset is empty: nothing to fit the audio tokenizer on")
        previous = torch.get_num_threads()
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        try:
            waves = [data[i]["audio"].float() for i in range(len(data))]
            raw = self.encode_many(waves, normalise=False)
            every = torch.cat(raw[:: max(1, len(raw) // STATS_ITEMS)], dim=-1)  # (m, frames)
            self.mean, self.std = every.mean(-1), every.std(-1).clamp(min=1e-3)
            mels = [(m - self.mean[:, None]) / self.std[:, None] for m in raw]
            for name, vocoder in self.vocoders.items():
                settings = dict(self.training[name])
                segment_frames = int(settings.pop("segment_frames", 32))
                batch_size = int(settings.pop("batch_size", 8))
                sampler = SegmentSampler(waves, mels, hop_length=self.hop_length,
                                         segment_frames=segment_frames, batch_size=batch_size)
                vocoder.to(device).train()
                train_vocoder(vocoder, sampler, seed=seed, progress=progress, **settings)
                vocoder.eval()
        finally:
            torch.set_num_threads(previous)
        self._trained = True
        return self

    # -- checkpoints -----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        for name, vocoder in self.vocoders.items():
            save_file({k: v.detach().contiguous().cpu() for k, v in
                       vocoder.state_dict().items()}, str(directory / f"{name}.safetensors"))
        meta = {"format": FORMAT, "mean": self.mean.tolist(), "std": self.std.tolist(),
                "trained": self._trained, "vocoder_args": self.vocoder_args}
        (directory / META_FILE).write_text(json.dumps(meta), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path, **config: Any) -> "LogMelTokenizer":
        """Rebuild from a checkpoint's ``tokenizers/<name>/``.

        Raises:
            CheckpointError: a missing or unreadable file, or weights of another shape.
        """
        directory = Path(directory)
        try:
            meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read the audio tokenizer in {directory}: {exc}") \
                from None
        # the vocoders exactly as they were built, whatever the code's defaults are now
        for name, args in (meta.get("vocoder_args") or {}).items():
            if config.get(name) is not None:
                args = {k: v for k, v in args.items() if k not in ("mel_channels", "hop_length")}
                config = {**config, name: {**args, **_split_vocoder_config(name, config[name])[1]}}
        tok = cls(**config)
        try:
            tok.mean = torch.tensor(meta["mean"], dtype=torch.float32)
            tok.std = torch.tensor(meta["std"], dtype=torch.float32)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"cannot read the audio tokenizer in {directory}: {exc}") \
                from None
        if tok.mean.shape != (tok.n_mels,) or tok.std.shape != (tok.n_mels,):
            raise CheckpointError(f"{directory / META_FILE}: statistics for "
                                  f"{tok.mean.shape[0]} mel bins, config has {tok.n_mels}")
        for name, vocoder in tok.vocoders.items():
            load_weights(vocoder, directory / f"{name}.safetensors")
        tok._trained = bool(meta.get("trained", True))
        return tok


class SegmentSampler:
    """Draws batches of aligned (audio, mel) segments for vocoder training.

    A segment is ``segment_frames`` mel frames of one clip and the ``segment_frames *
    hop_length`` samples they cover (frame ``i`` is centred on sample ``i * hop``). Clips
    shorter than a segment are zero-padded (audio with zeros, mel with its last frame).

    Args:
        waves: (t,) float clips.
        mels: Their (m, t // hop_length + 1) normalised log-mels.
    """

    def __init__(self, waves: list[torch.Tensor], mels: list[torch.Tensor], *,
                 hop_length: int, segment_frames: int, batch_size: int):
        if not waves:
            raise DataError("no audio to train the vocoder on")
        hop = hop_length
        self.hop, self.segment_frames, self.batch_size = hop, segment_frames, batch_size
        self.waves, self.mels = [], []
        for wave, mel in zip(waves, mels):
            frames = max(segment_frames, wave.shape[-1] // hop)
            self.waves.append(torch.nn.functional.pad(wave, (0, frames * hop - wave.shape[-1])))
            mel = torch.nn.functional.pad(mel, (0, max(0, frames - mel.shape[-1])),
                                          mode="replicate")
            self.mels.append(mel[:, :frames])

    def __call__(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(audio (b, segment_frames * hop), mel (b, m, segment_frames))``."""
        clips = torch.randint(0, len(self.waves), (self.batch_size,), generator=generator)
        audio, mel = [], []
        for c in clips.tolist():
            frames = self.mels[c].shape[-1]
            start = int(torch.randint(0, frames - self.segment_frames + 1, (1,),
                                      generator=generator))
            mel.append(self.mels[c][:, start:start + self.segment_frames])
            audio.append(self.waves[c][start * self.hop:(start + self.segment_frames) * self.hop])
        return torch.stack(audio), torch.stack(mel)
