"""Test-session hooks and the fixtures that several test modules share (helper functions are in helpers.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

SHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
_START = time.time()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say where the browser test left its screenshots in this run (CI prints this summary)."""
    shots = sorted(p for p in SHOTS.glob("*.png") if p.stat().st_mtime >= _START) if SHOTS.is_dir() else []
    if shots:
        terminalreporter.write_sep("-", "browser test screenshots")
        terminalreporter.write_line(f"{len(shots)} screenshots in {SHOTS}: {', '.join(p.name for p in shots)}")


@pytest.fixture(scope="session")
def hostile(tmp_path_factory: pytest.TempPathFactory):
    """The hostile model files of tests/attacks.py by name, built once (tests must leave their folder as it is)."""
    from tests import attacks

    return {a.name: a for a in attacks.build_all(tmp_path_factory.mktemp("attacks"))}


@pytest.fixture(scope="session")
def network_bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The valid saved networks that tests/network_attacks.py's crafted files start from, by name."""
    from tests import network_attacks as na

    folder = tmp_path_factory.mktemp("networks")
    paths = {}
    for name in na.BASES:
        paths[name] = folder / f"{name}.safetensors"
        na.save_base(name, paths[name])
    return paths
