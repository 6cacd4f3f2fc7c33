"""Who owns an output: markers and sidecars, where an output may be written, and inputs read back only as written.

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

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from metaaug.errors import MetaaugError
from metaaug.files import canonical, dir_digest, fail, output_path, sha256_file

MARKER = ".metaaug-output.json"
SIDECAR = ".{}.metaaug.json"  # beside a JSON output file: its kind and SHA-256 (the file's own keys stay the data)
MARKER_FORMAT = 1


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


def forget_digests() -> None:
    """Forget every folder's kept digest, so that the next check hashes its files again (bench/input_hashing.py
    times the first check)."""
    _verified.clear()


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
    return fail(given, f"{name} was modified since metaaug wrote it (it no longer matches the SHA-256 in {MARKER})",
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
        raise fail(given, "is a symbolic link", f"{expected} (a real {'file' if file else 'folder'})")
    if resolved == cwd or cwd.is_relative_to(resolved):
        raise fail(given, "is the working directory or one of its parents", expected)
    for parent in resolved.parents:
        if read_marker(parent) is not None:
            raise fail(given, f"lies inside {parent}, the {_what(read_marker(parent).get('kind'))}",
                       "a path outside every metaaug output")
    existing = next(p for p in [resolved, *resolved.parents] if os.path.lexists(p))
    if existing != resolved and not existing.is_dir():
        raise fail(given, f"its parent {existing} is a file", "a folder there")
    folder = existing if existing != resolved else resolved.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        read_only = os.statvfs(folder).f_flag & os.ST_RDONLY
        raise fail(given, f"folder {folder} is {'on a read-only file system' if read_only else 'not writable'}",
                   "a folder this user can write to")
    _check_writable_here(given, resolved, folder, file)
    if file:
        return _check_own_json(given, resolved, kind, expected)
    if existing != resolved:
        return
    if not resolved.is_dir():
        raise fail(given, "is a file", f"{expected} (a folder)")
    marker = read_marker(resolved)
    if marker is None:
        if not any(resolved.iterdir()):
            return
        raise fail(given, f"exists and metaaug did not write it (no {MARKER} in it)", expected)
    if kind is not None and marker.get("kind") not in (None, kind):
        raise fail(given, f"holds the {_what(marker.get('kind'))}", expected)
    ours = set(marker["files"]) | {MARKER} | {p.rsplit("/", i)[0] + "/" for p in marker["files"]
                                              for i in range(1, p.count("/") + 1)}
    foreign = [e for e in _files(resolved) if e not in ours]
    if foreign:
        raise fail(given, f"holds {foreign[0]}, which metaaug did not write there",
                   f"only the {_what(kind)} there (move {foreign[0]} out, or choose another path)")
    if content_digest(resolved, marker) is None:
        raise _modified_error(given, resolved, marker, f"the {_what(kind)} as metaaug wrote it before it is "
                                                       f"replaced (move your edited files out, or choose another path)")


NAME_MAX_FALLBACK, TEMP_SUFFIX = 255, 32  # a temp's name: `.<name>.tmp-<pid>-<8 random>` (publish._new_temp)


def _check_writable_here(given: Path, path: Path, folder: Path, file: bool) -> None:
    """What would otherwise fail only at publishing, after the compute: a name (or its temp's or sidecar's,
    which are longer) over the file system's limit, a path over PATH_MAX, an output that is a mount point
    (a rename cannot replace one), an existing folder whose group this user cannot give its replacement."""
    try:
        name_max, path_max = os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = NAME_MAX_FALLBACK, 4096
    longest = len(os.fsencode(path.name)) + max(len(".tmp-") + TEMP_SUFFIX, len(SIDECAR.format("")))
    if longest + 1 > name_max:
        raise fail(given, f"its name is {len(os.fsencode(path.name))} bytes, too long for metaaug's temp and "
                          f"sidecar names beside it (at most {name_max} bytes a name there)",
                   f"a name of at most {name_max - longest + len(os.fsencode(path.name)) - 1} bytes")
    if len(os.fsencode(str(path))) + TEMP_SUFFIX + len(SIDECAR.format("")) > path_max:
        raise fail(given, f"is {len(os.fsencode(str(path)))} bytes long, too long to write below it",
                   f"a path well under {path_max} bytes")
    if os.path.lexists(path) and os.path.ismount(path):
        raise fail(given, "is a mount point, which a rename cannot replace",
                   "a path inside the mounted file system (e.g. a folder in it)")
    if path.exists() and path.stat().st_gid not in {os.getegid(), *os.getgroups()} \
            and os.geteuid() != 0:
        raise fail(given, f"belongs to group {path.stat().st_gid}, which this user is not in, so its replacement "
                          "could not keep it", "a folder of one of this user's groups (or a new path)")


def sidecar(path: Path) -> Path:
    """Where a JSON output file's kind and hash are kept: `.<name>.metaaug.json` beside it."""
    return path.with_name(SIDECAR.format(path.name))


def _check_own_json(given: Path, path: Path, kind: str | None, expected: str) -> None:
    """An existing output file is replaced only when metaaug wrote it as `kind` and nobody edited it since: its
    sidecar names the kind and the file's SHA-256."""
    if not os.path.lexists(path):  # the sidecar will be written too: a user's file of that name is theirs
        if os.path.lexists(sidecar(path)) and _sidecar_record(path, kind) is None:
            raise fail(sidecar(given), "exists and metaaug did not write it (the sidecar metaaug would write for "
                                       f"{given.name})", "no file there (move it, or choose another path)")
        return
    if not path.is_file():
        raise fail(given, "is a folder", f"{expected} (a file)")
    record = _sidecar_record(path, None)
    if record is None:
        raise fail(given, f"exists and metaaug did not write it (no readable {sidecar(given).name} beside it)",
                   expected)
    if record.get("kind") != kind:
        raise fail(given, f"holds the {_what(record.get('kind'))}", expected)
    if sha256_file(path) not in record.get("sha256", []):
        raise fail(given, f"was modified since metaaug wrote it (it no longer matches the SHA-256 in "
                          f"{sidecar(given).name})", f"the {_what(kind)} as metaaug wrote it before it is "
                                                     "replaced (move it, or choose another path)")


def _sidecar_record(path: Path, kind: str | None) -> dict | None:
    """The sidecar of output file `path` when it is one metaaug wrote: a plain file holding exactly a kind
    (`kind`, when given) and a list of SHA-256s; None otherwise (none, a link, unreadable, anything else)."""
    side = sidecar(path)
    try:
        if side.is_symlink() or not side.is_file() or side.stat().st_size > 4096:
            return None
        record = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or set(record) != {"kind", "sha256"} or not isinstance(record["sha256"], list):
        return None
    return record if kind is None or record["kind"] == kind else None


def verify_file(path: Path, kind: str, expected: str) -> None:
    """Stop unless output file `path` is byte for byte as metaaug wrote it as `kind` (its sidecar's SHA-256)."""
    record = _sidecar_record(path, kind)
    if record is None or sha256_file(path) not in record["sha256"][-1:]:
        raise fail(path, f"does not match the SHA-256 in its {sidecar(path).name} (edited, or not metaaug's)",
                   expected)


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
                raise fail(out, f"{relation} the {role} {other}", "outputs apart from the stage's inputs and "
                                                                    "from each other")


# --- markers ----------------------------------------------------------------------------------------------------


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
    text = canonical({"format": MARKER_FORMAT, "kind": kind, "files": files, "inputs": digests})
    (directory / MARKER).write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()


# --- inputs -----------------------------------------------------------------------------------------------------


def verify_input(path: str | Path, kind: str, against: dict | None = None) -> str:
    """Stop unless `path` is a `kind` output whose files are byte for byte those its marker lists, made from
    the very outputs in `against` (name -> path), as its marker records; returns its digest. A folder without
    a marker is refused: nothing vouches for its files."""
    given, path = Path(path), output_path(path)
    if not path.is_dir():
        raise fail(given, "does not exist" if not path.exists() else "is not a folder", f"the {_what(kind)}")
    marker = read_marker(path)
    if marker is None:
        rerun = f"the {_what(kind)} as metaaug wrote it (rerun `metaaug {kind.partition('.')[0]}`)"
        if (path / MARKER).exists():
            raise fail(given / MARKER, "is not a readable marker (truncated or edited?)", rerun)
        raise fail(given, f"has no {MARKER}, so metaaug did not write it", rerun)
    if marker.get("kind") not in (None, kind):
        raise fail(given, f"holds the {_what(marker.get('kind'))}", f"the {_what(kind)}")
    digest = content_digest(path, marker)
    if digest is None:
        raise _modified_error(given, path, marker, f"the {_what(kind)} as metaaug wrote it (rerun "
                                                   f"`metaaug {kind.partition('.')[0]}`)")
    for name, other in (against or {}).items():
        recorded = marker.get("inputs", {}).get(name)
        if other is None or recorded is None:
            continue
        if recorded != verify_input(other, name.partition(".")[0]) and (kind, name) not in PORTABLE:
            raise fail(given, f"was made from another {name} output than {other}",
                       f"inputs of one pipeline (rerun `metaaug {kind}` on {other}, or pass the {name} "
                       f"output it was made from)")
    return digest


# An output made from another upstream output than the one given that is still used as given: a policy is a
# portable artifact (searched on one data set, with that data's learner, applied to another: docs/method.md),
# so its provenance is a recorded fact (borrowed, tagged on the run), not a refusal.
PORTABLE = {("metatrain", "prepare"), ("metatrain", "learner")}


def borrowed(inputs: dict[str, Path], digests: dict[str, str]) -> dict[str, str]:
    """The inputs (stage -> its output) made from another upstream output than the one given, where PORTABLE
    allows it: `<input>.made_from.<upstream>` -> the upstream digest its marker recorded."""
    found = {}
    for kind, of in sorted(PORTABLE):
        if inputs.get(kind) is not None and of in digests:
            recorded = (read_marker(output_path(inputs[kind])) or {}).get("inputs", {}).get(of)
            if recorded is not None and recorded != digests[of]:
                found[f"{kind}.made_from.{of}"] = recorded
    return found


def verify_inputs(inputs: dict[str, Path | None]) -> dict[str, str]:
    """Each input (stage name, or `<stage>.<item>` for one output of a matrix stage -> its output folder)
    checked by content, and against the others by the input digests its marker recorded; returns name ->
    digest (each folder hashed once)."""
    given = {name: p for name, p in inputs.items() if p is not None}
    return {name: verify_input(p, name.partition(".")[0], {k: q for k, q in given.items() if k != name})
            for name, p in given.items()}
