"""The audio tokenizer: waveforms <-> normalised log-mel frames, and back to waveforms through a
vocoder.

``encode`` computes the log-mel of :mod:`~multimodal.modalities.audio.features` and normalises
each bin with the mean and standard deviation measured on the training audio (saved in the
checkpoint). ``decode`` turns normalised frames back into 16 kHz audio with one of its
vocoders, by name:

* ``"parallel"``: a Parallel WaveGAN generator (one forward pass over noise);
* ``"autoregressive"``: a WaveNet with cached (Fast WaveNet) sample-by-sample generation;
* ``"griffin-lim"``: the un-learned baseline (inverse mel filter bank + Griffin-Lim).

``decode_stream`` gives the same waveform in pieces as the vocoder makes them, for streaming:
``autoregressive`` exactly ``decode``'s samples, ``parallel`` up to float rounding, and
``griffin-lim`` an approximation (windowed Griffin-Lim:
:meth:`~multimodal.modalities.audio.features.LogMel.griffin_lim_stream`).

The learned ones are registered ``vocoders`` components, built by the config builder from
their own sections; how each is fitted sits beside them::

    tokenizers:
      audio:
        type: log_mel
        vocoders:
          parallel: {type: parallel_wavegan, residual_channels: 64}
          autoregressive: {type: wavenet}
        vocoder_fit:
          parallel: {steps: 2000, batch_size: 8, segment_frames: 32, lr: 3.0e-3}
          autoregressive: {steps: 1000, batch_size: 4, segment_frames: 16, lr: 2.0e-3}

Like the image VAE, the tokenizer is fitted before the backbone trains (``fit_on = "audio"``):
first the statistics, then each vocoder on random aligned segments of the training audio
(see :func:`multimodal.modalities.audio.wavenet.train_vocoder`).

Axes: b batch, t samples, m mel bins, f frames.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import save_file
from torch import nn

from multimodal.checkpoint import load_weights
from multimodal.errors import CheckpointError, ConfigError, DataError, InputError
from multimodal.modalities.audio.features import LogMel
from multimodal.modalities.audio.wavenet import VocoderFitSettings, train_vocoder
from multimodal.registry import tokenizers, vocoders as vocoder_registry

GRIFFIN_LIM = "griffin-lim"  # the un-learned vocoder every tokenizer has
# mel frames per streamed piece (decode_stream): 256 ms, where windows overlap (parallel,
# Griffin-Lim: each window costs its context again); 64 ms for the autoregressive vocoder,
# whose pieces cost nothing extra and which makes audio slower than real time on CPUs
STREAM_FRAMES, STREAM_FRAMES_AUTOREGRESSIVE = 16, 4
META_FILE = "mel.json"
FORMAT = "multimodal-log-mel/1"
STATS_ITEMS = 2000  # utterances the normalisation statistics are measured on
# the registered type of each vocoder name in checkpoints saved before vocoders had types
_UNTYPED_VOCODERS = {"parallel": "parallel_wavegan", "autoregressive": "wavenet"}


@tokenizers.register("log_mel")
class LogMelTokenizer:
    """16 kHz audio <-> per-bin normalised log-mel frames (b, m, f), with vocoders.

    Built in Python with modules, as the config builder does::

        LogMelTokenizer(vocoders={"parallel": ParallelWaveGANGenerator(num_layers=12)},
                        vocoder_fit={"parallel": VocoderFitSettings(steps=2000, lr=3e-3)})

    Args:
        n_fft: FFT size and window in samples (default 1024).
        hop_length: Samples per frame (default 256: 62.5 frames per second).
        n_mels: Mel bins ``m`` (default 80).
        f_min, f_max: Filter bank range in Hz (default 0 and 8,000).
        vocoders: The learned vocoders by the name users pick them with (``"parallel"``,
            ``"autoregressive"``): registered ``vocoders`` such as
            :class:`~multimodal.modalities.audio.wavenet.ParallelWaveGANGenerator`
            (``parallel_wavegan``) and
            :class:`~multimodal.modalities.audio.wavenet.WaveNetVocoder` (``wavenet``), each
            with this tokenizer's ``n_mels`` and ``hop_length`` (default: none, Griffin-Lim
            only). In a config: ``vocoders: {parallel: {type: parallel_wavegan, ...}}``.
        vocoder_fit: How :meth:`fit` trains each vocoder, by the same names:
            :class:`~multimodal.modalities.audio.wavenet.VocoderFitSettings` or a mapping of
            its fields (needed for every vocoder :meth:`fit` trains).
        default_vocoder: What :meth:`decode` uses unless told: a name of ``vocoders`` or
            ``"griffin-lim"`` (default ``"parallel"``).
        num_threads: CPU threads while fitting (default: torch's setting).

    Raises:
        ValueError: a vocoder for other mel bins or hop, fit settings for a vocoder that is not
            there, or a default vocoder that is not configured.
    """

    fit_on = "audio"
    component_args = {"vocoders": "vocoders"}  # the builder builds each vocoder of the mapping
    # keys of the layout before vocoders were registered components: where they went
    moved_args = {
        name: f"the vocoder sections moved: write vocoders: {{{name}: {{type: {kind}, "
              f"<its constructor arguments>}}}} and vocoder_fit: {{{name}: {{steps: ..., "
              "batch_size: ..., segment_frames: ..., lr: ...}}"
        for name, kind in _UNTYPED_VOCODERS.items()}

    def __init__(self, *, n_fft: int = 1024, hop_length: int = 256, n_mels: int = 80,
                 f_min: float = 0.0, f_max: float = 8000.0,
                 vocoders: dict[str, nn.Module] | None = None,
                 vocoder_fit: dict[str, VocoderFitSettings] | None = None,
                 default_vocoder: str = "parallel", num_threads: int | None = None):
        self.features = LogMel(n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, f_min=f_min,
                               f_max=f_max)
        self.n_mels, self.hop_length = n_mels, hop_length
        self.sample_rate = self.features.sample_rate
        self.num_threads = num_threads
        self.mean = torch.zeros(n_mels)
        self.std = torch.ones(n_mels)
        self.vocoders: dict[str, nn.Module] = {}
        for name, vocoder in (vocoders or {}).items():
            if name == GRIFFIN_LIM:
                raise ValueError(f"vocoders: {GRIFFIN_LIM!r} is built in; name the vocoder "
                                 "otherwise, e.g. 'parallel' or 'autoregressive'")
            sizes = (getattr(vocoder, "mel_channels", None), getattr(vocoder, "hop_length", None))
            if sizes != (n_mels, hop_length):
                raise ValueError(f"vocoders[{name!r}] has mel_channels={sizes[0]} and "
                                 f"hop_length={sizes[1]}, but this tokenizer makes frames of "
                                 f"n_mels={n_mels} and hop_length={hop_length}; give the "
                                 "vocoder the same")
            self.vocoders[name] = vocoder.eval()
        self.fit_settings: dict[str, VocoderFitSettings] = {}
        for name, settings in (vocoder_fit or {}).items():
            if name not in self.vocoders:
                raise ValueError(f"vocoder_fit names {name!r}, which vocoders does not have; "
                                 f"vocoders: {', '.join(self.vocoders) or 'none'}")
            self.fit_settings[name] = (VocoderFitSettings(**settings)
                                       if isinstance(settings, dict) else settings)
        if default_vocoder not in self.available_vocoders:
            raise ValueError(f"default_vocoder is {default_vocoder!r} but that vocoder is not "
                             f"configured; configured: {', '.join(self.vocoders) or 'none'} "
                             f"(or {GRIFFIN_LIM!r})")
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

    def compile(self, **compile_kwargs: Any) -> "LogMelTokenizer":
        """Compile the learned vocoders in place, each through its ``compile`` method
        (``torch.compile``'s keyword arguments; see
        :meth:`multimodal.pipelines.base.Pipeline.compile`); Griffin-Lim is no network."""
        for vocoder in self.vocoders.values():
            vocoder.compile(**compile_kwargs)
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
            vocoder: A name of ``vocoders`` (``"parallel"``, ``"autoregressive"``) or
                ``"griffin-lim"`` (default ``default_vocoder``).
            generator: Source of the vocoder's noise (parallel) or sampling (autoregressive).
            progress: Show a progress bar (autoregressive generation is sample by sample).

        Raises:
            InputError: an unknown or unconfigured vocoder, or a mel of the wrong shape.
        """
        name = self._check_decode(mel, vocoder)
        if name == GRIFFIN_LIM:
            wave = self.features.griffin_lim(self.denormalise(mel.float().cpu()),
                                             generator_seed=_griffin_lim_seed(generator))
            return torch.nn.functional.pad(wave, (0, mel.shape[-1] * self.hop_length
                                                  - wave.shape[-1]))
        model = self.vocoders[name]
        mel = mel.to(next(model.parameters()).device, torch.float32)
        if hasattr(model, "generate"):  # autoregressive (WaveNet): sample by sample
            return model.generate(mel, generator=generator, progress=progress).float().cpu()
        return model(mel, generator=generator).float().cpu()

    @torch.no_grad()
    def decode_stream(self, mel: torch.Tensor, *, vocoder: str | None = None,
                      generator: torch.Generator | None = None, progress: bool = False,
                      chunk_frames: int | None = None) -> Iterator[torch.Tensor]:
        """:meth:`decode` in pieces, each given out as soon as the vocoder has made it.

        Joined, the pieces are ``(b, f * hop_length)`` and draw from ``generator`` what
        :meth:`decode` draws, so what follows draws alike. Against :meth:`decode`'s samples:

        * ``"autoregressive"``: equal (its samples as they are drawn);
        * ``"parallel"``: equal up to float rounding (window by window, each with the
          context its receptive field needs; measured below 1e-6);
        * ``"griffin-lim"``: not equal, the same spectrum with other phases (windowed
          Griffin-Lim: :meth:`~multimodal.modalities.audio.features.LogMel.griffin_lim_stream`);
        * a learned vocoder without a ``stream`` method: one piece, :meth:`decode`'s.

        Args:
            mel, vocoder, generator, progress: As :meth:`decode`.
            chunk_frames: Mel frames per piece, >= 1 (default :data:`STREAM_FRAMES`, 16:
                256 ms; the autoregressive vocoder :data:`STREAM_FRAMES_AUTOREGRESSIVE`, 4).

        Yields:
            (b, samples) float32 waveforms on the CPU at 16 kHz, in order.

        Raises:
            InputError: as :meth:`decode`, or ``chunk_frames`` < 1.
        """
        name = self._check_decode(mel, vocoder)
        autoregressive = hasattr(self.vocoders.get(name), "generate")
        if chunk_frames is None:
            chunk_frames = STREAM_FRAMES_AUTOREGRESSIVE if autoregressive else STREAM_FRAMES
        if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) \
                or chunk_frames < 1:
            raise InputError(f"chunk_frames must be an integer >= 1, got {chunk_frames!r}")
        if name == GRIFFIN_LIM:
            seed = _griffin_lim_seed(generator)
            yield from self.features.griffin_lim_stream(self.denormalise(mel.float().cpu()),
                                                        generator_seed=seed,
                                                        chunk_frames=chunk_frames)
            # decode's last hop: Griffin-Lim gives (f - 1) * hop samples, decode pads to f
            yield mel.new_zeros(mel.shape[0], self.hop_length, dtype=torch.float32,
                                device="cpu")
            return
        model = self.vocoders[name]
        mel = mel.to(next(model.parameters()).device, torch.float32)
        if autoregressive:  # WaveNet
            pieces = model.stream(mel, generator=generator, progress=progress,
                                  chunk_frames=chunk_frames)
        elif hasattr(model, "stream"):
            pieces = model.stream(mel, generator=generator, chunk_frames=chunk_frames)
        else:  # a vocoder that cannot stream: the whole clip, as decode makes it
            pieces = iter([model(mel, generator=generator)])
        for piece in pieces:
            yield piece.float().cpu()

    def _check_decode(self, mel: torch.Tensor, vocoder: str | None) -> str:
        """The vocoder's name (default: ``default_vocoder``), once it and ``mel`` are
        checked (InputError otherwise)."""
        name = vocoder or self.default_vocoder
        if name not in self.available_vocoders:
            raise InputError(f"unknown vocoder {name!r}; this model has: "
                             f"{', '.join(self.available_vocoders)}")
        if mel.dim() != 3 or mel.shape[1] != self.n_mels:
            raise InputError(f"mel must be (batch, {self.n_mels}, frames), got "
                             f"{tuple(mel.shape)}")
        return name

    def fit(self, data: Any, *, seed: int = 0, device: Any = "cpu",
            progress: bool = True) -> "LogMelTokenizer":
        """Measure the normalisation statistics on ``data`` (items with ``"audio"``), then
        train each configured vocoder on random aligned segments of it.

        Raises:
            DataError: the dataset is empty or has no clip as long as a training segment.
            ConfigError: a vocoder has no ``vocoder_fit`` settings.
        """
        unset = [name for name in self.vocoders if name not in self.fit_settings]
        if unset:
            raise ConfigError([f"vocoder_fit has no settings for vocoder {name!r}: give at "
                               f"least vocoder_fit: {{{name}: {{steps: ...}}}}" for name in unset])
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
                fit = self.fit_settings[name]
                sampler = SegmentSampler(waves, mels, hop_length=self.hop_length,
                                         segment_frames=fit.segment_frames,
                                         batch_size=fit.batch_size)
                vocoder.to(device).train()
                train_vocoder(vocoder, sampler, steps=fit.steps, lr=fit.lr,
                              warmup_steps=fit.warmup_steps, lambda_adv=fit.lambda_adv,
                              adversarial_start=fit.adversarial_start, seed=seed,
                              progress=progress)
                vocoder.eval()
        finally:
            torch.set_num_threads(previous)
        self._trained = True
        return self

    # -- checkpoints -----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write ``mel.json`` (statistics, and each vocoder's type and constructor arguments)
        and ``<name>.safetensors`` per vocoder into ``directory``."""
        directory = Path(directory)
        for name, vocoder in self.vocoders.items():
            save_file({k: v.detach().contiguous().cpu() for k, v in
                       vocoder.state_dict().items()}, str(directory / f"{name}.safetensors"))
        vocoder_args = {name: {"type": _registered_name(vocoder), **vocoder.init_args}
                        for name, vocoder in self.vocoders.items()}
        meta = {"format": FORMAT, "mean": self.mean.tolist(), "std": self.std.tolist(),
                "trained": self._trained, "vocoder_args": vocoder_args}
        (directory / META_FILE).write_text(json.dumps(meta), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path, *, vocoders: dict[str, nn.Module] | None = None,
             **kwargs: Any) -> "LogMelTokenizer":
        """Rebuild from a checkpoint's ``tokenizers/<name>/``.

        Args:
            directory: The tokenizer's directory.
            vocoders: The vocoders to load, as for the constructor; each is rebuilt with the
                constructor arguments the checkpoint records, so it loads as it was trained
                whatever the code's defaults are now.
            **kwargs: The constructor's other arguments.

        Raises:
            CheckpointError: a missing or unreadable file, a vocoder of another type than the
                checkpoint's, or weights of another shape.
        """
        directory = Path(directory)
        try:
            meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read the audio tokenizer in {directory}: {exc}") \
                from None
        saved = meta.get("vocoder_args") or {}
        rebuilt = {}
        for name, vocoder in (vocoders or {}).items():
            args = dict(saved.get(name) or {})
            kind = args.pop("type", _UNTYPED_VOCODERS.get(name))
            if args and kind != _registered_name(vocoder):
                raise CheckpointError(f"{directory / META_FILE}: vocoder {name!r} is a {kind}, "
                                      f"the config names {_registered_name(vocoder)}")
            rebuilt[name] = type(vocoder)(**args) if args else vocoder
        tok = cls(vocoders=rebuilt, **kwargs)
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


def _griffin_lim_seed(generator: torch.Generator | None) -> int:
    """The seed of Griffin-Lim's initial phases: one draw from ``generator`` (0 without)."""
    if generator is None:
        return 0
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


def _registered_name(vocoder: nn.Module) -> str | None:
    """The name ``vocoder``'s class is registered under in ``vocoders``, if any."""
    return next((entry.name for entry in vocoder_registry.entries()
                 if entry.obj is type(vocoder)), None)


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
