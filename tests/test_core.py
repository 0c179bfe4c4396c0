"""The converter and the exact event-driven simulator, with the ReLU network as the oracle."""

from __future__ import annotations

import copy
from dataclasses import FrozenInstanceError, replace

import pytest
import torch
import torch.nn as nn
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

import ttfs_core
from ttfs_core import ConversionError, InputError
from ttfs_core.sim.dynamics import Pool, first_crossing, membrane_potential

from . import nets
from .helpers import converted

NAMES = ["mlp", "functional", "cnn"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("neuron", ["alpha", "b1"])
def test_float64_exact(name, neuron):
    model, snn, x = converted(name, neuron=neuron)
    res = snn.run(x)
    with torch.no_grad():
        ref = model(x)
    assert rel(res.logits, ref) < 1e-9
    assert bool((res.logits.argmax(1) == ref.argmax(1)).all())
    comps = ttfs_core.compare(model, snn, x, res)
    assert [c.name for c in comps] == [layer.name for layer in res.layers]
    for comp, layer in zip(comps, res.layers):
        assert comp.ann.shape == layer.spike_times.shape == comp.snn.shape
        assert comp.max_rel_error < 1e-9, comp.name
        assert layer.early_spikes == 0 and layer.early_arrivals == 0
        fired = torch.isfinite(layer.spike_times)
        t = layer.spike_times[fired]
        assert bool(((t >= layer.t_min) & (t <= layer.t_max)).all())
        if neuron == "alpha":  # exactly one spike per hidden neuron
            assert bool(fired.all()) and layer.spikes == layer.neurons
        else:  # B1: a neuron with activation 0 does not spike
            assert layer.spikes == int((comp.snn > 0).sum())
    assert res.early_spikes == 0 and res.input_clipped == 0


@pytest.mark.parametrize("name", NAMES)
def test_float32_close(name):
    model, snn, x = converted(name, dtype=torch.float32)
    assert snn.dtype == torch.float32
    res = snn.run(x)
    assert res.logits.dtype == torch.float32
    with torch.no_grad():
        ref = model(x)
    assert rel(res.logits, ref) < 1e-4
    for comp in ttfs_core.compare(model, snn, x, res):
        assert comp.max_rel_error < 1e-4, comp.name


@pytest.mark.parametrize("name", NAMES)
def test_positive_fast_mode_exact_with_shorter_windows(name):
    """The opt-in positive-part rescaling is exact too, decides early spikes without a certificate, and pays in
    time: its windows are shorter than the paper's rule gives."""
    model, snn, x = converted(name, rescale="positive")
    res = snn.run(x)
    with torch.no_grad():
        assert rel(res.logits, model(x)) < 1e-9
    assert res.early_spikes == 0
    assert [name for name, _ in res.certificate] == ["pre-activation"] and res.searched == 0
    paper = converted(name)[1]
    assert paper.rescale.name == "sum" and paper.smallest_window > snn.smallest_window


def test_small_margin_detects_early_spikes():
    model, snn, x = converted("cnn", margin=-0.7)
    res = snn.run(x)
    assert res.early_spikes > 0
    comps = ttfs_core.compare(model, snn, x, res)
    bad = [c for c in comps if c.early_spikes]
    assert bad and all(c.max_rel_error > 1e-3 for c in bad)
    # early spikes fire before the window opens, and the next layer sees them as early arrivals
    first = next(i for i, layer in enumerate(res.layers) if layer.early_spikes)
    assert bool((res.layers[first].spike_times < res.layers[first].t_min).any())
    if first + 1 < len(res.layers):
        assert res.layers[first + 1].early_arrivals > 0


def test_early_spike_times_are_true_first_crossings():
    """For every early spike, V(t) evaluated on a fine grid first reaches θ at the reported time."""
    model, snn, x = converted("mlp", margin=-0.7)
    res = snn.run(x[:4])
    layer, out = snn.layers[0], res.layers[0]
    t_in = res.input_times.flatten(1)
    checked = 0
    for b, i in (out.offsets < 0).nonzero().tolist()[:40]:
        grid = torch.linspace(0, 1, 20001, dtype=torch.float64)
        v = membrane_potential(grid, t_in[b], layer.J[i], snn.alpha, 0.0)
        crossed = (v >= layer.theta[i]).nonzero()
        t_grid = float(grid[crossed[0]]) if len(crossed) else None
        t_sim = float(out.offsets[b, i]) + layer.in_window
        assert t_grid is not None and abs(t_grid - t_sim) <= 1 / 20000 + 1e-12
        checked += 1
    assert checked > 0


def test_hand_computed_neuron():
    """One input neuron, one hidden neuron: every number can be checked by hand."""
    model = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1)).double().eval()
    with torch.no_grad():
        model[0].weight.fill_(0.5)
        model[0].bias.fill_(0.1)
        model[2].weight.fill_(2.0)
        model[2].bias.fill_(-1.0)
    snn = ttfs_core.convert(model, torch.tensor([[0.0], [1.0]], dtype=torch.float64), margin=0.0)
    layer = snn.layers[0]
    # input range [0, 1]; X = 0.5·1 + 0.1 = 0.6, B_1 = 0.6: window [1, 1.6], readout at 1.6
    assert layer.t_min == 1.0 and layer.t_max == pytest.approx(1.6) and snn.decision_time == pytest.approx(1.6)
    # J = α W / (1 − W) = 1; θ = α (1.6 − 0) + B·J − (α + J)·b = 1.6 + 0.6 − 0.2 = 2.0
    assert float(layer.J) == pytest.approx(1.0) and float(layer.theta) == pytest.approx(2.0)
    res = snn.run(torch.tensor([[0.8]], dtype=torch.float64))
    # input fires at 1 − 0.8 = 0.2; V = t + (t − 0.2) = 2 at t = 1.1 = t_max − (0.5·0.8 + 0.1)
    assert float(res.input_times) == pytest.approx(0.2)
    assert float(res.layers[0].spike_times) == pytest.approx(1.1)
    assert float(res.logits) == pytest.approx(2.0 * 0.5 - 1.0)


def test_max_pool_is_earliest_spike_and_sign_rule():
    t = torch.tensor([[[[3.0, 1.0], [2.0, 4.0]], [[3.0, 1.0], [2.0, 4.0]]]])
    pool = Pool((2, 2), (2, 2), (0, 0), (1, 1), False, torch.tensor([1.0, -1.0]))
    out = pool.times(t)
    assert out.flatten().tolist() == [1.0, 4.0]  # channel 0: earliest spike; channel 1 (negative BN): latest
    assert pool.activations(t).flatten().tolist() == [4.0, 1.0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(-2, 2)), min_size=1, max_size=8), st.floats(-0.5, 3))
def test_first_crossing_matches_dense_evaluation(inputs, theta):
    times = torch.tensor([[t for t, _ in inputs]], dtype=torch.float64)
    weights = torch.tensor([[w for _, w in inputs]], dtype=torch.float64)
    slope = torch.tensor([1.0 + float(weights.sum())], dtype=torch.float64)
    got = float(first_crossing(times, weights, torch.tensor([theta], dtype=torch.float64), 1.0, 0.0, 1.0, slope))
    # oracle: V from its definition. It is linear between breakpoints, so its maximum over any interval is at a
    # breakpoint or an end: check that V reaches θ at the reported time and stays below θ before it.
    def v_at(t: float) -> float:
        if t <= 1.0:
            return float(membrane_potential(torch.tensor([t], dtype=torch.float64), times[0], weights[0], 1.0, 0.0)[0])
        return v_at(1.0) + float(slope) * (t - 1.0)

    tol = 1e-9
    points = [0.0, 1.0, *times[0].tolist()]
    before = [p for p in points if p < got] + ([got] if got != float("inf") else [])
    if theta <= 0:
        assert got == 0.0  # V(start) = 0 ≥ θ: fires at its start
        return
    assert max(v_at(p) for p in before) < theta + tol  # no earlier crossing
    if got == float("inf"):
        assert float(slope) <= 0  # a positive final slope always reaches θ
    else:
        assert v_at(got) >= theta - tol


def test_model_is_not_modified_and_calibration_forms():
    model = nets.build("cnn")
    before = copy.deepcopy(model.state_dict())
    x = nets.inputs("cnn", 64)
    batches = [(x[:32], torch.zeros(32)), (x[32:], torch.zeros(32))]
    snn = ttfs_core.convert(model, batches, input_range=None)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not model.training
    assert snn.input_range == (float(x.min()), float(x.max()))
    rows = snn.summary()
    assert [r["layer"] for r in rows[:-1]] == [layer.name for layer in snn.layers]
    assert rows[0]["t_min"] == 1.0 and all(r["neurons"] > 0 for r in rows)
    assert snn.decision_time == pytest.approx(1 + sum(layer.window for layer in snn.layers))
    for a, b in zip(snn.layers, snn.layers[1:]):
        assert a.t_max == b.t_min


def test_out_of_range_input_is_clipped_and_reported():
    model, snn, x = converted("mlp")
    res = snn.run(x * 3)
    assert res.input_clipped > 0
    assert float(res.input_times.min()) >= 0 and float(res.input_times.max()) <= 1


def test_bad_inputs():
    model, snn, x = converted("mlp")
    with pytest.raises(InputError, match="does not fit"):
        snn.run(torch.zeros(2, 5))
    with pytest.raises(InputError, match="NaN"):
        snn.run(torch.full((1, 3, 4, 4), float("nan")))
    huge = torch.zeros(1, 3, 4, 4, dtype=x.dtype).expand(10**8, 3, 4, 4)  # no memory: a broadcast view
    with pytest.raises(InputError, match="at a time"):
        snn.run(huge)
    with pytest.raises(ConversionError, match="empty"):
        ttfs_core.convert(model, torch.zeros(0, 3, 4, 4))
    with pytest.raises(ConversionError, match="margin"):
        ttfs_core.convert(model, x, margin=-1.5)
    with pytest.raises(ConversionError, match="input range"):
        ttfs_core.convert(model, x, input_range=(1.0, 1.0))


@pytest.mark.parametrize("kw, needle", [
    ({"alpha": float("nan")}, "alpha"), ({"alpha": 0.0}, "alpha"), ({"alpha": -1.0}, "alpha"),
    ({"alpha": float("inf")}, "alpha"), ({"alpha": "1"}, "alpha"), ({"margin": float("inf")}, "margin"),
    ({"margin": float("nan")}, "margin"), ({"margin": True}, "margin"),
    ({"input_range": (0.0, float("inf"))}, "finite"), ({"input_range": (float("nan"), 1.0)}, "finite"),
    ({"input_range": ("a", "b")}, "input_range"), ({"input_range": 3}, "input_range"),
])
def test_conversion_options_are_validated(kw, needle):
    model, _, x = converted("mlp")
    with pytest.raises(ConversionError, match=needle):
        ttfs_core.convert(model, x, **kw)


def test_weights_that_overflow_or_are_not_real_are_refused():
    model = nets.build("mlp", dtype=torch.float32)
    x = nets.inputs("mlp", 16, dtype=torch.float32)
    huge = copy.deepcopy(model)
    with torch.no_grad():
        for p in huge.parameters():
            p.mul_(1e38)
    with pytest.raises(ConversionError, match="too large"):
        ttfs_core.convert(huge, x)
    for dtype in (torch.int32, torch.bool, torch.complex64):
        odd = copy.deepcopy(model)
        odd[1].weight = nn.Parameter(odd[1].weight.detach().to(dtype), requires_grad=False)
        with pytest.raises(ConversionError, match=str(dtype).replace("torch.", "")):
            ttfs_core.convert(odd, x)


class _Product(nn.Module):
    """Two activations multiplied together (a gate): not a ReLU-family op."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h * torch.relu(x))


@pytest.mark.parametrize(
    "model, needle",
    [
        (nn.Sequential(nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 2)), "Sigmoid"),
        (nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2)), "GELU"),
        (nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)), "Tanh"),
        (nn.Sequential(nn.Linear(4, 4), nn.LeakyReLU(), nn.Linear(4, 2)), "LeakyReLU"),
        (nn.LSTM(4, 4), "LSTM"),
        (_Product(), "multiplies two activations"),
        (nn.Sequential(nn.Linear(4, 4), nn.SiLU(), nn.Linear(4, 2)), r"1 \(SiLU\)"),
        (nn.Sequential(nn.Linear(4, 4), nn.ReLU()), "readout"),
    ],
)
def test_unsupported_ops_are_named(model, needle):
    with pytest.raises(ConversionError, match=needle) as info:
        ttfs_core.convert(model.double().eval(), torch.rand(8, 4, dtype=torch.float64))
    assert "upported" in str(info.value) or "readout" in str(info.value)


def test_training_mode_and_nan_weights_are_refused():
    model = nets.build("mlp")
    x = nets.inputs("mlp", 8)
    with pytest.raises(ConversionError, match="training mode"):
        ttfs_core.convert(copy.deepcopy(model).train(), x)
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken[1].weight[0, 0] = float("nan")
    with pytest.raises(ConversionError, match=r"1\.weight.*NaN"):
        ttfs_core.convert(broken, x)


def test_exported_program_converts():
    model = nets.build("cnn")
    x = nets.inputs("cnn", 40)
    batch = torch.export.Dim("batch", min=1, max=1024)
    exported = torch.export.export(model, (x[:2],), dynamic_shapes=({0: batch},)).module()
    snn = ttfs_core.convert(exported, x[:32], input_range=(-2, 3))
    res = snn.run(x[32:])
    with torch.no_grad():
        assert rel(res.logits, model(x[32:])) < 1e-9
    assert all(c.max_rel_error < 1e-9 for c in ttfs_core.compare(exported, snn, x[32:], res))


@pytest.mark.slow
def test_vgg16_bn_cifar_size_float64():
    torch.manual_seed(0)
    model = nets.randomise_bn(torchvision.models.vgg16_bn(num_classes=10)).double().eval()
    x = torch.randn(40, 3, 32, 32, dtype=torch.float64)
    snn = ttfs_core.convert(model, x[:32], input_range=(float(x.min()), float(x.max())))
    assert len(snn.layers) == 15
    res = snn.run(x[32:])
    with torch.no_grad():
        ref = model(x[32:])
    assert rel(res.logits, ref) < 1e-9 and bool((res.logits.argmax(1) == ref.argmax(1)).all())
    assert res.early_spikes == 0
    for comp in ttfs_core.compare(model, snn, x[32:], res):
        assert comp.max_rel_error < 1e-9, comp.name


@pytest.mark.slow
def test_vgg16_bn_float32_keeps_the_papers_time_scale():
    """The headline case, on a small batch: VGG16-BN with random BN statistics, float32, default
    conversion. Windows of the order of the activations, no early spikes at margin 0.5, every neuron settled by
    the certificate or the search, argmax equal to the ANN."""
    torch.manual_seed(0)
    model = nets.randomise_bn(torchvision.models.vgg16_bn(num_classes=10)).eval()
    calib, x = torch.randn(128, 3, 32, 32), torch.randn(8, 3, 32, 32)
    snn = ttfs_core.convert(model, calib)
    assert snn.smallest_window >= 0.05 and snn.decision_time >= 3
    res = snn.run(x)
    with torch.no_grad():
        ref = model(x)
    assert rel(res.logits, ref) < 1e-4 and torch.equal(res.logits.argmax(1), ref.argmax(1))
    assert res.early_spikes == 0
    assert res.searched < 1e-3 * res.neurons
    assert sum(count for _, count in res.certificate) + res.searched == res.neurons


def test_first_crossing_touching_threshold_at_an_input():
    """V reaches θ exactly when an inhibitory input arrives and then stays flat: the crossing is at that input."""
    f64 = torch.float64
    t = first_crossing(torch.tensor([[0.5]], dtype=f64), torch.tensor([[-1.0]], dtype=f64),
                       torch.tensor([0.5], dtype=f64), 1.0, 0.0, 1.0, torch.tensor([0.0], dtype=f64))
    assert float(t) == pytest.approx(0.5)


def test_exported_program_errors_name_the_module():
    model = nn.Sequential(nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 2)).double().eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    x = torch.rand(8, 4, dtype=torch.float64)
    exported = torch.export.export(model, (x[:2],), dynamic_shapes=({0: batch},)).module()
    with pytest.raises(ConversionError, match=r"sigmoid.*module '1' \(Sigmoid\).*Supported"):
        ttfs_core.convert(exported, x)


def test_a_network_is_a_frozen_record_and_replace_makes_changed_copies():
    model, snn, x = converted("cnn")
    before = snn.run(x).logits
    with pytest.raises(FrozenInstanceError):
        snn.rescale = "positive"
    with pytest.raises(FrozenInstanceError):
        snn.output.bias = snn.output.bias * 2
    with pytest.raises(AttributeError):
        snn.layers[0].weight = snn.layers[0].weight * 2  # no setter rebuilding the inputs
    doubled = replace(snn, output=replace(snn.output, bias=snn.output.bias * 2))
    assert not torch.equal(doubled.run(x).logits, before)
    assert torch.equal(snn.run(x).logits, before)  # the original is unchanged
    assert copy.deepcopy(snn).layers[0].J is not snn.layers[0].J
