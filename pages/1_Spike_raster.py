"""Spike raster: every spike of the network on one time axis, a time cursor, and the feature maps filling in.

The cursor runs in the browser (`ttfs_ui.live`): stepping, Play and hovering never rerun this script; it reruns
when the model, the input, a setting, the axis or the mapped layer changes, when a neuron is clicked, and once
when the cursor comes to rest (so that the page's link carries it).
"""

import streamlit as st

from ttfs_ui import controls, live, messages, state, timeline

cur = controls.page_start("Spike raster", "raster")

tl = cur.timeline
spikes = timeline.spikes_of(cur.snn, cur.result)
# what the browser sent since the last run (read before drawing, so the cursor drawn is the one it has): the cursor
# after it rested (for the link and the membrane page), or a clicked neuron, whose trace opens
raw = st.session_state.get("timeline")
try:
    event = None if raw is None else messages.timeline_event(raw, tl.steps, {s.name: s.neurons for s in spikes[1:]})
except messages.BadMessage as e:  # from a scripted browser: used for nothing
    event = None
    st.warning(f"A message from the timeline was ignored: {e}.")
if event is not None and event.seq != st.session_state.get("_seen_timeline_click"):
    st.session_state["_seen_timeline_click"] = event.seq
    state.put(state.CURSOR, event.cursor)
    if event.layer is not None:
        controls.open_trace(event.layer, event.neuron)
axis_options = {"auto": f"automatic ({tl.default_mode()} for this network)",
                timeline.STRETCHED: "each window stretched to equal width",
                timeline.ABSOLUTE: "absolute time (τ_c)"}
names = [s.name for s in spikes[1:]]
labels = {s.name: f"{s.label} ({'×'.join(map(str, s.shape))})" for s in spikes[1:]}
if state.get(state.LAYER) not in names:
    state.stale(state.LAYER, state.get(state.LAYER), names[0])
    state.put(state.LAYER, names[0])
axis, layer = st.columns([3, 2])
axis.radio("Time axis", list(axis_options), format_func=axis_options.get, horizontal=True, **state.bind(state.AXIS))
layer.selectbox("Feature maps of layer", names, format_func=labels.get, **state.bind(state.LAYER))
mode = tl.default_mode() if state.get(state.AXIS) == "auto" else state.get(state.AXIS)
n = names.index(state.get(state.LAYER)) + 1
cursor = state.get(state.CURSOR)
if cursor is not None and not 0 <= cursor <= tl.steps:
    state.stale(state.CURSOR, cursor, tl.steps)
cursor = tl.steps if cursor is None or not 0 <= cursor <= tl.steps else int(cursor)

# one spec per (network, input, axis, layer) and session: reruns that change none of them (a click) reuse it
memo_key = (cur.net_key, cur.image_key, mode, n)
memo = st.session_state.get("_ttfs_live_spec")
if memo is None or memo[0] != memo_key:
    memo = (memo_key, live.spec(spikes, tl, mode, n, cursor))
    st.session_state["_ttfs_live_spec"] = memo
live.timeline({**memo[1], "cursor": cursor}, key="timeline")
st.caption("Step, drag or **Play** the cursor above the raster: everything is drawn in your browser. Hover a dot or "
           "a map cell to find the neuron in both views; click it to open its membrane trace.")
controls.explain("feature_maps")
controls.page_end()
