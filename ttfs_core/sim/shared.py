"""Weighted sums that the readers of one source share within a run (MATH §2, "Certifying early spikes fast"; §5).

A channel concatenation gives each of its parts its own output channels (`Synapses.channels`), and a DenseNet reads
every earlier layer of a dense block that way, each reader through a BatchNorm of its own: layer j of a block reads
the 3×3 convolution of every layer i < j, and so does the block's transition. The weights of two readers of one
part differ by a factor per output channel, J = d · K with K the first reader's (d folds the reader's BatchNorm and
its neuron's normalisation), and every reader sees the same elapsed times x (its input window covers the source's).
So the weighted sums a reader's certificate needs are computed once per part and run:

    Q(g) = Σ_j K_ij (x_j − g)⁺          at the levels g,
    T±   = Σ_j K±_ij · tent_(a,c)(x_j)   on the cells [a, c], with K⁺ = max(K, 0) and K⁻ = max(−K, 0),

at levels placed on the part's own inputs (the quantiles of `sim.certify`, and the part's largest input: each
neuron reads one part only, so beyond it no kink is left). Each reader scales them (`sim.certify.certify_parts`):
its level value is α (B − g) + d · Q(g), and its tent weight max(−J, 0) = d⁺ K⁻ + d⁻ K⁺ gives the deviation
d⁺ T⁻ + d⁻ T⁺, with d± = max(±d, 0). V(t_min) itself is α B + d · Q(0) (`potential`). A DenseNet-121 reader of j
parts paid j convolutions for each weighted sum; it now pays elementwise work, and each part's convolutions are
paid once.

A factor d is accepted only where |J − d K| ≤ FACTOR_ULPS · eps · |J| holds for every weight (else the layer
computes its own sums), so a scaled sum differs from the reader's own by at most that share of Σ_j |J_ij| x_j,
which the certificate adds to its rounding allowance (`factor_allowance`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .certify import (
    CELLS,
    FAST_CONVOLUTION,
    GATHER_COST,
    SEARCH_BUDGET,
    Certificate,
    Leftover,
    gathered_fails,
    no_sum_stage,
    per_neuron,
    quantile_levels,
    rounding_allowance,
    sorted_sample,
    tent_profile,
)
from .dynamics import geometry, product
from .fanin import largest_fan_in, pad_input

FACTOR_ULPS = 16  # how far, in units of the dtype's eps relative to |J|, a reader's J may lie from d · K


class Source:
    """One part read by several layers: its elapsed times `x` (B, C_in, H, W) and the first reader's synapses `syn`,
    whose J is the shared kernel K. Each sum is computed when a reader first asks for it, and kept for the run."""

    def __init__(self, src: Tensor, syn, x: Tensor, part: tuple[int, ...]):
        self.src, self.syn, self.x, self.part = src, syn, x, part  # part: (C, H', W'), the channels it drives
        self.top = x.flatten(1).amax(1) if x[0].numel() else x.new_zeros(x.shape[0])  # its largest input, (B,)
        self._sample: Tensor | None = None
        self._levels: dict[int, Tensor] = {}
        self._values: dict[int, tuple[Tensor, ...]] = {1: ()}
        self._tents: dict[tuple[int, bool], tuple[Tensor, ...]] = {}
        self._at_zero: Tensor | None = None

    def factor(self, syn) -> tuple[Tensor, bool, bool] | None:
        """d with J = d · K for this reader's synapses (within FACTOR_ULPS), and whether some d > 0 and some d < 0;
        None where no such d exists. Kept on the reader's record (`Synapses.factors`). Shape: -> (C,)."""
        if syn is self.syn:
            return torch.ones(syn.J.shape[0], dtype=syn.J.dtype, device=syn.J.device), True, False
        known = syn.factors.get(id(self.syn))
        if known is None or known[0] is not self.syn:
            d = _factor(syn.J, self.syn.J)
            known = syn.factors[id(self.syn)] = (self.syn, None if d is None else
                                                 (d, bool((d > 0).any()), bool((d < 0).any())))
        return known[1]

    def at_zero(self) -> Tensor:
        """Q(0) = Σ_j K_ij x_j. Shape: -> (B, C, H', W')."""
        if self._at_zero is None:
            self._at_zero = product(self.syn, self.x, self.syn.J, self.part)
        return self._at_zero

    def levels(self, cells: int) -> Tensor:
        """The cell boundaries of a stage of `cells` cells: 0, quantiles of the part's non-zero inputs, its largest
        input (`sim.certify.quantile_levels`). Shape: -> (B, cells + 1)."""
        if cells not in self._levels:
            inner = []
            if cells > 1:
                if self._sample is None:
                    self._sample = sorted_sample((self.x,))
                inner = quantile_levels(self._sample, [k / cells for k in range(1, cells)])
            self._levels[cells] = torch.stack([torch.zeros_like(self.top), *inner, self.top], 1)
        return self._levels[cells]

    def ready(self, cells: int, by_negative: bool, by_positive: bool) -> bool:
        """Whether the sums a stage of `cells` cells needs are computed: the level values, and the tents by K⁻
        (readers with d > 0) and by K⁺ (readers with d < 0) as asked."""
        return cells in self._values and all((cells, neg) in self._tents
                                             for neg, asked in ((True, by_negative), (False, by_positive)) if asked)

    def values(self, cells: int) -> tuple[Tensor, ...]:
        """Q(g) = Σ_j K_ij (x_j − g)⁺ at the stage's inner levels: one convolution, the levels stacked along the
        batch. Shape: -> (cells − 1) × (B, C, H', W')."""
        if cells not in self._values:
            levels, x = self.levels(cells), self.x
            per_sample = (-1, *([1] * (x.dim() - 1)))
            shifted = torch.cat([(x - levels[:, k].reshape(per_sample)).clamp_(min=0) for k in range(1, cells)])
            self._values[cells] = tuple(product(self.syn, shifted, self.syn.J, self.part).split(x.shape[0]))
        return self._values[cells]

    def tents(self, cells: int, by_negative: bool) -> tuple[Tensor, ...]:
        """Each cell's tent profile weighted by K⁻ (`by_negative`) or by K⁺: one convolution, the cells stacked
        along the batch. Shape: -> cells × (B, C, H', W')."""
        key = (cells, by_negative)
        if key not in self._tents:
            levels, x = self.levels(cells), self.x
            per_sample = (-1, *([1] * (x.dim() - 1)))
            profiles = []
            for k in range(1, cells + 1):
                a, c = levels[:, k - 1].reshape(per_sample), levels[:, k].reshape(per_sample)
                profiles.append(tent_profile(x, a, c))
            weights = self.syn.J_negative if by_negative else self.syn.J.clamp(min=0)
            self._tents[key] = tuple(product(self.syn, torch.cat(profiles), weights, self.part).split(x.shape[0]))
        return self._tents[key]


@dataclass(frozen=True)
class Part:
    """One part of a layer read through a shared `Source`: its synapses, the reader's factor d (C,), whether some
    d > 0 (its tents weigh by K⁻) and some d < 0 (by K⁺), and the output channels [lo, hi) it drives."""

    syn: object
    source: Source
    d: Tensor
    positive: bool
    negative: bool
    lo: int
    hi: int


class Shared:
    """The shared sums of one run over one chunk of inputs: a `Source` per part that layers read through the same
    kernel up to a factor. `last_readers[m + 1]`: the last layer reading layer m (`SpikingNetwork.last_readers`;
    `release` lets go of its sums)."""

    def __init__(self, last_readers: list[int] | None = None):
        self._sources: dict[tuple, Source] = {}
        self._arrivals: dict[tuple, tuple[Tensor, Tensor, int]] = {}
        self._last = last_readers

    def arrival(self, layer, syn, src: Tensor, compute) -> tuple[Tensor, int]:
        """An input's elapsed times and count of early arrivals (`sim.layer.arrivals`), computed once per run for
        every layer reading the same source through the same route, delay and window: the elapsed times depend on
        the reader only through min(its input window, the source's). DenseNet-121's 121 layers have 593 inputs
        from 120 sources. `compute()` gives them where not known. Shape: -> (B, *syn.in_shape), int."""
        key = (syn.source, tuple(id(p) for p in syn.route), syn.in_window, min(layer.in_window, syn.in_window))
        known = self._arrivals.get(key)
        if known is None or known[0] is not src:
            known = self._arrivals[key] = (src, *compute())
        return known[1], known[2]

    def parts(self, layer, srcs: list[Tensor], xs: list[Tensor]) -> list[Part] | None:
        """A layer whose every input is a convolution driving its own output channels, together each
        channel once (a concatenation read whole: DenseNet's `relu1` and transition layers), as its parts in channel
        order, each with its shared `Source`; None for any other layer, or when a part's weights are not a factor
        times the shared kernel, or its elapsed times differ from the other readers' (a shorter input window).
        Shape: srcs[k] the source's offsets, xs[k] (B, *in_shape k) its elapsed times."""
        inputs = layer.inputs
        if len(inputs) < 2 or len(layer.shape) != 3:
            return None
        if any(syn.conv is None or syn.channels is None or syn.J is None
               or layer.in_window < syn.in_window for syn in inputs):
            return None
        order = sorted(range(len(inputs)), key=lambda k: inputs[k].channels[0])
        edge = 0
        for k in order:
            if inputs[k].channels[0] != edge:
                return None
            edge = inputs[k].channels[1]
        if edge != layer.shape[0]:
            return None
        out = []
        for k in order:
            syn, x = inputs[k], xs[k]
            lo, hi = syn.channels
            key = (syn.source, tuple(id(p) for p in syn.route), syn.in_window, geometry(syn.conv),
                   tuple(syn.J.shape), tuple(x.shape), x.dtype)
            source = self._sources.get(key)
            if source is None or source.src is not srcs[k]:
                source = self._sources[key] = Source(srcs[k], syn, x, (hi - lo, *layer.shape[1:]))
            factor = source.factor(syn)
            if factor is None:
                return None
            out.append(Part(syn, source, *factor, lo, hi))
        return out

    def release(self, n: int) -> None:
        """Let go of the sums and arrivals of every source whose last reader is layer n or earlier."""
        for cache in (self._sources, self._arrivals):
            for key in [key for key in cache if self._last is not None and self._last[key[0] + 1] <= n]:
                del cache[key]


def potential(parts: list[Part], base: float) -> Tensor:
    """V(t_min) = α B + Σ_j J_ij x_j of a layer of parts, from the shared Q(0): α B + d · Q(0) per part
    (module docstring). `base` = α B. Shape: -> (B, *shape)."""
    pieces = [p.source.at_zero() * p.d.reshape(-1, 1, 1) for p in parts]
    return torch.cat(pieces, 1).add_(base)


def certify_parts(parts: list[Part], inputs, xs: list[Tensor], theta: Tensor, v_end: Tensor, in_window: float,
                  alpha: float, search_budget: int = SEARCH_BUDGET) -> Certificate:
    """`sim.certify.certify_layer` for a layer of `parts` (`Shared.parts`), from the sums its parts share with the
    other readers of their sources (module docstring): the same stages, bounds and exact-search hand-over, with
    levels placed per part, and a neuron's largest input its own part's. Where a stage's sums are not shared yet and
    few neurons are left, it gathers their fan-ins on the reader's own weights instead (`gathered_fails`).
    Shape: xs[k] (B, *in_shape k); v_end (B, C, H, W) -> uncertified (B, C, H, W)."""
    shape = tuple(v_end.shape[1:])
    batch = v_end.shape[0]
    base = alpha * in_window
    abs_sum = per_neuron(inputs, [syn.J_row_sums[1] for syn in inputs], shape)
    rounding = rounding_allowance(theta, abs_sum, in_window, base) + factor_allowance(abs_sum, in_window, v_end.dtype)
    negative_sum = per_neuron(inputs, [syn.J_row_sums[0] for syn in inputs], shape)
    d = torch.cat([p.d for p in parts]).reshape(-1, 1, 1)
    d_plus, d_minus = d.clamp(min=0), (-d).clamp(min=0)

    def per_channel(values) -> Tensor:  # one (B,) per part -> (B, C, 1, 1)
        return torch.cat([v[:, None].expand(batch, p.hi - p.lo) for p, v in zip(parts, values)], 1)[..., None, None]

    top = per_channel([p.source.top for p in parts])
    limit, top_value, beyond, uncertified = no_sum_stage(theta - rounding, top, negative_sum, v_end, alpha, base)
    fan_in = largest_fan_in(inputs, shape)
    left = Leftover(uncertified)
    settled = [v_end.numel() - left.count]
    padded = None
    cost = GATHER_COST * (1 if v_end.dtype == torch.float64 else FAST_CONVOLUTION)
    for cells in CELLS:
        if not left.stage_runs(fan_in, search_budget, v_end, limit, beyond):
            settled.append(0)
            continue
        count, uncertified = left.count, left.uncertified
        # per part: its shared sums when they exist or when many of its neurons are left (later readers reuse
        # them), else the same bound on the gathered fan-ins of its neurons left, on the reader's own weights
        edges = torch.cat([v_end.new_zeros(1, dtype=torch.long), uncertified.sum((0, 2, 3)).cumsum(0)])
        counts = [int(n) for n in (edges[[p.hi for p in parts]] - edges[[p.lo for p in parts]]).tolist()]
        shared, gather = [], []
        for p, n in zip(parts, counts):
            use = n and (p.source.ready(cells, p.positive, p.negative)
                         or n * cost >= batch * (p.hi - p.lo) * math.prod(shape[1:]))
            shared.append(p if use else None)
            if n and not use:
                gather.append(p)
        fails = torch.zeros_like(uncertified)  # none of the neurons left is `beyond`: `Leftover` set those aside
        if any(shared):
            levels = [per_channel([p.source.levels(cells)[:, k] for p in parts]) for k in range(cells + 1)]
            values = [v_end, *(base - alpha * levels[k] + d * _side_by_side(
                parts, [q and q.source.values(cells)[k - 1] for q in shared]) for k in range(1, cells)), top_value]
            for k in range(cells):
                deviation = torch.zeros((), dtype=v_end.dtype, device=v_end.device)
                if any(q and q.positive for q in shared):
                    deviation = d_plus * _side_by_side(parts, [q and q.positive and q.source.tents(cells, True)[k]
                                                               for q in shared])
                if any(q and q.negative for q in shared):
                    deviation = deviation + d_minus * _side_by_side(
                        parts, [q and q.negative and q.source.tents(cells, False)[k] for q in shared])
                fails |= torch.maximum(values[k], values[k + 1]) + deviation >= limit
        fails = fails & uncertified
        if gather:
            if padded is None:
                padded = [pad_input(syn, x, 0.0) for syn, x in zip(inputs, xs)]  # a padded tap is x = 0
            picked = torch.zeros(shape[0], dtype=torch.bool, device=v_end.device)
            for p in gather:
                picked[p.lo:p.hi] = True
            idx = (uncertified & picked.reshape(-1, 1, 1)).nonzero(as_tuple=True)
            levels = torch.cat([p.source.levels(cells)[:, None].expand(-1, p.hi - p.lo, -1) for p in parts], 1)
            fails[idx] = gathered_fails(inputs, shape, padded, idx, levels[idx[0], idx[1]], v_end[idx],
                                        *(t.expand_as(v_end)[idx] for t in (top_value, limit)), alpha, base)
        left.update(fails)
        settled.append(count - left.count)
    return left.certificate(settled)


def _side_by_side(parts: list[Part], pieces: list) -> Tensor:
    """One shared sum per part, the reader's channels side by side; zeros where a part gives none (a falsy piece:
    none of its neurons is asked, or its factor has no sign that reads this sum). Shape: -> (B, C, H, W)."""
    like = next(t for t in pieces if isinstance(t, Tensor))
    zero = like.new_zeros(())
    return torch.cat([t if isinstance(t, Tensor) else zero.expand(like.shape[0], p.hi - p.lo, *like.shape[2:])
                      for p, t in zip(parts, pieces)], 1)


def factor_allowance(abs_sum: Tensor, in_window: float, dtype: torch.dtype) -> Tensor:
    """How far a sum scaled from the shared kernel may lie from the reader's own: (FACTOR_ULPS + 2) · eps ·
    Σ_j |J_ij| · B_(n−1) for each level value and as much for a tent (the 2 ulps: the scaling's rounding)."""
    return 2 * (FACTOR_ULPS + 2) * torch.finfo(dtype).eps * abs_sum * in_window


def _factor(J: Tensor, K: Tensor) -> Tensor | None:
    """The per-row d with J = d · K to within FACTOR_ULPS, or None. Shape: J, K (C, ...) -> (C,)."""
    if J.shape != K.shape or J.dtype != K.dtype:
        return None
    j, k = J.flatten(1), K.flatten(1)
    norm = (k * k).sum(1)
    d = torch.where(norm > 0, (j * k).sum(1) / norm.clamp(min=torch.finfo(J.dtype).tiny), torch.zeros_like(norm))
    if not bool(((j - d[:, None] * k).abs() <= FACTOR_ULPS * torch.finfo(J.dtype).eps * j.abs()).all()):
        return None
    return d
