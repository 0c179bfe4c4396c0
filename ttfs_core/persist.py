"""Save and load converted networks in a format that carries no code: one safetensors file whose header holds
the network's description as JSON. A loaded network gives the same spike times, bit for bit."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .capture import Op
from .network import Layer, Probe, SpikingNetwork
from .simulate import Pool

FORMAT = "ttfs-network"
VERSION = 1
_TENSORS = ("weight", "bias", "scale", "J", "theta", "slope")
_FLOATS = ("max_activation", "start", "t_min", "t_max", "in_window", "window")


class NetworkFileError(ValueError):
    """A saved network cannot be read: names the problem."""


def _split(prefix: str, params: dict[str, Any], tensors: dict[str, Tensor]) -> dict[str, Any]:
    plain = {}
    for key, value in params.items():
        if isinstance(value, Tensor):
            tensors[f"{prefix}.{key}"] = value.contiguous()
            plain[key] = {"tensor": f"{prefix}.{key}"}
        else:
            plain[key] = list(value) if isinstance(value, tuple) else value
    return plain


def _join(plain: dict[str, Any], tensors: dict[str, Tensor]) -> dict[str, Any]:
    out = {}
    for key, value in plain.items():
        if isinstance(value, dict) and "tensor" in value:
            out[key] = tensors[value["tensor"]]
        else:
            out[key] = tuple(value) if isinstance(value, list) else value
    return out


def _layer_to_json(layer: Layer, prefix: str, tensors: dict[str, Tensor]) -> dict[str, Any]:
    for name in _TENSORS:
        value = getattr(layer, name)
        if value is not None:
            tensors[f"{prefix}.{name}"] = value.contiguous()
    route = []
    for k, pool in enumerate(layer.route):
        if pool.sign is not None:
            tensors[f"{prefix}.route.{k}.sign"] = pool.sign.contiguous()
        route.append({"kernel_size": list(pool.kernel_size), "stride": list(pool.stride), "padding": list(pool.padding),
                      "dilation": list(pool.dilation), "ceil_mode": pool.ceil_mode, "sign": pool.sign is not None})
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
        "name": layer.name, "op": layer.op, "source": layer.source, "in_shape": list(layer.in_shape),
        "shape": list(layer.shape), "conv": None if layer.conv is None else {k: list(v) if isinstance(v, tuple) else v
                                                                              for k, v in layer.conv.items()},
        "is_output": layer.is_output, "route": route, "probe": probe, "readout": readout,
        **{name: getattr(layer, name) for name in _FLOATS},
    }


def _layer_from_json(d: dict[str, Any], prefix: str, tensors: dict[str, Tensor]) -> Layer:
    route = tuple(
        Pool(tuple(p["kernel_size"]), tuple(p["stride"]), tuple(p["padding"]), tuple(p["dilation"]), p["ceil_mode"],
             tensors[f"{prefix}.route.{k}.sign"] if p["sign"] else None)
        for k, p in enumerate(d["route"])
    )
    pr = d["probe"]
    probe = Probe(pr["node"], tensors.get(f"{prefix}.probe.scale"), tensors.get(f"{prefix}.probe.shift"), pr["relu"])
    readout = tuple(
        Op(o["name"], o["node"], o["kind"], o["target"], tuple(o["in_shape"]), tuple(o["out_shape"]),
           _join(o["params"], tensors))
        for o in d["readout"]
    )
    conv = None if d["conv"] is None else {k: tuple(v) if isinstance(v, list) else v for k, v in d["conv"].items()}
    layer = Layer(
        name=d["name"], op=d["op"], source=int(d["source"]), route=route, in_shape=tuple(d["in_shape"]),
        shape=tuple(d["shape"]), weight=tensors[f"{prefix}.weight"], bias=tensors[f"{prefix}.bias"], conv=conv,
        probe=probe, scale=tensors[f"{prefix}.scale"], is_output=bool(d["is_output"]), readout=readout,
        **{name: float(d[name]) for name in _FLOATS},
    )
    for name in ("J", "theta", "slope"):
        setattr(layer, name, tensors.get(f"{prefix}.{name}"))
    return layer


def save_network(snn: SpikingNetwork, path: str | os.PathLike) -> None:
    """Write `snn` to `path` (safetensors; the description is JSON in the header, no code, no pickle)."""
    tensors: dict[str, Tensor] = {}
    desc = {
        "format": FORMAT, "version": VERSION,
        "layers": [_layer_to_json(layer, f"layers.{i}", tensors) for i, layer in enumerate(snn.layers)],
        "output": _layer_to_json(snn.output, "output", tensors),
        "input_shape": list(snn.input_shape), "input_range": list(snn.input_range), "neuron": snn.neuron,
        "margin": snn.margin, "rescale": snn.rescale, "alpha": snn.alpha, "dtype": str(snn.dtype).split(".")[-1],
    }
    save_file(tensors, os.fspath(path), metadata={"ttfs": json.dumps(desc)})


def load_network(path: str | os.PathLike) -> SpikingNetwork:
    """Read a network written by `save_network`. Raises NetworkFileError naming what is wrong."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise NetworkFileError(f"{path}: no such file")
    try:
        tensors = load_file(path)
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise NetworkFileError(f"{path}: not a safetensors file ({str(exc).splitlines()[0]})") from None
    if "ttfs" not in meta:
        raise NetworkFileError(f"{path}: a safetensors file, but not a converted network (no 'ttfs' header)")
    try:
        desc = json.loads(meta["ttfs"])
        if desc.get("format") != FORMAT or int(desc.get("version", -1)) > VERSION:
            raise NetworkFileError(f"{path}: unsupported network format {desc.get('format')!r} v{desc.get('version')}")
        layers = [_layer_from_json(d, f"layers.{i}", tensors) for i, d in enumerate(desc["layers"])]
        output = _layer_from_json(desc["output"], "output", tensors)
        dtype = getattr(torch, desc["dtype"])
        if not isinstance(dtype, torch.dtype):
            raise NetworkFileError(f"{path}: unknown dtype {desc['dtype']!r}")
        snn = SpikingNetwork(layers, output, tuple(desc["input_shape"]), tuple(desc["input_range"]), desc["neuron"],
                             float(desc["margin"]), desc["rescale"], float(desc["alpha"]), dtype)
        return snn
    except NetworkFileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, json.JSONDecodeError) as exc:
        raise NetworkFileError(f"{path}: the network description is damaged ({type(exc).__name__}: {exc})") from None

