"""The checks of a saved network file (`ttfs_core.persist`), which is untrusted input. `persist.load_network`
runs them before it builds anything or runs anything, in three passes:

1. the description (JSON, :func:`parse_description`, :func:`check_description`): every key, type and range; the
   geometry that needs no tensor (shapes, routes, channels, readout ops); the timing: each layer's window must be
   where conversion puts it, `mapping.place_in_time` (MATH §4–§5: a layer opens when its last source closes,
   t_min = max t_max of its sources, each input delayed by t_min − t_max(source) and read over its source's
   window, in_window the longest of them, start = t_min − in_window), t_max = t_min + window, a clipped layer's
   window = its clip, layers in time order and each input from an earlier layer; version 1: consecutive windows;
2. the tensors' headers (:func:`check_header`: names, dtypes, shapes; no data read yet): exactly the tensors the
   description needs, of float dtypes, within size limits, and of shapes that fit the layers (weights of every
   input for the channels it drives, conv parameters, broadcasts);
3. the tensors as read (:func:`check_tensors`): the declared shapes, finite values, ±1 for the pooling signs.

Every problem raises one `network_schema.Invalid` naming the field, which persist turns into a one-line
`NetworkFileError`, e.g. ``net.safetensors: layers[3].inputs[1].conv.stride: expected two integers ≥ 1, got [0, 1]``.
The field types, limits and geometry are in :mod:`.network_schema`.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch
from torch import Tensor

from ..mapping import place_in_time
from ..neurons import NEURON_MODELS, RESCALES
from . import network_schema as schema  # the limits, read when a check runs (tests lower them there)
from .network_schema import (
    ABSORBED,
    CONV_KEYS,
    DTYPES,
    FLOAT_CODES,
    FLOATS,
    FORMAT,
    INPUT_KEYS,
    LAYER_KEYS,
    LAYER_KEYS_V1,
    LAYER_TENSORS,
    OP_KEYS,
    POOL_KEYS,
    PROBE_KEYS,
    READOUT_PARAMS,
    TOP_KEYS,
    VERSION,
    Invalid,
    NonFinite,
    adaptive_shape,
    as_limit,
    at,
    boolean,
    bounded_list,
    choice,
    conv_output,
    finite,
    finite_float,
    first_line,
    fmt,
    int_pair,
    integer,
    json_object,
    kind_of,
    numel,
    obj,
    pool_shape,
    printable,
    same,
    shape_of,
    show,
)


def parse_description(text: str) -> Any:
    """The description (the header's JSON) as Python values, none of them checked yet: non-finite numbers become
    `NonFinite` and a repeated key is remembered (`JsonObject`), so that the checks name the field."""
    if len(text) > schema.MAX_DESCRIPTION_CHARS:
        raise Invalid("description", f"{len(text)} characters long; at most {as_limit(schema.MAX_DESCRIPTION_CHARS)}")
    try:
        return json.loads(text, parse_constant=NonFinite, parse_float=finite_float, object_pairs_hook=json_object)
    except RecursionError:
        raise Invalid("description", "nested too deeply to be a network description") from None
    except ValueError as exc:
        raise Invalid("description", f"not valid JSON ({first_line(exc)})") from None


# ---------------------------------------------------------------------------------------------------------------
# pass 1, the description


class Need:
    """The tensors the description calls for: name -> (field, rule), filled by pass 1 and checked by pass 2."""

    def __init__(self) -> None:
        self.tensors: dict[str, tuple[str, str]] = {}

    def add(self, name: str, where: str, rule: str) -> None:
        self.tensors[name] = (where, rule)


def check_description(desc: Any, need: Need) -> dict[str, Any]:
    """Every field of the description; returns it normalised (tuples, floats; a version-1 layer as a layer with one
    input). Pass 1."""
    if not isinstance(desc, dict):
        raise Invalid("description", f"expected a JSON object, got {kind_of(desc)}")
    for key in ("format", "version"):
        if key not in desc:
            raise Invalid(key, "missing (a required field)")
    if desc["format"] != FORMAT:
        raise Invalid("format", f"expected {json.dumps(FORMAT)}, got {show(desc['format'])}")
    version = desc["version"]
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= VERSION:
        raise Invalid("version", f"expected an integer in [1, {VERSION}] (the format versions this ttfs_core reads), "
                                 f"got {show(version)}")
    obj(desc, "", TOP_KEYS)
    net = {
        "version": version,
        "input_shape": shape_of(desc["input_shape"], "input_shape"),
        "neuron": NEURON_MODELS[choice(desc["neuron"], "neuron", tuple(NEURON_MODELS))],  # stored by name
        "rescale": RESCALES[choice(desc["rescale"], "rescale", tuple(RESCALES))],
        "dtype": choice(desc["dtype"], "dtype", tuple(DTYPES)),
        "margin": finite(desc["margin"], "margin", " > -1", lambda v: v > -1),
        "alpha": finite(desc["alpha"], "alpha", " ≥ 0", lambda v: v >= 0),
    }
    rng = desc["input_range"]
    if not isinstance(rng, list) or len(rng) != 2:
        raise Invalid("input_range", f"expected two numbers [low, high], got {show(rng)}")
    p = finite(rng[0], "input_range[0]")
    q = finite(rng[1], "input_range[1]")
    if not (q > p and math.isfinite(q - p)):
        raise Invalid("input_range", f"expected low < high (and a finite high − low), got {show(rng)}")
    net["input_range"] = (p, q)
    layers = bounded_list(desc["layers"], "layers", schema.MAX_LAYERS, "layers")
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


def _check_layer(d: Any, where: str, prefix: str, index: int, shapes: list[tuple[int, ...]], need: Need,
                 output: bool, version: int) -> dict[str, Any]:
    optional = version >= 2 and isinstance(d, dict) and ABSORBED in d
    obj(d, where, LAYER_KEYS_V1 if version == 1 else (*LAYER_KEYS, ABSORBED) if optional else LAYER_KEYS)
    layer: dict[str, Any] = {
        "name": printable(d["name"], at(where, "name")),
        "op": printable(d["op"], at(where, "op")),
        "prefix": prefix, "where": where,
        "absorbed": _check_absorbed(d[ABSORBED], at(where, ABSORBED)) if optional else (),
    }
    if version == 1:  # the input's fields sit on the layer, in the order version 1 checked them
        source = _source(d, where, index)
        in_shape = shape_of(d["in_shape"], at(where, "in_shape"))
    layer["shape"] = shape = shape_of(d["shape"], at(where, "shape"))
    if boolean(d["is_output"], at(where, "is_output")) != output:
        raise Invalid(at(where, "is_output"), f"expected {json.dumps(output)} "
                                              f"({'the readout' if output else 'a hidden spiking layer'}), "
                                              f"got {json.dumps(not output)}")
    for name in FLOATS:
        layer[name] = finite(d[name], at(where, name))
    # P_n (convert._peak_drives) arrived with version 2; a version-1 window was (1 + ζ)·X_n, as if P_n = X_n
    layer["peak_drive"] = layer["max_activation"] if version == 1 else finite(d["peak_drive"], at(where, "peak_drive"))
    if version == 1:
        if d["conv"] is not None:
            for key, value in (("in_shape", in_shape), ("shape", shape)):
                if len(value) != 3:
                    raise Invalid(at(where, key), f"a convolution layer has shapes (channels, height, width), "
                                                  f"got {fmt(value)}")
        elif len(shape) != 1:
            raise Invalid(at(where, "shape"), f"a dense layer has a shape of one integer, got {fmt(shape)}")
        fields = {"source": source, "in_shape": in_shape, "conv": d["conv"], "route": d["route"], "channels": None,
                  "in_window": layer["in_window"], "delay": 0.0}
        layer["inputs"] = [_check_input(fields, where, "", prefix, shapes, shape, need, output)]
        layer["clip"] = None
    else:
        if len(shape) not in (1, 3):
            raise Invalid(at(where, "shape"), f"expected (channels, height, width) or one integer (a dense layer), "
                                              f"got {fmt(shape)}")
        clip = d["clip"]
        if clip is not None:
            if output:
                raise Invalid(at(where, "clip"), f"expected null (the readout is not clipped), got {show(clip)}")
            clip = finite(clip, at(where, "clip"), " > 0 (the clip value of a ReLU6 layer) or null",
                          lambda v: v > 0)
        layer["clip"] = clip
        items = d["inputs"]
        if not isinstance(items, list) or not 1 <= len(items) <= schema.MAX_INPUTS:
            raise Invalid(at(where, "inputs"), f"expected a list of 1 to {schema.MAX_INPUTS} inputs, got {show(items)}")
        inputs = []
        for k, item in enumerate(items):
            iw = f"{where}.inputs[{k}]"
            fields = obj(item, iw, INPUT_KEYS)
            fields = {**fields, "source": _source(fields, iw, index),
                      "in_shape": shape_of(fields["in_shape"], at(iw, "in_shape"))}
            inputs.append(_check_input(fields, iw, f"inputs[{k}]", f"{prefix}.inputs.{k}", shapes, shape, need,
                                       output))
        layer["inputs"] = inputs
    probe = obj(d["probe"], at(where, "probe"), PROBE_KEYS)
    layer["probe"] = {"node": printable(probe["node"], at(where, "probe.node")),
                      "relu": boolean(probe["relu"], at(where, "probe.relu")),
                      "affine": boolean(probe["affine"], at(where, "probe.affine"))}
    if layer["probe"]["affine"]:
        for key in ("scale", "shift"):
            need.add(f"{prefix}.probe.{key}", f"{where}.probe.{key}", "channels")
    for key in ("bias", "scale", *(() if output else ("theta", "slope"))):
        need.add(f"{prefix}.{key}", at(where, key), key)
    readout = bounded_list(d["readout"], at(where, "readout"), schema.MAX_OPS, "ops")
    if readout and not output:
        raise Invalid(at(where, "readout"), "expected [] (only the output layer has readout ops), "
                                            f"got {len(readout)} ops")
    layer["readout"] = _check_readout(readout, where, prefix, shape, need)
    return layer


def _check_absorbed(value: Any, where: str) -> tuple[tuple[str, str, str], ...]:
    """Provenance: a list of [name, kind, description] strings."""
    items = bounded_list(value, where, schema.MAX_ABSORBED, "[name, kind, description] entries")
    out = []
    for k, item in enumerate(items):
        w = f"{where}[{k}]"
        if not isinstance(item, list) or len(item) != 3:
            raise Invalid(w, f"expected [name, kind, description], got {show(item)}")
        out.append(tuple(printable(v, f"{w}[{j}]") for j, v in enumerate(item)))
    return tuple(out)


def _source(d: dict[str, Any], where: str, index: int) -> int:
    return integer(d["source"], at(where, "source"), -1, index - 1, " (an earlier layer, or -1 for the input)")


def _check_input(d: dict[str, Any], where: str, label: str, prefix: str, shapes: list[tuple[int, ...]],
                 shape: tuple[int, ...], need: Need, output: bool) -> dict[str, Any]:
    """One input of a layer of `shape` (source and in_shape already checked): conv, channels, route, timing
    fields, and the tensors it needs. `where` names its fields (the layer itself in version 1); `label` names it in
    messages about the whole layer ("" in version 1)."""
    source, in_shape = d["source"], d["in_shape"]
    inp: dict[str, Any] = {"where": where, "label": label, "source": source, "in_shape": in_shape, "prefix": prefix}
    conv = d["conv"]
    if conv is not None:
        cw = at(where, "conv")
        obj(conv, cw, CONV_KEYS)
        conv = {"stride": int_pair(conv["stride"], at(cw, "stride"), 1),
                "padding": int_pair(conv["padding"], at(cw, "padding"), 0),
                "dilation": int_pair(conv["dilation"], at(cw, "dilation"), 1),
                "groups": integer(conv["groups"], at(cw, "groups"), 1)}
        if len(in_shape) != 3:
            raise Invalid(at(where, "in_shape"), f"a convolution reads (channels, height, width), got "
                                                 f"{fmt(in_shape)}")
        if len(shape) != 3:
            raise Invalid(cw, f"a convolution drives a layer of shape (channels, height, width), but the layer has "
                              f"shape {fmt(shape)}")
    inp["conv"] = conv
    channels = d["channels"]
    if channels is not None:
        if (not isinstance(channels, list) or len(channels) != 2
                or any(isinstance(v, bool) or not isinstance(v, int) for v in channels)
                or not 0 <= channels[0] < channels[1] <= shape[0]):
            raise Invalid(at(where, "channels"), f"expected null (all channels) or two integers [lo, hi] with "
                                                 f"0 ≤ lo < hi ≤ {shape[0]} (the layer's channels), "
                                                 f"got {show(channels)}")
        channels = (channels[0], channels[1])
    inp["channels"] = channels
    # route: max pooling of the source's spike times; it must give this input's in_shape
    route = []
    routed = shapes[source + 1]
    for k, p in enumerate(bounded_list(d["route"], at(where, "route"), schema.MAX_OPS, "pools")):
        pw = f"{where}.route[{k}]"
        obj(p, pw, POOL_KEYS)
        routed = pool_shape(p, pw, routed, dilated=True)
        sign = None
        if boolean(p["sign"], at(pw, "sign")):
            sign = f"{prefix}.route.{k}.sign"
            need.add(sign, at(pw, "sign"), f"sign:{routed[0]}")
        route.append({**p, "sign": sign})
    inp["route"] = route
    same(in_shape, routed, at(where, "in_shape"),
         "the shape of its source " + ("(the input)" if source < 0 else f"layers[{source}]")
         + (" after its route" if route else ""))
    inp["in_window"] = finite(d["in_window"], at(where, "in_window"))
    inp["delay"] = finite(d["delay"], at(where, "delay"))
    for key in ("weight", *(() if output else ("J",))):
        inp[key] = f"{prefix}.{key}"
        need.add(inp[key], at(where, key), key)
    inp.setdefault("J", None)
    return inp


def _check_readout(ops: list[Any], where: str, prefix: str, shape: tuple[int, ...], need: Need) -> list[dict]:
    """The ops after the readout's weighted sum: kinds the converter emits, chained shapes, bounded work."""
    out = []
    for k, op in enumerate(ops):
        ow = f"{where}.readout[{k}]"
        obj(op, ow, OP_KEYS)
        kind = choice(op["kind"], at(ow, "kind"), tuple(READOUT_PARAMS))
        in_shape = shape_of(op["in_shape"], at(ow, "in_shape"))
        out_shape = shape_of(op["out_shape"], at(ow, "out_shape"))
        same(in_shape, shape, at(ow, "in_shape"), "the output of the step before")
        pw = at(ow, "params")
        params = dict(obj(op["params"], pw, READOUT_PARAMS[kind]))
        if kind == "affine":
            for key in ("scale", "shift"):
                name = f"{prefix}.readout.{k}.{key}"
                ref = obj(params[key], at(pw, key), ("tensor",))
                if ref["tensor"] != name:
                    raise Invalid(at(pw, key), f"expected {{\"tensor\": {json.dumps(name)}}}, got {show(ref)}")
                need.add(name, at(pw, key), f"vector:{in_shape[0]}")
            expected = in_shape
        elif kind == "reshape":
            if numel(out_shape) != numel(in_shape):
                raise Invalid(at(ow, "out_shape"), f"expected {numel(in_shape)} elements like in_shape "
                                                   f"{fmt(in_shape)} (a reshape), got {fmt(out_shape)}")
            expected = out_shape
        elif kind == "identity":
            expected = in_shape
        elif kind == "adaptive_avgpool":
            expected = adaptive_shape(params, ow, in_shape)
            params["output_size"] = (tuple(params["output_size"]) if isinstance(params["output_size"], list)
                                     else params["output_size"])
        else:
            expected = pool_shape(params, pw, in_shape, dilated=kind == "maxpool")
            if kind == "avgpool":
                boolean(params["count_include_pad"], at(pw, "count_include_pad"))
                div = params["divisor_override"]
                if div is not None and (isinstance(div, bool) or not isinstance(div, int) or div == 0
                                        or abs(div) > schema.MAX_TENSOR_ELEMENTS):
                    raise Invalid(at(pw, "divisor_override"),
                                  f"expected null or a non-zero integer, got {show(div)}")
            for key in ("kernel_size", "stride", "padding", "dilation"):
                if key in params:
                    params[key] = tuple(params[key])
        same(out_shape, expected, at(ow, "out_shape"), f"what {kind} gives")
        if numel(out_shape) > max(numel(in_shape), schema.MAX_READOUT_ELEMENTS):
            raise Invalid(at(ow, "out_shape"), f"grows the readout to {numel(out_shape)} elements; at most "
                                               f"{as_limit(schema.MAX_READOUT_ELEMENTS)}")
        out.append({"name": printable(op["name"], at(ow, "name")), "node": printable(op["node"], at(ow, "node")),
                    "kind": kind, "target": printable(op["target"], at(ow, "target")), "in_shape": in_shape,
                    "out_shape": out_shape, "params": params})
        shape = out_shape
    return out


def _check_windows(layer: dict[str, Any], output: bool) -> None:
    w = layer["where"]
    if not output and not (layer["window"] > 0):
        raise Invalid(at(w, "window"), f"expected a number > 0 (t_max − t_min), got {layer['window']!r}")
    if output and layer["window"] != 0:
        raise Invalid(at(w, "window"), f"expected 0 (the readout has no window), got {layer['window']!r}")
    if not layer["max_activation"] >= 0:
        raise Invalid(at(w, "max_activation"), f"expected a number ≥ 0, got {layer['max_activation']!r}")
    if not layer["peak_drive"] >= layer["max_activation"]:
        raise Invalid(at(w, "peak_drive"), f"expected a number ≥ max_activation = {layer['max_activation']!r} "
                                           f"(P_n ≥ X_n), got {layer['peak_drive']!r}")


def _check_t_max(layer: dict[str, Any]) -> None:
    if layer["t_min"] + layer["window"] != layer["t_max"]:
        raise Invalid(at(layer["where"], "t_max"), f"expected t_min + window = {layer['t_min'] + layer['window']!r} "
                                                   f"(window = t_max − t_min), got {layer['t_max']!r}")


def _name(source: int) -> str:
    return "the input" if source < 0 else f"layers[{source}]"


def _check_timing(hidden: list[dict[str, Any]], output: dict[str, Any]) -> None:
    """The windows (MATH §4, §5): the input window is [0, 1]; a layer's window opens when the last of its sources
    closes, t_min = max t_max(source), and t_max = t_min + window with window > 0 (= clip for a clipped layer);
    input k reads its source's window, in_window_k = window(source), delayed by t_min − t_max(source); the
    neuron starts integrating at t_min − in_window, in_window the longest of its inputs'. Hidden layers are in
    time order. The readout is taken at its t_min (window 0)."""
    t_max, windows = [1.0], [1.0]  # per layer + 1 (index 0: the input), as `place_in_time` reads them
    for n, layer in enumerate([*hidden, output]):
        w, is_out = layer["where"], layer is output
        _check_windows(layer, is_out)
        sources = [inp["source"] for inp in layer["inputs"]]
        placed = place_in_time(sources, t_max, windows)  # where conversion puts this layer: the file must agree
        if layer["t_min"] != placed.t_min:
            last = max(sources, key=lambda s: t_max[s + 1])
            raise Invalid(at(w, "t_min"), f"expected {placed.t_min!r} (t_max of {_name(last)}, the last of its "
                                          f"sources to close), got {layer['t_min']!r}")
        if not is_out and n and layer["t_min"] < hidden[n - 1]["t_min"]:
            raise Invalid(at(w, "t_min"), f"expected ≥ {hidden[n - 1]['t_min']!r} (t_min of layers[{n - 1}]: the "
                                          f"layers are in time order), got {layer['t_min']!r}")
        _check_t_max(layer)
        for inp, in_window, delay in zip(layer["inputs"], placed.in_windows, placed.delays):
            s, iw = inp["source"], inp["where"]
            if inp["in_window"] != in_window:
                raise Invalid(at(iw, "in_window"), f"expected {in_window!r} (the window of {_name(s)}), "
                                                   f"got {inp['in_window']!r}")
            if inp["delay"] != delay:
                raise Invalid(at(iw, "delay"), f"expected {delay!r} (t_min − t_max of {_name(s)}), "
                                               f"got {inp['delay']!r}")
        if layer["in_window"] != placed.in_window:
            raise Invalid(at(w, "in_window"), f"expected {placed.in_window!r} (the longest in_window of its "
                                              f"inputs), got {layer['in_window']!r}")
        if layer["start"] != placed.start:
            raise Invalid(at(w, "start"), f"expected t_min − in_window = {placed.start!r}, got {layer['start']!r}")
        if layer["clip"] is not None and layer["clip"] != layer["window"]:
            raise Invalid(at(w, "clip"), f"expected {layer['window']!r} (a clipped layer saturates at the end of "
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
            raise Invalid(at(w, "t_min"), f"expected {end!r} ({before}), got {layer['t_min']!r}")
        _check_t_max(layer)
        start, window, t_max = (0.0, 1.0, 1.0) if s < 0 else (hidden[s]["t_min"], hidden[s]["window"],
                                                              hidden[s]["t_max"])
        if t_max != layer["t_min"]:
            raise Invalid(at(w, "source"), f"{_name(s)} ends at t = {t_max!r}, but this layer starts at t_min = "
                                           f"{layer['t_min']!r}: a layer reads the window just before its own")
        if layer["start"] != start:
            raise Invalid(at(w, "start"), f"expected {start!r} (t_min of its source), got {layer['start']!r}")
        if layer["in_window"] != window:
            raise Invalid(at(w, "in_window"), f"expected {window!r} (the window of its source), "
                                              f"got {layer['in_window']!r}")
        # in the version-2 layout start is t_min − in_window, which can differ from the source's t_min by rounding
        # ((a + b) − b ≠ a in floating point); take it, so the network saves again as a valid version-2 file
        layer["start"] = layer["t_min"] - layer["in_window"]
        end = layer["t_max"]


# ---------------------------------------------------------------------------------------------------------------
# pass 2, the tensors' headers (shapes and dtypes; nothing read yet)


def check_header(net: dict[str, Any], need: Need, header: dict[str, tuple[tuple[int, ...], str]]) -> None:
    total = 0
    for name, (shape, _) in header.items():
        n = numel(shape)
        if n > schema.MAX_TENSOR_ELEMENTS:
            raise Invalid(f"tensor {show(name)}", f"declares {n} elements; at most "
                                                  f"{as_limit(schema.MAX_TENSOR_ELEMENTS)}")
        total += n
    if total > schema.MAX_TOTAL_ELEMENTS:
        raise Invalid("tensors", f"declare {total} elements in all; at most {as_limit(schema.MAX_TOTAL_ELEMENTS)}")
    for name in header:
        if name not in need.tensors:
            raise Invalid(f"tensor {show(name)}", "not part of the network description (an unexpected tensor)")
    core, _ = DTYPES[net["dtype"]]
    for name, (where, rule) in need.tensors.items():
        if name not in header:
            raise Invalid(where, f"the tensor {json.dumps(name)} is missing from the file")
        shape, code = header[name]
        if rule in ("weight", "bias", "scale", "J", "theta", "slope", "channels"):
            if code != core:
                raise Invalid(where, f"expected dtype {core} (the network's {net['dtype']}), got {code}")
        elif code not in FLOAT_CODES:
            raise Invalid(where, f"expected a float dtype ({', '.join(FLOAT_CODES)}), got {code}")
        if 0 in shape:
            raise Invalid(where, f"expected a tensor with no empty dimension, got shape {fmt(shape)}")
        if rule.startswith(("sign:", "vector:")):
            same(shape, (int(rule.split(":")[1]),), where, "one value per channel")
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
        what = f"shape {fmt(shape)}" if not drives else f"the part {fmt(part)} of the layer it drives{drives}"
        same(weight, (numel(part), numel(in_shape)), at(w, "weight"),
             f"(neurons, inputs) for {what} and in_shape {fmt(in_shape)}")
    else:
        groups, out_ch = conv["groups"], part[0]
        if len(weight) != 4:
            raise Invalid(at(w, "weight"), f"expected 4 dimensions (out channels, in channels / groups, kernel "
                                           f"height, kernel width), got {fmt(weight)}")
        if in_shape[0] % groups or out_ch % groups:
            raise Invalid(at(w, "conv.groups"), f"expected a divisor of the in channels {in_shape[0]} and the out "
                                                f"channels {out_ch}{drives}, got {groups}")
        same(weight[:2], (out_ch, in_shape[0] // groups), at(w, "weight"),
             f"its first two dimensions: out channels{drives}, in channels / groups = {in_shape[0]} / {groups}")
        (sh, sw), (ph, pw), (dh, dw) = conv["stride"], conv["padding"], conv["dilation"]
        padded = in_shape[0] * (in_shape[1] + 2 * ph) * (in_shape[2] + 2 * pw)
        if padded > schema.MAX_TENSOR_ELEMENTS:
            raise Invalid(at(w, "conv.padding"), f"pads the input {fmt(in_shape)} to {padded} elements; at most "
                                                 f"{as_limit(schema.MAX_TENSOR_ELEMENTS)}")
        out = (conv_output(in_shape[1], weight[2], sh, ph, dh), conv_output(in_shape[2], weight[3], sw, pw, dw))
        if min(out) < 1:
            raise Invalid(at(w, "conv"), f"the {weight[2]}×{weight[3]} kernel (dilation {fmt((dh, dw))}) does not "
                                         f"fit the input {fmt(in_shape)} padded by {fmt((ph, pw))}")
        whose = f"{inp['label']}'s" if inp["label"] else "the"
        same(shape, (shape[0], *out), at(layer["where"], "shape"), f"what {whose} convolution gives")
    if inp["J"] is not None:
        same(header[inp["J"]][0], weight, at(w, "J"), "the weight's shape")


def _check_layer_tensors(layer: dict[str, Any], header: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """A layer's own tensors broadcast to its shape; the probe's affine has one value per channel."""
    w, shape, prefix = layer["where"], layer["shape"], layer["prefix"]
    for key in LAYER_TENSORS:
        name = f"{prefix}.{key}"
        if name in header:
            got = header[name][0]
            if len(got) != len(shape) or any(g not in (1, s) for g, s in zip(got, shape)):
                raise Invalid(at(w, key), f"expected a shape that broadcasts to {fmt(shape)} (as many dimensions, "
                                          f"each of size 1 or equal), got {fmt(got)}")
    if layer["probe"]["affine"]:
        for key in ("scale", "shift"):
            same(header[f"{prefix}.probe.{key}"][0], (shape[0],), f"{w}.probe.{key}",
                 "one value per channel of the layer")


# ---------------------------------------------------------------------------------------------------------------
# pass 3, the tensors as read


def check_tensors(need: Need, header: dict[str, tuple[tuple[int, ...], str]], tensors: dict[str, Tensor]) -> None:
    """What was read is what the header declared; the values are finite, and ±1 for the pooling signs."""
    for name, t in tensors.items():
        if tuple(t.shape) != header[name][0]:
            raise Invalid(f"tensor {show(name)}", f"read with shape {fmt(tuple(t.shape))}, declared "
                                                  f"{fmt(header[name][0])}")
    for name, (where, rule) in need.tensors.items():
        t = tensors[name]
        if not bool(torch.isfinite(t).all()):
            raise Invalid(where, f"the tensor {json.dumps(name)} contains NaN or inf values")
        if rule.startswith("sign:") and not bool(((t == 1) | (t == -1)).all()):
            raise Invalid(where, f"expected only +1 and -1 in the tensor {json.dumps(name)}")
