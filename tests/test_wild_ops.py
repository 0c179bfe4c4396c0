"""The linear operations of ReLU-family networks in the wild (timm families, detection and segmentation backbones):
average pooling with ceil_mode / count_include_pad=False / divisor_override, nearest and bilinear upsampling, zero
padding and cropping, scaled residuals and per-channel factors, pre-activation residual streams, models torch.fx
cannot trace (captured with torch.export, and said so), and the refusals of what stays unsupported, each naming its
node. The original model is the oracle for the logits and every spiking layer (float64, 1e-9)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import ttfs_core
from ttfs_core import ConversionError
from ttfs_core.untrusted import allowlist, load_model

from . import nets
from .helpers import check_exact

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


class Around(nn.Module):
    """conv → ReLU (spikes; `relu_first`) or the conv alone (a linear node), then `mid`, then a 1×1 conv + BN + ReLU
    and a Linear readout: the op under test between two spiking layers. `mid(m, h)` may use m.c (a 3×3 conv with a
    stored weight), m.p (a 1×1 conv), m.gamma (per-channel factors), m.pos (a factor per position), m.rep
    (ReplicationPad2d), m.b2 (a zero-padded 3×3 conv) and `modules`."""

    def __init__(self, mid, relu_first: bool = True, size: int = 9, channels: int = 4, **modules: nn.Module):
        super().__init__()
        torch.manual_seed(0)
        for name, module in modules.items():
            self.add_module(name, module)
        self.a = nn.Conv2d(3, channels, 3, padding=1)
        self.p, self.b2 = nn.Conv2d(channels, channels, 1), nn.Conv2d(channels, channels, 3, padding=1)
        self.b, self.bn = nn.Conv2d(channels, 5, 1), nn.BatchNorm2d(5)
        self.rep = nn.ReplicationPad2d(1)
        self.gamma = nn.Parameter(torch.rand(channels) + 0.5)
        self.register_buffer("w", torch.randn(channels, channels, 3, 3) * 0.3)
        self.register_buffer("pos", torch.rand(1, 1, size, size))
        self.mid, self.relu_first, self.size = mid, relu_first, size
        with torch.no_grad():
            shape = self._features(torch.zeros(1, 3, size, size)).shape
        self.fc = nn.Linear(shape.numel(), 3)
        nets.randomise_bn(self, 1)

    def c(self, v, padding: int = 0):
        return F.conv2d(v, self.w, padding=padding)

    def _features(self, x):
        h = self.a(x)
        h = F.relu(h) if self.relu_first else h
        return F.relu(self.bn(self.b(self.mid(self, h))))

    def forward(self, x):
        return self.fc(self._features(x).flatten(1))


def _inputs(size: int, n: int = 12) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def _exact(model: nn.Module, size: int):
    model = model.double().eval()
    x = _inputs(size)
    snn = ttfs_core.convert(model, x, input_range=(0.0, 1.0))
    check_exact(model, snn, x)
    return snn


def _relays(snn) -> list:
    return [layer for layer in snn.layers if layer.op.startswith("relay")]


# --- average pooling: per-position divisors ----------------------------------------------------------------------
POOLS = {
    "resnet-d shortcut": (nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False), {8: False, 9: True}),
    "inception branch": (nn.AvgPool2d(3, 1, 1, count_include_pad=False), {8: True, 9: True}),
    "ceil_mode with padding": (nn.AvgPool2d(3, 2, 1, ceil_mode=True), {8: True, 9: False}),
    "divisor_override": (nn.AvgPool2d(3, 2, 1, ceil_mode=True, divisor_override=5), {8: False, 9: False}),
}


@pytest.mark.parametrize("size", [8, 9])
@pytest.mark.parametrize("name", list(POOLS))
def test_average_pooling_variants_are_exact(name, size):
    """A divisor the same at every position is one convolution (an asymmetric ceil_mode window: a longer kernel);
    one that changes at the border keeps the interior's and relays the border rows and columns."""
    pool, border = POOLS[name]
    snn = _exact(Around(lambda m, h: m.pool(h), size=size, pool=pool), size)
    assert bool(_relays(snn)) == border[size]


def test_a_saved_network_with_relays_runs_the_same_and_says_why_it_cannot_be_compared(tmp_path):
    """A relay layer's probe reads the model through ops kept in memory, not in the file: the loaded copy simulates
    bit for bit like the converted one, and comparing it with the model is refused with a message, not a crash."""
    model = Around(lambda m, h: m.pool(h), size=9, pool=nn.AvgPool2d(3, 1, 1, count_include_pad=False))
    snn = _exact(model, 9)
    assert _relays(snn)
    ttfs_core.save(snn, tmp_path / "relays.safetensors")
    back = ttfs_core.load(tmp_path / "relays.safetensors")
    x = _inputs(9, 4)
    a, b = snn.run(x), back.run(x)
    assert torch.equal(a.logits, b.logits)
    assert all(torch.equal(la.offsets, lb.offsets) for la, lb in zip(a.layers, b.layers))
    with pytest.raises(ValueError, match="relay layer of a saved network cannot be read from the model"):
        ttfs_core.compare(model.double().eval(), back, x)


def test_average_pooling_of_a_linear_node_is_exact():
    """count_include_pad=False on a 1×1 conv without ReLU (values of both signs): + and − relays."""
    pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
    snn = _exact(Around(lambda m, h: m.pool(m.p(h)), size=6, pool=pool), 6)
    relays = _relays(snn)  # first and last column, then first and last row: channels × (+, −) each
    assert len(relays) == 4 and {layer.shape[0] for layer in relays} == {4 * 2}


# --- upsampling ------------------------------------------------------------------------------------------------
UPSAMPLING = {
    "nearest x2": lambda m, h: F.interpolate(h, scale_factor=2),
    "nearest to a size": lambda m, h: F.interpolate(h, size=(9, 11)),
    "nearest-exact x1.5": lambda m, h: F.interpolate(h, scale_factor=1.5, mode="nearest-exact"),
    "bilinear": lambda m, h: F.interpolate(h, scale_factor=2, mode="bilinear"),
    "bilinear, align_corners": lambda m, h: nn.functional.upsample_bilinear(h, scale_factor=2),
    "hrnet fusion (1×1 conv, then nearest)": lambda m, h: F.interpolate(m.p(h), scale_factor=2) + 0.5,
    "from a global pool (ASPP)": lambda m, h: F.interpolate(F.relu(m.p(F.adaptive_avg_pool2d(h, 1))), size=(5, 5),
                                                          mode="bilinear"),
}


@pytest.mark.parametrize("name", list(UPSAMPLING))
def test_upsampling_is_exact(name):
    snn = _exact(Around(UPSAMPLING[name], size=4), 4)
    assert bool(_relays(snn)) == (name != "from a global pool (ASPP)")  # from 1×1: one convolution


def test_upsampling_module_of_a_linear_node_and_of_spikes():
    """nn.Upsample of a conv without ReLU (signed: + and − relays) and of spikes (no − relay)."""
    for relu_first in (False, True):
        model = Around(lambda m, h: m.up(h), relu_first=relu_first, size=4, up=nn.Upsample(scale_factor=2))
        snn = _exact(model, 4)
        pixels, upsampled = _relays(snn)
        assert pixels.shape == (4 * 16 * (1 if relu_first else 2), 1, 1)
        assert upsampled.shape == (4 * (1 if relu_first else 2), 8, 8)


# --- padding, cropping, factors -------------------------------------------------------------------------------
SHAPING = {
    "ZeroPad2d before a conv": lambda m, h: m.c(nn.functional.pad(h, (1, 0, 2, 1))),
    "F.pad then the ReLU": lambda m, h: F.pad(h, (1, 2, 0, 1)),
    "crop (negative pad)": lambda m, h: m.c(F.pad(h, (-1, 0, 0, -2))),
    "pad and crop": lambda m, h: m.c(F.pad(h, (-1, 2, 1, -2))),
    "spatial slice": lambda m, h: m.c(h[..., 1:-1, 2:]),
    "channel pad": lambda m, h: F.pad(h, (0, 0, 0, 0, 1, 0))[:, :4],
    "scaled residual": lambda m, h: F.relu(m.c(h, 1)) * 0.17 + h,
    "layer scale": lambda m, h: h + F.relu(m.c(h, 1)).mul(m.gamma.view(1, -1, 1, 1)),
    "per-channel division and offset": lambda m, h: h / m.gamma.view(-1, 1, 1) + m.gamma.view(1, -1, 1, 1),
}


@pytest.mark.parametrize("name", list(SHAPING))
def test_padding_cropping_and_per_channel_factors_are_exact(name):
    _exact(Around(SHAPING[name], size=8), 8)


def test_zero_pad_module_before_a_strided_conv_is_exact():
    """TF-"same" padding: nn.ZeroPad2d((0, 1, 0, 1)) then a 3×3 conv of stride 2 without padding."""
    model = Around(lambda m, h: m.s(m.z(h)), size=8, z=nn.ZeroPad2d((0, 1, 0, 1)), s=nn.Conv2d(4, 4, 3, 2))
    _exact(model, 8)


# --- refusals ----------------------------------------------------------------------------------------------------
REFUSED = {
    "reflect padding": (lambda m, h: F.pad(h, (1, 1, 1, 1), mode="reflect"),
                        r"^pad \(torch\.nn\.functional\.pad\): reflect padding is not supported; zero padding"),
    "padding with 1": (lambda m, h: F.pad(h, (1, 1, 1, 1), value=1.0), r"padding with the constant 1\.0 is not"),
    "replicate module": (lambda m, h: m.rep(h), r"^rep \(ReplicationPad2d\): replicate padding is not supported"),
    "bicubic": (lambda m, h: F.interpolate(h, scale_factor=2, mode="bicubic"),
                r"^interpolate .*: interpolation mode 'bicubic' is not supported; nearest"),
    "a factor per position": (lambda m, h: h * m.pos, r"^mul .*change with the position; a factor per channel"),
    "a pad after a padded conv": (lambda m, h: F.pad(m.b2(h), (1, 1, 1, 1)),
                                  r"^pad reads a convolution without a ReLU between them"),
    "a big upsampling": (lambda m, h: F.adaptive_avg_pool2d(F.interpolate(h, size=(160, 160)), 8),
                         r"^interpolate .*over the limit of .*; supported on smaller maps"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_unsupported_variants_are_refused_by_name(name):
    fn, message = REFUSED[name]
    model = Around(fn, size=8).double().eval()
    with pytest.raises(ConversionError, match=message) as e:
        ttfs_core.convert(model, _inputs(8, 4))
    assert e.value.node


class _XceptionBlock(nn.Module):
    """Xception's block: a conv with BN, max pooling of the BN output (no ReLU), plus a strided shortcut."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.pool = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.MaxPool2d(3, 2, 1)
        self.skip, self.fc = nn.Conv2d(3, 4, 1, stride=2), nn.Linear(64, 2)

    def forward(self, x):
        return self.fc(F.relu(self.pool(self.bn(self.conv(x))) + self.skip(x)).flatten(1))


def test_max_pooling_without_a_relu_is_refused_naming_the_pool():
    model = nets.randomise_bn(_XceptionBlock(), 0).double().eval()
    with pytest.raises(ConversionError, match=r"^pool \(MaxPool2d\) max-pools BatchNorm2d, a value that no ReLU "
                                              r"produced, and add .* adds it before any ReLU: max pooling is "
                                              r"supported on a ReLU layer's output") as e:
        ttfs_core.convert(model, _inputs(8, 4))
    assert e.value.node == "pool"


# --- torch.export: the fallback of capture, and .pt2 uploads ------------------------------------------------------
class _ShapeTest(nn.Module):
    """Python control flow on a shape (as timm's VGG pre-logits): torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3), nn.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        h = F.relu(self.a(x))
        if h.shape[-1] < 7:
            h = F.adaptive_avg_pool2d(h, 7)
        return self.fc(F.relu(self.b(h)).flatten(1))


def test_a_model_fx_cannot_trace_is_captured_with_torch_export_and_says_so():
    torch.manual_seed(0)
    model = _ShapeTest().double().eval()
    snn = _exact(model, 5)
    notes = [d for layer in snn.layers for _, _, d in layer.absorbed if "torch.export" in d]
    assert notes and "torch.fx could not trace _ShapeTest" in notes[0]


class _Uploaded(nn.Module):
    """Every new aten operator of the allow-list: zero padding, count_include_pad=False, nearest and bilinear
    upsampling, a per-channel factor and a division."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Conv2d(1, 4, 3, stride=2), nn.Conv2d(4, 4, 3)
        self.gamma = nn.Parameter(torch.rand(4) + 0.5)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        h = F.relu(self.a(F.pad(x, (0, 1, 0, 1))))  # 6×6
        h = F.relu(F.avg_pool2d(h, 3, 1, 1, count_include_pad=False) * self.gamma.view(1, -1, 1, 1))
        h = F.relu(self.b(F.interpolate(h, scale_factor=2) / 2.0))  # 10×10
        h = F.interpolate(h, size=(6, 6), mode="bilinear")
        return self.fc(F.relu(h).flatten(1))


@pytest.mark.slow
def test_pt2_with_upsampling_and_padding_round_trips_through_the_untrusted_loader(tmp_path: Path):
    """Exported, saved, loaded through the sandbox and the allow-list (≈ 10 s: the sandbox starts), converted."""
    model = _Uploaded().double().eval()
    x = torch.rand(6, 1, 12, 12, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    program = torch.export.export(model, (x[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    names = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert {"aten.pad.default", "aten.upsample_nearest2d.vec", "aten.upsample_bilinear2d.vec",
            "aten.div.Tensor"} <= names
    torch.export.save(program, tmp_path / "m.pt2")
    loaded = load_model(tmp_path / "m.pt2")
    snn = ttfs_core.convert(loaded, x, input_range=(0.0, 1.0))
    check_exact(loaded, snn, x)
    with torch.no_grad():
        assert float((snn.run(x).logits - model(x)).abs().max()) <= 1e-9 * float(model(x).abs().max())


@pytest.mark.parametrize(("target", "args", "message"), [
    (torch.ops.aten.pad.default, ([1, 1], "reflect"), r"'reflect' padding \(only zero padding is lowered\)"),
    (torch.ops.aten.upsample_nearest2d.vec, (None, [0.0, 2.0]), r"scale factors \[0\.0, 2\.0\] must be > 0"),
    (torch.ops.aten.upsample_bilinear2d.vec, ([0, 4], False, None), r"output_size \[0, 4\] must be >= 1"),
    (torch.ops.aten.upsample_bilinear2d.vec, (None, 1, [2.0, 2.0]), r"'align_corners' is 1 where a bool"),
])  # fmt: skip
def test_new_operators_are_checked_by_the_allow_list(target, args, message):
    g = torch.fx.Graph()
    x = g.placeholder("x")
    g.output(g.call_function(target, (x, *args)))
    with pytest.raises(allowlist.GraphRefused, match=message):
        allowlist.check_graph(g)


# --- timm families (CI installs timm) --------------------------------------------------------------------------
def _timm_case(name: str, size: int, **kw):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kw)
    model = nets.randomise_bn(model, 0, negative=False).double().eval()
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return model, ttfs_core.convert(model, x, input_range=(0.0, 1.0)), x


@pytest.mark.slow
@pytest.mark.parametrize(("name", "size", "relays"), [
    ("resnet18d", 64, False), ("resnet18d", 56, True), ("resnetv2_50", 64, False), ("hrnet_w18_small", 32, True),
    ("inception_resnet_v2", 75, True),
])  # fmt: skip
def test_timm_families_are_exact(name, size, relays):
    """resnet18d: AvgPool2d(2, ceil_mode=True, count_include_pad=False) in the shortcut (64 px: even maps, one
    convolution; 56 px: a 7×7 map, partial windows and relays); resnetv2_50: pre-activation (BN-ReLU before each
    conv, a linear residual stream); hrnet_w18_small: nearest upsampling in its fusions; inception_resnet_v2:
    AvgPool2d(3, 1, 1, count_include_pad=False) and scaled residuals (x * 0.17 + shortcut)."""
    model, snn, x = _timm_case(name, size)
    check_exact(model, snn, x)
    assert bool(_relays(snn)) == relays


@pytest.mark.slow
def test_timm_vgg_is_captured_with_torch_export():
    model, snn, x = _timm_case("vgg11", 64, mlp_ratio=0.125)
    check_exact(model, snn, x)
    assert any("captured with torch.export" in d for _, _, d in snn.layers[0].absorbed)


@pytest.mark.slow
def test_timm_xception_is_refused_naming_its_pool():
    timm = pytest.importorskip("timm")
    model = nets.randomise_bn(timm.create_model("legacy_xception", num_classes=10), 0).double().eval()
    with pytest.raises(ConversionError, match=r"block1\.rep\.5 \(MaxPool2d\) max-pools .* before any ReLU"):
        ttfs_core.convert(model, torch.rand(2, 3, 64, 64, dtype=torch.float64))
