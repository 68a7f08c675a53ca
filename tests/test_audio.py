"""Text-to-audio: phoneme front end, alignment search, datasets, the audio tokenizer, training
the tiny config end to end, the pipeline's outputs and its answers to bad input."""

import json
import re

import numpy as np
import pytest
import soundfile as sf
import torch

from multimodal.config import load_config
from multimodal.errors import ConfigError, DataError, InputError
from multimodal.modalities.audio.acoustic import expand, monotonic_alignment_search

from conftest import requires_espeak


# -- alignment ------------------------------------------------------------------------------
def test_monotonic_alignment_search_recovers_block_alignment():
    durations = torch.tensor([[3, 1, 4, 2], [2, 5, 1, 0]])
    mel_lengths, text_lengths = durations.sum(1), torch.tensor([4, 3])
    f = int(mel_lengths.max())
    # log-likelihood high exactly where the frame belongs to the phoneme, with noise
    truth = expand(torch.eye(4).expand(2, 4, 4), durations, f)  # (b, f, n) one-hot
    log_p = 5.0 * truth.transpose(1, 2) + 0.5 * torch.randn(2, 4, f)
    found = monotonic_alignment_search(log_p, text_lengths, mel_lengths)
    assert torch.equal(found, durations)


def test_monotonic_alignment_search_is_surjective_and_monotonic():
    torch.manual_seed(1)
    log_p = torch.randn(3, 7, 20)
    text_lengths, mel_lengths = torch.tensor([7, 5, 2]), torch.tensor([20, 9, 2])
    found = monotonic_alignment_search(log_p, text_lengths, mel_lengths)
    assert torch.equal(found.sum(1), mel_lengths)
    for row, n in zip(found, text_lengths):
        assert (row[:n] >= 1).all() and (row[n:] == 0).all()


def test_expand_repeats_each_phoneme():
    states = torch.arange(3.0)[None, :, None]  # (1, 3, 1)
    out = expand(states, torch.tensor([[2, 0, 3]]), 6)
    assert out[0, :, 0].tolist() == [0, 0, 2, 2, 2, 0]  # the last frame is padding


# -- front end and data ------------------------------------------------------------------------
@requires_espeak
def test_phoneme_tokenizer_and_its_errors():
    from multimodal.modalities.audio.phonemes import PhonemeTokenizer

    tok = PhonemeTokenizer(voices=("en-us", "en-gb"), max_phonemes=40)
    ids = tok.encode("seven", "en-us")
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and "v" in tok.decode(ids)
    assert tok.voice_id("en-gb") == 1 and tok.voice_id(None) == 0
    with pytest.raises(InputError, match="unknown voice 'fr'.*en-us, en-gb"):
        tok.voice_id("fr")
    with pytest.raises(InputError, match="empty"):
        tok.encode("  ")
    with pytest.raises(InputError, match="nothing pronounceable"):
        tok.encode("... !!")
    with pytest.raises(InputError, match="reads at most 40 phonemes per sentence"):
        tok.encode("a rather long sentence that goes on and on and on without any end")


@requires_espeak
def test_espeak_speech_renders_caches_and_splits(tmp_path):
    from multimodal.data.audio import EspeakSpeechDataset

    texts = ["one", "two", "three", "a short phrase", "shirt"]
    kwargs = dict(texts=texts, voices=("en-us", "en-us+f3"), cache_dir=str(tmp_path),
                  val_fraction=0.3)
    train = EspeakSpeechDataset(split="train", **kwargs)
    val = EspeakSpeechDataset(split="val", **kwargs)
    assert len(train) + len(val) == 2 * len(texts)
    assert not set(train.texts) & set(val.texts)  # split by text, not by rendering
    item = train[0]
    assert item["audio"].dtype == torch.float32 and item["audio"].abs().max() <= 1
    assert 0.1 < len(item["audio"]) / 16_000 < 3 and item["phonemes"]
    assert len(list(tmp_path.glob("*.safetensors"))) == 1  # rendered once
    again = EspeakSpeechDataset(split="train", **kwargs)
    assert torch.equal(again[0]["audio"], item["audio"])
    with pytest.raises(DataError, match="espeak-ng failed on voice 'xx-nowhere'"):
        EspeakSpeechDataset(texts=["one"], voices=("xx-nowhere",), cache_dir=str(tmp_path))
    with pytest.raises(DataError, match="no voice variant 'zzz'"):
        EspeakSpeechDataset(texts=["one"], voices=("en-us+zzz",), cache_dir=str(tmp_path))


@requires_espeak
def test_audio_folder_reads_ljspeech_layout_and_reports_bad_lines(tmp_path):
    from multimodal.data.audio import AudioFolderDataset

    (tmp_path / "wavs").mkdir()
    t = np.arange(22050) / 22050
    sf.write(tmp_path / "wavs" / "a1.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32),
             22050)
    sf.write(tmp_path / "wavs" / "a2.wav", np.zeros((8000, 2), np.float32), 16000)
    (tmp_path / "metadata.csv").write_text("a1|Hello there.|Hello there.\na2|Two\n")
    data = AudioFolderDataset(path=str(tmp_path), val_fraction=0.0)
    assert data.texts == ["Hello there.", "Two"] and data.voices == ["speaker"] * 2
    assert len(data[0]["audio"]) == 16000  # resampled from 22,050 Hz
    assert data[1]["audio"].dim() == 1  # stereo mixed to mono
    (tmp_path / "metadata.csv").write_text("a1|Hello\nbroken line\n")
    with pytest.raises(DataError, match="metadata.csv:2: expected 'id|text'"):
        AudioFolderDataset(path=str(tmp_path), val_fraction=0.0)
    (tmp_path / "metadata.csv").write_text("a3|Missing\n")
    with pytest.raises(DataError, match="cannot read .*a3.wav"):
        AudioFolderDataset(path=str(tmp_path), val_fraction=0.0)
    with pytest.raises(DataError, match="LJSpeech layout"):
        AudioFolderDataset(path=str(tmp_path / "nowhere"))


# -- training and generation --------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny config trained for a few steps (vocoders fitted too), in a temporary cache."""
    import os

    from multimodal.training.trainer import Trainer

    if not _espeak():
        pytest.skip("espeak-ng not installed")
    root = tmp_path_factory.mktemp("tta")
    old = os.environ.get("MULTIMODAL_CACHE")
    os.environ["MULTIMODAL_CACHE"] = str(root / "cache")
    try:
        config = load_config("configs/text_to_audio_tiny.yaml")
        result = Trainer(config, out_dir=root / "run", progress=False).fit()
    finally:
        if old is None:
            os.environ.pop("MULTIMODAL_CACHE", None)
        else:
            os.environ["MULTIMODAL_CACHE"] = old
    return root / "run", result


def _espeak():
    import shutil

    return shutil.which("espeak-ng") is not None


def test_tiny_config_trains_and_saves_vocoders(tiny_run):
    from multimodal.checkpoint import find_checkpoint

    run, result = tiny_run
    assert np.isfinite(result["loss"]) and result["val_audio_mel_l1"] > 0
    ckpt = find_checkpoint(run)
    files = {p.name for p in (ckpt / "tokenizers" / "audio").iterdir()}
    assert {"mel.json", "parallel.safetensors", "autoregressive.safetensors"} <= files


@pytest.mark.parametrize("vocoder", ["parallel", "autoregressive", "griffin-lim"])
def test_pipeline_writes_wav_at_declared_rate_and_is_seeded(tiny_run, vocoder):
    from multimodal.pipelines import load_pipeline

    pipe = load_pipeline("text-to-audio", tiny_run[0])
    a = pipe("seven", vocoder=vocoder, seed=3, progress=False)
    b = pipe("seven", vocoder=vocoder, seed=3, progress=False)
    assert np.array_equal(a.audios[0], b.audios[0])
    assert a.sample_rate == 16_000 and np.abs(a.audios[0]).max() == pytest.approx(0.95)
    frames = a.mels[0].shape[-1]
    assert len(a.audios[0]) == frames * pipe.audio.hop_length
    if vocoder != "griffin-lim":
        c = pipe("seven", vocoder=vocoder, seed=4, progress=False)
        assert not np.array_equal(a.audios[0], c.audios[0])


def test_cli_generate_writes_wav_and_sidecar(tiny_run, tmp_path, capsys):
    from multimodal.cli import main

    out = tmp_path / "out"
    assert main(["generate", "text-to-audio", "--checkpoint", str(tiny_run[0]), "--prompt",
                 "seven. eight!", "--voice", "en-us+f3", "--seed", "1", "--num-samples", "2",
                 "--out", str(out), "--no-progress"]) == 0
    audio, rate = sf.read(out / "001.wav", dtype="int16")
    info = sf.info(out / "000.wav")
    assert rate == 16_000 and info.subtype == "PCM_16" and info.channels == 1
    meta = json.loads((out / "000.json").read_text())
    assert meta["prompt"] == "seven. eight!" and meta["voice"] == "en-us+f3"
    assert meta["seed"] == 1 and meta["sample_rate"] == 16_000
    assert meta["seconds"] == pytest.approx(info.frames / 16_000, abs=1e-3)
    assert "(" not in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--prompt", ""], "the prompt is empty"),
    (["--prompt", "hi", "--device", "tpu"], "unknown device 'tpu'"),
    (["--prompt", "?!..."], "nothing pronounceable"),
    (["--prompt", "hi", "--voice", "en-gb"], "unknown voice 'en-gb'; this model knows: en-us"),
    (["--prompt", "hi", "--vocoder", "melgan"], "unknown vocoder 'melgan'; this model has"),
    (["--prompt", "word " * 60], "this model reads at most"),
    (["--prompt", "hi", "--length-scale", "0"], "length_scale must be a number in"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(tiny_run, tmp_path, capsys, args,
                                                       message):
    from multimodal.cli import main

    out = tmp_path / "out"
    assert main(["generate", "text-to-audio", "--checkpoint", str(tiny_run[0]), "--out",
                 str(out), "--no-progress", *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def _log_mel_distance(features, a, b) -> float:
    """Mean absolute difference of two waveforms' log-mels (natural log)."""
    return float((features(torch.as_tensor(a)) - features(torch.as_tensor(b))).abs().mean())


@pytest.mark.parametrize("vocoder", ["parallel", "autoregressive", "griffin-lim"])
def test_chunk_callback_streams_the_waveform_as_it_is_made(tiny_run, vocoder):
    from multimodal.pipelines import load_pipeline
    from multimodal.pipelines.text_to_audio import peak_normalise

    pipe = load_pipeline("text-to-audio", tiny_run[0])
    pieces = []
    slow = {"vocoder": vocoder, "length_scale": 4.0, "progress": False}  # > 16 frames
    streamed = pipe("seven", seed=3, **slow,
                    chunk_callback=lambda index, audio: pieces.append((index, audio)))
    whole = pipe("seven", seed=3, **slow)
    assert {index for index, _ in pieces} == {0} and len(pieces) > 2
    assert all(a.dtype == np.float32 and a.ndim == 1 for _, a in pieces)
    # the pieces are the waveform before its peak normalisation
    np.testing.assert_array_equal(peak_normalise(np.concatenate([a for _, a in pieces])),
                                  streamed.audios[0])
    assert streamed.audios[0].shape == whole.audios[0].shape
    if vocoder == "autoregressive":  # its samples as they are drawn
        np.testing.assert_array_equal(streamed.audios[0], whole.audios[0])
    elif vocoder == "parallel":  # windows with the context of its receptive field
        np.testing.assert_allclose(streamed.audios[0], whole.audios[0], atol=1e-5, rtol=0)
    else:  # windowed Griffin-Lim: the whole clip's spectrum with phases of its own
        features = pipe.audio.features
        other_seed = pipe("seven", seed=4, **slow)
        assert _log_mel_distance(features, streamed.audios[0], whole.audios[0]) < \
            _log_mel_distance(features, other_seed.audios[0], whole.audios[0])


def test_chunk_callback_names_each_waveform_of_a_call(tiny_run):
    from multimodal.pipelines import load_pipeline
    from multimodal.pipelines.text_to_audio import peak_normalise

    pipe = load_pipeline("text-to-audio", tiny_run[0])
    pieces = []
    out = pipe(["seven", "six"], num_samples=2, seed=1, progress=False,
               chunk_callback=lambda index, audio: pieces.append((index, audio)))
    indices = [index for index, _ in pieces]
    assert indices == sorted(indices) and set(indices) == {0, 1, 2, 3}  # one after the other
    for i, audio in enumerate(out.audios):
        joined = np.concatenate([a for index, a in pieces if index == i])
        np.testing.assert_array_equal(peak_normalise(joined), audio)
    with pytest.raises(InputError, match="chunk_callback must be a function"):
        pipe("seven", chunk_callback="print", progress=False)


def test_griffin_lim_stream_keeps_the_whole_clips_spectrum():
    """Windowed Griffin-Lim (RTISI-LA's commit and look-ahead) is not the whole clip's samples,
    but its spectrum: as close to the target magnitudes, and nearer the whole clip's log-mel
    than the whole clip with another seed; a piece depends on no frame past its window."""
    import math

    from multimodal.modalities.audio.features import LogMel
    from multimodal.nn import dsp

    features = LogMel()
    t = torch.arange(24_000, dtype=torch.float64) / 16_000
    phase = 2 * math.pi * (150 * t + 40 * t ** 2)  # a voice-like gliding tone, 11 harmonics
    wave = sum(0.3 / k * torch.sin(k * phase) for k in range(1, 12))
    log_mel = features((wave * (0.6 + 0.4 * torch.sin(2 * math.pi * 3 * t))).float())
    whole = features.griffin_lim(log_mel, generator_seed=0)
    pieces = list(features.griffin_lim_stream(log_mel, generator_seed=0))
    streamed = torch.cat(pieces, -1)
    assert streamed.shape == whole.shape
    assert [p.shape[-1] for p in pieces[:-1]] == [16 * 256] * (len(pieces) - 1)
    target = dsp.inverse_mel_scale(log_mel.exp(), features.mel.fb)

    def convergence(x):  # spectral convergence to the target magnitudes
        spec = torch.stft(x, 1024, 256, 1024, features.mel.window, return_complex=True).abs()
        return float(torch.linalg.norm(spec - target) / torch.linalg.norm(target))

    assert convergence(streamed) <= convergence(whole) + 0.02  # measured +0.008
    other_seed = features.griffin_lim(log_mel, generator_seed=1)
    assert _log_mel_distance(features, streamed, whole) < \
        _log_mel_distance(features, other_seed, whole)  # measured 0.044 < 0.075
    assert not torch.allclose(streamed, whole, atol=1e-2)  # not the same samples
    changed = log_mel.clone()
    changed[..., 16 + 8 :] = -5.0  # past the first piece and its look-ahead
    assert torch.equal(next(features.griffin_lim_stream(changed, generator_seed=0)), pieces[0])
    with pytest.raises(ValueError, match="lookahead_frames"):
        next(features.griffin_lim_stream(log_mel, lookahead_frames=1))


def test_long_text_is_spoken_sentence_by_sentence(tiny_run):
    from multimodal.pipelines import load_pipeline

    pipe = load_pipeline("text-to-audio", tiny_run[0])
    text = ". ".join(["one two three four five six seven"] * 6) + "."
    chunks = pipe.phoneme_chunks(text, "en-us")
    assert len(chunks) > 1 and all(len(c) <= pipe.max_phonemes for c in chunks)
    out = pipe(text, vocoder="griffin-lim", seed=0, progress=False)
    assert len(out.audios[0]) > 16_000


def test_log_mel_tokenizer_round_trips_through_a_checkpoint(tiny_run):
    from multimodal.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tiny_run[0])
    audio = ckpt.tokenizers["audio"]
    assert audio.is_trained and audio.available_vocoders == ["parallel", "autoregressive",
                                                             "griffin-lim"]
    wave = torch.sin(torch.arange(4096) / 5.0) * 0.5
    mel = audio.encode(wave)
    assert mel.shape == (1, 80, 4096 // 256 + 1)
    assert audio.decode(mel[..., :8], vocoder="parallel").shape == (1, 8 * 256)
    with pytest.raises(InputError, match="mel must be"):
        audio.decode(mel[0])


def test_shipped_audio_configs_validate():
    config = load_config("configs/text_to_audio_speech.yaml")
    assert config["decoders"]["audio"]["type"] == "mel_decoder"
    tiny = load_config("configs/text_to_audio_tiny.yaml")
    assert tiny["tokenizers"]["audio"]["type"] == "log_mel"


@pytest.mark.slow  # runs an example
def test_text_to_audio_example(tiny_run, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "examples" / "text_to_audio.py"), "nine",
                          "--checkpoint", str(tiny_run[0]), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, cwd=root)
    assert out.returncode == 0, out.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"parallel.wav", "autoregressive.wav",
                                                   "griffin-lim.wav"}
    assert "phonemes: nˈaɪn" in out.stdout


@pytest.mark.slow  # an evaluation
def test_evaluate_reports_every_vocoder_and_the_reference(tiny_run, tmp_path, monkeypatch):
    from multimodal.evaluation import evaluate
    from multimodal.evaluation.audio import mel_cepstral_distortion

    monkeypatch.setenv("MULTIMODAL_CACHE", str(tmp_path))
    settings = {"seen_words": 2, "unseen_words": 2, "epochs": 2, "width": 8,
                "voices": ["en-us+m1"], "speeds": [175]}
    report = evaluate("text-to-audio", checkpoint=tiny_run[0], num_samples=4, seed=0,
                      recogniser_settings=settings, autoregressive_samples=1, progress=False)
    assert set(report["vocoders"]) == {"parallel", "autoregressive", "griffin-lim"}
    assert len(report["words"]) == 4 and 0 <= report["real_espeak"]["word_accuracy"] <= 1
    for figures in report["vocoders"].values():
        assert figures["mcd_db"] > 0 and figures["real_time_factor"] > 0
    assert isinstance(report["quality_bar_met"], bool)
    wave = np.sin(np.arange(8000) / 7.0).astype(np.float32)
    assert mel_cepstral_distortion(wave, wave) == pytest.approx(0.0, abs=1e-6)


def test_vocoders_load_as_built_even_if_defaults_change(tmp_path):
    from multimodal.modalities.audio.tokenizer import LogMelTokenizer
    from multimodal.modalities.audio.wavenet import VocoderFitSettings, WaveNetVocoder

    built = LogMelTokenizer(vocoders={"autoregressive": WaveNetVocoder(
        residual_channels=8, skip_channels=8, num_layers=3, cond_channels=8)},
        default_vocoder="autoregressive")
    built.save(tmp_path)
    meta = json.loads((tmp_path / "mel.json").read_text())
    assert meta["vocoder_args"]["autoregressive"]["type"] == "wavenet"
    # a config that leaves the sizes to the code's defaults (which may have moved since)
    loaded = LogMelTokenizer.load(tmp_path, vocoders={"autoregressive": WaveNetVocoder()},
                                  vocoder_fit={"autoregressive": {"steps": 5}},
                                  default_vocoder="autoregressive")
    assert len(loaded.vocoders["autoregressive"].dilated) == 3
    assert loaded.fit_settings["autoregressive"] == VocoderFitSettings(steps=5)


def test_log_mel_takes_built_vocoders_and_checks_them():
    from multimodal.modalities.audio.tokenizer import LogMelTokenizer
    from multimodal.modalities.audio.wavenet import ParallelWaveGANGenerator, VocoderFitSettings

    fit = VocoderFitSettings(steps=3, lr=3e-3)
    tok = LogMelTokenizer(vocoders={"parallel": ParallelWaveGANGenerator(num_layers=2)},
                          vocoder_fit={"parallel": fit})
    assert tok.available_vocoders == ["parallel", "griffin-lim"]
    assert tok.fit_settings["parallel"] is fit
    with pytest.raises(ValueError, match="mel_channels=80 .*n_mels=64"):
        LogMelTokenizer(n_mels=64, vocoders={"parallel": ParallelWaveGANGenerator()})
    with pytest.raises(ValueError, match="vocoder_fit names 'autoregressive'"):
        LogMelTokenizer(vocoders={"parallel": ParallelWaveGANGenerator()},
                        vocoder_fit={"autoregressive": {"steps": 1}})
    with pytest.raises(ValueError, match="default_vocoder is 'autoregressive'"):
        LogMelTokenizer(vocoders={"parallel": ParallelWaveGANGenerator()},
                        default_vocoder="autoregressive")


def test_log_mel_config_of_the_old_layout_names_the_new_one():
    from multimodal.config import validate_config
    from multimodal.testing import tiny_audio_config

    config = tiny_audio_config()
    validate_config(config)
    audio = config["tokenizers"]["audio"]
    audio.pop("vocoders"), audio.pop("vocoder_fit")
    audio["parallel"] = {"residual_channels": 8, "steps": 4}
    with pytest.raises(ConfigError, match=r"tokenizers\.audio\.parallel.*vocoders: "
                                          r"\{parallel: \{type: parallel_wavegan"):
        validate_config(config)
    audio.pop("parallel")
    audio["vocoders"] = {"parallel": {"type": "parallel_wavegan", "steps": 4}}
    with pytest.raises(ConfigError, match=r"tokenizers\.audio\.vocoders\.parallel\.steps"):
        validate_config(config)


@requires_espeak
def test_every_english_phoneme_espeak_prints_is_in_the_table():
    from multimodal.modalities.audio.phonemes import PhonemeTokenizer, phonemize

    tok = PhonemeTokenizer()
    for voice in ("en-us", "en-gb"):
        ipa = phonemize("Three thin things: the quick brown fox jumps over a lazy dog, "
                        "measure, judge, church, sing, yes, hour, ochre, bird, cure.", voice)
        assert tok.unknown_symbols(ipa) == [], voice


# -- your own voice: the speaker and the phoneme language are two things ---------------------
@pytest.fixture(scope="module")
def own_voice_folder(tmp_path_factory):
    from multimodal.data.audio import speak

    if not _espeak():
        pytest.skip("espeak-ng not installed")
    root = tmp_path_factory.mktemp("me")
    (root / "wavs").mkdir()
    lines = []
    for k, text in enumerate(["one", "two", "three", "four", "five", "six", "seven", "eight"]):
        wave, _ = speak(text, "en-gb")  # stands in for recordings of a speaker called "me"
        sf.write(root / "wavs" / f"c{k}.wav", wave, 16000)
        lines.append(f"c{k}|{text}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def _own_voice_config(folder, language="en-gb", *more):
    return load_config("configs/text_to_audio_tiny.yaml", [
        "tokenizers.phonemes.voices=[me]", f"tokenizers.phonemes.languages={{me: {language}}}",
        f"data.audio={{type: audio_folder, path: {folder}, voice: me, language: en-gb, "
        "val_fraction: 0.25}", *more])


def test_an_own_voice_folder_trains_and_generates_under_the_speakers_name(own_voice_folder,
                                                                          tmp_path, capsys):
    from multimodal.pipelines import load_pipeline
    from multimodal.training.trainer import train

    config = _own_voice_config(own_voice_folder, "en-gb", "train.max_steps=2",
                               "train.eval_every=2", "train.checkpoint_every=2")
    result = train(config, out_dir=tmp_path / "run", progress=False)
    pipe = load_pipeline("text-to-audio", checkpoint=result["checkpoint"])
    assert pipe.voices == ["me"]
    out = pipe("nine", voice="me", seed=0, vocoder="griffin-lim", progress=False)
    assert out.metadata(0)["voice"] == "me" and out.metadata(0)["language"] == "en-gb"
    assert np.isfinite(out.audios[0]).all() and np.abs(out.audios[0]).max() > 0
    with pytest.raises(InputError, match="unknown voice 'en-us'.*knows: me"):
        pipe("nine", voice="en-us", progress=False)
    from multimodal.cli import main
    assert main(["list", "voices", "--checkpoint", str(tmp_path / "run")]) == 0
    assert re.search(r"^\s+me\s+en-gb$", capsys.readouterr().out, re.M)


def test_a_speaker_phonemised_in_another_language_than_the_tokenizer_says_is_refused(
        own_voice_folder, tmp_path):
    from multimodal.modalities.audio.phonemes import PhonemeTokenizer
    from multimodal.training.trainer import Trainer

    tok = PhonemeTokenizer(voices=("me", "en-us"), languages={"me": "en-gb"})
    assert tok.language_of("me") == "en-gb" and tok.language_of("en-us") == "en-us"
    assert tok.language_of(None) == "en-gb"
    with pytest.raises(ValueError, match="languages names 'you'"):
        PhonemeTokenizer(voices=("me",), languages={"you": "en-gb"})
    with pytest.raises(DataError, match=r"phonemised in 'en-gb'.*languages: \{me: en-gb\}"):
        Trainer(_own_voice_config(own_voice_folder, "en-us"), out_dir=tmp_path / "r",
                progress=False)
    assert not (tmp_path / "r").exists()  # a failed set-up leaves no folder behind


def test_an_unlisted_voice_is_refused_before_the_vocoders_fit(own_voice_folder, tmp_path,
                                                             monkeypatch):
    from multimodal.modalities.audio.tokenizer import LogMelTokenizer
    from multimodal.training.trainer import Trainer

    def no_fit(*args, **kwargs):
        raise AssertionError("the vocoders began to fit before the data was checked")

    monkeypatch.setattr(LogMelTokenizer, "fit", no_fit)
    config = load_config("configs/text_to_audio_tiny.yaml", [
        f"data.audio={{type: audio_folder, path: {own_voice_folder}, voice: me, "
        "language: en-gb, val_fraction: 0.25}"])
    with pytest.raises(DataError, match="voice 'me'.*do not list.*tokenizers.phonemes.voices"):
        Trainer(config, out_dir=tmp_path / "r", progress=False)
