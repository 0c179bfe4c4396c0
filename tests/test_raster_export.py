"""Slide export of the spike raster (issue 28, item 4) and what the spec carries for the teaching views, without a
browser: file names, the SVG document and the animation page that `frontend/timeline/export.js` writes (run under
node: the same functions the page calls), and the spec's export, compare, tooltip and cursor-time fields. The
browser test (tests/test_browser_raster.py) downloads the real files from Chromium and checks the PNG's maps are
painted."""

import base64
import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from ttfs_ui import figures, live, timeline

EXPORT_JS = Path(live.FRONTEND) / "export.js"
NODE = shutil.which("node")
SVG = "{http://www.w3.org/2000/svg}"
needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed: the browser test checks export.js")


def _node(script: str, payload) -> object:
    code = (f"const X = require({json.dumps(str(EXPORT_JS))});\n"
            f"const P = JSON.parse(require('fs').readFileSync(0));\n{script}")
    out = subprocess.run([NODE, "-e", code], input=json.dumps(payload), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def _tiny():
    """A 2-layer network's spikes on a 3-window timeline: input (1, 2, 2), conv (2, 2, 2)."""
    tl = timeline.Timeline(("input", "conv a"), (0.0, 1.0), (1.0, 2.0), steps_per_window=4)
    t0 = np.array([0.0, 0.25, 0.5, 1.0])
    inp = timeline.LayerSpikes("input", "input", "input", (1, 2, 2), t0, 1 - t0, np.zeros(4, bool), 1.0, 1.0)
    off = np.array([0.0, 0.5, 1.0, 2.0, np.inf, 1.5, 0.25, 2.0])
    conv = timeline.LayerSpikes("a", "conv a", "conv", (2, 2, 2), off, np.maximum(2 - off, 0), off == 2.0, 2.0, 2.0)
    return tl, [inp, conv]


def test_file_stems_name_the_model_and_the_input():
    assert live.export_stem("zoo:lenet5", 0) == "lenet5_img0_raster"
    assert live.export_stem("zoo:fashion_vgg16", 9999) == "fashion-vgg16_img9999_raster"
    assert live.export_stem("upload:" + "ab" * 32, "My Digit (3).png") == "upload-abababab_my-digit-3_raster"
    assert live.slug("../../etc/passwd") == "etc-passwd" and live.slug("***") == "x"
    assert "/" not in live.export_stem("zoo:../x", "a/b.png")


def test_the_spec_carries_what_the_teaching_views_and_exports_read():
    tl, spikes = _tiny()
    ann = [None, (np.arange(8.0), np.arange(8.0) + 0.5)]
    other = (np.zeros(tl.steps + 1, dtype=np.int64), np.minimum(np.arange(tl.steps + 1), 5))
    spec = live.spec(spikes, tl, timeline.STRETCHED, 1, tl.steps, ann=ann,
                     compare=live.Compare("α", "B1", other), export={"stem": "net_img3_raster", "title": "T"})
    assert spec["export"] == {"stem": "net_img3_raster", "title": "T"}
    assert spec["cursor_t"] == pytest.approx([tl.cursor_t(k) for k in range(tl.steps + 1)])
    assert spec["starts"] == [0.0, 1.0] and spec["windows"] == [1.0, 2.0] and spec["mode"] == timeline.STRETCHED
    assert spec["colours"] == [figures.layer_colour(0), figures.layer_colour(1)]
    assert spec["compare"]["this"] == "α" and spec["compare"]["other"] == "B1"
    assert tuple(spec["compare"]["count_spans"][1]) == timeline.count_span(other[1])
    values = spec["activations"][1]
    got = np.frombuffer(base64.b64decode(values["ann"]["bdata"]), dtype=np.float32)
    np.testing.assert_array_equal(got, np.arange(8.0))
    assert spec["activations"][0] is None
    # the dots' tooltip is the page's own (t in τ_c): Plotly's "x = …" template is gone, its label switched off
    dots = [t for t, n in zip(spec["raster"]["data"], spec["trace_layer"]) if n >= 0]
    assert dots and all(t["hoverinfo"] == "none" and "hovertemplate" not in t for t in dots)
    assert "x = " not in json.dumps(spec["raster"]["data"])
    # without the extras the spec is as before: no compare line, no tooltip values, a default name
    plain = live.spec(spikes, tl, timeline.STRETCHED, 1, tl.steps)
    assert "compare" not in plain and plain["activations"] is None and plain["export"]["stem"] == "raster"


def test_the_other_models_counts_come_from_its_own_timeline():
    tl, spikes = _tiny()
    from ttfs_core.neurons import ALPHA, B1

    c = live.compare_with(ALPHA, B1, spikes, tl)
    assert (c.this, c.other) == ("α", "B1")
    for n, s in enumerate(spikes):
        np.testing.assert_array_equal(c.counts[n], tl.fired_counts(n, s.offsets))
    assert c.counts[1][-1] == 7  # one neuron of the B1 stand-in never fires


@needs_node
def test_export_file_names():
    got = _node("process.stdout.write(JSON.stringify(P.map(([t, e]) => X.fileName('lenet5_img0_raster', t, e))));",
                [[2.4134, "png"], [0, "svg"], [29.999, "png"], [0.004321, "png"]])
    assert got == ["lenet5_img0_raster_t2.41.png", "lenet5_img0_raster_t0.00.svg", "lenet5_img0_raster_t30.00.png",
                   "lenet5_img0_raster_t4.32e-3.png"]
    assert not any("plot-image" in g for g in got)


@needs_node
def test_the_svg_document_parses_and_holds_title_time_counts_legend_and_maps():
    tl, spikes = _tiny()
    spec = live.spec(spikes, tl, timeline.STRETCHED, 1, 6, export={"stem": "s", "title": "LeNet-5 · image #0 & <co>"})
    raster = '<svg xmlns="http://www.w3.org/2000/svg" width="300" height="200"><rect width="10" height="10"/></svg>'
    maps = '<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="300" height="150"><g/></svg>'
    png = "data:image/png;base64," + base64.b64encode(b"\x89PNG fake").decode()
    script = """
const spec = P.spec, step = 6;
const head = X.headerLines(spec, step, ["Fired by the cursor: conv a 3/8", ""]);
process.stdout.write(JSON.stringify(X.svgDocument({
  width: 332, title: head.title, lines: head.lines, legend: X.legendItems(spec, true),
  raster: { x: 16, y: 0, w: 300, h: 200, markup: P.raster }, maps: { x: 16, y: 200, w: 300, h: 150, markup: P.maps },
  cells: [{ x: 40, y: 230, w: 80, h: 80, href: P.png }, { x: 140, y: 230, w: 80, h: 80, href: P.png }],
})));
"""
    doc = _node(script, {"spec": spec, "raster": raster, "maps": maps, "png": png})
    root = ET.fromstring(doc.encode())
    assert root.tag == f"{SVG}svg"
    texts = [e.text for e in root.iter(f"{SVG}text")]
    assert texts[0] == "LeNet-5 · image #0 & <co>"  # escaped in the file, read back as written
    assert f"Cursor: {tl.describe_step(6)}" in texts and "Fired by the cursor: conv a 3/8" in texts
    assert {"input", "conv a", "map cell: not fired by the cursor", "after the cursor: hidden"} <= set(texts)
    nested = [e for e in root if e.tag == f"{SVG}svg"]
    assert len(nested) == 2 and all(e.get("x") == "16" for e in nested)  # the figures' own SVGs, placed
    images = list(root.iter(f"{SVG}image"))
    assert len(images) == 2 and all(i.get("href") == png for i in images)
    assert float(root.get("height")) > 350  # text above, the legend below the maps


@needs_node
def test_the_animation_is_one_self_contained_page():
    data = {"title": "net </script><script>alert(1)</script>", "steps": 3, "width": 10,
            "raster": {"href": "data:image/png;base64,AA==", "w": 10, "h": 10, "plot": [0, 0, 10, 10],
                       "cursor": [0, 3, 6, 9]},
            "maps": {"href": "data:image/png;base64,AA==", "w": 10, "h": 10},
            "panels": [{"x": 0, "y": 0, "w": 2, "h": 2, "cols": 2, "rows": 2,
                        "kcell": base64.b64encode(np.array([0, 1, 32767, -1], np.int16).tobytes()).decode(),
                        "colours": "data:image/png;base64,AA==", "grey": [223, 228, 236]}],
            "labels": ["a", "b", "c", "d"], "counts": ["0", "1", "2", "3"]}
    html = _node("process.stdout.write(JSON.stringify(X.animationHtml(P)));", data)
    assert html.startswith("<!doctype html>") and "<script src" not in html and "http" not in html
    assert html.count("</script>") == 2  # the page's data cannot close its script element
    blob = html.split('<script id="data" type="application/json">', 1)[1].split("</script>", 1)[0]
    assert json.loads(blob) == data
