"""Decision rules side by side on the same proxy scores: which rule gives one answer for every seed?

For one of bench/adaptivity.py's tasks: prepare once (the base seed); for each search seed, sample
that seed's meta-train tasks exactly as `metatrain` does and score EVERY candidate the race offers
(TA-Wide, the anchors' points, the one-move explorers) on every task once, with the search's proxy
learner. Then replay each rule — a set of `metatrain.race` overrides — through the real racing
engine (`metaaug.search.engine.Race`) on those scores, and print what each seed would choose, how it was
decided and what it would have cost in proxy trainings. A score is a function of (policy, task)
(common random numbers), so a replay chooses what a real search under that rule chooses. Only
meta-train tasks are used, never the target.

    python bench/race_rules.py [--task position] [--seeds 10] [--tasks 24]
        [--rules "step=3,tasks=18;step=4,tasks=16"] [--candidates 12] [--keep DIR]

`--keep DIR` keeps the prepared data and the score table (`scores.npz`), which a rerun reuses.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adaptivity import task_params  # noqa: E402  the task builders of the adaptivity benchmark

from metaaug.config import MetatrainConfig, RaceConfig, load_params  # noqa: E402
from metaaug.distributed import World  # noqa: E402
from metaaug.search import (METHODS, Budget, Context, Entrant, Race, SearchSpace, SearchState,  # noqa: E402
                            anchor_points, explorer_points, meta_train_tasks)
from metaaug.search import scorer as search_scorer  # noqa: E402
from metaaug.ops import OP_NAMES  # noqa: E402
from metaaug.stages import prepare  # noqa: E402
from metaaug.tasks import load_prepared  # noqa: E402
from metaaug.timing import machine_description  # noqa: E402
from metaaug.training import set_threads  # noqa: E402


class TableScorer:
    """Answers the race's scoring jobs from a table scored beforehand (candidate x task)."""

    def __init__(self, tasks, keys: dict, table: np.ndarray):
        self.tasks, self.keys, self.table = tasks, keys, table

    def map(self, jobs):
        return [(float(self.table[self.keys[policy_key(policy)], t]), 0.0) for policy, t in jobs]


def policy_key(policy) -> tuple:
    return policy.ops, tuple(np.round(policy.weights, 9)), tuple(np.round(policy.mag_high, 9)), policy.layers


def candidates(space: SearchSpace, cfg: MetatrainConfig, count: int) -> tuple[list[str | None], list[str],
                                                                             list[np.ndarray]]:
    """`count` candidates: the references (TA-Wide, the anchors' points) and the one-move explorers from TA-Wide,
    built by the search's own functions: baseline names, explorer labels, points (the same for every seed)."""
    init = space.initial()
    named = anchor_points(space, cfg.anchors)[:count - 1]
    explorers = explorer_points(init, np.zeros(space.dim), count - 1 - len(named), space,
                                np.random.default_rng(0), moves_first=True, origin="TA-Wide")
    names = ["trivialaugment", *(name for name, _ in named)]
    return names, [label for label, _ in explorers], [init, *(p for _, p in named), *(p for _, p in explorers)]


def score_table(params, prepared, space, points, seeds: list[int], n_tasks: int, cache: Path) -> np.ndarray:
    """(seed, candidate, task) proxy scores, from the cache when it matches."""
    if cache.exists():
        saved = np.load(cache)
        if list(saved["seeds"]) == seeds and saved["scores"].shape[1:] == (len(points), n_tasks):
            return saved["scores"]
    cfg = params.metatrain
    settings = params.train.model_copy(update={"epochs": cfg.proxy_epochs, "width": cfg.proxy_width})
    scores = []
    for seed in seeds:
        tasks = seed_tasks(params, prepared, n_tasks, seed)
        with search_scorer(tasks, cfg, settings, World()) as scorer:  # the stage's workers and populations
            done = scorer.map([(space.policy(p), t) for p in points for t in range(n_tasks)])
        scores.append(np.array([value for value, _ in done]).reshape(len(points), n_tasks))
        print(f"scored seed {seed}: {len(points)} candidates x {n_tasks} tasks", flush=True)
    np.savez(cache, seeds=seeds, scores=np.stack(scores))
    return np.stack(scores)


def seed_tasks(params, prepared, n_tasks: int, seed: int):
    """The meta-train tasks metatrain samples under this seed (the stage's own call)."""
    return meta_train_tasks(prepared, params.tasks.shots, params.metatrain, n_tasks, seed)


def replay(params, prepared, space, names, labels, points, table, seeds, overrides: dict) -> list[dict]:
    """Race one bracket per seed on the table's scores: tasks beyond the racing ones are the confirmation pool."""
    cfg = params.metatrain.model_copy(update={"race": params.metatrain.race.model_copy(update=overrides),
                                              "method": "race"})
    keys = {policy_key(space.policy(p)): k for k, p in enumerate(points)}
    entrants = ([Entrant(p, f"{n}'s point", True, n) for p, n in zip(points, names)]
                + [Entrant(p, f"explorer: {label}", False) for p, label in zip(points[len(names):], labels)])
    runs = []
    for seed, scores in zip(seeds, table):
        state = SearchState("race", own=METHODS["race"].state())
        scorer = TableScorer(seed_tasks(params, prepared, table.shape[2], seed), keys, scores)
        ctx = Context(space, cfg, state, seed, lambda: None, lambda entry: None, Budget(1e9, 1.0), scorer,
                      confirm_start=cfg.race.tasks)
        verdict = Race(ctx).bracket(entrants, list(range(min(cfg.race.tasks, table.shape[2]))))
        runs.append({"seed": seed, "chosen": entrants[verdict.chosen].label,
                     "decision": f"{verdict.reference_rule.value} / {verdict.explorer_rule.value}",
                     "trainings": state.trainings, "tasks": verdict.tasks})
    return runs


def parse_rules(text: str) -> list[dict]:
    fields = RaceConfig.model_fields
    rules = []
    for rule in text.split(";"):
        pairs = [item.split("=") for item in rule.split(",") if item]
        rules.append({key: type(fields[key].default)(value) for key, value in pairs})
    return rules


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--task", default="position", help="one of digits-5-9, digits-0-4, intensity, position")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--tasks", type=int, default=24, help="tasks scored per seed (the longest race replayed)")
    ap.add_argument("--rules", default="step=3,tasks=18;step=4,tasks=16;step=4,tasks=16,confidence=0.95",
                    help="metatrain.race overrides; tasks past a rule's `tasks` are its confirmation pool")
    ap.add_argument("--candidates", type=int, default=12, help="references and one-move explorers scored")
    ap.add_argument("--keep", type=Path, help="work here and keep the scores (default: a temporary directory)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="metaaug-rules-") as scratch:
        work = args.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        params = task_params(load_params(args.params), args.task, work, 20)
        if not (work / "prepared").exists():
            prepare.run(params, work / "prepared")
        prepared = load_prepared(work / "prepared")
        space = SearchSpace(tuple(params.metatrain.ops or OP_NAMES), channels=prepared.meta_images.shape[-1])
        set_threads(prepared.meta_images.shape[1])
        names, labels, points = candidates(space, params.metatrain, args.candidates)
        seeds = list(range(args.seeds))
        table = score_table(params, prepared, space, points, seeds, args.tasks, work / "scores.npz")
        print(f"\n## {args.task}: {len(points)} candidates, search seeds 0-{args.seeds - 1}, up to {args.tasks} "
              "tasks each\n")
        print("| rule | modal choice | seeds | other choices | decisions | proxy trainings, mean (range) |")
        print("|---|---|---|---|---|---|")
        for overrides in parse_rules(args.rules):
            runs = replay(params, prepared, space, names, labels, points, table, seeds, overrides)
            choices = collections.Counter(run["chosen"] for run in runs)
            (modal, share), others = choices.most_common(1)[0], choices.most_common()[1:]
            decisions = collections.Counter(run["decision"] for run in runs)
            trainings = [run["trainings"] for run in runs]
            print(f"| {', '.join(f'{k}={v}' for k, v in overrides.items()) or 'params.yaml'} | {modal} | "
                  f"{share}/{len(runs)} | {'; '.join(f'{k} ({v})' for k, v in others) or '—'} | "
                  f"{', '.join(f'{k} {v}' for k, v in decisions.items())} | "
                  f"{np.mean(trainings):.0f} ({min(trainings)}–{max(trainings)}) |", flush=True)
    print(f"\nMeasured on: {machine_description()}.")


if __name__ == "__main__":
    main()
