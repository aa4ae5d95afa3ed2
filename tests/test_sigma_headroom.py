"""The per-image headroom bound (benchmarks/sigma_headroom.py): the statistic on synthetic returns, the loop on
the tiny UNet.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import sigma_headroom as sh


def test_crossfit_finds_image_dependent_best_action() -> None:
    rng = np.random.default_rng(0)
    grid = (0.0, 0.5, 1.0)
    index = np.repeat(np.arange(20), 16)
    # images 0-9 prefer a = 1 by 0.3, images 10-19 prefer a = 0.5 by 0.2; per-episode noise 0.05
    r1 = np.zeros((3, len(index)))
    r1[2] = np.where(index < 10, 0.6, 0.3)
    r1[1] = np.where(index < 10, 0.3, 0.5)
    r1[1:] += rng.normal(0, 0.05, (2, len(index)))
    out = sh.headroom(r1, index, grid)
    assert out["best_constant"] == 1.0 and out["n_images"] == 20
    assert out["crossfit_gain"] == pytest.approx(0.1, abs=0.02)  # half the images gain 0.2
    assert out["crossfit_gain_ci95"][0] > 0
    assert out["chosen"] == {"0": 0, "0.5": 20, "1": 20}


def test_crossfit_gain_is_unbiased_without_headroom() -> None:
    """Same distribution for every image: the in-sample oracle profits from noise, the cross-fit gain does not."""
    rng = np.random.default_rng(1)
    index = np.repeat(np.arange(64), 8)
    r1 = np.stack([np.zeros(len(index)), 0.5 + rng.normal(0, 0.3, len(index)), 0.55 + rng.normal(0, 0.3, len(index))])
    out = sh.headroom(r1, index, (0.0, 0.5, 1.0))
    lo, hi = out["crossfit_gain_ci95"]
    assert out["oracle_gain"] > 0.03 and lo < 0 < hi and out["crossfit_gain"] < out["oracle_gain"] / 2


def test_constant_r1_pairs_episodes_to_pool_images(kwargs_tiny, one_thread) -> None:
    kw = {**kwargs_tiny, "prefix_pool": 3}
    r1_a, idx_a = sh.constant_r1(1.0, kw, 10, batch_size=4, progress=False)
    r1_b, idx_b = sh.constant_r1(0.5, kw, 10, batch_size=4, progress=False)
    assert r1_a.shape == (10,) and np.array_equal(idx_a, idx_b) and set(idx_a) <= {0, 1, 2}
    assert not np.allclose(r1_a, r1_b)
    r1_0, _ = sh.constant_r1(0.0, kw, 4, progress=False)
    np.testing.assert_allclose(r1_0, 0.0, atol=1e-6)  # a = 0 is the baseline itself
    with pytest.raises(ValueError, match="prefix_pool"):
        sh.constant_r1(1.0, kwargs_tiny, 4, progress=False)


def test_demo_resolution_scales_the_paired_half_width_and_skips_a_zero_one(tmp_path, monkeypatch) -> None:
    import json

    monkeypatch.setattr(sh, "REPO_ROOT", tmp_path)
    assert sh._demo_resolution() == ""  # no docs/demo_eval.json
    (tmp_path / "docs").mkdir()
    path = tmp_path / "docs" / "demo_eval.json"
    path.write_text(json.dumps({"meta": {"n_samples": 200, "paired_vs_best": {"ci95": [-0.06, -0.02]}}}))
    text = sh._demo_resolution()
    assert "half-width of 0.020" in text and "about 0.013" in text  # 0.02 * sqrt(200 / 500)
    path.write_text(json.dumps({"meta": {"n_samples": 200, "paired_vs_best": {"ci95": [0.0, 0.0]}}}))
    assert sh._demo_resolution() == ""  # the agent played the constant exactly: nothing to scale


def test_across_images_finds_a_choice_that_generalises_and_not_a_random_one() -> None:
    rng = np.random.default_rng(1)
    grid = (0.5, 1.0)
    n = 40
    feature = rng.normal(size=(n, 3))
    # images whose first feature is > 0 prefer a = 0.5 by 0.2; the others a = 1 by 0.3
    per_image = np.stack([np.where(feature[:, 0] > 0, 0.5, 0.2), np.where(feature[:, 0] > 0, 0.3, 0.5)])
    res = sh.across_images(per_image, feature, grid, k=3)
    lo, hi = res["across_gain_ci95"]
    assert lo > 0 and res["across_gain"] > 0.05 and sum(res["across_chosen"].values()) == n
    noise = rng.normal(size=(n, 3))  # features that say nothing about the best action
    res_noise = sh.across_images(per_image, noise, grid, k=3)
    assert res_noise["across_gain"] < res["across_gain"]
    with pytest.raises(ValueError, match="need >= 4 images"):
        sh.across_images(per_image[:, :3], feature[:3], grid)


def test_pool_x_is_the_x_tc_a_pooled_reset_starts_from(tiny_unet_dir, contrast_evaluator) -> None:
    from robust_envs.envs.ddim_sigma import DDIMSigmaVectorEnv

    kw = {"model": str(tiny_unet_dir), "evaluator": contrast_evaluator, "t_c": 3, "stride": 400, "device": "cpu",
          "prefix_pool": 4}  # fmt: skip
    env = DDIMSigmaVectorEnv(num_envs=3, **kw)
    obs, _ = env.reset(seed=5)
    picks = list(env.sim.pool_index or [])
    np.testing.assert_allclose(env.sim.pool_x(picks).numpy(), obs["x_t"], atol=1e-6)
    feats = sh.image_features(kw, [0, 1, 2, 3])
    assert feats.shape == (4, 49) and np.isfinite(feats).all()
    env.close()


def test_image_features_kinds_shapes_and_standardisation(tiny_unet_dir, contrast_evaluator, one_thread) -> None:
    kw = {"model": str(tiny_unet_dir), "evaluator": contrast_evaluator, "t_c": 3, "stride": 400, "device": "cpu",
          "prefix_pool": 6}  # fmt: skip
    stats = sh.image_features(kw, list(range(6)), "stats")
    assert stats.shape == (6, 7) and np.isfinite(stats).all()
    np.testing.assert_allclose(stats.mean(0), 0.0, atol=1e-9)  # standardised per column
    assert np.all((np.abs(stats.std(0) - 1.0) < 1e-9) | (stats.std(0) == 0.0))
    with pytest.raises(ValueError, match="1 x 28 x 28"):  # the LeNet features need Fashion-MNIST-shaped images
        sh.image_features(kw, list(range(6)), "classifier")
    with pytest.raises(ValueError, match="feature kind must be one of"):
        sh.image_features(kw, [0], "pixels")
    per_image = np.random.default_rng(0).normal(size=(len(sh.GRID), 6))
    by = sh.across_by_features(per_image, kw, list(range(6)))
    assert set(by) == {"pooled", "stats"}  # 'classifier' does not apply to 8 x 8 images: skipped, not failed
    assert all("across_gain_ci95" in v for v in by.values())


def test_recompute_across_names_a_missing_record_and_updates_a_stored_one(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(sh, "RESULTS", tmp_path / "headroom.json")
    with pytest.raises(KeyError, match="no headroom record"):
        sh.recompute_across("seed/tc20/pool4x2")
    (tmp_path / "headroom.json").write_text('{"seed/tc20/pool4x2": {"t_c": 20, "threat": "seed", "pool": 4}}')
    with pytest.raises(ValueError, match="no per-image results"):
        sh.recompute_across("seed/tc20/pool4x2")
