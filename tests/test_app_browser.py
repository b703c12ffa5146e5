"""app.py in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven
by Selenium uploads files to the running page and reads what it shows.

Skipped, with the reason, where selenium, Chromium or ChromeDriver is missing (CI installs
only the `dev` extra). To run them: `apt-get install chromium chromium-driver` and
`pip install -e ".[dev,app]"` (selenium is in `dev`). CHROME_BIN and CHROMEDRIVER override
where they are looked for.
"""

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from pneumonia.inference import Predictor
from tests.test_app import start_app, stop_app

pytest.importorskip("gradio", reason="the page needs gradio: pip install -e '.[app]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser tests need selenium: pip install -e '.[dev]'")

CHROME = os.environ.get("CHROME_BIN") or next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
DRIVER = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROME and DRIVER),
    reason="headless Chromium and ChromeDriver not found: apt-get install chromium chromium-driver "
    "(or set CHROME_BIN and CHROMEDRIVER)",
)

WAIT = 90  # seconds: the first upload on a busy 2-core machine


@pytest.fixture(scope="module")
def app(tiny_checkpoint, tmp_path_factory):
    proc, url = start_app(tiny_checkpoint, tmp_path_factory.mktemp("browser_app"))
    yield url
    stop_app(proc)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROME
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1200",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
        "--disable-background-networking",
        "--no-first-run",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    driver = webdriver.Chrome(service=DriverService(DRIVER), options=options)
    yield driver
    driver.quit()


def open_page(driver, url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, WAIT).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#uploads input[type=file]"))


def upload(driver, *paths: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "#uploads input[type=file]").send_keys("\n".join(map(str, paths)))


def wait_for(driver, condition, what: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT, poll_frequency=0.2).until(condition)
    except TimeoutException:
        raise AssertionError(f"the page never showed {what}; it shows:\n{page_text(driver)}") from None


def page_text(driver) -> str:
    return driver.execute_script("return document.body.innerText")


def text_of(driver, elem_id: str) -> str:
    return driver.execute_script(
        f"const e = document.getElementById({json.dumps(elem_id)}); return e ? e.innerText : ''"
    )


def drawn_heatmaps(driver) -> int:
    """Heatmap pictures in the gallery that the browser decoded (a real image, not a broken link)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#heatmaps img')].filter(i => i.complete && i.naturalWidth >= 300).length"
    )


def requested_hosts(driver) -> set[str]:
    hosts = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if url.startswith(("http://", "https://", "ws://", "wss://")):  # not chrome://, data:, blob:
                hosts.add(url.split("/")[2].rsplit(":", 1)[0])
    return hosts


def test_upload_shows_probability_decision_and_heatmap(app, browser, tiny_checkpoint, xray_root, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    image = sorted((xray_root / "test" / "PNEUMONIA").iterdir())[0]
    predictor = Predictor.from_checkpoint(tiny_checkpoint, device="cpu")
    prob = float(predictor.predict_files([image])[0])
    open_page(browser, app)
    start = time.perf_counter()
    upload(browser, image)
    wait_for(browser, lambda d: drawn_heatmaps(d) == 1, "a heatmap")
    seconds = time.perf_counter() - start
    wait_for(browser, lambda d: image.name in text_of(d, "results"), "the table row")
    table = text_of(browser, "results")
    assert f"{prob:.4f}" in table and "PNEUMONIA" in table, table
    assert "Scored 1 of 1 file(s)." in text_of(browser, "message")
    assert re.search(rf"{re.escape(image.name)}: P\(pneumonia\) {prob:.3f} \u2192 PNEUMONIA", page_text(browser))
    assert "At threshold" in text_of(browser, "operating-point")
    print(f"upload to heatmap: {seconds:.2f} s")

    # the slider, set just above the probability: the same image becomes NORMAL, no new upload
    above = round(prob, 3) + 0.001
    assert above <= 1.0, "the synthetic image scores too close to 1 to cross the threshold above it"
    box = browser.find_element(By.CSS_SELECTOR, "#threshold input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(f"{above:.3f}", Keys.ENTER)
    wait_for(browser, lambda d: "NORMAL" in text_of(d, "results"), "the decision at the new threshold")
    assert f"At threshold {above:.3f}" in text_of(browser, "operating-point")
    # the validation ROC stored with the threshold gives the numbers at this threshold too
    assert "sensitivity" in text_of(browser, "operating-point") and "not measured" not in text_of(
        browser, "operating-point"
    )
    browser.find_element(By.ID, "reset").click()
    wait_for(browser, lambda d: "PNEUMONIA" in text_of(d, "results"), "the decision back at the stored threshold")

    # nothing the page asked for came from anywhere but this server
    assert requested_hosts(browser) == {"127.0.0.1"}


def test_broken_file_gets_a_message_not_a_crash(app, browser, xray_root, tmp_path):
    broken = tmp_path / "scan_0001.png"
    broken.write_text("this is a text file renamed .png\n")
    good = sorted((xray_root / "test" / "NORMAL").iterdir())[0]
    open_page(browser, app)
    upload(browser, broken)
    wait_for(browser, lambda d: "could not be read" in text_of(d, "message"), "the message for the broken file")
    message = text_of(browser, "message")
    assert "Scored 0 of 1 file(s)" in message and "scan_0001.png: not an image" in message
    assert "not an image" in text_of(browser, "results") and drawn_heatmaps(browser) == 0
    # the server is still there: the next upload is scored
    upload(browser, good)
    wait_for(browser, lambda d: drawn_heatmaps(d) == 1, "a heatmap after the broken file")
    assert "Scored 1 of 1 file(s)." in text_of(browser, "message")
