"""Per-user state: every key the app keeps in `st.session_state`, initialised in one place.

Canonical values live under "ttfs_*" keys and survive page switches; widgets use their own keys ("_w_" +
canonical key) and copy their value back in an on_change callback (Streamlit forgets the state of widgets that
a page does not draw). No module-level mutable state: this module only holds constants.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from ttfs_core import data, zoo
from ttfs_core.mapping import DEFAULT_MARGIN
from ttfs_core.neurons import ALPHA, NEURON_MODELS, RESCALES, SUM

PREFIX = "ttfs_"
MODEL = "ttfs_model"  # "zoo:<name>" or "upload:<full sha256>" (uploads.upload_key; never in a link)
IMAGE = "ttfs_image"  # "test" (a bundled test image) or "upload:<full sha256>" (never in a link)
DATASET = "ttfs_dataset"  # test images: "" (the model's own: bundled, or its uploaded data), "mnist" or "fashion"
TEST_INDEX = "ttfs_test_index"  # which bundled test image
EVAL_IMAGES = "ttfs_eval_images"  # test images the ANN-vs-SNN page evaluates
MARGIN = "ttfs_margin"  # ζ of B_n = (1 + ζ) X_n
NEURON = "ttfs_neuron"  # a neuron model's name (ttfs_core.neurons.NEURON_MODELS; `controls.settings` parses it)
RESCALE = "ttfs_rescale"  # a rescaling rule's name (ttfs_core.neurons.RESCALES): "sum" (the paper's) or "positive"
CURSOR = "ttfs_cursor"  # time cursor, integer step (see timeline.Timeline)
AXIS = "ttfs_axis"  # "auto", "stretched" or "absolute"
LAYER = "ttfs_layer"  # layer name shown in feature maps / traces ("" = the page's default)
TRACE_LAYER = "ttfs_trace_layer"
TRACE_NEURONS = "ttfs_trace_neurons"  # flat neuron indices whose membrane traces are drawn
TRACE_PICK = "ttfs_trace_pick"  # "k most active", "by index", "from the feature map"
TRACE_K = "ttfs_trace_k"
TRACE_CLOCK = "ttfs_trace_clock"  # clock-driven trace: "off", "steps" (ticks per window) or "dt" (tick length)
TRACE_STEPS = "ttfs_trace_steps"  # clock ticks per window of the stepped trace
TRACE_DT = "ttfs_trace_dt"  # longest tick of the stepped trace (τ_c)
SCATTER_LAYER = "ttfs_scatter_layer"
ROBUST_IMAGES = "ttfs_robust_images"  # test images per robustness sweep point
ROBUST_RELATIVE = "ttfs_robust_relative"  # jitter σ relative to each window
UPLOADED_MODELS = "ttfs_uploaded_models"  # key -> UploadedModel (bytes, name, arch, its data set and preprocessing)
UPLOADED_IMAGES = "ttfs_uploaded_images"  # key -> UploadedImage (bytes, name)
NOTICE = "ttfs_notice"  # (level, message) shown once on the next run (a fallback after a failure)
FAILED_UPLOADS = "ttfs_failed_uploads"  # upload key -> message of uploads that could not be used (not retried)
FAILED_MODELS = "ttfs_failed_models"  # upload key -> UploadedModel that failed (the inspector shows where), bounded
UPLOAD_SETTINGS = "ttfs_upload_settings"  # model file key -> {"preprocess", "mnist", "card", "classes"} chosen for it
TOUR = "ttfs_tour"  # the guided tour's step (1-based, `ttfs_ui.tour`), None outside the tour
DRAWINGS = "ttfs_drawings"  # drawings this session used so far (they are named "your drawing 3 (19:42)")

DEFAULT_MODEL = f"zoo:{zoo.DEFAULT_MODEL}"
MARGIN_RANGE = (-0.9, 2.0)  # the ζ slider's range
TRACE_PICKS = ("k most active", "by index", "from the feature map")
TRACE_CLOCKS = ("off", "steps", "dt")
TRACE_STEP_OPTIONS = (2, 4, 8, 16, 32, 64, 128, 256)
TRACE_DT_OPTIONS = (0.1, 0.03, 0.01, 0.003, 0.001)
ROBUST_IMAGE_OPTIONS = (100, 200, 500, 1000)
MAX_TRACES = 6
TEST_IMAGES = 10_000  # each bundled dataset ships its whole test set
TOUR_STEPS = 8  # steps of the guided tour (`ttfs_ui.tour.STEPS`)

DEFAULTS: dict[str, Any] = {
    MODEL: DEFAULT_MODEL,
    IMAGE: "test",
    DATASET: "",
    TEST_INDEX: 0,
    EVAL_IMAGES: 1000,
    MARGIN: DEFAULT_MARGIN,
    NEURON: ALPHA.name,
    RESCALE: SUM.name,
    CURSOR: None,  # None: the end of the timeline (everything fired), set once the network is known
    AXIS: "auto",
    LAYER: "",
    TRACE_LAYER: "",
    TRACE_NEURONS: None,
    TRACE_PICK: "k most active",
    TRACE_K: 3,
    TRACE_CLOCK: "off",
    TRACE_STEPS: 16,
    TRACE_DT: 0.01,
    SCATTER_LAYER: "",
    ROBUST_IMAGES: 200,
    ROBUST_RELATIVE: False,
    NOTICE: None,
    TOUR: None,
    DRAWINGS: 0,
}


def init(defaults: dict[str, Any] | None = None, params: dict[str, Param] | None = None) -> None:
    """Set every missing key to its default (each page calls this first: a page may be opened directly), then
    take what the page's link says (`read_url`). A page with state of its own passes its `defaults` and
    query `params` too."""
    for key, value in {**DEFAULTS, **(defaults or {})}.items():
        if key not in st.session_state:
            st.session_state[key] = value
    for key in (UPLOADED_MODELS, UPLOADED_IMAGES, FAILED_UPLOADS, FAILED_MODELS, UPLOAD_SETTINGS):
        if key not in st.session_state:
            st.session_state[key] = {}
    read_url(params)


def get(key: str) -> Any:
    return st.session_state[key]


def put(key: str, value: Any) -> None:
    st.session_state[key] = value


def widget_key(key: str) -> str:
    return "_w_" + key


def _copy_back(key: str) -> None:
    st.session_state[key] = st.session_state[widget_key(key)]


def bind(key: str) -> dict[str, Any]:
    """Keyword arguments that tie a widget to canonical state `key` (call right before drawing the widget)."""
    st.session_state[widget_key(key)] = st.session_state[key]
    return {"key": widget_key(key), "on_change": _copy_back, "args": (key,)}


def notify(level: str, message: str) -> None:
    """Keep a message for the next run (e.g. why the app fell back to the default model)."""
    st.session_state[NOTICE] = (level, message)


def pop_notice() -> tuple[str, str] | None:
    notice = st.session_state.get(NOTICE)
    st.session_state[NOTICE] = None
    return notice


# --- links: the view's state in the URL's query parameters ---------------------------------------------------
# Every page writes the state that differs from the defaults into its URL at the end of each run (`write_url`),
# so the address bar is always a link to the view. A fresh session adopts every parameter of the link it was
# opened with; later, only parameters the browser changed since the page last wrote them (the raster's time
# cursor moves in the browser and updates "t" itself). Bad values are dropped with a note naming them.
class Param:
    """One query parameter: the state key it carries, how its text is read (raising ValueError when bad) and
    written (None: this value cannot be put in a link, e.g. an uploaded model)."""

    def __init__(self, key: str, read: Callable[[str], Any], write: Callable[[Any], str | None] = str):
        self.key, self.read, self.write = key, read, write


def one_of(*options: Any) -> Callable[[str], Any]:
    def read(text: str) -> Any:
        for option in options:
            if text == str(option):
                return option
        raise ValueError(f"not one of {', '.join(map(str, options))}")

    return read


def integer(lo: int, hi: int) -> Callable[[str], int]:
    def read(text: str) -> int:
        value = int(text)
        if not lo <= value <= hi:
            raise ValueError(f"outside {lo}–{hi}")
        return value

    return read


def number(lo: float = -1e6, hi: float = 1e6) -> Callable[[str], float]:
    def read(text: str) -> float:
        value = float(text)
        if not lo <= value <= hi:  # also refuses nan and inf
            raise ValueError(f"outside {lo:g}–{hi:g}")
        return value

    return read


def exact_number(value: float) -> str:
    """A float as the shortest text that reads back to the same float."""
    return repr(float(value))


def _margin(text: str) -> float:
    value = round(float(text), 2)
    if not MARGIN_RANGE[0] <= value <= MARGIN_RANGE[1]:  # also refuses nan and inf
        raise ValueError(f"outside {MARGIN_RANGE[0]}–{MARGIN_RANGE[1]}")
    return value


def _name(text: str) -> str:
    if not 0 < len(text) <= 200 or not text.isprintable():
        raise ValueError("not a layer name")
    return text


def _model(text: str) -> str:
    if text not in zoo.ARCHITECTURES:
        raise ValueError(f"not a bundled model ({', '.join(zoo.ARCHITECTURES)}); uploaded models cannot be linked")
    return f"zoo:{text}"


def _neurons(text: str) -> list[int]:
    values = [int(v) for v in text.split(",")]
    if not 0 < len(values) <= MAX_TRACES or min(values) < 0:
        raise ValueError(f"not 1–{MAX_TRACES} neuron indices")
    return values


def _flag(text: str) -> bool:
    return one_of("0", "1")(text) == "1"


PARAMS: dict[str, Param] = {
    "model": Param(MODEL, _model, lambda v: v.removeprefix("zoo:") if v.startswith("zoo:") else None),
    "data": Param(DATASET, one_of(*data.DATASETS)),
    "img": Param(TEST_INDEX, integer(0, TEST_IMAGES - 1)),
    "zeta": Param(MARGIN, _margin, lambda v: f"{v:g}"),
    "neuron": Param(NEURON, one_of(*NEURON_MODELS)),
    "rescale": Param(RESCALE, one_of(*RESCALES)),
    "t": Param(CURSOR, integer(0, 10**9)),
    "axis": Param(AXIS, one_of("auto", "stretched", "absolute")),
    "layer": Param(LAYER, _name),
    "trace_layer": Param(TRACE_LAYER, _name),
    "neurons": Param(TRACE_NEURONS, _neurons,
                     lambda v: ",".join(map(str, v[1])) if v and v[0] == st.session_state[TRACE_LAYER] else None),
    "pick": Param(TRACE_PICK, one_of(*TRACE_PICKS)),
    "k": Param(TRACE_K, integer(1, MAX_TRACES)),
    "clock": Param(TRACE_CLOCK, one_of(*TRACE_CLOCKS)),
    "ticks": Param(TRACE_STEPS, one_of(*TRACE_STEP_OPTIONS)),
    "dt": Param(TRACE_DT, one_of(*TRACE_DT_OPTIONS)),
    "eval": Param(EVAL_IMAGES, one_of(1000, 10_000)),
    "robust_n": Param(ROBUST_IMAGES, one_of(*ROBUST_IMAGE_OPTIONS)),
    "relative": Param(ROBUST_RELATIVE, _flag, lambda v: str(int(bool(v)))),
    "tour": Param(TOUR, integer(1, TOUR_STEPS)),
}
WRITTEN = "_ttfs_url_written"  # the parameters this page last wrote (None before the session's first run)
FROM_LINK = "_ttfs_from_link"  # state keys whose value came from a link: a page that cannot use one says so


def _put_param(param: Param, name: str, text: str, notes: list[str]) -> None:
    try:
        value = param.read(text)
    except (ValueError, OverflowError) as e:
        notes.append(f"{name}={text[:40]!r} ({e})")
        return
    if param.key == TRACE_NEURONS:
        value = (None, value)  # the layer is set below, once every parameter is read
    st.session_state[param.key] = value
    st.session_state.setdefault(FROM_LINK, set()).add(param.key)


def read_url(extra: dict[str, Param] | None = None) -> None:
    """Adopt the link's parameters on a session's first run, then those the browser changed since. `extra`: the
    page's own parameters (the playground's)."""
    params = {**PARAMS, **(extra or {})}
    query = st.query_params.to_dict()
    written = st.session_state.get(WRITTEN)
    first = written is None
    notes: list[str] = []
    for name, text in query.items():
        if name not in params:
            if first:
                notes.append(f"{name[:40]!r} (unknown)")
            continue
        if first or written.get(name) != text:
            _put_param(params[name], name, text, notes)
    chosen = st.session_state.get(TRACE_NEURONS)
    if chosen and chosen[0] is None:  # neurons from the link (on a first run or later): of the link's trace layer
        st.session_state[TRACE_NEURONS] = (st.session_state[TRACE_LAYER], chosen[1])
    if first:
        if MODEL in st.session_state.get(FROM_LINK, ()) or TEST_INDEX in st.session_state.get(FROM_LINK, ()):
            st.session_state[IMAGE] = "test"  # a link shows a bundled test image
        st.session_state[WRITTEN] = dict(query)
        if notes:
            notify("warning", "Some of this link's parameters could not be used and were left at their defaults: "
                              + "; ".join(notes) + ".")


def stale(key: str, value: Any, instead: Any) -> None:
    """A page could not use a value that came from a link (a layer the model does not have): say so, once."""
    linked = st.session_state.get(FROM_LINK, set())
    if key in linked:
        linked.discard(key)
        name = next((n for n, p in PARAMS.items() if p.key == key), key)
        st.warning(f"This link's {name}={value!r} does not exist here; showing {instead!r} instead.")


def write_url(extra: dict[str, Param] | None = None, defaults: dict[str, Any] | None = None) -> None:
    """Put the state that differs from its default into the URL (each page calls this last; a page with state of
    its own passes its parameters and their defaults)."""
    query = {}
    defaults = {**DEFAULTS, **(defaults or {})}
    for name, param in {**PARAMS, **(extra or {})}.items():
        value = st.session_state.get(param.key)
        if value is None or value == defaults.get(param.key):
            continue
        text = param.write(value)
        if text is not None:
            query[name] = text
    if query != st.query_params.to_dict():
        st.query_params.from_dict(query)
    st.session_state[WRITTEN] = query
    st.session_state.pop(FROM_LINK, None)
