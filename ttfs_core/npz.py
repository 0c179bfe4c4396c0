"""A dataset in an ``.npz`` file, streamed: `NpzSource` reads the rows of a batch, never the whole array, and never
unpickles anything (the file is untrusted: object arrays, Fortran order and sizes that do not add up are refused
before any row is read).

The file holds ``x`` and optionally ``y`` (as written by ``numpy.savez`` or ``numpy.savez_compressed``):

- ``x`` uint8: images, (N, H, W), (N, H, W, C) or (N, C, H, W) with C 1 or 3, preprocessed like image files
  (resized when their size differs, scaled to [0, 1], normalised with the model's mean and std);
- ``x`` float16/32/64: model inputs already preprocessed, (N, C, H, W) (or (N, H, W) for one channel), of the
  model's input shape, used as they are;
- ``y`` integer labels (N,).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .data import Preprocess, Source

MAX_HEADER = 10_000  # bytes of an .npy header (numpy's own limit for untrusted files)


class _Member:
    """One array of the archive: its header, and a stream positioned for the next rows (forward reads are cheap even
    in a compressed member; a read before the position reopens it)."""

    def __init__(self, archive: zipfile.ZipFile, name: str, where: str):
        self.archive, self.name, self.where = archive, name, where
        info = archive.getinfo(name)
        with archive.open(info) as f:
            try:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=MAX_HEADER)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=MAX_HEADER)
                else:
                    raise ValueError(f"npy format version {version} (1.0 and 2.0 are read)")
            except ValueError as e:
                raise ValueError(f"{where}: not a readable array ({e})") from None
            self.offset = f.tell()
        if dtype.hasobject:
            raise ValueError(f"{where}: holds Python objects ({dtype}); only numeric arrays are read (no pickle)")
        if fortran and len(shape) > 1:
            raise ValueError(f"{where}: is in Fortran order; save it in C order (numpy's default)")
        if len(shape) == 0:
            raise ValueError(f"{where}: is a single value, not one row per item")
        self.shape, self.dtype = tuple(int(s) for s in shape), dtype
        self.row = int(np.prod(self.shape[1:], dtype=np.int64)) * dtype.itemsize
        if info.file_size != self.offset + self.shape[0] * self.row:
            raise ValueError(f"{where}: the file holds {info.file_size - self.offset:,} bytes of data, but its header "
                             f"says {self.shape} {dtype} ({self.shape[0] * self.row:,} bytes)")
        self.stream = None
        self.position = 0  # the stream's position in bytes

    def rows(self, lo: int, hi: int) -> np.ndarray:
        start, size = self.offset + lo * self.row, (hi - lo) * self.row
        if self.stream is None or start < self.position:
            if self.stream is not None:
                self.stream.close()
            self.stream, self.position = self.archive.open(self.name), 0
        if start > self.position:
            self.stream.seek(start)
        raw = self.stream.read(size)
        self.position = start + len(raw)
        if len(raw) != size:
            raise ValueError(f"{self.where}: rows {lo}–{hi} are cut short (the file is truncated)")
        return np.frombuffer(raw, dtype=self.dtype).reshape(hi - lo, *self.shape[1:])


class NpzSource(Source):
    """An .npz dataset (module docstring), streamed batch by batch."""

    def __init__(self, path: str | Path, preprocess: Preprocess):
        self.path, self.preprocess = Path(path), preprocess
        try:
            self.archive = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as e:
            raise ValueError(f"{path}: not a readable .npz file ({e})") from None
        names = set(self.archive.namelist())
        if "x.npy" not in names:
            raise ValueError(f"{path}: has no array 'x' (it holds {', '.join(sorted(names)) or 'nothing'}); save the "
                             "inputs as x (and the labels as y)")
        self.x = _Member(self.archive, "x.npy", f"{path}: x")
        self.y = _Member(self.archive, "y.npy", f"{path}: y") if "y.npy" in names else None
        self.labelled = self.y is not None
        self.kind = self._kind()
        if self.y is not None:
            if self.y.dtype.kind not in "iu" or len(self.y.shape) != 1:
                raise ValueError(f"{path}: y must be integer labels of shape (N,), got {self.y.shape} {self.y.dtype}")
            if self.y.shape[0] != self.x.shape[0]:
                raise ValueError(f"{path}: x has {self.x.shape[0]:,} items but y {self.y.shape[0]:,} labels")

    def _kind(self) -> str:
        """"hwc" / "chw" (uint8 images) or "inputs" (floats, the model's shape); raises for anything else."""
        shape, dtype, want = self.x.shape, self.x.dtype, self.preprocess.shape
        if dtype == np.uint8:
            if len(shape) == 3 or (len(shape) == 4 and shape[3] in (1, 3)):
                return "hwc"
            if len(shape) == 4 and shape[1] in (1, 3):
                return "chw"
        elif dtype.kind == "f":
            if shape[1:] == want or (want[0] == 1 and shape[1:] == want[1:]):
                return "inputs"
            raise ValueError(f"{self.path}: x holds floats of shape {shape[1:]} per item, but the model takes "
                             f"{want} (float x is taken as preprocessed model inputs; give uint8 images to have them "
                             "resized and normalised)")
        raise ValueError(f"{self.path}: x is {shape} {dtype}; supported: uint8 images (N, H, W), (N, H, W, C) or "
                         f"(N, C, H, W) with C 1 or 3, or float model inputs (N, {', '.join(map(str, want))})")

    def __len__(self) -> int:
        return self.x.shape[0]

    def batch(self, lo: int, hi: int) -> tuple[Tensor, Tensor | None]:
        hi = max(lo, min(hi, len(self)))
        rows = self.x.rows(lo, hi)
        if self.kind == "inputs":
            x = torch.from_numpy(rows.astype(np.float32 if rows.dtype == np.float16 else rows.dtype))
            x = x.reshape(hi - lo, *self.preprocess.shape)
        else:
            images = rows.transpose(0, 2, 3, 1) if self.kind == "chw" else rows
            x = self.preprocess.batch_from_uint8(np.ascontiguousarray(images))
        y = torch.from_numpy(self.y.rows(lo, hi).astype(np.int64)) if self.y is not None else None
        return x, y
