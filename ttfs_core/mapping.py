"""The time-to-first-spike code and the ReLU → spiking-neuron parameter maps (MATH.md §1–§4, §7).

Each equation of MATH.md that maps numbers (not dynamics) lives here, once. Time is in units of τ_c.
"""

from __future__ import annotations

import torch
from torch import Tensor


def encode_input(v: Tensor, p: float, q: float) -> tuple[Tensor, Tensor]:
    """Input layer (MATH §1): x̂ = (v − p)/(q − p), clipped to [0, 1], fires at t = 1 − x̂ in window [0, 1].

    Returns the spike times and a mask of the values that were outside [p, q] and had to be clipped.
    Shape: v (B, ...) -> both (B, ...).
    """
    x_hat = (v - p) / (q - p)
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
    """B1 neuron (MATH §7): J = W, θ_i = B_n − b_i, slope 1 from t_min^(n) on.  Returns J (one weight or a list,
    as given), θ, final slope."""
    theta = window - bias
    J = weight.clone() if isinstance(weight, Tensor) else [w.clone() for w in weight]
    return J, theta, torch.ones_like(theta)
