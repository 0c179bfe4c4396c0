"""Small random ReLU networks covering every supported layer type (shared by the tests)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def randomise_bn(model: nn.Module, seed: int = 0, negative: bool = True) -> nn.Module:
    """Give every BatchNorm random running statistics and affine parameters (some scales negative)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.affine:
                w = torch.rand(n, generator=g) + 0.5
                if negative:
                    w = w * torch.where(torch.rand(n, generator=g) < 0.3, -1.0, 1.0)
                m.weight.data.copy_(w)
                m.bias.data.copy_(torch.randn(n, generator=g) * 0.3)
    return model


def cnn_all_layers() -> nn.Module:
    """Every listed layer type: padded/strided/dilated/grouped convs, BN before and after ReLU, a negative BN
    scale before max pooling, padded max pooling, average and adaptive average pooling, dropout, identity."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),              # BN before ReLU
        nn.MaxPool2d(2),                                                           # 16 -> 8
        nn.Conv2d(8, 12, 3, padding=2, dilation=2), nn.ReLU(inplace=True), nn.BatchNorm2d(12),  # BN after ReLU
        nn.MaxPool2d(3, stride=2, padding=1),                                      # 8 -> 4, negative BN scales
        nn.Conv2d(12, 12, 3, padding=1, groups=3), nn.ReLU(), nn.Identity(),
        nn.AvgPool2d(2),                                                           # 4 -> 2
        nn.Conv2d(12, 16, 1), nn.ReLU(), nn.BatchNorm2d(16),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5),
        nn.Linear(16, 20), nn.BatchNorm1d(20), nn.ReLU(),
        nn.Linear(20, 7),
    )


class FunctionalNet(nn.Module):
    """A custom forward with functionals, tensor methods and in-place ReLU; pooling before the ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 6, 5, stride=2, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 10, 3)
        self.bn2 = nn.BatchNorm2d(10)
        self.fc1 = nn.Linear(10 * 3 * 3, 24)
        self.fc2 = nn.Linear(24, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.c1(x)))
        x = F.max_pool2d(self.c2(x), 2)           # conv -> pool -> BN -> ReLU
        x = torch.relu(self.bn2(x))
        x = x.view(x.size(0), -1)
        x = self.fc1(x).relu_()
        x = F.dropout(x, 0.2, training=self.training)
        return self.fc2(x)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 6))


def build(name: str, seed: int = 0, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    model = {"cnn": cnn_all_layers, "functional": FunctionalNet, "mlp": mlp}[name]()
    return randomise_bn(model, seed).to(dtype).eval()


INPUT_SHAPES = {"cnn": (3, 16, 16), "functional": (2, 16, 16), "mlp": (3, 4, 4)}


def inputs(name: str, n: int, seed: int = 1, dtype=torch.float64, low: float = -2.0, high: float = 3.0):
    """Inputs on a range other than [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *INPUT_SHAPES[name], generator=g) * (high - low) + low).to(dtype)
