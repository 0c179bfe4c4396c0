"""Time-stepped simulation and membrane traces, with the exact simulator and the ReLU network as oracles."""

from __future__ import annotations

import pytest
import torch

import ttfs_core

from .test_core import converted


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
    v = float(snn.membrane(x[:1], snn.output.name, 2, [snn.decision_latency], result=res)[0])
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
