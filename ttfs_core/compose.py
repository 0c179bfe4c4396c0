"""Composing a term's chain of linear ops into one weighted sum (`Synapses`) of a spiking layer (MATH §5).

A term is (source layer, routing by max pooling, a chain of bias-free linear ops). Into a convolutional layer the
chain becomes one convolution: BatchNorm scales, 1×1 and spatial convolutions, average pooling (with its divisor when
it is the same at every position: ceil_mode, count_include_pad and divisor_override included), zero padding and
cropping (a one-hot kernel), channel placements, slices and permutations, and any per-channel spatial map of a 1×1
source (upsampling a global pool) or onto a 1×1 output. Into a dense layer it becomes one matrix (the Jacobian of
the glue before the last Linear). What does not compose exactly raises `ConversionError` naming the node.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ConversionError
from .fold import fold_chain_into_linear
from .ops import Op, apply_op, pool_axes, shifted_kernel, spatial_matrix
from .records import Synapses
from .sim.dynamics import Pool


@dataclass(frozen=True, eq=False)
class Term:
    """ops(route(activations of layer `source`)); −1 is the encoded input. `in_shape` is the routed shape."""

    source: int
    route: tuple[Pool, ...]
    in_shape: tuple[int, ...]
    ops: tuple[Op, ...] = ()


def error_at(op: Op, message: str) -> ConversionError:
    """A ConversionError about `op`, marked with its fx node (`ConversionError.node`)."""
    error = ConversionError(message)
    error.node = op.node
    return error


@dataclass
class _ConvForm:
    """A term as one convolution so far: weight W with geometry, whose output occupies channels [lo, lo + rows)
    of a value with `total` channels. The identity is a depthwise 1×1 convolution with weight 1."""

    weight: Tensor
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    lo: int = 0
    rows: int = 0
    total: int = 0

    @property
    def pointwise(self) -> bool:
        return tuple(self.weight.shape[2:]) == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)

    @property
    def diagonal(self) -> bool:
        """A per-channel factor (the identity, or BatchNorm scales on spikes)."""
        return self.pointwise and self.groups == self.rows and self.weight.shape[1] == 1

    def dense(self, in_channels: int) -> Tensor:
        """W with groups expanded: (rows, in_channels, kh, kw)."""
        return _ungroup(self.weight, self.groups, in_channels)


def _ungroup(w: Tensor, groups: int, in_channels: int) -> Tensor:
    """A grouped weight (O, I/g, kh, kw) as the dense (O, I, kh, kw) one (zeros outside each group's inputs)."""
    if groups == 1:
        return w
    out, cin_g = w.shape[0], w.shape[1]
    full = w.new_zeros(out, groups, cin_g, *w.shape[2:])
    rows = torch.arange(out)
    full[rows, rows // (out // groups)] = w
    return full.reshape(out, in_channels, *w.shape[2:])


class NotComposable(Exception):
    def __init__(self, message: str, node: str | None = None):
        super().__init__(message)
        self.node = node  # the fx node of the op that cannot be composed


def compose(t: Term, shape: tuple[int, ...], dtype, keep_zero: bool = False) -> Synapses | None:
    """The term's linear chain as one `Synapses` into a layer of `shape`; None if it is identically zero."""
    if len(shape) == 3 and len(t.in_shape) == 3:
        try:
            syn = _compose_conv(t, shape, dtype)
        except NotComposable as exc:
            if tuple(shape[1:]) == (1, 1) or tuple(t.in_shape[1:]) == (1, 1):
                return _spread(t, shape, dtype)
            error = ConversionError(str(exc))
            error.node = exc.node
            raise error from None
        if syn is not None or keep_zero:
            return syn if syn is not None else _dense(t, shape, dtype)
        return None
    if len(shape) == 3:
        raise ConversionError(f"a {len(t.in_shape)}-d value reshaped into the {shape} input of a spiking layer is not "
                              "supported")
    syn = _dense(t, shape, dtype)
    if not keep_zero and not bool((syn.weight != 0).any()):
        return None
    return syn


def _dense(t: Term, shape: tuple[int, ...], dtype) -> Synapses:
    """The term's chain as one dense matrix on the flattened routed source: W_post · W_linear · J_pre, where
    J_pre is the Jacobian of the glue before the last Linear (pulled back row by row, `fold_chain_into_linear`)
    and W_post that of the per-neuron ops after it (so the big Linear is never differentiated through)."""
    ops = list(t.ops)
    n = 1
    for s in shape:
        n *= s
    last = max((k for k, o in enumerate(ops) if o.kind == "linear"), default=None)
    if last is None:
        rows, pre = torch.eye(n, dtype=dtype), ops
    else:
        w = ops[last].params["weight"].to(dtype)
        post = ops[last + 1:]
        if post:
            mid = _jacobian(post, tuple(ops[last].out_shape), n, dtype)
            w = mid @ w
        rows, pre = w, ops[:last]
    if not any(o.kind not in ("identity", "reshape") for o in pre):
        return Synapses(t.source, t.route, t.in_shape, rows.contiguous(), None)  # flatten → Linear: W as it is
    weight, _ = fold_chain_into_linear(rows, torch.zeros(rows.shape[0], dtype=dtype), _chain(pre), t.in_shape)
    return Synapses(t.source, t.route, t.in_shape, weight.contiguous(), None)


_PER_CHANNEL = ("identity", "affine", "mul", "upsample", "adaptive_avgpool", "avgpool", "pad", "mean")


def _spread(t: Term, shape: tuple[int, ...], dtype) -> Synapses:
    """Any linear chain from a 1×1 source, or onto a 1×1 layer, as one convolution: the dense matrix M laid out as a
    kernel the size of the output (padding size − 1: each position reads its own slice, the rest are zero-padded
    taps) or of the input (no padding). Shape: M (C·H·W, c·h·w)."""
    c, h, w = t.in_shape
    if tuple(shape[1:]) == (1, 1):
        split = max((k for k, o in enumerate(t.ops) if o.kind not in ("conv", "identity", "affine", "mul")),
                    default=None)
        if split is not None and all(o.kind in _PER_CHANNEL for o in t.ops[:split + 1]):
            return _onto_point(t, split, shape, dtype)
    n_out = shape[0] * shape[1] * shape[2]
    if c * h * w <= n_out:  # columns from one pass on the identity basis
        basis = torch.eye(c * h * w, dtype=dtype).reshape(c * h * w, c, h, w)
        m = _chain(list(t.ops))(basis).reshape(c * h * w, n_out).T
    else:
        m = _jacobian(list(t.ops), tuple(t.in_shape), n_out, dtype)
    if (h, w) == (1, 1):
        kernel = m.reshape(shape[0], shape[1], shape[2], c).permute(0, 3, 1, 2).flip(2, 3)
        conv = {"stride": (1, 1), "padding": (shape[1] - 1, shape[2] - 1), "dilation": (1, 1), "groups": 1}
    else:
        kernel = m.reshape(shape[0], c, h, w)
        conv = {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1}
    return Synapses(t.source, t.route, t.in_shape, kernel.contiguous(), conv)


def _onto_point(t: Term, split: int, shape: tuple[int, ...], dtype) -> Synapses:
    """A chain onto a 1×1 layer whose ops up to `split` act on each channel alone (pooling, upsampling, padding,
    per-channel factors): their per-channel spatial matrices M_c (from one pass on the basis of one pixel), then
    the rest composed into a convolution K read at the single output position, K_c · M_c (never differentiating
    through the big convolution). Shape: M (c, H'·W', h·w), K (rows, c, H'·W')."""
    c, h, w = t.in_shape
    basis = torch.eye(h * w, dtype=dtype).reshape(h * w, 1, h, w).expand(h * w, c, h, w)
    mid = _chain(list(t.ops[:split + 1]))(basis)  # (h·w, c, H', W')
    mid_shape = tuple(mid.shape[1:])
    m = mid.reshape(h * w, c, -1).permute(1, 2, 0)
    rest = _compose_conv(Term(t.source, t.route, mid_shape, t.ops[split + 1:]), shape, dtype)
    if rest is None:
        return None
    k = _ungroup(rest.weight, rest.conv["groups"], c)  # (rows, c, kh, kw): taps read at the output position
    (ph, pw), (dh, dw) = rest.conv["padding"], rest.conv["dilation"]
    rows_at = torch.arange(k.shape[2]) * dh - ph
    cols_at = torch.arange(k.shape[3]) * dw - pw
    inside_h = (rows_at >= 0) & (rows_at < mid_shape[1])
    inside_w = (cols_at >= 0) & (cols_at < mid_shape[2])
    k_eff = k.new_zeros(k.shape[0], c, *mid_shape[1:])
    k_eff[:, :, rows_at[inside_h][:, None], cols_at[inside_w][None, :]] = k[:, :, inside_h][:, :, :, inside_w]
    kernel = torch.einsum("ocp,cpq->ocq", k_eff.reshape(k.shape[0], c, -1), m).reshape(k.shape[0], c, h, w)
    conv = {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1}
    return Synapses(t.source, t.route, t.in_shape, kernel.contiguous(), conv, rest.channels)


def _chain(ops: list[Op]):
    def apply(x: Tensor) -> Tensor:
        for op in ops:
            x = apply_op(op, x)
        return x

    return apply


def _jacobian(ops: list[Op], in_shape: tuple[int, ...], n: int, dtype) -> Tensor:
    """The (n, prod(in_shape)) matrix of a short chain of linear ops."""
    weight, _ = fold_chain_into_linear(torch.eye(n, dtype=dtype), torch.zeros(n, dtype=dtype), _chain(ops), in_shape)
    return weight


def _compose_conv(t: Term, shape: tuple[int, ...], dtype) -> Synapses | None:
    c_in = t.in_shape[0]
    form = _ConvForm(torch.ones(c_in, 1, 1, 1, dtype=dtype), groups=c_in, rows=c_in, total=c_in)
    cur = tuple(t.in_shape)
    ops = list(t.ops)
    k = 0
    while k < len(ops):
        op = ops[k]
        if op.kind == "identity" or (op.kind == "reshape" and tuple(op.out_shape) == cur):
            k += 1
            continue
        if op.kind in ("reshape", "permute"):  # a run of reshapes and transposes: a channel permutation?
            j, probe_shape = k, cur
            while j < len(ops) and ops[j].kind in ("reshape", "permute", "identity"):
                probe_shape = tuple(ops[j].out_shape)
                j += 1
                if len(probe_shape) == 3 and probe_shape[1:] == cur[1:] and probe_shape[0] == cur[0]:
                    break
            perm = _channel_permutation(ops[k:j], cur, dtype)
            if perm is None:
                raise error_at(op, f"{op.name} ({op.target}) rearranges a value that is not flattened for a "
                              "Linear layer; only channel permutations (channel shuffle) are supported there")
            full = _rows_full(form, c_in, dtype)
            form = _ConvForm(full.weight[perm], full.stride, full.padding, full.dilation, 1, 0, cur[0], cur[0])
            k = j
            continue
        if op.kind == "affine":
            kappa = op.params["scale"].to(dtype)[form.lo:form.lo + form.rows]
            form = _scale_rows(form, kappa, dtype)
        elif op.kind == "mul":
            form = _scale_rows(form, torch.full((form.rows,), float(op.params["factor"]), dtype=dtype), dtype)
        elif op.kind == "place":
            form.lo += op.params["offset"]
            form.total = op.params["total"]
        elif op.kind == "slice":
            if op.params["dim"] != 0:
                raise error_at(op, f"{op.name} ({op.target}): slicing a spatial dimension is not supported")
            a, b = op.params["start"], op.params["stop"]
            lo, hi = max(form.lo, a), min(form.lo + form.rows, b)
            if hi <= lo:
                return None
            if (lo, hi) != (form.lo, form.lo + form.rows):
                dense = form.dense(c_in)
                form = _ConvForm(dense[lo - form.lo:hi - form.lo], form.stride, form.padding, form.dilation, 1,
                                 lo, hi - lo, form.total)
            form.lo -= a
            form.total = b - a
        else:
            form = _then_conv(form, _as_conv(op, cur, dtype), c_in, op)
        cur = tuple(op.out_shape)
        k += 1
    if not bool((form.weight != 0).any()):
        return None
    channels = None if (form.lo == 0 and form.rows == shape[0]) else (form.lo, form.lo + form.rows)
    conv = {"stride": tuple(form.stride), "padding": tuple(form.padding), "dilation": tuple(form.dilation),
            "groups": int(form.groups)}
    return Synapses(t.source, t.route, t.in_shape, form.weight.to(dtype).contiguous(), conv, channels)


def _rows_full(form: _ConvForm, c_in: int, dtype) -> _ConvForm:
    """The form with its rows expanded to all `total` output channels (zeros outside [lo, lo + rows))."""
    dense = form.dense(c_in).to(dtype)
    full = dense.new_zeros(form.total, *dense.shape[1:])
    full[form.lo:form.lo + form.rows] = dense
    return _ConvForm(full, form.stride, form.padding, form.dilation, 1, 0, form.total, form.total)


def _scale_rows(form: _ConvForm, kappa: Tensor, dtype) -> _ConvForm:
    return replace(form, weight=form.weight * kappa.reshape(-1, 1, 1, 1))


@dataclass
class _Conv:
    weight: Tensor  # (O, I/g, kh, kw)
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    name: str


def _as_conv(op: Op, in_shape: tuple[int, ...], dtype) -> _Conv:
    """A linear op on a (C, H, W) value as one convolution, or NotComposable."""
    p = op.params
    c = in_shape[0]
    if op.kind == "conv":
        return _Conv(p["weight"].to(dtype), tuple(p["stride"]), tuple(p["padding"]), tuple(p["dilation"]),
                     int(p["groups"]), op.name)
    if op.kind in ("adaptive_avgpool", "mean"):
        out = op.out_shape[1:] if op.kind == "adaptive_avgpool" else (1, 1)
        h, w = in_shape[1:]
        if op.kind == "mean" and (tuple(p["dims"]) != (1, 2) or not p["keepdim"]):
            raise NotComposable(f"{op.name} ({op.target}) averages over {p['dims']}; before a convolution, a mean "
                                "over height and width with keepdim=True is supported", op.node)
        if h % out[0] or w % out[1]:
            raise NotComposable(f"adaptive average pooling {op.name} from {h}×{w} to {out[0]}×{out[1]} is not a "
                                "plain pooling; supported when Linear layers read it, when the sizes divide, or "
                                "onto a 1×1 output", op.node)
        ks = (h // out[0], w // out[1])
        return _Conv(torch.full((c, 1, *ks), 1.0 / (ks[0] * ks[1]), dtype=dtype), ks, (0, 0), (1, 1), c, op.name)
    if op.kind == "avgpool":
        axes = pool_axes(p, in_shape)
        divisor = axes[0].divisor[:, None] * axes[1].divisor[None, :]
        if not bool((divisor == divisor[0, 0]).all()):
            raise NotComposable(f"average pooling {op.name} divides by a count that changes at the border "
                                "(count_include_pad=False or ceil_mode); it is supported on the output of a ReLU "
                                "layer or of linear ops", op.node)
        lefts, rights = [], []
        for d, ax in enumerate(axes):
            plain = (in_shape[1 + d] + 2 * ax.left - ax.kernel) // ax.stride + 1
            lefts.append(ax.left)
            rights.append(ax.left if plain == len(ax.divisor) else ax.right)
        ks = tuple(p["kernel_size"])
        kernel = torch.full((c, 1, *ks), 1.0 / float(divisor[0, 0]), dtype=dtype)
        weight, pads = shifted_kernel(kernel, tuple(lefts), tuple(rights))
        return _Conv(weight, tuple(p["stride"]), pads, (1, 1), c, op.name)
    if op.kind == "pad":
        left, right, top, bottom = p["pad"]
        weight, pads = shifted_kernel(torch.ones(c, 1, 1, 1, dtype=dtype), (top, left), (bottom, right))
        return _Conv(weight, (1, 1), pads, (1, 1), c, op.name)
    if op.kind == "upsample" and tuple(in_shape[1:]) == (1, 1):  # from one position: a kernel the output's size
        h, w = op.out_shape[1:]
        m = spatial_matrix(op, (1, 1), dtype).reshape(1, 1, h, w).flip(2, 3)
        return _Conv(m.expand(c, 1, h, w).contiguous(), (1, 1), (h - 1, w - 1), (1, 1), c, op.name)
    raise NotComposable(f"{op.name} ({op.target}) cannot be composed into a convolution here; it is supported "
                        "before a Linear layer", op.node)


def _then_conv(form: _ConvForm, b: _Conv, c_in: int, op: Op) -> _ConvForm:
    """Compose `form` (the chain so far) with the convolution `b` that reads it (exact: MATH §5)."""
    lo, rows, total = form.lo, form.rows, form.total
    out = b.weight.shape[0]
    geometry = (b.stride, b.padding, b.dilation)
    if b.groups == total and b.weight.shape[1] == 1:  # per channel (pooling, padding, relays): placement kept
        m = out // total  # outputs per channel
        wb = b.weight[lo * m:(lo + rows) * m]
        if form.pointwise and form.diagonal:  # diagonal × per-channel = per-channel
            return _ConvForm(wb * form.weight.repeat_interleave(m, 0), *geometry, rows, lo * m, rows * m, total * m)
        return _per_row(form, wb, b, m, op, lo * m, rows * m, total * m)
    if form.pointwise and form.diagonal and (lo, rows) == (0, total) and b.groups > 1:  # scale b's inputs
        kappa = form.weight[:, 0, 0, 0]
        per = b.weight.shape[1]
        scaled = b.weight * kappa.reshape(b.groups, per).repeat_interleave(out // b.groups, 0)[:, :, None, None]
        return _ConvForm(scaled, *geometry, b.groups, 0, out, out)
    b_dense = _ungroup(b.weight, b.groups, total)[:, lo:lo + rows]  # (out, rows, kh, kw)
    if form.pointwise:
        if form.diagonal:  # a diagonal: scale b's input channels
            return _ConvForm(b_dense * form.weight[:, 0, 0, 0][None, :, None, None], *geometry, 1, 0, out, out)
        a = form.dense(c_in)[:, :, 0, 0]  # (rows, c_in)
        return _ConvForm(torch.einsum("orkl,ri->oikl", b_dense, a), *geometry, 1, 0, out, out)
    if tuple(b.weight.shape[2:]) == (1, 1) and b.stride == (1, 1) and b.padding == (0, 0):
        g = form.groups  # 1×1 after a grouped form: mix each group's rows, keeping the form's kernel
        a = form.weight.reshape(g, rows // g, *form.weight.shape[1:])
        mixed = torch.einsum("ogr,grikl->ogikl", b_dense[:, :, 0, 0].reshape(out, g, rows // g), a)
        return _ConvForm(mixed.reshape(out, c_in, *form.weight.shape[2:]), form.stride, form.padding,
                         form.dilation, 1, 0, out, out)
    return _general(form, b_dense, b, c_in, op, 0, out, out)


def _undilate(w: Tensor, dilation: tuple[int, int]) -> Tensor:
    """A dilated kernel as the plain one with zeros between its taps."""
    if tuple(dilation) == (1, 1):
        return w
    out = w.new_zeros(*w.shape[:2], (w.shape[2] - 1) * dilation[0] + 1, (w.shape[3] - 1) * dilation[1] + 1)
    out[:, :, ::dilation[0], ::dilation[1]] = w
    return out


def _geometry(form: _ConvForm, b: _Conv, op: Op, a: Tensor, wb: Tensor):
    """Stride, padding and dilation of the convolution `b ∘ form`, and the two kernels to compose. Per axis: where one
    of them is the identity (kernel 1, stride 1, no padding) the other's geometry is kept, dilation included;
    where both act, the form's padding pads the input when b has none (dilations become zeros between taps),
    and b's own zero padding would fall between the two: they do not compose."""
    stride, padding, dilation, undo_a, undo_b = [], [], [], [1, 1], [1, 1]
    for d in (0, 1):
        form_trivial = a.shape[2 + d] == 1 and form.stride[d] == 1 and form.padding[d] == 0
        b_trivial = wb.shape[2 + d] == 1 and b.stride[d] == 1 and b.padding[d] == 0
        if b_trivial:
            geometry = (form.stride[d], form.padding[d], form.dilation[d])
        elif form_trivial:
            geometry = (b.stride[d], b.padding[d], b.dilation[d])
        elif b.padding[d]:
            raise NotComposable(
                f"{op.name} reads a convolution without a ReLU between them with zero padding of its own; two "
                "convolutions in a row compose exactly only when the second has no padding or one of them is 1×1",
                op.node)
        else:
            geometry = (form.stride[d] * b.stride[d], form.padding[d], 1)
            undo_a[d], undo_b[d] = form.dilation[d], b.dilation[d]
        for out, value in zip((stride, padding, dilation), geometry):
            out.append(value)
    return (tuple(stride), tuple(padding), tuple(dilation), _undilate(a, tuple(undo_a)),  # type: ignore[arg-type]
            _undilate(wb, tuple(undo_b)))  # type: ignore[arg-type]


def _per_row(form: _ConvForm, wb: Tensor, b: _Conv, m: int, op: Op, lo: int, rows: int, total: int) -> _ConvForm:
    """b reads each row of the form on its own (m outputs per row, kernels `wb` (rows·m, 1, kh, kw)): kernel k of
    output o is Σ_{u,v} wb[o, u, v] · form row o // m shifted by (u, v)·stride, a transposed convolution per row.
    The form's groups are kept."""
    a = form.weight.repeat_interleave(m, 0)  # (rows·m, c_in/g, ka_h, ka_w)
    if form.pointwise:  # b's geometry, dilation included
        return _ConvForm(wb * a, b.stride, b.padding, b.dilation, form.groups, lo, rows, total)
    stride, padding, dilation, a, wb = _geometry(form, b, op, a, wb)
    k = F.conv_transpose2d(wb.reshape(1, rows, *wb.shape[2:]), a, stride=form.stride, groups=rows)
    return _ConvForm(k.reshape(rows, a.shape[1], *k.shape[2:]), stride, padding, dilation, form.groups, lo, rows,
                     total)


def _general(form: _ConvForm, b_dense: Tensor, b: _Conv, c_in: int, op: Op, lo: int, rows: int,
             total: int) -> _ConvForm:
    """Two spatial convolutions in a row as one (`_geometry`): the kernel of output o on input i is
    Σ_r Σ_{u,v} b[o, r, u, v] · a[r, i] shifted by (u, v)·stride_a, one transposed convolution."""
    stride, padding, dilation, a, b_dense = _geometry(form, b, op, form.dense(c_in), b_dense)
    weight = F.conv_transpose2d(b_dense, a, stride=form.stride)  # (out, c_in, kh, kw)
    return _ConvForm(weight, stride, padding, dilation, 1, lo, weight.shape[0], total)


def _channel_permutation(ops: list[Op], shape: tuple[int, ...], dtype) -> Tensor | None:
    """If the ops (reshapes, transposes) map a (C, H, W) value to one of the same shape by moving whole
    channels, the source channel of each output channel; else None."""
    if len(shape) != 3:
        return None
    c, h, w = shape
    idx = torch.arange(c * h * w, dtype=torch.float64).reshape(1, c, h, w)
    out = idx
    for op in ops:
        out = apply_op(op, out)
    if tuple(out.shape[1:]) != tuple(shape):
        return None
    out = out[0].long()
    src = out[:, 0, 0] // (h * w)
    expect = src[:, None, None] * (h * w) + torch.arange(h * w).reshape(1, h, w)
    if not bool((out == expect).all()):
        return None
    return src
