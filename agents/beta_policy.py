"""A Beta action distribution for Stable-Baselines3's PPO on bounded Box actions.

SB3 gives on-policy learners a diagonal Gaussian whose samples are clipped to the action box. When the best
action lies on the box's edge (DDIMSigma-v0: the reward rises up to sigma = sigma_max, docs/sigma_tuning.md),
the clipped samples carry no gradient about how far past the edge the mean sits, and the per-sample clipping
biases the policy gradient (Chou, Maturana & Scherer, ICML 2017, "Improving Stochastic Policy Gradients in
Continuous Control with Deep Reinforcement Learning using the Beta Distribution", sec. 3). Their remedy is a
Beta policy with support equal to the box: no clipping, and its mode reaches the edge at a finite parameter.
SB3 has no Beta distribution (it keeps to Gaussian, gSDE, categorical and Bernoulli), so it lives here,
written against SB3's :class:`~stable_baselines3.common.distributions.Distribution` interface.

Parametrisation (Chou et al. sec. 3.2): alpha = 1 + softplus(h_alpha), beta = 1 + softplus(h_beta), which keeps
the density unimodal and bounded; an action b in [0, 1] from Beta(alpha, beta) is mapped affinely to the box
[low, high] (SB3 agents see [-1, 1] after :class:`gymnasium.wrappers.RescaleAction`). The deterministic action
is the mode, (alpha - 1) / (alpha + beta - 2), which reaches the box's edge when beta - 1 << alpha - 1.

Use::

    from agents.beta_policy import BetaMultiInputPolicy
    PPO(BetaMultiInputPolicy, venv)  # venv's action space: a bounded Box
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy, MultiInputActorCriticPolicy
from torch import nn
from torch.nn import functional as F

__all__ = ["BetaDistribution", "BetaMultiInputPolicy", "BetaPolicy"]

_EPS = 1e-6  # samples are kept inside (0, 1) so that log_prob stays finite at the edges


class BetaDistribution(Distribution):
    """Independent Beta distributions, one per action dimension, mapped affinely onto ``[low, high]``.

    Args:
        action_dim: number of action dimensions (>= 1).
        low, high: the box's bounds (scalars or arrays of shape ``(action_dim,)``, ``low < high``).

    Raises:
        ValueError: ``action_dim < 1``, or a bound that is not finite, or ``low >= high``.
    """

    def __init__(self, action_dim: int, low: Any = -1.0, high: Any = 1.0) -> None:
        super().__init__()
        if action_dim < 1:
            raise ValueError(f"action_dim must be >= 1, got {action_dim}")
        low_t = torch.as_tensor(np.broadcast_to(np.asarray(low, dtype=np.float32), (action_dim,)).copy())
        high_t = torch.as_tensor(np.broadcast_to(np.asarray(high, dtype=np.float32), (action_dim,)).copy())
        if not (torch.isfinite(low_t).all() and torch.isfinite(high_t).all()) or bool((low_t >= high_t).any()):
            raise ValueError(f"a Beta policy needs a finite box with low < high, got low={low!r}, high={high!r}")
        self.action_dim = action_dim
        self.low, self.high = low_t, high_t
        self.distribution: torch.distributions.Beta | None = None

    def proba_distribution_net(self, latent_dim: int) -> nn.Module:  # type: ignore[override]
        """A linear layer from the actor's latent (shape ``(B, latent_dim)``) to ``(B, 2 * action_dim)``
        pre-activations ``h_alpha, h_beta``.
        """
        return nn.Linear(latent_dim, 2 * self.action_dim)

    def proba_distribution(self, params: torch.Tensor) -> BetaDistribution:  # type: ignore[override]
        """Set alpha = 1 + softplus(h_alpha), beta = 1 + softplus(h_beta) from ``params`` (shape ``(B, 2 * action_dim)``)."""
        h_alpha, h_beta = params.chunk(2, dim=-1)
        self.distribution = torch.distributions.Beta(1.0 + F.softplus(h_alpha), 1.0 + F.softplus(h_beta))
        return self

    def _dist(self) -> torch.distributions.Beta:
        if self.distribution is None:
            raise RuntimeError("call proba_distribution(params) before using the distribution")
        return self.distribution

    def _span(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = self.low.to(like.device, like.dtype), self.high.to(like.device, like.dtype)
        return low, high - low

    def _to_box(self, b: torch.Tensor) -> torch.Tensor:
        low, span = self._span(b)
        return low + span * b

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """Log density of ``actions`` (shape ``(B, action_dim)``, in the box), summed over dimensions: shape ``(B,)``."""
        low, span = self._span(actions)
        b = ((actions - low) / span).clamp(_EPS, 1.0 - _EPS)
        return (self._dist().log_prob(b) - torch.log(span)).sum(dim=-1)

    def entropy(self) -> torch.Tensor:
        """Differential entropy in the box's units, summed over dimensions: shape ``(B,)``."""
        dist = self._dist()
        return (dist.entropy() + torch.log(self.high - self.low).to(dist.concentration1)).sum(dim=-1)

    def sample(self) -> torch.Tensor:
        """A draw in the box, shape ``(B, action_dim)`` (not reparametrised: PPO needs none)."""
        return self._to_box(self._dist().sample().clamp(_EPS, 1.0 - _EPS))

    def mode(self) -> torch.Tensor:
        """(alpha - 1) / (alpha + beta - 2) in the box; the centre where both are 1 (a flat density)."""
        dist = self._dist()
        a1, b1 = dist.concentration1 - 1.0, dist.concentration0 - 1.0
        denom = a1 + b1
        flat = denom < 1e-8
        b = torch.where(flat, torch.full_like(denom, 0.5), a1 / denom.clamp_min(1e-8))
        return self._to_box(b)

    def actions_from_params(self, params: torch.Tensor, deterministic: bool = False) -> torch.Tensor:  # type: ignore[override]
        self.proba_distribution(params)
        return self.get_actions(deterministic=deterministic)

    def log_prob_from_params(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        actions = self.actions_from_params(params)
        return actions, self.log_prob(actions)


class _BetaMixin:
    """Swap the Gaussian head SB3 builds for a Beta head (same latent, orthogonal init with gain 0.01)."""

    action_space: spaces.Box
    mlp_extractor: Any
    optimizer_class: Any
    optimizer_kwargs: dict[str, Any]
    ortho_init: bool

    def _build(self, lr_schedule: Any) -> None:
        if not isinstance(self.action_space, spaces.Box):
            raise ValueError(f"a Beta policy needs a Box action space, got {self.action_space}")
        super()._build(lr_schedule)  # type: ignore[misc]  # SB3's networks with a Gaussian head
        dim = int(np.prod(self.action_space.shape))
        self.action_dist = BetaDistribution(dim, self.action_space.low.ravel(), self.action_space.high.ravel())
        self.action_net = self.action_dist.proba_distribution_net(self.mlp_extractor.latent_dim_pi)
        if self.ortho_init:
            ActorCriticPolicy.init_weights(self.action_net, gain=0.01)
        del self.log_std  # the Gaussian's state-independent log std has no role here
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)  # type: ignore[attr-defined]

    def _get_action_dist_from_latent(self, latent_pi: torch.Tensor) -> Distribution:
        return self.action_dist.proba_distribution(self.action_net(latent_pi))  # type: ignore[attr-defined]


class BetaPolicy(_BetaMixin, ActorCriticPolicy):
    """SB3 ``MlpPolicy`` with a Beta head (flat Box observations)."""


class BetaMultiInputPolicy(_BetaMixin, MultiInputActorCriticPolicy):
    """SB3 ``MultiInputPolicy`` with a Beta head (Dict observations such as DDIMSigma-v0's ``{x_t, t}``)."""

