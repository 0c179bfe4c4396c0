"""How long the explorer takes to redraw after a widget change on the bundled models (server side).

Each case opens a page with Streamlit's AppTest, runs it once to warm the caches, then times reruns after one
widget change; what is timed is the whole script run (cached core calls, figure building, serialisation),
not the browser's drawing. For the benchmark (`bench/`), not a timed test:

    python -m ttfs_ui.bench            # prints one line per case: median and max in ms
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

from . import state

ROOT = Path(__file__).resolve().parent.parent
W = state.widget_key


def _timed(at, change: Callable) -> float:
    change(at)
    start = time.perf_counter()
    at.run()
    elapsed = time.perf_counter() - start
    if at.exception:
        raise RuntimeError(f"the page raised: {[e.message for e in at.exception]}")
    return elapsed


CASES: dict[str, tuple] = {  # name -> (page, the widget changes timed[, a change made first, not timed])
    # a cursor step, Play and hovering run in the browser (ttfs_ui.live): no rerun to time here; the browser test
    # measures them in the page
    "raster: change the feature-map layer": ("pages/1_Spike_raster.py",
                                             [lambda a, n=n: a.selectbox(key=W(state.LAYER)).set_value(n)
                                              for n in ("4", "8", "12", "0", "4")]),
    "raster: new test digit (simulated)": ("pages/1_Spike_raster.py",
                                           [lambda a, i=i: a.number_input(key=W(state.TEST_INDEX)).set_value(i)
                                            for i in (11, 12, 13, 14, 15)]),
    "raster: switch bundled model (converted before)": ("pages/1_Spike_raster.py",
                                                        [lambda a, m=m: a.selectbox(key=W(state.MODEL)).set_value(m)
                                                         for m in ("zoo:fc", "zoo:lenet5") * 3]),
    "traces: change k most active": ("pages/2_Membrane_traces.py",
                                     [lambda a, k=k: a.number_input(key=W(state.TRACE_K)).set_value(k)
                                      for k in (4, 5, 2, 1, 3)]),
    "ANN vs SNN: new test digit": ("pages/3_ANN_vs_SNN.py",
                                   [lambda a, i=i: a.number_input(key=W(state.TEST_INDEX)).set_value(i)
                                    for i in (21, 22, 23)]),
    "playground: change a weight": ("pages/5_Neuron_playground.py",
                                    [lambda a, w=w: a.number_input(key=W("ttfs_pg_w0")).set_value(w)
                                     for w in (0.1, 0.2, 0.3, 0.5, 0.4)]),
    "playground: a preset": ("pages/5_Neuron_playground.py",
                             [lambda a, p=p: a.button(key=f"pg_preset_{p}").click()
                              for p in ("early", "margin", "silent", "clock", "exact")]),
    "inspector: new test digit": ("pages/6_Conversion_inspector.py",
                                  [lambda a, i=i: a.number_input(key=W(state.TEST_INDEX)).set_value(i)
                                   for i in (41, 42, 43)]),
    "inspector, VGG-16 on Fashion-MNIST: new test image": (
        "pages/6_Conversion_inspector.py",
        [lambda a, i=i: a.number_input(key=W(state.TEST_INDEX)).set_value(i) for i in (44, 45, 46)],
        lambda a: a.selectbox(key=W(state.MODEL)).set_value("zoo:vgg_fashion")),
    "inspector: histogram of another layer": ("pages/6_Conversion_inspector.py",
                                              [lambda a, n=n: a.selectbox(key="inspector_hist_layer").set_value(n)
                                               for n in ("4", "8", "12", "0", "4")]),
    "inspector: a model that cannot be converted": ("pages/6_Conversion_inspector.py",
                                                    [lambda a, d=d: a.selectbox(key="inspector_demo").set_value(d)
                                                     for d in ("Sigmoid between two Linear layers",
                                                               "SiLU after a convolution", "(none)")]),
    "app: new test digit": ("app.py", [lambda a, i=i: a.number_input(key=W(state.TEST_INDEX)).set_value(i)
                                       for i in (31, 32, 33)]),
}


def redraw_times(cases: dict[str, tuple] = CASES) -> dict[str, dict[str, float]]:
    """Per case: median and max seconds of a rerun after the widget change (caches warm)."""
    from streamlit.testing.v1 import AppTest

    out = {}
    for name, (page, changes, *setup) in cases.items():
        at = AppTest.from_file(str(ROOT / page), default_timeout=300)
        at.run()  # convert, simulate, fill the caches
        for change in setup:  # e.g. another model, converted here
            change(at)
            at.run()
        at.run()
        if name.startswith("raster: switch"):  # convert the second model before timing the switches
            changes[0](at)
            at.run()
        times = [_timed(at, change) for change in changes]
        out[name] = {"median_s": statistics.median(times), "max_s": max(times), "runs": len(times)}
    return out


def live_payloads(models: tuple[str, ...] = ("lenet5", "fc", "resnet_mnist", "vgg_fashion")) -> dict:
    """Per bundled model: the size of the raster page's browser spec for its first test image (what a digit
    change ships, before Streamlit's framing) and the median time to build it on the server."""
    import json

    import numpy as np

    import ttfs_core
    from ttfs_core import data, zoo

    from . import live, timeline

    out = {}
    for name in models:
        model, card = zoo.load(name)
        imgs, _ = data.load_uint8(card.dataset, "train")
        snn = ttfs_core.convert(model, card.preprocess.batch_from_uint8(np.asarray(imgs[:512])),
                                input_range=card.input_range)
        test, _ = data.load_uint8(card.dataset, "test")
        res = snn.run(card.preprocess.batch_from_uint8(np.asarray(test[:1])))
        tl = timeline.timeline_of(snn)
        spikes = timeline.spikes_of(snn, res)
        times, size = [], 0
        for _ in range(5):
            start = time.perf_counter()
            size = len(json.dumps(live.spec(spikes, tl, tl.default_mode(), 1, tl.steps)))
            times.append(time.perf_counter() - start)
        out[name] = {"spec_mb": size / 1e6, "build_median_s": statistics.median(times),
                     "neurons": sum(s.neurons for s in spikes)}
    return out


def main() -> None:
    for name, t in redraw_times().items():
        print(f"{name:50s} median {1000 * t['median_s']:6.0f} ms   max {1000 * t['max_s']:6.0f} ms")


if __name__ == "__main__":
    main()
