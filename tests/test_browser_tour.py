"""The guided tour in a real browser: "Start the tour" on the main page, then Next through every step across the
pages (each page settles without an exception, its banner says the step, its address carries tour=k), and a step
opened from its link in a fresh session shows the same view as the one reached by Next."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urljoin, urlsplit

import pytest

from ttfs_ui import tour

from .test_browser import SHOTS, _context, _frame, _settle, _watch, browser, server  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.slow]
EXCEPTIONS = '[data-testid="stException"]'
ERRORS = '[data-testid="stAlertContentError"]'
MEDIA_RACE = re.compile(r"(404 \(Not Found\) \(|Image source error - )http://127\.0\.0\.1:\d+/media/[0-9a-f]+\.(jpg|png)")


def _view(page) -> dict:
    """What a step shows: the banner's text, the page's title, its caption line (model, input, settings), the
    error banners (step 5's "not exact"), and the address's query."""
    main = page.locator('[data-testid="stMain"]')
    captions = main.locator('[data-testid="stCaptionContainer"]').all_inner_texts()
    banner = page.locator('.st-key-tour_banner [data-testid="stMarkdownContainer"]')
    return {"banner": banner.first.inner_text().strip(), "link": banner.last.inner_text().strip(),
            "title": main.locator("h1").first.inner_text(),
            "caption": next((c for c in captions if c.startswith("Model:")), None),
            "errors": main.locator(ERRORS).all_inner_texts(),
            "query": dict(parse_qsl(urlsplit(page.url).query))}


def _check(page, k: int) -> dict:
    step = tour.step(k)
    _settle(page, expect=f"step {k} of {len(tour.STEPS)}")
    page.locator(".st-key-tour_end button").wait_for()  # the whole banner is drawn
    if step.page == tour.RASTER:
        _frame(page)  # the live timeline has drawn
    _settle(page)
    assert not page.locator(EXCEPTIONS).count(), f"step {k}: {page.locator(EXCEPTIONS).all_inner_texts()}"
    view = _view(page)
    assert step.sentence in view["banner"], (k, view["banner"])
    # the link for a slide: the step's link in full, from the address of the page showing it
    assert view["link"].startswith("Link to this step") and urljoin(page.url, tour.link(k)) in view["link"], \
        view["link"]
    assert view["query"].get("tour") == str(k), (k, page.url)
    assert urlsplit(page.url).path.strip("/") == step.url_path, (k, page.url)
    if k == 5:  # the exactness banner is the only error shown, and it is the lesson of the step
        assert view["errors"] and all("Not exact for this input" in e for e in view["errors"]), view["errors"]
    else:
        assert not view["errors"], (k, view["errors"])
    return view


def test_the_tour_runs_through_every_step_and_a_step_opens_from_its_link(server, browser):  # noqa: F811
    SHOTS.mkdir(parents=True, exist_ok=True)
    context = _context(browser, 1800)
    page = context.new_page()
    js_errors: list[str] = []
    _watch(page, js_errors)
    views = {}
    try:
        page.goto(f"{server}/", wait_until="domcontentloaded")
        _settle(page)
        page.locator(".st-key-tour_start button").click()
        for k in range(1, len(tour.STEPS) + 1):
            views[k] = _check(page, k)
            page.screenshot(path=str(SHOTS / f"tour_step_{k}.png"), full_page=False)
            if k < len(tour.STEPS):
                page.locator(".st-key-tour_next button").click()
        page.locator(".st-key-tour_end button").click()
        _settle(page, expect="Start the tour")
        assert not page.locator(".st-key-tour_banner").count()
        # Streamlit drops a run's media files when the next run starts: an image of a page left in mid-load (a quick
        # Next) can 404 while the new page draws its own. Only those are let through; any other error fails.
        errors = [e for e in js_errors if not MEDIA_RACE.search(e)]
        assert not errors, f"JavaScript or console errors: {errors}"
    finally:
        page.screenshot(path=str(SHOTS / "tour_last.png"), full_page=True)
        context.close()
    # a step opened from its link, in a fresh session (as from a slide), shows the same view as by Next
    for k in (5, 3):
        context = _context(browser, 1800)
        page = context.new_page()
        try:
            page.goto(f"{server}/{tour.link(k)}", wait_until="domcontentloaded")
            assert _check(page, k) == views[k], k
        finally:
            context.close()
