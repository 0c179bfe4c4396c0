"""Load test of the explorer: N browser sessions at once stepping the spike raster's time cursor.

The cursor runs in the browser (`ttfs_ui.live`): a step is timed in the page, from the click to the frame after
the raster, the counts and the feature maps have repainted, so it measures what a user waits for.

    python bench/load.py                 # 1, 4 and 8 sessions, 12 steps each; writes the "load" section
    python bench/load.py 1 4 --steps 6

One `streamlit run app.py` server on 127.0.0.1 (nothing else is contacted), one headless Debian chromium with one
browser context (= one Streamlit session) per simulated user. Each user opens the raster page, then clicks "one
step forward" again and again; a step's redraw time runs from the click to the repainted frame (measured in the
page). Each session first chooses its own test digit. Reported per session count: median and
worst redraw time, timed-out steps, cross-talk (a session that ends up showing another digit, or whose cursor -- when
none of its clicks was lost -- does not end where a session alone ends after the same clicks), other failures, and
the server's resident memory before, at the peak during, and after the run. The request loops are bounded
(steps × sessions) and time out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.server import streamlit_server  # noqa: E402  (one way to start a fresh explorer)

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
ERRORS = '[data-testid="stException"], [data-testid="stAlertContentError"]'
STEP_TIMEOUT_MS = 60_000


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children, MiB (Linux /proc)."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


LIVE = 'iframe[title="ttfs_ui.live.timeline"]'


async def cursor_label(frame) -> str:
    return await frame.inner_text("#label")


async def live_frame(page):
    """The raster page's live timeline frame, once it has drawn."""
    handle = await page.wait_for_selector(LIVE, timeout=STEP_TIMEOUT_MS)
    frame = await handle.content_frame()
    await frame.wait_for_function("window.ttfsTimeline && window.ttfsTimeline.paints.length > 0",
                                  timeout=STEP_TIMEOUT_MS)
    return frame


async def user(browser, url: str, steps: int, times: list[float], failures: list[str], finals: list[str],
               digit: int) -> None:
    """One session: open the raster page, choose its own test digit, then step the cursor `steps` times, timing
    each repaint in the page. At the end the page must still show this session's digit (a session that saw another
    session's state would show another digit) and, if none of its clicks was lost, the cursor where its own clicks
    put it."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    lost = False
    try:
        await page.goto(f"{url}/Spike_raster", timeout=STEP_TIMEOUT_MS)
        await page.wait_for_selector(IDLE, timeout=STEP_TIMEOUT_MS)
        box = page.locator('[data-testid="stSidebar"] input[type="number"]').first
        await box.fill(str(digit))
        await box.press("Enter")
        await page.wait_for_function(
            """(d) => [...document.querySelectorAll('[data-testid="stCaptionContainer"]')]
                   .some(e => e.innerText.includes('test image #' + d + ' '))""", arg=digit, timeout=STEP_TIMEOUT_MS)
        await page.wait_for_selector(IDLE, timeout=STEP_TIMEOUT_MS)
        frame = await live_frame(page)
        await frame.click("#start")
        await page.wait_for_timeout(300)
        for _ in range(steps):
            count = await frame.evaluate("window.ttfsTimeline.paints.length")
            await frame.click("#forward")
            try:
                await frame.wait_for_function("(n) => window.ttfsTimeline.paints.length > n", arg=count,
                                              timeout=STEP_TIMEOUT_MS)
            except Exception as e:  # noqa: BLE001 - a timeout is a failed step, counted and reported
                failures.append(f"timeout: {type(e).__name__}")
                lost = True
                continue
            times.append(await frame.evaluate("window.ttfsTimeline.paints.at(-1)") / 1000)
            if await page.locator(ERRORS).count():
                failures.append("error element")
        await page.wait_for_selector(IDLE, timeout=STEP_TIMEOUT_MS)
        captions = " ".join(await page.locator('[data-testid="stCaptionContainer"]').all_inner_texts())
        if f"test image #{digit} " not in captions:
            failures.append(f"cross-talk: session of digit #{digit} shows another input")
        if not lost:
            finals.append(await cursor_label(frame))  # where this session's own clicks put its cursor
    except Exception as e:  # noqa: BLE001 - a session that could not even start is a failure, not a crash
        failures.append(f"session failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    finally:
        await context.close()


async def run_load(url: str, server_pid: int, sessions: int, steps: int, reference: str | None = None) -> dict:
    from playwright.async_api import async_playwright

    times: list[float] = []
    failures: list[str] = []
    finals: list[str] = []
    peak = [rss_mib(server_pid)]
    before = peak[0]

    async def sample() -> None:
        while True:
            peak[0] = max(peak[0], rss_mib(server_pid))
            await asyncio.sleep(0.2)

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        sampler = asyncio.create_task(sample())
        started = time.perf_counter()
        await asyncio.gather(*(user(browser, url, steps, times, failures, finals, 10 + 7 * i)
                               for i in range(sessions)))
        wall = time.perf_counter() - started
        sampler.cancel()
        await browser.close()
    await asyncio.sleep(2)
    # every session made the same clicks, so every cursor must end at the same place as a session alone: a shared
    # or leaked state would move it by other sessions' clicks too
    reference = reference or (finals[0] if finals else None)
    failures += [f"cross-talk: cursor ended at {f!r}, expected {reference!r}" for f in finals if f != reference]
    crosstalk = sum(f.startswith("cross-talk") for f in failures)
    nan = float("nan")
    return {"final_cursor": reference, "sessions": sessions, "steps": len(times),
            "median_s": statistics.median(times) if times else nan, "worst_s": max(times) if times else nan,
            "failed_steps": sum(f.startswith("timeout") for f in failures), "cross_talk": crosstalk,
            "other_failures": sum(not f.startswith(("timeout", "cross-talk")) for f in failures),
            "server_rss_before_mib": before, "server_rss_peak_mib": peak[0],
            "server_rss_after_mib": rss_mib(server_pid), "wall_s": wall, "failures": sorted(set(failures))[:5]}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sessions", nargs="*", type=int, default=[1, 4, 8])
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args(argv)
    rows = {}
    with streamlit_server(ROOT / "artifacts" / "load_streamlit.log", startup_s=180) as (url, proc):
        # warm the caches once (model load, conversion) so every row measures stepping, not the first conversion
        asyncio.run(run_load(url, proc.pid, 1, 1))
        reference = asyncio.run(run_load(url, proc.pid, 1, args.steps))["final_cursor"]  # one session alone
        for n in args.sessions:
            row = asyncio.run(run_load(url, proc.pid, n, args.steps, reference))
            print(json.dumps(row), flush=True)
            rows[f"{n} sessions"] = {k: v for k, v in row.items() if k not in ("failures", "final_cursor")}
            if row["failures"]:
                print("  failures:", row["failures"], flush=True)
    sys.path.insert(0, str(ROOT / "bench"))
    from run import HERE, write_markdown  # the shared results file and its Markdown table

    path = HERE / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {"sections": {}}
    results["sections"]["load"] = rows
    results["date"] = time.strftime("%Y-%m-%d")
    path.write_text(json.dumps(results, indent=1))
    write_markdown(results, HERE / "RESULTS.md")


if __name__ == "__main__":
    main(sys.argv[1:])
