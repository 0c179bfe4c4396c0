"""The guided tour (`ttfs_ui.tour`): every step's link reads back (`state.read_url`) into the state the step claims,
the steps name real layers and neurons of LeNet-5, and under AppTest a session walks the tour with Start, Next and
Back through the real pages, each step's banner saying its sentence, and a step opened from its link shows the
same state as one reached by Next."""

from __future__ import annotations

from urllib.parse import parse_qsl, urljoin, urlsplit

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import ttfs_core
from ttfs_core import data, zoo
from ttfs_ui import state, tour
from ttfs_ui.timeline import timeline_of

from .helpers import APP, ROOT, TIMEOUT


def _read_link_script():
    """A page that only reads its link (as every page does first) and prints nothing."""
    from ttfs_ui import playground as pg
    from ttfs_ui import state

    state.init(pg.DEFAULTS, pg.PARAMS)


def _opened(k: int) -> AppTest:
    at = AppTest.from_function(_read_link_script, default_timeout=TIMEOUT)
    for name, text in parse_qsl(urlsplit(tour.link(k)).query):
        at.query_params[name] = text
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


END = 100  # LeNet-5's last cursor step (5 windows of timeline.STEPS_PER_WINDOW): where "None" (the end) is drawn


def _same(at: AppTest, k: int) -> None:
    for key, value in tour.values(k).items():
        if key == state.CURSOR and value is None:  # the end of the timeline, which a page may write as its step
            assert at.session_state[key] in (None, END), k
            continue
        assert at.session_state[key] == value, (k, key)


@pytest.mark.parametrize("k", range(1, len(tour.STEPS) + 1))
def test_every_steps_link_reads_back_into_its_state(k):
    """A fresh session opened on step k's link (nothing else) holds every value the step sets, the keys the tour
    resets at their defaults, and tour=k; no parameter is refused."""
    at = _opened(k)
    _same(at, k)
    assert at.session_state[state.NOTICE] is None  # no "could not be used" note


def test_the_steps_are_distinct_links_on_the_pages_they_name():
    links = [tour.link(k) for k in range(1, len(tour.STEPS) + 1)]
    assert len(set(links)) == len(links)
    for k, s in enumerate(tour.STEPS, start=1):
        assert (ROOT / s.page).is_file()
        assert links[k - 1].startswith(f"{s.url_path or './'}?") and f"tour={k}" in links[k - 1]
        assert s.sentence.count(". ") <= 1 and s.sentence.endswith(".")  # one sentence (a few clauses)
    assert tour.step(2).url_path == "Spike_raster" and tour.step(8).url_path == ""
    assert urljoin("http://host/app/Membrane_traces?t=3", links[7]) == "http://host/app/?tour=8"  # from any page
    assert urljoin("http://host/app/Membrane_traces", links[1]).startswith("http://host/app/Spike_raster?")
    assert "zeta=-0.7" in links[4] and "zeta" not in links[5] and "neuron=b1" in links[6]
    # steps 5 and 6 are the same view but for the margin
    assert {**tour.values(5), state.MARGIN: 0, state.TOUR: 0} == {**tour.values(6), state.MARGIN: 0, state.TOUR: 0}


def test_the_steps_name_lenet5s_layers_and_show_what_they_say():
    """The layers, the neuron and the instant the steps name exist in LeNet-5's converted network; the cursor of
    step 2 is partway (its layer's window open), the neuron of step 3 fires well inside its window, step 5 has
    early spikes on image 0 and step 6 none, and B1 leaves neurons of layer 0 silent."""
    model, card = zoo.load(zoo.DEFAULT_MODEL)
    assert state.DEFAULT_MODEL == f"zoo:{zoo.DEFAULT_MODEL}" == "zoo:lenet5"
    train, _ = data.load_uint8(card.dataset, "train")
    test, _ = data.load_uint8(card.dataset, "test")
    cal = card.preprocess.batch_from_uint8(np.asarray(train[:512]))
    x = card.preprocess.batch_from_uint8(np.asarray(test[:1]))

    def run(k):
        v = tour.values(k)
        snn = ttfs_core.convert(model, cal, margin=v[state.MARGIN], input_range=tuple(card.input_range),
                                neuron=v[state.NEURON])
        return snn, snn.run(x)

    snn, res = run(2)
    names = [la.name for la in snn.layers]
    tl = timeline_of(snn)
    t = tour.values(2)[state.CURSOR]
    assert 0 < t < tl.steps and names[tl.window_of_step(t) - 1] == tour.values(2)[state.LAYER]  # 0: the input
    layer, [neuron] = tour.values(3)[state.TRACE_NEURONS]
    assert layer == tour.values(3)[state.TRACE_LAYER] and layer in names
    acts = res.layers[names.index(layer)].activations[0].flatten()
    assert acts[neuron] == acts.max() > 0  # the layer's most active neuron: an early, clear crossing
    for k in (5, 6, 7):
        assert tour.values(k)[state.LAYER] in names
    _, early = run(5)
    assert sum(lr.early_spikes for lr in early.layers) > 0
    _, exact = run(6)
    assert sum(lr.early_spikes for lr in exact.layers) == 0
    _, b1 = run(7)
    assert b1.spikes < exact.spikes


def _step_of(at: AppTest) -> int:
    return at.session_state[state.TOUR]


def _banner(at: AppTest) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("**Tour · step"))


TITLES = {"app.py": "⚡ Exact TTFS explorer", tour.PLAYGROUND: "Neuron playground", tour.RASTER: "Spike raster",
          tour.TRACES: "Membrane traces", tour.COMPARE: "ANN vs SNN"}


@pytest.mark.integration
@pytest.mark.slow
def test_the_tour_walks_every_step_across_the_real_pages():
    """Start the tour on the main page, then Next through every step and Back once: each step opens its page, holds
    its state, says its sentence in the banner with its link, and raises nothing; End tour removes the banner."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    at.button(key="tour_start").click().run()
    for k in range(1, len(tour.STEPS) + 1):
        assert not at.exception, (k, [e.message for e in at.exception])
        assert not at.error or k == 5, (k, [e.value for e in at.error])  # step 5's "not exact" banner only
        s = tour.step(k)
        assert _step_of(at) == k
        assert [t.value for t in at.title] == [TITLES[s.page]], k
        _same(at, k)
        text = _banner(at)
        assert f"step {k} of {len(tour.STEPS)}" in text and s.sentence in text
        assert any(f"]({tour.link(k)})" in m.value for m in at.markdown)
        if k == 5:
            assert any("Not exact for this input" in e.value for e in at.error)
        if k == 3:  # Back once, then on again
            at.button(key="tour_back").click().run()
            assert _step_of(at) == 2 and [t.value for t in at.title] == ["Spike raster"]
            _same(at, 2)
            at.button(key="tour_next").click().run()
            assert _step_of(at) == 3
        if k < len(tour.STEPS):
            at.button(key="tour_next").click().run()
    assert not any(b.key == "tour_next" for b in at.button)  # the last step ends the tour
    at.button(key="tour_end").click().run()
    assert at.session_state[state.TOUR] is None
    assert not any(m.value.startswith("**Tour · step") for m in at.markdown)
    assert any(b.key == "tour_start" for b in at.button)


@pytest.mark.integration
@pytest.mark.parametrize("k", [2, 3, 5, 7])
def test_a_step_opened_from_its_link_shows_its_page_state_and_banner(k):
    s = tour.step(k)
    at = AppTest.from_file(str(ROOT / s.page), default_timeout=TIMEOUT)
    for name, text in parse_qsl(urlsplit(tour.link(k)).query):
        at.query_params[name] = text
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    _same(at, k)
    assert s.sentence in _banner(at)
    assert at.query_params["tour"] == str(k)  # the page keeps the step in its own link


# --- no waits: the test-set evaluations the tour's pages show ship with the code --------------------------------
def test_the_shipped_evaluations_cover_every_bundled_model_and_preset():
    """assets/evaluations.json.gz is usable (its header is this code's, every weights digest the bundled one) and holds
    the first 1,000 test images of every bundled model at every preset's settings: the ANN-vs-SNN page's default
    view (tour step 4, the early-spikes preset) reads them instead of computing."""
    from ttfs_ui import cache, sweeps

    shipped = cache.read_evaluations()
    assert set(shipped) == set(zoo.ARCHITECTURES)
    for name, record in shipped.items():
        for margin, neuron, rescale in sweeps.preset_settings():
            chunks = record["settings"][sweeps.settings_key(margin, neuron, rescale)]
            assert len(chunks) == cache.EVAL_IMAGES // cache.EVAL_CHUNK, (name, margin, neuron)


@pytest.mark.slow
@pytest.mark.parametrize("margin, neuron, start", [(-0.7, "alpha", 0), (0.5, "alpha", 300), (0.5, "b1", 900)])
def test_a_shipped_evaluation_is_what_the_page_computes(margin, neuron, start):
    """A shipped chunk of LeNet-5 (its report and early spikes) is the one the page computes live, read back as
    the page reads it; at ζ = −0.7 with early spikes listed."""
    from ttfs_core import verify
    from ttfs_core.neurons import SUM, neuron_model
    from ttfs_ui import cache

    entry = cache.zoo_model(zoo.DEFAULT_MODEL)
    key = cache.Settings(state.DEFAULT_MODEL, margin, neuron_model(neuron), SUM)
    snn = ttfs_core.convert(entry.model, cache.images(entry, entry.dataset, "train", 0, cache.CALIBRATION_IMAGES),
                            margin=margin, input_range=entry.input_range, neuron=neuron_model(neuron), rescale=SUM)
    shipped = cache.shipped_evaluation(entry, key, entry.dataset, start, start + cache.EVAL_CHUNK, snn)
    assert shipped is not None
    x = cache.images(entry, entry.dataset, "test", start, start + cache.EVAL_CHUNK)
    y = cache.labels(entry, entry.dataset, start, start + cache.EVAL_CHUNK)
    checker = verify.Verifier(entry.model, snn, cache.images(entry, entry.dataset, "train", 0, 1))
    report, early = cache.evaluate(snn, checker, x, y, start)
    assert shipped[0].to_json() == report.to_json()
    assert shipped[1] == early
    assert (margin < 0) == bool(early)
    # another dataset, a partial chunk or other settings are not shipped: computed
    assert cache.shipped_evaluation(entry, key, "fashion", start, start + cache.EVAL_CHUNK, snn) is None
    assert cache.shipped_evaluation(entry, key, entry.dataset, start, start + 50, snn) is None
    other = cache.Settings(state.DEFAULT_MODEL, 0.3, neuron_model(neuron), SUM)
    assert cache.shipped_evaluation(entry, other, entry.dataset, start, start + cache.EVAL_CHUNK, snn) is None


def test_the_progress_of_a_computed_evaluation_says_the_time_left():
    from ttfs_ui import controls

    assert controls.progress_text(300, 1000, 300, 12.0) == "Simulated 300 of 1,000 test images, about 28 s left"
    assert controls.progress_text(200, 10_000, 100, 30.0) == ("Simulated 200 of 10,000 test images, "
                                                               "about 49 min left")
    assert controls.progress_text(500, 1000, 0, 0.01) == "Simulated 500 of 1,000 test images"  # all read: no guess
    assert controls.progress_text(1000, 1000, 1000, 40.0) == "Simulated 1,000 of 1,000 test images"
    assert controls.progress_text(100, 1000, 100, 5.0, "Swept every setting on") == (  # the Robustness page's
        "Swept every setting on 100 of 1,000 test images, about 45 s left")


@pytest.mark.parametrize("margin", [0.5, -0.7])
def test_a_computed_evaluation_shows_its_results_so_far(margin):
    """While the test set is simulated chunk by chunk (an uploaded model's, or unshipped settings), the page shows
    the results over the images done so far: the verification report's counts of those images, as the final
    metrics will show them."""
    from ttfs_core import verify
    from ttfs_ui import cache, controls

    entry = cache.zoo_model(zoo.DEFAULT_MODEL)
    snn = ttfs_core.convert(entry.model, cache.images(entry, entry.dataset, "train", 0, 256), margin=margin,
                            input_range=entry.input_range)
    x = cache.images(entry, entry.dataset, "test", 0, 200)
    y = cache.labels(entry, entry.dataset, 0, 200)
    checker = verify.Verifier(entry.model, snn, x[:1])
    first, _ = cache.evaluate(snn, checker, x[:100], y[:100], 0)
    second, _ = cache.evaluate(snn, checker, x[100:], y[100:], 100)
    report = verify.Report.empty(snn).merge(first).merge(second)
    text = controls.partial_text(report)
    assert text.startswith("So far, on the first 200 images: ")
    assert f"ANN {100 * report.ann_correct / 200:.1f} %, SNN {100 * report.snn_correct / 200:.1f} %" in text
    assert f"agreement {100 * report.agree / 200:.1f} %" in text
    assert text.endswith("no early spike" if report.early == 0 else
                         f"{report.early:,} early spike" + ("s" if report.early > 1 else ""))
    assert (margin < 0) == (report.early > 0)


def test_sessions_asking_for_one_chunk_at_once_share_one_computation(monkeypatch):
    """Eight sessions (threads of the server) ask for the same test-set chunk at the same time: it is computed once
    (Streamlit's lock per cache key; the key holds no session), and all eight get its result."""
    import threading
    import time

    from ttfs_core.neurons import ALPHA, SUM
    from ttfs_ui import cache

    calls = []

    def slow(snn, checker, x, y, start):
        calls.append(start)
        time.sleep(1.0)  # long enough for every session to ask while it runs
        return "report", [{"image": start}]

    monkeypatch.setattr(cache, "evaluate", slow)
    monkeypatch.setattr(cache, "verifier", lambda *args: None)
    entry = cache.zoo_model(zoo.DEFAULT_MODEL)
    key = cache.Settings("zoo:lenet5", 0.35, ALPHA, SUM)  # not a preset: nothing shipped
    results, ready = [], threading.Barrier(8)

    def session():
        ready.wait()
        results.append(cache.evaluate_chunk(key, entry.dataset, 200, 300, entry, None))

    threads = [threading.Thread(target=session) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert calls == [200]
    assert results == [("report", [{"image": 200}])] * 8
