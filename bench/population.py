"""Proxy learners trained one by one against the same learners trained as one population.

Metatrain scores each candidate policy by training a small learner on a few-shot
meta-train task; `metatrain.population` learners are trained at once as one grouped
network (metaaug/population.py). This measures, in one run and interleaved, the wall
time per learner of both ways on the default proxy (100 epochs, width 16, 5-way
5-shot digit tasks, TrivialAugment-Wide), one thread, and prints the ratio. It also
times the population in PyTorch's default channels-first layout (both paths train in
channels-last memory, whose pooling and batch norm are faster on the CPU).
`--source gray28` and `rgb32` run the same on the digits resized to 28 px gray and to 32 px
coloured (bench/coloured_digits.py), where the proxy costs 6-9x the 8 px one's operations a
step: where grouping stops paying (metaaug.population.DISPATCH_BOUND_FLOPS).

    python bench/population.py [--sizes 3,9,18] [--repeats 3] [--device cpu|cuda] [--source digits|gray28|rgb32]
"""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager

import numpy as np
import torch
from coloured_digits import coloured_digits  # bench/coloured_digits.py

from metaaug.data import load_source
from metaaug.search import SearchSpace, sample_tasks, score, score_population
from metaaug.ops import OP_NAMES
from metaaug.config import TrainConfig
from metaaug.models import per_image_flops
from metaaug.timing import machine_description
from metaaug.training import pick_device

PROXY = TrainConfig(epochs=100, width=16)


@contextmanager
def default_layout():
    """Make `.to(memory_format=channels_last)` / `.contiguous(channels_last)` no-ops: the layout before."""
    to, contiguous = torch.nn.Module.to, torch.Tensor.contiguous

    def plain_to(self, *args, memory_format=None, **kwargs):
        return to(self, *args, **kwargs) if args or kwargs else self

    torch.nn.Module.to = plain_to
    torch.Tensor.contiguous = lambda self, memory_format=None: contiguous(self)
    try:
        yield
    finally:
        torch.nn.Module.to, torch.Tensor.contiguous = to, contiguous


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="3,9,18")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--source", default="digits", choices=("digits", "gray28", "rgb32"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = pick_device(args.device)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.source == "digits":
        ds = load_source("digits")
        images, labels = ds.images, ds.labels
    else:
        images, labels = coloured_digits(int(args.source[-2:]), gray=args.source.startswith("gray"))
    keep = labels < 5
    tasks = sample_tasks(images[keep], labels[keep], 5, 5, 100, max(sizes), 0)
    channels, side = images.shape[-1], images.shape[1]
    if device.type == "cuda":
        from dataclasses import replace
        tasks = [replace(t, support_x=t.support_x.to(device), support_y=t.support_y.to(device),
                         query_x=t.query_x.to(device)) for t in tasks]
    space = SearchSpace(OP_NAMES, channels=channels)
    policy = space.policy(space.initial())
    score(policy, tasks[0], TrainConfig(epochs=3, width=16))  # warm-up: imports, kernels
    flops = per_image_flops(channels, side, 5, PROXY.width, PROXY.model)[0] / 1e6
    print(f"Proxy learners (100 epochs, width 16, 25 images of {side}x{side}x{channels}, {flops:.1f} MFLOP a "
          f"training step on one image, TrivialAugment-Wide), one thread. "
          f"Measured on: {machine_description()}, {device.type}\n")
    print("| learners | one by one (s per learner) | population (s per learner) | ratio | "
          "population, channels-first (s per learner) | channels-last gain |")
    print("|---|---|---|---|---|---|")
    for size in sizes:
        jobs = [(policy, t) for t in tasks[:size]]
        alone, together, plain = [], [], []
        for _ in range(args.repeats):  # interleaved, so load drift hits all three alike
            alone.append(seconds(lambda: [score(p, t, PROXY) for p, t in jobs]) / size)
            together.append(seconds(lambda: score_population(jobs, PROXY)) / size)
            with default_layout():
                plain.append(seconds(lambda: score_population(jobs, PROXY)) / size)
        a, t, p = (float(np.median(v)) for v in (alone, together, plain))
        print(f"| {size} | {a:.3f} | {t:.3f} | {a / t:.1f}× | {p:.3f} | {p / t:.1f}× |")


if __name__ == "__main__":
    main()
