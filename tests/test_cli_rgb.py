"""`ttfs verify` on a researcher's own RGB network and data: a torchvision ResNet-18 state dict at 96×96 with an
.npz of RGB images, preprocessed by --size/--channels/--mean/--std, converted and checked against its ANN."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torchvision

from . import nets
from .helpers import run_cli


@pytest.mark.slow
def test_torchvision_resnet18_state_dict_at_96px_passes(tmp_path, capsys):
    torch.manual_seed(0)
    model = nets.randomise_bn(torchvision.models.resnet18(num_classes=10), 0, negative=False).eval()
    weights = tmp_path / "resnet18.pt"
    torch.save(model.state_dict(), weights)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 96, 96, 3), dtype=np.uint8)  # H×W×C, as image libraries store RGB
    labels = rng.integers(0, 10, 24)
    data = tmp_path / "rgb96.npz"
    np.savez(data, x=images, y=labels)

    code, out, err = run_cli(capsys, "verify", str(weights), "--arch", "resnet18", "--data", str(data),
                             "--calib", str(data), "--size", "96", "--channels", "3", "--mean", "0.5,0.45,0.4",
                             "--std", "0.25,0.25,0.3", "--limit", "24", "--batch-size", "12", "--shard-size", "12",
                             "-q")
    assert code == 0, out + err
    assert "PASS" in out and "100.00 % (24/24 predictions equal)" in out
    assert "early spikes   0" in out
    # every layer's error is float32 rounding: relative to its largest activation, a few units of 1e-7 per layer
    table = out.split("max abs err")[1].split("\n\n")[0].strip().splitlines()[1:]
    errors = [float(re.split(r"\s{2,}", row.strip())[4]) for row in table]
    assert len(errors) == 18 and max(errors) < 1e-4, table  # 17 hidden layers and the readout

    # the same network as the Python API converts it: the CLI read the images as RGB at 96×96
    from ttfs_core import data as data_mod
    pre = data_mod.Preprocess(channels=3, height=96, width=96, mean=(0.5, 0.45, 0.4), std=(0.25, 0.25, 0.3))
    x = data_mod.open_dataset(str(data), pre).batch(0, 4)[0]
    assert tuple(x.shape) == (4, 3, 96, 96)
