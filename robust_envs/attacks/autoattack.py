"""AutoAttack "standard" (Croce & Hein, ICML 2020) assembled from torchattacks' components.

torchattacks 3.3's own ``AutoAttack(version="standard")`` builds APGD, APGD-T and FAB-T with the
classes' default ``steps=10``; the reference implementation (github.com/fra31/auto-attack) runs 100
iterations each. This module assembles the same four attacks with the reference settings:
APGD-CE (100 iterations, 1 restart), APGD-T on the targeted DLR loss (100 iterations, 9 target
classes), FAB-T (100 iterations, 9 target classes) and Square (5,000 queries), run in cascade on the
points still correctly classified (``torchattacks.MultiAttack``). The AutoAttack PyPI package is not used
because the reference package is installed from git only.
"""

from __future__ import annotations

import torchattacks
from torch import nn

__all__ = ["autoattack_standard"]


def autoattack_standard(
    model: nn.Module,
    eps: float,
    norm: str = "Linf",
    n_classes: int = 10,
    seed: int = 0,
    steps: int = 100,
    square_queries: int = 5000,
) -> torchattacks.MultiAttack:
    """AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square in cascade (Croce & Hein 2020, Sec. 4).

    Args:
        model: classifier on ``(N, C, H, W)`` in [0, 1].
        eps: radius in pixel units.
        norm: ``"Linf"`` or ``"L2"``.
        n_classes: number of classes (targets = ``n_classes - 1``), >= 3.
        seed: seed of every component.
        steps: iterations of APGD, APGD-T and FAB-T (reference: 100).
        square_queries: Square's query budget (reference: 5,000).

    Returns:
        A ``torchattacks.MultiAttack`` mapping ``(images (N, C, H, W) in [0, 1], labels (N,))`` to
        adversarial images in the ``norm`` ball of radius ``eps``.

    Raises:
        ValueError: on a norm other than Linf / L2 or ``n_classes < 3``.
    """
    if norm not in ("Linf", "L2"):
        raise ValueError(f"AutoAttack norm must be 'Linf' or 'L2', got {norm!r}")
    if n_classes < 3:
        raise ValueError(f"AutoAttack's targeted attacks need n_classes >= 3, got {n_classes}")
    return torchattacks.MultiAttack(
        [
            torchattacks.APGD(model, norm=norm, eps=eps, steps=steps, n_restarts=1, loss="ce", seed=seed),
            torchattacks.APGDT(model, norm=norm, eps=eps, steps=steps, n_restarts=1, n_classes=n_classes, seed=seed),
            torchattacks.FAB(
                model,
                norm=norm,
                eps=eps,
                steps=steps,
                n_restarts=1,
                multi_targeted=True,
                n_classes=n_classes,
                seed=seed,
            ),  # fmt: skip
            torchattacks.Square(model, norm=norm, eps=eps, n_queries=square_queries, n_restarts=1, seed=seed),
        ]
    )
