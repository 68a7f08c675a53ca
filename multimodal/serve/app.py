"""The app factory: FastAPI with OpenAI's routes, API-key auth, a body-size limit, errors in
OpenAI's shape, ``/health`` and ``/metrics``."""

from __future__ import annotations

import hmac

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from multimodal.serve import audio_video, images, text
from multimodal.serve.engine import Engine
from multimodal.serve.errors import APIError
from multimodal.serve.service import ClientGone, Service

STATIC = Path(__file__).resolve().parent / "static"  # the web page (no build step)
OPEN_PATHS = ("/", "/health", "/static/")  # reachable without the API key


def create_app(engine: Engine, *, api_key: str | None = None, max_queue: int = 64,
               timeout: float = 600.0, max_body_bytes: int = 8 << 20,
               batch_window: float = 0.005) -> FastAPI:
    """The server's ASGI app around a loaded :class:`Engine`.

    Args:
        engine: The checkpoint's pipelines.
        api_key: When given, every request but ``/``, ``/health`` and the page's files needs
            ``Authorization: Bearer KEY``.
        max_queue: Requests waiting per lane before 429 with ``Retry-After``.
        timeout: Seconds a request may run before it is stopped (504).
        max_body_bytes: Larger request bodies are refused with 413.
        batch_window: Seconds the scheduler waits for requests to batch with.
    """
    service = Service(engine, api_key=api_key, max_queue=max_queue, timeout=timeout,
                      max_body_bytes=max_body_bytes, batch_window=batch_window)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.scheduler.start()
        yield
        await service.scheduler.stop()

    app = FastAPI(title="multimodal", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.service = service
    for module in (text, images, audio_video):
        app.include_router(module.router)
    _add_handlers(app)
    app.add_middleware(_Guard, service=service)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": engine.model_id, "checkpoint_id": engine.checkpoint_id,
                "tasks": list(engine.pipes), "queued": service.scheduler.queued()}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(service.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model(engine)]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str):
        service.check_model(model_id)
        return _model(engine)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    return app


def _model(engine: Engine) -> dict:
    """OpenAI's model object, plus what a client needs to fill its settings: the tasks, the
    voices of speech, the images' default size in pixels (``image_size``: a square's side,
    or ``[height, width]``; ``image_width`` and ``image_height`` either way) and the sizes an
    image request's ``size`` may ask for (``image_sizes``: each side a multiple of
    ``multiple`` from ``min`` to ``max`` pixels)."""
    speech = engine.pipes.get("text-to-audio")
    image = engine.pipes.get("text-to-image")
    sizes = None
    if image is not None:
        multiple, largest, _ = image.size_limits()
        sizes = {"multiple": multiple, "min": multiple, "max": largest}
    return {"id": engine.model_id, "object": "model", "created": engine.created,
            "owned_by": "multimodal", "tasks": list(engine.pipes),
            "checkpoint_id": engine.checkpoint_id,
            "voices": list(speech.voices) if speech is not None else [],
            "image_size": image.vae.image_size if image is not None else None,
            "image_width": image.vae.width if image is not None else None,
            "image_height": image.vae.height if image is not None else None,
            "image_sizes": sizes}


def _add_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone):
        return Response(status_code=499)  # nobody reads it

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return APIError(exc.status_code, message, code=code).response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        problem = exc.errors()[0]
        param = ".".join(str(p) for p in problem["loc"][1:]) or None
        return APIError(400, f"{param}: {problem['msg']}", param=param).response()

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}",
                        type="server_error").response()


class _BodyTooLarge(Exception):
    pass


class _Guard:
    """ASGI middleware: the API key, then the body-size limit (by ``Content-Length``, and
    by counting for bodies sent without one)."""

    def __init__(self, app, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        refusal = self._refusal(scope["path"], headers)
        if refusal is not None:
            return await refusal.response()(scope, receive, send)
        limit, seen, started = self.service.max_body_bytes, 0, False

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _too_large(limit).response()(scope, receive, send)

    def _refusal(self, path: str, headers: dict[str, str]) -> APIError | None:
        key = self.service.api_key
        if key is not None and path != "/" and not path.startswith(OPEN_PATHS[1:]):
            given = headers.get("authorization", "")
            if not given.startswith("Bearer "):
                return APIError(401, "missing API key: send 'Authorization: Bearer KEY'",
                                code="invalid_api_key")
            if not hmac.compare_digest(given[7:].encode(), key.encode()):
                return APIError(401, "incorrect API key provided", code="invalid_api_key")
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return APIError(400, f"bad Content-Length {length!r}")
            if int(length) > self.service.max_body_bytes:
                return _too_large(self.service.max_body_bytes)
        return None


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than {limit} bytes",
                    code="request_too_large")



