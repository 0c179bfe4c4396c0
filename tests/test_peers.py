"""The comparison with rate-coded converters: the page draws the shipped results with no peer installed (AppTest),
says how to install SpikingJelly for the raster, survives a missing results file; the figure and table builders;
the single-input raster on a stand-in rate-coded network; and `python -m bench peers` without the peers (our rows
alone, and what to install)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest
from torch import nn

from ttfs_ui import peers as pr

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "pages" / "7_vs_rate_coding.py")


def _rows() -> list[dict]:
    """A synthetic results file: a rate-coded method that needs T = 128 to agree everywhere, and ours."""
    rows = [{"model": "m", "method": "ANN", "steps": None, "metric": "ANN accuracy", "value": 98.0}]
    for T, agree in ((8, 80.0), (32, 95.0), (128, 100.0), (512, 100.0)):
        for metric, v in (("accuracy", agree - 2), ("agreement", agree), ("spikes per neuron", T / 10),
                          ("time / ANN", 3.0 * T)):
            rows.append({"model": "m", "method": "spikingjelly max", "steps": T, "metric": metric, "value": v})
    for method, steps, spikes in (("ours α exact", None, 1.0), ("ours B1 exact", None, 0.3),
                                  ("ours α stepped", 32, 1.0), ("ours α stepped", 128, 1.0)):
        for metric, v in (("accuracy", 98.0), ("agreement", 100.0), ("spikes per neuron", spikes),
                          ("time / ANN", 5.0 if steps is None else steps / 10)):
            rows.append({"model": "m", "method": method, "steps": steps, "metric": metric, "value": v})
    return rows


def test_curves_table_and_headline_from_rows():
    rows = _rows()
    fig = pr.curves(rows, "m", "time / ANN", "agreement")
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["spikingjelly max"].y) == [80.0, 95.0, 100.0, 100.0]
    assert list(by_name["spikingjelly max"].x) == [24.0, 96.0, 384.0, 1536.0]
    assert by_name["ours α exact"].marker.symbol == "star" and list(by_name["ours α exact"].x) == [5.0]
    assert list(by_name["ours α stepped"].x) == [3.2, 12.8]  # one series through the stepped points
    steps = pr.curves(rows, "m", "steps", "agreement")  # ours exact has no steps: a line across the axis
    assert "ours α exact" not in {t.name for t in steps.data}
    assert any("ours α exact" in a.text for a in steps.layout.annotations)
    table = pr.summary_rows(rows, "m")
    assert {r["method"] for r in table} == {"spikingjelly max", "ours α exact", "ours B1 exact", "ours α stepped"}
    assert [r["T (steps)"] for r in table if r["method"] == "ours α exact"] == ["event-driven"]
    line = pr.headline(rows, "m")
    assert "spikingjelly max first agrees on every image at T = 128 (384× the ANN's time, 12.8 spikes" in line
    assert "ours (exact, α): 100.00 % with one spike per neuron at 5.0×" in line


@pytest.mark.parametrize("content", [None, "not json", json.dumps({"sections": {}}), json.dumps({"peers": []}),
                                     json.dumps({"peers": {"rows": [{"model": "m"}]}})])
def test_load_refuses_missing_or_broken_results(tmp_path, content):
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content)
    assert pr.load(path) is None


def test_the_shipped_results_have_every_bundled_model():
    from ttfs_core import zoo

    results = pr.load()
    assert results is not None and set(pr.models(results["rows"])) == set(zoo.ARCHITECTURES)
    methods = {r["method"] for r in results["rows"]}
    assert {"ours α exact", "ours B1 exact", "ours α stepped", "ours B1 stepped", "spikingjelly max",
            "spikingjelly 99.9%", "sinabs 99.9%"} <= methods
    for r in results["rows"]:
        assert {"name", "model", "value", "unit", "notes"} <= set(r)


@pytest.mark.integration
def test_page_without_peers(monkeypatch):
    monkeypatch.setattr(pr, "spikingjelly_version", lambda: None)  # CI has no peer; a dev machine may
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception, [e.message for e in at.exception]
    assert [t.value for t in at.title] == ["vs rate coding"]
    charts = {el.proto.id.rsplit("-", 1)[-1] for el in at.get("plotly_chart")}
    assert "peers_curves" in charts and "peers_raster" not in charts
    assert any("SpikingJelly is not installed" in i.value and "pip install" in i.value for i in at.info)
    assert at.session_state["peers_model"] == "lenet5"  # the session's model
    at.radio(key="peers_x").set_value("spikes per neuron").run()
    at.radio(key="peers_y").set_value("accuracy").run()
    at.selectbox(key="peers_model").set_value("vgg_fashion").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert set(table["method"]) >= {"ours α exact", "spikingjelly max"}


@pytest.mark.integration
def test_page_without_results(monkeypatch, tmp_path):
    monkeypatch.setattr(pr, "RESULTS", tmp_path / "missing.json")
    monkeypatch.setattr(pr, "spikingjelly_version", lambda: None)
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception
    assert any("python -m bench peers" in w.value for w in at.warning)


class _Stepper(nn.Module):
    """A stand-in rate-coded layer: integrate the input, spike at 1, subtract (a plain IF neuron)."""

    def __init__(self):
        super().__init__()
        self.v = None

    def forward(self, x):
        self.v = x if self.v is None else self.v + x
        spikes = (self.v >= 1).float()
        self.v = self.v - spikes
        return spikes


def test_first_layer_spikes_and_the_raster_pair():
    node = _Stepper()
    rc = pr.RateCoded("stand-in", nn.Sequential(nn.Flatten(), node), [node], lambda: setattr(node, "v", None))
    x = torch.tensor([[0.5, 0.25, 0.0, 1.0]])
    t, n, neurons = pr.first_layer_spikes(rc, x, 8)
    assert neurons == 4
    # rates: 0.5 spikes at steps 2, 4, 6, 8; 0.25 at 4, 8; 0 never; 1 every step
    assert sorted(zip(n.tolist(), t.tolist())) == sorted(
        [(0, s) for s in (2, 4, 6, 8)] + [(1, 4), (1, 8)] + [(3, s) for s in range(1, 9)])
    assert pr.spikes_per_neuron((t, n, neurons)) == 14 / 4
    offsets = torch.tensor([[0.5, float("inf"), 1.0, 0.0]])
    fig = pr.raster_pair((t, n, neurons), 8, offsets, 2.0, "layer 0")
    assert len(fig.data[0].x) == 14 and list(fig.data[1].x) == [0.5, 1.0, 0.0]  # B1's silent neuron: no dot
    assert "14 spikes" in fig.layout.annotations[0].text and "3 spikes" in fig.layout.annotations[1].text


def test_bench_peers_without_the_peers_runs_our_rows(tmp_path, capsys, monkeypatch):
    from bench import peers as bench_peers

    monkeypatch.setattr(bench_peers, "peers", lambda: {"spikingjelly": None, "sinabs": None})
    assert bench_peers.main(["--models", "fc", "--images", "20", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "not installed: spikingjelly, sinabs" in out and "pip install --no-deps spikingjelly==2.0.0" in out
    rows = json.loads((tmp_path / "results.json").read_text())["peers"]["rows"]
    assert {r["method"] for r in rows} == {"ANN", "ours α exact", "ours B1 exact", "ours α stepped",
                                           "ours B1 stepped"}
    exact = {r["metric"]: r["value"] for r in rows if r["method"] == "ours α exact"}
    assert exact["agreement"] == 100.0 and exact["spikes per neuron"] == 1.0
    b1 = {r["metric"]: r["value"] for r in rows if r["method"] == "ours B1 exact"}
    assert b1["agreement"] == 100.0 and 0 < b1["spikes per neuron"] < 1
    assert "vs rate coding" in (tmp_path / "RESULTS.md").read_text()
    assert np.isfinite([r["value"] for r in rows]).all()
