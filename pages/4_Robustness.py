"""Robustness: accuracy and ANN agreement against spike-time quantisation, jitter, weight bits and the margin.

Bundled models at the presets' settings show shipped numbers at once (`ttfs_ui.sweeps`); anything else is computed
on the server in chunks of test images, shared by every session, the charts filling in as the chunks come."""

import time

import streamlit as st

from ttfs_ui import cache, controls, figures, state, sweeps, tables

state.init(sweeps.DEFAULTS, sweeps.PARAMS)  # a link may set the weight target (`sweeps.PARAMS`)
cur = controls.page_start("Robustness", "robustness")
fmt = figures.export_format(st)

left, middle, right = st.columns(3, gap="large")
left.select_slider("Test images per point", options=state.ROBUST_IMAGE_OPTIONS, **state.bind(state.ROBUST_IMAGES),
                   help="The first images of the bundled test set. More images: smoother curves.")
middle.toggle("Jitter σ relative to each window (instead of τ_c)", **state.bind(state.ROBUST_RELATIVE))
right.radio("Weight quantisation of", list(sweeps.WEIGHT_TARGETS),
            format_func=lambda t: "{} ({})".format(*sweeps.WEIGHT_TARGETS[t]),
            **state.bind(sweeps.WEIGHTS),
            help="Symmetric, 2^(bits−1) − 1 levels per sign. W: one scale per output channel (per filter), as "
                 "quantised hardware does; the spiking layer is then the exact conversion of the quantised ReLU "
                 "network. J: the spiking synapses themselves, rounded on one scale per layer.")
relative, target = state.get(state.ROBUST_RELATIVE), state.get(sweeps.WEIGHTS)
n = min(state.get(state.ROBUST_IMAGES), cache.size(cur.entry, cur.dataset))  # an uploaded data set may be smaller
series = sweeps.shown_series(relative, target)

sigma_unit = "each window B_n" if relative else "τ_c"
charts = {  # series -> title, x axis, axis type, early spikes shown
    "time_bits": ("Spike-time quantisation", "bits per spike time (2^bits levels per window)", "linear", False),
    series[3]: ("Spike-time jitter", f"σ (units of {sigma_unit})", "category", False),
    series[4]: ("Weight quantisation", f"bits per weight ({sweeps.WEIGHT_TARGETS[target][0]})", "linear",
                False),
    "margin": ("Window margin ζ", "ζ (B_n = (1 + ζ)·X_n)", "linear", True),
}
WHY_J = ("Why W per channel is the default: J = αW/(1 − ΣW) grows with 1/(1 − ΣW), so a layer's J spans a far wider "
         "range than its W; on one scale per layer the few neurons with ΣW near 1 set the scale and most other "
         "synapses round to a few levels or to 0.")
if n < 1:
    st.warning("These test images are empty: nothing to sweep.")
    st.stop()

summary, status = st.empty(), st.empty()
places = {}
for row in (list(charts)[:2], list(charts)[2:]):
    for col, s in zip(st.columns(2, gap="large"), row):
        with col:
            st.subheader(charts[s][0])
            places[s] = st.empty()
            if s == series[4]:
                st.caption(WHY_J)


def draw(points: dict, final: bool) -> None:
    ann, exact = points["ann"][0], points["exact"][0]
    accuracy = "" if ann.accuracy is None else (f"ANN accuracy {100 * ann.accuracy:.1f} %, SNN accuracy "
                                                 f"{100 * exact.accuracy:.1f} %, ")
    summary.caption(f"Without perturbation, on these {ann.images:,} test images: {accuracy}agreement "
                    f"{100 * exact.agreement:.1f} %." + ("" if final else " (computing…)"))
    for s, (_, x_title, x_type, early) in charts.items():
        with places[s].container():
            fig = figures.sweep(points[s], x_title, x_type=x_type, show_early=early, ann_accuracy=ann.accuracy)
            knob = s.partition(":")[0]
            plain = "" if ann.accuracy is None else (f"ANN {100 * ann.accuracy:.1f} %, SNN "
                                                     f"{100 * exact.accuracy:.1f} %, ")
            figures.slide_title(fig, f"{charts[s][0]} · {cur.entry.title}",  # short: a half-width chart
                                f"{plain}agreement {100 * exact.agreement:.1f} % unperturbed · {ann.images:,} "
                                f"images · ζ = {cur.net_key.margin:g}" + ("" if final else " (computing…)"))
            stem = figures.export_name(figures.slide_model(cur.entry), "robustness", s.replace(":", "-"),
                                       f"z{cur.net_key.margin:g}", f"n{ann.images}")
            # a chart drawn while the chunks come has a key of its own: only the final one is `sweep_<knob>`
            st.plotly_chart(fig, key=f"sweep_{knob}" + ("" if final else f"_{ann.images}"),
                            config=figures.export_config(stem, fmt))
            if final:
                with st.expander("as a table"):
                    rows = tables.sweep_rows(points[s])
                    st.dataframe(rows, hide_index=True, width="stretch",
                                 column_config=tables.number_config(rows, st.column_config))


points = sweeps.precomputed(cur.entry, cur.net_key, cur.dataset, n, series)
if points is not None:
    status.caption(f"Precomputed for this bundled model and these settings (`scripts/precompute_sweeps.py`, checked "
                   f"against the model's weights) on the first {n:,} test images.")
else:
    progress = status.progress(0.0, text="Sweeping…")
    began = last = time.perf_counter()
    computed = before = 0  # images swept in this run (not shipped or cached): the pace of the time left
    for done, points in sweeps.live(cur.net_key, cur.dataset, n, series, cur.entry, cur.snn):
        now = time.perf_counter()
        if now - last > 0.05:  # a chunk that was computed, not read
            computed += done - before
        before, last = done, now
        progress.progress(done / n, text=controls.progress_text(done, n, computed, now - began,
                                                                "Swept every setting on"))
        if done < n:
            draw(points, final=False)  # the curves over the images swept so far
    status.empty()
draw(points, final=True)
state.write_url(sweeps.PARAMS, sweeps.DEFAULTS)
