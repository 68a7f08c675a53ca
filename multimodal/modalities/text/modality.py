"""Text training objective: next-token prediction over a stream of tokenised documents
(nanoGPT's recipe: documents joined by an end-of-text token, random windows).

Axes: b batch, n tokens, v vocabulary.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from multimodal.errors import DataError
from multimodal.registry import modalities


@dataclass
class TokenStream:
    """Documents tokenised and joined, each followed by end-of-text.

    Attributes:
        ids: (num_tokens,) int64.
        seq_len: Window length ``n`` the model is trained on.
        token_bytes: (v,) UTF-8 bytes per id, for bits per byte.
    """

    ids: torch.Tensor
    seq_len: int
    token_bytes: torch.Tensor

    def __post_init__(self):
        if self.ids.numel() < self.seq_len + 2:
            raise DataError(
                f"the text data holds {self.ids.numel()} tokens, fewer than one training window "
                f"of seq_len + 1 = {self.seq_len + 1}; add text or lower train.seq_len"
            )


@modalities.register("text")
class TextModality:
    """Language modelling on the shared backbone with the tied LM head."""

    name = "text"

    def prepare(self, dataset: Sequence[str], tokenizers: dict, *, seq_len: int) -> TokenStream:
        tokenizer = tokenizers["text"]
        eos = tokenizer.eos_id
        ids: list[int] = []
        for doc_ids in tokenizer.encode_batch(list(dataset)):
            ids.extend(doc_ids)
            ids.append(eos)
        return TokenStream(
            ids=torch.tensor(ids, dtype=torch.long),
            seq_len=seq_len,
            token_bytes=torch.tensor(tokenizer.token_byte_lengths(), dtype=torch.float64),
        )

    def text_corpus(self, dataset: Sequence[str]) -> Iterator[str]:
        return iter(dataset)

    def sample(self, stream: TokenStream, *, batch_size: int,
               generator: torch.Generator) -> dict:
        """Random windows: ``{"input_ids": (b, n + 1)}``."""
        high = stream.ids.numel() - stream.seq_len - 1
        starts = torch.randint(0, high + 1, (batch_size,), generator=generator)
        offsets = torch.arange(stream.seq_len + 1)
        return {"input_ids": stream.ids[starts[:, None] + offsets]}

    def eval_batches(self, stream: TokenStream, *, batch_size: int,
                     max_batches: int) -> Iterator[dict]:
        """Consecutive, non-overlapping windows from the start of the stream."""
        n = stream.seq_len + 1
        num_windows = (stream.ids.numel() - 1) // stream.seq_len
        windows = [stream.ids[i * stream.seq_len : i * stream.seq_len + n]
                   for i in range(num_windows) if i * stream.seq_len + n <= stream.ids.numel()]
        for b in range(min(max_batches, math.ceil(len(windows) / batch_size))):
            chunk = windows[b * batch_size : (b + 1) * batch_size]
            if chunk:
                yield {"input_ids": torch.stack(chunk)}

    def loss(self, backbone, decoder, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean next-token cross-entropy in nats."""
        ids = batch["input_ids"]
        logits = decoder(backbone(ids[:, :-1]))  # (b, n, v)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        return loss, {"tokens": float(ids[:, 1:].numel())}

    @torch.no_grad()
    def evaluate(self, backbone, decoder, stream: TokenStream, *, batch_size: int,
                 max_batches: int, autocast=None) -> dict[str, float]:
        """Validation loss (nats per token) and bits per byte over fixed windows."""
        nats = tokens = num_bytes = 0.0
        for batch in self.eval_batches(stream, batch_size=batch_size, max_batches=max_batches):
            ids = batch["input_ids"].to(next(backbone.parameters()).device)
            with autocast() if autocast else contextlib.nullcontext():
                logits = decoder(backbone(ids[:, :-1]))
            targets = ids[:, 1:]
            nats += F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                                    reduction="sum").item()
            tokens += targets.numel()
            num_bytes += stream.token_bytes[targets.cpu()].sum().item()
        if tokens == 0:
            return {}
        return {"loss": nats / tokens, "bpb": nats / math.log(2) / num_bytes}

