"""Attack construction by name and per-point robust correctness."""

from __future__ import annotations

from typing import Any

import torch
import torchattacks
from torch import nn

__all__ = ["ATTACK_NAMES", "correct_under_attack", "make_attack"]

ATTACK_NAMES = ("fgsm", "pgd", "autoattack")


def make_attack(
    name: str, model: nn.Module, eps: float, steps: int = 40, alpha: float | None = None, seed: int = 0, **kwargs: Any
) -> torchattacks.attack.Attack:
    """Build a torchattacks attack on ``model``.

    Args:
        name: ``"fgsm"`` (Goodfellow et al. 2015), ``"pgd"`` (Madry et al. 2018, Linf, random start) or
            ``"autoattack"`` (Croce & Hein 2020, standard version, Linf; torchattacks' implementation).
        model: classifier taking ``(N, C, H, W)`` in [0, 1].
        eps: Linf radius in [0, 1] pixel units.
        steps: PGD iterations.
        alpha: PGD step size (default ``2.5 * eps / steps``).
        seed: seed for random starts and AutoAttack.

    Raises:
        ValueError: on an unknown name (listing :data:`ATTACK_NAMES`) or eps outside [0, 1].
    """
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must be in [0, 1] (pixel units), got {eps}")
    if name == "fgsm":
        return torchattacks.FGSM(model, eps=eps)
    if name == "pgd":
        return torchattacks.PGD(model, eps=eps, alpha=alpha if alpha is not None else 2.5 * eps / steps, steps=steps,
                                random_start=True)  # fmt: skip
    if name == "autoattack":
        n_classes = kwargs.pop("n_classes", 10)
        return torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=n_classes, seed=seed)
    raise ValueError(f"unknown attack {name!r}; valid: {ATTACK_NAMES}")


def correct_under_attack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attack: torchattacks.attack.Attack | None = None,
    batch_size: int = 500,
) -> torch.Tensor:
    """Per-point correctness ``(N,)`` bool of ``model`` on clean (``attack=None``) or attacked images.

    Shape:
        - images: ``(N, C, H, W)`` float in [0, 1], labels ``(N,)`` int64, on the model's device.
    """
    model.eval()
    out = []
    for start in range(0, images.shape[0], batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        if attack is not None:
            x = attack(x, y)
        with torch.no_grad():
            out.append(model(x).argmax(1) == y)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)
