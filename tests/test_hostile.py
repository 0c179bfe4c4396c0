"""Issue 14's attacks end to end: every hostile model file (rebuilt by `tests/attacks.py`) and every hostile saved
network (`tests/network_attacks.py`) gives the command line's exit status 2 and one line, and the explorer a
message, with nothing written and the process alive. A seeded fuzz of valid model files ends in the loader's own
error type every time."""

from __future__ import annotations

import os
import random
import resource
import time
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from tests import attacks
from tests.test_app import TIMEOUT, _upload_script, ok
from tests.test_cli import assert_one_line_error, run
from tests.test_sandbox import ATTACKS
from ttfs_core.loading import ModelLoadError, load_model
from ttfs_ui import state

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
UPLOADABLE = [a for a in ATTACKS if a not in ("fifo", "sparse_8gb")]  # a browser uploads bytes, up to 64 MB


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, attacks.Attack]:
    return {a.name: a for a in attacks.build_all(tmp_path_factory.mktemp("attacks"))}


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


@pytest.mark.parametrize("name", ATTACKS)
def test_the_command_line_answers_every_attack_in_one_line(hostile, capsys, name):
    attack = hostile[name]
    before = sorted(attack.path.parent.iterdir())
    peak = _peak_gib()
    start = time.monotonic()
    argv = ["verify", str(attack.path), "--limit", "2", "-q"] + (["--arch", attack.arch] if attack.arch else [])
    code, out, err = run(capsys, *argv)
    assert time.monotonic() - start < 30
    assert_one_line_error(code, err)
    assert attack.marker is None or not attack.marker.exists()
    assert sorted(attack.path.parent.iterdir()) == before
    assert _peak_gib() - peak < 2.0  # this process did not balloon (the parsing child has its own limits)
    assert torch.ones(2).sum().item() == 2.0


@pytest.mark.parametrize("name", UPLOADABLE)
def test_the_explorer_answers_every_uploaded_attack_with_a_message(hostile, name):
    attack = hostile[name]
    at = AppTest.from_function(_upload_script, default_timeout=TIMEOUT)
    at.session_state["test_kind"] = name
    at.session_state["test_bytes"] = attack.path.read_bytes()
    at.session_state["test_name"] = attack.path.name
    if attack.arch:
        at.session_state["test_arch"] = attack.arch
    at.run()
    ok(at)
    assert len(at.error) == 1 and at.error[0].value.startswith("Cannot use")
    assert at.session_state[state.MODEL] == state.DEFAULT_MODEL  # nothing selected, the app goes on
    assert attack.marker is None or not attack.marker.exists()


def _mutations(raw: bytes, rng: random.Random, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        kind = rng.random()
        if kind < 0.3:
            out.append(raw[:rng.randrange(len(raw))])  # truncated
        else:
            b = bytearray(raw)
            for _ in range(rng.choice((1, 4, 32))):
                b[rng.randrange(len(b))] = rng.randrange(256)
            out.append(bytes(b))
    return out


@pytest.mark.parametrize("fmt", ["pt2", "torchscript", "safetensors"])
def test_fuzzed_model_files_end_in_the_loaders_error(tmp_path, fmt):
    """Random byte changes and truncations of a valid file: each loads (a changed weight byte is still a
    model) or raises ModelLoadError, within the time limit; never another exception type or a crash."""
    if fmt == "pt2":
        base, arch = attacks.base_pt2(tmp_path), None
    elif fmt == "torchscript":
        base, arch = attacks.base_torchscript(tmp_path), None
    else:
        from safetensors.torch import save_file

        base, arch = tmp_path / "mlp.safetensors", "lenet5"
        save_file(attacks._lenet5_state_dict(), base)
    raw = base.read_bytes()
    rng = random.Random(f"fuzz-{fmt}")
    refused = 0
    for k, blob in enumerate(_mutations(raw, rng, 25)):
        path = tmp_path / f"fuzz{k}{base.suffix}"
        path.write_bytes(blob)
        start = time.monotonic()
        try:
            load_model(path, arch)
        except ModelLoadError as e:
            assert "\n" not in str(e)
            refused += 1
        assert time.monotonic() - start < 30
        os.unlink(path)
    assert refused > 0


@pytest.fixture(scope="module")
def network_bases(tmp_path_factory) -> dict[str, Path]:
    from tests import network_attacks as na

    folder = tmp_path_factory.mktemp("networks")
    bases = {}
    for name in na.BASES:
        bases[name] = folder / f"{name}.safetensors"
        na.save_base(name, bases[name])
    return bases


def _network_attack_names() -> list[str]:
    from tests import network_attacks as na

    return [a.name for a in na.ATTACKS]


@pytest.mark.parametrize("name", _network_attack_names())
def test_the_command_line_answers_every_hostile_saved_network_in_one_line(network_bases, tmp_path, capsys, name):
    from tests import network_attacks as na

    attack = next(a for a in na.ATTACKS if a.name == name)
    path = tmp_path / "crafted.safetensors"
    na.craft(attack, network_bases[attack.base], path)
    start = time.monotonic()
    code, _, err = run(capsys, "verify", "lenet5", "--snn", str(path), "--limit", "2", "-q")
    assert time.monotonic() - start < 30
    lines = err.strip().splitlines()  # (a crafted name may quote the word "Traceback": only the shape is checked)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("ttfs: error:"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crafted.safetensors"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_as_a_saved_network_does_not_block(tmp_path, capsys):
    os.mkfifo(tmp_path / "net.safetensors")
    assert_one_line_error(*run(capsys, "verify", "lenet5", "--snn", str(tmp_path / "net.safetensors"))[::2])
