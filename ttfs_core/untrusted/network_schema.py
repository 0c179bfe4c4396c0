"""The vocabulary of a saved network file (`ttfs_core.persist`): its format name and version, field names, dtypes
and limits, and the typed checks every field goes through. A file is untrusted input: each check raises `Invalid`
naming the field (a path such as ``layers[3].inputs[1].conv.stride``) and what is wrong, with the value shown
short and on one line (`show`). The geometry functions compute the output sizes PyTorch's pooling and convolution
give and refuse what it would refuse. The checks of a whole file are in :mod:`.network_file`.

The limits (``MAX_*``) are read when a check runs, from this module: tests lower them here.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch

FORMAT = "ttfs-network"
VERSION = 2  # written; every version from 1 is read
LAYER_TENSORS = ("bias", "scale", "theta", "slope")  # a layer's tensors: {layer}.bias, ...
INPUT_TENSORS = ("weight", "J")  # an input's tensors: {layer}.inputs.{k}.weight, ...
FLOATS = ("max_activation", "start", "t_min", "t_max", "in_window", "window")  # a layer's numbers

# --- limits: a file may describe at most this much -------------------------------------------------------------
MAX_TENSOR_ELEMENTS = 1 << 31  # elements of one stored tensor, and of one declared shape (per sample)
MAX_TOTAL_ELEMENTS = 1 << 33  # elements of all stored tensors together
MAX_DESCRIPTION_CHARS = 1 << 24  # characters of the JSON description
MAX_LAYERS = 100_000
MAX_INPUTS = 1024  # inputs (Synapses) of one layer
MAX_OPS = 64  # pools in one route; ops in the readout
MAX_RANK = 8  # dimensions of a shape
MAX_TEXT = 1000  # characters of a name
MAX_READOUT_ELEMENTS = 1 << 24  # a readout op may not grow the data past this many elements per sample
MAX_ADAPTIVE_SIZE = 1 << 16  # adaptive pooling output per axis (its run time builds one row per output)
MAX_POOL_MATRIX = 1 << 24  # adaptive pooling matrix entries per axis (output × input)

# dtype names in the description -> (safetensors dtype code, torch dtype)
DTYPES = {"float16": ("F16", torch.float16), "bfloat16": ("BF16", torch.bfloat16),
          "float32": ("F32", torch.float32), "float64": ("F64", torch.float64)}
FLOAT_CODES = tuple(code for code, _ in DTYPES.values())

# op kinds that can follow the readout's weighted sum (lower.Lowering.run accepts only these after it) and
# the parameters the capture stores for each (capture.Capture._module_params / _function_params)
READOUT_PARAMS: dict[str, tuple[str, ...]] = {
    "affine": ("scale", "shift"),
    "reshape": (),
    "maxpool": ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    "avgpool": ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    "adaptive_avgpool": ("output_size",),
    "identity": (),
}

# the keys of each object of the description
TOP_KEYS = ("format", "version", "layers", "output", "input_shape", "input_range", "neuron", "margin", "rescale",
            "alpha", "dtype")
LAYER_KEYS = ("name", "op", "shape", "is_output", "clip", "inputs", "probe", "readout", *FLOATS, "peak_drive")
INPUT_KEYS = ("source", "route", "in_shape", "conv", "channels", "in_window", "delay")
ABSORBED = "absorbed"  # optional in version 2 (provenance, `Layer.absorbed`): files written before it load with ()
MAX_ABSORBED = 4096  # captured ops one layer may list as absorbed
LAYER_KEYS_V1 = ("name", "op", "source", "in_shape", "shape", "conv", "is_output", "route", "probe", "readout", *FLOATS)
CONV_KEYS = ("stride", "padding", "dilation", "groups")
POOL_KEYS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "sign")
PROBE_KEYS = ("node", "relu", "affine")
OP_KEYS = ("name", "node", "kind", "target", "in_shape", "out_shape", "params")


# ---------------------------------------------------------------------------------------------------------------
# messages


class Invalid(Exception):
    """One problem with the file: the field it is in, and what is wrong (becomes a NetworkFileError)."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}")
        self.where, self.problem = where, problem


class NonFinite:
    """What the JSON parser returns for Infinity, -Infinity, NaN and numbers too large for a float: a value that
    fails every type check below, so the message names the field that holds it."""

    def __init__(self, text: str):
        self.text = text


class JsonObject(dict):
    """A JSON object; `duplicate` is the first key it held twice (None if none)."""

    duplicate: str | None = None


def json_object(pairs: list[tuple[str, Any]]) -> JsonObject:
    """The JSON parser's object hook: keeps the first key that appears twice, for `obj` to refuse."""
    out = JsonObject()
    for key, value in pairs:
        if key in out and out.duplicate is None:
            out.duplicate = key
        out[key] = value
    return out


def finite_float(text: str) -> float | NonFinite:
    value = float(text)
    return value if math.isfinite(value) else NonFinite(text if len(text) <= 24 else text[:21] + "...")


def show(value: Any, depth: int = 0) -> str:
    """A short, one-line rendering of a (possibly hostile) JSON value for a message."""
    if isinstance(value, NonFinite):
        text = value.text
    elif isinstance(value, str):
        text = json.dumps(value[:40]) + ("..." if len(value) > 40 else "")
    elif value is None or isinstance(value, bool):
        text = json.dumps(value)
    elif isinstance(value, int):
        text = str(value) if value.bit_length() <= 64 else f"an integer of about 10^{int(value.bit_length() * 0.30103)}"
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, (list, tuple)):
        if depth >= 2:
            return "[...]"
        items = [show(v, depth + 1) for v in value[:4]]
        text = "[" + ", ".join(items + (["..."] if len(value) > 4 else [])) + "]"
    elif isinstance(value, dict):
        if depth >= 2:
            return "{...}"
        items = [f"{show(k, 2)}: {show(v, depth + 1)}" for k, v in list(value.items())[:3]]
        text = "{" + ", ".join(items + (["..."] if len(value) > 3 else [])) + "}"
    else:
        text = type(value).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def kind_of(value: Any) -> str:
    """The JSON type of a value, for messages."""
    if isinstance(value, NonFinite):
        return value.text
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
             type(None): "null"}
    return names.get(type(value), "an object" if isinstance(value, dict) else type(value).__name__)


def at(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def fmt(shape: tuple[int, ...] | list[int]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def as_limit(n: int) -> str:
    """A limit for a message: powers of two as 2^k."""
    return f"2^{n.bit_length() - 1}" if n > 1024 and n & (n - 1) == 0 else str(n)


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


# ---------------------------------------------------------------------------------------------------------------
# typed fields


def obj(value: Any, where: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """A JSON object with exactly these keys."""
    label = where or "description"
    if not isinstance(value, dict):
        raise Invalid(label, f"expected an object with keys {', '.join(keys) or '(none)'}, got {show(value)}")
    if isinstance(value, JsonObject) and value.duplicate is not None:
        raise Invalid(label, f"the key {show(value.duplicate)} appears twice")
    for key in value:
        if key not in keys:
            raise Invalid(label, f"unexpected key {show(key)} (allowed: {', '.join(keys) or 'none'})")
    for key in keys:
        if key not in value:
            raise Invalid(at(where, key), "missing (a required field)")
    return value


def integer(value: Any, where: str, lo: int, hi: int | None = None, what: str = "") -> int:
    """An integer in [lo, hi] (hi: MAX_TENSOR_ELEMENTS if None)."""
    top = MAX_TENSOR_ELEMENTS if hi is None else hi
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= top:
        span = f"≥ {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise Invalid(where, f"expected an integer {span}{what}, got {show(value)}")
    return value


def finite(value: Any, where: str, rule: str = "", ok=lambda v: True) -> float:
    """A finite number (JSON integer or float) that satisfies `ok`; `rule` says which."""
    if not isinstance(value, bool) and isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if math.isfinite(number) and ok(number):
            return number
    raise Invalid(where, f"expected a finite number{rule}, got {show(value)}")


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise Invalid(where, f"expected true or false, got {show(value)}")
    return value


def printable(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT or not value.isprintable():
        raise Invalid(where, f"expected a printable one-line string of at most {MAX_TEXT} characters, "
                             f"got {show(value)}")
    return value


def choice(value: Any, where: str, allowed) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise Invalid(where, f"expected one of {', '.join(map(json.dumps, allowed))}, got {show(value)}")
    return value


def bounded_list(value: Any, where: str, most: int, what: str) -> list[Any]:
    if not isinstance(value, list) or len(value) > most:
        raise Invalid(where, f"expected a list of at most {most} {what}, got {show(value)}")
    return value


def int_pair(value: Any, where: str, lo: int) -> tuple[int, int]:
    """Two integers ≥ lo (a kernel size, stride, padding or dilation)."""
    if (not isinstance(value, list) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= MAX_TENSOR_ELEMENTS
                   for v in value)):
        raise Invalid(where, f"expected two integers ≥ {lo}, got {show(value)}")
    return value[0], value[1]


def shape_of(value: Any, where: str) -> tuple[int, ...]:
    """A per-sample shape: 1 to MAX_RANK sizes ≥ 1, at most MAX_TENSOR_ELEMENTS elements in all."""
    if (isinstance(value, list) and 1 <= len(value) <= MAX_RANK
            and all(not isinstance(v, bool) and isinstance(v, int) and 1 <= v <= MAX_TENSOR_ELEMENTS for v in value)
            and numel(tuple(value)) <= MAX_TENSOR_ELEMENTS):
        return tuple(value)
    raise Invalid(where, f"expected a shape: a list of 1 to {MAX_RANK} integers ≥ 1 with at most "
                         f"{as_limit(MAX_TENSOR_ELEMENTS)} elements in all, got {show(value)}")


def same(got: tuple[int, ...], expected: tuple[int, ...], where: str, why: str) -> None:
    if tuple(got) != tuple(expected):
        raise Invalid(where, f"expected {fmt(expected)} ({why}), got {fmt(got)}")


# ---------------------------------------------------------------------------------------------------------------
# geometry (the output sizes PyTorch computes, and the checks it makes)


def pool_output(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> int:
    """Output length of max/avg pooling along one axis (PyTorch's pooling_output_shape); < 1: no output."""
    out = (size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1  # the last window must start inside the input or its left padding
    return out


def conv_output(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    """Output length of a convolution along one axis; < 1: the kernel does not fit."""
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def pool_shape(p: dict[str, Any], where: str, shape: tuple[int, ...], dilated: bool) -> tuple[int, ...]:
    """Check a max/avg pooling's parameters on input `shape` (C, H, W); return its output shape."""
    if len(shape) != 3:
        raise Invalid(where, f"2-d pooling reads (channels, height, width), but its input has shape {fmt(shape)}")
    kernel = int_pair(p["kernel_size"], at(where, "kernel_size"), 1)
    stride = int_pair(p["stride"], at(where, "stride"), 1)
    padding = int_pair(p["padding"], at(where, "padding"), 0)
    dilation = int_pair(p["dilation"], at(where, "dilation"), 1) if dilated else (1, 1)
    ceil_mode = boolean(p["ceil_mode"], at(where, "ceil_mode"))
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise Invalid(at(where, "padding"), f"expected at most half the kernel size {fmt(kernel)}, "
                                            f"got {fmt(padding)}")
    out = tuple(pool_output(shape[1 + a], kernel[a], stride[a], padding[a], dilation[a], ceil_mode) for a in (0, 1))
    if min(out) < 1:
        raise Invalid(where, f"the pooling window does not fit the input {fmt(shape)} (output {fmt(out)})")
    return (shape[0], *out)


def adaptive_shape(p: dict[str, Any], where: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) != 3:
        raise Invalid(where, f"2-d pooling reads (channels, height, width), but its input has shape {fmt(shape)}")
    size = p["output_size"]
    place = at(at(where, "params"), "output_size")
    if not isinstance(size, bool) and isinstance(size, int):
        size = [size, size]
    if (not isinstance(size, list) or len(size) != 2
            or any(v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_ADAPTIVE_SIZE)
                   for v in size)):
        raise Invalid(place, f"expected an integer in [1, {MAX_ADAPTIVE_SIZE}] or two such integers (or null), "
                             f"got {show(p['output_size'])}")
    out = tuple(shape[1 + a] if size[a] is None else size[a] for a in (0, 1))
    for a in (0, 1):
        if out[a] * shape[1 + a] > MAX_POOL_MATRIX:
            raise Invalid(place, f"pooling {shape[1 + a]} to {out[a]} needs a {out[a]}×{shape[1 + a]} matrix; at most "
                                 f"{as_limit(MAX_POOL_MATRIX)} entries are allowed")
    return (shape[0], *out)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, at most 200 characters, for a one-line error."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."
