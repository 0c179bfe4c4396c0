"""Crafted hostile network files (issue 14) for tests/test_persist.py.

Each attack starts from a real saved network (`BASES`), edits its JSON description and/or its tensors, and
rewrites the file with `safetensors.torch.save_file`; every crafted file stays small (tens of kB). The loader
must answer each with one `NetworkFileError` whose message names `Attack.field`.
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
    """A conv net whose readout (after the last conv) holds every op kind the converter puts there:
    affine (BatchNorm), max pooling, average pooling, adaptive average pooling, reshape."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.MaxPool2d(2), nn.AvgPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    return nets.randomise_bn(model).double().eval()


def base_network(name: str) -> ttfs_core.SpikingNetwork:
    """`conv`: tests.nets' FunctionalNet (strided conv, a pooled route with min-pooling signs, an affine probe,
    dense layers). `readout`: `readout_model`."""
    if name == "conv":
        model, x = nets.build("functional"), nets.inputs("functional", 64)
        return ttfs_core.convert(model, x, input_range=(-2.0, 3.0))
    g = torch.Generator().manual_seed(1)
    return ttfs_core.convert(readout_model(), torch.rand(32, 2, 16, 16, generator=g, dtype=torch.float64))


BASES = ("conv", "readout")


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
    d["layers"][0]["readout"] = [copy.deepcopy(d["output"]["readout"][1])]


def _route_on_dense(d: dict, t: dict) -> None:
    d["output"]["route"] = [copy.deepcopy(d["layers"][2]["route"][0])]


def _deep(d: dict, t: dict) -> str:
    return '{"format": "ttfs-network", "version": 1, "layers": ' + "[" * 100_000 + "]" * 100_000 + "}"


ATTACKS: list[Attack] = [
    # --- literals the JSON standard does not have, duplicate keys, wrong JSON ----------------------------------
    Attack("version_infinity", "conv", "version", _set("version", INF)),
    Attack("version_nan", "conv", "version", _set("version", NAN)),
    Attack("version_future", "conv", "version", _set("version", 2)),
    Attack("version_string", "conv", "version", _set("version", "1")),
    Attack("version_true", "conv", "version", _set("version", True)),
    Attack("format_other", "conv", "format", _set("format", "pickle")),
    Attack("source_infinity", "conv", "layers[1].source", _set("layers.1.source", INF)),
    Attack("source_minus_infinity", "conv", "layers[1].source", _set("layers.1.source", -INF)),
    Attack("source_overflowing_literal", "conv", "layers[1].source", _text('"source": 0', '"source": 1e999')),
    Attack("margin_overflowing_literal", "conv", "margin", _text('"margin": 0.5', '"margin": -1e400')),
    Attack("integer_of_5000_digits", "conv", "description", _text('"source": 0', '"source": ' + "9" * 5000)),
    Attack("duplicate_top_key", "conv", '"version" appears twice', _text('"version": 1', '"version": 1, "version": 1')),
    Attack("duplicate_layer_key", "conv", "layers[0]",
           _text('"is_output": false', '"is_output": false, "is_output": true')),
    Attack("not_json", "conv", "description", lambda d, t: "{'format': 'ttfs-network'}"),
    Attack("json_list", "conv", "description", lambda d, t: "[1, 2, 3]"),
    Attack("deep_nesting", "conv", "description", _deep),
    # --- unexpected and missing keys and tensors ---------------------------------------------------------------
    Attack("unexpected_top_key", "conv", "unexpected key", _set("exec", "import os")),
    Attack("unexpected_layer_key", "conv", "layers[0]: unexpected key", _set("layers.0.code", 1)),
    Attack("unexpected_conv_key", "conv", "layers[0].conv: unexpected key", _set("layers.0.conv.padding_mode", "x")),
    Attack("missing_t_min", "conv", "layers[1].t_min: missing", _delete("layers.1.t_min")),
    Attack("missing_output", "conv", "output: missing", _delete("output")),
    Attack("missing_probe_key", "conv", "layers[2].probe.affine: missing", _delete("layers.2.probe.affine")),
    Attack("missing_tensor", "conv", "layers.0.J", _tensor("layers.0.J", lambda v: None)),
    Attack("missing_sign_tensor", "conv", "layers[2].route[0].sign", _tensor("layers.2.route.0.sign", lambda v: None)),
    Attack("missing_probe_tensor", "conv", "layers[1].probe.shift", _tensor("layers.1.probe.shift", lambda v: None)),
    Attack("unexpected_tensor", "conv", '"payload"',
           lambda d, t: t.__setitem__("payload", torch.zeros(4, dtype=torch.float64))),
    Attack("missing_readout_tensor", "readout", "output.readout[0].params.shift",
           _tensor("output.readout.0.shift", lambda v: None)),
    # --- wrong types anywhere ------------------------------------------------------------------------------------
    Attack("shape_string", "conv", "layers[0].in_shape", _set("layers.0.in_shape", "2x16x16")),
    Attack("input_shape_string", "conv", "input_shape", _set("input_shape", "2, 16, 16")),
    Attack("shape_floats", "conv", "layers[0].shape", _set("layers.0.shape", [6.0, 8.0, 8.0])),
    Attack("is_output_string", "conv", "layers[0].is_output", _set("layers.0.is_output", "no")),
    Attack("is_output_wrong", "conv", "output.is_output", _set("output.is_output", False)),
    Attack("neuron_unknown", "conv", "neuron", _set("neuron", "lif")),
    Attack("rescale_number", "conv", "rescale", _set("rescale", 1)),
    Attack("dtype_not_float", "conv", "dtype", _set("dtype", "int64")),
    Attack("dtype_attribute", "conv", "dtype", _set("dtype", "Tensor")),
    Attack("groups_float", "conv", "layers[0].conv.groups", _set("layers.0.conv.groups", 1.5)),
    Attack("groups_bool", "conv", "layers[0].conv.groups", _set("layers.0.conv.groups", True)),
    Attack("conv_list", "conv", "layers[0].conv", _set("layers.0.conv", [1, 2])),
    Attack("route_object", "conv", "layers[2].route", _set("layers.2.route", {})),
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
    Attack("readout_kind_unknown", "readout", "output.readout[0].kind", _set("output.readout.0.kind", "exec")),
    Attack("readout_kind_linear", "readout", "output.readout[1].kind", _set("output.readout.1.kind", "linear")),
    Attack("readout_kind_relu", "readout", "output.readout[4].kind", _set("output.readout.4.kind", "relu")),
    Attack("readout_params_extra", "readout", "output.readout[1].params",
           _set("output.readout.1.params.return_indices", True)),
    Attack("readout_params_missing", "readout", "output.readout[2].params.divisor_override",
           _delete("output.readout.2.params.divisor_override")),
    Attack("readout_divisor_zero", "readout", "output.readout[2].params.divisor_override",
           _set("output.readout.2.params.divisor_override", 0)),
    Attack("readout_kernel_zero", "readout", "output.readout[1].params.kernel_size",
           _set("output.readout.1.params.kernel_size", [0, 2])),
    Attack("readout_pool_padding_too_big", "readout", "output.readout[1].params.padding",
           _set("output.readout.1.params.padding", [3, 3])),
    Attack("readout_chain_broken", "readout", "output.readout[2].in_shape",
           _set("output.readout.2.in_shape", [6, 8, 8])),
    Attack("readout_first_in_shape", "readout", "output.readout[0].in_shape",
           _set("output.readout.0.in_shape", [6, 4, 4])),
    Attack("readout_maxpool_out_shape", "readout", "output.readout[1].out_shape",
           _set("output.readout.1.out_shape", [6, 5, 4])),
    Attack("readout_reshape_elements", "readout", "output.readout[4].out_shape",
           _set("output.readout.4.out_shape", [7])),
    Attack("readout_tensor_reference", "readout", "output.readout[0].params.scale",
           _set("output.readout.0.params.scale", {"tensor": "output.weight"})),
    Attack("readout_affine_length", "readout", "output.readout[0].params.scale",
           _tensor("output.readout.0.scale", lambda v: torch.ones(7, dtype=v.dtype))),
    Attack("readout_in_hidden_layer", "readout", "layers[0].readout", _readout_in_hidden),
    Attack("readout_adaptive_size_string", "readout", "output.readout[3].params.output_size",
           _set("output.readout.3.params.output_size", "1")),
    # --- absurd shapes, kernels, strides, sources ------------------------------------------------------------------
    Attack("shape_zero", "conv", "layers[0].shape", _set("layers.0.shape", [0, 8, 8])),
    Attack("shape_negative", "conv", "layers[0].shape", _set("layers.0.shape", [-6, 8, 8])),
    Attack("shape_huge", "conv", "layers[0].shape", _set("layers.0.shape", [6, 2**40, 8])),
    Attack("shape_2_to_33_elements", "conv", "layers[0].shape", _set("layers.0.shape", [65536, 65536, 2])),
    Attack("shape_rank_9", "conv", "input_shape", _set("input_shape", [1] * 9)),
    Attack("conv_stride_zero", "conv", "layers[0].conv.stride", _set("layers.0.conv.stride", [0, 1])),
    Attack("conv_stride_one_number", "conv", "layers[0].conv.stride", _set("layers.0.conv.stride", [2])),
    Attack("conv_padding_negative", "conv", "layers[0].conv.padding", _set("layers.0.conv.padding", [-1, 2])),
    Attack("conv_padding_huge", "conv", "layers[0].conv.padding", _set("layers.0.conv.padding", [2**20, 2**20])),
    Attack("conv_dilation_huge", "conv", "layers[0].conv", _set("layers.0.conv.dilation", [1000, 1000])),
    Attack("conv_groups_mismatch", "conv", "layers[0].weight", _set("layers.0.conv.groups", 2)),
    Attack("conv_groups_not_divisor", "conv", "layers[0].conv.groups", _set("layers.0.conv.groups", 4)),
    Attack("conv_padding_changed", "conv", "layers[0].shape", _set("layers.0.conv.padding", [1, 1])),
    Attack("conv_on_flat_input", "conv", "layers[0].in_shape", _set("layers.0.in_shape", [512])),
    Attack("pool_kernel_zero", "conv", "layers[2].route[0].kernel_size", _set("layers.2.route.0.kernel_size", [0, 0])),
    Attack("pool_stride_negative", "conv", "layers[2].route[0].stride", _set("layers.2.route.0.stride", [-2, 2])),
    Attack("pool_padding_too_big", "conv", "layers[2].route[0].padding", _set("layers.2.route.0.padding", [2, 2])),
    Attack("pool_kernel_too_big", "conv", "layers[2].route[0]", _set("layers.2.route.0.kernel_size", [100, 100])),
    Attack("pool_ceil_mode_string", "conv", "layers[2].route[0].ceil_mode", _set("layers.2.route.0.ceil_mode", "no")),
    Attack("route_changes_in_shape", "conv", "layers[2].in_shape", _set("layers.2.route.0.stride", [1, 1])),
    Attack("route_on_dense_source", "conv", "output.route[0]", _route_on_dense),
    Attack("route_of_100_pools", "conv", "layers[2].route", lambda d, t: d["layers"][2].__setitem__(
        "route", [d["layers"][2]["route"][0]] * 100)),
    Attack("source_forward", "conv", "layers[1].source", _set("layers.1.source", 2)),
    Attack("source_self", "conv", "layers[1].source", _set("layers.1.source", 1)),
    Attack("source_out_of_range", "conv", "output.source", _set("output.source", 99)),
    Attack("source_below_input", "conv", "layers[0].source", _set("layers.0.source", -2)),
    Attack("source_skips_a_layer", "conv", "layers[2].in_shape", _set("layers.2.source", 0)),
    Attack("in_shape_mismatch", "conv", "layers[1].in_shape", _set("layers.1.in_shape", [6, 8, 9])),
    Attack("dense_shape_2d", "conv", "layers[2].shape", _set("layers.2.shape", [4, 6])),
    # --- tensors that do not fit the declared shapes ---------------------------------------------------------------
    Attack("dense_weight_transposed", "conv", "layers[2].weight", _tensor("layers.2.weight", lambda v: v.t())),
    Attack("conv_weight_3d", "conv", "layers[0].weight", _tensor("layers.0.weight", lambda v: v.reshape(6, 2, 25))),
    Attack("conv_kernel_changed", "conv", "layers[0].shape",
           _both(_tensor("layers.0.weight", lambda v: v[:, :, :3, :3]),
                 _tensor("layers.0.J", lambda v: v[:, :, :3, :3]))),
    Attack("bias_not_broadcastable", "conv", "layers[0].bias",
           _tensor("layers.0.bias", lambda v: torch.zeros(6, 8, 7, dtype=v.dtype))),
    Attack("bias_wrong_rank", "conv", "layers[2].bias", _tensor("layers.2.bias", lambda v: v[:, None])),
    Attack("scale_too_long", "conv", "output.scale", _tensor("output.scale", lambda v: torch.ones(50, dtype=v.dtype))),
    Attack("J_not_weight_shape", "conv", "layers[1].J", _tensor("layers.1.J", lambda v: v[:, :3])),
    Attack("theta_wrong_length", "conv", "layers[2].theta", _tensor("layers.2.theta", lambda v: v[:23])),
    Attack("slope_wrong_shape", "conv", "layers[0].slope",
           _tensor("layers.0.slope", lambda v: torch.ones(6, 16, 16, dtype=v.dtype))),
    Attack("sign_wrong_length", "conv", "layers[2].route[0].sign", _tensor("layers.2.route.0.sign", lambda v: v[:9])),
    Attack("sign_not_plus_minus_one", "conv", "layers[2].route[0].sign",
           _tensor("layers.2.route.0.sign", lambda v: v * 0.5)),
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
    Attack("weight_nan", "conv", "layers[0].weight", _tensor("layers.0.weight", _with_nan)),
    Attack("theta_inf", "conv", "layers[1].theta", _tensor("layers.1.theta", _with_inf)),
    Attack("readout_shift_nan", "readout", "output.readout[0].params.shift",
           _tensor("output.readout.0.shift", _with_nan)),
    Attack("weight_int64", "conv", "layers[0].weight", _tensor("layers.0.weight", lambda v: v.to(torch.int64))),
    Attack("weight_bool", "conv", "layers[2].weight", _tensor("layers.2.weight", lambda v: v > 0)),
    Attack("weight_float32_in_float64_net", "conv", "layers[1].weight",
           _tensor("layers.1.weight", lambda v: v.to(torch.float32))),
    Attack("sign_int8", "conv", "layers[2].route[0].sign",
           _tensor("layers.2.route.0.sign", lambda v: v.to(torch.int8))),
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
           {"tensor": "layers.0.weight"}, "affine", "maxpool", "avgpool", "adaptive_avgpool", "reshape", "identity"]


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
