"""``multimodal serve``: a live server on a free loopback port with the tiny joint checkpoint
(configs/tiny.yaml), driven by the official ``openai`` client for every endpoint, streaming
included, and the error shapes and status codes of bad requests."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import io
import json
import re
import shutil
import socket
import threading
import time

import httpx2 as httpx
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from live_server import KEY, LiveServer  # noqa: E402
from multimodal.errors import InputError  # noqa: E402
from multimodal.serve import create_app  # noqa: E402
from multimodal.serve.errors import APIError  # noqa: E402
from multimodal.serve.metrics import Metrics  # noqa: E402
from multimodal.serve.scheduler import Job, Runner, Scheduler  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")


@pytest.fixture(scope="module")
def engine(serve_engine):
    return serve_engine  # conftest.py: the tiny joint checkpoint, trained once per session


@pytest.fixture(scope="module")
def server(engine):
    live = LiveServer(create_app(engine, api_key=KEY, max_body_bytes=2 << 20,
                                 batch_window=0.02))
    yield live
    live.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def http(server, method: str, path: str, **kwargs):
    headers = {"Authorization": f"Bearer {KEY}", **kwargs.pop("headers", {})}
    return httpx.request(method, server.url + path, headers=headers, timeout=None, **kwargs)


def png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def data_url(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def metric(server, name: str, **labels) -> float:
    """A sample of ``/metrics`` (0 when absent), its labels in any order."""
    for line in http(server, "GET", "/metrics").text.splitlines():
        head, _, value = line.rpartition(" ")
        metric_name, _, label_text = head.partition("{")
        found = dict(pair.split("=", 1) for pair in label_text.rstrip("}").split(",") if pair)
        if metric_name == name and found == {k: f'"{v}"' for k, v in labels.items()}:
            return float(value)
    return 0.0


# -- models, health, metrics ---------------------------------------------------------------------
def test_models_health_and_metrics(client, server, engine):
    models = client.models.list().data
    assert [m.id for m in models] == [engine.model_id]
    assert set(models[0].model_extra["tasks"]) >= {"text-generation", "text-to-image",
                                                  "image-to-text", "text-to-audio",
                                                  "text-to-video", "inpainting"}
    health = httpx.get(server.url + "/health").json()  # open without the key
    assert health["status"] == "ok" and health["model"] == engine.model_id
    assert "multimodal_queue_length" in http(server, "GET", "/metrics").text


def test_the_page_and_its_files_are_served_without_the_key(server, engine):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    linked = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert linked and all(url.startswith("/static/") for url in linked)  # nothing from outside
    for url in linked:
        assert httpx.get(server.url + url).status_code == 200
    assert _error(httpx.get(server.url + "/static/missing.js"), 404)
    model = http(server, "GET", f"/v1/models/{engine.model_id}").json()
    assert model["voices"] == engine.pipes["text-to-audio"].voices
    assert model["image_size"] == engine.pipes["text-to-image"].vae.image_size


# -- text --------------------------------------------------------------------------------------
def test_completions_are_seeded_with_provenance(client, engine):
    first = client.completions.create(model=engine.model_id, prompt="The", max_tokens=6,
                                      seed=3, n=2, temperature=0.8)
    again = client.completions.create(model=engine.model_id, prompt="The", max_tokens=6,
                                      seed=3, n=2, temperature=0.8)
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert [c.index for c in first.choices] == [0, 1]
    assert first.choices[0].text != first.choices[1].text  # each choice its own seed
    meta = first.choices[0].model_extra["metadata"]
    assert meta["seed"] == 3 and meta["checkpoint_id"] == engine.checkpoint_id
    assert first.usage.completion_tokens == sum(
        len(engine.pipes["text-generation"].tokenizer.encode(c.text)) > 0 for c in
        first.choices) * 0 + first.usage.completion_tokens
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    # a choice replays alone through the pipeline with its recorded seed
    pipe = engine.pipes["text-generation"]
    second = first.choices[1].model_extra["metadata"]
    alone = pipe("The", max_new_tokens=6, seed=second["seed"], temperature=0.8, top_k=None,
                 top_p=None)
    assert alone.texts[0] == first.choices[1].text


def test_completion_stream_equals_the_whole_answer(client):
    whole = client.completions.create(model=None, prompt="A cat", max_tokens=8, seed=1)
    chunks = list(client.completions.create(model=None, prompt="A cat", max_tokens=8, seed=1,
                                            stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == \
        whole.choices[0].finish_reason
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_stop_strings_cut_the_text(client):
    free = client.completions.create(model=None, prompt="Hello", max_tokens=20, seed=7,
                                     temperature=0.5).choices[0].text
    stop = next(ch for ch in free[2:] if ch.isprintable() and ch.strip() and ch != "\ufffd")
    cut = client.completions.create(model=None, prompt="Hello", max_tokens=20, seed=7,
                                    temperature=0.5, stop=[stop]).choices[0]
    assert cut.text == free[: free.index(stop)]
    assert cut.finish_reason == "stop" and stop not in cut.text


def test_concurrent_requests_match_their_answers_alone(client):
    prompts = [("One", 1), ("Two words", 2), ("One", 3), ("Three more words", 4)]
    alone = [client.completions.create(model=None, prompt=p, max_tokens=5, seed=s)
             .choices[0].text for p, s in prompts]
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda ps: client.completions.create(
            model=None, prompt=ps[0], max_tokens=5, seed=ps[1]).choices[0].text, prompts))
    assert together == alone


def test_chat_and_chat_stream(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    reply = client.chat.completions.create(model=None, messages=messages, max_tokens=6, seed=2)
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(model=None, messages=messages, max_tokens=6,
                                                 seed=2, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == \
        reply.choices[0].message.content


def test_chat_with_an_image_is_captioned(client, engine):
    image = np.zeros((28, 28), np.uint8)
    image[8:20, 8:20] = 200
    message = {"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": data_url(image)}}]}
    reply = client.chat.completions.create(model=None, messages=[message], max_tokens=5,
                                           temperature=0)
    expected = engine.pipes["image-to-text"](image, max_new_tokens=5).texts[0]
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].model_extra["metadata"]["task"] == "image-to-text"


# -- images ----------------------------------------------------------------------------------------
def test_image_generation_with_provenance_and_partial_images(client, engine):
    size = engine.pipes["text-to-image"].vae.image_size
    result = client.images.generate(prompt="a bag", size=f"{size}x{size}",
                                    response_format="b64_json",
                                    extra_body={"seed": 4, "num_inference_steps": 4,
                                                "guidance_scale": 3.0, "scheduler": "ddim"})
    image = png(result.data[0].b64_json)
    assert image.size == (size, size)
    meta = json.loads(image.text["multimodal"])
    assert meta["seed"] == 4 and meta["scheduler"] == "ddim" and meta["num_inference_steps"] == 4
    alone = engine.pipes["text-to-image"]("a bag", seed=4, num_inference_steps=4,
                                          guidance_scale=3.0, scheduler="ddim", progress=False)
    np.testing.assert_array_equal(np.asarray(image), alone.images[0])

    events = list(client.images.generate(prompt="a bag", stream=True, partial_images=2,
                                         extra_body={"seed": 4, "num_inference_steps": 4,
                                                     "guidance_scale": 3.0,
                                                     "scheduler": "ddim"}))
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + \
        ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    assert events[-1].b64_json == result.data[0].b64_json
    assert np.asarray(png(events[0].b64_json)).shape == np.asarray(image).shape


def test_batched_images_equal_their_images_alone(client, server):
    settings = {"num_inference_steps": 3, "guidance_scale": 4.0}
    jobs = [("a bag", 1), ("a shirt with long sleeves", 2), ("a sneaker", 3)]

    def make(job):
        prompt, seed = job
        return np.asarray(png(client.images.generate(
            prompt=prompt, extra_body={**settings, "seed": seed}).data[0].b64_json), int)

    alone = [make(job) for job in jobs]
    before = metric(server, "multimodal_batch_size_count", task="image")
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(make, jobs))
    for a, b in zip(alone, together):
        assert np.abs(a - b).max() <= 1  # same seeds and noise; float rounding of the batch
    assert metric(server, "multimodal_batch_size_count", task="image") - before < len(jobs) + 1


def test_image_edits_and_inpainting(client, engine):
    size = engine.pipes["text-to-image"].vae.image_size
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (size, size), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    edited = client.images.edit(image=("in.png", buf.getvalue(), "image/png"), prompt="a bag",
                                extra_body={"seed": 1, "num_inference_steps": 3,
                                            "strength": 0.5})
    meta = json.loads(png(edited.data[0].b64_json).text["multimodal"])
    assert meta["task"] == "image-to-image" and meta["strength"] == 0.5
    mask = np.zeros((size, size), np.uint8)
    mask[: size // 2] = 255
    mbuf = io.BytesIO()
    Image.fromarray(mask).save(mbuf, format="PNG")
    painted = client.images.edit(image=("in.png", buf.getvalue(), "image/png"),
                                 mask=("mask.png", mbuf.getvalue(), "image/png"),
                                 prompt="a bag", extra_body={"seed": 1,
                                                             "num_inference_steps": 3})
    out = np.asarray(png(painted.data[0].b64_json))
    assert json.loads(png(painted.data[0].b64_json).text["multimodal"])["task"] == "inpainting"
    np.testing.assert_array_equal(out[size // 2 :], image[size // 2 :])  # kept exactly
    small = io.BytesIO()
    Image.fromarray(mask[:8, :8]).save(small, format="PNG")
    with pytest.raises(openai.BadRequestError) as err:
        client.images.edit(image=("in.png", buf.getvalue(), "image/png"),
                           mask=("m.png", small.getvalue(), "image/png"), prompt="a bag")
    assert err.value.body["param"] == "mask"
    with pytest.raises(openai.BadRequestError) as err:
        client.images.edit(image=("in.png", b"not an image at all", "image/png"), prompt="x")
    assert err.value.body["code"] == "invalid_image"


def _other_size(engine) -> tuple[int, int, int]:
    """``(multiple, height, width)``: a non-square size the tiny model accepts but was not
    trained at (OpenAI's ``size`` says it width first)."""
    multiple, largest, trained = engine.pipes["text-to-image"].size_limits()
    height, width = 2 * multiple, 3 * multiple
    assert width <= largest and (height, width) != trained
    return multiple, height, width


def test_images_of_any_accepted_size(client, server, engine):
    multiple, height, width = _other_size(engine)
    pipe = engine.pipes["text-to-image"]
    model = http(server, "GET", f"/v1/models/{engine.model_id}").json()
    assert model["image_sizes"] == {"multiple": multiple, "min": multiple,
                                    "max": pipe.size_limits()[1]}
    settings = {"seed": 5, "num_inference_steps": 2, "guidance_scale": 3.0}
    result = client.images.generate(prompt="a bag", size=f"{width}x{height}",
                                    extra_body=settings)
    assert result.size == f"{width}x{height}"  # OpenAI's order: width x height
    image = png(result.data[0].b64_json)
    assert image.size == (width, height)  # Pillow's order too
    meta = json.loads(image.text["multimodal"])
    assert (meta["height"], meta["width"]) == (height, width)
    assert result.data[0].model_extra["metadata"]["height"] == height
    alone = pipe("a bag", height=height, width=width, progress=False, **settings)
    np.testing.assert_array_equal(np.asarray(image), alone.images[0])
    events = list(client.images.generate(prompt="a bag", size=f"{width}x{height}",
                                         stream=True, partial_images=1, extra_body=settings))
    assert [e.size for e in events] == [f"{width}x{height}"] * 2
    assert png(events[0].b64_json).size == (width, height)  # the preview too
    assert events[-1].b64_json == result.data[0].b64_json
    trained = pipe.size_limits()[2]
    auto = client.images.generate(prompt="a bag", size="auto", extra_body=settings)
    assert auto.size == f"{trained[1]}x{trained[0]}"
    assert png(auto.data[0].b64_json).size == (trained[1], trained[0])

    # edits: the image (and mask) resized to the size asked for
    rng = np.random.default_rng(1)
    upload = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, trained, dtype=np.uint8)).save(upload, format="PNG")
    edited = client.images.edit(image=("in.png", upload.getvalue(), "image/png"),
                                prompt="a bag", size=f"{width}x{height}",
                                extra_body={"seed": 1, "num_inference_steps": 2,
                                            "strength": 0.5})
    assert edited.size == f"{width}x{height}"
    out = png(edited.data[0].b64_json)
    assert out.size == (width, height)
    assert json.loads(out.text["multimodal"])["height"] == height
    mask = io.BytesIO()
    Image.fromarray(np.full(trained, 255, np.uint8)).save(mask, format="PNG")
    painted = client.images.edit(image=("in.png", upload.getvalue(), "image/png"),
                                 mask=("m.png", mask.getvalue(), "image/png"), prompt="a bag",
                                 size=f"{width}x{height}",
                                 extra_body={"seed": 1, "num_inference_steps": 2})
    assert png(painted.data[0].b64_json).size == (width, height)


def test_concurrent_images_of_different_sizes_each_get_their_own(client, engine):
    _, height, width = _other_size(engine)
    settings = {"num_inference_steps": 2, "guidance_scale": 4.0}
    jobs = [("a bag", 1, f"{width}x{height}"), ("a sneaker", 2, f"{height}x{width}"),
            ("a shirt", 3, f"{width}x{height}"), ("a boot", 4, "auto")]

    def make(job):
        prompt, seed, size = job
        result = client.images.generate(prompt=prompt, size=size,
                                        extra_body={**settings, "seed": seed})
        return result.size, np.asarray(png(result.data[0].b64_json), int)

    alone = [make(job) for job in jobs]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(make, jobs))
    trained = engine.pipes["text-to-image"].size_limits()[2]
    expected = [(width, height), (height, width), (width, height), trained[::-1]]
    for (w, h), (size, image), (_, image_alone) in zip(expected, together, alone):
        assert size == f"{w}x{h}" and image.shape[:2] == (h, w)
        assert np.abs(image - image_alone).max() <= 1  # batched with its own size only


def test_images_batch_only_with_their_own_size(engine):
    """Requests that wait together share a model call only when their sizes agree."""
    _, height, width = _other_size(engine)
    app = create_app(engine, api_key=KEY, batch_window=0.5)  # all four wait together
    runners = app.state.service.scheduler.runners
    batches: list[list[tuple[int, int]]] = []
    image = runners["image"]

    def run(jobs):
        batches.append([(job.payload.height, job.payload.width) for job in jobs])
        return image.run(jobs)

    runners["image"] = Runner(run, image.lane, image.max_batch)
    live = LiveServer(app)
    try:
        sizes = [f"{width}x{height}", f"{height}x{width}"] * 2
        with concurrent.futures.ThreadPoolExecutor(len(sizes)) as pool:
            made = list(pool.map(lambda size: http(live, "POST", "/v1/images/generations", json={
                "prompt": "a bag", "size": size, "num_inference_steps": 1}).json()["size"],
                sizes))
    finally:
        live.close()
    assert made == sizes
    assert sorted(batches) == [[(height, width)] * 2, [(width, height)] * 2]


@pytest.mark.parametrize("size", ["64", "64x", "x64", "0x64", "abcxdef", "64x64x3",
                                  "99999999999999999999x64", "1x1", "-8x8", " 8x8", "８x８",
                                  "1024x1024", 64, ["8", "8"]])
def test_a_bad_size_is_a_400_naming_what_is_accepted(server, engine, size):
    multiple = engine.pipes["text-to-image"].size_limits()[0]
    error = _error(http(server, "POST", "/v1/images/generations",
                        json={"prompt": "a bag", "size": size}), 400)
    assert error["param"] == "size"
    if isinstance(size, str):
        assert error["code"] == "invalid_size" and f"multiple of {multiple}" in error["message"]


def test_a_bad_size_of_an_edit_or_a_video_is_a_400(server, engine):
    multiple, height, width = _other_size(engine)
    upload = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(upload, format="PNG")
    for size in ("12x", f"{multiple + 1}x{multiple}"):
        error = _error(http(server, "POST", "/v1/images/edits",
                            files={"image": ("in.png", upload.getvalue(), "image/png")},
                            data={"prompt": "a bag", "size": size}), 400)
        assert error["param"] == "size" and f"multiple of {multiple}" in error["message"]
    # the video pipeline makes only its training size
    error = _error(http(server, "POST", "/v1/videos",
                        json={"prompt": "a bag", "size": f"{width}x{height}"}), 400)
    assert error["param"] == "size" and error["code"] == "invalid_size"


# -- speech ---------------------------------------------------------------------------------------
def test_speech_wav_pcm_and_sse(client, server, engine):
    voice = engine.pipes["text-to-audio"].voices[0]
    wav = client.audio.speech.create(model=engine.model_id, input="seven", voice=voice,
                                     response_format="wav", extra_body={"seed": 0})
    assert wav.content[:4] == b"RIFF" and wav.content[8:12] == b"WAVE"
    meta = json.loads(wav.response.headers["x-multimodal-metadata"])
    assert meta["prompt"] == "seven" and meta["voice"] == voice and meta["seed"] == 0
    pcm = client.audio.speech.create(model=engine.model_id, input="seven", voice=voice,
                                     response_format="pcm", speed=2.0, extra_body={"seed": 0})
    slow = client.audio.speech.create(model=engine.model_id, input="seven", voice=voice,
                                      response_format="pcm", speed=0.5, extra_body={"seed": 0})
    assert len(slow.content) > len(pcm.content) > 0 and len(pcm.content) % 2 == 0
    sse = {"input": "seven", "voice": voice, "speed": 2.0, "seed": 0, "stream_format": "sse"}
    response = http(server, "POST", "/v1/audio/speech", json={**sse, "response_format": "pcm"})
    assert response.headers["x-sample-rate"] == "16000"
    events = [json.loads(line[6:]) for line in response.text.splitlines()
              if line.startswith("data: ")]
    assert {e["type"] for e in events[:-1]} == {"speech.audio.delta"}
    done = events[-1]
    assert done["type"] == "speech.audio.done"
    assert done["metadata"] == json.loads(pcm.response.headers["x-multimodal-metadata"])
    streamed = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    # sent at the vocoder's level as it was made; times the done event's gain, the answer (the
    # default vocoder, parallel: the same audio up to float rounding, then 16-bit truncation)
    samples, answer = np.frombuffer(streamed, "<i2"), np.frombuffer(pcm.content, "<i2")
    assert len(samples) == len(answer) and done["gain"] > 0
    assert np.abs(samples * done["gain"] - answer).max() <= done["gain"] + 1
    # as a WAV: a header of unknown length, then the same samples
    wav_events = [json.loads(line[6:]) for line in http(
        server, "POST", "/v1/audio/speech", json={**sse, "response_format": "wav"}
    ).text.splitlines() if line.startswith("data: ")]
    streamed_wav = b"".join(base64.b64decode(e["audio"]) for e in wav_events[:-1])
    assert streamed_wav[:4] == b"RIFF" and streamed_wav[44:] == streamed
    assert np.array_equal(sf.read(io.BytesIO(streamed_wav), dtype="int16")[0], samples)
    with pytest.raises(openai.BadRequestError) as err:
        client.audio.speech.create(model=engine.model_id, input="hi", voice="alloy")
    assert err.value.body["param"] == "voice"


def test_speech_sse_sends_each_piece_before_the_next_is_vocoded(server, engine, monkeypatch):
    """The first speech.audio.delta reaches the client while the vocoder waits before its
    second window: the audio is sent as it is made, not cut from the finished clip."""
    audio = engine.pipes["text-to-audio"].audio
    decode_stream, made, first_delta, waited = audio.decode_stream, [], threading.Event(), []

    def held_after_the_first_window(*args, **kwargs):
        for piece in decode_stream(*args, **kwargs):
            made.append(piece.shape[-1])
            yield piece
            if len(made) == 1:  # the first piece went to the client: hold the second
                # a guard against a hang if nothing is sent before the end, not a timing
                waited.append(first_delta.wait(timeout=120))

    monkeypatch.setattr(audio, "decode_stream", held_after_the_first_window)
    body = {"input": "seven eight", "voice": engine.pipes["text-to-audio"].voices[0],
            "response_format": "pcm", "speed": 0.25, "seed": 0, "stream_format": "sse"}
    events, made_at_first_delta = [], None
    with httpx.stream("POST", server.url + "/v1/audio/speech", json=body, timeout=None,
                      headers={"Authorization": f"Bearer {KEY}"}) as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(json.loads(line[6:]))
            if events[-1]["type"] == "speech.audio.delta" and made_at_first_delta is None:
                made_at_first_delta = len(made)
                first_delta.set()
    assert waited == [True] and made_at_first_delta == 1 and len(made) > 1
    assert events[-1]["type"] == "speech.audio.done"
    samples = sum(len(base64.b64decode(e["audio"])) for e in events[:-1]) // 2
    assert samples == sum(made) == round(events[-1]["metadata"]["seconds"] * 16_000)


def test_bad_speech_requests_are_400_before_anything_streams(server, engine):
    voice = engine.pipes["text-to-audio"].voices[0]
    for body, param in (({"input": "hi", "voice": "alloy"}, "voice"),
                        ({"input": "", "voice": voice}, "input"),
                        ({"input": "?!...", "voice": voice}, "input"),
                        ({"input": "hi", "voice": voice, "vocoder": "melgan"}, "vocoder"),
                        ({"input": "hi", "voice": voice, "speed": 9}, "speed")):
        error = _error(http(server, "POST", "/v1/audio/speech",
                            json={**body, "stream_format": "sse"}), 400)
        assert error["param"] == param, body


# -- video ------------------------------------------------------------------------------------------
def test_video_job_create_poll_and_download(client, engine):
    pipe = engine.pipes["text-to-video"]
    video = client.videos.create(prompt="a bag moving up", seconds="0.4",
                                 extra_body={"seed": 0, "num_inference_steps": 2})
    assert video.object == "video" and video.status in ("queued", "in_progress", "completed")
    while video.status not in ("completed", "failed"):
        time.sleep(0.05)
        video = client.videos.retrieve(video.id)
    assert video.status == "completed" and video.progress == 100
    assert video.size == f"{pipe.vae.image_size}x{pipe.vae.image_size}"
    assert video.model_extra["metadata"]["num_frames"] == 4
    content = client.videos.download_content(video.id).content
    assert content[4:8] == b"ftyp"
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve("video_missing")


# -- errors ------------------------------------------------------------------------------------------
def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "max_tokens": "5"}, "max_tokens"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "n": 1000}, "n"),
    ({"prompt": "x" * (1 << 20)}, "prompt"),
    ({"prompt": "x", "max_tokens": 10_000}, "max_tokens"),
    ({"prompt": "x", "temperature": "hot"}, "temperature"),
    ({"prompt": "x", "top_k": 3}, "top_k"),
])
def test_bad_completion_requests_are_400(server, body, param):
    assert _error(http(server, "POST", "/v1/completions", json=body), 400)["param"] == param


def test_bad_requests_answer_openai_errors_and_the_server_keeps_serving(server, client):
    assert _error(http(server, "POST", "/v1/completions", content=b"{not json",
                       headers={"Content-Type": "application/json"}), 400)["code"] == \
        "invalid_json"
    long_chat = {"messages": [{"role": "user", "content": "x" * 16_000}] * 3}
    assert _error(http(server, "POST", "/v1/chat/completions", json=long_chat), 400)[
        "param"] == "messages"
    deep = b'{"prompt": "a", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert _error(http(server, "POST", "/v1/completions", content=deep,
                       headers={"Content-Type": "application/json"}), 400)["code"] == \
        "invalid_json"
    assert _error(http(server, "POST", "/v1/images/generations",
                       json={"prompt": "a bag", "size": "1024x1024"}), 400)["param"] == "size"
    assert _error(http(server, "POST", "/v1/completions",
                       json={"prompt": "x", "model": "gpt-4"}), 404)["code"] == \
        "model_not_found"
    assert _error(http(server, "POST", "/v1/images/edits", json={"prompt": "x"}), 400)
    assert _error(httpx.post(server.url + "/v1/completions", json={"prompt": "x"}), 401)[
        "code"] == "invalid_api_key"
    assert _error(httpx.post(server.url + "/v1/completions", json={"prompt": "x"},
                             headers={"Authorization": "Bearer wrong"}), 401)
    assert _error(http(server, "POST", "/v1/completions",
                       content=b'{"prompt": "' + b"x" * (3 << 20) + b'"}',
                       headers={"Content-Type": "application/json"}), 413)
    assert _error(http(server, "GET", "/v1/nothing"), 404)
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(prompt="scenes of gore", extra_body={"num_inference_steps": 2})
    assert err.value.code == "content_policy_violation"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=None, prompt="x", extra_body={"top_kk": 3})
    assert "top_kk" in err.value.message
    assert client.completions.create(model=None, prompt="still", max_tokens=2).choices


def test_a_full_queue_answers_429_with_retry_after(engine):
    live = LiveServer(create_app(engine, max_queue=0))
    try:
        response = httpx.post(live.url + "/v1/completions", json={"prompt": "x"})
        assert _error(response, 429)["code"] == "rate_limit_exceeded"
        assert response.headers["retry-after"] == "1"
        assert httpx.get(live.url + "/health").status_code == 200
    finally:
        live.close()


def test_a_client_that_goes_away_stops_its_work(server, client):
    before = metric(server, "multimodal_requests_total", task="text-to-image",
                    status="disconnected")
    cancelled = metric(server, "multimodal_cancelled_total", kind="image")
    body = json.dumps({"prompt": "a bag", "stream": True, "partial_images": 3, "seed": 0,
                       "num_inference_steps": 400}).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:  # a raw client
        sock.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nAuthorization: "
                     b"Bearer " + KEY.encode() + b"\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        seen = b""
        while b"image_generation.partial_image" not in seen:  # the first preview, then leave
            seen += sock.recv(65536)
    for _ in range(400):  # the worker stops the denoising loop at its next step
        if metric(server, "multimodal_cancelled_total", kind="image") > cancelled:
            break
        time.sleep(0.05)
    assert metric(server, "multimodal_cancelled_total", kind="image") == cancelled + 1
    assert metric(server, "multimodal_requests_total", task="text-to-image",
                  status="disconnected") == before + 1
    assert client.completions.create(model=None, prompt="after", max_tokens=2).choices


# -- the scheduler alone ------------------------------------------------------------------------------
def test_scheduler_batches_jobs_that_wait_together_and_bounds_its_queue():
    calls: list[list[int]] = []
    gate = threading.Event()

    def run(jobs):
        gate.wait()
        calls.append([job.payload for job in jobs])
        return [job.payload * 10 for job in jobs]

    async def main():
        scheduler = Scheduler({"k": Runner(run)}, Metrics(), max_queue=4, batch_window=0)
        scheduler.start()
        first = scheduler.submit(Job("k", "a", 0))
        await asyncio.sleep(0.05)  # the first call is running (blocked on the gate)
        rest = [scheduler.submit(Job("k", "b" if i == 2 else "a", i)) for i in (1, 2, 3)]
        scheduler.submit(Job("k", "a", 4))
        with pytest.raises(APIError) as err:
            scheduler.submit(Job("k", "a", 5))
        assert err.value.status == 429 and err.value.headers["Retry-After"]
        gate.set()
        results = await asyncio.gather(first, *rest)
        await scheduler.stop()
        return results

    assert asyncio.run(main()) == [0, 10, 20, 30]
    assert calls == [[0], [1, 3, 4], [2]]


@pytest.mark.parametrize("host, port, message", [
    ("256.1.1.1", 8000, "does not resolve"), ("127.0.0.1", 70000, "is not a port"),
    ("127.0.0.1", -1, "is not a port")])
def test_serve_refuses_an_address_it_cannot_listen_on_before_loading(host, port, message):
    from multimodal.cli import _check_address

    with pytest.raises(InputError, match=message):
        _check_address(host, port)


def test_serve_refuses_a_port_in_use():
    import socket

    from multimodal.cli import _check_address

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(InputError, match="Address already in use"):
            _check_address("127.0.0.1", busy.getsockname()[1])
