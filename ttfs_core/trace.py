"""Membrane traces of single neurons (MATH §2, §3, §6), computed on demand from a simulation result.

Times in a `NeuronTrace` are relative to the neuron's start t_min^(n−1) (`origin`, absolute): deep layers can
have windows far shorter than their absolute start time, and relative times keep full precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .network import Layer, SpikingNetwork, gather_fan_in, pad_input
from .result import SimResult
from .simulate import membrane_potential
from .stepped import tick_of, tick_potential, ticks_per_window


@dataclass(frozen=True)
class NeuronTrace:
    """Everything a plot of one neuron's potential needs. Times relative to `origin` (= t_min^(n−1)).

    `input_times`/`input_weights`/`input_sources`: the neuron's inputs (K,), sorted by time; a source index is
    the flat index into the (routed) source layer, −1 for a zero-padded tap (x = 0, arrives at t_min).
    `times`/`potential`: the exact piecewise-linear V at its breakpoints (plot as a polyline).
    `stepped_*`: the clock-driven V on its ticks, when a tick length was asked for.
    """

    layer: str
    index: tuple[int, ...]
    origin: float
    t_min: float
    t_max: float
    theta: float | None  # None for the readout (it does not spike)
    alpha: float  # bias current
    input_times: Tensor
    input_weights: Tensor
    input_sources: Tensor
    spike_time: float  # +inf: no spike (B1, or the readout)
    forced: bool
    early: bool
    times: Tensor
    potential: Tensor
    final_slope: float | None = None  # B1: slope after t_min replaces the input currents
    stepped_times: Tensor | None = None
    stepped_potential: Tensor | None = None
    stepped_spike_time: float | None = None

    def potential_at(self, at: Tensor) -> Tensor:
        """Exact V at the given times (relative to origin). Shape: (T,) -> (T,)."""
        at = torch.as_tensor(at, dtype=self.input_times.dtype)
        if self.final_slope is None:
            return membrane_potential(at, self.input_times, self.input_weights, self.alpha, 0.0)
        return membrane_potential(at, self.input_times, self.input_weights, self.alpha, 0.0, self.t_min,
                                  self.final_slope)


def resolve_layer(snn: SpikingNetwork, layer: str | int) -> tuple[int, Layer]:
    """A layer by name or by position (the readout is position len(snn.layers), or its name)."""
    layers = snn.all_layers
    if isinstance(layer, int):
        if not -len(layers) <= layer < len(layers):
            raise IndexError(f"layer {layer} out of range: the network has {len(layers)} layers with the readout")
        n = layer % len(layers)
        return n, layers[n]
    for n, candidate in enumerate(layers):
        if candidate.name == layer:
            return n, candidate
    raise KeyError(f"no layer named {layer!r}; layers: {[la.name for la in layers]}")


def resolve_index(layer: Layer, index: int | tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(index, int):
        if not 0 <= index < layer.neurons:
            raise IndexError(f"neuron {index} out of range: {layer.name} has {layer.neurons} neurons")
        return tuple(int(i) for i in torch.unravel_index(torch.tensor(index), layer.shape))
    index = tuple(int(i) for i in index)
    if len(index) != len(layer.shape) or any(not 0 <= i < s for i, s in zip(index, layer.shape)):
        raise IndexError(f"neuron index {index} does not fit {layer.name} of shape {layer.shape}")
    return index


def _source_offsets(snn: SpikingNetwork, layer: Layer, result: SimResult) -> Tensor:
    src = result.input_times if layer.source < 0 else result.layers[layer.source].offsets
    return src[:1]


def _fan_in(layer: Layer, routed: Tensor, index: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """Input arrival times (relative to the neuron's start), weights and source indices (−1: a zero-padded tap)
    of one neuron."""
    weights = layer.J if layer.J is not None else layer.weight
    idx = tuple(torch.tensor([i]) for i in (0, *index))
    times = gather_fan_in(layer, pad_input(layer, routed[None], layer.in_window), idx)[0]
    ids = torch.arange(routed.numel(), dtype=torch.float64).reshape(1, *routed.shape)
    sources = gather_fan_in(layer, pad_input(layer, ids, -1.0), idx)[0].to(torch.long)
    return times, weights[index[0]].flatten(), sources


def neuron_trace(
    snn: SpikingNetwork, x: Tensor, layer: str | int, index: int | tuple[int, ...], *,
    result: SimResult | None = None, dt: float | None = None, steps: int | None = None,
) -> NeuronTrace:
    """The exact membrane trace of one neuron for one input (and its clock-driven trace for dt or steps).

    `result` is a simulation of `x` (its first sample is used); without it `x` is simulated. Shape: x
    (1, *input_shape) or (*input_shape).
    """
    if x.dim() == len(snn.input_shape):
        x = x[None]
    n, lay = resolve_layer(snn, layer)
    idx = resolve_index(lay, index)
    result = result if result is not None else snn.run(x[:1])
    b1 = snn.neuron == "b1"
    routed = lay.route_times(_source_offsets(snn, lay, result))[0]
    times, weights, sources = _fan_in(lay, routed.clamp(min=0), idx)
    keep = torch.isfinite(times)  # a silent input (B1) never arrives
    times, weights, sources = times[keep], weights[keep], sources[keep]
    order = times.argsort(stable=True)
    times, weights, sources = times[order], weights[order], sources[order]
    start_current = 0.0 if b1 else snn.alpha
    final_slope = 1.0 if b1 else None
    if lay.is_output:
        theta = None
        start_current = float(lay.bias.expand(lay.shape)[idx]) / lay.in_window
        spike, forced, early = float("inf"), False, False
        final_slope = None
    else:
        theta = float(lay.theta.expand(lay.shape)[idx])
        off = float(result.layers[n].offsets[(0, *idx)])
        spike = lay.in_window + off
        forced = (not b1) and off >= lay.window
        early = off < 0
    t_min, t_max = lay.in_window, lay.in_window + lay.window
    marks = [torch.tensor([0.0, t_min, t_max], dtype=times.dtype), times]
    if spike != float("inf"):
        marks.append(torch.tensor([spike], dtype=times.dtype))
    grid = torch.unique(torch.cat(marks).clamp(0, t_max))
    trace = NeuronTrace(lay.name, idx, lay.start, t_min, t_max, theta, start_current, times, weights, sources, spike,
                        forced, early, grid, torch.empty(0), final_slope)
    trace = _replace(trace, potential=trace.potential_at(grid))
    if dt is not None or steps is not None:
        trace = _with_stepped(snn, x[:1], n, lay, idx, trace, dt, steps, start_current)
    return trace


def _replace(trace: NeuronTrace, **changes) -> NeuronTrace:
    from dataclasses import replace

    return replace(trace, **changes)


def _with_stepped(snn, x, n, lay: Layer, idx, trace: NeuronTrace, dt, steps, start_current) -> NeuronTrace:
    """The clock-driven trace: I constant between ticks, V[k+1] = V[k] + h·I[k], inputs on their ticks."""
    res = snn.run_stepped(x, dt, steps=steps)
    ticks = res.ticks
    in_ticks = ticks[lay.source + 1]
    own = ticks[n + 1] if not lay.is_output else 0
    h_in = lay.in_window / in_ticks
    routed = lay.route_times(_source_offsets(snn, lay, res))[0]
    times, weights, _ = _fan_in(lay, routed.clamp(min=0), idx)
    keep = torch.isfinite(times)
    arrive = tick_of(times[keep], h_in, first=False).clamp(0, in_ticks).to(torch.long)
    weights = weights[keep].to(trace.input_times.dtype)
    if lay.is_output:
        t_in, v_in = tick_potential(arrive, weights, in_ticks, h_in, start_current)
        return _replace(trace, stepped_times=t_in, stepped_potential=v_in)
    h = lay.window / ticks_per_window(lay.window, dt, steps)
    slope = float(lay.slope.expand(lay.shape)[idx])
    t_all, v_all = tick_potential(arrive, weights, in_ticks, h_in, start_current, own, h, slope)
    off = float(res.layers[n].offsets[(0, *idx)])
    return _replace(trace, stepped_times=t_all, stepped_potential=v_all, stepped_spike_time=lay.in_window + off)


def membrane(snn: SpikingNetwork, x: Tensor, layer: str | int, index: int | tuple[int, ...], times: Tensor,
             result: SimResult | None = None) -> Tensor:
    """Exact V(t) of one neuron at absolute times (MATH §2). Shape: times (T,) -> (T,)."""
    trace = neuron_trace(snn, x, layer, index, result=result)
    return trace.potential_at(torch.as_tensor(times, dtype=trace.input_times.dtype) - trace.origin)
