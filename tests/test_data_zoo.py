"""Bundled MNIST and Fashion-MNIST sets (checksummed), preprocessing, dataset specs and the trained model zoo."""

from __future__ import annotations

import copy
import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import ttfs_core
from ttfs_core import data, zoo
from ttfs_core.cli import main
from ttfs_core.data import MNIST_PREPROCESS, AssetError, Preprocess, load_dataset

# The first ten test labels of each set as published (MNIST: 7 2 1 0 4 …; Fashion-MNIST: ankle boot, pullover, …)
FIRST_TEST_LABELS = {"mnist": [7, 2, 1, 0, 4, 1, 4, 9, 5, 9], "fashion": [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]}
# What each zoo model must reach on its whole test set (the paper's table)
MIN_ACCURACY = {"lenet5": 0.990, "fc": 0.980, "lenet5_fashion": 0.89, "vgg_fashion": 0.92, "resnet_mnist": 0.990}


@pytest.fixture(scope="module")
def zoo_models() -> dict[str, tuple[torch.nn.Module, zoo.ModelCard]]:
    return {name: zoo.load(name) for name in zoo.ARCHITECTURES}


# --- bundled datasets ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(data.DATASETS))
def test_bundled_sets_are_the_published_ones(name: str) -> None:
    test, test_labels = data.load_uint8(name, "test")
    assert test.shape == (10_000, 28, 28) and test.dtype == np.uint8
    assert test_labels.shape == (10_000,) and test_labels.dtype == np.int64
    assert test_labels[:10].tolist() == FIRST_TEST_LABELS[name]  # the original order
    counts = np.bincount(test_labels, minlength=10)
    assert counts.sum() == 10_000 and counts.min() >= 890  # MNIST: 892 fives … 1,135 ones; Fashion: 1,000 each
    train, train_labels = data.load_uint8(name, "train")
    assert train.shape == (4000, 28, 28) and np.bincount(train_labels, minlength=10).tolist() == [400] * 10
    assert not np.array_equal(train_labels[:10], np.sort(train_labels[:10]))  # shuffled, not grouped by class
    seen = {im.tobytes() for im in train}
    assert not any(im.tobytes() in seen for im in test)  # the calibration subset is not test data
    assert not test.flags.writeable and not train.flags.writeable


def test_the_two_sets_differ_and_load_scales_pixels() -> None:
    (m, _), (f, _) = data.load_uint8("mnist", "test"), data.load_uint8("fashion", "test")
    assert not np.array_equal(m[:100], f[:100])
    x, y = data.load("fashion", "test")
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.equal(x[:5, 0], torch.from_numpy(f[:5].astype(np.float32) / 255))
    assert data.dataset("fashion").class_name(9) == "Ankle boot" and data.dataset("mnist").class_name(3) == "3"


def test_unknown_dataset_and_split() -> None:
    with pytest.raises(ValueError, match="unknown split 'val'"):
        data.load("mnist", "val")
    with pytest.raises(ValueError, match="unknown dataset 'cifar'.*'mnist', 'fashion'"):
        data.load("cifar", "test")


@pytest.fixture
def private_assets(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A copy of the bundled datasets and their manifest that a test may damage; caches cleared around it."""
    for name in ("mnist.npz", "fashion.npz", "datasets.json"):
        shutil.copy(data.ASSETS_DIR / name, tmp_path / name)
    monkeypatch.setattr(data, "ASSETS_DIR", tmp_path)
    monkeypatch.setattr(data, "MANIFEST_PATH", tmp_path / "datasets.json")
    data._arrays.cache_clear()
    yield tmp_path
    data._arrays.cache_clear()


def test_corrupted_missing_or_unrecorded_assets_are_refused(private_assets) -> None:
    path = private_assets / "fashion.npz"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit inside the compressed test images
    path.write_bytes(bytes(raw))
    with pytest.raises(AssetError, match=r"fashion\.npz is corrupted: its SHA-256 .*build_datasets\.py"):
        data.load("fashion", "test")
    assert data.load("mnist", "test")[0].shape[0] == 10_000  # the other set is untouched
    path.unlink()
    with pytest.raises(AssetError, match=r"fashion\.npz is missing.*build_datasets\.py"):
        data.load("fashion", "train")
    manifest = json.loads((private_assets / "datasets.json").read_text())
    del manifest["mnist.npz"]
    (private_assets / "datasets.json").write_text(json.dumps(manifest))
    data._arrays.cache_clear()
    with pytest.raises(AssetError, match=r"datasets\.json has no readable checksum for mnist\.npz"):
        data.load_uint8("mnist", "test")


def test_cli_names_a_corrupted_asset_in_one_line(private_assets, capsys) -> None:
    path = private_assets / "mnist.npz"
    path.write_bytes(path.read_bytes()[:-100])  # truncated
    assert main(["verify", "lenet5", "--limit", "8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mnist.npz is corrupted" in err[0] and "Traceback" not in err[0]


# --- Preprocess ----------------------------------------------------------------------------------


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_preprocess_grayscale_and_rgb() -> None:
    raw, _ = data.load_uint8("mnist", "test")
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


@pytest.mark.parametrize("name", list(data.DATASETS))
def test_load_dataset_bundled(name: str) -> None:
    x, y = load_dataset(f"{name}-test", MNIST_PREPROCESS, limit=10)
    assert x.shape == (10, 1, 28, 28) and y is not None and y.tolist() == FIRST_TEST_LABELS[name]
    assert torch.equal(x, data.load(name, "test")[0][:10])
    full, _ = load_dataset(f"{name}-test", MNIST_PREPROCESS)
    assert full.shape[0] == 10_000
    x3, _ = load_dataset(f"{name}-train", Preprocess(3, 32, 32), limit=3)
    assert x3.shape == (3, 3, 32, 32)


def test_load_dataset_image_folder(tmp_path) -> None:
    raw, labels = data.load_uint8("mnist", "test")
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
        ("mnist-val", "unknown dataset 'mnist-val'.*supported: 'mnist-train', 'mnist-test', 'fashion-train'"),
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
    assert isinstance(model, torch.nn.Sequential) == (name != "resnet_mnist")  # the residual CNN is not a chain
    torch.fx.symbolic_trace(model)
    assert model.eval()(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_build_unknown() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'resnet'.*lenet5, fc, lenet5_fashion, vgg_fashion"):
        zoo.build("resnet")


def test_cards_and_default() -> None:
    cards = zoo.list_models()
    assert [c.name for c in cards] == list(zoo.ARCHITECTURES)
    by_name = {c.name: c for c in cards}
    assert zoo.DEFAULT_MODEL == "lenet5" and by_name["lenet5"].dataset == "mnist"
    assert {c.name: c.dataset for c in cards} == zoo.DATASET
    for c in cards:
        assert c.test_accuracy >= MIN_ACCURACY[c.name], (c.name, c.test_accuracy)
        assert "60,000" in c.training and " min" in c.training  # trained on the full set, and how long it took
        assert c.input_range == (0.0, 1.0) and c.preprocess == MNIST_PREPROCESS
        assert c.file_size_bytes == zoo.weights_path(c.name).stat().st_size
        assert zoo.ModelCard.from_dict(c.to_dict()) == c


@pytest.mark.integration
def test_load_each_matches_card(zoo_models) -> None:
    """Each card's accuracy is the model's on the whole test set of its dataset (recomputed here)."""
    for name, (model, card) in zoo_models.items():
        assert not model.training and card.name == name
        assert card.num_parameters == sum(p.numel() for p in model.parameters())
        x, y = data.load(card.dataset, "test")
        with torch.no_grad():
            pred = torch.cat([model(x[i:i + 2000]).argmax(1) for i in range(0, len(x), 2000)])
        acc = float((pred == y).double().mean())
        assert abs(acc - card.test_accuracy) <= 0.0002, (name, acc, card.test_accuracy)


def test_the_residual_cnn_converts_to_layers_with_two_inputs(zoo_models) -> None:
    """The residual CNN's additions become layers that read two layers (the block's second conv and the shortcut:
    the block's input, or its 1×1 projection), and in float64 the SNN's logits are the model's."""
    model, card = zoo_models["resnet_mnist"]
    assert card.dataset == "mnist" and card.test_accuracy >= 0.990
    assert "Residual" in card.title and "basic block" in card.architecture
    calib = data.load("mnist", "train")[0][:256].double()
    x = data.load("mnist", "test")[0][:6].double()
    ann = copy.deepcopy(model).double().eval()
    snn = ttfs_core.convert(ann, calib, margin=0.5, input_range=card.input_range)
    two = [layer for layer in snn.layers if len(layer.inputs) == 2]
    assert len(two) == 3, [(layer.name, layer.sources) for layer in snn.layers]  # one per basic block
    for layer in two:
        k = snn.layers.index(layer)
        assert layer.sources[0] == k - 1 and layer.sources[1] < k - 1  # the block's conv1 layer, and the shortcut
        with pytest.raises(AttributeError, match="use layer.inputs"):
            layer.source  # noqa: B018
    with torch.no_grad():
        ann_logits = ann(x)
    res = snn.run(x)
    rel = float((res.logits - ann_logits).abs().max() / ann_logits.abs().max())
    assert rel < 1e-9, rel
    assert torch.equal(res.logits.argmax(1), ann_logits.argmax(1))
    assert res.early_spikes == 0


def test_load_unknown() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        zoo.load("nope")


@pytest.mark.slow
def test_paper_table_zero_drop_on_the_whole_test_sets(zoo_models) -> None:
    """The paper's claim, under the default conversion (float32, the paper's rescaling, margin 0.5): on all 10,000
    test images of its dataset, every zoo model's SNN predicts what its ANN predicts, so the accuracies are equal,
    and no neuron fires early."""
    for name, (model, card) in zoo_models.items():
        calib, _ = data.load(card.dataset, "train")
        x, y = data.load(card.dataset, "test")
        snn = ttfs_core.convert(model, calib[:512])
        assert snn.rescale.name == "sum" and snn.margin == 0.5 and snn.dtype == torch.float32
        ann_pred, snn_pred, early = [], [], 0
        with torch.no_grad():
            for i in range(0, len(x), 1000):
                res = snn.run(x[i:i + 1000])
                ann_pred.append(model(x[i:i + 1000]).argmax(1))
                snn_pred.append(res.logits.argmax(1))
                early += res.early_spikes
        a, s = torch.cat(ann_pred), torch.cat(snn_pred)
        assert torch.equal(a, s), (name, int((a != s).sum()))
        assert early == 0, name
        assert int((s == y).sum()) == round(card.test_accuracy * 10_000), name


@pytest.mark.slow
def test_zoo_converts_exactly_in_float64(zoo_models) -> None:
    """Every zoo model converted in float64 reproduces its ANN's logits on 1,000 test images of its dataset."""
    for name, (model, card) in zoo_models.items():
        x = data.load(card.dataset, "test")[0][:1000].double()
        calib = data.load(card.dataset, "train")[0][:256].double()
        ann = copy.deepcopy(model).double().eval()
        snn = ttfs_core.convert(ann, calib, margin=0.5, input_range=card.input_range)
        with torch.no_grad():
            ann_logits = ann(x)
        res = snn.run(x)
        rel = float((res.logits - ann_logits).abs().max() / ann_logits.abs().max())
        assert rel < 1e-9, (name, rel)
        assert torch.equal(res.logits.argmax(1), ann_logits.argmax(1)), name
        assert all(layer.early_spikes == 0 for layer in res.layers), name
