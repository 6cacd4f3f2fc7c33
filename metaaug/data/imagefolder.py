"""The `imagefolder:<dir>` source: one sub-folder per class (sorted names are the classes), PNG/JPEG inside.

Every image is read at its full depth: 8-bit modes as uint8; 16-bit and 32-bit grayscale (I;16, I;16B, I, F)
and 16-bit colour PNGs (which Pillow would cut to their top byte; OpenCV reads them whole) in their own units,
then the whole folder is scaled to uint8 by one rule (metaaug.data.pixels). A folder that mixes 8-bit and
deeper images is refused: the two have no common white.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageOps

from metaaug.data.base import Loaded, error, existing_path, resize, size_error
from metaaug.data.pixels import to_uint8

KIND = "imagefolder"
EXPECTED = "a folder with one sub-folder of PNG/JPEG images per class"

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
GRAY_MODES = {"1", "L", "LA", "La"}  # 8-bit grayscale, with or without alpha
DEEP_GRAY_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}  # read in their own units


def _deep_colour(img: Image.Image) -> bool:
    """A PNG whose samples are 16-bit but whose Pillow mode is 8-bit (RGB, RGBA, LA from RGB;16B...)."""
    return img.format == "PNG" and img.mode not in DEEP_GRAY_MODES and any(";16" in str(t[3]) for t in img.tile)


def _decode_deep_colour(path: Path) -> np.ndarray:
    """A 16-bit colour or gray+alpha PNG, every bit kept (OpenCV), as HWC int32 without alpha."""
    image = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.dtype != np.uint16:
        raise ValueError("OpenCV cannot decode its 16-bit samples")
    if image.ndim == 2:
        image = image[..., None]
    elif image.shape[2] == 2:  # gray + alpha
        image = image[..., :1]
    else:  # BGR(A) -> RGB
        image = image[..., 2::-1]
    return image.astype(np.int32)


def _decode(path: Path) -> np.ndarray:
    """One file as HWC: uint8 for 8-bit modes (C=1 grayscale, else C=3); deeper data in its own units, int32
    (16-bit and 32-bit integers) or float32 (mode F)."""
    with Image.open(path) as img:
        if _deep_colour(img):
            return _decode_deep_colour(path)
        img.load()  # decode now: truncated or corrupt data fails here, not later
        img = ImageOps.exif_transpose(img)  # phone photos store their rotation in EXIF
        if img.mode in DEEP_GRAY_MODES:
            return np.asarray(img).astype(np.float32 if img.mode == "F" else np.int32)[..., None]
        if img.mode in GRAY_MODES:
            return np.asarray(img.convert("L"))[..., None]
        if img.mode in ("P", "PA"):  # via RGBA so palette transparency converts without a warning
            return np.asarray(img.convert("RGBA").convert("RGB"))
        return np.asarray(img.convert("RGB"))  # RGB, RGBA, CMYK, YCbCr...: alpha is dropped


def read_image(path: Path, image_size: int | None) -> np.ndarray:
    """One image file, decoded (see _decode) and resized; any decoder failure is one line naming the file."""
    try:
        image = _decode(path)
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError... depending on the codec
        raise error(path, f"cannot read image ({exc}); expected a valid PNG or JPEG file") from None
    return image if image_size is None else resize(image, image_size)


def load(arg: str, image_size: int | None, classes: Sequence[str] | None = None) -> Loaded:
    """Every image of the class folders (only those named in `classes`, if given: a huge folder costs what is
    used). Hidden entries and other files (.DS_Store, notes) are skipped. Grayscale stays one channel only if
    every image is grayscale, so one colour image turns the whole set RGB (gray images are replicated)."""
    root = existing_path(arg, KIND, EXPECTED)
    if not root.is_dir():
        raise error(root, f"is not a folder; expected {EXPECTED}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        raise error(root, f"found {len(class_dirs)} class folder(s); expected one sub-folder per class, at least 2")
    if classes is not None:
        names = [p.name for p in class_dirs]
        missing = [c for c in classes if c not in names]
        if missing:
            raise error(root, f"has no class folder {missing[0]!r}; expected one of {names}")
        class_dirs = [p for p in class_dirs if p.name in classes]
    files, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        found = sorted(p for p in class_dir.iterdir()
                       if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())
        if not found:
            raise error(class_dir, "class folder holds no images; expected *.png, *.jpg or *.jpeg files")
        files += found
        labels += [label] * len(found)
    return to_uint8(decode_all(files, image_size), root), np.array(labels), [p.name for p in class_dirs]


def decode_all(files: list[Path], image_size: int | None) -> np.ndarray:
    """Decode the files one at a time into one preallocated (N, H, W, C) array (peak memory: the images,
    not twice them); the first colour image turns the whole array RGB. The first image's depth (uint8, or
    int32/float32 for deeper data) is the array's; another depth later is refused."""
    images = None
    for i, path in enumerate(files):
        image = read_image(path, image_size)
        if images is None:
            images = np.empty((len(files), *image.shape), image.dtype)
        if image.dtype != images.dtype:
            depths = {np.dtype(np.uint8): "8-bit", np.dtype(np.int32): "16- or 32-bit integer",
                      np.dtype(np.float32): "32-bit float"}
            raise error(path, f"is {depths[image.dtype]} but {files[0]} is {depths[images.dtype]}; expected one bit "
                              "depth in a source (the two have no common white)")
        if image.shape[:2] != images.shape[1:3]:
            raise size_error(path, images.shape[1:3], image.shape[:2])
        if image.shape[2] > images.shape[3]:
            images = np.repeat(images, 3, axis=3)
        images[i] = image  # a gray image broadcasts over RGB
    return images
