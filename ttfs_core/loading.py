"""Load users' model files safely: uploads are untrusted, so nothing in them may run Python code.

Formats, recognised by content (the extension is not trusted): a ``torch.export`` program (``.pt2``),
a TorchScript archive (``torch.jit.save``), and a state dict (``.safetensors``, or a ``torch.save``
zip / legacy pickle) that needs ``arch``. :func:`load_model` returns an eval-mode module that
``torch.fx.symbolic_trace`` can trace, or a ``torch.fx.GraphModule``; every failure is a one-line
:class:`ModelLoadError`.

What we found about safety (torch 2.14.1):

* ``torch.export.load`` (and ``ExportedProgram.module()``) is NOT safe on untrusted files. Demonstrated
  with crafted files: (1) the sample inputs ``data/sample_inputs/model.pt`` are always a pickle, and
  ``deserialize_torch_artifact`` retries a failed ``weights_only=True`` load with ``weights_only=False``,
  so a ``__reduce__`` calling ``os.system`` runs; (2) ``expr_str`` strings in ``models/model.json`` go
  to ``sympy.sympify``, i.e. ``eval``; (3) ``guards_code`` in ``model.json`` is ``exec``'d by
  ``.module()``. From reading the source: weights/constants flagged ``use_pickle`` are loaded with
  ``weights_only=False``, opaque constants with ``pickle.loads``, ``data/aotinductor/`` shared libraries
  are ``dlopen``'d, the pre-2.8 zip layout takes the same pickle fallback, and node names / stack traces
  end up in the Python source that fx generates and ``exec``s. (Graph targets such as
  ``torch.os.system`` are stopped by torch's verifier.) Mitigation here: the upload is read once into
  memory; the archive must hold exactly the members ``torch.export.save`` writes for one model (no
  pickled payloads, custom/opaque objects, AOTInductor code); the sample inputs must load with
  ``weights_only=True`` and are re-saved by us; ``model.json`` is validated (op targets only
  ``torch.ops.aten.*`` and a few ``_operator`` functions; strings limited to ``[A-Za-z0-9_.:+-]``;
  ``expr_str`` limited to a small sympy vocabulary, no ``Pow``) and stripped of node metadata and
  ``guards_code``; torch then loads a canonical copy of the checked archive from a private temp dir.
* ``torch.jit.load`` does not unpickle Python objects (its C++ unpickler refuses globals such as
  ``posix.system``: demonstrated), but it does run TorchScript code from the file while loading
  (``__setstate__``: demonstrated writing a file with ``torch.save``, i.e. ``aten::save``;
  ``aten::from_file`` reads files). Mitigation: archives whose code mentions ``__setstate__`` are
  refused; torch loads a canonical copy of the checked zip; the inlined forward graph may only use
  allow-listed node kinds (no file, process or network ops) before ``torch.jit.freeze``, whose constant
  propagation executes ops; the scripted module is never called but translated into an fx graph of
  ``torch.ops.aten`` calls (:func:`script_to_fx`).
* State dicts: safetensors cannot hold code; ``torch.load`` is only called with ``weights_only=True``.

Limits: torch's C++ readers (zip, TorchScript parser and unpickler) remain attack surface for
memory-safety bugs and resource exhaustion (huge allocations, slow loads); a public service should load
uploads in a sandboxed, memory- and time-limited process. TorchScript forward hooks are ignored.
"""

from __future__ import annotations

import builtins
import inspect
import io
import json
import logging
import operator
import os
import pickle
import pickletools
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import nn

__all__ = ["ModelLoadError", "SUPPORTED_FORMATS", "check_input", "load_model", "script_to_fx"]

SUPPORTED_FORMATS = (
    "supported: torch.export .pt2, TorchScript .pt (torch.jit.save), "
    "state dict .safetensors/.pt/.pth with arch=<torchvision or ttfs_core.zoo name>"
)
MAX_UNCOMPRESSED = 4 << 30  # bytes a zip may expand to


class ModelLoadError(ValueError):
    """A model file cannot be loaded; the message is one line naming the problem."""


def _one_line(text: object, limit: int = 300) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _err(problem: str, reason: object = None, hint: str | None = SUPPORTED_FORMATS) -> ModelLoadError:
    msg = problem if reason is None else f"{problem}: {_one_line(reason, 200)}"
    return ModelLoadError(_one_line(msg if hint is None else f"{msg} ({hint})", 500))


# --- entry points ----------------------------------------------------------------------------------------


def load_model(path: str | os.PathLike[str], arch: str | None = None, *, num_classes: int | None = None) -> nn.Module:
    """Load a model file (format detected by content) as an eval-mode, fx-traceable module."""
    try:
        data = _read(path)
        kind, zf = _sniff(data)
        if kind == "export":
            return _load_export(zf)
        if kind == "torchscript":
            return _load_torchscript(zf)
        return _load_arch(arch, _state_dict(data, kind), num_classes)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever a hostile file provokes is reported in one line
        raise _err("cannot load the model file", f"{type(e).__name__}: {e}") from e


def check_input(model: nn.Module, input_shape: Sequence[int]) -> Any:
    """Run one zero batch of shape ``(1, *input_shape)``; return the output or raise ModelLoadError."""
    shape = (1, *(int(s) for s in input_shape))
    try:
        p = next(iter(model.parameters()), None)
        x = torch.zeros(shape, device=p.device if p is not None else "cpu")
        with torch.no_grad():
            return model(x)
    except Exception as e:  # noqa: BLE001 - any failure means the shape does not fit
        raise ModelLoadError(f"the model cannot take inputs of shape {shape}: {_one_line(e, 250)}") from e


# --- reading and format detection ------------------------------------------------------------------------


def _read(path: str | os.PathLike[str]) -> bytes:
    p = Path(path)
    if not p.exists():
        raise _err(f"model file not found: {p}")
    if not p.is_file():
        raise _err(f"not a regular file: {p}")
    data = p.read_bytes()
    if not data:
        raise _err(f"model file is empty: {p.name}")
    return data


_MAGIC = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"%PDF": "a PDF",
    b"\x1f\x8b": "a gzip file",
    b"BZh": "a bzip2 file",
    b"\x7fELF": "an executable",
    b"\x93NUMPY": "a .npy array",
    b"\x89HDF": "an HDF5/Keras file",
}


def _sniff(data: bytes) -> tuple[str, zipfile.ZipFile | None]:
    """('export' | 'torchscript' | 'torchsave' | 'safetensors' | 'pickle', the zip if it is one)."""
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        zf = _open_zip(data)
        members = _members(zf)
        if "archive_format" in members:
            return "export", zf
        if "serialized_exported_program.json" in members:
            raise _err(
                "torch.export file in the pre-2.8 layout is refused (it needs pickle); re-save it "
                "with torch.export.save from torch >= 2.8"
            )
        if "data.pkl" in members and any(m.startswith("code/") for m in members):
            return "torchscript", zf
        if "data.pkl" in members:
            return "torchsave", zf
        raise _err("zip archive is not a model file (no torch.export, TorchScript or torch.save layout)")
    if len(data) > 9:
        n = int.from_bytes(data[:8], "little")
        if 2 <= n <= len(data) - 8 and data[8:9] == b"{":
            return "safetensors", None
    if data[:1] == b"\x80" and 2 <= data[1] <= 5:
        return "pickle", None
    what = next((w for m, w in _MAGIC.items() if data.startswith(m)), None)
    if what is None:
        try:
            head = data[:4096].decode("utf-8")
            what = "a text file" if all(c.isprintable() or c in "\r\n\t" for c in head) else None
        except UnicodeDecodeError:
            pass
    raise _err(f"unknown model file format{f' (looks like {what})' if what else ''}")


def _open_zip(data: bytes) -> zipfile.ZipFile:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
        names = [i.filename for i in infos]
        if len(set(names)) != len(names):
            raise _err("zip archive has duplicate member names")
        if sum(i.file_size for i in infos) > MAX_UNCOMPRESSED:
            raise _err(f"zip archive expands to more than {MAX_UNCOMPRESSED >> 30} GiB")
        bad = zf.testzip()
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - BadZipFile, zlib.error, NotImplementedError, OSError...
        raise _err("corrupt or truncated zip archive", e) from e
    if bad is not None:
        raise _err(f"corrupt zip archive (bad CRC in {bad!r})")
    return zf


def _root(zf: zipfile.ZipFile) -> str:
    roots = {n.split("/", 1)[0] for n in zf.namelist()}
    if len(roots) != 1 or not all("/" in n for n in zf.namelist()):
        raise _err("zip archive does not have the single top-level folder torch writes")
    return roots.pop()


def _members(zf: zipfile.ZipFile) -> set[str]:
    return {n.split("/", 1)[1] for n in zf.namelist() if "/" in n}


def _rezip(zf: zipfile.ZipFile, dest: Path, replace: dict[str, bytes] | None = None) -> Path:
    """Write a canonical copy of the archive, so that torch's zip reader sees exactly what was checked."""
    replace = replace or {}
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as z:
        for info in zf.infolist():
            if info.is_dir():
                continue
            if info.filename in replace:
                z.writestr(info.filename, replace[info.filename])
                continue
            with zf.open(info) as src, z.open(info.filename, "w", force_zip64=info.file_size > 1 << 30) as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
    return dest


# --- pickles: weights_only only --------------------------------------------------------------------------


def _pickle_globals(pkl: bytes) -> list[str]:
    """The globals a pickle would import, read with pickletools (nothing is executed)."""
    found: list[str] = []
    strings: list[str] = []
    pos, stream = 0, io.BytesIO(pkl)
    try:
        for _ in range(8):  # legacy torch.save files are several pickles in a row
            stream.seek(pos)
            for op, arg, p in pickletools.genops(stream):
                if op.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
                pos = p + 1
            if pos >= len(pkl):
                break
    except Exception:  # noqa: BLE001 - tensor data follows the pickles in legacy files
        pass
    return found


def _safe_torch_load(data: bytes, what: str, pkl: bytes | None = None) -> Any:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        msg = str(e)
        if "Weights only load failed" not in msg and not isinstance(e, pickle.UnpicklingError):
            raise _err(f"corrupt {what}", e) from e
        m = re.search(r"GLOBAL ([\w.]+)", msg)
        ok = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.")
        names = [m.group(1)] if m else [g for g in _pickle_globals(pkl or data) if not g.startswith(ok)]
        need = f" (it needs {names[0]!r})" if names else ""
        raise _err(
            f"refused to unpickle {what}{need}: only tensors and state dicts are loaded, since a pickle "
            "can run arbitrary code; save model.state_dict(), torch.export or TorchScript instead"
        ) from None


def _state_dict(data: bytes, kind: str) -> dict[str, torch.Tensor]:
    if kind == "safetensors":
        from safetensors.torch import load as load_safetensors

        try:
            obj: Any = load_safetensors(data)
        except Exception as e:  # noqa: BLE001
            raise _err("corrupt safetensors file", e) from e
    else:
        pkl = None
        if kind == "torchsave":
            zf = zipfile.ZipFile(io.BytesIO(data))
            pkl = zf.read(f"{_root(zf)}/data.pkl")
        obj = _safe_torch_load(data, "torch.save file", pkl)
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if isinstance(obj, torch.Tensor) or not isinstance(obj, dict):
        raise _err(f"file holds a {type(obj).__name__}, not a state dict (a dict of tensors)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise _err(f"not a state dict: entries {', '.join(map(repr, bad[:3]))} are not tensors")
    if not obj:
        raise _err("state dict is empty")
    return dict(obj)


# --- state dict + architecture ---------------------------------------------------------------------------


def _load_arch(arch: str | None, sd: dict[str, torch.Tensor], num_classes: int | None) -> nn.Module:
    import torchvision

    zoo: Any = None
    zoo_problem = ""
    try:
        from . import zoo  # lazy: another part of the package, optional here
    except ImportError as e:
        zoo_problem = f"; ttfs_core.zoo cannot be imported ({_one_line(e, 80)})"
    zoo_names = sorted(getattr(zoo, "ARCHITECTURES", {}) or {})
    hint = (f"supported: ttfs_core.zoo names ({', '.join(zoo_names)}) or " if zoo_names else "supported: ") + (
        "a torchvision classification model name such as 'resnet18'"
    )
    if arch is None:
        raise _err("a state dict holds only weights: pass arch=<architecture name>", hint=hint)
    if arch in zoo_names:
        takes_nc = "num_classes" in inspect.signature(zoo.build).parameters
        model = zoo.build(arch, num_classes=num_classes) if takes_nc and num_classes else zoo.build(arch)
    elif arch in torchvision.models.list_models(module=torchvision.models):
        n = num_classes or _infer_num_classes(arch, sd)
        model = torchvision.models.get_model(arch, weights=None, **({"num_classes": n} if n else {}))
    else:
        raise _err(f"unknown architecture {arch!r}{zoo_problem}", hint=hint)
    _fit(model, sd, arch)
    model.eval()
    try:
        fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001
        raise _err(f"architecture {arch!r} cannot be traced by torch.fx", e, hint=None) from e
    return model


def _infer_num_classes(arch: str, sd: dict[str, torch.Tensor]) -> int | None:
    """Class count from the classifier weights: the last tensor sized 1000 in the default model."""
    import torchvision

    with torch.device("meta"):
        ref = torchvision.models.get_model(arch, weights=None).state_dict()
    keys = [k for k, v in ref.items() if v.ndim >= 1 and v.shape[0] == 1000 and k in sd]
    return int(sd[keys[-1]].shape[0]) if keys else None


def _fit(model: nn.Module, sd: dict[str, torch.Tensor], arch: str) -> None:
    ref = model.state_dict()
    if all(k.startswith("module.") for k in sd) and not any(k.startswith("module.") for k in ref):
        sd = {k[len("module.") :]: v for k, v in sd.items()}  # saved from nn.DataParallel
    missing = [k for k in ref if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in ref]
    shapes = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(ref[k].shape)}" for k in ref if k in sd and sd[k].shape != ref[k].shape
    ]
    problems = [
        f"{label} {', '.join(items[:4])}{f' (+{len(items) - 4} more)' if len(items) > 4 else ''}"
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes))
        if items
    ]
    if problems:
        raise _err(f"state dict does not fit architecture {arch!r}: {'; '.join(problems)}", hint=None)
    model.load_state_dict(sd, strict=False)


# --- torch.export --------------------------------------------------------------------------------------------

_EXPORT_FIXED = {
    "archive_format", "archive_version", "byteorder", "version", ".data/version", ".data/serialization_id",
    ".format_version", ".storage_alignment", "models/model.json", "data/weights/model_weights_config.json",
    "data/constants/model_constants_config.json", "data/sample_inputs/model.pt",
}  # fmt: skip
_EXPORT_DATA = re.compile(r"data/weights/weight_\d+|data/constants/tensor_\d+|extra/[\w.\-]+")
_SAFE = re.compile(r"[A-Za-z0-9_.:+\-]*")
_OPERATORS = {
    "getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "eq", "ne", "lt", "le", "gt", "ge",
}  # fmt: skip
_OPERATOR_FUNCS = {getattr(operator, name) for name in _OPERATORS}
_ATEN_DENY = {"save", "from_file", "_print", "print", "_linalg_check_errors"}
_EXPR_TOKEN = re.compile(r"\s+|'[A-Za-z_]\w*'|[A-Za-z_]\w*|\d+(?:\.\d+)?(?:e[+-]?\d+)?|[-+*/%(),=<>!]")
_EXPR_NAMES = {
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Max", "Min", "Mod", "Eq", "Ne", "Lt", "Le", "Gt", "Ge",
    "And", "Or", "Not", "True", "False", "oo", "positive", "negative", "nonnegative", "nonpositive", "integer",
    "real", "finite", "zero", "nonzero", "precision", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan",
    "Equality", "Unequality", "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt",
    "FloorToInt", "CeilDiv", "TruncToInt", "RoundToInt", "ToFloat", "IntTrueDiv", "FloatTrueDiv", "Identity",
}  # fmt: skip


def _load_export(zf: zipfile.ZipFile | None) -> nn.Module:
    assert zf is not None
    root = _root(zf)
    members = _members(zf)
    if zf.read(f"{root}/archive_format").strip() != b"pt2":
        raise _err("zip archive has an archive_format member but is not a torch.export .pt2 file")
    for m in sorted(members):
        if m.startswith("data/aotinductor/"):
            raise _err(".pt2 holds AOTInductor native code, which is refused; save the program without it")
        if m not in _EXPORT_FIXED and not _EXPORT_DATA.fullmatch(m):
            raise _err(
                f".pt2 member {m!r} is refused (pickled or custom objects, compiled code and "
                "multi-model packages are not loaded)"
            )
    for m in ("models/model.json", "data/weights/model_weights_config.json", "data/sample_inputs/model.pt"):
        if m not in members:
            raise _err(f"incomplete .pt2 archive: {m!r} is missing")
    for cfg in ("data/weights/model_weights_config.json", "data/constants/model_constants_config.json"):
        if cfg in members:
            entries = _json(zf.read(f"{root}/{cfg}"), cfg).get("config", {})
            for fqn, meta in entries.items():
                path = str(meta.get("path_name", ""))
                if meta.get("use_pickle") or not re.fullmatch(r"(weight|tensor)_\d+", path):
                    raise _err(f".pt2 stores {fqn!r} as a pickle or custom object, which is refused")
    sample = _safe_torch_load(zf.read(f"{root}/data/sample_inputs/model.pt"), "the .pt2 sample inputs")
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
        with tempfile.TemporaryDirectory(prefix="ttfs_load_") as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = torch.export.load(_rezip(zf, Path(tmp) / "model.pt2", replace)).module()
    except Exception as e:  # noqa: BLE001
        raise _err("cannot load the torch.export program", capture.error or e) from e
    finally:
        log.removeHandler(capture)
        log.propagate = propagate
    _check_loaded_graph(gm)
    return _export_eval(gm)


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
    except ValueError as e:
        raise _err(f"corrupt .pt2 archive: {name} is not JSON", e) from e


def _check_program(obj: Any, where: str = "model.json") -> None:
    """Validate model.json in place; drop node metadata and guards_code (both end up in exec'd code)."""
    if isinstance(obj, list):
        for v in obj:
            _check_program(v, where)
        return
    if isinstance(obj, str):
        if not _SAFE.fullmatch(obj):
            raise _err(f".pt2 {where} contains a disallowed string {obj[:40]!r}")
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
            _check_target(v)
        else:
            _check_program(v, k)


def _check_target(target: str) -> None:
    m = re.fullmatch(r"torch\.ops\.aten\.(\w+)\.(\w+)|_operator\.(\w+)", target)
    if not m or (m.group(1) or "") in _ATEN_DENY or (m.group(3) and m.group(3) not in _OPERATORS):
        raise _err(f".pt2 graph calls {target[:60]!r}; only torch.ops.aten operators are loaded")


def _check_expr(expr: object) -> None:
    import sympy

    ok = isinstance(expr, str) and len(expr) <= 2000
    pos = 0
    while ok and pos < len(expr):  # type: ignore[arg-type]
        m = _EXPR_TOKEN.match(expr, pos)  # type: ignore[arg-type]
        ok = m is not None
        if m:
            tok, pos = m.group(), m.end()
            if tok[0].isalpha() or tok[0] == "_":
                ok = tok in _EXPR_NAMES or (
                    re.fullmatch(r"[a-z]+\d+", tok) is not None
                    and not hasattr(builtins, tok)
                    and not hasattr(sympy, tok)
                )
    if not ok:
        raise _err(f".pt2 holds a symbolic shape expression that is refused: {str(expr)[:60]!r}")


def _check_loaded_graph(gm: nn.Module) -> None:
    if not isinstance(gm, fx.GraphModule):
        raise _err("torch.export program did not give an fx GraphModule")
    for n in gm.graph.nodes:
        t = n.target
        ok = n.op in ("placeholder", "get_attr", "output") or (n.op == "call_module" and t == "_guards_fn")
        if n.op == "call_function":
            ok = (isinstance(t, torch._ops.OpOverload) and t.namespace == "aten") or t in _OPERATOR_FUNCS
        if not ok:
            raise _err(f"torch.export graph node {n.name} ({n.op} {t}) is not supported")


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
        "conv1d conv2d conv3d _convolution linear addmm mm matmul t relu relu_ hardtanh hardtanh_ batch_norm "
        "max_pool1d max_pool2d avg_pool1d avg_pool2d adaptive_avg_pool1d adaptive_avg_pool2d flatten view "
        "reshape add add_ sub mul mean cat contiguous size"
    ).split()
}  # fmt: skip
_TS_HINT = (
    "supported: conv, linear/addmm/matmul, relu, hardtanh, batch_norm, max/avg/adaptive pooling, "
    "flatten/view/reshape, dropout (eval), add/sub/mul, mean, cat, list/tuple plumbing"
)
_TS_DROPOUT = {f"aten::{k}" for k in ("dropout", "dropout_", "feature_dropout", "feature_dropout_", "alpha_dropout")}


def _load_torchscript(zf: zipfile.ZipFile | None) -> fx.GraphModule:
    assert zf is not None
    _root(zf)
    for name in zf.namelist():
        if "/data/" not in name and b"__setstate__" in zf.read(name):
            raise _err(
                "TorchScript archive defines __setstate__ (code that runs while loading), which is "
                "refused; re-save with torch.export or as a state dict",
                hint=None,
            )
    try:
        with tempfile.TemporaryDirectory(prefix="ttfs_load_") as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(_rezip(zf, Path(tmp) / "model.pt"), map_location="cpu")
    except Exception as e:  # noqa: BLE001
        raise _err("cannot load the TorchScript archive", e) from e
    return script_to_fx(module)


def script_to_fx(module: torch.jit.ScriptModule) -> fx.GraphModule:
    """Translate a TorchScript module into an fx GraphModule of ``torch.ops.aten`` calls (never runs it)."""
    try:
        graph = module.forward.graph.copy()
    except Exception as e:  # noqa: BLE001
        raise _err("TorchScript module has no forward method", e, hint=None) from e
    torch._C._jit_pass_inline(graph)
    _check_ts_kinds(graph.block())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frozen = torch.jit.freeze(module.eval(), optimize_numerics=False)
    except Exception as e:  # noqa: BLE001
        raise _err("cannot freeze the TorchScript module", e, hint=None) from e
    graph = frozen.forward.graph.copy()
    torch._C._jit_pass_inline(graph)
    try:
        return _TSConverter(graph).run()
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _err("cannot translate the TorchScript graph to fx", f"{type(e).__name__}: {e}", hint=None) from e


def _check_ts_kinds(block: Any) -> None:
    for n in block.nodes():
        if n.kind() not in _TS_ALLOWED:
            raise _err(f"unsupported TorchScript node kind {n.kind()!r}", hint=_TS_HINT)
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
            raise _err("TorchScript forward still reads module attributes after freezing", hint=None)
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
                raise _err(f"TorchScript {kind} in training mode is not supported", hint=None)
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
                    raise _err(f"TorchScript {kind} writes through a view of a tensor used elsewhere", hint=None)
            self._emit(n, ins, vals, outs)
        else:
            raise _err(f"unsupported TorchScript node kind {kind!r}", hint=_TS_HINT)

    def _index(self, seq: Any, i: Any) -> Any:
        if isinstance(seq, (list, tuple)) and isinstance(i, int):
            return seq[i]
        return self.fx.call_function(operator.getitem, (seq, i))

    def _constant(self, v: Any) -> Any:
        value = v.toIValue()
        if not isinstance(value, torch.Tensor):
            if isinstance(value, (torch.ScriptObject, torch.nn.Module)):
                raise _err(f"TorchScript constant of type {v.type()} is not supported", hint=None)
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
