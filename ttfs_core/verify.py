"""Verifying a conversion over a dataset: a mergeable report, shards, and the processes that share them.

`Verifier.check(x, y, start)` turns one batch into a `Report`: per spiking layer the largest error against the ReLU
network and the input (its index in the dataset) that caused it, early spikes, spikes and neurons, how the
early-spike certificate settled the neurons; accuracy and agreement; the inputs whose prediction differs. Reports
`merge` exactly and in any order (sums, and maxima whose ties go to the smaller index, NaN being the largest of
all), so a dataset cut into shards gives the same report however the shards are shared out: one process, several
(`ttfs_core.verify_run`, over `torch.distributed`), an interrupted run resumed from its report file (`RunFile`).
`verdict(report)` is the one answer to "is the conversion exact?" that the command line and the explorer give.

A shard is `shard_size` consecutive inputs, a whole number of batches, so that every process simulates exactly the
batches a single process would (the simulation of one input never depends on the others, but float kernels may
depend on the batch they run in).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .capture import Capture
from .compare import record_activations
from .network import SpikingNetwork
from .sim.result import SimResult, merge_counts

FORMAT, VERSION = "ttfs-verify-report", 2  # 2: digests of the model, data and settings
MAX_LISTED = 100  # inputs listed by index (those whose prediction differs, those with early spikes): the smallest


# --- the report ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Worst:
    """The largest value seen and the input (index in the dataset) where it was seen; None before any input. NaN
    is larger than any number (a NaN error must never be reported as 0); ties go to the smaller index."""

    value: float | None = None
    index: int = -1

    def _key(self) -> tuple:
        v = self.value
        return (v is not None, v is not None and math.isnan(v), -math.inf if v is None or math.isnan(v) else v,
                -self.index)

    def merge(self, other: Worst) -> Worst:
        return self if self._key() >= other._key() else other


@dataclass(frozen=True)
class LayerCheck:
    """One spiking layer (or the readout) over the inputs checked. Errors are |SNN − ANN| in the original model's
    units (decoded spike times divided by the rescaling); `largest` is the largest |ANN value| (for a relative
    error)."""

    name: str
    op: str
    window: float  # B_n in τ_c (0 for the readout)
    error: Worst = Worst()
    largest: Worst = Worst()
    early: int = 0
    spikes: int = 0
    neurons: int = 0
    searched: int = 0
    certificate: tuple[tuple[str, int], ...] = ()

    def merge(self, other: LayerCheck) -> LayerCheck:
        if (self.name, self.op) != (other.name, other.op):
            raise ValueError(f"cannot merge reports of different networks: layer {self.name} vs {other.name}")
        return replace(self, error=self.error.merge(other.error), largest=self.largest.merge(other.largest),
                       early=self.early + other.early, spikes=self.spikes + other.spikes,
                       neurons=self.neurons + other.neurons, searched=self.searched + other.searched,
                       certificate=merge_counts([self.certificate, other.certificate]))

    @property
    def relative_error(self) -> float:
        if self.error.value is None:
            return 0.0
        return self.error.value / max(abs(self.largest.value or 0.0), 1e-30)

    @property
    def nan(self) -> bool:
        return any(w.value is not None and math.isnan(w.value) for w in (self.error, self.largest))

    @property
    def within_rounding(self) -> bool:
        """Whether its largest error is float rounding of an exact conversion (`within_rounding`)."""
        return self.error.value is None or within_rounding(self.error.value, self.largest.value or 0.0)


@dataclass(frozen=True)
class Report:
    """What a verification found over some inputs (a batch, a shard, a whole dataset)."""

    layers: tuple[LayerCheck, ...]
    readout: LayerCheck
    images: int = 0
    labelled: int = 0
    ann_correct: int = 0
    snn_correct: int = 0
    agree: int = 0
    early_images: int = 0
    clipped: int = 0  # input values outside the input range (clipped when encoded)
    disagreements: tuple[int, ...] = ()  # inputs whose SNN argmax differs from the ANN's (the smallest MAX_LISTED)
    early_inputs: tuple[int, ...] = ()  # inputs with at least one early spike (the smallest MAX_LISTED)

    @classmethod
    def empty(cls, snn: SpikingNetwork) -> Report:
        return cls(tuple(LayerCheck(la.name, la.op, float(la.window)) for la in snn.layers),
                   LayerCheck(snn.output.name, snn.output.op + " (readout)", 0.0))

    def merge(self, other: Report) -> Report:
        if len(self.layers) != len(other.layers):
            raise ValueError("cannot merge reports of networks with different layers")
        return Report(
            tuple(a.merge(b) for a, b in zip(self.layers, other.layers)), self.readout.merge(other.readout),
            *(getattr(self, k) + getattr(other, k) for k in ("images", "labelled", "ann_correct", "snn_correct",
                                                             "agree", "early_images", "clipped")),
            _smallest(self.disagreements, other.disagreements), _smallest(self.early_inputs, other.early_inputs))

    @property
    def early(self) -> int:
        return sum(la.early for la in self.layers)

    @property
    def spikes_per_neuron(self) -> float:
        return sum(la.spikes for la in self.layers) / max(sum(la.neurons for la in self.layers), 1)

    def verdict(self) -> Verdict:
        return verdict(self)

    def failures(self) -> list[str]:
        """Why this verification fails (empty: it passes): `Verdict.failures`."""
        return list(verdict(self).failures)

    def to_json(self) -> dict[str, Any]:
        return _plain(asdict(self))

    @classmethod
    def from_json(cls, d: Any) -> Report:
        """Inverse of `to_json`. A report file is read back on resume and may be anything: every field is
        type-checked here (counts are whole numbers >= 0, a bool is not one), and a ValueError names the first
        field that is not what `to_json` writes. Whether the values fit the run is `check_fits`'s question."""
        try:
            r = _Fields(d, "report")
            return cls(tuple(_layer(f) for f in r.objects("layers")), _layer(r.object("readout")),
                       *(r.count(k) for k in ("images", "labelled", "ann_correct", "snn_correct", "agree",
                                              "early_images", "clipped")),
                       r.counts("disagreements"), r.counts("early_inputs"))
        except ValueError as e:
            raise ValueError(f"not a verification report ({e})") from None


# --- the verdict -----------------------------------------------------------------------------------------------
TOLERANCE = 1e-4  # |SNN − ANN| up to TOLERANCE × max(|ANN|, 1) is float rounding (an exact float32 conversion's is
# far below); anything above it is an error of the conversion or of its inputs (clipped, saturated)


def within_rounding(error: float, largest: float) -> bool:
    """Whether |SNN − ANN| <= `error`, where |ANN| <= `largest`, is float rounding: error <= TOLERANCE ×
    max(largest, 1). NaN is not."""
    return error <= TOLERANCE * max(abs(largest), 1.0)


@dataclass(frozen=True)
class Verdict:
    """Whether a spiking network reproduced its ReLU network on the inputs of a report: the one answer behind
    `ttfs verify`'s PASS/FAIL, the explorer's "not exact" banner and its inspector's first parting layer.

    A verification fails on NaN values, a prediction that differs, or an early spike (`failures`). It is `exact`
    when, besides, every layer's largest error is float rounding (`within_rounding`): an error above it without an
    early spike comes from the inputs (values clipped to the input range, a saturated neuron), and `ttfs verify`
    notes clipped inputs without failing on them."""

    failures: tuple[str, ...]  # why a verification fails (empty: it passes)
    early: tuple[tuple[str, int], ...]  # (layer, early spikes) of the layers that have any, in order
    beyond_rounding: tuple[str, ...]  # layers (the readout last) whose largest error is above rounding or NaN
    parting: str | None  # the first layer where the SNN leaves the ANN: NaN, early spikes or error above rounding

    @property
    def passes(self) -> bool:
        return not self.failures

    @property
    def exact(self) -> bool:
        return self.passes and not self.beyond_rounding


def verdict(report: Report) -> Verdict:
    """The verdict on a report (a batch, a dataset, one input shown in the explorer)."""
    checks = (*report.layers, report.readout)
    broken = [la.name for la in checks if la.nan]
    failures = []
    if broken:
        failures.append(f"NaN values in {', '.join(broken)} (the model or the network overflows)")
    if report.agree < report.images:
        failures.append(f"agreement {percent(report.agree, report.images)} < 100 % ({report.images - report.agree} "
                        f"of {report.images} predictions differ)")
    if report.early:
        failures.append(f"{report.early:,} early spikes in {report.early_images} images")
    parting = next((la.name for la in checks if la.nan or la.early or not la.within_rounding), None)
    return Verdict(tuple(failures), tuple((la.name, la.early) for la in report.layers if la.early),
                   tuple(la.name for la in checks if not la.within_rounding), parting)


def percent(k: int, n: int) -> str:
    """k/n as a percentage with two decimals; never shows 100.00 % unless k == n."""
    if not n:
        return "n/a"
    text = f"{100 * k / n:.2f}"
    return f"{'99.99' if text == '100.00' and k < n else text} %"


def _smallest(a: Iterable[int], b: Iterable[int]) -> tuple[int, ...]:
    return tuple(sorted({*a, *b})[:MAX_LISTED])


def _plain(v: Any) -> Any:
    """JSON-ready: tuples as lists, NaN and ±inf as strings (strict JSON has neither)."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _show(v: Any) -> str:
    """A value as an error message quotes it: its type and at most 40 characters of it."""
    return f"{type(v).__name__} {repr(v)[:40]}"


def _count(v: Any, at: str, least: int = 0) -> int:
    """A count read back from a report: a whole number >= `least` (JSON's true is not 1, 3.0 is not 3)."""
    if type(v) is not int:
        raise ValueError(f"{at}: expected a whole number, got {_show(v)}")
    if v < least:
        raise ValueError(f"{at}: {v} is negative")
    return v


def _number(v: Any, at: str) -> float | None:
    """A float read back from a report: a number, None, or NaN/±inf as `_plain` writes them (strings)."""
    if v is None:
        return None
    if isinstance(v, str) and v in ("nan", "inf", "-inf"):
        return float(v)
    if type(v) not in (int, float):
        raise ValueError(f"{at}: expected a number, got {_show(v)}")
    return float(v)


class _Fields:
    """A JSON object of a report file, read by key so that every error names its at (`report.layers[2].early`)."""

    def __init__(self, value: Any, where: str):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, got {_show(value)}")
        self.value, self.where = value, where

    def get(self, key: str) -> tuple[Any, str]:
        if key not in self.value:
            raise ValueError(f"{self.where}.{key}: missing")
        return self.value[key], f"{self.where}.{key}"

    def items(self, key: str) -> list[tuple[Any, str]]:
        v, at = self.get(key)
        if not isinstance(v, list):
            raise ValueError(f"{at}: expected a list, got {_show(v)}")
        return [(x, f"{at}[{i}]") for i, x in enumerate(v)]

    def count(self, key: str, least: int = 0) -> int:
        return _count(*self.get(key), least)

    def counts(self, key: str) -> tuple[int, ...]:
        return tuple(_count(v, at) for v, at in self.items(key))

    def number(self, key: str) -> float | None:
        return _number(*self.get(key))

    def text(self, key: str) -> str:
        v, at = self.get(key)
        if not isinstance(v, str) or not 0 < len(v) <= 200 or not v.isprintable():
            raise ValueError(f"{at}: expected a name, got {_show(v)}")
        return v

    def object(self, key: str) -> _Fields:
        return _Fields(*self.get(key))

    def objects(self, key: str) -> list[_Fields]:
        return [_Fields(v, at) for v, at in self.items(key)]


def _worst(f: _Fields) -> Worst:
    return Worst(f.number("value"), f.count("index", least=-1))


def _certificate(f: _Fields) -> tuple[tuple[str, int], ...]:
    """(stage, neurons) pairs, each stage once."""
    out: dict[str, int] = {}
    for pair, at in f.items("certificate"):
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str) and pair[0].isprintable()
                and 0 < len(pair[0]) <= 80 and pair[0] not in out):
            raise ValueError(f"{at}: expected a [stage, count] pair with a new stage name, got {_show(pair)}")
        out[pair[0]] = _count(pair[1], f"{at}[1]")
    return tuple(out.items())


def _layer(f: _Fields) -> LayerCheck:
    window = f.number("window")
    if window is None:
        raise ValueError(f"{f.where}.window: expected a number, got None")
    return LayerCheck(f.text("name"), f.text("op"), window, _worst(f.object("error")), _worst(f.object("largest")),
                      *(f.count(k) for k in ("early", "spikes", "neurons", "searched")), _certificate(f))


# --- does a report fit its run? ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bounds:
    """What a report of one run can hold, known from the run itself (the network and the dataset), never from the
    report: a report file read back on resume is checked against it, so that no forged or corrupted count can
    reach the verdict (a count larger than the inputs could give "agreement 1.95e29 %" and PASS)."""

    template: Report  # the network's empty report: its layers' names, ops and windows
    neurons: tuple[int, ...]  # neurons per input of each spiking layer
    input_size: int  # values per input (bounds the clipped ones)
    labelled: bool  # whether the dataset has labels
    n: int  # inputs in the dataset
    shard_size: int

    @classmethod
    def of(cls, snn: SpikingNetwork, input_size: int, labelled: bool, n: int, shard_size: int) -> Bounds:
        return cls(Report.empty(snn), tuple(la.neurons for la in snn.layers), input_size, labelled, n, shard_size)

    @property
    def shards(self) -> int:
        return shard_count(self.n, self.shard_size)


def _at_most(value: float, most: float, field: str, what: str) -> None:
    if value > most:
        raise ValueError(f"{field} = {value} is more than {what} ({most})")


def _exactly(value: Any, expected: Any, field: str, what: str) -> None:
    if value != expected:
        raise ValueError(f"{field} = {value!r}, but {what} is {expected!r}")


def check_fits(report: Report, bounds: Bounds, completed: set[int]) -> None:
    """Raise ValueError naming the first field of `report` that the completed shards of the run `bounds`
    describes could not have produced: a count above what it counts (agreements above the inputs, spikes above
    the neurons), totals that are not the shards' sizes, a listed or worst input outside the completed shards,
    layers that are not the network's."""
    images = sum(hi - lo for lo, hi in (shard_range(k, bounds.n, bounds.shard_size) for k in completed))

    def inside(i: int) -> bool:
        return 0 <= i < bounds.n and i // bounds.shard_size in completed

    _exactly(report.images, images, "report.images", "the size of the completed shards")
    _exactly(report.labelled, images if bounds.labelled else 0, "report.labelled", "the labelled inputs in them")
    for key in ("ann_correct", "snn_correct"):
        _at_most(getattr(report, key), report.labelled, f"report.{key}", "report.labelled")
    for key in ("agree", "early_images"):
        _at_most(getattr(report, key), images, f"report.{key}", "report.images")
    _at_most(report.clipped, images * bounds.input_size, "report.clipped", "the input values checked")
    _check_listed(report.disagreements, images - report.agree, inside, "report.disagreements")
    _check_listed(report.early_inputs, report.early_images, inside, "report.early_inputs")
    _exactly(len(report.layers), len(bounds.template.layers), "the number of report.layers", "the network's")
    for i, (la, like, per_input) in enumerate(zip(report.layers, bounds.template.layers, bounds.neurons)):
        _check_layer(la, like, per_input * images, inside, f"report.layers[{i}]")
    _check_layer(report.readout, bounds.template.readout, 0, inside, "report.readout")


def _check_listed(listed: tuple[int, ...], total: int, inside: Callable[[int], bool], field: str) -> None:
    """Inputs listed by index: the smallest min(total, MAX_LISTED) of them, increasing, in completed shards."""
    _exactly(len(listed), min(total, MAX_LISTED), f"the length of {field}", "the number of inputs it lists")
    for i, (a, b) in enumerate(zip(listed, listed[1:])):
        if b <= a:
            raise ValueError(f"{field}[{i + 1}] = {b} is not above {field}[{i}] = {a}")
    for i, index in enumerate(listed):
        if not inside(index):
            raise ValueError(f"{field}[{i}] = {index} is not an input of the completed shards")


def _check_layer(la: LayerCheck, like: LayerCheck, neurons: int, inside: Callable[[int], bool], field: str) -> None:
    for key in ("name", "op", "window"):
        _exactly(getattr(la, key), getattr(like, key), f"{field}.{key}", "the network's")
    _exactly(la.neurons, neurons, f"{field}.neurons", "the layer's neurons times the inputs")
    for key in ("early", "spikes", "searched"):
        _at_most(getattr(la, key), neurons, f"{field}.{key}", f"{field}.neurons")
    _at_most(sum(c for _, c in la.certificate) + la.searched, neurons, f"{field}.certificate (with searched)",
             f"{field}.neurons")
    for key in ("error", "largest"):
        _check_worst(getattr(la, key), inside, f"{field}.{key}")


def _check_worst(w: Worst, inside: Callable[[int], bool], field: str) -> None:
    """A largest |value| and its input: none (None, -1) or >= 0 at an input of the completed shards. NaN and +inf
    are allowed: they are what a run that overflows records, and a NaN fails the verification."""
    if w.value is None:
        _exactly(w.index, -1, f"{field}.index", "the index of no input")
        return
    if w.value < 0:
        raise ValueError(f"{field}.value = {w.value} is negative")
    if not inside(w.index):
        raise ValueError(f"{field}.index = {w.index} is not an input of the completed shards")


# --- one batch -------------------------------------------------------------------------------------------------
def _worst_of(per_input: Tensor, start: int) -> Worst:
    """The largest of per-input values (NaN first; the first index on ties) as a Worst. Shape: (B,)."""
    if per_input.numel() == 0:
        return Worst()
    v = per_input.double().cpu()
    nan = torch.isnan(v)
    i = int(nan.nonzero()[0, 0]) if bool(nan.any()) else int(v.argmax())
    return Worst(float(v[i]), start + i)


def _per_input_max(t: Tensor) -> Tensor:
    """max over every axis but the batch, NaN-propagating. Shape: (B, ...) -> (B,)."""
    flat = t.flatten(1)
    if flat.shape[1] == 0:
        return torch.zeros(flat.shape[0], dtype=t.dtype, device=t.device)
    return flat.amax(1)


class Verifier:
    """Checks batches of a dataset against the ReLU network `module` the network `snn` was converted from: the
    model is traced once (`ttfs_core.capture`), and each batch runs the SNN once and the ANN once."""

    def __init__(self, module: nn.Module, snn: SpikingNetwork, example: Tensor):
        self.module, self.snn = module, snn
        self.device = device_of(snn)
        self.gm = Capture(module, example[:1].to(snn.dtype).to(self.device)).gm

    @torch.no_grad()
    def check(self, x: Tensor, y: Tensor | None, start: int, result: SimResult | None = None) -> Report:
        """One batch: `x` the model's inputs, `y` their labels (or None), `start` the index of x[0] in the dataset;
        `result`: the network's simulation of `x` when the caller has it (else it is run here).
        Shape: x (B, *input_shape), y (B,)."""
        snn = self.snn
        x = x.to(self.device, snn.dtype)
        res: SimResult = snn.run(x) if result is None else result
        acts, logits = record_activations(self.module, snn, x, gm=self.gm)
        empty = Report.empty(snn)
        layers = []
        early_mask = torch.zeros(x.shape[0], dtype=torch.bool, device=self.device)
        for check, layer, lr, ann in zip(empty.layers, snn.layers, res.layers, acts):
            ann_units = ann / layer.scale
            err = _per_input_max((lr.activations / layer.scale - ann_units).abs())
            early_mask |= lr.early_mask.flatten(1).any(1)
            layers.append(replace(check, error=_worst_of(err, start),
                                  largest=_worst_of(_per_input_max(ann_units.abs()), start), early=lr.early_spikes,
                                  spikes=lr.spikes, neurons=lr.neurons, searched=lr.searched,
                                  certificate=tuple(lr.certificate)))
        ann_logits = logits.to(res.logits.dtype).reshape(res.logits.shape)
        readout = replace(empty.readout, error=_worst_of(_per_input_max((res.logits - ann_logits).abs()), start),
                          largest=_worst_of(_per_input_max(ann_logits.abs()), start))
        a, s = ann_logits.flatten(1).argmax(1).cpu(), res.logits.flatten(1).argmax(1).cpu()
        index = torch.arange(start, start + x.shape[0])
        labelled = ann_correct = snn_correct = 0
        if y is not None:
            y = y.reshape(-1).cpu()
            labelled, ann_correct, snn_correct = len(y), int((a == y).sum()), int((s == y).sum())
        early_mask = early_mask.cpu()
        return Report(tuple(layers), readout, x.shape[0], labelled, ann_correct, snn_correct, int((a == s).sum()),
                      int(early_mask.sum()), res.input_clipped, tuple(index[a != s].tolist()[:MAX_LISTED]),
                      tuple(index[early_mask].tolist()[:MAX_LISTED]))


def device_of(snn: SpikingNetwork) -> torch.device:
    """The device the network's tensors live on."""
    return snn.output.bias.device


# --- shards ----------------------------------------------------------------------------------------------------
def shard_count(n: int, shard_size: int) -> int:
    return -(-n // shard_size)


def shard_range(k: int, n: int, shard_size: int) -> tuple[int, int]:
    """[lo, hi) of shard k of a dataset of n inputs."""
    return k * shard_size, min(n, (k + 1) * shard_size)


def check_shard(verifier: Verifier, batch: Callable[[int, int], tuple[Tensor, Tensor | None]], k: int, n: int,
                shard_size: int, batch_size: int, progress: Callable[[int], None] | None = None) -> Report:
    """Shard k, batch by batch: `batch(lo, hi)` gives the inputs [lo, hi) and their labels (or None)."""
    lo, hi = shard_range(k, n, shard_size)
    report = Report.empty(verifier.snn)
    for start in range(lo, hi, batch_size):
        x, y = batch(start, min(hi, start + batch_size))
        report = report.merge(verifier.check(x, y, start))
        if progress is not None:
            progress(x.shape[0])
    return report


# --- the report file -------------------------------------------------------------------------------------------
@dataclass
class RunFile:
    """A verification's JSON report, rewritten (atomically) after every round, so that an interrupted run can resume
    from its completed shards. `config` says what was verified (model, data, network digest, sizes): a resume
    checks it is the same run."""

    path: Path
    config: dict[str, Any]
    report: Report
    completed: set[int] = field(default_factory=set)
    shards: int = 0

    @property
    def finished(self) -> bool:
        return len(self.completed) == self.shards

    def write(self) -> None:
        body = {"format": FORMAT, "version": VERSION, "config": self.config, "shards": self.shards,
                "completed": sorted(self.completed), "finished": self.finished, "report": self.report.to_json()}
        text = json.dumps(body, indent=1, allow_nan=False)
        folder = self.path.parent if str(self.path.parent) else Path(".")
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=folder)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)  # readers see the old file or the new one, never half of one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def resume(cls, path: Path, config: dict[str, Any], bounds: Bounds) -> RunFile:
        """The run recorded in `path`, which must be this run: the same `config` (the digests of the model, the
        data and the settings among it) and a report that fits `bounds` (`check_fits`). Raises ValueError
        naming the first field that differs or does not fit."""
        try:
            body = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise ValueError(f"cannot resume from {path}: {e}") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT or body.get("version") != VERSION:
            raise ValueError(f"cannot resume from {path}: not a ttfs verification report (version {VERSION})")
        if body.get("config") != config:
            old = body.get("config") if isinstance(body.get("config"), dict) else {}
            diff = [k for k in sorted({*config, *old}) if config.get(k) != old.get(k)]
            raise ValueError(f"cannot resume from {path}: it records another run (differs in {', '.join(diff)})")
        completed = body.get("completed")
        if body.get("shards") != bounds.shards or not isinstance(completed, list) or not all(
                type(k) is int and 0 <= k < bounds.shards for k in completed) or len(set(completed)) < len(completed):
            raise ValueError(f"cannot resume from {path}: its shard list does not fit {bounds.shards} shards")
        try:
            report = Report.from_json(body.get("report"))
            check_fits(report, bounds, set(completed))
        except ValueError as e:
            raise ValueError(f"cannot resume from {path}: {e}") from None
        return cls(path, config, report, set(completed), bounds.shards)


# --- what a report is bound to ---------------------------------------------------------------------------------
# A report file names its run by digests (full SHA-256) of the model, the data and the settings, so that a resume
# never adds shards of one run to the report of another (another model file under the same name, an edited
# dataset, other conversion settings).
CHUNK = 1 << 20


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(root: Path) -> str:
    """SHA-256 of a folder: every file under it (hidden ones skipped), by its path relative to `root` and its
    bytes' digest, in sorted order."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if not any(part.startswith(".") for part in rel.parts):
            h.update(json.dumps([rel.as_posix(), file_digest(path)]).encode() + b"\n")
    return h.hexdigest()


def source_digest(source: Any, batch: int = 1024) -> str:
    """SHA-256 of a dataset's inputs and labels as the verification reads them (`ttfs_core.data.Source`)."""
    h = hashlib.sha256()
    for lo in range(0, len(source), batch):
        x, y = source.batch(lo, min(len(source), lo + batch))
        h.update(x.contiguous().numpy().tobytes())
        h.update(b"" if y is None else y.contiguous().numpy().tobytes())
    return h.hexdigest()


def model_digest(spec: str) -> str:
    """What a model spec names: a bundled model's weights file, or the model file's bytes."""
    from . import zoo

    return file_digest(zoo.weights_path(spec) if spec in zoo.ARCHITECTURES else Path(spec).expanduser())


def data_digest(spec: str, source: Any) -> str:
    """What a dataset spec names: a bundled split's asset, an .npz file's bytes, a folder's files; anything else
    (a torchvision dataset, in memory) by its inputs and labels."""
    from . import data

    path = Path(spec.strip()).expanduser()
    if spec.strip() in data.BUNDLED_SPECS:
        return file_digest(data.dataset(spec.strip().rsplit("-", 1)[0]).path)
    if path.is_file():
        return file_digest(path)
    if path.is_dir():
        return tree_digest(path)
    return source_digest(source)


def settings_digest(settings: dict[str, Any]) -> str:
    """SHA-256 of settings as canonical JSON."""
    return digest(json.dumps(settings, sort_keys=True, default=str).encode())
