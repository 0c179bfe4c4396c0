"""Untrusted images: one decoder for the CLI's image folders, `.npz` pixel limits and the explorer's uploads.

Pillow does the decoding; what is checked here comes first: the file's kind and size, the pixel count from the
header before any pixel is decoded, and 16-bit or transparent images are converted so that they keep their meaning.
"""

from __future__ import annotations

import io
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_IMAGE_BYTES = 64 * 10**6  # image files larger than this are not read
MAX_PIXELS = 25_000_000  # images with more pixels are refused before their pixels are decoded


def decode_image(src: bytes | bytearray | str | Path) -> Image.Image:
    """Decode an untrusted image file or its bytes into an 8-bit grayscale or RGB PIL image.

    Refuses, with a ValueError: anything that is not a regular file or is over MAX_IMAGE_BYTES (a FIFO would
    block, a sparse file would be read whole), more than MAX_PIXELS pixels (checked from the header before the
    pixels are decoded; decompression bombs), and undecodable data. Converts what a plain `convert("L")` gets
    wrong: 16-bit and 32-bit integer images are scaled to 8 bits (not clipped at 255, which turns a near-black
    16-bit background white), and an image with transparency is composited onto the background that contrasts
    with its opaque pixels (a dark digit on a transparent background becomes a dark digit on white, not zeros).
    """
    if isinstance(src, (str, Path)):
        path = Path(src)
        try:
            info = path.stat()
        except FileNotFoundError:
            raise FileNotFoundError(f"image file not found: {src}") from None
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{src} is not a regular file")
        if info.st_size > MAX_IMAGE_BYTES:
            raise ValueError(f"the image file is {info.st_size / 1e6:.0f} MB; at most {MAX_IMAGE_BYTES // 10**6} MB "
                             "are read")
        data = path.read_bytes()
    else:
        data = bytes(src)
    if not data:
        raise ValueError("the image is empty")
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"the image is {len(data) / 1e6:.0f} MB; at most {MAX_IMAGE_BYTES // 10**6} MB are read")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise _TooLarge(f"the image is {im.width}×{im.height} pixels; images up to {MAX_PIXELS:,} pixels "
                                    "are accepted")
                im.load()
                img = im.copy()
    except _TooLarge as e:
        raise ValueError(str(e)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError("the image is too large to decode safely") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise ValueError("not an image: the data could not be decoded (PNG, JPEG, BMP, ... expected)") from None
    return _to_8bit(img)


class _TooLarge(Exception):
    pass


def _to_8bit(img: Image.Image) -> Image.Image:
    """8-bit grayscale or RGB, keeping what the pixels mean (see `decode_image`)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 255.0)
        return Image.fromarray(np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa"):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float64) / 255.0
        alpha = rgba[..., 3:]
        if float(alpha.min()) < 1.0:
            weight = float(alpha.sum())
            lum = (rgba[..., :3].mean(2, keepdims=True) * alpha).sum() / weight if weight else 0.0
            background = 1.0 if lum < 0.5 else 0.0  # contrast with the opaque (drawn) pixels
            rgb = rgba[..., :3] * alpha + background * (1.0 - alpha)
            return Image.fromarray(np.rint(rgb * 255.0).astype(np.uint8), "RGB")
        return img.convert("RGB")
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    return img
