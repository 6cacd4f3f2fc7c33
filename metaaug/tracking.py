"""The one place that talks to MLflow.

Every stage execution is one MLflow run tagged with the stage name, the git
commit and dirty flag, and the run ids of the upstream stages whose outputs it
read. Outputs stay byte-deterministic (no run id is written into a DVC out):
each run is tagged with a content digest of the directory it wrote, and a
downstream stage finds its upstream run by the digest of what it read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

from metaaug.errors import MetaaugError

DEFAULT_URI = "sqlite:///mlflow.db"
STAGE_TAG = "metaaug.stage"
DIGEST_TAG = "metaaug.output_digest"
PIPELINE_TAG = "metaaug.pipeline"  # one pipeline execution: see pipeline_id


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else the SQLite file at the working directory (the repo root under DVC)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def _import_mlflow():
    # Fail fast on an unreachable server instead of MLflow's minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    import mlflow

    return mlflow


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """For an HTTP tracking server, one quick request, so a wrong address fails in seconds, not minutes."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MetaaugError(
            f"MLflow tracking server {uri} is unreachable ({reason}); expected a running `mlflow server` "
            "or MLFLOW_TRACKING_URI unset for the local sqlite:///mlflow.db"
        ) from None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """For a SQLite store, hold a machine-wide lock while MLflow creates or upgrades its tables.

    Processes that open one fresh store at once (`dvc queue start -j 2`) would each create the
    tables, and all but one would stop with "table ... already exists". The lock file lives in
    the temp folder, keyed by the database's path, so the repository gains no file.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///").split("?")[0]).resolve()
    if not db.parent.is_dir():
        raise MetaaugError(f"MLFLOW_TRACKING_URI={uri}: folder {db.parent} does not exist; expected an existing "
                           "folder for the SQLite file")
    import fcntl

    key = hashlib.sha256(str(db).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"metaaug-mlflow-{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        yield


def dir_digest(path: str | Path) -> str:
    """SHA-256 over the relative names and bytes of every file under `path` (or of one file)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def git(*args: str) -> str:
    """Output of a git command in the working directory; empty when it fails (e.g. not a repository)."""
    out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=30)
    return out.stdout.strip() if out.returncode == 0 else ""


def git_info() -> dict[str, str]:
    """The commit of the working directory and whether it has uncommitted changes."""
    commit = git("rev-parse", "HEAD") or "none"
    dirty = "true" if git("status", "--porcelain", "--untracked-files=no") else "false"
    return {"git.commit": commit, "git.dirty": dirty}


def pipeline_id(commit: str) -> str:
    """Names one pipeline execution: the code and configuration every stage of one `dvc repro` runs with.

    Hash of the git commit and the uncommitted changes to what defines the pipeline
    (params.yaml, dvc.yaml, Python sources): the stages of one `dvc repro` (or one
    `dvc exp run -S ...` experiment) share it, and a change of params or code gives a new
    one. Files the stages themselves rewrite (dvc.lock, metrics.json, plots) are left
    out, so the id does not change half-way through a run. A forced re-run of the same
    code and params shares its id with the first run (tell them apart by start time);
    set METAAUG_PIPELINE to name executions yourself (e.g. a CI job id).
    """
    if os.environ.get("METAAUG_PIPELINE"):
        return os.environ["METAAUG_PIPELINE"]
    diff = git("diff", "HEAD", "--binary", "--", "params.yaml", "dvc.yaml", "*.py")
    return hashlib.sha256(f"{commit}\0{diff}".encode()).hexdigest()[:12]


def flatten(nested: dict, prefix: str = "") -> dict:
    """Nested dicts as flat dotted keys (`train.epochs`, `arms.none.mean`), the way the MLflow UI shows them."""
    flat = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def as_params(nested: dict) -> dict[str, str]:
    """MLflow params: flat keys, lists as JSON, everything else as text."""
    return {k: json.dumps(v) if isinstance(v, (list, tuple)) else str(v) for k, v in flatten(nested).items()}


def as_metrics(nested: dict) -> dict[str, float]:
    """MLflow metrics: the numeric leaves of a nested dict, flat keys."""
    return {k: float(v) for k, v in flatten(nested).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def find_run_by_digest(client, experiment_id: str, stage: str, digest: str) -> str | None:
    """The newest run of `stage` whose outputs had `digest`; None when none is recorded."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{STAGE_TAG}` = '{stage}' and tags.`{DIGEST_TAG}` = '{digest}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


@contextlib.contextmanager
def stage_run(stage: str, params: dict, experiment: str, upstream: dict[str, Path] | None = None,
              output: Path | None = None) -> Iterator:
    """An MLflow run for one stage execution.

    `upstream` maps an upstream stage name to the output it read; its run id is
    recorded as tag `upstream.<stage>`. `output` is this stage's output
    directory; its digest is tagged when the stage succeeds.
    """
    if not experiment.strip():  # MLflow would stop with a traceback
        raise MetaaugError("params.yaml: tracking.experiment is empty; expected an MLflow experiment name")
    uri = tracking_uri()
    check_reachable(uri)  # before importing mlflow, which takes seconds
    mlflow = _import_mlflow()
    mlflow.set_tracking_uri(uri)
    with store_lock(uri):
        exp = mlflow.set_experiment(experiment)
    client = mlflow.MlflowClient()
    tags = {STAGE_TAG: stage, **git_info()}
    tags[PIPELINE_TAG] = pipeline_id(tags["git.commit"])
    for name, path in (upstream or {}).items():
        run_id = find_run_by_digest(client, exp.experiment_id, name, dir_digest(path))
        tags[f"upstream.{name}"] = run_id or "unknown"
    with mlflow.start_run(run_name=stage, tags=tags) as run:
        mlflow.log_params(as_params(params))
        yield run
        if output is not None:
            mlflow.set_tag(DIGEST_TAG, dir_digest(output))


def log_child_run(parent_run_id: str, name: str, params: dict, tags: dict, curves: dict[str, list[float]],
                  final: dict[str, float]) -> str:
    """One nested run (e.g. one arm x split) with its per-epoch curves, logged in a single batch."""
    mlflow = _import_mlflow()
    from mlflow.entities import Metric, Param as MlflowParam

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    all_tags = {"mlflow.parentRunId": parent_run_id, "mlflow.runName": name,
                PIPELINE_TAG: parent.data.tags.get(PIPELINE_TAG, "unknown"), **tags}
    run = client.create_run(parent.info.experiment_id, tags=all_tags, run_name=name)
    now = int(time.time() * 1000)
    metrics = [Metric(key, float(v), now, step) for key, values in curves.items() for step, v in enumerate(values)]
    metrics += [Metric(key, float(v), now, 0) for key, v in final.items()]
    run_params = [MlflowParam(k, v) for k, v in as_params(params).items()]
    for start in range(0, max(len(metrics), 1), 1000):  # MLflow caps a batch at 1000 metrics
        client.log_batch(run.info.run_id, metrics=metrics[start:start + 1000],
                         params=run_params if start == 0 else [], tags=[])
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def describe_evaluate_run(run) -> None:
    """The evaluate run's description (MLflow's note, shown on its page): links to the runs it compared.

    The train run's arm x split runs carry param `arm` and tag `metaaug.train_run`, so
    the search given here selects exactly them for MLflow's Compare view.
    """
    mlflow = _import_mlflow()
    tags, exp = run.data.tags, run.info.experiment_id
    upstream = {k.removeprefix("upstream."): v for k, v in tags.items() if k.startswith("upstream.")}
    train = upstream.get("train", "unknown")
    lines = [f"Evaluate of pipeline execution `{tags.get(PIPELINE_TAG, 'unknown')}`.", "",
             "Upstream runs: " + ", ".join(f"{stage} [{rid[:8]}](#/experiments/{exp}/runs/{rid})"
                                           for stage, rid in upstream.items() if rid != "unknown") + ".", "",
             f"The arm × split training runs it compared: search ``tags.`metaaug.train_run` = '{train}'``, "
             "select them and Compare, by param `arm` (and `split`, `seed`).", "",
             f"Every stage run of this execution: ``tags.`{PIPELINE_TAG}` = '{tags.get(PIPELINE_TAG)}'``."]
    mlflow.set_tag("mlflow.note.content", "\n".join(lines))


# The active stage run's logging: the stages call these, never mlflow itself.

def log_metrics(metrics: dict, step: int | None = None) -> None:
    """The numeric leaves of a (nested) dict as metrics of the active run."""
    _import_mlflow().log_metrics(as_metrics(metrics), step=step)


def set_tags(tags: dict[str, str]) -> None:
    _import_mlflow().set_tags(tags)


def log_figure(figure, name: str) -> None:
    _import_mlflow().log_figure(figure, name)


def log_dict(data: dict, name: str) -> None:
    _import_mlflow().log_dict(data, name)


def log_artifacts(path: Path, artifact_path: str | None = None) -> None:
    """A file or every file of a directory, under `artifact_path` of the active run."""
    mlflow = _import_mlflow()
    if Path(path).is_dir():
        mlflow.log_artifacts(str(path), artifact_path)
    else:
        mlflow.log_artifact(str(path), artifact_path)
