"""Test-session hooks."""

from __future__ import annotations

import time
from pathlib import Path

SHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
_START = time.time()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say where the browser test left its screenshots in this run (CI prints this summary)."""
    shots = sorted(p for p in SHOTS.glob("*.png") if p.stat().st_mtime >= _START) if SHOTS.is_dir() else []
    if shots:
        terminalreporter.write_sep("-", "browser test screenshots")
        terminalreporter.write_line(f"{len(shots)} screenshots in {SHOTS}: {', '.join(p.name for p in shots)}")
