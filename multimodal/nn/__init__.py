"""Shared neural-network primitives: attention with a KV cache, rotary positions, SwiGLU."""

from multimodal.nn.attention import Attention, KVCache, RotaryEmbedding, apply_rotary
from multimodal.nn.mlp import SwiGLU

__all__ = ["Attention", "KVCache", "RotaryEmbedding", "SwiGLU", "apply_rotary"]
