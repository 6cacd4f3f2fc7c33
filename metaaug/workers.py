"""Independent trainings shared among forked worker processes of one thread each.

Both stages that train many small learners (metatrain's proxies, train's arm x split learners) use
this pool. One thread a training is faster than one multi-threaded training a core set (two
one-thread processes ran a 32 px ResNet training in 8.8 s each against 11 s for one two-thread
process on 2 cores: bench/train_populations.py) and it keeps a training's floating-point reductions,
hence its result, the same on any number of cores.

Workers are forked, so what they need (tasks, data, augmenters, closures) is inherited at fork,
never pickled; a work item and its result are pickled. The pool runs in-process when one worker
is asked for (and always on CUDA: a forked child cannot use its parent's CUDA context).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, Callable, Iterable, Iterator

import torch

_STATE: dict = {}  # what a worker function reads (set before the fork, so workers inherit it)


def state() -> dict:
    """The pool's shared state, in the parent and in every worker."""
    return _STATE


def _init_worker(parent: int) -> None:
    _die_with(parent)
    torch.set_num_threads(1)


def _die_with(parent: int) -> None:
    """Have the kernel SIGKILL this worker when its parent dies (Linux prctl PR_SET_PDEATHSIG).

    Otherwise a SIGKILLed stage leaves its workers behind for good: each waits on a job
    pipe whose write end its sibling inherited, holding the data in memory.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


OVERSUBSCRIBE = 2  # processes a core at most: one-thread trainings gain nothing from more, and each holds memory


def cores() -> int:
    """The CPU cores this process may run on (its affinity mask: a container's or taskset's limit, not the
    machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def count(requested: int, device: torch.device | None = None) -> int:
    """Worker processes for `requested`: 0 = one per CPU core, shared among the ranks torchrun started on
    this machine (LOCAL_WORLD_SIZE); a request is capped at OVERSUBSCRIBE processes a core; one on CUDA.
    The pool forks no more of them than a map has items (Pool.map)."""
    if device is not None and device.type == "cuda":
        return 1
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    available = max(1, cores() // local_ranks)
    return min(requested, OVERSUBSCRIBE * available) if requested else available


class Pool:
    """`map(fn, items)` in up to `workers` forked processes (in-process for one), `shared` set as `state()`.

    Processes are forked when a map needs them, never more than it has items: four trainings fork four
    processes whatever `workers` says. Trainings run one thread each in either case, so a result does not
    depend on `workers`. `fn` must be a module-level function (it is pickled by name).
    """

    def __init__(self, workers: int, shared: dict[str, Any]):
        self.workers, self.shared, self.pool, self.size = workers, shared, None, 0

    def __enter__(self) -> "Pool":
        _STATE.clear()
        _STATE.update(self.shared)
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None
        torch.set_num_threads(self.threads)
        _STATE.clear()

    def map(self, fn: Callable, items: Iterable) -> Iterator:
        """fn(item) for every item, in order (lazily: results arrive as they are done)."""
        items = list(items)
        needed = min(self.workers, len(items))
        if needed <= 1 and self.pool is None:
            return map(fn, items)
        if needed > self.size:  # the first map that needs processes, or one that needs more than are running
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            if self.pool is not None:
                self.pool.shutdown()
            self.pool = ProcessPoolExecutor(needed, multiprocessing.get_context("fork"),
                                            initializer=_init_worker, initargs=(os.getpid(),))
            self.size = needed
        return self.pool.map(fn, items)
