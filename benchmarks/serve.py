"""Benchmark ``multimodal serve``: batching, and concurrent clients over a mix of tasks.

The server runs as it does for users: ``python -m multimodal serve`` in its own process on a
free loopback port, with ``--checkpoint`` (default: the embedded joint model). Two parts, in
one run:

(a) Batching. The same requests (text completions; text-to-image generations) sent one at a
    time, each alone in its model call, then all at once, so the server batches them:
    ``speedup = throughput all at once / throughput one at a time`` (target >= 2x for text
    and images), and whether every answer is the same alone and in a batch (text: equal
    strings; images: the largest pixel difference, float rounding of the batch allowed).
    Text is measured with one prompt (a seed per request: the target) and with mixed
    prompts (``text_mixed_prompts``: rows of different prompt lengths decode in separate
    loops, so it shows what a real mix gets).

(b) Load. ``--clients`` clients (default 32) send requests for ``--duration`` seconds (default
    60) over a mix of tasks (``--mix``: streamed completions, chat, streamed image generation
    with partial images, image edits, speech, captions, video jobs polled to their MP4), each
    client waiting for its answer before it sends the next. Reported: requests completed,
    failed (the server answered an error; target 0) and lost (no complete answer: connection
    dropped, stream cut short, or still unanswered ``--drain`` seconds after the end; target
    0); p50 and p95 latency per task; time to first token (streamed completions) and to first
    partial image (streamed generations); the mean batch size per kind from ``/metrics``.

Human-readable lines are printed as the parts run; the last line is one JSON object with every
figure.

Run (from the repository root)::

    .venv/bin/python benchmarks/serve.py                       # 32 clients, 60 s, embedded model
    .venv/bin/python benchmarks/serve.py --quick               # 8 clients, 15 s, fewer steps
    .venv/bin/python benchmarks/serve.py --checkpoint runs/joint --clients 64 --duration 120

Timings on a shared or loaded machine are noisy; the batching ratio compares the two modes in
the same run, back to back.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import io
import json
import math
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import log  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ("The cat", "Once upon a time", "A man walks into", "Love is", "The sea",
           "In the morning", "Never", "What is the")
IMAGE_PROMPTS = ("a bag", "a sneaker", "a dress", "a shirt with long sleeves", "a coat",
                 "a sandal", "an ankle boot", "a pullover")
SPEECH_INPUTS = ("seven", "three bags", "one shirt", "nine sneakers", "two coats")
DEFAULT_MIX = "text=6,chat=2,image=4,edit=1,speech=2,caption=1,video=1"


class ServerError(Exception):
    """The server answered an error (a 4xx/5xx, or an ``error`` event in a stream)."""


class Lost(Exception):
    """No complete answer: the stream ended before its last event, or the answer is broken."""


# -- the server ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: str | None, port: int, log_file, threads: int | None
                 ) -> subprocess.Popen:
    """``python -m multimodal serve`` on ``port``; returns once ``/health`` answers."""
    command = [sys.executable, "-m", "multimodal", "serve", "--port", str(port)]
    if checkpoint:
        command += ["--checkpoint", checkpoint]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    process = subprocess.Popen(command, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
                               env=env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}; see {log_file.name}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.terminate()
    raise SystemExit("the server did not answer /health within 10 minutes")


def batch_sizes(http: httpx.Client) -> dict[str, float]:
    """Mean requests per model call of each kind, from ``/metrics``."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in http.get("/metrics").text.splitlines():
        for name, into in (("multimodal_batch_size_sum", sums),
                           ("multimodal_batch_size_count", counts)):
            if line.startswith(name + "{"):
                task = line.split('task="', 1)[1].split('"', 1)[0]
                into[task] = float(line.rsplit(" ", 1)[1])
    return {task: sums[task] / counts[task] for task in counts if counts[task]}


# -- requests -------------------------------------------------------------------------------------
def check(response: httpx.Response) -> None:
    if response.status_code >= 400:
        response.read()
        raise ServerError(f"{response.status_code}: {response.text[:200]}")


def events(response: httpx.Response):
    """``(event name, data)`` of each server-sent event."""
    name, data = None, []
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
        elif not line and data:
            yield name, "\n".join(data)
            name, data = None, []
    if data:
        yield name, "\n".join(data)


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Settings:
    """What the requests ask for (small numbers keep a run of many requests short)."""

    max_tokens: int
    steps: int
    partial_images: int
    seconds: float
    image_size: int
    voices: list[str]
    image: bytes = field(repr=False, default=b"")


def req_text(http, rng, s: Settings) -> dict:
    """A streamed completion: the time to its first token."""
    start = time.perf_counter()
    first, finished = None, False
    body = {"prompt": rng.choice(PROMPTS), "max_tokens": s.max_tokens, "temperature": 0.8,
            "seed": rng.randrange(2**31), "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as response:
        check(response)
        for name, data in events(response):
            if name == "error":
                raise ServerError(data[:200])
            if data == "[DONE]":
                finished = True
                break
            chunk = json.loads(data)
            if first is None and any(c.get("text") for c in chunk["choices"]):
                first = time.perf_counter() - start
    if not finished:
        raise Lost("the completion stream ended before [DONE]")
    return {"first_token_s": first}


def req_chat(http, rng, s: Settings) -> dict:
    body = {"messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
            "max_tokens": s.max_tokens, "seed": rng.randrange(2**31)}
    response = http.post("/v1/chat/completions", json=body)
    check(response)
    if response.json()["choices"][0]["message"]["role"] != "assistant":
        raise Lost("a chat answer without the assistant's message")
    return {}


def req_image(http, rng, s: Settings) -> dict:
    """A streamed generation with partial images: the time to the first one."""
    start = time.perf_counter()
    first, final = None, None
    body = {"prompt": rng.choice(IMAGE_PROMPTS), "seed": rng.randrange(2**31),
            "num_inference_steps": s.steps, "stream": True,
            "partial_images": s.partial_images}
    with http.stream("POST", "/v1/images/generations", json=body) as response:
        check(response)
        for name, data in events(response):
            if name == "error":
                raise ServerError(data[:200])
            if name == "image_generation.partial_image" and first is None:
                first = time.perf_counter() - start
            elif name == "image_generation.completed":
                final = json.loads(data)
    if final is None:
        raise Lost("the image stream ended without image_generation.completed")
    return {"first_partial_image_s": first}


def req_edit(http, rng, s: Settings) -> dict:
    response = http.post("/v1/images/edits",
                         files={"image": ("in.png", s.image, "image/png")},
                         data={"prompt": rng.choice(IMAGE_PROMPTS),
                               "seed": str(rng.randrange(2**31)),
                               "num_inference_steps": str(s.steps), "strength": "0.6"})
    check(response)
    base64.b64decode(response.json()["data"][0]["b64_json"], validate=True)
    return {}


def req_speech(http, rng, s: Settings) -> dict:
    response = http.post("/v1/audio/speech",
                         json={"input": rng.choice(SPEECH_INPUTS), "voice": rng.choice(s.voices),
                               "response_format": "wav", "seed": rng.randrange(2**31)})
    check(response)
    if response.content[:4] != b"RIFF":
        raise Lost("the speech answer is not a WAV")
    return {}


def req_caption(http, rng, s: Settings) -> dict:
    url = "data:image/png;base64," + base64.b64encode(s.image).decode()
    body = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}]}], "max_tokens": 8,
        "seed": rng.randrange(2**31)}
    response = http.post("/v1/chat/completions", json=body)
    check(response)
    return {}


def req_video(http, rng, s: Settings) -> dict:
    """A video job, polled until its MP4 can be downloaded."""
    response = http.post("/v1/videos", json={"prompt": rng.choice(IMAGE_PROMPTS) + " moving",
                                              "seconds": f"{s.seconds:g}",
                                              "seed": rng.randrange(2**31),
                                              "num_inference_steps": s.steps})
    check(response)
    job = response.json()
    while job["status"] in ("queued", "in_progress"):
        time.sleep(0.1)
        response = http.get(f"/v1/videos/{job['id']}")
        check(response)
        job = response.json()
    if job["status"] != "completed":
        raise ServerError(f"the video job {job['status']}: {job.get('error')}")
    content = http.get(f"/v1/videos/{job['id']}/content")
    check(content)
    if content.content[4:8] != b"ftyp":
        raise Lost("the video content is not an MP4")
    return {}


REQUESTS = {"text": req_text, "chat": req_chat, "image": req_image, "edit": req_edit,
            "speech": req_speech, "caption": req_caption, "video": req_video}
TASKS_NEEDED = {"text": "text-generation", "chat": "text-generation",
                "image": "text-to-image", "edit": "image-to-image", "speech": "text-to-audio",
                "caption": "image-to-text", "video": "text-to-video"}


# -- (a) batching ---------------------------------------------------------------------------------
def part_a(url: str, s: Settings, args) -> dict:
    log(f"(a) the same requests one at a time, then all at once ({args.batch_text} text, "
        f"{args.batch_images} images; best of {args.repeats} rounds)")
    def text_bodies(prompts):
        return [{"prompt": prompts[i % len(prompts)], "max_tokens": s.max_tokens,
                 "temperature": 0.8, "seed": i} for i in range(args.batch_text)]

    image_bodies = [{"prompt": IMAGE_PROMPTS[i % len(IMAGE_PROMPTS)], "seed": i,
                     "num_inference_steps": s.steps} for i in range(args.batch_images)]
    text = lambda r: r["choices"][0]["text"]  # noqa: E731
    out = {}
    with httpx.Client(base_url=url, timeout=args.timeout) as http:
        # Text rows decode together only when their prompts are equally long (the backbone
        # has no padding mask; multimodal/pipelines/batching.py), so text is measured twice:
        # one prompt with a seed per request, and the mixed prompts of the load part.
        for kind, path, bodies, answer in (
                ("text", "/v1/completions", text_bodies(PROMPTS[:1]), text),
                ("text_mixed_prompts", "/v1/completions", text_bodies(PROMPTS), text),
                ("image", "/v1/images/generations", image_bodies,
                 lambda r: r["data"][0]["b64_json"])):
            def send(body):
                response = http.post(path, json=body)
                check(response)
                return answer(response.json())

            one_at_a_time = all_at_once = math.inf
            for _ in range(args.repeats):  # alternating, so load hits both alike; best of
                start = time.perf_counter()
                alone = [send(body) for body in bodies]
                one_at_a_time = min(one_at_a_time, time.perf_counter() - start)
                with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
                    start = time.perf_counter()
                    together = list(pool.map(send, bodies))
                    all_at_once = min(all_at_once, time.perf_counter() - start)
            speedup = one_at_a_time / all_at_once
            result = {"requests": len(bodies), "one_at_a_time_s": one_at_a_time,
                      "all_at_once_s": all_at_once,
                      "one_at_a_time_per_s": len(bodies) / one_at_a_time,
                      "all_at_once_per_s": len(bodies) / all_at_once, "speedup": speedup}
            if kind in ("text", "image"):
                result["meets_target"] = speedup >= 2.0
            if kind.startswith("text"):
                result["identical"] = alone == together
                same = f"answers identical: {result['identical']}"
            else:
                diff = max(int(np.abs(decode_png(a) - decode_png(b)).max())
                           for a, b in zip(alone, together))
                result["max_pixel_diff"] = diff
                same = f"largest pixel difference alone vs batched: {diff}"
            target = " (target >= 2x)" if "meets_target" in result else ""
            log(f"    {kind}: one at a time {len(bodies) / one_at_a_time:.2f}/s, all at once "
                f"{len(bodies) / all_at_once:.2f}/s, speed-up {speedup:.2f}x{target}; {same}")
            out[kind] = result
    return out


def decode_png(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))), dtype=np.int32)


# -- (b) load -------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) by nearest rank, or None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def part_b(url: str, s: Settings, mix: dict[str, float], args) -> dict:
    log(f"(b) {args.clients} clients for {args.duration:g} s over "
        + ", ".join(f"{k} {v:g}" for k, v in mix.items()))
    lock = threading.Lock()
    records: list[dict] = []
    started = [0]
    deadline = time.monotonic() + args.duration
    names, weights = list(mix), list(mix.values())

    def client(index: int) -> None:
        rng = random.Random(args.seed * 1000 + index)
        with httpx.Client(base_url=url, timeout=args.timeout) as http:
            while time.monotonic() < deadline:
                task = rng.choices(names, weights)[0]
                with lock:
                    started[0] += 1
                start = time.perf_counter()
                record = {"task": task}
                try:
                    record.update(REQUESTS[task](http, rng, s))
                    record["outcome"] = "completed"
                except ServerError as exc:
                    record.update(outcome="failed", error=str(exc))
                except (Lost, httpx.HTTPError, ValueError, KeyError) as exc:
                    record.update(outcome="lost", error=f"{type(exc).__name__}: {exc}")
                record["latency_s"] = time.perf_counter() - start
                with lock:
                    records.append(record)

    threads = [threading.Thread(target=client, args=(i,), daemon=True)
               for i in range(args.clients)]
    begin = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:  # the last requests finish after the deadline
        thread.join(timeout=max(0.0, deadline + args.drain - time.monotonic()))
    elapsed = time.perf_counter() - begin
    with lock:
        done = list(records)
        unanswered = started[0] - len(done)
    completed = [r for r in done if r["outcome"] == "completed"]
    failed = [r for r in done if r["outcome"] == "failed"]
    lost = [r for r in done if r["outcome"] == "lost"]
    per_task = {}
    for task in names:
        mine = [r["latency_s"] for r in completed if r["task"] == task]
        per_task[task] = {"completed": len(mine),
                          "failed": sum(r["task"] == task for r in failed),
                          "lost": sum(r["task"] == task for r in lost),
                          "p50_s": percentile(mine, 0.5), "p95_s": percentile(mine, 0.95)}
        p50, p95 = per_task[task]["p50_s"], per_task[task]["p95_s"]
        if mine:
            log(f"    {task:8s} {len(mine):4d} completed, p50 {p50:.2f} s, p95 {p95:.2f} s")
        else:
            log(f"    {task:8s}    0 completed")
    ttft = [r["first_token_s"] for r in completed if r.get("first_token_s") is not None]
    tfpi = [r["first_partial_image_s"] for r in completed
            if r.get("first_partial_image_s") is not None]
    with httpx.Client(base_url=url, timeout=30) as http:
        batches = batch_sizes(http)
    out = {"clients": args.clients, "duration_s": args.duration, "elapsed_s": elapsed,
           "mix": mix, "started": started[0], "completed": len(completed),
           "failed": len(failed), "lost": len(lost) + unanswered,
           "requests_per_s": len(completed) / elapsed, "per_task": per_task,
           "first_token_s": {"p50": percentile(ttft, 0.5), "p95": percentile(ttft, 0.95),
                             "count": len(ttft)},
           "first_partial_image_s": {"p50": percentile(tfpi, 0.5),
                                     "p95": percentile(tfpi, 0.95), "count": len(tfpi)},
           "mean_batch_size": batches,
           "errors": sorted({r["error"] for r in failed + lost})[:10]}
    out["meets_target"] = out["failed"] == 0 and out["lost"] == 0
    log(f"    {len(completed)} completed, {len(failed)} failed, {out['lost']} lost "
        f"(target 0 and 0) in {elapsed:.1f} s: {out['requests_per_s']:.2f} requests/s")
    if ttft:
        log(f"    time to first token p50 {out['first_token_s']['p50']:.2f} s, p95 "
            f"{out['first_token_s']['p95']:.2f} s")
    if tfpi:
        log(f"    time to first partial image p50 {out['first_partial_image_s']['p50']:.2f} s, "
            f"p95 {out['first_partial_image_s']['p95']:.2f} s")
    log("    mean batch size: " + ", ".join(f"{k} {v:.2f}" for k, v in batches.items()))
    for error in out["errors"]:
        log(f"    error: {error}")
    return out


def parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name not in REQUESTS:
            raise SystemExit(f"--mix: unknown task {name!r}; known: {', '.join(REQUESTS)}")
        mix[name] = float(weight or 1)
    return mix


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="checkpoint or run directory (default: embedded)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load in (b)")
    parser.add_argument("--drain", type=float, default=300.0,
                        help="seconds after --duration for the last answers; later is lost")
    parser.add_argument("--quick", action="store_true",
                        help="8 clients for 15 s, fewer steps and tokens, 2 rounds of (a)")
    parser.add_argument("--mix", default=DEFAULT_MIX, help=f"task=weight,... ({DEFAULT_MIX})")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="diffusion steps per request")
    parser.add_argument("--partial-images", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=0.8, help="length of video clips")
    parser.add_argument("--batch-text", type=int, default=16, help="requests in (a), text")
    parser.add_argument("--batch-images", type=int, default=8, help="requests in (a), images")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of (a); best of")
    parser.add_argument("--timeout", type=float, default=600.0, help="client timeout, s")
    parser.add_argument("--threads", type=int, default=None, help="the server's CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", nargs="*", default=[], choices=["a", "b"])
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.duration = min(args.clients, 8), min(args.duration, 15.0)
        args.max_tokens, args.steps = min(args.max_tokens, 16), min(args.steps, 6)
        args.repeats = min(args.repeats, 2)
    mix = parse_mix(args.mix)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.NamedTemporaryFile("w+", prefix="serve-bench-", suffix=".log",
                                     delete=False) as server_log:
        log(f"starting the server on port {port} (log: {server_log.name})")
        process = start_server(args.checkpoint, port, server_log, args.threads)
        try:
            model = httpx.get(url + "/v1/models", timeout=30).json()["data"][0]
            missing = [k for k in mix if TASKS_NEEDED[k] not in model["tasks"]]
            for name in missing:
                log(f"    the checkpoint cannot do {TASKS_NEEDED[name]}: no {name} requests")
                del mix[name]
            size = model["image_size"] or 28
            rng = np.random.default_rng(args.seed)
            settings = Settings(args.max_tokens, args.steps, args.partial_images, args.seconds,
                                size, model["voices"],
                                png_bytes(rng.integers(0, 256, (size, size), dtype=np.uint8)))
            log(f"model {model['id']} ({model['checkpoint_id']}): {', '.join(model['tasks'])}")
            report = {"model": model["id"], "checkpoint_id": model["checkpoint_id"],
                      "quick": args.quick, "max_tokens": args.max_tokens, "steps": args.steps}
            with httpx.Client(base_url=url, timeout=args.timeout) as http:  # warm every path
                warm = random.Random(0)
                for name in mix:
                    REQUESTS[name](http, warm, settings)
            if "a" not in args.skip:
                report["a"] = part_a(url, settings, args)
            if "b" not in args.skip:
                report["b"] = part_b(url, settings, mix, args)
        finally:
            process.terminate()
            process.wait(timeout=60)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
