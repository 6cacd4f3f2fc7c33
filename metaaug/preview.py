"""A PNG grid of original images and their augmented versions, for the stages to log to MLflow.

Owns :func:`preview_grid` only: it draws a policy's samples with the same batched torch
path the pipeline trains with (:func:`metaaug.policies.sample_apply`), so what the
picture shows is what the learner saw.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from metaaug.errors import MetaaugError  # noqa: E402
from metaaug.publish import atomic_file  # noqa: E402
from metaaug.plots import show_image  # noqa: E402
from metaaug.policies import Policy, sample_apply  # noqa: E402


def preview_grid(images: np.ndarray, policy: Policy, path: str | Path, n_images: int = 8, n_augmented: int = 4,
                 seed: int = 0) -> None:
    """One column per image: the original on top, ``n_augmented`` draws of the policy below.

    ``images`` are uint8 (N, H, W, C), C in {1, 3}; the first ``n_images`` are shown. The
    draws are seeded by ``seed``; the PNG is written atomically.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        raise MetaaugError(f"preview_grid: images must be non-empty uint8 (N, H, W, C) with C in {{1, 3}}, "
                           f"got {images.dtype} {images.shape}")
    images = images[:n_images]
    generator = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    draws = [(sample_apply(policy, x, generator).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
             for _ in range(n_augmented)]
    fig, axes = plt.subplots(1 + n_augmented, len(images), figsize=(len(images), 1 + n_augmented), squeeze=False)
    for j in range(len(images)):
        show_image(axes[0][j], images[j])
        for row, draw in enumerate(draws, start=1):
            show_image(axes[row][j], draw[j])
    axes[0][0].set_ylabel("original")
    fig.suptitle(policy.name)
    fig.tight_layout()
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
    finally:
        plt.close(fig)
