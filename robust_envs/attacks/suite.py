"""The attack suite of the evaluation protocol: which attacks, at which radius, with which settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torchattacks
from torch import nn

from robust_envs.attacks.core import ATTACK_NORMS, make_attack
from robust_envs.attacks.radii import ThreatRadii, radii_for

__all__ = ["PROTOCOL_NORMS", "PROTOCOL_VERSION", "AttackSpec", "protocol_suite"]

#: The protocol's version; entries record the version their numbers come from (``protocol_version``).
#: 1: L2 = PGD-50, L1 = SLIDE. 2 (issue 14): L2 adds AutoAttack-L2 standard, L1 adds L1-APGD (CE and T); Linf unchanged.
PROTOCOL_VERSION = 2
#: What each protocol version runs per norm (for tables and docs).
PROTOCOL_NORMS: dict[int, dict[str, str]] = {
    1: {"L2": "PGD-50", "L1": "SLIDE"},
    2: {"L2": "PGD-50 + AutoAttack-L2", "L1": "SLIDE + L1-APGD"},
}


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
        autoattack_points: run on the first ``n_autoattack`` points of the subset only (AutoAttack-type cost).
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
    autoattack_points: bool = False

    def build(self, model: nn.Module, seed: int = 0, n_classes: int = 10) -> torchattacks.attack.Attack:
        """The attack object on ``model``."""
        opts = dict(self.options)
        if self.attack in ("autoattack", "autoattack_l2"):
            opts.setdefault("n_classes", n_classes)
        return make_attack(self.attack, model, self.eps, steps=self.steps, alpha=self.alpha, seed=seed, **opts)

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (threat model and radius of this attack)."""
        return {
            "attack": self.attack, "norm": self.norm, "eps": self.eps, "steps": self.steps, "alpha": self.alpha,
            "white_box": self.white_box, "options": dict(self.options), "source": self.source,
            "autoattack_points": self.autoattack_points,
        }  # fmt: skip


def protocol_suite(
    dataset: str | ThreatRadii, square_queries: int = 5000, autoattack: bool = True, version: int = PROTOCOL_VERSION
) -> list[AttackSpec]:
    """The protocol's attacks for a data set (its radii from :data:`robust_envs.attacks.RADII`).

    Linf (ADT's table, Dong et al. 2020, with its step size 2/255 at eps 8/255, i.e. ``eps / 4``):
    FGSM, PGD-20, PGD-100, MIM-20, C&W (PGD-30 on the margin loss), AutoAttack standard (headline
    number), and Square (black-box check, ``square_queries``). L2: PGD-50 with step ``eps / 5``
    (MNG-AC's 25/255 at 128/255). L1: SLIDE, 100 steps, step ``eps / 8``, top 1 % coordinates (MNG-AC's
    1.0 at 2000/255, quantile 99).

    Version 2 (issue 14) adds, on the AutoAttack points: in L2 AutoAttack standard with ``norm="L2"`` (APGD-CE,
    APGD-T, FAB-T with 100 iterations and 9 targets, Square with 5,000 queries; Croce & Hein 2020's L2 runs), and
    in L1 AutoAttack's L1 version, L1-APGD-CE and L1-APGD-T (Croce & Hein 2021, 100 iterations, 9 targets). The
    per-norm accuracy stays the per-point worst case over every attack of that norm.

    Args:
        dataset: data set name or explicit :class:`ThreatRadii`.
        square_queries: Square's query budget (black-box check), >= 1.
        autoattack: include AutoAttack (and, from version 2, AutoAttack-L2 and L1-APGD; False only for quick tests).
        version: protocol version, a key of :data:`PROTOCOL_NORMS`.

    Raises:
        ValueError: on unknown data set or version, or ``square_queries < 1``.
    """
    if version not in PROTOCOL_NORMS:
        raise ValueError(f"unknown protocol version {version}; valid: {sorted(PROTOCOL_NORMS)}")
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
        specs.append(AttackSpec("autoattack", "autoattack", "Linf", e, 100, autoattack_points=True,
                                source="Croce & Hein 2020, standard version (torchattacks components)"))  # fmt: skip
    specs += [
        AttackSpec("square", "square", "Linf", e, 1, white_box=False, options={"n_queries": square_queries},
                   source="Andriushchenko et al. 2020 (black-box check)"),
        AttackSpec("pgd_l2", "pgd_l2", "L2", e2, 50, e2 / 5, source="MNG-AC (Madaan et al. 2021) evaluate.py"),
        AttackSpec("slide_l1", "slide", "L1", e1, 100, e1 / 8, options={"q": 0.99},
                   source="SLIDE, Tramer & Boneh 2019; MNG-AC (Madaan et al. 2021) evaluate.py"),
    ]  # fmt: skip
    if autoattack and version >= 2:
        specs += [
            AttackSpec("autoattack_l2", "autoattack_l2", "L2", e2, 100, options={"square_queries": 5000},
                       autoattack_points=True,
                       source="Croce & Hein 2020, standard version in L2 (torchattacks APGD/APGDT/FAB/Square)"),
            AttackSpec("apgd_l1", "apgd_l1", "L1", e1, 100, options={"n_target_classes": 9}, autoattack_points=True,
                       source="L1-APGD-CE + L1-APGD-T, Croce & Hein 2021 (robust_envs.attacks.apgd_l1)"),
        ]  # fmt: skip
    assert all(ATTACK_NORMS[s.attack] == s.norm for s in specs)
    return specs
