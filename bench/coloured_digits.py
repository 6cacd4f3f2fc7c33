"""A 32 px RGB source of ~1,800 images with no download: scikit-learn's digits, resized and coloured.

Each image's stroke and background get their own random colours (seeded), so colour carries no label and
the learner must read the shape in three channels, as on ordinary RGB photographs of objects. The benches
use it where they need an RGB 32 px source (the size at which `auto` picks the ResNet).

    python bench/coloured_digits.py out.npz [--size 32]   # np.savez(images=uint8 NHWC, labels=int)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from sklearn.datasets import load_digits


def coloured_digits(size: int = 32, gray: bool = False, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, size, size, 3) — or (N, size, size, 1) when `gray` — , labels) of all 1,797 digits."""
    digits = load_digits()
    ink = np.stack([cv2.resize((im / 16).astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
                    for im in digits.images]).clip(0, 1)[..., None]  # (N, size, size, 1) in [0, 1]
    if gray:
        return np.rint(ink * 255).astype(np.uint8), digits.target
    rng = np.random.default_rng(seed)
    stroke, background = rng.uniform(0, 1, (2, len(ink), 1, 1, 3))
    return np.rint((ink * stroke + (1 - ink) * background) * 255).astype(np.uint8), digits.target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    images, labels = coloured_digits(args.size)
    np.savez(args.out, images=images, labels=labels)
    print(f"{args.out}: {len(images)} images {images.shape[1:]}, {len(set(labels))} classes")


if __name__ == "__main__":
    main()
