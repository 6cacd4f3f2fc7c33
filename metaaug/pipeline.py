"""The pipeline's stages as library functions: read inputs, compute, write outputs, log to MLflow.

`stages/*.py` and the Typer CLI are thin shells over these. Each stage writes
its output directory atomically, tags its MLflow run with the digest of that
output, and records the run ids of the upstream stages whose outputs it read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from metaaug import distributed, tracking
from metaaug.errors import MetaaugError
from metaaug.io import atomic_dir, read_json, write_json
from metaaug.models import build_model
from metaaug.progress import progress
from metaaug.stats import paired_difference, summarise
from metaaug.tasks import load_prepared, prepare
from metaaug.training import (Augment, TrainSettings, pick_device, predict, to_device, to_tensor,
                              train_learner)


def set_threads(image_size: int) -> None:
    """Small learners run faster on one thread (measured: 0.6 s vs 0.9 s a digits run on 2 cores)."""
    if image_size < 32:
        torch.set_num_threads(1)


def prepare_stage(params: dict, out: Path) -> None:
    from metaaug.plots import class_grid

    logged = {"seed": params["seed"], "data": params["data"], "tasks": params["tasks"]}
    with tracking.stage_run("prepare", logged, params["tracking"]["experiment"], output=out) as run:
        with atomic_dir(out) as tmp:
            manifest = prepare(params["data"], params["tasks"], params["seed"], tmp)
        import mlflow

        prepared = load_prepared(out)
        for part in ("meta", "target"):
            for name, count in zip(manifest[part]["classes"], manifest[part]["counts"]):
                mlflow.log_metric(f"{part}.count.{name}", count)
        mlflow.log_metrics({"target.test_images": len(manifest["test"]), "meta.val_images": manifest["meta"]["val_count"]})
        mlflow.set_tags({"data.meta_source": manifest["meta"]["source"], "data.target_source": manifest["target"]["source"]})
        mlflow.log_figure(class_grid(prepared.target_images, prepared.target_labels, manifest["target"]["classes"]),
                          "target_samples.png")
        mlflow.log_figure(class_grid(prepared.meta_images, prepared.meta_labels, manifest["meta"]["classes"]),
                          "meta_samples.png")
        print(f"prepare: {len(prepared.meta_labels)} meta-train images, {len(prepared.target_labels)} target images, "
              f"{len(manifest['splits'])} splits -> {out} (mlflow run {run.info.run_id})")


def arm_augmenter(arm: str, channels: int, learned_source: str, policy_dir: Path | None,
                  augmented_dir: Path | None) -> Callable[[np.ndarray], Augment | None]:
    """For a train arm: support indices -> its augmentation (None for `none`)."""
    if arm == "none":
        return lambda support: None
    if arm == "learned" and learned_source == "augmented":
        bank, index = load_bank(augmented_dir)
        return lambda support: bank_augment(bank, index, support)
    from metaaug.policies import fixed_policy, load_policy, sample_apply

    policy = load_policy(policy_dir / "policy.json") if arm == "learned" else fixed_policy(arm, image_channels=channels)
    return lambda support: (lambda x, gen: sample_apply(policy, x, gen))


def train_stage(params: dict, prepared_dir: Path, out: Path, policy_dir: Path | None = None,
                augmented_dir: Path | None = None) -> None:
    """Every arm on every target split; one nested MLflow run per arm x split.

    Under torchrun, `train.distributed` shares the trainings among the ranks (metaaug/distributed.py);
    rank 0 writes the outputs and the MLflow runs.
    """
    prepared = load_prepared(prepared_dir)
    settings = TrainSettings.from_params(params["train"])
    x_all, y_all = to_tensor(prepared.target_images), torch.tensor(np.asarray(prepared.target_labels))
    n_classes, channels, size = len(prepared.manifest["target"]["classes"]), x_all.shape[1], x_all.shape[-1]
    set_threads(size)
    upstream = {"prepare": prepared_dir}
    arms, splits = params["train"]["arms"], prepared.manifest["splits"]
    learned_source = params["train"]["learned_source"]
    if "learned" in arms:
        upstream["metatrain"] = policy_dir
        if learned_source == "augmented":
            upstream["augment"] = augmented_dir
    with distributed.world(params["train"]["distributed"], pick_device(params["train"]["device"])) as world:
        x_all, y_all = to_device(x_all, world.device), to_device(y_all, world.device)
        augmenters = {arm: arm_augmenter(arm, channels, learned_source, policy_dir, augmented_dir) for arm in arms}

        def train_one(job: tuple[str, int]) -> dict:
            arm, i = job
            support = np.asarray(splits[i]["support"])
            start = time.perf_counter()
            model, curves = train_learner(x_all[support], y_all[support], n_classes, settings, splits[i]["seed"],
                                          augmenters[arm](support), world.device, ddp=world.mode == "ddp")
            return {"state": {k: v.cpu() for k, v in model.state_dict().items()},
                    "seconds": time.perf_counter() - start, "curves": curves}

        jobs = [(arm, i) for arm in arms for i in range(len(splits))]
        logged = {"train": params["train"], "train.ranks": world.size, "tasks.shots": params["tasks"]["shots"]}
        stage = (tracking.stage_run("train", logged, params["tracking"]["experiment"], upstream, output=out)
                 if world.is_main else contextlib.nullcontext())
        with stage as run:
            mine = world.share(jobs)
            done = world.collect([train_one(job) for job in progress(mine, desc="train", total=len(mine))], len(jobs))
            if world.is_main:
                model = {"in_channels": channels, "image_size": size, "n_classes": n_classes, "width": settings.width}
                write_downstream(out, run.info.run_id, model, jobs, done, splits)


def write_downstream(out: Path, run_id: str, model: dict, jobs: list[tuple[str, int]], done: list[dict],
                     splits: list[dict]) -> None:
    """models/downstream/ (one state-dict list per arm, results.json) and one child MLflow run per job."""
    import mlflow

    results = {"model": model, "arms": {}}
    with atomic_dir(out) as tmp:
        for arm in dict.fromkeys(arm for arm, _ in jobs):
            runs = [(i, r) for (a, i), r in zip(jobs, done) if a == arm]
            torch.save([r["state"] for _, r in runs], tmp / f"{arm}.pt")
            results["arms"][arm] = [{"split": i, "curves": r["curves"]} for i, r in runs]
            for i, r in runs:
                tracking.log_child_run(run_id, f"{arm}/split{i}", {"arm": arm, "split": i, "seed": splits[i]["seed"]},
                                       {"metaaug.arm": arm, "metaaug.split": str(i), "metaaug.train_run": run_id},
                                       r["curves"], {"seconds": r["seconds"], "final_loss": r["curves"]["loss"][-1]})
            print(f"train: {arm}: {len(runs)} splits, {np.median([r['seconds'] for _, r in runs]):.2f} s a run")
        write_json(tmp / "results.json", results)
    # wall times go to MLflow only, so that the output is byte-identical run to run
    mlflow.log_metric("train.run_seconds", float(np.median([r["seconds"] for r in done])))
    mlflow.log_artifacts(str(out), "downstream")


def test_accuracies(prepared, downstream_dir: Path, arms: list[str]) -> tuple[dict, dict]:
    """Per arm: test accuracy per split, and (labels, predictions) pooled over splits."""
    results = read_json(downstream_dir / "results.json")
    x_all = to_tensor(prepared.target_images)
    y_all = np.asarray(prepared.target_labels)
    test = np.asarray(prepared.manifest["test"])
    x_test, y_test = x_all[test], y_all[test]
    model = build_model(**results["model"])
    accuracy, confusion = {}, {}
    for arm in arms:
        preds = []
        for state in torch.load(downstream_dir / f"{arm}.pt", weights_only=True):
            model.load_state_dict(state)
            preds.append(predict(model, x_test))
        accuracy[arm] = np.array([np.mean(p == y_test) for p in preds])
        confusion[arm] = (np.tile(y_test, len(preds)), np.concatenate(preds))
    return accuracy, confusion


def compare(accuracy: dict[str, np.ndarray]) -> dict:
    """Per-arm summary and paired differences: learned (if present) minus each arm, each arm minus none."""
    metrics = {"arms": {arm: summarise(acc) for arm, acc in accuracy.items()}, "paired": {}}
    pairs = [("learned", b) for b in accuracy if b != "learned" and "learned" in accuracy]
    pairs += [(a, "none") for a in accuracy if a not in ("none", "learned") and "none" in accuracy]
    for a, b in pairs:
        metrics["paired"][f"{a}-{b}"] = paired_difference(accuracy[a], accuracy[b])
    return metrics


def evaluate_stage(params: dict, prepared_dir: Path, downstream_dir: Path, metrics_path: Path, plots_dir: Path,
                   policy_dir: Path | None = None, reports_dir: Path | None = None) -> dict:
    """Test accuracy per arm and paired differences -> metrics.json, DVC plots and (optionally) the report."""
    from metaaug.plots import write_dvc_plots
    from metaaug.report import write_report

    prepared = load_prepared(prepared_dir)
    results = read_json(downstream_dir / "results.json")
    arms = list(results["arms"])
    upstream = {"prepare": prepared_dir, "train": downstream_dir}
    if policy_dir is not None and (policy_dir / "search.json").exists():
        upstream["metatrain"] = policy_dir
    with tracking.stage_run("evaluate", {"evaluate.arms": arms}, params["tracking"]["experiment"], upstream) as run:
        accuracy, confusion = test_accuracies(prepared, downstream_dir, arms)
        metrics = compare(accuracy)
        one_run = tracking.upstream_metrics(run, "train").get("train.run_seconds")
        if one_run:
            metrics["downstream_run_seconds"] = one_run
        metrics["machine"] = machine_description()
        search = None
        timing = tracking.upstream_metrics(run, "metatrain") if one_run else {}
        if "search.seconds" in timing:
            search = {**read_json(policy_dir / "search.json"), "seconds": timing["search.seconds"],
                      "proxy_seconds": timing["search.proxy_seconds"], "workers": int(timing["search.workers"])}
            metrics["search_cost"] = search["seconds"] / metrics["downstream_run_seconds"]
            metrics["search_workers"] = search["workers"]
            # proxy trainings summed over worker processes: the cost on one core
            metrics["search_cost_one_core"] = search["proxy_seconds"] / metrics["downstream_run_seconds"]
        if reports_dir is not None:  # first: it reads the policy, so bad input stops before any output is replaced
            with atomic_dir(reports_dir) as tmp:
                write_report(tmp, metrics, accuracy, results, confusion, prepared, policy_dir, search)
        with atomic_dir(plots_dir) as tmp:
            write_dvc_plots(tmp, accuracy, results, confusion, prepared.manifest["target"]["classes"])
        write_json(metrics_path, metrics)
        import mlflow

        mlflow.log_metrics(flat_metrics(metrics))
        mlflow.log_artifact(str(metrics_path))
        mlflow.log_artifacts(str(plots_dir), "plots")
        if reports_dir is not None:
            mlflow.log_artifacts(str(reports_dir), "report")
        tracking.describe_evaluate_run(run)
        for arm, s in metrics["arms"].items():
            print(f"evaluate: {arm:15s} {s['mean']:.2f} ± {s['std']:.2f} (n={s['n']})")
        for pair, d in metrics["paired"].items():
            print(f"evaluate: {pair:28s} {d['mean']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]")
        print(f"evaluate: mlflow run {run.info.run_id}")
    return metrics


def machine_description() -> str:
    """Where the timings were taken: CPU model and count, or the GPU."""
    import platform

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPU cores, torch {torch.__version__}"


def results_markdown(metrics: dict) -> str:
    """The README's results section, generated from metrics.json (`metaaug results`)."""
    lines = [accuracy_tables(metrics), ""]
    if "search_cost" in metrics:
        lines.append(f"Search cost: metatrain took {metrics['search_cost']:.1f}× one downstream training run "
                     f"({metrics['downstream_run_seconds']:.2f} s) in wall time with {metrics.get('search_workers', 1)} "
                     "scoring process(es)" + (f"; its proxy trainings alone, summed over processes, "
                                               f"{metrics['search_cost_one_core']:.1f}×." if
                                               "search_cost_one_core" in metrics else "."))
    lines.append(f"Measured on: {metrics.get('machine', 'unknown machine')}.")
    return "\n".join(lines)


def accuracy_tables(metrics: dict) -> str:
    """Markdown: accuracy per arm, then the paired differences with their bootstrap CIs."""
    lines = ["| arm | test accuracy (mean ± std over splits) |", "|---|---|"]
    lines += [f"| {arm} | {s['mean']:.2f} ± {s['std']:.2f} (n={s['n']}) |" for arm, s in metrics["arms"].items()]
    lines += ["", "| paired difference | mean (points) | bootstrap 95 % CI | wins/losses |", "|---|---|---|---|"]
    lines += [f"| {pair} | {d['mean']:+.2f} | [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}] | {d['wins']}/{d['losses']} |"
              for pair, d in metrics["paired"].items()]
    return "\n".join(lines)


def flat_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Nested numeric metrics as flat MLflow keys (`arms.none.mean`)."""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(flat_metrics(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)):
            flat[prefix + key] = float(value)
    return flat


def search_config(params: dict) -> "SearchConfig":
    from metaaug.metalearn import SearchConfig

    fields = SearchConfig.__dataclass_fields__
    chosen = {k: v for k, v in params["metatrain"].items() if k in fields}
    chosen["workers"] = chosen.get("workers") or os.cpu_count() or 1
    if "anchors" in chosen:
        chosen["anchors"] = tuple(chosen["anchors"])
    return SearchConfig(**chosen, seed=params["seed"])


def checkpoint_path(out: Path, params: dict, prepared_dir: Path) -> Path:
    """Beside the output (which is replaced atomically), keyed by everything that determines the search."""
    settings = json.dumps({"metatrain": params["metatrain"], "train": params["train"], "seed": params["seed"]},
                          sort_keys=True)
    key = tracking.dir_digest(prepared_dir)[:12] + "-" + hashlib.sha256(settings.encode()).hexdigest()[:12]
    return out.parent / f".{out.name}.checkpoint-{key}.json"


def metatrain_stage(params: dict, prepared_dir: Path, out: Path) -> None:
    """Search the policy on meta-train tasks; write policy JSON, Albumentations export, checkpoint, search log."""
    import mlflow

    from metaaug.metalearn import SearchSpace, policy_summary, sample_tasks, search, tasks_needed
    from metaaug.ops import OP_NAMES
    from metaaug.policies import export_albumentations, save_policy

    prepared = load_prepared(prepared_dir)
    mp, cfg = params["metatrain"], search_config(params)
    space = SearchSpace(tuple(mp["ops"]) if mp["ops"] else OP_NAMES, channels=prepared.meta_images.shape[-1])
    set_threads(prepared.meta_images.shape[1])
    train_idx = np.flatnonzero(~np.asarray(prepared.meta_is_val))
    logged = {"metatrain": mp, "seed": params["seed"], "tasks.shots": params["tasks"]["shots"]}
    with tracking.stage_run("metatrain", logged, params["tracking"]["experiment"], {"prepare": prepared_dir},
                            output=out) as run:
        start = time.perf_counter()
        tasks = sample_tasks(np.asarray(prepared.meta_images)[train_idx], np.asarray(prepared.meta_labels)[train_idx],
                             params["tasks"]["shots"], mp["ways"], mp["query_per_class"], tasks_needed(cfg),
                             params["seed"])
        ckpt = checkpoint_path(out, params, prepared_dir)
        state = search(space, tasks, cfg, TrainSettings.from_params(params["train"]), ckpt,
                       log=lambda entry: mlflow.log_metrics({k: v for k, v in entry.items() if k != "rung"},
                                                            step=entry["rung"]))
        seconds = time.perf_counter() - start
        policy = space.policy(np.array(state.best))
        with atomic_dir(out) as tmp:
            # no run id or timing here: the output must be byte-identical run to run (the MLflow run
            # finds it by its digest tag)
            provenance = {"method": cfg.method, "meta_source": prepared.manifest["meta"]["source"],
                          "meta_classes": prepared.manifest["meta"]["classes"], "trainings": state.trainings}
            save_policy(policy, tmp / "policy.json", provenance)
            export_albumentations(policy, tmp / "policy_albumentations.json")
            write_json(tmp / "checkpoint.json", {k: v for k, v in state.__dict__.items() if k != "seconds"})
            write_json(tmp / "search.json", {"method": cfg.method, "trainings": state.trainings,
                                             "proxy_epochs": cfg.proxy_epochs, "proxy_width": cfg.proxy_width,
                                             "history": state.history, "finalists": state.finalists,
                                             "theta": state.best})
        ckpt.unlink(missing_ok=True)
        mlflow.log_metrics({"search.seconds": seconds, "search.proxy_seconds": state.seconds,
                            "search.workers": cfg.workers, "search.trainings": state.trainings})
        mlflow.log_artifacts(str(out), "policy")
        print(f"metatrain: {cfg.method}, {state.trainings} proxy trainings in {seconds:.1f} s; policy: "
              f"{policy_summary(policy)}")
        mlflow.log_dict({"finalists": state.finalists}, "search_finalists.json")
        for k, f in enumerate(state.finalists):
            name = f"{f['baseline']}'s point" if f["baseline"] else ("reference" if f["reference"] else "explorer")
            ci = f"[{f['ci_low']:+.2f}, {f['ci_high']:+.2f}]" if f["ci_low"] is not None else "[n/a]"
            if f["status"] == "chosen":
                print(f"metatrain: chosen: {name}, {100 * f['score']:.2f} % on {f['tasks']} tasks; {f['decision']}")
            else:
                print(f"metatrain:   {name}: {f['diff_to_chosen']:+.2f} points vs chosen, 95 % CI {ci}, "
                      f"{f['paired_tasks']} paired tasks; {f['status']}; {f['policy']}, {f['layers']} layer(s)")
            key = f"finalist.{f['baseline'] or f'candidate{k}'}"
            if f["status"] != "chosen" and f["ci_low"] is not None:
                mlflow.log_metrics({f"{key}.diff_to_chosen_points": f["diff_to_chosen"],
                                    f"{key}.ci95_low_points": f["ci_low"], f"{key}.ci95_high_points": f["ci_high"],
                                    f"{key}.paired_tasks": f["paired_tasks"]})
        if state.finalists:
            mlflow.set_tags({"search.decision": state.finalists[0]["decision"][:5000],
                             "search.chosen": state.finalists[0]["baseline"] or "explorer"})


def augment_stage(params: dict, prepared_dir: Path, policy_dir: Path, out: Path) -> None:
    """K augmented copies of every target training-pool image, written as a versioned dataset."""
    import mlflow

    from metaaug.policies import load_policy, sample_apply
    from metaaug.preview import preview_grid

    prepared = load_prepared(prepared_dir)
    policy = load_policy(policy_dir / "policy.json")
    test = set(prepared.manifest["test"])
    pool = np.array([i for i in range(len(prepared.target_labels)) if i not in test])
    copies = params["augment"]["copies"]
    device = pick_device(params["train"]["device"])
    upstream = {"prepare": prepared_dir, "metatrain": policy_dir}
    with tracking.stage_run("augment", {"augment": params["augment"], "seed": params["seed"]},
                            params["tracking"]["experiment"], upstream, output=out):
        x = to_tensor(np.asarray(prepared.target_images)[pool]).to(device)
        gen = torch.Generator(device=device).manual_seed(params["seed"])
        start = time.perf_counter()
        bank = torch.stack([sample_apply(policy, x, gen).clamp_(0, 1)
                            for _ in progress(range(copies), desc="augment copies")])
        seconds = time.perf_counter() - start
        images = (bank * 255).round_().to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()
        with atomic_dir(out) as tmp:
            np.save(tmp / "images.npy", images, allow_pickle=False)
            np.save(tmp / "index.npy", pool, allow_pickle=False)
            digest = tracking.dir_digest(tmp / "images.npy")
            write_json(tmp / "manifest.json", {"copies": copies, "images": int(images.shape[1]),
                                               "shape": list(images.shape[2:]), "sha256": digest,
                                               "policy_sha256": tracking.dir_digest(policy_dir / "policy.json")})
        with tempfile.TemporaryDirectory() as d:
            preview_grid(np.asarray(prepared.target_images)[pool], policy, Path(d) / "augment_preview.png")
            mlflow.log_artifact(str(Path(d) / "augment_preview.png"))
        mlflow.log_metrics({"augment.images_per_second": images.shape[0] * images.shape[1] / max(seconds, 1e-9)})
        mlflow.set_tag("augment.sha256", digest)
        print(f"augment: {copies} copies of {len(pool)} images -> {out} (sha256 {digest[:12]})")


def load_bank(augmented_dir: Path) -> tuple[torch.Tensor, dict[int, int]]:
    """data/augmented/ as a (K, N, C, H, W) float tensor and target index -> row."""
    if not (augmented_dir / "images.npy").exists():
        raise MetaaugError(f"{augmented_dir}: no augmented dataset (images.npy missing); expected the output of "
                           "`metaaug augment`, or train.learned_source: on_the_fly")
    images = np.load(augmented_dir / "images.npy")
    k, n = images.shape[:2]
    bank = to_tensor(images.reshape(k * n, *images.shape[2:]))
    index = {int(j): r for r, j in enumerate(np.load(augmented_dir / "index.npy"))}
    return bank.reshape(k, n, *bank.shape[1:]), index


def bank_augment(bank: torch.Tensor, index: dict[int, int], support: np.ndarray) -> Augment:
    """Each epoch's copy of support image j is one of its K stored augmented copies, drawn at random.

    `train_learner` augments `x.repeat(n, ...)`, so batch row r is support image r % len(support).
    """
    rows = torch.tensor([index[int(j)] for j in support])

    def draw(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        which = rows.repeat(len(x) // len(rows))
        k = torch.randint(0, bank.shape[0], (len(x),), generator=gen, device=gen.device).cpu()
        return bank[k, which].to(x.device)

    return draw
