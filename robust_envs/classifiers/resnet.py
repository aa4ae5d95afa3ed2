"""CIFAR-size residual networks: ResNet-18 (He et al. 2016) and Wide ResNet (Zagoruyko & Komodakis 2016).

Both follow the CIFAR variants used by the adversarial-training literature (Madry et al. 2018, TRADES,
ADT, MNG-AC): a 3 x 3 stem without max-pooling, global average pooling before the linear head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ResNet18", "WideResNet", "wrn28_10"]


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 (He et al., CVPR 2016), CIFAR variant: 3 x 3 stem, stages of 64-128-256-512 channels.

    Shape:
        - input: ``(N, in_channels, image_size, image_size)`` float in [0, 1] (image_size >= 8).
        - output: ``(N, num_classes)`` logits.

    Raises:
        ValueError: if ``image_size < 8``.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> None:
        super().__init__()
        if image_size < 8:
            raise ValueError(f"ResNet18 needs image_size >= 8, got {image_size}")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers: list[nn.Module] = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of images ``(N, C, H, W)`` in [0, 1]."""
        return self.head(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1))


class _WideBlock(nn.Module):
    """Pre-activation wide block (BN-ReLU-conv twice)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        return self.conv2(F.relu(self.bn2(self.conv1(o)))) + skip


class WideResNet(nn.Module):
    """Wide ResNet WRN-depth-widen (Zagoruyko & Komodakis, BMVC 2016), as in TRADES / ADT / MNG-AC code.

    Args:
        depth: 6 n + 4 (28 for WRN-28-10).
        widen_factor: channel multiplier k (stages 16k, 32k, 64k).

    Shape:
        - input: ``(N, in_channels, image_size, image_size)`` float in [0, 1] (image_size >= 8).
        - output: ``(N, num_classes)`` logits.

    Raises:
        ValueError: if ``(depth - 4) % 6 != 0`` or ``image_size < 8``.
    """

    def __init__(
        self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, depth: int = 28, widen_factor: int = 10
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4 (e.g. 28, 34), got {depth}")
        if image_size < 8:
            raise ValueError(f"WideResNet needs image_size >= 8, got {image_size}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        cin = widths[0]
        for cout, stride in zip(widths[1:], (1, 2, 2), strict=True):
            for i in range(n):
                blocks.append(_WideBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of images ``(N, C, H, W)`` in [0, 1]."""
        out = F.relu(self.bn(self.blocks(self.stem(x))))
        return self.head(F.adaptive_avg_pool2d(out, 1).flatten(1))


def wrn28_10(in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> WideResNet:
    """WRN-28-10, the architecture of ADT's and MNG-AC's CIFAR-10 tables."""
    return WideResNet(in_channels, num_classes, image_size, depth=28, widen_factor=10)
