"""Time in the browser: the spike raster and the feature maps on one cursor, stepped and played client-side.

`spec` (pure: numpy and plotly, no Streamlit) packs one input's spikes once: the two figures at the initial
cursor, and for the input and the mapped layer, per neuron, its first fired step (`Timeline.fire_steps`), its
activation, its raster x and its mosaic cell; the per-step "fired by" counts of every layer; the cursor's x and
label at every step. Large networks (ResNet-50 at 224×224: 9.6 million neurons) keep it under 2 MB: layers over
`timeline.DENSITY_NEURONS` neurons are heat strips of spikes per channel and time bin, their map panel shows
chosen channels in a compact form, and a 3-channel input is one RGB image (see `_panel`).
`ttfs_ui/frontend/timeline/timeline.js` draws any step from that alone, so a cursor step, a Play frame or a hover
never reaches the server; a click on a neuron comes back as {layer, neuron, cursor}, a click on a heat strip as
{layer, channel, cursor} (the channel to map).

For teaching and slides the spec also carries: the absolute time of every cursor step (`cursor_t`); the ANN's
activation and the decoded SNN activation of every neuron of the layers drawn as dots (`activations`), which the
raster's own tooltip shows beside the spike time t in τ_c and a readable index (channel, row, col); the same input's
fired-by counts under the other neuron model (`Compare`: α beside B1, whose silent neurons never fire); and what a
slide export is called and titled (`export`: `export_stem`). The browser plays the cursor with the raster filling
in (reveal: spikes after the cursor hidden) at a chosen speed, and exports the raster with its maps as one PNG or
SVG, and the filling-in as a self-contained HTML animation (`frontend/timeline/export.js`); the figures' own mode
bars offer no image download (the maps' cells are canvases Plotly cannot see) and no cloud upload.

`timeline` is the Streamlit component. Its static files are those in `frontend/timeline/` and a copy of the
installed plotly package's own plotly.min.js, assembled once per version in a per-user cache folder (nothing is
fetched from the internet, and nothing is written into the installed package).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly
import plotly.graph_objects as go

from . import figures
from .timeline import (
    NEVER,
    Density,
    LayerSpikes,
    Timeline,
    channels_of,
    count_span,
    density,
    density_layers,
    has_maps,
)

FRONTEND = Path(__file__).resolve().parent / "frontend" / "timeline"
HIGHLIGHT = "hovered neuron"  # name of the raster's last trace: the neuron under the pointer, in every view


def typed(values: np.ndarray, dtype: str) -> dict:
    """A numpy array as the browser decodes it: {"dtype": "u1" | "u2" | "i2" | "i4" | "f4", "bdata": base64 of its
    bytes}."""
    return {"dtype": dtype, "bdata": base64.b64encode(np.ascontiguousarray(values, dtype=np.dtype(dtype)).tobytes())
            .decode("ascii")}


def steps_bytes(kfire: np.ndarray) -> dict:
    """Fire steps (`Timeline.fire_steps`) in one byte each where they fit: {"dtype": "u1", "base": b} holds
    step − b, 255 for NEVER (a layer fires within its own window and the one before: ~41 steps); else as int16.
    The browser decodes both (views.js `decode`)."""
    k = np.asarray(kfire, dtype=np.int64)
    fired = k[k < NEVER]
    base = int(fired.min()) if fired.size else 0
    if not fired.size or int(fired.max()) - base < 255:
        return {**typed(np.where(k < NEVER, k - base, 255), "u1"), "base": base}
    return typed(k, "i2")


FINE_ACTIVATIONS = 65_536  # a compact panel of at most this many neurons sends activations in 16 bits, else 8


def scaled(values: np.ndarray, top: float, dtype: str = "u2") -> dict:
    """Non-negative values as levels: {"dtype": "u2" | "u1", "scale": s}, value ≈ level · s, to 1.5e-5 of the top
    in 16 bits, or to the 256 colour levels the browser paints in 8 (a grid of many channels). The top is the
    larger of `top` (X_n) and the largest value."""
    v = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    top = max(float(top), float(v.max(initial=0.0)), 1e-30)
    levels = 65535 if dtype == "u2" else 255
    return {**typed(np.round(np.clip(v, 0.0, top) / top * levels), dtype), "scale": top / levels}


def _figure(fig: go.Figure) -> dict:
    return json.loads(fig.to_json())


@dataclass(frozen=True)
class Prepared:
    """What the raster costs to compute for one (network, input, axis), kept apart from the figures (a page
    memoises it while the mapped layer or channel changes): per layer the fired-by counts per step, and the
    densities of the layers drawn as heat strips (`timeline.density_layers`)."""

    counts: tuple[np.ndarray, ...]
    densities: dict[int, Density]


def prepare(spikes: Sequence[LayerSpikes], tl: Timeline, mode: str, max_points: int = figures.MAX_POINTS) -> Prepared:
    dense = density_layers([s.neurons for s in spikes], max_points)
    return Prepared(tuple(tl.fired_counts(n, s.offsets) for n, s in enumerate(spikes)),
                    {n: density(spikes[n], n, tl, mode) for n in sorted(dense)})


@dataclass(frozen=True)
class Compare:
    """The same input under the other neuron model, for the counts line: `this` and `other` name the two models
    ("α", "B1"); `counts` are the other network's fired-by counts per layer and step (`Timeline.fired_counts` on
    its own timeline: its windows differ, so step k is the same position in each window, not the same instant)."""

    this: str
    other: str
    counts: tuple[np.ndarray, ...]


def short_label(neuron) -> str:
    """"α" for the α-model, else the model's own label ("B1")."""
    return "α" if getattr(neuron, "name", "") == "alpha" else str(getattr(neuron, "label", neuron))


def compare_with(neuron, other_neuron, other_spikes: Sequence[LayerSpikes], other_tl: Timeline) -> Compare:
    """A `Compare` from the other network's spikes of the same input (`timeline.spikes_of`) and its timeline."""
    return Compare(short_label(neuron), short_label(other_neuron),
                   tuple(other_tl.fired_counts(n, s.offsets) for n, s in enumerate(other_spikes)))


def slug(text: str) -> str:
    """A file-name part: lower case, runs of anything but letters, digits and dots as one "-" (no leading or
    trailing "-"; "x" if nothing is left)."""
    out = re.sub(r"[^a-z0-9.]+", "-", str(text).lower()).strip("-.")
    return out or "x"


def export_stem(model_key: str, image: str | int) -> str:
    """The stem of the raster's slide files: model and input, e.g. "lenet5_img0_raster" (the browser appends the
    cursor time, "_t2.41", and the extension). `model_key`: "zoo:lenet5" or an upload's key; `image`: a test image's
    index, or an uploaded image's file name."""
    kind, _, name = str(model_key).partition(":")
    if kind == "upload":  # an upload's key is its digest: its first 8 digits say which
        model = f"upload-{slug(name)[:8]}"
    else:
        model = slug(name if kind == "zoo" else model_key)[:40]
    img = f"img{image}" if isinstance(image, int) else slug(Path(str(image)).stem)[:40]
    return f"{model}_{img}_raster"


def _density_entry(d: Density, trace: int, group: tuple[float, float]) -> dict:
    big = int(d.counts.max(initial=0)) >= 2**16
    return {"layer": d.layer, "trace": trace, "rows": d.rows, "bins": d.bins, "group": d.group,
            "channels": d.channels, "counts": typed(d.counts.ravel(), "i4" if big else "u2"),
            "top": typed(d.top, "i4"), "edges": [float(e) for e in d.edges], "y": [float(group[0]), float(group[1])],
            "early": d.early}


def _panel(s: LayerSpikes, n: int, tl: Timeline, mode: str, trace: int, axes: tuple[str, str], *,
           channels: Sequence[int] | None = None, colours: np.ndarray | None = None, dense: bool = False) -> dict:
    """One map panel: per neuron shown, its first fired step and its colour value. Three forms: the bundled
    models' (every neuron, exact: cells, int16 steps, float32 activations, raster x), "rgb" (a 3-channel input:
    steps and colour levels, one byte each) and "compact" (a big layer, or chosen channels of one: steps in a
    byte, activations in 16 bits, cells rebuilt by the browser from `layout`)."""
    base = {"layer": n, "trace": trace, "xref": axes[0], "yref": axes[1]}
    kfire = tl.fire_steps(n, s.offsets)
    if colours is not None:
        _, h, w = s.shape
        return {**base, "kind": "rgb", "neurons": s.neurons, "rows": h, "cols": w,
                "layout": {"kind": "rgb", "h": h, "w": w, "rows": h, "cols": w},
                "kfire": steps_bytes(kfire), "act": typed(colours.ravel(), "u1")}
    if not figures.compact(s, channels, dense):
        cells = figures.mosaic_index(s.shape)
        return {**base, "neurons": s.neurons, "rows": int(cells.shape[0]), "cols": int(cells.shape[1]),
                "cells": typed(cells.ravel(), "i4"), "kfire": typed(kfire, "i2"), "act": typed(s.activations, "f4"),
                "xpos": typed(np.where(np.isfinite(s.offsets), tl.positions(n, s.offsets, mode), np.nan), "f4")}
    if has_maps(s.shape):
        c, per = channels_of(s.shape)
        chans = list(range(c)) if channels is None else [int(i) for i in channels]
        layout = {**figures.grid_layout(s.shape, len(chans)), "channels": chans}
        local = (np.asarray(chans, dtype=np.int64)[:, None] * per + np.arange(per)).ravel()
    else:
        _, rows, cols, _, _ = figures.mosaic_layout(s.shape)
        layout = {"kind": "square", "n": s.neurons, "rows": rows, "cols": cols}
        local = np.arange(s.neurons)
    act = s.activations[local]
    return {**base, "kind": "compact", "neurons": int(local.size), "rows": layout["rows"], "cols": layout["cols"],
            "layout": layout, "kfire": steps_bytes(kfire[local]),
            "act": scaled(act, s.max_activation, "u2" if local.size <= FINE_ACTIVATIONS else "u1")}


MAX_HOVER_VALUES = 200_000  # most neurons (all dotted layers together) whose activations the raster's tooltip gets


def spec(spikes: Sequence[LayerSpikes], tl: Timeline, mode: str, n_map: int, cursor: int, *,
         max_points: int = figures.MAX_POINTS, channels: Sequence[int] | None = None,
         colours: np.ndarray | None = None, prepared: Prepared | None = None,
         ann: Sequence[tuple[np.ndarray, np.ndarray] | None] | None = None, compare: Compare | None = None,
         export: dict | None = None) -> dict:
    """Everything the browser needs to draw the raster and layer `n_map`'s feature maps at any cursor step.

    `channels`: the channels of layer `n_map` its panel shows (None: all); `colours`: the input's RGB levels
    (`timeline.input_colours`), drawn in colour; `prepared`: `prepare(spikes, tl, mode)` computed already. A
    network with layers drawn as densities gets, per such layer, its counts per channel row and time bin
    ("density"), and its fired-by counts as spans ("count_spans", `timeline.count_span`) instead of one number
    per step and layer ("counts").

    `ann`: per layer (the input first, None where not known), (ANN activation, decoded SNN activation) of every
    neuron in the original model's units (`ttfs_core.compare`), sent for the layers drawn as dots when they hold at
    most MAX_HOVER_VALUES neurons together; `compare`: the other neuron model's counts (`Compare`); `export`:
    {"stem", "title"} of the slide files (default: from the layer names)."""
    prepared = prepared if prepared is not None else prepare(spikes, tl, mode, max_points)
    raster = figures.raster(spikes, tl, mode, cursor, max_points=max_points, densities=prepared.densities)
    gl = any(isinstance(t, go.Scattergl) for t in raster.data)
    ring = {"color": "rgba(0,0,0,0)", "size": 13, "line": {"width": 2.5, "color": "#ff2b2b"}}
    raster.add_trace((go.Scattergl if gl else go.Scatter)(x=[], y=[], mode="markers", name=HIGHLIGHT, marker=ring,
                                                          hoverinfo="skip", showlegend=False))
    # the maps' cells are painted on canvases under the figure (timeline.js); its heatmaps, every neuron fired,
    # stay for hover only (transparent), with the axes, titles and colour bar
    dense = frozenset(prepared.densities)
    maps = figures.feature_maps(spikes[0], spikes[n_map], n_map, tl, tl.steps, channels=channels, colours=colours,
                                browser=True, dense=dense)
    maps.update_traces(visible=False, selector={"hoverinfo": "skip"})  # the static "not fired" backgrounds
    maps.update_traces(opacity=0, selector={"type": "heatmap", "hoverinfo": None})
    maps.update_traces(opacity=0, selector={"type": "heatmap", "hoverinfo": "none"})  # compact panels, RGB input
    maps.update_layout(paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)")
    groups = figures.raster_groups(spikes)
    panels = [_panel(spikes[0], 0, tl, mode, 1, ("x", "y"), colours=colours, dense=0 in dense),
              _panel(spikes[n_map], n_map, tl, mode, 3, ("x2", "y2"), channels=channels, dense=n_map in dense)]
    raster_json, maps_json = _figure(raster), _figure(maps)
    dense_traces = {int(t["meta"]): i for i, t in enumerate(raster_json["data"])
                    if str(t.get("name", "")).endswith(f"({figures.DENSITY})")}
    trace_layer = [-1 if t.get("meta") is None or t.get("name") == HIGHLIGHT or i in dense_traces.values()
                   else int(t["meta"]) for i, t in enumerate(raster_json["data"])]
    for i, n in enumerate(trace_layer):  # the dots' tooltip is the page's own (timeline.js): t in τ_c, not "x ="
        if n >= 0:
            raster_json["data"][i].pop("hovertemplate", None)
            raster_json["data"][i]["hoverinfo"] = "none"
    shapes = figures.cursor_shapes(tl, mode, 0)
    out = {
        "steps": tl.steps, "steps_per_window": tl.steps_per_window, "cursor": int(cursor),
        "labels": [tl.describe_step(k) for k in range(tl.steps + 1)],
        "cursor_x": [float(tl.cursor_x(k, mode)) for k in range(tl.steps + 1)],
        "x_end": float(tl.bands(mode)[-1][1]), "cursor_shapes": [shapes[0], shapes[-1]],
        "not_fired": figures.NOT_FIRED,
        "names": [s.name for s in spikes], "count_labels": [s.label for s in spikes],
        "shapes": [list(s.shape) for s in spikes], "neurons": [s.neurons for s in spikes],
        "traceable": [n > 0 for n in range(len(spikes))],
        "y0": [g[0] for g in groups], "y_scale": [(g[1] - g[0]) / max(s.neurons, 1) for g, s in zip(groups, spikes)],
        "trace_layer": trace_layer,
        "highlight_trace": len(raster_json["data"]) - 1,
        "raster": raster_json, "maps": maps_json, "panels": panels,
    }
    out["cursor_t"] = [float(tl.cursor_t(k)) for k in range(tl.steps + 1)]
    out["starts"], out["windows"] = [float(v) for v in tl.starts], [float(v) for v in tl.windows]
    out["colours"] = [figures.layer_colour(n) for n in range(len(spikes))]
    out["mode"] = mode
    out["map_layer"] = n_map
    out["export"] = {"stem": "raster", "title": f"Spike raster · feature maps of {spikes[n_map].label}",
                     **(export or {})}
    out["activations"] = _hover_values(spikes, ann, frozenset(prepared.densities))
    if compare is not None and len(compare.counts) == len(spikes):
        out["compare"] = {"this": compare.this, "other": compare.other,
                          "count_spans": [count_span(c) for c in compare.counts]}
    if prepared.densities:  # a deep or wide network: a thousand steps × dozens of layers would be most of the spec
        out["counts"] = None
        out["count_spans"] = [count_span(c) for c in prepared.counts]
        out["density"] = [_density_entry(d, dense_traces[n], groups[n]) for n, d in prepared.densities.items()]
    else:
        out["counts"] = [c.tolist() for c in prepared.counts]
    # the cursor is the browser's own once drawn: two specs that differ only in it are the same drawing
    body = json.dumps({k: v for k, v in out.items() if k != "cursor"}, sort_keys=True)
    out["id"] = hashlib.sha256(body.encode()).hexdigest()[:16]
    return out


def _hover_values(spikes: Sequence[LayerSpikes], ann, dense: frozenset[int]) -> list | None:
    """Per layer, {"ann", "snn"} (float32, every neuron) for the raster's tooltip, or None (not known, a heat strip,
    or too many neurons in all)."""
    if ann is None:
        return None
    keep = [n for n, a in enumerate(ann) if a is not None and n not in dense and n < len(spikes)]
    if sum(spikes[n].neurons for n in keep) > MAX_HOVER_VALUES:
        return None
    out: list = [None] * len(spikes)
    for n in keep:
        a, d = (np.asarray(v, dtype=np.float64).ravel() for v in ann[n])
        if a.size == spikes[n].neurons == d.size:
            out[n] = {"ann": typed(a, "f4"), "snn": typed(d, "f4")}
    return out


def size(payload: dict) -> int:
    """Bytes of a spec as the component receives it (one JSON string)."""
    return len(json.dumps(payload))


# --- the Streamlit component --------------------------------------------------------------------------------
def _cache_root() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ttfs_ui"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
        return root
    except OSError:  # no writable home: a private folder of this process
        return Path(tempfile.mkdtemp(prefix="ttfs_ui-"))


def plotly_js() -> Path:
    """The installed plotly package's own plotly.min.js (the version plotly.py was built against)."""
    return Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"


@functools.cache
def component_dir() -> Path:
    """The component's static folder: our index.html and timeline.js beside a copy of plotly.min.js, named by a
    digest of all three so that an upgrade of either gets a new folder."""
    files = {p.name: p for p in sorted(FRONTEND.iterdir()) if p.is_file()}
    files["plotly.min.js"] = plotly_js()
    digest = hashlib.sha256()
    for name, path in files.items():
        digest.update(name.encode())
        digest.update(path.read_bytes())
    target = _cache_root() / f"timeline-{digest.hexdigest()[:16]}"
    if not (target / "index.html").exists():
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
        for name, path in files.items():
            shutil.copyfile(path, staging / name)
        try:
            os.rename(staging, target)  # atomic: another process may have won the race, then use its copy
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return target


@functools.cache
def _component():
    import streamlit.components.v1 as components

    return components.declare_component("timeline", path=str(component_dir()))


def timeline(payload: dict, *, key: str) -> dict | None:
    """Draw the live raster and feature maps; returns the last neuron clicked ({layer, neuron, cursor, seq}) or
    None. The spec travels as one JSON string."""
    return _component()(spec=json.dumps(payload), key=key, default=None)
