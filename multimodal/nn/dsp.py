"""Plain-torch audio signal processing: mel filter banks and spectrograms, their inverse,
Griffin-Lim, mu-law companding, band-limited resampling and the DCT-II.

The project used torchaudio for these, but torchaudio 2.11 is its last release and its compiled
part loads only beside the CUDA torch it was built with, so a CPU-only torch could not import
it. Each function here follows torchaudio 2.11's algorithm (``functional/functional.py``,
``transforms/_transforms.py``, BSD-2-Clause) step for step, so it gives the same numbers for
the settings the project uses (``tests/test_dsp.py`` checks both against torchaudio, when
installed, and against recorded values):

* mel filter banks: triangles on the Slaney (Auditory Toolbox) or HTK mel scale, optionally
  area-normalised (Slaney 1998; librosa's ``mel``);
* inverse mel: least squares with ``torch.linalg.lstsq`` (driver ``gels``), then ReLU;
* Griffin-Lim: Griffin & Lim 1984, "Signal estimation from modified short-time Fourier
  transform", with the fast (momentum) variant of Perraudin, Balazs & Sondergaard 2013,
  "A fast Griffin-Lim algorithm", https://doi.org/10.1109/WASPAA.2013.6701851;
* mu-law: ITU-T G.711 companding (https://en.wikipedia.org/wiki/%CE%9C-law_algorithm);
* resampling: windowed-sinc band-limited interpolation with a Hann window (J. O. Smith,
  "Digital Audio Resampling", https://ccrma.stanford.edu/~jos/resample/), as a strided
  convolution with one filter per output phase (torchaudio's ``sinc_interp_hann``);
* DCT-II matrix, orthonormal or not (https://en.wikipedia.org/wiki/Discrete_cosine_transform).

Axes: b batch (any leading axes), t samples, k frequency bins (``n_fft // 2 + 1``),
m mel bins, f frames, c cepstral coefficients.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

MEL_SCALES = ("slaney", "htk")

# Slaney's mel scale: linear (3 mels per 200 Hz) below 1 kHz, logarithmic above
_SLANEY_HZ_PER_MEL = 200.0 / 3
_SLANEY_LOG_HZ = 1000.0
_SLANEY_LOG_MEL = _SLANEY_LOG_HZ / _SLANEY_HZ_PER_MEL
_SLANEY_LOG_STEP = math.log(6.4) / 27.0


def _check_mel_scale(mel_scale: str) -> None:
    if mel_scale not in MEL_SCALES:
        raise ValueError(f"mel_scale must be one of {MEL_SCALES}, got {mel_scale!r}")


def hz_to_mel(freq: float, mel_scale: str = "slaney") -> float:
    """Frequency ``freq`` in Hz -> mels on ``mel_scale`` ('slaney' or 'htk').

    Raises:
        ValueError: an unknown ``mel_scale``.
    """
    _check_mel_scale(mel_scale)
    if mel_scale == "htk":
        return 2595.0 * math.log10(1.0 + freq / 700.0)
    if freq >= _SLANEY_LOG_HZ:
        return _SLANEY_LOG_MEL + math.log(freq / _SLANEY_LOG_HZ) / _SLANEY_LOG_STEP
    return freq / _SLANEY_HZ_PER_MEL


def mel_to_hz(mels: torch.Tensor, mel_scale: str = "slaney") -> torch.Tensor:
    """Mels (any shape) on ``mel_scale`` -> frequencies in Hz (same shape).

    Raises:
        ValueError: an unknown ``mel_scale``.
    """
    _check_mel_scale(mel_scale)
    if mel_scale == "htk":
        return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    return torch.where(mels >= _SLANEY_LOG_MEL,
                       _SLANEY_LOG_HZ * torch.exp(_SLANEY_LOG_STEP * (mels - _SLANEY_LOG_MEL)),
                       _SLANEY_HZ_PER_MEL * mels)


def melscale_fbanks(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int,
                    norm: str | None = "slaney", mel_scale: str = "slaney") -> torch.Tensor:
    """Triangular mel filter bank, (k, m) float32: ``spec (..., f, k) @ fb`` gives mel bins.

    Args:
        n_freqs: Frequency bins k of the spectrogram, evenly spaced from 0 Hz to
            ``sample_rate // 2`` Hz (``n_fft // 2 + 1``).
        f_min, f_max: Lowest and highest filter edges in Hz.
        n_mels: Filters m, evenly spaced on the mel scale.
        sample_rate: Hz.
        norm: 'slaney' divides each triangle by its width in Hz / 2 (constant energy per
            filter), None leaves peaks at 1.
        mel_scale: 'slaney' (default) or 'htk'.

    Raises:
        ValueError: unknown ``norm`` or ``mel_scale``.

    Warns when a filter is empty (``n_mels`` too high for ``n_freqs``), as torchaudio does.
    """
    if norm not in (None, "slaney"):
        raise ValueError(f"norm must be None or 'slaney', got {norm!r}")
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs)  # (k,)
    m_pts = torch.linspace(hz_to_mel(f_min, mel_scale), hz_to_mel(f_max, mel_scale), n_mels + 2)
    f_pts = mel_to_hz(m_pts, mel_scale)  # (m + 2,) filter edges and centres, Hz
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - all_freqs[:, None]  # (k, m + 2)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fb = torch.min(down, up).clamp(min=0.0)  # (k, m)
    if norm == "slaney":
        fb = fb * (2.0 / (f_pts[2:] - f_pts[:-2]))[None, :]
    if (fb.max(dim=0).values == 0.0).any():
        warnings.warn(f"At least one mel filter is all zeros: n_mels {n_mels} is too high "
                      f"for n_freqs {n_freqs}", stacklevel=2)
    return fb


class MelSpectrogram(nn.Module):
    """Waveform (..., t) -> mel spectrogram (..., m, f) with ``f = t // hop_length + 1``:
    ``|STFT|**power`` of centred (reflect-padded) frames under a periodic Hann window of
    ``n_fft`` samples, through :func:`melscale_fbanks`. Equals torchaudio's
    ``transforms.MelSpectrogram`` with ``win_length = n_fft``, ``center=True``,
    ``pad_mode='reflect'``, ``normalized=False``.

    Args:
        sample_rate: Hz.
        n_fft: FFT size and window length in samples.
        hop_length: Samples between frame centres.
        n_mels: Mel bins m.
        f_min, f_max: Filter bank range in Hz.
        power: Exponent of the magnitude (1 magnitude, 2 power).
        norm, mel_scale: As for :func:`melscale_fbanks`.

    Raises:
        ValueError: ``f_min > f_max``, unknown ``norm`` or ``mel_scale``.
    """

    def __init__(self, *, sample_rate: int, n_fft: int, hop_length: int, n_mels: int,
                 f_min: float = 0.0, f_max: float | None = None, power: float = 1.0,
                 norm: str | None = "slaney", mel_scale: str = "slaney"):
        super().__init__()
        f_max = float(sample_rate // 2) if f_max is None else f_max
        if f_min > f_max:
            raise ValueError(f"f_min {f_min} Hz must not exceed f_max {f_max} Hz")
        self.n_fft, self.hop_length, self.power = n_fft, hop_length, power
        # not persistent: derived from the arguments, so no state_dict carries them
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("fb", melscale_fbanks(n_fft // 2 + 1, f_min, f_max, n_mels,
                                                   sample_rate, norm, mel_scale),
                             persistent=False)

    def spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """(..., t) -> ``|STFT|**power`` (..., k, f)."""
        shape = wave.shape
        spec = torch.stft(wave.reshape(-1, shape[-1]), self.n_fft, hop_length=self.hop_length,
                          win_length=self.n_fft, window=self.window, center=True,
                          pad_mode="reflect", normalized=False, onesided=True,
                          return_complex=True).abs()
        spec = spec.reshape(shape[:-1] + spec.shape[-2:])
        return spec if self.power == 1.0 else spec.pow(self.power)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.spectrogram(wave).transpose(-1, -2), self.fb).transpose(-1, -2)


def inverse_mel_scale(mel_spec: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """Least-squares linear spectrogram (..., k, f) of a mel spectrogram (..., m, f) under the
    filter bank ``fb`` (k, m), negative values set to 0 (torchaudio 2.11's ``InverseMelScale``:
    ``torch.linalg.lstsq`` with the 'gels' driver, which assumes ``fb`` has full column rank).

    Raises:
        ValueError: ``mel_spec`` has not ``fb.shape[1]`` mel bins.
    """
    shape = mel_spec.shape
    if mel_spec.dim() < 2 or shape[-2] != fb.shape[1]:
        raise ValueError(f"mel_spec must be (..., {fb.shape[1]} mel bins, frames), "
                         f"got {tuple(shape)}")
    solution = torch.linalg.lstsq(fb.T[None], mel_spec.reshape(-1, shape[-2], shape[-1]),
                                  driver="gels").solution
    return torch.relu(solution).reshape(shape[:-2] + (fb.shape[0], shape[-1]))


def griffin_lim(magnitude: torch.Tensor, *, n_fft: int, hop_length: int, n_iter: int = 32,
                momentum: float = 0.99, length: int | None = None,
                window: torch.Tensor | None = None,
                generator: torch.Generator | None = None,
                angles: torch.Tensor | None = None,
                prefix: torch.Tensor | None = None) -> torch.Tensor:
    """Waveform (..., t) whose STFT magnitude approximates ``magnitude`` (..., k, f),
    ``k = n_fft // 2 + 1``: fast Griffin-Lim (Perraudin et al. 2013) with torchaudio 2.11's
    choices, so that it gives the same samples for the same initial phases.

    Args:
        magnitude: Linear STFT magnitude (power 1), centred frames.
        n_fft: FFT size and window length in samples.
        hop_length: Samples between frames.
        n_iter: Iterations (default 32).
        momentum: Fast Griffin-Lim's alpha in [0, 1) (default 0.99; 0 is plain Griffin-Lim).
        length: Output samples t; default ``(f - 1) * hop_length``.
        window: (n_fft,) analysis and synthesis window; default periodic Hann.
        generator: Draws the random initial phases (the global generator when None).
        angles: The initial phases (..., k, f) complex, instead of drawing them.
        prefix: (..., p) samples the output starts with, held fixed at every iteration: the
            samples already committed (played) when a long signal is inverted window by
            window, so the new samples' phases continue them (RTISI-LA's commit, Zhu,
            Beauregard & Wyse 2007, https://doi.org/10.1109/TASL.2007.899236). Default none.

    Raises:
        ValueError: ``momentum`` outside [0, 1), ``angles`` not of ``magnitude``'s shape, or a
            ``prefix`` longer than the output.
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if angles is not None and angles.shape != magnitude.shape:
        raise ValueError(f"angles {tuple(angles.shape)} must have the magnitude's shape "
                         f"{tuple(magnitude.shape)}")
    if window is None:
        window = torch.hann_window(n_fft, device=magnitude.device, dtype=magnitude.dtype)
    momentum = momentum / (1 + momentum)  # torchaudio's (librosa's) scaling of alpha
    shape = magnitude.shape
    magnitude = magnitude.reshape((-1,) + shape[-2:])
    out_length = (shape[-1] - 1) * hop_length if length is None else length
    if prefix is not None:
        if prefix.shape[-1] > out_length:
            raise ValueError(f"prefix of {prefix.shape[-1]} samples is longer than the "
                             f"{out_length} samples of the output")
        prefix = prefix.reshape(magnitude.shape[0], -1)
    stft = {"n_fft": n_fft, "hop_length": hop_length, "win_length": n_fft, "window": window}
    if angles is None:
        # torchaudio's initial "phases" are complex numbers with real and imaginary parts
        # uniform in [0, 1), not unit phasors; kept, so that a seed gives the same waveform
        angles = torch.rand(magnitude.shape, dtype=magnitude.dtype.to_complex(),
                            device=magnitude.device, generator=generator)
    else:
        angles = angles.reshape(magnitude.shape)

    def inverse_of(angles: torch.Tensor) -> torch.Tensor:
        wave = torch.istft(magnitude * angles, length=length, **stft)
        if prefix is not None:
            wave[:, : prefix.shape[-1]] = prefix
        return wave

    previous = torch.zeros((), dtype=magnitude.dtype, device=magnitude.device)
    for _ in range(n_iter):
        inverse = inverse_of(angles)
        rebuilt = torch.stft(inverse, center=True, pad_mode="reflect", normalized=False,
                             onesided=True, return_complex=True, **stft)
        angles = rebuilt - previous * momentum if momentum else rebuilt
        angles = angles / (angles.abs() + 1e-16)  # unit phasors
        previous = rebuilt
    wave = inverse_of(angles)
    return wave.reshape(shape[:-2] + wave.shape[-1:])


def mu_law_encoding(x: torch.Tensor, quantization_channels: int = 256) -> torch.Tensor:
    """Float waveform in [-1, 1] (any shape) -> mu-law classes, int64 in
    ``[0, quantization_channels)`` (ITU-T G.711, ``mu = quantization_channels - 1``).

    Raises:
        TypeError: ``x`` is not a floating-point tensor.
    """
    if not x.is_floating_point():
        raise TypeError(f"mu_law_encoding needs a float waveform in [-1, 1], got {x.dtype}")
    mu = torch.tensor(quantization_channels - 1.0, dtype=x.dtype)
    x_mu = torch.sign(x) * torch.log1p(mu * torch.abs(x)) / torch.log1p(mu)  # in [-1, 1]
    return ((x_mu + 1) / 2 * mu + 0.5).to(torch.int64)  # rounds to the nearest class


def mu_law_decoding(x_mu: torch.Tensor, quantization_channels: int = 256) -> torch.Tensor:
    """Mu-law classes in ``[0, quantization_channels)`` (any shape, int or float) -> waveform
    in [-1, 1] (float32 for integer input), the inverse of :func:`mu_law_encoding`."""
    if not x_mu.is_floating_point():
        x_mu = x_mu.to(torch.float)
    mu = torch.tensor(quantization_channels - 1.0, dtype=x_mu.dtype)
    x = x_mu / mu * 2 - 1.0
    return torch.sign(x) * (torch.exp(torch.abs(x) * torch.log1p(mu)) - 1.0) / mu


def _sinc_resample_kernel(orig_freq: int, new_freq: int, lowpass_filter_width: int,
                          rolloff: float, dtype: torch.dtype, device: torch.device,
                          ) -> tuple[torch.Tensor, int]:
    """(new_freq, 1, 2 * width + orig_freq) filters, one per output phase, for frequencies
    already divided by their gcd; ``width`` is the half-length in input samples."""
    base_freq = min(orig_freq, new_freq) * rolloff  # cut-off below both Nyquist frequencies
    width = math.ceil(lowpass_filter_width * orig_freq / base_freq)
    idx = torch.arange(-width, width + orig_freq, dtype=dtype, device=device)[None, None]
    # time of each input sample relative to each output sample, in periods of the cut-off
    t = torch.arange(0, -new_freq, -1, dtype=dtype, device=device)[:, None, None] / new_freq
    t = (t + idx / orig_freq).mul_(base_freq).clamp_(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2).pow_(2)  # Hann over +-width zeros
    t.mul_(math.pi)
    sinc = torch.where(t == 0, torch.ones((), dtype=dtype, device=device), t.sin() / t)
    return sinc.mul_(window.mul_(base_freq / orig_freq)), width


def resample(wave: torch.Tensor, orig_freq: int, new_freq: int, *,
             lowpass_filter_width: int = 6, rolloff: float = 0.99) -> torch.Tensor:
    """Band-limited resampling of ``wave`` (..., t) at ``orig_freq`` Hz to (..., t') at
    ``new_freq`` Hz, ``t' = ceil(t * new_freq / orig_freq)`` (the quotient rounded to float32
    first, as torchaudio does): a Hann-windowed sinc low-pass at
    ``rolloff`` times the lower Nyquist frequency, ``lowpass_filter_width`` zero crossings
    each side. Equals ``torchaudio.functional.resample`` (``sinc_interp_hann``) sample for
    sample; returns ``wave`` itself when the rates are equal.

    Raises:
        ValueError: a rate is not a positive integer, or ``lowpass_filter_width < 1``.
        TypeError: ``wave`` is not a floating-point tensor.
    """
    if not (orig_freq > 0 and new_freq > 0 and int(orig_freq) == orig_freq
            and int(new_freq) == new_freq):
        raise ValueError(f"sample rates must be positive integers (Hz), got {orig_freq} and "
                         f"{new_freq}; scale both by the same factor to make them integers")
    if lowpass_filter_width < 1:
        raise ValueError(f"lowpass_filter_width must be >= 1, got {lowpass_filter_width}")
    if not wave.is_floating_point():
        raise TypeError(f"resample needs a float waveform, got {wave.dtype}")
    if orig_freq == new_freq:
        return wave
    gcd = math.gcd(int(orig_freq), int(new_freq))
    orig, new = int(orig_freq) // gcd, int(new_freq) // gcd
    kernel, width = _sinc_resample_kernel(orig, new, lowpass_filter_width, rolloff,
                                          wave.dtype, wave.device)
    shape = wave.shape
    wave = torch.nn.functional.pad(wave.reshape(-1, shape[-1]), (width, width + orig))
    out = torch.nn.functional.conv1d(wave[:, None], kernel, stride=orig)  # (b, new, t / orig)
    out = out.transpose(1, 2).reshape(out.shape[0], -1)  # interleave the phases
    # torchaudio rounds the length in float32: kept, so lengths match sample for sample
    target = math.ceil(float(torch.tensor(new * shape[-1] / orig, dtype=torch.float32)))
    return out[:, :target].reshape(shape[:-1] + (-1,))


def create_dct(n_mfcc: int, n_mels: int, norm: str | None = "ortho") -> torch.Tensor:
    """DCT-II matrix (m, c) = (``n_mels``, ``n_mfcc``): ``mel (..., m) @ dct`` gives the first
    ``n_mfcc`` coefficients; ``norm='ortho'`` makes its columns orthonormal, None scales by 2.

    Raises:
        ValueError: ``norm`` is neither 'ortho' nor None.
    """
    if norm not in (None, "ortho"):
        raise ValueError(f"norm must be 'ortho' or None, got {norm!r}")
    n = torch.arange(float(n_mels))
    k = torch.arange(float(n_mfcc))[:, None]
    dct = torch.cos(math.pi / float(n_mels) * (n + 0.5) * k)  # (c, m)
    if norm is None:
        dct = dct * 2.0
    else:
        dct[0] *= 1.0 / math.sqrt(2.0)
        dct = dct * math.sqrt(2.0 / float(n_mels))
    return dct.T
