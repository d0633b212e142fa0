"""`POST /v1/audio/generations` against a live server with a tiny conditional audio run (a dcgan
trained on tones made here): base64 WAV files (8 kHz mono 16-bit), the same bytes as
`genlab sample`, 422s naming the field; and the page plays the clips in <audio> elements."""

from __future__ import annotations

import base64
import io
import wave
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from serve_support import live_server
from test_serve_browser import CHROMIUM, DRIVER, FLAGS, console_errors, set_value

import genlab
from genlab.audio import DEFAULT
from genlab.modalities.audio import write_tiny_wavs
from genlab.runs import TrainRequest, train

TINY = ("train.log_every=1", "train.sample_every=0", "train.checkpoint_every=0",
        "model.ngf=4", "model.ndf=4", "model.nz=8")


@pytest.fixture(scope="module")
def audio_live(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio-serve")
    data = write_tiny_wavs(root / "tones", per_class=4)
    run = train(TrainRequest(model="dcgan", data=f"wav:{data}", steps=2, batch_size=8,
                             out=str(root / "tones-dcgan"), device="cpu", conditional=True,
                             overrides=TINY))
    with live_server([run]) as server:
        yield server, run


def wav_format(data: bytes) -> tuple[int, int, int, int]:
    with wave.open(io.BytesIO(data)) as w:
        return w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()


def test_audio_route_returns_base64_wavs(audio_live):
    live, run = audio_live
    status, listing = live.json("GET", "/v1/models")
    assert status == 200
    (card,) = listing["data"]
    assert card["modality"] == "audio" and card["endpoint"] == "/v1/audio/generations"
    assert card["classes"] == 4
    status, body = live.json("POST", "/v1/audio/generations",
                             {"model": "tones-dcgan", "n": 2, "seed": 3, "label": [1, 2]})
    assert status == 200, body
    assert body["sample_rate"] == 8000 and body["seed"] == 3
    assert [d["label"] for d in body["data"]] == [1, 2]
    wavs = [base64.b64decode(d["b64_wav"]) for d in body["data"]]
    assert [wav_format(w) for w in wavs] == [(1, 2, 8000, DEFAULT.clip_samples)] * 2
    assert all(base64.b64decode(d["b64_png"])[:4] == b"\x89PNG" for d in body["data"])
    # the same bytes as `genlab sample` (genlab.generate) with the same request
    assert wavs == genlab.generate(run, n=2, seed=3, label=[1, 2]).wav_files()


@pytest.mark.parametrize(("body", "param"), [
    ({"n": 2, "label": 9}, "label"),
    ({"n": 17}, "n"),
    ({"n": 1, "response_format": "png_grid"}, "response_format"),
])
def test_audio_route_refuses_bad_fields(audio_live, body, param):
    live, _ = audio_live
    status, err = live.json("POST", "/v1/audio/generations", {"model": "tones-dcgan", **body})
    assert status == 422 and param in (err["error"]["param"] or err["error"]["message"])


def test_image_route_refuses_an_audio_model(audio_live):
    live, _ = audio_live
    status, err = live.json("POST", "/v1/images/generations", {"model": "tones-dcgan"})
    assert status == 422 and "/v1/audio/generations" in err["error"]["message"]


def test_the_page_plays_audio(audio_live, tmp_path: Path):
    assert CHROMIUM.exists() and DRIVER.exists(), "the browser test needs chromium (see "\
        "test_serve_browser.py)"
    live, _ = audio_live
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.set_script_timeout(60)
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(f"{live.url}/")
        wait.until(lambda d: len(Select(d.find_element(By.ID, "model")).options) == 1)
        set_value(driver, "n", "2")
        set_value(driver, "seed", "3")
        driver.find_element(By.ID, "generate-images").click()
        wait.until(lambda d: d.find_element(By.ID, "grid").get_attribute("data-count") == "2")
        # each <audio> element loads its WAV (the page's CSP allows data: media): the browser
        # reads 1.0 s of sound from each
        durations = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "Promise.all([...document.querySelectorAll('#grid audio')].map(a => new Promise("
            "(ok, no) => { if (!a.controls) no('no controls');"
            " if (a.readyState >= 1) ok(a.duration);"
            " a.onloadedmetadata = () => ok(a.duration); a.onerror = () => no('audio error');"
            " a.load(); }))).then(done, e => done(String(e)));")
        assert isinstance(durations, list) and len(durations) == 2, durations
        assert all(abs(d - DEFAULT.clip_samples / 8000) < 0.01 for d in durations)
        assert console_errors(driver) == []
    finally:
        driver.quit()
