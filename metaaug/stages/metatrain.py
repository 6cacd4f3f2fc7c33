"""Stage `metatrain`: search the augmentation policy on tasks from the meta-train classes (`models/policy/`).

The output is byte-identical run to run (no run id, no timing in it); wall times go to the
MLflow run and to `timings/metatrain.json`. A checkpoint beside the output, keyed by everything
that determines the search, lets a killed run resume where it stopped.
"""

from __future__ import annotations

import hashlib
import os
import json
import time
from pathlib import Path

import numpy as np
import typer

from metaaug import tracking
from metaaug.config import Params, load_params
from metaaug.io import atomic_dir, write_json
from metaaug.search import SearchSpace, downstream_flops, meta_train_tasks, search, tasks_needed
from metaaug.ops import OP_NAMES
from metaaug.policies import Policy, describe, export_albumentations, save_policy
from metaaug.stages import PARAMS, POLICY, PREPARED, pipeline_facts
from metaaug.tasks import load_prepared
from metaaug.timing import write_timing
from metaaug.training import RECIPE, set_threads

TIMING_KIND = "metatrain.timing"


def checkpoint_path(out: Path, params: Params, prepared_dir: Path) -> Path:
    """Beside the output (which is replaced atomically), keyed by everything that determines the search."""
    settings = json.dumps({"metatrain": params.metatrain.model_dump(), "train": params.train.model_dump(include=RECIPE),
                           "shots": params.tasks.shots, "seed": params.seed}, sort_keys=True)
    key = tracking.dir_digest(prepared_dir)[:12] + "-" + hashlib.sha256(settings.encode()).hexdigest()[:12]
    return out.parent / f".{out.name}.checkpoint-{key}.json"


def run(params: Params, prepared_dir: Path, out: Path, timing: Path | None = None) -> None:
    prepared = load_prepared(prepared_dir)
    cfg = params.metatrain
    space = SearchSpace(tuple(cfg.ops or OP_NAMES), channels=prepared.meta_images.shape[-1])
    set_threads(prepared.meta_images.shape[1])
    logged = {"metatrain": cfg.model_dump(), "seed": params.seed, "tasks.shots": params.tasks.shots}
    with tracking.stage_run("metatrain", logged, params.tracking.experiment, {"prepare": prepared_dir},
                            output=out, files={timing: TIMING_KIND}):
        tracking.name_run("metatrain", pipeline_facts(prepared.manifest))
        start = time.perf_counter()
        tasks = meta_train_tasks(prepared, params.tasks.shots, cfg, tasks_needed(cfg), params.seed)
        ckpt = checkpoint_path(out, params, prepared_dir)
        state = search(space, tasks, cfg, params.train, params.seed, ckpt,
                       log=lambda entry: tracking.log_metrics(rung_metrics(entry), step=entry["rung"]),
                       downstream=one_downstream_training(prepared, params))
        seconds = time.perf_counter() - start
        policy = space.policy(np.array(state.best))
        baseline = state.finalists[0]["baseline"] if state.finalists else None  # a fixed baseline's point?
        with atomic_dir(out, "metatrain", {"prepare": prepared_dir}) as tmp:
            provenance = {"method": cfg.method, "meta_source": prepared.manifest["meta"]["source"],
                          "meta_classes": prepared.manifest["meta"]["classes"], "trainings": state.trainings,
                          "baseline_point": baseline}
            save_policy(policy, tmp / "policy.json", provenance)
            export_albumentations(policy, tmp / "policy_albumentations.json")
            write_json(tmp / "checkpoint.json", {k: v for k, v in state.__dict__.items() if k != "seconds"})
            write_json(tmp / "search.json", {"method": cfg.method, "trainings": state.trainings,
                                             "budget": cfg.budget, "spent": state.spent, "rounds": state.rounds,
                                             "stopped": state.done,
                                             "proxy_epochs": cfg.proxy_epochs, "proxy_width": cfg.proxy_width,
                                             "history": state.history, "finalists": state.finalists,
                                             "theta": state.best})
        ckpt.unlink(missing_ok=True)
        workers = cfg.workers or os.cpu_count() or 1
        tracking.log_metrics({"search.seconds": seconds, "search.proxy_seconds": state.seconds,
                              "search.workers": workers, "search.trainings": state.trainings,
                              "search.budget": cfg.budget, "search.spent": state.spent})
        write_timing(timing, TIMING_KIND, search_seconds=seconds, proxy_seconds=state.seconds, workers=workers)
        log_chosen_policy(policy, baseline)
        log_evidence(state.finalists)
        tracking.log_artifacts(out, "policy")
        print(f"metatrain: {cfg.method}, {state.trainings} proxy trainings in {seconds:.1f} s; spent {state.spent:.2f} "
              f"of a budget of {cfg.budget:g} downstream trainings (counted in operations)")
        for r in state.rounds:
            print(f"metatrain: round {r['round']}: {r['candidates']} candidates, {r['chosen']} kept "
                  f"({r['trainings']} trainings, {r['spent']:.2f} spent so far)")
        if state.done:
            print(f"metatrain: refinement stopped: {state.done}")
        for line in evidence_lines(state.finalists):
            print(f"metatrain: {line}")
        print("metatrain: chosen policy -> " + str(out / "policy.json"))
        for line in describe(policy, baseline):
            print(f"metatrain:   {line}")


def one_downstream_training(prepared, params: Params) -> int:
    """Floating-point operations of one downstream training on a target split: the budget's unit."""
    images = prepared.target_images
    classes = len(prepared.manifest["target"]["classes"])
    return downstream_flops(params.train, images.shape[-1], images.shape[1], classes,
                            len(prepared.manifest["splits"][0]["support"]))


def rung_metrics(entry: dict) -> dict:
    """A rung's record for MLflow, under names that say it is the rung's best candidate, not the answer."""
    return {"rung_best": {("score" if k == "best_score" else k): v for k, v in entry.items()
                          if k not in ("rung", "trainings")},
            "trainings": entry["trainings"]}


def evidence_lines(finalists: list[dict]) -> list[str]:
    """How sure the search is: the chosen policy and how it was decided, then every other finalist's
    paired difference to it (95 % t-interval, points, on the tasks both were scored on) and its status."""
    lines = []
    for f in finalists:
        name = f["candidate"]
        if f["status"] == "chosen":
            lines.append(f"chosen: {name}, {100 * f['score']:.2f} % on {f['tasks']} tasks; {f['decision']}")
        else:
            ci = f"[{f['ci_low']:+.2f}, {f['ci_high']:+.2f}]" if f["ci_low"] is not None else "[n/a]"
            lines.append(f"  {name}: {f['diff_to_chosen']:+.2f} points vs chosen, 95 % CI {ci}, "
                         f"{f['paired_tasks']} paired tasks; {f['status']}; {f['policy']}, {f['layers']} layer(s)")
    return lines


def log_evidence(finalists: list[dict]) -> None:
    """The finalists' paired differences to the chosen policy as metrics, the decision as tags."""
    tracking.log_dict({"finalists": finalists}, "search_finalists.json")
    for k, f in enumerate(finalists):
        if f["status"] != "chosen" and f["ci_low"] is not None:
            tracking.log_metrics({"finalist": {f["baseline"] or f"explorer{k}": {
                "diff_to_chosen_points": f["diff_to_chosen"], "ci95_low_points": f["ci_low"],
                "ci95_high_points": f["ci_high"], "paired_tasks": f["paired_tasks"]}}})
    if finalists:
        tracking.set_tags({"search.decision": finalists[0]["decision"][:5000],
                           "search.chosen": finalists[0]["candidate"]})


def log_chosen_policy(policy: Policy, baseline: str | None) -> None:
    """The answer as the run's final metrics: every op's weight and magnitude range, the depth, and the
    baseline it is the point of (tag `metaaug.policy`)."""
    tracking.log_metrics({"policy": {"layers": policy.layers, **{
        field: dict(zip(policy.ops, getattr(policy, field))) for field in ("weights", "mag_low", "mag_high")}}})
    tracking.set_tags({"metaaug.policy": f"{baseline} point" if baseline else "searched"})


def command(params: Path = PARAMS, prepared: Path = PREPARED, out: Path = POLICY,
            timing: Path = typer.Option(None, help="Where the wall times go (dvc.yaml: timings/metatrain.json).")):
    """Meta-learn the augmentation policy on tasks from the meta-train classes (resumes from its checkpoint)."""
    run(load_params(params), prepared, out, timing)
