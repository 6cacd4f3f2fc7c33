"""Three 32 px RGB classification sources built offline (nothing downloaded), for the learner bench.

* `digits` — scikit-learn's digits, resized and coloured (bench/coloured_digits.py): 10 classes, shape in colour.
* `photos` — 32 px patches cut from scikit-learn's two bundled photographs (china.jpg, flower.jpg), each photo
  split into a 2 x 2 grid of regions; a class is a region (texture and colour), a patch is a random crop of
  32-64 px inside it, resized to 32 px and randomly mirrored: 8 classes, 150 patches each.
* `shapes` — a filled circle, square, triangle, cross, ring or bar drawn with OpenCV at a random position, size,
  rotation and colour on a random background with pixel noise: 6 classes, 150 images each.

Every source is a pure function of its seed: `SOURCES[name](seed)` -> (uint8 images (N, 32, 32, 3), labels).
"""

from __future__ import annotations

import cv2
import numpy as np
from coloured_digits import coloured_digits  # bench/coloured_digits.py
from sklearn.datasets import load_sample_images

SIZE = 32


def photos(seed: int = 0, per_class: int = 150) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for p, photo in enumerate(load_sample_images().images):
        h, w = photo.shape[0] // 2, photo.shape[1] // 2
        for r in range(4):
            region = photo[(r // 2) * h:(r // 2 + 1) * h, (r % 2) * w:(r % 2 + 1) * w]
            for _ in range(per_class):
                side = int(rng.integers(32, 65))
                y, x = rng.integers(0, region.shape[0] - side), rng.integers(0, region.shape[1] - side)
                patch = cv2.resize(region[y:y + side, x:x + side], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
                images.append(patch[:, ::-1] if rng.random() < 0.5 else patch)
                labels.append(4 * p + r)
    return np.ascontiguousarray(np.stack(images)), np.array(labels)


def shape_image(kind: int, rng: np.random.Generator) -> np.ndarray:
    """One image of shape `kind` (0 circle, 1 square, 2 triangle, 3 cross, 4 ring, 5 bar)."""
    scale = 4  # drawn at 4x and shrunk: smooth edges
    canvas = np.empty((SIZE * scale, SIZE * scale, 3), np.uint8)
    canvas[:] = rng.integers(0, 256, 3)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    r = rng.uniform(6, 12) * scale
    cx, cy = rng.uniform(r, SIZE * scale - r, 2)
    angle = rng.uniform(0, np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    if kind in (0, 4):
        cv2.circle(canvas, (int(cx), int(cy)), int(r), colour, -1 if kind == 0 else int(r / 3))
        return finish(canvas, rng)
    outline = {1: [(-1, -1), (1, -1), (1, 1), (-1, 1)], 2: [(0, -1.15), (1, 0.75), (-1, 0.75)],
               3: [(-1, -.3), (-.3, -.3), (-.3, -1), (.3, -1), (.3, -.3), (1, -.3), (1, .3), (.3, .3), (.3, 1),
                   (-.3, 1), (-.3, .3), (-1, .3)],
               5: [(-1.2, -.25), (1.2, -.25), (1.2, .25), (-1.2, .25)]}[kind]
    points = (np.array(outline) * r * (0.75 if kind == 1 else 1)) @ rot.T + (cx, cy)
    cv2.fillPoly(canvas, [points.astype(np.int32)], colour)
    return finish(canvas, rng)


def finish(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    small = cv2.resize(canvas, (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    return np.clip(small + rng.normal(0, 12, small.shape), 0, 255).astype(np.uint8)


def shapes(seed: int = 0, per_class: int = 150) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(6), per_class)
    return np.stack([shape_image(int(k), rng) for k in labels]), labels


SOURCES = {"digits": lambda seed: coloured_digits(SIZE, seed=seed), "photos": photos, "shapes": shapes}
