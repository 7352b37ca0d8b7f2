"""Reference models of the compression papers: FC-2, LeNet-5, CIFAR VGG-11/16, CIFAR ResNet-20/32.

Every model takes images ``N x C x H x W`` (as ``adtn.data`` yields them) and returns
logits; fully connected models flatten their input themselves. Layers have stable names
(``fc1``, ``conv2``, ``classifier.fc1``, ...) so compression reports and saved graphs can
point at them. ``get_model("vgg16", width=0.25)`` builds one by name.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal

import torch
from torch import nn

from .errors import AdtnError

__all__ = ["MODELS", "VGG", "BasicBlock", "ResNet", "fc2", "get_model", "lenet5", "resnet", "vgg"]

VGG_CONFIGS: dict[int, tuple[int | Literal["M"], ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}


def fc2(in_features: int = 784, hidden: int = 256, classes: int = 10) -> nn.Sequential:
    """FC-2: flatten, ``fc1`` (784 -> 256), ReLU, ``fc2`` (256 -> 10); the MNIST model of the ADTN paper.

    Parameters: ``in*hidden + hidden + hidden*classes + classes``; 203,530 at the defaults.
    """
    _positive("fc2", in_features=in_features, hidden=hidden, classes=classes)
    return nn.Sequential(OrderedDict([
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(in_features, hidden)),
        ("relu", nn.ReLU()),
        ("fc2", nn.Linear(hidden, classes)),
    ]))


def lenet5(in_channels: int = 1, classes: int = 10, image_size: int = 28) -> nn.Sequential:
    """LeNet-5 with ReLU and max pooling: conv 6@5x5 (padding 2), pool, conv 16@5x5, pool, fc 120, 84, classes.

    ``image_size`` is the side of the square input: 28 for MNIST gives the classic
    16 x 5 x 5 = 400 features before ``fc1``. Images smaller than 12 pixels (the 8x8 digits)
    would vanish in the unpadded ``conv2``, so there ``conv2`` gets padding 2 as well (8x8
    gives 16 x 2 x 2 = 64 features). Parameters: 61,706 at the defaults (1 x 28 x 28, 10
    classes); 21,386 for 8x8 digits.
    """
    _positive("lenet5", in_channels=in_channels, classes=classes)
    if image_size < 4:
        raise AdtnError(f"lenet5: image_size must be at least 4 to survive two 2x2 poolings, got {image_size}")
    pad2 = 0 if image_size >= 12 else 2
    side = (image_size // 2 + 2 * pad2 - 4) // 2
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(in_channels, 6, 5, padding=2)),
        ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(6, 16, 5, padding=pad2)),
        ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(16 * side * side, 120)),
        ("relu3", nn.ReLU()),
        ("fc2", nn.Linear(120, 84)),
        ("relu4", nn.ReLU()),
        ("fc3", nn.Linear(84, classes)),
    ]))


class VGG(nn.Module):
    """A CIFAR VGG: 3x3 conv + BatchNorm + ReLU blocks and five 2x2 poolings, then a 3-layer classifier.

    A 32x32 input leaves ``features`` at ``C x 1 x 1``; ``classifier`` is ``fc1`` (C -> 4096),
    ReLU, dropout, ``fc2`` (4096 -> 4096), ReLU, dropout, ``fc3`` (4096 -> classes).
    """

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def vgg(
    depth: Literal[11, 16] = 16,
    classes: int = 10,
    in_channels: int = 3,
    width: float = 1.0,
    classifier: Sequence[int] = (4096, 4096),
    batch_norm: bool = True,
    dropout: float = 0.5,
) -> VGG:
    """VGG-11 or VGG-16 for 32x32 images, with the ADTN paper's classifier 512-4096-4096-10.

    ``width`` scales every conv channel count and the classifier's hidden sizes (rounded,
    at least 1) for small CPU runs: ``width=0.125`` gives 64 features and a 64-512-512-10
    classifier. ``classifier`` lists the hidden sizes at width 1. Parameters at the
    defaults (BatchNorm on, 10 classes): VGG-11 28,146,762; VGG-16 33,642,442 (of which the
    classifier holds 18,923,530).
    """
    if depth not in VGG_CONFIGS:
        raise AdtnError(f"vgg: depth must be one of {sorted(VGG_CONFIGS)}, got {depth}")
    _positive("vgg", classes=classes, in_channels=in_channels, width=width)
    layers: list[tuple[str, nn.Module]] = []
    channels, block, conv = in_channels, 1, 1
    for item in VGG_CONFIGS[depth]:
        if item == "M":
            layers.append((f"pool{block}", nn.MaxPool2d(2)))
            block, conv = block + 1, 1
            continue
        out = _scaled(item, width)
        name = f"conv{block}_{conv}"
        layers.append((name, nn.Conv2d(channels, out, 3, padding=1, bias=not batch_norm)))
        if batch_norm:
            layers.append((f"bn{block}_{conv}", nn.BatchNorm2d(out)))
        layers.append((f"relu{block}_{conv}", nn.ReLU(inplace=True)))
        channels, conv = out, conv + 1
    head: list[tuple[str, nn.Module]] = []
    for i, size in enumerate(classifier, start=1):
        hidden = _scaled(size, width)
        head += [(f"fc{i}", nn.Linear(channels, hidden)), (f"relu{i}", nn.ReLU(inplace=True))]
        if dropout > 0:
            head.append((f"drop{i}", nn.Dropout(dropout)))
        channels = hidden
    head.append((f"fc{len(classifier) + 1}", nn.Linear(channels, classes)))
    return VGG(nn.Sequential(OrderedDict(layers)), nn.Sequential(OrderedDict(head)))


class BasicBlock(nn.Module):
    """Two 3x3 conv + BatchNorm layers with a skip; a 1x1 conv + BatchNorm shortcut where the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(OrderedDict([
                ("conv", nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)),
                ("bn", nn.BatchNorm2d(planes)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """A CIFAR ResNet: a 3x3 stem, three stages of basic blocks (strides 1, 2, 2), global pooling, ``fc``."""

    def __init__(self, blocks: int, classes: int = 10, width: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        planes, stages = width, []
        for stage, stride in enumerate((1, 2, 2)):
            out = width * 2**stage
            layer = []
            for b in range(blocks):
                layer.append(BasicBlock(planes, out, stride if b == 0 else 1))
                planes = out
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet(depth: int = 20, classes: int = 10, width: int = 16, in_channels: int = 3) -> ResNet:
    """ResNet-``depth`` for CIFAR (He et al. 2016, section 4.2): ``(depth - 2) / 6`` basic blocks per stage.

    Stages have ``width``, ``2*width``, ``4*width`` channels. Where a block changes shape the
    shortcut is option B, a strided 1x1 conv + BatchNorm (the paper's CIFAR nets used option
    A, zero padding, which has no parameters). Parameters at the defaults (10 classes):
    ResNet-20 272,474; ResNet-32 466,906; ResNet-44 661,338; ResNet-56 855,770 (each
    2,752 more than the option-A counts 0.27M/0.46M/0.66M/0.85M of the paper).
    """
    if depth < 8 or (depth - 2) % 6:
        raise AdtnError(f"resnet: depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, ...), got {depth}")
    _positive("resnet", classes=classes, width=width, in_channels=in_channels)
    return ResNet((depth - 2) // 6, classes, width, in_channels)


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _positive(where: str, **values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise AdtnError(f"{where}: {name} must be positive, got {value}")


MODELS: dict[str, Callable[..., nn.Module]] = {
    "fc2": fc2,
    "lenet5": lenet5,
    "vgg11": partial(vgg, 11),
    "vgg16": partial(vgg, 16),
    "resnet20": partial(resnet, 20),
    "resnet32": partial(resnet, 32),
}


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """A reference model by name with its options: ``get_model("resnet20", classes=100)``."""
    if name not in MODELS:
        raise AdtnError(f"model {name!r} not found; valid: {sorted(MODELS)}")
    return MODELS[name](**kwargs)
