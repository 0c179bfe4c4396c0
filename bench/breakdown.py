"""Where a default float32 simulation's time goes, per architecture (issue 29's breakdown).

    python bench/breakdown.py densenet121 inception_v3 vgg16_bn resnet18   # torchvision names (random BN statistics)

For each network: the ANN forward and the SNN run on the same batch (medians of interleaved repeats, one thread and
the default threads), and the SNN run's time split by stage (torch.profiler's record_function ranges: arrivals,
weighted sums, certificate stages, exact search, settling, the sums shared between readers of one source) over one
profiled run. Sizes follow `bench/run.py architectures` (64×64, Inception-v3 80×80, batch 16) unless --size/--batch
say otherwise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0, help="seed of the random BatchNorm statistics")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    import torch
    import torchvision

    sys.path.insert(0, str(HERE.parent))
    import ttfs_core
    from tests.nets import randomise_bn
    from ttfs_core.sim import certify, shared
    from ttfs_core.sim import layer as sim_layer

    ranges = {(sim_layer, "arrivals"): "arrivals", (sim_layer, "certify_layer"): "certificate",
              (sim_layer, "search"): "exact search", (sim_layer, "settle_spikes"): "settle",
              (sim_layer, "crossing_after_inputs"): "crossing", (certify, "weighted_sum"): "certificate sums",
              (certify, "gathered_fails"): "certificate gathered", (sim_layer, "certify_parts"): "certificate of parts",
              (shared.Source, "values"): "shared level values", (shared.Source, "tents"): "shared tents",
              (sim_layer, "potential"): "shared V(t_min)"}

    def labelled(fn, label):
        def wrapper(*a, **k):
            with torch.profiler.record_function(label):
                return fn(*a, **k)
        return wrapper

    for name in args.models:
        size = args.size or (80 if name == "inception_v3" else 64)
        torch.manual_seed(0)  # the weights of `bench/run.py architectures`; the BN statistics from --seed
        kw = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
        model = randomise_bn(getattr(torchvision.models, name)(num_classes=10, **kw), seed=args.seed,
                             negative=False).eval()
        calib = torch.rand(64, 3, size, size, generator=torch.Generator().manual_seed(2))
        x = torch.rand(args.batch, 3, size, size, generator=torch.Generator().manual_seed(3))
        t = time.perf_counter()
        snn = ttfs_core.convert(model, calib)
        convert_s = time.perf_counter() - t
        with torch.no_grad():
            times = defaultdict(list)
            for threads in (1, torch.get_num_threads()):
                torch.set_num_threads(threads)
                for _ in range(args.repeats):
                    for what, fn in (("ann", partial(model, x)), ("snn", partial(snn.run, x))):
                        t = time.perf_counter()
                        fn()
                        times[(what, threads)].append(time.perf_counter() - t)
            saved = {key: getattr(*key) for key in ranges}
            for (mod, attr), label in ranges.items():
                setattr(mod, attr, labelled(getattr(mod, attr), label))
            try:
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                    result = snn.run(x)
            finally:
                for (mod, attr), fn in saved.items():
                    setattr(mod, attr, fn)
        med = {k: statistics.median(v) for k, v in times.items()}
        threads = sorted({t for _, t in med})
        print(f"\n== {name} {size}x{size}, batch {args.batch}, BN seed {args.seed}: convert {convert_s:.1f} s, "
              f"{len(snn.layers)} spiking layers, decision time {snn.decision_time:.3g} τ_c, smallest window "
              f"{snn.smallest_window:.3g} τ_c, load {os.getloadavg()[0]:.1f}")
        for th in threads:
            print(f"  {th} thread(s): ANN {med[('ann', th)] * 1e3:.0f} ms, SNN {med[('snn', th)] * 1e3:.0f} ms, "
                  f"run/ANN {med[('snn', th)] / med[('ann', th)]:.1f}x")
        searched = sum(lr.searched for lr in result.layers)
        neurons = sum(lr.neurons for lr in result.layers) if hasattr(result.layers[0], "neurons") else None
        print(f"  searched exactly: {searched:,} neurons" + (f" of {neurons:,}" if neurons else ""))
        totals = defaultdict(float)
        for ev in prof.key_averages():
            if ev.key in ranges.values():
                totals[ev.key] = ev.cpu_time_total / 1e6
        ops = sorted(((ev.self_cpu_time_total / 1e6, ev.key) for ev in prof.key_averages()
                      if ev.key not in ranges.values()), reverse=True)[:8]
        wall = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e6
        print(f"  profiled run: {wall:.2f} CPU-s in operators; by stage (inclusive CPU-s):")
        for label, s in sorted(totals.items(), key=lambda kv: -kv[1]):
            print(f"    {label:22s} {s:7.2f}")
        print("  top operators (self CPU-s): " + ", ".join(f"{k} {s:.2f}" for s, k in ops))


if __name__ == "__main__":
    main()
