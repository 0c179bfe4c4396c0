"""Untrusted images: one decoder (`ttfs_core.untrusted.images.decode_image`) for the CLI's --data folders and the
explorer's uploads. Crafted files end in a ValueError with a plain message; odd but valid images keep their meaning."""

from __future__ import annotations

import io
import os
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from ttfs_core import data
from ttfs_core.untrusted import images
from ttfs_ui import uploads


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def digit(value: float, background: float, size: int = 28) -> np.ndarray:
    """A plus-shaped stroke of `value` on `background` (both in [0, 1])."""
    img = np.full((size, size), background)
    img[6:22, 12:16] = value
    img[12:16, 6:22] = value
    return img


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header announcing width × height 8-bit gray pixels, with a few bytes of image data: opening
    it fully would decode billions of pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + \
        chunk(b"IEND", b"")


def test_16_bit_png_keeps_its_dark_background():
    arr = np.rint(digit(0.9, 0.02) * 65535).astype(np.uint16)  # near-black background in 16 bits
    raw = png_bytes(arr)
    img = images.decode_image(raw)
    assert img.mode == "L"
    gray = np.asarray(img)
    assert gray[0, 0] == round(0.02 * 255) and gray[14, 14] == round(0.9 * 255)
    assert not uploads.light_background(raw)  # clipping at 255 made this background white before
    x, notes = uploads.read_image(raw, data.MNIST_PREPROCESS)
    assert not any("inverted" in n for n in notes) and float(x[0, 0, 14, 14]) > float(x[0, 0, 0, 0])


@pytest.mark.parametrize("ink", [0, 255])
def test_transparent_background_digit_is_not_read_as_zeros(ink):
    rgba = np.zeros((28, 28, 4), dtype=np.uint8)
    rgba[..., :3] = ink
    rgba[..., 3] = np.rint(digit(1.0, 0.0) * 255).astype(np.uint8)  # only the stroke is opaque
    raw = png_bytes(rgba, "RGBA")
    x, _ = uploads.read_image(raw, data.MNIST_PREPROCESS)
    # whatever the ink colour, the model sees a bright digit on a dark background (MNIST's convention)
    assert float(x[0, 0, 14, 14]) > 0.9 and float(x[0, 0, 0, 0]) < 0.1


def test_decompression_bomb_and_oversized_files_are_refused(tmp_path):
    raw = bomb_png(50_000, 50_000)
    assert len(raw) < 2000
    start = time.process_time()  # CPU seconds: refusing must not decode (a wall-clock bound is flaky under load)
    with pytest.raises(ValueError, match="too large"):
        images.decode_image(raw)
    folder = tmp_path / "digits"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(raw)
    with pytest.raises(ValueError, match="bomb.png.*too large"):
        data.load_dataset(str(folder), data.MNIST_PREPROCESS)
    sparse = tmp_path / "sparse" / "big.png"
    sparse.parent.mkdir()
    with open(sparse, "wb") as f:
        f.truncate(8 * 2**30)  # 8 GB that take no disk space: must not be read
    with pytest.raises(ValueError, match="MB"):
        data.load_dataset(str(sparse.parent), data.MNIST_PREPROCESS)
    assert time.process_time() - start < 10


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_in_a_data_folder_does_not_block(tmp_path):
    folder = tmp_path / "digits"
    folder.mkdir()
    os.mkfifo(folder / "pipe.png")
    with pytest.raises(ValueError, match="not a regular file"):
        data.load_dataset(str(folder), data.MNIST_PREPROCESS)


def test_garbage_bytes_give_a_plain_message():
    for raw in (b"", b"\x89PNG\r\n\x1a\n", os.urandom(64), png_bytes(np.zeros((8, 8), np.uint8))[:40]):
        with pytest.raises(ValueError, match="image"):
            images.decode_image(raw)


# --- a digit drawn in the browser (ttfs_ui.draw) ---------------------------------------------------------------
def _pad_value(pad: np.ndarray) -> dict:
    import base64

    return {"pixels": base64.b64encode(pad.astype(np.uint8).tobytes()).decode(), "size": pad.shape[0], "seq": "1"}


def test_a_drawn_digit_is_prepared_as_mnist_and_read_as_one():
    """A '1' drawn off-centre on the 56×56 pad becomes an MNIST-style digit (20 px tall, centre of mass at the
    centre), and the bundled LeNet-5 reads it as a 1, through the same path as an uploaded image."""
    import torch

    from ttfs_core import zoo
    from ttfs_ui import draw

    pad = np.zeros((56, 56))
    pad[4:30, 40:44] = 255  # a short vertical stroke near the top-right corner
    png = draw.drawn_png(_pad_value(pad))
    img = np.asarray(Image.open(io.BytesIO(png)))
    assert img.shape == (28, 28) and img.dtype == np.uint8
    rows = np.flatnonzero((img > 25).any(1))
    assert 18 <= rows[-1] - rows[0] + 1 <= 21
    cy, cx = (np.indices(img.shape) * img).reshape(2, -1).sum(1) / img.sum()
    assert abs(cy - 13.5) <= 1 and abs(cx - 13.5) <= 1
    model, card = zoo.load(zoo.DEFAULT_MODEL)
    x, notes = uploads.read_image(png, card.preprocess)
    assert x.shape == (1, 1, 28, 28) and not any("inverted" in n for n in notes)  # already white on black
    with torch.no_grad():
        assert int(model(x).argmax()) == 1


@pytest.mark.parametrize("value, message", [
    (None, "not a drawing"), ({"pixels": "AAAA"}, "not a drawing"), ({"pixels": "!!", "size": 4}, "base64"),
    ({"pixels": "AAAA", "size": 4}, "expected 4×4 = 16"), ({"pixels": "", "size": 100_000}, "between"),
    ({"pixels": "AAAAAAAAAAAAAAAAAAAAAA==", "size": 4}, "empty"),
])
def test_a_bad_drawing_is_refused_with_a_message(value, message):
    from ttfs_ui import draw

    with pytest.raises(ValueError, match=message):
        draw.drawn_png(value)


def test_upload_keys_are_full_digests_of_the_bytes_and_the_architecture():
    """Uploads are cached across sessions by key: a full SHA-256, with the architecture hashed apart."""
    key = uploads.upload_key(b"weights", "lenet5")
    assert key.startswith("upload:") and len(key) == len("upload:") + 64
    assert key != uploads.upload_key(b"weights") != uploads.upload_key(b"weightslenet5")
    assert uploads.upload_key(b"weights", None) == uploads.upload_key(b"weights", "")
