from __future__ import annotations

import json

import gymnasium as gym
import pytest
import torch

import robust_envs  # noqa: F401
from robust_envs.presets import PRESETS, SEED000_CELEBA64, PresetNotReady, main
from tests.test_checkpoints import DDIM_CFG, _save_ddim_run


def test_seed000_settings() -> None:
    p = SEED000_CELEBA64
    assert PRESETS["seed000_celeba64"] is p
    assert p.evaluator == "qalign" and p.t_c_grid == (10, 20, 30, 40, 50, 60) and p.n_eval == 500
    kw = p.env_kwargs(t_c=40)
    assert kw["attack"] == "gaussian" and kw["attack_scale"] == 0.01 and kw["attack_clip"] == 0.05
    assert kw["baseline_sigma"] == 0.0 and kw["t_c"] == 40 and kw["device"] == "cuda"
    assert p.ppo == {"clip_range": 0.2, "gamma": 0.995}
    with pytest.raises(ValueError, match="t_c must be a positive int"):
        p.env_kwargs(t_c=0)


def test_check_names_what_is_missing(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("ROBUST_ENVS_CELEBA64_DDIM", str(tmp_path / "nothing" / "ckpt.pth"))
    gaps = {r.what: r for r in SEED000_CELEBA64.missing()}
    assert "ROBUST_ENVS_CELEBA64_DDIM" in gaps["DDIM checkpoint"].detail
    kinds = {r.kind for r in gaps.values()}
    if not torch.cuda.is_available():
        assert {"gpu", "memory"} <= kinds
    with pytest.raises(PresetNotReady, match=r"(?s)missing:.*\[weights\] DDIM checkpoint.*ermongroup/ddim"):
        SEED000_CELEBA64.require()
    assert main(["check", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)["seed000_celeba64"]
    assert {r["kind"] for r in report} >= {"weights", "gpu", "memory", "package", "data"}


def test_preset_runs_on_a_checkpoint_in_the_original_format(tmp_path, monkeypatch, contrast_evaluator) -> None:
    """The preset's env arguments, with a tiny random DDIM in the CelebA checkpoint's format, on the CPU (stride
    raised to keep the prefix to two network calls)."""
    _save_ddim_run(tmp_path, DDIM_CFG)
    monkeypatch.setenv("ROBUST_ENVS_CELEBA64_DDIM", str(tmp_path / "ckpt.pth"))
    weights = next(r for r in SEED000_CELEBA64.check() if r.kind == "weights" and "DDIM" in r.what)
    assert weights.ok and "config.yml" in weights.detail
    env = gym.make(
        "DDIMSigma-v0", **SEED000_CELEBA64.env_kwargs(t_c=60, device="cpu", evaluator=contrast_evaluator, stride=500)
    )
    obs, _ = env.reset(seed=0)
    assert obs["x_t"].shape == (3, 16, 16) and float(obs["t"][0]) == 60.0
    env.close()
