"""Data sources: turn a ``data.source`` spec string into one in-memory Dataset.

This module owns reading every supported format -- scikit-learn's bundled
digits, an image folder, MNIST-style IDX files, CIFAR-10/100 python pickles and
``.npz`` arrays -- and nothing else: no splits, no tasks, no caching, and it
never writes to disk. A spec is ``kind`` or ``kind:<path>``; ``LOADERS`` maps
each kind to one small loader that returns uint8 NHWC images, labels and class
names. ``load_source`` applies the checks every format shares. Every bad input
becomes a one-line :class:`MetaaugError` naming the file and what is expected.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import re
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageOps

from metaaug.errors import MetaaugError


@dataclass(frozen=True)
class Dataset:
    """A labelled image set, exactly as loaded (no splits)."""

    images: np.ndarray  # uint8, (N, H, W, C), C in {1, 3}, C-contiguous
    labels: np.ndarray  # int64, (N,), values 0..K-1, every class non-empty
    classes: tuple[str, ...]  # classes[label] is the label's name
    source: str  # the spec string it was loaded from


Loaded = tuple[np.ndarray, np.ndarray, Sequence[str]]


def _error(where: object, what: str) -> MetaaugError:
    """One-line error ``<where>: <what>``; wrapped library messages may hold newlines."""
    return MetaaugError(f"{where}: {what}".replace("\r", " ").replace("\n", " "))


def _check_image_size(image_size: object) -> None:
    """Reject sizes no downstream network can use before any file is read; None keeps sizes."""
    if image_size is None:
        return
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 4:
        raise _error("data.image_size", f"expected an int >= 4 (or null to keep the source size), got {image_size!r}")


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize one HWC uint8 image to size x size.

    Pillow's BILINEAR widens its kernel when shrinking (it antialiases, unlike
    cv2.INTER_LINEAR), so one filter serves both directions without aliasing,
    and Pillow is already a dependency where OpenCV is not.
    """
    if image.shape[:2] == (size, size):
        return image
    channels = image.shape[2]
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    return np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR)).reshape(size, size, channels)


def _stack(images: np.ndarray, image_size: int | None) -> np.ndarray:
    """Every image resized to image_size, one at a time into one array; without a size the array as
    it is, so a memory-mapped source stays mapped (only the images used are ever read)."""
    if image_size is None:
        return images
    out = np.empty((len(images), image_size, image_size, images.shape[3]), np.uint8)
    for i, image in enumerate(images):
        out[i] = _resize(image, image_size)
    return out


def _size_error(where: object, first: tuple, other: tuple) -> MetaaugError:
    return _error(where, f"images differ in size ({first[0]}x{first[1]} vs {other[0]}x{other[1]}, HxW); "
                         "expected one size, or data.image_size set to resize them all to one")


def _map(path: Path, dtype: np.dtype, offset: int, shape: tuple, fortran: bool = False) -> np.ndarray:
    """A read-only memory map of an array stored at `offset` in `path`: pages are read only when used."""
    if math.prod(shape) == 0:  # mmap cannot map zero bytes
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype, "r", offset=offset, shape=shape, order="F" if fortran else "C")


def _remap(labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Map arbitrary integer labels to 0..K-1 in sorted order; names are the original values."""
    values, labels = np.unique(labels, return_inverse=True)
    return labels.reshape(-1), [str(v) for v in values]


def _path(arg: str, kind: str, what: str) -> Path:
    """The path a spec names; it must exist (nothing is ever downloaded)."""
    if not arg:
        raise _error(kind, f"expected {kind}:<path> naming {what}")
    path = Path(arg).expanduser()
    if not path.exists():
        raise _error(path, f"does not exist; expected {what}")
    return path


# --- digits ---------------------------------------------------------------


def _load_digits(arg: str, image_size: int | None) -> Loaded:
    """scikit-learn's bundled 8x8 digits (values 0..16): real data with no download."""
    if arg:
        raise _error(f"digits:{arg}", "the digits source takes no path; use data.source=digits")
    from sklearn.datasets import load_digits  # imported here: sklearn is slow to import

    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    return _stack(images, image_size), digits.target, [str(c) for c in range(10)]


# --- image folder ---------------------------------------------------------

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
GRAY_MODES = {"1", "L", "LA", "La", "I", "F"}


def _read_image(path: Path, image_size: int | None) -> np.ndarray:
    """Decode one file to HWC uint8 with C=1 (grayscale modes) or C=3 (everything else)."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now: truncated or corrupt data fails here, not later
            img = ImageOps.exif_transpose(img)  # phone photos store their rotation in EXIF
            if img.mode.startswith("I;16"):  # 16-bit grayscale PNG: keep the top 8 bits
                image = (np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8)[..., None]
            elif img.mode in GRAY_MODES:
                image = np.asarray(img.convert("L"))[..., None]
            elif img.mode in ("P", "PA"):  # via RGBA so palette transparency converts without a warning
                image = np.asarray(img.convert("RGBA").convert("RGB"))
            else:  # RGB, RGBA, CMYK, YCbCr...: alpha is dropped
                image = np.asarray(img.convert("RGB"))
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError... depending on the codec
        raise _error(path, f"cannot read image ({exc}); expected a valid PNG or JPEG file") from None
    return image if image_size is None else _resize(image, image_size)


def _load_imagefolder(arg: str, image_size: int | None, keep: Sequence[str] | None = None) -> Loaded:
    """One sub-folder per class (sorted names are the classes), PNG/JPEG files inside.

    Hidden entries and other files (.DS_Store, notes) are skipped. Grayscale
    stays one channel only if every image is grayscale, so one colour image
    turns the whole set RGB (gray images are replicated, as Pillow would).
    With `keep`, only those class folders are read: a huge folder costs what is used.
    """
    root = _path(arg, "imagefolder", "a folder with one sub-folder of PNG/JPEG images per class")
    if not root.is_dir():
        raise _error(root, "is not a folder; expected one sub-folder of PNG/JPEG images per class")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        raise _error(root, f"found {len(class_dirs)} class folder(s); expected one sub-folder per class, at least 2")
    if keep is not None:
        names = [p.name for p in class_dirs]
        missing = [c for c in keep if c not in names]
        if missing:
            raise _error(root, f"has no class folder {missing[0]!r}; expected one of {names}")
        class_dirs = [p for p in class_dirs if p.name in keep]
    files, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        found = sorted(p for p in class_dir.iterdir()
                       if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())
        if not found:
            raise _error(class_dir, "class folder holds no images; expected *.png, *.jpg or *.jpeg files")
        files += found
        labels += [label] * len(found)
    return _decode_all(files, image_size), np.array(labels), [p.name for p in class_dirs]


def _decode_all(files: list[Path], image_size: int | None) -> np.ndarray:
    """Decode the files one at a time into one preallocated (N, H, W, C) array (peak memory: the images,
    not twice them); the first colour image turns the whole array RGB."""
    images = None
    for i, path in enumerate(files):
        image = _read_image(path, image_size)
        if images is None:
            images = np.empty((len(files), *image.shape), np.uint8)
        if image.shape[:2] != images.shape[1:3]:
            raise _size_error(path, images.shape[1:3], image.shape[:2])
        if image.shape[2] > images.shape[3]:
            images = np.repeat(images, 3, axis=3)
        images[i] = image  # a gray image broadcasts over RGB
    return images


# --- IDX (MNIST-style) ----------------------------------------------------

IDX_IMAGES = re.compile(r"^(.*)images([-.])idx3-ubyte(\.gz)?$")


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse one IDX file: 0x0000, dtype code 0x08 (ubyte), ndim, big-endian dims, data.

    A raw file is memory-mapped; a gzipped one has to be decompressed in memory.
    """
    header = 4 + 4 * ndim
    try:
        if path.suffix == ".gz":
            data, size = _read_gzip_idx(path, header, ndim)
        else:
            with path.open("rb") as file:
                data, size = file.read(header), path.stat().st_size
    except (OSError, EOFError, zlib.error) as exc:
        raise _error(path, f"cannot read ({exc}); expected a raw or gzipped IDX file") from None
    if len(data) < header or data[:2] != b"\0\0" or data[3] != ndim:
        raise _error(path, f"bad IDX header; expected magic 0x0000 0x08 0x{ndim:02x}")
    if data[2] != 0x08:
        raise _error(path, f"IDX dtype code 0x{data[2]:02x} is not supported; expected 0x08 (unsigned byte)")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    if size != header + math.prod(dims):
        raise _error(path, f"file is {size} bytes but its header {dims} needs {header + math.prod(dims)}; "
                           "expected the whole file (is it truncated?)")
    if path.suffix == ".gz":
        return np.frombuffer(data, np.uint8, offset=header).reshape(dims)
    return _map(path, np.uint8, header, dims)


DEFLATE_MAX_RATIO = 1032  # deflate cannot inflate one byte into more than 1032: a larger claim is not a gzip


def _read_gzip_idx(path: Path, header: int, ndim: int) -> tuple[bytes, int]:
    """A gzipped IDX file inflated only as far as its header declares (and checked before anything is
    allocated to be plausible for its compressed size), so that a small file inflating to gigabytes stops at
    once in little memory. Returns (bytes, inflated size as far as read: one byte past the declared end
    shows a file longer than its header)."""
    with gzip.open(path, "rb") as file:
        data = file.read(header)
        if len(data) < header or data[:2] != b"\0\0" or data[3] != ndim:
            return data, len(data)
        declared = header + math.prod(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
        if declared > DEFLATE_MAX_RATIO * path.stat().st_size + header:
            raise _error(path, f"its header declares {declared} bytes, more than {path.stat().st_size} compressed "
                               "bytes can hold; expected a gzipped IDX file whose header matches its data")
        data += file.read(declared - header)
        return data, len(data) + len(file.read(1))


def _idx_labels_path(images_path: Path) -> Path:
    """The labels file paired with an images file, gzipped or not."""
    prefix, sep, _ = IDX_IMAGES.match(images_path.name).groups()
    for name in (f"{prefix}labels{sep}idx1-ubyte", f"{prefix}labels{sep}idx1-ubyte.gz"):
        if (images_path.parent / name).is_file():
            return images_path.parent / name
    raise _error(images_path, f"has no labels file; expected {prefix}labels{sep}idx1-ubyte[.gz] beside it")


def _load_idx(arg: str, image_size: int | None) -> Loaded:
    """Every images/labels pair in a folder (e.g. train + t10k), concatenated in sorted order."""
    expected = "a folder of *images-idx3-ubyte[.gz] / *labels-idx1-ubyte[.gz] pairs"
    root = _path(arg, "idx", expected)
    if not root.is_dir():
        raise _error(root, f"is not a folder; expected {expected}")
    image_files = sorted(p for p in root.iterdir() if IDX_IMAGES.match(p.name) and p.is_file())
    if not image_files:
        raise _error(root, f"holds no IDX images file; expected {expected}")
    images, labels = [], []
    for images_path in image_files:
        labels_path = _idx_labels_path(images_path)
        pair_images, pair_labels = _read_idx(images_path, 3), _read_idx(labels_path, 1)
        if len(pair_images) != len(pair_labels):
            raise _error(labels_path, f"holds {len(pair_labels)} labels but {images_path.name} "
                                      f"holds {len(pair_images)} images; expected one label per image")
        images.append(_stack(pair_images[..., None], image_size))
        labels.append(pair_labels)
        if images[-1].shape[1:] != images[0].shape[1:]:
            raise _size_error(images_path, images[0].shape[1:], images[-1].shape[1:])
    labels, classes = _remap(np.concatenate(labels))
    return images[0] if len(images) == 1 else np.concatenate(images), labels, classes  # one pair stays mapped


# --- CIFAR-10 / CIFAR-100 python version ------------------------------------

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
        raise _error(where, f"cannot unpickle ({exc}); expected a CIFAR python-version batch") from None
    if not isinstance(obj, dict):
        raise _error(where, f"holds a {type(obj).__name__}; expected a CIFAR python-version dict")
    return obj


CIFAR_MAX_FILE = 256 << 20  # bytes; CIFAR-100's `train`, the largest CIFAR file, is 155 MB


def _bounded(path: Path, name: str, size: int) -> bool:
    """A CIFAR file's declared size (tar header or file size) checked before it is read into memory."""
    if size > CIFAR_MAX_FILE:
        raise _error(f"{path}/{name}", f"declares {size} bytes; expected a CIFAR python-version file of at most "
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
        raise _error(path, f"cannot read archive ({exc}); expected cifar-10-python.tar.gz "
                           "or cifar-100-python.tar.gz") from None


def _load_cifar(arg: str, image_size: int | None) -> Loaded:
    """CIFAR-10 (data_batch_1..5 + test_batch) or CIFAR-100 (train + test, fine labels)."""
    path = _path(arg, "cifar", "a CIFAR-10/100 python .tar.gz or its extracted folder")
    files = _cifar_files(path)
    layout = CIFAR10 if CIFAR10[0] in files else CIFAR100 if CIFAR100[0] in files else None
    if layout is None:
        raise _error(path, "holds neither batches.meta (CIFAR-10) nor meta (CIFAR-100); "
                           "expected a CIFAR python-version archive or folder")
    meta_name, names_key, labels_key, batch_names = layout
    meta = _unpickle(files[meta_name], f"{path}/{meta_name}")
    if names_key not in meta:
        raise _error(f"{path}/{meta_name}", f"has no {names_key!r} key; expected the class names there")
    images, labels = [], []
    for name in batch_names:
        where = f"{path}/{name}"
        if name not in files:
            raise _error(where, f"is missing; expected {', '.join(batch_names)} beside {meta_name}")
        batch = _unpickle(files[name], where)
        data, batch_labels = np.asarray(batch.get(b"data")), np.asarray(batch.get(labels_key))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise _error(where, f"b'data' is {data.dtype} {data.shape}; expected uint8 (N, 3072)")
        if batch_labels.shape != (len(data),) or batch_labels.dtype.kind not in "iu":
            raise _error(where, f"{labels_key!r} has shape {batch_labels.shape}; expected {len(data)} integer labels")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # rows are CHW planes
        labels.append(batch_labels)
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
    return _stack(np.concatenate(images), image_size), np.concatenate(labels), classes


# --- npz ------------------------------------------------------------------


def _npz_images(images: np.ndarray, where: Path) -> np.ndarray:
    """Validate ``images`` and convert any numeric dtype to uint8 NHWC."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[3] not in (1, 3) or images.dtype.kind not in "uif":
        raise _error(where, f"'images' is {images.dtype} {images.shape}; expected numbers shaped (N,H,W) "
                            "or (N,H,W,C) with C 1 or 3")
    if images.dtype == np.uint8 or images.size == 0:
        return images.astype(np.uint8, copy=False)
    if images.dtype.kind == "f":
        if not np.isfinite(images).all():
            raise _error(where, "'images' holds NaN or inf; expected finite pixel values")
        if images.max() <= 1.0 and images.min() >= 0.0:
            images = images * 255.0  # floats in [0, 1] are the common normalised form
    if images.min() < 0 or images.max() > 255:
        raise _error(where, f"'images' spans [{images.min()}, {images.max()}]; expected [0, 1] floats or [0, 255]")
    return np.rint(images).astype(np.uint8)


def _npz_array(npz, key: str, file, path: Path) -> np.ndarray:
    """Array `key` of an open .npz: memory-mapped when stored uncompressed (np.savez), so a big
    images array is not read whole; compressed (np.savez_compressed) it has to be."""
    info = npz.zip.getinfo(f"{key}.npy")
    if info.compress_type == zipfile.ZIP_STORED:
        file.seek(info.header_offset + 26)  # the zip local header: 26 fixed bytes, name and extra lengths
        name_length, extra_length = struct.unpack("<HH", file.read(4))
        file.seek(info.header_offset + 30 + name_length + extra_length)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(np.lib.format.read_magic(file))
        if read_header is not None:
            shape, fortran, dtype = read_header(file)
            if not dtype.hasobject:
                return _map(path, dtype, file.tell(), shape, fortran)
        return npz[key]
    with npz.zip.open(info) as member:  # compressed: its declared sizes checked before it is inflated
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(np.lib.format.read_magic(member))
        if read_header is None:
            return npz[key]  # numpy's own error names the format
        shape, _, dtype = read_header(member)
    needed = math.prod(shape) * dtype.itemsize
    if needed > info.file_size or info.file_size > DEFLATE_MAX_RATIO * info.compress_size + 4096:
        raise _error(path, f"array {key!r} declares {needed} bytes ({info.file_size} inflated, {info.compress_size} "
                           "compressed); expected sizes that fit each other")
    return npz[key]


def _load_npz(arg: str, image_size: int | None) -> Loaded:
    """Arrays ``images`` and integer ``labels``; optional ``classes`` names (labels are then indices)."""
    path = _path(arg, "npz", "a .npz file with arrays 'images' and 'labels'")
    try:
        with path.open("rb") as file:  # our own handle: np.load leaks its own when the zip is corrupt
            npz = np.load(file, allow_pickle=False)  # no pickle: a data file must not run code
            arrays = {}
            if isinstance(npz, np.lib.npyio.NpzFile):  # else a lone .npy array
                arrays = {key: _npz_array(npz, key, file, path) for key in ("images", "labels", "classes")
                          if key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, struct.error) as exc:
        raise _error(path, f"cannot read ({exc}); expected a .npz file of plain (non-object) arrays") from None
    if "images" not in arrays or "labels" not in arrays:
        raise _error(path, "lacks arrays 'images' and 'labels'; expected np.savez(path, images=..., labels=...)")
    images, labels, classes = _npz_images(arrays["images"], path), arrays["labels"], arrays.get("classes")
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(images):
        raise _error(path, f"'labels' is {labels.dtype} {labels.shape}; expected {len(images)} integers, "
                           "one per image")
    if classes is None:
        labels, classes = _remap(labels)
    elif classes.ndim != 1 or classes.dtype.kind not in "US" or len(set(classes.tolist())) != len(classes):
        raise _error(path, f"'classes' is {classes.dtype} {classes.shape}; expected unique class-name strings")
    else:
        classes = [c.decode() if isinstance(c, bytes) else c for c in classes.tolist()]
    return _stack(images, image_size), labels, classes


# --- dispatch -------------------------------------------------------------

LOADERS: dict[str, Callable[[str, int | None], Loaded]] = {
    "digits": _load_digits,
    "imagefolder": _load_imagefolder,
    "idx": _load_idx,
    "cifar": _load_cifar,
    "npz": _load_npz,
}


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


def _kind(spec: str) -> tuple[str, str]:
    """(kind, path) of a spec whose kind is known."""
    kind, _, arg = str(spec).partition(":")
    if kind not in LOADERS:
        raise _error(f"data.source={spec!r}", f"unknown source kind {kind!r}; expected one of "
                                              f"{', '.join(k + ('' if k == 'digits' else ':<path>') for k in LOADERS)}")
    return kind, arg


def check_source(spec: str | None) -> None:
    """What can be told of a source in a millisecond (its kind is known, its path exists), so that a stage
    stops before it opens the MLflow store or reads anything; None (no separate target source) passes."""
    if spec is None:
        return
    kind, arg = _kind(spec)
    if kind != "digits":
        _path(arg, kind, f"a {kind} source (see data.source in params.yaml)")


def load_source(spec: str, image_size: int | None = None, folder_classes: Sequence[str] | None = None) -> Dataset:
    """Load the dataset a spec names, e.g. ``digits`` or ``imagefolder:/data/x``.

    With ``image_size`` every image is resized to image_size x image_size (one
    image at a time, so mixed-size folders work and memory stays bounded);
    without it all images must already share one size. ``folder_classes`` limits
    an image folder to those class sub-folders, which are all it decodes; the
    other formats ignore it (raw IDX and uncompressed npz images are
    memory-mapped, so the images a caller leaves out are never read).
    """
    _check_image_size(image_size)
    kind, arg = _kind(spec)
    size = None if image_size is None else int(image_size)
    if kind == "imagefolder" and folder_classes is not None:
        images, labels, classes = _load_imagefolder(arg, size, [str(c) for c in folder_classes])
    else:
        images, labels, classes = LOADERS[kind](arg, size)
    return _dataset(images, np.asarray(labels), tuple(classes), spec)


def _dataset(images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], spec: str) -> Dataset:
    """Check the invariants every caller relies on, whatever the format."""
    labels = labels.astype(np.int64)  # uint64 or uint8 labels would break bincount / wrap on subtraction
    if len(images) == 0:
        raise _error(spec, "holds no images; expected at least one image per class")
    if len(classes) < 2:
        raise _error(spec, f"has {len(classes)} class(es); expected at least 2 to classify")
    if labels.min() < 0 or labels.max() >= len(classes):
        raise _error(spec, f"labels span [{labels.min()}, {labels.max()}]; expected 0..{len(classes) - 1} "
                           f"indexing the {len(classes)} class names")
    empty = [classes[i] for i in np.flatnonzero(np.bincount(labels, minlength=len(classes)) == 0)]
    if empty:
        raise _error(spec, f"classes without images: {', '.join(empty[:5])}; expected every class to have images")
    return Dataset(np.ascontiguousarray(images, dtype=np.uint8), labels, classes, spec)
