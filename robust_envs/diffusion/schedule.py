"""Noise schedule and the DDIM update with a per-sample sigma.

Paper: Song, Meng, Ermon, "Denoising Diffusion Implicit Models", ICLR 2021, https://arxiv.org/abs/2010.02502
(Eq. 12, 16); seed 000 (Hong), Eq. 10 and 13. Seed 000's Eq. 13 divides by ``alpha_t`` where the DDIM
paper divides by ``sqrt(alpha_t)`` (alpha being the cumulative product); we follow the DDIM paper.

Notation (code -> paper):

- ``alpha_bar[t]`` -> alpha_t of DDIM / seed 000 (the cumulative product ``prod_{s<=t} (1 - beta_s)``),
  indexed ``t = 0..T`` with ``alpha_bar[0] = 1`` (clean data);
- ``sigma`` -> sigma_t, ``eta`` -> eta (DDIM Eq. 16), ``eps`` -> epsilon_theta(x_t, t);
- ``x0_pred`` -> f_theta^(t)(x_t) (seed 000 Eq. 10), ``x_prev`` -> x_{t_prev};
- ``T`` -> ``num_train_timesteps``.

Network timesteps follow diffusers and the original DDIM code: the network input for paper step ``t``
(1..T) is ``t - 1`` (:func:`model_timestep`), so a diffusers ``DDPMScheduler``/``DDIMScheduler`` with
``alphas_cumprod[i]`` describes the same model (``alpha_bar[t] == alphas_cumprod[t - 1]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["DDIMStepOutput", "NoiseSchedule", "ddim_step", "model_timestep", "predict_x0"]


def model_timestep(t: torch.Tensor | int) -> torch.Tensor | int:
    """The network's timestep input for paper step ``t`` (1..T): ``t - 1`` (diffusers convention)."""
    return t - 1


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete variance-preserving noise schedule.

    Attributes:
        betas: ``(T,)`` float64, ``betas[t - 1]`` is beta_t for paper step ``t`` in 1..T.
        alpha_bar: ``(T + 1,)`` float64, ``alpha_bar[0] = 1`` and ``alpha_bar[t] = prod_{s=1..t} (1 - beta_s)``.
    """

    betas: torch.Tensor
    alpha_bar: torch.Tensor

    @classmethod
    def from_betas(cls, betas: torch.Tensor) -> NoiseSchedule:
        """Build from ``(T,)`` betas in (0, 1).

        Raises:
            ValueError: if ``betas`` is not 1-D or has values outside (0, 1).
        """
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(f"betas must be a non-empty 1-D tensor in (0, 1), got min {betas.min()} max {betas.max()}")
        alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1.0 - betas, 0)])
        return cls(betas=betas, alpha_bar=alpha_bar)

    @classmethod
    def linear(cls, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
        """The linear schedule of DDPM (Ho et al. 2020): betas evenly spaced from 1e-4 to 0.02, T = 1000."""
        if num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
        return cls.from_betas(torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64))

    @classmethod
    def cosine(cls, num_train_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
        """The cosine schedule of improved DDPM (Nichol & Dhariwal 2021, Eq. 17).

        ``alpha_bar(t) = f(t) / f(0)`` with ``f(t) = cos((t / T + s) / (1 + s) * pi / 2) ** 2``, discretised as
        ``beta_t = min(1 - alpha_bar(t) / alpha_bar(t - 1), max_beta)`` for t = 1..T (as
        ``betas_for_alpha_bar`` in openai/improved-diffusion does).

        Paper: https://arxiv.org/abs/2102.09672. Code: openai/improved-diffusion ``gaussian_diffusion.py``.

        Raises:
            ValueError: if ``num_train_timesteps < 1``.
        """
        if num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")

        def f(u: float) -> float:
            return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        T = num_train_timesteps
        betas = [min(1.0 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)]
        return cls.from_betas(torch.tensor(betas, dtype=torch.float64))

    @classmethod
    def from_diffusers_config(cls, config: dict) -> NoiseSchedule:
        """Build from a diffusers scheduler config (``beta_schedule`` linear, scaled_linear or squaredcos_cap_v2).

        Raises:
            ValueError: on another ``beta_schedule`` (name the supported ones).
        """
        kind = config.get("beta_schedule", "linear")
        n = int(config.get("num_train_timesteps", 1000))
        start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
        if kind == "linear":
            return cls.linear(n, start, end)
        if kind == "scaled_linear":
            return cls.from_betas(torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2)
        if kind == "squaredcos_cap_v2":
            return cls.cosine(n)
        raise ValueError(
            f"beta_schedule {kind!r} is not supported; valid: 'linear', 'scaled_linear', 'squaredcos_cap_v2'"
        )

    @property
    def num_train_timesteps(self) -> int:
        """T, the number of diffusion steps."""
        return int(self.betas.numel())

    def timesteps(self, t_c: int, stride: int) -> list[int]:
        """The sampling sequence ``t_c + K*d, ..., t_c + d, t_c, t_c - 1, ..., 1`` (then 0 is x_0).

        ``K = floor((T - t_c) / d)``: strided DDIM steps above the critical timestep ``t_c`` and unit steps
        from ``t_c`` down to 1, as seed 000 Fig. 5 describes.

        Raises:
            ValueError: if ``t_c`` is outside [1, T] or ``stride < 1``.
        """
        T = self.num_train_timesteps
        if not 1 <= t_c <= T:
            raise ValueError(f"t_c must be in [1, T={T}], got {t_c}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        k = (T - t_c) // stride
        return [t_c + i * stride for i in range(k, 0, -1)] + list(range(t_c, 0, -1))

    def sigma_max(self, t: int, t_prev: int) -> float:
        """Largest feasible sigma for the step t -> t_prev: ``sqrt(1 - alpha_bar[t_prev])`` (0 when t_prev = 0)."""
        return math.sqrt(max(0.0, 1.0 - float(self.alpha_bar[t_prev])))

    def sigma_ddpm(self, t: int, t_prev: int) -> float:
        """The eta = 1 sigma of DDIM Eq. 16: ``sqrt((1 - ab_prev) / (1 - ab_t)) * sqrt(1 - ab_t / ab_prev)``."""
        ab_t, ab_prev = float(self.alpha_bar[t]), float(self.alpha_bar[t_prev])
        return math.sqrt(max(0.0, (1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev)))


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor | float) -> torch.Tensor:
    """x0 prediction (seed 000 Eq. 10, DDIM Eq. 9): ``(x_t - sqrt(1 - ab_t) * eps) / sqrt(ab_t)``.

    Shapes: ``x_t``, ``eps`` ``(N, C, H, W)``; ``alpha_bar_t`` a float or ``(N,)`` in (0, 1].
    """
    ab = _per_sample(alpha_bar_t, x_t, torch.float64)
    return (x_t - (1.0 - ab).sqrt().to(x_t.dtype) * eps) / ab.sqrt().to(x_t.dtype)


@dataclass(frozen=True)
class DDIMStepOutput:
    """Result of :func:`ddim_step`: ``x_prev`` and the ``x0_pred`` it used, both ``(N, C, H, W)``."""

    x_prev: torch.Tensor
    x0_pred: torch.Tensor


def ddim_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar_t: torch.Tensor | float,
    alpha_bar_prev: torch.Tensor | float,
    sigma: torch.Tensor | float,
    noise: torch.Tensor | None = None,
    atol: float = 1e-6,
) -> DDIMStepOutput:
    """One generalised DDIM step t -> t_prev with a per-sample sigma (DDIM Eq. 12; seed 000 Eq. 13 fixed).

    ``x_prev = sqrt(ab_prev) * x0_pred + sqrt(1 - ab_prev - sigma^2) * eps + sigma * noise``

    Args:
        x_t: ``(N, C, H, W)`` float, the current sample.
        eps: ``(N, C, H, W)`` float, the network's noise prediction for ``x_t``.
        alpha_bar_t: float or ``(N,)``, alpha_bar at t, in (0, 1].
        alpha_bar_prev: float or ``(N,)``, alpha_bar at t_prev, in (0, 1] and >= ``alpha_bar_t``.
        sigma: float or ``(N,)``, in ``[0, sqrt(1 - alpha_bar_prev)]``.
        noise: ``(N, C, H, W)`` standard normal draws; required when any sigma > 0.
        atol: tolerance on the sigma bound for float round-off.

    Raises:
        ValueError: if a sigma is NaN, negative or above ``sqrt(1 - alpha_bar_prev)`` (the message names
            the value and the bound), or noise is missing / mis-shaped while sigma > 0.
    """
    # coefficients in float64: near t = 0, 1 - alpha_bar is ~1e-4 and float32 would lose 3 digits
    ab_t = _per_sample(alpha_bar_t, x_t, torch.float64)
    ab_prev = _per_sample(alpha_bar_prev, x_t, torch.float64)
    sig = _per_sample(sigma, x_t, torch.float64)
    bound = (1.0 - ab_prev).clamp_min(0.0).sqrt()
    sig, bound = torch.broadcast_tensors(sig, bound)
    bad = (torch.isnan(sig) | (sig < 0) | (sig > bound + atol)).flatten()
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"sigma must be in [0, sqrt(1 - alpha_bar_prev)]; sample {i} has sigma={float(sig.flatten()[i]):.6g} "
            f"with bound {float(bound.flatten()[i]):.6g}"
        )
    sig = torch.minimum(sig, bound)
    x0_pred = predict_x0(x_t, eps, ab_t)
    c_dir = (1.0 - ab_prev - sig**2).clamp_min(0.0).sqrt().to(x_t.dtype)
    x_prev = ab_prev.sqrt().to(x_t.dtype) * x0_pred + c_dir * eps
    if bool((sig > 0).any()):
        if noise is None or noise.shape != x_t.shape:
            raise ValueError(
                f"noise of shape {tuple(x_t.shape)} is required when sigma > 0, got "
                f"{None if noise is None else tuple(noise.shape)}"
            )
        x_prev = x_prev + sig.to(x_t.dtype) * noise
    return DDIMStepOutput(x_prev=x_prev, x0_pred=x0_pred)


def _per_sample(value: torch.Tensor | float, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Broadcast a scalar or ``(N,)`` value to ``(N, 1, 1, 1)`` on ``like``'s device (dtype: ``like``'s)."""
    dtype = dtype or like.dtype
    v = value.to(like.device, dtype) if torch.is_tensor(value) else torch.tensor(value, dtype=dtype, device=like.device)
    if v.dim() == 0:
        return v.reshape(1, *([1] * (like.dim() - 1)))
    if v.dim() == 1 and v.shape[0] == like.shape[0]:
        return v.reshape(-1, *([1] * (like.dim() - 1)))
    if v.dim() == like.dim() and v.shape[0] in (1, like.shape[0]) and all(s == 1 for s in v.shape[1:]):
        return v
    raise ValueError(f"expected a scalar or a ({like.shape[0]},) tensor, got shape {tuple(v.shape)}")
