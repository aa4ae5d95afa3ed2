"""robust-envs: Gymnasium environments for adversarial robustness research on PyTorch models.

Every environment of the suite is registered below, in one visible list, with string entry points so
that heavy models load only when an env is made::

    import gymnasium as gym
    import robust_envs  # noqa: F401  (registers the ids)

    env = gym.make("DDIMSigma-v0")
    clf = gym.make("ClassifierReward-v0")            # classify Fashion-MNIST images, Eq. 3 reward
    venv = gym.make_vec("DDIMSigma-v0", num_envs=64)   # natively batched
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

__version__ = "0.1.0"

__all__ = ["ENV_IDS", "__version__"]

ENV_IDS = ("DDIMSigma-v0", "ClassifierReward-v0")

# ---- the registry (one call per env id) -------------------------------------------------------------
if "DDIMSigma-v0" not in registry:
    register(
        id="DDIMSigma-v0",
        entry_point="robust_envs.envs.ddim_sigma:DDIMSigmaEnv",
        vector_entry_point="robust_envs.envs.ddim_sigma:DDIMSigmaVectorEnv",
        # an episode has exactly t_c steps (t_c <= T = 1000); the limit is a safety net that never binds
        max_episode_steps=1000,
    )

if "ClassifierReward-v0" not in registry:
    register(
        id="ClassifierReward-v0",
        entry_point="robust_envs.envs.classifier_reward:ClassifierRewardEnv",
        vector_entry_point="robust_envs.envs.classifier_reward:ClassifierRewardVectorEnv",
        # an episode is `episode_length` images (128 by default) and ends with terminated=True; the limit is a
        # safety net that never binds for episode_length <= 100,000
        max_episode_steps=100_000,
    )
