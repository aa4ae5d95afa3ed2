from __future__ import annotations

import numpy as np
import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecMonitor

from robust_envs.envs.ddim_sigma import DDIMSigmaVectorEnv
from robust_envs.wrappers import SB3VecEnvAdapter, make_sb3_vec_env


@pytest.fixture()
def kwargs(tiny_unet_dir, contrast_evaluator) -> dict:
    return {"model": str(tiny_unet_dir), "evaluator": contrast_evaluator, "t_c": 3, "stride": 400, "device": "cpu"}


def test_adapter_reports_terminal_observation_and_episode_stats(kwargs) -> None:
    venv = make_sb3_vec_env("DDIMSigma-v0", num_envs=2, **kwargs)
    assert isinstance(venv, VecMonitor)
    venv.seed(3)
    obs = venv.reset()
    assert obs["x_t"].shape == (2, 1, 8, 8) and (obs["t"] == 3).all()
    total = np.zeros(2)
    for _ in range(3):
        obs, rewards, dones, infos = venv.step(np.full((2, 1), 0.7, dtype=np.float32))
        total += rewards
    assert dones.all() and (obs["t"] == 3).all()  # reset in the same step, as SB3 expects
    for i, info in enumerate(infos):
        assert info["terminal_observation"]["t"].tolist() == [0.0]
        assert info["TimeLimit.truncated"] is False
        assert info["episode"]["l"] == 3 and info["episode"]["r"] == pytest.approx(total[i], abs=1e-5)
        assert "q0_agent" in info


def test_adapter_rejects_next_step_autoreset(kwargs) -> None:
    with pytest.raises(ValueError, match="AutoresetMode.SAME_STEP"):
        SB3VecEnvAdapter(DDIMSigmaVectorEnv(num_envs=2, **kwargs))


def test_ppo_smoke_run(kwargs, tmp_path) -> None:
    """PPO('MultiInputPolicy') trains on the batched env directly and its policy acts within bounds."""
    venv = make_sb3_vec_env("DDIMSigma-v0", num_envs=4, **kwargs)
    model = PPO("MultiInputPolicy", venv, n_steps=24, batch_size=32, n_epochs=2, gamma=0.995, clip_range=0.2, seed=0)
    model.learn(total_timesteps=288)
    assert model.num_timesteps >= 288
    assert len(model.ep_info_buffer) > 0
    model.save(tmp_path / "ppo")
    loaded = PPO.load(tmp_path / "ppo")
    action, _ = loaded.predict(venv.reset(), deterministic=True)
    assert action.shape == (4, 1) and (action >= 0).all() and (action <= 1).all()
