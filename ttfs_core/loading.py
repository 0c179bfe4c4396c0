"""Load users' model files safely: uploads are untrusted, so nothing in them may run Python code.

Formats, recognised by content (the extension is not trusted): a ``torch.export`` program (``.pt2``),
a TorchScript archive (``torch.jit.save``), and a state dict (``.safetensors``, or a ``torch.save``
zip / legacy pickle) that needs ``arch``. :func:`load_model` returns an eval-mode module that
``torch.fx.symbolic_trace`` can trace, or a ``torch.fx.GraphModule``; every failure is a one-line
:class:`ModelLoadError`.

**Isolation.** :func:`load_model` parses the file in a sandboxed child process (:mod:`ttfs_core.sandbox`:
memory, CPU-time and wall-clock limits, no file writing, a seccomp filter where available). The child hands
back plain data only -- a JSON description of the model and its tensors as safetensors bytes -- and this
process rebuilds the model from that without running anything from the file: for torch.export and TorchScript
files an fx graph whose nodes call allow-listed ``torch.ops.aten`` / ``operator`` functions, for state dicts the
named torchvision / zoo architecture (built by our code, on the ``meta`` device first so that the file's shapes
and dtypes are checked before anything is allocated). The child's output is validated like any other input.
A crash, timeout or memory exhaustion in the child is one :class:`ModelLoadError`; this process keeps running.
``_load_in_process`` runs the same parsing and checks without the sandbox (the child's code path; for
debugging and benchmarks).

**Checks before torch parses anything** (in the child; the file-type and size checks also here, before a child
is started): the path must be a regular file (FIFOs, devices and folders are refused without being opened for
reading: ``O_NONBLOCK``) of at most :data:`MAX_FILE_BYTES`; zip archives are limited in members, declared
uncompressed size (:data:`MAX_UNCOMPRESSED`) and per-member compression ratio (:data:`MAX_ZIP_RATIO`) before
anything is decompressed, and torch only sees a canonical stored copy of the checked members, built in memory
(no temporary files); pickles are simulated with ``pickletools`` and refused when nested deeper than
:data:`MAX_PICKLE_DEPTH`; safetensors headers are parsed by us first (duplicate names refused, each tensor's
shape × dtype size must equal its byte range, no overlapping ranges, only known dtypes); tensors must not
overlap in memory (stride 0) nor reach outside their storage.

What we found about safety (torch 2.14.1):

* ``torch.export.load`` (and ``ExportedProgram.module()``) is NOT safe on untrusted files. Demonstrated
  with crafted files: (1) the sample inputs ``data/sample_inputs/model.pt`` are always a pickle, and
  ``deserialize_torch_artifact`` retries a failed ``weights_only=True`` load with ``weights_only=False``,
  so a ``__reduce__`` calling ``os.system`` runs; (2) ``expr_str`` strings in ``models/model.json`` go
  to ``sympy.sympify``, i.e. ``eval`` (also ``9**9**9`` or a factorial: a hang); (3) ``guards_code`` in
  ``model.json`` is ``exec``'d by ``.module()``. From reading the source: weights/constants flagged
  ``use_pickle`` are loaded with ``weights_only=False``, opaque constants with ``pickle.loads``,
  ``data/aotinductor/`` shared libraries are ``dlopen``'d, the pre-2.8 zip layout takes the same pickle
  fallback, node names / stack traces end up in the Python source that fx generates and ``exec``s, weights
  are ``as_strided`` views with the sizes and strides the file declares (stride 0: a few bytes pose as a huge
  tensor) and a zero-byte weight member becomes ``torch.zeros(declared sizes)``. (Graph targets such as
  ``torch.os.system`` are stopped by torch's verifier.) Mitigation here: the archive must hold exactly the
  members ``torch.export.save`` writes for one model (no pickled payloads, custom/opaque objects, AOTInductor
  code); weight and constant metadata must describe dense, non-overlapping CPU tensors inside their stored
  bytes; the sample inputs must load with ``weights_only=True`` and are re-saved by us; ``model.json`` is
  validated (op targets only ``torch.ops.aten.*`` and a few ``_operator`` functions; strings limited to
  ``[A-Za-z0-9_.:+-]``; ``expr_str`` must fit a small grammar, :func:`_check_expr`) and stripped of node
  metadata and ``guards_code``.
* ``torch.jit.load`` does not unpickle Python objects (its C++ unpickler refuses globals such as
  ``posix.system``: demonstrated), but it does run TorchScript code from the file while loading
  (``__setstate__``: demonstrated writing a file with ``torch.save``, i.e. ``aten::save``;
  ``aten::from_file`` reads files), and its parser and unpickler recurse without limits (brackets nested
  20,000 deep in a code file, lists nested 300,000 deep in ``data.pkl``: segfaults). Mitigation: the
  archive's members must fit torch's layout (``code/**.py``, ``data/<n>``, ``constants/<n>``, the pickles and
  version records); every code member (by structure, wherever it sits under ``code/``) is refused if it mentions
  ``__setstate__``, nests brackets deeper than :data:`MAX_CODE_NESTING` or its syntax tree deeper than
  :data:`MAX_CODE_DEPTH`; debug pickles and extra files are left out of the canonical copy; the inlined
  forward graph may only use allow-listed node kinds (no file, process or network ops) before
  ``torch.jit.freeze``, whose constant propagation executes ops; the scripted module is never called but
  translated into an fx graph of ``torch.ops.aten`` calls (:func:`script_to_fx`).
* State dicts: safetensors cannot hold code; ``torch.load`` is only called with ``weights_only=True``.
  A state dict must fit its architecture exactly (keys, shapes, and dtypes: int, bool and complex tensors
  are not cast into float weights).

Limits: torch's C++ readers (zip, TorchScript parser and unpickler) remain attack surface for memory-safety
bugs; the sandbox contains them (a crash is an error message) but cannot make them correct. A legacy
(non-zip) ``torch.save`` file declares its storage sizes in its pickle; a huge declaration is stopped by the
sandbox's memory limit rather than by a check. Running a loaded graph (conversion, :func:`check_input`)
happens in the caller's process: the graph holds only aten ops, but their shape arguments can still ask for
a lot of memory. TorchScript forward hooks are ignored.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import io
import json
import keyword
import logging
import math
import operator
import os
import pickle
import pickletools
import re
import stat
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from . import allowlist, sandbox

__all__ = ["ModelLoadError", "SUPPORTED_FORMATS", "check_input", "load_model", "script_to_fx"]

SUPPORTED_FORMATS = (
    "supported: torch.export .pt2, TorchScript .pt (torch.jit.save), "
    "state dict .safetensors/.pt/.pth with arch=<torchvision or ttfs_core.zoo name>"
)
MAX_FILE_BYTES = 1 << 30
"""Largest model file read (checked with stat before reading)."""
MAX_UNCOMPRESSED = 1 << 30
"""Bytes all members of a zip archive may expand to, as declared in its directory (checked before reading)."""
MAX_ZIP_MEMBERS = 20_000
MAX_ZIP_RATIO = 100
"""Largest compression ratio of a zip member over 1 MiB (torch stores weights uncompressed)."""
MAX_PICKLE_DEPTH = 256
"""Deepest nesting of containers in a pickle (torch's C++ unpickler recurses; 300,000 levels crash it)."""
MAX_PICKLE_STACK = 100_000
MAX_CODE_NESTING = 100
"""Deepest bracket nesting in a TorchScript code member (torch's parser recurses)."""
MAX_CODE_DEPTH = 200
"""Deepest Python syntax tree of a TorchScript code member (long operator chains nest as deeply as brackets)."""
MAX_CODE_BYTES = 16 << 20
MAX_GRAPH_NODES = 200_000
SANDBOX_LIMITS: sandbox.Limits | None = None
"""Limits of the child that parses a file (None: :data:`ttfs_core.sandbox.DEFAULT_LIMITS`)."""
_TEST_HOOK: str | None = None  # tests only: makes the sandboxed child misbehave (see sandbox.run)


class ModelLoadError(ValueError):
    """A model file cannot be loaded; the message is one line naming the problem."""


def _one_line(text: object, limit: int = 300) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _err(problem: str, reason: object = None, hint: str | None = SUPPORTED_FORMATS) -> ModelLoadError:
    msg = problem if reason is None else f"{problem}: {_one_line(reason, 200)}"
    return ModelLoadError(_one_line(msg if hint is None else f"{msg} ({hint})", 500))


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.4g} MiB" if n < 1 << 30 else f"{n / (1 << 30):.4g} GiB"


# --- entry points ----------------------------------------------------------------------------------------


def load_model(path: str | os.PathLike[str], arch: str | None = None, *, num_classes: int | None = None) -> nn.Module:
    """Load a model file (format detected by content) as an eval-mode, fx-traceable module.

    The file is parsed in a sandboxed child process (see the module docstring); this process only rebuilds
    the model from the child's plain-data description.
    """
    try:
        p = Path(path)
        _stat_file(p)  # the common mistakes are reported without starting a child
        try:
            payload = sandbox.run(
                "ttfs_core.loading:_sandbox_parse", {"path": str(p.absolute())}, SANDBOX_LIMITS, hook=_TEST_HOOK
            )
        except sandbox.SandboxError as e:
            if e.kind == "refused":
                raise ModelLoadError(_one_line(e.message, 500)) from None
            if e.kind == "busy":
                raise ModelLoadError(f"cannot load the model file: {e.message}") from None
            if e.kind == "internal":
                raise _err("cannot load the model file: the sandbox failed", e.message, hint=None) from None
            hint = "the file is corrupt, too complex or hostile"
            raise _err(f"cannot load the model file: the sandboxed parser {e.message}", hint=hint) from None
        return _rebuild(payload, arch, num_classes)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever a hostile file provokes is reported in one line
        raise _err("cannot load the model file", f"{type(e).__name__}: {e}") from e


def _load_in_process(
    path: str | os.PathLike[str], arch: str | None = None, *, num_classes: int | None = None
) -> nn.Module:
    """:func:`load_model` without the sandbox: the same checks, run in this process (debugging, benchmarks)."""
    try:
        return _rebuild(_sandbox_parse({"path": str(path)}), arch, num_classes)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _err("cannot load the model file", f"{type(e).__name__}: {e}") from e


def _sandbox_parse(request: dict[str, Any]) -> bytes:
    """The sandboxed child's side of :func:`load_model`: parse the file, describe the result as plain data."""
    try:
        kind, obj = _parse(request["path"])
        if kind == "graph":
            desc, tensors = _describe_graph(obj)
        else:
            desc, tensors = {"kind": "state_dict", "names": list(obj)}, obj
        return _pack(desc, tensors)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _err("cannot load the model file", f"{type(e).__name__}: {e}") from e


def _warm_up() -> None:
    """Run each format's loader once on a tiny model of our own (called by the sandbox's zygote before it forks
    children, so that each child does not redo torch's lazy initialisation: about 0.5 s per .pt2 file)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.ReLU()).eval()
    x = torch.zeros(2, 1, 2, 2)
    files = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for save in (
            lambda f: torch.export.save(torch.export.export(model, (x,)), f),
            lambda f: torch.jit.save(torch.jit.script(model), f),
        ):
            buf = io.BytesIO()
            save(buf)
            files.append(buf.getvalue())
    for data in files:
        kind, zf = _sniff(data)
        _pack(*_describe_graph(_load_export(zf) if kind == "export" else _load_torchscript(zf)))
    _read_safetensors(_write_safetensors(model.state_dict()), "warm-up", _WEIGHT_DTYPES)


def _parse(path: str | os.PathLike[str]) -> tuple[str, Any]:
    """('graph', fx.GraphModule) or ('state_dict', dict of tensors) from a model file."""
    data = _read(path)
    kind, zf = _sniff(data)
    if kind == "export":
        return "graph", _load_export(zf)
    if kind == "torchscript":
        return "graph", _load_torchscript(zf)
    return "state_dict", _state_dict(data, kind)


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

_FILE_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
               stat.S_IFDIR: "a folder", stat.S_IFSOCK: "a socket"}  # fmt: skip


def _stat_file(p: Path) -> os.stat_result:
    """stat() a model path (following links) and refuse what is not a regular, non-empty, small-enough file."""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise _err(f"model file not found: {p}") from None
    except OSError as e:
        raise _err(f"cannot read the model file {p}", e) from None
    _check_stat(st, p)
    return st


def _check_stat(st: os.stat_result, p: Path) -> None:
    if not stat.S_ISREG(st.st_mode):
        what = _FILE_KINDS.get(stat.S_IFMT(st.st_mode), "not a file")
        raise _err(f"not a regular file: {p} ({what})")
    if st.st_size == 0:
        raise _err(f"model file is empty: {p.name}")
    if st.st_size > MAX_FILE_BYTES:
        raise _err(f"model file is too large: {p.name} is {_mib(st.st_size)}, the limit is {_mib(MAX_FILE_BYTES)}")


def _read(path: str | os.PathLike[str]) -> bytes:
    """The file's bytes; non-regular files are refused before reading (a FIFO is opened without blocking)."""
    p = Path(path)
    before = _stat_file(p)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise _err(f"cannot read the model file {p}", e) from None
    try:
        st = os.fstat(fd)
        _check_stat(st, p)
        if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            raise _err(f"model file changed while being opened: {p}")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(st.st_size + 1)
    finally:
        os.close(fd)
    if len(data) != st.st_size:
        raise _err(f"model file changed while being read: {p}")
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


def _is_zip(data: bytes) -> bool:
    return data[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def _sniff(data: bytes) -> tuple[str, zipfile.ZipFile | None]:
    """('export' | 'torchscript' | 'torchsave' | 'safetensors' | 'pickle', the zip if it is one)."""
    if _is_zip(data):
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


# --- zip archives ----------------------------------------------------------------------------------------------


def _open_zip(data: bytes) -> zipfile.ZipFile:
    """Open a zip held in memory; refuse it by its directory (member count, declared sizes, compression
    ratios, encryption) before anything is decompressed, then verify every CRC."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
        if len(infos) > MAX_ZIP_MEMBERS:
            raise _err(f"zip archive has {len(infos)} members (the limit is {MAX_ZIP_MEMBERS})")
        names = [i.filename for i in infos]
        if len(set(names)) != len(names):
            raise _err("zip archive has duplicate member names")
        for info in infos:
            _check_zip_member(info)
        total = sum(i.file_size for i in infos)
        if total > MAX_UNCOMPRESSED:
            raise _err(f"zip archive expands to {_mib(total)}, more than the limit of {_mib(MAX_UNCOMPRESSED)}")
        bad = zf.testzip()
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - BadZipFile, zlib.error, NotImplementedError, OSError...
        raise _err("corrupt or truncated zip archive", e) from e
    if bad is not None:
        raise _err(f"corrupt zip archive (bad CRC in {bad!r})")
    return zf


def _check_zip_member(info: zipfile.ZipInfo) -> None:
    name = info.filename[:80]
    if info.flag_bits & 0x1:
        raise _err(f"zip member {name!r} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise _err(f"zip member {name!r} uses compression method {info.compress_type} (only stored or deflated)")
    if info.file_size > MAX_UNCOMPRESSED:
        raise _err(f"zip member {name!r} expands to {_mib(info.file_size)}, more than {_mib(MAX_UNCOMPRESSED)}")
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > 1 << 20 and ratio > MAX_ZIP_RATIO:
        raise _err(
            f"zip member {name!r} would expand {ratio:.0f}-fold, from {_mib(info.compress_size)} to "
            f"{_mib(info.file_size)}: refused as a zip bomb"
        )


def _root(zf: zipfile.ZipFile) -> str:
    roots = {n.split("/", 1)[0] for n in zf.namelist()}
    if len(roots) != 1 or not all("/" in n for n in zf.namelist()):
        raise _err("zip archive does not have the single top-level folder torch writes")
    return roots.pop()


def _members(zf: zipfile.ZipFile) -> set[str]:
    return {n.split("/", 1)[1] for n in zf.namelist() if "/" in n}


def _rezip(zf: zipfile.ZipFile, keep: Iterable[str] | None = None, replace: dict[str, bytes] | None = None) -> bytes:
    """A canonical stored copy of the (checked) members ``keep`` (default: all), built in memory, so that
    torch's zip reader sees exactly what was checked and no temporary file is written."""
    replace = replace or {}
    wanted = set(zf.namelist() if keep is None else keep)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for info in zf.infolist():
            if info.is_dir() or info.filename not in wanted:
                continue
            z.writestr(info.filename, replace[info.filename] if info.filename in replace else zf.read(info))
    return buf.getvalue()


# --- pickles: weights_only only, nesting bounded -------------------------------------------------------------

_PICKLE_UPDATES = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}


def _check_pickle(data: bytes, what: str, count: int = 1) -> None:
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
                raise _err(f"corrupt {what} (not a pickle)", e) from None
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
                    raise _err(
                        f"{what} nests containers more than {MAX_PICKLE_DEPTH} levels deep (refused: torch's "
                        "unpickler recurses and crashes on such files)"
                    )
                stack.extend([depth] * len(op.stack_after))
        if len(stack) + len(marks) > MAX_PICKLE_STACK:
            raise _err(f"{what} holds more than {MAX_PICKLE_STACK} unfinished objects (refused as hostile)")


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


def _safe_torch_load(data: bytes, what: str) -> Any:
    """``torch.load(weights_only=True)`` of a checked file: a zip is loaded from its canonical copy after its
    data.pkl passed :func:`_check_pickle`; a legacy file after its leading pickles did."""
    if _is_zip(data):
        zf = _open_zip(data)
        pkl_name = f"{_root(zf)}/data.pkl"
        if pkl_name not in zf.namelist():
            raise _err(f"corrupt {what}: the zip archive has no data.pkl")
        pkl = zf.read(pkl_name)
        _check_pickle(pkl, f"{what} (data.pkl)")
        data = _rezip(zf)
    else:
        pkl = data
        _check_pickle(data, what, count=5)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        msg = str(e)
        if "Weights only load failed" not in msg and not isinstance(e, pickle.UnpicklingError):
            raise _err(f"corrupt {what}", e) from e
        m = re.search(r"GLOBAL ([\w.]+)", msg)
        ok = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.")
        names = [m.group(1)] if m else [g for g in _pickle_globals(pkl) if not g.startswith(ok)]
        need = f" (it needs {names[0]!r})" if names else ""
        raise _err(
            f"refused to unpickle {what}{need}: only tensors and state dicts are loaded, since a pickle "
            "can run arbitrary code; save model.state_dict(), torch.export or TorchScript instead"
        ) from None
    _check_tensors(_tensors_in(obj), what)
    return obj


def _tensors_in(obj: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, Any]]:
    """(name, tensor) for the tensors in nested lists, tuples and dicts (at most 32 levels)."""
    if isinstance(obj, torch.Tensor) or depth > 32:
        return [(prefix or "tensor", obj)]
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return [t for k, v in items for t in _tensors_in(v, f"{prefix}.{k}" if prefix else str(k), depth + 1)]


# --- tensors -------------------------------------------------------------------------------------------------


def _overlaps(sizes: Sequence[int], strides: Sequence[int]) -> bool:
    """Whether two indices of a strided tensor address the same element (e.g. stride 0 with size > 1)."""
    reach = 0
    for stride, size in sorted((st, s) for s, st in zip(sizes, strides) if s > 1):
        if stride <= reach:
            return True
        reach += (size - 1) * stride
    return False


def _check_tensor(name: str, t: Any) -> None:
    """A tensor handed on must be a plain dense CPU tensor whose elements are distinct and inside its storage."""
    if not isinstance(t, torch.Tensor) or type(t) not in (torch.Tensor, nn.Parameter):
        raise _err(f"{name!r} is a {type(t).__name__}, not a plain tensor", hint=None)
    if t.layout != torch.strided or t.device.type != "cpu":
        raise _err(f"tensor {name!r} is {t.layout} on {t.device}; only dense CPU tensors are loaded", hint=None)
    if t.numel() == 0:
        return
    if _overlaps(t.shape, t.stride()) or min(t.stride(), default=0) < 0:
        raise _err(
            f"tensor {name!r} of shape {tuple(t.shape)} has overlapping strides {t.stride()} (refused: a few "
            "stored bytes posing as a large tensor)",
            hint=None,
        )
    span = t.storage_offset() + sum((s - 1) * st for s, st in zip(t.shape, t.stride())) + 1
    if span * t.element_size() > t.untyped_storage().nbytes():
        raise _err(f"tensor {name!r} reaches beyond its storage", hint=None)


def _check_tensors(items: Iterable[tuple[str, Any]], what: str) -> None:
    for name, t in items:
        if isinstance(t, torch.Tensor):
            _check_tensor(f"{what}: {name}" if what else name, t)


# --- safetensors -----------------------------------------------------------------------------------------------

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
_ST_CODES = {v: k for k, v in _ST_DTYPES.items()}
_WEIGHT_DTYPES = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8"}  # ints: counters, checked by arch
MAX_SAFETENSORS_HEADER = 100 << 20


def _safetensors_header(data: bytes, what: str, allowed: set[str]) -> dict[str, tuple[torch.dtype, list[int]]]:
    """Validate a safetensors header before anything is allocated: duplicate names, dtypes, sizes, ranges."""
    if len(data) < 10:
        raise _err(f"corrupt {what}: too short")
    n = int.from_bytes(data[:8], "little")
    if n > min(len(data) - 8, MAX_SAFETENSORS_HEADER):
        raise _err(f"corrupt {what}: the header length exceeds the file")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise _err(f"{what} names tensor {k[:80]!r} twice in its header (refused: which one is meant?)")
            out[k] = v
        return out

    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"), object_pairs_hook=no_duplicates)
    except ModelLoadError:
        raise
    except (ValueError, RecursionError) as e:
        raise _err(f"corrupt {what}: the header is not JSON", e) from None
    if not isinstance(header, dict):
        raise _err(f"corrupt {what}: the header is not a JSON object")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _err(f"corrupt {what}: __metadata__ must map strings to strings")
    body = len(data) - 8 - n
    spans: list[tuple[int, int, str]] = []
    out: dict[str, tuple[torch.dtype, list[int]]] = {}
    for name, info in header.items():
        dtype, shape, start, end = _safetensors_entry(name, info, what, allowed)
        numel = math.prod(shape)
        if numel * dtype.itemsize != end - start:
            raise _err(
                f"{what}: tensor {name[:80]!r} of shape {shape} and dtype {_ST_CODES[dtype]} needs "
                f"{numel * dtype.itemsize} bytes, but its header gives it {end - start}"
            )
        if end > body:
            raise _err(f"{what}: tensor {name[:80]!r} lies beyond the end of the file")
        spans.append((start, end, name))
        out[name] = (dtype, shape)
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise _err(f"{what}: tensors {a[:60]!r} and {b[:60]!r} share bytes")
    return out


def _safetensors_entry(name: str, info: Any, what: str, allowed: set[str]) -> tuple[torch.dtype, list[int], int, int]:
    ok = isinstance(info, dict) and set(info) == {"dtype", "shape", "data_offsets"}
    shape, offsets = (info.get("shape"), info.get("data_offsets")) if ok else (None, None)
    ints = isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2 and len(shape) <= 16
    ints = ints and all(type(v) is int and v >= 0 for v in [*shape, *offsets])
    if not ok or not ints or offsets[0] > offsets[1]:
        raise _err(f"corrupt {what}: bad header entry for tensor {name[:80]!r}")
    code = info["dtype"]
    if code not in allowed:
        raise _err(
            f"{what}: tensor {name[:80]!r} has dtype {str(code)[:12]}, which is not loaded (weights must be "
            "floating point; int, bool and complex tensors are never cast into weights)"
        )
    return _ST_DTYPES[code], shape, offsets[0], offsets[1]


def _read_safetensors(data: bytes, what: str, allowed: set[str]) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, its header checked by :func:`_safetensors_header` first."""
    from safetensors.torch import load as load_safetensors

    header = _safetensors_header(data, what, allowed)
    try:
        tensors = load_safetensors(data)
    except Exception as e:  # noqa: BLE001
        raise _err(f"corrupt {what}", e) from e
    if set(tensors) != set(header):
        raise _err(f"corrupt {what}: its tensors do not match its header")
    return {k: tensors[k] for k in header}


def _write_safetensors(tensors: dict[str, torch.Tensor]) -> bytes:
    """Serialise tensors (shared or strided ones too: each is copied) in the safetensors format."""
    header: dict[str, Any] = {}
    parts: list[bytes] = []
    offset = 0
    for name, t in tensors.items():
        code = _ST_CODES.get(t.dtype)
        if code is None:
            raise _err(f"tensor {name!r} has dtype {t.dtype}, which is not supported", hint=None)
        flat = t.detach().contiguous().reshape(-1)
        raw = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        parts.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    return b"".join([len(head).to_bytes(8, "little"), head, *parts])


# --- state dict + architecture ---------------------------------------------------------------------------


def _state_dict(data: bytes, kind: str) -> dict[str, torch.Tensor]:
    if kind == "safetensors":
        obj: Any = _read_safetensors(data, "safetensors file", _WEIGHT_DTYPES)
    else:
        obj = _safe_torch_load(data, "torch.save file")
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
    for k, v in obj.items():
        if v.dtype not in _ST_CODES or v.dtype == torch.bool:
            raise _err(
                f"state dict tensor {k[:80]!r} has dtype {v.dtype}, which is not loaded (weights must be floating "
                "point; int, bool and complex tensors are never cast into weights)"
            )
    _check_tensors(obj.items(), "state dict")
    return dict(obj)


def _load_arch(arch: str | None, sd: dict[str, torch.Tensor], num_classes: int | None) -> nn.Module:
    """Build ``arch`` (a ttfs_core.zoo or torchvision name) and load ``sd`` into it. The architecture is first
    built on the ``meta`` device, so that keys, shapes and dtypes are compared before anything is allocated."""
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

        def build() -> nn.Module:
            return zoo.build(arch, num_classes=num_classes) if takes_nc and num_classes else zoo.build(arch)

    elif arch in torchvision.models.list_models(module=torchvision.models):
        n = num_classes or _infer_num_classes(arch, sd)

        def build() -> nn.Module:
            return torchvision.models.get_model(arch, weights=None, **({"num_classes": n} if n else {}))

    else:
        raise _err(f"unknown architecture {arch!r}{zoo_problem}", hint=hint)
    with torch.device("meta"):
        reference = build()
    sd = _fit(reference, sd, arch)
    model = build()
    model.load_state_dict(sd, strict=False)
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
        raise _err(f"state dict does not fit architecture {arch!r}: {'; '.join(problems)}", hint=None)
    for k, r in ref.items():
        t = sd.get(k)
        if t is not None and (t.is_floating_point() != r.is_floating_point() or t.dtype == torch.bool):
            want = "floating-point weights" if r.is_floating_point() else f"{r.dtype}"
            raise _err(
                f"state dict tensor {k!r} has dtype {t.dtype}, but architecture {arch!r} needs {want} there "
                "(int, bool and complex tensors are never cast into weights)",
                hint=None,
            )
    return sd


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
    for cfg, folder in (("weights/model_weights_config.json", "weights"), ("constants/model_constants_config.json",
                                                                            "constants")):  # fmt: skip
        if f"data/{cfg}" in members:
            _check_payload_config(zf, root, f"data/{cfg}", f"data/{folder}")
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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = torch.export.load(io.BytesIO(_rezip(zf, replace=replace))).module()
    except Exception as e:  # noqa: BLE001
        raise _err("cannot load the torch.export program", capture.error or e) from e
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
        raise _err(f"corrupt .pt2 archive: {cfg} has no config")
    names = set(zf.namelist())
    for fqn, meta in entries.items():
        path = str(meta.get("path_name", "")) if isinstance(meta, dict) else ""
        if not isinstance(meta, dict) or meta.get("use_pickle") or not re.fullmatch(r"(weight|tensor)_\d+", path):
            raise _err(f".pt2 stores {fqn!r} as a pickle or custom object, which is refused")
        member = f"{root}/{folder}/{path}"
        if member not in names:
            raise _err(f"incomplete .pt2 archive: {folder}/{path} (for {fqn!r}) is missing")
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
        raise _err(f".pt2 tensor {fqn!r} has unsupported or malformed metadata (dtype, sizes, strides)") from None
    if layout != _PT2_STRIDED or not isinstance(device, dict) or device.get("type") != "cpu":
        raise _err(f".pt2 tensor {fqn!r} is not a dense CPU tensor; export the model on the CPU")
    if len(sizes) != len(strides):
        raise _err(f".pt2 tensor {fqn!r} has {len(sizes)} sizes but {len(strides)} strides")
    if math.prod(sizes) == 0:
        return
    if _overlaps(sizes, strides):
        raise _err(
            f".pt2 tensor {fqn!r} of shape {tuple(sizes)} has overlapping strides {tuple(strides)} (refused: a few "
            "stored bytes posing as a large tensor)"
        )
    span = offset + sum((s - 1) * st for s, st in zip(sizes, strides)) + 1
    if span * dtype.itemsize > nbytes:
        raise _err(f".pt2 tensor {fqn!r} of shape {tuple(sizes)} needs more than its {nbytes} stored bytes")


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
            _check_target(v, _json_node_name(obj))
        else:
            _check_program(v, k)


def _check_target(target: str, node: str) -> None:
    """A model.json call target must be on the allow-list (checked before torch deserialises anything)."""
    name = "operator." + target.removeprefix("_operator.") if target.startswith("_operator.") else target
    if not allowlist.is_allowed(name.removeprefix("torch.ops.")):
        raise _err(
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
# older files the infix form ("s0 + 1"). Both must fit this grammar before sympy (i.e. eval) sees them:
#   expr := term (("+" | "-") term)* ;  term := unary (("*" | "//" | "%") unary)* ;  unary := ("+" | "-") unary | atom
#   atom := INT | SYMBOL | "(" expr ")" | Integer(INT) | Symbol('SYMBOL', ASSUMPTION=True|False, ...)
#         | FUNC(expr, ...) | Pow(expr without Pow, Integer(0..8))
# No "**", "/", "!", floats or other names; integers up to 20 digits, nesting up to 30, 2,000 characters.
# Pow with a small literal exponent is what torch writes for a symbol used twice (H = W): 9**9**9 is not.
_EXPR_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_]\w*)|('[A-Za-z_]\w*')|(//|[-+*%(),=]))")
_EXPR_FUNCS = {
    "Add", "Mul", "FloorDiv", "CleanDiv", "CeilDiv", "Mod", "PythonMod", "Max", "Min", "Abs", "Eq", "Ne", "Lt",
    "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "Equality", "Unequality",
    "And", "Or", "Not",
}  # fmt: skip
_EXPR_ASSUMPTIONS = {
    "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "zero", "nonzero",
}  # fmt: skip
_EXPR_SYMBOL = re.compile(r"[a-z]+\d+")
MAX_EXPR_CHARS = 2000
MAX_EXPR_DEPTH = 30
MAX_EXPR_POWER = 8


class _Expr:
    """Recursive-descent checker of the shape-expression grammar above (nothing is evaluated)."""

    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            m = _EXPR_TOKEN.match(text, pos)
            if m is None or m.end() == pos:
                if text[pos:].strip() == "":
                    break
                raise ValueError(f"unexpected {text[pos : pos + 3]!r}")
            kind = ("int", "name", "str", "op")[next(i for i in range(4) if m.group(i + 1) is not None)]
            self.tokens.append((kind, m.group(m.lastindex or 0)))
            pos = m.end()
        self.i = 0
        self.in_pow = False

    def check(self) -> None:
        self.expr(0)
        if self.i != len(self.tokens):
            raise ValueError("trailing tokens")

    def peek(self) -> str:
        return self.tokens[self.i][1] if self.i < len(self.tokens) else ""

    def take(self, kind: str | None = None, value: str | None = None) -> str:
        if self.i >= len(self.tokens):
            raise ValueError("unexpected end")
        k, v = self.tokens[self.i]
        if (kind and k != kind) or (value and v != value):
            raise ValueError(f"unexpected {v!r}")
        self.i += 1
        return v

    def expr(self, depth: int) -> None:
        self.term(depth)
        while self.peek() in ("+", "-"):
            self.take()
            self.term(depth)

    def term(self, depth: int) -> None:
        self.unary(depth)
        while self.peek() in ("*", "//", "%"):
            self.take()
            self.unary(depth)

    def unary(self, depth: int) -> None:
        if depth > MAX_EXPR_DEPTH:
            raise ValueError("nested too deeply")
        if self.peek() in ("+", "-"):
            self.take()
            self.unary(depth + 1)
        else:
            self.atom(depth)

    def atom(self, depth: int) -> None:
        kind, value = self.tokens[self.i] if self.i < len(self.tokens) else ("", "")
        if kind == "int":
            self.integer()
        elif value == "(":
            self.take()
            self.expr(depth + 1)
            self.take("op", ")")
        elif kind == "name" and self.i + 1 < len(self.tokens) and self.tokens[self.i + 1][1] == "(":
            self.call(self.take(), depth + 1)
        elif kind == "name" and _EXPR_SYMBOL.fullmatch(value):
            self.take()
        else:
            raise ValueError(f"unexpected {value!r}")

    def integer(self, limit: int | None = None) -> None:
        value = self.take("int")
        if len(value) > 20 or (limit is not None and int(value) > limit):
            raise ValueError(f"integer {value[:25]} is too large")

    def call(self, name: str, depth: int) -> None:
        self.take("op", "(")
        if name == "Symbol":
            if not _EXPR_SYMBOL.fullmatch(self.take("str").strip("'")):
                raise ValueError("bad symbol name")
            while self.peek() == ",":
                self.take()
                if self.take("name") not in _EXPR_ASSUMPTIONS:
                    raise ValueError("unknown assumption")
                self.take("op", "=")
                if self.take("name") not in ("True", "False"):
                    raise ValueError("assumptions are True or False")
        elif name == "Integer":
            if self.peek() == "-":
                self.take()
            self.integer()
        elif name == "Pow":
            if self.in_pow:
                raise ValueError("nested powers")
            self.in_pow = True
            self.expr(depth)
            self.in_pow = False
            self.take("op", ",")
            if self.peek() == "Integer":
                self.take()
                self.take("op", "(")
                self.integer(MAX_EXPR_POWER)
                self.take("op", ")")
            else:
                self.integer(MAX_EXPR_POWER)
        elif name in _EXPR_FUNCS:
            self.expr(depth)
            while self.peek() == ",":
                self.take()
                self.expr(depth)
        else:
            raise ValueError(f"{name!r} is not allowed")
        self.take("op", ")")


def _check_expr(expr: object) -> None:
    """Refuse a symbolic shape expression that does not fit the grammar above (sympify would eval it)."""
    try:
        if not isinstance(expr, str) or len(expr) > MAX_EXPR_CHARS:
            raise ValueError("not a short string")
        _Expr(expr).check()
    except (ValueError, IndexError) as e:
        raise _err(f".pt2 holds a symbolic shape expression that is refused ({e}): {str(expr)[:60]!r}") from None


def _check_loaded_graph(gm: nn.Module) -> None:
    """The child's early look at the loaded program: only allow-listed calls (the caller checks everything again)."""
    if not isinstance(gm, fx.GraphModule):
        raise _err("torch.export program did not give an fx GraphModule")
    for n in gm.graph.nodes:
        t = n.target
        ok = n.op in ("placeholder", "get_attr", "output") or (n.op == "call_module" and t == "_guards_fn")
        if n.op == "call_function":
            ok = allowlist.is_allowed(allowlist.target_name(t))
        if not ok:
            raise _err(
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


# --- hand-over: the child describes the model as plain data, the caller rebuilds it ---------------------------

_HANDOVER_FORMAT = 1
_MAX_DESCRIPTION = 256 << 20
_GRAPH_CLASSES = {"GraphModule", "TorchScriptGraph"}
_MEMORY_FORMATS = {"contiguous_format", "channels_last", "channels_last_3d", "preserve_format"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,79}")
_LABEL = re.compile(r"[\w.\[\]'\- ]{0,200}")
_RESERVED_NAMES = {"self", "torch", "fx", "operator", "_operator", "math", "inf", "nan", "device"} | set(dir(builtins))


def _pack(desc: dict[str, Any], tensors: dict[str, torch.Tensor]) -> bytes:
    """Child side: ``<8-byte length><JSON description><safetensors bytes>``."""
    _check_tensors(tensors.items(), "")
    head = json.dumps({**desc, "format": _HANDOVER_FORMAT}, allow_nan=False).encode()
    return len(head).to_bytes(8, "little") + head + _write_safetensors(tensors)


def _rebuild(payload: bytes, arch: str | None, num_classes: int | None) -> nn.Module:
    """Caller side: the model from the child's (untrusted) plain-data description; nothing in it is run."""
    what = "the sandboxed parser's output"
    n = int.from_bytes(payload[:8], "little") if len(payload) >= 8 else -1
    if not 0 < n <= min(len(payload) - 8, _MAX_DESCRIPTION):
        raise _err(f"corrupt {what}", hint=None)
    try:
        desc = json.loads(payload[8 : 8 + n].decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise _err(f"corrupt {what}", e, hint=None) from None
    if not isinstance(desc, dict) or desc.get("format") != _HANDOVER_FORMAT:
        raise _err(f"corrupt {what}: unknown format", hint=None)
    tensors = _read_safetensors(payload[8 + n :], what, set(_ST_DTYPES))
    if desc.get("kind") == "state_dict":
        names = desc.get("names")
        if (
            not isinstance(names, list)
            or sorted(str(k) for k in names) != sorted(tensors)
            or len(set(names)) != len(names)
        ):
            raise _err(f"corrupt {what}: tensor names", hint=None)
        return _load_arch(arch, {k: tensors[k] for k in names}, num_classes)
    if desc.get("kind") == "graph":
        return _build_graph(desc, tensors)
    raise _err(f"corrupt {what}: unknown kind", hint=None)


def _describe_graph(gm: fx.GraphModule) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
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
            _check_tensor(target, t)
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
            raise _err(f"graph node {n.name} ({n.op} {n.target}) is not supported", hint=None)
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
            raise _err("the exported program must take its tensors as positional arguments", hint=None)
    if out_spec is None or out_spec.is_leaf():
        return "leaf"
    if out_spec.type in (tuple, list) and all(c.is_leaf() for c in out_spec.children_specs):
        return "tuple"
    raise _err("the exported program must return a tensor or a tuple of tensors", hint=None)


def _fetch_attr(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _target_name(target: Any, node: str) -> str:
    name = allowlist.target_name(target)
    if not allowlist.is_allowed(name):
        raise _err(f"graph node {node} calls {name}, which is not supported; the graph may call: "
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
            raise _err(f"graph argument {value.name} refers to a node that is not handed over", hint=None)
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
    raise _err(f"graph argument of type {type(value).__name__} is not supported", hint=None)


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
        raise _err("the model's graph is refused", e, hint=None) from None
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as e:
        raise _err("the sandboxed parser's output is not a valid graph", f"{type(e).__name__}: {e}", hint=None) from e
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
        raise _err(f"the model's graph is refused on its own input shape {shape}", e, hint=None) from None
    other = (shape[0] + 1, *shape[1:])
    try:
        guard.check(other)
    except allowlist.GraphRefused as e:
        raise _err(
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
"""(Each becomes an fx call that must then be on :data:`ttfs_core.allowlist.ALLOWED`.)"""
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


def _load_torchscript(zf: zipfile.ZipFile | None) -> fx.GraphModule:
    assert zf is not None
    keep = _check_torchscript_archive(zf, _root(zf))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(io.BytesIO(_rezip(zf, keep)), map_location="cpu")
    except Exception as e:  # noqa: BLE001
        raise _err("cannot load the TorchScript archive", e) from e
    _check_tensors(module.state_dict().items(), "TorchScript")
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
            _check_pickle(zf.read(name), f"TorchScript {member}")
        elif member not in _TS_FIXED and not _TS_STORAGE.fullmatch(member):
            raise _err(f"TorchScript archive member {member[:80]!r} is not part of torch's layout (refused)")
        keep.append(name)
    return keep


def _check_ts_code(member: str, raw: bytes) -> None:
    """A TorchScript code member: no load-time code (``__setstate__``), bounded nesting, valid syntax."""
    if len(raw) > MAX_CODE_BYTES:
        raise _err(f"TorchScript code {member[:80]!r} is larger than {_mib(MAX_CODE_BYTES)}")
    if b"__setstate__" in raw:
        raise _err(
            "TorchScript archive defines __setstate__ (code that runs while loading), which is "
            "refused; re-save with torch.export or as a state dict",
            hint=None,
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _err(f"TorchScript code {member[:80]!r} is not UTF-8 text") from None
    depth = deepest = 0
    for m in _BRACKETS.finditer(text):
        depth = depth + 1 if m.group() in "([{" else max(depth - 1, 0)
        deepest = max(deepest, depth)
    if deepest > MAX_CODE_NESTING:
        raise _err(
            f"TorchScript code {member[:80]!r} nests brackets {deepest} deep (the limit is {MAX_CODE_NESTING}; "
            "torch's parser recurses and crashes on such files)"
        )
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        raise _err(f"TorchScript code {member[:80]!r} is not valid TorchScript source", e) from None
    if _ast_depth(tree) > MAX_CODE_DEPTH:
        raise _err(f"TorchScript code {member[:80]!r} nests expressions more than {MAX_CODE_DEPTH} levels deep")


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
        raise _err("TorchScript module has no forward method", e, hint=None) from e
    torch._C._jit_pass_inline(graph)
    _check_ts_kinds(graph.block())
    _check_ts_folding(graph)
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
            raise _err(
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
