"""Draw a digit in the browser (`frontend/draw/`: a pad that sends its strokes downsampled, no network).

`drawn_png` turns what the pad sent into the PNG of an MNIST-style digit (`uploads.mnist_style`), which the page
then uses exactly as an uploaded image: the same checks, the same preprocessing, the same session store.
"""

from __future__ import annotations

import base64
import binascii
import functools
from pathlib import Path

import numpy as np

from . import messages, uploads

FRONTEND = Path(__file__).resolve().parent / "frontend" / "draw"
MAX_SIDE = 512  # a pad larger than this is refused (the pad sends 56×56)


def drawn_png(value) -> bytes:
    """The PNG of the digit the pad sent ({"pixels": base64 grey bytes, "size": side}). Raises ValueError with a
    message for anything else (the value comes from the browser: untrusted)."""
    try:
        pixels, side = messages.drawing(value, MAX_SIDE)
    except messages.BadMessage as e:
        raise ValueError(f"the drawing pad sent something that is not a drawing ({e})") from None
    try:
        raw = base64.b64decode(pixels, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the drawing's pixels are not valid base64") from None
    if len(raw) != side * side:
        raise ValueError(f"the drawing has {len(raw)} pixels, expected {side}×{side} = {side * side}")
    pad = np.frombuffer(raw, dtype=np.uint8).reshape(side, side)
    return uploads.png_bytes(uploads.mnist_style(pad))


@functools.cache
def _component():
    import streamlit.components.v1 as components

    return components.declare_component("draw", path=str(FRONTEND))


def pad(*, key: str):
    """The drawing pad; returns the last drawing sent ({pixels, size, seq}) or None."""
    return _component()(key=key, default=None)
