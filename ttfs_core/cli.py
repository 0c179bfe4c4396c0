"""The ``ttfs`` command line: list the bundled models, convert a model, verify a conversion.

    ttfs zoo
    ttfs convert lenet5 --calib mnist-train -o lenet5.snn.safetensors
    ttfs verify vgg_fashion --data fashion-test     # exit 0: PASS, 1: FAIL, 2: usage or input error

See ``EPILOG`` (``ttfs --help``) for what MODEL and DATA may be.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, TextIO

import torch
from torch import Tensor, nn

from . import __version__, data, loading, zoo
from .compare import compare
from .convert import NEURONS, RESCALE, convert
from .network import SpikingNetwork
from .persist import load_network
from .result import merge_counts

EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2
CALIB_LIMIT = 512  # calibration images used by default (the first ones of --calib)
MARGIN_DEFAULT = 0.5
EPILOG = """\
MODEL is a bundled model name (see 'ttfs zoo') or a model file: torch.export .pt2, TorchScript, or a state
dict (.safetensors/.pt/.pth) with --arch. Model files are assumed to take MNIST pixels / 255 in [0, 1],
shaped 1x28x28. A bundled name wins over a file of the same name (write ./fc for the file).
DATA is mnist-test, mnist-train, fashion-test or fashion-train (bundled: each -test is the whole 10,000-image
test set, each -train a 4,000-image calibration subset of the training set), a folder of images (class
sub-folders give labels), or torchvision:NAME:/root[:train] for a torchvision dataset already on disk.
--data and --calib default to the model's own dataset (its card's), MNIST for model files.

examples:
  ttfs zoo
  ttfs convert lenet5 -o lenet5.snn.safetensors
  ttfs verify lenet5 --data mnist-test          # exit 0 PASS, 1 FAIL, 2 usage or input error
  ttfs verify vgg_fashion                       # its own dataset: fashion-test
  ttfs verify lenet5 --snn lenet5.snn.safetensors
  ttfs verify model.pt2 --data digits/ --float64
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


def load_model(spec: str, arch: str | None = None) -> Model:
    """A bundled model by name, or a model file (inputs assumed to be MNIST pixels / 255, 1×28×28)."""
    if spec in zoo.ARCHITECTURES:
        if arch is not None:
            raise CliError(f"--arch applies to model files only; {spec!r} is a bundled model")
        module, card = zoo.load(spec)
        return Model(f"{spec} ({card.title})", module, card.preprocess, tuple(card.input_range), card)
    path = Path(spec).expanduser()
    if not path.exists():
        known = ", ".join(c.name for c in zoo.list_models()) or "none installed"
        looks_like_path = os.sep in spec or "." in path.name
        what = f"no such model file: {spec}" if looks_like_path else f"unknown model {spec!r}"
        raise CliError(f"{what} (MODEL is a bundled model name: {known}; or a model file)")
    try:
        module = loading.load_model(path, arch=arch)
    except loading.ModelLoadError as e:
        if _is_network_file(path):
            raise CliError(f"{spec} is a converted spiking network, not a model: verify it with "
                           f"'ttfs verify MODEL --snn {spec}'") from None
        raise CliError(f"{spec}: {str(e).replace('arch=<', '--arch <')}") from None
    pre = data.MNIST_PREPROCESS
    try:
        loading.check_input(module, pre.shape)
    except loading.ModelLoadError as e:
        raise CliError(f"{spec}: {e} (model files are assumed to take MNIST pixels / 255 in [0, 1], 1×28×28)") from None
    note = "input assumed to be MNIST pixels / 255 in [0, 1], 1×28×28"
    return Model(f"{spec} (file)", module, pre, pre.value_range, None, [note])


def _is_network_file(path: Path) -> bool:
    """Whether ``path`` is a network saved by ``ttfs convert`` (a safetensors file with a 'ttfs' header)."""
    from safetensors import safe_open

    if not path.is_file():  # a FIFO or a device would block or never end
        return False
    try:
        with safe_open(str(path), "pt") as f:
            return "ttfs" in (f.metadata() or {})
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


def model_dtype(module: nn.Module) -> torch.dtype:
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def convert_model(model: Model, args: argparse.Namespace, out: TextIO) -> tuple[SpikingNetwork, nn.Module]:
    """Convert ``model`` with the options in ``args``; returns the network and the ANN it was converted from."""
    module = copy.deepcopy(model.module).double() if args.float64 else model.module
    args.calib = args.calib or f"{model.dataset}-train"
    xc, _ = load_data(args.calib, model, args.calib_limit, "--calib")
    xc = xc.to(model_dtype(module))
    kv("calibration", f"{args.calib}: {xc.shape[0]} images", out)
    snn = convert(module, xc, margin=args.margin, input_range=model.input_range, neuron=args.neuron,
                  rescale=args.rescale)
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


def percent(k: int, n: int) -> str:
    """k/n as a percentage with two decimals; never shows 100.00 % unless k == n."""
    if not n:
        return "n/a"
    text = f"{100 * k / n:.2f}"
    return f"{'99.99' if text == '100.00' and k < n else text} %"


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
    model = load_model(args.model, args.arch)
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
    kv("latency", f"{snn.decision_latency:.6g} τ_c (the readout's t_min, after {len(snn.layers)} spiking layers); "
                  f"smallest window {snn.smallest_window:.3g} τ_c")
    try:
        snn.save(out_path)
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
        compare(module, snn, x)
    except (KeyError, RuntimeError, IndexError) as e:
        raise CliError(f"{args.snn} was not converted from {args.model}: its layers do not match the model's "
                       f"({type(e).__name__}: {_one_line(e)[:150]})") from None


@dataclass
class LayerStats:
    """Aggregated over batches: largest |SNN − ANN|, largest |ANN|, early spikes, spikes, neurons."""

    name: str
    op: str
    max_abs: float = 0.0
    max_ann: float = 0.0
    window: float = 0.0
    early: int = 0
    spikes: int = 0
    neurons: int = 0
    searched: int = 0
    certificate: tuple[tuple[str, int], ...] = ()

    def add(self, lr) -> None:
        """Count one batch's layer result."""
        self.early += lr.early_spikes
        self.spikes += lr.spikes
        self.neurons += lr.neurons
        self.searched += lr.searched
        self.certificate = merge_counts([self.certificate, lr.certificate])

    def row(self, spiking: bool = True) -> list[str]:
        rel = self.max_abs / max(self.max_ann, 1e-30)
        if not spiking:
            return [self.name, self.op, "readout", f"{self.max_abs:.3g}", f"{rel:.3g}", "-", "-", "-"]
        return [self.name, self.op, f"{self.window:.4g}", f"{self.max_abs:.3g}", f"{rel:.3g}", f"{self.early:,}",
                f"{self.searched:,}", f"{self.spikes / max(self.neurons, 1):.3f}"]


def worst(a: float, b: float) -> float:
    """The larger of two errors, where NaN is the worst of all (Python's max would drop it: max(0.0, nan) == 0.0)."""
    if math.isnan(a) or math.isnan(b):
        return float("nan")
    return max(a, b)


def certificate_line(stats: list[LayerStats]) -> str:
    """How the early-spike certificate (MATH §2) settled the hidden neurons, summed over layers and images."""
    totals = merge_counts(s.certificate for s in stats)
    neurons = sum(s.neurons for s in stats)
    searched = sum(s.searched for s in stats)
    parts = [f"{stage} {percent(count, neurons)}" for stage, count in totals if count]
    return ", ".join(parts + [f"searched exactly {searched:,} ({percent(searched, neurons)})"])


def cmd_verify(args: argparse.Namespace) -> int:
    model = load_model(args.model, args.arch)
    kv("model", model.label)
    for note in model.notes:
        kv("note", note)
    args.data = args.data or f"{model.dataset}-test"
    x, y = load_data(args.data, model, args.limit, "--data")
    if args.snn is not None:
        given = [f"--{k.replace('_', '-')}" for k in ("calib", "calib_limit", "margin", "neuron", "rescale")
                 if getattr(args, k) is not None] + (["--float64"] if args.float64 else [])
        if given:
            raise CliError(f"with --snn nothing is converted: drop {', '.join(given)} (or drop --snn)")
        snn = load_network(args.snn)
        module = model.module if snn.dtype == model_dtype(model.module) else copy.deepcopy(model.module).to(snn.dtype)
        kv("network", f"{args.snn}: {describe(snn)}")
        check_match(module, snn, x[:1].to(snn.dtype), args)
    else:
        args.calib_limit = args.calib_limit or CALIB_LIMIT
        args.margin = MARGIN_DEFAULT if args.margin is None else args.margin
        args.neuron, args.rescale = args.neuron or "alpha", args.rescale or "sum"
        snn, module = convert_model(model, args, sys.stdout)
        kv("network", f"converted: {describe(snn)}")
    x = x.to(snn.dtype)
    n = x.shape[0]
    kv("data", f"{args.data}: {n} images, {'labelled' if y is not None else 'no labels'}")
    sys.stdout.flush()

    stats = [LayerStats(layer.name, layer.op, window=layer.window) for layer in snn.layers]
    readout = LayerStats(snn.output.name, snn.output.op + " (readout)")
    ann_pred, snn_pred = [], []
    early_images = clipped = 0
    progress = Progress(n, None if args.quiet else sys.stderr)
    progress.update(0)
    try:
        for start in range(0, n, args.batch_size):
            xb = x[start:start + args.batch_size]
            res = snn.run(xb)
            comps = compare(module, snn, xb, result=res)
            with torch.no_grad():
                ann_logits = module(xb)
            while isinstance(ann_logits, (tuple, list)):
                ann_logits = ann_logits[0]
            for s, c, lr in zip(stats, comps, res.layers):
                s.max_abs = worst(s.max_abs, c.max_abs_error)
                s.max_ann = worst(s.max_ann, float(c.ann.abs().max()) if c.ann.numel() else 0.0)
                s.add(lr)
            early_mask = torch.zeros(xb.shape[0], dtype=torch.bool)
            for lr in res.layers:
                early_mask |= (lr.offsets < 0).flatten(1).any(1)
            early_images += int(early_mask.sum())
            clipped += res.input_clipped
            ann_logits = ann_logits.to(res.logits.dtype).reshape(res.logits.shape)
            readout.max_abs = worst(readout.max_abs, float((res.logits - ann_logits).abs().max()))
            readout.max_ann = worst(readout.max_ann, float(ann_logits.abs().max()))
            ann_pred.append(ann_logits.flatten(1).argmax(1))
            snn_pred.append(res.logits.flatten(1).argmax(1))
            progress.update(start + xb.shape[0])
    finally:
        progress.close()

    a, s = torch.cat(ann_pred), torch.cat(snn_pred)
    print()
    rows = [st.row() for st in stats] + [readout.row(spiking=False)]
    table(rows, ["layer", "op", "window (τ_c)", "max abs err", "max rel err", "early spikes", "searched",
                 "spikes/neuron"], sys.stdout, right={2, 3, 4, 5, 6, 7})
    print()
    kv("time", f"decision at {snn.decision_time:.4g} τ_c; smallest window {snn.smallest_window:.3g} τ_c "
               f"(rescale {snn.rescale})")
    kv("certificate", certificate_line(stats))
    if y is not None:
        y = y.reshape(-1)
        kv("accuracy", f"ANN {percent(int((a == y).sum()), n)}   SNN {percent(int((s == y).sum()), n)}")
    agree = int((a == s).sum())
    early = sum(st.early for st in stats)
    kv("agreement", f"{percent(agree, n)} ({agree}/{n} predictions equal)")
    kv("early spikes", f"{early:,}" + (f" (in {early_images} of {n} images)" if early else ""))
    if clipped:
        kv("note", f"{clipped:,} input values lay outside the input range {snn.input_range} and were clipped")
    reasons = []
    broken = [st.name for st in [*stats, readout] if math.isnan(st.max_abs) or math.isnan(st.max_ann)]
    if broken:
        reasons.append(f"NaN values in {', '.join(broken)} (the model or the network overflows)")
    if agree < n:
        reasons.append(f"agreement {percent(agree, n)} < 100 % ({n - agree} of {n} predictions differ)")
    if early:
        reasons.append(f"{early:,} early spikes in {early_images} images")
    print("PASS" if not reasons else "FAIL: " + "; ".join(reasons))
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

    def conversion_args(q: argparse.ArgumentParser, defaults: bool) -> None:
        d = (lambda v: v) if defaults else (lambda v: None)
        q.add_argument("--calib", metavar="DATA",
                       help="calibration data (default: the model's dataset, e.g. mnist-train or fashion-train)")
        q.add_argument("--margin", type=_margin, default=d(MARGIN_DEFAULT),
                       help=f"window margin: B_n = (1 + margin)·X_n (or the peak drive, where larger), > -1 "
                            f"(default: {MARGIN_DEFAULT})")
        q.add_argument("--neuron", choices=NEURONS, default=d("alpha"), help="neuron model (default: alpha)")
        q.add_argument("--rescale", choices=RESCALE, default=d("sum"),
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
    c.set_defaults(func=cmd_convert)

    v = sub.add_parser("verify", help="check a conversion against the original model (exit 1 on failure)",
                       description="Convert MODEL (or load --snn), run DATA through both, and print per layer the "
                       "largest error, early spikes and spikes per neuron, then accuracy and agreement. Exit status: "
                       "0 PASS (100 % agreement, no early spike), 1 FAIL, 2 usage or input error.")
    model_args(v)
    v.add_argument("--data", metavar="DATA",
                   help="mnist-test, fashion-test (10,000 images each), mnist-train, fashion-train, a folder of images "
                        "or torchvision:NAME:/root (default: the model's dataset's test set)")
    v.add_argument("--limit", type=_positive_int, metavar="N", help="use the first N items of --data")
    v.add_argument("--batch-size", type=_positive_int, default=256, metavar="N", help="images per batch (default: 256)")
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
        print(f"ttfs: error: {_one_line(msg) or type(e).__name__}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
