"""Helpers shared by the test modules (fixtures shared by several modules are in conftest.py).

- Pages: the explorer's page paths, `run_page` / `ok` under Streamlit's AppTest, the figures a page drew.
- Command line: `run_cli` and `assert_one_line_error`.
- The seeded nets of tests/nets.py converted once (`converted`) and the exactness check of the branchy nets.
- The hostile model files that every loader must refuse (`MODEL_FILE_ATTACKS`) and the error class of a message.
- Measuring in a child process: the peak memory and CPU time of one call (`in_child`), or of each of several calls
  that share a process, e.g. the sandbox's helper (`ChildWorker`).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import io
import json
import os
import pickle
import re
import resource
import select
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from streamlit.testing.v1 import AppTest

import ttfs_core
from ttfs_core import data, zoo
from ttfs_core.cli import main as cli_main

from . import nets

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
RASTER = str(ROOT / "pages" / "1_Spike_raster.py")
TRACES = str(ROOT / "pages" / "2_Membrane_traces.py")
COMPARE = str(ROOT / "pages" / "3_ANN_vs_SNN.py")
ROBUSTNESS = str(ROOT / "pages" / "4_Robustness.py")
TIMEOUT = 120  # seconds an AppTest run may take


# --- pages under AppTest ----------------------------------------------------------------------------------------
def run_page(path: str, **session) -> AppTest:
    """The page at `path` run once in a fresh session with `session` set first; fails on an exception."""
    at = AppTest.from_file(path, default_timeout=TIMEOUT)
    for key, value in session.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.message for e in at.exception]
    return at


def upload_script():
    """A page that hands the bytes in the session (test_kind, test_bytes, test_name, test_arch) to the explorer's
    model upload, as the upload widget does (AppTest.from_function runs this function's source as the page)."""
    import streamlit as st

    from ttfs_ui import controls, state

    state.init()
    kind = st.session_state["test_kind"]
    error = controls.receive_model_upload(st.session_state["test_bytes"], st.session_state["test_name"],
                                          st.session_state.get("test_arch"))
    st.text(f"{kind}: {error}")
    if error:
        st.error(error)


def first_early_layer(margin: float):
    """The default model converted as the app does (its first 512 training images) at `margin`, on test image #0:
    the first layer with early spikes (its LayerResult) and the flat index of its earliest spike."""
    model, card = zoo.load(zoo.DEFAULT_MODEL)
    imgs, _ = data.load_uint8(card.dataset, "train")
    snn = ttfs_core.convert(model, card.preprocess.batch_from_uint8(np.asarray(imgs[:512])), margin=margin,
                            input_range=card.input_range)
    test, _ = data.load_uint8(card.dataset, "test")
    res = snn.run(card.preprocess.batch_from_uint8(np.asarray(test[:1])))
    first = next(lr for lr in res.layers if lr.early_spikes)
    return first, int(first.offsets[0].flatten().argmin())


def _decode(v):
    """Plotly's JSON: typed arrays arrive as {"dtype", "bdata" (base64), "shape"}."""
    if isinstance(v, dict) and "bdata" in v and "dtype" in v:
        arr = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        if "shape" in v:
            arr = arr.reshape([int(s) for s in str(v["shape"]).split(",")])
        return arr
    if isinstance(v, dict):
        return {k: _decode(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_decode(x) for x in v]
    return v


def charts(at: AppTest) -> dict[str, dict]:
    """Plotly figures on the page by widget key (element ids end with "-<key>")."""
    return {el.proto.id.rsplit("-", 1)[-1]: _decode(json.loads(el.proto.spec)) for el in at.get("plotly_chart")}


def live_spec(at: AppTest) -> dict:
    """The spec the raster page's browser component received (`ttfs_ui.live.spec`), typed arrays decoded."""
    [el] = [e for e in at.get("component_instance") if e.proto.component_name.endswith("live.timeline")]
    spec = json.loads(json.loads(el.proto.json_args)["spec"])
    for panel in spec["panels"]:
        for key in ("cells", "kfire", "act", "xpos"):
            panel[key] = np.frombuffer(base64.b64decode(panel[key]["bdata"]), dtype=np.dtype(panel[key]["dtype"]))
    return {**spec, "raster": _decode(spec["raster"]), "maps": _decode(spec["maps"])}


# --- the command line ---------------------------------------------------------------------------------------------
def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """`ttfs ARGV` in this process: exit status, stdout, stderr."""
    code = cli_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ttfs") and "error:" in lines[0], err
    assert "Traceback" not in err


# --- the seeded nets, converted ----------------------------------------------------------------------------------
@functools.cache
def _converted(name: str, dtype: torch.dtype, options: tuple) -> tuple:
    model = nets.build(name, dtype=dtype)
    x = nets.inputs(name, 160, dtype=dtype)
    return model, ttfs_core.convert(model, x[:128], **dict(options)), x[128:]


def converted(name: str, dtype=torch.float64, **kw):
    """(model, network, held-out inputs) of the seeded net `name` converted on its first 128 inputs with `kw`.
    Converted once per process; each call gets its own deep copy, so a test may change (or freeze) what it gets."""
    kw.setdefault("input_range", (-2.0, 3.0))
    return copy.deepcopy(_converted(name, dtype, tuple(sorted(kw.items()))))


TOL = 1e-9


def check_exact(model: torch.nn.Module, snn, x: torch.Tensor, tol: float = TOL, layer_tol: float = TOL):
    """Logits equal model(x), every layer's decoded activation equals the model's, one spike per α-neuron."""
    res = snn.run(x)
    with torch.no_grad():
        ref = model(x)
    scale = float(ref.abs().max())
    assert float((res.logits - ref).abs().max()) <= tol * scale
    for layer in ttfs_core.compare(model, snn, x, res):
        assert layer.max_abs_error <= layer_tol * max(float(layer.ann.abs().max()), 1.0), layer.name
    assert res.early_spikes == 0
    if snn.neuron.name == "alpha":
        assert res.spikes == res.neurons
    return res


# --- hostile files -----------------------------------------------------------------------------------------------
MODEL_FILE_ATTACKS = [
    "torchscript_setstate_in_data_package", "torchscript_deep_brackets", "torchscript_deep_pickle",
    "torchscript_deep_tuple_pickle", "pt2_power_tower", "pt2_factorial", "fifo", "pt2_zip_bomb",
    "torchscript_zip_bomb", "sparse_8gb", "pt2_stride0_weight", "pt2_empty_weight_member",
    "safetensors_huge_classifier", "legacy_pickle_huge_storage", "safetensors_duplicate_names",
    "safetensors_int_weight", "safetensors_bool_weight", "safetensors_complex_weight", "torchsave_complex_weight",
    "pt2_reshape_alias_crash", "pt2_reshape_alias_leak", "pt2_sparse_unsafe", "pt2_factory", "pt2_matmul",
    "pt2_conv_padding", "pt2_bool_as_int", "torchscript_constant_folding",
]  # fmt: skip
"""The hostile model files of tests/attacks.py (`attacks.build_all`) that every way of loading a model refuses."""


def error_class(message: str) -> str:
    """The kind of check a loader message reports, without where or what: the message less its field path, less
    what was found (", got …") and with every literal (number, quoted string, list, parenthesised hint) blanked.
    "layers[0].inputs[0].conv.stride: expected two integers ≥ 1, got [0, 1]" and
    "output.readout[0].params.kernel_size: expected two integers ≥ 1, got [0, 2]" are both "expected two integers
    ≥ #": one check, written once in the validator, so one file of each class is enough to test what the command
    line does with the message."""
    if ": " in message and not message.startswith("tensor "):
        message = message.split(": ", 1)[1]
    message = re.sub(r'^tensor "[^"]*"', 'tensor "…"', message)
    message = message.split(", got")[0].split(" got ")[0]
    message = re.sub(r'"[^"]*"', '"…"', message)
    for _ in range(2):  # lists in lists
        message = re.sub(r"\[[^\[\]]*\]", "[…]", message)
    message = re.sub(r"-?\d+(\.\d+)?(e-?\d+)?", "#", message)
    return re.sub(r"\([^()]*\)", "(…)", message)


# --- measuring in a child process --------------------------------------------------------------------------------
def _peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _measured(fn: Callable[..., Any], args: tuple) -> tuple[tuple[str, Any], float, float]:
    """(("ok", result) or ("raised", "Type: message"), MiB the peak memory grew by, CPU seconds) of fn(*args)."""
    peak, cpu = _peak_kib(), _cpu_seconds()
    try:
        outcome: tuple[str, Any] = ("ok", fn(*args))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which fails the test
        outcome = ("raised", f"{type(e).__name__}: {e}")
    return outcome, (_peak_kib() - peak) / 1024, _cpu_seconds() - cpu


def _read_all(fd: int, pid: int, wall_seconds: float) -> bytes:
    deadline = time.monotonic() + wall_seconds
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"the child process gave no answer within {wall_seconds:.0f} s (it hangs)")
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def in_child(fn: Callable[..., Any], *args: Any, wall_seconds: float = 300.0) -> tuple[Any, float, float]:
    """Call fn(*args) in a forked child process: (its result, MiB by which the child's peak memory grew during the
    call, the call's CPU seconds). Fails if fn raised, the child died, or gave no answer in `wall_seconds` (a hang;
    generous, as the machine may be loaded: bound the CPU seconds instead).

    Why a child: ru_maxrss is a process's lifetime peak. In this process it is whatever the largest earlier test
    reached (GiB after the torchvision families), so a later allocation up to that level would go unseen. A forked
    child's peak starts at the parent's *current* resident size, and only this call runs in it. fn's result must
    pickle; fn should catch the exceptions it expects and return what the test checks."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(read_fd)
            torch.set_num_threads(1)  # the parent's thread pool is not in the child
            payload = pickle.dumps(_measured(fn, args))
            with os.fdopen(write_fd, "wb") as out:
                out.write(payload)
        except BaseException:  # noqa: BLE001
            code = 70
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        raw = _read_all(read_fd, pid, wall_seconds)
    finally:
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    assert raw, f"the child process died without an answer (wait status {status})"
    (kind, value), grown_mib, cpu = pickle.loads(raw)
    assert kind == "ok", f"in the child: {value}"
    return value, grown_mib, cpu


def reset_peak() -> bool:
    """Reset this process's peak resident size to its current size (Linux's /proc/self/clear_refs, writable by
    the process's owner; root only once the process is non-dumpable, as the sandbox makes its callers)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cli_call(argv: list[str]) -> tuple[int, str, str]:
    """`ttfs ARGV` with stdout and stderr captured (for a child process, where pytest's capsys is not)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(argv)
    return code, out.getvalue(), err.getvalue()


def _serve(requests: int, answers: int) -> None:
    torch.set_num_threads(1)
    with os.fdopen(requests, "rb") as inbox, os.fdopen(answers, "wb") as outbox:
        while True:
            try:
                fn, args = pickle.load(inbox)
            except EOFError:
                return
            reset = reset_peak()
            outcome, grown, cpu = _measured(fn, args)
            blob = pickle.dumps((outcome, grown, cpu, reset))
            outbox.write(len(blob).to_bytes(8, "big") + blob)
            outbox.flush()


class ChildWorker:
    """A forked child that runs calls one at a time and keeps its state between them: the sandbox's helper
    process (2–8 s to start) is started once, not per call. Each call's peak memory is measured from the child's
    resident size when the call starts (the peak is reset first where Linux allows it; otherwise it is the growth
    of the child's own peak, which only these calls have raised)."""

    def __init__(self, wall_seconds: float = 300.0) -> None:
        self.wall_seconds = wall_seconds
        to_child, requests = os.pipe()
        answers, from_child = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            code = 0
            try:
                os.close(requests)
                os.close(answers)
                _serve(to_child, from_child)
            except BaseException:  # noqa: BLE001
                code = 70
            finally:
                os._exit(code)
        os.close(to_child)
        os.close(from_child)
        self._requests = os.fdopen(requests, "wb")
        self._answers = answers

    def call(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
        """Like `in_child`: (fn's result, MiB the peak memory grew by, CPU seconds of the call)."""
        self._requests.write(pickle.dumps((fn, args)))
        self._requests.flush()
        head = self._exactly(8)
        (kind, value), grown_mib, cpu, _ = pickle.loads(self._exactly(int.from_bytes(head, "big")))
        assert kind == "ok", f"in the child: {value}"
        return value, grown_mib, cpu

    def _exactly(self, n: int) -> bytes:
        deadline = time.monotonic() + self.wall_seconds
        got = b""
        while len(got) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._answers], [], [], left)[0]:
                self.close()
                raise AssertionError(f"the child process gave no answer within {self.wall_seconds:.0f} s")
            chunk = os.read(self._answers, n - len(got))
            if not chunk:
                self.close()
                raise AssertionError("the child process died")
            got += chunk
        return got

    def close(self) -> None:
        if not self.pid:
            return
        pid, self.pid = self.pid, 0
        with contextlib.suppress(OSError):
            self._requests.close()  # end of requests: the child returns and exits
        with contextlib.suppress(OSError):
            os.close(self._answers)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
