"""Membrane traces of single neurons (MATH §2, §3, §5, §6), computed on demand from a simulation result.

Times in a `NeuronTrace` are relative to the neuron's start (`origin` = layer.start, absolute: t_min^(n−1) in a
chain, t_min − the longest window read for a layer with several inputs): deep layers can have windows far shorter
than their absolute start time, and relative times keep full precision.

`snn` below is a `ttfs_core.SpikingNetwork`; this module does not import it (the network's `trace` and `membrane`
methods call these functions), so the simulator never imports its orchestrator.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..records import Layer
from .dynamics import membrane_potential
from .layer import bias_current, elapsed, fan_in
from .result import SimResult
from .stepped import seen_at_tick, tick_potential, ticks_per_window


@dataclass(frozen=True)
class NeuronTrace:
    """Everything a plot of one neuron's potential needs. Times relative to `origin` (= the layer's `start`).

    `input_times`/`input_weights`/`input_sources`: the neuron's inputs (K,), sorted by time, over every layer it
    reads (MATH §5: each arrives delayed, at t_min − x); a source index is the flat index into that source's
    routed tensor, −1 for a zero-padded tap (x = 0, arrives at t_min). Inputs that do not drive the neuron (outside
    the output channels their synapses drive) are left out. `input_layers`: the layer each input comes from (its
    index in `snn.layers`, −1 the input layer); `input_delays`: the delay of its synapses, t_min − t_max(source)
    (τ_c); `input_synapses`: which of the layer's inputs it came through (k of `layer.inputs[k]`;
    `synapse_names[k]` names the layer that input reads).
    `times`/`potential`: the exact piecewise-linear V at its breakpoints (plot as a polyline).
    `saturated`: a gated (ReLU6) neuron that reached θ by t_min and fired there (its value is the clip).
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
    input_layers: Tensor | None = None
    input_delays: Tensor | None = None
    input_synapses: Tensor | None = None
    synapse_names: tuple[str, ...] = ()  # per input of the layer (`layer.inputs`): the name of the layer it reads
    gated: bool = False  # a ReLU6 / clipped-ReLU layer: its threshold is switched on at t_min
    saturated: bool = False
    stepped_saturated: bool | None = None

    @property
    def multi_input(self) -> bool:
        """Whether the neuron's layer has several inputs (a residual sum or a concatenation, MATH §5)."""
        return len(self.synapse_names) > 1

    def input_names(self) -> list[str]:
        """The name of the layer each input spike comes from. Shape: (K,) names."""
        if self.input_synapses is None or not self.synapse_names:
            return [""] * int(self.input_times.numel())
        return [self.synapse_names[k] for k in self.input_synapses.tolist()]

    def potential_at(self, at: Tensor) -> Tensor:
        """Exact V at the given times (relative to origin). Shape: (T,) -> (T,)."""
        at = torch.as_tensor(at, dtype=self.input_times.dtype)
        if self.final_slope is None:
            return membrane_potential(at, self.input_times, self.input_weights, self.alpha, 0.0)
        return membrane_potential(at, self.input_times, self.input_weights, self.alpha, 0.0, self.t_min,
                                  self.final_slope)


def resolve_layer(snn, layer: str | int) -> tuple[int, Layer]:
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


def _inputs(layer: Layer, result: SimResult, index: tuple[int, ...]) -> dict[str, Tensor]:
    """One neuron's inputs over all of its layer's synapses (first sample of `result`): arrival times relative to
    the neuron's start (the spikes routed and delayed as the simulator does, `sim.layer.elapsed`; a silent input
    (B1) stays +inf, an early one arrives at its source window's start), weights (J, or W for the readout),
    source flat indices (−1: zero-padded tap), source layers, delays and synapse indices. Inputs outside the
    output channels their synapses drive are left out. Shape: -> each (K,)."""
    arrive, ids = [], []
    for syn in layer.inputs:
        src = result.input_times if syn.source < 0 else result.layers[syn.source].offsets
        t = syn.route_times(src[:1])
        a = layer.in_window - elapsed(layer, syn, t)
        arrive.append(torch.where(t == torch.inf, t, a))
        ids.append(torch.arange(t.numel(), dtype=torch.float64).reshape(t.shape))
    which = "weight" if any(syn.J is None for syn in layer.inputs) else "J"
    idx = tuple(torch.tensor([i]) for i in (0, *index))
    times, weights, k = fan_in(layer, arrive, idx, layer.in_window, which)  # a padded tap is x = 0: at t_min
    sources, _, _ = fan_in(layer, ids, idx, -1.0, which)
    times, weights, k, sources = times[0], weights[0], k[0], sources[0].to(torch.long)
    drives = torch.tensor([syn.channels is None or syn.channels[0] <= index[0] < syn.channels[1]
                           for syn in layer.inputs])
    keep = drives[k] & ~torch.isinf(times)  # a silent input (B1) never arrives
    src_layer = torch.tensor([syn.source for syn in layer.inputs])
    delay = torch.tensor([syn.delay for syn in layer.inputs], dtype=times.dtype)
    k = k[keep]
    out = {"times": times[keep], "weights": weights[keep], "sources": sources[keep], "layers": src_layer[k],
           "delays": delay[k], "synapses": k}
    order = out["times"].argsort(stable=True)
    return {key: value[order] for key, value in out.items()}


def neuron_trace(
    snn, x: Tensor, layer: str | int, index: int | tuple[int, ...], *,
    result: SimResult | None = None, dt: float | None = None, steps: int | None = None,
) -> NeuronTrace:
    """The exact membrane trace of one neuron for one input (and its clock-driven trace for dt or steps).

    The neuron's inputs are gathered over every layer it reads, each delayed to the layer's shared code (MATH §5).
    A gated (ReLU6) neuron fires at max(t_min, its crossing): `saturated` when it had reached θ by t_min.
    `result` is a simulation of `x` (its first sample is used); without it `x` is simulated. Shape: x
    (1, *input_shape) or (*input_shape).
    """
    if x.dim() == len(snn.input_shape):
        x = x[None]
    n, lay = resolve_layer(snn, layer)
    idx = resolve_index(lay, index)
    result = result if result is not None else snn.run(x[:1])
    fan = _inputs(lay, result, idx)
    times = fan["times"]
    start_current = snn.neuron.start_current(snn.alpha)
    final_slope = snn.neuron.constant_slope  # B1's replaces the input currents at t_min; None: they go on
    saturated = False
    if lay.is_output:
        theta = None
        start_current = float(bias_current(lay).expand(lay.shape)[idx])
        spike, forced, early = float("inf"), False, False
        final_slope = None
    else:
        theta = float(lay.theta.expand(lay.shape)[idx])
        off = float(result.layers[n].offsets[(0, *idx)])
        spike = lay.in_window + off
        forced = bool(result.layers[n].forced_spikes[(0, *idx)])
        early = bool(result.layers[n].early_mask[(0, *idx)])
        saturated = lay.clip is not None and off <= 0  # gated: reached θ by t_min, fired there (MATH §2)
    t_min, t_max = lay.in_window, lay.in_window + lay.window
    marks = [torch.tensor([0.0, t_min, t_max], dtype=times.dtype), times]
    if spike != float("inf"):
        marks.append(torch.tensor([spike], dtype=times.dtype))
    grid = torch.unique(torch.cat(marks).clamp(0, t_max))
    names = tuple("input" if syn.source < 0 else snn.layers[syn.source].name for syn in lay.inputs)
    trace = NeuronTrace(lay.name, idx, lay.start, t_min, t_max, theta, start_current, times, fan["weights"],
                        fan["sources"], spike, forced, early, grid, torch.empty(0), final_slope,
                        input_layers=fan["layers"], input_delays=fan["delays"], input_synapses=fan["synapses"],
                        synapse_names=names, gated=lay.clip is not None and not lay.is_output, saturated=saturated)
    trace = replace(trace, potential=trace.potential_at(grid))
    if dt is not None or steps is not None:
        trace = _with_stepped(snn, x[:1], n, lay, idx, trace, dt, steps, start_current)
    return trace


def _with_stepped(snn, x, n, lay: Layer, idx, trace: NeuronTrace, dt, steps, start_current) -> NeuronTrace:
    """The clock-driven trace: I constant between ticks, V[k+1] = V[k] + h·I[k], inputs seen at the first tick of
    the neuron's input clock at or after their arrival (as `stepped.hidden_layer_loop`)."""
    res = snn.run_stepped(x, dt, steps=steps)
    in_ticks = ticks_per_window(lay.in_window, dt, steps)
    h_in = lay.in_window / in_ticks
    fan = _inputs(lay, res, idx)
    arrive = seen_at_tick(fan["times"], lay.in_window, in_ticks)
    weights = fan["weights"].to(trace.input_times.dtype)
    if lay.is_output:
        t_in, v_in = tick_potential(arrive, weights, in_ticks, h_in, start_current)
        return replace(trace, stepped_times=t_in, stepped_potential=v_in)
    own = res.ticks[n + 1]
    h = lay.window / own
    slope = float(lay.slope.expand(lay.shape)[idx])
    t_all, v_all = tick_potential(arrive, weights, in_ticks, h_in, start_current, own, h, slope)
    off = float(res.layers[n].offsets[(0, *idx)])
    saturated = bool(v_all[in_ticks] >= trace.theta) if trace.gated else None
    return replace(trace, stepped_times=t_all, stepped_potential=v_all, stepped_spike_time=lay.in_window + off,
                   stepped_saturated=saturated)


def membrane(snn, x: Tensor, layer: str | int, index: int | tuple[int, ...], times: Tensor,
             result: SimResult | None = None) -> Tensor:
    """Exact V(t) of one neuron at absolute times (MATH §2). Shape: times (T,) -> (T,)."""
    trace = neuron_trace(snn, x, layer, index, result=result)
    return trace.potential_at(torch.as_tensor(times, dtype=trace.input_times.dtype) - trace.origin)
