"""Torch tensors on the model's device at the API boundary of a natively batched robust_envs env.

Gymnasium's array-conversion vector wrappers (``gymnasium.wrappers.vector.ArrayConversion`` and its
``NumpyToTorch``) take a numpy env and convert its outputs to another array library after every step. The
robust_envs envs compute in torch on their model's device and convert to numpy only at their API boundary,
so converting numpy back to torch would copy every observation to the host and back. :class:`TorchVectorEnv`
keeps the wrapper's shape and place in a stack but asks the env for its tensors directly: no host copy, no
numpy conversion either way.
"""

from __future__ import annotations

from typing import Any

import torch
from gymnasium.vector import VectorEnv, VectorWrapper

from robust_envs.envs._lockstep import LockstepVectorEnv

__all__ = ["TorchVectorEnv"]


class TorchVectorEnv(VectorWrapper):
    """Present a robust_envs batched env (``DDIMSigma-v0``, ``ClassifierReward-v0``) through torch tensors.

    ``reset`` and ``step`` return what the numpy API returns, as torch tensors on :attr:`device` (the env's
    model / data device): observations (a dict of tensors for ``DDIMSigma-v0``), rewards ``(N,)`` float32,
    ``terminated`` / ``truncated`` ``(N,)`` bool, and infos whose arrays (``_key`` masks included) are tensors.
    ``step`` takes actions as a tensor on :attr:`device` (a numpy array is accepted too); a bad action raises
    the env's own error, which names the bad value and the valid range (and the device, for a tensor elsewhere).
    With ``SAME_STEP`` autoreset ``infos["final_obs"]`` is the batched last observation (all sub-envs end on the
    same step). Same seed and actions give the numpy API's values (float32 rewards instead of float64).

    The spaces stay the env's numpy ``Box`` / ``Dict`` spaces (as with Gymnasium's ``NumpyToTorch``); they
    describe shapes, dtypes and ranges.

    Example::

        venv = TorchVectorEnv(gym.make_vec("DDIMSigma-v0", num_envs=64, vectorization_mode="vector_entry_point"))
        obs, info = venv.reset(seed=0)                 # obs["x_t"]: (64, 1, 28, 28) float32 on venv.device
        obs, reward, terminated, truncated, info = venv.step(torch.full((64, 1), 0.5, device=venv.device))

    Args:
        env: the env itself, as made (``gym.make_vec(..., vectorization_mode="vector_entry_point")`` or the
            class): a wrapper in between would be bypassed, so it is refused.

    Raises:
        TypeError: if ``env`` is not a robust_envs batched env (use ``gymnasium.wrappers.vector.NumpyToTorch``
            for other numpy envs: it converts, with the host copies that implies).
    """

    def __init__(self, env: VectorEnv) -> None:
        if not isinstance(env, LockstepVectorEnv):
            raise TypeError(
                "TorchVectorEnv needs a robust_envs batched env itself (DDIMSigmaVectorEnv or ClassifierRewardVectorEnv, "
                f"not wrapped), got {type(env).__name__}; for other numpy envs use "
                "gymnasium.wrappers.vector.NumpyToTorch, which converts after each step"
            )
        super().__init__(env)
        self._lockstep = env

    @property
    def device(self) -> torch.device:
        """The device of every tensor returned, and where actions must be."""
        return self._lockstep.device

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """The env's reset, observation and infos as tensors on :attr:`device`."""
        return self._lockstep.reset_torch(seed=seed, options=options)

    def step(self, actions: Any) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """The env's step with tensors in and out (see the class docstring for dtypes)."""
        return self._lockstep.step_torch(actions)
