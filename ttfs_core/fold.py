"""Function-preserving rewrites of ReLU-network parameters (MATH.md §1, §2 rescaling, §5).

Pure tensor math: every function takes tensors and returns new tensors; nothing is modified in place.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


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


def fold_input_affine_into_conv(
    weight: Tensor, bias: Tensor, affine: tuple[Tensor, Tensor], in_shape: tuple[int, ...], conv: Callable
) -> tuple[Tensor, Tensor]:
    """conv(κ·x + s) = conv'(x) + b_map, with a position-dependent bias map (MATH §5 border correction).

    `conv(x, w)` applies the convolution (stride, zero padding, dilation, groups) without bias. The bias map
    is the folded affine chain evaluated on an all-zero input, so zero-padded taps contribute nothing.
    Shape: weight (O, I/g, kh, kw); affine (I,), (I,); returns weight and bias map (O, H', W').
    """
    kappa, shift = affine
    groups = kappa.numel() // weight.shape[1]
    new_w = weight * per_input_channel(weight, kappa, groups)
    const = shift.reshape(1, -1, 1, 1).expand(1, kappa.numel(), *in_shape[1:])
    b_map = conv(const.contiguous(), weight)[0] + bias.reshape(-1, 1, 1)
    return new_w, b_map


def fold_output_affine(weight: Tensor, bias: Tensor, affine: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """κ·(W x + b) + s as W' x + b' (BatchNorm before ReLU, MATH §5).

    Shape: weight (O, ...); bias (O,) or (O, H, W) bias map; affine (O,), (O,).
    """
    kappa, shift = affine
    new_w = weight * per_output(kappa, weight)
    k = kappa.reshape(-1, *([1] * (bias.dim() - 1)))
    s = shift.reshape(-1, *([1] * (bias.dim() - 1)))
    return new_w, k * bias + s


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


def rescale_factor(weight, mode: str, limit: float = 0.99, floor: float = -10.0, sums=None) -> Tensor:
    """Per-output-neuron factor c > 0 of the function-preserving rescaling (MATH §2).

    mode "positive": c = limit / Σ_j max(W_ij, 0) where that sum ≥ limit (early spikes then happen exactly
    when the pre-activation exceeds the window); mode "sum": c = limit / Σ_j W_ij where Σ_j W_ij ≥ limit
    (the reference code's rule). Both also lift neurons whose Σ_j W_ij < floor to Σ = floor.
    For convolutions the sums run over input channels and kernel taps, zero-padded taps included; for a neuron
    with several inputs (branches) over all of them: give `sums` = (Σ_j W_ij, Σ_j max(W_ij, 0)) instead of
    `weight`. Shape: weight (O, ...) -> (O,).
    """
    if sums is None:
        dims = tuple(range(1, weight.dim()))
        sums = (weight.sum(dims), weight.clamp(min=0).sum(dims))
    total, positive = sums
    if mode == "positive":
        gauge = positive
    elif mode == "sum":
        gauge = total
    else:
        raise ValueError(f"unknown rescaling mode {mode!r}; use 'positive' or 'sum'")
    c = torch.where(gauge >= limit, limit / gauge.clamp(min=limit), torch.ones_like(gauge))
    scaled = total * c
    return torch.where(scaled < floor, c * (floor / scaled.clamp(max=floor)), c)


def conv_fn(stride, padding, dilation, groups) -> Callable[[Tensor, Tensor], Tensor]:
    """A bias-free 2-d convolution with fixed hyper-parameters and zero padding."""

    def apply(x: Tensor, w: Tensor) -> Tensor:
        return F.conv2d(x, w, None, stride, padding, dilation, groups)

    return apply
