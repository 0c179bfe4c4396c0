"""One time axis for the whole network, and the spike data the figures draw (pure numpy, no Streamlit).

Window 0 is the input window [0, 1]; window n ≥ 1 is hidden layer n's window [t_min^(n), t_max^(n)] (MATH §1).
Two coordinates for the same instant:

- absolute time t (units of τ_c), as the simulator counts it;
- stretched position u = n + (t − t_min^(n)) / B_n, every window mapped to [n, n + 1]. Deep windows shrink
  (the bundled LeNet: 1.43, 0.30, 0.037, 0.013), so on the absolute axis they collapse to a line; the
  stretched axis gives each one equal width. Positions are computed from offsets (t − t_min, full precision),
  never from absolute times, so windows of 1e-15 τ_c still resolve.

The time cursor is an integer step k: u = k / steps_per_window, the same instant in both coordinates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ttfs_core.sim.dynamics import early_mask

STEPS_PER_WINDOW = 20
NEVER = 32767  # the fire step of a neuron that does not fire (fits an int16, as the browser receives it)
STRETCH_RATIO = 10.0  # stretch by default when the widest window is more than this times the narrowest

ABSOLUTE = "absolute"
STRETCHED = "stretched"


@dataclass(frozen=True)
class Timeline:
    """Windows of the input layer and every hidden layer, in time order (index 0 = input window)."""

    names: tuple[str, ...]
    starts: tuple[float, ...]  # t_min of each window (τ_c); the input window starts at 0
    windows: tuple[float, ...]  # B of each window (τ_c); the input window is 1
    steps_per_window: int = STEPS_PER_WINDOW

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
        """The first cursor step at which each neuron of window n's layer has fired (compared on the stretched
        axis, with 1e-12 of slack), NEVER for neurons that do not fire. This is the one definition of "fired by":
        the raster's counts and the feature maps, on the server and in the browser, all read it. Shape: (N,)."""
        u = self.positions(n, offsets, STRETCHED)
        with np.errstate(invalid="ignore"):
            k = np.ceil((u - 1e-12) * self.steps_per_window)
        return np.where(np.isfinite(k), np.clip(k, 0, NEVER - 1), NEVER).astype(np.int64)

    def fired_by(self, n: int, offsets: np.ndarray, k: int) -> np.ndarray:
        """Which neurons of window n's layer have fired by cursor step k (see `fire_steps`)."""
        return self.fire_steps(n, offsets) <= k

    def fired_counts(self, n: int, offsets: np.ndarray) -> np.ndarray:
        """How many neurons of window n's layer have fired by each cursor step 0..steps. Shape: (steps + 1,)."""
        first = np.sort(self.fire_steps(n, offsets))
        return np.searchsorted(first, np.arange(self.steps + 1), side="right")

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
    return Timeline(names, starts, windows, steps_per_window)


def layer_label(layer) -> str:
    """'conv 0' style label of a core layer (its fx node name and kind)."""
    return f"{layer.kind} {layer.name}"


def spikes_of(snn, result, sample: int = 0) -> list[LayerSpikes]:
    """Per window (input first), the spikes of one sample of a `SimResult`."""
    t0 = _np(result.input_times[sample]).ravel()
    out = [LayerSpikes("input", "input", "input", tuple(snn.input_shape), t0, 1.0 - t0,
                       np.zeros(t0.shape, dtype=bool), 1.0, 1.0)]
    for layer, res in zip(snn.layers, result.layers):
        off = _np(res.offsets[sample]).ravel()
        act = _np(res.activations[sample]).ravel()
        forced = res.forced_spikes[sample].flatten().numpy()
        out.append(LayerSpikes(layer.name, layer_label(layer), layer.kind, tuple(layer.shape), off, act, forced,
                               float(res.window), float(layer.max_activation)))
    return out


def unravel(shape: tuple[int, ...], flat: np.ndarray) -> list[str]:
    """Multi-indices '(c, y, x)' of flat neuron indices."""
    idx = np.unravel_index(np.asarray(flat, dtype=np.int64), shape)
    return ["(" + ", ".join(str(int(i[j])) for i in idx) + ")" for j in range(len(flat))]


def readout_of(snn, result, sample: int = 0) -> LayerSpikes:
    """The readout layer as a LayerSpikes record: no spikes (offsets NaN), 'activations' = the logits."""
    out = snn.output
    logits = _np(result.logits[sample]).ravel()
    return LayerSpikes(out.name, f"readout {out.name}", "readout", tuple(logits.shape), np.full(logits.shape, np.nan),
                       logits, np.zeros(logits.shape, dtype=bool), 0.0, float(np.abs(logits).max(initial=0.0)))


def most_active(values: np.ndarray, k: int, distinct: bool = False) -> list[int]:
    """Flat indices of the k largest values, largest first (ties: lower index first). With `distinct`, one
    neuron per value (to 1e-7 of the largest): neurons that see the same inputs (a blank corner of every map) have
    the same activation and the same membrane trace, and showing three copies of one trace teaches nothing."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(-v, kind="stable")
    if distinct and order.size:
        scale = 1e-7 * max(float(np.abs(v).max()), 1e-300)
        key = np.round(v[order] / scale)
        order = order[np.concatenate([[True], key[1:] != key[:-1]])]
    return [int(i) for i in order[: max(0, int(k))]]


def multi_index(shape: tuple[int, ...], flat: int) -> tuple[int, ...]:
    """Multi-index of flat neuron index `flat` (C order)."""
    return tuple(int(i) for i in np.unravel_index(int(flat), shape))
