"""Saving and loading converted networks: bit-for-bit round trips, no code in the file, clear errors, and hostile
files: every crafted or damaged file ends in one NetworkFileError naming the field, quickly."""

from __future__ import annotations

import copy
import itertools
import pickle
import random
import struct

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import ttfs_core
from ttfs_core import NetworkFileError, persist
from ttfs_core.untrusted import network_schema

from . import nets
from . import network_attacks as na
from .helpers import ChildWorker, converted, in_child


@pytest.mark.parametrize("name", ["mlp", "functional", "cnn"])
@pytest.mark.parametrize("neuron", ["alpha", "b1"])
def test_round_trip_is_bit_for_bit(tmp_path, name, neuron):
    model, snn, x = converted(name, neuron=neuron)
    path = tmp_path / "net.safetensors"
    ttfs_core.save(snn, path)
    back = ttfs_core.load(path)
    assert back.summary() == snn.summary() and back.dtype == snn.dtype and back.neuron.name == neuron
    a, b = snn.run(x), back.run(x)
    assert torch.equal(a.logits, b.logits)
    for la, lb in zip(a.layers, b.layers):
        assert torch.equal(la.offsets, lb.offsets) and torch.equal(la.spike_times, lb.spike_times)
    s1, s2 = snn.run_stepped(x, steps=32), back.run_stepped(x, steps=32)
    assert torch.equal(s1.logits, s2.logits)
    # the loaded network still compares against the original model
    assert all(c.max_rel_error < 1e-9 for c in ttfs_core.compare(model, back, x))


def test_round_trip_float32_positive_and_readout_ops(tmp_path):
    """float32 and the positive rescaling load too, and so does a readout holding every op kind the converter
    puts after the last weighted sum (max/avg/adaptive pooling, affine, reshape)."""
    _, snn32, x32 = converted("cnn", dtype=torch.float32, rescale="positive")
    g = torch.Generator().manual_seed(5)
    xr = torch.rand(8, 2, 16, 16, generator=g, dtype=torch.float64)
    for snn, x in ((snn32, x32), (na.base_network("readout"), xr)):
        path = tmp_path / "net.safetensors"
        ttfs_core.save(snn, path)
        back = ttfs_core.load(path)
        assert back.dtype == snn.dtype and back.rescale == snn.rescale
        assert [op.kind for op in back.output.readout] == [op.kind for op in snn.output.readout]
        a, b = snn.run(x), back.run(x)
        assert torch.equal(a.logits, b.logits)
        for la, lb in zip(a.layers, b.layers):
            assert torch.equal(la.offsets, lb.offsets)
    # the BatchNorm right after the last conv is folded into the readout's weights; the one after the pooling stays
    assert [op.kind for op in back.output.readout] == ["maxpool", "affine", "avgpool", "adaptive_avgpool", "reshape"]


def _same_run(snn, back, x, stepped: bool = True) -> None:
    """Bit for bit: the same logits and spike times, event-driven and clock-driven."""
    a, b = snn.run(x), back.run(x)
    assert torch.equal(a.logits, b.logits)
    assert len(a.layers) == len(b.layers)
    for la, lb in zip(a.layers, b.layers):
        assert torch.equal(la.offsets, lb.offsets) and torch.equal(la.spike_times, lb.spike_times)
    if stepped:
        assert torch.equal(snn.run_stepped(x, steps=16).logits, back.run_stepped(x, steps=16).logits)


def _same_tensor(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


def _same_synapses(sa, sb) -> None:
    assert (sa.source, sa.in_shape, sa.conv, sa.channels, sa.in_window, sa.delay) == \
           (sb.source, sb.in_shape, sb.conv, sb.channels, sb.in_window, sb.delay)
    assert _same_tensor(sa.weight, sb.weight) and _same_tensor(sa.J, sb.J) and len(sa.route) == len(sb.route)
    for pa, pb in zip(sa.route, sb.route):
        assert (pa.kernel_size, pa.stride, pa.padding, pa.dilation, pa.ceil_mode) == \
               (pb.kernel_size, pb.stride, pb.padding, pb.dilation, pb.ceil_mode)
        assert _same_tensor(pa.sign, pb.sign)


@pytest.mark.parametrize("neuron", ["alpha", "b1"])
def test_round_trip_of_a_branching_network(tmp_path, neuron):
    """Layers of several inputs (a residual add, a channel concatenation with a delayed input) and a ReLU6 layer
    (format version 2): the loaded network is the same, field for field, and runs bit for bit."""
    snn = na.base_network("branch", neuron=neuron)
    path = tmp_path / "branch.safetensors"
    ttfs_core.save(snn, path)
    desc, _ = na.read(path)
    assert desc["version"] == persist.VERSION == 2
    back = ttfs_core.load(path)
    assert back.summary() == snn.summary() and back.neuron.name == neuron
    assert [len(la.inputs) for la in back.layers] == [1, 2, 1, 2]  # the add and the concatenation
    assert back.layers[2].clip == snn.layers[2].clip == back.layers[2].window
    assert any(syn.delay > 0 for syn in back.layers[3].inputs)
    for la, lb in zip(snn.all_layers, back.all_layers):
        assert (la.clip, la.in_window, la.start) == (lb.clip, lb.in_window, lb.start)
        for sa, sb in zip(la.inputs, lb.inputs, strict=True):
            _same_synapses(sa, sb)
    x = na.branch_inputs(12, seed=7)
    _same_run(snn, back, x)
    with torch.no_grad():
        ref = na.branch_model()(x)
    assert float((back.run(x).logits - ref).abs().max()) < 1e-9 * float(ref.abs().max())


@pytest.mark.parametrize("neuron", ["alpha", "b1"])
def test_version_1_files_still_load(tmp_path, neuron):
    """A file in the version-1 layout (one input per layer, its fields on the layer) loads into one-input layers
    that run exactly like the network it was written from; saved again, it is a version-2 file."""
    snn = na.base_network("conv", neuron=neuron)
    old = tmp_path / "v1.safetensors"
    na.write_v1(snn, old)
    desc, tensors = na.read(old)
    assert desc["version"] == 1 and "source" in desc["layers"][0] and "layers.0.weight" in tensors
    back = ttfs_core.load(old)
    for la, lb in zip(snn.all_layers, back.all_layers):
        (syn,) = lb.inputs
        assert (syn.channels, syn.delay, lb.clip) == (None, 0.0, None) and syn.in_window == lb.in_window
        _same_synapses(la.inputs[0], syn)
    x = nets.inputs("functional", 12, seed=3)
    _same_run(snn, back, x)
    new = tmp_path / "v2.safetensors"
    ttfs_core.save(back, new)
    assert na.read(new)[0]["version"] == 2
    _same_run(back, ttfs_core.load(new), x, stepped=False)


def test_file_has_no_pickle(tmp_path):
    _, snn, _ = converted("cnn")
    path = tmp_path / "net.safetensors"
    ttfs_core.save(snn, path)
    raw = path.read_bytes()
    assert b"\x80\x04" not in raw[:64] and raw[8:9] == b"{"  # a JSON header, not a pickle stream


def test_bad_files(tmp_path):
    with pytest.raises(NetworkFileError, match="no such file"):
        ttfs_core.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(NetworkFileError, match="not a safetensors"):
        ttfs_core.load(junk)
    pick = tmp_path / "evil.safetensors"
    pick.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(NetworkFileError):
        ttfs_core.load(pick)
    plain = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(NetworkFileError, match="not a converted network"):
        ttfs_core.load(plain)
    damaged = tmp_path / "damaged.safetensors"
    save_file({"w": torch.zeros(2)}, str(damaged), metadata={"ttfs": '{"format": "ttfs-network", "version": 1}'})
    with pytest.raises(NetworkFileError, match=r"layers: missing \(a required field\)"):
        ttfs_core.load(damaged)


# --- hostile files ------------------------------------------------------------------------------------------------
def _load_and_run(path: str) -> tuple[str, str]:
    """ttfs_core.load(path) and, if it loads, a run on one input: ("rejected", the message) or ("ran", "")."""
    try:
        snn = ttfs_core.load(path)
    except NetworkFileError as exc:
        return "rejected", str(exc)
    p, q = snn.input_range
    snn.run(torch.rand(1, *snn.input_shape, dtype=snn.dtype) * (q - p) + p)
    return "ran", ""


@pytest.fixture(scope="module")
def loader():
    """A child process that loads this module's many hostile files one after another (helpers.ChildWorker): a
    fork per file would cost more than the load."""
    worker = ChildWorker(wall_seconds=120)
    yield worker
    worker.close()


def load_in_child(path, child: ChildWorker | None = None, cpu_seconds: float = 10.0,
                  megabytes: float = 256.0) -> tuple[str, str, float]:
    """`_load_and_run(path)` in a child process: `child`, or a fresh fork of this process (which sees what the test
    monkeypatched). Its outcome and CPU seconds; fails on any other exception, on more than `cpu_seconds` of CPU
    time, on a hang (no answer in 120 s), or if the child's peak memory grew by more than `megabytes` (measured in
    the child: this process's lifetime peak is whatever the largest earlier test reached, and would hide it)."""
    if child is None:
        (kind, message), grown, cpu = in_child(_load_and_run, str(path), wall_seconds=120)
    else:
        (kind, message), grown, cpu = child.call(_load_and_run, str(path))
    assert cpu < cpu_seconds, f"took {cpu:.1f} s of CPU time"
    assert grown < megabytes, f"peak memory grew by {grown:.0f} MiB"
    return kind, message, cpu


def rejected(path, child: ChildWorker | None = None) -> str:
    """Load `path` (in `child`, or a fresh fork), expecting one NetworkFileError, quickly and in little memory; return
    its message without the path."""
    kind, message, _ = load_in_child(path, child)
    assert kind == "rejected", f"{path} loaded"
    assert "\n" not in message and message.startswith(f"{path}: "), message
    message = message[len(str(path)) + 2:]
    assert len(message) < 300, message
    return message


@pytest.fixture
def bases(network_bases):
    """The real saved networks the attacks start from (conftest.py)."""
    return network_bases


def test_attack_bases_are_valid(bases):
    for path in bases.values():
        snn = ttfs_core.load(path)
        p, q = snn.input_range
        assert torch.isfinite(snn.run(torch.rand(2, *snn.input_shape, dtype=snn.dtype) * (q - p) + p).logits).all()


@pytest.mark.parametrize("attack", na.ATTACKS, ids=lambda a: a.name)
def test_crafted_file_is_rejected(bases, loader, tmp_path, attack):
    path = tmp_path / f"{attack.name}.safetensors"
    na.craft(attack, bases[attack.base], path)
    assert path.stat().st_size < 1 << 20  # every crafted file is small
    message = rejected(path, loader)
    assert attack.field in message, message


def test_messages_name_the_field_and_what_is_allowed(bases, tmp_path):
    branch, _ = na.read(bases["branch"])
    delay = branch["layers"][3]["t_min"] - branch["layers"][1]["t_max"]
    expected = {
        "conv_stride_zero": "layers[0].inputs[0].conv.stride: expected two integers ≥ 1, got [0, 1]",
        "version_infinity": "version: expected an integer in [1, 2] (the format versions this ttfs_core reads), "
                            "got Infinity",
        "source_forward": "layers[1].inputs[0].source: expected an integer in [-1, 0] (an earlier layer, or -1 for "
                          "the input), got 2",
        "readout_kind_linear": 'output.readout[0].kind: expected one of "affine", "reshape", "maxpool", "avgpool", '
                               '"adaptive_avgpool", "identity", got "linear"',
        "sign_wrong_length": "layers[2].inputs[0].route[0].sign: expected [10] (one value per channel), got [9]",
        "duplicate_top_key": 'description: the key "version" appears twice',
        "missing_t_min": "layers[1].t_min: missing (a required field)",
        "channels_past_the_layer": "layers[3].inputs[1].channels: expected null (all channels) or two integers "
                                   "[lo, hi] with 0 ≤ lo < hi ≤ 8 (the layer's channels), got [4, 9]",
        "source_not_earlier": "layers[3].inputs[1].source: expected an integer in [-1, 2] (an earlier layer, or -1 "
                              "for the input), got 3",
        "delay_dropped": f"layers[3].inputs[1].delay: expected {delay!r} (t_min − t_max of layers[1]), got 0.0",
        "in_window_of_another_source": f"layers[3].inputs[1].in_window: expected {branch['layers'][1]['window']!r} "
                                       f"(the window of layers[1]), got {branch['layers'][2]['window']!r}",
        "clip_not_window": f"layers[2].clip: expected {branch['layers'][2]['window']!r} (a clipped layer saturates at "
                           "the end of its window: clip = window), got 6.0",
        "sliced_weight_full_width": "layers[3].inputs[1].weight: expected [4, 8] (its first two dimensions: out "
                                    "channels (channels 4 to 7), in channels / groups = 8 / 1), got [8, 8]",
        "second_input_missing_delay": "layers[1].inputs[1].delay: missing (a required field)",
        "v1_source_forward": "layers[1].source: expected an integer in [-1, 0] (an earlier layer, or -1 for the "
                             "input), got 2",
    }
    attacks = {a.name: a for a in na.ATTACKS}
    for name, message in expected.items():
        path = tmp_path / f"{name}.safetensors"
        na.craft(attacks[name], bases[attacks[name].base], path)
        assert rejected(path) == message


def test_header_claiming_tensors_larger_than_the_file(tmp_path):
    for name, path in na.raw_attacks(tmp_path):
        assert path.stat().st_size < 1024
        assert rejected(path).startswith("not a safetensors file"), name


def test_size_limits(bases, tmp_path, monkeypatch):
    """Our own limits on declared sizes, checked from the header before any tensor is read (lowered here so that a
    small file reaches them)."""
    monkeypatch.setattr(network_schema, "MAX_TENSOR_ELEMENTS", 1000)
    assert rejected(bases["conv"]) == 'tensor "layers.2.inputs.0.J": declares 2160 elements; at most 1000'
    monkeypatch.undo()
    monkeypatch.setattr(network_schema, "MAX_TOTAL_ELEMENTS", 5000)
    assert rejected(bases["conv"]).startswith("tensors: declare ")
    monkeypatch.undo()
    monkeypatch.setattr(network_schema, "MAX_DESCRIPTION_CHARS", 100)
    assert rejected(bases["conv"]).startswith("description: ")
    monkeypatch.undo()
    monkeypatch.setattr(network_schema, "MAX_TENSOR_ELEMENTS", 100)
    assert rejected(bases["conv"]).startswith("input_shape: expected a shape")  # a declared shape of 512 elements


@pytest.mark.parametrize("base, name, field", [
    ("readout", "readout_shift_nan", "output.readout[1].params.shift: "),
    ("branch", "second_input_J_nan", "layers[1].inputs[1].J: "),
])
def test_nothing_is_built_before_everything_is_checked(bases, tmp_path, monkeypatch, base, name, field):
    """The last check (the values of the tensors) still comes before any Layer or Synapses is built."""
    attack = next(a for a in na.ATTACKS if a.name == name)
    assert attack.base == base
    path = tmp_path / "late.safetensors"
    na.craft(attack, bases[base], path)

    def no_layer(*args, **kwargs):
        raise AssertionError("a Layer was built from a file that fails its checks")

    monkeypatch.setattr(persist, "Layer", no_layer)
    monkeypatch.setattr(persist, "Synapses", no_layer)
    assert rejected(path).startswith(field)


def test_output_sizes_match_torch():
    """The loader's pooling and convolution output sizes are PyTorch's (it checks files without running them)."""
    x = torch.zeros(1, 1, 7, 9)
    for k, s, p, d, ceil in itertools.product((1, 2, 3), (1, 2, 3), (0, 1), (1, 2), (False, True)):
        if p > k // 2:
            continue
        want = [network_schema.pool_output(n, k, s, p, d, ceil) for n in (7, 9)]
        try:
            got = list(F.max_pool2d(x, k, s, p, d, ceil).shape[2:])
        except RuntimeError:
            got = None
        assert (got is None and min(want) < 1) or got == want, (k, s, p, d, ceil)
        if d == 1:
            try:
                got = list(F.avg_pool2d(x, k, s, p, ceil).shape[2:])
            except RuntimeError:
                got = None
            assert (got is None and min(want) < 1) or got == want, (k, s, p, ceil)
        w = torch.zeros(1, 1, k, k + 1)
        want = [network_schema.conv_output(7, k, s, p, d), network_schema.conv_output(9, k + 1, s, p, d)]
        try:
            got = list(F.conv2d(x, w, None, s, p, d).shape[2:])
        except RuntimeError:
            got = None
        assert (got is None and min(want) < 1) or got == want, (k, s, p, d)


def _mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One random damage: bytes of the header changed, digits of the description changed, bytes anywhere (mostly
    tensor data) changed, or the file cut short."""
    out = bytearray(data)
    head = 8 + struct.unpack("<Q", data[:8])[0]
    mode = rng.choice(["header", "header", "digits", "anywhere", "truncate"])
    if mode == "truncate":
        return mode, bytes(out[:rng.randrange(len(out))])
    if mode == "digits":
        digits = [k for k in range(8, head) if 48 <= out[k] <= 57]
        for _ in range(rng.randint(1, 3)):
            out[rng.choice(digits)] = rng.randint(48, 57)
        return mode, bytes(out)
    lo, hi = (8, head) if mode == "header" else (0, len(out))
    for _ in range(rng.randint(1, 4)):
        out[rng.randrange(lo, hi)] = rng.randrange(256)
    return mode, bytes(out)


def test_fuzzed_files_fail_cleanly(bases, loader, tmp_path):
    """Seeded random damage to valid files: each ends in a NetworkFileError, or loads into a network that runs on
    one input; never another exception, a hang or a memory blow-up."""
    rng = random.Random(14)
    outcomes = {"rejected": 0, "ran": 0}
    cpu = 0.0
    for case in range(200):
        name = na.BASES[case % len(na.BASES)]
        mode, data = _mutate(bases[name].read_bytes(), rng)
        path = tmp_path / f"fuzz{case}.safetensors"
        path.write_bytes(data)
        kind, message, seconds = load_in_child(path, loader)
        assert "\n" not in message, (case, mode)
        outcomes[kind] += 1
        cpu += seconds
    assert outcomes["rejected"] > 100 and outcomes["ran"] > 10, outcomes  # both paths were exercised
    assert cpu < 60  # CPU seconds of the 200 loads


def test_fuzzed_descriptions_fail_cleanly(bases, loader, tmp_path):
    """Seeded random edits of the description's fields (other types, out-of-range values, deletions): each ends in
    a NetworkFileError or loads into a network that runs on one input."""
    rng = random.Random(41)
    originals = {name: na.read(path) for name, path in bases.items()}
    outcomes = {"rejected": 0, "ran": 0}
    for case in range(200):
        name = na.BASES[case % len(na.BASES)]
        desc, tensors = copy.deepcopy(originals[name][0]), dict(originals[name][1])
        na.mutate_description(desc, tensors, rng)
        path = tmp_path / f"fuzz{case}.safetensors"
        na.write(path, desc, tensors)
        kind, message, _ = load_in_child(path, loader)
        assert "\n" not in message, case
        outcomes[kind] += 1
    assert outcomes["rejected"] > 100, outcomes
