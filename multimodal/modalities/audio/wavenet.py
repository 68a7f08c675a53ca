"""WaveNet-style vocoders: normalised log-mel -> 16 kHz waveform.

Two vocoders share one building block, the gated dilated residual layer of WaveNet
(van den Oord et al. 2016, "WaveNet: A Generative Model for Raw Audio",
https://arxiv.org/abs/1609.03499, sections 2.3-2.5): a dilated convolution, the gated unit
``tanh(W_f * x + V_f c) * sigmoid(W_g * x + V_g c)`` with local conditioning ``c`` (the mel,
upsampled to the rate of the stack), and 1x1 convolutions to a residual and a skip path.

* :class:`WaveNetVocoder` is the autoregressive WaveNet: causal convolutions of kernel size 2
  with dilations ``1, 2, 4, ..., 2**(dilation_cycle - 1)`` repeated, and a 256-way softmax over
  mu-law classes of the next sample. :meth:`WaveNetVocoder.generate` is Fast WaveNet (Paine et
  al. 2016, "Fast Wavenet Generation Algorithm", https://arxiv.org/abs/1611.09482): each layer
  keeps a queue of its past inputs, so a sample costs O(layers) small matmuls instead of a
  forward over the whole receptive field (:meth:`WaveNetVocoder.generate_naive`).
* :class:`ParallelWaveGANGenerator` is the non-autoregressive generator of Parallel WaveGAN
  (Yamamoto et al. 2020, https://arxiv.org/abs/1910.11480): a non-causal dilated stack of the
  same layers maps Gaussian noise and the mel to all samples at once. It is trained with the
  multi-resolution STFT loss (:class:`MultiResolutionSTFTLoss`, section 2.3) and optionally
  with the LSGAN loss of :class:`ParallelWaveGANDiscriminator` (section 2.2). To be cheap on
  CPUs the stack runs at ``16000 / fold`` Hz: ``fold`` consecutive samples are folded into
  channels (space-to-depth) at the input and unfolded at the output.

Both are registered ``vocoders`` (``wavenet``, ``parallel_wavegan``), held by the audio
tokenizer (:class:`~multimodal.modalities.audio.tokenizer.LogMelTokenizer`). Both take a
NORMALISED log-mel (``features.LogMel`` output standardised per bin to zero mean and unit
variance) with frame ``i`` conditioning samples ``[i * hop_length, (i + 1) * hop_length)``, and
return audio of ``frames * hop_length`` samples in [-1, 1] at 16 kHz.
:func:`train_vocoder` trains either, with the settings of :class:`VocoderFitSettings`.

Both also stream (``stream``: the samples in pieces as they are made): the WaveNet's pieces
are its samples as they are drawn (exactly :meth:`WaveNetVocoder.generate`'s); Parallel
WaveGAN runs window by window, each window with the frames its receptive field needs on each
side (:attr:`ParallelWaveGANGenerator.context_frames`), so the pieces are the whole clip's
samples up to float rounding.

Axes: b batch, t samples, m mel bins, f frames, c channels, l layers, q mu-law classes,
r samples folded into one step of the parallel stack.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from tqdm.auto import tqdm

from multimodal.modalities.audio.features import LogMel
from multimodal.nn import dsp
from multimodal.nn.schedules import cosine_with_warmup
from multimodal.registry import vocoders

MEL_CHANNELS = 80
HOP_LENGTH = 256


def mu_law_encode(audio: torch.Tensor, quantization_channels: int = 256) -> torch.Tensor:
    """Waveform in [-1, 1] -> mu-law classes (long) in ``[0, quantization_channels)``
    (ITU-T G.711 companding, WaveNet section 2.2; :func:`multimodal.nn.dsp.mu_law_encoding`)."""
    return dsp.mu_law_encoding(audio.clamp(-1.0, 1.0), quantization_channels)


def mu_law_decode(classes: torch.Tensor, quantization_channels: int = 256) -> torch.Tensor:
    """Mu-law classes -> waveform in [-1, 1] (the inverse of :func:`mu_law_encode` up to the
    quantisation error, at most ``ln(1 + mu) / mu**2 * (1 + mu |x|)`` with ``mu = q - 1``)."""
    return dsp.mu_law_decoding(classes, quantization_channels)


def check_mel(mel: torch.Tensor, mel_channels: int, name: str = "mel") -> None:
    """Raise ``ValueError`` unless ``mel`` is a float tensor (b, mel_channels, f) with f >= 1."""
    if not torch.is_tensor(mel):
        raise TypeError(f"{name} must be a torch.Tensor (b, {mel_channels}, frames), "
                        f"got {type(mel).__name__}")
    if mel.dim() != 3 or mel.shape[1] != mel_channels or mel.shape[2] < 1:
        hint = " (add a batch axis with mel[None])" if mel.dim() == 2 else ""
        raise ValueError(f"{name} must have shape (batch, {mel_channels} mel bins, frames >= 1), "
                         f"got {tuple(mel.shape)}{hint}")
    if not mel.is_floating_point():
        raise ValueError(f"{name} must be a float tensor (normalised log-mel), got {mel.dtype}")


def check_audio(audio: torch.Tensor, mel: torch.Tensor, hop_length: int) -> None:
    """Raise ``ValueError`` unless ``audio`` is (b, frames * hop_length) float aligned with
    ``mel`` (b, m, frames)."""
    if not torch.is_tensor(audio) or audio.dim() != 2 or not audio.is_floating_point():
        shape = tuple(audio.shape) if torch.is_tensor(audio) else type(audio).__name__
        raise ValueError(f"audio must be a float tensor (batch, samples), got {shape}")
    expected = (mel.shape[0], mel.shape[2] * hop_length)
    if tuple(audio.shape) != expected:
        raise ValueError(f"audio {tuple(audio.shape)} is not aligned with mel "
                         f"{tuple(mel.shape)}: a mel of f frames conditions exactly "
                         f"f * hop_length ({hop_length}) samples, so audio must be {expected}")


class MelConditioning(nn.Module):
    """Per-layer local conditioning at FRAME rate: normalised mel (b, m, f) -> (b, l, c, f).

    A kernel-3 convolution over frames (so each frame sees its neighbours) with a leaky ReLU,
    then one 1x1 convolution holding the projections ``V_f, V_g`` of every layer. The stacks
    repeat each frame over its samples, which costs nothing compared with projecting at
    sample rate.
    """

    def __init__(self, *, mel_channels: int, hidden_channels: int, num_layers: int,
                 out_channels: int):
        super().__init__()
        self.num_layers, self.out_channels = num_layers, out_channels
        self.prenet = nn.Conv1d(mel_channels, hidden_channels, 3, padding=1)
        self.project = nn.Conv1d(hidden_channels, num_layers * out_channels, 1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        cond = self.project(F.leaky_relu(self.prenet(mel), 0.2))  # (b, l*c, f)
        return rearrange(cond, "b (l c) f -> b l c f", l=self.num_layers)


def add_per_frame(h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """``h`` (b, c, f * k) + ``cond`` (b, c, f) repeated k times per frame, without
    materialising the repeat."""
    b, c, f = cond.shape
    return (h.view(b, c, f, -1) + cond[..., None]).view(b, c, -1)


def gated(h: torch.Tensor) -> torch.Tensor:
    """WaveNet's gated activation: (b, 2c, t) -> tanh(first half) * sigmoid(second half)."""
    a, g = h.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(g)


def sample_classes(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: logits (..., q) and one uniform (...) in [0, 1) per draw ->
    classes (...) long. Cached, naive and teacher-forced paths draw alike from equal uniforms."""
    cdf = logits.softmax(-1).cumsum(-1)
    return (cdf < uniform[..., None]).sum(-1).clamp(max=logits.shape[-1] - 1)


def fast_wavenet_step(current: torch.Tensor, pasts: list[torch.Tensor], cond: torch.Tensor,
                      uniform: torch.Tensor, weights: tuple
                      ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """One sample of Fast WaveNet for a batch: O(layers) matmuls of (b, 2c) rows.

    Args:
        current: (b,) class of the previous sample.
        pasts: Per layer, its input ``dilation`` samples ago (b, c) (the queue heads).
        cond: (l, b, 2c) conditioning of this sample's frame, biases folded in.
        uniform: (b,) the draw of this sample.
        weights: From ``WaveNetVocoder._step_weights``.

    Returns:
        ``(classes (b,), logits (b, q), inputs)``: ``inputs[i]`` (b, c) is layer i's input now,
        to push on its queue.
    """
    embedding, fused, residual, w_skip, w1, b1, w2, b2 = weights
    c = embedding.shape[1]
    x = embedding.index_select(0, current)  # (b, c)
    inputs, gates = [], []
    for i, past in enumerate(pasts):
        inputs.append(x)
        # both taps of the dilated convolution in one matmul: [x_{t-d}, x_t] @ W
        h = torch.tanh(torch.addmm(cond[i], torch.cat((past, x), 1), fused[i]))  # (b, 2c)
        a = h[:, :c]
        z = torch.addcmul(a, a, h[:, c:])  # 2 tanh(a) sigmoid(g); 0.5 is in the 1x1s
        gates.append(z)
        if i < len(residual):
            x = torch.addmm(x, z, residual[i])
    skip = torch.cat(gates, 1).mm(w_skip).relu()  # every layer's skip in one matmul (b, s)
    logits = torch.addmm(b2, torch.addmm(b1, skip, w1).relu(), w2)  # (b, q)
    return sample_classes(logits, uniform), logits, inputs


_COMPILED_STEP = None


def compiled_wavenet_step():
    """:func:`fast_wavenet_step` through ``torch.compile`` (inductor, C++ wrapper: the Python
    overhead of ~50 small kernels per sample is what it removes)."""
    global _COMPILED_STEP
    if _COMPILED_STEP is None:
        _COMPILED_STEP = torch.compile(fast_wavenet_step, dynamic=False, fullgraph=True,
                                       options={"cpp_wrapper": True})
    return _COMPILED_STEP


# --------------------------------------------------------------------------------------------
# Autoregressive WaveNet
# --------------------------------------------------------------------------------------------
@vocoders.register("wavenet")
class WaveNetVocoder(nn.Module):
    """Autoregressive WaveNet conditioned on a normalised log-mel.

    ``p(x_t | x_<t, mel)`` is a softmax over ``quantization_channels`` mu-law classes. The
    input sample enters through an embedding of its class (a 1x1 convolution of the one-hot
    input); then ``num_layers`` causal layers of kernel size 2 with dilations
    ``2**(i % dilation_cycle)``; the skip sum goes through ReLU, 1x1 (skip -> skip), ReLU,
    1x1 (skip -> q).

    Args:
        residual_channels: Width of the residual path ``c`` (default 32).
        skip_channels: Width of the skip path and the output head (default 64).
        num_layers: Dilated layers (default 20).
        dilation_cycle: Layers per doubling cycle: dilations 1, 2, ..., 2**(cycle - 1), then
            again (default 10: 1 ... 512 twice, a receptive field of 2,047 samples = 128 ms).
        cond_channels: Width of the mel pre-net (default 64).
        mel_channels: Mel bins ``m`` (default 80).
        hop_length: Samples per mel frame (default 256).
        quantization_channels: Mu-law classes ``q`` (default 256).

    The defaults are sized for a ~15-minute CPU training (see ``benchmarks/text_to_audio.py``).
    """

    def __init__(self, *, residual_channels: int = 32, skip_channels: int = 64,
                 num_layers: int = 20, dilation_cycle: int = 10, cond_channels: int = 64,
                 mel_channels: int = MEL_CHANNELS, hop_length: int = HOP_LENGTH,
                 quantization_channels: int = 256):
        super().__init__()
        for name, value in (("residual_channels", residual_channels),
                            ("skip_channels", skip_channels), ("num_layers", num_layers),
                            ("dilation_cycle", dilation_cycle), ("cond_channels", cond_channels),
                            ("hop_length", hop_length)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if quantization_channels < 2:
            raise ValueError(f"quantization_channels must be >= 2, got {quantization_channels}")
        # every constructor argument, so a checkpoint rebuilds this vocoder as it was
        self.init_args = dict(residual_channels=residual_channels, skip_channels=skip_channels,
                              num_layers=num_layers, dilation_cycle=dilation_cycle,
                              cond_channels=cond_channels, mel_channels=mel_channels,
                              hop_length=hop_length,
                              quantization_channels=quantization_channels)
        self.residual_channels, self.skip_channels = residual_channels, skip_channels
        self.mel_channels, self.hop_length = mel_channels, hop_length
        self.quantization_channels = quantization_channels
        self.dilations = tuple(2 ** (i % dilation_cycle) for i in range(num_layers))
        c = residual_channels
        self.embedding = nn.Embedding(quantization_channels, c)
        self.conditioning = MelConditioning(mel_channels=mel_channels,
                                            hidden_channels=cond_channels,
                                            num_layers=num_layers, out_channels=2 * c)
        self.dilated = nn.ModuleList(nn.Conv1d(c, 2 * c, 2, dilation=d) for d in self.dilations)
        # residual + skip in one 1x1 convolution; the last layer has no residual output
        self.outputs = nn.ModuleList(
            nn.Conv1d(c, (c if i < num_layers - 1 else 0) + skip_channels, 1, bias=False)
            for i in range(num_layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv1d(skip_channels, skip_channels, 1),
                                  nn.ReLU(), nn.Conv1d(skip_channels, quantization_channels, 1))

    @property
    def receptive_field(self) -> int:
        """Past samples the prediction of sample t sees: samples ``t - receptive_field .. t - 1``
        (``1 + sum(dilations)``: each kernel-2 layer reaches ``dilation`` further back, and the
        input is the previous sample)."""
        return 1 + sum(self.dilations)

    # -- training ---------------------------------------------------------------------------
    def _stack(self, inputs: torch.Tensor, cond: torch.Tensor,
               frame_index: torch.Tensor | None = None) -> torch.Tensor:
        """Input classes (b, t) -> logits (b, q, t). ``cond`` (b, l, 2c, f): per-layer
        conditioning at frame rate; each frame covers ``hop_length`` consecutive samples, or
        the frames ``frame_index`` (t,) name for each sample."""
        x = self.embedding(inputs).transpose(1, 2)  # (b, c, t)
        skip = 0
        c = self.residual_channels
        for i, (dilated, output) in enumerate(zip(self.dilated, self.outputs)):
            h = dilated(F.pad(x, (self.dilations[i], 0)))  # causal: left padding only
            if frame_index is None:
                h = add_per_frame(h, cond[:, i])
            else:
                h = h + cond[:, i].index_select(-1, frame_index)
            out = output(gated(h))
            if i < len(self.dilated) - 1:
                x = x + out[:, :c]
                out = out[:, c:]
            skip = skip + out
        return self.head(skip)

    def forward(self, audio: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits.

        Args:
            audio: (b, t) waveform in [-1, 1] at 16 kHz, ``t = f * hop_length``.
            mel: (b, m, f) normalised log-mel.

        Returns:
            (b, q, t) logits; ``logits[..., t]`` predicts the mu-law class of sample ``t`` from
            samples ``< t`` (the input is shifted right by one sample, starting from silence).

        Raises:
            ValueError: a mel of the wrong shape or audio not aligned with it.
        """
        check_mel(mel, self.mel_channels)
        check_audio(audio, mel, self.hop_length)
        classes = mu_law_encode(audio, self.quantization_channels)
        silence = mu_law_encode(audio.new_zeros(audio.shape[0], 1), self.quantization_channels)
        inputs = torch.cat([silence, classes[:, :-1]], dim=1)  # (b, t): sample t-1 at t
        return self._stack(inputs, self.conditioning(mel))

    def loss(self, audio: torch.Tensor, mel: torch.Tensor, *,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean cross-entropy (nats per sample) of the mu-law classes of ``audio`` (b, t) given
        ``mel`` (b, m, t // hop_length). ``generator`` is unused (the loss is deterministic)."""
        logits = self(audio, mel)
        return F.cross_entropy(logits, mu_law_encode(audio, self.quantization_channels))

    # -- sampling -----------------------------------------------------------------------------
    def _uniforms(self, batch: int, num_samples: int, generator: torch.Generator | None,
                  device: torch.device) -> torch.Tensor:
        uniform = torch.rand(batch, num_samples, generator=generator,
                             device=generator.device if generator is not None else device)
        return uniform.to(device)

    # generate's default for ``compile``: set by :meth:`compile`
    compile_generation: bool = False

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """``nn.Module.compile`` (the teacher-forced forward of training), and from now on
        :meth:`generate`'s per-sample step compiled too (its ``compile`` default), the part
        sampling spends its time in: with inductor, torch.compile's default backend (the
        step is compiled with inductor's C++ wrapper whatever the options); any other
        backend leaves the step as it is."""
        super().compile(*args, **kwargs)
        self.compile_generation = kwargs.get("backend", "inductor") == "inductor"

    @torch.inference_mode()
    def generate(self, mel: torch.Tensor, *, generator: torch.Generator | None = None,
                 temperature: float = 1.0, progress: bool = False,
                 compile: bool | None = None) -> torch.Tensor:
        """Fast WaveNet sampling (Paine et al. 2016) with per-layer queues.

        Args:
            mel: (b, m, f) normalised log-mel.
            generator: Source of the one uniform draw per sample (default: torch's global).
            temperature: Softmax temperature (default 1.0; lower is less noisy).
            progress: Show a tqdm bar (updated once per frame).
            compile: Run the per-sample step through ``torch.compile`` with inductor's C++
                wrapper (about 2x faster per sample on CPUs, but ~15-20 s to compile once per
                process, model size and batch size: worth it from a few seconds of audio);
                default: whether :meth:`compile` was called.

        Returns:
            (b, f * hop_length) waveform in [-1, 1] at 16 kHz.

        Raises:
            ValueError: a mel of the wrong shape, or ``temperature <= 0``.
        """
        if compile is None:
            compile = self.compile_generation
        return mu_law_decode(self._generate(mel, generator=generator, temperature=temperature,
                                            progress=progress, compile=compile)[0],
                             self.quantization_channels)

    def _step_weights(self, temperature: float) -> tuple:
        """The weights of one sampling step as matrices for ``x @ W`` (b, c_in) @ (c_in, c_out),
        in the order :func:`fast_wavenet_step` takes them, and the gate scale of the biases.

        The gate half of each dilated convolution is pre-scaled by 0.5 and the 1x1 outputs by
        0.5, so that ``sigmoid(g) = 0.5 * (1 + tanh(g / 2))`` lets one tanh serve both halves:
        ``tanh(a) * sigmoid(g) = 0.5 * (A + A * G)`` with ``A, G = tanh([a, g / 2])``.
        """
        c = self.residual_channels
        gate_scale = torch.cat([torch.ones(c), torch.full((c,), 0.5)]).to(self.embedding.weight)
        fused, residual, skip = [], [], []
        for i, (dilated, output) in enumerate(zip(self.dilated, self.outputs)):
            w = dilated.weight  # (2c, c, 2): tap 0 multiplies x[t - d], tap 1 x[t]
            fused.append((torch.cat([w[:, :, 0], w[:, :, 1]], dim=1) * gate_scale[:, None]).T
                         .contiguous())  # (2c_in = [past, now], 2c)
            wo = output.weight[:, :, 0] * 0.5  # (c + s or s, c)
            if i < len(self.dilated) - 1:
                residual.append(wo[:c].T.contiguous())
                wo = wo[c:]
            skip.append(wo.T)
        head1, head2 = self.head[1], self.head[3]
        weights = (self.embedding.weight, fused, residual, torch.cat(skip, dim=0).contiguous(),
                   head1.weight[:, :, 0].T.contiguous(), head1.bias,
                   (head2.weight[:, :, 0] / temperature).T.contiguous(), head2.bias / temperature)
        bias = torch.stack([d.bias * gate_scale for d in self.dilated])  # (l, 2c)
        return weights, gate_scale, bias

    @torch.inference_mode()
    def stream(self, mel: torch.Tensor, *, generator: torch.Generator | None = None,
               temperature: float = 1.0, progress: bool = False, compile: bool | None = None,
               chunk_frames: int = 16) -> Iterator[torch.Tensor]:
        """:meth:`generate`'s samples as they are drawn, ``chunk_frames`` frames at a time:
        the same draws in the same order, so the pieces joined are :meth:`generate`'s output
        exactly.

        Args:
            mel, generator, temperature, progress, compile: As :meth:`generate`.
            chunk_frames: Frames per piece (default 16: 256 ms at the default hop), >= 1.

        Yields:
            (b, chunk_frames * hop_length) waveforms in [-1, 1] (the last one shorter).

        Raises:
            ValueError: as :meth:`generate`, or ``chunk_frames`` < 1.
        """
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        if compile is None:
            compile = self.compile_generation
        pieces = []
        for classes, _ in self._sample(mel, generator=generator, temperature=temperature,
                                       progress=progress, compile=compile):
            pieces.append(classes)
            if len(pieces) == chunk_frames:
                yield mu_law_decode(torch.cat(pieces, 1), self.quantization_channels)
                pieces = []
        if pieces:
            yield mu_law_decode(torch.cat(pieces, 1), self.quantization_channels)

    def _generate(self, mel: torch.Tensor, *, generator: torch.Generator | None = None,
                  temperature: float = 1.0, progress: bool = False, keep_logits: bool = False,
                  compile: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Cached sampling -> (classes (b, t), logits (b, t, q) if ``keep_logits``)."""
        frames = list(self._sample(mel, generator=generator, temperature=temperature,
                                   progress=progress, keep_logits=keep_logits, compile=compile))
        classes = torch.cat([c for c, _ in frames], 1)
        return classes, torch.cat([l for _, l in frames], 1) if keep_logits else None

    def _sample(self, mel: torch.Tensor, *, generator: torch.Generator | None = None,
                temperature: float = 1.0, progress: bool = False, keep_logits: bool = False,
                compile: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Cached sampling, frame by frame: yields ``(classes (b, hop_length), logits
        (b, hop_length, q) if keep_logits)`` of each frame in turn. Every uniform is drawn
        first (as :meth:`generate_naive` draws them), so a stopped stream draws the same."""
        check_mel(mel, self.mel_channels)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        b, _, frames = mel.shape
        num_samples = frames * self.hop_length
        weights, gate_scale, bias = self._step_weights(temperature)
        # conditioning (+ the dilated convolutions' biases) for every frame: (f, l, b, 2c)
        cond = rearrange(self.conditioning(mel.float()), "b l c f -> f l b c")
        # dense strides even for size-1 axes, so a compiled step sees the same strides always
        cond = torch.empty(cond.shape, device=cond.device).copy_(cond * gate_scale + bias[:, None])
        uniform = self._uniforms(b, num_samples, generator, mel.device).T.contiguous()  # (t, b)
        step = compiled_wavenet_step() if compile else fast_wavenet_step
        dilations = self.dilations
        # input of layer i at t - d ... t - 1 (a ring); distinct tensors, as torch.compile
        # guards on aliasing between inputs
        queues = [[mel.new_zeros(b, self.residual_channels) for _ in range(d)] for d in dilations]
        current = mu_law_encode(mel.new_zeros(b), self.quantization_channels)  # silence first
        bar = tqdm(total=num_samples, desc="WaveNet", disable=not progress, dynamic_ncols=True,
                   unit="sample")
        try:
            for frame in range(frames):
                cond_frame = cond[frame]  # (l, b, 2c)
                classes, kept = [], []
                for t in range(frame * self.hop_length, (frame + 1) * self.hop_length):
                    pasts = [queue[t % d] for queue, d in zip(queues, dilations)]
                    current, logits, inputs = step(current, pasts, cond_frame, uniform[t],
                                                   weights)
                    for queue, d, x in zip(queues, dilations, inputs):
                        queue[t % d] = x
                    classes.append(current)
                    if keep_logits:
                        kept.append(logits)
                bar.update(self.hop_length)
                yield torch.stack(classes, 1), torch.stack(kept, 1) if keep_logits else None
        finally:
            bar.close()

    @torch.inference_mode()
    def generate_naive(self, mel: torch.Tensor, num_samples: int | None = None, *,
                       generator: torch.Generator | None = None,
                       temperature: float = 1.0) -> torch.Tensor:
        """Sampling without caches: for every sample, the full forward over the receptive
        field window (the baseline Fast WaveNet is measured against). Draws the same uniforms
        as :meth:`generate`, so with equal generators both return the same samples.

        Args:
            mel: (b, m, f) normalised log-mel.
            num_samples: Samples to generate, at most ``f * hop_length`` (default all).

        Returns:
            (b, num_samples) waveform in [-1, 1].
        """
        check_mel(mel, self.mel_channels)
        b, _, frames = mel.shape
        total = frames * self.hop_length
        num_samples = total if num_samples is None else num_samples
        if not 0 < num_samples <= total:
            raise ValueError(f"num_samples must be in [1, {total}] for a mel of {frames} frames,"
                             f" got {num_samples}")
        # all uniforms of the full length are drawn, as generate() does
        uniform = self._uniforms(b, total, generator, mel.device)
        cond = self.conditioning(mel.float())
        q = self.quantization_channels
        inputs = mu_law_encode(mel.new_zeros(b, num_samples + 1), q)  # inputs[t]: sample t-1
        span = self.receptive_field - 1  # output t sees inputs t - span .. t
        positions = torch.arange(total + 1, device=mel.device)
        frame_of = positions // self.hop_length
        for t in range(num_samples):
            start = max(0, t - span)
            logits = self._stack(inputs[:, start: t + 1], cond,
                                 frame_of[start: t + 1])[..., -1] / temperature
            inputs[:, t + 1] = sample_classes(logits, uniform[:, t])
        return mu_law_decode(inputs[:, 1:], q)


# --------------------------------------------------------------------------------------------
# Parallel WaveGAN
# --------------------------------------------------------------------------------------------
@vocoders.register("parallel_wavegan")
class ParallelWaveGANGenerator(nn.Module):
    """Non-autoregressive WaveNet: noise (b, t) + normalised mel (b, m, f) -> waveform (b, t).

    Folding: the noise is reshaped to (b, fold, t / fold), the stack of ``num_layers``
    non-causal dilated layers (kernel ``kernel_size``, dilations ``2**(i % dilation_cycle)``,
    gated units, residual and skip paths) runs at ``16000 / fold`` Hz, and the output channels
    are unfolded back to ``fold`` consecutive samples, then ``tanh`` keeps it in [-1, 1].

    Args:
        residual_channels: Width of the residual path (default 64).
        gate_channels: Width of the dilated convolution output before the gate (default 128).
        skip_channels: Width of the skip path (default 64).
        num_layers: Dilated layers (default 12).
        dilation_cycle: Layers per doubling cycle (default 6: 1 ... 32, twice).
        kernel_size: Odd kernel of the dilated convolutions (default 3).
        fold: Samples per step of the stack; must divide ``hop_length`` (default 8: the stack
            runs at 2 kHz, its receptive field is ``fold * (1 + (k - 1) * sum(dilations))``
            samples, 2,024 = 127 ms with the defaults).
        cond_channels: Width of the mel pre-net (default 64).
        mel_channels, hop_length: As the mel (default 80 and 256).
        mel_loss_weight: Weight of the log-mel L1 loss added to the MR-STFT loss in
            :meth:`loss` (default 0: off).

    Raises:
        ValueError: ``fold`` does not divide ``hop_length``, an even kernel, sizes < 1, or a
            negative ``mel_loss_weight``.
    """

    def __init__(self, *, residual_channels: int = 64, gate_channels: int = 128,
                 skip_channels: int = 64, num_layers: int = 12, dilation_cycle: int = 6,
                 kernel_size: int = 3, fold: int = 8, cond_channels: int = 64,
                 mel_channels: int = MEL_CHANNELS, hop_length: int = HOP_LENGTH,
                 mel_loss_weight: float = 0.0):
        super().__init__()
        for name, value in (("residual_channels", residual_channels),
                            ("skip_channels", skip_channels), ("num_layers", num_layers),
                            ("dilation_cycle", dilation_cycle), ("fold", fold),
                            ("cond_channels", cond_channels)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if gate_channels < 2 or gate_channels % 2:
            raise ValueError(f"gate_channels must be even and >= 2, got {gate_channels}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (non-causal, centred), got {kernel_size}")
        if hop_length % fold:
            raise ValueError(f"fold ({fold}) must divide hop_length ({hop_length}); try one of "
                             f"{[r for r in (1, 2, 4, 8, 16, 32) if hop_length % r == 0]}")
        self.mel_channels, self.hop_length, self.fold = mel_channels, hop_length, fold
        self.residual_channels = residual_channels
        self.dilations = tuple(2 ** (i % dilation_cycle) for i in range(num_layers))
        self.kernel_size = kernel_size
        self.input = nn.Conv1d(fold, residual_channels, 1)
        self.conditioning = MelConditioning(mel_channels=mel_channels,
                                            hidden_channels=cond_channels,
                                            num_layers=num_layers, out_channels=gate_channels)
        self.dilated = nn.ModuleList(
            nn.Conv1d(residual_channels, gate_channels, kernel_size, dilation=d,
                      padding=d * (kernel_size - 1) // 2) for d in self.dilations)
        self.outputs = nn.ModuleList(
            nn.Conv1d(gate_channels // 2,
                      (residual_channels if i < num_layers - 1 else 0) + skip_channels, 1)
            for i in range(num_layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv1d(skip_channels, skip_channels, 1),
                                  nn.ReLU(), nn.Conv1d(skip_channels, fold, 1))
        self.stft_loss = MultiResolutionSTFTLoss()
        if mel_loss_weight < 0:
            raise ValueError(f"mel_loss_weight must be >= 0, got {mel_loss_weight}")
        self.mel_loss_weight = mel_loss_weight
        # every constructor argument, so a checkpoint rebuilds this vocoder as it was
        self.init_args = dict(residual_channels=residual_channels, gate_channels=gate_channels,
                              skip_channels=skip_channels, num_layers=num_layers,
                              dilation_cycle=dilation_cycle, kernel_size=kernel_size, fold=fold,
                              cond_channels=cond_channels, mel_channels=mel_channels,
                              hop_length=hop_length, mel_loss_weight=mel_loss_weight)
        self._log_mel = None  # built on first use

    @property
    def receptive_field(self) -> int:
        """Samples each output sample sees (centred): ``fold * (1 + (k - 1) * sum(dilations))``."""
        return self.fold * (1 + (self.kernel_size - 1) * sum(self.dilations))

    @property
    def context_frames(self) -> int:
        """Mel frames on each side of a frame that its samples depend on: the stack's half
        receptive field ``(receptive_field - fold) / 2`` samples (its zero padding at a
        window's edge reaches that far in), plus the one frame of the conditioning's kernel-3
        pre-net. A window of frames with this many more on each side gives its middle frames'
        samples as the whole clip does (:meth:`stream`)."""
        return 1 + math.ceil((self.receptive_field - self.fold) / (2 * self.hop_length))

    def _checked_noise(self, mel: torch.Tensor, noise: torch.Tensor | None,
                       generator: torch.Generator | None) -> torch.Tensor:
        """The (b, f * hop_length) input noise of :meth:`forward` and :meth:`stream`:
        ``noise`` checked against ``mel``, or drawn from ``generator`` when None."""
        check_mel(mel, self.mel_channels)
        if noise is None:
            b, _, frames = mel.shape
            device = generator.device if generator is not None else mel.device
            noise = torch.randn(b, frames * self.hop_length, generator=generator,
                                device=device).to(mel.device)
        check_audio(noise, mel, self.hop_length)
        return noise

    @torch.no_grad()
    def stream(self, mel: torch.Tensor, *, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None,
               chunk_frames: int = 16) -> Iterator[torch.Tensor]:
        """:meth:`forward`'s samples in pieces of ``chunk_frames`` frames, each piece made by
        a forward over its frames and :attr:`context_frames` more on each side (the noise is
        drawn for the whole clip first, as :meth:`forward` draws it): joined, they equal
        :meth:`forward`'s output up to float rounding (the convolutions run over other
        lengths).

        Args:
            mel, noise, generator: As :meth:`forward`.
            chunk_frames: Frames per piece (default 16: 256 ms at the default hop), >= 1.

        Yields:
            (b, chunk_frames * hop_length) waveforms in [-1, 1] (the last one shorter).

        Raises:
            ValueError: as :meth:`forward`, or ``chunk_frames`` < 1.
        """
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        noise = self._checked_noise(mel, noise, generator)
        frames = mel.shape[-1]
        hop, context = self.hop_length, self.context_frames
        for first in range(0, frames, chunk_frames):
            last = min(first + chunk_frames, frames)
            a, z = max(0, first - context), min(frames, last + context)
            wave = self(mel[..., a:z], noise=noise[:, a * hop : z * hop])
            yield wave[:, (first - a) * hop : (last - a) * hop]

    def forward(self, mel: torch.Tensor, *, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """All samples at once.

        Args:
            mel: (b, m, f) normalised log-mel.
            noise: (b, f * hop_length) standard Gaussian noise (default: drawn from
                ``generator``).
            generator: Source of the noise when ``noise`` is None (default: torch's global).

        Returns:
            (b, f * hop_length) waveform in [-1, 1] at 16 kHz.

        Raises:
            ValueError: a mel of the wrong shape or noise of the wrong length.
        """
        noise = self._checked_noise(mel, noise, generator)
        x = self.input(rearrange(noise, "b (n r) -> b r n", r=self.fold))  # (b, c, t / fold)
        cond = self.conditioning(mel)  # (b, l, gate, f)
        skip = 0
        c = self.residual_channels
        for i, (dilated, output) in enumerate(zip(self.dilated, self.outputs)):
            out = output(gated(add_per_frame(dilated(x), cond[:, i])))
            if i < len(self.dilated) - 1:
                x = x + out[:, :c]
                out = out[:, c:]
            skip = skip + out
        return torch.tanh(rearrange(self.head(skip), "b r n -> b (n r)"))

    def loss(self, audio: torch.Tensor, mel: torch.Tensor, *,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Multi-resolution STFT loss of the generated audio against ``audio`` (b, t) for
        ``mel`` (b, m, t // hop_length), plus ``mel_loss_weight`` times the mean absolute
        difference of their log-mels (HiFi-GAN's mel loss, Kong et al. 2020,
        https://arxiv.org/abs/2010.05646, section 2.3); the noise comes from ``generator``."""
        check_audio(audio, mel, self.hop_length)
        generated = self(mel, generator=generator)
        loss = self.stft_loss(generated, audio)
        if self.mel_loss_weight:
            if self._log_mel is None:
                self._log_mel = [LogMel(hop_length=self.hop_length,
                                        n_mels=self.mel_channels).to(audio.device)]
            log_mel = self._log_mel[0]
            loss = loss + self.mel_loss_weight * (log_mel(generated) - log_mel(audio)).abs().mean()
        return loss


class MultiResolutionSTFTLoss(nn.Module):
    """Multi-resolution STFT loss (Parallel WaveGAN section 2.3): the mean over resolutions of
    spectral convergence ``||S(y) - S(x)||_F / ||S(y)||_F`` plus the mean absolute difference of
    log STFT magnitudes. Defaults are PWG's (1024, 2048, 512) FFTs scaled to 16 kHz.

    Args:
        fft_sizes: FFT sizes in samples (default (512, 1024, 256)).
        hop_lengths: Hops in samples (default (128, 256, 64)).
        win_lengths: Hann window lengths in samples (default (400, 800, 160)).
    """

    def __init__(self, *, fft_sizes: tuple[int, ...] = (512, 1024, 256),
                 hop_lengths: tuple[int, ...] = (128, 256, 64),
                 win_lengths: tuple[int, ...] = (400, 800, 160)):
        super().__init__()
        if not len(fft_sizes) == len(hop_lengths) == len(win_lengths) >= 1:
            raise ValueError("fft_sizes, hop_lengths and win_lengths must have the same length "
                             f">= 1, got {len(fft_sizes)}, {len(hop_lengths)}, {len(win_lengths)}")
        bad = [(n, w) for n, w in zip(fft_sizes, win_lengths) if w > n]
        if bad:
            raise ValueError(f"each window must fit its FFT, got (fft, window) {bad}")
        self.resolutions = tuple(zip(fft_sizes, hop_lengths, win_lengths))
        for n, _, w in self.resolutions:
            self.register_buffer(f"window_{w}", torch.hann_window(w), persistent=False)

    def magnitude(self, audio: torch.Tensor, fft: int, hop: int, win: int) -> torch.Tensor:
        """(b, t) -> (b, fft // 2 + 1, frames) STFT magnitude; the power is floored at 1e-7
        (as PWG does) so silent frames do not dominate the log term."""
        spec = torch.stft(audio.float(), fft, hop, win, getattr(self, f"window_{win}"),
                          return_complex=True)
        return (spec.real.square() + spec.imag.square()).clamp_min(1e-7).sqrt()

    def forward(self, generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``generated``, ``target`` (b, t) waveforms -> scalar loss (0 iff equal spectra)."""
        if generated.shape != target.shape:
            raise ValueError(f"generated {tuple(generated.shape)} and target "
                             f"{tuple(target.shape)} must have the same shape")
        total = 0.0
        for fft, hop, win in self.resolutions:
            x, y = self.magnitude(generated, fft, hop, win), self.magnitude(target, fft, hop, win)
            convergence = torch.linalg.vector_norm(y - x, dim=(1, 2)) / \
                torch.linalg.vector_norm(y, dim=(1, 2)).clamp_min(1e-7)
            total = total + convergence.mean() + (y.log() - x.log()).abs().mean()
        return total / len(self.resolutions)


class ParallelWaveGANDiscriminator(nn.Module):
    """PWG's discriminator (section 2.2 / 4.1.2): non-causal dilated 1-D convolutions with
    leaky ReLU on the waveform, one real/fake score per sample.

    Args:
        channels: Width (default 64).
        num_layers: Convolutions (default 10); the inner ones have dilations 1, 2, ..., 8.
        kernel_size: Odd kernel (default 3).
    """

    def __init__(self, *, channels: int = 64, num_layers: int = 10, kernel_size: int = 3):
        super().__init__()
        if num_layers < 2 or kernel_size % 2 == 0:
            raise ValueError(f"need num_layers >= 2 and an odd kernel_size, got {num_layers} "
                             f"and {kernel_size}")
        layers: list[nn.Module] = []
        width = 1
        for i in range(num_layers - 1):
            dilation = max(1, i)  # 1, 1, 2, 3, ...: PWG's linearly growing dilations
            layers += [nn.Conv1d(width, channels, kernel_size, dilation=dilation,
                                 padding=dilation * (kernel_size - 1) // 2),
                       nn.LeakyReLU(0.2)]
            width = channels
        layers.append(nn.Conv1d(width, 1, kernel_size, padding=(kernel_size - 1) // 2))
        self.net = nn.Sequential(*layers)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(b, t) waveform -> (b, t) scores (LSGAN: 1 real, 0 fake)."""
        return self.net(audio[:, None])[:, 0]


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VocoderFitSettings:
    """How the audio tokenizer fits one vocoder (its ``vocoder_fit.<name>`` section): random
    aligned segments of the training audio, :func:`train_vocoder`'s optimisation.

    Args:
        steps: Optimizer steps (>= 1).
        batch_size: Segments per step (default 8).
        segment_frames: Mel frames per segment; its audio is ``segment_frames * hop_length``
            samples (default 32).
        lr: Peak learning rate (default 1e-3).
        warmup_steps: Linear warm-up (default ``max(1, steps // 20)``).
        lambda_adv: Weight of Parallel WaveGAN's adversarial loss (default 0: off).
        adversarial_start: Step the adversarial loss starts at (default ``steps // 2``).
    """

    steps: int
    batch_size: int = 8
    segment_frames: int = 32
    lr: float = 1e-3
    warmup_steps: int | None = None
    lambda_adv: float = 0.0
    adversarial_start: int | None = None


def train_vocoder(vocoder: nn.Module,
                  sample_batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]],
                  *, steps: int, lr: float = 1e-3, warmup_steps: int | None = None,
                  min_lr_ratio: float = 0.1, weight_decay: float = 0.0,
                  max_grad_norm: float = 1.0, seed: int = 0, progress: bool = True,
                  lambda_adv: float = 0.0, adversarial_start: int | None = None,
                  discriminator: nn.Module | None = None,
                  log: Callable[[dict], None] | None = None) -> list[dict]:
    """Train a vocoder in place with AdamW.

    Step ``s`` draws its batch (and the parallel generator's noise) from a
    ``torch.Generator`` seeded with ``(seed, s)``, so a run is determined by ``seed`` and the
    vocoder's initial weights.

    Args:
        vocoder: A :class:`WaveNetVocoder` or :class:`ParallelWaveGANGenerator` (anything
            with ``loss(audio, mel, *, generator)``).
        sample_batch: ``generator -> (audio (b, t) in [-1, 1], mel (b, m, t // hop))``, aligned
            random segments of normalised log-mel and audio.
        steps: Optimizer steps (>= 1).
        lr: Peak learning rate (default 1e-3).
        warmup_steps: Linear warm-up (default ``max(1, steps // 20)``), then cosine decay to
            ``lr * min_lr_ratio`` (:func:`multimodal.nn.schedules.cosine_with_warmup`).
        weight_decay: AdamW weight decay (default 0).
        max_grad_norm: Gradient clipping norm (default 1.0).
        seed: Seed of the batch draws.
        progress: Show a tqdm bar.
        lambda_adv: Weight of the LSGAN adversarial loss of Parallel WaveGAN (default 0: off;
            the paper uses 4.0). Only for :class:`ParallelWaveGANGenerator`.
        adversarial_start: Step from which the discriminator trains and the adversarial loss
            counts (default ``steps // 2``; PWG starts at a quarter of training).
        discriminator: The discriminator to train (default: a fresh
            :class:`ParallelWaveGANDiscriminator` when ``lambda_adv > 0``).
        log: Called with each step's record.

    Returns:
        One record per step: ``step``, ``loss`` (the vocoder's loss: cross-entropy in nats per
        sample, or the MR-STFT loss), ``lr``, ``grad_norm``, ``seconds`` (since the start), and
        with ``lambda_adv > 0``: ``adversarial`` and ``discriminator`` (LSGAN losses).

    Raises:
        ValueError: ``steps < 1``, ``lambda_adv < 0``, adversarial training of a vocoder that
            is not a :class:`ParallelWaveGANGenerator`, or a batch of the wrong shape.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if lambda_adv < 0:
        raise ValueError(f"lambda_adv must be >= 0 (0 turns adversarial training off), "
                         f"got {lambda_adv}")
    adversarial = lambda_adv > 0
    if adversarial and not isinstance(vocoder, ParallelWaveGANGenerator):
        raise ValueError("lambda_adv > 0 needs a ParallelWaveGANGenerator, got "
                         f"{type(vocoder).__name__}")
    warmup_steps = max(1, steps // 20) if warmup_steps is None else max(1, warmup_steps)
    adversarial_start = steps // 2 if adversarial_start is None else adversarial_start
    device = next(vocoder.parameters()).device
    optimizer = torch.optim.AdamW(vocoder.parameters(), lr=lr, weight_decay=weight_decay)
    if adversarial:
        discriminator = (discriminator if discriminator is not None
                         else ParallelWaveGANDiscriminator()).to(device)
        d_optimizer = torch.optim.AdamW(discriminator.parameters(), lr=lr,
                                        weight_decay=weight_decay)
    vocoder.train()
    records: list[dict] = []
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=f"train {type(vocoder).__name__}", disable=not progress,
               dynamic_ncols=True)
    try:
        for step in bar:
            generator = torch.Generator().manual_seed((seed << 32) + step)
            audio, mel = sample_batch(generator)
            audio, mel = audio.to(device), mel.to(device)
            rate = lr * cosine_with_warmup(step, warmup_steps=warmup_steps, total_steps=steps,
                                           min_lr_ratio=min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = rate
            record: dict = {"step": step, "lr": rate}
            if adversarial:
                check_audio(audio, mel, vocoder.hop_length)
                fake = vocoder(mel, generator=generator)
                loss = vocoder.stft_loss(fake, audio)
                total = loss
                if step >= adversarial_start:
                    adv = (discriminator(fake) - 1).square().mean()
                    total = loss + lambda_adv * adv
                    record["adversarial"] = adv.item()
            else:
                loss = total = vocoder.loss(audio, mel, generator=generator)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            norm = torch.nn.utils.clip_grad_norm_(vocoder.parameters(), max_grad_norm)
            optimizer.step()
            if adversarial and step >= adversarial_start:
                for group in d_optimizer.param_groups:
                    group["lr"] = rate
                d_loss = (discriminator(audio) - 1).square().mean() + \
                    discriminator(fake.detach()).square().mean()
                d_optimizer.zero_grad(set_to_none=True)
                d_loss.backward()
                torch.nn.utils.clip_grad_norm_(discriminator.parameters(), max_grad_norm)
                d_optimizer.step()
                record["discriminator"] = d_loss.item()
            record.update(loss=loss.item(), grad_norm=float(norm),
                          seconds=time.perf_counter() - start)
            records.append(record)
            if log is not None:
                log(record)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
    finally:
        bar.close()
        vocoder.eval()
    return records
