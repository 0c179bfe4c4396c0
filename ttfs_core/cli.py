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
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import torch
from torch import Tensor, nn

from . import data, untrusted, verify, verify_run, zoo

# the arguments, the entry point and what they share with the commands live in `command` (no torch there)
from .command import (  # noqa: F401 — build_parser re-exported
    CALIB_LIMIT,
    EXIT_ERROR,
    EXIT_FAIL,
    EXIT_PASS,
    MARGIN_DEFAULT,
    CliError,
    build_parser,
    one_line,
    parse,
)
from .compare import compare
from .convert import convert
from .errors import InputError
from .network import SpikingNetwork, usable_device
from .persist import Card, load_card, load_network, save_network
from .sim.result import merge_counts
from .verify import LayerCheck, Verifier, digest, percent
from .verify_run import Ranks

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
                       f"({type(e).__name__}: {one_line(e)[:150]})") from None


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
        raise CliError(f"cannot join the process group torchrun describes: {one_line(e)}") from None
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


def _card_of(path: Path) -> Card | None:
    """The card of a saved network, or None where it has none or cannot be read (`load_network` then says why)."""
    try:
        return load_card(path)
    except (ValueError, OSError):
        return None


def _verify_to(args: argparse.Namespace, ranks: Ranks, out: TextIO) -> int:
    device = args.device_
    overrides, card_note = args.preprocess, None
    if args.snn is not None and not overrides and args.model not in zoo.ARCHITECTURES:
        card = _card_of(Path(args.snn).expanduser())  # a saved network's card says how its inputs were prepared
        if card is not None and card.preprocess is not None:
            pre = card.preprocess
            overrides = {"height": pre.height, "width": pre.width, "channels": pre.channels, "mean": pre.mean,
                         "std": pre.std}
            card_note = (f"from {args.snn}'s card: {pre.channels}×{pre.height}×{pre.width}, mean {pre.mean}, "
                         f"std {pre.std} (--size/--channels/--mean/--std override it)")
    model = load_model(args.model, args.arch, overrides)
    kv("model", model.label, out)
    if card_note is not None:
        kv("preprocessing", card_note, out)
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


def run(args: argparse.Namespace | int) -> int:
    """Run a parsed command (`command.parse`; an int is already its exit status); returns the exit status (0 pass,
    1 verification failed, 2 usage or input error)."""
    if isinstance(args, int):
        return args
    try:
        return globals()[f"cmd_{args.run}"](args)
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
        print(f"ttfs: error{where}: {one_line(msg) or type(e).__name__}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """The command line with torch already imported (tests, ``python -m ttfs_core.cli``); the ``ttfs`` entry point
    is `ttfs_core.__main__.main`, which parses before importing torch."""
    return run(parse(argv))


if __name__ == "__main__":
    sys.exit(main())
