"""The converted network: spiking layers, their windows and neuron parameters, and the exact simulator."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .capture import apply_op
from .certify import STAGES, Fan, certify_fan
from .errors import InputError
from .mapping import encode_input
from .result import LayerResult, SimResult, merge_counts
from .simulate import (
    Pool,
    crossing_after_inputs,
    first_crossing,
    gate_at_window_start,
    place,
    search_in_chunks,
    settle_spikes,
)
from .stepped import hidden_layer_loop, on_ticks, quantise_input, tick_of, ticks_per_window

Perturb = Callable[[int, Tensor, float], Tensor]
BATCH_ELEMENTS = 1 << 25  # neurons of the largest layer × batch simulated at once (bounds memory)
MAX_RESULT_BYTES = 4 << 30  # a simulation keeps every layer's spike times: larger batches must be split by the caller


@dataclass(frozen=True)
class Probe:
    """Where the original model computes a layer's activation: relu(scale·value(node) + shift) or value(node)."""

    node: str
    scale: Tensor | None = None
    shift: Tensor | None = None
    relu: bool = False

    def read(self, value: Tensor) -> Tensor:
        if self.scale is not None:
            shape = (1, -1, *([1] * (value.dim() - 2)))
            value = value * self.scale.reshape(shape) + self.shift.reshape(shape)
        return value.clamp(min=0) if self.relu else value


class _Freezable:
    """Records that can be frozen (shared read-only): once `_frozen` is set, assigning an attribute raises, and
    `copy.deepcopy` gives a writable copy."""

    def __setattr__(self, name: str, value: Any) -> None:
        _refuse_if_frozen(self, name)
        object.__setattr__(self, name, value)

    def __deepcopy__(self, memo: dict) -> Any:
        return _thawed_copy(self, memo)


@dataclass(frozen=True, eq=False)
class Synapses:
    """One input of a layer: the spike times of layer `source` (−1: the input layer), routed through `route` (max
    pooling on spike times), then one weighted sum — a convolution (`conv` holds stride, padding, dilation,
    groups) or a dense map on the flattened input — into the layer's output channels `channels` = [lo, hi)
    (None: all of them; a channel concatenation gives each part its own range).

    A layer reads any number of earlier layers (MATH §5, residual). Each source fires in its own window of length
    `in_window`; its spikes are delayed by `delay` = t_min − t_max(source) so that every input of the layer shares
    one code, x = t_min − t (`arrivals`). `weight` is the folded and rescaled ReLU-layer weight, `J` the synaptic
    weight of the neuron model (MATH §2, §7), set after calibration. Shapes per sample; `in_shape` is the routed
    shape."""

    source: int
    route: tuple[Pool, ...]
    in_shape: tuple[int, ...]
    weight: Tensor
    conv: dict[str, Any] | None
    channels: tuple[int, int] | None = None
    J: Tensor | None = None
    in_window: float = 1.0
    delay: float = 0.0

    def route_activations(self, a: Tensor) -> Tensor:
        for pool in self.route:
            a = pool.activations(a)
        return a

    def route_times(self, t: Tensor) -> Tensor:
        for pool in self.route:
            t = pool.times(t)
        return t

    def apply(self, x: Tensor, w: Tensor, part_shape: tuple[int, ...]) -> Tensor:
        """Σ_j w_ij x_j for the output channels this input drives. Shape: x (B, *in_shape) -> (B, *part_shape)."""
        if self.conv is not None:
            return F.conv2d(x, w, None, **self.conv)
        return F.linear(x.flatten(1), w).reshape(x.shape[0], *part_shape)

    def tensors(self) -> list[Tensor]:
        out = [t for t in (self.weight, self.J) if t is not None]
        return out + [p.sign for p in self.route if p.sign is not None]


@dataclass
class Layer(_Freezable):
    """One layer of neurons: a hidden spiking layer, or the non-spiking readout (`is_output`).

    It reads one or more earlier layers through its `inputs` (`Synapses`: source, routing, weights, delay);
    `bias` is the folded and rescaled ReLU-layer bias, possibly a position-dependent map (zero padding after a
    folded BatchNorm, MATH §5). `scale` is the factor c of the rescaling (converted activation = c · original
    activation). A layer with one input also answers `source`, `route`, `in_shape`, `weight`, `conv` and `J`.
    Shapes are per sample; `bias` and `scale` broadcast to `shape`.
    """

    name: str
    op: str
    inputs: tuple[Synapses, ...]
    shape: tuple[int, ...]
    bias: Tensor
    probe: Probe
    scale: Tensor
    is_output: bool = False
    readout: tuple[Any, ...] = ()  # output only: captured ops applied to the readout potentials (pooling...)
    # set by calibration
    max_activation: float = 0.0
    peak_drive: float = 0.0  # P_n ≥ X_n: the largest drive before t_min on the calibration data (convert)
    start: float = 0.0  # t_min − in_window: the neuron starts integrating (t_min^(n−1) in a chain)
    t_min: float = 0.0
    t_max: float = 0.0
    in_window: float = 1.0  # t_min − start: the longest window among the layers read, B_(n−1) in a chain
    window: float = 0.0  # B_n = t_max − t_min (0 for the readout)
    clip: float | None = None  # ReLU6 / clipped ReLU: the gated neuron (MATH §2) saturates at B_n = clip
    # neuron parameters (MATH §2 / §7), set after calibration
    theta: Tensor | None = None
    slope: Tensor | None = None
    # provenance (lower): (name, kind, description) of every captured op of the original model this layer absorbed
    # (its conv / Linear, BatchNorms, pooling routed into it, flatten, the ReLU that closes it); () if unknown
    absorbed: tuple[tuple[str, str, str], ...] = ()
    _frozen: bool = field(default=False, init=False, repr=False, compare=False)

    @classmethod
    def chain(cls, *, source: int, route, in_shape, weight: Tensor, conv, J: Tensor | None = None,
              **fields) -> Layer:
        """A layer with a single input (the layers of a chain of ReLU layers)."""
        syn = Synapses(source, tuple(route), tuple(in_shape), weight, conv, None, J)
        return cls(inputs=(syn,), **fields)

    def _single(self) -> Synapses:
        if len(self.inputs) != 1:
            raise AttributeError(f"layer {self.name} reads {len(self.inputs)} layers; use layer.inputs")
        return self.inputs[0]

    source = property(lambda self: self._single().source)
    route = property(lambda self: self._single().route)
    in_shape = property(lambda self: self._single().in_shape)
    conv = property(lambda self: self._single().conv)

    @property
    def weight(self) -> Tensor:
        return self._single().weight

    @weight.setter
    def weight(self, value: Tensor) -> None:
        self.inputs = (replace(self._single(), weight=value),)

    @property
    def J(self) -> Tensor | None:
        return self._single().J

    @J.setter
    def J(self, value: Tensor | None) -> None:
        self.inputs = (replace(self._single(), J=value),)

    @property
    def sources(self) -> tuple[int, ...]:
        """The layers this one reads (−1: the input layer), one per input."""
        return tuple(s.source for s in self.inputs)

    def tensors(self) -> list[Tensor]:
        """Every tensor this layer holds (parameters, pooling signs, probe affine, readout op parameters)."""
        out = [t for t in (self.bias, self.scale, self.theta, self.slope) if t is not None]
        out += [t for syn in self.inputs for t in syn.tensors()]
        out += [t for t in (self.probe.scale, self.probe.shift) if t is not None]
        out += [v for op in self.readout for v in op.params.values() if isinstance(v, Tensor)]
        return out

    @property
    def neurons(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def kind(self) -> str:
        return "conv" if len(self.shape) == 3 else "linear"

    def part_shape(self, syn: Synapses) -> tuple[int, ...]:
        """The shape of the part of this layer one input drives."""
        if syn.channels is None:
            return self.shape
        return (syn.channels[1] - syn.channels[0], *self.shape[1:])

    def weighted_sum(self, xs: list[Tensor], which: str = "weight") -> Tensor:
        """Σ_k Σ_j w_kij x_kj for every neuron over all inputs k, no bias; `which` is "weight" (the ReLU layer's)
        or "J" (the neuron model's). Shape: xs[k] (B, *inputs[k].in_shape) -> (B, *shape)."""
        parts = [(syn.channels, syn.apply(x, getattr(syn, which), self.part_shape(syn)))
                 for syn, x in zip(self.inputs, xs)]
        return place(parts, self.shape, xs[0])

    def row_sums(self, which: str = "weight", positive: bool = False) -> Tensor:
        """Σ_j w_ij per neuron over all inputs (zero-padded taps included; max(w, 0) if `positive`), per output
        channel of a convolutional layer (the same at every position) or per neuron of a dense one.
        Shape: -> (C,) or (N,)."""
        out = None
        for syn in self.inputs:
            w = getattr(syn, which)
            w = w.clamp(min=0) if positive else w
            sums = w.sum(tuple(range(1, w.dim())))
            if out is None:
                out = sums.new_zeros(self.shape[0] if len(self.shape) == 3 else self.neurons)
            lo, hi = syn.channels if syn.channels is not None else (0, out.shape[0])
            out[lo:hi] += sums
        return out

    def ann(self, acts: list[Tensor]) -> Tensor:
        """The ReLU layer this spiking layer implements, on activations (the converted network's units).
        `acts[m + 1]` is the activation of layer m (acts[0]: the encoded input)."""
        xs = [syn.route_activations(acts[syn.source + 1]) for syn in self.inputs]
        z = self.weighted_sum(xs) + self.bias
        if self.is_output:
            return z
        return z.clamp(min=0) if self.clip is None else z.clamp(0, self.clip)


@dataclass
class SpikingNetwork(_Freezable):
    """A ReLU network converted to a single-spike TTFS network (MATH §1–§4). Built by `ttfs_core.convert`."""

    layers: list[Layer]  # hidden spiking layers, in time order
    output: Layer
    input_shape: tuple[int, ...]
    input_range: tuple[float, float]
    neuron: str = "alpha"
    margin: float = 0.5
    rescale: str = "sum"
    alpha: float = 1.0
    dtype: torch.dtype = torch.float64
    _frozen: bool = field(default=False, init=False, repr=False, compare=False)

    def freeze(self) -> SpikingNetwork:
        """Make this network read-only, so that one converted network can be shared by many users (the explorer
        caches one per setting): the network and its layers refuse attribute assignment, and an in-place change of
        any of its tensors (PyTorch has no read-only tensors) is detected by their version counters and refused at
        the next simulation. `copy.deepcopy` gives a writable copy. Returns the network itself."""
        for layer in self.all_layers:
            object.__setattr__(layer, "_frozen", True)
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "_versions", [(t, t._version) for la in self.all_layers for t in la.tensors()])
        object.__setattr__(self, "_frozen", True)
        return self

    def _check_intact(self) -> None:
        for t, version in self.__dict__.get("_versions", ()):
            if t._version != version:
                raise RuntimeError("this network is frozen (shared read-only) but one of its tensors was changed in "
                                   "place; convert it again, and change copies (copy.deepcopy) only")

    @property
    def frozen(self) -> bool:
        return self._frozen

    @property
    def device(self) -> torch.device:
        """Where the network's tensors live; `run` simulates there (inputs are moved to it)."""
        return self.output.bias.device

    def _on(self, device: torch.device | str) -> SpikingNetwork:
        """`to(device)`, kept for the next call when this network is frozen (it cannot change, so neither can the
        copy)."""
        if not self.frozen:
            return self.to(device)
        copies = self.__dict__.setdefault("_copies", {})
        key = str(torch.device(device))
        if key not in copies:
            copies[key] = self.to(device)
        return copies[key]

    def to(self, device: torch.device | str) -> SpikingNetwork:
        """This network with every tensor on `device` (itself when already there): a copy, frozen if this one is.
        Raises InputError for a device this machine does not have."""
        device = usable_device(device)
        if device == self.device or (device.index is None and device.type == self.device.type):
            return self
        memo = {id(t): t.to(device) for t in _tensors_in(self)}
        net = copy.deepcopy(self, memo)  # a thawed copy (`_thawed_copy`) that reuses the moved tensors
        return net.freeze() if self.frozen else net

    @property
    def decision_time(self) -> float:
        """t_min^(L) = 1 + Σ_n B_n: when the readout is taken, in units of τ_c (MATH §3)."""
        return self.output.t_min

    @property
    def decision_latency(self) -> float:
        """The same as `decision_time` (its older name)."""
        return self.decision_time

    @property
    def windows(self) -> list[float]:
        """B_n = t_max^(n) − t_min^(n) of every hidden spiking layer, in units of τ_c, in time order."""
        return [layer.window for layer in self.layers]

    @property
    def smallest_window(self) -> float:
        """The shortest hidden window in τ_c: the time resolution a chip or a jitter study has to respect."""
        return min(self.windows, default=1.0)

    @property
    def all_layers(self) -> list[Layer]:
        return [*self.layers, self.output]

    def reads(self, layer: Layer) -> str:
        """Which layers `layer` reads, with the delay of each (τ_c) when it is not 0: "conv1 + relu (delay 3.1)"."""
        parts = []
        for syn in layer.inputs:
            name = "input" if syn.source < 0 else self.layers[syn.source].name
            parts.append(f"{name} (delay {syn.delay:.3g})" if syn.delay > 0 else name)
        return " + ".join(parts)

    def summary(self) -> list[dict[str, Any]]:
        """One row per spiking layer (and the readout): name, op, output shape, neurons, X_n, t_min, t_max, the
        window B_n (τ_c; 0 for the readout) and the layers it reads (`reads`)."""
        rows = []
        for layer in self.all_layers:
            rows.append({
                "layer": layer.name, "op": layer.op, "shape": "×".join(map(str, layer.shape)),
                "neurons": layer.neurons, "X_n": layer.max_activation,
                "t_min": layer.t_min, "t_max": layer.t_max, "window": layer.window, "spiking": not layer.is_output,
                "reads": self.reads(layer),
            })
        return rows

    # ------------------------------------------------------------------------------------------------------
    def _check_input(self, x: Tensor) -> Tensor:
        self._check_intact()
        if not isinstance(x, Tensor):
            raise InputError(f"expected a tensor, got {type(x).__name__}")
        if x.is_complex():
            raise InputError(f"the input holds complex values ({x.dtype}); the network takes real numbers")
        if tuple(x.shape[1:]) != self.input_shape:
            raise InputError(
                f"input of shape {tuple(x.shape)} does not fit: the network takes (batch, "
                f"{', '.join(map(str, self.input_shape))})"
            )
        per_sample = sum(layer.neurons for layer in self.all_layers) * torch.finfo(self.dtype).bits // 8
        if x.shape[0] * per_sample > MAX_RESULT_BYTES:
            fit = max(1, MAX_RESULT_BYTES // per_sample)
            raise InputError(f"{x.shape[0]:,} inputs at once would keep {x.shape[0] * per_sample / 2**30:.1f} GiB of "
                             f"spike times; simulate at most {fit:,} at a time (e.g. a loop over x.split({fit}))")
        x = x.to(self.device, self.dtype)
        if not torch.isfinite(x).all():
            raise InputError("the input contains NaN or inf values")
        return x

    def _chunks(self, x: Tensor) -> list[Tensor]:
        biggest = max(layer.neurons for layer in self.all_layers)
        size = max(1, BATCH_ELEMENTS // max(biggest, 1))
        return list(x.split(size)) if x.shape[0] else [x]

    def ann_forward(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """The converted ReLU network on activations (no spikes): hidden activations and logits.

        Used for calibration and as a check of the folding. Shape: x (B, *input_shape) raw input values.
        """
        acts = self.activations(x)
        logits = self.output.ann(acts)
        return acts[1:], self._readout(logits)

    def activations(self, x: Tensor) -> list[Tensor]:
        """The encoded input (MATH §1) followed by every hidden layer's ReLU activation: `acts[m + 1]` is layer
        m's, the indexing of `Layer.ann`. Shape: x (B, *input_shape) raw input values."""
        x = self._check_input(x)
        p, q = self.input_range
        acts = [((x - p) / (q - p)).clamp(0, 1)]
        for layer in self.layers:
            acts.append(layer.ann(acts))
        return acts

    def _readout(self, v: Tensor) -> Tensor:
        for op in self.output.readout:
            v = apply_op(op, v)
        return v

    @torch.no_grad()
    def run(self, x: Tensor, *, perturb: Perturb | None = None, device: torch.device | str | None = None) -> SimResult:
        """Exact event-driven simulation (MATH §6). Shape: x (B, *input_shape) raw input values.

        `perturb(layer_index, offsets, window)` may alter every layer's spike times (offsets from the window
        start; layer −1 is the input layer) before the next layer reads them: quantisation, jitter.
        `device`: simulate there (default: where the network is, `device`); the result's tensors are there too.
        """
        if device is not None and torch.device(device) != self.device:
            return self._on(device).run(x, perturb=perturb)
        x = self._check_input(x)

        def hidden(layer: Layer, n: int, srcs: list[Tensor]):
            return hidden_layer_exact(layer, srcs, self.alpha, self.neuron, self.rescale)

        parts = [self._simulate(chunk, hidden, None, perturb) for chunk in self._chunks(x)]
        return _concat(parts)

    @torch.no_grad()
    def run_stepped(self, x: Tensor, dt: float | None = None, *, steps: int | None = None,
                    method: str = "fast", device: torch.device | str | None = None) -> SimResult:
        """Time-stepped (clock-driven) simulation (MATH §6; see `ttfs_core.stepped`).

        `dt`: the longest tick (units of τ_c): every window gets ceil(B/dt) equal ticks. `steps`: ticks per
        window instead. `method`: "fast" (the discrete dynamics solved per neuron) or "loop" (the literal
        tick-by-tick loop); both give the same spikes. Shape: x (B, *input_shape).
        """
        if (dt is None) == (steps is None):
            raise ValueError("give exactly one of dt (tick length, > 0) or steps (ticks per window, ≥ 1)")
        if (dt is not None and not dt > 0) or (steps is not None and int(steps) < 1):
            raise ValueError(f"dt must be > 0 and steps ≥ 1, got dt={dt}, steps={steps}")
        if method not in ("fast", "loop"):
            raise ValueError(f"unknown method {method!r}; use 'fast' or 'loop'")
        if device is not None and torch.device(device) != self.device:
            return self._on(device).run_stepped(x, dt, steps=steps, method=method)
        x = self._check_input(x)
        ticks = [ticks_per_window(1.0, dt, steps)] + [ticks_per_window(la.window, dt, steps) for la in self.layers]
        b1 = self.neuron == "b1"

        def hidden(layer: Layer, n: int, srcs: list[Tensor]):
            in_ticks, own = ticks_per_window(layer.in_window, dt, steps), ticks[n + 1]
            if method == "loop":
                return hidden_layer_loop(layer, srcs, in_ticks, own, self.alpha, self.neuron)
            # inputs from a layer on another clock than the neuron's input window arrive at its next tick
            clocks = [(syn.in_window == layer.in_window and ticks[syn.source + 1] == in_ticks) for syn in layer.inputs]
            arrive = None if all(clocks) else partial(arrival_ticks, layer, in_ticks, clocks)
            off, stats = hidden_layer_exact(layer, srcs, self.alpha, self.neuron, self.rescale, arrive)
            off = on_ticks(off, layer.window, own, layer.in_window, in_ticks)
            off, settled = settle_spikes(off, layer.window, b1, stats["early_arrivals"])
            return off, {**stats, **settled}

        def encode(t0: Tensor) -> Tensor:
            return quantise_input(t0, ticks[0])

        parts = [self._simulate(chunk, hidden, encode, None) for chunk in self._chunks(x)]
        res = _concat(parts)
        return SimResult(res.logits, res.layers, res.input_times, res.input_clipped, res.decision_time, dt,
                         tuple(ticks))

    def save(self, path) -> None:
        """Write this network to a safetensors file (no code, no pickle); `ttfs_core.load` reads it back."""
        from .persist import save_network  # persist builds on this module

        save_network(self, path)

    def trace(self, x: Tensor, layer: str | int, index: int | tuple[int, ...], *, result: SimResult | None = None,
              dt: float | None = None, steps: int | None = None):
        """Exact membrane trace of one neuron, and its clock-driven trace for dt or steps (`ttfs_core.trace`)."""
        from .trace import neuron_trace  # trace builds on this module

        return neuron_trace(self, x, layer, index, result=result, dt=dt, steps=steps)

    def membrane(self, x: Tensor, layer: str | int, index: int | tuple[int, ...], times,
                 result: SimResult | None = None) -> Tensor:
        """Exact V(t) of one neuron at absolute times (MATH §2). Shape: times (T,) -> (T,)."""
        from .trace import membrane

        return membrane(self, x, layer, index, times, result)

    def _simulate(self, x: Tensor, hidden, encode, perturb: Perturb | None) -> SimResult:
        p, q = self.input_range
        t0, clipped = encode_input(x, p, q)
        if encode is not None:
            t0 = encode(t0)
        if perturb is not None:
            t0 = perturb(-1, t0, 1.0)
        offsets = [t0]  # spike times relative to each layer's window start (the input window starts at 0)
        results = []
        for n, layer in enumerate(self.layers):
            off, stats = hidden(layer, n, [offsets[m + 1] for m in layer.sources])
            results.append(LayerResult(layer.name, layer.op, off, layer.t_min, layer.t_max, layer.window, **stats))
            offsets.append(off if perturb is None else perturb(n, off, layer.window))
        logits = readout_potential(self.output, [offsets[m + 1] for m in self.output.sources])
        clipped_count = int(torch.count_nonzero(clipped))
        return SimResult(self._readout(logits), results, t0, clipped_count, self.output.t_min)

    def __repr__(self) -> str:
        return (f"SpikingNetwork({len(self.layers)} spiking layers, neuron={self.neuron!r}, "
                f"rescale={self.rescale!r}, decision time {self.decision_time:.4g} τ_c, smallest window "
                f"{self.smallest_window:.3g} τ_c, dtype={self.dtype})")


def _refuse_if_frozen(record: Any, name: str) -> None:
    if record.__dict__.get("_frozen", False):
        raise AttributeError(f"cannot set {name!r}: this {type(record).__name__} is frozen (shared read-only); "
                             "change a copy.deepcopy of it instead")


def usable_device(device: torch.device | str) -> torch.device:
    """`device` as a torch.device this machine has; InputError naming it otherwise (a misspelt device, CUDA asked
    for on a machine without it)."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"device {device!r} is not a device ({e}); use 'cpu' or 'cuda'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device} asked for, but this machine has no CUDA device (use 'cpu')")
    return device


_CACHES = ("_versions", "_copies")  # what a frozen network keeps about itself: never copied or moved with it


def _tensors_in(obj: Any, seen: set[int] | None = None) -> list[Tensor]:
    """Every tensor a network holds: in its records' attributes, tuples, lists and dicts (each object once)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, dict):
        items = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        items = list(obj)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        items = [v for k, v in vars(obj).items() if k not in _CACHES]
    else:
        return []
    return [t for item in items for t in _tensors_in(item, seen)]


def _thawed_copy(record: Any, memo: dict) -> Any:
    """A deep copy that is writable again (tensors become ordinary tensors)."""
    new = object.__new__(type(record))
    memo[id(record)] = new
    for key, value in record.__dict__.items():
        if key not in _CACHES:
            new.__dict__[key] = copy.deepcopy(value, memo)
    new.__dict__["_frozen"] = False
    new.__dict__.pop("_versions", None)
    if isinstance(new.__dict__.get("layers"), tuple):
        new.__dict__["layers"] = list(new.__dict__["layers"])
    return new


def _concat(parts: list[SimResult]) -> SimResult:
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    layers = []
    for i, layer in enumerate(first.layers):
        group = [p.layers[i] for p in parts]
        layers.append(LayerResult(
            layer.name, layer.op, torch.cat([g.offsets for g in group]), layer.t_min, layer.t_max, layer.window,
            sum(g.early_spikes for g in group), sum(g.early_arrivals for g in group),
            sum(g.forced for g in group), sum(g.spikes for g in group),
            merge_counts(g.certificate for g in group),
            sum(g.searched for g in group), sum(g.saturated for g in group),
        ))
    return SimResult(torch.cat([p.logits for p in parts]), layers, torch.cat([p.input_times for p in parts]),
                     sum(p.input_clipped for p in parts), first.decision_time, first.dt)


def arrivals(layer: Layer, srcs: list[Tensor]) -> tuple[list[Tensor], int]:
    """How long each input has been driving the neurons at the end of their input window, t_min − t_j.

    Input k's spikes are routed (max pooling = earliest spike) and delayed by t_min − t_max(source) (MATH §5,
    residual), so an input with activation x arrives at t_min − x whichever layer it came from: the elapsed
    time is the source's window minus its offset. An input that arrived before the neurons started (its layer
    fired early) is taken as arriving at the start (MATH §6); a missing spike (B1) drives nothing.
    Returns the elapsed times per input, in [0, in_window], and the count of inputs from early spikes.
    Shape: srcs[k] (B, *source k) -> (B, *inputs[k].in_shape).
    """
    out, early = [], 0
    for syn, src in zip(layer.inputs, srcs):
        t = syn.route_times(src)
        early += int(torch.count_nonzero(t < 0))
        out.append((syn.in_window - t.clamp(min=0)).clamp(0, layer.in_window))
    return out, early


def arrival_ticks(layer: Layer, in_ticks: int, on_clock: list[bool], elapsed: list[Tensor]) -> list[Tensor]:
    """Elapsed times of inputs whose source runs on another clock, moved to the neuron's next input tick
    (clock-driven simulation, `ttfs_core.stepped`): an arrival at time a after the neuron's start is seen at
    tick ceil(a / h). Shape: as `arrivals`."""
    h = layer.in_window / in_ticks
    out = []
    for e, same in zip(elapsed, on_clock):
        if same:
            out.append(e)
            continue
        k = tick_of(layer.in_window - e, h, first=True, ticks=in_ticks).clamp(0, in_ticks)
        out.append(layer.in_window - k * h)
    return out


def hidden_layer_exact(layer: Layer, srcs: list[Tensor], alpha: float, neuron: str, rescale: str, arrive=None):
    """Spike times of one hidden layer from the spike times of its sources (MATH §2, §5, §6, §7).

    Every neuron's potential at the end of its input window, V(t_min), is one weighted sum of input spike
    times; after that the potential is linear, so the crossing has a closed form. It is the spike unless the
    neuron crossed earlier. Under the positive-part rescaling (α-model) that happens exactly when V(t_min) > θ;
    otherwise the fast certificate (`ttfs_core.certify`, MATH §2) proves it impossible for almost every neuron.
    The rest are searched exactly over their input segments. Times are offsets from window starts (sources'
    for the inputs, this layer's t_min for the output). `arrive` may move the elapsed times onto a clock.
    Shape: srcs[k] (B, *source k) -> (B, *layer.shape).
    """
    elapsed, early_arrivals = arrivals(layer, srcs)
    if arrive is not None:
        elapsed = arrive(elapsed)
    b1 = neuron == "b1"
    base = 0.0 if b1 else alpha * layer.in_window
    v_end = base + layer.weighted_sum(elapsed, "J")
    off = crossing_after_inputs(v_end, layer.theta, layer.slope, 0.0)
    if layer.clip is not None:  # gated (ReLU6): no early spike is possible
        off, saturated = gate_at_window_start(off)
        off, stats = settle_spikes(off, layer.window, b1, early_arrivals)
        return off, {**stats, "certificate": (("gated", off.numel()),), "searched": 0, "saturated": saturated}
    if b1 or rescale != "positive":
        fan = [Fan(x, syn.J, syn.conv, syn.channels) for syn, x in zip(layer.inputs, elapsed)]
        cert = certify_fan(fan, layer.theta, v_end, layer.in_window, 0.0 if b1 else alpha)
        flagged, certificate = cert.uncertified, tuple(zip(STAGES, cert.settled))
    else:  # Σ max(W,0) < 1: V(t_min) > θ exactly when the neuron crossed before t_min (MATH §2)
        flagged = v_end > layer.theta
        certificate = (("pre-activation", off.numel() - int(torch.count_nonzero(flagged))),)
    searched = int(torch.count_nonzero(flagged))
    if searched:
        idx = flagged.nonzero(as_tuple=True)
        off = off.clone()
        t_in = [layer.in_window - e for e in elapsed]
        off[idx] = _search(layer, t_in, idx, 0.0 if b1 else alpha) - layer.in_window
    off, stats = settle_spikes(off, layer.window, b1, early_arrivals)
    return off, {**stats, "certificate": certificate, "searched": searched}


def pad_input(syn: Synapses, values: Tensor, pad: float) -> Tensor:
    """The routed input with a conv's zero-padding border filled with `pad`. Shape: (B, *in_shape)."""
    if syn.conv is None:
        return values
    ph, pw = syn.conv["padding"]
    return F.pad(values, (pw, pw, ph, ph), value=pad)


def gather_fan_in(syn: Synapses, padded: Tensor, idx: tuple[Tensor, ...]) -> Tensor:
    """Each listed neuron's inputs through one `Synapses`, in the order of its weight row: the values under a
    conv neuron's kernel (from `pad_input`), or the whole flattened input of a dense neuron. Neuron indices are
    local to the channels the synapses drive.

    Shape: padded (B, ...); idx (b, o[, y, x]) each (F,) -> (F, fan-in).
    """
    if syn.conv is None:
        return padded.flatten(1)[idx[0]]
    (sh, sw), (dh, dw), groups = syn.conv["stride"], syn.conv["dilation"], syn.conv["groups"]
    out_ch, cin_g, kh, kw = syn.weight.shape
    b, o, y, x = idx
    dev = padded.device
    ch = (o // (out_ch // groups))[:, None] * cin_g + torch.arange(cin_g, device=dev)[None, :]
    rows = y[:, None] * sh + torch.arange(kh, device=dev)[None, :] * dh
    cols = x[:, None] * sw + torch.arange(kw, device=dev)[None, :] * dw
    taps = padded[b[:, None, None, None], ch[:, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]
    return taps.flatten(1)


def fan_in(layer: Layer, values: list[Tensor], idx: tuple[Tensor, ...], pad: float, which: str = "J"):
    """The listed neurons' inputs over all of the layer's `Synapses`, concatenated: input values (`values[k]` is
    input k's routed tensor; zero-padded taps take `pad`), weights (`which`: "J" or "weight"; 0 where an input
    does not drive the neuron's channel) and which input each came from.

    Shape: values[k] (B, *in_shape k); idx (b, o[, ...]) each (F,) -> three (F, total fan-in) tensors.
    """
    times, weights, which_input = [], [], []
    for k, (syn, v) in enumerate(zip(layer.inputs, values)):
        w = getattr(syn, which)
        o = idx[1]
        inside = torch.ones_like(o, dtype=torch.bool)
        if syn.channels is not None:
            lo, hi = syn.channels
            inside = (o >= lo) & (o < hi)
            o = (o - lo).clamp(0, hi - lo - 1)
        local = (idx[0], o, *idx[2:])
        t = gather_fan_in(syn, pad_input(syn, v, pad), local)
        if syn.conv is not None:
            rows = w.flatten(1)[o]
        else:  # a dense map: one weight row per neuron of the part, in its flat order
            part = layer.part_shape(syn)
            flat = torch.zeros_like(o)
            for i, size in zip(local[1:], part):
                flat = flat * size + i
            rows = w[flat]
        rows = torch.where(inside[:, None], rows, torch.zeros_like(rows))
        times.append(t)
        weights.append(rows)
        which_input.append(torch.full_like(t, k, dtype=torch.long))
    return torch.cat(times, 1), torch.cat(weights, 1), torch.cat(which_input, 1)


def _search(layer: Layer, t_in: list[Tensor], idx: tuple[Tensor, ...], alpha: float) -> Tensor:
    """Exact first crossing for the flagged neurons `idx` (indices into (B, *shape)), in time relative to the
    neurons' start; `t_in[k]` are input k's arrival times on that clock, in [0, in_window]."""
    neuron_idx = idx[1:]
    theta = layer.theta.expand(layer.shape)[neuron_idx]
    slope = layer.slope.expand(layer.shape)[neuron_idx]
    end = layer.in_window
    fan = sum(syn.J[0].numel() for syn in layer.inputs)

    def gather(lo: int, hi: int):
        part = tuple(i[lo:hi] for i in idx)
        times, weights, _ = fan_in(layer, t_in, part, end)  # a zero-padded tap is x = 0: it fires at t_min
        return times, weights, theta[lo:hi], slope[lo:hi]

    def solve(times, weights, theta_, slope_):
        return first_crossing(times, weights, theta_, alpha, 0.0, end, slope_)

    return search_in_chunks(gather, len(idx[0]), fan, solve, t_in[0])


def readout_potential(layer: Layer, srcs: list[Tensor]) -> Tensor:
    """Membrane potential of the readout neurons at t_min^(L) (MATH §3): J = W and a bias current
    b_i / (t_min^(L) − start), so V_i(t_min^(L)) = b_i + Σ_j W_ij x_j. Shape: srcs[k] (B, *source k) -> (B, *shape)."""
    elapsed, _ = arrivals(layer, srcs)
    bias_current = layer.bias / layer.in_window
    return layer.weighted_sum(elapsed) + bias_current * layer.in_window
