"""The ``ttfs`` command line: zoo listing, convert + save, verify (PASS / FAIL exit codes), one-line errors."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ttfs_core
from ttfs_core import data, zoo
from ttfs_core.cli import main
from ttfs_core.data import load_dataset

from .helpers import assert_one_line_error
from .helpers import run_cli as run


@pytest.fixture(scope="module")
def lenet_file(tmp_path_factory) -> Path:
    """lenet5 converted by the command line on the first 64 training digits."""
    path = tmp_path_factory.mktemp("cli") / "lenet5.snn.safetensors"
    assert main(["convert", "lenet5", "--calib", "mnist-train", "--limit", "64", "-o", str(path)]) == 0
    return path


def test_zoo_lists_every_bundled_model(capsys):
    code, out, _ = run(capsys, "zoo")
    lines = out.strip().splitlines()
    cards = zoo.list_models()
    assert code == 0 and len(lines) == len(cards) >= 1
    for line, card in zip(lines, cards):
        assert line.split()[0] == card.name
        assert f"{100 * card.test_accuracy:.2f}%" in line and f"{card.num_parameters:,} params" in line
        assert " MB" in line


def test_convert_writes_a_network_that_reproduces_convert(lenet_file, capsys):
    model, card = zoo.load("lenet5")
    calib, _ = load_dataset("mnist-train", card.preprocess, 64)
    direct = ttfs_core.convert(model, calib, input_range=card.input_range)
    back = ttfs_core.load(lenet_file)
    assert back.summary() == direct.summary() and back.dtype == direct.dtype
    x, _ = load_dataset("mnist-test", card.preprocess, 32)
    a, b = direct.run(x), back.run(x)
    assert torch.equal(a.logits, b.logits)
    assert all(torch.equal(la.offsets, lb.offsets) for la, lb in zip(a.layers, b.layers))


def test_convert_prints_the_summary(tmp_path, capsys):
    code, out, _ = run(capsys, "convert", "fc", "--limit", "32", "--float64", "--neuron", "b1",
                       "-o", str(tmp_path / "fc.safetensors"))
    assert code == 0
    assert "window (τ_c)" in out and "X_n" in out and "latency" in out and "readout" in out
    assert "neuron b1" in out and "float64" in out and "mnist-train: 32 images" in out
    snn = ttfs_core.load(tmp_path / "fc.safetensors")
    assert snn.dtype == torch.float64 and snn.neuron.name == "b1"
    assert f"{snn.decision_time:.6g}" in out


def test_verify_passes_with_full_agreement(capsys):
    code, out, err = run(capsys, "verify", "fc", "--data", "mnist-test", "--limit", "200", "--batch-size", "64")
    assert code == 0, out + err
    lines = out.strip().splitlines()
    assert lines[-1] == "PASS"
    assert "100.00 % (200/200" in out and "accuracy" in out and "ANN" in out and "SNN" in out
    assert "max abs err" in out and "early spikes" in out and "spikes/neuron" in out
    # time in τ_c under the paper's rescaling (the default), and what the early-spike certificate settled
    snn = ttfs_core.convert(zoo.load("fc")[0], data.load("mnist", "train")[0][:512])
    assert snn.rescale.name == "sum"
    assert f"decision at {snn.decision_time:.4g} τ_c; smallest window {snn.smallest_window:.3g} τ_c" in out
    cert = next(line for line in lines if line.startswith("certificate"))
    assert "searched exactly" in cert and "no weighted sum" in cert
    header = next(line for line in lines if line.startswith("layer"))
    assert "window (τ_c)" in header and "searched" in header
    for layer in snn.layers:
        assert any(line.split()[:1] == [layer.name] and f"{layer.window:.4g}" in line for line in lines)
    # one updating progress line on stderr, batch by batch
    assert err.count("\n") == 1 and "\r[" in err and "] 64/200" in err and err.rstrip().endswith("] 200/200")


def test_verify_fails_on_early_spikes(capsys):
    code, out, err = run(capsys, "verify", "fc", "--limit", "50", "--margin", "-0.7", "-q")
    assert code == 1 and err == ""
    last = out.strip().splitlines()[-1]
    assert last.startswith("FAIL: ") and "early spikes" in last


def test_verify_a_saved_network(lenet_file, capsys):
    code, out, _ = run(capsys, "verify", "lenet5", "--snn", str(lenet_file), "--limit", "100", "-q")
    assert code == 0 and out.strip().endswith("PASS") and str(lenet_file) in out
    # a network converted from another model is refused before any work, in one line
    assert_one_line_error(*run(capsys, "verify", "fc", "--snn", str(lenet_file), "--limit", "10")[::2])
    # conversion options make no sense with --snn
    assert_one_line_error(*run(capsys, "verify", "lenet5", "--snn", str(lenet_file), "--margin", "1")[::2])


def test_verify_a_model_file_and_an_image_folder(tmp_path, capsys):
    model, _ = zoo.load("fc")
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    images, labels = data.load_uint8("mnist", "test")
    for i in range(20):
        (tmp_path / "digits" / str(labels[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(images[i])).save(tmp_path / "digits" / str(labels[i]) / f"{i}.png")
    code, out, err = run(capsys, "verify", str(tmp_path / "weights.pt"), "--arch", "fc",
                         "--data", str(tmp_path / "digits"), "-q")
    assert code == 0, out + err
    assert "20 images, labelled" in out and "accuracy" in out and "MNIST" in out and out.strip().endswith("PASS")
    code, _, err = run(capsys, "verify", str(tmp_path / "weights.pt"))  # a state dict needs --arch
    assert_one_line_error(code, err)
    assert "--arch" in err


@pytest.fixture
def bad_files(tmp_path, lenet_file) -> dict[str, str]:
    rng = np.random.default_rng(0)
    (tmp_path / "garbage.pt").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (tmp_path / "notes.txt").write_text("not a model, not a dataset\n")
    return {"GARBAGE": str(tmp_path / "garbage.pt"), "TEXT": str(tmp_path / "notes.txt"),
            "MISSING": str(tmp_path / "missing.pt"), "NET": str(lenet_file), "NODIR": str(tmp_path / "no" / "x")}


@pytest.mark.parametrize("argv", [
    "verify nosuchmodel",
    "convert nosuchmodel -o NODIR",
    "verify MISSING",
    "verify GARBAGE",
    "convert GARBAGE -o NODIR",
    "verify TEXT",
    "verify NET",
    "verify fc --data TEXT",
    "verify fc --data MISSING",
    "convert fc --calib TEXT -o NODIR",
    "verify fc --limit 0",
    "verify fc --limit -5",
    "convert fc --limit 0 -o NODIR",
    "verify fc --neuron foo",
    "verify fc --rescale foo",
    "verify fc --margin -1",
    "verify fc --batch-size x",
    "verify fc --snn GARBAGE",
    "verify lenet5 --arch fc",
    "convert fc -o NODIR",
    "verify",
    "frobnicate",
])
def test_bad_input_is_one_line_and_exit_2(argv, bad_files, capsys):
    args = [bad_files.get(a, a) for a in argv.split()]
    code, _, err = run(capsys, *args)
    assert_one_line_error(code, err)
    if argv.startswith("verify nosuchmodel"):
        assert all(c.name in err for c in zoo.list_models())


def test_help(capsys):
    for argv in (["--help"], ["verify", "--help"], ["convert", "--help"], ["zoo", "--help"]):
        code, out, _ = run(capsys, *argv)
        assert code == 0 and out.startswith("usage: ttfs")
    assert "--margin" in run(capsys, "verify", "--help")[1]


@pytest.mark.integration
def test_console_script_and_module_entry_points():
    script = Path(sys.executable).parent / "ttfs"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if script.exists():
        p = subprocess.run([str(script), "verify", "fc", "--limit", "20", "--margin", "-0.7"],
                           capture_output=True, text=True, timeout=120, env=env)
        assert p.returncode == 1 and "FAIL: " in p.stdout and "20/20" in p.stderr
    p = subprocess.run([sys.executable, "-m", "ttfs_core.cli", "verify", "nosuchmodel"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 2 and p.stdout == "" and p.stderr.strip().splitlines() == [p.stderr.strip()]
    assert p.stderr.startswith("ttfs: error: unknown model 'nosuchmodel'")


def test_nan_errors_are_never_reported_as_zero():
    """Python's max(0.0, nan) is 0.0: the verify table would print a NaN error as 0 and PASS."""
    from ttfs_core.cli import layer_row
    from ttfs_core.verify import LayerCheck, Report, Worst

    nan = Worst(float("nan"), 7)
    assert math.isnan(Worst(0.0, 1).merge(nan).value) and math.isnan(nan.merge(Worst(3.0, 2)).value)
    assert nan.merge(Worst(3.0, 2)).index == 7 and Worst(1.0, 5).merge(Worst(2.0, 9)) == Worst(2.0, 9)
    layer = LayerCheck("x", "Linear", 1.0, error=nan, largest=Worst(1.0, 0))
    assert layer_row(layer, str)[3] == "nan"
    report = Report((layer,), LayerCheck("out", "Linear (readout)", 0.0), images=1, agree=1)
    assert any("NaN values in x" in reason for reason in report.failures())


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["verify", "--help"], ["verify", "lenet5", "--limit", "0"],
                                  ["convert", "lenet5"], ["frobnicate"]])
def test_help_and_usage_errors_answer_before_torch_is_imported(argv):
    """`ttfs --help`, `--version` and argument errors never import torch (3–6 s of start-up): a fresh interpreter
    runs the entry point and reports which of the heavy modules it imported."""
    probe = ("import sys\nfrom ttfs_core.__main__ import main\ntry:\n    code = main(sys.argv[1:])\n"
             "except SystemExit as e:\n    code = e.code\n"
             "print('HEAVY', sorted(m for m in ('torch', 'numpy', 'ttfs_core.cli') if m in sys.modules), code)")
    p = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parent.parent)
    line = next(line for line in p.stdout.splitlines() if line.startswith("HEAVY"))
    assert line.startswith("HEAVY []"), (line, p.stderr)
    assert line.split()[-1] in ("0", "2")


def test_the_light_parser_names_what_the_converter_defines():
    """`ttfs_core.command` repeats three defaults so as not to import torch; they must stay the converter's."""
    from ttfs_core import command, mapping, neurons

    assert command.MARGIN_DEFAULT == mapping.DEFAULT_MARGIN
    assert command.NEURON_NAMES == tuple(neurons.NEURON_MODELS)
    assert command.RESCALE_NAMES == tuple(neurons.RESCALES)


def test_the_package_imports_lazily_and_keeps_its_function_names():
    """`import ttfs_core` imports no torch; `ttfs_core.convert` and `ttfs_core.compare` stay the functions after
    their submodules are imported; submodules are reachable as attributes."""
    probe = ("import sys, ttfs_core\nprint('torch' in sys.modules)\nimport ttfs_core.convert, ttfs_core.compare\n"
             "print(callable(ttfs_core.convert) and not isinstance(ttfs_core.convert, type(sys)),"
             " callable(ttfs_core.compare) and not isinstance(ttfs_core.compare, type(sys)))\n"
             "print(ttfs_core.zoo.__name__, ttfs_core.load.__name__)")
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parent.parent)
    assert p.stdout.split() == ["False", "True", "True", "ttfs_core.zoo", "load_network"], p.stderr


def test_importing_the_package_makes_idle_threads_sleep_unless_told_otherwise():
    """OpenMP's wait policy is PASSIVE once ttfs_core is imported (before torch), and a policy already in the
    environment wins. Spinning idle threads made a simulation ~4× slower on two cores shared with busy processes
    (bench/RESULTS.md, "threads")."""
    probe = "import os, ttfs_core; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert p.stdout.split() == ["PASSIVE"], p.stderr
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                       env={**env, "OMP_WAIT_POLICY": "ACTIVE"})
    assert p.stdout.split() == ["ACTIVE"], p.stderr
