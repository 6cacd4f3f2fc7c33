"""End to end: a real git + DVC repo in a temp dir, `dvc repro` with tiny params, MLflow queried after."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, tiny_params
from helpers import STAGES, dvc, make_project, sh
from metaaug.declaration import expanded_stages
from metaaug.cli import main

pytestmark = pytest.mark.slow


def test_dvc_repro_end_to_end(tmp_path, monkeypatch):
    root = make_project(tmp_path / "project", tiny_params())
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the default: sqlite:///mlflow.db at the repo root
    first = dvc(root, "repro")
    assert first.returncode == 0, first.stdout + first.stderr
    assert (root / "data/prepared/manifest.json").exists()
    assert all((root / "models/downstream" / arm / "results.json").exists()
               for arm in ("none", "trivialaugment", "learned"))
    metrics = yaml.safe_load((root / "metrics.json").read_text())
    assert set(metrics) == {"none", "trivialaugment", "learned", "gain", "gain_low", "gain_high"}
    evaluation = json.loads((root / "reports/evaluation.json").read_text())  # every pair; metrics.json: learned's
    assert {"learned-none", "learned-trivialaugment", "trivialaugment-none"} <= set(evaluation["paired"])
    assert evaluation["verdict"].startswith("**Verdict")
    assert "search_cost" not in metrics and "machine" not in metrics  # evaluate's outputs: its DVC inputs alone
    timings = {name: json.loads((root / "timings" / f"{name}.json").read_text())
               for name in ("metatrain", "train@none", "train_learned")}
    assert timings["metatrain"]["search_seconds"] > 0 and timings["train_learned"]["run_seconds"] > 0
    results = subprocess.run([str(Path(sys.executable).parent / "metaaug"), "results"], cwd=root,
                             capture_output=True, text=True)
    assert results.returncode == 0 and "one downstream training run" in results.stdout, results.stderr
    assert (root / "models/policy/policy.json").exists() and (root / "models/policy/policy_albumentations.json").exists()
    assert (root / "data/augmented/images.npy").exists()
    assert metrics["gain_low"] <= metrics["gain"] <= metrics["gain_high"] and evaluation["arms"]["none"]["n"] == 2
    assert metrics["none"] == round(evaluation["arms"]["none"]["mean"], 2)

    assert "(accuracy.png)" in (root / "reports/report.md").read_text()
    shown = json.loads(dvc(root, "metrics", "show", "--json").stdout)  # keyed by revision, "" = workspace
    assert shown[""]["data"] == {"metrics.json": {"data": metrics}}  # wall times are no DVC metric
    table = dvc(root, "metrics", "show").stdout  # plain, as a user types it: one row, readable at 120 columns
    assert max(map(len, table.splitlines())) <= 120, table
    plots = json.loads(dvc(root, "plots", "show", "--json").stdout)
    assert not plots.get("errors"), plots["errors"]
    assert {"accuracy", "learning curves", "plots/confusion/none.csv"} <= set(plots["data"])
    # the rendered accuracy plot: one point per arm x split, in percent, on one panel with a tick at each mean
    accuracy = plots["data"]["accuracy"][0]["content"]
    points = accuracy["data"]["values"]
    assert len(points) == 3 * 2 and all(0 <= float(p["accuracy"]) <= 100 for p in points)
    assert [layer["encoding"]["x"].get("aggregate") for layer in accuracy["layer"]] == [None, "mean"]
    curves = plots["data"]["learning curves"][0]["content"]  # every arm's curve on one panel
    assert {v["arm"] for v in curves["data"]["values"]} == {"none", "trivialaugment", "learned"}
    confusion = plots["data"]["plots/confusion/none.csv"][0]["content"]["data"]["values"]  # counts, not records
    assert sum(int(v["count"]) for v in confusion) == len(json.loads((root / "data/prepared/manifest.json").read_text(
    ))["test"]) * 2
    html = dvc(root, "plots", "show")  # the page renders offline: Vega is in it, nothing from a CDN
    page = (root / "dvc_plots" / "index.html").read_text()
    assert html.returncode == 0 and "vega-embed" in page and "cdn.jsdelivr" not in page

    second = dvc(root, "repro")
    assert second.returncode == 0
    assert "Running stage" not in second.stdout, second.stdout
    status = dvc(root, "status")
    assert "up to date" in status.stdout

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("metaaug")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_stage = {}
    for run in runs:
        by_stage.setdefault(run.data.tags.get("metaaug.stage"), []).append(run)
    assert {s: len(r) for s, r in by_stage.items() if s} == {**dict.fromkeys(STAGES, 1), "train": 2}  # an arm each
    prepare, learner, metatrain, augment, _, learned, evaluate = (by_stage[s][0] for s in STAGES)
    fixed = {run.data.tags["metaaug.arm"]: run for run in by_stage["train"]}
    named = {"prepare": prepare, "learner": learner, "metatrain": metatrain, "augment": augment,
             **{f"train@{arm}": run for arm, run in fixed.items()}, "train_learned": learned, "evaluate": evaluate}
    for run in named.values():
        assert len(run.data.tags["git.commit"]) == 40
        assert run.data.tags["git.dirty"] == "false", run.data.tags  # DVC deleting a stage's own outputs is no edit
    # one `dvc repro`, one pipeline execution id, though dvc.lock changed between stages
    assert len({run.data.tags["metaaug.pipeline"] for run in runs}) == 1
    assert learner.data.tags["upstream.prepare"] == metatrain.data.tags["upstream.prepare"] == prepare.info.run_id
    assert metatrain.data.tags["upstream.learner"] == learner.info.run_id
    assert augment.data.tags["upstream.metatrain"] == metatrain.info.run_id
    for run in fixed.values():  # a fixed arm reads no policy: a new one leaves it as it is
        assert run.data.tags["upstream.learner"] == learner.info.run_id and "upstream.metatrain" not in run.data.tags
    assert learned.data.tags["upstream.metatrain"] == metatrain.info.run_id
    assert learned.data.tags["upstream.augment"] == augment.info.run_id
    assert evaluate.data.tags["upstream.train_learned"] == learned.info.run_id
    assert all(evaluate.data.tags[f"upstream.train.{arm}"] == run.info.run_id for arm, run in fixed.items())
    assert evaluate.data.tags["upstream.prepare"] == prepare.info.run_id
    assert evaluate.data.tags["upstream.metatrain"] == metatrain.info.run_id
    assert prepare.data.params["tasks.shots"] == "5"
    assert evaluate.data.metrics == pytest.approx(metrics)
    assert all("test_accuracy" in c.data.metrics for c in client.search_runs(
        [client.get_experiment_by_name("metaaug-splits").experiment_id]))
    assert None not in by_stage  # the arm x split runs are in their own experiment, not among the stage runs
    children = client.search_runs([client.get_experiment_by_name("metaaug-splits").experiment_id])
    assert len(children) == 3 * 2  # arms x splits
    assert {c.data.tags["metaaug.arm"] for c in children} == {"none", "trivialaugment", "learned"}
    assert all(c.info.end_time - c.info.start_time >= 1000 * c.data.metrics["seconds"] - 5 for c in children)
    history = client.get_metric_history(children[0].info.run_id, "loss")
    assert len(history) == 4  # one point per epoch
    artifacts = {a.path for a in client.list_artifacts(prepare.info.run_id)}
    assert "target_samples.png" in artifacts

    # MLflow datasets: every stage's inputs and outputs, each under the md5 dvc.lock records for its path
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    recorded = {entry["path"]: entry["md5"] for stage in lock.values() for entry in stage.get("outs", [])}
    logged = {(stage, d.dataset.name, {t.key: t.value for t in d.tags}["mlflow.data.context"]): d.dataset.digest
              for stage, run in named.items()
              for d in client.get_run(run.info.run_id).inputs.dataset_inputs}
    assert logged[("prepare", "data/prepared", "output")] == recorded["data/prepared"]
    assert logged[("metatrain", "data/prepared", "input")] == recorded["data/prepared"]
    assert {name for stage, name, context in logged if context == "output"} == set(recorded)
    assert all(digest == recorded[name] for (_, name, _), digest in logged.items())
    assert {(name, context) for stage, name, context in logged if stage == "train@none"} == {
        ("data/prepared", "input"), ("models/learner", "input"), ("models/downstream/none", "output")}
    assert {(name, context) for stage, name, context in logged if stage == "train_learned"} == {
        ("data/prepared", "input"), ("models/learner", "input"), ("models/policy", "input"),
        ("data/augmented", "input"), ("models/downstream/learned", "output")}

    # the registered policy: metatrain's version, alias current, evaluate's verdict in its description
    version = client.get_model_version_by_alias("metaaug-policy", "current")
    assert version.run_id == metatrain.info.run_id and version.tags["dvc.md5"] == recorded["models/policy"]
    assert version.description.endswith(evaluation["verdict"])
    monkeypatch.chdir(root)  # the default store, sqlite:///mlflow.db, as a user in the repository reads it
    import metaaug

    assert metaaug.load_policy("models:/metaaug-policy@current") == metaaug.load_policy(root / "models/policy")


def test_a_fresh_clone_logs_every_stage_and_a_second_repro_runs_nothing(tmp_path, monkeypatch):
    """The README's quick start on a fresh clone (no DVC cache): the committed outputs (metrics.json, reports/)
    reproduce byte for byte, yet evaluate runs, because plots/ is a cached output a clone lacks; so MLflow gets
    every stage run of that execution, evaluate's with its verdict; and a second
    `dvc repro` runs nothing. `metaaug evaluate` by hand in the clone may replace the committed metrics.json
    (its sidecar is committed)."""
    origin = make_project(tmp_path / "origin", tiny_params())
    shutil.copy(REPO / ".gitignore", origin / ".gitignore")  # what the repository commits and what it ignores
    assert dvc(origin, "repro").returncode == 0
    sh("git", "add", "-A", cwd=origin)
    sh("git", "commit", "-qm", "pipeline outputs", cwd=origin)
    tracked = sh("git", "ls-files", cwd=origin).stdout.split()
    assert {"metrics.json", ".metrics.json.metaaug.json", "reports/report.md"} <= set(tracked)
    assert not [path for path in tracked if path.startswith("plots/")]
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(origin), str(clone), cwd=tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    first = dvc(clone, "repro")
    assert first.returncode == 0, first.stdout + first.stderr
    executed = expanded_stages(yaml.safe_load((clone / "dvc.yaml").read_text())["stages"], tiny_params())
    assert all(f"Running stage '{stage}'" in first.stdout for stage in executed), first.stdout
    assert sh("git", "status", "--porcelain", cwd=clone).stdout == ""  # the same bytes as committed
    assert "Running stage" not in dvc(clone, "repro").stdout

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{clone / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("metaaug").experiment_id],
                              filter_string="tags.`metaaug.stage` != ''")
    assert sorted(r.data.tags["metaaug.stage"] for r in runs) == sorted(name.split("@")[0] for name in executed)
    assert len({r.data.tags["metaaug.pipeline"] for r in runs}) == 1
    evaluate = next(r for r in runs if r.data.tags["metaaug.stage"] == "evaluate")
    assert evaluate.data.tags["mlflow.note.content"].startswith("**Verdict") and "gain" in evaluate.data.metrics
    dirty = {r.data.tags["metaaug.stage"]: r.data.tags.get("git.changed") for r in runs
             if r.data.tags["git.dirty"] != "false"}
    assert not dirty, dirty  # a clean clone: DVC deleting and rewriting the stages' own outputs is no edit

    # another method's settings, execution knobs and tracking names rerun nothing; the chosen method's do
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["metatrain"]["cem"]["generations"] += 1
    params["metatrain"]["workers"], params["train"]["workers"], params["tracking"]["experiment"] = 1, 1, "other"
    (clone / "params.yaml").write_text(yaml.safe_dump(params))
    assert "up to date" in dvc(clone, "status").stdout
    params["metatrain"]["race"]["tasks"] += 1
    (clone / "params.yaml").write_text(yaml.safe_dump(params))
    assert "metatrain.race" in dvc(clone, "status").stdout
    rerun = dvc(clone, "repro").stdout  # a new search (its search.json at least) retrains the learned arm alone
    assert "Running stage 'train_learned'" in rerun and "Running stage 'train@" not in rerun, rerun
    sh("git", "checkout", "params.yaml", "dvc.lock", "metrics.json", ".metrics.json.metaaug.json", "reports", cwd=clone)
    assert dvc(clone, "checkout").returncode == 0

    monkeypatch.chdir(clone)
    with pytest.raises(SystemExit) as exit:
        main(["evaluate"])
    assert exit.value.code == 0
