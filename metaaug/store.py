"""The MLflow store the stage runs go to: where it is (MLFLOW_TRACKING_URI), whether it answers and can
be written, a lock beside the SQLite file while a fresh store gets its tables, experiments looked up or
created, and MLflow's own failures and chatter turned into one line. mlflow is imported only here.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import socket
import sqlite3
import stat
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

from metaaug.errors import MetaaugError

STORE_FILE = "mlflow.db"  # the default store: this file at the project root, its artifacts in mlruns/ beside it
LOCK_WAIT_S = 15  # how long a locked SQLite store is waited for
# MLflow 3's experiment kind: the UI opens a model-development experiment on its runs table (unset, it guesses,
# and an experiment with no traces opens on the GenAI overview)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def project_root() -> Path | None:
    """The project the stages belong to: DVC_ROOT, which DVC sets for every stage and, in a queued or `--temp`
    experiment, points at the parent repository (not the temporary copy, which DVC deletes); else the nearest
    folder above the working directory holding `.dvc/`; None outside any DVC project."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path.cwd().resolve()
    return next((d for d in (here, *here.parents) if (d / ".dvc").is_dir()), None)


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else `mlflow.db` at the project root (see project_root), an absolute path, so
    a run in DVC's temporary copy logs to the repository's store; outside a project, the working directory's."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(project_root() or Path.cwd().resolve()) / STORE_FILE}"


def registry_uri() -> str:
    """The one model registry the writer (metatrain, evaluate) and every reader (load_policy, and
    mlflow.pyfunc, which reads the same variable) use: MLFLOW_REGISTRY_URI if set, else the tracking store."""
    return os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri()


def existing_store(uri: str, what: str) -> str:
    """For a reader: `uri`, unless it is a SQLite file that does not exist (MLflow would create an empty one
    in its place and then find nothing): one line saying where the store was looked for."""
    db = _sqlite_path(uri)
    if db is not None and not db.is_file():
        where = ("MLFLOW_TRACKING_URI or MLFLOW_REGISTRY_URI" if os.environ.get("MLFLOW_TRACKING_URI")
                 or os.environ.get("MLFLOW_REGISTRY_URI") else
                 f"the project root {project_root()}" if project_root() else
                 f"{Path.cwd()}, which is inside no DVC project")
        raise MetaaugError(f"{what}: no MLflow store at {db} (from {where}); expected MLFLOW_TRACKING_URI set "
                           "to the store the stages log to (e.g. sqlite:////path/to/repo/mlflow.db), or to run "
                           "inside the project")
    return uri


def artifact_location(uri: str) -> str | None:
    """Where a new experiment's artifacts go: beside a SQLite store, `mlruns/` next to its file (an absolute
    URI, never `./mlruns` of whatever folder the stage ran in); for a server, None: its own artifact root."""
    db = _sqlite_path(uri)
    return (db.parent / "mlruns").as_uri() if db is not None else None


def import_mlflow():
    """mlflow, imported on first use (it takes seconds), failing fast on an unreachable server instead of
    retrying for minutes."""
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
    expected = "a running `mlflow server` or MLFLOW_TRACKING_URI unset for the project's mlflow.db"
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


LOCK_TIMEOUT_S = 60  # how long the store lock is waited for before one line names its holder
HOLDER_BYTES = 128  # the holder's record in the lock file


def lock_path(db: Path) -> Path:
    """The store lock's file: beside the SQLite file (`mlflow.db.lock`), where only those who may write the
    store can create it, never at a predictable name in a shared temp folder."""
    return db.with_name(db.name + ".lock")


@contextlib.contextmanager
def store_lock(uri: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """For a SQLite store, hold a lock while MLflow creates or upgrades its tables.

    Processes that open one fresh store at once (`dvc queue start -j 2`) would each create the tables, and
    all but one would stop with "table ... already exists". The lock lives with what it protects (see
    lock_path), is opened without following a symbolic link (O_NOFOLLOW: nobody redirects where it is
    created), and is waited for at most `timeout` seconds: then one line names the process holding it.
    """
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    if not db.parent.is_dir():
        raise MetaaugError(f"MLFLOW_TRACKING_URI={uri}: folder {db.parent} does not exist; expected an existing "
                           "folder for the SQLite file")
    import fcntl

    path = lock_path(db)
    fd = _open_lock(path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the file is closed
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, HOLDER_BYTES, 0).decode(errors="replace").strip() or "unknown"
                    raise MetaaugError(f"{path}: the MLflow store's lock is held by another process ({holder}) "
                                       f"for over {timeout:g} s; expected it free (a lock ends with its process: "
                                       "wait for that one, or end it)") from None
                time.sleep(0.05)
        with contextlib.suppress(OSError):  # a lock another user created is only readable: holder unknown
            holder = f"pid {os.getpid()} on {socket.gethostname()}"[:HOLDER_BYTES - 1]  # fixed width: no
            os.pwrite(fd, (holder.ljust(HOLDER_BYTES - 1) + "\n").encode(), 0)  # truncate (8 ms on ext4)
        yield
    finally:
        os.close(fd)


def _open_lock(path: Path) -> int:
    """The lock file's descriptor, created if missing; a symbolic link (or anything but a plain file) there is
    refused, never followed."""
    flags = os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        try:
            fd = os.open(path, flags | os.O_RDWR, 0o666)
        except PermissionError:  # another user's lock file: reading is enough to flock it
            fd = os.open(path, flags | os.O_RDONLY)
    except OSError as exc:
        what = "is a symbolic link" if exc.errno == errno.ELOOP else f"cannot be opened ({exc.strerror})"
        raise MetaaugError(f"{path}: the MLflow store's lock file {what}; expected a plain file beside the "
                           "store that this user may open (or none)") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise MetaaugError(f"{path}: the MLflow store's lock file is not a plain file; expected a plain file "
                           "beside the store (or none)")
    return fd


def check_experiment(client, name: str) -> None:
    """A soft-deleted experiment (in MLflow's trash) cannot take runs: say so before any work."""
    found = client.get_experiment_by_name(name)
    if found is not None and found.lifecycle_stage == "deleted":
        raise MetaaugError(f"MLflow experiment {name[:80]!r} is deleted (in the trash); expected it restored "
                           f"(`mlflow experiments restore --experiment-id {found.experiment_id}`), purged "
                           "(`mlflow gc`), or another tracking.experiment")


MLFLOW_MODULES = ("mlflow", "sqlalchemy", "requests", "urllib3", "alembic", "sqlite3")


def from_mlflow(exc: BaseException) -> bool:
    """Whether `exc` was raised by MLflow or a library under it (not by metaaug or the stage's own code)."""
    return type(exc).__module__.split(".")[0] in MLFLOW_MODULES


@contextlib.contextmanager
def mlflow_errors(uri: str, experiment: str, setup: bool = False) -> Iterator[None]:
    """Any failure raised by MLflow or the libraries under it becomes one line naming the store and experiment
    (an unknown URI scheme, a deleted experiment, a rejected name, a store that went away; in `setup`, also a
    missing database driver); the stage's own errors pass through."""
    try:
        yield
    except Exception as exc:
        ours = from_mlflow(exc) or setup and isinstance(exc, ImportError)
        if isinstance(exc, MetaaugError) or not ours:
            raise
        raise MetaaugError(f"MLflow store {uri}, experiment {experiment[:80]!r}: {first_line(exc)}; expected "
                           "a working MLflow tracking store (check MLFLOW_TRACKING_URI and tracking.experiment)"
                           ) from None


SQLITE_CAUSE = re.compile(r"\(sqlite3\.\w+\) ([^\n\[(]+)")


def first_line(exc: BaseException) -> str:
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


def check_artifact_location(experiment) -> None:
    """An experiment whose artifacts go inside DVC's temporary folder (`.dvc/tmp`: a queued experiment's copy,
    deleted after it ran; made by an older metaaug or by hand with a relative location) would lose every
    artifact and leave registered versions pointing at nothing: refused in one line."""
    import urllib.parse

    location, root = experiment.artifact_location or "", project_root()
    parsed = urllib.parse.urlparse(location)
    if root is None or parsed.scheme not in ("", "file"):
        return
    if Path(parsed.path).resolve().is_relative_to(root / ".dvc" / "tmp"):
        raise MetaaugError(f"MLflow experiment {experiment.name[:80]!r} keeps its artifacts at {location}, inside "
                           "DVC's temporary folder, which DVC deletes; expected another tracking.experiment (metaaug "
                           "creates it beside the store), or this one deleted and purged (`mlflow gc`)")


def ensure_experiment(client, name: str) -> str:
    """The id of experiment `name`, created if missing (a concurrent creator is fine) with an explicit artifact
    location (artifact_location) and marked as model development (EXPERIMENT_KIND); an experiment made
    before, or by hand, gets the kind too unless it has one."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location(tracking_uri()),
                                            tags=EXPERIMENT_KIND)
        except MlflowException:  # another process created it meanwhile
            found = client.get_experiment_by_name(name)
    check_artifact_location(found)
    for key, value in EXPERIMENT_KIND.items():
        if key not in found.tags:
            client.set_experiment_tag(found.experiment_id, key, value)
    return found.experiment_id


@contextlib.contextmanager
def quiet_mlflow() -> Iterator[None]:
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


