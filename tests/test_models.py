"""train.model: which learner each choice builds, and that train records it for evaluate to rebuild."""

import pytest
import torch

from metaaug.config import validate
from metaaug.errors import MetaaugError
from metaaug.models import ResNet, SmallCNN, build_model, per_image_flops, resolve_model


@pytest.mark.parametrize("model,size,cls", [("auto", 8, SmallCNN), ("auto", 32, SmallCNN), ("auto", 64, SmallCNN),
                                            ("small_cnn", 32, SmallCNN), ("resnet", 8, ResNet),
                                            ("resnet", 28, ResNet), ("resnet", 64, ResNet)])
def test_each_choice_builds_its_learner_at_any_size(model, size, cls):
    """`auto` without the trial's answer (metaaug.learners) is the cheaper small CNN, at any size."""
    net = build_model(3, size, 5, 8, model)
    assert type(net) is cls
    assert net(torch.zeros(2, 3, size, size)).shape == (2, 5)
    assert resolve_model(model) == {SmallCNN: "small_cnn", ResNet: "resnet"}[cls]


def test_an_unknown_model_is_one_line():
    with pytest.raises(MetaaugError, match=r"train.model = 'vit' is out of range; expected one of \['auto', "):
        validate({"train": {"model": "vit"}})


def test_results_spec_rebuilds_the_trained_learner():
    """evaluate calls build_model(**results['model']); train writes the resolved name there, so a ResNet trained
    at 8 px (where `auto` would build a SmallCNN) is rebuilt as a ResNet and computes what the trained one did."""
    spec = {"in_channels": 1, "image_size": 8, "n_classes": 3, "width": 8, "model": resolve_model("resnet")}
    torch.manual_seed(0)
    trained = build_model(**spec).eval()
    torch.manual_seed(1)
    rebuilt = build_model(**spec).eval()
    assert type(rebuilt) is ResNet
    rebuilt.load_state_dict(trained.state_dict(), strict=True)
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), trained(x))


@pytest.mark.parametrize("model", ["small_cnn", "resnet"])
@pytest.mark.parametrize("channels,size,n_classes,width", [(1, 8, 5, 32), (1, 28, 10, 16), (3, 32, 5, 16),
                                                           (3, 32, 9, 32), (3, 33, 2, 8), (3, 64, 5, 32)])
def test_flops_from_shapes_are_torchs_count(model, channels, size, n_classes, width):
    """per_image_flops counts from the layers' shapes what torch's FlopCounterMode counts by running the training
    step (the budget and the population rule read it; FlopCounterMode itself imports torch's compiler)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    net = build_model(channels, size, n_classes, width, model)
    x = torch.zeros(1, channels, size, size)
    with FlopCounterMode(display=False) as step:
        net(x).sum().backward()
    with FlopCounterMode(display=False) as forward, torch.no_grad():
        net.eval()(x)
    assert per_image_flops(channels, size, n_classes, width, model) == (step.get_total_flops(),
                                                                       forward.get_total_flops())
