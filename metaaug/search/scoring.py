"""Scoring candidates: proxy learners trained on a task's support, scored on its clean query images.

Learners are trained `population` at a time as one grouped network (metaaug.population), in
`workers` forked processes; a score is a function of (policy, task, settings) alone.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import torch

from metaaug import workers
from metaaug.config import TrainConfig
from metaaug.distributed import World
from metaaug.population import populations
from metaaug.policies import Policy, sample_apply
from metaaug.progress import progress
from metaaug.search.tasks import Task
from metaaug.training import predict, train_population

def score(policy: Policy | None, task: Task, settings: TrainConfig) -> float:
    """Clean query accuracy of a learner trained on the task's support, augmented by `policy`."""
    return score_population([(policy, task)], settings)[0]


def score_population(jobs: list[tuple[Policy | None, Task]], settings: TrainConfig,
                     device: torch.device | None = None) -> list[float]:
    """`score` of every (policy, task), their learners trained together as one population (on `device`)."""
    augments = [None if policy is None else functools.partial(sample_apply, policy) for policy, _ in jobs]
    learners = train_population([t.support_x for _, t in jobs], [t.support_y for _, t in jobs], jobs[0][1].n_classes,
                                settings, [t.seed for _, t in jobs], augments, device)
    return [float(np.mean(predict(model, t.query_x) == t.query_y)) for (model, _), (_, t) in zip(learners, jobs)]


def probe_population(jobs: list[tuple[Policy, Task]], probes: list[Policy], settings: TrainConfig,
                     device: torch.device | None = None) -> list[tuple[float, list[float]]]:
    """`score` of every (policy, task), and each learner's accuracy on its task's query images augmented by
    each probe (one draw per image, seeded by the task): how much of the class signal a probe's ops leave to a
    learner that never saw them (Gontijo-Lopes et al. 2020's affinity)."""
    augments = [functools.partial(sample_apply, policy) for policy, _ in jobs]
    learners = train_population([t.support_x for _, t in jobs], [t.support_y for _, t in jobs], jobs[0][1].n_classes,
                                settings, [t.seed for _, t in jobs], augments, device)
    out = []
    for (model, _), (_, t) in zip(learners, jobs):
        gen = torch.Generator().manual_seed(t.seed)
        out.append((float(np.mean(predict(model, t.query_x) == t.query_y)),
                    [float(np.mean(predict(model, sample_apply(p, t.query_x, gen).clamp(0, 1)) == t.query_y))
                     for p in probes]))
    return out


def _timed_probes(jobs: list[tuple[Policy, int, list[Policy]]]) -> list[tuple[float, float, list[float]]]:
    """(score, seconds, probe accuracies) per job (Scorer.probe)."""
    start = time.perf_counter()
    shared = workers.state()
    values = probe_population([(policy, shared["tasks"][t]) for policy, t, _ in jobs], jobs[0][2], shared["settings"],
                              shared["device"])
    seconds = (time.perf_counter() - start) / len(jobs)
    return [(value, seconds, probed) for value, probed in values]


def _timed_population(jobs: list[tuple[Policy, int]]) -> list[tuple[float, float]]:
    """(score, seconds) per job; a population's wall time is shared evenly by its members."""
    start = time.perf_counter()
    shared = workers.state()
    values = score_population([(policy, shared["tasks"][t]) for policy, t in jobs], shared["settings"],
                              shared["device"])
    seconds = (time.perf_counter() - start) / len(jobs)
    return [(value, seconds) for value in values]


class Scorer:
    """Scores (policy, task index) jobs, `population` learners trained at once (metaaug.population),
    populations shared among `workers` forked processes of one thread each (metaaug.workers) and,
    under `metatrain.distributed: shard`, among the ranks of `world` (rank 0 calls `map`, the others `serve`).

    A score is a function of (policy, task, settings) — the task fixes the learner's seed and
    augmentation draws — and of the population's composition only through float rounding;
    populations are cut from the job list alone, so results do not depend on the number of
    workers, of ranks, or their scheduling.
    """

    def __init__(self, tasks: list[Task], settings: TrainConfig, n_workers: int, population: int = 1,
                 world: World = World()):
        self.tasks, self.settings, self.population, self.world = tasks, settings, population, world
        self.pool = workers.Pool(n_workers, {"tasks": tasks, "settings": settings, "device": world.device})

    def __enter__(self) -> "Scorer":
        self.pool.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.world.is_main and self.world.mode == "shard" and exc[0] is None:
                self.world.broadcast(None)  # no more work: the serving ranks return
        finally:
            self.pool.__exit__(*exc)

    def map(self, jobs: list[tuple[Policy, int]]) -> list[tuple[float, float]]:
        """(score, seconds) per job, in order (on rank 0: every rank scores its share of the populations)."""
        groups = populations(jobs, self.population)
        if self.world.mode == "shard":
            self.world.broadcast(groups)
        done = self.world.collect(self._score(self.world.share(groups)), len(groups))
        return [result for group in done for result in group]

    def probe(self, jobs: list[tuple[Policy, int]], probes: list[Policy]) -> list[tuple[float, float, list[float]]]:
        """(score, seconds, accuracy under each probe) per (policy, task) job, on this rank's workers (the
        screen before the race: a few learners, not worth spreading over ranks)."""
        groups = populations([(policy, t, probes) for policy, t in jobs], self.population)
        return [result for group in self.pool.map(_timed_probes, groups) for result in group]

    def serve(self) -> None:
        """A rank other than 0: score this rank's share of every rung rank 0 broadcasts, until it sends None."""
        while (groups := self.world.broadcast()) is not None:
            self.world.collect(self._score(self.world.share(groups)), len(groups))

    def _score(self, groups: list[list]) -> list[list[tuple[float, float]]]:
        # a bar per rung, one step per population trained (silent off a terminal)
        return list(progress(self.pool.map(_timed_population, groups), desc="metatrain rung", total=len(groups)))


def image_change(policy: Policy, images: torch.Tensor, copies: int = 8, seed: int = 0) -> float:
    """Mean absolute pixel change the policy makes to these images (clamped to [0, 1]; a fixed seed,
    so a pure function of the policy and the images)."""
    gen = torch.Generator().manual_seed(seed)
    x = images.repeat(copies, *([1] * (images.dim() - 1)))
    return float((sample_apply(policy, x, gen).clamp(0, 1) - x).abs().mean())

