"""Slide export in a real browser: the membrane chart's camera button downloads an SVG that parses and holds the
title, cursor time and legend, and a PNG that is not blank, each under the chart's meaningful file name."""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET

import pytest

from .test_browser import SHOTS, _context, _no_errors, _settle, _watch, browser, server  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SVG_NS = "{http://www.w3.org/2000/svg}"


def _download(page, chart) -> tuple[str, bytes]:
    """Click the chart's camera button (shown on hover) and return the suggested file name and the bytes."""
    chart.hover()
    button = chart.locator('.modebar-btn[data-title^="Download plot"]').first
    button.wait_for(state="visible")
    with page.expect_download() as info:
        button.click()
    download = info.value
    path = download.path()
    with open(path, "rb") as f:
        return download.suggested_filename, f.read()


def test_a_chart_downloads_as_svg_and_png_for_slides(server, browser):  # noqa: F811
    import numpy as np
    from PIL import Image

    SHOTS.mkdir(parents=True, exist_ok=True)
    context = _context(browser, 1400)
    errors: list[str] = []
    try:
        page = context.new_page()
        _watch(page, errors)
        page.goto(f"{server}/Membrane_traces?t=40", wait_until="domcontentloaded")
        _settle(page)
        chart = page.locator('.st-key-membrane:not([data-stale="true"])').first
        chart.locator(".main-svg").first.wait_for()
        _no_errors(page, "membrane traces")
        # no cloud: plotly.js's "Edit in Chart Studio" / "Send data to cloud" and its logo are not offered
        chart.hover()
        assert chart.locator('.modebar-btn[data-title*="Chart Studio"], .modebar-btn[data-title*="cloud"], '
                             ".modebar-btn--logo").count() == 0

        # PNG (the default): named after model, input, view, layer, neurons and cursor; not blank
        name, png = _download(page, chart)
        assert re.fullmatch(r"lenet5_img0_membrane_conv-0_n[0-9+]+_t[0-9.]+\.png", name), name
        img = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
        assert img.shape[0] > 500 and img.shape[1] > 800  # scale 2: slide resolution
        assert img.std() > 10 and (img < 80).mean() > 0.002  # ink: lines, text, markers on white
        (SHOTS / "export_membrane.png").write_bytes(png)  # kept for a look

        # SVG, chosen in the sidebar: it parses, and the title, cursor and legend are in it as text
        page.locator('[data-testid="stSidebar"]').get_by_text("SVG", exact=True).click()
        _settle(page)
        chart = page.locator('.st-key-membrane:not([data-stale="true"])').first
        chart.locator(".main-svg").first.wait_for()
        name, svg = _download(page, chart)
        assert name.endswith(".svg") and name.startswith("lenet5_img0_membrane_conv-0_"), name
        (SHOTS / "export_membrane.svg").write_bytes(svg)
        root = ET.fromstring(svg)
        assert root.tag == f"{SVG_NS}svg"
        words = " ".join(t.strip() for t in root.itertext() if t.strip())
        assert "Membrane potential V(t) · conv 0" in words
        assert "cursor t =" in words and "fired" in words  # the cursor instant and the counts
        assert re.search(r"neuron \(\d+, \d+, \d+\)", words)  # the legend
        page.screenshot(path=str(SHOTS / "membrane_svg_export.png"), full_page=True)
        assert not errors, errors
    finally:
        context.close()
