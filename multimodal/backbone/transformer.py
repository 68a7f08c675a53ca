"""The shared Transformer backbone: a decoder-only, pre-norm Transformer.

Every modality reads and writes through this one network. Text arrives as token ids; any other
modality arrives as a sequence of embeddings made by its tokenizer (VAE latent patches, mel
frames). A learned modality-type embedding tells the backbone what each position holds.

The block follows LLaMA (Touvron et al. 2023, https://arxiv.org/abs/2302.13971): RMSNorm
before attention and MLP, rotary positions, SwiGLU MLP, no biases; attention runs through
``scaled_dot_product_attention`` and decodes incrementally with a :class:`KVCache`.

Axes: b batch, n tokens, d width, v vocabulary.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from multimodal.nn.attention import Attention, KVCache, RotaryEmbedding
from multimodal.nn.mlp import SwiGLU
from multimodal.registry import backbones

# Modality-type ids; plugins may use any id below ``num_modalities``.
MODALITY_IDS = {"text": 0, "image": 1, "audio": 2, "video": 3}


class Block(nn.Module):
    """One pre-norm residual block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, *, dim: int, num_heads: int, num_kv_heads: int | None, hidden_dim: int,
                 dropout: float, norm_eps: float):
        super().__init__()
        self.attn_norm = nn.RMSNorm(dim, eps=norm_eps)
        self.attn = Attention(dim=dim, num_heads=num_heads, num_kv_heads=num_kv_heads,
                              dropout=dropout)
        self.mlp_norm = nn.RMSNorm(dim, eps=norm_eps)
        self.mlp = SwiGLU(dim=dim, hidden_dim=hidden_dim)
        # None when off: a no-op Dropout call still costs ~4% of decode time.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    def forward(self, x, cos, sin, kv_cache=None, layer=0, input_pos=None, attn_mask=None):
        """(b, n, d) -> (b, n, d); the cache arguments as :meth:`Attention.forward` takes them."""
        attn = self.attn(self.attn_norm(x), cos, sin, kv_cache, layer, input_pos, attn_mask)
        x = x + (self.dropout(attn) if self.dropout is not None else attn)
        mlp = self.mlp(self.mlp_norm(x))
        return x + (self.dropout(mlp) if self.dropout is not None else mlp)


@backbones.register("transformer")
class TransformerBackbone(nn.Module):
    """Decoder-only Transformer shared by every modality.

    Args:
        vocab_size: Text vocabulary ``v`` (set by the builder from the text tokenizer).
        dim: Width ``d`` (default 256).
        depth: Number of blocks (default 6).
        num_heads: Attention heads; ``dim`` must divide by it (default 8).
        num_kv_heads: Key/value heads for grouped-query attention (default: ``num_heads``).
        hidden_dim: SwiGLU hidden width (default: ``8/3 * dim`` rounded up to a multiple of 64).
        max_seq_len: Longest sequence, prompt plus generation (default 512).
        num_modalities: Size of the modality-type embedding (default 8; see ``MODALITY_IDS``).
        rope_theta: Rotary base frequency (default 10,000).
        dropout: Residual and attention dropout while training (default 0).
        norm_eps: RMSNorm epsilon (default 1e-5).

    Raises:
        ValueError: widths that do not divide into heads.
    """

    injected_args = ("vocab_size",)
    # train.lora's default (multimodal.nn.lora): every linear layer of the blocks, by name
    # inside the backbone: attention q/k/v + output, the SwiGLU MLP
    lora_modules = r"blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(w13|w2))"

    def __init__(self, *, vocab_size: int, dim: int = 256, depth: int = 6, num_heads: int = 8,
                 num_kv_heads: int | None = None, hidden_dim: int | None = None,
                 max_seq_len: int = 512, num_modalities: int = 8, rope_theta: float = 10000.0,
                 dropout: float = 0.0, norm_eps: float = 1e-5):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must divide by num_heads ({num_heads})")
        if hidden_dim is None:
            hidden_dim = 64 * math.ceil(8 * dim / 3 / 64)
        self.vocab_size, self.dim, self.depth = vocab_size, dim, depth
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads or num_heads
        self.hidden_dim, self.max_seq_len = hidden_dim, max_seq_len
        self.tok_embeddings = nn.Embedding(vocab_size, dim)
        self.modality_embeddings = nn.Embedding(num_modalities, dim)
        self.rotary = RotaryEmbedding(head_dim=dim // num_heads, max_seq_len=max_seq_len,
                                      theta=rope_theta)
        self.blocks = nn.ModuleList(
            Block(dim=dim, num_heads=num_heads, num_kv_heads=num_kv_heads, hidden_dim=hidden_dim,
                  dropout=dropout, norm_eps=norm_eps)
            for _ in range(depth)
        )
        self.norm = nn.RMSNorm(dim, eps=norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 depth)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.w2):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * self.depth))
        nn.init.zeros_(self.modality_embeddings.weight)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (b, n, d) of text ids (b, n)."""
        return self.tok_embeddings(input_ids)

    def forward(self, input_ids: torch.Tensor | None = None, *,
                inputs_embeds: torch.Tensor | None = None,
                modality_ids: torch.Tensor | int = 0,
                kv_cache: KVCache | None = None) -> torch.Tensor:
        """Run the backbone.

        Args:
            input_ids: Text token ids (b, n), int64; or
            inputs_embeds: Embeddings (b, n, d) from any modality tokenizer (exactly one of the
                two is given).
            modality_ids: Modality-type id per position (b, n), or one int for all (default 0,
                text).
            kv_cache: Cache to read earlier positions from and append these to; its ``pos``
                advances by ``n``.

        Returns:
            Hidden states (b, n, d), after the final RMSNorm.

        Raises:
            ValueError: neither or both inputs given, or the sequence exceeds ``max_seq_len``.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        x = self.tok_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if isinstance(modality_ids, int):
            x = x + self.modality_embeddings.weight[modality_ids]
        else:
            x = x + self.modality_embeddings(modality_ids)
        n = x.shape[1]
        start = kv_cache.pos if kv_cache is not None else 0
        if start + n > self.max_seq_len:
            raise ValueError(
                f"sequence of {start + n} positions exceeds the backbone's max_seq_len "
                f"({self.max_seq_len})"
            )
        cos, sin = self.rotary(start, n)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, kv_cache, i)
        if kv_cache is not None:
            kv_cache.pos += n
        return self.norm(x)

    def decode_step(self, input_ids: torch.Tensor, input_pos: torch.Tensor, kv_cache: KVCache,
                    *, modality_id: int = 0) -> torch.Tensor:
        """Run new tokens at positions given as a tensor, against ``kv_cache`` as a static cache.

        What a decode loop calls after a prefill by :meth:`forward`: the keys and values are
        written in place at ``input_pos`` and attention reads the whole cache, masking the
        slots past each position, so that no shape and no Python number changes from one step
        to the next and ``torch.compile`` compiles the step once (the static KV cache of
        gpt-fast, https://github.com/pytorch-labs/gpt-fast). ``kv_cache.pos`` is neither read nor
        advanced: the caller keeps the positions, and keeps them inside the cache and the
        backbone's ``max_seq_len`` (not checked here, which would cost a device sync).

        Args:
            input_ids: Text token ids (b, n), int64.
            input_pos: Their positions (n,), int64, consecutive; every earlier position is
                already in the cache.
            kv_cache: From :meth:`new_kv_cache`.
            modality_id: Modality-type id of every position (default 0, text).

        Returns:
            Hidden states (b, n, d), after the final RMSNorm; equal to those of
            :meth:`forward` up to float rounding.
        """
        x = self.tok_embeddings(input_ids) + self.modality_embeddings.weight[modality_id]
        cos, sin = self.rotary.cos[input_pos], self.rotary.sin[input_pos]  # (n, e)
        # the cache's length from its tensors: symbolic when a compiler marks it dynamic
        slots = torch.arange(kv_cache.keys[0].shape[2], device=input_pos.device)
        attn_mask = slots <= input_pos[:, None]  # (n, m): each sees itself and the earlier
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, kv_cache, i, input_pos, attn_mask)
        return self.norm(x)

    def new_kv_cache(self, batch_size: int, max_seq_len: int | None = None,
                     dtype: torch.dtype | None = None) -> KVCache:
        """An empty :class:`KVCache` sized for this backbone."""
        ref = self.tok_embeddings.weight
        return KVCache(num_layers=self.depth, batch_size=batch_size,
                       max_seq_len=max_seq_len or self.max_seq_len,
                       num_kv_heads=self.num_kv_heads, head_dim=self.dim // self.num_heads,
                       dtype=dtype or ref.dtype, device=ref.device)

    def num_parameters(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_embeddings.weight.numel() + self.modality_embeddings.weight.numel()
        return n
