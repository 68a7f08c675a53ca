"""What every route shares: the engine, the scheduler, waiting for a job, streaming its events.

A route validates its request completely (schemas, then the pipeline's own checks and the
safety policy) before anything is queued, turns it into a :class:`~.scheduler.Job`, and either
waits for the result (:meth:`Service.wait`: stops the work when the client goes away or the
request times out) or streams it (:meth:`Service.stream`: server-sent events as the worker
emits them; closing the connection cancels the job).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import StreamingResponse

from multimodal.serve.engine import Engine
from multimodal.serve.errors import APIError, from_exception
from multimodal.serve.metrics import Metrics
from multimodal.serve.scheduler import Cancelled, Job, Scheduler
from multimodal.serve.schemas import parse

POLL_SECONDS = 0.1  # how often a waiting request looks for its client having gone


class ClientGone(Exception):
    """The client disconnected; its job was cancelled and nothing is answered."""


class Service:
    """The server's state (see the module docstring).

    Args:
        engine: The loaded checkpoint.
        api_key: Required as ``Authorization: Bearer KEY`` when given.
        max_queue: Jobs waiting per lane before 429.
        timeout: Seconds a request may take before it is cancelled (504).
        max_body_bytes: Larger request bodies get 413.
        batch_window: Seconds the scheduler waits for company.
    """

    def __init__(self, engine: Engine, *, api_key: str | None = None, max_queue: int = 64,
                 timeout: float = 600.0, max_body_bytes: int = 8 << 20,
                 batch_window: float = 0.005):
        self.engine, self.api_key, self.timeout = engine, api_key, timeout
        self.max_body_bytes = max_body_bytes
        self.metrics = Metrics()
        self.scheduler = Scheduler(engine.runners(), self.metrics, max_queue=max_queue,
                                   batch_window=batch_window)
        self.videos: dict[str, Any] = {}

    # -- requests --------------------------------------------------------------------------
    def check_model(self, model: str | None) -> None:
        """Refuse a ``model`` other than this server's (404, as OpenAI does)."""
        if model is not None and model != self.engine.model_id:
            raise APIError(404, f"The model '{model}' does not exist; this server serves "
                                f"'{self.engine.model_id}' (GET /v1/models)", param="model",
                           code="model_not_found")

    def pipe(self, task: str) -> Any:
        """The pipeline of ``task``, or 400 when the checkpoint cannot do it."""
        if task not in self.engine.pipes:
            raise APIError(400, f"the model '{self.engine.model_id}' cannot do {task}; it "
                                f"serves {', '.join(self.engine.pipes)}", param="model",
                           code="unsupported_task")
        return self.engine.pipes[task]

    async def read(self, request: Request, schema: type[Request]) -> Any:
        """The request's JSON body as ``schema``, its ``model`` checked (400/404 otherwise)."""
        body = parse(schema, await self.body(request))
        self.check_model(body.model)
        return body

    async def body(self, request: Request) -> Any:
        """The request's JSON body, or 400 for malformed JSON."""
        raw = await request.body()
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"the request body is not valid JSON ({exc})",
                           code="invalid_json") from None
        except RecursionError:  # no request of this API nests more than a few levels
            raise APIError(400, "the request body nests too deep to read; a request of this "
                                "API is a few levels of objects and lists",
                           code="invalid_json") from None

    # -- waiting ----------------------------------------------------------------------------
    async def wait(self, request: Request | None, job: Job, task: str) -> Any:
        """Queue ``job`` and wait for its result.

        Raises:
            APIError: 429 (queue full), 504 (timeout), or what the runner's error maps to.
            ClientGone: the client disconnected (the job is cancelled).
        """
        future = self.scheduler.submit(job)
        try:
            while True:
                done, _ = await asyncio.wait({future}, timeout=POLL_SECONDS)
                if done:
                    break
                if request is not None and await request.is_disconnected():
                    job.cancelled.set()
                    raise ClientGone()
                if time.monotonic() - job.arrived > self.timeout:
                    job.cancelled.set()
                    raise APIError(504, f"the request took longer than {self.timeout:g} s and "
                                        "was stopped", type="timeout_error", code="timeout")
            try:
                result = future.result()
            except Cancelled:
                raise ClientGone() from None
            except Exception as exc:
                raise from_exception(exc) from None
            if isinstance(result, Exception):
                raise from_exception(result)
            self.record(task, job, "ok")
            return result
        except APIError as exc:
            self.record(task, job, str(exc.status))
            raise
        except ClientGone:
            self.record(task, job, "disconnected")
            raise

    def record(self, task: str, job: Job, status: str) -> None:
        self.metrics.requests.labels(task, status).inc()
        if status == "ok":
            self.metrics.latency.labels(task).observe(time.monotonic() - job.arrived)

    def stream(self, request: Request, job: Job, task: str,
               events: Callable[[Any], list[dict]], final: Callable[[Any], list[dict]],
               done_marker: bool = False, headers: dict[str, str] | None = None
               ) -> StreamingResponse:
        """Queue ``job`` (a full queue is a 429 now, before the stream starts) and stream
        server-sent events: ``events(item)`` for each item the worker emits, then
        ``final(result)``; an error after the start is sent as an ``error`` event. A
        disconnect cancels the job. ``headers`` go with the response."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()
        job.emit = lambda item: loop.call_soon_threadsafe(items.put_nowait, item)
        future = self.scheduler.submit(job)
        future.add_done_callback(lambda _: items.put_nowait(StopIteration))

        async def generate() -> AsyncIterator[bytes]:
            try:
                while True:
                    try:
                        item = await asyncio.wait_for(items.get(), timeout=POLL_SECONDS)
                    except asyncio.TimeoutError:
                        if await request.is_disconnected():
                            return  # the finally below cancels the job
                        if time.monotonic() - job.arrived > self.timeout:
                            raise
                        continue
                    if item is StopIteration:
                        break
                    for event in events(item):
                        yield sse(event)
                try:
                    result = future.result()
                    if isinstance(result, Exception):
                        raise result
                except Cancelled:
                    return
                except Exception as exc:
                    error = from_exception(exc)
                    self.record(task, job, str(error.status))
                    yield sse(error.body(), "error")
                    return
                for event in final(result):
                    yield sse(event)
                if done_marker:
                    yield b"data: [DONE]\n\n"
                self.record(task, job, "ok")
            except asyncio.TimeoutError:
                job.cancelled.set()
                error = APIError(504, f"the request took longer than {self.timeout:g} s and "
                                      "was stopped", type="timeout_error", code="timeout")
                self.record(task, job, "504")
                yield sse(error.body(), "error")
            finally:  # also when the client goes away mid-stream (the generator is closed)
                if not future.done():
                    job.cancelled.set()
                    self.record(task, job, "disconnected")

        return StreamingResponse(generate(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", **(headers or {})})


def sse(data: dict, event: str | None = None) -> bytes:
    """One server-sent event (``event:`` line from ``data["type"]`` when it has one)."""
    name = event or data.get("type")
    head = f"event: {name}\n" if name else ""
    return (head + "data: " + json.dumps(data, ensure_ascii=False) + "\n\n").encode()
