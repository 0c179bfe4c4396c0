"""Result records shared by every simulator (event-driven and time-stepped)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..mapping import decode
from .dynamics import early_mask, forced_mask


def merge_counts(groups: Iterable[Iterable[tuple[str, int]]]) -> tuple[tuple[str, int], ...]:
    """Sum (name, count) pairs, such as certificate stages, over layers, batches or chunks; names keep the order
    in which they first appear."""
    totals: dict[str, int] = {}
    for group in groups:
        for name, count in group:
            totals[name] = totals.get(name, 0) + int(count)
    return tuple(totals.items())


@dataclass(frozen=True)
class LayerResult:
    """Spikes of one hidden (spiking) layer for a batch.

    `offsets` are the spike times relative to the layer's window start, t − t_min, shaped like the ANN
    activation (batch first), in units of τ_c; +inf marks a neuron that did not spike (B1 model only). Deep
    layers can have windows far shorter than t_min, so the offsets, not the absolute `spike_times`, keep full
    precision. `early_spikes` counts neurons that fired before t_min (`early_mask`; their input window
    had not closed: the spike is wrong, MATH §2); `early_arrivals` counts input spikes that arrived before
    this layer's neurons started integrating (the layer below fired early); `forced` counts spikes forced at
    t_max (activation 0). `certificate` says how many neurons each stage of the early-spike certificate
    settled (MATH §2; `ttfs_core.sim.certify`) and `searched` how many went to the exact search instead.
    """

    name: str
    op: str
    offsets: Tensor
    t_min: float
    t_max: float
    window: float
    early_spikes: int
    early_arrivals: int
    forced: int
    spikes: int
    certificate: tuple[tuple[str, int], ...] = ()  # (stage, neurons it proved free of early spikes), in order
    searched: int = 0  # neurons the certificate could not settle: their first crossing was searched exactly
    saturated: int = 0  # gated (ReLU6) layers: neurons that reached θ by t_min and fired there (value = the clip)

    @property
    def spike_times(self) -> Tensor:
        """Absolute spike times t = t_min + offset (rounded to the dtype; +inf: no spike)."""
        t = self.t_min + self.offsets
        inside = self.offsets >= 0
        return torch.where(inside & torch.isfinite(t), t.clamp(self.t_min, self.t_max), t)

    @property
    def forced_spikes(self) -> Tensor:
        """Which neurons were forced to fire at t_max (activation 0; none in B1, whose silent neurons have offset
        +inf; `dynamics.forced_mask`). Its count is `forced`. Shape: like `offsets`, bool."""
        return forced_mask(self.offsets, self.window)

    @property
    def early_mask(self) -> Tensor:
        """Which neurons fired early, before t_min (`dynamics.early_mask`). Its count is `early_spikes`.
        Shape: like `offsets`, bool."""
        return early_mask(self.offsets)

    @property
    def activations(self) -> Tensor:
        """Decoded activation t_max − t (MATH §1), in the converted (rescaled) network's units."""
        return decode(self.offsets, self.window)

    @property
    def neurons(self) -> int:
        """Neurons in this layer for the whole batch."""
        return self.offsets.numel()

    @property
    def spikes_per_neuron(self) -> float:
        return self.spikes / max(self.neurons, 1)


@dataclass(frozen=True)
class SimResult:
    """What a simulation returns: logits (membrane potentials of the readout at t_min^(L)) and every layer.

    Shape: logits (B, classes); input_times (B, *input_shape).
    """

    logits: Tensor
    layers: list[LayerResult]
    input_times: Tensor  # t^(0) = 1 − x̂ in the input window [0, 1]
    input_clipped: int
    decision_time: float
    dt: float | None = None  # the requested tick length of a stepped simulation
    ticks: tuple[int, ...] | None = None  # stepped: ticks per window (input window first); None: exact

    @property
    def early_spikes(self) -> int:
        return sum(layer.early_spikes for layer in self.layers)

    @property
    def spikes(self) -> int:
        return sum(layer.spikes for layer in self.layers)

    @property
    def saturated(self) -> int:
        """Neurons of gated (ReLU6) layers that fired at their window's start: clipped activations (MATH §2)."""
        return sum(layer.saturated for layer in self.layers)

    @property
    def searched(self) -> int:
        """Neurons of all layers whose first crossing the certificate could not settle (searched exactly)."""
        return sum(layer.searched for layer in self.layers)

    @property
    def certificate(self) -> tuple[tuple[str, int], ...]:
        """Neurons settled by each certificate stage, summed over layers (MATH §2)."""
        return merge_counts(layer.certificate for layer in self.layers)

    @property
    def neurons(self) -> int:
        return sum(layer.neurons for layer in self.layers)

    def layer(self, name: str) -> LayerResult:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer named {name!r}; layers: {[layer.name for layer in self.layers]}")


def concat(parts: list[SimResult]) -> SimResult:
    """One result from the results of consecutive parts of a batch (spike times concatenated, counts summed)."""
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
