"""Atomic, deterministic file output, written only where metaaug wrote before, and read back only as written.

Paths. Every output path is spelled once (`output_path`: `~` expanded, made absolute, its folder
resolved), and that one path is checked, written, swapped and deleted.

Temps. Every stage writes an output into a temporary sibling folder (`.<name>.tmp-<pid>-...`) holding a
temp marker (`.metaaug-temp.json`: the writer's pid and start time) and the output under `out`; the
output is renamed into place only once the stage succeeded, so an interrupted or failed stage leaves the
previous output intact and never a half-written one. A temp is recognised by its temp marker, never by
its name alone: a leftover one whose writer is gone is removed by the next write of that output.

Ownership. Every output folder carries a marker, `.metaaug-output.json`: the output's kind (the
stage that wrote it), the SHA-256 of every file in it, and the digests of the outputs it was made from;
a JSON output file (metrics.json, timings) has the same in a sidecar beside it, `.<name>.metaaug.json`, so
that the file itself holds only its data. An existing path
is replaced only when it is metaaug's output of the same kind, every file still as metaaug wrote it,
with nothing else in it (see `check_output`); anything else stops with one line and is left untouched.

Inputs. A stage reads an output only after its files matched its marker's hashes (`verify_input`);
the digest of an output is the SHA-256 of its marker. Each folder is hashed once per process while its
files stay unchanged (same inode, size and modification time): `content_digest` keeps the result.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from metaaug.errors import MetaaugError
from metaaug.reading import load_json


KILL_ENV = "METAAUG_KILL_BEFORE_RENAME"
MARKER = ".metaaug-output.json"
TEMP_MARKER = ".metaaug-temp.json"
SIDECAR = ".{}.metaaug.json"  # beside a JSON output file: its kind and SHA-256 (the file's own keys stay the data)
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
# JSON output files from before their sidecar: what tells each kind apart (evaluate's metrics: the full comparison
# of old, or the flat headline of numbers; a timing: its seconds and the machine).
LEGACY_JSON = {"evaluate.metrics": lambda d: {"arms", "paired"} <= set(d) or bool(d) and "machine" not in d and all(
                   isinstance(v, (int, float)) for v in d.values()),
               "metatrain.timing": lambda d: {"search_seconds", "machine"} <= set(d),
               "train.timing": lambda d: {"run_seconds", "machine"} <= set(d)}


def _fail(path: object, what: str, expected: str) -> MetaaugError:
    return MetaaugError(f"{path}: {what}; expected {expected}")


def _what(kind: str | None) -> str:
    """'output of `metaaug prepare`', 'plots output of `metaaug evaluate`'."""
    if kind is None:
        return "metaaug output"
    stage, _, part = str(kind).partition(".")
    return f"{part + ' ' if part else ''}output of `metaaug {stage}`"


def output_path(path: str | Path) -> Path:
    """The one spelling of a path metaaug checks, writes, swaps and deletes: `~` expanded (as a shell would),
    absolute, `..` folded, its folder's symbolic links resolved. The last part is kept as it is, so that
    a symbolic link there is seen (and refused), never followed."""
    p = Path(os.path.abspath(Path(path).expanduser()))
    return p.parent.resolve() / p.name if p.name else p


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


# --- contents against markers ---------------------------------------------------------------------------------

_verified: dict[Path, tuple[tuple, str]] = {}  # folder -> (fingerprint of its files, digest), see content_digest


def _fingerprint(root: Path, names: Iterable[str]) -> tuple:
    """What changes when any of these files is rewritten or replaced: inode, size, modification time."""
    stats = []
    for name in [MARKER, *names]:
        try:
            st = os.stat(root / name, follow_symlinks=False)
            stats.append((name, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((name, None))
    return tuple(stats)


def modified_file(root: Path, marker: dict) -> str | None:
    """The first file the marker lists that is missing, not a plain file, or not byte for byte as recorded."""
    for name, recorded in sorted(marker["files"].items()):
        path = root / name
        if path.is_symlink() or not path.is_file() or sha256_file(path) != recorded:
            return name
    return None


def content_digest(path: Path, marker: dict | None = None) -> str | None:
    """The digest of marked output `path` (SHA-256 of its marker) once every file it lists matched its recorded
    hash; None when one did not. Kept per folder while no listed file changed, so a stage hashes each once."""
    path = Path(path)
    marker = marker or read_marker(path)
    fingerprint = _fingerprint(path, sorted(marker["files"]))
    known = _verified.get(path)
    if known is not None and known[0] == fingerprint:
        return known[1]
    if modified_file(path, marker) is not None:
        return None
    digest = hashlib.sha256((path / MARKER).read_bytes()).hexdigest()
    _verified[path] = (fingerprint, digest)
    return digest


def _modified_error(given: object, root: Path, marker: dict, expected: str) -> MetaaugError:
    name = modified_file(root, marker)
    return _fail(given, f"{name} was modified since metaaug wrote it (it no longer matches the SHA-256 in {MARKER})",
                 expected)


# --- where an output may be written ---------------------------------------------------------------------------


def check_output(path: str | Path, kind: str | None, file: bool = False, shown: str | Path | None = None) -> None:
    """Stop unless `path` may receive metaaug's `kind` output: absent (its parent creatable), an empty folder, or
    metaaug's own earlier output of that kind, unmodified, holding nothing else (`file`: a JSON file metaaug
    wrote as that kind).

    The rule: an existing path is replaced only when metaaug recognisably wrote it, as this kind of output,
    and replacing it loses no file or edit metaaug did not write. Never the working directory or a parent of
    it, never a path inside another metaaug output, never through a symbolic link.
    """
    given, resolved = Path(shown if shown is not None else path), output_path(path)
    cwd = Path.cwd().resolve()
    expected = f"a new path or an earlier {_what(kind)}"
    if resolved.is_symlink():
        raise _fail(given, "is a symbolic link", f"{expected} (a real {'file' if file else 'folder'})")
    if resolved == cwd or cwd.is_relative_to(resolved):
        raise _fail(given, "is the working directory or one of its parents", expected)
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
        return _check_own_json(given, resolved, kind, expected)
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
    if content_digest(resolved, marker) is None:
        raise _modified_error(given, resolved, marker, f"the {_what(kind)} as metaaug wrote it before it is "
                                                       f"replaced (move your edited files out, or choose another path)")


def sidecar(path: Path) -> Path:
    """Where a JSON output file's kind and hash are kept: `.<name>.metaaug.json` beside it."""
    return path.with_name(SIDECAR.format(path.name))


def _check_own_json(given: Path, path: Path, kind: str | None, expected: str) -> None:
    """An existing output file is replaced only when metaaug wrote it as `kind` and nobody edited it since: its
    sidecar names the kind and the file's SHA-256 (a file from before sidecars: canonical JSON of that kind)."""
    if not path.is_file():
        raise _fail(given, "is a folder", f"{expected} (a file)")
    try:
        record = json.loads(sidecar(path).read_text())
    except (OSError, ValueError):  # none (a file from before sidecars), or unreadable: judged as such a file
        record = None
    if isinstance(record, dict):
        if record.get("kind") != kind:
            raise _fail(given, f"holds the {_what(record.get('kind'))}", expected)
        if sha256_file(path) not in record.get("sha256", []):
            raise _fail(given, f"was modified since metaaug wrote it (it no longer matches the SHA-256 in "
                               f"{sidecar(given).name})", f"the {_what(kind)} as metaaug wrote it before it is "
                                                          "replaced (move it, or choose another path)")
        return
    try:
        text = path.read_text()
        doc = json.loads(text)
    except (OSError, ValueError):
        doc = None
    if not isinstance(doc, dict) or text != _canonical(doc):
        raise _fail(given, "exists and was not written by metaaug (not its JSON)", expected)
    if not LEGACY_JSON.get(kind, lambda d: False)(doc):
        raise _fail(given, f"exists and was not written by metaaug as the {_what(kind)}", expected)


def _canonical(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"




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
        r = output_path(out)
        for other, role in [(p, "input") for p in ins] + [(p, "output") for p in outs[i + 1:]]:
            o = output_path(other)
            if r == o or o.is_relative_to(r) or r.is_relative_to(o):
                relation = "is" if r == o else "contains" if o.is_relative_to(r) else "lies inside"
                raise _fail(out, f"{relation} the {role} {other}", "outputs apart from the stage's inputs and "
                                                                    "from each other")


# --- hashing ----------------------------------------------------------------------------------------------------


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


def write_marker(directory: Path, kind: str | None, inputs: dict | None = None) -> str:
    """The ownership marker of a finished output: its kind, every file's SHA-256, the digests of its inputs
    (name -> an output path, or its digest already known). Returns the output's digest."""
    files = {e: sha256_file(directory / e) for e in _files(directory) if not e.endswith("/") and e != MARKER}
    digests = {name: p if isinstance(p, str) else output_digest(p) for name, p in (inputs or {}).items()
               if p is not None}
    text = _canonical({"format": MARKER_FORMAT, "kind": kind, "files": files, "inputs": digests})
    (directory / MARKER).write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()


# --- inputs -----------------------------------------------------------------------------------------------------


def verify_input(path: str | Path, kind: str, against: dict | None = None) -> str:
    """Stop unless `path` is a `kind` output whose files are byte for byte those its marker lists, made from
    the very outputs in `against` (name -> path), as its marker records; returns its digest. An output from
    before markers recorded nothing to check: only its shapes must fit the prepared set."""
    given, path = Path(path), output_path(path)
    if not path.is_dir():
        raise _fail(given, "does not exist" if not path.exists() else "is not a folder", f"the {_what(kind)}")
    marker = read_marker(path)
    if marker is None:
        if (path / MARKER).exists():
            raise _fail(given / MARKER, "is not a readable marker (truncated or edited?)",
                        f"the {_what(kind)} as metaaug wrote it (rerun `metaaug {kind.partition('.')[0]}`)")
        _check_legacy_fit(path, kind, (against or {}).get("prepare"))
        return dir_digest(path)
    if marker.get("kind") not in (None, kind):
        raise _fail(given, f"holds the {_what(marker.get('kind'))}", f"the {_what(kind)}")
    digest = content_digest(path, marker)
    if digest is None:
        raise _modified_error(given, path, marker, f"the {_what(kind)} as metaaug wrote it (rerun "
                                                   f"`metaaug {kind.partition('.')[0]}`)")
    for name, other in (against or {}).items():
        recorded = marker.get("inputs", {}).get(name)
        if other is None or recorded is None:
            continue
        if recorded != verify_input(other, name):
            raise _fail(given, f"was made from another {name} output than {other}",
                        f"inputs of one pipeline (rerun `metaaug {kind}` on {other}, or pass the {name} "
                        f"output it was made from)")
    return digest


def verify_inputs(inputs: dict[str, Path | None]) -> dict[str, str]:
    """Each input (stage name -> its output folder) checked by content, and against the others by the input
    digests its marker recorded; returns name -> digest (each folder hashed once)."""
    given = {name: p for name, p in inputs.items() if p is not None}
    return {name: verify_input(p, name, {k: q for k, q in given.items() if k != name}) for name, p in given.items()}


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
        if staged.file:
            _replace_file(staged)
        elif not path.exists() or not _exchange(staged.content, path):  # exchanged: content is the old output
            if os.path.lexists(path):
                os.replace(path, staged.temp / "previous")
            os.replace(staged.content, path)
    discard(staged)


def _replace_file(staged: Staged) -> None:
    """Replace an output file, and for a stage's output file (one with a kind) its sidecar: first the sidecar
    accepting the old and the new hash, then the file, then the sidecar accepting only the new one, so that
    a crash at any moment leaves a file its sidecar vouches for."""
    def record(hashes: list[str]) -> None:
        tmp = staged.temp / sidecar(staged.path).name
        tmp.write_text(_canonical({"kind": staged.kind, "sha256": hashes}))
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
        raise _named(exc, staged.shown) from None
    except BaseException:
        discard(staged)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path, kind: str | None = None, inputs: dict | None = None) -> Iterator[Path]:
    """Yield an empty folder that replaces `path` (marked as `kind`, made from `inputs`) only if the block
    succeeds. A stage's outputs go through `tracking.stage_run` instead, which publishes them only once
    their MLflow run has its record."""
    staged = stage_output(path, kind)
    with discarded_on_failure(staged):
        yield staged.content
        finish(staged, inputs)
    publish(staged)


@contextlib.contextmanager
def atomic_file(path: str | Path, kind: str | None = None) -> Iterator[Path]:
    """Yield a temp file path that replaces `path` only if the block succeeds. With `kind` (a stage's output
    file) `path` must pass `check_output` first; without it (files inside a fresh temp output, metaaug's own
    checkpoints) nothing is checked."""
    staged = stage_output(path, kind, file=True)
    with discarded_on_failure(staged):
        yield staged.content
    publish(staged)


def _named(exc: OSError, path: Path) -> OSError:
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
    (tmp / TEMP_MARKER).write_text(json.dumps({"pid": os.getpid(), "start": _process_start(os.getpid()),
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
                and (not _alive(pid) or start not in ("", _process_start(pid))):
            shutil.rmtree(entry, ignore_errors=True)


def _process_start(pid: int) -> str:
    """The start time of process `pid` (clock ticks since boot), which tells a reused pid apart; '' if unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


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
    """Sorted, indented JSON, written atomically (byte-identical for equal data); with `kind` (a stage's output
    file) its sidecar records kind and hash, and only such a file is replaced."""
    with atomic_file(path, kind) as tmp:
        tmp.write_text(_canonical(data))


def read_json(path: str | Path, expected: str = "the file metaaug wrote (rerun the stage that writes it)") -> Any:
    """A JSON file; unreadable JSON (truncated, edited, huge, deeply nested) stops with one line naming it."""
    return load_json(path, expected)


def check_free_space(path: str | Path, needed: int, what: str, fix: str) -> None:
    """Stop before writing `needed` bytes beside output `path` (its temp lives there) when the disk has less
    free: a full disk found half-way costs the whole computation before it."""
    folder = next(p for p in output_path(path).parents if p.exists())
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise _fail(path, f"{what} needs {needed / 1e9:.2f} GB but {folder} has {free / 1e9:.2f} GB free",
                    f"more free space there, or {fix}")


def save_arrays(directory: Path, **arrays: np.ndarray) -> None:
    """One `.npy` per array (np.savez embeds timestamps, so it is not byte-stable)."""
    for name, array in arrays.items():
        np.save(directory / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)


def load_array(directory: str | Path, name: str, mmap: bool = False) -> np.ndarray:
    """One `.npy`, never a pickle (object arrays are refused); a damaged file stops with one line naming it."""
    path = Path(directory) / f"{name}.npy"
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as exc:
        raise _fail(path, f"is not a readable .npy of numbers ({str(exc).splitlines()[0][:200]})",
                    "the file metaaug wrote (rerun the stage that writes it)") from None
