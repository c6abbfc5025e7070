"""The demo page in headless Chromium against a real service: upload, results, errors,
bundled adversarial samples and keyboard use. Each wait is bounded; the page's own
requests are the only traffic, all to 127.0.0.1."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

RESULT_TIMEOUT_S = 60
MODEL_WIDTH = 28
WINDOW_WIDTH = 1280
MAX_UPLOAD_BYTES = 100_000  # demo_server's limit

pytestmark = pytest.mark.usefixtures("demo_server")


def _wait(browser, condition, timeout: float = RESULT_TIMEOUT_S, message: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=0.1).until(condition, message)


def _text(browser, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, selector).text


def _result_settled(browser) -> str | None:
    """ "done" or "error" once the current image's requests have all answered."""
    state = browser.execute_script(
        "const r = document.getElementById('results');"
        "return document.getElementById('error').hidden ? r.dataset.state : 'error';"
    )
    return state if state in ("done", "error") else None


def _open(browser, url: str) -> None:
    browser.get(f"{url}/")
    _wait(
        browser,
        lambda b: "test images" in _text(b, "#samples-status"),
        message="the bundled samples were not listed",
    )


def _classify(url: str, image: bytes, purify: bool) -> dict:
    response = httpx.post(
        f"{url}/classify",
        params={"purify": purify, "top_k": 5},
        files={"file": ("image.png", image, "image/png")},
        timeout=30,
    )
    response.raise_for_status()
    return response.json()


def _image_state(browser, element_id: str) -> dict:
    return browser.execute_script(
        "const img = document.getElementById(arguments[0]);"
        "return {complete: img.complete, width: img.naturalWidth, alt: img.alt};",
        element_id,
    )


def _screenshot(browser, path: Path) -> None:
    """The whole page, not just the window."""
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(WINDOW_WIDTH, min(height + 40, 4000))
    browser.save_screenshot(str(path))


def _csp_violations(browser) -> list[str]:
    return [
        entry["message"]
        for entry in browser.get_log("browser")
        if "Content Security Policy" in entry["message"]
        or "ERR_NAME_NOT_RESOLVED" in entry["message"]
    ]


@pytest.fixture
def upload_png(tmp_path: Path) -> Path:
    """A Fashion-MNIST test image (a trouser) as a PNG file to upload."""
    from training.data import load_split

    split = load_split("fashion-mnist", train=False).first(16)
    index = int((split.labels == 1).nonzero()[0])
    path = tmp_path / "trouser.png"
    Image.fromarray(split.images[index, 0].numpy(), "L").save(path)
    return path


def test_upload_shows_both_predictions_then_a_non_image_shows_the_error(
    browser, demo_server: str, upload_png: Path, tmp_path: Path, artifacts: Path
):
    from selenium.webdriver.common.by import By

    _open(browser, demo_server)
    browser.find_element(By.ID, "upload").send_keys(str(upload_png))
    _wait(browser, _result_settled, message="no result for the upload")
    assert _result_settled(browser) == "done", _text(browser, "#error")

    image = upload_png.read_bytes()
    purified_api = _classify(demo_server, image, purify=True)
    plain_api = _classify(demo_server, image, purify=False)
    assert _text(browser, "#prediction-purified .label") == purified_api["label"]
    assert _text(browser, "#prediction-plain .label") == plain_api["label"]
    assert _text(browser, "#prediction-purified .confidence").endswith("% confidence")
    top_k = browser.find_elements(By.CSS_SELECTOR, "#prediction-purified .top-k li")
    assert [li.text.split("\n")[0] for li in top_k] == [p["label"] for p in purified_api["top_k"]]
    stats = _text(browser, "#prediction-purified .stats")
    assert "Spikes: purifier" in stats and "classifier" in stats and "round trip" in stats
    assert "mean estimated noise level" in _text(browser, "#purify-stats")

    for element_id in ("input-image", "purified-image"):
        state = _image_state(browser, element_id)
        assert state["complete"] and state["width"] > 0, element_id
        assert "trouser.png" in state["alt"], element_id
    assert _image_state(browser, "purified-image")["width"] == MODEL_WIDTH
    noise_map = browser.execute_script(
        "const c = document.getElementById('noise-map');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let opaque = 0; for (let i = 3; i < d.length; i += 4) opaque += d[i] === 255;"
        "return {width: c.width, opaque, label: c.getAttribute('aria-label')};"
    )
    assert noise_map["width"] == MODEL_WIDTH and noise_map["opaque"] == MODEL_WIDTH**2
    assert "noise level the purifier estimated" in noise_map["label"]
    _screenshot(browser, artifacts / "demo-upload.png")

    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("these are words, not pixels\n")
    browser.find_element(By.ID, "upload").send_keys(str(not_an_image))
    _wait(browser, lambda b: b.find_element(By.ID, "error").is_displayed(), message="no error")
    message = _text(browser, "#error")
    assert "could not use this file" in message
    assert "not a recognisable image" in message and "HTTP 400" in message
    assert not browser.find_element(By.ID, "results").is_displayed()
    _screenshot(browser, artifacts / "demo-error.png")

    too_large = tmp_path / "large.bmp"
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(noise, "RGB").save(too_large)  # 120 kB, over the 100 kB limit
    assert too_large.stat().st_size > MAX_UPLOAD_BYTES
    browser.find_element(By.ID, "upload").send_keys(str(too_large))
    _wait(browser, lambda b: "HTTP 413" in _text(b, "#error"), message="no 413 message")
    assert "exceeds the limit of 100000 bytes" in _text(browser, "#error")
    assert _csp_violations(browser) == []


def test_keyboard_walks_a_sample_through_its_adversarial_versions(
    browser, demo_server: str, artifacts: Path
):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    _open(browser, demo_server)
    listing = httpx.get(f"{demo_server}/samples", timeout=10).json()["samples"]
    first = sorted({s["source"] for s in listing})[0]
    variants = {s["variant"]: s for s in listing if s["source"] == first}
    true_label = variants["clean"]["label"]

    def focused() -> dict:
        return browser.execute_script(
            "const e = document.activeElement; const s = getComputedStyle(e);"
            "return {id: e.id, tag: e.tagName, type: e.type || '', text: e.textContent,"
            "        source: e.dataset ? e.dataset.source : null, value: e.value,"
            "        outline: s.outlineStyle, outlineWidth: s.outlineWidth};"
        )

    keys = ActionChains(browser)
    keys.send_keys(Keys.TAB).perform()  # from a freshly loaded page
    assert "Skip to the results" in focused()["text"]
    keys.send_keys(Keys.TAB).perform()
    assert focused()["id"] == "upload"
    keys.send_keys(Keys.TAB).perform()
    sample_button = focused()
    assert sample_button["tag"] == "BUTTON" and sample_button["source"] == first
    # a visible focus ring, not the browser's default-or-nothing
    assert sample_button["outline"] == "solid" and sample_button["outlineWidth"] == "3px"
    keys.send_keys(Keys.ENTER).perform()

    def shows(variant: str, phrase: str):
        def check(b) -> bool:
            return _result_settled(b) == "done" and phrase in _text(b, "#input-caption")

        _wait(browser, check, message=f"the {variant} version was not shown")

    shows("clean", "the clean test image")
    truth = _text(browser, "#prediction-purified .truth")
    assert truth in (
        f"Correct (true label: {true_label})",
        f"Wrong: the true label is {true_label}",
    )

    sources = {s["source"] for s in listing}
    for _ in sources:  # past the other sample buttons to the versions of this one
        keys.send_keys(Keys.TAB).perform()
    assert focused()["type"] == "radio" and focused()["value"] == variants["clean"]["id"]
    expected = [
        ("pgd", "classifier-only / transfer to the pipeline"),
        ("autoattack", "classifier-only / transfer to the pipeline"),
        ("pgd-end-to-end", "end-to-end, adaptive attacker"),
    ]
    for variant, threat in expected:
        keys.send_keys(Keys.ARROW_DOWN).perform()
        assert focused()["value"] == variants[variant]["id"]
        shows(variant, threat)
    caption = _text(browser, "#input-caption")
    assert f"true label {true_label}" in caption and "PGD (3 steps)" in caption
    assert "ε = 0.100" in caption

    sample_png = httpx.get(
        f"{demo_server}/samples/{variants['pgd-end-to-end']['id']}", timeout=10
    ).content
    purified_api = _classify(demo_server, sample_png, purify=True)
    assert _text(browser, "#prediction-purified .label") == purified_api["label"]
    assert Image.open(io.BytesIO(sample_png)).size == (MODEL_WIDTH, MODEL_WIDTH)
    assert "end-to-end, adaptive attacker" in _text(browser, "#variant-list")
    assert "AutoAttack (APGD-CE + APGD-T, 5 iterations; FAB-T, Square not run)" in _text(
        browser, "#variant-list"
    )
    _screenshot(browser, artifacts / "demo-adversarial.png")
    assert _csp_violations(browser) == []
