"""Stage `train`: every arm on every target split (`models/downstream/`), one nested MLflow run per arm x split.

Learners of one shape are trained `train.population` at a time as one grouped network (metaaug.population)
in `train.workers` forked processes of one thread each (metaaug.workers). Under torchrun,
`train.distributed` shares the populations among the ranks (metaaug/distributed.py); rank 0 writes the
outputs and the MLflow runs. The output is byte-identical run to run: wall
times go to MLflow and to `timings/train.json`.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import torch

from metaaug import distributed, learners, ownership, runner, tracking, workers
from metaaug.arms import arm_augmenter
from metaaug.config import Params, load_params
from metaaug.declaration import Declaration, Output
from metaaug.files import output_path
from metaaug.publish import write_json
from metaaug.population import population_size, populations
from metaaug.progress import progress
from metaaug.stages import PARAMS
from metaaug.tasks import load_prepared
from metaaug.timing import timing_doc
from metaaug.training import pick_device, to_device, to_tensor, train_population

# Its outputs depend on the recipe and the shots, and (train.model: auto, where metatrain's answer does not
# apply) on the learner trial's tasks: the seed and their query images; not on its processes or ranks, nor
# the tracking names.
DECLARATION = Declaration(
    "train", inputs={"prepared": ("prepare", "data/prepared"), "policy": ("metatrain", "models/policy"),
                     "augmented": ("augment", "data/augmented")},
    outputs={"out": Output("models/downstream", "train")},
    params=("seed", "train", "tasks.shots", "metatrain.query_per_class"),
    reads=("train.workers", "train.distributed", "tracking.experiment"), timing=True, splits=True)


def run(params: Params, prepared_dir: Path, out: Path, policy_dir: Path | None = None,
        augmented_dir: Path | None = None, timing: Path | None = None) -> None:
    cfg = params.train
    upstream = {"prepare": prepared_dir}
    if "learned" in cfg.arms or reads_learner(params, policy_dir):
        upstream["metatrain"] = policy_dir
    if "learned" in cfg.arms and cfg.learned_source == "augmented":
        upstream["augment"] = augmented_dir
    digests = ownership.verify_inputs(upstream)  # before anything is read (stage_run reuses the digests)
    prepared = load_prepared(prepared_dir)
    x_all, y_all = to_tensor(prepared.target_images), torch.tensor(np.asarray(prepared.target_labels))
    n_classes, channels, size = len(prepared.manifest["target"]["classes"]), x_all.shape[1], x_all.shape[-1]
    splits = prepared.manifest["splits"]
    with distributed.world(cfg.distributed, pick_device(cfg.device)) as world:
        distributed.same_job(world, {**tracking.flatten({"train": cfg.model_dump(exclude={"workers"}),
                                                         "seed": params.seed}),
                                     **{f"{name} output (digest)": d for name, d in digests.items()}})
        learner = learners.shared(world, lambda: learners.choose(prepared, params, world.device, workers.count(
            cfg.workers, world.device), upstream.get("metatrain") and output_path(policy_dir) / learners.FILE))
        cfg = learners.with_learner(params, learner).train  # metatrain's answer, or the trial's here
        x_all, y_all = to_device(x_all, world.device), to_device(y_all, world.device)
        augmenters = {arm: arm_augmenter(arm, channels, cfg.learned_source, policy_dir, augmented_dir)
                      for arm in cfg.arms}

        def train_group(group: list[tuple[str, int]]) -> list[dict]:
            """Train one population of arm x split learners; each member's result and its share of the wall time."""
            supports = [np.asarray(splits[i]["support"]) for _, i in group]
            start, start_ms = time.perf_counter(), int(time.time() * 1000)
            learners = train_population([x_all[s] for s in supports], [y_all[s] for s in supports], n_classes, cfg,
                                        [splits[i]["seed"] for _, i in group],
                                        [augmenters[arm](s) for (arm, _), s in zip(group, supports)],
                                        world.device, ddp=world.mode == "ddp")
            seconds, end_ms = (time.perf_counter() - start) / len(group), int(time.time() * 1000)
            return [{"state": {k: v.cpu() for k, v in model.state_dict().items()}, "seconds": seconds,
                     "curves": curves, "start_ms": start_ms, "end_ms": end_ms} for model, curves in learners]

        jobs = [(arm, i) for arm in cfg.arms for i in range(len(splits))]
        per_population = 1 if world.mode == "ddp" else population_size(cfg.population, channels, size, n_classes,
                                                                       cfg.width, cfg.model)
        groups = populations(jobs, per_population)
        n_workers = 1 if world.mode == "ddp" else workers.count(cfg.workers, world.device)
        logged = {"train": cfg.model_dump(), "train.ranks": world.size, "train.device_used": world.device.type,
                  "train.population_size": per_population,
                  "train.worker_processes": n_workers, "tasks.shots": params.tasks.shots}
        paths = {"prepared": prepared_dir, "policy": upstream.get("metatrain"),
                 "augmented": upstream.get("augment"), "out": out, "timing": timing}
        stage = (runner.stage_run(DECLARATION, logged, params.tracking.experiment, paths)
                 if world.is_main else contextlib.nullcontext())
        with stage as run_, workers.Pool(n_workers, {"train_group": train_group}) as pool:
            if world.is_main:
                tracking.set_description("\n".join(learners.markdown(learner)))
            mine = world.share(groups)
            done = world.collect(list(progress(pool.map(_train_group, mine), desc="train", total=len(mine))),
                                 len(groups))
            if world.is_main:
                done = [result for group in done for result in group]
                model = {"in_channels": channels, "image_size": size, "n_classes": n_classes, "width": cfg.width,
                         "model": cfg.model}  # evaluate rebuilds this learner
                seconds = write_downstream(run_.output(out), run_.run.info.run_id, model, jobs, done, splits,
                                           learners.recorded(learner))
                run_.write_json(timing, timing_doc(world.device, run_seconds=seconds))


def reads_learner(params: Params, policy_dir: Path | None) -> bool:
    """Whether train reads metatrain's learner answer (train.model: auto, and policy_dir holds one): the policy
    folder is then an input, verified like any other, even without the learned arm."""
    return (params.train.model == "auto" and policy_dir is not None
            and (output_path(policy_dir) / learners.FILE).is_file())


def _train_group(group: list[tuple[str, int]]) -> list[dict]:
    """A worker's entry (pickled by name): the stage's train_group, inherited through workers.state()."""
    return workers.state()["train_group"](group)


def write_downstream(tmp: Path, run_id: str, model: dict, jobs: list[tuple[str, int]], done: list[dict],
                     splits: list[dict], learner: dict) -> float:
    """models/downstream/ into `tmp` (its temp: one state-dict list per arm, results.json with the learner
    choice's evidence) and one MLflow run per job (arm x split). Returns the median seconds a training took."""
    results = {"model": model, "learner": learner, "arms": {}}
    for arm in dict.fromkeys(arm for arm, _ in jobs):
        runs = [(i, r) for (a, i), r in zip(jobs, done) if a == arm]
        torch.save([r["state"] for _, r in runs], tmp / f"{arm}.pt")
        results["arms"][arm] = [{"split": i, "curves": r["curves"]} for i, r in runs]
        print(f"train: {arm}: {len(runs)} splits, {np.median([r['seconds'] for _, r in runs]):.2f} s a run")
    write_json(tmp / "results.json", results)
    tracking.log_split_runs(run_id, [
        {"name": f"{arm}/split{i}", "params": {"arm": arm, "split": i, "seed": splits[i]["seed"]},
         "tags": {"metaaug.arm": arm, "metaaug.split": str(i)}, "curves": r["curves"],
         "start_ms": r["start_ms"], "end_ms": r["end_ms"],
         "final": {"seconds": r["seconds"], "final_loss": r["curves"]["loss"][-1]}}
        for (arm, i), r in zip(jobs, done)])
    seconds = float(np.median([r["seconds"] for r in done]))
    tracking.log_metrics({"train.run_seconds": seconds})
    tracking.log_artifacts(tmp, "downstream")
    return seconds


def command(params: Path = PARAMS, prepared: Path = DECLARATION.option("prepared"),
            policy: Path = DECLARATION.option("policy"), augmented: Path = DECLARATION.option("augmented"),
            out: Path = DECLARATION.option("out"), timing: Path = DECLARATION.option("timing")):
    """Train the downstream learner for every arm on every target split."""
    run(load_params(params), prepared, out, policy, augmented, timing)
