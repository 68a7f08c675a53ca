"""Speech training objective: phonemes of the text through the shared backbone to mel frames
(:class:`~multimodal.modalities.audio.acoustic.MelDecoder`).

The audio tokenizer (``log_mel``, fitted first, with its vocoders) turns every training clip
into normalised log-mel frames once; the ``phonemes`` tokenizer (``espeak_phonemes``) turns
each clip's espeak-ng IPA into ids and its voice into a voice index. Batches pad phonemes and
frames at the end (clips of similar length are batched together); the decoder's alignment
search and losses ignore the padding. Only the choice of clips is random, drawn in
:meth:`AudioModality.sample` from the trainer's generator.

Axes: b batch, n phonemes, m mel bins, f frames.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from multimodal.errors import DataError
from multimodal.registry import modalities


@dataclass
class SpeechFrames:
    """A dataset encoded once.

    Attributes:
        phonemes: One (n,) int64 tensor per clip (start and end symbols included).
        mels: One (m, f) float32 normalised log-mel per clip.
        voices: (k,) int64 voice indices.
        texts: The clips' texts.
    """

    phonemes: list[torch.Tensor]
    mels: list[torch.Tensor]
    voices: torch.Tensor
    texts: list[str]

    def __len__(self) -> int:
        return len(self.mels)

    @property
    def by_length(self) -> torch.Tensor:
        """Clip indices sorted by number of frames (computed once)."""
        if getattr(self, "_by_length", None) is None:
            lengths = torch.tensor([m.shape[-1] for m in self.mels])
            self._by_length = torch.argsort(lengths, stable=True)
        return self._by_length


def collate(prepared: SpeechFrames, index: list[int]) -> dict:
    """Pad the clips ``index`` into one batch: ``{"phoneme_ids" (b, n), "phoneme_mask" (b, n),
    "voice_ids" (b,), "mel" (b, m, f), "mel_lengths" (b,)}``."""
    phonemes = [prepared.phonemes[i] for i in index]
    mels = [prepared.mels[i] for i in index]
    n, f = max(len(p) for p in phonemes), max(m.shape[-1] for m in mels)
    ids = torch.zeros((len(index), n), dtype=torch.long)
    mask = torch.zeros((len(index), n), dtype=torch.bool)
    mel = torch.zeros((len(index), mels[0].shape[0], f))
    for row, (p, m) in enumerate(zip(phonemes, mels)):
        ids[row, :len(p)], mask[row, :len(p)] = p, True
        mel[row, :, :m.shape[-1]] = m
    return {"phoneme_ids": ids, "phoneme_mask": mask, "voice_ids": prepared.voices[index],
            "mel": mel, "mel_lengths": torch.tensor([m.shape[-1] for m in mels])}


@modalities.register("audio")
class AudioModality:
    """Text-to-speech on the shared backbone (see the module docstring)."""

    name = "audio"

    def text_corpus(self, dataset: Any) -> Iterator[str]:
        """The transcripts of ``dataset``."""
        texts = getattr(dataset, "texts", None)
        return iter(texts if texts is not None else (item["text"] for item in dataset))

    def check_data(self, dataset: Any, tokenizers: dict) -> None:
        """Before any tokenizer is fitted (the vocoders fit for hours): every voice of the
        dataset (its ``voices`` and ``language`` attributes, where it has them) is one the
        ``phonemes`` tokenizer lists, phonemised in the language it gives that voice.

        Raises:
            DataError: as :meth:`prepare` would, hours later.
        """
        front = tokenizers.get("phonemes")
        voices = getattr(dataset, "voices", None)
        if front is None or not isinstance(voices, list):
            return
        language = getattr(dataset, "language", None)
        for voice in dict.fromkeys(voices):
            check_voice(front, voice, language or voice, "the audio dataset")

    def prepare(self, dataset: Any, tokenizers: dict, *, seq_len: int) -> SpeechFrames:
        """Encode every clip: mel frames, phoneme ids, voice index. Clips with more than
        ``seq_len`` phonemes, or fewer frames than phonemes, are left out with a warning.

        Raises:
            DataError: the dataset is empty, a tokenizer is missing, or a clip's voice is not
                one of the ``phonemes`` tokenizer's voices or was phonemised in another
                language than the tokenizer gives that voice.
        """
        missing = [k for k in ("phonemes", "audio") if k not in tokenizers]
        if missing:
            raise DataError("the audio modality needs "
                            + " and ".join(f"tokenizers[{k!r}]" for k in missing)
                            + " (an espeak_phonemes and a log_mel)")
        if len(dataset) == 0:
            raise DataError("the audio dataset is empty")
        front, audio = tokenizers["phonemes"], tokenizers["audio"]
        items = [dataset[i] for i in range(len(dataset))]
        encoded = audio.encode_many([item["audio"] for item in items])
        phonemes, mels, voices, texts, skipped = [], [], [], [], 0
        for i, (item, mel) in enumerate(zip(items, encoded)):
            check_voice(front, item["voice"], item.get("language", item["voice"]),
                        f"clip {i} ({item['text']!r})")
            voice = front.voice_id(item["voice"])
            ids = torch.tensor(front.ids_from_ipa(item["phonemes"]), dtype=torch.long)
            if len(ids) > seq_len or mel.shape[-1] < len(ids):
                skipped += 1
                continue
            phonemes.append(ids)
            mels.append(mel)
            voices.append(voice)
            texts.append(item["text"])
        if skipped:
            warnings.warn(f"{skipped} of {len(dataset)} clips left out: more than "
                          f"train.seq_len = {seq_len} phonemes or fewer frames than phonemes",
                          stacklevel=2)
        if not mels:
            raise DataError("no usable clip in the audio dataset")
        return SpeechFrames(phonemes=phonemes, mels=mels, texts=texts,
                            voices=torch.tensor(voices, dtype=torch.long))

    def sample(self, prepared: SpeechFrames, *, batch_size: int,
               generator: torch.Generator) -> dict:
        """``batch_size`` clips of similar length, padded (see :func:`collate`): a random
        window of the clips sorted by length, so padding wastes little compute (bucketing)."""
        if len(prepared) <= batch_size:
            index = torch.randint(0, len(prepared), (batch_size,), generator=generator)
            return collate(prepared, index.tolist())
        start = int(torch.randint(0, len(prepared) - batch_size + 1, (1,), generator=generator))
        return collate(prepared, prepared.by_length[start:start + batch_size].tolist())

    def eval_batches(self, prepared: SpeechFrames, *, batch_size: int,
                     max_batches: int) -> Iterator[dict]:
        """Consecutive clips from the start."""
        for b in range(max_batches):
            start = b * batch_size
            if start >= len(prepared):
                return
            yield collate(prepared, list(range(start, min(len(prepared), start + batch_size))))

    def loss(self, backbone, decoder, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """The decoder's loss (mel L1 + alignment prior + durations)."""
        loss, metrics = decoder.loss(backbone, batch["phoneme_ids"], batch["phoneme_mask"],
                                     batch["voice_ids"], batch["mel"], batch["mel_lengths"])
        metrics["tokens"] = float(batch["mel_lengths"].sum())
        return loss, metrics

    @torch.no_grad()
    def evaluate(self, backbone, decoder, prepared: SpeechFrames, *, batch_size: int,
                 max_batches: int, autocast=None) -> dict[str, float]:
        """Validation loss and mel L1 over fixed batches."""
        totals: dict[str, float] = {}
        count = 0
        device = next(decoder.parameters()).device
        for batch in self.eval_batches(prepared, batch_size=batch_size, max_batches=max_batches):
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast() if autocast else contextlib.nullcontext():
                loss, metrics = self.loss(backbone, decoder, batch)
            size = batch["mel"].shape[0]
            for key, value in {"loss": loss.item(), "mel_l1": metrics["mel_l1"]}.items():
                totals[key] = totals.get(key, 0.0) + value * size
            count += size
        return {k: v / count for k, v in totals.items()} if count else {}


def check_voice(front: Any, voice: str, language: str, where: str) -> None:
    """Refuse data of ``voice`` phonemised in ``language`` that the phoneme tokenizer ``front``
    would read otherwise at generation (an unlisted voice, another language).

    Raises:
        DataError: naming ``where`` and the setting that fixes it.
    """
    if voice not in front.voices:
        raise DataError(f"{where} has voice {voice!r}, which the phoneme tokenizer's voices do "
                        f"not list: {', '.join(front.voices)}; add it to "
                        "tokenizers.phonemes.voices")
    if front.language_of(voice) != language:
        raise DataError(f"{where} of voice {voice!r} was phonemised in {language!r}, but the "
                        f"phoneme tokenizer reads that voice's prompts in "
                        f"{front.language_of(voice)!r}; set tokenizers.phonemes.languages: "
                        f"{{{voice}: {language}}}")
