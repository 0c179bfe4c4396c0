"""ANN vs SNN: the original ReLU network is the oracle for every spiking layer, on one input and on the test split."""

import numpy as np
import streamlit as st

from ttfs_core import data
from ttfs_ui import cache, controls, figures, messages, state, tables, timeline

cur = controls.page_start("ANN vs SNN", "ann_vs_snn")

st.header("This input, layer by layer")
comparisons = cache.comparison(cur.net_key, cur.image_key, cur.entry.model, cur.snn, cur.x)
# a large network (a layer over SCATTER_POINTS neurons): chosen layers, each a stratified sample of its neurons, the
# histogram binned here; every error, the table and the certificate are still computed on all neurons
large = any(la.neurons > timeline.SCATTER_POINTS for la in cur.snn.layers)
if not large:
    names, ann, snn, errors = tables.comparison_data(cur.snn, comparisons)
    st.plotly_chart(figures.ann_vs_snn(names, ann, snn), key="scatter")
else:
    every = [timeline.layer_label(la) for la in cur.snn.layers]
    shown = tables.default_layers([float(c.max_abs_error) for c in comparisons])
    if len(every) > len(shown):
        chosen = st.multiselect("Layers plotted", every, default=[every[i] for i in shown], key="compare_layers",
                                help="Each layer's scatter is a sample of its neurons; the errors below are "
                                     "computed on all of them.")
        shown = [every.index(label) for label in chosen] or shown
    names, ann, snn, errors = tables.comparison_data(cur.snn, comparisons, shown)
    offsets = [cur.result.layers[i].offsets[0].numpy().ravel() for i in shown]
    samples = [timeline.sample_neurons(a, s, early=off < 0, silent=~np.isfinite(off))  # dynamics.early_mask
               for a, s, off in zip(ann, snn, offsets)]
    st.plotly_chart(figures.ann_vs_snn(names, ann, snn, samples=samples), key="scatter")
    st.caption(" · ".join(f"{name}: {smp.describe()}" for name, smp in zip(names, samples)) + "; errors computed "
               f"on all. A layer's sample (at most {timeline.SCATTER_POINTS:,} neurons) keeps its largest errors, "
               "its extreme ANN and SNN values, its early spikes (up to a quarter of the sample) and silent neurons "
               "(up to an eighth), then takes equal random shares of the neurons whose ANN value is 0 and of each "
               "eighth of the positive ones. Choose the layers plotted above.")
left, right = st.columns(2, gap="large")
with left:
    st.markdown("**Errors SNN − ANN, all neurons** (log scale)")
    st.plotly_chart(figures.error_histogram(names, errors, binned=large), key="errors")
with right:
    st.markdown("**Largest error per layer**")
    st.dataframe(tables.error_rows(cur.snn, comparisons), hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.3e")
                                for c in ("max |SNN − ANN|", "relative to max |ANN|", "ANN there")})

st.subheader("How early spikes were ruled out")
st.caption("A neuron's spike time has a closed form once all its inputs have arrived; it is wrong only if V crossed "
           "θ earlier. A cheap certificate (a few weighted sums per layer, on cells of the input window) proves that "
           "impossible for almost every neuron; the rest are searched exactly over their input segments. "
           + ("With the positive-part rescaling one comparison of the pre-activation with B_n decides it."
              if not cur.snn.neuron.needs_certificate(cur.snn.rescale) else ""))
st.dataframe(tables.certificate_rows(cur.snn, cur.result), hide_index=True, width="stretch",
             column_config={"B_n (τ_c)": st.column_config.NumberColumn(format="%.4g")})

title = data.dataset(cur.dataset).title
st.header(f"The {title} test set")
if state.get(state.EVAL_IMAGES) not in controls.EVAL_OPTIONS:
    state.put(state.EVAL_IMAGES, state.DEFAULTS[state.EVAL_IMAGES])
st.radio("Test images evaluated", controls.EVAL_OPTIONS, horizontal=True, **state.bind(state.EVAL_IMAGES),
         format_func=lambda n: f"the first {n:,}" if n < controls.TEST_IMAGES else f"all {n:,}",
         help="All 10,000 take about ten times as long on the first visit; results are cached per chunk, so the "
              "first 1,000 are reused. `ttfs verify` checks the whole set from the command line.")
n_eval = int(state.get(state.EVAL_IMAGES))
report, early = controls.evaluate_test_set(cur, n_eval)
summary = tables.evaluation_summary(report)
m = st.columns(5)
m[0].metric("ANN accuracy", f"{100 * summary['ANN accuracy']:.1f} %")
m[1].metric("SNN accuracy", f"{100 * summary['SNN accuracy']:.1f} %")
m[2].metric("Agreement", f"{100 * summary['agreement']:.1f} %", help="SNN and ANN predict the same class")
m[3].metric("Early spikes", f"{summary['early spikes']:,}")
m[4].metric("Spikes per neuron", f"{summary['spikes per neuron']:.3f}")
certified = ", ".join(f"{name}: {100 * count / max(summary['neurons'], 1):.2f} %"
                      for name, count in summary["certificate"].items() if count)
st.caption(f"Early-spike certificate over these images: {certified or 'nothing to settle'}; searched exactly: "
           f"{summary['searched']:,} of {summary['neurons']:,} neurons "
           f"({100 * summary['searched'] / max(summary['neurons'], 1):.3f} %).")
if summary["disagreements"]:
    st.warning("SNN and ANN disagree on test images " + ", ".join(f"#{i}" for i in summary["disagreements"][:30])
               + (" …" if len(summary["disagreements"]) > 30 else "") + " (choose one in the sidebar to inspect it).")

st.subheader("Early spikes")
rows = tables.early_rows(early, cur.snn)
if not rows:
    st.success("No neuron fired early on any of these test images: every spike came after all of its inputs. "
               "Lower the safety margin ζ in the conversion settings to see some.")
else:
    st.caption(f"{summary['early spikes']:,} early spikes; {len(rows):,} listed (at most {cache.MAX_EARLY_ROWS} per "
               f"layer and {cache.EVAL_CHUNK} images). Click a row to open that neuron's membrane trace.")
    table = st.dataframe(rows, hide_index=True, width="stretch", key="early_table", on_select="rerun",
                         selection_mode="single-row", column_order=("image", "layer", "index", "early by (τ_c)"))
    try:
        chosen = messages.picked_row(table.selection.rows, len(rows))
    except messages.BadMessage as e:  # from a scripted browser: used for nothing
        chosen = None
        st.warning(f"A selection from the table was ignored: {e}.")
    if chosen is not None:
        row = rows[chosen]
        controls.open_trace(row["layer name"], row["neuron"], row["image"])
    st.markdown(f"Or the first {min(len(rows), 12)}:")
    for col, row in zip(st.columns(4) * 3, rows[:12]):
        if col.button(f"#{row['image']} · {row['layer']} {row['index']}", key=f"early_{row['image']}_"
                      f"{row['layer name']}_{row['neuron']}", icon=":material/show_chart:", width="stretch"):
            controls.open_trace(row["layer name"], row["neuron"], row["image"])
controls.page_end()
