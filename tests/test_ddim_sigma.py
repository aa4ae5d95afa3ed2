from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import robust_envs  # noqa: F401
from robust_envs.diffusion import ddim_step, load_noise_model, model_timestep, predict_x0
from robust_envs.envs.ddim_sigma import DDIMSigmaEnv, DDIMSigmaVectorEnv


@pytest.fixture()
def kwargs(tiny_unet_dir, contrast_evaluator) -> dict:
    return {"model": str(tiny_unet_dir), "evaluator": contrast_evaluator, "t_c": 4, "stride": 250, "device": "cpu"}


def rollout(env: gym.Env, seed: int, etas: list[float]) -> tuple[list[dict], list[float], list[dict]]:
    obs, _ = env.reset(seed=seed)
    observations, rewards, infos = [obs], [], []
    for eta in etas:
        obs, r, term, trunc, info = env.step(np.array([eta], dtype=np.float32))
        observations.append(obs)
        rewards.append(float(r))
        infos.append(info)
        if term or trunc:
            break
    return observations, rewards, infos


def test_registered_and_checkers_pass(kwargs) -> None:
    env = gym.make("DDIMSigma-v0", **kwargs)
    assert env.spec is not None and env.spec.max_episode_steps == 1000
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(DDIMSigmaEnv(**kwargs), warn=True)


def test_episode_has_t_c_steps_and_info(kwargs) -> None:
    env = gym.make("DDIMSigma-v0", render_mode="rgb_array", **kwargs)
    obs, info = env.reset(seed=3)
    assert obs["t"].tolist() == [4.0] and obs["x_t"].shape == (1, 8, 8) and info["t"] == 4
    ts, done, steps = [], False, 0
    while not done:
        obs, r, term, trunc, info = env.step(env.action_space.sample())
        ts.append(info["t"])
        steps += 1
        done = term or trunc
        assert -4.0 <= r <= 4.0 and 1.0 <= info["q_agent"] <= 5.0 and 1.0 <= info["q_baseline"] <= 5.0
        assert r == pytest.approx(info["q_agent"] - info["q_baseline"], abs=1e-6)
    assert term and not trunc and steps == 4 and ts == [4, 3, 2, 1]
    assert obs["t"].tolist() == [0.0] and "q0_agent" in info and "q0_baseline" in info
    assert info["sigma"] == 0.0  # at t = 1 alpha_bar[0] = 1 forces sigma = 0
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.shape == (32, 68, 3)
    with pytest.raises(RuntimeError, match="after the episode terminated"):
        env.unwrapped.step(np.array([0.0], dtype=np.float32))


def test_eta_zero_reproduces_baseline_and_attack_matters(kwargs) -> None:
    """With eta = 0 the agent equals the baseline (common random numbers): every reward is 0."""
    env = DDIMSigmaEnv(**kwargs)
    _, rewards, _ = rollout(env, 0, [0.0] * 4)
    assert rewards == [0.0] * 4
    _, rewards, infos = rollout(env, 0, [1.0] * 4)
    assert any(r != 0.0 for r in rewards[:-1]) and infos[0]["sigma"] > 0
    clean = DDIMSigmaEnv(**{**kwargs, "attack": "none"})
    loud = DDIMSigmaEnv(**{**kwargs, "attack_scale": 50.0, "attack_clip": 100.0})
    x_clean, _, _ = rollout(clean, 0, [0.0] * 4)
    x_loud, _, _ = rollout(loud, 0, [0.0] * 4)
    assert np.array_equal(x_clean[0]["x_t"], x_loud[0]["x_t"])  # no attack above t_c
    assert not np.allclose(x_clean[-1]["x_t"], x_loud[-1]["x_t"])


def test_transition_and_rewards_follow_the_equations(tiny_unet_dir, contrast_evaluator) -> None:
    """Recompute one episode by hand from the model, the seeded draws and Eq. 10, 13, 16-21."""
    env = DDIMSigmaEnv(model=str(tiny_unet_dir), evaluator=contrast_evaluator, t_c=2, stride=500, device="cpu",
                       attack_scale=0.5, attack_clip=1.0)  # fmt: skip
    obs, _ = env.reset(seed=11)
    sim = env.sim
    torch_seed = int(np.random.default_rng(np.random.SeedSequence(11)).integers(0, 2**62))  # gymnasium's seeding
    g = torch.Generator().manual_seed(torch_seed)
    model = load_noise_model(tiny_unet_dir)
    ab = model.schedule.alpha_bar
    x = torch.randn(1, 1, 8, 8, generator=g)  # x_T at t = 502
    for t, t_prev in [(502, 2)]:
        torch.randn(1, generator=g)  # attack draw (unused above t_c)
        eps = model(x, torch.tensor([float(model_timestep(t))]))
        z = torch.randn(1, 1, 8, 8, generator=g)
        x = ddim_step(x, eps, ab[t], ab[t_prev], 0.0, z).x_prev
    delta = (0.5 * torch.randn(1, generator=g)).clamp(-1, 1)
    eps = model(x, torch.tensor([1.0]) + delta)
    np.testing.assert_allclose(obs["x_t"], x[0].numpy(), atol=1e-6)
    # step at t = 2 with eta = 1
    eta = 1.0  # action="sigma_frac" (default): sigma = a * sqrt(1 - alpha_bar[t - 1])
    sigma = eta * model.schedule.sigma_max(2, 1)
    z = torch.randn(1, 1, 8, 8, generator=g)
    x_a = ddim_step(x, eps, ab[2], ab[1], sigma, z).x_prev
    x_b = ddim_step(x, eps, ab[2], ab[1], 0.0, z).x_prev
    delta = (0.5 * torch.randn(1, generator=g)).clamp(-1, 1)
    eps_pair = model(torch.cat([x_a, x_b]), (torch.tensor([0.0]) + delta).repeat(2))
    x0 = predict_x0(torch.cat([x_a, x_b]), eps_pair, ab[1])
    q = contrast_evaluator(((x0 + 1) / 2).clamp(0, 1))
    obs, r, _, _, info = env.step(np.array([eta], dtype=np.float32))
    assert info["sigma"] == pytest.approx(sigma, rel=1e-5)
    assert r == pytest.approx(float(q[0] - q[1]), abs=1e-5)
    np.testing.assert_allclose(obs["x_t"], x_a[0].numpy(), atol=1e-5)
    # final step t = 1 -> x_0 (no network call, sigma forced to 0)
    z = torch.randn(1, 1, 8, 8, generator=g)
    eps_a, eps_b = eps_pair.chunk(2)
    x0_a = ddim_step(x_a, eps_a, ab[1], ab[0], 0.0, z).x_prev
    x0_b = ddim_step(x_b, eps_b, ab[1], ab[0], 0.0, z).x_prev
    q = contrast_evaluator(((torch.cat([x0_a, x0_b]) + 1) / 2).clamp(0, 1))
    _, r, term, _, info = env.step(np.array([0.3], dtype=np.float32))
    assert term and r == pytest.approx(float(q[0] - q[1]), abs=1e-5)
    assert info["q0_agent"] == pytest.approx(float(q[0]), abs=1e-5)
    assert sim.t == 0


def test_seed_determinism(kwargs) -> None:
    a = rollout(DDIMSigmaEnv(**kwargs), 5, [0.2, 0.9, 0.5, 0.1])
    b = rollout(DDIMSigmaEnv(**kwargs), 5, [0.2, 0.9, 0.5, 0.1])
    c = rollout(DDIMSigmaEnv(**kwargs), 6, [0.2, 0.9, 0.5, 0.1])
    assert a[1] == b[1]
    assert all(np.array_equal(x["x_t"], y["x_t"]) for x, y in zip(a[0], b[0], strict=True))
    assert not np.array_equal(a[0][0]["x_t"], c[0][0]["x_t"])


def test_vector_env_matches_single_envs_step_by_step(kwargs) -> None:
    n, seed = 3, 7
    venv = gym.make_vec("DDIMSigma-v0", num_envs=n, vectorization_mode="vector_entry_point", **kwargs)
    assert isinstance(venv, DDIMSigmaVectorEnv)
    singles = [DDIMSigmaEnv(**kwargs) for _ in range(n)]
    obs_v, _ = venv.reset(seed=seed)
    obs_s = [env.reset(seed=seed + i)[0] for i, env in enumerate(singles)]
    rng = np.random.default_rng(0)
    for step in range(4):
        np.testing.assert_allclose(obs_v["x_t"], np.stack([o["x_t"] for o in obs_s]), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(obs_v["t"], np.stack([o["t"] for o in obs_s]))
        actions = rng.uniform(0, 1, size=(n, 1)).astype(np.float32)
        obs_v, rew_v, term_v, trunc_v, info_v = venv.step(actions)
        results = [env.step(actions[i]) for i, env in enumerate(singles)]
        obs_s = [r[0] for r in results]
        np.testing.assert_allclose(rew_v, [r[1] for r in results], atol=1e-5)
        np.testing.assert_allclose(info_v["q_agent"], [r[4]["q_agent"] for r in results], atol=1e-5)
        np.testing.assert_allclose(info_v["sigma"], [r[4]["sigma"] for r in results], rtol=1e-6)
        assert list(term_v) == [r[2] for r in results] == [step == 3] * n
        assert not trunc_v.any()
    # NEXT_STEP autoreset: the step after the end resets, reward 0, t back to t_c
    obs_v, rew_v, term_v, _, _ = venv.step(np.zeros((n, 1), dtype=np.float32))
    assert (rew_v == 0).all() and not term_v.any() and (obs_v["t"] == 4).all()


def test_same_step_autoreset_and_truncation(kwargs) -> None:
    venv = DDIMSigmaVectorEnv(num_envs=2, autoreset_mode=AutoresetMode.SAME_STEP, **kwargs)
    venv.reset(seed=0)
    for _ in range(4):
        obs, _, term, _, info = venv.step(np.full((2, 1), 0.5, dtype=np.float32))
    assert term.all() and (obs["t"] == 4).all()  # already reset
    assert info["final_obs"][0]["t"].tolist() == [0.0] and "q0_agent" in info["final_info"]
    short = DDIMSigmaVectorEnv(num_envs=2, max_episode_steps=2, **kwargs)
    short.reset(seed=0)
    short.step(np.zeros((2, 1), dtype=np.float32))
    _, _, term, trunc, _ = short.step(np.zeros((2, 1), dtype=np.float32))
    assert trunc.all() and not term.any()


@pytest.mark.parametrize(
    ("action", "match"),
    [
        (np.array([float("nan")], dtype=np.float32), r"finite number in \[0, 1\]; env 0 got nan"),
        (np.array([1.5], dtype=np.float32), r"in \[0, 1\]; env 0 got 1.5"),
        (np.array([-0.1], dtype=np.float32), r"in \[0, 1\]"),
        (np.array([0.1, 0.2], dtype=np.float32), r"action must have shape \(1,\)"),
    ],
)
def test_bad_actions_raise(kwargs, action, match) -> None:
    env = DDIMSigmaEnv(**kwargs)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(action)
    env.step(np.array([0.5], dtype=np.float32))  # the env is still usable: nothing was lost


def test_bad_vector_actions_raise(kwargs) -> None:
    venv = DDIMSigmaVectorEnv(num_envs=2, **kwargs)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=r"env 1 got 2.0"):
        venv.step(np.array([[0.5], [2.0]], dtype=np.float32))
    with pytest.raises(ValueError, match=r"shape \(2, 1\)"):
        venv.step(np.zeros((3, 1), dtype=np.float32))


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"t_c": 0}, r"t_c must be in \[1, T=1000\], got 0"),
        ({"t_c": 1001}, r"t_c must be in \[1, T=1000\], got 1001"),
        ({"stride": 0}, "stride must be >= 1, got 0"),
        ({"evaluator": "no_such_metric"}, "unknown evaluator 'no_such_metric'; valid: 'levels', 'levels_heldout', 'qalign'"),
        ({"attack": "pgd"}, r"attack must be one of \('gaussian', 'none', 'shift', 'adaptive', 'state'\)"),
        ({"attack": "shift"}, r"attack='shift' needs attack_budget > 0, got 0.0"),
        ({"attack": "adaptive", "attack_budget": 1.0, "attack_grid": 3}, "attack_grid must be an even int >= 2, got 3"),
        ({"action": "sigma"}, r"action must be one of \('sigma_frac', 'eta'\)"),
        ({"defence": "clip"}, r"defence must be one of \('none', 'round', 'share'\)"),
        ({"prefix_pool": -1}, "prefix_pool must be >= 0"),
        ({"reward": "sparse"}, r"reward must be one of \('paper', 'delta', 'final'\)"),
        ({"attack_budget_unit": "s"}, "attack_budget_unit must be 'timesteps' or 'T'"),
        ({"attack_scale": float("nan")}, "attack_scale must be a finite number >= 0"),
        ({"baseline_sigma": -1.0}, "baseline_sigma must be a finite number >= 0"),
        ({"render_mode": "human"}, "render_mode must be None or one of"),
    ],
)
def test_bad_arguments_raise(kwargs, override, match) -> None:
    with pytest.raises(ValueError, match=match):
        DDIMSigmaEnv(**{**kwargs, **override})


def test_reward_modes_share_the_trajectory_and_delta_telescopes_to_r1(kwargs) -> None:
    actions = [0.9, 0.2, 0.7, 0.4]
    runs = {mode: rollout(DDIMSigmaEnv(**kwargs, reward=mode), 3, actions) for mode in ("paper", "delta", "final")}
    paper_obs, paper_r, paper_info = runs["paper"]
    for mode in ("delta", "final"):  # the reward mode changes rewards only, never the trajectory
        obs, _, info = runs[mode]
        for a, b in zip(paper_obs, obs, strict=True):
            np.testing.assert_array_equal(a["x_t"], b["x_t"])
        np.testing.assert_array_equal([i["q_agent"] for i in info], [i["q_agent"] for i in paper_info])
    diffs = [float(i["q_agent"] - i["q_baseline"]) for i in paper_info]
    np.testing.assert_allclose(paper_r, diffs, atol=1e-6)  # Eq. 19-21: r_t = D_t
    assert any(abs(d) > 1e-4 for d in diffs[:-1])  # the test is not vacuous: intermediate differences exist
    delta_r = runs["delta"][1]
    np.testing.assert_allclose(delta_r, np.diff([0.0, *diffs]), atol=1e-6)
    assert sum(delta_r) == pytest.approx(paper_r[-1], abs=1e-5)  # undiscounted return = r_1
    assert runs["final"][1][:-1] == [0.0, 0.0, 0.0]
    assert runs["final"][1][-1] == pytest.approx(paper_r[-1])


def test_vector_env_delta_reward_resets_with_the_episode(kwargs) -> None:
    venv = DDIMSigmaVectorEnv(num_envs=2, reward="delta", autoreset_mode=AutoresetMode.SAME_STEP, **kwargs)
    venv.reset(seed=0)
    for _ in range(2):  # two episodes: the second starts from D = 0 again
        total = np.zeros(2)
        for _ in range(kwargs["t_c"]):
            _, r, term, _, info = venv.step(np.full((2, 1), 0.8, dtype=np.float32))
            total += r
        assert term.all()
        final = info["final_info"]
        np.testing.assert_allclose(total, final["q0_agent"] - final["q0_baseline"], atol=1e-5)


def test_missing_model_folder_raises(kwargs, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not a diffusers folder"):
        DDIMSigmaEnv(**{**kwargs, "model": str(tmp_path)})


@pytest.mark.slow
def test_embedded_default_runs_an_episode() -> None:
    """gym.make with all defaults: the embedded UNet and the embedded levels scorer."""
    env = gym.make("DDIMSigma-v0", t_c=3, device="cpu")
    gym_check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs["x_t"].shape == (1, 28, 28)
    total, done = 0.0, False
    while not done:
        obs, r, term, trunc, info = env.step(np.array([1.0], dtype=np.float32))
        total += float(r)
        done = term or trunc
    assert 1.0 <= info["q0_baseline"] <= 5.0 and abs(total) <= 4.0 * 3


def test_baseline_trajectory_equals_the_standalone_sampler(tiny_unet_dir, contrast_evaluator) -> None:
    """The env's sigma = 0 baseline x_0 is `sample_x0` with the same per-episode generator."""
    from gymnasium.utils import seeding

    from robust_envs.diffusion import TimestepAttack, sample_x0

    env = DDIMSigmaEnv(model=str(tiny_unet_dir), evaluator=contrast_evaluator, t_c=3, stride=300, device="cpu",
                       attack_scale=0.3, attack_clip=0.5)  # fmt: skip
    env.reset(seed=21)
    for _ in range(3):
        env.step(np.array([0.8], dtype=np.float32))
    torch_seed = int(seeding.np_random(21)[0].integers(0, 2**62))
    model = load_noise_model(tiny_unet_dir)
    x0 = sample_x0(model, [torch.Generator().manual_seed(torch_seed)], 3, 300, TimestepAttack(scale=0.3, clip=0.5))
    torch.testing.assert_close(env.sim.x0_baseline, x0, rtol=1e-5, atol=1e-5)


def test_observe_quality_adds_q_x0_and_changes_nothing_else(kwargs_tiny, one_thread) -> None:
    """``observe_quality=True`` adds Q of the agent's x0 prediction (the step's q_agent after a step) and leaves the
    episode (states, rewards) exactly as without it; both env checkers pass; the vector env matches the single one.
    """
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    from robust_envs.envs.ddim_sigma import DDIMSigmaEnv, DDIMSigmaVectorEnv

    with_q, without = DDIMSigmaEnv(observe_quality=True, **kwargs_tiny), DDIMSigmaEnv(**kwargs_tiny)
    check_env(with_q, skip_render_check=True)
    sb3_check_env(with_q, warn=False)
    assert "q_x0" in with_q.observation_space.spaces and "q_x0" not in without.observation_space.spaces
    oq, _ = with_q.reset(seed=3)
    o, _ = without.reset(seed=3)
    assert with_q.observation_space.contains(oq) and 1.0 <= oq["q_x0"][0] <= 5.0
    for a in (0.2, 0.9, 0.5, 1.0):
        oq, rq, *_, iq = with_q.step(np.array([a], np.float32))
        o, r, *_ = without.step(np.array([a], np.float32))
        np.testing.assert_array_equal(oq["x_t"], o["x_t"])
        assert rq == r and oq["q_x0"][0] == pytest.approx(iq["q_agent"])
    vec = DDIMSigmaVectorEnv(num_envs=2, observe_quality=True, **kwargs_tiny)
    ov, _ = vec.reset(seed=3)
    single, _ = DDIMSigmaEnv(observe_quality=True, **kwargs_tiny).reset(seed=3)
    np.testing.assert_allclose(ov["q_x0"][0], single["q_x0"], atol=1e-5)
    with pytest.raises(ValueError, match="observe_quality must be a bool"):
        DDIMSigmaEnv(observe_quality="yes", **kwargs_tiny)


def test_prefix_pool_on_disk_is_written_once_read_back_and_keyed_by_the_weights(kwargs_tiny, tmp_path,
                                                                                one_thread) -> None:  # fmt: skip
    """``prefix_pool_dir``: the first env computes the pool and writes it, a second env reads the same x_{t_c}
    without running the prefix; other weights get another file; a corrupt file is named, recomputed, rewritten."""
    import copy
    import warnings

    from robust_envs.envs import ddim_sigma as ds

    kw = {**kwargs_tiny, "prefix_pool": 5, "prefix_pool_dir": str(tmp_path)}
    env = ds.DDIMSigmaVectorEnv(num_envs=2, **kw)
    env.reset(seed=0)
    path = env.sim.pool_file()
    assert path.is_file() and list(tmp_path.iterdir()) == [path]
    x_first = env.sim.pool_x(list(range(5)))
    ds.PREFIX_CACHE.clear()  # a fresh process: only the file is left
    again = ds.DDIMSigmaVectorEnv(num_envs=2, **kw)
    calls = []
    again.sim._prefix = lambda gens: calls.append(len(gens))  # type: ignore[method-assign]
    again.reset(seed=0)
    assert calls == [] and torch.equal(again.sim.pool_x(list(range(5))), x_first)
    # the key is the weights themselves: a perturbed copy of the network is another pool
    other = copy.deepcopy(env.sim.model)
    with torch.no_grad():
        next(other.unet.parameters()).add_(1e-3)
    assert ds.DDIMSigmaVectorEnv(num_envs=1, **{**kw, "model": other}).sim.pool_file() != path
    path.write_bytes(b"not a torch file")
    ds.PREFIX_CACHE.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds.DDIMSigmaVectorEnv(num_envs=2, **kw).reset(seed=0)
    assert any(str(path) in str(w.message) for w in caught)
    assert torch.allclose(torch.load(path, weights_only=True)["x"], x_first, atol=1e-6)
