"""A researcher's own network with their own data: the .zip image-folder reader (hand-made archives, good and
hostile), a saved network's card (preprocessing and class names) and files without one, the explorer's upload of a
batch-1 RGB residual `.pt2` with an `.npz` of RGB images on every page, and `ttfs verify --data` on both."""

from __future__ import annotations

import io
import json
import time
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from streamlit.testing.v1 import AppTest
from torch import nn

import ttfs_core
from ttfs_core import data, persist
from ttfs_core.cli import main
from ttfs_core.untrusted import archive
from ttfs_ui import state, uploads

from .helpers import APP, ROOT, TIMEOUT, ok

PAGES = [str(p) for p in sorted((ROOT / "pages").glob("[1-7]_*.py"))]
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
RGB = data.Preprocess(channels=3, height=32, width=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


# --- hand-made files ---------------------------------------------------------------------------------------------
def png(shape=(8, 8, 3), seed=0, fmt="PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def make_zip(path, members: dict[str, bytes], method=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", method) as z:
        for name, blob in members.items():
            z.writestr(zipfile.ZipInfo(name), blob, compress_type=method)
    return path


def rgb_npz(path, n=256, channels=3, labels=True, classes=True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {"x": rng.integers(0, 256, (n, 32, 32, channels) if channels == 3 else (n, 32, 32), dtype=np.uint8)}
    if labels:
        arrays["y"] = np.arange(n) % 10
    if classes:
        arrays["classes"] = np.array(CLASSES)
    np.savez(path, **arrays)
    return path


class Residual(nn.Module):
    """A small RGB CNN with a residual addition (the second ReLU reads conv2 and the first ReLU's output)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.pool, self.fc = nn.MaxPool2d(4), nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(h)) + h)
        return self.fc(self.pool(y).flatten(1))


def residual_pt2(batch: int = 1) -> bytes:
    """The residual CNN exported with a fixed batch of `batch` (its reshapes say 1: the loader frees them)."""
    torch.manual_seed(0)
    model = Residual().eval()
    buf = io.BytesIO()
    torch.export.save(torch.export.export(model, (torch.zeros(batch, 3, 32, 32),)), buf)
    return buf.getvalue()


# --- the .zip image-folder reader ------------------------------------------------------------------------------
def test_a_zip_of_class_folders_reads_like_image_folder(tmp_path):
    members = {"cifar/": b"", "cifar/dog/b.png": png(seed=1), "cifar/cat/a.png": png(seed=2),
               "cifar/cat/c.jpg": png(seed=3, fmt="JPEG"), "cifar/cat/d.png": png((8, 8), seed=4),  # one grey
               "cifar/README.txt": b"not an image", "__MACOSX/cifar/cat/._a.png": b"resource fork",
               "cifar/dog/.DS_Store": b"\0\0"}
    path = make_zip(tmp_path / "images.zip", members)
    source = data.open_dataset(str(path), RGB)
    assert isinstance(source, data.ZipSource) and len(source) == 4
    assert source.classes == ("cat", "dog") and source.labels(0, 4).tolist() == [0, 0, 0, 1]
    assert [source.name(i).split(": ")[1] for i in range(4)] == ["cifar/cat/a.png", "cifar/cat/c.jpg",
                                                                 "cifar/cat/d.png", "cifar/dog/b.png"]
    assert sorted(source.archive.skipped) == sorted(["cifar/README.txt", "__MACOSX/cifar/cat/._a.png",
                                                     "cifar/dog/.DS_Store"])
    x, y = source.batch(0, 4)
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 0, 0, 1]
    # the same image as a file is preprocessed the same way, and the explorer's uint8 pixels give the same inputs
    direct = RGB.to_tensor(png(seed=2))
    assert torch.equal(x[0], direct)
    assert torch.equal(RGB.batch_from_uint8(source.pixels(0, 4)), x)
    again = data.open_dataset(str(path), RGB)
    again.pixels(0, 4)
    assert again.converted == 1  # the grey image became RGB
    assert source.stored_shape() == (3, 8, 8)


def test_odd_names_nesting_integer_folders_and_flat_archives(tmp_path):
    odd = {"chat é/1.PNG": png(seed=1), "chat é/sub/deeper/2.png": png(seed=2), "z z/ 3 .png": png(seed=3),
           "loose.png": png(seed=4)}  # beside class folders: left out, as ImageFolder leaves it
    source = data.open_dataset(str(make_zip(tmp_path / "odd.zip", odd)), RGB)
    assert source.classes == ("chat é", "z z") and source.labels(0, 3).tolist() == [0, 0, 1]
    assert source.archive.skipped == ["loose.png"] and source.batch(0, 3)[0].shape == (3, 3, 32, 32)
    numbered = {"0/a.png": png(seed=1), "10/b.png": png(seed=2), "2/c.png": png(seed=3)}
    source = data.open_dataset(str(make_zip(tmp_path / "numbered.zip", numbered)), RGB)
    assert source.classes is None and sorted(source.labels(0, 3).tolist()) == [0, 2, 10]  # the folders' numbers
    with pytest.raises(ValueError, match="label 10 of item .*10/b.png is outside the model's 10 classes"):
        source.check_labels(10)
    flat = {"a.png": png(seed=1), "b.png": png(seed=2)}
    source = data.open_dataset(str(make_zip(tmp_path / "flat.zip", flat)), RGB)
    assert not source.labelled and source.labels(0, 2) is None and source.batch(0, 2)[1] is None


@pytest.mark.parametrize("name", ["../x.png", "cat/../../x.png", "/etc/x.png", "C:/x.png", "cat\\x.png"])
def test_names_that_leave_the_folder_are_refused(tmp_path, name):
    path = make_zip(tmp_path / "evil.zip", {"cat/a.png": png(), name: png()})
    with pytest.raises(ValueError, match="leaves the archive's folder"):
        data.open_dataset(str(path), RGB)


def test_bombs_and_limits_are_refused_before_anything_is_inflated(tmp_path, monkeypatch):
    # a member that inflates 1,000-fold past 16 MB: refused from its directory entry
    bomb = make_zip(tmp_path / "bomb.zip", {"cat/a.png": png(), "cat/zeros.png": bytes(20 << 20)})
    with pytest.raises(ValueError, match=r"cat/zeros.png: inflates to 20,971,520 bytes .*compression bomb"):
        data.open_dataset(str(bomb), RGB)
    # a decompression bomb inside a PNG: refused from its header when decoded, naming the member
    big = io.BytesIO()
    Image.new("L", (5001, 5001)).save(big, format="PNG")
    source = data.open_dataset(str(make_zip(tmp_path / "huge.zip", {"cat/huge.png": big.getvalue()})), RGB)
    with pytest.raises(ValueError, match=r"cat/huge.png: the image is 5001×5001 pixels; images up to 25,000,000"):
        source.batch(0, 1)
    # all images together, members, images and inflated bytes
    many = make_zip(tmp_path / "many.zip", {f"cat/{k}.png": png(seed=k) for k in range(6)})
    capped = data.ZipSource(many, RGB, max_pixels=64 * 4)
    capped.batch(0, 4)
    with pytest.raises(ValueError, match="more than 256 pixels in all"):
        capped.batch(4, 5)
    with pytest.raises(ValueError, match="holds more than 5 images; at most 5"):
        data.ZipSource(many, RGB, max_images=5)
    with pytest.raises(ValueError, match="its images inflate to .* bytes; at most 100 are read"):
        data.ZipSource(many, RGB, max_bytes=100)
    monkeypatch.setattr(archive, "MAX_MEMBERS", 4)
    with pytest.raises(ValueError, match="holds 6 members; at most 4 are read"):
        data.open_dataset(str(many), RGB)


def test_corrupt_archives_and_members_that_are_not_images(tmp_path):
    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ValueError, match="not a readable .zip archive"):
        data.open_dataset(str(garbage), RGB)
    good = make_zip(tmp_path / "good.zip", {f"cat/{k}.png": png(seed=k) for k in range(3)})
    cut = tmp_path / "cut.zip"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a readable .zip archive"):
        data.open_dataset(str(cut), RGB)
    stored = make_zip(tmp_path / "stored.zip", {"cat/a.png": png((16, 16, 3))}, zipfile.ZIP_STORED)
    raw = bytearray(stored.read_bytes())
    raw[60] ^= 0xFF  # a byte of the image data: the CRC no longer matches
    (tmp_path / "crc.zip").write_bytes(bytes(raw))
    source = data.open_dataset(str(tmp_path / "crc.zip"), RGB)
    with pytest.raises(ValueError, match=r"cat/a.png: cannot be read \(Bad CRC-32"):
        source.batch(0, 1)
    text = data.open_dataset(str(make_zip(tmp_path / "text.zip", {"cat/a.png": b"just text, not a PNG"})), RGB)
    with pytest.raises(ValueError, match=r"cat/a.png: not an image: the data could not be decoded"):
        text.batch(0, 1)
    with pytest.raises(ValueError, match="holds no images .* class folders of images"):
        data.open_dataset(str(make_zip(tmp_path / "none.zip", {"a.txt": b"x", "b/c.csv": b"1,2"})), RGB)
    lzma = make_zip(tmp_path / "lzma.zip", {"cat/a.png": png()}, zipfile.ZIP_LZMA)
    with pytest.raises(ValueError, match="compression method 14 is not supported"):
        data.open_dataset(str(lzma), RGB)
    with pytest.warns(UserWarning, match="Duplicate name"):
        twice = make_zip(tmp_path / "twice.zip", {"cat/a.png": png()})
        with zipfile.ZipFile(twice, "a") as z:
            z.writestr("cat/a.png", png(seed=9))
    with pytest.raises(ValueError, match="appears twice"):
        data.open_dataset(str(twice), RGB)


# --- preprocessing and the explorer's reading of a data set ----------------------------------------------------
def test_preprocessing_that_would_make_nan_is_refused():
    for mean, std, needle in (("0", "0", "std must be positive"), ("0", "nan", "finite"), ("inf", "1", "finite"),
                              ("0.5, 0.5", "1", "1 or 3"), ("a", "1", "mean: expected")):
        with pytest.raises(ValueError, match=needle):
            uploads.preprocess_from(32, 32, 3, mean, std)
    with pytest.raises(ValueError, match="height must be a whole number"):
        uploads.preprocess_from(0, 32, 3, "0", "1")
    pre = uploads.preprocess_from(32, 32, 3, "0.485, 0.456, 0.406", "0.229, 0.224, 0.225")
    assert pre.shape == (3, 32, 32) and pre.std == (0.229, 0.224, 0.225)


def _upload_data(path) -> uploads.UploadedData:
    blob = path.read_bytes()
    return uploads.UploadedData(uploads.upload_key(blob), path.name, blob)


def test_reading_an_uploaded_data_set_for_a_model(tmp_path, monkeypatch):
    user = uploads.read_data(_upload_data(rgb_npz(tmp_path / "rgb.npz", n=40)), RGB, 10, "k")
    assert len(user) == 40 and user.pixels.shape == (40, 32, 32, 3) and user.dataset.classes == CLASSES
    assert user.labels.tolist() == [i % 10 for i in range(40)] and user.dataset.title == "rgb.npz"
    x = user.batch(RGB, slice(0, 40))
    expected, _ = data.open_dataset(str(tmp_path / "rgb.npz"), RGB).batch(0, 40)  # what `ttfs verify` reads
    assert torch.equal(x, expected) and user.image(RGB, 3).shape == (32, 32, 3)
    with pytest.raises(ValueError, match=r"gray.npz: x holds 1-channel \(grayscale\) images, but the model takes "
                                         r"3-channel \(RGB\) inputs"):
        uploads.read_data(_upload_data(rgb_npz(tmp_path / "gray.npz", n=8, channels=1)), RGB, 10, "k")
    with pytest.raises(ValueError, match="rgb.npz: y: label 5 of item #5 is outside the model's 5 classes"):
        uploads.read_data(_upload_data(rgb_npz(tmp_path / "rgb.npz", n=40)), RGB, 5, "k")
    inputs = np.zeros((4, 3, 32, 32), dtype=np.float32)
    inputs[2, 0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=inputs)
    with pytest.raises(ValueError, match="NaN or infinite values"):
        uploads.read_data(_upload_data(tmp_path / "nan.npz"), RGB, 10, "k")
    grey = make_zip(tmp_path / "grey.zip", {f"cat/{k}.png": png((8, 8), seed=k) for k in range(3)})
    with pytest.raises(ValueError, match="all its images are 1-channel"):
        uploads.read_data(_upload_data(grey), RGB, 10, "k")
    monkeypatch.setattr(uploads, "MAX_DATA_IMAGES", 16)
    user = uploads.read_data(_upload_data(tmp_path / "rgb.npz"), RGB, 10, "k")
    assert len(user) == 14 and user.step == 3 and any("every 3th" in n for n in user.notes)
    zipped = make_zip(tmp_path / "imgs.zip", {f"c{k % 2}/{k}.png": png(seed=k) for k in range(40)})
    user = uploads.read_data(_upload_data(zipped), RGB, 10, "k")
    assert len(user) == 14 and user.dataset.classes == ("c0", "c1") and sorted(set(user.labels)) == [0, 1]


@pytest.mark.integration
def test_the_input_shape_is_read_from_a_batch_1_export():
    model = uploads.read_model(residual_pt2(batch=1), "res.pt2", None)
    assert uploads.exported_shape(model) == (3, 32, 32)
    assert uploads.infer_shape(model)[0] == (3, 32, 32)
    assert model(torch.zeros(5, 3, 32, 32)).shape == (5, 10)  # the export's batch of 1 was freed
    assert uploads.check_model(model, (3, 32, 32)) == 10
    with pytest.raises(ttfs_core.untrusted.ModelLoadError, match="recorded in the exported program"):
        uploads.check_model(model, (1, 28, 28))
    message = str(uploads.needs_data((3, 32, 32), "res.pt2", "recorded in the exported program"))
    assert uploads.NEEDS_DATA in message and "3×32×32" in message and "28×28 grayscale" in message


def test_an_rgb_photo_upload_is_resized_in_colour_and_not_inverted():
    photo = io.BytesIO()
    Image.new("RGB", (64, 48), (250, 240, 10)).save(photo, format="PNG")  # a light yellow image
    x, notes = uploads.read_image(photo.getvalue(), RGB, invert=False)
    assert x.shape == (1, 3, 32, 32) and any("resized" in n for n in notes)
    np.testing.assert_allclose(x[0, :, 0, 0].numpy(), (np.array([250, 240, 10]) / 255 - 0.5) / 0.25, atol=1e-6)


# --- a saved network's card ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).eval()
    x = torch.rand(16, 3, 8, 8)
    return model, ttfs_core.convert(model, x), x


def test_a_saved_network_carries_its_preprocessing_and_class_names(tmp_path, small_net):
    model, snn, x = small_net
    pre = data.Preprocess(channels=3, height=8, width=8, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    card = persist.Card(pre, CLASSES, "rgb.npz, first 16 images")
    path = tmp_path / "net.safetensors"
    ttfs_core.save(snn, path, card)
    assert persist.load_card(path) == card
    back = ttfs_core.load(path)
    assert torch.equal(back.run(x).logits, snn.run(x).logits)  # the network itself is unchanged by its card
    # a file without a card (as every file before cards) loads, and has none
    ttfs_core.save(snn, tmp_path / "old.safetensors")
    assert persist.load_card(tmp_path / "old.safetensors") is None
    assert torch.equal(ttfs_core.load(tmp_path / "old.safetensors").run(x).logits, snn.run(x).logits)
    with pytest.raises(ValueError, match="gives inputs of shape"):
        ttfs_core.save(snn, tmp_path / "bad.safetensors", persist.Card(data.Preprocess()))
    # the explorer reads it from an upload
    assert uploads.read_card(path.read_bytes(), "net.safetensors") == card
    with pytest.raises(ValueError, match="not a safetensors file"):
        uploads.read_card(b"garbage" * 10, "net.safetensors")


@pytest.mark.parametrize("change, field", [
    (lambda c: c["preprocess"].update(std=[0.0]), "card.preprocess.std[0]"),
    (lambda c: c["preprocess"].update(mean=["x"]), "card.preprocess.mean[0]"),
    (lambda c: c["preprocess"].update(height=8, width=9), "card.preprocess: gives inputs of shape 3×8×9"),
    (lambda c: c["preprocess"].update(channels=True), "card.preprocess.channels"),
    (lambda c: c.update(classes=["ok", "bad\nname"]), "card.classes[1]"),
    (lambda c: c.update(classes="cat"), "card.classes"),
    (lambda c: c.update(version=2), "card: expected an object with version 1"),
    (lambda c: c.update(extra=1), "card: expected an object"),
])
def test_a_damaged_card_is_refused_naming_the_field(tmp_path, small_net, change, field):
    _, snn, _ = small_net
    path = tmp_path / "net.safetensors"
    ttfs_core.save(snn, path, persist.Card(data.Preprocess(channels=3, height=8, width=8), ("a", "b")))
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    card = json.loads(meta[persist.CARD_KEY])
    change(card)
    save_file(load_file(str(path)), str(path), metadata={**meta, persist.CARD_KEY: json.dumps(card)})
    with pytest.raises(persist.NetworkFileError, match=f"net.safetensors: {field.replace('[', '.').replace(']', '.')}"):
        persist.load_card(path)
    ttfs_core.load(path)  # the network itself still loads


# --- the command line ---------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_cli_verifies_an_rgb_export_on_an_npz_and_on_a_zip(tmp_path, capsys):
    (tmp_path / "model.pt2").write_bytes(residual_pt2(batch=1))
    rgb_npz(tmp_path / "rgb.npz", n=64)
    flags = ["--size", "32", "--channels", "3", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "-q"]
    code = main(["verify", str(tmp_path / "model.pt2"), "--data", str(tmp_path / "rgb.npz"), *flags])
    out = capsys.readouterr().out
    assert code == 0 and out.strip().endswith("PASS"), out
    assert "rgb.npz: 64 images (--data: the model does not take MNIST's 1×28×28" in out
    assert "64 images, labelled" in out
    members = {f"imgs/{CLASSES[k % 3]}/{k}.png": png((32, 32, 3), seed=k) for k in range(12)}
    make_zip(tmp_path / "images.zip", members)
    code = main(["verify", str(tmp_path / "model.pt2"), "--data", str(tmp_path / "images.zip"), *flags])
    out = capsys.readouterr().out
    assert code == 0 and out.strip().endswith("PASS") and "12 images, labelled" in out, out
    # convert writes the card: the preprocessing and the .npz's class names
    code = main(["convert", str(tmp_path / "model.pt2"), "--calib", str(tmp_path / "rgb.npz"), "-o",
                 str(tmp_path / "net.safetensors"), *flags[:-1]])
    assert code == 0, capsys.readouterr()
    card = persist.load_card(tmp_path / "net.safetensors")
    assert card.preprocess == data.Preprocess(channels=3, height=32, width=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert card.classes == CLASSES and "rgb.npz" in card.data
    # verify --snn reads the card's preprocessing: no flags needed (it used to prepare the data as MNIST)
    capsys.readouterr()
    code = main(["verify", str(tmp_path / "model.pt2"), "--data", str(tmp_path / "rgb.npz"), "--snn",
                 str(tmp_path / "net.safetensors"), "-q"])
    out, err = capsys.readouterr()
    assert code == 0 and out.strip().endswith("PASS"), (out, err)
    assert "net.safetensors's card: 3×32×32, mean (0.5, 0.5, 0.5)" in out
    # a damaged zip is one line, exit 2
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04" + bytes(100))
    code = main(["verify", str(tmp_path / "model.pt2"), "--data", str(tmp_path / "bad.zip"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not a readable .zip archive" in err


# --- the explorer -------------------------------------------------------------------------------------------------
def own_upload_script():
    """A page that hands a model file and its data set in the session (test_model, test_data, test_name,
    test_data_name, test_mnist) to the explorer's upload, as the main page's upload panel does."""
    import streamlit as st

    from ttfs_ui import controls, state, uploads

    state.init()
    raw = st.session_state.get("test_data")
    dataset = None if raw is None else uploads.UploadedData(uploads.upload_key(raw), st.session_state["test_data_name"],
                                                            raw)
    error = controls.receive_model_upload(st.session_state["test_model"], st.session_state["test_name"], None,
                                          dataset=dataset, mnist=bool(st.session_state.get("test_mnist")))
    st.text(f"upload: {error}")
    if error:
        st.error(error)


def upload(model: bytes, name: str, data_: bytes | None = None, data_name: str = "", mnist: bool = False) -> AppTest:
    at = AppTest.from_function(own_upload_script, default_timeout=TIMEOUT)
    for key, value in {"test_model": model, "test_name": name, "test_data": data_, "test_data_name": data_name,
                       "test_mnist": mnist}.items():
        at.session_state[key] = value
    at.run()
    return ok(at)


def session_of(at: AppTest) -> dict:
    return {state.MODEL: at.session_state[state.MODEL], state.UPLOADED_MODELS: at.session_state[state.UPLOADED_MODELS]}


def shown(elements) -> str:
    """The texts of these elements as a reader sees them (file names are written with Markdown escapes)."""
    return " ".join(e.value for e in elements).replace("\\", "")


def timed_run(path: str, **session) -> tuple[AppTest, float]:
    at = AppTest.from_file(path, default_timeout=TIMEOUT)
    for key, value in session.items():
        at.session_state[key] = value
    start = time.perf_counter()
    at.run()
    return ok(at), time.perf_counter() - start


@pytest.fixture(scope="module")
def rgb_upload(tmp_path_factory):
    folder = tmp_path_factory.mktemp("own")
    at = upload(residual_pt2(batch=1), "res.pt2", rgb_npz(folder / "cifar.npz").read_bytes(), "cifar.npz")
    assert not at.error, [e.value for e in at.error]
    assert at.session_state[state.MODEL].startswith("upload:")
    return session_of(at)


@pytest.mark.integration
def test_an_rgb_residual_export_with_its_npz_runs_on_every_page(rgb_upload, capsys):
    at, seconds = timed_run(APP, **rgb_upload)
    times = {"app.py": seconds}
    assert not at.error, [e.value for e in at.error]
    captions = shown(at.caption)
    assert "Calibrated on all 256 images of cifar.npz" in captions
    assert "cifar.npz image #0 (label 0 · airplane)" in captions
    assert "3×32×32 (RGB)" in captions and "recorded in the exported program" in captions
    gallery = {b.label for b in at.button if b.key and b.key.startswith("gallery_")}
    assert gallery == {f"#{k} ({k} · {CLASSES[k]})" for k in range(10)}
    assert "Images of cifar.npz" in shown(at.markdown)
    assert len(at.get("image")) >= 10  # the gallery's pictures
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["True label"] == "0 · airplane" and metrics["ANN predicts"] == metrics["SNN predicts"]
    assert "Test images" not in [s.label for s in at.selectbox] or at.selectbox(
        key=state.widget_key(state.DATASET)).format_func("") == "the model's own (cifar.npz)"
    at.button(key="gallery_3").click().run()
    assert "cifar.npz image #3 (label 3 · cat)" in shown(ok(at).caption)
    for page in PAGES:
        page_at, seconds = timed_run(page, **rgb_upload)
        times[page.rsplit("/", 1)[-1]] = seconds
        assert page_at.session_state[state.MODEL] == rgb_upload[state.MODEL], page  # no fall-back to the default
        assert not page_at.error, (page, [e.value for e in page_at.error])
    with capsys.disabled():
        print("\nAppTest first-run seconds, RGB residual upload:",
              ", ".join(f"{k} {v:.1f}" for k, v in times.items()))


@pytest.mark.integration
def test_grey_images_for_an_rgb_model_and_no_data_give_clear_messages(tmp_path):
    model = residual_pt2(batch=1)
    at = upload(model, "res.pt2", rgb_npz(tmp_path / "gray.npz", n=16, channels=1).read_bytes(), "gray.npz")
    [error] = [e.value for e in at.error]
    assert "cannot use gray.npz as its data set" in error and "1-channel (grayscale)" in error, error
    assert at.session_state[state.MODEL] == state.DEFAULT_MODEL
    at = upload(model, "res.pt2")  # no data set
    [error] = [e.value for e in at.error]
    assert uploads.NEEDS_DATA in error and "3×32×32" in error and "recorded in the exported program" in error
    assert at.session_state[state.MODEL] == state.DEFAULT_MODEL
    # asked for, MNIST resized and replicated to the model's shape: it runs, labelled as not its own data
    at = upload(model, "res.pt2", mnist=True)
    assert not at.error
    app = ok(AppTest.from_file(APP, default_timeout=TIMEOUT))
    for key, value in session_of(at).items():
        app.session_state[key] = value
    app.run()
    assert not ok(app).error
    assert any("MNIST digits resized to 32×32 and replicated to 3 channels" in w.value for w in app.warning)
    # labels beyond the model's classes
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "twelve.npz", x=rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), y=np.arange(16))
    at = upload(model, "res.pt2", (tmp_path / "twelve.npz").read_bytes(), "twelve.npz")
    [error] = [e.value for e in at.error]
    assert "label 10 of item #10 is outside the model's 10 classes" in error, error


@pytest.mark.integration
def test_a_zip_upload_and_an_upload_that_cannot_be_converted_on_the_inspector(tmp_path):
    members = {f"imgs/{CLASSES[k % 4]}/{k}.png": png((40, 40, 3), seed=k) for k in range(24)}
    at = upload(residual_pt2(batch=1), "res.pt2", make_zip(tmp_path / "imgs.zip", members).read_bytes(), "imgs.zip")
    assert not at.error, [e.value for e in at.error]
    app, _ = timed_run(APP, **session_of(at))
    assert not app.error
    assert {b.label for b in app.button if b.key and b.key.startswith("gallery_")} == {
        "#0 (0 · airplane)", "#6 (1 · automobile)", "#12 (2 · bird)", "#18 (3 · cat)"}
    assert "images of 40×40 were resized to 32×32" in shown(app.caption)
    # two zero-padded convolutions in a row: loaded, but refused by the converter; the inspector shows where, with
    # the session's upload (no second upload there)
    torch.manual_seed(0)
    two = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 32 * 32, 10)).eval()
    buf = io.BytesIO()
    torch.export.save(torch.export.export(two, (torch.zeros(1, 3, 32, 32),)), buf)
    at = upload(buf.getvalue(), "two.pt2", (tmp_path / "imgs.zip").read_bytes(), "imgs.zip")
    assert len(at.error) == 1 and at.session_state[state.MODEL] == state.DEFAULT_MODEL
    failed = at.session_state[state.FAILED_MODELS]
    page, _ = timed_run(PAGES[5], **{state.FAILED_MODELS: failed, state.FAILED_UPLOADS:
                                     at.session_state[state.FAILED_UPLOADS]})
    assert page.selectbox(key="inspector_demo").value in failed
    assert not page.get("file_uploader")  # one upload serves every page: none here
    assert any("uploaded two.pt2: cannot be converted (lowering)" in e.value for e in page.error), \
        [e.value for e in page.error]


def panel_script():
    """The main page with its file uploaders answering from the session (test_files: uploader key -> (name, bytes)),
    as a browser's uploads would: AppTest cannot upload files itself."""
    import runpy

    import streamlit as st

    from tests.helpers import APP

    class Uploaded:
        def __init__(self, name: str, blob: bytes):
            self.name, self.blob = name, blob

        def getvalue(self) -> bytes:
            return self.blob

    files = st.session_state.get("test_files", {})
    real = st.file_uploader

    def uploader(label, *args, key=None, **kwargs):
        real(label, *args, key=key, **kwargs)
        return Uploaded(*files[key]) if key in files else None

    st.file_uploader = uploader
    try:
        runpy.run_path(APP, run_name="__main__")
    finally:
        st.file_uploader = real


@pytest.mark.integration
def test_the_main_page_upload_panel_step_by_step(tmp_path, small_net):
    at = AppTest.from_function(panel_script, default_timeout=TIMEOUT)
    at.session_state["test_files"] = {"upload_model": ("model.pt", b"not a model at all" * 50)}
    at.run()
    # a file that does not load: its message, and no further step (the image uploader stays the second one)
    assert len(ok(at).error) == 1 and "Cannot use 'model.pt'" in shown(at.error)
    assert [u.proto.label for u in at.get("file_uploader")] == ["Model file", "PNG or JPEG image"]
    model = residual_pt2(batch=1)
    at.session_state["test_files"] = {"upload_model": ("res.pt2", model)}
    at.run()
    assert len(ok(at).error) == 1 and uploads.NEEDS_DATA in shown(at.error)
    labels = [u.proto.label for u in at.get("file_uploader")]
    assert labels[0] == "Model file" and labels[1].startswith("Its data set") and labels[-1] == "PNG or JPEG image"
    assert at.number_input(key="_w_up_h").value == 32 and at.selectbox(key="_w_up_c").value == 3
    at.button(key="upload_use_mnist").click().run()  # asked for: MNIST resized and replicated, labelled so
    assert not ok(at).error and at.session_state[state.MODEL].startswith("upload:")
    assert any("MNIST digits resized to 32×32 and replicated to 3 channels" in w.value for w in at.warning)
    # its data set: selected, calibrated on it
    at.session_state["test_files"] = {"upload_model": ("res.pt2", model),
                                      "upload_data": ("cifar.npz", rgb_npz(tmp_path / "cifar.npz", n=64).read_bytes())}
    at.run()
    at.run()  # the page reruns itself once the new model is selected (AppTest runs it again here)
    assert not ok(at).error, [e.value for e in at.error]
    assert "Calibrated on all 64 images of cifar.npz" in shown(at.caption)
    # std 0 in the form: one clear message, nothing else changes
    key = at.session_state[state.MODEL]
    at.selectbox(key="_w_up_norm").set_value("custom (mean and std below)")
    at.text_input(key="_w_up_std").set_value("0")
    next(b for b in at.button if b.label == "Apply preprocessing").click().run()
    assert "std must be positive" in shown(ok(at).error) and at.session_state[state.MODEL] == key
    # ImageNet's mean and std: a new conversion, selected
    at.selectbox(key="_w_up_norm").set_value("ImageNet mean and std")
    next(b for b in at.button if b.label == "Apply preprocessing").click().run()
    at.run()
    assert not ok(at).error and at.session_state[state.MODEL] != key
    assert "(pixels / 255 − 0.485, 0.456, 0.406) / 0.229, 0.224, 0.225" in shown(at.caption)
    # a saved network's card: its preprocessing and class names
    _, snn, _ = small_net
    names = ("ant", "bee", "cow", "dog", "eel", "fox", "gnu", "hen", "ibis", "jay")
    pre = data.Preprocess(channels=3, height=32, width=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    card = tmp_path / "net.safetensors"
    ttfs_core.save(snn, card, persist.Card(data.Preprocess(channels=3, height=8, width=8), names))
    at.session_state["test_files"] = {"upload_model": ("res.pt2", model),
                                      "upload_data": ("plain.npz", rgb_npz(tmp_path / "plain.npz", n=32,
                                                                           classes=False).read_bytes()),
                                      "upload_card": ("net.safetensors", card.read_bytes())}
    at.run()
    at.run()
    assert "From net.safetensors's card: preprocessing 8×8×3 and 10 class names" in shown(at.info)
    assert "does not take 3×8×8 inputs" in shown(at.error)  # the card is of another network
    at.number_input(key="_w_up_h").set_value(32)
    at.number_input(key="_w_up_w").set_value(32)
    at.selectbox(key="_w_up_norm").set_value("(pixels / 255 − 0.5) / 0.5, in [−1, 1]")
    next(b for b in at.button if b.label == "Apply preprocessing").click().run()
    at.run()
    assert not ok(at).error, [e.value for e in at.error]
    assert {b.label for b in at.button if b.key and b.key.startswith("gallery_")} == {
        f"#{k} ({k} · {names[k]})" for k in range(10)}
    assert pre.shape == at.session_state[state.UPLOADED_MODELS][at.session_state[state.MODEL]].preprocess.shape


@pytest.mark.integration
def test_the_saved_network_of_an_upload_reopens_with_its_card(rgb_upload, tmp_path):
    from ttfs_core.neurons import ALPHA, SUM
    from ttfs_ui import cache

    upload = rgb_upload[state.UPLOADED_MODELS][rgb_upload[state.MODEL]]
    entry = cache.uploaded_entry(upload)
    snn = cache.network(cache.Settings(upload.key, 0.5, ALPHA, SUM), entry)
    path = tmp_path / "res.snn.safetensors"
    path.write_bytes(cache.network_file(entry, snn))
    card = persist.load_card(path)
    assert card.preprocess == entry.preprocess and card.classes == CLASSES and "cifar.npz" in card.data
    x = cache.images(entry, entry.dataset, "test", 0, 8)
    assert torch.equal(ttfs_core.load(path).run(x).logits, snn.run(x).logits)


@pytest.mark.integration
def test_an_uploaded_photo_feeds_the_rgb_model_in_colour(rgb_upload):
    photo = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(photo, format="PNG")
    blob = photo.getvalue()
    key = uploads.upload_key(blob)
    session = {**rgb_upload, state.IMAGE: key,
               state.UPLOADED_IMAGES: {key: uploads.UploadedImage(key, "photo.png", blob, False)}}
    at, _ = timed_run(APP, **session)
    assert not at.error and "uploaded photo.png" in shown(at.caption)
    upload = rgb_upload[state.UPLOADED_MODELS][rgb_upload[state.MODEL]]
    model = uploads.read_model(upload.data, upload.filename, None)
    x, _ = uploads.read_image(blob, data.Preprocess(channels=3, height=32, width=32), invert=False)
    with torch.no_grad():
        ann = model(x)[0]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["ANN predicts"] == f"{int(ann.argmax())} · {CLASSES[int(ann.argmax())]}"
