"""What every data source shares: the Dataset it yields, its one-line errors, and the array helpers
(resize, stack, memory-map, label remap, the path a spec names)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from metaaug.errors import MetaaugError


@dataclass(frozen=True)
class Dataset:
    """A labelled image set, exactly as loaded (no splits)."""

    images: np.ndarray  # uint8, (N, H, W, C), C in {1, 3}, C-contiguous
    labels: np.ndarray  # int64, (N,), values 0..K-1, every class non-empty
    classes: tuple[str, ...]  # classes[label] is the label's name
    source: str  # the spec string it was loaded from


Loaded = tuple[np.ndarray, np.ndarray, Sequence[str]]  # what a source's load() returns: images, labels, names

DEFLATE_MAX_RATIO = 1032  # deflate cannot inflate one byte into more than 1032: a larger claim is not a gzip


def error(where: object, what: str) -> MetaaugError:
    """One-line error ``<where>: <what>``; wrapped library messages may hold newlines."""
    return MetaaugError(f"{where}: {what}".replace("\r", " ").replace("\n", " "))


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize one HWC image (uint8, or int32/float32 in the source's own units) to size x size.

    Pillow's BILINEAR widens its kernel when shrinking (it antialiases, unlike
    cv2.INTER_LINEAR), so one filter serves both directions without aliasing.
    A deeper image is resized a channel at a time in Pillow's 32-bit float mode,
    so 16-bit data keeps every level until the whole set is scaled (pixels.to_uint8).
    """
    if image.shape[:2] == (size, size):
        return image
    channels = image.shape[2]
    if image.dtype != np.uint8:
        out = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], np.float32), "F")
                                   .resize((size, size), Image.Resampling.BILINEAR)) for c in range(channels)], -1)
        return out if image.dtype.kind == "f" else np.rint(out).astype(image.dtype)
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    return np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR)).reshape(size, size, channels)


def stack(images: np.ndarray, image_size: int | None) -> np.ndarray:
    """Every image resized to image_size, one at a time into one array; without a size the array as
    it is, so a memory-mapped source stays mapped (only the images used are ever read)."""
    if image_size is None:
        return images
    out = np.empty((len(images), image_size, image_size, images.shape[3]), images.dtype)
    for i, image in enumerate(images):
        out[i] = resize(image, image_size)
    return out


def size_error(where: object, first: tuple, other: tuple) -> MetaaugError:
    return error(where, f"images differ in size ({first[0]}x{first[1]} vs {other[0]}x{other[1]}, HxW); "
                        "expected one size, or data.image_size set to resize them all to one")


def map_array(path: Path, dtype: np.dtype, offset: int, shape: tuple, fortran: bool = False) -> np.ndarray:
    """A read-only memory map of an array stored at `offset` in `path`: pages are read only when used."""
    if math.prod(shape) == 0:  # mmap cannot map zero bytes
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype, "r", offset=offset, shape=shape, order="F" if fortran else "C")


def remap(labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Map arbitrary integer labels to 0..K-1 in sorted order; names are the original values."""
    values, labels = np.unique(labels, return_inverse=True)
    return labels.reshape(-1), [str(v) for v in values]


def existing_path(arg: str, kind: str, what: str) -> Path:
    """The path a spec names; it must exist (nothing is ever downloaded)."""
    if not arg:
        raise error(kind, f"expected {kind}:<path> naming {what}")
    path = Path(arg).expanduser()
    if not path.exists():
        raise error(path, f"does not exist; expected {what}")
    return path
