"""The fast exact early-spike certificate (MATH.md §2, "Certifying early spikes fast").

A hidden neuron whose inputs have all arrived by t_min^(n) has a closed-form spike time; it is wrong only if its
potential already reached θ *before* t_min (an early spike). Writing s = t_min^(n) − t (how long before the end of
the input window) and x_j ∈ [0, B_(n−1)] for the routed input activations, neuron i fires early exactly when

    h_i(s) = b_i + Σ_j W_ij · max(x_j, s) − κ_i s  ≥  B_n       for some s ∈ (0, B_(n−1)],

with κ_i = 1 for the α-model (§2: V and θ divided by the final slope α + ΣJ) and κ_i = Σ_j W_ij for B1 (§7, where
this is g_i(s) = b_i + Σ_j W_ij (x_j − s)⁺). Zero-padded taps count as inputs with x_j = 0; h_i(0) is the ReLU
pre-activation. This module proves h_i < B_n on the whole input window for almost every neuron with a few
weighted sums over the layer, and returns the few it cannot prove, for the exact search.

**The bound.** Split h_i = (linear in s) + Σ_{W>0} W max(x_j, s) (convex) + Σ_{W<0} W max(x_j, s) (concave).
On a cell [a, c] the convex and linear parts lie below their chord, so h_i lies below its own chord plus the
concave part's height above *its* chord. Input j with W_ij < 0 and a < x_j < c adds a kink of size |W_ij| at
x_j, and a single kink lifts the concave part above its chord by at most |W_ij|(x_j − a)(c − x_j)/(c − a) (the
tent of height |W_ij|·(x_j − a)(c − x_j)/(c − a) at x_j). Hence

    max_{s ∈ [a, c]} h_i(s)  ≤  max(h_i(a), h_i(c)) + Σ_{j: a<x_j<c, W_ij<0} |W_ij| (x_j − a)(c − x_j)/(c − a),

which is at most MATH's Δ(c − a)/4 and usually several times smaller. Both terms are one weighted sum over the
layer each: h_i at a level g is b_i + Σ_j W_ij (x_j − g)⁺ + g (Σ_j W_ij − κ_i) (padded taps give (0 − g)⁺ = 0, so a
zero-padded convolution computes it), and the deviation is the weighted sum, with weights max(−W, 0), of the
tent profile of the inputs. Above the sample's largest input m no kink is left: h_i is linear on [m, B_(n−1)]
and its values at both ends need no weighted sum.

**Stages.** (0) One cell [0, m] with every tent at its highest, (c − a)/4, needs no weighted sum: the bound is
max(v(0), v(m)) + m/4 · Σ_j |J_ij⁻|, per neuron. (1) One cell with the true tents: one weighted sum. (2, 4, 8, 16
cells) Levels at quantiles of each sample's non-zero inputs (activations crowd near 0, so uniform levels waste
the budget: measured on VGG16-BN, uniform cells leave 21–96 % of a layer uncertified with 4 cells where quantile
cells leave at most 0.2 % with 2 and none with 4); each inner level and each cell's tent is one weighted sum.
Every stage works only on the samples and output channels that still hold uncertified neurons, and stops when
(uncertified × fan-in) is small enough that the exact search (`sim.layer.search`) is cheaper. Where the neurons
left are a small share of what its weighted sums would cover (GATHER_COST), a stage computes the same bound on
their gathered fan-ins instead (`gathered_fails`): the same neurons settle, at a fraction of the cost. Measured on
VGG16-BN (random BN statistics, batch 64, margin 0.5): stage 0 settles 34 % of the neurons, one cell 49 %, two
cells 16 %, four cells the rest but ~0.1 ‰, which are searched.

**Units.** The code works in the neuron's own units, multiplying the inequality by the final slope
α + Σ_j J_ij > 0: with J_ij = (α + ΣJ) W_ij it reads

    v_i(s) = α (B_(n−1) − s) + Σ_j J_ij (x_j − s)⁺  ≥  θ_i,

which is V_i at t_min − s (α = 0 for B1), the same convex-plus-concave split (the signs of J are those of W) and
the same bound with |J| for |W|. So it certifies the network the simulator runs, even after its J were changed
(weight quantisation in `ttfs_core.robustness`).

A neuron is certified only when its bound is below θ_i by more than a rounding allowance (`rounding`), so a
certificate computed in float32 is never wrong by rounding; neurons within the allowance are searched exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from ..records import Synapses
from .dynamics import SEARCH_CHUNK, place_row_sums, weighted_sum
from .fanin import driving_groups, drop_silent, gather_rows, inside_taps, largest_fan_in, pad_input

CELLS = (1, 2, 4, 8, 16)  # cells per refinement stage; each stage runs only where the previous one left neurons
SEARCH_BUDGET = 1 << 16  # (uncertified neurons × fan-in) below which the exact search beats another stage
SAMPLE = 1024  # inputs per sample used to place the quantile levels (placement only; the bound holds anyway)
# a stage gathers the fan-ins of the neurons left (`gathered_fails`) when they are fewer than one in GATHER_COST of
# the neurons its weighted sums would cover: an element of a gathered fan-in costs about that many multiply-adds of
# a float64 convolution on the CPU, FAST_CONVOLUTION times more in other dtypes (oneDNN's convolutions). Measured
# on the certificates of RepVGG-A0's peak drive (64 inputs of 64×64, CPU seconds on one thread): float64 8.1 s
# never gathering, 4.7 s at 64; float32 6.4 s never, 3.3 s at 64, 3.2 s at 256; DPN-68 float32 16.5 s never, 15.1 s
# at 256
GATHER_COST = 64
FAST_CONVOLUTION = 4


@dataclass(frozen=True)
class Certificate:
    """Outcome for one layer and batch: `settled[k]` neurons were proved free of early spikes at stage k
    (named in `STAGES`),
    and `uncertified` marks the neurons left for the exact search. Shape: uncertified (B, *layer shape)."""

    uncertified: Tensor
    settled: tuple[int, ...]

    @property
    def searched(self) -> int:
        return int(torch.count_nonzero(self.uncertified))


# names of the entries of Certificate.settled: a bound with no weighted sum, then the cell stages
STAGES = ("no weighted sum", *(f"{k} cell" + "s" * (k > 1) for k in CELLS))


@dataclass(frozen=True)
class _Block:
    """The part of a layer a refinement stage works on: samples `rows` and (when the layer allows it) output
    channels `cols`, with the inputs (`Synapses`, their J restricted to the columns) and their activations `xs`
    restricted to them."""

    rows: Tensor | None  # None: every sample
    cols: Tensor | None  # None: every channel
    inputs: tuple[Synapses, ...]
    xs: tuple[Tensor, ...]  # what the weighted sums read (a depthwise input: its channels `cols` only)
    shape: tuple[int, ...]  # the neurons' shape per sample within the block


def per_neuron(inputs, sums: list[Tensor], shape: tuple[int, ...]) -> Tensor:
    """Per-input row sums (`sums[k]`, one per weight row of input k) per neuron of the layer, broadcastable to its
    shape (a conv input's sum is the same at every position: one per channel). Shape: -> (C, 1, 1) or (*shape)."""
    total = place_row_sums(inputs, sums, shape)
    return total.reshape(-1, 1, 1) if len(shape) == 3 else total.reshape(shape)


def level_values(block: _Block, g: Tensor, alpha: float, base: float) -> Tensor:
    """v_i(g) = α (B_(n−1) − g) + Σ_j J_ij (x_j − g)⁺ at one level g per sample: V_i at t_min − g (MATH §2).

    `base` = α B_(n−1). Shape: g (B,) -> (B, *neurons)."""
    xs = [(x - g.reshape(-1, *([1] * (x.dim() - 1)))).clamp(min=0) for x in block.xs]
    v = weighted_sum(block.inputs, xs, [syn.J for syn in block.inputs], block.shape)
    return v + (base - alpha * g).reshape(-1, *([1] * (v.dim() - 1)))


def tent_profile(x: Tensor, a: Tensor, c: Tensor) -> Tensor:
    """Each input's tent on the cell [a, c]: (x − a)(c − x)/(c − a), the most one inhibitory kink at x lifts the
    concave part above its chord there per unit of |J| (MATH §2). It is negative outside [a, c] and zero on its
    ends, so clamping it at 0 selects the cell's inputs without locating them. Shape: x, a, c broadcast together."""
    return ((x - a) * (c - x)).div_((c - a).clamp(min=torch.finfo(x.dtype).tiny)).clamp_(min=0)


def tent_deviations(block: _Block, negative: list[Tensor], levels: Tensor) -> list[Tensor]:
    """For every cell [a, c] between consecutive `levels`: Σ_{j: a<x_j<c, J_ij<0} |J_ij| (x_j − a)(c − x_j)/(c − a),
    how far the concave part of v_i can rise above its chord on that cell (MATH §2): one weighted sum of the inputs'
    `tent_profile` per cell. Shape: levels (B, K+1) ascending -> K × (B, *neurons)."""
    deviations = []
    for k in range(1, levels.shape[1]):
        xs = []
        for x in block.xs:
            per_sample = (-1, *([1] * (x.dim() - 1)))
            a, c = levels[:, k - 1].reshape(per_sample), levels[:, k].reshape(per_sample)
            xs.append(tent_profile(x, a, c))
        deviations.append(weighted_sum(block.inputs, xs, negative, block.shape))
    return deviations


def sorted_sample(xs: tuple[Tensor, ...]) -> Tensor:
    """Per sample, at most about SAMPLE of its inputs (over every tensor of `xs`), taken evenly from each tensor (a
    layer's many sources are never concatenated whole), sorted ascending: where `quantile_levels` places the levels
    of every stage. Shape: xs[k] (B, ...) -> (B, n)."""
    step = max(1, -(-sum(x[0].numel() for x in xs) // SAMPLE))
    picked = [x.flatten(1)[:, ::step] for x in xs]
    sample = torch.cat(picked, 1) if len(picked) > 1 else picked[0].contiguous()
    if sample.device.type == "cpu":  # NumPy's sort: measured 0.19 ms for 64 × 1024 float32, torch's 2.3 ms
        return torch.from_numpy(np.sort(sample.detach().numpy(), 1))
    return sample.sort(1).values


def quantile_levels(sample: Tensor, fractions: list[float]) -> list[Tensor]:
    """Per sample: the given quantiles of its non-zero inputs, read from its `sorted_sample`.
    Shape: sample (B, n) -> [(B,)] * len(fractions)."""
    n = sample.shape[1]
    active = (sample > 0).sum(1)
    levels = []
    for f in fractions:
        k = (n - active) + (f * (active - 1).clamp(min=0)).long()
        levels.append(sample.gather(1, k.clamp(0, n - 1)[:, None])[:, 0])
    return levels


def certify(J: Tensor, theta: Tensor, conv: dict | None, x: Tensor, v_end: Tensor, in_window: float,
            alpha: float, search_budget: int = SEARCH_BUDGET) -> Certificate:
    """`certify_layer` for a layer with a single input: weights J (geometry `conv`, None: dense), activations x."""
    syn = Synapses(-1, (), tuple(x.shape[1:]), J, conv, J=J)
    return certify_layer([syn], [x], theta, v_end, in_window, alpha, search_budget)


def certify_layer(inputs, xs: list[Tensor], theta: Tensor, v_end: Tensor, in_window: float, alpha: float,
                  search_budget: int = SEARCH_BUDGET) -> Certificate:
    """Prove, for every neuron of a hidden layer, that its potential stays below θ before t_min (module
    docstring), in stages of finer cells; return the neurons it cannot prove.

    `inputs` are the layer's `Synapses` (weights J, geometry, channels), `xs` their routed activations clamped to
    [0, `in_window`] (how long each input has been driving the neurons at t_min); `theta` the thresholds,
    `v_end` = V(t_min), `alpha` the start current (0 for B1).
    Shape: xs[k] (B, *in_shape k); v_end (B, *shape) -> uncertified (B, *shape).
    """
    inputs, xs = tuple(inputs), tuple(xs)
    shape = tuple(v_end.shape[1:])
    per_sample = (-1, *([1] * (v_end.dim() - 1)))
    base = alpha * in_window
    negative = [syn.J_negative for syn in inputs]  # computed once per record (`Synapses.J_row_sums` too)
    negative_sum = per_neuron(inputs, [syn.J_row_sums[0] for syn in inputs], shape)
    rounding = rounding_allowance(theta, per_neuron(inputs, [syn.J_row_sums[1] for syn in inputs], shape),
                                  in_window, base)
    # what does not depend on the neuron's own v_end is computed per sample and per weight row (a conv channel),
    # broadcast to the layer's shape only where v_end enters: stage 0 costs two passes over the layer.
    # The sample's largest input, source by source (a layer's sources are never concatenated whole)
    tops = [x.flatten(1).amax(1) for x in xs if x[0].numel()]
    top = (torch.stack(tops).amax(0) if tops else v_end.new_zeros(v_end.shape[0])).reshape(per_sample)
    fan_in = largest_fan_in(inputs, shape)
    limit, top_value, beyond, uncertified = no_sum_stage(theta - rounding, top, negative_sum, v_end, alpha, base)
    top = top.reshape(-1)
    left = Leftover(uncertified)
    settled = [v_end.numel() - left.count]
    padded = None  # the inputs with their convolutions' padding, once a stage gathers fan-ins
    sample = None  # each sample's inputs, sorted, once a stage places levels
    for cells in CELLS:
        if not left.stage_runs(fan_in, search_budget, v_end, limit, beyond):
            settled.append(0)  # nothing left, or so little that the exact search costs less than a stage
            continue
        count, uncertified = left.count, left.uncertified
        block = _restrict(uncertified, inputs, xs, shape)
        if cells > 1 and sample is None:  # sorted once per layer, for every stage
            sample = sorted_sample(xs)
        inner = quantile_levels(_rows(sample, block), [k / cells for k in range(1, cells)]) if cells > 1 else []
        top_b = _rows(top, block)
        levels = torch.stack([torch.zeros_like(top_b), *inner, top_b], 1)
        rows = v_end.shape[0] if block.rows is None else len(block.rows)
        cost = GATHER_COST * (1 if v_end.dtype == torch.float64 else FAST_CONVOLUTION)
        if count * cost < rows * math.prod(block.shape):  # few left: the same bound on their fan-ins
            if padded is None:
                padded = [pad_input(syn, x, 0.0) for syn, x in zip(inputs, xs)]  # a padded tap is x = 0
            idx = uncertified.nonzero(as_tuple=True)
            if block.rows is not None:  # each neuron's row of `levels`
                row_of = torch.zeros(v_end.shape[0], dtype=torch.long, device=v_end.device)
                row_of[block.rows] = torch.arange(len(block.rows), device=v_end.device)
                levels = levels[row_of[idx[0]]]
            else:
                levels = levels[idx[0]]
            fails = gathered_fails(inputs, shape, padded, idx, levels, v_end[idx],
                                   *(t.expand_as(v_end)[idx] for t in (top_value, limit)), alpha, base)
            uncertified = uncertified.clone()
            uncertified[idx] = fails
            left.update(uncertified, int(torch.count_nonzero(fails)))
            settled.append(count - left.count)
            continue
        values = [_take(v_end, block), *(level_values(block, g, alpha, base) for g in inner),
                  _take(top_value, block)]
        neg = negative if block.cols is None else [n[block.cols] for n in negative]
        limit_b = _take(limit, block)
        fails = None
        for k, dev in enumerate(tent_deviations(block, neg, levels)):
            exceeds = torch.maximum(values[k], values[k + 1]) + dev >= limit_b
            fails = exceeds if fails is None else fails.logical_or_(exceeds)
        fails &= _take(uncertified, block)
        # the neurons outside the block were all settled before
        left.update(_put(uncertified, block, fails), int(torch.count_nonzero(fails)))
        settled.append(count - left.count)
    return left.certificate(settled)


def rounding_allowance(theta: Tensor, abs_sum: Tensor, in_window: float, base: float) -> Tensor:
    """A neuron is certified only below θ − this: a few ulps of the largest terms that enter a level value
    (|θ|, Σ_j |J_ij| · B_(n−1), α B_(n−1)), so a certificate computed in float32 is never wrong by rounding."""
    return 64 * torch.finfo(abs_sum.dtype).eps * (theta.abs() + abs_sum * in_window + base)


def no_sum_stage(limit: Tensor, top: Tensor, negative_sum: Tensor, v_end: Tensor, alpha: float,
                 base: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Stage 0 of the certificate: one cell [0, m] with every tent at its highest, m/4, needs no weighted sum at all
    (Σ|J⁻| is per neuron): max(v(0), v(m)) + m/4 · Σ|J⁻| < limit, with v(0) = v_end. `limit` = θ − the rounding
    allowance; `top` = m, the largest input a neuron reads (per sample, or per sample and channel). Above m no kink
    is left: v is linear on [m, B_(n−1)], from v(m) = α (B_(n−1) − m) down to V = 0, so a neuron whose v(m) reaches
    its limit is never certified (`beyond`). Returns limit, v(m) and beyond, broadcastable to the layer's shape
    (sizes 1 where they do not vary: blocks take them cheaply), and the neurons left uncertified.
    Shape: top (B, 1, ...) or (B, C, 1, ...); v_end (B, *shape) -> four tensors broadcastable to (B, *shape)."""
    limit = limit.reshape((1,) * (v_end.dim() - limit.dim()) + tuple(limit.shape))  # a sample dimension of 1
    top_value = base - alpha * top
    beyond = (limit <= 0) | (top_value >= limit)
    below = limit - negative_sum * top / 4
    uncertified = (v_end >= below) | (beyond | (top_value >= below))
    return limit, top_value, beyond, uncertified


class Leftover:
    """The neurons a layer's certificate has not settled yet, between its stages: those the next stage works on
    (`uncertified`, `count`) and the hopeless ones set aside for the exact search. Every cell bound includes
    v(0) = v_end or v(m), so a neuron whose v_end reaches its limit, or that is `beyond`, can never be settled; in a
    layer whose window is short beside the rounding allowance most neurons are such (Inception-v3's 1×1 relays at
    80×80: 40 %). They are looked for once, before the first stage that runs (most layers never get there).
    Shape: uncertified (B, *shape) bool."""

    def __init__(self, uncertified: Tensor):
        self.uncertified = uncertified
        self.count = int(torch.count_nonzero(uncertified))
        self.hopeless: Tensor | None = None
        self._looked = False

    def stage_runs(self, fan_in: int, search_budget: int, v_end: Tensor, limit: Tensor, beyond: Tensor) -> bool:
        """Whether another stage is worth its sums: neurons are left, and more than the exact search takes cheaply."""
        if not self._looked and self.count * fan_in > search_budget:
            self._looked = True
            hopeless = (v_end >= limit) & self.uncertified
            if bool(beyond.any()):
                hopeless |= beyond & self.uncertified
            aside = int(torch.count_nonzero(hopeless))
            if aside:
                self.uncertified, self.hopeless, self.count = self.uncertified & ~hopeless, hopeless, self.count - aside
        return self.count * fan_in > search_budget

    def update(self, uncertified: Tensor, count: int | None = None) -> None:
        """After a stage: the neurons still uncertified (`count` of them, counted here if not given)."""
        self.uncertified = uncertified
        self.count = int(torch.count_nonzero(uncertified)) if count is None else count

    def certificate(self, settled: list[int]) -> Certificate:
        """The certificate: the neurons left to the exact search are those still uncertified and the hopeless."""
        return Certificate(self.uncertified if self.hopeless is None else self.uncertified | self.hopeless,
                           tuple(settled))


def gathered_fails(inputs, shape: tuple[int, ...], padded: list[Tensor], idx: tuple[Tensor, ...], levels: Tensor,
                   v_end: Tensor, top_value: Tensor, limit: Tensor, alpha: float, base: float) -> Tensor:
    """One refinement stage for the listed neurons only, on their gathered fan-ins (`fanin.gather_rows`): the
    bound of `certify_layer` (level values, then each cell's tents) as sums over each neuron's own inputs, in
    chunks of at most `dynamics.SEARCH_CHUNK` elements. Where few neurons are left this costs far less than the
    weighted sums over every neuron of their samples (a stage of K cells is 2K − 1 of them). Returns which still
    fail. Shape: idx (b, o[, ...]) each (F,); levels (F, K + 1) ascending; v_end, top_value, limit (F,) -> (F,) bool.
    """
    groups = driving_groups(inputs, idx)  # each neuron over the inputs that drive its channel
    if len(groups) > 1:
        fails = torch.empty(len(idx[0]), dtype=torch.bool, device=levels.device)
        for rows, ks in groups:
            fails[rows] = gathered_fails([inputs[k] for k in ks], shape, [padded[k] for k in ks],
                                         tuple(i[rows] for i in idx), levels[rows], v_end[rows], top_value[rows],
                                         limit[rows], alpha, base)
        return fails
    ws = [syn.J for syn in inputs]
    keeps, fan = inside_taps(inputs, padded, idx)  # a padded tap (x = 0) adds 0 to every level value and tent
    step = max(1, SEARCH_CHUNK // max(fan, 1))
    parts = []
    for lo in range(0, len(idx[0]), step):
        hi = min(lo + step, len(idx[0]))
        x, J, _ = gather_rows(inputs, shape, padded, ws, tuple(i[lo:hi] for i in idx), keeps)
        x, J = drop_silent(x, J, x > 0)  # an input at x = 0 adds exactly 0 to every level value and tent
        neg = (-J).clamp_(min=0)
        lv = levels[lo:hi]
        values = [v_end[lo:hi]]
        for k in range(1, lv.shape[1] - 1):
            g = lv[:, k:k + 1]
            values.append(torch.linalg.vecdot(J, (x - g).clamp_(min=0)) + (base - alpha * g[:, 0]))
        values.append(top_value[lo:hi])
        fails = torch.zeros(hi - lo, dtype=torch.bool, device=levels.device)
        for k in range(1, lv.shape[1]):
            a, c = lv[:, k - 1:k], lv[:, k:k + 1]
            tent = torch.linalg.vecdot(neg, tent_profile(x, a, c))
            fails |= torch.maximum(values[k - 1], values[k]) + tent >= limit[lo:hi]
        parts.append(fails)
    return torch.cat(parts)


def peak_drive(x: Tensor, w: Tensor, bias: Tensor, kappa: Tensor) -> Tensor:
    """The exact peak of h_i(s) = b_i + Σ_j W_ij max(x_j, s) − κ_i s over s ≥ 0 (the module docstring's drive,
    in the ReLU layer's units). h is piecewise linear with kinks at the inputs x_j, so its maximum over
    [0, max_j x_j] is at s = 0 (the pre-activation) or at a kink; beyond the largest input its slope is
    Σ_j W_ij − κ_i ≤ 0 (κ = 1 with Σ_j W_ij < 1 for the α-model, κ = Σ_j W_ij for B1), so this is the maximum
    over every s ≥ 0, whatever the windows. At the k-th smallest input, h = b + x_(k) Σ_{l≤k} W_(l) +
    Σ_{l>k} W_(l) x_(l) − κ x_(k): two cumulative sums after one sort (ties give the same value in either order).
    Shape: x, w (F, K); bias, kappa (F,) -> (F,)."""
    xs, order = x.sort(dim=1)
    ws = w.gather(1, order)
    cum_w = ws.cumsum(1)
    cum_wx = (ws * xs).cumsum(1)
    total = cum_wx[:, -1:] if x.shape[1] else torch.zeros_like(bias)[:, None]
    at_kinks = bias[:, None] + xs * (cum_w - kappa[:, None]) + (total - cum_wx)
    at_zero = bias + total[:, 0]
    return at_kinks.max(1).values.maximum(at_zero) if x.shape[1] else at_zero


def _restrict(mask: Tensor, inputs: tuple[Synapses, ...], xs: tuple[Tensor, ...], shape: tuple[int, ...]) -> _Block:
    """The samples holding uncertified neurons and, for a layer whose output channels can be computed apart
    (`_channels_apart`), their output channels: later stages compute weighted sums only there (leftovers
    concentrate in a few channels: measured on VGG16-BN, 0.05–7 % of them; on ResNet-50-D's blocks that add a
    shortcut, 0.1–33 % after the first cell)."""
    per_sample = mask.flatten(1).any(1)
    rows = None if bool(per_sample.all()) else per_sample.nonzero()[:, 0]
    cols = None
    if _channels_apart(inputs, shape):
        per_channel = (mask if rows is None else mask[rows]).any(0).reshape(shape[0], -1).any(1)
        if not bool(per_channel.all()):
            cols = per_channel.nonzero()[:, 0]
    block_xs = xs if rows is None else tuple(x[rows] for x in xs)
    parts, sum_xs = inputs, block_xs
    if cols is not None:
        parts = tuple(_channel_part(syn, cols) for syn in inputs)
        sum_xs = tuple(x if syn.conv is None or syn.conv["groups"] == 1 else x[:, cols]
                       for syn, x in zip(inputs, block_xs))
    block_shape = shape if cols is None else (len(cols), *shape[1:])
    return _Block(rows, cols, parts, sum_xs, block_shape)


def _channels_apart(inputs: tuple[Synapses, ...], shape: tuple[int, ...]) -> bool:
    """Whether some of a layer's output channels can be computed without the others: every input drives every
    channel (no concatenation) through a dense map (a flat layer), an ungrouped convolution, or a depthwise one
    with one output channel per input channel (output channel o reads input channel o)."""
    for syn in inputs:
        if syn.channels is not None or (syn.conv is None and len(shape) != 1):
            return False
        if syn.conv is not None and syn.conv["groups"] != 1 and not (
                syn.J.shape[1] == 1 and syn.conv["groups"] == syn.J.shape[0] == syn.in_shape[0]):
            return False
    return True


def _channel_part(syn: Synapses, cols: Tensor) -> Synapses:
    """The synapses into output channels `cols` only (`_channels_apart`); a depthwise one reads input channels
    `cols` too."""
    if syn.conv is None or syn.conv["groups"] == 1:
        return replace(syn, J=syn.J[cols])
    return replace(syn, J=syn.J[cols], conv={**syn.conv, "groups": len(cols)},
                   in_shape=(len(cols), *syn.in_shape[1:]))


def _rows(t: Tensor, block: _Block) -> Tensor:
    return t if block.rows is None else t[block.rows]


def _take(t: Tensor, block: _Block) -> Tensor:
    """The block's part of a layer-shaped tensor, or of one broadcastable to the layer's shape (a dimension of size
    1, which does not vary, is kept: the block never restricts one of size 1, since it holds every sample or channel
    that way). Shape: (B, C, ...) -> (rows, cols, ...)."""
    if block.rows is not None and t.shape[0] > 1:
        t = t[block.rows]
    return t if block.cols is None or t.shape[1] == 1 else t[:, block.cols]


def _put(full: Tensor, block: _Block, part: Tensor) -> Tensor:
    """`full` with the block's part replaced (a new tensor)."""
    if block.rows is None and block.cols is None:
        return part
    full = full.clone()
    rows = torch.arange(full.shape[0], device=full.device) if block.rows is None else block.rows
    if block.cols is None:
        full[rows] = part
    else:
        full[rows[:, None], block.cols[None, :]] = part
    return full
