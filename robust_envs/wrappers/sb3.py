"""Stable-Baselines3 ``VecEnv`` adapter for natively batched Gymnasium ``VectorEnv``s.

SB3 expects a vectorised env that resets finished sub-envs inside ``step`` and reports the last
observation of the finished episode in ``info["terminal_observation"]``. Gymnasium >= 1.0 offers the same
contract as ``AutoresetMode.SAME_STEP`` (the last observation goes to ``infos["final_obs"]``, the last
info to ``infos["final_info"]``). :class:`SB3VecEnvAdapter` translates one into the other; episode
return/length statistics come from SB3's own :class:`~stable_baselines3.common.vec_env.VecMonitor`
(see :func:`make_sb3_vec_env`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env import VecEnv, VecMonitor
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

__all__ = ["SB3VecEnvAdapter", "make_sb3_vec_env", "unbatch_info"]


def unbatch_info(infos: dict[str, Any], index: int) -> dict[str, Any]:
    """Extract sub-env ``index``'s info from a Gymnasium vector info dict (arrays with ``_key`` masks).

    Nested dicts are unbatched recursively; keys whose mask is False for ``index`` are dropped.
    """
    out: dict[str, Any] = {}
    for key, value in infos.items():
        if key.startswith("_"):
            continue
        mask = infos.get("_" + key)
        if mask is not None and not bool(mask[index]):
            continue
        if isinstance(value, dict):
            out[key] = unbatch_info(value, index)
        else:
            item = value[index]
            out[key] = item.item() if isinstance(item, np.generic) else item
    return out


class SB3VecEnvAdapter(VecEnv):
    """Present a Gymnasium ``VectorEnv`` in ``AutoresetMode.SAME_STEP`` as an SB3 ``VecEnv``.

    Per sub-env info: the step's info; on the step that ends an episode, the final info plus
    ``"terminal_observation"`` (the episode's last observation) and ``"TimeLimit.truncated"``
    (``truncated and not terminated``), as SB3's ``DummyVecEnv`` reports them.

    Args:
        venv: a vector env whose ``metadata["autoreset_mode"]`` is ``AutoresetMode.SAME_STEP``.

    Raises:
        ValueError: if ``venv`` uses another autoreset mode (its last observation would be lost).
    """

    def __init__(self, venv: gym.vector.VectorEnv) -> None:
        mode = venv.metadata.get("autoreset_mode")
        if mode != AutoresetMode.SAME_STEP:
            raise ValueError(
                f"SB3VecEnvAdapter needs a VectorEnv with autoreset_mode=AutoresetMode.SAME_STEP, got {mode!r}; "
                "pass autoreset_mode=AutoresetMode.SAME_STEP when making it (gym.make_vec(..., "
                "autoreset_mode=...) for robust_envs envs, vector_kwargs={'autoreset_mode': ...} for sync/async)"
            )
        self.venv = venv
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self.render_mode = getattr(venv, "render_mode", None)
        self._actions: np.ndarray | None = None

    def reset(self) -> VecEnvObs:
        seed = self._seeds[0] if self._seeds and self._seeds[0] is not None else None
        options = self._options[0] if self._options and self._options[0] else None
        obs, infos = self.venv.reset(seed=seed, options=options)
        self.reset_infos = [unbatch_info(infos, i) for i in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        assert self._actions is not None, "step_async must be called before step_wait"
        obs, rewards, terminated, truncated, infos = self.venv.step(self._actions)
        dones = np.logical_or(terminated, truncated)
        final_obs = infos.get("final_obs")
        final_info = infos.get("final_info", {})
        step_infos: list[dict[str, Any]] = []
        for i in range(self.num_envs):
            if dones[i]:
                info = unbatch_info(final_info, i) if final_info else {}
                info["terminal_observation"] = final_obs[i] if final_obs is not None else None
                info["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            else:
                info = {k: v for k, v in unbatch_info(infos, i).items() if k not in ("final_obs", "final_info")}
            step_infos.append(info)
        return obs, np.asarray(rewards, dtype=np.float32), dones, step_infos

    def close(self) -> None:
        self.venv.close()

    def render(self, mode: str | None = None) -> np.ndarray | None:  # type: ignore[override]
        return self.venv.render()  # type: ignore[return-value]

    def get_images(self) -> Sequence[np.ndarray | None]:
        frame = self.venv.render()
        return [frame] if frame is not None else [None]  # type: ignore[list-item]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self.venv, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]


def make_sb3_vec_env(env_id: str, num_envs: int, monitor: bool = True, **env_kwargs: Any) -> VecEnv:
    """``gym.make_vec(env_id, num_envs, autoreset_mode=SAME_STEP, **env_kwargs)`` as an SB3 ``VecEnv``.

    The env must have a ``vector_entry_point`` (every robust_envs env has one). With ``monitor=True`` the
    result is wrapped in SB3's ``VecMonitor`` so ``info["episode"]`` carries return ``r``, length ``l``
    and time ``t`` on episode ends, and SB3 logs ``rollout/ep_rew_mean``.
    """
    venv = gym.make_vec(
        env_id,
        num_envs=num_envs,
        vectorization_mode="vector_entry_point",
        autoreset_mode=AutoresetMode.SAME_STEP,
        **env_kwargs,
    )
    adapter = SB3VecEnvAdapter(venv)
    return VecMonitor(adapter) if monitor else adapter
