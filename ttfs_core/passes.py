"""Conversion as named passes over frozen records (MATH §1–§5): each pass takes a `SpikingNetwork` and returns a
new one (`dataclasses.replace`), and `check_finite` runs after each (`ttfs_core.convert.convert`).

    capture → lower → rescale → calibrate → place in time → parameterise

- `capture`: the model's data-path ops (`ttfs_core.capture`).
- `lower`: the ops as spiking layers, BatchNorm, the input range and linear glue folded into one weighted sum per
  layer (`ttfs_core.lower`); no windows, no neuron parameters yet.
- `rescale`: function-preserving rescaling, Σ_j W_ij < 1 (or Σ_j max(W_ij, 0) < 1), MATH §2.
- `calibrate`: X_n and the peak drive P_n on calibration data (MATH §4).
- `place_in_time`: windows B_n, each layer's t_min, delays, start (MATH §4, §5), layers in time order.
- `parameterise`: the neuron model's J, θ and final slope (MATH §2, §7).

`convert(..., stages=True)` returns every stage (`Stages`); the explorer's inspector and the neuron playground
(`ttfs_core.neuron`) use these passes and records instead of re-running conversion's steps.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
from torch import Tensor

from .capture import Capture, Op
from .errors import ConversionError
from .fold import per_input_channel, per_output, rescale_factor
from .lower import Lowering
from .mapping import place_in_time as placement
from .mapping import window_length
from .network import SpikingNetwork
from .neurons import NeuronModel, Rescale
from .records import Layer, Synapses
from .sim.certify import certify_layer, peak_drive
from .sim.dynamics import search_in_chunks
from .sim.fanin import gather_rows, pad_input

PASSES = ("capture", "lower", "rescale", "calibrate", "place in time", "parameterise")
PEAK_SAMPLE = 64  # calibration inputs whose peak drive is measured, besides those that set some X_n


@dataclass(frozen=True, eq=False)
class Stages:
    """Every stage of one conversion: the captured ops (`output`: the node the model returns), and the network
    after each pass from "lower" on, in order (`PASSES`). A conversion that failed keeps the stages it reached."""

    ops: tuple[Op, ...] = ()
    output: str = ""
    networks: tuple[tuple[str, SpikingNetwork], ...] = ()

    def after(self, name: str) -> SpikingNetwork:
        """The network after the pass `name` ("lower", "rescale", "calibrate", "place in time", "parameterise")."""
        for stage, net in self.networks:
            if stage == name:
                return net
        raise KeyError(f"no stage {name!r}; stages: {', '.join(s for s, _ in self.networks)}")

    @property
    def lowered(self) -> tuple[Layer, ...]:
        """The lowered layers (hidden layers, then the readout), before rescaling and calibration."""
        return tuple(self.after("lower").all_layers)

    @property
    def network(self) -> SpikingNetwork:
        """The converted network (the last stage)."""
        return self.networks[-1][1]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --- the passes ------------------------------------------------------------------------------------------------
def capture(model: nn.Module, example: Tensor) -> Capture:
    """The model's data-path ops in graph order, traced on `example` (1, *input_shape)."""
    return Capture(model, example)


def lower(ops: Sequence[Op], output: str, input_shape: tuple[int, ...], input_range: tuple[float, float],
          dtype: torch.dtype, *, neuron: NeuronModel, margin: float, rescale: Rescale,
          alpha: float) -> SpikingNetwork:
    """The captured ops as spiking layers (hidden layers and the readout), windows and neuron parameters unset."""
    layers = Lowering(list(ops), output, input_shape, input_range, dtype).run()
    return SpikingNetwork(layers[:-1], layers[-1], input_shape, input_range, neuron, margin, rescale, alpha, dtype)


def rescale(snn: SpikingNetwork) -> SpikingNetwork:
    """Function-preserving rescaling (MATH §2): scale each hidden neuron's incoming weights and bias by c and
    the weights that read it by 1/c, so that Σ_j W_ij < 1 (or Σ_j max(W_ij, 0) < 1), the sums running over
    all of the neuron's inputs. A clipped (ReLU6) layer gets one factor for all its neurons, so that its clip
    value stays one number (its window). B1 is never rescaled (the network itself is returned)."""
    if not snn.neuron.rescaled:
        return snn
    layers = list(snn.all_layers)
    for n in range(len(layers) - 1):
        layer = layers[n]
        c = rescale_factor(None, snn.rescale, sums=(layer.row_sums(), layer.row_sums(positive=True)))
        clip = layer.clip
        if clip is not None:
            c = torch.full_like(c, float(c.min()))
            clip = clip * float(c[0])
        if bool((c == 1).all()):
            layers[n] = replace(layer, clip=clip)
            continue
        inputs = []
        for syn in layer.inputs:
            part = c if syn.channels is None else c[syn.channels[0]:syn.channels[1]]
            inputs.append(replace(syn, weight=syn.weight * per_output(part, syn.weight)))
        layers[n] = replace(
            layer, inputs=tuple(inputs), clip=clip,
            bias=layer.bias * c.reshape(-1, *([1] * (layer.bias.dim() - 1))),
            scale=layer.scale * c.reshape(layer.scale.shape[0], *([1] * (layer.scale.dim() - 1))))
        for m in range(n + 1, len(layers)):
            reader = layers[m]
            if n in reader.sources:
                layers[m] = replace(reader, inputs=tuple(_divide_inputs(syn, c) if syn.source == n else syn
                                                         for syn in reader.inputs))
    return replace(snn, layers=tuple(layers[:-1]), output=layers[-1])


def _divide_inputs(syn: Synapses, c: Tensor) -> Synapses:
    """The synapses reading a layer that was scaled by c, divided by c per input neuron."""
    if syn.conv is not None:
        return replace(syn, weight=syn.weight / per_input_channel(syn.weight, c, syn.conv["groups"]))
    cols = c.reshape(-1, *([1] * (len(syn.in_shape) - 1))).expand(syn.in_shape).reshape(-1)
    return replace(syn, weight=syn.weight / cols[None, :])


def calibrate(snn: SpikingNetwork, batches: list[Tensor]) -> SpikingNetwork:
    """X_n over the calibration data and the peak drive P_n (MATH §4, `_peak_drives`) of every hidden layer.
    Shape: batches[k] (B_k, *input_shape), on the network's device.

    One pass of the converted ReLU network over the calibration data (`SpikingNetwork.stream`: a layer's
    activations are let go once no later layer reads them). The activations of the first PEAK_SAMPLE inputs are
    kept from it for the peak drive when they fit in one simulation chunk (`SpikingNetwork._chunks`), so that only
    the few inputs that set an X_n beyond them are run again."""
    maxima = [0.0] * len(snn.layers)
    setters: list[tuple[int, int] | None] = [None] * len(snn.layers)  # the input that set each X_n: (batch, row)
    firsts = _firsts(batches)
    keep = sum(n for _, n in firsts) <= snn.chunk_rows  # the first inputs' activations fit in one chunk
    head: list[list[Tensor]] = []  # per chunk of the first inputs: every activation (encoded input first)
    left = PEAK_SAMPLE
    for b, batch in enumerate(batches):
        row = 0
        for chunk in snn._chunks(batch):
            take = min(left, chunk.shape[0]) if keep else 0
            kept = []
            for i, a in snn.stream(chunk):
                if take:
                    kept.append(a if take == a.shape[0] else a[:take].clone())
                if i < 0 or not a.numel():
                    continue
                per_input = a.flatten(1).amax(1)  # NaN and inf propagate to the maximum
                if not bool(torch.isfinite(per_input).all()):
                    raise ConversionError(f"layer {snn.layers[i].name}: its activations on the calibration data "
                                          f"overflow {dtype_name(snn.dtype)} (NaN or inf); the weights "
                                          "are too large for this dtype")
                top, j = per_input.max(0)
                if float(top) > maxima[i] or setters[i] is None:
                    maxima[i] = max(maxima[i], float(top))
                    setters[i] = (b, row + int(j))
            if take:
                head.append(kept)
                left -= take
            row += chunk.shape[0]
    # each setter once, and not again when it is among the first inputs (one input often sets many layers' X_n)
    extra = sorted({s for s in setters if s is not None and s[1] >= firsts[s[0]][1]})
    rows = [batches[b][r:r + 1] for b, r in extra]
    if keep:  # only the setters beyond the first inputs are run again
        sample = head + ([snn.activations(chunk) for chunk in snn._chunks(torch.cat(rows))] if rows else [])
        if len(sample) > 1 and sum(piece[0].shape[0] for piece in sample) <= snn.chunk_rows:
            sample = [_joined(sample)]  # one chunk: one certificate per layer
    else:
        sample = torch.cat([*[batch[:n] for batch, n in firsts if n], *rows])
    peaks = _peak_drives(snn, sample, maxima)
    layers = tuple(replace(layer, max_activation=x, peak_drive=p) for layer, x, p in zip(snn.layers, maxima, peaks))
    return replace(snn, layers=layers)


def _joined(pieces: list[list[Tensor]]) -> list[Tensor]:
    """Activation chunks (each as `SpikingNetwork.activations` gives them) joined into one, a layer at a time,
    letting each piece go once joined."""
    joined = []
    for i in range(len(pieces[0])):
        joined.append(torch.cat([piece[i] for piece in pieces]))
        for piece in pieces:
            piece[i] = None
    return joined


def _firsts(batches: list[Tensor]) -> list[tuple[Tensor, int]]:
    """Each batch with how many of its rows (its first ones) are among the first PEAK_SAMPLE calibration inputs."""
    out, left = [], PEAK_SAMPLE
    for batch in batches:
        out.append((batch, min(left, batch.shape[0])))
        left -= out[-1][1]
    return out


def _peak_drives(snn: SpikingNetwork, sample: Tensor | list[list[Tensor]], maxima: list[float]) -> list[float]:
    """P_n: the largest drive before the window opens, h_i(s) of `ttfs_core.certify` (a neuron fires early exactly
    when h_i(s) ≥ B_n for some s > 0), over the inputs `sample`, the layer's neurons and s ≥ 0, where it exceeds
    max(1, 1 + ζ)·X_n; X_n otherwise. So B_n = (1 + ζ)·P_n is MATH §4's (1 + ζ)·X_n unless the sample would
    fire early there, and with ζ ≥ 0 the sample then has no early spike. `sample` is the inputs (B, *input_shape),
    or their activations already computed, per chunk as `SpikingNetwork.activations` gives them.

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
    if not snn.neuron.needs_certificate(snn.rescale):
        return list(maxima)
    alpha = snn.neuron.start_current(snn.alpha)
    sizes = [1.0, *maxima]  # the largest activation of each source (the input's: 1)
    reach = max(1.0, 1.0 + snn.margin)
    windows = {}  # the layers that can fire early, with their input windows
    for n, layer in enumerate(snn.layers):
        in_window = max(sizes[syn.source + 1] for syn in layer.inputs)
        if layer.clip is None and in_window > 0:
            windows[n] = in_window
    chunks = sample if isinstance(sample, list) else snn._chunks(sample)
    trials: dict[int, Layer] = {}  # built on first use, kept while more chunks follow
    peaks = [-math.inf] * len(maxima)
    for c, chunk in enumerate(chunks):
        acts = chunk if isinstance(chunk, list) else snn.activations(chunk)
        last = c == len(chunks) - 1
        for n, in_window in windows.items():
            trial = trials.pop(n, None) or _trial_layer(snn, snn.layers[n], in_window, reach * maxima[n])
            peaks[n] = max(peaks[n], _layer_peak(trial, acts, in_window, alpha, snn.neuron))
            if not last:
                trials[n] = trial
    return [p if p >= reach * x else x for p, x in zip(peaks, maxima)]


def _trial_layer(snn: SpikingNetwork, layer: Layer, in_window: float, window: float) -> Layer:
    """A copy of the layer with the neuron parameters of input window `in_window` and window `window`."""
    weights = [syn.weight for syn in layer.inputs]
    J, theta, slope = snn.neuron.parameters(weights, layer.bias, layer.row_sums(), in_window, window, snn.alpha,
                                            [syn.channels for syn in layer.inputs])
    inputs = tuple(replace(syn, J=j) for syn, j in zip(layer.inputs, J))
    return replace(layer, inputs=inputs, theta=theta, slope=slope, in_window=in_window, window=window)


def _layer_peak(trial: Layer, acts: list[Tensor], in_window: float, alpha: float, neuron: NeuronModel) -> float:
    """The largest h_i(s) over one calibration chunk among the neurons the certificate cannot place below the
    trial window (−inf when it settles them all)."""
    xs = [syn.route_activations(acts[syn.source + 1]) for syn in trial.inputs]
    v_end = alpha * in_window + trial.weighted_sum(xs, "J")
    flagged = certify_layer(trial.inputs, xs, trial.theta, v_end, in_window, alpha).uncertified
    if not bool(flagged.any()):
        return -math.inf
    idx = flagged.nonzero(as_tuple=True)
    bias = trial.bias.expand(trial.shape)[idx[1:]]
    padded = [pad_input(syn, x, 0.0) for syn, x in zip(trial.inputs, xs)]  # a padded tap is x = 0
    weights = [syn.weight for syn in trial.inputs]

    def gather(lo: int, hi: int):
        x, w, _ = gather_rows(trial.inputs, trial.shape, padded, weights, tuple(i[lo:hi] for i in idx))
        return x, w, bias[lo:hi]

    def solve(x, w, b):
        return peak_drive(x, w, b, neuron.drive_slope(w))

    peaks = search_in_chunks(gather, len(idx[0]), sum(syn.weight[0].numel() for syn in trial.inputs), solve, bias)
    return float(peaks.max())


def place_in_time(snn: SpikingNetwork, windows: Sequence[float] | None = None) -> SpikingNetwork:
    """Consecutive windows (MATH §4, §5): the input's is [0, 1]; a layer's window opens when its last source's
    closes (each input's spikes delayed to that time, `mapping.place_in_time`) and lasts B_n = `windows[n]`
    (default: a clipped layer's clip, else (1 + ζ)·P_n); the readout's t_max is its t_min. Hidden layers come out
    sorted by the opening of their windows (parallel branches share a time), sources renumbered."""
    if windows is None:
        windows = [layer.clip if layer.clip is not None else window_length(layer.peak_drive, snn.margin)
                   for layer in snn.layers]
    t_max, lengths, layers = [1.0], [1.0], []
    for layer, window in zip(snn.layers, windows):
        layer = _placed(layer, t_max, lengths)
        layer = replace(layer, window=float(window), t_max=layer.t_min + float(window))
        layers.append(layer)
        t_max.append(layer.t_max)
        lengths.append(layer.window)
    out = _placed(snn.output, t_max, lengths)
    out = replace(out, t_max=out.t_min, window=0.0)
    return _time_order(replace(snn, layers=tuple(layers), output=out))


def _placed(layer: Layer, t_max: list[float], windows: list[float]) -> Layer:
    at = placement([syn.source for syn in layer.inputs], t_max, windows)
    inputs = tuple(replace(syn, in_window=w, delay=d) for syn, w, d in zip(layer.inputs, at.in_windows, at.delays))
    return replace(layer, inputs=inputs, t_min=at.t_min, in_window=at.in_window, start=at.start)


def _time_order(snn: SpikingNetwork) -> SpikingNetwork:
    order = sorted(range(len(snn.layers)), key=lambda n: (snn.layers[n].t_min, n))
    if order == list(range(len(snn.layers))):
        return snn
    new = {old: k for k, old in enumerate(order)}
    new[-1] = -1

    def renumbered(layer: Layer) -> Layer:
        return replace(layer, inputs=tuple(replace(syn, source=new[syn.source]) for syn in layer.inputs))

    return replace(snn, layers=tuple(renumbered(snn.layers[n]) for n in order), output=renumbered(snn.output))


def parameterise(snn: SpikingNetwork) -> SpikingNetwork:
    """The neuron model's synaptic weights J, thresholds θ and final slopes (MATH §2, §7) of every hidden layer."""
    layers = []
    for n, layer in enumerate(snn.layers):
        if any(m >= n for m in layer.sources):
            raise ConversionError(f"{layer.name}: it reads a layer that does not come before it in time")
        weights = [syn.weight for syn in layer.inputs]
        channels = [syn.channels for syn in layer.inputs]
        J, theta, slope = snn.neuron.parameters(weights, layer.bias, layer.row_sums(), layer.in_window,
                                                layer.window, snn.alpha, channels)
        inputs = tuple(replace(syn, J=j) for syn, j in zip(layer.inputs, J))
        layers.append(replace(layer, inputs=inputs, theta=theta, slope=slope))
    return replace(snn, layers=tuple(layers))


def check_finite(snn: SpikingNetwork, checked: MutableMapping[int, Tensor] | None = None) -> SpikingNetwork:
    """The network itself, unless weights so large that folding, rescaling or the neuron parameters overflow the
    dtype would give NaN or inf spike times: refused here, naming the layer, instead of simulating garbage.
    `checked` (id → tensor, e.g. a `weakref.WeakValueDictionary` kept across the passes) remembers the tensors found
    finite, so a pass that leaves a tensor as it was does not have it checked again (records are frozen)."""
    for layer in snn.all_layers:
        if not math.isfinite(layer.window) or not math.isfinite(layer.t_max):
            raise ConversionError(f"layer {layer.name}: its window is not finite (activations overflow "
                                  f"{dtype_name(snn.dtype)}); the weights are too large")
        values = [("bias", layer.bias), ("theta", layer.theta), ("slope", layer.slope)]
        values += [(what, getattr(syn, what)) for syn in layer.inputs for what in ("weight", "J")]
        for what, value in values:
            if value is None or (checked is not None and checked.get(id(value)) is value):
                continue
            if bool(torch.isfinite(value).all()):
                if checked is not None:
                    checked[id(value)] = value
            else:
                raise ConversionError(f"layer {layer.name}: its {what} overflows {dtype_name(snn.dtype)}"
                                      " after folding and rescaling (NaN or inf); the weights are too large for this "
                                      "dtype — convert a float64 copy or rescale the model")
    return snn
