"""Widgets shared by every page, and the resolution of the session's choices into cached core objects.

`current()` never raises for bad state: an upload that disappeared, a model that no longer converts or an image
that no longer decodes makes the app fall back to the default model / first test image, with a message.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import streamlit as st
import torch
from streamlit.errors import StreamlitPageNotFoundError
from torch import Tensor

import ttfs_core
from ttfs_core import data, verify, zoo
from ttfs_core.mapping import DEFAULT_MARGIN
from ttfs_core.neurons import ALPHA, B1, NEURON_MODELS, RESCALES, SUM, NeuronModel, neuron_model, rescale_rule
from ttfs_core.untrusted import ModelLoadError

from . import cache, messages, state, tables, text, tour
from .timeline import Timeline, most_active, timeline_of
from .uploads import (
    UploadedData,
    UploadedImage,
    UploadedModel,
    blank_colour,
    combined_key,
    decode_image,
    light_background,
    read_card,
    read_image,
    upload_key,
)

TEST_IMAGES = state.TEST_IMAGES
EVAL_OPTIONS = (1000, 10_000)  # test images the ANN-vs-SNN page can evaluate
MAX_SESSION_MODELS = 3  # uploaded model files a session keeps (each up to server.maxUploadSize)
MAX_SESSION_IMAGES = 10  # uploaded images a session keeps
MAX_FAILED_MODELS = 2  # uploads that failed kept for the conversion inspector (it shows where they fail)


@dataclass(frozen=True)
class Current:
    """What every page works on: the model, its converted network, and one input."""

    entry: cache.ModelEntry
    snn: ttfs_core.SpikingNetwork
    net_key: cache.Settings  # the model and the conversion settings: the key of every cached result
    dataset: str  # the bundled dataset test images come from (``ttfs_core.data.DATASETS``)
    image_key: str
    x: Tensor  # (1, C, H, W), preprocessed for the model
    label: int | None
    image_title: str

    @property
    def result(self) -> ttfs_core.SimResult:
        return cache.simulate(self.net_key, self.image_key, self.snn, self.x)

    @property
    def timeline(self) -> Timeline:
        return timeline_of(self.snn)

    def class_name(self, label: int) -> str:
        """How class ``label`` is shown: the digit for MNIST, "9 · Ankle boot" for Fashion-MNIST."""
        return class_label(self.dataset, label)


def class_label(dataset: str | data.Dataset, label: int) -> str:
    """Class ``label`` as shown: the digit for MNIST, "9 · Ankle boot" for Fashion-MNIST, "3 · cat" for an uploaded
    data set that names its classes, its number where none is named."""
    name = data.dataset(dataset).class_name(label)
    return name if name == str(int(label)) else f"{int(label)} · {name}"


def dataset_of(entry: cache.ModelEntry) -> str:
    """The bundled dataset whose test images are shown: the session's choice, else the model's own."""
    choice = state.get(state.DATASET)
    return choice if choice in data.DATASETS else entry.dataset


# --- choices ------------------------------------------------------------------------------------------------
def model_options() -> dict[str, str]:
    """Model key -> title: the bundled zoo, then this session's uploads."""
    opts = {f"zoo:{c.name}": f"{c.title} (bundled)" for c in cache.zoo_cards()}
    for key, up in state.get(state.UPLOADED_MODELS).items():
        opts[key] = up.title
    return opts


def model_select(where=st) -> None:
    opts = model_options()
    if state.get(state.MODEL) not in opts:
        state.put(state.MODEL, state.DEFAULT_MODEL)
    where.selectbox("Model", list(opts), format_func=opts.get, **state.bind(state.MODEL),
                    help="A bundled (zoo) model, or one you uploaded on the main page.")


def image_options() -> dict[str, str]:
    opts = {"test": "a bundled test image"}
    for key, up in state.get(state.UPLOADED_IMAGES).items():
        opts[key] = f"uploaded: {up.filename}"
    return opts


def image_select(where=st) -> None:
    opts = image_options()
    if state.get(state.IMAGE) not in opts:
        state.put(state.IMAGE, "test")
    if len(opts) > 1:
        where.radio("Input image", list(opts), format_func=opts.get, **state.bind(state.IMAGE))
    if state.get(state.IMAGE) == "test":
        if state.get(state.DATASET) not in ("", *data.DATASETS):
            state.put(state.DATASET, "")
        # the model is resolved after the sidebar is drawn: a bundled one's dataset is known by name, an upload's
        # data from its cached entry
        own, count = own_data(str(state.get(state.MODEL)))
        names = {"": f"the model's own ({own})", **{k: d.title for k, d in data.DATASETS.items()}}
        where.selectbox("Test images", list(names), format_func=names.get, **state.bind(state.DATASET),
                        help="Where the images come from: by default the model's own data (its bundled test set, or "
                             "the data set uploaded with it; MNIST for an upload without one). Conversion always "
                             "calibrates on the model's own.")
        count = count if state.get(state.DATASET) == "" else TEST_IMAGES
        state.put(state.TEST_INDEX, int(np.clip(state.get(state.TEST_INDEX), 0, count - 1)))
        where.number_input("Test image #", min_value=0, max_value=count - 1, step=1,
                           **state.bind(state.TEST_INDEX),
                           help=f"Index into the whole {count:,}-image set, in its original order.")


def own_data(model_key: str) -> tuple[str, int]:
    """The title and size of a model's own test images: a bundled model's test set, an upload's data set (MNIST
    for an upload without one, said so when it was adapted to the model's shape)."""
    if model_key.startswith("zoo:"):
        return data.dataset(zoo.DATASET.get(model_key.removeprefix("zoo:"), data.DEFAULT_DATASET)).title, TEST_IMAGES
    upload = state.get(state.UPLOADED_MODELS).get(model_key)
    mnist = data.dataset(data.DEFAULT_DATASET).title
    try:
        entry = cache.uploaded_entry(upload) if upload is not None else None
    except Exception:  # noqa: BLE001 - a broken upload: `current` falls back and says why
        entry = None
    if entry is None:
        return mnist, TEST_IMAGES
    if entry.user_data is not None:
        return entry.user_data.dataset.title, len(entry.user_data)
    return (f"{mnist}, {entry.adapted.removeprefix('MNIST digits ')}" if entry.adapted else mnist), TEST_IMAGES


SETTINGS = (state.MARGIN, state.NEURON, state.RESCALE)
SYNCED = "_ttfs_settings_shown"  # the settings the form's widgets were last set to


def _apply_settings() -> None:
    for key in SETTINGS:
        state.put(key, st.session_state[state.widget_key(key)])


def conversion_settings(where=st) -> None:
    """ζ, the neuron model and the rescaling, in a form: a change converts the network once, on Apply (key
    presses on the ζ slider are not each a conversion, and none is lost while the page reruns)."""
    with where.expander("Conversion settings", expanded=False):
        with st.form("conversion_settings", border=False):
            # the form shows the settings in use whenever they changed by another way (a preset, a fallback),
            # and otherwise keeps the edits not applied yet
            in_use = tuple(state.get(key) for key in SETTINGS)
            if st.session_state.get(SYNCED) != in_use or any(state.widget_key(k) not in st.session_state
                                                             for k in SETTINGS):
                for key, value in zip(SETTINGS, in_use):
                    st.session_state[state.widget_key(key)] = value
                st.session_state[SYNCED] = in_use
            st.slider("Safety margin ζ (windows B_n = (1 + ζ)·X_n)", -0.9, 2.0, step=0.05,
                      key=state.widget_key(state.MARGIN),
                      help="Smaller windows mean lower latency and less margin: below 0, some inputs fire early.")
            st.radio("Neuron model", list(NEURON_MODELS),
                     format_func=lambda name: f"{NEURON_MODELS[name].label} ({NEURON_MODELS[name].summary})",
                     key=state.widget_key(state.NEURON))
            neuron = session_neuron()
            st.radio("Rescaling (α-model only)", list(RESCALES), format_func=lambda name: RESCALES[name].label,
                     key=state.widget_key(state.RESCALE), disabled=not neuron.rescaled,
                     help=None if neuron.rescaled else f"{neuron.label} has no rescaling: its weights are the ReLU "
                                                       "network's own.")
            st.form_submit_button("Apply", type="primary", on_click=_apply_settings)


PRESETS = {
    "exact": ({state.MARGIN: DEFAULT_MARGIN, state.NEURON: ALPHA.name, state.RESCALE: SUM.name},
              "The default: windows 1.5× the calibration maximum, so every neuron fires once, after all its "
              "inputs, and the SNN's logits are the ANN's to float precision."),
    "early spikes at ζ = −0.7": ({state.MARGIN: -0.7, state.NEURON: ALPHA.name, state.RESCALE: SUM.name},
                                 "Windows at 30 % of what the activations need: watch neurons fire before their "
                                 "inputs have all arrived (red rings on the raster) and the logits drift."),
    "B1 saves spikes": ({state.MARGIN: DEFAULT_MARGIN, state.NEURON: B1.name, state.RESCALE: SUM.name},
                        "Neurons whose ReLU is 0 stay silent instead of firing at t_max: compare 'Spikes for this "
                        "input' with the α-model's, for the same logits."),
}


def use_preset(name: str) -> None:
    for key, value in PRESETS[name][0].items():
        state.put(key, value)


def presets() -> None:
    """One button per preset, each with the sentence on what to look for."""
    cols = st.columns(len(PRESETS))
    for col, (name, (values, what)) in zip(cols, PRESETS.items()):
        active = all(state.get(k) == v for k, v in values.items())
        col.button(name, key=f"preset_{name}", on_click=use_preset, args=(name,), width="stretch",
                   type="primary" if active else "secondary")
        col.caption(what)


PAGES = (  # the sidebar's navigation (Streamlit's own would list the main page as "app", after its file)
    ("app.py", "Overview", ":material/home:"),
    ("pages/1_Spike_raster.py", "Spike raster", ":material/scatter_plot:"),
    ("pages/2_Membrane_traces.py", "Membrane traces", ":material/show_chart:"),
    ("pages/3_ANN_vs_SNN.py", "ANN vs SNN", ":material/compare_arrows:"),
    ("pages/4_Robustness.py", "Robustness", ":material/blur_on:"),
    ("pages/5_Neuron_playground.py", "Neuron playground", ":material/tune:"),
    ("pages/6_Conversion_inspector.py", "Conversion inspector", ":material/account_tree:"),
    ("pages/7_vs_rate_coding.py", "vs rate coding", ":material/leaderboard:"),
)


def navigation() -> None:
    """Links to every page, in the sidebar (`.streamlit/config.toml` hides Streamlit's own list)."""
    with st.sidebar:
        for path, label, icon in PAGES:
            try:
                st.page_link(path, label=label, icon=icon)
            except StreamlitPageNotFoundError:  # a page run as the entry point (tests) knows no other page
                return


def sidebar(pick_model: bool = True) -> None:
    """The session's choices, on every page: model, input image, conversion settings."""
    navigation()
    with st.sidebar:
        st.markdown("### Network and input")
        if pick_model:
            model_select()
        image_select()
        conversion_settings()


def show_notice() -> None:
    """What the page says first: the guided tour's banner while the session is on the tour (`tour.banner`), then
    a message kept from the last run (a fallback, a link's bad parameters)."""
    tour.follow()
    tour.banner()
    notice = state.pop_notice()
    if notice:
        level, message = notice
        getattr(st, level)(message)


# --- resolution ---------------------------------------------------------------------------------------------
def _entry(key: str) -> cache.ModelEntry:
    if key.startswith("zoo:"):
        return cache.zoo_model(key.removeprefix("zoo:"))
    upload = state.get(state.UPLOADED_MODELS).get(key)
    if upload is None:
        raise ModelLoadError("the uploaded model is no longer in this session; upload it again")
    return cache.titled(cache.uploaded_model(key, upload), upload)


def session_neuron() -> NeuronModel:
    """The session's neuron model (the state, widgets and links keep its name)."""
    return neuron_model(state.get(state.NEURON))


def settings(model_key: str) -> cache.Settings:
    """The session's conversion settings for a model, parsed from the state."""
    return cache.Settings(model_key, float(state.get(state.MARGIN)), session_neuron(),
                          rescale_rule(state.get(state.RESCALE)))


_MARKDOWN = re.compile(r"([\\`*_{}\[\]<>()#+\-.!|~$])")


def plain(text: str) -> str:
    """``text`` with Markdown's special characters escaped: messages about uploaded files quote node and
    operator names (``_reshape_alias``) that Streamlit would otherwise set in italics or as LaTeX."""
    return _MARKDOWN.sub(r"\\\1", text)


def show_error(message: str) -> None:
    """A message about something the user gave us (a file, a drawing), shown as written."""
    st.error(plain(message))


def _fall_back(message: str) -> None:
    show_error(message)
    state.put(state.MODEL, state.DEFAULT_MODEL)
    state.put(state.MARGIN, state.DEFAULTS[state.MARGIN])


def current() -> Current:
    """The session's model, converted network and input, falling back to the defaults on any failure."""
    key = state.get(state.MODEL)
    try:
        entry = _entry(key)
        snn = cache.network(settings(key), entry)
    except (ModelLoadError, ttfs_core.ConversionError, ValueError) as e:
        what = "convert" if isinstance(e, ttfs_core.ConversionError) else "load"
        if key == state.DEFAULT_MODEL and state.get(state.MARGIN) == state.DEFAULTS[state.MARGIN]:
            raise  # the bundled default must always work: a real bug
        _fall_back(f"Could not {what} the model ({key}): {e} — showing the default model instead.")
        key = state.DEFAULT_MODEL
        entry = _entry(key)
        snn = cache.network(settings(key), entry)
    dataset = dataset_of(entry)
    x, label, image_key, title = _image(entry, dataset)
    return Current(entry, snn, settings(key), dataset, image_key, x, label, title)


def _image(entry: cache.ModelEntry, dataset: str) -> tuple[Tensor, int | None, str, str]:
    choice = state.get(state.IMAGE)
    uploads = state.get(state.UPLOADED_IMAGES)
    if choice != "test":
        up = uploads.get(choice)
        try:
            if up is None:
                raise ValueError("the uploaded image is no longer in this session")
            x, _ = read_image(up.data, entry.preprocess, invert=up.invert)
            return x, None, f"{up.key}:{int(up.invert)}", f"uploaded {up.filename}"
        except ValueError as e:
            show_error(f"Cannot use the uploaded image: {e} — showing a test image instead.")
            state.put(state.IMAGE, "test")
    i = int(np.clip(state.get(state.TEST_INDEX), 0, cache.size(entry, dataset) - 1))
    x = cache.images(entry, dataset, "test", i, i + 1)
    y = cache.labels(entry, dataset, i, i + 1)
    label = None if y is None else int(y[0])
    title = f"{data.dataset(dataset).title} {'test image' if isinstance(dataset, str) else 'image'} #{i}"
    return (x, label, f"{cache.dataset_key(dataset)}:{i}",
            title if label is None else f"{title} (label {class_label(dataset, label)})")


def caption(cur: Current) -> None:
    """One line saying what the page shows."""
    st.caption(f"**Model:** {cur.entry.title} · **input:** {cur.image_title} · ζ = {cur.net_key.margin:g}, "
               f"neuron = {cur.net_key.neuron.name}, rescaling = {cur.net_key.rescale.name} · decision at "
               f"{cur.snn.decision_time:.4g} τ_c, smallest window {cur.snn.smallest_window:.3g} τ_c")


def explain(topic: str, expanded: bool = False) -> None:
    """A collapsible explanation for newcomers (text in `ttfs_ui.text`)."""
    title, body = text.EXPLANATIONS[topic]
    with st.expander(title, expanded=expanded):
        st.markdown(body)


def page_start(title: str, topic: str) -> Current:
    """The opening every explorer page shares: page settings, state, sidebar, title, notice, what is shown and
    the collapsed explanation. Returns the current network, input and simulation."""
    st.set_page_config(page_title=f"{title} · TTFS explorer", page_icon="⚡", layout="wide")
    state.init()
    follow_pending_page()
    sidebar()
    st.title(title)
    show_notice()
    cur = current()
    caption(cur)
    exactness_banner(cur)
    explain(topic)
    return cur


def page_end() -> None:
    """The closing every page shares: the view's state goes into the URL, so the address is a link to it."""
    state.write_url()


def exactness(cur: Current) -> dict:
    """Whether the spiking network reproduces the ANN on the input shown: the core's verdict on its verification
    report (`ttfs_core.verify.verdict`), early spikes per layer, the largest logit difference, and the worst neuron
    (the earliest early spike, in the first layer that has any)."""
    report = cache.check(cur.net_key, cur.image_key, cur.entry, cur.snn, cur.x)
    verdict = verify.verdict(report)
    worst = None
    if verdict.early:
        lr = next(lr for lr in cur.result.layers if lr.early_spikes)
        off = lr.offsets[0].flatten()
        worst = (lr.name, int(off.argmin()))
    return {"exact": verdict.exact, "early": list(verdict.early), "logit_difference": report.readout.error.value,
            "worst": worst, "same_class": report.agree == report.images, "verdict": verdict}


def evaluate_test_set(cur: Current, n: int) -> tuple[verify.Report, list[dict]]:
    """The verification report of the first n test images, merged from cached chunks (`verify.Report.merge`), and
    their early spikes (`cache.evaluate_chunk`), with a progress bar, the time left and the results so far
    (`partial_text`) while the chunks are simulated (an uploaded model's, or settings nothing was shipped for)."""
    progress = st.progress(0.0, text="Simulating the test set…")
    so_far = st.empty()
    report, early = verify.Report.empty(cur.snn), []
    began, computed = time.perf_counter(), 0  # images simulated in this run (not shipped or cached): the pace
    for start in range(0, n, cache.EVAL_CHUNK):
        stop = min(start + cache.EVAL_CHUNK, n)
        t = time.perf_counter()
        chunk, rows = cache.evaluate_chunk(cur.net_key, cur.dataset, start, stop, cur.entry, cur.snn)
        if time.perf_counter() - t > 0.05:  # a chunk that was computed, not read
            computed += stop - start
        report, early = report.merge(chunk), early + rows
        progress.progress(stop / n, text=progress_text(stop, n, computed, time.perf_counter() - began))
        if computed and stop < n:
            so_far.caption(partial_text(report))
    progress.empty()
    so_far.empty()
    return report, early


def partial_text(report: verify.Report) -> str:
    """The results over the test images simulated so far, shown while the rest are: "So far, on the first 300
    images: ANN 98.3 %, SNN 98.3 %, agreement 100.0 %, no early spike"."""
    s = tables.evaluation_summary(report)
    early = f"{s['early spikes']:,} early spike" + ("s" if s["early spikes"] != 1 else "") if s["early spikes"] else \
        "no early spike"
    accuracy = (f"ANN {100 * s['ANN accuracy']:.1f} %, SNN {100 * s['SNN accuracy']:.1f} %, "
                if report.labelled else "")
    return (f"So far, on the first {s['images']:,} images: {accuracy}agreement {100 * s['agreement']:.1f} %, "
            f"{early}")


def progress_text(done: int, total: int, computed: int, elapsed: float, lead: str = "Simulated") -> str:
    """"Simulated 300 of 1,000 test images, about 40 s left" (`lead` says what was done to them): the time left at
    the pace of the images computed so far in this run (none computed yet, or all done: no estimate)."""
    text = f"{lead} {done:,} of {total:,} test images"
    if computed and done < total:
        left = elapsed / computed * (total - done)
        text += f", about {left:.0f} s left" if left < 90 else f", about {left / 60:.0f} min left"
    return text


def exactness_banner(cur: Current) -> dict:
    """An unmistakable warning, on every page, whenever the SNN does not reproduce the ANN on this input, with a
    button to the worst neuron's membrane trace. Returns `exactness(cur)`."""
    ex = exactness(cur)
    if ex["exact"]:
        return ex
    if not ex["early"]:
        st.error(f"**Not exact for this input.** No neuron fired early, but the SNN leaves the ANN by more than float "
                 f"rounding from layer {ex['verdict'].parting} on (its logits differ by up to "
                 f"{ex['logit_difference']:.3g}" + ("" if ex["same_class"] else ", and it predicts another class")
                 + "): an input outside the network's input range, or a saturated neuron. The conversion inspector "
                 "shows where.", icon=":material/error:")
        st.button("Open the conversion inspector", key="banner_inspector", icon=":material/account_tree:",
                  on_click=open_in_inspector, help="where the SNN and the ANN part, layer by layer")
        return ex
    count = sum(n for _, n in ex["early"])
    where = ", ".join(f"{name}: {n:,}" for name, n in ex["early"][:4]) + (" …" if len(ex["early"]) > 4 else "")
    st.error(f"**Not exact for this input.** {count:,} early spikes ({where}) — neurons that fired before all their "
             f"inputs had arrived, because the windows are too small (ζ = {cur.net_key.margin:g}). The SNN's logits "
             f"differ from the ANN's by up to {ex['logit_difference']:.3g}"
             + ("" if ex["same_class"] else ", and it predicts another class") +
             ". Use ζ ≥ 0 (the 'exact' preset on the main page) for an exact network.", icon=":material/error:")
    if ex["worst"] is not None:
        layer, neuron = ex["worst"]
        st.button("Show the worst neuron", key="banner_worst", icon=":material/troubleshoot:", on_click=_open_worst,
                  args=(layer, neuron), help=f"the earliest early spike: layer {layer}, neuron {neuron} (flat)")
    return ex


def _open_worst(layer: str, neuron: int) -> None:
    select_trace(layer, neuron)
    state.put(PENDING_PAGE, TRACES_PAGE)


TRACES_PAGE = "pages/2_Membrane_traces.py"
INSPECTOR_PAGE = "pages/6_Conversion_inspector.py"
INSPECT = "_ttfs_inspect"  # the failed upload (its key in state.FAILED_MODELS) the inspector is asked to show


def open_in_inspector(key: str | None = None) -> None:
    """on_click: the conversion inspector on the next run, showing this session's failed upload `key` (None: the
    session's model, e.g. one that is not exact)."""
    if key is not None:
        st.session_state[INSPECT] = key
    st.session_state[PENDING_PAGE] = INSPECTOR_PAGE


def failed_upload_key(data_: bytes, arch: str | None, *, dataset: UploadedData | None = None,
                      preprocess: data.Preprocess | None = None, classes: tuple[str, ...] | None = None,
                      mnist: bool = False) -> str | None:
    """The key of an upload that loaded but could not be converted (kept for the inspector), as
    `receive_model_upload` files it; None for any other upload."""
    key = combined_key(upload_key(data_, arch), dataset, preprocess, classes, mnist)
    return key if key in state.get(state.FAILED_MODELS) else None
PENDING_PAGE = "_ttfs_pending_page"  # a page to switch to, set in a callback (switch_page cannot run there)


def follow_pending_page() -> None:
    """Switch to the page a callback chose: the membrane traces of a neuron, or the tour's next step."""
    tour.follow()
    page = st.session_state.pop(PENDING_PAGE, None)
    if page == INSPECTOR_PAGE:
        _switch_to(INSPECTOR_PAGE, "The upload is selected in the inspector: open **Conversion inspector** in the "
                                   "sidebar.")
    elif page:
        _switch_to_traces()


def to_numpy(t: Tensor) -> np.ndarray:
    return t.detach().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


# --- uploads ------------------------------------------------------------------------------------------------
def receive_model_upload(data_: bytes, filename: str, arch: str | None, *, dataset: UploadedData | None = None,
                         preprocess: data.Preprocess | None = None, classes: tuple[str, ...] | None = None,
                         mnist: bool = False, card: str | None = None) -> str | None:
    """Load, check and convert an uploaded model with its data set (None: the bundled MNIST, which only a model
    taking 1×28×28 can use, unless `mnist` asks for it adapted to the model's shape), its preprocessing (None:
    from the model and data) and class names (from a saved network's `card`); on success select it. Returns an
    error message or None.

    Nothing about the upload is trusted: the safe loader refuses code, and every failure (loading, input shape,
    the data set, the preprocessing, conversion) becomes a message; the previously selected model stays selected.
    """
    key = combined_key(upload_key(data_, arch), dataset, preprocess, classes, mnist)
    failed = state.get(state.FAILED_UPLOADS)
    if key in failed:
        return failed[key]
    if key in state.get(state.UPLOADED_MODELS):
        return None  # already received (the uploader keeps the file across reruns): do not re-select it
    upload = UploadedModel(key, filename, data_, arch or None, dataset, preprocess, classes, mnist, card)
    file_error = receive_model_file(data_, filename, arch)  # the file alone, parsed once
    if file_error:
        failed[key] = file_error
        return file_error
    try:
        entry = cache.uploaded_model(key, upload)
        cache.network(settings(key), entry)
    except ttfs_core.ConversionError as e:
        failed[key] = f"The model was loaded but cannot be converted: {e}"
        remember(state.get(state.FAILED_MODELS), key, upload, MAX_FAILED_MODELS)  # the inspector shows where
    except (ModelLoadError, ValueError) as e:
        failed[key] = f"Cannot use {filename!r}: {e}"
    except Exception as e:  # noqa: BLE001 - an untrusted file must never crash the app
        failed[key] = f"Cannot use {filename!r}: unexpected {type(e).__name__}: {e}"
    if key in failed:
        return failed[key]
    remember(state.get(state.UPLOADED_MODELS), key, upload, MAX_SESSION_MODELS)
    state.put(state.MODEL, key)
    return None


def receive_model_file(data_: bytes, filename: str, arch: str | None) -> str | None:
    """Load an uploaded model file alone (the safe loader, cached): None when it loads, else the message (kept, so
    that the same bytes are not parsed again)."""
    key = upload_key(data_, arch)
    failed, mark = state.get(state.FAILED_UPLOADS), f"{key}:file"
    if mark in failed:
        return failed[mark]
    try:
        cache.model_file(key, UploadedModel(key, filename, data_, arch or None))
    except (ModelLoadError, ValueError) as e:
        failed[mark] = f"Cannot use {filename!r}: {e}"
    except Exception as e:  # noqa: BLE001 - an untrusted file must never crash the app
        failed[mark] = f"Cannot use {filename!r}: unexpected {type(e).__name__}: {e}"
    return failed.get(mark)


def receive_card_upload(data_: bytes, filename: str, model_key: str) -> tuple[str, str]:
    """Take the preprocessing and class names of an uploaded saved network's card for the model file `model_key`
    (`state.UPLOAD_SETTINGS`), once per card. Returns (level, message): what was taken, or why nothing was."""
    chosen = state.get(state.UPLOAD_SETTINGS).setdefault(model_key, {})
    card_key = upload_key(data_)
    try:
        card = read_card(data_, filename)
    except ValueError as e:
        return "error", f"Cannot use {filename!r} as a saved network: {e}"
    except Exception as e:  # noqa: BLE001
        return "error", f"Cannot use {filename!r} as a saved network: unexpected {type(e).__name__}: {e}"
    if card is None or (card.preprocess is None and not card.classes):
        return "warning", (f"{filename} is a saved network without a card (saved before cards were written): set the "
                           "preprocessing below")
    if chosen.get("card_key") != card_key:
        chosen.update(card_key=card_key, card=filename, classes=card.classes or None)
        if card.preprocess is not None:
            chosen["preprocess"] = card.preprocess
    what = [f"preprocessing {card.preprocess.height}×{card.preprocess.width}×{card.preprocess.channels}"
            if card.preprocess is not None else "", f"{len(card.classes)} class names" if card.classes else ""]
    return "info", f"From {filename}'s card: {' and '.join(w for w in what if w)}" + (
        f" (it was calibrated on {card.data})" if card.data else "") + "."


def remember(store: dict, key: str, value, limit: int) -> None:
    """Add an upload to this session's store, forgetting the oldest ones beyond `limit` (memory stays bounded
    however many files a session uploads; the newest is the one selected)."""
    store[key] = value
    while len(store) > limit:
        del store[next(iter(store))]


def receive_image_upload(data_: bytes, filename: str, preprocess, auto_invert: bool | None = None
                         ) -> tuple[str | None, list[str]]:
    """Decode and select an uploaded image (resized to the model's size, in its colour). Returns (error message or
    None, notes such as 'resized'). `auto_invert`: invert a dark-on-light image, as MNIST digits are light on dark
    (default: for grayscale models; a colour photo is never inverted unasked)."""
    key = upload_key(data_)
    known = state.get(state.UPLOADED_IMAGES).get(key)
    auto_invert = preprocess.channels == 1 if auto_invert is None else auto_invert
    try:
        invert = known.invert if known is not None else auto_invert and light_background(data_)
        _, notes = read_image(data_, preprocess, invert=invert)
        blank = blank_colour(decode_image(data_))
        if blank is not None:
            notes.append(f"The image is blank: every pixel is {blank}, so the model sees a uniform input"
                         + (" (black, once inverted)." if invert and blank != "black" else "."))
    except ValueError as e:
        return f"Cannot use {filename!r} as an image: {e}", []
    except Exception as e:  # noqa: BLE001
        return f"Cannot use {filename!r} as an image: unexpected {type(e).__name__}: {e}", []
    uploads = state.get(state.UPLOADED_IMAGES)
    if key not in uploads:
        remember(uploads, key, UploadedImage(key, filename, data_, invert), MAX_SESSION_IMAGES)
        state.put(state.IMAGE, key)
    return None, notes


def receive_drawing(png: bytes, preprocess, now: datetime | None = None) -> tuple[str | None, list[str]]:
    """Select a drawing from the pad as an uploaded image named by its number in this session and the time it was
    drawn ("your drawing 3 (19:42)"), so that several drawings can be told apart in the image choice. The same
    drawing sent again keeps its name and number."""
    known = state.get(state.UPLOADED_IMAGES).get(upload_key(png))
    if known is not None:
        return receive_image_upload(png, known.filename, preprocess)
    n = int(state.get(state.DRAWINGS)) + 1
    name = f"your drawing {n} ({(now or datetime.now()).strftime('%H:%M')})"
    error, notes = receive_image_upload(png, name, preprocess)
    if error is None:
        state.put(state.DRAWINGS, n)
    return error, notes


def input_figure(x: Tensor, preprocess: data.Preprocess):
    """The input as the model sees it, drawn on a fixed scale: pixels / 255 (x·std + mean) from black at 0 to white
    at 1, so an all-white image is white and an all-black one black (a scale fitted to the image's own range drew
    any blank image mid-grey). Shape: x (1, C, H, W), preprocessed."""
    from . import figures

    p = x[0].detach().double().numpy()
    if p.shape[0] == 3:
        return figures.image(p, mean=preprocess.mean, std=preprocess.std)
    shown = p * np.broadcast_to(np.asarray(preprocess.std, float), (p.shape[0],)).reshape(-1, 1, 1) + \
        np.broadcast_to(np.asarray(preprocess.mean, float), (p.shape[0],)).reshape(-1, 1, 1)
    fig = figures.image(np.clip(shown, 0.0, 1.0))
    fig.update_traces(zmin=0.0, zmax=1.0, zauto=False, selector={"type": "heatmap"},
                      hovertemplate="(%{y}, %{x}) pixel / 255 = %{z:.3g}<extra></extra>")
    return fig


def invert_checkbox() -> None:
    """For an uploaded image in use: whether its colours are inverted (MNIST digits are white on black)."""
    key = state.get(state.IMAGE)
    up = state.get(state.UPLOADED_IMAGES).get(key)
    if up is None:
        return
    widget = f"_w_invert_{key}"
    st.session_state[widget] = up.invert

    def changed() -> None:
        uploads = state.get(state.UPLOADED_IMAGES)
        uploads[key] = UploadedImage(up.key, up.filename, up.data, bool(st.session_state[widget]))

    st.checkbox(f"Invert colours of {up.filename}", key=widget, help="MNIST digits are white on black",
                on_change=changed)


def use_test_image(i: int) -> None:
    state.put(state.IMAGE, "test")
    state.put(state.TEST_INDEX, int(i))


# --- neurons of a layer -------------------------------------------------------------------------------------
DIMENSIONS = {1: ("neuron",), 3: ("channel", "row", "column")}
MAX_TRACES = state.MAX_TRACES


def chosen_neurons(layer: str) -> list[int] | None:
    """The flat indices last chosen in `layer` (None when the choice was made in another layer)."""
    chosen = state.get(state.TRACE_NEURONS)
    return list(chosen[1]) if chosen and chosen[0] == layer and chosen[1] else None


def choose_neurons(layer: str, neurons: list[int]) -> None:
    state.put(state.TRACE_NEURONS, (layer, [int(i) for i in neurons][:MAX_TRACES]))


def neuron_index(layer: str, shape: tuple[int, ...]) -> int:
    """Number inputs for one neuron's multi-index (channel, row, column or neuron). Returns the flat index."""
    flat = (chosen_neurons(layer) or [0])[0]
    flat = flat if 0 <= flat < int(np.prod(shape)) else 0
    names = DIMENSIONS.get(len(shape), tuple(f"dim {d}" for d in range(len(shape))))
    keys = [f"_w_neuron_{d}" for d in range(len(shape))]
    for key, v in zip(keys, np.unravel_index(flat, shape)):
        st.session_state[key] = int(v)

    def changed() -> None:
        choose_neurons(layer, [int(np.ravel_multi_index([st.session_state[k] for k in keys], shape))])

    for col, key, name, size in zip(st.columns(len(shape)), keys, names, shape):
        col.number_input(f"{name} (0–{size - 1})", min_value=0, max_value=size - 1, step=1, key=key, on_change=changed)
    choose_neurons(layer, [flat])
    return flat


def pick_from_map(spikes, key: str) -> list[int]:
    """The layer's neurons as a clickable map; returns the chosen flat indices.

    A click adds or removes one neuron (the chart forgets its selection when it is redrawn, so the choice is kept
    here); a box or lasso selection replaces the choice. After each applied event the chart is drawn afresh
    under a new key, so the next click, even on the neuron just added, is a new event.

    A layer too large to send whole (over `timeline.DENSITY_NEURONS` neurons, in maps) shows one channel at a
    time, chosen in a number input: the channel of the first neuron chosen, else the most active one.
    """
    from . import figures, timeline

    channels = None
    if spikes.neurons > timeline.DENSITY_NEURONS and timeline.has_maps(spikes.shape):
        channels = [_picker_channel(spikes, key)]
    flat = figures.picker_index(spikes.shape, channels)
    order = flat[flat >= 0]  # point i of the picker is neuron order[i]
    generation = f"_gen_{key}"
    view = "" if channels is None else f"c{channels[0]}_"  # another channel: another chart (its own points)
    chart = f"{key}_{view}{st.session_state.get(generation, 0)}"
    event = st.session_state.get(chart)
    selection = (event or {}).get("selection", {}) if isinstance(event, dict) else getattr(event, "selection", {})
    try:
        indices, group = messages.chart_selection(selection or {}, len(order))
    except messages.BadMessage as e:  # from a scripted browser: used for nothing
        indices, group = [], False
        st.warning(f"A selection from the chart was ignored: {e}.")
    picked = [int(order[i]) for i in indices]
    if picked:
        chosen = chosen_neurons(spikes.name) or []
        if group or len(picked) > 1:
            chosen = picked
        elif picked[0] in chosen:
            chosen = [i for i in chosen if i != picked[0]]
        else:
            chosen = [*chosen, picked[0]][-MAX_TRACES:]
        choose_neurons(spikes.name, chosen)
        st.session_state[generation] = st.session_state.get(generation, 0) + 1
        chart = f"{key}_{view}{st.session_state[generation]}"
    chosen = chosen_neurons(spikes.name) or most_active(spikes.activations, 1)
    with st.container(key=key):
        name = figures.export_name("neuron-picker", spikes.name, None if channels is None else f"c{channels[0]}")
        st.plotly_chart(figures.neuron_picker(spikes, chosen, channels=channels), key=chart, on_select="rerun",
                        selection_mode=("points", "box", "lasso"),
                        config=figures.export_config(name, figures.chosen_format(st.session_state)))
    st.caption(f"Click a square to add its neuron (click again to remove it), or drag a box / lasso (tools in the "
               f"chart's toolbar) to pick a group; up to {MAX_TRACES} neurons. Outlined in red: chosen.")
    return chosen


def _picker_channel(spikes, key: str) -> int:
    """The channel a large layer's picker shows (a number input under `key`): kept while valid, else the channel
    of the first neuron chosen in this layer, else the layer's most active channel (`timeline.top_channels`)."""
    from . import timeline

    count, per = timeline.channels_of(spikes.shape)
    widget = f"_w_{key}_channel"
    current = st.session_state.get(widget)
    if type(current) is not int or not 0 <= current < count:
        chosen = chosen_neurons(spikes.name)
        st.session_state[widget] = int(chosen[0] // per) if chosen else timeline.top_channels(spikes, 1)[0]
    st.number_input(f"Channel (0–{count - 1}) of {spikes.label}: {spikes.neurons:,} neurons in {count:,} maps of "
                    f"{'×'.join(map(str, spikes.shape[1:]))}, one shown at a time", min_value=0, max_value=count - 1,
                    step=1, key=widget)
    return int(st.session_state[widget])


def open_trace(layer: str, neuron: int, image: int | None = None) -> None:
    """Go to the membrane trace of one neuron (of test image `image`, from a table of early spikes; None: the
    input shown now, from a click on the raster or a feature map)."""
    if image is not None:
        use_test_image(image)
    select_trace(layer, neuron)
    _switch_to_traces()


def select_trace(layer: str, neuron: int) -> None:
    """Make one neuron the membrane page's choice."""
    state.put(state.TRACE_LAYER, layer)
    state.put(state.TRACE_PICK, "by index")
    choose_neurons(layer, [neuron])


def _switch_to_traces() -> None:
    _switch_to(TRACES_PAGE, "The neuron is selected: open **Membrane traces** in the sidebar.")


def _switch_to(page: str, otherwise: str) -> None:
    try:
        st.switch_page(page)
    except StreamlitPageNotFoundError:  # a page run as the entry point (tests) has no pages folder beside it
        st.info(otherwise)
