"""Threats on the noise network near t = 0, and the inference-time timestep defence.

Seed 000 (Hong), sec. 5.1.3, attacks the *timestep input* of the noise network for every step with
``t <= t_c``: the network sees ``t + clip(0.01 * N(0, 1), -0.05, 0.05)``. Lipschitz singularities (Yang et
al. 2023, "Eliminating Lipschitz Singularities in Diffusion Models", E-TSDM, Eq. 1) make the network's
output change fast with its timestep near zero. Measured on the embedded model
(``docs/singularity.md``), the x0 prediction barely moves under that attack because the eps term is weighted
by ``sqrt(1 - alpha_bar_t)``; the threats below let a benchmark pick an adversary that bites.

Threats (``TimestepAttack.kind``), all applied only at steps ``t <= t_c``:

- ``"gaussian"`` (seed 000's, the default): ``delta = clip(scale * N(0, 1), -clip, clip)`` timestep units.
- ``"shift"``: a constant same-sign shift, ``delta = +budget`` timestep units (the network believes the
  sample is noisier than it is). The simplest worst case: zero-mean draws cancel, a shift does not.
- ``"adaptive"``: white-box, per sample and step, the ``delta`` in ``[-budget, budget]`` that maximises the
  change of the x0 prediction (seed 000 Eq. 10) against the clean call, found by an exact search over
  ``grid`` candidates evenly spaced on ``[-budget, budget]`` (0 left out). Since ``x_t`` and ``alpha_bar_t``
  are fixed, ``||x0(delta) - x0(0)|| = sqrt(1 - ab_t) / sqrt(ab_t) * ||eps(delta) - eps(0)||``: the search
  ranks candidates by the eps change. Cost per step: ``1 + grid`` network forwards instead of 1.
- ``"state"``: white-box Linf attack on the sample the network sees, ``eps_theta(x_t + delta, t)`` with
  ``||delta||_inf <= budget`` (model space, data in [-1, 1]), maximising the same eps change by ``steps``
  steps of projected sign-gradient ascent (PGD, Madry et al. 2018) from a random start in the ball; the DDIM
  update still uses the true ``x_t``. Cost per step: ``2 + steps`` forwards and ``steps`` backwards.
- ``"none"``: no attack.

Every threat draws, per episode and step, one standard normal from the episode's generator (used by
``"gaussian"``, drawn and ignored by the others), so switching between the timestep threats does not shift
the other random streams of an episode; ``"state"`` additionally draws its random start ``(C, H, W)``.

Defence (:class:`TimestepDefence`), applied to the timestep the network finally receives (after the
attack; the white-box threats attack *through* it):

- ``"round"``: round to the integer training grid. It removes any perturbation with ``|delta| < 0.5``
  exactly.
- ``"share"``: E-TSDM-style condition sharing at inference: inside ``[0, t_share)`` the condition is the
  left end of its sub-interval of width ``t_share / n_share`` (E-TSDM trains the network that way; applied
  at inference to a network trained without it, it also changes the clean prediction: measured in the docs).

Timesteps reach the network as float tensors: diffusers' ``UNet2DModel`` casts a Python float to ``long``
and would drop a fractional perturbation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from robust_envs.diffusion.models import NoiseModel

__all__ = ["ATTACKS", "DEFENCES", "TimestepAttack", "TimestepDefence", "attacked_eps"]

ATTACKS = ("gaussian", "none", "shift", "adaptive", "state")
DEFENCES = ("none", "round", "share")


def _check_nonneg(name: str, value: float) -> None:
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class TimestepAttack:
    """A threat on the noise network at steps ``t <= t_c`` (see the module docstring for each kind).

    Attributes:
        kind: one of :data:`ATTACKS`; ``"gaussian"`` is seed 000's attack.
        scale: ``"gaussian"`` only: std of the perturbation, timestep units (paper: 0.01); >= 0.
        clip: ``"gaussian"`` only: the perturbation is clipped to ``[-clip, clip]`` (paper: 0.05); >= 0.
        budget: ``"shift"`` / ``"adaptive"``: timestep units; ``"state"``: Linf radius in model space
            (data in [-1, 1], so ``2 / 255`` is one 8-bit grey level); >= 0.
        grid: ``"adaptive"`` only: candidates searched on ``[-budget, budget]``, an even number >= 2.
        steps: ``"state"`` only: PGD steps, >= 1.

    Raises:
        ValueError: on an unknown kind or a negative / non-finite number (the message names it).
    """

    kind: str = "gaussian"
    scale: float = 0.01
    clip: float = 0.05
    budget: float = 0.0
    grid: int = 2
    steps: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise ValueError(f"attack must be one of {ATTACKS}, got {self.kind!r}")
        _check_nonneg("attack_scale", self.scale)
        _check_nonneg("attack_clip", self.clip)
        _check_nonneg("attack_budget", self.budget)
        if isinstance(self.grid, bool) or not isinstance(self.grid, int) or self.grid < 2 or self.grid % 2:
            raise ValueError(f"attack_grid must be an even int >= 2, got {self.grid!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"attack_steps must be an int >= 1, got {self.steps!r}")

    @property
    def active(self) -> bool:
        """False when the threat cannot change anything (``"none"``, or a zero scale / budget)."""
        if self.kind == "gaussian":
            return self.scale > 0 and self.clip > 0
        return self.kind != "none" and self.budget > 0

    @property
    def forwards_per_call(self) -> int:
        """Network forwards per attacked call (``"state"`` also runs ``steps`` backwards)."""
        if not self.active:
            return 1
        return {"adaptive": 1 + self.grid, "state": 2 + self.steps}.get(self.kind, 1)

    def sample_delta(self, generators: Sequence[torch.Generator], device: torch.device | str) -> torch.Tensor:
        """The per-episode timestep draw ``(N,)`` float32, one standard normal from each generator.

        ``"gaussian"``: ``clip(scale * z, -clip, clip)``; ``"shift"``: ``+budget``; otherwise 0 (the
        white-box threats choose their perturbation in :func:`attacked_eps`). One draw is made per generator
        whatever the kind, so the other random streams of an episode do not depend on the threat.
        """
        z = torch.cat([torch.randn(1, generator=g, device=device) for g in generators])
        if not self.active or self.kind not in ("gaussian", "shift"):
            return torch.zeros_like(z)
        if self.kind == "shift":
            return torch.full_like(z, float(self.budget))
        return (self.scale * z).clamp_(-self.clip, self.clip)


@dataclass(frozen=True)
class TimestepDefence:
    """Inference-time processing of the network's timestep input (module docstring).

    Attributes:
        kind: one of :data:`DEFENCES`.
        t_share: ``"share"``: upper end of the shared range, network timestep units (E-TSDM: 100); > 0.
        n_share: ``"share"``: number of sub-intervals (E-TSDM: 5); >= 1.

    Raises:
        ValueError: on an unknown kind or an invalid ``t_share`` / ``n_share``.
    """

    kind: str = "none"
    t_share: float = 100.0
    n_share: int = 5

    def __post_init__(self) -> None:
        if self.kind not in DEFENCES:
            raise ValueError(f"defence must be one of {DEFENCES}, got {self.kind!r}")
        if not (isinstance(self.t_share, (int, float)) and math.isfinite(self.t_share) and self.t_share > 0):
            raise ValueError(f"defence_t_share must be a finite number > 0, got {self.t_share!r}")
        if isinstance(self.n_share, bool) or not isinstance(self.n_share, int) or self.n_share < 1:
            raise ValueError(f"defence_n_share must be an int >= 1, got {self.n_share!r}")

    def __call__(self, timestep: torch.Tensor) -> torch.Tensor:
        """Map network timesteps ``(M,)`` float to what the network receives (same shape, float)."""
        if self.kind == "round":
            return timestep.round()
        if self.kind == "share":
            width = self.t_share / self.n_share
            shared = torch.floor(timestep / width) * width
            return torch.where(timestep < self.t_share, shared.clamp_min(0.0), timestep)
        return timestep


NO_DEFENCE = TimestepDefence()


def _net(model: NoiseModel, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """eps_theta with autograd on (the white-box threats differentiate through it)."""
    out: torch.Tensor = model.unet(x, timestep).sample
    return out


def attacked_eps(
    model: NoiseModel,
    x: torch.Tensor,
    timestep: torch.Tensor,
    attack: TimestepAttack,
    generators: Sequence[torch.Generator],
    defence: TimestepDefence = NO_DEFENCE,
    attacked: bool = True,
) -> torch.Tensor:
    """eps_theta of ``x`` under ``attack`` (when ``attacked``) and ``defence``.

    Args:
        model: the noise network.
        x: ``(R * N, C, H, W)`` float samples in model space: ``R`` trajectories (e.g. agent and baseline,
            ``R = 2``) of the ``N`` episodes owning ``generators``, stacked trajectory-major.
        timestep: ``(R * N,)`` float network timesteps (``t - 1`` for paper step t) before the attack.
        attack: the threat; its random draws come from ``generators`` (one per episode, shared by the ``R``
            trajectories of an episode: common random numbers).
        generators: one per episode (``N``).
        defence: applied to the timestep the network receives.
        attacked: False for steps above ``t_c``: the draw is still made (streams stay aligned) but unused.

    Returns:
        ``(R * N, C, H, W)`` eps predictions (no autograd graph).

    Raises:
        ValueError: if ``x`` and ``timestep`` do not have ``R * N`` rows.
    """
    n = len(generators)
    if x.shape[0] != timestep.shape[0] or x.shape[0] % n:
        raise ValueError(f"x has {x.shape[0]} rows and timestep {timestep.shape[0]}; both must be R * {n}")
    rep = x.shape[0] // n
    delta = attack.sample_delta(generators, x.device).repeat(rep)
    if not attacked or not attack.active:
        with torch.no_grad():
            return _net(model, x, defence(timestep))
    if attack.kind in ("gaussian", "shift"):
        with torch.no_grad():
            return _net(model, x, defence(timestep + delta))
    if attack.kind == "adaptive":
        return _adaptive_timestep(model, x, timestep, attack, defence)
    start = torch.stack([torch.rand(x.shape[1:], generator=g, device=x.device) for g in generators])
    return _state_pgd(model, x, timestep, attack, defence, (2.0 * start - 1.0).repeat(rep, 1, 1, 1))[0]


@torch.no_grad()
def _adaptive_timestep(
    model: NoiseModel, x: torch.Tensor, timestep: torch.Tensor, attack: TimestepAttack, defence: TimestepDefence
) -> torch.Tensor:
    """Exact search over ``grid`` timestep offsets: keep, per sample, the eps farthest from the clean one."""
    clean = _net(model, x, defence(timestep))
    half = attack.grid // 2
    offsets = [attack.budget * k / half for k in range(-half, half + 1) if k != 0]
    best, best_dist = clean, torch.full((x.shape[0],), -1.0, device=x.device)
    for off in offsets:
        eps = _net(model, x, defence(timestep + off))
        dist = (eps - clean).flatten(1).pow(2).sum(1)
        better = dist > best_dist
        best = torch.where(better.view(-1, 1, 1, 1), eps, best)
        best_dist = torch.where(better, dist, best_dist)
    return best


def _state_pgd(
    model: NoiseModel,
    x: torch.Tensor,
    timestep: torch.Tensor,
    attack: TimestepAttack,
    defence: TimestepDefence,
    start: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linf PGD on the network's input sample, maximising ``||eps(x + delta) - eps(x)||^2`` per sample.

    ``start`` ``(M, C, H, W)`` in [-1, 1] is the random start as a fraction of the budget. Returns the eps at
    the final iterate and the perturbation ``delta`` (``|delta| <= budget`` elementwise).
    """
    t_in = defence(timestep)
    with torch.no_grad():
        clean = _net(model, x, t_in)
    budget = float(attack.budget)
    step = 2.5 * budget / attack.steps  # Madry et al.'s 2.5 eps / steps
    delta = start * budget
    for _ in range(attack.steps):
        delta = delta.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = (_net(model, x + delta, t_in) - clean).flatten(1).pow(2).sum()
            (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta + step * grad.sign()).clamp(-budget, budget)
    delta = delta.detach()
    with torch.no_grad():
        return _net(model, x + delta, t_in), delta
