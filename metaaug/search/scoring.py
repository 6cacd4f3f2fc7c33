"""Scoring candidates: proxy learners trained on a task's support, scored on its clean query images.

Learners are trained `population` at a time as one grouped network (metaaug.population), in
`workers` forked processes; a score is a function of (policy, task, settings) alone.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import sys
import time

import numpy as np
import torch
import torch._dynamo  # noqa: F401  torch.optim imports it on first use (~1.7 s): here, before scoring
# processes fork, so they inherit it instead of each paying for it

from metaaug.config import TrainConfig
from metaaug.policies import Policy, sample_apply
from metaaug.progress import progress
from metaaug.search.tasks import Task
from metaaug.training import predict, train_population

def score(policy: Policy | None, task: Task, settings: TrainConfig) -> float:
    """Clean query accuracy of a learner trained on the task's support, augmented by `policy`."""
    return score_population([(policy, task)], settings)[0]


def score_population(jobs: list[tuple[Policy | None, Task]], settings: TrainConfig) -> list[float]:
    """`score` of every (policy, task), their learners trained together as one population."""
    augments = [None if policy is None else functools.partial(sample_apply, policy) for policy, _ in jobs]
    learners = train_population([t.support_x for _, t in jobs], [t.support_y for _, t in jobs], jobs[0][1].n_classes,
                                settings, [t.seed for _, t in jobs], augments)
    return [float(np.mean(predict(model, t.query_x) == t.query_y)) for (model, _), (_, t) in zip(learners, jobs)]


_WORKER: dict = {}  # a forked scoring process's tasks and settings (inherited, never pickled)


def _init_worker(tasks: list[Task], settings: TrainConfig, parent: int) -> None:
    _die_with(parent)
    torch.set_num_threads(1)
    _WORKER.update(tasks=tasks, settings=settings)


def _die_with(parent: int) -> None:
    """Have the kernel SIGKILL this worker when its parent dies (Linux prctl PR_SET_PDEATHSIG).

    Otherwise a SIGKILLed metatrain leaves its workers behind for good: each waits on a job
    pipe whose write end its sibling inherited, holding the tasks in memory.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def _timed_population(jobs: list[tuple[Policy, int]]) -> list[tuple[float, float]]:
    """(score, seconds) per job; a population's wall time is shared evenly by its members."""
    start = time.perf_counter()
    values = score_population([(policy, _WORKER["tasks"][t]) for policy, t in jobs], _WORKER["settings"])
    seconds = (time.perf_counter() - start) / len(jobs)
    return [(value, seconds) for value in values]


def populations(n_jobs: int, size: int) -> list[range]:
    """Consecutive near-equal slices of at most `size` jobs: a function of the jobs alone, so
    scores do not depend on how many processes share the work."""
    n = math.ceil(n_jobs / size)
    bounds = np.linspace(0, n_jobs, n + 1).round().astype(int)
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


class Scorer:
    """Scores (policy, task index) jobs, `population` learners trained at once (metaaug.population),
    populations shared among `workers` forked processes when more than one.

    A score is a function of (policy, task, settings) — the task fixes the learner's seed — and
    of the population's composition only through float rounding; populations are cut from the
    job list alone, so results do not depend on the number of workers or their scheduling.
    """

    def __init__(self, tasks: list[Task], settings: TrainConfig, workers: int, population: int = 1):
        self.tasks, self.settings, self.workers, self.population, self.pool = tasks, settings, workers, population, None

    def __enter__(self) -> "Scorer":
        _WORKER.update(tasks=self.tasks, settings=self.settings)
        if self.workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(self.workers, multiprocessing.get_context("fork"),
                                            initializer=_init_worker, initargs=(self.tasks, self.settings, os.getpid()))
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def map(self, jobs: list[tuple[Policy, int]]) -> list[tuple[float, float]]:
        """(score, seconds) per job, in order."""
        groups = [jobs[r.start:r.stop] for r in populations(len(jobs), self.population)]
        done = map(_timed_population, groups) if self.pool is None else self.pool.map(_timed_population, groups)
        # a bar per rung, one step per population trained (silent off a terminal)
        return [result for group in progress(done, desc="metatrain rung", total=len(groups)) for result in group]


def image_change(policy: Policy, images: torch.Tensor, copies: int = 8, seed: int = 0) -> float:
    """Mean absolute pixel change the policy makes to these images (clamped to [0, 1]; a fixed seed,
    so a pure function of the policy and the images)."""
    gen = torch.Generator().manual_seed(seed)
    x = images.repeat(copies, *([1] * (images.dim() - 1)))
    return float((sample_apply(policy, x, gen).clamp(0, 1) - x).abs().mean())

