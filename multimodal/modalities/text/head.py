"""The text decoder: an LM head whose weight is tied to the backbone's token embeddings
(Press & Wolf 2017, "Using the Output Embedding to Improve Language Models",
https://arxiv.org/abs/1608.05859).

Axes: b batch, n tokens, d width, v vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from multimodal.registry import decoders


@decoders.register("lm_head")
class LMHead(nn.Module):
    """Projects backbone states to next-token logits.

    Args:
        backbone: The shared backbone (set by the builder); its ``tok_embeddings`` give the
            weight when ``tie_weights`` is true, or its ``output_embeddings`` where it has
            them (a transformers model's own LM head: ``hf_causal_lm``), so the logits are
            that model's.
        tie_weights: Share the weight with the token embeddings (default ``True``).
    """

    injected_args = ("backbone",)

    def __init__(self, *, backbone: nn.Module, tie_weights: bool = True):
        super().__init__()
        self.tie_weights = tie_weights
        if tie_weights:
            # Held in a list so the embedding is not registered twice: the weight lives (and
            # is saved) once, under the backbone.
            self._embedding = [getattr(backbone, "output_embeddings", None)
                               or backbone.tok_embeddings]
        else:
            self.proj = nn.Linear(backbone.dim, backbone.vocab_size, bias=False)
            nn.init.normal_(self.proj.weight, std=0.02)

    @property
    def weight(self) -> torch.Tensor:
        """The (v, d) output projection."""
        return self._embedding[0].weight if self.tie_weights else self.proj.weight

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(b, n, d) states -> (b, n, v) logits."""
        return F.linear(hidden_states, self.weight)
