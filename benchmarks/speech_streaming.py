"""Benchmark streamed speech: the time to the first audio byte of ``POST /v1/audio/speech``.

``stream_format: "sse"`` sends the audio as the vocoder makes it (``speech.audio.delta``
events); ``stream_format: "audio"`` makes the whole clip, then sends it in pieces, which is what
the SSE answer did before it streamed (the same wait for the finished clip before its first
byte). For each vocoder and input the two alternate, ``--repeats`` times each with the same
seed, on a server run as users run it (``python -m multimodal serve`` in its own process,
``--checkpoint`` or the embedded joint model). Reported per vocoder and input: the median time
to the first audio byte of each (``before``: the whole clip first; ``after``: streamed) and
their ratio, the median time to the last byte of each (streaming does more work: windows
overlap), and the seconds of audio; and the load average before and after the run, since
timings on a shared machine are noisy. The autoregressive vocoder (sample by sample, slow on
CPUs) speaks the shortest input only.

Human-readable lines are printed as the parts run; the last line is one JSON object with every
figure.

Run (from the repository root)::

    .venv/bin/python benchmarks/speech_streaming.py                 # embedded model, 1 thread
    .venv/bin/python benchmarks/speech_streaming.py --threads 4 --repeats 9
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx2 as httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import log  # noqa: E402
from serve import check, events, free_port, start_server  # noqa: E402

INPUTS = ("Seven.", "A pair of trousers and an ankle boot.",
          "The secret of life is to get up early, and then to sleep all afternoon.")


def whole_clip_first(http: httpx.Client, body: dict) -> dict:
    """``stream_format: "audio"``: seconds to the first and the last audio byte."""
    start = time.perf_counter()
    first, size = None, 0
    with http.stream("POST", "/v1/audio/speech", json={**body, "stream_format": "audio"}) as r:
        check(r)
        for data in r.iter_bytes():
            if data and first is None:
                first = time.perf_counter() - start
            size += len(data)
    return {"first_s": first, "last_s": time.perf_counter() - start, "seconds": size / 2 / 16_000}


def streamed(http: httpx.Client, body: dict) -> dict:
    """``stream_format: "sse"``: seconds to the first delta and to ``speech.audio.done``."""
    start = time.perf_counter()
    first, size, done = None, 0, False
    with http.stream("POST", "/v1/audio/speech", json={**body, "stream_format": "sse"}) as r:
        check(r)
        for name, data in events(r):
            event = json.loads(data)
            if event.get("type") == "speech.audio.delta":
                if first is None:
                    first = time.perf_counter() - start
                size += len(base64.b64decode(event["audio"]))
            elif event.get("type") == "speech.audio.done":
                done = True
            elif name == "error":
                raise RuntimeError(f"the stream failed: {data[:200]}")
    if not done:
        raise RuntimeError("the stream ended before speech.audio.done")
    return {"first_s": first, "last_s": time.perf_counter() - start, "seconds": size / 2 / 16_000}


def measure(http: httpx.Client, body: dict, repeats: int) -> dict:
    """Medians of ``repeats`` alternating requests of each kind (after one warm-up each)."""
    whole_clip_first(http, body), streamed(http, body)  # warm-up: first-call costs
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for _ in range(repeats):
        runs["before"].append(whole_clip_first(http, body))
        runs["after"].append(streamed(http, body))
    out = {kind: {key: statistics.median(r[key] for r in rs) for key in ("first_s", "last_s")}
           for kind, rs in runs.items()}
    out["seconds"] = runs["after"][0]["seconds"]
    out["first_byte_speedup"] = out["before"]["first_s"] / out["after"]["first_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="checkpoint or run directory (default: embedded)")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--repeats", type=int, default=5, help="requests of each kind")
    parser.add_argument("--vocoders", default="griffin-lim,parallel,autoregressive",
                        help="comma-separated vocoders to measure")
    args = parser.parse_args(argv)
    port = free_port()
    load_before = os.getloadavg()
    report: dict = {"threads": args.threads, "repeats": args.repeats, "results": {}}
    with tempfile.NamedTemporaryFile("w", suffix=".log", delete=False) as log_file:
        server = start_server(args.checkpoint, port, log_file, args.threads)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=None) as http:
            model = http.get("/v1/models").json()["data"][0]
            voice = model["voices"][0]
            log(f"model {model['id']}, voice {voice}, {args.threads} thread(s), load average "
                f"{' '.join(f'{x:.2f}' for x in load_before)}")
            for vocoder in args.vocoders.split(","):
                inputs = INPUTS[:1] if vocoder == "autoregressive" else INPUTS
                repeats = 1 if vocoder == "autoregressive" else args.repeats
                for text in inputs:
                    body = {"input": text, "voice": voice, "response_format": "pcm",
                            "seed": 0, "vocoder": vocoder}
                    result = measure(http, body, repeats)
                    report["results"][f"{vocoder}: {text}"] = result
                    log(f"{vocoder:14s} {result['seconds']:5.2f} s of audio: first byte "
                        f"{result['before']['first_s']:.3f} s -> {result['after']['first_s']:.3f}"
                        f" s ({result['first_byte_speedup']:.1f}x sooner); last byte "
                        f"{result['before']['last_s']:.3f} s -> "
                        f"{result['after']['last_s']:.3f} s  [{text[:30]}]")
    finally:
        server.terminate()
        server.wait()
    report["load_average_before"] = list(load_before)
    report["load_average_after"] = list(os.getloadavg())
    log(f"load average after {' '.join(f'{x:.2f}' for x in report['load_average_after'])}")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
