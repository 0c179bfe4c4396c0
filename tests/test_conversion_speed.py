"""What conversion does to be fast gives the same results as the plain way (speed itself is measured by
`bench/run.py repvgg` and `timm`, never here):

- float64 convolutions PyTorch runs slowly on the CPU (`dynamics.depthwise`, `dynamics.few_positions`) equal
  `F.conv2d`;
- the fan-in gather by flat offsets equals indexing the padded input;
- a certificate stage on gathered fan-ins (few neurons left) settles exactly the neurons the stage's weighted sums
  over the whole layer settle;
- calibration is one pass of the network over the calibration data (plus the few inputs that set an X_n beyond
  the first PEAK_SAMPLE), keeps the first inputs' activations for the peak drive, and gives the same X_n and P_n
  as running them again; `SpikingNetwork.stream` lets an activation go once its last reader is computed.
"""

from __future__ import annotations

import gc
import itertools
import weakref
from collections import Counter

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import ttfs_core
from tests import branchy, nets
from ttfs_core import passes
from ttfs_core.records import Layer, Synapses
from ttfs_core.sim import certify as certify_module
from ttfs_core.sim import dynamics
from ttfs_core.sim.certify import certify_layer
from ttfs_core.sim.fanin import gather_fan_in, pad_input

GEOMETRY = list(itertools.product((1, 3), (1, 2), (0, 1, 2), (1, 2)))  # kernel, stride, padding, dilation


def _conv(stride, padding, dilation, groups):
    return {"stride": (stride, stride), "padding": (padding, padding), "dilation": (dilation, dilation),
            "groups": groups}


@pytest.mark.parametrize("kernel,stride,padding,dilation", GEOMETRY)
@pytest.mark.parametrize("groups,multiplier", [(1, 1), (4, 1), (4, 3)])
def test_depthwise_is_conv2d(kernel, stride, padding, dilation, groups, multiplier):
    g = torch.Generator().manual_seed(kernel * 100 + stride * 10 + padding + dilation)
    x = torch.randn(3, groups, 7, 9, generator=g, dtype=torch.float64)
    w = torch.randn(groups * multiplier, 1, kernel, kernel + 1, generator=g, dtype=torch.float64)
    conv = _conv(stride, padding, dilation, groups)
    ref = F.conv2d(x, w, None, **conv)
    out = dynamics.depthwise(x, w, conv)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-13)


@pytest.mark.parametrize("kernel,stride,padding,dilation", GEOMETRY)
@pytest.mark.parametrize("pieces", [False, True])
def test_few_positions_is_conv2d(kernel, stride, padding, dilation, pieces, monkeypatch):
    g = torch.Generator().manual_seed(kernel * 100 + stride * 10 + padding + dilation)
    x = torch.randn(5, 6, 6, 5, generator=g, dtype=torch.float64)
    w = torch.randn(7, 6, kernel, kernel, generator=g, dtype=torch.float64)
    conv = _conv(stride, padding, dilation, 1)
    ref = F.conv2d(x, w, None, **conv)
    if pieces:  # a piece of two samples at a time
        monkeypatch.setattr(dynamics, "UNFOLD_ELEMENTS", 2 * w[0].numel() * ref.shape[2] * ref.shape[3])
    out = dynamics.few_positions(x, w, conv, tuple(ref.shape[1:]))
    assert out.shape == ref.shape and out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-13)


ONE_POSITION = [(k, s, p, d) for k, s, p, d in itertools.product((2, 3, 5), (1, 2), (1, 2, 4, 7), (1, 2))
                if 2 * p >= d * (k - 1)] + [(16, 1, 15, 1)]  # the padded 1×1 input covers the kernel


@pytest.mark.parametrize("kernel,stride,padding,dilation", ONE_POSITION)
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_one_position_is_conv2d(kernel, stride, padding, dilation, groups, dtype):
    """A 1×1 input padded all around (how lowering writes an upsampling, HRNet's) as a matrix product."""
    g = torch.Generator().manual_seed(kernel * 100 + stride * 10 + padding + dilation)
    x = torch.randn(3, 4, 1, 1, generator=g, dtype=torch.float64).to(dtype)
    w = torch.randn(6, 4 // groups, kernel, kernel + 1, generator=g, dtype=torch.float64).to(dtype)
    conv = {"stride": (stride, stride), "padding": (padding, padding + 1), "dilation": (dilation, dilation),
            "groups": groups}
    ref = F.conv2d(x, w, None, **conv)
    out = dynamics.one_position(x, w, conv, tuple(ref.shape[1:]))
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-13 if dtype == torch.float64 else 1e-5)


def test_float64_weighted_sums_take_the_fast_paths_and_agree_with_conv2d():
    """A layer's weighted sum in float64 through every input kind: depthwise, few positions, plain."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 8, 6, 6, generator=g, dtype=torch.float64)
    cases = [(torch.randn(8, 1, 3, 3, generator=g, dtype=torch.float64), _conv(1, 1, 1, 8)),
             (torch.randn(5, 8, 3, 3, generator=g, dtype=torch.float64), _conv(2, 1, 1, 1)),
             (torch.randn(8, 2, 3, 3, generator=g, dtype=torch.float64), _conv(1, 1, 1, 4))]
    for w, conv in cases:
        ref = F.conv2d(x, w, None, **conv)
        syn = Synapses(0, (), tuple(x.shape[1:]), w, conv)
        out = dynamics.weighted_sum([syn], [x], [w], tuple(ref.shape[1:]))
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-13)


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_gather_fan_in_reads_each_neurons_kernel_window(groups):
    g = torch.Generator().manual_seed(groups)
    for kernel, stride, padding, dilation in GEOMETRY:
        x = torch.randn(3, 6, 7, 8, generator=g, dtype=torch.float64)
        w = torch.randn(12, 6 // groups, kernel, kernel, generator=g, dtype=torch.float64)
        conv = _conv(stride, padding, dilation, groups)
        out = F.conv2d(x, w, None, **conv)
        syn = Synapses(0, (), tuple(x.shape[1:]), w, conv)
        idx = tuple(torch.randint(0, n, (40,), generator=g) for n in out.shape)
        taps = gather_fan_in(syn, pad_input(syn, x, 0.0), idx)
        torch.testing.assert_close((taps * w.flatten(1)[idx[1]]).sum(1), out[idx], rtol=0, atol=1e-12)


def _random_layer(kind: str, g: torch.Generator, easy: bool = False):
    """Inputs (`Synapses` with J), their activations and the θ, V(t_min) of a layer of random neurons under the
    paper's rescaling (Σ_j W_ij < 1), with a window small enough that many neurons need a cell stage."""
    batch = 6
    if kind == "dense":
        specs = [((40,), torch.randn(30, 40, generator=g, dtype=torch.float64) * 0.3, None, None)]
        shape = (30,)
    elif kind == "conv":
        specs = [((5, 6, 6), torch.randn(8, 5, 3, 3, generator=g, dtype=torch.float64) * 0.3, _conv(1, 1, 1, 1),
                  None)]
        shape = (8, 6, 6)
    elif kind == "shortcut":  # a convolution plus an identity shortcut (a depthwise 1×1 convolution) of its input
        specs = [((6, 6, 6), torch.randn(6, 6, 3, 3, generator=g, dtype=torch.float64) * 0.3, _conv(1, 1, 1, 1),
                  None),
                 ((6, 6, 6), torch.randn(6, 1, 1, 1, generator=g, dtype=torch.float64) * 0.5, _conv(1, 0, 1, 6),
                  None)]
        shape = (6, 6, 6)
    else:  # a concatenation of two convolutions, one grouped, and a depthwise input over every channel
        specs = [((4, 6, 6), torch.randn(6, 4, 3, 3, generator=g, dtype=torch.float64) * 0.3, _conv(1, 1, 1, 1),
                  (0, 6)),
                 ((4, 6, 6), torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64) * 0.3, _conv(1, 1, 1, 2),
                  (6, 10)),
                 ((10, 6, 6), torch.randn(10, 1, 1, 1, generator=g, dtype=torch.float64) * 0.3, _conv(1, 0, 1, 10),
                  None)]
        shape = (10, 6, 6)
    inputs, xs = [], []
    for in_shape, w, conv, channels in specs:
        inputs.append(Synapses(-1, (), in_shape, w, conv, channels, J=w))
        x = torch.rand(batch, *in_shape, generator=g, dtype=torch.float64) * 2
        xs.append(torch.where(torch.rand(x.shape, generator=g, dtype=torch.float64) < 0.3, 0.0, x))
    in_window, alpha = 2.0, 1.0
    v_end = alpha * in_window + dynamics.weighted_sum(inputs, xs, [s.J for s in inputs], shape)
    theta = v_end.amax(0) * 0.9 + 0.1  # some neurons fail, many are close
    if easy:  # all but the first two channels (neurons) far from their thresholds: the stages' leftovers there
        theta[2:] = theta[2:] * 10 + 10
    return inputs, xs, theta, v_end, in_window, alpha


@pytest.mark.parametrize("kind", ["dense", "conv", "shortcut", "concatenation"])
@pytest.mark.parametrize("seed", range(4))
def test_a_gathered_stage_settles_what_the_whole_layer_stage_settles(kind, seed, monkeypatch):
    inputs, xs, theta, v_end, in_window, alpha = _random_layer(kind, torch.Generator().manual_seed(seed))
    runs = {}
    for name, cost in (("whole layer", 1e30), ("gathered", 0.0)):
        monkeypatch.setattr(certify_module, "GATHER_COST", cost)
        runs[name] = certify_layer(inputs, xs, theta, v_end, in_window, alpha, search_budget=0)
    dense, gathered = runs["whole layer"], runs["gathered"]
    assert sum(dense.settled[1:]) > 0  # the cell stages did run
    assert gathered.settled == dense.settled
    assert torch.equal(gathered.uncertified, dense.uncertified)


@pytest.mark.parametrize("kind", ["dense", "conv", "shortcut"])
@pytest.mark.parametrize("seed", range(4))
def test_stages_on_the_channels_left_settle_what_stages_on_every_channel_settle(kind, seed, monkeypatch):
    inputs, xs, theta, v_end, in_window, alpha = _random_layer(kind, torch.Generator().manual_seed(seed), True)
    monkeypatch.setattr(certify_module, "GATHER_COST", 1e30)
    restrict, blocks = certify_module._restrict, []
    monkeypatch.setattr(certify_module, "_restrict", lambda *a: blocks.append(restrict(*a)) or blocks[-1])
    apart = certify_layer(inputs, xs, theta, v_end, in_window, alpha, search_budget=0)
    assert any(b.cols is not None for b in blocks)  # stages ran on the channels with neurons left alone
    monkeypatch.setattr(certify_module, "_channels_apart", lambda inputs, shape: False)
    whole = certify_layer(inputs, xs, theta, v_end, in_window, alpha, search_budget=0)
    assert sum(whole.settled[1:]) > 0
    assert apart.settled == whole.settled
    assert torch.equal(apart.uncertified, whole.uncertified)


@pytest.mark.parametrize("name", ["residual", "inception", "inverted"])
def test_networks_simulate_the_same_with_gathered_stages(name, monkeypatch):
    model = branchy.build(name)
    x = branchy.inputs(name, 24)
    snn = ttfs_core.convert(model, x[:16], margin=0.05)
    monkeypatch.setattr(certify_module, "GATHER_COST", 1e30)
    dense = snn.run(x[16:])
    monkeypatch.setattr(certify_module, "GATHER_COST", 0.0)
    gathered = snn.run(x[16:])
    for a, b in zip(dense.layers, gathered.layers):
        assert a.certificate == b.certificate and a.searched == b.searched
        assert torch.equal(a.offsets, b.offsets)
    assert torch.equal(dense.logits, gathered.logits)


def _count_ann(monkeypatch) -> Counter:
    calls: Counter = Counter()
    ann = Layer.ann

    def counted(self, acts):
        calls[self.name] += next(a for a in acts if a is not None).shape[0]  # inputs through this layer
        return ann(self, acts)

    monkeypatch.setattr(Layer, "ann", counted)
    return calls


@pytest.mark.parametrize("builder", [lambda: (nets.build("cnn"), nets.inputs("cnn", 200)),
                                     lambda: (branchy.build("inception"), branchy.inputs("inception", 200))])
def test_calibration_runs_the_network_once_over_the_data(builder, monkeypatch):
    """Every hidden layer sees the calibration inputs once, plus at most one input per layer (each X_n's setter
    beyond the first PEAK_SAMPLE inputs, run again for the peak drive); the readout is never computed."""
    model, x = builder()
    calls = _count_ann(monkeypatch)
    snn = ttfs_core.convert(model, x)
    for layer in snn.layers:
        assert len(x) <= calls[layer.name] <= len(x) + len(snn.layers), layer.name
    assert calls[snn.output.name] == 0


def _uneven(n):
    from tests.test_peak_drive import Uneven  # a layer whose peak drive P_n lies far above its X_n

    return Uneven().double().eval(), torch.rand(n, 2, generator=torch.Generator().manual_seed(3),
                                                dtype=torch.float64)


@pytest.mark.parametrize("name,neuron", [("uneven", "alpha"), ("uneven", "b1"), ("inception", "alpha"),
                                         ("residual", "alpha")])
def test_kept_activations_give_the_windows_of_running_the_sample_again(name, neuron, monkeypatch):
    model, x = _uneven(150) if name == "uneven" else (branchy.build(name), branchy.inputs(name, 150))
    batches = [x[:50], x[50:]]  # the first PEAK_SAMPLE inputs span two batches; setters lie beyond them
    kept = ttfs_core.convert(model, batches, neuron=neuron)
    with monkeypatch.context() as mp:  # one input per chunk: the first inputs do not fit, so they are run again
        mp.setattr(ttfs_core.network, "BATCH_ELEMENTS", 1)
        again = ttfs_core.convert(model, batches, neuron=neuron)
    with monkeypatch.context() as mp:  # the reference: P_n on the sample run again in one piece
        mp.setattr(passes, "calibrate", _calibrate_by_hand)
        by_hand = ttfs_core.convert(model, batches, neuron=neuron)
    for a, b, c in zip(kept.layers, again.layers, by_hand.layers):
        assert a.max_activation == pytest.approx(b.max_activation, rel=1e-12)
        assert a.max_activation == pytest.approx(c.max_activation, rel=1e-12)
        assert a.peak_drive == pytest.approx(b.peak_drive, rel=1e-12)
        assert a.peak_drive == pytest.approx(c.peak_drive, rel=1e-12)
    if name == "uneven":
        assert any(la.peak_drive > 3 * la.max_activation for la in kept.layers)


def _calibrate_by_hand(snn, batches):
    """X_n and the setters from `activations` on all the data at once; P_n on the first PEAK_SAMPLE inputs and
    the setters, as MATH §4 states it."""
    x = torch.cat(batches)
    acts = snn.activations(x)[1:]
    maxima = [float(a.max()) for a in acts]
    setters = {int(a.flatten(1).amax(1).argmax()) for a in acts} - set(range(passes.PEAK_SAMPLE))
    sample = torch.cat([x[:passes.PEAK_SAMPLE], x[sorted(setters)]])
    from dataclasses import replace

    peaks = passes._peak_drives(snn, sample, maxima)
    return replace(snn, layers=tuple(replace(la, max_activation=m, peak_drive=p)
                                     for la, m, p in zip(snn.layers, maxima, peaks)))


def test_stream_lets_an_activation_go_after_its_last_reader():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                          nn.Linear(8, 3)).double().eval()
    x = torch.rand(5, 6, dtype=torch.float64)
    snn = ttfs_core.convert(model, x)
    refs = []
    for (m, a), ref in zip(snn.stream(x), snn.activations(x)):
        assert torch.equal(a, ref)
        refs.append(weakref.ref(a))
        del a
        gc.collect()
        if m >= 1:  # a chain: the input and every layer before the previous one are gone
            assert all(r() is None for r in refs[:-2]), m
    assert len(refs) == len(snn.layers) + 1


def test_check_finite_remembers_only_finite_tensors_and_still_catches_a_new_one():
    model = nets.build("mlp")
    x = nets.inputs("mlp", 32)
    snn = ttfs_core.convert(model, x)
    checked = weakref.WeakValueDictionary()
    assert passes.check_finite(snn, checked) is snn
    assert len(checked) > 0
    from dataclasses import replace

    layer = snn.layers[0]
    bad = replace(layer, theta=layer.theta.clone().fill_(float("inf")))  # a pass that made a new, infinite tensor
    with pytest.raises(ttfs_core.ConversionError, match="theta overflows"):
        passes.check_finite(replace(snn, layers=(bad, *snn.layers[1:])), checked)
    assert all(torch.isfinite(t).all() for t in checked.values())


def _syn(source, in_shape, weight, conv=None, channels=None):
    return Synapses(source, (), in_shape, weight, conv, channels=channels, J=weight)


def test_merged_products_give_the_sum_of_each_inputs_product():
    """`dynamics.merged`: inputs of one geometry driving the same channels share one product (their inputs and
    weights concatenated); others stay apart. The weighted sum equals the sum of each input's own product."""
    g = torch.Generator().manual_seed(0)
    conv = {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "groups": 1}
    other = {**conv, "padding": (0, 0)}
    shape = (6, 8, 8)
    xs = [torch.rand(3, c, 8, 8, generator=g, dtype=torch.float64) for c in (4, 2, 5, 3)]
    ws = [torch.randn(*s, generator=g, dtype=torch.float64) for s in ((6, 4, 3, 3), (6, 2, 3, 3), (3, 5, 1, 1),
                                                                       (6, 3, 1, 1))]
    inputs = [_syn(0, (4, 8, 8), ws[0], conv), _syn(1, (2, 8, 8), ws[1], conv),
              _syn(2, (5, 8, 8), ws[2], other, channels=(3, 6)), _syn(3, (3, 8, 8), ws[3], other)]
    products = dynamics.merged(inputs, xs, ws)
    assert len(products) == 3 and products[0][1].shape[1] == 6  # the two 3x3 convolutions share one product
    expected = torch.zeros(3, *shape, dtype=torch.float64)
    for syn, x, w in zip(inputs, xs, ws):
        part = F.conv2d(x, w, None, **syn.conv)
        if syn.channels is None:
            expected += part
        else:
            expected[:, syn.channels[0]:syn.channels[1]] += part
    torch.testing.assert_close(dynamics.weighted_sum(inputs, xs, ws, shape), expected, rtol=0, atol=1e-12)
    dense_x = [torch.rand(3, *s, generator=g, dtype=torch.float64) for s in ((7,), (1, 2, 2))]
    dense_w = [torch.randn(5, n, generator=g, dtype=torch.float64) for n in (7, 4)]
    dense = [_syn(0, (7,), dense_w[0]), _syn(1, (1, 2, 2), dense_w[1])]
    assert len(dynamics.merged(dense, dense_x, dense_w)) == 1
    torch.testing.assert_close(dynamics.weighted_sum(dense, dense_x, dense_w, (5,)),
                               dense_x[0] @ dense_w[0].T + dense_x[1].flatten(1) @ dense_w[1].T, rtol=0, atol=1e-12)
