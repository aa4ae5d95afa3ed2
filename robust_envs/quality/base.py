"""The image-quality evaluator interface shared by every reward in robust_envs."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

__all__ = ["QualityEvaluator", "SCORE_RANGE"]

SCORE_RANGE = (1.0, 5.0)
"""Scores live on Q-Align's five-level scale: 1 = bad, 2 = poor, 3 = fair, 4 = good, 5 = excellent."""


class QualityEvaluator(ABC):
    """Images in, one quality score per image out (the E_theta_freeze of seed 000, sec. 4.4).

    Subclasses implement :meth:`score`; :meth:`__call__` validates the input and clamps the output.

    Shape:
        - images: ``(N, C, H, W)`` float in [0, 1], ``C`` in {1, 3}, on any device.
        - output: ``(N,)`` float32 in [1, 5], on the images' device.
    """

    name: str = "evaluator"

    @abstractmethod
    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Scores ``(N,)`` for validated images ``(N, C, H, W)`` in [0, 1]."""

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Validate, score and clamp to [1, 5].

        Raises:
            ValueError: if ``images`` is not a 4-D float tensor with 1 or 3 channels, holds NaN, or lies
                outside [0, 1] by more than 1e-4.
        """
        if not torch.is_tensor(images) or images.dim() != 4 or not images.is_floating_point():
            raise ValueError(
                f"images must be a float tensor (N, C, H, W) in [0, 1], got {type(images).__name__} "
                f"{tuple(images.shape) if torch.is_tensor(images) else ''}"
            )
        if images.shape[1] not in (1, 3):
            raise ValueError(f"images must have 1 or 3 channels, got shape {tuple(images.shape)}")
        if images.numel() and (torch.isnan(images).any() or images.min() < -1e-4 or images.max() > 1 + 1e-4):
            raise ValueError(
                f"images must lie in [0, 1], got min {images.min().item():.4g} max {images.max().item():.4g}"
            )
        if images.shape[0] == 0:
            return images.new_zeros(0)
        scores = self.score(images.clamp(0.0, 1.0))
        return scores.float().reshape(-1).clamp(*SCORE_RANGE).to(images.device)
