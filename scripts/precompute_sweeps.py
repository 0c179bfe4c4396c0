"""Precompute the robustness page's sweeps for the bundled models (``assets/robustness_sweeps.json``).

For every bundled model and every preset's conversion settings (``ttfs_ui.controls.PRESETS``), every series of
``ttfs_ui.sweeps.SERIES`` (spike-time bits, jitter in τ_c and relative to each window, weight bits on W per channel,
the margin, the ANN and the unperturbed SNN; weight bits on J per layer at the default settings only) on the first
1,000 test images of the model's own test set (VGG: 200, the page's default; the page computes further chunks when
more are asked for), kept per chunk of 100 images so that the page can show any of its image counts at once. The
page uses an entry only while the model's weights have the sha256 recorded with it, and tests/test_robustness.py
recomputes a subset: rerun this script after retraining the zoo or changing the simulator, the knobs or the
conversion.

Usage: ``python scripts/precompute_sweeps.py [--models lenet5 fc ...] [--threads N]`` (models not named keep their
entry in an existing file).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import streamlit.logger
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
streamlit.logger.set_log_level("error")  # the explorer's caches, imported outside a server, would each say so

from ttfs_core import zoo  # noqa: E402
from ttfs_ui import sweeps  # noqa: E402

IMAGES = {"vgg_fashion": 200}  # test images shipped, where not sweeps.IMAGES (VGG's perturbed runs search long)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(zoo.ARCHITECTURES), choices=list(zoo.ARCHITECTURES))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the numbers do not "
                                                               "depend on the machine's core count)")
    parser.add_argument("--out", type=Path, default=sweeps.SHIPPED)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = sweeps.read(args.out) if args.out.is_file() else {}
    settings = sweeps.preset_settings()
    # J per layer at the presets that are not the default would cost VGG an hour (hundreds of thousands of early
    # spikes to search); the page computes them when asked
    jobs = [(s, [k for k in sweeps.SERIES if k != "weight_bits:J" or i == 0]) for i, s in enumerate(settings)]
    for name in args.models:
        t0 = time.perf_counter()
        models[name] = sweeps.compute_model(name, jobs, IMAGES.get(name, sweeps.IMAGES),
                                            log=lambda m: print(m, flush=True))
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
        sweeps.write({n: models[n] for n in zoo.ARCHITECTURES if n in models}, args.out)
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size / 1024:.0f} KiB, {len(models)} models × {len(settings)} settings)")
    json.loads(args.out.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
