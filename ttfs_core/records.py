"""The records of a converted network: `Probe`, `Synapses` (one input of a layer) and `Layer`.

They are frozen values (MATH §1–§7 give their meaning): conversion's passes (`ttfs_core.passes`) make new ones with
`dataclasses.replace`, never change them. No simulation here, only what a layer computes on activations (the ReLU
layer it implements) and sums of its weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from .ops import apply_op
from .sim.dynamics import Pool, part_shape, row_sums, weighted_sum


@dataclass(frozen=True)
class Probe:
    """Where the original model computes a layer's activation: relu(scale·value(node) + shift) or value(node);
    for a relay layer (`ttfs_core.lower`), relu(then(value(node))), `then` the linear ops (`Op`) from the model's
    value to what the relay holds."""

    node: str
    scale: Tensor | None = None
    shift: Tensor | None = None
    relu: bool = False
    then: tuple[Any, ...] = ()

    def read(self, value: Tensor) -> Tensor:
        if self.scale is not None:
            shape = (1, -1, *([1] * (value.dim() - 2)))
            value = value * self.scale.reshape(shape) + self.shift.reshape(shape)
        value = value.clamp(min=0) if self.relu else value
        for op in self.then:
            value = apply_op(op, value)
        return value.clamp(min=0) if self.then else value


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

    @cached_property
    def J_negative(self) -> Tensor:
        """max(−J, 0), the sizes of the inhibitory synaptic weights: the early-spike certificate's tents weigh the
        inputs with them (MATH §2). Computed once per record (records are never changed), not once per run."""
        return (-self.J).clamp(min=0)

    @cached_property
    def J_row_sums(self) -> tuple[Tensor, Tensor]:
        """Σ_j max(−J_ij, 0) and Σ_j |J_ij| per weight row (an output channel of a convolution, a neuron of a dense
        map): the certificate's widest tent and its rounding allowance (`sim.certify`), computed once per record.
        Shape: -> two (rows,)."""
        dims = tuple(range(1, self.J.dim()))
        return self.J_negative.sum(dims), self.J.abs().sum(dims)

    @cached_property
    def factors(self) -> dict[int, tuple[Synapses, Tensor | None]]:
        """Per other record K (by id, with K itself): the per-row factor d with J = d · K.J, or None where there is
        none (`sim.shared`). Filled there, once per pair of records, not once per run."""
        return {}

    def __getstate__(self) -> dict:
        """The fields only: what `cached_property` keeps is recomputed where the record is unpickled or copied."""
        return {k: v for k, v in self.__dict__.items() if k not in _CACHED}

    def tensors(self) -> list[Tensor]:
        out = [t for t in (self.weight, self.J) if t is not None]
        return out + [p.sign for p in self.route if p.sign is not None]


_CACHED = ("J_negative", "J_row_sums", "factors")  # Synapses' cached properties


@dataclass(frozen=True, eq=False)
class Layer:
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
    # set by the passes calibrate (X_n, P_n) and place_in_time (the rest; `ttfs_core.passes`)
    max_activation: float = 0.0
    peak_drive: float = 0.0  # P_n ≥ X_n: the largest drive before t_min on the calibration data (convert)
    start: float = 0.0  # t_min − in_window: the neuron starts integrating (t_min^(n−1) in a chain)
    t_min: float = 0.0
    t_max: float = 0.0
    in_window: float = 1.0  # t_min − start: the longest window among the layers read, B_(n−1) in a chain
    window: float = 0.0  # B_n = t_max − t_min (0 for the readout)
    clip: float | None = None  # ReLU6 / clipped ReLU: the gated neuron (MATH §2) saturates at B_n = clip
    # neuron parameters (MATH §2 / §7), set by the pass parameterise
    theta: Tensor | None = None
    slope: Tensor | None = None
    # provenance (lower): (name, kind, description) of every captured op of the original model this layer absorbed
    # (its conv / Linear, BatchNorms, pooling routed into it, flatten, the ReLU that closes it); () if unknown
    absorbed: tuple[tuple[str, str, str], ...] = ()

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

    weight = property(lambda self: self._single().weight)
    J = property(lambda self: self._single().J)

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
        return part_shape(syn, self.shape)

    def weighted_sum(self, xs: list[Tensor], which: str = "weight") -> Tensor:
        """Σ_k Σ_j w_kij x_kj for every neuron over all inputs k, no bias; `which` is "weight" (the ReLU layer's)
        or "J" (the neuron model's). Shape: xs[k] (B, *inputs[k].in_shape) -> (B, *shape)."""
        return weighted_sum(self.inputs, xs, [getattr(syn, which) for syn in self.inputs], self.shape)

    def row_sums(self, which: str = "weight", positive: bool = False) -> Tensor:
        """Σ_j w_ij per neuron over all inputs (zero-padded taps included; max(w, 0) if `positive`), per output
        channel of a convolutional layer (the same at every position) or per neuron of a dense one.
        Shape: -> (C,) or (N,)."""
        ws = [getattr(syn, which) for syn in self.inputs]
        return row_sums(self.inputs, [w.clamp(min=0) for w in ws] if positive else ws, self.shape)

    def ann(self, acts: list[Tensor]) -> Tensor:
        """The ReLU layer this spiking layer implements, on activations (the converted network's units).
        `acts[m + 1]` is the activation of layer m (acts[0]: the encoded input)."""
        xs = [syn.route_activations(acts[syn.source + 1]) for syn in self.inputs]
        z = self.weighted_sum(xs) + self.bias
        if self.is_output:
            return z
        return z.clamp(min=0) if self.clip is None else z.clamp(0, self.clip)
