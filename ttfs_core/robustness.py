"""Hardware knobs (MATH §7, §9): how accuracy and agreement with the ANN degrade with spike-time quantisation,
spike-time jitter, weight quantisation and the window margin. Deterministic under a seed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
from torch import Tensor

from . import passes
from .compare import first_output
from .convert import convert
from .fold import per_input_channel
from .network import Perturb, SpikingNetwork
from .records import Layer, Synapses


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
    images: int = 0  # inputs it was measured on (what `merge_points` weighs by)


def merge_points(points: Sequence[SweepPoint]) -> SweepPoint:
    """One point from the points of the same setting measured on disjoint sets of inputs (chunks of a data set):
    accuracy, agreement and spikes per neuron averaged with the inputs as weights, early spikes summed."""
    if not points:
        raise ValueError("no points to merge")
    n = sum(p.images for p in points)
    if n <= 0:
        raise ValueError("points to merge must say how many inputs they were measured on")

    def mean(values) -> float:
        return sum(v * p.images for v, p in zip(values, points)) / n

    accuracy = None if any(p.accuracy is None for p in points) else mean(p.accuracy for p in points)
    return SweepPoint(points[0].knob, points[0].value, accuracy, mean(p.agreement for p in points),
                      sum(p.early_spikes for p in points), mean(p.spikes_per_neuron for p in points), n)


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


WEIGHT_TARGETS = ("W", "J")  # what `quantise_weights` rounds: the ReLU layer's W per channel (default), or J per layer


def quantise(w: Tensor, bits: int, top: Tensor | float | None = None) -> Tensor:
    """Symmetric uniform quantisation, 2^(bits−1) − 1 levels per sign: w ↦ round(w/Δ)·Δ, Δ = top/(2^(bits−1) − 1).

    `top`: one number (one scale for all of `w`), a tensor of one value per row of `w` (one scale per output
    channel), or None (the largest |w|). A scale of 0 leaves its rows as they are (all zero). Shape: w (O, ...),
    top () or (O,) -> (O, ...)."""
    if top is None:
        top = w.abs().max()
    top = torch.as_tensor(top, dtype=w.dtype, device=w.device)
    if top.dim():
        top = top.reshape(-1, *([1] * (w.dim() - 1)))
    step = top / (2 ** (int(bits) - 1) - 1)
    return torch.where(top > 0, torch.round(w / torch.where(top > 0, step, 1.0)) * step, w)


def channel_tops(layer: Layer, weights: Sequence[Tensor] | None = None) -> Tensor:
    """The largest |w| of every output channel of a convolutional layer (every neuron of a dense one) over all the
    layer's inputs: one quantisation scale per output channel, as hardware keeps one per filter. `weights`: one per
    input (default: their W). The layout of `Layer.row_sums`. Shape: -> (C,) or (N,)."""
    weights = [syn.weight for syn in layer.inputs] if weights is None else weights
    out = layer.row_sums().new_zeros(layer.row_sums().shape[0])
    for syn, w in zip(layer.inputs, weights):
        lo, hi = syn.channels if syn.channels is not None else (0, out.shape[0])
        out[lo:hi] = torch.maximum(out[lo:hi], w.abs().flatten(1).amax(1))
    return out


def source_scales(snn: SpikingNetwork, syn: Synapses) -> Tensor | None:
    """The rescaling factors c_j of the neurons an input reads (converted activation = c_j · the original model's,
    `Layer.scale`) in the layout of its weight's columns, None where they are all 1 (the input layer). W_ij · c_j
    is the weight in the original model's units, up to a factor per row. Shape: -> broadcastable to syn.weight."""
    if syn.source < 0:
        return None
    scale = snn.layers[syn.source].scale
    c = scale.reshape(scale.shape[0], -1)[:, 0]
    if bool((c == 1).all()):
        return None
    if syn.conv is not None:
        return per_input_channel(syn.weight, c, syn.conv["groups"])
    return c.reshape(-1, *([1] * (len(syn.in_shape) - 1))).expand(syn.in_shape).reshape(1, -1)


def quantise_channels(snn: SpikingNetwork, n: int, bits: int) -> Layer:
    """Layer n of the network (len(layers): the readout) with the W of all its inputs quantised per output channel
    in the original model's units (folded, not rescaled: each column times its source's c_j, `source_scales`).
    Per output channel, the factor c_i of the layer's own rescaling changes nothing."""
    layer = snn.all_layers[n]
    scales = [source_scales(snn, syn) for syn in layer.inputs]
    ws = [syn.weight if c is None else syn.weight * c for syn, c in zip(layer.inputs, scales)]
    tops = channel_tops(layer, ws)
    inputs = []
    for syn, w, c in zip(layer.inputs, ws, scales):
        lo, hi = syn.channels if syn.channels is not None else (0, tops.shape[0])
        q = quantise(w, bits, tops[lo:hi])
        inputs.append(replace(syn, weight=q if c is None else q / c))
    return replace(layer, inputs=tuple(inputs))


def _quantise_layer(layer: Layer, bits: int, which: str) -> Layer:
    """The layer with the weights of all its inputs quantised on one scale (the largest |w| among them)."""
    top = max(float(getattr(syn, which).abs().max()) for syn in layer.inputs)
    inputs = tuple(replace(syn, **{which: quantise(getattr(syn, which), bits, top)}) for syn in layer.inputs)
    return replace(layer, inputs=inputs)


def quantise_weights(snn: SpikingNetwork, bits: int, target: str = "W") -> SpikingNetwork:
    """A copy of the network with quantised synapses: `bits` bits, 2^(bits−1) − 1 levels per sign.

    `target` "W" (the default): the ANN's effective weights W (BatchNorm and the input range folded in, in the
    original model's units: `quantise_channels`) are quantised with one scale per output channel, the readout's per
    output, and the spiking layer is derived from the quantised W exactly as conversion derives it: the rescaling
    pass keeps Σ_j W_ij < 1 where rounding pushed a neuron past it (layers go in time order, so its readers'
    columns are divided before they are quantised in turn), and the parameterise pass computes J, θ and the final
    slope (`mapping.alpha_parameters`, MATH §2; B1: J = W, §7). So the result is the exact spiking network of the
    ANN with quantised weights: its logits are that ANN's to float precision, as long as no neuron fires early.
    Biases, windows and the input window are kept (a chip keeps its time base); quantised activations that outgrow
    a window fire early, and are counted.

    `target` "J": the synaptic weights J (and the readout's W) are quantised on one scale per layer, thresholds
    and windows kept, the final slope α + Σ_j J_ij following the quantised J. J_ij = αW_ij/(1 − Σ_k W_ik) grows with
    1/(1 − Σ W), so one neuron near Σ W = 1 sets the layer's scale and the others round to few levels or to 0.
    """
    if not 2 <= int(bits) <= 32:
        raise ValueError(f"weight bits must be between 2 and 32, got {bits}")
    if target not in WEIGHT_TARGETS:
        raise ValueError(f"unknown weight quantisation target {target!r}; use one of {', '.join(WEIGHT_TARGETS)}")
    if target == "J":
        layers = []
        for layer in snn.layers:
            layer = _quantise_layer(layer, bits, "J")
            slope = snn.neuron.final_slope(snn.alpha, layer.row_sums("J"))
            slope = slope.reshape(-1, *([1] * (layer.slope.dim() - 1))).expand_as(layer.slope).clone()
            layers.append(replace(layer, slope=slope))
        return replace(snn, layers=tuple(layers), output=_quantise_layer(snn.output, bits, "weight"))
    net = snn
    for n in range(len(snn.layers) + 1):
        layers = list(net.all_layers)
        layers[n] = quantise_channels(net, n, bits)
        net = replace(net, layers=tuple(layers[:-1]), output=layers[-1])
        if n < len(snn.layers):
            net = passes.rescale(net)  # function-preserving; only neurons pushed past the limit change
    windows = [layer.clip if layer.clip is not None else layer.window for layer in net.layers]
    return passes.parameterise(passes.place_in_time(net, windows))


def score(snn: SpikingNetwork, x: Tensor, labels: Tensor | None, ref: Tensor, knob: str, value: float,
          perturb: Perturb | None = None) -> SweepPoint:
    """One setting measured: `snn` run on `x` (with `perturb` on its spike times), its argmax against `labels` and
    against the classes `ref` (the ANN's, `reference`). Shape: x (B, *input_shape), labels, reference (B,)."""
    res = snn.run(x, perturb=perturb)
    pred = res.logits.argmax(1)
    acc = float((pred == labels).double().mean()) if labels is not None else None
    return SweepPoint(knob, float(value), acc, float((pred == ref).double().mean()), res.early_spikes,
                      res.spikes / max(res.neurons, 1), int(x.shape[0]))


def reference(snn: SpikingNetwork, x: Tensor, model: nn.Module | None) -> Tensor:
    """The classes agreement is measured against: the original model's argmax, or the converted ReLU network's
    (`ann_forward`) without a model. Shape: x (B, *input_shape) -> (B,)."""
    if model is not None:
        with torch.no_grad():
            return first_output(model(x.to(snn.dtype))).argmax(1)
    return snn.ann_forward(x)[1].argmax(1)


def time_bits_sweep(snn: SpikingNetwork, x: Tensor, labels: Tensor | None = None, bits: Iterable[int] = range(2, 17),
                    model: nn.Module | None = None) -> list[SweepPoint]:
    """Accuracy and agreement vs spike times quantised to 2^bits levels per window."""
    ref = reference(snn, x, model)
    return [score(snn, x, labels, ref, "time_bits", b, quantise_times(b)) for b in bits]


def jitter_sweep(snn: SpikingNetwork, x: Tensor, labels: Tensor | None = None,
                 sigmas: Sequence[float] = (0.0, 5e-5, 5e-4, 5e-3, 0.05), seed: int = 0, relative: bool = False,
                 model: nn.Module | None = None) -> list[SweepPoint]:
    """Accuracy and agreement vs Gaussian jitter σ on every spike time (same noise for the same seed)."""
    ref = reference(snn, x, model)
    return [score(snn, x, labels, ref, "jitter", s, jitter_times(s, seed, relative)) for s in sigmas]


def weight_bits_sweep(snn: SpikingNetwork, x: Tensor, labels: Tensor | None = None, bits: Iterable[int] = range(2, 17),
                      model: nn.Module | None = None, target: str = "W") -> list[SweepPoint]:
    """Accuracy and agreement vs weights quantised to `bits` bits: W per output channel, the spiking layer derived
    from it (`target` "W"), or J per layer ("J"); see `quantise_weights`."""
    ref = reference(snn, x, model)
    return [score(quantise_weights(snn, b, target), x, labels, ref, "weight_bits", b) for b in bits]


def margin_sweep(model: nn.Module, calibration: Tensor, x: Tensor, labels: Tensor | None = None,
                 margins: Sequence[float] = (-0.7, -0.5, -0.3, -0.1, 0.0, 0.25, 0.5), **convert_kw) -> list[SweepPoint]:
    """Accuracy, agreement and early spikes vs the window margin ζ (B_n = (1 + ζ)·X_n), reconverting each time."""
    points = []
    ref = None
    for m in margins:
        snn = convert(model, calibration, margin=m, **convert_kw)
        ref = reference(snn, x, model) if ref is None else ref
        points.append(score(snn, x, labels, ref, "margin", m))
    return points
