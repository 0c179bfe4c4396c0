"""ttfs_core.untrusted: every supported format round-trips, every bad or hostile file is a ModelLoadError."""

from __future__ import annotations

import io
import json
import operator
import os
import pickle
import shlex
import sys
import types
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.fx as fx
import torchvision
from safetensors.torch import save_file
from torch import nn

import ttfs_core
from ttfs_core.untrusted import ModelLoadError, check_input, load_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


# --- models ------------------------------------------------------------------------------------------------


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))


class LeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 6, 5, padding=2), nn.BatchNorm2d(6)
        self.c2, self.b2 = nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16)
        self.fc1, self.fc2 = nn.Linear(16 * 5 * 5, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.b1(self.c1(x))), 2)
        x = nn.functional.max_pool2d(torch.relu(self.b2(self.c2(x))), 2)
        x = x.view(x.size(0), -1)
        return self.fc2(torch.relu(self.fc1(x)))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.a, self.b = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv(x))
        out = self.b(self.relu(self.a(x)))
        out += x
        out = self.relu(out)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


class Concat(nn.Module):
    """Dense-block style: a Python list grown with append and concatenated (list mutation in TorchScript)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(3, 2, 3, padding=1)])
        self.fc = nn.Linear(5 * 28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for layer in self.layers:
            feats.append(torch.relu(layer(torch.cat(feats, 1))))
        return self.fc(torch.flatten(torch.cat(feats, 1), 1))


def _randomise_bn(model: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


MODELS: dict[str, Callable[[], nn.Module]] = {"mlp": _mlp, "lenet": LeNet, "residual": Residual, "concat": Concat}


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return _randomise_bn(MODELS[name]())


def _x(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(2))


def _assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= 1e-6


def _assert_loadable_module(m: nn.Module) -> None:
    assert all(not sub.training for sub in m.modules())
    if not isinstance(m, fx.GraphModule):
        fx.symbolic_trace(m)


def _script(model: nn.Module, how: str, x: torch.Tensor) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.script(model) if how == "script" else torch.jit.trace(model, x)


def _export(model: nn.Module, x: torch.Tensor, path: Path, dynamic: bool = True) -> Path:
    dyn = {"x" if not isinstance(model, nn.Sequential) else "input": {0: torch.export.Dim("batch")}}
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=dyn if dynamic else None), path)
    return path


# --- formats that load -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_export_program_round_trips(tmp_path: Path, name: str) -> None:
    model = _model(name)
    loaded = load_model(_export(model, _x(), tmp_path / "m.pt2"))
    assert isinstance(loaded, fx.GraphModule)
    _assert_loadable_module(loaded)
    with torch.no_grad():
        for n in (1, 5):  # dynamic batch dimension
            _assert_same(loaded(_x(n)), model(_x(n)))
    targets = {n.target for n in loaded.graph.nodes if n.op == "call_function"}
    assert all(isinstance(t, torch._ops.OpOverload) or t is operator.getitem for t in targets)


def test_export_program_exported_in_train_mode_loads_with_eval_semantics(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                          nn.Linear(4 * 26 * 26, 10))  # fmt: skip
    _randomise_bn(model).train()
    path = tmp_path / "train.pt2"
    torch.export.save(torch.export.export(model, (_x(),)), path)
    loaded = load_model(path)
    _assert_loadable_module(loaded)
    with torch.no_grad():
        _assert_same(loaded(_x()), model.eval()(_x()))


@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize("name", list(MODELS))
def test_torchscript_round_trips_as_aten_graph(tmp_path: Path, name: str, how: str) -> None:
    model = _model(name)
    scripted = _script(model, how, _x())
    scripted.save(str(tmp_path / "m.pt"))
    loaded = load_model(tmp_path / "m.pt")
    assert isinstance(loaded, fx.GraphModule)
    _assert_loadable_module(loaded)
    with torch.no_grad():
        for n in (1, 4):
            _assert_same(loaded(_x(n)), model(_x(n)))
            _assert_same(loaded(_x(n)), scripted(_x(n)))
    for node in loaded.graph.nodes:
        if node.op == "call_function":
            assert isinstance(node.target, torch._ops.OpOverload) and node.target.namespace == "aten", node
    targets = {str(n.target) for n in loaded.graph.nodes}
    assert "aten.linear.default" in targets
    if name != "mlp":
        assert "aten.conv2d.default" in targets  # traced aten::_convolution comes back as conv2d
    assert set(dict(loaded.named_parameters())) & set(dict(model.named_parameters()))  # original names kept


@pytest.mark.integration
def test_torchscript_vgg11_bn(tmp_path: Path) -> None:
    model = _randomise_bn(torchvision.models.vgg11_bn(num_classes=10))
    scripted = _script(model, "script", torch.zeros(1))
    scripted.save(str(tmp_path / "vgg.pt"))
    del scripted
    loaded = load_model(tmp_path / "vgg.pt")
    _assert_loadable_module(loaded)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _assert_same(loaded(x), model(x))
    targets = {str(n.target) for n in loaded.graph.nodes if n.op == "call_function"}
    assert {"aten.conv2d.default", "aten.batch_norm.default", "aten.max_pool2d.default",
            "aten.adaptive_avg_pool2d.default", "aten.linear.default"} <= targets  # fmt: skip


def _zoo(monkeypatch: pytest.MonkeyPatch, module: types.ModuleType | None) -> None:
    monkeypatch.setitem(sys.modules, "ttfs_core.zoo", module)
    if module is None:
        monkeypatch.delattr(ttfs_core, "zoo", raising=False)
    else:
        monkeypatch.setattr(ttfs_core, "zoo", module, raising=False)


@pytest.fixture
def fake_zoo(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    zoo = types.ModuleType("ttfs_core.zoo")
    zoo.ARCHITECTURES = {"tiny_mlp": _mlp}  # type: ignore[attr-defined]
    zoo.build = lambda name: zoo.ARCHITECTURES[name]()  # type: ignore[attr-defined]
    _zoo(monkeypatch, zoo)
    return zoo


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "pt_legacy", "state_dict_key", "model_state_dict_key"])
def test_state_dict_with_zoo_arch_round_trips(tmp_path: Path, fake_zoo: types.ModuleType, fmt: str) -> None:
    model = _model("mlp")
    sd = model.state_dict()
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pth")
    if fmt == "safetensors":
        save_file(sd, str(path))
    elif fmt == "pt_legacy":
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    else:
        key = {"pt": None, "state_dict_key": "state_dict", "model_state_dict_key": "model_state_dict"}[fmt]
        torch.save(sd if key is None else {key: sd, "epoch": 3}, path)
    loaded = load_model(path, "tiny_mlp")
    _assert_loadable_module(loaded)
    with torch.no_grad():
        _assert_same(loaded(_x()), model(_x()))


def test_state_dict_with_torchvision_arch_infers_num_classes(tmp_path: Path) -> None:
    model = _randomise_bn(torchvision.models.resnet18(num_classes=7))
    save_file(model.state_dict(), str(tmp_path / "r.safetensors"))
    loaded = load_model(tmp_path / "r.safetensors", "resnet18")
    _assert_loadable_module(loaded)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _assert_same(loaded(x), model(x))
    assert load_model(tmp_path / "r.safetensors", "resnet18", num_classes=7).fc.out_features == 7


def test_format_is_detected_by_content_not_extension(tmp_path: Path) -> None:
    model = _model("lenet")
    _export(model, _x(), tmp_path / "m.pt2")
    (tmp_path / "m.pt2").rename(tmp_path / "renamed.safetensors")
    _script(model, "script", _x()).save(str(tmp_path / "ts.pt2"))
    with torch.no_grad():
        _assert_same(load_model(tmp_path / "renamed.safetensors")(_x()), model(_x()))
        _assert_same(load_model(tmp_path / "ts.pt2")(_x()), model(_x()))


def test_check_input(tmp_path: Path) -> None:
    model = _model("lenet")
    loaded = load_model(_export(model, _x(), tmp_path / "m.pt2"))
    assert check_input(loaded, (1, 28, 28)).shape == (1, 10)
    with pytest.raises(ModelLoadError, match=r"cannot take inputs of shape \(1, 3, 32, 32\)"):
        check_input(loaded, (3, 32, 32))


# --- files that must be refused --------------------------------------------------------------------------


def _one_line_error(exc: pytest.ExceptionInfo[ModelLoadError]) -> str:
    msg = str(exc.value)
    assert isinstance(exc.value, ValueError) and "\n" not in msg
    return msg


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found") as e:
        load_model(tmp_path / "nope.pt")
    assert "supported" in _one_line_error(e)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        load_model(tmp_path / "empty.pt")


@pytest.mark.parametrize(("content", "expected"), [
    (os.urandom(4096), "unknown model file format"),
    (b"hello, this is not a model\n" * 20, "looks like a text file"),
    (b"\x89PNG\r\n\x1a\n" + os.urandom(200), "looks like a PNG image"),
])  # fmt: skip
def test_unknown_formats(tmp_path: Path, content: bytes, expected: str) -> None:
    (tmp_path / "f.pt").write_bytes(content)
    with pytest.raises(ModelLoadError, match=expected) as e:
        load_model(tmp_path / "f.pt")
    assert "supported: torch.export .pt2" in _one_line_error(e)


def test_truncated_and_corrupt_zips(tmp_path: Path) -> None:
    data = _export(_model("mlp"), _x(), tmp_path / "m.pt2").read_bytes()
    (tmp_path / "cut.pt2").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="corrupt or truncated zip") as e:
        load_model(tmp_path / "cut.pt2")
    _one_line_error(e)
    i = data.index(b"weight_0") + 200  # inside the stored bytes of the first weight
    (tmp_path / "bad.pt2").write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :])
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_model(tmp_path / "bad.pt2")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("notes/readme.txt", "hi")
    (tmp_path / "other.pt").write_bytes(buf.getvalue())
    with pytest.raises(ModelLoadError, match="not a model file"):
        load_model(tmp_path / "other.pt")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.cmd = f"touch {shlex.quote(str(marker))}"

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return os.system, (self.cmd,)


@pytest.mark.parametrize("how", ["torch_save", "torch_save_legacy", "raw_pickle", "zip_renamed_pt2"])
def test_malicious_pickle_is_refused_without_running(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / ("evil.pt2" if how == "zip_renamed_pt2" else "evil.pt")
    if how == "raw_pickle":
        path.write_bytes(pickle.dumps(_Evil(marker), protocol=4))
    else:
        torch.save(_Evil(marker), path, _use_new_zipfile_serialization=how != "torch_save_legacy")
    with pytest.raises(ModelLoadError, match="refused to unpickle") as e:
        load_model(path, "resnet18")
    assert "system" in _one_line_error(e)
    assert not marker.exists()


def _rewrite_pt2(src: Path, dst: Path, edit: Callable[[str, bytes], bytes | None]) -> Path:
    """Copy a zip archive member by member; ``edit`` may replace a member's bytes or drop it (None)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)
    return dst


def _edit_program(edit: Callable[[dict], None]) -> Callable[[str, bytes], bytes]:
    def f(name: str, data: bytes) -> bytes:
        if not name.endswith("models/model.json"):
            return data
        program = json.loads(data)
        edit(program)
        return json.dumps(program).encode()

    return f


def test_pt2_with_malicious_sample_inputs_is_refused_without_running(tmp_path: Path) -> None:
    """torch.export.load itself would run this: it retries the sample inputs with weights_only=False."""
    marker = tmp_path / "pwned"
    src = _export(_model("mlp"), _x(), tmp_path / "m.pt2")
    evil = pickle.dumps(_Evil(marker), protocol=2)
    path = _rewrite_pt2(src, tmp_path / "evil.pt2", lambda n, d: evil if "sample_inputs" in n else d)
    with pytest.raises(ModelLoadError, match="refused to unpickle the .pt2 sample inputs") as e:
        load_model(path)
    _one_line_error(e)
    assert not marker.exists()


def _inject_expr(marker: Path) -> Callable[[dict], None]:
    def edit(p: dict) -> None:
        for tv in p["graph_module"]["graph"]["tensor_values"].values():
            for size in tv["sizes"]:
                if "as_expr" in size:
                    size["as_expr"]["expr_str"] += f" + 0*__import__('os').system('touch {marker}')"

    return edit


def _inject_target(marker: Path) -> Callable[[dict], None]:
    def edit(p: dict) -> None:
        node = p["graph_module"]["graph"]["nodes"][0]
        node["target"] = "torch.os.system"
        node["inputs"] = [{"name": "command", "arg": {"as_string": f"touch {marker}"}, "kind": 1}]

    return edit


@pytest.mark.parametrize(("attack", "expected"), [
    ("expr_str", "symbolic shape expression"), ("target", "calls .torch.os.system., which is not supported"),
    ("use_pickle", "pickle or custom object"), ("aoti", "AOTInductor"), ("extra_member", "is refused"),
])  # fmt: skip
def test_pt2_hostile_members_are_refused(tmp_path: Path, attack: str, expected: str) -> None:
    marker = tmp_path / "pwned"
    src = _export(_model("mlp"), _x(), tmp_path / "m.pt2")
    root = zipfile.ZipFile(src).namelist()[0].split("/")[0]

    def weights_pickled(name: str, data: bytes) -> bytes:
        if name.endswith("model_weights_config.json"):
            cfg = json.loads(data)
            next(iter(cfg["config"].values()))["use_pickle"] = True
            return json.dumps(cfg).encode()
        return data

    edit: Callable[[str, bytes], bytes | None] = {
        "expr_str": _edit_program(_inject_expr(marker)),
        "target": _edit_program(_inject_target(marker)),
        "use_pickle": weights_pickled,
    }.get(attack, lambda n, d: d)
    path = _rewrite_pt2(src, tmp_path / "evil.pt2", edit)
    if attack in ("aoti", "extra_member"):
        member = "data/aotinductor/model/model.so" if attack == "aoti" else "data/constants/custom_obj_0"
        with zipfile.ZipFile(path, "a") as z:
            z.writestr(f"{root}/{member}", b"\x7fELF")
    with pytest.raises(ModelLoadError, match=expected) as e:
        load_model(path)
    _one_line_error(e)
    assert not marker.exists()


def test_pt2_guards_code_and_metadata_are_never_executed(tmp_path: Path) -> None:
    """ExportedProgram.module() exec's guards_code; the loader drops it (and node metadata) instead."""
    marker = tmp_path / "pwned"
    model = _model("mlp")
    src = _export(model, _x(), tmp_path / "m.pt2")

    def edit(p: dict) -> None:
        p["guards_code"] = [f"__import__('os').system('touch {marker}') == 0"]
        p["graph_module"]["graph"]["nodes"][0]["metadata"]["stack_trace"] = f"\rimport os; os.system('touch {marker}')"

    loaded = load_model(_rewrite_pt2(src, tmp_path / "evil.pt2", _edit_program(edit)))
    with torch.no_grad():
        _assert_same(loaded(_x()), model(_x()))
    assert not marker.exists()


def _ts_with_marker(marker: Path, kind: str) -> nn.Module:
    class WritesInForward(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.path = str(marker)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            torch.save(x, self.path)
            return x

    class WritesWhileLoading(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.ones(1)
            self.path = str(marker)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.w

        @torch.jit.export
        def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
            return self.w, self.path, self.training

        @torch.jit.export
        def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
            self.w, self.path, self.training = state
            torch.save(self.w, self.path)

    return WritesInForward() if kind == "forward" else WritesWhileLoading()


@pytest.mark.parametrize(("kind", "expected"), [("forward", "'aten::save'"), ("setstate", "__setstate__")])
def test_torchscript_code_that_writes_files_is_refused(tmp_path: Path, kind: str, expected: str) -> None:
    marker = tmp_path / "written"
    scripted = _script(_ts_with_marker(marker, kind), "script", _x())
    scripted.save(str(tmp_path / "ts.pt"))
    assert not marker.exists()
    with pytest.raises(ModelLoadError, match=expected) as e:
        load_model(tmp_path / "ts.pt")
    _one_line_error(e)
    assert not marker.exists()


def test_torchscript_with_malicious_data_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _script(_model("mlp"), "script", _x()).save(str(tmp_path / "ts.pt"))
    evil = pickle.dumps(_Evil(marker), protocol=2)
    path = _rewrite_pt2(tmp_path / "ts.pt", tmp_path / "evil.pt", lambda n, d: evil if n.endswith("/data.pkl") else d)
    with pytest.raises(ModelLoadError, match="cannot load the TorchScript archive") as e:
        load_model(path)
    _one_line_error(e)
    assert not marker.exists()


def test_torchscript_unsupported_node_kind_is_named(tmp_path: Path) -> None:
    class Sorts(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cumsum(x, 1)

    _script(Sorts(), "script", _x()).save(str(tmp_path / "ts.pt"))
    with pytest.raises(ModelLoadError, match="unsupported TorchScript node kind 'aten::cumsum'"):
        load_model(tmp_path / "ts.pt")


def test_state_dict_errors(tmp_path: Path, fake_zoo: types.ModuleType) -> None:
    save_file(_model("mlp").state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(ModelLoadError, match="pass arch=") as e:
        load_model(tmp_path / "w.safetensors")
    assert "tiny_mlp" in _one_line_error(e) and "torchvision" in str(e.value)
    with pytest.raises(ModelLoadError, match="unknown architecture 'resnet999'"):
        load_model(tmp_path / "w.safetensors", "resnet999")
    with pytest.raises(ModelLoadError, match="does not fit architecture 'resnet18'.*missing keys conv1.weight") as e:
        load_model(tmp_path / "w.safetensors", "resnet18")
    assert "unexpected keys" in _one_line_error(e) and "1.weight" in str(e.value)
    wide = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    save_file(wide.state_dict(), str(tmp_path / "wide.safetensors"))
    with pytest.raises(ModelLoadError, match=r"shape mismatch 1.weight \(64, 784\) vs \(32, 784\)"):
        load_model(tmp_path / "wide.safetensors", "tiny_mlp")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ModelLoadError, match="not a state dict"):
        load_model(tmp_path / "list.pt", "tiny_mlp")
    torch.save(_model("mlp"), tmp_path / "full.pt")
    with pytest.raises(ModelLoadError, match="refused to unpickle.*torch.nn.modules"):
        load_model(tmp_path / "full.pt", "tiny_mlp")


def test_missing_zoo_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _zoo(monkeypatch, None)
    save_file(_model("mlp").state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(ModelLoadError, match="ttfs_core.zoo cannot be imported"):
        load_model(tmp_path / "w.safetensors", "tiny_mlp")
