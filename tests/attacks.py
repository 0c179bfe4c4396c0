"""Builders of hostile model files: each is small and made in a given folder.

Every builder returns an :class:`Attack`: the file, how to load it (``arch``), a file the attack would write if
it ran code (``marker``), and what ``load_model`` is expected to say. Against the loader before the sandbox these
files ran code, crashed the process, hung it or made it allocate gigabytes.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import struct
import sys
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ttfs_core import zoo


@dataclass(frozen=True)
class Attack:
    name: str
    path: Path
    expected: str  # regex the ModelLoadError message must match
    arch: str | None = None
    marker: Path | None = None  # written if the attack's code ran


# --- base files --------------------------------------------------------------------------------------------


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def base_pt2(folder: Path) -> Path:
    """A small legitimate torch.export archive with a dynamic batch dimension."""
    path = folder / "base.pt2"
    x = torch.zeros(2, 1, 4, 4)
    program = torch.export.export(tiny_mlp(), (x,), dynamic_shapes={"input": {0: torch.export.Dim("batch")}})
    torch.export.save(program, path)
    return path


def base_torchscript(folder: Path) -> Path:
    """A small legitimate TorchScript archive."""
    path = folder / "base.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(tiny_mlp()).save(str(path))
    return path


def rewrite_zip(src: Path, dst: Path, edit: Callable[[str, bytes], bytes | None]) -> Path:
    """Copy a zip member by member; ``edit(name, data)`` may replace a member's bytes or drop it (None)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)
    return dst


def _edit_json(suffix: str, change: Callable[[dict], None]) -> Callable[[str, bytes], bytes]:
    def edit(name: str, data: bytes) -> bytes:
        if not name.endswith(suffix):
            return data
        obj = json.loads(data)
        change(obj)
        return json.dumps(obj).encode()

    return edit


# --- code that runs while loading --------------------------------------------------------------------------

_DATA_PACKAGE_MODEL = """
import torch
from torch import nn


class Evil(nn.Module):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.w = torch.ones(1)
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return self.w, self.path, self.training

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        self.w, self.path, self.training = state
        torch.save(self.w, self.path)
"""


@contextlib.contextmanager
def _importable(root: Path, package: str) -> Iterator[None]:
    """Make ``root`` importable for a while; afterwards forget ``package`` and its modules again."""
    saved = {k: v for k, v in sys.modules.items() if k == package or k.startswith(package + ".")}
    for k in saved:
        del sys.modules[k]
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path.remove(str(root))
        for k in [k for k in sys.modules if k == package or k.startswith(package + ".")]:
            del sys.modules[k]
        sys.modules.update(saved)


def torchscript_setstate_in_data_package(folder: Path) -> Attack:
    """A model class from a Python package named ``data``: its code lands in ``code/__torch__/data/``, which the
    old ``__setstate__`` scan skipped; ``torch.jit.load`` runs that ``__setstate__``, which writes a file."""
    marker = folder / "written_by_setstate"
    pkg = folder / "pkgroot" / "data"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "evil_model.py").write_text(_DATA_PACKAGE_MODEL)
    path = folder / "setstate_in_data.pt"
    with _importable(pkg.parent, "data"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = importlib.import_module("data.evil_model")
        torch.jit.script(module.Evil(str(marker))).save(str(path))
    assert any("/code/__torch__/data/" in n for n in zipfile.ZipFile(path).namelist())
    return Attack("torchscript_setstate_in_data_package", path, "__setstate__", marker=marker)


# --- crashes -------------------------------------------------------------------------------------------------


def torchscript_deep_brackets(folder: Path, base: Path, depth: int = 20_000) -> Attack:
    """A TorchScript code file with brackets nested 20,000 deep (torch's parser recursed into a segfault)."""
    deep = "\ndef _deep() -> int:\n  return " + "(" * depth + "1" + ")" * depth + "\n"

    def edit(name: str, data: bytes) -> bytes:
        if name.endswith(".py") and b"def forward" in data:
            return data + deep.encode()
        return data

    path = rewrite_zip(base, folder / "deep_brackets.pt", edit)
    return Attack("torchscript_deep_brackets", path, r"nests brackets 20000 deep")


def torchscript_deep_pickle(folder: Path, base: Path, depth: int = 300_000) -> Attack:
    """``data.pkl`` holding lists nested 300,000 deep (torch's C++ unpickler recursed into a segfault). Built
    the way pickle writes nested lists, all 300,000 lists are open on the unpickler's stack at once."""
    pkl = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
    path = rewrite_zip(base, folder / "deep_pickle.pt", lambda n, d: pkl if n.endswith("/data.pkl") else d)
    return Attack("torchscript_deep_pickle", path, r"data\.pkl holds more than \d+ unfinished objects")


def torchscript_deep_tuple_pickle(folder: Path, base: Path, depth: int = 300_000) -> Attack:
    """``data.pkl`` holding tuples nested 300,000 deep, built with TUPLE1 (one object on the stack at a time)."""
    pkl = b"\x80\x02" + b")" + b"\x85" * depth + b"."
    path = rewrite_zip(base, folder / "deep_tuples.pt", lambda n, d: pkl if n.endswith("/data.pkl") else d)
    return Attack("torchscript_deep_tuple_pickle", path, r"data\.pkl nests containers more than \d+ levels deep")


# --- hangs ---------------------------------------------------------------------------------------------------


def _with_expression(base: Path, dst: Path, extra: str) -> Path:
    def change(program: dict) -> None:
        for tv in program["graph_module"]["graph"]["tensor_values"].values():
            for size in tv["sizes"]:
                if "as_expr" in size:
                    size["as_expr"]["expr_str"] += extra

    return rewrite_zip(base, dst, _edit_json("models/model.json", change))


def pt2_power_tower(folder: Path, base: Path) -> Attack:
    """``0*9**9**9`` in a shape expression: sympy computes 9**387420489 (a hang)."""
    path = _with_expression(base, folder / "power.pt2", " + 0*9**9**9")
    return Attack("pt2_power_tower", path, r"symbolic shape expression that is refused")


def pt2_factorial(folder: Path, base: Path) -> Attack:
    """A factorial in a shape expression (sympy's parser turns ``n!`` into ``factorial(n)``): a hang."""
    path = _with_expression(base, folder / "factorial.pt2", " + 0*99999999!")
    return Attack("pt2_factorial", path, r"symbolic shape expression that is refused")


def fifo(folder: Path) -> Attack:
    """A FIFO as the model path: reading it blocks until someone writes."""
    path = folder / "model.pt"
    os.mkfifo(path)
    return Attack("fifo", path, r"not a regular file: .*\(a FIFO\)")


# --- memory from tiny files ----------------------------------------------------------------------------------


def _deflated_zeros(size: int) -> tuple[bytes, int]:
    """Raw deflate data of ``size`` zero bytes (built from one compressed block) and its CRC-32."""
    block = 1 << 24
    assert size % block == 0
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    part = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)  # after a full flush, blocks repeat exactly
    data = part * (size // block) + c.flush()
    crc, zeros = 0, bytes(block)
    for _ in range(size // block):
        crc = zlib.crc32(zeros, crc)
    return data, crc


def _append_raw_member(path: Path, name: str, raw: bytes, crc: int, size: int) -> None:
    """Append a deflated member with honest sizes and CRC to a zip (written by hand: zipfile would have to
    compress gigabytes)."""
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        blob = path.read_bytes()
        cd_offset = z.start_dir
    entries = blob[:cd_offset]
    central = blob[cd_offset : blob.rindex(b"PK\x05\x06")]
    fname = name.encode()
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0x21, crc, len(raw), size, len(fname), 0)
    offset = len(entries)
    entry = struct.pack(
        "<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 8, 0, 0x21, crc, len(raw), size, len(fname), 0, 0, 0, 0, 0,
        offset,
    )  # fmt: skip
    body = entries + local + fname + raw
    cd = central + entry + fname
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(infos) + 1, len(infos) + 1, len(cd), len(body), 0)
    path.write_bytes(body + cd + end)


def _zip_bomb(base: Path, dst: Path, member: str, size: int) -> Path:
    """A copy of the archive `base` with one more member, `size` zero bytes deflated to about size/1000."""
    path = rewrite_zip(base, dst, lambda n, d: d)
    root = zipfile.ZipFile(path).namelist()[0].split("/")[0]
    raw, crc = _deflated_zeros(size)
    _append_raw_member(path, f"{root}/{member}", raw, crc, size)
    return path


def pt2_zip_bomb(folder: Path, base: Path, size: int = 3 << 30) -> Attack:
    """A 3 GiB weight member deflated to about 3 MB (the old check allowed 4 GiB, then copied it out)."""
    path = _zip_bomb(base, folder / "bomb.pt2", "data/weights/weight_99", size)
    return Attack("pt2_zip_bomb", path, r"expands to 3 GiB, more than")


def torchscript_zip_bomb(folder: Path, base: Path, size: int = 768 << 20) -> Attack:
    """A storage member of 768 MiB deflated 1000-fold: refused by its ratio before decompression."""
    path = _zip_bomb(base, folder / "bomb.pt", "data/99", size)
    return Attack("torchscript_zip_bomb", path, r"would expand \d+-fold.*zip bomb")


def sparse_8gb(folder: Path) -> Attack:
    """An 8 GiB sparse file (safetensors-looking header): the old loader read it whole."""
    path = folder / "huge.safetensors"
    header = b'{"w":{"dtype":"F32","shape":[2147483648],"data_offsets":[0,8589934592]}}'
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    os.truncate(path, 8 << 30)
    return Attack("sparse_8gb", path, r"model file is too large: .* is 8 GiB", arch="resnet18")


def pt2_stride0_weight(folder: Path, base: Path) -> Attack:
    """A weight declared as a 2**20 x 2**20 view with strides 0 of its 32 stored bytes (4 TiB logically)."""

    def change(cfg: dict) -> None:
        meta = next(iter(cfg["config"].values()))["tensor_meta"]
        meta["sizes"] = [{"as_int": 1 << 20}, {"as_int": 1 << 20}]
        meta["strides"] = [{"as_int": 0}, {"as_int": 0}]

    path = rewrite_zip(base, folder / "stride0.pt2", _edit_json("model_weights_config.json", change))
    return Attack("pt2_stride0_weight", path, r"has overlapping strides \(0, 0\)")


def pt2_empty_weight_member(folder: Path, base: Path) -> Attack:
    """An empty weight member: torch.export.load makes it ``torch.zeros(declared sizes)``, here 64 GiB."""

    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("data/weights/weight_0"):
            return b""
        if name.endswith("model_weights_config.json"):
            cfg = json.loads(data)
            for entry in cfg["config"].values():
                if entry["path_name"] == "weight_0":
                    entry["tensor_meta"]["sizes"] = [{"as_int": 1 << 17}, {"as_int": 1 << 17}]
                    entry["tensor_meta"]["strides"] = [{"as_int": 1 << 17}, {"as_int": 1}]
            return json.dumps(cfg).encode()
        return data

    path = rewrite_zip(base, folder / "empty_weight.pt2", edit)
    return Attack("pt2_empty_weight_member", path, r"needs more than its 0 stored bytes")


def _safetensors_raw(header: dict | str, data: bytes = b"") -> bytes:
    text = header if isinstance(header, str) else json.dumps(header, separators=(",", ":"))
    return len(text).to_bytes(8, "little") + text.encode() + data


def safetensors_huge_classifier(folder: Path) -> Attack:
    """86 bytes: ``fc.weight`` of shape (10**12, 0) -- no data, but the class count inferred from it made the
    old loader build resnet18 with a 10**12-way classifier (gigabytes) before any shape check."""
    path = folder / "tiny.safetensors"
    raw = _safetensors_raw({"fc.weight": {"dtype": "F32", "shape": [10**12, 0], "data_offsets": [0, 0]}})
    path.write_bytes(raw)
    return Attack(
        "safetensors_huge_classifier", path, r"does not fit architecture 'resnet18'.*fc\.weight \(1000000000000, 0\)",
        arch="resnet18",
    )  # fmt: skip


def legacy_pickle_huge_storage(folder: Path) -> Attack:
    """A legacy (non-zip) torch.save file whose pickle declares a storage of 2**31 - 1 floats (8 GiB): the
    allocation is stopped by the sandbox's memory limit."""
    path = folder / "legacy.pt"
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(70_000)}, buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    old, new = b"J" + struct.pack("<i", 70_000), b"J" + struct.pack("<i", 2**31 - 1)
    assert data.count(old) >= 1
    path.write_bytes(data.replace(old, new))
    return Attack("legacy_pickle_huge_storage", path, r"needs more than [\d.]+ GiB of memory", arch="lenet5")


# --- silently wrong ------------------------------------------------------------------------------------------


def safetensors_duplicate_names(folder: Path) -> Attack:
    """The same tensor name twice in the header (safetensors keeps the last one)."""
    path = folder / "dup.safetensors"
    entry = '{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
    path.write_bytes(_safetensors_raw(f'{{"0.bias":{entry},"0.bias":{entry}}}', b"\0\0\x80?"))
    return Attack("safetensors_duplicate_names", path, r"names tensor '0\.bias' twice", arch="lenet5")


def _lenet5_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in zoo.build("lenet5").state_dict().items()}


def safetensors_int_weight(folder: Path) -> Attack:
    """A conv weight stored as int32 (load_state_dict would cast it to float without a word)."""
    sd = _lenet5_state_dict()
    sd["0.weight"] = (sd["0.weight"] * 100).to(torch.int32)
    path = folder / "int.safetensors"
    save_file(sd, str(path))
    return Attack(
        "safetensors_int_weight", path, r"'0\.weight' has dtype torch\.int32, but architecture 'lenet5' needs "
        "floating-point weights", arch="lenet5",
    )  # fmt: skip


def safetensors_bool_weight(folder: Path) -> Attack:
    sd = _lenet5_state_dict()
    sd["0.weight"] = sd["0.weight"] > 0
    path = folder / "bool.safetensors"
    save_file(sd, str(path))
    return Attack("safetensors_bool_weight", path, r"tensor '0\.weight' has dtype BOOL, which is not loaded", "lenet5")


def safetensors_complex_weight(folder: Path) -> Attack:
    path = folder / "complex.safetensors"
    path.write_bytes(_safetensors_raw({"0.bias": {"dtype": "C64", "shape": [6], "data_offsets": [0, 48]}}, bytes(48)))
    return Attack("safetensors_complex_weight", path, r"tensor '0\.bias' has dtype C64, which is not loaded", "lenet5")


def torchsave_complex_weight(folder: Path) -> Attack:
    sd = _lenet5_state_dict()
    sd["0.bias"] = sd["0.bias"].to(torch.complex64)
    path = folder / "complex.pt"
    torch.save(sd, path)
    expected = r"'0\.bias' has dtype torch\.complex64, which is not loaded"
    return Attack("torchsave_complex_weight", path, expected, "lenet5")


# --- graphs that run in the caller: refused by the allow-list, by argument checks or on meta ----------------------

_REFUSED = r"which is not supported \(only operators the converter can lower may run"


class _BiasNet(nn.Module):
    """A linear layer plus a stored 10-float bias read through a view: the node the attacks below rename."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(16, 10)
        self.register_buffer("b", torch.randn(10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)) + self.b.view(10)


def bias_pt2(folder: Path) -> Path:
    """An ordinary program exported the usual way, on a batch of one (so every shape in it is static)."""
    path = folder / "bias.pt2"
    torch.export.save(torch.export.export(_BiasNet().eval(), (torch.zeros(1, 1, 4, 4),)), path)
    return path


def _nodes_edit(base: Path, dst: Path, change: Callable[[list[dict]], None]) -> Path:
    def edit(obj: dict) -> None:
        change(obj["graph_module"]["graph"]["nodes"])

    return rewrite_zip(base, dst, _edit_json("models/model.json", edit))


def _node(nodes: list[dict], name: str) -> dict:
    return next(n for n in nodes if n.get("name") == name)


def _ints(name: str, values: list[int]) -> dict:
    return {"name": name, "arg": {"as_ints": values}, "kind": 1}


def pt2_reshape_alias_crash(folder: Path, base: Path) -> Attack:
    """The view node renamed to ``aten._reshape_alias`` (no bounds check): 2**33 floats of a 10-float bias. The
    caller then read far outside the buffer: ``ttfs verify`` died with exit 139, the explorer's server with it."""

    def change(nodes: list[dict]) -> None:
        view = _node(nodes, "view")
        view["target"] = "torch.ops.aten._reshape_alias.default"
        view["inputs"] = [view["inputs"][0], _ints("size", [2**33]), _ints("stride", [1])]

    path = _nodes_edit(base, folder / "reshape_alias.pt2", change)
    expected = r"node view calls 'torch\.ops\.aten\._reshape_alias\.default', " + _REFUSED
    return Attack("pt2_reshape_alias_crash", path, expected)


def pt2_reshape_alias_leak(folder: Path, base: Path) -> Attack:
    """The same route, 4,096 floats of the 10-float buffer: "logits" read from the heap (other sessions' bytes)."""

    def change(nodes: list[dict]) -> None:
        view = _node(nodes, "view")
        view["target"] = "torch.ops.aten._reshape_alias.default"
        view["inputs"] = [view["inputs"][0], _ints("size", [4096]), _ints("stride", [1])]

    path = _nodes_edit(base, folder / "reshape_alias_leak.pt2", change)
    return Attack("pt2_reshape_alias_leak", path, r"_reshape_alias\.default', " + _REFUSED)


def pt2_sparse_unsafe(folder: Path, base: Path) -> Attack:
    """``aten._sparse_coo_tensor_unsafe`` with an index of 2**28, made dense: an out-of-bounds write."""

    def change(nodes: list[dict]) -> None:
        view = _node(nodes, "view")
        view["target"] = "torch.ops.aten._sparse_coo_tensor_unsafe.default"
        view["inputs"] = [view["inputs"][0], view["inputs"][0], _ints("size", [2**28])]

    path = _nodes_edit(base, folder / "sparse.pt2", change)
    return Attack("pt2_sparse_unsafe", path, r"_sparse_coo_tensor_unsafe\.default', " + _REFUSED)


def pt2_factory(folder: Path, base: Path) -> Attack:
    """The view node turned into ``aten.ones`` of 1.6 GB, without the ``device`` keyword that once refused it by
    accident."""

    def change(nodes: list[dict]) -> None:
        view = _node(nodes, "view")
        view["target"] = "torch.ops.aten.ones.default"
        view["inputs"] = [_ints("size", [400_000_000])]

    path = _nodes_edit(base, folder / "ones.pt2", change)
    return Attack("pt2_factory", path, r"node view calls 'torch\.ops\.aten\.ones\.default', " + _REFUSED)


class _MatmulNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w


def pt2_matmul(folder: Path) -> Attack:
    """A genuine program calling ``matmul`` (a product of two computed matrices can run for minutes)."""
    path = folder / "matmul.pt2"
    torch.export.save(torch.export.export(_MatmulNet().eval(), (torch.zeros(1, 1, 4, 4),)), path)
    return Attack("pt2_matmul", path, r"calls 'torch\.ops\.aten\.(matmul|mm)\.default', " + _REFUSED)


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean((2, 3))


def pt2_conv_padding(folder: Path) -> Attack:
    """An allowed operator with hostile arguments: a convolution padded by 40,000 on each side asks for
    4 x 80,000**2 floats (95 GiB) in the caller."""

    def change(nodes: list[dict]) -> None:
        conv = _node(nodes, "conv2d")
        kept = [a for a in conv["inputs"] if a["name"] in ("input", "weight", "bias")]
        conv["inputs"] = [*kept, _ints("stride", [1, 1]), _ints("padding", [40_000, 40_000])]

    base = folder / "conv.pt2"
    torch.export.save(torch.export.export(_ConvNet().eval(), (torch.zeros(1, 1, 8, 8),)), base)
    path = _nodes_edit(base, folder / "conv_padding.pt2", change)
    base.unlink()
    return Attack("pt2_conv_padding", path, r"node conv2d would hold 2\.56e\+10 elements per input")


def pt2_bool_as_int(folder: Path, base: Path) -> Attack:
    """A bool where an integer is expected (flatten's start_dim): Python would take True for 1."""

    def change(nodes: list[dict]) -> None:
        flatten = _node(nodes, "flatten")
        flatten["inputs"][1] = {"name": "start_dim", "arg": {"as_bool": True}, "kind": 1}

    path = _nodes_edit(base, folder / "bool.pt2", change)
    return Attack("pt2_bool_as_int", path, r"node flatten \(aten\.flatten\.using_ints\): argument 'start_dim' is True "
                  r"where an integer is expected")


class _Folding(nn.Module):
    """Forty-one products of 4096 x 4096 matrices made in forward() from nothing the input touches: freezing the
    module computed them while loading (90 s and 3.2 GB in the sandboxed child) from a 35 KB file."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.ones(4096, 4096)
        for _ in range(41):
            a = a @ a
        return x + a[0, 0]


def torchscript_constant_folding(folder: Path) -> Attack:
    path = folder / "folding.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(_Folding()).save(str(path))
    return Attack("torchscript_constant_folding", path, r"TorchScript node aten::ones computes on stored values only")


def build_all(folder: Path) -> list[Attack]:
    """Every attack, each in its own subfolder of ``folder``."""
    bases = folder / "bases"
    bases.mkdir()
    pt2, ts, bias = base_pt2(bases), base_torchscript(bases), bias_pt2(bases)
    makers: list[Callable[[Path], Attack]] = [
        torchscript_setstate_in_data_package,
        lambda f: torchscript_deep_brackets(f, ts),
        lambda f: torchscript_deep_pickle(f, ts),
        lambda f: torchscript_deep_tuple_pickle(f, ts),
        lambda f: pt2_power_tower(f, pt2),
        lambda f: pt2_factorial(f, pt2),
        fifo,
        lambda f: pt2_zip_bomb(f, pt2),
        lambda f: torchscript_zip_bomb(f, ts),
        sparse_8gb,
        lambda f: pt2_stride0_weight(f, pt2),
        lambda f: pt2_empty_weight_member(f, pt2),
        safetensors_huge_classifier,
        legacy_pickle_huge_storage,
        safetensors_duplicate_names,
        safetensors_int_weight,
        safetensors_bool_weight,
        safetensors_complex_weight,
        torchsave_complex_weight,
        lambda f: pt2_reshape_alias_crash(f, bias),
        lambda f: pt2_reshape_alias_leak(f, bias),
        lambda f: pt2_sparse_unsafe(f, bias),
        lambda f: pt2_factory(f, bias),
        pt2_matmul,
        pt2_conv_padding,
        lambda f: pt2_bool_as_int(f, bias),
        torchscript_constant_folding,
    ]
    attacks = []
    for i, make in enumerate(makers):
        sub = folder / f"attack{i:02d}"
        sub.mkdir()
        attacks.append(make(sub))
    return attacks
