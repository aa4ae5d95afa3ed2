"""Checks that tell real robustness from gradient masking.

A defence can make white-box gradient attacks fail without removing adversarial examples ("obfuscated
gradients", Athalye, Carlini & Wagner 2018; checklist in Carlini et al. 2019, "On Evaluating Adversarial
Robustness", sec. 5-6). Telltale signs, each measured here:

- an attack that does not use the model's own gradients (a transfer attack crafted on another model) or
  a stronger, loss-agnostic ensemble (AutoAttack) beats white-box PGD;
- a single-step attack (FGSM) beats the iterative one (PGD);
- the input gradient of the training loss nearly vanishes (saturated softmax), while the logit margin
  still has a usable gradient.

Images are ``(N, C, H, W)`` float in [0, 1]; labels ``(N,)`` int64; all on the model's device.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

__all__ = ["MaskingFlags", "correct_under_transfer", "gradient_masking_flags", "input_gradient_norms"]

GRADIENT_LOSSES = ("ce", "margin")


def input_gradient_norms(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, loss: str = "ce", batch_size: int = 500
) -> torch.Tensor:
    """Per-point L2 norm of the input gradient ``||d loss / d x||_2``, shape ``(N,)`` float32.

    Args:
        model: classifier, images ``(N, C, H, W)`` float in [0, 1] -> logits ``(N, K)``.
        images: ``(N, C, H, W)`` float in [0, 1] on the model's device.
        labels: ``(N,)`` int64 true classes.
        batch_size: points per forward/backward pass.
        loss: ``"ce"`` (cross-entropy of the true label; vanishes when the softmax saturates) or
            ``"margin"`` (``max_{j != y} z_j - z_y`` on the logits ``z``; scale-free in the softmax, the
            quantity DLR-type attacks follow).

    Raises:
        ValueError: on an unknown ``loss`` (valid: ``"ce"``, ``"margin"``).
    """
    if loss not in GRADIENT_LOSSES:
        raise ValueError(f"loss must be one of {GRADIENT_LOSSES}, got {loss!r}")
    model.eval()
    norms = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].detach().clone().requires_grad_(True)
        y = labels[start : start + batch_size]
        logits = model(x)
        if loss == "ce":
            value = F.cross_entropy(logits, y, reduction="sum")
        else:
            true = logits.gather(1, y.view(-1, 1)).squeeze(1)
            other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
            value = (other - true).sum()
        (grad,) = torch.autograd.grad(value, x)
        norms.append(grad.flatten(1).norm(dim=1).detach().float())
    return torch.cat(norms) if norms else torch.zeros(0)


def correct_under_transfer(
    source_attack: torchattacks.attack.Attack,
    target: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 500,
) -> torch.Tensor:
    """Per-point correctness ``(N,)`` bool of ``target`` on adversarial images crafted by ``source_attack``.

    ``source_attack`` wraps another (source) model: the target's gradients are never used (a black-box
    transfer attack, Papernot et al. 2017).
    """
    target.eval()
    out = []
    for start in range(0, images.shape[0], batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        x_adv = source_attack(x, y)
        with torch.no_grad():
            out.append(target(x_adv).argmax(1) == y)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


@dataclass(frozen=True)
class MaskingFlags:
    """Gradient-masking flags of one model (accuracies in [0, 1], measured on the same points).

    Attributes:
        autoattack_below_pgd: AutoAttack accuracy is more than ``tolerance`` below white-box PGD's.
        transfer_below_pgd: the transfer attack's accuracy is more than ``tolerance`` below PGD's.
        fgsm_below_pgd: single-step FGSM is more than ``tolerance`` below iterative PGD.
        vanishing_ce_gradient: the median CE input-gradient norm is below ``vanishing_ratio`` times the
            reference model's (``None`` when no reference was given).
        suspected: any flag above is set.
        tolerance: the accuracy margin used (fraction of points).
    """

    autoattack_below_pgd: bool
    transfer_below_pgd: bool
    fgsm_below_pgd: bool
    vanishing_ce_gradient: bool | None
    suspected: bool
    tolerance: float

    def to_dict(self) -> dict[str, Any]:
        """The flags as a JSON-ready dict."""
        return asdict(self)


def gradient_masking_flags(
    pgd_acc: float,
    autoattack_acc: float,
    transfer_acc: float,
    fgsm_acc: float,
    grad_norm_median: float | None = None,
    reference_grad_norm_median: float | None = None,
    tolerance: float = 0.05,
    vanishing_ratio: float = 0.01,
) -> MaskingFlags:
    """Gradient-masking verdict from attack accuracies (same points, same radius) and gradient norms.

    Args:
        pgd_acc: white-box PGD accuracy in [0, 1].
        autoattack_acc: AutoAttack accuracy in [0, 1].
        transfer_acc: transfer-attack accuracy in [0, 1].
        fgsm_acc: FGSM accuracy in [0, 1].
        grad_norm_median: median CE input-gradient norm of the model (see :func:`input_gradient_norms`).
        reference_grad_norm_median: the same for a reference model trained with cross-entropy.
        tolerance: accuracy gap (fraction) beyond which an ordering violation counts (sampling noise on
            a few hundred points is a few percent).
        vanishing_ratio: gradient-norm ratio below which the gradient counts as vanishing.

    Raises:
        ValueError: if an accuracy is outside [0, 1] or ``tolerance``/``vanishing_ratio`` is negative.
    """
    for name, value in (("pgd_acc", pgd_acc), ("autoattack_acc", autoattack_acc), ("transfer_acc", transfer_acc),
                        ("fgsm_acc", fgsm_acc)):  # fmt: skip
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    if tolerance < 0 or vanishing_ratio < 0:
        raise ValueError(f"tolerance and vanishing_ratio must be >= 0, got {tolerance!r}, {vanishing_ratio!r}")
    vanishing = None
    if grad_norm_median is not None and reference_grad_norm_median is not None and reference_grad_norm_median > 0:
        vanishing = grad_norm_median < vanishing_ratio * reference_grad_norm_median
    aa = autoattack_acc < pgd_acc - tolerance
    transfer = transfer_acc < pgd_acc - tolerance
    fgsm = fgsm_acc < pgd_acc - tolerance
    return MaskingFlags(aa, transfer, fgsm, vanishing, bool(aa or transfer or fgsm or vanishing), tolerance)
