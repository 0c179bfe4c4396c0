"""The researcher's path: an upload that loads but cannot be converted is offered on the main page to the conversion
inspector, which opens on it without asking for the file again; the inspector's failing graph shows torch.export's
shape guards as shape plumbing (not "unsupported") and opens on the node where conversion stops.

Also the main page's small fixes for one's own images: drawings numbered and timed, a blank image said blank and
drawn in its own colour."""

from __future__ import annotations

import io
import operator

import numpy as np
import pytest
import torch
import torch.fx as fx
from streamlit.testing.v1 import AppTest
from torch.export import Dim

from ttfs_core import data
from ttfs_ui import controls, inspector, state, uploads

from .helpers import APP, TIMEOUT

INSPECTOR = "pages/6_Conversion_inspector.py"


class Gated(torch.nn.Module):
    """Allowed operators only, but a product of two activations (refused by the converter), exported with a dynamic
    batch: torch.export writes `sym_size` for every `x.size(0)` before the node that fails."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.fc = torch.nn.Linear(4 * 26 * 26, 16)
        self.out = torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.size(0)
        h = torch.relu(self.conv(x)).view(n, 4, -1).reshape(n, -1)
        h = torch.relu(self.fc(h)).reshape(x.shape[0], 16)
        return self.out(h * h)


def gated_pt2() -> bytes:
    torch.manual_seed(0)
    ep = torch.export.export(Gated().eval(), (torch.zeros(2, 1, 28, 28),),
                             dynamic_shapes=({0: Dim("batch", min=2, max=512)},))
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    return buf.getvalue()


# --- shape plumbing in the failing graph ---------------------------------------------------------------------
def test_shape_guards_are_shape_plumbing_and_the_failing_node_comes_first():
    graph = inspector.upload_graph("upload:test-gated", "gated.pt2", gated_pt2())
    assert graph.stage == "capture" and graph.error_node == "mul"
    plumbing = [r for r in graph.rows if "sym_size" in r["target"]]
    assert plumbing, "the export wrote no size node: the test shows nothing"
    assert all(r["kind"] == inspector.SHAPE_PLUMBING and r["status"] == inspector.SHAPE_STATUS for r in plumbing)
    assert not [r["node"] for r in graph.rows if r["kind"] == "unsupported"]
    first = inspector.failing_first(graph.rows)
    assert first[0]["node"] == "mul" and first[0]["status"] == inspector.FAILS
    assert [r["#"] for r in first[1:]] == [r["#"] for r in graph.rows if r["node"] != "mul"]  # then graph order
    assert sorted(r["#"] for r in first) == list(range(len(graph.rows)))


def test_every_kind_of_guard_is_shape_plumbing_but_an_operator_on_tensors_is_not():
    """A graph with the guards torch.export writes (sizes, integer arithmetic, `_assert_scalar`,
    `sym_constrain_range_for_size`) before an unsupported op: only the op is unsupported. A Python operator on a
    tensor (x + 1) is not plumbing."""
    g = fx.Graph()
    x = g.placeholder("x")
    n = g.call_function(torch.ops.aten.sym_size.int, (x, 0))
    m = g.call_function(operator.mul, (n, 16))
    ge = g.call_function(operator.ge, (m, 1))
    g.call_function(torch.ops.aten._assert_scalar.default, (ge, "batch >= 1"))
    g.call_function(torch.ops.aten.sym_constrain_range_for_size.default, (n,))
    shifted = g.call_function(operator.add, (x, 1))
    y = g.call_function(torch.ops.aten.sigmoid.default, (shifted,))
    g.output(y)
    gm = fx.GraphModule(torch.nn.Module(), g)
    rows, _ = inspector.fx_rows(gm, torch.zeros(1, 1, 28, 28))
    kinds = {r["node"]: r["kind"] for r in rows}
    plumbing = {"sym_size_int", "mul", "ge", "_assert_scalar_default", "sym_constrain_range_for_size_default"}
    assert {k for k, v in kinds.items() if v == inspector.SHAPE_PLUMBING} == plumbing, kinds
    assert kinds["sigmoid_default"] == "unsupported" and kinds["add"] != inspector.SHAPE_PLUMBING


# --- from the main page's error to the inspector, without the file again -------------------------------------
def _upload_gated():
    """A page that uploads the gated model as the main page's uploader does and, if it failed, offers the
    inspector (as app.py does)."""
    import streamlit as st

    from ttfs_ui import controls, state

    state.init()
    raw = st.session_state["test_bytes"]
    error = controls.receive_model_upload(raw, "gated.pt2", None)
    st.text(f"error: {error}")
    key = controls.failed_upload_key(raw, None)
    if key is not None:
        st.button("inspect", key="upload_inspect", on_click=controls.open_in_inspector, args=(key,))


@pytest.mark.integration
def test_a_conversion_error_opens_the_inspector_on_the_same_upload():
    raw = gated_pt2()
    at = AppTest.from_function(_upload_gated, default_timeout=TIMEOUT)
    at.session_state["test_bytes"] = raw
    at.run()
    assert not at.exception and "cannot be converted" in at.text[0].value
    at.button(key="upload_inspect").click().run()
    key = uploads.upload_key(raw)
    assert at.session_state[controls.INSPECT] == key
    assert at.session_state[controls.PENDING_PAGE] == controls.INSPECTOR_PAGE
    failed = at.session_state[state.FAILED_MODELS]
    # the main page follows the pending switch at its start: the inspector opens on this upload
    main = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for k in (state.FAILED_MODELS, state.FAILED_UPLOADS, controls.INSPECT, controls.PENDING_PAGE):
        main.session_state[k] = at.session_state[k]
    main.session_state["inspector_demo"] = "SiLU after a convolution"  # another choice made before: replaced
    main.run()
    assert not main.exception, [e.message for e in main.exception]
    assert [t.value for t in main.title] == ["Conversion inspector"]
    assert main.selectbox(key="inspector_demo").value == key and key in failed
    [err] = [e.value for e in main.error if "cannot be converted" in e.value]
    assert "uploaded gated.pt2" in err and "**mul**" in err
    table = next(d.value for d in reversed(main.dataframe) if "status" in d.value.columns)
    assert table.iloc[0]["node"] == "mul" and table.iloc[0]["status"] == inspector.FAILS
    assert (table[table["target"].str.contains("sym_size")]["kind"] == inspector.SHAPE_PLUMBING).all()
    assert not (table["kind"] == "unsupported").any()
    assert any("shape plumbing" in c.value for c in main.caption)
    assert not main.get("file_uploader") or all("Model file" not in str(u.proto.label)
                                                for u in main.get("file_uploader"))  # the file is not asked for


# --- own images: drawings told apart, blank images -------------------------------------------------------------
def _png(colour: int = 255, size: int = 56, mode: str = "L") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


def _drawings():
    """A page that receives three drawings (two alike) at fixed times, then lists the image choices."""
    from datetime import datetime

    import numpy as np
    import streamlit as st

    from ttfs_core import data
    from ttfs_ui import controls, state, uploads

    state.init()
    pads = [np.zeros((56, 56), np.uint8) for _ in range(2)]
    pads[0][10:40, 25:30] = 255
    pads[1][20:25, 10:45] = 255
    for pad, hour in ((pads[0], 9), (pads[1], 10), (pads[0], 11)):
        png = uploads.png_bytes(uploads.mnist_style(pad))
        controls.receive_drawing(png, data.MNIST_PREPROCESS, now=datetime(2026, 1, 1, hour, 5))
    for label in controls.image_options().values():
        st.text(label)


def test_drawings_are_numbered_and_timed_not_all_called_your_drawing():
    at = AppTest.from_function(_drawings, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert [t.value for t in at.text] == ["a bundled test image", "uploaded: your drawing 1 (09:05)",
                                          "uploaded: your drawing 2 (10:05)"]  # the first, sent again, kept its name
    assert at.session_state[state.DRAWINGS] == 2


def test_a_blank_image_is_said_blank_and_drawn_in_its_own_colour():
    """An all-white image, used as it is, shows white (a scale fitted to its own range drew it grey), and the
    upload says it is blank; an image with contrast gets no such note."""
    pre = data.MNIST_PREPROCESS
    white = _png(255)
    x, _ = uploads.read_image(white, pre, invert=False)
    fig = controls.input_figure(x, pre)
    heat = fig.data[0]
    assert np.all(np.asarray(heat.z) == 1.0) and heat.zmin == 0.0 and heat.zmax == 1.0  # white at the top
    black = controls.input_figure(uploads.read_image(_png(0), pre, invert=False)[0], pre).data[0]
    assert np.all(np.asarray(black.z) == 0.0) and black.zmin == 0.0 and black.zmax == 1.0
    # a normalised model (mean 0.5, std 0.25): still pixels / 255 on the fixed scale
    norm = data.Preprocess(mean=(0.5,), std=(0.25,))
    z = controls.input_figure(uploads.read_image(white, norm, invert=False)[0], norm).data[0].z
    np.testing.assert_allclose(np.asarray(z), 1.0)
    assert uploads.blank_colour(uploads.decode_image(white)) == "white"
    assert uploads.blank_colour(uploads.decode_image(_png(128))) == "grey 128"
    assert uploads.blank_colour(uploads.decode_image(_png((255, 0, 0), mode="RGB"))) == "RGB (255, 0, 0)"
    drawn = np.zeros((56, 56), np.uint8)
    drawn[10:40, 25:30] = 255
    assert uploads.blank_colour(uploads.decode_image(uploads.png_bytes(drawn))) is None


def _receive_blank():
    import streamlit as st

    from ttfs_core import data
    from ttfs_ui import controls, state

    state.init()
    error, notes = controls.receive_image_upload(st.session_state["png"], "white.png", data.MNIST_PREPROCESS)
    for note in notes:
        st.text(note)


def test_a_blank_upload_gets_a_note():
    at = AppTest.from_function(_receive_blank, default_timeout=TIMEOUT)
    at.session_state["png"] = _png(255)
    at.run()
    assert any(t.value.startswith("The image is blank: every pixel is white") and "inverted" in t.value
               for t in at.text), [t.value for t in at.text]
    at = AppTest.from_function(_receive_blank, default_timeout=TIMEOUT)
    drawn = np.zeros((56, 56), np.uint8)
    drawn[10:40, 25:30] = 255
    at.session_state["png"] = uploads.png_bytes(drawn)
    at.run()
    assert not any("blank" in t.value for t in at.text)

