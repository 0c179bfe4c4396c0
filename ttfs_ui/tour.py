"""The guided tour: eight steps across the real pages, each a link.

A step is a page and the state it shows, set only through the pages' own URL parameters (`ttfs_ui.state.PARAMS`,
and the playground's `playground.PARAMS`), plus ``tour=k``. "Next", "Back" and a step's link all arrive at the same
view: the buttons reset every key the tour touches to its default, set the step's values and switch page with the
step's query (so the new page adopts it as a link), and a fresh session opened on the link starts from the defaults
and adopts the same query. A banner at the top of every page (`banner`, from `controls.show_notice`) says the
step's one sentence, shows its link and the buttons.

Every step runs on the bundled default model (LeNet-5) and its first test image: one conversion per setting and one
simulation, shared by every session, and the ANN-vs-SNN page's test-set evaluation ships with the code
(`cache.shipped_evaluation`, assets/evaluations.json.gz): no step computes a test set on a visit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlencode, urljoin

import streamlit as st
from streamlit.errors import StreamlitAPIException

from ttfs_core.mapping import DEFAULT_MARGIN
from ttfs_core.neurons import B1

from . import playground as pg
from . import state

PENDING = "_ttfs_tour_pending"  # (page path, query) to switch to, set in a button's callback


@dataclass(frozen=True)
class Step:
    """One step: the page it opens (its file, relative to the repository root), the state it sets (state keys ->
    values; every other key the tour touches is reset to its default), a short title and one sentence."""

    page: str
    title: str
    sentence: str
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def url_path(self) -> str:
        """The page's address as Streamlit serves it ("" for the main page, "Spike_raster" for
        pages/1_Spike_raster.py)."""
        if self.page == "app.py":
            return ""
        return re.sub(r"^\d+_", "", PurePosixPath(self.page).stem)


RASTER, TRACES, COMPARE, PLAYGROUND = ("pages/1_Spike_raster.py", "pages/2_Membrane_traces.py",
                                       "pages/3_ANN_vs_SNN.py", "pages/5_Neuron_playground.py")
# the model's layers named below are LeNet-5's (tests/test_tour.py checks them against the converted network)
STEPS: tuple[Step, ...] = (
    Step(PLAYGROUND, "A ReLU value becomes a spike time",
         "One neuron: its inputs arrive as spikes, V climbs to θ and it fires at t = t_max − ReLU(Σ W x + b), so "
         "the larger the ReLU value, the earlier the spike (read t_max − t beside ReLU in the table).",
         {pg.PRESET: "exact"}),
    Step(RASTER, "The raster fills in",
         "Every spike of LeNet-5 on one time axis: with the cursor halfway, the input and conv 0 have fired and "
         "conv 4's maps are filling in, brightest activations first; press Play or drag the cursor.",
         {state.CURSOR: 50, state.LAYER: "4"}),
    Step(TRACES, "A membrane trace crosses θ",
         "Neuron 3 of layer 8 integrates its inputs' spikes as they arrive and fires when V crosses θ; its spike "
         "time is exact, the clock-driven simulation would land on a tick.",
         {state.TRACE_LAYER: "8", state.TRACE_PICK: "by index", state.TRACE_NEURONS: ("8", [3])}),
    Step(COMPARE, "The equality plot",
         "Every neuron's SNN value against its ANN value: all on the diagonal, errors at float rounding, and the "
         "test set's predictions agree image for image.",
         {}),
    Step(RASTER, "Early spikes at ζ = −0.7",
         "With windows at 30 % of what the activations need, neurons fire before all their inputs have arrived "
         "(red rings) and the banner says the network is no longer exact.",
         {state.MARGIN: -0.7, state.LAYER: "0"}),
    Step(RASTER, "The margin that removes them",
         f"The same view at the default margin ζ = {DEFAULT_MARGIN:g}: every window is 1.5× the largest "
         "calibration activation, no spike comes early, and the logits are the ANN's again.",
         {state.LAYER: "0"}),
    Step(RASTER, "B1's silent neurons",
         "In the B1 neuron model a neuron whose ReLU is 0 does not fire at all (its map cell stays grey, and the "
         "counts show B1's spikes beside the α-model's), instead of being forced to fire at t_max: fewer spikes, the "
         "same logits.",
         {state.NEURON: B1.name, state.LAYER: "0"}),
    Step("app.py", "What's next",
         "Upload your own network and its data in section 1 of this page, then open the Conversion inspector to "
         "see what each spiking layer absorbed, or where a model that cannot be converted stops.",
         {}),
)
# the keys every step resets to their defaults before setting its own values (so that Next, Back and a link agree)
KEYS = (state.MODEL, state.IMAGE, state.DATASET, state.TEST_INDEX, state.EVAL_IMAGES, state.MARGIN, state.NEURON,
        state.RESCALE, state.CURSOR, state.AXIS, state.LAYER, state.TRACE_LAYER, state.TRACE_NEURONS,
        state.TRACE_PICK, state.TRACE_K, state.TRACE_CLOCK, state.TRACE_STEPS, state.TRACE_DT, state.SCATTER_LAYER)
assert len(STEPS) == state.TOUR_STEPS  # the "tour" parameter's range


def step(k: int) -> Step:
    """Step k (1-based)."""
    return STEPS[k - 1]


def values(k: int) -> dict[str, Any]:
    """Every state key step k sets: the tour's keys at their defaults, the step's own values, and ``tour=k``
    (the playground's keys too for a step on the playground)."""
    s = step(k)
    out = {key: state.DEFAULTS[key] for key in KEYS}
    if s.page == PLAYGROUND:
        out.update(pg.DEFAULTS)
    out.update(s.values)
    out[state.TOUR] = k
    return out


def query(k: int) -> dict[str, str]:
    """Step k's query parameters: its values that differ from their defaults, written by the pages' own
    parameters (`state.PARAMS`, the playground's `pg.PARAMS`)."""
    vals = values(k)
    params = {**state.PARAMS, **(pg.PARAMS if step(k).page == PLAYGROUND else {})}
    defaults = {**state.DEFAULTS, **pg.DEFAULTS}
    out = {}
    for name, param in params.items():
        if param.key not in vals:
            continue
        value = vals[param.key]
        if value is None or value == defaults.get(param.key):
            continue
        text = param.write(value) if param.key != state.TRACE_NEURONS else ",".join(map(str, value[1]))
        if text is not None:
            out[name] = text
    return out


def link(k: int) -> str:
    """Step k's link, relative to any page of the app (they are all at its top level): "Spike_raster?t=50&layer=4&
    tour=2", "./?tour=8" for the main page."""
    return f"{step(k).url_path or './'}?{urlencode(query(k))}"


def absolute_link(k: int) -> str:
    """Step k's link as a full address, from the address this session's page was opened at (the relative link
    where the server does not know it)."""
    try:
        here = st.context.url
    except Exception:  # noqa: BLE001 - outside a browser session (tests): no address
        here = None
    if not here:
        return link(k)
    return urljoin(here, link(k))


def _apply(k: int) -> None:
    st.session_state.update(values(k))
    st.session_state[PENDING] = (step(k).page, query(k))


def start() -> None:
    """on_click of "Start the tour"."""
    _apply(1)


def go(k: int) -> None:
    """on_click of "Next" / "Back": step k's state, and its page on the next run (`follow`)."""
    _apply(max(1, min(k, len(STEPS))))


def end() -> None:
    """on_click of "End tour": the banner goes, the view stays."""
    st.session_state[state.TOUR] = None


def follow() -> None:
    """Switch to the page a tour button chose (called at the start of every page's run; `st.switch_page` cannot run
    in a callback). The page opens with the step's query, so it reads it as a link."""
    pending = st.session_state.pop(PENDING, None)
    if not pending:
        return
    page, params = pending
    try:
        st.switch_page(page, query_params=params)
    except StreamlitAPIException:  # a page run alone (AppTest) knows no other page: stay here
        return


def current() -> int | None:
    k = st.session_state.get(state.TOUR)
    return k if isinstance(k, int) and 1 <= k <= len(STEPS) else None


def banner() -> None:
    """The tour's banner for the session's step: its number and title, its sentence, its link, and Back / Next /
    End tour."""
    k = current()
    if k is None:
        return
    s = step(k)
    with st.container(border=True, key="tour_banner"):
        st.markdown(f"**Tour · step {k} of {len(STEPS)} · {s.title}.** {s.sentence}")
        cols = st.columns([1, 1, 1, 5], vertical_alignment="center")
        cols[0].button("Back", key="tour_back", on_click=go, args=(k - 1,), disabled=k == 1,
                       icon=":material/arrow_back:", width="stretch")
        if k < len(STEPS):
            cols[1].button("Next", key="tour_next", on_click=go, args=(k + 1,), type="primary",
                           icon=":material/arrow_forward:", width="stretch")
        cols[2].button("End tour", key="tour_end", on_click=end, icon=":material/close:", width="stretch")
        cols[3].markdown(f"[Link to this step]({link(k)}) (for a slide: `{absolute_link(k)}`)")


def start_button() -> None:
    """The main page's "Start the tour" button, with what it does."""
    left, right = st.columns([1, 4], vertical_alignment="center")
    left.button("Start the tour", key="tour_start", on_click=start, type="primary", icon=":material/tour:",
                width="stretch")
    right.caption(f"{len(STEPS)} steps across the pages, each setting the view and saying what to look at: "
                  + "; ".join(s.title.lower() if i else s.title for i, s in enumerate(STEPS)) + ".")
