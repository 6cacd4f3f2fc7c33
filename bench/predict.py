"""Test-set prediction in PyTorch's default layout (before) against channels-last memory (now), one thread.

evaluate predicts every arm x split model on the test set, and the search predicts every proxy learner on its
query images (metaaug.training.predict). For each size, the same trained learners (the default recipe, small
CNN, 5 classes x 5 images; the 8 px digits in gray, the 32 px coloured digits: bench/coloured_digits.py) predict
every image of their 5 classes in each way, interleaved over `--repeats` rounds, on one thread as evaluate's
workers do. Prints the median seconds per learner and 1,000 images with the range over rounds, the speed-up
over the default layout's batches of 128 (predict before), and how many predictions differ from it.

    python bench/predict.py [--sizes 8 32] [--learners 3] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from coloured_digits import coloured_digits  # bench/coloured_digits.py

from metaaug.config import TrainConfig
from metaaug.timing import machine_description
from metaaug.training import normalise, predict, to_tensor, train_population

WAYS, SHOTS = 5, 5


@torch.no_grad()
def predict_default_layout(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 128) -> np.ndarray:
    """predict before channels-last: the default (NCHW) layout, batches of 128."""
    model.eval().to(memory_format=torch.contiguous_format)
    return torch.cat([model(normalise(xb)).argmax(1) for xb in x.split(batch_size)]).numpy()


WAYS_TO_PREDICT = {"default layout, batch 128 (before)": predict_default_layout,
                   **{f"channels-last, batch {b}" + (" (now)" if b == 64 else ""):
                      (lambda b: lambda m, x: predict(m, x, b))(b) for b in (32, 64, 128)}}


def learners(size: int, n: int) -> tuple[list[torch.nn.Module], torch.Tensor]:
    """`n` small CNNs trained on different 5 x 5 supports of this size, and every image of the 5 classes."""
    images, labels = coloured_digits(size) if size >= 32 else coloured_digits(size, gray=True)
    rng = np.random.default_rng(0)
    models = []
    for i in range(n):
        picks = np.concatenate([rng.choice(np.flatnonzero(labels == c), SHOTS, replace=False) for c in range(WAYS)])
        (model, _), = train_population([to_tensor(images[picks])], [torch.tensor(np.repeat(np.arange(WAYS), SHOTS))],
                                       WAYS, TrainConfig(model="small_cnn"), [i], [None])
        models.append(model)
    return models, to_tensor(images[labels < WAYS])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--learners", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| size | way | s per learner and 1,000 images: median (range) | speed-up | predictions differing |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        models, x = learners(size, args.learners)
        reference = [predict_default_layout(m, x) for m in models]
        seconds = {name: [] for name in WAYS_TO_PREDICT}
        differing = dict.fromkeys(WAYS_TO_PREDICT, 0)
        for _ in range(args.repeats):
            for name, way in WAYS_TO_PREDICT.items():
                start = time.perf_counter()
                predictions = [way(m, x) for m in models]
                seconds[name].append((time.perf_counter() - start) / len(models) * 1000 / len(x))
                differing[name] = sum(int((p != r).sum()) for p, r in zip(predictions, reference))
        base = np.median(seconds[next(iter(WAYS_TO_PREDICT))])
        for name, values in seconds.items():
            print(f"| {size}×{size}×{x.shape[1]} | {name} | {np.median(values):.3f} ({min(values):.3f}-"
                  f"{max(values):.3f}) | {base / np.median(values):.2f}× | {differing[name]} of "
                  f"{len(x) * len(models)} |", flush=True)
    print(f"\n{args.learners} learners a size, {args.repeats} rounds, one thread; {machine_description()}")


if __name__ == "__main__":
    main()
