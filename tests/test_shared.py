"""Sums shared by the readers of one source (`ttfs_core.sim.shared`, MATH §2) against brute-force oracles.

- Network level: on a small DenseNet (every `relu1` and transition layer reads its block through shared sums), every
  spike of those layers is the brute-force first crossing of its exact V(t), early spikes included; the run equals
  the one without shared sums and, at a positive margin, the ReLU network.
- Tensor level: a neuron whose part the shared sums settle never reaches θ before t_min, with factors of both signs;
  a factor is accepted only where J = d · K holds to rounding.
"""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

import ttfs_core
from tests.nets import randomise_bn
from tests.test_certify import assert_first_crossings, exact_early
from ttfs_core import network
from ttfs_core.records import Synapses
from ttfs_core.sim import layer as sim_layer
from ttfs_core.sim import shared as shared_mod
from ttfs_core.sim.shared import FACTOR_ULPS, Shared, certify_parts, potential

CONV = {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "groups": 1}


def tiny_densenet() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.DenseNet(growth_rate=4, block_config=(3, 2), num_init_features=6, bn_size=2,
                                        num_classes=3)
    return randomise_bn(model, seed=1).double().eval()  # some BatchNorm scales negative: factors of both signs


class _NoSharing:
    """`Shared` that never finds parts nor known arrivals: every layer computes its own."""

    def __init__(self, *args):
        pass

    def parts(self, *args):
        return None

    def arrival(self, layer, syn, src, compute):
        return compute()

    def release(self, n):
        pass


def _run(snn, x, sharing: bool, monkeypatch):
    with monkeypatch.context() as m:
        if not sharing:
            m.setattr(network, "Shared", _NoSharing)
        return snn.run(x)


@pytest.mark.parametrize("neuron,margin", [("alpha", -0.5), ("b1", -0.5), ("alpha", 0.5)])
def test_parts_layers_spike_at_brute_force_first_crossings(neuron, margin, monkeypatch):
    model = tiny_densenet()
    g = torch.Generator().manual_seed(0)
    calib = torch.rand(32, 3, 16, 16, generator=g, dtype=torch.float64)
    x = torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64) * 1.2
    snn = ttfs_core.convert(model, calib, margin=margin, neuron=neuron)
    calls = []
    real = sim_layer.certify_parts
    monkeypatch.setattr(sim_layer, "certify_parts", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    res = _run(snn, x, True, monkeypatch)
    parts_layers = [n for n, layer in enumerate(snn.layers) if len(layer.inputs) > 1]
    assert len(calls) == len(parts_layers) == 5  # two relu1 per block but the first, the transition, the last

    alone = _run(snn, x, False, monkeypatch)  # the same network, every layer on its own sums
    for a, b in zip(res.layers, alone.layers):
        assert torch.equal(a.offsets < 0, b.offsets < 0), a.name
        finite = torch.isfinite(b.offsets)
        assert torch.equal(torch.isfinite(a.offsets), finite)
        torch.testing.assert_close(a.offsets[finite], b.offsets[finite], rtol=1e-9, atol=1e-9)
    if margin > 0:  # inside the calibration range: the ReLU network's logits, no early spike
        inside = _run(snn, calib[:8], True, monkeypatch)
        with torch.no_grad():
            ref = model(calib[:8])
        assert float((inside.logits - ref).abs().max() / ref.abs().max()) < 1e-9
        assert inside.early_spikes == 0

    early_total = sum(assert_first_crossings(snn, x, res, n) for n in parts_layers)
    assert (early_total > 0) == (margin < 0)


def _reader(xs, kernels, factors, in_window, alpha, g):
    """A layer of parts over sources `xs` through kernels `kernels` scaled per channel by `factors`, with its V(t_min)
    and thresholds near its highest potential before t_min (some neurons fire early)."""
    inputs, lo = [], 0
    for k, (x, K, d) in enumerate(zip(xs, kernels, factors)):
        J = d.reshape(-1, 1, 1, 1) * K
        inputs.append(Synapses(k, (), tuple(x.shape[1:]), J, CONV, channels=(lo, lo + len(d)), J=J, in_window=1.0))
        lo += len(d)
    shape = (lo, *xs[0].shape[2:])
    layer = types.SimpleNamespace(inputs=tuple(inputs), shape=shape, in_window=in_window)
    v_end = alpha * in_window + torch.cat([F.conv2d(x, syn.J, None, **CONV) for x, syn in zip(xs, inputs)], 1)
    theta = v_end.amax(0) + torch.randn(shape, generator=g, dtype=torch.float64).abs() * 0.3 - 0.1
    return layer, v_end, theta


def _brute_force_early(layer, xs, theta, alpha):
    """Per neuron, whether V reaches θ before t_min (`tests.test_certify.exact_early` on its part's kernel windows).
    Shape: -> (B, *shape) bool."""
    out = []
    for syn, x in zip(layer.inputs, xs):
        lo, hi = syn.channels
        cols = F.unfold(x, 3, padding=1)  # (B, C·9, positions)
        J = syn.J.flatten(1)
        early = torch.stack([exact_early(J, theta[lo:hi].flatten(1)[:, p], cols[:, :, p], alpha, layer.in_window)[0]
                             for p in range(cols.shape[2])], 2)
        out.append(early.reshape(x.shape[0], hi - lo, *x.shape[2:]))
    return torch.cat(out, 1)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), b1=st.booleans(), sparse=st.floats(0, 0.8))
def test_neurons_settled_by_shared_sums_never_fire_early(seed, b1, sparse):
    """Two readers of the same two sources, each through its own factors (both signs): the second reads the sums
    the first computed. No neuron either settles can reach θ before t_min."""
    g = torch.Generator().manual_seed(seed)
    alpha, in_window = (0.0 if b1 else 1.0), 1.5
    xs = []
    for c in (3, 2):
        x = torch.rand(4, c, 4, 4, generator=g, dtype=torch.float64)
        xs.append(torch.where(torch.rand(x.shape, generator=g, dtype=torch.float64) < sparse, 0.0, x))
    kernels = [torch.randn(o, x.shape[1], 3, 3, generator=g, dtype=torch.float64) * 0.3 for o, x in zip((5, 3), xs)]
    srcs = [torch.zeros(1), torch.zeros(1)]  # the sources' offsets: only their identity keys the shared sums
    shared = Shared([-1, 1, 1])  # sources 0 and 1 (index m + 1), last read by reader 1
    for reader in range(2):
        factors = [torch.randn(len(K), generator=g, dtype=torch.float64) for K in kernels]
        layer, v_end, theta = _reader(xs, kernels, factors, in_window, alpha, g)
        parts = shared.parts(layer, srcs, xs)
        assert parts is not None and all(p.source.syn.source == k for k, p in enumerate(parts))
        torch.testing.assert_close(potential(parts, alpha * in_window), v_end, rtol=1e-12, atol=1e-12)
        cert = certify_parts(parts, layer.inputs, xs, theta, v_end, in_window, alpha, search_budget=0)
        early = _brute_force_early(layer, xs, theta, alpha)
        assert not bool((early & ~cert.uncertified).any())
        assert sum(cert.settled) + cert.searched == v_end.numel()
        shared.release(reader)
    assert not shared._sources  # let go after the last reader


def test_a_factor_is_accepted_only_where_the_weights_are_scaled_copies():
    g = torch.Generator().manual_seed(2)
    K = torch.randn(4, 3, 3, 3, generator=g)
    d = torch.tensor([2.0, -0.5, 0.0, 1.25])
    factor = shared_mod._factor(d.reshape(-1, 1, 1, 1) * K, K)
    torch.testing.assert_close(factor, d, rtol=1e-6, atol=0)
    off = d.reshape(-1, 1, 1, 1) * K
    off[1, 0, 0, 0] *= 1 + 4 * FACTOR_ULPS * torch.finfo(K.dtype).eps  # one weight beyond rounding
    assert shared_mod._factor(off, K) is None
    assert shared_mod._factor(torch.ones(4, 3, 3, 3), torch.zeros(4, 3, 3, 3)) is None  # nothing to scale
