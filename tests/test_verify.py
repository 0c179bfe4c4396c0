"""Verification at scale: mergeable reports (laws, JSON), the batch check against `compare`, shards shared by two
torch.distributed processes (gloo, launched by torchrun) giving the single process's report, a killed run resumed
to the same report, streamed .npz datasets, and `device=` (every tensor the simulators and the calibration create
follows the network's device)."""

from __future__ import annotations

import functools
import importlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import ttfs_core
from ttfs_core import data, zoo
from ttfs_core.cli import main
from ttfs_core.compare import compare
from ttfs_core.data import NpzSource
from ttfs_core.verify import LayerCheck, Report, Verifier, Worst, check_shard

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def lenet():
    model, card = zoo.load("lenet5")
    imgs, _ = data.load_uint8("mnist", "train")
    snn = ttfs_core.convert(model, card.preprocess.batch_from_uint8(np.asarray(imgs[:256])),
                            input_range=card.input_range)
    return model, card, snn


# --- the report: laws -------------------------------------------------------------------------------------------
def _check(name: str, value: float | None, index: int, early: int = 0) -> LayerCheck:
    return LayerCheck(name, "Conv2d", 2.0, Worst(value, index), Worst(value, index), early, 10, 10, 1,
                      (("no weighted sum", 9),))


def _report(value, index, images, early_inputs=()) -> Report:
    return Report((_check("a", value, index),), _check("out", value, index), images, images, images, images,
                  images, len(early_inputs), 0, (), tuple(early_inputs))


def test_merge_is_order_free_and_exact():
    parts = [_report(0.5, 3, 4), _report(0.75, 9, 4, (9,)), _report(0.75, 6, 4), _report(None, -1, 0),
             _report(0.25, 1, 4, (1, 2))]
    merged = {functools.reduce(Report.merge, order) for order in itertools.permutations(parts)}
    assert len(merged) == 1
    [m] = merged
    assert m.layers[0].error == Worst(0.75, 6)  # the larger error; on a tie the smaller index
    assert m.images == 16 and m.layers[0].neurons == 50 and m.layers[0].certificate == (("no weighted sum", 45),)
    assert m.early_inputs == (1, 2, 9)
    nan = _report(float("nan"), 12, 1)
    assert Report.merge(m, nan).layers[0].error.index == 12 == Report.merge(nan, m).layers[0].error.index


def test_report_json_round_trip_and_bad_files():
    r = _report(float("nan"), 4, 3, (4,))
    text = json.dumps(r.to_json(), allow_nan=False)  # strict JSON: NaN is written as a string
    back = Report.from_json(json.loads(text))
    assert back.layers[0].error.index == 4 and np.isnan(back.layers[0].error.value)
    assert back.early_inputs == (4,) and back.readout.name == "out"
    for bad in ({}, {"layers": "x"}, {**r.to_json(), "images": "3"}, {**r.to_json(), "agree": True}):
        with pytest.raises(ValueError, match="not a verification report"):
            Report.from_json(bad)


def test_one_verdict_with_one_tolerance():
    """The verdict behind `ttfs verify`, the explorer's banner and its inspector: rounding passes and is exact; an
    error above TOLERANCE × max(|ANN|, 1) without an early spike passes (clipped inputs are noted, not failed)
    but is not exact; early spikes, NaN and disagreement fail. `parting` names the first layer that leaves."""
    from ttfs_core.verify import TOLERANCE, verdict

    exact = verdict(_report(0.5 * TOLERANCE, 1, 4))
    assert exact.exact and exact.passes and exact.parting is None and exact.failures == ()
    off = verdict(_report(2 * TOLERANCE, 1, 4))
    assert off.passes and not off.exact and off.beyond_rounding == ("a", "out") and off.parting == "a"
    early = Report((_check("a", 0.0, 1), _check("b", 0.0, 1, early=3)), _check("out", 0.0, 1), 4, 4, 4, 4, 4, 1, 0,
                   (), (1,))
    v = verdict(early)
    assert not v.exact and v.early == (("b", 3),) and v.parting == "b" and "3 early spikes in 1 images" in v.failures[0]
    assert verdict(_report(float("nan"), 1, 4)).failures[0].startswith("NaN values in a, out")
    assert early.failures() == list(v.failures)


# --- one batch against compare() ----------------------------------------------------------------------------
def test_a_batch_report_matches_compare(lenet):
    model, card, snn = lenet
    x, y = data.load_dataset("mnist-test", card.preprocess, 64)
    rep = Verifier(model, snn, x).check(x, y, 1000)
    comps = compare(model, snn, x)
    for check, comp in zip(rep.layers, comps):
        per_input = (comp.snn - comp.ann).abs().flatten(1).amax(1)
        assert check.error.value == pytest.approx(float(per_input.max()), abs=0)
        assert check.error.index == 1000 + int(per_input.argmax())
    with torch.no_grad():
        ann = model(x).argmax(1)
    res = snn.run(x)
    assert rep.images == 64 and rep.labelled == 64 and rep.ann_correct == int((ann == y).sum())
    assert rep.agree == int((ann == res.logits.argmax(1)).sum()) and rep.early == res.early_spikes == 0
    assert rep.layers[0].spikes == res.layers[0].spikes and rep.failures() == []


def test_shards_cover_the_data_in_whole_batches(lenet):
    model, card, snn = lenet
    source = data.open_dataset("mnist-test", card.preprocess, 700)
    first, _ = source.batch(0, 1)
    ver = Verifier(model, snn, first)
    seen = []
    whole = check_shard(ver, source.batch, 0, 700, 700, 100)
    shards = [check_shard(ver, source.batch, k, 700, 256, 64, seen.append) for k in range(3)]
    assert sum(seen) == 700 and seen[-1] == 700 - 512 - 2 * 64
    assert functools.reduce(Report.merge, shards) == whole  # other batches, the same report (shards are independent)


# --- several processes, one report --------------------------------------------------------------------------
def _verify(*argv: str, processes: int = 1, timeout: float = 600) -> subprocess.CompletedProcess:
    cli = ["-m", "ttfs_core.cli", "verify", *argv]
    if processes == 1:
        cmd = [sys.executable, *cli]
    else:  # torchrun, as a user launches it (gloo on the CPU)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", *cli]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT)


@pytest.mark.integration
def test_two_processes_give_the_single_process_report(tmp_path):
    args = ["lenet5", "--limit", "2000", "--batch-size", "128", "--shard-size", "256", "-q"]
    one = _verify(*args, "--report", str(tmp_path / "one.json"))
    two = _verify(*args, "--report", str(tmp_path / "two.json"), processes=2)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert a["report"] == b["report"] and a["config"] == b["config"] and a["finished"] and b["finished"]
    assert a["report"]["images"] == 2000 and a["completed"] == list(range(8))
    assert "processes      2 (torch.distributed, device cpu)" in two.stdout and "PASS" in two.stdout
    assert two.stdout.count("PASS") == 1  # only rank 0 prints
    table = [line for line in two.stdout.splitlines() if "worst input" in line]
    assert table and one.stdout.split("speed")[0].split("data")[1] == two.stdout.split("speed")[0].split("data")[
        1].replace("processes      2 (torch.distributed, device cpu)\n", "")


@pytest.mark.integration
def test_a_killed_run_resumes_to_the_same_report(tmp_path):
    args = ["fc", "--shard-size", "256", "--batch-size", "256", "-q"]
    report = tmp_path / "run.json"
    cmd = [sys.executable, "-m", "ttfs_core.cli", "verify", *args, "--report", str(report)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=ROOT)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            try:
                body = json.loads(report.read_text())
                if len(body["completed"]) >= 2:
                    break
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                pass
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # no chance to clean up: the file must still be whole
    finally:
        proc.wait(timeout=60)
    body = json.loads(report.read_text())
    assert not body["finished"] and 2 <= len(body["completed"]) < body["shards"] == 40
    resumed = _verify(*args, "--report", str(report), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed        {report}: {len(body['completed'])} of 40 shards" in resumed.stdout
    assert _verify(*args, "--report", str(tmp_path / "whole.json")).returncode == 0
    a, b = json.loads(report.read_text()), json.loads((tmp_path / "whole.json").read_text())
    assert a["report"] == b["report"] and a["finished"] and a["report"]["images"] == 10_000
    # a report of another run is not resumed
    other = _verify("fc", "--limit", "500", "--shard-size", "256", "--batch-size", "256", "-q", "--report",
                    str(report), "--resume")
    assert other.returncode == 2 and "it records another run (differs in images, limit)" in other.stderr


@pytest.mark.parametrize("argv, needle", [
    (["fc", "--resume"], "--resume needs --report"),
    (["fc", "--shard-size", "100", "--batch-size", "64"], "must be a multiple of --batch-size"),
    (["fc", "--device", "gpu"], "is not a device"),
    (["fc", "--size", "0"], "expected H or HxW"),
    (["fc", "--mean", "0.1,0.2"], "expected 1 or 3 finite numbers"),
    (["fc", "--size", "32"], "cannot change a bundled model's input"),
])
def test_bad_options_are_one_line(argv, needle, capsys):
    code = main(["verify", *argv])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_cuda_asked_for_without_cuda_is_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["verify", "fc", "--limit", "10", "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and "no CUDA device" in err
    with pytest.raises(ttfs_core.ConversionError, match="no CUDA device"):
        ttfs_core.convert(zoo.load("fc")[0], torch.rand(4, 1, 28, 28), device="cuda")


# --- a report file read back on resume is checked, never trusted ---------------------------------------------
RUN = ["--limit", "1000", "--shard-size", "256", "--batch-size", "256", "-q"]


@pytest.fixture(scope="module")
def genuine(tmp_path_factory):
    """A finished report of fc on 1,000 MNIST test images (4 shards), verified against a saved network."""
    folder = tmp_path_factory.mktemp("resume")
    net, report = folder / "fc.safetensors", folder / "run.json"
    assert main(["convert", "fc", "--limit", "256", "-o", str(net)]) == 0
    assert main(["verify", "fc", "--snn", str(net), *RUN, "--report", str(report)]) == 0
    return net, json.loads(report.read_text())


def _set(path: str, value):
    """A forgery: the report file with the field at `path` ("report.layers.0.spikes") set to `value`."""
    def forge(body: dict) -> None:
        *parents, last = path.split(".")
        node = body
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
    return forge


def _resume(net: Path, body: dict, tmp_path: Path, capsys, argv: tuple[str, ...] = ()) -> tuple[int, str, str]:
    """Exit status, stderr and stdout of resuming from `body`."""
    report = tmp_path / "forged.json"
    report.write_text(json.dumps(body))
    code = main(["verify", "fc", "--snn", str(net), *RUN, *argv, "--report", str(report), "--resume"])
    out, err = capsys.readouterr()
    return code, err, out


@pytest.mark.parametrize("forge, needle", [
    (_set("report.agree", 10**30), "report.agree = 1000000000000000000000000000000 is more than report.images (1000)"),
    (_set("report.images", -5), "report.images: -5 is negative"),
    (_set("report.snn_correct", True), "report.snn_correct: expected a whole number, got bool True"),
    (_set("report.clipped", float("nan")), "report.clipped: expected a whole number, got float nan"),
    (_set("report.images", 999), "report.images = 999, but the size of the completed shards is 1000"),
    (_set("completed", [0, 1, 2]), "report.images = 1000, but the size of the completed shards is 768"),
    (_set("report.layers.0.spikes", 10**9), "report.layers[0].spikes = 1000000000 is more than report.layers[0]"),
    (_set("report.layers.0.window", "nan"), "report.layers[0].window = nan, but the network's is"),
    (_set("report.layers.0.error.value", -1.0), "report.layers[0].error.value = -1.0 is negative"),
    (_set("report.readout.largest.index", 5000), "report.readout.largest.index = 5000 is not an input of the comp"),
    (_set("report.disagreements", [7]), "the length of report.disagreements = 1, but the number of inputs it"),
    (_set("config.model_sha256", "0" * 64), "it records another run (differs in model_sha256)"),
    (_set("config.data_sha256", "0" * 64), "it records another run (differs in data_sha256)"),
])
def test_a_forged_report_is_refused_naming_the_field(genuine, tmp_path, capsys, forge, needle):
    net, body = genuine
    body = json.loads(json.dumps(body))
    forge(body)
    code, err, _ = _resume(net, body, tmp_path, capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("ttfs: error: cannot resume from ")


def test_a_report_of_other_settings_or_data_is_refused(genuine, tmp_path, capsys):
    """The digests bind a report to its run: another dataset file, other conversion settings."""
    net, body = genuine
    npz = tmp_path / "data.npz"
    x, y = data.load_uint8("mnist", "test")
    np.savez(npz, x=np.asarray(x[:1000]), y=np.asarray(y[:1000]))
    code, err, _ = _resume(net, body, tmp_path, capsys, ("--data", str(npz)))
    assert code == 2 and "differs in data, data_sha256" in err
    report = tmp_path / "forged.json"  # the same model converted here with another margin
    assert main(["verify", "fc", *RUN, "--margin", "0.3", "--report", str(report), "--resume"]) == 2
    assert "differs in network, settings_sha256)" in capsys.readouterr().err
    settings = json.loads(json.dumps(body))
    settings["config"]["settings_sha256"] = "0" * 64
    code, err, _ = _resume(net, settings, tmp_path, capsys)
    assert code == 2 and "differs in settings_sha256" in err


def test_the_genuine_report_resumes(genuine, tmp_path, capsys):
    net, body = genuine
    code, _, out = _resume(net, body, tmp_path, capsys)
    assert code == 0 and "PASS" in out and "agreement      100.00 % (1000/1000" in out


# --- streamed .npz datasets ----------------------------------------------------------------------------------
@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("layout", ["nhw", "nhwc", "nchw", "float"])
def test_npz_streams_the_rows_asked_for(tmp_path, compressed, layout):
    images, labels = data.load_uint8("mnist", "test")
    images, labels = np.asarray(images[:300]), np.asarray(labels[:300])
    pre = data.MNIST_PREPROCESS
    expected = pre.batch_from_uint8(images)
    x = {"nhw": images, "nhwc": images[..., None], "nchw": images[:, None],
         "float": expected.numpy().astype(np.float64)}[layout]
    path = tmp_path / "set.npz"
    (np.savez_compressed if compressed else np.savez)(path, x=x, y=labels)
    src = data.open_dataset(str(path), pre)
    assert isinstance(src, NpzSource) and len(src) == 300 and src.labelled
    for lo, hi in ((0, 64), (64, 200), (10, 20), (250, 300)):  # forward, then backward in the stream
        xb, yb = src.batch(lo, hi)
        assert torch.equal(xb.to(expected.dtype), expected[lo:hi]) and yb.tolist() == labels[lo:hi].tolist()
    limited = data.open_dataset(str(path), pre, 50)
    assert len(limited) == 50 and limited.batch(40, 64)[0].shape[0] == 10


def test_a_model_file_on_an_rgb_npz_with_flags(tmp_path, capsys):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(8 * 16 * 16, 10)).eval()
    batch = {0: torch.export.Dim("batch")}
    torch.export.save(torch.export.export(model, (torch.rand(2, 3, 32, 32),), dynamic_shapes=(batch,)),
                      tmp_path / "rgb.pt2")
    rgb = np.random.default_rng(0).integers(0, 256, (200, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", x=rgb, y=np.arange(200) % 10)
    flags = ["--size", "32", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]
    code = main(["verify", str(tmp_path / "rgb.pt2"), "--data", str(tmp_path / "rgb.npz"), "--calib",
                 str(tmp_path / "rgb.npz"), "--float64", "-q", *flags])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "given as 3×32×32" in out and "200 images, labelled" in out and out.strip().endswith("PASS")
    # without the flags the file is taken for MNIST, and its first convolution refuses 1 channel
    code = main(["verify", str(tmp_path / "rgb.pt2"), "--data", str(tmp_path / "rgb.npz")])
    err = capsys.readouterr().err
    assert code == 2 and "--size, --channels" in err


@pytest.mark.parametrize("arrays, needle", [
    ({"y": np.zeros(3, dtype=np.int64)}, "has no array 'x'"),
    ({"x": np.array([object()] * 3, dtype=object)}, "holds Python objects"),
    ({"x": np.zeros((3, 5), dtype=np.uint8)}, "supported: uint8 images"),
    ({"x": np.zeros((3, 1, 20, 20), dtype=np.float32)}, "float x is taken as preprocessed model inputs"),
    ({"x": np.zeros((3, 28, 28), dtype=np.uint8), "y": np.zeros(4, dtype=np.int64)}, "x has 3 items but y 4"),
    ({"x": np.zeros((3, 28, 28), dtype=np.uint8), "y": np.zeros(3, dtype=np.float32)}, "y must be integer labels"),
    ({"x": np.asfortranarray(np.zeros((3, 28, 28), dtype=np.uint8))}, "Fortran order"),
])
def test_bad_npz_files_are_named(tmp_path, arrays, needle):
    path = tmp_path / "bad.npz"
    np.savez(path, allow_pickle=True, **arrays) if any(a.dtype == object for a in arrays.values()) else np.savez(
        path, **arrays)
    with pytest.raises(ValueError, match=needle):
        data.open_dataset(str(path), data.MNIST_PREPROCESS)


def test_truncated_and_non_zip_npz_files(tmp_path):
    path = tmp_path / "t.npz"
    np.savez(path, x=np.zeros((100, 28, 28), dtype=np.uint8))
    raw = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "text.npz").write_text("not a zip")
    for name in ("cut.npz", "text.npz"):
        with pytest.raises(ValueError, match="not a readable .npz file"):
            data.open_dataset(str(tmp_path / name), data.MNIST_PREPROCESS)


# --- device= ----------------------------------------------------------------------------------------------------
# No GPU in CI: with the default device set to "meta", every tensor created without an explicit device= lands on
# meta and the first operation mixing it with the CPU network fails. So a run that passes under it would place
# every tensor it creates on the network's device, CUDA included.
def _strictly(fn):
    @functools.wraps(fn)
    def inner(*a, **k):
        torch.set_default_device("meta")
        try:
            return fn(*a, **k)
        finally:
            torch.set_default_device("cpu")

    return inner


@pytest.mark.parametrize("name", ["lenet5", "resnet_mnist", "vgg_fashion"])
def test_simulators_and_calibration_create_tensors_on_the_networks_device(name, monkeypatch):
    model, card = zoo.load(name)
    imgs, _ = data.load_uint8(card.dataset, "train")
    calib = card.preprocess.batch_from_uint8(np.asarray(imgs[:128]))
    x, _ = data.load_dataset(f"{card.dataset}-test", card.preprocess, 16)
    ref = ttfs_core.convert(model, calib, input_range=card.input_range)
    exact, stepped = ref.run(x), ref.run_stepped(x, steps=16)
    conv = importlib.import_module("ttfs_core.passes")
    for step in ("calibrate", "place_in_time", "parameterise", "check_finite"):  # the device part of the conversion
        monkeypatch.setattr(conv, step, _strictly(getattr(conv, step)))
    snn = ttfs_core.convert(model, calib, input_range=card.input_range, device="cpu")
    monkeypatch.undo()
    assert snn.summary() == ref.summary()
    a, b = _strictly(snn.run)(x), _strictly(snn.run_stepped)(x, steps=16)
    assert torch.equal(a.logits, exact.logits) and torch.equal(b.logits, stepped.logits)
    assert all(torch.equal(p.offsets, q.offsets) for p, q in zip(a.layers, exact.layers))


def test_to_moves_every_tensor_and_keeps_the_original(lenet):
    import copy

    from ttfs_core.network import _tensors_in

    _, card, snn = lenet
    moved = snn.to("meta")
    assert {t.device.type for t in _tensors_in(moved)} == {"meta"} and moved.device.type == "meta"
    assert {t.device.type for t in _tensors_in(snn)} == {"cpu"} and snn.to("cpu") is snn
    shared = copy.deepcopy(snn)
    assert shared._on("meta") is shared._on("meta")  # one copy per device, kept
    assert "_copies" not in copy.deepcopy(shared).__dict__  # a copy of the network does not copy its copies
    x, _ = data.load_dataset("mnist-test", card.preprocess, 8)
    assert torch.equal(snn.run(x, device="cpu").logits, snn.run(x).logits)
