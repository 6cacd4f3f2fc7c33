"""Concurrent experiments: three `dvc exp run --queue` experiments run by `dvc queue start -j 2`, all logging to one
fresh SQLite MLflow store; every run and metric arrives, and the database passes SQLite's integrity check."""

import os
import re
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import tiny_params
from helpers import dvc, make_project, repro_in_process, sh

pytestmark = pytest.mark.slow

# Three experiments that change only what the train stages read, and what they write (train's output is
# deterministic: an experiment that trains the same models leaves evaluate's inputs as they were, and DVC
# rightly skips evaluate): each reruns train_learned and evaluate; only a recipe change (train.epochs) retrains the
# fixed arms (train@<arm>), and the learner trial and the search that use that recipe.
EXPERIMENTS = [{"train.epochs": 5}, {"train.learned_source": "on_the_fly"},
               {"train.epochs": 5, "train.learned_source": "on_the_fly"}]


def processes_in(root: Path) -> list[int]:
    """Ids of the processes working in `root` (queue workers and the experiments they run)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int(proc.name) != os.getpid() and \
                    Path(os.readlink(proc / "cwd")).is_relative_to(root):
                pids.append(int(proc.name))
        except OSError:  # gone, or not ours to inspect
            pass
    return pids


def wait_for_queue(root: Path, n: int, timeout: float) -> dict[str, str]:
    """Poll `dvc queue status` until `n` tasks have finished; task id -> Success or Failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = [line.split() for line in dvc(root, "queue", "status").stdout.splitlines()[1:]]
        done = {row[0]: row[-1] for row in rows if row and row[-1] in ("Success", "Failed")}
        if len(done) >= n:
            return done
        time.sleep(2)
    raise AssertionError(f"queue not done after {timeout} s: {rows}")


@pytest.fixture
def baseline(tmp_path, monkeypatch):
    """A committed project whose stages have run once (in this process, then `dvc commit`), so queued experiments
    that change only train.epochs rerun only train and evaluate."""
    root = make_project(tmp_path / "project", tiny_params())
    monkeypatch.chdir(root)
    repro_in_process(root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "baseline", cwd=root)
    yield root
    dvc(root, "queue", "stop", "--kill")
    for pid in processes_in(root):  # anything the queue left behind
        os.kill(pid, signal.SIGKILL)


def test_queued_experiments_log_every_run_to_one_sqlite_store(baseline, tmp_path, monkeypatch):
    db = tmp_path / "shared" / "mlflow.db"
    db.parent.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")  # fresh: the workers race to create its tables
    for experiment in EXPERIMENTS:
        sets = [arg for key, value in experiment.items() for arg in ("-S", f"{key}={value}")]
        queued = dvc(baseline, "exp", "run", "--queue", *sets)
        assert queued.returncode == 0, queued.stderr
    assert dvc(baseline, "queue", "start", "-j", "2").returncode == 0
    tasks = wait_for_queue(baseline, len(EXPERIMENTS), timeout=600)
    logs = {task: dvc(baseline, "queue", "logs", task).stdout for task in tasks}
    assert set(tasks.values()) == {"Success"}, logs
    ran = Counter(stage for log in logs.values() for stage in re.findall(r"Running stage '([\w@]+)'", log))
    params = tiny_params()
    recipe = sum("train.epochs" in e for e in EXPERIMENTS)
    assert ran["train_learned"] == ran["evaluate"] == len(EXPERIMENTS), ran
    assert {arm: ran[f"train@{arm}"] for arm in params["train"]["arms"]} == dict.fromkeys(params["train"]["arms"],
                                                                                         recipe), ran

    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id for name in
                               ("metaaug", "metaaug-splits")], max_results=1000)
    assert all(run.info.status == "FINISHED" for run in runs)
    stages = {}
    for run in runs:
        stages.setdefault(run.data.tags.get("metaaug.stage", "child"), []).append(run)
    expected = {stage: n for stage, n in ran.items() if "@" not in stage}
    expected["train"] = sum(n for stage, n in ran.items() if stage.startswith("train@"))
    trained = stages["train"] + stages["train_learned"]  # one run per arm, a child per split
    assert {stage: len(found) for stage, found in stages.items()} == {
        **expected, "child": len(trained) * params["tasks"]["splits"]}
    settings = {(int(r.data.params["train.epochs"]), r.data.params["train.learned_source"])
                for r in stages["train_learned"]}
    assert settings == {(e.get("train.epochs", params["train"]["epochs"]), e.get("train.learned_source", "augmented"))
                        for e in EXPERIMENTS}
    for train in trained:
        children = [c for c in stages["child"] if c.data.tags["metaaug.train_run"] == train.info.run_id]
        assert len(children) == params["tasks"]["splits"]
        for child in children:
            epochs = int(train.data.params["train.epochs"])
            assert len(client.get_metric_history(child.info.run_id, "loss")) == epochs
    for learned in stages["train_learned"]:
        evaluate = [e for e in stages["evaluate"] if e.data.tags["upstream.train_learned"] == learned.info.run_id]
        assert len(evaluate) == 1 and "gain" in evaluate[0].data.metrics
