"""The bundled model zoo: reference architectures (``nn.Sequential`` chains and one residual network) and
trained weights.

Weights live in ``assets/zoo/<name>.safetensors`` (float32; safetensors only, never pickle) next to
a model card ``assets/zoo/<name>.json``; both are written by ``scripts/train_zoo.py``.
The zoo reproduces the paper's MNIST / Fashion-MNIST experiments: the FC 784-600-10 network and LeNet-5 on MNIST,
LeNet-5 and a 16-layer VGG-like network on Fashion-MNIST, all trained on the full 60,000-image training sets, plus
a small residual CNN on MNIST (identity and projection shortcuts: layers with two inputs after conversion).
All bundled models take pixels / 255 in [0, 1], shaped (N, 1, 28, 28); each card names its dataset.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .data import Preprocess

ZOO_DIR = Path(__file__).resolve().parent.parent / "assets" / "zoo"
DEFAULT_MODEL = "lenet5"
"""The bundled model the app opens with: LeNet-5 on MNIST, the paper's first CNN."""


def fc() -> nn.Sequential:
    """The paper's fully connected 784-600-10 network with ReLU. Shape: (N, 1, 28, 28) -> (N, 10)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 600), nn.ReLU(),
        nn.Linear(600, 10),
    )  # fmt: skip


def lenet5() -> nn.Sequential:
    """LeNet-5 for 28×28 inputs, BatchNorm *before* ReLU, max pooling. Shape: (N, 1, 28, 28) -> (N, 10)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),   # 6×14×14
        nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),            # 16×5×5
        nn.Conv2d(16, 120, 5), nn.BatchNorm2d(120), nn.ReLU(),                          # 120×1×1
        nn.Flatten(),
        nn.Linear(120, 84), nn.BatchNorm1d(84), nn.ReLU(),
        nn.Linear(84, 10),
    )  # fmt: skip


VGG_LAYOUT: tuple[int | str, ...] = (8, 8, 16, 16, "M", 32, 32, 32, "M", 64, 64, 64, "M", 64, 64, 64, "M")
VGG_FC = (64, 64)


def vgg16() -> nn.Sequential:
    """The paper's "VGG-like, 16 layers", narrowed for a 2-core machine.

    13 zero-padded 3×3 convs + 3 fc, BatchNorm *after* ReLU.

    Pools (2×2, floor) take 28 -> 14 -> 7 -> 3 -> 1. Shape: (N, 1, 28, 28) -> (N, 10).
    """
    layers: list[nn.Module] = []
    c_in = 1
    for v in VGG_LAYOUT:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c_in, int(v), 3, padding=1), nn.ReLU(), nn.BatchNorm2d(int(v))]
            c_in = int(v)
    layers.append(nn.Flatten())
    for width in VGG_FC:
        layers += [nn.Linear(c_in, width), nn.ReLU(), nn.BatchNorm1d(width), nn.Dropout(0.3)]
        c_in = width
    layers.append(nn.Linear(c_in, 10))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block: conv 3×3 → BN → ReLU → conv 3×3 → BN, plus the shortcut, then ReLU.

    The shortcut is the identity, or a 1×1 convolution + BN (projection) when the block changes the channel count
    or strides. Shape: (N, c_in, H, W) -> (N, c_out, H / stride, W / stride).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()  # after the addition: the converted layer that reads two layers is named after it
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + self.shortcut(x))


RESNET_WIDTHS = (16, 32)


class ResNetMNIST(nn.Module):
    """A small residual CNN for 28×28 digits.

    Stem conv 3×3 (16) → BN → ReLU → MaxPool 2 (14×14); two basic blocks at 16 channels (identity shortcuts); one
    block to 32 channels with stride 2 and a 1×1 projection shortcut (7×7); global average pool → Linear 32→10.
    Shape: (N, 1, 28, 28) -> (N, 10).
    """

    def __init__(self) -> None:
        super().__init__()
        c1, c2 = RESNET_WIDTHS
        self.stem = nn.Sequential(nn.Conv2d(1, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(),
                                  nn.MaxPool2d(2))
        self.blocks = nn.Sequential(BasicBlock(c1, c1), BasicBlock(c1, c1), BasicBlock(c1, c2, stride=2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c2, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def resnet_mnist() -> ResNetMNIST:
    """The residual CNN (:class:`ResNetMNIST`). Shape: (N, 1, 28, 28) -> (N, 10)."""
    return ResNetMNIST()


ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "lenet5": lenet5, "fc": fc, "lenet5_fashion": lenet5, "vgg_fashion": vgg16, "resnet_mnist": resnet_mnist,
}  # fmt: skip
"""Bundled model name -> its architecture (two names may share one)."""
DATASET = {"lenet5": "mnist", "fc": "mnist", "lenet5_fashion": "fashion", "vgg_fashion": "fashion",
           "resnet_mnist": "mnist"}
"""Bundled model name -> the bundled dataset (``ttfs_core.data.DATASETS``) it was trained and is tested on."""
TITLES = {
    "lenet5": "LeNet-5, MNIST (BN before ReLU)",
    "fc": "FC 784-600-10, MNIST",
    "lenet5_fashion": "LeNet-5, Fashion-MNIST (BN before ReLU)",
    "vgg_fashion": "VGG-like, 16 layers, Fashion-MNIST (BN after ReLU)",
    "resnet_mnist": "Residual CNN, MNIST (3 basic blocks, identity and projection shortcuts)",
}


def build(name: str) -> nn.Module:
    """A freshly initialised (untrained) model of architecture ``name``."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]()


@dataclass(frozen=True)
class ModelCard:
    """What a bundled model is, how it was trained and how well it does (``assets/zoo/<name>.json``).

    ``dataset`` names the bundled dataset (``ttfs_core.data.DATASETS``); ``test_accuracy`` is a fraction in
    [0, 1] on its whole 10,000-image test set.
    """

    name: str
    title: str
    dataset: str
    architecture: str
    preprocess: Preprocess
    input_range: tuple[float, float]
    training: str
    test_accuracy: float
    num_parameters: int
    file_size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        d["input_range"] = list(self.input_range)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        """Inverse of :meth:`to_dict`."""
        lo, hi = d["input_range"]
        return cls(**{**d, "preprocess": Preprocess.from_dict(d["preprocess"]), "input_range": (float(lo), float(hi))})

    @classmethod
    def read(cls, path: Path) -> ModelCard:
        """Read a card from its JSON file."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def write(self, path: Path) -> None:
        """Write the card as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def card_path(name: str) -> Path:
    """Where the card of bundled model ``name`` lives."""
    return ZOO_DIR / f"{name}.json"


def weights_path(name: str) -> Path:
    """Where the weights of bundled model ``name`` live."""
    return ZOO_DIR / f"{name}.safetensors"


def list_models() -> list[ModelCard]:
    """Cards of the bundled models that have trained weights, in registry order."""
    return [ModelCard.read(card_path(n)) for n in ARCHITECTURES if card_path(n).is_file() and weights_path(n).is_file()]


def load(name: str) -> tuple[nn.Module, ModelCard]:
    """Bundled model ``name`` with its trained weights, in eval mode, and its card."""
    model = build(name)
    card, weights = card_path(name), weights_path(name)
    for p in (card, weights):
        if not p.is_file():
            raise FileNotFoundError(
                f"bundled model {name!r} is missing {p}; train it with 'python scripts/train_zoo.py'"
            )
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.eval(), ModelCard.read(card)
