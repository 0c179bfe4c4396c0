"""Bundled MNIST split, preprocessing, dataset specs and the trained model zoo."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from PIL import Image

from ttfs_core import zoo
from ttfs_core.data import (
    MNIST_PATH,
    MNIST_PREPROCESS,
    Preprocess,
    load_dataset,
    load_mnist,
    load_mnist_uint8,
)


@pytest.fixture(scope="module")
def test_split() -> tuple[torch.Tensor, torch.Tensor]:
    return load_mnist("test")


@pytest.fixture(scope="module")
def zoo_models() -> dict[str, tuple[torch.nn.Module, zoo.ModelCard]]:
    return {name: zoo.load(name) for name in zoo.ARCHITECTURES}


# --- bundled MNIST -------------------------------------------------------------------------------


@pytest.mark.parametrize(("split", "n"), [("train", 4000), ("test", 1000)])
def test_bundled_split_shapes_and_stratification(split: str, n: int) -> None:
    images, labels = load_mnist_uint8(split)
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int64
    assert np.bincount(labels, minlength=10).tolist() == [n // 10] * 10
    assert not np.array_equal(labels[:10], np.sort(labels[:10]))  # shuffled, not grouped by class


def test_bundled_splits_are_disjoint() -> None:
    (a, _), (b, _) = load_mnist_uint8("train"), load_mnist_uint8("test")
    train = {im.tobytes() for im in a}
    assert not any(im.tobytes() in train for im in b)


def test_load_mnist_tensors(test_split: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = test_split
    assert x.shape == (1000, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    raw, _ = load_mnist_uint8("test")
    assert torch.equal(x[:, 0], torch.from_numpy(raw.astype(np.float32) / 255))


def test_load_mnist_errors(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown MNIST split 'val'"):
        load_mnist("val")
    import ttfs_core.data as data

    monkeypatch.setattr(data, "MNIST_PATH", tmp_path / "nope.npz")
    data._mnist_arrays.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="build_mnist.py"):
            load_mnist("test")
    finally:
        monkeypatch.undo()
        data._mnist_arrays.cache_clear()
    assert MNIST_PATH.is_file()


# --- Preprocess ----------------------------------------------------------------------------------


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_preprocess_grayscale_and_rgb() -> None:
    raw, _ = load_mnist_uint8("test")
    gray = Image.fromarray(raw[0])
    x = MNIST_PREPROCESS.to_tensor(gray)
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x[0], torch.from_numpy(raw[0].astype(np.float32) / 255))
    rgb = Image.fromarray(np.stack([raw[0]] * 3, axis=-1))  # equal channels: luminance is exact
    assert torch.equal(MNIST_PREPROCESS.to_tensor(rgb), x)
    assert torch.equal(MNIST_PREPROCESS.to_tensor(_png(rgb)), x)  # encoded bytes
    assert torch.equal(MNIST_PREPROCESS.to_tensor(raw[0]), x)  # uint8 array


def test_preprocess_resize_normalise_and_errors() -> None:
    big = Image.new("RGB", (56, 40), (255, 255, 255))
    assert MNIST_PREPROCESS.to_tensor(big).shape == (1, 28, 28)
    strict = Preprocess(resize=False)
    with pytest.raises(ValueError, match="56×40.*28×28"):
        strict.to_tensor(big)
    with pytest.raises(ValueError, match="not an image"):
        MNIST_PREPROCESS.to_tensor(b"definitely not a png")
    with pytest.raises(ValueError, match="uint8"):
        MNIST_PREPROCESS.to_tensor(np.zeros((28, 28), dtype=np.float32))
    with pytest.raises(ValueError, match="not an image"):
        MNIST_PREPROCESS.to_tensor(42)  # type: ignore[arg-type]
    cifar = Preprocess(3, 32, 32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_range="[-2, 2]")
    x = cifar.to_tensor(big)
    assert x.shape == (3, 32, 32) and torch.allclose(x, torch.full_like(x, 2.0))
    assert cifar.value_range == (-2.0, 2.0)
    assert Preprocess.from_dict(cifar.to_dict()) == cifar


# --- load_dataset --------------------------------------------------------------------------------


def test_load_dataset_bundled() -> None:
    x, y = load_dataset("mnist-test", MNIST_PREPROCESS, limit=10)
    assert x.shape == (10, 1, 28, 28) and y is not None and y.shape == (10,)
    assert torch.equal(x, load_mnist("test")[0][:10])
    x3, _ = load_dataset("mnist-train", Preprocess(3, 32, 32), limit=3)
    assert x3.shape == (3, 3, 32, 32)


def test_load_dataset_image_folder(tmp_path) -> None:
    raw, labels = load_mnist_uint8("test")
    for i in range(6):
        d = tmp_path / str(int(labels[i]))
        d.mkdir(exist_ok=True)
        Image.fromarray(raw[i]).resize((40, 40)).convert("RGB").save(d / f"{i}.png")
    x, y = load_dataset(str(tmp_path), MNIST_PREPROCESS)
    assert x.shape == (6, 1, 28, 28) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert y is not None and sorted(y.tolist()) == sorted(labels[:6].tolist())  # folder names are labels
    x2, _ = load_dataset(str(tmp_path), MNIST_PREPROCESS, limit=2)
    assert x2.shape[0] == 2
    flat = tmp_path / str(int(labels[0]))  # a folder without class sub-folders: unlabelled
    xf, yf = load_dataset(str(flat), MNIST_PREPROCESS)
    assert yf is None and xf.shape[0] == len(list(flat.iterdir())) and xf.shape[1:] == (1, 28, 28)
    (flat / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="junk.png: not an image"):
        load_dataset(str(flat), MNIST_PREPROCESS)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("mnist-val", "unknown dataset 'mnist-val'.*supported"),
        ("/no/such/folder", "no such folder.*supported"),
        ("torchvision:SVHN:/tmp", "unknown torchvision dataset 'SVHN'.*MNIST, FashionMNIST, CIFAR10, CIFAR100"),
        ("torchvision:MNIST", "needs a root folder"),
    ],
)
def test_load_dataset_bad_specs(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_dataset(spec, MNIST_PREPROCESS)


def test_load_dataset_torchvision_missing(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="CIFAR10.*not found.*download=False"):
        load_dataset(f"torchvision:CIFAR10:{tmp_path}", Preprocess(3, 32, 32))


# --- zoo -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(zoo.ARCHITECTURES))
def test_build_each(name: str) -> None:
    model = zoo.build(name)
    assert isinstance(model, torch.nn.Sequential)
    torch.fx.symbolic_trace(model)
    assert model.eval()(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_build_unknown() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'resnet'.*mlp, lenet5, vgg_mnist"):
        zoo.build("resnet")


def test_cards_and_default() -> None:
    cards = zoo.list_models()
    assert [c.name for c in cards] == list(zoo.ARCHITECTURES)
    by_name = {c.name: c for c in cards}
    assert zoo.DEFAULT_MODEL in by_name and zoo.DEFAULT_MODEL != "mlp"
    best_cnn = max((c for c in cards if c.name != "mlp"), key=lambda c: c.test_accuracy)
    assert by_name[zoo.DEFAULT_MODEL].test_accuracy == best_cnn.test_accuracy >= 0.975
    assert by_name["mlp"].test_accuracy >= 0.94
    for c in cards:
        assert c.input_range == (0.0, 1.0) and c.preprocess == MNIST_PREPROCESS
        assert c.file_size_bytes == zoo.weights_path(c.name).stat().st_size
        assert zoo.ModelCard.from_dict(c.to_dict()) == c


def test_load_each_matches_card(zoo_models, test_split) -> None:
    x, y = test_split
    for name, (model, card) in zoo_models.items():
        assert not model.training and card.name == name
        assert card.num_parameters == sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            acc = float((model(x).argmax(1) == y).float().mean())
        assert abs(acc - card.test_accuracy) <= 0.001, (name, acc, card.test_accuracy)


def test_load_unknown() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        zoo.load("nope")


@pytest.mark.slow
def test_zoo_converts_exactly_in_float64(zoo_models, test_split) -> None:
    """Every zoo model converted in float64 agrees with its ANN on every bundled test digit."""
    from ttfs_core import convert  # plain import: fails loudly while the converter is missing

    x, y = test_split
    calib = load_mnist("train")[0][:256].double()
    for name, (model, card) in zoo_models.items():
        ann = copy.deepcopy(model).double().eval()
        snn = convert(ann, calib, margin=0.5, input_range=card.input_range)
        with torch.no_grad():
            ann_pred = ann(x.double()).argmax(1)
        res = snn.run(x.double())
        snn_pred = res.logits.argmax(1)
        agreement = float((snn_pred == ann_pred).double().mean())
        assert agreement == 1.0, (name, agreement)
        assert float((snn_pred == y).double().mean()) == float((ann_pred == y).double().mean())
        assert all(layer.early_spikes == 0 for layer in res.layers), name
