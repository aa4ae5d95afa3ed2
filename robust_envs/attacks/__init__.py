"""Input-space attacks on classifiers and robust-evaluation helpers.

Most attacks come from torchattacks 3.3 (Kim 2020, https://github.com/Harry24k/adversarial-attacks-pytorch),
which handles eval mode and the [0, 1] input range; AutoAttack is assembled from torchattacks' components
with the reference settings (:mod:`robust_envs.attacks.autoattack`); the margin-loss PGD ("C&W"), the
L1 attacks SLIDE and L1-APGD and the union attack MSD are implemented here. Images are ``(N, C, H, W)`` float in [0, 1].
"""

from __future__ import annotations

from robust_envs.attacks.apgd_l1 import APGDL1, APGDL1Ensemble, project_l1_box
from robust_envs.attacks.autoattack import autoattack_standard
from robust_envs.attacks.core import (
    ATTACK_NAMES,
    ATTACK_NORMS,
    correct_under_attack,
    make_attack,
    perturbation_norm,
)
from robust_envs.attacks.margin_pgd import MarginPGD, margin_loss
from robust_envs.attacks.msd import MSD, msd_candidates
from robust_envs.attacks.radii import RADII, ThreatRadii, radii_for
from robust_envs.attacks.slide import SLIDE, project_l1_ball
from robust_envs.attacks.suite import PROTOCOL_NORMS, PROTOCOL_VERSION, AttackSpec, protocol_suite

__all__ = [
    "APGDL1",
    "ATTACK_NAMES",
    "ATTACK_NORMS",
    "MSD",
    "PROTOCOL_NORMS",
    "PROTOCOL_VERSION",
    "RADII",
    "SLIDE",
    "APGDL1Ensemble",
    "AttackSpec",
    "MarginPGD",
    "ThreatRadii",
    "autoattack_standard",
    "correct_under_attack",
    "make_attack",
    "margin_loss",
    "msd_candidates",
    "perturbation_norm",
    "project_l1_ball",
    "project_l1_box",
    "protocol_suite",
    "radii_for",
]
