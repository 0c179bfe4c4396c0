"""First visits on a fresh server, as a class meets the explorer: how long until a page has settled.

    python -m bench.first_visit          # prints the rows and merges them into bench/results.json, RESULTS.md
    python -m bench.first_visit --print  # prints only

Starts `streamlit run app.py --server.headless true` on a free port (its file watcher off: edits elsewhere in the
tree must not reload modules while it is measured), and drives Debian's chromium with Playwright:

- server A, fresh: the first visit of ANN vs SNN (default settings; its 1,000 test images evaluated), then of the
  same page after the "early spikes" preset (its link, ζ = −0.7: a network not converted yet on this server), then
  of Robustness; then the guided tour in one session, each step timed from its button's click;
- server B, fresh: 8 sessions opening the raster page's link at once (a lecturer's link on a slide), each timed
  from its own request; the median and the largest.

"Settled": the page's own result is drawn (the test set's metrics, the sweeps' summary, the raster's first paint)
and the script has finished. Each row records the load average beside its seconds (a 2-core machine shared with
other work: timings move with it). A benchmark, not a test: nothing here asserts a target; the README states them
(≤ 2 s for a first visit on a quiet machine, median ≤ 10 s for the 8 sessions).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.server import streamlit_server  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
SECTION = "first_visit"
WAIT_MS = 900_000  # a cap that only ends a run that hangs
SESSIONS = 8
RASTER_LINK = "Spike_raster?t=50&layer=4"  # the tour's raster step, as a lecturer would share it
SETTLED = '[data-testid="stApp"][data-test-script-state="notRunning"]'


def load_average() -> float:
    return os.getloadavg()[0]


@contextmanager
def fresh_server():
    """A new `streamlit run app.py` (nothing cached yet, `tests.server`); yields its address and process id."""
    log = ROOT / "artifacts" / "first_visit.log"
    with streamlit_server(log, startup_s=180) as (url, proc):
        yield url, proc.pid
    log.unlink(missing_ok=True)


async def _visit(browser, url: str, expect) -> float:
    """Seconds from the request of `url` in a fresh session (a new browser context) until `expect(page)` has
    returned and the script has finished."""
    context = await browser.new_context(viewport={"width": 1440, "height": 1600})
    context.set_default_timeout(WAIT_MS)
    page = await context.new_page()
    try:
        t = time.perf_counter()
        await page.goto(url, wait_until="domcontentloaded")
        await expect(page)
        await page.wait_for_selector(SETTLED)
        return time.perf_counter() - t
    finally:
        await context.close()


async def _text(page, text: str) -> None:
    await page.get_by_text(text).first.wait_for()


async def _compare(page) -> None:
    await _text(page, "Spikes per neuron")  # the test set's metrics: its evaluation is done


async def _robustness(page) -> None:
    await _text(page, "Without perturbation, on these")
    await page.wait_for_function("() => !document.body.innerText.includes('(computing…)')", timeout=WAIT_MS)


async def _raster(page) -> None:
    handle = await page.wait_for_selector('iframe[title="ttfs_ui.live.timeline"]')
    frame = await handle.content_frame()
    await frame.wait_for_function("window.ttfsTimeline && window.ttfsTimeline.paints.length > 0", timeout=WAIT_MS)


async def _tour(browser, url: str) -> list[float]:
    """Seconds from each tour button's click ("Start the tour", then Next) until its step has settled, in one
    session on a server that has served the pages once (each step's own computations are new to it)."""
    from ttfs_ui import tour

    context = await browser.new_context(viewport={"width": 1440, "height": 1600})
    context.set_default_timeout(WAIT_MS)
    page = await context.new_page()
    times = []
    try:
        await page.goto(f"{url}/", wait_until="domcontentloaded")
        await _text(page, "Start the tour")
        await page.wait_for_selector(SETTLED)
        button = ".st-key-tour_start button"
        for k, step in enumerate(tour.STEPS, start=1):
            t = time.perf_counter()
            await page.locator(button).click()
            await _text(page, f"step {k} of {len(tour.STEPS)}")
            await page.locator(".st-key-tour_end button").wait_for()
            if step.page == tour.RASTER:
                await _raster(page)
            elif step.page == tour.COMPARE:
                await _compare(page)
            await page.wait_for_selector(SETTLED)
            times.append(time.perf_counter() - t)
            button = ".st-key-tour_next button"
    finally:
        await context.close()
    return times


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the server process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def row(seconds: float, load: float, note: str) -> dict:
    return {"seconds": round(seconds, 2), "load_average": round(load, 2), "note": note}


async def _measure() -> dict:
    from playwright.async_api import async_playwright

    rows = {}
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            with fresh_server() as (url, pid):
                for case, path, expect, note in (
                        ("ANN vs SNN, first visit", "ANN_vs_SNN", _compare,
                         "fresh server; LeNet-5, default settings, 1,000 test images"),
                        ("ANN vs SNN, early-spikes preset", "ANN_vs_SNN?zeta=-0.7", _compare,
                         "same server, ζ = −0.7 not converted yet; 1,000 test images"),
                        ("Robustness, first visit", "Robustness", _robustness,
                         "same server; 200 test images per point, 6 charts")):
                    load, cpu = load_average(), cpu_seconds(pid)
                    seconds = await _visit(browser, f"{url}/{path}", expect)
                    rows[case] = row(seconds, load, f"{note}; server CPU {cpu_seconds(pid) - cpu:.1f} s")
                    print(f"  {case}: {rows[case]}", flush=True)
                load = load_average()
                steps = await _tour(browser, url)
                note = "same server; click to settled, steps 1–8 (Start, then Next)"
                rows["tour, slowest step"] = row(max(steps), load, note + ": " + ", ".join(f"{t:.1f}" for t in steps))
                rows["tour, median step"] = row(statistics.median(steps), load, note)
                for case in list(rows)[-2:]:
                    print(f"  {case}: {rows[case]}", flush=True)
            with fresh_server() as (url, pid):
                load, cpu = load_average(), cpu_seconds(pid)
                times = await asyncio.gather(*(_visit(browser, f"{url}/{RASTER_LINK}", _raster)
                                               for _ in range(SESSIONS)))
                cpu = cpu_seconds(pid) - cpu
                # the browsers run on this machine too: the server's own CPU time tells its share of the wait
                note = (f"fresh server; {SESSIONS} sessions opening /{RASTER_LINK} at once, the {SESSIONS} Chromium "
                        f"pages on the same machine; server CPU {cpu:.1f} s in all")
                rows[f"raster, {SESSIONS} sessions at once, median"] = row(statistics.median(times), load, note)
                rows[f"raster, {SESSIONS} sessions at once, max"] = row(max(times), load, note)
                load, cpu = load_average(), cpu_seconds(pid)
                alone = await _visit(browser, f"{url}/{RASTER_LINK}", _raster)
                rows["raster, one more session"] = row(alone, load, f"the same server after them; server CPU "
                                                                    f"{cpu_seconds(pid) - cpu:.1f} s")
                for case in list(rows)[-3:]:
                    print(f"  {case}: {rows[case]}", flush=True)
        finally:
            await browser.close()
    return rows


def measure() -> dict:
    """Every row: case -> {"seconds", "load_average" (1 min, when the case started), "note"}."""
    return asyncio.run(_measure())


def merge(rows: dict, results: Path = HERE / "results.json", markdown: Path = HERE / "RESULTS.md") -> None:
    """Put this benchmark's rows into its own section of bench/results.json (the other sections, written by
    bench/run.py or by other runs meanwhile, are kept as they are read now) and regenerate RESULTS.md from it."""
    from bench.run import write_markdown

    doc = json.loads(results.read_text()) if results.exists() else {"sections": {}}
    doc.setdefault("sections", {})[SECTION] = rows
    results.write_text(json.dumps(doc, indent=1))
    try:
        write_markdown(doc, markdown)
    except Exception as e:  # noqa: BLE001 - bench/run.py's writer fails on another section: the JSON has the rows
        print(f"RESULTS.md not regenerated (bench/run.py's write_markdown failed: {type(e).__name__}: {e}); "
              f"the rows are in {results}", file=sys.stderr)


def main(argv: list[str]) -> None:
    print(f"first visits on a fresh server (load average {load_average():.2f} at the start)", flush=True)
    rows = measure()
    print(f"load average at the end: {load_average():.2f}")
    if "--print" not in argv:
        merge(rows)
        print(f"merged into {HERE / 'results.json'} (section {SECTION!r}) and {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main(sys.argv[1:])
