"""Save and load converted networks in a format that carries no code: one safetensors file whose header holds
the network's description as JSON. A loaded network gives the same spike times, bit for bit.

Format version 2 (written): each layer lists its `inputs` (`network.Synapses`): source, route, in_shape, conv,
channels, in_window and delay, with tensors ``{layer}.inputs.{k}.weight``, ``.J`` and ``.route.{j}.sign``; and
its `clip` (ReLU6), and optionally `absorbed` (provenance: [name, kind, description] of the original model's ops
the layer absorbed; files written before it was added lack it and load with none). Version 1 (read only): one
input per layer, its fields on the layer itself (``{layer}.weight``...); it loads as one-input layers (delay 0,
all channels, no clip).

A file is untrusted input. `load_network` checks all of it before it builds anything or runs anything, with
the checks in `untrusted.network_file` (the schema, the geometry, the timing against
`mapping.place_in_time`, the tensors) and the format's vocabulary and limits in `untrusted.network_schema`.
Every problem raises one `NetworkFileError` whose one-line message names the field, e.g.
``net.safetensors: layers[3].inputs[1].conv.stride: expected two integers ≥ 1, got [0, 1]``.

**The card.** A network may carry a `Card` beside its description (its own header entry, ``ttfs_card``, JSON): how
its inputs are preprocessed (`ttfs_core.data.Preprocess`: size, channels, mean, std), its class names and what it
was calibrated on, so that it reopens with them (`load_card`; the explorer fills its preprocessing form from it).
Readers that do not know the card ignore it, and files written without one load with none (`load_card` returns
None); the network's own description is unchanged by it. The card is checked field by field like the rest.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

from safetensors.torch import save_file
from torch import Tensor

from .capture import Op
from .data import Preprocess
from .network import SpikingNetwork
from .records import Layer, Probe, Synapses
from .sim.dynamics import Pool
from .untrusted.network_file import Need, check_description, check_header, check_tensors, parse_description
from .untrusted.network_schema import (
    ABSORBED,
    DTYPES,
    FLOATS,
    FORMAT,
    INPUT_TENSORS,
    LAYER_TENSORS,
    VERSION,
    Invalid,
    first_line,
    show,
)
from .untrusted.npz import MAX_CLASS_NAME, MAX_CLASSES
from .untrusted.tensors import ST_DTYPES, SafetensorsFile

# the format's name, version, field names and dtypes, and the limits on what a file may describe, are in
# untrusted/network_schema.py (FORMAT, VERSION, DTYPES, MAX_*), beside the checks that use them


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
    for name in INPUT_TENSORS:
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
    for name in LAYER_TENSORS:
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
        "probe": probe, "readout": readout, **{name: float(getattr(layer, name)) for name in FLOATS},
        "peak_drive": float(layer.peak_drive),
        ABSORBED: [list(entry) for entry in layer.absorbed],
    }


@dataclass(frozen=True)
class Card:
    """What a saved network says about its inputs beyond the network itself (module docstring): ``preprocess``
    (its shape is the network's input shape), ``classes`` (names of the readout's classes, in order; fewer than the
    classes is fine) and ``data`` (what it was calibrated on, as its user named it). Each may be None."""

    preprocess: Preprocess | None = None
    classes: tuple[str, ...] | None = None
    data: str | None = None

    def to_json(self) -> str:
        return json.dumps({"version": CARD_VERSION,
                           "preprocess": None if self.preprocess is None else self.preprocess.to_dict(),
                           "classes": None if self.classes is None else list(self.classes), "data": self.data})


CARD_KEY = "ttfs_card"  # the header entry that holds the card
CARD_VERSION = 1
CARD_KEYS = ("version", "preprocess", "classes", "data")
PREPROCESS_KEYS = ("channels", "height", "width", "mean", "std", "input_range", "resize")
MAX_CARD_CHARS = 1 << 20


def save_network(snn: SpikingNetwork, path: str | os.PathLike, card: Card | None = None) -> None:
    """Write `snn` to `path` (safetensors; the description is JSON in the header, no code, no pickle), with its
    `card` if given (its preprocessing must take the network's input shape)."""
    if card is not None and card.preprocess is not None and tuple(card.preprocess.shape) != tuple(snn.input_shape):
        raise ValueError(f"the card's preprocessing gives inputs of shape {card.preprocess.shape}, but the network "
                         f"takes {tuple(snn.input_shape)}")
    snn = snn.to("cpu")
    tensors: dict[str, Tensor] = {}
    desc = {
        "format": FORMAT, "version": VERSION,
        "layers": [_layer_to_json(layer, f"layers.{i}", tensors) for i, layer in enumerate(snn.layers)],
        "output": _layer_to_json(snn.output, "output", tensors),
        "input_shape": list(snn.input_shape), "input_range": list(snn.input_range), "neuron": snn.neuron.name,
        "margin": snn.margin, "rescale": snn.rescale.name, "alpha": snn.alpha, "dtype": str(snn.dtype).split(".")[-1],
    }
    metadata = {"ttfs": json.dumps(desc)}
    if card is not None:
        metadata[CARD_KEY] = card.to_json()
    save_file(tensors, os.fspath(path), metadata=metadata)


# ---------------------------------------------------------------------------------------------------------------
# loading: building (after every check has passed)


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
        **{name: d[name] for name in FLOATS}, peak_drive=d["peak_drive"], absorbed=d["absorbed"],
    )


def load_network(path: str | os.PathLike) -> SpikingNetwork:
    """Read a network written by `save_network`. Raises NetworkFileError naming what is wrong (module docstring):
    nothing from the file is built or run before all of it has been checked."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "not a regular file" if os.path.exists(path) else "no such file"
        raise NetworkFileError(f"{path}: {what}")
    try:
        return _load(path)
    except Invalid as exc:
        raise NetworkFileError(f"{path}: {exc.where}: {exc.problem}") from None


def _load(path: str) -> SpikingNetwork:
    try:  # the project's one safetensors reader: the header is checked before anything is read
        handle = SafetensorsFile(path, "file", set(ST_DTYPES))
    except Exception as exc:  # noqa: BLE001 - any failure on a hostile file (SafetensorsError, OSError)
        raise NetworkFileError(f"{path}: not a safetensors file ({first_line(exc)})") from None
    with handle as f:
        meta, header = f.header.metadata, f.header.shapes()
        if "ttfs" not in meta:
            raise NetworkFileError(f"{path}: a safetensors file, but not a converted network (no 'ttfs' header)")
        desc = parse_description(meta["ttfs"])
        need = Need()
        net = check_description(desc, need)  # pass 1
        check_header(net, need, header)  # pass 2
        try:
            tensors = {name: f.read(name) for name in header}
        except Exception as exc:  # noqa: BLE001
            raise NetworkFileError(f"{path}: the tensors cannot be read ({first_line(exc)})") from None
    check_tensors(need, header, tensors)  # pass 3
    layers = [_build_layer(d, tensors) for d in net["layers"]]
    output = _build_layer(net["output"], tensors)
    return SpikingNetwork(layers, output, net["input_shape"], net["input_range"], net["neuron"], net["margin"],
                          net["rescale"], net["alpha"], DTYPES[net["dtype"]][1])


# ---------------------------------------------------------------------------------------------------------------
# the card


def load_card(path: str | os.PathLike) -> Card | None:
    """The card of a network saved by `save_network` (None when it was saved without one, as every file written
    before cards were). Reads and checks the header only, not the network (`load_network` checks that). Raises
    NetworkFileError naming the field, e.g. ``net.safetensors: card.preprocess.std[0]: expected a finite number
    > 0, got 0``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "not a regular file" if os.path.exists(path) else "no such file"
        raise NetworkFileError(f"{path}: {what}")
    try:
        with SafetensorsFile(path, "file", set(ST_DTYPES)) as f:
            meta = f.header.metadata
    except Exception as exc:  # noqa: BLE001 - any failure on a hostile file (SafetensorsError, OSError)
        raise NetworkFileError(f"{path}: not a safetensors file ({first_line(exc)})") from None
    if "ttfs" not in meta:
        raise NetworkFileError(f"{path}: a safetensors file, but not a converted network (no 'ttfs' header)")
    if CARD_KEY not in meta:
        return None
    try:
        desc = parse_description(meta["ttfs"])
        shape = desc.get("input_shape") if isinstance(desc, dict) else None
        return _check_card(meta[CARD_KEY], shape)
    except Invalid as exc:
        raise NetworkFileError(f"{path}: {exc.where}: {exc.problem}") from None


def _check_card(text: Any, input_shape: Any) -> Card:
    if not isinstance(text, str) or len(text) > MAX_CARD_CHARS:
        raise Invalid("card", f"expected JSON of at most {MAX_CARD_CHARS:,} characters")
    try:
        card = json.loads(text, parse_constant=lambda c: math.nan)
    except (ValueError, RecursionError):
        raise Invalid("card", "not valid JSON") from None
    if not isinstance(card, dict) or set(card) - set(CARD_KEYS) or card.get("version") != CARD_VERSION:
        raise Invalid("card", f"expected an object with version {CARD_VERSION} and the keys {', '.join(CARD_KEYS)}, "
                              f"got {show(card)}")
    pre = None if card.get("preprocess") is None else _check_preprocess(card["preprocess"], input_shape)
    classes = card.get("classes")
    if classes is not None:
        if not isinstance(classes, list) or len(classes) > MAX_CLASSES:
            raise Invalid("card.classes", f"expected a list of at most {MAX_CLASSES:,} names, got {show(classes)}")
        for k, name in enumerate(classes):
            if not isinstance(name, str) or not name.isprintable() or len(name) > MAX_CLASS_NAME:
                raise Invalid(f"card.classes[{k}]", f"expected a printable name of at most {MAX_CLASS_NAME} "
                                                    f"characters, got {show(name)}")
        classes = tuple(classes)
    data = card.get("data")
    if data is not None and (not isinstance(data, str) or not data.isprintable() or len(data) > 1000):
        raise Invalid("card.data", f"expected a printable string of at most 1000 characters, got {show(data)}")
    return Card(pre, classes, data)


def _check_preprocess(d: Any, input_shape: Any) -> Preprocess:
    where = "card.preprocess"
    if not isinstance(d, dict) or set(d) - set(PREPROCESS_KEYS) or not {"channels", "height", "width"} <= set(d):
        raise Invalid(where, f"expected an object with channels, height, width (and mean, std), got {show(d)}")
    for key in ("channels", "height", "width"):
        if isinstance(d[key], bool) or not isinstance(d[key], int) or not 1 <= d[key] <= 1 << 16:
            raise Invalid(f"{where}.{key}", f"expected an integer in [1, 65536], got {show(d[key])}")
    for key in ("mean", "std"):
        values = d.get(key, [0.0] if key == "mean" else [1.0])
        if not isinstance(values, list) or len(values) not in (1, 3):
            raise Invalid(f"{where}.{key}", f"expected a list of 1 or 3 numbers, got {show(values)}")
        for k, v in enumerate(values):
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or (key == "std" and v <= 0):
                raise Invalid(f"{where}.{key}[{k}]", f"expected a finite number{' > 0' if key == 'std' else ''}, "
                                                     f"got {show(v)}")
    text = d.get("input_range", Preprocess.input_range)
    if not isinstance(text, str) or not text.isprintable() or len(text) > 200:
        raise Invalid(f"{where}.input_range", f"expected a short printable string, got {show(text)}")
    if not isinstance(d.get("resize", True), bool):
        raise Invalid(f"{where}.resize", f"expected true or false, got {show(d.get('resize'))}")
    try:
        pre = Preprocess(d["channels"], d["height"], d["width"], tuple(d.get("mean", (0.0,))),
                         tuple(d.get("std", (1.0,))), text, d.get("resize", True))
    except ValueError as exc:
        raise Invalid(where, first_line(exc)) from None
    if isinstance(input_shape, list) and list(pre.shape) != input_shape:
        raise Invalid(where, f"gives inputs of shape {'×'.join(map(str, pre.shape))}, but the network takes "
                             f"{show(input_shape)}")
    return pre
