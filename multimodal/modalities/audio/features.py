"""Log-mel features of 16 kHz speech (plain torch, :mod:`multimodal.nn.dsp`), the
representation the acoustic decoder predicts and the vocoders invert.

Defaults (HiFi-GAN / Parallel WaveGAN practice, scaled to 16 kHz):

* ``sample_rate`` 16,000 Hz, ``n_fft`` 1024 samples (64 ms window, Hann), ``hop_length`` 256
  samples (16 ms, 62.5 frames per second), centred frames (``frames = samples // hop + 1``);
* ``n_mels`` 80 Slaney-normalised triangular filters from ``f_min`` 0 Hz to ``f_max`` 8,000 Hz
  on the Slaney mel scale, applied to the MAGNITUDE spectrum (power 1);
* natural log of the filter energies floored at ``1e-5`` (range about [-11.5, 3]).

Frame ``i`` is centred on sample ``i * hop_length``, so audio ``[f * hop, (f + k) * hop)``
corresponds to mel frames ``f .. f + k - 1``: the alignment every vocoder relies on.

Axes: b batch, t samples, m mel bins, f frames.
"""

from __future__ import annotations

import torch
from torch import nn

from multimodal.nn import dsp

SAMPLE_RATE = 16_000
LOG_FLOOR = 1e-5


class LogMel(nn.Module):
    """Waveform (b, t) float in [-1, 1] -> log-mel (b, m, f) with ``f = t // hop_length + 1``.

    Args:
        sample_rate: Hz (default 16,000).
        n_fft: FFT size and Hann window length in samples (default 1024).
        hop_length: Samples between frames (default 256).
        n_mels: Mel bins (default 80).
        f_min, f_max: Filter bank range in Hz (default 0 and 8,000).
    """

    def __init__(self, *, sample_rate: int = SAMPLE_RATE, n_fft: int = 1024,
                 hop_length: int = 256, n_mels: int = 80, f_min: float = 0.0,
                 f_max: float = 8000.0):
        super().__init__()
        if f_max > sample_rate / 2:
            raise ValueError(f"f_max {f_max} Hz is above the Nyquist frequency "
                             f"{sample_rate / 2} Hz of sample_rate {sample_rate}")
        self.sample_rate, self.n_fft, self.hop_length = sample_rate, n_fft, hop_length
        self.n_mels, self.f_min, self.f_max = n_mels, f_min, f_max
        self.mel = dsp.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft,
                                      hop_length=hop_length, n_mels=n_mels, f_min=f_min,
                                      f_max=f_max, power=1.0, norm="slaney", mel_scale="slaney")

    def num_frames(self, num_samples: int) -> int:
        """Frames of a waveform of ``num_samples`` samples."""
        return num_samples // self.hop_length + 1

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() == 1:
            wave = wave[None]
        return torch.log(self.mel(wave.float()).clamp(min=LOG_FLOOR))

    def griffin_lim(self, log_mel: torch.Tensor, *, n_iter: int = 64,
                    generator_seed: int = 0) -> torch.Tensor:
        """The baseline inversion: least-squares inverse of the mel filter bank
        (:func:`~multimodal.nn.dsp.inverse_mel_scale`), then fast Griffin-Lim phase
        reconstruction (Griffin & Lim 1984; Perraudin et al. 2013;
        :func:`~multimodal.nn.dsp.griffin_lim`).

        Args:
            log_mel: (b, m, f) log-mel as returned by :meth:`forward`.
            n_iter: Griffin-Lim iterations (default 64).
            generator_seed: Seed of the random initial phases.

        Returns:
            (b, (f - 1) * hop_length) waveform.
        """
        log_mel = log_mel.float()
        # least-squares, non-negative magnitudes (b, n_fft // 2 + 1, f)
        spec = dsp.inverse_mel_scale(log_mel.exp(), self.mel.fb.to(log_mel.device))
        # random initial phases from their own generator: seeded, no side effect on the global
        # one (on CPU the same numbers as torch.manual_seed(generator_seed) gave before)
        generator = torch.Generator(log_mel.device).manual_seed(generator_seed)
        wave = dsp.griffin_lim(spec, n_fft=self.n_fft, hop_length=self.hop_length,
                               n_iter=n_iter, window=self.mel.window.to(log_mel.device),
                               generator=generator)
        return wave[..., : (log_mel.shape[-1] - 1) * self.hop_length]
