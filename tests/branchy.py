"""Small branching ReLU networks built from the ops of the torchvision families (shared by the tests)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .nets import randomise_bn


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class Residual(nn.Module):
    """Identity and projection shortcuts, an in-place addition, ReLU after the addition, a layer read by three
    later ones, and the same ReLU module called twice (as in torchvision's BasicBlock)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 8)
        self.a1, self.a2 = _cbr(8, 8), _cbr(8, 8, relu=False)
        self.b1, self.b2 = _cbr(8, 12, stride=2), _cbr(12, 12, relu=False)
        self.proj = _cbr(8, 12, k=1, stride=2, relu=False)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(20, 6)

    def forward(self, x):
        s = self.stem(x)
        a = self.a2(self.a1(s))
        a += s
        a = self.relu(a)
        b = self.relu(self.b2(self.b1(a)) + self.proj(a))
        pooled = torch.cat([F.adaptive_avg_pool2d(b, 1), F.adaptive_avg_pool2d(s, 1)], 1)  # s: a third reader
        return self.fc(pooled.flatten(1))


class Inception(nn.Module):
    """Four parallel branches concatenated (1×1; 1×1 → 3×3; max pool → 1×1; average pool → 1×1, as in
    GoogLeNet and Inception-v3), then a convolution and max pooling of the concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 8)
        self.b1 = _cbr(8, 4, k=1)
        self.b2 = nn.Sequential(_cbr(8, 6, k=1), _cbr(6, 6))
        self.b3 = _cbr(8, 4, k=1)
        self.b4 = _cbr(8, 3, k=1)
        self.after = _cbr(17, 10)
        self.fc = nn.Linear(10 * 4 * 4, 5)

    def forward(self, x):
        s = self.stem(x)
        cat = torch.cat([self.b1(s), self.b2(s), self.b3(F.max_pool2d(s, 3, 1, 1)),
                         self.b4(F.avg_pool2d(s, 3, 1, 1))], 1)
        y = F.max_pool2d(self.after(F.max_pool2d(cat, 2)), 2)
        return self.fc(torch.flatten(y, 1))


class Shuffle(nn.Module):
    """ShuffleNet-V2 units: channel split (chunk), a branch with a depthwise convolution that has no ReLU of its
    own (composed into the 1×1 after it), concatenation and channel shuffle (view / transpose / view)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 8)
        self.units = nn.ModuleList(
            nn.Sequential(_cbr(4, 4, k=1), _cbr(4, 4, groups=4, relu=False), _cbr(4, 4, k=1)) for _ in range(2))
        self.fc = nn.Linear(8, 4)

    @staticmethod
    def shuffle(x, groups: int = 2):
        b, c, h, w = x.size()
        return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, c, h, w)

    def forward(self, x):
        x = self.stem(x)
        for unit in self.units:
            x1, x2 = x.chunk(2, dim=1)
            x = self.shuffle(torch.cat((x1, unit(x2)), 1))
        return self.fc(x.mean([2, 3]))


class Dense(nn.Module):
    """DenseNet: BatchNorm → ReLU → conv on the concatenation of every earlier feature map (linear nodes: the
    convolutions' outputs have no ReLU of their own), a transition conv 1×1 → average pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.norms = nn.ModuleList(nn.BatchNorm2d(6 + 4 * k) for k in range(3))
        self.convs = nn.ModuleList(nn.Conv2d(6 + 4 * k, 4, 3, padding=1) for k in range(3))
        self.trans_norm, self.trans = nn.BatchNorm2d(18), nn.Conv2d(18, 8, 1)
        self.final = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        feats = [self.stem(x)]
        for norm, conv in zip(self.norms, self.convs):
            feats.append(conv(F.relu(norm(torch.cat(feats, 1)))))
        y = F.avg_pool2d(self.trans(F.relu(self.trans_norm(torch.cat(feats, 1)))), 2)
        y = F.relu(self.final(y))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


class Inverted(nn.Module):
    """MobileNet-V2 inverted residuals: 1×1 expansion → ReLU6, depthwise 3×3 → ReLU6, linear 1×1 projection
    (no ReLU), + the block input; the next block's expansion reads that sum."""

    def __init__(self, gain: float = 1.0) -> None:
        super().__init__()
        self.gain = gain
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.blocks = nn.ModuleList(nn.Sequential(
            nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(inplace=True),
            nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6(inplace=True),
            nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8)) for _ in range(2))
        self.head = nn.Sequential(nn.Conv2d(8, 12, 1), nn.BatchNorm2d(12), nn.ReLU6())
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = self.stem(x * self.gain)
        for block in self.blocks:
            x = x + block(x)
        x = F.adaptive_avg_pool2d(self.head(x), 1)
        return self.fc(torch.flatten(x, 1))


class LinearNodes(nn.Module):
    """Convolutions without a ReLU between them (composed exactly): 3×3 → 1×1, 1×1 → 3×3, 3×3 → unpadded 2×2
    stride 2, and a Linear → BatchNorm1d → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 5, 1)
        self.c3, self.c4 = nn.Conv2d(5, 6, 1), nn.Conv2d(6, 7, 3, padding=1)
        self.c5, self.c6 = nn.Conv2d(7, 8, 3, padding=1), nn.Conv2d(8, 8, 2, stride=2)
        self.l1, self.bn, self.l2 = nn.Linear(8 * 4 * 4, 16), nn.BatchNorm1d(16), nn.Linear(16, 10)
        self.out = nn.Linear(10, 4)

    def forward(self, x):
        x = F.relu(self.c2(self.c1(x)))
        x = F.relu(self.c4(self.c3(x)))
        x = F.relu(self.c6(self.c5(x)))
        x = F.relu(self.l2(self.bn(self.l1(x.flatten(1)))))
        return self.out(x)


class PaddedTwice(nn.Module):
    """Two padded 3×3 convolutions in a row without a ReLU: not one convolution (the border differs)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(F.relu(self.c2(self.c1(x))).flatten(1))


MODELS = {"residual": Residual, "inception": Inception, "shuffle": Shuffle, "dense": Dense, "inverted": Inverted,
          "linear_nodes": LinearNodes}
INPUT_SIZE = {"residual": 8, "inception": 16, "shuffle": 8, "dense": 8, "inverted": 16, "linear_nodes": 8}


def build(name: str, seed: int = 0, dtype=torch.float64, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return randomise_bn(MODELS[name](**kw), seed).to(dtype).eval()


def inputs(name: str, n: int, seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    size = INPUT_SIZE[name]
    return torch.rand(n, 3, size, size, generator=g, dtype=torch.float64).to(dtype)
