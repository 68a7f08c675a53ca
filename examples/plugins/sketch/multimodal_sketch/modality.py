"""Sketch training objective: next-stroke-token prediction after the caption.

Each training sequence is one caption (end-of-text first, as the text pipeline starts a
document) followed by its sketch's stroke tokens (:mod:`multimodal_sketch.tokenizer`), with
padding at the END only (the backbone is causal, so padding after the sketch changes nothing
before it). The loss is the cross-entropy of every stroke token (``NEW_STROKE``, cells and
``END``) given everything before it; caption tokens are context, not targets. A share
``cond_dropout`` of the captions (the decoder's) is cut to end-of-text alone, the empty
caption, so the model also learns unconditional sketches.

Every random draw of a batch (which sketches, which captions are dropped) is made in
:meth:`SketchModality.sample` from the trainer's generator; :meth:`~SketchModality.loss`
draws nothing, so a resumed run repeats the uninterrupted one exactly.

Axes: k items, b batch, c caption tokens, s stroke tokens, n = c + s positions, v stroke
vocabulary.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from multimodal.errors import ConfigError, DataError

IGNORE = -100  # cross-entropy's ignore_index


@dataclass
class StrokeSequences:
    """A dataset tokenised once.

    Attributes:
        caption_ids: (k, c) int64 text ids, end-of-text first, padded with the text pad id.
        caption_len: (k,) int64 caption tokens per item (end-of-text included, >= 1).
        stroke_ids: (k, s) int64 stroke tokens, padded with the stroke ``PAD`` id.
        stroke_len: (k,) int64 stroke tokens per item (``END`` included).
        labels: (k,) int64 (-1 where the dataset has none).
        grid_size: The stroke tokenizer's grid (checked against the decoder's).
        stroke_pad: The stroke ``PAD`` id.
    """

    caption_ids: torch.Tensor
    caption_len: torch.Tensor
    stroke_ids: torch.Tensor
    stroke_len: torch.Tensor
    labels: torch.Tensor
    grid_size: int
    stroke_pad: int

    def __len__(self) -> int:
        return self.caption_ids.shape[0]


def _pad_rows(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged rows -> ``(ids (k, max length) int64 padded with pad, lengths (k,))``."""
    length = max((len(r) for r in rows), default=1)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return ids, torch.tensor([len(r) for r in rows], dtype=torch.long)


def layout(caption_ids: torch.Tensor, caption_len: torch.Tensor, stroke_ids: torch.Tensor,
           stroke_len: torch.Tensor, *, stroke_pad: int
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Join each caption and its strokes into one row, padding at the end.

    Args:
        caption_ids: (b, c) text ids; the first ``caption_len`` of each row are used.
        caption_len: (b,) caption lengths (>= 1).
        stroke_ids: (b, s) stroke tokens; the first ``stroke_len`` of each row are used.
        stroke_len: (b,) stroke lengths.
        stroke_pad: The stroke ``PAD`` id.

    Returns:
        ``(text_ids (b, n), stroke_ids (b, n), is_stroke (b, n) bool)`` with
        ``n = max(caption_len + stroke_len)``: text ids on caption positions, stroke tokens
        after them, ``PAD`` (a stroke position) after the sketch.
    """
    b, c = caption_ids.shape
    s = stroke_ids.shape[1]
    n = int((caption_len + stroke_len).max())
    j = torch.arange(n, device=caption_ids.device).expand(b, n)
    is_stroke = j >= caption_len[:, None]
    text = caption_ids.gather(1, j.clamp(max=c - 1))
    k = j - caption_len[:, None]  # index into the strokes
    strokes = stroke_ids.gather(1, k.clamp(0, s - 1))
    strokes = torch.where(is_stroke & (k < stroke_len[:, None]), strokes, stroke_pad)
    return text, strokes, is_stroke


class SketchModality:
    """Text-to-sketch on the shared backbone with the stroke head (see the module docstring).

    Needs ``tokenizers.text`` (byte-level BPE) and ``tokenizers.sketch`` (``stroke_tokens``).
    """

    name = "sketch"

    def text_corpus(self, dataset: Any) -> Iterator[str]:
        """The captions of ``dataset``, for the text tokenizer."""
        captions = getattr(dataset, "captions", None)
        return iter(captions if captions is not None else (item["caption"] for item in dataset))

    def prepare(self, dataset: Any, tokenizers: dict, *, seq_len: int) -> StrokeSequences:
        """Tokenise every caption and sketch once.

        Items whose caption and sketch together exceed ``seq_len`` tokens are left out, with a
        warning that counts them.

        Raises:
            DataError: a tokenizer is missing, the dataset is empty, or no item fits
                ``seq_len``.
        """
        missing = [k for k in ("text", "sketch") if k not in tokenizers]
        if missing:
            needed = " and ".join(f"tokenizers.{k}" for k in missing)
            raise DataError(f"the sketch modality needs {needed} (a byte_bpe and a "
                            "stroke_tokens)")
        text, strokes_tok = tokenizers["text"], tokenizers["sketch"]
        if len(dataset) == 0:
            raise DataError("the sketch dataset is empty")
        captions = list(self.text_corpus(dataset))
        unique = sorted(set(captions))
        encoded = dict(zip(unique, text.encode_batch(unique)))
        caption_rows, stroke_rows, labels = [], [], []
        for i, caption in enumerate(captions):
            item = dataset[i]
            caption_row = [text.eos_id] + encoded[caption]
            stroke_row = strokes_tok.encode(item["strokes"]).tolist()
            if len(caption_row) + len(stroke_row) > seq_len:
                continue
            caption_rows.append(caption_row)
            stroke_rows.append(stroke_row)
            labels.append(int(item.get("label", -1)))
        dropped = len(captions) - len(caption_rows)
        if not caption_rows:
            raise DataError(f"none of the {len(captions)} sketches fits train.seq_len = "
                            f"{seq_len} tokens (caption + stroke tokens); raise train.seq_len "
                            "or lower the stroke tokenizer's grid_size")
        if dropped:
            warnings.warn(f"{dropped} of {len(captions)} sketches are longer than "
                          f"train.seq_len = {seq_len} tokens (caption + strokes) and were left "
                          "out; raise train.seq_len to keep them", stacklevel=2)
        caption_ids, caption_len = _pad_rows(caption_rows, text.pad_id)
        stroke_ids, stroke_len = _pad_rows(stroke_rows, strokes_tok.pad_id)
        return StrokeSequences(caption_ids=caption_ids, caption_len=caption_len,
                               stroke_ids=stroke_ids, stroke_len=stroke_len,
                               labels=torch.tensor(labels, dtype=torch.long),
                               grid_size=strokes_tok.grid_size, stroke_pad=strokes_tok.pad_id)

    def sample(self, prepared: StrokeSequences, *, batch_size: int,
               generator: torch.Generator) -> dict:
        """A random batch; every draw comes from ``generator`` (items, then caption dropout).

        Returns:
            ``{"caption_ids" (b, c), "caption_len" (b,), "stroke_ids" (b, s),
            "stroke_len" (b,), "drop_uniform" (b,) in [0, 1) (the caption is dropped where
            below the decoder's ``cond_dropout``), "grid_size", "stroke_pad"}``, cut to the
            longest caption and sketch drawn.
        """
        index = torch.randint(0, len(prepared), (batch_size,), generator=generator)
        drop_uniform = torch.rand(batch_size, generator=generator)
        return _batch(prepared, index, drop_uniform)

    def eval_batches(self, prepared: StrokeSequences, *, batch_size: int,
                     max_batches: int) -> Iterator[dict]:
        """Consecutive items from the start, no caption dropped: the same batches every
        time."""
        for b in range(max_batches):
            start = b * batch_size
            if start >= len(prepared):
                return
            index = torch.arange(start, min(len(prepared), start + batch_size))
            yield _batch(prepared, index, torch.ones(len(index)))

    def token_losses(self, backbone, decoder, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed cross-entropy (nats) of the batch's stroke tokens, and how many there are.

        Raises:
            ConfigError: the stroke tokenizer's grid differs from the decoder's.
        """
        if batch["grid_size"] != decoder.grid_size:
            raise ConfigError(f"tokenizers.sketch has a {batch['grid_size']}-cell grid but "
                              f"decoders.sketch.grid_size is {decoder.grid_size}; set both to "
                              "the same value")
        drop = batch["drop_uniform"] < decoder.cond_dropout
        caption_len = torch.where(drop, 1, batch["caption_len"])  # end-of-text alone
        text_ids, stroke_ids, is_stroke = layout(
            batch["caption_ids"], caption_len, batch["stroke_ids"], batch["stroke_len"],
            stroke_pad=batch["stroke_pad"])
        logits = decoder(backbone, text_ids, stroke_ids, is_stroke)  # (b, n, v)
        targets = stroke_ids[:, 1:].masked_fill(stroke_ids[:, 1:] == batch["stroke_pad"],
                                                IGNORE)
        nats = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                               ignore_index=IGNORE, reduction="sum")
        return nats, (targets != IGNORE).sum()

    def loss(self, backbone, decoder, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean cross-entropy per stroke token, in nats."""
        nats, count = self.token_losses(backbone, decoder, batch)
        return nats / count.clamp(min=1), {"tokens": float(count)}

    @torch.no_grad()
    def evaluate(self, backbone, decoder, prepared: StrokeSequences, *, batch_size: int,
                 max_batches: int, autocast=None) -> dict[str, float]:
        """Validation loss (nats per stroke token) over fixed batches, no caption dropped."""
        nats = tokens = 0.0
        device = next(decoder.parameters()).device
        for batch in self.eval_batches(prepared, batch_size=batch_size, max_batches=max_batches):
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            with autocast() if autocast else contextlib.nullcontext():
                total, count = self.token_losses(backbone, decoder, batch)
            nats += float(total)
            tokens += float(count)
        return {"loss": nats / tokens} if tokens else {}


def _batch(prepared: StrokeSequences, index: torch.Tensor, drop_uniform: torch.Tensor) -> dict:
    caption_len, stroke_len = prepared.caption_len[index], prepared.stroke_len[index]
    return {"caption_ids": prepared.caption_ids[index, : int(caption_len.max())],
            "caption_len": caption_len,
            "stroke_ids": prepared.stroke_ids[index, : int(stroke_len.max())],
            "stroke_len": stroke_len, "drop_uniform": drop_uniform,
            "grid_size": prepared.grid_size, "stroke_pad": prepared.stroke_pad}
