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
from metaaug.metalearn import SearchSpace, baseline_point, sample_tasks, search, tasks_needed
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
    train_idx = np.flatnonzero(~np.asarray(prepared.meta_is_val))
    logged = {"metatrain": cfg.model_dump(), "seed": params.seed, "tasks.shots": params.tasks.shots}
    with tracking.stage_run("metatrain", logged, params.tracking.experiment, {"prepare": prepared_dir},
                            output=out, files={timing: TIMING_KIND}):
        tracking.name_run("metatrain", pipeline_facts(prepared.manifest))
        start = time.perf_counter()
        tasks = sample_tasks(np.asarray(prepared.meta_images)[train_idx], np.asarray(prepared.meta_labels)[train_idx],
                             params.tasks.shots, cfg.ways, cfg.query_per_class, tasks_needed(cfg), params.seed)
        ckpt = checkpoint_path(out, params, prepared_dir)
        state = search(space, tasks, cfg, params.train, params.seed, ckpt,
                       log=lambda entry: tracking.log_metrics(rung_metrics(entry), step=entry["rung"]))
        seconds = time.perf_counter() - start
        policy = space.policy(np.array(state.best))
        baseline = baseline_point(space, state.best, cfg.anchors)
        with atomic_dir(out, "metatrain", {"prepare": prepared_dir}) as tmp:
            provenance = {"method": cfg.method, "meta_source": prepared.manifest["meta"]["source"],
                          "meta_classes": prepared.manifest["meta"]["classes"], "trainings": state.trainings,
                          "baseline_point": baseline}
            save_policy(policy, tmp / "policy.json", provenance)
            export_albumentations(policy, tmp / "policy_albumentations.json")
            write_json(tmp / "checkpoint.json", {k: v for k, v in state.__dict__.items() if k != "seconds"})
            write_json(tmp / "search.json", {"method": cfg.method, "trainings": state.trainings,
                                             "proxy_epochs": cfg.proxy_epochs, "proxy_width": cfg.proxy_width,
                                             "history": state.history, "finalists": state.finalists,
                                             "theta": state.best})
        ckpt.unlink(missing_ok=True)
        workers = cfg.workers or os.cpu_count() or 1
        tracking.log_metrics({"search.seconds": seconds, "search.proxy_seconds": state.seconds,
                              "search.workers": workers, "search.trainings": state.trainings})
        write_timing(timing, TIMING_KIND, search_seconds=seconds, proxy_seconds=state.seconds, workers=workers)
        log_chosen_policy(policy, baseline)
        tracking.log_artifacts(out, "policy")
        print(f"metatrain: {cfg.method}, {state.trainings} proxy trainings in {seconds:.1f} s")
        for f in state.finalists:
            print(f"metatrain: final rung, {f['tasks']} tasks: {100 * f['score']:.2f} % "
                  f"{'reference' if f['reference'] else 'explorer '} {f['policy']}, {f['layers']} layer(s)")
        print("metatrain: chosen policy -> " + str(out / "policy.json"))
        for line in describe(policy, baseline):
            print(f"metatrain:   {line}")


def rung_metrics(entry: dict) -> dict:
    """A rung's record for MLflow, under names that say it is the rung's best candidate, not the answer."""
    return {"rung_best": {("score" if k == "best_score" else k): v for k, v in entry.items()
                          if k not in ("rung", "trainings")},
            "trainings": entry["trainings"]}


def log_chosen_policy(policy: Policy, baseline: str | None) -> None:
    """The answer as the run's final metrics: every op's weight and magnitude range, the depth, and the
    baseline it is the point of (tag `metaaug.policy`)."""
    tracking.log_metrics({"policy": {"layers": policy.layers, **{
        field: dict(zip(policy.ops, getattr(policy, field))) for field in ("weights", "mag_low", "mag_high")}}})
    tracking.set_tags({"metaaug.policy": f"{baseline} point" if baseline else "searched"})


def command(params: Path = PARAMS, prepared: Path = PREPARED, out: Path = POLICY,
            timing: Path = typer.Option(Path("timings/metatrain.json"), help="Where the wall times go.")):
    """Meta-learn the augmentation policy on tasks from the meta-train classes (resumes from its checkpoint)."""
    run(load_params(params), prepared, out, timing)
