"""Untrusted uploads: model files, data sets, saved networks' cards and images. No Streamlit here; every failure is a
ValueError whose message the app shows as it is (ModelLoadError is a ValueError).

A model is uploaded with what it needs to run: its input shape is read from the model (a torch.export program
records it; TorchScript and state dicts are checked by a forward at the shape the form gives), its preprocessing
comes from the form, a saved network's card or the defaults (pixels / 255), and its data from an uploaded data set
(`read_data`: an ``.npz`` or a ``.zip`` of class folders, read by the same checked readers as ``ttfs verify
--data``). A model that takes MNIST's 1×28×28 runs on the bundled MNIST without data; any other needs a data set
(`NeedsData`), or the bundled MNIST resized and replicated to its shape when the user asks for it, labelled so.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ttfs_core import data
from ttfs_core.persist import Card, NetworkFileError, load_card
from ttfs_core.untrusted import ModelLoadError, check_input, load_model
from ttfs_core.untrusted.allowlist import InputGuard
from ttfs_core.untrusted.images import decode_image

BUNDLED_SHAPE = (1, 28, 28)  # the input shape of the bundled data (MNIST, Fashion-MNIST): a model taking it needs none
MAX_DATA_IMAGES = 10_000  # images of an uploaded data set the explorer keeps (more: every k-th, said so)
MAX_DATA_VALUES = 64_000_000  # uint8 values kept of one (N × C × H × W at the model's input size: 64 MB)
MAX_DATA_PIXELS = 400_000_000  # pixels decoded from a .zip's images in all (before resizing)
MAX_DATA_BYTES = 1 << 30  # inflated bytes of a .zip's images
CHUNK = 256  # images read at once
DATA_KINDS = ".npz (arrays x, optional y and classes) or a .zip of class folders of images"
NORMALISATIONS = {  # name -> (mean, std) per channel, applied to pixels / 255
    "pixels / 255, in [0, 1]": ((0.0,), (1.0,)),
    "(pixels / 255 − 0.5) / 0.5, in [−1, 1]": ((0.5,), (0.5,)),
    "ImageNet mean and std": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "CIFAR-10 mean and std": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "MNIST mean and std": ((0.1307,), (0.3081,)),
}


class NeedsData(ModelLoadError):
    """The model loaded, but takes inputs the bundled data cannot give: it needs a data set."""


def upload_key(data_: bytes, arch: str | None = None) -> str:
    """The key of an upload ("upload:" + a full SHA-256) in this session's store and in the caches that every
    session shares: the same key means the same bytes (and architecture), so a session can never be served
    another's model. The digest is never truncated (a 64-bit prefix can be collided on purpose), and the
    architecture is hashed apart from the bytes (bytes + "lenet5" without an architecture is another key)."""
    h = hashlib.sha256()
    h.update(json.dumps(arch or "").encode() + b"\0")
    h.update(data_)
    return f"upload:{h.hexdigest()}"


@dataclass(frozen=True)
class UploadedData:
    """A data set file as uploaded (kept in the session with the model it serves)."""

    key: str  # upload_key(data)
    filename: str
    data: bytes = field(repr=False)

    @property
    def kind(self) -> str:
        """"npz" or "zip" (an archive of images), by content: an .npz is a zip whose members are .npy arrays."""
        if self.data[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):
            raise ValueError(f"{self.filename} is not a data set (not a zip archive): expected {DATA_KINDS}")
        if self.filename.lower().endswith(".npz"):
            return "npz"
        return "npz" if b"x.npy" in self.data[-(1 << 16) - 22:] else "zip"  # the directory sits at the end


@dataclass(frozen=True)
class UploadedModel:
    """A model file as uploaded (kept in the session so the cached model can be rebuilt), with what it runs on: a
    data set, preprocessing (None: read from the model and data) and class names (from a saved network's card), or
    the bundled MNIST adapted to its shape (``mnist``). `key` covers all of them (`combined_key`)."""

    key: str  # upload_key(data, arch), or combined_key(...) when anything else is given
    filename: str
    data: bytes = field(repr=False)
    arch: str | None
    dataset: UploadedData | None = None
    preprocess: data.Preprocess | None = None
    classes: tuple[str, ...] | None = None
    mnist: bool = False  # calibrate and test on the bundled MNIST, resized / replicated to the model's shape
    card: str | None = None  # the saved network whose card gave the preprocessing and class names

    @property
    def model_key(self) -> str:
        """The key of the model file alone (upload_key(data, arch))."""
        return upload_key(self.data, self.arch)

    @property
    def title(self) -> str:
        extra = f" + {self.dataset.filename}" if self.dataset is not None else " + MNIST, adapted" if self.mnist else ""
        return f"{self.filename}{extra} (uploaded{', ' + self.arch if self.arch else ''})"


def combined_key(model_key: str, dataset: UploadedData | None, preprocess: data.Preprocess | None,
                 classes: tuple[str, ...] | None, mnist: bool) -> str:
    """The key of a model with its data, preprocessing, class names and MNIST choice (a full SHA-256 over all of
    them); the model's own key when none is given, so that a plain upload keeps the key it always had."""
    if dataset is None and preprocess is None and classes is None and not mnist:
        return model_key
    h = hashlib.sha256()
    for part in (model_key, dataset.key if dataset is not None else "",
                 json.dumps(None if preprocess is None else preprocess.to_dict(), sort_keys=True),
                 json.dumps(None if classes is None else list(classes)), str(bool(mnist))):
        h.update(part.encode() + b"\0")
    return f"upload:{h.hexdigest()}"


@dataclass(frozen=True)
class UploadedImage:
    key: str  # upload_key(data)
    filename: str
    data: bytes
    invert: bool


def read_model(data_: bytes, filename: str, arch: str | None) -> nn.Module:
    """Load an uploaded model file with the safe loader (never unpickles code). Raises ModelLoadError."""
    if not data_:
        raise ModelLoadError("the uploaded file is empty")
    suffix = Path(filename).suffix[:12] if Path(filename).suffix.isascii() else ""
    with tempfile.TemporaryDirectory(prefix="ttfs_upload_") as tmp:
        path = Path(tmp) / f"model{suffix}"
        path.write_bytes(data_)
        model = load_model(path, arch=arch or None)
    return model


def read_card(data_: bytes, filename: str) -> Card | None:
    """The card of an uploaded saved network (`ttfs_core.persist.load_card`: the header alone, checked); None when
    it was saved without one. Raises ValueError naming the problem."""
    if not data_:
        raise ValueError(f"{filename} is empty")
    with tempfile.TemporaryDirectory(prefix="ttfs_card_") as tmp:
        path = Path(tmp) / "network.safetensors"
        path.write_bytes(data_)
        try:
            return load_card(path)
        except NetworkFileError as e:
            raise ValueError(str(e).replace(str(path), filename)) from None


def shape_text(shape) -> str:
    return "×".join(map(str, shape))


def exported_shape(model: nn.Module) -> tuple[int, int, int] | None:
    """(C, H, W) a torch.export program was exported for (its batch is free); None for TorchScript, state dicts,
    inputs that are not images, or a dynamic size."""
    guard = getattr(model, InputGuard.NAME, None)
    expected = getattr(guard, "expected", None)
    if expected is None or len(expected) != 4 or any(e is None for e in expected[1:]):
        return None
    return tuple(int(e) for e in expected[1:])


CANDIDATE_SHAPES = ((3, 32, 32), (3, 28, 28), (1, 32, 32), (3, 64, 64), (3, 96, 96), (3, 224, 224))


def _runs(model: nn.Module, shape) -> bool:
    try:
        check_input(model, shape)
    except ModelLoadError:
        return False
    return True


def expected_input(model: nn.Module) -> str | None:
    """A guess of the input a model takes (for error messages only): common image shapes that run, else what
    its first weight suggests."""
    for shape in CANDIDATE_SHAPES:
        if _runs(model, shape):
            return f"{shape_text(shape)} inputs"
    for p in model.parameters():
        if p.dim() == 4:
            return f"{p.shape[1]}-channel images (its first layer is a convolution with {p.shape[1]} input channels)"
        if p.dim() == 2:
            return f"{p.shape[1]} input features (its first layer is linear)"
    return None


def infer_shape(model: nn.Module, stored: tuple[int, int, int] | None = None) -> tuple[tuple[int, int, int], str]:
    """The input shape (C, H, W) to assume for a model, and how it was found: the exported program's, else the
    data set's images' if the model runs on them, else MNIST's 1×28×28 if it runs on it, else the first common
    image shape it runs on (those of the data's channel count first). Raises ModelLoadError when none runs."""
    exported = exported_shape(model)
    if exported is not None:
        return exported, "recorded in the exported program"
    if stored is not None and _runs(model, stored):
        return tuple(stored), "the data set's images (the model runs on them)"
    if _runs(model, BUNDLED_SHAPE):
        return BUNDLED_SHAPE, "MNIST's (the model runs on it)"
    first = sorted(CANDIDATE_SHAPES, key=lambda s: stored is not None and s[0] != stored[0])
    for shape in first:
        if _runs(model, shape):
            return shape, "guessed: the first common image shape it runs on; set the size in the form if wrong"
    wants = expected_input(model)
    raise ModelLoadError(f"the model runs on none of the common image shapes ({', '.join(map(shape_text, first))}, "
                         f"{shape_text(BUNDLED_SHAPE)}){'; it seems to take ' + wants if wants else ''}: set its "
                         "input size and channels in the preprocessing form")


def check_model(model: nn.Module, shape) -> int:
    """The number of classes of a model on inputs of ``shape`` (C, H, W); raises ModelLoadError when it does not
    take them (saying what it seems to take) or its output is not logits (batch, classes)."""
    exported = exported_shape(model)
    try:
        out = check_input(model, shape)
    except ModelLoadError as e:
        wants = f"{shape_text(exported)} inputs (recorded in the exported program)" if exported else \
            expected_input(model)
        bundled = tuple(shape) == BUNDLED_SHAPE
        raise ModelLoadError(
            f"the model does not take {shape_text(shape)} inputs{f' (it seems to take {wants})' if wants else ''}"
            + ("; only 28×28 grayscale images (MNIST) are bundled for calibration and testing: upload a data set of "
               "the model's images with it, and set its size and channels" if bundled else
               "; set the size and channels the model takes in the preprocessing form") + f". Details: {e}"
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape_ = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelLoadError(f"the model's output should be logits of shape (batch, classes), got {shape_}")
    return int(out.shape[1])


def check_bundled_input(model: nn.Module) -> None:
    """Raise ModelLoadError unless the model takes the bundled 1×28×28 images, saying what it takes instead."""
    check_model(model, BUNDLED_SHAPE)


NEEDS_DATA = "it needs a data set"  # in every `needs_data` message (the page offers MNIST, adapted, beside it)


def needs_data(shape, filename: str, how: str) -> NeedsData:
    """The message for a model whose inputs the bundled data cannot give, and no data set uploaded."""
    return NeedsData(
        f"{filename} takes {shape_text(shape)} inputs ({how}), but the bundled data are 28×28 grayscale images "
        f"(MNIST): {NEEDS_DATA}. Upload its images beside it ({DATA_KINDS}), or choose to try it on MNIST "
        f"resized to {shape[1]}×{shape[2]}{' and replicated to 3 channels' if shape[0] == 3 else ''} "
        "(not its own data)")


def parse_numbers(text: str, name: str) -> tuple[float, ...]:
    """'0.485, 0.456, 0.406' -> (0.485, 0.456, 0.406): 1 or 3 finite numbers, or a ValueError naming `name`."""
    try:
        values = tuple(float(v) for v in str(text).replace(";", ",").split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{name}: expected 1 or 3 numbers separated by commas, got {str(text)[:40]!r}") from None
    if len(values) not in (1, 3) or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name}: expected 1 or 3 finite numbers separated by commas, got {str(text)[:40]!r}")
    return values


def preprocess_from(height: int, width: int, channels: int, mean: str, std: str) -> data.Preprocess:
    """The preprocessing a form gives; a ValueError saying what is wrong (std 0 would make the inputs NaN)."""
    try:
        return data.Preprocess(channels=int(channels), height=int(height), width=int(width),
                               mean=parse_numbers(mean, "mean"), std=parse_numbers(std, "std"),
                               input_range="(pixels / 255 − mean) / std")
    except ValueError as e:
        raise ValueError(f"the preprocessing cannot be used: {e}") from None


def describe_preprocess(pre: data.Preprocess) -> str:
    norm = "pixels / 255" if pre.mean in ((0.0,), (0.0,) * 3) and pre.std in ((1.0,), (1.0,) * 3) else \
        f"(pixels / 255 − {', '.join(f'{v:g}' for v in pre.mean)}) / {', '.join(f'{v:g}' for v in pre.std)}"
    return f"{shape_text(pre.shape)} ({'RGB' if pre.channels == 3 else 'grayscale'}), {norm}"


# --- data sets ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class UserData:
    """An uploaded data set as the explorer keeps it for one model: its images at the model's input size (uint8,
    scaled and normalised when asked for, exactly as `ttfs verify --data` reads them) or, for an .npz of model
    inputs, those inputs; labels and class names; which images calibrate."""

    dataset: data.Dataset  # name: the data's key with its preprocessing; title: the file name; classes: its names
    pixels: np.ndarray | None  # (N, H, W, C) uint8 at the model's size, read-only
    inputs: Tensor | None  # (N, C, H, W) float32 model inputs (an .npz of floats), else None
    labels: np.ndarray | None  # (N,) int64, or None when unlabelled
    total: int  # items in the file (every `step`-th is kept)
    step: int
    notes: tuple[str, ...]
    calibration: np.ndarray  # indices of the images that calibrate: evenly spread, at most `calibration_size`

    def __len__(self) -> int:
        return len(self.pixels) if self.pixels is not None else len(self.inputs)

    def batch(self, preprocess: data.Preprocess, index) -> Tensor:
        """The model inputs of the images at ``index`` (a slice or an index array). Shape: (n, C, H, W)."""
        if self.pixels is None:
            return self.inputs[index].clone() if not isinstance(index, slice) else self.inputs[index]
        return preprocess.batch_from_uint8(np.asarray(self.pixels[index]))

    def image(self, preprocess: data.Preprocess, i: int) -> np.ndarray:
        """Image i as shown: (H, W) grey or (H, W, 3) RGB uint8 (model inputs are mapped back to pixels)."""
        if self.pixels is not None:
            img = self.pixels[i]
        else:
            mean, std = (np.asarray(v, dtype=np.float64).reshape(-1, 1, 1) for v in (preprocess.mean, preprocess.std))
            x = self.inputs[i].double().numpy() * std + mean
            img = np.clip(np.rint(x * 255), 0, 255).astype(np.uint8).transpose(1, 2, 0)
        return img[:, :, 0] if img.shape[2] == 1 else img

    @property
    def summary(self) -> str:
        kept = f"{len(self):,} images" if self.step == 1 else f"{len(self):,} of its {self.total:,} images (every " \
                                                             f"{self.step}th)"
        names = f", {len(self.dataset.classes)} class names" if self.dataset.classes else ""
        return f"{self.dataset.title}: {kept}, {'labelled' if self.labels is not None else 'no labels'}{names}"


def _suffix(upload: UploadedData) -> str:
    return ".npz" if upload.kind == "npz" else ".zip"


def peek_shape(upload: UploadedData) -> tuple[int, int, int] | None:
    """(C, H, W) of an uploaded data set's images as stored (an .npz's uint8 x, a .zip's first image), or None when
    it cannot tell yet (model inputs of floats, or a file the full read will refuse with its reason)."""
    try:
        with tempfile.TemporaryDirectory(prefix="ttfs_data_") as tmp:
            path = Path(tmp) / f"data{_suffix(upload)}"
            path.write_bytes(upload.data)
            source = data.open_dataset(str(path), data.MNIST_PREPROCESS)
            try:
                return source.stored_shape()
            finally:
                _close(source)
    except (ValueError, OSError):
        return None


def _close(source: data.Source) -> None:
    for owner in (getattr(source, "archive", None), getattr(getattr(source, "file", None), "archive", None)):
        if owner is not None:
            owner.close()


def read_data(upload: UploadedData, preprocess: data.Preprocess, num_classes: int, key: str,
              calibration_size: int = 512) -> UserData:
    """Read an uploaded data set for a model taking ``preprocess.shape`` with ``num_classes`` outputs: every check of
    ``ttfs verify --data`` (`ttfs_core.data.open_dataset`), then the explorer's own: images of the model's colour
    (an .npz of grayscale images for an RGB model is refused, not replicated), labels within the model's classes,
    finite inputs, at most `MAX_DATA_IMAGES` images and `MAX_DATA_VALUES` values kept (every k-th beyond, said
    so). ``key``: the data set's name in caches (its bytes with this preprocessing). Raises ValueError, one line
    naming the file."""
    name = upload.filename
    with tempfile.TemporaryDirectory(prefix="ttfs_data_") as tmp:
        path = Path(tmp) / f"data{_suffix(upload)}"
        path.write_bytes(upload.data)
        try:
            if upload.kind == "zip":
                source: data.Source = data.ZipSource(path, preprocess, max_images=100_000,
                                                     max_pixels=MAX_DATA_PIXELS, max_bytes=MAX_DATA_BYTES)
            else:
                source = data.NpzSource(path, preprocess)
        except zipfile.BadZipFile as e:
            raise ValueError(f"{name}: not a readable archive ({e})") from None
        try:
            return _read(source, upload, preprocess, num_classes, key, calibration_size)
        except ValueError as e:
            raise ValueError(str(e).replace(str(path), name)) from None
        finally:
            _close(source)


def _read(source: data.Source, upload: UploadedData, pre: data.Preprocess, num_classes: int, key: str,
          calibration_size: int) -> UserData:
    name, total = upload.filename, len(source)
    if total == 0:
        raise ValueError(f"{name}: holds no images")
    stored = source.stored_shape()
    colour = {1: "1-channel (grayscale)", 3: "3-channel (RGB)"}
    if upload.kind == "npz" and stored is not None and stored[0] != pre.channels:
        raise ValueError(f"{name}: x holds {colour.get(stored[0], stored[0])} images, but the model takes "
                         f"{colour[pre.channels]} inputs ({shape_text(pre.shape)}): save the images in the model's "
                         f"colour{', (N, H, W, 3)' if pre.channels == 3 else ', (N, H, W)'}, or set channels to "
                         f"{stored[0]} if the model takes them")
    source.check_labels(num_classes)
    per_image = int(np.prod(pre.shape))
    keep = min(total, MAX_DATA_IMAGES, max(1, MAX_DATA_VALUES // per_image))
    step = -(-total // keep)
    pixels, inputs, labels = [], [], []
    zip_labels = source.labels(0, total) if upload.kind == "zip" else None
    for lo in range(0, total, CHUNK * step):
        hi = min(total, lo + CHUNK * step)
        if upload.kind == "zip":  # decoded one by one: only the images kept
            pixels.append(np.concatenate([source.pixels(i, i + 1) for i in range(lo, hi, step)]))
            labels.append(None if zip_labels is None else zip_labels[lo:hi:step])
            continue
        p = source.pixels(lo, hi)  # an .npz streams its rows: read them all, keep every step-th
        if p is None:
            inputs.append(source.batch(lo, hi)[0][::step].float())
        else:
            pixels.append(p[::step])
        y = source.labels(lo, hi)
        labels.append(None if y is None else np.asarray(y, dtype=np.int64)[::step])
    notes = []
    if pixels:
        px = np.ascontiguousarray(np.concatenate(pixels))
        px.setflags(write=False)
        x_in = None
    else:
        px, x_in = None, torch.cat(inputs)
        bad = (~torch.isfinite(x_in.flatten(1))).any(1).nonzero()
        if len(bad):
            raise ValueError(f"{name}: x holds NaN or infinite values (item #{int(bad[0]) * step}); the model's "
                             "inputs must be finite")
        notes.append("x holds model inputs (floats): they are used as they are, without the preprocessing form")
    y_all = None if labels[0] is None else np.concatenate(labels).astype(np.int64)
    converted = getattr(source, "converted", 0)
    n = len(px) if px is not None else len(x_in)
    if converted and converted >= n:
        raise ValueError(f"{name}: all its images are {colour[4 - pre.channels]}, but the model takes "
                         f"{colour[pre.channels]} inputs ({shape_text(pre.shape)}): upload the model's images, or set "
                         f"channels to {4 - pre.channels} if the model takes them")
    if converted:
        notes.append(f"{converted:,} of the {n:,} images were {colour[4 - pre.channels].split()[1][1:-1]} and were "
                     f"converted to {'RGB' if pre.channels == 3 else 'grayscale'}")
    if stored is not None and stored[1:] != pre.shape[1:] and px is not None:
        notes.append(f"images of {stored[2]}×{stored[1]} were resized to {pre.width}×{pre.height}, the model's size")
    if step > 1:
        notes.append(f"the explorer keeps every {step}th of the {total:,} images ({n:,}): at most "
                     f"{min(MAX_DATA_IMAGES, MAX_DATA_VALUES // per_image):,} at {shape_text(pre.shape)}; "
                     f"`ttfs verify --data {name}` checks them all")
    classes = source.classes
    if classes is not None and len(classes) != num_classes:
        notes.append(f"{name} names {len(classes)} classes; the model has {num_classes} outputs")
    count = min(n, calibration_size)
    calibration = np.unique(np.linspace(0, n - 1, count).round().astype(np.int64))
    dataset = data.Dataset(key, name, "", tuple(classes or ()))
    return UserData(dataset, px, x_in, y_all, total, step, tuple(notes), calibration)


def read_image(data_: bytes, preprocess: data.Preprocess, invert: bool | None = None) -> tuple[torch.Tensor, list[str]]:
    """Decode and preprocess an uploaded PNG/JPEG for a model. Returns the input (1, C, H, W) and notes for the
    user (resized, inverted). `invert=None`: invert when the background is light (MNIST digits are white on
    black). Raises ValueError with a message for anything that is not a usable image.
    """
    if not data_:
        raise ValueError("the uploaded image is empty")
    img = decode_image(data_)  # size limits, 16-bit and transparent images (ttfs_core.untrusted.images)
    notes = []
    if img.width < 4 or img.height < 4:
        raise ValueError(f"the image is only {img.width}×{img.height} pixels; the model takes "
                         f"{preprocess.width}×{preprocess.height}")
    if img.size != (preprocess.width, preprocess.height):
        distorted = abs(img.width / img.height - preprocess.width / preprocess.height) > 0.05
        notes.append(f"The image is {img.width}×{img.height}; it was resized to {preprocess.width}×"
                     f"{preprocess.height}{' (the aspect ratio changed)' if distorted else ''}.")
    light = _is_light(img)
    if invert is None:
        invert = light
    if invert:
        img = Image.fromarray(255 - np.asarray(img.convert("L" if preprocess.channels == 1 else "RGB")))
        notes.append("Colours were inverted: MNIST digits are white on black." if light
                     else "Colours were inverted, as asked.")
    x = preprocess.to_tensor(img)
    return x.unsqueeze(0), notes


def blank_colour(img: Image.Image) -> str | None:
    """The colour of an image whose every pixel is the same ("white", "black", "grey 128", "RGB (255, 0, 0)"), None
    for an image with any contrast."""
    arr = np.asarray(img.convert("RGB"))
    first = arr[0, 0]
    if not (arr == first).all():
        return None
    r, g, b = (int(v) for v in first)
    if r == g == b:
        return {255: "white", 0: "black"}.get(r, f"grey {r}")
    return f"RGB ({r}, {g}, {b})"


def light_background(data_: bytes) -> bool:
    """Whether an image's border is mostly light (a dark digit on white paper)."""
    return _is_light(decode_image(data_))


def _is_light(img: Image.Image) -> bool:
    gray = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return float(border.mean()) > 0.5


def mnist_style(pad: np.ndarray) -> np.ndarray:
    """A drawn digit (white on black, any size) prepared as MNIST's digits were: the strokes' bounding box scaled
    so that its longer side is 20 pixels, placed in a 28×28 image with its centre of mass at the centre.
    Raises ValueError for an empty drawing. Shape: (H, W) uint8 -> (28, 28) uint8."""
    pad = np.asarray(pad, dtype=np.float64)
    if pad.ndim != 2 or pad.size == 0:
        raise ValueError(f"a drawing must be a 2-D grey image, got shape {pad.shape}")
    ink = pad > 0.1 * 255
    if not ink.any():
        raise ValueError("the drawing is empty: draw a digit first")
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    crop = pad[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    scale = 20 / max(crop.shape)
    h, w = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    small = np.asarray(Image.fromarray(crop.astype(np.uint8)).resize((w, h), Image.Resampling.LANCZOS),
                       dtype=np.float64)
    small = small.clip(0, 255)
    out = np.zeros((28, 28))
    top, left = (28 - h) // 2, (28 - w) // 2
    out[top:top + h, left:left + w] = small
    mass = out.sum()
    cy, cx = (np.indices(out.shape) * out).reshape(2, -1).sum(1) / mass
    dy, dx = int(round(13.5 - cy)), int(round(13.5 - cx))
    dy = int(np.clip(dy, -top, 28 - top - h))  # keep every stroke inside the image
    dx = int(np.clip(dx, -left, 28 - left - w))
    return np.roll(out, (dy, dx), axis=(0, 1)).round().astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """An 8-bit grey image as PNG bytes (the form an upload arrives in)."""
    import io

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
