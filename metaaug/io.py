"""Atomic, deterministic file output, written only where metaaug wrote before.

Every stage writes its outputs into a temporary sibling and renames it into
place, so an interrupted or failed stage leaves the previous outputs intact and
never a half-written directory (even under SIGKILL: the temp of a killed
writer is hidden and removed by the next write). Arrays are stored as plain `.npy` (byte-stable
across runs, memory-mappable), metadata as sorted, indented JSON.

Ownership. Every output directory carries a marker, `.metaaug-output.json`: the output's kind (the
stage that wrote it), the SHA-256 of every file in it, and the digests of the outputs it was made from.
An existing path is replaced only when it is recognisably metaaug's output of the same kind with
nothing else in it (see `check_output`); anything else stops with one line and is left untouched.
The digest of an output is the SHA-256 of its marker, so a stage checks in microseconds that its
inputs belong together (`verify_input`).
"""

from __future__ import annotations

import contextlib
import ctypes
import fnmatch
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from metaaug.errors import MetaaugError


KILL_ENV = "METAAUG_KILL_BEFORE_RENAME"
MARKER = ".metaaug-output.json"
MARKER_FORMAT = 1

# Outputs written before markers existed (up to commit 4011436), recognised by their layout: the file
# that must be there, and the patterns every file matches (a `/` in a pattern is a sub-folder).
LEGACY_LAYOUTS = {
    "prepare": ("manifest.json", ["manifest.json", "meta_images.npy", "meta_labels.npy", "meta_is_val.npy",
                                  "target_images.npy", "target_labels.npy"]),
    "metatrain": ("policy.json", ["policy.json", "policy_albumentations.json", "checkpoint.json", "search.json"]),
    "augment": ("images.npy", ["images.npy", "index.npy", "manifest.json"]),
    "train": ("results.json", ["results.json", "*.pt"]),
    "evaluate.plots": ("accuracy.json", ["accuracy.json", "curves.csv", "curves/*.csv", "confusion/*.json"]),
    "evaluate.reports": ("report.md", ["report.md", "evaluation.json", "*.png"]),
}


def _fail(path: object, what: str, expected: str) -> MetaaugError:
    return MetaaugError(f"{path}: {what}; expected {expected}")


def _what(kind: str | None) -> str:
    """'output of `metaaug prepare`', 'plots output of `metaaug evaluate`'."""
    if kind is None:
        return "metaaug output"
    stage, _, part = str(kind).partition(".")
    return f"{part + ' ' if part else ''}output of `metaaug {stage}`"


def _files(root: Path) -> list[str]:
    """Every entry under `root` as a relative POSIX path (folders end in '/'), sorted; links are not followed."""
    found = []
    for here, dirs, files in os.walk(root):
        rel = Path(here).relative_to(root)
        found += [(rel / d).as_posix() + "/" for d in dirs]
        found += [(rel / f).as_posix() for f in files]
    return sorted(found)


def read_marker(path: str | Path) -> dict | None:
    """The ownership marker of output directory `path`; None when it has none (or is no directory)."""
    marker = Path(path) / MARKER
    if not marker.is_file():
        return None
    try:
        doc = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("files"), dict) else None


def _legacy_kind(path: Path, kind: str | None) -> bool:
    """Whether marker-less directory `path` has the layout of a `kind` output from before markers."""
    entries = _files(path)
    for name, (anchor, patterns) in LEGACY_LAYOUTS.items():
        if kind not in (None, name) or not (path / anchor).is_file():
            continue
        folders = {p.split("/")[0] + "/" for p in patterns if "/" in p}
        if all(e in folders or any(fnmatch.fnmatchcase(e, p) and e.count("/") == p.count("/") for p in patterns)
               for e in entries):
            return True
    return False


def check_output(path: str | Path, kind: str | None, file: bool = False) -> None:
    """Stop unless `path` may receive metaaug's `kind` output: absent (its parent creatable), an empty folder, or
    metaaug's own earlier output of that kind holding nothing else (`file`: a JSON file metaaug wrote).

    The rule: an existing path is replaced only when metaaug recognisably wrote it, as this kind of output,
    and replacing it loses no file metaaug did not write. Never the working directory or a parent of it, never
    a path inside another metaaug output, never through a symbolic link.
    """
    given = Path(path)
    resolved = given.expanduser().resolve()
    cwd = Path.cwd().resolve()
    expected = f"a new path or an earlier {_what(kind)}"
    if resolved == cwd or cwd.is_relative_to(resolved):
        raise _fail(given, "is the working directory or one of its parents", expected)
    if given.is_symlink():
        raise _fail(given, "is a symbolic link", f"{expected} (a real {'file' if file else 'folder'})")
    for parent in resolved.parents:
        if read_marker(parent) is not None:
            raise _fail(given, f"lies inside {parent}, the {_what(read_marker(parent).get('kind'))}",
                        "a path outside every metaaug output")
    existing = next(p for p in [resolved, *resolved.parents] if os.path.lexists(p))
    if existing != resolved and not existing.is_dir():
        raise _fail(given, f"its parent {existing} is a file", "a folder there")
    folder = existing if existing != resolved else resolved.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        read_only = os.statvfs(folder).f_flag & os.ST_RDONLY
        raise _fail(given, f"folder {folder} is {'on a read-only file system' if read_only else 'not writable'}",
                    "a folder this user can write to")
    if existing != resolved:
        return
    if file:
        if not resolved.is_file():
            raise _fail(given, "is a folder", f"{expected} (a file)")
        if not _is_own_json(resolved):
            raise _fail(given, "exists and was not written by metaaug (not its JSON)", expected)
        return
    if not resolved.is_dir():
        raise _fail(given, "is a file", f"{expected} (a folder)")
    marker = read_marker(resolved)
    if marker is None:
        if not any(resolved.iterdir()) or _legacy_kind(resolved, kind):
            return
        raise _fail(given, f"exists and metaaug did not write it (no {MARKER} in it, nor the layout of an "
                           f"earlier {_what(kind)})", expected)
    if kind is not None and marker.get("kind") not in (None, kind):
        raise _fail(given, f"holds the {_what(marker.get('kind'))}", expected)
    ours = set(marker["files"]) | {MARKER} | {p.rsplit("/", i)[0] + "/" for p in marker["files"]
                                              for i in range(1, p.count("/") + 1)}
    foreign = [e for e in _files(resolved) if e not in ours]
    if foreign:
        raise _fail(given, f"holds {foreign[0]}, which metaaug did not write there",
                    f"only the {_what(kind)} there (move {foreign[0]} out, or choose another path)")


def _is_own_json(path: Path) -> bool:
    """Whether `path` holds JSON byte for byte as `write_json` writes it (sorted keys, indent 2)."""
    try:
        text = path.read_text()
        return text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    except (OSError, ValueError):
        return False


def check_outputs(outputs, inputs: Iterable = (), files=()) -> None:
    """`check_output` for each output folder and output file (each a dict path -> kind, or (path, kind) pairs,
    so that two outputs given one path are seen), then: no output is, contains, or lies inside an input or
    another output of the same stage."""
    pairs = lambda given: [(Path(p), k) for p, k in (given.items() if isinstance(given, dict) else given)  # noqa
                           if p is not None]
    outputs, files = pairs(outputs), pairs(files)
    for path, kind in outputs:
        check_output(path, kind)
    for path, kind in files:
        check_output(path, kind, file=True)
    outs = [p for p, _ in outputs + files]
    ins = [Path(p) for p in inputs if p is not None]
    for i, out in enumerate(outs):
        r = out.expanduser().resolve()
        for other, role in [(p, "input") for p in ins] + [(p, "output") for p in outs[i + 1:]]:
            o = other.expanduser().resolve()
            if r == o or o.is_relative_to(r) or r.is_relative_to(o):
                relation = "is" if r == o else "contains" if o.is_relative_to(r) else "lies inside"
                raise _fail(out, f"{relation} the {role} {other}", "outputs apart from the stage's inputs and "
                                                                    "from each other")


def _feed(h, path: Path):
    """Hash a file's bytes into `h`, a MiB at a time."""
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h


def sha256_file(path: Path) -> str:
    return _feed(hashlib.sha256(), path).hexdigest()


def dir_digest(path: str | Path) -> str:
    """SHA-256 over the relative names and bytes of every file under `path` (or of one file)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode() + b"\0")
        _feed(h, f)
    return h.hexdigest()


def output_digest(path: str | Path) -> str:
    """What identifies an output: the SHA-256 of its marker (it holds every file's hash), else of its files."""
    path = Path(path)
    marker = path / MARKER
    return hashlib.sha256(marker.read_bytes()).hexdigest() if marker.is_file() else dir_digest(path)


def write_marker(directory: Path, kind: str | None, inputs: dict | None = None) -> None:
    """The ownership marker of a finished output: its kind, every file's SHA-256, the digests of its inputs."""
    files = {e: sha256_file(directory / e) for e in _files(directory) if not e.endswith("/") and e != MARKER}
    doc = {"format": MARKER_FORMAT, "kind": kind, "files": files,
           "inputs": {name: output_digest(p) for name, p in (inputs or {}).items() if p is not None}}
    (directory / MARKER).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def verify_input(path: str | Path, kind: str, against: dict | None = None) -> None:
    """Stop unless `path` is a `kind` output made from the very outputs in `against` (name -> path), as its
    marker records; an output from before markers is taken as it is (it recorded nothing to check)."""
    path = Path(path)
    if not path.is_dir():
        raise _fail(path, "does not exist" if not path.exists() else "is not a folder", f"the {_what(kind)}")
    marker = read_marker(path)
    if marker is None:
        _check_legacy_fit(path, kind, (against or {}).get("prepare"))
        return
    if marker.get("kind") not in (None, kind):
        raise _fail(path, f"holds the {_what(marker.get('kind'))}", f"the {_what(kind)}")
    for name, other in (against or {}).items():
        recorded = marker.get("inputs", {}).get(name)
        if other is None or recorded is None:
            continue
        if recorded != output_digest(other):
            raise _fail(path, f"was made from another {name} output than {other}",
                        f"inputs of one pipeline (rerun `metaaug {kind}` on {other}, or pass the {name} "
                        f"output it was made from)")


def _check_legacy_fit(path: Path, kind: str, prepared: Path | None) -> None:
    """For an output from before markers (no input digests recorded): at least its shapes must fit the
    prepared set, so that a mismatch stops with one line rather than a traceback deep in torch."""
    if prepared is None or not (Path(prepared) / "manifest.json").is_file():
        return
    try:
        target = read_json(Path(prepared) / "manifest.json")["target"]
        h, w, c = target["shape"]
        pool = sum(target["counts"]) - len(read_json(Path(prepared) / "manifest.json")["test"])
        if kind == "train" and (path / "results.json").is_file():
            model = read_json(path / "results.json")["model"]
            have = (model["in_channels"], model["image_size"], model["n_classes"])
            want, what = (c, h, len(target["classes"])), "channels, image size, classes"
        elif kind == "augment" and (path / "manifest.json").is_file():
            bank = read_json(path / "manifest.json")
            have, want, what = (bank["images"], *bank["shape"]), (pool, h, w, c), "images, height, width, channels"
        else:
            return
    except (KeyError, TypeError, ValueError, OSError):
        raise _fail(path, f"does not read as the {_what(kind)}", f"the {_what(kind)}") from None
    if tuple(have) != tuple(want):
        raise _fail(path, f"does not fit {prepared} ({what}: {list(have)} vs {list(want)})",
                    f"inputs of one pipeline (rerun `metaaug {kind}` on {prepared})")


@contextlib.contextmanager
def atomic_dir(path: str | Path, kind: str | None = None, inputs: dict | None = None) -> Iterator[Path]:
    """Yield an empty temp directory that replaces `path` only if the block succeeds.

    `path` must pass `check_output` for `kind` (checked before and again just before the replace); the
    published output carries the marker with `kind` and the digests of `inputs` (name -> output path).
    The temp name holds this process's id, so temp directories left by killed
    processes are recognised and removed by the next write of the same output.
    """
    path = Path(path)
    check_output(path, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_temp_prefix(path)}{os.getpid()}-", dir=path.parent))
    try:
        yield tmp
        write_marker(tmp, kind, inputs)
        check_output(path, kind)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _named(exc, path) from None
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
def atomic_file(path: str | Path, kind: str | None = None) -> Iterator[Path]:
    """Yield a temp file path that replaces `path` only if the block succeeds.

    With `kind` (a stage's output file, e.g. metrics.json), `path` must pass `check_output` first: absent,
    or a JSON file metaaug wrote; without it (files inside a fresh temp output, metaaug's own checkpoints)
    nothing is checked.
    """
    path = Path(path)
    if kind is not None:
        check_output(path, kind, file=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(path)}{os.getpid()}-", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _kill_hook(path)
        os.replace(tmp, path)
    except OSError as exc:
        raise _named(exc, path) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _named(exc: OSError, path: Path) -> OSError:
    """`exc` naming the output it failed to write when it names no file itself (a full disk: np.save's
    write names none), so that the one-line error says where."""
    if exc.filename is not None:
        return exc
    reason = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__)
    return type(exc)(exc.errno, reason, str(path))  # numpy's short write ('N requested and M written') has no errno


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


def write_json(path: str | Path, data: Any, kind: str | None = None) -> None:
    """Sorted, indented JSON, written atomically (byte-identical for equal data); `kind`: see atomic_file."""
    with atomic_file(path, kind) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_arrays(directory: Path, **arrays: np.ndarray) -> None:
    """One `.npy` per array (np.savez embeds timestamps, so it is not byte-stable)."""
    for name, array in arrays.items():
        np.save(directory / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)


def load_array(directory: str | Path, name: str, mmap: bool = False) -> np.ndarray:
    return np.load(Path(directory) / f"{name}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
