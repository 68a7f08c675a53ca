"""Text-to-audio: speech from text through the shared backbone, the acoustic decoder and a
vocoder.

``prompt`` -> espeak-ng phonemes (the text front end, as in Piper and VITS) -> shared backbone
-> :class:`~multimodal.modalities.audio.acoustic.MelDecoder` (durations, then mel frames) ->
vocoder (``parallel``: Parallel WaveGAN, ``autoregressive``: WaveNet with cached generation,
``griffin-lim``: the baseline) -> 16 kHz mono audio, peak-normalised to 0.95.

Long prompts are cut into sentences (at ``.``, ``!``, ``?``, ``;`` and ``:``) that are spoken
one after the other with :data:`PAUSE_SECONDS` of silence between them; a single sentence
longer than the model's limit is an :class:`~multimodal.errors.InputError` naming the limit,
and so is a prompt with letters of a script the voice does not speak (Chinese to an English
voice), which espeak-ng would read out letter name by letter name.
Random draws come from one ``torch.Generator`` seeded with ``seed``: the vocoder's noise
(parallel) or its sampling (autoregressive), sample after sample.

diffusers' conventions (its AudioLDM pipelines') are taken beside the project's: a list of
prompts speaks each in turn, waveforms flat in prompt order, prompt ``i`` drawing from its own
seed (:func:`~multimodal.pipelines.base.prompt_seed` of ``seed``, recorded with its waveforms),
so its waveforms are exactly those it gives alone with that seed; ``num_waveforms_per_prompt``
(the name of ``num_samples``); a list of generators, one per waveform, waveform ``i``
drawing from ``generator[i]`` alone; and ``output_type``: ``"np"`` (default) float32 arrays,
``"pt"`` float32 tensors (one per waveform: the prompts' waveforms differ in length, so they
are not stacked into one (s, t) batch as AudioLDM's fixed-length ones are).

Streaming: with ``chunk_callback``, each piece of audio goes to the callback as soon as the
vocoder has made it (the mel of a sentence comes at once, the acoustic decoder being
non-autoregressive; the vocoder then runs window by window:
:meth:`~multimodal.modalities.audio.tokenizer.LogMelTokenizer.decode_stream`). The pieces are
the audio before peak normalisation, which needs the whole clip: the returned waveform is
them joined and normalised. Against the call without a callback they are the same audio
(``autoregressive``: exactly; ``parallel``: up to float rounding) or, for ``griffin-lim``,
the same spectrum with other phases (windowed Griffin-Lim: closer to the whole clip's
log-mel than the whole clip with another seed is; see
:meth:`~multimodal.modalities.audio.features.LogMel.griffin_lim_stream`).

``pipe.to(dtype)`` (``load_pipeline(..., torch_dtype=...)``) runs the backbone and the acoustic
decoder in bf16 or fp16; the mel leaves them as float32, and the vocoders stay float32.
``pipe.compile()`` compiles those two and the learned vocoders.

Files (written by the audio spec's writer through :func:`multimodal.outputs.write_outputs`,
not here): 16-bit PCM WAV (soundfile) and a sidecar JSON with the prompt and settings, the
checkpoint under ``checkpoint_id`` as every task records it (files made before say
``checkpoint``; ``multimodal replay`` reads both).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal

import numpy as np
import torch

from multimodal.data.espeak import foreign_letters
from multimodal.errors import InputError, excerpt
from multimodal.pipelines.base import (Pipeline, check_bool, check_float, check_generators,
                                       check_num_samples, check_output_type, check_prompts,
                                       check_seed, check_text, locate_sample, prompt_seed,
                                       runtime_settings, samples_per_prompt, seeded)
from multimodal.registry import pipelines
from multimodal.safety import policy_of

PAUSE_SECONDS = 0.25
PEAK = 0.95
SILENT_PEAK = 1e-4  # a waveform whose peak is below this is reported, never written
# What ``output_type`` may be: diffusers' AudioLDM forms (float32 arrays, the default, or
# tensors).
OUTPUT_TYPES = ("np", "pt")


@dataclass
class AudioGenerationOutput:
    """What the text-to-audio pipeline returns.

    A call with a list of prompts returns its waveforms flat in prompt order (diffusers'
    layout: ``num_waveforms_per_prompt`` of prompt 0, then of prompt 1, ...) and records
    ``prompt``, ``seed`` and ``phonemes`` per prompt (lists): :meth:`metadata` gives each
    waveform its own prompt and seed, with which it replays alone, and :meth:`split` one output
    per prompt.

    Attributes:
        audios: One float32 waveform (t,) per sample, 16,000 Hz, in [-0.95, 0.95]: numpy
            arrays (``output_type="np"``, the default) or torch tensors (``"pt"``).
        sample_rate: Hz (16,000).
        prompt, voice, vocoder, seed, length_scale, checkpoint_id: The settings used.
        language: The espeak-ng voice that phonemised the prompt (the speaker's language).
        phonemes: The IPA the model read.
        mels: The normalised log-mel (m, f) of each prompt (before the vocoder; a prompt's
            samples share it, they differ in the vocoder's draws only).
        num_waveforms_per_prompt: Waveforms of each prompt (one count per prompt; ``None``:
            all belong to the one prompt).
        runtime: How the pipeline ran where that changes the numbers (``torch_dtype`` when
            not float32, ``device`` when not the CPU), written with every waveform.
        output_type: The form of ``audios``.
        waveforms: The numpy waveforms whatever ``output_type`` is (what the writer writes;
            empty in outputs made with ``audios`` arrays directly).
    """

    audios: list[np.ndarray] | list[torch.Tensor]
    sample_rate: int = 16_000
    prompt: str | list[str] = ""
    voice: str = ""
    language: str = ""
    vocoder: str = "parallel"
    seed: int | list[int | None] | None = None
    length_scale: float = 1.0
    checkpoint_id: str = "none"
    phonemes: str | list[str] = ""
    mels: list[torch.Tensor] = field(default_factory=list, repr=False)
    num_waveforms_per_prompt: list[int] | None = None
    runtime: dict[str, str] = field(default_factory=dict)
    output_type: str = "np"
    waveforms: list[np.ndarray] = field(default_factory=list, repr=False)

    def _locate(self, index: int) -> tuple[int | None, int, int]:
        """``(prompt index or None, sample within its prompt, waveforms of that prompt)``."""
        return locate_sample(self.prompt, self.num_waveforms_per_prompt, index, len(self.samples),
                             "waveform")

    def metadata(self, index: int) -> dict[str, Any]:
        """The settings of sample ``index`` (written next to its WAV)."""
        group, sample, count = self._locate(index)
        prompt, seed, phonemes = self.prompt, self.seed, self.phonemes
        if group is not None:
            prompt, seed, phonemes = prompt[group], seed[group], phonemes[group]
        return {"task": "text-to-audio", "prompt": prompt, "voice": self.voice,
                "language": self.language or self.voice, "vocoder": self.vocoder,
                "seed": seed, "sample": sample, "num_samples": count,
                "length_scale": self.length_scale, "sample_rate": self.sample_rate,
                "seconds": round(len(self.samples[index]) / self.sample_rate, 3),
                "phonemes": phonemes, "checkpoint_id": self.checkpoint_id, **self.runtime}

    def split(self) -> list[AudioGenerationOutput]:
        """One single-prompt output per prompt of a list call (itself, in a list, otherwise),
        each what the pipeline returns for that prompt alone with its recorded seed."""
        if not isinstance(self.prompt, list):
            return [self]
        outputs, start = [], 0
        for group, count in enumerate(self.num_waveforms_per_prompt):
            outputs.append(replace(
                self, audios=self.audios[start : start + count], prompt=self.prompt[group],
                seed=self.seed[group], phonemes=self.phonemes[group],
                mels=self.mels[group : group + 1], num_waveforms_per_prompt=None,
                waveforms=self.waveforms[start : start + count]))
            start += count
        return outputs

    @property
    def samples(self) -> list[np.ndarray]:
        """The waveforms as float32 numpy arrays, one per sample (what the writer writes, at
        :attr:`sample_rate`)."""
        return self.waveforms if self.waveforms else self.audios


def split_sentences(text: str) -> list[str]:
    """``text`` cut after ``. ! ? ; :`` (keeping the punctuation), blank pieces dropped."""
    return [s.strip() for s in re.split(r"(?<=[.!?;:])\s+", text.strip()) if s.strip()]


@pipelines.register("text-to-audio")
class TextToAudioPipeline(Pipeline):
    """Speak a prompt (see the module docstring).

    Args:
        backbone: The shared Transformer.
        decoder: The acoustic decoder (``mel_decoder``).
        phonemes: The text front end (``espeak_phonemes``, with the voices).
        audio: The audio tokenizer (``log_mel``, with the vocoders).
        checkpoint_id: Recorded in outputs.
    """

    task = "text-to-audio"
    produces = "audio"  # what its outputs hold: the spec whose writer writes them
    parts = {"backbone": "backbone", "decoder": "decoders.audio",
             "phonemes": "tokenizers.phonemes", "audio": "tokenizers.audio"}
    needs = ("a mel_decoder, an espeak_phonemes and a log_mel tokenizer (train e.g. "
             "configs/text_to_audio_speech.yaml)")

    def __init__(self, *, backbone, decoder, phonemes, audio, checkpoint_id: str = "none"):
        self.backbone, self.decoder = backbone, decoder
        self.phonemes, self.audio = phonemes, audio
        self.checkpoint_id = checkpoint_id

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    @property
    def max_phonemes(self) -> int:
        """Longest sentence the model reads, in phonemes (start and end included)."""
        return min(self.phonemes.max_phonemes, self.backbone.max_seq_len)

    @property
    def voices(self) -> list[str]:
        return list(self.phonemes.voices)

    # -- generation ----------------------------------------------------------------------------
    def phoneme_chunks(self, prompt: str, voice: str) -> list[list[int]]:
        """Phoneme ids of each sentence of ``prompt``, neighbours merged while they fit.

        Raises:
            InputError: empty or unpronounceable prompt, or a sentence above the limit.
        """
        check_text("prompt", prompt)
        if not prompt.strip():
            raise InputError("the prompt is empty: give the text to speak")
        foreign = foreign_letters(prompt, self.phonemes.language_of(voice))
        if foreign:
            raise InputError(f"voice {voice!r} cannot speak {''.join(foreign[:10])!r} (letters "
                             "outside its language's Latin script would be read out letter "
                             f"name by letter name) in prompt {excerpt(prompt)}; give text in "
                             "the voice's language")
        limit = self.max_phonemes
        chunks: list[list[int]] = []
        for sentence in split_sentences(prompt):
            try:
                ids = self.phonemes.encode(sentence, voice, max_phonemes=limit)
            except InputError as exc:
                if "nothing pronounceable" in str(exc):
                    continue  # a lone symbol between sentences; the whole prompt is checked below
                raise
            pause = self.phonemes.ids_from_ipa(" , ")[1:-1]  # a clause break, as espeak marks it
            if chunks and len(chunks[-1]) + len(pause) + len(ids) - 2 <= limit:
                chunks[-1] = chunks[-1][:-1] + pause + ids[1:]  # one sequence
            else:
                chunks.append(ids)
        if not chunks:
            raise InputError(f"nothing pronounceable in {prompt!r}: give words or numbers")
        return chunks

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], *, voice: str | None = None,
                 vocoder: str | None = None, num_samples: int = 1,
                 num_waveforms_per_prompt: int | None = None, seed: int | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 length_scale: float = 1.0, progress: bool = True,
                 output_type: Literal["np", "pt"] = "np",
                 chunk_callback: Callable[[int, np.ndarray], None] | None = None
                 ) -> AudioGenerationOutput:
        """Speak ``prompt`` (or every prompt of a list, one after the other).

        Args:
            prompt: English text (numbers are read out); from Python also a list: each
                spoken, waveforms flat in prompt order, as diffusers.
            voice: A voice (speaker) of the checkpoint's phoneme tokenizer, e.g. ``en-us``,
                ``en-us+f3`` or a fine-tuned speaker's own name (``pipe.voices`` lists them;
                default: the first).
            vocoder: ``"parallel"``, ``"autoregressive"`` or ``"griffin-lim"`` (default: the
                checkpoint's ``default_vocoder``).
            num_samples: Takes of the same text (they differ in the vocoder's randomness), per
                prompt.
            num_waveforms_per_prompt: diffusers' name of ``num_samples`` (give one of the
                two).
            seed: Seeds the vocoder's random draws (default: a random seed, recorded); prompt
                ``i`` of a list uses a seed derived from it (recorded per waveform).
            generator: Use this generator instead of ``seed`` (not with it: refused), or a
                list of one per waveform (diffusers'; prompt-major): waveform ``i`` draws from
                ``generator[i]`` alone.
            length_scale: Multiplies the predicted durations (> 1 is slower), in (0, 10].
            progress: Show a progress bar (the autoregressive vocoder is sample by sample).
            output_type: ``"np"`` (default: float32 numpy arrays) or ``"pt"`` (float32 torch
                tensors), one waveform (t,) each (diffusers' AudioLDM names).
            chunk_callback: Stream: called as ``chunk_callback(index, audio)`` with each piece
                of waveform ``index`` (of :attr:`AudioGenerationOutput.audios`) as soon as it
                is made, in order: ``audio`` float32 (t,) at 16 kHz, at the vocoder's level
                (before the peak normalisation, which needs the whole clip: the returned
                waveform is the pieces joined, times ``PEAK / their peak``); pieces of 16 mel
                frames (256 ms; 64 ms for ``autoregressive``) and the pauses between
                sentences. The vocoder then runs window by window (see the module docstring
                for how its audio compares).
                An exception it raises stops the call (default: no streaming).

        Returns:
            :class:`AudioGenerationOutput`.

        Raises:
            InputError: empty, unpronounceable or too long prompt, or one with letters the
                voice's language is not written in; a prompt list that is empty or holds a
                non-string; unknown voice or vocoder; a bad ``num_samples``, ``length_scale``
                or ``seed``; a seed given with a generator (or a list of them); a generator
                list of the wrong length; an unknown ``output_type``; a silent result.
        """
        prompts, is_list = check_prompts(prompt)
        voice = self.voices[0] if voice is None else check_text("voice", voice)
        if voice not in self.voices:
            raise InputError(f"unknown voice {excerpt(voice)}; this model knows: "
                             f"{', '.join(self.voices)}")
        voice_id = self.phonemes.voice_id(voice)
        name = vocoder or self.audio.default_vocoder
        check_text("vocoder", name)
        if name not in self.audio.available_vocoders:
            raise InputError(f"unknown vocoder {excerpt(name)}; this model has: "
                             f"{', '.join(self.audio.available_vocoders)}")
        num_samples = samples_per_prompt(num_samples, num_waveforms_per_prompt,
                                         "num_waveforms_per_prompt")
        check_num_samples(num_samples)
        length_scale = check_float("length_scale", length_scale, 0.0, 10.0, lo_open=True)
        check_bool("progress", progress)
        check_output_type(output_type, OUTPUT_TYPES)
        if chunk_callback is not None and not callable(chunk_callback):
            raise InputError("chunk_callback must be a function (index, audio) -> None, got "
                             f"{type(chunk_callback).__name__}")
        base = check_seed(seed)
        seeds = [base] if not is_list else \
            [None if base is None else prompt_seed(base, i) for i in range(len(prompts))]
        generators = check_generators(generator, len(prompts) * num_samples, seeds)
        for text in prompts:
            policy_of(self).check(text, task="text-to-audio")
        chunks = [self.phoneme_chunks(text, voice) for text in prompts]  # all, before any work
        audios, mels = [], []
        for i, text in enumerate(prompts):
            if generators is None:  # the prompt's samples draw from one generator in turn
                gen, seeds[i] = seeded(seeds[i], generator)
                draws = [gen] * num_samples
            else:
                draws = generators[i * num_samples : (i + 1) * num_samples]
            first, on_chunk = len(audios), None  # the index of the prompt's first waveform
            if chunk_callback is not None:
                def on_chunk(k: int, audio: np.ndarray) -> None:
                    chunk_callback(first + k, audio.copy())  # a copy: the pieces are kept
            waves, mel = self._speak(text, chunks[i], voice_id, name, draws,
                                     length_scale, progress, on_chunk)
            audios += waves
            mels.append(mel)
        phonemes = [" | ".join(self.phonemes.decode(ids) for ids in prompt_chunks)
                    for prompt_chunks in chunks]
        return AudioGenerationOutput(
            audios=audios if output_type == "np" else [torch.tensor(a) for a in audios],
            sample_rate=self.audio.sample_rate,
            prompt=prompts if is_list else prompts[0], voice=voice,
            language=self.phonemes.language_of(voice), vocoder=name,
            seed=seeds if is_list else seeds[0], length_scale=length_scale,
            checkpoint_id=self.checkpoint_id, phonemes=phonemes if is_list else phonemes[0],
            mels=mels, num_waveforms_per_prompt=[num_samples] * len(prompts) if is_list else None,
            runtime=runtime_settings(self), output_type=output_type, waveforms=audios)

    def _speak(self, prompt: str, chunks: list[list[int]], voice_id: int, vocoder: str,
               generators: list[torch.Generator], length_scale: float, progress: bool,
               on_chunk: Callable[[int, np.ndarray], None] | None = None
               ) -> tuple[list[np.ndarray], torch.Tensor]:
        """The waveforms of one prompt, one per generator (sample ``k`` draws from
        ``generators[k]``), and its mel (m, f): each chunk's mel from the acoustic decoder,
        vocoded and joined with :data:`PAUSE_SECONDS` of silence. With ``on_chunk``, every
        piece of sample ``k`` goes to ``on_chunk(k, piece)`` as it is made."""
        mels: list[torch.Tensor] = []  # each chunk's, made when first needed
        pause = np.zeros(int(PAUSE_SECONDS * self.audio.sample_rate), dtype=np.float32)
        audios = []
        for k, generator in enumerate(generators):
            pieces = []
            for i, ids in enumerate(chunks):
                if i == len(mels):
                    mels.append(self._mel(ids, voice_id, length_scale))
                if i:
                    pieces.append(pause)
                    if on_chunk is not None:
                        on_chunk(k, pause)
                if on_chunk is None:
                    pieces.append(self.audio.decode(mels[i][None], vocoder=vocoder,
                                                    generator=generator,
                                                    progress=progress)[0].numpy())
                    continue
                for piece in self.audio.decode_stream(mels[i][None], vocoder=vocoder,
                                                      generator=generator, progress=progress):
                    pieces.append(piece[0].numpy())
                    on_chunk(k, pieces[-1])
            audios.append(peak_normalise(np.concatenate(pieces), prompt))
        return audios, torch.cat(mels, -1)

    def _mel(self, ids: list[int], voice_id: int, length_scale: float) -> torch.Tensor:
        """The normalised log-mel (m, f) of one chunk's phoneme ids, float32 on the CPU."""
        device = self.device
        mel, frames = self.decoder.generate(
            self.backbone, torch.tensor([ids], device=device),
            torch.tensor([voice_id], device=device), length_scale=length_scale)
        return mel[0, :, : int(frames[0])].float().cpu()


def peak_normalise(audio: np.ndarray, prompt: str = "") -> np.ndarray:
    """Scale ``audio`` so its peak is :data:`PEAK` (never clipped).

    Raises:
        InputError: the audio is silent (peak below :data:`SILENT_PEAK`): the model produced
            nothing for ``prompt``.
    """
    audio = np.nan_to_num(np.asarray(audio, dtype=np.float32))
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak < SILENT_PEAK:
        raise InputError(f"the model produced silence for {prompt!r}; nothing was written")
    return audio * (PEAK / peak)
