"""Time-stepped simulation and membrane traces, with the exact simulator and the ReLU network as oracles."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ttfs_core

from .helpers import converted


@pytest.mark.parametrize("name", ["mlp", "functional", "cnn"])
@pytest.mark.parametrize("neuron", ["alpha", "b1"])
def test_fast_and_loop_give_the_same_spikes(name, neuron):
    """The per-neuron solution of the clock dynamics equals the literal tick loop, tick for tick."""
    _, snn, x = converted(name, neuron=neuron)
    for steps in (8, 37):
        fast = snn.run_stepped(x, steps=steps)
        loop = snn.run_stepped(x, steps=steps, method="loop")
        assert fast.ticks == loop.ticks == tuple([steps] * (len(snn.layers) + 1))
        for a, b in zip(fast.layers, loop.layers):
            h = a.window / steps
            fa, fb = torch.isfinite(a.offsets), torch.isfinite(b.offsets)
            assert torch.equal(fa, fb)
            assert float((a.offsets[fa] - b.offsets[fb]).abs().max()) < 1e-6 * h
            assert (a.early_spikes, a.forced, a.spikes) == (b.early_spikes, b.forced, b.spikes)
        assert torch.allclose(fast.logits, loop.logits, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_error_shrinks_with_dt_and_argmax_agrees(name):
    model, snn, x = converted(name)
    exact = snn.run(x)
    errors = []
    for dt in (0.02, 0.01, 0.005):
        res = snn.run_stepped(x, dt)
        assert res.dt == dt
        for layer, ticks in zip(res.layers, res.ticks[1:]):  # spikes sit on ticks
            k = layer.offsets / (layer.window / ticks)
            assert float((k - k.round()).abs().max()) < 1e-6
        errors.append(max(float((a.activations - b.activations).abs().max() / b.window)
                          for a, b in zip(res.layers, exact.layers)))
    assert errors[0] > errors[1] > errors[2]
    assert 1.4 < errors[0] / errors[1] < 2.9 and 1.4 < errors[1] / errors[2] < 2.9  # about proportional to dt
    fine = snn.run_stepped(x, steps=4096)
    with torch.no_grad():
        assert bool((fine.logits.argmax(1) == model(x).argmax(1)).all())


def test_stepped_detects_early_spikes():
    _, snn, x = converted("cnn", margin=-0.7)
    res = snn.run_stepped(x, steps=64)
    assert res.early_spikes > 0
    loop = snn.run_stepped(x, steps=64, method="loop")
    assert loop.early_spikes == res.early_spikes


def test_stepped_arguments_are_checked():
    _, snn, x = converted("mlp")
    for kwargs in ({}, {"dt": 0.1, "steps": 4}, {"dt": -1.0}, {"steps": 0}, {"steps": 4, "method": "nope"}):
        with pytest.raises(ValueError):
            snn.run_stepped(x, **kwargs)


@pytest.mark.parametrize("neuron", ["alpha", "b1"])
def test_traces_cross_threshold_at_the_spike(neuron):
    _, snn, x = converted("cnn", neuron=neuron)
    res = snn.run(x[:1])
    crossed = 0
    for n, layer in enumerate(snn.layers):
        acts = res.layers[n].activations[0].flatten()
        for flat in acts.argsort(descending=True)[:3].tolist():  # the most active neurons
            tr = snn.trace(x[:1], layer.name, flat, result=res)
            assert tr.layer == layer.name and tr.origin == layer.start
            assert not tr.early and not tr.forced
            scale = float(tr.input_weights.abs().sum() * tr.t_max + tr.alpha * tr.t_max + abs(tr.theta))
            v = float(tr.potential_at([tr.spike_time])[0])
            assert abs(v - tr.theta) < 1e-12 * scale
            before = tr.potential_at(torch.linspace(0, tr.spike_time, 200, dtype=torch.float64)[:-1])
            assert float(before.max()) < tr.theta  # first crossing
            crossed += 1
    assert crossed > 0
    # a neuron with activation 0 is forced at t_max (alpha) or silent (B1), and never reached θ
    zero = (res.layers[0].activations[0] == 0).nonzero()
    if len(zero):
        tr = snn.trace(x[:1], 0, tuple(zero[0].tolist()), result=res)
        assert float(tr.potential.max()) <= tr.theta + 1e-12
        assert tr.forced if neuron == "alpha" else tr.spike_time == float("inf")


def test_trace_is_continuous_with_kinks_at_inputs():
    _, snn, x = converted("mlp")
    tr = snn.trace(x[0], 1, 3)
    t = torch.linspace(0, tr.t_max, 4001, dtype=torch.float64)
    v = tr.potential_at(t)
    lipschitz = tr.alpha + float(tr.input_weights.abs().sum())  # no jump: |ΔV| ≤ (α + Σ|J|)·Δt
    assert float((v[1:] - v[:-1]).abs().max()) <= lipschitz * float(t[1] - t[0]) * (1 + 1e-9)
    slope = (v[1:] - v[:-1]) / (t[1:] - t[:-1])
    changes = (slope[1:] - slope[:-1]).abs() > 1e-6
    kinks = t[1:-1][changes]
    inputs = torch.cat([tr.input_times, torch.tensor([tr.t_min])])
    # every slope change is within one grid step of an input spike (or t_min)
    assert all(float((inputs - k).abs().min()) <= 2 * tr.t_max / 4000 for k in kinks)
    # between consecutive input spikes V is linear: its slope is α + Σ of the weights that arrived
    mid = (tr.input_times[:-1] + tr.input_times[1:]) / 2
    gap = tr.input_times[1:] - tr.input_times[:-1]
    checked = 0
    for m, w, g in zip(mid.tolist(), tr.input_weights.cumsum(0)[:-1].tolist(), gap.tolist()):
        if g < 1e-5:
            continue  # simultaneous inputs
        checked += 1
        eps = 1e-7
        s = float((tr.potential_at([m + eps]) - tr.potential_at([m - eps]))[0] / (2 * eps))
        assert s == pytest.approx(tr.alpha + w, rel=1e-5, abs=1e-5)
    assert checked > 5


def test_membrane_at_absolute_times_and_readout_trace():
    _, snn, x = converted("cnn")
    res = snn.run(x[:1])
    tr = snn.trace(x[:1], len(snn.layers), 2, result=res)  # the readout
    assert tr.theta is None
    v = float(snn.membrane(x[:1], snn.output.name, 2, [snn.decision_time], result=res)[0])
    assert v == pytest.approx(float(res.logits[0, 2]), rel=1e-9, abs=1e-12)
    assert float(tr.potential_at([tr.t_min])[0]) == pytest.approx(v, rel=1e-9, abs=1e-12)


def test_stepped_trace_converges_to_exact():
    _, snn, x = converted("cnn")
    gaps = []
    for steps in (16, 64, 256):
        tr = snn.trace(x[:1], 1, (2, 1, 1), steps=steps)
        gaps.append(float((tr.stepped_potential - tr.potential_at(tr.stepped_times)).abs().max()))
        assert tr.stepped_spike_time is not None
    assert gaps[0] > gaps[1] > gaps[2]


def test_trace_index_errors():
    _, snn, x = converted("mlp")
    with pytest.raises(KeyError):
        snn.trace(x[:1], "nope", 0)
    with pytest.raises(IndexError):
        snn.trace(x[:1], 0, 10_000)
    with pytest.raises(IndexError):
        snn.trace(x[:1], 0, (1, 2))


def test_spike_counts_per_model():
    model, alpha, x = converted("cnn")
    _, b1, _ = converted("cnn", neuron="b1")
    ra, rb = alpha.run(x), b1.run(x)
    for la, lb, comp in zip(ra.layers, rb.layers, ttfs_core.compare(model, alpha, x, ra)):
        assert la.spikes == la.neurons  # one spike per neuron
        assert lb.spikes == int((comp.ann > 0).sum())  # B1: only non-zero activations spike
    assert rb.spikes < ra.spikes


def test_stepped_trace_fires_at_its_first_tick_above_threshold():
    """The one-neuron tick recurrence of the trace and the network's clock simulation agree on the spike tick."""
    _, snn, x = converted("cnn")
    res = snn.run(x[:1])
    acts = res.layers[1].activations[0].flatten()
    for flat in acts.argsort(descending=True)[:5].tolist():
        tr = snn.trace(x[:1], 1, flat, result=res, steps=32)
        above = (tr.stepped_potential >= tr.theta).nonzero()
        first = float(tr.stepped_times[above[0]]) if len(above) else tr.t_max
        assert tr.stepped_spike_time == pytest.approx(first, rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# Layers with several inputs (MATH §5: a residual sum, a channel concatenation) and the gated ReLU6 neuron (MATH §2)
class _Branching(nn.Module):
    """conv → residual add → [ReLU6 branch ‖ 1×1 branch] concatenated → max pool → linear."""

    def __init__(self, gain: float):
        super().__init__()
        self.gain = gain
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.p, self.c3 = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 3, padding=1)
        self.fc, self.r6 = nn.Linear(8 * 8 * 8, 5), nn.ReLU6()

    def forward(self, x):
        a = torch.relu(self.c1(x))
        b = torch.relu(self.c2(a) + a)
        c = torch.relu(torch.cat([self.r6(self.c3(b) * self.gain), self.p(b)], 1))
        return self.fc(F.max_pool2d(c, 2).flatten(1))


@functools.cache
def branching(gain: float = 4.0, neuron: str = "alpha"):
    """The branching net converted (gain 40 drives many ReLU6 neurons into saturation), and 8 test inputs."""
    torch.manual_seed(0)
    model = _Branching(gain).double().eval()
    x = torch.rand(24, 3, 16, 16, dtype=torch.float64)
    return model, ttfs_core.convert(model, x[:16], input_range=(0, 1), neuron=neuron), x[16:]


def _layer(snn, op: str) -> tuple[int, ttfs_core.network.Layer]:
    return next((n, la) for n, la in enumerate(snn.layers) if la.op == op)


def _t_max(snn, source: int) -> float:
    return 1.0 if source < 0 else snn.layers[source].t_max


def test_branching_net_has_the_layers_under_test():
    _, snn, _ = branching()
    (_, add), (_, cat) = _layer(snn, "add"), _layer(snn, "cat")
    assert len(add.inputs) == 2 and len(cat.inputs) == 2
    assert [syn.channels for syn in cat.inputs] == [(0, 4), (4, 8)]
    assert cat.inputs[1].delay > 0  # the 1×1 branch skips the ReLU6 layer: its spikes wait for it
    assert any(la.clip is not None for la in snn.layers)


@pytest.mark.parametrize("gain", [4.0, 40.0])
@pytest.mark.parametrize("neuron", ["alpha", "b1"])
def test_fast_and_loop_agree_on_branching_and_relu6(gain, neuron):
    """Several inputs (each on its own clock when windows differ: dt) and gated neurons, tick for tick."""
    _, snn, x = branching(gain, neuron)
    gated = next(n for n, la in enumerate(snn.layers) if la.clip is not None)
    for kwargs in ({"steps": 8}, {"steps": 37}, {"dt": 0.05}, {"dt": 0.013}):
        fast = snn.run_stepped(x, **kwargs)
        loop = snn.run_stepped(x, method="loop", **kwargs)
        assert fast.ticks == loop.ticks
        for a, b in zip(fast.layers, loop.layers):
            h = a.window / fast.ticks[fast.layers.index(a) + 1]
            fa = torch.isfinite(a.offsets)
            assert torch.equal(fa, torch.isfinite(b.offsets)), (a.name, kwargs)
            assert float((a.offsets[fa] - b.offsets[fa]).abs().max()) < 1e-6 * h, (a.name, kwargs)
            assert (a.early_spikes, a.forced, a.spikes, a.saturated) == (b.early_spikes, b.forced, b.spikes,
                                                                         b.saturated), (a.name, kwargs)
        assert (fast.layers[gated].saturated > 0) == (gain > 10)
        assert torch.allclose(fast.logits, loop.logits, rtol=1e-9, atol=1e-12)


def _neurons(snn, res, n: int, per_part: int = 3) -> list[tuple[int, ...]]:
    """The most active neurons of every channel part of layer n (each part is driven by other synapses), and a
    silent one."""
    layer = snn.layers[n]
    acts = res.layers[n].activations[0]
    parts = {syn.channels or (0, layer.shape[0]) for syn in layer.inputs}
    out = []
    for lo, hi in sorted(parts):
        part = acts[lo:hi]
        for flat in part.flatten().argsort(descending=True)[:per_part].tolist():
            c, *rest = torch.unravel_index(torch.tensor(flat), part.shape)
            out.append((lo + int(c), *(int(r) for r in rest)))
    zero = (acts == 0).nonzero()
    if len(zero):
        out.append(tuple(zero[0].tolist()))
    return out


def _routed_activations(snn, res, syn) -> torch.Tensor:
    """Decoded activations of a synapse's source (x = t_max − t, the input layer's x̂ = 1 − t), routed."""
    a = 1.0 - res.input_times[:1] if syn.source < 0 else res.layers[syn.source].activations[:1]
    return syn.route_activations(a)[0]


@pytest.mark.parametrize("op", ["add", "cat"])
@pytest.mark.parametrize("neuron", ["alpha", "b1"])
def test_branching_traces_cross_threshold_at_the_spike(op, neuron):
    _, snn, x = branching(4.0, neuron)
    n, layer = _layer(snn, op)
    res = snn.run(x[:1])
    crossed = 0
    for idx in _neurons(snn, res, n):
        tr = snn.trace(x[:1], layer.name, idx, result=res)
        assert tr.origin == layer.start and tr.t_min == layer.in_window and tr.multi_input
        assert not tr.early and not tr.saturated and not tr.gated
        if float(res.layers[n].activations[(0, *idx)]) == 0:
            assert float(tr.potential.max()) <= tr.theta + 1e-12
            assert tr.forced if neuron == "alpha" else tr.spike_time == float("inf")
            continue
        scale = float(tr.input_weights.abs().sum() * tr.t_max + tr.alpha * tr.t_max + abs(tr.theta))
        assert abs(float(tr.potential_at([tr.spike_time])[0]) - tr.theta) < 1e-12 * scale
        before = tr.potential_at(torch.linspace(0, tr.spike_time, 200, dtype=torch.float64)[:-1])
        assert float(before.max()) < tr.theta  # first crossing
        crossed += 1
    assert crossed >= 3


@pytest.mark.parametrize("op", ["add", "cat"])
def test_branching_trace_inputs_come_from_their_layers_delayed(op):
    """Each input names its source layer and its synapses' delay t_min − t_max(source); it arrives at t_min − x,
    x the source's decoded activation; only the synapses driving the neuron's channel contribute."""
    _, snn, x = branching()
    n, layer = _layer(snn, op)
    res = snn.run(x[:1])
    for idx in _neurons(snn, res, n, per_part=2):
        tr = snn.trace(x[:1], layer.name, idx, result=res)
        driving = [k for k, syn in enumerate(layer.inputs)
                   if syn.channels is None or syn.channels[0] <= idx[0] < syn.channels[1]]
        assert sorted(set(tr.input_synapses.tolist())) == driving
        assert tr.input_times.numel() == sum(layer.inputs[k].J[0].numel() for k in driving)
        assert tr.input_synapses.shape == tr.input_layers.shape == tr.input_delays.shape == tr.input_times.shape
        assert tr.synapse_names == tuple("input" if s.source < 0 else snn.layers[s.source].name
                                         for s in layer.inputs)
        for k in driving:
            syn = layer.inputs[k]
            mine = tr.input_synapses == k
            assert bool((tr.input_layers[mine] == syn.source).all())
            delay = layer.t_min - _t_max(snn, syn.source)
            assert torch.allclose(tr.input_delays[mine], torch.full_like(tr.input_delays[mine], delay),
                                  rtol=0, atol=1e-12)
            real = mine & (tr.input_sources >= 0)
            acts = _routed_activations(snn, res, syn).flatten()[tr.input_sources[real]]
            assert torch.allclose(tr.t_min - tr.input_times[real], acts, rtol=0, atol=1e-12)
            padded = mine & (tr.input_sources < 0)
            assert bool((tr.input_times[padded] == tr.t_min).all())  # x = 0 arrives at t_min
        if op == "cat":  # a concatenation: a neuron hears only the branch that makes its channel
            assert len(driving) == 1
            source = layer.inputs[driving[0]].source
            assert tr.input_names() == [snn.layers[source].name] * tr.input_times.numel()
    delays = {syn.source: syn.delay for syn in layer.inputs}
    if op == "cat":  # the 1×1 branch reads the residual layer, a window earlier than the ReLU6 branch
        assert sorted(delays.values())[0] == 0.0 and sorted(delays.values())[1] > 0


@pytest.mark.parametrize("op", ["add", "cat"])
@pytest.mark.parametrize("neuron", ["alpha", "b1"])
def test_branching_membrane_at_t_min_is_the_weighted_sum(op, neuron):
    """V(t_min) = α·in_window + Σ_k Σ_j J_kj x_kj (α-model; B1: no α term), from the sources' decoded activations
    through each synapse's own convolution, placed on the channels it drives."""
    _, snn, x = branching(4.0, neuron)
    n, layer = _layer(snn, op)
    res = snn.run(x[:1])
    total = torch.zeros(1, *layer.shape, dtype=torch.float64)
    for syn in layer.inputs:
        part = F.conv2d(_routed_activations(snn, res, syn)[None], syn.J, None, **syn.conv)
        lo, hi = syn.channels or (0, layer.shape[0])
        total[:, lo:hi] += part
    base = 0.0 if neuron == "b1" else snn.alpha * layer.in_window
    for idx in _neurons(snn, res, n):
        tr = snn.trace(x[:1], layer.name, idx, result=res)
        expected = base + float(total[(0, *idx)])
        assert float(tr.potential_at([tr.t_min])[0]) == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_relu6_traces_saturate_at_t_min():
    """A gated neuron fires at max(t_min, its crossing): saturated exactly when V(t_min) ≥ θ, where the ANN
    activation is the clip."""
    model, snn, x = branching(40.0)
    n, layer = next((n, la) for n, la in enumerate(snn.layers) if la.clip is not None)
    res = snn.run(x[:1])
    assert res.layers[n].saturated > 0
    acts, _ = snn.ann_forward(x[:1])
    offs = res.layers[n].offsets[0]
    saturated = (offs == 0).nonzero()[:4].tolist()
    free = ((offs > 0) & (offs < layer.window)).nonzero()[:4].tolist()
    assert saturated and free
    stepped_saturated = 0
    for idx in saturated + free:
        tr = snn.trace(x[:1], layer.name, tuple(idx), result=res, steps=64)
        assert tr.gated and not tr.early and tr.input_layers.unique().tolist() == [layer.inputs[0].source]
        # with a clock: saturated when V at the tick of t_min has reached θ, and it fires there
        in_ticks = 64
        assert tr.stepped_saturated == bool(tr.stepped_potential[in_ticks] >= tr.theta)
        if tr.stepped_saturated:
            assert tr.stepped_spike_time == pytest.approx(tr.t_min, rel=1e-12)
        else:
            assert tr.stepped_spike_time > tr.t_min
        v_min = float(tr.potential_at([tr.t_min])[0])
        if idx in saturated:
            assert tr.saturated and tr.spike_time == tr.t_min and v_min >= tr.theta
            assert float(acts[n][(0, *idx)]) == pytest.approx(layer.clip, rel=1e-12)
            stepped_saturated += tr.stepped_saturated
        else:
            assert not tr.saturated and v_min < tr.theta
            scale = float(tr.input_weights.abs().sum() * tr.t_max + tr.alpha * tr.t_max + abs(tr.theta))
            assert abs(float(tr.potential_at([tr.spike_time])[0]) - tr.theta) < 1e-12 * scale
    assert stepped_saturated > 0
    assert snn.trace(x[:1], 0, 0, result=res).saturated is False  # a plain ReLU layer never saturates


@pytest.mark.parametrize("op", ["add", "cat"])
def test_branching_stepped_trace_converges_and_matches_the_clock(op):
    _, snn, x = branching()
    n, layer = _layer(snn, op)
    res = snn.run(x[:1])
    neurons = _neurons(snn, res, n, per_part=1)
    gaps = []  # the largest gap between the clock-driven and the exact potential over the neurons
    for steps in (16, 64, 256):
        traces = [snn.trace(x[:1], layer.name, idx, result=res, steps=steps) for idx in neurons]
        gaps.append(max(float((tr.stepped_potential - tr.potential_at(tr.stepped_times)).abs().max())
                        for tr in traces))
    assert gaps[0] > gaps[1] > gaps[2]
    # the trace's one-neuron tick recurrence fires at the clock simulation's tick, also when the inputs' windows
    # differ (dt: every source on its own clock, delayed inputs seen at the neuron's next tick)
    for kwargs in ({"steps": 32}, {"dt": 0.05}):
        for idx in neurons:
            tr = snn.trace(x[:1], layer.name, idx, result=res, **kwargs)
            scale = float(tr.input_weights.abs().sum() * tr.t_max + tr.alpha * tr.t_max + abs(tr.theta))
            above = (tr.stepped_potential >= tr.theta - 1e-12 * scale).nonzero()
            first = float(tr.stepped_times[above[0]]) if len(above) else tr.t_max
            assert tr.stepped_spike_time == pytest.approx(min(first, tr.t_max), rel=1e-9, abs=1e-12), (idx, kwargs)
