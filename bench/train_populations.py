"""The train stage's learners one at a time (as before) against populations in one-thread worker processes (now).

For each size, the same N learners (the default recipe: 25 support images, batch 25, width 32, TrivialAugment
on the fly; the small CNN below 32 px and the ResNet from 32 px, the learners `auto` picked by size until
issue 34) are trained three ways, side by side in one run:

* `one at a time`: one process, one learner after another, with the old thread rule (one thread below 32 px,
  torch's default from 32 px) — the train stage before populations;
* `populations, 1 worker`: learners grouped `population_size(0, ...)` at a time (metaaug.population), one process
  of one thread — what grouping alone buys;
* `populations, workers`: the same populations shared among `workers.count(0)` forked one-thread processes —
  the train stage now.

Prints seconds per learner, the speed-up over one at a time, and the learners' mean accuracy on every image of their
5 classes with the mean absolute difference to the same learner trained one at a time (a grouped network
rounds differently from a lone one, and over a training such differences grow as any rounding difference does:
the accuracies show whether that matters).
The 8 and 28 px images are the digits (gray, resized); the 32 px ones are the digits resized and coloured
(RGB): bench/coloured_digits.py.

    python bench/train_populations.py [--learners N] [--sizes 8 28 32]   # N: 18, 18, 6 by default
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from coloured_digits import coloured_digits  # bench/coloured_digits.py

from metaaug import workers
from metaaug.config import TrainConfig
from metaaug.policies import fixed_policy, sample_apply
from metaaug.population import population_size, populations
from metaaug.timing import machine_description
from metaaug.training import predict, set_threads, to_tensor, train_population

LEARNERS = {8: 18, 28: 18, 32: 6}  # a size: two populations of 9 at 8 px; the 32 px ResNet costs ~12 s a learner


def supports(size: int, learners: int, ways: int = 5, shots: int = 5) -> tuple[list, list, int, tuple]:
    """`learners` different 25-image supports of this size (gray below 32 px, RGB at 32 px), their labels, and
    every image of the `ways` classes with its label (the accuracy's test set)."""
    images, labels = coloured_digits(size) if size >= 32 else coloured_digits(size, gray=True)
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for _ in range(learners):
        picks = np.concatenate([rng.choice(np.flatnonzero(labels == c), shots, replace=False) for c in range(ways)])
        xs.append(to_tensor(images[picks]))
        ys.append(torch.tensor(np.repeat(np.arange(ways), shots)))
    test = labels < ways
    return xs, ys, ways, (to_tensor(images[test]), labels[test])


def _train(group: list[int]) -> list[dict]:
    shared = workers.state()
    xs, ys = shared["xs"], shared["ys"]
    augment = shared["augment"]
    trained = train_population([xs[i] for i in group], [ys[i] for i in group], shared["ways"], shared["settings"],
                               list(group), [augment] * len(group))
    return [model for model, _ in trained]


def timed(xs, ys, ways, settings, per_population: int, n_workers: int, augment) -> tuple[float, list]:
    groups = populations(list(range(len(xs))), per_population)
    start = time.perf_counter()
    with workers.Pool(n_workers, {"xs": xs, "ys": ys, "ways": ways, "settings": settings, "augment": augment}) as pool:
        models = [m for group in pool.map(_train, groups) for m in group]
    return time.perf_counter() - start, models


def one_at_a_time(xs, ys, ways, settings, augment) -> tuple[float, list]:
    """The train stage before populations: one process, the old thread rule."""
    threads = torch.get_num_threads()
    set_threads(xs[0].shape[-1])
    start = time.perf_counter()
    models = [train_population([x], [y], ways, settings, [i], [augment])[0][0] for i, (x, y) in enumerate(zip(xs, ys))]
    seconds = time.perf_counter() - start
    torch.set_num_threads(threads)
    return seconds, models


def accuracies(models: list, x: torch.Tensor, y: np.ndarray) -> np.ndarray:
    """Each learner's accuracy (%) on (x, y)."""
    return np.array([100 * np.mean(predict(m, x) == y) for m in models])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", type=int, help="learners a size (default: 18 at 8 and 28 px, 6 at 32 px)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 28, 32])
    args = parser.parse_args()
    n_workers = workers.count(0)
    print("| size | learner | way | population | processes | s per learner (150 epochs) | speed-up | "
          "accuracy, mean (%) | |Δ accuracy| per learner vs one at a time (points) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        xs, ys, ways, (test_x, test_y) = supports(size, args.learners or LEARNERS.get(size, 6))
        channels = xs[0].shape[1]
        model = "small_cnn" if size < 32 else "resnet"
        settings = TrainConfig(model=model)  # the default recipe, 150 epochs
        grouped = population_size(0, channels, size, ways, settings.width, settings.model)
        policy = fixed_policy("trivialaugment", image_channels=channels)
        augment = lambda x, gen: sample_apply(policy, x, gen)  # noqa: E731
        scale = 1 / len(xs)
        base, ref = one_at_a_time(xs, ys, ways, settings, augment)
        rows = [("one at a time", 1, 1, base, ref)]
        for label, procs in (("populations, 1 worker", 1), ("populations, workers", n_workers)):
            seconds, states = timed(xs, ys, ways, settings, grouped, procs, augment)
            rows.append((label, grouped, procs, seconds, states))
        reference = accuracies(ref, test_x, test_y)
        for label, pop, procs, seconds, models in rows:
            accuracy = accuracies(models, test_x, test_y)
            threads = "torch default" if size >= 32 and label == "one at a time" else "1 thread"
            print(f"| {size}×{size}×{channels} | {model} | {label} | {pop} | {procs} ({threads}) | "
                  f"{seconds * scale:.2f} | {base / seconds:.2f}× | {accuracy.mean():.2f} | "
                  f"{np.abs(accuracy - reference).mean():.2f} |", flush=True)
    print(f"\nTrivialAugment on the fly; {machine_description()}; "
          f"1-minute load average {os.getloadavg()[0]:.1f} at the end.")


if __name__ == "__main__":
    main()
