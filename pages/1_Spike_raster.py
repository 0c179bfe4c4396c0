"""Spike raster: every spike of the network on one time axis, a time cursor, and the feature maps filling in."""

import streamlit as st

from ttfs_ui import controls, figures, state, timeline

cur = controls.page_start("Spike raster", "raster")

tl = cur.timeline
spikes = timeline.spikes_of(cur.snn, cur.result)
axis_options = {"auto": f"automatic ({tl.default_mode()} for this network)",
                timeline.STRETCHED: "each window stretched to equal width",
                timeline.ABSOLUTE: "absolute time (τ_c)"}
st.radio("Time axis", list(axis_options), format_func=axis_options.get, horizontal=True, **state.bind(state.AXIS))
mode = tl.default_mode() if state.get(state.AXIS) == "auto" else state.get(state.AXIS)

cursor = controls.time_cursor(tl)
st.plotly_chart(figures.raster(spikes, tl, mode, cursor), key="raster")
fired = [int(tl.fired_by(n, s.offsets, cursor).sum()) for n, s in enumerate(spikes)]
st.caption("Fired by the cursor: " + " · ".join(f"{s.label} {f:,}/{s.neurons:,}" for s, f in zip(spikes, fired)))

st.header("Feature maps")
controls.explain("feature_maps")
names = [s.name for s in spikes[1:]]
labels = {s.name: f"{s.label} ({'×'.join(map(str, s.shape))})" for s in spikes[1:]}
if state.get(state.LAYER) not in names:
    state.put(state.LAYER, names[0])
st.selectbox("Layer", names, format_func=labels.get, **state.bind(state.LAYER))
n = names.index(state.get(state.LAYER)) + 1
st.plotly_chart(figures.feature_maps(spikes[0], spikes[n], n, tl, cursor), key="feature_maps")
