"""Cached calls into `ttfs_core`. Models and converted networks are `st.cache_resource` (shared, never
mutated); simulation results are `st.cache_data` (copied per call). No function here reads a widget or the
session state: everything that selects what to compute is an argument, and objects that are not hashable are
passed as `_name` arguments next to the key that identifies them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

import numpy as np
import streamlit as st
import torch
from torch import Tensor, nn

import ttfs_core
from ttfs_core import data, verify, zoo
from ttfs_core.compare import first_output
from ttfs_core.neurons import NeuronModel, Rescale

from . import peers
from .uploads import UploadedModel, check_bundled_input, read_model

CALIBRATION_IMAGES = 512  # first images of the model's dataset's bundled train subset used to calibrate
EVAL_CHUNK = 100  # test images simulated per cached chunk (the progress bar advances per chunk)
MAX_EARLY_ROWS = 500


@dataclass(frozen=True)
class ModelEntry:
    """A model the app can convert: a bundled one (with its card) or an upload."""

    key: str
    title: str
    model: nn.Module
    card: zoo.ModelCard | None
    preprocess: data.Preprocess
    input_range: tuple[float, float] | None  # None: from the calibration data

    @property
    def dataset(self) -> str:
        """The bundled dataset the model was trained on: its card's, MNIST for uploads (calibration uses it)."""
        return self.card.dataset if self.card is not None else data.DEFAULT_DATASET

    @property
    def description(self) -> str:
        if self.card is None:
            return "Uploaded model; inputs assumed to be MNIST pixels / 255 in [0, 1] (1×28×28)."
        c = self.card
        return (f"{c.architecture}. {c.num_parameters:,} parameters; test accuracy {100 * c.test_accuracy:.2f} % on "
                f"all 10,000 {data.dataset(c.dataset).title} test images. Input: {c.preprocess.input_range}.")


@dataclass(frozen=True)
class Settings:
    """What a converted network is made from, and so the key of every cached result about it: the model (its key in
    the session, `state.MODEL`) and the conversion settings. Plain data (Streamlit hashes it field by field)."""

    model: str
    margin: float  # ζ of B_n = (1 + ζ)·X_n (MATH §4)
    neuron: NeuronModel
    rescale: Rescale


NetKey = Settings  # an older name of Settings


@st.cache_resource(show_spinner=False)
def zoo_cards() -> list[zoo.ModelCard]:
    return zoo.list_models()


@st.cache_resource(show_spinner="Loading the bundled model…")
def zoo_model(name: str) -> ModelEntry:
    model, card = zoo.load(name)
    return ModelEntry(f"zoo:{name}", card.title, model, card, card.preprocess, tuple(card.input_range))


@st.cache_resource(show_spinner="Loading the uploaded model…", max_entries=8)
def uploaded_model(key: str, _upload: UploadedModel) -> ModelEntry:
    """Raises ModelLoadError (not cached) for anything the safe loader refuses or that takes other inputs.

    The entry is shared by every session that uploads the same bytes, so it carries no file name: each session
    titles it with its own upload's name (`titled`)."""
    model = read_model(_upload.data, _upload.filename, _upload.arch)
    check_bundled_input(model)
    return ModelEntry(key, "uploaded model", model, None, data.MNIST_PREPROCESS, None)


def titled(entry: ModelEntry, upload: UploadedModel) -> ModelEntry:
    """The shared entry of an uploaded model, titled with this session's file name."""
    return replace(entry, title=upload.title)


@st.cache_resource(show_spinner=False)
def bundled(dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A bundled dataset split as read-only uint8 images (N, 28, 28) and labels (N,) (checksum verified)."""
    return data.load_uint8(dataset, split)


def images(entry: ModelEntry, dataset: str, split: str, start: int, stop: int) -> Tensor:
    """Bundled images [start, stop) preprocessed for the model. Shape: (stop − start, C, H, W)."""
    imgs, _ = bundled(dataset, split)
    return entry.preprocess.batch_from_uint8(np.asarray(imgs[start:stop]))


@st.cache_resource(show_spinner="Converting the network to spikes…", max_entries=16)
def network(net_key: Settings, _entry: ModelEntry) -> ttfs_core.SpikingNetwork:
    """The converted network: every session shares it, none can change it (a frozen record). Raises
    ttfs_core.ConversionError (not cached)."""
    calibration = images(_entry, _entry.dataset, "train", 0, CALIBRATION_IMAGES)
    return ttfs_core.convert(_entry.model, calibration, margin=net_key.margin, input_range=_entry.input_range,
                             neuron=net_key.neuron, rescale=net_key.rescale)


@st.cache_resource(show_spinner="Converting with SpikingJelly's rate coding…", max_entries=4)
def rate_coded(model_key: str, _entry: ModelEntry) -> tuple[peers.RateCoded, threading.Lock]:
    """SpikingJelly's rate-coded conversion of a model (calibrated on the same images as ours), with the lock its
    users hold while they step it: a rate-coded network keeps state between steps, and sessions share it."""
    calibration = images(_entry, _entry.dataset, "train", 0, CALIBRATION_IMAGES)
    return peers.spikingjelly(_entry.model, calibration), threading.Lock()


@st.cache_data(show_spinner="Simulating the rate-coded network…", max_entries=32)
def rate_raster(model_key: str, image_key: str, steps: int, _rc: tuple, _x: Tensor) -> tuple:
    """The rate-coded network's first spiking layer on one input for `steps` time steps (`peers.first_layer_spikes`)."""
    rc, lock = _rc
    with lock:
        return peers.first_layer_spikes(rc, _x, steps)


@st.cache_data(show_spinner=False, max_entries=64)
def simulate(net_key: Settings, image_key: str, _snn: ttfs_core.SpikingNetwork, _x: Tensor) -> ttfs_core.SimResult:
    """Exact event-driven simulation of one input (1, *input_shape)."""
    return _snn.run(_x)


@st.cache_data(show_spinner=False, max_entries=64)
def ann_logits(model_key: str, image_key: str, _model: nn.Module, _x: Tensor) -> np.ndarray:
    """The original model's logits. Shape: (1, classes)."""
    with torch.no_grad():
        out = first_output(_model(_x))
    return out.detach().double().numpy()


@st.cache_data(show_spinner="Recording the ANN's activations…", max_entries=32)
def comparison(net_key: Settings, image_key: str, _model: nn.Module, _snn: ttfs_core.SpikingNetwork,
               _x: Tensor) -> list[ttfs_core.LayerComparison]:
    """Per spiking layer, ANN and SNN activations of one input in the original model's units."""
    return ttfs_core.compare(_model, _snn, _x, result=simulate(net_key, image_key, _snn, _x))


@st.cache_resource(show_spinner=False, max_entries=16)
def verifier(net_key: NetKey, _entry: ModelEntry, _snn: ttfs_core.SpikingNetwork) -> verify.Verifier:
    """The network's verifier (`ttfs_core.verify`: the model traced once), shared by every session: checking a
    batch changes nothing."""
    return verify.Verifier(_entry.model, _snn, images(_entry, _entry.dataset, "train", 0, 1))


@st.cache_data(show_spinner=False, max_entries=64)
def check(net_key: NetKey, image_key: str, _entry: ModelEntry, _snn: ttfs_core.SpikingNetwork,
          _x: Tensor) -> verify.Report:
    """The verification report of one input (1, *input_shape), on its cached simulation."""
    return verifier(net_key, _entry, _snn).check(_x, None, 0, result=simulate(net_key, image_key, _snn, _x))


@st.cache_data(show_spinner=False, max_entries=256)
def evaluate_chunk(net_key: NetKey, dataset: str, start: int, stop: int, _entry: ModelEntry,
                   _snn: ttfs_core.SpikingNetwork) -> tuple[verify.Report, list[dict]]:
    """The verification report of the test images [start, stop) of ``dataset`` (`verify.Verifier.check`; merge
    chunks with `verify.Report.merge`), and their early spikes: image, layer, neuron (flat), index, how early
    (τ_c); at most MAX_EARLY_ROWS per layer."""
    x = images(_entry, dataset, "test", start, stop)
    labels = torch.from_numpy(np.asarray(bundled(dataset, "test")[1][start:stop]).astype(np.int64))
    res = _snn.run(x)
    report = verifier(net_key, _entry, _snn).check(x, labels, start, result=res)
    early = []
    for layer, lr in zip(_snn.layers, res.layers):
        if lr.early_spikes == 0:
            continue
        off = lr.offsets.flatten(1)
        for b, j in lr.early_mask.flatten(1).nonzero().tolist()[:MAX_EARLY_ROWS]:
            idx = np.unravel_index(j, layer.shape)
            early.append({"image": start + b, "layer": layer.name, "neuron": j,
                          "index": "(" + ", ".join(str(int(i)) for i in idx) + ")",
                          "early by (τ_c)": -float(off[b, j])})
    return report, early


@st.cache_data(show_spinner=False, max_entries=256)
def trace(net_key: Settings, image_key: str, layer: str, index: tuple[int, ...], steps: int | None,
          dt: float | None, _snn: ttfs_core.SpikingNetwork, _x: Tensor):
    """Membrane trace of one neuron: exact, plus clock-driven with `steps` ticks per window or ticks no longer
    than `dt` (τ_c) when one of them is given."""
    result = simulate(net_key, image_key, _snn, _x)
    return _snn.trace(_x, layer, index, result=result, steps=steps, dt=dt)


@st.cache_data(show_spinner="Simulating with a clock…", max_entries=32)
def simulate_stepped(net_key: Settings, image_key: str, steps: int, _snn: ttfs_core.SpikingNetwork,
                     _x: Tensor) -> ttfs_core.SimResult:
    return _snn.run_stepped(_x, steps=steps)


KNOBS = {  # knob -> values swept (MATH §7, §9)
    "time_bits": tuple(range(2, 13)),
    "jitter": (0.0, 5e-4, 5e-3, 0.05, 0.2, 0.5),  # τ_c (the paper's windows are a few τ_c), or × B_n
    "weight_bits": tuple(range(2, 13)),
    "margin": (-0.7, -0.5, -0.3, -0.1, 0.0, 0.25, 0.5),
}


@st.cache_data(show_spinner=False, max_entries=1024)
def sweep_point(net_key: Settings, dataset: str, knob: str, value: float, n: int, relative: bool, _entry: ModelEntry,
                _snn: ttfs_core.SpikingNetwork):
    """One point of a robustness sweep over the first n test images of ``dataset`` (`ttfs_core.robustness`).

    Agreement is with the original model's argmax; `relative`: jitter σ in units of each window, not of τ_c.
    """
    from ttfs_core import robustness

    x = images(_entry, dataset, "test", 0, n)
    labels = torch.from_numpy(np.asarray(bundled(dataset, "test")[1][:n]).copy())
    model = _entry.model
    if knob == "time_bits":
        return robustness.time_bits_sweep(_snn, x, labels, bits=[int(value)], model=model)[0]
    if knob == "jitter":
        return robustness.jitter_sweep(_snn, x, labels, sigmas=[float(value)], relative=relative, model=model)[0]
    if knob == "weight_bits":
        return robustness.weight_bits_sweep(_snn, x, labels, bits=[int(value)], model=model)[0]
    if knob == "margin":
        calibration = images(_entry, _entry.dataset, "train", 0, CALIBRATION_IMAGES)
        return robustness.margin_sweep(model, calibration, x, labels, margins=[float(value)],
                                       input_range=_entry.input_range, neuron=net_key.neuron,
                                       rescale=net_key.rescale)[0]
    raise ValueError(f"unknown knob {knob!r}; known: {', '.join(KNOBS)}")
