"""Benchmarks: SNN simulation time against the ANN forward on the same batch, measured side by side.

    python bench/run.py            # all sections, writes bench/results.json and bench/RESULTS.md
    python bench/run.py core       # one section: core | stepped | convert | memory | app | live | paper |
                                   # branches | architectures | verify | timm | repvgg | views |
                                   # threads | timm_scale | first_visit
    python bench/run.py paper      # the paper's table: every zoo model on its whole 10,000-image test set
    python bench/run.py architectures  # the torchvision families: exactness, size, decision time, run / ANN
    python bench/run.py verify     # `ttfs verify` images per second on 1 and 2 processes (torchrun)
    python bench/run.py timm       # timm's ReLU-family architectures: exactness, size, conversion time, run / ANN
    python bench/run.py repvgg     # conversion time of RepVGG-A0 (float64) and the ANN passes a conversion makes
    python bench/run.py views      # ResNet-50 at 224×224 in the explorer: spec size, page reruns, conversion, memory

The machine is shared and noisy: every figure is a median over interleaved repeats, and the headline numbers are
ratios of times taken in the same run.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torchvision

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import ttfs_core  # noqa: E402
from tests.nets import randomise_bn  # noqa: E402
from ttfs_core import data, zoo  # noqa: E402


def vgg16(dtype=torch.float32):
    torch.manual_seed(0)
    return randomise_bn(torchvision.models.vgg16_bn(num_classes=10)).to(dtype).eval()


def side_by_side(fns: dict, repeats: int) -> dict:
    """Median seconds of each callable, run interleaved (one of each per round) after one warm-up round."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


@torch.no_grad()
def bench_core(repeats: int = 7) -> dict:
    """Exact event-driven run vs ANN forward under both rescalings (the paper's `sum`, the default, and the
    `positive` fast mode): VGG16-BN at 32×32 batch 64 float32 with random BN statistics, and the bundled models at
    batch 256. Each row also records the time scale (smallest window, decision time, in τ_c), the early spikes at
    margin 0.5, whether every argmax equals the ANN's, and the share of neurons the certificate left to the exact
    search."""
    out = {}
    cases = [("vgg16_bn_32x32_b64_f32", vgg16(), torch.randn(512, 3, 32, 32), torch.randn(64, 3, 32, 32))]
    for name in zoo.ARCHITECTURES:
        model, card = zoo.load(name)
        train, _ = data.load(card.dataset, "train")
        images, _ = data.load(card.dataset, "test")
        cases.append((f"{name}_b256_f32", model, train[:512], images[:256]))
    for case, model, calib, x in cases:
        nets = {r: ttfs_core.convert(model, calib, rescale=r) for r in ("sum", "positive")}
        fns = {"ann": lambda m=model, x=x: m(x)}
        fns.update({r: (lambda s=s, x=x: s.run(x)) for r, s in nets.items()})
        t = side_by_side(fns, repeats)
        ref = model(x).argmax(1)
        for r, snn in nets.items():
            res = snn.run(x)
            out[f"{case} {r}"] = {
                "smallest_window_tau": snn.smallest_window, "decision_time_tau": snn.decision_time,
                "ann_s": t["ann"], "snn_s": t[r], "ratio": t[r] / t["ann"], "early_spikes": res.early_spikes,
                "argmax_equal": int(torch.equal(res.logits.argmax(1), ref)),
                "searched_pct": 100.0 * res.searched / max(res.neurons, 1),
            }
    return out


def bench_convert(repeats: int = 3) -> dict:
    """Conversion + calibration of VGG16-BN on 512 inputs of 32×32 (float32)."""
    model = vgg16()
    calib = torch.randn(512, 3, 32, 32)
    with torch.no_grad():
        t = side_by_side({"convert": lambda: ttfs_core.convert(model, calib), "ann_512": lambda: model(calib)}, repeats)
    return {"vgg16_bn_512_inputs": {**t, "ratio_to_one_ann_pass": t["convert"] / t["ann_512"]}}


def fresh_process_memory(snn, x_shape: tuple[int, ...], sampler: str = "rand") -> tuple[float, float]:
    """Resident memory of one `snn.run` on a batch `torch.<sampler>(*x_shape)`: the network is saved, then loaded
    in a fresh process (no ANN, no conversion in memory). Returns (GiB resident before the run, process peak).
    The peak is VmHWM, which starts again at exec; ru_maxrss would carry over the parent's peak from the fork."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "network.safetensors"
        ttfs_core.save(snn, path)
        code = (
            "import sys, torch\n"
            f"sys.path.insert(0, {str(HERE.parent)!r})\n"
            "import ttfs_core\n"
            f"snn = ttfs_core.load({str(path)!r}); x = torch.{sampler}{tuple(x_shape)!r}\n"
            "import os; page = os.sysconf('SC_PAGE_SIZE') / 1024\n"
            "before = int(open('/proc/self/statm').read().split()[1]) * page  # resident now, KiB\n"
            "snn.run(x)\n"
            "peak = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM:')][0].split()[1]  # KiB\n"
            "print(before, peak)"
        )
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = (float(v) / 2**20 for v in res.stdout.split()[-2:])  # KiB -> GiB
    return before, after


def bench_memory() -> dict:
    """Peak resident memory of `snn.run` on VGG16-BN, batch 64, in a fresh process, before and after one run."""
    snn = ttfs_core.convert(vgg16(), torch.randn(64, 3, 32, 32))
    before, after = fresh_process_memory(snn, (64, 3, 32, 32), "randn")
    return {"vgg16_bn_b64_run": {"process_peak_rss_gib": after, "rss_before_run_gib": before,
                                 "run_peak_above_before_gib": max(after - before, 0.0)}}


@torch.no_grad()
def bench_stepped(repeats: int = 3) -> dict:
    """Clock-driven simulation vs ANN forward at 64, 256 and 1024 ticks per window."""
    out = {}
    cases = []
    for name in ("lenet5", "vgg_fashion"):
        m, card = zoo.load(name)
        train, _ = data.load(card.dataset, "train")
        images, _ = data.load(card.dataset, "test")
        cases.append((name, m, ttfs_core.convert(m, train[:512]), images[:256]))
    model = vgg16()
    cases.append(("vgg16_bn_32x32", model, ttfs_core.convert(model, torch.randn(512, 3, 32, 32)),
                  torch.randn(64, 3, 32, 32)))
    for name, m, s, xb in cases:
        for steps in (64, 256, 1024):
            t = side_by_side({"ann": lambda m=m, xb=xb: m(xb),
                              "snn": lambda s=s, xb=xb, k=steps: s.run_stepped(xb, steps=k)}, repeats)
            out[f"{name}_b{len(xb)}_steps{steps}_fast"] = {**t, "ratio": t["snn"] / t["ann"]}
        # the literal tick loop on a small batch (its cost is ticks × neurons)
        small = xb[:8]
        for steps in (64, 256):
            t = side_by_side({"ann": lambda m=m, xb=small: m(xb),
                              "snn": lambda s=s, xb=small, k=steps: s.run_stepped(xb, steps=k, method="loop")}, 1)
            out[f"{name}_b8_steps{steps}_loop"] = {**t, "ratio": t["snn"] / t["ann"]}
    return out


def bench_app() -> dict:
    """Explorer redraw time after a widget change on the bundled models (server side, caches warm; see
    `ttfs_ui.bench`: the script run with its cached core calls and figures, not the browser's drawing)."""
    from ttfs_ui.bench import redraw_times

    return redraw_times()


def bench_live() -> dict:
    """The raster page's browser spec per bundled model: megabytes per digit change and server build time (see
    `ttfs_ui.bench.live_payloads`; step and Play times are measured in the page by the browser test)."""
    from ttfs_ui.bench import live_payloads

    return live_payloads()


@torch.no_grad()
def bench_paper(batch: int = 500) -> dict:
    """The paper's experiment for every zoo model: the default conversion (the paper's rescaling, margin 0.5,
    calibrated on the first 512 images of the model's bundled training subset) against the ReLU network on all
    10,000 test images of its dataset, for the α-model and B1. Rows: accuracies, agreement, early spikes, spikes per
    hidden neuron, the decision time and the wall time of the whole pass."""
    out = {}
    for name in zoo.ARCHITECTURES:
        model, card = zoo.load(name)
        calib, _ = data.load(card.dataset, "train")
        x, y = data.load(card.dataset, "test")
        ann = torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)]).argmax(1)
        for neuron in ("alpha", "b1"):
            t = time.perf_counter()
            snn = ttfs_core.convert(model, calib[:512], neuron=neuron)
            pred, early, spikes, neurons = [], 0, 0, 0
            for i in range(0, len(x), batch):
                res = snn.run(x[i:i + batch])
                pred.append(res.logits.argmax(1))
                early, spikes, neurons = early + res.early_spikes, spikes + res.spikes, neurons + res.neurons
            s = torch.cat(pred)
            out[f"{name} {neuron}"] = {
                "dataset": data.dataset(card.dataset).title, "test_images": len(x),
                "ann_accuracy_pct": 100.0 * float((ann == y).double().mean()),
                "snn_accuracy_pct": 100.0 * float((s == y).double().mean()),
                "agreement_pct": 100.0 * float((s == ann).double().mean()),
                "early_spikes": early, "spikes_per_neuron": spikes / max(neurons, 1),
                "decision_time_tau": snn.decision_time, "wall_s": time.perf_counter() - t,
            }
    return out


@torch.no_grad()
def bench_branches(repeats: int = 5) -> dict:
    """ResNet-18 (random BN statistics) at 32×32, float32, batch 64, default conversion: exact `run` vs the ANN
    forward, conversion + calibration on 512 inputs, and the peak memory of a run in a fresh process."""
    model = torchvision_model("resnet18", torch.float32)
    calib, x = torch.rand(512, 3, 32, 32), torch.rand(64, 3, 32, 32)
    t = side_by_side({"convert": lambda: ttfs_core.convert(model, calib), "ann_512": lambda: model(calib)}, 3)
    snn = ttfs_core.convert(model, calib)
    run = side_by_side({"ann": lambda: model(x), "snn": lambda: snn.run(x)}, repeats)
    res = snn.run(x)
    _, peak = fresh_process_memory(snn, (64, 3, 32, 32))
    return {"resnet18_32x32_b64_f32": {
        "ann_s": run["ann"], "snn_s": run["snn"], "ratio": run["snn"] / run["ann"],
        "convert_512_s": t["convert"], "process_peak_rss_gib": peak, "early_spikes": res.early_spikes,
        "argmax_equal": int(torch.equal(res.logits.argmax(1), model(x).argmax(1))),
        "decision_time_tau": snn.decision_time, "smallest_window_tau": snn.smallest_window,
        "spiking_layers": len(snn.layers)}}


TORCHVISION = ["alexnet", "vgg11", "vgg19_bn", "resnet18", "resnet34", "resnet50", "resnext50_32x4d",
               "wide_resnet50_2", "densenet121", "squeezenet1_1", "googlenet", "inception_v3", "mnasnet0_5",
               "shufflenet_v2_x0_5", "regnet_x_400mf", "mobilenet_v2", "efficientnet_b0"]


def torchvision_model(name: str, dtype) -> torch.nn.Module:
    kw = {"num_classes": 10}
    if name in ("googlenet", "inception_v3"):
        kw.update(aux_logits=False, init_weights=True)
    torch.manual_seed(0)
    return randomise_bn(getattr(torchvision.models, name)(**kw), negative=False).to(dtype).eval()


@torch.no_grad()
def bench_architectures(repeats: int = 3) -> dict:
    """Every ReLU-family torchvision architecture (num_classes=10, random BN statistics) at 64×64 (Inception-v3
    80×80): exactness in float64 on 4 inputs (logits against model(x), early spikes), then the default float32
    conversion: spiking layers, neurons, decision time, and run / ANN forward on a batch of 16."""
    out = {}
    for name in TORCHVISION:
        size = 80 if name == "inception_v3" else 64
        row: dict = {}
        try:
            m64 = torchvision_model(name, torch.float64)
            x64 = torch.rand(4, 3, size, size, dtype=torch.float64)
            s64 = ttfs_core.convert(m64, x64, input_range=(0.0, 1.0))
            r64 = s64.run(x64)
            ref = m64(x64)
            row["rel_error_f64"] = float((r64.logits - ref).abs().max() / ref.abs().max())
            row["early_spikes_f64"] = r64.early_spikes
            row["one_spike_per_neuron"] = int(r64.spikes == r64.neurons)
            del m64, s64
            model = torchvision_model(name, torch.float32)
            calib, x = torch.rand(64, 3, size, size), torch.rand(16, 3, size, size)
            snn = ttfs_core.convert(model, calib)
            t = side_by_side({"ann": partial(model, x), "snn": partial(snn.run, x)}, repeats)
            row.update({"status": "exact" if row["rel_error_f64"] <= 1e-9 and not row["early_spikes_f64"]
                        else "inexact", "spiking_layers": len(snn.layers),
                        "neurons": sum(la.neurons for la in snn.layers),
                        "most_inputs": max(len(la.inputs) for la in snn.all_layers),
                        "decision_time_tau": snn.decision_time, "smallest_window_tau": snn.smallest_window,
                        "ratio": t["snn"] / t["ann"], "load_average": os.getloadavg()[0]})
        except ttfs_core.ConversionError as exc:
            row = {"status": "refused", "reason": str(exc).split(". Supported")[0]}
        out[name] = row
        print(f"  {name}: {row}", flush=True)
    return out


def architecture_table(rows: dict) -> list[str]:
    """The README's table of torchvision architectures (the `architectures` section)."""
    lines = ["| architecture | status | spiking layers | neurons | most inputs of a layer | decision time | "
             "smallest window | run / ANN | float64 error | load |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        if r["status"] == "refused":
            lines.append(f"| {name} | refused: {r['reason']} | | | | | | | | |")
            continue
        window = f"{r['smallest_window_tau']:.3g} τ_c" if "smallest_window_tau" in r else ""
        load = f"{r['load_average']:.1f}" if "load_average" in r else ""
        lines.append(f"| {name} | {r['status']} | {r['spiking_layers']} | {r['neurons']:,} | {r['most_inputs']} | "
                     f"{r['decision_time_tau']:.3g} τ_c | {window} | {r['ratio']:.1f}× | {r['rel_error_f64']:.1e} | "
                     f"{load} |")
    return lines


# --- timm: the ReLU-family architectures in the wild ------------------------------------------------------------
TIMM = ["resnet18d", "resnet50d", "res2net50_14w_8s", "dla34", "dpn68", "vovnet39a", "selecsls42b", "repvgg_a0",
        "regnetx_002", "mobilenetv2_100", "spnasnet_100", "resnetv2_50", "hrnet_w18_small", "vgg11", "inception_v4",
        "inception_resnet_v2", "xception41", "cspresnet50", "legacy_seresnet18"]
TIMM_SIZE = {"inception_v4": 80, "inception_resnet_v2": 80}  # their stems need more than 64×64


def timm_model(name: str, dtype) -> torch.nn.Module:
    """timm's `name` with num_classes=10, random weights (seed 0) and random BatchNorm statistics, eval mode."""
    import timm

    torch.manual_seed(0)
    return randomise_bn(timm.create_model(name, num_classes=10), negative=False).to(dtype).eval()


def refusal(exc: Exception) -> str:
    """The first line of a conversion's refusal, without the list of what is supported."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". Supported")[0]


def load_average() -> float:
    return os.getloadavg()[0]


@torch.no_grad()
def bench_timm(repeats: int = 3, checked: int = 4, calibration: int = 16) -> dict:
    """timm's ReLU-family architectures (num_classes=10, random weights and BatchNorm statistics) at 64×64 (the
    Inception stems 80×80): a float64 conversion on `checked` inputs, simulated on them and compared with the
    model layer by layer (`ttfs_core.compare`: the largest |ANN − SNN| of any spiking layer relative to that layer's
    largest activation, at least 1) and at the logits; then the default float32 conversion on `calibration` inputs
    (its wall time), spiking layers, neurons and run / ANN forward on a batch of 16 (median of `repeats`
    interleaved rounds). Small inputs and few of them keep the section near 10 minutes on two cores.
    A model that does not convert is a row with the refusal's first line; one that converts but is not exact in
    float64 (error above 1e-9 or an early spike) says "inexact". Every row records the load average at its end."""
    out = {}
    for name in TIMM:
        size = TIMM_SIZE.get(name, 64)
        row: dict = {"size": size}
        try:
            m64 = timm_model(name, torch.float64)
            x64 = torch.rand(checked, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
            t = time.perf_counter()
            s64 = ttfs_core.convert(m64, x64, input_range=(0.0, 1.0))
            row["convert_f64_s"] = time.perf_counter() - t
            r64 = s64.run(x64)
            ref = m64(x64)
            row["rel_error_f64"] = float((r64.logits - ref).abs().max() / ref.abs().max())
            try:
                row["layer_error_f64"] = max(c.max_abs_error / max(float(c.ann.abs().max()), 1.0)
                                             for c in ttfs_core.compare(m64, s64, x64, r64))
            except (ValueError, RuntimeError) as exc:  # a layer the model cannot be probed at: logits only
                row["layer_error_f64"] = None
                row["compare"] = refusal(exc)
            row["early_spikes_f64"] = r64.early_spikes
            error = max(row["rel_error_f64"], row["layer_error_f64"] or 0.0)
            row.update({"status": "exact" if error <= 1e-9 and not r64.early_spikes else "inexact",
                        "max_error_f64": error, "spiking_layers": len(s64.layers),
                        "neurons": sum(la.neurons for la in s64.layers)})
            del m64, s64, r64
            model = timm_model(name, torch.float32)
            calib = torch.rand(calibration, 3, size, size, generator=torch.Generator().manual_seed(2))
            x = torch.rand(16, 3, size, size, generator=torch.Generator().manual_seed(3))
            t = time.perf_counter()
            try:
                snn = ttfs_core.convert(model, calib)
            except ttfs_core.ConversionError as exc:  # float64 converts, float32 does not (e.g. an overflow)
                row["float32"] = f"refused: {refusal(exc)}"
            else:
                row["convert_s"] = time.perf_counter() - t
                tt = side_by_side({"ann": partial(model, x), "snn": partial(snn.run, x)}, repeats)
                row.update({"spiking_layers": len(snn.layers), "neurons": sum(la.neurons for la in snn.layers),
                            "ratio": tt["snn"] / tt["ann"], "smallest_window_tau": snn.smallest_window,
                            "decision_time_tau": snn.decision_time})
                del snn
            del model
        except ttfs_core.ConversionError as exc:
            row = {"size": size, "status": "refused", "reason": refusal(exc)}
        except Exception as exc:  # noqa: BLE001 — a model that breaks elsewhere is a row, not the end of the table
            row = {"size": size, "status": "error", "reason": f"{type(exc).__name__}: {refusal(exc)}"}
        row["load_average"] = load_average()
        out[name] = row
        print(f"  {name}: {row}", flush=True)
    return out


@torch.no_grad()
def bench_timm_scale(calibration: int = 16) -> dict:
    """The time scale (smallest window, decision time, in τ_c) of the `timm` section's default float32 conversions:
    the same models, seeds and calibration inputs, conversion only (a few seconds each), so that the timm table
    states it beside rows recorded before it did. Models the `timm` section refused are skipped."""
    out = {}
    for name in TIMM:
        size = TIMM_SIZE.get(name, 64)
        model = timm_model(name, torch.float32)
        calib = torch.rand(calibration, 3, size, size, generator=torch.Generator().manual_seed(2))
        try:
            snn = ttfs_core.convert(model, calib)
        except ttfs_core.ConversionError as exc:
            out[name] = {"refused": refusal(exc)}
        else:
            out[name] = {"smallest_window_tau": snn.smallest_window, "decision_time_tau": snn.decision_time,
                         "load_average": load_average()}
        print(f"  {name}: {out[name]}", flush=True)
    return out


def timm_table(rows: dict, scale: dict | None = None) -> list[str]:
    """The table of timm architectures (the `timm` section), for RESULTS.md and the README."""
    lines = ["| timm model | input | status | spiking layers | neurons | smallest window | decision time | "
             "conversion | run / ANN | float64 error |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        r = {**(scale or {}).get(name, {}), **r}  # the time scale measured apart (`timm_scale`), if any
        size = f"{r.get('size', 64)}×{r.get('size', 64)}"
        if r["status"] in ("refused", "error"):
            lines.append(f"| {name} | {size} | {r['status']}: {r['reason']} | | | | | | | |")
            continue
        if "float32" in r:  # float64 converts; the default float32 conversion does not
            lines.append(f"| {name} | {size} | {r['status']} in float64; float32 {r['float32']} | "
                         f"{r['spiking_layers']} | {r['neurons']:,} | | | | | {r['max_error_f64']:.1e} |")
            continue
        time_scale = (f"{r['smallest_window_tau']:.3g} τ_c | {r['decision_time_tau']:.3g} τ_c"
                      if "decision_time_tau" in r else "| ")  # rows recorded before the time scale was
        lines.append(f"| {name} | {size} | {r['status']} | {r['spiking_layers']} | {r['neurons']:,} | {time_scale} | "
                     f"{r['convert_s']:.1f} s | {r['ratio']:.1f}× | {r['max_error_f64']:.1e} |")
    return lines


# --- threads: the wait policy and thread count under a shared load ------------------------------------------------
THREAD_CONFIGS = {"OpenMP default wait, 2 threads": (None, 2),
                  "PASSIVE wait, 2 threads (the default now)": ("PASSIVE", 2), "PASSIVE wait, 1 thread": ("PASSIVE", 1)}


def _busy(n: int) -> list[subprocess.Popen]:
    """n processes that keep one core each busy (a second user's work), until killed."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def bench_threads(repeats: int = 3, images: int = 1000) -> dict:
    """`ttfs verify lenet5 --limit N` (conversion on 512 calibration images, then N test images simulated) in a
    fresh process, per wait policy and thread count, quiet and beside two busy processes that keep both cores
    busy: wall and CPU seconds (medians). "OpenMP default" is the environment without OMP_WAIT_POLICY (torch's
    libgomp spins idle threads for a while before sleeping); PASSIVE is what importing ttfs_core now sets."""
    out = {}
    for busy in (0, 2):
        for label, (policy, threads) in THREAD_CONFIGS.items():
            code = ("import os, sys\nimport ttfs_core\n"
                    + ("os.environ.pop('OMP_WAIT_POLICY', None)\n" if policy is None else "")
                    + f"import torch\ntorch.set_num_threads({threads})\n"
                    "from ttfs_core.__main__ import main\n"
                    f"sys.exit(main(['verify', 'lenet5', '--limit', '{images}', '-q']))")
            env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
            if policy is not None:
                env["OMP_WAIT_POLICY"] = policy
            walls, cpus, loads = [], [], []
            workers = _busy(busy)
            try:
                time.sleep(1.0 if busy else 0.0)
                for _ in range(repeats):
                    before = resource.getrusage(resource.RUSAGE_CHILDREN)
                    t = time.perf_counter()
                    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                       cwd=HERE.parent, timeout=1800)
                    walls.append(time.perf_counter() - t)
                    after = resource.getrusage(resource.RUSAGE_CHILDREN)
                    cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
                    loads.append(load_average())
                    if p.returncode != 0:
                        raise RuntimeError(f"ttfs verify failed ({label}): {p.stderr[-500:]}")
            finally:
                for w in workers:
                    w.kill()
                    w.wait()
            out[f"{label}, {'beside 2 busy processes' if busy else 'no added load'}"] = {
                "wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus), "images": images,
                "busy_processes": busy, "load_average": statistics.median(loads)}
    for label in THREAD_CONFIGS:
        quiet, loaded = (out[f"{label}, {w}"] for w in ("no added load", "beside 2 busy processes"))
        loaded["slowdown"] = loaded["wall_s"] / quiet["wall_s"]
    return out


class WorkCounter:
    """Counts, while active, the inputs each hidden layer's ReLU map runs on (`Layer.ann`) and the multiply-adds of
    every weighted sum (`sim.dynamics.weighted_sum`, wherever called): how many passes of the network over the
    calibration data a conversion makes, and how much weighted-sum work it does in all, in ANN passes."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.macs = {"ann": 0, "all": 0}
        self.inside_ann = False

    def __enter__(self) -> WorkCounter:
        from ttfs_core import records
        from ttfs_core.sim import certify, dynamics

        self.patched = [(records.Layer, "ann"), (dynamics, "weighted_sum"), (records, "weighted_sum"),
                        (certify, "weighted_sum")]
        self.saved = [getattr(obj, attr) for obj, attr in self.patched]
        ann, weighted_sum = records.Layer.ann, dynamics.weighted_sum

        def counted_ann(layer, acts):
            first = next(a for a in acts if a is not None)
            self.rows[layer.name] = self.rows.get(layer.name, 0) + first.shape[0]
            self.inside_ann = True
            try:
                return ann(layer, acts)
            finally:
                self.inside_ann = False

        def counted_sum(inputs, xs, ws, shape):
            macs = sum(x.shape[0] * math.prod(dynamics.part_shape(syn, shape)) * w[0].numel()
                       for syn, x, w in zip(inputs, xs, ws))
            self.macs["all"] += macs
            if self.inside_ann:
                self.macs["ann"] += macs
            return weighted_sum(inputs, xs, ws, shape)

        records.Layer.ann = counted_ann
        for obj, attr in self.patched[1:]:
            setattr(obj, attr, counted_sum)
        return self

    def __exit__(self, *exc) -> None:
        for (obj, attr), saved in zip(self.patched, self.saved):
            setattr(obj, attr, saved)

    def passes(self, snn, inputs: int) -> tuple[float, float]:
        """(largest number of times a hidden layer ran over the calibration inputs, all weighted-sum work in ANN
        passes over them), for a conversion to `snn` on `inputs` calibration inputs."""
        hidden = [self.rows.get(layer.name, 0) for layer in snn.layers]
        per_pass = self.macs["ann"] * inputs / max(sum(hidden) / len(hidden), 1)
        return max(hidden) / inputs, self.macs["all"] / per_pass


def bench_repvgg(repeats: int = 3) -> dict:
    """Conversion time (median of `repeats`) and ANN passes: timm's RepVGG-A0 in float64 on 64 inputs of 64×64
    (random weights and BatchNorm statistics), and the default float32 conversions of the `convert` and `branches`
    sections (VGG16-BN, ResNet-18, 512 inputs of 32×32). "ann_passes": the most times any hidden layer ran over the
    calibration inputs; "work_in_ann_passes": every weighted sum of the conversion (calibration, peak drive,
    certificate stages) in multiply-adds, over those of one pass."""
    cases = [("repvgg_a0_f64_64x64_64_inputs", timm_model("repvgg_a0", torch.float64),
              torch.rand(64, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))),
             ("vgg16_bn_f32_32x32_512_inputs", vgg16(), torch.randn(512, 3, 32, 32)),
             ("resnet18_f32_32x32_512_inputs", torchvision_model("resnet18", torch.float32),
              torch.rand(512, 3, 32, 32))]
    out = {}
    for case, model, calib in cases:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            ttfs_core.convert(model, calib)
            times.append(time.perf_counter() - t)
        with WorkCounter() as work:
            snn = ttfs_core.convert(model, calib)
        passes, total = work.passes(snn, calib.shape[0])
        out[case] = {"convert_s": statistics.median(times), "convert_min_s": min(times), "ann_passes": passes,
                     "work_in_ann_passes": total, "spiking_layers": len(snn.layers),
                     "load_average": load_average()}
    return out


def bench_verify(models: tuple[str, ...] = ("lenet5", "vgg_fashion"), repeats: int = 3) -> dict:
    """`ttfs verify` over a bundled model's whole 10,000-image test set on 1 process and on 2 (torchrun, gloo):
    images per second of the checking loop (the command's own "speed" line, conversion and start-up excluded),
    the whole command's wall time, and whether both reports are identical. Medians of `repeats` interleaved runs;
    on this 2-core machine two processes share the two cores that one process's threads use."""
    import re
    import tempfile

    out = {}
    for name in models:
        speeds: dict[int, list[float]] = {1: [], 2: []}
        walls: dict[int, list[float]] = {1: [], 2: []}
        same = True
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(repeats):
                reports = {}
                for procs in (1, 2):
                    report = Path(tmp) / f"{procs}.json"
                    cli = ["-m", "ttfs_core.cli", "verify", name, "-q", "--report", str(report)]
                    launch = [] if procs == 1 else ["-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc-per-node={procs}"]
                    t = time.perf_counter()
                    p = subprocess.run([sys.executable, *launch, *cli], capture_output=True, text=True,
                                       cwd=HERE.parent)
                    walls[procs].append(time.perf_counter() - t)
                    if p.returncode != 0:
                        raise RuntimeError(f"verify {name} on {procs} processes failed: {p.stderr[-500:]}")
                    speeds[procs].append(float(re.search(r"([\d,]+) images/s", p.stdout).group(1).replace(",", "")))
                    reports[procs] = json.loads(report.read_text())["report"]
                same &= reports[1] == reports[2]
        one, two = statistics.median(speeds[1]), statistics.median(speeds[2])
        out[name] = {"images_per_s_1": one, "images_per_s_2": two, "speedup": two / one,
                     "wall_s_1": statistics.median(walls[1]), "wall_s_2": statistics.median(walls[2]),
                     "same_report": same, "images": 10_000}
    return out


def bench_large_views() -> dict:
    """ResNet-50 at 224×224 in the explorer's views (`bench/views.py`, run on its own as `python -m bench.views`)."""
    from bench.views import bench_views

    return bench_views()


def bench_first_visit() -> dict:
    """A fresh explorer server's first visits in Chromium (`bench/first_visit.py`, run alone as
    `python -m bench.first_visit`)."""
    from bench.first_visit import measure

    return measure()


SECTIONS = {"core": bench_core, "convert": bench_convert, "memory": bench_memory, "stepped": bench_stepped,
            "app": bench_app, "live": bench_live, "paper": bench_paper, "branches": bench_branches,
            "architectures": bench_architectures, "verify": bench_verify, "timm": bench_timm,
            "repvgg": bench_repvgg, "views": bench_large_views,
            "threads": bench_threads, "timm_scale": bench_timm_scale,
            "first_visit": bench_first_visit}


def paper_table(rows: dict) -> list[str]:
    """The reproduction table (README): per zoo model, the `paper` section's α and B1 rows side by side with the
    zero accuracy drop the paper reports for MNIST and Fashion-MNIST."""
    lines = ["| model | dataset | ANN accuracy | SNN accuracy | drop (paper: 0 %) | agreement | early spikes | "
             "spikes per neuron, α · B1 | decision time |", "|---|---|---|---|---|---|---|---|---|"]
    for name in zoo.ARCHITECTURES:
        a, b = rows.get(f"{name} alpha"), rows.get(f"{name} b1")
        if a is None or b is None:
            continue
        drop = a["ann_accuracy_pct"] - a["snn_accuracy_pct"]
        agree = min(a["agreement_pct"], b["agreement_pct"])
        lines.append(
            f"| `{name}` | {a['dataset']} | {a['ann_accuracy_pct']:.2f} % | {a['snn_accuracy_pct']:.2f} % "
            f"(B1 {b['snn_accuracy_pct']:.2f} %) | {drop:.2f} % | {agree:.2f} % of {a['test_images']:,} | "
            f"{a['early_spikes'] + b['early_spikes']} | {a['spikes_per_neuron']:.3f} · {b['spikes_per_neuron']:.3f} | "
            f"{a['decision_time_tau']:.3g} τ_c |")
    return lines


def write_markdown(results: dict, path: Path) -> None:
    lines = ["# Benchmark results", "",
             f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
             f"measured {results.get('date', '?')}. Medians of interleaved repeats; ratios are SNN time / ANN time "
             "on the same batch in the same run. Regenerate with `python bench/run.py`.", ""]
    if "paper" in results["sections"]:
        lines += ["## The paper's table (`python bench/run.py paper`)", "", *paper_table(results["sections"]["paper"]),
                  ""]
    if results.get("peers", {}).get("rows"):
        from bench.peers import headline_table, table

        peers = results["peers"]
        lines += ["## vs rate coding (`python -m bench peers`)", "",
                  f"Measured {peers['date']} on {peers['machine']}; peers: "
                  + ", ".join(f"{k} {v or 'not installed'}" for k, v in peers["installed"].items()) + ".", "",
                  *headline_table(peers["rows"]), "", "Every row:", "", *table(peers["rows"]), ""]
    if "architectures" in results["sections"]:
        lines += ["## torchvision architectures (`python bench/run.py architectures`)", "",
                  *architecture_table(results["sections"]["architectures"]), ""]
    if "timm" in results["sections"]:
        rows = results["sections"]["timm"]
        loads = [r["load_average"] for r in rows.values() if "load_average" in r]
        lines += ["## timm architectures (`python bench/run.py timm`)", "",
                  "Random weights and BatchNorm statistics; conversion: the default float32 one on 16 inputs; "
                  "run / ANN: batch 16, side by side; float64 error: the largest |ANN − SNN| over the spiking "
                  "layers and the logits, relative; smallest window and decision time of the float32 conversion "
                  "(`python bench/run.py timm_scale`, where recorded apart). "
                  + (f"Load average {min(loads):.1f}–{max(loads):.1f} during the run." if loads else ""), "",
                  *timm_table(rows, results["sections"].get("timm_scale")), ""]
    for section, rows in results["sections"].items():
        if section in ("architectures", "timm", "timm_scale"):
            continue
        keys = list(dict.fromkeys(k for vals in rows.values() for k in vals))  # every row's columns, in order
        lines += [f"## {section}", "", "| case | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for case, vals in rows.items():
            cells = [(f"{v:.3g}" if isinstance(v, float) else str(v)) if k in vals else ""
                     for k, v in ((k, vals.get(k)) for k in keys)]
            lines.append(f"| {case} | " + " | ".join(cells) + " |")
        lines.append("")
    path.write_text("\n".join(lines))


def main(argv: list[str]) -> None:
    names = argv or list(SECTIONS)
    path = HERE / "results.json"
    measured = {}
    for name in names:
        print(f"== {name}", flush=True)
        measured[name] = SECTIONS[name]()
        for case, vals in measured[name].items():
            print(f"  {case}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in vals.items()), flush=True)
    # read the file only now: a section another run wrote meanwhile is kept
    results = json.loads(path.read_text()) if path.exists() else {"sections": {}}
    results["sections"].update(measured)
    results["date"] = time.strftime("%Y-%m-%d")
    results["max_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    path.write_text(json.dumps(results, indent=1))
    write_markdown(results, HERE / "RESULTS.md")


if __name__ == "__main__":
    main(sys.argv[1:])
