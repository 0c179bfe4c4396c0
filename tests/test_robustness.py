"""Hardware knobs: exact at full precision, degrading monotonically in the small-knob limit, seeded."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import ttfs_core
from ttfs_core import data, zoo
from ttfs_core import robustness as rb
from ttfs_core.neurons import ALPHA, SUM
from ttfs_ui import cache, state, sweeps

from . import nets
from .helpers import ROBUSTNESS, charts, converted, ok, run_page


@pytest.fixture(scope="module")
def setup():
    model, snn, x = converted("cnn")
    labels = model(x).argmax(1)  # the ANN's own labels: accuracy == agreement at full precision
    return model, snn, x, labels


def test_time_quantisation(setup):
    model, snn, x, labels = setup
    pts = rb.time_bits_sweep(snn, x, labels, bits=[2, 4, 16], model=model)
    assert [p.value for p in pts] == [2, 4, 16]
    assert pts[-1].agreement == 1.0 and pts[-1].accuracy == 1.0
    assert pts[0].agreement <= pts[-1].agreement
    # quantised spike times sit on 2^bits levels of each window
    q = rb.quantise_times(3)
    off = torch.rand(100, dtype=torch.float64) * 0.5
    levels = q(0, off, 0.5) / (0.5 / 7)
    assert torch.allclose(levels, levels.round())


def test_jitter_is_seeded(setup):
    model, snn, x, labels = setup
    a = rb.jitter_sweep(snn, x, labels, sigmas=[0.0, 0.05], seed=3)
    b = rb.jitter_sweep(snn, x, labels, sigmas=[0.0, 0.05], seed=3)
    assert a == b
    assert a[0].agreement == 1.0 and a[0].early_spikes == 0
    with pytest.raises(ValueError):
        rb.jitter_times(-1.0)


def test_weight_quantisation(setup):
    model, snn, x, labels = setup
    for target in rb.WEIGHT_TARGETS:
        pts = rb.weight_bits_sweep(snn, x, labels, bits=[3, 24], target=target)
        assert pts[1].agreement == 1.0
        exact = snn.run(x).logits
        errors = []
        for bits in (10, 16, 24):  # fewer bits, larger deviation from the exact logits
            q = rb.quantise_weights(snn, bits, target)
            errors.append(float((q.run(x).logits - exact).abs().max() / exact.abs().max()))
        assert errors[0] > errors[1] > errors[2] > 0 and errors[0] > 1e-4, target
    original = snn.layers[0].J.clone()
    q = rb.quantise_weights(snn, 4, "J")
    assert len(torch.unique(q.layers[0].J)) <= 15  # one scale for the whole layer
    q = rb.quantise_weights(snn, 4)
    assert all(len(torch.unique(row)) <= 15 for row in q.layers[0].weight.flatten(1))  # one scale per channel
    assert torch.equal(snn.layers[0].J, original) and not torch.equal(q.layers[0].J, original)  # a copy changed


def test_margin_sweep_counts_early_spikes():
    model = nets.build("mlp")
    x = nets.inputs("mlp", 96)
    pts = rb.margin_sweep(model, x[:64], x[64:], margins=[-0.7, 0.5], input_range=(-2, 3))
    assert pts[0].early_spikes > 0 and pts[1].early_spikes == 0
    assert pts[1].agreement == 1.0


# --- the robustness page's sweeps: shipped for the bundled models, shared computation otherwise ------------------
def _shipped_row(record: dict, settings: tuple, series: str, value: float, k: int) -> list:
    """[correct, agreeing, early spikes, spikes per neuron] of chunk k of one shipped point."""
    values = sweeps.SERIES[series][1]
    return record["settings"][sweeps.settings_key(*settings)][series][list(values).index(value)][k]


def test_every_bundled_model_and_preset_is_shipped():
    shipped = sweeps.read()
    assert sweeps.SHIPPED.stat().st_size < 1 << 20
    settings = sweeps.preset_settings()
    for card in zoo.list_models():
        record = shipped.get(card.name)
        assert record is not None, f"{card.name}: no usable shipped sweeps (run scripts/precompute_sweeps.py)"
        assert record["dataset"] == card.dataset and record["images"] >= state.DEFAULTS[state.ROBUST_IMAGES]
        for i, s in enumerate(settings):
            rows = record["settings"][sweeps.settings_key(*s)]
            wanted = set(sweeps.SERIES) - (set() if i == 0 else {"weight_bits:J"})  # J per layer: default only
            assert wanted <= set(rows), (card.name, s)
            for series in rows:
                assert len(rows[series]) == len(sweeps.SERIES[series][1])
                assert all(len(r) == record["images"] // sweeps.CHUNK for r in rows[series])


FRESH = [  # model, settings (a preset's), chunk, series -> values recomputed
    ("lenet5", 0, 0, {"ann": [0.0], "exact": [0.0], "time_bits": [2, 6], "jitter:tau": [0.05, 0.5],
                      "jitter:window": [0.2], "weight_bits:W": [3, 8], "weight_bits:J": [8], "margin": [-0.7, 0.5]}),
    ("fc", 1, 9, {"exact": [0.0], "time_bits": [3], "jitter:tau": [0.2], "weight_bits:W": [2, 4]}),
    ("resnet_mnist", 2, 1, {"exact": [0.0], "jitter:window": [0.05], "weight_bits:W": [4]}),
]


@pytest.mark.parametrize("name, preset, k, subset", FRESH, ids=[f[0] for f in FRESH])
def test_the_shipped_numbers_are_a_fresh_computation(name, preset, k, subset):
    """A subset of assets/robustness_sweeps.json recomputed as the page would compute it: the file cannot go stale
    silently when the simulator, the conversion, the knobs or the zoo change (rerun scripts/precompute_sweeps.py)."""
    record = sweeps.read()[name]
    settings = sweeps.preset_settings()[preset]
    margin, neuron, rescale = settings
    model, card = zoo.load(name)
    train, _ = data.load_uint8(card.dataset, "train")
    calibration = card.preprocess.batch_from_uint8(np.asarray(train[:512]))

    def net(m: float):
        return ttfs_core.convert(model, calibration, margin=m, input_range=tuple(card.input_range), neuron=neuron,
                                 rescale=rescale)

    snn = net(margin)
    test, labels = data.load_uint8(card.dataset, "test")
    start = k * sweeps.CHUNK
    x = card.preprocess.batch_from_uint8(np.asarray(test[start:start + sweeps.CHUNK]))
    y = torch.from_numpy(np.asarray(labels[start:start + sweeps.CHUNK]).astype(np.int64))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the script computes them
    try:
        for series, values in subset.items():
            for p in sweeps.series_points(series, snn, x, y, model, start=start, networks=net, values=values):
                correct, agreeing, early, per_neuron = _shipped_row(record, settings, series, p.value, k)
                assert abs(round(p.accuracy * sweeps.CHUNK) - correct) <= 1, (series, p)
                assert abs(round(p.agreement * sweeps.CHUNK) - agreeing) <= 1, (series, p)
                assert early == pytest.approx(p.early_spikes, rel=0.01, abs=2), (series, p)
                assert per_neuron == pytest.approx(p.spikes_per_neuron, rel=1e-4), (series, p)
    finally:
        torch.set_num_threads(threads)


def test_sessions_asking_at_once_share_one_computation(monkeypatch):
    """Eight sessions asking for the same chunk at the same time: one computes, the others wait and read it."""
    calls = []

    def slow(series, *args, **kw):
        calls.append(series)
        time.sleep(0.3)
        return [rb.SweepPoint("time_bits", 2.0, 0.5, 0.5, 0, 1.0, 100)]

    monkeypatch.setattr(sweeps, "series_points", slow)
    entry = cache.zoo_model("fc")
    key = cache.Settings("zoo:fc", 0.123, ALPHA, SUM)  # settings no other test asks for
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: sweeps.chunk(key, "mnist", "time_bits", 0, 100, entry, None), range(8)))
    assert calls == ["time_bits"]
    assert all(r == results[0] for r in results)


@pytest.mark.integration
def test_the_page_shows_shipped_sweeps_without_computing(monkeypatch):
    """A fresh server's first visit, the jitter unit, the weight target and the presets: all shipped, none computed."""
    def boom(*args, **kw):
        raise AssertionError("a sweep was computed")

    monkeypatch.setattr(sweeps, "series_points", boom)
    monkeypatch.setattr(sweeps, "chunk", boom)
    at = run_page(ROBUSTNESS)
    figs = charts(at)
    assert {"sweep_time_bits", "sweep_jitter", "sweep_weight_bits", "sweep_margin"} <= set(figs)
    record = sweeps.read()["lenet5"]
    shown = figs["sweep_weight_bits"]["data"]
    xs = list(np.asarray(shown[0]["x"], dtype=float))
    n = state.DEFAULTS[state.ROBUST_IMAGES]
    rows = record["settings"][sweeps.settings_key(*sweeps.preset_settings()[0])]["weight_bits:W"]
    for bits in (3, 8):
        correct = sum(c for c, *_ in rows[list(sweeps.KNOBS["weight_bits"]).index(bits)][:n // sweeps.CHUNK])
        assert np.asarray(shown[0]["y"], dtype=float)[xs.index(bits)] == pytest.approx(100 * correct / n)
    ann = record["settings"][sweeps.settings_key(*sweeps.preset_settings()[0])]["ann"][0]
    assert 100 * correct / n >= 100 * sum(c for c, *_ in ann[:n // sweeps.CHUNK]) / n - 2  # 8 bits: the ANN's
    at.toggle(key=state.widget_key(state.ROBUST_RELATIVE)).set_value(True).run()
    assert "B_n" in charts(ok(at))["sweep_jitter"]["layout"]["xaxis"]["title"]["text"]
    at.radio(key=state.widget_key(sweeps.WEIGHTS)).set_value("J").run()
    assert "J per layer" in charts(ok(at))["sweep_weight_bits"]["layout"]["xaxis"]["title"]["text"]
    at.radio(key=state.widget_key(sweeps.WEIGHTS)).set_value("W").run()
    for i in range(1, len(sweeps.preset_settings())):
        margin, neuron, rescale = sweeps.preset_settings()[i]
        run_page(ROBUSTNESS, **{state.MARGIN: margin, state.NEURON: neuron, state.RESCALE: rescale})


@pytest.mark.integration
def test_other_settings_are_computed_and_a_switch_computes_its_series_only(monkeypatch):
    """Settings that were not shipped (FC at ζ = 0.3): computed on the server, the points the core's; switching the
    jitter unit or the weight target computes that series only."""
    calls = []
    real = sweeps.series_points

    def spy(series, *args, **kw):
        calls.append(series)
        return real(series, *args, **kw)

    monkeypatch.setattr(sweeps, "series_points", spy)
    at = run_page(ROBUSTNESS, **{state.MODEL: "zoo:fc", state.MARGIN: 0.3, state.ROBUST_IMAGES: 100})
    assert sorted(calls) == sorted(sweeps.shown_series(False, "W"))
    model, card = zoo.load("fc")
    train, _ = data.load_uint8("mnist", "train")
    snn = ttfs_core.convert(model, card.preprocess.batch_from_uint8(np.asarray(train[:512])), margin=0.3,
                            input_range=tuple(card.input_range))
    test, labels = data.load_uint8("mnist", "test")
    x = card.preprocess.batch_from_uint8(np.asarray(test[:100]))
    y = torch.from_numpy(np.asarray(labels[:100]).astype(np.int64))
    expected = rb.weight_bits_sweep(snn, x, y, bits=[2, 4], model=model)
    shown = charts(at)["sweep_weight_bits"]["data"]
    xs = list(np.asarray(shown[0]["x"], dtype=float))
    for p in expected:
        assert np.asarray(shown[0]["y"], dtype=float)[xs.index(p.value)] == pytest.approx(100 * p.accuracy)
    calls.clear()
    at.toggle(key=state.widget_key(state.ROBUST_RELATIVE)).set_value(True).run()
    ok(at)
    assert calls == ["jitter:window"]
    calls.clear()
    at.radio(key=state.widget_key(sweeps.WEIGHTS)).set_value("J").run()
    ok(at)
    assert calls == ["weight_bits:J"]
