"""TorchScript archives (``torch.jit.save``): members checked by torch's layout, code members refused if they run
code while loading or nest too deeply, the forward graph limited to allow-listed node kinds and to cheap constant
folding before ``torch.jit.freeze``; the scripted module is never called but translated into an fx graph of
``torch.ops.aten`` calls (:func:`script_to_fx`)."""

from __future__ import annotations

import ast
import io
import operator
import re
import warnings
import zipfile
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .errors import ModelLoadError, err, mib
from .files import rezip, zip_root
from .tensors import check_pickle, check_tensors

MAX_CODE_NESTING = 100
"""Deepest bracket nesting in a TorchScript code member (torch's parser recurses)."""
MAX_CODE_DEPTH = 200
"""Deepest Python syntax tree of a TorchScript code member (long operator chains nest as deeply as brackets)."""
MAX_CODE_BYTES = 16 << 20


# --- TorchScript -> fx -------------------------------------------------------------------------------------

# Node kinds the inlined forward graph may contain (live or dead code) before torch.jit.freeze runs:
# pure tensor / scalar / list ops only; nothing that touches files, processes or the network.
_TS_ALLOWED = {
    "aten::" + k for k in (
        "conv1d conv2d conv3d _convolution linear addmm mm matmul t relu relu_ hardtanh hardtanh_ batch_norm "
        "max_pool1d max_pool2d avg_pool1d avg_pool2d adaptive_avg_pool1d adaptive_avg_pool2d flatten view "
        "reshape dropout dropout_ feature_dropout feature_dropout_ alpha_dropout add add_ sub mul div div_ mean "
        "sum cat contiguous size dim len format warn __getitem__ __is__ __isnot__ __not__ __and__ __or__ "
        "__contains__ eq ne lt le gt ge floordiv remainder neg Int Float Bool append list chunk transpose "
        "permute squeeze unsqueeze sigmoid silu_ gelu layer_norm __range_length __derive_index bernoulli_ "
        "empty zeros ones repeat expand select slice split all any is_grad_enabled is_autocast_enabled"
    ).split()
} | {
    "prim::" + k for k in (
        "Constant GetAttr If Loop ListConstruct ListUnpack TupleConstruct TupleUnpack TupleIndex "
        "RaiseException unchecked_cast Uninitialized NumToTensor device dtype is_nested requires_grad type "
        "min max isinstance"
    ).split()
}  # fmt: skip
# aten kinds translated one-to-one into fx calls of torch.ops.aten (in-place ones as their functional form).
_TS_EMIT = {
    "aten::" + k for k in (
        "_convolution conv2d linear relu relu_ hardtanh hardtanh_ batch_norm max_pool2d avg_pool2d "
        "adaptive_avg_pool2d flatten view reshape add add_ sub mul mean cat contiguous size chunk split transpose "
        "permute slice"
    ).split()
}  # fmt: skip
"""(Each becomes an fx call that must then be on :data:`ttfs_core.untrusted.allowlist.ALLOWED`.)"""
_TS_HINT = (
    "supported: conv2d, linear, relu, hardtanh, batch_norm, max/avg/adaptive pooling, "
    "flatten/view/reshape, dropout (eval), add/sub/mul, mean, cat, list/tuple plumbing"
)
_TS_DROPOUT = {f"aten::{k}" for k in ("dropout", "dropout_", "feature_dropout", "feature_dropout_", "alpha_dropout")}
_TS_FIXED = {"data.pkl", "constants.pkl", "version", ".data/version", "byteorder", ".data/serialization_id"}
_TS_CODE = re.compile(r"code/(?:[\w.\-]+/)*[\w.\-]+\.py")
_TS_DROP = re.compile(  # not needed to load (debug info, extra files, torch.jit.trace's example inputs): left out
    r"code/(?:[\w.\-]+/)*[\w.\-]+\.py\.debug_pkl|extra/.+|traced_inputs\.pkl|traced_inputs/\d+"
)
_TS_STORAGE = re.compile(r"(?:data|constants)/\d+")
_BRACKETS = re.compile(r"[()\[\]{}]")


def load_torchscript(zf: zipfile.ZipFile | None) -> fx.GraphModule:
    assert zf is not None
    keep = _check_torchscript_archive(zf, zip_root(zf))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(io.BytesIO(rezip(zf, keep)), map_location="cpu")
    except Exception as e:  # noqa: BLE001
        raise err("cannot load the TorchScript archive", e) from e
    check_tensors(module.state_dict().items(), "TorchScript")
    return script_to_fx(module)


def _check_torchscript_archive(zf: zipfile.ZipFile, root: str) -> list[str]:
    """Classify members by torch's layout (code, pickles, storages); check each kind; return those to load."""
    keep = []
    for name in zf.namelist():
        member = name[len(root) + 1 :]
        if _TS_DROP.fullmatch(member) or name.endswith("/"):
            continue
        if _TS_CODE.fullmatch(member):
            _check_ts_code(member, zf.read(name))
        elif member.endswith(".pkl") and member in _TS_FIXED:
            check_pickle(zf.read(name), f"TorchScript {member}")
        elif member not in _TS_FIXED and not _TS_STORAGE.fullmatch(member):
            raise err(f"TorchScript archive member {member[:80]!r} is not part of torch's layout (refused)")
        keep.append(name)
    return keep


def _check_ts_code(member: str, raw: bytes) -> None:
    """A TorchScript code member: no load-time code (``__setstate__``), bounded nesting, valid syntax."""
    if len(raw) > MAX_CODE_BYTES:
        raise err(f"TorchScript code {member[:80]!r} is larger than {mib(MAX_CODE_BYTES)}")
    if b"__setstate__" in raw:
        raise err(
            "TorchScript archive defines __setstate__ (code that runs while loading), which is "
            "refused; re-save with torch.export or as a state dict",
            hint=None,
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise err(f"TorchScript code {member[:80]!r} is not UTF-8 text") from None
    depth = deepest = 0
    for m in _BRACKETS.finditer(text):
        depth = depth + 1 if m.group() in "([{" else max(depth - 1, 0)
        deepest = max(deepest, depth)
    if deepest > MAX_CODE_NESTING:
        raise err(
            f"TorchScript code {member[:80]!r} nests brackets {deepest} deep (the limit is {MAX_CODE_NESTING}; "
            "torch's parser recurses and crashes on such files)"
        )
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        raise err(f"TorchScript code {member[:80]!r} is not valid TorchScript source", e) from None
    if _ast_depth(tree) > MAX_CODE_DEPTH:
        raise err(f"TorchScript code {member[:80]!r} nests expressions more than {MAX_CODE_DEPTH} levels deep")


def _ast_depth(tree: ast.AST) -> int:
    """Depth of a syntax tree, computed without recursion."""
    deepest, todo = 0, [(tree, 1)]
    while todo:
        node, d = todo.pop()
        deepest = max(deepest, d)
        if d <= MAX_CODE_DEPTH:
            todo.extend((child, d + 1) for child in ast.iter_child_nodes(node))
    return deepest


def script_to_fx(module: torch.jit.ScriptModule) -> fx.GraphModule:
    """Translate a TorchScript module into an fx GraphModule of ``torch.ops.aten`` calls (never runs it)."""
    try:
        graph = module.forward.graph.copy()
    except Exception as e:  # noqa: BLE001
        raise err("TorchScript module has no forward method", e, hint=None) from e
    torch._C._jit_pass_inline(graph)
    _check_ts_kinds(graph.block())
    _check_ts_folding(graph)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frozen = torch.jit.freeze(module.eval(), optimize_numerics=False)
    except Exception as e:  # noqa: BLE001
        raise err("cannot freeze the TorchScript module", e, hint=None) from e
    graph = frozen.forward.graph.copy()
    torch._C._jit_pass_inline(graph)
    try:
        return _TSConverter(graph).run()
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001
        raise err("cannot translate the TorchScript graph to fx", f"{type(e).__name__}: {e}", hint=None) from e


# What torch.jit.freeze may compute while loading: its constant propagation runs every op whose inputs are all
# stored values. Views and scalar arithmetic cost nothing; an elementwise op with one stored tensor costs its size;
# anything else on stored values alone (a product of two stored matrices, a concatenation of one weight a thousand
# times, two stored tensors broadcast against each other) can ask for minutes and gigabytes, and is refused.
_TS_FOLD_VIEWS = {"aten::" + k for k in (
    "view reshape flatten contiguous t transpose permute squeeze unsqueeze select slice chunk split __getitem__ "
    "size dim len detach"
).split()}  # fmt: skip
_TS_FOLD_ELEMENTWISE = {"aten::" + k for k in "add add_ sub mul div div_ neg relu relu_ hardtanh hardtanh_".split()}


def _check_ts_folding(graph: Any) -> None:
    """Refuse a TorchScript graph in which freezing would compute more than views and cheap elementwise ops on
    stored values (the graph is inspected, never run)."""
    data = {v.unique() for v in list(graph.inputs())[1:]}  # values that depend on forward()'s inputs

    def visit(block: Any) -> None:
        for n in block.nodes():
            for b in n.blocks():
                visit(b)
            depends = any(v.unique() in data for v in n.inputs()) or any(
                o.unique() in data for b in n.blocks() for o in b.outputs()
            )
            if depends:
                data.update(o.unique() for o in n.outputs())
                continue
            kind = n.kind()
            if kind.startswith("prim::") or not any(_ts_is_tensor(o.type()) for o in n.outputs()):
                continue
            tensors_in = sum(_ts_is_tensor(v.type()) for v in n.inputs())
            if kind in _TS_FOLD_VIEWS or (kind in _TS_FOLD_ELEMENTWISE and tensors_in <= 1):
                continue
            raise err(
                f"TorchScript node {kind} computes on stored values only, which torch.jit.freeze would run while "
                "loading (refused: fold such constants before saving, or export with torch.export)",
                hint=None,
            )

    visit(graph.block())


def _ts_is_tensor(t: Any) -> bool:
    kind = t.kind()
    if kind in ("ListType", "OptionalType"):
        return _ts_is_tensor(t.getElementType())
    if kind == "TupleType":
        return any(_ts_is_tensor(e) for e in t.elements())
    return kind == "TensorType"


def _check_ts_kinds(block: Any) -> None:
    for n in block.nodes():
        if n.kind() not in _TS_ALLOWED:
            raise err(f"unsupported TorchScript node kind {n.kind()!r}", hint=_TS_HINT)
        for b in n.blocks():
            _check_ts_kinds(b)


def _inplace(kind: str) -> bool:
    name = kind.split("::", 1)[1]
    return name.endswith("_") and not name.startswith("__")


def _schema(n: Any) -> Any:
    s = n.schema()
    return None if s == "(no schema)" else torch._C.parse_schema(s)


def _writes(n: Any) -> bool:
    """Whether the node (or anything in its blocks) mutates one of its inputs (schema alias info)."""
    s = _schema(n)
    if s is not None and any(a.alias_info is not None and a.alias_info.is_write for a in s.arguments):
        return True
    return any(_writes(m) for b in n.blocks() for m in b.nodes())


def _is_view(n: Any) -> bool:
    s = _schema(n)
    return s is not None and any(r.alias_info is not None and not r.alias_info.is_write for r in s.returns)


class _TSConverter:
    """Walks a frozen, inlined TorchScript graph and emits the equivalent fx graph."""

    def __init__(self, graph: Any) -> None:
        self.ts = graph
        self.fx = fx.Graph()
        self.root = nn.Module()
        self.env: dict[int, Any] = {}
        self.scalar_tensors: set[int] = set()  # outputs of prim::NumToTensor (an int posing as a tensor)
        self.n_const = 0

    def run(self) -> fx.GraphModule:
        inputs = list(self.ts.inputs())
        if inputs and inputs[0].uses():
            raise err("TorchScript forward still reads module attributes after freezing", hint=None)
        names = ["x"] if len(inputs) == 2 else [f"x{i}" for i in range(len(inputs) - 1)]
        for v, name in zip(inputs[1:], names):
            self.env[v.unique()] = self.fx.placeholder(name)
        for node in self._live_nodes():
            self._convert(node)
        outs = [self.env[v.unique()] for v in self.ts.return_node().inputs()]
        self.fx.output(outs[0] if len(outs) == 1 else tuple(outs))
        self.fx.eliminate_dead_code()
        self.fx.lint()
        gm = fx.GraphModule(self.root, self.fx, class_name="TorchScriptGraph")
        return gm.eval()

    def _live_nodes(self) -> list[Any]:
        """Nodes the outputs depend on, plus every mutation; pure dead code such as shape checks
        (an ``if`` whose branch only raises) is dropped."""
        needed = {v.unique() for v in self.ts.return_node().inputs()}
        live = []
        for n in reversed(list(self.ts.nodes())):
            if {o.unique() for o in n.outputs()} & needed or _writes(n):
                live.append(n)
                needed.update(v.unique() for v in n.inputs())
        return live[::-1]

    def _val(self, v: Any) -> Any:
        return self.env[v.unique()]

    def _convert(self, n: Any) -> None:
        kind, ins, outs = n.kind(), list(n.inputs()), list(n.outputs())
        vals = [self._val(v) for v in ins]
        if kind == "prim::Constant":
            self.env[outs[0].unique()] = self._constant(outs[0])
        elif kind in ("prim::ListConstruct", "prim::TupleConstruct"):
            self.env[outs[0].unique()] = list(vals) if kind == "prim::ListConstruct" else tuple(vals)
        elif kind in ("prim::ListUnpack", "prim::TupleUnpack"):
            for i, o in enumerate(outs):
                self.env[o.unique()] = self._index(vals[0], i)
        elif kind in ("prim::TupleIndex", "aten::__getitem__"):
            self.env[outs[0].unique()] = self._index(vals[0], vals[1])
        elif kind in ("prim::unchecked_cast", "prim::NumToTensor"):
            self.env[outs[0].unique()] = vals[0]
            if kind == "prim::NumToTensor":
                self.scalar_tensors.add(outs[0].unique())
        elif kind == "aten::Int" and ins[0].unique() in self.scalar_tensors:
            self.env[outs[0].unique()] = vals[0]
        elif kind in _TS_DROPOUT:
            if vals[2] is not False:
                raise err(f"TorchScript {kind} in training mode is not supported", hint=None)
            self.env[outs[0].unique()] = vals[0]
            if kind.endswith("_"):
                self.env[ins[0].unique()] = vals[0]
        elif kind == "aten::append" and isinstance(vals[0], list):
            vals[0].append(vals[1])  # fx copies list arguments, so earlier users keep their snapshot
            self.env[outs[0].unique()] = vals[0]
        elif kind in _TS_EMIT:
            if _inplace(kind) and ins[0].node().kind() != "prim::Param" and _is_view(ins[0].node()):
                base = next(iter(ins[0].node().inputs()))
                if len(base.uses()) > 1:
                    raise err(f"TorchScript {kind} writes through a view of a tensor used elsewhere", hint=None)
            self._emit(n, ins, vals, outs)
        else:
            raise err(f"unsupported TorchScript node kind {kind!r}", hint=_TS_HINT)

    def _index(self, seq: Any, i: Any) -> Any:
        if isinstance(seq, (list, tuple)) and isinstance(i, int):
            return seq[i]
        return self.fx.call_function(operator.getitem, (seq, i))

    def _constant(self, v: Any) -> Any:
        value = v.toIValue()
        if not isinstance(value, torch.Tensor):
            if isinstance(value, (torch.ScriptObject, torch.nn.Module)):
                raise err(f"TorchScript constant of type {v.type()} is not supported", hint=None)
            return value
        return self.fx.get_attr(self._register(v.debugName(), value.detach()))

    def _register(self, debug_name: str, t: torch.Tensor) -> str:
        """Attach a weight to the root module under its original name (``features.0.weight``) if safe."""
        parts = debug_name.split(".")
        if parts[0] == "self":
            parts = parts[1:]
        value = nn.Parameter(t, requires_grad=False) if t.is_floating_point() else t
        if parts and all(re.fullmatch(r"\w+", p) and not p.startswith("_") for p in parts):
            try:
                mod = self.root
                for p in parts[:-1]:
                    if not hasattr(mod, p):
                        mod.add_module(p, nn.Module())
                    mod = getattr(mod, p)
                    if not isinstance(mod, nn.Module) or type(mod) is not nn.Module:
                        raise KeyError(p)
                if not hasattr(mod, parts[-1]):
                    self._attach(mod, parts[-1], value)
                    return ".".join(parts)
            except (KeyError, AttributeError, TypeError):
                pass
        name = f"_tensor_constant{self.n_const}"
        self.n_const += 1
        self._attach(self.root, name, value)
        return name

    @staticmethod
    def _attach(mod: nn.Module, name: str, value: torch.Tensor) -> None:
        if isinstance(value, nn.Parameter):
            mod.register_parameter(name, value)
        else:
            mod.register_buffer(name, value)

    def _emit(self, n: Any, ins: list[Any], vals: list[Any], outs: list[Any]) -> None:
        kind = n.kind()
        schema = torch._C.parse_schema(n.schema())
        name, overload = schema.name.split("::", 1)[1], schema.overload_name or "default"
        if kind == "aten::_convolution" and vals[6] is False and isinstance(vals[1], fx.Node):
            dims = self._tensor_dim(vals[1])
            if dims in (3, 4, 5):  # -> conv1d/2d/3d(input, weight, bias, stride, padding, dilation, groups)
                op = getattr(torch.ops.aten, f"conv{dims - 2}d").default
                node = self.fx.call_function(op, (*vals[:6], vals[8]))
                self.env[outs[0].unique()] = node
                return
        if kind == "aten::batch_norm" and vals[5] is True:
            vals = [*vals[:5], False, *vals[6:]]  # eval semantics, as for the module itself
        inplace = _inplace(kind)
        op = getattr(getattr(torch.ops.aten, name[:-1] if inplace else name), overload)
        args = tuple(v for a, v in zip(schema.arguments, vals) if not a.kwarg_only)
        kwargs = {a.name: v for a, v in zip(schema.arguments, vals) if a.kwarg_only}
        node = self.fx.call_function(op, args, kwargs)
        if len(outs) == 1:
            self.env[outs[0].unique()] = node
        else:
            for i, o in enumerate(outs):
                self.env[o.unique()] = self._index(node, i)
        if inplace:
            self.env[ins[0].unique()] = node  # later reads of the mutated value see the result

    def _tensor_dim(self, node: fx.Node) -> int | None:
        if node.op != "get_attr":
            return None
        t = self.root
        for p in str(node.target).split("."):
            t = getattr(t, p)
        return t.dim() if isinstance(t, torch.Tensor) else None
