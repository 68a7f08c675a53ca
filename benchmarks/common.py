"""Helpers the benchmark scripts share: printing as they go, and timing."""

from __future__ import annotations

import time


def log(message: str = "") -> None:
    """Print a line at once (benchmarks run long; show progress as it happens)."""
    print(message, flush=True)


def timed(fn) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_of(fns: dict, repeats: int) -> dict[str, float]:
    """Best wall time of each function, the functions alternating so load hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}
