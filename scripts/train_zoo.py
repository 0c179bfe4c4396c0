"""Train the bundled model zoo on the bundled MNIST split and write ``assets/zoo/``.

For each architecture in ``ttfs_core.zoo.ARCHITECTURES``: seeded training on the 4,000 bundled
training digits with random affine augmentation, evaluation on the 1,000 bundled test digits
(the final model is kept: no selection on the test split), then ``<name>.safetensors`` (float32,
eval-mode BatchNorm statistics) and the model card ``<name>.json``.

CPU only, 2 threads, a few minutes in total. Usage: ``python scripts/train_zoo.py [names...]``
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ttfs_core import zoo  # noqa: E402
from ttfs_core.data import MNIST_PREPROCESS, load_mnist  # noqa: E402

SEED = 1234


@dataclass(frozen=True)
class Recipe:
    """Training hyper-parameters of one model."""

    epochs: int
    lr: float
    batch: int = 64
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05
    rotate_deg: float = 10.0
    shift_px: float = 2.5
    scale: float = 0.1

    def describe(self, seed: int) -> str:
        """One-line human description for the model card."""
        return (
            f"bundled MNIST train split (4,000 digits); AdamW (lr {self.lr:g}, one-cycle cosine schedule, "
            f"weight decay {self.weight_decay:g}), {self.epochs} epochs, batch {self.batch}, "
            f"label smoothing {self.label_smoothing:g}; augmentation: random rotation ±{self.rotate_deg:g}°, "
            f"shift ±{self.shift_px:g} px, scale ±{self.scale * 100:g} %; seed {seed}; "
            "final epoch kept (no model selection on the test split); float32, CPU"
        )


RECIPES = {
    "mlp": Recipe(epochs=60, lr=2e-3, batch=64),
    "lenet5": Recipe(epochs=40, lr=4e-3, batch=64),
    "vgg_mnist": Recipe(epochs=20, lr=3e-3, batch=64),
}
ARCH_TEXT = {
    "mlp": "Flatten → Linear 784→400 → ReLU → Linear 400→400 → ReLU → Linear 400→10",
    "lenet5": (
        "Conv 6@5×5 pad 2 → BN → ReLU → MaxPool 2 → Conv 16@5×5 → BN → ReLU → MaxPool 2 → "
        "Conv 120@5×5 → BN → ReLU → Flatten → Linear 120→84 → BN → ReLU → Linear 84→10 (BN before ReLU)"
    ),
    "vgg_mnist": (
        "13 × [Conv 3×3 pad 1 → ReLU → BN] with channels "
        + ", ".join(str(v) if v != "M" else "pool" for v in zoo.VGG_MNIST_LAYOUT)
        + " (MaxPool 2: 28→14→7→3→1) → Flatten → 2 × [Linear → ReLU → BN → Dropout 0.3] width "
        + ", ".join(map(str, zoo.VGG_MNIST_FC))
        + " → Linear →10 (BN after ReLU)"
    ),
}


def augment(x: Tensor, r: Recipe, gen: torch.Generator) -> Tensor:
    """Random affine transform per image (rotation, scale, shift), zero fill.

    Shape: (N, 1, 28, 28) in, same out.
    """
    n = x.shape[0]
    u = torch.rand(n, 4, generator=gen) * 2 - 1
    ang = u[:, 0] * math.radians(r.rotate_deg)
    s = 1 + u[:, 1] * r.scale
    tx, ty = u[:, 2] * r.shift_px * 2 / 28, u[:, 3] * r.shift_px * 2 / 28
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 500) -> float:
    """Fraction of correct argmax predictions (model in eval mode)."""
    model.eval()
    correct = sum(int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch))
    return correct / len(x)


def train(name: str, seed: int) -> tuple[nn.Module, Recipe, float]:
    """Train architecture ``name``; returns the model in eval mode, its recipe and the wall time."""
    r = RECIPES[name]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = zoo.build(name)
    x, y = load_mnist("train")
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
            loss = F.cross_entropy(model(augment(x[idx], r, gen)), y[idx], label_smoothing=r.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if (epoch + 1) % max(1, r.epochs // 5) == 0 or epoch + 1 == r.epochs:
            print(f"  {name} epoch {epoch + 1}/{r.epochs}: loss {total / len(x):.4f} ({time.perf_counter() - t0:.0f}s)")
    return model.eval(), r, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=list(zoo.ARCHITECTURES), help="architectures to train")
    ap.add_argument("--out", type=Path, default=zoo.ZOO_DIR)
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(parents=True, exist_ok=True)
    x_test, y_test = load_mnist("test")
    t_all = time.perf_counter()
    for name in args.names:
        if name not in RECIPES:
            raise SystemExit(f"unknown architecture {name!r}; known: {', '.join(RECIPES)}")
        seed = SEED + list(RECIPES).index(name)  # per model, so training one alone reproduces it
        model, recipe, wall = train(name, seed)
        acc = accuracy(model, x_test, y_test)
        weights = args.out / f"{name}.safetensors"
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())
        save_file(state, str(weights), metadata={"name": name, "format": "pt"})
        card = zoo.ModelCard(
            name=name,
            title=zoo.TITLES[name],
            architecture=ARCH_TEXT[name],
            preprocess=MNIST_PREPROCESS,
            input_range=(0.0, 1.0),
            training=recipe.describe(seed),
            test_accuracy=acc,
            num_parameters=sum(p.numel() for p in model.parameters()),
            file_size_bytes=weights.stat().st_size,
        )
        card.write(args.out / f"{name}.json")
        print(f"{name}: test accuracy {acc * 100:.1f} % ({wall:.0f}s, {card.file_size_bytes / 1e6:.2f} MB)")
    print(f"total {time.perf_counter() - t_all:.0f}s")


if __name__ == "__main__":
    main()
