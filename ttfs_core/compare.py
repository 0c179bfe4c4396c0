"""ANN ↔ SNN comparison: the original ReLU network is the oracle for every spiking layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from .capture import Capture
from .network import SpikingNetwork
from .sim.result import SimResult


@dataclass(frozen=True)
class LayerComparison:
    """One spiking layer: the original model's activation and the SNN's decoded activation (t_max − t),
    both in the original model's units. Shape: ann, snn (B, *layer shape)."""

    name: str
    ann: Tensor
    snn: Tensor
    max_abs_error: float
    early_spikes: int

    @property
    def max_rel_error(self) -> float:
        return self.max_abs_error / max(float(self.ann.abs().max()), 1e-30)


def first_output(out):
    """A model's (or a node's) output as one tensor: the first element of nested tuples and lists, for models that
    return (logits, auxiliary outputs). Shape: as the first tensor."""
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


class _Recorder(fx.Interpreter):
    """Runs the traced model and keeps the outputs of the named nodes (keyed by node name, not call order)."""

    def __init__(self, gm: fx.GraphModule, keep: set[str]):
        super().__init__(gm)
        self.keep = keep
        self.values: dict[str, Tensor] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n.name in self.keep:
            self.values[n.name] = first_output(out)
        return out


def record_activations(model: nn.Module, snn: SpikingNetwork, x: Tensor,
                       gm: fx.GraphModule | None = None) -> tuple[list[Tensor], Tensor]:
    """Each spiking layer's activation and the logits, recorded from the original model in one pass.

    Activations are given in the converted network's units (times the rescaling factor c), so they are
    directly comparable with decoded spike times. `gm`: the model already traced (`Capture(model, x[:1]).gm`),
    for a caller that records many batches. Shape: x (B, *input_shape).
    """
    x = x.to(snn.dtype)
    gm = gm if gm is not None else Capture(model, x[:1]).gm
    rec = _Recorder(gm, {layer.probe.node for layer in snn.layers})
    with torch.no_grad():
        logits = rec.run(x)
    logits = first_output(logits)
    acts = []
    for layer in snn.layers:
        value = layer.probe.read(rec.values[layer.probe.node])
        if tuple(value.shape[1:]) != tuple(layer.shape):
            # a relay layer (ttfs_core.lower: upsampling, border average pooling) reads the model's value through
            # ops its probe keeps in memory; a saved file stores the network, not those ops
            raise ValueError(f"layer {layer.name!r} ({layer.op}) holds {tuple(layer.shape)} values but the model's "
                             f"{layer.probe.node!r} gives {tuple(value.shape[1:])}: a relay layer of a saved network "
                             "cannot be read from the model; compare the network as converted in this process")
        acts.append(value * layer.scale)
    return acts, logits


def compare(model: nn.Module, snn: SpikingNetwork, x: Tensor, result: SimResult | None = None) -> list[LayerComparison]:
    """Per spiking layer: ANN activation (from `model`), SNN decoded activation, largest absolute error.

    `result` reuses a simulation of the same `x` (event-driven or stepped); by default `snn.run(x)` is called.
    """
    result = result if result is not None else snn.run(x)
    acts, _ = record_activations(model, snn, x)
    out = []
    for layer, ann, res in zip(snn.layers, acts, result.layers):
        scale = layer.scale
        snn_act = res.activations / scale
        ann_act = ann / scale
        err = float((snn_act - ann_act).abs().max()) if ann_act.numel() else 0.0
        out.append(LayerComparison(layer.name, ann_act, snn_act, err, res.early_spikes))
    return out
