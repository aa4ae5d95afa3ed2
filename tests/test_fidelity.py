from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torchvision.transforms.functional import gaussian_blur

from robust_envs.quality.fidelity import (
    EMBEDDED_FEATURE_CLASSIFIER,
    KID,
    NUM_FEATURES,
    FeatureFidelity,
    independent_quality,
    load_feature_classifier,
    piqe,
)

KEYS = {"kid_mean", "kid_std", "fid", "piqe_mean", "piqe_undefined", "classifier_confidence_mean"}


@pytest.fixture(scope="module")
def test_images() -> torch.Tensor:
    from robust_envs.data import load_fashion_mnist

    return load_fashion_mnist("test").float_images()


@pytest.fixture(scope="module")
def fidelity(test_images: torch.Tensor) -> FeatureFidelity:
    """Reference: the first half of the test split; the images scored below come from the second half."""
    torch.set_num_threads(1)
    return FeatureFidelity(device="cpu", reference=test_images[:5000])


@pytest.fixture(scope="module")
def held_out(test_images: torch.Tensor) -> torch.Tensor:
    return test_images[5000:5200]


def _degrade(x: torch.Tensor, kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if kind == "gaussian_noise":
        return (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    if kind == "blur":
        return gaussian_blur(x, kernel_size=[11, 11], sigma=[1.5, 1.5])
    if kind == "uniform_noise":
        return torch.rand(x.shape, generator=g)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["gaussian_noise", "blur", "uniform_noise"])
def test_real_images_beat_degraded_ones(fidelity: FeatureFidelity, held_out: torch.Tensor, kind: str) -> None:
    bad = _degrade(held_out, kind)
    kid_real, kid_bad = fidelity.kid(held_out), fidelity.kid(bad)
    assert isinstance(kid_real, KID) and kid_real.subset_size == 200
    # real vs real: KID is unbiased, so it is near 0 (within its spread over subsets); degraded is far above
    assert abs(kid_real.mean) < 2 * kid_real.std + 1.0
    assert kid_bad.mean > kid_real.mean + 2 * kid_bad.std
    assert fidelity.fid(bad) > 2 * fidelity.fid(held_out)


def test_scores_repeat_and_leave_the_global_rng_alone(fidelity: FeatureFidelity, held_out: torch.Tensor) -> None:
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    first = fidelity.kid(held_out[:50])
    torch.testing.assert_close(torch.rand(3), expected_draw)
    assert fidelity.kid(held_out[:50]) == first
    assert fidelity.fid(held_out[:50]) == pytest.approx(fidelity.fid(held_out[:50]), rel=1e-12)


def test_kid_subset_size_follows_small_n(fidelity: FeatureFidelity, held_out: torch.Tensor) -> None:
    kid = fidelity.kid(held_out[:2])
    assert kid.subset_size == 2 and np.isfinite(kid.mean) and np.isfinite(kid.std)
    assert fidelity.kid(held_out[:7]).subset_size == 7
    with pytest.raises(ValueError, match="at least 2 images, got N = 1"):
        fidelity.kid(held_out[:1])
    with pytest.raises(ValueError, match="at least 2 images, got N = 1"):
        fidelity.fid(held_out[:1])


def test_features_and_confidence_shapes(fidelity: FeatureFidelity, held_out: torch.Tensor) -> None:
    feats = fidelity.features(held_out[:5])
    assert feats.shape == (5, NUM_FEATURES) and feats.dtype == torch.float32 and (feats >= 0).all()
    conf = fidelity.confidence(held_out[:5])
    assert conf.shape == (5,) and ((conf >= 0.1) & (conf <= 1)).all()
    assert fidelity.confidence(held_out).mean() > fidelity.confidence(_degrade(held_out, "uniform_noise")).mean()


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.rand(4, 3, 28, 28), r"shape \(N, 1, 28, 28\) \(Fashion-MNIST\), got \(4, 3, 28, 28\)"),
        (torch.rand(4, 1, 32, 32), r"got \(4, 1, 32, 32\)"),
        (torch.rand(28, 28), r"got \(28, 28\)"),
        (torch.full((4, 1, 28, 28), 2.0), r"must lie in \[0, 1\], got min 2 max 2"),
        (torch.full((4, 1, 28, 28), -0.5), r"got min -0.5 max -0.5"),
        (torch.zeros(4, 1, 28, 28, dtype=torch.uint8), r"float tensor .* got a tensor of dtype torch.uint8"),
        (np.zeros((4, 1, 28, 28), dtype=np.float32), r"float tensor .* got a ndarray"),
        (torch.full((4, 1, 28, 28), float("nan")), "NaN"),
    ],
)
def test_bad_images_are_named(fidelity: FeatureFidelity, images, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fidelity.kid(images)
    with pytest.raises(ValueError, match=message):
        independent_quality(images, fidelity=fidelity)


def test_missing_or_corrupt_asset(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors.*train_feature_classifier"):
        load_feature_classifier(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        FeatureFidelity(weights=tmp_path / "nope.safetensors", reference=torch.rand(4, 1, 28, 28))
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"could not load feature classifier weights from .*model\.safetensors"):
        load_feature_classifier(tmp_path)
    # a truncated copy of the real file
    data = (EMBEDDED_FEATURE_CLASSIFIER / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="could not load feature classifier weights"):
        load_feature_classifier(tmp_path)
    shutil.copy(EMBEDDED_FEATURE_CLASSIFIER / "model.safetensors", tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"corrupt feature classifier config .*config\.json"):
        load_feature_classifier(tmp_path)
    (tmp_path / "config.json").unlink()
    assert load_feature_classifier(tmp_path / "model.safetensors") is not None  # the file itself works too


def test_independent_quality_keys(fidelity: FeatureFidelity, held_out: torch.Tensor) -> None:
    out = independent_quality(held_out[:20], fidelity=fidelity)
    assert set(out) == KEYS and all(isinstance(v, float) and np.isfinite(v) for v in out.values())
    assert 0 <= out["piqe_mean"] <= 100 and 0.1 <= out["classifier_confidence_mean"] <= 1
    scores = piqe(held_out[:3])
    assert scores.shape == (3,) and ((scores >= 0) & (scores <= 100)).all()
    assert out["piqe_undefined"] == 0


def test_independent_quality_skips_and_counts_images_without_a_piqe(fidelity: FeatureFidelity, held_out: torch.Tensor) -> None:
    """An all-black image has no PIQE (pyiqa: NaN); the mean is over the other images, and the blank is counted."""
    x0 = held_out[:6].clone()
    x0[:2] = 0.0
    assert torch.isnan(piqe(x0[:1])).all()
    out = independent_quality(x0, fidelity=fidelity)
    assert out["piqe_undefined"] == 2
    assert out["piqe_mean"] == pytest.approx(float(piqe(held_out[2:6]).mean()), rel=1e-5)


def test_sigma_benchmark_independent_measures(held_out: torch.Tensor) -> None:
    from benchmarks.sigma_benchmark import independent_measures

    out = independent_measures(held_out[:4].numpy())
    assert out is not None and set(out) == KEYS and all(isinstance(v, float) for v in out.values())
    assert independent_measures(np.zeros((4, 3, 32, 32), dtype=np.float32)) is None
    assert independent_measures(None) is None


def test_fidelity_card_page_is_generated_from_data() -> None:
    from scripts.make_fidelity_card import render_page

    def row(name: str, kind: str, kid: float, fid: float, piqe_: float, conf: float, **extra) -> dict:
        return {"images": name, "kind": kind, "n": 200, "kid_mean": kid, "kid_std": 1.0, "fid": fid,
                "piqe_mean": piqe_, "classifier_confidence_mean": conf, "levels_q_mean": 4.0, **extra}  # fmt: skip

    meta = {"command": "python -m scripts.make_fidelity_card --n 200", "wall_time_s": 1.0, "hardware": "cpu"}
    meta |= {"reference": "ref", "held_out": "held", "kid": "k", "sampler": "s", "n": 200, "seed": 0, "boot": 50}
    deltas = {"d_kid": 1.0, "d_kid_boot_std": 2.0, "d_fid": -1.0, "d_fid_boot_std": 0.1}
    rows = [
        row("real", "real", 0.0, 4.0, 84.0, 0.88),
        row("sigma0", "model", 20.0, 40.0, 80.0, 0.8, r1_mean=0.0),
        row("eta1", "model", 21.0, 39.0, 75.0, 0.79, r1_mean=0.15, r1_sem=0.01, **deltas),
        row("noise", "degraded", 7.0, 12.0, 67.0, 0.85),
    ]
    page = render_page({"meta": meta, "rows": rows})
    assert "| eta1 | 200 | 21.00 +- 1.00 | 39.00 | 75.0 | 0.790 | 4.000 | +0.150 +- 0.010 |" in page
    assert "KID: every degraded set scores worse" in page
    assert "**PIQE disagrees**" in page and "noise" in page
    assert "KID indistinguishable (difference +1.00 +- 2.00" in page and "FID better (difference -1.00" in page
