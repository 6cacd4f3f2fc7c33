"""The one place that talks to MLflow.

Every stage execution is one MLflow run tagged with the stage name, the git
commit and dirty flag, and the run ids of the upstream stages whose outputs it
read. Outputs stay byte-deterministic (no run id is written into a DVC out):
each run is tagged with the digest of the output it wrote (the SHA-256 of its
marker, which holds every file's hash), and a downstream stage finds its upstream
run by the digest of what it read. `stage_run` is the one order every stage
follows: checks, MLflow, compute into temps, publish once the run recorded them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import sqlite3
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

from metaaug import io
from metaaug.errors import MetaaugError
from metaaug.io import dir_digest  # noqa: F401  (callers and tests use tracking.dir_digest)

DEFAULT_URI = "sqlite:///mlflow.db"
STAGE_TAG = "metaaug.stage"
DIGEST_TAG = "metaaug.output_digest"
PIPELINE_TAG = "metaaug.pipeline"  # one pipeline execution: see pipeline_id
PROCESS_TAG = "metaaug.process"  # host:pid:start time of the process running the stage (see fail_stale_runs)
MAX_KEY = 250  # MLflow's limit on a metric, param or tag key
LOCK_WAIT_S = 15  # how long a locked SQLite store is waited for


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else the SQLite file at the working directory (the repo root under DVC)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def _import_mlflow():
    # Fail fast on an unreachable server instead of MLflow's minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    import mlflow

    logging.getLogger("mlflow.store.db.utils").addFilter(_quiet_store_errors)  # once: a filter is added only once
    return mlflow


def _quiet_store_errors(record: logging.LogRecord) -> bool:
    """Drop MLflow's own log of a store error (a traceback per retry): mlflow_errors reports it in one line."""
    return record.levelno < logging.ERROR


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """For an HTTP tracking server, one quick request, so a wrong address fails in seconds, not minutes."""
    if not uri.startswith(("http://", "https://")):
        return
    probe = uri.rstrip("/") + "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
    expected = "a running `mlflow server` or MLFLOW_TRACKING_URI unset for the local sqlite:///mlflow.db"
    try:
        with urllib.request.urlopen(probe, timeout=timeout) as response:
            body = response.read(1 << 16)
    except urllib.error.HTTPError as exc:  # MLflow answers a missing experiment with 404 and a JSON error
        if exc.code in (401, 403):  # a server behind authentication: MLflow sends the credentials
            return
        body = exc.read(1 << 16)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MetaaugError(f"MLflow tracking server {uri} is unreachable ({reason}); expected {expected}") from None
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not {"experiment", "error_code"} & set(doc):
        raise MetaaugError(f"MLFLOW_TRACKING_URI={uri} answers, but not as an MLflow tracking server (its REST API "
                           f"is missing); expected {expected}")


def metric_key(name: str) -> str:
    """`name` as a key MLflow accepts whatever class names went into it: each character other than a letter,
    digit, `_`, `-`, `.` or space becomes `_`; over MLflow's length limit, the end is a hash of the whole."""
    key = re.sub(r"[^\w.\- ]", "_", name)
    if len(key) > MAX_KEY:
        key = key[:MAX_KEY - 13] + "-" + hashlib.sha256(name.encode()).hexdigest()[:12]
    return key


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (None for other schemes and in-memory stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?")[0]
    return Path(path).resolve() if path and path != ":memory:" else None


def check_store(uri: str) -> None:
    """For a SQLite store, open it the way MLflow will, in seconds: a folder, a file that is no database, a
    corrupt, read-only or locked database, or a path that cannot be created each stop with one line
    (MLflow itself retries for minutes, or fails after outputs were written)."""
    db = _sqlite_path(uri)
    if db is None:
        return
    expected = "a writable SQLite file (or a new path in a writable folder)"
    where = f"MLFLOW_TRACKING_URI={uri}"
    if not db.parent.is_dir():
        raise MetaaugError(f"{where}: folder {db.parent} does not exist; expected an existing folder for the "
                           "SQLite file")
    if db.is_dir():
        raise MetaaugError(f"{where}: {db} is a folder; expected {expected}")
    if db.exists() and not db.is_file():
        raise MetaaugError(f"{where}: {db} is not a regular file; expected {expected}")
    if not db.exists():
        try:  # a real file, not os.access: root passes access() where the file system still refuses (/proc)
            with tempfile.TemporaryFile(dir=db.parent):
                pass
        except OSError as exc:
            raise MetaaugError(f"{where}: cannot create a file in {db.parent} ({exc.strerror or exc}); "
                               f"expected {expected}") from None
        return
    try:
        connection = sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=LOCK_WAIT_S)
        try:
            connection.execute("PRAGMA schema_version").fetchone()  # reads the header: 'not a database'
            connection.execute("BEGIN IMMEDIATE")  # takes the write lock: 'locked', 'readonly'
            connection.execute("ROLLBACK")
            if connection.execute("PRAGMA quick_check(1)").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("database disk image is malformed")
        finally:
            connection.close()
    except sqlite3.Error as exc:
        reason = str(exc)
        if "locked" in reason:
            reason += f" for {LOCK_WAIT_S} s by another process"
        raise MetaaugError(f"{where}: cannot use {db} ({reason}); expected {expected}") from None


_process_start = io._process_start


def process_tag() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_process_start(pid)}"


def _process_gone(tag: str) -> bool:
    """Whether the process a PROCESS_TAG names has ended (on this host; another host's is never judged)."""
    try:
        host, pid, start = tag.rsplit(":", 2)
        pid = int(pid)
    except ValueError:
        return False
    if host != socket.gethostname():
        return False
    return not io._alive(pid) or (start != "" and _process_start(pid) not in ("", start))


def fail_stale_runs(client, experiment_id: str, stage: str) -> list[str]:
    """Mark FAILED the RUNNING runs of `stage` whose process is gone (killed, e.g. SIGKILL or power loss)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{STAGE_TAG}` = '{stage}' and "
                                                             "attributes.status = 'RUNNING'", max_results=1000)
    stale = [r.info.run_id for r in runs if _process_gone(r.data.tags.get(PROCESS_TAG, ""))]
    for run_id in stale:
        client.set_terminated(run_id, "FAILED")
    return stale


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


def git(*args: str) -> str:
    """Output of a git command in the working directory; empty when it fails (not a repository, no git)."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=30)
    except OSError:  # git is not installed: the runs carry git.commit none, as outside a repository
        return ""
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


class Stage:
    """What a stage's body gets from `stage_run`: its MLflow `run`, a temp folder per output folder (`output`)
    and a writer for its JSON output files (`write_json`). Nothing reaches the output paths before the body
    returned and MLflow recorded the run: then `stage_run` publishes them, each in one rename."""

    def __init__(self, run, stage: str, outputs: dict, files: dict, inputs: dict[str, str]):
        self.run, self.stage, self.inputs = run, stage, inputs
        self._declared = {**{Path(p): (k, False) for p, k in outputs.items()},
                          **{Path(p): (k, True) for p, k in files.items()}}
        self.staged: dict[Path, io.Staged] = {}
        self.published: list = []  # see after_publish

    def _staged(self, path: Path, file: bool) -> io.Staged:
        path = Path(path)
        if path not in self._declared or self._declared[path][1] != file:
            raise ValueError(f"{path} is not an output {'file' if file else 'folder'} this stage declared")
        if path not in self.staged:
            self.staged[path] = io.stage_output(path, self._declared[path][0], file=file)
        return self.staged[path]

    def after_publish(self, record) -> None:
        """Run `record()` once the outputs are in place, before the run ends: only for what must read the
        published path itself (its DVC digest for MLflow's dataset inputs, the registered policy's source);
        should it fail, the run ends FAILED with the outputs already published."""
        self.published.append(record)

    def output(self, path: Path) -> Path:
        """The folder to write output `path` into (its temp, published when the stage succeeded)."""
        return self._staged(path, file=False).content

    def write_json(self, path: Path | None, data: dict) -> Path | None:
        """Output file `path` (nothing when None) as sorted, indented JSON, published with its sidecar (kind and
        hash) when the stage succeeded; returns its temp (to log it)."""
        if path is None:
            return None
        staged = self._staged(path, file=True)
        staged.content.write_text(io._canonical(data))
        return staged.content


@contextlib.contextmanager
def stage_run(stage: str, params: dict, experiment: str, upstream: dict[str, Path] | None = None,
              output: Path | None = None, files: dict[Path, str] | None = None,
              outputs: dict[Path, str] | list[tuple[Path, str]] | None = None) -> Iterator[Stage]:
    """One stage execution, in the one order every stage follows:

    1. cheap checks, before any MLflow store is opened or created: every output (`output`, of kind `stage`,
       the folders `outputs` and the files `files`, path -> kind) is a path metaaug may write, apart from the
       inputs; every input (`upstream`: stage name -> its output) matches its marker by content and the
       others by the digests it recorded (each folder hashed once);
    2. the MLflow store and every experiment the stage uses (the splits one too) are usable; the run starts;
    3. the body computes into temps (`Stage.output`, `Stage.write_json`) and logs to the run;
    4. the inputs are still what was verified; the outputs' markers are written and the main output's
       digest tagged; then the outputs are published, each in one rename; the run ends FINISHED.

    Any failure: the temps are removed, every previous output stays, the run ends FAILED, and the error is
    one line. `upstream.<stage>` tags the run that wrote each input (found by its digest).
    """
    if not experiment.strip():  # MLflow would stop with a traceback
        raise MetaaugError("params.yaml: tracking.experiment is empty; expected an MLflow experiment name")
    upstream = {name: p for name, p in (upstream or {}).items() if p is not None}
    pairs = [(p, k) for p, k in [(output, stage), *(outputs.items() if isinstance(outputs, dict) else outputs or [])]
             if p is not None]  # pairs: two outputs given one path are seen
    files = {p: k for p, k in (files or {}).items() if p is not None}
    io.check_outputs(pairs, upstream.values(), files=files.items())
    outputs = dict(pairs)
    digests = io.verify_inputs(upstream)
    uri = tracking_uri()
    check_reachable(uri)  # before importing mlflow, which takes seconds
    check_store(uri)
    with mlflow_errors(uri, experiment, setup=True):
        run = _start_run(uri, stage, experiment, digests, params)
    body = Stage(run, stage, outputs, files, digests)
    mlflow = _import_mlflow()
    try:
        with mlflow_errors(uri, experiment):
            yield body
            if io.verify_inputs(upstream) != digests:
                raise MetaaugError(f"{', '.join(map(str, upstream.values()))}: an input was replaced while "
                                   f"`metaaug {stage}` ran; expected its inputs unchanged until it ends (rerun it)")
            marked = {path: io.finish(s, digests) for path, s in body.staged.items()}
            if output is not None and marked.get(Path(output)):
                mlflow.set_tag(DIGEST_TAG, marked[Path(output)])
        for s in body.staged.values():
            io.publish(s)
        with mlflow_errors(uri, experiment):
            for record in body.published:
                record()
    except BaseException as exc:
        for s in body.staged.values():
            io.discard(s)
        _end_run(mlflow, "FAILED")
        if isinstance(exc, OSError) and body.staged:  # a short write names no file: name the output written last
            raise io._named(exc, list(body.staged.values())[-1].shown) from None
        raise
    with mlflow_errors(uri, experiment):
        mlflow.end_run("FINISHED")


def _start_run(uri: str, stage: str, experiment: str, digests: dict[str, str], params: dict):
    """Open the store, check the stage's experiments, mark this stage's runs of killed processes FAILED, start
    the run with its tags (upstream runs found by the digests of the inputs) and log its params."""
    mlflow = _import_mlflow()
    mlflow.set_tracking_uri(uri)
    with store_lock(uri):  # the first query on a fresh store creates its tables: one process at a time
        client = mlflow.MlflowClient()
        for name in [experiment, *([splits_experiment(experiment)] if stage in SPLIT_STAGES else [])]:
            check_experiment(client, name)
        exp = mlflow.set_experiment(experiment)
    fail_stale_runs(client, exp.experiment_id, stage)
    tags = {STAGE_TAG: stage, PROCESS_TAG: process_tag(), **git_info()}
    tags[PIPELINE_TAG] = pipeline_id(tags["git.commit"])
    for name, digest in digests.items():
        tags[f"upstream.{name}"] = find_run_by_digest(client, exp.experiment_id, name, digest) or "unknown"
    run = mlflow.start_run(run_name=stage, tags=tags)
    try:
        mlflow.log_params(as_params(params))
    except BaseException:
        _end_run(mlflow, "FAILED")
        raise
    return run


def _end_run(mlflow, status: str) -> None:
    """End the active run; where the store refuses even that (locked, full), the next run of the stage marks
    it FAILED (its process is gone: fail_stale_runs), so the first error is the one reported."""
    try:
        mlflow.end_run(status)
    except Exception:  # noqa: BLE001  (reported: the error that made the stage fail)
        pass


SPLIT_STAGES = ("train", "evaluate")  # the stages that use the splits experiment (log_split_runs, accuracies)


def check_experiment(client, name: str) -> None:
    """A soft-deleted experiment (in MLflow's trash) cannot take runs: say so before any work."""
    found = client.get_experiment_by_name(name)
    if found is not None and found.lifecycle_stage == "deleted":
        raise MetaaugError(f"MLflow experiment {name[:80]!r} is deleted (in the trash); expected it restored "
                           f"(`mlflow experiments restore --experiment-id {found.experiment_id}`), purged "
                           "(`mlflow gc`), or another tracking.experiment")


MLFLOW_MODULES = ("mlflow", "sqlalchemy", "requests", "urllib3", "alembic", "sqlite3")


@contextlib.contextmanager
def mlflow_errors(uri: str, experiment: str, setup: bool = False) -> Iterator[None]:
    """Any failure raised by MLflow or the libraries under it becomes one line naming the store and experiment
    (an unknown URI scheme, a deleted experiment, a rejected name, a store that went away; in `setup`, also a
    missing database driver); the stage's own errors pass through."""
    try:
        yield
    except Exception as exc:
        module = type(exc).__module__.split(".")[0]
        ours = module in MLFLOW_MODULES or setup and isinstance(exc, ImportError)
        if isinstance(exc, MetaaugError) or not ours:
            raise
        raise MetaaugError(f"MLflow store {uri}, experiment {experiment[:80]!r}: {_first_line(exc)}; expected "
                           "a working MLflow tracking store (check MLFLOW_TRACKING_URI and tracking.experiment)"
                           ) from None


SQLITE_CAUSE = re.compile(r"\(sqlite3\.\w+\) ([^\n\[(]+)")


def _first_line(exc: BaseException) -> str:
    """The gist of an exception: its type and first non-empty message line, shortened; for a failure of the
    SQLite store, SQLite's own reason ("database is locked", "database or disk is full"), wherever in the
    message or the chain of causes it is (SQLAlchemy's first line is often a hint about autoflush)."""
    for link in (exc, exc.__cause__, exc.__context__):
        found = SQLITE_CAUSE.search(str(link)) if link is not None else None
        if found:
            return f"SQLite: {found.group(1).strip()}"
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    message = getattr(exc, "message", None) if not text else None
    text = (text or str(message or "")).replace("; expected", ", expected")
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def splits_experiment(experiment: str) -> str:
    """Where the arm x split training runs go: beside the stage runs' experiment, not in it, so that
    a pipeline's five stage runs stay on the first page of its experiment (100 nested runs per
    train stage would push them behind "Load more"), while Compare over the split runs, grouped
    by param `arm`, shows the arms' test accuracies side by side."""
    return f"{experiment}-splits"


def _experiment_id(client, name: str) -> str:
    """The id of experiment `name`, created if missing (a concurrent creator is fine)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # another process created it meanwhile
        return client.get_experiment_by_name(name).experiment_id


def _splits_experiment_of(client, train_run_id: str) -> tuple:
    train = client.get_run(train_run_id)
    return train, splits_experiment(client.get_experiment(train.info.experiment_id).name)


def log_split_runs(train_run_id: str, runs: list[dict]) -> None:
    """One run per arm x split in the splits experiment, each with its params, tags, per-epoch curves and
    final figures, logged in batches (MLflow caps a batch at 1000 metrics). A run's start and end are its
    training's (`start_ms`, `end_ms`, epoch milliseconds), so MLflow's Duration column is the training's."""
    mlflow = _import_mlflow()
    from mlflow.entities import Metric, Param as MlflowParam

    client = mlflow.MlflowClient()
    train, name = _splits_experiment_of(client, train_run_id)
    experiment_id = _experiment_id(client, name)
    now = int(time.time() * 1000)
    for r in runs:
        tags = {"mlflow.runName": r["name"], PIPELINE_TAG: train.data.tags.get(PIPELINE_TAG, "unknown"),
                "metaaug.train_run": train_run_id, **r["tags"]}
        run = client.create_run(experiment_id, start_time=r.get("start_ms", now), tags=tags, run_name=r["name"])
        metrics = [Metric(key, float(v), now, step) for key, values in r["curves"].items()
                   for step, v in enumerate(values)]
        metrics += [Metric(key, float(v), now, 0) for key, v in r["final"].items()]
        run_params = [MlflowParam(k, v) for k, v in as_params(r["params"]).items()]
        for start in range(0, max(len(metrics), 1), 1000):
            client.log_batch(run.info.run_id, metrics=metrics[start:start + 1000],
                             params=run_params if start == 0 else [], tags=[])
        client.set_terminated(run.info.run_id, end_time=r.get("end_ms"))


def log_split_accuracies(train_run_id: str, accuracy: dict[tuple[str, int], float]) -> int:
    """Test accuracy (%) onto each arm x split run of a train run; returns how many runs got one (none
    when the train run is unknown: its output was not written by a recorded run)."""
    if train_run_id == "unknown":
        return 0
    mlflow = _import_mlflow()
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    _, name = _splits_experiment_of(client, train_run_id)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return 0
    runs = client.search_runs([experiment.experiment_id], f"tags.`metaaug.train_run` = '{train_run_id}'",
                              max_results=50000)
    now, logged = int(time.time() * 1000), 0
    for run in runs:
        key = (run.data.tags.get("metaaug.arm"), int(run.data.tags.get("metaaug.split", -1)))
        if key in accuracy:
            client.log_batch(run.info.run_id, metrics=[Metric("test_accuracy", float(accuracy[key]), now, 0)])
            logged += 1
    return logged


def name_run(stage: str, facts: dict) -> None:
    """Name the active stage run by what tells its pipeline from another (target data, classes, shots,
    splits, the DVC experiment), and log those facts as params, so runs of two pipelines differ at a glance."""
    mlflow = _import_mlflow()
    experiment = os.environ.get("DVC_EXP_NAME")
    facts = {**facts, **({"dvc.experiment": experiment} if experiment else {})}
    classes = facts["target.classes"]
    shown = ",".join(classes) if len(",".join(classes)) <= 24 else f"{len(classes)} classes"
    name = " · ".join([stage, *([experiment] if experiment else []),
                       f"{facts['target.source']} [{shown}] {facts['target.shots']}-shot × {facts['target.splits']}"])
    mlflow.log_params(as_params(facts))
    mlflow.set_tag("mlflow.runName", name)


def describe_evaluate_run(run, verdict: str) -> None:
    """The evaluate run's description (MLflow's note, shown on its page): the verdict, then links to the
    runs it compared. The train run's arm x split runs (in the splits experiment) carry param `arm`, tag
    `metaaug.train_run` and metric `test_accuracy`, so the search given here selects exactly them for
    MLflow's Compare view."""
    mlflow = _import_mlflow()
    tags, exp = run.data.tags, run.info.experiment_id
    upstream = {k.removeprefix("upstream."): v for k, v in tags.items() if k.startswith("upstream.")}
    train = upstream.get("train", "unknown")
    splits = splits_experiment(mlflow.get_experiment(exp).name)
    lines = [verdict, "", f"Evaluate of pipeline execution `{tags.get(PIPELINE_TAG, 'unknown')}`.", "",
             "Upstream runs: " + ", ".join(f"{stage} [{rid[:8]}](#/experiments/{exp}/runs/{rid})"
                                           for stage, rid in upstream.items() if rid != "unknown") + ".", "",
             f"The arm × split training runs it compared are in experiment `{splits}`: search "
             f"``tags.`metaaug.train_run` = '{train}'``, select them and Compare, grouped by param `arm`: "
             "each carries its `test_accuracy` (%).", "",
             f"Every stage run of this execution: ``tags.`{PIPELINE_TAG}` = '{tags.get(PIPELINE_TAG)}'``."]
    set_description("\n".join(lines))


# The active stage run's logging: the stages call these, never mlflow itself.

def log_metrics(metrics: dict, step: int | None = None) -> None:
    """The numeric leaves of a (nested) dict as metrics of the active run, each key made one MLflow accepts
    (class names go into keys: see metric_key)."""
    _import_mlflow().log_metrics({metric_key(k): v for k, v in as_metrics(metrics).items()}, step=step)


def set_description(markdown: str) -> None:
    """The active run's description (MLflow's note, shown at the top of its page)."""
    _import_mlflow().set_tag("mlflow.note.content", markdown)


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


# Datasets: what each stage read and wrote, under the digest DVC records for it.

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
    mlflow = _import_mlflow()
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    entries = [("input", by, path) for by, path in inputs.items()] + [("output", stage, path) for path in outputs]
    datasets, contexts, tags = [], [], []
    for context, by, path in entries:
        if path is None or not Path(path).exists():
            continue
        with _quiet_mlflow():  # it warns that two registered local sources both take a file URI
            source = resolve_dataset_source(Path(path).resolve().as_uri())
        datasets.append(MetaDataset(source, name=_dataset_name(path), digest=dvc_md5(path)))
        contexts.append(context)
        tags.append({"dvc.stage": by, "dvc.hash": "md5"})
    for attempt in range(3) if datasets else ():
        try:  # a dataset is stored once per experiment: two stages (`dvc queue start -j 2`) logging the same
            mlflow.log_inputs(datasets=datasets, contexts=contexts, tags_list=tags)  # new one may collide
            return
        except Exception as exc:
            if attempt == 2 or type(exc).__module__.split(".")[0] not in MLFLOW_MODULES:
                raise
            time.sleep(0.5)  # then the other's row is committed, and this one links to it


# The policy in MLflow's model registry: a pyfunc model (metaaug/policy_model.py), one version per metatrain.

POLICY_ALIAS = "current"  # moves to the newest version: models:/<name>@current is "the current policy"
POLICY_ARTIFACTS = {"policy": "policy.json", "albumentations": "policy_albumentations.json", "search": "search.json"}
VERDICT_HEADING = "\n\n#### Evaluate's verdict\n\n"  # a version's description: what the policy is, then this
NOT_EVALUATED = "Not evaluated yet: the evaluate stage writes its verdict here."


def _policy_signature():
    """uint8 (N, H, W, C) in, the same out; param `seed`."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    images = Schema([TensorSpec(np.dtype("uint8"), (-1, -1, -1, -1))])
    return ModelSignature(inputs=images, outputs=images, params=ParamSchema([ParamSpec("seed", "long", 0)]))


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """No download progress bars in a stage's log (MLflow's warnings stay: the model logs an input example)."""
    previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous


def register_policy(policy_dir: Path, name: str, description: str) -> str:
    """Log the policy in `policy_dir` (metatrain's output, already written) as a pyfunc model of the active run,
    register it as a new version of model `name`, describe it and move alias `current` to it; returns the
    version. The version is tagged with the run, the pipeline and the DVC digest of `policy_dir`, so it is
    matched with its dvc.lock entry; nothing is written back to the DVC output. A failure is one line naming
    the store and the model (the output stays written: `dvc repro` reruns the stage)."""
    mlflow = _import_mlflow()
    from metaaug import policy_bundle

    artifacts = {key: str(Path(policy_dir) / file) for key, file in POLICY_ARTIFACTS.items()
                 if (Path(policy_dir) / file).is_file()}
    run = mlflow.active_run()
    try:
        with _quiet_mlflow(), tempfile.TemporaryDirectory() as code:  # self-contained: metaaug/policy_bundle.py
            info = mlflow.pyfunc.log_model(
                name="policy_model", python_model=str(policy_bundle.ENTRY), artifacts=artifacts,
                code_paths=[str(policy_bundle.bundle(Path(code)))], pip_requirements=policy_bundle.pip_requirements(),
                signature=_policy_signature(), input_example=policy_bundle.input_example(),
                registered_model_name=name)
        version = str(info.registered_model_version)
        client = mlflow.MlflowClient()
        client.update_model_version(name, version, description=f"{description}{VERDICT_HEADING}{NOT_EVALUATED}")
        for key, value in {"metaaug.run": run.info.run_id, PIPELINE_TAG: run.data.tags.get(PIPELINE_TAG, "unknown"),
                           "dvc.md5": dvc_md5(policy_dir)}.items():
            client.set_model_version_tag(name, version, key, value)
        client.set_registered_model_alias(name, POLICY_ALIAS, version)
    except Exception as exc:
        if type(exc).__module__.split(".")[0] not in MLFLOW_MODULES:
            raise
        raise MetaaugError(f"MLflow store {tracking_uri()}: registering the policy as a version of model {name!r} "
                           f"failed ({_first_line(exc)}); expected a store with a model registry (check "
                           "MLFLOW_TRACKING_URI and tracking.policy_model)") from None
    mlflow.set_tags({"metaaug.policy_model": f"models:/{name}/{version}"})
    return version


def describe_policy_verdict(name: str, metatrain_run_id: str, verdict: str) -> list[str]:
    """Put evaluate's verdict into the description of every version of `name` that metatrain run
    `metatrain_run_id` registered (the policy evaluate judged), replacing an earlier verdict; returns
    the versions updated (none when the run is unknown or registered nothing)."""
    if metatrain_run_id == "unknown":
        return []
    client = _import_mlflow().MlflowClient()
    updated = []
    for version in client.search_model_versions(f"name = '{name}' and run_id = '{metatrain_run_id}'"):
        what = (version.description or "").split(VERDICT_HEADING)[0]
        client.update_model_version(name, version.version, description=f"{what}{VERDICT_HEADING}{verdict}")
        updated.append(str(version.version))
    return updated


def download_registered_policy(uri: str, destination: Path) -> Path:
    """The `policy.json` of a registered model version (`models:/<name>@<alias>` or `models:/<name>/<version>`),
    downloaded into `destination` from the store the stages log to (MLFLOW_TRACKING_URI, else
    sqlite:///mlflow.db in the working directory). MLflow is imported only here: a core install (no
    `pipeline` extra) gets one line saying what to install."""
    try:
        mlflow = _import_mlflow()
    except ImportError:
        raise MetaaugError(f"load_policy({uri!r}): MLflow is not installed; expected `pip install "
                           "\"metaaug[pipeline]\"` (or mlflow) to load a registered policy") from None
    store = tracking_uri()
    check_reachable(store)
    expected = f"a registered model version in {store} (MLFLOW_TRACKING_URI), e.g. models:/metaaug-policy@current"
    with _quiet_mlflow():
        try:  # a client bound to the store for the registry too: never a registry URI set earlier in the process
            client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
            name, _, alias = uri.removeprefix("models:/").partition("@")
            if alias:
                version = client.get_model_version_by_alias(name, alias).version
            else:
                name, _, version = name.rpartition("/")
            where = mlflow.artifacts.download_artifacts(
                artifact_uri=client.get_model_version_download_uri(name, version), dst_path=str(destination),
                tracking_uri=store)
        except Exception as exc:
            if type(exc).__module__.split(".")[0] not in MLFLOW_MODULES:
                raise
            raise MetaaugError(f"load_policy({uri!r}): {_first_line(exc)}; expected {expected}") from None
    policy_file = Path(where) / "artifacts" / POLICY_ARTIFACTS["policy"]
    if not policy_file.is_file():
        raise MetaaugError(f"load_policy({uri!r}): the model has no artifacts/policy.json; expected a policy "
                           "registered by `metaaug metatrain`")
    return policy_file
