"""Links that reproduce a view: every page writes its state into the URL's query parameters, and a fresh session
opened on such a link shows the same model, input, layer, neuron and instant; bad or stale parameters fall back to
the defaults with a note (`ttfs_ui.state`'s Param table)."""

from __future__ import annotations

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from ttfs_core.neurons import SUM, neuron_model
from ttfs_ui import state, timeline

from .helpers import APP, COMPARE, RASTER, ROBUSTNESS, TIMEOUT, charts, live_spec

pytestmark = pytest.mark.integration  # every test opens pages under AppTest


def opened(path: str, query: dict[str, str] | None = None, **session) -> AppTest:
    """A fresh session opened on `path` with the link's `query` (and state set before the first run)."""
    at = AppTest.from_file(path, default_timeout=TIMEOUT)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    for key, value in session.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def link(at: AppTest) -> dict[str, str]:
    return {k: str(v) for k, v in dict(at.query_params).items()}


def notes(at: AppTest) -> list[str]:
    return [w.value for w in at.warning]


TRACES = RASTER.replace("1_Spike_raster", "2_Membrane_traces")


def test_a_link_opens_the_view_it_was_written_by():
    """A session that chose a model, an image, settings, a layer, one neuron and an instant writes them all into
    its URL; a fresh session opened on that URL shows the same trace and the same cursor."""
    chosen = {state.MODEL: "zoo:fc", state.TEST_INDEX: 7, state.MARGIN: 0.25, state.NEURON: "b1",
              state.TRACE_LAYER: "1", state.TRACE_PICK: "by index", state.TRACE_NEURONS: ("1", [123]),
              state.CURSOR: 30}
    first = opened(TRACES, **chosen)
    url = link(first)
    assert url == {"model": "fc", "img": "7", "zeta": "0.25", "neuron": "b1", "t": "30", "trace_layer": "1",
                   "neurons": "123", "pick": "by index"}
    again = opened(TRACES, url)  # nothing in session state: only the link
    for key, value in chosen.items():
        assert again.session_state[key] == value, key
    assert not notes(again)
    a, b = charts(first)["membrane"], charts(again)["membrane"]
    assert [t.get("name") for t in a["data"]] == [t.get("name") for t in b["data"]]
    for ta, tb in zip(a["data"], b["data"]):
        assert np.array_equal(np.asarray(ta.get("x", []), float), np.asarray(tb.get("x", []), float), equal_nan=True)
        assert np.array_equal(np.asarray(ta.get("y", []), float), np.asarray(tb.get("y", []), float), equal_nan=True)
    # the instant: the cursor line on the trace, at the raster's time t = cursor_t(30) on the trace's axis
    cur_t = timeline.timeline_of(_snn("fc", 0.25, "b1")).cursor_t(30)
    [note] = [a for a in b["layout"]["annotations"] if a.get("name") == "cursor"]
    lines = [s for s in b["layout"]["shapes"] if s.get("line", {}).get("color") == "#444"]
    assert len(lines) == 2 and all(s["x0"] == pytest.approx(note["x"]) for s in lines)  # on V and on the ticks
    assert note["text"].strip() == f"cursor t = {note['x']:.4g}"
    origin = next(la.start for la in _snn("fc", 0.25, "b1").layers if la.name == "1")  # the trace's time 0
    assert note["x"] == pytest.approx(cur_t - origin)


def _snn(name: str, margin: float, neuron: str):
    from ttfs_ui import cache

    return cache.network(cache.Settings(f"zoo:{name}", margin, neuron_model(neuron), SUM), cache.zoo_model(name))


def test_the_raster_opens_at_the_linked_instant_and_layer():
    at = opened(RASTER, {"model": "lenet5", "img": "3", "t": "17"})
    spec = live_spec(at)
    assert spec["cursor"] == 17
    layers = [s.name for s in timeline.spikes_of(_snn("lenet5", 0.5, "alpha"), _result(at))[1:]]
    second = layers[1]
    at = opened(RASTER, {"model": "lenet5", "img": "3", "t": "17", "layer": second})
    assert live_spec(at)["cursor"] == 17 and at.session_state[state.LAYER] == second
    assert link(at)["layer"] == second and link(at)["t"] == "17" and link(at)["img"] == "3"
    assert "#3" in at.caption[0].value


def _result(at: AppTest):
    from ttfs_ui import cache

    entry = cache.zoo_model("lenet5")
    snn = _snn("lenet5", 0.5, "alpha")
    x = cache.images(entry, "mnist", "test", 3, 4)
    return snn.run(x.to(snn.dtype))


def test_the_cursor_the_browser_sent_goes_into_the_link():
    """The raster's component sends its cursor once it rests ({cursor, seq}); the next run writes it as t."""
    at = opened(RASTER)
    assert "t" not in link(at)
    at.session_state["timeline"] = {"cursor": 12, "seq": "c1"}
    at.run()
    assert not at.exception and at.session_state[state.CURSOR] == 12 and link(at)["t"] == "12"
    assert live_spec(at)["cursor"] == 12


@pytest.mark.parametrize("message", [{"cursor": True, "seq": "c2"}, {"cursor": 10**9, "seq": "c2"},
                                     {"cursor": 3, "seq": "c2", "layer": "2", "neuron": -1}])
def test_a_bad_message_from_the_timeline_changes_nothing(message):
    """{"cursor": true} once went into the link as t=True: a message that does not fit is ignored, with a note."""
    at = opened(RASTER)
    at.session_state["timeline"] = message
    at.run()
    assert not at.exception and at.session_state[state.CURSOR] is None and "t" not in link(at)
    assert any("message from the timeline was ignored" in n for n in notes(at))


@pytest.mark.parametrize("query, named", [
    ({"zeta": "abc"}, "zeta='abc'"),
    ({"zeta": "nan"}, "zeta='nan'"),
    ({"zeta": "5"}, "zeta='5'"),
    ({"model": "../../etc/passwd"}, "model="),
    ({"model": "upload:1234"}, "uploaded models cannot be linked"),
    ({"img": "-3"}, "img='-3'"),
    ({"img": "99999999999999999999999"}, "img="),
    ({"neurons": "1,x"}, "neurons="),
    ({"neurons": ",".join(["1"] * 9)}, "neurons="),
    ({"pick": "everything"}, "pick="),
    ({"frobnicate": "1"}, "'frobnicate' (unknown)"),
])
def test_a_bad_parameter_falls_back_to_its_default_with_a_note(query, named):
    at = opened(TRACES, query)
    [note] = notes(at)
    assert named in note and "defaults" in note
    for name in query:
        if name in state.PARAMS:
            key = state.PARAMS[name].key
            assert at.session_state[key] == state.DEFAULTS[key] or key == state.TRACE_LAYER


def test_a_stale_layer_or_instant_falls_back_with_a_note():
    """A layer name or cursor step the model does not have (a link written for another model)."""
    at = opened(RASTER, {"layer": "no such layer", "t": "100000"})
    shown = " ".join(notes(at))
    assert "layer='no such layer'" in shown and "t=100000" in shown
    assert live_spec(at)["cursor"] == live_spec(at)["steps"]
    at = opened(TRACES, {"trace_layer": "conv 99"})
    assert "trace_layer='conv 99'" in " ".join(notes(at))
    at.run()  # said once, not on every rerun
    assert not notes(at)


@pytest.mark.parametrize("page, query", [
    (APP, {"zeta": "-0.7", "data": "fashion", "img": "5"}),
    (COMPARE, {"rescale": "positive"}),
    (ROBUSTNESS, {"robust_n": "100", "relative": "1"}),
])
def test_every_page_keeps_its_state_in_its_link(page, query):
    at = opened(page, query)
    assert not notes(at)
    assert link(at).items() >= query.items()


PLAYGROUND = RASTER.replace("1_Spike_raster", "5_Neuron_playground")


def test_a_playground_link_reproduces_its_neuron_to_the_last_digit():
    from ttfs_ui import playground as pg

    first = opened(PLAYGROUND, **{pg.X[0]: 0.123456789012345, pg.W[1]: -0.31, pg.BIAS: 0.2, pg.NEURON: "b1"})
    url = link(first)
    assert url["pg_x1"] == "0.123456789012345" and url["pg_neuron"] == "b1" and "model" not in url
    again = opened(PLAYGROUND, url)
    assert not notes(again)
    assert again.session_state[pg.X[0]] == 0.123456789012345 and again.session_state[pg.W[1]] == -0.31
    a, b = (next(d.value for d in at.dataframe if "quantity" in d.value.columns) for at in (first, again))
    assert a.equals(b)
    bad = opened(PLAYGROUND, {"pg_x1": "nan", "pg_n": "40"})
    assert "pg_x1='nan'" in notes(bad)[0] and "pg_n='40'" in notes(bad)[0]
    assert bad.session_state[pg.COUNT] == pg.DEFAULTS[pg.COUNT]
