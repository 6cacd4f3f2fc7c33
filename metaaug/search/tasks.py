"""Few-shot meta-train tasks: what every candidate is trained and scored on (paired, common random numbers).

Task t is a pure function of (images, seed, t), built when first used (`MetaTasks`): a search materialises
only the tasks its budget pays for, however many its settings allow (racing tasks, then the confirmation pool).
"""

from __future__ import annotations

from collections.abc import Sequence
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


class MetaTasks(Sequence):
    """`n_tasks` few-shot tasks from these images, each built on first use and kept (a forked scoring process
    builds the ones it scores: the same, since a task is a pure function of (seed, t))."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, shots: int, ways: int, query_per_class: int,
                 n_tasks: int, seed: int):
        self.images, self.labels, self.shots, self.query, self.n, self.seed = (images, labels, shots,
                                                                               query_per_class, n_tasks, seed)
        self.classes, counts = np.unique(labels, return_counts=True)
        self.ways = min(ways, len(self.classes))
        if counts.min() < shots + 1:  # checked up front: a bad task must not stop a search half-way
            raise MetaaugError(f"meta-train class {self.classes[counts.argmin()]} has {counts.min()} images; "
                               f"expected more than tasks.shots = {shots} for support plus query")
        self.built: dict[int, Task] = {}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, t):
        if isinstance(t, slice):
            return [self[i] for i in range(*t.indices(self.n))]
        if not 0 <= t < self.n:
            raise IndexError(f"task {t} of {self.n}")
        if t not in self.built:
            self.built[t] = self.build(t)
        return self.built[t]

    def build(self, t: int) -> Task:
        from metaaug.training import to_tensor

        rng = np.random.default_rng([self.seed, t])
        chosen = rng.choice(self.classes, self.ways, replace=False)
        sup, qry = [], []
        for c in chosen:
            idx = rng.permutation(np.flatnonzero(self.labels == c))
            sup.append(idx[:self.shots])
            qry.append(idx[self.shots:self.shots + self.query])
        relabel = {c: i for i, c in enumerate(chosen)}
        sup_i, qry_i = np.concatenate(sup), np.concatenate(qry)
        return Task(to_tensor(self.images[sup_i]), torch.tensor([relabel[c] for c in self.labels[sup_i]]),
                    to_tensor(self.images[qry_i]), np.array([relabel[c] for c in self.labels[qry_i]]),
                    self.ways, int(rng.integers(2**31)))


def sample_tasks(images: np.ndarray, labels: np.ndarray, shots: int, ways: int, query_per_class: int,
                 n_tasks: int, seed: int) -> MetaTasks:
    """`n_tasks` few-shot tasks from these images (built lazily); task t is a pure function of (seed, t)."""
    return MetaTasks(np.asarray(images), np.asarray(labels), shots, ways, query_per_class, n_tasks, seed)


def meta_train_tasks(prepared, shots: int, cfg: MetatrainConfig, n_tasks: int, seed: int) -> MetaTasks:
    """The tasks a search under `seed` scores on: sampled from the prepared meta-train images that are
    not held back for meta-validation (the metatrain stage's call; benchmarks replay it)."""
    train = np.flatnonzero(~np.asarray(prepared.meta_is_val))
    return sample_tasks(np.asarray(prepared.meta_images)[train], np.asarray(prepared.meta_labels)[train], shots,
                        cfg.ways, cfg.query_per_class, n_tasks, seed)
