"""A batched DDIM sampler with per-episode generators and the timestep attack.

It is the loop that :class:`robust_envs.envs.ddim_sigma.DDIMSigmaSimulator` runs above ``t_c`` and, with a
fixed sigma, the baseline trajectory of that env: for every transition ``t -> t_prev`` it draws, per
episode and in this order, one attack perturbation and one noise sample ``z``. Episodes seeded alike
therefore see the same ``x_T``, ``z`` and attack draws whether they run here or in the env.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from robust_envs.diffusion.attack import NO_DEFENCE, TimestepAttack, TimestepDefence, attacked_eps
from robust_envs.diffusion.models import NoiseModel
from robust_envs.diffusion.schedule import ddim_step

__all__ = ["ddim_steps", "randn_per_generator", "sample_x0"]


def randn_per_generator(
    generators: Sequence[torch.Generator], shape: tuple[int, ...], device: torch.device | str
) -> torch.Tensor:
    """``(len(generators), *shape)`` standard normal draws, row i from ``generators[i]``."""
    return torch.stack([torch.randn(shape, generator=g, device=device) for g in generators])


@torch.no_grad()
def ddim_steps(
    model: NoiseModel,
    x: torch.Tensor,
    seq: Sequence[int],
    generators: Sequence[torch.Generator],
    attack: TimestepAttack,
    t_c: int,
    sigma: float = 0.0,
    defence: TimestepDefence = NO_DEFENCE,
) -> torch.Tensor:
    """Run the DDIM transitions ``seq[0] -> seq[1] -> ... -> seq[-1]`` with a constant sigma.

    Args:
        model: the noise network and its schedule.
        x: ``(N, C, H, W)`` samples at paper step ``seq[0]``.
        seq: decreasing paper timesteps (``0`` as the last entry yields x_0).
        generators: one per sample.
        attack: the timestep attack, applied at steps ``t <= t_c`` (seed 000 sec. 5.1.3).
        t_c: critical timestep.
        sigma: constant sigma, clipped per step to ``sqrt(1 - alpha_bar[t_prev])`` (0: deterministic DDIM).
        defence: the inference-time timestep defence, applied at every step.

    Returns:
        ``(N, C, H, W)`` samples at ``seq[-1]``.
    """
    schedule = model.schedule
    alpha_bar = schedule.alpha_bar.to(x.device)
    for t, t_prev in zip(seq[:-1], seq[1:], strict=True):
        timestep = torch.full((x.shape[0],), float(t - 1), device=x.device)
        eps = attacked_eps(model, x, timestep, attack, generators, defence, attacked=t <= t_c)
        z = randn_per_generator(generators, tuple(x.shape[1:]), x.device)
        x = ddim_step(x, eps, alpha_bar[t], alpha_bar[t_prev], min(sigma, schedule.sigma_max(t, t_prev)), z).x_prev
    return x


@torch.no_grad()
def sample_x0(
    model: NoiseModel,
    generators: Sequence[torch.Generator],
    t_c: int,
    stride: int,
    attack: TimestepAttack,
    sigma: float = 0.0,
    defence: TimestepDefence = NO_DEFENCE,
) -> torch.Tensor:
    """Generate x_0 ``(N, C, H, W)`` in model space ([-1, 1] for data) along ``schedule.timesteps(t_c, stride)``.

    ``x_T`` is drawn from each generator first; with ``sigma`` equal to the env's ``baseline_sigma`` this is
    exactly the baseline trajectory of ``DDIMSigma-v0`` for generators seeded alike.
    """
    device = model.device
    x = randn_per_generator(generators, model.sample_shape, device)
    return ddim_steps(model, x, [*model.schedule.timesteps(t_c, stride), 0], generators, attack, t_c, sigma, defence)
