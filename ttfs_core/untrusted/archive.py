"""A data set in a ``.zip`` of an image-folder tree (class sub-folders of images, as torchvision's ``ImageFolder``
reads a folder), read member by member and never extracted to disk: `ImageArchive` (`ttfs_core.data.open_dataset`
builds its streamed source on it; the explorer reads an uploaded one the same way).

The archive is untrusted, so everything that can be checked from its directory is checked before a member is
inflated, each refusal one line (a ValueError) naming the archive and the member:

- the directory itself, from the end record, before `zipfile` parses it (at most `MAX_MEMBERS` members and
  `MAX_DIRECTORY_BYTES` of directory; zip64 end records are read too);
- every image member: unencrypted, stored or deflated, inside the file, and inflating at most
  `ttfs_core.untrusted.npz.MAX_EXPANSION` times unless small (`ttfs_core.untrusted.npz.check_member`, the checks
  an ``.npz`` gets), at most `MAX_IMAGE_BYTES` each and `max_bytes` together;
- member names: no absolute paths, drive letters, ``..`` components or backslashes (nothing is extracted, but
  such a name is the mark of a hostile archive), no duplicates, no control characters in class names;
- at most ``max_images`` images; then, as they are decoded (`ttfs_core.untrusted.images.decode_image`: at most
  `MAX_PIXELS` each, checked from the header), at most ``max_pixels`` pixels in all.

Layout: a single top-level folder above the class folders is skipped (``cifar/cat/1.png`` is class ``cat``);
images at the root beside class folders are left out, as ImageFolder leaves them; an archive of images without
folders is unlabelled. Class folders are sorted by name and numbered from 0 (integer folder names are taken as the
labels themselves, as `ttfs_core.data` reads a folder). Hidden files, ``__MACOSX`` resource forks and files that
are not images (by suffix) are skipped and counted (`ImageArchive.skipped`).
"""

from __future__ import annotations

import re
import struct
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from PIL import Image

from .images import MAX_IMAGE_BYTES, decode_image
from .npz import MAX_CLASS_NAME, MAX_CLASSES, READABLE, check_member

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
MAX_MEMBERS = 200_000  # members of the archive (files, folders, skipped files): bounds the directory parsed whole
MAX_DIRECTORY_BYTES = 32 << 20  # size of the central directory (200,000 members of ~100 bytes each fit)
MAX_IMAGES = 100_000  # images read from one archive (ImageNet's validation set has 50,000)
MAX_TOTAL_BYTES = 16 << 30  # inflated bytes of all image members, as their directory entries declare
MAX_TOTAL_PIXELS = 20_000_000_000  # decoded pixels of all images (ImageNet's validation set: about 10^10)
SKIPPED_NAMES = ("__MACOSX", "Thumbs.db", "desktop.ini")
_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_UNSAFE = re.compile(r"(^|/)\.\.(/|$)|^/|^[A-Za-z]:|\\")


def directory_size(path: Path) -> tuple[int, int] | None:
    """(members, directory bytes) from the archive's end record (and its zip64 record where the end record says
    0xFFFF / 0xFFFFFFFF), read from the last 64 KB of the file; None when there is no end record (`zipfile`
    then refuses the file)."""
    with path.open("rb") as f:
        size = f.seek(0, 2)
        start = max(0, size - _EOCD.size - 0xFFFF)
        f.seek(start)
        tail = f.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < _EOCD.size:
            return None
        _, _, _, _, members, directory, _, _ = _EOCD.unpack_from(tail, at)
        if members != 0xFFFF and directory != 0xFFFFFFFF:
            return members, directory
        loc = at - _ZIP64_LOCATOR.size
        if loc < 0 or tail[loc:loc + 4] != b"PK\x06\x07":
            return members, directory
        _, _, offset, _ = _ZIP64_LOCATOR.unpack_from(tail, loc)
        if offset + _ZIP64_EOCD.size > size:
            raise ValueError(f"{path}: its zip64 end record points outside the file")
        f.seek(offset)
        record = f.read(_ZIP64_EOCD.size)
    if len(record) < _ZIP64_EOCD.size or record[:4] != b"PK\x06\x06":
        raise ValueError(f"{path}: its zip64 end record is damaged")
    fields = _ZIP64_EOCD.unpack(record)
    return fields[6], fields[7]  # entries in all, directory bytes


def is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def _skipped(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") or p in SKIPPED_NAMES for p in parts)


class ImageArchive:
    """The images of a ``.zip`` of class folders (module docstring), decoded when asked for.

    ``names``: the image members in the order ImageFolder would list them; ``labels``: their labels (None for an
    archive without class folders); ``classes``: the class folders' names (None when unlabelled or when the
    folders are integers, which are then the labels); ``skipped``: members that are not images, hidden files or
    images at the root beside class folders."""

    def __init__(self, path: str | Path, *, max_images: int = MAX_IMAGES, max_pixels: int = MAX_TOTAL_PIXELS,
                 max_bytes: int = MAX_TOTAL_BYTES):
        self.path = Path(path)
        self.max_pixels, self.pixels = max_pixels, 0
        where = str(path)
        try:
            counted = directory_size(self.path)
        except OSError as e:
            raise ValueError(f"{where}: cannot be read ({' '.join(str(e).split())})") from None
        if counted is not None:
            members, directory = counted
            if members > MAX_MEMBERS:
                raise ValueError(f"{where}: holds {members:,} members; at most {MAX_MEMBERS:,} are read")
            if directory > MAX_DIRECTORY_BYTES:
                raise ValueError(f"{where}: its zip directory is {directory:,} bytes; at most "
                                 f"{MAX_DIRECTORY_BYTES:,} are read")
        try:
            self.archive = zipfile.ZipFile(self.path)
            infos = self.archive.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, struct.error, ValueError,
                NotImplementedError) as e:
            raise ValueError(f"{where}: not a readable .zip archive ({' '.join(str(e).split())})") from None
        try:
            self._index(infos, where, max_images, max_bytes)
        except ValueError:
            self.archive.close()
            raise

    def _index(self, infos: list[zipfile.ZipInfo], where: str, max_images: int, max_bytes: int) -> None:
        file_size = self.path.stat().st_size
        seen: set[str] = set()
        images: list[tuple[tuple[str, ...], zipfile.ZipInfo]] = []
        self.skipped: list[str] = []
        for info in infos:
            name = info.filename
            if _UNSAFE.search(name) or "\0" in name:
                raise ValueError(f"{where}: the member name {ascii(name[:80])} leaves the archive's folder (an "
                                 "absolute path, a drive, '..' or a backslash); such archives are refused")
            if name in seen:
                raise ValueError(f"{where}: the member name {ascii(name[:80])} appears twice")
            seen.add(name)
            if info.is_dir():
                continue
            parts = tuple(p for p in name.split("/") if p)
            if _skipped(parts) or not is_image_name(name):
                self.skipped.append(name)
                continue
            member = f"{where}: {name}"
            if info.compress_type not in READABLE:
                raise ValueError(f"{member}: compression method {info.compress_type} is not supported (supported: "
                                 f"{', '.join(READABLE.values())}, as zip tools write by default)")
            check_member(info, file_size, member)
            if info.file_size > MAX_IMAGE_BYTES:
                raise ValueError(f"{member}: inflates to {info.file_size:,} bytes; image files up to "
                                 f"{MAX_IMAGE_BYTES:,} bytes are read")
            images.append((parts, info))
            if len(images) > max_images:
                raise ValueError(f"{where}: holds more than {max_images:,} images; at most {max_images:,} are read")
        total = sum(info.file_size for _, info in images)
        if total > max_bytes:
            raise ValueError(f"{where}: its images inflate to {total:,} bytes; at most {max_bytes:,} are read")
        if not images:
            raise ValueError(f"{where}: holds no images ({', '.join(IMAGE_SUFFIXES)}); expected class folders of "
                             "images, as torchvision's ImageFolder reads them")
        self._layout(images, where)

    def _layout(self, images: list[tuple[tuple[str, ...], zipfile.ZipInfo]], where: str) -> None:
        """Skip a common top-level folder above the class folders; sort and label the images."""
        paths = [parts for parts, _ in images]
        while all(len(p) >= 3 for p in paths) and len({p[0] for p in paths}) == 1:
            paths = [p[1:] for p in paths]
        foldered = [(p, info) for p, (_, info) in zip(paths, images) if len(p) >= 2]
        if not foldered:
            order = sorted(zip(paths, (info for _, info in images)), key=lambda t: t[0])
            self.infos = [info for _, info in order]
            self.labels, self.classes = None, None
            return
        self.skipped += [info.filename for p, (_, info) in zip(paths, images) if len(p) < 2]
        names = sorted({p[0] for p, _ in foldered})
        if len(names) > MAX_CLASSES:
            raise ValueError(f"{where}: has {len(names):,} class folders; at most {MAX_CLASSES:,} are read")
        for n in names:
            if not n.isprintable() or len(n) > MAX_CLASS_NAME:
                raise ValueError(f"{where}: the class folder {ascii(n[:MAX_CLASS_NAME])} has control characters or "
                                 f"over {MAX_CLASS_NAME} characters")
        numbered = all(n.isdigit() and len(n) <= 9 for n in names)
        index = {n: (int(n) if numbered else k) for k, n in enumerate(names)}
        order = sorted(foldered, key=lambda t: (t[0][0], t[0][1:]))
        self.infos = [info for _, info in order]
        self.labels = [index[p[0]] for p, _ in order]
        self.classes = None if numbered else tuple(names)

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def __len__(self) -> int:
        return len(self.infos)

    def name(self, i: int) -> str:
        """How a report names image i: the archive and the member."""
        return f"{self.path}: {self.infos[i].filename}"

    def read(self, i: int) -> bytes:
        """The bytes of image i (a bad CRC or a damaged deflate stream: a ValueError naming the member)."""
        try:
            return self.archive.read(self.infos[i])
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as e:
            raise ValueError(f"{self.name(i)}: cannot be read ({' '.join(str(e).split())})") from None

    def header(self, i: int) -> tuple[int, int, str]:
        """(width, height, mode) of image i from its header, without decoding its pixels."""
        import io

        try:
            with Image.open(io.BytesIO(self.read(i))) as im:
                return im.width, im.height, im.mode
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
            raise ValueError(f"{self.name(i)}: not an image: the data could not be decoded") from None

    def image(self, i: int) -> Image.Image:
        """Image i decoded (`decode_image`: 8-bit grayscale or RGB), counted against ``max_pixels``."""
        try:
            img = decode_image(self.read(i))
        except ValueError as e:
            raise ValueError(f"{self.name(i)}: {e}") from None
        self.pixels += img.width * img.height
        if self.pixels > self.max_pixels:
            raise ValueError(f"{self.path}: its images hold more than {self.max_pixels:,} pixels in all; at most "
                             f"{self.max_pixels:,} are decoded")
        return img

    def close(self) -> None:
        self.archive.close()
