"""Spike raster: every spike of the network on one time axis, a time cursor, and the feature maps filling in.

The cursor runs in the browser (`ttfs_ui.live`): stepping, Play and hovering never rerun this script; it reruns
when the model, the input, a setting, the axis or the mapped layer changes, when a neuron is clicked, and once
when the cursor comes to rest (so that the page's link carries it).

For a lecture: **Reveal** hides the spikes after the cursor, so that Play shows the raster filling in at the chosen
speed; hovering a dot gives its neuron as (channel, row, col), its spike time t in τ_c and its ANN activation; the
counts put the α-model and B1 side by side on the same input (B1's silent neurons never fire; its network is
converted once per model and server and simulated once per input, both cached like the α one); **PNG** / **SVG**
download the raster with its maps, title, cursor time, counts and legend as one slide, **Animation** the filling-in
as a self-contained HTML file. All of it runs in the browser (no rerun).

A link can open it revealing at a chosen speed: `?reveal=1&speed=5` (steps per second).

A network too large for one dot per spike (layers over `timeline.DENSITY_NEURONS` neurons, e.g. ResNet-50 at
224×224) draws those layers as heat strips (spikes per channel and time bin). Their maps show the k most active
channels or one channel: a click on a strip maps that channel, a click on a map cell opens the neuron's trace.
"""

from dataclasses import replace

import numpy as np
import streamlit as st

import ttfs_core
from ttfs_core.neurons import ALPHA, B1
from ttfs_ui import cache, controls, live, messages, state, timeline

MAP_VIEW = "ttfs_map_view"  # a large layer's maps: "top" (its k most active channels) or "channel" (one)
MAP_K = "ttfs_map_k"
MAP_CHANNEL = "ttfs_map_channel"  # the channel of the "channel" view (None: the most active)
MAP_VIEWS = {"top": "the most active channels", "channel": "one channel"}
MAP_KS = (4, 9, 16)
REVEAL = "ttfs_reveal"  # a link's initial Reveal (1: spikes after the cursor hidden); the browser toggles it after
SPEED = "ttfs_speed"  # a link's initial Play speed, cursor steps per second
COMPANION_NEURONS = 100_000  # B1 beside α at once for networks up to this size (the bundled ones: at most 68,496
# neurons); a larger one, or one drawn as heat strips, offers it (OTHER_COUNTS): a second conversion on a first visit
OTHER_COUNTS = "_ttfs_raster_other_counts"  # the toggle that asks for the other model's counts
SPEEDS = (2, 5, 10, 20, 30, 60)  # as the timeline's speed menu offers them (frontend/timeline/index.html)
MAP_DEFAULTS = {MAP_VIEW: "top", MAP_K: 16, MAP_CHANNEL: None, REVEAL: 0, SPEED: 30}
MAP_PARAMS = {"maps": state.Param(MAP_VIEW, state.one_of(*MAP_VIEWS)),
              "map_k": state.Param(MAP_K, state.one_of(*MAP_KS)),
              "channel": state.Param(MAP_CHANNEL, state.integer(0, 10**6)),
              "reveal": state.Param(REVEAL, state.one_of(0, 1)),
              "speed": state.Param(SPEED, state.one_of(*SPEEDS))}

state.init(MAP_DEFAULTS, MAP_PARAMS)  # before the page's own start: a link may carry the mapped channel
cur = controls.page_start("Spike raster", "raster")

tl = cur.timeline
snn = cur.snn
layers = list(snn.layers)
names = [la.name for la in layers]
sizes = [int(np.prod(snn.input_shape))] + [la.neurons for la in layers]
dense = timeline.density_layers(sizes)
strips = {la.name: timeline.channels_of(la.shape)[0] for n, la in enumerate(layers, start=1) if n in dense}
# what the browser sent since the last run (read before drawing, so the cursor drawn is the one it has): the cursor
# after it rested (for the link and the membrane page), a clicked neuron, whose trace opens, or a channel picked on
# a heat strip, which the maps then show
raw = st.session_state.get("timeline")
try:
    event = None if raw is None else messages.timeline_event(raw, tl.steps, {la.name: la.neurons for la in layers},
                                                             strips, SPEEDS)
except messages.BadMessage as e:  # from a scripted browser: used for nothing
    event = None
    st.warning(f"A message from the timeline was ignored: {e}.")
if event is not None and event.seq != st.session_state.get("_seen_timeline_click"):
    st.session_state["_seen_timeline_click"] = event.seq
    state.put(state.CURSOR, event.cursor)
    for key, value in ((REVEAL, event.reveal), (SPEED, event.speed)):  # the browser's, into the link
        if value is not None:
            state.put(key, value)
    if event.channel is not None:
        state.put(state.LAYER, event.layer)
        state.put(MAP_VIEW, "channel")
        state.put(MAP_CHANNEL, event.channel)
    elif event.layer is not None:
        controls.open_trace(event.layer, event.neuron)
axis_options = {"auto": f"automatic ({tl.default_mode()} for this network)",
                timeline.STRETCHED: "each window stretched to equal width",
                timeline.ABSOLUTE: "absolute time (τ_c)"}
labels = {la.name: f"{timeline.layer_label(la)} ({'×'.join(map(str, la.shape))})" for la in layers}
if state.get(state.LAYER) not in names:
    state.stale(state.LAYER, state.get(state.LAYER), names[0])
    state.put(state.LAYER, names[0])
axis, layer_col = st.columns([3, 2])
axis.radio("Time axis", list(axis_options), format_func=axis_options.get, horizontal=True, **state.bind(state.AXIS))
layer_col.selectbox("Feature maps of layer", names, format_func=labels.get, **state.bind(state.LAYER))
mode = tl.default_mode() if state.get(state.AXIS) == "auto" else state.get(state.AXIS)
n = names.index(state.get(state.LAYER)) + 1
layer = layers[n - 1]
cursor = state.get(state.CURSOR)
if cursor is not None and not 0 <= cursor <= tl.steps:
    state.stale(state.CURSOR, cursor, tl.steps)
cursor = tl.steps if cursor is None or not 0 <= cursor <= tl.steps else int(cursor)

# a layer too large to map whole: its k most active channels, or one channel
big = layer.neurons > timeline.DENSITY_NEURONS and timeline.has_maps(layer.shape)
view = None
if big:
    count, per = timeline.channels_of(layer.shape)
    st.caption(f"**{labels[layer.name]}** has {layer.neurons:,} neurons in {count:,} channels of "
               f"{'×'.join(map(str, layer.shape[1:]))}: too many to send one by one. Its maps show the channels "
               "below; click a cell of a layer's heat strip on the raster to map that channel, then a cell of the "
               "map to open that neuron's membrane trace.")
    pick, detail = st.columns([2, 3])
    pick.radio("Maps of", list(MAP_VIEWS), format_func=MAP_VIEWS.get, horizontal=True, **state.bind(MAP_VIEW))
    if state.get(MAP_VIEW) == "top":
        if state.get(MAP_K) not in MAP_KS:
            state.put(MAP_K, MAP_DEFAULTS[MAP_K])
        detail.select_slider("How many (most summed activation first)", options=MAP_KS, **state.bind(MAP_K))
        view = ("top", timeline.map_k(layer.shape, state.get(MAP_K)))
        if view[1] < min(int(state.get(MAP_K)), count):
            detail.caption(f"{view[1]} maps of {per:,} neurons: at most {timeline.MAX_MAP_NEURONS:,} neurons are sent.")
    else:
        chosen = state.get(MAP_CHANNEL)
        if chosen is None or not 0 <= int(chosen) < count:
            if chosen is not None and MAP_CHANNEL in st.session_state.get(state.FROM_LINK, set()):
                st.warning(f"This link's channel={chosen!r} does not exist in this layer; showing its most active "
                           "channel instead.")
            lsp = timeline.layer_spikes(snn, cur.result, layer.name)
            state.put(MAP_CHANNEL, timeline.top_channels(lsp, 1)[0])
        detail.number_input(f"Channel (0–{count - 1})", min_value=0, max_value=count - 1, step=1,
                            **state.bind(MAP_CHANNEL))
        view = ("channel", int(state.get(MAP_CHANNEL)))


def companion() -> live.Compare | None:
    """This input's fired-by counts under the other neuron model (B1 beside the α-model, or the α-model beside B1),
    from the cached conversion and simulation of that model (shared by every session; one simulation per input);
    None where it does not convert or its windows do not line up step for step."""
    other = B1 if cur.net_key.neuron == ALPHA else ALPHA
    key = replace(cur.net_key, neuron=other)
    try:
        osnn = cache.network(key, cur.entry)
    except (ttfs_core.ConversionError, ValueError, RuntimeError):  # the page goes on with one model's counts
        return None
    otl = timeline.timeline_of(osnn)
    if otl.steps != tl.steps:
        return None
    ores = cache.simulate(key, cur.image_key, osnn, cur.x)
    return live.compare_with(cur.net_key.neuron, other, timeline.spikes_of(osnn, ores), otl)


def hover_values() -> list | None:
    """Per layer (input first: none), the ANN's and the decoded SNN's activations of every neuron in the model's
    units (the "ANN vs SNN" page's cached comparison), for the raster's tooltip; None where the model's layers
    cannot be read beside the network's (`ttfs_core.compare` says why on that page)."""
    try:
        comps = cache.comparison(cur.net_key, cur.image_key, cur.entry.model, snn, cur.x)
    except ValueError:
        return None
    return [None] + [(c.ann[0].detach().double().numpy(), c.snn[0].detach().double().numpy()) for c in comps]


def export_info() -> dict:
    """The slide files' stem ("lenet5_img0_raster") and title (model, input, conversion, mapped layer)."""
    test = state.get(state.IMAGE) == "test"
    image = int(cur.image_key.rsplit(":", 1)[1]) if test else cur.image_title.removeprefix("uploaded ")
    if test and cur.dataset != cur.entry.dataset:  # a test image of the other bundled data set says which
        image = f"{cur.image_key.rsplit(':', 1)[0]}-img{image}"
    return {"stem": live.export_stem(state.get(state.MODEL), image),
            "title": f"{cur.entry.title} · {cur.image_title} · ζ = {cur.net_key.margin:g}, "
                     f"{cur.net_key.neuron.label} · feature maps of {labels[layer.name]}"}


# the other neuron model's counts beside this one's: at once for a network drawn dot by dot up to COMPANION_NEURONS,
# on request for a larger one (its first request converts the network a second time, once per server)
other_neuron = B1 if cur.net_key.neuron == ALPHA else ALPHA
this_label, other_label = live.short_label(cur.net_key.neuron), live.short_label(other_neuron)
beside = not dense and sum(sizes) <= COMPANION_NEURONS
if not beside:
    silent = "its silent neurons never fire" if other_neuron == B1 else "every neuron fires by its window"
    beside = st.toggle(f"Count {other_label} beside {this_label} on this input", key=OTHER_COUNTS,
                       help=f"A second counts line under the raster: how many neurons of each layer have fired by the "
                            f"cursor under {other_label} too ({silent}). The first request converts this network a "
                            "second time, once per server.")

# one spec per (network, input, axis, layer, channels) and session: reruns that change none of them (a click) reuse
# it; what the raster costs (counts per step, heat strips) is kept per (network, input, axis) while maps change
memo_key = (cur.net_key, cur.image_key, mode, n, view, beside)
memo = st.session_state.get("_ttfs_live_spec")
if memo is None or memo[0] != memo_key:
    prep_key = (cur.net_key, cur.image_key, mode)
    prep = st.session_state.get("_ttfs_live_prepared")
    if prep is None or prep[0] != prep_key:
        spikes = timeline.spikes_of(snn, cur.result)
        prep = (prep_key, live.prepare(spikes, tl, mode))
        st.session_state["_ttfs_live_prepared"] = prep
    else:  # the heat strips are kept: only the maps' layers and the dots need spikes
        spikes = timeline.spikes_of(snn, cur.result, only={0, n} | (set(range(len(sizes))) - set(prep[1].densities)))
    channels = None
    if view is not None:
        channels = timeline.top_channels(spikes[n], view[1]) if view[0] == "top" else [view[1]]
    pre = getattr(cur.entry, "preprocess", None)
    known = pre is not None and getattr(pre, "channels", 0) == 3
    colours = timeline.input_colours(spikes[0], snn.input_range, pre.mean if known else None,
                                     pre.std if known else None)
    # the teaching extras: the other model's counts, and hover values on a network drawn dot by dot
    extras = {"compare": None}
    if beside:
        with st.spinner(f"Converting the network under {other_label} (once per server) and simulating this input…"):
            extras["compare"] = companion()
    if not dense:
        extras["ann"] = hover_values()
    memo = (memo_key, live.spec(spikes, tl, mode, n, cursor, channels=channels, colours=colours, prepared=prep[1],
                                export=export_info(), **extras))
    st.session_state["_ttfs_live_spec"] = memo
if beside and "compare" not in memo[1]:
    st.caption(f"{other_label} cannot be counted beside {this_label} here: the network does not convert under "
               f"{other_label}, or its windows do not line up step for step with these.")
# a link may open the raster revealing at a chosen speed (the tour's "the raster fills in"); like the cursor, they are
# the browser's own once drawn (not part of the spec's id)
live.timeline({**memo[1], "cursor": cursor, "reveal": bool(state.get(REVEAL)), "speed": int(state.get(SPEED))},
              key="timeline")
st.caption("Step, drag or **Play** the cursor above the raster (**Reveal** hides what comes after it; pick the speed "
           "beside Play): everything is drawn in your browser. Hover a dot or a map cell to find the neuron in both "
           "views (a dot's tooltip gives its spike time and ANN activation); click it to open its membrane trace. "
           "**PNG**, **SVG** and **Animation** download this view for slides."
           + (" Layers of many neurons are heat strips (spikes per channel and time bin, log colour): hover a cell "
              "for its count, click it to map that channel." if dense else ""))
controls.explain("feature_maps")
state.write_url(MAP_PARAMS, MAP_DEFAULTS)  # the page's end (controls.page_end), with the mapped channel
