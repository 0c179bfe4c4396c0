"""ttfs_core.untrusted.sandbox and the hostile model files: each is one clear ModelLoadError, quickly, with nothing
written, the test process alive and no temporary files left behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.fx as fx

from tests import attacks
from tests.helpers import MODEL_FILE_ATTACKS as ATTACKS
from ttfs_core.untrusted import ModelLoadError, export, handover, load_model, loader, sandbox, tensors
from ttfs_core.untrusted.tensors import write_safetensors

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Temporary files of this process go to a folder of the test's own, to be checked for leftovers."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _assert_alive() -> None:
    assert torch.ones(3).sum().item() == 3.0  # this process still computes


def _refused(path: Path, arch: str | None = None, **kwargs: object) -> str:
    """load_model's one-line ModelLoadError message for a file (how fast: the `timing` test below)."""
    with pytest.raises(ModelLoadError) as e:
        load_model(path, arch, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) <= 500
    return msg


@pytest.mark.parametrize("name", ATTACKS)
def test_hostile_file_is_one_clear_error(hostile: dict[str, attacks.Attack], private_tmp: Path, name: str) -> None:
    attack = hostile[name]
    next_to_it = sorted(attack.path.parent.iterdir())
    msg = _refused(attack.path, attack.arch)
    assert re.search(attack.expected, msg), msg
    assert attack.marker is None or not attack.marker.exists()
    assert sorted(attack.path.parent.iterdir()) == next_to_it  # nothing written next to the file either
    _assert_alive()
    assert not list(private_tmp.iterdir())  # no temporary copies or working folders left


def test_attack_files_are_small(hostile: dict[str, attacks.Attack]) -> None:
    assert sorted(hostile) == sorted(ATTACKS)
    for a in hostile.values():
        if a.name not in ("fifo", "sparse_8gb"):
            assert a.path.stat().st_size < 4 << 20, a.name
    assert hostile["sparse_8gb"].path.stat().st_blocks * 512 < 1 << 20  # sparse: nothing stored
    assert hostile["safetensors_huge_classifier"].path.stat().st_size < 100


@pytest.mark.timing
def test_every_hostile_file_is_refused_within_30_seconds(hostile: dict[str, attacks.Attack]) -> None:
    """Wall-clock (the parsing happens in the sandbox's child, out of this process's CPU time), so out of the
    default run: on a loaded machine the bound is generous, and the child's own limits bound its CPU time."""
    for name in ATTACKS:
        attack = hostile[name]
        start = time.monotonic()
        with pytest.raises(ModelLoadError):
            load_model(attack.path, attack.arch)
        assert time.monotonic() - start < 30, name


# --- the sandbox itself ----------------------------------------------------------------------------------------


@pytest.fixture
def mlp_file(tmp_path: Path) -> Path:
    path = tmp_path / "m.pt2"
    x = torch.zeros(2, 1, 4, 4)
    torch.export.save(torch.export.export(attacks.tiny_mlp(), (x,)), path)
    return path


@pytest.mark.parametrize(("hook", "expected"), [
    ("segfault", r"the sandboxed parser crashed \(killed by signal SIGSEGV\)"),
    ("allocate", r"the sandboxed parser needs more than 3 GiB of memory"),
])  # fmt: skip
def test_child_crash_and_memory_are_clear_errors(
    mlp_file: Path, private_tmp: Path, monkeypatch: pytest.MonkeyPatch, hook: str, expected: str
) -> None:
    msg = _refused(mlp_file, hook=hook)
    assert re.search(expected, msg), msg
    _assert_alive()
    assert not list(private_tmp.iterdir())
    assert isinstance(load_model(mlp_file), fx.GraphModule)  # the next load works


@pytest.mark.parametrize(("hook", "limits", "expected"), [
    ("sleep", sandbox.Limits(wall_seconds=1.5), r"took longer than 1\.5 s \(wall-clock limit\)"),
    ("spin", sandbox.Limits(cpu_seconds=1), r"used more than 1 s of CPU time"),
])  # fmt: skip
def test_child_timeouts_are_clear_errors(
    mlp_file: Path, private_tmp: Path, monkeypatch: pytest.MonkeyPatch, hook: str, limits: sandbox.Limits,
    expected: str,
) -> None:  # fmt: skip
    msg = _refused(mlp_file, hook=hook, limits=limits)
    assert re.search(expected, msg), msg
    _assert_alive()
    assert not list(private_tmp.iterdir())


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_caller_killed_mid_request_leaves_nothing_behind(mlp_file: Path, tmp_path: Path) -> None:
    """The zygote notices that its caller died, kills the child and removes the working folder."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    script = (
        f"import tempfile; tempfile.tempdir = {str(folder)!r}\n"
        "from ttfs_core.untrusted import load_model\n"
        f"load_model({str(mlp_file)!r}, hook='sleep')\n"
    )
    caller = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parent.parent)
    try:
        deadline = time.monotonic() + 60
        while not list(folder.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        zygotes = _children(caller.pid)
        assert list(folder.iterdir()) and len(zygotes) == 1, "the request never started"
        while not (child := _children(zygotes[0])) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(child) == 1, "the zygote never forked the child"
    finally:
        caller.kill()
        caller.wait()
    deadline = time.monotonic() + 20
    alive = [*zygotes, *child]
    while (alive or list(folder.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if Path(f"/proc/{p}").exists() and "Z" not in _state(p)]
    assert not alive and not list(folder.iterdir())


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_child_cannot_write_connect_or_spawn(tmp_path: Path) -> None:
    marker = tmp_path / "probe"
    report = json.loads(sandbox.run("ttfs_core.untrusted.zygote:_probe", {"path": str(marker)}))
    assert report["fsize"] == 0 and report["cwd_empty"]
    if sandbox.seccomp_status() == "active":
        assert report["write"] == "EPERM" and not marker.exists()
        assert report["socket"] == report["spawn"] == report["kill_parent"] == report["raise_limit"] == "EPERM"
    else:  # resource limits only: a file can be created but nothing written into it
        assert report["write"] == "EFBIG"


# --- what a child can reach of the server --------------------------------------------------------------------------

SECRET = "hunter2-very-secret"
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc are Linux-only")


@pytest.fixture(scope="module")
def secret_env() -> Iterator[str]:
    """A secret in this process's environment while the zygotes start (they are pooled: fresh ones are started)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TTFS_TEST_SECRET", SECRET)
        sandbox.shutdown()
        yield SECRET
        sandbox.shutdown()  # before the variable goes: later zygotes start from the ordinary environment


@pytest.fixture(scope="module")
def server_probe(secret_env: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    """The probe's report on this process (the "server"), parsed and as raw text."""
    path = tmp_path_factory.mktemp("probe") / "marker"
    raw = sandbox.run("ttfs_core.untrusted.zygote:_probe", {"path": str(path), "server_pid": os.getpid()}).decode()
    return json.loads(raw), raw


@linux_only
def test_child_cannot_read_the_servers_memory_or_environment(server_probe: tuple[dict, str]) -> None:
    report, _ = server_probe
    for what in ("server_mem", "server_environ", "zygote_mem"):
        assert report[what] in ("EACCES", "EPERM"), (what, report[what])
    status = report["status"]
    assert status["CapEff"] == status["CapPrm"] == status["CapBnd"] == status["CapAmb"] == "0" * 16
    assert status["NoNewPrivs"] == "1"


@linux_only
def test_child_cannot_signal_the_server(server_probe: tuple[dict, str]) -> None:
    report, _ = server_probe
    if sandbox.seccomp_status() != "active":
        pytest.skip("signals to processes of the same user are refused by the seccomp filter only")
    probes = ("kill_server", "kill_group", "kill_parent", "pidfd_open_server", "pidfd_signal_server")
    assert {p: report[p] for p in probes} == dict.fromkeys(probes, "EPERM")


@linux_only
def test_child_environment_is_scrubbed(server_probe: tuple[dict, str]) -> None:
    report, raw = server_probe
    assert SECRET not in raw and "TTFS_TEST_SECRET" not in raw
    block = {entry.split("=", 1)[0] for entry in report["proc_environ"].split("\0") if entry}
    allowed = {"PATH", "HOME", "LANG", "LC_ALL", *sandbox._THREAD_ENV}
    assert {k for k in block if not k.startswith("TTFS_SANDBOX_")} <= allowed


def test_refusal_quoting_the_servers_environment_is_not_shown(secret_env: str) -> None:
    def refusal(message: str) -> str:
        with pytest.raises(sandbox.SandboxError) as e:
            sandbox.run("ttfs_core.untrusted.zygote:_probe", {"raise": message})
        assert e.value.kind == "refused"
        return e.value.message

    assert refusal(f"unsupported operator; key={secret_env[3:14]}") == sandbox.HIDDEN_MESSAGE
    ordinary = "unsupported operator 'aten.foo' at node [3]: 2 \u00d7 3 \u2264 4 (see --help)"
    assert refusal(ordinary) == ordinary


ENV = {"TOKEN": "hunter2-very-secret", "SHORT_KEY": "abc", "PWD": "/srv/ttfs_core.zoo"}


@pytest.mark.parametrize(("message", "shown"), [
    ("model file is empty: m.pt2", True),
    ("weight 'fc.weight' has shape [10, 4], expected [10, 5] (\u2212 1 \u2026)", True),
    ("two\nlines\tand  spaces", True),  # whitespace is collapsed, not refused
    ("x" * 500, True), ("x" * 501, False),
    ("colour \x1b[31m", False), ("json {\"a\": 1}", False), ("back`tick`", False), ("at@sign", False),
    ("\u00e9t\u00e9", False),  # letters outside ASCII: a covert alphabet
    ("leaks hunter2-v", False), ("leaks -very-se", False), ("hunter2 -very-s ecret", True),  # 8 characters
    ("abc abc abc", True),  # short values cannot be told from ordinary words
    ("arch=<torchvision or ttfs_core.zoo name>", True),  # only variables named as secrets are compared
])  # fmt: skip
def test_shown_refusal(message: str, shown: bool) -> None:
    expected = " ".join(message.split()) if shown else sandbox.HIDDEN_MESSAGE
    assert sandbox._shown_refusal(message, ENV) == expected


@pytest.mark.parametrize("error", [
    {"kind": "memory", "message": SECRET}, {"kind": "internal", "message": SECRET}, {"kind": SECRET, "message": ""},
    {"kind": "refused", "message": [SECRET]}, {"kind": "refused"}, "not an object",
    {"kind": "refused", "message": "fine", "padding": "x" * (1 << 17)},
])  # fmt: skip
def test_other_failures_carry_no_text_of_the_child(error: object) -> None:
    status = {"exit": 0, "signal": None, "timeout": False, "too_large": False, "cpu": 0.0}
    with pytest.raises(sandbox.SandboxError) as e:
        sandbox._outcome(status, b"E" + json.dumps(error).encode(), sandbox.DEFAULT_LIMITS)
    assert e.value.kind in ("memory", "internal") and SECRET not in e.value.message and "fine" not in e.value.message


def test_requests_beyond_the_cap_are_told_the_server_is_busy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """One slot is held by a real request that sleeps, the others by this test: the next request is refused."""
    monkeypatch.setattr(sandbox, "BUSY_WAIT_SECONDS", 0.2)
    running = threading.Event()
    real_acquire = sandbox._acquire

    def acquire() -> sandbox._Zygote:  # called with the slot held
        running.set()
        return real_acquire()

    monkeypatch.setattr(sandbox, "_acquire", acquire)
    kinds: list[str] = []

    def sleeper() -> None:
        try:
            sandbox.run("ttfs_core.untrusted.zygote:_probe", {}, sandbox.Limits(wall_seconds=1.0), hook="sleep")
        except sandbox.SandboxError as e:
            kinds.append(e.kind)

    held = [sandbox._SLOTS.acquire(timeout=30) for _ in range(sandbox.MAX_CONCURRENT - 1)]
    thread = threading.Thread(target=sleeper)
    try:
        assert all(held)
        thread.start()
        assert running.wait(30)
        with pytest.raises(sandbox.SandboxError) as e:
            sandbox.run("ttfs_core.untrusted.zygote:_probe", {})
        assert e.value.kind == "busy" and e.value.message == sandbox.BUSY_MESSAGE
        sandbox.prewarm()  # no slot: starts nothing
    finally:
        thread.join(60)
        for _ in held:
            sandbox._SLOTS.release()
    assert kinds == ["timeout"]
    probe = sandbox.run("ttfs_core.untrusted.zygote:_probe", {"path": str(tmp_path / "marker")})
    assert json.loads(probe)["cwd_empty"]  # the slots are free again


@pytest.mark.integration
def test_without_seccomp_the_limits_and_checks_still_hold(
    hostile: dict[str, attacks.Attack], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback when pyseccomp/libseccomp are missing: resource limits and the loader's own checks."""
    monkeypatch.setenv("TTFS_SANDBOX_SECCOMP", "0")
    sandbox.shutdown()  # new zygotes see the variable
    try:
        assert sandbox.seccomp_status().startswith("disabled")
        report = json.loads(sandbox.run("ttfs_core.untrusted.zygote:_probe", {"path": str(tmp_path / "probe")}))
        assert report["write"] == "EFBIG" and (tmp_path / "probe").stat().st_size == 0
        attack = hostile["torchscript_setstate_in_data_package"]
        assert "__setstate__" in _refused(attack.path)
        assert attack.marker is not None and not attack.marker.exists()
    finally:
        monkeypatch.delenv("TTFS_SANDBOX_SECCOMP")
        sandbox.shutdown()


def test_zygote_stays_single_threaded_after_warming_up() -> None:
    zygote = sandbox._acquire()
    try:
        assert zygote.info["threads"] == 1  # forking a multi-threaded process is unsafe
    finally:
        sandbox._release(zygote, True)


@pytest.mark.integration
def test_prewarm_fills_the_idle_pool() -> None:
    sandbox.shutdown()
    sandbox.prewarm()
    deadline = time.monotonic() + 60
    while not sandbox._POOL and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox._POOL and sandbox._POOL[0].usable()


def test_sandbox_targets_are_ttfs_functions() -> None:
    with pytest.raises(ValueError, match="ttfs_core functions"):
        sandbox.run("os:system", {})


def test_function_errors_come_back_as_refusals() -> None:
    with pytest.raises(sandbox.SandboxError) as e:
        sandbox.run("ttfs_core.untrusted.loader:sandbox_parse", {"path": "/nonexistent/model.pt"})
    assert e.value.kind == "refused" and "model file not found" in e.value.message


def test_sandboxed_and_in_process_loading_agree(mlp_file: Path) -> None:
    """Same results, and the same input check (exported with a static batch of 2, which the rebuild frees)."""
    direct = loader._load_in_process(mlp_file)
    sandboxed = load_model(mlp_file)
    assert isinstance(sandboxed, fx.GraphModule)
    with torch.no_grad():
        x = torch.randn(2, 1, 4, 4)
        assert torch.equal(direct(x), sandboxed(x))
        for model in (direct, sandboxed):
            assert model(torch.randn(3, 1, 4, 4)).shape[0] == 3
            with pytest.raises(Exception, match=r"takes inputs of shape \(N, 1, 4, 4\), got \(3, 2, 4, 4\)"):
                model(torch.randn(3, 2, 4, 4))


# --- the caller rebuilds from plain data only --------------------------------------------------------------------


def _payload(desc: dict, tensors: dict[str, torch.Tensor] | None = None) -> bytes:
    head = json.dumps({**desc, "format": 1}).encode()
    return len(head).to_bytes(8, "little") + head + write_safetensors(tensors or {})


def _graph(nodes: list[dict], tensors: dict | None = None) -> dict:
    return {"kind": "graph", "class_name": "GraphModule", "tensors": tensors or {}, "nodes": nodes}


OUT = {"op": "output", "args": {"node": 0}}


@pytest.mark.parametrize(("desc", "expected"), [
    (_graph([{"op": "placeholder", "target": "x"}, {"op": "call_function", "target": "builtins.eval",
              "args": ["1"], "kwargs": {}}, OUT]), "which is not supported"),
    (_graph([{"op": "placeholder", "target": "x"}, {"op": "call_function", "target": "aten.save.default",
              "args": [], "kwargs": {}}, OUT]), "which is not supported"),
    (_graph([{"op": "placeholder", "target": "x"}, {"op": "call_module", "target": "os"}, OUT]), "not supported"),
    (_graph([{"op": "get_attr", "target": "__class__"}, OUT]), "get_attr of an unknown tensor"),
    (_graph([{"op": "placeholder", "target": "x"}, OUT, OUT]), "output node must come last"),
    (_graph([{"op": "placeholder", "target": "x"}, {"op": "output", "args": {"node": 7}}]), "unsupported argument"),
    (_graph([{"op": "placeholder", "target": "x"}, {"op": "output", "args": {"eval": "1"}}]), "unsupported argument"),
    ({"kind": "pickle"}, "unknown kind"),
])  # fmt: skip
def test_hostile_descriptions_are_refused(desc: dict, expected: str) -> None:
    with pytest.raises(ModelLoadError, match=expected):
        handover.rebuild(_payload(desc), None, None)


def test_hostile_names_never_reach_generated_code() -> None:
    weight = torch.ones(2)
    nodes = [
        {"op": "placeholder", "target": "x):\n    import os  #", "name": "x"},
        {"op": "get_attr", "target": "w", "name": "w\nimport os"},
        {"op": "call_function", "target": "aten.mul.Tensor", "args": [{"node": 0}, {"node": 1}], "kwargs": {},
         "name": "__import__('os')", "module": ["a\nb", "C"]},
        {"op": "output", "args": {"node": 2}},
    ]  # fmt: skip
    gm = handover.rebuild(_payload(_graph(nodes, {"w": {"parameter": True}}), {"w": weight}), None, None)
    assert "import" not in gm.code and "\nb" not in str([n.meta for n in gm.graph.nodes])
    assert gm.code.lstrip().startswith("def forward(self, x0):")
    assert torch.equal(gm(torch.full((2,), 3.0)), torch.full((2,), 3.0))
    for name in ("torch", "self", "print", "lambda"):
        desc = _graph([{"op": "placeholder", "target": name}, {"op": "output", "args": {"node": 0}}])
        assert handover.rebuild(_payload(desc), None, None).code.lstrip().startswith("def forward(self, x0):")
    two = _graph([{"op": "placeholder", "target": "x"}, {"op": "placeholder", "target": "x"},
                  {"op": "output", "args": {"node": 1}}])  # fmt: skip
    with pytest.raises(ModelLoadError, match="must take one input tensor; its graph takes 2"):
        handover.rebuild(_payload(two), None, None)
    for bad in ("training", "forward", "__dict__", "a.__class__.b", "ü"):
        with pytest.raises(ModelLoadError, match="not a valid graph"):
            desc = _graph([{"op": "get_attr", "target": bad}, {"op": "output", "args": {"node": 0}}], {bad: {}})
            handover.rebuild(_payload(desc, {bad: weight}), None, None)


def test_state_dict_shapes_are_checked_on_the_meta_device_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """The architecture is never built with the file's shapes before they were compared with the reference."""
    import torchvision

    built: list[str] = []
    real = torchvision.models.get_model

    def spy(name: str, **kwargs: object) -> torch.nn.Module:
        built.append(str(torch.empty(0).device))
        return real(name, **kwargs)

    monkeypatch.setattr(torchvision.models, "get_model", spy)
    sd = {"fc.weight": torch.empty(10**12, 0)}
    with pytest.raises(ModelLoadError, match="does not fit architecture 'resnet18'"):
        tensors.load_arch("resnet18", sd, None)
    assert built and set(built) == {"meta"}


# --- root fixes in the loader ------------------------------------------------------------------------------------

S = "Symbol('s16', positive=True, integer=True)"


@pytest.mark.parametrize("expr", [
    S, f"Add(FloorDiv(Add({S}, Integer(-1)), Integer(2)), Integer(1))",
    f"Mul(Integer(4), Pow(Max(Integer(1), Add(FloorDiv(Add({S}, Integer(-1)), Integer(2)), Integer(1))), Integer(2)))",
    "s0 + 1", "(s0 - 1)//2 + 1", "Max(s0, 2)*s1 % 7", "-s0 + -(-3)",
])  # fmt: skip
def test_shape_expressions_torch_writes_are_accepted(expr: str) -> None:
    export._check_expr(expr)


@pytest.mark.parametrize("expr", [
    f"{S} + 0*9**9**9", f"{S} + 0*99999999!", "__import__('os').system('true')", "s0 / 2", "Float('1.5', precision=53)",
    "Pow(Pow(s0, Integer(8)), Integer(8))", "Pow(s0, Integer(9))", "Pow(Integer(9), s0)", f"Integer({'9' * 30})",
    "s0 + " + "(" * 40 + "1" + ")" * 40, "-" * 40 + "s0", "Symbol('__class__')", "Lambda(s0, s0)", "s0; s1", "",
    "s0 " * 10, "s0" + " + s0" * 1000,
])  # fmt: skip
def test_shape_expressions_outside_the_grammar_are_refused(expr: str) -> None:
    with pytest.raises(ModelLoadError, match="symbolic shape expression that is refused"):
        export._check_expr(expr)


def test_pt2_with_symmetric_dynamic_height_and_width_loads(tmp_path: Path) -> None:
    """torch writes Pow(H, 2) when height and width share a symbol: allowed with a small literal exponent."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten()).eval()
    h = torch.export.Dim("h", min=4, max=64)
    program = torch.export.export(model, (torch.zeros(1, 1, 8, 8),), dynamic_shapes={"input": {2: h, 3: h}})
    torch.export.save(program, tmp_path / "dyn.pt2")
    assert "Pow(" in zipfile.ZipFile(tmp_path / "dyn.pt2").read("dyn/models/model.json").decode()
    loaded = load_model(tmp_path / "dyn.pt2")
    x = torch.randn(1, 1, 12, 12)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x))


def test_pickle_nesting_is_measured_without_unpickling() -> None:
    import pickle

    tensors.check_pickle(pickle.dumps({"a": [[1, 2], (3, [4])], "b": list(range(5000))}), "test pickle")
    deep: list = []
    for _ in range(tensors.MAX_PICKLE_DEPTH + 5):
        deep = [deep]
    with pytest.raises(ModelLoadError, match="nests containers more than"):
        tensors.check_pickle(pickle.dumps(deep), "test pickle")
