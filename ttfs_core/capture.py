"""Capture a PyTorch model as a list of normalised ops, in data-flow order.

Modules (`nn.Conv2d`...), functionals (`F.relu`, `torch.flatten`...), tensor methods (`x.view`) and the aten ops of
a `torch.export` program all map to one small vocabulary (`Op.kind`), through the tables below. What is not
in a table raises `ConversionError` naming the node.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.fx.passes.shape_prop import ShapeProp

from .errors import ConversionError
from .fold import batchnorm_scale_shift
from .untrusted.allowlist import InputGuard

SUPPORTED = (
    "Conv2d (zero padding, stride, dilation, groups), Linear, BatchNorm1d/2d (eval), ReLU (module, F.relu, "
    "torch.relu, in-place), ReLU6 / hardtanh(0, c), MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, mean over space, "
    "Flatten / torch.flatten / view / reshape / transpose / permute, additions (+, torch.add, in-place), "
    "torch.cat / chunk / split and channel slices, multiplication by a constant, Dropout, Identity, and a last "
    "linear map without ReLU (the readout)"
)


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


# --- parameter binding for functional and aten ops -------------------------------------------------------

_CONV = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEF = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
_MAXP = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode")
_MAXP_DEF = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False}
_AVGP = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_AVGP_DEF = {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True, "divisor_override": None}
_BN_F = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
_BN_A = ("input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps")
_BN_NATIVE = ("input", "weight", "bias", "running_mean", "running_var", "momentum", "eps")
_BN_DEF = {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5}

aten = torch.ops.aten

# callable -> (kind, parameter names, defaults). Functions whose result is a tuple take element 0.
FUNCTIONS: dict[Any, tuple[str, tuple[str, ...], dict[str, Any]]] = {
    F.relu: ("relu", ("input",), {}),
    torch.relu: ("relu", ("input",), {}),
    torch.relu_: ("relu", ("input",), {}),
    F.relu_: ("relu", ("input",), {}),
    F.conv2d: ("conv", _CONV, _CONV_DEF),
    torch.conv2d: ("conv", _CONV, _CONV_DEF),
    F.linear: ("linear", ("input", "weight", "bias"), {"bias": None}),
    F.batch_norm: ("batchnorm", _BN_F, _BN_DEF),
    F.max_pool2d: ("maxpool", _MAXP, _MAXP_DEF),
    torch.max_pool2d: ("maxpool", _MAXP, _MAXP_DEF),
    F.avg_pool2d: ("avgpool", _AVGP, _AVGP_DEF),
    F.adaptive_avg_pool2d: ("adaptive_avgpool", ("input", "output_size"), {}),
    torch.flatten: ("reshape", ("input", "start_dim", "end_dim"), {"start_dim": 0, "end_dim": -1}),
    torch.reshape: ("reshape", ("input", "shape"), {}),
    F.dropout: ("dropout", ("input", "p", "training"), {"training": True}),
    F.dropout2d: ("dropout", ("input", "p", "training"), {"training": True}),
    torch.dropout: ("dropout", ("input", "p", "train"), {}),
    aten.relu.default: ("relu", ("input",), {}),
    aten.relu_.default: ("relu", ("input",), {}),
    aten.conv2d.default: ("conv", _CONV, _CONV_DEF),
    aten.linear.default: ("linear", ("input", "weight", "bias"), {"bias": None}),
    aten.batch_norm.default: ("batchnorm", _BN_A, _BN_DEF),
    aten._native_batch_norm_legit_no_training.default: ("batchnorm", _BN_NATIVE, _BN_DEF),
    aten.max_pool2d.default: ("maxpool", _MAXP, _MAXP_DEF),
    aten.max_pool2d_with_indices.default: ("maxpool", _MAXP, _MAXP_DEF),
    aten.avg_pool2d.default: ("avgpool", _AVGP, _AVGP_DEF),
    aten.adaptive_avg_pool2d.default: ("adaptive_avgpool", ("input", "output_size"), {}),
    aten.flatten.using_ints: ("reshape", ("input",), {}),
    aten.view.default: ("reshape", ("input",), {}),
    aten.reshape.default: ("reshape", ("input",), {}),
    aten._unsafe_view.default: ("reshape", ("input",), {}),
    aten.dropout.default: ("dropout", ("input", "p", "train"), {}),
    aten.clone.default: ("identity", ("input",), {}),
    aten.contiguous.default: ("identity", ("input",), {}),
    aten.detach.default: ("identity", ("input",), {}),
    operator.getitem: ("getitem", ("input", "index"), {}),
    F.relu6: ("relu6", ("input",), {}),
    F.hardtanh: ("hardtanh", ("input", "min_val", "max_val"), {"min_val": -1.0, "max_val": 1.0}),
    aten.hardtanh.default: ("hardtanh", ("input", "min_val", "max_val"), {"min_val": -1.0, "max_val": 1.0}),
    aten.hardtanh_.default: ("hardtanh", ("input", "min_val", "max_val"), {"min_val": -1.0, "max_val": 1.0}),
    aten.relu6.default: ("relu6", ("input",), {}),
    operator.add: ("add", ("input", "other"), {}),
    operator.iadd: ("add", ("input", "other"), {}),
    torch.add: ("add", ("input", "other", "alpha"), {"alpha": 1}),
    aten.add.Tensor: ("add", ("input", "other", "alpha"), {"alpha": 1}),
    aten.add_.Tensor: ("add", ("input", "other", "alpha"), {"alpha": 1}),
    operator.sub: ("sub", ("input", "other"), {}),
    operator.isub: ("sub", ("input", "other"), {}),
    torch.sub: ("sub", ("input", "other", "alpha"), {"alpha": 1}),
    aten.sub.Tensor: ("sub", ("input", "other", "alpha"), {"alpha": 1}),
    operator.mul: ("mul", ("input", "other"), {}),
    torch.mul: ("mul", ("input", "other"), {}),
    aten.mul.Tensor: ("mul", ("input", "other"), {}),
    operator.truediv: ("div", ("input", "other"), {}),
    torch.cat: ("cat", ("tensors", "dim"), {"dim": 0}),
    torch.concat: ("cat", ("tensors", "dim"), {"dim": 0}),
    aten.cat.default: ("cat", ("tensors", "dim"), {"dim": 0}),
    torch.chunk: ("chunk", ("input", "chunks", "dim"), {"dim": 0}),
    aten.chunk.default: ("chunk", ("input", "chunks", "dim"), {"dim": 0}),
    torch.split: ("split", ("input", "split_size_or_sections", "dim"), {"dim": 0}),
    aten.split.Tensor: ("split", ("input", "split_size_or_sections", "dim"), {"dim": 0}),
    aten.split_with_sizes.default: ("split", ("input", "split_size_or_sections", "dim"), {"dim": 0}),
    torch.transpose: ("transpose", ("input", "dim0", "dim1"), {}),
    aten.transpose.int: ("transpose", ("input", "dim0", "dim1"), {}),
    torch.permute: ("permute", ("input", "dims"), {}),
    aten.permute.default: ("permute", ("input", "dims"), {}),
    torch.mean: ("mean", ("input", "dim", "keepdim"), {"keepdim": False}),
    aten.mean.dim: ("mean", ("input", "dim", "keepdim"), {"keepdim": False}),
    aten.slice.Tensor: ("narrow", ("input", "dim", "start", "end", "step"), {"dim": 0, "start": None, "end": None,
                                                                             "step": 1}),
}

METHODS = {
    "relu": "relu", "relu_": "relu", "view": "reshape", "reshape": "reshape", "flatten": "reshape",
    "contiguous": "identity", "clone": "identity", "detach": "identity", "add": "add", "add_": "add",
    "__add__": "add", "__iadd__": "add", "sub": "sub", "sub_": "sub", "mul": "mul", "mul_": "mul",
    "chunk": "chunk", "split": "split",
    "transpose": "transpose", "permute": "permute", "mean": "mean",
}
# tensor method -> parameter names (after self) and defaults
_METHOD_ARGS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "add": (("other", "alpha"), {"alpha": 1}), "add_": (("other", "alpha"), {"alpha": 1}),
    "__add__": (("other",), {}), "__iadd__": (("other",), {}),
    "sub": (("other", "alpha"), {"alpha": 1}), "sub_": (("other", "alpha"), {"alpha": 1}),
    "mul": (("other",), {}), "mul_": (("other",), {}),
    "chunk": (("chunks", "dim"), {"dim": 0}), "split": (("split_size_or_sections", "dim"), {"dim": 0}),
    "transpose": (("dim0", "dim1"), {}), "permute": (("dims",), {}), "mean": (("dim", "keepdim"), {"keepdim": False}),
}

MODULES: dict[type, str] = {
    nn.Conv2d: "conv", nn.Linear: "linear", nn.BatchNorm1d: "batchnorm", nn.BatchNorm2d: "batchnorm",
    nn.ReLU: "relu", nn.MaxPool2d: "maxpool", nn.AvgPool2d: "avgpool", nn.AdaptiveAvgPool2d: "adaptive_avgpool",
    nn.Flatten: "reshape", nn.Dropout: "identity", nn.Dropout1d: "identity", nn.Dropout2d: "identity",
    nn.Identity: "identity", nn.ReLU6: "relu6", nn.Hardtanh: "hardtanh",
    InputGuard: "identity",  # the shape check at the head of a graph rebuilt from an uploaded file
}



def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[-1])) if len(v) in (1, 2) else (int(v[0]), int(v[1]))
    return int(v), int(v)


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
        if isinstance(model, fx.GraphModule):
            self.gm = model
        else:
            try:
                self.gm = fx.symbolic_trace(model)
            except Exception as exc:  # noqa: BLE001 - re-raised with context
                raise ConversionError(
                    f"torch.fx could not trace {type(model).__name__}: {exc}. Supported: a feed-forward forward() "
                    "without data-dependent control flow, or a torch.export program"
                ) from None
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
            names, defaults = _METHOD_ARGS[str(node.target)]
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
            names, defaults = _METHOD_ARGS.get(str(node.target), ((), {}))
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
        if kind in ("add", "sub", "mul", "div"):
            kind, p, inputs = self._arithmetic(kind, p, desc, node, data, inputs)
        if kind == "transpose":
            kind = "permute"
        if kind == "narrow":
            if p.get("whole_batch"):
                kind, p = "identity", {}
            else:
                lo, hi, _ = slice(p["start"], p["stop"]).indices(in_shape[p["dim"]])
                kind, p = "slice", {"dim": p["dim"], "start": lo, "stop": max(lo, hi)}
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
        narrowed = [(d, i) for d, i in enumerate(index) if not (isinstance(i, slice) and i == slice(None))]
        if (len(narrowed) == 1 and narrowed[0][0] > 0 and isinstance(narrowed[0][1], slice)
                and narrowed[0][1].step in (None, 1)):
            d, sl = narrowed[0]
            size = in_shape[d - 1]
            lo, hi, _ = sl.indices(size)
            return Op(node.name, node.name, "slice", "[...]", in_shape, out_shape,
                      {"dim": d - 1, "start": lo, "stop": max(lo, hi)}, inputs)
        raise ConversionError(f"{desc}: indexing {index!r} is not supported; one contiguous slice along a "
                              "per-sample dimension is")

    def _arithmetic(self, kind, p, desc, node, data, inputs):
        """x + y, x + c, c·x, x / c: linear in the data. Two activations multiplied together are not."""
        operands = [p.get("input", node.args[0]), p.get("other")]
        consts = [a for a in operands if not (isinstance(a, fx.Node) and a in data)]
        if kind in ("mul", "div"):
            if len(inputs) != 1:
                raise ConversionError(f"{desc}: it multiplies two activations, which is not a ReLU-family "
                                      f"operation (gates and attention cannot be converted). Supported: {SUPPORTED}")
            c = self._scalar(consts[0], desc)
            numerator_is_data = isinstance(operands[0], fx.Node) and operands[0] in data
            if kind == "div" and (not numerator_is_data or c == 0):
                raise ConversionError(f"{desc}: only division of an activation by a non-zero constant is supported")
            return "mul", {"factor": 1.0 / c if kind == "div" else c}, inputs
        alpha = float(p.get("alpha", 1)) * (-1.0 if kind == "sub" else 1.0)
        if len(inputs) == 2:
            return "add", {"sign": 1.0, "alpha": alpha, "constant": 0.0}, inputs
        first_is_data = isinstance(operands[0], fx.Node) and operands[0] in data
        c = self._scalar(consts[0], desc)
        if first_is_data:  # x ± c
            return "add", {"sign": 1.0, "alpha": 1.0, "constant": alpha * c}, inputs
        return "add", {"sign": alpha, "alpha": 1.0, "constant": c}, inputs  # c ± x

    def _scalar(self, value: Any, desc: str) -> float:
        value = self._const_named(value, desc, "constant") if isinstance(value, fx.Node) else value
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ConversionError(f"{desc}: only a scalar constant is supported here, got a tensor of shape "
                                      f"{tuple(value.shape)}")
            value = value.item()
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
        return {}

    def _function_params(self, kind: str, a: dict[str, Any], desc: str, node: fx.Node | None = None,
                         rank: int = 0) -> dict[str, Any]:
        if kind in ("add", "sub", "mul", "div"):
            return dict(a)  # operands and alpha, sorted out by `_arithmetic`
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
            if value.op != "get_attr":
                raise ConversionError(
                    f"{desc}: its {what} is computed inside forward(); only stored parameters and buffers are "
                    "supported"
                )
            obj: Any = self.gm
            for part in str(value.target).split("."):
                obj = getattr(obj, part)
            return obj.detach()
        if isinstance(value, torch.Tensor):
            return value.detach()
        return value


# --- what each op computes on activations (folded glue, readout post-processing) ---------------------
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
    else:
        def fn(x):
            return x
    return fn


def _pool_matrix(n_in: int, n_out: int, dtype) -> Tensor:
    """Adaptive average pooling along one axis as an (n_out, n_in) matrix (PyTorch's floor/ceil windows)."""
    m = torch.zeros(n_out, n_in, dtype=dtype)
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def adaptive_avg_pool(x: Tensor, size: tuple[int, int]) -> Tensor:
    """F.adaptive_avg_pool2d as two small matrix products (fast forward and backward when upsampling)."""
    ph = _pool_matrix(x.shape[-2], size[0], x.dtype)
    pw = _pool_matrix(x.shape[-1], size[1], x.dtype)
    return torch.einsum("oh,bchw,pw->bcop", ph, x, pw)


def apply_op(op: Op, x: torch.Tensor) -> torch.Tensor:
    """Apply a captured op to activations. Shape: (B, *op.in_shape) -> (B, *op.out_shape)."""
    return _op_fn(op)(x)
