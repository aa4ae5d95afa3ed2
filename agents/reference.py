"""Fixed-schedule reference agents for DDIMSigma-v0, with SB3's ``predict`` interface.

They are the comparison points of the evaluation: seed 000 sec. 5.1.4 compares the learnt policy with the
fixed sigma = 0 schedule (action 0); a learnt schedule earns its place only by matching or beating every
constant action of a grid (``docs/sigma_benchmark.md``), and a uniformly random action brackets what an
uninformed schedule does. The action ``a`` in [0, 1] means what the env's ``action`` argument says
(``"sigma_frac"``: ``sigma = a * sqrt(1 - alpha_bar[t-1])``; ``"eta"``: DDIM's eta).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ConstantAction", "RandomAction", "SigmaPolicy", "TimeSchedule"]


class SigmaPolicy:
    """Anything with SB3's ``predict(observation, state, episode_start, deterministic) -> (actions, state)``.

    ``observation`` is the batched Dict observation of :class:`~robust_envs.envs.ddim_sigma.DDIMSigmaVectorEnv`
    (``x_t`` ``(N, C, H, W)``, ``t`` ``(N, 1)``); ``actions`` are ``(N, 1)`` float32 in [0, 1].
    """

    def predict(
        self, observation: dict[str, np.ndarray], state: Any = None, episode_start: Any = None, deterministic: bool = True
    ) -> tuple[np.ndarray, None]:
        raise NotImplementedError


class ConstantAction(SigmaPolicy):
    """Always the same action ``a`` (0 = deterministic DDIM, the paper's baseline).

    Raises:
        ValueError: if ``a`` is outside [0, 1].
    """

    def __init__(self, a: float) -> None:
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"a must be in [0, 1], got {a}")
        self.a = float(a)

    def predict(self, observation, state=None, episode_start=None, deterministic=True):  # noqa: D102
        n = observation["t"].shape[0]
        return np.full((n, 1), self.a, dtype=np.float32), None


class RandomAction(SigmaPolicy):
    """a ~ U(0, 1) independently per sample and step, from its own seeded generator."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def predict(self, observation, state=None, episode_start=None, deterministic=True):  # noqa: D102
        n = observation["t"].shape[0]
        return self.rng.uniform(0.0, 1.0, size=(n, 1)).astype(np.float32), None


class TimeSchedule(SigmaPolicy):
    """An action per step, a function of ``t`` only: ``actions[t_c - t]`` at step ``t`` (t = t_c, ..., 1).

    Args:
        actions: ``t_c`` values in [0, 1], the first for t = t_c, the last for t = 1.

    Raises:
        ValueError: if ``actions`` is empty or a value is outside [0, 1]; at ``predict``, a ``t`` outside
            [1, len(actions)].
    """

    def __init__(self, actions: Any) -> None:
        a = np.asarray(actions, dtype=np.float32).reshape(-1)
        if a.size == 0 or not np.all((a >= 0.0) & (a <= 1.0)):
            raise ValueError(f"actions must be a non-empty sequence of values in [0, 1], got {actions!r}")
        self.actions = a

    def predict(self, observation, state=None, episode_start=None, deterministic=True):  # noqa: D102
        t = np.asarray(observation["t"]).reshape(-1).round().astype(int)
        t_c = len(self.actions)
        if t.min() < 1 or t.max() > t_c:
            raise ValueError(f"t must be in [1, {t_c}] for a schedule of {t_c} steps, got {t.tolist()}")
        return self.actions[t_c - t].reshape(-1, 1).copy(), None
