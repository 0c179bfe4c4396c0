"""TTFS explorer, main page: choose a network, convert it, choose an input, compare predictions.

Run from the repository root:  streamlit run app.py
"""

import numpy as np
import streamlit as st

from ttfs_core import data, zoo
from ttfs_ui import cache, controls, draw, figures, state, tables

st.set_page_config(page_title="TTFS explorer", page_icon="⚡", layout="wide")
state.init()
controls.follow_pending_page()
controls.sidebar(pick_model=False)

st.title("⚡ Exact TTFS explorer")
st.markdown("Convert a trained ReLU network into a spiking network where every neuron fires once, "
            "then step through its spikes on the pages in the sidebar.")
controls.explain("overview")
controls.show_notice()

# --- 1. the network -----------------------------------------------------------------------------------------
st.header("1 · Network")
pick, upload = st.columns([3, 2], gap="large")
with pick:
    controls.model_select()
with upload:
    with st.expander("Upload a model file", expanded=False):
        st.caption("torch.export `.pt2`, TorchScript `.pt`, or a state dict (`.safetensors`, `.pt`, `.pth`) of a "
                   "zoo architecture. Files are loaded without running any code from them. The bundled data are "
                   "28×28 grayscale images (MNIST digits, Fashion-MNIST clothes), so the model must take 1×28×28 "
                   "inputs in [0, 1]; an uploaded model is calibrated on MNIST.")
        arch = st.selectbox("Architecture (state dicts only)", ["", *zoo.ARCHITECTURES],
                            format_func=lambda a: a or "— not a state dict —", key="upload_arch")
        file = st.file_uploader("Model file", key="upload_model")
        if file is not None:
            before = state.get(state.MODEL)
            error = controls.receive_model_upload(file.getvalue(), file.name, arch or None)
            if error:
                controls.show_error(error)
            elif state.get(state.MODEL) != before:
                st.rerun()  # a new model is selected: redraw everything above with it

cur = controls.current()
with pick:
    st.caption(cur.entry.description)
exact = controls.exactness_banner(cur)

# --- 2. the conversion --------------------------------------------------------------------------------------
st.header("2 · Conversion")
controls.explain("conversion")
st.markdown("**Presets** (each sets the conversion settings in the sidebar)")
controls.presets()
result = cur.result
m = st.columns(5)
m[0].metric("Decision time", f"{cur.snn.decision_time:.4g} τ_c",
            help="t_min of the readout = 1 + Σ B_n: when the output layer's potentials are read")
m[1].metric("Smallest window", f"{cur.snn.smallest_window:.3g} τ_c",
            help="The shortest hidden window B_n: the time resolution spikes need. The paper's rescaling (the "
                 "default) keeps windows of the order of the activations; the positive-part fast mode shrinks "
                 "them with depth.")
m[2].metric("Spiking layers", len(cur.snn.layers))
m[3].metric("Spiking neurons", f"{sum(la.neurons for la in cur.snn.layers):,}")
m[4].metric("Spikes for this input", f"{result.spikes:,}",
            help="Every hidden neuron fires once in the α-model; in B1, neurons with activation 0 stay silent.")
st.dataframe(tables.summary_rows(cur.snn, result), hide_index=True, width="stretch",
             column_config={"X_n": st.column_config.NumberColumn(format="%.6g"),
                            "B_n (τ_c)": st.column_config.NumberColumn(format="%.6g")})

# --- 3. the input -------------------------------------------------------------------------------------------
st.header("3 · Input image")
gallery, mine = st.columns([3, 2], gap="large")
with gallery:
    title = data.dataset(cur.dataset).title
    st.markdown(f"**Bundled {title} test images** (the first of each class)")
    imgs, labels = cache.bundled(cur.dataset, "test")
    firsts = [int(np.flatnonzero(labels == c)[0]) for c in range(10)]
    for row in (firsts[:5], firsts[5:]):
        for col, i in zip(st.columns(5), row):
            name = cur.class_name(labels[i])
            col.image(np.kron(imgs[i], np.ones((3, 3), dtype=np.uint8)), width="stretch")
            col.button(f"#{i} ({name})", key=f"gallery_{i}", on_click=controls.use_test_image, args=(i,),
                       width="stretch", type="primary" if cur.image_key == f"{cur.dataset}:{i}" else "secondary",
                       help=f"use {title} test image #{i}, class {name}")
    st.caption(f"Any of the {controls.TEST_IMAGES:,} {title} test images can be chosen by number in the sidebar, "
               "where the other bundled dataset can be chosen too.")
with mine:
    st.markdown("**Your own image**")
    image_file = st.file_uploader("PNG or JPEG image", type=["png", "jpg", "jpeg"], key="upload_image",
                                  help=f"Resized to the model's input size and converted to grayscale; "
                                       f"preprocessing: {cur.entry.preprocess.input_range}.")
    if image_file is not None:
        before = state.get(state.IMAGE)
        error, notes = controls.receive_image_upload(image_file.getvalue(), image_file.name, cur.entry.preprocess)
        if error:
            controls.show_error(error)
        elif state.get(state.IMAGE) != before:
            st.rerun()  # a new image is selected: redraw the sidebar and gallery with it
        for note in notes:
            st.info(note)
    controls.invert_checkbox()
    with st.expander("Draw a digit", expanded=True):
        drawn = draw.pad(key="draw_pad")
        if isinstance(drawn, dict) and drawn.get("seq") != st.session_state.get("_seen_drawing"):
            st.session_state["_seen_drawing"] = drawn.get("seq")
            try:
                error, _ = controls.receive_image_upload(draw.drawn_png(drawn), "your drawing", cur.entry.preprocess)
            except ValueError as e:
                error = f"Cannot use the drawing: {e}"
            if error:
                controls.show_error(error)
            else:
                st.rerun()  # the drawing is the input now: redraw the page with it

# --- 4. predictions -----------------------------------------------------------------------------------------
st.header("4 · Predictions")
result = cur.result
ann = cache.ann_logits(cur.entry.key, cur.image_key, cur.entry.model, cur.x)[0]
snn = result.logits[0].double().numpy()
left, right = st.columns([1, 4], gap="large")
with left:
    st.plotly_chart(figures.image(cur.x[0].numpy()), width="content", key="input_image")
    st.caption(cur.image_title)
with right:
    a, s, d, t = st.columns(4)
    a.metric("ANN predicts", cur.class_name(ann.argmax()))
    s.metric("SNN predicts", cur.class_name(snn.argmax()),
             delta=("agrees" if exact["exact"] else "same class, NOT exact") if ann.argmax() == snn.argmax()
             else "DIFFERS", delta_color="normal" if exact["exact"] else "inverse")
    d.metric("max |logit difference|", f"{np.abs(ann - snn).max():.2e}")
    t.metric("True label", "—" if cur.label is None else cur.class_name(cur.label))
    st.plotly_chart(figures.logits([cur.class_name(c) for c in range(ann.size)], ann, snn), key="logits")
with st.expander("Logits as a table"):
    st.dataframe(tables.logit_rows(ann, snn), hide_index=True, width="stretch")
st.info("Next: open **Spike raster** in the sidebar to watch these spikes happen in time.",
        icon=":material/arrow_forward:")
controls.page_end()
