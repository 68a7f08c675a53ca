"""``multimodal serve``: an OpenAI-compatible HTTP server for every task of one checkpoint.

One process loads the checkpoint once (:class:`~multimodal.serve.engine.Engine`) and serves
text (``/v1/completions``, ``/v1/chat/completions``; an image in a chat message is captioned),
images (``/v1/images/generations`` with partial images, ``/v1/images/edits``), speech
(``/v1/audio/speech``) and video jobs (``/v1/videos``) in OpenAI's request and response shapes,
so the official ``openai`` client works unchanged. Requests of the same kind are batched
(:mod:`~multimodal.serve.scheduler`); errors are OpenAI's ``{"error": {...}}``.

    from multimodal.serve import Engine, create_app
    app = create_app(Engine("runs/joint"), api_key="secret")   # any ASGI server runs it
"""

from __future__ import annotations

from pathlib import Path

from multimodal.serve.app import create_app
from multimodal.serve.engine import Engine

__all__ = ["Engine", "create_app", "run_server"]


def run_server(checkpoint: str | Path | None = None, *, host: str = "127.0.0.1",
               port: int = 8000, api_key: str | None = None, device: str = "cpu",
               **options) -> None:
    """Load ``checkpoint`` (default: the embedded one) and serve it with uvicorn until
    interrupted. ``options`` go to :func:`create_app` (``max_queue``, ``timeout``, ...)."""
    import uvicorn  # deferred: only the command that serves needs the ASGI server

    app = create_app(Engine(checkpoint, device=device), api_key=api_key, **options)
    uvicorn.run(app, host=host, port=port, log_level="info")
