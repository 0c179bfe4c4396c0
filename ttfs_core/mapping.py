"""The time-to-first-spike code and the ReLU → spiking-neuron parameter maps (MATH.md §1–§4, §7).

Each equation of MATH.md that maps numbers (not dynamics) lives here, once. Time is in units of τ_c.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

DEFAULT_MARGIN = 0.5  # ζ of B_n = (1 + ζ)·X_n (MATH §4: the reference default)
B1_SLOPE = 1.0  # B1's slope from t_min^(n) on (MATH §7)


def normalise(v: Tensor, p: float, q: float) -> Tensor:
    """The input's level x̂ = (v − p)/(q − p) (MATH §1), not yet clipped to [0, 1]. Shape: any -> same."""
    return (v - p) / (q - p)


def encode_input(v: Tensor, p: float, q: float) -> tuple[Tensor, Tensor]:
    """Input layer (MATH §1): x̂ = (v − p)/(q − p), clipped to [0, 1], fires at t = 1 − x̂ in window [0, 1].

    Returns the spike times and a mask of the values that were outside [p, q] and had to be clipped.
    Shape: v (B, ...) -> both (B, ...).
    """
    x_hat = normalise(v, p, q)
    clipped = (x_hat < 0) | (x_hat > 1)
    return 1.0 - x_hat.clamp(0.0, 1.0), clipped


def decode(offsets: Tensor, window: float) -> Tensor:
    """Activation of a layer from its spike times (MATH §1): x = t_max − t = B − (t − t_min).

    Takes the offsets t − t_min so that tiny windows deep in a network keep full precision. A missing spike
    (t = inf) is 0. Shape: any.
    """
    return (window - offsets).clamp(min=0.0)


def window_length(max_activation: float, margin: float) -> float:
    """B_n = (1 + ζ)·X_n (MATH §4); convert passes the peak drive before the window instead where it is larger
    still (`convert._peak_drives`). A layer silent on all calibration inputs gets B_n = 1."""
    return (1.0 + margin) * max_activation if max_activation > 0 else 1.0


@dataclass(frozen=True)
class Placement:
    """Where a layer sits in time (MATH §4–§5): its window opens at ``t_min``; input k reads its source's window
    (``in_windows[k]``), delayed by ``delays[k]``; the neuron integrates from ``start`` over ``in_window``."""

    t_min: float
    in_windows: tuple[float, ...]
    delays: tuple[float, ...]
    in_window: float
    start: float


def place_in_time(sources: Sequence[int], t_max: Sequence[float], windows: Sequence[float]) -> Placement:
    """A layer's window opens when its last source's closes, t_min = max t_max(source); each input's spikes are
    delayed by t_min − t_max(source) and read over its source's window; the neuron starts integrating at
    t_min − (the longest of those windows) (MATH §5, residual). ``t_max`` and ``windows`` are indexed by source + 1
    (source −1 is the input layer, window [0, 1])."""
    t_min = max(t_max[s + 1] for s in sources)
    in_windows = tuple(windows[s + 1] for s in sources)
    in_window = max(in_windows)
    return Placement(t_min, in_windows, tuple(t_min - t_max[s + 1] for s in sources), in_window, t_min - in_window)


def input_folding(p: float, q: float) -> tuple[float, float]:
    """v = p + (q − p)·x̂ as the per-channel affine (scale, shift) folded into the first layer (MATH §1)."""
    return q - p, p


def alpha_parameters(
    weight, bias: Tensor, row_sum: Tensor, in_window: float, window: float, alpha: float = 1.0, channels=None
):
    """α-model neuron parameters from a ReLU layer (MATH §2).

        J_ij   = α W_ij / (1 − Σ_k W_ik)
        θ_i    = α (t_max^(n) − t_min^(n−1)) + B_n Σ_j J_ij − (α + Σ_j J_ij) b_i,   B_n = t_max^(n) − t_min^(n)

    with t_max^(n) − t_min^(n−1) = `in_window` + `window` (the input window B_(n−1) and this layer's B_n).
    `weight` is one weight, or a list of the weights of a layer's inputs, input k driving output channels
    `channels[k]` = (lo, hi) (None: all); the sums Σ_k run over all of them (`row_sum`, per output channel).
    Returns J (the layout of `weight`), θ (bias layout) and the final slope α + Σ_j J_ij (bias layout).
    Shape: weight (O, ...), bias (O, ...) or (O,), row_sum (O,).
    """
    gain = alpha / (1.0 - row_sum)  # = α + Σ_j J_ij, the slope once every input has arrived
    sum_j = gain - alpha

    def synaptic(w: Tensor, ch) -> Tensor:
        g = gain if ch is None else gain[ch[0]:ch[1]]
        return w * g.reshape(-1, *([1] * (w.dim() - 1)))

    if isinstance(weight, Tensor):
        J = synaptic(weight, None)
    else:
        J = [synaptic(w, ch) for w, ch in zip(weight, channels or [None] * len(weight))]
    shape = (-1, *([1] * (bias.dim() - 1)))
    theta = alpha * (in_window + window) + window * sum_j.reshape(shape) - gain.reshape(shape) * bias
    return J, theta, gain.reshape(shape).expand_as(theta).clone()


def b1_parameters(weight, bias: Tensor, window: float):
    """B1 neuron (MATH §7): J = W, θ_i = B_n − b_i, slope B1_SLOPE = 1 from t_min^(n) on.  Returns J (one weight or
    a list, as given), θ, final slope."""
    theta = window - bias
    J = weight.clone() if isinstance(weight, Tensor) else [w.clone() for w in weight]
    return J, theta, torch.full_like(theta, B1_SLOPE)
