"""What the tests of ``multimodal serve`` share: the tiny joint checkpoint trained once
(configs/tiny.yaml; the session fixture ``serve_engine`` in conftest.py calls
:func:`train_tiny_engine`) and uvicorn in a thread on a free loopback port."""

from __future__ import annotations

import gc
import os
import socket
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEY = "test-key"  # the API key the tests' servers require


def train_tiny_engine(root: Path):
    """Train configs/tiny.yaml into ``root/run`` (its tokenizer caches under ``root/cache``)
    and load it as the server's :class:`~multimodal.serve.Engine`."""
    from multimodal.config import load_config
    from multimodal.serve import Engine
    from multimodal.training.trainer import train

    old = os.environ.get("MULTIMODAL_CACHE")
    os.environ["MULTIMODAL_CACHE"] = str(root / "cache")
    try:
        train(load_config(ROOT / "configs" / "tiny.yaml"), out_dir=root / "run", progress=False)
    finally:
        if old is None:
            os.environ.pop("MULTIMODAL_CACHE")
        else:
            os.environ["MULTIMODAL_CACHE"] = old
    return Engine(root / "run")


class LiveServer:
    """uvicorn in a thread on a free loopback port."""

    def __init__(self, app):
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"the server did not start on port {self.port}")
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self):
        self.server.should_exit = True
        self.thread.join()
        # finalise the server's generators now, not during a later test (CPython 3.11's
        # ast.parse fails when a finaliser runs inside it)
        gc.collect()
