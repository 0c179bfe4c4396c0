"""The first look at a model file: stat and read it without following it anywhere odd (FIFOs, devices), tell
its format from its content, and check a zip archive by its directory before anything is decompressed."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from collections.abc import Iterable
from pathlib import Path

from .errors import ModelLoadError, err, mib

MAX_FILE_BYTES = 1 << 30
"""Largest model file read (checked with stat before reading)."""
MAX_UNCOMPRESSED = 1 << 30
"""Bytes all members of a zip archive may expand to, as declared in its directory (checked before reading)."""
MAX_ZIP_MEMBERS = 20_000
MAX_ZIP_RATIO = 100
"""Largest compression ratio of a zip member over 1 MiB (torch stores weights uncompressed)."""


# --- reading and format detection ------------------------------------------------------------------------

_FILE_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
               stat.S_IFDIR: "a folder", stat.S_IFSOCK: "a socket"}  # fmt: skip


def stat_file(p: Path) -> os.stat_result:
    """stat() a model path (following links) and refuse what is not a regular, non-empty, small-enough file."""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise err(f"model file not found: {p}") from None
    except OSError as e:
        raise err(f"cannot read the model file {p}", e) from None
    _check_stat(st, p)
    return st


def _check_stat(st: os.stat_result, p: Path) -> None:
    if not stat.S_ISREG(st.st_mode):
        what = _FILE_KINDS.get(stat.S_IFMT(st.st_mode), "not a file")
        raise err(f"not a regular file: {p} ({what})")
    if st.st_size == 0:
        raise err(f"model file is empty: {p.name}")
    if st.st_size > MAX_FILE_BYTES:
        raise err(f"model file is too large: {p.name} is {mib(st.st_size)}, the limit is {mib(MAX_FILE_BYTES)}")


def read_file(path: str | os.PathLike[str]) -> bytes:
    """The file's bytes; non-regular files are refused before reading (a FIFO is opened without blocking)."""
    p = Path(path)
    before = stat_file(p)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise err(f"cannot read the model file {p}", e) from None
    try:
        st = os.fstat(fd)
        _check_stat(st, p)
        if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            raise err(f"model file changed while being opened: {p}")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(st.st_size + 1)
    finally:
        os.close(fd)
    if len(data) != st.st_size:
        raise err(f"model file changed while being read: {p}")
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


def is_zip(data: bytes) -> bool:
    return data[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def sniff(data: bytes) -> tuple[str, zipfile.ZipFile | None]:
    """('export' | 'torchscript' | 'torchsave' | 'safetensors' | 'pickle', the zip if it is one)."""
    if is_zip(data):
        zf = open_zip(data)
        members = zip_members(zf)
        if "archive_format" in members:
            return "export", zf
        if "serialized_exported_program.json" in members:
            raise err(
                "torch.export file in the pre-2.8 layout is refused (it needs pickle); re-save it "
                "with torch.export.save from torch >= 2.8"
            )
        if "data.pkl" in members and any(m.startswith("code/") for m in members):
            return "torchscript", zf
        if "data.pkl" in members:
            return "torchsave", zf
        raise err("zip archive is not a model file (no torch.export, TorchScript or torch.save layout)")
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
    raise err(f"unknown model file format{f' (looks like {what})' if what else ''}")


# --- zip archives ----------------------------------------------------------------------------------------------


def open_zip(data: bytes) -> zipfile.ZipFile:
    """Open a zip held in memory; refuse it by its directory (member count, declared sizes, compression
    ratios, encryption) before anything is decompressed, then verify every CRC."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
        if len(infos) > MAX_ZIP_MEMBERS:
            raise err(f"zip archive has {len(infos)} members (the limit is {MAX_ZIP_MEMBERS})")
        names = [i.filename for i in infos]
        if len(set(names)) != len(names):
            raise err("zip archive has duplicate member names")
        for info in infos:
            _check_zip_member(info)
        total = sum(i.file_size for i in infos)
        if total > MAX_UNCOMPRESSED:
            raise err(f"zip archive expands to {mib(total)}, more than the limit of {mib(MAX_UNCOMPRESSED)}")
        bad = zf.testzip()
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - BadZipFile, zlib.error, NotImplementedError, OSError...
        raise err("corrupt or truncated zip archive", e) from e
    if bad is not None:
        raise err(f"corrupt zip archive (bad CRC in {bad!r})")
    return zf


def _check_zip_member(info: zipfile.ZipInfo) -> None:
    name = info.filename[:80]
    if info.flag_bits & 0x1:
        raise err(f"zip member {name!r} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise err(f"zip member {name!r} uses compression method {info.compress_type} (only stored or deflated)")
    if info.file_size > MAX_UNCOMPRESSED:
        raise err(f"zip member {name!r} expands to {mib(info.file_size)}, more than {mib(MAX_UNCOMPRESSED)}")
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > 1 << 20 and ratio > MAX_ZIP_RATIO:
        raise err(
            f"zip member {name!r} would expand {ratio:.0f}-fold, from {mib(info.compress_size)} to "
            f"{mib(info.file_size)}: refused as a zip bomb"
        )


def zip_root(zf: zipfile.ZipFile) -> str:
    roots = {n.split("/", 1)[0] for n in zf.namelist()}
    if len(roots) != 1 or not all("/" in n for n in zf.namelist()):
        raise err("zip archive does not have the single top-level folder torch writes")
    return roots.pop()


def zip_members(zf: zipfile.ZipFile) -> set[str]:
    return {n.split("/", 1)[1] for n in zf.namelist() if "/" in n}


def rezip(zf: zipfile.ZipFile, keep: Iterable[str] | None = None, replace: dict[str, bytes] | None = None) -> bytes:
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

