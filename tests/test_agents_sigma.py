from __future__ import annotations

import json

import numpy as np
import pytest

from agents.evaluate_sigma import evaluate_policy, markdown_table, save_figure, summarize, write_report
from agents.reference import ConstantAction, RandomAction, TimeSchedule


@pytest.fixture()
def env_kwargs(tiny_unet_dir, contrast_evaluator) -> dict:
    return {"model": str(tiny_unet_dir), "evaluator": contrast_evaluator, "t_c": 3, "stride": 400, "device": "cpu"}


def test_eta_zero_policy_scores_exactly_zero_and_schedules_share_draws(env_kwargs, tmp_path) -> None:
    zero = evaluate_policy(
        "eta=0", ConstantAction(0.0), env_kwargs, n_samples=5, batch_size=2, seed=3, keep=3, progress=False
    )
    assert zero.r1.shape == (5,) and (zero.r1 == 0).all() and (zero.q0_agent == zero.q0_baseline).all()
    assert zero.x0_agent.shape == (3, 1, 8, 8) and 0 <= zero.x0_agent.min() and zero.x0_agent.max() <= 1
    one = evaluate_policy("eta=1", ConstantAction(1.0), env_kwargs, n_samples=5, batch_size=5, seed=3, progress=False)
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


def test_r1_does_not_depend_on_the_reward_option(env_kwargs) -> None:
    results = {mode: evaluate_policy(mode, ConstantAction(0.8), {**env_kwargs, "reward": mode}, n_samples=3, seed=5,
                                     progress=False) for mode in ("paper", "delta", "final")}  # fmt: skip
    assert (results["paper"].r1 != 0).any()
    for mode in ("delta", "final"):
        np.testing.assert_array_equal(results[mode].r1, results["paper"].r1)
    np.testing.assert_allclose(results["delta"].episode_return, results["paper"].r1, atol=1e-5)  # shaping telescopes


def test_reference_policies() -> None:
    obs = {"x_t": np.zeros((4, 1, 8, 8), np.float32), "t": np.ones((4, 1), np.float32)}
    action, _ = ConstantAction(0.5).predict(obs)
    assert action.shape == (4, 1) and (action == 0.5).all()
    a1, _ = RandomAction(0).predict(obs)
    a2, _ = RandomAction(0).predict(obs)
    np.testing.assert_array_equal(a1, a2)
    assert ((a1 >= 0) & (a1 <= 1)).all()
    with pytest.raises(ValueError, match=r"a must be in \[0, 1\], got 1.5"):
        ConstantAction(1.5)
    sched = TimeSchedule([0.9, 0.5, 0.1])  # t = 3, 2, 1
    obs_t = {"x_t": np.zeros((3, 1, 8, 8), np.float32), "t": np.array([[3.0], [1.0], [2.0]], np.float32)}
    np.testing.assert_allclose(sched.predict(obs_t)[0], [[0.9], [0.1], [0.5]])
    with pytest.raises(ValueError, match=r"t must be in \[1, 3\]"):
        sched.predict({"x_t": obs_t["x_t"][:1], "t": np.array([[4.0]], np.float32)})
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        TimeSchedule([0.5, 1.2])


def test_demo_smoke(tiny_unet_dir, tmp_path, monkeypatch) -> None:
    """The main job end to end with tiny budgets and the tiny model: report, figure and docs page."""
    from agents import demo

    monkeypatch.chdir(tmp_path)
    demo.main(["--model", str(tiny_unet_dir), "--evaluator", "piqe", "--t-c", "2", "--stride", "500",
               "--num-envs", "2", "--total-timesteps", "16", "--n-steps", "8", "--batch-size", "8",
               "--no-progress-bar", "--n-samples", "3", "--out-dir", "out", "--docs", "docs"])  # fmt: skip
    rows = json.loads((tmp_path / "out" / "eval.json").read_text())["rows"]
    assert [r["schedule"] for r in rows] == ["PPO", "a=0.25", "a=0.5", "a=0.75", "a=1", "random"]
    assert (tmp_path / "out" / "policy.zip").is_file() and (tmp_path / "out" / "x0_agent_vs_baseline.png").is_file()
    assert len(rows[0]["action_by_t"]) == 2
    page = (tmp_path / "docs" / "demo.md").read_text()
    assert "| PPO | 3 |" in page
    meta = json.loads((tmp_path / "out" / "eval.json").read_text())["meta"]
    assert meta["env_kwargs"]["attack"] == "shift" and meta["env_kwargs"]["attack_budget"] == 20.0  # the demo's threat
    cost = meta["threat_cost"]  # the unattacked sigma = 0 schedule on the same samples, paired
    assert cost["mean"] == pytest.approx(cost["q0_threat"] - cost["q0_no_threat"])
    assert cost["ci95"][0] <= cost["mean"] <= cost["ci95"][1]
    assert "the shift threat (every t <= t_c seen by the network as t + 20)" in page
    demo.main(["--docs-from-run", "out", "--docs", "docs2"])  # the docs again from the finished run, no training
    assert (tmp_path / "docs2" / "demo.md").read_text() == (tmp_path / "docs" / "demo.md").read_text()
    with pytest.raises(FileNotFoundError, match="nowhere/eval.json not found"):
        demo.main(["--docs-from-run", "nowhere", "--docs", "docs3"])


def test_demo_cell_is_the_benchmarks_shift_threat() -> None:
    """The demo trains in a cell of docs/sigma_benchmark.md: its threat is the benchmark's `shift`."""
    from agents import demo
    from benchmarks.sigma_benchmark import THREATS

    assert demo.DEMO_THREAT == THREATS["shift"]
    assert demo.DEMO_T_C in (10, 20, 30, 40, 50, 60)
    rows = [{"schedule": "PPO", "r1_ci95": [0.1, 0.2], "mean_r1": 0.15, "mean_eta": 1.0},
            {"schedule": "a=1", "r1_ci95": [0.1, 0.2], "mean_r1": 0.15, "mean_eta": 1.0}]
    text = demo._reading(rows, {"env_kwargs": {"attack": "gaussian"},
                                "paired_vs_best": {"best": "a=1", "mean": 0.0, "ci95": [0.0, 0.0]}})  # fmt: skip
    assert "PPO (mean action 1.00) matches" in text and "no measurable effect" in text  # the paper's attack
    # `beats` needs the paired CI above 0 (as the benchmark's verdict), not only PPO's CI above the best mean
    text = demo._reading(rows, {"env_kwargs": {"attack": "shift", "attack_budget": 20.0},
                                "paired_vs_best": {"best": "a=1", "mean": 0.02, "ci95": [0.01, 0.03]}})  # fmt: skip
    assert "PPO (mean action 1.00) beats" in text and "the shift threat" in text
    # every a > 0 below 0: the best constant is a = 0, the sigma = 0 baseline itself, and PPO pairs with it as its
    # own r_1 (a record against another constant is not used)
    rows = [{"schedule": "PPO", "r1_ci95": [0.02, 0.08], "mean_r1": 0.05, "mean_eta": 0.4},
            {"schedule": "a=0.75", "r1_ci95": [-0.02, 0.01], "mean_r1": -0.003, "mean_eta": 0.75}]
    text = demo._reading(rows, {"env_kwargs": {"attack": "shift", "attack_budget": 20.0},
                                "paired_vs_best": {"best": "a=0.75", "mean": 0.053, "ci95": [0.04, 0.07]}})  # fmt: skip
    assert "beats the best constant action of the grid, a=0 (sigma = 0 itself" in text
    assert "PPO minus a=0: +0.0500 [+0.0200, +0.0800]" in text and "a=0.75" not in text


@pytest.mark.parametrize("algo", ["ppo", "ppo_beta", "ppo_cnn_sde", "ppo_cnn_shared", "sac", "tqc", "recurrent_ppo"])
def test_every_learner_trains_saves_loads_and_evaluates(env_kwargs, tmp_path, algo) -> None:
    """The agent-agnostic check: each learner on the same env, through the same policy wrapper."""
    from agents.ppo_sigma import Args, SB3SigmaPolicy, train

    kw = {k: v for k, v in env_kwargs.items() if k != "evaluator"}
    extra = {"ppo_beta": {"distribution": "beta"}, "ppo_cnn_sde": {"extractor": "cnn", "use_sde": True},
             "ppo_cnn_shared": {"extractor": "cnn", "share_extractor": True, "gae_lambda": 0.95, "ent_coef": "0"},
             "sac": {"gradient_steps": 2}}.get(algo, {})  # fmt: skip
    args = Args(algo=algo.split("_")[0] if algo.startswith("ppo") else algo, **kw, **extra, evaluator="piqe", num_envs=2, total_timesteps=24,
                n_steps=6, batch_size=6, prefix_pool=4, progress_bar=False, tensorboard=False,
                out_dir=str(tmp_path / algo))  # fmt: skip
    policy = train(args)
    if algo.startswith("ppo") or algo == "recurrent_ppo":  # PPO's entropy bonus: 'auto' is PPO_ENT_COEF (0.01)
        assert policy.model.ent_coef == (0.0 if algo == "ppo_cnn_shared" else 0.01)
    else:  # SAC / TQC: 'auto' stays SB3's learnt coefficient
        assert policy.model.ent_coef == "auto"
    loaded = SB3SigmaPolicy.load(tmp_path / algo)
    obs = {"x_t": np.zeros((3, 1, 8, 8), np.float32), "t": np.full((3, 1), 3.0, np.float32)}
    a1, _ = policy.predict(obs, episode_start=np.ones(3, bool))
    a2, _ = loaded.predict(obs, episode_start=np.ones(3, bool))
    assert a1.shape == (3, 1) and ((a1 >= 0) & (a1 <= 1)).all()
    np.testing.assert_allclose(a1, a2, atol=1e-6)
    res = evaluate_policy(algo, loaded, env_kwargs, n_samples=3, batch_size=3, seed=0, progress=False)
    assert res.r1.shape == (3,) and res.action_by_t.shape == (3,)


@pytest.mark.parametrize("algo", ["ppo", "recurrent_ppo"])
def test_init_action_starts_the_policy_at_that_constant(env_kwargs, tmp_path, algo) -> None:
    """``init_action`` (a start at a fixed schedule): before any update the policy's mean action is that constant
    at every state; the default 0.5 is SB3's own start (the middle of the box)."""
    from agents.ppo_sigma import Args, train

    kw = {k: v for k, v in env_kwargs.items() if k != "evaluator"}
    rng = np.random.default_rng(0)
    obs = {"x_t": rng.normal(size=(4, 1, 8, 8)).astype(np.float32), "t": np.array([[1.0], [2.0], [3.0], [3.0]], np.float32)}
    for init in (0.5, 0.9):  # learning rate 0: the start is what is saved
        args = Args(algo=algo, **kw, evaluator="piqe", init_action=init, learning_rate=0.0, num_envs=2, total_timesteps=12,
                    n_steps=6, batch_size=6, prefix_pool=4, progress_bar=False, tensorboard=False,
                    out_dir=str(tmp_path / f"{algo}{init}"))  # fmt: skip
        action, _ = train(args).predict(obs, episode_start=np.ones(4, bool), deterministic=True)
        np.testing.assert_allclose(action, init, atol=0.02)


def test_edge_margin_starts_the_mean_past_an_edge_and_still_plays_the_edge(env_kwargs, tmp_path) -> None:
    """``edge_margin``: an edge start (a = 1 or 0) puts the Gaussian's mean that many initial stds past the edge,
    the deterministic action is still the edge (clipped), and an inner start is not moved."""
    from agents.ppo_sigma import Args, initial_mean, train

    assert initial_mean(1.0, 1.0, 0.0) == pytest.approx(2.0) and initial_mean(0.0, 2.0, np.log(0.5)) == pytest.approx(-2.0)
    assert initial_mean(0.75, 3.0) == pytest.approx(0.5) and initial_mean(1.0) == pytest.approx(1.0)
    # edge_margin_side: "upper" moves a = 1 only, "lower" a = 0 only
    assert initial_mean(1.0, 1.0, 0.0, "upper") == pytest.approx(2.0) and initial_mean(0.0, 1.0, 0.0, "upper") == -1.0
    assert initial_mean(0.0, 1.0, 0.0, "lower") == pytest.approx(-2.0) and initial_mean(1.0, 1.0, 0.0, "lower") == 1.0
    with pytest.raises(ValueError, match="side must be one of .* got 'top'"):
        initial_mean(1.0, 1.0, 0.0, "top")
    kw = {k: v for k, v in env_kwargs.items() if k != "evaluator"}
    obs = {"x_t": np.zeros((2, 1, 8, 8), np.float32), "t": np.array([[1.0], [3.0]], np.float32)}
    for init in (0.0, 1.0):
        args = Args(**kw, evaluator="piqe", init_action=init, edge_margin=1.0, learning_rate=0.0, num_envs=2,
                    total_timesteps=12, n_steps=6, batch_size=6, prefix_pool=4, progress_bar=False, tensorboard=False,
                    out_dir=str(tmp_path / f"edge{init}"))  # fmt: skip
        policy = train(args)
        bias = policy.model.policy.action_net.bias.detach().numpy()
        np.testing.assert_allclose(bias, 2.0 * init - 1.0 + (1.0 if init else -1.0), atol=1e-6)
        action, _ = policy.predict(obs, deterministic=True)
        np.testing.assert_allclose(action, init, atol=1e-6)
    with pytest.raises(ValueError, match=r"edge_margin must be in \[0, 5\] .* got -1.0"):
        Args(edge_margin=-1.0)
    with pytest.raises(ValueError, match="edge_margin=1.0 moves the Gaussian's initial mean"):
        Args(algo="sac", edge_margin=1.0)
    with pytest.raises(ValueError, match=r"edge_margin_side must be one of \('both', 'upper', 'lower'\), got 'cap'"):
        Args(edge_margin=1.0, edge_margin_side="cap")
    # "upper": the a = 0 start stays on the edge (the bias the learner starts from is exactly -1)
    args = Args(**kw, evaluator="piqe", init_action=0.0, edge_margin=1.0, edge_margin_side="upper", learning_rate=0.0,
                num_envs=2, total_timesteps=12, n_steps=6, batch_size=6, prefix_pool=4, progress_bar=False,
                tensorboard=False, out_dir=str(tmp_path / "upper0"))  # fmt: skip
    np.testing.assert_allclose(train(args).model.policy.action_net.bias.detach().numpy(), -1.0, atol=1e-6)


def test_warm_start_picks_its_best_constant_on_its_own_seeds_and_spends_the_budget(env_kwargs, tmp_path) -> None:
    """``warm_start``: each constant runs the same training episodes (seeds apart from the evaluation's), the
    learner starts at the one with the largest mean r_1 (a = 0 scores 0 exactly), and those episodes are paid from
    ``total_timesteps``."""
    from agents.evaluate_sigma import CONSTANT_GRID
    from agents.ppo_sigma import WARM_START_SEED, Args, train, warm_start_steps

    kw = {k: v for k, v in env_kwargs.items() if k != "evaluator"}
    args = Args(**kw, evaluator="piqe", warm_start=3, learning_rate=0.0, num_envs=2, total_timesteps=60, n_steps=6,
                batch_size=6, prefix_pool=4, seed=1, progress_bar=False, tensorboard=False, out_dir=str(tmp_path))  # fmt: skip
    assert warm_start_steps(args) == 3 * len(CONSTANT_GRID) * 3
    policy = train(args)
    record = json.loads((tmp_path / "warm_start.json").read_text())
    assert record["seeds"] == [WARM_START_SEED + 10_000, WARM_START_SEED + 10_002] and record["mean_r1"]["0"] == 0.0
    means = {a: evaluate_policy("a", ConstantAction(a), {**kw, "evaluator": "piqe"}, n_samples=3,
                                seed=WARM_START_SEED + 10_000, progress=False).r1.mean() for a in CONSTANT_GRID}  # fmt: skip
    for a, m in means.items():
        assert record["mean_r1"][f"{a:g}"] == pytest.approx(m, abs=1e-6)
    best = max([0.0, *means], key=lambda a: means.get(a, 0.0))
    assert record["init_action"] == best and record["env_steps"] == 36
    obs = {"x_t": np.zeros((2, 1, 8, 8), np.float32), "t": np.array([[1.0], [3.0]], np.float32)}
    action, _ = policy.predict(obs, deterministic=True)  # learning rate 0: the start is what is saved
    np.testing.assert_allclose(action, best, atol=0.02)
    assert policy.model.num_timesteps <= 60 - 36 + args.num_envs * args.n_steps  # the rest of the budget, whole rollouts
    with pytest.raises(ValueError, match="warm_start=2 picks init_action itself"):
        Args(warm_start=2, init_action=1.0)
    with pytest.raises(ValueError, match=r"warm_start=9 spends 720 env steps .* total_timesteps=700"):
        Args(warm_start=9, t_c=20, total_timesteps=700)
    with pytest.raises(ValueError, match="warm_start must be >= 0"):
        Args(warm_start=-1)


def test_time_only_ablation_sees_only_t(env_kwargs, tmp_path) -> None:
    from agents.ppo_sigma import Args, SB3SigmaPolicy, train

    kw = {k: v for k, v in env_kwargs.items() if k != "evaluator"}
    args = Args(**kw, evaluator="piqe", observe="t", num_envs=2, total_timesteps=12, n_steps=6, batch_size=6,
                prefix_pool=4, progress_bar=False, tensorboard=False, out_dir=str(tmp_path))  # fmt: skip
    train(args)
    loaded = SB3SigmaPolicy.load(tmp_path)
    assert list(loaded.model.observation_space.spaces) == ["t"]
    obs = {
        "x_t": np.random.default_rng(0).normal(size=(2, 1, 8, 8)).astype(np.float32),
        "t": np.full((2, 1), 2.0, np.float32),
    }
    a, _ = loaded.predict(obs)
    assert a[0, 0] == a[1, 0]  # the action cannot depend on x_t
    with pytest.raises(ValueError, match="observe must be one of"):
        Args(observe="x_t")


def test_learner_args_reject_bad_values() -> None:
    from agents.ppo_sigma import Args

    with pytest.raises(ValueError, match="distribution must be 'gaussian' or 'beta', got 'cauchy'"):
        Args(distribution="cauchy")
    with pytest.raises(ValueError, match="algo='ppo' only, got algo='sac'"):
        Args(algo="sac", distribution="beta")
    with pytest.raises(ValueError, match="gradient_steps must be -1 .* got 0"):
        Args(algo="sac", gradient_steps=0)
    with pytest.raises(ValueError, match=r"gae_lambda must be in \[0, 1\], got 1.5"):
        Args(gae_lambda=1.5)
    with pytest.raises(ValueError, match="ent_coef must be .* got 'lots'"):
        Args(algo="sac", ent_coef="lots")
    with pytest.raises(ValueError, match="'auto_0.1' .* is for SAC / TQC"):
        Args(algo="ppo", ent_coef="auto_0.1")
    with pytest.raises(ValueError, match="extractor must be 'auto', 'flatten', 'cnn' or 'cnn_gated', got 'vit'"):
        Args(extractor="vit")
    with pytest.raises(ValueError, match=r"init_action must be in \[0, 1\] .* got 1.5"):
        Args(init_action=1.5)
    with pytest.raises(ValueError, match="init_action=1.0 is implemented for algo 'ppo' / 'recurrent_ppo'"):
        Args(algo="sac", init_action=1.0)
    from agents.ppo_sigma import parse_args, resolved_extractor

    assert resolved_extractor(Args()) == "cnn_gated" and resolved_extractor(Args(observe="t")) == "flatten"
    assert resolved_extractor(parse_args(["--observe", "t"])) == "flatten"
    with pytest.raises(ValueError, match="extractor='cnn_gated' needs x_t observed"):
        Args(extractor="cnn_gated", observe="t")
    assert resolved_extractor(Args(observe="x_t,t,q")) == "cnn_gated" and resolved_extractor(Args(observe="t,q")) == "flatten"


def test_cnn_extractor_keeps_t_as_a_feature_and_rejects_other_spaces() -> None:
    import gymnasium as gym
    import torch

    from agents.sigma_extractor import SigmaCnnExtractor

    space = gym.spaces.Dict({"x_t": gym.spaces.Box(-5, 5, (1, 8, 8), np.float32), "t": gym.spaces.Box(0, 4, (1,), np.float32)})
    ext = SigmaCnnExtractor(space, cnn_dim=4)
    t = torch.tensor([[1.0], [3.0]])
    feats = ext({"x_t": torch.randn(2, 1, 8, 8), "t": t})
    assert feats.shape == (2, 6) and ext.features_dim == 6
    torch.testing.assert_close(feats[:, 4:], torch.cat([t, t * t], dim=1))
    with pytest.raises(ValueError, match="keys 'x_t', 't'"):
        SigmaCnnExtractor(gym.spaces.Dict({"t": space.spaces["t"]}))
    # the env's observe_quality key rides next to t, outside the image code (and its gate)
    with_q = gym.spaces.Dict({**space.spaces, "q_x0": gym.spaces.Box(1, 5, (1,), np.float32)})
    ext_q = SigmaCnnExtractor(with_q, cnn_dim=4, gated=True)
    q = torch.tensor([[2.5], [4.0]])
    feats_q = ext_q({"x_t": torch.randn(2, 1, 8, 8), "t": t, "q_x0": q})
    assert ext_q.features_dim == 7 and feats_q.shape == (2, 7)
    torch.testing.assert_close(feats_q[:, 4:], torch.cat([t, t * t, q], dim=1))
    torch.testing.assert_close(feats_q[:, :4], torch.zeros(2, 4))  # the gate starts closed
    with pytest.raises(ValueError, match="H, W >= 8"):
        SigmaCnnExtractor(gym.spaces.Dict({"x_t": gym.spaces.Box(-5, 5, (1, 4, 4)), "t": space.spaces["t"]}))


def test_gated_extractor_starts_time_only_and_opens_under_training() -> None:
    """ReZero gate: zero image code at init, also after SB3's orthogonal init; one PPO update moves the gate."""
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO

    from agents.sigma_extractor import SigmaCnnExtractor

    space = gym.spaces.Dict({"x_t": gym.spaces.Box(-5, 5, (1, 8, 8), np.float32), "t": gym.spaces.Box(0, 4, (1,), np.float32)})

    class Bandit(gym.Env):
        observation_space, action_space = space, gym.spaces.Box(0, 1, (1,), np.float32)

        def reset(self, seed=None, options=None):  # type: ignore[no-untyped-def]
            super().reset(seed=seed)
            return self.observation_space.sample(), {}

        def step(self, action):  # type: ignore[no-untyped-def]
            obs = self.observation_space.sample()
            return obs, float(action[0]) * float(obs["x_t"].mean()), False, True, {}  # the best action depends on x_t

    model = PPO("MultiInputPolicy", Bandit(), n_steps=32, batch_size=16, n_epochs=2, seed=0, device="cpu",
                policy_kwargs={"features_extractor_class": SigmaCnnExtractor, "features_extractor_kwargs": {"gated": True}})  # fmt: skip
    ext = model.policy.features_extractor
    assert ext.gate is not None and torch.count_nonzero(ext.gate) == 0
    obs, t = torch.randn(3, 1, 8, 8), torch.tensor([[1.0], [1.0], [1.0]])
    feats = ext({"x_t": obs, "t": t})
    torch.testing.assert_close(feats[:, :16], torch.zeros(3, 16))  # same t -> same features, whatever x_t
    model.learn(64)
    assert torch.count_nonzero(ext.gate) > 0
    assert not torch.allclose(ext({"x_t": obs, "t": t})[0], ext({"x_t": obs, "t": t})[1])
    assert SigmaCnnExtractor(space, cnn_dim=4).gate is None  # the ungated default is unchanged


def test_sb3_policy_undoes_the_training_transforms() -> None:
    """The wrapper applies VecNormalize's frozen statistics and maps [-1, 1] back to [0, 1]."""
    from stable_baselines3.common.running_mean_std import RunningMeanStd

    from agents.ppo_sigma import SB3SigmaPolicy

    class Echo:
        def predict(self, obs, state=None, episode_start=None, deterministic=True):
            return obs["t"].copy(), state

    rms = {"x_t": RunningMeanStd(shape=(1, 8, 8)), "t": RunningMeanStd(shape=(1,))}
    rms["t"].mean, rms["t"].var = np.array([2.0]), np.array([4.0])
    policy = SB3SigmaPolicy(Echo(), rms)
    obs = {"x_t": np.zeros((3, 1, 8, 8), np.float32), "t": np.array([[0.0], [2.0], [6.0]], np.float32)}
    action, _ = policy.predict(obs)
    np.testing.assert_allclose(action[:, 0], [0.0, 0.5, 1.0], atol=1e-4)  # (t - 2) / 2 = -1, 0, 2 -> clipped


def test_hold_action_is_one_decision_per_episode_with_return_r1(env_kwargs, tmp_path) -> None:
    """The per-image-constant learner: the wrapper runs a whole lockstep episode per learner step and returns r_1
    (the `delta` reward's sum); the trained policy holds its first action for the episode."""
    from agents.ppo_sigma import Args, SB3SigmaPolicy, make_train_env, train

    kw = {k: v for k, v in env_kwargs.items() if k != "evaluator"}
    args = Args(**kw, evaluator="piqe", hold_action=True, num_envs=2, total_timesteps=3 * 6, n_steps=2,
                batch_size=2, prefix_pool=0, normalize_obs=False, normalize_reward=False, progress_bar=False,
                tensorboard=False, out_dir=str(tmp_path))  # fmt: skip
    venv = make_train_env(args)
    venv.seed(0)
    venv.reset()
    obs, reward, dones, infos = venv.step(np.array([[1.0], [0.2]], dtype=np.float32))  # a = 1 and a = 0.6
    assert dones.all() and obs["t"][:, 0].tolist() == [3.0, 3.0]  # the next episode's first observation
    r1 = np.array([i["q0_agent"] - i["q0_baseline"] for i in infos])
    np.testing.assert_allclose(reward, r1, atol=1e-5)
    assert [i["episode"]["l"] for i in infos] == [1, 1]  # VecMonitor: one learner step per episode
    venv.close()
    policy = train(args)
    # 18 env steps at t_c 3 are 6 decisions: SB3 collects whole rollouts of 2 envs x 2 decisions
    assert policy.model.num_timesteps == 8 and policy.hold_action
    loaded = SB3SigmaPolicy.load(tmp_path)
    assert loaded.hold_action
    res = evaluate_policy("held", loaded, env_kwargs, n_samples=3, seed=0, progress=False)
    np.testing.assert_allclose(res.action_by_t, res.action_by_t[0], atol=1e-6)  # one action for all t
    assert (res.mean_eta >= 0).all() and (res.mean_eta <= 1).all()
    with pytest.raises(ValueError, match="only reward='delta'"):
        Args(hold_action=True, reward="paper")
    with pytest.raises(ValueError, match="nothing for algo='recurrent_ppo'"):
        Args(hold_action=True, algo="recurrent_ppo")


def test_learner_observing_quality_trains_and_evaluates_on_the_same_episodes(env_kwargs, tmp_path) -> None:
    """observe='x_t,t,q' (and the 't,q' ablation): the learner sees the env's q_x0; evaluation adds
    observe_quality by itself, and a policy handed an observation without it names the missing key.
    """
    from agents.ppo_sigma import Args, SB3SigmaPolicy, train
    from agents.ppo_sigma import env_kwargs as args_env_kwargs

    kw = {k: v for k, v in env_kwargs.items() if k != "evaluator"}
    for observe, keys in (("x_t,t,q", {"x_t", "t", "q_x0"}), ("t,q", {"t", "q_x0"})):
        out = tmp_path / observe.replace(",", "_")
        args = Args(**kw, evaluator="piqe", observe=observe, num_envs=2, total_timesteps=12, n_steps=6, batch_size=6,
                    prefix_pool=4, progress_bar=False, tensorboard=False, out_dir=str(out))  # fmt: skip
        assert args_env_kwargs(args)["observe_quality"] is True
        train(args)
        loaded = SB3SigmaPolicy.load(out)
        assert set(loaded.model.observation_space.spaces) == keys and loaded.observes_quality
        res = evaluate_policy("q", loaded, env_kwargs, n_samples=2, seed=0, progress=False)  # env made without q
        assert res.r1.shape == (2,) and np.isfinite(res.r1).all()
        with pytest.raises(KeyError, match="observe_quality=True"):
            loaded.predict({"x_t": np.zeros((1, 1, 8, 8), np.float32), "t": np.full((1, 1), 3.0, np.float32)})
    assert "observe_quality" not in args_env_kwargs(Args())


def test_safe_improvement_deploys_the_learner_only_where_validation_shows_it_better(env_kwargs, tmp_path,
                                                                                   monkeypatch) -> None:
    """``safe_improvement``: learner and start constant run the same validation episodes (seeds of their own); the
    learner is deployed only if the one-sided 95% Student-t bound of its paired r_1 gain is above 0; the choice is
    stored, loaded back and validated."""
    from scipy import stats

    from agents.ppo_sigma import SAFE_IMPROVEMENT_SEED, Args, SB3SigmaPolicy, load_deployed, safe_improvement_test
    from agents.ppo_sigma import train as train_sigma

    kw = {k: v for k, v in env_kwargs.items() if k != "evaluator"}
    base = dict(**kw, evaluator="piqe", warm_start=2, learning_rate=0.0, num_envs=2, total_timesteps=60, n_steps=6,
                batch_size=6, prefix_pool=4, seed=1, progress_bar=False, tensorboard=False)  # fmt: skip
    args = Args(**base, safe_improvement=6, out_dir=str(tmp_path / "safe"))
    first = SAFE_IMPROVEMENT_SEED + 10_000
    same = safe_improvement_test(args, ConstantAction(0.5), 0.5)  # a learner that is its constant gains exactly 0
    assert same["mean_gain"] == 0.0 and same["lower_bound_95"] == 0.0 and same["deployed"] == "constant"
    assert same["seeds"] == [first, first + 5] and same["env_steps"] == 2 * 6 * 3
    # the decision rule, on stored r_1 per episode (the tiny random UNet barely moves Q): deployed only where the
    # one-sided bound clears 0, not where the mean gain is positive but noisy
    import types

    import agents.evaluate_sigma as evaluate_sigma

    clear = np.array([0.10, 0.12, 0.09, 0.11, 0.13, 0.10])
    noisy = np.array([0.3, -0.2, 0.25, -0.25, 0.1, -0.1])  # mean +0.017
    for r1, expected in ((clear, "learner"), (-clear, "constant"), (noisy, "constant")):
        def fake(name, policy, kw, n_samples, batch_size, seed, keep, progress, _r1=r1):
            assert n_samples == 6 and seed == first  # both policies on the same episodes
            return types.SimpleNamespace(r1=_r1 if policy.a == 1.0 else np.zeros(6))

        monkeypatch.setattr(evaluate_sigma, "evaluate_policy", fake)
        rec = safe_improvement_test(args, ConstantAction(1.0), 0.0)
        lower = r1.mean() - stats.t.ppf(0.95, 5) * r1.std(ddof=1) / np.sqrt(6)
        assert rec["mean_gain"] == pytest.approx(r1.mean()) and rec["lower_bound_95"] == pytest.approx(lower)
        assert rec["deployed"] == expected
    monkeypatch.undo()

    deployed = train_sigma(args)  # learning rate 0: the learner still plays its start; the test decides, train deploys
    record = json.loads((tmp_path / "safe" / "safe_improvement.json").read_text())
    start = json.loads((tmp_path / "safe" / "warm_start.json").read_text())["init_action"]
    assert record["constant_action"] == start and record["episodes"] == 6
    loaded = load_deployed(tmp_path / "safe")
    if record["deployed"] == "constant":
        assert isinstance(deployed, ConstantAction) and isinstance(loaded, ConstantAction) and loaded.a == start
    else:
        assert isinstance(deployed, SB3SigmaPolicy) and isinstance(loaded, SB3SigmaPolicy)
    (tmp_path / "safe" / "safe_improvement.json").write_text('{"deployed": "constant"}')
    with pytest.raises(ValueError, match="safe_improvement.json is unreadable"):
        load_deployed(tmp_path / "safe")
    (tmp_path / "safe" / "safe_improvement.json").write_text('{"deployed": "both", "constant_action": 1.0}')
    with pytest.raises(ValueError, match="deployed must be 'learner' or 'constant'.* got 'both'"):
        load_deployed(tmp_path / "safe")
    with pytest.raises(ValueError, match="safe_improvement must be 0 .* got 1"):
        Args(warm_start=2, safe_improvement=1)
    with pytest.raises(ValueError, match="safe_improvement=8 tests the learner against the warm start's constant"):
        Args(safe_improvement=8)
