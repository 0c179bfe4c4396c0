"""Slide export: every Plotly chart of pages 2–5 and 7 downloads (the mode bar's camera button) as PNG or SVG under a
meaningful file name, with its title, counts and cursor in the figure itself, and never offers Plotly's cloud."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
from streamlit.testing.v1 import AppTest

from ttfs_ui import figures, state

from .helpers import COMPARE, ROBUSTNESS, ROOT, TRACES, run_page

PLAYGROUND = str(ROOT / "pages" / "5_Neuron_playground.py")
PEERS = str(ROOT / "pages" / "7_vs_rate_coding.py")
GENERIC = re.compile(r"^(plot-image|newplot|figure)$")


def _charts(at: AppTest) -> dict[str, tuple[dict, dict]]:
    """key -> (config, spec) of every Plotly chart on the page."""
    return {el.proto.id.rsplit("-", 1)[-1]: (json.loads(el.proto.config or "{}"), json.loads(el.proto.spec))
            for el in at.get("plotly_chart")}


def _title(spec: dict) -> str:
    """The figure's title and its line of detail (a subtitle), as text."""
    title = spec["layout"].get("title") or {}
    return f"{title.get('text', '')} {(title.get('subtitle') or {}).get('text', '')}"


def _check(key: str, config: dict, spec: dict, fmt: str = "png") -> str:
    assert config.get("displaylogo") is False, key
    assert {"sendDataToCloud", "editInChartStudio"} <= set(config.get("modeBarButtonsToRemove", ())), key
    assert config.get("showSendToCloud") is False, key
    image = config.get("toImageButtonOptions", {})
    assert image.get("format") == fmt, key
    name = image.get("filename", "")
    assert name and not GENERIC.match(name) and re.fullmatch(r"[A-Za-z0-9._+-]+", name), (key, name)
    title = _title(spec)
    assert len(re.sub("<[^>]+>", "", title)) > 20, (key, title)  # the title is in the image itself
    return name


# --- pure ---------------------------------------------------------------------------------------------------------
def test_export_names_are_file_safe_and_say_what_they_show():
    assert figures.export_name("lenet5", "img0", "membrane", "conv 2", "n17") == "lenet5_img0_membrane_conv-2_n17"
    assert figures.export_name("a/b\\c", None, "", "(1, 2)") == "a-b-c_1-2"
    config = figures.export_config("lenet5_img0_membrane_conv-2_n17", "svg")
    assert config["toImageButtonOptions"] == {"format": "svg", "scale": 1,
                                              "filename": "lenet5_img0_membrane_conv-2_n17"}
    assert figures.export_config("x y", "gif")["toImageButtonOptions"]["format"] == "png"  # unknown: PNG
    assert figures.export_config("x")["toImageButtonOptions"]["scale"] == 2  # crisp on a projector


def test_slide_stem_names_model_input_and_view():
    zoo = SimpleNamespace(key="zoo:lenet5", title="LeNet-5", dataset="mnist")
    cur = SimpleNamespace(entry=zoo, dataset="mnist", image_key="mnist:0")
    assert figures.slide_stem(cur, "membrane", "conv 2", "n17", "t40") == "lenet5_img0_membrane_conv-2_n17_t40"
    other = SimpleNamespace(entry=zoo, dataset="fashion", image_key="fashion:3")
    assert figures.slide_stem(other, "ann-vs-snn") == "lenet5_fashion-img3_ann-vs-snn"
    up = SimpleNamespace(key="upload:ab12", title="my net.pt2 + data.npz (uploaded)", dataset="mnist")
    drawn = SimpleNamespace(entry=up, dataset="mnist", image_key="upload:1a2b3c4d5e6f:0")
    assert figures.slide_stem(drawn, "errors") == "my-net_upload-1a2b3c4d_errors"


def test_slide_title_goes_into_the_figure_and_keeps_the_plot_size():
    import plotly.graph_objects as go

    fig = go.Figure(layout={"height": 300, "margin": {"t": 20}})
    figures.slide_title(fig, "Errors", "LeNet-5 · 6,508 neurons")
    assert "Errors" in fig.layout.title.text and "6,508 neurons" in fig.layout.title.subtitle.text
    assert fig.layout.height - fig.layout.margin.t == 300 - 20  # the plot area is as tall as before


# --- every page -------------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_every_chart_of_the_membrane_page_exports_for_slides():
    at = run_page(TRACES, **{state.CURSOR: 40})
    charts = _charts(at)
    assert set(charts) == {"membrane"}
    name = _check("membrane", *charts["membrane"])
    # model, input, view, layer, neurons and the cursor instant
    assert re.fullmatch(r"lenet5_img0_membrane_conv-0_n[0-9+]+_t[0-9.]+", name), name
    title = _title(charts["membrane"][1])
    assert "cursor t =" in title and "fired" in title and "MNIST test image #0" in title
    assert any(t.get("showlegend", True) and t.get("name") for t in charts["membrane"][1]["data"])  # a legend


@pytest.mark.integration
def test_every_chart_of_the_ann_vs_snn_page_exports_for_slides():
    at = run_page(COMPARE, **{state.MARGIN: -0.7})  # early spikes on image 0: the early-spike chart is drawn too
    charts = _charts(at)
    assert {"scatter", "errors", "early_here"} <= set(charts)
    names = {key: _check(key, *value) for key, value in charts.items()}
    assert names["scatter"] == "lenet5_img0_ann-vs-snn" and names["early_here"] == "lenet5_img0_early-spikes"
    assert "6,508 neurons" in _title(charts["scatter"][1])
    assert "Early spikes on this input" in _title(charts["early_here"][1])


@pytest.mark.integration
def test_every_chart_of_the_robustness_page_exports_for_slides():
    at = run_page(ROBUSTNESS, **{state.ROBUST_IMAGES: 100})
    charts = _charts(at)
    assert {"sweep_time_bits", "sweep_jitter", "sweep_weight_bits", "sweep_margin"} <= set(charts)
    names = {_check(key, *value) for key, value in charts.items()}
    assert len(names) == len(charts)  # one file name per chart
    assert all(n.startswith("lenet5_robustness_") and n.endswith("_n100") for n in names)


@pytest.mark.integration
def test_the_playground_and_rate_coding_charts_export_for_slides():
    at = run_page(PLAYGROUND)
    [(key, (config, spec))] = _charts(at).items()
    assert _check(key, config, spec) == "playground_custom_alpha_3-inputs"
    assert "ReLU" in _title(spec)
    at = run_page(PEERS)
    charts = _charts(at)
    assert "peers_curves" in charts
    assert _check("peers_curves", *charts["peers_curves"]).startswith("lenet5_vs-rate-coding_")


@pytest.mark.integration
def test_the_format_chosen_on_one_page_is_kept_on_the_next():
    at = run_page(TRACES)
    at.sidebar.radio(key=figures.FORMAT_KEY).set_value("svg").run()
    _check("membrane", *_charts(at)["membrane"], fmt="svg")
    at.switch_page("3_ANN_vs_SNN.py").run()  # relative to the page it was opened at
    assert not at.exception
    for key, value in _charts(at).items():
        _check(key, *value, fmt="svg")


def _check_config(key: str, config: dict) -> str:
    """The download part of `_check` (the inspector's and the input's charts carry their own headings)."""
    assert config.get("displaylogo") is False and config.get("showSendToCloud") is False, key
    assert {"sendDataToCloud", "editInChartStudio"} <= set(config.get("modeBarButtonsToRemove", ())), key
    name = config.get("toImageButtonOptions", {}).get("filename", "")
    assert name and not GENERIC.match(name) and re.fullmatch(r"[A-Za-z0-9._+-]+", name), (key, name)
    return name


def test_the_main_page_and_the_inspector_charts_export_for_slides():
    """The main page's input and logits, the inspector's graph, scales, activations and certificate, and the
    membrane page's neuron picker (drawn by controls) download under names saying model, input and view, with no
    cloud button; the logits carry their title."""
    from .helpers import APP

    at = run_page(APP)
    charts = _charts(at)
    assert {"input_image", "logits"} <= set(charts)
    for key, (config, _) in charts.items():
        assert _check_config(key, config).startswith("lenet5_img0_"), key
    _check("logits", *charts["logits"])
    at = run_page(str(ROOT / "pages" / "6_Conversion_inspector.py"))
    charts = _charts(at)
    assert {"inspector_graph", "inspector_scales", "inspector_certificate"} <= set(charts), set(charts)
    for key, (config, _) in charts.items():
        assert _check_config(key, config).startswith("lenet5_img0_inspector_"), key
    at = run_page(TRACES, **{state.TRACE_PICK: "from the feature map"})
    pickers = {k: c for k, (c, _) in _charts(at).items() if k != "membrane"}
    assert pickers and all(_check_config(k, c).startswith("neuron-picker_") for k, c in pickers.items()), pickers
