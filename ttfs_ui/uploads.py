"""Untrusted uploads: model files and images. No Streamlit here; every failure is a ValueError whose message
the app shows as it is (ModelLoadError is a ValueError)."""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ttfs_core import data
from ttfs_core.untrusted import ModelLoadError, check_input, load_model
from ttfs_core.untrusted.images import decode_image

BUNDLED_SHAPE = (1, 28, 28)  # the only input shape the bundled data (MNIST) can calibrate and test


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
class UploadedModel:
    """A model file as uploaded (kept in the session so the cached model can be rebuilt)."""

    key: str  # upload_key(data, arch)
    filename: str
    data: bytes
    arch: str | None

    @property
    def title(self) -> str:
        return f"{self.filename} (uploaded{', ' + self.arch if self.arch else ''})"


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


def check_bundled_input(model: nn.Module) -> None:
    """Raise ModelLoadError unless the model takes the bundled 1×28×28 images, saying what it takes instead."""
    try:
        out = check_input(model, BUNDLED_SHAPE)
    except ModelLoadError as e:
        wants = expected_input(model)
        raise ModelLoadError(
            f"the model does not take 1×28×28 inputs{f' (it seems to take {wants})' if wants else ''}; only "
            f"28×28 grayscale images (MNIST) are bundled for calibration and testing. Details: {e}"
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelLoadError(f"the model's output should be logits of shape (batch, classes), got {shape}")


CANDIDATE_SHAPES = ((3, 32, 32), (3, 28, 28), (1, 32, 32), (3, 64, 64), (3, 96, 96), (3, 224, 224))


def expected_input(model: nn.Module) -> str | None:
    """A guess of the input a model takes (for error messages only): common image shapes that run, else what
    its first weight suggests."""
    for shape in CANDIDATE_SHAPES:
        try:
            check_input(model, shape)
        except ModelLoadError:
            continue
        return f"{'×'.join(map(str, shape))} inputs"
    for p in model.parameters():
        if p.dim() == 4:
            return f"{p.shape[1]}-channel images (its first layer is a convolution with {p.shape[1]} input channels)"
        if p.dim() == 2:
            return f"{p.shape[1]} input features (its first layer is linear)"
    return None


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
