"""The sketch decoder: stroke tokens in and out of the SHARED backbone.

One sequence holds a caption and its sketch::

    <eos> caption ids ...  NEW_STROKE p p ... NEW_STROKE p ... END  (PAD ...)
    |-- text, modality 0 --|---------- strokes, modality 4 -----------|

Caption positions are embedded with the backbone's own text embeddings
(``backbone.tok_embeddings``), stroke positions with this decoder's stroke-token embedding
plus a factorised cell embedding (``x_embedding[x] + y_embedding[y]`` for a cell ``y*G + x``,
so neighbouring cells start out related); both go into the backbone through
``inputs_embeds`` with ``modality_ids`` 0 (text) and 4 (sketch). A linear head turns the
backbone's states into logits over the stroke vocabulary (``G*G + 3``).

Axes: b batch, n positions, d backbone width, v stroke vocabulary.
"""

from __future__ import annotations

import torch
from torch import nn

TEXT_MODALITY_ID = 0  # multimodal.backbone.transformer.MODALITY_IDS["text"]
SKETCH_MODALITY_ID = 4  # the first id the built-in modalities leave free


class StrokeHead(nn.Module):
    """Stroke-token embedding and output head of the sketch modality.

    Args:
        backbone: The shared backbone (set by the builder); gives the width ``d`` and the
            context length.
        grid_size: Cells per side ``G`` of the stroke tokenizer (must equal
            ``tokenizers.sketch.grid_size``; default 32).
        max_tokens: Stroke tokens generated at most per sketch (default 96; below the
            backbone's ``max_seq_len``).
        cond_dropout: Share of training captions replaced by the empty caption, so the model
            also learns to draw unconditionally (default 0.1).

    Raises:
        ValueError: a value outside the ranges above.
    """

    injected_args = ("backbone",)

    def __init__(self, *, backbone: nn.Module, grid_size: int = 32, max_tokens: int = 96,
                 cond_dropout: float = 0.1):
        super().__init__()
        if not 2 <= grid_size <= 256:
            raise ValueError(f"grid_size must be in 2..256, got {grid_size}")
        if not 2 <= max_tokens < backbone.max_seq_len:
            raise ValueError(f"max_tokens must be in 2..{backbone.max_seq_len - 1} (below the "
                             f"backbone's max_seq_len {backbone.max_seq_len}), got {max_tokens}")
        if not 0.0 <= cond_dropout < 1.0:
            raise ValueError(f"cond_dropout must be in [0, 1), got {cond_dropout}")
        self.grid_size, self.max_tokens, self.cond_dropout = grid_size, max_tokens, cond_dropout
        self.num_cells = grid_size * grid_size
        self.new_stroke_id, self.end_id, self.pad_id = (self.num_cells, self.num_cells + 1,
                                                        self.num_cells + 2)
        self.vocab_size = self.num_cells + 3
        dim = backbone.dim
        self.token_embedding = nn.Embedding(self.vocab_size, dim)
        self.x_embedding = nn.Embedding(grid_size, dim)
        self.y_embedding = nn.Embedding(grid_size, dim)
        self.head = nn.Linear(dim, self.vocab_size, bias=False)
        for module in (self.token_embedding, self.x_embedding, self.y_embedding, self.head):
            nn.init.normal_(module.weight, std=0.02)

    def embed_strokes(self, stroke_ids: torch.Tensor) -> torch.Tensor:
        """(b, n) stroke-token ids -> (b, n, d) embeddings."""
        is_cell = stroke_ids < self.num_cells
        cell = stroke_ids.clamp(max=self.num_cells - 1)
        x, y = cell % self.grid_size, cell // self.grid_size
        position = self.x_embedding(x) + self.y_embedding(y)
        return self.token_embedding(stroke_ids) + position * is_cell[..., None]

    def forward(self, backbone: nn.Module, text_ids: torch.Tensor, stroke_ids: torch.Tensor,
                is_stroke: torch.Tensor, *, kv_cache=None) -> torch.Tensor:
        """Run the backbone over a mixed caption + stroke sequence.

        Args:
            backbone: The shared backbone.
            text_ids: (b, n) int64 text ids, read where ``is_stroke`` is false.
            stroke_ids: (b, n) int64 stroke-token ids, read where ``is_stroke`` is true.
            is_stroke: (b, n) bool.
            kv_cache: The backbone's cache, for decoding token by token.

        Returns:
            (b, n, v) logits of the next stroke token after each position.
        """
        text = backbone.tok_embeddings(text_ids)
        strokes = self.embed_strokes(stroke_ids)
        embeds = torch.where(is_stroke[..., None], strokes.to(text.dtype), text)
        modality_ids = torch.where(is_stroke, SKETCH_MODALITY_ID, TEXT_MODALITY_ID)
        states = backbone(inputs_embeds=embeds, modality_ids=modality_ids, kv_cache=kv_cache)
        return self.head(states)
