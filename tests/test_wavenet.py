"""WaveNet vocoders: cached generation == the parallel forward, receptive field, mu-law,
Parallel WaveGAN generator and MR-STFT loss, and the training function."""

import math

import pytest
import torch

from multimodal.modalities.audio.wavenet import (MultiResolutionSTFTLoss,
                                                 ParallelWaveGANDiscriminator,
                                                 ParallelWaveGANGenerator, WaveNetVocoder,
                                                 mu_law_decode, mu_law_encode, sample_classes,
                                                 train_vocoder)

HOP = 16


def tiny_wavenet(**kwargs) -> WaveNetVocoder:
    args = dict(residual_channels=8, skip_channels=16, num_layers=5, dilation_cycle=3,
                cond_channels=8, hop_length=HOP)
    return WaveNetVocoder(**{**args, **kwargs}).eval()


def tiny_parallel(**kwargs) -> ParallelWaveGANGenerator:
    args = dict(residual_channels=8, gate_channels=16, skip_channels=8, num_layers=4,
                dilation_cycle=2, cond_channels=8, fold=4, hop_length=64)
    return ParallelWaveGANGenerator(**{**args, **kwargs})


def test_cached_generation_equals_teacher_forced_forward():
    model = tiny_wavenet()
    mel = torch.randn(2, 80, 4)
    classes, logits = model._generate(mel, generator=torch.Generator().manual_seed(3),
                                      keep_logits=True)
    audio = mu_law_decode(classes)
    assert audio.shape == (2, 4 * HOP) and audio.abs().max() <= 1
    with torch.no_grad():
        reference = model(audio, mel).transpose(1, 2)  # (b, t, q)
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-4)
    # the teacher-forced logits with the same uniforms draw the same samples
    uniform = torch.rand(2, 4 * HOP, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sample_classes(reference, uniform), classes)
    # and the public generate() is the same sampler
    again = model.generate(mel, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again, audio)
    other = model.generate(mel, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(other, audio)


def test_generate_naive_equals_generate():
    model = tiny_wavenet()
    mel = torch.randn(1, 80, 3)
    fast = model.generate(mel, generator=torch.Generator().manual_seed(0))
    naive = model.generate_naive(mel, 40, generator=torch.Generator().manual_seed(0))
    assert model.receptive_field < 40  # the window slides
    assert torch.equal(naive, fast[:, :40])


def test_receptive_field():
    model = tiny_wavenet()
    assert model.dilations == (1, 2, 4, 1, 2)
    assert model.receptive_field == 1 + 1 + 2 + 4 + 1 + 2
    torch.manual_seed(0)
    audio = torch.rand(1, 4 * HOP) * 1.6 - 0.8
    mel = torch.randn(1, 80, 1).expand(1, 80, 4).contiguous()  # same frame everywhere
    target = 50
    with torch.no_grad():
        base = model(audio, mel)

        def moved(position):
            changed = audio.clone()
            changed[0, position] = -changed[0, position].sign() * 0.9
            return model(changed, mel)

        far = moved(target - model.receptive_field - 1)
        near = moved(target - model.receptive_field)
    assert torch.equal(far[..., target], base[..., target])
    assert not torch.allclose(near[..., target], base[..., target])
    # causality: output t never sees sample t
    position = target - model.receptive_field
    assert torch.equal(near[..., : position + 1], base[..., : position + 1])


def test_wavenet_stream_is_generate_as_it_is_drawn():
    model = tiny_wavenet()
    mel = torch.randn(2, 80, 5)
    whole = model.generate(mel, generator=torch.Generator().manual_seed(3))
    pieces = list(model.stream(mel, generator=torch.Generator().manual_seed(3), chunk_frames=2))
    assert [tuple(p.shape) for p in pieces] == [(2, 2 * HOP), (2, 2 * HOP), (2, HOP)]
    assert torch.equal(torch.cat(pieces, 1), whole)  # the same draws in the same order
    with pytest.raises(ValueError, match="chunk_frames"):
        next(model.stream(mel, chunk_frames=0))


def test_parallel_stream_equals_forward_and_needs_its_context():
    model = tiny_parallel().eval()
    hop, frames = model.hop_length, 11
    mel = torch.randn(1, 80, frames)
    noise = torch.randn(1, frames * hop, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = model(mel, noise=noise)
        drawn = model(mel, generator=torch.Generator().manual_seed(5))
    pieces = list(model.stream(mel, noise=noise, chunk_frames=3))
    assert [p.shape[-1] for p in pieces] == [3 * hop] * 3 + [2 * hop]
    torch.testing.assert_close(torch.cat(pieces, -1), whole, atol=1e-6, rtol=0)
    # without noise it draws forward's, from the same generator
    torch.testing.assert_close(torch.cat(list(model.stream(
        mel, generator=torch.Generator().manual_seed(5), chunk_frames=4)), -1), drawn,
        atol=1e-6, rtol=0)
    # half the receptive field and the pre-net's frame: one frame less and frames 3..5 differ
    assert model.context_frames == 1 + math.ceil((model.receptive_field - model.fold) / 2 / hop)
    a, z = 3 - (model.context_frames - 1), 6 + (model.context_frames - 1)
    with torch.no_grad():
        short = model(mel[..., a:z], noise=noise[:, a * hop : z * hop])
    assert not torch.allclose(short[:, (3 - a) * hop : (6 - a) * hop], whole[:, 3 * hop : 6 * hop],
                              atol=1e-4)
    with pytest.raises(ValueError, match="chunk_frames"):
        next(model.stream(mel, chunk_frames=0))


def test_mu_law_round_trip_error_bound():
    mu = 255
    x = torch.linspace(-1, 1, 20001)
    classes = mu_law_encode(x)
    assert classes.dtype == torch.long and classes.min() == 0 and classes.max() == mu
    y = mu_law_decode(classes)
    # half a class in the companded domain, times the slope ln(1+mu)/mu (1 + mu|x|)
    bound = math.log1p(mu) / mu / mu * (1 + mu * torch.maximum(x.abs(), y.abs())) * 1.001
    assert ((x - y).abs() <= bound).all()
    assert (x - y).abs().max() < 0.025 and (x - y)[x.abs() < 0.001].abs().max() < 1.2e-4
    assert torch.equal(mu_law_encode(mu_law_decode(torch.arange(256))), torch.arange(256))


def test_parallel_generator_length_and_seeding():
    model = tiny_parallel().eval()
    mel = torch.randn(2, 80, 5)
    with torch.no_grad():
        a = model(mel, generator=torch.Generator().manual_seed(0))
        b = model(mel, generator=torch.Generator().manual_seed(0))
        c = model(mel, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 5 * 64) and a.abs().max() <= 1
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert model.receptive_field == 4 * (1 + 2 * (1 + 2 + 1 + 2))


def test_mr_stft_loss_and_gradient():
    loss = MultiResolutionSTFTLoss()
    torch.manual_seed(0)
    target = torch.randn(2, 2048) * 0.3
    assert loss(target, target).item() == 0.0
    assert loss(target * 0.5, target).item() > 0.1
    model = tiny_parallel(hop_length=64)
    audio = torch.sin(torch.arange(2048) * 0.3).expand(2, 2048) * 0.5
    value = model.loss(audio, torch.randn(2, 80, 32), generator=torch.Generator().manual_seed(0))
    value.backward()
    assert value.item() > 0
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert model.input.weight.grad.abs().sum() > 0
    assert model.conditioning.prenet.weight.grad.abs().sum() > 0


def sine_batch(hop: int, frames: int):
    """Random-phase 500 Hz sines at 16 kHz with a constant mel."""
    t = torch.arange(frames * hop)

    def sample_batch(generator: torch.Generator):
        phase = torch.rand(4, 1, generator=generator) * 2 * math.pi
        audio = 0.5 * torch.sin(2 * math.pi * 500 / 16000 * t + phase)
        return audio, torch.zeros(4, 80, frames)

    return sample_batch


def test_train_wavenet_reduces_loss_and_is_deterministic():
    records = []
    for _ in range(2):
        torch.manual_seed(0)
        model = tiny_wavenet()
        records.append(train_vocoder(model, sine_batch(HOP, 8), steps=60, lr=1e-2,
                                     progress=False))
    losses = [r["loss"] for r in records[0]]
    assert losses == [r["loss"] for r in records[1]]
    assert sum(losses[-5:]) / 5 < 0.7 * losses[0], losses[::10]
    assert set(records[0][0]) >= {"step", "loss", "lr", "grad_norm", "seconds"}


def test_train_parallel_reduces_loss():
    torch.manual_seed(0)
    model = tiny_parallel()
    records = train_vocoder(model, sine_batch(64, 32), steps=30, lr=1e-2, progress=False)
    losses = [r["loss"] for r in records]
    assert sum(losses[-5:]) / 5 < 0.8 * losses[0]


def test_adversarial_training_runs():
    torch.manual_seed(0)
    model = tiny_parallel()
    discriminator = ParallelWaveGANDiscriminator(channels=8, num_layers=4)
    seen = []
    records = train_vocoder(model, sine_batch(64, 32), steps=4, lambda_adv=4.0,
                            adversarial_start=2, discriminator=discriminator,
                            progress=False, log=seen.append)
    assert seen == records
    assert "adversarial" not in records[1] and "adversarial" in records[2]
    assert all(math.isfinite(r["discriminator"]) for r in records[2:])
    assert discriminator(torch.zeros(2, 100)).shape == (2, 100)


def test_bad_inputs_raise():
    wavenet, parallel = tiny_wavenet(), tiny_parallel()
    with pytest.raises(ValueError, match="80 mel bins"):
        wavenet.generate(torch.randn(1, 40, 3))
    with pytest.raises(ValueError, match=r"mel\[None\]"):
        parallel(torch.randn(80, 3))
    with pytest.raises(ValueError, match="aligned"):
        wavenet.loss(torch.zeros(1, 3 * HOP + 1), torch.zeros(1, 80, 3))
    with pytest.raises(ValueError, match="float"):
        parallel(torch.zeros(1, 80, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="fold"):
        ParallelWaveGANGenerator(fold=3)
    with pytest.raises(ValueError, match="temperature"):
        wavenet.generate(torch.zeros(1, 80, 1), temperature=0)
    with pytest.raises(ValueError, match="ParallelWaveGANGenerator"):
        train_vocoder(wavenet, sine_batch(HOP, 4), steps=1, lambda_adv=1.0, progress=False)
    with pytest.raises(ValueError, match="steps"):
        train_vocoder(wavenet, sine_batch(HOP, 4), steps=0, progress=False)


def test_parallel_mel_loss_adds_the_log_mel_distance():
    torch.manual_seed(0)
    plain = tiny_parallel()
    with_mel = tiny_parallel(mel_loss_weight=2.0)
    with_mel.load_state_dict(plain.state_dict())
    mel = torch.randn(2, 80, 20)  # hop 64: 1280 samples, more than the 1024-sample FFT
    audio = 0.3 * torch.sin(torch.arange(2 * 20 * 64, dtype=torch.float32) / 3).reshape(2, -1)
    base = plain.loss(audio, mel, generator=torch.Generator().manual_seed(1))
    total = with_mel.loss(audio, mel, generator=torch.Generator().manual_seed(1))
    assert total > base  # the same noise and weights: the difference is the mel term
    total.backward()
    assert all(p.grad is not None for p in with_mel.parameters())
    with pytest.raises(ValueError, match="mel_loss_weight"):
        tiny_parallel(mel_loss_weight=-1.0)


@pytest.mark.parametrize("make", [tiny_wavenet, tiny_parallel])
def test_vocoder_records_every_constructor_argument(make):
    import inspect

    from multimodal.registry import vocoders

    model = make()
    assert set(model.init_args) == set(inspect.signature(type(model)).parameters)
    rebuilt = type(model)(**model.init_args)  # what a checkpoint rebuilds
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    assert type(model) in {vocoders.get("wavenet"), vocoders.get("parallel_wavegan")}


def test_train_vocoder_follows_the_shared_warm_up_cosine_schedule():
    from multimodal.nn.schedules import cosine_with_warmup

    records = train_vocoder(tiny_parallel(), sine_batch(64, 32), steps=6, lr=1e-2,
                            warmup_steps=2, progress=False)
    assert [r["lr"] for r in records] == pytest.approx(
        [1e-2 * cosine_with_warmup(s, warmup_steps=2, total_steps=6, min_lr_ratio=0.1)
         for s in range(6)], rel=1e-12)
    assert records[1]["lr"] == pytest.approx(1e-2) and records[-1]["lr"] > 1e-3
