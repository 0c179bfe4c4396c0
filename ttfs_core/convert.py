"""`convert`: from a PyTorch ReLU network and calibration data to a `SpikingNetwork` (MATH §1–§5).

Steps: capture the model's ops (capture.py) → lower them into spiking layers, folding BatchNorm, the input
range and any linear glue into one weighted sum per layer → rescale (function preserving) → measure X_n on
calibration data → windows → neuron parameters.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from .capture import Capture
from .certify import Fan, certify_fan, peak_drive
from .errors import ConversionError, InputError
from .fold import per_input_channel, per_output, rescale_factor
from .lower import Lowering
from .mapping import alpha_parameters, b1_parameters, window_length
from .network import Layer, SpikingNetwork, Synapses, fan_in, usable_device
from .simulate import search_in_chunks

NEURONS = ("alpha", "b1")
RESCALE = ("sum", "positive")  # the first is the default


def convert(
    model: nn.Module,
    calibration: Tensor | Iterable[Any],
    *,
    margin: float = 0.5,
    input_range: tuple[float, float] | None = None,
    neuron: str = "alpha",
    rescale: str = "sum",
    alpha: float = 1.0,
    device: torch.device | str | None = None,
) -> SpikingNetwork:
    """Convert a trained feed-forward ReLU network into an exact single-spike TTFS network.

    `calibration` is a tensor of representative inputs (B, *input_shape) or an iterable of such batches (or of
    (inputs, labels) pairs). Windows are B_n = (1 + margin)·X_n (MATH §4), X_n the layer's largest activation on
    the calibration data, or (1 + margin)·P_n where the layer's peak drive before its window opens, P_n, is larger
    than max(1, 1 + margin)·X_n on a sample of the calibration data (`_peak_drives`): a neuron driven up before
    its later inputs arrive (small excitatory inputs whose weights sum above 1, as where Inception's
    concatenations join short and long windows) would otherwise fire early on its own calibration data.
    The input range [p, q] comes from the calibration data unless given. `neuron` is "alpha" (MATH §2) or "b1"
    (MATH §7).
    `rescale` is "sum" (the default, the paper's rule Σ_j W_ij < 1: windows stay of the order of the trained
    activations, and early spikes are ruled out by the fast certificate of `ttfs_core.certify`) or "positive"
    (Σ_j max(W_ij, 0) < 1: an early spike happens exactly when a pre-activation exceeds its window, so no
    certificate is needed, but every layer shrinks the time scale, geometrically with depth: an opt-in fast mode
    whose deep windows are far too short for hardware, jitter or teaching). B1 is never rescaled.
    `device` (default: where the model's parameters are): where calibration runs and where the network lives
    (`SpikingNetwork.to`); capture and lowering, which touch each weight once, run on the CPU.
    The user's model is never modified. Raises ConversionError naming the offending node.
    """
    if neuron not in NEURONS:
        raise ConversionError(f"unknown neuron model {neuron!r}; supported: {', '.join(NEURONS)}")
    if rescale not in RESCALE:
        raise ConversionError(f"unknown rescaling {rescale!r}; supported: {', '.join(RESCALE)}")
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
    capture = Capture(model, batches[0][:1].cpu())
    with torch.no_grad():
        layers = Lowering(capture.ops, capture.output, input_shape, (p, q), dtype).run()
        hidden, output = layers[:-1], layers[-1]
        if neuron == "alpha":
            _rescale(layers, rescale)
        snn = SpikingNetwork(hidden, output, input_shape, (p, q), neuron, margin, rescale, alpha, dtype)
        snn = snn.to(device)
        _calibrate(snn, [b.to(device) for b in batches], margin)
        _neuron_parameters(snn)
        _check_finite(snn)
    return snn


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


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype conversion works in: the model's floating-point parameters' (float32 if it has none). Integer,
    boolean or complex weights would be cast silently, so they are refused by name."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_complex() or (not t.is_floating_point() and "num_batches_tracked" not in name):
            raise ConversionError(f"{name} holds {_dtype_name(t.dtype)} values; the converter takes "
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


# ---------------------------------------------------------------------------------------------------------
def _rescale(layers: list[Layer], mode: str) -> None:
    """Function-preserving rescaling (MATH §2): scale each hidden neuron's incoming weights and bias by c and
    the weights that read it by 1/c, so that Σ_j W_ij < 1 (or Σ_j max(W_ij, 0) < 1), the sums running over
    all of the neuron's inputs. A clipped (ReLU6) layer gets one factor for all its neurons, so that its clip
    value stays one number (its window)."""
    for n, layer in enumerate(layers[:-1]):
        c = rescale_factor(None, mode, sums=(layer.row_sums(), layer.row_sums(positive=True)))
        if layer.clip is not None:
            c = torch.full_like(c, float(c.min()))
            layer.clip = layer.clip * float(c[0])
        if bool((c == 1).all()):
            continue
        inputs = []
        for syn in layer.inputs:
            part = c if syn.channels is None else c[syn.channels[0]:syn.channels[1]]
            inputs.append(replace(syn, weight=syn.weight * per_output(part, syn.weight)))
        layer.inputs = tuple(inputs)
        layer.bias = layer.bias * c.reshape(-1, *([1] * (layer.bias.dim() - 1)))
        layer.scale = layer.scale * c.reshape(layer.scale.shape[0], *([1] * (layer.scale.dim() - 1)))
        for reader in layers[n + 1:]:
            if n not in reader.sources:
                continue
            reader.inputs = tuple(_divide_inputs(syn, c) if syn.source == n else syn for syn in reader.inputs)


def _divide_inputs(syn: Synapses, c: Tensor) -> Synapses:
    """The synapses reading a layer that was scaled by c, divided by c per input neuron."""
    if syn.conv is not None:
        return replace(syn, weight=syn.weight / per_input_channel(syn.weight, c, syn.conv["groups"]))
    cols = c.reshape(-1, *([1] * (len(syn.in_shape) - 1))).expand(syn.in_shape).reshape(-1)
    return replace(syn, weight=syn.weight / cols[None, :])


PEAK_SAMPLE = 64  # calibration inputs whose peak drive is measured, besides those that set some X_n


def _calibrate(snn: SpikingNetwork, batches: list[Tensor], margin: float) -> None:
    """X_n over the calibration data and the peak drive P_n, then consecutive windows (MATH §4, §5): input [0, 1],
    B_n = (1 + ζ)·X_n, or (1 + ζ)·P_n where P_n is larger still (`_peak_drives`), a clipped layer's its clip."""
    maxima = [0.0] * len(snn.layers)
    setters: list[tuple[int, int] | None] = [None] * len(snn.layers)  # the input that set each X_n: (batch, row)
    for b, batch in enumerate(batches):
        row = 0
        for chunk in snn._chunks(batch):
            acts, _ = snn.ann_forward(chunk)
            for i, a in enumerate(acts):
                if not bool(torch.isfinite(a).all()):
                    raise ConversionError(f"layer {snn.layers[i].name}: its activations on the calibration data "
                                          f"overflow {_dtype_name(snn.dtype)} (NaN or inf); the weights "
                                          "are too large for this dtype")
                if not a.numel():
                    continue
                top, j = a.flatten(1).amax(1).max(0)
                if float(top) > maxima[i] or setters[i] is None:
                    maxima[i] = max(maxima[i], float(top))
                    setters[i] = (b, row + int(j))
            row += chunk.shape[0]
    head, left = [], PEAK_SAMPLE
    for batch in batches:
        if left > 0:
            head.append(batch[:left])
            left -= head[-1].shape[0]
    # each setter once, and not again when it is among the first inputs (one input often sets many layers' X_n)
    firsts = {(b, r) for b, h in enumerate(head) for r in range(h.shape[0])}
    extra = sorted({s for s in setters if s is not None} - firsts)
    sample = torch.cat([*head, *[batches[b][r:r + 1] for b, r in extra]])
    peaks = _peak_drives(snn, sample, maxima)
    t_max, windows = [1.0], [1.0]  # the input layer's window is [0, 1]
    for layer, x_max, peak in zip(snn.layers, maxima, peaks):
        layer.max_activation = x_max
        layer.peak_drive = peak
        _place_in_time(layer, t_max, windows)
        layer.window = layer.clip if layer.clip is not None else window_length(peak, margin)
        layer.t_max = layer.t_min + layer.window
        t_max.append(layer.t_max)
        windows.append(layer.window)
    out = snn.output
    _place_in_time(out, t_max, windows)
    out.t_max = out.t_min
    out.window = 0.0
    _time_order(snn)


def _peak_drives(snn: SpikingNetwork, sample: Tensor, maxima: list[float]) -> list[float]:
    """P_n: the largest drive before the window opens, h_i(s) of `ttfs_core.certify` (a neuron fires early exactly
    when h_i(s) ≥ B_n for some s > 0), over the inputs `sample`, the layer's neurons and s ≥ 0, where it exceeds
    max(1, 1 + ζ)·X_n; X_n otherwise. So B_n = (1 + ζ)·P_n is MATH §4's (1 + ζ)·X_n unless the sample would
    fire early there, and with ζ ≥ 0 the sample then has no early spike.

    h(0) is the pre-activation, and h falls from there whenever Σ_{x_j ≤ s} W_ij < 1, as under the positive-part
    rescaling (P_n = X_n, skipped). Under the paper's rule Σ_j W_ij < 1 the positive weights of a neuron's
    inputs with small x_j may sum above 1, and h then rises between them and the larger ones: measured on
    Inception-v3, whose concatenations join sources with windows 54 and 1,204 τ_c, B_n = 1.5·X_n left 81 early
    spikes on its own calibration data. h does not depend on any window (above the largest input it falls or
    stays level), so P_n comes from the activations alone: the fast certificate, with the parameters of the
    window max(1, 1 + ζ)·X_n, settles almost every neuron below it, and the rest get their exact peak
    (`peak_drive`). The sample is the first PEAK_SAMPLE calibration inputs and each input that set an X_n: a
    full certificate over thousands of calibration inputs would cost as much as simulating them (measured on
    VGG16-BN: 25 s for 512 inputs against 2.3 s for the rest of the conversion). Clipped (gated) layers cannot
    fire early and are skipped."""
    if snn.neuron == "alpha" and snn.rescale == "positive":
        return list(maxima)
    alpha = snn.alpha if snn.neuron == "alpha" else 0.0
    sizes = [1.0, *maxima]  # the largest activation of each source (the input's: 1)
    reach = max(1.0, 1.0 + snn.margin)
    trials = {}
    for n, layer in enumerate(snn.layers):
        in_window = max(sizes[syn.source + 1] for syn in layer.inputs)
        if layer.clip is None and in_window > 0:
            trials[n] = (_trial_layer(snn, layer, in_window, reach * maxima[n]), in_window)
    peaks = [-math.inf] * len(maxima)
    for chunk in snn._chunks(sample):
        acts = snn.activations(chunk)
        for n, (trial, in_window) in trials.items():
            peaks[n] = max(peaks[n], _layer_peak(trial, acts, in_window, alpha, snn.neuron == "b1"))
    return [p if p >= reach * x else x for p, x in zip(peaks, maxima)]


def _trial_layer(snn: SpikingNetwork, layer: Layer, in_window: float, window: float) -> Layer:
    """A copy of the layer with the neuron parameters of input window `in_window` and window `window`."""
    weights = [syn.weight for syn in layer.inputs]
    if snn.neuron == "alpha":
        J, theta, slope = alpha_parameters(weights, layer.bias, layer.row_sums(), in_window, window, snn.alpha,
                                           [syn.channels for syn in layer.inputs])
    else:
        J, theta, slope = b1_parameters(weights, layer.bias, window)
    inputs = tuple(replace(syn, J=j) for syn, j in zip(layer.inputs, J))
    return replace(layer, inputs=inputs, theta=theta, slope=slope, in_window=in_window, window=window)


def _layer_peak(trial: Layer, acts: list[Tensor], in_window: float, alpha: float, b1: bool) -> float:
    """The largest h_i(s) over one calibration chunk among the neurons the certificate cannot place below the
    trial window (−inf when it settles them all)."""
    xs = [syn.route_activations(acts[syn.source + 1]) for syn in trial.inputs]
    v_end = alpha * in_window + trial.weighted_sum(xs, "J")
    fan = [Fan(x, syn.J, syn.conv, syn.channels) for syn, x in zip(trial.inputs, xs)]
    flagged = certify_fan(fan, trial.theta, v_end, in_window, alpha).uncertified
    if not bool(flagged.any()):
        return -math.inf
    idx = flagged.nonzero(as_tuple=True)
    bias = trial.bias.expand(trial.shape)[idx[1:]]

    def gather(lo: int, hi: int):
        x, w, _ = fan_in(trial, xs, tuple(i[lo:hi] for i in idx), 0.0, which="weight")
        return x, w, bias[lo:hi]

    def solve(x, w, b):
        kappa = w.sum(1) if b1 else torch.ones_like(b)
        return peak_drive(x, w, b, kappa)

    peaks = search_in_chunks(gather, len(idx[0]), sum(syn.weight[0].numel() for syn in trial.inputs), solve, bias)
    return float(peaks.max())


def _place_in_time(layer: Layer, t_max: list[float], windows: list[float]) -> None:
    """A layer's window opens when its last source's closes; each input's spikes are delayed to that time, so
    the neuron integrates from t_min − (the longest source window) (MATH §5, residual)."""
    layer.t_min = max(t_max[m + 1] for m in layer.sources)
    layer.inputs = tuple(replace(syn, in_window=windows[syn.source + 1], delay=layer.t_min - t_max[syn.source + 1])
                         for syn in layer.inputs)
    layer.in_window = max(syn.in_window for syn in layer.inputs)
    layer.start = layer.t_min - layer.in_window


def _time_order(snn: SpikingNetwork) -> None:
    """Hidden layers sorted by the opening of their windows (parallel branches share a time), sources renumbered."""
    order = sorted(range(len(snn.layers)), key=lambda n: (snn.layers[n].t_min, n))
    if order == list(range(len(snn.layers))):
        return
    new = {old: k for k, old in enumerate(order)}
    new[-1] = -1
    for layer in snn.all_layers:
        layer.inputs = tuple(replace(syn, source=new[syn.source]) for syn in layer.inputs)
    snn.layers = [snn.layers[n] for n in order]


def _check_finite(snn: SpikingNetwork) -> None:
    """Weights so large that folding, rescaling or the neuron parameters overflow the dtype would give NaN or inf
    spike times; refuse them here, naming the layer, instead of simulating garbage."""
    for layer in snn.all_layers:
        if not math.isfinite(layer.window) or not math.isfinite(layer.t_max):
            raise ConversionError(f"layer {layer.name}: its window is not finite (activations overflow "
                                  f"{_dtype_name(snn.dtype)}); the weights are too large")
        values = [("bias", layer.bias), ("theta", layer.theta), ("slope", layer.slope)]
        values += [(what, getattr(syn, what)) for syn in layer.inputs for what in ("weight", "J")]
        for what, value in values:
            if value is not None and not bool(torch.isfinite(value).all()):
                raise ConversionError(f"layer {layer.name}: its {what} overflows {_dtype_name(snn.dtype)}"
                                      " after folding and rescaling (NaN or inf); the weights are too large for this "
                                      "dtype — convert a float64 copy or rescale the model")


def _neuron_parameters(snn: SpikingNetwork) -> None:
    for n, layer in enumerate(snn.layers):
        if any(m >= n for m in layer.sources):
            raise ConversionError(f"{layer.name}: it reads a layer that does not come before it in time")
        weights = [syn.weight for syn in layer.inputs]
        channels = [syn.channels for syn in layer.inputs]
        if snn.neuron == "alpha":
            J, layer.theta, layer.slope = alpha_parameters(weights, layer.bias, layer.row_sums(), layer.in_window,
                                                           layer.window, snn.alpha, channels)
        else:
            J, layer.theta, layer.slope = b1_parameters(weights, layer.bias, layer.window)
        layer.inputs = tuple(replace(syn, J=j) for syn, j in zip(layer.inputs, J))
