from __future__ import annotations

import json

import numpy as np
import pytest

from agents.evaluate_sigma import evaluate_policy, markdown_table, save_figure, summarize, write_report
from agents.reference import ConstantEta, RandomEta


@pytest.fixture()
def env_kwargs(tiny_unet_dir, contrast_evaluator) -> dict:
    return {"model": str(tiny_unet_dir), "evaluator": contrast_evaluator, "t_c": 3, "stride": 400, "device": "cpu"}


def test_eta_zero_policy_scores_exactly_zero_and_schedules_share_draws(env_kwargs, tmp_path) -> None:
    zero = evaluate_policy(
        "eta=0", ConstantEta(0.0), env_kwargs, n_samples=5, batch_size=2, seed=3, keep=3, progress=False
    )
    assert zero.r1.shape == (5,) and (zero.r1 == 0).all() and (zero.q0_agent == zero.q0_baseline).all()
    assert zero.x0_agent.shape == (3, 1, 8, 8) and 0 <= zero.x0_agent.min() and zero.x0_agent.max() <= 1
    one = evaluate_policy("eta=1", ConstantEta(1.0), env_kwargs, n_samples=5, batch_size=5, seed=3, progress=False)
    np.testing.assert_allclose(one.q0_baseline, zero.q0_baseline, atol=1e-5)  # same x_T, same draws
    assert (one.r1 != 0).any() and np.allclose(one.mean_eta, 1.0)
    rows = summarize([zero, one])
    assert rows[0]["mean_r1"] == 0.0 and rows[0]["r1_ci95"] == [0.0, 0.0] and not rows[0]["significant"]
    lo, hi = rows[1]["r1_ci95"]
    assert lo <= rows[1]["mean_r1"] <= hi
    path = write_report(rows, {"env_kwargs": {"t_c": 3}}, tmp_path)
    assert json.loads(path.read_text())["rows"][1]["schedule"] == "eta=1"
    assert "| eta=1 | 5 |" in markdown_table(rows)
    save_figure(one, tmp_path / "fig.png", "test")
    assert (tmp_path / "fig.png").stat().st_size > 0


def test_reference_policies() -> None:
    obs = {"x_t": np.zeros((4, 1, 8, 8), np.float32), "t": np.ones((4, 1), np.float32)}
    action, _ = ConstantEta(0.5).predict(obs)
    assert action.shape == (4, 1) and (action == 0.5).all()
    a1, _ = RandomEta(0).predict(obs)
    a2, _ = RandomEta(0).predict(obs)
    np.testing.assert_array_equal(a1, a2)
    assert ((a1 >= 0) & (a1 <= 1)).all()
    with pytest.raises(ValueError, match=r"eta must be in \[0, 1\], got 1.5"):
        ConstantEta(1.5)


def test_demo_smoke(tiny_unet_dir, tmp_path, monkeypatch) -> None:
    """The main job end to end with tiny budgets and the tiny model: report, figure and docs page."""
    from agents import demo

    monkeypatch.chdir(tmp_path)
    demo.main(["--model", str(tiny_unet_dir), "--evaluator", "piqe", "--t-c", "2", "--stride", "500",
               "--num-envs", "2", "--total-timesteps", "16", "--n-steps", "8", "--batch-size", "8",
               "--no-progress-bar", "--n-samples", "3", "--out-dir", "out", "--docs", "docs"])  # fmt: skip
    rows = json.loads((tmp_path / "out" / "eval.json").read_text())["rows"]
    assert [r["schedule"] for r in rows] == ["PPO", "eta=0.5", "eta=1.0", "random eta"]
    assert (tmp_path / "out" / "ppo_sigma.zip").is_file() and (tmp_path / "out" / "x0_agent_vs_baseline.png").is_file()
    assert "| PPO | 3 |" in (tmp_path / "docs" / "demo.md").read_text()
