"""Time-stepped (clock-driven) simulation (MATH §6).

The clock ticks S_m times in every window m (tick length h_m = B_m / S_m, so window boundaries are ticks).
A neuron of layer n integrates through its input window (clock of window n−1) and its own window (clock n):

    I[k] = α + Σ_j J_j·[a_j ≤ k],   V[k+1] = V[k] + h·I[k],   spike at the first tick with V[k] ≥ θ,

where a_j is the tick at which input j arrived (the source fires on its own ticks; the input layer fires at the
first tick at or after its exact time). Forced at t_max. From t_min on every input has arrived, so the current
is the final slope α + Σ_j J_j (zero-padded taps included). A layer reading several layers (MATH §5) runs its
input window on the clock of the longest window it reads (h_in = in_window / S); an input from a source on another
clock (a shorter window, its spikes delayed) is seen at the first tick at or after its arrival. A gated (ReLU6)
neuron cannot fire before t_min: one with V ≥ θ at that tick fires there and saturates. A crossing within rounding
after a tick counts as on it (`tick_of`; in the loop: V within rounding of θ).

Two implementations of the same dynamics:
- "loop": the literal clock loop. Per tick, the arriving spikes add their weights to their targets' currents
  (a sparse scatter, one weighted sum per arriving spike) and every neuron's potential advances by h·I.
  O(ticks × neurons) plus the fan-out of every spike. The reference.
- "fast": the same discrete dynamics solved per neuron. Between ticks V is linear with kinks only at ticks,
  so the first tick with V ≥ θ is the ceiling of the first crossing of the piecewise-linear V whose inputs
  arrive at their ticks; that crossing is found with the event-driven machinery (one weighted sum per layer,
  exact search for flagged neurons). Agrees with "loop" tick for tick (tests), at event-driven cost.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..neurons import NeuronModel, Rescale
from ..records import Layer
from .dynamics import early_mask, settle_spikes
from .layer import arrivals, hidden_layer_exact


def ticks_per_window(window: float, dt: float | None, steps: int | None) -> int:
    """S_m: `steps` ticks per window, or enough ticks that none is longer than `dt`."""
    if steps is not None:
        return int(steps)
    return max(1, math.ceil(window / dt - 1e-9))


def tick_of(offsets: Tensor, h: float, first: bool, ticks: int = 1) -> Tensor:
    """Tick index of times given as offsets from a window start. `first`: the first tick at or after the time
    (a neuron that fires between ticks is seen at the next tick; a time within rounding of a tick, relative to
    the window's `ticks`, counts as on it); else the nearest tick (times already on the grid)."""
    r = offsets / h
    if not first:
        return r.round_()
    return r.sub_(64 * torch.finfo(offsets.dtype).eps * max(ticks, 1)).ceil_()


def quantise_input(t0: Tensor, ticks: int) -> Tensor:
    """Input neurons fire at the first tick at or after t^(0) = 1 − x̂ (window [0, 1], S_0 ticks)."""
    h = 1.0 / ticks
    return (tick_of(t0, h, first=True, ticks=ticks).clamp(0, ticks) * h).to(t0.dtype)


def on_ticks(offsets: Tensor, window: float, ticks: int, in_window: float, in_ticks: int) -> Tensor:
    """Round exact crossing offsets (from t_min) up to ticks: the own window's ticks after t_min, the input
    window's ticks before it (an early spike). Infinite offsets (no spike) stay infinite."""
    h, h_in = window / ticks, in_window / in_ticks
    k = tick_of(offsets, h, first=True, ticks=ticks).clamp_(min=0)
    out = torch.where(k >= ticks, window, k.mul_(h))  # an infinite offset (no spike) stays infinite
    early = early_mask(offsets)
    if bool(early.any()):
        before = offsets[early] + in_window
        out[early] = (tick_of(before, h_in, first=True, ticks=in_ticks).clamp(min=0) - in_ticks) * h_in
    return out


def tick_potential(arrive: Tensor, weights: Tensor, in_ticks: int, h_in: float, start_current: float,
                   ticks: int = 0, h: float = 0.0, final_current: float = 0.0) -> tuple[Tensor, Tensor]:
    """One neuron's clock-driven potential on its ticks: I[k] = I_0 + Σ_j J_j·[a_j ≤ k], V[k+1] = V[k] + h·I[k]
    through the input window, then `ticks` ticks of length h at the final current (every input has arrived).

    Returns tick times (relative to the neuron's start) and V at them. Shape: arrive, weights (K,) ->
    (in_ticks + ticks + 1,) each.
    """
    dtype, dev = weights.dtype, weights.device
    arrived = torch.zeros(in_ticks + 1, dtype=dtype, device=dev).index_add_(0, arrive, weights)
    current = start_current + arrived.cumsum(0)[:in_ticks]
    v_in = torch.cat([torch.zeros(1, dtype=dtype, device=dev), (h_in * current).cumsum(0)])
    m = torch.arange(1, ticks + 1, dtype=dtype, device=dev)
    times = torch.cat([torch.arange(in_ticks + 1, dtype=dtype, device=dev) * h_in, in_ticks * h_in + m * h])
    return times, torch.cat([v_in, v_in[-1] + m * h * final_current])


# --------------------------------------------------------------------------------------------------------
def seen_at_tick(arrive: Tensor, in_window: float, in_ticks: int) -> Tensor:
    """The tick of a neuron's input clock (h_in = in_window / in_ticks, counted from its start) at which an input
    arriving at `arrive` (after the start, = in_window − its elapsed time, `sim.layer.elapsed`) is seen: the first
    tick at or after its arrival. For a source on the same clock (its window is the neuron's input window) the
    arrival is already a tick. Shape: any -> same (long)."""
    h_in = in_window / in_ticks
    return tick_of(arrive, h_in, first=True, ticks=in_ticks).clamp_(0, in_ticks).to(torch.long)


def arrival_ticks(layer: Layer, in_ticks: int, on_clock: list[bool], elapsed: list[Tensor]) -> list[Tensor]:
    """Elapsed times of inputs whose source runs on another clock, moved to the neuron's next input tick
    (`seen_at_tick`); inputs `on_clock` stay. Shape: as `sim.layer.arrivals`."""
    h = layer.in_window / in_ticks
    out = []
    for e, same in zip(elapsed, on_clock):
        if same:
            out.append(e)
            continue
        k = seen_at_tick(layer.in_window - e, layer.in_window, in_ticks)
        out.append(layer.in_window - k.to(e.dtype) * h)
    return out


def hidden_layer_ticks(layer: Layer, srcs: list[Tensor], in_ticks: int, ticks: int, on_clock: list[bool],
                       alpha: float, neuron: NeuronModel, rescale: Rescale):
    """The "fast" clock-driven hidden layer (module docstring): inputs from a source on another clock than the
    neuron's input window (`on_clock` False) are seen at its next tick, the exact crossing of that piecewise-
    linear V is found (`sim.layer.hidden_layer_exact`) and rounded up to the ticks. Shape: as the loop."""
    arrive = None if all(on_clock) else (lambda e: arrival_ticks(layer, in_ticks, on_clock, e))
    off, stats = hidden_layer_exact(layer, srcs, alpha, neuron, rescale, arrive)
    off = on_ticks(off, layer.window, ticks, layer.in_window, in_ticks)
    off, settled = settle_spikes(off, layer.window, neuron.silent_at_zero, stats["early_arrivals"])
    return off, {**stats, **settled}


def hidden_layer_loop(layer: Layer, srcs: list[Tensor], in_ticks: int, ticks: int, alpha: float,
                      neuron: NeuronModel):
    """The literal clock loop for one hidden layer reading one or more layers (MATH §5, §6).

    Input k's spikes are routed and delayed (`sim.layer.arrivals`) and seen at the first tick of the neuron's input
    clock at or after their arrival; a gated (ReLU6) layer cannot fire before t_min (tick `in_ticks`), and a neuron
    that fires exactly there saturates (counted in the stats as "saturated").
    Shape: srcs[k] (B, *source k) -> (B, *layer.shape).
    """
    gated = layer.clip is not None
    h_in, h = layer.in_window / in_ticks, layer.window / ticks
    elapsed, early_arrivals = arrivals(layer, srcs)
    batch = srcs[0].shape[0]
    theta = layer.theta.expand(batch, *layer.shape).reshape(-1)
    slope = layer.slope.expand(batch, *layer.shape).reshape(-1)
    v = torch.zeros_like(theta)
    current = torch.full_like(theta, neuron.start_current(alpha))
    fired = torch.full(theta.shape, -1, dtype=torch.long, device=theta.device)
    # per input: its spikes sorted by arrival tick, and where each tick's spikes start in that order
    inputs = []
    for syn, e in zip(layer.inputs, elapsed):
        arrival = seen_at_tick(layer.in_window - e, layer.in_window, in_ticks).flatten()
        order = arrival.argsort(stable=True)
        bounds = [0, *torch.bincount(arrival, minlength=in_ticks + 1).cumsum(0).tolist()]
        inputs.append((_Scatter(layer, syn, batch), order, bounds))
    saturated = torch.zeros(theta.shape, dtype=torch.bool, device=theta.device)
    # a crossing within rounding after a tick counts as on it (as in `tick_of`): V within current·tol of θ
    eps = 64 * torch.finfo(theta.dtype).eps
    tol_in, tol = eps * layer.in_window, eps * layer.window
    # ticks of the input window, then the own window; tick index k counts from the neuron's start
    for k in range(in_ticks + ticks + 1):
        if k < in_ticks:
            for scatter, order, bounds in inputs:
                if bounds[k + 1] > bounds[k]:
                    scatter.add(current, order[bounds[k]:bounds[k + 1]])
        if k == in_ticks:
            current = slope.clone()  # every input (and zero-padded tap) has arrived at t_min
            if gated:  # fired at t_min with V ≥ θ there: the clipped value
                saturated = v >= theta
        if k >= in_ticks or not gated:  # the gated neuron's threshold is switched on at t_min
            newly = (v + current.clamp(min=0) * (tol_in if k < in_ticks else tol) >= theta) & (fired < 0)
            fired = torch.where(newly, torch.full_like(fired, k), fired)
        v += (h_in if k < in_ticks else h) * current
    fired = fired.reshape(batch, *layer.shape)
    rel = (fired - in_ticks).to(srcs[0].dtype)
    off = torch.where(fired < in_ticks, rel * h_in, rel * h)
    off = torch.where((fired < 0) | (fired >= in_ticks + ticks), layer.window, off)  # never crossed by t_max
    off, stats = settle_spikes(off, layer.window, neuron.silent_at_zero, early_arrivals)
    if gated:
        stats["saturated"] = int(torch.count_nonzero(saturated))
    return off, stats


class _Scatter:
    """Adds the weights of one input's (`Synapses`) arriving spikes to their targets' input currents (sparse, per
    tick), honouring the output channels [lo, hi) the input drives.

    Currents are the layer's neurons flattened, (batch · neurons,); one arriving spike adds one weight row (the
    output channels of its group) per kernel tap of a convolution, or one row over the part of a dense map.
    """

    def __init__(self, layer: Layer, syn, batch: int):
        self.syn = syn
        self.shape = layer.shape
        self.neurons = math.prod(layer.shape)
        self.batch = batch
        lo, hi = syn.channels if syn.channels is not None else (0, layer.shape[0])
        self.lo = lo
        per_channel = math.prod(layer.shape[1:])
        J = syn.J
        if syn.conv is not None:
            out_ch, cin_g, kh, kw = J.shape
            self.groups = syn.conv["groups"]
            self.og = out_ch // self.groups
            self.cin_g = cin_g
            # (G, Cin_g, kh, kw, O_g): the weight row a spike at input channel c, tap (ky, kx) sends
            self.rows = J.reshape(self.groups, self.og, cin_g, kh, kw).permute(0, 2, 3, 4, 1).contiguous()
        else:
            self.rows = J.t().contiguous()  # (inputs, neurons of the part)
            self.targets = lo * per_channel + torch.arange((hi - lo) * per_channel, device=J.device)  # its neurons

    def add(self, current: Tensor, flat_idx: Tensor) -> None:
        """Add the weights of the spikes at `flat_idx` (flat indices into (B, *in_shape)) to `current`."""
        syn = self.syn
        in_shape = syn.in_shape
        if syn.conv is None:
            per = math.prod(in_shape)
            b, j = flat_idx // per, flat_idx % per
            rows = (b[:, None] * self.neurons + self.targets[None, :]).flatten()
            current.index_add_(0, rows, self.rows[j].flatten())
            return
        cin, hin, win = in_shape
        b = flat_idx // (cin * hin * win)
        c = (flat_idx // (hin * win)) % cin
        y = (flat_idx // win) % hin
        x = flat_idx % win
        (ph, pw), (sh, sw), (dh, dw) = syn.conv["padding"], syn.conv["stride"], syn.conv["dilation"]
        channels, hout, wout = self.shape
        g, cl = c // self.cin_g, c % self.cin_g
        kh, kw = self.rows.shape[2], self.rows.shape[3]
        ky = torch.arange(kh, device=flat_idx.device).repeat_interleave(kw)
        kx = torch.arange(kw, device=flat_idx.device).repeat(kh)
        ny = y[:, None] + ph - ky[None, :] * dh  # = oy·sh for a target output row oy
        nx = x[:, None] + pw - kx[None, :] * dw
        ok = (ny % sh == 0) & (nx % sw == 0)
        oy, ox = torch.div(ny, sh, rounding_mode="floor"), torch.div(nx, sw, rounding_mode="floor")
        ok &= (oy >= 0) & (oy < hout) & (ox >= 0) & (ox < wout)
        a, t = ok.nonzero(as_tuple=True)
        out_c = self.lo + g[a, None] * self.og + torch.arange(self.og, device=g.device)[None, :]  # (spike-taps, O_g)
        rows = ((b[a, None] * channels + out_c) * hout + oy[a, t, None]) * wout + ox[a, t, None]
        current.index_add_(0, rows.flatten(), self.rows[g[a], cl[a], ky[t], kx[t]].flatten())
