"""Why op groups under metaaug.search.space.MIN_MASS are switched off exactly, not left at a tiny weight.

On intensity-coded classes (bench/adaptivity.py's `intensity` task: the class is the
stroke's brightness, so TrivialAugment-Wide's colour and histogram ops rewrite it),
three arms on the same 20 few-shot target tasks (5-way, 5 shots, downstream recipe):
no augmentation; the Identity-only policy (the same draws of randomness as an
augmenting arm, so data order differs from `none`); and `none`'s point in the search
space *without* the exact cut-off, i.e. Identity plus e^-8 of the mass on each other
group at full strength (0.17 % of images augmented). Prints mean accuracies and paired
differences to `none` with their standard errors, and the machine.

    python bench/off_groups.py [--tasks 20]
"""

from __future__ import annotations

import argparse
from unittest import mock

import numpy as np
import torch

from adaptivity import digit_strokes
from metaaug.search import space as search_space
from metaaug.search import SearchSpace, sample_tasks, score
from metaaug.ops import OP_NAMES
from metaaug.timing import machine_description
from metaaug.policies import fixed_policy
from metaaug.config import TrainConfig


def intensity_images(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """bench/adaptivity.py's intensity task as uint8 (N, 8, 8, 1) images and labels."""
    strokes, rng = digit_strokes(seed)
    labels = rng.integers(0, 10, len(strokes))
    images = strokes * (0.1 + 0.09 * labels)[:, None, None] + rng.normal(0, 0.01, strokes.shape)
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)[..., None], labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(2)
    images, labels = intensity_images()
    keep = labels >= 5  # the target classes of bench/adaptivity.py
    tasks = sample_tasks(images[keep], labels[keep], 5, 5, 80, args.tasks, seed=3)
    space = SearchSpace(OP_NAMES, channels=1)
    with mock.patch.object(search_space, "MIN_MASS", 0.0):  # the cut-off off: e^-8 stays e^-8
        nearly_none = space.policy(space.project(fixed_policy("none")))
    arms = {"none": None, "identity only": fixed_policy("none"), "none's point without the cut-off": nearly_none}
    acc = {name: np.array([score(policy, t, TrainConfig()) for t in tasks]) for name, policy in arms.items()}
    print(f"intensity-coded classes, {args.tasks} target tasks; measured on: {machine_description()}\n")
    print("| arm | accuracy (%) | − none (points) |\n|---|---|---|")
    for name, a in acc.items():
        d = 100 * (a - acc["none"])
        se = d.std(ddof=1) / np.sqrt(len(d))
        print(f"| {name} | {100 * a.mean():.2f} | {d.mean():+.2f} ± {se:.2f} (s.e.) |")


if __name__ == "__main__":
    main()
