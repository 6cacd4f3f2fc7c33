"""What each stage read and wrote, as MLflow datasets under the digest DVC records for it."""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path

from metaaug.store import from_mlflow, import_mlflow, quiet_mlflow


def dvc_md5(path: str | Path) -> str:
    """The `md5` dvc.lock records for `path` (DVC 3, `hash: md5`), computed here the way dvc-data does it.

    A file: the MD5 of its bytes. A directory: DVC lists every file under it as `{"md5": <file md5>,
    "relpath": <POSIX path>}`, sorted by relpath, serialises the list with `json.dumps(..., sort_keys=True)`
    (Python's default separators), and records the MD5 of those UTF-8 bytes with `.dir` appended
    (dvc_data.hashfile.tree.Tree.as_bytes and .digest). Hidden files (the outputs' `.metaaug-output.json`)
    count; a `.dvcignore` would exclude paths, and metaaug's outputs have none. Computed, not imported, so
    that a stage need not load DVC; tests/test_registry.py checks it against dvc-data's own hash, and
    tests/test_pipeline_dvc.py against a real `dvc repro`'s dvc.lock.
    """
    path = Path(path)

    def md5(file: Path) -> str:
        h = hashlib.md5(usedforsecurity=False)
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()

    if path.is_file():
        return md5(path)
    entries = sorted(({"md5": md5(f), "relpath": f.relative_to(path).as_posix()}
                      for f in path.rglob("*") if f.is_file()), key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode(), usedforsecurity=False).hexdigest() + ".dir"


def _dataset_name(path: Path) -> str:
    """A path as dvc.yaml names it: relative to the working directory (the repository root under DVC) when
    inside it, else absolute."""
    path = Path(path).resolve()
    return path.relative_to(Path.cwd().resolve()).as_posix() if path.is_relative_to(Path.cwd().resolve()) \
        else str(path)


def log_datasets(stage: str, inputs: dict[str, Path | None], outputs: list[Path | None]) -> None:
    """The active stage run's DVC-tracked inputs and outputs as MLflow datasets (the run list's Dataset column).

    `inputs` maps the stage that wrote an input to its path; `outputs` are this stage's. Each is logged with
    context `input` or `output`, named by its path as dvc.yaml names it, with the digest dvc.lock records for
    it (dvc_md5: `<md5>.dir` for a directory, 36 characters, what MLflow's digest column holds), its absolute
    path as source, and tag `dvc.stage` (the stage whose output it is), so a run and a dvc.lock entry are
    matched by digest. Called after the outputs are written; a missing path is left out.
    """
    mlflow = import_mlflow()
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    entries = [("input", by, path) for by, path in inputs.items()] + [("output", stage, path) for path in outputs]
    datasets, contexts, tags = [], [], []
    for context, by, path in entries:
        if path is None or not Path(path).exists():
            continue
        with quiet_mlflow(), warnings.catch_warnings():  # MLflow registers two local sources for a file URI, and
            # says so in a warning of every stage's log: either is the same class, LocalArtifactDatasetSource
            warnings.filterwarnings("ignore", "The specified dataset source can be interpreted in multiple ways")
            source = resolve_dataset_source(Path(path).resolve().as_uri())
        datasets.append(MetaDataset(source, name=_dataset_name(path), digest=dvc_md5(path)))
        contexts.append(context)
        tags.append({"dvc.stage": by, "dvc.hash": "md5"})
    for attempt in range(3) if datasets else ():
        try:  # a dataset is stored once per experiment: two stages (`dvc queue start -j 2`) logging the same
            mlflow.log_inputs(datasets=datasets, contexts=contexts, tags_list=tags)  # new one may collide
            return
        except Exception as exc:
            if attempt == 2 or not from_mlflow(exc):
                raise
            time.sleep(0.5)  # then the other's row is committed, and this one links to it

