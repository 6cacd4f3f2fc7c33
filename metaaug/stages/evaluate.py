"""Stage `evaluate`: test accuracy per arm and paired differences -> `metrics.json`, DVC plots, the report.

Everything it writes is a function of its DVC inputs alone (prepared data, trained models,
policy): wall times are not read back from MLflow (see metaaug.timing).
"""

from __future__ import annotations

import contextlib
import pickle
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import typer

from metaaug import ownership, registry, runner, tracking, workers
from metaaug.config import LEARNED, Params, load_params
from metaaug.declaration import Declaration, Output
from metaaug.errors import MetaaugError
from metaaug.files import read_json
from metaaug.models import build_model
from metaaug.plots import write_dvc_plots
from metaaug.policies import read_policy
from metaaug.report import verdict, write_report
from metaaug.stages import PARAMS
from metaaug.stats import best_fixed, compare, headline
from metaaug.tasks import Prepared, load_prepared
from metaaug.training import predict, to_tensor

# plots/ is DVC-cached, so a fresh clone (no cache) runs evaluate and MLflow gets its run and verdict
# (docs/configuration.md, "The answer in MLflow"); metrics.json (for `dvc metrics diff`, its sidecar committed
# too) and reports/ (the report, readable where the repository is) are git-tracked. Its outputs depend on its
# inputs alone, and on train.arms: which fixed arms' models (models/downstream/<arm>/, train@<arm>) it compares
# with the learned one's (train_learned).
DECLARATION = Declaration(
    "evaluate", inputs={"prepared": ("prepare", "data/prepared"), "downstream": ("train", "models/downstream"),
                        "learned": ("train_learned", f"models/downstream/{LEARNED}"),
                        "policy": ("metatrain", "models/policy")},
    outputs={"metrics": Output("metrics.json", "evaluate.metrics", file=True, cache=False, metric=True),
             "plots": Output("plots", "evaluate.plots"), "reports": Output("reports", "evaluate.reports", cache=False)},
    params=("train.arms",), reads=("tracking.experiment", "tracking.policy_model"), splits=True)


@contextlib.contextmanager
def unreadable_downstream(downstream_dir: Path):
    """The models as train wrote them, or one line: a damaged results.json or .pt (an output from before
    markers, whose contents nothing vouches for) fails in torch or in a key lookup, never as a traceback."""
    try:
        yield
    except MetaaugError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError, EOFError,
            pickle.UnpicklingError) as exc:
        raise MetaaugError(f"{downstream_dir}: its models do not load ({type(exc).__name__}: {str(exc)[:150]}); "
                           "expected the output of `metaaug train` (rerun it)") from None


def read_results(arm_dirs: dict[str, Path]) -> dict:
    """The arms' results.json as one: the learner they share (its spec and the choice's evidence) and each
    arm's curves. Arms trained with different learners are not comparable: one line says which."""
    results = {"arms": {}}
    for arm, directory in arm_dirs.items():
        with unreadable_downstream(directory):
            one = read_json(directory / "results.json")
            results["arms"][arm] = one["arms"][arm]
            for key in ("model", "learner"):
                if results.setdefault(key, one[key]) != one[key]:
                    first = next(iter(arm_dirs.values()))
                    raise MetaaugError(f"{directory}: its {key} differs from {first}'s; expected every arm trained "
                                       "with one learner (rerun `dvc repro`, or train every arm again)")
    return results


@contextlib.contextmanager
def predicting(prepared: Prepared, arm_dirs: dict[str, Path], model_spec: dict) -> Iterator[Callable[[], tuple]]:
    """Hand every model's test-set predictions to one-thread worker processes on entry, so that they run while
    the stage opens its MLflow run (as train's trainings do); yields the function that waits for them: per arm,
    the test accuracy per split and (labels, predictions) pooled over the splits."""
    test = np.asarray(prepared.manifest["test"])
    x_test, y_test = to_tensor(prepared.target_images)[test], np.asarray(prepared.target_labels)[test]
    states = {}
    for arm, directory in arm_dirs.items():
        with unreadable_downstream(directory):
            states[arm] = torch.load(directory / f"{arm}.pt", weights_only=True)

    def collect() -> tuple[dict, dict]:
        accuracy, confusion = {}, {}
        for arm, directory in arm_dirs.items():
            with unreadable_downstream(directory):  # a state that does not fit the model fails in its worker
                preds = [next(predicted) for _ in states[arm]]
            accuracy[arm] = np.array([np.mean(p == y_test) for p in preds])
            confusion[arm] = (np.tile(y_test, len(preds)), np.concatenate(preds))
        return accuracy, confusion

    with workers.Pool(workers.count(0), {"states": states, "model": model_spec, "x_test": x_test}) as pool:
        predicted = pool.map(_predict, [(arm, i) for arm in arm_dirs for i in range(len(states[arm]))])
        yield collect


def _predict(job: tuple[str, int]) -> np.ndarray:
    """A worker's entry (pickled by name): split `job[1]`'s model of arm `job[0]`, its test-set predictions."""
    shared = workers.state()
    arm, split = job
    model = build_model(**shared["model"])
    model.load_state_dict(shared["states"][arm][split])
    return predict(model, shared["x_test"])


def run(params: Params, prepared_dir: Path, downstream_dir: Path, metrics_path: Path, plots_dir: Path,
        policy_dir: Path | None = None, reports_dir: Path | None = None, learned_dir: Path | None = None) -> dict:
    """Compare train.arms' models in `downstream_dir`/<arm>/ with the learned arm's (`learned_dir`, by default
    `downstream_dir`/learned/)."""
    fixed = {arm: Path(downstream_dir) / arm for arm in params.train.arms}
    learned_dir = Path(downstream_dir) / LEARNED if learned_dir is None else learned_dir
    searched = policy_dir is not None and (Path(policy_dir) / "search.json").exists()
    paths = {"prepared": prepared_dir, "downstream": fixed, "learned": learned_dir,
             "policy": policy_dir if searched else None, "metrics": metrics_path, "plots": plots_dir,
             "reports": reports_dir}
    upstream = runner.declared_paths(DECLARATION, paths)[0]  # train.<arm> for each fixed arm, as stage_run names them
    ownership.verify_inputs(upstream)  # before anything is read (stage_run reuses the digests)
    prepared = load_prepared(prepared_dir)
    arm_dirs = {**fixed, LEARNED: learned_dir}
    results = read_results(arm_dirs)
    arms = list(arm_dirs)
    search, baseline = None, None
    if searched:
        search = read_json(policy_dir / "search.json")
        baseline = read_policy(policy_dir / "policy.json")[1].get("baseline_point")
    with predicting(prepared, arm_dirs, results["model"]) as predictions, \
            runner.stage_run(DECLARATION, {"evaluate.arms": arms}, params.tracking.experiment, paths) as stage:
        run_ = stage.run
        accuracy, confusion = predictions()
        metrics = compare(accuracy)
        summary = verdict(metrics, baseline, search)
        won = tracking.winner(headline(metrics), best_fixed(metrics["arms"]))
        stage.headline = won
        tracking.set_tags({"metaaug.winner": won})
        if reports_dir is not None:
            write_report(stage.output(reports_dir), metrics, summary, accuracy, results, confusion, prepared,
                         policy_dir, baseline, search, stage.inputs)
        plots = stage.output(plots_dir)
        write_dvc_plots(plots, accuracy, results, confusion, prepared.manifest["target"]["classes"])
        numbers = headline(metrics)
        metrics_file = stage.write_json(metrics_path, numbers)
        tracking.log_metrics(numbers)  # the run list's columns; the rest is in report/evaluation.json
        tracking.log_artifacts(metrics_file)
        tracking.log_artifacts(plots, "plots")
        if reports_dir is not None:
            tracking.log_artifacts(stage.output(reports_dir), "report")
        for arm, accs in accuracy.items():
            trained_by = "train_learned" if arm == LEARNED else f"train.{arm}"
            train_run = run_.data.tags.get(f"upstream.{trained_by}", "unknown")
            tracking.log_split_accuracies(train_run, {(arm, i): 100 * a for i, a in enumerate(accs)}, run_.info.run_id)
        tracking.describe_evaluate_run(run_, summary)
        registry.record_verdict(params.tracking.policy_model_name, run_.data.tags.get("upstream.metatrain", "unknown"),
                                summary, numbers, won)
        for arm, s in metrics["arms"].items():
            print(f"evaluate: {arm:15s} {s['mean']:.2f} ± {s['std']:.2f} (n={s['n']})")
        for pair, d in metrics["paired"].items():
            print(f"evaluate: {pair:28s} {d['mean']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]")
        print(f"evaluate: {summary}")
        print(f"evaluate: mlflow run {run_.info.run_id}")
    return metrics


def command(params: Path = PARAMS, prepared: Path = DECLARATION.option("prepared"),
            downstream: Path = DECLARATION.option("downstream", "The fixed arms' models (<folder>/<arm>/: train)."),
            learned: Path = typer.Option(None, help="The learned arm's models (train_learned); default: "
                                                    "<downstream>/learned."),
            policy: Path = DECLARATION.option("policy"),
            metrics: Path = DECLARATION.option("metrics"), plots: Path = DECLARATION.option("plots"),
            reports: Path = DECLARATION.option("reports", "Where report.md and its PNGs go.")):
    """Test accuracy per arm, paired differences with bootstrap CIs, DVC plots, the report."""
    run(load_params(params), prepared, downstream, metrics, plots, policy, reports, learned)
