"""The neuron models (MATH §2 α-model, §7 B1) and the rescaling rules (MATH §2) as frozen records.

In the style of Norse's parameter records (`LIFParameters`): a model *is* its record, passed to every function
that needs it, so no function switches on a model's name. Every difference between the α-model and B1 that the
converter, the simulators, the traces and the explorer rely on is a field or a method here.

Names ("alpha", "b1", "sum", "positive") are what users type and what saved networks store: they are looked up
only where such input is parsed (`neuron_model`, `rescale_rule`; the saved-network reader uses the same tables).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .mapping import B1_SLOPE, alpha_parameters, b1_parameters


@dataclass(frozen=True)
class NeuronModel:
    """A hidden neuron's dynamics, seen from everything that converts, simulates or draws it.

    `start_current`: whether the neuron integrates the start current α from its start, t_min^(n−1) (α-model,
    MATH §2; B1 integrates only its input currents, MATH §7). `constant_slope`: the slope from t_min^(n) on when it
    replaces the input currents (B1: `mapping.B1_SLOPE`), None when the input currents go on (α-model: the final
    slope α + Σ_j J_ij). `silent_at_zero`: a neuron that has not crossed θ by t_max does not fire (B1) instead of
    being forced to fire there (α-model). `rescaled`: conversion rescales the ReLU layer first (MATH §2; B1 never).
    Only plain data, so that the explorer's caches can hash a record.
    """

    name: str  # as users type it and saved networks store it
    label: str  # "α-model", "B1"
    section: str  # where MATH.md defines it
    summary: str  # one line for pickers
    start_current_on: bool
    constant_slope: float | None
    silent_at_zero: bool
    rescaled: bool

    def __str__(self) -> str:
        return self.name

    def __deepcopy__(self, memo: dict) -> NeuronModel:  # immutable: a copied network shares its model's record
        return self

    def start_current(self, alpha: float) -> float:
        """The current the neuron integrates from its start on, before any input: α, or 0 for B1."""
        return alpha if self.start_current_on else 0.0

    def final_slope(self, alpha: float, sum_j: Tensor) -> Tensor:
        """The slope of V once every input has arrived: α + Σ_j J_ij (α-model, MATH §2) or B1's constant slope
        (MATH §7). Shape: sum_j any -> same."""
        if self.constant_slope is not None:
            return torch.full_like(sum_j, self.constant_slope)
        return alpha + sum_j

    def parameters(self, weight, bias: Tensor, row_sum: Tensor, in_window: float, window: float, alpha: float,
                   channels=None):
        """J, θ and the final slope of a ReLU layer's neurons: `mapping.alpha_parameters` (MATH §2) or
        `mapping.b1_parameters` (MATH §7, J = W). Arguments as `mapping.alpha_parameters`."""
        if self.constant_slope is not None:
            return b1_parameters(weight, bias, window)
        return alpha_parameters(weight, bias, row_sum, in_window, window, alpha, channels)

    def drive_slope(self, weight: Tensor) -> Tensor:
        """κ_i of the drive before the window opens, h_i(s) = b_i + Σ_j W_ij max(x_j, s) − κ_i s
        (`certify.peak_drive`, MATH §2 "exact early-spike criterion"): 1 with a start current (α-model, in units of
        the final slope), Σ_j W_ij without one (B1: g_i(s) = b_i + Σ_j W_ij (x_j − s)⁺). Shape: weight (F, K) ->
        (F,)."""
        if self.start_current_on:
            return weight.new_ones(weight.shape[0])
        return weight.sum(1)

    def needs_certificate(self, rescale: Rescale) -> bool:
        """Whether an early spike must be ruled out by the certificate and search (`ttfs_core.sim.certify`): always,
        unless the layer was rescaled by a rule under which an early spike happens exactly when the
        pre-activation exceeds the window."""
        return not (self.rescaled and rescale.early_iff_preactivation)


@dataclass(frozen=True)
class Rescale:
    """A function-preserving rescaling rule (MATH §2, "Two rescalings"): the sum over a neuron's input weights kept
    below the limit, Σ_j W_ij (`positive_part` False, the paper's) or Σ_j max(W_ij, 0)."""

    name: str  # as users type it and saved networks store it
    label: str  # one line for pickers
    positive_part: bool

    def __str__(self) -> str:
        return self.name

    def __deepcopy__(self, memo: dict) -> Rescale:  # immutable: a copied network shares its model's record
        return self

    @property
    def early_iff_preactivation(self) -> bool:
        """Under Σ_j max(W_ij, 0) < 1 the drive before the window only falls, so a neuron fires early exactly when
        its pre-activation exceeds B_n: no certificate or search is needed (MATH §2)."""
        return self.positive_part

    def gauge(self, total: Tensor, positive: Tensor) -> Tensor:
        """The sum the rule keeps below the limit, from Σ_j W_ij (`total`) and Σ_j max(W_ij, 0) (`positive`)."""
        return positive if self.positive_part else total


ALPHA = NeuronModel("alpha", "α-model", "MATH §2", "exact mapping, every neuron fires once",
                    start_current_on=True, constant_slope=None, silent_at_zero=False, rescaled=True)
B1 = NeuronModel("b1", "B1", "MATH §7", "constant slope at threshold; silent neurons for activation 0",
                 start_current_on=False, constant_slope=B1_SLOPE, silent_at_zero=True, rescaled=False)
SUM = Rescale("sum", "the paper's: Σ W < 1 (windows of the order of the activations)", positive_part=False)
POSITIVE = Rescale("positive", "positive part: Σ max(W, 0) < 1 (fast mode: windows shrink with depth)",
                   positive_part=True)

NEURON_MODELS: dict[str, NeuronModel] = {m.name: m for m in (ALPHA, B1)}  # the first is the default
RESCALES: dict[str, Rescale] = {r.name: r for r in (SUM, POSITIVE)}  # the first is the default


def _named(value: Any, kind: type, table: dict[str, Any], what: str) -> Any:
    """`value` itself if it is a `kind` record, else the record `table` holds under that name. Raises ValueError."""
    if isinstance(value, kind):
        return value
    if isinstance(value, str) and value in table:
        return table[value]
    raise ValueError(f"unknown {what} {value!r}; supported: {', '.join(table)}")


def neuron_model(value: NeuronModel | str) -> NeuronModel:
    """The neuron model named `value` (as a user typed it), or `value` itself. Raises ValueError."""
    return _named(value, NeuronModel, NEURON_MODELS, "neuron model")


def rescale_rule(value: Rescale | str) -> Rescale:
    """The rescaling rule named `value` (as a user typed it), or `value` itself. Raises ValueError."""
    return _named(value, Rescale, RESCALES, "rescaling")
