"""One hidden neuron with given inputs, weights, bias and windows, as a real (tiny) `SpikingNetwork` (MATH §1, §2, §7).

Built for teaching (the explorer's neuron playground): every number the neuron has — J, θ, the final slope, the
rescaling factor, the spike time, early spikes, the clock-driven trace — comes from the core's own machinery
(conversion's passes `ttfs_core.passes`: rescaling, placement in time, neuron parameters; the exact and stepped
simulators; `trace`). Nothing here restates an equation.

The network has three layers:

- "inputs": k spiking neurons standing for the previous hidden layer, window [t_min^(n−1), t_min^(n)] of length
  B_in. They have no input weights and bias x_j, so their ReLU value is x_j and (being exact) each fires at
  t_j = t_min^(n) − x_j.
- "neuron": the neuron of the playground, reading them with weights W and bias b (rescaled as `convert` would),
  window B_n.
- "readout": reads the neuron with weight 1 (divided by the rescaling factor c), so its logit is ReLU(Σ W x + b)
  in the original units when the network is exact.

The encoded input layer (window [0, 1]) drives nothing: simulate any input of shape (1, k), e.g. `probe_input`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import passes
from .errors import InputError
from .network import SpikingNetwork
from .neurons import ALPHA, SUM, NeuronModel, Rescale, neuron_model, rescale_rule
from .records import Layer, Probe
from .sim.certify import peak_drive

SOURCE, NEURON, READOUT = "inputs", "neuron", "readout"  # layer names
MAX_INPUTS = 64


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value}")
    return value


def single_neuron(x, weight, bias: float, in_window: float, window: float, *, neuron: NeuronModel | str = ALPHA,
                  rescale: Rescale | str = SUM, alpha: float = 1.0) -> SpikingNetwork:
    """A spiking network holding one hidden neuron (layer "neuron") whose k inputs have activations `x` (they fire at
    t_min^(n) − x_j in an input window of length `in_window`), with ReLU-layer weights `weight` and bias `bias`, and
    window B_n = `window`. `neuron`: ALPHA (MATH §2; rescaled by `rescale`, SUM or POSITIVE, as `convert` does) or
    B1 (MATH §7, never rescaled), `ttfs_core.neurons`' records or their names. float64.

    Raises InputError for an impossible setting (a window ≤ 0, an activation outside [0, in_window], NaN...).
    Shape: x, weight (k,).
    """
    try:
        neuron, rule = neuron_model(neuron), rescale_rule(rescale)
    except ValueError as e:
        raise InputError(str(e)) from None
    x = torch.as_tensor(x, dtype=torch.float64).flatten().clone()
    w = torch.as_tensor(weight, dtype=torch.float64).flatten().clone()
    k = x.numel()
    if not 1 <= k <= MAX_INPUTS or w.numel() != k:
        raise InputError(f"give 1 to {MAX_INPUTS} inputs and one weight per input (got {k} inputs, {w.numel()} "
                         "weights)")
    if not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(w).all())):
        raise InputError("the activations and weights must be finite numbers")
    bias, alpha = _finite("the bias b", bias), _finite("alpha", alpha)
    in_window, window = _finite("the input window B_in", in_window), _finite("the window B_n", window)
    if not in_window > 0:
        raise InputError(f"the input window B_in must be > 0, got {in_window}")
    if not window > 0:
        raise InputError(f"the neuron's window B_n must be > 0, got {window}")
    if not alpha > 0:
        raise InputError(f"alpha must be > 0, got {alpha}")
    if bool((x < 0).any()) or bool((x > in_window).any()):
        raise InputError(f"every activation x_j must lie in [0, B_in] = [0, {in_window:g}] (a spike inside the "
                         f"input window); got {[float(v) for v in x]}")
    f64 = torch.float64
    source = Layer.chain(source=-1, route=(), in_shape=(k,), weight=torch.zeros(k, k, dtype=f64), conv=None,
                         name=SOURCE, op="inputs (bias x_j)", shape=(k,), bias=x, probe=Probe(SOURCE, relu=True),
                         scale=torch.ones(k, dtype=f64), max_activation=float(x.max()))
    hidden = Layer.chain(source=0, route=(), in_shape=(k,), weight=w.reshape(1, k), conv=None, name=NEURON,
                         op="Linear", shape=(1,), bias=torch.tensor([bias], dtype=f64),
                         probe=Probe(NEURON, relu=True), scale=torch.ones(1, dtype=f64))
    readout = Layer.chain(source=1, route=(), in_shape=(1,), weight=torch.ones(1, 1, dtype=f64), conv=None,
                          name=READOUT, op="Linear", shape=(1,), bias=torch.zeros(1, dtype=f64),
                          probe=Probe(READOUT), scale=torch.ones(1, dtype=f64), is_output=True)
    snn = SpikingNetwork((source, hidden), readout, (k,), (0.0, 1.0), neuron, 0.0, rule, alpha, f64)
    with torch.no_grad():  # convert's passes, the windows given instead of calibrated
        for step in (passes.rescale, lambda net: passes.place_in_time(net, (in_window, window)), passes.parameterise):
            snn = passes.check_finite(step(snn))
    return snn


def probe_input(snn: SpikingNetwork) -> Tensor:
    """An input for `single_neuron`'s network (its encoded input drives nothing). Shape: (1, k)."""
    return torch.zeros(1, *snn.input_shape, dtype=snn.dtype)


def peak_drive_of(snn: SpikingNetwork) -> float:
    """The peak of the neuron's drive before its window opens, max over s ≥ 0 of f(s) (α-model) or g(s) (B1) of
    MATH §2 (`certify.peak_drive`): the neuron fires early exactly when this reaches B_n at some s > 0 (s = 0 is the
    pre-activation). In the rescaled units."""
    layer = snn.layers[1]
    x = snn.activations(probe_input(snn))[1]
    w = layer.weight
    return float(peak_drive(x, w, layer.bias, snn.neuron.drive_slope(w))[0])
