"""The conversion inspector: provenance recorded by the lowering (`Layer.absorbed`), saved and loaded, the node at
fault in a model that cannot be converted, and the page (AppTest) with its first parting layer and trace button."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from streamlit.testing.v1 import AppTest
from torch import nn

import ttfs_core
from ttfs_core import ConversionError, data, zoo
from ttfs_core.neurons import ALPHA, SUM
from ttfs_core.persist import NetworkFileError, load_network, save_network
from ttfs_ui import controls, inspector, state

from .helpers import APP, ROOT, first_early_layer
from .helpers import run_page as run

PAGE = str(ROOT / "pages" / "6_Conversion_inspector.py")
PAGE_REL = "pages/6_Conversion_inspector.py"


def frame(at: AppTest, column: str):
    """The (first) dataframe on the page with this column (AppTest does not expose dataframe keys)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def _names(layer) -> list[str]:
    return [name for name, _, _ in layer.absorbed]


def _small(bn_after: bool = False, negative: int = 0, pool_first: bool = False) -> nn.Module:
    torch.manual_seed(0)
    if pool_first:
        mods = [nn.Conv2d(1, 4, 3), nn.MaxPool2d(2), nn.BatchNorm2d(4), nn.ReLU()]
    elif bn_after:
        mods = [nn.Conv2d(1, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.MaxPool2d(2)]
    else:
        mods = [nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2)]
    model = nn.Sequential(*mods, nn.Flatten(), nn.Linear(4 * 13 * 13, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    bn = next(m for m in model if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight[:negative] *= -1
    return model


# --- provenance in the core -------------------------------------------------------------------------------
def test_absorbed_is_exactly_the_modules_of_each_layer():
    """Conv → BN → ReLU → MaxPool → Flatten → Linear → ReLU → Linear: the oracle lists by module name."""
    snn = ttfs_core.convert(_small(), torch.rand(16, 1, 28, 28))
    assert [_names(la) for la in snn.all_layers] == [["0", "1", "2"], ["3", "4", "5", "6"], ["7"]]
    kinds = [k for la in snn.all_layers for _, k, _ in la.absorbed]
    assert kinds == ["conv", "affine", "relu", "maxpool", "reshape", "linear", "relu", "linear"]
    assert snn.layers[1].absorbed[0][2] == "MaxPool2d; earliest spike"


def test_absorbed_says_where_a_negative_batchnorm_flips_the_pooling():
    # BN after the ReLU, before the pool: folded into the next layer, whose routing takes the latest spike
    snn = ttfs_core.convert(_small(bn_after=True, negative=2), torch.rand(16, 1, 28, 28))
    assert [_names(la) for la in snn.all_layers] == [["0", "1"], ["2", "3", "4", "5", "6"], ["7"]]
    desc = dict((n, d) for n, _, d in snn.layers[1].absorbed)
    assert "2 negative scales" in desc["2"]
    assert "latest spike in 2 of 4 channels" in desc["3"]
    assert int((snn.layers[1].route[0].sign < 0).sum()) == 2  # what the description says is what the core routes
    # conv → pool → BN(negative) → ReLU: the pool waits for the ReLU, and is flipped by the BN after it
    snn = ttfs_core.convert(_small(pool_first=True, negative=1), torch.rand(16, 1, 28, 28))
    assert _names(snn.layers[0]) == ["0", "1", "2", "3"]
    desc = dict((n, d) for n, _, d in snn.layers[0].absorbed)
    assert "latest spike in 1 of 4 channels" in desc["1"] and "1 negative scales" in desc["2"]


@pytest.mark.parametrize("name", [c.name for c in zoo.list_models()])
def test_every_conv_and_linear_of_a_zoo_model_is_absorbed_by_exactly_one_layer(name):
    model, card = zoo.load(name)
    x = torch.zeros(1, 1, 28, 28)
    stages = ttfs_core.convert(model, x, input_range=card.input_range, stages=True)
    capture, layers = stages, stages.lowered
    weighted = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert weighted
    for module in weighted:
        owners = [la.name for la in layers if module in _names(la)]
        assert len(owners) == 1, (module, owners)
    # every captured op is absorbed somewhere, and each layer's list is in graph order
    order = {op.name: k for k, op in enumerate(capture.ops)}
    for la in layers:
        assert la.absorbed, la.name
        ks = [order[n] for n in _names(la)]
        assert ks == sorted(ks)
    assert {op.name for op in capture.ops} == {n for la in layers for n in _names(la)}


def test_persist_keeps_absorbed_and_reads_files_saved_without_it(tmp_path):
    snn = ttfs_core.convert(_small(bn_after=True, negative=2), torch.rand(16, 1, 28, 28))
    path = tmp_path / "net.safetensors"
    save_network(snn, path)
    back = load_network(path)
    assert [la.absorbed for la in back.all_layers] == [la.absorbed for la in snn.all_layers]
    assert all(isinstance(e, tuple) for la in back.all_layers for e in la.absorbed)
    # a file written before provenance existed (no "absorbed" key) still loads, with none
    with safe_open(str(path), "pt") as f:
        desc = json.loads(f.metadata()["ttfs"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for layer in [*desc["layers"], desc["output"]]:
        del layer["absorbed"]
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata={"ttfs": json.dumps(desc)})
    loaded = load_network(old)
    assert all(la.absorbed == () for la in loaded.all_layers)
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(loaded.run(x).logits, snn.run(x).logits)
    # an untrusted file: a malformed entry is named
    desc["output"]["absorbed"] = [["7", "linear"]]
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"ttfs": json.dumps(desc)})
    with pytest.raises(NetworkFileError, match=r"output\.absorbed\[0\]"):
        load_network(bad)


def test_frozen_layers_refuse_a_new_absorbed():
    snn = ttfs_core.convert(_small(), torch.rand(16, 1, 28, 28))
    with pytest.raises(FrozenInstanceError):
        snn.layers[0].absorbed = ()


@pytest.mark.parametrize("title, node, name", [
    ("SiLU after a convolution", "_1", "1"),
    ("Sigmoid between two Linear layers", "_2", "2"),
    ("two padded convolutions without a ReLU between them", "_1", "1"),
])
def test_conversion_errors_name_their_node(title, node, name):
    model = inspector.demo_model(title)
    with pytest.raises(ConversionError) as info:
        ttfs_core.convert(model, torch.rand(8, 1, 28, 28))
    assert info.value.node == node
    graph = inspector.inspect_graph(model, torch.zeros(1, 1, 28, 28))
    assert graph.error == str(info.value) and graph.error_node == node
    [row] = [r for r in graph.rows if r["status"] == inspector.FAILS]
    assert row["node"] == node and row["name"] == name


def test_an_uploaded_model_file_that_fails_is_marked_at_its_node():
    """(a) an upload: the page's uploader inspects the file with the main page's safe loader."""
    import io

    def exported(model: torch.nn.Module) -> bytes:
        buf = io.BytesIO()
        torch.export.save(torch.export.export(model.eval(), (torch.zeros(1, 1, 28, 28),)), buf)
        return buf.getvalue()

    class Square(torch.nn.Module):  # allowed operators, but a product of two activations: refused by the converter
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(784, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc(x.flatten(1))
            return h * h

    graph = inspector.upload_graph("upload:test-square", "square.pt2", exported(Square()))
    assert graph.stage == "capture" and "multiplies two activations" in graph.error
    [row] = [r for r in graph.rows if r["status"] == inspector.FAILS]
    assert row["node"] == graph.error_node == "mul"
    # an operator off the allow-list is refused while loading, naming it and its node (nothing of it runs)
    sigmoid = inspector.demo_model("Sigmoid between two Linear layers")
    graph = inspector.upload_graph("upload:test-sigmoid", "sigmoid.pt2", exported(sigmoid))
    assert graph.stage == "loading" and "node sigmoid calls 'torch.ops.aten.sigmoid.default'" in graph.error
    assert not graph.rows
    bad = inspector.upload_graph("upload:test-garbage", "model.pt", b"not a model" * 10)
    assert bad.stage == "loading" and not bad.rows


def test_calibration_histogram_ends_at_x_n():
    model, card = zoo.load(zoo.DEFAULT_MODEL)
    imgs, _ = data.load_uint8(card.dataset, "train")
    x = card.preprocess.batch_from_uint8(np.asarray(imgs[:512]))
    snn = ttfs_core.convert(model, x, input_range=card.input_range)
    entry = inspector.cache.ModelEntry("zoo:" + zoo.DEFAULT_MODEL, card.title, model, card, card.preprocess,
                                       tuple(card.input_range))
    hists = inspector.calibration_histograms(inspector.cache.Settings("test-hist", 0.5, ALPHA, SUM), entry, snn)
    for h, layer in zip(hists, snn.layers):
        assert h["max"] == pytest.approx(layer.max_activation, rel=1e-6)
        assert h["counts"].sum() > 0 and h["edges"][-1] >= layer.window


# --- the page ------------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_page_lists_what_each_layer_absorbed():
    at = run(PAGE)
    assert not at.error
    model, card = zoo.load(zoo.DEFAULT_MODEL)
    imgs, _ = data.load_uint8(card.dataset, "train")
    snn = ttfs_core.convert(model, card.preprocess.batch_from_uint8(np.asarray(imgs[:512])),
                            input_range=card.input_range)
    layers = frame(at, "absorbed (all)")
    assert list(layers["layer"]) == [la.name for la in snn.all_layers]
    assert list(layers["absorbed (all)"]) == [", ".join(_names(la)) for la in snn.all_layers]
    graph = frame(at, "spiking layer")
    assert (graph["status"] == "absorbed").all()
    owners = dict(zip(graph["name"], graph["spiking layer"]))
    for la in snn.all_layers:
        assert all(owners[n] == la.name for n in _names(la))
    assert {"inspector_graph", "inspector_scales", "inspector_hist", "inspector_certificate"} <= {
        el.proto.id.rsplit("-", 1)[-1] for el in at.get("plotly_chart")}
    at.run()  # a rerun from the caches (its time is measured by the redraw benchmark, bench/run.py redraw)
    assert not at.exception
    # a branching model: the residual layers name their sources and delays
    at = run(PAGE, **{state.MODEL: "zoo:resnet_mnist"})
    layers = frame(at, "absorbed (all)")
    assert any(d for d in layers["delays (τ_c)"]) and layers["reads"].str.contains(r"\+").any()


@pytest.mark.integration
def test_a_model_that_cannot_be_converted_shows_its_error_at_the_node():
    at = run(PAGE)
    at.selectbox(key="inspector_demo").set_value("SiLU after a convolution").run()
    assert not at.exception
    [err] = [e.value for e in at.error if "cannot be converted" in e.value]
    assert "**_1**" in err and "SiLU" in err
    table = [d.value for d in at.dataframe if "status" in d.value.columns][-1]
    [row] = table[table["status"] == inspector.FAILS].to_dict("records")
    assert row["node"] == "_1" and row["name"] == "1" and "SiLU" in row["target"]
    at.selectbox(key="inspector_demo").set_value("two padded convolutions without a ReLU between them").run()
    [err] = [e.value for e in at.error if "cannot be converted" in e.value]
    assert "(lowering)" in err
    table = [d.value for d in at.dataframe if "status" in d.value.columns][-1]
    assert list(table[table["status"] == inspector.FAILS]["node"]) == ["_1"]


@pytest.mark.integration
def test_early_spikes_name_the_first_parting_layer_and_open_its_trace():
    at = run(APP, **{state.MARGIN: -0.7})
    at.switch_page(PAGE_REL).run()
    assert not at.exception
    first, flat = first_early_layer(-0.7)
    assert any(f"First layer where the SNN and the ANN part: {first.name}." in e.value and "early spikes" in e.value
               for e in at.error)
    button = at.button(key="inspector_parting")
    assert str(flat) in button.label
    button.click().run()
    assert not at.exception
    assert at.session_state[state.TRACE_NEURONS] == (first.name, [flat])
    assert at.session_state[state.TRACE_LAYER] == first.name and at.session_state[state.TRACE_PICK] == "by index"
    assert controls.PENDING_PAGE not in at.session_state  # followed at the start of the next run
    assert [t.value for t in at.title] == ["Membrane traces"]
