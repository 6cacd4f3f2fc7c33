"""The stage runner: every stage execution is one MLflow run, in the one order every stage follows.

Each run is tagged with the stage name, the git commit and dirty flag, the pipeline execution, the
process running it, and the run ids of the upstream stages whose outputs it read. Outputs stay
byte-deterministic (no run id is written into a DVC out): each run is tagged with the digest of the
output it wrote (the SHA-256 of its marker, which holds every file's hash), and a downstream stage finds
its upstream run by the digest of what it read. `stage_run`: checks, MLflow, compute into temps, publish
once the run recorded them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from metaaug import ownership, publish
from metaaug.datasets import log_datasets
from metaaug.declaration import Declaration
from metaaug.errors import MetaaugError
from metaaug.files import canonical, read_json
from metaaug.store import (check_experiment, check_reachable, check_store, ensure_experiment, import_mlflow,
                           mlflow_errors, project_root, store_lock, tracking_uri)
from metaaug.tracking import PIPELINE_TAG, as_params, name_run, splits_experiment

STAGE_TAG = "metaaug.stage"
DIGEST_TAG = "metaaug.output_digest"
PROCESS_TAG = "metaaug.process"  # host:pid:start time of the process running the stage (see fail_stale_runs)
PROJECT_TAG = "metaaug.project"  # hash of host and project root: whose pipeline a run belongs to (see project_id)


def project_id() -> str:
    """The project a run belongs to: this host and the project root (DVC_ROOT: the parent repository, also for
    a queued or `--temp` experiment). Two projects sharing one store never take each other's runs as upstream,
    even when their outputs are byte-identical (two people running the defaults). A hash: a path may hold
    quotes, which a search filter cannot."""
    where = f"{socket.gethostname()}:{project_root() or Path.cwd().resolve()}"
    return hashlib.sha256(where.encode()).hexdigest()[:16]


def process_tag() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{publish.process_start(pid)}"


def _process_gone(tag: str) -> bool:
    """Whether the process a PROCESS_TAG names has ended (on this host; another host's is never judged)."""
    try:
        host, pid, start = tag.rsplit(":", 2)
        pid = int(pid)
    except ValueError:
        return False
    if host != socket.gethostname():
        return False
    return not publish.process_alive(pid) or (start != "" and publish.process_start(pid) not in ("", start))


def fail_stale_runs(client, experiment_id: str, stage: str) -> list[str]:
    """Mark FAILED the RUNNING runs of `stage` whose process is gone (killed, e.g. SIGKILL or power loss)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{STAGE_TAG}` = '{stage}' and "
                                                             "attributes.status = 'RUNNING'", max_results=1000)
    stale = [r.info.run_id for r in runs if _process_gone(r.data.tags.get(PROCESS_TAG, ""))]
    for run_id in stale:
        client.set_terminated(run_id, "FAILED")
    return stale


def git(*args: str) -> str:
    """Output of a git command in the working directory; empty when it fails (not a repository, no git)."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=30)
    except OSError:  # git is not installed: the runs carry git.commit none, as outside a repository
        return ""
    return out.stdout.rstrip() if out.returncode == 0 else ""  # leading blanks kept: `status --porcelain` columns


def git_info(outputs: list[Path] = ()) -> dict[str, str]:
    """The commit of the working directory and whether it has uncommitted changes (the first ten changed paths
    in tag git.changed), other than to the stage's own outputs (`outputs`, with their sidecars): `dvc repro`
    deletes a stage's outputs before running it, so a git-tracked output (metrics.json) is missing on a clean
    tree while its stage runs."""
    commit = git("rev-parse", "HEAD") or "none"
    own = {p.resolve() for out in outputs for p in (Path(out), ownership.sidecar(Path(out)))}
    root = Path(git("rev-parse", "--show-toplevel") or ".")  # porcelain paths are relative to it
    changed = [(root / line[3:].split(" -> ")[-1].strip('"')).resolve()
               for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    dirty = [p for p in changed if not any(p == o or o in p.parents for o in own)]
    shown = ", ".join(os.path.relpath(p, root) for p in dirty[:10]) + (", ..." if len(dirty) > 10 else "")
    return {"git.commit": commit, "git.dirty": "true" if dirty else "false",
            **({"git.changed": shown} if dirty else {})}


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


def find_run_by_digest(client, experiment_id: str, stage: str, digest: str) -> str | None:
    """The newest run of `stage` (`train.<arm>`: of train) of this project (PROJECT_TAG) whose outputs had
    `digest`; None when none is recorded."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{STAGE_TAG}` = '{stage.partition('.')[0]}' and tags.`{DIGEST_TAG}` = '{digest}' and "
                      f"tags.`{PROJECT_TAG}` = '{project_id()}'",
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
        self.staged: dict[Path, publish.Staged] = {}
        self.published: list = []  # see after_publish
        self.headline: str | None = None  # what opens the run's name (evaluate: the winner; tracking.name_run)

    def _staged(self, path: Path, file: bool) -> publish.Staged:
        path = Path(path)
        if path not in self._declared or self._declared[path][1] != file:
            raise ValueError(f"{path} is not an output {'file' if file else 'folder'} this stage declared")
        if path not in self.staged:
            self.staged[path] = publish.stage_output(path, self._declared[path][0], file=file)
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
        staged.content.write_text(canonical(data))
        return staged.content


@contextlib.contextmanager
def stage_run(declaration: Declaration, params: dict, experiment: str,
              paths: dict[str, Path | None]) -> Iterator[Stage]:
    """One execution of the stage `declaration` declares, in the one order every stage follows:

    1. cheap checks, before any MLflow store is opened or created: every output the declaration names
       (`paths`: its option -> the path given; None leaves that input or output out) is a path metaaug may
       write, apart from the inputs; every input matches its marker by content and the others by the
       digests it recorded (each folder hashed once);
    2. the MLflow store and every experiment the stage uses (the splits one too) are usable; the run starts,
       tagged (stage, git, pipeline, process, the upstream runs) with `params` logged;
    3. the body computes into temps (`Stage.output`, `Stage.write_json`) and logs to the run;
    4. the run is named by its pipeline (prepare's manifest); the inputs are still what was verified; the
       outputs' markers are written and the main output's digest tagged; the outputs are published, each in
       one rename; the inputs and outputs are logged as MLflow datasets, then the body's `after_publish`
       hooks run (the registry); the run ends FINISHED.

    Any failure: the temps are removed, every previous output stays, the run ends FAILED, and the error is
    one line. `upstream.<stage>` tags the run that wrote each input (found by its digest).
    """
    if not experiment.strip():  # MLflow would stop with a traceback
        raise MetaaugError("params.yaml: tracking.experiment is empty; expected an MLflow experiment name")
    upstream, outputs, files = declared_paths(declaration, paths)
    ownership.check_outputs(outputs, upstream.values(), files=files.items())
    digests = ownership.verify_inputs(upstream)
    borrowed = ownership.borrowed(upstream, digests)  # e.g. a policy searched on other data: said and tagged
    for key in borrowed:
        name, _, of = key.split(".")
        print(f"note: {upstream[name]} was made from another {of} output than {upstream[of]}; it is used as "
              f"given (tag metaaug.{key})", file=sys.stderr)
    uri = tracking_uri()
    check_reachable(uri)  # before importing mlflow, which takes seconds
    check_store(uri)
    written = [p for p, _ in outputs] + list(files)
    with mlflow_errors(uri, experiment, setup=True):
        run = _start_run(uri, declaration, experiment, digests, params, borrowed, written)
    body = Stage(run, declaration.name, dict(outputs), files, digests)
    main = paths.get(declaration.main) if declaration.main else None
    mlflow = import_mlflow()
    try:
        with mlflow_errors(uri, experiment):
            yield body
            name_run(declaration.name, pipeline_facts(_manifest(upstream, body, main)), body.headline)
            if ownership.verify_inputs(upstream) != digests:
                raise MetaaugError(f"{', '.join(map(str, upstream.values()))}: an input was replaced while "
                                   f"`metaaug {declaration.name}` ran; expected its inputs unchanged until it "
                                   "ends (rerun it)")
            marked = {path: publish.finish(s, digests) for path, s in body.staged.items()}
            if main is not None and marked.get(Path(main)):
                mlflow.set_tag(DIGEST_TAG, marked[Path(main)])
                _stamp_timings(body, marked[Path(main)])
        for s in body.staged.values():
            publish.publish(s)
        with mlflow_errors(uri, experiment):
            log_datasets(declaration.name, upstream, [p for p, _ in outputs] + [p for p, k in files.items()
                                                                              if not k.endswith(".timing")])
            for record in body.published:
                record()
    except BaseException as exc:
        for s in body.staged.values():
            publish.discard(s)
        _end_run(mlflow, "FAILED")
        if isinstance(exc, OSError) and body.staged:  # a short write names no file: name the output written last
            raise publish.named_error(exc, list(body.staged.values())[-1].shown) from None
        raise
    with mlflow_errors(uri, experiment):
        mlflow.end_run("FINISHED")


def _stamp_timings(body: Stage, digest: str) -> None:
    """Write into the stage's wall-time file the digest of the output it timed: `metaaug results` shows a cost
    only beside the outputs evaluate compared (their digests are in evaluation.json's `inputs`). Timings are
    no DVC output, so this digest, unlike an MLflow run id, never keeps an output from reproducing."""
    for staged in body.staged.values():
        if staged.file and staged.kind == f"{body.stage}.timing":
            doc = json.loads(staged.content.read_text())
            staged.content.write_text(canonical({**doc, "output_digest": digest}))


def declared_paths(declaration: Declaration, paths: dict[str, Path | None]):
    """The given paths by what the declaration makes of them: the inputs (upstream stage -> path), the output
    folders (a list of path, kind pairs: two outputs given one path are seen) and the output files (path ->
    kind, the wall-time file among them). A path given as None is no input or output of this execution; an
    input given as a dict (item -> path) is one output per item of a matrix stage, named `<stage>.<item>`."""
    unknown = set(paths) - {*declaration.inputs, *declaration.outputs, "timing"}
    if unknown:  # a programming error: the stage passed a path its declaration does not name
        raise MetaaugError(f"stage {declaration.name}: {sorted(unknown)} are not declared; expected the "
                           f"options of its declaration ({sorted({*declaration.inputs, *declaration.outputs})})")
    upstream = {}
    for opt, (stage, _) in declaration.inputs.items():
        given = paths.get(opt)
        if isinstance(given, dict):  # one output per item of a matrix stage (train.<arm>)
            upstream.update({f"{stage}.{item}": Path(p) for item, p in given.items()})
        elif given is not None:
            upstream[stage] = Path(given)
    outputs = [(Path(paths[opt]), out.kind) for opt, out in declaration.outputs.items()
               if not out.file and paths.get(opt) is not None]
    files = {Path(paths[opt]): out.kind for opt, out in declaration.outputs.items()
             if out.file and paths.get(opt) is not None}
    if paths.get("timing") is not None:
        files[Path(paths["timing"])] = f"{declaration.name}.timing"
    return upstream, outputs, files


def _manifest(upstream: dict[str, Path], body: Stage, main: Path | None) -> dict:
    """prepare's manifest, which names the pipeline: from its output, read (prepare) or just written."""
    where = upstream.get("prepare") or (body.staged[Path(main)].content if main is not None else None)
    return read_json(Path(where) / "manifest.json")


def pipeline_facts(manifest: dict) -> dict:
    """What tells one pipeline from another, from prepare's manifest: target data and classes, shots, splits."""
    target = manifest["target"]
    return {"target.source": target["source"], "target.classes": list(target["classes"]),
            "target.shots": target["shots"], "target.splits": len(manifest["splits"]),
            "meta.source": manifest["meta"]["source"]}


def _start_run(uri: str, declaration: Declaration, experiment: str, digests: dict[str, str], params: dict,
               borrowed: dict[str, str], written: list[Path]):
    """Open the store, check the stage's experiments, mark this stage's runs of killed processes FAILED, start
    the run with its tags (upstream runs found by the digests of the inputs) and log its params."""
    mlflow = import_mlflow()
    mlflow.set_tracking_uri(uri)
    with store_lock(uri):  # the first query on a fresh store creates its tables: one process at a time
        client = mlflow.MlflowClient()
        for name in [experiment, *([splits_experiment(experiment)] if declaration.splits else [])]:
            check_experiment(client, name)
        exp = mlflow.set_experiment(experiment_id=ensure_experiment(client, experiment))
    stage = declaration.name
    fail_stale_runs(client, exp.experiment_id, stage)
    tags = {STAGE_TAG: stage, PROCESS_TAG: process_tag(), PROJECT_TAG: project_id(), **git_info(written)}
    tags[PIPELINE_TAG] = pipeline_id(tags["git.commit"])
    tags.update({f"metaaug.{key}": digest for key, digest in borrowed.items()})
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
