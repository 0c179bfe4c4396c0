"""vs rate coding: accuracy and agreement of SpikingJelly's and sinabs' rate-coded conversions against time steps,
compute time and spikes per neuron, from the shipped benchmark results, beside our exact one-spike network; and for
the input shown, the rate-coded first hidden layer's spikes beside ours (when SpikingJelly is installed)."""

import streamlit as st

from ttfs_ui import cache, controls
from ttfs_ui import peers as pr

cur = controls.page_start("vs rate coding", "peers")

results = pr.load()
if results is None:
    st.warning(f"No comparison results in {pr.RESULTS}: run `python -m bench peers` (with the peers: `{pr.INSTALL}`).")
else:
    rows = results["rows"]
    names = pr.models(rows)
    here = cur.entry.key.removeprefix("zoo:")
    if st.session_state.get("peers_model") not in names:
        st.session_state["peers_model"] = here if here in names else names[0]
    left, mid, right = st.columns([2, 2, 3])
    model = left.selectbox("Model", names, key="peers_model", help="The bundled models the benchmark measured.")
    y_metric = mid.radio("Measure", ["agreement", "accuracy"], horizontal=True, key="peers_y",
                         help="Agreement: the SNN's class equals the ANN's (the only measure on unlabelled data).")
    x_metric = right.radio("Against", list(pr.X_AXES), format_func=lambda k: k.replace("steps", "time steps"),
                           horizontal=True, key="peers_x")
    st.plotly_chart(pr.curves(rows, model, x_metric, y_metric), key="peers_curves")
    line = pr.headline(rows, model)
    if line:
        st.info(line, icon=":material/insights:")
    installed = ", ".join(f"{k} {v}" for k, v in results.get("installed", {}).items() if v) or "none installed"
    st.caption(f"Measured by `python -m bench peers` on {results.get('date', '?')} ({results.get('machine', '?')}; "
               f"peers: {installed}). Rate-coded networks run for 512 steps with the image as a constant input "
               "current; their numbers at T = 8, 32, 128, 512 come from the same run. Ours: the exact event-driven run "
               "and the clock-driven run at 16, 64 and 256 ticks per window, α and B1, on the same images.")
    with st.expander("as a table"):
        st.dataframe(pr.summary_rows(rows, model), hide_index=True, width="stretch")

st.subheader("This input: rate-coded spikes beside ours")
version = pr.spikingjelly_version()
if version is None:
    st.info("SpikingJelly is not installed, so the rate-coded raster of this input cannot be drawn here (the curves "
            f"above need no peer). To see it: `{pr.INSTALL}`, then reload.", icon=":material/extension_off:")
else:
    steps = st.select_slider("Rate-coded time steps", options=[8, 32, 128], value=32, key="peers_steps")
    rc = cache.rate_coded(cur.entry.key, cur.entry)
    spikes = cache.rate_raster(cur.entry.key, cur.image_key, steps, rc, cur.x)
    first = cur.result.layers[0]
    label = cur.snn.layers[0].name
    st.plotly_chart(pr.raster_pair(spikes, steps, first.offsets[0], first.window, f"layer {label}"),
                    key="peers_raster")
    st.caption(f"SpikingJelly {version}, RateCodingRecipe 99.9 % (channel-wise), first spiking layer: "
               f"{pr.spikes_per_neuron(spikes):.2f} spikes per neuron in {steps} steps; ours: "
               f"{first.spikes / max(first.neurons, 1):.2f} (one spike per neuron, or none in B1), and the values are "
               "exact, not estimated from a rate.")
controls.page_end()
