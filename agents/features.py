"""A small CNN features extractor for Stable-Baselines3 policies on small images (8x8 to 28x28 and up).

SB3's default ``NatureCNN`` (8x8 stride-4, 4x4 stride-2, 3x3 convolutions) needs images of at least
36 x 36; Fashion-MNIST is 28 x 28 and scikit-learn's digits 8 x 8. :class:`SmallImageCNN` uses 3x3
convolutions with padding and at most two 2x2 max-pools, so any image of at least 2 x 2 works.

Usage::

    from stable_baselines3 import PPO
    from agents.features import SmallImageCNN
    from robust_envs.wrappers import make_sb3_vec_env

    venv = make_sb3_vec_env("ClassifierReward-v0", num_envs=16)
    model = PPO("CnnPolicy", venv, policy_kwargs={"features_extractor_class": SmallImageCNN})
"""

from __future__ import annotations

import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

__all__ = ["SmallImageCNN"]


class SmallImageCNN(BaseFeaturesExtractor):
    """conv3x3(32) -> ReLU -> [pool] -> conv3x3(64) -> ReLU -> [pool] -> flatten -> linear(features_dim) -> ReLU.

    A 2x2 max-pool follows a convolution only while the feature map is at least 4 pixels on its shorter
    side (28 x 28 -> 14 x 14 -> 7 x 7; 8 x 8 -> 4 x 4 -> 2 x 2).

    Shape:
        - observations: ``(N, C, H, W)`` float. SB3's ``preprocess_obs`` has already divided uint8 images
          by 255, so values are in [0, 1].
        - output: ``(N, features_dim)`` float.

    Args:
        observation_space: a channels-first ``Box`` of shape ``(C, H, W)`` (uint8 [0, 255] images, or
            float images with ``normalize_images=False`` in the policy).
        features_dim: width of the output layer (>= 1).

    Raises:
        ValueError: if the space is not a 3-D ``Box``, its sides are below 2 pixels, or ``features_dim < 1``.
    """

    def __init__(self, observation_space: spaces.Box, features_dim: int = 128) -> None:
        if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 3:
            raise ValueError(f"SmallImageCNN needs a channels-first (C, H, W) Box space, got {observation_space}")
        channels, height, width = observation_space.shape
        if min(height, width) < 2:
            raise ValueError(f"SmallImageCNN needs images of at least 2 x 2 pixels, got {height} x {width}")
        if features_dim < 1:
            raise ValueError(f"features_dim must be >= 1, got {features_dim}")
        super().__init__(observation_space, features_dim)
        layers: list[nn.Module] = []
        side = min(height, width)
        for c_in, c_out in ((channels, 32), (32, 64)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]
            if side >= 4:
                layers.append(nn.MaxPool2d(2))
                side //= 2
        layers.append(nn.Flatten())
        self.cnn = nn.Sequential(*layers)
        with torch.no_grad():
            n_flatten = self.cnn(torch.zeros(1, channels, height, width)).shape[1]
        self.linear = nn.Sequential(nn.Linear(n_flatten, features_dim), nn.ReLU())

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        """Features ``(N, features_dim)`` of observations ``(N, C, H, W)`` in [0, 1]."""
        return self.linear(self.cnn(observations))
