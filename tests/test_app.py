"""The explorer under Streamlit's AppTest: every page runs (each opened directly, as by its URL), its widgets work,
and what the figures show equals what the core computes."""

from __future__ import annotations

import io
import pickle
from dataclasses import FrozenInstanceError

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

import ttfs_core
from ttfs_core import data, zoo
from ttfs_core.neurons import ALPHA, SUM
from ttfs_ui import controls, figures, state, tables, text, timeline, uploads

from .helpers import (
    APP,
    COMPARE,
    RASTER,
    ROBUSTNESS,
    ROOT,
    TIMEOUT,
    TRACES,
    charts,
    first_early_layer,
    live_spec,
    ok,
    upload_script,
)
from .helpers import run_page as run


# --- helpers ------------------------------------------------------------------------------------------------
def spike_traces(fig: dict) -> list[dict]:
    """The raster's per-layer spike traces (not the window bands, not the early-spike overlays)."""
    return [t for t in fig["data"] if t.get("hoverinfo") != "skip" and t.get("name") != figures.EARLY]


def arr(v) -> np.ndarray:
    if v is None:
        return np.array([])
    return np.array([np.nan if x is None else x for x in v], dtype=np.float64) if isinstance(v, list) else \
        np.asarray(v, dtype=np.float64)


@pytest.fixture(scope="module")
def core():
    """The default model converted exactly as the app does, and the first test digit."""
    model, card = zoo.load(zoo.DEFAULT_MODEL)
    imgs, labels = data.load_uint8("mnist", "train")
    calib = card.preprocess.batch_from_uint8(np.asarray(imgs[:512]))
    snn = ttfs_core.convert(model, calib, margin=0.5, input_range=card.input_range)
    test, test_labels = data.load_uint8("mnist", "test")
    x = card.preprocess.batch_from_uint8(np.asarray(test[:8]))
    return model, snn, x, test_labels


# --- pure parts -----------------------------------------------------------------------------------------------
def test_timeline_positions_and_cursor():
    tl = timeline.Timeline(("input", "a", "b"), (0.0, 1.0, 3.0), (1.0, 2.0, 0.0), steps_per_window=10)
    assert tl.end == 3.0 and tl.steps == 30 and tl.default_mode() == timeline.ABSOLUTE
    off = np.array([0.0, 1.0, 2.0, -0.5, np.inf])
    np.testing.assert_allclose(tl.positions(1, off, timeline.STRETCHED), [1.0, 1.5, 2.0, 0.5, np.inf])
    np.testing.assert_allclose(tl.positions(1, off, timeline.ABSOLUTE), [1.0, 2.0, 3.0, 0.5, np.inf])
    assert np.isfinite(tl.positions(2, np.zeros(3), timeline.STRETCHED)).all()  # a window of length 0
    assert list(tl.fired_by(1, off, 15)) == [True, True, False, True, False]
    assert tl.cursor_t(15) == pytest.approx(2.0) and tl.cursor_x(15, timeline.STRETCHED) == 1.5
    assert timeline.Timeline(("input", "a"), (0.0, 1.0), (1.0, 0.01)).default_mode() == timeline.STRETCHED


def test_mosaic_tiles_channels_and_vectors():
    shape = (3, 2, 2)
    m = figures.mosaic(np.arange(12.0), shape)
    idx = figures.mosaic_index(shape)
    assert m.shape == idx.shape
    assert sorted(idx[idx >= 0].tolist()) == list(range(12))
    np.testing.assert_array_equal(m[idx >= 0], idx[idx >= 0])  # every cell shows its own neuron
    assert np.isnan(m[idx < 0]).all()
    assert figures.mosaic(np.arange(10.0), (10,)).shape == (3, 4)


# --- app.py -------------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_app_shows_the_core_results(core):
    model, snn, x, labels = core
    at = run(APP)
    res = snn.run(x[:1])
    logits = charts(at)["logits"]["data"]
    with torch.no_grad():
        ann = model(x[:1])[0].double().numpy()
    np.testing.assert_allclose(arr(logits[0]["y"]), ann, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(arr(logits[1]["y"]), res.logits[0].double().numpy(), rtol=1e-6, atol=1e-6)
    table = at.dataframe[0].value
    assert list(table["neurons"]) == [row["neurons"] for row in snn.summary()]
    assert list(table["spikes"][:-1]) == [lr.spikes for lr in res.layers]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Decision time"] == f"{snn.decision_time:.4g} τ_c"
    assert metrics["Smallest window"] == f"{snn.smallest_window:.3g} τ_c"
    assert snn.smallest_window > 1  # the paper's rescaling: windows of the order of the activations
    assert not at.error


@pytest.mark.integration
def test_app_widgets_change_model_image_and_settings():
    at = run(APP)
    at.selectbox(key=state.widget_key(state.MODEL)).set_value("zoo:fc").run()
    ok(at)
    assert at.session_state[state.MODEL] == "zoo:fc"
    assert len(at.dataframe[0].value) == 2  # the paper's FC: one spiking layer and the readout
    at.button(key="gallery_3").click().run()  # the gallery's first 0 (MNIST's test set starts 7, 2, 1, 0)
    ok(at)
    assert at.session_state[state.TEST_INDEX] == 3
    assert any("MNIST test image #3" in c.value for c in at.caption)
    at.number_input(key=state.widget_key(state.TEST_INDEX)).set_value(7).run()
    assert ok(at).session_state[state.TEST_INDEX] == 7
    # The settings are a form: nothing changes until Apply, then once (a rerun and a conversion per key press on
    # the ζ slider lost the presses made during one).
    for value in (0.45, 0.4, 0.35):
        at.slider(key=state.widget_key(state.MARGIN)).set_value(value).run()
        assert ok(at).session_state[state.MARGIN] == 0.5
    at.slider(key=state.widget_key(state.MARGIN)).set_value(1.0)
    next(b for b in at.button if b.label == "Apply").click().run()
    assert ok(at).session_state[state.MARGIN] == 1.0
    assert at.slider(key=state.widget_key(state.MARGIN)).value == 1.0
    assert not at.error


@pytest.mark.integration
def test_fashion_models_show_fashion_images_and_class_names():
    """A Fashion-MNIST model opens on its own test set, with class names; the dataset can be switched."""
    at = run(APP)
    at.selectbox(key=state.widget_key(state.MODEL)).set_value("zoo:lenet5_fashion").run()
    ok(at)
    images, labels = data.load_uint8("fashion", "test")
    assert any("Fashion-MNIST test images" in m.value for m in at.markdown)
    assert at.button(key="gallery_0").label == "#0 (9 · Ankle boot)"  # the first test image is an ankle boot
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["True label"] == "9 · Ankle boot"
    model, card = zoo.load("lenet5_fashion")
    with torch.no_grad():
        pred = int(model(torch.from_numpy(images[:1].astype(np.float32) / 255).unsqueeze(1)).argmax())
    assert metrics["ANN predicts"] == metrics["SNN predicts"] == f"{pred} · {data.dataset('fashion').class_name(pred)}"
    chooser = at.selectbox(key=state.widget_key(state.DATASET))
    assert chooser.format_func("") == "the model's own (Fashion-MNIST)"
    chooser.set_value("mnist").run()  # MNIST digits through it
    ok(at)
    assert any("MNIST test image #0 (label 7)" in c.value for c in at.caption)
    assert {m.label: m.value for m in at.metric}["True label"] == "7"


@pytest.mark.integration
def test_the_residual_cnn_is_selectable_and_the_pages_draw_it():
    """The bundled residual CNN (layers that read two layers) is in the model chooser; the main page, the spike
    raster and ANN vs SNN draw it without falling back to the default model, and agree with the core."""
    model, card = zoo.load("resnet_mnist")
    imgs, _ = data.load_uint8("mnist", "train")
    snn = ttfs_core.convert(model, card.preprocess.batch_from_uint8(np.asarray(imgs[:512])), margin=0.5,
                            input_range=card.input_range)
    names = [layer.name for layer in snn.layers]
    two = [layer.name for layer in snn.layers if len(layer.inputs) == 2]
    assert two
    test, _ = data.load_uint8("mnist", "test")
    x = card.preprocess.batch_from_uint8(np.asarray(test[:1]))
    res = snn.run(x)
    at = run(APP)
    chooser = at.selectbox(key=state.widget_key(state.MODEL))
    assert "zoo:resnet_mnist" in chooser.options or f"{card.title} (bundled)" in chooser.options
    chooser.set_value("zoo:resnet_mnist").run()
    ok(at)
    assert at.session_state[state.MODEL] == "zoo:resnet_mnist" and not at.error
    table = at.dataframe[0].value
    assert len(table) == len(snn.layers) + 1 and list(table["spikes"][:-1]) == [lr.spikes for lr in res.layers]
    assert [" + " in r for r in table["reads"][:-1]] == [n in two for n in names]  # the additions read two layers
    metrics = {m.label: m.value for m in at.metric}
    with torch.no_grad():
        pred = str(int(model(x).argmax()))
    assert metrics["ANN predicts"] == metrics["SNN predicts"] == pred
    np.testing.assert_allclose(arr(charts(at)["logits"]["data"][1]["y"]), res.logits[0].double().numpy(),
                               rtol=1e-6, atol=1e-6)
    session = {state.MODEL: "zoo:resnet_mnist"}
    # the raster: every window's spikes; the feature maps of a layer that reads two layers
    at = run(RASTER, **session, **{state.AXIS: timeline.ABSOLUTE})
    assert at.session_state[state.MODEL] == "zoo:resnet_mnist" and not at.error
    spikes = spike_traces(live_spec(at)["raster"])
    assert len(spikes) == 1 + len(snn.layers)
    for trace, lr in zip(spikes[1:], res.layers):
        idx = arr(trace["customdata"])[:, 0].astype(int)
        np.testing.assert_allclose(arr(trace["x"]), lr.t_min + lr.offsets[0].double().numpy().ravel()[idx],
                                   rtol=0, atol=1e-9)
    at.selectbox(key=state.widget_key(state.LAYER)).set_value(two[0]).run()
    assert two[0] in live_spec(ok(at))["maps"]["layout"]["annotations"][1]["text"]
    # ANN vs SNN on this input and the first 1,000 test images: the same predictions, no early spike
    at = run(COMPARE, **session)
    assert at.session_state[state.MODEL] == "zoo:resnet_mnist" and not at.error
    assert len(charts(at)["scatter"]["data"][0::2]) == len(snn.layers)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Agreement"] == "100.0 %" and metrics["Early spikes"] == "0"
    assert metrics["ANN accuracy"] == metrics["SNN accuracy"]


# --- pages/1: spike raster ----------------------------------------------------------------------------------
@pytest.mark.integration
def test_raster_spike_times_are_the_simulators(core):
    _, snn, x, _ = core
    res = snn.run(x[:1])
    at = run(RASTER, **{state.AXIS: timeline.ABSOLUTE})  # opened directly: falls back to the default model/image
    fig = live_spec(at)["raster"]
    tl = timeline.timeline_of(snn)
    spikes = spike_traces(fig)
    assert len(spikes) == 1 + len(snn.layers)
    np.testing.assert_allclose(arr(spikes[0]["x"]), res.input_times[0].double().numpy().ravel(), atol=1e-12)
    for trace, lr in zip(spikes[1:], res.layers):
        idx = arr(trace["customdata"])[:, 0].astype(int)
        exact = lr.t_min + lr.offsets[0].double().numpy().ravel()[idx]  # float64 from the full-precision offsets
        np.testing.assert_allclose(arr(trace["x"]), exact, rtol=0, atol=1e-12)
        rounded = lr.spike_times[0].double().numpy().ravel()[idx]  # the core's absolute times, in the model's dtype
        np.testing.assert_allclose(arr(trace["x"]), rounded, rtol=2 * float(torch.finfo(lr.offsets.dtype).eps))
        assert len(idx) == lr.spikes  # every spike drawn (no decimation on the bundled models)
    # the stretched axis: layer n's window on [n, n + 1], positions from offsets / window
    at.radio(key=state.widget_key(state.AXIS)).set_value(timeline.STRETCHED).run()
    spikes = spike_traces(live_spec(ok(at))["raster"])
    for n, (trace, lr) in enumerate(zip(spikes[1:], res.layers), start=1):
        idx = arr(trace["customdata"])[:, 0].astype(int)
        expected = n + (lr.offsets[0].double().numpy().ravel() / lr.window)[idx]
        np.testing.assert_allclose(arr(trace["x"]), expected, atol=1e-12)
    # the paper's rescaling (the default) keeps LeNet's windows within 10× of each other: the true axis is the default;
    # the positive-part fast mode shrinks them ~100× with depth, so the stretched axis is its default
    assert tl.default_mode() == timeline.ABSOLUTE
    assert max(snn.windows) <= timeline.STRETCH_RATIO * min(snn.windows)
    model, _ = zoo.load("lenet5")
    fast = ttfs_core.convert(model, data.load("mnist", "train")[0][:256], rescale="positive")
    assert timeline.timeline_of(fast).default_mode() == timeline.STRETCHED


@pytest.mark.integration
def test_raster_marks_early_spikes():
    at = run(RASTER, **{state.MARGIN: -0.6, state.TEST_INDEX: 3, state.AXIS: timeline.STRETCHED})
    model, card = zoo.load(zoo.DEFAULT_MODEL)
    imgs, _ = data.load_uint8("mnist", "train")
    snn = ttfs_core.convert(model, card.preprocess.batch_from_uint8(np.asarray(imgs[:512])), margin=-0.6,
                            input_range=card.input_range)
    test, _ = data.load_uint8("mnist", "test")
    res = snn.run(card.preprocess.batch_from_uint8(np.asarray(test[3:4])))
    assert res.early_spikes > 0
    rings = [t for t in live_spec(at)["raster"]["data"] if t.get("name") == figures.EARLY]
    assert sum(len(arr(t["x"])) for t in rings) == res.early_spikes
    early_at = [n for n, lr in enumerate(res.layers, start=1) if lr.early_spikes]  # stretched: window n on [n, n+1]
    assert len(rings) == len(early_at)
    assert all((arr(t["x"]) < n).all() for n, t in zip(early_at, rings))  # drawn in the window before their own
    # on the true time axis (the default under the paper's rescaling) they lie before their layer's t_min
    at.radio(key=state.widget_key(state.AXIS)).set_value(timeline.ABSOLUTE).run()
    rings = [t for t in live_spec(ok(at))["raster"]["data"] if t.get("name") == figures.EARLY]
    early_layers = [lr for lr in res.layers if lr.early_spikes]
    assert len(rings) == len(early_layers)
    assert all((arr(t["x"]) < lr.t_min).all() for t, lr in zip(rings, early_layers))


@pytest.mark.integration
def test_raster_time_cursor_and_feature_maps(core):
    """The browser draws any cursor step from the spec alone: per neuron its first fired step, per layer the
    fired-by counts. Both equal the server's own definition (`Timeline.fired_by` on the simulator's offsets) at
    every step, and the maps the browser builds from them equal the server's feature-map figure at that step."""
    _, snn, x, _ = core
    res = snn.run(x[:1])
    at = run(RASTER)
    tl = timeline.timeline_of(snn)
    spec = live_spec(at)
    assert spec["cursor"] == tl.steps and spec["steps"] == tl.steps  # starts with everything fired
    assert len(spec["labels"]) == len(spec["cursor_x"]) == tl.steps + 1
    assert not spec["raster"]["layout"].get("sliders") and not spec["raster"].get("frames")  # one cursor: the page's
    spikes = timeline.spikes_of(snn, res)
    offsets = [res.input_times[0].double().numpy().ravel()] + [lr.offsets[0].double().numpy().ravel()
                                                                for lr in res.layers]
    for n, off in enumerate(offsets):
        fired = np.stack([tl.fired_by(n, off, k) for k in range(tl.steps + 1)])
        assert spec["counts"][n] == fired.sum(1).tolist()
    first = spec["counts"][1]
    assert first[tl.steps_per_window] == 0 < first[2 * tl.steps_per_window] == snn.layers[0].neurons
    lr = res.layers[0]
    k = tl.steps_per_window + int(np.floor(np.quantile(offsets[1] / lr.window, 0.25) * tl.steps_per_window))
    for panel in spec["panels"]:
        n = panel["layer"]
        kfire = panel["kfire"].astype(np.int64)
        np.testing.assert_array_equal(kfire <= k, tl.fired_by(n, offsets[n], k))
        # the browser's map at step k, built as timeline.js does, against the server's figure at step k
        cells = panel["cells"].reshape(panel["rows"], panel["cols"])
        safe = np.where(cells >= 0, cells, 0)
        z = np.where((cells >= 0) & (kfire[safe] <= k), panel["act"][safe], np.nan)
        server = figures.feature_maps(spikes[0], spikes[n], n, tl, k) if n else \
            figures.feature_maps(spikes[0], spikes[1], 1, tl, k)
        expected = server.data[3 if n else 1].z
        np.testing.assert_allclose(z, np.asarray(expected, dtype=np.float64), rtol=1e-6, atol=1e-6, equal_nan=True)
    fired = spec["counts"][1][k]
    assert 0 < fired < snn.layers[0].neurons
    # the cursor's x at every step is the timeline's, in the axis shown
    np.testing.assert_allclose(spec["cursor_x"], [tl.cursor_x(j, tl.default_mode()) for j in range(tl.steps + 1)])
    # another layer: a new spec, the browser keeps its cursor (the id ignores it)
    at.selectbox(key=state.widget_key(state.LAYER)).set_value(snn.layers[1].name).run()
    other = live_spec(ok(at))
    assert "conv 4" in other["maps"]["layout"]["annotations"][1]["text"] and other["id"] != spec["id"]
    assert other["panels"][1]["layer"] == 2


# --- pages/2: membrane traces -------------------------------------------------------------------------------
def test_forced_spikes_are_flagged_in_the_simulators_precision(core):
    """A float32 forced offset is the window rounded to float32, just below the float64 window, so the flags were
    once computed false for every forced hidden neuron (2,807 of conv 0 on digit #0). The raster's flags, the
    trace's cross and the core's count are one computation."""
    _, snn, x, _ = core
    res = snn.run(x[:1])
    assert res.layers[0].offsets.dtype == torch.float32
    spikes = timeline.spikes_of(snn, res)
    for s, lr in zip(spikes[1:], res.layers):
        assert int(s.forced.sum()) == lr.forced
        np.testing.assert_array_equal(s.forced, (s.activations == 0) & np.isfinite(s.offsets))
    assert res.layers[0].forced > 0
    layer = snn.layers[0]
    flat = int(np.flatnonzero(spikes[1].forced)[0])
    tr = snn.trace(x[:1], layer.name, timeline.multi_index(layer.shape, flat), result=res)
    assert tr.forced and float(tr.potential[-1]) < tr.theta  # forced: V never reached θ


@pytest.mark.integration
def test_membrane_traces_are_the_cores(core):
    _, snn, x, _ = core
    res = snn.run(x[:1])
    at = run(TRACES)
    fig = charts(at)["membrane"]
    k = at.session_state[state.TRACE_K]
    act = res.layers[0].activations[0].double().numpy().ravel()
    top = figures.spread_neurons(act, tuple(snn.layers[0].shape), k)  # spread over the active ones
    assert len({float(act[i]) for i in top}) == k  # the default traces are not copies of one
    v_traces = [t for t in fig["data"] if t.get("name", "").startswith("neuron")]
    assert len(v_traces) == k
    for t, flat in zip(v_traces, top):
        tr = snn.trace(x[:1], snn.layers[0].name, timeline.multi_index(snn.layers[0].shape, flat), result=res)
        np.testing.assert_allclose(arr(t["x"]), tr.times.double().numpy(), atol=1e-12)
        np.testing.assert_allclose(arr(t["y"]), tr.potential.double().numpy(), atol=1e-9)
    # another layer, one neuron by index, with the clock-driven trace
    layer = snn.layers[1]
    at.selectbox(key=state.widget_key(state.TRACE_LAYER)).set_value(layer.name).run()
    at.radio(key=state.widget_key(state.TRACE_PICK)).set_value("by index").run()
    at.number_input(key="_w_neuron_0").set_value(3).run()
    at.number_input(key="_w_neuron_1").set_value(4).run()
    at.radio(key=state.widget_key(state.TRACE_CLOCK)).set_value("steps").run()
    at.select_slider(key=state.widget_key(state.TRACE_STEPS)).set_value(16).run()
    ok(at)
    assert at.session_state[state.TRACE_NEURONS] == (layer.name, [int(np.ravel_multi_index((3, 4, 0), layer.shape))])
    fig = charts(at)["membrane"]
    tr = snn.trace(x[:1], layer.name, (3, 4, 0), result=res, steps=16)
    v = [t for t in fig["data"] if t.get("name", "").startswith("neuron")]
    assert len(v) == 1
    np.testing.assert_allclose(arr(v[0]["y"]), tr.potential.double().numpy(), atol=1e-9)
    stepped = [t for t in fig["data"] if "with a clock" in str(t.get("hovertemplate", ""))]
    np.testing.assert_allclose(arr(stepped[0]["y"]), tr.stepped_potential.double().numpy(), atol=1e-9)
    row = at.dataframe[0].value.iloc[0]
    assert row["spike with a clock"] == pytest.approx(float(tr.stepped_spike_time))
    # the core's absolute times are rounded to the model's dtype (float32 here)
    assert row["spike t (absolute)"] == pytest.approx(float(res.layers[1].spike_times[0, 3, 4, 0]), rel=1e-6)
    at.radio(key=state.widget_key(state.TRACE_CLOCK)).set_value("dt").run()
    at.select_slider(key=state.widget_key(state.TRACE_DT)).set_value(0.003).run()
    stepped = [t for t in charts(ok(at))["membrane"]["data"] if "with a clock" in str(t.get("hovertemplate", ""))]
    by_dt = snn.trace(x[:1], layer.name, (3, 4, 0), result=res, dt=0.003)
    np.testing.assert_allclose(arr(stepped[0]["y"]), by_dt.stepped_potential.double().numpy(), atol=1e-9)
    # the readout and the feature-map picker
    at.selectbox(key=state.widget_key(state.TRACE_LAYER)).set_value(snn.output.name).run()
    at.radio(key=state.widget_key(state.TRACE_PICK)).set_value("from the feature map").run()
    ok(at)
    assert "picker" in " ".join(el.proto.id for el in at.get("plotly_chart"))


# --- pages/3: ANN vs SNN ------------------------------------------------------------------------------------
@pytest.mark.integration
def test_ann_vs_snn_figures_and_test_split(core):
    model, snn, x, labels = core
    at = run(COMPARE)
    comps = ttfs_core.compare(model, snn, x[:1])
    fig = charts(at)
    points = fig["scatter"]["data"][0::2]
    assert len(points) == len(snn.layers)
    for t, c in zip(points, comps):
        np.testing.assert_allclose(arr(t["x"]), c.ann.double().numpy().ravel(), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(arr(t["y"]), c.snn.double().numpy().ravel(), rtol=1e-6, atol=1e-9)
    table = at.dataframe[0].value
    np.testing.assert_allclose(table["max |SNN − ANN|"], [c.max_abs_error for c in comps], rtol=1e-6)
    # the certificate table is this input's: every neuron settled by a stage or searched, as the core says
    cert = at.dataframe[1].value
    res = snn.run(x[:1])
    assert list(cert["searched exactly"]) == [lr.searched for lr in res.layers]
    stages = [c for c in cert.columns if c.startswith("settled by")]
    assert stages and list(cert[stages].sum(axis=1) + cert["searched exactly"]) == [lr.neurons for lr in res.layers]
    assert any("searched exactly" in c.value for c in at.caption)
    metrics = {m.label: m.value for m in at.metric}
    test, test_labels = data.load_uint8("mnist", "test")
    with torch.no_grad():  # the ANN's accuracy on the first 1,000 test images (the page's default), computed here
        ann = model(torch.from_numpy(test[:1000].astype(np.float32) / 255).unsqueeze(1)).argmax(1)
    expected = f"{100 * float((ann == torch.from_numpy(test_labels[:1000].copy())).double().mean()):.1f} %"
    assert metrics["ANN accuracy"] == metrics["SNN accuracy"] == expected
    assert metrics["Agreement"] == "100.0 %"
    assert any(h.value == "The MNIST test set" for h in at.header)
    # all 10,000 on request: the counts follow (the first 1,000 are reused from the cache)
    at.radio(key=state.widget_key(state.EVAL_IMAGES)).set_value(10_000).run()
    ok(at)
    card_acc = zoo.load(zoo.DEFAULT_MODEL)[1].test_accuracy  # the card's accuracy is on all 10,000
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["ANN accuracy"] == metrics["SNN accuracy"] == f"{100 * card_acc:.1f} %"
    assert metrics["Agreement"] == "100.0 %"


@pytest.mark.integration
def test_early_spikes_open_their_membrane_trace():
    at = run(APP, **{state.MARGIN: -0.6})  # windows far below the calibration maximum: early spikes
    at.switch_page("pages/3_ANN_vs_SNN.py").run()
    rows = next(d.value for d in ok(at).dataframe if "early by (τ_c)" in d.value.columns)
    assert len(rows) > 0
    first = next(b for b in at.button if b.key and b.key.startswith("early_"))
    first.click().run()
    ok(at)
    assert at.title[0].value == "Membrane traces"  # switched page
    assert at.session_state[state.TRACE_PICK] == "by index"
    assert at.session_state[state.TEST_INDEX] == int(rows.iloc[0]["image"])
    assert at.session_state[state.TRACE_LAYER] == rows.iloc[0]["layer name"]


# --- pages/4: robustness -----------------------------------------------------------------------------------
@pytest.mark.integration
def test_robustness_sweeps_are_the_cores(core):
    from ttfs_core import robustness

    model, snn, _, labels = core
    at = run(ROBUSTNESS, **{state.ROBUST_IMAGES: 100})
    figs = charts(at)
    test, _ = data.load_uint8("mnist", "test")
    x = data.MNIST_PREPROCESS.batch_from_uint8(np.asarray(test[:100]))
    y = torch.from_numpy(np.asarray(labels[:100]).copy())
    expected = robustness.time_bits_sweep(snn, x, y, bits=[2, 4, 8], model=model)
    shown = figs["sweep_time_bits"]["data"]
    xs = list(arr(shown[0]["x"]))
    for p in expected:
        i = xs.index(p.value)
        assert arr(shown[0]["y"])[i] == pytest.approx(100 * p.accuracy)
        assert arr(shown[1]["y"])[i] == pytest.approx(100 * p.agreement)
    early = figs["sweep_margin"]["data"][2]
    assert arr(early["y"])[0] > 0  # ζ = −0.7: early spikes
    assert "τ_c" in figs["sweep_jitter"]["layout"]["xaxis"]["title"]["text"]  # jitter in τ_c by default
    at.toggle(key=state.widget_key(state.ROBUST_RELATIVE)).set_value(True).run()
    assert "B_n" in charts(ok(at))["sweep_jitter"]["layout"]["xaxis"]["title"]["text"]


# --- uploads ------------------------------------------------------------------------------------------------
GARBAGE = {
    "random bytes": np.random.default_rng(0).bytes(4096),
    "a text file": b"hello, this is not a model\n" * 20,
    "a pickle": pickle.dumps({"weights": [1, 2, 3], "evil": print}),
    "a zip of arrays": (ROOT / "assets" / "mnist.npz").read_bytes()[:4000],
}


@pytest.mark.integration
@pytest.mark.parametrize("kind", list(GARBAGE))
def test_garbage_model_uploads_give_a_message(kind):
    at = AppTest.from_function(upload_script, default_timeout=TIMEOUT)
    at.session_state["test_kind"] = kind
    at.session_state["test_bytes"] = GARBAGE[kind]
    at.session_state["test_name"] = "model.pt"
    at.run()
    ok(at)
    assert len(at.error) == 1 and at.error[0].value
    assert at.session_state[state.MODEL] == state.DEFAULT_MODEL  # nothing selected


def _saved(model, example, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "export":
        torch.export.save(torch.export.export(model.eval(), (example,)), buf)
    else:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.script(model.eval()), buf)
    return buf.getvalue()


@pytest.mark.integration
def test_models_that_load_but_do_not_fit_give_a_message():
    from torch import nn

    sigmoid = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.Sigmoid(), nn.Linear(16, 10))
    rgb = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 10))
    cases = [(_saved(sigmoid, torch.zeros(1, 1, 28, 28), "export"), "sigmoid.pt2", ["sigmoid", "not supported"]),
             (_saved(rgb, torch.zeros(1, 3, 32, 32), "script"), "rgb.pt", ["3×32×32", "28×28 grayscale"])]
    for blob, name, phrases in cases:
        at = AppTest.from_function(upload_script, default_timeout=TIMEOUT)
        at.session_state["test_kind"], at.session_state["test_bytes"], at.session_state["test_name"] = "x", blob, name
        at.run()
        ok(at)
        assert len(at.error) == 1 and all(p in at.error[0].value for p in phrases), at.error[0].value
        assert at.session_state[state.MODEL] == state.DEFAULT_MODEL


@pytest.mark.integration
def test_a_state_dict_upload_is_loaded_converted_and_selected(tmp_path):
    from safetensors.torch import save

    at = AppTest.from_function(upload_script, default_timeout=TIMEOUT)
    at.session_state["test_kind"] = "state dict"
    at.session_state["test_bytes"] = save(zoo.load("fc")[0].state_dict())
    at.session_state["test_name"] = "mine.safetensors"
    at.session_state["test_arch"] = "fc"
    at.run()
    ok(at)
    assert not at.error
    key = at.session_state[state.MODEL]
    assert key.startswith("upload:")
    # the main page then runs on the uploaded model; the pages too
    upload = at.session_state[state.UPLOADED_MODELS]
    app = run(APP, **{state.MODEL: key, state.UPLOADED_MODELS: upload})
    assert not app.error and "mine.safetensors" in app.selectbox(key=state.widget_key(state.MODEL)).format_func(key)


@pytest.mark.integration
def test_an_upload_with_more_classes_than_the_dataset_shows_their_numbers():
    """A 12-class model predicting class 11 on a Fashion image: classes the dataset does not name are numbers."""
    from torch import nn

    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 12), nn.ReLU(), nn.Linear(12, 12))
    with torch.no_grad():
        for layer in (model[1], model[3]):
            layer.weight.zero_()
            layer.bias.zero_()
        model[1].bias[11], model[3].weight[11, 11] = 1.0, 1.0  # class 11 wins on every input
    at = AppTest.from_function(upload_script, default_timeout=TIMEOUT)
    at.session_state["test_kind"], at.session_state["test_name"] = "x", "twelve.pt2"
    at.session_state["test_bytes"] = _saved(model, torch.zeros(1, 1, 28, 28), "export")
    at.run()
    key = ok(at).session_state[state.MODEL]
    app = run(APP, **{state.MODEL: key, state.UPLOADED_MODELS: at.session_state[state.UPLOADED_MODELS],
                      state.DATASET: "fashion"})
    metrics = {m.label: m.value for m in ok(app).metric}
    assert metrics["ANN predicts"] == metrics["SNN predicts"] == "11"
    assert metrics["True label"] == "9 · Ankle boot"
    assert controls.class_label("fashion", 11) == "11" and controls.class_label("mnist", 4) == "4"


@pytest.mark.integration
def test_a_broken_upload_in_the_session_falls_back_to_the_default_model():
    broken = uploads.UploadedModel("upload:broken", "broken.pt", b"not a model", None)
    at = run(APP, **{state.MODEL: "upload:broken", state.UPLOADED_MODELS: {"upload:broken": broken}})
    assert len(at.error) == 1 and "default model" in at.error[0].value
    assert at.session_state[state.MODEL] == state.DEFAULT_MODEL
    assert at.get("plotly_chart")  # and it kept working


def _png(size=(28, 28), mode="L", colour=0) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format="PNG")
    return buf.getvalue()


def test_image_uploads():
    pre = data.MNIST_PREPROCESS
    x, notes = uploads.read_image(_png(), pre)
    assert x.shape == (1, 1, 28, 28) and not notes
    x, notes = uploads.read_image(_png((300, 100), "RGB", (255, 255, 255)), pre)
    assert x.shape == (1, 1, 28, 28) and any("resized" in n for n in notes) and any("inverted" in n for n in notes)
    assert float(x.max()) == 0.0  # white paper became black background
    for garbage in (GARBAGE["random bytes"], GARBAGE["a text file"], GARBAGE["a pickle"], b""):
        with pytest.raises(ValueError, match="image"):
            uploads.read_image(garbage, pre)
    with pytest.raises(ValueError, match="pixels"):
        uploads.read_image(_png((2, 2)), pre)


@pytest.mark.integration
def test_an_uploaded_image_is_used_by_every_page(core):
    model, snn, _, _ = core
    data_ = _png((56, 56), "L", 255)
    up = uploads.UploadedImage("upload:white", "white.png", data_, True)
    session = {state.IMAGE: "upload:white", state.UPLOADED_IMAGES: {"upload:white": up}}
    at = run(APP, **session)
    assert not at.error and any("white.png" in c.value for c in at.caption)
    x, _ = uploads.read_image(data_, data.MNIST_PREPROCESS, invert=True)
    np.testing.assert_allclose(arr(charts(at)["logits"]["data"][1]["y"]), snn.run(x).logits[0].double().numpy(),
                               atol=1e-6)
    at.checkbox(key="_w_invert_upload:white").uncheck().run()  # as is: a white image
    x, _ = uploads.read_image(data_, data.MNIST_PREPROCESS, invert=False)
    np.testing.assert_allclose(arr(charts(ok(at))["logits"]["data"][1]["y"]), snn.run(x).logits[0].double().numpy(),
                               atol=1e-6)
    for page in (RASTER, TRACES, COMPARE):
        assert not run(page, **session).error


@pytest.mark.integration
def test_the_redraw_benchmark_runs():
    """`python -m ttfs_ui.bench` (used by the benchmark) still drives the pages; no timing is asserted."""
    from ttfs_ui import bench

    out = bench.redraw_times({"traces": bench.CASES["traces: change k most active"]})
    assert out["traces"]["runs"] == 5 and out["traces"]["median_s"] > 0


# --- many users ---------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_sessions_uploading_the_same_bytes_see_their_own_file_names():
    from safetensors.torch import save

    blob = save(zoo.load("fc")[0].state_dict())
    keys = []
    for name in ("alice.safetensors", "bob.safetensors"):
        up = AppTest.from_function(upload_script, default_timeout=TIMEOUT)
        up.session_state["test_kind"], up.session_state["test_bytes"] = "state dict", blob
        up.session_state["test_name"], up.session_state["test_arch"] = name, "fc"
        up.run()
        key = ok(up).session_state[state.MODEL]
        app = run(APP, **{state.MODEL: key, state.UPLOADED_MODELS: up.session_state[state.UPLOADED_MODELS]})
        label = app.selectbox(key=state.widget_key(state.MODEL)).format_func(key)
        captions = " ".join(c.value for c in app.caption)
        other = "alice" if name.startswith("bob") else "bob"
        assert name in label and other not in label and other not in captions
        keys.append(key)
    assert keys[0] == keys[1]  # one shared cache entry for the same bytes


def test_the_cached_network_is_shared_read_only():
    from ttfs_ui import cache

    entry = cache.zoo_model(zoo.DEFAULT_MODEL)
    snn = cache.network(cache.Settings(entry.key, 0.5, ALPHA, SUM), entry)
    assert snn is cache.network(cache.Settings(entry.key, 0.5, ALPHA, SUM), entry)
    with pytest.raises(FrozenInstanceError):
        snn.margin = 0.1
    with pytest.raises(FrozenInstanceError):
        snn.layers[0].window = 1.0
    with pytest.raises(FrozenInstanceError):
        snn.layers[0].inputs[0].J = None
    with pytest.raises(AttributeError):
        snn.layers.append(snn.layers[0])  # a tuple


def test_a_session_keeps_a_bounded_number_of_uploads():
    from ttfs_ui import controls

    store: dict = {}
    for i in range(controls.MAX_SESSION_IMAGES + 5):
        controls.remember(store, f"k{i}", i, controls.MAX_SESSION_IMAGES)
    assert len(store) == controls.MAX_SESSION_IMAGES and f"k{controls.MAX_SESSION_IMAGES + 4}" in store
    assert "k0" not in store  # the oldest are forgotten, the newest (selected) kept


# --- what the pages say and show -----------------------------------------------------------------------------
@pytest.mark.integration
def test_the_early_spike_note_stays_clear_of_the_controls():
    """At ζ = −0.7 the raster's note on early spikes ran through Plotly's Play slider. Play is the page's own
    now (no Plotly slider or buttons), and the note sits below the axis title, inside the bottom margin."""
    at = run(RASTER, **{state.MARGIN: -0.7})
    fig = live_spec(at)["raster"]
    layout = fig["layout"]
    assert not layout.get("sliders") and not layout.get("updatemenus")
    [note] = [a for a in layout["annotations"] if "early spikes" in str(a.get("text", ""))]
    plot = layout["height"] - layout["margin"]["t"] - layout["margin"]["b"]
    top = -note["y"] * plot  # pixels below the plot area
    assert top >= 45 and top + 2 * note["font"]["size"] <= layout["margin"]["b"]


@pytest.mark.integration
def test_the_input_panel_is_white_on_black_as_its_text_says():
    """The input panel drew black strokes on white while the explanation says the black background fills in."""
    at = run(RASTER)
    maps = live_spec(at)["maps"]["data"]
    scale = maps[1]["colorscale"]
    assert scale[0][1] == "black" and scale[-1][1] == "white"  # x̂ = 0 (background) black, x̂ = 1 white
    assert "black background fills in" in text.EXPLANATIONS["feature_maps"][1]


def test_layer_labels_on_the_raster_do_not_overlap():
    """VGG-like sizes (a 784-pixel input, 50,000-neuron conv layers, small dense layers at the end): five labels
    used to fall in one blob. Every layer now gets at least MIN_GROUP of the height: labels ≥ 20 px apart."""
    sizes = [784, 50_176, 50_176, 25_088, 12_544, 12_544, 6_272, 512, 512, 10]
    tl = timeline.Timeline(tuple(f"l{i}" for i in range(len(sizes))), tuple(float(i) for i in range(len(sizes))),
                           (1.0,) * len(sizes))
    spikes = [timeline.LayerSpikes(f"l{i}", f"conv {i}", "conv", (n,), np.full(n, 0.5), np.full(n, 0.5),
                                   np.zeros(n, dtype=bool), 1.0, 1.0) for i, n in enumerate(sizes)]
    fig = figures.raster(spikes, tl, timeline.ABSOLUTE, tl.steps)
    ya = fig.layout.yaxis
    plot = fig.layout.height - fig.layout.margin.t - fig.layout.margin.b
    px = np.diff(np.asarray(ya.tickvals)) / (ya.range[1] - ya.range[0]) * plot
    assert px.min() >= 20
    # dots stay inside their layer's group
    for trace, (y0, y1) in zip([t for t in fig.data if t.meta is not None], figures.raster_groups(spikes)):
        assert y0 - 0.01 * (y1 - y0) <= float(np.min(trace.y)) and float(np.max(trace.y)) < y1  # (float32)


@pytest.mark.integration
def test_a_network_that_is_not_exact_says_so_on_every_page():
    """At ζ = −0.7 the main page showed a green "agrees" beside a logit difference of 2.13 and 733 early spikes."""
    at = run(APP, **{state.MARGIN: -0.7})
    assert any("Not exact for this input" in e.value for e in at.error)
    snn_metric = next(m for m in at.metric if m.label == "SNN predicts")
    assert snn_metric.proto.delta in ("same class, NOT exact", "DIFFERS")
    for page in (RASTER, TRACES, COMPARE):
        assert any("Not exact for this input" in e.value for e in run(page, **{state.MARGIN: -0.7}).error), page
    # "show the worst neuron": the earliest early spike, opened on the membrane page
    at = run(TRACES, **{state.MARGIN: -0.7})
    at.button(key="banner_worst").click().run()
    layer, (flat,) = ok(at).session_state[state.TRACE_NEURONS]
    first, earliest = first_early_layer(-0.7)
    assert layer == first.name and flat == earliest
    assert float(first.offsets[0].flatten()[flat]) < 0  # an early spike
    assert at.session_state[state.TRACE_LAYER] == layer and at.session_state[state.TRACE_PICK] == "by index"
    # the exact default shows no banner
    assert not any("Not exact" in e.value for e in run(APP).error)


@pytest.mark.integration
def test_b1_has_no_rescaling_and_readout_neurons_are_classes(core):
    _, snn, _, _ = core
    at = run(TRACES, **{state.NEURON: "b1"})
    assert at.radio(key=state.widget_key(state.RESCALE)).disabled
    assert not run(TRACES).radio(key=state.widget_key(state.RESCALE)).disabled
    at = run(TRACES)
    at.selectbox(key=state.widget_key(state.TRACE_LAYER)).set_value(snn.output.name).run()
    names = [t.get("name", "") for t in charts(ok(at))["membrane"]["data"] if t.get("name")]
    assert any(n.startswith("class ") for n in names) and not any(n.startswith("neuron (") for n in names)


def test_the_conversion_table_tells_deep_windows_apart():
    """In the fast mode the Fashion VGG-16's deep windows are down to ~1e-12 τ_c wide at t ≈ 2.7 τ_c: printed
    with 6 digits, each of them read as one point ([2.7, 2.7]). Each interval now prints its two ends apart."""
    model, card = zoo.load("vgg_fashion")
    fast = ttfs_core.convert(model, data.load(card.dataset, "train")[0][:128], rescale="positive")
    assert min(fast.windows) < 1e-6 * fast.decision_time  # the case: windows far below the time's 6th digit
    rows = tables.summary_rows(fast)[:-1]
    ends = [[float(v) for v in r["window [t_min, t_max] (τ_c)"].strip("[]").split(", ")] for r in rows]
    assert all(a < b for a, b in ends)
    assert tables.interval(3.0, 3.0 + 1e-12) != "[3, 3]" and tables.interval(1.0, 2.0) == "[1, 2]"
