"""Saving and loading converted networks: bit-for-bit round trips, no code in the file, clear errors."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

import ttfs_core
from ttfs_core import NetworkFileError

from .test_core import converted


@pytest.mark.parametrize("name", ["mlp", "functional", "cnn"])
@pytest.mark.parametrize("neuron", ["alpha", "b1"])
def test_round_trip_is_bit_for_bit(tmp_path, name, neuron):
    model, snn, x = converted(name, neuron=neuron)
    path = tmp_path / "net.safetensors"
    snn.save(path)
    back = ttfs_core.load(path)
    assert back.summary() == snn.summary() and back.dtype == snn.dtype and back.neuron == neuron
    a, b = snn.run(x), back.run(x)
    assert torch.equal(a.logits, b.logits)
    for la, lb in zip(a.layers, b.layers):
        assert torch.equal(la.offsets, lb.offsets) and torch.equal(la.spike_times, lb.spike_times)
    s1, s2 = snn.run_stepped(x, steps=32), back.run_stepped(x, steps=32)
    assert torch.equal(s1.logits, s2.logits)
    # the loaded network still compares against the original model
    assert all(c.max_rel_error < 1e-9 for c in ttfs_core.compare(model, back, x))


def test_file_has_no_pickle(tmp_path):
    _, snn, _ = converted("cnn")
    path = tmp_path / "net.safetensors"
    snn.save(path)
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
    with pytest.raises(NetworkFileError, match="damaged"):
        ttfs_core.load(damaged)
