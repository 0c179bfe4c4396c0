"""Crafted hostile network files for tests/test_persist.py and tests/test_hostile.py.

Each attack starts from a real saved network (`BASES`: a chain, a readout of every op kind, a branching network
of several-input layers, and the chain in the version-1 layout), edits its JSON description and/or its tensors,
and rewrites the file with `safetensors.torch.save_file`; every crafted file stays small (under 1 MiB, most tens
of kB). The loader must answer each with one `NetworkFileError` whose message names `Attack.field`.
"""

from __future__ import annotations

import copy
import json
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

import ttfs_core

from . import nets

INF, NAN = math.inf, math.nan


def readout_model() -> nn.Module:
    """A conv net whose readout (after the last conv) holds every op kind the converter puts there: max pooling,
    affine (a BatchNorm after the pooling), average pooling, adaptive average pooling, reshape. The BatchNorm right
    after the last conv is folded into the readout's weights."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.MaxPool2d(2), nn.BatchNorm2d(6), nn.AvgPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    return nets.randomise_bn(model).double().eval()


class BranchNet(nn.Module):
    """A residual add, a channel concatenation of a ReLU6 branch and a 1×1 projection, then a dense readout."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.p = nn.Conv2d(8, 4, 1)
        self.c3 = nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 5)
        self.r6 = nn.ReLU6()

    def forward(self, x):
        a = torch.relu(self.c1(x))
        b = torch.relu(self.c2(a) + a)
        c = torch.relu(torch.cat([self.r6(self.c3(b) * 4), self.p(b)], 1))
        return self.fc(nn.functional.max_pool2d(c, 2).flatten(1))


def branch_model() -> nn.Module:
    torch.manual_seed(0)
    return BranchNet().double().eval()


def branch_inputs(n: int, seed: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def base_network(name: str, neuron: str = "alpha") -> ttfs_core.SpikingNetwork:
    """`conv` (and `conv_v1`, the same saved in format version 1): tests.nets' FunctionalNet (strided conv, a
    pooled route with min-pooling signs, an affine probe, dense layers). `readout`: `readout_model`. `branch`:
    `BranchNet` (layers of several inputs, a sliced concatenation, a delayed input, a clipped layer):

        layers[0] c1                 reads the input
        layers[1] relu_1 (add)       inputs[0] c2 on layers[0], inputs[1] the identity on layers[0]
        layers[2] c3 (ReLU6)         clip = window
        layers[3] relu_2 (cat)       inputs[0] layers[2] → channels [0, 4), inputs[1] layers[1] → [4, 8), delayed
        output    fc                 pooled route on layers[3]
    """
    if name in ("conv", "conv_v1"):
        model, x = nets.build("functional"), nets.inputs("functional", 64)
        return ttfs_core.convert(model, x, input_range=(-2.0, 3.0), neuron=neuron)
    if name == "branch":
        return ttfs_core.convert(branch_model(), branch_inputs(32), input_range=(0.0, 1.0), neuron=neuron)
    g = torch.Generator().manual_seed(1)
    return ttfs_core.convert(readout_model(), torch.rand(32, 2, 16, 16, generator=g, dtype=torch.float64),
                             neuron=neuron)


BASES = ("conv", "readout", "branch", "conv_v1")


def save_base(name: str, path: str | Path) -> None:
    """Save base network `name` (`conv_v1` in the version-1 layout)."""
    if name == "conv_v1":
        write_v1(base_network(name), path)
    else:
        ttfs_core.save(base_network(name), path)


def write_v1(snn: ttfs_core.SpikingNetwork, path: str | Path) -> None:
    """A network of one-input layers (a chain) written in format version 1, as ttfs_core wrote it before layers
    could read several inputs: each layer's input (source, route, in_shape, conv, weight, J) on the layer itself."""
    tensors: dict[str, torch.Tensor] = {}

    def layer_json(layer, prefix: str) -> dict:
        (syn,) = layer.inputs
        assert syn.channels is None and syn.delay == 0 and syn.in_window == layer.in_window and layer.clip is None
        own = {"weight": syn.weight, "bias": layer.bias, "scale": layer.scale, "J": syn.J, "theta": layer.theta,
               "slope": layer.slope}
        tensors.update({f"{prefix}.{k}": v for k, v in own.items() if v is not None})
        route = []
        for k, pool in enumerate(syn.route):
            if pool.sign is not None:
                tensors[f"{prefix}.route.{k}.sign"] = pool.sign
            route.append({"kernel_size": list(pool.kernel_size), "stride": list(pool.stride),
                          "padding": list(pool.padding), "dilation": list(pool.dilation),
                          "ceil_mode": pool.ceil_mode, "sign": pool.sign is not None})
        if layer.probe.scale is not None:
            tensors[f"{prefix}.probe.scale"], tensors[f"{prefix}.probe.shift"] = layer.probe.scale, layer.probe.shift
        readout = []
        for k, op in enumerate(layer.readout):
            params = {}
            for key, value in op.params.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{prefix}.readout.{k}.{key}"] = value
                    params[key] = {"tensor": f"{prefix}.readout.{k}.{key}"}
                else:
                    params[key] = list(value) if isinstance(value, tuple) else value
            readout.append({"name": op.name, "node": op.node, "kind": op.kind, "target": op.target,
                            "in_shape": list(op.in_shape), "out_shape": list(op.out_shape), "params": params})
        return {
            "name": layer.name, "op": layer.op, "source": syn.source, "in_shape": list(syn.in_shape),
            "shape": list(layer.shape),
            "conv": None if syn.conv is None else {k: list(v) if isinstance(v, tuple) else v
                                                   for k, v in syn.conv.items()},
            "is_output": layer.is_output, "route": route,
            "probe": {"node": layer.probe.node, "relu": layer.probe.relu, "affine": layer.probe.scale is not None},
            "readout": readout,
            **{k: getattr(layer, k) for k in ("max_activation", "t_min", "t_max", "in_window", "window")},
            "start": 0.0 if syn.source < 0 else snn.layers[syn.source].t_min,  # version 1: its source's t_min
        }

    desc = {
        "format": "ttfs-network", "version": 1,
        "layers": [layer_json(layer, f"layers.{i}") for i, layer in enumerate(snn.layers)],
        "output": layer_json(snn.output, "output"),
        "input_shape": list(snn.input_shape), "input_range": list(snn.input_range), "neuron": snn.neuron.name,
        "margin": snn.margin, "rescale": snn.rescale.name, "alpha": snn.alpha, "dtype": str(snn.dtype).split(".")[-1],
    }
    write(path, desc, tensors)


def read(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The description (parsed JSON) and the tensors of a saved network."""
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["ttfs"]), {k: f.get_tensor(k) for k in f.keys()}


def write(path: str | Path, desc: dict | str, tensors: dict[str, torch.Tensor]) -> None:
    """A network file with this description (a dict, dumped with Infinity/NaN literals allowed, or raw text)."""
    text = desc if isinstance(desc, str) else json.dumps(desc)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"ttfs": text})


def write_raw(path: str | Path, header: dict, data: bytes) -> None:
    """A safetensors file written by hand: 8-byte header length, JSON header, data (may lie about its tensors)."""
    head = json.dumps(header).encode()
    Path(path).write_bytes(struct.pack("<Q", len(head)) + head + data)


@dataclass(frozen=True)
class Attack:
    name: str
    base: str  # one of BASES
    field: str  # the message must contain this (the field path)
    edit: Callable[[dict, dict], str | None]  # edits (description, tensors) in place; may return raw JSON text


def craft(attack: Attack, base_file: str | Path, out: str | Path) -> None:
    desc, tensors = read(base_file)
    desc = copy.deepcopy(desc)
    text = attack.edit(desc, tensors)
    write(out, desc if text is None else text, tensors)


# --- edit helpers ---------------------------------------------------------------------------------------------
def _set(path: str, value):
    """An edit that sets one field, given as a dotted path with list indices: 'layers.1.conv.stride'."""
    def edit(d: dict, t: dict) -> None:
        *head, last = path.split(".")
        for key in head:
            d = d[int(key)] if isinstance(d, list) else d[key]
        if isinstance(d, list):
            d[int(last)] = value
        else:
            d[last] = value
    return edit


def _delete(path: str):
    def edit(d: dict, t: dict) -> None:
        *head, last = path.split(".")
        for key in head:
            d = d[int(key)] if isinstance(d, list) else d[key]
        del d[last]
    return edit


def _text(old: str, new: str, count: int = 1):
    """An edit of the raw JSON text (for what json.dumps cannot write: duplicate keys, huge literals)."""
    def edit(d: dict, t: dict) -> str:
        text = json.dumps(d)
        assert old in text, old
        return text.replace(old, new, count)
    return edit


def _text_re(pattern: str, new: str):
    """Like `_text`, for the first match of a regular expression."""
    def edit(d: dict, t: dict) -> str:
        text, n = re.subn(pattern, new, json.dumps(d), count=1)
        assert n == 1, pattern
        return text
    return edit


def _tensor(name: str, fn: Callable[[torch.Tensor], torch.Tensor | None]):
    def edit(d: dict, t: dict) -> None:
        value = fn(t[name])
        if value is None:
            del t[name]
        else:
            t[name] = value
    return edit


def _both(*edits):
    def edit(d: dict, t: dict):
        out = None
        for e in edits:
            out = e(d, t) or out
        return out
    return edit


def _with_nan(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] = NAN
    return t


def _with_inf(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[-1] = INF
    return t


def _shift_window(layer: int, by: float):
    """Change a window and its t_max together (t_max = t_min + window stays true for that layer)."""
    def edit(d: dict, t: dict) -> None:
        lay = d["layers"][layer]
        lay["window"] += by
        lay["t_max"] = lay["t_min"] + lay["window"]
    return edit


def _zero_window(layer: int):
    def edit(d: dict, t: dict) -> None:
        lay = d["layers"][layer]
        lay["window"], lay["t_max"] = 0.0, lay["t_min"]
    return edit


def _wide_readout(d: dict, t: dict) -> None:
    """The adaptive pooling of the readout made 1e8 wide, consistently (output_size, out_shape, the reshape)."""
    ops = d["output"]["readout"]
    ops[3]["params"]["output_size"] = [1, 100_000_000]
    ops[3]["out_shape"] = [6, 1, 100_000_000]
    ops[4]["in_shape"] = [6, 1, 100_000_000]
    ops[4]["out_shape"] = [600_000_000]


def _huge_upsample(d: dict, t: dict) -> None:
    """Adaptive pooling from 2×2 up to 4096×4096 (each axis small, the result 10^8 elements)."""
    ops = d["output"]["readout"]
    ops[3]["params"]["output_size"] = [4096, 4096]
    ops[3]["out_shape"] = [6, 4096, 4096]


def _readout_in_hidden(d: dict, t: dict) -> None:
    d["layers"][0]["readout"] = [copy.deepcopy(d["output"]["readout"][0])]


def _route_on_dense(d: dict, t: dict) -> None:
    d["output"]["inputs"][0]["route"] = [copy.deepcopy(d["layers"][2]["inputs"][0]["route"][0])]


def _deep(d: dict, t: dict) -> str:
    return '{"format": "ttfs-network", "version": 1, "layers": ' + "[" * 100_000 + "]" * 100_000 + "}"


def _shorter_in_window(d: dict, t: dict) -> None:
    """layers[3] integrating over the shorter of its inputs' windows (start moved with it)."""
    lay = d["layers"][3]
    lay["in_window"] = min(inp["in_window"] for inp in lay["inputs"])
    lay["start"] = lay["t_min"] - lay["in_window"]


def _opens_after_first_source(d: dict, t: dict) -> None:
    """layers[3] opening when its earlier source closes (not the last), t_max and delays moved with it."""
    lay, src = d["layers"][3], d["layers"][1]
    lay["t_min"] = src["t_max"]
    lay["t_max"] = lay["t_min"] + lay["window"]
    lay["start"] = lay["t_min"] - lay["in_window"]
    for inp in lay["inputs"]:
        inp["delay"] = lay["t_min"] - d["layers"][inp["source"]]["t_max"]


def _longer_clip(d: dict, t: dict) -> None:
    """The ReLU6 layer's clip, window and t_max all doubled consistently: its reader now opens too early."""
    lay = d["layers"][2]
    lay["clip"] = lay["window"] = 2 * lay["window"]
    lay["t_max"] = lay["t_min"] + lay["window"]


def _pool_second_input(d: dict, t: dict) -> None:
    d["layers"][1]["inputs"][1]["route"] = [{"kernel_size": [2, 2], "stride": [2, 2], "padding": [0, 0],
                                             "dilation": [1, 1], "ceil_mode": False, "sign": False}]


ATTACKS: list[Attack] = [
    # --- literals the JSON standard does not have, duplicate keys, wrong JSON ----------------------------------
    Attack("version_infinity", "conv", "version", _set("version", INF)),
    Attack("version_nan", "conv", "version", _set("version", NAN)),
    Attack("version_future", "conv", "version", _set("version", 3)),
    Attack("version_string", "conv", "version", _set("version", "1")),
    Attack("version_true", "conv", "version", _set("version", True)),
    Attack("format_other", "conv", "format", _set("format", "pickle")),
    Attack("source_infinity", "conv", "layers[1].inputs[0].source", _set("layers.1.inputs.0.source", INF)),
    Attack("source_minus_infinity", "conv", "layers[1].inputs[0].source", _set("layers.1.inputs.0.source", -INF)),
    Attack("source_overflowing_literal", "conv", "layers[1].inputs[0].source", _text('"source": 0', '"source": 1e999')),
    Attack("margin_overflowing_literal", "conv", "margin", _text('"margin": 0.5', '"margin": -1e400')),
    Attack("integer_of_5000_digits", "conv", "description", _text('"source": 0', '"source": ' + "9" * 5000)),
    Attack("duplicate_top_key", "conv", '"version" appears twice', _text('"version": 2', '"version": 2, "version": 2')),
    Attack("duplicate_layer_key", "conv", "layers[0]",
           _text('"is_output": false', '"is_output": false, "is_output": true')),
    Attack("not_json", "conv", "description", lambda d, t: "{'format': 'ttfs-network'}"),
    Attack("json_list", "conv", "description", lambda d, t: "[1, 2, 3]"),
    Attack("deep_nesting", "conv", "description", _deep),
    # --- unexpected and missing keys and tensors ---------------------------------------------------------------
    Attack("unexpected_top_key", "conv", "unexpected key", _set("exec", "import os")),
    Attack("unexpected_layer_key", "conv", "layers[0]: unexpected key", _set("layers.0.code", 1)),
    Attack("unexpected_conv_key", "conv", "layers[0].inputs[0].conv: unexpected key",
           _set("layers.0.inputs.0.conv.padding_mode", "x")),
    Attack("missing_t_min", "conv", "layers[1].t_min: missing", _delete("layers.1.t_min")),
    Attack("missing_output", "conv", "output: missing", _delete("output")),
    Attack("missing_probe_key", "conv", "layers[2].probe.affine: missing", _delete("layers.2.probe.affine")),
    Attack("missing_tensor", "conv", "layers.0.inputs.0.J", _tensor("layers.0.inputs.0.J", lambda v: None)),
    Attack("missing_sign_tensor", "conv", "layers[2].inputs[0].route[0].sign",
           _tensor("layers.2.inputs.0.route.0.sign", lambda v: None)),
    Attack("missing_probe_tensor", "conv", "layers[1].probe.shift", _tensor("layers.1.probe.shift", lambda v: None)),
    Attack("unexpected_tensor", "conv", '"payload"',
           lambda d, t: t.__setitem__("payload", torch.zeros(4, dtype=torch.float64))),
    Attack("missing_readout_tensor", "readout", "output.readout[1].params.shift",
           _tensor("output.readout.1.shift", lambda v: None)),
    # --- wrong types anywhere ------------------------------------------------------------------------------------
    Attack("shape_string", "conv", "layers[0].inputs[0].in_shape", _set("layers.0.inputs.0.in_shape", "2x16x16")),
    Attack("input_shape_string", "conv", "input_shape", _set("input_shape", "2, 16, 16")),
    Attack("shape_floats", "conv", "layers[0].shape", _set("layers.0.shape", [6.0, 8.0, 8.0])),
    Attack("is_output_string", "conv", "layers[0].is_output", _set("layers.0.is_output", "no")),
    Attack("is_output_wrong", "conv", "output.is_output", _set("output.is_output", False)),
    Attack("neuron_unknown", "conv", "neuron", _set("neuron", "lif")),
    Attack("rescale_number", "conv", "rescale", _set("rescale", 1)),
    Attack("dtype_not_float", "conv", "dtype", _set("dtype", "int64")),
    Attack("dtype_attribute", "conv", "dtype", _set("dtype", "Tensor")),
    Attack("groups_float", "conv", "layers[0].inputs[0].conv.groups", _set("layers.0.inputs.0.conv.groups", 1.5)),
    Attack("groups_bool", "conv", "layers[0].inputs[0].conv.groups", _set("layers.0.inputs.0.conv.groups", True)),
    Attack("conv_list", "conv", "layers[0].inputs[0].conv", _set("layers.0.inputs.0.conv", [1, 2])),
    Attack("route_object", "conv", "layers[2].inputs[0].route", _set("layers.2.inputs.0.route", {})),
    Attack("readout_string", "readout", "output.readout", _set("output.readout", "x")),
    Attack("probe_relu_int", "conv", "layers[0].probe.relu", _set("layers.0.probe.relu", 1)),
    Attack("probe_node_list", "conv", "layers[0].probe.node", _set("layers.0.probe.node", ["a"])),
    Attack("name_number", "conv", "layers[0].name", _set("layers.0.name", 5)),
    Attack("name_huge", "conv", "layers[0].name", _set("layers.0.name", "x" * 5000)),
    Attack("name_two_lines", "conv", "layers[1].name", _set("layers.1.name", "conv\nTraceback")),
    Attack("node_lone_surrogate", "readout", "output.readout[2].node", _set("output.readout.2.node", "\ud800")),
    Attack("layers_object", "conv", "layers", _set("layers", {})),
    Attack("input_range_short", "conv", "input_range", _set("input_range", [0.0])),
    Attack("input_range_reversed", "conv", "input_range", _set("input_range", [3.0, -2.0])),
    Attack("input_range_nan", "conv", "input_range[1]", _set("input_range", [0.0, NAN])),
    Attack("margin_too_small", "conv", "margin", _set("margin", -1)),
    Attack("alpha_negative", "conv", "alpha", _set("alpha", -1.0)),
    Attack("alpha_string", "conv", "alpha", _set("alpha", "1")),
    # --- readout ops: kinds, parameters, unbounded work ----------------------------------------------------------
    Attack("readout_pool_1e8_wide", "readout", "output.readout[3].params.output_size", _wide_readout),
    Attack("readout_out_shape_1e8_wide", "readout", "output.readout[3].out_shape",
           _set("output.readout.3.out_shape", [6, 1, 100_000_000])),
    Attack("readout_upsampled_to_1e8", "readout", "output.readout[3].out_shape", _huge_upsample),
    Attack("readout_kind_unknown", "readout", "output.readout[1].kind", _set("output.readout.1.kind", "exec")),
    Attack("readout_kind_linear", "readout", "output.readout[0].kind", _set("output.readout.0.kind", "linear")),
    Attack("readout_kind_relu", "readout", "output.readout[4].kind", _set("output.readout.4.kind", "relu")),
    Attack("readout_params_extra", "readout", "output.readout[0].params",
           _set("output.readout.0.params.return_indices", True)),
    Attack("readout_params_missing", "readout", "output.readout[2].params.divisor_override",
           _delete("output.readout.2.params.divisor_override")),
    Attack("readout_divisor_zero", "readout", "output.readout[2].params.divisor_override",
           _set("output.readout.2.params.divisor_override", 0)),
    Attack("readout_kernel_zero", "readout", "output.readout[0].params.kernel_size",
           _set("output.readout.0.params.kernel_size", [0, 2])),
    Attack("readout_pool_padding_too_big", "readout", "output.readout[0].params.padding",
           _set("output.readout.0.params.padding", [3, 3])),
    Attack("readout_chain_broken", "readout", "output.readout[2].in_shape",
           _set("output.readout.2.in_shape", [6, 8, 8])),
    Attack("readout_first_in_shape", "readout", "output.readout[0].in_shape",
           _set("output.readout.0.in_shape", [6, 4, 4])),
    Attack("readout_maxpool_out_shape", "readout", "output.readout[0].out_shape",
           _set("output.readout.0.out_shape", [6, 5, 4])),
    Attack("readout_reshape_elements", "readout", "output.readout[4].out_shape",
           _set("output.readout.4.out_shape", [7])),
    Attack("readout_tensor_reference", "readout", "output.readout[1].params.scale",
           _set("output.readout.1.params.scale", {"tensor": "output.inputs.0.weight"})),
    Attack("readout_affine_length", "readout", "output.readout[1].params.scale",
           _tensor("output.readout.1.scale", lambda v: torch.ones(7, dtype=v.dtype))),
    Attack("readout_in_hidden_layer", "readout", "layers[0].readout", _readout_in_hidden),
    Attack("readout_adaptive_size_string", "readout", "output.readout[3].params.output_size",
           _set("output.readout.3.params.output_size", "1")),
    # --- absurd shapes, kernels, strides, sources ------------------------------------------------------------------
    Attack("shape_zero", "conv", "layers[0].shape", _set("layers.0.shape", [0, 8, 8])),
    Attack("shape_negative", "conv", "layers[0].shape", _set("layers.0.shape", [-6, 8, 8])),
    Attack("shape_huge", "conv", "layers[0].shape", _set("layers.0.shape", [6, 2**40, 8])),
    Attack("shape_2_to_33_elements", "conv", "layers[0].shape", _set("layers.0.shape", [65536, 65536, 2])),
    Attack("shape_rank_9", "conv", "input_shape", _set("input_shape", [1] * 9)),
    Attack("conv_stride_zero", "conv", "layers[0].inputs[0].conv.stride",
           _set("layers.0.inputs.0.conv.stride", [0, 1])),
    Attack("conv_stride_one_number", "conv", "layers[0].inputs[0].conv.stride",
           _set("layers.0.inputs.0.conv.stride", [2])),
    Attack("conv_padding_negative", "conv", "layers[0].inputs[0].conv.padding",
           _set("layers.0.inputs.0.conv.padding", [-1, 2])),
    Attack("conv_padding_huge", "conv", "layers[0].inputs[0].conv.padding",
           _set("layers.0.inputs.0.conv.padding", [2**20, 2**20])),
    Attack("conv_dilation_huge", "conv", "layers[0].inputs[0].conv",
           _set("layers.0.inputs.0.conv.dilation", [1000, 1000])),
    Attack("conv_groups_mismatch", "conv", "layers[0].inputs[0].weight", _set("layers.0.inputs.0.conv.groups", 2)),
    Attack("conv_groups_not_divisor", "conv", "layers[0].inputs[0].conv.groups",
           _set("layers.0.inputs.0.conv.groups", 4)),
    Attack("conv_padding_changed", "conv", "layers[0].shape", _set("layers.0.inputs.0.conv.padding", [1, 1])),
    Attack("conv_on_flat_input", "conv", "layers[0].inputs[0].in_shape", _set("layers.0.inputs.0.in_shape", [512])),
    Attack("pool_kernel_zero", "conv", "layers[2].inputs[0].route[0].kernel_size",
           _set("layers.2.inputs.0.route.0.kernel_size", [0, 0])),
    Attack("pool_stride_negative", "conv", "layers[2].inputs[0].route[0].stride",
           _set("layers.2.inputs.0.route.0.stride", [-2, 2])),
    Attack("pool_padding_too_big", "conv", "layers[2].inputs[0].route[0].padding",
           _set("layers.2.inputs.0.route.0.padding", [2, 2])),
    Attack("pool_kernel_too_big", "conv", "layers[2].inputs[0].route[0]",
           _set("layers.2.inputs.0.route.0.kernel_size", [100, 100])),
    Attack("pool_ceil_mode_string", "conv", "layers[2].inputs[0].route[0].ceil_mode",
           _set("layers.2.inputs.0.route.0.ceil_mode", "no")),
    Attack("route_changes_in_shape", "conv", "layers[2].inputs[0].in_shape",
           _set("layers.2.inputs.0.route.0.stride", [1, 1])),
    Attack("route_on_dense_source", "conv", "output.inputs[0].route[0]", _route_on_dense),
    Attack("route_of_100_pools", "conv", "layers[2].inputs[0].route",
           lambda d, t: d["layers"][2]["inputs"][0].__setitem__(
        "route", [d["layers"][2]["inputs"][0]["route"][0]] * 100)),
    Attack("source_forward", "conv", "layers[1].inputs[0].source", _set("layers.1.inputs.0.source", 2)),
    Attack("source_self", "conv", "layers[1].inputs[0].source", _set("layers.1.inputs.0.source", 1)),
    Attack("source_out_of_range", "conv", "output.inputs[0].source", _set("output.inputs.0.source", 99)),
    Attack("source_below_input", "conv", "layers[0].inputs[0].source", _set("layers.0.inputs.0.source", -2)),
    Attack("source_skips_a_layer", "conv", "layers[2].inputs[0].in_shape", _set("layers.2.inputs.0.source", 0)),
    Attack("in_shape_mismatch", "conv", "layers[1].inputs[0].in_shape", _set("layers.1.inputs.0.in_shape", [6, 8, 9])),
    Attack("dense_shape_2d", "conv", "layers[2].shape", _set("layers.2.shape", [4, 6])),
    # --- tensors that do not fit the declared shapes ---------------------------------------------------------------
    Attack("dense_weight_transposed", "conv", "layers[2].inputs[0].weight",
           _tensor("layers.2.inputs.0.weight", lambda v: v.t())),
    Attack("conv_weight_3d", "conv", "layers[0].inputs[0].weight",
           _tensor("layers.0.inputs.0.weight", lambda v: v.reshape(6, 2, 25))),
    Attack("conv_kernel_changed", "conv", "layers[0].shape",
           _both(_tensor("layers.0.inputs.0.weight", lambda v: v[:, :, :3, :3]),
                 _tensor("layers.0.inputs.0.J", lambda v: v[:, :, :3, :3]))),
    Attack("bias_not_broadcastable", "conv", "layers[0].bias",
           _tensor("layers.0.bias", lambda v: torch.zeros(6, 8, 7, dtype=v.dtype))),
    Attack("bias_wrong_rank", "conv", "layers[2].bias", _tensor("layers.2.bias", lambda v: v[:, None])),
    Attack("scale_too_long", "conv", "output.scale", _tensor("output.scale", lambda v: torch.ones(50, dtype=v.dtype))),
    Attack("J_not_weight_shape", "conv", "layers[1].inputs[0].J", _tensor("layers.1.inputs.0.J", lambda v: v[:, :3])),
    Attack("theta_wrong_length", "conv", "layers[2].theta", _tensor("layers.2.theta", lambda v: v[:23])),
    Attack("slope_wrong_shape", "conv", "layers[0].slope",
           _tensor("layers.0.slope", lambda v: torch.ones(6, 16, 16, dtype=v.dtype))),
    Attack("sign_wrong_length", "conv", "layers[2].inputs[0].route[0].sign",
           _tensor("layers.2.inputs.0.route.0.sign", lambda v: v[:9])),
    Attack("sign_not_plus_minus_one", "conv", "layers[2].inputs[0].route[0].sign",
           _tensor("layers.2.inputs.0.route.0.sign", lambda v: v * 0.5)),
    Attack("probe_scale_length", "conv", "layers[1].probe.scale",
           _tensor("layers.1.probe.scale", lambda v: v[:3])),
    Attack("empty_tensor", "conv", "layers[2].theta", _tensor("layers.2.theta", lambda v: v[:0])),
    # --- floats: NaN, inf, negative, inconsistent ------------------------------------------------------------------
    Attack("window_nan", "conv", "layers[0].window", _set("layers.0.window", NAN)),
    Attack("window_negative", "conv", "layers[0].window", _shift_window(0, -100.0)),
    Attack("window_zero", "conv", "layers[2].window", _zero_window(2)),
    Attack("window_not_t_max_minus_t_min", "conv", "layers[1].t_max",
           lambda d, t: d["layers"][1].__setitem__("window", d["layers"][1]["window"] + 0.5)),
    Attack("windows_not_consecutive", "conv", "layers[2].t_min", _shift_window(1, 0.25)),
    Attack("t_min_shifted", "conv", "layers[0].t_min", _set("layers.0.t_min", 0.5)),
    Attack("t_max_infinity", "conv", "layers[0].t_max", _set("layers.0.t_max", INF)),
    Attack("t_max_huge_literal", "conv", "layers[0].t_max", _text_re(r'"t_max": [0-9.e+-]+', '"t_max": 1e309')),
    Attack("start_wrong", "conv", "layers[1].start", _set("layers.1.start", 0.5)),
    Attack("in_window_wrong", "conv", "layers[1].in_window", _set("layers.1.in_window", 2.0)),
    Attack("in_window_negative", "conv", "layers[0].in_window", _set("layers.0.in_window", -1.0)),
    Attack("output_window_nonzero", "conv", "output.window",
           lambda d, t: d["output"].update(window=1.0, t_max=d["output"]["t_min"] + 1.0)),
    Attack("output_too_early", "conv", "output.t_min", lambda d, t: d["output"].update(t_min=1.0, t_max=1.0)),
    Attack("max_activation_negative", "conv", "layers[0].max_activation", _set("layers.0.max_activation", -1.0)),
    # --- tensor values and dtypes ----------------------------------------------------------------------------------
    Attack("weight_nan", "conv", "layers[0].inputs[0].weight", _tensor("layers.0.inputs.0.weight", _with_nan)),
    Attack("theta_inf", "conv", "layers[1].theta", _tensor("layers.1.theta", _with_inf)),
    Attack("readout_shift_nan", "readout", "output.readout[1].params.shift",
           _tensor("output.readout.1.shift", _with_nan)),
    Attack("weight_int64", "conv", "layers[0].inputs[0].weight",
           _tensor("layers.0.inputs.0.weight", lambda v: v.to(torch.int64))),
    Attack("weight_bool", "conv", "layers[2].inputs[0].weight", _tensor("layers.2.inputs.0.weight", lambda v: v > 0)),
    Attack("weight_float32_in_float64_net", "conv", "layers[1].inputs[0].weight",
           _tensor("layers.1.inputs.0.weight", lambda v: v.to(torch.float32))),
    Attack("sign_int8", "conv", "layers[2].inputs[0].route[0].sign",
           _tensor("layers.2.inputs.0.route.0.sign", lambda v: v.to(torch.int8))),
    # --- layers of several inputs (version 2): channels, sources, delays, windows, clip (base `branch`) ----------
    Attack("channels_past_the_layer", "branch", "layers[3].inputs[1].channels",
           _set("layers.3.inputs.1.channels", [4, 9])),
    Attack("channels_empty", "branch", "layers[3].inputs[1].channels", _set("layers.3.inputs.1.channels", [4, 4])),
    Attack("channels_reversed", "branch", "layers[3].inputs[0].channels", _set("layers.3.inputs.0.channels", [4, 0])),
    Attack("channels_negative", "branch", "layers[3].inputs[0].channels",
           _set("layers.3.inputs.0.channels", [-4, 0])),
    Attack("channels_three", "branch", "layers[3].inputs[1].channels", _set("layers.3.inputs.1.channels", [4, 6, 8])),
    Attack("channels_floats", "branch", "layers[3].inputs[1].channels",
           _set("layers.3.inputs.1.channels", [4.0, 8.0])),
    Attack("channels_huge", "branch", "layers[3].inputs[1].channels", _set("layers.3.inputs.1.channels", [4, 2**40])),
    Attack("channels_string", "branch", "layers[3].inputs[1].channels", _set("layers.3.inputs.1.channels", "4:8")),
    Attack("channels_missing", "branch", "layers[3].inputs[0].channels: missing",
           _delete("layers.3.inputs.0.channels")),
    Attack("channels_widened", "branch", "layers[3].inputs[1].weight", _set("layers.3.inputs.1.channels", [0, 8])),
    Attack("channels_dropped", "branch", "layers[3].inputs[0].weight", _set("layers.3.inputs.0.channels", None)),
    Attack("channels_not_multiple_of_groups", "branch", "layers[3].inputs[0].conv.groups",
           _set("layers.3.inputs.0.channels", [0, 2])),
    Attack("sliced_weight_full_width", "branch", "layers[3].inputs[1].weight",
           _tensor("layers.3.inputs.1.weight", lambda v: torch.cat([v, v]))),
    Attack("sliced_J_full_width", "branch", "layers[3].inputs[1].J",
           _tensor("layers.3.inputs.1.J", lambda v: torch.cat([v, v]))),
    Attack("sliced_dense_readout", "branch", "output.inputs[0].weight", _set("output.inputs.0.channels", [0, 3])),
    Attack("source_not_earlier", "branch", "layers[3].inputs[1].source", _set("layers.3.inputs.1.source", 3)),
    Attack("source_later_second_input", "branch", "layers[1].inputs[1].source", _set("layers.1.inputs.1.source", 2)),
    Attack("source_of_other_shape", "branch", "layers[3].inputs[0].in_shape", _set("layers.3.inputs.0.source", 1)),
    Attack("source_moved_to_the_input", "branch", "layers[1].inputs[1].in_shape",
           _set("layers.1.inputs.1.source", -1)),
    Attack("delay_dropped", "branch", "layers[3].inputs[1].delay", _set("layers.3.inputs.1.delay", 0.0)),
    Attack("delay_added", "branch", "layers[3].inputs[0].delay", _set("layers.3.inputs.0.delay", 0.5)),
    Attack("delay_on_a_chain", "branch", "layers[2].inputs[0].delay", _set("layers.2.inputs.0.delay", 1.0)),
    Attack("delay_nan", "branch", "layers[3].inputs[1].delay", _set("layers.3.inputs.1.delay", NAN)),
    Attack("delay_string", "branch", "layers[3].inputs[1].delay", _set("layers.3.inputs.1.delay", "1")),
    Attack("in_window_of_another_source", "branch", "layers[3].inputs[1].in_window",
           lambda d, t: d["layers"][3]["inputs"][1].__setitem__("in_window", d["layers"][2]["window"])),
    Attack("in_window_of_input_missing", "branch", "layers[3].inputs[1].in_window: missing",
           _delete("layers.3.inputs.1.in_window")),
    Attack("in_window_not_the_longest", "branch", "layers[3].in_window", _shorter_in_window),
    Attack("start_not_t_min_minus_in_window", "branch", "layers[3].start",
           lambda d, t: d["layers"][3].__setitem__("start", d["layers"][3]["start"] + 0.25)),
    Attack("t_min_not_the_last_source", "branch", "layers[3].t_min", _opens_after_first_source),
    Attack("clip_not_window", "branch", "layers[2].clip", _set("layers.2.clip", 6.0)),
    Attack("clip_zero", "branch", "layers[2].clip", _set("layers.2.clip", 0.0)),
    Attack("clip_negative", "branch", "layers[2].clip", _set("layers.2.clip", -1.0)),
    Attack("clip_infinity", "branch", "layers[2].clip", _set("layers.2.clip", INF)),
    Attack("clip_string", "branch", "layers[2].clip", _set("layers.2.clip", "6")),
    Attack("clip_missing", "branch", "layers[2].clip: missing", _delete("layers.2.clip")),
    Attack("clip_on_a_relu_layer", "branch", "layers[1].clip", _set("layers.1.clip", 6.0)),
    Attack("clip_on_the_readout", "branch", "output.clip", _set("output.clip", 1.0)),
    Attack("clip_and_window_moved", "branch", "layers[3].t_min", _longer_clip),
    Attack("inputs_empty", "branch", "layers[1].inputs", _set("layers.1.inputs", [])),
    Attack("inputs_object", "branch", "layers[1].inputs", _set("layers.1.inputs", {})),
    Attack("inputs_missing", "branch", "layers[1].inputs: missing", _delete("layers.1.inputs")),
    Attack("inputs_2000", "branch", "layers[1].inputs", lambda d, t: d["layers"][1].__setitem__(
        "inputs", [d["layers"][1]["inputs"][1]] * 2000)),
    # --- a layer of two inputs whose second input is malformed ------------------------------------------------
    Attack("second_input_not_an_object", "branch", "layers[1].inputs[1]", _set("layers.1.inputs.1", [0])),
    Attack("second_input_missing_delay", "branch", "layers[1].inputs[1].delay: missing",
           _delete("layers.1.inputs.1.delay")),
    Attack("second_input_unexpected_key", "branch", "layers[1].inputs[1]: unexpected key",
           _set("layers.1.inputs.1.weight", [1.0])),
    Attack("second_input_stride_zero", "branch", "layers[1].inputs[1].conv.stride",
           _set("layers.1.inputs.1.conv.stride", [0, 1])),
    Attack("second_input_groups_not_divisor", "branch", "layers[1].inputs[1].conv.groups",
           _set("layers.1.inputs.1.conv.groups", 3)),
    Attack("second_input_conv_dropped", "branch", "layers[1].inputs[1].weight", _set("layers.1.inputs.1.conv", None)),
    Attack("second_input_kernel_changed", "branch", "layers[1].shape",
           _both(_tensor("layers.1.inputs.1.weight", lambda v: v.new_zeros(8, 1, 3, 3)),
                 _tensor("layers.1.inputs.1.J", lambda v: v.new_zeros(8, 1, 3, 3)))),
    Attack("second_input_route_added", "branch", "layers[1].inputs[1].in_shape", _pool_second_input),
    Attack("second_input_in_shape_string", "branch", "layers[1].inputs[1].in_shape",
           _set("layers.1.inputs.1.in_shape", "8x16x16")),
    Attack("second_input_weight_missing", "branch", "layers.1.inputs.1.weight",
           _tensor("layers.1.inputs.1.weight", lambda v: None)),
    Attack("second_input_J_missing", "branch", "layers.1.inputs.1.J", _tensor("layers.1.inputs.1.J", lambda v: None)),
    Attack("second_input_J_nan", "branch", "layers[1].inputs[1].J", _tensor("layers.1.inputs.1.J", _with_nan)),
    Attack("second_input_weight_float32", "branch", "layers[1].inputs[1].weight",
           _tensor("layers.1.inputs.1.weight", lambda v: v.to(torch.float32))),
    Attack("third_input_tensor", "branch", '"layers.1.inputs.2.weight"',
           lambda d, t: t.__setitem__("layers.1.inputs.2.weight", t["layers.1.inputs.1.weight"].clone())),
    Attack("readout_J_tensor", "branch", '"output.inputs.0.J"',
           lambda d, t: t.__setitem__("output.inputs.0.J", t["output.inputs.0.weight"].clone())),
    # --- version 1 files (base `conv_v1`) are checked as strictly; the two layouts do not mix -----------------
    Attack("v1_layout_claims_version_2", "conv_v1", "layers[0]: unexpected key", _set("version", 2)),
    Attack("v2_layout_claims_version_1", "conv", "layers[0]: unexpected key", _set("version", 1)),
    Attack("v1_inputs_key", "conv_v1", "layers[0]: unexpected key", _set("layers.0.inputs", [])),
    Attack("v1_source_forward", "conv_v1", "layers[1].source", _set("layers.1.source", 2)),
    Attack("v1_source_skips_a_layer", "conv_v1", "layers[2].in_shape", _set("layers.2.source", 0)),
    Attack("v1_conv_stride_zero", "conv_v1", "layers[0].conv.stride", _set("layers.0.conv.stride", [0, 1])),
    Attack("v1_conv_padding_changed", "conv_v1", "layers[0].shape", _set("layers.0.conv.padding", [1, 1])),
    Attack("v1_dense_shape_2d", "conv_v1", "layers[2].shape", _set("layers.2.shape", [4, 6])),
    Attack("v1_route_on_dense_source", "conv_v1", "output.route[0]",
           lambda d, t: d["output"].__setitem__("route", [copy.deepcopy(d["layers"][2]["route"][0])])),
    Attack("v1_in_window_wrong", "conv_v1", "layers[1].in_window", _set("layers.1.in_window", 2.0)),
    Attack("v1_start_wrong", "conv_v1", "layers[1].start", _set("layers.1.start", 0.5)),
    Attack("v1_windows_not_consecutive", "conv_v1", "layers[2].t_min", _shift_window(1, 0.25)),
    Attack("v1_output_too_early", "conv_v1", "output.t_min", lambda d, t: d["output"].update(t_min=1.0, t_max=1.0)),
    Attack("v1_weight_transposed", "conv_v1", "layers[2].weight", _tensor("layers.2.weight", lambda v: v.t())),
    Attack("v1_J_missing", "conv_v1", "layers.0.J", _tensor("layers.0.J", lambda v: None)),
    Attack("v1_sign_wrong_length", "conv_v1", "layers[2].route[0].sign",
           _tensor("layers.2.route.0.sign", lambda v: v[:9])),
    Attack("v1_tensor_with_a_v2_name", "conv_v1", '"layers.0.inputs.0.weight"',
           lambda d, t: t.__setitem__("layers.0.inputs.0.weight", t.pop("layers.0.weight"))),
]


def raw_attacks(path: Path) -> list[tuple[str, Path]]:
    """Hand-written safetensors files whose header claims tensors far larger than the file."""
    meta = {"ttfs": json.dumps({"format": "ttfs-network", "version": 1})}
    out = []
    cases = {
        "claims_2_to_40_elements": {"dtype": "F64", "shape": [1 << 40], "data_offsets": [0, 8 << 40]},
        "shape_and_offsets_disagree": {"dtype": "F64", "shape": [1 << 30], "data_offsets": [0, 16]},
        "offsets_past_the_end": {"dtype": "F64", "shape": [2], "data_offsets": [0, 1 << 40]},
    }
    for name, info in cases.items():
        file = path / f"{name}.safetensors"
        write_raw(file, {"__metadata__": meta, "layers.0.weight": info}, b"\0" * 16)
        out.append((name, file))
    return out


# --- random damage to the description (structure-aware fuzzing) -------------------------------------------------
_VALUES = [None, True, False, -1, 0, 1, 2, 3, 7, 2**40, -2**40, 1.5, -0.5, NAN, INF, "x", "", [], {}, [1], [0, 0],
           [1, 1], [2, 2], [6], [6, 1, 1], [1, 2, 3], [None, 1], {"tensor": "output.weight"},
           {"tensor": "layers.0.weight"}, {"tensor": "output.inputs.0.weight"}, {"tensor": "layers.0.inputs.0.weight"},
           "affine", "maxpool", "avgpool", "adaptive_avgpool", "reshape", "identity", [0, 4], [4, 8]]


def _paths(x, prefix=()):
    yield prefix
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _paths(v, (*prefix, i))


def mutate_description(desc: dict, tensors: dict[str, torch.Tensor], rng) -> None:
    """One or two fields of the description replaced by values of other types and ranges, deleted, or nudged;
    sometimes one tensor scaled (0, −1, 2, 1e300). In place."""
    for _ in range(rng.randint(1, 2)):
        path = rng.choice([p for p in _paths(desc) if p])
        parent = desc
        for key in path[:-1]:
            parent = parent[key]
        old, r = parent[path[-1]], rng.random()
        if r < 0.1 and isinstance(parent, dict):
            del parent[path[-1]]
        elif r < 0.3 and isinstance(old, (int, float)) and not isinstance(old, bool):
            parent[path[-1]] = old + rng.choice([-1, 1, 0.5, 2])
        else:
            parent[path[-1]] = copy.deepcopy(rng.choice(_VALUES))
    if rng.random() < 0.2:
        name = rng.choice(sorted(tensors))
        tensors[name] = tensors[name] * rng.choice([0.0, -1.0, 2.0, 1e300])
