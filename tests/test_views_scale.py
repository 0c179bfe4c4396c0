"""The explorer's views on layers too large for one dot per spike (ResNet-50 at 224×224 has 9.6 million neurons):
heat strips of spikes per channel and time bin on the raster, one channel or the most active ones on the maps, an
RGB input in colour, a stratified sample on the ANN-vs-SNN scatter, "k most active" on a 10^5-neuron layer, and a
browser spec whose size is bounded. The bundled models' views are unchanged (one dot per spike, exact maps).

The heavy network here is small enough to run fast: a 3×160×160 input into a 4-channel convolution (102,400
neurons, over `timeline.DENSITY_NEURONS`). The browser's own helpers (frontend/timeline/views.js) are run under
node, when it is installed, against the Python that writes what they read."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

import ttfs_core
from ttfs_core import data, zoo
from ttfs_ui import figures, live, messages, tables, timeline
from ttfs_ui.messages import BadMessage

from .helpers import ROOT, TIMEOUT, charts, ok, upload_script

VIEWS_JS = ROOT / "ttfs_ui" / "frontend" / "timeline" / "views.js"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def big_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(8), nn.Conv2d(4, 6, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 18 * 18, 10)).eval()


@pytest.fixture(scope="module")
def big():
    """The 3×160×160 net converted (float64: exact), an ImageNet-normalised input, its result and spikes."""
    model = big_net().double()
    g = torch.Generator().manual_seed(1)
    pixels = torch.rand(9, 3, 160, 160, generator=g, dtype=torch.float64)
    x = (pixels - torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)) / \
        torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    snn = ttfs_core.convert(model, x[:8])
    res = snn.run(x[8:])
    tl = timeline.timeline_of(snn)
    return {"model": model, "snn": snn, "x": x[8:], "pixels": pixels[8:], "res": res, "tl": tl,
            "spikes": timeline.spikes_of(snn, res)}


def _decode(b: dict) -> np.ndarray:
    """A typed array of the spec as views.js decodes it (fire steps above a base, levels times a scale)."""
    raw = np.frombuffer(base64.b64decode(b["bdata"]), dtype=np.dtype(b["dtype"]))
    if "base" in b:
        return np.where(raw == 255, timeline.NEVER, raw.astype(np.int64) + b["base"])
    if "scale" in b:
        return raw.astype(np.float64) * b["scale"]
    return raw


# --- which layers are densities --------------------------------------------------------------------------------
def test_only_large_networks_get_densities():
    bundled = {"lenet5": [784, 4704, 1600, 120, 84], "vgg_fashion": [784] + [6272] * 3 + [12544] * 4 + [3136] * 6
               + [256, 128]}
    for sizes in bundled.values():
        assert timeline.density_layers(sizes) == frozenset()
    vgg_like = [784, 50_176, 50_176, 25_088, 12_544, 12_544, 6_272, 512, 512, 10]  # dots today (decimated)
    assert timeline.density_layers(vgg_like) == frozenset()
    resnet = [150_528, 802_816] + [200_704] * 9 + [50_176] * 12 + [25_088] * 6 + [100_352] * 3
    dense = timeline.density_layers(resnet)
    assert dense == frozenset(range(len(resnet)))  # beside 10^6-neuron strips, 750,000 dots would be 20 MB
    assert timeline.density_layers([784, 70_000, 100]) == frozenset({1})


# --- the heat strip ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [timeline.STRETCHED, timeline.ABSOLUTE])
def test_a_density_counts_every_spike_in_its_channel_and_bin(big, mode):
    """Oracle: each fired neuron's channel and its x on the axis, binned by numpy's own 2-D histogram."""
    tl, spikes = big["tl"], big["spikes"]
    n = 1
    s = spikes[n]
    assert s.neurons == 4 * 160 * 160 > timeline.DENSITY_NEURONS
    d = timeline.density(s, n, tl, mode)
    fired = np.isfinite(s.offsets)
    x = tl.positions(n, s.offsets[fired], mode)
    channel = np.flatnonzero(fired) // (160 * 160)
    hist, _, _ = np.histogram2d(channel, x, bins=[np.arange(5) - 0.5, d.edges])
    np.testing.assert_array_equal(d.counts, hist.astype(np.int64))
    assert d.counts.sum() == fired.sum() == s.neurons  # the α-model: every neuron fires once
    assert d.rows == 4 and d.group == 1 and d.bins == timeline.DENSITY_BINS
    np.testing.assert_allclose(d.edges[[0, -1]], tl.bands(mode)[n])
    # two rows of two channels: each row the sum of its channels
    g = timeline.density(s, n, tl, mode, rows=2)
    assert g.group == 2 and g.rows == 2
    np.testing.assert_array_equal(g.counts, d.counts.reshape(2, 2, -1).sum(axis=1))
    activity = s.activations.reshape(4, -1).sum(axis=1)
    assert list(g.top) == [int(np.argmax(activity[:2])), 2 + int(np.argmax(activity[2:]))]


def test_early_spikes_land_in_the_window_before():
    tl = timeline.Timeline(("input", "a", "b"), (0.0, 1.0, 3.0), (1.0, 2.0, 1.0), steps_per_window=10)
    off = np.array([0.5, -0.5, 1.0, np.inf, 2.0, -1.5])  # channel 0: 0.5, -0.5, 1.0; channel 1: never, 2.0, -1.5
    s = timeline.LayerSpikes("b", "conv b", "conv", (2, 3, 1), off, 2.0 - off, np.zeros(6, bool), 1.0, 1.0)
    d = timeline.density(s, 2, tl, timeline.STRETCHED, bins=4)
    assert d.early == 2 and d.bins == 8
    np.testing.assert_allclose(d.edges, [1, 1.25, 1.5, 1.75, 2, 2.25, 2.5, 2.75, 3])
    # stretched: own spikes at 2 + off/1, early ones at 2 + off/2 (the window before is 2 wide)
    expected = np.zeros((2, 8), dtype=np.int64)
    expected[0, [6, 3]] = 1  # 2.5, 1.75
    expected[0, 7] = 1  # 3.0: the window's end, its last bin
    expected[1, 7] = 1  # 4.0 (beyond the end): the last bin
    expected[1, 1] = 1  # 1.25: on an edge, the bin it opens
    np.testing.assert_array_equal(d.counts, expected)
    assert d.counts.sum() == np.isfinite(off).sum()


def test_counts_per_step_as_spans_are_the_full_counts(big):
    tl, spikes = big["tl"], big["spikes"]
    for n, s in enumerate(spikes):
        full = tl.fired_counts(n, s.offsets)
        first = np.sort(tl.fire_steps(n, s.offsets))  # the earlier definition (a sort), as the oracle
        np.testing.assert_array_equal(full, np.searchsorted(first, np.arange(tl.steps + 1), side="right"))
        lo, values = timeline.count_span(full)
        rebuilt = [0 if k < lo else values[min(k - lo, len(values) - 1)] for k in range(tl.steps + 1)]
        assert rebuilt == full.tolist()
        assert len(values) <= 2 * tl.steps_per_window + 2


# --- the spec ----------------------------------------------------------------------------------------------------
def test_a_large_networks_spec_is_compact_and_bounded(big):
    tl, spikes, snn = big["tl"], big["spikes"], big["snn"]
    mode = tl.default_mode()
    colours = timeline.input_colours(spikes[0], snn.input_range, MEAN, STD)
    top = timeline.top_channels(spikes[1], 4)
    spec = live.spec(spikes, tl, mode, 1, tl.steps, channels=top, colours=colours)
    size = live.size(spec)
    # what the bytes are: the RGB input (a step and a colour level per neuron, one byte each, plus a byte per pixel
    # for hover) and the layer's 4 channels (a step byte and 8-bit activation per neuron: over 65,536 of them), in
    # base64; the raster is heat strips, not 100,000 dots
    inp, lay = spec["panels"]
    assert inp["kind"] == "rgb" and lay["kind"] == "compact"
    assert len(base64.b64decode(inp["kfire"]["bdata"])) == 3 * 160 * 160
    assert len(base64.b64decode(inp["act"]["bdata"])) == 3 * 160 * 160
    assert len(base64.b64decode(lay["kfire"]["bdata"])) == 4 * 160 * 160 and lay["act"]["dtype"] == "u1"
    assert "cells" not in lay and "xpos" not in lay
    grid = figures.grid_layout(spikes[1].shape, 4)
    assert (grid["rows"], grid["cols"]) == (321, 482)  # 3 maps to a row, as the full mosaic tiles 4 maps
    cells = 160 * 160 + 321 * 482  # the two hover grids: the input image, the grid of 160×160 maps
    payload = 4 / 3 * (2 * 3 * 160 * 160 + 2 * 4 * 160 * 160 + cells)  # base64 of the bytes above
    assert payload < size < payload + 160_000, (size, payload)  # the rest: raster (its small layer's 1,944 dots),
    # labels, layout
    assert spec["counts"] is None and len(spec["count_spans"]) == len(spikes)
    assert [d["layer"] for d in spec["density"]] == [0, 1]  # the input (76,800) and the conv layer
    raster_bytes = len(json.dumps(spec["raster"])) + len(json.dumps(spec["density"]))
    assert raster_bytes < 80_000
    # one channel: 16-bit activations
    one = live.spec(spikes, tl, mode, 1, tl.steps, channels=[2], colours=colours)
    assert one["panels"][1]["act"]["dtype"] == "u2" and live.size(one) < size
    # another mapped layer while the heat strips are kept: only the maps' layers and the dots converted, the same spec
    prepared = live.prepare(spikes, tl, mode)
    partial = timeline.spikes_of(snn, big["res"], only={0, 2})
    assert partial[1].offsets.strides == (0,) and partial[2].offsets.strides != (0,)  # no data, no memory
    again = live.spec(partial, tl, mode, 2, tl.steps, colours=colours, prepared=prepared)
    assert again["id"] == live.spec(spikes, tl, mode, 2, tl.steps, colours=colours, prepared=prepared)["id"]


def test_the_bundled_models_spec_is_as_before():
    """LeNet-5: every spike a dot, the maps exact (cells, int16 steps, float32 activations, raster x), counts per
    step, no heat strip; under 1 MB (the browser test's bound)."""
    model, card = zoo.load("lenet5")
    imgs, _ = data.load_uint8("mnist", "train")
    snn = ttfs_core.convert(model, card.preprocess.batch_from_uint8(np.asarray(imgs[:256])),
                            input_range=card.input_range)
    test, _ = data.load_uint8("mnist", "test")
    res = snn.run(card.preprocess.batch_from_uint8(np.asarray(test[:1])))
    tl = timeline.timeline_of(snn)
    spikes = timeline.spikes_of(snn, res)
    spec = live.spec(spikes, tl, tl.default_mode(), 1, tl.steps)
    assert "density" not in spec and spec["counts"] == [tl.fired_counts(n, s.offsets).tolist()
                                                        for n, s in enumerate(spikes)]
    for panel in spec["panels"]:
        assert "kind" not in panel and {"cells", "kfire", "act", "xpos"} <= set(panel)
        assert (panel["kfire"]["dtype"], panel["act"]["dtype"]) == ("i2", "f4")
    dots = [t for t in spec["raster"]["data"] if t.get("meta") is not None and t.get("name") != live.HIGHLIGHT]
    assert all(t["type"] in ("scatter", "scattergl") for t in dots)
    assert live.size(spec) < 1_000_000
    assert timeline.input_colours(spikes[0], snn.input_range) is None  # one channel: grey, as before


@pytest.mark.parametrize("options", [{}, {"neuron": "b1"}, {"margin": -0.7}])
def test_spikes_read_in_numpy_are_the_cores(options):
    """`timeline.spikes_of` decodes offsets in numpy (one thread); its activations, forced flags and offsets are
    the core's tensors (`LayerResult.activations`, `forced_spikes`), bit for bit, in float32 (B1's silent neurons
    and early spikes included)."""
    model, card = zoo.load("lenet5")
    imgs, _ = data.load_uint8("mnist", "train")
    snn = ttfs_core.convert(model, card.preprocess.batch_from_uint8(np.asarray(imgs[:128])),
                            input_range=card.input_range, **options)
    test, _ = data.load_uint8("mnist", "test")
    res = snn.run(card.preprocess.batch_from_uint8(np.asarray(test[:2])))
    assert res.layers[0].offsets.dtype == torch.float32
    for sample in (0, 1):
        spikes = timeline.spikes_of(snn, res, sample)
        np.testing.assert_array_equal(spikes[0].offsets, res.input_times[sample].double().numpy().ravel())
        for s, lr in zip(spikes[1:], res.layers):
            np.testing.assert_array_equal(s.offsets, lr.offsets[sample].double().numpy().ravel())
            np.testing.assert_array_equal(s.activations, lr.activations[sample].double().numpy().ravel())
            np.testing.assert_array_equal(s.forced, lr.forced_spikes[sample].flatten().numpy())
    if options.get("neuron") == "b1":
        assert any(np.isinf(s.offsets).any() for s in spikes[1:])
    if options.get("margin"):
        assert any((s.offsets < 0).any() for s in spikes[1:])


# --- drilling down: channels ------------------------------------------------------------------------------------
def test_one_channel_is_the_full_maps_channel(big):
    tl, spikes = big["tl"], big["spikes"]
    s = spikes[1]
    k = tl.steps - tl.steps_per_window // 2  # half-way through the layer's window
    full = figures.feature_maps(spikes[0], s, 1, tl, k).data[3].z  # every channel, the server's figure
    h = w = 160
    _, _, _, _, gc = figures.mosaic_layout(s.shape)
    for c in range(4):
        one = figures.feature_maps(spikes[0], s, 1, tl, k, channels=[c]).data[3].z
        r, q = divmod(c, gc)
        tile = np.asarray(full, dtype=np.float64)[r * (h + 1): r * (h + 1) + h, q * (w + 1): q * (w + 1) + w]
        np.testing.assert_array_equal(np.asarray(one, dtype=np.float64), tile)
    # the browser's copy of channel 2: its steps exactly, its activations to 16 bits
    spec = live.spec(spikes, tl, timeline.STRETCHED, 1, tl.steps, channels=[2])
    panel = spec["panels"][1]
    assert panel["layout"]["channels"] == [2] and panel["neurons"] == h * w
    own = slice(2 * h * w, 3 * h * w)
    np.testing.assert_array_equal(_decode(panel["kfire"]), tl.fire_steps(1, s.offsets)[own])
    np.testing.assert_allclose(_decode(panel["act"]), s.activations[own], atol=panel["act"]["scale"] / 2 + 1e-12)
    # the picker of the membrane page: that channel's neurons only, by their flat index in the layer
    fig = figures.neuron_picker(s, channels=[2])
    assert sorted(np.asarray(fig.data[0].customdata).tolist()) == list(range(2 * h * w, 3 * h * w))


def test_the_grid_shows_the_k_most_active_channels(big):
    rng = np.random.default_rng(0)
    c, h, w = 40, 5, 6
    act = rng.random((c, h, w)) * rng.random((c, 1, 1)) ** 3
    s = timeline.LayerSpikes("l", "conv l", "conv", (c, h, w), 1.0 - act.ravel(), act.ravel(),
                             np.zeros(act.size, bool), 1.0, 1.0)
    top = timeline.top_channels(s, 16)
    sums = act.sum(axis=(1, 2))
    assert top == list(np.argsort(-sums, kind="stable")[:16])
    assert sorted(sums[top]) == sorted(np.sort(sums)[-16:])
    index = figures.grid_index(s.shape, top)
    layout = figures.grid_layout(s.shape, 16)
    assert index.shape == (layout["rows"], layout["cols"])
    shown = index[index >= 0]
    assert sorted(set(shown // (h * w))) == sorted(top) and shown.size == 16 * h * w
    z = figures.grid(s.activations, s.shape, top)
    np.testing.assert_array_equal(z[index >= 0], s.activations[shown])
    # how many maps a grid sends: 16 of ResNet-50's conv1 (112×112), 5 of a VGG's 224×224, never more than C
    assert timeline.map_k((64, 112, 112), 16) == 16 and timeline.map_k((64, 224, 224), 16) == 5
    assert timeline.map_k((3, 10, 10), 16) == 3 and timeline.map_k((2, 1000, 1000), 16) == 1
    # on the converted net: the four channels ranked by summed activation
    big_s = big["spikes"][1]
    assert timeline.top_channels(big_s, 4) == list(np.argsort(-big_s.activations.reshape(4, -1).sum(1),
                                                              kind="stable"))


# --- colour -------------------------------------------------------------------------------------------------------
def test_an_rgb_input_is_drawn_in_colour(big):
    tl, spikes, snn = big["tl"], big["spikes"], big["snn"]
    s = spikes[0]
    colours = timeline.input_colours(s, snn.input_range, MEAN, STD)
    expected = np.round(255 * np.clip(big["pixels"][0].numpy(), 0, 1)).astype(np.uint8)  # pixels / 255 it came from
    assert np.abs(colours.astype(int) - expected.astype(int)).max() <= 1  # (input range rounding)
    fig = figures.feature_maps(s, spikes[1], 1, tl, tl.steps, colours=colours)
    assert fig.data[1].type == "image"
    np.testing.assert_array_equal(np.asarray(fig.data[1].z), np.moveaxis(colours, 0, -1))
    # before the input window ends, a channel shows only once its spike has fired; unfired pixels are grey
    k = tl.steps_per_window // 2
    fired = tl.fired_by(0, s.offsets, k).reshape(3, 160, 160)
    img = np.asarray(figures.feature_maps(s, spikes[1], 1, tl, k, colours=colours).data[1].z)
    lit = fired.any(axis=0)
    np.testing.assert_array_equal(img[lit], np.moveaxis(np.where(fired, colours, 0), 0, -1)[lit])
    assert (img[~lit] == [int(figures.NOT_FIRED[i: i + 2], 16) for i in (1, 3, 5)]).all() and (~lit).any()
    # preprocessing unknown: x̂ scaled from its smallest to its largest value
    plain = timeline.input_colours(s, snn.input_range)
    xh = s.activations.reshape(3, 160, 160)
    np.testing.assert_array_equal(plain, np.round(255 * (xh - xh.min()) / (xh.max() - xh.min())).astype(np.uint8))
    # and the main page's image of a 3-channel input
    image = figures.image(big["x"][0].numpy(), mean=MEAN, std=STD)
    assert image.data[0].type == "image"
    assert np.abs(np.asarray(image.data[0].z).astype(int) - np.moveaxis(expected, 0, -1)).max() <= 1


# --- the ANN-vs-SNN scatter -------------------------------------------------------------------------------------------
def test_the_scatter_sample_keeps_the_extremes_and_says_so():
    rng = np.random.default_rng(0)
    n = 802_816
    ann = np.maximum(rng.normal(size=n), 0.0)
    snn = ann + rng.normal(scale=1e-7, size=n)
    worst = rng.choice(n, 7, replace=False)
    snn[worst] += 0.5
    early = np.zeros(n, bool)
    early[rng.choice(n, 300, replace=False)] = True
    silent = np.zeros(n, bool)
    silent[rng.choice(n, 50, replace=False)] = True
    smp = timeline.sample_neurons(ann, snn, early=early, silent=silent)
    assert smp.shown == timeline.SCATTER_POINTS and smp.total == n
    assert smp.describe() == "20,000 of 802,816 neurons shown"
    keep = set(smp.index.tolist())
    assert set(worst.tolist()) <= keep  # the largest errors
    assert int(np.argmax(ann)) in keep and int(np.argmax(snn)) in keep
    assert set(np.flatnonzero(early).tolist()) <= keep and set(np.flatnonzero(silent).tolist()) <= keep
    assert smp.kept["early spikes"] + smp.kept["silent neurons"] >= 340  # a few were extremes already
    assert sum(smp.kept.values()) == smp.shown and np.all(np.diff(smp.index) > 0)
    # the zero activations do not crowd out the positive ones: equal shares of each stratum
    rest = smp.kept["random, stratified by ANN value"]
    zeros = np.isin(smp.index, np.flatnonzero(ann <= 0)).sum()
    assert zeros < 0.25 * rest
    again = timeline.sample_neurons(ann, snn, early=early, silent=silent)
    np.testing.assert_array_equal(again.index, smp.index)  # seeded: the same page shows the same points
    small = timeline.sample_neurons(ann[:1000], snn[:1000])
    assert small.shown == 1000 and small.kept == {"all": 1000}
    # the figure: sampled points in float32, the count in each title; the histogram binned on every neuron
    fig = figures.ann_vs_snn(["conv 0"], [ann], [snn], samples=[smp])
    assert len(fig.data[0].x) == smp.shown and "20,000 of 802,816 neurons shown" in fig.layout.annotations[0].text
    hist = figures.error_histogram(["conv 0"], [snn - ann], binned=True)
    assert int(np.sum(hist.data[0].y)) == n and len(hist.data[0].x) == 61


def test_default_scatter_layers_of_a_deep_network():
    errors = [0.0] * 49
    errors[30] = 1.0
    pick = tables.default_layers(errors)
    assert len(pick) == 8 and {0, 48, 30} <= set(pick) and pick == sorted(pick)
    assert tables.default_layers([1.0] * 5) == [0, 1, 2, 3, 4]


# --- the membrane page's choice ------------------------------------------------------------------------------------
def test_k_most_active_on_a_large_layer(big):
    rng = np.random.default_rng(3)
    v = np.round(rng.random(1_000_000), 3)  # many ties
    for k, distinct in ((1, False), (6, False), (6, True), (40, True)):
        order = np.argsort(-v, kind="stable")
        if distinct:
            key = np.round(v[order] / (1e-7 * np.abs(v).max()))
            order = order[np.concatenate([[True], key[1:] != key[:-1]])]
        assert timeline.most_active(v, k, distinct) == order[:k].tolist()
    flat = np.zeros(200_000)  # all equal: the partial sort cannot decide, the full sort does
    assert timeline.most_active(flat, 3) == [0, 1, 2] and timeline.most_active(flat, 3, True) == [0]
    s = big["spikes"][1]
    top = timeline.most_active(s.activations, 6, distinct=True)
    assert len({float(s.activations[i]) for i in top}) == 6
    assert s.activations[top[0]] == s.activations.max()
    one = timeline.layer_spikes(big["snn"], big["res"], s.name)
    np.testing.assert_array_equal(one.activations, s.activations)


# --- the browser's messages ---------------------------------------------------------------------------------------
def test_a_channel_pick_from_a_heat_strip_is_read_against_its_layer():
    neurons, strips = {"conv1": 802_816, "fc": 10}, {"conv1": 64}
    event = messages.timeline_event({"layer": "conv1", "channel": 63, "cursor": 5, "seq": "1-0.5"}, 40, neurons,
                                    strips)
    assert event.layer == "conv1" and event.channel == 63 and event.neuron is None
    for bad, needle in [({"layer": "conv1", "channel": 64}, "timeline.channel: 64 is not between 0 and 63"),
                        ({"layer": "fc", "channel": 1}, "timeline.layer: 'fc' is not drawn as a heat strip"),
                        ({"layer": "conv1", "channel": True}, "timeline.channel: expected an integer, got bool"),
                        ({"channel": 3}, "timeline.layer: missing"),
                        ({"layer": "conv1", "channel": 1, "neuron": 2}, "timeline.channel: not with a neuron")]:
        with pytest.raises(BadMessage, match=needle):
            messages.timeline_event({**bad, "cursor": 1, "seq": "c"}, 40, neurons, strips)
    with pytest.raises(BadMessage, match="not drawn as a heat strip"):  # a page with no strips takes no channel
        messages.timeline_event({"layer": "conv1", "channel": 1, "cursor": 1, "seq": "c"}, 40, neurons)


# --- the browser's helpers, under node ------------------------------------------------------------------------------
NODE = shutil.which("node")


def _node(script: str, payload: dict) -> dict:
    code = f"const V = require({json.dumps(str(VIEWS_JS))});\nconst P = JSON.parse(require('fs').readFileSync(0));\n" \
           f"{script}"
    out = subprocess.run([NODE, "-e", code], input=json.dumps(payload), capture_output=True, text=True, check=True,
                         timeout=120)
    return json.loads(out.stdout)


@pytest.mark.skipif(NODE is None, reason="node is not installed: views.js is checked by the browser test only")
def test_the_browsers_helpers_read_what_the_server_writes(big):
    tl, spikes, snn = big["tl"], big["spikes"], big["snn"]
    colours = timeline.input_colours(spikes[0], snn.input_range, MEAN, STD)
    spec = live.spec(spikes, tl, timeline.STRETCHED, 1, tl.steps, channels=[3, 1], colours=colours)
    script = """
const out = {};
out.panels = P.spec.panels.map((p) => {
  for (const key of ["cells", "kfire", "act", "xpos"]) if (p[key]) p[key] = V.decode(p[key]);
  const cells = V.panelCells(p), cellOf = V.cellOf(p, cells);
  const flat = Array.from(cells, (l) => (l >= 0 ? V.flatOf(p, l) : -1));
  const back = P.probe.map((f) => V.localOf(p, f));
  return { flat, kfire: Array.from(p.kfire), act: Array.from(p.act), cellOf: Array.from(cellOf), back };
});
out.counts = P.spec.count_labels.map((_, n) =>
  Array.from({ length: P.spec.steps + 1 }, (_, k) => V.countAt(P.spec, n, k)));
out.density = P.spec.density.map((d) => {
  d.counts = V.decode(d.counts); d.top = V.decode(d.top);
  return { cell: V.densityCell(d, 1, 3), y: V.densityY(d, 2) };
});
process.stdout.write(JSON.stringify(out));
"""
    probe = [3 * 25_600 + 17, 1 * 25_600, 0, 2 * 25_600 + 5]  # channels 3 and 1 are shown, 0 and 2 are not
    got = _node(script, {"spec": spec, "probe": probe})
    inp, lay = got["panels"]
    # the RGB input: cell i is pixel i; its three channels share it
    assert inp["flat"] == list(range(160 * 160))
    np.testing.assert_array_equal(inp["cellOf"], np.arange(3 * 160 * 160) % (160 * 160))
    np.testing.assert_array_equal(inp["kfire"], tl.fire_steps(0, spikes[0].offsets))
    np.testing.assert_array_equal(inp["act"], colours.ravel())
    # the layer's two channels: the same cells as the server's grid, the same steps, activations to 8 bits
    np.testing.assert_array_equal(np.asarray(lay["flat"]), figures.grid_index(spikes[1].shape, [3, 1]).ravel())
    order = np.concatenate([np.arange(3 * 25_600, 4 * 25_600), np.arange(25_600, 2 * 25_600)])
    np.testing.assert_array_equal(lay["kfire"], tl.fire_steps(1, spikes[1].offsets)[order])
    np.testing.assert_allclose(lay["act"], spikes[1].activations[order], atol=spec["panels"][1]["act"]["scale"])
    assert lay["back"] == [17, 25_600, -1, -1]
    # the fired-by counts from their spans, at every step
    assert got["counts"] == [tl.fired_counts(n, s.offsets).tolist() for n, s in enumerate(spikes)]
    # a heat-strip cell: its channels, time bin, count and most active channel
    d = timeline.density(spikes[1], 1, tl, timeline.STRETCHED)
    cell = got["density"][1]["cell"]
    assert (cell["lo"], cell["hi"], cell["count"], cell["top"]) == (1, 1, int(d.counts[1, 3]), int(d.top[1]))
    assert cell["t0"] == pytest.approx(d.edges[3]) and cell["t1"] == pytest.approx(d.edges[4])
    y0, y1 = figures.raster_groups(spikes)[1]
    assert got["density"][1]["y"] == pytest.approx(y0 + 2.5 * (y1 - y0) / 4)


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_the_timeline_script_parses():
    for name in ("views.js", "timeline.js"):
        subprocess.run([NODE, "--check", str(VIEWS_JS.parent / name)], check=True, timeout=60)
    html = (VIEWS_JS.parent / "index.html").read_text()
    assert html.index('src="views.js"') < html.index('src="timeline.js"')


# --- the pages, on a network with a 75,264-neuron layer ------------------------------------------------------------
def wide_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 96, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Conv2d(96, 8, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 5 * 5, 10)).eval()


@pytest.fixture(scope="module")
def wide_session():
    """A 1×28×28 model whose first layer has 96 maps of 28×28 (75,264 neurons), uploaded as TorchScript."""
    import io
    import warnings

    from streamlit.testing.v1 import AppTest

    from ttfs_ui import state

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(wide_net()), buf)
    up = AppTest.from_function(upload_script, default_timeout=TIMEOUT)
    up.session_state["test_kind"], up.session_state["test_bytes"] = "x", buf.getvalue()
    up.session_state["test_name"] = "wide.pt"
    up.run()
    key = ok(up).session_state[state.MODEL]
    assert key.startswith("upload:") and not up.error, [e.value for e in up.error]
    return {state.MODEL: key, state.UPLOADED_MODELS: up.session_state[state.UPLOADED_MODELS]}


def _page(path: str, session: dict, **more):
    from .helpers import run_page

    return run_page(path, **session, **more)


def _spec(at) -> dict:
    [el] = [e for e in at.get("component_instance") if e.proto.component_name.endswith("live.timeline")]
    return json.loads(json.loads(el.proto.json_args)["spec"])


@pytest.mark.integration
def test_the_raster_page_draws_a_large_layer_as_a_density_and_drills_down(wide_session):
    from ttfs_ui import state

    from .helpers import RASTER

    at = _page(RASTER, wide_session)
    spec = _spec(at)
    name = spec["names"][1]
    assert [d["layer"] for d in spec["density"]] == [1] and spec["neurons"][1] == 75_264
    strip = spec["density"][0]
    assert strip["channels"] == 96 and strip["group"] == 3 and strip["rows"] == 32
    counts = np.frombuffer(base64.b64decode(strip["counts"]["bdata"]), np.uint16)
    assert int(counts.sum()) == 75_264  # every neuron fired once, counted once
    panel = spec["panels"][1]  # the layer is mapped by default: its 16 most active channels
    assert panel["kind"] == "compact" and len(panel["layout"]["channels"]) == 16
    assert "16 most active of 96 channels" in spec["maps"]["layout"]["annotations"][1]["text"]
    assert live.size(spec) < 500_000
    # a click on the strip maps that channel; the link says so
    at.session_state["timeline"] = {"layer": name, "channel": 41, "cursor": 30, "seq": "k1"}
    at.run()
    spec = _spec(ok(at))
    assert spec["panels"][1]["layout"]["channels"] == [41] and at.session_state["ttfs_map_channel"] == 41
    assert dict(at.query_params)["channel"] == "41" and dict(at.query_params)["maps"] == "channel"
    assert "channel 41 of 96" in spec["maps"]["layout"]["annotations"][1]["text"]
    # the k most active again, 4 of them
    at.radio(key=state.widget_key("ttfs_map_view")).set_value("top").run()
    at.select_slider(key=state.widget_key("ttfs_map_k")).set_value(4).run()
    assert len(_spec(ok(at))["panels"][1]["layout"]["channels"]) == 4
    # a click on a neuron of the map opens its membrane trace
    at.session_state["timeline"] = {"layer": name, "neuron": 41 * 784 + 100, "cursor": 30, "seq": "k2"}
    at.run()
    ok(at)
    assert at.session_state[state.TRACE_NEURONS] == (name, [41 * 784 + 100])
    # a bad channel is refused with a note
    fresh = _page(RASTER, wide_session)
    fresh.session_state["timeline"] = {"layer": name, "channel": 96, "cursor": 3, "seq": "k3"}
    fresh.run()
    assert any("message from the timeline was ignored" in w.value for w in fresh.warning)


@pytest.mark.integration
def test_the_membrane_page_picks_neurons_of_a_large_layer(wide_session):
    from ttfs_ui import cache, state

    from .helpers import TRACES

    entry = cache.uploaded_model(wide_session[state.MODEL],
                                 wide_session[state.UPLOADED_MODELS][wide_session[state.MODEL]])
    at = _page(TRACES, wide_session)  # k most active of the first layer: 75,264 neurons
    layer = at.session_state[state.TRACE_LAYER]
    fig = charts(at)["membrane"]
    traces = [t for t in fig["data"] if t.get("name", "").startswith("neuron")]
    assert len(traces) == at.session_state[state.TRACE_K]
    snn = ttfs_core.convert(entry.model, cache.images(entry, entry.dataset, "train", 0, cache.CALIBRATION_IMAGES),
                            input_range=entry.input_range)
    x = cache.images(entry, "mnist", "test", 0, 1)
    res = snn.run(x)
    s = timeline.layer_spikes(snn, res, layer)
    top = figures.spread_neurons(s.activations, s.shape, len(traces))
    assert [t["name"] for t in traces] == [f"neuron {i}" for i in timeline.unravel(s.shape, top)]
    # from the map: one channel (784 squares), that of the first neuron chosen
    at.radio(key=state.widget_key(state.TRACE_PICK)).set_value("from the feature map").run()
    picker = [c for k, c in charts(ok(at)).items() if k.startswith("picker")]
    assert len(picker) == 1 and len(picker[0]["data"][0]["customdata"]) == 28 * 28
    channel = at.number_input(key=f"_w_picker_{layer}_channel")
    assert channel.value == timeline.top_channels(s, 1)[0]  # no neuron chosen here yet: the most active channel
    channel.set_value(7).run()
    picker = [c for k, c in charts(ok(at)).items() if k.startswith("picker")]
    assert sorted(np.asarray(picker[0]["data"][0]["customdata"]).tolist()) == list(range(7 * 784, 8 * 784))


@pytest.mark.integration
def test_the_ann_vs_snn_page_samples_a_large_layer_and_says_so(wide_session):
    from .helpers import COMPARE

    at = _page(COMPARE, wide_session)
    fig = charts(at)["scatter"]
    first = fig["data"][0]
    assert len(first["x"]) == timeline.SCATTER_POINTS
    assert "20,000 of 75,264 neurons shown" in fig["layout"]["annotations"][0]["text"]
    assert any("20,000 of 75,264 neurons shown" in c.value and "errors computed on all" in c.value
               for c in at.caption)
    hist = charts(at)["errors"]
    assert hist["data"][0]["type"] == "bar" and int(np.sum(hist["data"][0]["y"])) == 75_264
    table = next(d.value for d in at.dataframe if "max |SNN − ANN|" in d.value.columns)
    assert list(table["neurons"])[0] == 75_264


# --- timeline.js itself, under node, with a stand-in for the page and for Plotly ----------------------------------
HARNESS = r"""
const fs = require("fs"), vm = require("vm");
const P = JSON.parse(fs.readFileSync(0));
const sent = [], elements = {}, images = {};
function ctx(owner) {
  let style = "#000000";
  return {
    set fillStyle(v) { style = v; }, get fillStyle() { return style; }, clearRect() {}, fillRect() {},
    getImageData() { return { data: [10, 20, 30, 255] }; },
    createImageData(w, h) { return { width: w, height: h, data: new Uint8ClampedArray(4 * w * h) }; },
    putImageData(img) { images[owner.id] = img; },
  };
}
function element(id) {
  const e = { id, textContent: "", value: 0, max: 0, style: {}, children: [], handlers: {}, layout: { shapes: [] },
    classList: { add() {}, remove() {} }, addEventListener() {}, on(evt, fn) { this.handlers[evt] = fn; },
    appendChild(c) { this.children.push(c); }, replaceChildren() { this.children = []; } };
  e.getContext = () => (e._ctx = e._ctx || ctx(e));
  return e;
}
const axis = () => ({ l2p: (v) => 10 * v, p2l: (p) => p / 10, _offset: 5 });
globalThis.window = globalThis;
window.parent = { postMessage: (m) => sent.push(m) };
const listeners = [];
window.addEventListener = (type, fn) => { if (type === "message") listeners.push(fn); };
globalThis.document = {
  getElementById: (id) => (elements[id] = elements[id] || element(id)),
  createElement: () => element("canvas-" + Object.keys(elements).length),
  body: { scrollHeight: 100 },
};
globalThis.requestAnimationFrame = (fn) => setImmediate(() => fn(performance.now()));
const scale = (s) => (Array.isArray(s) ? s : [[0, "#000000"], [1, "#ffffff"]]);
globalThis.Plotly = {
  react(gd, data, layout) {
    gd._fullData = data.map((t) => Object.assign({}, t, { colorscale: scale(t.colorscale), zmin: t.zmin ?? 0,
                                                          zmax: t.zmax ?? 1 }));
    gd._fullLayout = { xaxis: axis(), yaxis: axis(), xaxis2: axis(), yaxis2: axis() };
    gd.layout = layout;
    return Promise.resolve();
  },
  relayout(gd, update) { if (update.shapes) gd.layout.shapes = update.shapes; return Promise.resolve(); },
  restyle(gd, update) { gd.restyled = update; return Promise.resolve(); },
};
for (const name of ["views.js", "timeline.js"]) vm.runInThisContext(fs.readFileSync(P.dir + "/" + name, "utf8"));
const out = { steps: {} };
const wait = () => new Promise((r) => setTimeout(r, 20));
(async () => {
  listeners.forEach((fn) => fn({ data: { type: "streamlit:render", args: { spec: JSON.stringify(P.spec) } } }));
  for (let i = 0; i < 50 && !window.ttfsTimeline.paints.length; i++) await wait();
  for (const step of P.steps) {
    const n = window.ttfsTimeline.paints.length;
    go(step, 0);
    for (let i = 0; i < 50 && window.ttfsTimeline.paints.length === n; i++) await wait();
    const lit = (id) => {
      let c = 0;
      for (let i = 3; i < images[id].data.length; i += 4) c += images[id].data[i] > 0;
      return c;
    };
    const text = (id) => document.getElementById(id).textContent;
    out.steps[step] = { counts: text("counts"), input: lit("cells-0"), layer: lit("cells-1"), label: text("label") };
  }
  const raster = document.getElementById("raster").handlers, maps = document.getElementById("maps").handlers;
  out.hovers = P.hovers.map(([source, pt]) => {
    (source === "raster" ? raster : maps).plotly_hover({ points: [pt] });
    const ring = document.getElementById("raster").restyled;
    return { text: document.getElementById("hovered").textContent,
             shapes: document.getElementById("maps").layout.shapes,
             ring: ring && { x: ring.x[0][0], y: ring.y[0][0] } };
  });
  out.clicks = P.clicks.map(([source, pt]) => {
    const before = sent.length;
    (source === "raster" ? raster : maps).plotly_click({ points: [pt] });
    return { sent: sent.slice(before).map((m) => m.value || null),
             message: document.getElementById("message").textContent };
  });
  process.stdout.write(JSON.stringify(out));
})().catch((e) => { console.error(e && e.stack || e); process.exit(1); });
"""


def _run_timeline(spec: dict, steps: list[int], hovers: list, clicks: list) -> dict:
    payload = {"dir": str(VIEWS_JS.parent), "spec": spec, "steps": steps, "hovers": hovers, "clicks": clicks}
    out = subprocess.run([NODE, "-e", HARNESS], input=json.dumps(payload), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_timeline_js_draws_a_large_network_from_its_spec(big):
    """The page's script, run on the spec of the 3×160×160 net: each step paints as many cells as have fired, the
    counts line gives the total and the layers firing, a heat-strip cell says its count and a click on it asks
    for its channel, a map cell names its neuron and a click opens it; an RGB pixel says its colour."""
    tl, spikes, snn = big["tl"], big["spikes"], big["snn"]
    colours = timeline.input_colours(spikes[0], snn.input_range, MEAN, STD)
    spec = live.spec(spikes, tl, timeline.STRETCHED, 1, tl.steps, channels=[3, 1], colours=colours)
    strip = next(d for d in spec["density"] if d["layer"] == 1)
    d = timeline.density(spikes[1], 1, tl, timeline.STRETCHED)
    k = tl.steps_per_window + tl.steps_per_window // 2  # half-way through conv 0's window
    grid = figures.grid_index(spikes[1].shape, [3, 1])
    r, c = map(int, np.argwhere(grid == 1 * 25_600 + 161)[0])  # channel 1, (1, 1)
    got = _run_timeline(spec, [0, k, tl.steps],
                        hovers=[["raster", {"curveNumber": strip["trace"], "pointNumber": [2, 39]}],
                                ["maps", {"curveNumber": 3, "pointNumber": [r, c]}],
                                ["maps", {"curveNumber": 1, "pointNumber": [7, 9]}]],
                        clicks=[["raster", {"curveNumber": strip["trace"], "pointNumber": [2, 39]}],
                                ["maps", {"curveNumber": 3, "pointNumber": [r, c]}]])
    kf = [tl.fire_steps(n, s.offsets) for n, s in enumerate(spikes)]
    for step in (0, k, tl.steps):
        shown = got["steps"][str(step)]
        fired = kf[0].reshape(3, -1) <= step
        assert shown["input"] == int(fired.any(axis=0).sum())  # pixels with any channel fired
        assert shown["layer"] == int((kf[1].reshape(4, -1)[[3, 1]] <= step).sum())
        total = sum(int((f <= step).sum()) for f in kf)
        assert shown["counts"].startswith(f"Fired by the cursor: {total:,} of {sum(s.neurons for s in spikes):,}")
        assert shown["label"] == tl.describe_step(step)
    assert "conv 0 " in got["steps"][str(k)]["counts"].split("firing:")[1]  # conv 0 is firing half-way through
    strip_text = got["hovers"][0]["text"]
    assert strip_text.startswith("conv 0 channel 2 ·") and f": {int(d.counts[2, 39]):,} spikes" in strip_text
    neuron = got["hovers"][1]
    assert neuron["text"].startswith("conv 0 neuron (1, 1, 1) · activation ≈ ")
    value = float(neuron["text"].split("≈ ")[1].split(" ")[0])
    assert value == pytest.approx(spikes[1].activations[25_600 + 161], abs=spec["panels"][1]["act"]["scale"])
    assert neuron["shapes"][0]["x0"] == c - 0.5 and neuron["shapes"][0]["y0"] == r - 0.5
    y0, y1 = figures.raster_groups(spikes)[1]
    assert neuron["ring"]["y"] == pytest.approx(y0 + 1.5 * (y1 - y0) / 4)  # on channel 1's row of the strip
    assert neuron["ring"]["x"] == pytest.approx(spec["cursor_x"][int(kf[1][25_600 + 161])])
    pixel = got["hovers"][2]["text"]
    p = 7 * 160 + 9
    assert pixel.startswith("input pixel (7, 9) · RGB ") and pixel.endswith(
        f"RGB {colours[0].ravel()[p]}, {colours[1].ravel()[p]}, {colours[2].ravel()[p]}")
    pick, cell = got["clicks"]
    assert pick["sent"][0]["layer"] == spikes[1].name and pick["sent"][0]["channel"] == 2
    # what messages.timeline_event reads, Reveal and Play's speed included (they go into the page's link)
    assert set(pick["sent"][0]) == {"layer", "channel", "cursor", "reveal", "speed", "seq"}
    assert cell["sent"][0]["neuron"] == 25_600 + 161
    assert set(cell["sent"][0]) == {"layer", "neuron", "cursor", "reveal", "speed", "seq"}
    for sent in (pick["sent"][0], cell["sent"][0]):
        assert messages.timeline_event(sent, spec["steps"], {s.name: s.neurons for s in spikes[1:]},
                                       {spikes[1].name: spikes[1].shape[0]}, (2, 5, 10, 20, 30, 60)).reveal in (0, 1)


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_timeline_js_draws_the_bundled_models_as_before():
    """LeNet-5's spec through the same script: counts per layer and step, every fired cell painted, a dot's hover
    names its neuron on both views (the browser test does this in Chromium; this is its quick check)."""
    model, card = zoo.load("lenet5")
    imgs, _ = data.load_uint8("mnist", "train")
    snn = ttfs_core.convert(model, card.preprocess.batch_from_uint8(np.asarray(imgs[:256])),
                            input_range=card.input_range)
    test, _ = data.load_uint8("mnist", "test")
    res = snn.run(card.preprocess.batch_from_uint8(np.asarray(test[:1])))
    tl = timeline.timeline_of(snn)
    spikes = timeline.spikes_of(snn, res)
    spec = live.spec(spikes, tl, tl.default_mode(), 1, tl.steps)
    n_trace = spec["trace_layer"].index(1)
    dot = {"curveNumber": n_trace, "pointNumber": 5, "customdata": [int(spec_dot(spec, n_trace)), 0, 0], "x": 1.0}
    got = _run_timeline(spec, [25, tl.steps], hovers=[["raster", dot]], clicks=[["raster", dot]])
    for step in (25, tl.steps):
        expected = "Fired by the cursor: " + " · ".join(
            f"{s.label} {int(tl.fired_counts(n, s.offsets)[step]):,}/{s.neurons:,}" for n, s in enumerate(spikes))
        assert got["steps"][str(step)]["counts"] == expected
        assert got["steps"][str(step)]["layer"] == int(tl.fired_counts(1, spikes[1].offsets)[step])
    flat = int(spec_dot(spec, n_trace))
    assert got["hovers"][0]["text"] == f"conv 0 neuron {timeline.unravel(spikes[1].shape, [flat])[0]} · click to " \
                                       "open its membrane trace"
    assert got["clicks"][0]["sent"][0]["neuron"] == flat


def spec_dot(spec: dict, trace: int) -> int:
    """The flat index of the 6th dot of a raster trace (its customdata's first column: a float32 (N, 3) array)."""
    custom = spec["raster"]["data"][trace]["customdata"]
    return int(np.frombuffer(base64.b64decode(custom["bdata"]), dtype=np.dtype(custom["dtype"])).reshape(-1, 3)[5, 0])


@pytest.mark.integration
def test_a_large_network_counts_b1_beside_alpha_on_request(wide_session):
    """A network drawn as heat strips does not convert a second time on its own; the toggle asks for B1's counts,
    and the spec then carries them for every layer, as the bundled models' do."""
    from .helpers import RASTER

    at = _page(RASTER, wide_session)
    assert "compare" not in _spec(at)
    [toggle] = [t for t in at.toggle if t.key == "_ttfs_raster_other_counts"]
    assert toggle.label == "Count B1 beside α on this input" and toggle.value is False
    toggle.set_value(True).run()
    spec = _spec(ok(at))
    assert spec["compare"]["this"] == "α" and spec["compare"]["other"] == "B1"
    assert len(spec["compare"]["count_spans"]) == len(spec["neurons"])
    assert not [c for c in at.caption if "cannot be counted" in c.value]
