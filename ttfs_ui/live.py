"""Time in the browser: the spike raster and the feature maps on one cursor, stepped and played client-side.

`spec` (pure: numpy and plotly, no Streamlit) packs one input's spikes once: the two figures at the initial
cursor, and for the input and the mapped layer, per neuron, its first fired step (`Timeline.fire_steps`), its
activation, its raster x and its mosaic cell; the per-step "fired by" counts of every layer; the cursor's x and
label at every step. `ttfs_ui/frontend/timeline/timeline.js` draws any step from that alone, so a cursor step,
a Play frame or a hover never reaches the server; a click on a neuron comes back as {layer, neuron, cursor}.

`timeline` is the Streamlit component. Its static files are the two in `frontend/timeline/` and a copy of the
installed plotly package's own plotly.min.js, assembled once per version in a per-user cache folder (nothing is
fetched from the internet, and nothing is written into the installed package).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import plotly
import plotly.graph_objects as go

from . import figures
from .timeline import LayerSpikes, Timeline

FRONTEND = Path(__file__).resolve().parent / "frontend" / "timeline"
HIGHLIGHT = "hovered neuron"  # name of the raster's last trace: the neuron under the pointer, in every view


def typed(values: np.ndarray, dtype: str) -> dict:
    """A numpy array as the browser decodes it: {"dtype": "i2" | "i4" | "f4", "bdata": base64 of its bytes}."""
    return {"dtype": dtype, "bdata": base64.b64encode(np.ascontiguousarray(values, dtype=np.dtype(dtype)).tobytes())
            .decode("ascii")}


def _figure(fig: go.Figure) -> dict:
    return json.loads(fig.to_json())


def spec(spikes: Sequence[LayerSpikes], tl: Timeline, mode: str, n_map: int, cursor: int, *,
         max_points: int = figures.MAX_POINTS) -> dict:
    """Everything the browser needs to draw the raster and layer `n_map`'s feature maps at any cursor step."""
    raster = figures.raster(spikes, tl, mode, cursor, max_points=max_points)
    gl = any(isinstance(t, go.Scattergl) for t in raster.data)
    ring = {"color": "rgba(0,0,0,0)", "size": 13, "line": {"width": 2.5, "color": "#ff2b2b"}}
    raster.add_trace((go.Scattergl if gl else go.Scatter)(x=[], y=[], mode="markers", name=HIGHLIGHT, marker=ring,
                                                          hoverinfo="skip", showlegend=False))
    # the maps' cells are painted on canvases under the figure (timeline.js); its heatmaps, every neuron fired,
    # stay for hover only (transparent), with the axes, titles and colour bar
    maps = figures.feature_maps(spikes[0], spikes[n_map], n_map, tl, tl.steps)
    maps.update_traces(visible=False, selector={"hoverinfo": "skip"})  # the static "not fired" backgrounds
    maps.update_traces(opacity=0, selector={"type": "heatmap", "hoverinfo": None})
    maps.update_layout(paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)")
    groups = figures.raster_groups(spikes)
    panels = []
    for n, trace, axes in ((0, 1, ("x", "y")), (n_map, 3, ("x2", "y2"))):
        s = spikes[n]
        cells = figures.mosaic_index(s.shape)
        panels.append({
            "layer": n, "trace": trace, "xref": axes[0], "yref": axes[1], "neurons": s.neurons,
            "rows": int(cells.shape[0]), "cols": int(cells.shape[1]), "cells": typed(cells.ravel(), "i4"),
            "kfire": typed(tl.fire_steps(n, s.offsets), "i2"), "act": typed(s.activations, "f4"),
            "xpos": typed(np.where(np.isfinite(s.offsets), tl.positions(n, s.offsets, mode), np.nan), "f4"),
        })
    raster_json, maps_json = _figure(raster), _figure(maps)
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
        "counts": [tl.fired_counts(n, s.offsets).tolist() for n, s in enumerate(spikes)],
        "y0": [g[0] for g in groups], "y_scale": [(g[1] - g[0]) / max(s.neurons, 1) for g, s in zip(groups, spikes)],
        "trace_layer": [-1 if t.get("meta") is None or t.get("name") == HIGHLIGHT else int(t["meta"])
                        for t in raster_json["data"]],
        "highlight_trace": len(raster_json["data"]) - 1,
        "raster": raster_json, "maps": maps_json, "panels": panels,
    }
    # the cursor is the browser's own once drawn: two specs that differ only in it are the same drawing
    body = json.dumps({k: v for k, v in out.items() if k != "cursor"}, sort_keys=True)
    out["id"] = hashlib.sha256(body.encode()).hexdigest()[:16]
    return out


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
