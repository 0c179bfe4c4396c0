"""The robustness page's sweeps (`ttfs_core.robustness`), without waits.

Bundled models at the conversion settings of the presets (`controls.PRESETS`) on their own test set: the numbers
ship in ``assets/robustness_sweeps.json`` (per chunk of CHUNK test images, up to IMAGES; VGG's first 200, and
further chunks are computed), written by ``scripts/precompute_sweeps.py`` and read once per server. An entry is
used only while its model's weights (sha256), the knobs' values and the chunking are those it was computed with,
and tests/test_robustness.py recomputes a subset, so the file cannot go stale silently.

Everything else (uploads, other settings, another test set) is computed on the server in chunks of CHUNK test
images, one cached result per (network, series, chunk): every session shares it, and a lock per key makes
sessions that ask at the same time wait for one computation instead of repeating it. Switching the jitter unit
or the weight target computes that series only.

A *series* is one curve: a knob and, for jitter, the unit of σ ("jitter:tau", "jitter:window"), for weight bits
what is quantised ("weight_bits:W", "weight_bits:J"), plus two one-point series, "ann" (the ANN's accuracy) and
"exact" (the SNN unperturbed).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import streamlit as st
import torch
from torch import Tensor, nn

import ttfs_core
from ttfs_core import data, robustness, zoo
from ttfs_core.neurons import neuron_model, rescale_rule
from ttfs_core.robustness import SweepPoint

from . import cache, state

SHIPPED = Path(__file__).resolve().parent.parent / "assets" / "robustness_sweeps.json"
FORMAT = 1
MAX_LOCKS = 4096  # computation locks kept before the idle ones are forgotten
CHUNK = 100  # test images per cached chunk and per shipped record; divides every ROBUST_IMAGE_OPTIONS
IMAGES = max(state.ROBUST_IMAGE_OPTIONS)  # test images the shipped sweeps cover
KNOBS = cache.KNOBS  # knob -> values swept (MATH §7, §9)
SERIES: dict[str, tuple[str, tuple[float, ...]]] = {  # series -> (knob, values)
    "ann": ("ann", (0.0,)),
    "exact": ("exact", (0.0,)),
    "time_bits": ("time_bits", KNOBS["time_bits"]),
    "jitter:tau": ("jitter", KNOBS["jitter"]),
    "jitter:window": ("jitter", KNOBS["jitter"]),
    "weight_bits:W": ("weight_bits", KNOBS["weight_bits"]),
    "weight_bits:J": ("weight_bits", KNOBS["weight_bits"]),
    "margin": ("margin", KNOBS["margin"]),
}
WEIGHTS = "ttfs_robust_weights"  # the page's own state: "W" (per output channel, the default) or "J" (per layer)
WEIGHT_TARGETS = {  # target -> (short name, what it means)
    "W": ("W per output channel", "the ANN's weights; J derived from them as conversion does"),
    "J": ("J per layer", "the synapses themselves, one scale for the whole layer"),
}
DEFAULTS = {WEIGHTS: "W"}
PARAMS = {"weights": state.Param(WEIGHTS, state.one_of(*WEIGHT_TARGETS))}


def shown_series(relative: bool, target: str) -> list[str]:
    """The series the page draws for a jitter unit and a weight target."""
    return ["ann", "exact", "time_bits", "jitter:window" if relative else "jitter:tau", f"weight_bits:{target}",
            "margin"]


def settings_key(margin: float, neuron, rescale) -> str:
    """How a setting of the conversion is named in the shipped file: "0.5|alpha|sum"."""
    return f"{float(margin):g}|{neuron_model(neuron).name}|{rescale_rule(rescale).name}"


def preset_settings() -> list[tuple[float, str, str]]:
    """(ζ, neuron, rescaling) of every preset of the explorer (`controls.PRESETS`), the default first."""
    from .controls import PRESETS

    return [(float(v[state.MARGIN]), str(v[state.NEURON]), str(v[state.RESCALE])) for v, _ in PRESETS.values()]


# --- the computation (no Streamlit: the precompute script and the tests call it too) ----------------------------
def series_points(series: str, snn: ttfs_core.SpikingNetwork, x: Tensor, labels: Tensor | None, model: nn.Module, *,
                  start: int = 0, networks: Callable[[float], ttfs_core.SpikingNetwork] | None = None,
                  values: Sequence[float] | None = None) -> list[SweepPoint]:
    """The points of one series on one chunk of test images, the first of which is test image `start` (it seeds the
    jitter, so each chunk gets its own noise). `networks(ζ)`: the network converted with window margin ζ (the
    margin series). `values`: a subset of the series' values. Without labels accuracies are None.
    Shape: x (B, *input_shape), labels (B,)."""
    knob, default = SERIES[series]
    values = default if values is None else values
    ref = robustness.reference(snn, x, model)
    if series == "ann":
        acc = None if labels is None else float((ref == labels).double().mean())
        return [SweepPoint("ann", 0.0, acc, 1.0, 0, 0.0, int(x.shape[0]))]
    points = []
    for v in values:
        net, perturb = snn, None
        if knob == "time_bits":
            perturb = robustness.quantise_times(int(v))
        elif knob == "jitter":
            perturb = robustness.jitter_times(float(v), seed=start, relative=series == "jitter:window")
        elif knob == "weight_bits":
            net = robustness.quantise_weights(snn, int(v), series.partition(":")[2])
        elif knob == "margin":
            if networks is None:
                raise ValueError("the margin series needs the networks converted at each margin")
            net = networks(float(v))
        points.append(robustness.score(net, x, labels, ref, knob, v, perturb))
    return points


def weights_digest(name: str) -> str:
    """sha256 of a bundled model's weights file: a shipped sweep belongs to these weights only."""
    return hashlib.sha256(zoo.weights_path(name).read_bytes()).hexdigest()


def compute_model(name: str, jobs: Sequence[tuple[tuple[float, str, str], Sequence[str]]], images: int = IMAGES,
                  log: Callable[[str], None] = print) -> dict:
    """The shipped record of one bundled model: for each job ((ζ, neuron, rescaling), series) those series on the
    first `images` test images of its own test set, per chunk of CHUNK images (`encode`), computed as the page
    computes them live."""
    model, card = zoo.load(name)
    train, _ = data.load_uint8(card.dataset, "train")
    calibration = card.preprocess.batch_from_uint8(np.asarray(train[:cache.CALIBRATION_IMAGES]))
    test, test_labels = data.load_uint8(card.dataset, "test")
    nets: dict[tuple, ttfs_core.SpikingNetwork] = {}

    def network(margin: float, neuron: str, rescale: str) -> ttfs_core.SpikingNetwork:
        key = (float(margin), neuron, rescale)
        if key not in nets:
            nets[key] = ttfs_core.convert(model, calibration, margin=float(margin), input_range=tuple(card.input_range),
                                          neuron=neuron_model(neuron), rescale=rescale_rule(rescale))
        return nets[key]

    out = {}
    for (margin, neuron, rescale), series in jobs:
        snn = network(margin, neuron, rescale)

        def margins(m: float, neuron: str = neuron, rescale: str = rescale) -> ttfs_core.SpikingNetwork:
            return network(m, neuron, rescale)

        record: dict[str, list] = {s: [] for s in series}
        for start in range(0, images, CHUNK):
            x = card.preprocess.batch_from_uint8(np.asarray(test[start:start + CHUNK]))
            y = torch.from_numpy(np.asarray(test_labels[start:start + CHUNK]).astype(np.int64))
            for s in series:
                record[s].append(series_points(s, snn, x, y, model, start=start, networks=margins))
            log(f"{name} {settings_key(margin, neuron, rescale)}: {start + CHUNK} of {images} test images")
        out[settings_key(margin, neuron, rescale)] = encode(record)
    return {"dataset": card.dataset, "weights_sha256": weights_digest(name), "images": images, "settings": out}


def encode(record: dict[str, list[list[SweepPoint]]]) -> dict[str, list]:
    """Series -> [chunk][value] points as series -> [value][chunk] rows [correct, agreeing, early spikes, spikes per
    neuron] (the counts are of the chunk's CHUNK images)."""
    out = {}
    for s, chunks in record.items():
        out[s] = [[[round(p.accuracy * p.images), round(p.agreement * p.images), p.early_spikes,
                    float(f"{p.spikes_per_neuron:.6g}")] for p in (chunk[i] for chunk in chunks)]
                  for i in range(len(chunks[0]))]
    return out


def header() -> dict:
    """What a shipped file must have been computed with to be used."""
    return {"format": FORMAT, "chunk": CHUNK, "images": IMAGES, "calibration_images": cache.CALIBRATION_IMAGES,
            "series": {s: [k, list(v)] for s, (k, v) in SERIES.items()}}


def write(models: dict[str, dict], path: Path = SHIPPED) -> None:
    doc = {"about": "Robustness sweeps of the bundled models at the presets' settings, per chunk of test images; "
                    "written by scripts/precompute_sweeps.py, read by ttfs_ui/sweeps.py.",
           **header(), "models": models}
    part = path.with_name(path.name + ".part")  # readers never see half a file
    part.write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")
    part.replace(path)


def read(path: Path = SHIPPED) -> dict:
    """The shipped file's models whose header matches this code and whose weights are the bundled ones (name ->
    record); {} when there is no usable file."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if any(doc.get(k) != v for k, v in header().items()):
        return {}
    usable = {}
    for name, record in doc.get("models", {}).items():
        if name in zoo.ARCHITECTURES and zoo.weights_path(name).is_file() and \
                record.get("weights_sha256") == weights_digest(name):
            usable[name] = record
    return usable


# --- in the explorer ----------------------------------------------------------------------------------------
@st.cache_resource(show_spinner=False)
def shipped() -> dict:
    """The usable shipped sweeps, read once per server (`read`)."""
    return read()


def shipped_chunks(entry: cache.ModelEntry, net_key: cache.Settings, dataset,
                   series: str) -> list[list[SweepPoint]]:
    """The shipped points of one series per chunk of CHUNK test images ([chunk][value]), as many chunks as were
    shipped for this model, these settings and this test set (none: [])."""
    if entry.card is None or not isinstance(dataset, str) or dataset != entry.dataset:
        return []
    record = shipped().get(entry.card.name)
    if record is None or record.get("dataset") != dataset:
        return []
    rows = record["settings"].get(settings_key(net_key.margin, net_key.neuron, net_key.rescale), {}).get(series)
    if rows is None:
        return []
    knob, values = SERIES[series]
    return [[SweepPoint(knob, float(v), c / CHUNK, a / CHUNK, int(e), float(s), CHUNK)
             for v, (c, a, e, s) in zip(values, chunk_rows)] for chunk_rows in zip(*rows)]


def precomputed(entry: cache.ModelEntry, net_key: cache.Settings, dataset, n: int,
                series: Sequence[str]) -> dict[str, list[SweepPoint]] | None:
    """The shipped points of these series over the first n test images, or None unless every one of them was
    shipped for this model, these settings, this test set and n images."""
    chunks = -(-n // CHUNK)
    out = {}
    for s in series:
        shipped_ = shipped_chunks(entry, net_key, dataset, s)
        if n % CHUNK or len(shipped_) < chunks:
            return None
        out[s] = [robustness.merge_points(list(p)) for p in zip(*shipped_[:chunks])]
    return out


@st.cache_resource(show_spinner=False)
def _locks() -> tuple[threading.Lock, dict]:
    """One lock per computation key, shared by every session of this server."""
    return threading.Lock(), {}


def _lock(key: tuple) -> threading.Lock:
    guard, locks = _locks()
    with guard:
        if len(locks) > MAX_LOCKS:  # forget the locks no computation holds now (memory stays bounded)
            for k in [k for k, lock in locks.items() if not lock.locked()]:
                del locks[k]
        return locks.setdefault(key, threading.Lock())


def chunk(net_key: cache.Settings, dataset, series: str, start: int, stop: int, entry: cache.ModelEntry,
          snn: ttfs_core.SpikingNetwork) -> list[SweepPoint]:
    """One series on the test images [start, stop) of `dataset` (a bundled dataset's name, or an upload's data set),
    computed once per server: a session that asks while another computes it waits for that computation and then
    reads its cached result."""
    name = cache.dataset_key(dataset)
    with _lock((net_key, name, series, start, stop)):
        return _chunk(net_key, name, series, start, stop, dataset, entry, snn)


@st.cache_data(show_spinner=False, max_entries=4096)
def _chunk(net_key: cache.Settings, dataset_key: str, series: str, start: int, stop: int, _dataset,
           _entry: cache.ModelEntry, _snn: ttfs_core.SpikingNetwork) -> list[SweepPoint]:
    x = cache.images(_entry, _dataset, "test", start, stop)
    y = cache.labels(_entry, _dataset, start, stop)
    labels = None if y is None else torch.from_numpy(np.asarray(y).astype(np.int64))

    def networks(margin: float) -> ttfs_core.SpikingNetwork:
        return cache.network(cache.Settings(net_key.model, margin, net_key.neuron, net_key.rescale), _entry)

    return series_points(series, _snn, x, labels, _entry.model, start=start, networks=networks)


def live(net_key: cache.Settings, dataset, n: int, series: Sequence[str], entry: cache.ModelEntry,
         snn: ttfs_core.SpikingNetwork):
    """The series chunk by chunk, shipped chunks first (`shipped_chunks`), then computed ones (`chunk`); yields
    (images done, series -> points over them) after each chunk."""
    shipped_ = {s: shipped_chunks(entry, net_key, dataset, s) for s in series}
    done: dict[str, list[list[SweepPoint]]] = {s: [] for s in series}
    for k, start in enumerate(range(0, n, CHUNK)):
        stop = min(start + CHUNK, n)
        for s in series:
            have = shipped_[s][k] if k < len(shipped_[s]) and stop - start == CHUNK else None
            done[s].append(have or chunk(net_key, dataset, s, start, stop, entry, snn))
        yield stop, {s: [robustness.merge_points(list(p)) for p in zip(*chunks)] for s, chunks in done.items()}
