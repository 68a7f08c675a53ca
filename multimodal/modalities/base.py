"""The contract a modality fulfils for training.

A modality turns the items of its dataset into batches and a batch into a loss through the
shared backbone and its own decoder. The trainer knows nothing else about it, which is what lets
a plugin add a modality without edits to the core.

Batches must be a pure function of ``(dataset, tokenizer, generator state)``: the trainer seeds a
fresh ``torch.Generator`` per step from ``(seed, step, micro_step)``, so a resumed run draws the
same batches as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any, Iterator, Protocol

import torch


class Tokenizer(Protocol):
    """What the trainer and checkpoints need from a tokenizer (media <-> ids or latents).

    Attributes:
        fit_on: ``"text"``: fitted on the texts of every modality (captions, transcripts and
            documents, from each modality's ``text_corpus``); or a modality name: fitted on
            that modality's training dataset (an image VAE on images).
    """

    fit_on: str

    @property
    def is_trained(self) -> bool: ...

    def fit(self, data: Any, *, seed: int = 0, device: Any = "cpu", progress: bool = True) -> Any:
        """Learn from ``data`` (see ``fit_on``); runs before the backbone trains."""

    def save(self, directory: Any) -> None:
        """Write everything needed to rebuild it into an existing ``directory``."""

    @classmethod
    def load(cls, directory: Any, **config: Any) -> "Tokenizer":
        """Rebuild from ``directory``; ``config`` is its config section (without ``type``)."""


class Modality(Protocol):
    """What the trainer needs from a modality.

    Attributes:
        name: The modality's registry name (also its key under ``decoders:`` and ``data:``).
    """

    name: str

    def prepare(self, dataset: Any, tokenizers: dict[str, Any], *, seq_len: int) -> Any:
        """Preprocess a dataset once (tokenise, cache); return what ``sample`` draws from."""

    def sample(self, prepared: Any, *, batch_size: int, generator: torch.Generator) -> dict:
        """One training batch of tensors, drawn with ``generator``."""

    def eval_batches(self, prepared: Any, *, batch_size: int, max_batches: int) -> Iterator[dict]:
        """A fixed, deterministic sequence of validation batches."""

    # Optional: ``check_data(dataset, tokenizers)`` raises DataError before any tokenizer is
    # fitted when the data cannot work with them (the audio modality: an unlisted voice).

    def text_corpus(self, dataset: Any) -> Iterator[str]:
        """The texts in ``dataset`` (documents, captions, transcripts) for the text tokenizer."""

    def loss(self, backbone: torch.nn.Module, decoder: torch.nn.Module, batch: dict
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar training loss and metrics to log (``{"tokens": ..., ...}``)."""
