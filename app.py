"""TTFS explorer, main page: choose a network, convert it, choose an input, compare predictions.

Run from the repository root:  streamlit run app.py
"""

import functools

import numpy as np
import streamlit as st

from ttfs_core import data, zoo
from ttfs_ui import cache, controls, draw, figures, state, tables, tour, uploads

FORM = "_upload_form_basis"  # what the preprocessing form's widgets were last set from
CUSTOM = "custom (mean and std below)"


def _preprocessing_defaults(model_key: str, name: str, data_: bytes, arch: str | None,
                            dataset: uploads.UploadedData | None) -> tuple[data.Preprocess, str]:
    """The preprocessing in use for the uploaded model file: the form's or the card's if one was applied, else what
    the model and data say (its input shape, pixels / 255)."""
    chosen = state.get(state.UPLOAD_SETTINGS).get(model_key, {})
    upload = uploads.UploadedModel(model_key, name, data_, arch, dataset, chosen.get("preprocess"), None, False,
                                   chosen.get("card"))
    try:
        return cache.upload_preprocess(upload, cache.model_file(model_key, upload))
    except (ValueError, RuntimeError) as e:  # no common shape runs: the form starts at MNIST's, the message says why
        return data.MNIST_PREPROCESS, f"not found: {e}"


def _apply_form(model_key: str) -> None:
    w = st.session_state
    chosen = state.get(state.UPLOAD_SETTINGS).setdefault(model_key, {})
    norm = w["_w_up_norm"]
    mean, std = (w["_w_up_mean"], w["_w_up_std"]) if norm == CUSTOM else \
        (",".join(map(str, v)) for v in uploads.NORMALISATIONS[norm])
    try:
        chosen["preprocess"] = uploads.preprocess_from(w["_w_up_h"], w["_w_up_w"], w["_w_up_c"], mean, std)
        chosen.pop("form_error", None)
        chosen.pop("card", None)  # the form's now (a card's class names stay)
    except ValueError as e:
        chosen["form_error"] = str(e)


def preprocessing_form(model_key: str, pre: data.Preprocess, how: str) -> None:
    """Size, channels, mean and std of the uploaded model's inputs: shown as in use, applied on submit."""
    chosen = state.get(state.UPLOAD_SETTINGS).get(model_key, {})
    basis = (model_key, pre)
    if st.session_state.get(FORM) != basis:
        named = next((k for k, (m, s) in uploads.NORMALISATIONS.items()
                      if pre.mean in (m, m * pre.channels) and pre.std in (s, s * pre.channels)), CUSTOM)
        st.session_state.update({"_w_up_h": pre.height, "_w_up_w": pre.width, "_w_up_c": pre.channels,
                                 "_w_up_norm": named, "_w_up_mean": ", ".join(f"{v:g}" for v in pre.mean),
                                 "_w_up_std": ", ".join(f"{v:g}" for v in pre.std)})
        st.session_state[FORM] = basis
    with st.form("upload_preprocess", border=True):
        st.markdown(f"**Preprocessing** (in use: {uploads.describe_preprocess(pre)}; input shape {how})")
        c = st.columns([1, 1, 1, 3])
        c[0].number_input("Height", 1, 4096, step=1, key="_w_up_h")
        c[1].number_input("Width", 1, 4096, step=1, key="_w_up_w")
        c[2].selectbox("Channels", [1, 3], key="_w_up_c", format_func=lambda k: {1: "1 (grey)", 3: "3 (RGB)"}[k])
        c[3].selectbox("Normalisation (per channel, of pixels / 255)", [*uploads.NORMALISATIONS, CUSTOM],
                       key="_w_up_norm")
        m, s = st.columns(2)
        m.text_input("Mean (custom)", key="_w_up_mean", help="1 or 3 numbers, e.g. 0.485, 0.456, 0.406")
        s.text_input("Std (custom)", key="_w_up_std", help="1 or 3 positive numbers, e.g. 0.229, 0.224, 0.225")
        st.form_submit_button("Apply preprocessing", on_click=_apply_form, args=(model_key,))
    if chosen.get("form_error"):
        controls.show_error(chosen["form_error"])


def _use_mnist(model_key: str) -> None:
    state.get(state.UPLOAD_SETTINGS).setdefault(model_key, {})["mnist"] = True


def own_upload(file, arch: str | None) -> None:
    """The uploaded model file and what it runs on: its data set, a saved network's card, the preprocessing form.
    Steps after the first appear once the file loads (a file that does not load says why, and nothing else)."""
    data_, name = file.getvalue(), file.name
    model_key = uploads.upload_key(data_, arch)
    error = controls.receive_model_file(data_, name, arch)
    if error:
        controls.show_error(error)
        return
    data_file = st.file_uploader(f"Its data set: {uploads.DATA_KINDS}", type=["npz", "zip"], key="upload_data",
                                 help="The images the model is calibrated on and shown with, read with the limits "
                                      "and checks of `ttfs verify --data` (never unpickled, never extracted). "
                                      "Optional for a model that takes MNIST's 1×28×28.")
    dataset = None
    if data_file is not None:
        raw = data_file.getvalue()
        dataset = uploads.UploadedData(uploads.upload_key(raw), data_file.name, raw)
    card_file = st.file_uploader("Preprocessing and class names from a saved network (optional)",
                                 type=["safetensors"], key="upload_card",
                                 help="A network saved with its card (`ttfs convert`, or this page's save button).")
    if card_file is not None:
        level, message = controls.receive_card_upload(card_file.getvalue(), card_file.name, model_key)
        getattr(st, level)(controls.plain(message))
    pre, how = _preprocessing_defaults(model_key, name, data_, arch, dataset)
    preprocessing_form(model_key, pre, how)
    chosen = state.get(state.UPLOAD_SETTINGS).get(model_key, {})
    before = state.get(state.MODEL)
    error = controls.receive_model_upload(data_, name, arch, dataset=dataset, preprocess=chosen.get("preprocess"),
                                          classes=chosen.get("classes"), mnist=bool(chosen.get("mnist")),
                                          card=chosen.get("card"))
    if error:
        controls.show_error(error)
        failed = controls.failed_upload_key(data_, arch, dataset=dataset, preprocess=chosen.get("preprocess"),
                                            classes=chosen.get("classes"), mnist=bool(chosen.get("mnist")))
        if failed is not None:  # it loaded but cannot be converted: the inspector shows the node where it stops
            st.button("Show where it fails in the conversion inspector", key="upload_inspect", type="primary",
                      icon=":material/account_tree:", on_click=controls.open_in_inspector, args=(failed,),
                      help="Opens the inspector on this upload (the file is not asked for again): its graph, with "
                           "the node where conversion stops first.")
        if dataset is None and uploads.NEEDS_DATA in error:
            st.button(f"Try it on MNIST resized to {pre.width}×{pre.height}"
                      + (", replicated to 3 channels" if pre.channels == 3 else "") + " (not its own data)",
                      key="upload_use_mnist", on_click=_use_mnist, args=(model_key,), icon=":material/science:")
    elif state.get(state.MODEL) != before:
        st.rerun()  # a new model is selected: redraw everything above with it


st.set_page_config(page_title="TTFS explorer", page_icon="⚡", layout="wide")
state.init()
controls.follow_pending_page()
controls.sidebar(pick_model=False)

st.title("⚡ Exact TTFS explorer")
st.markdown("Convert a trained ReLU network into a spiking network where every neuron fires once, "
            "then step through its spikes on the pages in the sidebar.")
if tour.current() is None:
    tour.start_button()
controls.show_notice()
controls.explain("overview")

# --- 1. the network -----------------------------------------------------------------------------------------
st.header("1 · Network")
pick, upload = st.columns([3, 2], gap="large")
with pick:
    controls.model_select()
with upload:
    with st.expander("Upload a model file and its data", expanded=state.get(state.MODEL).startswith("upload:")):
        st.caption("1 · the model: torch.export `.pt2`, TorchScript `.pt`, or a state dict (`.safetensors`, `.pt`, "
                   "`.pth`) of a zoo architecture, any C×H×W input (a `.pt2` records its shape). 2 · once it loads: "
                   "its data set (`.npz` or a `.zip` of class folders), which it is calibrated on and shown with "
                   "(a model that takes MNIST's 1×28×28 may go without), and its preprocessing (or a saved "
                   "network's card). Files are read without running any code from them.")
        arch = st.selectbox("Architecture (state dicts only)", ["", *zoo.ARCHITECTURES],
                            format_func=lambda a: a or "— not a state dict —", key="upload_arch")
        file = st.file_uploader("Model file", key="upload_model")
        if file is not None:
            own_upload(file, arch or None)

cur = controls.current()
with pick:
    st.caption(controls.plain(cur.entry.description))
    if cur.entry.adapted:
        st.warning(f"Calibrated and tested on {cur.entry.adapted}: upload its own data set to see it on its images.",
                   icon=":material/science:")
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
calibration = cur.entry.calibration or (f"the first {cache.CALIBRATION_IMAGES} of the 4,000 "
                                        f"{data.dataset(cur.entry.dataset).title} training images")
note, save = st.columns([4, 1], vertical_alignment="center")
note.caption(f"Calibrated on {controls.plain(calibration)} (X_n is the largest activation there).")
stem = cur.entry.key.removeprefix("zoo:") if cur.entry.card else cur.entry.title.split(" (")[0].split(" + ")[0]
save.download_button("Save this network", functools.partial(cache.network_file, cur.entry, cur.snn),
                     file_name=f"{stem.rsplit('.', 1)[0] or 'network'}.snn.safetensors", icon=":material/download:",
                     mime="application/octet-stream", on_click="ignore",
                     help="The converted network (`ttfs_core.load` reads it) with its card: preprocessing, class "
                          "names and calibration data, which this page's upload reads back.")

# --- 3. the input -------------------------------------------------------------------------------------------
st.header("3 · Input image")
gallery, mine = st.columns([3, 2], gap="large")
with gallery:
    title = data.dataset(cur.dataset).title
    count = cache.size(cur.entry, cur.dataset)
    own = not isinstance(cur.dataset, str)
    labels = cache.labels(cur.entry, cur.dataset, 0, count)
    if labels is not None:
        classes = np.unique(labels)[:10]
        firsts = [int(np.flatnonzero(labels == c)[0]) for c in classes]
    else:
        firsts = list(range(min(10, count)))
    which = "the first of each class" if labels is not None else "the first ten"
    if own:
        st.markdown(f"**Images of {controls.plain(title)}** ({which}; as the model "
                    f"sees them, {cur.entry.preprocess.width}×{cur.entry.preprocess.height})")
    else:
        pre = cur.entry.preprocess
        resized = "" if pre.shape == uploads.BUNDLED_SHAPE else (
            f" — the model sees them resized to {pre.width}×{pre.height}"
            + (" and replicated to 3 channels" if pre.channels == 3 else "") + ", not as its own data")
        st.markdown(f"**Bundled {title} test images** ({which}){resized}")
    for row in (firsts[:5], firsts[5:]):
        if not row:
            continue
        for col, i in zip(st.columns(5), row):
            name = "—" if labels is None else cur.class_name(labels[i])
            picture = cache.picture(cur.entry, cur.dataset, i)
            scale = max(1, 84 // max(picture.shape[:2]))
            zoom = np.ones((scale, scale) if picture.ndim == 2 else (scale, scale, 1), dtype=np.uint8)
            col.image(np.kron(picture, zoom), width="stretch")
            col.button(f"#{i} ({name})" if labels is not None else f"#{i}", key=f"gallery_{i}",
                       on_click=controls.use_test_image, args=(i,), width="stretch",
                       type="primary" if cur.image_key == f"{cache.dataset_key(cur.dataset)}:{i}" else "secondary",
                       help=f"use {title} image #{i}" + ("" if labels is None else f", class {name}"))
    if own:
        st.caption(f"Any of its {count:,} images can be chosen by number in the sidebar, where the bundled datasets "
                   "can be chosen too.")
    else:
        st.caption(f"Any of the {controls.TEST_IMAGES:,} {title} test images can be chosen by number in the "
                   "sidebar, where the other bundled dataset can be chosen too.")
with mine:
    st.markdown("**Your own image**")
    pre = cur.entry.preprocess
    image_file = st.file_uploader("PNG or JPEG image", type=["png", "jpg", "jpeg"], key="upload_image",
                                  help=f"Resized to the model's input size ({pre.width}×{pre.height}) and converted "
                                       f"to {'grayscale' if pre.channels == 1 else 'RGB'}; preprocessing: "
                                       f"{uploads.describe_preprocess(pre)}.")
    if image_file is not None:
        before = state.get(state.IMAGE)
        mnist_like = cur.entry.user_data is None and pre.channels == 1
        error, notes = controls.receive_image_upload(image_file.getvalue(), image_file.name, pre,
                                                     auto_invert=mnist_like)
        if error:
            controls.show_error(error)
        elif state.get(state.IMAGE) != before:
            st.rerun()  # a new image is selected: redraw the sidebar and gallery with it
        for note in notes:
            st.info(note)
    controls.invert_checkbox()
    with st.expander("Draw a digit", expanded=cur.entry.user_data is None):
        drawn = draw.pad(key="draw_pad")
        if isinstance(drawn, dict) and drawn.get("seq") != st.session_state.get("_seen_drawing"):
            st.session_state["_seen_drawing"] = drawn.get("seq")
            try:
                error, _ = controls.receive_drawing(draw.drawn_png(drawn), cur.entry.preprocess)
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
    fmt = figures.export_format(st)
    st.plotly_chart(controls.input_figure(cur.x, cur.entry.preprocess), width="content", key="input_image",
                    config=figures.export_config(figures.slide_stem(cur, "input"), fmt))
    st.caption(cur.image_title)
with right:
    a, s, d, t = st.columns(4)
    a.metric("ANN predicts", cur.class_name(ann.argmax()))
    s.metric("SNN predicts", cur.class_name(snn.argmax()),
             delta=("agrees" if exact["exact"] else "same class, NOT exact") if ann.argmax() == snn.argmax()
             else "DIFFERS", delta_color="normal" if exact["exact"] else "inverse")
    d.metric("max |logit difference|", f"{np.abs(ann - snn).max():.2e}")
    t.metric("True label", "—" if cur.label is None else cur.class_name(cur.label))
    logits = figures.slide_title(figures.logits([cur.class_name(c) for c in range(ann.size)], ann, snn),
                                 "Logits: ANN and SNN", f"{cur.entry.title} · {cur.image_title}")
    st.plotly_chart(logits, key="logits", config=figures.export_config(figures.slide_stem(cur, "logits"), fmt))
with st.expander("Logits as a table"):
    st.dataframe(tables.logit_rows(ann, snn), hide_index=True, width="stretch")
st.info("Next: open **Spike raster** in the sidebar to watch these spikes happen in time.",
        icon=":material/arrow_forward:")
controls.page_end()
