"""The timestep attack of seed 000 (Hong), sec. 5.1.3.

For every step with ``t <= t_c`` the noise network sees ``t + clip(scale * N(0, 1), -clip, clip)``
instead of ``t``: a perturbation of the *timestep input*, which Lipschitz singularities near t = 0
(Yang et al. 2023, "Eliminating Lipschitz Singularities in Diffusion Models", Eq. 1) make harmful.
The paper's values are ``scale = 0.01`` and ``clip = 0.05`` (in timestep units).

The perturbed timestep is a float tensor: diffusers' ``UNet2DModel`` casts a Python float timestep to
``torch.long`` and would drop the perturbation, while a float tensor reaches the sinusoidal embedding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["ATTACKS", "TimestepAttack"]

ATTACKS = ("gaussian", "none")


@dataclass(frozen=True)
class TimestepAttack:
    """Additive clipped Gaussian noise on the network's timestep input (seed 000 sec. 5.1.3).

    Attributes:
        kind: ``"gaussian"`` (the paper's attack) or ``"none"``.
        scale: standard deviation of the perturbation, timestep units (paper: 0.01); >= 0.
        clip: the perturbation is clipped to ``[-clip, clip]`` (paper: 0.05); >= 0.
    """

    kind: str = "gaussian"
    scale: float = 0.01
    clip: float = 0.05

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise ValueError(f"attack must be one of {ATTACKS}, got {self.kind!r}")
        for name in ("scale", "clip"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"attack_{name} must be a finite number >= 0, got {value!r}")

    @property
    def active(self) -> bool:
        return self.kind != "none" and self.scale > 0 and self.clip > 0

    def sample_delta(self, generators: Sequence[torch.Generator], device: torch.device | str) -> torch.Tensor:
        """Draw one perturbation per episode, ``(N,)`` float32, each from that episode's generator.

        One draw is made per generator even when the attack is off, so turning the attack on or off does
        not shift the other random streams of an episode.
        """
        z = torch.cat([torch.randn(1, generator=g, device=device) for g in generators])
        if not self.active:
            return torch.zeros_like(z)
        return (self.scale * z).clamp_(-self.clip, self.clip)
