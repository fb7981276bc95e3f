"""The demo page in headless Chromium: type, press Play, audio arrives and is scheduled.

Needs ``apt-get install -y chromium chromium-driver`` (Debian) and skips with the reason without
them; selenium comes with the ``test`` extra. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import shutil

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.helpers.server_harness import demo_server

BROWSER = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    BROWSER is None or DRIVER is None,
    reason="headless browser test needs Chromium and its driver: apt-get install -y chromium chromium-driver",
)
TEXT = "Hello from the browser test."


@pytest.fixture(scope="module")
def server_url():
    with demo_server(max_streams=2) as live:
        yield live.url


@pytest.fixture(scope="module")
def browser():
    options = Options()
    options.binary_location = BROWSER
    for flag in (
        "--headless=new",
        "--no-sandbox",  # CI containers run as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-proxy-server",
        "--autoplay-policy=no-user-gesture-required",
        "--mute-audio",
    ):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    except Exception as exc:  # e.g. a driver that does not match the browser version
        pytest.skip(f"could not start headless Chromium: {str(exc).splitlines()[0]}")
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_page_plays_the_stream(server_url, browser):
    browser.get(server_url + "/")
    wait = WebDriverWait(browser, 60, poll_frequency=0.1)
    wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "idle")
    text = browser.find_element(By.ID, "text")
    text.clear()
    text.send_keys(TEXT)
    browser.find_element(By.ID, "seed").send_keys("4")
    browser.find_element(By.ID, "play").click()
    wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("data-state") in ("done", "error"))

    status = browser.find_element(By.ID, "status")
    assert status.get_attribute("data-state") == "done", status.text
    ttfa = browser.find_element(By.ID, "ttfa").text
    total = browser.find_element(By.ID, "total").text
    received = int(browser.find_element(By.ID, "bytes").text)
    print(f"\nbrowser: time to first audio {ttfa}, total {total}, {received} bytes ({status.text})")
    assert ttfa.endswith(" ms") and int(ttfa.split()[0]) <= int(total.split()[0])
    assert browser.find_element(By.ID, "seed-used").text == "4"
    with httpx.Client(base_url=server_url, trust_env=False, timeout=60) as client:
        expected = client.post("/v1/audio/speech", json={"input": TEXT, "seed": 4, "response_format": "pcm"})
    assert received == len(expected.content) > 0, "the page received the whole stream"
    # Web Audio: the chunks were decoded and scheduled one after another as they arrived.
    assert "no audio output" not in status.text
    assert int(browser.find_element(By.ID, "scheduled").text) > 1
    # the first chunk lasts until the next comes: playback that starts on it never runs dry
    playable, pauses = browser.find_element(By.ID, "playable").text, browser.find_element(By.ID, "pauses").text
    print(f"browser: playable from {playable}, pauses while playing {pauses}")
    assert playable.endswith(" ms") and pauses == "0"
    # the words came as timestamps: the text is shown word by word, and each lights up as it is heard
    with httpx.Client(base_url=server_url, trust_env=False, timeout=60) as client:
        timed = client.post("/v1/audio/speech/with-timestamps", json={"input": TEXT, "seed": 4}).json()["words"]
    spans = browser.find_elements(By.CSS_SELECTOR, "#words span.word")
    assert [s.text for s in spans] == [w["word"] for w in timed] and browser.find_element(By.ID, "words").text == TEXT
    assert [float(s.get_attribute("data-start")) for s in spans] == [w["start"] for w in timed]
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#words span.word.now"))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#words span.word.heard")) == len(timed))


def test_page_sends_a_seed_past_2_to_the_53_exactly(server_url, browser):
    seed = "9007199254740993"  # 2^53 + 1: a JS Number would turn it into ...992
    browser.get(server_url + "/")
    wait = WebDriverWait(browser, 60, poll_frequency=0.1)
    wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "idle")
    text = browser.find_element(By.ID, "text")
    text.clear()
    text.send_keys("Hi.")
    browser.find_element(By.ID, "seed").send_keys(seed)
    browser.find_element(By.ID, "play").click()
    wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("data-state") in ("done", "error"))
    assert browser.find_element(By.ID, "seed-used").text == seed


@pytest.mark.parametrize(
    ("text", "direction"),
    [("مرحبا بكم. كيف حالكم اليوم؟", "rtl"), ("今日は良い天気ですね。明日は雨でしょう。", "ltr")],
)
def test_page_shows_each_script_word_by_word_in_its_direction(server_url, browser, text, direction):
    browser.get(server_url + "/")
    wait = WebDriverWait(browser, 60, poll_frequency=0.1)
    wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "idle")
    box = browser.find_element(By.ID, "text")
    browser.execute_script("arguments[0].value = arguments[1];", box, text)  # send_keys cannot type every script
    browser.find_element(By.ID, "seed").send_keys("6")
    browser.find_element(By.ID, "play").click()
    wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("data-state") in ("done", "error"))
    assert browser.find_element(By.ID, "status").get_attribute("data-state") == "done"
    with httpx.Client(base_url=server_url, trust_env=False, timeout=60) as client:
        timed = client.post("/v1/audio/speech/with-timestamps", json={"input": text, "seed": 6}).json()["words"]
    spans = browser.find_elements(By.CSS_SELECTOR, "#words span.word")
    assert [s.text for s in spans] == [w["word"] for w in timed] and len(spans) >= 3
    words = browser.find_element(By.ID, "words")
    assert words.text == text
    for element in (words, box):
        assert browser.execute_script("return arguments[0].matches(':dir(rtl)')", element) == (direction == "rtl")
