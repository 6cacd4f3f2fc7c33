"""The data sources by kind, and what every kind shares: a spec (``kind`` or ``kind:<path>``) checked, loaded
and held to the invariants the tasks rely on.

A source is one module of this package that defines ``KIND`` (the spec's prefix), ``EXPECTED`` (what its
path names, in an error's words; None for a kind that takes no path) and
``load(arg, image_size, classes) -> (images, labels, class names)``. The registry finds them by listing the
package, so adding a source is adding its module (and its test): nothing here names a kind.
"""

from __future__ import annotations

import functools
import importlib
import os
import pkgutil
from pathlib import Path
from types import ModuleType
from typing import Sequence

import numpy as np

import metaaug.data
from metaaug.data.base import Dataset, error, existing_path


@functools.cache
def sources() -> dict[str, ModuleType]:
    """Every source module of metaaug.data by its KIND, in name order."""
    found = {}
    for info in sorted(pkgutil.iter_modules(metaaug.data.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"metaaug.data.{info.name}")
        if hasattr(module, "KIND") and callable(getattr(module, "load", None)):
            found[module.KIND] = module
    return found


def _source(spec: str) -> tuple[ModuleType, str]:
    """(module, path) of a spec whose kind is known."""
    kind, _, arg = str(spec).partition(":")
    known = sources()
    if kind not in known:
        kinds = [k + ("" if m.EXPECTED is None else ":<path>") for k, m in known.items()]
        raise error(f"data.source={spec!r}", f"unknown source kind {kind!r}; expected one of {', '.join(kinds)}")
    return known[kind], arg


def check_image_size(image_size: object) -> None:
    """Reject sizes no downstream network can use before any file is read; None keeps sizes."""
    if image_size is None:
        return
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 4:
        raise error("data.image_size", f"expected an int >= 4 (or null to keep the source size), got {image_size!r}")


def check_source(spec: str | None) -> None:
    """What can be told of a source in a millisecond (its kind is known, its path exists), so that a stage
    stops before it opens the MLflow store or reads anything; None (no separate target source) passes."""
    if spec is None:
        return
    module, arg = _source(spec)
    if module.EXPECTED is not None:
        existing_path(arg, module.KIND, f"a {module.KIND} source (see data.source in params.yaml)")


def load_source(spec: str, image_size: int | None = None, folder_classes: Sequence[str] | None = None) -> Dataset:
    """Load the dataset a spec names, e.g. ``digits`` or ``imagefolder:/data/x``.

    With ``image_size`` every image is resized to image_size x image_size (one
    image at a time, so mixed-size folders work and memory stays bounded);
    without it all images must already share one size. ``folder_classes`` limits
    an image folder to those class sub-folders, which are all it decodes; the
    other formats ignore it (raw IDX and uncompressed npz images are
    memory-mapped, so the images a caller leaves out are never read).
    """
    check_image_size(image_size)
    module, arg = _source(spec)
    size = None if image_size is None else int(image_size)
    keep = None if folder_classes is None else [str(c) for c in folder_classes]
    images, labels, classes = module.load(arg, size, keep)
    return _dataset(images, np.asarray(labels), tuple(classes), spec)


def _dataset(images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], spec: str) -> Dataset:
    """Check the invariants every caller relies on, whatever the format."""
    labels = labels.astype(np.int64)  # uint64 or uint8 labels would break bincount / wrap on subtraction
    if len(images) == 0:
        raise error(spec, "holds no images; expected at least one image per class")
    if len(classes) < 2:
        raise error(spec, f"has {len(classes)} class(es); expected at least 2 to classify")
    if labels.min() < 0 or labels.max() >= len(classes):
        raise error(spec, f"labels span [{labels.min()}, {labels.max()}]; expected 0..{len(classes) - 1} "
                          f"indexing the {len(classes)} class names")
    empty = [classes[i] for i in np.flatnonzero(np.bincount(labels, minlength=len(classes)) == 0)]
    if empty:
        raise error(spec, f"classes without images: {', '.join(empty[:5])}; expected every class to have images")
    return Dataset(np.ascontiguousarray(images, dtype=np.uint8), labels, classes, spec)


def source_identity(spec: str) -> tuple:
    """What a spec names, so that two spellings of one source compare equal: its kind and the file or folder
    itself (device and inode, so `x`, `./x`, `x/`, `~/x`, an absolute path, a symbolic link, a hard link or a
    bind mount of it are one source); the fully resolved path where it does not exist."""
    kind, _, arg = str(spec).strip().partition(":")
    if not arg:
        return (kind, "")
    path = Path(arg.strip()).expanduser()
    try:
        stat = path.stat()
        return (kind, (stat.st_dev, stat.st_ino))
    except OSError:
        return (kind, os.path.realpath(path))


def same_source(a: str | None, b: str | None) -> bool:
    """Whether two specs name the same data (see source_identity)."""
    return a is not None and b is not None and source_identity(a) == source_identity(b)
