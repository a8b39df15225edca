"""The try-it page and the OpenAPI docs, the page driven in a real headless browser."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.helpers import LABELS
from tests.serve.helpers import classify


def test_page_and_openapi_docs(served) -> None:
    url, _ = served
    page = httpx.get(url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="text"' in page.text and "fetch(" in page.text and "<script src" not in page.text  # no CDN
    assert httpx.get(url + "/docs").status_code == 200
    spec = httpx.get(url + "/openapi.json").json()
    schema = spec["paths"]["/classify"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"text", "texts"}


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.browser
@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (scripts/setup installs them with apt-get when run as root)",
)
def test_try_it_page_in_a_real_browser(served, tmp_path: Path) -> None:
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[dev]')")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = served
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=900,720"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: b.find_element(By.ID, "status").text == "ready")
        assert browser.find_element(By.ID, "labels").text == ", ".join(LABELS)
        assert browser.find_element(By.ID, "version").text.startswith("sha256:")
        browser.find_element(By.ID, "text").send_keys("Operating profit rose to EUR 13.1 mn from EUR 8.7 mn.")
        browser.find_element(By.ID, "submit").click()
        wait.until(lambda b: b.find_element(By.ID, "label").text != "")
        label = browser.find_element(By.ID, "label").text
        bars = [b.get_attribute("data-label") for b in browser.find_elements(By.CSS_SELECTOR, "#bars .bar-row")]
        shot = tmp_path / "serve_page.png"
        browser.save_screenshot(str(shot))
    finally:
        browser.quit()
    expected = classify(url, {"text": "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn."}).json()["label"]
    assert label == expected and bars == LABELS
    assert shot.read_bytes()[:4] == b"\x89PNG"
    if os.environ.get("FINTRL_TEST_ARTIFACTS"):
        artifacts = Path(os.environ["FINTRL_TEST_ARTIFACTS"])
        artifacts.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, artifacts / shot.name)
