"""Compare meta-learning methods on the meta-VALIDATION split (never the target's test split).

For each method: run its search on meta-train tasks (prepared meta-train images),
then score the chosen policy — and the references none / TrivialAugment-Wide —
by full-length trainings on meta-validation tasks (held-back images of the
meta-train classes), all on the same tasks and initialisations. Prints one
table: meta-val accuracy, paired difference to TrivialAugment-Wide with a
bootstrap 95 % CI, search wall time and trainings. This is how metatrain's
method and settings are chosen.

    python bench/metatrain_methods.py [--prepared data/prepared] [--val-tasks 12]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from metaaug.config import load_params
from metaaug.metalearn import SearchSpace, sample_tasks, score, search, tasks_needed
from metaaug.ops import OP_NAMES
from metaaug.pipeline import search_config, set_threads
from metaaug.policies import fixed_policy
from metaaug.stats import paired_difference
from metaaug.tasks import load_prepared
from metaaug.training import TrainSettings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--val-tasks", type=int, default=12)
    ap.add_argument("--methods", default="sh_random,cem")
    args = ap.parse_args()
    params = load_params(args.params)
    prepared = load_prepared(args.prepared)
    set_threads(prepared.meta_images.shape[1])
    images, labels = np.asarray(prepared.meta_images), np.asarray(prepared.meta_labels)
    is_val = np.asarray(prepared.meta_is_val)
    settings = TrainSettings.from_params(params["train"])
    shots, mp = params["tasks"]["shots"], params["metatrain"]
    val_tasks = sample_tasks(images[is_val], labels[is_val], shots, mp["ways"], mp["query_per_class"],
                             args.val_tasks, seed=10_000 + params["seed"])
    start = time.perf_counter()
    score(None, val_tasks[0], settings)
    one_run = time.perf_counter() - start

    space = SearchSpace(tuple(mp["ops"]) if mp["ops"] else OP_NAMES)
    channels = images.shape[-1]
    policies = {"none": None, "trivialaugment": fixed_policy("trivialaugment", image_channels=channels)}
    cost = {}
    for method in args.methods.split(","):
        cfg = search_config({**params, "metatrain": {**mp, "method": method}})
        tasks = sample_tasks(images[~is_val], labels[~is_val], shots, mp["ways"], mp["query_per_class"],
                             tasks_needed(cfg), params["seed"])
        with tempfile.TemporaryDirectory() as d:
            start = time.perf_counter()
            state = search(space, tasks, cfg, settings, Path(d) / "ckpt.json")
            cost[method] = (time.perf_counter() - start, state.trainings)
        policies[f"learned:{method}"] = space.policy(np.array(state.best))

    acc = {name: np.array([score(p, t, settings) for t in val_tasks]) for name, p in policies.items()}
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} torch thread(s), "
          f"one full training {one_run:.2f} s; meta-val tasks: {len(val_tasks)}")
    print(f"{'arm':24s} {'meta-val acc':>12s} {'- TA (points, 95% CI)':>26s} {'search':>18s}")
    for name, a in acc.items():
        d = paired_difference(a, acc["trivialaugment"])
        seconds, trainings = cost.get(name.split(":")[-1], (0.0, 0))
        extra = f"{seconds / one_run:6.1f}x ({trainings} tr.)" if name.startswith("learned") else ""
        print(f"{name:24s} {100 * a.mean():12.2f} {d['mean']:+8.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}] {extra:>18s}")


if __name__ == "__main__":
    main()
