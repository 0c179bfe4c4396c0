"""Save and load converted networks in a format that carries no code: one safetensors file whose header holds
the network's description as JSON. A loaded network gives the same spike times, bit for bit.

Format version 2 (written): each layer lists its `inputs` (`network.Synapses`): source, route, in_shape, conv,
channels, in_window and delay, with tensors ``{layer}.inputs.{k}.weight``, ``.J`` and ``.route.{j}.sign``; and
its `clip` (ReLU6), and optionally `absorbed` (provenance: [name, kind, description] of the original model's ops
the layer absorbed; files written before it was added lack it and load with none). Version 1 (read only): one
input per layer, its fields on the layer itself (``{layer}.weight``...); it loads as one-input layers (delay 0,
all channels, no clip).

A file is untrusted input. `load_network` checks it against the explicit schema below before it builds anything
or runs anything, in three passes:

1. the description (JSON): every key, type and range; the geometry that needs no tensor (shapes, routes,
   channels, readout ops); the timing (MATH §4–§5: a layer opens when its last source closes, t_min = max t_max
   of its sources, each input delayed by t_min − t_max(source) and read over its source's window, in_window the
   longest of them, start = t_min − in_window, t_max = t_min + window, a clipped layer's window = its clip,
   layers in time order and each input from an earlier layer; version 1: consecutive windows);
2. the tensors' headers (names, dtypes, shapes; no data read yet): exactly the tensors the description needs, of
   float dtypes, within size limits, and of shapes that fit the layers (weights of every input for the channels
   it drives, conv parameters, broadcasts);
3. the tensors' values: finite, and ±1 for the pooling signs.

Every problem raises one `NetworkFileError` whose one-line message names the field, e.g.
``net.safetensors: layers[3].inputs[1].conv.stride: expected two integers ≥ 1, got [0, 1]``.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from .capture import Op
from .convert import NEURONS, RESCALE
from .network import Layer, Probe, SpikingNetwork, Synapses
from .simulate import Pool

FORMAT = "ttfs-network"
VERSION = 2  # written; every version from 1 is read
_LAYER_TENSORS = ("bias", "scale", "theta", "slope")
_INPUT_TENSORS = ("weight", "J")
_FLOATS = ("max_activation", "start", "t_min", "t_max", "in_window", "window")

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
_FLOAT_CODES = tuple(code for code, _ in DTYPES.values())

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

_TOP = ("format", "version", "layers", "output", "input_shape", "input_range", "neuron", "margin", "rescale", "alpha",
        "dtype")
_LAYER = ("name", "op", "shape", "is_output", "clip", "inputs", "probe", "readout", *_FLOATS, "peak_drive")
_INPUT = ("source", "route", "in_shape", "conv", "channels", "in_window", "delay")
_ABSORBED = "absorbed"  # optional in version 2 (provenance, `Layer.absorbed`): files written before it load with ()
MAX_ABSORBED = 4096  # captured ops one layer may list as absorbed
_LAYER_V1 = ("name", "op", "source", "in_shape", "shape", "conv", "is_output", "route", "probe", "readout", *_FLOATS)
_CONV = ("stride", "padding", "dilation", "groups")
_POOL = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "sign")
_PROBE = ("node", "relu", "affine")
_OP = ("name", "node", "kind", "target", "in_shape", "out_shape", "params")


class NetworkFileError(ValueError):
    """A saved network cannot be read: names the problem."""


# ---------------------------------------------------------------------------------------------------------------
# saving


def _split(prefix: str, params: dict[str, Any], tensors: dict[str, Tensor]) -> dict[str, Any]:
    plain = {}
    for key, value in params.items():
        if isinstance(value, Tensor):
            tensors[f"{prefix}.{key}"] = value.contiguous()
            plain[key] = {"tensor": f"{prefix}.{key}"}
        else:
            plain[key] = list(value) if isinstance(value, tuple) else value
    return plain


def _input_to_json(syn: Synapses, prefix: str, tensors: dict[str, Tensor]) -> dict[str, Any]:
    for name in _INPUT_TENSORS:
        value = getattr(syn, name)
        if value is not None:
            tensors[f"{prefix}.{name}"] = value.contiguous()
    route = []
    for k, pool in enumerate(syn.route):
        if pool.sign is not None:
            tensors[f"{prefix}.route.{k}.sign"] = pool.sign.contiguous()
        route.append({"kernel_size": list(pool.kernel_size), "stride": list(pool.stride), "padding": list(pool.padding),
                      "dilation": list(pool.dilation), "ceil_mode": pool.ceil_mode, "sign": pool.sign is not None})
    conv = None if syn.conv is None else {k: list(v) if isinstance(v, tuple) else v for k, v in syn.conv.items()}
    return {"source": syn.source, "route": route, "in_shape": list(syn.in_shape), "conv": conv,
            "channels": None if syn.channels is None else list(syn.channels),
            "in_window": float(syn.in_window), "delay": float(syn.delay)}


def _layer_to_json(layer: Layer, prefix: str, tensors: dict[str, Tensor]) -> dict[str, Any]:
    for name in _LAYER_TENSORS:
        value = getattr(layer, name)
        if value is not None:
            tensors[f"{prefix}.{name}"] = value.contiguous()
    probe = {"node": layer.probe.node, "relu": layer.probe.relu, "affine": layer.probe.scale is not None}
    if layer.probe.scale is not None:
        tensors[f"{prefix}.probe.scale"] = layer.probe.scale.contiguous()
        tensors[f"{prefix}.probe.shift"] = layer.probe.shift.contiguous()
    readout = [
        {"name": op.name, "node": op.node, "kind": op.kind, "target": op.target, "in_shape": list(op.in_shape),
         "out_shape": list(op.out_shape), "params": _split(f"{prefix}.readout.{k}", op.params, tensors)}
        for k, op in enumerate(layer.readout)
    ]
    return {
        "name": layer.name, "op": layer.op, "shape": list(layer.shape), "is_output": layer.is_output,
        "clip": None if layer.clip is None else float(layer.clip),
        "inputs": [_input_to_json(syn, f"{prefix}.inputs.{k}", tensors) for k, syn in enumerate(layer.inputs)],
        "probe": probe, "readout": readout, **{name: float(getattr(layer, name)) for name in _FLOATS},
        "peak_drive": float(layer.peak_drive),
        _ABSORBED: [list(entry) for entry in layer.absorbed],
    }


def save_network(snn: SpikingNetwork, path: str | os.PathLike) -> None:
    """Write `snn` to `path` (safetensors; the description is JSON in the header, no code, no pickle)."""
    snn = snn.to("cpu")
    tensors: dict[str, Tensor] = {}
    desc = {
        "format": FORMAT, "version": VERSION,
        "layers": [_layer_to_json(layer, f"layers.{i}", tensors) for i, layer in enumerate(snn.layers)],
        "output": _layer_to_json(snn.output, "output", tensors),
        "input_shape": list(snn.input_shape), "input_range": list(snn.input_range), "neuron": snn.neuron,
        "margin": snn.margin, "rescale": snn.rescale, "alpha": snn.alpha, "dtype": str(snn.dtype).split(".")[-1],
    }
    save_file(tensors, os.fspath(path), metadata={"ttfs": json.dumps(desc)})


# ---------------------------------------------------------------------------------------------------------------
# loading: messages


class _Invalid(Exception):
    """One problem with the file: the field it is in, and what is wrong (becomes a NetworkFileError)."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}")
        self.where, self.problem = where, problem


class _NonFinite:
    """What the JSON parser returns for Infinity, -Infinity, NaN and numbers too large for a float: a value that
    fails every type check below, so the message names the field that holds it."""

    def __init__(self, text: str):
        self.text = text


class _Object(dict):
    """A JSON object; `duplicate` is the first key it held twice (None if none)."""

    duplicate: str | None = None


def _pairs(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object()
    for key, value in pairs:
        if key in obj and obj.duplicate is None:
            obj.duplicate = key
        obj[key] = value
    return obj


def _finite_float(text: str) -> float | _NonFinite:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text if len(text) <= 24 else text[:21] + "...")


def _show(value: Any, depth: int = 0) -> str:
    """A short, one-line rendering of a (possibly hostile) JSON value for a message."""
    if isinstance(value, _NonFinite):
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
        items = [_show(v, depth + 1) for v in value[:4]]
        text = "[" + ", ".join(items + (["..."] if len(value) > 4 else [])) + "]"
    elif isinstance(value, dict):
        if depth >= 2:
            return "{...}"
        items = [f"{_show(k, 2)}: {_show(v, depth + 1)}" for k, v in list(value.items())[:3]]
        text = "{" + ", ".join(items + (["..."] if len(value) > 3 else [])) + "}"
    else:
        text = type(value).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def _kind(value: Any) -> str:
    """The JSON type of a value, for messages."""
    if isinstance(value, _NonFinite):
        return value.text
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
             type(None): "null"}
    return names.get(type(value), "an object" if isinstance(value, dict) else type(value).__name__)


def _at(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def _fmt(shape: tuple[int, ...] | list[int]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _count(n: int) -> str:
    """A limit for a message: powers of two as 2^k."""
    return f"2^{n.bit_length() - 1}" if n > 1024 and n & (n - 1) == 0 else str(n)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


# ---------------------------------------------------------------------------------------------------------------
# loading: typed fields


def _obj(value: Any, where: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """A JSON object with exactly these keys."""
    label = where or "description"
    if not isinstance(value, dict):
        raise _Invalid(label, f"expected an object with keys {', '.join(keys) or '(none)'}, got {_show(value)}")
    if isinstance(value, _Object) and value.duplicate is not None:
        raise _Invalid(label, f"the key {_show(value.duplicate)} appears twice")
    for key in value:
        if key not in keys:
            raise _Invalid(label, f"unexpected key {_show(key)} (allowed: {', '.join(keys) or 'none'})")
    for key in keys:
        if key not in value:
            raise _Invalid(_at(where, key), "missing (a required field)")
    return value


def _int(value: Any, where: str, lo: int, hi: int | None = None, what: str = "") -> int:
    """An integer in [lo, hi] (hi: MAX_TENSOR_ELEMENTS if None)."""
    top = MAX_TENSOR_ELEMENTS if hi is None else hi
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= top:
        span = f"≥ {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise _Invalid(where, f"expected an integer {span}{what}, got {_show(value)}")
    return value


def _float(value: Any, where: str, rule: str = "", ok=lambda v: True) -> float:
    """A finite number (JSON integer or float) that satisfies `ok`; `rule` says which."""
    if not isinstance(value, bool) and isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if math.isfinite(number) and ok(number):
            return number
    raise _Invalid(where, f"expected a finite number{rule}, got {_show(value)}")


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(where, f"expected true or false, got {_show(value)}")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT or not value.isprintable():
        raise _Invalid(where, f"expected a printable one-line string of at most {MAX_TEXT} characters, "
                              f"got {_show(value)}")
    return value


def _choice(value: Any, where: str, allowed) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise _Invalid(where, f"expected one of {', '.join(map(json.dumps, allowed))}, got {_show(value)}")
    return value


def _list(value: Any, where: str, most: int, what: str) -> list[Any]:
    if not isinstance(value, list) or len(value) > most:
        raise _Invalid(where, f"expected a list of at most {most} {what}, got {_show(value)}")
    return value


def _pair(value: Any, where: str, lo: int) -> tuple[int, int]:
    """Two integers ≥ lo (a kernel size, stride, padding or dilation)."""
    if (not isinstance(value, list) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= MAX_TENSOR_ELEMENTS
                   for v in value)):
        raise _Invalid(where, f"expected two integers ≥ {lo}, got {_show(value)}")
    return value[0], value[1]


def _shape(value: Any, where: str) -> tuple[int, ...]:
    """A per-sample shape: 1 to MAX_RANK sizes ≥ 1, at most MAX_TENSOR_ELEMENTS elements in all."""
    if (isinstance(value, list) and 1 <= len(value) <= MAX_RANK
            and all(not isinstance(v, bool) and isinstance(v, int) and 1 <= v <= MAX_TENSOR_ELEMENTS for v in value)
            and _numel(tuple(value)) <= MAX_TENSOR_ELEMENTS):
        return tuple(value)
    raise _Invalid(where, f"expected a shape: a list of 1 to {MAX_RANK} integers ≥ 1 with at most "
                          f"{_count(MAX_TENSOR_ELEMENTS)} elements in all, got {_show(value)}")


def _same(got: tuple[int, ...], expected: tuple[int, ...], where: str, why: str) -> None:
    if tuple(got) != tuple(expected):
        raise _Invalid(where, f"expected {_fmt(expected)} ({why}), got {_fmt(got)}")


# ---------------------------------------------------------------------------------------------------------------
# loading: geometry (the output sizes PyTorch computes, and the checks it makes)


def pool_output(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> int:
    """Output length of max/avg pooling along one axis (PyTorch's pooling_output_shape); < 1: no output."""
    out = (size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1  # the last window must start inside the input or its left padding
    return out


def conv_output(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    """Output length of a convolution along one axis; < 1: the kernel does not fit."""
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def _pool_shape(p: dict[str, Any], where: str, shape: tuple[int, ...], dilated: bool) -> tuple[int, ...]:
    """Check a max/avg pooling's parameters on input `shape` (C, H, W); return its output shape."""
    if len(shape) != 3:
        raise _Invalid(where, f"2-d pooling reads (channels, height, width), but its input has shape {_fmt(shape)}")
    kernel = _pair(p["kernel_size"], _at(where, "kernel_size"), 1)
    stride = _pair(p["stride"], _at(where, "stride"), 1)
    padding = _pair(p["padding"], _at(where, "padding"), 0)
    dilation = _pair(p["dilation"], _at(where, "dilation"), 1) if dilated else (1, 1)
    ceil_mode = _bool(p["ceil_mode"], _at(where, "ceil_mode"))
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise _Invalid(_at(where, "padding"), f"expected at most half the kernel size {_fmt(kernel)}, "
                                              f"got {_fmt(padding)}")
    out = tuple(pool_output(shape[1 + a], kernel[a], stride[a], padding[a], dilation[a], ceil_mode) for a in (0, 1))
    if min(out) < 1:
        raise _Invalid(where, f"the pooling window does not fit the input {_fmt(shape)} (output {_fmt(out)})")
    return (shape[0], *out)


def _adaptive_shape(p: dict[str, Any], where: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) != 3:
        raise _Invalid(where, f"2-d pooling reads (channels, height, width), but its input has shape {_fmt(shape)}")
    size = p["output_size"]
    place = _at(_at(where, "params"), "output_size")
    if not isinstance(size, bool) and isinstance(size, int):
        size = [size, size]
    if (not isinstance(size, list) or len(size) != 2
            or any(v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_ADAPTIVE_SIZE)
                   for v in size)):
        raise _Invalid(place, f"expected an integer in [1, {MAX_ADAPTIVE_SIZE}] or two such integers (or null), "
                              f"got {_show(p['output_size'])}")
    out = tuple(shape[1 + a] if size[a] is None else size[a] for a in (0, 1))
    for a in (0, 1):
        if out[a] * shape[1 + a] > MAX_POOL_MATRIX:
            raise _Invalid(place, f"pooling {shape[1 + a]} to {out[a]} needs a {out[a]}×{shape[1 + a]} matrix; at most "
                                  f"{_count(MAX_POOL_MATRIX)} entries are allowed")
    return (shape[0], *out)


# ---------------------------------------------------------------------------------------------------------------
# loading: pass 1, the description


class _Need:
    """The tensors the description calls for: name -> (field, rule), filled by pass 1 and checked by pass 2."""

    def __init__(self) -> None:
        self.tensors: dict[str, tuple[str, str]] = {}

    def add(self, name: str, where: str, rule: str) -> None:
        self.tensors[name] = (where, rule)


def _check_description(desc: Any, need: _Need) -> dict[str, Any]:
    """Every field of the description; returns it normalised (tuples, floats; a version-1 layer as a layer with one
    input). Pass 1."""
    if not isinstance(desc, dict):
        raise _Invalid("description", f"expected a JSON object, got {_kind(desc)}")
    for key in ("format", "version"):
        if key not in desc:
            raise _Invalid(key, "missing (a required field)")
    if desc["format"] != FORMAT:
        raise _Invalid("format", f"expected {json.dumps(FORMAT)}, got {_show(desc['format'])}")
    version = desc["version"]
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= VERSION:
        raise _Invalid("version", f"expected an integer in [1, {VERSION}] (the format versions this ttfs_core reads), "
                                  f"got {_show(version)}")
    _obj(desc, "", _TOP)
    net = {
        "version": version,
        "input_shape": _shape(desc["input_shape"], "input_shape"),
        "neuron": _choice(desc["neuron"], "neuron", NEURONS),
        "rescale": _choice(desc["rescale"], "rescale", RESCALE),
        "dtype": _choice(desc["dtype"], "dtype", tuple(DTYPES)),
        "margin": _float(desc["margin"], "margin", " > -1", lambda v: v > -1),
        "alpha": _float(desc["alpha"], "alpha", " ≥ 0", lambda v: v >= 0),
    }
    rng = desc["input_range"]
    if not isinstance(rng, list) or len(rng) != 2:
        raise _Invalid("input_range", f"expected two numbers [low, high], got {_show(rng)}")
    p = _float(rng[0], "input_range[0]")
    q = _float(rng[1], "input_range[1]")
    if not (q > p and math.isfinite(q - p)):
        raise _Invalid("input_range", f"expected low < high (and a finite high − low), got {_show(rng)}")
    net["input_range"] = (p, q)
    layers = _list(desc["layers"], "layers", MAX_LAYERS, "layers")
    shapes = [net["input_shape"]]  # shapes of the input and of the layers so far
    hidden = []
    for i, d in enumerate(layers):
        layer = _check_layer(d, f"layers[{i}]", f"layers.{i}", i, shapes, need, False, version)
        hidden.append(layer)
        shapes.append(layer["shape"])
    output = _check_layer(desc["output"], "output", "output", len(hidden), shapes, need, True, version)
    (_check_timing_v1 if version == 1 else _check_timing)(hidden, output)
    net.update(layers=hidden, output=output)
    return net


def _check_layer(d: Any, where: str, prefix: str, index: int, shapes: list[tuple[int, ...]], need: _Need,
                 output: bool, version: int) -> dict[str, Any]:
    optional = version >= 2 and isinstance(d, dict) and _ABSORBED in d
    _obj(d, where, _LAYER_V1 if version == 1 else (*_LAYER, _ABSORBED) if optional else _LAYER)
    layer: dict[str, Any] = {
        "name": _text(d["name"], _at(where, "name")),
        "op": _text(d["op"], _at(where, "op")),
        "prefix": prefix, "where": where,
        "absorbed": _check_absorbed(d[_ABSORBED], _at(where, _ABSORBED)) if optional else (),
    }
    if version == 1:  # the input's fields sit on the layer, in the order version 1 checked them
        source = _source(d, where, index)
        in_shape = _shape(d["in_shape"], _at(where, "in_shape"))
    layer["shape"] = shape = _shape(d["shape"], _at(where, "shape"))
    if _bool(d["is_output"], _at(where, "is_output")) != output:
        raise _Invalid(_at(where, "is_output"), f"expected {json.dumps(output)} "
                                                f"({'the readout' if output else 'a hidden spiking layer'}), "
                                                f"got {json.dumps(not output)}")
    for name in _FLOATS:
        layer[name] = _float(d[name], _at(where, name))
    # P_n (convert._peak_drives) arrived with version 2; a version-1 window was (1 + ζ)·X_n, as if P_n = X_n
    layer["peak_drive"] = layer["max_activation"] if version == 1 else _float(d["peak_drive"], _at(where, "peak_drive"))
    if version == 1:
        if d["conv"] is not None:
            for key, value in (("in_shape", in_shape), ("shape", shape)):
                if len(value) != 3:
                    raise _Invalid(_at(where, key), f"a convolution layer has shapes (channels, height, width), "
                                                    f"got {_fmt(value)}")
        elif len(shape) != 1:
            raise _Invalid(_at(where, "shape"), f"a dense layer has a shape of one integer, got {_fmt(shape)}")
        fields = {"source": source, "in_shape": in_shape, "conv": d["conv"], "route": d["route"], "channels": None,
                  "in_window": layer["in_window"], "delay": 0.0}
        layer["inputs"] = [_check_input(fields, where, "", prefix, shapes, shape, need, output)]
        layer["clip"] = None
    else:
        if len(shape) not in (1, 3):
            raise _Invalid(_at(where, "shape"), f"expected (channels, height, width) or one integer (a dense layer), "
                                                f"got {_fmt(shape)}")
        clip = d["clip"]
        if clip is not None:
            if output:
                raise _Invalid(_at(where, "clip"), f"expected null (the readout is not clipped), got {_show(clip)}")
            clip = _float(clip, _at(where, "clip"), " > 0 (the clip value of a ReLU6 layer) or null",
                          lambda v: v > 0)
        layer["clip"] = clip
        items = d["inputs"]
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_INPUTS:
            raise _Invalid(_at(where, "inputs"), f"expected a list of 1 to {MAX_INPUTS} inputs, got {_show(items)}")
        inputs = []
        for k, item in enumerate(items):
            iw = f"{where}.inputs[{k}]"
            fields = _obj(item, iw, _INPUT)
            fields = {**fields, "source": _source(fields, iw, index),
                      "in_shape": _shape(fields["in_shape"], _at(iw, "in_shape"))}
            inputs.append(_check_input(fields, iw, f"inputs[{k}]", f"{prefix}.inputs.{k}", shapes, shape, need,
                                       output))
        layer["inputs"] = inputs
    probe = _obj(d["probe"], _at(where, "probe"), _PROBE)
    layer["probe"] = {"node": _text(probe["node"], _at(where, "probe.node")),
                      "relu": _bool(probe["relu"], _at(where, "probe.relu")),
                      "affine": _bool(probe["affine"], _at(where, "probe.affine"))}
    if layer["probe"]["affine"]:
        for key in ("scale", "shift"):
            need.add(f"{prefix}.probe.{key}", f"{where}.probe.{key}", "channels")
    for key in ("bias", "scale", *(() if output else ("theta", "slope"))):
        need.add(f"{prefix}.{key}", _at(where, key), key)
    readout = _list(d["readout"], _at(where, "readout"), MAX_OPS, "ops")
    if readout and not output:
        raise _Invalid(_at(where, "readout"), "expected [] (only the output layer has readout ops), "
                                              f"got {len(readout)} ops")
    layer["readout"] = _check_readout(readout, where, prefix, shape, need)
    return layer


def _check_absorbed(value: Any, where: str) -> tuple[tuple[str, str, str], ...]:
    """Provenance: a list of [name, kind, description] strings."""
    items = _list(value, where, MAX_ABSORBED, "[name, kind, description] entries")
    out = []
    for k, item in enumerate(items):
        w = f"{where}[{k}]"
        if not isinstance(item, list) or len(item) != 3:
            raise _Invalid(w, f"expected [name, kind, description], got {_show(item)}")
        out.append(tuple(_text(v, f"{w}[{j}]") for j, v in enumerate(item)))
    return tuple(out)


def _source(d: dict[str, Any], where: str, index: int) -> int:
    return _int(d["source"], _at(where, "source"), -1, index - 1, " (an earlier layer, or -1 for the input)")


def _check_input(d: dict[str, Any], where: str, label: str, prefix: str, shapes: list[tuple[int, ...]],
                 shape: tuple[int, ...], need: _Need, output: bool) -> dict[str, Any]:
    """One input of a layer of `shape` (source and in_shape already checked): conv, channels, route, timing
    fields, and the tensors it needs. `where` names its fields (the layer itself in version 1); `label` names it in
    messages about the whole layer ("" in version 1)."""
    source, in_shape = d["source"], d["in_shape"]
    inp: dict[str, Any] = {"where": where, "label": label, "source": source, "in_shape": in_shape, "prefix": prefix}
    conv = d["conv"]
    if conv is not None:
        cw = _at(where, "conv")
        _obj(conv, cw, _CONV)
        conv = {"stride": _pair(conv["stride"], _at(cw, "stride"), 1),
                "padding": _pair(conv["padding"], _at(cw, "padding"), 0),
                "dilation": _pair(conv["dilation"], _at(cw, "dilation"), 1),
                "groups": _int(conv["groups"], _at(cw, "groups"), 1)}
        if len(in_shape) != 3:
            raise _Invalid(_at(where, "in_shape"), f"a convolution reads (channels, height, width), got "
                                                   f"{_fmt(in_shape)}")
        if len(shape) != 3:
            raise _Invalid(cw, f"a convolution drives a layer of shape (channels, height, width), but the layer has "
                               f"shape {_fmt(shape)}")
    inp["conv"] = conv
    channels = d["channels"]
    if channels is not None:
        if (not isinstance(channels, list) or len(channels) != 2
                or any(isinstance(v, bool) or not isinstance(v, int) for v in channels)
                or not 0 <= channels[0] < channels[1] <= shape[0]):
            raise _Invalid(_at(where, "channels"), f"expected null (all channels) or two integers [lo, hi] with "
                                                   f"0 ≤ lo < hi ≤ {shape[0]} (the layer's channels), "
                                                   f"got {_show(channels)}")
        channels = (channels[0], channels[1])
    inp["channels"] = channels
    # route: max pooling of the source's spike times; it must give this input's in_shape
    route = []
    routed = shapes[source + 1]
    for k, p in enumerate(_list(d["route"], _at(where, "route"), MAX_OPS, "pools")):
        pw = f"{where}.route[{k}]"
        _obj(p, pw, _POOL)
        routed = _pool_shape(p, pw, routed, dilated=True)
        sign = None
        if _bool(p["sign"], _at(pw, "sign")):
            sign = f"{prefix}.route.{k}.sign"
            need.add(sign, _at(pw, "sign"), f"sign:{routed[0]}")
        route.append({**p, "sign": sign})
    inp["route"] = route
    _same(in_shape, routed, _at(where, "in_shape"),
          "the shape of its source " + ("(the input)" if source < 0 else f"layers[{source}]")
          + (" after its route" if route else ""))
    inp["in_window"] = _float(d["in_window"], _at(where, "in_window"))
    inp["delay"] = _float(d["delay"], _at(where, "delay"))
    for key in ("weight", *(() if output else ("J",))):
        inp[key] = f"{prefix}.{key}"
        need.add(inp[key], _at(where, key), key)
    inp.setdefault("J", None)
    return inp


def _check_readout(ops: list[Any], where: str, prefix: str, shape: tuple[int, ...], need: _Need) -> list[dict]:
    """The ops after the readout's weighted sum: kinds the converter emits, chained shapes, bounded work."""
    out = []
    for k, op in enumerate(ops):
        ow = f"{where}.readout[{k}]"
        _obj(op, ow, _OP)
        kind = _choice(op["kind"], _at(ow, "kind"), tuple(READOUT_PARAMS))
        in_shape = _shape(op["in_shape"], _at(ow, "in_shape"))
        out_shape = _shape(op["out_shape"], _at(ow, "out_shape"))
        _same(in_shape, shape, _at(ow, "in_shape"), "the output of the step before")
        pw = _at(ow, "params")
        params = dict(_obj(op["params"], pw, READOUT_PARAMS[kind]))
        if kind == "affine":
            for key in ("scale", "shift"):
                name = f"{prefix}.readout.{k}.{key}"
                ref = _obj(params[key], _at(pw, key), ("tensor",))
                if ref["tensor"] != name:
                    raise _Invalid(_at(pw, key), f"expected {{\"tensor\": {json.dumps(name)}}}, got {_show(ref)}")
                need.add(name, _at(pw, key), f"vector:{in_shape[0]}")
            expected = in_shape
        elif kind == "reshape":
            if _numel(out_shape) != _numel(in_shape):
                raise _Invalid(_at(ow, "out_shape"), f"expected {_numel(in_shape)} elements like in_shape "
                                                     f"{_fmt(in_shape)} (a reshape), got {_fmt(out_shape)}")
            expected = out_shape
        elif kind == "identity":
            expected = in_shape
        elif kind == "adaptive_avgpool":
            expected = _adaptive_shape(params, ow, in_shape)
            params["output_size"] = (tuple(params["output_size"]) if isinstance(params["output_size"], list)
                                     else params["output_size"])
        else:
            expected = _pool_shape(params, pw, in_shape, dilated=kind == "maxpool")
            if kind == "avgpool":
                _bool(params["count_include_pad"], _at(pw, "count_include_pad"))
                div = params["divisor_override"]
                if div is not None and (isinstance(div, bool) or not isinstance(div, int) or div == 0
                                        or abs(div) > MAX_TENSOR_ELEMENTS):
                    raise _Invalid(_at(pw, "divisor_override"),
                                   f"expected null or a non-zero integer, got {_show(div)}")
            for key in ("kernel_size", "stride", "padding", "dilation"):
                if key in params:
                    params[key] = tuple(params[key])
        _same(out_shape, expected, _at(ow, "out_shape"), f"what {kind} gives")
        if _numel(out_shape) > max(_numel(in_shape), MAX_READOUT_ELEMENTS):
            raise _Invalid(_at(ow, "out_shape"), f"grows the readout to {_numel(out_shape)} elements; at most "
                                                 f"{_count(MAX_READOUT_ELEMENTS)}")
        out.append({"name": _text(op["name"], _at(ow, "name")), "node": _text(op["node"], _at(ow, "node")),
                    "kind": kind, "target": _text(op["target"], _at(ow, "target")), "in_shape": in_shape,
                    "out_shape": out_shape, "params": params})
        shape = out_shape
    return out


def _check_windows(layer: dict[str, Any], output: bool) -> None:
    w = layer["where"]
    if not output and not (layer["window"] > 0):
        raise _Invalid(_at(w, "window"), f"expected a number > 0 (t_max − t_min), got {layer['window']!r}")
    if output and layer["window"] != 0:
        raise _Invalid(_at(w, "window"), f"expected 0 (the readout has no window), got {layer['window']!r}")
    if not layer["max_activation"] >= 0:
        raise _Invalid(_at(w, "max_activation"), f"expected a number ≥ 0, got {layer['max_activation']!r}")
    if not layer["peak_drive"] >= layer["max_activation"]:
        raise _Invalid(_at(w, "peak_drive"), f"expected a number ≥ max_activation = {layer['max_activation']!r} "
                                             f"(P_n ≥ X_n), got {layer['peak_drive']!r}")


def _check_t_max(layer: dict[str, Any]) -> None:
    if layer["t_min"] + layer["window"] != layer["t_max"]:
        raise _Invalid(_at(layer["where"], "t_max"), f"expected t_min + window = {layer['t_min'] + layer['window']!r} "
                                                     f"(window = t_max − t_min), got {layer['t_max']!r}")


def _name(source: int) -> str:
    return "the input" if source < 0 else f"layers[{source}]"


def _check_timing(hidden: list[dict[str, Any]], output: dict[str, Any]) -> None:
    """The windows (MATH §4, §5): the input window is [0, 1]; a layer's window opens when the last of its sources
    closes, t_min = max t_max(source), and t_max = t_min + window with window > 0 (= clip for a clipped layer);
    input k reads its source's window, in_window_k = window(source), delayed by t_min − t_max(source); the
    neuron starts integrating at t_min − in_window, in_window the longest of its inputs'. Hidden layers are in
    time order. The readout is taken at its t_min (window 0)."""
    t_max, windows = [1.0], [1.0]  # per layer + 1 (index 0: the input)
    for n, layer in enumerate([*hidden, output]):
        w, is_out = layer["where"], layer is output
        _check_windows(layer, is_out)
        sources = [inp["source"] for inp in layer["inputs"]]
        last = max(sources, key=lambda s: t_max[s + 1])
        if layer["t_min"] != t_max[last + 1]:
            raise _Invalid(_at(w, "t_min"), f"expected {t_max[last + 1]!r} (t_max of {_name(last)}, the last of its "
                                            f"sources to close), got {layer['t_min']!r}")
        if not is_out and n and layer["t_min"] < hidden[n - 1]["t_min"]:
            raise _Invalid(_at(w, "t_min"), f"expected ≥ {hidden[n - 1]['t_min']!r} (t_min of layers[{n - 1}]: the "
                                            f"layers are in time order), got {layer['t_min']!r}")
        _check_t_max(layer)
        for inp in layer["inputs"]:
            s, iw = inp["source"], inp["where"]
            if inp["in_window"] != windows[s + 1]:
                raise _Invalid(_at(iw, "in_window"), f"expected {windows[s + 1]!r} (the window of {_name(s)}), "
                                                     f"got {inp['in_window']!r}")
            delay = layer["t_min"] - t_max[s + 1]
            if inp["delay"] != delay:
                raise _Invalid(_at(iw, "delay"), f"expected {delay!r} (t_min − t_max of {_name(s)}), "
                                                 f"got {inp['delay']!r}")
        longest = max(inp["in_window"] for inp in layer["inputs"])
        if layer["in_window"] != longest:
            raise _Invalid(_at(w, "in_window"), f"expected {longest!r} (the longest in_window of its inputs), "
                                                f"got {layer['in_window']!r}")
        start = layer["t_min"] - layer["in_window"]
        if layer["start"] != start:
            raise _Invalid(_at(w, "start"), f"expected t_min − in_window = {start!r}, got {layer['start']!r}")
        if layer["clip"] is not None and layer["clip"] != layer["window"]:
            raise _Invalid(_at(w, "clip"), f"expected {layer['window']!r} (a clipped layer saturates at the end of "
                                           f"its window: clip = window), got {layer['clip']!r}")
        t_max.append(layer["t_max"])
        windows.append(layer["window"])


def _check_timing_v1(hidden: list[dict[str, Any]], output: dict[str, Any]) -> None:
    """Version 1, a chain (MATH §4): the input window is [0, 1]; layer n's window starts where layer n−1's ends,
    t_max = t_min + window with window > 0; each layer starts integrating at its source's t_min and reads a window
    that ends where its own starts. The readout is taken at the end of the last window (window 0)."""
    end = 1.0  # where the previous window ends
    for layer in [*hidden, output]:
        w, s = layer["where"], layer["inputs"][0]["source"]
        _check_windows(layer, layer is output)
        before = "the end of the input window" if layer is ([*hidden, output])[0] else "where the previous window ends"
        if layer["t_min"] != end:
            raise _Invalid(_at(w, "t_min"), f"expected {end!r} ({before}), got {layer['t_min']!r}")
        _check_t_max(layer)
        start, window, t_max = (0.0, 1.0, 1.0) if s < 0 else (hidden[s]["t_min"], hidden[s]["window"],
                                                              hidden[s]["t_max"])
        if t_max != layer["t_min"]:
            raise _Invalid(_at(w, "source"), f"{_name(s)} ends at t = {t_max!r}, but this layer starts at t_min = "
                                             f"{layer['t_min']!r}: a layer reads the window just before its own")
        if layer["start"] != start:
            raise _Invalid(_at(w, "start"), f"expected {start!r} (t_min of its source), got {layer['start']!r}")
        if layer["in_window"] != window:
            raise _Invalid(_at(w, "in_window"), f"expected {window!r} (the window of its source), "
                                                f"got {layer['in_window']!r}")
        # in the version-2 layout start is t_min − in_window, which can differ from the source's t_min by rounding
        # ((a + b) − b ≠ a in floating point); take it, so the network saves again as a valid version-2 file
        layer["start"] = layer["t_min"] - layer["in_window"]
        end = layer["t_max"]


# ---------------------------------------------------------------------------------------------------------------
# loading: pass 2, the tensors' headers (shapes and dtypes; nothing read yet)


def _check_header(net: dict[str, Any], need: _Need, header: dict[str, tuple[tuple[int, ...], str]]) -> None:
    total = 0
    for name, (shape, _) in header.items():
        n = _numel(shape)
        if n > MAX_TENSOR_ELEMENTS:
            raise _Invalid(f"tensor {_show(name)}", f"declares {n} elements; at most {_count(MAX_TENSOR_ELEMENTS)}")
        total += n
    if total > MAX_TOTAL_ELEMENTS:
        raise _Invalid("tensors", f"declare {total} elements in all; at most {_count(MAX_TOTAL_ELEMENTS)}")
    for name in header:
        if name not in need.tensors:
            raise _Invalid(f"tensor {_show(name)}", "not part of the network description (an unexpected tensor)")
    core, _ = DTYPES[net["dtype"]]
    for name, (where, rule) in need.tensors.items():
        if name not in header:
            raise _Invalid(where, f"the tensor {json.dumps(name)} is missing from the file")
        shape, code = header[name]
        if rule in ("weight", "bias", "scale", "J", "theta", "slope", "channels"):
            if code != core:
                raise _Invalid(where, f"expected dtype {core} (the network's {net['dtype']}), got {code}")
        elif code not in _FLOAT_CODES:
            raise _Invalid(where, f"expected a float dtype ({', '.join(_FLOAT_CODES)}), got {code}")
        if 0 in shape:
            raise _Invalid(where, f"expected a tensor with no empty dimension, got shape {_fmt(shape)}")
        if rule.startswith(("sign:", "vector:")):
            _same(shape, (int(rule.split(":")[1]),), where, "one value per channel")
    for layer in [*net["layers"], net["output"]]:
        for inp in layer["inputs"]:
            _check_input_tensors(layer, inp, header)
        _check_layer_tensors(layer, header)


def _check_input_tensors(layer: dict[str, Any], inp: dict[str, Any],
                         header: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """An input's weight fits the channels it drives and its geometry (dense, or a conv whose output has the layer's
    spatial shape); J has the weight's shape."""
    w, shape, in_shape, conv = inp["where"], layer["shape"], inp["in_shape"], inp["conv"]
    weight = header[inp["weight"]][0]
    part = shape if inp["channels"] is None else (inp["channels"][1] - inp["channels"][0], *shape[1:])
    drives = "" if inp["channels"] is None else f" (channels {inp['channels'][0]} to {inp['channels'][1] - 1})"
    if conv is None:
        what = f"shape {_fmt(shape)}" if not drives else f"the part {_fmt(part)} of the layer it drives{drives}"
        _same(weight, (_numel(part), _numel(in_shape)), _at(w, "weight"),
              f"(neurons, inputs) for {what} and in_shape {_fmt(in_shape)}")
    else:
        groups, out_ch = conv["groups"], part[0]
        if len(weight) != 4:
            raise _Invalid(_at(w, "weight"), f"expected 4 dimensions (out channels, in channels / groups, kernel "
                                             f"height, kernel width), got {_fmt(weight)}")
        if in_shape[0] % groups or out_ch % groups:
            raise _Invalid(_at(w, "conv.groups"), f"expected a divisor of the in channels {in_shape[0]} and the out "
                                                  f"channels {out_ch}{drives}, got {groups}")
        _same(weight[:2], (out_ch, in_shape[0] // groups), _at(w, "weight"),
              f"its first two dimensions: out channels{drives}, in channels / groups = {in_shape[0]} / {groups}")
        (sh, sw), (ph, pw), (dh, dw) = conv["stride"], conv["padding"], conv["dilation"]
        padded = in_shape[0] * (in_shape[1] + 2 * ph) * (in_shape[2] + 2 * pw)
        if padded > MAX_TENSOR_ELEMENTS:
            raise _Invalid(_at(w, "conv.padding"), f"pads the input {_fmt(in_shape)} to {padded} elements; at most "
                                                   f"{_count(MAX_TENSOR_ELEMENTS)}")
        out = (conv_output(in_shape[1], weight[2], sh, ph, dh), conv_output(in_shape[2], weight[3], sw, pw, dw))
        if min(out) < 1:
            raise _Invalid(_at(w, "conv"), f"the {weight[2]}×{weight[3]} kernel (dilation {_fmt((dh, dw))}) does not "
                                           f"fit the input {_fmt(in_shape)} padded by {_fmt((ph, pw))}")
        whose = f"{inp['label']}'s" if inp["label"] else "the"
        _same(shape, (shape[0], *out), _at(layer["where"], "shape"), f"what {whose} convolution gives")
    if inp["J"] is not None:
        _same(header[inp["J"]][0], weight, _at(w, "J"), "the weight's shape")


def _check_layer_tensors(layer: dict[str, Any], header: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """A layer's own tensors broadcast to its shape; the probe's affine has one value per channel."""
    w, shape, prefix = layer["where"], layer["shape"], layer["prefix"]
    for key in _LAYER_TENSORS:
        name = f"{prefix}.{key}"
        if name in header:
            got = header[name][0]
            if len(got) != len(shape) or any(g not in (1, s) for g, s in zip(got, shape)):
                raise _Invalid(_at(w, key), f"expected a shape that broadcasts to {_fmt(shape)} (as many dimensions, "
                                            f"each of size 1 or equal), got {_fmt(got)}")
    if layer["probe"]["affine"]:
        for key in ("scale", "shift"):
            _same(header[f"{prefix}.probe.{key}"][0], (shape[0],), f"{w}.probe.{key}",
                  "one value per channel of the layer")


# ---------------------------------------------------------------------------------------------------------------
# loading: pass 3, the values; then building


def _check_values(need: _Need, tensors: dict[str, Tensor]) -> None:
    for name, (where, rule) in need.tensors.items():
        t = tensors[name]
        if not bool(torch.isfinite(t).all()):
            raise _Invalid(where, f"the tensor {json.dumps(name)} contains NaN or inf values")
        if rule.startswith("sign:") and not bool(((t == 1) | (t == -1)).all()):
            raise _Invalid(where, f"expected only +1 and -1 in the tensor {json.dumps(name)}")


def _build_input(d: dict[str, Any], tensors: dict[str, Tensor]) -> Synapses:
    route = tuple(
        Pool(tuple(p["kernel_size"]), tuple(p["stride"]), tuple(p["padding"]), tuple(p["dilation"]), p["ceil_mode"],
             None if p["sign"] is None else tensors[p["sign"]])
        for p in d["route"]
    )
    conv = None if d["conv"] is None else dict(d["conv"])
    return Synapses(d["source"], route, tuple(d["in_shape"]), tensors[d["weight"]], conv, d["channels"],
                    None if d["J"] is None else tensors[d["J"]], d["in_window"], d["delay"])


def _build_layer(d: dict[str, Any], tensors: dict[str, Tensor]) -> Layer:
    prefix = d["prefix"]
    pr = d["probe"]
    probe = Probe(pr["node"], tensors.get(f"{prefix}.probe.scale"), tensors.get(f"{prefix}.probe.shift"), pr["relu"])
    readout = tuple(
        Op(o["name"], o["node"], o["kind"], o["target"], o["in_shape"], o["out_shape"],
           {k: tensors[v["tensor"]] if isinstance(v, dict) else v for k, v in o["params"].items()})
        for o in d["readout"]
    )
    return Layer(
        name=d["name"], op=d["op"], inputs=tuple(_build_input(inp, tensors) for inp in d["inputs"]),
        shape=d["shape"], bias=tensors[f"{prefix}.bias"], probe=probe, scale=tensors[f"{prefix}.scale"],
        is_output=prefix == "output", readout=readout, clip=d["clip"],
        theta=tensors.get(f"{prefix}.theta"), slope=tensors.get(f"{prefix}.slope"),
        **{name: d[name] for name in _FLOATS}, peak_drive=d["peak_drive"], absorbed=d["absorbed"],
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def load_network(path: str | os.PathLike) -> SpikingNetwork:
    """Read a network written by `save_network`. Raises NetworkFileError naming what is wrong (module docstring):
    nothing from the file is built or run before all of it has been checked."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "not a regular file" if os.path.exists(path) else "no such file"
        raise NetworkFileError(f"{path}: {what}")
    try:
        return _load(path)
    except _Invalid as exc:
        raise NetworkFileError(f"{path}: {exc.where}: {exc.problem}") from None


def _load(path: str) -> SpikingNetwork:
    try:
        handle = safe_open(path, "pt")
    except Exception as exc:  # noqa: BLE001 - any failure of the safetensors parser on a hostile file
        raise NetworkFileError(f"{path}: not a safetensors file ({_first_line(exc)})") from None
    with handle as f:
        try:
            meta = f.metadata() or {}
            header = {}
            for name in f.keys():
                view = f.get_slice(name)
                header[name] = (tuple(int(s) for s in view.get_shape()), str(view.get_dtype()))
        except Exception as exc:  # noqa: BLE001
            raise NetworkFileError(f"{path}: not a safetensors file ({_first_line(exc)})") from None
        if "ttfs" not in meta:
            raise NetworkFileError(f"{path}: a safetensors file, but not a converted network (no 'ttfs' header)")
        text = meta["ttfs"]
        if len(text) > MAX_DESCRIPTION_CHARS:
            raise _Invalid("description", f"{len(text)} characters long; at most {_count(MAX_DESCRIPTION_CHARS)}")
        try:
            desc = json.loads(text, parse_constant=_NonFinite, parse_float=_finite_float, object_pairs_hook=_pairs)
        except RecursionError:
            raise _Invalid("description", "nested too deeply to be a network description") from None
        except ValueError as exc:
            raise _Invalid("description", f"not valid JSON ({_first_line(exc)})") from None
        need = _Need()
        net = _check_description(desc, need)
        _check_header(net, need, header)
        try:
            tensors = {name: f.get_tensor(name) for name in header}
        except Exception as exc:  # noqa: BLE001
            raise NetworkFileError(f"{path}: the tensors cannot be read ({_first_line(exc)})") from None
    for name, t in tensors.items():  # what was read is what the header declared
        if tuple(t.shape) != header[name][0]:
            raise _Invalid(f"tensor {_show(name)}", f"read with shape {_fmt(tuple(t.shape))}, declared "
                                                    f"{_fmt(header[name][0])}")
    _check_values(need, tensors)
    layers = [_build_layer(d, tensors) for d in net["layers"]]
    output = _build_layer(net["output"], tensors)
    return SpikingNetwork(layers, output, net["input_shape"], net["input_range"], net["neuron"], net["margin"],
                          net["rescale"], net["alpha"], DTYPES[net["dtype"]][1])
