"""The trainable whole: the shared backbone plus one decoder per modality."""

from __future__ import annotations

from torch import nn


class MultimodalModel(nn.Module):
    """Shared backbone and per-modality decoders.

    Args:
        backbone: The shared Transformer.
        decoders: ``{modality name: decoder}``; a decoder may share parameters with the
            backbone (the tied LM head does).
    """

    def __init__(self, *, backbone: nn.Module, decoders: dict[str, nn.Module]):
        super().__init__()
        self.backbone = backbone
        self.decoders = nn.ModuleDict(decoders)

    def forward(self, *args, **kwargs):
        raise TypeError("MultimodalModel has no forward; use model.backbone and "
                        "model.decoders[name] (a modality's loss() composes them)")
