"""A features extractor for DDIMSigma-v0's Dict observation ``{x_t, t}`` that keeps ``t`` audible.

SB3's default ``CombinedExtractor`` flattens every non-image key and concatenates them: for DDIMSigma-v0 the
first layer of the MLP then sees 784 normalised pixels and one normalised ``t``, so at initialisation the
timestep is 1 of 785 equally weighted inputs and the policy's output varies mostly with the image. This
extractor encodes ``x_t`` with a small CNN (two strided 4x4 convolutions, as the Nature-DQN encoder but two
layers deep, to a ``cnn_dim`` vector) and concatenates ``t`` (and its square) to it, so that the MLP sees
``cnn_dim + 2`` features of which two carry the time.

With ``gated=True`` the image code is multiplied by a per-feature gate that starts at zero (ReZero, Bachlechner
et al. 2021, "ReZero is All You Need"): the policy and value start as functions of ``t`` alone and the image
enters only as far as the gradient on the gate finds it useful. The gate is a plain parameter, so SB3's
orthogonal re-initialisation of every Linear and Conv2d (``ortho_init``) leaves it at zero; the code goes
through ``tanh`` there, not ``ReLU``, so that it is not clamped at zero where the gate is.

Use: ``policy_kwargs={"features_extractor_class": SigmaCnnExtractor, "features_extractor_kwargs": {"cnn_dim": 16}}``
(``agents.ppo_sigma.Args(extractor="cnn")``; ``extractor="cnn_gated"`` for the gated code).
"""

from __future__ import annotations

import gymnasium as gym
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

__all__ = ["SigmaCnnExtractor"]


class SigmaCnnExtractor(BaseFeaturesExtractor):
    """``{x_t: (B, C, H, W) float32, t: (B, 1) float32[, q_x0: (B, 1) float32]}`` -> ``(B, cnn_dim + 2 [+ 1])``.

    Args:
        observation_space: a Dict space with keys ``x_t`` (Box of shape ``(C, H, W)``, ``H, W >= 8``) and ``t``
            (Box of shape ``(1,)``), and optionally ``q_x0`` (Box of shape ``(1,)``: DDIMSigma-v0's
            ``observe_quality``), passed next to ``t`` outside the gate.
        cnn_dim: width of the image code (>= 1).
        gated: multiply the image code by a gate vector started at zero (see the module docstring).

    Raises:
        ValueError: a space without those keys or shapes, or ``cnn_dim < 1``.
    """

    def __init__(self, observation_space: gym.spaces.Dict, cnn_dim: int = 16, gated: bool = False) -> None:
        if not isinstance(observation_space, gym.spaces.Dict) or set(observation_space.spaces) not in (
            {"x_t", "t"}, {"x_t", "t", "q_x0"}
        ):
            raise ValueError(f"SigmaCnnExtractor needs a Dict space with keys 'x_t', 't' (and optionally 'q_x0'), got "
                             f"{observation_space}")  # fmt: skip
        self_extra = ["q_x0"] if "q_x0" in observation_space.spaces else []
        shape = observation_space.spaces["x_t"].shape
        if shape is None or len(shape) != 3 or min(shape[1:]) < 8:
            raise ValueError(f"x_t must have shape (C, H, W) with H, W >= 8, got {shape}")
        if cnn_dim < 1:
            raise ValueError(f"cnn_dim must be >= 1, got {cnn_dim}")
        super().__init__(observation_space, features_dim=cnn_dim + 2 + len(self_extra))
        self.extra = self_extra
        self.cnn = nn.Sequential(
            nn.Conv2d(shape[0], 8, kernel_size=4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, kernel_size=4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
        )  # fmt: skip
        with torch.no_grad():
            n_flat = self.cnn(torch.zeros(1, *shape)).shape[1]
        self.head = nn.Sequential(nn.Linear(n_flat, cnn_dim), nn.Tanh() if gated else nn.ReLU())
        self.gate = nn.Parameter(torch.zeros(cnn_dim)) if gated else None

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        t = observations["t"].reshape(-1, 1)
        code = self.head(self.cnn(observations["x_t"]))
        if self.gate is not None:
            code = code * self.gate
        return torch.cat([code, t, t * t, *(observations[k].reshape(-1, 1) for k in self.extra)], dim=1)
