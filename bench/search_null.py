"""The search's false-acceptance rate under the null, by simulation: no training in the simulation itself.

1. The noise, from real proxy scores: the references and the one-move explorers scored on the same meta-train
   tasks (bench/race_rules.py's score table: `--scores DIR/scores.npz` from `race_rules.py --keep DIR`, or
   scored here on `--tasks` tasks of `--task`), split two-way into a task effect and residuals
   (score = candidate mean + task effect + residual, residuals rescaled for the fitted means).
2. The null: every candidate has the same mean. A candidate's score on task t is the task's effect (drawn from the
   measured ones) plus a residual drawn from the measured pool (their tails kept: no normal assumption).
3. The real `race` method (METHODS["race"], params.yaml's `metatrain.race` settings, each budget in units of one
   downstream training at a proxy training's real cost) runs `--searches` times per budget on that scorer. The
   screen is off here: it decides which points are raced, not how; under the null every point is equal anyway.

A search accepts falsely when any of its rounds replaced its reference by an explorer. Printed per budget: that
rate with its 95 % Wilson interval, the share of searches whose best explorer passed the screen (`screen_z` on the
tasks that chose it: what the rule before confirmation, accept_z = 2 on the same tasks, accepted), trainings.

    python bench/search_null.py [--task digits-5-9] [--tasks 12] [--scores FILE] [--searches 1000]
        [--budgets 10,30,100] [--save FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adaptivity import task_params  # noqa: E402
from race_rules import candidates, policy_key, score_table, seed_tasks  # noqa: E402

from metaaug.config import load_params  # noqa: E402
from metaaug.ops import OP_NAMES  # noqa: E402
from metaaug.search import METHODS, Budget, Context, SearchSpace, SearchState  # noqa: E402
from metaaug.search.budget import task_flops  # noqa: E402
from metaaug.stages import prepare  # noqa: E402
from metaaug.tasks import load_prepared  # noqa: E402
from metaaug.timing import machine_description  # noqa: E402
from metaaug.training import set_threads  # noqa: E402


def noise_model(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(task effects, residuals) of a (seed, candidate, task) score table, pooled over seeds."""
    effects, residuals = [], []
    for s in table:
        c, t = s.shape
        grand = s.mean()
        effects.append(s.mean(0) - grand)
        resid = s - s.mean(1, keepdims=True) - s.mean(0, keepdims=True) + grand
        residuals.append(resid.ravel() * np.sqrt(c * t / ((c - 1) * (t - 1))))
    return np.concatenate(effects), np.concatenate(residuals)


class NullScorer:
    """Every policy the same in expectation: score = 0.9 + task effect + residual, both drawn from the measured
    ones; a pure function of (search, policy, task), so paired comparisons stay paired."""

    def __init__(self, tasks, effects: np.ndarray, residuals: np.ndarray, search: int):
        self.tasks, self.effects, self.residuals, self.search = tasks, effects, residuals, search

    def map(self, jobs):
        out = []
        for policy, t in jobs:
            key = zlib.crc32(repr(policy_key(policy)).encode())
            effect = self.effects[np.random.default_rng([self.search, t]).integers(len(self.effects))]
            resid = self.residuals[np.random.default_rng([self.search, key, t]).integers(len(self.residuals))]
            out.append((0.9 + effect + resid, 0.0))
        return out


def wilson(k: int, n: int) -> tuple[float, float]:
    """95 % Wilson interval of a proportion."""
    z = stats.norm.ppf(0.975)
    centre, half = (k + z * z / 2) / (n + z * z), z * np.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    return centre - half, centre + half


def simulate(params, space, tasks, effects, residuals, budget: float, per_training: float, searches: int) -> dict:
    """Null searches of the race method at `budget`: how many accepted an explorer, how many screened one."""
    race = params.metatrain.race.model_copy(update={"screen_keep": 0.0})  # under the null the screen only
    cfg = params.metatrain.model_copy(update={"method": "race", "budget": budget, "race": race})  # renames points
    false, screened, trainings = 0, 0, []
    for r in range(searches):
        state = SearchState("race", own=METHODS["race"].state())
        ctx = Context(space, cfg, state, r, lambda: None, lambda entry: None, Budget(budget, per_training),
                      NullScorer(tasks, effects, residuals, r), confirm_start=cfg.race.tasks)
        METHODS["race"].run(ctx)
        rules = [round_["rule"] for round_ in state.rounds]
        false += "CONFIRMED" in rules
        screened += any(rule in ("CONFIRMED", "NOT_CONFIRMED", "UNCONFIRMABLE") for rule in rules)
        trainings.append(state.trainings)
    return {"budget": budget, "false": false, "screened": screened, "searches": searches,
            "trainings": float(np.mean(trainings))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--task", default="digits-5-9", help="the bench task whose proxy noise is measured")
    ap.add_argument("--tasks", type=int, default=12, help="meta-train tasks scored to measure the noise")
    ap.add_argument("--scores", type=Path, help="a score table saved by race_rules.py --keep or --save (.npz)")
    ap.add_argument("--save", type=Path, help="keep the score table measured here (an .npz --scores reads)")
    ap.add_argument("--searches", type=int, default=1000)
    ap.add_argument("--budgets", default="10,30,100")
    args = ap.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="metaaug-null-") as scratch:
        work = Path(scratch)
        params = task_params(load_params(args.params), args.task, work, 20)
        prepare.run(params, work / "prepared")
        prepared = load_prepared(work / "prepared")
        space = SearchSpace(tuple(params.metatrain.ops or OP_NAMES), channels=prepared.meta_images.shape[-1])
        set_threads(prepared.meta_images.shape[1])
        names, labels, points = candidates(space, params.metatrain, 12)
        table = (np.load(args.scores)["scores"] if args.scores else
                 score_table(params, prepared, space, points, [0], args.tasks, work / "scores.npz"))
        if args.save and not args.scores:
            np.savez(args.save, seeds=[0], scores=table)
        effects, residuals = noise_model(table)
        tasks = seed_tasks(params, prepared, 1000, 0)
        cfg, train = params.metatrain, params.train
        per_training = (task_flops(tasks[0], cfg.proxy_epochs, cfg.proxy_width, train.model)
                        / task_flops(tasks[0], train.epochs, train.width, train.model))
        diffs = 100 * (table[:, :, None, :] - table[:, None, :, :])
        sd = float(np.mean([d.std(ddof=1) for s in diffs for i, row in enumerate(s) for d in row[i + 1:]]))
        print(f"## Null simulation: {args.task}, noise from {table.shape[1]} candidates x {table.shape[2]} tasks "
              f"x {table.shape[0]} seed(s) of real proxy scores\n")
        print(f"Per-task spread of a paired difference between two candidates: {sd:.2f} points (mean over pairs); "
              f"residual SD {100 * residuals.std():.2f}, task-effect SD {100 * effects.std():.2f} points. "
              f"metatrain.race: {cfg.race.model_dump()}; a proxy training costs {per_training:.3f} units.\n")
        print("| budget | searches | false acceptances | rate (95 % CI) | best explorer passed the screen "
              "(the old rule's acceptances) | trainings, mean |")
        print("|---|---|---|---|---|---|")
        for budget in map(float, args.budgets.split(",")):
            row = simulate(params, space, tasks, effects, residuals, budget, per_training, args.searches)
            low, high = wilson(row["false"], row["searches"])
            print(f"| {budget:g} | {row['searches']} | {row['false']} | {100 * row['false'] / row['searches']:.1f} % "
                  f"[{100 * low:.1f}, {100 * high:.1f}] | {100 * row['screened'] / row['searches']:.1f} % | "
                  f"{row['trainings']:.0f} |", flush=True)
    print(f"\nMeasured on: {machine_description()}; {time.perf_counter() - start:.0f} s in all.")


if __name__ == "__main__":
    main()
