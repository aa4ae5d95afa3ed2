"""The embedded levels scorer: a small Q-Align-style quality evaluator for 28 x 28 grey images.

Like Q-Align (Wu et al. 2023, https://arxiv.org/abs/2312.17090, Eq. 3), the network predicts a
distribution over five text-defined levels, *bad, poor, fair, good, excellent*, and reports the expected
level ``sum_k k * p_k`` in [1, 5]. It is trained by ``scripts/train_levels_scorer.py`` on real
Fashion-MNIST train images (level 5) and graded degradations of them (Gaussian noise, Gaussian blur and the
embedded diffusion model's own x0 predictions at increasing t: levels 4..1); see
``robust_envs/assets/levels_scorer/CARD.md`` for its measured behaviour. It is meant for Fashion-MNIST-like
images: other images are converted to grey and resized to 28 x 28.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from robust_envs.quality.base import QualityEvaluator

__all__ = ["EMBEDDED_LEVELS_SCORER", "HELDOUT_LEVELS_SCORER", "LEVELS", "LevelsEvaluator", "LevelsNet"]

LEVELS = ("bad", "poor", "fair", "good", "excellent")
EMBEDDED_LEVELS_SCORER = Path(__file__).resolve().parents[1] / "assets" / "levels_scorer"
#: The same recipe with another seed (``evaluator="levels_heldout"``): a scorer no agent trains on, to check that a
#: gain measured by the embedded scorer is not specific to its weights (reward over-optimisation).
HELDOUT_LEVELS_SCORER = EMBEDDED_LEVELS_SCORER.parent / "levels_scorer_heldout"


class LevelsNet(nn.Module):
    """CNN from ``(N, 1, 28, 28)`` images in [0, 1] to ``(N, 5)`` level logits (bad..excellent)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.width = width
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),   # 14 x 14
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),  # 7 x 7
        )  # fmt: skip
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 49, 128), nn.SiLU(), nn.Linear(128, len(LEVELS)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images * 2.0 - 1.0))

    @staticmethod
    def expected_level(logits: torch.Tensor) -> torch.Tensor:
        """``(N, 5)`` logits -> ``(N,)`` expected level in [1, 5] (Q-Align's score)."""
        levels = torch.arange(1, len(LEVELS) + 1, dtype=logits.dtype, device=logits.device)
        return logits.softmax(-1) @ levels


class LevelsEvaluator(QualityEvaluator):
    """The embedded levels scorer as a :class:`QualityEvaluator`.

    Args:
        path: folder with ``model.safetensors`` and ``config.json`` (default: the embedded asset).
        device: torch device.

    Raises:
        FileNotFoundError: when the weights are missing (with the command that rebuilds them).
        ValueError: when the weights file is corrupt or does not fit the architecture.
    """

    name = "levels"

    def __init__(self, path: str | Path = EMBEDDED_LEVELS_SCORER, device: str | torch.device = "cpu") -> None:
        from safetensors.torch import load_file

        path = Path(path)
        if path.resolve() == HELDOUT_LEVELS_SCORER.resolve():
            self.name = "levels_heldout"
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(
                f"levels scorer weights not found at {weights}; rebuild them with "
                f"`python scripts/train_levels_scorer.py{_rebuild_args(path)}` (needs the embedded noise network)"
            )
        config: dict = {}
        if (path / "config.json").is_file():
            from robust_envs.fileio import read_json

            hint = f"rebuild it with `python scripts/train_levels_scorer.py{_rebuild_args(path)}`"
            config = read_json(path / "config.json", hint=hint)
        self.net = LevelsNet(width=int(config.get("width", 32)))
        try:
            self.net.load_state_dict(load_file(str(weights)))
        except Exception as err:  # safetensors raises its own error types on corrupt files
            raise ValueError(f"could not load levels scorer weights from {weights}: {err}") from err
        self.net = self.net.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device)
        if x.shape[1] == 3:
            x = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
        if x.shape[-2:] != (28, 28):
            x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
        return LevelsNet.expected_level(self.net(x))


def _rebuild_args(path: Path) -> str:
    if path.resolve() == HELDOUT_LEVELS_SCORER.resolve():
        return " --seed 1 --out robust_envs/assets/levels_scorer_heldout"
    return "" if path.resolve() == EMBEDDED_LEVELS_SCORER.resolve() else f" --out {path}"
