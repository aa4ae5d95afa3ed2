"""Independent quality measures for Fashion-MNIST-like images that do not use the env's scorer.

The env's reward uses the embedded levels scorer (:mod:`robust_envs.quality.levels`); a schedule can learn to
please that one network. The measures here share nothing with it and run offline:

- **KID** (Binkowski et al., "Demystifying MMD GANs", ICLR 2018, https://arxiv.org/abs/1801.01401):
  the unbiased squared MMD with the cubic polynomial kernel ``k(a, b) = (a . b / d + 1) ** 3`` between the
  features of the images and those of the real Fashion-MNIST test images, averaged over random subsets
  (``torchmetrics.image.kid.KernelInceptionDistance``). Unbiased: its mean does not depend on ``n``; it can be
  slightly negative when the two sets are alike.
- **FID** (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
  Equilibrium", NeurIPS 2017, https://arxiv.org/abs/1706.08500):
  ``||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))`` of Gaussians fitted to the two feature sets
  (``torchmetrics.image.fid.FrechetInceptionDistance``). Biased upward for small ``n`` (Binkowski et al.
  2018 discuss it): compare FIDs only at equal ``n``.
- **PIQE** (Venkatanath et al., "Blind Image Quality Evaluation Using Perception Based Features", National
  Conference on Communications (NCC) 2015), pyiqa's ``piqe``: a hand-crafted no-reference score in
  [0, 100], lower is better, with no learnt weights. It was designed for natural photographs; it scores
  16 x 16 blocks by their local variance and distortion cues, and on 28 x 28 garments on a black background it
  rates added noise *better* than clean images (see ``docs/fidelity.md``): read it as a second opinion, not
  as ground truth.
- **classifier confidence**: the mean largest softmax probability of the feature classifier.

Features: the penultimate layer (84 ReLU units) of a LeNet-5 trained on Fashion-MNIST train, embedded in
``robust_envs/assets/fmnist_features`` (card: ``CARD.md`` there; rebuilt by
``python -m scripts.train_feature_classifier``), standing in for Inception-v3, which neither sees 28 x 28
grey images well nor runs without a download.

Shape (every public function):
    images ``(N, 1, 28, 28)`` float in [0, 1] (``N >= 2``), on any device.
"""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from robust_envs.classifiers import LeNet5

__all__ = [
    "EMBEDDED_FEATURE_CLASSIFIER",
    "IMAGE_SHAPE",
    "NUM_FEATURES",
    "FeatureFidelity",
    "KID",
    "LeNetFeatures",
    "independent_quality",
    "load_feature_classifier",
    "piqe",
]

EMBEDDED_FEATURE_CLASSIFIER = Path(__file__).resolve().parents[1] / "assets" / "fmnist_features"
NUM_FEATURES = 84
"""Width of the feature space: LeNet-5's penultimate layer."""
IMAGE_SHAPE = (1, 28, 28)
_REBUILD = "rebuild it with `python -m scripts.train_feature_classifier` (see the asset's CARD.md)"


class KID(NamedTuple):
    """Kernel Inception Distance over the feature classifier's features (unitless squared MMD).

    Attributes:
        mean: mean over ``subsets`` random subsets.
        std: standard deviation over the subsets (population std, as torchmetrics reports it).
        subset_size: images per subset (``min(kid_subset_size, N)``).
    """

    mean: float
    std: float
    subset_size: int


class LeNetFeatures(nn.Module):
    """The penultimate layer of a :class:`~robust_envs.classifiers.LeNet5`: images -> ``(N, 84)`` features.

    ``num_features`` tells torchmetrics the width, so it runs no dummy forward.

    Args:
        classifier: the LeNet-5 whose penultimate layer gives the features.
        dtype: dtype of the output. The metrics use float64: KID's cubic kernel on unnormalised ReLU
            features reaches 1e4..1e6, and its unbiased estimate is a difference of such sums.

    Shape:
        - input: ``(N, 1, 28, 28)`` float in [0, 1].
        - output: ``(N, 84)`` of ``dtype``, >= 0 (after ReLU).
    """

    num_features = NUM_FEATURES

    def __init__(self, classifier: LeNet5, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.classifier = classifier
        self.dtype = dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.classifier[:-1](self.classifier.features(images)).to(self.dtype)


def load_feature_classifier(weights: str | Path | None = None, device: str | torch.device = "cpu") -> LeNet5:
    """Load the embedded feature classifier (or another LeNet-5 saved the same way), in eval mode, frozen.

    Args:
        weights: the asset folder (with ``model.safetensors`` and optionally ``config.json``) or the
            ``.safetensors`` file itself; default :data:`EMBEDDED_FEATURE_CLASSIFIER`.
        device: torch device.

    Raises:
        FileNotFoundError: when the weights file is missing (naming it and the rebuild command).
        ValueError: when ``config.json`` or the weights are corrupt or do not fit LeNet-5 (naming the file).
    """
    from safetensors.torch import load_file

    path = Path(weights) if weights is not None else EMBEDDED_FEATURE_CLASSIFIER
    folder, file = (path.parent, path) if path.suffix == ".safetensors" else (path, path / "model.safetensors")
    if not file.is_file():
        raise FileNotFoundError(f"feature classifier weights not found at {file}; {_REBUILD}")
    config_file = folder / "config.json"
    config: dict = {}
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"corrupt feature classifier config {config_file}: {err}; {_REBUILD}") from err
        if config.get("num_features", NUM_FEATURES) != NUM_FEATURES or config.get("architecture", "lenet5") != "lenet5":
            raise ValueError(
                f"{config_file} describes architecture {config.get('architecture')!r} with "
                f"{config.get('num_features')} features; FeatureFidelity needs 'lenet5' with {NUM_FEATURES}"
            )
    net = LeNet5(in_channels=1, num_classes=10, image_size=28)
    try:
        net.load_state_dict(load_file(str(file)))
    except Exception as err:  # safetensors raises its own (non-public) error types on corrupt files
        raise ValueError(f"could not load feature classifier weights from {file}: {err}; {_REBUILD}") from err
    return net.to(device).eval().requires_grad_(False)


def _check_images(images: torch.Tensor, name: str = "images", min_n: int = 2) -> None:
    """Raise ValueError unless ``images`` is a float tensor ``(N >= min_n, 1, 28, 28)`` in [0, 1] without NaN."""
    if not torch.is_tensor(images) or not images.is_floating_point():
        kind = f"tensor of dtype {images.dtype}" if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"{name} must be a float tensor (N, 1, 28, 28) in [0, 1], got a {kind}")
    if images.dim() != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise ValueError(f"{name} must have shape (N, 1, 28, 28) (Fashion-MNIST), got {tuple(images.shape)}")
    if images.shape[0] < min_n:
        raise ValueError(f"{name} must hold at least {min_n} images, got N = {images.shape[0]}")
    if torch.isnan(images).any():
        raise ValueError(f"{name} hold NaN values")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-4 or hi > 1 + 1e-4:
        raise ValueError(f"{name} must lie in [0, 1], got min {lo:.4g} max {hi:.4g}")


class FeatureFidelity:
    """KID, FID and classifier confidence of images against real Fashion-MNIST test images.

    The reference features are computed once at construction (10,000 test images: about a second on one
    CPU thread) and kept in the two torchmetrics metrics (``reset_real_features=False``); each call
    then only runs the classifier on the images it scores.

    Args:
        device: torch device of the classifier and the feature statistics.
        weights: the feature classifier's asset folder or ``.safetensors`` file (default: the embedded one).
        reference: real images ``(M, 1, 28, 28)`` float in [0, 1], ``M >= 2`` (default: the 10,000
            Fashion-MNIST test images, via :func:`robust_envs.data.load_fashion_mnist`).
        kid_subsets: number of random subsets KID averages over (Binkowski et al. use 100).
        kid_subset_size: images per KID subset; lowered to ``N`` when fewer images are scored.
        seed: seed of the KID subset draws (the global torch RNG is left untouched), so scores repeat.
        batch_size: images per classifier forward.

    Raises:
        FileNotFoundError / ValueError: from :func:`load_feature_classifier` on missing or corrupt weights.
        ValueError: on a reference of the wrong shape or range (naming the value).
        robust_envs.data.DatasetNotFoundError: when ``reference`` is None and Fashion-MNIST is not on disk.
    """

    def __init__(
        self,
        device: str | torch.device = "cpu",
        weights: str | Path | None = None,
        reference: torch.Tensor | None = None,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        seed: int = 0,
        batch_size: int = 2000,
    ) -> None:
        # the submodules, not torchmetrics.image: that one exports them only with torch-fidelity installed,
        # which only their Inception-v3 default needs
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        if kid_subsets < 1 or kid_subset_size < 2:
            raise ValueError(f"need kid_subsets >= 1 and kid_subset_size >= 2, got {kid_subsets}, {kid_subset_size}")
        self.device = torch.device(device)
        self.classifier = load_feature_classifier(weights, self.device)
        self.extractor = LeNetFeatures(self.classifier).eval()
        metric_extractor = LeNetFeatures(self.classifier, dtype=torch.float64).eval()
        if reference is None:
            from robust_envs.data import load_fashion_mnist

            reference = load_fashion_mnist("test").float_images()
        _check_images(reference, "reference")
        self.n_reference = int(reference.shape[0])
        self.kid_subsets, self.kid_subset_size, self.seed, self.batch_size = (
            kid_subsets, kid_subset_size, seed, batch_size,
        )  # fmt: skip
        with warnings.catch_warnings():  # KID's note that it keeps every feature in memory (10,000 x 84 here)
            warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")
            self._kid = KernelInceptionDistance(
                feature=metric_extractor, subsets=kid_subsets, subset_size=min(kid_subset_size, self.n_reference),
                reset_real_features=False, normalize=True,
            ).to(self.device)  # fmt: skip
        fid = FrechetInceptionDistance(feature=metric_extractor, reset_real_features=False, normalize=True)
        self._fid = fid.to(self.device)
        with torch.no_grad():
            for batch in reference.split(batch_size):
                batch = batch.to(self.device, torch.float32)
                self._kid.update(batch, real=True)
                self._fid.update(batch, real=True)

    def _update_fake(self, images: torch.Tensor, metric: Any) -> None:
        """Replace ``metric``'s generated-image features by those of ``images`` (reference features kept)."""
        _check_images(images)
        metric.reset()
        with torch.no_grad():
            for batch in images.split(self.batch_size):
                metric.update(batch.to(self.device, torch.float32).clamp(0.0, 1.0), real=False)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features ``(N, 84)`` float32 (on ``device``) of images ``(N, 1, 28, 28)`` in [0, 1].

        Raises:
            ValueError: on images of the wrong type, shape or range (naming the value).
        """
        _check_images(images, min_n=1)
        return torch.cat([self.extractor(b.to(self.device, torch.float32)) for b in images.split(self.batch_size)])

    @torch.no_grad()
    def confidence(self, images: torch.Tensor) -> torch.Tensor:
        """Largest softmax probability ``(N,)`` float32 in [0.1, 1] of the classifier per image.

        Raises:
            ValueError: on images of the wrong type, shape or range (naming the value).
        """
        _check_images(images, min_n=1)
        probs = [self.classifier(b.to(self.device, torch.float32)).softmax(-1) for b in images.split(self.batch_size)]
        return torch.cat(probs).amax(-1)

    def kid(self, images: torch.Tensor) -> KID:
        """KID (Binkowski et al. 2018) of ``images`` against the reference; lower is better, 0 = alike.

        The subset size is ``min(kid_subset_size, N, M)`` so that a few images (``N >= 2``) still give a value
        (with a larger spread over subsets).

        Raises:
            ValueError: on images of the wrong type, shape or range, or fewer than 2 images.
        """
        self._update_fake(images, self._kid)
        subset_size = min(self.kid_subset_size, int(images.shape[0]), self.n_reference)
        self._kid.subset_size = subset_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            mean, std = self._kid.compute()
        return KID(float(mean), float(std), subset_size)

    def fid(self, images: torch.Tensor) -> float:
        """FID (Heusel et al. 2017) of ``images`` against the reference, in squared feature units.

        Lower is better; biased upward for small ``N``, so compare values at equal ``N`` only.

        Raises:
            ValueError: on images of the wrong type, shape or range, or fewer than 2 images.
        """
        self._update_fake(images, self._fid)
        return float(self._fid.compute())


@functools.lru_cache(maxsize=4)
def _default_fidelity(device: str) -> FeatureFidelity:
    return FeatureFidelity(device=device)


@functools.lru_cache(maxsize=4)
def _piqe_metric(device: str) -> nn.Module:
    from robust_envs.quality.pyiqa_metrics import PyIQAEvaluator

    return PyIQAEvaluator("piqe", device=device).metric


@torch.no_grad()
def piqe(images: torch.Tensor) -> torch.Tensor:
    """PIQE (Venkatanath et al. 2015) per image via pyiqa: ``(N,)`` float32 in [0, 100], lower is better.

    Grey images are repeated to three channels (pyiqa's input). No weights are downloaded. pyiqa returns NaN for
    an image without any active block (measured: an all-black image; a uniform grey one scores 100); those stay
    NaN here, and :func:`independent_quality` averages over the other images and counts them.

    Raises:
        ValueError: on images of the wrong type, shape or range (naming the value).
    """
    _check_images(images, min_n=1)
    metric = _piqe_metric(str(images.device))
    return metric(images.float().clamp(0.0, 1.0).repeat(1, 3, 1, 1)).reshape(-1).float()


def independent_quality(x0: torch.Tensor, fidelity: FeatureFidelity | None = None) -> dict[str, float]:
    """Every independent measure of a set of final images, as plain floats.

    Args:
        x0: images ``(N, 1, 28, 28)`` float in [0, 1], ``N >= 2``.
        fidelity: a ready :class:`FeatureFidelity` (keeps the reference features); default: one built once per
            device and cached.

    Returns:
        ``{"kid_mean", "kid_std", "fid", "piqe_mean", "piqe_undefined", "classifier_confidence_mean"}``: KID mean
        and std over subsets, FID (lower better, see :class:`FeatureFidelity`), mean PIQE in [0, 100] (lower
        better) over the images where PIQE is defined, the number of images where it is not (no active block,
        e.g. an all-black image; NaN mean if none is defined) and mean classifier confidence in [0.1, 1].

    Raises:
        ValueError: on images of the wrong type, shape or range, or fewer than 2 images.
    """
    _check_images(x0, "x0")
    fidelity = fidelity if fidelity is not None else _default_fidelity(str(x0.device))
    kid = fidelity.kid(x0)
    piqe_all = piqe(x0)
    defined = torch.isfinite(piqe_all)
    return {
        "kid_mean": kid.mean,
        "kid_std": kid.std,
        "fid": fidelity.fid(x0),
        "piqe_mean": float(piqe_all[defined].mean()) if bool(defined.any()) else float("nan"),
        "piqe_undefined": float((~defined).sum()),
        "classifier_confidence_mean": float(fidelity.confidence(x0).mean()),
    }
