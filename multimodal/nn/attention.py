"""Multi-head self-attention with rotary positions and a key/value cache.

Attention runs through ``torch.nn.functional.scaled_dot_product_attention``. Rotary position
embeddings follow Su et al. 2021, "RoFormer" (https://arxiv.org/abs/2104.09864), in the
"rotate half" layout used by LLaMA and Hugging Face ``LlamaAttention``, so weights copy across.

Axes: b batch, n new tokens, m cached + new tokens, d width, h heads, k key/value heads,
e head width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RotaryEmbedding(nn.Module):
    """Precomputed rotary ``cos``/``sin`` tables for positions ``[0, max_seq_len)``.

    Args:
        head_dim: Head width ``e`` (even).
        max_seq_len: Number of positions in the table.
        theta: Base of the frequencies (10,000 in RoFormer and LLaMA).
    """

    def __init__(self, *, head_dim: int, max_seq_len: int, theta: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head width, got {head_dim}")
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        freqs = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)
        freqs = torch.cat([freqs, freqs], dim=-1)  # (max_seq_len, e), "rotate half" layout
        self.register_buffer("cos", freqs.cos().float(), persistent=False)
        self.register_buffer("sin", freqs.sin().float(), persistent=False)

    def forward(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(cos, sin)``, each (length, e), for positions ``start .. start+length-1``."""
        return self.cos[start : start + length], self.sin[start : start + length]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys by tables that broadcast against them: (b, h, n, e) by (n, e),
    or (b, n, h, e) by (n, 1, e)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    if cos.dtype != x.dtype:  # bf16 autocast: the tables are fp32
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.addcmul(x * cos, rotated, sin)


class KVCache:
    """Preallocated keys and values of every layer, for incremental decoding.

    Args:
        num_layers: Layers of the model.
        batch_size: Sequences decoded together ``b``.
        max_seq_len: Longest prompt + generation ``m``.
        num_kv_heads: Key/value heads ``k``.
        head_dim: Head width ``e``.
        dtype, device: Of the cache tensors.

    ``pos`` is the number of positions already written; the model advances it after each
    forward. ``keys[i]`` and ``values[i]`` are (b, k, max_seq_len, e).
    """

    def __init__(self, *, num_layers: int, batch_size: int, max_seq_len: int,
                 num_kv_heads: int, head_dim: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        shape = (batch_size, num_kv_heads, max_seq_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.max_seq_len = max_seq_len
        self.pos = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (b, k, n, e) new keys/values at ``pos``; return all (b, k, pos+n, e) so far."""
        n = k.shape[2]
        end = self.pos + n
        if end > self.max_seq_len:
            raise ValueError(f"KV cache holds {self.max_seq_len} positions; asked for {end}")
        self.keys[layer][:, :, self.pos : end] = k
        self.values[layer][:, :, self.pos : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, input_pos: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (b, k, n, e) new keys/values at positions ``input_pos`` (n,) int64 and return
        the whole (b, k, max_seq_len, e) buffers: shapes that do not change from step to step,
        so a compiled decode step compiles once (the static cache of gpt-fast). ``pos`` is not
        read or advanced; positions past the written ones must be masked by the caller."""
        self.keys[layer].index_copy_(2, input_pos, k)
        self.values[layer].index_copy_(2, input_pos, v)
        return self.keys[layer], self.values[layer]


class Attention(nn.Module):
    """Causal multi-head self-attention with rotary positions and grouped key/value heads.

    Args:
        dim: Width ``d``.
        num_heads: Query heads ``h``; ``d`` must divide by it.
        num_kv_heads: Key/value heads ``k`` (``h`` divisible by ``k``; default ``h``).
        dropout: Attention-probability dropout while training.
    """

    def __init__(self, *, dim: int, num_heads: int, num_kv_heads: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        num_kv_heads = num_kv_heads or num_heads
        if dim % num_heads or num_heads % num_kv_heads:
            raise ValueError(
                f"dim ({dim}) must divide by num_heads ({num_heads}), and num_heads by "
                f"num_kv_heads ({num_kv_heads})"
            )
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = dim // num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, (num_heads + 2 * num_kv_heads) * self.head_dim, bias=False)
        self.proj = nn.Linear(num_heads * self.head_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                kv_cache: KVCache | None = None, layer: int = 0,
                input_pos: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(b, n, d) -> (b, n, d). With a cache, ``x`` holds the positions after ``kv_cache.pos``;
        with ``input_pos`` (n,) too, the positions ``input_pos`` of the cache used as a static
        one (:meth:`KVCache.write`), each attending to the slots where ``attn_mask`` (n, m) is
        true. ``cos`` and ``sin`` are the (n, e) rotary tables of these positions."""
        b, n, _ = x.shape
        h, kv = self.num_heads, self.num_kv_heads
        # Plain view/transpose rather than einops here: this runs once per layer per decoded
        # token, where einops' parsing overhead measured ~6% of decode time.
        qkv = self.qkv(x).view(b, n, h + 2 * kv, self.head_dim)
        # Queries and keys sit side by side in qkv: one rotation for both (half the small ops
        # of a decode step's rotary), with the tables broadcast over heads.
        qk = apply_rotary(qkv[:, :, : h + kv], cos[:, None], sin[:, None])  # (b, n, h+k, e)
        q, k = qk.transpose(1, 2).split([h, kv], dim=1)  # (b, h|k, n, e)
        v = qkv[:, :, h + kv :].transpose(1, 2)  # (b, k, n, e)

        gqa = kv != h
        dropout = self.dropout if self.training else 0.0
        if input_pos is not None:  # static cache: every slot, those not written yet masked
            k, v = kv_cache.write(layer, k, v, input_pos)  # (b, k, m, e)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                                 dropout_p=dropout, enable_gqa=gqa)
            return self.proj(out.transpose(1, 2).reshape(b, n, -1))  # (b, n, h*e)
        past = 0
        if kv_cache is not None:
            past = kv_cache.pos
            k, v = kv_cache.update(layer, k, v)  # (b, k, m, e)
        if past == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=n > 1, dropout_p=dropout,
                                                 enable_gqa=gqa)
        elif n == 1:  # one new token sees every cached position
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, enable_gqa=gqa)
        else:  # a chunk after a prefix: causal within the chunk, full over the prefix
            m = past + n
            mask = torch.ones(n, m, dtype=torch.bool, device=x.device).tril(diagonal=past)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                 enable_gqa=gqa)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))  # (b, n, h*e)
