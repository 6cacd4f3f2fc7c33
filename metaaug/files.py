"""Small file helpers every module shares: the one spelling of an output path, the one error for a bad
file, canonical JSON, SHA-256 of files, and reading JSON and `.npy` files back as metaaug wrote them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from metaaug.errors import MetaaugError
from metaaug.reading import load_json


def fail(path: object, what: str, expected: str) -> MetaaugError:
    """The one error about a file: `<path>: <what is wrong>; expected <what>`."""
    return MetaaugError(f"{path}: {what}; expected {expected}")


def output_path(path: str | Path) -> Path:
    """The one spelling of a path metaaug checks, writes, swaps and deletes: `~` expanded (as a shell would),
    absolute, `..` folded, its folder's symbolic links resolved. The last part is kept as it is, so that
    a symbolic link there is seen (and refused), never followed."""
    p = Path(os.path.abspath(Path(path).expanduser()))
    return p.parent.resolve() / p.name if p.name else p


def canonical(data: Any) -> str:
    """Sorted, indented JSON text: byte-identical for equal data."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


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


def read_json(path: str | Path, expected: str = "the file metaaug wrote (rerun the stage that writes it)") -> Any:
    """A JSON file; unreadable JSON (truncated, edited, huge, deeply nested) stops with one line naming it."""
    return load_json(path, expected)


def check_free_space(path: str | Path, needed: int, what: str, fix: str) -> None:
    """Stop before writing `needed` bytes beside output `path` (its temp lives there) when the disk has less
    free: a full disk found half-way costs the whole computation before it."""
    folder = next(p for p in output_path(path).parents if p.exists())
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise fail(path, f"{what} needs {needed / 1e9:.2f} GB but {folder} has {free / 1e9:.2f} GB free",
                    f"more free space there, or {fix}")


def load_array(directory: str | Path, name: str, mmap: bool = False) -> np.ndarray:
    """One `.npy`, never a pickle (object arrays are refused); a damaged file stops with one line naming it."""
    path = Path(directory) / f"{name}.npy"
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as exc:
        raise fail(path, f"is not a readable .npy of numbers ({str(exc).splitlines()[0][:200]})",
                    "the file metaaug wrote (rerun the stage that writes it)") from None
