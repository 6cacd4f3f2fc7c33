"""Downstream / task-learner networks, sized to the input.

Two learners: a 3-block conv-BatchNorm CNN (`small_cnn`, the reference
learner, ~1 s per 150-epoch run on the digits) and a small ResNet (`resnet`),
whose residual stages downsample to a few pixels before pooling. `train.model`
chooses one; `auto` is decided by a paired trial on meta-train tasks (metaaug.learners),
and means the cheaper small CNN wherever no trial was run (bench/model_cost.py measures
what each costs, bench/learners.py how well each learns).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from metaaug.errors import MetaaugError


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU blocks; max-pool after a block while the map is larger than 4 px."""

    def __init__(self, in_channels: int, image_size: int, n_classes: int, width: int = 32):
        super().__init__()
        widths = [width, 2 * width, 2 * width]
        layers, c, size = [], in_channels, image_size
        for w in widths:
            layers.append(conv_bn(c, w))
            if size > 4:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            c = w
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(c_in, c_out, stride), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(c_out))
        self.skip = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ResNet(nn.Module):
    """A ResNet-8-style net for 32 px and larger: stem, three residual stages, global pooling."""

    def __init__(self, in_channels: int, image_size: int, n_classes: int, width: int = 32):
        super().__init__()
        stem_stride = 2 if image_size >= 64 else 1
        stages, c = [], width
        for i, w in enumerate([width, 2 * width, 4 * width]):
            stages.append(BasicBlock(c, w, 1 if i == 0 else 2))
            c = w
        self.features = nn.Sequential(conv_bn(in_channels, width, stem_stride), *stages,
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


MODELS = {"small_cnn": SmallCNN, "resnet": ResNet}


def resolve_model(model: str) -> str:
    """The learner `model` names; `auto` without a trial's answer (metaaug.learners) is the cheaper small CNN,
    which the trial keeps unless the ResNet is clearly better."""
    if model == "auto":
        return "small_cnn"
    if model not in MODELS:
        raise MetaaugError(f"model {model!r} is unknown; expected auto or one of {list(MODELS)}")
    return model


def build_model(in_channels: int, image_size: int, n_classes: int, width: int = 32, model: str = "auto") -> nn.Module:
    """The learner `model` names (resolve_model) for this input."""
    return MODELS[resolve_model(model)](in_channels, image_size, n_classes, width)


@functools.lru_cache(maxsize=64)
def per_image_flops(channels: int, image_size: int, n_classes: int, width: int, model: str) -> tuple[int, int]:
    """(training step, forward pass) floating-point operations of this learner on one image, counted as torch's
    FlopCounterMode counts them (convolutions and matrix products; tests/test_models.py compares the two) but
    from the layers' shapes: running FlopCounterMode imports torch's compiler, 2 s of every stage process.

    A layer's backward pass costs its forward twice (the weights' gradient and the input's), once for a layer
    that reads the network's input, which needs no gradient."""
    with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
        torch.manual_seed(0)
        net = build_model(channels, image_size, n_classes, width, model).eval()
    x = torch.zeros(1, channels, image_size, image_size)
    forward = backward = 0

    def count(layer: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal forward, backward
        if isinstance(layer, nn.Conv2d):
            flops = 2 * output.numel() * layer.weight[0].numel()  # each output: one multiply-add a weight of its filter
        elif isinstance(layer, nn.Linear):
            flops = 2 * output.numel() * layer.in_features
        else:
            return
        forward += flops
        backward += flops if inputs[0] is x else 2 * flops

    hooks = [m.register_forward_hook(count) for m in net.modules()]
    with torch.no_grad():
        net(x)
    for hook in hooks:
        hook.remove()
    return forward + backward, forward
