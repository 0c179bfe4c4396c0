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
"""

from __future__ import annotations

import json
import os
from typing import Any

from safetensors.torch import save_file
from torch import Tensor

from .capture import Op
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
)
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


def save_network(snn: SpikingNetwork, path: str | os.PathLike) -> None:
    """Write `snn` to `path` (safetensors; the description is JSON in the header, no code, no pickle)."""
    snn = snn.to("cpu")
    tensors: dict[str, Tensor] = {}
    desc = {
        "format": FORMAT, "version": VERSION,
        "layers": [_layer_to_json(layer, f"layers.{i}", tensors) for i, layer in enumerate(snn.layers)],
        "output": _layer_to_json(snn.output, "output", tensors),
        "input_shape": list(snn.input_shape), "input_range": list(snn.input_range), "neuron": snn.neuron.name,
        "margin": snn.margin, "rescale": snn.rescale.name, "alpha": snn.alpha, "dtype": str(snn.dtype).split(".")[-1],
    }
    save_file(tensors, os.fspath(path), metadata={"ttfs": json.dumps(desc)})


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
