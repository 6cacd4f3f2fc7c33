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


def count(requested: int, device: torch.device | None = None) -> int:
    """Worker processes for `requested`: 0 = one per CPU core, shared among the ranks torchrun started on
    this machine (LOCAL_WORLD_SIZE); one on CUDA."""
    if device is not None and device.type == "cuda":
        return 1
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return requested or max(1, (os.cpu_count() or 1) // local_ranks)


class Pool:
    """`map(fn, items)` in `workers` forked processes (in-process for one), `shared` set as `state()`.

    Trainings run one thread each in either case, so a result does not depend on `workers`.
    `fn` must be a module-level function (it is pickled by name).
    """

    def __init__(self, workers: int, shared: dict[str, Any]):
        self.workers, self.shared, self.pool = workers, shared, None

    def __enter__(self) -> "Pool":
        _STATE.clear()
        _STATE.update(self.shared)
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)
        if self.workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(self.workers, multiprocessing.get_context("fork"),
                                            initializer=_init_worker, initargs=(os.getpid(),))
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
        torch.set_num_threads(self.threads)
        _STATE.clear()

    def map(self, fn: Callable, items: Iterable) -> Iterator:
        """fn(item) for every item, in order (lazily: results arrive as they are done)."""
        return map(fn, items) if self.pool is None else self.pool.map(fn, items)
