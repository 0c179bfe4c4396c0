"""End to end in a real browser: `streamlit run app.py` on 127.0.0.1, driven by Debian's chromium.

Visits every page (each opened by its URL, i.e. in a fresh session), steps the time cursor, and asserts that no
exception or error element is shown. Screenshots go to artifacts/screenshots/ (the path is printed).
Skipped when /usr/bin/chromium is missing, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
PAGES = [("", "app"), ("Spike_raster", "spike_raster"), ("Membrane_traces", "membrane_traces"),
         ("ANN_vs_SNN", "ann_vs_snn"), ("Robustness", "robustness")]
ERRORS = '[data-testid="stException"], [data-testid="stAlertContentError"]'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    if not CHROMIUM.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{CHROMIUM} is missing (install Debian's chromium package)")
        pytest.skip(f"{CHROMIUM} is missing")
    pytest.importorskip("playwright.sync_api")
    port = _free_port()
    log = (ROOT / "artifacts").joinpath("streamlit.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port",
             str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 90
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                        if r.read().strip() == b"ok":
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"streamlit did not start (see {log}):\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _settle(page, timeout: float = 90_000) -> None:
    """Wait until the script has finished running and the page has drawn."""
    page.wait_for_timeout(400)  # let a rerun triggered by the last action start
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=timeout)
    page.wait_for_timeout(600)


def _no_errors(page, where: str) -> None:
    shown = page.locator(ERRORS)
    texts = [shown.nth(i).inner_text()[:500] for i in range(shown.count())]
    assert not texts, f"{where}: error elements shown: {texts}"


def _paper_digit(labels, digit: int) -> bytes:
    """A test digit drawn dark on white at 112×112 pixels, as a PNG (like a photo of handwriting)."""
    import io

    import numpy as np
    from PIL import Image

    from ttfs_core import data

    images, _ = data.load_uint8("mnist", "test")
    i = int((labels == digit).nonzero()[0][0])
    buf = io.BytesIO()
    Image.fromarray(255 - np.asarray(images[i])).resize((112, 112)).save(buf, format="PNG")
    return buf.getvalue()


def test_every_page_in_a_browser(server, browser, request):
    SHOTS.mkdir(parents=True, exist_ok=True)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    message = f"browser test screenshots: {SHOTS.resolve()}"
    reporter.write_line(message) if reporter else print(message)  # shown even when output is captured (CI)
    context = browser.new_context(viewport={"width": 1440, "height": 2400})
    page = context.new_page()
    js_errors: list[str] = []
    page.on("pageerror", lambda e: js_errors.append(str(e)))
    try:
        for path, name in PAGES:  # each page opened by its URL: a fresh session that never saw app.py
            page.goto(f"{server}/{path}", wait_until="domcontentloaded")
            _settle(page)
            page.wait_for_selector(".js-plotly-plot", timeout=60_000)
            _no_errors(page, name)
            page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
            explanations = page.locator('[data-testid="stMain"] [data-testid="stExpander"] summary')
            for i in range(explanations.count()):  # open them all: every equation must render
                explanations.nth(i).click()
            page.wait_for_timeout(500)
            assert page.locator(".katex").count() > 0, f"{name}: no equation rendered"
            bad = page.locator(".katex-error")
            assert not bad.count(), f"{name}: equations that do not render: {bad.first.get_attribute('title')}"

        # step the time cursor on the raster page and play the animation client-side
        page.goto(f"{server}/Spike_raster", wait_until="domcontentloaded")
        _settle(page)
        page.locator(".st-key-cursor_start button").first.click()
        _settle(page)
        slider = page.locator('[data-testid="stSlider"]').filter(has_text="Time cursor")
        start_label = slider.inner_text()
        for _ in range(3):
            page.locator(".st-key-cursor_forward button").first.click()
            _settle(page)
        assert slider.inner_text() != start_label, "stepping did not move the time cursor"
        page.locator(".st-key-cursor_next_window button").first.click()
        _settle(page)
        _no_errors(page, "raster after stepping")
        page.screenshot(path=str(SHOTS / "spike_raster_stepped.png"), full_page=True)
        page.locator(".updatemenu-button").first.click()  # ▶ Play (Plotly animation frames)
        page.wait_for_timeout(1500)
        _no_errors(page, "raster while playing")

        # membrane traces: pick a neuron by clicking the feature map
        page.goto(f"{server}/Membrane_traces", wait_until="domcontentloaded")
        _settle(page)
        page.get_by_text("from the feature map").click()
        _settle(page)
        picker = page.locator(".st-key-picker_0 .js-plotly-plot").first
        x, y = picker.evaluate("""(g, i) => { const xa = g._fullLayout.xaxis, ya = g._fullLayout.yaxis;
            const r = g.getBoundingClientRect();
            const t = g._fullData[0];  // typed arrays decoded
            return [r.left + xa._offset + xa.c2p(t.x[i]), r.top + ya._offset + ya.c2p(t.y[i])]; }""", 100)
        page.mouse.move(x, y, steps=4)
        page.wait_for_timeout(400)
        page.mouse.down()
        page.mouse.up()
        _settle(page)
        from ttfs_ui import figures, timeline

        order = figures.mosaic_index((6, 28, 28))
        label = timeline.unravel((6, 28, 28), [order[order >= 0][100]])[0]
        # a rerun may briefly show the old and the new chart together: wait for the one naming the clicked neuron
        page.locator(".st-key-membrane").filter(has_text=f"neuron {label}").first.wait_for(timeout=30_000)
        _no_errors(page, "membrane traces after picking from the map")
        page.screenshot(path=str(SHOTS / "membrane_traces_picked.png"), full_page=True)

        # the main page's widgets, then the pages through the sidebar (one session: the choice carries over)
        page.goto(f"{server}/", wait_until="domcontentloaded")
        _settle(page)
        from ttfs_core import data

        _, labels = data.load_uint8("mnist", "test")
        first_three = int((labels == 3).nonzero()[0][0])
        page.locator(f".st-key-gallery_{first_three} button").first.click()
        _settle(page)
        _no_errors(page, "app after choosing a gallery image")
        page.locator('[data-testid="stSidebarNav"] a').filter(has_text="ANN vs SNN").click()
        _settle(page)
        page.wait_for_selector(".js-plotly-plot", timeout=60_000)
        _no_errors(page, "ANN vs SNN via the sidebar")
        assert f"MNIST test image #{first_three}" in page.locator("body").inner_text()

        # a photo-like upload: a dark 7 on white paper, larger than 28×28, is resized and inverted
        page.goto(f"{server}/", wait_until="domcontentloaded")
        _settle(page)
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').nth(1).set_input_files(
            files=[{"name": "seven.png", "mimeType": "image/png", "buffer": _paper_digit(labels, 7)}])
        _settle(page)
        _no_errors(page, "app after uploading an image")
        body = page.locator("body").inner_text()
        assert "uploaded seven.png" in body and "resized" in body and "inverted" in body
        page.screenshot(path=str(SHOTS / "app_uploaded_image.png"), full_page=True)

        # garbage uploads: a message, and the app keeps working
        page.get_by_text("Upload a model file").click()
        uploaders = page.locator('[data-testid="stFileUploaderDropzoneInput"]')
        uploaders.nth(0).set_input_files(files=[{"name": "model.pt", "mimeType": "application/octet-stream",
                                                 "buffer": os.urandom(5000)}])
        _settle(page)
        errors = page.locator('[data-testid="stAlertContentError"]')
        assert errors.count() == 1 and "Cannot use 'model.pt'" in errors.first.inner_text()
        uploaders.nth(1).set_input_files(files=[{"name": "digit.png", "mimeType": "image/png",
                                                 "buffer": b"this is only text, not a PNG"}])
        _settle(page)
        assert errors.count() == 2 and "as an image" in errors.nth(1).inner_text()
        assert "uploaded seven.png" in page.locator("body").inner_text()  # the last good image is still in use
        assert not page.locator('[data-testid="stException"]').count()
        assert page.locator(".js-plotly-plot").count() >= 2  # still the default model's predictions
        page.screenshot(path=str(SHOTS / "app_garbage_uploads.png"), full_page=True)
        assert not js_errors, f"JavaScript errors: {js_errors}"
    finally:
        page.screenshot(path=str(SHOTS / "last.png"), full_page=True)
        context.close()
