"""What one downstream training costs per learner (`train.model`) at 8, 28 and 32 px on this machine.

One 150-epoch training (the default recipe: 5 classes x 5 shots = 25 images, batch 25, width 32,
no augmentation) of each learner at each size, after an untimed 3-epoch warm-up, with the thread rule the train stage applies
(training.set_threads: one thread below 32 px, torch's default from 32 px), `--repeats` times;
the median wall time per run. Images are the digits, resized with cv2 (gray). Which learner `auto`
trains is decided by a paired trial on the meta-train tasks (metaaug/learners.py), not by the size.

    python bench/model_cost.py [--repeats 1] [--sizes 8 28 32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import cv2
import numpy as np
import torch
from sklearn.datasets import load_digits

from metaaug.config import TrainConfig
from metaaug.models import MODELS
from metaaug.timing import machine_description
from metaaug.training import set_threads, to_tensor, train_learner


def support(size: int, ways: int = 5, shots: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    digits = load_digits()
    picks = np.concatenate([np.flatnonzero(digits.target == c)[:shots] for c in range(ways)])
    images = [(digits.images[i] * (255 / 16)).astype(np.uint8) for i in picks]
    if size != 8:
        images = [cv2.resize(im, (size, size), interpolation=cv2.INTER_LINEAR) for im in images]
    return to_tensor(np.stack(images)[..., None]), torch.tensor(np.repeat(np.arange(ways), shots))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 28, 32])
    args = parser.parse_args()
    print(f"start: load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    print("| size | learner | threads | parameters | s per 150-epoch run |\n|---|---|---|---|---|")
    default_threads = torch.get_num_threads()
    for size in args.sizes:
        x, y = support(size)
        for model in MODELS:
            torch.set_num_threads(default_threads)
            set_threads(size)
            cfg = TrainConfig(model=model)
            train_learner(x, y, 5, cfg.model_copy(update={"epochs": 3}), seed=0)  # warm-up, untimed
            times = []
            for r in range(args.repeats):
                start = time.perf_counter()
                net, _ = train_learner(x, y, 5, cfg, seed=r)
                times.append(time.perf_counter() - start)
            params = sum(p.numel() for p in net.parameters())
            print(f"| {size}x{size} | {model} | {torch.get_num_threads()} | {params:,} | "
                  f"{statistics.median(times):.1f} |", flush=True)
    print(f"\nend: load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"measured on: {machine_description()}.")


if __name__ == "__main__":
    main()
