"""Logging to MLflow: what the stages write into their active run (metrics, params, tags, figures,
artifacts, its name and description) and the arm x split training runs of the splits experiment.
The stages call these, never mlflow itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

from metaaug.store import ensure_experiment, import_mlflow

PIPELINE_TAG = "metaaug.pipeline"  # one pipeline execution: see runner.pipeline_id
EVALUATE_RUN_TAG = "metaaug.evaluate_run"  # on an arm x split run: the newest evaluate run that compared it
MAX_KEY = 250  # MLflow's limit on a metric, param or tag key


def metric_key(name: str) -> str:
    """`name` as a key MLflow accepts whatever class names went into it: each character other than a letter,
    digit, `_`, `-`, `.` or space becomes `_`; over MLflow's length limit, the end is a hash of the whole."""
    key = re.sub(r"[^\w.\- ]", "_", name)
    if len(key) > MAX_KEY:
        key = key[:MAX_KEY - 13] + "-" + hashlib.sha256(name.encode()).hexdigest()[:12]
    return key


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


def splits_experiment(experiment: str) -> str:
    """Where the arm x split training runs go: beside the stage runs' experiment, not in it, so that
    a pipeline's five stage runs stay on the first page of its experiment (100 nested runs per
    train stage would push them behind "Load more"), while Compare over the split runs, grouped
    by param `arm`, shows the arms' test accuracies side by side."""
    return f"{experiment}-splits"


def _splits_experiment_of(client, train_run_id: str) -> tuple:
    train = client.get_run(train_run_id)
    return train, splits_experiment(client.get_experiment(train.info.experiment_id).name)


def log_split_runs(train_run_id: str, runs: list[dict]) -> None:
    """One run per arm x split in the splits experiment, each with its params, tags, per-epoch curves and
    final figures, logged in batches (MLflow caps a batch at 1000 metrics). A run's start and end are its
    training's (`start_ms`, `end_ms`, epoch milliseconds), so MLflow's Duration column is the training's."""
    mlflow = import_mlflow()
    from mlflow.entities import Metric, Param as MlflowParam

    client = mlflow.MlflowClient()
    train, name = _splits_experiment_of(client, train_run_id)
    experiment_id = ensure_experiment(client, name)
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


def log_split_accuracies(train_run_id: str, accuracy: dict[tuple[str, int], float], evaluate_run_id: str) -> int:
    """Test accuracy (%) onto each arm x split run of a train run, tagged with the (newest) evaluate run that
    compared it; returns how many runs got one (none when the train run is unknown: its output was not
    written by a recorded run)."""
    if train_run_id == "unknown":
        return 0
    mlflow = import_mlflow()
    from mlflow.entities import Metric, RunTag

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
            client.log_batch(run.info.run_id, metrics=[Metric("test_accuracy", float(accuracy[key]), now, 0)],
                             tags=[RunTag(EVALUATE_RUN_TAG, evaluate_run_id)])
            logged += 1
    return logged


def winner(numbers: dict[str, float], best: str | None) -> str:
    """Which arm won, in a few words, from the headline numbers (stats.headline) and the best fixed arm: learned
    against `best` by the gain's 95 % CI (a tie when it includes 0), else the arm with the highest mean."""
    if "gain" not in numbers or best is None:
        arms = {k: v for k, v in numbers.items() if not k.startswith("gain")}
        top = max(arms, key=arms.get)
        return f"{top} best, {arms[top]:.2f} %"
    gain = f"{numbers['gain']:+.2f} [{numbers['gain_low']:+.2f}, {numbers['gain_high']:+.2f}] pts"
    if numbers["gain_low"] > 0:
        return f"learned beats {best}, {gain}"
    if numbers["gain_high"] < 0:
        return f"{best} beats learned, {gain}"
    return f"learned ties {best}, {gain}"


def name_run(stage: str, facts: dict, headline: str | None = None) -> None:
    """Name the active stage run by what tells its pipeline from another (target data, classes, shots,
    splits, the DVC experiment), and log those facts as params, so runs of two pipelines differ at a glance.
    A `headline` (evaluate: which arm won, see winner; train: the arm) opens the name: the runs table shows
    the answer in its first column, with no column to configure."""
    mlflow = import_mlflow()
    experiment = os.environ.get("DVC_EXP_NAME")
    facts = {**facts, **({"dvc.experiment": experiment} if experiment else {})}
    classes = facts["target.classes"]
    shown = ",".join(classes) if len(",".join(classes)) <= 24 else f"{len(classes)} classes"
    name = " · ".join([f"{stage}: {headline}" if headline else stage, *([experiment] if experiment else []),
                       f"{facts['target.source']} [{shown}] {facts['target.shots']}-shot × {facts['target.splits']}"])
    mlflow.log_params(as_params(facts))
    mlflow.set_tags({"mlflow.runName": name})


def describe_evaluate_run(run, verdict: str) -> None:
    """The evaluate run's description (MLflow's note, shown on its page): the verdict, then links to the
    runs it compared. The train run's arm x split runs (in the splits experiment) carry param `arm`, tag
    `metaaug.train_run` and metric `test_accuracy`, so the search given here selects exactly them for
    MLflow's Compare view."""
    mlflow = import_mlflow()
    tags, exp = run.data.tags, run.info.experiment_id
    upstream = {k.removeprefix("upstream."): v for k, v in tags.items() if k.startswith("upstream.")}
    splits = splits_experiment(mlflow.get_experiment(exp).name)
    lines = [verdict, "", f"Evaluate of pipeline execution `{tags.get(PIPELINE_TAG, 'unknown')}`.", "",
             "Upstream runs: " + ", ".join(f"{stage} [{rid[:8]}](#/experiments/{exp}/runs/{rid})"
                                           for stage, rid in upstream.items() if rid != "unknown") + ".", "",
             f"The arm × split training runs it compared are in experiment `{splits}`: search "
             f"``tags.`{EVALUATE_RUN_TAG}` = '{run.info.run_id}'``, select them and Compare, grouped by param `arm`: "
             "each carries its `test_accuracy` (%).", "",
             f"Every stage run of this execution: ``tags.`{PIPELINE_TAG}` = '{tags.get(PIPELINE_TAG)}'``."]
    set_description("\n".join(lines))


# The active stage run's logging: the stages call these, never mlflow itself.

def log_metrics(metrics: dict, step: int | None = None) -> None:
    """The numeric leaves of a (nested) dict as metrics of the active run, each key made one MLflow accepts
    (class names go into keys: see metric_key)."""
    import_mlflow().log_metrics({metric_key(k): v for k, v in as_metrics(metrics).items()}, step=step)


def set_description(markdown: str) -> None:
    """The active run's description (MLflow's note, shown at the top of its page)."""
    import_mlflow().set_tag("mlflow.note.content", markdown)


def set_tags(tags: dict[str, str]) -> None:
    import_mlflow().set_tags(tags)


def log_figure(figure, name: str) -> None:
    import_mlflow().log_figure(figure, name)


def log_dict(data: dict, name: str) -> None:
    import_mlflow().log_dict(data, name)


def log_artifacts(path: Path, artifact_path: str | None = None) -> None:
    """A file or every file of a directory, under `artifact_path` of the active run."""
    mlflow = import_mlflow()
    if Path(path).is_dir():
        mlflow.log_artifacts(str(path), artifact_path)
    else:
        mlflow.log_artifact(str(path), artifact_path)


def active_run() -> tuple[str | None, dict[str, str]]:
    """The id and stored tags of the run this process logs to (None and {} outside a stage): the run a timing
    describes, and the upstream runs an evaluation read (metaaug.timing, metaaug.report)."""
    mlflow = import_mlflow()
    run = mlflow.active_run()
    if run is None:
        return None, {}
    return run.info.run_id, mlflow.MlflowClient().get_run(run.info.run_id).data.tags
