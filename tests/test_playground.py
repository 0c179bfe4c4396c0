"""The neuron playground (pages/5_Neuron_playground.py, ttfs_ui/playground.py, ttfs_core/neuron.py): hand-computed
neurons, every preset's lesson under AppTest, random settings against an independent numpy ReLU, bad inputs."""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from ttfs_core import neuron as core_neuron
from ttfs_core.errors import InputError
from ttfs_ui import playground as pg

from .helpers import ROOT, ok, run_page

PAGE = str(ROOT / "pages" / "5_Neuron_playground.py")


def run(**session) -> AppTest:
    return run_page(PAGE, **session)


def numbers(at: AppTest) -> dict[str, float]:
    """The page's table of numbers: quantity -> float64 value."""
    [df] = [d.value for d in at.dataframe if "quantity" in d.value.columns]
    assert (df["digits"] == [f"{v:.17g}" for v in df["value"]]).all()
    raw = {shown: name for name, shown in pg.QUANTITIES.items()}  # the table shows the quantities' pretty names
    return dict(zip(df["quantity"].map(lambda q: raw.get(q, q)), df["value"].astype(float)))


def spike_marker_x(at: AppTest) -> float:
    """x of the output-spike marker in the playground figure (absolute time)."""
    fig = next(el for el in at.get("plotly_chart") if el.proto.id.endswith("-playground_v"))
    [tr] = [t for t in json.loads(fig.proto.spec)["data"] if "spike of playground" in t.get("hovertemplate", "")]
    x = tr["x"]
    if isinstance(x, dict):  # a typed array: {"dtype", "bdata" (base64)}
        x = np.frombuffer(base64.b64decode(x["bdata"]), dtype=np.dtype(x["dtype"]))
    return float(x[0])


def outcome(**values) -> pg.Outcome:
    o, errors = pg.run(pg.settings(values))
    assert not errors, errors
    return o


# --- pure: hand-computed neurons -----------------------------------------------------------------------------
def _two(neuron="alpha", **kw):
    values = {pg.COUNT: 2, pg.X[0]: 0.5, pg.X[1]: 0.25, pg.W[0]: 0.2, pg.W[1]: 0.4, pg.BIAS: 0.1,
              pg.IN_WINDOW: 1.0, pg.WINDOW: 1.0, pg.NEURON: neuron, pg.CLOCK: False}
    return outcome(**{**values, **kw})


def test_two_inputs_alpha_by_hand():
    o = _two()
    # ΣW = 0.6: J = W/(1 − 0.6) = (0.5, 1.0), final slope 1/0.4 = 2.5; θ = 1·(1 + 1) + 1·1.5 − 2.5·0.1 = 3.25
    assert o.scale == 1.0
    np.testing.assert_allclose(o.J, [0.5, 1.0], rtol=1e-15)
    assert o.slope == pytest.approx(2.5, rel=1e-15) and o.theta == pytest.approx(3.25, rel=1e-15)
    # windows: input [0, 1], inputs [1, 2], neuron [2, 3]; t_j = 2 − x_j
    assert (o.start, o.t_min, o.t_max) == (1.0, 2.0, 3.0)
    np.testing.assert_allclose(o.input_times, [1.5, 1.75], rtol=1e-15)
    # z = 0.2·0.5 + 0.4·0.25 + 0.1 = 0.3 → t = 3 − 0.3 = 2.7, and V(2.7) = 1.7 + 0.5·1.2 + 1.0·0.95 = 3.25 = θ
    assert o.pre_activation == pytest.approx(0.3, abs=1e-15) and o.relu == pytest.approx(0.3, abs=1e-15)
    assert o.spike == pytest.approx(2.7, abs=1e-14) and not o.early and not o.forced
    assert float(o.trace.potential_at(np.array([o.spike - o.start]))[0]) == pytest.approx(3.25, abs=1e-13)
    assert abs(o.difference) < 1e-15 and o.readout == pytest.approx(0.3, abs=1e-15)
    assert o.peak == pytest.approx(0.3, abs=1e-15)  # f(s) = 0.1 + 0.2·max(0.5, s) + 0.4·max(0.25, s) − s falls


def test_two_inputs_b1_by_hand():
    o = _two("b1")
    np.testing.assert_allclose(o.J, [0.2, 0.4], rtol=0)
    assert o.theta == pytest.approx(0.9, abs=1e-15) and o.slope == 1.0
    assert o.spike == pytest.approx(2.7, abs=1e-14) and not o.early


def test_rescaling_rules_by_hand():
    # sum: ΣW = 1.4 > 0.99 → c = 0.99/1.4; J = cW/(1 − 0.99) = 100·cW
    o = _two(**{pg.W[0]: 0.9, pg.W[1]: 0.5})
    c = 0.99 / 1.4
    assert o.scale == pytest.approx(c, rel=1e-15) and o.sum_w == pytest.approx(0.99, rel=1e-15)
    np.testing.assert_allclose(o.J, [100 * c * 0.9, 100 * c * 0.5], rtol=1e-12)
    assert o.relu == pytest.approx(c * (0.9 * 0.5 + 0.5 * 0.25 + 0.1), rel=1e-14)
    assert o.readout == pytest.approx(0.9 * 0.5 + 0.5 * 0.25 + 0.1, rel=1e-14)  # the readout undoes c
    # W = (1.2, −0.5): ΣW = 0.7 (sum: no rescaling), Σ max(W, 0) = 1.2 (positive: c = 0.99/1.2)
    w = {pg.W[0]: 1.2, pg.W[1]: -0.5}
    assert _two(**w).scale == 1.0
    assert _two(**w, **{pg.RESCALE: "positive"}).scale == pytest.approx(0.99 / 1.2, rel=1e-15)
    assert _two("b1", **{pg.W[0]: 0.9, pg.W[1]: 0.5}).scale == 1.0  # B1 is never rescaled


def test_blowup_table_follows_alpha_over_one_minus_sum():
    o = _two()
    rows = pg.blowup(o)
    assert [r["Σ W"] for r in rows] == sorted({*pg.BLOWUP_SUMS, 0.6})
    for r in rows:
        assert r["final slope α/(1 − ΣW)"] == pytest.approx(1 / (1 - r["Σ W"]), rel=1e-9)
        assert r["Σ J"] == pytest.approx(r["Σ W"] / (1 - r["Σ W"]), rel=1e-9, abs=1e-12)
    assert [r["Σ W"] for r in rows if r["yours"]] == [0.6]
    assert rows[-1]["largest |J|"] > 1000  # Σ W = 0.9999


def test_margin_window_and_equations():
    s = pg.settings(pg.PRESETS["early"].values)
    o = pg.evaluate(s)
    assert o.early and o.peak == pytest.approx(0.8, abs=1e-14) and o.spike < o.input_times[2] < o.t_min
    assert pg.margin_window(s) == pytest.approx(1.5 * o.peak, rel=1e-15)
    text = " ".join(pg.equations(o))
    assert "0.8" in text and r"\ge B_n = 0.5" in text
    assert f"{o.decoded:.17g}" in pg.exactness_latex(o) and f"{o.relu:.17g}" in pg.exactness_latex(o)


def test_bad_settings_are_messages():
    assert pg.problems(pg.settings({pg.WINDOW: 0.0}))
    assert pg.problems(pg.settings({pg.IN_WINDOW: -1.0}))
    assert pg.problems(pg.settings({pg.X[0]: 2.0}))
    assert pg.problems(pg.settings({pg.W[0]: math.inf}))
    assert pg.run(pg.settings({pg.WINDOW: -0.5}))[0] is None
    with pytest.raises(InputError):
        core_neuron.single_neuron([0.5, 1.5], [0.1, 0.2], 0.0, 1.0, 1.0)
    assert pg.sanitize({**pg.DEFAULTS, pg.COUNT: 9, pg.NEURON: "lif", pg.X[0]: "a"}) == {
        pg.COUNT: pg.DEFAULTS[pg.COUNT], pg.NEURON: "alpha", pg.X[0]: pg.DEFAULTS[pg.X[0]]}


# --- the page ------------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_presets_show_their_lessons():
    at = run()
    assert any(el.proto.id.endswith("-playground_v") for el in at.get("plotly_chart"))
    assert len(at.latex) >= 5

    def click(name: str) -> dict[str, float]:
        at.button(key=f"pg_preset_{name}").click().run()
        ok(at)
        assert at.info and at.info[0].value == pg.PRESETS[name].lesson
        return numbers(at)

    n = click("exact")
    assert n["early spike"] == 0 and abs(n["difference (t_max − t) − ReLU"]) < 1e-12 and at.success
    assert n["spike time t"] == pytest.approx(n["t_max^(n)"] - 0.27, abs=1e-12)
    assert spike_marker_x(at) == pytest.approx(n["spike time t"], abs=1e-12)

    n = click("early")  # window 0.5 below the pre-activation 0.8: early (before input 3 arrives), wrong
    assert n["early spike"] == 1 and n["spike time t"] < n["t_min^(n)"]
    assert abs(n["difference (t_max − t) − ReLU"]) > 0.1 and "EARLY" in at.error[0].value
    n = click("margin")  # B_n = 1.5·P: exact again
    assert at.session_state[pg.WINDOW] == pytest.approx(1.2, abs=1e-12)
    assert n["early spike"] == 0 and abs(n["difference (t_max − t) − ReLU"]) < 1e-12 and not at.error

    n = click("silent")  # α: forced at t_max
    assert n["pre-activation Σ W x + b"] < 0 and n["forced at t_max"] == 1
    assert n["spike time t"] == n["t_max^(n)"] and n["t_max − t"] == 0
    at.session_state[pg.NEURON] = "b1"
    n = numbers(ok(at.run()))
    assert n["spike time t"] == math.inf and "No spike" in at.info[-1].value

    n = click("inhibition")  # B1: the late inhibition cannot undo an early crossing
    assert n["early spike"] == 1 and 0 < n["pre-activation Σ W x + b"] < 0.6 and n["peak drive P"] >= 0.6
    at.session_state[pg.NEURON] = "alpha"
    n = numbers(ok(at.run()))
    assert n["early spike"] == 0 and abs(n["difference (t_max − t) − ReLU"]) < 1e-12

    n = click("clock")
    coarse = abs(n["clock − exact"])
    assert at.session_state[pg.DT] == 0.1 and coarse > 0.01
    fig = next(el for el in at.get("plotly_chart") if el.proto.id.endswith("-playground_v"))
    assert "clock-driven spike" in fig.proto.spec
    at.session_state[pg.DT] = 0.001
    fine = abs(numbers(ok(at.run()))["clock − exact"])
    assert fine < coarse / 10


def _expected(x, w, b, in_window, window, neuron, rescale):
    """Independently: rescaling factor, spike time t_max − ReLU(Σ W x + b) and whether the neuron fires early."""
    x, w = np.asarray(x), np.asarray(w)
    c = 1.0
    if neuron == "alpha":
        gauge = w.sum() if rescale == "sum" else np.clip(w, 0, None).sum()
        if gauge >= 0.99:
            c = 0.99 / gauge
        if w.sum() * c < -10:
            c = c * (-10 / (w.sum() * c))
    w, b = c * w, c * b
    relu = max(float(w @ x + b), 0.0)
    t_max = 1.0 + in_window + window
    if neuron == "alpha":
        drive = [b + np.maximum(x, s) @ w - s for s in (*x[x > 0], in_window)]
    else:
        drive = [b + np.clip(x - s, 0, None) @ w for s in (*x[x > 0], in_window)]
    early = max([float(w @ x + b), *drive]) >= window
    spike = math.inf if (neuron == "b1" and relu == 0) else t_max - relu
    return spike, early


@pytest.mark.integration
@pytest.mark.parametrize("seed", range(12))
def test_random_settings_match_numpy(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 7))
    in_window = float(rng.uniform(0.3, 2.0))
    x = rng.uniform(0, in_window, k)
    x[rng.random(k) < 0.2] = 0.0
    w = rng.uniform(-1.0, 1.2, k)
    b = float(rng.uniform(-0.5, 0.5))
    window = float(rng.uniform(0.3, 3.0))
    neuron = ["alpha", "b1"][seed % 2]
    rescale = ["sum", "positive"][(seed // 2) % 2]
    session = {pg.COUNT: k, pg.BIAS: b, pg.IN_WINDOW: in_window, pg.WINDOW: window, pg.NEURON: neuron,
               pg.RESCALE: rescale, pg.CLOCK: False}
    session.update({pg.X[j]: float(x[j]) for j in range(k)})
    session.update({pg.W[j]: float(w[j]) for j in range(k)})
    at = run(**session)
    n = numbers(at)
    spike, early = _expected(x, w, b, in_window, window, neuron, rescale)
    assert n["early spike"] == float(early)
    assert n["t_max^(n)"] == pytest.approx(1.0 + in_window + window, abs=1e-15)
    if not early:
        assert n["spike time t"] == pytest.approx(spike, abs=1e-12, rel=0)
        assert abs(n["difference (t_max − t) − ReLU"]) < 1e-12
        assert n["readout (original units)"] == pytest.approx(max(float(w @ x + b), 0.0), abs=1e-12)


@pytest.mark.integration
@pytest.mark.parametrize("session", [
    {pg.WINDOW: 0.0}, {pg.WINDOW: -1.0}, {pg.IN_WINDOW: -0.5}, {pg.X[0]: 3.0}, {pg.X[1]: -0.1},
])
def test_bad_inputs_give_messages_not_exceptions(session):
    at = run(**session)
    assert at.error and not at.get("plotly_chart")


@pytest.mark.integration
def test_unusable_state_is_repaired():
    at = run(**{pg.COUNT: 12, pg.NEURON: "lif", pg.DT: 0.5, pg.BIAS: "x"})
    assert at.session_state[pg.COUNT] == pg.DEFAULTS[pg.COUNT] and not at.error
    assert at.session_state[pg.NEURON] == "alpha"
