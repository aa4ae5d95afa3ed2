"""pyiqa no-reference metrics as :class:`QualityEvaluator`s, including Q-Align (the evaluator of seed 000).

Paper: Wu et al., "Q-Align: Teaching LMMs for Visual Scoring via Discrete Text-Defined Levels", 2023,
https://arxiv.org/abs/2312.17090. Code: https://github.com/chaofengc/IQA-PyTorch (pyiqa).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robust_envs.quality.base import SCORE_RANGE, QualityEvaluator

__all__ = [
    "QALIGN_IMAGE_SIZE",
    "QALIGN_REPO",
    "PyIQAEvaluator",
    "QAlignEvaluator",
    "pyiqa_nr_metrics",
    "qalign_preprocess",
]


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


#: Q-Align's weights on the Hugging Face hub (pyiqa loads them with ``from_pretrained``).
QALIGN_REPO = "q-future/one-align"
#: Q-Align's image side: its CLIP image processor resizes the shortest edge to 448 and centre-crops 448 x 448
#: (``MplugOwlVisionConfig.image_size``), after padding to a square with the CLIP mean (a no-op for square images).
QALIGN_IMAGE_SIZE = 448
#: OpenAI CLIP's normalisation, which Q-Align's image processor uses (pyiqa ``archs/constants.py``).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: Approximate GPU memory of the fp16 model (7B parameters: mPLUG-Owl2 with a LLaMA-2 language model), GiB.
QALIGN_FP16_GIB = 16.0


def qalign_preprocess(
    images: torch.Tensor,
    size: int = QALIGN_IMAGE_SIZE,
    mean: tuple[float, float, float] = CLIP_MEAN,
    std: tuple[float, float, float] = CLIP_STD,
    dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """Q-Align's input from a batch, on the images' device (no PIL round trip, no per-image Python loop).

    Steps (as Q-Align's ``CLIPImageProcessor`` after ``expand2square``): grey to RGB; pad to a square with the CLIP
    mean; bicubic resize to ``size`` x ``size`` (for seed 000's 64 x 64 samples: a 7x upsampling); clamp to [0, 1];
    normalise with the CLIP mean and std; cast to ``dtype``. pyiqa's path quantises to uint8 and resizes with PIL
    one image at a time; the two differ by the uint8 rounding (<= 1/255 per pixel before normalisation).

    Shape:
        - images: ``(N, C, H, W)`` float in [0, 1], ``C`` in {1, 3}.
        - output: ``(N, 3, size, size)`` in ``dtype``.
    """
    x = images.float()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    h, w = x.shape[-2:]
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    if h != w:
        side = max(h, w)
        canvas = m.expand(x.shape[0], 3, side, side).clone()
        top, left = (side - h) // 2, (side - w) // 2
        canvas[..., top : top + h, left : left + w] = x
        x = canvas
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=x.shape[-1] > size)
    x = (x.clamp(0.0, 1.0) - m) / torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return x.to(dtype)


def _qalign_weights_cached() -> bool:
    """Whether ``q-future/one-align``'s config is in the local Hugging Face cache (no network access)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(QALIGN_REPO, "config.json")
    return isinstance(found, str)


def _require_qalign_deps() -> None:
    missing = []
    for module in ("icecream", "transformers", "PIL"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ImportError(
            f"qalign needs {', '.join(missing)} (pyiqa's Q-Align imports them): pip install 'robust-envs[qalign]'"
        )


class QAlignEvaluator(QualityEvaluator):
    """Q-Align (pyiqa ``qalign``), the paper's evaluator: the expected level over five text-defined levels.

    Paper: Wu et al. 2023, https://arxiv.org/abs/2312.17090 (seed 000's E_theta_freeze, sec. 5.1.3).
    Code: pyiqa ``archs/qalign_arch.py`` (weights ``q-future/one-align``, a 7B multimodal model).

    Scoring is batched: images are preprocessed on the GPU by :func:`qalign_preprocess` (448 x 448, CLIP
    normalisation, fp16) and scored ``batch_size`` at a time through the model's ``score`` (pyiqa's own forward
    takes one image at a time). Scores are Q-Align's expected level, already in [1, 5].

    Args:
        device: a CUDA device.
        batch_size: images per model call (memory grows with it: 1024 visual tokens per image).
        dtype: ``"fp16"`` (the paper's, ~16 GiB), ``"8bit"`` or ``"4bit"`` (pyiqa ``qalign_8bit`` / ``qalign_4bit``,
            need bitsandbytes).
        allow_cpu: allow a CPU device (hours per batch; for debugging only).
        min_free_gib: refuse to load when the GPU has less free memory (default: the fp16 size; 0 to skip).

    Raises:
        RuntimeError: without a CUDA GPU, with too little free GPU memory, or when the weights are not in the local
            Hugging Face cache and downloads are not allowed (``ROBUST_ENVS_ALLOW_DOWNLOAD=1``); each message says
            what is missing and what to do.
        ImportError: when pyiqa's Q-Align dependencies are missing (``pip install 'robust-envs[qalign]'``).
    """

    name = "qalign"

    def __init__(
        self,
        device: str | torch.device = "cuda",
        batch_size: int = 16,
        dtype: str = "fp16",
        allow_cpu: bool = False,
        min_free_gib: float | None = None,
    ) -> None:
        import os

        if dtype not in ("fp16", "8bit", "4bit"):
            raise ValueError(f"dtype must be 'fp16', '8bit' or '4bit', got {dtype!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        dev = torch.device(device)
        if dev.type != "cuda" and not allow_cpu:
            raise RuntimeError(
                f"qalign needs a CUDA GPU (a 7B multimodal model); got device {device!r}. Use evaluator='levels' "
                "(the embedded scorer) or another pyiqa metric on the CPU, or pass allow_cpu=True."
            )
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("qalign needs a CUDA GPU but torch.cuda.is_available() is False")
            need = QALIGN_FP16_GIB / {"fp16": 1, "8bit": 2, "4bit": 4}[dtype] if min_free_gib is None else min_free_gib
            free = torch.cuda.mem_get_info(dev)[0] / 2**30
            if free < need:
                raise RuntimeError(
                    f"qalign ({dtype}) needs about {need:.0f} GiB of free GPU memory, {dev} has {free:.1f} GiB free; "
                    "free the GPU, use dtype='8bit' / '4bit' (bitsandbytes), or pass min_free_gib=0 to try anyway"
                )
        _require_qalign_deps()
        if os.environ.get("ROBUST_ENVS_ALLOW_DOWNLOAD") != "1" and not _qalign_weights_cached():
            raise RuntimeError(
                f"qalign's weights ({QALIGN_REPO}, about 16 GB) are not in the local Hugging Face cache. On a machine "
                f"online run `huggingface-cli download {QALIGN_REPO}` and copy the cache (~/.cache/huggingface/hub) "
                "here, or set ROBUST_ENVS_ALLOW_DOWNLOAD=1 where the hub is reachable."
            )
        self.device = dev
        self.batch_size = int(batch_size)
        self.dtype = dtype
        self.model = self._load(dev, dtype)

    @staticmethod
    def _load(device: torch.device, dtype: str) -> torch.nn.Module:
        """The mPLUG-Owl2 model inside pyiqa's Q-Align (it has the batched ``score``)."""
        import pyiqa

        name = {"fp16": "qalign", "8bit": "qalign_8bit", "4bit": "qalign_4bit"}[dtype]
        try:
            metric = pyiqa.create_metric(name, device=device, as_loss=False)
        except (OSError, RuntimeError, ValueError) as err:
            raise RuntimeError(
                f"pyiqa metric {name!r} could not be loaded ({err.__class__.__name__}: {err}); its weights are "
                f"{QALIGN_REPO} in the Hugging Face cache"
            ) from err
        model: torch.nn.Module = metric.net.model
        return model

    def score(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for chunk in images.split(self.batch_size):
            x = qalign_preprocess(chunk.to(self.device), dtype=torch.float16)
            scores = self.model.score(None, task_="quality", input_="image", image_tensor=x)  # type: ignore[operator]
            out.append(scores.float().reshape(-1))
        return torch.cat(out)
