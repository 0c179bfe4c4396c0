"""Lowering: from the captured graph of ops to spiking layers (MATH §5), by general rules.

Every value of the model's data path is kept as a sum of *terms* plus a bias map: a term is (source layer,
routing by max pooling, a chain of bias-free linear ops). Linear ops act on every term and on the bias:

- BatchNorm, convolution, Linear, average pooling, zero padding, reshape, transpose, channel slices, constant
  factors: appended to each term's chain (a linear node is composed into every layer that reads it, never given
  neurons; `ttfs_core.compose` makes each chain one weighted sum);
- linear maps that no convolution of the value computes (their weights change with the position) go through relay
  layers, neurons whose ReLU is the identity and whose weighted sums are convolutions again: average pooling whose
  divisor changes at the border (count_include_pad=False, ceil_mode) keeps its interior divisor everywhere, and
  relays hold the window sums of the few border rows and columns, added back with the difference; upsampling
  (nearest, bilinear) reads a relay that holds every pixel of the value as a channel (`_resampled`);
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
from torch import Tensor

from .compose import Term, compose, error_at
from .errors import ConversionError
from .fold import compose_affine
from .mapping import input_folding
from .ops import Op, apply_op, pool_axes, shifted_kernel, spatial_matrix
from .records import Layer, Probe, Synapses
from .sim.dynamics import Pool

MAX_RELAY_WEIGHTS = 1 << 24
"""The most weights one relay's synapses may hold (upsampling through per-pixel relays grows with the map's area
squared): larger maps are refused by name."""
MAX_RELAY_MACS = 1 << 28
"""The most multiply-adds per input of the convolution that reads an upsampling's per-pixel relay (its kernel is the
output's size, so it grows with the area squared): larger maps are refused by name."""

_ROUTABLE = ("affine", "place", "identity")  # ops that keep a term one channel per source channel
_READOUT = ("affine", "reshape", "maxpool", "avgpool", "adaptive_avgpool", "identity")


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
        self.users: dict[str, list[Op]] = {}  # fx node -> the ops that read its value
        for op in ops:
            for name in dict.fromkeys(op.inputs):
                self.users.setdefault(name, []).append(op)
        self.layers: list[Layer] = []
        self.names: set[str] = set()
        self.notes: dict[str, list[str]] = {}  # fx node -> remarks for the provenance (routing flipped by a BN)
        self._absorbing: tuple[Op, ...] = ()  # the ops the layer closed by the op being lowered absorbed
        self._relays = 0  # relay layers closed by the op being lowered
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
            closed, self._relays = len(self.layers), 0
            if op.note:
                self._note(op, op.note)
            try:
                value = getattr(self, f"_on_{op.kind}")(op, *args)
            except ConversionError as exc:
                if exc.node is None:
                    exc.node = op.node  # the node being lowered (its message names the module at fault)
                raise
            # provenance: a value carries the ops since the last spikes; a ReLU that closed a layer gave them to it
            relu_closed = len(self.layers) - self._relays > closed
            self.values[op.node] = replace(value, absorbed=() if relu_closed else self._absorbing)
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
                raise error_at(bad, f"{bad.name} ({bad.target}) after the readout is not supported")
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

    _on_affine = _on_conv = _on_reshape = _linear
    _on_slice = _on_permute = _on_mean = _on_mul = _on_pad = _on_place = _linear

    def _on_avgpool(self, op: Op, v: Value) -> Value:
        if v.pending is None and len(v.shape) == 3 and self._read_as_conv(op.node):
            axes = pool_axes(op.params, v.shape)
            if not all(bool((ax.divisor == ax.divisor[0]).all()) for ax in axes):
                return self._bordered(op, v, axes)
        return self._linear(op, v)

    def _on_upsample(self, op: Op, v: Value) -> Value:
        if v.pending is not None or tuple(v.shape[1:]) == (1, 1) or not self._read_as_conv(op.node):
            return self._linear(op, v)  # from one position, or read by Linear layers: one weighted sum
        return self._resampled(op, v)

    def _on_adaptive_avgpool(self, op: Op, v: Value) -> Value:
        (h, w), (big_h, big_w) = v.shape[1:], op.out_shape[1:]
        if v.pending is None and (h % big_h or w % big_w) and self._read_as_conv(op.node):
            return self._resampled(op, v)  # not a plain pooling (e.g. 2×2 to 7×7): a spatial map, as upsampling
        return self._linear(op, v)

    def _read_as_conv(self, node: str, depth: int = 0) -> bool:
        """Whether a later op reads the value of `node` as a convolution reads it (its output a (C, H, W) value
        larger than 1×1), through ops that keep positions apart; not when only Linear layers or ops onto one
        position read it (their weighted sums take any linear map)."""
        for user in self.users.get(node, ()):
            if user.kind in ("identity", "affine", "mul") and depth < 16:
                if self._read_as_conv(user.node, depth + 1):
                    return True
            elif len(user.out_shape) == 3 and tuple(user.out_shape[1:]) != (1, 1):
                return True
        return False

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
                raise self._unrouted(op, v, "adds")
        sign = op.params.get("sign", 1.0)
        if sign != 1.0:
            a = self._scaled(op, a, sign)
        if b is None:
            constant = op.params["constant"]
            constant = constant.to(a.bias.dtype) if isinstance(constant, Tensor) else constant
            return Value(a.terms, a.bias + constant, a.shape, op.node, "add")
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
                raise self._unrouted(op, v, "concatenates")
            place = Op(op.name, op.node, "place", "cat", v.shape, tuple(op.out_shape),
                       {"dim": dim, "offset": offset, "total": total})
            terms += [replace(t, ops=(*t.ops, place)) for t in v.terms]
            offset += v.shape[dim]
        bias = torch.cat([v.bias for v in parts], dim)
        spikes = all(v.spikes for v in parts) and dim == 0
        return Value(tuple(terms), bias, tuple(op.out_shape), op.node, "cat", None, spikes)

    def _unrouted(self, op: Op, v: Value, does: str) -> ConversionError:
        """The refusal of a max pooling of a value no ReLU produced, used before any ReLU (Xception's blocks)."""
        pool = next(o for o in v.pending.ops if o.kind == "maxpool")
        return error_at(pool, f"{pool.name} ({pool.target}) max-pools {v.pending.pre.label or v.pending.pre.node}, "
                              f"a value that no ReLU produced, and {op.name} ({op.target}) {does} it before any "
                              "ReLU: max pooling is supported on a ReLU layer's output (earliest spike), or when a "
                              "ReLU follows it (BatchNorm may stand between), not on a linear value")

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
                raise error_at(o, f"{o.name} ({o.target}) between {pre.label or pre.node} and its ReLU "
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
               readout: tuple[Op, ...] = (), clip: float | None = None, relay: Op | None = None) -> int:
        """A layer of neurons ReLU(v) (v itself for the readout); `relay`: a relay layer for the linear op `relay`
        (its ReLU is the identity on the values it holds), named after it."""
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
        if relay is not None:
            name, label = f"{relay.name}:{v.label}", f"relay ({v.label})"
        elif main is not None and len(v.terms) == 1:
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
                      readout=tuple(readout), clip=None if clip is None else float(clip),
                      absorbed=self._provenance() if relay is None else ((relay.name, relay.kind, label),))
        self.layers.append(layer)
        self._relays += relay is not None
        return len(self.layers) - 1

    # --- relays: linear maps whose weights change with the position -------------------------------------------
    def _relay(self, op: Op, v: Value, then: tuple[Op, ...], what: str, node: str, estimate: int) -> Term:
        """Close a relay layer ReLU(v) whose neurons hold values ≥ 0 (the ReLU is the identity on them); the model
        computes them as `then` applied to its value at `node`. Returns the term reading it. `estimate` bounds
        the weights its synapses will need, checked before they are built."""
        limit = f"; over the limit of {MAX_RELAY_WEIGHTS:,} weights per relay: supported on smaller maps"
        if estimate > 4 * MAX_RELAY_WEIGHTS:
            raise error_at(op, f"{op.name} ({op.target}) on a value of shape {v.shape}: its exact lowering needs "
                               f"relay neurons with about {estimate:,} weights{limit}")
        n = self._close(replace(v, label=what), probe=Probe(node, then=then), relay=op)
        size = sum(syn.weight.numel() for syn in self.layers[n].inputs)
        if size > MAX_RELAY_WEIGHTS:
            raise error_at(op, f"{op.name} ({op.target}) on a value of shape {v.shape}: its exact lowering needs "
                               f"{self.layers[n].neurons:,} relay neurons with {size:,} weights{limit}")
        return Term(n, (), tuple(v.shape))

    def _conv_op(self, op: Op, node: str, weight: Tensor, stride, padding, groups: int, in_shape,
                 out_shape, dilation=(1, 1)) -> Op:
        return Op(op.name, f"{op.node}:{node}", "conv", op.target, tuple(in_shape), tuple(out_shape),
                  {"weight": weight.to(self.dtype), "bias": torch.zeros(weight.shape[0], dtype=self.dtype),
                   "stride": tuple(stride), "padding": tuple(padding), "dilation": tuple(dilation), "groups": groups})

    def _bordered(self, op: Op, v: Value, axes) -> Value:
        """Average pooling whose divisor changes at the border, one axis at a time (width, then height; the
        divisor is a product of one per axis). The interior's 1/divisor multiplies the window sums everywhere (a
        convolution); each row or column whose divisor differs gets a relay layer holding its window sums (≥ 0 on
        spikes; a + and a − relay otherwise), added back with the difference of 1/divisor. Picking row i out of n
        and placing it back are convolutions of two taps (dilated, strided), not n."""
        c = v.shape[0]
        signs = torch.tensor([1.0] if v.spikes else [1.0, -1.0], dtype=self.dtype)
        s = len(signs)
        depth = 1 if v.spikes else max((t.in_shape[0] for t in v.terms), default=1)  # inputs per neuron and tap
        probe_ops: tuple[Op, ...] = ()  # the model's value at v.node -> the current stage
        cur = v
        for d in (1, 0):
            ax, size, other = axes[d], cur.shape[1 + d], cur.shape[2 - d]
            n = len(ax.divisor)
            plain = (size + 2 * ax.left - ax.kernel) // ax.stride + 1 == n
            kernel = torch.ones(c, 1, *_along(d, ax.kernel), dtype=self.dtype)
            weight, pads = shifted_kernel(kernel, _along(d, ax.left, 0), _along(d, ax.left if plain else ax.right, 0))
            out_shape = (c, *_along(d, n, other))
            sums = self._conv_op(op, f"sums{d}", weight, _along(d, ax.stride), pads, c, cur.shape, out_shape)
            recip = (1.0 / ax.divisor).to(self.dtype)
            inner = recip[n // 2]
            nxt = self._linear(self._conv_op(op, f"avg{d}", weight * inner, _along(d, ax.stride), pads, c,
                                             cur.shape, out_shape), cur)
            summed = self._linear(sums, cur)
            for i in (recip != inner).nonzero().flatten().tolist():
                # row (column) i of the window sums: tap 1 of a kernel dilated by i, one output (stride n)
                taps = torch.tensor([1.0] if i == 0 else [0.0, 1.0], dtype=self.dtype)
                pick = (signs[:, None] * taps).reshape(s, 1, *_along(d, len(taps))).repeat(c, 1, 1, 1)
                relay_shape = (c * s, *_along(d, 1, other))
                crop = self._conv_op(op, f"border{d}.{i}", pick, _along(d, n), (0, 0), c, out_shape, relay_shape,
                                     _along(d, max(i, 1)))
                estimate = c * s * depth * (n + ax.kernel) * cur.shape[2 - d] * len(cur.terms)
                relay = self._relay(op, self._linear(crop, summed), (*probe_ops, sums, crop),
                                    f"{'column' if d else 'row'} {i}", v.node, estimate)
                # back to position i, times (1/divisor − interior's): a 1-long input padded by P, taps dilated so
                # that one of them reads it at output i (the other reads it at n − 1 − i, with weight 0)
                if 2 * i + 1 == n:
                    taps, pad, dil = torch.ones(1, dtype=self.dtype), i, 1
                elif 2 * i + 1 < n:
                    taps, pad, dil = torch.tensor([0.0, 1.0], dtype=self.dtype), n - 1 - i, n - 1 - 2 * i
                else:
                    taps, pad, dil = torch.tensor([1.0, 0.0], dtype=self.dtype), i, 2 * i + 1 - n
                back = (signs[:, None] * taps * (recip[i] - inner)).reshape(1, s, *_along(d, len(taps)))
                place = self._conv_op(op, f"place{d}.{i}", back.repeat(c, 1, 1, 1), (1, 1), _along(d, pad, 0), c,
                                      relay_shape, out_shape, _along(d, dil))
                nxt = replace(nxt, terms=(*nxt.terms, replace(relay, ops=(place,))))
            step = dict(op.params, kernel_size=_along(d, ax.kernel), stride=_along(d, ax.stride),
                        padding=_along(d, ax.left, 0))
            probe_ops = (*probe_ops, replace(op, params=step, in_shape=cur.shape, out_shape=out_shape))
            cur = nxt
        return Value(cur.terms, cur.bias, tuple(op.out_shape), op.node, op.target)

    def _resampled(self, op: Op, v: Value) -> Value:
        """Upsampling (any per-channel spatial map with non-negative weights) of a (C, h, w) value: its weights
        change with the output position, so a first relay holds each pixel of the value as a channel (C·h·w
        neurons of shape 1×1; ± relays for a signed value), and a second one the upsampled value (C, H, W),
        reading the first through a convolution whose kernel is the output's size (output p reads its own
        weights of every pixel; all other taps read zero padding)."""
        (c, h, w), (big_h, big_w) = v.shape, op.out_shape[1:]
        m = spatial_matrix(op, (h, w), self.dtype)  # (H·W, h·w)
        macs = c * 4 * h * w * (big_h * big_w) ** 2  # per sample, of the second relay's convolution
        if macs > MAX_RELAY_MACS:
            raise error_at(op, f"{op.name} ({op.target}) from {h}×{w} to {big_h}×{big_w} on {c} channels: its exact "
                               f"lowering reads a relay through convolutions of {macs:,} multiply-adds per input, "
                               f"over the limit of {MAX_RELAY_MACS:,}; supported on smaller maps")
        if bool((m < 0).any()):
            raise error_at(op, f"{op.name} ({op.target}) has negative interpolation weights; nearest and bilinear "
                               "upsampling are supported")
        signs = torch.tensor([1.0] if v.spikes else [1.0, -1.0], dtype=self.dtype)
        s, hw = len(signs), h * w
        eye = torch.eye(hw, dtype=self.dtype).reshape(1, hw, 1, h, w) * signs.reshape(s, 1, 1, 1, 1)
        pix = self._conv_op(op, "pixels", eye.reshape(s * hw, 1, h, w).repeat(c, 1, 1, 1), (1, 1), (0, 0), c,
                            v.shape, (c * s * hw, 1, 1))
        depth = hw if v.spikes else hw * max((t.in_shape[0] for t in v.terms), default=1)
        first = self._relay(op, self._linear(pix, v), (pix,), f"{h}×{w} pixels as channels", v.node,
                            c * s * hw * depth * len(v.terms))
        kernel = m.T.reshape(hw, big_h, big_w).flip(1, 2)  # kernel of input pixel q: tap (H−1−i, W−1−j)
        mix = (signs[:, None] * signs[None, :]).reshape(s, s, 1, 1, 1) * kernel  # (sign out, sign in, q, H, W)
        spread = self._conv_op(op, "spread", mix.reshape(s, s * hw, big_h, big_w).repeat(c, 1, 1, 1), (1, 1),
                               (big_h - 1, big_w - 1), c, first.in_shape, (c * s, big_h, big_w))
        spikes = Value((first,), torch.zeros(first.in_shape, dtype=self.dtype), first.in_shape, "", spikes=True)
        expand = self._conv_op(op, "signs", signs.reshape(s, 1, 1, 1).repeat(c, 1, 1, 1), (1, 1), (0, 0), c,
                               op.out_shape, (c * s, big_h, big_w))
        second = self._relay(op, self._linear(spread, spikes), (expand,), f"upsampled to {big_h}×{big_w}", op.node,
                             c * s * s * hw * big_h * big_w)
        if s == 1:
            return Value((second,), torch.zeros(op.out_shape, dtype=self.dtype), tuple(op.out_shape), op.node,
                         op.target, spikes=True)
        combine = self._conv_op(op, "combine", signs.reshape(1, s, 1, 1).repeat(c, 1, 1, 1), (1, 1), (0, 0), c,
                                second.in_shape, op.out_shape)
        return Value((replace(second, ops=(combine,)),), torch.zeros(op.out_shape, dtype=self.dtype),
                     tuple(op.out_shape), op.node, op.target)


def _along(d: int, size: int, other: int = 1) -> tuple[int, int]:
    """(height, width) with `size` along axis d (0: height, 1: width) and `other` along the other one."""
    return (size, other) if d == 0 else (other, size)


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
