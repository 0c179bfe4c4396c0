"""What a graph rebuilt from an uploaded file may compute: an allow-list of aten operators, a check of every
argument, and a shape check on the ``meta`` device before any real tensor is touched.

An uploaded ``.pt2`` or TorchScript file becomes an fx graph of ``torch.ops.aten`` calls (:mod:`ttfs_core.untrusted`).
That graph runs in the server's own process (the probe run of ``check_input``, calibration, every page), so what
it may call must be *known to be safe*, not merely "not known to be dangerous": ``aten`` has thousands of
operators, some without bounds checks (``_reshape_alias``, ``as_strided``, ``_sparse_coo_tensor_unsafe``), some
that allocate whatever their arguments ask (factories), some that compute for minutes (``mm`` on large inputs).

Three layers, each small enough to read:

1. :data:`ALLOWED`: the operators the converter can lower (:mod:`ttfs_core.capture`), plus the scalar plumbing
   torch.export writes for shapes and guards. Each entry says in one line why it cannot touch memory outside its
   tensors. Anything else is refused at load, naming the operator and its node (:func:`check_call`).
2. :func:`check_call`: every argument of every call matches the operator's schema by type (a bool is not an int,
   a weight is a stored tensor, not a computed one) and by range (strides >= 1, no training-mode batch norm, no
   in-place write into a stored tensor).
3. :class:`InputGuard`: the first node of a rebuilt graph. The first time an input shape and dtype arrive, it runs
   the whole graph on ``meta`` tensors (shapes only, no memory), checking that each value stays within
   :data:`MAX_NODE_ELEMENTS` and the whole pass within :data:`MAX_TOTAL_ELEMENTS` and :data:`MAX_MACS` (all per
   sample). Only then does the real forward run. Every later forward of the same shape is checked from a cache.
   The guard also hands the graph a copy of its input, so an in-place operator cannot change the caller's tensor.
"""

from __future__ import annotations

import math
import operator
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

__all__ = ["ALLOWED", "OPERATORS", "GraphRefused", "InputGuard", "check_call", "is_allowed", "meta_check"]

MAX_NODE_ELEMENTS = 1 << 26
"""Elements one value of the graph may hold, per sample (64 Mi: an ImageNet VGG-16's largest is 3.2 Mi)."""
MAX_TOTAL_ELEMENTS = 1 << 28
"""Elements all values of one forward pass may hold together, per sample (ResNet-50 at 224 px: about 25 Mi)."""
MAX_MACS = 1 << 36
"""Multiply-accumulates of one forward pass, per sample (69 G; VGG-16 at 224 px needs 15.5 G)."""
MAX_INT = 1 << 62
"""Largest magnitude of a shape or index integer (slices write 2**63 - 1 for "to the end": clamped, allowed)."""
MAX_LIST = 8
"""Longest list of sizes an argument may hold (tensors here have at most 5 dimensions)."""
INPUT_DTYPES = (torch.float32, torch.float64)


class GraphRefused(ValueError):
    """A rebuilt graph calls something outside the allow-list, with bad arguments, or asks for too much."""


@dataclass(frozen=True)
class Rule:
    why: str
    """One line for the README: why running this operator cannot reach memory outside its tensors."""
    check: Callable[[dict[str, Any]], str | None] | None = None
    """Extra constraint on the bound arguments beyond their schema types: a problem, or None."""


# --- the per-operator constraints ---------------------------------------------------------------------------


def _stored(a: dict[str, Any], *names: str) -> str | None:
    """Weights must be stored tensors (get_attr), not values computed in forward()."""
    for name in names:
        v = a.get(name)
        if v is not None and not (isinstance(v, fx.Node) and v.op == "get_attr"):
            return f"its {name} must be a stored tensor"
    return None


def _ints_at_least(a: dict[str, Any], low: int, *names: str) -> str | None:
    for name in names:
        values = a.get(name)
        values = values if isinstance(values, (list, tuple)) else [values]
        if any(isinstance(v, int) and v < low for v in values):
            return f"{name} {a.get(name)} must be >= {low}"
    return None


def _first(*checks: Callable[[dict[str, Any]], str | None]) -> Callable[[dict[str, Any]], str | None]:
    def check(a: dict[str, Any]) -> str | None:
        return next((p for p in (c(a) for c in checks) if p), None)

    return check


def _conv(a: dict[str, Any]) -> str | None:
    return (_stored(a, "weight", "bias") or _ints_at_least(a, 1, "stride", "dilation", "groups")
            or _ints_at_least(a, 0, "padding"))  # fmt: skip


def _pool(a: dict[str, Any]) -> str | None:
    return _ints_at_least(a, 1, "kernel_size", "stride", "dilation", "divisor_override") or _ints_at_least(
        a, 0, "padding"
    )


def _batch_norm(a: dict[str, Any]) -> str | None:
    if a.get("training") is True:
        return "batch norm in training mode (it would update the running statistics); export in eval mode"
    return _stored(a, "weight", "bias", "running_mean", "running_var")


def _no_training(a: dict[str, Any]) -> str | None:
    return "dropout in training mode; export in eval mode" if a.get("train") is True else None


def _sizes(a: dict[str, Any]) -> str | None:
    values = next(v for k, v in a.items() if k in ("size", "shape"))
    if sum(1 for v in values if v == -1) > 1:
        return "more than one size is -1"
    return _ints_at_least({"size": values}, -1, "size")


def _resize(a: dict[str, Any]) -> str | None:
    factors = a.get("scale_factors") or []
    if any(not f > 0 for f in factors if not isinstance(f, fx.Node)):
        return f"scale factors {factors} must be > 0"
    return _ints_at_least(a, 1, "output_size")


def _zero_pad(a: dict[str, Any]) -> str | None:
    mode = a.get("mode", "constant")
    return None if mode == "constant" else f"{mode!r} padding (only zero padding is lowered)"


_MEANING = "only the input's own elements"
ALLOWED: dict[str, Rule] = {
    "aten.conv2d.default": Rule("convolution: reads its input and stored weight inside their bounds; output size "
                                "from torch's own shape check", _conv),
    "aten.linear.default": Rule("dense layer: a matrix product of checked shapes with a stored weight",
                                lambda a: _stored(a, "weight", "bias")),
    "aten.batch_norm.default": Rule("batch norm in eval mode: a per-channel affine map with stored statistics",
                                    _batch_norm),
    "aten._native_batch_norm_legit_no_training.default": Rule("batch norm in eval mode (torch.export's form)",
                                                              _batch_norm),
    "aten.relu.default": Rule(f"elementwise max(x, 0): {_MEANING}"),
    "aten.relu_.default": Rule(f"in place max(x, 0): {_MEANING}, never a stored tensor"),
    "aten.hardtanh.default": Rule(f"elementwise clip (ReLU6): {_MEANING}"),
    "aten.hardtanh_.default": Rule(f"in place clip (ReLU6): {_MEANING}, never a stored tensor"),
    "aten.max_pool2d.default": Rule("max pooling: windows inside the padded input, checked by torch", _pool),
    "aten.max_pool2d_with_indices.default": Rule("max pooling with indices (element 0 used)", _pool),
    "aten.avg_pool2d.default": Rule("average pooling: windows inside the padded input, checked by torch", _pool),
    "aten.adaptive_avg_pool2d.default": Rule("adaptive average pooling to a checked output size",
                                             lambda a: _ints_at_least(a, 1, "output_size")),
    "aten.upsample_nearest2d.vec": Rule("nearest upsampling: each output element copies one input element; output "
                                        "size from checked sizes or factors > 0", _resize),
    "aten.upsample_bilinear2d.vec": Rule("bilinear upsampling: each output element mixes four input elements; "
                                         "output size from checked sizes or factors > 0", _resize),
    "aten.pad.default": Rule("zero padding or cropping (mode 'constant' only): output size checked by torch",
                             _zero_pad),
    "aten.constant_pad_nd.default": Rule("constant padding or cropping: output size checked by torch"),
    "aten.mean.dim": Rule(f"mean over dimensions: {_MEANING}",
                          lambda a: "a dtype argument is not supported" if a.get("dtype") is not None else None),
    "aten.flatten.using_ints": Rule("reshape: the element count is unchanged (checked by torch)"),
    "aten.view.default": Rule("reshape: the element count must match (checked by torch, unlike _reshape_alias)",
                              _sizes),
    "aten.reshape.default": Rule("reshape: the element count must match (checked by torch)", _sizes),
    "aten._unsafe_view.default": Rule("reshape without autograd aliasing: the element count is checked", _sizes),
    "aten.transpose.int": Rule("swaps two dimensions: a view of the same elements"),
    "aten.permute.default": Rule("reorders dimensions: a view of the same elements"),
    "aten.slice.Tensor": Rule("a slice with step >= 1: clamped to the input's bounds",
                              lambda a: _ints_at_least(a, 1, "step")),
    "aten.chunk.default": Rule("views of consecutive parts of the input", lambda a: _ints_at_least(a, 1, "chunks")),
    "aten.split.Tensor": Rule("views of consecutive parts of the input",
                              lambda a: _ints_at_least(a, 1, "split_size")),
    "aten.split_with_sizes.default": Rule("views of parts whose sizes must add up (checked by torch)",
                                          lambda a: _ints_at_least(a, 0, "split_sizes")),
    "aten.cat.default": Rule("concatenation: the output holds exactly the inputs' elements"),
    "aten.add.Tensor": Rule("elementwise sum (residual connections, a constant offset)"),
    "aten.add_.Tensor": Rule("in place sum: writes only into a value the graph computed"),
    "aten.sub.Tensor": Rule("elementwise difference"),
    "aten.mul.Tensor": Rule("multiplication by a constant (a product of two activations is refused by the "
                            "converter)"),
    "aten.div.Tensor": Rule("division by a constant (a quotient of two activations is refused by the converter)"),
    "aten.dropout.default": Rule("dropout in eval mode: the identity", _no_training),
    "aten.clone.default": Rule("a copy of the input"),
    "aten.contiguous.default": Rule("a dense copy of the input"),
    "aten.detach.default": Rule("the same tensor without autograd history"),
    "aten.alias.default": Rule("the same tensor under another name (torch.export's full slices)"),
    "aten.sym_size.int": Rule("reads one size of a tensor (shape arithmetic)"),
    "aten.size.int": Rule("reads one size of a tensor (TorchScript's shape arithmetic)"),
    "aten.eq.int": Rule("compares two integers (torch.export's input guards)"),
    "aten._assert_scalar.default": Rule("raises an error when a guard fails; touches no tensor"),
}  # fmt: skip
"""The aten operators a rebuilt graph may call, by ``aten.<name>.<overload>``, each with why it is safe."""

OPERATORS: dict[str, Callable[..., Any]] = {
    name: getattr(operator, name)
    for name in ("getitem", "add", "sub", "mul", "floordiv", "mod", "neg", "eq", "ne", "lt", "le", "gt", "ge")
}
"""Python operators torch.export writes for shape arithmetic (``sym_size(x, 0) * 16``) and tuple access; on
integers only (``getitem`` on a tuple of values), checked while the graph runs on ``meta``."""

_INPLACE = {"aten.relu_.default", "aten.hardtanh_.default", "aten.add_.Tensor"}
_VIEWS = {"aten.view.default", "aten.reshape.default", "aten._unsafe_view.default", "aten.flatten.using_ints",
          "aten.transpose.int", "aten.permute.default", "aten.slice.Tensor", "aten.detach.default",
          "aten.contiguous.default", "aten.alias.default"}  # fmt: skip
_MEMORY_FORMATS = {torch.contiguous_format, torch.preserve_format, torch.channels_last}


def is_allowed(name: str) -> bool:
    """Whether ``aten.<op>.<overload>`` (or ``operator.<name>``) is on the allow-list."""
    return name in ALLOWED or (name.startswith("operator.") and name.removeprefix("operator.") in OPERATORS)


def resolve(name: str) -> Any:
    """The callable an allow-listed name stands for (never looked up for a name not on the list)."""
    if name.startswith("operator."):
        return OPERATORS[name.removeprefix("operator.")]
    if name not in ALLOWED:
        raise KeyError(name)
    _, op, overload = name.split(".")
    return getattr(getattr(torch.ops.aten, op), overload)


def target_name(target: Any) -> str:
    """``aten.<op>.<overload>`` or ``operator.<name>`` for a node target (for messages and look-ups)."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    name = getattr(target, "__name__", None)
    if getattr(target, "__module__", None) in ("_operator", "operator") and OPERATORS.get(str(name)) is target:
        return f"operator.{name}"
    return str(target)


def supported_list() -> str:
    return ", ".join(sorted(n.split(".")[1] for n in ALLOWED))


# --- layer 2: every argument of a call ----------------------------------------------------------------------


def _type_problem(value: Any, typ: Any, depth: int = 0) -> str | None:
    """Why ``value`` (a literal or an fx node) cannot be an argument of schema type ``typ``; None if it can."""
    kind = typ.kind()
    if kind == "OptionalType":
        return None if value is None else _type_problem(value, typ.getElementType(), depth)
    if isinstance(value, fx.Node):
        if kind in ("TensorType", "IntType", "SymIntType", "NumberType", "FloatType"):
            return None  # a tensor or a scalar computed by the graph: its type is checked on meta
        return f"a computed value where a {typ} is expected"
    if kind == "TensorType":  # numbers are what torch.export writes for `x * 0.5`
        return None if _is_number(value) else f"{type(value).__name__} where a tensor is expected"
    if kind in ("IntType", "SymIntType"):
        return None if _is_int(value) else f"{value!r} where an integer is expected"
    if kind in ("FloatType", "NumberType"):
        ok = _is_number(value) and math.isfinite(value)
        return None if ok else f"{value!r} where a finite number is expected"
    if kind == "BoolType":
        return None if type(value) is bool else f"{value!r} where a bool is expected"
    if kind == "StringType":
        return None if isinstance(value, str) and len(value) <= 500 else "a string longer than 500 characters"
    if kind == "ListType":
        if not isinstance(value, (list, tuple)) or (depth > 0 or len(value) > max(MAX_LIST, 4096)):
            return f"{type(value).__name__} where a list is expected"
        if typ.getElementType().kind() != "TensorType" and len(value) > MAX_LIST:
            return f"a list of {len(value)} sizes"
        return next((p for p in (_type_problem(v, typ.getElementType(), depth + 1) for v in value) if p), None)
    if kind == "MemoryFormatType":
        return None if value in _MEMORY_FORMATS else f"memory format {value!r}"
    return f"an argument of type {typ} (not supported)"  # dtype, device, layout, ...: nothing here needs them


def _is_int(v: Any) -> bool:
    return type(v) is int and -(1 << 63) <= v < 1 << 63


def _is_number(v: Any) -> bool:
    return type(v) in (int, float)


def bind(op: torch._ops.OpOverload, args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments by schema name (defaults left out); raises GraphRefused for a call that does not fit."""
    schema = op._schema
    params = schema.arguments
    positional = [p for p in params if not p.kwarg_only]
    if len(args) > len(positional):
        raise GraphRefused(f"{len(args)} arguments, the operator takes at most {len(positional)}")
    bound = {p.name: v for p, v in zip(positional, args)}
    names = {p.name for p in params}
    for k, v in kwargs.items():
        if k not in names or k in bound:
            raise GraphRefused(f"unexpected keyword argument {k!r}")
        bound[k] = v
    for p in params:
        if p.name not in bound and not p.has_default_value() and p.type.kind() != "OptionalType":
            raise GraphRefused(f"argument {p.name!r} is missing")
    return bound


def check_call(node: fx.Node) -> None:
    """Refuse a call_function node whose target is not allow-listed or whose arguments do not fit (layer 2)."""
    name = target_name(node.target)
    where = f"node {node.name} ({name})"
    if name.startswith("operator."):
        if not is_allowed(name):
            raise GraphRefused(f"{where} is not supported; the graph may call: {supported_list()}")
        bad = [a for a in (*node.args, *node.kwargs.values()) if not (isinstance(a, fx.Node) or _is_int(a))]
        if bad or node.kwargs:
            raise GraphRefused(f"{where}: Python operators take integers and graph values only")
        return
    if name not in ALLOWED or resolve(name) is not node.target:
        raise GraphRefused(
            f"{where} is not supported (only operators the converter can lower may run); the graph may call: "
            f"{supported_list()}"
        )
    try:
        bound = bind(node.target, node.args, dict(node.kwargs))
    except GraphRefused as e:
        raise GraphRefused(f"{where}: {e}") from None
    types = {p.name: p.type for p in node.target._schema.arguments}
    for k, v in bound.items():
        problem = _type_problem(v, types[k])
        if problem:
            raise GraphRefused(f"{where}: argument {k!r} is {problem}")
    rule = ALLOWED[name]
    problem = rule.check(bound) if rule.check else None
    if problem is None and name in _INPLACE and _writes_stored(node.args[0]):
        problem = "it writes into a stored tensor"
    if problem:
        raise GraphRefused(f"{where}: {problem}")


def _writes_stored(value: Any) -> bool:
    """Whether an in-place write to ``value`` would change a stored tensor (directly or through views)."""
    while isinstance(value, fx.Node):
        if value.op == "get_attr":
            return True
        if value.op != "call_function" or target_name(value.target) not in _VIEWS or not value.args:
            return False
        value = value.args[0]
    return False


def check_graph(graph: fx.Graph) -> None:
    """Layers 1 and 2 over a whole graph (before fx generates any code from it): node kinds, targets, arguments;
    one input tensor."""
    placeholders = 0
    for n in graph.nodes:
        if n.op == "call_function":
            check_call(n)
        elif n.op == "placeholder":
            placeholders += 1
        elif n.op not in ("get_attr", "output") and not (n.op == "call_module" and n.target == InputGuard.NAME):
            raise GraphRefused(f"node {n.name} ({n.op}) is not supported")
    if placeholders != 1:
        raise GraphRefused(f"the model must take one input tensor; its graph takes {placeholders}")


# --- layer 3: shapes and costs on the meta device ------------------------------------------------------------


def _numel(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, (list, tuple)):
        return sum(_numel(v) for v in value)
    return 0


def _macs(name: str, args: tuple, out: Any) -> int:
    """Multiply-accumulates of one call, from shapes alone (an upper bound; others count their elements)."""
    n_out = _numel(out[0] if isinstance(out, tuple) and name.startswith("aten.max_pool") else out)
    if name == "aten.conv2d.default":
        return n_out * math.prod(args[1].shape[1:])
    if name == "aten.linear.default":
        return n_out * args[1].shape[-1]
    if name.startswith(("aten.max_pool2d", "aten.avg_pool2d")):
        k = args[1] if isinstance(args[1], (list, tuple)) else [args[1]]
        return n_out * math.prod(int(v) for v in k) * (1 if len(k) == 2 else int(k[0]))
    return max(n_out, sum(_numel(a) for a in args if isinstance(a, torch.Tensor)))


class _MetaRun(fx.Interpreter):
    """Runs a graph on meta tensors, checking each value's type, size and cost before the next node."""

    def __init__(self, gm: fx.GraphModule, batch: int) -> None:
        super().__init__(gm)
        self.extra_traceback = False  # messages name the node themselves, in one line
        self.scale = max(batch, 1)
        self.elements = 0
        self.macs = 0

    def run_node(self, n: fx.Node) -> Any:
        try:
            out = super().run_node(n)
        except GraphRefused:
            raise
        except Exception as e:  # noqa: BLE001 - torch's shape checks, failed guards
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise GraphRefused(f"node {n.name}: {text[:300]}") from None
        if n.op == "call_function":
            self._account(n, out)
        return out

    def call_function(self, target: Any, args: tuple, kwargs: dict) -> Any:
        name = target_name(target)
        if name.startswith("operator."):
            if name == "operator.getitem":
                ok = isinstance(args[0], (list, tuple)) and _is_int(args[1])
            else:
                ok = all(type(a) in (int, bool) and abs(a) < MAX_INT for a in args)
            if not ok:
                raise GraphRefused(f"{name} on {', '.join(type(a).__name__ for a in args)}: integers only")
        return super().call_function(target, args, kwargs)

    def _account(self, n: fx.Node, out: Any) -> None:
        values = out if isinstance(out, (list, tuple)) else [out]
        for v in values:
            if isinstance(v, torch.Tensor):
                if v.dtype not in INPUT_DTYPES and v.dtype not in (torch.int64, torch.bool):
                    raise GraphRefused(f"node {n.name} makes a {v.dtype} tensor")
            elif type(v) in (int, bool):
                if abs(v) >= MAX_INT:
                    raise GraphRefused(f"node {n.name} computes the integer {v}, out of range")
            elif v is not None:
                raise GraphRefused(f"node {n.name} returns a {type(v).__name__}")
        size = _numel(out)
        if size > MAX_NODE_ELEMENTS * self.scale:
            raise GraphRefused(
                f"node {n.name} would hold {size / self.scale:.3g} elements per input (limit {MAX_NODE_ELEMENTS:.3g})"
            )
        self.elements += size
        self.macs += _macs(target_name(n.target), self._args(n), out)
        if self.elements > MAX_TOTAL_ELEMENTS * self.scale:
            raise GraphRefused(f"the graph would hold more than {MAX_TOTAL_ELEMENTS:.3g} elements per input "
                               f"(reached at node {n.name})")  # fmt: skip
        if self.macs > MAX_MACS * self.scale:
            raise GraphRefused(f"the graph would take more than {MAX_MACS:.3g} multiply-adds per input "
                               f"(reached at node {n.name})")  # fmt: skip

    def _args(self, n: fx.Node) -> tuple:
        return tuple(self.env[a] if isinstance(a, fx.Node) else a for a in n.args)


def meta_check(gm: fx.GraphModule, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Any:
    """Run ``gm`` (whose stored tensors live on ``meta``) on a meta input of ``shape``; return the meta output.

    Raises :class:`GraphRefused` naming the node when a shape does not fit, a guard fails, or the pass would
    exceed :data:`MAX_NODE_ELEMENTS`, :data:`MAX_TOTAL_ELEMENTS` or :data:`MAX_MACS` per sample.
    """
    if dtype not in INPUT_DTYPES:
        raise GraphRefused(f"inputs must be float32 or float64, got {dtype}")
    if not shape or not all(_is_int(s) and 0 < s < MAX_INT for s in shape):
        raise GraphRefused(f"input shape {tuple(shape)} is not supported")
    x = torch.empty(tuple(shape), dtype=dtype, device="meta")
    with torch.no_grad():
        return _MetaRun(gm, int(shape[0])).run(x)


def meta_copy(gm: fx.GraphModule, dtype: torch.dtype | None = None) -> fx.GraphModule:
    """The same graph over ``meta`` copies of the stored tensors (shapes and dtypes only; no memory); floating
    tensors in ``dtype`` if given (a model run in float64 has float64 weights)."""
    root = nn.Module()
    for name, t in [*gm.named_parameters(), *gm.named_buffers()]:
        mod = root
        *path, leaf = name.split(".")
        for p in path:
            if p not in mod._modules:
                mod.add_module(p, nn.Module())
            mod = mod._modules[p]  # type: ignore[assignment]
        cast = dtype if dtype is not None and t.is_floating_point() else t.dtype
        mod.register_buffer(leaf, torch.empty(t.shape, dtype=cast, device="meta"))
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module" and n.target == InputGuard.NAME:
            env[n] = env[n.args[0]]  # the copy is what the guard runs: without the guard itself
            continue
        env[n] = graph.node_copy(n, lambda a: env[a])
    return fx.GraphModule(root, graph)


class InputGuard(nn.Module):
    """The first node of a rebuilt graph: checks each new input shape on ``meta`` (see the module docstring),
    then hands the graph a copy of its input."""

    NAME = "_input_guard"

    def __init__(self, shadow: fx.GraphModule, expected: Sequence[int | None] | None = None) -> None:
        super().__init__()
        self._shadows = {torch.float32: shadow}  # a dict: not registered as submodules (.to(), state_dict skip it)
        self.expected = None if expected is None else tuple(expected)
        """The exported input shape (None for a dynamic dimension; the batch is always free), if known."""
        self._checked: set[tuple[tuple[int, ...], torch.dtype]] = set()
        self._lock = threading.Lock()

    def check(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> None:
        """Refuse an input shape the graph cannot take or that asks for too much (cached when it passes)."""
        key = (tuple(int(s) for s in shape), dtype)
        if key in self._checked:
            return
        with self._lock:
            if self.expected is not None and (
                len(key[0]) != len(self.expected)
                or any(e is not None and s != e for s, e in zip(key[0][1:], self.expected[1:]))
            ):
                want = ", ".join("N" if i == 0 or e is None else str(e) for i, e in enumerate(self.expected))
                raise GraphRefused(f"the model takes inputs of shape ({want}), got {key[0]}")
            if dtype not in self._shadows and dtype in INPUT_DTYPES:
                self._shadows[dtype] = meta_copy(self._shadows[torch.float32], dtype)
            meta_check(self._shadows.get(dtype, self._shadows[torch.float32]), key[0], dtype)
            self._checked.add(key)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise GraphRefused(f"the model takes a tensor, got {type(x).__name__}")
        self.check(x.shape, x.dtype)
        return x.clone()

    def __deepcopy__(self, memo: dict) -> InputGuard:
        clone = InputGuard(self._shadows[torch.float32], self.expected)  # shadows hold no data, never change
        clone._checked = set(self._checked)
        memo[id(self)] = clone
        return clone


def guard(gm: fx.GraphModule, expected: Sequence[int | None] | None = None) -> fx.GraphModule:
    """Insert an :class:`InputGuard` after the single input of a checked graph (layer 3 for every forward)."""
    (ph,) = [n for n in gm.graph.nodes if n.op == "placeholder"]
    gm.add_submodule(InputGuard.NAME, InputGuard(meta_copy(gm), expected))
    with gm.graph.inserting_after(ph):
        g = gm.graph.call_module(InputGuard.NAME, (ph,))
    ph.replace_all_uses_with(g, delete_user_cb=lambda user: user is not g)
    gm.graph.lint()
    gm.recompile()
    return gm
