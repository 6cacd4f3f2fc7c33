"""Few-shot meta-train tasks: what every candidate is trained and scored on (paired, common random numbers)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from metaaug.config import MetatrainConfig
from metaaug.errors import MetaaugError

@dataclass(frozen=True)
class Task:
    """A few-shot task: augmented training happens on support, the score on clean query images."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: np.ndarray
    n_classes: int
    seed: int


def sample_tasks(images: np.ndarray, labels: np.ndarray, shots: int, ways: int, query_per_class: int,
                 n_tasks: int, seed: int) -> list[Task]:
    """`n_tasks` few-shot tasks from these images; task t is a pure function of (seed, t)."""
    from metaaug.training import to_tensor

    classes = np.unique(labels)
    ways = min(ways, len(classes))
    tasks = []
    for t in range(n_tasks):
        rng = np.random.default_rng([seed, t])
        chosen = rng.choice(classes, ways, replace=False)
        sup, qry = [], []
        for c in chosen:
            idx = rng.permutation(np.flatnonzero(labels == c))
            if len(idx) < shots + 1:
                raise MetaaugError(f"meta-train class {c} has {len(idx)} images; expected more than "
                                   f"tasks.shots = {shots} for support plus query")
            sup.append(idx[:shots])
            qry.append(idx[shots:shots + query_per_class])
        relabel = {c: i for i, c in enumerate(chosen)}
        sup_i, qry_i = np.concatenate(sup), np.concatenate(qry)
        tasks.append(Task(to_tensor(images[sup_i]), torch.tensor([relabel[c] for c in labels[sup_i]]),
                          to_tensor(images[qry_i]), np.array([relabel[c] for c in labels[qry_i]]),
                          ways, int(rng.integers(2**31))))
    return tasks


def meta_train_tasks(prepared, shots: int, cfg: MetatrainConfig, n_tasks: int, seed: int) -> list[Task]:
    """The tasks a search under `seed` scores on: sampled from the prepared meta-train images that are
    not held back for meta-validation (the metatrain stage's call; benchmarks replay it)."""
    train = np.flatnonzero(~np.asarray(prepared.meta_is_val))
    return sample_tasks(np.asarray(prepared.meta_images)[train], np.asarray(prepared.meta_labels)[train], shots,
                        cfg.ways, cfg.query_per_class, n_tasks, seed)

