"""The `npz:<file>` source: arrays ``images`` and integer ``labels``, optional ``classes`` names (labels are then
indices). Images of any numeric dtype (uint8, uint16, int32, float, bool...) are scaled to uint8 by one rule
(metaaug.data.pixels). Uncompressed arrays are memory-mapped; compressed ones are checked before they inflate."""

from __future__ import annotations

import math
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from metaaug.data.base import DEFLATE_MAX_RATIO, Loaded, error, existing_path, map_array, remap, stack
from metaaug.data.pixels import to_uint8

KIND = "npz"
EXPECTED = "a .npz file with arrays 'images' and 'labels'"


def _images(images: np.ndarray, where: Path) -> np.ndarray:
    """Validate ``images``' shape and convert any numeric dtype to uint8 NHWC."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[3] not in (1, 3) or images.dtype.kind not in "uifb":
        raise error(where, f"'images' is {images.dtype} {images.shape}; expected numbers shaped (N,H,W) "
                           "or (N,H,W,C) with C 1 or 3")
    return to_uint8(images, where, "'images'")


def _read_header(file):
    """(shape, fortran, dtype) of the .npy whose header starts at the file's position; None if not a .npy."""
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}.get(np.lib.format.read_magic(file))
    return None if read_header is None else read_header(file)


def _array(npz, key: str, file, path: Path) -> np.ndarray:
    """Array `key` of an open .npz: memory-mapped when stored uncompressed (np.savez), so a big
    images array is not read whole; compressed (np.savez_compressed) it has to be."""
    info = npz.zip.getinfo(f"{key}.npy")
    if info.compress_type == zipfile.ZIP_STORED:
        file.seek(info.header_offset + 26)  # the zip local header: 26 fixed bytes, name and extra lengths
        name_length, extra_length = struct.unpack("<HH", file.read(4))
        file.seek(info.header_offset + 30 + name_length + extra_length)
        header = _read_header(file)
        if header is not None and not header[2].hasobject:
            shape, fortran, dtype = header
            return map_array(path, dtype, file.tell(), shape, fortran)
        return npz[key]
    with npz.zip.open(info) as member:  # compressed: its declared sizes checked before it is inflated
        header = _read_header(member)
    if header is None:
        return npz[key]  # numpy's own error names the format
    shape, _, dtype = header
    needed = math.prod(shape) * dtype.itemsize
    if needed > info.file_size or info.file_size > DEFLATE_MAX_RATIO * info.compress_size + 4096:
        raise error(path, f"array {key!r} declares {needed} bytes ({info.file_size} inflated, {info.compress_size} "
                          "compressed); expected sizes that fit each other")
    return npz[key]


def load(arg: str, image_size: int | None, classes: Sequence[str] | None = None) -> Loaded:
    """The file's images, labels and class names (the label values themselves, without ``classes``)."""
    path = existing_path(arg, KIND, EXPECTED)
    try:
        with path.open("rb") as file:  # our own handle: np.load leaks its own when the zip is corrupt
            npz = np.load(file, allow_pickle=False)  # no pickle: a data file must not run code
            arrays = {}
            if isinstance(npz, np.lib.npyio.NpzFile):  # else a lone .npy array
                arrays = {key: _array(npz, key, file, path) for key in ("images", "labels", "classes")
                          if key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, struct.error) as exc:
        raise error(path, f"cannot read ({exc}); expected a .npz file of plain (non-object) arrays") from None
    if "images" not in arrays or "labels" not in arrays:
        raise error(path, "lacks arrays 'images' and 'labels'; expected np.savez(path, images=..., labels=...)")
    images, labels, names = _images(arrays["images"], path), arrays["labels"], arrays.get("classes")
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(images):
        raise error(path, f"'labels' is {labels.dtype} {labels.shape}; expected {len(images)} integers, "
                          "one per image")
    if names is None:
        labels, names = remap(labels)
    elif names.ndim != 1 or names.dtype.kind not in "US" or len(set(names.tolist())) != len(names):
        raise error(path, f"'classes' is {names.dtype} {names.shape}; expected unique class-name strings")
    else:
        names = [c.decode() if isinstance(c, bytes) else c for c in names.tolist()]
    return stack(images, image_size), labels, names
