"""ANN vs SNN: the original ReLU network is the oracle for every spiking layer, on one input and on the test split."""

import numpy as np
import streamlit as st

from ttfs_core import data
from ttfs_ui import cache, controls, figures, messages, state, tables, timeline

cur = controls.page_start("ANN vs SNN", "ann_vs_snn")
fmt = figures.export_format(st)
where = f"{cur.entry.title} · {cur.image_title}"

st.header("This input, layer by layer")
comparisons = cache.comparison(cur.net_key, cur.image_key, cur.entry.model, cur.snn, cur.x)
# a large network (a layer over SCATTER_POINTS neurons): chosen layers, each a stratified sample of its neurons, the
# histogram binned here; every error, the table and the certificate are still computed on all neurons
large = any(la.neurons > timeline.SCATTER_POINTS for la in cur.snn.layers)
if not large:
    names, ann, snn, errors = tables.comparison_data(cur.snn, comparisons)
    scatter = figures.ann_vs_snn(names, ann, snn)
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
    scatter = figures.ann_vs_snn(names, ann, snn, samples=samples)
largest = max((float(c.max_abs_error) for c in comparisons), default=0.0)
early_here = sum(int(c.early_spikes) for c in comparisons)
counts = (f"{len(names)} of {len(cur.snn.layers)} layers, {sum(a.size for a in ann):,} neurons · largest |SNN − ANN| "
          f"{tables.sig(largest, 3)} · {early_here:,} early spikes")
figures.slide_title(scatter, "SNN decoded activation against ANN activation, per layer", f"{where} · {counts}")
st.plotly_chart(scatter, key="scatter", config=figures.export_config(figures.slide_stem(cur, "ann-vs-snn"), fmt))
if large:
    st.caption(" · ".join(f"{name}: {smp.describe()}" for name, smp in zip(names, samples)) + "; errors computed "
               f"on all. A layer's sample (at most {timeline.SCATTER_POINTS:,} neurons) keeps its largest errors, "
               "its extreme ANN and SNN values, its early spikes (up to a quarter of the sample) and silent neurons "
               "(up to an eighth), then takes equal random shares of the neurons whose ANN value is 0 and of each "
               "eighth of the positive ones. Choose the layers plotted above.")
left, right = st.columns(2, gap="large")
with left:
    hist = figures.slide_title(figures.error_histogram(names, errors, binned=large),
                               "Errors SNN − ANN, all neurons (log scale)",
                               f"{figures.slide_model(cur.entry)} · {cur.image_title} · "
                               f"{sum(e.size for e in errors):,} neurons")
    st.plotly_chart(hist, key="errors", config=figures.export_config(figures.slide_stem(cur, "errors"), fmt))
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
cert = tables.certificate_rows(cur.snn, cur.result)
st.dataframe(cert, hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(c, help=tables.certificate_help(c) or None,
                                                             format="%.4g" if c == "B_n (τ_c)" else None)
                            for c in cert[0] if c != "layer"})
searched_here = sum(r["searched exactly"] for r in cert)
neurons_here = max(sum(r["neurons"] for r in cert), 1)
st.caption(f"On this one image {searched_here:,} of {neurons_here:,} neurons "
           f"({100 * searched_here / neurons_here:.2g} %) "
           "were searched exactly: the exact search takes over whenever the neurons a stage leaves, times their "
           "fan-in, fall below a fixed size budget, and one image stays below it sooner than a batch, so a large "
           "share can be searched here (the README's 0.0004 % is LeNet-5 at ζ = 0.5 over batches of 256 test "
           "images, where the certificate settles almost every neuron).")

rows_here, early_total = tables.early_spikes_here(cur.snn, cur.result, comparisons)
if rows_here:
    st.subheader("Early spikes on this input")
    shown_here = min(len(rows_here), 40)
    fig = figures.early_spikes(rows_here, most=shown_here)
    figures.slide_title(fig, f"Early spikes on this input: {early_total:,}"
                        + (f" (the {shown_here} earliest shown)" if early_total > shown_here else ""),
                        f"{where} · ζ = {cur.net_key.margin:g} · × where each fired, ○ where the right spike "
                        "tₘₐₓ − x would be")
    st.plotly_chart(fig, key="early_here",
                    config=figures.export_config(figures.slide_stem(cur, "early-spikes"), fmt))
    st.caption("Each row is one early spike, the earliest at the top: the red × is where the neuron fired, before its "
               "window (grey) opened; the open circle is where the right spike would be, tₘₐₓ − x with x the ANN's "
               "activation (in the SNN's units). A circle left of the window: the activation is larger than the window "
               "B_n can hold, which is what a larger margin ζ fixes.")

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
searched_share = 100 * summary["searched"] / max(summary["neurons"], 1)
certified = ", ".join(f"{name}: {100 * count / max(summary['neurons'], 1):.2f} %"
                      for name, count in summary["certificate"].items() if count)
st.caption(f"Early-spike certificate over these images: {certified or 'nothing to settle'}; searched exactly: "
           f"{summary['searched']:,} of {summary['neurons']:,} neurons "
           f"({searched_share:.3f} %), counted over every image (whole batches leave the exact search far fewer "
           "neurons than one image does: it takes over below a size budget).")
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
               f"layer and {cache.EVAL_CHUNK} images), the earliest first: sorted by how long before its window "
               "opened each one fired. Click a row to open that neuron's membrane trace.")
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
