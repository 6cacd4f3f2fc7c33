"""The `digits` source: scikit-learn's bundled 8x8 digits (values 0..16), real data with no download."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from metaaug.data.base import Loaded, error, stack

KIND = "digits"
EXPECTED = None  # takes no path


def load(arg: str, image_size: int | None, classes: Sequence[str] | None = None) -> Loaded:
    """The 1,797 digits, their 17 levels spread over 0..255."""
    if arg:
        raise error(f"digits:{arg}", "the digits source takes no path; use data.source=digits")
    from sklearn.datasets import load_digits  # imported here: sklearn is slow to import

    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    return stack(images, image_size), digits.target, [str(c) for c in range(10)]
