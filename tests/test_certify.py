"""The fast early-spike certificate (MATH §2) against brute-force oracles.

- Network level: every hidden neuron's spike, as the simulator reports it, is the first crossing of its exact
  piecewise-linear V(t) found by evaluating V at every input segment (no search code shared with the simulator);
  the early spikes reported are exactly the neurons whose V reaches θ before t_min.
- Tensor level: a neuron the certificate settles never reaches θ before t_min (checked at every kink), and on
  random layers the bound is tight enough to settle almost every neuron.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import ttfs_core
from tests.nets import randomise_bn
from ttfs_core.sim.certify import STAGES, certify
from ttfs_core.sim.trace import neuron_trace


def small_cnn() -> nn.Module:
    """Zero padding, BatchNorm after the ReLU (border-dependent bias maps), a negative BN scale before max
    pooling, and a dense layer: the cases where early-spike bookkeeping is easiest to get wrong."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(4), nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(5),
        nn.Flatten(), nn.Linear(5 * 4 * 4, 12), nn.ReLU(), nn.Linear(12, 3),
    )
    return randomise_bn(model, seed=3).double().eval()


def first_crossing_oracle(trace) -> tuple[float, float]:
    """The first time V reaches θ, by brute force over every input segment of the exact V(t) (relative to the
    neuron's start), and the largest V − θ before t_min. +inf if V never reaches θ by t_max."""
    marks = torch.cat([torch.tensor([0.0, trace.t_min, trace.t_max], dtype=torch.float64),
                       trace.input_times.to(torch.float64)])
    grid = torch.unique(marks.clamp(0, trace.t_max))
    v = trace.potential_at(grid).double()
    theta = trace.theta
    before = grid <= trace.t_min
    gap = float((v[before] - theta).max())
    if theta <= 0:
        return 0.0, gap
    hit = (v >= theta).nonzero()
    if not len(hit):
        return float("inf"), gap
    k = int(hit[0])
    t0, t1, v0, v1 = float(grid[k - 1]), float(grid[k]), float(v[k - 1]), float(v[k])
    return t0 + (theta - v0) / (v1 - v0) * (t1 - t0), gap


CASES = [("alpha", "sum", -0.5), ("alpha", "sum", 0.5), ("b1", "sum", -0.5), ("alpha", "positive", -0.5)]


@pytest.mark.parametrize("neuron,rescale,margin", CASES)
def test_reported_spikes_are_brute_force_first_crossings(neuron, rescale, margin):
    model = small_cnn()
    g = torch.Generator().manual_seed(0)
    calib = torch.rand(64, 2, 8, 8, generator=g, dtype=torch.float64)
    x = torch.rand(3, 2, 8, 8, generator=g, dtype=torch.float64) * 1.2  # a little beyond the calibration range
    snn = ttfs_core.convert(model, calib, margin=margin, neuron=neuron, rescale=rescale, input_range=(0.0, 1.0))
    res = snn.run(x)
    early_total = sum(assert_first_crossings(snn, x, res, n) for n in range(len(snn.layers)))
    assert (early_total > 0) == (margin < 0)  # the negative margin does provoke early spikes; 0.5 does not


def assert_first_crossings(snn, x, res, n: int) -> int:
    """Every spike of hidden layer n, for every sample of x, is the brute-force first crossing of its exact V(t)
    (`first_crossing_oracle`), early spikes included; a neuron that never crosses is forced at t_max (α-model) or
    silent (B1). Returns how many neurons fire early by the oracle."""
    layer, lr = snn.layers[n], res.layers[n]
    early_total = 0
    for b in range(x.shape[0]):
        single = res if b == 0 else _shifted(res, b)
        for flat in range(layer.neurons):
            idx = tuple(int(i) for i in np.unravel_index(flat, layer.shape))
            tr = neuron_trace(snn, x[b:b + 1], n, idx, result=single)
            t_star, gap = first_crossing_oracle(tr)
            off = float(lr.offsets[(b, *idx)])
            scale = abs(tr.theta) + float(tr.input_weights.abs().sum()) * tr.t_min + 1.0
            if abs(gap) < 1e-9 * scale:
                continue  # V touches θ within rounding before t_min: either answer is right
            oracle_early = t_star < tr.t_min
            assert (off < 0) == oracle_early, (layer.name, b, idx, off, t_star - tr.t_min)
            early_total += oracle_early
            if t_star <= tr.t_max:
                assert off == pytest.approx(t_star - tr.t_min, abs=1e-9 * scale), (layer.name, b, idx)
            elif snn.neuron.name == "alpha":
                assert off == pytest.approx(layer.window), (layer.name, b, idx)  # forced at t_max
            else:
                assert off == float("inf")  # B1: activation 0 does not spike
    assert lr.early_spikes == int((lr.offsets < 0).sum())
    assert sum(c for _, c in lr.certificate) + lr.searched == lr.neurons
    return early_total


def _shifted(res, b):
    """The simulation result seen from sample b (traces read the first sample of a result)."""
    from ttfs_core.sim.result import LayerResult, SimResult

    layers = [LayerResult(lr.name, lr.op, lr.offsets[b:b + 1], lr.t_min, lr.t_max, lr.window, lr.early_spikes,
                          lr.early_arrivals, lr.forced, lr.spikes) for lr in res.layers]
    return SimResult(res.logits[b:b + 1], layers, res.input_times[b:b + 1], 0, res.decision_time)


def test_default_is_the_papers_rescaling_and_exact():
    model = small_cnn()
    calib = torch.rand(64, 2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    snn = ttfs_core.convert(model, calib)
    assert snn.rescale.name == "sum"
    fast = ttfs_core.convert(model, calib, rescale="positive")
    assert snn.smallest_window > fast.smallest_window  # the positive-part rule shrinks time with depth
    assert snn.decision_time == pytest.approx(1 + sum(snn.windows))
    res = snn.run(calib[:16])
    with torch.no_grad():
        ref = model(calib[:16])
    assert float((res.logits - ref).abs().max() / ref.abs().max()) < 1e-9
    assert res.early_spikes == 0
    assert dict(res.certificate).keys() == set(STAGES) and res.searched + sum(dict(res.certificate).values()) == \
        res.neurons


# --- tensor level --------------------------------------------------------------------------------------------
def exact_early(J, theta, x, alpha, in_window):
    """Brute force: V at t_min − s for s = 0, every kink x_j and B_(n−1) (V is linear in between). Early if V
    reaches θ at some s > 0, or exceeds it at s = 0 (then also just before). Returns that and max_s V − θ.

    Shape: J (O, K), theta (O,), x (B, K) -> (B, O) each."""
    s = torch.cat([torch.zeros_like(x[:, :1]), x, torch.full_like(x[:, :1], in_window)], 1)  # (B, K+2)
    v = alpha * (in_window - s)[:, None, :] + torch.einsum(
        "ok,bsk->bos", J, (x[:, None, :] - s[:, :, None]).clamp(min=0))
    above = v - theta[None, :, None]
    at_zero = s[:, None, :] == 0
    reach = torch.where(at_zero, above > 0, above >= 0)
    return reach.any(2), above.amax(2)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), fan_in=st.integers(1, 40), b1=st.booleans(), sparse=st.floats(0, 0.9))
def test_certified_neurons_never_fire_early(seed, fan_in, b1, sparse):
    """Soundness on random dense layers: a neuron the certificate settles cannot reach θ before t_min."""
    g = torch.Generator().manual_seed(seed)
    out, batch, in_window = 7, 5, float(torch.rand(1, generator=g) * 4 + 0.1)
    W = torch.randn(out, fan_in, generator=g, dtype=torch.float64) / fan_in ** 0.5
    x = torch.rand(batch, fan_in, generator=g, dtype=torch.float64) * in_window
    x = torch.where(torch.rand(batch, fan_in, generator=g, dtype=torch.float64) < sparse, 0.0, x)
    alpha = 0.0 if b1 else 1.0
    J = W if b1 else W * (alpha / (1 - W.sum(1).clamp(max=0.99)))[:, None]
    v_end = alpha * in_window + x @ J.T
    theta = v_end.max(0).values + torch.randn(out, generator=g, dtype=torch.float64).abs() * 0.5 - 0.2
    cert = certify(J, theta, None, x, v_end, in_window, alpha, search_budget=0)
    early, _ = exact_early(J, theta, x, alpha, in_window)
    assert not bool((early & ~cert.uncertified).any())
    assert sum(cert.settled) + cert.searched == v_end.numel()


def test_certificate_settles_almost_everything_with_slack():
    """With the slack a margin of 0.5 gives (θ well above V on the whole input window), 2–4 cells settle every
    neuron of a wide random layer whose positive and negative weight sums are large and nearly cancel."""
    g = torch.Generator().manual_seed(5)
    out, fan_in, batch, in_window = 64, 512, 16, 3.0
    W = torch.randn(out, fan_in, generator=g, dtype=torch.float64) * 0.2  # Σ|W| ≈ 80, Σ W ≈ 0
    x = (torch.randn(batch, fan_in, generator=g, dtype=torch.float64) * 0.6).clamp(0, in_window)
    J = W * (1 / (1 - W.sum(1).clamp(max=0.99)))[:, None]
    v_end = in_window + x @ J.T
    _, highest = exact_early(J, torch.zeros(out, dtype=torch.float64), x, 1.0, in_window)
    theta = 1.5 * highest.max(0).values.abs()  # 1.5× the highest V before t_min
    cert = certify(J, theta, None, x, v_end, in_window, 1.0, search_budget=0)
    assert cert.searched == 0
    early, _ = exact_early(J, theta, x, 1.0, in_window)
    assert not bool(early.any())


def test_hand_computed_early_spike_is_flagged():
    """One neuron, two inputs: an excitatory input from the start and an inhibitory one arriving 0.2 τ_c before
    t_min. V(t_min) = 3.5; V keeps rising after the inhibition, so θ = 3.3 is crossed 0.13 τ_c early."""
    J = torch.tensor([[3.0, -2.5]], dtype=torch.float64)
    x = torch.tensor([[1.0, 0.2]], dtype=torch.float64)  # input 0 drove for 1.0 τ_c, input 1 for 0.2 τ_c
    in_window, alpha = 1.0, 1.0
    v_end = alpha * in_window + x @ J.T  # 1 + 3 − 0.5 = 3.5
    # V(t_min − s) = α(1 − s) + 3(1 − s) − 2.5 (0.2 − s)⁺ = 3.5 − 1.5 s on [0, 0.2], then 4(1 − s)
    theta = torch.tensor([3.6], dtype=torch.float64)
    assert certify(J, theta, None, x, v_end, in_window, alpha, search_budget=0).searched == 0  # never reaches 3.6
    theta = torch.tensor([3.3], dtype=torch.float64)  # 3.5 − 1.5 s on [0, 0.2]: reached at s = 0.13, before t_min
    assert certify(J, theta, None, x, v_end, in_window, alpha, search_budget=0).searched == 1
    early, _ = exact_early(J, theta, x, alpha, in_window)
    assert bool(early.all())


def test_tent_deviations_match_the_cell_by_cell_sum():
    """Each cell's deviation equals Σ over the inputs strictly inside that cell of |J⁻| (x − a)(c − x)/(c − a),
    computed here by locating every input's cell; levels include repeated values (empty cells) and inputs
    exactly on a level (no tent)."""
    from ttfs_core.records import Synapses
    from ttfs_core.sim.certify import _Block, tent_deviations

    g = torch.Generator().manual_seed(11)
    batch, fan_in, out = 3, 9, 4
    x = torch.rand(batch, fan_in, generator=g, dtype=torch.float64) * 2
    levels = torch.tensor([[0.0, 0.5, 0.5, 1.0, 2.0], [0.0, 0.3, 0.9, 0.9, 2.0], [0.0, 0.0, 1.0, 1.5, 2.0]],
                          dtype=torch.float64)
    x[0, 0], x[1, 1], x[2, 2] = 0.5, 0.9, 1.0  # on a level
    neg = torch.rand(out, fan_in, generator=g, dtype=torch.float64)
    block = _Block(None, None, (Synapses(-1, (), (fan_in,), -neg, None, J=-neg),), (x,), (out,))
    got = tent_deviations(block, [neg], levels)
    for k in range(1, levels.shape[1]):
        want = torch.zeros(batch, out, dtype=torch.float64)
        for b in range(batch):
            a, c = float(levels[b, k - 1]), float(levels[b, k])
            for j in range(fan_in):
                xj = float(x[b, j])
                if a < xj < c:
                    want[b] += neg[:, j] * (xj - a) * (c - xj) / (c - a)
        torch.testing.assert_close(got[k - 1], want, rtol=1e-12, atol=1e-15)


def test_cached_weight_sums_follow_the_record():
    """The certificate's J-derived constants (`Synapses.J_negative`, `J_row_sums`) equal their definitions, are
    computed once per record, and a record made with other J (weight quantisation does this) has its own; pickling
    drops them."""
    import pickle
    from dataclasses import replace

    from ttfs_core.records import Synapses

    g = torch.Generator().manual_seed(5)
    J = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64)
    syn = Synapses(-1, (), (3, 8, 8), J, {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "groups": 1}, J=J)
    torch.testing.assert_close(syn.J_negative, (-J).clamp(min=0), rtol=0, atol=0)
    neg, total = syn.J_row_sums
    torch.testing.assert_close(neg, (-J).clamp(min=0).sum((1, 2, 3)), rtol=0, atol=0)
    torch.testing.assert_close(total, J.abs().sum((1, 2, 3)), rtol=0, atol=0)
    assert syn.J_negative is syn.J_negative  # once per record
    other = replace(syn, J=2 * J)
    torch.testing.assert_close(other.J_row_sums[1], 2 * total, rtol=0, atol=0)
    assert "J_negative" not in vars(pickle.loads(pickle.dumps(syn)))


@pytest.mark.parametrize("size,kernel,stride,padding,dilation", [
    (1, 3, 1, 1, 1), (1, 3, 2, 1, 1), (2, 5, 1, 2, 1), (3, 3, 1, 1, 1), (4, 3, 2, 2, 2), (5, 7, 1, 3, 1)])
def test_taps_on_the_padding_are_left_out_exactly(size, kernel, stride, padding, dilation):
    """`fanin.reachable_taps` leaves out only kernel taps that fall on the zero padding for every listed neuron (a
    3×3 kernel on a 1×1 map keeps its centre only): each neuron's sum over its kept inputs is its sum over the whole
    fan-in."""
    from ttfs_core.records import Synapses
    from ttfs_core.sim.fanin import gather_rows, inside_taps, pad_input

    g = torch.Generator().manual_seed(size * 100 + kernel)
    x = torch.rand(2, 3, size, size, generator=g, dtype=torch.float64)
    w = torch.randn(4, 3, kernel, kernel, generator=g, dtype=torch.float64)
    conv = {"stride": (stride, stride), "padding": (padding, padding), "dilation": (dilation, dilation), "groups": 1}
    out = F.conv2d(x, w, None, **conv)
    syn = Synapses(-1, (), tuple(x.shape[1:]), w, conv, J=w)
    shape = tuple(out.shape[1:])
    padded = [pad_input(syn, x, 0.0)]
    for picked in (torch.arange(out.numel()), torch.tensor([0, out.numel() - 1])):  # all neurons, two corners
        idx = torch.unravel_index(picked, out.shape)
        keeps, fan = inside_taps([syn], padded, idx)
        values, weights, _ = gather_rows([syn], shape, padded, [w], idx, keeps)
        assert values.shape[1] == weights.shape[1] == fan <= w[0].numel()
        torch.testing.assert_close((values * weights).sum(1), out[idx], rtol=1e-12, atol=1e-12)
        # every tap left out reads the padding for every listed neuron
        whole, _, _ = gather_rows([syn], shape, [pad_input(syn, x, float("nan"))], [w], idx)
        if keeps[0] is not None:
            assert bool(torch.isnan(whole[:, ~keeps[0]]).all())
    if size == 1 and kernel == 3 and padding == 1:
        assert fan == 3  # the centre tap of each input channel


def test_neurons_are_gathered_over_the_inputs_that_drive_their_channel():
    """A concatenation's inputs each drive their own channels: `fanin.driving_groups` puts each listed neuron with
    the inputs of its channel, `largest_fan_in` counts one neuron's inputs, and a neuron's sum over its group's
    gathered inputs is its sum over the whole layer's (where the other inputs weigh 0)."""
    from ttfs_core.records import Synapses
    from ttfs_core.sim.dynamics import weighted_sum
    from ttfs_core.sim.fanin import driving_groups, gather_rows, largest_fan_in, pad_input

    g = torch.Generator().manual_seed(3)
    conv = {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "groups": 1}
    xs = [torch.rand(2, c, 4, 4, generator=g, dtype=torch.float64) for c in (3, 5, 2)]
    ws = [torch.randn(o, x.shape[1], 3, 3, generator=g, dtype=torch.float64) for o, x in zip((4, 2, 6), xs)]
    channels = [(0, 4), (4, 6), None]  # two slices and one input that drives every channel
    inputs = [Synapses(-1, (), tuple(x.shape[1:]), w, conv, channels=ch, J=w) for x, w, ch in zip(xs, ws, channels)]
    shape = (6, 4, 4)
    whole = weighted_sum(inputs, xs, ws, shape)
    assert largest_fan_in(inputs, shape) == 9 * (5 + 2)  # channels 4, 5: input 1 (5 channels) and input 2 (2)
    idx = torch.unravel_index(torch.arange(whole.numel()), whole.shape)
    padded = [pad_input(syn, x, 0.0) for syn, x in zip(inputs, xs)]
    groups = driving_groups(inputs, idx)
    assert sorted(ks for _, ks in groups) == [[0, 2], [1, 2]]
    for rows, ks in groups:
        part = tuple(i[rows] for i in idx)
        values, weights, _ = gather_rows([inputs[k] for k in ks], shape, [padded[k] for k in ks],
                                         [ws[k] for k in ks], part)
        torch.testing.assert_close((values * weights).sum(1), whole[part], rtol=1e-12, atol=1e-12)


def test_neurons_at_their_threshold_at_t_min_go_straight_to_the_search(monkeypatch):
    """Every cell bound includes v(0) = V(t_min): a neuron whose V(t_min) is within the rounding allowance of θ (a
    layer whose window is short beside it) can never be certified, so no stage computes a weighted sum for it."""
    from ttfs_core.sim import certify as certify_module

    g = torch.Generator().manual_seed(4)
    out, fan_in, batch, in_window = 6, 30, 4, 1.0
    W = torch.randn(out, fan_in, generator=g, dtype=torch.float64) * 0.2
    x = torch.rand(batch, fan_in, generator=g, dtype=torch.float64) * in_window
    J = W * (1 / (1 - W.sum(1).clamp(max=0.99)))[:, None]
    v_end = in_window + x @ J.T
    _, highest = exact_early(J, torch.zeros(out, dtype=torch.float64), x, 1.0, in_window)
    theta = 2 * highest.amax(0).abs() + 1.0  # far above V before t_min: settled without a weighted sum
    v_end[:, 0] = theta[0]  # neuron 0: V(t_min) = θ in every sample
    sums = []
    real = certify_module.weighted_sum
    monkeypatch.setattr(certify_module, "weighted_sum", lambda *a: sums.append(1) or real(*a))
    cert = certify(J, theta, None, x, v_end, in_window, 1.0, search_budget=0)
    assert bool(cert.uncertified[:, 0].all()) and not bool(cert.uncertified[:, 1:].any())
    assert sum(cert.settled) + cert.searched == v_end.numel()
    assert sums == []  # before, a stage summed over neuron 0's block for every sample, in vain
