"""The captured op (`Op`) and what each op kind computes on activations (`apply_op`), with the geometry of the
linear maps that are not plain convolutions: average pooling with per-position divisors (ceil_mode,
count_include_pad=False, divisor_override), zero padding and cropping, and upsampling (nearest, bilinear).

Every function here is pure tensor math, vectorised over channels and positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

aten = torch.ops.aten

UPSAMPLE_MODES = ("nearest", "nearest-exact", "bilinear")
"""Interpolation modes lowered exactly: each output is a non-negative weighted sum of the input of its channel."""


@dataclass(frozen=True)
class Op:
    """One data-path operation. Shapes are per sample (no batch dimension)."""

    name: str  # qualified module name, or the fx node name for functionals
    node: str  # fx node name whose output is this op's output
    kind: str  # what the op computes, a key of `_op_fn` ("conv", "linear", "affine", "relu", "maxpool", "add", ...)
    target: str  # what the user wrote, for messages (e.g. "Conv2d", "torch.flatten")
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    params: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()  # fx node names of the ops whose values this one reads ("" : the model's input)
    note: str = ""  # a remark for the provenance of the layer that absorbs it (how the model was captured)


# --- average pooling: one axis at a time ---------------------------------------------------------------------
@dataclass(frozen=True)
class PoolAxis:
    """Average pooling along one axis as a sum over windows of the input zero-padded by `left` and `right`
    (`right` < 0: the last inputs are never read), divided per output position by `divisor`."""

    kernel: int
    stride: int
    left: int
    right: int
    divisor: Tensor  # (out,) float64


def pool_axis(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool, count_include_pad: bool,
              divisor_override: int | None) -> PoolAxis:
    """PyTorch's avg_pool2d windows along an axis of `size` (aten/src/ATen/native/AvgPoolKernel.cpp): output count
    with ceil_mode (a last window must start inside the input or its left padding), and per output the divisor:
    `divisor_override`, else the window clipped to the padded input (count_include_pad) or to the input."""
    span = size + 2 * padding - kernel
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    start = torch.arange(out, dtype=torch.float64) * stride - padding
    end = torch.minimum(start + kernel, torch.tensor(float(size + padding)))
    if divisor_override:
        divisor = torch.full((out,), float(divisor_override), dtype=torch.float64)
    elif count_include_pad:
        divisor = end - start
    else:
        divisor = end.clamp(max=size) - start.clamp(min=0)
    return PoolAxis(kernel, stride, padding, (out - 1) * stride + kernel - size - padding, divisor)


def pool_axes(p: dict[str, Any], in_shape: tuple[int, ...]) -> tuple[PoolAxis, PoolAxis]:
    """`pool_axis` for the height and width of a captured avgpool op on a (C, H, W) value; the divisor is their
    product (divisor_override goes to the height)."""
    override = p["divisor_override"]
    return tuple(pool_axis(in_shape[1 + d], p["kernel_size"][d], p["stride"][d], p["padding"][d], p["ceil_mode"],
                           p["count_include_pad"], (override if d == 0 else 1) if override else None)
                 for d in (0, 1))  # type: ignore[return-value]


def shifted_kernel(kernel: Tensor, left: tuple[int, int], right: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
    """A convolution on an input zero-padded by `left` / `right` per axis (right may be negative: a crop) as one
    convolution with symmetric padding P = max(left, right, 0): the kernel is placed at P − left inside a kernel
    longer by 2P − left − right (the extra taps read padding or are never used). Returns the kernel and P.
    Shape: kernel (O, I, kh, kw) -> (O, I, kh', kw')."""
    pads = tuple(max(a, b, 0) for a, b in zip(left, right))
    size = [kernel.shape[2 + d] + 2 * pads[d] - left[d] - right[d] for d in (0, 1)]
    out = kernel.new_zeros(*kernel.shape[:2], *size)
    oh, ow = (pads[d] - left[d] for d in (0, 1))
    out[:, :, oh:oh + kernel.shape[2], ow:ow + kernel.shape[3]] = kernel
    return out, pads  # type: ignore[return-value]


# --- per-channel spatial maps ---------------------------------------------------------------------------------
def spatial_matrix(op: Op, in_hw: tuple[int, int], dtype) -> Tensor:
    """The matrix of a per-channel spatial linear op (upsampling, adaptive pooling): out[p] = Σ_q M[p, q] in[q],
    from one pass on the identity basis. Shape: -> (H·W, h·w)."""
    h, w = in_hw
    basis = torch.eye(h * w, dtype=dtype).reshape(h * w, 1, h, w)
    one = Op(op.name, op.node, op.kind, op.target, (1, h, w), (1, *op.out_shape[1:]), op.params)
    return apply_op(one, basis).reshape(h * w, -1).T.contiguous()


def _upsample(x: Tensor, size: tuple[int, int], p: dict[str, Any]) -> Tensor:
    sh, sw = p.get("scales") or (None, None)
    if p["mode"] == "nearest":
        return aten.upsample_nearest2d.default(x, list(size), sh, sw)
    if p["mode"] == "nearest-exact":
        return aten._upsample_nearest_exact2d.default(x, list(size), sh, sw)
    return aten.upsample_bilinear2d.default(x, list(size), bool(p["align_corners"]), sh, sw)


def _pool_matrix(n_in: int, n_out: int, dtype) -> Tensor:
    """Adaptive average pooling along one axis as an (n_out, n_in) matrix (PyTorch's floor/ceil windows)."""
    i = torch.arange(n_out)
    lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
    j = torch.arange(n_in)
    inside = (j[None, :] >= lo[:, None]) & (j[None, :] < hi[:, None])
    return inside.to(dtype) / (hi - lo).to(dtype)[:, None]


def adaptive_avg_pool(x: Tensor, size: tuple[int, int]) -> Tensor:
    """F.adaptive_avg_pool2d as two small matrix products (fast forward and backward when upsampling)."""
    ph = _pool_matrix(x.shape[-2], size[0], x.dtype)
    pw = _pool_matrix(x.shape[-1], size[1], x.dtype)
    return torch.einsum("oh,bchw,pw->bcop", ph, x, pw)


# --- what each op computes on activations (folded glue, readout post-processing) -----------------------------
def _op_fn(op: Op):
    p = op.params
    if op.kind == "affine":
        def fn(x, k=p["scale"], s=p["shift"]):
            shape = (1, -1, *([1] * (x.dim() - 2)))
            return x * k.to(x.dtype).reshape(shape) + s.to(x.dtype).reshape(shape)
    elif op.kind == "reshape":
        def fn(x, shape=op.out_shape):
            return x.reshape(x.shape[0], *shape)
    elif op.kind == "avgpool":
        def fn(x):
            return F.avg_pool2d(x, p["kernel_size"], p["stride"], p["padding"], p["ceil_mode"], p["count_include_pad"],
                                p["divisor_override"])
    elif op.kind == "adaptive_avgpool":
        def fn(x, size=op.out_shape[1:]):
            return adaptive_avg_pool(x, size)
    elif op.kind == "maxpool":
        def fn(x):
            return F.max_pool2d(x, p["kernel_size"], p["stride"], p["padding"], p["dilation"], p["ceil_mode"])
    elif op.kind == "linear":
        def fn(x):
            return F.linear(x, p["weight"].to(x.dtype), p["bias"].to(x.dtype))
    elif op.kind == "conv":
        def fn(x):
            return F.conv2d(x, p["weight"].to(x.dtype), p["bias"].to(x.dtype), p["stride"], p["padding"],
                            p["dilation"], p["groups"])
    elif op.kind == "slice":
        def fn(x, d=p["dim"] + 1, lo=p["start"], hi=p["stop"]):
            return x.narrow(d, lo, hi - lo)
    elif op.kind == "place":  # x into channels [offset, offset + C) of a zero tensor with `total` of them (cat)
        def fn(x, d=p["dim"] + 1, lo=p["offset"], total=p["total"]):
            shape = list(x.shape)
            shape[d] = total
            return torch.cat([x.new_zeros(*shape[:d], lo, *shape[d + 1:]), x,
                              x.new_zeros(*shape[:d], total - lo - x.shape[d], *shape[d + 1:])], d)
    elif op.kind == "permute":
        def fn(x, dims=p["dims"]):
            return x.permute(0, *(d + 1 for d in dims))
    elif op.kind == "mean":
        def fn(x, dims=p["dims"], keep=p["keepdim"]):
            return x.mean(tuple(d + 1 for d in dims), keepdim=keep)
    elif op.kind == "mul":
        def fn(x, k=p["factor"]):
            return x * k
    elif op.kind == "pad":  # zeros (or a crop, for negative amounts) on the last two dimensions
        def fn(x, pad=tuple(p["pad"])):
            return F.pad(x, pad)
    elif op.kind == "upsample":
        def fn(x, size=tuple(op.out_shape[1:])):
            return _upsample(x, size, p)
    else:
        def fn(x):
            return x
    return fn


def apply_op(op: Op, x: torch.Tensor) -> torch.Tensor:
    """Apply a captured op to activations. Shape: (B, *op.in_shape) -> (B, *op.out_shape)."""
    return _op_fn(op)(x)
