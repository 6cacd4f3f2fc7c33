"""Which downstream learner `train.model: auto` trains: decided by a paired trial, not by the image size.

Before the search, the learner stage trains both learners (metaaug.models: the small CNN and the ResNet) with the
downstream recipe (`train.epochs`, `train.width`, ..., no augmentation) on the same meta-train tasks, shaped
like the target task (its number of classes and its images per class, as far as the meta-train classes
allow), same seeds, and scores each on the task's clean query images. The ResNet costs several times the
operations of a training, so it is chosen only when it is *clearly* better: the 95 % t-interval of the paired
difference (ResNet minus small CNN, points) lies above 0. Otherwise the cheaper small CNN keeps the job, as on
a tie. No threshold is tuned to a data set: the interval alone decides.

The trial runs in rungs, scoring 2, then 4, 8 and at most 12 tasks in all (RUNGS): it stops as soon as the
interval excludes 0, or when the ResNet is not ahead on average (then more tasks could at best make it a tie,
which the small CNN keeps). The first rung is small because the ResNet's trainings are the trial's cost (a
ResNet training is 4-6x a small CNN's at 32 px): where the ResNet is not ahead, two of them settle it, one a
core on two cores; where it is ahead, the later rungs decide by the interval. The answer is a function of the
prepared data and the params alone (byte-identical run to run); the learner stage writes it to
`models/learner/learner.json`, metatrain searches with it, and every train stage reads it back (each runs the
same trial itself where that file does not match). `train.model: small_cnn | resnet` skips the trial.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from metaaug import workers
from metaaug.config import Params
from metaaug.files import output_path, read_json
from metaaug.models import resolve_model
from metaaug.publish import write_json
from metaaug.stats import t_interval
from metaaug.training import RECIPE

if TYPE_CHECKING:
    from metaaug.search.tasks import Task

CHEAP, COSTLY = "small_cnn", "resnet"
RUNGS = (2, 4, 8, 12)  # tasks scored in all after each rung: fixed, so the answer does not depend on the workers
FILE = "learner.json"


def trial_tasks(prepared, params: Params) -> list[Task]:
    """Meta-train tasks shaped like the target: its classes (at most the meta-train ones) and its support
    images per class, capped at half the smallest meta-train class so that query images remain. (The search
    package is imported here, not with this module: the stages that only read the answer skip its imports.)"""
    from metaaug.search.tasks import sample_tasks

    manifest = prepared.manifest
    ways = len(manifest["target"]["classes"])
    shots = max(1, len(manifest["splits"][0]["support"]) // ways)
    train = np.flatnonzero(~np.asarray(prepared.meta_is_val))
    images, labels = np.asarray(prepared.meta_images)[train], np.asarray(prepared.meta_labels)[train]
    smallest = int(np.bincount(labels)[np.unique(labels)].min())
    return sample_tasks(images, labels, min(shots, max(1, smallest // 2)), ways, params.metatrain.query_per_class,
                        RUNGS[-1], params.seed)


def trial_key(tasks: list[Task], params: Params) -> str:
    """What determines the trial's answer: the tasks' images, labels and seeds, and the recipe."""
    digest = hashlib.sha256(json.dumps(params.train.model_dump(include=RECIPE - {"model"}), sort_keys=True).encode())
    for t in tasks:
        for part in (t.support_x, t.support_y, t.query_x, t.query_y, t.seed):
            digest.update(np.ascontiguousarray(np.asarray(part)).tobytes())
    return digest.hexdigest()[:16]


def decide(scores: dict[str, list[float]], final: bool) -> tuple[str | None, str]:
    """(learner or None to score more tasks, the rule that decided) from the paired scores so far."""
    mean, low, high = difference(scores)
    n = len(scores[COSTLY])
    if n >= 2 and low > 0:
        return COSTLY, f"the ResNet is clearly better on {n} paired tasks (95 % CI above 0)"
    if n >= 2 and high < 0:
        return CHEAP, f"the small CNN is clearly better on {n} paired tasks (95 % CI below 0)"
    if mean <= 0:
        return CHEAP, f"the ResNet is not ahead on {n} paired tasks: the cheaper small CNN keeps the job"
    if final:
        return CHEAP, f"a tie on {n} paired tasks (95 % CI includes 0): the cheaper small CNN keeps the job"
    return None, ""


def difference(scores: dict[str, list[float]]) -> tuple[float, float, float]:
    """Mean ResNet-minus-small-CNN difference (points) with its 95 % t-interval."""
    d = 100.0 * (np.asarray(scores[COSTLY]) - np.asarray(scores[CHEAP]))
    low, high = t_interval(d)
    return float(d.mean()), low, high


def _score(job: tuple[str, int]) -> tuple[float, float]:
    """A worker's entry: (query accuracy, seconds) of learner `model` trained on task `t`."""
    from metaaug.search.scoring import score_population  # imported by trial() before the workers fork

    model, t = job
    shared = workers.state()
    start = time.perf_counter()
    recipe = shared["recipe"].model_copy(update={"model": model})
    accuracy = score_population([(None, shared["tasks"][t])], recipe, shared["device"])[0]
    return accuracy, time.perf_counter() - start


def trial(tasks: list[Task], params: Params, device, n_workers: int) -> dict:
    """Score both learners rung by rung until `decide` settles; the evidence (seconds apart: they vary)."""
    from metaaug.search.budget import training_flops
    from metaaug.search.scoring import score_population  # noqa: F401  (before the workers fork: they inherit it)

    scores, seconds = {COSTLY: [], CHEAP: []}, {COSTLY: [], CHEAP: []}
    with workers.Pool(n_workers, {"tasks": tasks, "recipe": params.train, "device": device}) as pool:
        for start, end in zip((0, *RUNGS), RUNGS):
            end = min(end, len(tasks))
            jobs = [(m, t) for m in (COSTLY, CHEAP) for t in range(start, end)]
            for (m, _), (accuracy, sec) in zip(jobs, pool.map(_score, jobs)):
                scores[m].append(accuracy)
                seconds[m].append(sec)
            chosen, rule = decide(scores, final=end >= len(tasks))
            if chosen:
                break
    mean, low, high = difference(scores)
    x = tasks[0].support_x
    flops = {m: training_flops(x.shape[1], x.shape[-1], tasks[0].n_classes, params.train.width, m, len(x),
                               params.train.epochs) for m in (CHEAP, COSTLY)}
    return {"model": chosen, "requested": "auto", "rule": rule, "key": trial_key(tasks, params),
            "tasks": len(scores[COSTLY]), "ways": tasks[0].n_classes, "shots": len(x) // tasks[0].n_classes,
            "image": list(x.shape[1:]), "scores": scores, "mean_accuracy": {m: 100 * float(np.mean(s))
                                                                           for m, s in scores.items()},
            "difference": {"mean": mean, "ci_low": low, "ci_high": high},
            "cost_ratio": flops[COSTLY] / flops[CHEAP], "seconds": {m: float(np.median(s)) for m, s in seconds.items()}}


def choose(prepared, params: Params, device, n_workers: int, known: Path | None = None) -> dict:
    """The learner `params.train.model` means here: a forced one as is; for `auto` the answer recorded in
    `known` (a learner.json) when it was decided on these very tasks and recipe, else the trial's."""
    if params.train.model != "auto":
        return {"model": resolve_model(params.train.model), "requested": params.train.model,
                "rule": f"forced by train.model = {params.train.model}"}
    tasks = trial_tasks(prepared, params)
    if known is not None and known.is_file():
        recorded = read_json(known)
        if recorded.get("requested") == "auto" and recorded.get("key") == trial_key(tasks, params):
            return recorded
    return trial(tasks, params, device, n_workers)


def needed(params: Params, learner_dir: Path | None) -> Path | None:
    """The learner stage's output where `train.model: auto` reads it (an input, verified like any other);
    None for a forced learner (no trial), or where no learner output is there (`metaaug metatrain` or `train`
    run without `metaaug learner` before: each runs the same trial itself)."""
    if params.train.model != "auto" or learner_dir is None or not output_path(learner_dir).exists():
        return None
    return learner_dir


def shared(world, compute) -> dict:
    """`compute()` on rank 0, its answer on every rank (torchrun); the trial runs once."""
    if world.size == 1:
        return compute()
    return world.broadcast(compute() if world.is_main else None)


def with_learner(params: Params, choice: dict) -> Params:
    """`params` with `train.model` the chosen learner: every training, budget and population size after the
    choice uses it (a forced or chosen name, never `auto`)."""
    return params.model_copy(update={"train": params.train.model_copy(update={"model": choice["model"]})})


def save(directory: Path, choice: dict) -> None:
    """learner.json: the answer and its evidence, without the wall times (the output is byte-identical)."""
    write_json(directory / FILE, recorded(choice))


def recorded(choice: dict) -> dict:
    """The choice as outputs keep it: no wall times."""
    return {k: v for k, v in choice.items() if k != "seconds"}


def markdown(choice: dict) -> list[str]:
    """The choice and its evidence in a few lines (MLflow run descriptions, the report)."""
    lines = [f"**Downstream learner: {choice['model']}** ({choice['rule']})."]
    if "difference" not in choice:
        return lines
    d = choice["difference"]
    acc = choice["mean_accuracy"]
    lines += ["", f"Paired trial on {choice['tasks']} meta-train tasks ({choice['ways']} classes x {choice['shots']} "
                  f"images, {'x'.join(map(str, choice['image']))}), the downstream recipe without augmentation: "
                  f"small CNN {acc[CHEAP]:.2f} %, ResNet {acc[COSTLY]:.2f} %; ResNet minus small CNN "
                  f"{d['mean']:+.2f} points, 95 % CI [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]. A ResNet training "
                  f"costs {choice['cost_ratio']:.1f}x the small CNN's operations"]
    if "seconds" in choice:
        s = choice["seconds"]
        lines[-1] += f"; here {s[COSTLY]:.1f} s against {s[CHEAP]:.1f} s a training (one thread)"
    lines[-1] += ". Force either with `train.model: small_cnn | resnet`."
    return lines

