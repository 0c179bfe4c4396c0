"""Function-preserving rewrites of ReLU-network parameters (MATH.md §1, §2 rescaling, §5).

Pure tensor math: every function takes tensors and returns new tensors; nothing is modified in place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .neurons import Rescale


def batchnorm_scale_shift(
    mean: Tensor, var: Tensor, eps: float, weight: Tensor | None = None, bias: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """BatchNorm in eval mode as a per-channel affine map y = κ·x + s (MATH §5).

    κ = γ/√(σ²+ε), s = β − κ·μ.  Shape: all (C,).
    """
    kappa = torch.rsqrt(var + eps)
    if weight is not None:
        kappa = kappa * weight
    shift = -kappa * mean
    if bias is not None:
        shift = shift + bias
    return kappa, shift


def compose_affine(first: tuple[Tensor, Tensor], then: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """The per-channel affine map `then ∘ first`.  Shape: all (C,)."""
    k1, s1 = first
    k2, s2 = then
    return k2 * k1, k2 * s1 + s2


def per_input_channel(weight: Tensor, values: Tensor, groups: int = 1) -> Tensor:
    """Expand a per-input-channel vector to the layout of a conv/linear weight's input dimension.

    Shape: weight (O, I/groups, ...) or (O, I); values (I,) -> (O, I/groups, 1, ...) broadcastable to weight.
    """
    out_ch = weight.shape[0]
    per_group = weight.shape[1]
    v = values.reshape(groups, per_group)
    v = v.repeat_interleave(out_ch // groups, dim=0)  # row o uses group o // (O/groups)
    return v.reshape(out_ch, per_group, *([1] * (weight.dim() - 2)))


def per_output(values: Tensor, weight: Tensor) -> Tensor:
    """Reshape a per-output vector (O,) to broadcast against a weight (O, ...)."""
    return values.reshape(-1, *([1] * (weight.dim() - 1)))


def fold_chain_into_linear(
    weight: Tensor, bias: Tensor, chain: Callable[[Tensor], Tensor], in_shape: tuple[int, ...], chunk: int = 256
) -> tuple[Tensor, Tensor]:
    """W·flatten(chain(x)) + b as W'·flatten(x) + b' for an affine `chain` (BN, pooling, reshape, linear...).

    W' rows are vector-Jacobian products of the chain (exact: the chain is affine, so its Jacobian is
    constant); b' = W·chain(0) + b.  Shape: weight (O, F); in_shape per sample; returns (O, prod(in_shape)).
    """
    zero = torch.zeros(1, *in_shape, dtype=weight.dtype)
    offset = chain(zero).reshape(1, -1)
    new_b = bias + (offset @ weight.T)[0]
    rows = []
    for w in weight.split(chunk):
        x = torch.zeros(w.shape[0], *in_shape, dtype=weight.dtype, requires_grad=True)
        with torch.enable_grad():
            y = chain(x).reshape(w.shape[0], -1)
            (g,) = torch.autograd.grad(y, x, grad_outputs=w)
        rows.append(g.reshape(w.shape[0], -1))
    return torch.cat(rows), new_b


def rescale_factor(weight, rule: Rescale, limit: float = 0.99, floor: float = -10.0, sums=None) -> Tensor:
    """Per-output-neuron factor c > 0 of the function-preserving rescaling (MATH §2).

    `rule` (`ttfs_core.neurons`) POSITIVE: c = limit / Σ_j max(W_ij, 0) where that sum ≥ limit (early spikes then
    happen exactly when the pre-activation exceeds the window); SUM: c = limit / Σ_j W_ij where Σ_j W_ij ≥ limit
    (the reference code's rule). Both also lift neurons whose Σ_j W_ij < floor to Σ = floor.
    For convolutions the sums run over input channels and kernel taps, zero-padded taps included; for a neuron
    with several inputs (branches) over all of them: give `sums` = (Σ_j W_ij, Σ_j max(W_ij, 0)) instead of
    `weight`. Shape: weight (O, ...) -> (O,).
    """
    if sums is None:
        dims = tuple(range(1, weight.dim()))
        sums = (weight.sum(dims), weight.clamp(min=0).sum(dims))
    total, positive = sums
    gauge = rule.gauge(total, positive)
    c = torch.where(gauge >= limit, limit / gauge.clamp(min=limit), torch.ones_like(gauge))
    scaled = total * c
    return torch.where(scaled < floor, c * (floor / scaled.clamp(max=floor)), c)
