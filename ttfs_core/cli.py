"""The ``ttfs`` command line: list the bundled models, convert a model, verify a conversion.

    ttfs zoo
    ttfs convert lenet5 --calib mnist-train -o lenet5.snn.safetensors
    ttfs verify vgg_fashion --data fashion-test     # exit 0: PASS, 1: FAIL, 2: usage or input error

See ``EPILOG`` (``ttfs --help``) for what MODEL and DATA may be.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, TextIO

import torch
from torch import Tensor, nn

from . import __version__, data, untrusted, verify, verify_run, zoo
from .compare import compare
from .convert import convert
from .errors import InputError
from .mapping import DEFAULT_MARGIN
from .network import SpikingNetwork, usable_device
from .neurons import ALPHA, NEURON_MODELS, RESCALES, SUM
from .persist import Card, load_network, save_network
from .sim.result import merge_counts
from .verify import LayerCheck, Verifier, digest, percent
from .verify_run import Ranks

EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2
CALIB_LIMIT = 512  # calibration images used by default (the first ones of --calib)
MARGIN_DEFAULT = DEFAULT_MARGIN
EPILOG = """\
MODEL is a bundled model name (see 'ttfs zoo') or a model file: torch.export .pt2, TorchScript, or a state
dict (.safetensors/.pt/.pth) with --arch. Model files are assumed to take MNIST pixels / 255 in [0, 1],
shaped 1x28x28. A bundled name wins over a file of the same name (write ./fc for the file).
DATA is mnist-test, mnist-train, fashion-test or fashion-train (bundled: each -test is the whole 10,000-image
test set, each -train a 4,000-image calibration subset of the training set), a folder of images (class
sub-folders give labels), a .zip of such a folder (read in place, never extracted), an .npz file with x (uint8
images or float model inputs) and optionally y (labels) and classes (names), or torchvision:NAME:/root[:train]
for a torchvision dataset already on disk. Folders, .zip and .npz files are streamed.
--data and --calib default to the model's own dataset (its card's), MNIST for model files; a model file that
does not take MNIST's 1x28x28 is calibrated on --data unless --calib says otherwise.

examples:
  ttfs zoo
  ttfs convert lenet5 -o lenet5.snn.safetensors
  ttfs verify lenet5 --data mnist-test          # exit 0 PASS, 1 FAIL, 2 usage or input error
  ttfs verify vgg_fashion                       # its own dataset: fashion-test
  ttfs verify lenet5 --snn lenet5.snn.safetensors
  ttfs verify model.pt2 --data digits/ --float64
  ttfs verify vgg_fashion --report vgg.json [--resume]        # a JSON report; continue an interrupted run
  torchrun --standalone --nproc-per-node 2 -m ttfs_core.cli verify vgg_fashion   # shards over 2 processes
"""


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (no usage block): ``PROG: error: MESSAGE; see 'PROG --help'``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {_one_line(message)}; see '{self.prog} --help'\n")


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("×", "x").split("x")
    try:
        h, w = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, 0)
    except ValueError:
        h = w = 0
    if not (0 < h <= 4096 and 0 < w <= 4096):
        raise argparse.ArgumentTypeError(f"expected H or HxW in pixels (1 to 4096), got {text!r}")
    return h, w


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if len(values) not in (1, 3) or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected 1 or 3 finite numbers, got {text!r}")
    return values


def preprocess_overrides(args: argparse.Namespace) -> dict:
    """The fields of `data.Preprocess` that --size, --channels, --mean and --std set (empty: none given)."""
    out: dict = {}
    if getattr(args, "size", None):
        out["height"], out["width"] = args.size
    for key in ("channels", "mean", "std"):
        if getattr(args, key, None) is not None:
            out[key] = getattr(args, key)
    if "channels" not in out and any(len(out.get(k, ())) == 3 for k in ("mean", "std")):
        out["channels"] = 3
    return out


def _margin(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > -1 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number greater than -1, got {text}")
    return value


# --- models and data ------------------------------------------------------------------------------------


@dataclass
class Model:
    """A loaded ANN with what the command line needs to know about it."""

    label: str
    module: nn.Module
    preprocess: data.Preprocess
    input_range: tuple[float, float]
    card: zoo.ModelCard | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def dataset(self) -> str:
        """The bundled dataset this model was trained on (MNIST for model files)."""
        return self.card.dataset if self.card is not None else data.DEFAULT_DATASET


def load_model(spec: str, arch: str | None = None, overrides: dict | None = None) -> Model:
    """A bundled model by name, or a model file (inputs assumed to be MNIST pixels / 255, 1×28×28, unless
    `overrides` (fields of `data.Preprocess`, from --size, --channels, --mean, --std) say otherwise)."""
    if spec in zoo.ARCHITECTURES:
        if arch is not None:
            raise CliError(f"--arch applies to model files only; {spec!r} is a bundled model")
        module, card = zoo.load(spec)
        pre = _preprocess(card.preprocess, overrides)
        if pre.shape != card.preprocess.shape:
            raise CliError(f"{spec} takes inputs of shape {card.preprocess.shape}; --size/--channels cannot change "
                           "a bundled model's input")
        input_range = pre.value_range if overrides else tuple(card.input_range)  # other mean/std: another range
        return Model(f"{spec} ({card.title})", module, pre, input_range, card)
    path = Path(spec).expanduser()
    if not path.exists():
        known = ", ".join(c.name for c in zoo.list_models()) or "none installed"
        looks_like_path = os.sep in spec or "." in path.name
        what = f"no such model file: {spec}" if looks_like_path else f"unknown model {spec!r}"
        raise CliError(f"{what} (MODEL is a bundled model name: {known}; or a model file)")
    try:
        module = untrusted.load_model(path, arch=arch)
    except untrusted.ModelLoadError as e:
        if _is_network_file(path):
            raise CliError(f"{spec} is a converted spiking network, not a model: verify it with "
                           f"'ttfs verify MODEL --snn {spec}'") from None
        raise CliError(f"{spec}: {str(e).replace('arch=<', '--arch <')}") from None
    pre = _preprocess(data.MNIST_PREPROCESS, overrides)
    shape = "×".join(map(str, pre.shape))
    assumed = ("assumed to take MNIST pixels / 255 in [0, 1], 1×28×28" if not overrides else
               f"given as {shape}, (pixels / 255 − mean {list(pre.mean)}) / std {list(pre.std)}")
    try:
        untrusted.check_input(module, pre.shape)
    except untrusted.ModelLoadError as e:
        raise CliError(f"{spec}: {e} (its input is {assumed}; see --size, --channels)") from None
    return Model(f"{spec} (file)", module, pre, pre.value_range, None, [f"input {assumed}"])


def _preprocess(base: data.Preprocess, overrides: dict | None) -> data.Preprocess:
    if not overrides:
        return base
    try:
        return dataclasses.replace(base, **overrides)
    except ValueError as e:
        raise CliError(f"--size/--channels/--mean/--std: {e}") from None


def _is_network_file(path: Path) -> bool:
    """Whether ``path`` is a network saved by ``ttfs convert`` (a safetensors file with a 'ttfs' header)."""
    from .untrusted.tensors import ST_DTYPES, SafetensorsFile

    if not path.is_file():  # a FIFO or a device would block or never end
        return False
    try:
        with SafetensorsFile(path, "file", set(ST_DTYPES)) as f:
            return "ttfs" in f.header.metadata
    except Exception:  # noqa: BLE001 - anything unreadable is not one
        return False


def load_data(spec: str, model: Model, limit: int | None, what: str) -> tuple[Tensor, Tensor | None]:
    """Images preprocessed for ``model`` (and labels or None); at least one image."""
    try:
        x, y = data.load_dataset(spec, model.preprocess, limit)
    except (ValueError, OSError) as e:
        raise CliError(f"{what}: {e}") from None
    if x.shape[0] == 0:
        raise CliError(f"{what}: {spec!r} holds no images")
    return x, y


def _class_names(spec: str, model: Model) -> tuple[str, ...] | None:
    """The class names a saved network's card records: the bundled dataset's, or those the calibration data give
    (an .npz's classes, a .zip's folders); None when neither names them."""
    if model.card is not None:
        return data.dataset(model.card.dataset).classes
    try:
        return data.open_dataset(spec, model.preprocess).classes
    except (ValueError, OSError):
        return None


def model_dtype(module: nn.Module) -> torch.dtype:
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def convert_model(model: Model, args: argparse.Namespace, out: TextIO) -> tuple[SpikingNetwork, nn.Module]:
    """Convert ``model`` with the options in ``args``; returns the network and the ANN it was converted from."""
    module = copy.deepcopy(model.module).double() if args.float64 else model.module
    own = getattr(args, "data", None)
    why = ""
    if args.calib is None and model.card is None and model.preprocess.shape != data.MNIST_PREPROCESS.shape and own \
            and own.strip() not in data.BUNDLED_SPECS:
        args.calib, why = own, " (--data: the model does not take MNIST's 1×28×28; --calib chooses other data)"
    args.calib = args.calib or f"{model.dataset}-train"
    xc, _ = load_data(args.calib, model, args.calib_limit, "--calib")
    xc = xc.to(model_dtype(module))
    kv("calibration", f"{args.calib}: {xc.shape[0]} images{why}", out)
    snn = convert(module, xc, margin=args.margin, input_range=model.input_range, neuron=args.neuron,
                  rescale=args.rescale, device=getattr(args, "device_", None))
    return snn, module


def kv(label: str, value: object, out: TextIO | None = None) -> None:
    """Print one ``label  value`` line with aligned values."""
    print(f"{label:<14} {value}", file=out or sys.stdout)


def describe(snn: SpikingNetwork) -> str:
    dtype = str(snn.dtype).removeprefix("torch.")
    return f"neuron {snn.neuron}, rescale {snn.rescale}, margin {snn.margin:g}, {dtype}"


# --- tables and progress --------------------------------------------------------------------------------


def table(rows: list[list[str]], header: list[str], out: TextIO, right: set[int] = frozenset()) -> None:
    """Print an aligned text table (columns in ``right`` right-aligned)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        return "  ".join(cells).rstrip()

    print(line(header), file=out)
    for r in rows:
        print(line(r), file=out)


class Progress:
    """One updating text line on stderr: ``\\r[#####.....] 512/1000``."""

    def __init__(self, total: int, stream: TextIO | None, width: int = 30):
        self.total, self.stream, self.width, self.open = total, stream, width, False

    def update(self, done: int) -> None:
        if self.stream is None:
            return
        filled = self.width * done // max(self.total, 1)
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total}")
        self.stream.flush()
        self.open = True

    def close(self) -> None:
        if self.open:
            self.stream.write("\n")
            self.stream.flush()
            self.open = False


# --- commands -------------------------------------------------------------------------------------------


def cmd_zoo(args: argparse.Namespace) -> int:
    cards = zoo.list_models()
    if not cards:
        raise CliError(f"no bundled models found in {zoo.ZOO_DIR}")
    rows = [[c.name, data.dataset(c.dataset).title, f"{100 * c.test_accuracy:.2f}%", f"{c.num_parameters:,} params",
             f"{c.file_size_bytes / 1e6:.2f} MB", c.title + (" [default]" if c.name == zoo.DEFAULT_MODEL else "")]
            for c in cards]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]),
                         *(c.rjust(w) for c, w in zip(r[2:5], widths[2:])), r[5]]))
    return EXIT_PASS


def cmd_convert(args: argparse.Namespace) -> int:
    out_path = Path(args.output).expanduser()
    if out_path.is_dir():
        raise CliError(f"-o {args.output}: is a folder; give a file name")
    if not out_path.parent.is_dir():
        raise CliError(f"-o {args.output}: folder {out_path.parent} does not exist")
    args.device_ = _device(args.device)
    model = load_model(args.model, args.arch, args.preprocess)
    kv("model", model.label)
    for note in model.notes:
        kv("note", note)
    snn, _ = convert_model(model, args, sys.stdout)
    kv("network", describe(snn))
    print()
    rows = [[r["layer"], r["op"], r["shape"], f"{r['neurons']:,}", f"{r['X_n']:.4g}" if r["spiking"] else "-",
             f"{r['t_max'] - r['t_min']:.4g}" if r["spiking"] else "readout", r["reads"]] for r in snn.summary()]
    table(rows, ["layer", "op", "shape", "neurons", "X_n", "window (τ_c)", "reads"], sys.stdout, right={3, 4, 5})
    print()
    kv("latency", f"{snn.decision_time:.6g} τ_c (the readout's t_min, after {len(snn.layers)} spiking layers); "
                  f"smallest window {snn.smallest_window:.3g} τ_c")
    card = Card(model.preprocess, _class_names(args.calib, model), f"{args.calib}, first {args.calib_limit} images")
    try:
        save_network(snn, out_path, card)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for I/O problems
        raise CliError(f"cannot write {args.output}: {e}") from None
    kv("saved", f"{args.output} ({out_path.stat().st_size / 1e6:.2f} MB)")
    return EXIT_PASS


def check_match(module: nn.Module, snn: SpikingNetwork, x: Tensor, args: argparse.Namespace) -> None:
    """Fail early, in one line, when a saved network was not converted from this model (or takes other inputs)."""
    if tuple(x.shape[1:]) != snn.input_shape:
        raise CliError(f"{args.snn} takes inputs of shape {snn.input_shape}, but {args.data} gives "
                       f"{tuple(x.shape[1:])}")
    try:
        compare(module, snn, x.to(snn.device))
    except (KeyError, RuntimeError, IndexError) as e:
        raise CliError(f"{args.snn} was not converted from {args.model}: its layers do not match the model's "
                       f"({type(e).__name__}: {_one_line(e)[:150]})") from None


def layer_row(check: LayerCheck, name_input, spiking: bool = True) -> list[str]:
    """One row of the verify table: the layer, its window, its largest errors and the input that caused them."""
    err = check.error.value
    abs_err = "-" if err is None else f"{err:.3g}"
    rel_err = "-" if err is None else f"{check.relative_error:.3g}"
    at = name_input(check.error.index) if check.error.index >= 0 else "-"
    if not spiking:
        return [check.name, check.op, "readout", abs_err, rel_err, at, "-", "-", "-"]
    return [check.name, check.op, f"{check.window:.4g}", abs_err, rel_err, at, f"{check.early:,}",
            f"{check.searched:,}", f"{check.spikes / max(check.neurons, 1):.3f}"]


def certificate_line(layers: tuple[LayerCheck, ...]) -> str:
    """How the early-spike certificate (MATH §2) settled the hidden neurons, summed over layers and images."""
    totals = merge_counts(la.certificate for la in layers)
    neurons = sum(la.neurons for la in layers)
    searched = sum(la.searched for la in layers)
    parts = [f"{stage} {percent(count, neurons)}" for stage, count in totals if count]
    return ", ".join(parts + [f"searched exactly {searched:,} ({percent(searched, neurons)})"])


def _device(text: str) -> torch.device:
    """--device: 'auto' is CUDA when this machine has it, else the CPU; otherwise `usable_device`'s check."""
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return usable_device(text)
    except InputError as e:
        raise CliError(f"--device: {e} (or auto)") from None


def cmd_verify(args: argparse.Namespace) -> int:
    args.device_ = _device(args.device)
    if args.shard_size % args.batch_size:
        raise CliError(f"--shard-size {args.shard_size} must be a multiple of --batch-size {args.batch_size} (a shard "
                       "is whole batches, so that any number of processes simulates the same batches)")
    if args.resume and args.report is None:
        raise CliError("--resume needs --report FILE (the report of the run to resume)")
    try:
        ranks = Ranks.from_env(args.device_)
    except (RuntimeError, ValueError) as e:
        raise CliError(f"cannot join the process group torchrun describes: {_one_line(e)}") from None
    try:
        return _verify(args, ranks)
    finally:
        ranks.close()


def _verify(args: argparse.Namespace, ranks: Ranks) -> int:
    out = sys.stdout if ranks.main else open(os.devnull, "w")  # noqa: SIM115 - closed below
    try:
        return _verify_to(args, ranks, out)
    finally:
        if out is not sys.stdout:
            out.close()


def _run_config(args: argparse.Namespace, model: Model, source: data.Source, n: int, network: str) -> dict:
    """What a report file records of its run, so that --resume continues only the same run: the specs as given,
    and full SHA-256 digests of the model, the data, the network and the settings (`ttfs_core.verify`)."""
    settings = {k: getattr(args, k) for k in ("calib", "calib_limit", "margin", "neuron", "rescale", "float64")}
    return {"model": args.model, "model_sha256": verify.model_digest(args.model), "data": args.data,
            "data_sha256": verify.data_digest(args.data, source), "limit": args.limit, "images": n, "network": network,
            "batch_size": args.batch_size, "shard_size": args.shard_size, "preprocess": model.preprocess.to_dict(),
            "settings_sha256": verify.settings_digest(settings)}


def _verify_to(args: argparse.Namespace, ranks: Ranks, out: TextIO) -> int:
    device = args.device_
    model = load_model(args.model, args.arch, args.preprocess)
    kv("model", model.label, out)
    for note in model.notes:
        kv("note", note, out)
    args.data = args.data or f"{model.dataset}-test"
    try:
        source = data.open_dataset(args.data, model.preprocess, args.limit)
    except (ValueError, OSError) as e:
        raise CliError(f"--data: {e}") from None
    n = len(source)
    if n == 0:
        raise CliError(f"--data: {args.data!r} holds no images")
    first, _ = source.batch(0, 1)
    if args.snn is not None:
        given = [f"--{k.replace('_', '-')}" for k in ("calib", "calib_limit", "margin", "neuron", "rescale")
                 if getattr(args, k) is not None] + (["--float64"] if args.float64 else [])
        if given:
            raise CliError(f"with --snn nothing is converted: drop {', '.join(given)} (or drop --snn)")
        path = Path(args.snn).expanduser()
        snn = load_network(path).to(device)  # every rank loads the same file
        blob_digest = digest(path.read_bytes())
        module = model.module if snn.dtype == model_dtype(model.module) else copy.deepcopy(model.module).to(snn.dtype)
        kv("network", f"{args.snn}: {describe(snn)}", out)
        check_match(module, snn, first.to(snn.dtype), args)
    else:
        args.calib_limit = args.calib_limit or CALIB_LIMIT
        args.margin = MARGIN_DEFAULT if args.margin is None else args.margin
        args.neuron, args.rescale = args.neuron or "alpha", args.rescale or "sum"
        module = copy.deepcopy(model.module).double() if args.float64 else model.module

        snn, blob_digest = verify_run.share_network(ranks, lambda: convert_model(model, args, out)[0],
                                                    (CliError, ValueError, OSError, RuntimeError))
        snn = snn.to(device)  # rank 0 calibrated; every rank has the same network
        kv("network", f"converted: {describe(snn)}", out)
    module = copy.deepcopy(module).to(device) if device.type != "cpu" else module
    try:  # labels the model cannot predict would count as silent misses
        source.check_labels(snn.run(first[:1].to(device, snn.dtype)).logits[0].numel())
    except (ValueError, OSError) as e:
        raise CliError(f"--data: {e}") from None
    kv("data", f"{args.data}: {n} images, {'labelled' if source.labelled else 'no labels'}", out)
    if ranks.world > 1 or device.type != "cpu":
        kv("processes", f"{ranks.world} ({'torch.distributed, ' if ranks.world > 1 else ''}device {device})", out)
    out.flush()

    config = _run_config(args, model, source, n, blob_digest) if ranks.main and args.report else {}
    run = verify_run.Run.open(Verifier(module, snn, first), source, ranks, args.shard_size, args.batch_size,
                              Path(args.report) if args.report else None, config, args.resume)
    if run.done:
        kv("resumed", f"{args.report}: {len(run.done)} of {run.shards} shards done ({run.report.images:,} images)",
           out)
    progress = Progress(n, sys.stderr if ranks.main and not args.quiet else None)
    checked = run.report.images
    progress.update(checked)
    started = time.perf_counter()
    try:
        report = run.execute(progress.update)
    finally:
        progress.close()
    elapsed = time.perf_counter() - started
    finished = report.images

    name = source.name
    print(file=out)
    rows = [layer_row(la, name) for la in report.layers] + [layer_row(report.readout, name, spiking=False)]
    table(rows, ["layer", "op", "window (τ_c)", "max abs err", "max rel err", "worst input", "early spikes",
                 "searched", "spikes/neuron"], out, right={2, 3, 4, 6, 7, 8})
    print(file=out)
    kv("time", f"decision at {snn.decision_time:.4g} τ_c; smallest window {snn.smallest_window:.3g} τ_c "
               f"(rescale {snn.rescale})", out)
    kv("certificate", certificate_line(report.layers), out)
    if report.labelled:
        kv("accuracy", f"ANN {percent(report.ann_correct, report.labelled)}   "
                       f"SNN {percent(report.snn_correct, report.labelled)}", out)
    kv("agreement", f"{percent(report.agree, n)} ({report.agree}/{n} predictions equal)", out)
    if report.disagreements:
        listed = ", ".join(name(i) for i in report.disagreements[:10])
        kv("disagree", listed + (" …" if len(report.disagreements) > 10 else ""), out)
    kv("early spikes", f"{report.early:,}" + (f" (in {report.early_images} of {n} images)" if report.early else ""),
       out)
    if report.clipped:
        kv("note", f"{report.clipped:,} input values lay outside the input range {snn.input_range} and were clipped",
           out)
    if finished > checked:
        kv("speed", f"{finished - checked:,} images in {elapsed:.1f} s: {(finished - checked) / elapsed:,.0f} images/s "
                    f"({ranks.world} process{'es' if ranks.world > 1 else ''}, {device})", out)
    if args.report:
        kv("report", args.report, out)
    reasons = report.verdict().failures
    print("PASS" if not reasons else "FAIL: " + "; ".join(reasons), file=out)
    return EXIT_FAIL if reasons else EXIT_PASS


# --- parser and entry point -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ttfs", description="Convert trained ReLU networks into exact time-to-first-spike spiking "
                "networks, and verify them against the original.", epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"ttfs {__version__}")
    p.add_argument("--traceback", action="store_true", help="show the full traceback on errors (for bug reports)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    z = sub.add_parser("zoo", help="list the bundled models", description="One line per bundled model: name, "
                       "dataset, test accuracy (its whole 10,000-image test set), parameters, file size, title. "
                       "[default] marks the model the app opens with.")
    z.set_defaults(func=cmd_zoo)

    def model_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("model", metavar="MODEL", help="a bundled model name (see 'ttfs zoo') or a model file "
                       "(.pt2, TorchScript, or a state dict with --arch); file models take MNIST pixels / 255")
        q.add_argument("--arch", metavar="NAME", help="architecture of a state-dict file (a ttfs_core.zoo or "
                       "torchvision model name)")

    def preprocess_args(q: argparse.ArgumentParser) -> None:
        g = q.add_argument_group("preprocessing (default: the bundled model's card; model files: MNIST, 1x28x28, "
                                 "pixels / 255)")
        g.add_argument("--size", type=_size, metavar="H[xW]", help="resize images to H×W (e.g. 32 or 32x32)")
        g.add_argument("--channels", type=int, choices=(1, 3), help="1 (grayscale) or 3 (RGB)")
        g.add_argument("--mean", type=_floats, metavar="M[,M,M]", help="per-channel mean subtracted from pixels / 255")
        g.add_argument("--std", type=_floats, metavar="S[,S,S]", help="per-channel std dividing (pixels / 255 − mean)")

    def conversion_args(q: argparse.ArgumentParser, defaults: bool) -> None:
        d = (lambda v: v) if defaults else (lambda v: None)
        q.add_argument("--calib", metavar="DATA",
                       help="calibration data (default: the model's dataset, e.g. mnist-train or fashion-train)")
        q.add_argument("--margin", type=_margin, default=d(MARGIN_DEFAULT),
                       help=f"window margin: B_n = (1 + margin)·X_n (or the peak drive, where larger), > -1 "
                            f"(default: {MARGIN_DEFAULT})")
        q.add_argument("--neuron", choices=tuple(NEURON_MODELS), default=d(ALPHA.name),
                       help=f"neuron model (default: {ALPHA.name})")
        q.add_argument("--rescale", choices=tuple(RESCALES), default=d(SUM.name),
                       help="weight rescaling: sum (default; the paper's, windows of the order of the activations) or "
                            "positive (no certificate needed, but windows shrink geometrically with depth)")
        q.add_argument("--float64", action="store_true", help="convert a float64 copy of the model")

    c = sub.add_parser("convert", help="convert a model and save the spiking network",
                       description="Convert MODEL, print the layers and the decision latency, and save the network "
                       "(safetensors; read it back with ttfs_core.load).")
    model_args(c)
    conversion_args(c, defaults=True)
    c.add_argument("--limit", dest="calib_limit", type=_positive_int, default=CALIB_LIMIT, metavar="N",
                   help=f"calibrate on the first N images of --calib (default: {CALIB_LIMIT})")
    c.add_argument("-o", "--output", required=True, metavar="OUT", help="file to write (.safetensors)")
    c.add_argument("--device", default="auto", metavar="DEV",
                   help="where to calibrate: auto (CUDA when present, else the CPU), cpu, cuda, cuda:N")
    preprocess_args(c)
    c.set_defaults(func=cmd_convert)

    v = sub.add_parser("verify", help="check a conversion against the original model (exit 1 on failure)",
                       description="Convert MODEL (or load --snn), run DATA through both, and print per layer the "
                       "largest error, early spikes and spikes per neuron, then accuracy and agreement. Exit status: "
                       "0 PASS (100 % agreement, no early spike), 1 FAIL, 2 usage or input error.")
    model_args(v)
    v.add_argument("--data", metavar="DATA",
                   help="mnist-test, fashion-test (10,000 images each), mnist-train, fashion-train, a folder of "
                        "images, a .zip of one, an .npz, or torchvision:NAME:/root (default: the model's dataset's "
                        "test set)")
    v.add_argument("--limit", type=_positive_int, metavar="N", help="use the first N items of --data")
    v.add_argument("--batch-size", type=_positive_int, default=256, metavar="N", help="images per batch (default: 256)")
    v.add_argument("--shard-size", type=_positive_int, default=1024, metavar="N",
                   help="images per shard, a multiple of --batch-size (default: 1024): the unit of work shared out "
                        "among processes and recorded in --report")
    v.add_argument("--report", metavar="FILE", help="write a JSON report here, rewritten after every shard (a CI job "
                   "can archive it; --resume continues an interrupted run from it)")
    v.add_argument("--resume", action="store_true", help="continue the run recorded in --report FILE: only its "
                   "shards not yet done are checked (it must be the same model, data, network and sizes)")
    v.add_argument("--device", default="auto", metavar="DEV",
                   help="where to calibrate and simulate: auto (CUDA when present, else the CPU), cpu, cuda, cuda:N")
    preprocess_args(v)
    v.add_argument("--snn", metavar="FILE", help="verify this saved network (from 'ttfs convert') instead of "
                   "converting MODEL again")
    conversion_args(v, defaults=False)
    v.add_argument("--calib-limit", type=_positive_int, metavar="N",
                   help=f"calibrate on the first N images of --calib (default: {CALIB_LIMIT})")
    v.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    v.set_defaults(func=cmd_verify)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 pass, 1 verification failed, 2 usage or input error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return e.code if isinstance(e.code, int) else EXIT_ERROR
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    args.preprocess = preprocess_overrides(args)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("ttfs: interrupted", file=sys.stderr)
        return 130
    except (CliError, ValueError, KeyError, OSError, RuntimeError) as e:
        # ConversionError, InputError, ModelLoadError, NetworkFileError are ValueErrors
        if args.traceback:
            traceback.print_exc()
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        rank = os.environ.get("RANK", "0") if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else "0"
        where = "" if rank == "0" else f" (rank {rank})"  # torchrun: every process reports, the others marked
        print(f"ttfs: error{where}: {_one_line(msg) or type(e).__name__}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
