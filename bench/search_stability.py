"""Is the learned choice stable under reseeding, and what does it cost against the best fixed arm?

For each task: prepare once (the base params' seed), then rerun metatrain on that
same prepared data under N search seeds (`seed` varies: the meta-train tasks and
the explorers vary, nothing else), each as `python -m metaaug metatrain --params P
--prepared D --out O`. Prints per seed the chosen policy (named when it is a fixed
baseline's point), how it was decided and its margin over the runner-up with a
95 % t-interval. Then trains every fixed arm once and each DISTINCT chosen policy
once on the target splits (`python -m metaaug train --arm A` per fixed arm,
`python -m metaaug train_learned` with `train.learned_source: on_the_fly`, i.e. the
policy sampled directly instead of data/augmented/'s copies; each reads the task's
learner, `python -m metaaug learner` run once after prepare), scores them on the
target test split as evaluate does, and prints the frequency of the modal
choice, the regret of each seed's choice (its test accuracy minus the best fixed
arm's, mean over splits) and the mean regret. Metatrain's wall time is measured
in the same run as one downstream training (median over the fixed arms' runs).

    python bench/search_stability.py [--seeds 10] [--task digits-5-9,digits-0-4,intensity,position]
        [--splits 20] [--params params.yaml] [--keep DIR]

Tasks are bench/adaptivity.py's (its builders are imported, not copied).
MLflow runs go to a scratch SQLite store unless MLFLOW_TRACKING_URI is set.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adaptivity import task_params  # noqa: E402  the task builders of the adaptivity benchmark

from metaaug.config import TrainConfig, load_params  # noqa: E402
from metaaug.stages.evaluate import predicting, read_results  # noqa: E402
from metaaug.timing import machine_description  # noqa: E402
from metaaug.policies import FIXED_POLICIES  # noqa: E402
from metaaug.report import closest_rival  # noqa: E402
from metaaug.stats import paired_difference  # noqa: E402
from metaaug.tasks import load_prepared  # noqa: E402


def cli(*args: str, params: Path) -> str:
    """Run `python -m metaaug ARGS --params P`; its stdout (stops the benchmark on failure)."""
    done = subprocess.run([sys.executable, "-m", "metaaug", *args, "--params", str(params)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        sys.exit(f"metaaug {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def write_params(params: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def margin(finalists: list[dict]) -> str:
    """The chosen policy minus the runner-up (the closest candidate still in the race at its end), points,
    95 % t-interval, tasks."""
    runner = closest_rival(finalists[1:])
    if runner is None:
        return "no runner-up"
    return (f"{-runner['diff_to_chosen']:+.2f} [{-runner['ci_high']:+.2f}, {-runner['ci_low']:+.2f}] over "
            f"{runner['candidate']} on {runner['paired_tasks']} tasks")


def one_training(prepared: Path, params: dict, repeats: int = 3) -> float:
    """Seconds of one downstream training (TA-Wide arm, target split 0, the train settings; median of
    `repeats` after a warm-up), in this process on the threads the train stage uses."""
    import torch

    from metaaug.policies import fixed_policy, sample_apply
    from metaaug.training import set_threads, to_tensor, train_learner

    prep = load_prepared(prepared)
    set_threads(prep.target_images.shape[1])
    split = prep.manifest["splits"][0]
    support = np.asarray(split["support"])
    x = to_tensor(np.asarray(prep.target_images)[support])
    y = torch.tensor(np.asarray(prep.target_labels)[support])
    policy = fixed_policy("trivialaugment", image_channels=x.shape[1])
    settings = TrainConfig(**params["train"])
    seconds = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        train_learner(x, y, len(prep.manifest["target"]["classes"]), settings, split["seed"],
                      lambda images, gen: sample_apply(policy, images, gen), torch.device("cpu"))
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds[1:]))


def test_accuracies(prepared: Path, arm_dirs: dict[str, Path]) -> dict[str, np.ndarray]:
    """Each arm's (`arm_dirs`: arm -> its models/downstream/<arm> folder) test accuracy per split, predicted as
    the evaluate stage predicts."""
    with predicting(load_prepared(prepared), arm_dirs, read_results(arm_dirs)["model"]) as collect:
        return collect()[0]


def fixed_accuracies(prepared: Path, params: dict, work: Path) -> tuple[dict[str, np.ndarray], float]:
    """Every fixed arm's target test accuracy per split (`metaaug train --arm A` once each), and one run's
    seconds (the median the train stage reports, over the arms)."""
    p = write_params({**params, "train": {**params["train"], "arms": list(FIXED_POLICIES)}},
                     work / "params-fixed.yaml")
    dirs = {arm: work / "downstream-fixed" / arm for arm in FIXED_POLICIES}
    stdout = "".join(cli("train", "--arm", arm, "--prepared", str(prepared), "--learner", str(work / "learner"),
                         "--out", str(out), "--timing", str(work / f"timing-{arm}.json"), params=p)
                     for arm, out in dirs.items())
    one_run = float(np.median([float(s) for s in re.findall(r"splits, ([0-9.]+) s a run", stdout)]))
    return test_accuracies(prepared, dirs), one_run


def target_accuracies(runs: list[dict], prepared: Path, params: dict, work: Path) -> None:
    """Each run's chosen policy (`run["out"]`) trained on the target splits, sampled on the fly, its test
    accuracy per split set as `run["accuracy"]`; a policy chosen by several runs (`run["key"]`) trained once."""
    p = write_params({**params, "train": {**params["train"], "learned_source": "on_the_fly"}},
                     work / "params-learned.yaml")
    distinct = {}
    for run in runs:
        if run["key"] not in distinct:
            downstream = work / f"downstream-{run['out'].name}"
            cli("train_learned", "--prepared", str(prepared), "--learner", str(work / "learner"), "--policy",
                str(run["out"]), "--out", str(downstream), "--timing", str(work / f"timing-{run['out'].name}.json"),
                params=p)
            distinct[run["key"]] = test_accuracies(prepared, {"learned": downstream})["learned"]
        run["accuracy"] = distinct[run["key"]]


def policy_key(out: Path) -> str:
    """The chosen policy's content (without its name and provenance): equal keys, the same policy."""
    policy = json.loads((out / "policy.json").read_text())
    return json.dumps({k: v for k, v in policy.items() if k not in ("provenance", "name")}, sort_keys=True)


def decision_kind(chosen: dict) -> str:
    """Which rules decided: how the reference was chosen / what became of the explorers (engine.Rule names)."""
    return f"{chosen['reference_rule']} / {chosen['rule']}" if "rule" in chosen else chosen["decision"].split(":")[0]


def prepare_task(name: str, base, splits: int, work: Path, experiment: str) -> tuple[dict, Path]:
    """A task's params (as a params.yaml mapping, runs logged to `experiment`) and its prepared folder, with the
    task's downstream learner beside it (`work`/learner: what every metatrain and train here reads)."""
    work.mkdir(parents=True, exist_ok=True)
    params = task_params(base, name, work, splits).model_dump()
    params["tracking"]["experiment"] = experiment
    prepared = work / "prepared"
    p = write_params(params, work / "params.yaml")
    cli("prepare", "--out", str(prepared), params=p)
    cli("learner", "--prepared", str(prepared), "--out", str(work / "learner"), params=p)
    return params, prepared


def run_task(name: str, base: dict, seeds: list[int], splits: int, work: Path) -> dict:
    params, prepared = prepare_task(name, base, splits, work, "metaaug-search-stability")

    print(f"\n## {name}: metatrain under {len(seeds)} search seeds (prepared once, seed {params['seed']})", flush=True)
    print("| seed | chosen | decision | margin over the runner-up (points, 95 % CI) | trainings | search s (× one "
          "training timed right after it) |")
    print("|---|---|---|---|---|---|")
    runs = []
    for seed in seeds:
        p = write_params({**params, "seed": seed}, work / f"params-seed{seed}.yaml")
        out = work / f"policy-seed{seed}"
        start = time.perf_counter()
        stdout = cli("metatrain", "--prepared", str(prepared), "--learner", str(work / "learner"), "--out", str(out),
                     "--timing", str(work / f"timing-metatrain-seed{seed}.json"), params=p)
        wall = time.perf_counter() - start
        search_seconds = float(re.search(r"proxy trainings in ([0-9.]+) s", stdout).group(1))
        beside = one_training(prepared, params)  # side by side: right after this seed's search, same load
        log = json.loads((out / "search.json").read_text())
        key = policy_key(out)
        chosen = log["finalists"][0]
        runs.append({"seed": seed, "out": out, "key": key, "name": chosen["candidate"], "search": search_seconds,
                     "wall": wall, "trainings": log["trainings"],
                     "beside": beside})
        print(f"| {seed} | {chosen['candidate']} | {decision_kind(chosen)} | {margin(log['finalists'])} "
              f"| {log['trainings']} | {search_seconds:.1f} ({search_seconds / beside:.1f}×) |", flush=True)

    # the fixed arms once, then each distinct chosen policy once, on the same target splits
    accuracy, one_run = fixed_accuracies(prepared, params, work)
    best = max(FIXED_POLICIES, key=lambda a: accuracy[a].mean())
    target_accuracies(runs, prepared, params, work)
    for run in runs:
        run["regret"] = 100 * (run["accuracy"].mean() - accuracy[best].mean())

    counts = collections.Counter(run["key"] for run in runs)
    modal_key, modal_n = counts.most_common(1)[0]
    modal = next(run["name"] for run in runs if run["key"] == modal_key)
    print(f"\nTarget test accuracy (%, mean over {splits} splits): "
          + ", ".join(f"{a} {100 * accuracy[a].mean():.2f}" for a in FIXED_POLICIES) + f"; best fixed arm: {best}")
    print("| chosen policy | seeds | target accuracy | − best fixed (points, bootstrap 95 % CI) |")
    print("|---|---|---|---|")
    for key, n in counts.most_common():
        run = next(r for r in runs if r["key"] == key)
        d = paired_difference(run["accuracy"], accuracy[best])
        print(f"| {run['name']} | {', '.join(str(r['seed']) for r in runs if r['key'] == key)} | "
              f"{100 * run['accuracy'].mean():.2f} | {d['mean']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}] |")
    regrets = [run["regret"] for run in runs]
    search = np.array([run["search"] / run["beside"] * one_run for run in runs])  # each seed's ratio, in s
    wall = np.array([run["wall"] for run in runs])
    summary = {"task": name, "modal": modal, "modal_share": f"{modal_n}/{len(runs)}", "distinct": len(counts),
               "mean_regret": float(np.mean(regrets)), "worst_regret": float(np.min(regrets)), "best_fixed": best,
               "one_training_s": one_run, "search_x": float(np.median(search) / one_run),
               "search_x_max": float(search.max() / one_run), "metatrain_cmd_x": float(np.median(wall) / one_run),
               "trainings": float(np.mean([run["trainings"] for run in runs]))}
    print(f"\nmodal choice: {modal}, {modal_n}/{len(runs)} seeds ({len(counts)} distinct policies); mean regret vs "
          f"the best fixed arm ({best}): {summary['mean_regret']:+.2f} points (worst {summary['worst_regret']:+.2f}); "
          f"one downstream training {one_run:.2f} s (median of the train stage's runs); search "
          f"{summary['search_x']:.1f}× one training timed right after it (median over seeds, max "
          f"{summary['search_x_max']:.1f}×), whole metatrain command with start-up {summary['metatrain_cmd_x']:.1f}×; "
          f"{summary['trainings']:.0f} proxy trainings on average", flush=True)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--task", default="digits-5-9", help="comma list of digits-5-9, digits-0-4, intensity, position")
    ap.add_argument("--splits", type=int, default=20)
    ap.add_argument("--keep", type=Path, help="work here and keep the outputs (default: a temporary directory)")
    args = ap.parse_args()
    base = load_params(args.params)
    with tempfile.TemporaryDirectory(prefix="metaaug-stability-") as d:
        work = args.keep or Path(d)
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{(work / 'mlflow.db').resolve()}")
        work.mkdir(parents=True, exist_ok=True)
        summaries = [run_task(name, base, list(range(args.seeds)), args.splits, work / name)
                     for name in args.task.split(",")]
    print("\n| task | modal choice | seeds | distinct | mean regret vs best fixed (points) | worst | best fixed "
          "| search / one training | proxy trainings |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s in summaries:
        print(f"| {s['task']} | {s['modal']} | {s['modal_share']} | {s['distinct']} | {s['mean_regret']:+.2f} | "
              f"{s['worst_regret']:+.2f} | {s['best_fixed']} | {s['search_x']:.1f}× (max {s['search_x_max']:.1f}×) "
              f"| {s['trainings']:.0f} |")
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"\nMeasured on: {machine_description()}; load average at the end {load}.")


if __name__ == "__main__":
    main()
