"""Where `train.distributed: ddp` training parts from one process's, and why: step by step, per learner.

The test's setting (tests/test_distributed.py): the digits target task of the default params with 2 splits,
arm `none`, 4 epochs, 25 images in batches of 10, 2 gloo ranks on the CPU (slices 5/5, 5/5, 3/2). For each
learner and split: the largest parameter gap after every step, the first step where it exceeds 1e-5, and at
that step the ReLU inputs (module ReLUs and the ResNet's residual sums) whose sign differs between one
process and the ranks, and how close to 0 they are. A gap that opens on a ReLU input within rounding of 0 is
a near-tie at the kink, not a gradient error: every step's gradient agrees (tests/test_distributed.py,
test_each_ddp_step_has_the_whole_batch_gradient).

    python bench/ddp_divergence.py [--models small_cnn resnet]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from metaaug.config import TrainConfig, defaults
from metaaug.models import MODELS, BasicBlock
from metaaug.tasks import prepare
from metaaug.timing import machine_description
from metaaug.training import OneCycleSGD, to_tensor, train_learner

RECIPE = {"epochs": 4, "batch_size": 10}


def trajectory(x, y, n_classes, seed, model, ddp) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """The parameters after every SGD step, and every step's ReLU inputs (module ReLUs, the ResNet's residual
    sums) as this process computed them, on its rows of the batch."""
    params, relus, step = [], [[]], OneCycleSGD.step

    def record(opt, *args, **kwargs):
        done = step(opt, *args, **kwargs)
        params.append([p.detach().clone() for p in opt.params])
        relus.append([])
        return done

    def seen(m, args):
        if isinstance(m, torch.nn.ReLU):
            relus[-1].append(args[0].detach().clone())
        elif isinstance(m, BasicBlock):
            with torch.no_grad():
                relus[-1].append(m.body(args[0]) + m.skip(args[0]))

    hook = torch.nn.modules.module.register_module_forward_pre_hook(seen)
    try:
        with mock.patch.object(OneCycleSGD, "step", record):
            train_learner(x, y, n_classes, TrainConfig(**RECIPE, model=model), seed=seed, ddp=ddp)
    finally:
        hook.remove()
    return params, relus[:-1]


def rank(r: int, job: tuple, out: Path) -> None:
    """One of 2 gloo ranks (rendezvous through a file in `out`): its trajectory into `out`."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out / 'store'}", rank=r, world_size=2)
    try:
        torch.save(trajectory(*job, ddp=True), out / f"rank{r}.pt")
    finally:
        dist.destroy_process_group()


def compare(job: tuple, model: str) -> str:
    """One line: the gap per step and, where it opens, the ReLU inputs of other sign."""
    alone, alone_relus = trajectory(*job, model, ddp=False)
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(rank, args=((*job, model), Path(tmp)), nprocs=2, start_method="fork")
        (params, relus0), (_, relus1) = (torch.load(Path(tmp) / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    gaps = [max((a - b).abs().max().item() for a, b in zip(pa, pb)) for pa, pb in zip(alone, params)]
    line = "gap per step: " + " ".join(f"{g:.0e}" for g in gaps)
    first = next((i for i, g in enumerate(gaps) if g > 1e-5), None)
    if first is None:
        return line
    # the ranks' rows, in batch order, against one process's
    ranks = [torch.cat([u, v]) for u, v in zip(relus0[first], relus1[first])]
    flipped = [(u > 0) != (v > 0) for u, v in zip(alone_relus[first], ranks)]
    n = sum(f.sum().item() for f in flipped)
    widest = max((torch.cat([u[f].abs(), v[f].abs()]).max().item()
                  for u, v, f in zip(alone_relus[first], ranks, flipped) if f.any()), default=0.0)
    return (f"{line}; opens at step {first + 1}: {n} ReLU input(s) of other sign"
            f"{f', all within {widest:.1e} of 0' if n else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    params = defaults()
    tasks = params.tasks.model_copy(update={"splits": 2})
    with tempfile.TemporaryDirectory() as tmp:
        prepare(params.data, tasks, params.seed, Path(tmp))
        x_all = to_tensor(np.load(Path(tmp) / "target_images.npy"))
        y_all = torch.tensor(np.load(Path(tmp) / "target_labels.npy"))
        manifest = json.loads((Path(tmp) / "manifest.json").read_text())
    n_classes = len(manifest["target"]["classes"])
    print(f"# {machine_description()}; load average {os.getloadavg()[0]:.2f}")
    for model in args.models:
        for i, split in enumerate(manifest["splits"]):
            s = np.asarray(split["support"])
            print(f"{model} split {i}: {compare((x_all[s], y_all[s], n_classes, split['seed']), model)}")


if __name__ == "__main__":
    main()
