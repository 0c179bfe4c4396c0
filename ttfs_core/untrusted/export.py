"""``torch.export`` programs (``.pt2``): the archive must hold exactly what ``torch.export.save`` writes for one
model, its weights dense CPU tensors inside their bytes, its ``model.json`` only allow-listed call targets, safe
strings and shape expressions that fit a small whitelist, before ``torch.export.load`` sees a canonical copy."""

from __future__ import annotations

import ast
import io
import json
import logging
import math
import re
import warnings
import zipfile
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from . import allowlist
from .errors import err
from .files import rezip, zip_members, zip_root
from .tensors import overlaps, safe_torch_load

_BRACKETS = re.compile(r"[()\[\]{}]")

# --- torch.export --------------------------------------------------------------------------------------------

_EXPORT_FIXED = {
    "archive_format", "archive_version", "byteorder", "version", ".data/version", ".data/serialization_id",
    ".format_version", ".storage_alignment", "models/model.json", "data/weights/model_weights_config.json",
    "data/constants/model_constants_config.json", "data/sample_inputs/model.pt",
}  # fmt: skip
_EXPORT_DATA = re.compile(r"data/weights/weight_\d+|data/constants/tensor_\d+|extra/[\w.\-]+")
_SAFE = re.compile(r"[A-Za-z0-9_.:+\-]*")
_PT2_DTYPES = {
    1: torch.uint8, 2: torch.int8, 3: torch.int16, 4: torch.int32, 5: torch.int64, 6: torch.float16,
    7: torch.float32, 8: torch.float64, 12: torch.bool, 13: torch.bfloat16,
}  # fmt: skip
_PT2_STRIDED = 7


def load_export(zf: zipfile.ZipFile | None) -> nn.Module:
    assert zf is not None
    root = zip_root(zf)
    members = zip_members(zf)
    if zf.read(f"{root}/archive_format").strip() != b"pt2":
        raise err("zip archive has an archive_format member but is not a torch.export .pt2 file")
    for m in sorted(members):
        if m.startswith("data/aotinductor/"):
            raise err(".pt2 holds AOTInductor native code, which is refused; save the program without it")
        if m not in _EXPORT_FIXED and not _EXPORT_DATA.fullmatch(m):
            raise err(
                f".pt2 member {m!r} is refused (pickled or custom objects, compiled code and "
                "multi-model packages are not loaded)"
            )
    for m in ("models/model.json", "data/weights/model_weights_config.json", "data/sample_inputs/model.pt"):
        if m not in members:
            raise err(f"incomplete .pt2 archive: {m!r} is missing")
    for cfg, folder in (("weights/model_weights_config.json", "weights"), ("constants/model_constants_config.json",
                                                                            "constants")):  # fmt: skip
        if f"data/{cfg}" in members:
            _check_payload_config(zf, root, f"data/{cfg}", f"data/{folder}")
    sample = safe_torch_load(zf.read(f"{root}/data/sample_inputs/model.pt"), "the .pt2 sample inputs")
    buf = io.BytesIO()
    torch.save(sample, buf)
    program = _json(zf.read(f"{root}/models/model.json"), "models/model.json")
    _check_program(program)
    replace = {
        f"{root}/models/model.json": json.dumps(program).encode(),
        f"{root}/data/sample_inputs/model.pt": buf.getvalue(),
    }
    log, capture = logging.getLogger("torch.export"), _FirstError()
    log.addHandler(capture)
    propagate, log.propagate = log.propagate, False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = torch.export.load(io.BytesIO(rezip(zf, replace=replace))).module()
    except Exception as e:  # noqa: BLE001
        raise err("cannot load the torch.export program", capture.error or e) from e
    finally:
        log.removeHandler(capture)
        log.propagate = propagate
    _check_loaded_graph(gm)
    return _export_eval(gm)


def _check_payload_config(zf: zipfile.ZipFile, root: str, cfg: str, folder: str) -> None:
    """Weights and constants of a .pt2: no pickles, and metadata describing dense, non-overlapping CPU tensors
    inside their stored bytes (torch builds them with ``as_strided``, or ``zeros`` for an empty member)."""
    entries = _json(zf.read(f"{root}/{cfg}"), cfg).get("config", {})
    if not isinstance(entries, dict):
        raise err(f"corrupt .pt2 archive: {cfg} has no config")
    names = set(zf.namelist())
    for fqn, meta in entries.items():
        path = str(meta.get("path_name", "")) if isinstance(meta, dict) else ""
        if not isinstance(meta, dict) or meta.get("use_pickle") or not re.fullmatch(r"(weight|tensor)_\d+", path):
            raise err(f".pt2 stores {fqn!r} as a pickle or custom object, which is refused")
        member = f"{root}/{folder}/{path}"
        if member not in names:
            raise err(f"incomplete .pt2 archive: {folder}/{path} (for {fqn!r}) is missing")
        _check_tensor_meta(fqn, meta.get("tensor_meta"), zf.getinfo(member).file_size)


def _check_tensor_meta(fqn: str, tm: Any, nbytes: int) -> None:
    def ints(values: Any) -> list[int]:
        if not isinstance(values, list) or len(values) > 16:
            raise ValueError
        out = [v.get("as_int") if isinstance(v, dict) else None for v in values]
        if not all(type(v) is int and 0 <= v < 1 << 48 for v in out):
            raise ValueError
        return out  # type: ignore[return-value]

    try:
        if not isinstance(tm, dict):
            raise ValueError
        dtype = _PT2_DTYPES[tm["dtype"]]
        sizes, strides, (offset,) = ints(tm["sizes"]), ints(tm["strides"]), ints([tm["storage_offset"]])
        layout, device = tm["layout"], tm["device"]
    except (KeyError, ValueError, TypeError):
        raise err(f".pt2 tensor {fqn!r} has unsupported or malformed metadata (dtype, sizes, strides)") from None
    if layout != _PT2_STRIDED or not isinstance(device, dict) or device.get("type") != "cpu":
        raise err(f".pt2 tensor {fqn!r} is not a dense CPU tensor; export the model on the CPU")
    if len(sizes) != len(strides):
        raise err(f".pt2 tensor {fqn!r} has {len(sizes)} sizes but {len(strides)} strides")
    if math.prod(sizes) == 0:
        return
    if overlaps(sizes, strides):
        raise err(
            f".pt2 tensor {fqn!r} of shape {tuple(sizes)} has overlapping strides {tuple(strides)} (refused: a few "
            "stored bytes posing as a large tensor)"
        )
    span = offset + sum((s - 1) * st for s, st in zip(sizes, strides)) + 1
    if span * dtype.itemsize > nbytes:
        raise err(f".pt2 tensor {fqn!r} of shape {tuple(sizes)} needs more than its {nbytes} stored bytes")


class _FirstError(logging.Handler):
    """Keeps the exception torch.export.load logs (it then raises an uninformative one)."""

    def __init__(self) -> None:
        super().__init__()
        self.error: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and self.error is None:
            self.error = record.exc_info[1]


def _json(raw: bytes, name: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise err(f"corrupt .pt2 archive: {name} is not JSON", e) from e


def _check_program(obj: Any, where: str = "model.json") -> None:
    """Validate model.json in place; drop node metadata and guards_code (both end up in exec'd code)."""
    if isinstance(obj, list):
        for v in obj:
            _check_program(v, where)
        return
    if isinstance(obj, str):
        if not _SAFE.fullmatch(obj):
            raise err(f".pt2 {where} contains a disallowed string {obj[:40]!r}")
        return
    if not isinstance(obj, dict):
        return
    for k in list(obj):
        v = obj[k]
        _check_program(k, where)
        if k == "metadata" and isinstance(v, dict):
            obj[k] = {}
        elif k == "guards_code":
            obj[k] = []
        elif k == "expr_str":
            _check_expr(v)
        elif k in ("in_spec", "out_spec", "context") and isinstance(v, str):
            try:
                inner = json.loads(v)
            except ValueError:
                inner = v
            _check_program(inner, k)
        elif k == "target" and isinstance(v, str):
            _check_target(v, _json_node_name(obj))
        else:
            _check_program(v, k)


def _check_target(target: str, node: str) -> None:
    """A model.json call target must be on the allow-list (checked before torch deserialises anything)."""
    name = "operator." + target.removeprefix("_operator.") if target.startswith("_operator.") else target
    if not allowlist.is_allowed(name.removeprefix("torch.ops.")):
        raise err(
            f".pt2 graph node {node} calls {target[:60]!r}, which is not supported (only operators the converter "
            f"can lower may run; the graph may call: {allowlist.supported_list()})",
            hint=None,
        )


def _json_node_name(obj: dict[str, Any]) -> str:
    """The name of a model.json node (its first output), for messages."""
    if isinstance(obj.get("name"), str):
        return obj["name"][:60]
    try:
        out = obj["outputs"][0]
        return str(next(iter(out.values()))["name"])[:60]
    except (KeyError, IndexError, TypeError, StopIteration, AttributeError):
        return "?"


# Shape expressions: torch writes sympy's srepr ("Add(Symbol('s0', positive=True, integer=True), Integer(1))");
# older files the infix form ("s0 + 1"). sympy reads them with eval, so each must first parse as a Python
# expression (ast.parse, which runs nothing) whose syntax tree holds only these nodes:
#   integer literals of up to 20 digits; symbols s0, s1...; + - * // % between them and unary + -;
#   Integer(INT) and Integer(-INT); Symbol('SYMBOL', ASSUMPTION=True|False, ...); FUNC(expr, ...) with FUNC below;
#   Pow(expr without Pow, Integer(0..8) or 0..8).
# No "**", "/", "!", floats, strings elsewhere, attributes, subscripts or other names. Bounded: 2,000 ASCII
# characters; brackets nested at most 30 deep (counted before the parser sees them); at most 30 nested calls,
# unary signs and right-hand operands (a left-associative chain such as "s0 + s1 + 1" counts once).
# Pow with a small literal exponent is what torch writes for a symbol used twice (H = W): 9**9**9 is not.
_EXPR_FUNCS = {
    "Add", "Mul", "FloorDiv", "CleanDiv", "CeilDiv", "Mod", "PythonMod", "Max", "Min", "Abs", "Eq", "Ne", "Lt",
    "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "Equality", "Unequality",
    "And", "Or", "Not",
}  # fmt: skip
_EXPR_ASSUMPTIONS = {
    "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "zero", "nonzero",
}  # fmt: skip
_EXPR_SYMBOL = re.compile(r"[a-z]+\d+")
_EXPR_INT = re.compile(r"\d{1,20}")
_EXPR_OPS = (ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Mod)
MAX_EXPR_CHARS = 2000
MAX_EXPR_DEPTH = 30
MAX_EXPR_POWER = 8


def _check_expr(expr: object) -> None:
    """Refuse a symbolic shape expression outside the whitelist above (sympify would eval it)."""
    try:
        if not isinstance(expr, str) or len(expr) > MAX_EXPR_CHARS or not expr.isascii():
            raise ValueError("not a short string")
        depth = 0
        for m in _BRACKETS.finditer(expr):
            depth = depth + 1 if m.group() in "([{" else depth - 1
            if depth > MAX_EXPR_DEPTH:
                raise ValueError("nested too deeply")
        try:
            tree = ast.parse(expr, mode="eval")
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            raise ValueError("not an expression") from None
        _ExprWalk(expr).check(tree.body)
    except ValueError as e:
        raise err(f".pt2 holds a symbolic shape expression that is refused ({e}): {str(expr)[:60]!r}") from None


class _ExprWalk:
    """The whitelist walk over an expression's syntax tree (iterative: no recursion on the file's nesting)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def check(self, root: ast.expr) -> None:
        todo: list[tuple[ast.expr, int, bool]] = [(root, 1, False)]  # node, depth, inside a Pow's base
        while todo:
            node, depth, in_pow = todo.pop()
            if isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Call)) and depth > MAX_EXPR_DEPTH:
                raise ValueError("nested too deeply")
            if isinstance(node, ast.BinOp) and isinstance(node.op, _EXPR_OPS):
                todo.append((node.left, depth if isinstance(node.left, ast.BinOp) else depth + 1, in_pow))
                todo.append((node.right, depth + 1, in_pow))
            elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
                todo.append((node.operand, depth + 1, in_pow))
            elif isinstance(node, ast.Name) and _EXPR_SYMBOL.fullmatch(node.id):
                pass
            elif isinstance(node, ast.Constant):
                self.integer(node)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                todo.extend((arg, depth + 1, in_pow or node.func.id == "Pow") for arg in self.call(node, in_pow))
            else:
                text = ast.get_source_segment(self.text, node)
                raise ValueError(f"{type(node).__name__} {text!r:.40} is not allowed")

    def integer(self, node: ast.expr, limit: int | None = None) -> int:
        """The value of an integer literal written in decimal digits (no sign, no 0x, no _)."""
        text = ast.get_source_segment(self.text, node) or ""
        if not isinstance(node, ast.Constant) or type(node.value) is not int or not _EXPR_INT.fullmatch(text):
            raise ValueError(f"unexpected {text[:25]!r}")
        if limit is not None and node.value > limit:
            raise ValueError(f"integer {text} is too large")
        return node.value

    def call(self, node: ast.Call, in_pow: bool) -> list[ast.expr]:
        """Check a call's own form; return the arguments that are expressions to walk."""
        name, args, keywords = node.func.id, node.args, node.keywords  # type: ignore[attr-defined]
        if any(isinstance(a, ast.Starred) for a in args) or any(k.arg is None for k in keywords):
            raise ValueError("unpacking is not allowed")
        if name == "Symbol":
            if len(args) != 1 or not isinstance(args[0], ast.Constant) or not isinstance(args[0].value, str):
                raise ValueError("bad symbol")
            if not _EXPR_SYMBOL.fullmatch(args[0].value) or ast.get_source_segment(self.text, args[0]) not in (
                f"'{args[0].value}'", f'"{args[0].value}"'
            ):
                raise ValueError("bad symbol name")
            for k in keywords:
                if k.arg not in _EXPR_ASSUMPTIONS:
                    raise ValueError("unknown assumption")
                if not isinstance(k.value, ast.Constant) or type(k.value.value) is not bool:
                    raise ValueError("assumptions are True or False")
            return []
        if keywords:
            raise ValueError(f"{name} takes no keywords")
        if name == "Integer":
            arg = args[0] if len(args) == 1 else None
            if isinstance(arg, ast.UnaryOp) and isinstance(arg.op, ast.USub):
                arg = arg.operand
            if arg is None:
                raise ValueError("Integer takes one integer")
            self.integer(arg)
            return []
        if name == "Pow":
            if in_pow:
                raise ValueError("nested powers")
            if len(args) != 2:
                raise ValueError("Pow takes a base and an exponent")
            exponent = args[1]
            if isinstance(exponent, ast.Call) and isinstance(exponent.func, ast.Name) and exponent.func.id == "Integer":
                if len(exponent.args) != 1 or exponent.keywords:
                    raise ValueError("bad exponent")
                exponent = exponent.args[0]
            self.integer(exponent, MAX_EXPR_POWER)
            return [args[0]]
        if name not in _EXPR_FUNCS:
            raise ValueError(f"{name[:40]!r} is not allowed")
        if not args:
            raise ValueError(f"{name} needs arguments")
        return list(args)


def _check_loaded_graph(gm: nn.Module) -> None:
    """The child's early look at the loaded program: only allow-listed calls (the caller checks everything again)."""
    if not isinstance(gm, fx.GraphModule):
        raise err("torch.export program did not give an fx GraphModule")
    for n in gm.graph.nodes:
        t = n.target
        ok = n.op in ("placeholder", "get_attr", "output") or (n.op == "call_module" and t == "_guards_fn")
        if n.op == "call_function":
            ok = allowlist.is_allowed(allowlist.target_name(t))
        if not ok:
            raise err(
                f"torch.export graph node {n.name} ({n.op} {allowlist.target_name(t)}) is not supported; the graph "
                f"may call: {allowlist.supported_list()}",
                hint=None,
            )


def _export_eval(gm: fx.GraphModule) -> fx.GraphModule:
    """Eval semantics for a program exported in train mode; GraphModule.eval() itself is refused by torch."""
    aten = torch.ops.aten
    for n in list(gm.graph.nodes):
        if n.target is aten.batch_norm.default and len(n.args) > 5 and n.args[5] is True:
            n.args = (*n.args[:5], False, *n.args[6:])
        elif n.target in (aten.dropout.default, aten.feature_dropout.default) and len(n.args) > 2:
            n.args = (*n.args[:2], False)
        elif (
            n.target is aten.add_.Tensor
            and not n.users
            and str(getattr(n.args[0], "target", "")).endswith("num_batches_tracked")
        ):
            gm.graph.erase_node(n)
    gm.recompile()
    for m in gm.modules():
        m.training = False
    return gm


