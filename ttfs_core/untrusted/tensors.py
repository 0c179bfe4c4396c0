"""Tensors from outside: pickles simulated before ``torch.load(weights_only=True)`` sees them, every tensor checked
to be a plain dense CPU tensor inside its storage, the one safetensors reader and writer, and a state dict
fitted to its architecture on the ``meta`` device before anything is allocated."""

from __future__ import annotations

import inspect
import io
import json
import math
import os
import pickle
import pickletools
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .errors import ModelLoadError, err, one_line
from .files import is_zip, open_zip, rezip, zip_root

MAX_PICKLE_DEPTH = 256
"""Deepest nesting of containers in a pickle (torch's C++ unpickler recurses; 300,000 levels crash it)."""
MAX_PICKLE_STACK = 100_000


# --- pickles: weights_only only, nesting bounded -------------------------------------------------------------

_PICKLE_UPDATES = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}


def check_pickle(data: bytes, what: str, count: int = 1) -> None:
    """Refuse pickles whose containers nest deeper than MAX_PICKLE_DEPTH, read without executing anything.

    ``count``: how many pickles in a row to read (legacy torch.save files hold several, then raw tensor
    data; a later pickle that does not parse is taken to be that data)."""
    stream = io.BytesIO(data)
    for i in range(count):
        if stream.tell() >= len(data):
            return
        try:
            _pickle_nesting(stream, what)
        except ModelLoadError:
            raise
        except Exception as e:  # noqa: BLE001 - ValueError from pickletools on garbage
            if i == 0:
                raise err(f"corrupt {what} (not a pickle)", e) from None
            return


def _pickle_nesting(stream: io.BytesIO, what: str) -> None:
    """Simulate the pickle machine's stack with the nesting depth of each item (pickletools: no objects made).

    Marks are kept apart from the stack, as torch's C++ unpickler keeps them."""
    stack: list[int] = []  # nesting depth of each stack item
    marks: list[int] = []  # stack lengths at each MARK
    memo: dict[Any, int] = {}
    for op, arg, _ in pickletools.genops(stream):
        name = op.name
        if name == "MARK":
            marks.append(len(stack))
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1] if stack else 0
        elif name in ("GET", "BINGET", "LONG_BINGET", "DUP"):
            stack.append(memo.get(arg, 0) if name != "DUP" else (stack[-1] if stack else 0))
        elif name == "STOP":
            return
        else:
            popped = _pop_operands(stack, marks, op)
            if op.stack_after:
                if name in _PICKLE_UPDATES and popped:
                    depth = max([popped[0], *(d + 1 for d in popped[1:])])
                else:
                    depth = max((d + 1 for d in popped), default=0)
                if depth > MAX_PICKLE_DEPTH:
                    raise err(
                        f"{what} nests containers more than {MAX_PICKLE_DEPTH} levels deep (refused: torch's "
                        "unpickler recurses and crashes on such files)"
                    )
                stack.extend([depth] * len(op.stack_after))
        if len(stack) + len(marks) > MAX_PICKLE_STACK:
            raise err(f"{what} holds more than {MAX_PICKLE_STACK} unfinished objects (refused as hostile)")


def _pop_operands(stack: list[int], marks: list[int], op: Any) -> list[int]:
    """Remove an opcode's operands from the simulated stack (through the topmost mark if it takes one)."""
    before = op.stack_before
    if pickletools.markobject in before:
        start = min(marks.pop() if marks else 0, len(stack))
        items = stack[start:]
        del stack[start:]
        under = min(before.index(pickletools.markobject), len(stack))
    else:
        items, under = [], min(len(before), len(stack))
    below = stack[len(stack) - under :]
    del stack[len(stack) - under :]
    return below + items


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


def safe_torch_load(data: bytes, what: str) -> Any:
    """``torch.load(weights_only=True)`` of a checked file: a zip is loaded from its canonical copy after its
    data.pkl passed :func:`check_pickle`; a legacy file after its leading pickles did."""
    if is_zip(data):
        zf = open_zip(data)
        pkl_name = f"{zip_root(zf)}/data.pkl"
        if pkl_name not in zf.namelist():
            raise err(f"corrupt {what}: the zip archive has no data.pkl")
        pkl = zf.read(pkl_name)
        check_pickle(pkl, f"{what} (data.pkl)")
        data = rezip(zf)
    else:
        pkl = data
        check_pickle(data, what, count=5)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        msg = str(e)
        if "Weights only load failed" not in msg and not isinstance(e, pickle.UnpicklingError):
            raise err(f"corrupt {what}", e) from e
        m = re.search(r"GLOBAL ([\w.]+)", msg)
        ok = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.")
        names = [m.group(1)] if m else [g for g in _pickle_globals(pkl) if not g.startswith(ok)]
        need = f" (it needs {names[0]!r})" if names else ""
        raise err(
            f"refused to unpickle {what}{need}: only tensors and state dicts are loaded, since a pickle "
            "can run arbitrary code; save model.state_dict(), torch.export or TorchScript instead"
        ) from None
    check_tensors(_tensors_in(obj), what)
    return obj


def _tensors_in(obj: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, Any]]:
    """(name, tensor) for the tensors in nested lists, tuples and dicts (at most 32 levels)."""
    if isinstance(obj, torch.Tensor) or depth > 32:
        return [(prefix or "tensor", obj)]
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return [t for k, v in items for t in _tensors_in(v, f"{prefix}.{k}" if prefix else str(k), depth + 1)]


# --- tensors -------------------------------------------------------------------------------------------------


def overlaps(sizes: Sequence[int], strides: Sequence[int]) -> bool:
    """Whether two indices of a strided tensor address the same element (e.g. stride 0 with size > 1)."""
    reach = 0
    for stride, size in sorted((st, s) for s, st in zip(sizes, strides) if s > 1):
        if stride <= reach:
            return True
        reach += (size - 1) * stride
    return False


def check_tensor(name: str, t: Any) -> None:
    """A tensor handed on must be a plain dense CPU tensor whose elements are distinct and inside its storage."""
    if not isinstance(t, torch.Tensor) or type(t) not in (torch.Tensor, nn.Parameter):
        raise err(f"{name!r} is a {type(t).__name__}, not a plain tensor", hint=None)
    if t.layout != torch.strided or t.device.type != "cpu":
        raise err(f"tensor {name!r} is {t.layout} on {t.device}; only dense CPU tensors are loaded", hint=None)
    if t.numel() == 0:
        return
    if overlaps(t.shape, t.stride()) or min(t.stride(), default=0) < 0:
        raise err(
            f"tensor {name!r} of shape {tuple(t.shape)} has overlapping strides {t.stride()} (refused: a few "
            "stored bytes posing as a large tensor)",
            hint=None,
        )
    span = t.storage_offset() + sum((s - 1) * st for s, st in zip(t.shape, t.stride())) + 1
    if span * t.element_size() > t.untyped_storage().nbytes():
        raise err(f"tensor {name!r} reaches beyond its storage", hint=None)


def check_tensors(items: Iterable[tuple[str, Any]], what: str) -> None:
    for name, t in items:
        if isinstance(t, torch.Tensor):
            check_tensor(f"{what}: {name}" if what else name, t)




# --- safetensors: the one reader (model files, the sandbox's hand-over, saved networks) and writer ------------
# The header is parsed and checked here before anything is allocated (duplicate names, dtypes, each tensor's
# shape × dtype size equal to its byte range, ranges inside the data and not overlapping); the tensors are then
# made from exactly those byte ranges. No library parses a hostile header.

ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
ST_CODES = {v: k for k, v in ST_DTYPES.items()}
WEIGHT_DTYPES = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8"}  # ints: counters, checked by arch
MAX_SAFETENSORS_HEADER = 100 << 20


class SafetensorsError(ValueError):
    """A safetensors file (or buffer) is malformed or holds a dtype that is not read; the message is one line."""


def _refuse(problem: str, reason: object = None) -> SafetensorsError:
    return SafetensorsError(problem if reason is None else f"{problem}: {one_line(reason, 200)}")


@dataclass(frozen=True)
class SafetensorsHeader:
    """A checked safetensors header: ``metadata`` (``__metadata__``, strings to strings) and, per tensor name,
    its dtype code, shape and byte range ``[start, end)`` in the data, which begins at ``data_start``."""

    metadata: dict[str, str]
    entries: dict[str, tuple[str, tuple[int, ...], int, int]]
    data_start: int

    def shapes(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Name -> (shape, dtype code) of each tensor."""
        return {name: (shape, code) for name, (code, shape, _, _) in self.entries.items()}


def header_length(prefix: bytes, size: int, what: str) -> int:
    """The header length a safetensors file of ``size`` bytes declares in its first 8 bytes ``prefix``."""
    if size < 10 or len(prefix) < 8:
        raise _refuse(f"corrupt {what}: too short")
    n = int.from_bytes(prefix[:8], "little")
    if n > min(size - 8, MAX_SAFETENSORS_HEADER):
        raise _refuse(f"corrupt {what}: the header length exceeds the file")
    return n


def parse_header(head: bytes, size: int, what: str, allowed: set[str]) -> SafetensorsHeader:
    """Validate the header at the start of ``head`` (the file's first 8 + header-length bytes, or all of it) of a
    file of ``size`` bytes, before anything is allocated: duplicate names, dtypes, sizes, ranges."""
    n = header_length(head, size, what)

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise _refuse(f"{what} names tensor {k[:80]!r} twice in its header (refused: which one is meant?)")
            out[k] = v
        return out

    try:
        header = json.loads(head[8 : 8 + n].decode("utf-8"), object_pairs_hook=no_duplicates)
    except SafetensorsError:
        raise
    except (ValueError, RecursionError) as e:
        raise _refuse(f"corrupt {what}: the header is not JSON", e) from None
    if not isinstance(header, dict):
        raise _refuse(f"corrupt {what}: the header is not a JSON object")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _refuse(f"corrupt {what}: __metadata__ must map strings to strings")
    body = size - 8 - n
    spans: list[tuple[int, int, str]] = []
    entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
    for name, info in header.items():
        code, shape, start, end = _header_entry(name, info, what, allowed)
        itemsize = ST_DTYPES[code].itemsize
        numel = math.prod(shape)
        if numel * itemsize != end - start:
            raise _refuse(
                f"{what}: tensor {name[:80]!r} of shape {list(shape)} and dtype {code} needs "
                f"{numel * itemsize} bytes, but its header gives it {end - start}"
            )
        if end > body:
            raise _refuse(f"{what}: tensor {name[:80]!r} lies beyond the end of the file")
        spans.append((start, end, name))
        entries[name] = (code, shape, start, end)
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise _refuse(f"{what}: tensors {a[:60]!r} and {b[:60]!r} share bytes")
    return SafetensorsHeader(meta, entries, 8 + n)


def _header_entry(name: str, info: Any, what: str, allowed: set[str]) -> tuple[str, tuple[int, ...], int, int]:
    ok = isinstance(info, dict) and set(info) == {"dtype", "shape", "data_offsets"}
    shape, offsets = (info.get("shape"), info.get("data_offsets")) if ok else (None, None)
    ints = isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2 and len(shape) <= 16
    ints = ints and all(type(v) is int and v >= 0 for v in [*shape, *offsets])
    if not ok or not ints or offsets[0] > offsets[1]:
        raise _refuse(f"corrupt {what}: bad header entry for tensor {name[:80]!r}")
    code = info["dtype"]
    if not isinstance(code, str) or code not in allowed or code not in ST_DTYPES:
        raise _refuse(
            f"{what}: tensor {name[:80]!r} has dtype {str(code)[:12]}, which is not loaded (weights must be "
            "floating point; int, bool and complex tensors are never cast into weights)"
        )
    return code, tuple(shape), offsets[0], offsets[1]


def _tensor(raw: bytearray, code: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A tensor of the little-endian bytes ``raw`` (exactly its size, checked with the header), sharing them."""
    dtype = ST_DTYPES[code]
    if not raw:
        return torch.empty(shape, dtype=dtype)
    if dtype == torch.bool:  # any byte other than 0 is true (a bool tensor must hold only 0 and 1)
        return torch.frombuffer(raw, dtype=torch.uint8).ne(0).reshape(shape)
    if sys.byteorder != "little":
        raise SafetensorsError("safetensors data is little-endian; this machine is not")
    return torch.frombuffer(raw, dtype=dtype).reshape(shape)


def read_safetensors(data: bytes, what: str, allowed: set[str]) -> dict[str, torch.Tensor]:
    """Tensors of safetensors bytes, the header checked by :func:`parse_header` first (ModelLoadError)."""
    try:
        header = parse_header(data, len(data), what, allowed)
        view = memoryview(data)
        out = {}
        for name, (code, shape, start, end) in header.entries.items():
            a = header.data_start
            out[name] = _tensor(bytearray(view[a + start : a + end]), code, shape)
        return out
    except SafetensorsError as e:
        raise err(str(e)) from None


class SafetensorsFile:
    """A safetensors file opened for reading: its header is read and checked on opening (SafetensorsError), and
    each tensor is read from its own byte range when asked for, so that nothing is read before the caller has
    checked the header. A context manager."""

    def __init__(self, path: str | os.PathLike[str], what: str, allowed: set[str]) -> None:
        self.what = what
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close() / __exit__
        try:
            size = os.fstat(self._file.fileno()).st_size
            prefix = self._file.read(8)
            n = header_length(prefix, size, what)
            self.header = parse_header(prefix + self._file.read(n), size, what, allowed)
        except BaseException:
            self._file.close()
            raise

    def read(self, name: str) -> torch.Tensor:
        """The tensor ``name`` (one of the header's), read from its byte range."""
        code, shape, start, end = self.header.entries[name]
        raw = bytearray(end - start)
        self._file.seek(self.header.data_start + start)
        if self._file.readinto(raw) != len(raw):
            raise SafetensorsError(f"{self.what}: tensor {name[:80]!r} is cut short (the file changed?)")
        return _tensor(raw, code, shape)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_safetensors(tensors: dict[str, torch.Tensor]) -> bytes:
    """Serialise tensors (shared or strided ones too: each is copied) in the safetensors format."""
    header: dict[str, Any] = {}
    parts: list[bytes] = []
    offset = 0
    for name, t in tensors.items():
        code = ST_CODES.get(t.dtype)
        if code is None:
            raise err(f"tensor {name!r} has dtype {t.dtype}, which is not supported", hint=None)
        flat = t.detach().contiguous().reshape(-1)
        raw = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        parts.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    return b"".join([len(head).to_bytes(8, "little"), head, *parts])


# --- state dict + architecture ---------------------------------------------------------------------------


def read_state_dict(data: bytes, kind: str) -> dict[str, torch.Tensor]:
    """The state dict of a safetensors file or a torch.save file (``kind`` as :func:`.files.sniff` tells)."""
    if kind == "safetensors":
        obj: Any = read_safetensors(data, "safetensors file", WEIGHT_DTYPES)
    else:
        obj = safe_torch_load(data, "torch.save file")
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if isinstance(obj, torch.Tensor) or not isinstance(obj, dict):
        raise err(f"file holds a {type(obj).__name__}, not a state dict (a dict of tensors)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise err(f"not a state dict: entries {', '.join(map(repr, bad[:3]))} are not tensors")
    if not obj:
        raise err("state dict is empty")
    for k, v in obj.items():
        if v.dtype not in ST_CODES or v.dtype == torch.bool:
            raise err(
                f"state dict tensor {k[:80]!r} has dtype {v.dtype}, which is not loaded (weights must be floating "
                "point; int, bool and complex tensors are never cast into weights)"
            )
    check_tensors(obj.items(), "state dict")
    return dict(obj)


def load_arch(arch: str | None, sd: dict[str, torch.Tensor], num_classes: int | None) -> nn.Module:
    """Build ``arch`` (a ttfs_core.zoo or torchvision name) and load ``sd`` into it. The architecture is first
    built on the ``meta`` device, so that keys, shapes and dtypes are compared before anything is allocated."""
    import torchvision

    zoo: Any = None
    zoo_problem = ""
    try:
        from .. import zoo  # lazy: another part of the package, optional here
    except ImportError as e:
        zoo_problem = f"; ttfs_core.zoo cannot be imported ({one_line(e, 80)})"
    zoo_names = sorted(getattr(zoo, "ARCHITECTURES", {}) or {})
    hint = (f"supported: ttfs_core.zoo names ({', '.join(zoo_names)}) or " if zoo_names else "supported: ") + (
        "a torchvision classification model name such as 'resnet18'"
    )
    if arch is None:
        raise err("a state dict holds only weights: pass arch=<architecture name>", hint=hint)
    if arch in zoo_names:
        takes_nc = "num_classes" in inspect.signature(zoo.build).parameters

        def build() -> nn.Module:
            return zoo.build(arch, num_classes=num_classes) if takes_nc and num_classes else zoo.build(arch)

    elif arch in torchvision.models.list_models(module=torchvision.models):
        n = num_classes or _infer_num_classes(arch, sd)

        def build() -> nn.Module:
            return torchvision.models.get_model(arch, weights=None, **({"num_classes": n} if n else {}))

    else:
        raise err(f"unknown architecture {arch!r}{zoo_problem}", hint=hint)
    with torch.device("meta"):
        reference = build()
    sd = _fit(reference, sd, arch)
    model = build()
    model.load_state_dict(sd, strict=False)
    model.eval()
    try:
        fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001
        raise err(f"architecture {arch!r} cannot be traced by torch.fx", e, hint=None) from e
    return model


def _infer_num_classes(arch: str, sd: dict[str, torch.Tensor]) -> int | None:
    """Class count from the classifier weights: the last tensor sized 1000 in the default model."""
    import torchvision

    with torch.device("meta"):
        ref = torchvision.models.get_model(arch, weights=None).state_dict()
    keys = [k for k, v in ref.items() if v.ndim >= 1 and v.shape[0] == 1000 and k in sd]
    return int(sd[keys[-1]].shape[0]) if keys else None


def _fit(reference: nn.Module, sd: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """The state dict, checked against the (meta-device) reference model: keys, shapes and dtypes."""
    ref = reference.state_dict()
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
        raise err(f"state dict does not fit architecture {arch!r}: {'; '.join(problems)}", hint=None)
    for k, r in ref.items():
        t = sd.get(k)
        if t is not None and (t.is_floating_point() != r.is_floating_point() or t.dtype == torch.bool):
            want = "floating-point weights" if r.is_floating_point() else f"{r.dtype}"
            raise err(
                f"state dict tensor {k!r} has dtype {t.dtype}, but architecture {arch!r} needs {want} there "
                "(int, bool and complex tensors are never cast into weights)",
                hint=None,
            )
    return sd


