"""One layer simulated from its sources' spikes (MATH §2, §3, §5, §6, §7): the arrivals of its inputs, a hidden
layer exactly (closed form after the inputs, certificate, exact search for the rest), the fan-in gather the search
and the traces share, and the readout potential.

Times are offsets from window starts: the sources' for the inputs, the layer's t_min for its spikes.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from ..neurons import NeuronModel, Rescale
from ..records import Layer, Synapses
from .certify import STAGES, certify_layer
from .dynamics import (
    crossing_after_inputs,
    early_mask,
    first_crossing,
    gate_at_window_start,
    search_in_chunks,
    settle_spikes,
)
from .fanin import driving_groups, drop_silent, gather_rows, inside_taps, pad_input
from .shared import Shared, certify_parts, potential


def elapsed(layer: Layer, syn: Synapses, routed: Tensor) -> Tensor:
    """How long one input's routed spikes have been driving the neurons at the end of their input window,
    t_min − t_j, in [0, in_window] (MATH §5, §6).

    The spikes are delayed by t_min − t_max(source) (MATH §5, residual), so an input with activation x arrives at
    t_min − x whichever layer it came from: the elapsed time is the source's window minus its offset. An input that
    arrived before the neurons started (its layer fired early) is taken as arriving at the start (MATH §6); a
    missing spike (B1, offset +inf) gives 0: it drives nothing. Shape: routed (B, *syn.in_shape) -> same.
    """
    return (syn.in_window - routed.clamp(min=0)).clamp(0, layer.in_window)


def arrivals(layer: Layer, srcs: list[Tensor], shared: Shared | None = None) -> tuple[list[Tensor], int]:
    """`elapsed` for every input of the layer: input k's spikes routed (max pooling = earliest spike), then
    delayed. Returns the elapsed times per input and the count of inputs from early spikes. `shared`: a run's
    cache, so that the layers reading one source the same way compute this once (`Shared.arrival`).
    Shape: srcs[k] (B, *source k) -> (B, *inputs[k].in_shape).
    """
    out, early = [], 0
    for syn, src in zip(layer.inputs, srcs):
        def arrive(syn=syn, src=src) -> tuple[Tensor, int]:
            t = syn.route_times(src)
            return elapsed(layer, syn, t), int(torch.count_nonzero(early_mask(t)))  # fired before its own window

        x, count = arrive() if shared is None else shared.arrival(layer, syn, src, arrive)
        out.append(x)
        early += count
    return out, early


def hidden_layer_exact(layer: Layer, srcs: list[Tensor], alpha: float, neuron: NeuronModel, rescale: Rescale,
                       arrive=None, shared: Shared | None = None):
    """Spike times of one hidden layer from the spike times of its sources (MATH §2, §5, §6, §7).

    Every neuron's potential at the end of its input window, V(t_min), is one weighted sum of input spike
    times; after that the potential is linear, so the crossing has a closed form. It is the spike unless the
    neuron crossed earlier. Under the positive-part rescaling (α-model) that happens exactly when V(t_min) > θ;
    otherwise the fast certificate (`sim.certify`, MATH §2) proves it impossible for almost every neuron.
    The rest are searched exactly over their input segments. Times are offsets from window starts (sources'
    for the inputs, this layer's t_min for the output). `arrive` may move the elapsed times onto a clock.
    `shared`: the run's sums shared between the readers of one source (`sim.shared`), used by a layer of parts.
    Shape: srcs[k] (B, *source k) -> (B, *layer.shape).
    """
    if arrive is not None:
        shared = None  # on a clock, the elapsed times are the reader's own
    elapsed_times, early_arrivals = arrivals(layer, srcs, shared)
    if arrive is not None:
        elapsed_times = arrive(elapsed_times)
    parts = None if shared is None else shared.parts(layer, srcs, elapsed_times)
    current = neuron.start_current(alpha)
    if parts is None:
        v_end = current * layer.in_window + layer.weighted_sum(elapsed_times, "J")
    else:  # the parts' shared sums, each scaled by its reader's factor
        v_end = potential(parts, current * layer.in_window)
    off = crossing_after_inputs(v_end, layer.theta, layer.slope, 0.0)
    if layer.clip is not None:  # gated (ReLU6): no early spike is possible
        off, saturated = gate_at_window_start(off)
        off, stats = settle_spikes(off, layer.window, neuron.silent_at_zero, early_arrivals)
        return off, {**stats, "certificate": (("gated", off.numel()),), "searched": 0, "saturated": saturated}
    if neuron.needs_certificate(rescale):
        certify = certify_layer if parts is None else partial(certify_parts, parts)
        cert = certify(layer.inputs, elapsed_times, layer.theta, v_end, layer.in_window, current)
        flagged, certificate = cert.uncertified, tuple(zip(STAGES, cert.settled))
    else:  # Σ max(W,0) < 1: V(t_min) > θ exactly when the neuron crossed before t_min (MATH §2)
        flagged = v_end > layer.theta
        certificate = (("pre-activation", off.numel() - int(torch.count_nonzero(flagged))),)
    searched = int(torch.count_nonzero(flagged))
    if searched:
        idx = flagged.nonzero(as_tuple=True)
        off = off.clone()
        t_in = [layer.in_window - e for e in elapsed_times]
        off[idx] = search(layer, t_in, idx, current) - layer.in_window
    off, stats = settle_spikes(off, layer.window, neuron.silent_at_zero, early_arrivals)
    return off, {**stats, "certificate": certificate, "searched": searched}


def fan_in(layer: Layer, values: list[Tensor], idx: tuple[Tensor, ...], pad: float, which: str = "J"):
    """The listed neurons' inputs over all of the layer's `Synapses`, concatenated (`fanin.gather_rows`): input
    values (`values[k]` is input k's routed tensor; zero-padded taps take `pad`), weights (`which`: "J" or
    "weight"; 0 where an input does not drive the neuron's channel) and which input each came from.

    Shape: values[k] (B, *in_shape k); idx (b, o[, ...]) each (F,) -> three (F, total fan-in) tensors.
    """
    padded = [pad_input(syn, v, pad) for syn, v in zip(layer.inputs, values)]
    return gather_rows(layer.inputs, layer.shape, padded, [getattr(syn, which) for syn in layer.inputs], idx)


def search(layer: Layer, t_in: list[Tensor], idx: tuple[Tensor, ...], alpha: float) -> Tensor:
    """Exact first crossing for the flagged neurons `idx` (indices into (B, *shape)), in time relative to the
    neurons' start; `t_in[k]` are input k's arrival times on that clock, in [0, in_window]."""
    neuron_idx = idx[1:]
    theta = layer.theta.expand(layer.shape)[neuron_idx]
    slope = layer.slope.expand(layer.shape)[neuron_idx]
    end = layer.in_window
    padded = [pad_input(syn, t, end) for syn, t in zip(layer.inputs, t_in)]  # a padded tap is x = 0: at t_min

    def solve(times, weights, theta_, slope_):
        return first_crossing(times, weights, theta_, alpha, 0.0, end, slope_)

    out = t_in[0].new_empty(len(idx[0]))
    for rows, ks in driving_groups(layer.inputs, idx):  # each neuron over the inputs that drive its channel
        part = idx if rows is None else tuple(i[rows] for i in idx)
        inputs, part_padded = [layer.inputs[k] for k in ks], [padded[k] for k in ks]
        keeps, fan = inside_taps(inputs, part_padded, part)  # a padded tap drives nothing before t_min
        th, sl = (theta, slope) if rows is None else (theta[rows], slope[rows])

        def gather(lo: int, hi: int, part=part, inputs=inputs, part_padded=part_padded, keeps=keeps, th=th, sl=sl):
            times, weights, _ = gather_rows(inputs, layer.shape, part_padded, [syn.J for syn in inputs],
                                            tuple(i[lo:hi] for i in part), keeps)
            times, weights = drop_silent(times, weights, times < end)
            return times, weights, th[lo:hi], sl[lo:hi]

        found = search_in_chunks(gather, len(part[0]), fan, solve, t_in[0])
        if rows is None:
            return found
        out[rows] = found
    return out


def bias_current(layer: Layer) -> Tensor:
    """The readout's bias current b_i / (t_min^(L) − start) (MATH §3): integrated over the input window it
    gives b_i. Shape: like `layer.bias`."""
    return layer.bias / layer.in_window


def readout_potential(layer: Layer, srcs: list[Tensor]) -> Tensor:
    """Membrane potential of the readout neurons at t_min^(L) (MATH §3): J = W and the `bias_current` over the
    input window, so V_i(t_min^(L)) = b_i + Σ_j W_ij x_j. Shape: srcs[k] (B, *source k) -> (B, *shape)."""
    elapsed_times, _ = arrivals(layer, srcs)
    return layer.weighted_sum(elapsed_times) + layer.bias
