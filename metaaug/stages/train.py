"""Stages `train` and `train_learned`: one arm on every target split (`models/downstream/<arm>/`), one nested
MLflow run per split.

Each fixed arm is its own DVC stage (`train@<arm>`, a `matrix:` over `train.arms`) that reads only the
prepared data and the learner (models/learner), so a new policy retrains only the learned arm (stage
`train_learned`, which reads the policy and its augmented bank too). Learners of one shape are trained
`train.population` at a time as one grouped network (metaaug.population), within the arm, so an arm's models
never depend on which other arms are trained; in `train.workers` forked processes of one thread each
(metaaug.workers). Under torchrun, `train.distributed` shares the populations among the ranks
(metaaug/distributed.py); rank 0 writes the outputs and the MLflow runs. The output is byte-identical run to
run: wall times go to MLflow and to `timings/train@<arm>.json` (`timings/train_learned.json`).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import torch
import typer

from metaaug import distributed, learners, ownership, runner, tracking, workers
from metaaug.arms import arm_augmenter
from metaaug.config import FIXED_ARMS, LEARNED, Params, load_params
from metaaug.declaration import Declaration, Output
from metaaug.errors import MetaaugError
from metaaug.files import output_path
from metaaug.publish import write_json
from metaaug.population import population_size, populations
from metaaug.progress import progress
from metaaug.stages import PARAMS
from metaaug.tasks import load_prepared
from metaaug.timing import timing_doc
from metaaug.training import pick_device, to_device, to_tensor, train_population

# An arm's models depend on the recipe, the shots and the learner (models/learner; where its answer does not
# apply, the trial's tasks: the seed and their query images); not on its processes or ranks, nor the tracking
# names, nor the other arms (train.arms says which train@<arm> stages exist, not what one writes).
PARAMS_OF_AN_ARM = ("seed", *(f"train.{key}" for key in ("epochs", "batch_size", "lr", "momentum", "weight_decay",
                                                          "width", "model", "device", "population")),
                    "tasks.shots", "metatrain.query_per_class")
READS = ("train.workers", "train.distributed", "tracking.experiment")
DECLARATION = Declaration(
    "train", inputs={"prepared": ("prepare", "data/prepared"), "learner": ("learner", "models/learner")},
    outputs={"out": Output("models/downstream/{arm}", "train")},
    params=PARAMS_OF_AN_ARM, reads=READS, timing=True, splits=True, matrix=("arm", "train.arms"))
NOT_OF_AN_ARM = {"arms", "learned_source", "workers"}  # train keys a fixed arm's run neither logs nor compares


def run(params: Params, arm: str, prepared_dir: Path, learner_dir: Path | None, out: Path,
        policy_dir: Path | None = None, augmented_dir: Path | None = None, timing: Path | None = None,
        declaration: Declaration = DECLARATION) -> None:
    """Train `arm` on every split into `out`; the learned arm (declaration: train_learned's) reads the policy, and
    its augmented bank where train.learned_source says so."""
    cfg = params.train
    if arm not in (FIXED_ARMS if declaration is DECLARATION else (LEARNED,)):
        expected = ("the learned arm (stage train_learned)" if arm == LEARNED
                    else f"a fixed arm ({', '.join(FIXED_ARMS)})")
        raise MetaaugError(f"--arm {arm}: not an arm this stage trains; expected {expected}")
    own = {"learned_source"} if arm == LEARNED else set()  # train keys its output depends on, beyond the recipe
    learner_dir = learners.needed(params, learner_dir)
    upstream = {"prepare": prepared_dir, "learner": learner_dir}
    if arm == LEARNED:
        upstream["metatrain"] = policy_dir
        if cfg.learned_source == "augmented":
            upstream["augment"] = augmented_dir
    digests = ownership.verify_inputs(upstream)  # before anything is read (stage_run reuses the digests)
    prepared = load_prepared(prepared_dir)
    x_all, y_all = to_tensor(prepared.target_images), torch.tensor(np.asarray(prepared.target_labels))
    n_classes, channels, size = len(prepared.manifest["target"]["classes"]), x_all.shape[1], x_all.shape[-1]
    splits = prepared.manifest["splits"]
    with distributed.world(cfg.distributed, pick_device(cfg.device)) as world:
        distributed.same_job(world, {**tracking.flatten({"train": cfg.model_dump(exclude=NOT_OF_AN_ARM - own),
                                                         "seed": params.seed, "arm": arm}),
                                     **{f"{name} output (digest)": d for name, d in digests.items()}})
        learner = learners.shared(world, lambda: learners.choose(prepared, params, world.device, workers.count(
            cfg.workers, world.device), learner_dir and output_path(learner_dir) / learners.FILE))
        cfg = learners.with_learner(params, learner).train  # the learner stage's answer (or the trial's here)
        x_all, y_all = to_device(x_all, world.device), to_device(y_all, world.device)
        source = cfg.learned_source if arm == LEARNED else None
        augment = arm_augmenter(arm, channels, source, policy_dir, augmented_dir)

        def train_group(group: list[int]) -> list[dict]:
            """Train one population of split learners; each member's result and its share of the wall time."""
            supports = [np.asarray(splits[i]["support"]) for i in group]
            start, start_ms = time.perf_counter(), int(time.time() * 1000)
            learners = train_population([x_all[s] for s in supports], [y_all[s] for s in supports], n_classes, cfg,
                                        [splits[i]["seed"] for i in group], [augment(s) for s in supports],
                                        world.device, ddp=world.mode == "ddp")
            seconds, end_ms = (time.perf_counter() - start) / len(group), int(time.time() * 1000)
            return [{"state": {k: v.cpu() for k, v in model.state_dict().items()}, "seconds": seconds,
                     "curves": curves, "start_ms": start_ms, "end_ms": end_ms} for model, curves in learners]

        jobs = list(range(len(splits)))
        per_population = 1 if world.mode == "ddp" else population_size(cfg.population, channels, size, n_classes,
                                                                       cfg.width, cfg.model)
        groups = populations(jobs, per_population)
        n_workers = 1 if world.mode == "ddp" else workers.count(cfg.workers, world.device)
        logged = {"train": cfg.model_dump(exclude=NOT_OF_AN_ARM - own - {"workers"}), "train.arm": arm,
                  "train.ranks": world.size,
                  "train.device_used": world.device.type, "train.population_size": per_population,
                  "train.worker_processes": n_workers, "tasks.shots": params.tasks.shots}
        paths = {"prepared": prepared_dir, "learner": learner_dir, "policy": upstream.get("metatrain"),
                 "augmented": upstream.get("augment"), "out": out, "timing": timing}
        stage = (runner.stage_run(declaration, logged, params.tracking.experiment,
                                  {k: v for k, v in paths.items() if k in {*declaration.inputs, *declaration.outputs,
                                                                           "timing"}})
                 if world.is_main else contextlib.nullcontext())
        mine = world.share(groups)
        with workers.Pool(n_workers, {"train_group": train_group}) as pool:
            # Handed to the workers before the MLflow run opens, so that they train while this process imports
            # MLflow and starts the run (seconds a stage on 2 cores); in-process (one worker), as they are read.
            trained = pool.map(_train_group, mine)
            with stage as run_:
                if world.is_main:
                    run_.headline = f"arm {arm}"
                    tracking.set_description("\n".join(learners.markdown(learner)))
                    tracking.set_tags({"metaaug.arm": arm})
                done = world.collect(list(progress(trained, desc=f"train {arm}", total=len(mine))), len(groups))
                if world.is_main:
                    done = [result for group in done for result in group]
                    model = {"in_channels": channels, "image_size": size, "n_classes": n_classes,
                             "width": cfg.width, "model": cfg.model}  # evaluate rebuilds this learner
                    seconds = write_downstream(run_.output(out), run_.run.info.run_id, model, arm, done, splits,
                                               learners.recorded(learner))
                    run_.write_json(timing, timing_doc(world.device, run_seconds=seconds))


def _train_group(group: list[tuple[str, int]]) -> list[dict]:
    """A worker's entry (pickled by name): the stage's train_group, inherited through workers.state()."""
    return workers.state()["train_group"](group)


def write_downstream(tmp: Path, run_id: str, model: dict, arm: str, done: list[dict], splits: list[dict],
                     learner: dict) -> float:
    """models/downstream/<arm>/ into `tmp` (its temp: `<arm>.pt`, the state dicts by split, and results.json
    with the learner choice's evidence) and one MLflow run per split. Returns the median seconds a training
    took."""
    torch.save([r["state"] for r in done], tmp / f"{arm}.pt")
    write_json(tmp / "results.json", {"model": model, "learner": learner,
                                      "arms": {arm: [{"split": i, "curves": r["curves"]} for i, r in enumerate(done)]}})
    seconds = float(np.median([r["seconds"] for r in done]))
    print(f"train: {arm}: {len(done)} splits, {seconds:.2f} s a run")
    tracking.log_split_runs(run_id, [
        {"name": f"{arm}/split{i}", "params": {"arm": arm, "split": i, "seed": splits[i]["seed"]},
         "tags": {"metaaug.arm": arm, "metaaug.split": str(i)}, "curves": r["curves"],
         "start_ms": r["start_ms"], "end_ms": r["end_ms"],
         "final": {"seconds": r["seconds"], "final_loss": r["curves"]["loss"][-1]}}
        for i, r in enumerate(done)])
    tracking.log_metrics({"train.run_seconds": seconds})
    tracking.log_artifacts(tmp, "downstream")
    return seconds


def command(arm: str = typer.Option(..., help="The fixed arm to train (one of train.arms)."), params: Path = PARAMS,
            prepared: Path = DECLARATION.option("prepared"), learner: Path = DECLARATION.option("learner"),
            out: Path = DECLARATION.option("out"), timing: Path = DECLARATION.option("timing")):
    """Train the downstream learner under one fixed arm on every target split."""
    run(load_params(params), arm, prepared, learner, DECLARATION.for_item(out, arm),
        timing=DECLARATION.for_item(timing, arm))
