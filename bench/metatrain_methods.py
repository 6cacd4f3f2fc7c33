"""Compare meta-learning methods on the meta-VALIDATION split (never the target's test split).

For each method: run its search on meta-train tasks (prepared meta-train images),
then score the chosen policy — and the references none / TrivialAugment-Wide —
by full-length trainings on meta-validation tasks (held-back images of the
meta-train classes), all on the same tasks and initialisations. Prints one
table: meta-val accuracy, paired difference to TrivialAugment-Wide with a
bootstrap 95 % CI, search wall time and trainings. This is how metatrain's
method and settings are chosen.

    python bench/metatrain_methods.py [--prepared data/prepared] [--val-tasks 24]
        [--methods race,race:no-anchors,cem]

`METHOD:no-anchors` runs METHOD with `metatrain.anchors: []`: its first bracket is
TrivialAugment-Wide and explorers around it only, without the baselines' points.
`METHOD+key=value+...` overrides METHOD's own settings, `metatrain.METHOD` (e.g. `race+confidence=0.95`).

With `--seeds N` each method runs under search seeds 0..N-1 (the meta-train tasks and
the explorers vary), and the table gives, per method, how often its modal choice
came out, its mean meta-val regret against the best fixed arm on the same
meta-val tasks, and its mean cost — the stability of a decision rule, measured
without the target. (The rule before the reference race was measured the same way, with an
`--old-metalearn` option loading the old metalearn.py; that file no longer imports against
the typed config.)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from metaaug.config import load_params
from metaaug.search import SearchSpace, policy_summary, sample_tasks, score, search, tasks_needed
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
    ap.add_argument("--methods", default="race,race:no-anchors,cem")
    ap.add_argument("--seeds", type=int, default=0, help="run each method under seeds 0..N-1 (stability table)")
    args = ap.parse_args()
    if args.seeds:
        return stability(args)
    params, images, labels, is_val, val_tasks = meta_val(args)
    settings, shots, mp = params.train, params.tasks.shots, params.metatrain
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


def meta_val(args):
    """params, the meta-train images, labels and hold-out mask, and the meta-validation tasks."""
    params = load_params(args.params)
    prepared = load_prepared(args.prepared)
    set_threads(prepared.meta_images.shape[1])
    images, labels = np.asarray(prepared.meta_images), np.asarray(prepared.meta_labels)
    is_val = np.asarray(prepared.meta_is_val)
    mp = params.metatrain
    val_tasks = sample_tasks(images[is_val], labels[is_val], params.tasks.shots, mp.ways, mp.query_per_class,
                             args.val_tasks, seed=10_000 + params.seed)
    return params, images, labels, is_val, val_tasks


def stability(args) -> None:
    """Each method under seeds 0..N-1: modal choice share, meta-val regret vs the best fixed arm, cost."""
    import collections
    import json

    from metaaug import search

    params, images, labels, is_val, val_tasks = meta_val(args)
    settings, shots, mp = params.train, params.tasks.shots, params.metatrain
    one_run = float(np.median([timed(lambda: score(None, t, settings)) for t in val_tasks[:4]][1:]))
    channels = images.shape[-1]
    space = SearchSpace(tuple(mp.ops or OP_NAMES), channels=channels)
    names = {json.dumps(space.policy(p).__dict__, sort_keys=True, default=str): name
             for name, p in [("trivialaugment", space.initial()), *search.anchor_points(space, mp.anchors)]}
    fixed = {"none": None, **{n: fixed_policy(n, image_channels=channels)
                              for n in ("handcrafted", "randaugment", "trivialaugment")}}
    val = {n: np.array([score(p, t, settings) for t in val_tasks]) for n, p in fixed.items()}
    best_fixed = max(val, key=lambda n: val[n].mean())
    print("meta-val accuracy of the fixed arms: " + ", ".join(f"{n} {100 * val[n].mean():.2f}" for n in fixed),
          flush=True)
    methods = [m for m in args.methods.split(",") if m]
    rows = []
    for method in methods:
        name, _, rest = method.partition("+")
        name, _, variant = name.partition(":")
        overrides = dict(kv.split("=") for kv in rest.split("+") if kv)
        chosen, costs = [], []
        for seed in range(args.seeds):
            own = getattr(mp, name)
            cfg = mp.model_copy(update={"method": name, **({"anchors": []} if variant == "no-anchors" else {}),
                                        name: own.model_copy(update={k: type(getattr(own, k))(v)
                                                                     for k, v in overrides.items()})})
            tasks = sample_tasks(images[~is_val], labels[~is_val], shots, mp.ways, mp.query_per_class,
                                 search.tasks_needed(cfg), seed)
            with tempfile.TemporaryDirectory() as d:
                start = time.perf_counter()
                state = search.search(space, tasks, cfg, settings, seed, Path(d) / "ckpt.json")
                costs.append((time.perf_counter() - start, state.trainings))
            policy = space.policy(np.array(state.best))
            key = json.dumps(policy.__dict__, sort_keys=True, default=str)
            chosen.append(key)
            if key not in val:
                val[key] = np.array([score(policy, t, settings) for t in val_tasks])
            print(f"{method} seed {seed}: {names.get(key, 'explorer: ' + policy_summary(policy))}, "
                  f"meta-val {100 * val[key].mean():.2f}, {state.trainings} trainings", flush=True)
        counts = collections.Counter(chosen)
        modal, n_modal = counts.most_common(1)[0]
        regret = np.mean([100 * (val[k].mean() - val[best_fixed].mean()) for k in chosen])
        rows.append((method, names.get(modal, "explorer"), f"{n_modal}/{len(chosen)}", len(counts), regret,
                     np.mean([s for s, _ in costs]) / one_run, np.mean([t for _, t in costs])))
    print(f"machine: {machine_description()}; one full training {one_run:.2f} s on 1 thread; meta-val tasks: "
          f"{len(val_tasks)}; best fixed arm on meta-val: {best_fixed} ("
          + ", ".join(f"{n} {100 * val[n].mean():.2f}" for n in fixed) + ")")
    print("| method | modal choice | seeds | distinct | mean meta-val regret vs best fixed (points) | search × one "
          "training | proxy trainings |")
    print("|---|---|---|---|---|---|---|")
    for method, modal, share, distinct, regret, cost, trainings in rows:
        print(f"| {method} | {modal} | {share} | {distinct} | {regret:+.2f} | {cost:.1f}× | {trainings:.0f} |")


if __name__ == "__main__":
    main()
