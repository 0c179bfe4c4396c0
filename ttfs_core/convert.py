"""`convert`: from a PyTorch ReLU network and calibration data to a `SpikingNetwork` (MATH §1–§5).

Steps: capture the model's ops (capture.py) → lower them into spiking layers, folding BatchNorm, the input
range and any linear glue into one weighted sum per layer → rescale (function preserving) → measure X_n on
calibration data → windows → neuron parameters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from .capture import SUPPORTED, Capture, Op, apply_op
from .errors import ConversionError
from .fold import (
    compose_affine,
    conv_fn,
    fold_chain_into_linear,
    fold_input_affine_into_conv,
    fold_output_affine,
    per_input_channel,
    per_output,
    rescale_factor,
)
from .mapping import alpha_parameters, b1_parameters, input_folding, row_sums, window_length
from .network import Layer, Probe, SpikingNetwork
from .simulate import Pool

NEURONS = ("alpha", "b1")
RESCALE = ("sum", "positive")  # the first is the default


def convert(
    model: nn.Module,
    calibration: Tensor | Iterable[Any],
    *,
    margin: float = 0.5,
    input_range: tuple[float, float] | None = None,
    neuron: str = "alpha",
    rescale: str = "sum",
    alpha: float = 1.0,
) -> SpikingNetwork:
    """Convert a trained feed-forward ReLU network into an exact single-spike TTFS network.

    `calibration` is a tensor of representative inputs (B, *input_shape) or an iterable of such batches (or of
    (inputs, labels) pairs). Windows are B_n = (1 + margin)·X_n (MATH §4); the input range [p, q] comes from the
    calibration data unless given. `neuron` is "alpha" (MATH §2) or "b1" (MATH §7).
    `rescale` is "sum" (the default, the paper's rule Σ_j W_ij < 1: windows stay of the order of the trained
    activations, and early spikes are ruled out by the fast certificate of `ttfs_core.certify`) or "positive"
    (Σ_j max(W_ij, 0) < 1: an early spike happens exactly when a pre-activation exceeds its window, so no
    certificate is needed, but every layer shrinks the time scale, geometrically with depth: an opt-in fast mode
    whose deep windows are far too short for hardware, jitter or teaching). B1 is never rescaled.
    The user's model is never modified. Raises ConversionError naming the offending node.
    """
    if neuron not in NEURONS:
        raise ConversionError(f"unknown neuron model {neuron!r}; supported: {', '.join(NEURONS)}")
    if rescale not in RESCALE:
        raise ConversionError(f"unknown rescaling {rescale!r}; supported: {', '.join(RESCALE)}")
    margin, alpha = _number("margin", margin), _number("alpha", alpha)
    if not -1 < margin < float("inf"):
        raise ConversionError(f"margin must be a finite number greater than -1 (windows B_n = (1 + margin)·X_n), "
                              f"got {margin}")
    if not 0 < alpha < float("inf"):
        raise ConversionError(f"alpha (the start current, MATH §2) must be a finite number > 0, got {alpha}")
    dtype = _model_dtype(model)
    batches = _batches(calibration, dtype)
    input_shape = tuple(batches[0].shape[1:])
    if input_range is None:
        p = min(float(b.min()) for b in batches)
        q = max(float(b.max()) for b in batches)
    else:
        try:
            p, q = (_number("input_range", v) for v in input_range)
        except (TypeError, ValueError):
            raise ConversionError(f"input_range must be two numbers (low, high), got {input_range!r}") from None
    if not (math.isfinite(p) and math.isfinite(q)):
        raise ConversionError(f"the input range [{p}, {q}] must be finite; give input_range=(low, high)")
    if not q > p:
        raise ConversionError(f"the input range [{p}, {q}] is empty; give input_range=(low, high) with low < high")
    capture = Capture(model, batches[0][:1])
    with torch.no_grad():
        layers = _Lowering(capture.ops, input_shape, (p, q), dtype).run()
        hidden, output = layers[:-1], layers[-1]
        if neuron == "alpha":
            _rescale(layers, rescale)
        snn = SpikingNetwork(hidden, output, input_shape, (p, q), neuron, margin, rescale, alpha, dtype)
        _calibrate(snn, batches, margin)
        _neuron_parameters(snn)
        _check_finite(snn)
    return snn


def _number(name: str, value: Any) -> float:
    """A real number given as a Python or NumPy number or a one-element tensor (not a bool or a string)."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_complex():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise ConversionError(f"{name} must be a real number, got {value!r}")
    if isinstance(value, complex):
        raise ConversionError(f"{name} must be a real number, got {value!r}")
    return float(value)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype conversion works in: the model's floating-point parameters' (float32 if it has none). Integer,
    boolean or complex weights would be cast silently, so they are refused by name."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_complex() or (not t.is_floating_point() and "num_batches_tracked" not in name):
            raise ConversionError(f"{name} holds {_dtype_name(t.dtype)} values; the converter takes "
                                  "float16, bfloat16, float32 or float64 weights")
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _batches(calibration: Any, dtype: torch.dtype) -> list[Tensor]:
    if isinstance(calibration, Tensor):
        items = [calibration]
    else:
        try:
            items = [b[0] if isinstance(b, (tuple, list)) else b for b in calibration]
        except TypeError:
            raise ConversionError(
                f"calibration must be a tensor or an iterable of batches, got {type(calibration).__name__}"
            ) from None
    items = [b for b in items if isinstance(b, Tensor) and b.numel() > 0]
    if not items:
        raise ConversionError("calibration data is empty; give representative inputs (a tensor or batches)")
    shapes = {tuple(b.shape[1:]) for b in items}
    if len(shapes) != 1:
        raise ConversionError(f"calibration batches have different input shapes: {sorted(shapes)}")
    items = [b.detach().to(dtype) for b in items]
    if not all(torch.isfinite(b).all() for b in items):
        raise ConversionError("calibration data contains NaN or inf values")
    return items


# ---------------------------------------------------------------------------------------------------------
@dataclass
class _Segment:
    """Ops between two ReLUs: route (pools on the source) → pre (linear glue) → main → post (before ReLU)."""

    source: int
    src_shape: tuple[int, ...]
    route: list[Pool] = field(default_factory=list)
    pre: list[Op] = field(default_factory=list)
    main: Op | None = None
    post: list[Op] = field(default_factory=list)


def _affine_op(name: str, scale: Tensor, shift: Tensor, shape: tuple[int, ...]) -> Op:
    return Op(name, name, "affine", "input range", shape, shape, {"scale": scale, "shift": shift})


class _Lowering:
    """Turns the op chain into layers; each ReLU closes one spiking layer (MATH §5)."""

    def __init__(self, ops: list[Op], input_shape: tuple[int, ...], input_range: tuple[float, float], dtype):
        self.ops = ops
        self.dtype = dtype
        self.layers: list[Layer] = []
        channels = input_shape[0] if len(input_shape) >= 2 else 1
        scale, shift = input_folding(*input_range)
        per = (channels,) if len(input_shape) >= 2 else input_shape
        self.seg = _Segment(-1, input_shape)
        self.seg.pre.append(_affine_op("input", torch.full(per, scale, dtype=dtype),
                                       torch.full(per, shift, dtype=dtype), input_shape))

    def run(self) -> list[Layer]:
        for op in self.ops:
            getattr(self, f"_on_{op.kind}")(op)
        seg = self.seg
        if seg.main is None:
            raise ConversionError(
                "the network must end with a Linear or Conv2d layer without ReLU (the readout); "
                f"it ends with {self.ops[-1].name if self.ops else 'its input'}"
            )
        for op in seg.post:
            if op.kind not in ("affine", "reshape", "maxpool", "avgpool", "adaptive_avgpool", "identity"):
                raise ConversionError(f"{op.name} ({op.target}) after the readout is not supported")
        self._close(output=True)
        return self.layers

    # --- op handlers ---------------------------------------------------------------------------------
    def _on_identity(self, op: Op) -> None:
        pass

    def _on_affine(self, op: Op) -> None:
        (self.seg.post if self.seg.main else self.seg.pre).append(op)

    _on_reshape = _on_affine
    _on_avgpool = _on_affine
    _on_adaptive_avgpool = _on_affine

    def _on_maxpool(self, op: Op) -> None:
        seg = self.seg
        if seg.main is not None:
            seg.post.append(op)
            return
        pool = Pool.of(op.params)
        for prior in reversed(seg.pre):  # move the pool up to the spikes, across per-channel affines
            if prior.kind == "affine":
                pool = pool.flipped(prior.params["scale"])
            elif prior.kind != "identity":
                raise ConversionError(
                    f"max pooling {op.name} after {prior.name} ({prior.target}) is not supported; "
                    "pool right after a ReLU, a BatchNorm or a convolution"
                )
        seg.route.append(pool)

    def _on_conv(self, op: Op) -> None:
        seg = self.seg
        if seg.main is not None:
            raise ConversionError(
                f"{op.name} ({op.target}) follows {seg.main.name} without a ReLU between them; two linear layers "
                "in a row are supported only when the second is a Linear"
            )
        if any(p.kind in ("avgpool", "adaptive_avgpool") for p in seg.pre):
            self._promote_avgpool()
        seg = self.seg
        seg.main = op

    def _on_linear(self, op: Op) -> None:
        seg = self.seg
        if len(op.in_shape) != 1:
            raise ConversionError(
                f"{op.name} ({op.target}) is applied to a {len(op.in_shape) + 1}-d tensor; Linear layers are "
                "supported on flattened inputs"
            )
        if seg.main is not None:  # linear glue without ReLU: fold it into this layer (W2 W1 x + ...)
            for prior in seg.post:
                if prior.kind == "maxpool":
                    raise ConversionError(f"max pooling {prior.name} between linear layers without ReLU: unsupported")
            seg.pre.extend([seg.main, *seg.post])
            seg.post = []
        seg.main = op

    def _on_relu(self, op: Op) -> None:
        seg = self.seg
        if seg.main is None:
            if not seg.pre or all(p.kind == "identity" for p in seg.pre):
                if seg.source >= 0:
                    return  # ReLU of spikes (or of max-pooled spikes): the identity
            if any(p.kind in ("avgpool", "adaptive_avgpool") for p in seg.pre):
                self._promote_avgpool()
                if all(p.kind == "identity" for p in self.seg.pre):
                    return  # the pooled layer is non-negative: this ReLU is its identity
            self._diagonal_main(op)
        self._close(output=False, relu=op)

    # --- building layers -------------------------------------------------------------------------------
    def _diagonal_main(self, relu: Op) -> None:
        """A ReLU straight after per-channel glue (e.g. on the input): a 1×1 depthwise layer carries it."""
        seg = self.seg
        shape = relu.in_shape
        if len(shape) == 3:
            c = shape[0]
            w = torch.ones(c, 1, 1, 1, dtype=self.dtype)
            params = {"weight": w, "bias": torch.zeros(c, dtype=self.dtype), "stride": (1, 1), "padding": (0, 0),
                      "dilation": (1, 1), "groups": c}
            seg.main = Op(relu.name, relu.node, "conv", "ReLU", shape, shape, params)
        elif len(shape) == 1:
            params = {"weight": torch.eye(shape[0], dtype=self.dtype), "bias": torch.zeros(shape[0], dtype=self.dtype)}
            seg.main = Op(relu.name, relu.node, "linear", "ReLU", shape, shape, params)
        else:
            raise ConversionError(f"ReLU {relu.name} on a {len(shape) + 1}-d tensor is not supported")

    def _promote_avgpool(self) -> None:
        """Average pooling of non-negative activations read by a conv becomes its own spiking layer with fixed
        weights 1/k² (MATH §5); its ReLU is the identity. Per-channel affines before it (BatchNorm after the
        ReLU, the input range) commute with unpadded averaging and move after it."""
        seg = self.seg
        k = next(i for i, p in enumerate(seg.pre) if p.kind in ("avgpool", "adaptive_avgpool"))
        pool = seg.pre[k]
        before, after = seg.pre[:k], seg.pre[k + 1:]
        if any(p.kind not in ("affine", "identity") for p in before):
            bad = next(p for p in before if p.kind not in ("affine", "identity"))
            raise ConversionError(f"average pooling {pool.name} after {bad.name} ({bad.target}) is not supported")
        moved = [p for p in before if p.kind == "affine"]
        c, h, w = pool.in_shape
        if pool.kind == "adaptive_avgpool":
            out = pool.out_shape[1:]
            if h % out[0] or w % out[1]:
                raise ConversionError(
                    f"adaptive average pooling {pool.name} from {h}×{w} to {out[0]}×{out[1]} is not a plain pooling; "
                    "supported when Linear layers read it, or when the sizes divide"
                )
            ks, st, pad = (h // out[0], w // out[1]), (h // out[0], w // out[1]), (0, 0)
        else:
            pr = pool.params
            if pr["ceil_mode"] or pr["divisor_override"] or (not pr["count_include_pad"] and any(pr["padding"])):
                raise ConversionError(f"average pooling {pool.name}: ceil_mode, divisor_override and "
                                      "count_include_pad=False with padding are not supported before a convolution")
            ks, st, pad = pr["kernel_size"], pr["stride"], pr["padding"]
        if moved and any(pad):
            raise ConversionError(f"BatchNorm before the padded average pooling {pool.name} is not supported")
        weight = torch.full((c, 1, *ks), 1.0 / (ks[0] * ks[1]), dtype=self.dtype)
        params = {"weight": weight, "bias": torch.zeros(c, dtype=self.dtype), "stride": st, "padding": pad,
                  "dilation": (1, 1), "groups": c}
        probe = Probe(pool.node)
        if moved:  # the ANN pools affine(x); this layer pools x: invert the affine to compare
            kappa, shift = _composed_affine(moved, self.dtype)
            probe = Probe(pool.node, 1.0 / kappa, -shift / kappa)
        rest_main, rest_post = seg.main, seg.post
        seg.pre, seg.post = [], []
        seg.main = Op(pool.name, pool.node, "conv", pool.target, pool.in_shape, pool.out_shape, params)
        self._close(output=False, probe=probe)
        self.seg.pre = [*moved, *after]
        self.seg.main, self.seg.post = rest_main, rest_post

    def _close(self, output: bool, relu: Op | None = None, probe: Probe | None = None) -> None:
        seg = self.seg
        main = seg.main
        assert main is not None
        p = main.params
        weight, bias = p["weight"].to(self.dtype), p["bias"].to(self.dtype)
        route_shape = _route_shape(seg.route, seg.src_shape, self.dtype)
        conv = None
        if main.kind == "conv":
            conv = {"stride": p["stride"], "padding": p["padding"], "dilation": p["dilation"], "groups": p["groups"]}
            for prior in seg.pre:
                no_op = prior.kind == "reshape" and tuple(prior.out_shape) == tuple(prior.in_shape)
                if prior.kind not in ("affine", "identity") and not no_op:
                    raise ConversionError(
                        f"{prior.name} ({prior.target}) before the convolution {main.name} is not supported: "
                        f"between a ReLU and a convolution only BatchNorm and max pooling can stand. Supported: "
                        f"{SUPPORTED}"
                    )
            affine = _composed_affine(seg.pre, self.dtype)
            if affine is not None:
                weight, bias = fold_input_affine_into_conv(weight, bias, affine, route_shape, conv_fn(**conv))
                if not any(conv["padding"]):  # no border: the bias map is constant per channel
                    bias = bias[:, :1, :1].clone()
            if bias.dim() == 1:
                bias = bias.reshape(-1, 1, 1)
        else:
            if seg.pre:
                weight, bias = fold_chain_into_linear(weight, bias, _chain(seg.pre, self.dtype), route_shape)
            elif len(route_shape) != 1:
                raise ConversionError(f"{main.name} reads a {len(route_shape)}-d tensor; flatten it first")
        carried: list[Pool] = []
        probe_scale = None
        probe_node = relu.node if relu else main.node
        readout = []
        last_node = main.node
        for op in seg.post:
            if output:
                readout.append(op)
                continue
            if op.kind == "affine":
                pair = _composed_affine([op], self.dtype)
                weight, bias = fold_output_affine(weight, bias, pair)
                if carried:
                    carried = [c.flipped(pair[0]) for c in carried]
                    probe_scale = pair if probe_scale is None else compose_affine(probe_scale, pair)
            elif op.kind == "maxpool":
                if not carried:
                    probe_node = last_node
                carried.append(Pool.of(op.params))
            elif op.kind == "identity":
                pass
            else:
                raise ConversionError(
                    f"{op.name} ({op.target}) between {main.name} and its ReLU is not supported; "
                    "only BatchNorm and max pooling can stand there"
                )
            last_node = op.node
        if probe is None:
            if carried:
                scale, shift = probe_scale if probe_scale else (None, None)
                probe = Probe(probe_node, scale, shift, relu=True)
            else:
                probe = Probe(probe_node, relu=False)
        shape = tuple(main.out_shape)
        scale_init = torch.ones((shape[0], 1, 1) if conv else shape, dtype=self.dtype)
        layer = Layer(
            name=relu.name if (relu and main.target == "ReLU") else main.name,
            op=main.target, source=seg.source, route=tuple(seg.route), in_shape=route_shape, shape=shape,
            weight=weight.contiguous(), bias=bias.contiguous(), conv=conv, probe=probe, scale=scale_init,
            is_output=output, readout=tuple(readout),
        )
        self.layers.append(layer)
        self.seg = _Segment(len(self.layers) - 1, shape, route=carried)


def _composed_affine(ops: list[Op], dtype) -> tuple[Tensor, Tensor] | None:
    """The per-channel affine maps among `ops` (BatchNorm, input range), composed in order; None if there are none."""
    affine = None
    for op in ops:
        if op.kind == "affine":
            pair = (op.params["scale"].to(dtype), op.params["shift"].to(dtype))
            affine = pair if affine is None else compose_affine(affine, pair)
    return affine


def _route_shape(route: list[Pool], shape: tuple[int, ...], dtype) -> tuple[int, ...]:
    x = torch.zeros(1, *shape, dtype=dtype)
    for pool in route:
        x = pool.activations(x)
    return tuple(x.shape[1:])


def _chain(ops: list[Op], dtype):
    """The affine function of a list of glue ops (BatchNorm, pooling, reshape, linear, conv), on activations."""
    fns = [partial(apply_op, op) for op in ops]

    def apply(x: Tensor) -> Tensor:
        for fn in fns:
            x = fn(x)
        return x

    return apply


# ---------------------------------------------------------------------------------------------------------
def _rescale(layers: list[Layer], mode: str) -> None:
    """Function-preserving rescaling (MATH §2): scale each hidden neuron's incoming weights and bias by c and
    the weights that read it by 1/c, so that Σ_j max(W_ij, 0) < 1 (or Σ_j W_ij < 1)."""
    for n, layer in enumerate(layers[:-1]):
        c = rescale_factor(layer.weight, mode)
        if bool((c == 1).all()):
            continue
        layer.weight = layer.weight * per_output(c, layer.weight)
        layer.bias = layer.bias * c.reshape(-1, *([1] * (layer.bias.dim() - 1)))
        layer.scale = layer.scale * c.reshape(layer.scale.shape[0], *([1] * (layer.scale.dim() - 1)))
        for reader in layers[n + 1:]:
            if reader.source != n:
                continue
            if reader.conv is not None:
                reader.weight = reader.weight / per_input_channel(reader.weight, c, reader.conv["groups"])
            else:
                cols = c.reshape(-1, *([1] * (len(reader.in_shape) - 1))).expand(reader.in_shape).reshape(-1)
                reader.weight = reader.weight / cols[None, :]


def _calibrate(snn: SpikingNetwork, batches: list[Tensor], margin: float) -> None:
    """X_n over the calibration data, then consecutive windows (MATH §4): input [0, 1], B_n = (1 + ζ)·X_n."""
    maxima = torch.zeros(len(snn.layers), dtype=torch.float64)
    for batch in batches:
        for chunk in snn._chunks(batch):
            acts, _ = snn.ann_forward(chunk)
            for i, a in enumerate(acts):
                if not bool(torch.isfinite(a).all()):
                    raise ConversionError(f"layer {snn.layers[i].name}: its activations on the calibration data "
                                          f"overflow {_dtype_name(snn.dtype)} (NaN or inf); the weights "
                                          "are too large for this dtype")
                maxima[i] = max(float(maxima[i]), float(a.max()) if a.numel() else 0.0)
    t_min = 1.0
    starts, windows = [0.0], [1.0]  # the input layer's window is [0, 1]
    for layer, x_max in zip(snn.layers, maxima.tolist()):
        layer.max_activation = x_max
        layer.start, layer.in_window = starts[layer.source + 1], windows[layer.source + 1]
        layer.window = window_length(x_max, margin)
        layer.t_min = t_min
        layer.t_max = t_min + layer.window
        starts.append(layer.t_min)
        windows.append(layer.window)
        t_min = layer.t_max
    out = snn.output
    out.start, out.in_window = starts[out.source + 1], windows[out.source + 1]
    out.t_min = out.t_max = t_min
    out.window = 0.0


def _check_finite(snn: SpikingNetwork) -> None:
    """Weights so large that folding, rescaling or the neuron parameters overflow the dtype would give NaN or inf
    spike times; refuse them here, naming the layer, instead of simulating garbage."""
    for layer in snn.all_layers:
        if not math.isfinite(layer.window) or not math.isfinite(layer.t_max):
            raise ConversionError(f"layer {layer.name}: its window is not finite (activations overflow "
                                  f"{_dtype_name(snn.dtype)}); the weights are too large")
        for what in ("weight", "bias", "J", "theta", "slope"):
            value = getattr(layer, what)
            if value is not None and not bool(torch.isfinite(value).all()):
                raise ConversionError(f"layer {layer.name}: its {what} overflows {_dtype_name(snn.dtype)}"
                                      " after folding and rescaling (NaN or inf); the weights are too large for this "
                                      "dtype — convert a float64 copy or rescale the model")


def _neuron_parameters(snn: SpikingNetwork) -> None:
    for layer in snn.layers:
        if layer.source >= 0 and snn.layers[layer.source].t_max != layer.t_min:
            raise ConversionError(f"{layer.name}: its input window does not end where its own window starts")
        if snn.neuron == "alpha":
            layer.J, layer.theta, layer.slope = alpha_parameters(
                layer.weight, layer.bias, row_sums(layer.weight), layer.in_window, layer.window, snn.alpha
            )
        else:
            layer.J, layer.theta, layer.slope = b1_parameters(layer.weight, layer.bias, layer.window)
