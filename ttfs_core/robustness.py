"""Hardware knobs (MATH §7, §9): how accuracy and agreement with the ANN degrade with spike-time quantisation,
spike-time jitter, weight quantisation and the window margin. Deterministic under a seed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
from torch import Tensor

from .compare import first_output
from .convert import convert
from .network import Perturb, SpikingNetwork
from .records import Layer


@dataclass(frozen=True)
class SweepPoint:
    """One setting of a knob: accuracy (None without labels), argmax agreement with the ANN, early spikes and
    spikes per neuron over the data set."""

    knob: str
    value: float
    accuracy: float | None
    agreement: float
    early_spikes: int
    spikes_per_neuron: float


def quantise_times(bits: int) -> Perturb:
    """Spike times rounded to 2^bits levels spanning each window [t_min, t_max] (the input window too)."""
    if not 1 <= int(bits) <= 24:
        raise ValueError(f"bits must be between 1 and 24, got {bits}")
    levels = 2 ** int(bits) - 1

    def perturb(n: int, offsets: Tensor, window: float) -> Tensor:
        step = window / levels
        inside = offsets.clamp(0, window)
        q = torch.round(inside / step) * step
        return torch.where(torch.isfinite(offsets) & (offsets >= 0), q, offsets)

    return perturb


def jitter_times(sigma: float, seed: int = 0, relative: bool = False) -> Perturb:
    """Gaussian jitter N(0, σ²) on every spike time; σ in units of τ_c, or of each window when `relative`."""
    if sigma < 0:
        raise ValueError(f"sigma must be ≥ 0, got {sigma}")
    gen = torch.Generator().manual_seed(seed)

    def perturb(n: int, offsets: Tensor, window: float) -> Tensor:
        noise = torch.randn(offsets.shape, generator=gen, dtype=offsets.dtype)
        return offsets + noise * (sigma * window if relative else sigma)

    return perturb


def _quantise(w: Tensor, bits: int, top: float | None = None) -> Tensor:
    """Symmetric uniform quantisation with 2^(bits−1) − 1 levels per sign, scaled to `top` (default: the largest
    |w|)."""
    top = float(w.abs().max()) if top is None else top
    if top == 0:
        return w.clone()
    step = top / (2 ** (int(bits) - 1) - 1)
    return torch.round(w / step) * step


def _quantise_layer(layer: Layer, bits: int, which: str) -> Layer:
    """The layer with the weights of all its inputs quantised on one scale (the largest |w| among them)."""
    top = max(float(getattr(syn, which).abs().max()) for syn in layer.inputs)
    inputs = tuple(replace(syn, **{which: _quantise(getattr(syn, which), bits, top)}) for syn in layer.inputs)
    return replace(layer, inputs=inputs)


def quantise_weights(snn: SpikingNetwork, bits: int) -> SpikingNetwork:
    """A copy whose synaptic weights J (and readout weights) are quantised per layer to `bits` bits.

    The final slope α + Σ_j J_ij follows the quantised weights (it is what the neuron integrates; B1's is a
    constant, `NeuronModel.final_slope`); thresholds and windows are kept.
    """
    if not 2 <= int(bits) <= 32:
        raise ValueError(f"weight bits must be between 2 and 32, got {bits}")
    layers = []
    for layer in snn.layers:
        layer = _quantise_layer(layer, bits, "J")
        slope = snn.neuron.final_slope(snn.alpha, layer.row_sums("J"))
        slope = slope.reshape(-1, *([1] * (layer.slope.dim() - 1))).expand_as(layer.slope).clone()
        layers.append(replace(layer, slope=slope))
    return replace(snn, layers=tuple(layers), output=_quantise_layer(snn.output, bits, "weight"))


def _score(snn: SpikingNetwork, x: Tensor, labels: Tensor | None, reference: Tensor, knob: str, value: float,
           perturb: Perturb | None = None) -> SweepPoint:
    res = snn.run(x, perturb=perturb)
    pred = res.logits.argmax(1)
    acc = float((pred == labels).double().mean()) if labels is not None else None
    return SweepPoint(knob, float(value), acc, float((pred == reference).double().mean()), res.early_spikes,
                      res.spikes / max(res.neurons, 1))


def _reference(snn: SpikingNetwork, x: Tensor, model: nn.Module | None) -> Tensor:
    if model is not None:
        with torch.no_grad():
            return first_output(model(x.to(snn.dtype))).argmax(1)
    return snn.ann_forward(x)[1].argmax(1)


def time_bits_sweep(snn: SpikingNetwork, x: Tensor, labels: Tensor | None = None, bits: Iterable[int] = range(2, 17),
                    model: nn.Module | None = None) -> list[SweepPoint]:
    """Accuracy and agreement vs spike times quantised to 2^bits levels per window."""
    ref = _reference(snn, x, model)
    return [_score(snn, x, labels, ref, "time_bits", b, quantise_times(b)) for b in bits]


def jitter_sweep(snn: SpikingNetwork, x: Tensor, labels: Tensor | None = None,
                 sigmas: Sequence[float] = (0.0, 5e-5, 5e-4, 5e-3, 0.05), seed: int = 0, relative: bool = False,
                 model: nn.Module | None = None) -> list[SweepPoint]:
    """Accuracy and agreement vs Gaussian jitter σ on every spike time (same noise for the same seed)."""
    ref = _reference(snn, x, model)
    return [_score(snn, x, labels, ref, "jitter", s, jitter_times(s, seed, relative)) for s in sigmas]


def weight_bits_sweep(snn: SpikingNetwork, x: Tensor, labels: Tensor | None = None, bits: Iterable[int] = range(2, 17),
                      model: nn.Module | None = None) -> list[SweepPoint]:
    """Accuracy and agreement vs synaptic weights quantised to `bits` bits."""
    ref = _reference(snn, x, model)
    return [_score(quantise_weights(snn, b), x, labels, ref, "weight_bits", b) for b in bits]


def margin_sweep(model: nn.Module, calibration: Tensor, x: Tensor, labels: Tensor | None = None,
                 margins: Sequence[float] = (-0.7, -0.5, -0.3, -0.1, 0.0, 0.25, 0.5), **convert_kw) -> list[SweepPoint]:
    """Accuracy, agreement and early spikes vs the window margin ζ (B_n = (1 + ζ)·X_n), reconverting each time."""
    points = []
    ref = None
    for m in margins:
        snn = convert(model, calibration, margin=m, **convert_kw)
        ref = _reference(snn, x, model) if ref is None else ref
        points.append(_score(snn, x, labels, ref, "margin", m))
    return points
