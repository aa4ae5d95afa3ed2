"""agents.ppo_torch: trains on the tiny model on the device, saves / loads, evaluates through evaluate_sigma."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from agents.cli import parse_args
from agents.evaluate_sigma import evaluate_policy, load_policy
from agents.ppo_torch import Args, RunningMeanStd, SigmaActorCritic, TorchSigmaPolicy, train

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_args(kwargs_tiny, out_dir, **over) -> Args:
    kw = {k: v for k, v in kwargs_tiny.items() if k != "device"}
    base = {"num_envs": 4, "total_timesteps": 256, "n_steps": 16, "batch_size": 32, "n_epochs": 2,
            "prefix_pool": 4, "progress_bar": False, "tensorboard": False, "device": "cpu", "out_dir": str(out_dir)}  # fmt: skip
    return Args(**{**kw, **base, **over})


def test_trains_on_the_device_saves_loads_and_evaluates(kwargs_tiny, tmp_path, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("the training loop copied a tensor to numpy")

    monkeypatch.setattr(torch.Tensor, "numpy", boom)  # the loop must not leave the device (logging uses .tolist)
    args = tiny_args(kwargs_tiny, tmp_path / "run", tensorboard=True)
    result = train(args)
    monkeypatch.undo()
    assert result.env_steps == 256 and result.updates == 4 and result.seconds > 0
    assert all(math.isfinite(v) for v in result.last_losses.values()), result.last_losses
    assert len(result.episode_r1) == 4 and all(math.isfinite(r) for r in result.episode_r1)  # 16 steps = 4 episodes
    assert (tmp_path / "run" / "agent.pt").is_file() and list((tmp_path / "run" / "tb").rglob("events.*"))
    assert json.loads((tmp_path / "run" / "args.json").read_text())["trainer"] == "ppo_torch"
    agent = result.policy.agent
    assert float(agent.obs_rms_t.count) > 256  # the statistics followed every observation
    assert not torch.allclose(agent.actor[-1].weight, torch.zeros_like(agent.actor[-1].weight))

    loaded = load_policy(str(tmp_path / "run"))  # evaluate_sigma's own loader
    assert isinstance(loaded, TorchSigmaPolicy)
    rng = np.random.default_rng(0)
    obs = {"x_t": rng.normal(size=(5, 1, 8, 8)).astype(np.float32), "t": np.full((5, 1), 3.0, np.float32)}
    a1, state = result.policy.predict(obs, episode_start=np.ones(5, bool))
    a2, _ = loaded.predict(obs)
    assert a1.shape == (5, 1) and a1.dtype == np.float32 and state is None
    assert ((a1 >= 0) & (a1 <= 1)).all()
    np.testing.assert_allclose(a1, a2, atol=1e-6)
    a3 = loaded.act({k: torch.from_numpy(v) for k, v in obs.items()})  # the tensor path gives the same
    np.testing.assert_allclose(a3.numpy(), a1, atol=1e-6)
    res = evaluate_policy("ppo_torch", loaded, kwargs_tiny, n_samples=6, batch_size=3, seed=0, progress=False)
    assert res.r1.shape == (6,) and res.action_by_t.shape == (4,) and np.isfinite(res.r1).all()


def test_same_seed_same_training(kwargs_tiny, tmp_path) -> None:
    a = train(tiny_args(kwargs_tiny, tmp_path / "a", total_timesteps=64, n_epochs=1))
    b = train(tiny_args(kwargs_tiny, tmp_path / "b", total_timesteps=64, n_epochs=1))
    for p, q in zip(a.policy.agent.parameters(), b.policy.agent.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_gated_cnn_starts_time_only_and_old_flat_checkpoints_load(tmp_path) -> None:
    torch.manual_seed(0)
    agent = SigmaActorCritic((1, 8, 8), extractor="cnn_gated", log_std_init=0.0)
    assert isinstance(agent.actor_features, torch.nn.Module) and agent.actor_features is not agent.critic_features
    x = torch.randn(6, 1, 8, 8)
    t = torch.tensor([[1.0], [2.0], [3.0], [1.0], [2.0], [3.0]])
    f1 = agent.normalize({"x_t": x, "t": t})
    f2 = agent.normalize({"x_t": torch.randn(6, 1, 8, 8), "t": t})
    # the gate starts at zero: the policy and the value see t only, whatever x_t
    torch.testing.assert_close(agent.distribution(f1).mean, agent.distribution(f2).mean)
    torch.testing.assert_close(agent.value(f1), agent.value(f2))
    ungated = SigmaActorCritic((1, 8, 8), extractor="cnn")
    assert not torch.allclose(ungated.value(f1), ungated.value(f2))
    with pytest.raises(ValueError, match="extractor must be one of"):
        SigmaActorCritic((1, 8, 8), extractor="resnet")
    with pytest.raises(ValueError, match="extractor must be one of"):
        Args(extractor="resnet")
    # a checkpoint written before the CNN (no "extractor" key) loads as the flat MLP
    flat = TorchSigmaPolicy(SigmaActorCritic((1, 8, 8), extractor="flatten"))
    path = flat.save(tmp_path)
    blob = torch.load(path, weights_only=True)
    del blob["extractor"], blob["cnn_dim"]
    torch.save(blob, path)
    loaded = TorchSigmaPolicy.load(tmp_path)
    assert loaded.agent.extractor == "flatten"
    obs = {"x_t": x.numpy(), "t": t.numpy()}
    np.testing.assert_allclose(loaded.predict(obs)[0], flat.predict(obs)[0], atol=1e-6)


def test_flat_extractor_trains_and_delta_r1_is_the_return(kwargs_tiny, tmp_path) -> None:
    res = train(tiny_args(kwargs_tiny, tmp_path / "flat", extractor="flatten", total_timesteps=64, n_epochs=1))
    assert res.policy.agent.extractor == "flatten" and TorchSigmaPolicy.load(tmp_path / "flat").agent.extractor == "flatten"
    assert all(math.isfinite(r) for r in res.episode_r1)
    # under "delta" the logged r_1 is the episode's return; under "paper" its last reward: the same Eq. 18 quantity,
    # so the same seed gives the same first-update r_1 (the actions agree: same seed, same initial policy)
    paper = train(tiny_args(kwargs_tiny, tmp_path / "paper", extractor="flatten", total_timesteps=64, n_epochs=1,
                            reward="paper"))  # fmt: skip
    assert res.episode_r1[0] == pytest.approx(paper.episode_r1[0], abs=1e-5)


def test_running_mean_std_matches_numpy() -> None:
    rms = RunningMeanStd((3,))
    data = torch.randn(50, 3) * 2 + 1
    for chunk in data.split(7):
        rms.update(chunk)
    np.testing.assert_allclose(rms.mean.numpy(), data.mean(0).numpy(), atol=1e-3)
    np.testing.assert_allclose(rms.var.numpy(), data.var(0, unbiased=False).numpy(), rtol=1e-2)


def test_action_convention_and_args() -> None:
    u = torch.tensor([[-3.0], [-1.0], [0.0], [1.0], [2.0]])
    np.testing.assert_allclose(SigmaActorCritic.to_env(u).numpy()[:, 0], [0.0, 0.0, 0.5, 1.0, 1.0])
    args = parse_args(Args, ["--t-c", "3", "--tensorboard", "false", "--learning-rate", "1e-3"])
    assert args.t_c == 3 and args.tensorboard is False and args.learning_rate == 1e-3
    assert (Args().gamma, Args().clip_range) == (0.995, 0.2)  # seed 000
    with pytest.raises(ValueError, match="n_steps must be >= 1, got 0"):
        Args(n_steps=0)
    with pytest.raises(FileNotFoundError, match="agents.ppo_torch"):
        TorchSigmaPolicy.load("/nonexistent/folder")


@pytest.mark.slow
def test_benchmark_script_smoke(tiny_unet_dir, tmp_path) -> None:
    """benchmarks/ppo_torch.py end to end with tiny budgets: both learners, the evaluation, JSON and report."""
    from benchmarks import ppo_torch as bench

    bench.main(["--t-c", "2", "--total-timesteps", "16", "--num-envs", "2", "--n-steps", "8", "--batch-size", "8",
                "--n-samples", "4", "--model", str(tiny_unet_dir), "--evaluator", "piqe", "--env-episodes", "1",
                "--results", str(tmp_path / "r.json"), "--doc", str(tmp_path / "doc.md")])  # fmt: skip
    data = json.loads((tmp_path / "r.json").read_text())
    run = data["runs"][0]
    assert run["sb3_ppo"]["env_steps"] == run["ppo_torch"]["env_steps"] == 16
    assert [r["schedule"] for r in run["eval"]][:2] == ["sb3_ppo", "ppo_torch"] and len(run["eval"]) == 7
    doc = (tmp_path / "doc.md").read_text()
    assert "## Verdict" in doc and "| 0 | ppo_torch |" in doc and data["verdict"] in doc
