"""The page of `genlab serve` in a real Chromium (Debian's chromium and chromium-driver, driven by
Selenium; .ci/run installs them): load it, draw a grid (the images decode, 0 console errors, the
same bytes as the API), watch text stream in, see the evaluation figures, and see an error line for
a bad value. No retries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1100,900")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    assert CHROMIUM.exists() and DRIVER.exists(), (
        "the browser test needs Debian's chromium and chromium-driver: "
        "apt-get install -y chromium chromium-driver (.ci/run does)")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver) -> list[str]:
    """The console's errors since the last call (reading the log empties it)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def set_value(driver, element_id: str, value: str) -> None:
    box = driver.find_element(By.ID, element_id)
    box.clear()
    box.send_keys(value)


def test_the_page_in_chromium(browser, live, serve_runs, tmp_path):
    wait = WebDriverWait(browser, 60)
    browser.get(f"{live.url}/")
    wait.until(lambda d: len(Select(d.find_element(By.ID, "model")).options) == 3)
    assert browser.title == "genlab serve"

    # a grid of a conditional model: every image decodes, and they are the API's bytes
    Select(browser.find_element(By.ID, "model")).select_by_value("cdcgan")
    assert len(Select(browser.find_element(By.ID, "label")).options) == 5  # every class, 0..3
    set_value(browser, "n", "8")
    set_value(browser, "seed", "7")
    browser.find_element(By.ID, "generate-images").click()
    wait.until(lambda d: d.find_element(By.ID, "grid").get_attribute("data-count") == "8")
    images = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "Promise.all([...document.querySelectorAll('#grid img')].map(i => i.decode().then("
        "() => [i.naturalWidth, i.naturalHeight, i.src]))).then(done, e => done(String(e)));")
    assert isinstance(images, list), images  # else why an image failed to decode
    assert [(w, h) for w, h, _ in images] == [(28, 28)] * 8
    _, api = live.json("POST", "/v1/images/generations", {"model": "cdcgan", "n": 8, "seed": 7})
    assert [src.split(",", 1)[1] for _, _, src in images] == [d["b64_json"] for d in api["data"]]
    captions = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#grid figcaption")]
    assert captions == ["0", "1", "2", "3", "0", "1", "2", "3"]
    assert console_errors(browser) == []
    browser.save_screenshot(str(tmp_path / "grid.png"))  # kept in pytest's temp folder

    # text streams in piece by piece; the evaluation figures are shown
    Select(browser.find_element(By.ID, "model")).select_by_value("tinygpt")
    report = json.loads((serve_runs["tinygpt"] / "eval.json").read_text())
    table = browser.find_element(By.ID, "eval")
    assert table.is_displayed() and f"{report['val_loss']:.4f}" in table.text
    assert "perplexity" in table.text
    browser.find_element(By.ID, "prompt").clear()
    browser.find_element(By.ID, "prompt").send_keys("the quick")
    set_value(browser, "max-tokens", "200")
    set_value(browser, "temperature", "0.8")
    set_value(browser, "text-seed", "1")
    browser.execute_script(  # every length the text had on screen, as it changed
        "window.lengths = []; const out = document.getElementById('text');"
        "new MutationObserver(() => window.lengths.push(out.textContent.length))"
        ".observe(out, {childList: true, characterData: true, subtree: true});")
    browser.find_element(By.ID, "generate-text").click()
    wait.until(lambda d: d.find_element(By.ID, "text").get_attribute("data-done") == "1")
    shown = browser.find_element(By.ID, "text").text
    _, api = live.json("POST", "/v1/completions", {"model": "tinygpt", "prompt": "the quick",
                                                  "max_tokens": 200, "temperature": 0.8,
                                                  "seed": 1})
    assert shown == "the quick" + api["choices"][0]["text"]
    assert browser.find_element(By.ID, "text").get_attribute("data-chunks") == "200"
    lengths = browser.execute_script("return window.lengths;")
    growing = sorted(set(lengths))
    assert len(growing) >= 10 and growing[-1] == len("the quick") + 200, lengths[:20]
    assert console_errors(browser) == []

    # bad values: an error line, from the page's own check and from the server's 422
    Select(browser.find_element(By.ID, "model")).select_by_value("cdcgan")
    error = browser.find_element(By.ID, "error")
    assert not error.is_displayed()
    set_value(browser, "n", "lots")
    browser.find_element(By.ID, "generate-images").click()
    wait.until(lambda d: error.is_displayed())
    assert error.text == 'n must be a whole number, got "lots"'
    set_value(browser, "n", "1000")
    browser.find_element(By.ID, "generate-images").click()
    wait.until(lambda d: "less than or equal to 64" in error.text)
    assert error.text.startswith("n:") and error.is_displayed()
    # the only console error is the browser's own line about the refused request
    assert all("422" in message for message in console_errors(browser))
