"""Attack construction by name, per-point robust correctness and perturbation norms."""

from __future__ import annotations

from typing import Any

import torch
import torchattacks
from torch import nn

from robust_envs.attacks.apgd_l1 import APGDL1Ensemble
from robust_envs.attacks.autoattack import autoattack_standard
from robust_envs.attacks.margin_pgd import MarginPGD
from robust_envs.attacks.slide import SLIDE

__all__ = ["ATTACK_NAMES", "ATTACK_NORMS", "correct_under_attack", "make_attack", "perturbation_norm"]

#: Threat model (norm) of every attack :func:`make_attack` builds.
ATTACK_NORMS: dict[str, str] = {
    "fgsm": "Linf",
    "pgd": "Linf",
    "mim": "Linf",
    "cw_pgd": "Linf",
    "autoattack": "Linf",
    "square": "Linf",
    "pgd_l2": "L2",
    "slide": "L1",
    "autoattack_l2": "L2",
    "apgd_l1": "L1",
}
ATTACK_NAMES = tuple(ATTACK_NORMS)


def make_attack(
    name: str, model: nn.Module, eps: float, steps: int = 40, alpha: float | None = None, seed: int = 0, **kwargs: Any
) -> torchattacks.attack.Attack:
    """Build an attack on ``model`` by name.

    Args:
        name: one of :data:`ATTACK_NAMES`:

            - ``"fgsm"``: FGSM (Goodfellow et al. 2015), Linf, torchattacks.
            - ``"pgd"``: PGD with uniform random start (Madry et al. 2018), Linf, torchattacks.
            - ``"mim"``: momentum iterative FGSM, decay 1.0 (Dong et al. 2018), Linf, torchattacks.
            - ``"cw_pgd"``: PGD on the Carlini-Wagner margin loss (:class:`MarginPGD`), Linf.
            - ``"pgd_l2"``: PGD in the L2 ball with random start, torchattacks.
            - ``"slide"``: Sparse L1 Descent (Tramer & Boneh 2019, :class:`SLIDE`), L1; keyword ``q``
              (gradient quantile, default 0.99) and ``random_start``.
            - ``"autoattack"``: AutoAttack standard, Linf, with the reference settings
              (:func:`autoattack_standard`); keywords ``n_classes`` (10), ``square_queries`` (5,000);
              ``steps`` here is APGD / FAB's iteration count and defaults to the reference 100.
            - ``"autoattack_l2"``: AutoAttack standard in L2 (Croce & Hein 2020: APGD-CE, APGD-T, FAB-T, Square,
              all with ``norm="L2"``), same components and keywords as ``"autoattack"``.
            - ``"apgd_l1"``: AutoAttack's L1 version, L1-APGD-CE then L1-APGD-T (Croce & Hein 2021,
              :class:`APGDL1Ensemble`); ``steps`` per run (default here: the reference 100); keyword
              ``n_target_classes`` (9).
            - ``"square"``: Square Attack (Andriushchenko et al. 2020), black-box, Linf, torchattacks;
              keyword ``n_queries`` (default 5,000).
        model: classifier taking ``(N, C, H, W)`` float in [0, 1].
        eps: radius in pixel units: in [0, 1] for Linf attacks, > 0 for L2 and L1.
        steps: iterations of iterative attacks (ignored by FGSM and Square).
        alpha: step size (default ``2.5 * eps / steps``, Madry et al. 2018; MIM: ``eps / steps``).
        seed: seed of AutoAttack and Square (PGD-type random starts draw from torch's global generator).
        **kwargs: attack-specific options named above (``q``, ``random_start``, ``n_classes``,
            ``square_queries``, ``n_queries``, ``n_target_classes``).

    Raises:
        ValueError: on an unknown name (listing :data:`ATTACK_NAMES`), a Linf eps outside [0, 1], a
            non-positive L2 / L1 eps, or ``steps < 1``.
    """
    if name not in ATTACK_NORMS:
        raise ValueError(f"unknown attack {name!r}; valid: {ATTACK_NAMES}")
    norm = ATTACK_NORMS[name]
    if norm == "Linf" and not 0.0 <= eps <= 1.0:
        raise ValueError(f"Linf eps must be in [0, 1] (pixel units), got {eps}")
    if norm != "Linf" and not eps > 0.0:
        raise ValueError(f"{norm} eps must be > 0, got {eps}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    step = alpha if alpha is not None else 2.5 * eps / steps
    if name == "fgsm":
        return torchattacks.FGSM(model, eps=eps)
    if name == "pgd":
        return torchattacks.PGD(model, eps=eps, alpha=step, steps=steps, random_start=True)
    if name == "mim":
        return torchattacks.MIFGSM(model, eps=eps, alpha=alpha if alpha is not None else eps / steps, steps=steps,
                                   decay=1.0)  # fmt: skip
    if name == "cw_pgd":
        return MarginPGD(model, eps=eps, alpha=step, steps=steps, random_start=True)
    if name == "pgd_l2":
        return torchattacks.PGDL2(model, eps=eps, alpha=step, steps=steps, random_start=True)
    if name == "slide":
        return SLIDE(model, eps=eps, alpha=step, steps=steps, q=kwargs.pop("q", 0.99),
                     random_start=kwargs.pop("random_start", False))  # fmt: skip
    if name == "square":
        return torchattacks.Square(model, norm="Linf", eps=eps, n_queries=kwargs.pop("n_queries", 5000), n_restarts=1,
                                   seed=seed)  # fmt: skip
    if name == "apgd_l1":
        return APGDL1Ensemble(model, eps=eps, steps=100 if steps == 40 else steps,
                              n_target_classes=kwargs.pop("n_target_classes", 9), seed=seed)  # fmt: skip
    # autoattack(_l2): the legacy default steps=40 of this signature means "reference settings" (100)
    return autoattack_standard(
        model, eps=eps, norm=norm, n_classes=kwargs.pop("n_classes", 10), seed=seed,
        steps=100 if steps == 40 else steps, square_queries=kwargs.pop("square_queries", 5000),
    )  # fmt: skip


def correct_under_attack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attack: torchattacks.attack.Attack | None = None,
    batch_size: int = 500,
) -> torch.Tensor:
    """Per-point correctness of ``model`` on clean (``attack=None``) or attacked images.

    Shape:
        - images: ``(N, C, H, W)`` float in [0, 1], labels ``(N,)`` int64, on the model's device.
        - output: ``(N,)`` bool, True where the (attacked) image is classified as its label.
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


def perturbation_norm(adv: torch.Tensor, images: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-image norm of ``adv - images`` over all ``C * H * W`` coordinates.

    Shape:
        - adv, images: ``(N, C, H, W)`` float; output: ``(N,)`` float.

    Raises:
        ValueError: on a norm outside ``{"Linf", "L2", "L1"}``.
    """
    p = {"Linf": float("inf"), "L2": 2.0, "L1": 1.0}
    if norm not in p:
        raise ValueError(f"unknown norm {norm!r}; valid: {sorted(p)}")
    return (adv - images).reshape(adv.shape[0], -1).norm(p=p[norm], dim=1)
