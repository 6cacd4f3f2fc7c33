"""A population of P identical-architecture learners as one network with grouped layers.

Metatrain scores a policy by training small learners on 25 images; one such training
is ~150 optimiser steps of tiny convolutions, so its cost is per-op dispatch, not
arithmetic. Stacking P learners along the channel axis — every Conv2d becomes a
grouped convolution with P groups, every BatchNorm2d one over P times the channels,
every Linear a batched matmul — runs P trainings for the dispatch cost of one.

Each member stays exactly an independent learner: a grouped convolution never mixes
groups, BatchNorm statistics are per channel, and SGD (momentum, weight decay) is
elementwise, so the summed loss gives every member the gradient of its own loss.
``tests/test_population.py`` checks a population against separate trainings.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from metaaug.models import per_image_flops


class GroupedLinear(nn.Module):
    """P Linear layers applied to the P feature blocks of a (batch, P * in) input."""

    def __init__(self, layers: list[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in layers]))  # (P, out, in)
        self.bias = nn.Parameter(torch.stack([layer.bias.detach() for layer in layers]))  # (P, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, _, n_in = self.weight.shape
        out = torch.einsum("bpi,poi->bpo", x.reshape(x.shape[0], p, n_in), self.weight) + self.bias
        return out.reshape(x.shape[0], -1)


def _cat(members: list[nn.Module], name: str) -> torch.Tensor:
    return torch.cat([getattr(m, name).detach() for m in members])


def group(members: list[nn.Module]) -> nn.Module:
    """One network computing every member on its own channel block (members share one architecture).

    Input: (batch, P * channels, H, W), member p's images in channel block p; output:
    (batch, P * n_classes). Parameters and buffers are the members', concatenated.
    """
    first, p = members[0], len(members)
    if isinstance(first, nn.Conv2d):
        grouped = nn.Conv2d(p * first.in_channels, p * first.out_channels, first.kernel_size, first.stride,
                            first.padding, groups=p * first.groups, bias=first.bias is not None)
    elif isinstance(first, nn.BatchNorm2d):
        grouped = nn.BatchNorm2d(p * first.num_features, first.eps, first.momentum)
    elif isinstance(first, nn.Linear):
        return GroupedLinear(members)
    elif next(first.parameters(), None) is None:
        return copy.deepcopy(first)  # ReLU, pooling, Flatten: channel-wise already
    else:
        grouped = copy.copy(first)  # the same forward(), over grouped children
        grouped._modules = {name: group([m._modules[name] for m in members]) for name in first._modules}
        return grouped
    with torch.no_grad():
        for name, value in [*grouped.named_parameters(recurse=False), *grouped.named_buffers(recurse=False)]:
            if name != "num_batches_tracked":
                value.copy_(_cat(members, name))
    return grouped.to(first.weight.device)


def member(grouped: nn.Module, template: nn.Module, p: int) -> nn.Module:
    """Copy member p's parameters and buffers out of `grouped` into `template` (its architecture).

    A grouped tensor is the members' tensors concatenated (or stacked) along dim 0, so
    member p's is block p of it reshaped to the template's shape.
    """
    grouped_state = grouped.state_dict()
    template.load_state_dict({name: grouped_state[name] if value.dim() == 0 else
                              grouped_state[name].reshape(-1, *value.shape)[p]
                              for name, value in template.state_dict().items()})
    return template


def populations(jobs: list, size: int) -> list[list]:
    """`jobs` cut into consecutive near-equal populations of at most `size`: a function of the job list alone,
    so results do not depend on how many processes or ranks share the work."""
    n = math.ceil(len(jobs) / size)
    bounds = np.linspace(0, len(jobs), n + 1).round().astype(int)
    return [jobs[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


GROUPED = 9  # learners a population holds where grouping pays
# A learner is dispatch-bound below about this many operations a training step on one image: grouping 9 ran the
# 8 px small CNN (5.4 MFLOP) 1.4-1.7x faster a learner, but the 28 px one (33 MFLOP) and the 32 px ResNet (293
# MFLOP) 10-25 % slower (one thread; bench/train_populations.py), and the 32 px RGB proxy (12.4 MFLOP) 10-20 %
# slower (bench/population.py --source rgb32). A population runs on one core, so grouping there also idled the
# other cores: a rung of up to 9 proxies trained in one process.
DISPATCH_BOUND_FLOPS = 8e6


def population_size(requested: int, channels: int, image_size: int, n_classes: int, width: int, model: str) -> int:
    """Learners per population: `requested`, or for 0 (automatic) GROUPED where this learner is dispatch-bound,
    else 1."""
    if requested:
        return requested
    step, _ = per_image_flops(channels, image_size, n_classes, width, model)
    return GROUPED if step < DISPATCH_BOUND_FLOPS else 1
