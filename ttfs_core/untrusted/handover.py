"""The hand-over between the sandboxed child and the caller: the child describes the parsed model as plain data
(``<8-byte length><JSON description><safetensors bytes>``), and the caller rebuilds it from that alone, as an fx
graph of allow-listed calls or as a named architecture, validating the description like any other input."""

from __future__ import annotations

import builtins
import json
import keyword
import math
import re
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from . import allowlist
from .errors import err
from .tensors import ST_DTYPES, check_tensor, check_tensors, load_arch, read_safetensors, write_safetensors

MAX_GRAPH_NODES = 200_000


# --- hand-over: the child describes the model as plain data, the caller rebuilds it ---------------------------

_HANDOVER_FORMAT = 1
_MAX_DESCRIPTION = 256 << 20
_GRAPH_CLASSES = {"GraphModule", "TorchScriptGraph"}
_MEMORY_FORMATS = {"contiguous_format", "channels_last", "channels_last_3d", "preserve_format"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,79}")
_LABEL = re.compile(r"[\w.\[\]'\- ]{0,200}")
_RESERVED_NAMES = {"self", "torch", "fx", "operator", "_operator", "math", "inf", "nan", "device"} | set(dir(builtins))


def pack(desc: dict[str, Any], tensors: dict[str, torch.Tensor]) -> bytes:
    """Child side: ``<8-byte length><JSON description><safetensors bytes>``."""
    check_tensors(tensors.items(), "")
    head = json.dumps({**desc, "format": _HANDOVER_FORMAT}, allow_nan=False).encode()
    return len(head).to_bytes(8, "little") + head + write_safetensors(tensors)


def rebuild(payload: bytes, arch: str | None, num_classes: int | None) -> nn.Module:
    """Caller side: the model from the child's (untrusted) plain-data description; nothing in it is run."""
    what = "the sandboxed parser's output"
    n = int.from_bytes(payload[:8], "little") if len(payload) >= 8 else -1
    if not 0 < n <= min(len(payload) - 8, _MAX_DESCRIPTION):
        raise err(f"corrupt {what}", hint=None)
    try:
        desc = json.loads(payload[8 : 8 + n].decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise err(f"corrupt {what}", e, hint=None) from None
    if not isinstance(desc, dict) or desc.get("format") != _HANDOVER_FORMAT:
        raise err(f"corrupt {what}: unknown format", hint=None)
    tensors = read_safetensors(payload[8 + n :], what, set(ST_DTYPES))
    if desc.get("kind") == "state_dict":
        names = desc.get("names")
        if (
            not isinstance(names, list)
            or sorted(str(k) for k in names) != sorted(tensors)
            or len(set(names)) != len(names)
        ):
            raise err(f"corrupt {what}: tensor names", hint=None)
        return load_arch(arch, {k: tensors[k] for k in names}, num_classes)
    if desc.get("kind") == "graph":
        return _build_graph(desc, tensors)
    raise err(f"corrupt {what}: unknown kind", hint=None)


def describe_graph(gm: fx.GraphModule) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Child side: an fx graph of aten/operator calls as JSON nodes, plus the tensors its get_attr nodes read."""
    output_mode = _output_mode(gm)
    params = dict(gm.named_parameters(remove_duplicate=False))
    tensors: dict[str, torch.Tensor] = {}
    kinds: dict[str, dict[str, bool]] = {}
    nodes: list[dict[str, Any]] = []
    index: dict[fx.Node, int] = {}
    inputs: list[list[int | None]] = []
    for n in gm.graph.nodes:
        if n.op == "call_module" and n.target == "_guards_fn" and not n.users:
            continue  # generated code: the caller writes its own guards from "inputs"
        entry: dict[str, Any] = {"op": n.op, "name": n.name}
        if n.op == "placeholder":
            entry["target"] = str(n.target)
            val = n.meta.get("val") if output_mode != "as_is" else None
            if isinstance(val, torch.Tensor):  # the exported shape; None for a dynamic dimension
                inputs.append([s if type(s) is int else None for s in val.shape])
        elif n.op == "get_attr":
            target = str(n.target)
            t = _fetch_attr(gm, target)
            check_tensor(target, t)
            tensors[target] = t
            kinds[target] = {"parameter": target in params, "requires_grad": bool(t.requires_grad)}
            entry["target"] = target
        elif n.op == "call_function":
            entry["target"] = _target_name(n.target, n.name)
            entry["args"] = _encode(list(n.args), index)
            entry["kwargs"] = {str(k): _encode(v, index) for k, v in n.kwargs.items()}
        elif n.op == "output":
            value = n.args[0]
            if output_mode == "leaf":
                value = value[0]
            elif output_mode == "tuple":
                value = tuple(value)
            entry["args"] = _encode(value, index)
        else:
            raise err(f"graph node {n.name} ({n.op} {n.target}) is not supported", hint=None)
        entry.update(_module_label(n))
        index[n] = len(nodes)
        nodes.append(entry)
    cls_name = type(gm).__name__ if type(gm).__name__ in _GRAPH_CLASSES else "GraphModule"
    desc = {"kind": "graph", "class_name": cls_name, "tensors": kinds, "nodes": nodes}
    if inputs:
        desc["inputs"] = inputs
    return desc, tensors


def _module_label(n: fx.Node) -> dict[str, list[str]]:
    """The calling module (path, class name) that torch.export recorded, for error messages; {} if none."""
    try:
        path, cls = list(n.meta.get("nn_module_stack", {}).values())[-1]
    except (IndexError, TypeError, ValueError, AttributeError):
        return {}
    cls = cls if isinstance(cls, str) else getattr(cls, "__qualname__", str(cls))
    return {"module": [str(path), str(cls)]}


def _output_mode(gm: fx.GraphModule) -> str:
    """How a torch.export graph's flat inputs/outputs map to forward()'s ('as_is' for plain fx graphs)."""
    info = getattr(gm.graph._codegen, "pytree_info", None)
    if info is None:
        return "as_is"
    in_spec, out_spec = info.in_spec, info.out_spec
    if in_spec is not None:
        args, kwargs = in_spec.children_specs if in_spec.num_children == 2 else (in_spec, None)
        if (kwargs is not None and kwargs.num_leaves) or not all(c.is_leaf() for c in args.children_specs):
            raise err("the exported program must take its tensors as positional arguments", hint=None)
    if out_spec is None or out_spec.is_leaf():
        return "leaf"
    if out_spec.type in (tuple, list) and all(c.is_leaf() for c in out_spec.children_specs):
        return "tuple"
    raise err("the exported program must return a tensor or a tuple of tensors", hint=None)


def _fetch_attr(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _target_name(target: Any, node: str) -> str:
    name = allowlist.target_name(target)
    if not allowlist.is_allowed(name):
        raise err(f"graph node {node} calls {name}, which is not supported; the graph may call: "
                   f"{allowlist.supported_list()}", hint=None)  # fmt: skip
    return name


def _encode(value: Any, index: dict[fx.Node, int]) -> Any:
    """A node argument as JSON: nodes by index, tuples and special values tagged."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, fx.Node):
        if value not in index:
            raise err(f"graph argument {value.name} refers to a node that is not handed over", hint=None)
        return {"node": index[value]}
    if isinstance(value, list):
        return [_encode(v, index) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, index) for v in value]}
    for kind, tag in ((torch.dtype, "dtype"), (torch.memory_format, "memory_format"), (torch.layout, "layout")):
        if isinstance(value, kind):
            return {tag: str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    raise err(f"graph argument of type {type(value).__name__} is not supported", hint=None)


def _decode(value: Any, nodes: list[fx.Node], depth: int = 0) -> Any:
    """Inverse of :func:`_encode`, accepting only the tags it writes."""
    if depth > 32:
        raise ValueError("arguments nested too deeply")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_decode(v, nodes, depth + 1) for v in value]
    if isinstance(value, dict) and len(value) == 1:
        ((tag, v),) = value.items()
        if tag == "node" and type(v) is int and 0 <= v < len(nodes):
            return nodes[v]
        if tag == "tuple" and isinstance(v, list):
            return tuple(_decode(x, nodes, depth + 1) for x in v)
        if tag == "float" and v in ("inf", "-inf", "nan"):
            return float(v)
        if tag == "dtype" and isinstance(v, str) and isinstance(getattr(torch, v, None), torch.dtype):
            return getattr(torch, v)
        if tag == "memory_format" and v in _MEMORY_FORMATS:
            return getattr(torch, v)
        if tag == "layout" and v == "strided":
            return torch.strided
        if tag == "device" and v == "cpu":
            return torch.device("cpu")
    raise ValueError(f"unsupported argument {str(value)[:60]}")


def _build_graph(desc: dict[str, Any], tensors: dict[str, torch.Tensor]) -> fx.GraphModule:
    """Caller side: a GraphModule from the description (targets resolved from allow-lists, names validated)."""
    try:
        kinds, raw_nodes = desc["tensors"], desc["nodes"]
        if not isinstance(kinds, dict) or set(kinds) != set(tensors):
            raise ValueError("the tensors do not match their description")
        if not isinstance(raw_nodes, list) or not 0 < len(raw_nodes) <= MAX_GRAPH_NODES:
            raise ValueError("bad node list")
        root = nn.Module()
        for name, t in tensors.items():
            _attach_tensor(root, name, t, kinds[name])
        graph = fx.Graph()
        nodes: list[fx.Node] = []
        for i, nd in enumerate(raw_nodes):
            node = _build_node(graph, nd, nodes, tensors, last=i == len(raw_nodes) - 1)
            nodes.append(node)
        graph.lint()
        allowlist.check_graph(graph)  # before fx generates any code from it
        exported = _exported_shape(desc.get("inputs"))
        if exported is not None and exported[0] is not None:
            _free_batch(graph, exported[0])
        cls_name = desc.get("class_name") if desc.get("class_name") in _GRAPH_CLASSES else "GraphModule"
        gm = allowlist.guard(fx.GraphModule(root, graph, class_name=str(cls_name)), exported).eval()
    except allowlist.GraphRefused as e:
        raise err("the model's graph is refused", e, hint=None) from None
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as e:
        raise err("the sandboxed parser's output is not a valid graph", f"{type(e).__name__}: {e}", hint=None) from e
    if exported is not None and all(s is not None for s in exported):
        _check_batches(gm, exported)
    return gm


def _exported_shape(inputs: Any) -> tuple[int | None, ...] | None:
    """The input shape a torch.export program was exported for (None: a dynamic dimension), if it says."""
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], list):
        return None
    shape = inputs[0]
    if not 1 <= len(shape) <= 5 or not all(s is None or (type(s) is int and 0 < s < 1 << 31) for s in shape):
        raise ValueError("bad input shape")
    return tuple(shape)


_RESHAPES = ("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default")


def _free_batch(graph: fx.Graph, batch: int) -> None:
    """A program exported on a fixed batch writes that batch into its reshapes (``x.view(x.size(0), -1)`` becomes
    ``view(x, [1, 400])``): let them read the input's batch instead, so that any batch runs."""
    (ph,) = [n for n in graph.nodes if n.op == "placeholder"]
    size = None
    for n in list(graph.nodes):
        if n.op != "call_function" or allowlist.target_name(n.target) not in _RESHAPES or len(n.args) != 2:
            continue
        shape = n.args[1]
        if isinstance(shape, (list, tuple)) and shape and type(shape[0]) is int and shape[0] == batch:
            if size is None:
                with graph.inserting_after(ph):
                    size = graph.call_function(torch.ops.aten.sym_size.int, (ph, 0))
            n.args = (n.args[0], [size, *shape[1:]])


def _check_batches(gm: fx.GraphModule, shape: tuple[int, ...]) -> None:
    """Shape-check an exported program at its own batch and at another one, on ``meta``, before it ever runs."""
    guard = gm.get_submodule(allowlist.InputGuard.NAME)
    try:
        guard.check(shape)
    except allowlist.GraphRefused as e:
        raise err(f"the model's graph is refused on its own input shape {shape}", e, hint=None) from None
    other = (shape[0] + 1, *shape[1:])
    try:
        guard.check(other)
    except allowlist.GraphRefused as e:
        raise err(
            f"the program was exported for a batch of {shape[0]} and cannot run a batch of {other[0]}",
            f"{e}; export it with a dynamic batch: torch.export.export(model, (x,), "
            "dynamic_shapes=({0: torch.export.Dim('batch')},))",
            hint=None,
        ) from None


def _build_node(graph: fx.Graph, nd: Any, nodes: list[fx.Node], tensors: dict[str, Any], last: bool) -> fx.Node:
    if not isinstance(nd, dict):
        raise ValueError("a node is not an object")
    op = nd.get("op")
    if (op == "output") != last:
        raise ValueError("the output node must come last, once")
    name = nd.get("name") if _is_plain_name(nd.get("name")) else None  # fx makes node names unique and legal
    if op == "placeholder":
        taken = {n.target for n in nodes if n.op == "placeholder"}
        target = nd.get("target")  # becomes a parameter name of the generated forward()
        node = graph.placeholder(target if _is_plain_name(target) and target not in taken else f"x{len(nodes)}")
    elif op == "get_attr":
        if nd.get("target") not in tensors:
            raise ValueError("get_attr of an unknown tensor")
        node = graph.create_node("get_attr", nd["target"], name=name)
    elif op == "call_function":
        target = nd.get("target")
        if not isinstance(target, str) or not allowlist.is_allowed(target):
            raise allowlist.GraphRefused(
                f"node {name or '?'} calls {str(target)[:60]!r}, which is not supported (only operators the "
                f"converter can lower may run); the graph may call: {allowlist.supported_list()}"
            )
        args, kwargs = _decode(nd.get("args"), nodes), nd.get("kwargs")
        if not isinstance(args, list) or not isinstance(kwargs, dict) or not all(map(_is_keyword, kwargs)):
            raise ValueError("bad call arguments")
        kwargs = {k: _decode(v, nodes) for k, v in kwargs.items()}
        node = graph.create_node("call_function", allowlist.resolve(target), tuple(args), kwargs, name=name)
    elif op == "output":
        node = graph.output(_decode(nd.get("args"), nodes))
    else:
        raise ValueError(f"node op {str(op)[:20]!r} is not supported")
    label = nd.get("module")
    if isinstance(label, list) and len(label) == 2 and all(isinstance(s, str) and _LABEL.fullmatch(s) for s in label):
        node.meta["nn_module_stack"] = {"module": (label[0], label[1])}
    return node


def _is_keyword(name: Any) -> bool:
    """A keyword-argument name (checked against the operator's schema by the allow-list)."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None and not keyword.iskeyword(name)


def _is_plain_name(name: Any) -> bool:
    """An identifier that shadows nothing the generated code uses (keywords, builtins, ``self``, ``torch``...)."""
    return (
        isinstance(name, str)
        and _NAME.fullmatch(name) is not None
        and not keyword.iskeyword(name)
        and name not in _RESERVED_NAMES
    )


def _attach_tensor(root: nn.Module, name: str, t: torch.Tensor, kind: Any) -> None:
    """Register a tensor at its dotted path (``features.0.weight``) below ``root``, creating plain submodules."""
    parts = name.split(".")
    if not all(re.fullmatch(r"[A-Za-z0-9_]{1,80}", p) and not p.startswith("__") for p in parts) or len(parts) > 32:
        raise ValueError(f"tensor name {name[:60]!r} is not allowed")
    if not isinstance(kind, dict):
        raise ValueError("bad tensor description")
    mod = root
    for p in parts[:-1]:
        if p not in mod._modules:
            mod.add_module(p, nn.Module())
        mod = mod._modules[p]  # type: ignore[assignment]
        if type(mod) is not nn.Module:
            raise ValueError(f"tensor name {name[:60]!r} is not allowed")
    if kind.get("parameter") is True and t.is_floating_point():
        mod.register_parameter(parts[-1], nn.Parameter(t, requires_grad=kind.get("requires_grad") is True))
    else:
        mod.register_buffer(parts[-1], t)


