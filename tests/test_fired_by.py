"""One definition of "fired by t" (`Timeline.fire_steps`), with a tolerance in the simulated network's precision.

Issue 28, problem 1: a float32 network stores a forced spike at float32(B_n), which may lie ~5e-8 of B_n past the
float64 window it is drawn on. With a slack of 1e-12 those neurons counted one step late (inside the next layer's
window) or, in the last layer, never: LeNet-5 at ζ = −0.7 read "linear 12 28/84" at the last step.
"""

import numpy as np
import pytest

import ttfs_core
from ttfs_core import data, zoo
from ttfs_ui import live, timeline

EPS32 = float(np.finfo(np.float32).eps)


@pytest.fixture(scope="module")
def lenet_early():
    """LeNet-5 at ζ = −0.7 (early spikes and forced spikes), the explorer's calibration, test image #0."""
    model, card = zoo.load("lenet5")
    imgs, _ = data.load_uint8(card.dataset, "train")
    snn = ttfs_core.convert(model, card.preprocess.batch_from_uint8(np.asarray(imgs[:512])), margin=-0.7,
                            input_range=card.input_range)
    test, _ = data.load_uint8(card.dataset, "test")
    res = snn.run(card.preprocess.batch_from_uint8(np.asarray(test[:1])))
    return snn, res


def test_every_alpha_layer_counts_all_its_neurons_at_the_last_step(lenet_early):
    snn, res = lenet_early
    tl = timeline.timeline_of(snn)
    assert tl.precision == EPS32  # the network simulates in float32: the slack follows
    spikes = timeline.spikes_of(snn, res)
    assert spikes[-1].forced.any() and (spikes[-1].offsets[spikes[-1].forced] > spikes[-1].window).any(), \
        "the case of the issue: forced spikes stored past the float64 window"
    for n, s in enumerate(spikes):
        counts = tl.fired_counts(n, s.offsets)
        assert counts[-1] == s.neurons, f"{s.label}: {counts[-1]}/{s.neurons} at the last step"
        # ... and by the end of the layer's own window already (every α-neuron fires by t_max)
        assert counts[(n + 1) * tl.steps_per_window] == s.neurons, s.label
    # what the browser receives agrees: the spec's counts and the mapped layer's fire steps
    spec = live.spec(spikes, tl, tl.default_mode(), len(spikes) - 1, tl.steps)
    assert [c[-1] for c in spec["counts"]] == [s.neurons for s in spikes]


def test_forced_neurons_count_in_their_own_windows_last_step(lenet_early):
    snn, res = lenet_early
    tl = timeline.timeline_of(snn)
    for n, s in enumerate(timeline.spikes_of(snn, res)):
        if not s.forced.any():
            continue
        k = tl.fire_steps(n, s.offsets)
        assert (k[s.forced] == (n + 1) * tl.steps_per_window).all(), s.label  # the step that closes window n
        assert tl.fired_by(n, s.offsets, (n + 1) * tl.steps_per_window)[s.forced].all()


def test_the_tolerance_at_a_step_boundary_by_hand():
    """Window 1 of 0.3 τ_c, 10 steps a window: step 15 is its middle (u = 1.5), step 20 its end (u = 2)."""
    f32 = timeline.Timeline(("input", "a"), (0.0, 1.0), (1.0, 0.3), steps_per_window=10, precision=EPS32)
    f64 = timeline.Timeline(("input", "a"), (0.0, 1.0), (1.0, 0.3), steps_per_window=10)
    assert f32.slack == pytest.approx(16 * EPS32) and f64.slack == pytest.approx(16 * 2.0**-52)
    end32 = float(np.float32(0.3))  # a forced spike as float32 stores it: 0.30000001192…, u = 2 + 4e-8
    off = np.array([end32, 0.15 * (1 + 1e-7), 0.15 * (1 + 1e-5), 0.15, 0.15 * (1 - 1e-7), np.inf])
    # float32: rounding past a boundary by 1e-7 of the window is within the slack (1.9e-6); 1e-5 is a later spike
    np.testing.assert_array_equal(f32.fire_steps(1, off), [20, 15, 16, 15, 15, timeline.NEVER])
    # float64: the same offsets are known to 3.6e-15 of the window, so 1e-7 past the boundary is the next step
    np.testing.assert_array_equal(f64.fire_steps(1, off), [21, 16, 16, 15, 15, timeline.NEVER])
    assert f32.fired_counts(1, off)[[14, 15, 16, 19, 20]].tolist() == [0, 3, 4, 4, 5]
    # an early spike (offset < 0) is placed in the window before, on its scale (1 τ_c), with the same slack
    early = np.array([-0.5 * (1 - 1e-7), -0.5 * (1 - 1e-3)])  # u = 0.5 + 5e-8, and 0.5005
    np.testing.assert_array_equal(f32.fire_steps(1, early), [5, 6])
    np.testing.assert_array_equal(f64.fire_steps(1, early), [6, 6])


def test_a_network_says_its_precision():
    class Net:
        import torch

        dtype = torch.float64

    assert timeline.precision_of(Net()) == pytest.approx(2.0**-52)
    assert timeline.precision_of(object()) == pytest.approx(2.0**-52)
