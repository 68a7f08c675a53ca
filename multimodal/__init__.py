"""multimodal: text, images, audio and short video clips from text, through one shared
Transformer backbone.

Public API (cheap to import; torch loads on first use)::

    import multimodal
    pipe = multimodal.load_pipeline("text-generation", checkpoint="runs/text_fortunes")
    print(pipe("The meaning of life", max_new_tokens=40, seed=0).texts[0])
    multimodal.list_components("decoders")
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__", "list_components", "load_config", "load_pipeline"]


def load_pipeline(task, checkpoint=None, *, device="cpu", torch_dtype=None, compile=False):
    """Load a task's pipeline; see :func:`multimodal.pipelines.load_pipeline`."""
    from multimodal.pipelines import load_pipeline as _load  # deferred: keeps the import cheap

    return _load(task, checkpoint, device=device, torch_dtype=torch_dtype, compile=compile)


def list_components(kind: str | None = None) -> dict[str, list[str]]:
    """Registered component names: ``{kind: [names]}`` for one kind or all.

    Raises:
        UnknownComponentError: ``kind`` is not a registry kind.
    """
    from multimodal.registry import KINDS, get_registry  # deferred: keeps the import cheap

    kinds = [kind] if kind else list(KINDS)
    return {k: get_registry(k).names() for k in kinds}


def load_config(path, overrides=()):
    """Load and validate a YAML config; see :func:`multimodal.config.load_config`."""
    from multimodal.config import load_config as _load  # deferred: keeps the import cheap

    return _load(path, overrides)
