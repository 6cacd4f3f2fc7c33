"""A population of learners trained as one grouped network is the same as training each alone."""

import numpy as np
import pytest
import torch

from metaaug.population import populations
from metaaug.policies import fixed_policy, sample_apply
from metaaug.config import TrainConfig
from metaaug.training import predict, train_learner, train_population


def trivialaugment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return sample_apply(fixed_policy("trivialaugment", image_channels=x.shape[1]), x, gen)


@pytest.mark.parametrize("channels, size", [(1, 8), (3, 32)])  # SmallCNN, ResNet
def test_population_members_match_separate_trainings(channels, size):
    gen = torch.Generator().manual_seed(0)
    xs = [torch.rand(10, channels, size, size, generator=gen) for _ in range(3)]
    ys = [torch.randint(0, 4, (10,), generator=gen) for _ in range(3)]
    augments = [trivialaugment, None, trivialaugment]
    settings = TrainConfig(epochs=2, batch_size=4, width=8)
    together = train_population(xs, ys, 4, settings, [5, 6, 7], augments)
    for p, (model, curves) in enumerate(together):
        alone, alone_curves = train_learner(xs[p], ys[p], 4, settings, 5 + p, augments[p])
        for name, value in alone.state_dict().items():
            assert torch.allclose(model.state_dict()[name].float(), value.float(), atol=1e-3), (p, name)  # float rounding only
        assert np.allclose(curves["loss"], alone_curves["loss"], atol=1e-3)
        probe = torch.rand(6, channels, size, size, generator=gen)
        assert (predict(model, probe) == predict(alone, probe)).all()


def test_members_of_a_population_do_not_interact():
    """Changing one member's data leaves the others' trained weights untouched."""
    gen = torch.Generator().manual_seed(1)
    xs = [torch.rand(8, 1, 8, 8, generator=gen) for _ in range(2)]
    ys = [torch.randint(0, 3, (8,), generator=gen) for _ in range(2)]
    settings = TrainConfig(epochs=2, batch_size=4, width=4)
    a = train_population(xs, ys, 3, settings, [0, 1], [None, None])
    b = train_population([xs[0], torch.rand(8, 1, 8, 8, generator=gen)], ys, 3, settings, [0, 1], [None, None])
    assert all(torch.equal(v, b[0][0].state_dict()[k]) for k, v in a[0][0].state_dict().items())
    assert not torch.equal(a[1][0].head.weight, b[1][0].head.weight)


def test_populations_are_cut_from_the_job_list_alone():
    assert populations(list(range(18)), 9) == [list(range(0, 9)), list(range(9, 18))]
    assert [len(r) for r in populations(list(range(10)), 9)] == [5, 5]
    assert [len(r) for r in populations(list(range(3)), 9)] == [3]
    assert populations([], 9) == []
