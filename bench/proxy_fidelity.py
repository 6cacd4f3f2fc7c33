"""Does a cheap proxy learner rank augmentation policies as a full downstream training does?

Scores none / handcrafted / RandAugment / TrivialAugment-Wide on the same
meta-VALIDATION tasks (held-back images of the meta-train classes, 100 query
images per class) with the full downstream recipe and with shorter or narrower
proxies, and prints each as paired differences to TrivialAugment-Wide with the
seconds a run. This is how metatrain's `proxy_epochs` / `proxy_width` were chosen.

    python bench/proxy_fidelity.py [--prepared data/prepared] [--tasks 16]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from metaaug.config import load_params
from metaaug.search import sample_tasks, score
from metaaug.timing import machine_description
from metaaug.policies import FIXED_POLICIES as ARMS, fixed_policy  # TrivialAugment-Wide last: the reference
from metaaug.tasks import load_prepared


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--tasks", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    prepared, params = load_prepared(args.prepared), load_params(args.params)
    val = np.asarray(prepared.meta_is_val)
    images, labels = np.asarray(prepared.meta_images)[val], np.asarray(prepared.meta_labels)[val]
    tasks = sample_tasks(images, labels, params.tasks.shots, 5, 100, args.tasks, seed=123)
    channels = images.shape[-1]
    policies = {arm: None if arm == "none" else fixed_policy(arm, image_channels=channels) for arm in ARMS}
    full = params.train
    learners = {f"full downstream training ({full.epochs} epochs, width {full.width})": full,
                "40 epochs, width 32": full.model_copy(update={"epochs": 40, "width": 32}),
                "100 epochs, width 16": full.model_copy(update={"epochs": 100, "width": 16})}
    print(f"| learner used to score | {' | '.join(ARMS[:-1])} | s a run |\n|---|---|---|---|---|")
    for name, settings in learners.items():
        start = time.perf_counter()
        acc = {arm: np.array([score(p, t, settings) for t in tasks]) for arm, p in policies.items()}
        seconds = (time.perf_counter() - start) / (len(ARMS) * len(tasks))
        diffs = [100 * (acc[arm] - acc["trivialaugment"]).mean() for arm in ARMS[:-1]]
        print(f"| {name} | " + " | ".join(f"{d:+.1f}" for d in diffs) + f" | {seconds:.2f} |", flush=True)
    print(f"\nPaired differences to TrivialAugment-Wide (points) on {len(tasks)} meta-validation tasks. "
          f"Measured on: {machine_description()}, 1 thread.")


if __name__ == "__main__":
    main()
