"""Atomic, deterministic file output.

Every stage writes its outputs into a temporary sibling and renames it into
place, so an interrupted or failed stage leaves the previous outputs intact and
never a half-written directory (even under SIGKILL: the temp of a killed
writer is hidden and removed by the next write). Arrays are stored as plain `.npy` (byte-stable
across runs, memory-mappable), metadata as sorted, indented JSON.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


KILL_ENV = "METAAUG_KILL_BEFORE_RENAME"


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temp directory that replaces `path` only if the block succeeds.

    The temp name holds this process's id, so temp directories left by killed
    processes are recognised and removed by the next write of the same output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_temp_prefix(path)}{os.getpid()}-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _kill_hook(path)
    if path.exists() and _exchange(tmp, path):  # tmp now holds the previous output
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temp file path that replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(path)}{os.getpid()}-", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _kill_hook(path)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-"


def remove_stale_temps(path: Path) -> None:
    """Delete the temp siblings of `path` whose writer no longer runs (it was killed mid-write)."""
    prefix = _temp_prefix(path)
    for entry in path.parent.iterdir():
        pid = entry.name[len(prefix):].split("-")[0] if entry.name.startswith(prefix) else ""
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        pass
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE), so no moment exists without `b`.

    False where the platform or filesystem cannot; the caller then renames in two steps.
    """
    renameat2 = getattr(ctypes.CDLL(None), "renameat2", None) if sys.platform == "linux" else None
    at_fdcwd, rename_exchange = -100, 2
    return renameat2 is not None and renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b),
                                               rename_exchange) == 0


def _kill_hook(path: Path) -> None:
    """Fault injection: SIGKILL this process just before `path` is replaced, if METAAUG_KILL_BEFORE_RENAME
    names it (e.g. `prepared`); the interruption tests use it to kill each stage mid-write."""
    if os.environ.get(KILL_ENV) == path.name:
        os.kill(os.getpid(), signal.SIGKILL)


def write_json(path: str | Path, data: Any) -> None:
    """Sorted, indented JSON, written atomically (byte-identical for equal data)."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_arrays(directory: Path, **arrays: np.ndarray) -> None:
    """One `.npy` per array (np.savez embeds timestamps, so it is not byte-stable)."""
    for name, array in arrays.items():
        np.save(directory / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)


def load_array(directory: str | Path, name: str, mmap: bool = False) -> np.ndarray:
    return np.load(Path(directory) / f"{name}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
