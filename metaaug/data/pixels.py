"""One rule for pixel depth: any numeric image array becomes the uint8 every stage works in, scaled by the
range its values really use, so that no source is cut to a few grey levels (a 16-bit PNG holding 12-bit
microscopy data keeps its 4096 levels' spread over all 256, not the 16 its top byte would give).

* uint8: as it is (a memory-mapped array stays mapped).
* bool: False 0, True 255.
* floats in [0, 1]: the common normalised form, times 255.
* other non-negative values: [0, 2**b - 1], b the fewest bits (at least 8) that hold the largest value. An
  8-bit image in a 16-bit container is kept as it is, 12-bit data spans 0..4095, full 16-bit data 0..65535.
  Zero stays black, and one scale serves the whole source, so one image stays brighter than another.
* values below zero (signed data such as CT numbers): [min, max] of the whole source.
* NaN or inf, or a non-numeric dtype: refused with one line.
"""

from __future__ import annotations

import math

import numpy as np

from metaaug.data.base import error

CHUNK = 256  # images converted at a time: the float temporaries stay small whatever the source's size


def value_range(low: float, high: float, floating: bool) -> tuple[float, float]:
    """The (black, white) values of a source whose pixels span [low, high] (see the module's rule)."""
    if floating and low >= 0 and high <= 1:
        return 0.0, 1.0
    if low >= 0:
        return 0.0, float(2 ** max(8, math.ceil(high).bit_length()) - 1)
    return low, high if high > low else low + 1


def to_uint8(images: np.ndarray, where: object, what: str = "images") -> np.ndarray:
    """`images` (any shape) as uint8 by the module's rule; `where` and `what` name them in an error."""
    if images.dtype == np.uint8 or images.size == 0:
        return images.astype(np.uint8, copy=False)
    if images.dtype == np.bool_:
        return images.astype(np.uint8) * np.uint8(255)
    if images.dtype.kind not in "uif":
        raise error(where, f"{what} are {images.dtype}; expected numbers (unsigned, signed, float or bool)")
    low, high = images.min(), images.max()
    if images.dtype.kind == "f" and not (np.isfinite(low) and np.isfinite(high)):
        raise error(where, f"{what} hold NaN or inf; expected finite pixel values")
    black, white = value_range(float(low), float(high), images.dtype.kind == "f")
    out = np.empty(images.shape, np.uint8)
    scale = 255 / (white - black)
    for start in range(0, len(images), CHUNK):
        chunk = (np.asarray(images[start:start + CHUNK], np.float64) - black) * scale
        out[start:start + CHUNK] = np.rint(np.clip(chunk, 0, 255))
    return out
