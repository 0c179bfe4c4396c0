"""Side by side with the rate-coded converters people use today: SpikingJelly's and sinabs'.

    pip install -e ".[bench]" && pip install --no-deps spikingjelly==2.0.0    # the peers (never needed otherwise)
    python -m bench peers                     # every bundled model: rows, RESULTS.md table, plots
    python -m bench peers --models lenet5 --images 200

For each bundled model, on the first images of its bundled test split, in one run:

- SpikingJelly 2.0.0 `RateCodingRecipe` (modes "max" and "99.9%", channel-wise thresholds) and sinabs 3.1.3
  (`normalize_weights` at the 99.9th percentile, then `from_model`), each simulated for 512 time steps with the
  analog image as a constant input current (their own examples' way); accuracy, agreement with the ANN and spikes
  per neuron are read at T = 8, 32, 128, 512 from the same run (the output accumulated over the first T steps);
  compute time for T steps is measured on each batch against the ANN's forward on the same batch, the median over
  batches;
- ours: the exact event-driven `run` and the clock-driven `run_stepped` at 16, 64 and 256 ticks per window, for
  the α-model and B1, on the same batches.

Writes `bench/results.json` ("peers": {"date", "machine", "images", "rows": [{"name", "model", "value", "unit",
"notes", "method", "steps", "metric"}]}), a table in `bench/RESULTS.md`, and the plots `bench/peers_*.png` that the
README shows. Without the peers installed it says what to install and measures our rows alone (their rows are
kept from the last run that had them).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("TQDM_DISABLE", "1")  # SpikingJelly's calibration progress bars

import ttfs_core  # noqa: E402
from ttfs_core import data, zoo  # noqa: E402
from ttfs_core.neurons import ALPHA, B1  # noqa: E402
from ttfs_ui.peers import INSTALL, METRICS, OUR_COLOURS, PEER_COLOURS, RateCoded, spikingjelly  # noqa: E402  (one SpikingJelly recipe, one palette: page and bench)

T_STEPS = (8, 32, 128, 512)
OUR_TICKS = (16, 64, 256)
IMAGES = {"vgg_fashion": 100}  # test images per model (the default for the others: --images); VGG is slow at T=512
BATCH = 100
CALIBRATION = 512


def peers() -> dict[str, str | None]:
    """The installed peers' versions (None: not installed)."""
    out: dict[str, str | None] = {}
    for name in ("spikingjelly", "sinabs"):
        try:
            from importlib.metadata import version

            __import__(name)
            out[name] = version(name)
        except Exception:  # noqa: BLE001 - a missing or broken peer is simply absent
            out[name] = None
    return out


# --- spikes of the peers' neurons ------------------------------------------------------------------------------
class Spikes:
    """Counts the spikes of every neuron module (forward hooks, removed by `close`): `count` spikes so far (a
    multi-spike neuron's several per step included), `neurons` per input."""

    def __init__(self, modules: list[nn.Module]):
        self.count = 0.0
        self.sizes: dict[int, int] = {}  # neuron module -> its neurons per input
        self.handles = [m.register_forward_hook(self._hook) for m in modules]

    def _hook(self, module, inputs, output) -> None:
        out = output[0] if isinstance(output, tuple) else output
        self.count += float(out.detach().abs().sum())
        self.sizes[id(module)] = out[0].numel()

    @property
    def neurons(self) -> int:
        return sum(self.sizes.values())

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _call_order(model: nn.Module, x: Tensor) -> list[tuple[str, nn.Module, int, int]]:
    """(name, module, id of its input, id of its output) of every leaf module, in the order the model calls them."""
    calls, handles, alive = [], [], []  # the tensors are kept alive: a freed tensor's id could be reused

    def hook(mod, i, o, name):
        alive.extend([*i, o])
        calls.append((name, mod, id(i[0]) if i else 0, id(o)))

    for name, m in model.named_modules():
        if not list(m.children()):
            handles.append(m.register_forward_hook(lambda mod, i, o, name=name: hook(mod, i, o, name)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return calls


def sinabs_network(model: nn.Module, calib: Tensor) -> RateCoded:
    """sinabs' recipe: BatchNorm right after a convolution or Linear folded into it (torch's own fuse), then
    `normalize_weights` at the 99.9th percentile for every ReLU whose input is a weighted layer's output (a ReLU
    after a residual addition has no single one: left as it is), then `from_model`. A BatchNorm *after* a ReLU
    (the Fashion VGG) cannot be fused into the layer before it and sinabs does not fold it into the next one: it
    stays, applied to the spikes of every step, and its shift no longer matches the normalised scale."""
    import sinabs
    from sinabs.utils import normalize_weights
    from torch.ao.quantization import fuse_modules

    model = copy.deepcopy(model).eval()
    calls = _call_order(model, calib[:2])
    by_out = {out: (name, m) for name, m, _, out in calls}
    pairs = [[by_out[inp][0], name] for name, m, inp, _ in calls
             if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and inp in by_out
             and isinstance(by_out[inp][1], (nn.Conv2d, nn.Linear))]
    if pairs:
        model = fuse_modules(model, pairs, inplace=False)
    calls = _call_order(model, calib[:2])
    by_out = {out: (name, m) for name, m, _, out in calls}
    relus = [(by_out[inp][0], name) for name, m, inp, _ in calls
             if isinstance(m, nn.ReLU) and inp in by_out and isinstance(by_out[inp][1], (nn.Conv2d, nn.Linear))]
    modules = dict(model.named_modules())

    class Named(nn.Module):  # normalize_weights looks layers up among a module's children, by name
        def __init__(self):
            super().__init__()
            self.inner = model
            for name, mod in modules.items():
                if name and name in {n for pair in relus for n in pair}:
                    self.add_module(name.replace(".", "__"), mod)

        def forward(self, x):
            return self.inner(x)

    named = Named()
    normalize_weights(named, calib, [r.replace(".", "__") for _, r in relus],
                      [p.replace(".", "__") for p, _ in relus], percentile=99.9)
    net = sinabs.from_model(model, input_shape=tuple(calib.shape[1:]), batch_size=BATCH).spiking_model.eval()
    layers = [m for m in net.modules() if isinstance(m, sinabs.layers.StatefulLayer)]
    return RateCoded("sinabs 99.9%", net, layers, lambda: sinabs.reset_states(net))


# --- one evaluation ------------------------------------------------------------------------------------------
def _ann_time(model: nn.Module, x: Tensor) -> float:
    with torch.no_grad():
        model(x)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


@torch.no_grad()
def rate_coded(rc: RateCoded, model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> dict[int, dict]:
    """Per T: accuracy, agreement, spikes per neuron and time / ANN of the rate-coded network (module docstring)."""
    spikes = Spikes(rc.neurons)
    ticks = set(T_STEPS)
    hits = {T: [0, 0] for T in T_STEPS}  # correct, agree
    counts = {T: 0.0 for T in T_STEPS}
    ratios: dict[int, list[float]] = {T: [] for T in T_STEPS}
    total = 0
    rc.reset()
    for _ in range(4):  # warm-up: the first steps of a fresh network allocate its state
        rc.net(batches[0][0])
    try:
        for x, y in batches:
            ann_pred = model(x).argmax(1)
            t_ann = _ann_time(model, x)
            rc.reset()
            spikes.count, out, simulated = 0.0, None, 0.0
            for step in range(1, max(T_STEPS) + 1):
                start = time.perf_counter()
                o = rc.net(x)
                out = o if out is None else out + o
                simulated += time.perf_counter() - start  # the read-outs below are not simulation time
                if step in ticks:
                    pred = out.argmax(1)
                    hits[step][0] += int((pred == y).sum())
                    hits[step][1] += int((pred == ann_pred).sum())
                    counts[step] += spikes.count
                    ratios[step].append(simulated / t_ann)
            total += len(x)
    finally:
        spikes.close()
    return {T: {"accuracy": 100 * hits[T][0] / total, "agreement": 100 * hits[T][1] / total,
                "spikes per neuron": counts[T] / max(spikes.neurons * total, 1),
                "time / ANN": statistics.median(ratios[T])} for T in T_STEPS}


@torch.no_grad()
def ours(model: nn.Module, calib: Tensor, card, batches: list[tuple[Tensor, Tensor]]) -> list[dict]:
    """Our rows on the same batches: exact and stepped, α and B1 (one spike per neuron at most)."""
    rows = []
    for neuron, label in ((ALPHA, "α"), (B1, "B1")):
        snn = ttfs_core.convert(model, calib, input_range=card.input_range, neuron=neuron)
        for ticks in (None, *OUR_TICKS):
            hits, spikes, neurons, ratios, steps = [0, 0], 0, 0, [], 0
            for x, y in batches:
                ann_pred = model(x).argmax(1)
                t_ann = _ann_time(model, x)
                times = []
                for _ in range(3):
                    t = time.perf_counter()
                    res = snn.run(x) if ticks is None else snn.run_stepped(x, steps=ticks)
                    times.append(time.perf_counter() - t)
                ratios.append(statistics.median(times) / t_ann)
                pred = res.logits.argmax(1)
                hits[0] += int((pred == y).sum())
                hits[1] += int((pred == ann_pred).sum())
                spikes, neurons = spikes + res.spikes, neurons + res.neurons
                steps = sum(res.ticks) if res.ticks else 0
            total = sum(len(x) for x, _ in batches)
            method = f"ours {label} " + ("exact" if ticks is None else "stepped")
            rows.append({"method": method, "steps": steps or None, "ticks": ticks, "accuracy": 100 * hits[0] / total,
                         "agreement": 100 * hits[1] / total, "spikes per neuron": spikes / max(neurons, 1),
                         "time / ANN": statistics.median(ratios),
                         "notes": f"decision at {snn.decision_time:.3g} τ_c, smallest window "
                                  f"{snn.smallest_window:.3g} τ_c" + (f", {steps} ticks in all" if steps else "")})
    return rows


def evaluate(name: str, images: int, installed: dict[str, str | None]) -> list[dict]:
    """Every row of one bundled model."""
    model, card = zoo.load(name)
    xc, _ = data.load(card.dataset, "train")
    calib = card.preprocess.normalize(xc)[:CALIBRATION]
    n = IMAGES.get(name, images)
    x, y = data.load_dataset(f"{card.dataset}-test", card.preprocess, n)
    batches = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, n, BATCH)]
    where = f"{n} test images of {card.dataset}, batches of {BATCH}"
    rows = []

    def add(method: str, steps: int | None, values: dict, notes: str, ticks: int | None = None) -> None:
        for metric, unit in METRICS.items():
            label = method + (f" {ticks}/window" if ticks else f" T={steps}" if steps else "")
            rows.append({"name": f"{label}: {metric}", "model": name, "value": float(values[metric]), "unit": unit,
                         "notes": notes, "method": method, "steps": steps, "metric": metric})

    with torch.no_grad():
        correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in batches)
    rows.append({"name": "ANN: accuracy", "model": name, "value": 100 * correct / n, "unit": "%", "notes": where,
                 "method": "ANN", "steps": None, "metric": "ANN accuracy"})
    for row in ours(model, calib, card, batches):
        add(row["method"], row["steps"], row, f"{where}; {row['notes']}", row["ticks"])
    builders = []
    if installed.get("spikingjelly"):
        builders += [lambda m=m: spikingjelly(model, calib, m) for m in ("max", "99.9%")]
    if installed.get("sinabs"):
        builders.append(lambda: sinabs_network(model, calib))
    for build in builders:
        try:
            rc = build()
        except Exception as e:  # noqa: BLE001 - a peer that cannot convert this model is a row saying so
            print(f"  {name}: a peer could not convert it: {type(e).__name__}: {e}", flush=True)
            rows.append({"name": "conversion failed", "model": name, "value": float("nan"), "unit": "",
                         "notes": f"{type(e).__name__}: {str(e)[:200]}", "method": getattr(build, "peer", "?"),
                         "steps": None, "metric": "error"})
            continue
        version = installed["spikingjelly" if rc.name.startswith("spiking") else "sinabs"]
        for T, values in rate_coded(rc, model, batches).items():
            add(rc.name, T, values, f"{where}; {rc.name.split()[0]} {version}, constant analog input")
        print(f"  {name}: {rc.name} done", flush=True)
    return rows


# --- results, table, plots -----------------------------------------------------------------------------------
def table(rows: list[dict]) -> list[str]:
    """Markdown: per model and method, T, accuracy, agreement, spikes per neuron, time / ANN."""
    lines = ["| model | method | T (steps) | accuracy | agreement | spikes / neuron | time / ANN |",
             "|---|---|---|---|---|---|---|"]
    keyed: dict[tuple, dict] = {}
    for r in rows:
        if r["metric"] in (*METRICS, "ANN accuracy"):
            keyed.setdefault((r["model"], r["method"], r["steps"]), {})[r["metric"]] = r["value"]
    for (model, method, steps), v in keyed.items():
        if "ANN accuracy" in v:
            lines.append(f"| {model} | the ANN | | {v['ANN accuracy']:.2f} % | | | 1× |")
            continue
        t = "event-driven" if "exact" in method else f"{steps}" + (" (in all)" if "stepped" in method else "")
        lines.append(f"| {model} | {method} | {t} | {v['accuracy']:.2f} % | {v['agreement']:.2f} % | "
                     f"{v['spikes per neuron']:.3g} | {v['time / ANN']:.3g}× |")
    return lines


def headline_table(rows: list[dict]) -> list[str]:
    """The README's table: per model, each rate-coded method's agreement at T = 8 · 32 · 128 · 512 and its cost at
    512, against our exact run (α and B1)."""
    lines = ["| model | ANN accuracy | method | agreement (T = 8 · 32 · 128 · 512) | accuracy at the end | "
             "spikes per neuron | time / ANN |", "|---|---|---|---|---|---|---|"]
    value = {(r["model"], r["method"], r["steps"], r["metric"]): r["value"] for r in rows}
    for model in dict.fromkeys(r["model"] for r in rows):
        ann = value.get((model, "ANN", None, "ANN accuracy"))
        first = True
        for method in dict.fromkeys(r["method"] for r in rows if r["model"] == model and r["metric"] in METRICS):
            if "stepped" in method:
                continue
            if method.startswith("ours"):
                get = {m: value.get((model, method, None, m)) for m in METRICS}
                agree, end = f"**{get['agreement']:.2f} %** (one pass, event-driven)", None
            else:
                get = {m: value.get((model, method, max(T_STEPS), m)) for m in METRICS}
                agree = " · ".join(f"{value.get((model, method, T, 'agreement'), float('nan')):.1f}"
                                   for T in T_STEPS) + " %"
                end = max(T_STEPS)
            if any(v is None for v in get.values()):
                continue
            lines.append(f"| {model if first else ''} | {'' if ann is None or not first else f'{ann:.2f} %'} | "
                         f"{method} | {agree} | {get['accuracy']:.2f} %{'' if end is None else f' (T = {end})'} | "
                         f"{get['spikes per neuron']:.3g} | {get['time / ANN']:.3g}× |")
            first = False
    return lines


def plots(rows: list[dict], folder: Path) -> list[Path]:
    """Accuracy and agreement against time steps, compute time and spikes per neuron (one PNG each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows if r["metric"] in METRICS))
    value = {(r["model"], r["method"], r["steps"], r["metric"]): r["value"] for r in rows}
    out = []
    for x_metric, fname, xlabel in (("steps", "peers_steps.png", "time steps T (ours stepped: ticks in all)"),
                                    ("time / ANN", "peers_time.png", "compute time / ANN forward (same batch)"),
                                    ("spikes per neuron", "peers_spikes.png", "spikes per neuron")):
        fig, axes = plt.subplots(2, len(models), figsize=(3.3 * len(models), 6.2), squeeze=False, sharey="row")
        for col, model in enumerate(models):
            for row, y_metric in enumerate(("accuracy", "agreement")):
                ax = axes[row][col]
                for method in methods:
                    keys = sorted({s for (m, me, s, _) in value if m == model and me == method},
                                  key=lambda s: -1 if s is None else s)
                    xs = [s if x_metric == "steps" else value.get((model, method, s, x_metric)) for s in keys]
                    ys = [value.get((model, method, s, y_metric)) for s in keys]
                    pts = [(a, b) for a, b in zip(xs, ys) if a is not None and b is not None]
                    if not pts:
                        if x_metric == "steps" and "exact" in method and ys and ys[0] is not None:
                            ax.axhline(ys[0], color="black", lw=1.5, ls="--", label=method)
                        continue
                    ours_ = method.startswith("ours")
                    colour = OUR_COLOURS["B1" if "B1" in method else "α"] if ours_ else PEER_COLOURS.get(method)
                    ax.plot(*zip(*pts), marker="*" if "exact" in method else "D" if ours_ else "o",
                            ms=12 if "exact" in method else 5 if ours_ else 4, lw=1.2, color=colour, label=method,
                            ls=":" if ours_ else "-", mec="black" if "exact" in method else colour)
                ax.set_xscale("log")
                ax.set_title(model if row == 0 else "", fontsize=10)
                ax.set_ylabel(f"{y_metric} (%)" if col == 0 else "")
                if row == 1:
                    ax.set_xlabel(xlabel, fontsize=8)
                ax.grid(alpha=0.3)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        path = folder / fname
        fig.savefig(path, dpi=90)
        plt.close(fig)
        out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench peers", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(zoo.ARCHITECTURES), choices=list(zoo.ARCHITECTURES))
    parser.add_argument("--images", type=int, default=200, help="test images per model (VGG: 100)")
    parser.add_argument("--out", type=Path, default=HERE, help="folder of results.json, RESULTS.md and the plots")
    args = parser.parse_args(argv)
    installed = peers()
    missing = [k for k, v in installed.items() if v is None]
    if missing:
        print(f"not installed: {', '.join(missing)}; install the peers with\n    {INSTALL}\n"
              "measuring our rows alone (the peers' rows of the last full run are kept)", flush=True)
    torch.manual_seed(0)
    new: list[dict] = []
    for name in args.models:
        print(f"== {name}", flush=True)
        new += evaluate(name, args.images, installed)
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {"sections": {}}
    old = results.get("peers", {}).get("rows", [])
    redone = {(r["model"], r["method"].split()[0]) for r in new}
    kept = [r for r in old if (r["model"], r["method"].split()[0]) not in redone]
    rows = sorted(kept + new, key=lambda r: (list(zoo.ARCHITECTURES).index(r["model"]),
                                             r["method"].split(" stepped")[0], r["steps"] or 0))
    results["peers"] = {"date": time.strftime("%Y-%m-%d"), "installed": installed,
                        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch "
                                   f"threads, torch {torch.__version__}", "rows": rows}
    path.write_text(json.dumps(results, indent=1, allow_nan=True))
    from bench.run import write_markdown

    write_markdown(results, args.out / "RESULTS.md")
    try:
        for p in plots(rows, args.out):
            print(f"wrote {p}")
    except ImportError:
        print(f"no plots: matplotlib is not installed ({INSTALL.split(' && ')[0]} installs it)")
    for line in headline_table(rows):
        print(line)
    return 0
