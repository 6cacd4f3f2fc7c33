"""The evaluate report: markdown with working PNG links, logged to MLflow, never half-written."""

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import tiny_config
from helpers import dvc_stage_name, run_pipeline
from metaaug.errors import MetaaugError
from metaaug.files import read_json
from metaaug.stages import evaluate


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """The tiny pipeline run once through the stage functions, into its own MLflow store."""
    root = tmp_path_factory.mktemp("pipeline")
    params = tiny_config(**{"metatrain.workers": 1})  # no scoring processes to start: seconds saved
    d = {name: root / name for name in ("prepared", "learner", "policy", "augmented", "downstream", "plots", "reports")}
    d["metrics"] = root / "metrics.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)  # outside the repo (edited by others meanwhile): no git commit, one pipeline id
        metrics = run_pipeline(params, d, root / "timings")
    return {**d, "root": root, "params": params, "metrics": metrics}


def test_results_shows_the_cost_timed_with_the_outputs_it_evaluated(pipeline):
    """The timings name the digests of the outputs they timed, evaluation.json those it compared: they match, so
    `metaaug results` shows the cost; once metatrain's timing describes another output, it says why not."""
    evaluation, timings = pipeline["reports"] / "evaluation.json", pipeline["root"] / "timings"
    fixed = {f"train.{arm}" for arm in pipeline["params"].train.arms}
    assert set(json.loads(evaluation.read_text())["inputs"]) == {"prepare", "metatrain", "train_learned", *fixed}
    done = subprocess.run([sys.executable, "-m", "metaaug", "results", "--evaluation", str(evaluation),
                           "--timings", str(timings)], capture_output=True, text=True)
    assert done.returncode == 0 and "× one downstream training run" in done.stdout, done.stderr
    other = pipeline["root"] / "other-timings"
    shutil.copytree(timings, other)
    doc = json.loads((other / "metatrain.json").read_text())
    (other / "metatrain.json").write_text(json.dumps({**doc, "output_digest": "0" * 64}))
    done = subprocess.run([sys.executable, "-m", "metaaug", "results", "--evaluation", str(evaluation),
                           "--timings", str(other)], capture_output=True, text=True)
    assert done.returncode == 0 and "timed another metatrain output" in done.stdout, done.stdout


def test_report_links_every_png_and_each_is_a_valid_image(pipeline):
    reports = pipeline["reports"]
    text = (reports / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert set(links) == {p.name for p in reports.glob("*.png")}
    assert set(links) == {"accuracy.png", "learning_curves.png", "policy.png", "samples.png", "confusion.png"}
    for name in links:
        assert not Path(name).is_absolute() and "/" not in name  # relative: the directory renders on its own
        with Image.open(reports / name) as image:
            image.verify()
            assert image.format == "PNG" and min(image.size) >= 100
    for arm, s in pipeline["metrics"]["arms"].items():
        assert f"| {arm} | {s['mean']:.2f} ± {s['std']:.2f} (n=2) |" in text
    search = read_json(pipeline["policy"] / "search.json")
    assert f"| proxy trainings | {search['trainings']} × 2 epochs, width 16 |" in text
    arms = pipeline["metrics"]["arms"]
    top = max(s["mean"] for s in arms.values())
    best = "|".join(arm for arm, s in arms.items() if s["mean"] == top)  # tied arms: either may be named
    assert re.search(rf"Best and worst arm by mean accuracy \(({best}) and \w+\)", text)
    learner = read_json(pipeline["downstream"] / "learned" / "results.json")["learner"]
    assert f"## Downstream learner\n\n**Downstream learner: {learner['model']}** ({learner['rule']})." in text


def test_report_and_lineage_in_mlflow(pipeline):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{pipeline['root'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("metaaug").experiment_id
    runs = client.search_runs([experiment], max_results=100)
    # the experiment holds the stage runs only (one per fixed arm: train@<arm>): the arm x split runs are beside
    # it, not burying them
    stages = {dvc_stage_name(r.data.tags): r for r in runs}
    assert len(runs) == len(stages) and set(stages) == {"prepare", "learner", "metatrain", "augment", "train@none",
                                                        "train@trivialaugment", "train_learned", "evaluate"}
    by_id = {r.info.run_id: r for r in runs}
    children = client.search_runs([client.get_experiment_by_name("metaaug-splits").experiment_id], max_results=100)
    execution = stages["evaluate"].data.tags["metaaug.pipeline"]
    assert {r.data.tags["metaaug.pipeline"] for r in [*stages.values(), *children]} == {execution}
    assert {c.data.params["arm"] for c in children} == {"none", "trivialaugment", "learned"}
    seeds = {s["seed"] for s in read_json(pipeline["prepared"] / "manifest.json")["splits"]}
    assert {int(c.data.params["seed"]) for c in children} == seeds
    # every arm x split run carries its test accuracy, the one evaluate measured
    with open(pipeline["plots"] / "accuracy.csv") as fh:
        accuracy = {(r["arm"], int(r["split"])): float(r["accuracy"]) for r in csv.DictReader(fh)}
    for c in children:
        assert c.data.metrics["test_accuracy"] == pytest.approx(
            accuracy[(c.data.tags["metaaug.arm"], int(c.data.tags["metaaug.split"]))], abs=0.006)  # csv: 0.01 points
        # the run spans its population's training; `seconds` is this learner's share of it
        population = int(by_id[c.data.tags["metaaug.train_run"]].data.params["train.population_size"])
        assert 1000 * c.data.metrics["seconds"] - 50 <= c.info.end_time - c.info.start_time \
            <= 1000 * c.data.metrics["seconds"] * population + 50
    # run names and params say which pipeline a run belongs to
    for run in stages.values():
        assert run.info.run_name.startswith(run.data.tags["metaaug.stage"]), run.info.run_name
        assert run.info.run_name.endswith(" · digits [5,6,7,8,9] 5-shot × 2"), run.info.run_name
        assert run.data.params["target.classes"] == '["5", "6", "7", "8", "9"]'
        assert run.data.params["target.shots"] == "5" and run.data.params["target.splits"] == "2"
    evaluate = stages["evaluate"]  # its name opens with which arm won (tracking.winner), train's with the arm
    assert evaluate.info.run_name.startswith(f"evaluate: {evaluate.data.tags['metaaug.winner']} · ")
    assert stages["train@none"].info.run_name.startswith("train: arm none · ")
    artifacts = {a.path for a in client.list_artifacts(evaluate.info.run_id, "report")}
    assert {"report/report.md", "report/samples.png", "report/policy.png", "report/evaluation.json"} <= artifacts
    note = evaluate.data.tags["mlflow.note.content"]
    assert note.startswith("**Verdict:") and "metaaug-splits" in note
    assert all(f"runs/{stages[s].info.run_id})" in note
               for s in ("train@none", "train@trivialaugment", "train_learned"))
    selected = client.search_runs([c.info.experiment_id for c in children[:1]],
                                  f"tags.`metaaug.evaluate_run` = '{evaluate.info.run_id}'")  # the note's search
    assert len(selected) == len(children) == 3 * 2
    # metatrain: the answer first; its description says what was chosen and why, a figure draws it
    metatrain = stages["metatrain"]
    assert set(metatrain.data.metrics) == {"search.seconds", "search.proxy_seconds", "search.workers",
                                           "search.trainings", "search.budget", "search.spent"}
    assert set(stages["learner"].data.metrics) == {"learner.seconds.small_cnn", "learner.seconds.resnet"}
    assert 0 < metatrain.data.metrics["search.spent"] <= metatrain.data.metrics["search.budget"]
    note = metatrain.data.tags["mlflow.note.content"]
    assert note.startswith("**Chosen policy: ") and "How it was decided: " in note
    # ... and which downstream learner the trial (stage learner) chose, with its evidence (train's too)
    learner = read_json(pipeline["learner"] / "learner.json")
    assert read_json(pipeline["downstream"] / "none" / "results.json")["learner"] == learner
    assert stages["learner"].data.tags["metaaug.learner"] == metatrain.data.tags["metaaug.learner"] == learner["model"]
    assert learner["model"] == stages["train@none"].data.params["train.model"]
    for run in (stages["learner"], metatrain, stages["train@none"], stages["train_learned"]):
        assert f"**Downstream learner: {learner['model']}** ({learner['rule']})." in run.data.tags["mlflow.note.content"]
        assert f"95 % CI [{learner['difference']['ci_low']:+.2f}, " in run.data.tags["mlflow.note.content"]
    assert {"policy.png", "search_finalists.json", "policy"} <= {a.path for a in client.list_artifacts(
        metatrain.info.run_id)}
    assert metatrain.data.tags["metaaug.policy"] in ("trivialaugment point", "none point", "handcrafted point",
                                                     "randaugment point", "searched")
    # evaluate: a few headline numbers, the same as metrics.json
    assert evaluate.data.metrics == pytest.approx(read_json(pipeline["root"] / "metrics.json"))


def test_bad_policy_leaves_the_previous_report_intact(pipeline, tmp_path):
    policy = tmp_path / "policy"
    shutil.copytree(pipeline["policy"], policy)
    (policy / "policy.json").write_text("{not json")
    reports = tmp_path / "reports"
    shutil.copytree(pipeline["reports"], reports)
    before = {p.name: p.read_bytes() for p in reports.iterdir()}
    with pytest.raises(MetaaugError, match="policy.json was modified since metaaug wrote it"):  # checked as read
        evaluate.run(pipeline["params"], pipeline["prepared"], pipeline["downstream"], tmp_path / "metrics.json",
                       tmp_path / "plots", policy, reports)
    assert {p.name: p.read_bytes() for p in reports.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy", "reports"]  # stopped before any run opened


def verdict_for(learned_minus_best: tuple[float, float, float], n: int = 20, baseline=None) -> str:
    from metaaug.report import verdict

    mean, low, high = learned_minus_best
    arms = {"none": {"mean": 89.0, "n": n}, "randaugment": {"mean": 92.0, "n": n},
            "trivialaugment": {"mean": 91.0, "n": n}, "learned": {"mean": 92.0 + mean, "n": n}}
    paired = {"learned-randaugment": {"mean": mean, "ci_low": low, "ci_high": high},
              "learned-trivialaugment": {"mean": mean + 1, "ci_low": low + 1, "ci_high": high + 1},
              "learned-none": {"mean": 3.0, "ci_low": 2.0, "ci_high": 4.0}}
    return verdict({"arms": arms, "paired": paired}, baseline, None)


def test_verdict_says_what_to_use_and_how_sure():
    assert verdict_for((1.0, 0.4, 1.6)).startswith("**Verdict: use the learned policy: it is better than the best "
                                                   "fixed arm, randaugment,")
    assert verdict_for((-1.0, -1.6, -0.4)).startswith("**Verdict: use randaugment: it beats the learned policy by 1.00")
    tied = verdict_for((0.1, -0.5, 0.7))
    assert tied.startswith("**Verdict: no clear winner") and "a 95 % CI that includes 0" in tied
    assert "Learned is better than TrivialAugment-Wide: +1.10 points [+0.50, +1.70]" in tied
    assert "Only 3 splits" in verdict_for((0.1, -0.5, 0.7), n=3) and "Only" not in tied
    same = verdict_for((0.0, -0.3, 0.3), baseline="randaugment")
    assert same.startswith("**Verdict: use the learned policy (RandAugment's point in the search space) or "
                           "RandAugment itself: they cannot be told apart")
