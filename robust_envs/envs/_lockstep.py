"""Base class for natively batched vector envs whose N episodes run in lockstep.

Both robust_envs envs have episodes of a fixed length, so every sub-env ends on the same step. The base
class owns the Gymnasium autoreset contract (``NEXT_STEP``, Gymnasium's default, and ``SAME_STEP``, which
:class:`robust_envs.wrappers.SB3VecEnvAdapter` needs); a subclass implements two batched hooks that compute
in torch on :attr:`LockstepVectorEnv.device`.

Two API boundaries serve the same step:

- :meth:`~LockstepVectorEnv.reset` / :meth:`~LockstepVectorEnv.step` (Gymnasium's, numpy): the hooks' tensors
  are copied to the host once, at the end;
- :meth:`~LockstepVectorEnv.reset_torch` / :meth:`~LockstepVectorEnv.step_torch`: the hooks' tensors as they
  are, on the device, with no host copy (what :class:`robust_envs.wrappers.TorchVectorEnv` exposes).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv

__all__ = ["LockstepVectorEnv", "same_device", "to_numpy"]


def to_numpy(tree: Any) -> Any:
    """Tensors -> numpy arrays (one host copy each), recursively through dicts; anything else as it is."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu().numpy()
    if isinstance(tree, dict):
        return {k: to_numpy(v) for k, v in tree.items()}
    return tree


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices name the same memory (``cuda`` and ``cuda:<current>`` are the same)."""
    if a.type != b.type:
        return False
    if a.type != "cuda" or (a.index is not None and b.index is not None):
        return a.index == b.index
    current = torch.cuda.current_device()
    return (current if a.index is None else a.index) == (current if b.index is None else b.index)


class _Transition(NamedTuple):
    """One batched step after the autoreset logic, tensors on the device (rewards in the env's own dtype)."""

    obs: Any
    rewards: torch.Tensor
    terminated: bool
    truncated: bool
    infos: dict[str, Any]
    final_obs: Any | None
    final_info: dict[str, Any] | None


class LockstepVectorEnv(VectorEnv):
    """A ``VectorEnv`` whose sub-envs all start and end their episodes together.

    Subclasses set ``num_envs``, the spaces and :attr:`device`, and implement :meth:`_reset_batch` and
    :meth:`_step_batch`, both returning torch tensors on :attr:`device`. ``autoreset_mode`` is
    ``AutoresetMode.NEXT_STEP`` (default: the step after an episode end resets all sub-envs, ignores the
    actions and returns reward 0) or ``AutoresetMode.SAME_STEP`` (the ending step resets at once; the last
    observation and info go to ``infos["final_obs"]`` / ``infos["final_info"]``).
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
    @property
    def device(self) -> torch.device:
        """The torch device the hooks compute on and every tensor of :meth:`step_torch` lives on."""
        raise NotImplementedError

    def _reset_batch(self, seed: int | None, options: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
        """Start N new episodes (sub-env i seeded with ``seed + i`` when ``seed`` is given).

        Returns the observation and the infos, tensors on :attr:`device` (batch dimension first).
        """
        raise NotImplementedError

    def _step_batch(self, actions: Any) -> tuple[Any, torch.Tensor, bool, bool, dict[str, Any]]:
        """Advance all N episodes by one step.

        Returns the observation, the rewards ``(N,)`` (a tensor in the env's own dtype), whether all episodes
        terminated, whether all were truncated, and the infos; tensors on :attr:`device`.
        """
        raise NotImplementedError

    def _unbatch_obs(self, obs: Any, index: int) -> Any:
        if isinstance(obs, dict):
            return {k: v[index] for k, v in obs.items()}
        return obs[index]

    # the shared logic --------------------------------------------------------------------------------
    def _check_seed(self, seed: int | list[int | None] | None) -> int | None:
        if isinstance(seed, (list, tuple)):
            seeds = list(seed)
            base = seeds[0]
            if len(seeds) != self.num_envs or any(
                s is not None and (base is None or s != base + i) for i, s in enumerate(seeds)
            ):
                raise ValueError(
                    f"a list seed must be [s, s+1, ..., s+{self.num_envs - 1}] (sub-env i is seeded s+i), got {seeds}"
                )
            return seeds[0]
        return seed

    def _transition(self, actions: Any) -> _Transition:
        if self._pending_reset:
            self._pending_reset = False
            obs, infos = self._reset_batch(None, None)
            return _Transition(obs, torch.zeros(self.num_envs, device=self.device), False, False, infos, None, None)
        obs, rewards, terminated, truncated, infos = self._step_batch(actions)
        if not (terminated or truncated):
            return _Transition(obs, rewards, terminated, truncated, infos, None, None)
        if self.autoreset_mode == AutoresetMode.SAME_STEP:
            reset_obs, reset_infos = self._reset_batch(None, None)
            return _Transition(reset_obs, rewards, terminated, truncated, reset_infos, obs, infos)
        self._pending_reset = True
        return _Transition(obs, rewards, terminated, truncated, infos, None, None)

    # VectorEnv API (numpy) -----------------------------------------------------------------------------
    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        obs, infos = self.reset_torch(seed=seed, options=options)
        return to_numpy(obs), to_numpy(infos)

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Gymnasium's step: numpy observations and infos, rewards ``(N,)`` float64, flags ``(N,)`` bool."""
        tr = self._transition(actions)
        n = self.num_envs
        rewards = to_numpy(tr.rewards).astype(np.float64)
        terminated, truncated = np.full(n, tr.terminated), np.full(n, tr.truncated)
        infos = to_numpy(tr.infos)
        if tr.final_obs is not None:
            final = to_numpy(tr.final_obs)
            final_obs = np.empty(n, dtype=object)
            for i in range(n):
                final_obs[i] = self._unbatch_obs(final, i)
            everyone = np.ones(n, dtype=bool)
            infos = {**infos, "final_obs": final_obs, "_final_obs": everyone, "final_info": to_numpy(tr.final_info),
                     "_final_info": everyone.copy()}  # fmt: skip
        return to_numpy(tr.obs), rewards, terminated, truncated, infos

    # the same API in torch, on the device ----------------------------------------------------------------
    def reset_torch(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """:meth:`reset` with the observation and infos as torch tensors on :attr:`device` (no host copy)."""
        seed = self._check_seed(seed)
        self._pending_reset = False
        return self._reset_batch(seed, options)

    def step_torch(self, actions: Any) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """:meth:`step` with every output a torch tensor on :attr:`device`, and no host copy.

        Actions may be a tensor on :attr:`device` (or a numpy array). Returns the observation, rewards
        ``(N,)`` float32, terminated and truncated ``(N,)`` bool, and the infos (tensors, ``_key`` masks
        included). With ``SAME_STEP`` autoreset, ``infos["final_obs"]`` is the *batched* last observation
        (every sub-env ends on the same step), not numpy's object array of per-env observations.
        """
        tr = self._transition(actions)
        n, dev = self.num_envs, self.device
        terminated = torch.full((n,), tr.terminated, dtype=torch.bool, device=dev)
        truncated = torch.full((n,), tr.truncated, dtype=torch.bool, device=dev)
        infos = tr.infos
        if tr.final_obs is not None:
            everyone = torch.ones(n, dtype=torch.bool, device=dev)
            infos = {**infos, "final_obs": tr.final_obs, "_final_obs": everyone, "final_info": tr.final_info,
                     "_final_info": everyone.clone()}  # fmt: skip
        return tr.obs, tr.rewards.to(torch.float32), terminated, truncated, infos
