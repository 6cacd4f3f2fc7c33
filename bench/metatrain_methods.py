"""Compare meta-learning methods on the meta-VALIDATION split (never the target's test split).

For each method: run its search on meta-train tasks (prepared meta-train images),
then score the chosen policy — and the references none / TrivialAugment-Wide —
by full-length trainings on meta-validation tasks (held-back images of the
meta-train classes), all on the same tasks and initialisations. Prints one
table: meta-val accuracy, paired difference to TrivialAugment-Wide with a
bootstrap 95 % CI, search wall time and trainings. This is how metatrain's
method and settings are chosen.

    python bench/metatrain_methods.py [--prepared data/prepared] [--val-tasks 24]
        [--methods sh_random,sh_random:no-anchors,cem]

`METHOD:no-anchors` runs METHOD with `metatrain.anchors: []`: its first bracket is
TrivialAugment-Wide and explorers around it only, without the baselines' points.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from metaaug.config import load_params
from metaaug.metalearn import SearchSpace, policy_summary, sample_tasks, score, search, tasks_needed
from metaaug.ops import OP_NAMES
from metaaug.timing import machine_description
from metaaug.policies import fixed_policy
from metaaug.stats import paired_difference
from metaaug.tasks import load_prepared
from metaaug.training import set_threads


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--val-tasks", type=int, default=24)
    ap.add_argument("--methods", default="sh_random,sh_random:no-anchors,cem")
    args = ap.parse_args()
    params = load_params(args.params)
    prepared = load_prepared(args.prepared)
    set_threads(prepared.meta_images.shape[1])
    images, labels = np.asarray(prepared.meta_images), np.asarray(prepared.meta_labels)
    is_val = np.asarray(prepared.meta_is_val)
    settings, shots, mp = params.train, params.tasks.shots, params.metatrain
    val_tasks = sample_tasks(images[is_val], labels[is_val], shots, mp.ways, mp.query_per_class,
                             args.val_tasks, seed=10_000 + params.seed)
    one_run = float(np.median([timed(lambda: score(None, t, settings)) for t in val_tasks[:4]][1:]))  # after warm-up

    channels = images.shape[-1]
    space = SearchSpace(tuple(mp.ops or OP_NAMES), channels=channels)
    policies = {"none": None, **{name: fixed_policy(name, image_channels=channels)
                                 for name in ("handcrafted", "randaugment", "trivialaugment")}}
    cost = {}
    for method in args.methods.split(","):
        name, _, variant = method.partition(":")
        cfg = mp.model_copy(update={"method": name, **({"anchors": []} if variant == "no-anchors" else {})})
        tasks = sample_tasks(images[~is_val], labels[~is_val], shots, mp.ways, mp.query_per_class,
                             tasks_needed(cfg), params.seed)
        with tempfile.TemporaryDirectory() as d:
            start = time.perf_counter()
            state = search(space, tasks, cfg, settings, params.seed, Path(d) / "ckpt.json")
            cost[method] = (time.perf_counter() - start, state.trainings)
        policies[f"learned:{method}"] = space.policy(np.array(state.best))
        print(f"{method}: {policy_summary(policies[f'learned:{method}'])}, {space.layers(np.array(state.best))} layer(s)",
              flush=True)

    acc = {name: np.array([score(p, t, settings) for t in val_tasks]) for name, p in policies.items()}
    print(f"machine: {machine_description()}; one full training {one_run:.2f} s on 1 thread; "
          f"meta-val tasks: {len(val_tasks)}")
    print(f"{'arm':28s} {'meta-val acc':>12s} {'- TA (points, 95% CI)':>26s} {'search':>18s}")
    for name, a in acc.items():
        d = paired_difference(a, acc["trivialaugment"])
        seconds, trainings = cost.get(name.partition(":")[2], (0.0, 0))
        extra = f"{seconds / one_run:6.1f}x ({trainings} tr.)" if name.startswith("learned") else ""
        print(f"{name:28s} {100 * a.mean():12.2f} {d['mean']:+8.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}] {extra:>18s}")


if __name__ == "__main__":
    main()
