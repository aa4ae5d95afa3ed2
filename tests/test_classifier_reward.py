"""ClassifierReward-v0: conformance, batched-vs-single equivalence, seeding, label hygiene, bad inputs, SB3."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.spaces import Box
from gymnasium.utils.env_checker import check_env as gym_check_env
from gymnasium.vector import AutoresetMode
from stable_baselines3 import PPO
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import robust_envs
from agents.features import SmallImageCNN
from robust_envs.data import load_dataset
from robust_envs.envs.classifier_reward import ClassifierRewardEnv, ClassifierRewardVectorEnv
from robust_envs.wrappers import make_sb3_vec_env

DIGITS = load_dataset("digits", "train")
KW = {"dataset": "digits", "episode_length": 5}


def true_label(obs: np.ndarray) -> int:
    """Test oracle: the label of the data-set image equal to ``obs`` (digits has no duplicate images)."""
    matches = (DIGITS.images.numpy() == obs[None]).all(axis=(1, 2, 3)).nonzero()[0]
    assert len(matches) >= 1, "observation is not an image of the data set"
    labels = set(DIGITS.labels.numpy()[matches].tolist())
    assert len(labels) == 1
    return labels.pop()


def test_registered_with_string_entry_points() -> None:
    assert "ClassifierReward-v0" in robust_envs.ENV_IDS
    spec = gym.spec("ClassifierReward-v0")
    assert isinstance(spec.entry_point, str) and isinstance(spec.vector_entry_point, str)
    env = gym.make("ClassifierReward-v0", dataset="digits")
    assert isinstance(env.unwrapped, ClassifierRewardEnv)
    venv = gym.make_vec("ClassifierReward-v0", num_envs=2, dataset="digits")
    assert isinstance(venv, ClassifierRewardVectorEnv)
    assert venv.max_episode_steps == spec.max_episode_steps  # make_vec passes it to the vector entry point


pytestmark = pytest.mark.usefixtures("one_thread")


def test_gymnasium_check_env() -> None:
    gym_check_env(ClassifierRewardEnv(**KW), skip_render_check=True)
    # through gym.make so the checker can also try the other render modes of the spec
    gym_check_env(gym.make("ClassifierReward-v0", **KW, render_mode="rgb_array").unwrapped, skip_render_check=False)


def test_sb3_check_env() -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*36x36.*")  # SB3's note about its default CNN
        sb3_check_env(ClassifierRewardEnv(**KW), warn=True)


def test_spaces_and_reward_of_eq3() -> None:
    env = ClassifierRewardEnv(dataset="digits", episode_length=6, r_correct=2.0, r_wrong=0.5)
    assert env.observation_space == Box(0, 255, (1, 8, 8), np.uint8)
    assert env.action_space.n == 10
    obs, info = env.reset(seed=3)
    for t in range(6):
        y = true_label(obs)
        action = y if t % 2 == 0 else (y + 1) % 10
        obs, reward, terminated, truncated, info = env.step(action)
        assert reward == (2.0 if t % 2 == 0 else -0.5)
        assert info == {"label": y, "correct": t % 2 == 0}
        assert terminated == (t == 5) and truncated is False
    assert not obs.any()  # the observation after the last image is blank
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


def test_no_label_leak_in_observation() -> None:
    env = ClassifierRewardEnv(dataset="digits", episode_length=20)
    obs, info = env.reset(seed=0)
    assert info == {}
    seen_labels = set()
    for _ in range(20):
        # the observation is exactly one data-set image: no extra channel, pixel or info carries its label
        assert obs.shape == DIGITS.images.shape[1:] and obs.dtype == np.uint8
        seen_labels.add(true_label(obs))
        obs, _, terminated, _, info = env.step(0)
        assert set(info) == {"label", "correct"}  # revealed only after the image was classified
    assert len(seen_labels) > 3


def _single_rollout(seed: int, actions: np.ndarray, episode_length: int, episodes: int) -> list[tuple]:
    env = ClassifierRewardEnv(dataset="digits", episode_length=episode_length)
    out = []
    obs, _ = env.reset(seed=seed)
    out.append(("reset", obs))
    for ep in range(episodes):
        for t in range(episode_length):
            obs, reward, terminated, truncated, _ = env.step(int(actions[ep * episode_length + t]))
            out.append((obs, reward, terminated, truncated))
        obs, _ = env.reset()
        out.append(("reset", obs))
    return out


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_batched_env_matches_single_envs_step_by_step(mode: AutoresetMode) -> None:
    n, length, episodes, seed = 3, 4, 2, 11
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 10, size=(n, length * episodes))
    singles = [_single_rollout(seed + i, actions[i], length, episodes) for i in range(n)]
    venv = ClassifierRewardVectorEnv(num_envs=n, dataset="digits", episode_length=length, autoreset_mode=mode)
    obs, _ = venv.reset(seed=seed)
    for i in range(n):
        np.testing.assert_array_equal(obs[i], singles[i][0][1])
    k = 1
    for ep in range(episodes):
        for t in range(length):
            obs, rewards, terminated, truncated, infos = venv.step(actions[:, ep * length + t])
            last = t == length - 1
            for i in range(n):
                s_obs, s_reward, s_term, s_trunc = singles[i][k]
                assert rewards[i] == s_reward and terminated[i] == s_term and truncated[i] == s_trunc
                if last and mode == AutoresetMode.SAME_STEP:
                    np.testing.assert_array_equal(infos["final_obs"][i], s_obs)
                    np.testing.assert_array_equal(obs[i], singles[i][k + 1][1])  # already reset
                else:
                    np.testing.assert_array_equal(obs[i], s_obs)
            k += 1
        if mode == AutoresetMode.NEXT_STEP:
            obs, rewards, terminated, _, _ = venv.step(np.zeros(n, dtype=np.int64))  # the autoreset step
            assert not rewards.any() and not terminated.any()
            for i in range(n):
                np.testing.assert_array_equal(obs[i], singles[i][k][1])
        k += 1


def test_vector_truncation_matches_time_limit() -> None:
    single = gym.make("ClassifierReward-v0", dataset="digits", episode_length=5, max_episode_steps=3)
    venv = gym.make_vec("ClassifierReward-v0", num_envs=2, dataset="digits", episode_length=5, max_episode_steps=3)
    single.reset(seed=4)
    venv.reset(seed=4)
    for t in range(3):
        _, _, s_term, s_trunc, _ = single.step(0)
        _, _, v_term, v_trunc, _ = venv.step(np.zeros(2, dtype=np.int64))
        assert (s_term, s_trunc) == (False, t == 2)
        assert v_term.tolist() == [False, False] and v_trunc.tolist() == [t == 2] * 2


def test_seed_determinism() -> None:
    def rollout(seed: int | None) -> np.ndarray:
        venv = ClassifierRewardVectorEnv(num_envs=4, dataset="digits", episode_length=3)
        frames = [venv.reset(seed=seed)[0]]
        for _ in range(7):  # crosses two episode ends: unseeded resets continue each sub-env's generator
            frames.append(venv.step(np.ones(4, dtype=np.int64))[0])
        return np.stack(frames)

    np.testing.assert_array_equal(rollout(5), rollout(5))
    assert not np.array_equal(rollout(5), rollout(6))
    env_a, env_b = ClassifierRewardEnv(**KW), ClassifierRewardEnv(**KW)
    np.testing.assert_array_equal(env_a.reset(seed=9)[0], env_b.reset(seed=9)[0])


def test_vector_env_accepts_torch_actions_and_set_rewards() -> None:
    venv = ClassifierRewardVectorEnv(num_envs=3, dataset="digits", episode_length=4)
    venv.reset(seed=0)
    _, rewards, _, _, infos = venv.step(torch.tensor([0, 1, 2]))
    assert set(rewards.tolist()) <= {1.0, -1.0}
    venv.set_rewards(1.0, 0.25)
    assert venv.r_wrong == 0.25
    _, rewards, _, _, infos = venv.step(torch.tensor([0, 1, 2]))
    np.testing.assert_array_equal(rewards, np.where(infos["correct"], 1.0, -0.25))


@pytest.mark.parametrize(
    ("action", "error", "match"),
    [
        (10, ValueError, r"\[0, 10\), got 10"),
        (-1, ValueError, r"got -1"),
        (1.5, TypeError, "float64"),
        (True, TypeError, "bool"),
        (np.array([1, 2]), ValueError, r"shape \(2,\)"),
        ("3", TypeError, "integer class label"),
    ],
)
def test_bad_actions_single(action: object, error: type[Exception], match: str) -> None:
    env = ClassifierRewardEnv(**KW)
    env.reset(seed=0)
    with pytest.raises(error, match=match):
        env.step(action)


@pytest.mark.parametrize(
    ("actions", "error", "match"),
    [
        (np.array([0, 1]), ValueError, r"shape \(3,\)"),
        (np.array([0, 1, 10]), ValueError, r"values in \[0, 10\]"),
        (np.array([0.0, 1.0, 2.0]), TypeError, "float64"),
        (torch.tensor([0.0, 1.0, 2.0]), TypeError, "float32"),
        (np.zeros((3, 1), dtype=np.int64), ValueError, r"got \(3, 1\)"),
    ],
)
def test_bad_actions_vector(actions: object, error: type[Exception], match: str) -> None:
    venv = ClassifierRewardVectorEnv(num_envs=3, dataset="digits", episode_length=4)
    venv.reset(seed=0)
    with pytest.raises(error, match=match):
        venv.step(actions)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dataset": "mnist"}, "dataset must be one of"),
        ({"split": "val"}, "split must be one of"),
        ({"r_wrong": -1.0}, r"r_wrong must be a finite real number >= 0.*-1.0"),
        ({"r_correct": float("nan")}, "r_correct.*nan"),
        ({"episode_length": 0}, "episode_length must be an integer >= 1, got 0"),
        ({"device": "nope"}, "device must name a torch device.*'nope'"),
        ({"render_mode": "human"}, "render_mode.*'human'"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ClassifierRewardEnv(**{"dataset": "digits", **kwargs})


def test_bad_vector_arguments() -> None:
    with pytest.raises(ValueError, match="num_envs must be an integer >= 1, got 0"):
        ClassifierRewardVectorEnv(num_envs=0, dataset="digits")
    with pytest.raises(ValueError, match="max_episode_steps must be None or an integer >= 1, got 0"):
        ClassifierRewardVectorEnv(num_envs=2, dataset="digits", max_episode_steps=0)
    with pytest.raises(ValueError, match="autoreset_mode"):
        ClassifierRewardVectorEnv(num_envs=2, dataset="digits", autoreset_mode="Sometimes")


def test_render_rgb_array() -> None:
    env = ClassifierRewardEnv(**KW, render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (8, 8, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame[..., 0], obs[0])


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 5, 5)])
def test_features_extractor_shapes(shape: tuple[int, int, int]) -> None:
    space = Box(0, 255, shape, np.uint8)
    extractor = SmallImageCNN(space, features_dim=16)
    out = extractor(torch.rand(2, *shape))
    assert out.shape == (2, 16)
    with pytest.raises(ValueError, match="channels-first"):
        SmallImageCNN(Box(0, 255, (8, 8), np.uint8))


def test_sb3_ppo_smoke_through_batched_env() -> None:
    venv = make_sb3_vec_env("ClassifierReward-v0", num_envs=4, dataset="digits", episode_length=8)
    model = PPO("CnnPolicy", venv, n_steps=32, batch_size=64, n_epochs=1, gamma=0.0, seed=0, device="cpu",
                policy_kwargs={"features_extractor_class": SmallImageCNN, "features_extractor_kwargs": {"features_dim": 32}})  # fmt: skip
    model.learn(total_timesteps=256)
    assert model.num_timesteps == 256
    assert len(model.ep_info_buffer) == 256 // 8  # VecMonitor saw every 8-step episode of the 4 sub-envs
    assert all(info["l"] == 8 for info in model.ep_info_buffer)
    actions, _ = model.predict(DIGITS.images[:5].numpy(), deterministic=True)
    assert actions.shape == (5,) and ((0 <= actions) & (actions < 10)).all()
    venv.close()
