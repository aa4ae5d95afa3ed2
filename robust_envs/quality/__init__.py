"""Image-quality evaluators: images ``(N, C, H, W)`` float in [0, 1] -> scores ``(N,)`` in [1, 5]."""

from __future__ import annotations

import torch

from robust_envs.quality.base import SCORE_RANGE, QualityEvaluator
from robust_envs.quality.levels import EMBEDDED_LEVELS_SCORER, HELDOUT_LEVELS_SCORER, LEVELS, LevelsEvaluator, LevelsNet
from robust_envs.quality.pyiqa_metrics import PyIQAEvaluator, QAlignEvaluator, pyiqa_nr_metrics

__all__ = [
    "EMBEDDED_LEVELS_SCORER",
    "HELDOUT_LEVELS_SCORER",
    "LEVELS",
    "SCORE_RANGE",
    "LevelsEvaluator",
    "LevelsNet",
    "PyIQAEvaluator",
    "QAlignEvaluator",
    "QualityEvaluator",
    "make_evaluator",
    "pyiqa_nr_metrics",
]


def make_evaluator(
    evaluator: str | QualityEvaluator = "levels", device: str | torch.device = "cpu"
) -> QualityEvaluator:
    """Build an evaluator by name.

    Args:
        evaluator: ``"levels"`` (embedded scorer, default), ``"levels_heldout"`` (the same recipe with seed 1,
            for checking a gain on a scorer no agent trained on), ``"qalign"`` (the paper's; GPU and weights),
            any other pyiqa no-reference metric name (e.g. ``"piqe"``), or a ready :class:`QualityEvaluator`.
        device: torch device.

    Raises:
        ValueError: on an unknown name (the message lists the valid ones).
    """
    if isinstance(evaluator, QualityEvaluator):
        return evaluator
    if not isinstance(evaluator, str):
        raise ValueError(f"evaluator must be a name or a QualityEvaluator, got {type(evaluator).__name__}")
    if evaluator == "levels":
        return LevelsEvaluator(device=device)
    if evaluator == "levels_heldout":
        return LevelsEvaluator(HELDOUT_LEVELS_SCORER, device=device)
    if evaluator == "qalign":
        return QAlignEvaluator(device=device)
    valid = pyiqa_nr_metrics()
    if evaluator in valid:
        return PyIQAEvaluator(evaluator, device=device)
    raise ValueError(
        f"unknown evaluator {evaluator!r}; valid: 'levels', 'levels_heldout', 'qalign' or a pyiqa NR metric: {', '.join(valid)}"
    )
