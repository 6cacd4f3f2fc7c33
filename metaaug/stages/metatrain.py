"""Stage `metatrain`: search the augmentation policy on tasks from the meta-train classes (`models/policy/`).

The output is byte-identical run to run (no run id, no timing in it), whatever the number of workers or of
torchrun ranks (`metatrain.distributed: shard`: rank 0 searches and publishes, every rank scores its share
of each rung); wall times go to the MLflow run and to `timings/metatrain.json`. A checkpoint beside the output, keyed by everything
that determines the search, lets a killed run resume where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import scipy.stats  # noqa: F401  (the race's intervals, metaaug.stats: imported here, not inside the timed search)
import torch

from metaaug import distributed, learners, ownership, registry, runner, tracking, workers
from metaaug.config import Params, load_params
from metaaug.declaration import Declaration, Output
from metaaug.files import output_path
from metaaug.publish import write_json
from metaaug.search import (METHODS, SearchSpace, downstream_flops, meta_train_tasks, search, search_budget, serve,
                            tasks_needed)
from metaaug.ops import OP_NAMES
from metaaug.plots import policy_figure
from metaaug.policies import Policy, describe, export_albumentations, save_policy, what_it_is
from metaaug.stages import PARAMS
from metaaug.tasks import load_prepared
from metaaug.timing import timing_doc
from metaaug.training import RECIPE, pick_device

# Its outputs depend on the search's settings, the learner recipe it scores with (train.*), the shots and the
# seed; not on its processes or ranks (the output is byte-identical whatever they are) or the tracking names.
DECLARATION = Declaration(
    "metatrain", inputs={"prepared": ("prepare", "data/prepared"), "learner": ("learner", "models/learner")},
    outputs={"out": Output("models/policy", "metatrain")},
    params=("seed", "metatrain", "tasks.shots", "train.epochs", "train.batch_size", "train.lr", "train.momentum",
            "train.weight_decay", "train.width", "train.model", "train.device"),
    reads=("metatrain.workers", "metatrain.distributed", "tracking.experiment", "tracking.policy_model"),
    timing=True)


def search_settings(params: Params) -> dict:
    """Every setting that determines the search (workers, ranks and the other methods' sections never change it)."""
    others = set(METHODS) - {params.metatrain.method}
    return {"metatrain": params.metatrain.model_dump(exclude={"workers", "distributed", *others}),
            "train": params.train.model_dump(include=RECIPE), "shots": params.tasks.shots, "seed": params.seed}


def checkpoint_path(out: Path, params: Params, prepared_digest: str, device: torch.device) -> Path:
    """Beside the output (which is replaced atomically), keyed by everything that determines the search: the
    prepared set's digest (as the stage runner verified it), the settings and the kind of device scoring runs
    on (a GPU's bfloat16 scores must not continue a CPU's search)."""
    settings = json.dumps({**search_settings(params), "device": device.type}, sort_keys=True)
    key = prepared_digest[:12] + "-" + hashlib.sha256(settings.encode()).hexdigest()[:12]
    out = output_path(out)
    return out.parent / f".{out.name}.checkpoint-{key}.json"


def run(params: Params, prepared_dir: Path, out: Path, timing: Path | None = None,
        learner_dir: Path | None = None) -> None:
    cfg, learner_dir = params.metatrain, learners.needed(params, learner_dir)
    with distributed.world(cfg.distributed, pick_device(params.train.device), "metatrain") as world:
        if world.mode == "shard":
            same_job_everywhere(world, params, prepared_dir)
        learner = learners.shared(world, lambda: learners.choose(
            load_prepared(prepared_dir), params, world.device, workers.count(cfg.workers, world.device),
            learner_dir and output_path(learner_dir) / learners.FILE))  # the learner stage's answer
        if world.is_main:
            search_and_publish(params, prepared_dir, out, timing, world, learner, learner_dir)
        else:
            prepared = load_prepared(prepared_dir)
            serve(meta_train_tasks(prepared, params.tasks.shots, cfg, tasks_needed(cfg), params.seed), cfg,
                  learners.with_learner(params, learner).train, world)


def same_job_everywhere(world: distributed.World, params: Params, prepared_dir: Path) -> None:
    """Every rank checks its data/prepared by content (on several machines each reads its own copy), then
    proves it runs rank 0's job: the same search settings, prepared data and code (distributed.same_job)."""
    facts = tracking.flatten(search_settings(params))
    facts["prepared data (digest)"] = ownership.verify_inputs({"prepare": prepared_dir})["prepare"]
    distributed.same_job(world, facts)


def search_and_publish(params: Params, prepared_dir: Path, out: Path, timing: Path | None,
                       world: distributed.World, learner: dict, learner_dir: Path | None = None) -> None:
    """Rank 0 (or the only process): search with the chosen `learner`, write models/policy/, log and register it.
    The checkpoint is keyed by the params as given (`train.model: auto` too): auto's answer is a function of the
    key's prepared data, settings and device kind."""
    given, params = params, learners.with_learner(params, learner)  # the proxies and budget use the learner
    prepared = load_prepared(prepared_dir)
    cfg = params.metatrain
    space = SearchSpace(tuple(cfg.ops or OP_NAMES), channels=prepared.meta_images.shape[-1])
    logged = {"metatrain": cfg.model_dump(exclude=set(METHODS) - {cfg.method}), "metatrain.ranks": world.size,
              "metatrain.device_used": world.device.type, "seed": params.seed, "tasks.shots": params.tasks.shots}
    tasks = meta_train_tasks(prepared, params.tasks.shots, cfg, tasks_needed(cfg), params.seed)  # built lazily
    search_budget(tasks, cfg, params.train, one_downstream_training(prepared, params))  # before any store or output
    with runner.stage_run(DECLARATION, logged, params.tracking.experiment,
                          {"prepared": prepared_dir, "learner": learner_dir, "out": out, "timing": timing}) as stage:
        start = time.perf_counter()
        ckpt = checkpoint_path(out, given, stage.inputs["prepare"], world.device)
        state = search(space, tasks, cfg, params.train, params.seed, ckpt,
                       downstream=one_downstream_training(prepared, params), world=world)
        seconds = time.perf_counter() - start
        policy = space.policy(np.array(state.best))
        baseline = state.finalists[0]["baseline"] if state.finalists else None  # a fixed baseline's point?
        tmp = stage.output(out)
        provenance = {"method": cfg.method, "meta_source": prepared.manifest["meta"]["source"],
                      "meta_classes": prepared.manifest["meta"]["classes"], "trainings": state.trainings,
                      "baseline_point": baseline}
        save_policy(policy, tmp / "policy.json", provenance)
        export_albumentations(policy, tmp / "policy_albumentations.json")
        write_json(tmp / "checkpoint.json", {k: v for k, v in state.to_dict().items() if k != "seconds"})
        write_json(tmp / "search.json", {"method": cfg.method, "trainings": state.trainings,
                                         "budget": cfg.budget, "spent": state.spent, "rounds": state.rounds,
                                         "stopped": state.done,
                                         "proxy_epochs": cfg.proxy_epochs, "proxy_width": cfg.proxy_width,
                                         "history": state.history, "finalists": state.finalists,
                                         "theta": state.best})
        n_workers = workers.count(cfg.workers, world.device)
        tracking.log_metrics({"search.seconds": seconds, "search.proxy_seconds": state.seconds,
                              "search.workers": n_workers, "search.trainings": state.trainings,
                              "search.budget": cfg.budget, "search.spent": state.spent})
        stage.write_json(timing, timing_doc(world.device, search_seconds=seconds, proxy_seconds=state.seconds,
                                               workers=n_workers,
                                               ranks=world.size))
        log_answer(policy, baseline, state.finalists, learners.markdown(learner))
        tracking.set_tags({"metaaug.learner": learner["model"]})
        tracking.log_artifacts(tmp, "policy")
        name = params.tracking.policy_model_name
        registered = {}
        stage.after_publish(lambda: registered.update(version=registry.register_policy(
            out, name, policy_description(policy, baseline, provenance))))
        print(f"metatrain: {cfg.method}, {state.trainings} proxy trainings in {seconds:.1f} s; spent {state.spent:.2f} "
              f"of a budget of {cfg.budget:g} downstream trainings (counted in operations)")
        for r in state.rounds:
            print(f"metatrain: round {r['round']}: {r['candidates']} candidates, {r['chosen']} kept "
                  f"({r['trainings']} trainings, {r['spent']:.2f} spent so far)")
        if state.done:
            print(f"metatrain: refinement stopped: {state.done}")
        for line in evidence_lines(state.finalists):
            print(f"metatrain: {line}")
        for line in describe(policy, baseline):
            print(f"metatrain:   {line}")
        print("metatrain: " + " ".join(learners.markdown(learner)).replace("**", ""))
    ckpt.unlink(missing_ok=True)  # the search is published: nothing left to resume
    ownership.sidecar(ckpt).unlink(missing_ok=True)
    print(f"metatrain: chosen policy -> {out / 'policy.json'}; registered as models:/{name}/{registered['version']} "
          f"(models:/{name}@{registry.POLICY_ALIAS})")


def one_downstream_training(prepared, params: Params) -> int:
    """Floating-point operations of one downstream training on a target split: the budget's unit."""
    images = prepared.target_images
    classes = len(prepared.manifest["target"]["classes"])
    return downstream_flops(params.train, images.shape[-1], images.shape[1], classes,
                            len(prepared.manifest["splits"][0]["support"]))


def policy_description(policy: Policy, baseline: str | None, provenance: dict) -> str:
    """What the policy is, for its model registry version (Markdown): the description `metaaug metatrain`
    prints (metaaug.policies.describe), then where it was searched."""
    what, *ops = describe(policy, baseline)
    lines = [what[0].upper() + what[1:] + ".", ""] + [f"- {' '.join(line.split())}" for line in ops]
    classes = ", ".join(map(str, provenance["meta_classes"]))
    lines += ["", f"Searched by `{provenance['method']}` on {provenance['meta_source']} classes [{classes}], "
                  f"{provenance['trainings']} proxy trainings; the files are `policy.json`, "
                  "`policy_albumentations.json` and `search.json` (the evidence) under `artifacts/`."]
    return "\n".join(lines)


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


def log_answer(policy: Policy, baseline: str | None, finalists: list[dict], learner_lines: list[str]) -> None:
    """The answer where MLflow shows it first: the run's description says what was chosen and why (with every
    finalist's evidence, and the downstream learner's), a figure draws the policy, tags name it; the finalists
    in full as an artifact."""
    lines = [f"**Chosen policy: {what_it_is(baseline)}.**", ""]
    if finalists:
        lines += [f"How it was decided: {finalists[0]['decision']}", "", "Evidence on the meta-train tasks "
                  "(proxy learners; paired differences to the chosen policy, points, 95 % CI):", ""]
        lines += [f"- {line.strip()}" for line in evidence_lines(finalists)[1:]]
    lines += ["", "The policy, op by op (share of draws, magnitude range; 1 = the op's maximum):", ""]
    lines += [f"- {line}" for line in describe(policy, baseline)[1:]]
    lines += ["", *learner_lines]
    lines += ["", "Files: `policy/policy.json` (the policy), `policy/policy_albumentations.json` (the same policy "
              "for Albumentations), `policy/search.json` (the race), "
              "`search_finalists.json`."]
    tracking.set_description("\n".join(lines))
    tracking.log_figure(policy_figure(policy, "chosen policy: " + what_it_is(baseline)), "policy.png")
    tracking.log_dict({"finalists": finalists}, "search_finalists.json")
    tracking.set_tags({"metaaug.policy": f"{baseline} point" if baseline else "searched",
                       **({"search.chosen": finalists[0]["candidate"]} if finalists else {})})


def command(params: Path = PARAMS, prepared: Path = DECLARATION.option("prepared"),
            learner: Path = DECLARATION.option("learner"), out: Path = DECLARATION.option("out"),
            timing: Path = DECLARATION.option("timing")):
    """Meta-learn the augmentation policy on tasks from the meta-train classes (resumes from its checkpoint)."""
    run(load_params(params), prepared, out, timing, learner)
