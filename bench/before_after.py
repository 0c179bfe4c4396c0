"""Issue 29's rows, before and after a change, on the same machine in the same hour.

    python bench/before_after.py 6f9a5a4                 # that commit (a temporary git worktree) against this tree
    python bench/before_after.py 6f9a5a4 --cases vgg16_bn resnet18

Each case runs in a fresh process per tree, the trees alternating case by case (so both see the same load), with
the default float32 conversion: run / ANN forward on the same batch (medians of interleaved repeats inside the
process), the conversion's wall time, and the time scale (smallest window, decision time, τ_c), early spikes and
argmax agreement. Prints a table and merges it into bench/results.json as section `before_after` (the cases measured
replace their rows; the others stay).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# case -> (torchvision name or bundled model, input size, batch, calibration inputs)
CASES = {
    "vgg16_bn": ("vgg16_bn", 32, 64, 512), "resnet18": ("resnet18", 32, 64, 512),
    "densenet121": ("densenet121", 64, 16, 64), "inception_v3": ("inception_v3", 80, 16, 64),
    "lenet5": ("lenet5", 28, 256, 512), "vgg_fashion": ("vgg_fashion", 28, 256, 512),
}
PROBE = r'''
import json, statistics, sys, time
import ttfs_core  # first: the tree's own thread policy, if it has one
import torch, torchvision
from ttfs_core import data, zoo
name, size, batch, calib_n, repeats = sys.argv[1], *map(int, sys.argv[2:6])
torch.manual_seed(0)
if name in zoo.ARCHITECTURES:
    model, card = zoo.load(name)
    calib = data.load(card.dataset, "train")[0][:calib_n]
    x = data.load(card.dataset, "test")[0][:batch]
else:
    sys.path.insert(0, ".")
    from tests.nets import randomise_bn
    kw = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    model = randomise_bn(getattr(torchvision.models, name)(num_classes=10, **kw), negative=False).eval()
    g = torch.Generator().manual_seed(1)
    calib = torch.rand(calib_n, 3, size, size, generator=g)
    x = torch.rand(batch, 3, size, size, generator=g)
with torch.no_grad():
    t = time.perf_counter(); snn = ttfs_core.convert(model, calib); convert_s = time.perf_counter() - t
    model(x); snn.run(x)
    ann, run = [], []
    for _ in range(repeats):
        t = time.perf_counter(); ref = model(x); ann.append(time.perf_counter() - t)
        t = time.perf_counter(); res = snn.run(x); run.append(time.perf_counter() - t)
print("RESULT", json.dumps({"convert_s": convert_s, "ann_s": statistics.median(ann), "snn_s": statistics.median(run),
      "ratio": statistics.median(run) / statistics.median(ann), "smallest_window_tau": snn.smallest_window,
      "decision_time_tau": snn.decision_time, "early_spikes": res.early_spikes,
      "argmax_equal": bool(torch.equal(res.logits.argmax(1), ref.argmax(1)))}))
'''


def measure(tree: Path, case: str, repeats: int) -> dict:
    name, size, batch, calib = CASES[case]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OMP_WAIT_POLICY")}
    env["PYTHONPATH"] = str(tree)
    p = subprocess.run([sys.executable, "-c", PROBE, name, str(size), str(batch), str(calib), str(repeats)],
                       cwd=tree, env=env, capture_output=True, text=True, timeout=3600)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{case} in {tree} failed: {p.stderr[-800:]}")
    return {**json.loads(line[7:]), "load_average": os.getloadavg()[0]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev", help="the 'before' commit")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(before), args.rev], cwd=ROOT, check=True)
        try:
            rows = {}
            for case in args.cases:
                b = measure(before, case, args.repeats)
                a = measure(ROOT, case, args.repeats)
                rows[case] = {"before": b, "after": a}
                print(f"{case}: run/ANN {b['ratio']:.1f}x -> {a['ratio']:.1f}x, convert {b['convert_s']:.1f} s -> "
                      f"{a['convert_s']:.1f} s, decision {a['decision_time_tau']:.3g} tau_c, smallest window "
                      f"{a['smallest_window_tau']:.3g} tau_c, early {b['early_spikes']}/{a['early_spikes']}, "
                      f"argmax equal {a['argmax_equal']}, load {a['load_average']:.1f}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False)
    path = HERE / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {"sections": {}}
    # the cases measured now replace their rows; the other cases' rows stay, each with its own date
    results["sections"]["before_after"] = {**results["sections"].get("before_after", {}), **{
        f"{case} ({args.rev} -> this tree)": {
            "before_ratio": r["before"]["ratio"], "after_ratio": r["after"]["ratio"],
            "before_convert_s": r["before"]["convert_s"], "after_convert_s": r["after"]["convert_s"],
            "smallest_window_tau": r["after"]["smallest_window_tau"],
            "decision_time_tau": r["after"]["decision_time_tau"],
            "early_spikes": r["after"]["early_spikes"], "argmax_equal": int(r["after"]["argmax_equal"]),
            "load_average": r["after"]["load_average"], "date": time.strftime("%Y-%m-%d %H:%M")}
        for case, r in rows.items()}}
    path.write_text(json.dumps(results, indent=1))
    sys.path.insert(0, str(HERE))
    from run import write_markdown  # noqa: E402 — bench/run.py, which sets up its own imports

    write_markdown(results, HERE / "RESULTS.md")


if __name__ == "__main__":
    main()
