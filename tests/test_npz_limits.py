"""Untrusted .npz datasets get the image decoder's limits.

Every bad file is built here, small: the compression bombs are zips written by hand whose deflate stream is made
in blocks without ever holding the inflated bytes, and the files that declare huge arrays are sparse. Each is
refused with one line naming the field, before anything is inflated: measured in a child process (peak memory,
CPU seconds), and through ``ttfs verify`` (exit 2, one line, no traceback).
"""

from __future__ import annotations

import io
import json
import resource
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from ttfs_core import data
from ttfs_core.cli import main
from ttfs_core.untrusted import npz

ROOT = Path(__file__).resolve().parent.parent
BLOCK = 16 << 20  # zeros deflated at once by the bomb generator


# --- generators ------------------------------------------------------------------------------------------------
def npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    """The bytes of an .npy file before its data (magic and header)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def deflated_zeros(prefix: bytes, zeros: int) -> tuple[bytes, int]:
    """A raw deflate stream of ``prefix`` then ``zeros`` zero bytes, and its CRC-32, without holding the zeros:
    after a full flush the compressor starts afresh, so every block of `BLOCK` zeros deflates to the same bytes,
    computed once."""
    co, block = zlib.compressobj(9, zlib.DEFLATED, -15), bytes(BLOCK)
    head = co.compress(prefix) + co.flush(zlib.Z_FULL_FLUSH)
    deflated_block = co.compress(block) + co.flush(zlib.Z_FULL_FLUSH)
    whole, rest = divmod(zeros, BLOCK)
    crc = zlib.crc32(prefix)
    for _ in range(whole):
        crc = zlib.crc32(block, crc)
    crc = zlib.crc32(bytes(rest), crc)
    stream = head + deflated_block * whole + co.compress(bytes(rest)) + co.flush(zlib.Z_FINISH)
    return stream, crc


def write_zip(path: Path, members: list[dict]) -> Path:
    """A zip written by hand (no zip64: every size under 4 GB). Each member: ``name``, ``data`` (the bytes
    stored), ``size`` (the inflated size the directory declares), ``crc``, ``method`` (8 deflated, 0 stored) and
    ``hole``: zero bytes left unwritten after the data (a sparse file that declares more than it takes).
    ``crc`` defaults to the data's, right for stored data without a hole; ``compressed`` (the size the directory
    gives the stored bytes) to what is written."""
    directory = b""
    with path.open("wb") as f:
        for m in members:
            name, offset = m["name"].encode(), f.tell()
            stored = m.get("compressed", len(m["data"]) + m.get("hole", 0))
            crc = m.get("crc", zlib.crc32(m["data"]))
            fields = (20, 0, m.get("method", 8), 0, 0x21, crc, stored, m["size"], len(name))
            f.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", *fields, 0) + name + m["data"])
            f.seek(m.get("hole", 0), 1)
            directory += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, *fields, 0, 0, 0, 0, 0, offset) + name
        start = f.tell()
        f.write(directory + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(directory),
                                        start, 0))
    return path


def bomb(path: Path, shape: tuple[int, ...]) -> Path:
    """x: zeros of ``shape`` uint8, deflated: 2 GB inflate from about 2 MB."""
    header = npy_header(shape)
    size = int(np.prod(shape, dtype=np.int64))
    stream, crc = deflated_zeros(header, size)
    return write_zip(path, [{"name": "x.npy", "data": stream, "size": len(header) + size, "crc": crc}])


def sparse(path: Path, shape: tuple[int, ...], descr: str = "|u1") -> Path:
    """x: a stored (uncompressed) array of ``shape`` whose data is a hole: a real file of that declared size that
    takes a few KB on disk (its CRC is not computed: nothing reads that far)."""
    header = npy_header(shape, descr)
    size = int(np.prod(shape, dtype=np.int64)) * np.dtype(descr).itemsize
    return write_zip(path, [{"name": "x.npy", "data": header, "size": len(header) + size, "method": 0, "hole": size}])


def savez(path: Path, **arrays) -> Path:
    np.savez(path, allow_pickle=any(a.dtype.hasobject for a in arrays.values()), **arrays)
    return path


def refusal(path: Path, **kw) -> str:
    with pytest.raises(ValueError) as e:
        data.open_dataset(str(path), data.MNIST_PREPROCESS, **kw)
    message = str(e.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


IMAGES = np.zeros((3, 28, 28), dtype=np.uint8)


def test_the_bomb_generator_writes_what_it_declares(tmp_path):
    header = npy_header((3, 5000, 3000))
    stream, crc = deflated_zeros(header, 45_000_000)  # 2 blocks and a rest
    inflated = zlib.decompress(stream, -15)
    assert inflated == header + bytes(45_000_000) and zlib.crc32(inflated) == crc
    path = write_zip(tmp_path / "ok.npz", [{"name": "x.npy", "data": stream, "size": len(inflated), "crc": crc}])
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None


# --- before inflating: the directory and each header ------------------------------------------------------------
@pytest.fixture(scope="module")
def big_files(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """The files that would cost gigabytes if read, and the refusal each must get."""
    d = tmp_path_factory.mktemp("big")
    return {
        "2 MB bomb, one 46000×46000 image": (bomb(d / "bomb.npz", (1, 46000, 46000)),
                                             "x: inflates to 2,116,000,128 bytes from"),
        "2 MB bomb, 2.7 million zero images": (bomb(d / "many.npz", (2_700_000, 28, 28)), "(a compression bomb?)"),
        "30000×30000 pixels": (sparse(d / "pixels.npz", (1, 30000, 30000)),
                               "x: images are 30000×30000 pixels; images up to 25,000,000 pixels are accepted"),
        "1.6 G values": (sparse(d / "values.npz", (2_000_000, 28, 28)),
                         "x: shape (2000000, 28, 28) holds 1,568,000,000 values; at most 1,000,000,000 are read"),
    }


def test_big_files_are_refused_cheaply_in_a_child(big_files):
    """Peak memory and CPU seconds measured in a child process (the import of torch is most of both)."""
    script = textwrap.dedent("""
        import json, sys, time
        from ttfs_core import data
        out = {}
        for path in sys.argv[1:]:
            cpu = time.process_time()
            try:
                data.open_dataset(path, data.MNIST_PREPROCESS)
                out[path] = ["accepted", time.process_time() - cpu]
            except ValueError as e:
                out[path] = [str(e), time.process_time() - cpu]
        # VmHWM: this process's own peak (ru_maxrss would include the parent's size at fork, kept across exec)
        status = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
        out["maxrss_kb"] = int(status)
        print(json.dumps(out))
    """)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = subprocess.run([sys.executable, "-c", script, *(str(p) for p, _ in big_files.values())], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads(run.stdout)
    for path, needle in big_files.values():
        message, cpu = result[str(path)]
        assert needle in message and message.startswith(str(path)), message
        assert cpu < 1.0, (path, cpu)
    assert result["maxrss_kb"] < 1 << 20  # under 1 GB, torch included (the child's own peak; RUSAGE_CHILDREN's
    # ru_maxrss is the largest of every child this process ever had)
    assert after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime < 30


def test_ttfs_verify_refuses_a_bomb_in_one_line(big_files):
    path = big_files["2 MB bomb, one 46000×46000 image"][0]
    # the command line's own main(), then its own peak (VmHWM; RUSAGE_CHILDREN would report the largest child
    # this test process ever had, e.g. a torchrun worker earlier in a full run)
    script = ("import sys; from ttfs_core.cli import main; code = main(sys.argv[1:]); "
              "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]); sys.exit(code)")
    run = subprocess.run([sys.executable, "-c", script, "verify", "lenet5", "--data", str(path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    err = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(err) == 1 and "Traceback" not in run.stderr, run.stderr
    assert err[0].startswith(f"ttfs: error: --data: {path}: x: inflates to") and "compression bomb" in err[0]
    assert int(run.stdout.split()[-1]) < 2 << 20  # kB: under 2 GiB, torch included


def test_a_compressed_member_over_the_ratio_is_refused_unless_small(tmp_path):
    zeros = np.zeros((20, 1000, 1000), dtype=np.uint8)  # 20 MB of zeros deflate 1000×
    np.savez_compressed(tmp_path / "zeros.npz", x=zeros)
    assert "members over 16 MB are read up to 200×" in refusal(tmp_path / "zeros.npz")
    np.savez_compressed(tmp_path / "small.npz", x=zeros[:10])  # 10 MB: read, whatever its ratio
    assert len(data.open_dataset(str(tmp_path / "small.npz"))) == 10
    np.savez(tmp_path / "stored.npz", x=zeros)  # stored: ratio 1
    assert len(data.open_dataset(str(tmp_path / "stored.npz"))) == 20


def test_the_declared_size_must_be_shape_times_itemsize(tmp_path):
    path = write_zip(tmp_path / "short.npz", [{"name": "x.npy", "data": npy_header((3, 28, 28)) + bytes(100),
                                               "size": len(npy_header((3, 28, 28))) + 100, "method": 0}])
    assert "x: the file holds 100 bytes of data, but its header says (3, 28, 28) uint8 (2,352 bytes)" in refusal(path)
    path = sparse(tmp_path / "huge.npz", (1, 2**62, 2**62))  # int64 would wrap; the header alone is read
    assert "at most 1,000,000,000 are read" in refusal(path)


def test_the_zip_directory_is_bounded(tmp_path):
    members = [{"name": f"a{i}.npy", "data": b"", "size": 0, "method": 0} for i in range(65)]
    assert "holds 65 members; at most 64 are read" in refusal(write_zip(tmp_path / "many.npz", members))
    with zipfile.ZipFile(tmp_path / "lzma.npz", "w", zipfile.ZIP_LZMA) as z:
        z.writestr("x.npy", npy_header((3, 28, 28)) + bytes(3 * 28 * 28))
    assert "x: compression method 14 is not supported (supported: stored, deflated" in refusal(tmp_path / "lzma.npz")
    header = npy_header((3, 28, 28))
    cut = write_zip(tmp_path / "cut.npz", [{"name": "x.npy", "data": header, "size": len(header) + 2352,
                                            "compressed": len(header) + 2352, "method": 0}])
    assert "x: the file is truncated" in refusal(cut)


# --- dtypes, shapes, labels, class names ------------------------------------------------------------------------
@pytest.mark.parametrize("arrays, needle", [
    ({"x": np.zeros((3, 1, 28, 28), dtype=np.longdouble)},
     f"x: dtype {np.dtype(np.longdouble).name} is not supported (supported: uint8, float16, float32, float64)"),
    ({"x": np.zeros((3, 1, 28, 28), dtype=np.complex64)}, "x: dtype complex64 is not supported"),
    ({"x": np.zeros((3, 28, 28), dtype=np.int16)}, "x: dtype int16 is not supported"),
    ({"x": np.zeros((3, 28, 28), dtype=bool)}, "x: dtype bool is not supported"),
    ({"x": np.zeros((3, 28), dtype="<U28")}, "x: dtype <U28 is not supported"),
    ({"x": np.zeros(3, dtype=[("a", "<f4"), ("b", "u1")])}, "x: dtype [('a', '<f4'), ('b', 'u1')] is not supported"),
    ({"x": np.zeros(3, dtype="datetime64[s]")}, "x: dtype datetime64[s] is not supported"),
    ({"x": np.array([object()] * 3, dtype=object)}, "x: holds Python objects (object); only numeric arrays are read"),
    ({"x": IMAGES, "y": np.zeros(3, dtype=np.float32)},
     "y: dtype float32 is not supported (y must be integer labels: int8,"),
    ({"x": IMAGES, "y": np.zeros(3, dtype=bool)}, "y: dtype bool is not supported"),
    ({"x": IMAGES, "y": np.zeros((3, 1), dtype=np.int64)}, "y: y must be integer labels of shape (N,), got (3, 1)"),
    ({"x": np.zeros((0, 28, 28), dtype=np.uint8)}, "x: holds no images (shape (0, 28, 28))"),
    ({"x": np.zeros((0, 1, 28, 28), dtype=np.float32)}, "x: holds no images"),
    ({"x": np.zeros((3, 0, 0), dtype=np.uint8)}, "x: images are 0×0 pixels (empty)"),
    ({"x": np.zeros((3, 1, 0, 28), dtype=np.uint8)}, "x: images are 0×28 pixels (empty)"),
    ({"x": np.zeros((3, 28, 0, 3), dtype=np.uint8)}, "x: images are 28×0 pixels (empty)"),
    ({"x": IMAGES, "classes": np.arange(10)}, "classes: dtype int64 is not supported (class names must be: str)"),
    ({"x": IMAGES, "classes": np.array(["a"] * 10_001)}, "classes: must be at most 10,000 names of shape (K,)"),
    ({"x": IMAGES, "classes": np.array(["a" * 101])}, "classes: names of up to 101 characters; at most 100"),
    ({"x": IMAGES, "classes": np.array(["cat", "\x1b[2Jdog"])}, r"classes: the name '\x1b[2Jdog' holds control"),
    ({"x": IMAGES, "classes": np.array(["cat", None], dtype=object)}, "classes: holds Python objects"),
])
def test_each_refusal_is_one_line_naming_the_field(tmp_path, arrays, needle):
    message = refusal(savez(tmp_path / "bad.npz", **arrays))
    assert f"bad.npz: {needle}" in message, message


def test_accepted_files_keep_working(tmp_path):
    floats = data.MNIST_PREPROCESS.batch_from_uint8(IMAGES + 7).numpy()
    little = data.open_dataset(str(savez(tmp_path / "le.npz", x=floats)))
    big = data.open_dataset(str(savez(tmp_path / "be.npz", x=floats.astype(">f4"))))  # byte order: read either
    assert torch.equal(little.batch(0, 3)[0], big.batch(0, 3)[0])
    names = data.open_dataset(str(savez(tmp_path / "n.npz", x=IMAGES, y=np.arange(3, dtype=np.uint8),
                                        classes=np.array(["zero", "one", "two"]))))
    assert names.classes == ("zero", "one", "two") and names.batch(0, 3)[1].tolist() == [0, 1, 2]


def test_a_batch_of_large_images_is_read_in_pieces(tmp_path, monkeypatch):
    images = np.random.default_rng(0).integers(0, 256, (10, 40, 30, 3), dtype=np.uint8)
    src = data.open_dataset(str(savez(tmp_path / "rgb.npz", x=images)))
    whole = src.batch(0, 10)[0]
    reads = []
    rows = npz._Member.rows
    monkeypatch.setattr(npz, "MAX_READ_BYTES", 3 * images[0].nbytes)
    monkeypatch.setattr(npz._Member, "rows", lambda self, lo, hi: reads.append(hi - lo) or rows(self, lo, hi))
    assert torch.equal(src.batch(0, 10)[0], whole) and reads == [3, 3, 3, 1]
    assert src.batch(4, 4)[0].shape == (0, 1, 28, 28)


@pytest.mark.parametrize("labels, shown", [(np.array([0, 1, -1]), "-1"), (np.array([0, 10**12, 1]), "1000000000000"),
                                           (np.array([0, 1, 2**64 - 1], dtype=np.uint64), "18446744073709551615")])
def test_labels_outside_the_models_classes_are_refused(tmp_path, labels, shown):
    path = savez(tmp_path / "y.npz", x=IMAGES, y=labels)
    src = data.open_dataset(str(path))  # the classes are not known yet: opened
    bad = 1 if labels[1] != 1 else 2
    with pytest.raises(ValueError, match=rf"y\.npz: y: label {shown} of item #{bad} is outside the model's 10 "
                                         r"classes \(0–9\)$"):
        src.check_labels(10)
    assert f"y: label {shown} of item #{bad}" in refusal(path, num_classes=10)
    data.open_dataset(str(path), limit=1, num_classes=10)  # the first item only: its label is fine


def test_every_labelled_source_checks_its_labels():
    data.open_dataset("mnist-test", limit=100, num_classes=10)
    with pytest.raises(ValueError, match=r"^labels: label 7 of item #0 is outside the model's 5 classes \(0–4\)$"):
        data.open_dataset("mnist-test", num_classes=5)


def test_ttfs_verify_refuses_labels_the_model_cannot_predict(tmp_path, capsys):
    images, _ = data.load_uint8("mnist", "test")
    path = savez(tmp_path / "neg.npz", x=np.asarray(images[:8]), y=np.array([0, 1, 2, 3, 4, 5, 6, -1]))
    code = main(["verify", "lenet5", "--data", str(path), "--calib-limit", "64", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"ttfs: error: --data: {path}: y: label -1 of item #7 is outside the model's 10 "
                                 "classes (0–9)"]
