"""Fixed-schedule reference agents for DDIMSigma-v0, with SB3's ``predict`` interface.

They are the comparison points of the evaluation (seed 000 sec. 5.1.4 compares the learnt policy with the
fixed sigma = 0 schedule; constant eta 0.5 / 1.0 and a uniformly random eta bracket what a schedule can do).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ConstantEta", "RandomEta", "SigmaPolicy"]


class SigmaPolicy:
    """Anything with SB3's ``predict(observation, deterministic) -> (actions, state)``.

    ``observation`` is the batched Dict observation of :class:`~robust_envs.envs.ddim_sigma.DDIMSigmaVectorEnv`
    (``x_t`` ``(N, C, H, W)``, ``t`` ``(N, 1)``); ``actions`` are ``(N, 1)`` float32 eta in [0, 1].
    """

    def predict(
        self, observation: dict[str, np.ndarray], state: Any = None, episode_start: Any = None, deterministic: bool = True
    ) -> tuple[np.ndarray, None]:
        raise NotImplementedError


class ConstantEta(SigmaPolicy):
    """Always the same eta (0 = deterministic DDIM, the paper's baseline; 1 = DDPM posterior sigma).

    Raises:
        ValueError: if ``eta`` is outside [0, 1].
    """

    def __init__(self, eta: float) -> None:
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        self.eta = float(eta)

    def predict(self, observation, state=None, episode_start=None, deterministic=True):  # noqa: D102
        n = observation["t"].shape[0]
        return np.full((n, 1), self.eta, dtype=np.float32), None


class RandomEta(SigmaPolicy):
    """eta ~ U(0, 1) independently per sample and step, from its own seeded generator."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def predict(self, observation, state=None, episode_start=None, deterministic=True):  # noqa: D102
        n = observation["t"].shape[0]
        return self.rng.uniform(0.0, 1.0, size=(n, 1)).astype(np.float32), None
