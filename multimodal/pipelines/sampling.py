"""Next-token sampling: temperature, top-k (Fan et al. 2018) and nucleus / top-p (Holtzman et
al. 2020, https://arxiv.org/abs/1904.09751).

Axes: b batch, v vocabulary.
"""

from __future__ import annotations

import torch


def sample_next_token(logits: torch.Tensor, *, do_sample: bool = True, temperature: float = 1.0,
                      top_k: int | None = None, top_p: float | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token of each row.

    Args:
        logits: (b, v) unnormalised scores.
        do_sample: Sample (default) or take the arg-max (greedy).
        temperature: Divide the logits by this before sampling (> 0).
        top_k: Keep only the ``k`` most likely tokens.
        top_p: Keep the smallest set of tokens whose probability sums to at least ``p``.
        generator: Source of randomness.

    Returns:
        (b,) int64 token ids.
    """
    if not do_sample:
        return logits.argmax(dim=-1)
    logits = logits.float()
    scaled = logits / temperature
    overflow = (~torch.isfinite(scaled) & torch.isfinite(logits)).any(dim=-1, keepdim=True)
    if overflow.any():  # so small a temperature that scaling overflows: its limit, the top token
        top = torch.where(logits == logits.amax(dim=-1, keepdim=True), 0.0, float("-inf"))
        scaled = torch.where(overflow, top, scaled)
    logits = scaled
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) >= top_p  # keeps the first token
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
