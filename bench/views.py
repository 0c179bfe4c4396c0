"""The explorer's views on a large network: torchvision's ResNet-50 (num_classes=1000, random BatchNorm statistics)
at 224×224, 9.6 million neurons in 49 spiking layers.

    python bench/run.py views      # registered as the "views" section; rows go to bench/results.json, RESULTS.md
    python -m bench.views          # the same rows, printed

Measures, on this machine:
- conversion (default settings, float32, 8 random calibration inputs) in a fresh process: wall time and that
  process's peak resident memory (ru_maxrss of a fresh interpreter, which starts at zero);
- the exact simulation of one input;
- the raster page's browser spec (`ttfs_ui.live.spec`) per input: its size in MB for every layer mapped with the
  page's default view (a large layer: its 16 most active channels), the default layer's and the largest;
- each page's server-side rerun (the functions the page calls on that rerun, figures serialised as Streamlit sends
  them, cached results unpickled as `st.cache_data` returns them), as medians of interleaved repeats: the raster on
  a new input (its counts and heat strips computed) and on another mapped layer or channel (they are kept); the
  membrane page's 3 most active neurons of conv1 (802,816 neurons) and one picked from a map; the ANN-vs-SNN
  page (8 layers, stratified samples of at most 20,000 neurons each, every error computed on all neurons);
- the bundled models' spec sizes (`ttfs_ui.bench.live_payloads`), which these views leave unchanged.

Each row is {"value", "unit", "note"}; the note holds the load average when it was measured (a 2-core machine
shared with other work: timings move with it).
"""

from __future__ import annotations

import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

SIZE = 224
CALIBRATION = 8


def resnet50() -> torch.nn.Module:
    """torchvision's ResNet-50 for 1000 classes with random BatchNorm statistics (positive scales, as the
    `architectures` section builds its families), float32, seeded."""
    import torchvision

    from tests.nets import randomise_bn

    torch.manual_seed(0)
    return randomise_bn(torchvision.models.resnet50(num_classes=1000), negative=False).eval()


_CHILD = """
import json, resource, sys, time, torch
sys.path.insert(0, {root!r})
from bench.views import resnet50, CALIBRATION, SIZE
import ttfs_core
model = resnet50()
calib = torch.rand(CALIBRATION, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
t = time.perf_counter()
snn = ttfs_core.convert(model, calib)
seconds = time.perf_counter() - t
ttfs_core.save(snn, {path!r})
print(json.dumps({{"convert_s": seconds, "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}}))
"""


def convert_in_child(path: Path) -> dict:
    """Convert ResNet-50 in a fresh interpreter and save it to `path`: {"convert_s", "peak_gib"} (the child's
    ru_maxrss: model, calibration and conversion, nothing of this process)."""
    code = _CHILD.format(root=str(HERE.parent), path=str(path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def medians(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each callable, run interleaved after one warm-up round."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


class Cached:
    """A result as `st.cache_data` hands it out: unpickled afresh at every access."""

    def __init__(self, value) -> None:
        self.blob = pickle.dumps(value)

    def get(self):
        return pickle.loads(self.blob)


def raster_rerun(snn, result: Cached, n: int, *, prepared=None, view=("top", 16)) -> tuple[dict, object]:
    """What pages/1_Spike_raster.py computes when its spec is not memoised: the spikes, the prepared counts and heat
    strips (unless kept), the mapped channels and the spec, serialised as the component sends it."""
    from ttfs_ui import live, timeline

    res = result.get()
    tl = timeline.timeline_of(snn)
    mode = tl.default_mode()
    if prepared is None:  # a new input: every layer's spikes, counts and heat strips
        spikes = timeline.spikes_of(snn, res)
        prepared = live.prepare(spikes, tl, mode)
    else:  # kept: the maps' layers and the dots only, as the page does
        spikes = timeline.spikes_of(snn, res, only={0, n} | (set(range(len(snn.layers) + 1)) -
                                                         set(prepared.densities)))
    channels = None
    layer = snn.layers[n - 1]
    if layer.neurons > timeline.DENSITY_NEURONS and timeline.has_maps(layer.shape):
        channels = timeline.top_channels(spikes[n], view[1]) if view[0] == "top" else [view[1]]
    colours = timeline.input_colours(spikes[0], snn.input_range)
    spec = live.spec(spikes, tl, mode, n, tl.steps, channels=channels, colours=colours, prepared=prepared)
    json.dumps(spec)  # what the component ships
    return spec, prepared


def membrane_rerun(snn, x, result: Cached, name: str, pick: str = "k most active", k: int = 3) -> None:
    """What pages/2_Membrane_traces.py computes: one layer's spikes, the neurons (k most active, or one channel's
    picker), their exact traces (each through the cached simulation) and the figure."""
    from ttfs_ui import figures, tables, timeline

    res = result.get()
    layer = timeline.layer_spikes(snn, res, name)
    if pick == "k most active":
        neurons = timeline.most_active(layer.activations, k, distinct=True)
    else:
        channel = timeline.top_channels(layer, 1)[0]
        figures.neuron_picker(layer, channels=[channel]).to_json()
        per = timeline.channels_of(layer.shape)[1]
        neurons = [channel * per + int(np.argmax(layer.activations[channel * per: (channel + 1) * per]))]
    traces = [snn.trace(x, name, timeline.multi_index(layer.shape, i), result=result.get()) for i in neurons]
    labels = timeline.unravel(layer.shape, neurons)
    figures.membrane(traces, labels).to_json()
    tables.trace_rows(traces, labels)


def compare_rerun(snn, result: Cached, comparisons: Cached) -> dict:
    """What pages/3_ANN_vs_SNN.py computes for this input: the comparison (cached), the default 8 layers' samples,
    the scatter and the binned histogram, the error and certificate tables."""
    from ttfs_ui import figures, tables, timeline

    comps = comparisons.get()
    res = result.get()
    shown = tables.default_layers([float(c.max_abs_error) for c in comps])
    names, ann, out, errors = tables.comparison_data(snn, comps, shown)
    offsets = [res.layers[i].offsets[0].numpy().ravel() for i in shown]
    samples = [timeline.sample_neurons(a, s, early=off < 0, silent=~np.isfinite(off))
               for a, s, off in zip(ann, out, offsets)]
    scatter = figures.ann_vs_snn(names, ann, out, samples=samples).to_json()
    histogram = figures.error_histogram(names, errors, binned=True).to_json()
    tables.error_rows(snn, comps)
    tables.certificate_rows(snn, res)
    return {"scatter_mb": len(scatter) / 1e6, "histogram_mb": len(histogram) / 1e6,
            "shown": [s.describe() for s in samples]}


def row(value: float, unit: str, note: str = "") -> dict:
    return {"value": float(value), "unit": unit, "note": note}


def bench_views(repeats: int = 5) -> dict:
    import ttfs_core
    from ttfs_ui import live, timeline
    from ttfs_ui.bench import live_payloads

    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet50.safetensors"
        before = load()
        child = convert_in_child(path)
        out["resnet50_224 conversion (8 calibration inputs, fresh process)"] = row(
            child["convert_s"], "s", f"load {before} → {load()}")
        out["resnet50_224 conversion peak memory (ru_maxrss of that process)"] = row(child["peak_gib"], "GiB")
        snn = ttfs_core.load(path)
    model = resnet50()
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    t = time.perf_counter()
    res = snn.run(x)
    out["resnet50_224 exact simulation of one input"] = row(time.perf_counter() - t, "s", f"load {load()}")
    with torch.no_grad():
        comps = ttfs_core.compare(model, snn, x, res)
    result, comparisons = Cached(res), Cached(comps)
    neurons = sum(la.neurons for la in snn.layers)
    out["resnet50_224 neurons"] = row(neurons, "neurons", f"{len(snn.layers)} spiking layers, largest "
                                                          f"{max(la.neurons for la in snn.layers):,}")

    # the raster page's spec for every mapped layer (default view), sizes in MB
    spec, prepared = raster_rerun(snn, result, 1)
    sizes = [live.size(spec)]
    for n in range(2, len(snn.layers) + 1):
        sizes.append(live.size(raster_rerun(snn, result, n, prepared=prepared)[0]))
    largest = int(np.argmax(sizes)) + 1
    out["resnet50_224 raster spec, default layer (conv1, 16 most active of 64 channels)"] = row(
        sizes[0] / 1e6, "MB", f"{len(spec['density'])} heat strips, {spec['neurons'][1]:,} neurons in conv1")
    out["resnet50_224 raster spec, largest over the 49 layers mapped"] = row(
        max(sizes) / 1e6, "MB", f"layer {snn.layers[largest - 1].name}; mean {np.mean(sizes) / 1e6:.2f} MB")
    one, _ = raster_rerun(snn, result, 1, prepared=prepared, view=("channel", 0))
    out["resnet50_224 raster spec, conv1 one channel"] = row(live.size(one) / 1e6, "MB")

    # page reruns, server side
    mid = snn.layers[len(snn.layers) // 2].name
    times = medians({
        "raster: new input": lambda: raster_rerun(snn, result, 1),
        "raster: another layer or channel": lambda: raster_rerun(snn, result, 10, prepared=prepared),
        "membrane: 3 most active of conv1": lambda: membrane_rerun(snn, x, result, snn.layers[0].name),
        "membrane: picked on a map of " + mid: lambda: membrane_rerun(snn, x, result, mid, pick="map"),
        "ANN vs SNN: 8 layers sampled": lambda: compare_rerun(snn, result, comparisons),
    }, repeats)
    note = f"median of {repeats}; load {load()}"
    for name, seconds in times.items():
        out[f"resnet50_224 page rerun, {name}"] = row(seconds, "s", note)
    cmp = compare_rerun(snn, result, comparisons)
    out["resnet50_224 ANN-vs-SNN scatter figure"] = row(cmp["scatter_mb"], "MB", "; ".join(cmp["shown"][:2]) + " …")
    tl = timeline.timeline_of(snn)
    out["resnet50_224 heat strips"] = row(len(prepared.densities), "layers",
                                          f"of {len(snn.layers) + 1} windows; {tl.steps} cursor steps")

    # the bundled models: unchanged (one dot per spike)
    for name, r in live_payloads().items():
        out[f"{name} raster spec (bundled, dots)"] = row(r["spec_mb"], "MB", f"{r['neurons']:,} neurons; built in "
                                                                             f"{1000 * r['build_median_s']:.0f} ms")
    return out


def main() -> None:
    for case, r in bench_views().items():
        print(f"{case:80s} {r['value']:10.4g} {r['unit']:8s} {r['note']}")


if __name__ == "__main__":
    main()
