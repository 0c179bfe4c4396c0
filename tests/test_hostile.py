"""Hostile files end to end: every hostile model file (rebuilt by `tests/attacks.py`) gives the command line's
exit status 2 and one line, and the explorer a message, with nothing written and the process alive; a hostile saved
network (`tests/network_attacks.py`) of each error class gives the command line's one line (every one of them is
refused at the loader in tests/test_persist.py). A seeded fuzz of valid model files ends in the loader's own error
type every time."""

from __future__ import annotations

import os
import random
import time

import pytest
import torch
from streamlit.testing.v1 import AppTest

from tests import attacks
from tests.helpers import MODEL_FILE_ATTACKS as ATTACKS
from tests.helpers import TIMEOUT, ChildWorker, assert_one_line_error, cli_call, error_class, ok, upload_script
from tests.helpers import run_cli as run
from ttfs_core.untrusted import ModelLoadError, load_model
from ttfs_ui import state

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
UPLOADABLE = [a for a in ATTACKS if a not in ("fifo", "sparse_8gb")]  # a browser uploads bytes, up to 64 MB


@pytest.fixture(scope="module")
def cli_child():
    """A child process that runs `ttfs` for this module's tests, so that each call's peak memory is its own (this
    process's lifetime peak is set by whichever earlier test used the most); it keeps the sandbox's helper process
    between calls."""
    worker = ChildWorker()
    yield worker
    worker.close()


@pytest.mark.parametrize("name", ATTACKS)
def test_the_command_line_answers_every_attack_in_one_line(hostile, cli_child, name):
    attack = hostile[name]
    before = sorted(attack.path.parent.iterdir())
    argv = ["verify", str(attack.path), "--limit", "2", "-q"] + (["--arch", attack.arch] if attack.arch else [])
    (code, out, err), grown_mib, cpu_seconds = cli_child.call(cli_call, argv)
    assert_one_line_error(code, err)
    assert attack.marker is None or not attack.marker.exists()
    assert sorted(attack.path.parent.iterdir()) == before
    assert grown_mib < 2048  # the calling process did not balloon (the parsing child has its own limits)
    assert cpu_seconds < 30  # nor spin (the parsing child's time: test_sandbox's timing test)
    assert torch.ones(2).sum().item() == 2.0


@pytest.mark.integration
@pytest.mark.parametrize("name", UPLOADABLE)
def test_the_explorer_answers_every_uploaded_attack_with_a_message(hostile, name):
    attack = hostile[name]
    at = AppTest.from_function(upload_script, default_timeout=TIMEOUT)
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


@pytest.mark.timing
@pytest.mark.parametrize("fmt", ["pt2", "torchscript", "safetensors"])
def test_fuzzed_model_files_end_in_the_loaders_error(tmp_path, fmt):
    """Random byte changes and truncations of a valid file: each loads (a changed weight byte is still a
    model) or raises ModelLoadError, within 30 s of wall-clock time (the parsing child's; hence `timing`); never
    another exception type or a crash."""
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


def test_the_command_line_answers_a_hostile_saved_network_of_each_error_class_in_one_line(network_bases, tmp_path,
                                                                                         capsys):
    """One crafted file per error class (helpers.error_class: the check a message reports, without the field or the
    values, e.g. "expected two integers ≥ #"): the command line turns every NetworkFileError into its one line by
    one `except`, so one file of each check is enough here; all ~210 are refused at the loader (test_persist)."""
    import ttfs_core
    from tests import network_attacks as na
    from ttfs_core import NetworkFileError

    classes: dict[str, list[str]] = {}
    for attack in na.ATTACKS:
        path = tmp_path / f"{attack.name}.safetensors"
        na.craft(attack, network_bases[attack.base], path)
        with pytest.raises(NetworkFileError) as info:
            ttfs_core.load(path)
        classes.setdefault(error_class(str(info.value)[len(str(path)) + 2:]), []).append(attack.name)
    assert len(classes) >= 40  # the validator's checks, not one message for everything
    for names in classes.values():
        path = tmp_path / f"{names[0]}.safetensors"
        start = time.process_time()
        code, _, err = run(capsys, "verify", "lenet5", "--snn", str(path), "--limit", "2", "-q")
        assert time.process_time() - start < 30, names[0]  # CPU seconds: the whole command runs in this process
        lines = err.strip().splitlines()  # (a crafted name may quote the word "Traceback": only the shape is checked)
        assert code == 2 and len(lines) == 1 and lines[0].startswith("ttfs: error:"), (names[0], err)
        assert f"{path}: " in lines[0], (names[0], err)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".safetensors"] * len(na.ATTACKS)  # nothing else written


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_as_a_saved_network_does_not_block(tmp_path, capsys):
    os.mkfifo(tmp_path / "net.safetensors")
    assert_one_line_error(*run(capsys, "verify", "lenet5", "--snn", str(tmp_path / "net.safetensors"))[::2])
