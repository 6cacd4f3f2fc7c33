"""Atomic, deterministic output: every stage writes an output into a temporary sibling folder
(`.<name>.tmp-<pid>-...`) holding a temp marker (`.metaaug-temp.json`: the writer's pid and start time)
and the output under `out`; the output is renamed into place only once the stage succeeded, so an
interrupted or failed stage leaves the previous output intact and never a half-written one. A temp is
recognised by its temp marker, never by its name alone: a leftover one whose writer is gone is removed
by the next write of that output. Where an output may be written is ownership's rule (check_output).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from metaaug.files import canonical, output_path, sha256_file
from metaaug.ownership import check_output, sidecar, write_marker

KILL_ENV = "METAAUG_KILL_BEFORE_RENAME"
TEMP_MARKER = ".metaaug-temp.json"


# --- writing: temps, then one rename ----------------------------------------------------------------------------


@dataclass
class Staged:
    """One output being written: `content` (a folder, or a file for `file`) inside its temp folder, moved to
    `path` by `publish`. `shown` is the path as the user gave it, for messages."""

    path: Path
    shown: Path
    kind: str | None
    temp: Path
    file: bool = False

    @property
    def content(self) -> Path:
        return self.temp / (self.path.name if self.file else "out")


def stage_output(path: str | Path, kind: str | None = None, file: bool = False) -> Staged:
    """Check that `path` may receive the `kind` output (see check_output; a file without a kind, one of
    metaaug's own inside an output or a checkpoint, is not checked), then make its temp."""
    resolved = output_path(path)
    if kind is not None or not file:
        check_output(resolved, kind, file=file, shown=path)
    staged = Staged(resolved, Path(path), kind, _new_temp(resolved), file)
    if not file:
        staged.content.mkdir()
    return staged


def finish(staged: Staged, inputs: dict | None = None) -> str | None:
    """Write an output folder's marker (its kind, its files' hashes, its inputs' digests); returns its digest."""
    return None if staged.file else write_marker(staged.content, staged.kind, inputs)


def publish(staged: Staged) -> None:
    """Move a finished output into place in one rename (checked again first: nothing may have appeared
    there meanwhile), then delete the previous output; on failure nothing at `path` has changed."""
    path = staged.path
    with discarded_on_failure(staged):
        if staged.kind is not None or not staged.file:
            check_output(path, staged.kind, file=staged.file, shown=staged.shown)
        _kill_hook(path)
        if os.path.lexists(path):
            keep_attributes(path, staged.content)
        if staged.file:
            _replace_file(staged)
        elif not path.exists() or not _exchange(staged.content, path):  # exchanged: content is the old output
            if os.path.lexists(path):
                os.replace(path, staged.temp / "previous")
            os.replace(staged.content, path)
    discard(staged)


ACL_XATTRS = ("system.posix_acl_access", "system.posix_acl_default")


def keep_attributes(old: Path, new: Path) -> None:
    """Give the replacement `new` what the user set on the existing `old`: its group (and, for root, its
    owner), its mode with the setgid and sticky bits, its POSIX ACLs; under a setgid folder every file gets
    the folder's group, as it would have had written there. What cannot be kept stops the publish (a
    private folder never comes back world-readable): check_output refuses a foreign group up front."""
    st = os.stat(old, follow_symlinks=False)
    for here, dirs, files in os.walk(new) if st.st_mode & stat.S_ISGID and new.is_dir() else ():
        for name in dirs + files:
            os.chown(os.path.join(here, name), -1, st.st_gid, follow_symlinks=False)
    os.chown(new, st.st_uid if os.geteuid() == 0 else -1, st.st_gid)
    os.chmod(new, stat.S_IMODE(st.st_mode))
    for name in ACL_XATTRS if hasattr(os, "getxattr") else ():
        try:
            value = os.getxattr(old, name, follow_symlinks=False)
        except OSError:  # none set, or a file system without ACLs
            continue
        os.setxattr(new, name, value, follow_symlinks=False)


def _replace_file(staged: Staged) -> None:
    """Replace an output file, and for a stage's output file (one with a kind) its sidecar: first the sidecar
    accepting the old and the new hash, then the file, then the sidecar accepting only the new one, so that
    a crash at any moment leaves a file its sidecar vouches for."""
    def record(hashes: list[str]) -> None:
        tmp = staged.temp / sidecar(staged.path).name
        tmp.write_text(canonical({"kind": staged.kind, "sha256": hashes}))
        os.replace(tmp, sidecar(staged.path))

    new = sha256_file(staged.content)
    if staged.kind is not None:
        record(([sha256_file(staged.path)] if staged.path.is_file() else []) + [new])
    os.replace(staged.content, staged.path)
    if staged.kind is not None:
        record([new])


def discard(staged: Staged) -> None:
    shutil.rmtree(staged.temp, ignore_errors=True)


@contextlib.contextmanager
def discarded_on_failure(staged: Staged) -> Iterator[None]:
    """On any failure in the block the staged temp goes, and an OSError names the output (see _named)."""
    try:
        yield
    except OSError as exc:
        discard(staged)
        raise named_error(exc, staged.shown) from None
    except BaseException:
        discard(staged)
        raise


@contextlib.contextmanager
def atomic_file(path: str | Path, kind: str | None = None) -> Iterator[Path]:
    """Yield a temp file path that replaces `path` only if the block succeeds. With `kind` (a stage's output
    file) `path` must pass `check_output` first; without it (files inside a fresh temp output, metaaug's own
    checkpoints) nothing is checked."""
    staged = stage_output(path, kind, file=True)
    with discarded_on_failure(staged):
        yield staged.content
    publish(staged)


def named_error(exc: OSError, path: Path) -> OSError:
    """`exc` naming the output it failed to write when it names no file itself (a full disk: np.save's
    write names none), so that the one-line error says where."""
    if exc.filename is not None:
        return exc
    reason = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__)
    return type(exc)(exc.errno, reason, str(path))  # numpy's short write ('N requested and M written') has no errno


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_temp(path: Path) -> Path:
    """A fresh temp folder beside `path`, with the temp marker that names its writer (this process). Its mode
    honours the umask (mkdtemp's is 0700), and what is written in it is created under the umask too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_temp_prefix(path)}{os.getpid()}-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    (tmp / TEMP_MARKER).write_text(json.dumps({"pid": os.getpid(), "start": process_start(os.getpid()),
                                               "for": path.name}))
    return tmp


def remove_stale_temps(path: Path) -> None:
    """Delete the temps of `path` whose writer no longer runs (it was killed mid-write): folders with the
    temp prefix whose temp marker names this output and a process that is gone. Anything else, a user's
    folder of that name included, is left alone."""
    prefix = _temp_prefix(path)
    for entry in path.parent.iterdir():
        if not entry.name.startswith(prefix) or entry.is_symlink() or not entry.is_dir():
            continue
        try:
            doc = json.loads((entry / TEMP_MARKER).read_text())
            pid, start = int(doc["pid"]), str(doc["start"])
        except (OSError, ValueError, TypeError, KeyError):
            continue
        if doc.get("for") == path.name and set(os.listdir(entry)) <= {TEMP_MARKER, "out", path.name, "previous"} \
                and (not process_alive(pid) or start not in ("", process_start(pid))):
            shutil.rmtree(entry, ignore_errors=True)


def process_start(pid: int) -> str:
    """The start time of process `pid` (clock ticks since boot), which tells a reused pid apart; '' if unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists (on this host)."""
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


def write_json(path: str | Path, data: Any, kind: str | None = None) -> None:
    """Sorted, indented JSON, written atomically (byte-identical for equal data); with `kind` (a stage's output
    file) its sidecar records kind and hash, and only such a file is replaced."""
    with atomic_file(path, kind) as tmp:
        tmp.write_text(canonical(data))


def save_arrays(directory: Path, **arrays: np.ndarray) -> None:
    """One `.npy` per array (np.savez embeds timestamps, so it is not byte-stable)."""
    for name, array in arrays.items():
        np.save(directory / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)

