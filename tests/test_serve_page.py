"""The web page of ``multimodal serve`` in a real browser: headless Debian Chromium driven by
Selenium, against a live server (tests/live_server.py) with the tiny joint checkpoint and an
API key. The page generates text, an image with its partial images, speech, a clip and a
caption; each check compares what the page shows with what the API answers for the same
settings."""

from __future__ import annotations

import io
import json
import shutil

import httpx2 as httpx
import numpy as np
import pytest
import soundfile
from PIL import Image

pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver",
                                reason="needs Selenium (pip install -e '.[test]')")

from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from live_server import KEY, LiveServer  # noqa: E402
from multimodal.serve import create_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT_SECONDS = 300  # a generation on a loaded 2-core machine

pytestmark = [
    pytest.mark.slow,  # starts a browser
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="needs the Debian packages chromium and chromium-driver "
                              "(apt-get install chromium chromium-driver; scripts/setup.sh)"),
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng"),
]


@pytest.fixture(scope="module")
def server(serve_engine):
    live = LiveServer(create_app(serve_engine, api_key=KEY, batch_window=0.02))
    yield live
    live.close()


@pytest.fixture(scope="module")
def browser(server):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--mute-audio", "--window-size=1200,1600"):
        options.add_argument(argument)
    try:
        driver = webdriver.Chrome(options=options,
                                  service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    except WebDriverException as exc:
        pytest.skip(f"Chromium did not start under chromedriver: {exc.msg}")
    driver.get(server.url + "/")
    yield driver
    driver.quit()


def api(server, method: str, path: str, **kwargs):
    response = httpx.request(method, server.url + path, timeout=None,
                             headers={"Authorization": f"Bearer {KEY}"}, **kwargs)
    assert response.status_code == 200, response.text[:500]
    return response


def fill(driver, **fields) -> None:
    """Type each value into the input of that id (``max_tokens`` is ``#max-tokens``)."""
    for name, value in fields.items():
        box = driver.find_element(By.ID, name.replace("_", "-"))
        box.clear()
        box.send_keys(str(value))


def use_key(driver, serve_engine) -> None:
    """Type the API key and wait for the page to list the model (its tasks and voices)."""
    fill(driver, api_key=KEY)
    driver.find_element(By.ID, "prompt").click()  # leaving the field sends "change"
    WebDriverWait(driver, 30).until(
        lambda d: serve_engine.model_id in d.find_element(By.ID, "model").text)


def generate(driver, task: str, **fields):
    """Choose ``task``, fill the fields (the API key too, unless given), press Generate, and
    wait for the new result card to finish; returns the card (``data-state`` done, error or
    stopped)."""
    driver.find_element(By.CSS_SELECTOR, f'input[name="task"][value="{task}"]').click()
    fill(driver, **{"api_key": KEY, **fields})
    before = len(driver.find_elements(By.CSS_SELECTOR, "#results article"))
    driver.find_element(By.ID, "generate").click()
    WebDriverWait(driver, 10).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results article")) == before + 1)
    card = driver.find_element(By.CSS_SELECTOR, "#results article")
    WebDriverWait(driver, WAIT_SECONDS).until(
        lambda d: card.get_attribute("data-state") != "running")
    return card


def done(card):
    """The finished card's provenance; fails with the error the page shows otherwise."""
    assert card.get_attribute("data-state") == "done", card.text
    link = card.find_element(By.CSS_SELECTOR, "a.file")
    assert link.get_attribute("href").startswith("blob:") and link.get_attribute("download")
    pre = card.find_element(By.CSS_SELECTOR, ".provenance pre")
    return json.loads(pre.get_attribute("textContent"))


def test_the_page_needs_the_key_and_then_lists_the_model(browser, server, serve_engine):
    assert "API key" in browser.find_element(By.ID, "model").text  # the 401 is explained
    assert httpx.get(server.url + "/static/app.js").status_code == 200  # open, like the page
    use_key(browser, serve_engine)
    voices = [o.get_attribute("value") for o in
              Select(browser.find_element(By.ID, "voice")).options]
    assert voices == serve_engine.pipes["text-to-audio"].voices


def test_a_wrong_key_shows_the_servers_error(browser):
    card = generate(browser, "text", prompt="The", api_key="wrong")
    assert card.get_attribute("data-state") == "error"
    assert "401: incorrect API key" in card.find_element(By.CSS_SELECTOR, ".error").text


def test_text_streams_into_the_page(browser, server):
    card = generate(browser, "text", prompt="The cat", seed=5, max_tokens=12, temperature=0.8)
    meta = done(card)
    shown = card.find_element(By.CSS_SELECTOR, ".text").get_attribute("textContent")
    answer = api(server, "POST", "/v1/completions",
                 json={"prompt": "The cat", "seed": 5, "max_tokens": 12,
                       "temperature": 0.8}).json()["choices"][0]
    assert shown and shown == answer["text"]
    assert int(card.get_attribute("data-chunks")) >= 2  # pieces as they came, then the finish
    assert meta["seed"] == 5 and meta == answer["metadata"]


def test_an_image_sharpens_through_its_partial_images(browser, server, serve_engine):
    size = serve_engine.pipes["text-to-image"].vae.image_size
    card = generate(browser, "image", prompt="a bag", seed=3, steps=4, guidance=3,
                    partials=2)
    meta = done(card)
    image = card.find_element(By.CSS_SELECTOR, "img.final")
    src = image.get_attribute("src")
    assert src.startswith("data:image/png;base64,")
    assert browser.execute_script("return [arguments[0].naturalWidth, "
                                  "arguments[0].naturalHeight]", image) == [size, size]
    previews = card.find_elements(By.CSS_SELECTOR, ".previews img")
    assert len(previews) == 2 and card.get_attribute("data-partials") == "2"
    assert all(p.get_attribute("src").startswith("data:image/png") for p in previews)
    answer = api(server, "POST", "/v1/images/generations",
                 json={"prompt": "a bag", "seed": 3, "num_inference_steps": 4,
                       "guidance_scale": 3.0}).json()["data"][0]
    assert src.split(",", 1)[1] == answer["b64_json"]  # the same image as the API's
    assert meta == answer["metadata"] and meta["num_inference_steps"] == 4


def test_speech_plays_in_an_audio_element(browser, server, serve_engine):
    voice = serve_engine.pipes["text-to-audio"].voices[1]
    browser.find_element(By.CSS_SELECTOR, 'input[name="task"][value="speech"]').click()
    use_key(browser, serve_engine)
    Select(browser.find_element(By.ID, "voice")).select_by_value(voice)
    card = generate(browser, "speech", prompt="seven", seed=0)
    meta = done(card)
    audio = card.find_element(By.TAG_NAME, "audio")
    duration = browser.execute_async_script(
        "const [audio, callback] = arguments;"
        "if (audio.readyState >= 1) callback(audio.duration);"
        "audio.onloadedmetadata = () => callback(audio.duration);"
        "audio.onerror = () => callback(-1);", audio)
    wav = api(server, "POST", "/v1/audio/speech",
              json={"input": "seven", "voice": voice, "seed": 0}).content
    info = soundfile.info(io.BytesIO(wav))
    assert duration > 0 and abs(duration - info.frames / info.samplerate) < 0.01
    assert meta["voice"] == voice and meta["prompt"] == "seven"


def test_a_clip_is_polled_then_played(browser, serve_engine):
    size = serve_engine.pipes["text-to-video"].vae.image_size
    card = generate(browser, "video", prompt="a bag moving up", seed=0, steps=2,
                    seconds=0.4)
    meta = done(card)
    assert card.find_element(By.TAG_NAME, "progress").get_attribute("value") == "100"
    video = card.find_element(By.TAG_NAME, "video")
    assert video.get_attribute("src").startswith("blob:")
    head = browser.execute_async_script(
        "const [video, callback] = arguments;"
        "fetch(video.src).then(r => r.arrayBuffer())"
        ".then(b => callback(Array.from(new Uint8Array(b, 4, 4))));", video)
    assert bytes(head) == b"ftyp"  # the MP4 the server made
    state = browser.execute_async_script(
        "const [video, callback] = arguments;"
        "const report = () => callback({ready: video.readyState, duration: video.duration,"
        "  width: video.videoWidth, error: video.error && video.error.code});"
        "if (video.readyState >= 2) report();"
        "video.onloadeddata = report; video.onerror = report;", video)
    assert state["error"] is None, f"Chromium cannot play the MP4 (MediaError {state['error']})"
    assert state["ready"] >= 2 and state["width"] == size
    assert state["duration"] == pytest.approx(meta["num_frames"] / meta["fps"], abs=0.15)


def test_stop_ends_a_video_job_on_the_server(browser, server):
    browser.find_element(By.CSS_SELECTOR, 'input[name="task"][value="video"]').click()
    fill(browser, api_key=KEY, prompt="a long wait", steps=1000, seconds=0.4)
    browser.find_element(By.ID, "generate").click()
    card = browser.find_element(By.CSS_SELECTOR, "#results article")
    WebDriverWait(browser, WAIT_SECONDS).until(
        lambda d: float(card.find_element(By.TAG_NAME, "progress").get_attribute("value")) > 0)
    browser.find_element(By.ID, "stop").click()
    WebDriverWait(browser, 30).until(lambda d: card.get_attribute("data-state") == "stopped")
    WebDriverWait(browser, 30).until(lambda d: all(
        v["prompt"] != "a long wait" for v in api(server, "GET", "/v1/videos").json()["data"]))


def test_an_uploaded_image_is_captioned(browser, serve_engine, tmp_path):
    image = np.zeros((28, 28), np.uint8)
    image[8:20, 8:20] = 200
    Image.fromarray(image).save(tmp_path / "square.png")
    browser.find_element(By.CSS_SELECTOR, 'input[name="task"][value="caption"]').click()
    browser.find_element(By.ID, "image-file").send_keys(str(tmp_path / "square.png"))
    card = generate(browser, "caption", prompt="", max_tokens=5, temperature=0)
    meta = done(card)
    expected = serve_engine.pipes["image-to-text"](image, max_new_tokens=5).texts[0]
    assert card.find_element(By.CSS_SELECTOR, ".text").get_attribute("textContent") == expected
    assert meta["task"] == "image-to-text"
    assert card.find_element(By.CSS_SELECTOR, "img.upload").get_attribute(
        "src").startswith("data:image/png;base64,")
