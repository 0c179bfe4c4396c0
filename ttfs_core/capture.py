"""Capture a PyTorch model as a list of normalised ops, in data-flow order.

Modules (`nn.Conv2d`...), functionals (`F.relu`, `torch.flatten`...), tensor methods (`x.view`) and the aten ops of
a `torch.export` program all map to one small vocabulary (`Op.kind`), through the tables of `ttfs_core.vocabulary`.
What is not in a table raises `ConversionError` naming the node. A model that `torch.fx` cannot trace (Python control
flow on shapes) is captured with `torch.export` instead, and its ops say so (`Op.note`).
"""

from __future__ import annotations

import operator
import warnings
from dataclasses import replace
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.shape_prop import ShapeProp

from .errors import ConversionError
from .fold import batchnorm_scale_shift
from .ops import Op, apply_op  # noqa: F401 - apply_op: re-exported (network)
from .vocabulary import (  # noqa: F401 - FUNCTIONS, METHODS, MODULES: re-exported (the explorer's inspector)
    FUNCTIONS,
    METHOD_ARGS,
    METHODS,
    MODULES,
    SUPPORTED,
    UPSAMPLE_MODES,
)


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[-1])) if len(v) in (1, 2) else (int(v[0]), int(v[1]))
    return int(v), int(v)


def _pair_float(v: Any) -> tuple[float, float]:
    if isinstance(v, (list, tuple)):
        return (float(v[0]), float(v[-1]))
    return float(v), float(v)


def _sliced(in_shape: tuple[int, ...], ranges: dict[int, tuple[int, int]]) -> tuple[str, dict[str, Any]]:
    """A contiguous slice along per-sample dimensions: of channels (or features), a "slice"; of height and width
    of a (C, H, W) value, a crop ("pad" by negative amounts)."""
    if list(ranges) == [0] or len(in_shape) != 3:
        ((d, (lo, hi)),) = ranges.items()
        return "slice", {"dim": d, "start": lo, "stop": hi}
    (top, bottom), (left, right) = (ranges.get(d, (0, in_shape[d])) for d in (1, 2))
    return "pad", {"pad": (-left, right - in_shape[2], -top, bottom - in_shape[1])}


def _pool_stride(stride: Any, kernel: tuple[int, int]) -> tuple[int, int]:
    """A pooling stride; None or [] (the aten default) means the kernel size."""
    return kernel if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0) else _pair(stride)


def _bind(names: tuple[str, ...], defaults: dict[str, Any], node: fx.Node) -> dict[str, Any]:
    bound = dict(defaults)
    for name, value in zip(names, node.args):
        bound[name] = value
    bound.update(node.kwargs)
    return bound


def describe(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(gm.get_submodule(node.target)).__name__})"
    if node.op == "call_method":
        return f"{node.name} (tensor method .{node.target})"
    target = getattr(node.target, "__name__", str(node.target))
    module = getattr(node.target, "__module__", "") or ""
    where = ""
    stack = node.meta.get("nn_module_stack")  # exported and traced graphs remember the calling module
    if stack:
        path, cls = list(stack.values())[-1]
        cls = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
        if path:
            where = f", in module {str(path).removeprefix('L__self__').strip('._') or path!r} ({cls.split('.')[-1]})"
    return f"{node.name} ({module + '.' if module else ''}{target}{where})"


class Capture:
    """Trace a model and list its data-path ops in order."""

    def __init__(self, model: nn.Module, example: torch.Tensor):
        if not isinstance(model, nn.Module):
            raise ConversionError(f"expected a torch.nn.Module, got {type(model).__name__}")
        if isinstance(model, fx.GraphModule):  # only called submodules matter (exported graphs hold attributes)
            called = {str(n.target) for n in model.graph.nodes if n.op == "call_module"}
            training = [n for n, m in model.named_modules() if n in called and m.training
                        and isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd))]
        else:
            training = [n or type(model).__name__ for n, m in model.named_modules() if m.training]
        if training:
            raise ConversionError(
                f"the model is in training mode (module {training[0]!r}); call model.eval() before converting"
            )
        for kind, items in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
            for name, t in items:
                if t.is_floating_point() and t.numel() and not torch.isfinite(t.abs().amax()):
                    raise ConversionError(f"{kind} {name!r} contains NaN or inf values; weights must be finite")
        self.note = ""  # how the model was captured, when not by torch.fx (`Op.note` of the first op)
        if isinstance(model, fx.GraphModule):
            self.gm = model
        else:
            try:
                self.gm = fx.symbolic_trace(model)
            except Exception as exc:  # noqa: BLE001 - captured with torch.export instead, and said so
                self.gm, self.note = _exported(model, example, exc)
        try:
            ShapeProp(self.gm).propagate(example)
        except Exception as exc:  # noqa: BLE001
            hint = " (export the program with a dynamic batch dimension)" if "Guard" in str(exc) else ""
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConversionError(
                f"running the model on an input of shape {tuple(example.shape)} failed{hint}: {first}"
            ) from None
        self.ops = self._walk()

    def _walk(self) -> list[Op]:
        """The data-path ops in graph (topological) order; each names the ops it reads (`Op.inputs`)."""
        graph = self.gm.graph
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise ConversionError(f"the model must take one input tensor; its forward takes {len(placeholders)}")
        data: dict[fx.Node, str] = {placeholders[0]: ""}  # node -> name of the op carrying its value ("": input)
        parts: dict[fx.Node, tuple[str, int, list[tuple[int, int]]]] = {}  # chunk/split -> (source, dim, ranges)
        ops: list[Op] = []
        self.output = ""
        for node in graph.nodes:
            try:
                if self._visit(node, data, parts, ops):
                    break
            except ConversionError as exc:
                if exc.node is None:
                    exc.node = node.name
                raise
        if self.note and ops:
            ops[0] = replace(ops[0], note=self.note)
        return ops

    def _visit(self, node: fx.Node, data: dict, parts: dict, ops: list[Op]) -> bool:
        """Capture one fx node into `ops`; True at the output node."""
        if node.op in ("placeholder", "get_attr"):
            return False
        if node.op == "output":
            out = node.args[0]
            while isinstance(out, (tuple, list)) and len(out) == 1:
                out = out[0]
            if not isinstance(out, fx.Node) or out not in data:
                raise ConversionError("the model must return a single tensor (the logits)")
            self.output = data[out]
            return True
        inputs = [a for a in node.all_input_nodes if a in data or a in parts]
        if not inputs:
            return False  # shape arithmetic, guards, constants: not on the data path
        meta = node.meta.get("tensor_meta")
        if node.op == "call_function" and node.target is operator.getitem and inputs[0] in parts:
            source, dim, ranges = parts[inputs[0]]
            lo, hi = ranges[int(node.args[1])]
            op = Op(node.name, node.name, "slice", "chunk", self._shape(inputs[0].args[0]), self._shape(node),
                    {"dim": dim, "start": lo, "stop": hi}, (source,))
            data[node] = node.name
            ops.append(op)
            return False
        if not hasattr(meta, "shape") and not isinstance(meta, (tuple, list)):
            return False  # consumes the data but yields no tensor (e.g. x.size(0), export guards)
        kind = self._kind(node)
        if kind in ("chunk", "split"):
            parts[node] = self._parts(node, data)
            return False
        op = self._normalise(node, data)
        if op is None:  # getitem(x, 0) of a tuple-valued op: same value
            data[node] = data[inputs[0]]
            return False
        data[node] = node.name
        ops.append(op)
        return False

    def _kind(self, node: fx.Node) -> str | None:
        if node.op == "call_module":
            return MODULES.get(type(self.gm.get_submodule(node.target)))
        if node.op == "call_method":
            return METHODS.get(str(node.target))
        entry = FUNCTIONS.get(node.target)
        return entry[0] if entry else None

    def _data_args(self, node: fx.Node, data: dict) -> list[str]:
        """The data inputs of `node` in argument order (an input used twice is listed twice)."""
        found: list[str] = []

        def visit(a: Any) -> None:
            if isinstance(a, fx.Node):
                if a in data:
                    found.append(data[a])
            elif isinstance(a, (list, tuple)):
                for b in a:
                    visit(b)

        visit(node.args)
        visit(tuple(node.kwargs.values()))
        return found

    def _sample_dim(self, dim: Any, rank: int, desc: str) -> int:
        """A tensor dimension (batch first, may be negative) as a per-sample dimension."""
        d = int(dim) + (rank + 1 if int(dim) < 0 else 0)
        if d == 0:
            raise ConversionError(f"{desc}: it works across the batch dimension; only per-sample ops are supported")
        return d - 1

    def _parts(self, node: fx.Node, data: dict) -> tuple[str, int, list[tuple[int, int]]]:
        desc = describe(node, self.gm)
        src = next(a for a in node.all_input_nodes if a in data)
        if node.op == "call_method":
            names, defaults = METHOD_ARGS[str(node.target)]
            a = _bind(("input", *names), defaults, node)
        else:
            _, names, defaults = FUNCTIONS[node.target]
            a = _bind(names, defaults, node)
        rank = len(self._shape(src))
        dim = self._sample_dim(a["dim"], rank, desc)
        metas = node.meta.get("tensor_meta")
        sizes = [int(m.shape[dim + 1]) for m in metas]
        bounds = [0]
        for size in sizes:
            bounds.append(bounds[-1] + size)
        return data[src], dim, list(zip(bounds[:-1], bounds[1:]))

    def _shape(self, node: fx.Node) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        if not hasattr(meta, "shape"):
            meta = meta[0]
        return tuple(int(s) for s in meta.shape[1:])

    def _normalise(self, node: fx.Node, data: dict) -> Op | None:
        desc = describe(node, self.gm)
        inputs = tuple(self._data_args(node, data))
        src = next(a for a in node.all_input_nodes if a in data)
        in_shape = self._shape(src)
        out_shape = self._shape(node)
        if node.op == "call_module":
            mod = self.gm.get_submodule(node.target)
            kind = MODULES.get(type(mod))
            if kind is None:
                raise ConversionError(f"unsupported layer {desc}: it is not a ReLU-family operation. Supported: "
                                      f"{SUPPORTED}")
            name, target = str(node.target), type(mod).__name__
            p = self._module_params(kind, mod, desc)
        elif node.op == "call_method":
            kind = METHODS.get(str(node.target))
            if kind is None:
                raise ConversionError(f"unsupported tensor method {desc}. Supported: {SUPPORTED}")
            name, target = node.name, f".{node.target}()"
            names, defaults = METHOD_ARGS.get(str(node.target), ((), {}))
            p = self._function_params(kind, _bind(("input", *names), defaults, node), desc, node, len(in_shape))
        else:
            entry = FUNCTIONS.get(node.target)
            if entry is None:
                raise ConversionError(f"unsupported function {desc}: it is not a ReLU-family operation. Supported: "
                                      f"{SUPPORTED}")
            kind, names, defaults = entry
            name, target = node.name, getattr(node.target, "__name__", str(node.target))
            if kind == "getitem":
                return self._getitem(node, desc, src, inputs, in_shape, out_shape)
            p = self._function_params(kind, _bind(names, defaults, node), desc, node, len(in_shape))
        if kind == "dropout":
            if p.get("training") or p.get("train"):
                raise ConversionError(f"{desc}: dropout is active (training=True) in forward(); pass "
                                      "training=self.training or use nn.Dropout")
            kind = "identity"
        if kind == "batchnorm":
            kind = "affine"
        if kind == "hardtanh":
            if float(p["min_val"]) != 0.0 or not float(p["max_val"]) > 0:
                raise ConversionError(f"{desc}: hardtanh({p['min_val']}, {p['max_val']}) is not a clipped ReLU; "
                                      "supported: hardtanh(0, c) with c > 0 and ReLU6")
            kind, p = "relu6", {"max": float(p["max_val"])}
        if kind == "relu6" and "max" not in p:
            p = {"max": 6.0}
        if kind in ("upsample", "pad"):
            kind, p = self._spatial(kind, p, desc, in_shape, out_shape)
        if kind in ("add", "sub", "mul", "div"):
            kind, p, inputs = self._arithmetic(kind, p, desc, node, data, inputs, out_shape)
        if kind == "transpose":
            kind = "permute"
        if kind == "narrow":
            if p.get("whole_batch"):
                kind, p = "identity", {}
            else:
                lo, hi, _ = slice(p["start"], p["stop"]).indices(in_shape[p["dim"]])
                kind, p = _sliced(in_shape, {p["dim"]: (lo, max(lo, hi))})
        if kind not in ("add", "cat") and len(inputs) != 1:
            raise ConversionError(f"{desc}: an op with several data inputs is not supported. Supported: {SUPPORTED}")
        return Op(name, node.name, kind, target, in_shape, out_shape, p, inputs)

    def _getitem(self, node, desc, src, inputs, in_shape, out_shape) -> Op | None:
        index = node.args[1]
        if not hasattr(src.meta.get("tensor_meta"), "shape"):  # a tuple-valued op (max pool with indices)
            if index != 0:
                raise ConversionError(f"{desc}: only element 0 of a tuple-valued op can be used")
            return None
        index = index if isinstance(index, tuple) else (index,)
        if Ellipsis in index:
            k = index.index(Ellipsis)
            index = (*index[:k], *([slice(None)] * (len(in_shape) + 2 - len(index))), *index[k + 1:])
        narrowed = [(d, i) for d, i in enumerate(index) if not (isinstance(i, slice) and i == slice(None))]
        ranges = {}
        for d, sl in narrowed:
            if d == 0 or not isinstance(sl, slice) or sl.step not in (None, 1):
                break
            lo, hi, _ = sl.indices(in_shape[d - 1])
            ranges[d - 1] = (lo, max(lo, hi))
        else:
            if ranges and (len(ranges) == 1 or 0 not in ranges):
                kind, p = _sliced(in_shape, ranges)
                return Op(node.name, node.name, kind, "[...]", in_shape, out_shape, p, inputs)
        raise ConversionError(f"{desc}: indexing {index!r} is not supported; a contiguous slice of channels, or "
                              "of height and width (a crop), is")

    def _arithmetic(self, kind, p, desc, node, data, inputs, shape):
        """x + y, x + c, c·x, x / c: linear in the data (c a number, or a stored tensor: a per-channel factor or
        any offset that broadcasts to the value). Two activations multiplied together are not."""
        operands = [p.get("input", node.args[0]), p.get("other")]
        consts = [a for a in operands if not (isinstance(a, fx.Node) and a in data)]
        if kind in ("mul", "div"):
            if len(inputs) != 1:
                raise ConversionError(f"{desc}: it multiplies two activations, which is not a ReLU-family "
                                      f"operation (gates and attention cannot be converted). Supported: {SUPPORTED}")
            c = self._constant(consts[0], desc, shape)
            numerator_is_data = isinstance(operands[0], fx.Node) and operands[0] in data
            if kind == "div" and (not numerator_is_data or bool((torch.as_tensor(c) == 0).any())):
                raise ConversionError(f"{desc}: only division of an activation by a non-zero constant is supported")
            c = 1.0 / c if kind == "div" else c
            if not isinstance(c, torch.Tensor):
                return "mul", {"factor": c}, inputs
            first = c[(slice(None), *([0] * (c.dim() - 1)))].reshape(-1, *([1] * (c.dim() - 1)))
            if not bool((c == first).all()):
                raise ConversionError(f"{desc}: it multiplies by a tensor of shape {tuple(c.shape)} whose values "
                                      "change with the position; a factor per channel (shape "
                                      f"({shape[0]}, {', '.join('1' * (len(shape) - 1))})) or a number is supported")
            scale = first.reshape(-1).expand(shape[0]).clone()
            return "affine", {"scale": scale, "shift": torch.zeros_like(scale)}, inputs
        alpha = float(p.get("alpha", 1)) * (-1.0 if kind == "sub" else 1.0)
        if len(inputs) == 2:
            return "add", {"sign": 1.0, "alpha": alpha, "constant": 0.0}, inputs
        first_is_data = isinstance(operands[0], fx.Node) and operands[0] in data
        c = self._constant(consts[0], desc, shape)
        if first_is_data:  # x ± c
            return "add", {"sign": 1.0, "alpha": 1.0, "constant": alpha * c}, inputs
        return "add", {"sign": alpha, "alpha": 1.0, "constant": c}, inputs  # c ± x

    def _spatial(self, kind: str, a: dict[str, Any], desc: str, in_shape, out_shape) -> tuple[str, dict[str, Any]]:
        """Upsampling and padding as ops of their own ("upsample", "pad"), or as a channel placement or slice
        (padding or cropping channels or features), or an adaptive average pooling (interpolation mode 'area')."""
        if kind == "pad":
            mode, value = a.get("mode") or "constant", a.get("value")
            if mode != "constant" or (value is not None and float(value) != 0.0):
                what = f"{mode} padding" if mode != "constant" else f"padding with the constant {value}"
                raise ConversionError(f"{desc}: {what} is not supported; zero padding and cropping are "
                                      "(nn.ZeroPad2d, F.pad with mode='constant' and value 0)")
            pad = [int(v) for v in a["pad"]]
            pairs = [(pad[k], pad[k + 1]) for k in range(0, len(pad) - 1, 2)]  # last dimension first
            if len(pad) % 2 or len(pairs) > len(in_shape) or not pairs:
                raise ConversionError(f"{desc}: a pad of {pad} does not fit a value of shape {in_shape} per sample")
            padded = [len(in_shape) - 1 - k for k, pair in enumerate(pairs) if pair != (0, 0)]
            if len(in_shape) == 3 and 0 not in padded:
                (wl, wr), (ht, hb) = pairs[0], pairs[1] if len(pairs) > 1 else (0, 0)
                return "pad", {"pad": (wl, wr, ht, hb)}
            if padded == [0]:  # channels (or features): a placement among zeros, or a slice
                lo, hi = pairs[len(in_shape) - 1]
                if lo >= 0 and hi >= 0:
                    return "place", {"dim": 0, "offset": lo, "total": in_shape[0] + lo + hi}
                if lo <= 0 and hi <= 0:
                    return "slice", {"dim": 0, "start": -lo, "stop": in_shape[0] + hi}
            raise ConversionError(f"{desc}: a pad of {pad} on a value of shape {in_shape} is not supported; zero "
                                  "padding or cropping of height and width, or of channels alone, is")
        if a.get("antialias"):
            raise ConversionError(f"{desc}: anti-aliased interpolation is not supported; {UPSAMPLE_MODES} are")
        if len(in_shape) != 3:
            raise ConversionError(f"{desc}: interpolation of a {len(in_shape) + 1}-d tensor is not supported; 2-d "
                                  f"upsampling of (N, C, H, W) values ({', '.join(UPSAMPLE_MODES)}) is")
        mode = a.get("mode", "nearest")
        if mode == "area":
            return "adaptive_avgpool", {"output_size": tuple(out_shape[1:])}
        if mode not in UPSAMPLE_MODES:
            raise ConversionError(f"{desc}: interpolation mode {mode!r} is not supported; {', '.join(UPSAMPLE_MODES)}"
                                  " are (and 'area', an adaptive average pooling)")
        if "scales_h" in a:
            scales = (a["scales_h"], a["scales_w"])
        else:
            factor = a.get("scale_factor", a.get("scale_factors"))
            scales = None if factor is None or a.get("recompute_scale_factor") else _pair_float(factor)
        if scales is not None and all(v is None for v in scales):
            scales = None
        align = bool(a.get("align_corners")) if mode == "bilinear" else None
        return "upsample", {"mode": mode, "align_corners": align, "scales": scales}

    def _constant(self, value: Any, desc: str, shape: tuple[int, ...]) -> float | torch.Tensor:
        """A number, or a stored tensor as a per-sample tensor that broadcasts to `shape` (a leading batch
        dimension of 1 dropped)."""
        value = self._const_named(value, desc, "constant") if isinstance(value, fx.Node) else value
        if isinstance(value, torch.Tensor):
            if value.numel() == 1:
                value = value.item()
            else:
                t = value.detach()
                if t.dim() == len(shape) + 1 and t.shape[0] == 1:
                    t = t[0]
                if t.dim() > len(shape):
                    raise ConversionError(f"{desc}: a constant of shape {tuple(value.shape)} does not broadcast to "
                                          f"a value of shape {shape} per sample; constants per sample are supported")
                t = t.reshape(*([1] * (len(shape) - t.dim())), *t.shape)
                if any(a not in (1, b) for a, b in zip(t.shape, shape)):
                    raise ConversionError(f"{desc}: a constant of shape {tuple(value.shape)} does not broadcast to "
                                          f"{shape}")
                if not t.is_floating_point():
                    t = t.to(torch.get_default_dtype())
                return t
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConversionError(f"{desc}: expected a number, got {value!r}")
        return float(value)

    def _module_params(self, kind: str, mod: nn.Module, desc: str) -> dict[str, Any]:
        if kind == "conv":
            if mod.padding_mode != "zeros":
                raise ConversionError(f"{desc}: padding_mode={mod.padding_mode!r}; only zero padding is supported")
            padding = mod.padding
            if isinstance(padding, str):
                if padding == "valid":
                    padding = (0, 0)
                else:  # 'same' at stride 1
                    tot = [d * (k - 1) for d, k in zip(mod.dilation, mod.kernel_size)]
                    if any(t % 2 for t in tot):
                        raise ConversionError(f"{desc}: padding='same' with an even kernel is not supported")
                    padding = tuple(t // 2 for t in tot)
            bias = mod.bias.detach() if mod.bias is not None else torch.zeros(mod.out_channels, dtype=mod.weight.dtype)
            return {"weight": mod.weight.detach(), "bias": bias, "stride": _pair(mod.stride),
                    "padding": _pair(padding), "dilation": _pair(mod.dilation), "groups": int(mod.groups)}
        if kind == "linear":
            bias = mod.bias.detach() if mod.bias is not None else torch.zeros(mod.out_features, dtype=mod.weight.dtype)
            return {"weight": mod.weight.detach(), "bias": bias}
        if kind == "batchnorm":
            if mod.running_mean is None or mod.running_var is None:
                raise ConversionError(f"{desc}: BatchNorm without running statistics cannot be folded")
            w = mod.weight.detach() if mod.weight is not None else None
            b = mod.bias.detach() if mod.bias is not None else None
            k, s = batchnorm_scale_shift(mod.running_mean, mod.running_var, mod.eps, w, b)
            return {"scale": k, "shift": s}
        if kind == "maxpool":
            if mod.return_indices:
                raise ConversionError(f"{desc}: MaxPool2d(return_indices=True) is not supported")
            return {"kernel_size": _pair(mod.kernel_size), "stride": _pair(mod.stride or mod.kernel_size),
                    "padding": _pair(mod.padding), "dilation": _pair(mod.dilation), "ceil_mode": bool(mod.ceil_mode)}
        if kind == "avgpool":
            return {"kernel_size": _pair(mod.kernel_size), "stride": _pair(mod.stride or mod.kernel_size),
                    "padding": _pair(mod.padding), "ceil_mode": bool(mod.ceil_mode),
                    "count_include_pad": bool(mod.count_include_pad), "divisor_override": mod.divisor_override}
        if kind == "adaptive_avgpool":
            return {"output_size": mod.output_size}
        if kind == "upsample":
            return {"size": mod.size, "scale_factor": mod.scale_factor, "mode": mod.mode,
                    "align_corners": mod.align_corners, "recompute_scale_factor": mod.recompute_scale_factor}
        if kind == "pad":
            modes = {nn.ReflectionPad2d: "reflect", nn.ReplicationPad2d: "replicate", nn.CircularPad2d: "circular"}
            return {"pad": mod.padding, "mode": modes.get(type(mod), "constant"), "value": getattr(mod, "value", 0)}
        return {}

    def _function_params(self, kind: str, a: dict[str, Any], desc: str, node: fx.Node | None = None,
                         rank: int = 0) -> dict[str, Any]:
        if kind in ("add", "sub", "mul", "div", "upsample", "pad"):
            return dict(a)  # sorted out by `_arithmetic` and `_spatial`
        if kind == "cat":
            return {"dim": self._sample_dim(a["dim"], rank, desc)}
        if kind == "transpose":
            d0, d1 = (self._sample_dim(a[k], rank, desc) for k in ("dim0", "dim1"))
            dims = list(range(rank))
            dims[d0], dims[d1] = dims[d1], dims[d0]
            return {"dims": tuple(dims)}
        if kind == "permute":
            raw = a["dims"]
            raw = list(raw) if isinstance(raw, (list, tuple)) else [raw]
            if len(raw) == 1 and isinstance(raw[0], (list, tuple)):
                raw = list(raw[0])
            full = [int(d) % (rank + 1) for d in raw]
            if full[0] != 0:
                raise ConversionError(f"{desc}: it moves the batch dimension; only per-sample permutes are supported")
            return {"dims": tuple(d - 1 for d in full[1:])}
        if kind == "mean":
            dims = a["dim"] if isinstance(a["dim"], (list, tuple)) else [a["dim"]]
            return {"dims": tuple(sorted(self._sample_dim(d, rank, desc) for d in dims)), "keepdim": bool(a["keepdim"])}
        if kind == "narrow":
            if a["step"] not in (None, 1):
                raise ConversionError(f"{desc}: a strided slice is not supported")
            if int(a["dim"]) == 0 and a["start"] in (None, 0) and (a["end"] is None or int(a["end"]) >= 2**62):
                return {"whole_batch": True}  # x[:] on the batch dimension (torch.export writes it)
            return {"dim": self._sample_dim(a["dim"], rank, desc), "start": a["start"], "stop": a["end"]}
        if kind == "conv":
            w = self._const_named(a["weight"], desc, "weight")
            b = self._const_named(a["bias"], desc, "bias")
            if b is None:
                b = torch.zeros(w.shape[0], dtype=w.dtype)
            padding = a["padding"]
            if isinstance(padding, str):
                raise ConversionError(f"{desc}: string padding in a functional conv is not supported; use numbers")
            return {"weight": w, "bias": b, "stride": _pair(a["stride"]), "padding": _pair(padding),
                    "dilation": _pair(a["dilation"]), "groups": int(a["groups"])}
        if kind == "linear":
            w = self._const_named(a["weight"], desc, "weight")
            b = self._const_named(a["bias"], desc, "bias")
            return {"weight": w, "bias": b if b is not None else torch.zeros(w.shape[0], dtype=w.dtype)}
        if kind == "batchnorm":
            if a.get("training"):
                raise ConversionError(f"{desc}: batch norm is called in training mode; use running statistics")
            mean = self._const_named(a["running_mean"], desc, "running_mean")
            var = self._const_named(a["running_var"], desc, "running_var")
            if mean is None or var is None:
                raise ConversionError(f"{desc}: batch norm without running statistics cannot be folded")
            k, s = batchnorm_scale_shift(mean, var, float(a["eps"]), self._const_named(a["weight"], desc, "weight"),
                                         self._const_named(a["bias"], desc, "bias"))
            return {"scale": k, "shift": s}
        if kind == "maxpool":
            if a.get("return_indices"):
                raise ConversionError(f"{desc}: max pooling with return_indices is not supported")
            k = _pair(a["kernel_size"])
            return {"kernel_size": k, "stride": _pool_stride(a["stride"], k), "padding": _pair(a["padding"]),
                    "dilation": _pair(a["dilation"]), "ceil_mode": bool(a["ceil_mode"])}
        if kind == "avgpool":
            k = _pair(a["kernel_size"])
            return {"kernel_size": k, "stride": _pool_stride(a["stride"], k), "padding": _pair(a["padding"]),
                    "ceil_mode": bool(a["ceil_mode"]), "count_include_pad": bool(a["count_include_pad"]),
                    "divisor_override": a["divisor_override"]}
        if kind == "adaptive_avgpool":
            return {"output_size": a["output_size"]}
        if kind == "dropout":
            return {"training": bool(a.get("training") or a.get("train"))}
        return {}

    def _const_named(self, value: Any, desc: str, what: str) -> Any:
        if isinstance(value, fx.Node):
            if value.op == "get_attr":
                obj: Any = self.gm
                for part in str(value.target).split("."):
                    obj = getattr(obj, part)
                return obj.detach()
            if _RESHAPING.get(value.op, {}).get(_name(value.target)) is not None:  # e.g. gamma.view(1, -1, 1, 1)
                fn = _RESHAPING[value.op][_name(value.target)]
                args = [self._const_named(a, desc, what) for a in value.args]
                kwargs = {k: self._const_named(v, desc, what) for k, v in value.kwargs.items()}
                return fn(*args, **kwargs).detach()
            raise ConversionError(
                f"{desc}: its {what} is computed inside forward(); only stored parameters and buffers (possibly "
                "reshaped) are supported"
            )
        if isinstance(value, (list, tuple)):
            return type(value)(self._const_named(v, desc, what) for v in value)
        if isinstance(value, torch.Tensor):
            return value.detach()
        return value


def _name(target: Any) -> str:
    return target if isinstance(target, str) else str(target)


_METHOD = {name: (lambda n: lambda t, *a, **k: getattr(t, n)(*a, **k))(name)
           for name in ("view", "reshape", "unsqueeze", "squeeze", "flatten", "contiguous", "clone", "detach")}
_RESHAPING: dict[str, dict[str, Any]] = {
    "call_method": _METHOD,
    "call_function": {str(f): f for f in (
        torch.reshape, torch.unsqueeze, torch.squeeze, torch.flatten, torch.ops.aten.view.default,
        torch.ops.aten.reshape.default, torch.ops.aten._unsafe_view.default, torch.ops.aten.unsqueeze.default,
        torch.ops.aten.clone.default, torch.ops.aten.detach.default)},
}
"""Ops on a stored tensor alone that only reshape or copy it: computed at capture (a parameter viewed per channel)."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _exported(model: nn.Module, example: torch.Tensor, failure: Exception) -> tuple[fx.GraphModule, str]:
    """The aten graph of `torch.export` (batch dimension dynamic) for a model that torch.fx cannot trace, and the
    note that says so."""
    name, reason = type(model).__name__, _first_line(failure)
    batch = example if example.shape[0] > 1 else torch.cat([example, example])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(model, (batch,), dynamic_shapes=({0: torch.export.Dim("batch")},),
                                          strict=False)
            gm = program.module()
    except Exception as exc:  # noqa: BLE001 - re-raised with both reasons
        raise ConversionError(
            f"torch.fx could not trace {name} ({reason}), and torch.export could not export it either "
            f"({_first_line(exc)}). Supported: a feed-forward forward() without data-dependent control flow, or a "
            "torch.export program"
        ) from None
    return gm, (f"captured with torch.export because torch.fx could not trace {name} ({reason}); shape-dependent "
                f"branches follow inputs of shape {tuple(example.shape[1:])}")
