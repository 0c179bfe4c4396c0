"""Membrane traces: the exact potential V(t) of chosen neurons, their inputs, threshold and spike."""

import streamlit as st

from ttfs_ui import cache, controls, figures, state, tables, timeline

st.set_page_config(page_title="Membrane traces · TTFS explorer", page_icon="⚡", layout="wide")
state.init()
controls.sidebar()

st.title("Membrane traces")
controls.show_notice()
cur = controls.current()
controls.caption(cur)
controls.explain("membrane")

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
    st.select_slider("Clock-driven trace: ticks per window", options=[0, 4, 8, 16, 32, 64, 128, 256],
                     format_func=lambda s: "off" if s == 0 else f"{s} ticks", **state.bind(state.TRACE_STEPS),
                     help="Overlays the same neuron simulated with a clock: each window split into this many "
                          "ticks, inputs and spikes on ticks (MATH §6).")

pick = state.get(state.TRACE_PICK)
if pick == "k most active":
    st.number_input("k", min_value=1, max_value=controls.MAX_TRACES, step=1, **state.bind(state.TRACE_K))
    neurons = timeline.most_active(layer.activations, state.get(state.TRACE_K))
elif pick == "by index":
    neurons = [controls.neuron_index(layer.name, layer.shape)]
else:
    neurons = controls.pick_from_map(layer, key=f"picker_{layer.name}")

index_labels = timeline.unravel(layer.shape, neurons)
traces = [cache.trace(cur.net_key, cur.image_key, layer.name, timeline.multi_index(layer.shape, i),
                      state.get(state.TRACE_STEPS), cur.snn, cur.x) for i in neurons]
st.plotly_chart(figures.membrane(traces, index_labels), key="membrane")
st.caption(f"Times are relative to the moment the layer's neurons start integrating, t_min^(n−1) = "
           f"{traces[0].origin:.6g} τ_c (absolute).")
st.dataframe(tables.trace_rows(traces, index_labels), hide_index=True, width="stretch")
