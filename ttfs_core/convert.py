"""`convert`: from a PyTorch ReLU network and calibration data to a `SpikingNetwork` (MATH §1–§5).

It checks the arguments and runs the passes of `ttfs_core.passes` (capture → lower → rescale → calibrate →
place in time → parameterise), each returning a new record, with the finite-value check after each.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from . import passes
from .errors import ConversionError, InputError
from .mapping import DEFAULT_MARGIN
from .network import SpikingNetwork, usable_device
from .neurons import ALPHA, SUM, NeuronModel, Rescale, neuron_model, rescale_rule


def convert(
    model: nn.Module,
    calibration: Tensor | Iterable[Any],
    *,
    margin: float = DEFAULT_MARGIN,
    input_range: tuple[float, float] | None = None,
    neuron: NeuronModel | str = ALPHA,
    rescale: Rescale | str = SUM,
    alpha: float = 1.0,
    device: torch.device | str | None = None,
    stages: bool = False,
) -> SpikingNetwork | passes.Stages:
    """Convert a trained feed-forward ReLU network into an exact single-spike TTFS network.

    `calibration` is a tensor of representative inputs (B, *input_shape) or an iterable of such batches (or of
    (inputs, labels) pairs). Windows are B_n = (1 + margin)·X_n (MATH §4), X_n the layer's largest activation on
    the calibration data, or (1 + margin)·P_n where the layer's peak drive before its window opens, P_n, is larger
    than max(1, 1 + margin)·X_n on a sample of the calibration data (`_peak_drives`): a neuron driven up before
    its later inputs arrive (small excitatory inputs whose weights sum above 1, as where Inception's
    concatenations join short and long windows) would otherwise fire early on its own calibration data.
    The input range [p, q] comes from the calibration data unless given. `neuron` is a
    `ttfs_core.neurons.NeuronModel` or its name: ALPHA, "alpha" (MATH §2) or B1, "b1" (MATH §7).
    `rescale` (a `ttfs_core.neurons.Rescale` or its name) is SUM, "sum" (the default, the paper's rule
    Σ_j W_ij < 1: windows stay of the order of the trained activations, and early spikes are ruled out by the fast
    certificate of `ttfs_core.certify`) or POSITIVE, "positive" (Σ_j max(W_ij, 0) < 1: an early spike happens
    exactly when a pre-activation exceeds its window, so no certificate is needed, but every layer shrinks the time
    scale, geometrically with depth: an opt-in fast mode whose deep windows are far too short for hardware, jitter
    or teaching). B1 is never rescaled.
    `device` (default: where the model's parameters are): where calibration runs and where the network lives
    (`SpikingNetwork.to`); capture and lowering, which touch each weight once, run on the CPU.
    `stages=True` returns every stage instead (`ttfs_core.passes.Stages`: the captured ops and the network after
    each pass; `.network` is the converted network).
    The user's model is never modified. Raises ConversionError naming the offending node and the pass that failed
    (`stage`; with `stages=True` also the stages reached, `stages`).
    """
    try:
        neuron, rescale = neuron_model(neuron), rescale_rule(rescale)
    except ValueError as e:
        raise ConversionError(str(e)) from None
    margin, alpha = _number("margin", margin), _number("alpha", alpha)
    if not -1 < margin < float("inf"):
        raise ConversionError(f"margin must be a finite number greater than -1 (windows B_n = (1 + margin)·X_n), "
                              f"got {margin}")
    if not 0 < alpha < float("inf"):
        raise ConversionError(f"alpha (the start current, MATH §2) must be a finite number > 0, got {alpha}")
    dtype = _model_dtype(model)
    device = _device(model, device)
    if any(t.device.type != "cpu" for t in [*model.parameters(), *model.buffers()]):
        model = copy.deepcopy(model).cpu()  # captured and lowered on the CPU; the user's model stays where it is
    batches = _batches(calibration, dtype)
    input_shape = tuple(batches[0].shape[1:])
    if input_range is None:
        p = min(float(b.min()) for b in batches)
        q = max(float(b.max()) for b in batches)
    else:
        try:
            p, q = (_number("input_range", v) for v in input_range)
        except (TypeError, ValueError):
            raise ConversionError(f"input_range must be two numbers (low, high), got {input_range!r}") from None
    if not (math.isfinite(p) and math.isfinite(q)):
        raise ConversionError(f"the input range [{p}, {q}] must be finite; give input_range=(low, high)")
    if not q > p:
        raise ConversionError(f"the input range [{p}, {q}] is empty; give input_range=(low, high) with low < high")
    settings = {"neuron": neuron, "margin": margin, "rescale": rescale, "alpha": alpha}
    calibration = [b.to(device) for b in batches]
    steps = [  # the passes after "lower", each network -> network (the network moves to `device` to calibrate)
        ("rescale", passes.rescale),
        ("calibrate", lambda net: passes.calibrate(net.to(device), calibration)),
        ("place in time", passes.place_in_time),
        ("parameterise", passes.parameterise),
    ]
    reached = passes.Stages()
    stage = "capture"
    checked: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # tensors found finite, by id
    try:
        with torch.no_grad():
            captured = passes.capture(model, batches[0][:1].cpu())
            reached = passes.Stages(tuple(captured.ops), captured.output)
            stage = "lower"
            snn = passes.check_finite(passes.lower(captured.ops, captured.output, input_shape, (p, q), dtype,
                                                   **settings), checked)
            reached = replace(reached, networks=((stage, snn),))
            for stage, step in steps:
                snn = passes.check_finite(step(snn), checked)
                if stages:
                    reached = replace(reached, networks=(*reached.networks, (stage, snn)))
    except ConversionError as exc:
        exc.stage = stage
        if stages:
            exc.stages = reached
        raise
    return reached if stages else snn


def _number(name: str, value: Any) -> float:
    """A real number given as a Python or NumPy number or a one-element tensor (not a bool or a string)."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_complex():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise ConversionError(f"{name} must be a real number, got {value!r}")
    if isinstance(value, complex):
        raise ConversionError(f"{name} must be a real number, got {value!r}")
    return float(value)


def _device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """The device asked for, else the model's parameters' (the CPU if it has none); a CUDA device this machine
    does not have is refused by name."""
    if device is None:
        return next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        return usable_device(device)
    except InputError as e:
        raise ConversionError(str(e)) from None


def _model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype conversion works in: the model's floating-point parameters' (float32 if it has none). Integer,
    boolean or complex weights would be cast silently, so they are refused by name."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_complex() or (not t.is_floating_point() and "num_batches_tracked" not in name):
            raise ConversionError(f"{name} holds {passes.dtype_name(t.dtype)} values; the converter takes "
                                  "float16, bfloat16, float32 or float64 weights")
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _batches(calibration: Any, dtype: torch.dtype) -> list[Tensor]:
    if isinstance(calibration, Tensor):
        items = [calibration]
    else:
        try:
            items = [b[0] if isinstance(b, (tuple, list)) else b for b in calibration]
        except TypeError:
            raise ConversionError(
                f"calibration must be a tensor or an iterable of batches, got {type(calibration).__name__}"
            ) from None
    items = [b for b in items if isinstance(b, Tensor) and b.numel() > 0]
    if not items:
        raise ConversionError("calibration data is empty; give representative inputs (a tensor or batches)")
    shapes = {tuple(b.shape[1:]) for b in items}
    if len(shapes) != 1:
        raise ConversionError(f"calibration batches have different input shapes: {sorted(shapes)}")
    items = [b.detach().to(dtype) for b in items]
    if not all(torch.isfinite(b).all() for b in items):
        raise ConversionError("calibration data contains NaN or inf values")
    return items
