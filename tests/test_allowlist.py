"""The allow-list of operators a graph rebuilt from an uploaded file may call (`ttfs_core.untrusted.allowlist`),
its argument checks and its shape check on `meta`; and programs exported the usual way, on a batch of one, working
everywhere.
The hostile files themselves are in `tests/attacks.py` (run through the loader, the CLI and the explorer)."""

from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from streamlit.testing.v1 import AppTest
from torch import nn

from tests.helpers import TIMEOUT, ok, run_cli, run_page, upload_script
from ttfs_core import capture
from ttfs_core.untrusted import ModelLoadError, allowlist, load_model
from ttfs_ui import state

ROOT = Path(__file__).resolve().parent.parent
PLUMBING = {"aten.sym_size.int", "aten.size.int", "aten.eq.int", "aten._assert_scalar.default"}
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


# --- the list itself -----------------------------------------------------------------------------------------


def test_every_allowed_operator_is_one_the_converter_lowers():
    lowered = {allowlist.target_name(t) for t in capture.FUNCTIONS}
    assert set(allowlist.ALLOWED) - PLUMBING <= lowered
    assert all(allowlist.resolve(name) is not None for name in allowlist.ALLOWED)


def test_the_readme_prints_the_allow_list_with_a_reason_for_each():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Untrusted files", 1)[1].split("\n## ", 1)[0]
    for name, rule in allowlist.ALLOWED.items():
        assert f"`{name}`" in section, name
        assert rule.why in section, name


def test_names_off_the_list_are_never_resolved():
    for name in ("aten._reshape_alias.default", "aten.ones.default", "aten.mm.default", "os.system", "operator.pow"):
        assert not allowlist.is_allowed(name)
        with pytest.raises(KeyError):
            allowlist.resolve(name)


# --- argument checks ------------------------------------------------------------------------------------------


def _graph(build) -> fx.Graph:
    g = fx.Graph()
    x = g.placeholder("x")
    g.output(build(g, x))
    return g


def test_an_in_place_write_into_a_stored_tensor_is_refused():
    def build(g, x):
        w = g.get_attr("w")
        view = g.call_function(torch.ops.aten.view.default, (w, [-1]))
        g.call_function(torch.ops.aten.relu_.default, (view,))
        return g.call_function(torch.ops.aten.add.Tensor, (x, w))

    with pytest.raises(allowlist.GraphRefused, match=r"node relu_\w* \(aten\.relu_\.default\): it writes into"):
        allowlist.check_graph(_graph(build))


@pytest.mark.parametrize(("target", "args", "kwargs", "message"), [
    (torch.ops.aten.conv2d.default, ("W", None, [0, 1]), {}, r"stride \[0, 1\] must be >= 1"),
    (torch.ops.aten.flatten.using_ints, (True,), {}, r"'start_dim' is True where an integer is expected"),
    (torch.ops.aten.dropout.default, (0.5, True), {}, r"dropout in training mode"),
    (torch.ops.aten.view.default, ([-1, -1],), {}, r"more than one size is -1"),
    (torch.ops.aten.mean.dim, ([1],), {"dtype": torch.float64}, r"argument 'dtype' is torch\.float64 where"),
    (torch.ops.aten.hardtanh.default, (0.0, float("inf")), {}, r"'max_val' is inf where a finite number"),
    (torch.ops.aten.clone.default, (), {"device": "cpu"}, r"unexpected keyword argument 'device'"),
    (torch.ops.aten.linear.default, ("X",), {}, r"its weight must be a stored tensor"),
])  # fmt: skip
def test_arguments_are_checked_by_type_and_range(target, args, kwargs, message):
    def build(g, x):
        w = g.get_attr("w")
        resolved = tuple(w if a == "W" else x if a == "X" else a for a in args)
        return g.call_function(target, (x, *resolved), kwargs)

    with pytest.raises(allowlist.GraphRefused, match=message):
        allowlist.check_graph(_graph(build))


def _guarded(build, **tensors) -> fx.GraphModule:
    root = nn.Module()
    for name, t in tensors.items():
        root.register_buffer(name, t)
    g = _graph(build)
    allowlist.check_graph(g)
    return allowlist.guard(fx.GraphModule(root, g))


def test_python_operators_take_integers_only_and_nothing_runs_before_the_shape_check():
    calls = []

    def build(g, x):
        return g.call_function(allowlist.OPERATORS["mul"], (x, x))

    gm = _guarded(build)
    gm.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(allowlist.GraphRefused, match="operator.mul on Tensor, Tensor: integers only"):
        gm(torch.ones(2, 3))


def test_the_graph_gets_a_copy_of_its_input():
    gm = _guarded(lambda g, x: g.call_function(torch.ops.aten.relu_.default, (x,)))
    x = torch.tensor([[-1.0, 2.0]])
    assert torch.equal(gm(x), torch.tensor([[0.0, 2.0]]))
    assert torch.equal(x, torch.tensor([[-1.0, 2.0]]))  # the caller's tensor is unchanged


def test_sizes_and_costs_are_bounded_per_input_on_meta():
    w = torch.zeros(64, 64, 3, 3)

    def build(g, x):
        h = x
        for _ in range(12):  # 12 convolutions of 64 channels at 1024 x 1024: 4.6e11 multiply-adds per input
            h = g.call_function(torch.ops.aten.conv2d.default, (h, g.get_attr("w"), None, [1, 1], [1, 1]))
        return h

    gm = _guarded(build, w=w)
    with pytest.raises(allowlist.GraphRefused, match=r"more than 6\.87e\+10 multiply-adds per input"):
        gm(torch.zeros(1, 64, 1024, 1024))
    with pytest.raises(allowlist.GraphRefused, match="would hold"):
        gm.get_submodule(allowlist.InputGuard.NAME).check((1, 64, 9000, 9000))
    assert gm(torch.zeros(2, 64, 8, 8)).shape == (2, 64, 8, 8)  # an ordinary shape runs


def test_the_guard_follows_copies_and_dtypes():
    gm = _guarded(lambda g, x: g.call_function(torch.ops.aten.linear.default, (x, g.get_attr("w"))),
                  w=torch.eye(3))  # fmt: skip
    twin = copy.deepcopy(gm).double()
    x = torch.rand(4, 3, dtype=torch.float64)
    assert torch.equal(twin(x), x)
    with pytest.raises(allowlist.GraphRefused, match="inputs must be float32 or float64"):
        gm(torch.ones(2, 3, dtype=torch.int64))


# --- programs exported on a batch of one ----------------------------------------------------------------------


class _LeNetLike(nn.Module):
    """Flattens with x.view(x.size(0), -1): exported on one image, the graph writes the batch 1 into that view."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2 = nn.Linear(16 * 4 * 4, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.view(x.size(0), -1))))


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))  # fmt: skip
        self.head = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = torch.relu(h + self.block(h))
        h = F.avg_pool2d(h, 4)
        return self.head(h.reshape(x.shape[0], -1))


BATCH_ONE = {"lenet_like": _LeNetLike, "residual": _Residual}


@pytest.fixture(scope="module")
def batch_one(tmp_path_factory) -> dict[str, tuple[nn.Module, Path]]:
    folder = tmp_path_factory.mktemp("batch1")
    out = {}
    for name, cls in BATCH_ONE.items():
        model = cls().eval()
        path = folder / f"{name}.pt2"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.export.save(torch.export.export(model, (torch.rand(1, 1, 28, 28),)), path)
        out[name] = (model, path)
    return out


@pytest.mark.parametrize("name", list(BATCH_ONE))
def test_a_batch_one_export_runs_any_batch(batch_one, name):
    model, path = batch_one[name]
    loaded = load_model(path)
    x = torch.rand(7, 1, 28, 28)
    assert torch.allclose(loaded(x), model(x), atol=1e-5)
    with pytest.raises(allowlist.GraphRefused, match=re.escape("takes inputs of shape (N, 1, 28, 28), got (7, 3, 28")):
        loaded(torch.rand(7, 3, 28, 28))


def test_a_program_that_fixes_its_batch_elsewhere_says_how_to_export(tmp_path):
    class Fixed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.reshape(1, 2, -1).sum(1)  # the batch of one is written as 1 twice over: cannot be freed

    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(Fixed(), (torch.rand(1, 2, 4, 4),)), path)
    with pytest.raises(ModelLoadError):
        load_model(path)  # refused: `sum` is not on the list; the message names it (either way: one line)


@pytest.mark.parametrize("name", list(BATCH_ONE))
def test_ttfs_verify_passes_on_a_batch_one_export(batch_one, capsys, name):
    _, path = batch_one[name]
    code, out, err = run_cli(capsys, "verify", str(path), "--limit", "64")
    assert code == 0, err
    assert "PASS" in out


PAGES = sorted(str(p) for p in (ROOT / "pages").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BATCH_ONE))
def test_every_page_runs_on_a_batch_one_export(batch_one, name):
    _, path = batch_one[name]
    at = AppTest.from_function(upload_script, default_timeout=TIMEOUT)
    at.session_state["test_kind"], at.session_state["test_bytes"] = name, path.read_bytes()
    at.session_state["test_name"] = path.name
    at.run()
    ok(at)
    assert not at.error, at.error[0].value
    session = {key: at.session_state[key] for key in (state.MODEL, state.UPLOADED_MODELS)}
    for page in [str(ROOT / "app.py"), *PAGES]:
        page_at = run_page(page, **session)
        assert not page_at.error, (page, page_at.error[0].value)

