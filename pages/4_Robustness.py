"""Robustness: accuracy and ANN agreement against spike-time quantisation, jitter, weight bits and the margin."""

import streamlit as st

from ttfs_ui import cache, controls, figures, state, tables

cur = controls.page_start("Robustness", "robustness")

left, right = st.columns(2, gap="large")
left.select_slider("Test images per point", options=state.ROBUST_IMAGE_OPTIONS, **state.bind(state.ROBUST_IMAGES),
                   help="The first images of the bundled test set. More images: smoother curves, slower first run.")
right.toggle("Jitter σ relative to each window (instead of τ_c)", **state.bind(state.ROBUST_RELATIVE))
n, relative = state.get(state.ROBUST_IMAGES), state.get(state.ROBUST_RELATIVE)

progress = st.progress(0.0, text="Sweeping…")
total = sum(len(v) for v in cache.KNOBS.values())
points: dict[str, list] = {}
for knob, values in cache.KNOBS.items():
    points[knob] = []
    for value in values:
        # the σ unit matters to jitter only: other knobs keep their cached points when it is switched
        points[knob].append(cache.sweep_point(cur.net_key, cur.dataset, knob, value, n,
                                              relative and knob == "jitter", cur.entry, cur.snn))
        done = sum(len(p) for p in points.values())
        progress.progress(done / total, text=f"Swept {done} of {total} settings on {n:,} test images")
progress.empty()

exact = tables.evaluation_summary(controls.evaluate_test_set(cur, n)[0])
st.caption(f"Without perturbation, on these {n:,} test images: ANN accuracy {100 * exact['ANN accuracy']:.1f} %, "
           f"SNN accuracy {100 * exact['SNN accuracy']:.1f} %, agreement {100 * exact['agreement']:.1f} %.")
sigma_unit = "each window B_n" if relative else "τ_c"
charts = {
    "time_bits": ("Spike-time quantisation", "bits per spike time (2^bits levels per window)", "linear", False),
    "jitter": ("Spike-time jitter", f"σ (units of {sigma_unit})", "category", False),
    "weight_bits": ("Weight quantisation", "bits per weight", "linear", False),
    "margin": ("Window margin ζ", "ζ (B_n = (1 + ζ)·X_n)", "linear", True),
}
for row in (list(charts)[:2], list(charts)[2:]):
    for col, knob in zip(st.columns(2, gap="large"), row):
        title, x_title, x_type, early = charts[knob]
        with col:
            st.subheader(title)
            st.plotly_chart(figures.sweep(points[knob], x_title, x_type=x_type, show_early=early,
                                          ann_accuracy=exact["ANN accuracy"]), key=f"sweep_{knob}")
            with st.expander("as a table"):
                st.dataframe(tables.sweep_rows(points[knob]), hide_index=True, width="stretch")
controls.page_end()
