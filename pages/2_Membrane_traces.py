"""Membrane traces: the exact potential V(t) of chosen neurons, their inputs, threshold and spike."""

import numpy as np
import streamlit as st

from ttfs_ui import cache, controls, figures, state, tables, timeline
from ttfs_ui.text import T_MIN_PREV

cur = controls.page_start("Membrane traces", "membrane")
fmt = figures.export_format(st)

# names and shapes from the network; spikes only of the layer shown (a 10^7-neuron network converts one layer)
shapes = {la.name: (timeline.layer_label(la), tuple(la.shape)) for la in cur.snn.layers}
shapes[cur.snn.output.name] = (f"readout {cur.snn.output.name}", tuple(cur.snn.output.shape))
names = list(shapes)
labels = {name: f"{label} ({'×'.join(map(str, shape))})" for name, (label, shape) in shapes.items()}
if state.get(state.TRACE_LAYER) not in names:
    state.stale(state.TRACE_LAYER, state.get(state.TRACE_LAYER), names[0])
    state.put(state.TRACE_LAYER, names[0])
choose, clock = st.columns([3, 2], gap="large")
with choose:
    st.selectbox("Layer", names, format_func=labels.get, **state.bind(state.TRACE_LAYER))
    name = state.get(state.TRACE_LAYER)
    layer = timeline.readout_of(cur.snn, cur.result) if name == cur.snn.output.name else \
        timeline.layer_spikes(cur.snn, cur.result, name)
    st.radio("Choose neurons", state.TRACE_PICKS, horizontal=True,
             **state.bind(state.TRACE_PICK))
with clock:
    clocks = {"off": "off", "steps": "ticks per window", "dt": "tick length dt"}
    st.radio("Clock-driven trace", list(clocks), format_func=clocks.get, horizontal=True,
             **state.bind(state.TRACE_CLOCK), help="Overlay the same neuron simulated with a clock (MATH §6): "
             "inputs and spikes land on ticks, V grows by dt·I per tick.")
    if state.get(state.TRACE_CLOCK) == "steps":
        st.select_slider("Ticks per window", options=state.TRACE_STEP_OPTIONS, **state.bind(state.TRACE_STEPS))
    elif state.get(state.TRACE_CLOCK) == "dt":
        st.select_slider("dt (τ_c)", options=state.TRACE_DT_OPTIONS, **state.bind(state.TRACE_DT),
                         help="Every window gets ceil(B_n / dt) ticks: short deep windows get few.")

pick = state.get(state.TRACE_PICK)
if pick == "k most active":
    st.number_input("k", min_value=1, max_value=controls.MAX_TRACES, step=1, **state.bind(state.TRACE_K))
    k = state.get(state.TRACE_K)
    if layer.kind == "readout":
        neurons = timeline.most_active(layer.activations, k, distinct=True)
        st.caption("The classes with the k largest logits.")
    else:
        neurons = figures.spread_neurons(layer.activations, layer.shape, k)
        st.caption("The most active neuron, then active neurons at evenly spaced ranks down to the 10th percentile, "
                   "each from another channel: their spikes spread over the window, and no two traces are "
                   "near-copies (neighbours in one channel see almost the same inputs).")
elif pick == "by index":
    neurons = [controls.neuron_index(layer.name, layer.shape)]
else:
    neurons = controls.pick_from_map(layer, key=f"picker_{layer.name}")

readout = layer.kind == "readout"
index_labels = [f"class {cur.class_name(i)}" for i in neurons] if readout else timeline.unravel(layer.shape, neurons)
clock = state.get(state.TRACE_CLOCK)
steps = state.get(state.TRACE_STEPS) if clock == "steps" else None
dt = state.get(state.TRACE_DT) if clock == "dt" else None
traces = [cache.trace(cur.net_key, cur.image_key, layer.name, timeline.multi_index(layer.shape, i), steps, dt,
                      cur.snn, cur.x) for i in neurons]
at = state.get(state.CURSOR)  # the raster's time cursor, when one was set there (or by a link)
at = None if at is None or not 0 <= at < cur.timeline.steps else cur.timeline.cursor_t(int(at)) - traces[0].origin
if at is not None and not 0 <= at <= float(traces[0].t_max):
    st.caption(f"The raster's time cursor, t = {at + traces[0].origin:.6g} τ_c, is outside this layer's windows.")
    at = None
tick = None if clock == "off" else (f"{steps} ticks per window" if steps else f"dt = {dt:g} τ_c")
fig = figures.membrane(traces, index_labels, cursor=at, clock=tick)
shown = traces if readout else [tr for tr in traces if tr.theta is not None]
fired = sum(np.isfinite(float(tr.spike_time)) and not tr.forced for tr in shown)
counts = (f"{len(traces)} classes" if readout else
          f"{len(traces)} neuron{'s' * (len(traces) > 1)}: {fired} fired, {sum(bool(tr.forced) for tr in shown)} "
          f"forced, {sum(bool(tr.early) for tr in shown)} early")
cursor_text = "" if at is None else f" · cursor t = {at + traces[0].origin:.4g} τ_c"
figures.slide_title(fig, f"Membrane potential V(t) · {timeline.layer_label(layer)}",
                    f"{cur.entry.title} · {cur.image_title} · {counts}{cursor_text}"
                    + (f" · clock: {tick}" if tick else ""))
stem = figures.slide_stem(cur, "membrane", timeline.layer_label(layer), "n" + "+".join(map(str, neurons)),
                          None if at is None else f"t{at + traces[0].origin:.4g}")
st.plotly_chart(fig, key="membrane", config=figures.export_config(stem, fmt))
core = next(la for la in cur.snn.all_layers if la.name == layer.name)
if len(core.inputs) > 1:  # a residual sum or a concatenation (MATH §5): inputs from several layers, delayed
    def _drives(syn) -> str:
        return "all channels" if syn.channels is None else f"channels {syn.channels[0]}–{syn.channels[1] - 1}"

    parts = [f"**{name}** ({_drives(syn)}, delayed by {syn.delay:.4g} τ_c)"
             for name, syn in zip(traces[0].synapse_names, core.inputs)]
    st.caption(f"This layer reads {len(core.inputs)} inputs: {'; '.join(parts)}. Each source fires in its own window;"
               " its spikes are delayed by t_min − t_max(source) so that every input arrives at t_min − x (one "
               "code), and the neuron starts integrating at t_min minus the longest window it reads. The input "
               "ticks are coloured by the layer they come from (hover for the delay).")
if traces[0].gated:
    hit = sum(tr.saturated for tr in traces)
    st.caption(f"ReLU6 (gated) layer: the threshold is switched on only at t_min, so a neuron whose V has reached θ "
               f"by then fires at t_min and saturates at the clip value B_n = {core.window:.4g} (square marker). "
               f"{hit} of the {len(traces)} neurons shown saturated.")
st.caption(f"Times are relative to the moment the layer's neurons start integrating, tₘᵢₙ − (the longest window "
           f"they read; {T_MIN_PREV} in a chain) = {traces[0].origin:.6g} τ_c (absolute).")
rows = tables.trace_rows(traces, index_labels)
for row, tr in zip(rows, traces):
    if tr.multi_input:
        counts = {}
        for name in tr.input_names():
            counts[name] = counts.get(name, 0) + 1
        row["inputs by layer"] = ", ".join(f"{name}: {k}" for name, k in counts.items())
    if tr.gated:
        row["saturated"] = bool(tr.saturated)
st.dataframe(rows, hide_index=True, width="stretch", column_config=tables.number_config(rows, st.column_config))
controls.page_end()
