"""Conversion inspector: the original model's captured graph, what each spiking layer absorbed from it, the
rescaling, X_n with the calibration activations, the windows, the early-spike certificate, where the SNN and the
ANN part, and where a model that cannot be converted fails."""

import pandas as pd
import streamlit as st

from ttfs_ui import cache, controls, figures, inspector, state
from ttfs_ui.timeline import layer_label

cur = controls.page_start("Conversion inspector", "inspector")
snn = cur.snn
fmt = figures.export_format(st)


def _config(view: str) -> dict:
    """The camera button's download (`figures.export_config`): model, input and view in the file name."""
    return figures.export_config(figures.slide_stem(cur, "inspector", view), fmt)


def _styled(rows: list[dict]):
    """The graph table with the failing node's row in red."""
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame

    def colour(row):
        if row.get("status") == inspector.FAILS:
            return ["background-color: #ffd6d6; color: #8b0000; font-weight: bold"] * len(row)
        if row.get("kind") == inspector.SHAPE_PLUMBING:  # sizes and guards: nothing to convert
            return ["color: #8a8f98"] * len(row)
        return [""] * len(row)

    return frame.style.apply(colour, axis=1)


def _trace(layer: str, neuron: int) -> None:
    """One click to the membrane traces of a neuron (the page switch follows on the next run: switch_page cannot
    run in a callback)."""
    controls.select_trace(layer, neuron)
    state.put(controls.PENDING_PAGE, controls.TRACES_PAGE)


# --- 1. where the SNN and the ANN part on this input --------------------------------------------------------
parting = inspector.first_parting(cur.net_key, cur.image_key, cur.entry, snn, cur.x, cur.result)
if parting is None:
    st.success("On this input the spiking network follows the ReLU network through every layer (no early spike, "
               "activations equal to rounding).", icon=":material/check_circle:")
else:
    st.error(f"**First layer where the SNN and the ANN part: {parting.layer}.** {parting.reason}.",
             icon=":material/call_split:")
    st.button(f"Show the traces of {parting.layer}'s neuron {parting.neuron}", key="inspector_parting",
              icon=":material/troubleshoot:", on_click=_trace, args=(parting.layer, parting.neuron),
              help="Opens Membrane traces on this neuron (flat index)")

# --- 2. the captured graph and the provenance of every spiking layer -----------------------------------------
st.subheader("Captured graph")
graph = inspector.current_graph(cur.net_key, cur.entry, snn, cur.x)
st.plotly_chart(inspector.graph_figure(graph), key="inspector_graph", config=_config("graph"))
st.caption("Every op the converter captured from the model, in graph order, coloured by the spiking layer that "
           "absorbed it (arcs: an edge that skips ops, as in a residual branch). A layer absorbs the ops between "
           "the spikes it reads and the ReLU that closes it.")
st.dataframe(_styled(graph.rows), hide_index=True, width="stretch", key="inspector_graph_table")

st.subheader("Spiking layers and what they absorbed")
st.dataframe(inspector.provenance_rows(snn), hide_index=True, width="stretch", key="inspector_layers")
st.caption("BatchNorm before a ReLU is folded into the layer's own weights; after a ReLU into the next layer's "
           "(with its border correction under zero padding). A max pooling routes spike times: the earliest spike, "
           "or the latest in channels where a negative BatchNorm scale flips it. Delays align the windows of the "
           "several layers a residual layer reads.")

# --- 3. rescaling, calibration activations, windows -------------------------------------------------------------
st.subheader("Rescaling, calibration activations and windows")
left, right = st.columns(2, gap="large")
with left:
    st.plotly_chart(inspector.scale_figure(snn), key="inspector_scales", config=_config("scales"))
    st.caption("Rescaling factor c per neuron (log axis): the converted activation is c × the original one.")
with right:
    names = [layer.name for layer in snn.layers]
    if st.session_state.get("inspector_hist_layer") not in names:
        st.session_state["inspector_hist_layer"] = names[0]
    labels = {layer.name: layer_label(layer) for layer in snn.layers}
    chosen = st.selectbox("Layer", names, format_func=labels.get, key="inspector_hist_layer")
    hists = inspector.calibration_histograms(cur.net_key, cur.entry, snn)
    n = names.index(chosen)
    st.plotly_chart(inspector.activation_figure(hists[n], snn.layers[n]), key="inspector_hist",
                    config=_config(f"activations-{snn.layers[n].name}"))
    calibration = cur.entry.calibration or f"the first {cache.CALIBRATION_IMAGES} training images of its dataset"
    st.caption(f"Activations of {labels[chosen]} on the calibration images: {controls.plain(calibration)} "
               f"(converted units; {100 * hists[n]['zero share']:.1f} % are 0 and not drawn). X_n = their largest, P_n "
               "the largest drive before the window opens, B_n the window.")

# --- 4. the early-spike certificate and the distance to an early spike --------------------------------------
st.subheader("Early-spike certificate and distance to an early spike")
peaks = inspector.pre_activation_peaks(cur.net_key, cur.image_key, snn, cur.x)
rows = inspector.window_rows(snn, cur.result, peaks)
st.dataframe(rows, hide_index=True, width="stretch", key="inspector_windows")
st.plotly_chart(inspector.certificate_figure(rows), key="inspector_certificate", config=_config("certificate"))
st.caption("**B_n − P_n (calibration)**: how far the largest drive before the window opens, P_n = max over neurons "
           "and calibration inputs of max_s f_i(s), stays below the window (negative: an early spike on the "
           "calibration data). **B_n − max z (this input)**: the window minus the largest pre-activation "
           "z_i = f_i(0⁺) on the input shown; f_i can rise above z_i before t_min, so this is an upper bound on the "
           "distance, and the certificate's counts say how it was settled exactly. The certificate counts are on the "
           "input shown: neurons each stage proved free of early spikes, and those searched exactly.")

# --- 5. a model that cannot be converted -----------------------------------------------------------------------
st.subheader("A model that cannot be converted")
uploads_failed = state.get(state.FAILED_MODELS)  # the main page's uploads that loaded but could not be used
choices = ["(none)", *inspector.DEMOS, *uploads_failed]
asked = st.session_state.pop(controls.INSPECT, None)  # the main page's "open it in the inspector"
if asked in uploads_failed:
    st.session_state["inspector_demo"] = asked
elif st.session_state.get("inspector_demo") not in choices:
    st.session_state["inspector_demo"] = next(iter(reversed(uploads_failed)), "(none)")
demo = st.selectbox("Show a model that cannot be converted", choices, key="inspector_demo",
                    format_func=lambda k: f"your upload: {uploads_failed[k].title}" if k in uploads_failed else k,
                    help="Small untrained models with an op the exact mapping does not support, and this session's "
                         "uploads that could not be used.")
st.caption("Your uploads come from the main page (**Upload a model file and its data**): they serve every page, this "
           "one included, and one that cannot be converted is listed here with the node where conversion stops "
           "(no need to upload it again).")
failed = inspector.failing_graph(demo, uploads_failed.get(demo))
for message in dict.fromkeys(state.get(state.FAILED_UPLOADS).values()):
    st.warning(f"An upload of this session failed: {controls.plain(message)}")
if failed is not None:
    title, bad = failed
    if bad.error is None:
        st.success(f"{title}: converts (no error).")
    else:
        row = bad.rows[bad.error_row] if bad.error_row is not None else None
        module = f" (module {row['name']})" if row is not None and row["name"] != row["node"] else ""
        where = f" at node **{bad.error_node}**{module}" if bad.error_node else ""
        st.error(f"{title}: cannot be converted ({bad.stage}){where}: {bad.error}", icon=":material/block:")
    if bad.rows:
        st.plotly_chart(inspector.graph_figure(bad), key="inspector_failed_graph", config=_config("failed-graph"))
        plumbing = sum(r["kind"] == inspector.SHAPE_PLUMBING for r in bad.rows)
        st.caption("The failing node's row comes first (its place in the graph is its **#**), then every node in "
                   "graph order."
                   + (f" {plumbing} node{'s' if plumbing > 1 else ''} in grey only read or check sizes "
                      "(torch.export's shape guards, e.g. `sym_size`, `_assert_scalar`): shape plumbing, which "
                      "needs no conversion." if plumbing else ""))
        st.dataframe(_styled(inspector.failing_first(bad.rows)), hide_index=True, width="stretch",
                     key="inspector_failed_table")
