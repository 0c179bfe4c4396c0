"""A dataset in an ``.npz`` file, streamed: `NpzFile` reads the rows of a batch, never the whole array, and never
unpickles anything (`ttfs_core.data.NpzSource` is the dataset built on it).

The file is untrusted, so everything that can be checked without inflating it is checked before a row is read,
each refusal one line (a ValueError) naming the field: the zip directory (size, members, compression, the
expansion ratio of each member), each array's header (dtype allow-list, shape, declared size = shape × itemsize,
total elements, pixels per image, no empty images, no Fortran order, no Python objects). Rows are then read in
pieces of at most `MAX_READ_BYTES`, whatever the batch size. Labels are checked against the model's classes by
`ttfs_core.data.Source.check_labels` once the model's output size is known.

The file holds ``x`` and optionally ``y`` and ``classes`` (as written by ``numpy.savez`` or
``numpy.savez_compressed``):

- ``x`` uint8: images, (N, H, W), (N, H, W, C) or (N, C, H, W) with C 1 or 3, preprocessed like image files
  (resized when their size differs, scaled to [0, 1], normalised with the model's mean and std);
- ``x`` float16/32/64: model inputs already preprocessed, (N, C, H, W) (or (N, H, W) for one channel), of the
  model's input shape, used as they are;
- ``y`` integer labels (N,);
- ``classes`` the class names, strings (K,) (`NpzFile.classes`).
"""

from __future__ import annotations

import math
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .images import MAX_PIXELS

MAX_HEADER = 10_000  # bytes of an .npy header (numpy's own limit for untrusted files)
MAX_MEMBERS = 64  # arrays in the archive: the zip directory is parsed whole, so its size is bounded first
MAX_DIRECTORY_BYTES = 1 << 20  # size of the zip's central directory (64 members need a few KB)
MAX_EXPANSION = 200  # inflated / compressed size of a member: real images compress 2–10×, zeros up to 1,032×
SMALL_MEMBER = 16 << 20  # bytes: a member inflating to at most this is read whatever its ratio (cheap either way)
MAX_ELEMENTS = 10**9  # values in one array: 1.2 million 28×28 images; bounds the time a small file can cost
MAX_READ_BYTES = 64 << 20  # bytes of rows inflated at once: a batch of large images is read in pieces
MAX_CLASSES = 10_000  # class names
MAX_CLASS_NAME = 100  # characters in one class name

X_DTYPES = ("uint8", "float16", "float32", "float64")
Y_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
READABLE = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}  # what numpy.savez(_compressed) writes
_EOCD = struct.Struct("<4s4H2LH")  # the zip's end-of-central-directory record
_EOCD_SIGNATURE = b"PK\x05\x06"


def check_directory(path: Path) -> None:
    """Refuse a zip whose central directory is too large or holds too many members, from its end record, before
    `zipfile` parses the directory whole (a 200 MB file can list millions of members, gigabytes of ZipInfo).
    A file without an end record is left to `zipfile` to refuse."""
    with path.open("rb") as f:
        size = f.seek(0, 2)
        f.seek(max(0, size - _EOCD.size - 0xFFFF))  # the record, then a comment of at most 64 KB
        tail = f.read()
    at = tail.rfind(_EOCD_SIGNATURE)
    if at < 0 or len(tail) - at < _EOCD.size:
        return
    _, _, _, _, members, directory, _, _ = _EOCD.unpack_from(tail, at)
    if members > MAX_MEMBERS:
        raise ValueError(f"{path}: holds {members:,} members; at most {MAX_MEMBERS} are read")
    if directory > MAX_DIRECTORY_BYTES:
        raise ValueError(f"{path}: its zip directory is {directory:,} bytes; at most {MAX_DIRECTORY_BYTES:,} are read")


def check_member(info: zipfile.ZipInfo, file_size: int, where: str) -> None:
    """Refuse a member from its zip directory entry alone, before any of it is inflated: unencrypted, stored or
    deflated (other codecs, LZMA above all, size their own buffers from the file), within the file, and inflating
    at most `MAX_EXPANSION` times its compressed size (a compression bomb) unless it is small."""
    if info.flag_bits & 0x1:
        raise ValueError(f"{where}: is encrypted")
    if info.compress_type not in READABLE:
        raise ValueError(f"{where}: compression method {info.compress_type} is not supported (supported: "
                         f"{', '.join(READABLE.values())}, as numpy.savez and numpy.savez_compressed write)")
    if info.header_offset + info.compress_size > file_size:
        raise ValueError(f"{where}: the file is truncated ({info.compress_size:,} bytes of data at offset "
                         f"{info.header_offset:,} in a file of {file_size:,} bytes)")
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > SMALL_MEMBER and ratio > MAX_EXPANSION:
        raise ValueError(f"{where}: inflates to {info.file_size:,} bytes from {info.compress_size:,} ({ratio:,.0f}×); "
                         f"members over {SMALL_MEMBER >> 20} MB are read up to {MAX_EXPANSION}× (a compression bomb?)")


def check_dtype(dtype: np.dtype, allowed: tuple[str, ...], where: str, purpose: str = "supported") -> None:
    """Refuse any dtype not in ``allowed`` (by name, either byte order; "str" for unicode strings of any length):
    objects (which would need unpickling), structured and sub-array dtypes, float128, complex, strings, dates."""
    if dtype.hasobject:
        raise ValueError(f"{where}: holds Python objects ({dtype}); only numeric arrays are read (no pickle)")
    plain = dtype.names is None and dtype.subdtype is None
    if not plain or ("str" if dtype.kind == "U" else dtype.name) not in allowed:
        text = dtype.name if plain and dtype.kind not in "USV" else str(dtype)
        raise ValueError(f"{where}: dtype {text} is not supported ({purpose}: {', '.join(allowed)})")


def check_shape(shape: tuple, where: str) -> tuple[int, ...]:
    """The shape as ints: at least one dimension (one row per item), none negative, at most `MAX_ELEMENTS`
    values in all (computed in Python integers: a header's dimensions can overflow int64)."""
    if len(shape) == 0:
        raise ValueError(f"{where}: is a single value, not one row per item")
    dims = tuple(int(s) for s in shape)
    if min(dims) < 0:
        raise ValueError(f"{where}: shape {dims} has a negative dimension")
    if math.prod(dims) > MAX_ELEMENTS:
        raise ValueError(f"{where}: shape {dims} holds {math.prod(dims):,} values; at most {MAX_ELEMENTS:,} are read")
    return dims


class _Member:
    """One array of the archive: its header, checked before any of its data is inflated, and a stream positioned
    for the next rows (forward reads are cheap even in a compressed member; a read before the position reopens
    it)."""

    def __init__(self, archive: zipfile.ZipFile, name: str, where: str, file_size: int, dtypes: tuple[str, ...],
                 purpose: str = "supported"):
        self.archive, self.name, self.where = archive, name, where
        info = archive.getinfo(name)
        check_member(info, file_size, where)
        shape, fortran, dtype = self._header()
        check_dtype(dtype, dtypes, where, purpose)
        if fortran and len(shape) > 1:
            raise ValueError(f"{where}: is in Fortran order; save it in C order (numpy's default)")
        self.shape, self.dtype = check_shape(shape, where), dtype
        self.row = math.prod(self.shape[1:]) * dtype.itemsize
        if info.file_size != self.offset + self.shape[0] * self.row:
            raise ValueError(f"{where}: the file holds {info.file_size - self.offset:,} bytes of data, but its header "
                             f"says {self.shape} {dtype} ({self.shape[0] * self.row:,} bytes)")
        self.stream = None
        self.position = 0  # the stream's position in bytes

    def _header(self) -> tuple[tuple, bool, np.dtype]:
        """The .npy header (shape, Fortran order, dtype), read from the member's first bytes only; sets `offset`."""
        with self.archive.open(self.name) as f:
            try:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    header = np.lib.format.read_array_header_1_0(f, max_header_size=MAX_HEADER)
                elif version == (2, 0):
                    header = np.lib.format.read_array_header_2_0(f, max_header_size=MAX_HEADER)
                else:
                    raise ValueError(f"npy format version {version} (1.0 and 2.0 are read)")
            except (ValueError, TypeError, SyntaxError, RecursionError, EOFError, zlib.error,
                    zipfile.BadZipFile) as e:
                raise ValueError(f"{self.where}: not a readable array ({' '.join(str(e).split())})") from None
            self.offset = f.tell()
        return header

    def rows(self, lo: int, hi: int) -> np.ndarray:
        start, size = self.offset + lo * self.row, (hi - lo) * self.row
        try:
            if self.stream is None or start < self.position:
                if self.stream is not None:
                    self.stream.close()
                self.stream, self.position = self.archive.open(self.name), 0
            if start > self.position:
                self.stream.seek(start)
            raw = self.stream.read(size)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:  # a bad CRC, a corrupt deflate stream
            raise ValueError(f"{self.where}: rows {lo}–{hi} cannot be read ({' '.join(str(e).split())})") from None
        self.position = start + len(raw)
        if len(raw) != size:
            raise ValueError(f"{self.where}: rows {lo}–{hi} are cut short (the file is truncated)")
        return np.frombuffer(raw, dtype=self.dtype).reshape(hi - lo, *self.shape[1:])


class NpzFile:
    """An .npz dataset (module docstring) checked for a model whose inputs have ``shape`` (C, H, W), read batch by
    batch. ``classes``: the class names the file gives, or None; ``labelled``: whether it has labels y."""

    def __init__(self, path: str | Path, shape: tuple[int, int, int]):
        self.path, self.shape = Path(path), tuple(shape)
        self.label_field = f"{path}: y"
        try:
            check_directory(self.path)
            self.archive = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as e:
            raise ValueError(f"{path}: not a readable .npz file ({e})") from None
        size = self.path.stat().st_size
        names = set(self.archive.namelist())
        if "x.npy" not in names:
            raise ValueError(f"{path}: has no array 'x' (it holds {', '.join(sorted(names)) or 'nothing'}); save the "
                             "inputs as x (and the labels as y)")
        self.x = _Member(self.archive, "x.npy", f"{path}: x", size, X_DTYPES)
        self.y = self._labels(size) if "y.npy" in names else None
        self.labelled = self.y is not None
        self.kind = self._kind()
        self.classes = self._classes(size) if "classes.npy" in names else None

    def _labels(self, size: int) -> _Member:
        """The member y: integer labels (N,), one per item of x (their values: `ttfs_core.data.Source.check_labels`)."""
        where = self.label_field
        y = _Member(self.archive, "y.npy", where, size, Y_DTYPES, "y must be integer labels")
        if len(y.shape) != 1:
            raise ValueError(f"{where}: y must be integer labels of shape (N,), got {y.shape} {y.dtype}")
        if y.shape[0] != self.x.shape[0]:
            raise ValueError(f"{self.path}: x has {self.x.shape[0]:,} items but y {y.shape[0]:,} labels")
        return y

    def _kind(self) -> str:
        """"hwc" / "chw" (uint8 images) or "inputs" (floats, the model's shape); raises for anything else, for no
        items, and for images that are empty or over the image decoder's pixel limit."""
        shape, dtype, want = self.x.shape, self.x.dtype, self.shape
        if shape[0] == 0:
            raise ValueError(f"{self.path}: x: holds no images (shape {shape})")
        if dtype == np.uint8:
            if len(shape) == 3 or (len(shape) == 4 and shape[3] in (1, 3)):
                return self._sized("hwc", *shape[1:3])
            if len(shape) == 4 and shape[1] in (1, 3):
                return self._sized("chw", *shape[2:4])
        elif dtype.kind == "f":
            if shape[1:] == want or (want[0] == 1 and shape[1:] == want[1:]):
                return "inputs"
            raise ValueError(f"{self.path}: x holds floats of shape {shape[1:]} per item, but the model takes "
                             f"{want} (float x is taken as preprocessed model inputs; give uint8 images to have them "
                             "resized and normalised)")
        raise ValueError(f"{self.path}: x is {shape} {dtype}; supported: uint8 images (N, H, W), (N, H, W, C) or "
                         f"(N, C, H, W) with C 1 or 3, or float model inputs (N, {', '.join(map(str, want))})")

    def _sized(self, kind: str, height: int, width: int) -> str:
        """``kind``, once images of height × width are known to be neither empty nor over `MAX_PIXELS` (the limit
        image files have: a resize of a huge image costs what decoding it does)."""
        if height * width == 0:
            raise ValueError(f"{self.path}: x: images are {height}×{width} pixels (empty)")
        if height * width > MAX_PIXELS:
            raise ValueError(f"{self.path}: x: images are {height}×{width} pixels; images up to {MAX_PIXELS:,} pixels "
                             "are accepted")
        return kind

    def _classes(self, size: int) -> tuple[str, ...]:
        """The member classes: at most `MAX_CLASSES` printable strings of at most `MAX_CLASS_NAME` characters
        (they are shown in tables and terminals)."""
        where = f"{self.path}: classes"
        member = _Member(self.archive, "classes.npy", where, size, ("str",), "class names must be")
        if len(member.shape) != 1 or member.shape[0] > MAX_CLASSES:
            raise ValueError(f"{where}: must be at most {MAX_CLASSES:,} names of shape (K,), got shape {member.shape}")
        if member.dtype.itemsize // 4 > MAX_CLASS_NAME:
            raise ValueError(f"{where}: names of up to {member.dtype.itemsize // 4:,} characters; at most "
                             f"{MAX_CLASS_NAME} are read")
        names = tuple(str(n) for n in member.rows(0, member.shape[0]))
        bad = next((n for n in names if not n.isprintable()), None)
        if bad is not None:
            raise ValueError(f"{where}: the name {ascii(bad)} holds control characters")
        return names

    def __len__(self) -> int:
        return self.x.shape[0]

    def labels(self, lo: int, hi: int) -> np.ndarray | None:
        return self.y.rows(lo, hi) if self.y is not None else None

    def batch(self, lo: int, hi: int, images: Callable[[np.ndarray], Tensor]) -> tuple[Tensor, Tensor | None]:
        """Items [lo, hi): model inputs and labels (None when unlabelled). ``images`` turns uint8 images (N, H, W)
        or (N, H, W, C) into model inputs (the model's preprocessing). Shape: (hi − lo, C, H, W), (hi − lo,)."""
        hi = max(lo, min(hi, len(self)))
        step = max(1, MAX_READ_BYTES // max(self.x.row, 1))
        x = torch.cat([self._inputs(a, min(a + step, hi), images) for a in range(lo, hi, step) or (lo,)])
        y = torch.from_numpy(self.y.rows(lo, hi).astype(np.int64)) if self.y is not None else None
        return x, y

    def _inputs(self, lo: int, hi: int, images: Callable[[np.ndarray], Tensor]) -> Tensor:
        """Rows [lo, hi) of x as model inputs (one piece of a batch: at most `MAX_READ_BYTES` are inflated)."""
        rows = self.x.rows(lo, hi)
        if self.kind == "inputs":
            native = np.float32 if rows.dtype == np.float16 else rows.dtype.newbyteorder("=")
            return torch.from_numpy(rows.astype(native)).reshape(hi - lo, *self.shape)
        hwc = rows.transpose(0, 2, 3, 1) if self.kind == "chw" else rows
        return images(np.ascontiguousarray(hwc))
