"""The attack suite of the evaluation protocol: which attacks, at which radius, with which settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torchattacks
from torch import nn

from robust_envs.attacks.core import ATTACK_NORMS, make_attack
from robust_envs.attacks.radii import ThreatRadii, radii_for

__all__ = ["AttackSpec", "protocol_suite"]


@dataclass(frozen=True)
class AttackSpec:
    """One attack of the protocol.

    Attributes:
        key: column name in results (``"pgd20"``, ``"autoattack"``, ...).
        attack: name for :func:`robust_envs.attacks.make_attack`.
        norm: ``"Linf"``, ``"L2"`` or ``"L1"``.
        eps: radius in pixel units.
        steps: iterations (queries for Square are in ``options``).
        alpha: step size in pixel units (``None``: :func:`make_attack`'s default).
        white_box: False for black-box (query-only) attacks.
        options: extra keyword arguments for :func:`make_attack`.
        source: the paper or table whose settings these are.
    """

    key: str
    attack: str
    norm: str
    eps: float
    steps: int = 1
    alpha: float | None = None
    white_box: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def build(self, model: nn.Module, seed: int = 0, n_classes: int = 10) -> torchattacks.attack.Attack:
        """The attack object on ``model``."""
        opts = dict(self.options)
        if self.attack == "autoattack":
            opts.setdefault("n_classes", n_classes)
        return make_attack(self.attack, model, self.eps, steps=self.steps, alpha=self.alpha, seed=seed, **opts)

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (threat model and radius of this attack)."""
        return {
            "attack": self.attack, "norm": self.norm, "eps": self.eps, "steps": self.steps, "alpha": self.alpha,
            "white_box": self.white_box, "options": dict(self.options), "source": self.source,
        }  # fmt: skip


def protocol_suite(dataset: str | ThreatRadii, square_queries: int = 5000, autoattack: bool = True) -> list[AttackSpec]:
    """The protocol's attacks for a data set (its radii from :data:`robust_envs.attacks.RADII`).

    Linf (ADT's table, Dong et al. 2020, with its step size 2/255 at eps 8/255, i.e. ``eps / 4``):
    FGSM, PGD-20, PGD-100, MIM-20, C&W (PGD-30 on the margin loss), AutoAttack standard (headline
    number), and Square (black-box check, ``square_queries``). L2: PGD-50 with step ``eps / 5``
    (MNG-AC's 25/255 at 128/255). L1: SLIDE, 100 steps, step ``eps / 8``, top 1 % coordinates (MNG-AC's
    1.0 at 2000/255, quantile 99).

    Args:
        dataset: data set name or explicit :class:`ThreatRadii`.
        square_queries: Square's query budget (black-box check), >= 1.
        autoattack: include AutoAttack (set False only for quick tests).

    Raises:
        ValueError: on unknown data set or ``square_queries < 1``.
    """
    if square_queries < 1:
        raise ValueError(f"square_queries must be >= 1, got {square_queries}")
    radii = dataset if isinstance(dataset, ThreatRadii) else radii_for(dataset)
    e, e2, e1 = radii.eps_linf, radii.eps_l2, radii.eps_l1
    adt = "ADT (Dong et al. 2020) Table 1 protocol"
    specs = [
        AttackSpec("fgsm", "fgsm", "Linf", e, source="Goodfellow et al. 2015; " + adt),
        AttackSpec("pgd20", "pgd", "Linf", e, 20, e / 4, source="Madry et al. 2018; " + adt),
        AttackSpec("pgd100", "pgd", "Linf", e, 100, e / 4, source="Madry et al. 2018; " + adt),
        AttackSpec("mim20", "mim", "Linf", e, 20, e / 4, source="Dong et al. 2018; " + adt),
        AttackSpec("cw30", "cw_pgd", "Linf", e, 30, e / 4, source="Carlini & Wagner 2017 margin loss; " + adt),
    ]
    if autoattack:
        specs.append(AttackSpec("autoattack", "autoattack", "Linf", e, 100,
                                source="Croce & Hein 2020, standard version (torchattacks components)"))  # fmt: skip
    specs += [
        AttackSpec("square", "square", "Linf", e, 1, white_box=False, options={"n_queries": square_queries},
                   source="Andriushchenko et al. 2020 (black-box check)"),
        AttackSpec("pgd_l2", "pgd_l2", "L2", e2, 50, e2 / 5, source="MNG-AC (Madaan et al. 2021) evaluate.py"),
        AttackSpec("slide_l1", "slide", "L1", e1, 100, e1 / 8, options={"q": 0.99},
                   source="SLIDE, Tramer & Boneh 2019; MNG-AC (Madaan et al. 2021) evaluate.py"),
    ]  # fmt: skip
    assert all(ATTACK_NORMS[s.attack] == s.norm for s in specs)
    return specs
