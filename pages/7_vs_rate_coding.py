"""vs rate coding: accuracy and agreement of SpikingJelly's and sinabs' rate-coded conversions against time steps,
compute time and spikes per neuron, from the shipped benchmark results, beside our exact one-spike network; and for
the input shown, the rate-coded first hidden layer's spikes beside ours (when SpikingJelly is installed)."""

import streamlit as st

from ttfs_ui import cache, controls, figures, state, tables
from ttfs_ui import peers as pr

cur = controls.page_start("vs rate coding", "peers")
fmt = figures.export_format(st)

results = pr.load()
if results is None:
    st.warning(f"No comparison results in {pr.RESULTS}: run `python -m bench peers` (with the peers: `{pr.INSTALL}`).")
else:
    rows = results["rows"]
    names = pr.models(rows)
    titles = {c.name: c.title for c in cache.zoo_cards()}
    left, mid, right = st.columns([2, 2, 3])
    model = pr.measured_model(cur.entry.key, names)
    if model is not None:  # the sidebar's model, always: choosing another here switches the session's model
        st.session_state["peers_model"] = model

        def follow() -> None:
            state.put(state.MODEL, f"zoo:{st.session_state['peers_model']}")

        left.selectbox("Model", names, format_func=lambda n: titles.get(n, n), key="peers_model", on_change=follow,
                       help="The sidebar's model (choosing another here chooses it there too); the benchmark "
                            "measured these bundled models.")
    else:  # an upload or a model the benchmark did not measure: one it did, chosen here, by its name
        if st.session_state.get("peers_model") not in names:
            st.session_state["peers_model"] = names[0]
        left.caption(f"The benchmark measured only bundled models, not {cur.entry.title}: choose one of them.")
        model = left.selectbox("Measured model", names, format_func=lambda n: titles.get(n, n), key="peers_model",
                               help="The bundled models `python -m bench peers` measured (the session keeps "
                                    "its own model).")
    y_metric = mid.radio("Measure", ["agreement", "accuracy"], horizontal=True, key="peers_y",
                         help="Agreement: the SNN's class equals the ANN's (the only measure on unlabelled data).")
    x_metric = right.radio("Against", list(pr.X_AXES), format_func=lambda k: k.replace("steps", "time steps"),
                           horizontal=True, key="peers_x")
    curves = pr.curves(rows, model, x_metric, y_metric)
    figures.slide_title(curves, f"Rate coding against our exact TTFS network · {titles.get(model, model)}",
                        f"{y_metric} against {pr.X_AXES.get(x_metric, x_metric)} · "
                        f"measured {results.get('date', '?')}, "
                        f"{pr.images_measured(rows, model)}")
    st.plotly_chart(curves, key="peers_curves", config=figures.export_config(
        figures.export_name(model, "vs-rate-coding", y_metric, "vs", x_metric), fmt))
    line = pr.headline(rows, model)
    if line:
        st.info(line, icon=":material/insights:")
    installed = ", ".join(f"{k} {v}" for k, v in results.get("installed", {}).items() if v) or "none installed"
    st.caption(f"Measured by `python -m bench peers` on {results.get('date', '?')} ({results.get('machine', '?')}; "
               f"peers: {installed}). Rate-coded networks run for 512 steps with the image as a constant input "
               "current; their numbers at T = 8, 32, 128, 512 come from the same run. Ours: the exact event-driven run "
               "and the clock-driven run at 16, 64 and 256 ticks per window, α and B1, on the same images.")
    with st.expander("as a table"):
        summary = pr.summary_rows(rows, model)
        st.dataframe(summary, hide_index=True, width="stretch",
                     column_config=tables.number_config(summary, st.column_config))

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
    pair = pr.raster_pair(spikes, steps, first.offsets[0], first.window, f"layer {label}")
    figures.slide_title(pair, f"Rate-coded spikes beside ours · first spiking layer {label}",
                        f"{cur.entry.title} · {cur.image_title} · SpikingJelly {version}, {steps} steps")
    st.plotly_chart(pair, key="peers_raster", config=figures.export_config(
        figures.slide_stem(cur, "rate-vs-ttfs", f"T{steps}"), fmt))
    st.caption(f"SpikingJelly {version}, RateCodingRecipe 99.9 % (channel-wise), first spiking layer: "
               f"{pr.spikes_per_neuron(spikes):.2f} spikes per neuron in {steps} steps; ours: "
               f"{first.spikes / max(first.neurons, 1):.2f} (one spike per neuron, or none in B1), and the values are "
               "exact, not estimated from a rate.")
controls.page_end()
