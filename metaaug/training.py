"""Training one learner on (optionally augmented) images: the unit of work for
the train stage, for scoring policies in metatrain, and for benchmarks.

Augmentation is applied to whole epochs at once: a chunk of epochs' worth of
training images is augmented in one batched call before those epochs run, so
the per-step cost is the network alone (a 25-image batch of 8x8 digits would
otherwise spend more time in per-op Python dispatch than in the convolutions).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.sgd import sgd

from metaaug import distributed, population
from metaaug.config import MAX_MOMENTUM, TrainConfig
from metaaug.models import build_model

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
AUGMENT_CHUNK = 4096  # images augmented per batched call
# The fields of params.train a training reads (the rest say which arms to train, and where)
RECIPE = {"epochs", "batch_size", "lr", "momentum", "weight_decay", "width", "model"}
MOMENTUM_SWING = 0.05  # the one-cycle schedule's momentum: train.momentum +- this (0.95 to 0.85 around 0.9)


def set_threads(image_size: int) -> None:
    """Below 32 px, one thread: small learners run faster so (measured: 0.6 s vs 0.9 s a digits run on 2 cores),
    and a reduction split over threads would round by the core count (outputs differ machine to machine)."""
    if image_size < 32:
        torch.set_num_threads(1)


def pick_device(name: str = "auto") -> torch.device:
    """CUDA when asked for or available (auto), else the CPU."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [0, 1]."""
    return torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float().div_(255.0)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device copy; on CUDA from pinned memory without blocking, so it overlaps queued GPU work."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5) / 0.25


def augmented_epochs(x: torch.Tensor, epochs: int, augment: Augment | None, gen: torch.Generator,
                     chunk: int = AUGMENT_CHUNK):
    """Yield one (possibly augmented) copy of `x` per epoch, augmenting about `chunk` images per call."""
    per_call = max(1, chunk // max(len(x), 1))
    for start in range(0, epochs, per_call):
        n = min(per_call, epochs - start)
        copies = x.repeat(n, 1, 1, 1)
        if augment is not None:
            copies = augment(copies, gen).clamp_(0, 1)
        yield from copies.chunk(n)


class OneCycleSGD:
    """Nesterov SGD with weight decay on the one-cycle schedule (Smith 2018): the learning rate rises from lr/25
    to `lr` over the first 30 % of the steps, then falls to lr/250,000 (cosine), while the momentum falls from
    `momentum` + MOMENTUM_SWING to `momentum` - MOMENTUM_SWING and rises back.

    Step for step, this is what torch.optim.SGD under lr_scheduler.OneCycleLR computes (tests/test_training.py
    compares them bit for bit), with the schedule's defaults and its momentum bounds set from `momentum` (which
    OneCycleLR alone would overwrite with 0.95 and 0.85). It calls torch's functional `sgd`: the classes import
    torch's compiler (torch._dynamo) on their first call, 2.2 s of every process that trains on this project's
    CPU."""

    WARMUP, DIV, FINAL_DIV = 0.3, 25.0, 1e4  # OneCycleLR's pct_start, div_factor, final_div_factor

    def __init__(self, params: list[torch.Tensor], lr: float, momentum: float, weight_decay: float, steps: int):
        self.params, self.weight_decay, self.steps, self.taken = params, weight_decay, steps, 0
        self.buffers: list[torch.Tensor | None] = [None] * len(params)
        initial = lr / self.DIV
        top, bottom = min(momentum + MOMENTUM_SWING, MAX_MOMENTUM), max(momentum - MOMENTUM_SWING, 0.0)
        # (last step of the phase, lr from -> to, momentum from -> to), as OneCycleLR's two phases
        self.phases = [(float(self.WARMUP * steps) - 1, initial, lr, top, bottom),
                       (steps - 1, lr, initial / self.FINAL_DIV, bottom, top)]

    def schedule(self, step: int) -> tuple[float, float]:
        """(learning rate, momentum) of step `step` (from 0), computed as OneCycleLR computes them."""
        start = 0.0
        for i, (end, lr_from, lr_to, m_from, m_to) in enumerate(self.phases):
            if step <= end or i == len(self.phases) - 1:
                cos_out = math.cos(math.pi * ((step - start) / (end - start))) + 1
                return lr_to + (lr_from - lr_to) / 2.0 * cos_out, m_to + (m_from - m_to) / 2.0 * cos_out
            start = end
        raise AssertionError("unreachable: the last phase always matches")

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        if self.taken >= self.steps:
            raise ValueError(f"step {self.taken + 1} of a {self.steps}-step schedule")
        lr, momentum = self.schedule(self.taken)
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        buffers = [self.buffers[i] for i in live]
        sgd([self.params[i] for i in live], [self.params[i].grad for i in live], buffers,
            weight_decay=self.weight_decay, momentum=momentum, lr=lr, dampening=0.0, nesterov=True, maximize=False)
        for i, buffer in zip(live, buffers):
            self.buffers[i] = buffer
        self.taken += 1


def train_learner(x: torch.Tensor, y: torch.Tensor, n_classes: int, settings: TrainConfig, seed: int,
                  augment: Augment | None = None, device: torch.device | None = None, ddp: bool = False,
                  ) -> tuple[nn.Module, dict[str, list[float]]]:
    """Train a fresh learner on (x, y); `seed` fixes the initialisation, data order and augmentation draws.

    Returns the trained model (eval mode) and per-epoch curves (`loss`, `train_acc`, measured on
    the augmented batches it trained on). On CUDA the forward pass runs in bfloat16 autocast.
    `ddp`: one DistributedDataParallel learner over the process group, each rank training on its slice
    of every batch (metaaug.distributed); every rank returns the same model and curves.
    """
    return train_population([x], [y], n_classes, settings, [seed], [augment], device, ddp)[0]


def train_population(xs: list[torch.Tensor], ys: list[torch.Tensor], n_classes: int, settings: TrainConfig,
                     seeds: list[int], augments: list[Augment | None], device: torch.device | None = None,
                     ddp: bool = False) -> list[tuple[nn.Module, dict[str, list[float]]]]:
    """Train len(xs) independent learners at once (metaaug.population): learner p is what
    `train_learner(xs[p], ys[p], ..., seeds[p], augments[p])` trains, up to float rounding.

    Every xs[p] has the same shape (same number of images, steps per epoch). Returns
    (model, curves) per learner, as `train_learner` does.
    """
    device = device or torch.device("cpu")
    size = len(xs)
    members = []
    for seed in seeds:
        torch.manual_seed(seed)
        members.append(build_model(xs[0].shape[1], xs[0].shape[-1], n_classes, settings.width,
                                   settings.model).to(device))
    model = net = (members[0] if size == 1 else population.group(members)).to(memory_format=torch.channels_last)
    if ddp:
        model, net = distributed.data_parallel(model, device)
    n_ranks = distributed.ranks() if ddp else 1
    gens = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]
    x = torch.stack([to_device(xp, device) for xp in xs], 1)  # (images, learners, C, H, W)
    y = torch.stack([to_device(yp, device) for yp in ys], 1)
    epochs = [augmented_epochs(x[:, p], settings.epochs, augments[p], gens[p], AUGMENT_CHUNK)
              for p in range(size)]
    learner = torch.arange(size, device=device)
    steps_per_epoch = math.ceil(len(x) / settings.batch_size)
    opt = OneCycleSGD(list(model.parameters()), settings.lr, settings.momentum, settings.weight_decay,
                      settings.epochs * steps_per_epoch)
    use_amp = device.type == "cuda"
    sums = torch.zeros(settings.epochs, 2, size, dtype=torch.float64, device=device)  # loss sum, correct
    model.train()
    for epoch in range(settings.epochs):
        xe = torch.stack([next(e) for e in epochs], 1)
        order = torch.stack([torch.randperm(len(x), generator=g, device=device) for g in gens], 1)
        for idx in order.split(settings.batch_size):
            mine = distributed.local_slice(idx) if ddp else idx
            xb, yb = xe[mine, learner], y[mine, learner]  # (batch, learners, ...)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                inputs = normalise(xb.flatten(1, 2)).contiguous(memory_format=torch.channels_last)
                logits = net(inputs).view(len(mine), size, n_classes)
                losses = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none").view(len(mine), size)
            opt.zero_grad()
            # Each learner's mean over the whole batch; DDP averages gradients over ranks, hence * ranks.
            (losses.sum() / (len(idx) / n_ranks)).backward()
            opt.step()
            sums[epoch, 0] += losses.detach().sum(0)
            sums[epoch, 1] += (logits.argmax(2) == yb).sum(0)
    if ddp:
        distributed.sum_over_ranks(sums)
    per_image = (sums / len(x)).cpu()  # one host sync per training, not one per step
    trained = [model] if size == 1 else [population.member(model, m, p) for p, m in enumerate(members)]
    return [(m.eval(), {"loss": per_image[:, 0, p].tolist(), "train_acc": per_image[:, 1, p].tolist()})
            for p, m in enumerate(trained)]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> np.ndarray:
    """Predicted class per image, in batches of `batch_size`: by default 1024 on CUDA, 64 on the CPU. In
    channels-last memory, as the learners train (the model is converted in place): a one-thread 32 px small CNN
    predicts 1.2-1.7x as fast as in the default layout, and the CPU's best batch shrinks with it
    (bench/predict.py)."""
    device = next(model.parameters()).device
    batch_size = batch_size or (1024 if device.type == "cuda" else 64)
    model.eval().to(memory_format=torch.channels_last)
    preds = [model(normalise(xb.to(device)).contiguous(memory_format=torch.channels_last)).argmax(1).cpu()
             for xb in x.split(batch_size)]
    return torch.cat(preds).numpy()
