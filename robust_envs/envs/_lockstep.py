"""Base class for natively batched vector envs whose N episodes run in lockstep.

Both robust_envs envs have episodes of a fixed length, so every sub-env ends on the same step. The base
class owns the Gymnasium autoreset contract (``NEXT_STEP``, Gymnasium's default, and ``SAME_STEP``, which
:class:`robust_envs.wrappers.SB3VecEnvAdapter` needs); a subclass implements two batched hooks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv

__all__ = ["LockstepVectorEnv"]


class LockstepVectorEnv(VectorEnv):
    """A ``VectorEnv`` whose sub-envs all start and end their episodes together.

    Subclasses set ``num_envs``, the spaces, and implement :meth:`_reset_batch` and :meth:`_step_batch`.
    ``autoreset_mode`` is ``AutoresetMode.NEXT_STEP`` (default: the step after an episode end resets all
    sub-envs, ignores the actions and returns reward 0) or ``AutoresetMode.SAME_STEP`` (the ending step
    resets at once; the last observation and info go to ``infos["final_obs"]`` / ``infos["final_info"]``).
    """

    def __init__(self, autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP) -> None:
        try:
            mode = AutoresetMode(autoreset_mode)
        except ValueError as err:
            raise ValueError(
                f"autoreset_mode must be one of {[m.value for m in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP)]}, "
                f"got {autoreset_mode!r}"
            ) from err
        if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            raise ValueError(f"autoreset_mode {mode.value!r} is not supported; use 'NextStep' or 'SameStep'")
        self.autoreset_mode = mode
        self.metadata = {**getattr(self, "metadata", {}), "autoreset_mode": mode}
        self._pending_reset = False

    # hooks -------------------------------------------------------------------------------------------
    def _reset_batch(self, seed: int | None, options: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
        """Start N new episodes; sub-env i is seeded with ``seed + i`` when ``seed`` is given."""
        raise NotImplementedError

    def _step_batch(self, actions: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Advance all N episodes by one step; returns obs, rewards, terminations, truncations, infos."""
        raise NotImplementedError

    def _unbatch_obs(self, obs: Any, index: int) -> Any:
        if isinstance(obs, dict):
            return {k: v[index] for k, v in obs.items()}
        return obs[index]

    # VectorEnv API ---------------------------------------------------------------------------------
    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        if isinstance(seed, (list, tuple)):
            seeds = list(seed)
            base = seeds[0]
            if len(seeds) != self.num_envs or any(
                s is not None and (base is None or s != base + i) for i, s in enumerate(seeds)
            ):
                raise ValueError(
                    f"a list seed must be [s, s+1, ..., s+{self.num_envs - 1}] (sub-env i is seeded s+i), got {seeds}"
                )
            seed = seeds[0]
        self._pending_reset = False
        return self._reset_batch(seed, options)

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._pending_reset:
            self._pending_reset = False
            obs, infos = self._reset_batch(None, None)
            zeros = np.zeros(self.num_envs, dtype=bool)
            return obs, np.zeros(self.num_envs, dtype=np.float64), zeros, zeros.copy(), infos
        obs, rewards, terminated, truncated, infos = self._step_batch(actions)
        done = np.logical_or(terminated, truncated)
        assert done.all() or not done.any(), "lockstep envs end all episodes together"
        if done.any():
            if self.autoreset_mode == AutoresetMode.SAME_STEP:
                final_obs = np.empty(self.num_envs, dtype=object)
                for i in range(self.num_envs):
                    final_obs[i] = self._unbatch_obs(obs, i)
                obs, reset_infos = self._reset_batch(None, None)
                everyone = np.ones(self.num_envs, dtype=bool)
                infos = {**reset_infos, "final_obs": final_obs, "_final_obs": everyone, "final_info": infos,
                         "_final_info": everyone.copy()}  # fmt: skip
            else:
                self._pending_reset = True
        return obs, rewards, terminated, truncated, infos
