"""The neuron playground (pages/5_Neuron_playground.py): one hidden neuron with 2–6 inputs, its state, presets and
the numbers, equations and figure the page shows.

Every number comes from ttfs_core: the neuron is a real tiny `SpikingNetwork` (`ttfs_core.neuron.single_neuron`),
simulated exactly and with a clock, traced (`ttfs_core.sim.trace`); J, θ, the final slope and the rescaling factor are
read off the converted layer, the ReLU from the converted network's own ANN pass. Only presentation lives here.
Streamlit is used only by `init` and `apply_preset` (session state); the rest is pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch

from ttfs_core import neuron as core_neuron
from ttfs_core.errors import ConversionError, InputError
from ttfs_core.mapping import DEFAULT_MARGIN, alpha_parameters, decode, window_length
from ttfs_core.neurons import ALPHA, B1, NEURON_MODELS, RESCALES, SUM, NeuronModel, Rescale, neuron_model, rescale_rule
from ttfs_core.sim.trace import NeuronTrace

from . import figures, state
from .tables import sig
from .text import pretty

MIN_INPUTS, MAX_INPUTS = 2, 6
DT_OPTIONS = (0.3, 0.1, 0.03, 0.01, 0.003, 0.001)
BLOWUP_SUMS = (0.0, 0.5, 0.9, 0.99, 0.999, 0.9999)  # Σ W rows of the blow-up table

# --- session-state keys (canonical values; widgets bind to them with `state.bind`) ---------------------------
PREFIX = "ttfs_pg_"
COUNT = "ttfs_pg_count"  # number of inputs k (2–6)
X = tuple(f"ttfs_pg_x{j}" for j in range(MAX_INPUTS))  # activation x_j of input j (spike at t_min^(n) − x_j)
W = tuple(f"ttfs_pg_w{j}" for j in range(MAX_INPUTS))  # ReLU-layer weight W_j (before rescaling)
BIAS = "ttfs_pg_bias"  # ReLU-layer bias b (before rescaling)
IN_WINDOW = "ttfs_pg_in_window"  # B_in = B_(n−1), the input window
WINDOW = "ttfs_pg_window"  # B_n, the neuron's window
NEURON = "ttfs_pg_neuron"  # a neuron model's name (ttfs_core.neurons.NEURON_MODELS; `settings` parses it)
RESCALE = "ttfs_pg_rescale"  # a rescaling rule's name (ttfs_core.neurons.RESCALES)
CLOCK = "ttfs_pg_clock"  # overlay the clock-driven trace
DT = "ttfs_pg_dt"  # its tick length (τ_c), one of DT_OPTIONS
PRESET = "ttfs_pg_preset"  # the last preset applied ("" none): its lesson is shown



@dataclass(frozen=True)
class Preset:
    label: str
    lesson: str
    values: dict[str, Any]

    def __post_init__(self) -> None:  # the lesson as a student reads it (tₘᵢₙ⁽ⁿ⁾, not t_min^(n))
        object.__setattr__(self, "lesson", pretty(self.lesson))


def _values(x, w, bias, in_window=1.0, window=1.0, neuron=ALPHA, rescale=SUM, clock=False, dt=0.1):
    out = {COUNT: len(x), BIAS: bias, IN_WINDOW: in_window, WINDOW: window, NEURON: neuron.name, RESCALE: rescale.name,
           CLOCK: clock, DT: dt}
    out.update({X[j]: float(v) for j, v in enumerate(x)})
    out.update({W[j]: float(v) for j, v in enumerate(w)})
    return out


PRESETS: dict[str, Preset] = {
    "exact": Preset(
        "1 · exact spike",
        "Three inputs, the window larger than the pre-activation: V crosses θ after every input has arrived, "
        "and t_max − t equals ReLU(Σ W x + b) to the last digit.",
        _values([0.6, 0.3, 0.8], [0.4, 0.3, -0.2], 0.1, window=1.0)),
    "early": Preset(
        "2 · early spike",
        "The pre-activation 0.8 exceeds the window B_n = 0.5: V reaches θ before t_min^(n), before input 3 has "
        "even arrived. The spike is wrong (t_max − t ≠ ReLU). Press '2b · margin fix' for B_n = (1 + ζ)·P.",
        _values([0.9, 0.8, 0.05], [0.3, 0.2, 0.4], 0.35, window=0.5)),
    "margin": Preset(
        "2b · margin fix",
        "The same neuron with the window set as conversion does, B_n = (1 + ζ)·P with ζ = 0.5 and P the peak drive "
        "before the window opens (here the pre-activation): the crossing moves after t_min^(n) and is exact again.",
        _values([0.9, 0.8, 0.05], [0.3, 0.2, 0.4], 0.35, window=0.5)),  # window set from the peak drive on apply
    "silent": Preset(
        "3 · silent neuron",
        "The pre-activation is negative, ReLU = 0. The α-model never reaches θ and is forced to fire at t_max "
        "(t_max − t = 0); switch the model to B1: a neuron with x = 0 does not spike at all.",
        _values([0.2, 0.9], [0.3, -0.6], -0.1, window=1.0)),
    "inhibition": Preset(
        "4 · late inhibition",
        "B1 model: a strong excitatory input arrives first and the inhibitory one (W = −1.5) late. V climbs past θ "
        "before the inhibition arrives: an early spike, although the pre-activation 0.45 is inside the window 0.6. "
        "Switch to the α-model: its start current and J = αW/(1 − ΣW) keep V rising, and the same numbers are exact.",
        _values([1.0, 0.3], [0.9, -1.5], 0.0, window=0.6, neuron=B1)),
    "clock": Preset(
        "5 · clock-driven drift",
        "The dotted trace is the same neuron simulated with a clock of tick dt (MATH §6): inputs are seen at the "
        "next tick, V grows by dt·I per tick and the spike lands on a tick. Move dt: the error shrinks as dt → 0 "
        "(it is O(dt)).",
        _values([0.37, 0.71, 0.13], [0.45, -0.25, 0.35], 0.3, window=1.0, clock=True, dt=0.1)),
}

DEFAULTS: dict[str, Any] = {
    **_values([0.6, 0.3, 0.8, 0.5, 0.2, 0.9], [0.4, 0.3, -0.2, 0.1, -0.1, 0.05], 0.1), COUNT: 3, PRESET: "",
}
DEFAULTS.update(PRESETS["exact"].values)


# the playground's query parameters (`ttfs_ui.state`: a link opens the same neuron); numbers written exactly
_EXACT = state.exact_number
PARAMS: dict[str, state.Param] = {
    "pg_n": state.Param(COUNT, state.integer(MIN_INPUTS, MAX_INPUTS)),
    **{f"pg_x{j + 1}": state.Param(X[j], state.number(), _EXACT) for j in range(MAX_INPUTS)},
    **{f"pg_w{j + 1}": state.Param(W[j], state.number(), _EXACT) for j in range(MAX_INPUTS)},
    "pg_b": state.Param(BIAS, state.number(), _EXACT),
    "pg_bin": state.Param(IN_WINDOW, state.number(), _EXACT),
    "pg_bn": state.Param(WINDOW, state.number(), _EXACT),
    "pg_neuron": state.Param(NEURON, state.one_of(*NEURON_MODELS)),
    "pg_rescale": state.Param(RESCALE, state.one_of(*RESCALES)),
    "pg_clock": state.Param(CLOCK, lambda t: state.one_of("0", "1")(t) == "1", lambda v: str(int(bool(v)))),
    "pg_dt": state.Param(DT, state.one_of(*DT_OPTIONS)),
    "pg_preset": state.Param(PRESET, state.one_of(*PRESETS)),
}


def sanitize(values: Mapping[str, Any]) -> dict[str, Any]:
    """Keys whose value a widget cannot show (a choice not among the options, a non-number) -> their default, so
    that a stale or hand-set value gives a message later, never a widget exception."""
    fixes = {}
    choices = {COUNT: range(MIN_INPUTS, MAX_INPUTS + 1), NEURON: NEURON_MODELS, RESCALE: RESCALES, DT: DT_OPTIONS,
               CLOCK: (True, False)}
    for key, options in choices.items():
        if values.get(key) not in options:
            fixes[key] = DEFAULTS[key]
    for key in (*X, *W, BIAS, IN_WINDOW, WINDOW):
        v = values.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(float(v)):
            fixes[key] = DEFAULTS[key]
        elif isinstance(v, int):
            fixes[key] = float(v)
    return fixes


def init() -> None:
    """Set every missing playground key to its default and repair values no widget can show."""
    for key, value in DEFAULTS.items():
        if key not in st.session_state:
            st.session_state[key] = value
    st.session_state.update(sanitize({k: st.session_state[k] for k in DEFAULTS}))


def apply_preset(name: str) -> None:
    """on_click of a preset button: set its canonical values (the margin fix takes its window from the peak drive
    of the same neuron, `margin_window`)."""
    values = dict(PRESETS[name].values)
    if name == "margin":
        values[WINDOW] = margin_window(settings(values))
    st.session_state.update(values)
    st.session_state[PRESET] = name


# --- the neuron --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    x: tuple[float, ...]
    w: tuple[float, ...]
    bias: float
    in_window: float
    window: float
    neuron: NeuronModel = ALPHA
    rescale: Rescale = SUM
    clock: bool = False
    dt: float = 0.1


def settings(values: Mapping[str, Any]) -> Settings:
    """The playground's settings from session-state-like values (missing keys: defaults)."""
    v = {**DEFAULTS, **values}
    k = int(v[COUNT])
    return Settings(tuple(float(v[X[j]]) for j in range(k)), tuple(float(v[W[j]]) for j in range(k)),
                    float(v[BIAS]), float(v[IN_WINDOW]), float(v[WINDOW]), neuron_model(v[NEURON]),
                    rescale_rule(v[RESCALE]),
                    bool(v[CLOCK]), float(v[DT]))


def problems(s: Settings) -> list[str]:
    """Why these settings cannot be simulated (empty: they can). Plain messages for st.error."""
    return [pretty(m) for m in _problems(s)]


def _problems(s: Settings) -> list[str]:
    out = []
    if not all(math.isfinite(v) for v in (*s.x, *s.w, s.bias, s.in_window, s.window)):
        out.append("Every number must be finite.")
    if not s.in_window > 0:
        out.append(f"The input window B_in must be > 0 (got {s.in_window:g}): the inputs fire inside it.")
    if not s.window > 0:
        out.append(f"The neuron's window B_n must be > 0 (got {s.window:g}): t_max^(n) = t_min^(n) + B_n.")
    bad = [j + 1 for j, v in enumerate(s.x) if not 0 <= v <= max(s.in_window, 0)]
    if bad and s.in_window > 0:
        out.append(f"Activations x_j must lie in [0, B_in] = [0, {s.in_window:g}] (input spikes inside the input "
                   f"window t_min^(n) − B_in ≤ t_j ≤ t_min^(n)); inputs {', '.join(map(str, bad))} do not.")
    return out


@dataclass(frozen=True)
class Outcome:
    """Everything the page shows for one setting; times absolute (τ_c), values in the rescaled units unless said."""

    settings: Settings
    scale: float  # c of the rescaling (1: none)
    w: tuple[float, ...]  # rescaled W_j
    bias: float  # rescaled b
    J: tuple[float, ...]
    theta: float
    slope: float  # final slope α + Σ J (B1: 1)
    alpha: float
    start: float  # t_min^(n−1)
    t_min: float  # t_min^(n)
    t_max: float  # t_max^(n)
    input_times: tuple[float, ...]  # t_j, in input order
    pre_activation: float  # Σ W x + b (rescaled)
    relu: float  # ReLU(Σ W x + b) by the converted network's ANN pass (rescaled)
    offset: float  # t − t_min^(n) of the spike (+inf: no spike, B1)
    decoded: float  # t_max − t (0 when no spike)
    early: bool
    forced: bool
    peak: float  # max_s f(s) (α) or g(s) (B1), MATH §2
    readout: float  # the readout's logit: ReLU in the original units when exact
    trace: NeuronTrace
    stepped_spike: float | None  # absolute, clock-driven
    certificate: tuple[tuple[str, int], ...] = ()

    @property
    def spike(self) -> float:
        """Absolute spike time t (+inf: no spike)."""
        return self.t_min + self.offset

    @property
    def fired(self) -> bool:
        return math.isfinite(self.offset)

    @property
    def exact(self) -> bool:
        return not self.early

    @property
    def difference(self) -> float:
        return self.decoded - self.relu

    @property
    def sum_w(self) -> float:
        return sum(self.w)


def evaluate(s: Settings) -> Outcome:
    """Build, simulate and trace the neuron (raises InputError / ConversionError for settings it cannot take;
    check `problems` first)."""
    snn = core_neuron.single_neuron(s.x, s.w, s.bias, s.in_window, s.window, neuron=s.neuron, rescale=s.rescale)
    x0 = core_neuron.probe_input(snn)
    result = snn.run(x0)
    layer = snn.layers[1]
    lr = result.layers[1]
    off = float(lr.offsets[0, 0])
    trace = snn.trace(x0, core_neuron.NEURON, 0, result=result, dt=s.dt if s.clock else None)
    acts = snn.activations(x0)
    pre = float(layer.weighted_sum([acts[1]])[0, 0] + layer.bias[0])
    relu = float(acts[2][0, 0])
    decoded = float(decode(torch.tensor(off, dtype=torch.float64), layer.window))
    stepped = None
    if trace.stepped_spike_time is not None:
        stepped = trace.origin + float(trace.stepped_spike_time)
    src = result.layers[0]
    return Outcome(
        s, float(layer.scale[0]), tuple(layer.weight[0].tolist()), float(layer.bias[0]), tuple(layer.J[0].tolist()),
        float(layer.theta[0]), float(layer.slope[0]), s.neuron.start_current(snn.alpha), layer.start,
        layer.t_min, layer.t_max, tuple((src.t_min + src.offsets[0]).tolist()), pre, relu, off, decoded,
        bool(lr.early_spikes), bool(lr.forced), core_neuron.peak_drive_of(snn), float(result.logits[0, 0]), trace,
        stepped, tuple(lr.certificate))


def margin_window(s: Settings) -> float:
    """The window conversion would give this neuron: B_n = (1 + ζ)·P (MATH §4, `mapping.window_length`), P the peak
    drive before the window opens (≥ the pre-activation)."""
    return window_length(max(evaluate(s).peak, 0.0), DEFAULT_MARGIN)


# --- presentation ----------------------------------------------------------------------------------------------
def verdict(o: Outcome) -> tuple[str, str]:
    """(level, message): "success", "error" or "info", and what happened to the spike."""
    level, message = _verdict(o)
    return level, pretty(message)


def _verdict(o: Outcome) -> tuple[str, str]:
    if o.early:
        return "error", (f"EARLY spike at t = {o.spike:.6g} < t_min^(n) = {o.t_min:.6g}: V reached θ before its window "
                         f"opened (inputs may still be arriving). The spike is wrong: t_max − t = {o.decoded:.6g} vs "
                         f"ReLU = {o.relu:.6g}, and the next layer, which starts at t_min^(n), would read at most "
                         f"B_n = {o.settings.window:.6g}. "
                         f"Peak drive P = {o.peak:.6g} ≥ B_n = {o.settings.window:.6g}; a window "
                         f"(1 + ζ)·P = {window_length(max(o.peak, 0.0), DEFAULT_MARGIN):.6g} fixes it.")
    if not o.fired:
        return "info", ("No spike (B1): V stays below θ until t_max, the activation is 0 and a spike at t_max would "
                        "contribute nothing downstream, so the neuron stays silent.")
    if o.forced:
        return "info", (f"Forced spike at t_max = {o.t_max:.6g}: V never reached θ in the window (the pre-activation "
                        f"{o.pre_activation:.6g} ≤ 0), so t_max − t = 0 = ReLU.")
    return "success", (f"Exact: the spike at t = {o.spike:.17g} comes after t_min^(n) = {o.t_min:.6g}, and "
                       f"t_max − t = ReLU(Σ W x + b).")


def numbers(o: Outcome) -> list[dict[str, Any]]:
    """The page's table of numbers (floats at full precision, and their 17-digit text). Quantities are written as
    a student reads them (`text.pretty`: "tₘₐₓ⁽ⁿ⁾"; `QUANTITIES` maps the raw names to them)."""
    rows = [
        ("spike time t", o.spike), ("t_max − t", o.decoded), ("ReLU(Σ W x + b)", o.relu),
        ("difference (t_max − t) − ReLU", o.difference), ("pre-activation Σ W x + b", o.pre_activation),
        ("t_min^(n−1)", o.start), ("t_min^(n)", o.t_min), ("t_max^(n)", o.t_max), ("θ", o.theta),
        ("final slope α + ΣJ", o.slope), ("Σ W (after rescaling)", o.sum_w), ("rescaling factor c", o.scale),
        ("peak drive P", o.peak), ("early spike", float(o.early)), ("forced at t_max", float(o.forced)),
        ("readout (original units)", o.readout),
    ]
    if o.stepped_spike is not None:
        rows += [("clock-driven spike time", o.stepped_spike), ("clock − exact", o.stepped_spike - o.spike)]
    return [{"quantity": pretty(q), "value": float(v), "digits": f"{float(v):.17g}"} for q, v in rows]


QUANTITIES = {raw: pretty(raw) for raw in (
    "spike time t", "t_max − t", "ReLU(Σ W x + b)", "difference (t_max − t) − ReLU", "pre-activation Σ W x + b",
    "t_min^(n−1)", "t_min^(n)", "t_max^(n)", "θ", "final slope α + ΣJ", "Σ W (after rescaling)", "rescaling factor c",
    "peak drive P", "early spike", "forced at t_max", "readout (original units)", "clock-driven spike time",
    "clock − exact")}  # raw name -> the name the Numbers table shows


def inputs_table(o: Outcome) -> list[dict[str, Any]]:
    s = o.settings
    return [{"input": j + 1, "x_j": s.x[j], "t_j": o.input_times[j], "W_j (given)": s.w[j], "W_j (rescaled)": o.w[j],
             "J_j": o.J[j], "kind": "excitatory" if o.w[j] > 0 else ("inhibitory" if o.w[j] < 0 else "none")}
            for j in range(len(s.x))]


def blowup(o: Outcome) -> list[dict[str, Any]]:
    """J and the final slope α + ΣJ = α/(1 − ΣW) (`mapping.alpha_parameters`) for the chosen weights scaled so that
    Σ W takes each value of BLOWUP_SUMS and the current one. Weights with Σ W ≤ 0 cannot be scaled to a positive
    sum: their rows use a single input of weight Σ W instead."""
    s = o.settings
    w = torch.tensor(o.w, dtype=torch.float64)
    total = float(w.sum())
    rows = []
    for target in sorted({*BLOWUP_SUMS, round(total, 12)}):
        if total > 0:
            ws = (w * (target / total)).reshape(1, -1)
        else:
            ws = torch.tensor([[target]], dtype=torch.float64)
        J, theta, slope = alpha_parameters(ws, torch.tensor([o.bias], dtype=torch.float64),
                                           torch.tensor([target], dtype=torch.float64), s.in_window, s.window)
        rows.append({"Σ W": target, "final slope α/(1 − ΣW)": float(slope[0]), "Σ J": float(J.sum()),
                     "largest |J|": float(J.abs().max()), "θ": float(theta[0]),
                     "yours": abs(target - total) < 1e-12})
    return rows


def _num(v: float, digits: int = 6) -> str:
    if math.isinf(v):
        return r"\infty" if v > 0 else r"-\infty"
    text = f"{v:.{digits}g}"
    if "e" in text:
        m, e = text.split("e")
        text = rf"{m}\times 10^{{{int(e)}}}"
    return text


def _signed(v: float) -> str:
    return ("- " if v < 0 else "+ ") + _num(abs(v))


def equations(o: Outcome) -> list[str]:
    """LaTeX for st.latex: the model's equations with the current numbers substituted."""
    s = o.settings
    k = len(s.x)
    sw = " ".join((_num(o.w[0]) if j == 0 else _signed(o.w[j])) for j in range(k))
    wx = " ".join(((_num(o.w[j]) if j == 0 else _signed(o.w[j])) + rf"\cdot{_num(s.x[j])}") for j in range(k))
    out = []
    if s.neuron.rescaled:  # the α-model's map J = αW/(1 − ΣW) (MATH §2), after the rescaling it needs
        if o.scale != 1:
            out.append(rf"c = {_num(o.scale)}:\quad W \leftarrow cW,\ b \leftarrow cb"
                       rf"\quad(\text{{{s.rescale} rule}})")
        alpha = "" if o.alpha == 1 else rf"{_num(o.alpha)}\,"
        out.append(rf"J_j = \frac{{\alpha W_j}}{{1 - \sum_k W_k}} = \frac{{{alpha}W_j}}{{1 - ({sw})}}"
                   rf" = {_num(o.slope)}\,W_j")
        out.append(rf"J = ({', '.join(_num(v) for v in o.J)})")
        out.append(rf"\alpha + \sum_j J_j = \frac{{\alpha}}{{1 - \sum_j W_j}} = {_num(o.slope)}")
        out.append(r"\theta = \alpha (B_{in} + B_n) + B_n \sum_j J_j - (\alpha + \sum_j J_j)\, b")
        out.append(rf"\theta = {_num(o.alpha)}\cdot{_num(s.in_window + s.window)} + "
                   rf"{_num(s.window)}\cdot{_num(o.slope - o.alpha)} - {_num(o.slope)}\cdot({_num(o.bias)}) "
                   rf"= {_num(o.theta)}")
        out.append(rf"V(t) = \alpha\,(t - {_num(o.start)}) + \sum_j J_j\,(t - t_j)^+")
        out.append(rf"t_j = t_{{min}}^{{(n)}} - x_j = ({', '.join(_num(v) for v in o.input_times)})")
    else:
        out.append(rf"J_j = W_j = ({', '.join(_num(v) for v in o.J)})")
        out.append(rf"\theta = B_n - b = "
                   rf"{_num(s.window)} - ({_num(o.bias)}) = {_num(o.theta)}")
        out.append(rf"V(t) = \sum_j W_j\,(t - t_j)^+ \quad (t < t_{{min}}^{{(n)}} = {_num(o.t_min)})")
        out.append(r"V(t) = V(t_{min}^{(n)}) + (t - t_{min}^{(n)}) \quad (t \ge t_{min}^{(n)})")
        out.append(rf"t_j = t_{{min}}^{{(n)}} - x_j = ({', '.join(_num(v) for v in o.input_times)})")
    out.append(rf"\sum_j W_j x_j + b = {wx} {_signed(o.bias)} = {_num(o.pre_activation)}")
    t = _num(o.spike) if o.fired else r"\text{no spike}"
    out.append(rf"t = t_{{max}} - \mathrm{{ReLU}}\Big(\sum_j W_j x_j + b\Big) = {_num(o.t_max)} - "
               rf"{_num(o.relu)} = {_num(o.t_max - o.relu)}")
    out.append(rf"\text{{simulated: }}t = {t}" + (r"\ \ (\text{early: wrong})" if o.early else ""))
    # the drive before the window opens (`NeuronModel.drive_slope`): with a start current f, without one (B1) g
    kind = "f(s) = b + \\sum_j W_j \\max(x_j, s) - s" if s.neuron.start_current_on else \
        "g(s) = b + \\sum_j W_j (x_j - s)^+"
    rel = r"\ge" if o.peak >= s.window else "<"
    out.append(rf"\text{{early}} \iff \max_{{0 < s \le B_{{in}}}} {kind} \ge B_n")
    letter = "f" if s.neuron.start_current_on else "g"
    out.append(rf"P = \max_s {letter}(s) = {_num(o.peak)} {rel} B_n = {_num(s.window)}")
    return out


def exactness_latex(o: Outcome) -> str:
    """t_max − t and the ReLU with all float64 digits, and their difference."""
    return (rf"\begin{{aligned}} t_{{max}} - t &= {o.decoded:.17g} \\ \mathrm{{ReLU}}\Big(\sum_j W_j x_j + b\Big) &= "
            rf"{o.relu:.17g} \\ \text{{difference}} &= {_num(o.difference, 3)} \end{{aligned}}")


def figure(o: Outcome) -> go.Figure:
    """The exact V(t) (and the clock-driven one), θ, the input spikes and the output spike
    (`figures.membrane`), on absolute time, with the clock-driven spike marked."""
    s = o.settings
    clock = f"dt = {s.dt:g} τ_c" if s.clock else None
    fig = figures.membrane([o.trace], ["playground"], height=480, clock=clock)
    origin = o.start
    for tr in fig.data:  # the membrane figure's times are relative to the neuron's start: shift to absolute
        if tr.x is not None:
            tr.x = np.asarray(tr.x, dtype=np.float64) + origin
    for shape in fig.layout.shapes:
        shape.x0, shape.x1 = shape.x0 + origin, shape.x1 + origin
    for ann in fig.layout.annotations:
        ann.x = ann.x + origin
    fig.update_xaxes(title_text=pretty("time t (τ_c; the input window is [t_min^(n−1), t_min^(n)])"), row=2, col=1)
    what = ("EARLY spike" if o.early else "forced spike" if o.forced else "spike" if o.fired else "no spike")
    detail = (f"{len(s.x)} inputs, {s.neuron.label} · {what}" + (f" at t = {sig(o.spike)}" if o.fired else "")
              + f" · tₘₐₓ − t = {sig(o.decoded)}, ReLU(Σ W x + b) = {sig(o.relu)}"
              + (f" · clock dt = {s.dt:g}: spike at {sig(o.stepped_spike)}" if o.stepped_spike is not None else ""))
    return figures.slide_title(fig, "One neuron: V(t), threshold θ and its spike", detail)


def export_stem(values: Mapping[str, Any]) -> str:
    """The file name of the playground's figure: the preset it shows (or "custom"), neuron model and clock."""
    s = settings(values)
    preset = values.get(PRESET) or "custom"
    return figures.export_name("playground", preset, s.neuron.name, f"{len(s.x)}-inputs",
                               f"dt{s.dt:g}" if s.clock else None)


def run(s: Settings) -> tuple[Outcome | None, list[str]]:
    """`evaluate` guarded: (outcome, []) or (None, messages) for settings that cannot be simulated."""
    bad = problems(s)
    if bad:
        return None, bad
    try:
        return evaluate(s), []
    except (InputError, ConversionError, ValueError) as e:
        return None, [str(e)]
