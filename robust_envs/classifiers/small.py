"""Small classifiers for 28 x 28 (Fashion-MNIST) and smaller images."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LeNet5", "SmallCNN"]


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling, as commonly used on MNIST-like data.

    conv5x5(6, pad 2) -> pool -> conv5x5(16) -> pool -> fc120 -> fc84 -> fc(num_classes).

    Shape:
        - input: ``(N, in_channels, image_size, image_size)`` float in [0, 1] (image_size >= 12).
        - output: ``(N, num_classes)`` logits.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> None:
        super().__init__()
        if image_size < 12:
            raise ValueError(f"LeNet5 needs image_size >= 12, got {image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        side = ((image_size // 2) - 4) // 2
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * side * side, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SmallCNN(nn.Module):
    """A 4-conv CNN (32-32-64-64 channels, two max-pools, fc 200-200), the "small CNN" of MNIST robustness
    papers (e.g. TRADES, Zhang et al. 2019, for MNIST), sized by ``image_size``.

    Shape:
        - input: ``(N, in_channels, image_size, image_size)`` float in [0, 1] (image_size >= 8).
        - output: ``(N, num_classes)`` logits.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> None:
        super().__init__()
        if image_size < 8:
            raise ValueError(f"SmallCNN needs image_size >= 8, got {image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )  # fmt: skip
        side = image_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * side * side, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
            nn.Linear(200, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
