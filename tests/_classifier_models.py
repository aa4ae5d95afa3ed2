"""Small trained classifiers on sklearn's 8 x 8 digits, shared by the attack / evaluation tests (cached)."""

from __future__ import annotations

import functools

import torch
from torch import nn

from benchmarks.trainers import get_trainer
from robust_envs.data import load_dataset


@functools.lru_cache(maxsize=4)
def trained_digits_model(method: str = "standard", epochs: int = 3) -> nn.Module:
    """A SmallCNN trained on digits with ``method`` (about a second for the standard one)."""
    trainer_cls = get_trainer(method)
    model = trainer_cls(trainer_cls.default_config("digits", epochs=epochs)).train(load_dataset("digits", "train"), 0)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def correct_test_points(model: nn.Module, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` digits test images (float in [0, 1]) that ``model`` classifies correctly, and labels."""
    test = load_dataset("digits", "test")
    x, y = test.float_images(), test.labels
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return x[ok][:n], y[ok][:n]


class ScaledLogits(nn.Module):
    """``scale * model(x)``: with a huge scale the softmax saturates and cross-entropy gradients vanish
    (float32), the classic gradient-masking failure (defensive distillation, Carlini & Wagner 2016)."""

    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        self.model = model
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.scale


class QuantizedInput(nn.Module):
    """``model(round(x * levels) / levels)``: rounding has zero gradient almost everywhere, so input gradients
    vanish (a "shattered gradients" defence, Athalye et al. 2018, Sec. 4.1) while predictions stay sensible."""

    def __init__(self, model: nn.Module, levels: int = 8) -> None:
        super().__init__()
        self.model = model
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * self.levels) / self.levels)
