"""The comparison with rate-coded converters (pages/7_vs_rate_coding.py; measured by bench/peers.py).

The page draws the curves from the shipped results file (`bench/results.json`, its "peers" rows), so no peer is
needed to see them; when SpikingJelly is installed it also converts the session's model with its rate-coding recipe
and draws, for the chosen input, the rate-coded first hidden layer's spikes beside ours. The SpikingJelly recipe
lives here once, for the page and the benchmark. Figure and table builders are pure.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import Tensor, nn

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results.json"
INSTALL = 'pip install -e ".[bench]" && pip install --no-deps spikingjelly==2.0.0'
METRICS = {"accuracy": "%", "agreement": "%", "spikes per neuron": "spikes", "time / ANN": "×"}
X_AXES = {"steps": "time steps T (ours, clock-driven: ticks in all)", "time / ANN": "compute time / ANN forward",
          "spikes per neuron": "spikes per neuron"}
PEER_COLOURS = {"spikingjelly max": "#1f77b4", "spikingjelly 99.9%": "#17becf", "sinabs 99.9%": "#ff7f0e"}
OUR_COLOURS = {"α": "#d62728", "B1": "#2ca02c"}


# --- the shipped results -----------------------------------------------------------------------------------
def load(path: Path | None = None) -> dict | None:
    """The "peers" part of the results file (default `RESULTS`): {"date", "machine", "installed", "rows"}; None
    when it is missing or unreadable (the page then says how to make it)."""
    try:
        peers = json.loads((path or RESULTS).read_text()).get("peers")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(peers, dict) or not isinstance(peers.get("rows"), list):
        return None
    rows = [r for r in peers["rows"] if isinstance(r, dict) and {"model", "method", "metric", "value"} <= set(r)]
    return {**peers, "rows": rows} if rows else None


def models(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["model"] for r in rows if r["metric"] in METRICS))


def measured_model(model_key: str, names: list[str]) -> str | None:
    """The benchmark's name of the session's model (the sidebar's: "zoo:lenet5" -> "lenet5") when the benchmark
    measured it, else None (an upload, or a bundled model it did not measure)."""
    key = str(model_key)
    name = key.removeprefix("zoo:") if key.startswith("zoo:") else None
    return name if name in names else None


def images_measured(rows: list[dict], model: str) -> str:
    """What the benchmark ran a model on, from its rows' notes ("200 test images of mnist"), or ""."""
    for r in rows:
        if r.get("model") == model and r.get("notes"):
            return str(r["notes"]).split(";")[0].split(", batches")[0]
    return ""


def _series(rows: list[dict], model: str) -> dict[str, dict]:
    """method -> {steps -> {metric -> value}} for one model."""
    out: dict[str, dict] = {}
    for r in rows:
        if r["model"] == model and r["metric"] in METRICS and r["value"] is not None:
            out.setdefault(r["method"], {}).setdefault(r.get("steps"), {})[r["metric"]] = float(r["value"])
    return out


def curves(rows: list[dict], model: str, x_metric: str, y_metric: str, *, height: int = 460) -> go.Figure:
    """`y_metric` (accuracy or agreement, %) against `x_metric` for every method on one model: the rate-coded
    converters as lines over T = 8…512, ours as stars (the exact event-driven run: a dashed line across a
    time-steps axis, where it has no steps)."""
    fig = go.Figure()
    for method, by_steps in _series(rows, model).items():
        ours = method.startswith("ours")
        keys = sorted(by_steps, key=lambda s: -1 if s is None else s)
        xs = [s if x_metric == "steps" else by_steps[s].get(x_metric) for s in keys]
        ys = [by_steps[s].get(y_metric) for s in keys]
        pts = [(a, b, s) for a, b, s in zip(xs, ys, keys) if a is not None and b is not None]
        colour = OUR_COLOURS["B1" if "B1" in method else "α"] if ours else PEER_COLOURS.get(method, "#7f7f7f")
        if not pts:
            if x_metric == "steps" and ys and ys[0] is not None:
                fig.add_hline(y=ys[0], line={"color": colour, "dash": "dash", "width": 2},
                              annotation_position="bottom left" if "B1" in method else "top left",
                              annotation={"text": f"{method} (event-driven, one pass)", "font": {"color": colour}})
            continue
        hover = [f"{method}<br>{'T = ' + str(s) + '<br>' if s and not ours else ''}{y_metric} {b:.2f} %<br>"
                 f"{X_AXES.get(x_metric, x_metric)}: {a:.3g}" for a, b, s in pts]
        exact = "exact" in method
        fig.add_trace(go.Scatter(
            x=[p[0] for p in pts], y=[p[1] for p in pts], name=method, mode="markers" if exact else "lines+markers",
            marker={"symbol": "star" if exact else "diamond" if ours else "circle", "size": 16 if exact else 8,
                    "color": colour, "line": {"width": 1, "color": "black"} if exact else None},
            line={"color": colour, "dash": "dot" if ours else "solid"}, text=hover,
            hovertemplate="%{text}<extra></extra>", legendgroup="ours" if ours else "peers"))
    fig.update_layout(height=height, margin={"l": 60, "r": 10, "t": 30, "b": 50}, plot_bgcolor="white",
                      xaxis={"title": X_AXES.get(x_metric, x_metric), "type": "log", "dtick": 1, "gridcolor": "#eee"},
                      yaxis={"title": f"{y_metric} (%)", "gridcolor": "#eee"},
                      legend={"orientation": "h", "y": -0.22})
    return fig


def summary_rows(rows: list[dict], model: str) -> list[dict]:
    """One row per method and T for the page's table."""
    out = []
    for method, by_steps in _series(rows, model).items():
        for steps, v in sorted(by_steps.items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
            exact = "exact" in method
            ticks = "event-driven" if exact else f"{steps} (in all)" if method.startswith("ours") else str(steps)
            out.append({"method": method, "T (steps)": ticks,
                        "accuracy (%)": v.get("accuracy"), "agreement (%)": v.get("agreement"),
                        "spikes / neuron": v.get("spikes per neuron"), "time / ANN (×)": v.get("time / ANN")})
    return out


def headline(rows: list[dict], model: str) -> str | None:
    """The first T at which each rate-coded method agrees with the ANN on every image, against our exact run."""
    series = _series(rows, model)
    parts = []
    for method, by_steps in series.items():
        if method.startswith("ours"):
            continue
        full = [s for s in sorted(k for k in by_steps if k) if by_steps[s].get("agreement", 0) >= 100.0]
        if full:
            v = by_steps[full[0]]
            parts.append(f"{method} first agrees on every image at T = {full[0]} ({v['time / ANN']:.0f}× the ANN's "
                         f"time, {v['spikes per neuron']:.3g} spikes per neuron)")
        else:
            last = max(k for k in by_steps if k)
            parts.append(f"{method} reaches {by_steps[last]['agreement']:.2f} % agreement at T = {last} "
                         f"({by_steps[last]['time / ANN']:.0f}× the ANN's time)")
    ours = series.get("ours α exact")
    if ours:
        parts.append(f"ours (exact, α): {ours[None]['agreement']:.2f} % with one spike per neuron at "
                     f"{ours[None]['time / ANN']:.1f}× the ANN's time")
    return "; ".join(parts) + "." if parts else None


# --- SpikingJelly's rate coding ------------------------------------------------------------------------------
@dataclass
class RateCoded:
    """A rate-coded network stepped one time step per call: its neuron modules (for counting spikes) and how to
    reset it before an input."""

    name: str
    net: nn.Module
    neurons: list[nn.Module]
    reset: Callable[[], None]


def spikingjelly_version() -> str | None:
    """SpikingJelly's version when it can be imported, else None."""
    try:
        from importlib.metadata import version

        import spikingjelly.activation_based.ann2snn  # noqa: F401

        return version("spikingjelly")
    except Exception:  # noqa: BLE001 - absent or broken: the page says how to install it
        return None


def spikingjelly(model: nn.Module, calib: Tensor, mode: str = "99.9%") -> RateCoded:
    """SpikingJelly 2.0's `RateCodingRecipe` (IF neurons with soft reset; thresholds from the calibration
    activations: their max or 99.9th percentile, channel-wise) on a copy of `model`."""
    from spikingjelly.activation_based import ann2snn, functional, neuron

    loader = [(calib[i:i + 128], torch.zeros(0)) for i in range(0, len(calib), 128)]
    recipe = ann2snn.RateCodingRecipe(dataloader=loader, mode=mode, channel_wise=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = ann2snn.FXConverter(recipe=recipe, device="cpu").convert(copy.deepcopy(model)).eval()
    nodes = [m for m in net.modules() if isinstance(m, neuron.BaseNode)]
    return RateCoded(f"spikingjelly {mode}", net, nodes, lambda: functional.reset_net(net))


@torch.no_grad()
def first_layer_spikes(rc: RateCoded, x: Tensor, steps: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The rate-coded network's first neuron layer on one input for `steps` time steps: (step of each spike,
    neuron of each spike, neurons in the layer). Shape: x (1, ...)."""
    seen: list[Tensor] = []
    handle = rc.neurons[0].register_forward_hook(lambda m, i, o: seen.append(o.detach().flatten() > 0))
    try:
        rc.reset()
        for _ in range(steps):
            rc.net(x)
    finally:
        handle.remove()
    fired = torch.stack(seen)  # (steps, neurons)
    t, n = fired.nonzero(as_tuple=True)
    return (t + 1).numpy(), n.numpy(), fired.shape[1]


def raster_pair(rate: tuple[np.ndarray, np.ndarray, int], steps: int, ours_offsets: Tensor, window: float,
                label: str, *, height: int = 420) -> go.Figure:
    """Side by side, the same layer's neurons: every spike of the rate-coded network over `steps` time steps, and
    ours (one spike per neuron, at t − t_min of its window; a neuron with offset +inf (B1) did not spike)."""
    t, n, neurons = rate
    off = ours_offsets.flatten().double().numpy()
    fired = np.isfinite(off)
    idx = np.arange(off.size)
    fig = make_subplots(1, 2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=(f"rate-coded (SpikingJelly), {steps} steps: {len(t):,} spikes",
                                        f"ours: {int(fired.sum()):,} spikes, at most one per neuron"))
    size = 3 if len(t) > 20_000 else 4
    fig.add_trace(go.Scattergl(x=t, y=n, mode="markers", marker={"size": size, "color": "#1f77b4"},
                               name="rate-coded", hovertemplate="step %{x}<br>neuron %{y}<extra></extra>"), 1, 1)
    fig.add_trace(go.Scattergl(x=off[fired], y=idx[fired], mode="markers", marker={"size": 4, "color": "#d62728"},
                               name="ours", hovertemplate="t − t_min = %{x:.4g} τ_c<br>neuron %{y}<extra></extra>"),
                  1, 2)
    fig.update_xaxes(title_text="time step", range=[0, steps + 1], row=1, col=1)
    fig.update_xaxes(title_text=f"t − t_min (τ_c; window {window:.3g})", range=[-0.02 * window, 1.02 * window],
                     row=1, col=2)
    fig.update_yaxes(title_text=f"{label}: neuron (of {neurons:,})", row=1, col=1)
    fig.update_layout(height=height, margin={"l": 60, "r": 10, "t": 40, "b": 50}, plot_bgcolor="white",
                      showlegend=False)
    return fig


def spikes_per_neuron(rate: tuple[np.ndarray, np.ndarray, int]) -> float:
    t, _, neurons = rate
    return len(t) / max(neurons, 1) if neurons else math.nan
