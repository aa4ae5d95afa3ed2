"""Input-space attacks on classifiers and robust-evaluation helpers.

Attacks come from torchattacks (Kim 2020, https://github.com/Harry24k/adversarial-attacks-pytorch),
which handles eval mode and the [0, 1] input range. Images are ``(N, C, H, W)`` float in [0, 1].
"""

from __future__ import annotations

from robust_envs.attacks.core import ATTACK_NAMES, correct_under_attack, make_attack

__all__ = ["ATTACK_NAMES", "correct_under_attack", "make_attack"]
