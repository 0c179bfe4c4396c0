"""The vocabulary of the capture (`ttfs_core.capture`): which modules, functions (functionals, torch functions,
aten operators of a `torch.export` program) and tensor methods map to which op kind (`Op.kind`), with the names
and defaults of their parameters."""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops import UPSAMPLE_MODES  # noqa: F401 - the capture's messages
from .untrusted.allowlist import InputGuard

SUPPORTED = (
    "Conv2d (zero padding, stride, dilation, groups), Linear, BatchNorm1d/2d (eval), ReLU (module, F.relu, "
    "torch.relu, in-place), ReLU6 / hardtanh(0, c), MaxPool2d, AvgPool2d (ceil_mode, count_include_pad, "
    "divisor_override), AdaptiveAvgPool2d, mean over space, nearest / bilinear upsampling (nn.Upsample, "
    "F.interpolate), zero padding and cropping (nn.ZeroPad2d, F.pad with zeros), Flatten / torch.flatten / view / "
    "reshape / transpose / permute, additions (+, torch.add, in-place), torch.cat / chunk / split and channel "
    "slices, multiplication by a constant or a stored per-channel tensor, Dropout, Identity, and a last linear map "
    "without ReLU (the readout)"
)


# --- parameter binding for functional and aten ops -------------------------------------------------------

_CONV = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEF = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
_MAXP = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode")
_MAXP_DEF = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False}
_AVGP = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_AVGP_DEF = {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True, "divisor_override": None}
_UP_VEC = ("input", "output_size", "scale_factors")
_UP_BIL_VEC = ("input", "output_size", "align_corners", "scale_factors")
_UP = ("input", "output_size", "scales_h", "scales_w")
_UP_BIL = ("input", "output_size", "align_corners", "scales_h", "scales_w")
_INTERP = ("input", "size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias")
_INTERP_DEF = {"size": None, "scale_factor": None, "mode": "nearest", "align_corners": None,
               "recompute_scale_factor": None, "antialias": False}
_BN_F = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
_BN_A = ("input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps")
_BN_NATIVE = ("input", "weight", "bias", "running_mean", "running_var", "momentum", "eps")
_BN_DEF = {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5}

aten = torch.ops.aten

# callable -> (kind, parameter names, defaults). Functions whose result is a tuple take element 0.
FUNCTIONS: dict[Any, tuple[str, tuple[str, ...], dict[str, Any]]] = {
    F.relu: ("relu", ("input",), {}),
    torch.relu: ("relu", ("input",), {}),
    torch.relu_: ("relu", ("input",), {}),
    F.relu_: ("relu", ("input",), {}),
    F.conv2d: ("conv", _CONV, _CONV_DEF),
    torch.conv2d: ("conv", _CONV, _CONV_DEF),
    F.linear: ("linear", ("input", "weight", "bias"), {"bias": None}),
    F.batch_norm: ("batchnorm", _BN_F, _BN_DEF),
    F.max_pool2d: ("maxpool", _MAXP, _MAXP_DEF),
    torch.max_pool2d: ("maxpool", _MAXP, _MAXP_DEF),
    F.avg_pool2d: ("avgpool", _AVGP, _AVGP_DEF),
    F.adaptive_avg_pool2d: ("adaptive_avgpool", ("input", "output_size"), {}),
    torch.flatten: ("reshape", ("input", "start_dim", "end_dim"), {"start_dim": 0, "end_dim": -1}),
    torch.reshape: ("reshape", ("input", "shape"), {}),
    F.dropout: ("dropout", ("input", "p", "training"), {"training": True}),
    F.dropout2d: ("dropout", ("input", "p", "training"), {"training": True}),
    torch.dropout: ("dropout", ("input", "p", "train"), {}),
    aten.relu.default: ("relu", ("input",), {}),
    aten.relu_.default: ("relu", ("input",), {}),
    aten.conv2d.default: ("conv", _CONV, _CONV_DEF),
    aten.linear.default: ("linear", ("input", "weight", "bias"), {"bias": None}),
    aten.batch_norm.default: ("batchnorm", _BN_A, _BN_DEF),
    aten._native_batch_norm_legit_no_training.default: ("batchnorm", _BN_NATIVE, _BN_DEF),
    aten.max_pool2d.default: ("maxpool", _MAXP, _MAXP_DEF),
    aten.max_pool2d_with_indices.default: ("maxpool", _MAXP, _MAXP_DEF),
    aten.avg_pool2d.default: ("avgpool", _AVGP, _AVGP_DEF),
    aten.adaptive_avg_pool2d.default: ("adaptive_avgpool", ("input", "output_size"), {}),
    aten.flatten.using_ints: ("reshape", ("input",), {}),
    aten.view.default: ("reshape", ("input",), {}),
    aten.reshape.default: ("reshape", ("input",), {}),
    aten._unsafe_view.default: ("reshape", ("input",), {}),
    aten.dropout.default: ("dropout", ("input", "p", "train"), {}),
    aten.clone.default: ("identity", ("input",), {}),
    aten.contiguous.default: ("identity", ("input",), {}),
    aten.detach.default: ("identity", ("input",), {}),
    aten.alias.default: ("identity", ("input",), {}),
    operator.getitem: ("getitem", ("input", "index"), {}),
    F.relu6: ("relu6", ("input",), {}),
    F.hardtanh: ("hardtanh", ("input", "min_val", "max_val"), {"min_val": -1.0, "max_val": 1.0}),
    aten.hardtanh.default: ("hardtanh", ("input", "min_val", "max_val"), {"min_val": -1.0, "max_val": 1.0}),
    aten.hardtanh_.default: ("hardtanh", ("input", "min_val", "max_val"), {"min_val": -1.0, "max_val": 1.0}),
    aten.relu6.default: ("relu6", ("input",), {}),
    operator.add: ("add", ("input", "other"), {}),
    operator.iadd: ("add", ("input", "other"), {}),
    torch.add: ("add", ("input", "other", "alpha"), {"alpha": 1}),
    aten.add.Tensor: ("add", ("input", "other", "alpha"), {"alpha": 1}),
    aten.add_.Tensor: ("add", ("input", "other", "alpha"), {"alpha": 1}),
    operator.sub: ("sub", ("input", "other"), {}),
    operator.isub: ("sub", ("input", "other"), {}),
    torch.sub: ("sub", ("input", "other", "alpha"), {"alpha": 1}),
    aten.sub.Tensor: ("sub", ("input", "other", "alpha"), {"alpha": 1}),
    operator.mul: ("mul", ("input", "other"), {}),
    torch.mul: ("mul", ("input", "other"), {}),
    aten.mul.Tensor: ("mul", ("input", "other"), {}),
    operator.truediv: ("div", ("input", "other"), {}),
    torch.div: ("div", ("input", "other"), {}),
    aten.div.Tensor: ("div", ("input", "other"), {}),
    F.interpolate: ("upsample", _INTERP, _INTERP_DEF),
    aten.upsample_nearest2d.vec: ("upsample", _UP_VEC, {"mode": "nearest"}),
    aten.upsample_nearest2d.default: ("upsample", _UP, {"mode": "nearest", "scales_h": None, "scales_w": None}),
    aten._upsample_nearest_exact2d.vec: ("upsample", _UP_VEC, {"mode": "nearest-exact"}),
    aten._upsample_nearest_exact2d.default: ("upsample", _UP, {"mode": "nearest-exact", "scales_h": None,
                                                              "scales_w": None}),
    aten.upsample_bilinear2d.vec: ("upsample", _UP_BIL_VEC, {"mode": "bilinear"}),
    aten.upsample_bilinear2d.default: ("upsample", _UP_BIL, {"mode": "bilinear", "scales_h": None,
                                                            "scales_w": None}),
    F.pad: ("pad", ("input", "pad", "mode", "value"), {"mode": "constant", "value": None}),
    aten.pad.default: ("pad", ("input", "pad", "mode", "value"), {"mode": "constant", "value": None}),
    aten.constant_pad_nd.default: ("pad", ("input", "pad", "value"), {"mode": "constant", "value": 0}),
    torch.cat: ("cat", ("tensors", "dim"), {"dim": 0}),
    torch.concat: ("cat", ("tensors", "dim"), {"dim": 0}),
    aten.cat.default: ("cat", ("tensors", "dim"), {"dim": 0}),
    torch.chunk: ("chunk", ("input", "chunks", "dim"), {"dim": 0}),
    aten.chunk.default: ("chunk", ("input", "chunks", "dim"), {"dim": 0}),
    torch.split: ("split", ("input", "split_size_or_sections", "dim"), {"dim": 0}),
    aten.split.Tensor: ("split", ("input", "split_size_or_sections", "dim"), {"dim": 0}),
    aten.split_with_sizes.default: ("split", ("input", "split_size_or_sections", "dim"), {"dim": 0}),
    torch.transpose: ("transpose", ("input", "dim0", "dim1"), {}),
    aten.transpose.int: ("transpose", ("input", "dim0", "dim1"), {}),
    torch.permute: ("permute", ("input", "dims"), {}),
    aten.permute.default: ("permute", ("input", "dims"), {}),
    torch.mean: ("mean", ("input", "dim", "keepdim"), {"keepdim": False}),
    aten.mean.dim: ("mean", ("input", "dim", "keepdim"), {"keepdim": False}),
    aten.slice.Tensor: ("narrow", ("input", "dim", "start", "end", "step"), {"dim": 0, "start": None, "end": None,
                                                                             "step": 1}),
}

METHODS = {
    "relu": "relu", "relu_": "relu", "view": "reshape", "reshape": "reshape", "flatten": "reshape",
    "contiguous": "identity", "clone": "identity", "detach": "identity", "add": "add", "add_": "add",
    "__add__": "add", "__iadd__": "add", "sub": "sub", "sub_": "sub", "mul": "mul", "mul_": "mul",
    "div": "div", "div_": "div", "__truediv__": "div", "chunk": "chunk", "split": "split",
    "transpose": "transpose", "permute": "permute", "mean": "mean",
}
# tensor method -> parameter names (after self) and defaults
METHOD_ARGS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "add": (("other", "alpha"), {"alpha": 1}), "add_": (("other", "alpha"), {"alpha": 1}),
    "__add__": (("other",), {}), "__iadd__": (("other",), {}),
    "sub": (("other", "alpha"), {"alpha": 1}), "sub_": (("other", "alpha"), {"alpha": 1}),
    "mul": (("other",), {}), "mul_": (("other",), {}),
    "div": (("other",), {}), "div_": (("other",), {}), "__truediv__": (("other",), {}),
    "chunk": (("chunks", "dim"), {"dim": 0}), "split": (("split_size_or_sections", "dim"), {"dim": 0}),
    "transpose": (("dim0", "dim1"), {}), "permute": (("dims",), {}), "mean": (("dim", "keepdim"), {"keepdim": False}),
}

MODULES: dict[type, str] = {
    nn.Conv2d: "conv", nn.Linear: "linear", nn.BatchNorm1d: "batchnorm", nn.BatchNorm2d: "batchnorm",
    nn.ReLU: "relu", nn.MaxPool2d: "maxpool", nn.AvgPool2d: "avgpool", nn.AdaptiveAvgPool2d: "adaptive_avgpool",
    nn.Flatten: "reshape", nn.Dropout: "identity", nn.Dropout1d: "identity", nn.Dropout2d: "identity",
    nn.Identity: "identity", nn.ReLU6: "relu6", nn.Hardtanh: "hardtanh",
    nn.Upsample: "upsample", nn.UpsamplingNearest2d: "upsample", nn.UpsamplingBilinear2d: "upsample",
    nn.ZeroPad2d: "pad", nn.ConstantPad2d: "pad", nn.ReflectionPad2d: "pad", nn.ReplicationPad2d: "pad",
    nn.CircularPad2d: "pad",
    InputGuard: "identity",  # the shape check at the head of a graph rebuilt from an uploaded file
}
