"""Classifier architectures used by the envs and the benchmarks.

All take images ``(N, C, H, W)`` float in [0, 1] and return logits ``(N, num_classes)``; input
normalisation, if any, lives inside the model so attacks work in [0, 1] pixel space.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from robust_envs.classifiers.resnet import ResNet18, WideResNet, wrn28_10
from robust_envs.classifiers.small import LeNet5, SmallCNN

__all__ = ["ARCHITECTURES", "LeNet5", "ResNet18", "SmallCNN", "WideResNet", "make_classifier", "wrn28_10"]

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "lenet5": LeNet5,
    "small_cnn": SmallCNN,
    "resnet18": ResNet18,
    "wrn28_10": wrn28_10,
}


def make_classifier(name: str, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> nn.Module:
    """Build a classifier by name.

    Raises:
        ValueError: on an unknown name (listing :data:`ARCHITECTURES`).
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; valid: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name](in_channels=in_channels, num_classes=num_classes, image_size=image_size)
