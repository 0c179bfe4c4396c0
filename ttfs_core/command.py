"""The ``ttfs`` command line's arguments and entry point, without torch: ``ttfs --help``, ``--version`` and usage
errors answer at once (about 0.1 s against 3–6 s with torch imported): the ``ttfs`` entry point (`ttfs_core.__main__`)
parses here and imports torch and the converter (`ttfs_core.cli`) only to run a command. The package's own
`__init__` imports lazily for the same reason.

Threads: importing the package (for `__version__`) sets OpenMP's wait policy to PASSIVE before torch loads, unless
the environment says otherwise (`ttfs_core/__init__.py`).
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import NoReturn

from . import __version__

EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2
CALIB_LIMIT = 512  # calibration images used by default (the first ones of --calib)
MARGIN_DEFAULT = 0.5  # mapping.DEFAULT_MARGIN (a test keeps them equal; importing mapping would import torch)
NEURON_NAMES = ("alpha", "b1")  # neurons.NEURON_MODELS' names, the default first (a test keeps them equal)
RESCALE_NAMES = ("sum", "positive")  # neurons.RESCALES' names, the default first

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
  torchrun --standalone --nproc-per-node 2 -m ttfs_core verify vgg_fashion   # shards over 2 processes
"""


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (no usage block): ``PROG: error: MESSAGE; see 'PROG --help'``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {one_line(message)}; see '{self.prog} --help'\n")


def one_line(text: object) -> str:
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
    z.set_defaults(run="zoo")

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
        q.add_argument("--neuron", choices=NEURON_NAMES, default=d(NEURON_NAMES[0]),
                       help=f"neuron model (default: {NEURON_NAMES[0]})")
        q.add_argument("--rescale", choices=RESCALE_NAMES, default=d(RESCALE_NAMES[0]),
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
    c.set_defaults(run="convert")

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
    v.set_defaults(run="verify")
    return p


def parse(argv: list[str] | None = None) -> argparse.Namespace | int:
    """The command's arguments, or the exit status where parsing ends it (--help, --version: 0; a usage error: 2,
    its one-line message printed)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return e.code if isinstance(e.code, int) else EXIT_ERROR
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    args.preprocess = preprocess_overrides(args)
    return args
