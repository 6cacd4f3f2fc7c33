"""Which downstream learner learns better where: the small CNN against the ResNet on 32 px RGB tasks.

Three sources built offline (bench/rgb_tasks.py: coloured digits, photo patches, synthetic shapes) x two
protocols (`few_shot`: the last half of the classes in order, as prepare holds them out; `full`: every class)
x shot counts (training images per class). Per source a fixed test set (half of each class's images, at
most `--test-per-class`) and, per split i, a shot sample and a learner seed of its own, the same for both
learners and every arm (paired). Each learner is trained with the pipeline's recipe (`TrainConfig` defaults,
`--epochs`) under each arm's augmentation, in forked workers of one thread each (metaaug.workers), as the
train stage does. Prints, per configuration and arm, each learner's test accuracy (mean over splits, 95 %
t-interval), the paired difference ResNet - small CNN, and the median seconds one training took; then the
difference pooled per protocol and per shot count. What `train.model: auto` picks on such tasks is
metaaug/learners.py's trial: the ResNet only where it is clearly better.

    nice -n 10 python bench/learners.py [--splits 3] [--shots 5 10] [--arms none trivialaugment] [--epochs 150]
                                        [--device auto]   # on CUDA (a GPU session) one process, bfloat16
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from itertools import product
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from rgb_tasks import SOURCES  # noqa: E402  (bench/rgb_tasks.py)

from metaaug import workers  # noqa: E402
from metaaug.arms import arm_augmenter  # noqa: E402
from metaaug.config import TrainConfig  # noqa: E402
from metaaug.learners import CHEAP, COSTLY  # noqa: E402
from metaaug.stats import t_interval  # noqa: E402
from metaaug.timing import machine_description  # noqa: E402
from metaaug.training import pick_device, predict, to_tensor, train_learner  # noqa: E402

LEARNERS = (COSTLY, CHEAP)  # the costlier first: the workers finish together


def configuration(images: np.ndarray, labels: np.ndarray, protocol: str, test_per_class: int) -> dict:
    """The classes a protocol trains on (relabelled 0..k-1), its test set and its training pool."""
    classes = np.unique(labels)
    if protocol == "few_shot":
        classes = classes[len(classes) // 2:]
    rng = np.random.default_rng(0)
    test, pool = [], []
    for c in classes:
        idx = rng.permutation(np.flatnonzero(labels == c))
        half = len(idx) // 2
        test.append(idx[:min(half, test_per_class)])
        pool.append(idx[half:])
    relabel = np.full(labels.max() + 1, -1)
    relabel[classes] = np.arange(len(classes))
    test = np.concatenate(test)
    return {"x": to_tensor(images), "y": torch.tensor(relabel[labels]), "test": test, "pool": pool,
            "classes": len(classes)}


def train_one(job: tuple) -> tuple[float, float]:
    """A worker's entry: (test accuracy, seconds) of one learner trained on one split under one arm."""
    name, shots, arm, split, model, epochs = job
    cfg = workers.state()["configs"][name]
    rng = np.random.default_rng([shots, split])
    support = np.concatenate([rng.choice(pool, shots, replace=False) for pool in cfg["pool"]])
    augment = arm_augmenter(arm, cfg["x"].shape[1], "on_the_fly", None, None)(support)
    start = time.perf_counter()
    net, _ = train_learner(cfg["x"][support], cfg["y"][support], cfg["classes"], TrainConfig(model=model, epochs=epochs),
                           seed=split, augment=augment, device=workers.state()["device"])
    seconds = time.perf_counter() - start
    accuracy = float(np.mean(predict(net, cfg["x"][cfg["test"]]) == cfg["y"][cfg["test"]].numpy()))
    return accuracy, seconds


def ci(values) -> str:
    low, high = t_interval(np.asarray(values))
    return f"{np.mean(values):.1f} [{low:.1f}, {high:.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--shots", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--arms", nargs="+", default=["none", "trivialaugment"])
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    parser.add_argument("--protocols", nargs="+", default=["few_shot", "full"], choices=["few_shot", "full"])
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    parser.add_argument("--test-per-class", type=int, default=50)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="as train.device")
    args = parser.parse_args()
    start = time.perf_counter()
    print(f"start: load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}; {args.splits} splits, "
          f"device {pick_device(args.device).type}, "
          f"{args.epochs} epochs, arms {', '.join(args.arms)}\n")
    configs = {}
    for source in args.sources:
        images, labels = SOURCES[source](0)
        for protocol in args.protocols:
            configs[f"{source} {protocol}"] = configuration(images, labels, protocol, args.test_per_class)
    # fewest shots first, then protocol, then source: an interrupted run (Ctrl-C) has its smallest tasks
    runs = [(f"{source} {protocol}", shots, arm)
            for shots, protocol, source, arm in product(args.shots, args.protocols, args.sources, args.arms)]
    jobs = [(*run, split, model, args.epochs) for run in runs for model in LEARNERS for split in range(args.splits)]
    print("| task, protocol | classes x shots | arm | small CNN (%) | ResNet (%) | ResNet - small CNN (points) | "
          "s a training (small / ResNet) |\n|---|---|---|---|---|---|---|")
    results, per_run = {}, len(LEARNERS) * args.splits
    signal.signal(signal.SIGTERM, interrupt)  # `kill PID` prints the rows done so far (then waits for the running trainings)
    device = pick_device(args.device)
    with workers.Pool(workers.count(0, device), {"configs": configs, "device": device}) as pool:
        try:
            for job, result in zip(jobs, pool.map(train_one, jobs)):
                results[job] = result
                if len(results) % per_run == 0:  # a configuration x arm is complete: its row
                    row(job[:3], configs[job[0]]["classes"], results, args)
        except KeyboardInterrupt:
            print(f"\ninterrupted: {len(results) // per_run} of {len(runs)} rows done")
        summarise(runs[:len(results) // per_run], results, args, start)


def interrupt(*_) -> None:
    raise KeyboardInterrupt


def summarise(runs: list[tuple], results: dict, args, start: float) -> None:
    summary(runs, results, args)
    print(f"\nend: load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}; {time.perf_counter() - start:.0f} s; "
          f"measured on: {machine_description()}.")


def scores(run: tuple, model: str, results: dict, args) -> tuple[list[float], list[float]]:
    """(accuracies in %, seconds) of `model` over the splits of one configuration x arm."""
    done = [results[(*run, split, model, args.epochs)] for split in range(args.splits)]
    return [100 * a for a, _ in done], [s for _, s in done]


def row(run: tuple, classes: int, results: dict, args) -> None:
    (small, small_s), (resnet, resnet_s) = (scores(run, m, results, args) for m in (CHEAP, COSTLY))
    diff = np.subtract(resnet, small)
    print(f"| {run[0]} | {classes} x {run[1]} | {run[2]} | {ci(small)} | {ci(resnet)} | {ci(diff)} | "
          f"{np.median(small_s):.1f} / {np.median(resnet_s):.1f} |", flush=True)


def summary(runs: list[tuple], results: dict, args) -> None:
    """The paired difference pooled over every split of the configurations sharing a protocol / shot count."""
    print("\n| pooled over | paired (config x arm x split) | ResNet - small CNN (points) | ResNet wins |\n|---|---|---|---|")
    groups = {"all": runs, **{p: [r for r in runs if r[0].endswith(p)] for p in args.protocols},
              **{f"{s} shots": [r for r in runs if r[1] == s] for s in args.shots}}
    for label, members in groups.items():
        if not members:
            continue
        diff = np.concatenate([np.subtract(scores(r, COSTLY, results, args)[0], scores(r, CHEAP, results, args)[0])
                               for r in members])
        print(f"| {label} | {len(diff)} | {ci(diff)} | {int(np.sum(diff > 0))}/{len(diff)} |")


if __name__ == "__main__":
    main()
