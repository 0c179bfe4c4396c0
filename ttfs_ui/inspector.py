"""The conversion inspector: the captured graph of the original model, what each spiking layer absorbed from it
(`ttfs_core.network.Layer.absorbed`), the rescaling factors, X_n with the calibration activations, the windows
B_n and peak drives P_n, how the early-spike certificate settled each layer's neurons, and, for a model that
cannot be converted, the node at fault (`ttfs_core.ConversionError.node`).

Table and figure builders are pure (core objects in, rows / figures out); the few expensive computations are
cached like `ttfs_ui.cache` (keys first, unhashable objects as `_name` arguments).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp

import ttfs_core
from ttfs_core import passes, verify
from ttfs_core.capture import FUNCTIONS, METHODS, MODULES, describe
from ttfs_core.errors import ConversionError
from ttfs_core.untrusted import ModelLoadError, allowlist

from . import cache
from .figures import layer_colour
from .tables import interval
from .timeline import layer_label
from .uploads import BUNDLED_SHAPE, UploadedModel, exported_shape, read_model

FAILS = "✖ fails here"  # the status of the graph row at which conversion failed
SHAPE_PLUMBING = "shape plumbing"  # the kind of a node that only computes or checks sizes (torch.export's guards)
SHAPE_STATUS = "shape plumbing: sizes and guards, no tensor (not converted, not needed)"
# aten operators that read or check sizes, never a tensor's values: the allow-list's scalar plumbing
# (`ttfs_core.untrusted.allowlist.ALLOWED`, "shape arithmetic" and guards) and the guards torch.export may also write
SHAPE_OPERATORS = frozenset({
    "aten.sym_size.int", "aten.size.int", "aten.eq.int", "aten._assert_scalar.default", "aten.sym_numel.default",
    "aten.sym_stride.int", "aten.sym_storage_offset.default", "aten.sym_constrain_range.default",
    "aten.sym_constrain_range_for_size.default", "aten._assert_async.msg", "aten._assert_async.default",
    "aten.sym_not.default",
})
HIST_BINS = 60
MAX_LABELS = 20  # ops in a graph figure whose kinds are written under their markers (more: hover only)
CHUNK = 64  # calibration images per forward pass of the histogram (bounds memory on wide layers)


# --- models that cannot be converted (built-in demos) ------------------------------------------------------
def _sigmoid() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.Sigmoid(), nn.Linear(32, 10))


def _silu() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.SiLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))


def _gelu() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 32), nn.GELU(),
                         nn.Linear(32, 10))


def _two_padded_convs() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 28 * 28, 10))


DEMOS = {  # title -> builder of a small untrained model (eval mode) that cannot be converted, and why
    "Sigmoid between two Linear layers": (_sigmoid, "a non-ReLU activation: capture refuses the node"),
    "SiLU after a convolution": (_silu, "a non-ReLU activation: capture refuses the node"),
    "GELU between two Linear layers": (_gelu, "a non-ReLU activation: capture refuses the node"),
    "two padded convolutions without a ReLU between them": (
        _two_padded_convs, "captured, but lowering cannot compose the two zero-padded convolutions exactly"),
}


def demo_model(title: str) -> nn.Module:
    torch.manual_seed(0)
    return DEMOS[title][0]().eval()


# --- the captured graph --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Graph:
    """The original model's graph as rows (one per captured op, or per fx node when capture failed), and the
    conversion error if any: its message, the fx node it names and the stage (capture / lowering)."""

    rows: list[dict]
    error: str | None = None
    error_node: str | None = None
    stage: str | None = None
    edges: list[tuple[int, int]] = field(default_factory=list)  # (row of input, row reading it)

    @property
    def error_row(self) -> int | None:
        return next((k for k, r in enumerate(self.rows) if r["status"] == FAILS), None)


def _shape(t) -> str:
    meta = t.meta.get("tensor_meta") if isinstance(t, fx.Node) else None
    shape = getattr(meta, "shape", None)
    return "×".join(map(str, tuple(shape)[1:])) if shape is not None else ""


def is_shape_plumbing(node: fx.Node) -> bool:
    """Whether a node only reads or checks sizes (torch.export's ``sym_size``, ``_assert_scalar``,
    ``sym_constrain_range`` and the Python integer arithmetic between them): nothing to convert, nothing that fails
    conversion. A Python operator counts when it reads no tensor-valued node (integers only)."""
    if node.op != "call_function":
        return False
    name = allowlist.target_name(node.target)
    if name in SHAPE_OPERATORS:
        return True
    if name.startswith("operator.") and name.removeprefix("operator.") in allowlist.OPERATORS:
        return all(_is_size(a) for a in node.all_input_nodes)
    return False


def _is_size(node: fx.Node) -> bool:
    """A node whose value is an integer (a size), not a tensor."""
    val = node.meta.get("val", node.meta.get("example_value"))
    if val is not None:
        return not isinstance(val, torch.Tensor)
    return is_shape_plumbing(node)


def _fx_kind(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return MODULES.get(type(gm.get_submodule(node.target)), "unsupported")
    if node.op == "call_method":
        return METHODS.get(str(node.target), "unsupported")
    if is_shape_plumbing(node):  # before the capture's vocabulary: `n * 16` on sizes is no multiplication to convert
        return SHAPE_PLUMBING
    entry = FUNCTIONS.get(node.target)
    return entry[0] if entry else "unsupported"


def fx_rows(model: nn.Module, example: Tensor) -> tuple[list[dict], list[tuple[int, int]]]:
    """Every call node of the traced model (when the capture itself failed): name, kind (the capture's
    vocabulary, or "unsupported"), target, inputs, output shape. Empty if the model cannot even be traced."""
    try:
        gm = model if isinstance(model, fx.GraphModule) else fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - an untraceable model: the error message says why
        return [], []
    try:
        ShapeProp(gm).propagate(example)
    except Exception:  # noqa: BLE001 - shapes stay empty
        pass
    rows, index, edges = [], {}, []
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr", "output"):
            if node.op == "placeholder":
                index[node.name] = -1
            continue
        ins = [a.name for a in node.all_input_nodes]
        index[node.name] = len(rows)
        edges += [(index[i], len(rows)) for i in ins if index.get(i, -1) >= 0]
        kind = _fx_kind(node, gm)
        rows.append({"#": len(rows), "node": node.name,
                     "name": str(node.target) if node.op == "call_module" else node.name,
                     "kind": kind, "target": describe(node, gm),
                     "inputs": ", ".join("input" if index.get(i) == -1 else i for i in ins),
                     "shape": _shape(node), "spiking layer": "",
                     "status": SHAPE_STATUS if kind == SHAPE_PLUMBING else ""})
    return rows, edges


def failing_first(rows: list[dict]) -> list[dict]:
    """The graph's rows with the failing node's first (then the rest in graph order; "#" keeps each row's place in
    the graph), so the table opens on it however long the graph is."""
    return [r for r in rows if r["status"] == FAILS] + [r for r in rows if r["status"] != FAILS]


def op_rows(ops) -> tuple[list[dict], list[tuple[int, int]]]:
    """One row per captured op (`ttfs_core.capture.Op`)."""
    rows, index, edges = [], {}, []
    for k, op in enumerate(ops):
        index[op.node] = k
        edges += [(index[i], k) for i in op.inputs if i in index]
        rows.append({"#": k, "node": op.node, "name": op.name, "kind": op.kind, "target": op.target,
                     "inputs": ", ".join(i or "input" for i in op.inputs),
                     "shape": f"{'×'.join(map(str, op.in_shape))} → {'×'.join(map(str, op.out_shape))}",
                     "spiking layer": "", "status": ""})
    return rows, edges


def _mark(rows: list[dict], node: str | None, message: str) -> str | None:
    """Mark the row of `node` (or, failing that, the first row whose name the message quotes) as failing."""
    hit = next((r for r in rows if node is not None and r["node"] == node), None)
    if hit is None:
        hit = next((r for r in rows if f"{r['name']} (" in message or f"{r['node']} (" in message), None)
    if hit is None:
        return node
    hit["status"] = FAILS
    return hit["node"]


def _assign_layers(rows: list[dict], snn: ttfs_core.SpikingNetwork) -> None:
    """Fill each row's "spiking layer": the layers whose `absorbed` lists its op."""
    owners: dict[str, list[str]] = {}
    for layer in snn.all_layers:
        for name, _, _ in layer.absorbed:
            owners.setdefault(name, [])
            if layer.name not in owners[name]:
                owners[name].append(layer.name)
    for r in rows:
        r["spiking layer"] = ", ".join(owners.get(r["name"], []))
        if not r["status"]:
            r["status"] = "absorbed" if r["spiking layer"] else "not on a spiking layer"


def inspect_graph(model: nn.Module, example: Tensor, snn: ttfs_core.SpikingNetwork | None = None,
                  input_range: tuple[float, float] = (0.0, 1.0)) -> Graph:
    """Capture `model` on `example` (1, *input_shape); with `snn` (its converted network) each op is assigned to
    the spiking layers that absorbed it; without, the model is converted on `example` (`convert(..., stages=True)`)
    to find the pass at which conversion fails, and the ops it captured."""
    if snn is not None:
        try:
            ops = passes.capture(model, example).ops
        except ConversionError as exc:
            return _failed(model, example, exc)
        rows, edges = op_rows(ops)
        _assign_layers(rows, snn)
        return Graph(rows, None, None, None, edges)
    try:
        stages = ttfs_core.convert(model, example, input_range=input_range, stages=True)
    except ConversionError as exc:
        return _failed(model, example, exc)
    rows, edges = op_rows(stages.ops)
    return Graph(rows, None, None, None, edges)


def _failed(model: nn.Module, example: Tensor, exc: ConversionError) -> Graph:
    """The graph of a model whose conversion failed: the fx nodes if capture failed, else the captured ops, with
    the failing node marked and the pass named ("capture", "lowering", or a later pass of `ttfs_core.passes`)."""
    ops = exc.stages.ops if isinstance(exc.stages, passes.Stages) else ()
    if exc.stage in (None, "capture") or not ops:
        rows, edges = fx_rows(model, example)
        stage = "capture"
    else:
        rows, edges = op_rows(ops)
        stage = "lowering" if exc.stage == "lower" else exc.stage
    node = _mark(rows, exc.node, str(exc))
    return Graph(rows, str(exc), node, stage, edges)


def graph_figure(graph: Graph, *, height: int | None = None) -> go.Figure:
    """The ops left to right in graph order, coloured by the spiking layer that absorbed them; an edge that skips
    ops (a residual branch) is drawn as an arc. The failing node, if any, is a red cross."""
    rows = graph.rows
    layers = list(dict.fromkeys(r["spiking layer"] for r in rows))
    fig = go.Figure()
    top = 0.3  # above the highest arc (no arc: just room for the markers)
    for a, b in graph.edges:
        lift = 0.0 if b - a <= 1 else 0.25 + 0.1 * min(b - a, 8)
        top = max(top, lift + 0.15)
        xs = np.linspace(a, b, 12)
        ys = lift * np.sin(np.pi * (xs - a) / max(b - a, 1))
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": "#b0b7c3", "width": 1},
                                 hoverinfo="skip", showlegend=False))
    for n, owner in enumerate(layers):
        idx = [k for k, r in enumerate(rows) if r["spiking layer"] == owner and r["status"] != FAILS]
        if not idx:
            continue
        fig.add_trace(go.Scatter(
            x=idx, y=[0.0] * len(idx), mode="markers+text", name=owner or "(no spiking layer)",
            marker={"size": 14, "color": layer_colour(n) if owner else "#999999",
                    "line": {"width": 1, "color": "#333"}},
            text=[rows[k]["kind"] for k in idx] if len(rows) <= MAX_LABELS else None, textposition="bottom center",
            customdata=[[rows[k]["name"], rows[k]["target"], rows[k]["shape"]] for k in idx],
            hovertemplate="<b>%{customdata[0]}</b><br>%{customdata[1]}<br>%{customdata[2]}<extra>"
                          + (owner or "–") + "</extra>"))
    bad = graph.error_row
    if bad is not None:
        fig.add_trace(go.Scatter(x=[bad], y=[0.0], mode="markers+text", name="fails here",
                                 marker={"size": 20, "color": "#d62728", "symbol": "x"}, text=[rows[bad]["name"]],
                                 textposition="top center", hovertemplate=f"{graph.error}<extra></extra>"))
    height = height or int(150 + 110 * (top + 0.6))
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 10, "b": 10}, plot_bgcolor="white",
                      xaxis={"title": "captured op (graph order)", "showgrid": False,
                             "dtick": 1 if len(rows) <= 30 else None},
                      yaxis={"visible": False, "range": [-0.6, top]}, legend={"orientation": "h", "y": -0.3})
    return fig


# --- spiking layers: provenance, rescaling, windows, certificate ----------------------------------------------
def absorbed_names(layer) -> list[str]:
    """The original ops a spiking layer absorbed, by name (module path or fx node), in graph order."""
    return [name for name, _, _ in layer.absorbed]


def provenance_rows(snn: ttfs_core.SpikingNetwork) -> list[dict]:
    """Per spiking layer (and the readout): which original modules / nodes went into it, its sources and delays."""
    rows = []
    for layer in snn.all_layers:
        main = [f"{n} ({d.split(';')[0]})" for n, k, d in layer.absorbed if k in ("conv", "linear")]
        norm = [f"{n}: {d}" for n, k, d in layer.absorbed if k == "affine"]
        pool = [f"{n}: {d}" for n, k, d in layer.absorbed if k in ("maxpool", "avgpool", "adaptive_avgpool", "mean")]
        glue = [n for n, k, _ in layer.absorbed if k in ("reshape", "permute", "identity", "slice", "cat", "add",
                                                         "mul", "relu", "relu6")]
        delays = [f"{'input' if s.source < 0 else snn.layers[s.source].name}: {s.delay:.4g}" for s in layer.inputs]
        rows.append({"layer": layer.name, "spiking": not layer.is_output, "op": layer.op, "reads": snn.reads(layer),
                     "conv / Linear": ", ".join(main), "BatchNorm (folded)": "; ".join(norm),
                     "pooling": "; ".join(pool), "other ops": ", ".join(glue),
                     "delays (τ_c)": ", ".join(delays) if len(layer.inputs) > 1 else "",
                     "absorbed (all)": ", ".join(absorbed_names(layer))})
    return rows


def _stats(t: Tensor) -> tuple[float, float, float]:
    v = t.detach().double().flatten()
    return float(v.min()), float(v.median()), float(v.max())


def scale_figure(snn: ttfs_core.SpikingNetwork, *, height: int = 320) -> go.Figure:
    """The rescaling factors c (converted activation = c · original) of every layer's neurons, one box per layer."""
    fig = go.Figure()
    for n, layer in enumerate(snn.all_layers):
        values = layer.scale.detach().double().flatten().numpy()
        fig.add_trace(go.Box(y=values, name=layer_label(layer) if not layer.is_output else f"readout {layer.name}",
                             marker_color=layer_colour(n), boxpoints="outliers"))
    fig.update_layout(height=height, margin={"l": 50, "r": 10, "t": 10, "b": 40}, plot_bgcolor="white",
                      xaxis={"type": "category"}, yaxis={"title": "rescaling factor c", "type": "log"},
                      showlegend=False)
    return fig


@st.cache_data(show_spinner="Recording the calibration activations…", max_entries=16)
def calibration_histograms(net_key: cache.Settings, _entry: cache.ModelEntry,
                           _snn: ttfs_core.SpikingNetwork) -> list[dict]:
    """Per hidden layer, over the calibration images (what `cache.network` calibrated on: the first
    `cache.CALIBRATION_IMAGES` of the model's train subset, or those spread over its uploaded data set): the
    histogram of its non-zero activations (converted units), the share of zeros and the largest activation (= X_n)."""
    x = cache.images(_entry, _entry.dataset, "train", 0, cache.CALIBRATION_IMAGES)
    tops = [max(float(layer.window), float(layer.max_activation), float(layer.peak_drive), 1e-12)
            for layer in _snn.layers]
    counts = [np.zeros(HIST_BINS, dtype=np.int64) for _ in _snn.layers]
    zeros = [0] * len(_snn.layers)
    total = [0] * len(_snn.layers)
    largest = [0.0] * len(_snn.layers)
    with torch.no_grad():
        for lo in range(0, x.shape[0], CHUNK):
            acts = _snn.activations(x[lo:lo + CHUNK].to(_snn.dtype))[1:]
            for n, a in enumerate(acts):
                v = a.double().flatten().numpy()
                nz = v[v > 0]
                counts[n] += np.histogram(nz, HIST_BINS, (0.0, tops[n]))[0]
                zeros[n] += int(v.size - nz.size)
                total[n] += int(v.size)
                largest[n] = max(largest[n], float(v.max(initial=0.0)))
    return [{"layer": layer.name, "edges": np.linspace(0.0, tops[n], HIST_BINS + 1), "counts": counts[n],
             "zero share": zeros[n] / max(total[n], 1), "max": largest[n]} for n, layer in enumerate(_snn.layers)]


def activation_figure(hist: dict, layer, *, height: int = 300) -> go.Figure:
    """One layer's calibration activations with X_n, P_n and the window B_n marked."""
    edges, counts = hist["edges"], hist["counts"]
    fig = go.Figure(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=np.diff(edges), marker_color="#636EFA",
                           name="activations > 0", hovertemplate="x ≈ %{x:.4g}: %{y} neurons × images<extra></extra>"))
    for value, name, colour, dash in ((layer.max_activation, "X_n", "#00CC96", "solid"),
                                      (layer.peak_drive, "P_n", "#FFA15A", "dot"),
                                      (layer.window, "B_n", "#EF553B", "dash")):
        fig.add_vline(x=float(value), line={"color": colour, "dash": dash, "width": 2},
                      annotation={"text": f"{name} = {float(value):.4g}", "textangle": -90})
    fig.update_layout(height=height, margin={"l": 50, "r": 10, "t": 30, "b": 40}, plot_bgcolor="white",
                      xaxis={"title": "activation x (converted units; spike at t_max − x)"},
                      yaxis={"title": "count", "type": "log"}, showlegend=False)
    return fig


@st.cache_data(show_spinner=False, max_entries=64)
def pre_activation_peaks(net_key: cache.Settings, image_key: str, _snn: ttfs_core.SpikingNetwork,
                         _x: Tensor) -> list[float]:
    """Per hidden layer: the largest pre-activation z_i = Σ_j W_ij x_j + b_i (= f_i(0⁺)) on one input."""
    with torch.no_grad():
        acts = _snn.activations(_x.to(_snn.dtype))
        out = []
        for layer in _snn.layers:
            xs = [syn.route_activations(acts[syn.source + 1]) for syn in layer.inputs]
            out.append(float((layer.weighted_sum(xs) + layer.bias).max()))
    return out


def window_rows(snn: ttfs_core.SpikingNetwork, result, peaks: list[float]) -> list[dict]:
    """Per hidden layer: rescaling factors, X_n, P_n, B_n, the headroom to an early spike, and how the
    early-spike certificate settled the neurons on the input shown."""
    rows = []
    for layer, lr, z in zip(snn.layers, result.layers, peaks):
        lo, med, hi = _stats(layer.scale)
        stages = dict(lr.certificate)
        row = {"layer": layer.name, "neurons": layer.neurons, "c min": lo, "c median": med, "c max": hi,
               "X_n": float(layer.max_activation), "P_n": float(layer.peak_drive), "B_n (τ_c)": float(layer.window),
               "window [t_min, t_max]": interval(layer.t_min, layer.t_max),
               "B_n − P_n (calibration)": float(layer.window - layer.peak_drive),
               "B_n − max z (this input)": float(layer.window - z)}
        for name, count in stages.items():
            row[f"cert: {name}"] = int(count)
        row["searched exactly"] = int(lr.searched)
        row["early spikes"] = int(lr.early_spikes)
        rows.append(row)
    return rows


def certificate_figure(rows: list[dict], *, height: int = 300) -> go.Figure:
    """Stacked bars: per layer, the share of neurons each certificate stage settled, and those searched."""
    stages = [k for k in rows[0] if k.startswith("cert: ")] if rows else []
    names = [r["layer"] for r in rows]
    fig = go.Figure()
    for n, key in enumerate([*stages, "searched exactly"]):
        fig.add_trace(go.Bar(x=names, y=[r.get(key, 0) / max(r["neurons"], 1) for r in rows],
                             name=key.removeprefix("cert: "), marker_color=layer_colour(n),
                             customdata=[r.get(key, 0) for r in rows],
                             hovertemplate="%{x}: %{customdata} neurons (%{y:.2%})<extra>" + key + "</extra>"))
    fig.update_layout(barmode="stack", height=height, margin={"l": 50, "r": 10, "t": 10, "b": 40},
                      plot_bgcolor="white", xaxis={"type": "category", "title": "spiking layer"},
                      yaxis={"title": "share of the layer's neurons", "tickformat": ".0%"},
                      legend={"orientation": "h", "y": -0.25})
    return fig


# --- where the SNN and the ANN part ----------------------------------------------------------------------
@dataclass(frozen=True)
class Parting:
    layer: str
    neuron: int  # flat index of the neuron to trace
    reason: str


@st.cache_data(show_spinner=False, max_entries=64)
def first_parting(net_key: cache.NetKey, image_key: str, _entry: cache.ModelEntry, _snn: ttfs_core.SpikingNetwork,
                  _x: Tensor, _result) -> Parting | None:
    """The first layer where the SNN leaves the ANN on one input, as the core's verdict on its verification report
    names it (`ttfs_core.verify.Verdict.parting`): a layer with early spikes (its earliest one is traced), else one
    whose decoded activations differ from the ReLU layer's by more than rounding (its largest difference is
    traced). None when the SNN follows the ANN everywhere."""
    report = cache.check(net_key, image_key, _entry, _snn, _x)
    name = verify.verdict(report).parting
    if name is None:
        return None
    for n, (layer, lr, check) in enumerate(zip(_snn.layers, _result.layers, report.layers)):
        if layer.name != name:
            continue
        if lr.early_spikes:
            off = lr.offsets[0].flatten()
            k = int(off.argmin())
            return Parting(layer.name, k, f"{int(lr.early_spikes):,} early spikes: neurons reached their threshold "
                                          f"before all their inputs had arrived (the earliest {-float(off[k]):.3g} "
                                          f"τ_c before t_min), because the window B_n = {layer.window:.4g} is "
                                          f"below the drive f_i(s) they received (ζ = {_snn.margin:g})")
        c = cache.comparison(net_key, image_key, _entry.model, _snn, _x)[n]
        k = int((c.snn - c.ann).abs().flatten().argmax())
        return Parting(layer.name, k, f"no early spike here, but the decoded activations differ from the ReLU "
                                      f"layer's by up to {check.error.value:.3g} (neuron {k}): an input "
                                      "layer's early spikes, or a saturated (clipped) neuron, reached it")
    ann = cache.ann_logits(_entry.key, image_key, _entry.model, _x)[0]
    k = int(np.abs(ann - _result.logits[0].double().numpy()).argmax())
    return Parting(name, k, f"no early spike in any layer, but the logits differ from the ANN's by up to "
                            f"{report.readout.error.value:.3g} (class {k})")


# --- cached entry points for the page ------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=16)
def current_graph(net_key: cache.Settings, _entry: cache.ModelEntry, _snn: ttfs_core.SpikingNetwork,
                  _x: Tensor) -> Graph:
    """The graph of the session's model, each op assigned to the spiking layers of its converted network."""
    return inspect_graph(_entry.model, _x[:1], _snn)


def _example(model: nn.Module, shape: tuple[int, ...] | None = None) -> Tensor:
    """A zero input for the model: of ``shape`` (C, H, W), else the shape its export recorded, else MNIST's."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return torch.zeros(1, *(shape or exported_shape(model) or BUNDLED_SHAPE), dtype=dtype)


@st.cache_data(show_spinner=False, max_entries=len(DEMOS))
def demo_graph(title: str) -> Graph:
    model = demo_model(title)
    return inspect_graph(model, _example(model))


@st.cache_data(show_spinner="Inspecting the model file…", max_entries=8)
def upload_graph(key: str, filename: str, _data: bytes, shape: tuple[int, int, int] | None = None,
                 arch: str | None = None) -> Graph:
    """The graph of a model file (the main page's safe loader), where its conversion fails if it does, on inputs
    of ``shape`` (C, H, W; default: the shape its export recorded, else MNIST's)."""
    try:
        model = read_model(_data, filename, arch)
    except (ModelLoadError, ValueError) as exc:
        return Graph([], f"the file cannot be loaded: {exc}", None, "loading")
    example = _example(model, shape)
    try:
        return inspect_graph(model, example)
    except Exception as exc:  # noqa: BLE001 - an input the model does not take: the message says so
        return Graph([], f"the model does not run on a {'×'.join(map(str, example.shape[1:]))} input: "
                         f"{' '.join(str(exc).split())[:300]}", None, "capture")


def failing_graph(demo: str, upload: UploadedModel | None) -> tuple[str, Graph] | None:
    """(title, graph) for a session's upload that failed if one is given (the main page's upload: its file, with
    the input shape its form gave), else for the chosen demo; None for neither."""
    if upload is not None:
        shape = upload.preprocess.shape if upload.preprocess is not None else None
        return f"uploaded {upload.filename}", upload_graph(upload.key, upload.filename, upload.data, shape,
                                                           upload.arch)
    if demo in DEMOS:
        return demo, demo_graph(demo)
    return None
