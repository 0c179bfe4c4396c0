"""Per-user state: every key the app keeps in `st.session_state`, initialised in one place.

Canonical values live under "ttfs_*" keys and survive page switches; widgets use their own keys ("_w_" +
canonical key) and copy their value back in an on_change callback (Streamlit forgets the state of widgets that
a page does not draw). No module-level mutable state: this module only holds constants.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from ttfs_core import zoo

PREFIX = "ttfs_"
MODEL = "ttfs_model"  # "zoo:<name>" or "upload:<sha256 prefix>"
IMAGE = "ttfs_image"  # "test" (a bundled test image) or "upload:<sha256 prefix>"
DATASET = "ttfs_dataset"  # bundled dataset the test images come from: "" (the model's own), "mnist" or "fashion"
TEST_INDEX = "ttfs_test_index"  # which bundled test image
EVAL_IMAGES = "ttfs_eval_images"  # test images the ANN-vs-SNN page evaluates
MARGIN = "ttfs_margin"  # ζ of B_n = (1 + ζ) X_n
NEURON = "ttfs_neuron"  # "alpha" or "b1"
RESCALE = "ttfs_rescale"  # "sum" (the paper's, default) or "positive"
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
UPLOADED_MODELS = "ttfs_uploaded_models"  # key -> UploadedModel (bytes, name, arch)
UPLOADED_IMAGES = "ttfs_uploaded_images"  # key -> UploadedImage (bytes, name)
NOTICE = "ttfs_notice"  # (level, message) shown once on the next run (a fallback after a failure)
FAILED_UPLOADS = "ttfs_failed_uploads"  # digest -> message of uploads that could not be used (not retried)

DEFAULT_MODEL = f"zoo:{zoo.DEFAULT_MODEL}"

DEFAULTS: dict[str, Any] = {
    MODEL: DEFAULT_MODEL,
    IMAGE: "test",
    DATASET: "",
    TEST_INDEX: 0,
    EVAL_IMAGES: 1000,
    MARGIN: 0.5,
    NEURON: "alpha",
    RESCALE: "sum",
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
}


def init() -> None:
    """Set every missing key to its default (each page calls this first: a page may be opened directly)."""
    for key, value in DEFAULTS.items():
        if key not in st.session_state:
            st.session_state[key] = value
    for key in (UPLOADED_MODELS, UPLOADED_IMAGES, FAILED_UPLOADS):
        if key not in st.session_state:
            st.session_state[key] = {}


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
