"""The `cifar:<path>` source: CIFAR-10 (data_batch_1..5 + test_batch) or CIFAR-100 (train + test, fine labels),
python version, from the .tar.gz (read in one pass) or its extracted folder. The batches are pickles, read
by an unpickler that can rebuild numpy arrays and nothing else."""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np

from metaaug.data.base import Loaded, error, existing_path, stack

KIND = "cifar"
EXPECTED = "a CIFAR-10/100 python .tar.gz or its extracted folder"

CIFAR10 = ("batches.meta", b"label_names", b"labels", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"])
CIFAR100 = ("meta", b"fine_label_names", b"fine_labels", ["train", "test"])
CIFAR_FILES = {CIFAR10[0], CIFAR100[0], *CIFAR10[3], *CIFAR100[3]}

# CIFAR files are pickles, and unpickling can run arbitrary code: allow only what
# numpy arrays (written by Python 2 or 3, numpy 1 or 2) need to be rebuilt.
SAFE_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
    (f"numpy.{core}.{module}", name)
    for core in ("core", "_core")
    for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))
}


class _SafeUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and nothing else."""

    def find_class(self, module: str, name: str):
        if (module, name) not in SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(data: bytes, where: object) -> dict:
    """Load one CIFAR pickle (a dict with bytes keys) without running foreign code."""
    try:
        obj = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # UnpicklingError, EOFError, ValueError... on corrupt data
        raise error(where, f"cannot unpickle ({exc}); expected a CIFAR python-version batch") from None
    if not isinstance(obj, dict):
        raise error(where, f"holds a {type(obj).__name__}; expected a CIFAR python-version dict")
    return obj


CIFAR_MAX_FILE = 256 << 20  # bytes; CIFAR-100's `train`, the largest CIFAR file, is 155 MB


def _bounded(path: Path, name: str, size: int) -> bool:
    """A CIFAR file's declared size (tar header or file size) checked before it is read into memory."""
    if size > CIFAR_MAX_FILE:
        raise error(f"{path}/{name}", f"declares {size} bytes; expected a CIFAR python-version file of at most "
                                       f"{CIFAR_MAX_FILE >> 20} MiB (CIFAR-100's train is 155 MB)")
    return True


def _cifar_files(path: Path) -> dict[str, bytes]:
    """The CIFAR batch/meta files by base name, from the .tar.gz (read in memory) or a folder."""
    try:
        if path.is_dir():
            if not (path / "batches.meta").exists() and not (path / "meta").exists():  # the folder around it?
                inner = [path / s for s in ("cifar-10-batches-py", "cifar-100-python") if (path / s).is_dir()]
                path = inner[0] if inner else path
            return {name: (path / name).read_bytes() for name in CIFAR_FILES
                    if (path / name).is_file() and _bounded(path, name, (path / name).stat().st_size)}
        with tarfile.open(path) as tar:  # one sequential pass: seeking back in a .gz stream is slow
            return {PurePosixPath(m.name).name: tar.extractfile(m).read() for m in tar
                    if m.isfile() and PurePosixPath(m.name).name in CIFAR_FILES and _bounded(path, m.name, m.size)}
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise error(path, f"cannot read archive ({exc}); expected cifar-10-python.tar.gz "
                           "or cifar-100-python.tar.gz") from None


def load(arg: str, image_size: int | None, classes: Sequence[str] | None = None) -> Loaded:
    """CIFAR-10 (data_batch_1..5 + test_batch) or CIFAR-100 (train + test, fine labels)."""
    path = existing_path(arg, KIND, EXPECTED)
    files = _cifar_files(path)
    layout = CIFAR10 if CIFAR10[0] in files else CIFAR100 if CIFAR100[0] in files else None
    if layout is None:
        raise error(path, "holds neither batches.meta (CIFAR-10) nor meta (CIFAR-100); "
                           "expected a CIFAR python-version archive or folder")
    meta_name, names_key, labels_key, batch_names = layout
    meta = _unpickle(files[meta_name], f"{path}/{meta_name}")
    if names_key not in meta:
        raise error(f"{path}/{meta_name}", f"has no {names_key!r} key; expected the class names there")
    images, labels = [], []
    for name in batch_names:
        where = f"{path}/{name}"
        if name not in files:
            raise error(where, f"is missing; expected {', '.join(batch_names)} beside {meta_name}")
        batch = _unpickle(files[name], where)
        data, batch_labels = np.asarray(batch.get(b"data")), np.asarray(batch.get(labels_key))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise error(where, f"b'data' is {data.dtype} {data.shape}; expected uint8 (N, 3072)")
        if batch_labels.shape != (len(data),) or batch_labels.dtype.kind not in "iu":
            raise error(where, f"{labels_key!r} has shape {batch_labels.shape}; expected {len(data)} integer labels")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # rows are CHW planes
        labels.append(batch_labels)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
    return stack(np.concatenate(images), image_size), np.concatenate(labels), names
