"""Lowering: from the captured graph of ops to spiking layers (MATH §5), by general rules.

Every value of the model's data path is kept as a sum of *terms* plus a bias map: a term is (source layer,
routing by max pooling, a chain of bias-free linear ops). Linear ops act on every term and on the bias:

- BatchNorm, convolution, Linear, average pooling, reshape, transpose, channel slices, a constant factor:
  appended to each term's chain (a linear node is composed into every layer that reads it, never given neurons);
- an addition concatenates the term lists, a channel concatenation places each part's terms at its channels;
- max pooling of spikes routes each term (earliest spike; latest where a negative BatchNorm scale flips it);
  max pooling of anything else waits for the ReLU that follows (ReLU and max pooling commute);
- a ReLU (or ReLU6) closes a spiking layer whose inputs are the terms, each composed into one weighted sum
  (`Synapses`); the value after it is that layer's spikes.

What cannot be composed exactly (two padded convolutions in a row without a ReLU, a non-ReLU activation, the
product of two activations) raises `ConversionError` naming the node.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from .capture import Op, apply_op
from .errors import ConversionError
from .fold import compose_affine, fold_chain_into_linear
from .mapping import input_folding
from .records import Layer, Probe, Synapses
from .sim.dynamics import Pool

_ROUTABLE = ("affine", "place", "identity")  # ops that keep a term one channel per source channel
_READOUT = ("affine", "reshape", "maxpool", "avgpool", "adaptive_avgpool", "identity")


@dataclass(frozen=True, eq=False)
class Term:
    """ops(route(activations of layer `source`)); −1 is the encoded input. `in_shape` is the routed shape."""

    source: int
    route: tuple[Pool, ...]
    in_shape: tuple[int, ...]
    ops: tuple[Op, ...] = ()


@dataclass(frozen=True, eq=False)
class Pending:
    """A max pooling applied to a value that is not yet spikes: it waits for the ReLU that follows."""

    pre: Value
    ops: tuple[Op, ...]  # the pooling and what came after it


@dataclass(frozen=True, eq=False)
class Value:
    """Σ terms + bias, of per-sample `shape`; `node` is where the original model computes it."""

    terms: tuple[Term, ...]
    bias: Tensor
    shape: tuple[int, ...]
    node: str
    label: str = ""
    pending: Pending | None = None
    spikes: bool = False  # exactly the spikes of layers (a ReLU of it is the identity)
    absorbed: tuple[Op, ...] = ()  # the captured ops since the spikes of the layers read (provenance)


def _at(op: Op, message: str) -> ConversionError:
    """A ConversionError about `op`, marked with its fx node (`ConversionError.node`)."""
    error = ConversionError(message)
    error.node = op.node
    return error


def _bias_free(op: Op) -> Op:
    p = dict(op.params)
    if op.kind in ("conv", "linear"):
        p["bias"] = torch.zeros_like(p["bias"])
    elif op.kind == "affine":
        p["shift"] = torch.zeros_like(p["shift"])
    return replace(op, params=p)


def _apply1(op: Op, t: Tensor) -> Tensor:
    return apply_op(op, t[None])[0]


class Lowering:
    """Lower the captured ops (topological order) into spiking layers and the readout."""

    def __init__(self, ops: list[Op], output: str, input_shape: tuple[int, ...], input_range, dtype):
        self.ops, self.output_node, self.dtype = ops, output, dtype
        self.layers: list[Layer] = []
        self.names: set[str] = set()
        self.notes: dict[str, list[str]] = {}  # fx node -> remarks for the provenance (routing flipped by a BN)
        self._absorbing: tuple[Op, ...] = ()  # the ops the layer closed by the op being lowered absorbed
        channels = input_shape[0] if len(input_shape) >= 2 else 1
        scale, shift = input_folding(*input_range)
        per = (channels,) if len(input_shape) >= 2 else input_shape
        affine = Op("input", "input", "affine", "input range", input_shape, input_shape,
                    {"scale": torch.full(per, scale, dtype=dtype), "shift": torch.zeros(per, dtype=dtype)})
        self.values: dict[str, Value] = {
            "": Value((Term(-1, (), input_shape, (affine,)),), torch.full(input_shape, shift, dtype=dtype),
                      input_shape, "", "input")
        }

    def run(self) -> list[Layer]:
        order = {op.node: k for k, op in enumerate(self.ops)}
        for op in self.ops:
            args = [self.values[i] for i in op.inputs]
            self._absorbing = tuple(sorted(_absorbed(args, op), key=lambda o: order[o.node]))
            closed = len(self.layers)
            try:
                value = getattr(self, f"_on_{op.kind}")(op, *args)
            except ConversionError as exc:
                if exc.node is None:
                    exc.node = op.node  # the node being lowered (its message names the module at fault)
                raise
            # provenance: a value carries the ops since the last spikes; a ReLU that closed a layer gave them to it
            self.values[op.node] = replace(value, absorbed=() if len(self.layers) > closed else self._absorbing)
        out = self.values[self.output_node]
        self._absorbing = out.absorbed
        try:
            return self._finish(out)
        except ConversionError as exc:
            if exc.node is None:
                exc.node = self.output_node or None
            raise

    def _finish(self, out: Value) -> list[Layer]:
        if out.pending is not None:
            bad = next((o for o in out.pending.ops if o.kind not in _READOUT), None)
            if bad is not None:
                raise _at(bad, f"{bad.name} ({bad.target}) after the readout is not supported")
            self._close(out.pending.pre, output=True, readout=out.pending.ops)
        else:
            weighted = {"conv", "linear", "affine", "avgpool", "adaptive_avgpool", "mean", "mul"}
            if out.spikes or not any(o.kind in weighted for t in out.terms for o in t.ops):
                last = self.ops[-1].name if self.ops else "its input"
                raise ConversionError(f"the network must end with a Linear or Conv2d layer without ReLU (the "
                                      f"readout); it ends with {last}")
            self._close(out, output=True)
        return self.layers

    # --- linear ops ---------------------------------------------------------------------------------------
    def _linear(self, op: Op, v: Value) -> Value:
        if v.pending is not None:
            return replace(v, pending=replace(v.pending, ops=(*v.pending.ops, op)), shape=tuple(op.out_shape),
                           node=op.node)
        if op.kind == "reshape" and tuple(op.out_shape) == tuple(v.shape):
            return replace(v, node=op.node)
        free = _bias_free(op)
        terms = tuple(replace(t, ops=(*t.ops, free)) for t in v.terms)
        spikes = v.spikes and op.kind in ("identity",)
        return Value(terms, _apply1(op, v.bias), tuple(op.out_shape), op.node, op.target, None, spikes)

    _on_affine = _on_conv = _on_avgpool = _on_adaptive_avgpool = _on_reshape = _linear
    _on_slice = _on_permute = _on_mean = _on_mul = _linear

    def _on_linear(self, op: Op, v: Value) -> Value:
        if len(op.in_shape) != 1:
            raise ConversionError(f"{op.name} ({op.target}) is applied to a {len(op.in_shape) + 1}-d tensor; Linear "
                                  "layers are supported on flattened inputs")
        return self._linear(op, v)

    def _on_identity(self, op: Op, v: Value) -> Value:
        return replace(v, node=op.node)

    def _on_add(self, op: Op, a: Value, b: Value | None = None) -> Value:
        for v in (a, b):
            if v is not None and v.pending is not None:
                raise ConversionError(f"{op.name} ({op.target}) adds a max-pooled value that has no ReLU yet; pool "
                                      "after the ReLU")
        sign = op.params.get("sign", 1.0)
        if sign != 1.0:
            a = self._scaled(op, a, sign)
        if b is None:
            return Value(a.terms, a.bias + op.params["constant"], a.shape, op.node, "add")
        if tuple(a.shape) != tuple(b.shape):
            raise ConversionError(f"{op.name} ({op.target}) adds tensors of shapes {a.shape} and {b.shape}; "
                                  "broadcasting additions are not supported")
        b = self._scaled(op, b, op.params["alpha"])
        return Value(a.terms + b.terms, a.bias + b.bias, a.shape, op.node, "add")

    def _scaled(self, op: Op, v: Value, k: float) -> Value:
        if k == 1:
            return v
        mul = Op(op.name, op.node, "mul", "scale", v.shape, v.shape, {"factor": k})
        return Value(tuple(replace(t, ops=(*t.ops, mul)) for t in v.terms), k * v.bias, v.shape, v.node, v.label)

    def _on_cat(self, op: Op, *parts: Value) -> Value:
        dim, total, offset = op.params["dim"], op.out_shape[op.params["dim"]], 0
        terms = []
        for v in parts:
            if v.pending is not None:
                raise ConversionError(f"{op.name} ({op.target}) concatenates a max-pooled value that has no ReLU "
                                      "yet; pool after the ReLU")
            place = Op(op.name, op.node, "place", "cat", v.shape, tuple(op.out_shape),
                       {"dim": dim, "offset": offset, "total": total})
            terms += [replace(t, ops=(*t.ops, place)) for t in v.terms]
            offset += v.shape[dim]
        bias = torch.cat([v.bias for v in parts], dim)
        spikes = all(v.spikes for v in parts) and dim == 0
        return Value(tuple(terms), bias, tuple(op.out_shape), op.node, "cat", None, spikes)

    # --- max pooling -------------------------------------------------------------------------------------
    def _on_maxpool(self, op: Op, v: Value) -> Value:
        if v.pending is not None:
            return self._linear(op, v)
        routed = self._route(op, v)
        if routed is not None:
            return routed
        return Value((), torch.zeros(op.out_shape, dtype=self.dtype), tuple(op.out_shape), op.node, op.target,
                     Pending(v, (op,)))

    def _route(self, op: Op, v: Value) -> Value | None:
        """Max pooling moved up to the spikes of every term (MATH §5), if each output channel is one source
        channel times a constant: the pool takes the earliest spike, or the latest where the constant is < 0."""
        if len(v.shape) != 3:
            return None
        bias = v.bias
        if not bool((bias == bias[:, :1, :1]).all()):
            return None
        covered = torch.zeros(v.shape[0], dtype=torch.long)
        terms = []
        for t in v.terms:
            if len(t.in_shape) != 3 or any(o.kind not in _ROUTABLE for o in t.ops):
                return None
            sign, lo = torch.ones(t.in_shape[0], dtype=self.dtype), 0
            for o in t.ops:
                if o.kind == "affine":
                    sign = sign * torch.sign(o.params["scale"][lo:lo + len(sign)]).to(self.dtype)
                elif o.kind == "place":
                    lo += o.params["offset"]
            if bool((sign == 0).any()):
                return None
            covered[lo:lo + len(sign)] += 1
            pool = Pool.of(op.params)
            if bool((sign < 0).any()):
                pool = pool.flipped(sign)
                self._note(op, f"latest spike in {int((sign < 0).sum())} of {len(sign)} channels (a negative "
                               "BatchNorm scale between the ReLU and the pool)")
            shape = tuple(pool.activations(torch.zeros(1, *t.in_shape, dtype=self.dtype)).shape[1:])
            terms.append(replace(t, route=(*t.route, pool), in_shape=shape))
        if bool((covered > 1).any()):
            return None
        pooled = Pool.of(op.params).activations(bias[None])[0]
        return Value(tuple(terms), pooled, tuple(op.out_shape), op.node, op.target, None, v.spikes)

    # --- activations: a ReLU closes a layer ----------------------------------------------------------------
    def _on_relu(self, op: Op, v: Value) -> Value:
        return self._activation(op, v, None)

    def _on_relu6(self, op: Op, v: Value) -> Value:
        return self._activation(op, v, op.params["max"])

    def _activation(self, op: Op, v: Value, clip: float | None) -> Value:
        if v.pending is not None:
            pre, probe, pools = self._unpend(op, v)
            n = self._close(pre, relu=op, probe=probe, clip=clip)
            shape = self.layers[n].shape
            routed = torch.zeros(1, *shape, dtype=self.dtype)
            for pool in pools:
                routed = pool.activations(routed)
            return Value((Term(n, tuple(pools), tuple(routed.shape[1:])),), torch.zeros(op.out_shape, dtype=self.dtype),
                         tuple(op.out_shape), op.node, op.target, spikes=True)
        if v.spikes and clip is None:
            return replace(v, node=op.node)  # ReLU of spikes (or of max-pooled spikes): the identity
        n = self._close(v, relu=op, probe=Probe(op.node), clip=clip)
        return Value((Term(n, (), self.layers[n].shape),), torch.zeros(op.out_shape, dtype=self.dtype),
                     tuple(op.out_shape), op.node, op.target, spikes=True)

    def _unpend(self, relu: Op, v: Value) -> tuple[Value, Probe, list[Pool]]:
        """conv → [BN] → max pool → [BN] → ReLU: the layer is ReLU of the value before the pool (with the
        later affines folded in); its spikes are pooled on the way to the next layer."""
        pre, ops = v.pending.pre, v.pending.ops
        pools: list[Pool] = []
        pool_ops: list[Op] = []
        probe_affine = None
        for o in ops:
            if o.kind == "maxpool":
                pools.append(Pool.of(o.params))
                pool_ops.append(o)
            elif o.kind == "affine":
                pair = (o.params["scale"].to(self.dtype), o.params["shift"].to(self.dtype))
                pools = [p.flipped(pair[0]) for p in pools]
                negative = int((pair[0] < 0).sum())
                if negative and pools:
                    self._note(o, f"{negative} negative scales: the max pooling before it takes the latest spike "
                                  "in those channels")
                    for p_op in pool_ops:
                        self._note(p_op, f"latest spike in {negative} of {len(pair[0])} channels (a negative "
                                         f"BatchNorm scale after the pool, {o.name})")
                probe_affine = pair if probe_affine is None else compose_affine(probe_affine, pair)
                pre = self._linear(replace(o, in_shape=pre.shape, out_shape=pre.shape), pre)
            elif o.kind != "identity":
                raise _at(o, f"{o.name} ({o.target}) between {pre.label or pre.node} and its ReLU "
                             f"{relu.name} is not supported; only BatchNorm and max pooling can stand there")
        scale, shift = probe_affine if probe_affine else (None, None)
        return pre, Probe(v.pending.pre.node, scale, shift, relu=True), pools

    def _note(self, op: Op, text: str) -> None:
        notes = self.notes.setdefault(op.node, [])
        if text not in notes:
            notes.append(text)

    def _provenance(self) -> tuple[tuple[str, str, str], ...]:
        """(name, kind, description) of every captured op the layer being closed absorbed, in graph order."""
        out = []
        for o in self._absorbing:
            desc = o.target
            if o.kind == "affine" and not self.notes.get(o.node):
                negative = int((o.params["scale"] < 0).sum())
                if negative:
                    desc += f"; {negative} negative scales"
            elif o.kind == "maxpool" and not self.notes.get(o.node):
                desc += "; earliest spike"
            out.append((o.name, o.kind, "; ".join([desc, *self.notes.get(o.node, ())])))
        return tuple(out)

    # --- closing a layer ---------------------------------------------------------------------------------
    def _close(self, v: Value, *, relu: Op | None = None, probe: Probe | None = None, output: bool = False,
               readout: tuple[Op, ...] = (), clip: float | None = None) -> int:
        shape = tuple(v.shape)
        inputs: list[Synapses] = []
        for t in v.terms:
            syn = compose(t, shape, self.dtype)
            if syn is not None:
                inputs = _merge(inputs, syn)
        if not inputs:  # every input composed to zero: keep one zero synapse so the layer has a clock
            t = v.terms[0]
            syn = compose(t, shape, self.dtype, keep_zero=True)
            inputs = [syn]
        bias = v.bias
        if len(shape) == 3 and bool((bias == bias[:, :1, :1]).all()):
            bias = bias[:, :1, :1].clone()
        main = _main_op(v)
        if main is not None and len(v.terms) == 1:
            name, label = main.name, main.target
        else:
            name = relu.name if relu is not None else v.node
            label = v.label if len(v.terms) > 1 else (relu.target if relu is not None else v.label)
        if name in self.names:
            name = relu.node if relu is not None and relu.node not in self.names else f"{name}#{len(self.layers)}"
        self.names.add(name)
        scale = torch.ones((shape[0], 1, 1) if len(shape) == 3 else shape, dtype=self.dtype)
        layer = Layer(name=name, op=label, inputs=tuple(inputs), shape=shape, bias=bias.contiguous(),
                      probe=probe if probe is not None else Probe(v.node), scale=scale, is_output=output,
                      readout=tuple(readout), absorbed=self._provenance(),
                      clip=None if clip is None else float(clip))
        self.layers.append(layer)
        return len(self.layers) - 1


def _absorbed(args: list[Value], op: Op) -> tuple[Op, ...]:
    """The ops of the values read, then `op`: each fx node once."""
    seen, out = set(), []
    for o in (*(o for v in args for o in v.absorbed), op):
        if o.node not in seen:
            seen.add(o.node)
            out.append(o)
    return tuple(out)


def _main_op(v: Value) -> Op | None:
    """The last convolution or Linear of a single-term value (names the layer after the user's module)."""
    if len(v.terms) != 1:
        return None
    return next((o for o in reversed(v.terms[0].ops) if o.kind in ("conv", "linear")), None)


def _merge(inputs: list[Synapses], syn: Synapses) -> list[Synapses]:
    """Add `syn` to the list, summing it into an input with the same source, routing, geometry and channels."""
    for k, other in enumerate(inputs):
        if (other.source == syn.source and other.route == syn.route and other.conv == syn.conv
                and other.channels == syn.channels and other.weight.shape == syn.weight.shape):
            inputs[k] = replace(other, weight=other.weight + syn.weight)
            return inputs
    return [*inputs, syn]


# ---------------------------------------------------------------------------------------------------------
# composing a term's chain of linear ops into one weighted sum

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
    if groups == 1:
        return w
    out, cin_g = w.shape[0], w.shape[1]
    full = w.new_zeros(out, in_channels, *w.shape[2:])
    per = out // groups
    for g in range(groups):
        full[g * per:(g + 1) * per, g * cin_g:(g + 1) * cin_g] = w[g * per:(g + 1) * per]
    return full


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
                raise _at(op, f"{op.name} ({op.target}) rearranges a value that is not flattened for a "
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
                raise _at(op, f"{op.name} ({op.target}): slicing a spatial dimension is not supported")
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
        elif op.kind in ("conv", "avgpool", "adaptive_avgpool"):
            form = _then_conv(form, _as_conv(op, cur, dtype), c_in, op)
        else:
            raise _at(op, f"{op.name} ({op.target}) cannot be composed into a convolution; it is supported "
                          "before a Linear layer")
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
    p = op.params
    c = in_shape[0]
    if op.kind == "conv":
        return _Conv(p["weight"].to(dtype), tuple(p["stride"]), tuple(p["padding"]), tuple(p["dilation"]),
                     int(p["groups"]), op.name)
    if op.kind == "adaptive_avgpool":
        out = op.out_shape[1:]
        h, w = in_shape[1:]
        if h % out[0] or w % out[1]:
            raise _at(op, f"adaptive average pooling {op.name} from {h}×{w} to {out[0]}×{out[1]} is not a "
                          "plain pooling; supported when Linear layers read it, or when the sizes divide")
        ks = (h // out[0], w // out[1])
        return _Conv(torch.full((c, 1, *ks), 1.0 / (ks[0] * ks[1]), dtype=dtype), ks, (0, 0), (1, 1), c, op.name)
    if p["ceil_mode"] or p["divisor_override"] or (not p["count_include_pad"] and any(p["padding"])):
        raise _at(op, f"average pooling {op.name}: ceil_mode, divisor_override and count_include_pad=False "
                      "with padding are not supported before a convolution or a ReLU (they are before a "
                      "Linear layer)")
    ks = tuple(p["kernel_size"])
    return _Conv(torch.full((c, 1, *ks), 1.0 / (ks[0] * ks[1]), dtype=dtype), tuple(p["stride"]),
                 tuple(p["padding"]), (1, 1), c, op.name)


def _then_conv(form: _ConvForm, b: _Conv, c_in: int, op: Op) -> _ConvForm:
    """Compose `form` (the chain so far) with the convolution `b` that reads it (exact: MATH §5)."""
    lo, rows, total = form.lo, form.rows, form.total
    out = b.weight.shape[0]
    depthwise = b.groups == total and b.weight.shape[1] == 1 and out == total
    geometry = (b.stride, b.padding, b.dilation)
    if depthwise:  # per-channel (average pooling): only this term's channels, placement kept
        wb = b.weight[lo:lo + rows]
        if form.pointwise:
            if form.diagonal:  # diagonal × depthwise = depthwise
                return _ConvForm(wb * form.weight, *geometry, rows, lo, rows, total)
            a = form.dense(c_in)[:, :, 0, 0]  # (rows, c_in)
            return _ConvForm(a[:, :, None, None] * wb, *geometry, 1, lo, rows, total)
        b_full = _ConvForm(wb.clone(), *geometry, rows, 0, rows, rows).dense(rows)
        return _general(form, b_full, b, c_in, op, lo, rows, total)
    b_dense = _ungroup(b.weight, b.groups, total)[:, lo:lo + rows]  # (out, rows, kh, kw)
    if form.pointwise:
        if form.diagonal:  # a diagonal: scale b's input channels
            kappa = form.weight[:, 0, 0, 0]
            if (lo, rows) == (0, total) and b.groups > 1:
                per = b.weight.shape[1]
                scaled = b.weight * kappa.reshape(b.groups, per).repeat_interleave(out // b.groups, 0)[:, :, None, None]
                return _ConvForm(scaled, *geometry, b.groups, 0, out, out)
            return _ConvForm(b_dense * kappa[None, :, None, None], *geometry, 1, 0, out, out)
        a = form.dense(c_in)[:, :, 0, 0]  # (rows, c_in)
        return _ConvForm(torch.einsum("orkl,ri->oikl", b_dense, a), *geometry, 1, 0, out, out)
    if tuple(b.weight.shape[2:]) == (1, 1) and b.stride == (1, 1) and b.padding == (0, 0):
        a = form.dense(c_in)  # (rows, c_in, kh, kw)
        return _ConvForm(torch.einsum("or,rikl->oikl", b_dense[:, :, 0, 0], a), form.stride, form.padding,
                         form.dilation, 1, 0, out, out)
    return _general(form, b_dense, b, c_in, op, 0, out, out)


def _general(form: _ConvForm, b_dense: Tensor, b: _Conv, c_in: int, op: Op, lo: int, rows: int,
             total: int) -> _ConvForm:
    """Two spatial convolutions in a row: one convolution when the second has no zero padding (the first's
    padding then pads the input) and neither is dilated. Its kernel is found by running both on unit inputs."""
    if any(b.padding) or form.dilation != (1, 1) or b.dilation != (1, 1):
        raise NotComposable(
            f"{op.name} reads a convolution without a ReLU between them with zero padding of its own; two "
            "convolutions in a row compose exactly only when the second has no padding or one of them is 1×1",
            op.node)
    a = form.dense(c_in)  # (rows_a, c_in, ka_h, ka_w)
    (sa_h, sa_w) = form.stride
    kh = a.shape[2] + (b_dense.shape[2] - 1) * sa_h
    kw = a.shape[3] + (b_dense.shape[3] - 1) * sa_w
    eye = torch.eye(c_in * kh * kw, dtype=a.dtype).reshape(c_in * kh * kw, c_in, kh, kw)
    mid = F.conv2d(eye, a, None, form.stride)
    res = F.conv2d(mid, b_dense, None, b.stride)  # (c_in·kh·kw, out, 1, 1)
    weight = res[:, :, 0, 0].reshape(c_in, kh, kw, -1).permute(3, 0, 1, 2).contiguous()
    stride = (sa_h * b.stride[0], sa_w * b.stride[1])
    return _ConvForm(weight, stride, form.padding, (1, 1), 1, lo, weight.shape[0], total)


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
