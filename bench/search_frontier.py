"""The search's frontier: what each budget buys, on the default and the adaptivity tasks.

For each task: prepare once (bench/adaptivity.py's builders), then run metatrain at each
budget (`metatrain.budget`, units of one downstream training) under search seeds 0..N-1,
each the metatrain stage's `run`, in this process (no interpreter start-up per run). Then train the fixed arms and each distinct chosen
policy once on the target splits and score them on the target test split (the functions of
bench/search_stability.py). Prints per task and budget: the modal choice and its share, the
chosen policy's target accuracy minus the best fixed arm's (mean over seeds, min..max), and
the cost actually spent (units, counted in operations) with the wall-clock ratio: the
search's seconds over one downstream training timed in the same process, at the same load.
Writes the table's rows to --json and a plot (learned − best fixed against units spent) to --plot.

    python bench/search_frontier.py [--budgets 1,3,10,30] [--seeds 2] [--splits 10]
        [--task digits-5-9,digits-0-4,intensity,position] [--plot docs/search_frontier.png]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_stability import (fixed_accuracies, one_training, policy_key, prepare_task,  # noqa: E402
                              target_accuracies)

from metaaug.config import load_params, validate  # noqa: E402
from metaaug.stages import metatrain  # noqa: E402
from metaaug.policies import FIXED_POLICIES  # noqa: E402
from metaaug.timing import machine_description  # noqa: E402


def search_runs(prepared: Path, params: dict, budgets: list[float], seeds: list[int], work: Path) -> list[dict]:
    """metatrain at every (budget, seed): the chosen policy, the units spent, the search's seconds."""
    runs = []
    for budget in budgets:
        for seed in seeds:
            p = {**params, "seed": seed, "metatrain": {**params["metatrain"], "budget": budget}}
            out = work / f"policy-b{budget:g}-s{seed}"
            timing = work / f"timing-b{budget:g}-s{seed}.json"
            with contextlib.redirect_stdout(io.StringIO()):  # in this process: no start-up per run
                metatrain.run(validate(p), prepared, out, timing, work / "learner")  # prepare_task's learner
            log = json.loads((out / "search.json").read_text())
            runs.append({"budget": budget, "seed": seed, "out": out, "key": policy_key(out),
                         "name": log["finalists"][0]["candidate"], "spent": log["spent"],
                         "trainings": log["trainings"], "rounds": len(log["rounds"]),
                         "seconds": json.loads(timing.read_text())["search_seconds"]})
            print(f"  budget {budget:g} seed {seed}: {runs[-1]['name']}, spent {log['spent']:.2f}, "
                  f"{runs[-1]['seconds']:.1f} s", flush=True)
    return runs


def run_task(name: str, base, budgets: list[float], seeds: list[int], splits: int, work: Path) -> list[dict]:
    """One task's rows: per budget, the modal choice, learned − best fixed, the cost spent."""
    params, prepared = prepare_task(name, base, splits, work, "metaaug-search-frontier")
    print(f"\n## {name}", flush=True)
    runs = search_runs(prepared, params, budgets, seeds, work)
    one_run = one_training(prepared, params)  # after the searches, at the same load
    accuracy, _ = fixed_accuracies(prepared, params, work)
    best = max(FIXED_POLICIES, key=lambda a: accuracy[a].mean())
    target_accuracies(runs, prepared, params, work)
    rows = []
    for budget in budgets:
        mine = [r for r in runs if r["budget"] == budget]
        key, n = collections.Counter(r["key"] for r in mine).most_common(1)[0]
        regret = np.array([100 * (r["accuracy"].mean() - accuracy[best].mean()) for r in mine])
        rows.append({"task": name, "budget": budget, "modal": next(r["name"] for r in mine if r["key"] == key),
                     "modal_share": f"{n}/{len(mine)}", "regret_mean": float(regret.mean()),
                     "regret_min": float(regret.min()), "regret_max": float(regret.max()),
                     "regret_se": float(regret.std(ddof=1) / np.sqrt(len(regret))) if len(regret) > 1 else 0.0,
                     "spent": float(np.mean([r["spent"] for r in mine])),
                     "spent_max": float(max(r["spent"] for r in mine)),
                     "wall_x": float(np.median([r["seconds"] for r in mine]) / one_run),
                     "wall_x_max": float(max(r["seconds"] for r in mine) / one_run),
                     "rounds": float(np.mean([r["rounds"] for r in mine])), "best_fixed": best,
                     "one_training_s": one_run})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| task | budget | modal choice | seeds | learned − best fixed (points, mean ± SE; min … max) | best fixed "
             "| spent (units, mean; max) | wall / one training (median; max) | rounds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['budget']:g} | {r['modal']} | {r['modal_share']} | {r['regret_mean']:+.2f} "
                     f"± {r['regret_se']:.2f} ({r['regret_min']:+.2f} … {r['regret_max']:+.2f}) | {r['best_fixed']} | "
                     f"{r['spent']:.2f} ({r['spent_max']:.2f}) | {r['wall_x']:.1f}× ({r['wall_x_max']:.1f}×) | "
                     f"{r['rounds']:.1f} |")
    return "\n".join(lines)


def monotone(rows: list[dict]) -> list[str]:
    """Per task: does the mean of learned − best fixed never fall, as the budget grows, by more than one
    standard error below the best mean of a smaller budget?"""
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = sorted((r for r in rows if r["task"] == task), key=lambda r: r["budget"])
        falls = [f"{b['budget']:g} ({b['regret_mean']:+.2f} ± {b['regret_se']:.2f}) below {a['budget']:g} "
                 f"({a['regret_mean']:+.2f})" for i, b in enumerate(mine) for a in mine[:i]
                 if b["regret_mean"] + b["regret_se"] < a["regret_mean"]]
        out.append(f"{task}: {'monotone within one SE' if not falls else 'NOT monotone: ' + '; '.join(falls)}")
    return out


def plot(rows: list[dict], path: Path) -> None:
    """learned − best fixed (mean, min-max bar) against the budget, one line per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        x = np.array([r["budget"] for r in mine])
        y = np.array([r["regret_mean"] for r in mine])
        err = np.array([[r["regret_mean"] - r["regret_min"] for r in mine], [r["regret_max"] - r["regret_mean"]
                                                                              for r in mine]])
        err = np.maximum(err, 0.0)  # equal seeds: the mean of equal floats can round a hair past min or max
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=task)
    ax.axhline(0, color="grey", lw=0.8)
    ax.axhline(-0.3, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xticks(sorted({r["budget"] for r in rows}), [f"{b:g}" for b in sorted({r["budget"] for r in rows})])
    ax.set_xlabel("metatrain.budget (downstream trainings)")
    ax.set_ylabel("learned − best fixed arm (target test, points)")
    ax.set_title("search frontier: mean over seeds, bar = min … max")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--budgets", default="1,3,10,30")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--splits", type=int, default=10)
    ap.add_argument("--task", default="digits-5-9,digits-0-4,intensity,position")
    ap.add_argument("--plot", type=Path, default=Path("docs/search_frontier.png"))
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--keep", type=Path, help="work here and keep the outputs (default: a temporary directory)")
    args = ap.parse_args()
    base, start = load_params(args.params), time.perf_counter()
    budgets = [float(b) for b in args.budgets.split(",")]
    with tempfile.TemporaryDirectory(prefix="metaaug-frontier-") as d:
        work = args.keep or Path(d)
        work.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{(work / 'mlflow.db').resolve()}")
        rows = []
        for name in args.task.split(","):  # each task's rows as soon as they are measured (a long run can stop)
            rows += run_task(name, base, budgets, list(range(args.seeds)), args.splits, work / name)
            print("\n" + table([r for r in rows if r["task"] == name]), flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))
    print("\n" + table(rows))
    print("\n" + "\n".join(monotone(rows)))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    plot(rows, args.plot)
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"\n{args.seeds} seeds, {args.splits} target splits; measured on: {machine_description()}; load average at "
          f"the end {load}; {time.perf_counter() - start:.0f} s in all. Plot: {args.plot}")


if __name__ == "__main__":
    main()
