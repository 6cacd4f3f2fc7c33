"""The optimiser a training steps with (metaaug.training.OneCycleSGD) against torch's classes it stands for."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from metaaug.config import TrainConfig
from metaaug.models import build_model
from metaaug.training import MOMENTUM_SWING, OneCycleSGD, train_learner


def trained_by(optimiser: str, momentum: float, steps: int = 40) -> list[torch.Tensor]:
    """The small CNN's parameters after `steps` steps on fixed random batches, stepped by OneCycleSGD or by
    torch.optim.SGD under OneCycleLR with the momentum bounds OneCycleSGD derives from `momentum`."""
    torch.manual_seed(0)
    model = build_model(1, 8, 5, 8, "small_cnn")
    params = list(model.parameters())
    if optimiser == "torch":
        opt = torch.optim.SGD(params, lr=0.05, momentum=momentum, nesterov=True, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps,
                                                    base_momentum=max(momentum - MOMENTUM_SWING, 0.0),
                                                    max_momentum=min(momentum + MOMENTUM_SWING, 0.999))
    else:
        opt, sched = OneCycleSGD(params, 0.05, momentum, 5e-4, steps), None
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(10, 1, 8, 8, generator=gen), torch.randint(0, 5, (10,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if sched is not None:
            sched.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("momentum", [0.9, 0.5, 0.98])
def test_one_cycle_sgd_is_torchs_sgd_under_one_cycle_lr_bit_for_bit(momentum):
    for ours, theirs in zip(trained_by("ours", momentum), trained_by("torch", momentum)):
        assert torch.equal(ours, theirs)


def test_the_default_momentum_cycles_as_one_cycle_lr_alone_did():
    """0.9 gives OneCycleLR's own bounds (0.95 to 0.85), so the default trains what it trained before."""
    opt = OneCycleSGD([torch.zeros(1, requires_grad=True)], 0.05, 0.9, 0.0, 100)
    assert opt.schedule(0) == (pytest.approx(0.05 / 25), pytest.approx(0.95))
    assert opt.schedule(29)[1] == pytest.approx(0.85)
    assert opt.schedule(99)[1] == pytest.approx(0.95)


def test_train_momentum_changes_the_training():
    """OneCycleLR alone overwrote the optimiser's momentum with its own bounds: train.momentum did nothing."""
    x, y = torch.rand(25, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(25) % 5
    weights = [train_learner(x, y, 5, TrainConfig(epochs=3, batch_size=10, momentum=m), seed=1)[0]
               .head.weight.detach() for m in (0.9, 0.6)]
    assert not torch.equal(*weights)


def test_a_step_past_the_schedule_is_refused():
    param = torch.zeros(1, requires_grad=True)
    opt = OneCycleSGD([param], 0.05, 0.9, 0.0, 1)
    param.grad = torch.ones(1)
    opt.step()
    with pytest.raises(ValueError, match="step 2 of a 1-step schedule"):
        opt.step()


def test_a_training_leaves_torchs_compiler_unimported():
    """torch.optim's classes import torch._dynamo on first use: seconds of every stage process that trains."""
    code = ("import sys, torch\n"
            "from metaaug.config import TrainConfig\n"
            "from metaaug.training import train_learner\n"
            "train_learner(torch.rand(10, 1, 8, 8), torch.arange(10) % 5, 5, TrainConfig(epochs=2), seed=0)\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
