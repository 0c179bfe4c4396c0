"""One time axis for the whole network, and the spike data the figures draw (pure numpy, no Streamlit).

Window 0 is the input window [0, 1]; window n ≥ 1 is hidden layer n's window [t_min^(n), t_max^(n)] (MATH §1).
Two coordinates for the same instant:

- absolute time t (units of τ_c), as the simulator counts it;
- stretched position u = n + (t − t_min^(n)) / B_n, every window mapped to [n, n + 1]. Deep windows shrink
  (the bundled LeNet: 1.43, 0.30, 0.037, 0.013), so on the absolute axis they collapse to a line; the
  stretched axis gives each one equal width. Positions are computed from offsets (t − t_min, full precision),
  never from absolute times, so windows of 1e-15 τ_c still resolve.

The time cursor is an integer step k: u = k / steps_per_window, the same instant in both coordinates.

"Fired by the cursor" has one definition, `Timeline.fire_steps`: the first step k whose position k / steps_per_window
is at or after the spike's position, less `Timeline.slack`, a tolerance in the simulated network's own precision
(FIRE_ULPS of its dtype's eps, relative to the window: a float32 network stores a forced spike at float32(B_n),
up to 6e-8 of B_n past the float64 window it is drawn on). Every count and map reads it, on the server and, through
the fire steps the spec carries, in the browser.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from ttfs_core.sim.dynamics import early_mask

STEPS_PER_WINDOW = 20
NEVER = 32767  # the fire step of a neuron that does not fire (fits an int16, as the browser receives it)
STRETCH_RATIO = 10.0  # stretch by default when the widest window is more than this times the narrowest
FIRE_ULPS = 16  # "fired by" tolerates this many eps of the network's dtype, relative to the window (`Timeline.slack`)
FLOAT64_EPS = float(np.finfo(np.float64).eps)

ABSOLUTE = "absolute"
STRETCHED = "stretched"


@dataclass(frozen=True)
class Timeline:
    """Windows of the input layer and every hidden layer, in time order (index 0 = input window)."""

    names: tuple[str, ...]
    starts: tuple[float, ...]  # t_min of each window (τ_c); the input window starts at 0
    windows: tuple[float, ...]  # B of each window (τ_c); the input window is 1
    steps_per_window: int = STEPS_PER_WINDOW
    precision: float = FLOAT64_EPS  # eps of the simulated network's dtype (float32: 1.19e-7), see `slack`

    @property
    def slack(self) -> float:
        """How far past a step's instant a spike may lie and still count as fired by that step, in units of its
        window (the stretched axis): FIRE_ULPS · eps of the simulated network's dtype. A spike time is stored as
        an offset in that dtype, so it is known to a few eps of its window (forced spikes sit at the window's end
        rounded to the dtype: float32's B_n passes the float64 B_n by up to 6e-8 of it); a float32 network gets
        1.9e-6 of a window (4e-5 of a cursor step), a float64 one 3.6e-15."""
        return FIRE_ULPS * float(self.precision)

    @property
    def count(self) -> int:
        """Windows, the input window included."""
        return len(self.windows)

    @property
    def end(self) -> float:
        """Absolute time at which the last hidden window closes: the decision latency."""
        return self.starts[-1] + self.windows[-1]

    @property
    def steps(self) -> int:
        """The largest cursor step (the cursor runs over 0..steps)."""
        return self.count * self.steps_per_window

    def default_mode(self) -> str:
        """Stretched when the windows differ by more than STRETCH_RATIO, absolute otherwise."""
        w = [b for b in self.windows if b > 0]
        return STRETCHED if max(w) > STRETCH_RATIO * min(w) else ABSOLUTE

    # --- the cursor ---------------------------------------------------------------------------------------
    def cursor_u(self, k: int) -> float:
        return k / self.steps_per_window

    def window_of_step(self, k: int) -> int:
        return min(int(k // self.steps_per_window), self.count - 1)

    def u_to_t(self, u: float) -> float:
        """Absolute time of stretched position u (rounded to float64: deep windows may collapse)."""
        n = min(max(int(math.floor(u)), 0), self.count - 1)
        return self.starts[n] + (u - n) * self.windows[n]

    def cursor_t(self, k: int) -> float:
        return self.u_to_t(self.cursor_u(k))

    def cursor_x(self, k: int, mode: str) -> float:
        """Where the cursor sits on the x axis of the given mode."""
        return self.cursor_u(k) if mode == STRETCHED else self.cursor_t(k)

    def describe_step(self, k: int) -> str:
        """A label for cursor step k: the window it is in, the fraction of that window, and t."""
        n = self.window_of_step(k)
        frac = self.cursor_u(k) - n
        return f"t = {self.cursor_t(k):.6g} τ_c · {self.names[n]} window, {100 * frac:.0f} %"

    # --- spike positions ----------------------------------------------------------------------------------
    def positions(self, n: int, offsets: np.ndarray, mode: str) -> np.ndarray:
        """x coordinates of spikes of window n's layer, given as offsets from its t_min (+inf: no spike).

        An early spike (offset < 0) happened inside the previous window and is placed there.
        """
        offsets = np.asarray(offsets, dtype=np.float64)
        if mode == ABSOLUTE:
            return self.starts[n] + offsets
        own = n + offsets / _width(self.windows[n])
        if n == 0:
            return own
        early = n + offsets / _width(self.windows[n - 1])
        return np.where(early_mask(offsets), early, own)

    def fire_steps(self, n: int, offsets: np.ndarray) -> np.ndarray:
        """The first cursor step at which each neuron of window n's layer has fired, NEVER for neurons that do not
        fire. This is the one definition of "fired by t": a spike at stretched position u (`positions`; an early
        spike in the window before) has fired by step k when u − `slack` ≤ k / steps_per_window, the slack being a
        few eps of the simulated network's dtype relative to the window (a forced spike, stored at its window's end
        rounded to float32, counts in its own window's last step, not one later). The raster's counts, the feature
        maps and the browser (which receives these steps) all read it. Shape: (N,)."""
        u = self.positions(n, offsets, STRETCHED)
        with np.errstate(invalid="ignore"):
            k = np.ceil((u - self.slack) * self.steps_per_window)
        return np.where(np.isfinite(k), np.clip(k, 0, NEVER - 1), NEVER).astype(np.int64)

    def fired_by(self, n: int, offsets: np.ndarray, k: int) -> np.ndarray:
        """Which neurons of window n's layer have fired by cursor step k (see `fire_steps`)."""
        return self.fire_steps(n, offsets) <= k

    def fired_counts(self, n: int, offsets: np.ndarray) -> np.ndarray:
        """How many neurons of window n's layer have fired by each cursor step 0..steps. Shape: (steps + 1,).
        (One pass over the neurons: a histogram of fire steps, summed; no sort of a 10^6-neuron layer.)"""
        k = np.minimum(self.fire_steps(n, offsets), self.steps + 1)
        return np.cumsum(np.bincount(k, minlength=self.steps + 2))[: self.steps + 1]

    def bands(self, mode: str) -> list[tuple[float, float]]:
        """[x0, x1] of every window on the x axis of the given mode."""
        if mode == STRETCHED:
            return [(float(n), float(n + 1)) for n in range(self.count)]
        return [(s, s + b) for s, b in zip(self.starts, self.windows)]


def _width(window: float) -> float:
    """A window of length 0 (a layer silent on all calibration data) is drawn as if it were of length 1."""
    return window if window > 0 else 1.0


@dataclass(frozen=True)
class LayerSpikes:
    """Spikes of one layer of one input, flattened in C order, ready to draw.

    offsets: t − t_min (τ_c), +inf = no spike; activations: decoded t_max − t (the input layer: x̂ ∈ [0, 1]);
    forced: spikes forced at t_max (activation 0). Shape: every array (neurons,); `shape` is the layer's.
    """

    name: str
    label: str
    kind: str  # "input", "conv" or "linear"
    shape: tuple[int, ...]
    offsets: np.ndarray
    activations: np.ndarray
    forced: np.ndarray
    window: float
    max_activation: float  # X_n (the input layer: 1)

    @property
    def neurons(self) -> int:
        return int(self.offsets.size)


def _np(t) -> np.ndarray:
    return t.detach().to("cpu").double().numpy() if hasattr(t, "detach") else np.asarray(t, dtype=np.float64)


def timeline_of(snn, steps_per_window: int = STEPS_PER_WINDOW) -> Timeline:
    """The windows of a converted network (`ttfs_core.SpikingNetwork`)."""
    names = ("input", *(layer_label(layer) for layer in snn.layers))
    starts = (0.0, *(float(layer.t_min) for layer in snn.layers))
    windows = (1.0, *(float(layer.window) for layer in snn.layers))
    return Timeline(names, starts, windows, steps_per_window, precision_of(snn))


def precision_of(snn) -> float:
    """eps of the dtype a network simulates in (float32: 1.19e-7; float64 when it does not say)."""
    import torch

    dtype = getattr(snn, "dtype", None)
    return float(torch.finfo(dtype).eps) if isinstance(dtype, torch.dtype) and dtype.is_floating_point \
        else FLOAT64_EPS


def layer_label(layer) -> str:
    """'conv 0' style label of a core layer (its fx node name and kind)."""
    return f"{layer.kind} {layer.name}"


def spikes_of(snn, result, sample: int = 0, only: Collection[int] | None = None) -> list[LayerSpikes]:
    """Per window (input first), the spikes of one sample of a `SimResult`. `only`: the windows whose spikes are
    needed; the others get their name, shape and window but no data (read-only views of "no spike" that take no
    memory: `placeholder`), for a page that holds what it draws of them already (the raster's heat strips)."""
    keep = None if only is None else set(only)
    t0 = result.input_times[sample].detach().cpu().numpy().ravel().astype(np.float64)
    out = [LayerSpikes("input", "input", "input", tuple(snn.input_shape), t0, 1.0 - t0,
                       np.zeros(t0.shape, dtype=bool), 1.0, 1.0)]
    for n, (layer, res) in enumerate(zip(snn.layers, result.layers), start=1):
        out.append(_layer_spikes(layer, res, sample) if keep is None or n in keep else placeholder(layer, res))
    return out


def placeholder(layer, res) -> LayerSpikes:
    """A hidden layer's record without its spikes: every array a broadcast view (no memory) of "did not fire"."""
    n = int(np.prod(layer.shape))
    return LayerSpikes(layer.name, layer_label(layer), layer.kind, tuple(layer.shape), np.broadcast_to(np.inf, (n,)),
                       np.broadcast_to(0.0, (n,)), np.broadcast_to(False, (n,)), float(res.window),
                       float(layer.max_activation))


def _layer_spikes(layer, res, sample: int) -> LayerSpikes:
    # numpy on the offsets in their own precision (a view, no copy), not torch: the same numbers as the core's
    # `LayerResult.activations` (`mapping.decode`: B − offset, clamped at 0, in the offsets' dtype) and
    # `forced_spikes` (`dynamics.forced_mask`: finite and ≥ B in that dtype), computed on one thread; torch's
    # thread pool, on a server whose cores are busy, made these element-wise passes over 10^7 neurons ~3× slower
    off = res.offsets[sample].detach().cpu().numpy().ravel()
    window = np.asarray(res.window, dtype=off.dtype)
    act = np.maximum(window - off, 0)
    forced = np.isfinite(off) & (off >= window)
    return LayerSpikes(layer.name, layer_label(layer), layer.kind, tuple(layer.shape), off.astype(np.float64),
                       act.astype(np.float64), forced, float(res.window), float(layer.max_activation))


def layer_spikes(snn, result, name: str, sample: int = 0) -> LayerSpikes:
    """The spikes of one hidden layer (by name) of one sample: what `spikes_of` gives for it, without converting
    the other layers (a page that shows one layer of a 10^7-neuron network)."""
    for layer, res in zip(snn.layers, result.layers):
        if layer.name == name:
            return _layer_spikes(layer, res, sample)
    raise KeyError(f"no spiking layer named {name!r}")


def unravel(shape: tuple[int, ...], flat: np.ndarray) -> list[str]:
    """Multi-indices '(c, y, x)' of flat neuron indices (built with numpy's string operations: no Python loop
    over the neurons)."""
    idx = np.unravel_index(np.asarray(flat, dtype=np.int64).ravel(), shape)
    if not idx[0].size:
        return []
    text = np.char.add("(", idx[0].astype(str))
    for i in idx[1:]:
        text = np.char.add(np.char.add(text, ", "), i.astype(str))
    return np.char.add(text, ")").tolist()


def readout_of(snn, result, sample: int = 0) -> LayerSpikes:
    """The readout layer as a LayerSpikes record: no spikes (offsets NaN), 'activations' = the logits."""
    out = snn.output
    logits = _np(result.logits[sample]).ravel()
    return LayerSpikes(out.name, f"readout {out.name}", "readout", tuple(logits.shape), np.full(logits.shape, np.nan),
                       logits, np.zeros(logits.shape, dtype=bool), 0.0, float(np.abs(logits).max(initial=0.0)))


PARTIAL_SORT = 100_000  # arrays longer than this are ranked by a partial sort (argpartition) first


def most_active(values: np.ndarray, k: int, distinct: bool = False) -> list[int]:
    """Flat indices of the k largest values, largest first (ties: lower index first). With `distinct`, one
    neuron per value (to 1e-7 of the largest): neurons that see the same inputs (a blank corner of every map) have
    the same activation and the same membrane trace, and showing three copies of one trace teaches nothing.

    A long array (a 10^6-neuron layer) is ranked on its largest few thousand values only (`np.argpartition`),
    which gives the same answer whenever those hold k distinct values above the cut, and falls back to the full
    sort otherwise."""
    v = np.asarray(values, dtype=np.float64)
    k = max(0, int(k))
    scale = 1e-7 * max(float(np.abs(v).max(initial=0.0)), 1e-300)
    if v.size > PARTIAL_SORT and k:
        m = min(v.size, 64 * k + 1024)
        cand = np.argpartition(-v, m - 1)[:m]
        cand = cand[np.lexsort((cand, -v[cand]))]  # largest first, ties: lower index first
        picked = _distinct(v, cand, scale) if distinct else cand
        cut = float(v[cand[-1]])
        if m == v.size or (picked.size >= k and float(v[picked[k - 1]]) > cut):
            return [int(i) for i in picked[:k]]
    order = np.argsort(-v, kind="stable")
    if distinct and order.size:
        order = _distinct(v, order, scale)
    return [int(i) for i in order[:k]]


def _distinct(v: np.ndarray, order: np.ndarray, scale: float) -> np.ndarray:
    """`order` (indices, values descending) less every index whose value rounds to its predecessor's."""
    if not order.size:
        return order
    key = np.round(v[order] / scale)
    return order[np.concatenate([[True], key[1:] != key[:-1]])]


def multi_index(shape: tuple[int, ...], flat: int) -> tuple[int, ...]:
    """Multi-index of flat neuron index `flat` (C order)."""
    return tuple(int(i) for i in np.unravel_index(int(flat), shape))


# --- large layers: densities, channels, samples ------------------------------------------------------------------
# A layer of 10^5–10^6 neurons cannot be sent to a browser one dot per spike. The raster draws it as a density
# (spikes per channel and time bin), the feature maps show one channel or the most active ones, and the ANN-vs-SNN
# scatter shows a stratified sample. Everything here is vectorised over neurons (no Python loop over them).
DENSITY_NEURONS = 65_536  # a layer with more neurons is drawn as a density on the raster
MAX_DOTS = 120_000  # dots the raster draws in all; beyond that, the largest other layers become densities too
MAX_DOTS_BESIDE = 20_000  # ... once some layer is a density anyway (a big network: its spec stays under 2 MB)
DOTS_PER_LAYER = 40_000  # a layer with more neurons shows every stride-th (figures.MAX_POINTS)
DENSITY_ROWS = 32  # most rows of a layer's heat strip: one per channel, or per group of consecutive channels
DENSITY_BINS = 40  # time bins per window (two per cursor step)


def dots(neurons: int, max_points: int = DOTS_PER_LAYER) -> int:
    """Dots the raster draws for a layer of `neurons`: all, or every stride-th beyond `max_points`."""
    return math.ceil(neurons / max(1, math.ceil(neurons / max_points))) if neurons else 0


def density_layers(sizes: Sequence[int], max_points: int = DOTS_PER_LAYER) -> frozenset[int]:
    """Which layers (by window index, the input = 0) the raster draws as densities, given every layer's neuron
    count: each one over DENSITY_NEURONS, then the largest others until the dots left (`dots`) number at most
    MAX_DOTS (MAX_DOTS_BESIDE when some layer is a density already: a dot costs ~30 bytes of the browser's
    spec, a heat strip ~5 kB). The bundled models (at most 12,544 neurons a layer, 68,496 in all) get none: one
    dot per spike, as a VGG with two 50,176-neuron layers at 32×32 (108,442 dots, decimated) does."""
    sizes = [int(n) for n in sizes]
    dense = {i for i, n in enumerate(sizes) if n > DENSITY_NEURONS}
    budget = MAX_DOTS_BESIDE if dense else MAX_DOTS
    rest = sorted((i for i in range(len(sizes)) if i not in dense), key=lambda i: (-sizes[i], i))
    drawn = sum(dots(sizes[i], max_points) for i in rest)
    for i in rest:  # one step per layer, not per neuron
        if drawn <= budget:
            break
        dense.add(i)
        drawn -= dots(sizes[i], max_points)
    return frozenset(dense)


def channels_of(shape: Sequence[int]) -> tuple[int, int]:
    """(channels, neurons per channel) of a layer shape: (C, H, W) -> (C, H·W); a vector (N,) -> (N, 1)."""
    shape = tuple(int(d) for d in shape)
    if len(shape) >= 2:
        return shape[0], int(np.prod(shape[1:]))
    return int(np.prod(shape)), 1


def has_maps(shape: Sequence[int]) -> bool:
    """Whether a layer is a stack of 2-D maps (C, H, W) with H·W > 1, whose channels can be shown one by one."""
    return len(shape) == 3 and int(shape[1]) * int(shape[2]) > 1


def channel_activity(s: LayerSpikes) -> np.ndarray:
    """Summed decoded activation of every channel (what "most active" ranks: in the α-model every neuron spikes,
    so spike counts cannot tell channels apart, but their activations do). Shape: (C,)."""
    c, per = channels_of(s.shape)
    act = np.where(np.isfinite(s.activations), s.activations, 0.0)
    return act.reshape(c, per).sum(axis=1)


MAX_MAP_NEURONS = 262_144  # most neurons a grid of channels sends (16 maps of 112×112; 5 of 224×224)


def map_k(shape: Sequence[int], k: int) -> int:
    """How many of a (C, H, W) layer's channels a grid shows when k are asked for: at most C, and at most
    MAX_MAP_NEURONS neurons in all (at least one channel), so that the browser's spec stays under 2 MB."""
    c, per = channels_of(shape)
    return max(1, min(int(k), c, MAX_MAP_NEURONS // max(per, 1)))


def top_channels(s: LayerSpikes, k: int) -> list[int]:
    """The k channels of largest summed activation, largest first (ties: lower channel first)."""
    return most_active(channel_activity(s), k)


@dataclass(frozen=True)
class Density:
    """One layer's spikes counted per channel (or group of `group` consecutive channels: a row) and time bin.

    `edges` are the bins' edges on the x axis of the raster's mode: DENSITY_BINS equal bins over the layer's own
    window, preceded by as many over the window before when the layer fired early. `top[r]` is the most active
    channel of row r (the one a click on the row maps). Shape: counts (rows, bins), top (rows,).
    """

    layer: int
    channels: int
    group: int
    edges: np.ndarray
    counts: np.ndarray
    top: np.ndarray
    early: int

    @property
    def rows(self) -> int:
        return int(self.counts.shape[0])

    @property
    def bins(self) -> int:
        return int(self.counts.shape[1])


def density(s: LayerSpikes, n: int, timeline: Timeline, mode: str, *, rows: int = DENSITY_ROWS,
            bins: int = DENSITY_BINS) -> Density:
    """Count layer n's spikes per channel row and time bin (see `Density`); a spike on a bin edge goes to the bin
    it opens, one at the window's end to the last bin, and one before the first edge (very early) to the first."""
    c, per = channels_of(s.shape)
    group = max(1, math.ceil(c / max(int(rows), 1)))
    n_rows = math.ceil(c / group)
    fired = np.flatnonzero(np.isfinite(s.offsets))
    off = s.offsets[fired]
    x = timeline.positions(n, off, mode)
    bands = timeline.bands(mode)
    own = np.linspace(bands[n][0], bands[n][1], bins + 1)
    early = int(early_mask(off).sum())
    edges = own
    if n > 0 and early:
        edges = np.concatenate([np.linspace(bands[n - 1][0], bands[n - 1][1], bins + 1)[:-1], own])
    b = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, edges.size - 2)
    row = (fired // per) // group
    nb = edges.size - 1
    counts = np.bincount(row * nb + b, minlength=n_rows * nb).reshape(n_rows, nb)
    padded = np.full(n_rows * group, -np.inf)
    padded[:c] = channel_activity(s)
    top = padded.reshape(n_rows, group).argmax(axis=1) + np.arange(n_rows) * group
    return Density(n, c, group, edges, counts, top, early)


def count_span(counts: np.ndarray) -> tuple[int, list[int]]:
    """A layer's fired-by counts (one per cursor step) as (lo, counts[lo..hi]): 0 before step lo, counts[hi] after
    step hi, where lo and hi are the first and last steps at which the count changes. A layer fires within its
    own window (and the one before, if early), so ~41 numbers stand for a thousand steps of a deep network."""
    counts = np.asarray(counts, dtype=np.int64)
    change = np.flatnonzero(np.diff(counts)) + 1
    lo = 0 if counts.size == 0 or counts[0] != 0 or not change.size else int(change[0])
    hi = int(change[-1]) if change.size else lo
    return lo, [int(v) for v in counts[lo: hi + 1]] if counts.size else [0]


def input_colours(s: LayerSpikes, input_range: tuple[float, float], mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None) -> np.ndarray | None:
    """A 3-channel input as the RGB image it shows, levels 0–255 (uint8, shape (3, H, W)), or None for an input
    of another channel count. From x̂ (what the network encodes: x = p + x̂·(q − p) on its input range [p, q]):
    with the preprocessing's per-channel `mean` and `std` known, the pixels / 255 it came from, x·std + mean;
    without them, x̂ scaled from its smallest to its largest value over the image."""
    shape = tuple(s.shape)
    if len(shape) != 3 or shape[0] != 3:
        return None
    xh = np.where(np.isfinite(s.activations), s.activations, 0.0).reshape(shape)
    if mean is not None and std is not None:
        p, q = (float(v) for v in input_range)
        m = np.broadcast_to(np.asarray(mean, dtype=np.float64), (3,)).reshape(3, 1, 1)
        sd = np.broadcast_to(np.asarray(std, dtype=np.float64), (3,)).reshape(3, 1, 1)
        shown = (p + xh * (q - p)) * sd + m
    else:
        lo, hi = (float(xh.min()), float(xh.max())) if xh.size else (0.0, 0.0)
        shown = (xh - lo) / (hi - lo) if hi > lo else np.zeros_like(xh)
    return np.round(255 * np.clip(shown, 0.0, 1.0)).astype(np.uint8)


SCATTER_POINTS = 20_000  # most neurons a layer's ANN-vs-SNN scatter shows


@dataclass(frozen=True)
class Sample:
    """Which neurons of a layer a scatter shows (`index`, ascending) out of `total`, and how many of them each
    stratum contributed (largest errors, extreme activations, early spikes, silent neurons, the rest)."""

    index: np.ndarray
    total: int
    kept: dict

    @property
    def shown(self) -> int:
        return int(self.index.size)

    def describe(self) -> str:
        return f"{self.shown:,} of {self.total:,} neurons shown"


def sample_neurons(ann: np.ndarray, snn: np.ndarray, k: int = SCATTER_POINTS, *, early: np.ndarray | None = None,
                   silent: np.ndarray | None = None, seed: int = 0) -> Sample:
    """At most k neurons of a layer for its ANN-vs-SNN scatter, stratified so that what matters is never sampled
    away: the largest |SNN − ANN| errors, the largest and smallest ANN and SNN values, every early spike and
    silent (non-firing) neuron up to a share of k, then equal numbers at random (seeded) from the neurons whose
    ANN value is ≤ 0 and from each eighth of the positive ones (by quantile). A layer of at most k neurons is
    shown whole. Shape: ann, snn, early, silent (N,)."""
    ann = np.asarray(ann, dtype=np.float64).ravel()
    snn = np.asarray(snn, dtype=np.float64).ravel()
    total = int(ann.size)
    if total <= k:
        return Sample(np.arange(total), total, {"all": total})
    rng = np.random.default_rng(seed)
    take = np.zeros(total, dtype=bool)
    kept: dict[str, int] = {}

    def keep(name: str, idx: np.ndarray) -> None:
        new = idx[~take[idx]]
        take[new] = True
        kept[name] = kept.get(name, 0) + int(new.size)

    m = max(1, k // 50)  # 2 % of the budget for each tail
    keep("largest errors", np.argpartition(-np.abs(snn - ann), m - 1)[:m])
    for name, v in (("extreme ANN values", ann), ("extreme SNN values", snn)):
        both = np.argpartition(v, [m - 1, total - m])  # one partial sort: the m smallest, then the m largest
        keep(name, np.concatenate([both[:m], both[total - m:]]))
    for name, mask, share in (("early spikes", early, 4), ("silent neurons", silent, 8)):
        if mask is not None:
            idx = np.flatnonzero(np.asarray(mask).ravel())
            if idx.size > k // share:
                idx = rng.choice(idx, k // share, replace=False)
            keep(name, idx)
    left = k - int(take.sum())
    rest = np.flatnonzero(~take)
    if left > 0 and rest.size:
        a = ann[rest]
        positive = a > 0
        stratum = np.zeros(rest.size, dtype=np.int64)
        if positive.any():
            cuts = np.quantile(a[positive], np.linspace(0, 1, 9)[1:-1])
            stratum[positive] = 1 + np.searchsorted(cuts, a[positive], side="right")
        sizes = np.bincount(stratum, minlength=9)
        quota = _equal_shares(sizes, left)
        for j in np.flatnonzero(quota):  # nine strata at most: a loop over strata, not neurons
            members = rest[stratum == j]
            keep("random, stratified by ANN value", rng.choice(members, int(quota[j]), replace=False))
    return Sample(np.flatnonzero(take), total, kept)


def _equal_shares(sizes: np.ndarray, budget: int) -> np.ndarray:
    """Split `budget` as equally as possible over groups of the given sizes, none given more than it has (a few
    rounds over at most 9 groups)."""
    quota = np.zeros(sizes.size, dtype=np.int64)
    left = int(budget)
    while left > 0:
        open_ = np.flatnonzero(quota < sizes)
        if not open_.size:
            break
        share = max(1, left // open_.size)
        add = np.minimum(share, sizes[open_] - quota[open_])
        add = np.minimum(add, np.maximum(left - np.concatenate([[0], np.cumsum(add)[:-1]]), 0))
        quota[open_] += add
        left -= int(add.sum())
        if not add.any():
            break
    return quota

