"""SwiGLU feed-forward block (Shazeer 2020, "GLU Variants Improve Transformer",
https://arxiv.org/abs/2002.05202).

Axes: b batch, n tokens, d width, f hidden width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """``w2(silu(x w1) * (x w3))`` with ``w1`` and ``w3`` fused into one matmul.

    Args:
        dim: Input and output width ``d``.
        hidden_dim: Hidden width ``f``.
        bias: Whether the projections carry a bias (default ``False``, as in LLaMA).
    """

    def __init__(self, *, dim: int, hidden_dim: int, bias: bool = False):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.w13 = nn.Linear(dim, 2 * hidden_dim, bias=bias)  # gate (w1) and up (w3) fused
        self.w2 = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, n, d) -> (b, n, d)."""
        gate, up = self.w13(x).chunk(2, dim=-1)  # (b, n, f) each
        return self.w2(F.silu(gate) * up)
