"""The search budget, in units of one downstream training, and what a proxy training costs in them.

Costs are counted, not timed: a training costs its learner's floating-point operations
(torch's FlopCounterMode: the conv and linear layers, forward and backward, of one image),
times the images it trains on (support images x epochs), plus one forward pass per query
image it is scored on. A downstream training is counted the same way (its support images,
`train.epochs`, `train.width`). The count is a function of sizes and epochs alone, so the
search stops at the same point, and chooses the same policy, on any machine and under any
load; docs/search.md compares it with the wall-clock ratio measured on a 2-core CPU.
Counting CPU time would be honest about overheads but make the answer depend on the machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from metaaug.config import params_file
from metaaug.errors import MetaaugError
from metaaug.models import per_image_flops


def training_flops(channels: int, image_size: int, n_classes: int, width: int, model: str, support: int,
                   epochs: int, query: int = 0) -> int:
    """Operations of one training on `support` images for `epochs`, scored on `query` images."""
    step, forward = per_image_flops(channels, image_size, n_classes, width, model)
    return support * epochs * step + query * forward


@dataclass(frozen=True)
class Budget:
    """`limit` downstream trainings' worth of proxy trainings; each proxy training costs `per_training` units."""

    limit: float
    per_training: float

    @property
    def trainings(self) -> int:
        """The most proxy trainings the limit pays for (the 1e-9 absorbs float rounding of exact fits)."""
        return math.floor(self.limit / self.per_training + 1e-9)

    def left(self, spent_trainings: int) -> int:
        return max(0, self.trainings - spent_trainings)

    def spent(self, trainings: int) -> float:
        return trainings * self.per_training

    def check(self, spent_trainings: int) -> None:
        """The accounting's guard: a method that scored past the limit is a bug, not a setting."""
        if spent_trainings > self.trainings:
            raise RuntimeError(f"search spent {spent_trainings} proxy trainings; its budget pays for {self.trainings}")

    def require(self, trainings: int, what: str) -> None:
        """A one-line config error when the budget cannot pay for the least a method needs."""
        if self.trainings < trainings:
            raise MetaaugError(f"{params_file()}: metatrain.budget = {self.limit:g} pays for {self.trainings} proxy "
                               f"trainings ({self.per_training:.3f} downstream trainings each); expected at least "
                               f"{trainings} ({what}): metatrain.budget >= {trainings * self.per_training:.2f}")


def proxy_budget(limit: float, proxy: int, downstream: int) -> Budget:
    """The budget given the operations of one proxy training and of one downstream training."""
    return Budget(limit, proxy / downstream)


def task_flops(task, epochs: int, width: int, model: str) -> int:
    """Operations of one proxy training on a meta-train task (support for `epochs`, scored on its query)."""
    x = task.support_x
    return training_flops(x.shape[1], x.shape[-1], task.n_classes, width, model, len(x), epochs, len(task.query_x))


def downstream_flops(recipe, channels: int, image_size: int, n_classes: int, support: int) -> int:
    """Operations of one downstream training: the `train` recipe on `support` target images (no query)."""
    return training_flops(channels, image_size, n_classes, recipe.width, recipe.model, support, recipe.epochs)


