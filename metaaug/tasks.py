"""Tasks: the meta-train / target split and the few-shot target splits.

`prepare` turns one or two data sources into `data/prepared/`:

* meta-train classes (never the target's) with a per-class meta-validation
  hold-out, from which metatrain samples its tasks;
* the target task: a fixed held-out test split, a pool of labelled images, and
  `splits` few-shot splits of the pool — split *i* fixes the shot sample and the
  learner initialisation (seed *i*) identically for every arm.

Everything is a pure function of the params and the data, so the outputs are
byte-identical across runs.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metaaug.config import DataConfig, TasksConfig, params_file
from metaaug.data import Dataset, load_source, same_source
from metaaug.errors import MetaaugError
from metaaug.files import load_array, read_json
from metaaug.ownership import MARKER, read_marker, verify_input
from metaaug.publish import save_arrays, write_json

ARRAYS = ("meta_images", "meta_labels", "meta_is_val", "target_images", "target_labels")


@dataclass(frozen=True)
class Prepared:
    """What prepare wrote, loaded back (arrays memory-mapped)."""

    meta_images: np.ndarray
    meta_labels: np.ndarray
    meta_is_val: np.ndarray
    target_images: np.ndarray
    target_labels: np.ndarray
    manifest: dict


def subset(ds: Dataset, class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Images of the named classes, relabelled 0..len(class_names)-1 in that order."""
    index = {name: i for i, name in enumerate(ds.classes)}
    ids = np.array([index[name] for name in class_names])
    keep = np.isin(ds.labels, ids)
    relabel = np.full(len(ds.classes), -1)
    relabel[ids] = np.arange(len(ids))
    return ds.images[keep], relabel[ds.labels[keep]]


def natural_key(name: str) -> list:
    """Sort key that orders class names as a person does: "2" before "10", "cat" before "dog"."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def check_target_names(names: list[str], source: Dataset, hint: str = "") -> None:
    """The target classes exist in the source and are at least two."""
    unknown = [c for c in names if c not in source.classes]
    if unknown:
        raise MetaaugError(f"{params_file()}: tasks.target_classes names {unknown[0]!r}, which {source.source} does not "
                           f"have; expected classes from {list(source.classes)}{hint}")
    if len(names) < 2:
        raise MetaaugError(f"{params_file()}: tasks.target_classes has {len(names)} class; expected at least 2")


def choose_classes(meta: Dataset, target: Dataset, target_classes: list[str] | None, same_source: bool):
    """(meta-train class names, target class names), checked. Without target_classes the target is the
    last half of the source's classes in natural order (digits: 5-9) when it shares the meta-train source,
    or all of a separate target source's classes."""
    if target_classes is not None:
        names = [str(c) for c in target_classes]
    elif same_source:
        ordered = sorted(target.classes, key=natural_key)
        names = ordered[len(ordered) // 2:]
    else:
        names = list(target.classes)
    check_target_names(names, target)
    meta_names = [c for c in meta.classes if not (same_source and c in names)]
    if len(meta_names) < 2:
        raise MetaaugError(f"{params_file()}: only {len(meta_names)} class left for meta-training in {meta.source}; "
                           "expected at least 2 (hold out fewer tasks.target_classes or set tasks.target_source)")
    return meta_names, names


def split_per_class(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask holding out `fraction` of each class (at least one image per class stays on each side)."""
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_out = min(max(1, round(fraction * len(idx))), len(idx) - 1)
        mask[idx[:n_out]] = True
    return mask


def few_shot_splits(labels: np.ndarray, pool: np.ndarray, shots: int, n_splits: int, seed: int,
                    class_names: list[str]) -> list[dict]:
    """`n_splits` samples of `shots` pool images per class; split i uses seed (seed, i)."""
    for c, name in enumerate(class_names):
        have = int(np.sum(labels[pool] == c))
        if have < shots:
            raise MetaaugError(f"{params_file()}: tasks.shots = {shots} but target class {name!r} has only {have} "
                               "training images after the test hold-out; expected shots <= that")
    splits = []
    for i in range(n_splits):
        rng = np.random.default_rng([seed, i])
        support = np.concatenate([rng.choice(pool[labels[pool] == c], shots, replace=False)
                                  for c in range(len(class_names))])
        splits.append({"support": sorted(int(j) for j in support), "seed": i})
    return splits


def check_disjoint(meta_x: np.ndarray, target_x: np.ndarray, target_y: np.ndarray, target_names: list[str],
                   meta_source: str, target_source: str) -> None:
    """No target image, test images included, is also a meta-train image (byte for byte, as prepared).

    The rule behind choosing meta-train classes: whatever the sources are called (a copy of a folder, a
    folder and its `.npz` export), meta-training never sees the target task's images.
    """
    if meta_x.shape[1:] != target_x.shape[1:] or not len(meta_x) or not len(target_x):
        return

    def digests(x: np.ndarray):
        return (hashlib.blake2b(np.ascontiguousarray(row).data, digest_size=16).digest() for row in x)

    seen = set(digests(meta_x))
    leaked = [i for i, d in enumerate(digests(target_x)) if d in seen]
    if leaked:
        first = target_names[int(target_y[leaked[0]])]
        where = f"data.source={meta_source}" + ("" if target_source == meta_source else
                                                 f" and tasks.target_source={target_source}")
        raise MetaaugError(
            f"{where}: {len(leaked)} of {len(target_x)} "
            f"target images (test images included; first in class {first!r}) are also meta-train images; expected "
            "the target task disjoint from meta-training (leave tasks.target_source unset to hold "
            "tasks.target_classes out of data.source, or point it at other images)")


def prepare(data: DataConfig, tasks: TasksConfig, seed: int, out: Path) -> dict:
    """Load the sources, build meta-train and target tasks, write them into directory `out`."""
    if tasks.protocol == "full":
        return prepare_full(data, tasks, seed, out)
    meta_ds = load_source(data.source, data.image_size)
    same = tasks.target_source is None or same_source(tasks.target_source, data.source)
    # A separate target folder is decoded only for the target classes (fewer than 2: choose_classes says so).
    wanted = tasks.target_classes
    only = wanted if wanted is not None and len(wanted) >= 2 else None
    target_ds = meta_ds if same else load_source(tasks.target_source, data.image_size, only)
    meta_names, target_names = choose_classes(meta_ds, target_ds, tasks.target_classes, same)
    meta_x, meta_y = subset(meta_ds, meta_names)
    target_x, target_y = subset(target_ds, target_names)
    rng = np.random.default_rng(seed)
    meta_is_val = split_per_class(meta_y, tasks.meta_val_fraction, rng)
    is_test = split_per_class(target_y, tasks.test_fraction, rng)
    splits = few_shot_splits(target_y, np.flatnonzero(~is_test), tasks.shots, tasks.splits, seed, target_names)
    check_disjoint(meta_x, target_x, target_y, target_names, meta_ds.source, target_ds.source)
    manifest = {
        "meta": {"source": meta_ds.source, "classes": meta_names, "shape": list(meta_x.shape[1:]),
                 "counts": np.bincount(meta_y, minlength=len(meta_names)).tolist(),
                 "val_count": int(meta_is_val.sum())},
        "target": {"source": target_ds.source, "classes": target_names, "shape": list(target_x.shape[1:]),
                   "counts": np.bincount(target_y, minlength=len(target_names)).tolist(), "shots": tasks.shots},
        "test": np.flatnonzero(is_test).tolist(),
        "splits": splits,
    }
    save_arrays(out, meta_images=meta_x, meta_labels=meta_y, meta_is_val=meta_is_val,
                target_images=target_x, target_labels=target_y)
    write_json(out / "manifest.json", manifest)
    return manifest


def prepare_full(data: DataConfig, tasks: TasksConfig, seed: int, out: Path) -> dict:
    """`tasks.protocol: full`: the target is every class of data.source (or tasks.target_classes) with all
    of its labelled training images, and a held-out test split.

    The meta-train arrays are the target's training split (a per-class meta-validation hold-out inside
    it) and nothing else: test images never reach metatrain. Each of the `splits` splits trains on
    the whole training split; split i fixes the learner's initialisation and data order (seed i), so
    the arms are compared by paired differences over the seeds. Same manifest layout as few-shot.
    """
    ds = load_source(data.source, data.image_size)
    names = list(ds.classes) if tasks.target_classes is None else [str(c) for c in tasks.target_classes]
    check_target_names(names, ds, " (or null: every class)")
    x, y = subset(ds, names)
    rng = np.random.default_rng(seed)
    is_test = split_per_class(y, tasks.test_fraction, rng)
    pool = np.flatnonzero(~is_test)
    for c, name in enumerate(names):
        have = int(np.sum(y[pool] == c))
        if have < tasks.shots + 2:  # metatrain: a task needs shots + a query image; the hold-out needs one
            raise MetaaugError(f"{params_file()}: tasks.shots = {tasks.shots} but class {name!r} has only {have} "
                               "training images after the test hold-out; expected at least shots + 2")
    meta_x, meta_y = x[pool], y[pool]
    meta_is_val = split_per_class(meta_y, tasks.meta_val_fraction, rng)
    counts = np.bincount(y, minlength=len(names)).tolist()
    manifest = {
        "protocol": "full",
        "meta": {"source": ds.source, "classes": names, "shape": list(meta_x.shape[1:]),
                 "counts": np.bincount(meta_y, minlength=len(names)).tolist(), "val_count": int(meta_is_val.sum()),
                 "target_rows": pool.tolist()},  # meta image r is target image target_rows[r]
        "target": {"source": ds.source, "classes": names, "shape": list(x.shape[1:]), "counts": counts,
                   "shots": None},
        "test": np.flatnonzero(is_test).tolist(),
        "splits": [{"support": pool.tolist(), "seed": i} for i in range(tasks.splits)],
    }
    save_arrays(out, meta_images=meta_x, meta_labels=meta_y, meta_is_val=meta_is_val,
                target_images=x, target_labels=y)
    write_json(out / "manifest.json", manifest)
    return manifest


def load_prepared(path: str | Path, verify: bool = True) -> Prepared:
    """Read `data/prepared/` back, its files first checked against their marker (`verify`: False only for
    the folder prepare has just written); a missing or damaged one says which stage to run."""
    path = Path(path)
    expected = "expected the output of `metaaug prepare` (or `dvc repro prepare`)"
    marker = read_marker(path)
    if marker is not None and marker.get("kind") not in (None, "prepare"):
        raise MetaaugError(f"{path}: holds the output of `metaaug {marker['kind']}` (see its {MARKER}); {expected}")
    missing = [f"{name}.npy" for name in ARRAYS if not (path / f"{name}.npy").is_file()]
    if not (path / "manifest.json").is_file() or missing:
        first = "manifest.json" if not (path / "manifest.json").is_file() else missing[0]
        raise MetaaugError(f"{path}: no prepared data ({first} missing); {expected}")
    if verify:
        verify_input(path, "prepare")
    arrays = {name: load_array(path, name, mmap=True) for name in ARRAYS}
    manifest = read_json(path / "manifest.json", expected.removeprefix("expected "))
    check_prepared(path, manifest, arrays)
    return Prepared(**arrays, manifest=manifest)


def check_prepared(path: Path, manifest: dict, arrays: dict[str, np.ndarray]) -> None:
    """The prepared layout every stage relies on, so that an edited or foreign folder stops with one line
    instead of a traceback: manifest keys, uint8 NHWC images, labels within the classes, indices within
    the target images."""
    expected = "the output of `metaaug prepare` (rerun it)"
    try:
        for part in ("meta", "target"):
            n_classes, images, labels = (len(manifest[part]["classes"]), arrays[f"{part}_images"],
                                         arrays[f"{part}_labels"])
            str(manifest[part]["source"])
            if images.dtype != np.uint8 or images.ndim != 4 or labels.shape != (len(images),) \
                    or labels.dtype.kind not in "iu":
                raise ValueError(f"{part} arrays are {images.dtype} {images.shape} and {labels.dtype} {labels.shape}")
            if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
                raise ValueError(f"{part}_labels span [{labels.min()}, {labels.max()}] for {n_classes} classes")
        rows = [manifest["test"], *[s["support"] for s in manifest["splits"]]]
        [int(s["seed"]) for s in manifest["splits"]]
        n = len(arrays["target_labels"])
        if any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n for r in rows for i in r):
            raise ValueError(f"a test or support index outside the {n} target images")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MetaaugError(f"{path}: does not hold the prepared layout ({type(exc).__name__}: {str(exc)[:200]}); "
                           f"expected {expected}") from None
