"""Figure builders: data in, `plotly.graph_objects.Figure` out. Pure: no Streamlit, no global styling.

Every builder takes plain numpy data (see `timeline.LayerSpikes`, `ttfs_ui.cache` records), so tests can
check a figure's data against the core's results.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .text import T_MIN_PREV
from .timeline import (
    ABSOLUTE,
    DENSITY_NEURONS,
    DOTS_PER_LAYER,
    STRETCHED,
    Density,
    LayerSpikes,
    Sample,
    Timeline,
    channels_of,
    density,
    density_layers,
    most_active,
    unravel,
)

PALETTE = ("#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692", "#B6E880",
           "#FF97FF", "#FECB52")
NOT_FIRED = "#dfe4ec"  # cells of neurons that have not fired yet
INPUT_COLOURS = [[0.0, "black"], [1.0, "white"]]  # x̂ = 0 black, x̂ = 1 white: an MNIST digit
FUTURE = "rgba(120,120,120,0.28)"  # the part of the time axis after the cursor
WEBGL_SPIKES = 2000  # figures with more points are drawn with WebGL (every trace: mixing SVG and WebGL is slower)
MAX_POINTS = DOTS_PER_LAYER  # per layer (40,000); more neurons are decimated (stated on the figure)
GAP = 0.04  # vertical gap between layer groups, as a fraction of all neurons
EARLY = "early spikes"  # name of the raster's overlay traces marking early spikes
MIN_GROUP = 0.06  # the smallest share of the raster's height a layer gets


# ------------------------------------------------------------------------------------------------------------
# Slides: every chart's download (the camera button of its mode bar), its title and file name, in one place
SLIDE_FORMATS = ("png", "svg")  # what the mode bar's camera button downloads (plotly.js draws both in the browser)
FORMAT_KEY = "slide_format"  # the widget key of the page's format choice (`export_format`)
CLOUD_BUTTONS = ("sendDataToCloud", "editInChartStudio")  # uploads to Plotly's cloud: never offered
# a font the system has: the exported image is drawn without the page's web font (Source Sans), and text measured
# in one font but drawn in another overflows (a legend cut at the image's edge)
SLIDE_FONT = "Arial, 'Liberation Sans', Helvetica, sans-serif"
LABEL_CHARS = 28  # a layer name longer than this is abbreviated in titles and legends (the full name on hover)


def export_name(*parts) -> str:
    """A file name stem from its parts (model, input, view, cursor...): each part's runs of characters other than
    letters, digits, '.' and '+' become one '-', parts are joined by '_', empty parts are left out.
    ("lenet5", "img0", "membrane", "conv 2·17") -> "lenet5_img0_membrane_conv-2-17"."""
    words = [re.sub(r"[^A-Za-z0-9.+]+", "-", str(p)).strip("-") for p in parts if p is not None]
    return "_".join(w for w in words if w)[:120] or "figure"


def export_config(name: str, fmt: str = "png") -> dict:
    """The Plotly config of every chart of the explorer: the camera button downloads the figure as `fmt` (PNG at
    twice the screen's resolution, or SVG) under `name` (`export_name`), never as plot-image.png; no Plotly logo,
    no button that sends the figure to Plotly's cloud. The title, cursor time, counts and legend are in the figure
    itself (`slide_title`), so the file needs no caption around it."""
    fmt = fmt if fmt in SLIDE_FORMATS else SLIDE_FORMATS[0]
    return {"displaylogo": False, "showSendToCloud": False, "showEditInChartStudio": False, "showLink": False,
            "modeBarButtonsToRemove": list(CLOUD_BUTTONS),
            "toImageButtonOptions": {"format": fmt, "scale": 2 if fmt == "png" else 1,
                                     "filename": re.sub(r"[^A-Za-z0-9._+-]+", "-", str(name))[:120] or "figure"}}


def chosen_format(session_state) -> str:
    """The format last chosen in `export_format` (for a chart drawn where the choice is not drawn)."""
    fmt = session_state.get(f"_{FORMAT_KEY}")
    return fmt if fmt in SLIDE_FORMATS else SLIDE_FORMATS[0]


def export_format(st_module, where=None) -> str:
    """Draw the choice of the camera button's format (PNG or SVG) in `where` (default: the sidebar of `st_module`,
    the streamlit module: figures never imports Streamlit) and return it. The choice is kept for the session
    (copied to a canonical key, as `ttfs_ui.state.bind` does), so every page downloads in the format last chosen."""
    state = st_module.session_state
    canonical, widget = f"_{FORMAT_KEY}", FORMAT_KEY
    if state.get(canonical) not in SLIDE_FORMATS:
        state[canonical] = SLIDE_FORMATS[0]
    state[widget] = state[canonical]

    def copy_back() -> None:
        state[canonical] = state[widget]

    (where if where is not None else st_module.sidebar).radio(
        "Charts download as", SLIDE_FORMATS, key=widget, on_change=copy_back, horizontal=True, format_func=str.upper,
        help="The camera button in each chart's toolbar (top right, on hover) downloads it for slides, with its "
             "title, time cursor, counts and legend, under a file name saying model, input, view and cursor.")
    return state[canonical]


def slide_model(entry) -> str:
    """A model's name in file names: a bundled one's zoo name ("lenet5"), an upload's file name without suffix."""
    key = str(entry.key)
    if key.startswith("zoo:"):
        return key.removeprefix("zoo:")
    name = re.split(r" \+ | \(", str(entry.title))[0].strip()  # "net.pt2 + data.npz (uploaded)" -> "net.pt2"
    return name.rsplit(".", 1)[0] if "." in name else name or "upload"


def slide_stem(cur, *view) -> str:
    """The file name stem of a chart of the page's model and input (`ttfs_ui.controls.Current`, duck-typed):
    model ("lenet5", an upload's file name), input ("img0"; "fashion-img3" from another dataset than the model's;
    "upload-1a2b3c4d" for an uploaded or drawn image), then the view's parts ("membrane", "conv-2", "n17", "t40")."""
    model = slide_model(cur.entry)
    head, _, tail = str(cur.image_key).rpartition(":")
    dataset = getattr(cur, "dataset", "")
    if head == str(dataset if isinstance(dataset, str) else getattr(dataset, "name", "")):  # a test image
        own = getattr(cur.entry, "dataset", None) == dataset
        image = f"img{tail}" if own else f"{head}-img{tail}"
    else:  # an uploaded or drawn image
        image = "upload-" + head.rpartition(":")[2][:8]
    return export_name(model, image, *view)


def slide_title(fig: go.Figure, title: str, detail: str = "") -> go.Figure:
    """Write the figure's title (bold) and a line of detail (input, cursor, counts) into the figure itself, above
    the plot (the top margin and the height grow by the room it takes, so the plot keeps its size); its text in
    SLIDE_FONT, which the downloaded image draws as the page does."""
    extra = 58 if detail else 36
    margin = fig.layout.margin
    top = (margin.t if margin is not None and margin.t is not None else 40) + extra
    height = fig.layout.height
    fig.update_layout(title={"text": f"<b>{title}</b>", "x": 0.01, "xanchor": "left", "xref": "container",
                             "y": 1, "yanchor": "top", "yref": "container", "pad": {"t": 10},
                             "font": {"size": 16}, "subtitle": {"text": detail, "font": {"size": 12}}},
                      margin={"t": top}, font={"family": SLIDE_FONT})
    if height is not None:
        fig.update_layout(height=height + extra)
    return fig


def short_label(label: str, limit: int = LABEL_CHARS) -> str:
    """`label` cut in its middle to at most `limit` characters ("features.denseblock4…layer16.conv2"), so that an
    uploaded model's long layer names fit a subplot title or a legend; figures keep the full name in the hover."""
    label = str(label)
    if len(label) <= limit:
        return label
    head = (limit - 1) // 2
    return label[:head] + "…" + label[len(label) - (limit - 1 - head):]


def layer_colour(n: int) -> str:
    return PALETTE[n % len(PALETTE)]


def axis_title(mode: str) -> str:
    if mode == STRETCHED:
        return "time, each layer's window stretched to equal width (window n ↦ [n, n+1]; not to scale)"
    return "time t (units of τ_c)"


# ------------------------------------------------------------------------------------------------------------
# Spike raster
def raster_groups(spikes: Sequence[LayerSpikes]) -> list[tuple[float, float]]:
    """[y0, y1) of every layer's neuron-index group (input at the bottom). A group is as tall as its layer has
    neurons, but at least MIN_GROUP of all of them, so that a small layer's label never sits on its neighbour's."""
    total = sum(s.neurons for s in spikes)
    gap = GAP * total / max(len(spikes), 1)
    out, y = [], 0.0
    for s in spikes:
        height = max(float(s.neurons), MIN_GROUP * total)
        out.append((y, y + height))
        y += height + gap
    return out


def raster_y(group: tuple[float, float], neurons: int, idx: np.ndarray) -> np.ndarray:
    """y of flat neuron indices `idx` of a layer drawn in `group` (its neurons spread over the group)."""
    return group[0] + np.asarray(idx, dtype=np.float64) * ((group[1] - group[0]) / max(neurons, 1))


def decimation(neurons: int, max_points: int = MAX_POINTS) -> int:
    """Keep every `stride`-th neuron so that at most `max_points` are drawn."""
    return max(1, math.ceil(neurons / max_points))


def cursor_shapes(timeline: Timeline, mode: str, k: int) -> list[dict]:
    x = timeline.cursor_x(k, mode)
    x_end = timeline.bands(mode)[-1][1]
    shapes = []
    if x < x_end:
        shapes.append({"type": "rect", "xref": "x", "yref": "paper", "x0": x, "x1": x_end, "y0": 0, "y1": 1,
                       "fillcolor": FUTURE, "line": {"width": 0}, "layer": "above"})
    shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": x, "x1": x, "y0": 0, "y1": 1,
                   "line": {"color": "black", "width": 2}})
    return shapes


def _band_traces(timeline: Timeline, mode: str, y0: float, y1: float) -> list[go.Scatter]:
    """Shaded windows as filled traces (not layout shapes: animation frames replace the shapes)."""
    return [go.Scatter(x=[x0, x1, x1, x0, x0], y=[y0, y0, y1, y1, y0], fill="toself", mode="none",
                       fillcolor=layer_colour(n), opacity=0.1, hoverinfo="skip", showlegend=False,
                       name=f"window {timeline.names[n]}")
            for n, (x0, x1) in enumerate(timeline.bands(mode))]


DENSITY = "density"  # name suffix of the raster's heat strips (layers drawn as densities)
TRANSPARENT = "rgba(255,255,255,0)"


def density_levels(counts: np.ndarray) -> np.ndarray:
    """Colour levels of a heat strip: 0 for an empty bin (transparent), else 1–255 on a log scale of the count
    relative to the layer's fullest bin (a window's last bin holds every forced spike: a linear scale would show
    nothing else). Shape: counts (rows, bins) -> uint8, same shape."""
    counts = np.asarray(counts, dtype=np.float64)
    top = float(counts.max(initial=0.0))
    if top <= 0:
        return np.zeros(counts.shape, dtype=np.uint8)
    level = np.ceil(255 * np.log1p(counts) / np.log1p(top))
    return np.clip(level, 0, 255).astype(np.uint8)


def _tint(colour: str, white: float) -> str:
    """`colour` (#rrggbb) mixed with `white` parts of white (0: itself, 1: white); a negative share darkens it."""
    rgb = np.array([int(colour[i: i + 2], 16) for i in (1, 3, 5)], dtype=np.float64)
    mixed = rgb + (255 - rgb) * white if white >= 0 else rgb * (1 + white)
    r, g, b = (int(round(v)) for v in np.clip(mixed, 0, 255))
    return f"rgb({r},{g},{b})"


def density_colours(n: int) -> list[list]:
    """The colour scale of layer n's heat strip: transparent at level 0, then from a light tint of the layer's
    colour to a dark shade of it (levels are `density_levels`, zmin 0, zmax 255)."""
    c = layer_colour(n)
    return [[0.0, TRANSPARENT], [0.5 / 255, TRANSPARENT], [1 / 255, _tint(c, 0.85)], [0.6, c], [1.0, _tint(c, -0.45)]]


def _density_trace(d: Density, s: LayerSpikes, group: tuple[float, float]) -> go.Heatmap:
    return go.Heatmap(
        x=d.edges, y=np.linspace(group[0], group[1], d.rows + 1), z=density_levels(d.counts), zmin=0, zmax=255,
        colorscale=density_colours(d.layer), showscale=False, meta=d.layer, name=f"{s.label} ({DENSITY})",
        hoverinfo="none",  # the page says what a cell holds (timeline.js): counts travel beside the figure
    )


def raster(spikes: Sequence[LayerSpikes], timeline: Timeline, mode: str, cursor: int, *,
           max_points: int = MAX_POINTS, height: int | None = None,
           densities: dict[int, Density] | None = None) -> go.Figure:
    """The whole network on one time axis: one dot per spike, neuron index grouped by layer (input at the
    bottom, see `raster_groups`), one colour per layer, every window shaded. Grey covers what happens after the
    cursor (layout shapes: a rectangle, then the cursor line).

    Traces 0..L are the shaded windows; then per layer n its spikes (x = positions on the `mode` axis, float64;
    y = `raster_y`; customdata = (flat index, activation, forced); meta = n), followed by an overlay named EARLY
    ringing its early spikes (customdata = flat index, meta = n), if it has any.

    Layers that `timeline.density_layers` picks (over DENSITY_NEURONS neurons, or the largest ones when all the
    dots would be too many) are drawn as a heat strip instead: a heatmap (meta = n, named "... (density)") of their
    spikes per channel row and time bin (`timeline.density`; `densities` may hold them computed already), filling
    the layer's band, coloured by `density_levels`. The bundled models have no such layer.
    """
    groups = raster_groups(spikes)
    dense = density_layers([s.neurons for s in spikes], max_points)
    gl = sum(int(np.isfinite(s.offsets).sum()) for n, s in enumerate(spikes) if n not in dense) > WEBGL_SPIKES
    y_lo, y_hi = -0.02 * groups[-1][1], groups[-1][1] * 1.02
    bands = _band_traces(timeline, mode, y_lo, y_hi)
    fig = go.Figure(bands)
    cls = go.Scattergl if gl else go.Scatter
    notes = []
    if height is None:  # a deep network gets room for one strip of ~14 px per layer
        height = max(560, 14 * len(spikes) + 140)
    if dense:
        notes.append(f"{len(dense)} layers of many neurons drawn as densities: spikes per channel and time bin "
                     "(colour: log count); hover a cell for its count, click it to map that channel")
    for n, (s, group) in enumerate(zip(spikes, groups)):
        if n in dense:
            d = densities[n] if densities and n in densities else density(s, n, timeline, mode)
            fig.add_trace(_density_trace(d, s, group))
            if d.early:
                notes.append(f"{s.label}: {d.early:,} early spikes (in the bins before its window)")
            continue
        stride = decimation(s.neurons, max_points)
        idx = np.arange(0, s.neurons, stride)
        idx = idx[np.isfinite(s.offsets[idx])]
        x = timeline.positions(n, s.offsets[idx], mode)
        name = s.label if stride == 1 else f"{s.label} (every {stride}th neuron)"
        if stride > 1:
            notes.append(f"{s.label}: every {stride}th of {s.neurons:,} neurons shown (decimated)")
        custom = np.stack([idx, s.activations[idx], s.forced[idx]], axis=1).astype(np.float32)
        fig.add_trace(cls(
            x=x, y=raster_y(group, s.neurons, idx).astype(np.float32), mode="markers", name=name, customdata=custom,
            meta=n, marker={"color": layer_colour(n), "size": 3 if idx.size > 3000 else 5, "line": {"width": 0}},
            hovertemplate=(f"<b>{s.label}</b> neuron %{{customdata[0]}}<br>x = %{{x:.6g}}<br>"
                           "activation %{customdata[1]:.4g}<br>forced: %{customdata[2]}<extra></extra>"),
        ))
        early = idx[s.offsets[idx] < 0]
        if early.size:  # wrong spikes (before the layer's inputs had all arrived): ring them in red
            fig.add_trace(cls(
                x=timeline.positions(n, s.offsets[early], mode), y=raster_y(group, s.neurons, early), meta=n,
                mode="markers", name=EARLY, customdata=early,
                marker={"color": "rgba(0,0,0,0)", "size": 8, "line": {"width": 1.5, "color": "red"}},
                hovertemplate=f"<b>EARLY spike</b>: {s.label} neuron %{{customdata}}<extra></extra>"))
            notes.append(f"{s.label}: {early.size:,} early spikes (red rings)")
    lo, hi = _x_range(timeline, mode)
    annotations = [{"x": (x0 + x1) / 2, "y": 1.0, "xref": "x", "yref": "paper", "yanchor": "bottom",
                    "text": timeline.names[n] if x1 - x0 > 0.06 * (hi - lo) else "", "showarrow": False,
                    "font": {"size": 11, "color": layer_colour(n)}}  # only windows wide enough for a label
                   for n, (x0, x1) in enumerate(timeline.bands(mode))]
    if notes:  # below the axis title: 0.14 of the default plot's height, ~60 px
        below = 0.14 if height == 560 else 60 / max(height - 130, 1)
        annotations.append({"x": 0, "y": -below, "xref": "paper", "yref": "paper", "yanchor": "top",
                            "xanchor": "left", "showarrow": False, "text": "; ".join(notes), "font": {"size": 11}})
    ticks = [(y0 + y1) / 2 for y0, y1 in groups]
    fig.update_layout(
        height=height, margin={"l": 60, "r": 20, "t": 40, "b": 90 if notes else 60},
        xaxis={"title": {"text": axis_title(mode)}, "range": list(_x_range(timeline, mode)), "zeroline": False},
        yaxis={"title": {"text": "neuron (grouped by layer)"}, "tickvals": ticks, "range": [y_lo, y_hi],
               "ticktext": [s.label for s in spikes], "zeroline": False, "showgrid": False},
        shapes=cursor_shapes(timeline, mode, cursor),
        annotations=annotations, showlegend=False, plot_bgcolor="white", hovermode="closest",
    )
    return fig


def _x_range(timeline: Timeline, mode: str) -> tuple[float, float]:
    bands = timeline.bands(mode)
    lo, hi = bands[0][0], bands[-1][1]
    pad = 0.01 * (hi - lo)
    return lo - pad, hi + pad


# ------------------------------------------------------------------------------------------------------------
# Feature maps
def mosaic_layout(shape: tuple[int, ...]) -> tuple[int, int, int, int, int]:
    """How a layer's neurons are tiled into one image: (maps, rows, cols of one map, grid rows, grid cols).

    Conv layers (C, H, W) with H·W > 1: C maps of H×W. Everything else: one near-square map of all neurons.
    """
    if len(shape) == 3 and shape[1] * shape[2] > 1:
        c, h, w = shape
        gc = max(1, round(math.sqrt(c * h / w * 1.6)))
        gc = min(gc, c)
        return c, h, w, math.ceil(c / gc), gc
    n = int(np.prod(shape))
    w = math.ceil(math.sqrt(n))
    return 1, math.ceil(n / w), w, 1, 1


def tile(maps: np.ndarray, gc: int) -> np.ndarray:
    """Maps (k, h, w) side by side, `gc` to a row, one NaN row / column between neighbours (vectorised: one
    reshape). Shape: (k, h, w) -> (gr·(h+1) − 1, gc·(w+1) − 1), gr = ceil(k / gc)."""
    k, h, w = maps.shape
    gr = math.ceil(k / gc)
    out = np.full((gr * gc, h + 1, w + 1), np.nan, dtype=np.float64)
    out[:k, :h, :w] = maps
    return out.reshape(gr, gc, h + 1, w + 1).transpose(0, 2, 1, 3).reshape(gr * (h + 1), gc * (w + 1))[:-1, :-1]


def mosaic(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Tile a layer's flat values (C order) into one 2-D image, NaN in the gaps. Shape: (neurons,) -> (R, C)."""
    maps, h, w, gr, gc = mosaic_layout(shape)
    flat = np.full(maps * h * w, np.nan)
    flat[: values.size] = values
    return tile(flat.reshape(maps, h, w), gc)


def mosaic_index(shape: tuple[int, ...]) -> np.ndarray:
    """Flat neuron index of every mosaic cell (−1 in gaps)."""
    n = int(np.prod(shape))
    m = mosaic(np.arange(n, dtype=np.float64), shape)
    return np.where(np.isnan(m), -1, m).astype(np.int64)


def grid_layout(shape: tuple[int, ...], count: int) -> dict:
    """How `count` channels of a (C, H, W) layer are tiled (as `mosaic_layout` tiles all C): one map each, h×w,
    gc to a row; rows × cols cells in all. The browser rebuilds the cells from these numbers alone."""
    _, h, w = (int(d) for d in shape)
    _, _, _, gr, gc = mosaic_layout((int(count), h, w))
    return {"kind": "grid", "k": int(count), "h": h, "w": w, "gc": gc, "rows": gr * (h + 1) - 1,
            "cols": gc * (w + 1) - 1}


def grid(values: np.ndarray, shape: tuple[int, ...], channels: Sequence[int]) -> np.ndarray:
    """Channels `channels` of a layer's flat values (C order), tiled in the given order (see `grid_layout`)."""
    c, h, w = shape
    maps = np.asarray(values, dtype=np.float64).reshape(c, h * w)[np.asarray(channels, dtype=np.int64)]
    return tile(maps.reshape(-1, h, w), grid_layout(shape, len(channels))["gc"])


def grid_index(shape: tuple[int, ...], channels: Sequence[int]) -> np.ndarray:
    """Flat neuron index (in the whole layer) of every cell of `grid` (−1 in gaps)."""
    c, h, w = shape
    flat = np.arange(c * h * w, dtype=np.float64)
    m = grid(flat, shape, channels)
    return np.where(np.isnan(m), -1, m).astype(np.int64)


def picker_index(shape: tuple[int, ...], channels: Sequence[int] | None = None) -> np.ndarray:
    """Flat neuron index of every cell of a map of the layer (−1 in gaps): all of it, or the given channels."""
    return mosaic_index(shape) if channels is None else grid_index(shape, channels)


def compact(spikes: LayerSpikes, channels: Sequence[int] | None = None, dense: bool = False) -> bool:
    """Whether a map panel is sent to the browser in the compact form (fire steps in bytes, activations in 16
    bits, cells rebuilt there, no labels): a subset of channels, a layer over DENSITY_NEURONS neurons, or one the
    raster draws as a density (`dense`: a 50,176-neuron layer of ResNet-50, 3 MB in the exact form). The bundled
    models' layers are never compact: their maps carry exact values and labels, as they always did."""
    return channels is not None or dense or spikes.neurons > DENSITY_NEURONS


def fired_values(spikes: LayerSpikes, n: int, timeline: Timeline, k: int) -> np.ndarray:
    """Activations of neurons that have fired by cursor step k, NaN for the others. Shape: (neurons,)."""
    return np.where(timeline.fired_by(n, spikes.offsets, k), spikes.activations, np.nan)


def panel_values(s: LayerSpikes, values: np.ndarray, channels: Sequence[int] | None = None) -> np.ndarray:
    """A layer's per-neuron values as its map panel shows them: the mosaic of all, or the grid of `channels`."""
    return mosaic(values, s.shape) if channels is None else grid(values, s.shape, channels)


def _placeholder(col: int) -> go.Heatmap:
    """The static background of a panel the browser paints itself (hidden there: one cell keeps the trace order)."""
    return go.Heatmap(z=[[0]], colorscale=[[0, NOT_FIRED], [1, NOT_FIRED]], showscale=False, hoverinfo="skip",
                      xaxis=f"x{col}", yaxis=f"y{col}")


def _map_traces(s: LayerSpikes, values: np.ndarray, col: int, colorscale, zmax: float, scale: bool,
                channels: Sequence[int] | None = None, browser: bool = False, dense: bool = False):
    z = panel_values(s, values, channels)
    bar = {"len": 0.9, "thickness": 12, "title": {"text": "activation", "side": "right"}}
    if browser and compact(s, channels, dense):
        # the browser paints the cells (timeline.js) and writes the hover text: the figure keeps one byte per cell,
        # for hover and click events, the axes and the colour bar
        fg = go.Heatmap(z=np.zeros(z.shape, dtype=np.uint8), zmin=0, zmax=zmax, colorscale=colorscale,
                        xaxis=f"x{col}", yaxis=f"y{col}", showscale=scale, colorbar=bar, hoverinfo="none")
        return _placeholder(col), fg
    blank = np.isnan(panel_values(s, np.zeros(s.neurons), channels))
    bg = go.Heatmap(z=np.where(blank, np.nan, 0.0), colorscale=[[0, NOT_FIRED], [1, NOT_FIRED]],
                    showscale=False, hoverinfo="skip", xaxis=f"x{col}", yaxis=f"y{col}")
    idx = picker_index(s.shape, channels) if len(s.shape) == 3 and channels is not None else mosaic_index(s.shape)
    labels = np.full(idx.shape, "", dtype=object)
    valid = idx >= 0
    labels[valid] = np.array(unravel(s.shape, idx[valid]), dtype=object)
    fg = go.Heatmap(z=z.astype(np.float32), customdata=labels, zmin=0, zmax=zmax,
                    colorscale=colorscale, xaxis=f"x{col}", yaxis=f"y{col}", showscale=scale, colorbar=bar,
                    hovertemplate=f"{s.label} %{{customdata}}<br>value %{{z:.4g}}<extra></extra>")
    return bg, fg


def _rgb_traces(s: LayerSpikes, colours: np.ndarray, fired: np.ndarray, browser: bool):
    """The input as an RGB image: each colour channel shows once its pixel's spike in that channel has fired; a
    pixel none of whose channels has fired is light grey. Shape: colours (3, H, W) uint8, fired (3·H·W,) bool."""
    _, h, w = s.shape
    if browser:
        return _placeholder(1), go.Heatmap(z=np.zeros((h, w), dtype=np.uint8), showscale=False, xaxis="x1",
                                           yaxis="y1", hoverinfo="none")
    bg = go.Heatmap(z=np.zeros((h, w)), colorscale=[[0, NOT_FIRED], [1, NOT_FIRED]], showscale=False,
                    hoverinfo="skip", xaxis="x1", yaxis="y1")
    return bg, go.Image(z=rgb_image(colours, fired), xaxis="x1", yaxis="y1",
                        hovertemplate="input pixel (%{y}, %{x})<br>RGB %{z}<extra></extra>")


def rgb_image(colours: np.ndarray, fired: np.ndarray | None = None) -> np.ndarray:
    """An RGB input as an image (H, W, 3) of uint8: each channel's level where it has fired (`fired`, flat in C
    order like the layer; None: all), 0 where not yet; pixels with nothing fired are NOT_FIRED grey."""
    c = np.asarray(colours, dtype=np.uint8)
    shown = c if fired is None else np.where(np.asarray(fired).reshape(c.shape), c, 0).astype(np.uint8)
    img = np.moveaxis(shown, 0, -1).copy()
    if fired is not None:
        none = ~np.asarray(fired).reshape(c.shape).any(axis=0)
        grey = [int(NOT_FIRED[i: i + 2], 16) for i in (1, 3, 5)]
        img[none] = grey
    return img


def map_title(spikes: LayerSpikes, channels: Sequence[int] | None = None) -> str:
    """What the layer panel shows: all maps, a square of neurons, one channel or the most active channels."""
    if channels is None:
        maps, *_ = mosaic_layout(spikes.shape)
        return f"{spikes.label}: {'feature maps' if maps > 1 else 'neurons tiled in a square'}"
    c, _ = channels_of(spikes.shape)
    h, w = spikes.shape[1:]
    if len(channels) == 1:
        return f"{spikes.label}: channel {int(channels[0])} of {c} ({h}×{w})"
    return f"{spikes.label}: the {len(channels)} most active of {c} channels ({h}×{w} each)"


def feature_maps(spikes_in: LayerSpikes, spikes: LayerSpikes, n: int, timeline: Timeline, cursor: int, *,
                 height: int = 430, channels: Sequence[int] | None = None, colours: np.ndarray | None = None,
                 browser: bool = False, dense: frozenset[int] = frozenset()) -> go.Figure:
    """The input image and layer n's maps at the cursor: a cell is coloured once its neuron has fired
    (intensity = decoded activation; the input: x̂, white strokes on black like an MNIST digit), light grey
    before.

    Traces: 0/2 static backgrounds, 1 input, 3 layer n; z in mosaic layout (see `mosaic`). `channels`: show
    only these channels of a (C, H, W) layer, tiled in that order (`grid`: one channel, or the most active ones
    of a big layer). `colours` (3, H, W) uint8 (`timeline.input_colours`): a 3-channel input drawn in colour
    (trace 1 an RGB image, each colour appearing as its channel fires). `browser`: the figure the live timeline
    draws over its canvases (ttfs_ui.live): compact panels (`compact`; `dense`: the layers the raster draws as
    densities, the input 0) and the RGB input keep one byte per cell.
    """
    kind = map_title(spikes, channels)
    rgb = colours is not None
    first = "input in colour (each channel appears as it fires)" if rgb else "input (pixels appear as they fire)"
    fig = make_subplots(1, 2, column_widths=[0.3, 0.7], horizontal_spacing=0.08, subplot_titles=(first, kind))
    zmax = max(spikes.max_activation, 1e-30)  # X_n: the calibration maximum, so colours compare across inputs
    fired_in = timeline.fired_by(0, spikes_in.offsets, cursor)
    if rgb:
        traces = _rgb_traces(spikes_in, colours, fired_in, browser)
    else:
        traces = _map_traces(spikes_in, np.where(fired_in, spikes_in.activations, np.nan), 1, INPUT_COLOURS, 1.0,
                             False, None, browser, 0 in dense)
    for t in traces:
        fig.add_trace(t)
    for t in _map_traces(spikes, fired_values(spikes, n, timeline, cursor), 2, "Viridis", zmax, True, channels,
                         browser, n in dense):
        fig.add_trace(t)
    for i in (1, 2):
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{i}", showticklabels=False, showgrid=False,
                         zeroline=False, ticks="", showline=False, row=1, col=i)
        fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, ticks="", showline=False, row=1, col=i)
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 40, "b": 10}, plot_bgcolor="white")
    return fig


# ------------------------------------------------------------------------------------------------------------
# Membrane traces
SOURCE_COLOURS = ("#1B9E77", "#D95F02", "#7570B3", "#E7298A", "#66A61E", "#E6AB02", "#A6761D", "#666666")


def input_groups(tr) -> list[dict]:
    """A trace's input spikes split by the synapses they came through (one group per input of the layer, MATH §5),
    each with its source layer's name, its delay (τ_c) and the indices of its spikes in `tr.input_times`. A layer
    with one input (or a record without the fields) gives one group. Groups with no spike (a concatenation: the
    other branch's channels) are left out."""
    names = tuple(getattr(tr, "synapse_names", ()) or ())
    synapses = getattr(tr, "input_synapses", None)
    count = int(tr.input_times.numel())
    if synapses is None or not names:
        return [{"synapse": 0, "name": "", "delay": 0.0, "label": "", "index": np.arange(count)}]
    k = _np(synapses).astype(int)
    delays = _np(tr.input_delays) if getattr(tr, "input_delays", None) is not None else np.zeros(count)
    groups = []
    for j, name in enumerate(names):
        index = np.flatnonzero(k == j)
        if not index.size:
            continue
        same = sum(n == name for n in names) > 1  # two paths from one layer (a residual's skip and its conv)
        label = f"{name} (path {j + 1})" if same else name
        groups.append({"synapse": j, "name": name, "delay": float(delays[index[0]]), "label": label, "index": index})
    return groups


def input_hover(group: dict, times: np.ndarray, weights: np.ndarray, several: bool = True) -> list[str]:
    """Hover text of one group's input spikes: where each comes from, its delay (for a layer with `several`
    inputs, or a delayed one), arrival time and weight."""
    source = f"from layer {group['label']}" if group["label"] else "input"
    if group["label"] and (several or group["delay"]):
        source += f", delayed by {group['delay']:.4g} τ_c"
    return [f"{source}<br>arrives t = {t:.6g}<br>J = {w:.4g}" for t, w in zip(times, weights)]


AFTER_SPIKE = "after its spike"  # name suffix of the dotted continuation of V once a neuron has fired


def _until(times: np.ndarray, potential: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
    """The polyline (times, potential) cut at time t (V there interpolated: θ at a spike)."""
    keep = times < t
    return np.append(times[keep], t), np.append(potential[keep], np.interp(t, times, potential))


def membrane(traces: Sequence, labels: Sequence[str], *, height: int = 520, cursor: float | None = None,
             clock: str | None = None) -> go.Figure:
    """Exact V(t) of one or more neurons of one layer (`ttfs_core` NeuronTrace records; times relative to the
    neurons' start), their thresholds, the input and own windows, the spike (star), forced spike (cross),
    saturated spike of a ReLU6 (gated) neuron at t_min (square) or readout (diamond), and the clock-driven trace
    when the record has one. Below: each neuron's input spikes as ticks, up for J > 0 and down for J < 0,
    height ∝ |J|; for a layer reading several layers (a residual sum, a concatenation: MATH §5) the ticks are
    coloured by the layer they come from, and their hover says which and by how much its spikes are delayed.

    A neuron's V is solid until its spike and dotted after it: once it has fired the neuron is done, and the
    model's V is no longer read (it would rise past θ as if it went on). The clock-driven trace (`clock` names
    its tick, e.g. "dt = 0.01 τ_c") is a dark dashed staircase, V held between ticks, with its own legend entry
    and an open star at its spike, so that both stay visible where it lies on the exact trace.

    Per neuron, in order: V (the exact polyline through `times`/`potential`, whole: dotted where the neuron has
    fired), [V until the spike, solid], [θ], [stepped V, stepped spike], spike or readout marker; then the tick
    traces, one per neuron (one per neuron and input of a layer with several inputs). In the legend: the exact V
    of each neuron, the clock-driven traces, and the source layers of a layer with several inputs.
    `cursor`: the raster's time cursor (same time axis as the traces), drawn as a vertical line when given.
    """
    fig = make_subplots(2, 1, shared_xaxes=True, row_heights=[0.78, 0.22], vertical_spacing=0.05)
    first = traces[0]
    t_min, t_max = float(first.t_min), float(first.t_max)
    readout = first.theta is None
    gated = bool(getattr(first, "gated", False))
    cut_any = False
    for i, (tr, label) in enumerate(zip(traces, labels)):
        c = PALETTE[(i + 2) % len(PALETTE)]
        saturated = bool(getattr(tr, "saturated", False))
        name = (label if label.startswith("class ") else f"neuron {label}") + (" · saturated" if saturated else "")
        times, potential = _np(tr.times), _np(tr.potential)
        spike = float(tr.spike_time)
        cut = not readout and math.isfinite(spike) and times.size > 0 and spike < float(times[-1])
        cut_any |= cut
        fig.add_trace(go.Scatter(x=times, y=potential, mode="lines", name=name, legendgroup=label,
                                 line={"color": c, "width": 1.5 if cut else 2, "dash": "dot" if cut else "solid"},
                                 hovertemplate=(f"{label}<br>t = %{{x:.6g}}<br>V = %{{y:.6g}}" +
                                                ("<br>(after the spike: no longer read)" if cut else "") +
                                                "<extra></extra>")), row=1, col=1)
        if cut:
            x_until, v_until = _until(times, potential, spike)
            fig.add_trace(go.Scatter(x=x_until, y=v_until, mode="lines", name=f"{label} until its spike",
                                     showlegend=False, legendgroup=label, line={"color": c, "width": 2.5},
                                     hovertemplate=f"{label}<br>t = %{{x:.6g}}<br>V = %{{y:.6g}}<extra></extra>"),
                          row=1, col=1)
        if not readout:
            # a gated (ReLU6) neuron's threshold is switched on at t_min: before that it cannot fire
            x0, note = (t_min, " (switched on at t_min: ReLU6)") if gated else (0, "")
            fig.add_trace(go.Scatter(x=[x0, t_max], y=[float(tr.theta)] * 2, mode="lines", showlegend=False,
                                     line={"color": c, "dash": "dash", "width": 1}, legendgroup=label,
                                     hovertemplate=f"threshold θ of {label}{note} = %{{y:.6g}}<extra></extra>"),
                          row=1, col=1)
        if tr.stepped_times is not None:
            dark = _tint(c, -0.5)
            ticks = int(_np(tr.stepped_times).size)
            tick = f" ({clock})" if clock else ""
            fig.add_trace(go.Scatter(x=_np(tr.stepped_times), y=_np(tr.stepped_potential),
                                     mode="lines+markers" if ticks <= 300 else "lines",
                                     # dashed on top: the exact trace's colour shows between its dashes
                                     line={"color": dark, "width": 1.5, "shape": "hv", "dash": "dash"},
                                     marker={"size": 4, "color": dark, "symbol": "circle-open"},
                                     name=f"clock-driven{tick}: {label}", legendgroup=label,
                                     hovertemplate=f"{label} with a clock{tick}<br>tick t = %{{x:.6g}}<br>"
                                                   "V = %{y:.6g}<extra></extra>"), row=1, col=1)
            stepped = tr.stepped_spike_time
            if not readout and stepped is not None and math.isfinite(float(stepped)):
                fig.add_trace(go.Scatter(x=[float(stepped)], y=[float(tr.theta)], mode="markers", showlegend=False,
                                         legendgroup=label, marker={"symbol": "star-open", "size": 15, "color": dark,
                                                                    "line": {"width": 1.5}},
                                         hovertemplate=f"{label}: clock-driven spike{tick}<br>t = %{{x:.6g}}"
                                                       "<extra></extra>"), row=1, col=1)
        if readout:
            v = float(tr.potential_at(np.array([t_min]))[0])
            fig.add_trace(go.Scatter(x=[t_min], y=[v], mode="markers", showlegend=False, legendgroup=label,
                                     marker={"symbol": "diamond", "size": 12, "color": c},
                                     hovertemplate=f"readout of {label}: logit = %{{y:.6g}}<extra></extra>"),
                          row=1, col=1)
        elif math.isfinite(float(tr.spike_time)):
            what = "forced spike (x = 0)" if tr.forced else ("EARLY spike" if tr.early else "spike")
            y = float(tr.theta)
            symbol = "x" if tr.forced else "star"
            if saturated:  # V reached θ before t_min; the gate held the spike until t_min: value = the clip
                what = "saturated spike at t_min (ReLU6: V ≥ θ when the threshold switched on; value = the clip)"
                y = float(tr.potential_at(np.array([t_min]))[0])
                symbol = "square"
            fig.add_trace(go.Scatter(
                x=[float(tr.spike_time)], y=[y], mode="markers", showlegend=False, legendgroup=label,
                hovertemplate=f"{what} of {label}<br>t = %{{x:.6g}}<extra></extra>",
                marker={"symbol": symbol, "size": 15 if not saturated else 11, "color": "red" if tr.early else c,
                        "line": {"width": 1, "color": "black"}}), row=1, col=1)
    in_legend: set[str] = set()
    for i, (tr, label) in enumerate(zip(traces, labels)):
        c = PALETTE[(i + 2) % len(PALETTE)]
        times, w = _np(tr.input_times), _np(tr.input_weights)
        scale = float(np.abs(w).max()) if w.size else 1.0
        base = -1.2 * i
        groups = input_groups(tr)
        several = len(getattr(tr, "synapse_names", ()) or ()) > 1
        for group in groups:
            t, wg = times[group["index"]], w[group["index"]]
            xs = np.repeat(t, 3)
            xs[2::3] = np.nan
            ys = np.stack([np.full(wg.shape, base), base + 0.5 * wg / (scale or 1.0), np.full(wg.shape, np.nan)],
                          1).ravel()
            hover = np.repeat(np.array(input_hover(group, t, wg, several), dtype=object), 3).tolist()
            colour = SOURCE_COLOURS[group["synapse"] % len(SOURCE_COLOURS)] if several else c
            key = f"from {short_label(group['label'])}"
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": colour, "width": 1},
                                     legendgroup=key if several else label, name=key,
                                     showlegend=several and key not in in_legend, text=hover,
                                     hovertemplate=f"{label}: %{{text}}<extra></extra>"), row=2, col=1)
            in_legend.add(key)
    # windows last: shapes on "all" rows skip subplots that have no data yet
    fig.add_vrect(x0=0, x1=t_min, fillcolor=PALETTE[0], opacity=0.1, line_width=0, layer="below", row="all", col=1)
    fig.add_annotation(x=t_min / 2, y=1.0, xref="x", yref="paper", yanchor="bottom", showarrow=False,
                       text="input window: inputs arrive", font={"color": PALETTE[0]})
    if t_max > t_min:
        fig.add_vrect(x0=t_min, x1=t_max, fillcolor=PALETTE[1], opacity=0.1, line_width=0, layer="below",
                      row="all", col=1)
        fig.add_annotation(x=(t_min + t_max) / 2, y=1.0, xref="x", yref="paper", yanchor="bottom", showarrow=False,
                           text="own window: the spike" + (" (gated: not before t_min)" if gated else ""),
                           font={"color": PALETTE[1]})
    else:
        fig.add_vline(x=t_min, line={"color": PALETTE[1], "dash": "dot"}, row="all", col=1)
        fig.add_annotation(x=t_min, y=1.0, xref="x", yref="paper", yanchor="bottom", showarrow=False,
                           text="readout", font={"color": PALETTE[1]})
    if cursor is not None:
        fig.add_vline(x=cursor, line={"color": "#444", "width": 1.5}, row="all", col=1)
        # inside the top of the V panel, on a white ground: clear of the time axis' tick labels below the plot
        fig.add_annotation(x=cursor, y=1.0, xref="x", yref="y domain", yanchor="top", showarrow=False,
                           xanchor="left", text=f" cursor t = {cursor:.4g}", font={"color": "#444"}, name="cursor",
                           bgcolor="rgba(255,255,255,0.85)")
    fig.update_yaxes(title_text="membrane potential V", row=1, col=1)
    fig.update_yaxes(title_text="input spikes ±|J|", showticklabels=False, zeroline=False, row=2, col=1)
    fig.update_xaxes(title_text=f"time since the neuron started integrating ({T_MIN_PREV} in a chain), τ_c",
                     row=2, col=1)
    legend = "solid: V until the spike<br>dotted: after it (not read)<br>click to hide" if cut_any else \
        "click to hide"
    fig.update_layout(height=height, margin={"l": 60, "r": 20, "t": 40, "b": 50}, plot_bgcolor="white",
                      hovermode="closest", legend={"title": {"text": legend}})
    return fig


def neuron_picker(spikes: LayerSpikes, selected: Sequence[int] = (), width: int = 700,
                  channels: Sequence[int] | None = None) -> go.Figure:
    """A layer's neurons as clickable squares in the feature-map layout, coloured by activation.

    One trace; point i is neuron `customdata[i]` (flat index). Selected neurons are outlined. `channels`: only
    these channels of a (C, H, W) layer (`picker_index`), so that a 10^6-neuron layer ships one map, not all.
    """
    idx = picker_index(spikes.shape, channels)
    rows, cols = np.nonzero(idx >= 0)
    flat = idx[rows, cols]
    size = float(np.clip(width / max(idx.shape[1], 1) * 0.8, 3, 22))
    sel = np.isin(flat, np.asarray(list(selected), dtype=np.int64))
    cls = go.Scattergl if flat.size > WEBGL_SPIKES else go.Scatter
    fig = go.Figure(cls(
        x=cols, y=rows, mode="markers", customdata=flat, text=unravel(spikes.shape, flat),
        marker={"symbol": "square", "size": size, "color": spikes.activations[flat], "colorscale": "Viridis",
                "cmin": 0, "cmax": max(spikes.max_activation, 1e-30),
                "line": {"width": np.where(sel, 2.5, 0), "color": "red"},
                "colorbar": {"title": {"text": "activation", "side": "right"}, "thickness": 12}},
        hovertemplate="neuron %{text}<br>activation %{marker.color:.4g}<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", visible=False)
    fig.update_xaxes(visible=False)
    # no dragmode/clickmode here: Streamlit turns click-to-select off when the drag mode is select or lasso
    fig.update_layout(height=int(np.clip(size * idx.shape[0] / 0.8 + 60, 160, 700)),
                      margin={"l": 10, "r": 10, "t": 10, "b": 10}, plot_bgcolor="white")
    return fig


def sweep(points: Sequence, x_title: str, *, x_type: str = "linear", ann_accuracy: float | None = None,
          show_early: bool = False, height: int = 360) -> go.Figure:
    """Accuracy and ANN agreement against one knob (`ttfs_core.robustness.SweepPoint` records), in %.

    Traces: 0 SNN accuracy, 1 agreement with the ANN, [2 early spikes on a second axis]. The ANN's accuracy is a
    dashed line.
    """
    x = [f"{p.value:g}" for p in points] if x_type == "category" else [p.value for p in points]
    fig = make_subplots(specs=[[{"secondary_y": show_early}]])
    fig.add_trace(go.Scatter(x=x, y=[100 * p.accuracy if p.accuracy is not None else None for p in points],
                             mode="lines+markers", name="SNN accuracy", line={"color": PALETTE[1]}))
    fig.add_trace(go.Scatter(x=x, y=[100 * p.agreement for p in points], mode="lines+markers",
                             name="agreement with the ANN", line={"color": PALETTE[0], "dash": "dot"}))
    if show_early:
        fig.add_trace(go.Bar(x=x, y=[p.early_spikes for p in points], name="early spikes", opacity=0.25,
                             marker={"color": "red"}), secondary_y=True)
        fig.update_yaxes(title_text="early spikes", secondary_y=True, showgrid=False, rangemode="tozero")
    if ann_accuracy is not None:
        fig.add_hline(y=100 * ann_accuracy, line={"color": "grey", "dash": "dash", "width": 1},
                      annotation_text="ANN accuracy", annotation_position="bottom right")
    fig.update_yaxes(title_text="%", range=[0, 102], secondary_y=False)
    fig.update_xaxes(title_text=x_title, type=x_type)
    fig.update_layout(height=height, margin={"l": 50, "r": 20, "t": 10, "b": 50}, plot_bgcolor="white",
                      legend={"orientation": "h", "y": -0.25, "yanchor": "top"}, hovermode="x unified")
    return fig


def _np(t) -> np.ndarray:
    return t.detach().double().numpy() if hasattr(t, "detach") else np.asarray(t, dtype=np.float64)


# ------------------------------------------------------------------------------------------------------------
# ANN vs SNN
def ann_vs_snn(names: Sequence[str], ann: Sequence[np.ndarray], snn: Sequence[np.ndarray], *,
               max_points: int = MAX_POINTS, cols: int = 4, samples: Sequence[Sample] | None = None) -> go.Figure:
    """Per layer, SNN decoded activation against ANN activation (original model units) with the identity line.

    Trace 2i: layer i's points (x = ANN, y = SNN); trace 2i + 1: the identity line. `samples`: per layer, the
    neurons shown (`timeline.sample_neurons`, float32 points; each subplot title says how many of how many);
    without them, layers over `max_points` neurons show every stride-th neuron.
    """
    if samples is not None:
        return _sampled_scatter(names, ann, snn, samples, cols)
    rows = math.ceil(len(names) / cols)
    cols = min(cols, len(names))
    fig = make_subplots(rows, cols, subplot_titles=[short_label(n) for n in names], horizontal_spacing=0.06,
                        vertical_spacing=0.12 if rows > 1 else 0.1)
    cls = go.Scattergl if sum(np.size(a) for a in ann) > WEBGL_SPIKES else go.Scatter
    for i, (name, a, s) in enumerate(zip(names, ann, snn)):
        r, c = divmod(i, cols)
        a, s = np.asarray(a, dtype=np.float64).ravel(), np.asarray(s, dtype=np.float64).ravel()
        stride = decimation(a.size, max_points)
        fig.add_trace(cls(x=a[::stride], y=s[::stride], mode="markers", name=name, showlegend=False,
                          marker={"size": 4, "color": layer_colour(i + 1), "opacity": 0.6},
                          hovertemplate=f"{name}<br>ANN %{{x:.6g}}<br>SNN %{{y:.6g}}<extra></extra>"),
                      row=r + 1, col=c + 1)
        hi = float(max(a.max(initial=0), s.max(initial=0), 1e-12))
        lo = float(min(a.min(initial=0), s.min(initial=0)))
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", showlegend=False, hoverinfo="skip",
                                 line={"color": "black", "width": 1, "dash": "dash"}), row=r + 1, col=c + 1)
        if stride > 1:
            fig.layout.annotations[i].text = f"{short_label(name)} (every {stride}th neuron)"
    fig.update_xaxes(title_text="ANN activation")
    fig.update_yaxes(title_text="SNN decoded")
    fig.update_layout(height=300 * rows + 40, margin={"l": 50, "r": 20, "t": 40, "b": 40}, plot_bgcolor="white")
    return fig


def _sampled_scatter(names, ann, snn, samples, cols: int) -> go.Figure:
    rows = math.ceil(len(names) / cols)
    cols = min(cols, len(names))
    fig = make_subplots(rows, cols, horizontal_spacing=0.06, vertical_spacing=0.12 if rows > 1 else 0.1,
                        subplot_titles=[f"{short_label(name)} ({smp.describe()})" if smp.shown < smp.total else
                                        short_label(name) for name, smp in zip(names, samples)])
    for i, (name, a, s, smp) in enumerate(zip(names, ann, snn, samples)):
        r, c = divmod(i, cols)
        a, s = np.asarray(a, dtype=np.float64).ravel(), np.asarray(s, dtype=np.float64).ravel()
        fig.add_trace(go.Scattergl(x=a[smp.index].astype(np.float32), y=s[smp.index].astype(np.float32),
                                   mode="markers", name=name, showlegend=False,
                                   marker={"size": 4, "color": layer_colour(i + 1), "opacity": 0.6},
                                   hovertemplate=f"{name}<br>ANN %{{x:.6g}}<br>SNN %{{y:.6g}}<extra></extra>"),
                      row=r + 1, col=c + 1)
        hi = float(max(a.max(initial=0), s.max(initial=0), 1e-12))  # the identity line spans every neuron
        lo = float(min(a.min(initial=0), s.min(initial=0)))
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", showlegend=False, hoverinfo="skip",
                                 line={"color": "black", "width": 1, "dash": "dash"}), row=r + 1, col=c + 1)
    fig.update_annotations(font={"size": 11})
    fig.update_xaxes(title_text="ANN activation")
    fig.update_yaxes(title_text="SNN decoded")
    fig.update_layout(height=300 * rows + 40, margin={"l": 50, "r": 20, "t": 40, "b": 40}, plot_bgcolor="white")
    return fig


def error_histogram(names: Sequence[str], errors: Sequence[np.ndarray], bins: int = 60, *,
                    binned: bool = False) -> go.Figure:
    """Signed errors SNN − ANN of every neuron, one histogram per layer, counts on a log scale. `binned`: the
    counts are computed here (`np.histogram` over every neuron, one bar trace per layer) and only they are sent,
    not one number per neuron (a 10^6-neuron layer); the bins are the same either way."""
    fig = go.Figure()
    errors = [np.asarray(e, dtype=np.float64).ravel() for e in errors]
    lo = min((float(e.min()) for e in errors if e.size), default=0.0)
    hi = max((float(e.max()) for e in errors if e.size), default=0.0)
    size = (hi - lo) / bins if hi > lo else 1e-12
    if binned:
        edges = lo - size / 2 + size * np.arange(bins + 2)
        for i, (name, e) in enumerate(zip(names, errors)):
            counts, _ = np.histogram(e, bins=edges)
            fig.add_trace(go.Bar(x=(edges[:-1] + size / 2).astype(np.float64), y=counts, width=size,
                                 name=short_label(name),
                                 marker={"color": layer_colour(i + 1)}, opacity=0.6,
                                 hovertemplate=f"{name}<br>SNN − ANN ≈ %{{x:.3e}}<br>%{{y:,}} neurons<extra></extra>"))
        fig.update_layout(barmode="overlay", bargap=0, height=340,
                          yaxis={"type": "log", "title": {"text": "neurons (log)"}},
                          xaxis={"title": {"text": "SNN − ANN (original model units)"}, "exponentformat": "e"},
                          margin={"l": 60, "r": 20, "t": 20, "b": 50}, plot_bgcolor="white")
        return fig
    for i, (name, e) in enumerate(zip(names, errors)):  # one set of bins for every layer
        fig.add_trace(go.Histogram(x=e, name=short_label(name), marker={"color": layer_colour(i + 1)}, opacity=0.6,
                                   xbins={"start": lo - size / 2, "end": hi + size / 2, "size": size},
                                   hovertemplate=f"{name}<br>SNN − ANN in %{{x}}<br>%{{y:,}} neurons<extra></extra>"))
    fig.update_layout(barmode="overlay", height=340, yaxis={"type": "log", "title": {"text": "neurons (log)"}},
                      xaxis={"title": {"text": "SNN − ANN (original model units)"}, "exponentformat": "e"},
                      margin={"l": 60, "r": 20, "t": 20, "b": 50}, plot_bgcolor="white")
    return fig


def logits(classes: Sequence[str], ann: np.ndarray, snn: np.ndarray) -> go.Figure:
    """ANN and SNN logits of one input side by side. Trace 0: ANN, trace 1: SNN."""
    fig = go.Figure([
        go.Bar(x=list(classes), y=np.asarray(ann, dtype=np.float64), name="ANN", marker={"color": PALETTE[0]}),
        go.Bar(x=list(classes), y=np.asarray(snn, dtype=np.float64), name="SNN (membrane potential at readout)",
               marker={"color": PALETTE[1]}),
    ])
    fig.update_layout(barmode="group", height=300, margin={"l": 50, "r": 10, "t": 10, "b": 40},
                      xaxis={"title": {"text": "class"}, "type": "category"}, yaxis={"title": {"text": "logit"}},
                      legend={"orientation": "h", "y": 1.12}, plot_bgcolor="white")
    return fig


def image(pixels: np.ndarray, height: int = 160, *, mean: Sequence[float] | None = None,
          std: Sequence[float] | None = None) -> go.Figure:
    """A preprocessed input image (C, H, W) as the model sees it. Three channels are drawn in colour: the pixels
    / 255 it came from (x·std + mean) when the preprocessing's `mean` and `std` are given, else scaled from the
    image's smallest to its largest value."""
    p = np.asarray(pixels, dtype=np.float64)
    if p.ndim == 3 and p.shape[0] == 3:
        if mean is not None and std is not None:
            shown = p * np.broadcast_to(np.asarray(std, float), (3,)).reshape(3, 1, 1) + \
                np.broadcast_to(np.asarray(mean, float), (3,)).reshape(3, 1, 1)
        else:
            lo, hi = float(p.min()), float(p.max())
            shown = (p - lo) / (hi - lo) if hi > lo else np.zeros_like(p)
        rgb = np.round(255 * np.clip(shown, 0, 1)).astype(np.uint8)
        fig = go.Figure(go.Image(z=np.moveaxis(rgb, 0, -1), hovertemplate="(%{y}, %{x}) RGB %{z}<extra></extra>"))
        fig.update_yaxes(visible=False)
        fig.update_xaxes(visible=False)
        fig.update_layout(height=height, width=height, margin={"l": 0, "r": 0, "t": 0, "b": 0})
        return fig
    z = p[0] if p.shape[0] == 1 else p.mean(axis=0)
    fig = go.Figure(go.Heatmap(z=z, colorscale="Greys_r", showscale=False,
                               hovertemplate="(%{y}, %{x}) = %{z:.3g}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", visible=False)
    fig.update_xaxes(visible=False)
    fig.update_layout(height=height, width=height, margin={"l": 0, "r": 0, "t": 0, "b": 0})
    return fig


# ------------------------------------------------------------------------------------------------------------
# Teaching views
def spread_neurons(values: np.ndarray, shape: Sequence[int], k: int) -> list[int]:
    """k neurons of a layer whose membrane traces differ, for "k most active": the most active neuron, then active
    neurons at evenly spaced ranks down to the 10th percentile of the active ones (so their spikes spread over the
    window: large activations fire early), each from a channel not picked yet while there are such (neurons of one
    channel at neighbouring positions see almost the same inputs and draw near-identical traces). Largest first.
    A layer with at most k active neurons: its k largest distinct values (`timeline.most_active`).
    Shape: values (neurons,) flat in C order -> k flat indices."""
    v = np.asarray(values, dtype=np.float64).ravel()
    k = max(0, int(k))
    active = np.flatnonzero(v > 0)
    if active.size <= k:
        return most_active(v, k, distinct=True)
    order = active[np.argsort(-v[active], kind="stable")]
    n = order.size
    targets = np.round(np.linspace(0, 0.9 * (n - 1), k)).astype(np.int64)
    channels, per = channels_of(shape)
    ch = order // max(per, 1)
    used = np.zeros(max(channels, int(ch.max()) + 1), dtype=bool)
    taken = np.zeros(n, dtype=bool)
    rank = np.arange(n)
    far = np.iinfo(np.int64).max
    picks = []
    for t in targets:  # k ≤ MAX_TRACES picks, each one vectorised pass over the active neurons
        free = ~taken & ~used[ch]
        if not free.any():
            free = ~taken
        j = int(np.argmin(np.where(free, np.abs(rank - t), far)))
        taken[j], used[ch[j]] = True, True
        picks.append(int(order[j]))
    return sorted(picks, key=lambda i: (-v[i], i))


def early_spikes(rows: Sequence[dict], *, most: int = 40, height: int | None = None) -> go.Figure:
    """Each early spike of one input on the time axis (τ_c, absolute), the earliest first (top): its layer's window
    [t_min, t_max] (grey bar), where it fired (red ×) and where the right spike would be, t_max − x with x the
    ANN's value in the SNN's units (open circle; before t_min when x exceeds the window), joined by a line.
    `rows`: `tables.early_spikes_here` (sorted by how early); the first `most` are drawn.

    Traces: 0 windows, 1 joins, 2 simulated (early) spikes, 3 right spikes; y = "layer (index)" labels."""
    rows = list(rows)[:most]
    y = [f"{short_label(r['layer'])} {r['index']}" for r in rows]
    full = [f"{r['layer']} neuron {r['index']}" for r in rows]

    def segments(a: str, b: str) -> tuple[list, list]:
        xs, ys = [], []
        for r, label in zip(rows, y):
            xs += [r[a], r[b], None]
            ys += [label, label, None]
        return xs, ys

    wx, wy = segments("t_min", "t_max")
    jx, jy = segments("spike", "right")
    fig = go.Figure([
        go.Scatter(x=wx, y=wy, mode="lines", name="its layer's window [tₘᵢₙ, tₘₐₓ]", hoverinfo="skip",
                   line={"color": "rgba(120,120,120,0.35)", "width": 9}),
        go.Scatter(x=jx, y=jy, mode="lines", showlegend=False, hoverinfo="skip",
                   line={"color": "#999", "width": 1, "dash": "dot"}),
        go.Scatter(x=[r["spike"] for r in rows], y=y, mode="markers", name="early spike (simulated)", text=full,
                   marker={"symbol": "x", "size": 11, "color": "red", "line": {"width": 1, "color": "darkred"}},
                   customdata=[[r["early by"], r["t_min"]] for r in rows],
                   hovertemplate="%{text}<br>fired at t = %{x:.6g} τ_c, %{customdata[0]:.4g} τ_c before its window "
                                 "opened (tₘᵢₙ = %{customdata[1]:.6g})<extra></extra>"),
        go.Scatter(x=[r["right"] for r in rows], y=y, mode="markers", name="right spike tₘₐₓ − x (x: the ANN's value)",
                   text=full, customdata=[[r["ann"]] for r in rows],
                   marker={"symbol": "circle-open", "size": 11, "color": PALETTE[2], "line": {"width": 2}},
                   hovertemplate="%{text}<br>the right spike would be at t = %{x:.6g} τ_c<br>ANN activation "
                                 "%{customdata[0]:.6g} (original units)<extra></extra>"),
    ])
    fig.update_yaxes(type="category", autorange="reversed", title_text="early spikes, the earliest first")
    fig.update_xaxes(title_text="time t (τ_c)", zeroline=False)
    fig.update_layout(height=height or int(np.clip(22 * len(rows) + 150, 260, 900)), plot_bgcolor="white",
                      margin={"l": 60, "r": 20, "t": 30, "b": 50}, hovermode="closest",
                      legend={"orientation": "h", "y": -0.18, "yanchor": "top"})
    return fig


__all__ = ["ABSOLUTE", "STRETCHED", "ann_vs_snn", "density_levels", "error_histogram", "feature_maps", "grid",
           "grid_index", "image", "logits", "membrane", "mosaic", "mosaic_index", "neuron_picker", "raster",
           "rgb_image", "sweep", "early_spikes", "export_config", "export_name", "slide_title", "short_label",
           "spread_neurons"]
