"""The converted network (its layers are `ttfs_core.records`) and the orchestration of its simulations: the input
encoding, one layer after another (`ttfs_core.sim`), the readout, batches in chunks, devices."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .capture import apply_op
from .errors import InputError
from .mapping import DEFAULT_MARGIN, encode_input, normalise
from .neurons import ALPHA, SUM, NeuronModel, Rescale
from .records import Layer
from .sim.layer import hidden_layer_exact, readout_potential
from .sim.result import LayerResult, SimResult, concat
from .sim.shared import Shared
from .sim.stepped import hidden_layer_loop, hidden_layer_ticks, quantise_input, ticks_per_window
from .sim.trace import membrane, neuron_trace

Perturb = Callable[[int, Tensor, float], Tensor]
BATCH_ELEMENTS = 1 << 25  # neurons of the largest layer × batch simulated at once (bounds memory)
MAX_RESULT_BYTES = 4 << 30  # a simulation keeps every layer's spike times: larger batches must be split by the caller


@dataclass(frozen=True, eq=False)
class SpikingNetwork:
    """A ReLU network converted to a single-spike TTFS network (MATH §1–§4). Built by `ttfs_core.convert`.

    A frozen record like its layers (`ttfs_core.records`): one network can be shared by many users (the explorer
    caches one per setting); `dataclasses.replace` makes a changed copy. Its tensors are never changed in place
    by the library, and must not be by its users."""

    layers: tuple[Layer, ...]  # hidden spiking layers, in time order (a list given is kept as a tuple)
    output: Layer
    input_shape: tuple[int, ...]
    input_range: tuple[float, float]
    neuron: NeuronModel = ALPHA
    margin: float = DEFAULT_MARGIN
    rescale: Rescale = SUM
    alpha: float = 1.0
    dtype: torch.dtype = torch.float64

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        object.__setattr__(self, "input_range", tuple(self.input_range))

    def __getstate__(self) -> dict[str, Any]:  # a copy (or pickle) of the network leaves out its device copies
        return {k: v for k, v in self.__dict__.items() if k != "_copies"}

    @property
    def device(self) -> torch.device:
        """Where the network's tensors live; `run` simulates there (inputs are moved to it)."""
        return self.output.bias.device

    def _on(self, device: torch.device | str) -> SpikingNetwork:
        """`to(device)`, kept for the next call (the network cannot change, so neither can the copy)."""
        copies = self.__dict__.setdefault("_copies", {})
        key = str(torch.device(device))
        if key not in copies:
            copies[key] = self.to(device)
        return copies[key]

    def to(self, device: torch.device | str) -> SpikingNetwork:
        """This network with every tensor on `device` (itself when already there). Raises InputError for a device
        this machine does not have."""
        device = usable_device(device)
        if device == self.device or (device.index is None and device.type == self.device.type):
            return self
        memo = {id(t): t.to(device) for t in _tensors_in(self)}
        return copy.deepcopy(self, memo)  # the records copied around the moved tensors

    @property
    def decision_time(self) -> float:
        """t_min^(L) = 1 + Σ_n B_n: when the readout is taken, in units of τ_c (MATH §3)."""
        return self.output.t_min

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

    @property
    def chunk_rows(self) -> int:
        """How many inputs are simulated (or calibrated) at once: BATCH_ELEMENTS over the largest layer's neurons."""
        biggest = max(layer.neurons for layer in self.all_layers)
        return max(1, BATCH_ELEMENTS // max(biggest, 1))

    def _chunks(self, x: Tensor) -> list[Tensor]:
        return list(x.split(self.chunk_rows)) if x.shape[0] else [x]

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
        return [a for _, a in self.stream(x, keep=True)]

    def stream(self, x: Tensor, keep: bool = False) -> Iterator[tuple[int, Tensor]]:
        """`activations` one at a time, as (m, activation of layer m), m = −1 for the encoded input, in time order.
        Unless `keep`, an activation is let go once the last layer reading it has been computed, so a chain holds
        two layers' activations at a time instead of all of them (calibration on large batches).
        Shape: x (B, *input_shape) raw input values -> each (B, *layer shape)."""
        x = self._check_input(x)
        p, q = self.input_range
        acts: list[Tensor | None] = [normalise(x, p, q).clamp(0, 1)]
        # the last layer (or the readout) reading each
        last = self.last_readers() if not keep else [len(self.layers)] * (len(self.layers) + 1)
        yield -1, acts[0]
        for n, layer in enumerate(self.layers):
            acts.append(layer.ann(acts))
            for m in layer.sources:
                if last[m + 1] <= n:
                    acts[m + 1] = None
            yield n, acts[-1]

    def last_readers(self) -> list[int]:
        """For each layer m, at index m + 1 (m = −1: the input layer), the last of `all_layers` that reads it (−1:
        none): when its activations (`stream`) or its shared sums (`run`) can go."""
        last = [-1] * (len(self.layers) + 1)
        for n, layer in enumerate(self.all_layers):
            for m in layer.sources:
                last[m + 1] = n
        return last

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
        last_readers = self.last_readers()

        def simulate(chunk: Tensor) -> SimResult:
            shared = Shared(last_readers)  # sums the readers of one source share (`sim.shared`), per chunk

            def hidden(layer: Layer, n: int, srcs: list[Tensor]):
                out = hidden_layer_exact(layer, srcs, self.alpha, self.neuron, self.rescale, shared=shared)
                shared.release(n)
                return out

            return self._simulate(chunk, hidden, None, perturb)

        return concat([simulate(chunk) for chunk in self._chunks(x)])

    @torch.no_grad()
    def run_stepped(self, x: Tensor, dt: float | None = None, *, steps: int | None = None,
                    method: str = "fast", device: torch.device | str | None = None) -> SimResult:
        """Time-stepped (clock-driven) simulation (MATH §6; see `ttfs_core.sim.stepped`).

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

        def hidden(layer: Layer, n: int, srcs: list[Tensor]):
            in_ticks, own = ticks_per_window(layer.in_window, dt, steps), ticks[n + 1]
            if method == "loop":
                return hidden_layer_loop(layer, srcs, in_ticks, own, self.alpha, self.neuron)
            # inputs from a layer on another clock than the neuron's input window arrive at its next tick
            clocks = [(syn.in_window == layer.in_window and ticks[syn.source + 1] == in_ticks) for syn in layer.inputs]
            return hidden_layer_ticks(layer, srcs, in_ticks, own, clocks, self.alpha, self.neuron, self.rescale)

        def encode(t0: Tensor) -> Tensor:
            return quantise_input(t0, ticks[0])

        parts = [self._simulate(chunk, hidden, encode, None) for chunk in self._chunks(x)]
        res = concat(parts)
        return SimResult(res.logits, res.layers, res.input_times, res.input_clipped, res.decision_time, dt,
                         tuple(ticks))

    def trace(self, x: Tensor, layer: str | int, index: int | tuple[int, ...], *, result: SimResult | None = None,
              dt: float | None = None, steps: int | None = None):
        """Exact membrane trace of one neuron, and its clock-driven trace for dt or steps
        (`ttfs_core.sim.trace.neuron_trace`)."""
        return neuron_trace(self, x, layer, index, result=result, dt=dt, steps=steps)

    def membrane(self, x: Tensor, layer: str | int, index: int | tuple[int, ...], times,
                 result: SimResult | None = None) -> Tensor:
        """Exact V(t) of one neuron at absolute times (MATH §2). Shape: times (T,) -> (T,)."""
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
        return (f"SpikingNetwork({len(self.layers)} spiking layers, neuron={self.neuron.name!r}, "
                f"rescale={self.rescale.name!r}, decision time {self.decision_time:.4g} τ_c, smallest window "
                f"{self.smallest_window:.3g} τ_c, dtype={self.dtype})")


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
        items = [v for k, v in vars(obj).items() if k != "_copies"]
    else:
        return []
    return [t for item in items for t in _tensors_in(item, seen)]

