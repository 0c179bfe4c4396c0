"""Membrane traces: the exact potential V(t) of chosen neurons, their inputs, threshold and spike."""

import streamlit as st

from ttfs_ui import cache, controls, figures, state, tables, timeline

cur = controls.page_start("Membrane traces", "membrane")

layers = timeline.spikes_of(cur.snn, cur.result)[1:] + [timeline.readout_of(cur.snn, cur.result)]
names = [s.name for s in layers]
labels = {s.name: f"{s.label} ({'×'.join(map(str, s.shape))})" for s in layers}
if state.get(state.TRACE_LAYER) not in names:
    state.put(state.TRACE_LAYER, names[0])
choose, clock = st.columns([3, 2], gap="large")
with choose:
    st.selectbox("Layer", names, format_func=labels.get, **state.bind(state.TRACE_LAYER))
    layer = layers[names.index(state.get(state.TRACE_LAYER))]
    st.radio("Choose neurons", ["k most active", "by index", "from the feature map"], horizontal=True,
             **state.bind(state.TRACE_PICK))
with clock:
    clocks = {"off": "off", "steps": "ticks per window", "dt": "tick length dt"}
    st.radio("Clock-driven trace", list(clocks), format_func=clocks.get, horizontal=True,
             **state.bind(state.TRACE_CLOCK), help="Overlay the same neuron simulated with a clock (MATH §6): "
             "inputs and spikes land on ticks, V grows by dt·I per tick.")
    if state.get(state.TRACE_CLOCK) == "steps":
        st.select_slider("Ticks per window", options=[2, 4, 8, 16, 32, 64, 128, 256], **state.bind(state.TRACE_STEPS))
    elif state.get(state.TRACE_CLOCK) == "dt":
        st.select_slider("dt (τ_c)", options=[0.1, 0.03, 0.01, 0.003, 0.001], **state.bind(state.TRACE_DT),
                         help="Every window gets ceil(B_n / dt) ticks: short deep windows get few.")

pick = state.get(state.TRACE_PICK)
if pick == "k most active":
    st.number_input("k", min_value=1, max_value=controls.MAX_TRACES, step=1, **state.bind(state.TRACE_K))
    neurons = timeline.most_active(layer.activations, state.get(state.TRACE_K))
elif pick == "by index":
    neurons = [controls.neuron_index(layer.name, layer.shape)]
else:
    neurons = controls.pick_from_map(layer, key=f"picker_{layer.name}")

index_labels = timeline.unravel(layer.shape, neurons)
clock = state.get(state.TRACE_CLOCK)
steps = state.get(state.TRACE_STEPS) if clock == "steps" else None
dt = state.get(state.TRACE_DT) if clock == "dt" else None
traces = [cache.trace(cur.net_key, cur.image_key, layer.name, timeline.multi_index(layer.shape, i), steps, dt,
                      cur.snn, cur.x) for i in neurons]
st.plotly_chart(figures.membrane(traces, index_labels), key="membrane")
st.caption(f"Times are relative to the moment the layer's neurons start integrating, t_min^(n−1) = "
           f"{traces[0].origin:.6g} τ_c (absolute).")
st.dataframe(tables.trace_rows(traces, index_labels), hide_index=True, width="stretch")
