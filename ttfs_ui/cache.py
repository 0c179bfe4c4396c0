"""Cached calls into `ttfs_core`. Models and converted networks are `st.cache_resource` (shared, never
mutated); simulation results are `st.cache_data` (copied per call). No function here reads a widget or the
session state: everything that selects what to compute is an argument, and objects that are not hashable are
passed as `_name` arguments next to the key that identifies them.
"""

from __future__ import annotations

import gzip
import json
import tempfile
import threading
import weakref
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import streamlit as st
import torch
from torch import Tensor, nn

import ttfs_core
from ttfs_core import data, verify, zoo
from ttfs_core.compare import first_output
from ttfs_core.neurons import NeuronModel, Rescale
from ttfs_core.persist import Card

from . import peers
from .uploads import (
    BUNDLED_SHAPE,
    UploadedData,
    UploadedModel,
    UserData,
    check_model,
    combined_key,
    describe_preprocess,
    infer_shape,
    needs_data,
    peek_shape,
    read_data,
    read_model,
)

CALIBRATION_IMAGES = 512  # images that calibrate: the first of a bundled train subset, or spread over an upload
_UPLOADED_DATA: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # data set name -> UserData of a live
# cached entry (`bundled` serves callers that name an uploaded data set without its entry)
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
    user_data: UserData | None = None  # the data set uploaded with the model (calibration and test images)
    calibration: str = ""  # which images calibrate, in words ("the first 512 of the 4,000 MNIST training images")
    adapted: str | None = None  # for a model run on MNIST though it takes another shape: what was done to MNIST
    shape_from: str = ""  # how the input shape was found (an upload: the exported program, the form...)

    @property
    def dataset(self) -> str | data.Dataset:
        """The data the model is calibrated and tested on: its card's bundled dataset, an upload's own data set (a
        `ttfs_core.data.Dataset` record), or MNIST for an upload without one."""
        if self.user_data is not None:
            return self.user_data.dataset
        return self.card.dataset if self.card is not None else data.DEFAULT_DATASET

    @property
    def description(self) -> str:
        if self.card is None:
            if not self.calibration:
                return "Uploaded model; inputs assumed to be MNIST pixels / 255 in [0, 1] (1×28×28)."
            inputs = f"Uploaded model. Input: {describe_preprocess(self.preprocess)} ({self.shape_from})"
            data_ = f"; data: {self.user_data.summary}" if self.user_data is not None else ""
            notes = "".join(f"; {n}" for n in self.user_data.notes) if self.user_data is not None else ""
            return f"{inputs}{data_}. Calibrated on {self.calibration}{notes}."
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
def model_file(model_key: str, _upload: UploadedModel) -> nn.Module:
    """The model of an uploaded file alone (the safe loader, in its sandbox), shared by every upload of the same
    bytes and architecture whatever their data. Raises ModelLoadError (not cached)."""
    return read_model(_upload.data, _upload.filename, _upload.arch)


@st.cache_data(show_spinner=False, max_entries=16)
def data_shape(data_key: str, _upload: UploadedData) -> tuple[int, int, int] | None:
    """(C, H, W) of an uploaded data set's images as stored, if it tells (`uploads.peek_shape`)."""
    return peek_shape(_upload)


@st.cache_data(show_spinner="Finding the model's input shape…", max_entries=32)
def input_shape(model_key: str, stored: tuple[int, int, int] | None,
                _model: nn.Module) -> tuple[tuple[int, int, int], str]:
    """The input shape to assume for an uploaded model and how it was found (`uploads.infer_shape`)."""
    return infer_shape(_model, stored)


def upload_preprocess(upload: UploadedModel, model: nn.Module) -> tuple[data.Preprocess, str]:
    """The preprocessing of an upload (the form's or the card's if given, else pixels / 255 at the input shape
    `input_shape` finds) and how its shape was found."""
    if upload.preprocess is not None:
        return upload.preprocess, (f"from {upload.card}'s card" if upload.card else "as set in the form")
    stored = data_shape(upload.dataset.key, upload.dataset) if upload.dataset is not None else None
    shape, how = input_shape(upload.model_key, stored, model)
    pre = data.Preprocess(channels=shape[0], height=shape[1], width=shape[2])
    return (data.MNIST_PREPROCESS if pre == data.MNIST_PREPROCESS else pre), how


@st.cache_resource(show_spinner="Reading the uploaded model and data…", max_entries=8)
def uploaded_model(key: str, _upload: UploadedModel) -> ModelEntry:
    """The entry of an uploaded model with its data (`uploads.UploadedModel`). Raises ModelLoadError (not cached)
    for anything the safe loader refuses or that takes other inputs, `uploads.NeedsData` for a model whose inputs
    the bundled data cannot give when no data set came with it, and ValueError for data or preprocessing that do
    not fit it (each a one-line message).

    The entry is shared by every session that uploads the same bytes, so it carries no file name: each session
    titles it with its own upload's name (`titled`)."""
    model = model_file(_upload.model_key, _upload)
    pre, how = upload_preprocess(_upload, model)
    classes = check_model(model, pre.shape)
    if _upload.dataset is not None:
        data_key = combined_key(_upload.dataset.key, None, pre, _upload.classes, False)
        try:
            user = read_data(_upload.dataset, pre, classes, data_key, CALIBRATION_IMAGES)
        except ValueError as e:
            name = _upload.dataset.filename
            raise ValueError(f"cannot use {name} as its data set: {str(e).removeprefix(name + ': ')}") from None
        if _upload.classes and not user.dataset.classes:  # names from a saved network's card
            user = replace(user, dataset=replace(user.dataset, classes=_upload.classes))
        _UPLOADED_DATA[user.dataset.name] = user
        n = len(user.calibration)
        spread = "all" if n == len(user) else f"{n:,} evenly spread over the"
        value_range = pre.value_range if user.pixels is not None else None  # model inputs: from the calibration
        entry = ModelEntry(key, "uploaded model", model, None, pre, value_range, user,
                           f"{spread} {len(user):,} images of {user.dataset.title}", None, how)
    elif pre.shape == BUNDLED_SHAPE and not _upload.mnist and _upload.preprocess is None:
        return ModelEntry(key, "uploaded model", model, None, data.MNIST_PREPROCESS, None)  # as always: MNIST
    elif pre.shape == BUNDLED_SHAPE or _upload.mnist:
        adapted = None if pre.shape == BUNDLED_SHAPE else (
            f"MNIST digits resized to {pre.width}×{pre.height}"
            + (" and replicated to 3 channels" if pre.channels == 3 else "") + " (not the model's own data)")
        entry = ModelEntry(key, "uploaded model", model, None, pre, pre.value_range, None,
                           f"the first {CALIBRATION_IMAGES} MNIST training images"
                           + (f", {adapted.split(' (')[0].removeprefix('MNIST digits ')}" if adapted else ""),
                           adapted, how)
    else:
        raise needs_data(pre.shape, _upload.filename, how)
    x = images(entry, entry.dataset, "train", 0, CALIBRATION_IMAGES)
    if not torch.isfinite(x).all():
        raise ValueError(f"the preprocessing makes inputs that are not finite (NaN or ∞): {describe_preprocess(pre)}; "
                         "is a std tiny?")
    return entry


def uploaded_entry(upload: UploadedModel) -> ModelEntry:
    """`uploaded_model` for a session's upload, titled with its file names (`titled`)."""
    return titled(uploaded_model(upload.key, upload), upload)


def titled(entry: ModelEntry, upload: UploadedModel) -> ModelEntry:
    """The shared entry of an uploaded model, titled with this session's file name."""
    return replace(entry, title=upload.title)


def bundled(dataset: str | data.Dataset, split: str) -> tuple[np.ndarray | None, np.ndarray]:
    """A bundled dataset split as read-only uint8 images (N, 28, 28) and labels (N,) (checksum verified). An
    uploaded data set (its `ttfs_core.data.Dataset` record, any split) gives its images as kept, (N, H, W, C) at the
    model's size (None for an .npz of model inputs), and its labels (−1 for each when it has none); `labels`,
    `size` and `images` with the model's entry are the way to read it."""
    if isinstance(dataset, data.Dataset):
        user = _UPLOADED_DATA.get(dataset.name)
        if user is None:
            raise ValueError(f"the data set {dataset.title} is no longer loaded: upload it again")
        return user.pixels, user.labels if user.labels is not None else np.full(len(user), -1, dtype=np.int64)
    return _bundled(dataset, split)


@st.cache_resource(show_spinner=False)
def _bundled(dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    return data.load_uint8(dataset, split)


def _own(entry: ModelEntry, dataset: str | data.Dataset) -> UserData | None:
    """The entry's uploaded data set when ``dataset`` names it (None: a bundled dataset)."""
    user = entry.user_data
    if user is not None and isinstance(dataset, data.Dataset) and dataset.name == user.dataset.name:
        return user
    if isinstance(dataset, data.Dataset):
        raise ValueError(f"the data set {dataset.title} belongs to another model")
    return None


def dataset_key(dataset: str | data.Dataset) -> str:
    """How a dataset is named in image keys and caches: a bundled one by its name, an upload by its key."""
    return dataset.name if isinstance(dataset, data.Dataset) else dataset


def size(entry: ModelEntry, dataset: str | data.Dataset, split: str = "test") -> int:
    """Images of a dataset split (an uploaded data set: its images as kept, whatever the split)."""
    user = _own(entry, dataset)
    return len(user) if user is not None else len(bundled(dataset, split)[1])


def images(entry: ModelEntry, dataset: str | data.Dataset, split: str, start: int, stop: int) -> Tensor:
    """Images [start, stop) preprocessed for the model: of a bundled split, or of the entry's uploaded data set,
    whose "train" split is its calibration images (evenly spread) and "test" split all its images. Stops at the
    end of the data. Shape: (stop − start, C, H, W)."""
    user = _own(entry, dataset)
    if user is None:
        imgs, _ = bundled(dataset, split)
        return entry.preprocess.batch_from_uint8(np.asarray(imgs[start:stop]))
    if split == "train":
        return user.batch(entry.preprocess, user.calibration[start:stop])
    return user.batch(entry.preprocess, slice(start, min(stop, len(user))))


def labels(entry: ModelEntry, dataset: str | data.Dataset, start: int, stop: int) -> np.ndarray | None:
    """Labels of the test images [start, stop) (None: an uploaded data set without labels). Shape: (n,) int64."""
    user = _own(entry, dataset)
    if user is None:
        return np.asarray(bundled(dataset, "test")[1][start:stop]).astype(np.int64)
    return None if user.labels is None else user.labels[start:stop]


def picture(entry: ModelEntry, dataset: str | data.Dataset, i: int) -> np.ndarray:
    """Test image i as shown: (H, W) grey or (H, W, 3) RGB uint8 (an upload's as the model sees it: resized)."""
    user = _own(entry, dataset)
    return bundled(dataset, "test")[0][i] if user is None else user.image(entry.preprocess, i)


def classes(entry: ModelEntry) -> tuple[str, ...]:
    """The class names of the model's own data: a bundled model's dataset's, an uploaded data set's (or its card's);
    empty for an upload run on MNIST, whose classes MNIST's digits need not be."""
    if entry.card is None and entry.user_data is None:
        return ()
    return data.dataset(entry.dataset).classes


def network_file(entry: ModelEntry, snn: ttfs_core.SpikingNetwork) -> bytes:
    """The converted network as a saved file (`ttfs_core.save`) with its card: the preprocessing, class names and
    calibration data, so that it reopens with them. Written when asked for (the page's save button calls it on a
    click, outside the page's run: nothing here touches Streamlit)."""
    card = Card(entry.preprocess, classes(entry) or None,
                entry.calibration or f"the first {CALIBRATION_IMAGES} {data.dataset(entry.dataset).title} training "
                                     "images")
    with tempfile.TemporaryDirectory(prefix="ttfs_save_") as tmp:
        path = Path(tmp) / "network.safetensors"
        ttfs_core.save(snn, path, card)
        return path.read_bytes()


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


def evaluate_chunk(net_key: NetKey, dataset: str, start: int, stop: int, _entry: ModelEntry,
                   _snn: ttfs_core.SpikingNetwork) -> tuple[verify.Report, list[dict]]:
    """The verification report of the test images [start, stop) of ``dataset`` (`verify.Verifier.check`; merge
    chunks with `verify.Report.merge`), and their early spikes: image, layer, neuron (flat), index, how early
    (τ_c); at most MAX_EARLY_ROWS per layer.

    A bundled model's chunk at a preset's settings comes from the shipped file (`shipped_evaluation`, checked
    against the weights' digest); any other is computed once per server: every session shares the cached result,
    and Streamlit's lock per cache key makes sessions that ask at the same time wait for one computation."""
    shipped = shipped_evaluation(_entry, net_key, dataset, start, stop, _snn)
    if shipped is not None:
        return shipped
    return _evaluate_chunk(net_key, dataset, start, stop, _entry, _snn)


@st.cache_data(show_spinner=False, max_entries=256)
def _evaluate_chunk(net_key: NetKey, dataset: str, start: int, stop: int, _entry: ModelEntry,
                    _snn: ttfs_core.SpikingNetwork) -> tuple[verify.Report, list[dict]]:
    stop = min(stop, size(_entry, dataset))
    if start >= stop:  # past the end of a small uploaded data set
        return verify.Report.empty(_snn), []
    x = images(_entry, dataset, "test", start, stop)
    y = labels(_entry, dataset, start, stop)
    return evaluate(_snn, verifier(net_key, _entry, _snn), x, y, start)


def evaluate(snn: ttfs_core.SpikingNetwork, checker: verify.Verifier, x: Tensor, y: np.ndarray | None,
             start: int) -> tuple[verify.Report, list[dict]]:
    """`evaluate_chunk`'s computation on test images x (the first is image `start`) with labels y (no Streamlit:
    the precomputation calls it too)."""
    res = snn.run(x)
    report = checker.check(x, None if y is None else torch.from_numpy(np.asarray(y, dtype=np.int64)), start,
                           result=res)
    early = []
    for layer, lr in zip(snn.layers, res.layers):
        if lr.early_spikes == 0:
            continue
        off = lr.offsets.flatten(1)
        for b, j in lr.early_mask.flatten(1).nonzero().tolist()[:MAX_EARLY_ROWS]:
            early.append(_early_row(layer, start + b, j, -float(off[b, j])))
    return report, early


def _early_row(layer, image: int, neuron: int, by: float) -> dict:
    idx = np.unravel_index(neuron, layer.shape)
    return {"image": image, "layer": layer.name, "neuron": neuron,
            "index": "(" + ", ".join(str(int(i)) for i in idx) + ")", "early by (τ_c)": by}


# --- the bundled models' test-set evaluations, shipped ---------------------------------------------------------
# The ANN-vs-SNN page's evaluation of the first EVAL_IMAGES test images of a bundled model at each preset's settings
# ships in assets/evaluations.json.gz, per chunk of EVAL_CHUNK images: the verification report (`Report.to_json`) and
# the early spikes as [image, layer position, neuron, how early]. Written by `write_evaluations` (`python -m
# ttfs_ui.cache`), read once per server; a model's record is used only while its weights are those it was computed
# from (sha256) and the chunking, the number of calibration images and the presets' settings are the same, and
# tests/test_tour.py recomputes chunks of it, so the file cannot go stale silently.
EVALUATIONS = Path(__file__).resolve().parent.parent / "assets" / "evaluations.json.gz"  # gzip: 1.9 MB, not 5.2
EVAL_FORMAT = 1
EVAL_IMAGES = 1000  # the page's default (state.EVAL_IMAGES); the 10,000 option computes its further chunks


def evaluation_header() -> dict:
    return {"format": EVAL_FORMAT, "chunk": EVAL_CHUNK, "images": EVAL_IMAGES,
            "calibration_images": CALIBRATION_IMAGES, "max_early_rows": MAX_EARLY_ROWS}


def _settings_key(margin: float, neuron, rescale) -> str:
    from .sweeps import settings_key

    return settings_key(margin, neuron, rescale)


def compute_evaluations(name: str, settings: list[tuple[float, str, str]], images: int = EVAL_IMAGES,
                        log=print) -> dict:
    """The shipped record of one bundled model: for each (ζ, neuron, rescaling) the chunks of its own test set's
    first `images` images, computed exactly as the page computes them (`evaluate`)."""
    from ttfs_core.neurons import neuron_model, rescale_rule

    from .sweeps import weights_digest

    model, card = zoo.load(name)
    train, _ = data.load_uint8(card.dataset, "train")
    test, test_labels = data.load_uint8(card.dataset, "test")
    calibration = card.preprocess.batch_from_uint8(np.asarray(train[:CALIBRATION_IMAGES]))
    out = {}
    for margin, neuron, rescale in settings:
        snn = ttfs_core.convert(model, calibration, margin=float(margin), input_range=tuple(card.input_range),
                                neuron=neuron_model(neuron), rescale=rescale_rule(rescale))
        checker = verify.Verifier(model, snn, calibration[:1])
        positions = {layer.name: n for n, layer in enumerate(snn.layers)}
        chunks = []
        for start in range(0, images, EVAL_CHUNK):
            x = card.preprocess.batch_from_uint8(np.asarray(test[start:start + EVAL_CHUNK]))
            y = np.asarray(test_labels[start:start + EVAL_CHUNK]).astype(np.int64)
            report, early = evaluate(snn, checker, x, y, start)
            chunks.append({"report": report.to_json(),
                           "early": [[r["image"], positions[r["layer"]], r["neuron"], r["early by (τ_c)"]]
                                     for r in early]})
            log(f"{name} {_settings_key(margin, neuron, rescale)}: {start + EVAL_CHUNK} of {images} test images")
        out[_settings_key(margin, neuron, rescale)] = chunks
    return {"dataset": card.dataset, "weights_sha256": weights_digest(name), "settings": out}


def write_evaluations(models: list[str] | None = None, path: Path = EVALUATIONS, log=print) -> None:
    """Compute and write the shipped evaluations of the bundled models (all by default; others already in the file
    are kept) at every preset's settings."""
    from .sweeps import preset_settings

    try:
        doc = json.loads(gzip.decompress(path.read_bytes()))
        kept = doc.get("models", {}) if all(doc.get(k) == v for k, v in evaluation_header().items()) else {}
    except (OSError, ValueError, EOFError):
        kept = {}
    for name in models or list(zoo.ARCHITECTURES):
        kept[name] = compute_evaluations(name, preset_settings(), log=log)
        doc = {"about": "The ANN-vs-SNN page's test-set evaluations of the bundled models at the presets' settings, "
                        "per chunk of test images; written by `python -m ttfs_ui.cache`, read by ttfs_ui/cache.py.",
               **evaluation_header(), "models": kept}
        part = path.with_name(path.name + ".part")  # readers never see half a file
        part.write_bytes(gzip.compress((json.dumps(doc, separators=(",", ":")) + "\n").encode(), mtime=0))
        part.replace(path)


def read_evaluations(path: Path = EVALUATIONS) -> dict:
    """The shipped file's models whose header matches this code and whose weights are the bundled ones (name ->
    record); {} when there is no usable file."""
    from .sweeps import weights_digest

    try:
        doc = json.loads(gzip.decompress(path.read_bytes()))
    except (OSError, ValueError, EOFError):
        return {}
    if any(doc.get(k) != v for k, v in evaluation_header().items()):
        return {}
    return {name: record for name, record in doc.get("models", {}).items()
            if name in zoo.ARCHITECTURES and zoo.weights_path(name).is_file()
            and record.get("weights_sha256") == weights_digest(name)}


@st.cache_resource(show_spinner=False)
def shipped_evaluations() -> dict:
    """The usable shipped evaluations, read once per server (`read_evaluations`)."""
    return read_evaluations()


def shipped_evaluation(entry: ModelEntry, net_key: Settings, dataset, start: int, stop: int,
                       snn: ttfs_core.SpikingNetwork) -> tuple[verify.Report, list[dict]] | None:
    """The shipped chunk [start, stop) of a bundled model's own test set at these settings, or None."""
    if entry.card is None or not isinstance(dataset, str) or dataset != entry.dataset or start % EVAL_CHUNK \
            or stop - start != EVAL_CHUNK:
        return None
    record = shipped_evaluations().get(entry.card.name)
    if record is None or record.get("dataset") != dataset:
        return None
    chunks = record["settings"].get(_settings_key(net_key.margin, net_key.neuron, net_key.rescale))
    k = start // EVAL_CHUNK
    if chunks is None or k >= len(chunks):
        return None
    try:
        report = verify.Report.from_json(chunks[k]["report"])
        if len(report.layers) != len(snn.layers) or report.images != EVAL_CHUNK:
            return None
        layers = list(snn.layers)
        early = [_early_row(layers[int(n)], int(image), int(j), float(by)) for image, n, j, by in chunks[k]["early"]]
    except (ValueError, KeyError, TypeError, IndexError):  # a file that does not fit: computed instead
        return None
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


if __name__ == "__main__":  # python -m ttfs_ui.cache [model ...]: write assets/evaluations.json.gz
    import sys

    write_evaluations(sys.argv[1:] or None)
