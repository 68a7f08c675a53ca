"""The batching scheduler: a bounded queue per lane, and requests of the same kind run together.

A request becomes a :class:`Job` with a ``key``; the scheduler takes the oldest job of a lane,
waits a moment (``batch_window``) for others to arrive, and hands every queued job with the
same key (up to ``max_batch``) to that kind's runner in ONE call on the lane's worker thread.
While a call runs, new jobs queue, so under load batches fill by themselves. Lanes run side by
side: a minute-long video job does not hold up a chat reply.

A full queue refuses with 429 and ``Retry-After``; a job whose client went away (or that timed
out) is marked cancelled, skipped if it has not started, and runners stop its work at the
next step.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from multimodal.serve.errors import APIError
from multimodal.serve.metrics import Metrics


class Cancelled(Exception):
    """Raised inside a runner to stop work whose clients all went away."""


@dataclass
class Job:
    """One request waiting for (or in) a model call.

    Attributes:
        kind: The runner that serves it (``"text"``, ``"image"``, ...).
        key: Jobs of one kind with equal keys may run in one call.
        payload: What the runner reads.
        emit: Called from the worker thread with stream events (``None``: not streaming).
    """

    kind: str
    key: Hashable
    payload: Any
    emit: Callable[[Any], None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    future: asyncio.Future | None = None
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class Runner:
    """How one kind of job runs: ``run(jobs) -> [result or exception per job]`` on ``lane``."""

    run: Callable[[list[Job]], list[Any]]
    lane: str = "main"
    max_batch: int = 16


class Scheduler:
    """Queues and runs :class:`Job`s (see the module docstring).

    Args:
        runners: Kind -> :class:`Runner`.
        metrics: Where queue lengths and batch sizes go.
        max_queue: Jobs waiting per lane before 429.
        batch_window: Seconds to wait for company when a lane was idle.
    """

    def __init__(self, runners: dict[str, Runner], metrics: Metrics, *, max_queue: int = 64,
                 batch_window: float = 0.005):
        self.runners, self.metrics = runners, metrics
        self.max_queue, self.batch_window = max_queue, batch_window
        lanes = {runner.lane for runner in runners.values()}
        self.queues: dict[str, list[Job]] = {lane: [] for lane in lanes}
        self.wakeups: dict[str, asyncio.Event] = {}
        self.executors = {lane: ThreadPoolExecutor(1, thread_name_prefix=f"serve-{lane}")
                          for lane in lanes}
        self.tasks: list[asyncio.Task] = []

    def start(self) -> None:
        for lane in self.queues:
            self.wakeups[lane] = asyncio.Event()
            self.tasks.append(asyncio.get_running_loop().create_task(self._loop(lane)))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for lane, queue in self.queues.items():
            for job in queue:
                job.cancelled.set()
        for executor in self.executors.values():
            executor.shutdown(wait=False, cancel_futures=True)

    def queued(self, lane: str | None = None) -> int:
        return sum(len(q) for name, q in self.queues.items() if lane in (None, name))

    def submit(self, job: Job) -> asyncio.Future:
        """Queue ``job``; its ``future`` resolves to the runner's result.

        Raises:
            APIError: 429 with ``Retry-After`` when the lane's queue is full.
        """
        lane = self.runners[job.kind].lane
        queue = self.queues[lane]
        if len(queue) >= self.max_queue:
            self.metrics.rejected.labels(job.kind).inc()
            raise APIError(429, f"the server is busy ({len(queue)} requests waiting); retry "
                                "in a moment", type="rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": "1"})
        job.future = asyncio.get_running_loop().create_future()
        queue.append(job)
        self.metrics.queue_length.labels(lane).set(len(queue))
        self.wakeups[lane].set()
        return job.future

    async def _loop(self, lane: str) -> None:
        queue, wakeup = self.queues[lane], self.wakeups[lane]
        loop = asyncio.get_running_loop()
        while True:
            if not queue:
                wakeup.clear()
                await wakeup.wait()
                await asyncio.sleep(self.batch_window)  # let simultaneous arrivals join
            batch = self._take(queue)
            self.metrics.queue_length.labels(lane).set(len(queue))
            if not batch:
                continue
            runner = self.runners[batch[0].kind]
            self.metrics.batch_size.labels(batch[0].kind).observe(len(batch))
            try:
                results = await loop.run_in_executor(self.executors[lane], runner.run, batch)
            except Exception as exc:  # the whole call failed: every job gets the error
                results = [exc] * len(batch)
            for job, result in zip(batch, results):
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    if isinstance(result, Cancelled):
                        self.metrics.cancelled.labels(job.kind).inc()
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    def _take(self, queue: list[Job]) -> list[Job]:
        """The oldest live job and every queued job of its kind and key (up to max_batch);
        cancelled jobs are dropped on the way."""
        for job in [j for j in queue if j.cancelled.is_set()]:
            queue.remove(job)
            if not job.future.done():
                job.future.set_exception(Cancelled())
        if not queue:
            return []
        first = queue[0]
        limit = self.runners[first.kind].max_batch
        batch = [j for j in queue if j.kind == first.kind and j.key == first.key][:limit]
        for job in batch:
            queue.remove(job)
        return batch
