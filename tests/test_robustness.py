"""Hardware knobs: exact at full precision, degrading monotonically in the small-knob limit, seeded."""

from __future__ import annotations

import pytest
import torch

from ttfs_core import robustness as rb

from . import nets
from .helpers import converted


@pytest.fixture(scope="module")
def setup():
    model, snn, x = converted("cnn")
    labels = model(x).argmax(1)  # the ANN's own labels: accuracy == agreement at full precision
    return model, snn, x, labels


def test_time_quantisation(setup):
    model, snn, x, labels = setup
    pts = rb.time_bits_sweep(snn, x, labels, bits=[2, 4, 16], model=model)
    assert [p.value for p in pts] == [2, 4, 16]
    assert pts[-1].agreement == 1.0 and pts[-1].accuracy == 1.0
    assert pts[0].agreement <= pts[-1].agreement
    # quantised spike times sit on 2^bits levels of each window
    q = rb.quantise_times(3)
    off = torch.rand(100, dtype=torch.float64) * 0.5
    levels = q(0, off, 0.5) / (0.5 / 7)
    assert torch.allclose(levels, levels.round())


def test_jitter_is_seeded(setup):
    model, snn, x, labels = setup
    a = rb.jitter_sweep(snn, x, labels, sigmas=[0.0, 0.05], seed=3)
    b = rb.jitter_sweep(snn, x, labels, sigmas=[0.0, 0.05], seed=3)
    assert a == b
    assert a[0].agreement == 1.0 and a[0].early_spikes == 0
    with pytest.raises(ValueError):
        rb.jitter_times(-1.0)


def test_weight_quantisation(setup):
    model, snn, x, labels = setup
    pts = rb.weight_bits_sweep(snn, x, labels, bits=[3, 24])
    assert pts[1].agreement == 1.0
    exact = snn.run(x).logits
    errors = []
    for bits in (10, 16, 24):  # fewer bits, larger deviation from the exact logits
        q = rb.quantise_weights(snn, bits)
        errors.append(float((q.run(x).logits - exact).abs().max() / exact.abs().max()))
    assert errors[0] > errors[1] > errors[2] > 0 and errors[0] > 1e-3
    original = snn.layers[0].J.clone()
    q = rb.quantise_weights(snn, 4)
    assert len(torch.unique(q.layers[0].J)) <= 15
    assert torch.equal(snn.layers[0].J, original) and not torch.equal(q.layers[0].J, original)  # a copy changed


def test_margin_sweep_counts_early_spikes():
    model = nets.build("mlp")
    x = nets.inputs("mlp", 96)
    pts = rb.margin_sweep(model, x[:64], x[64:], margins=[-0.7, 0.5], input_range=(-2, 3))
    assert pts[0].early_spikes > 0 and pts[1].early_spikes == 0
    assert pts[1].agreement == 1.0
