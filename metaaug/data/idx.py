"""The `idx:<dir>` source: MNIST-style IDX files, every images/labels pair in a folder (e.g. train + t10k).

A raw file is memory-mapped; a gzipped one is inflated in memory, only as far as its header declares. Images
of any IDX dtype (unsigned or signed byte, short, int, float, double) are scaled to uint8 by one rule for the
whole source (metaaug.data.pixels); labels must be integers.
"""

from __future__ import annotations

import gzip
import math
import re
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from metaaug.data.base import DEFLATE_MAX_RATIO, Loaded, error, existing_path, map_array, remap, size_error, stack
from metaaug.data.pixels import to_uint8

KIND = "idx"
EXPECTED = "a folder of *images-idx3-ubyte[.gz] / *labels-idx1-ubyte[.gz] pairs"

IDX_IMAGES = re.compile(r"^(.*)images([-.])idx3-ubyte(\.gz)?$")
DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
          0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}  # the IDX format's type codes


def _header(path: Path, data: bytes, ndim: int) -> tuple[np.dtype, tuple[int, ...]]:
    """(dtype, dims) of an IDX header: 0x0000, a type code, ndim, big-endian dims."""
    if len(data) < 4 + 4 * ndim or data[:2] != b"\0\0" or data[3] != ndim:
        raise error(path, f"bad IDX header; expected magic 0x0000 <type> 0x{ndim:02x}")
    if data[2] not in DTYPES:
        raise error(path, f"IDX type code 0x{data[2]:02x} is unknown; expected one of "
                          f"{', '.join(f'0x{c:02x}' for c in DTYPES)}")
    return DTYPES[data[2]], tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse one IDX file (memory-mapped when raw) and check its length against its header."""
    header = 4 + 4 * ndim
    try:
        if path.suffix == ".gz":
            data, size = _read_gzip_idx(path, header, ndim)
        else:
            with path.open("rb") as file:
                data, size = file.read(header), path.stat().st_size
    except (OSError, EOFError, zlib.error) as exc:
        raise error(path, f"cannot read ({exc}); expected a raw or gzipped IDX file") from None
    dtype, dims = _header(path, data, ndim)
    needed = header + math.prod(dims) * dtype.itemsize
    if size != needed:
        raise error(path, f"file is {size} bytes but its header {dims} needs {needed}; "
                          "expected the whole file (is it truncated?)")
    if path.suffix == ".gz":
        return np.frombuffer(data, dtype, offset=header).reshape(dims)
    return map_array(path, dtype, header, dims)


def _read_gzip_idx(path: Path, header: int, ndim: int) -> tuple[bytes, int]:
    """A gzipped IDX file inflated only as far as its header declares (and checked before anything is
    allocated to be plausible for its compressed size), so that a small file inflating to gigabytes stops at
    once in little memory. Returns (bytes, inflated size as far as read: one byte past the declared end
    shows a file longer than its header)."""
    with gzip.open(path, "rb") as file:
        data = file.read(header)
        dtype, dims = _header(path, data, ndim)
        declared = header + math.prod(dims) * dtype.itemsize
        if declared > DEFLATE_MAX_RATIO * path.stat().st_size + header:
            raise error(path, f"its header declares {declared} bytes, more than {path.stat().st_size} compressed "
                              "bytes can hold; expected a gzipped IDX file whose header matches its data")
        data += file.read(declared - header)
        return data, len(data) + len(file.read(1))


def _labels_path(images_path: Path) -> Path:
    """The labels file paired with an images file, gzipped or not."""
    prefix, sep, _ = IDX_IMAGES.match(images_path.name).groups()
    for name in (f"{prefix}labels{sep}idx1-ubyte", f"{prefix}labels{sep}idx1-ubyte.gz"):
        if (images_path.parent / name).is_file():
            return images_path.parent / name
    raise error(images_path, f"has no labels file; expected {prefix}labels{sep}idx1-ubyte[.gz] beside it")


def load(arg: str, image_size: int | None, classes: Sequence[str] | None = None) -> Loaded:
    """Every images/labels pair in the folder, concatenated in sorted order."""
    root = existing_path(arg, KIND, EXPECTED)
    if not root.is_dir():
        raise error(root, f"is not a folder; expected {EXPECTED}")
    image_files = sorted(p for p in root.iterdir() if IDX_IMAGES.match(p.name) and p.is_file())
    if not image_files:
        raise error(root, f"holds no IDX images file; expected {EXPECTED}")
    images, labels = [], []
    for images_path in image_files:
        labels_path = _labels_path(images_path)
        pair_images, pair_labels = read_idx(images_path, 3), read_idx(labels_path, 1)
        if pair_labels.dtype.kind not in "iu":
            raise error(labels_path, f"holds {pair_labels.dtype.name} labels; expected integers (IDX type 0x08-0x0c)")
        if len(pair_images) != len(pair_labels):
            raise error(labels_path, f"holds {len(pair_labels)} labels but {images_path.name} "
                                     f"holds {len(pair_images)} images; expected one label per image")
        images.append(stack(pair_images[..., None], image_size))
        labels.append(pair_labels)
        if images[-1].shape[1:] != images[0].shape[1:]:
            raise size_error(images_path, images[0].shape[1:], images[-1].shape[1:])
    labels, names = remap(np.concatenate(labels))
    images = images[0] if len(images) == 1 else np.concatenate(images)  # one uint8 pair stays mapped
    return to_uint8(images, root), labels, names
