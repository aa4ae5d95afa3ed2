from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from agents.beta_policy import BetaDistribution


def test_beta_distribution_matches_scipy_on_the_box() -> None:
    """log_prob, entropy and mode of Beta(alpha, beta) mapped onto [low, high], against scipy.stats.beta."""
    h = torch.tensor([[0.3, -1.2], [2.0, 0.5]])
    alpha, beta = 1 + np.log1p(np.exp(h[:, 0].numpy())), 1 + np.log1p(np.exp(h[:, 1].numpy()))
    dist = BetaDistribution(1, low=-1.0, high=3.0).proba_distribution(h)
    actions = torch.tensor([[0.2], [2.5]])
    ref = stats.beta(alpha, beta, loc=-1.0, scale=4.0)
    np.testing.assert_allclose(dist.log_prob(actions).numpy(), ref.logpdf(actions[:, 0].numpy()), rtol=1e-5)
    np.testing.assert_allclose(dist.entropy().numpy(), ref.entropy(), rtol=1e-5)
    mode = -1.0 + 4.0 * (alpha - 1) / (alpha + beta - 2)
    np.testing.assert_allclose(dist.mode()[:, 0].numpy(), mode, rtol=1e-5)
    draws = dist.sample()
    assert draws.shape == (2, 1) and bool(((draws > -1) & (draws < 3)).all())


def test_beta_log_prob_is_finite_on_the_box_edges_and_mode_reaches_the_edge() -> None:
    dist = BetaDistribution(1).proba_distribution(torch.tensor([[8.0, -20.0]]))  # alpha ~ 9, beta ~ 1
    assert torch.isfinite(dist.log_prob(torch.tensor([[1.0]]))).all()
    assert torch.isfinite(dist.log_prob(torch.tensor([[-1.0]]))).all()
    assert dist.mode().item() > 0.999
    flat = BetaDistribution(1).proba_distribution(torch.tensor([[-40.0, -40.0]]))  # alpha = beta = 1
    assert flat.mode().item() == pytest.approx(0.0)


def test_beta_distribution_rejects_bad_boxes() -> None:
    with pytest.raises(ValueError, match="low < high"):
        BetaDistribution(1, low=1.0, high=1.0)
    with pytest.raises(ValueError, match="finite box"):
        BetaDistribution(1, low=-np.inf, high=1.0)
    with pytest.raises(ValueError, match="action_dim must be >= 1"):
        BetaDistribution(0)
    with pytest.raises(RuntimeError, match="proba_distribution"):
        BetaDistribution(1).mode()


def test_ppo_with_the_beta_policy_learns_to_push_to_the_edge() -> None:
    """A one-step bandit with reward = action on [-1, 1]: PPO's Beta policy moves its mode toward +1, with no
    action ever outside the box; the saved model reloads with the same deterministic action.
    """
    import gymnasium as gym
    from stable_baselines3 import PPO

    from agents.beta_policy import BetaMultiInputPolicy

    class Edge(gym.Env):
        observation_space = gym.spaces.Dict({"t": gym.spaces.Box(0.0, 1.0, (1,), np.float32)})
        action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return {"t": np.ones(1, np.float32)}, {}

        def step(self, action):
            assert -1.0 <= float(action[0]) <= 1.0
            return {"t": np.ones(1, np.float32)}, float(action[0]), True, False, {}

    model = PPO(BetaMultiInputPolicy, Edge(), n_steps=64, batch_size=64, learning_rate=3e-3, seed=0, verbose=0)
    obs = {"t": np.ones((1, 1), np.float32)}
    before = float(model.predict(obs, deterministic=True)[0][0, 0])
    model.learn(1024)
    after = float(model.predict(obs, deterministic=True)[0][0, 0])
    assert abs(before) < 0.05 and after > 0.9
    assert not hasattr(model.policy, "log_std")
