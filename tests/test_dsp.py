"""multimodal.nn.dsp, the plain-torch replacement of torchaudio (issue 22 item 6).

Three kinds of test:

* equality with torchaudio 2.11 at the project's settings, skipped where torchaudio cannot be
  imported (a CPU-only torch of 2.12 or later);
* properties that hold whatever the implementation (a sine's mel peak, mu-law error bound,
  resampling keeps frequency and amplitude, Griffin-Lim converges, DCT orthonormality);
* reference numbers recorded with torchaudio 2.11 (torch 2.11, CPU, 1 thread), so that a
  machine without torchaudio still checks the equivalence.
"""

from __future__ import annotations

import ast
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from multimodal.nn import dsp

SR = 16_000
N_FFT, HOP, N_MELS, F_MAX = 1024, 256, 80, 8000.0  # the project's log-mel settings
ROOT = Path(__file__).resolve().parent.parent


def _signal(num_samples: int, sample_rate: int) -> torch.Tensor:
    """Two tones (440 Hz, 3.1 kHz) and a chirp from 200 Hz rising 1.8 kHz per second."""
    t = torch.arange(num_samples, dtype=torch.float64) / sample_rate
    return (0.4 * torch.sin(2 * math.pi * 440 * t) + 0.2 * torch.sin(2 * math.pi * 3100 * t)
            + 0.1 * torch.sin(2 * math.pi * (200 * t + 900 * t ** 2))).float()


def _sine(freq: float, num_samples: int, sample_rate: int, amplitude: float = 1.0):
    t = torch.arange(num_samples, dtype=torch.float64) / sample_rate
    return (amplitude * torch.sin(2 * math.pi * freq * t)).float()


def _mel() -> dsp.MelSpectrogram:
    return dsp.MelSpectrogram(sample_rate=SR, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS,
                              f_min=0.0, f_max=F_MAX, power=1.0)


def _close(actual, expected, *, rtol=1e-5, atol=0.0):
    torch.testing.assert_close(torch.as_tensor(actual), torch.as_tensor(expected).to(
        torch.as_tensor(actual).dtype), rtol=rtol, atol=atol)


# ---------------------------------------------------------------- equal to torchaudio 2.11


@pytest.fixture(scope="module")
def ta():
    """torchaudio, or a skip where it cannot be imported (its compiled part loads only beside
    the torch build it was made for, and it ends at 2.11)."""
    try:
        import torchaudio
        torchaudio.functional.resample  # noqa: B018 (touch the functional module)
    except (ImportError, OSError) as exc:
        pytest.skip(f"torchaudio cannot be imported: {exc}")
    return torchaudio


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _inputs():
    gen = torch.Generator().manual_seed(0)
    return {"sine": _sine(440.0, 2 * SR, SR, 0.5),
            "random": torch.rand(3, 2 * SR, generator=gen) * 2 - 1,
            "mix": _signal(SR // 2, SR)}


@pytest.mark.parametrize("mel_scale,norm", [("slaney", "slaney"), ("slaney", None),
                                            ("htk", None), ("htk", "slaney")])
def test_filter_bank_equals_torchaudio(ta, mel_scale, norm):
    for n_freqs, n_mels, f_max in ((N_FFT // 2 + 1, N_MELS, F_MAX), (201, 40, 7600.0)):
        _close(dsp.melscale_fbanks(n_freqs, 0.0, f_max, n_mels, SR, norm, mel_scale),
               ta.functional.melscale_fbanks(n_freqs, 0.0, f_max, n_mels, SR, norm, mel_scale),
               rtol=1e-6, atol=1e-9)


def test_mel_spectrogram_equals_torchaudio(ta, one_thread):
    theirs = ta.transforms.MelSpectrogram(
        sample_rate=SR, n_fft=N_FFT, win_length=N_FFT, hop_length=HOP, f_min=0.0, f_max=F_MAX,
        n_mels=N_MELS, power=1.0, center=True, pad_mode="reflect", norm="slaney",
        mel_scale="slaney")
    for name, wave in _inputs().items():
        ours, ref = _mel()(wave), theirs(wave)
        assert ours.shape == ref.shape, name
        _close(ours, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))


def test_inverse_mel_and_griffin_lim_equal_torchaudio(ta, one_thread):
    mel = _mel()(_inputs()["random"])
    inverse = ta.transforms.InverseMelScale(n_stft=N_FFT // 2 + 1, n_mels=N_MELS,
                                            sample_rate=SR, f_min=0.0, f_max=F_MAX,
                                            norm="slaney", mel_scale="slaney")
    spec, ref = dsp.inverse_mel_scale(mel, _mel().fb), inverse(mel)
    _close(spec, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))
    gl = ta.transforms.GriffinLim(n_fft=N_FFT, win_length=N_FFT, hop_length=HOP, power=1.0,
                                  n_iter=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        ref = gl(spec)
    ours = dsp.griffin_lim(spec, n_fft=N_FFT, hop_length=HOP, n_iter=32,
                           generator=torch.Generator().manual_seed(5))
    assert ours.shape == ref.shape == (3, (mel.shape[-1] - 1) * HOP)
    _close(ours, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_mu_law_equals_torchaudio(ta):
    x = torch.linspace(-1, 1, 20001)
    assert torch.equal(dsp.mu_law_encoding(x, 256), ta.functional.mu_law_encoding(x, 256))
    classes = torch.arange(256)
    _close(dsp.mu_law_decoding(classes, 256), ta.functional.mu_law_decoding(classes, 256),
           rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("orig,new", [(22050, 16000), (44100, 16000), (48000, 16000),
                                      (8000, 16000), (24000, 16000)])
def test_resample_equals_torchaudio(ta, orig, new):
    gen = torch.Generator().manual_seed(1)
    # 131141 samples is a length where torchaudio's float32 rounding of the output length
    # gives one sample fewer than exact arithmetic (for 22050 -> 16000)
    for length in (1, 1000, orig + 7, 131141):
        wave = torch.rand(2, length, generator=gen) - 0.5
        ours, ref = dsp.resample(wave, orig, new), ta.functional.resample(wave, orig, new)
        assert ours.shape == ref.shape, (orig, new, length)
        _close(ours, ref, rtol=1e-5, atol=1e-6)
    wave = _signal(3000, orig).double()  # float64 in, float64 kernel
    _close(dsp.resample(wave, orig, new), ta.functional.resample(wave, orig, new),
           rtol=1e-9, atol=1e-12)


def test_dct_equals_torchaudio(ta):
    for norm in ("ortho", None):
        _close(dsp.create_dct(14, N_MELS, norm), ta.functional.create_dct(14, N_MELS, norm),
               rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- properties, no torchaudio


def _slaney_hz(mel: float) -> float:
    """Slaney's mel scale, written independently of dsp: linear to 1 kHz, then log."""
    return 200.0 / 3 * mel if mel < 15.0 else 1000.0 * math.exp(math.log(6.4) / 27 * (mel - 15))


def test_a_sine_peaks_in_the_mel_bin_centred_on_its_frequency():
    top = 15.0 + math.log(F_MAX / 1000.0) / (math.log(6.4) / 27)  # 8 kHz in Slaney mels
    centres = [_slaney_hz(top * (i + 1) / (N_MELS + 1)) for i in range(N_MELS)]
    mel = _mel()
    for i in (5, 20, 40, 60, 75):
        response = mel(_sine(centres[i], SR, SR, 0.5)).mean(-1)  # (m,)
        assert int(response.argmax()) == i, (i, centres[i])
    assert mel(torch.zeros(1, 4000)).abs().max() == 0
    assert mel(torch.zeros(2, 4000)).shape == (2, N_MELS, 4000 // HOP + 1)


def test_mu_law_round_trip_is_within_the_quantisation_bound():
    mu = 255
    x = torch.linspace(-1, 1, 100_001)
    classes = dsp.mu_law_encoding(x, mu + 1)
    assert classes.dtype == torch.int64 and int(classes.min()) == 0 and int(classes.max()) == mu
    x_hat = dsp.mu_law_decoding(classes, mu + 1)
    # half a class (1 / mu in the companded domain) through the slope of the expansion,
    # ln(1 + mu) (1 + mu |x|) / mu, taken at the larger magnitude (mean value theorem)
    bound = math.log1p(mu) / mu ** 2 * (1 + mu * torch.maximum(x.abs(), x_hat.abs()))
    assert ((x_hat - x).abs() <= bound * (1 + 1e-4) + 1e-7).all()
    assert float((x_hat - x).abs().max()) < 0.033  # at |x| = 1: ln(256) / 255 * 256 / 255 / 2
    assert torch.equal(dsp.mu_law_encoding(dsp.mu_law_decoding(torch.arange(256))),
                       torch.arange(256))  # classes survive decode -> encode


def test_resample_keeps_a_sine_frequency_and_amplitude():
    wave = _sine(1000.0, 22050, 22050, 0.8)  # 1 s
    out = dsp.resample(wave, 22050, 16000)
    assert out.shape == (16000,)
    spectrum = torch.fft.rfft(out.double() * torch.hann_window(16000, dtype=torch.float64))
    assert int(spectrum.abs().argmax()) == 1000  # 1 Hz bins: the peak stays at 1 kHz
    mid = out[1000:-1000]  # away from the zero-padded edges
    assert abs(float(mid.abs().max()) - 0.8) < 0.8 * 2e-3
    assert abs(float(mid.pow(2).mean().sqrt()) - 0.8 / math.sqrt(2)) < 0.8 * 2e-3
    # a 10 kHz tone is above the new Nyquist frequency: filtered out, not folded to 6 kHz
    alias = dsp.resample(_sine(10_000.0, 22050, 22050, 0.8), 22050, 16000)[1000:-1000]
    assert float(alias.abs().max()) < 0.8 * 0.02
    assert dsp.resample(wave, 22050, 22050) is wave
    assert dsp.resample(torch.zeros(3, 2, 441), 22050, 16000).shape == (3, 2, 320)


def test_griffin_lim_reaches_a_low_spectral_convergence():
    sig = 0.4 * _signal(SR, SR) / 0.7
    window = torch.hann_window(N_FFT)
    magnitude = torch.stft(sig, N_FFT, HOP, window=window, return_complex=True).abs()

    def convergence(wave):  # ||S - |STFT(y)|||_F / ||S||_F
        rebuilt = torch.stft(wave, N_FFT, HOP, window=window, return_complex=True).abs()
        return float(torch.linalg.norm(rebuilt - magnitude) / torch.linalg.norm(magnitude))

    def run(n_iter, seed=0):
        return dsp.griffin_lim(magnitude, n_fft=N_FFT, hop_length=HOP, n_iter=n_iter,
                               length=SR, generator=torch.Generator().manual_seed(seed))

    wave = run(32)
    assert wave.shape == (SR,)
    assert convergence(wave) < 0.15  # measured 0.10 (random initial phases: 0.81)
    assert convergence(run(0)) > 0.5
    assert torch.equal(run(4, seed=3), run(4, seed=3))  # the generator decides, nothing else
    assert not torch.equal(run(4, seed=3), run(4, seed=4))


def test_dct_is_orthonormal():
    square = dsp.create_dct(N_MELS, N_MELS, "ortho")
    _close(square.T @ square, torch.eye(N_MELS), rtol=0, atol=1e-5)
    _close(square @ square.T, torch.eye(N_MELS), rtol=0, atol=1e-5)
    dct = dsp.create_dct(14, N_MELS, "ortho")  # (m, c)
    assert dct.shape == (N_MELS, 14)
    _close(dct.T @ dct, torch.eye(14), rtol=0, atol=1e-5)
    coeffs = torch.full((N_MELS,), 2.0) @ dct  # a constant has only c0 = 2 sqrt(m)
    _close(coeffs, torch.tensor([2 * math.sqrt(N_MELS)] + [0.0] * 13), rtol=0, atol=1e-5)
    _close(dsp.create_dct(14, N_MELS, None)[:, 1:],
           dct[:, 1:] * 2 / math.sqrt(2 / N_MELS), rtol=1e-5, atol=1e-6)


def test_bad_arguments_raise_errors_that_say_what_was_wrong():
    with pytest.raises(ValueError, match="positive integers"):
        dsp.resample(torch.zeros(100), 22050.5, 16000)
    with pytest.raises(ValueError, match="positive integers"):
        dsp.resample(torch.zeros(100), 0, 16000)
    with pytest.raises(TypeError, match="float"):
        dsp.resample(torch.zeros(100, dtype=torch.int16), 22050, 16000)
    with pytest.raises(ValueError, match="momentum"):
        dsp.griffin_lim(torch.ones(513, 4), n_fft=N_FFT, hop_length=HOP, momentum=1.0)
    with pytest.raises(TypeError, match="float"):
        dsp.mu_law_encoding(torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="mel_scale"):
        dsp.melscale_fbanks(513, 0.0, F_MAX, N_MELS, SR, mel_scale="bark")
    with pytest.raises(ValueError, match="norm"):
        dsp.create_dct(14, N_MELS, "forward")
    with pytest.raises(ValueError, match="80 mel bins"):
        dsp.inverse_mel_scale(torch.ones(1, 40, 5), _mel().fb)
    with pytest.raises(ValueError, match="f_min"):
        dsp.MelSpectrogram(sample_rate=SR, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS,
                           f_min=9000.0, f_max=F_MAX)


# ------------------------------------------- reference numbers recorded with torchaudio 2.11


def test_filter_bank_matches_recorded_torchaudio_values():
    fb = dsp.melscale_fbanks(N_FFT // 2 + 1, 0.0, F_MAX, N_MELS, SR, "slaney", "slaney")
    assert fb.shape == (513, 80)
    points = [(3, 0), (13, 4), (52, 20), (200, 55), (500, 79)]
    _close([fb[k, m] for k, m in points],
           [0.01990499, 0.01464584, 0.0048765312, 0.0040936843, 0.0021035357], rtol=1e-6)
    _close(fb.sum(), 5.11865758895874, rtol=1e-6)


def test_log_mel_inverse_and_griffin_lim_match_recorded_torchaudio_values(one_thread):
    mel = _mel()(_signal(SR // 2, SR))
    log_mel = torch.log(mel.clamp(min=1e-5))
    assert log_mel.shape == (80, 32)
    _close([log_mel[m, f] for m, f in [(3, 5), (10, 10), (20, 0), (56, 20), (70, 30)]],
           [-8.0451193, 0.39060944, -2.0054481, -1.293541, -5.8519011], rtol=1e-4, atol=1e-4)
    _close(log_mel.mean(), -8.241094589233398, rtol=1e-5)
    spec = dsp.inverse_mel_scale(mel, _mel().fb)
    _close([spec[k, f] for k, f in [(14, 5), (28, 10), (100, 20), (198, 30)]],
           [0.050629258, 68.852989, 8.233593e-05, 12.447431], rtol=1e-4, atol=1e-4)
    _close(spec.sum(), 15433.9560546875, rtol=1e-5)
    # 8 iterations: a 1e-6 relative change of the input moves the output by about 1e-5, so a
    # different FFT library still lands within the tolerance
    wave = dsp.griffin_lim(spec, n_fft=N_FFT, hop_length=HOP, n_iter=8,
                           generator=torch.Generator().manual_seed(0))
    assert wave.shape == (7936,)
    _close(wave[[1000, 2000, 3000, 4000, 7000]],
           [-0.30338821, 0.049043689, 0.47802415, -0.045291208, -0.59758478], rtol=0, atol=1e-4)
    _close(wave.pow(2).mean().sqrt(), 0.27846360206604004, rtol=1e-4)


def test_resample_mu_law_and_dct_match_recorded_torchaudio_values():
    out = dsp.resample(_signal(2205, 22050), 22050, 16000)
    assert out.shape == (1600,)
    _close(out[[100, 500, 900, 1500, 1599]],
           [-0.16101374, -0.46909586, -0.20102751, 0.17411087, -0.26688948], rtol=1e-5,
           atol=1e-6)
    _close(out.sum(), 0.6232694387435913, rtol=1e-4, atol=1e-5)
    # torchaudio's length rounding in float32: ceil(95159.0023) came out as 95159
    assert dsp.resample(torch.zeros(131141), 22050, 16000).shape == (95159,)
    assert dsp.mu_law_encoding(torch.tensor([-1, -0.5, -0.01, 0, 0.003, 0.2, 1])).tolist() == \
        [0, 16, 98, 128, 141, 218, 255]
    _close(dsp.mu_law_decoding(torch.tensor([0, 1, 64, 127, 128, 200, 255])),
           [-1, -0.95727396, -0.05814499, -8.6211694e-05, 8.6213091e-05, 0.087880246, 1],
           rtol=1e-6, atol=1e-9)
    dct = dsp.create_dct(14, N_MELS, "ortho")
    _close([dct[0, 0], dct[5, 1], dct[79, 13]], [0.1118034, 0.15444024, -0.15299082],
           rtol=1e-6)


# ---------------------------------------------------------------- torchaudio is gone


def test_no_module_of_the_package_imports_torchaudio():
    found = []
    for path in sorted((ROOT / "multimodal").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(ROOT)}:{node.lineno}" for name in names
                      if name.split(".")[0] == "torchaudio"]
    assert not found, f"torchaudio imported at {', '.join(found)}"


@pytest.mark.slow  # spawns a Python that cannot import torchaudio (about 15 s)
def test_audio_features_work_when_torchaudio_cannot_be_imported():
    code = """
import sys
sys.modules["torchaudio"] = None  # "import torchaudio" now raises ImportError
import torch
import multimodal, multimodal.cli
from multimodal.modalities.audio.features import LogMel
from multimodal.modalities.audio.wavenet import mu_law_decode, mu_law_encode
from multimodal.evaluation.audio import mel_cepstrum
features = LogMel()
wave = torch.sin(torch.arange(8000) / 5.0)[None] * 0.5
log_mel = features(wave)
assert log_mel.shape == (1, 80, 32), log_mel.shape
assert features.griffin_lim(log_mel, n_iter=2).shape == (1, 31 * 256)
assert mu_law_decode(mu_law_encode(wave)).shape == wave.shape
assert mel_cepstrum(wave[0].numpy()).shape[1] == 13
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
