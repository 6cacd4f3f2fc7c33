"""Training one learner on (optionally augmented) images: the unit of work for
the train stage, for scoring policies in metatrain, and for benchmarks.

Augmentation is applied to whole epochs at once: a chunk of epochs' worth of
training images is augmented in one batched call before those epochs run, so
the per-step cost is the network alone (a 25-image batch of 8x8 digits would
otherwise spend more time in per-op Python dispatch than in the convolutions).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metaaug import distributed
from metaaug.models import build_model

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
AUGMENT_CHUNK = 4096  # images augmented per batched call


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation recipe: SGD-Nesterov with a one-cycle schedule (DESIGN §5)."""

    epochs: int = 150
    batch_size: int = 25
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    width: int = 32

    @classmethod
    def from_params(cls, train_params: dict) -> "TrainSettings":
        return cls(**{k: train_params[k] for k in asdict(cls())})


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


def augmented_epochs(x: torch.Tensor, epochs: int, augment: Augment | None, gen: torch.Generator):
    """Yield one (possibly augmented) copy of `x` per epoch, augmenting many epochs per call."""
    per_call = max(1, AUGMENT_CHUNK // max(len(x), 1))
    for start in range(0, epochs, per_call):
        n = min(per_call, epochs - start)
        copies = x.repeat(n, 1, 1, 1)
        if augment is not None:
            copies = augment(copies, gen).clamp_(0, 1)
        yield from copies.chunk(n)


def train_learner(x: torch.Tensor, y: torch.Tensor, n_classes: int, settings: TrainSettings, seed: int,
                  augment: Augment | None = None, device: torch.device | None = None, ddp: bool = False,
                  ) -> tuple[nn.Module, dict[str, list[float]]]:
    """Train a fresh learner on (x, y); `seed` fixes the initialisation, data order and augmentation draws.

    Returns the trained model (eval mode) and per-epoch curves (`loss`, `train_acc`, measured on
    the augmented batches it trained on). On CUDA the forward pass runs in bfloat16 autocast.
    `ddp`: one DistributedDataParallel learner over the process group, each rank training on its slice
    of every batch (metaaug.distributed); every rank returns the same model and curves.
    """
    device = device or torch.device("cpu")
    torch.manual_seed(seed)
    model = net = build_model(x.shape[1], x.shape[-1], n_classes, settings.width).to(device)
    if ddp:
        model, net = distributed.data_parallel(model, device)
    n_ranks = distributed.ranks() if ddp else 1
    gen = torch.Generator(device=device).manual_seed(seed)
    x, y = to_device(x, device), to_device(y, device)
    steps_per_epoch = math.ceil(len(x) / settings.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum, nesterov=True,
                          weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=settings.epochs * steps_per_epoch)
    use_amp = device.type == "cuda"
    sums = torch.zeros(settings.epochs, 2, dtype=torch.float64, device=device)  # per epoch: loss sum, correct
    model.train()
    for epoch, xe in enumerate(augmented_epochs(x, settings.epochs, augment, gen)):
        order = torch.randperm(len(x), generator=gen, device=device)
        for idx in order.split(settings.batch_size):
            mine = distributed.local_slice(idx) if ddp else idx
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = net(normalise(xe[mine]))
                loss_sum = F.cross_entropy(logits, y[mine], reduction="sum")
            opt.zero_grad(set_to_none=True)
            # DDP averages gradients over ranks, so each rank scales by ranks / batch: the whole batch's mean.
            (loss_sum / (len(idx) / n_ranks)).backward()
            opt.step()
            sched.step()
            sums[epoch, 0] += loss_sum.detach()
            sums[epoch, 1] += (logits.argmax(1) == y[mine]).sum()
    if ddp:
        distributed.sum_over_ranks(sums)
    per_image = (sums / len(x)).cpu()  # one host sync per training, not one per step
    return model.eval(), {"loss": per_image[:, 0].tolist(), "train_acc": per_image[:, 1].tolist()}


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """Predicted class per image."""
    device = next(model.parameters()).device
    model.eval()
    preds = [model(normalise(xb.to(device))).argmax(1).cpu() for xb in x.split(batch_size)]
    return torch.cat(preds).numpy()
