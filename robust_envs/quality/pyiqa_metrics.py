"""pyiqa no-reference metrics as :class:`QualityEvaluator`s, including Q-Align (the evaluator of seed 000).

Paper: Wu et al., "Q-Align: Teaching LMMs for Visual Scoring via Discrete Text-Defined Levels", 2023,
https://arxiv.org/abs/2312.17090. Code: https://github.com/chaofengc/IQA-PyTorch (pyiqa).
"""

from __future__ import annotations

import torch

from robust_envs.quality.base import SCORE_RANGE, QualityEvaluator

__all__ = ["PyIQAEvaluator", "QAlignEvaluator", "pyiqa_nr_metrics"]


def pyiqa_nr_metrics() -> list[str]:
    """Names of pyiqa's no-reference metrics (those a :class:`PyIQAEvaluator` accepts)."""
    import pyiqa

    return list(pyiqa.list_models(metric_mode="NR"))


def _parse_range(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    lo, hi = (float(part.strip().lstrip("~")) for part in str(text).split(","))
    return lo, hi


class PyIQAEvaluator(QualityEvaluator):
    """Any pyiqa no-reference metric, mapped linearly onto [1, 5].

    ``q = 1 + 4 * (s - lo) / (hi - lo)`` with pyiqa's ``score_range`` (lo, hi), flipped when the metric is
    lower-better (e.g. ``piqe``: 0..100, lower better), then clamped to [1, 5]. Grey images are repeated to
    three channels. Metrics whose weights are not on disk fail at construction: pyiqa would download them.

    Args:
        metric: a pyiqa NR metric name (see :func:`pyiqa_nr_metrics`).
        device: torch device of the metric network.
        score_range: override pyiqa's score range when it has none.

    Raises:
        ValueError: on an unknown metric name (listing the valid ones) or a metric with no score range.
        RuntimeError: when the metric's weights cannot be loaded (offline and not cached).
    """

    def __init__(
        self, metric: str, device: str | torch.device = "cpu", score_range: tuple[float, float] | None = None
    ) -> None:
        import pyiqa

        valid = pyiqa_nr_metrics()
        if metric not in valid:
            raise ValueError(f"unknown pyiqa no-reference metric {metric!r}; valid: {', '.join(valid)}")
        try:
            self.metric = pyiqa.create_metric(metric, device=torch.device(device), as_loss=False)
        except (OSError, RuntimeError, ValueError) as err:
            raise RuntimeError(
                f"pyiqa metric {metric!r} could not be loaded ({err.__class__.__name__}: {err}). Its weights are "
                "fetched from a model hub on first use; on a machine offline, copy pyiqa's cache "
                "(~/.cache/torch/hub/pyiqa or the Hugging Face cache) from a machine online."
            ) from err
        rng = score_range or _parse_range(getattr(self.metric, "score_range", None))
        if rng is None:
            raise ValueError(f"pyiqa metric {metric!r} has no score_range; pass score_range=(lo, hi)")
        self.range = rng
        self.lower_better = bool(self.metric.lower_better)
        self.name = metric

    def score(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.metric.device) if hasattr(self.metric, "device") else images
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        raw = self.metric(x).reshape(-1).float()
        lo, hi = self.range
        unit = (raw - lo) / (hi - lo)
        if self.lower_better:
            unit = 1.0 - unit
        return SCORE_RANGE[0] + (SCORE_RANGE[1] - SCORE_RANGE[0]) * unit.clamp(0.0, 1.0)


class QAlignEvaluator(PyIQAEvaluator):
    """Q-Align (pyiqa ``qalign``), the paper's evaluator: the expected level over five text-defined levels.

    It is a 7B-parameter multimodal model (``q-future/one-align``): it needs its weights in the local
    Hugging Face cache and a CUDA GPU.

    Raises:
        RuntimeError: on a CPU device (unless ``allow_cpu=True``) or when the weights cannot be loaded.
    """

    def __init__(self, device: str | torch.device = "cuda", allow_cpu: bool = False) -> None:
        if torch.device(device).type != "cuda" and not allow_cpu:
            raise RuntimeError(
                f"qalign needs a CUDA GPU (a 7B multimodal model); got device {device!r}. Use evaluator='levels' "
                "(the embedded scorer) or another pyiqa metric on the CPU, or pass allow_cpu=True."
            )
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("qalign needs a CUDA GPU but torch.cuda.is_available() is False")
        super().__init__("qalign", device=device, score_range=SCORE_RANGE)
