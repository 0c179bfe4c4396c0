"""Windows cover the peak drive before t_min (passes._peak_drives): B_n = (1 + ζ)·max(X_n, P_n).

A neuron reading sources with very different windows can be driven far above its largest activation before
its window opens (the positive weights of its short-window inputs sum above 1), so B_n = (1 + ζ)·X_n alone
leaves early spikes on the calibration data itself (Inception-v3: 81 at ζ = 0.5)."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import ttfs_core
from ttfs_core.sim.certify import peak_drive

from .helpers import check_exact

convert_module = sys.modules["ttfs_core.passes"]  # conversion's passes (calibrate measures P_n)


def drive(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, kappa: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """h(s) = b + Σ_j W_j max(x_j, s) − κ s, straight from its definition. Shape: x, w (F, K); s (S,) -> (F, S)."""
    return b[:, None] + (w[:, :, None] * torch.maximum(x[:, :, None], s[None, None, :])).sum(1) - kappa[:, None] * s


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 9), st.booleans())
def test_peak_drive_is_the_maximum_of_h_over_s(seed, k, b1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(16, k, generator=g, dtype=torch.float64) * torch.rand(16, 1, generator=g, dtype=torch.float64) * 5
    x[:, 0] = torch.where(torch.rand(16, generator=g) < 0.3, 0.0, x[:, 0])  # zero-padded taps, ties at 0
    w = torch.randn(16, k, generator=g, dtype=torch.float64)
    b = torch.randn(16, generator=g, dtype=torch.float64)
    if not b1:  # the α-model's weights after the paper's rescaling: Σ_j W_j < 1
        w = w - ((w.sum(1, keepdim=True) - 0.9).clamp(min=0) / k)
    kappa = w.sum(1) if b1 else torch.ones(16, dtype=torch.float64)
    got = peak_drive(x, w, b, kappa)
    kinks = drive(x, w, b, kappa, torch.cat([torch.zeros(1, dtype=x.dtype), x.flatten()])).max(1).values
    # a piecewise-linear h peaks at a kink or at 0: the oracle takes every sample's inputs as candidates
    own = torch.stack([drive(x[i:i + 1], w[i:i + 1], b[i:i + 1], kappa[i:i + 1],
                             torch.cat([torch.zeros(1, dtype=x.dtype), x[i]])).max() for i in range(16)])
    torch.testing.assert_close(got, own, rtol=1e-12, atol=1e-12)
    assert bool((kinks >= got - 1e-12).all())
    grid = torch.linspace(0, float(x.max()) + 1, 4001, dtype=torch.float64)  # nothing higher in between
    assert bool((drive(x, w, b, kappa, grid).max(1).values <= got + 1e-9).all())


class Uneven(nn.Module):
    """A layer reading a long-window source (activations up to ~100) and two short-window ones (up to ~0.5)
    whose positive weights sum above 1: its drive rises long after the short inputs have arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.long = nn.Linear(2, 1)
        self.short = nn.Linear(2, 2)
        self.join = nn.Linear(3, 2)
        self.out = nn.Linear(2, 2)
        with torch.no_grad():
            # a ≈ 100 whatever the input, with Σ W < 1, so no rescaling shrinks it: a long window
            self.long.weight.copy_(torch.tensor([[-0.5, 0.0]]))
            self.long.bias.fill_(100.0)
            self.short.weight.copy_(torch.tensor([[0.5, 0.0], [0.0, 0.5]]))
            self.short.bias.zero_()
            # positive short-window weights 2.4 and 1.8, Σ W = 0.4 and 0.8
            self.join.weight.copy_(torch.tensor([[-2.0, 1.2, 1.2], [-1.0, 1.5, 0.3]]))
            self.join.bias.copy_(torch.tensor([199.5, 99.8]))
            self.out.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 1.0]]))
            self.out.bias.zero_()

    def forward(self, x):
        a = torch.relu(self.long(x))
        c = torch.relu(self.short(x))
        return self.out(torch.relu(self.join(torch.cat([a, c], 1))))


def _joined(snn):
    return next(layer for layer in snn.layers if len(layer.inputs) > 1)


def _brute_peak(snn, layer, x: torch.Tensor) -> float:
    """max over the inputs, neurons and a fine grid of s (plus every kink) of h, from the layer's weights."""
    acts = snn.activations(x)
    xs = torch.cat([syn.route_activations(acts[syn.source + 1]).flatten(1) for syn in layer.inputs], 1)
    w = torch.cat([syn.weight for syn in layer.inputs], 1)  # dense: (neurons, fan-in)
    s = torch.cat([torch.linspace(0, float(xs.max()), 20001, dtype=xs.dtype), xs.flatten()])
    kappa = w.sum(1) if snn.neuron.name == "b1" else torch.ones(w.shape[0], dtype=w.dtype)
    h = layer.bias[None, :, None] + (w[None, :, :, None] * torch.maximum(xs[:, None, :, None], s)).sum(2) \
        - kappa[None, :, None] * s
    return float(h.max())


@pytest.mark.parametrize("neuron", ["alpha", "b1"])
def test_windows_cover_the_peak_drive_so_calibration_data_has_no_early_spike(neuron):
    model = Uneven().double().eval()
    x = torch.rand(convert_module.PEAK_SAMPLE, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    snn = ttfs_core.convert(model, x, input_range=(0.0, 1.0), neuron=neuron)
    layer = _joined(snn)
    peak = _brute_peak(snn, layer, x)
    # the case is the one the rule is for: B_n = 1.5·X_n would sit far below the drive
    assert peak > 3 * layer.max_activation
    assert layer.peak_drive == pytest.approx(peak, rel=1e-9)
    assert layer.window == pytest.approx(1.5 * layer.peak_drive, rel=1e-12)
    check_exact(model, snn, x)
    for other in snn.layers:  # every layer against the brute force: P_n counts where it passes 1.5·X_n
        brute = _brute_peak(snn, other, x)  # (B1's inhibited `long` peaks at its bias, just above X_n)
        expected = brute if brute >= 1.5 * other.max_activation else other.max_activation
        assert other.peak_drive == pytest.approx(expected, rel=1e-9)


def test_the_windows_of_x_n_alone_would_spike_early():
    """The same network with the windows MATH §4 states, B_n = 1.5·X_n, fires early on its calibration data."""
    model = Uneven().double().eval()
    x = torch.rand(256, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    snn = ttfs_core.convert(model, x, input_range=(0.0, 1.0))
    with pytest.MonkeyPatch.context() as mp:  # convert as before: P_n = X_n
        mp.setattr(convert_module, "_peak_drives", lambda snn, batches, maxima: list(maxima))
        naive = ttfs_core.convert(model, x, input_range=(0.0, 1.0))
    assert _joined(naive).window == pytest.approx(1.5 * _joined(naive).max_activation)
    assert naive.run(x).early_spikes > 0
    assert snn.run(x).early_spikes == 0


def test_a_negative_margin_still_fires_early():
    model = Uneven().double().eval()
    x = torch.rand(256, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    snn = ttfs_core.convert(model, x, input_range=(0.0, 1.0), margin=-0.6)
    assert snn.run(x).early_spikes > 0


def test_peak_drive_survives_saving(tmp_path):
    model = Uneven().double().eval()
    x = torch.rand(64, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    snn = ttfs_core.convert(model, x, input_range=(0.0, 1.0))
    path = tmp_path / "uneven.ttfs"
    ttfs_core.save(snn, path)
    back = ttfs_core.load(path)
    assert [la.peak_drive for la in back.layers] == [la.peak_drive for la in snn.layers]
    assert _joined(back).peak_drive > _joined(back).max_activation


def test_the_peak_is_measured_on_the_first_inputs_and_each_layers_maximiser(monkeypatch):
    model = Uneven().double().eval()
    x = torch.rand(256, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    monkeypatch.setattr(convert_module, "PEAK_SAMPLE", 8)
    snn = ttfs_core.convert(model, x, input_range=(0.0, 1.0))
    acts = snn.activations(x)[1:]
    setters = [int(a.flatten(1).amax(1).argmax()) for a in acts]
    sample = torch.cat([x[:8], x[setters]])
    layer = _joined(snn)
    assert layer.peak_drive == pytest.approx(_brute_peak(snn, layer, sample), rel=1e-9)
