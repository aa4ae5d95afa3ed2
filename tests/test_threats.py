"""Threats on the noise network (robust_envs.diffusion.attack) and the DDIMSigma env's prefix reuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robust_envs.diffusion import TimestepAttack, TimestepDefence, attacked_eps, load_noise_model
from robust_envs.diffusion.attack import _adaptive_timestep, _state_pgd
from robust_envs.envs.ddim_sigma import BASELINE_CACHE, PREFIX_CACHE, BaselineCache, DDIMSigmaEnv, DDIMSigmaVectorEnv


@pytest.fixture(scope="module")
def tiny(tiny_unet_dir):
    return load_noise_model(tiny_unet_dir)


def _batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.full((n,), 3.0)


def test_shift_and_gaussian_draws() -> None:
    gens = [torch.Generator().manual_seed(i) for i in range(500)]
    assert torch.equal(TimestepAttack("shift", budget=7.5).sample_delta(gens, "cpu"), torch.full((500,), 7.5))
    d = TimestepAttack().sample_delta(gens, "cpu")
    assert d.abs().max() <= 0.05 + 1e-7 and 0.005 < d.std() < 0.015
    # the same number of draws whatever the threat: the streams after it stay aligned
    a = [torch.Generator().manual_seed(1) for _ in range(2)]
    TimestepAttack("adaptive", budget=1.0).sample_delta(a[:1], "cpu")
    TimestepAttack().sample_delta(a[1:], "cpu")
    assert torch.equal(torch.randn(3, generator=a[0]), torch.randn(3, generator=a[1]))


def test_adaptive_stays_in_budget_and_beats_the_seed_attack(tiny) -> None:
    x, t = _batch()
    budget = 0.05
    attack = TimestepAttack("adaptive", budget=budget, grid=4)
    eps = _adaptive_timestep(tiny, x, t, attack, TimestepDefence())
    clean = tiny(x, t)
    candidates = torch.stack([tiny(x, t + off) for off in (-budget, -budget / 2, budget / 2, budget)])
    # each sample's eps is one of the in-budget candidates, the one farthest from the clean call
    dist = (candidates - clean).flatten(2).pow(2).sum(-1)
    chosen = candidates[dist.argmax(0), torch.arange(len(x))]
    torch.testing.assert_close(eps, chosen, rtol=0, atol=0)
    gens = [torch.Generator().manual_seed(i) for i in range(len(x))]
    seeds_eps = attacked_eps(tiny, x, t, TimestepAttack(scale=0.01, clip=budget), gens)
    damage = (eps - clean).flatten(1).norm(dim=1)
    seed_damage = (seeds_eps - clean).flatten(1).norm(dim=1)
    assert bool((damage >= seed_damage - 1e-7).all()) and damage.mean() > seed_damage.mean()


def test_state_attack_stays_in_its_linf_ball_and_hurts(tiny) -> None:
    x, t = _batch()
    budget = 0.02
    attack = TimestepAttack("state", budget=budget, steps=3)
    start = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    eps, delta = _state_pgd(tiny, x, t, attack, TimestepDefence(), start)
    assert delta.abs().max() <= budget + 1e-7
    clean = tiny(x, t)
    random_eps = tiny(x + start * budget, t)
    assert (eps - clean).norm() > (random_eps - clean).norm()  # ascent beats its own random start


def test_defences() -> None:
    t = torch.tensor([0.0, 0.3, 0.49, 1.6, 19.9, 20.0, 99.0, 100.0, 250.7])
    torch.testing.assert_close(TimestepDefence("round")(t), torch.tensor([0, 0, 0, 2, 20, 20, 99, 100, 251.0]))
    torch.testing.assert_close(TimestepDefence("share")(t), torch.tensor([0, 0, 0, 0, 0, 20, 80, 100, 250.7]))
    torch.testing.assert_close(TimestepDefence()(t), t)
    with pytest.raises(ValueError, match="defence_n_share must be an int >= 1, got 0"):
        TimestepDefence("share", n_share=0)


def _episode(kwargs: dict, seed: int, actions: list[float]) -> tuple[list[np.ndarray], list[float]]:
    env = DDIMSigmaEnv(**kwargs)
    obs, _ = env.reset(seed=seed)
    xs, rs = [obs["x_t"]], []
    for a in actions:
        obs, r, *_ = env.step(np.array([a], dtype=np.float32))
        xs.append(obs["x_t"])
        rs.append(float(r))
    return xs, rs


def test_rounding_removes_a_sub_integer_perturbation_exactly(kwargs_tiny) -> None:
    actions = [0.7, 0.2, 0.9, 0.0]
    clean = _episode({**kwargs_tiny, "attack": "none"}, 3, actions)
    attacked = _episode({**kwargs_tiny, "attack_scale": 0.2, "attack_clip": 0.49}, 3, actions)
    defended = _episode({**kwargs_tiny, "attack_scale": 0.2, "attack_clip": 0.49, "defence": "round"}, 3, actions)
    assert all(np.array_equal(a, b) for a, b in zip(clean[0], defended[0], strict=True)) and clean[1] == defended[1]
    assert not np.array_equal(clean[0][-1], attacked[0][-1])
    adaptive = _episode({**kwargs_tiny, "attack": "adaptive", "attack_budget": 0.4, "defence": "round"}, 3, actions)
    assert all(np.array_equal(a, b) for a, b in zip(clean[0], adaptive[0], strict=True))


@pytest.mark.parametrize("threat", [{"attack": "shift", "attack_budget": 0.01, "attack_budget_unit": "T"},
                                    {"attack": "adaptive", "attack_budget": 5.0},
                                    {"attack": "state", "attack_budget": 0.05}])  # fmt: skip
def test_each_threat_runs_in_the_env_and_changes_the_episode(kwargs_tiny, threat) -> None:
    actions = [0.0] * 4
    clean = _episode({**kwargs_tiny, "attack": "none"}, 1, actions)
    xs, _ = _episode({**kwargs_tiny, **threat}, 1, actions)
    assert np.array_equal(xs[0], clean[0][0])  # x_{t_c}: no threat above t_c, the same draws
    assert not np.allclose(xs[-1], clean[0][-1])


def test_prefix_cache_reproduces_the_uncached_episodes(kwargs_tiny) -> None:
    n, actions = 3, np.full((3, 1), 0.5, dtype=np.float32)

    def run(**extra):
        venv = DDIMSigmaVectorEnv(num_envs=n, **{**kwargs_tiny, **extra})
        obs, _ = venv.reset(seed=40)
        out = [obs["x_t"]]
        for _ in range(4):
            obs, r, *_ = venv.step(actions)
            out += [obs["x_t"], r]
        return out

    plain = run()
    before = PREFIX_CACHE.hits
    first, second = run(prefix_cache=True), run(prefix_cache=True)
    assert PREFIX_CACHE.hits - before >= n  # the second run read every prefix from the cache
    for a, b, c in zip(plain, first, second, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
        np.testing.assert_allclose(a, c, atol=1e-6)


@pytest.mark.parametrize("threat", [{}, {"attack": "adaptive", "attack_budget": 1.0}, {"attack": "state", "attack_budget": 0.02}])
def test_baseline_cache_replays_the_baseline_whatever_the_schedule(kwargs_tiny, threat) -> None:
    """A schedule run after another on the same seeds, with the baseline replayed, gets the rewards, infos and
    x_0 it gets without the cache; the replayed steps call the network on N samples, not 2N.
    """
    n = 3
    rng = np.random.default_rng(0)
    schedules = [rng.uniform(0, 1, (4, n, 1)).astype(np.float32) for _ in range(2)]
    kw = {**kwargs_tiny, **threat}

    def run(actions, **extra):
        venv = DDIMSigmaVectorEnv(num_envs=n, **{**kw, **extra})
        obs, _ = venv.reset(seed=70)
        out = [obs["x_t"]]
        for a in actions:
            obs, r, term, _, info = venv.step(a)
            out += [obs["x_t"], r, info["q_agent"], info["q_baseline"]]
        out += [venv.sim.x0_agent.numpy(), venv.sim.x0_baseline.numpy(), info["q0_agent"], info["q0_baseline"]]
        assert term.all()
        return out, venv

    plain = [run(a)[0] for a in schedules]
    BASELINE_CACHE.clear()
    first, _ = run(schedules[0], baseline_cache=True)  # records the baseline
    assert BASELINE_CACHE.misses == n and len(BASELINE_CACHE) == n
    calls = []
    second_env = DDIMSigmaVectorEnv(num_envs=n, baseline_cache=True, **kw)
    unet = second_env.sim.model.unet
    hook = unet.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    try:
        second, _ = run(schedules[1], baseline_cache=True)
    finally:
        hook.remove()
    assert BASELINE_CACHE.hits == n
    assert calls and set(calls) == {n}  # the reset's eps at t_c and every replayed step: the agent's N samples
    for want, got in zip(plain[0] + plain[1], first + second, strict=True):
        np.testing.assert_allclose(want, got, atol=1e-5)


@pytest.mark.parametrize("cached", [False, True])
def test_mirror_baseline_runs_the_baseline_alone(kwargs_tiny, cached) -> None:
    """``mirror_baseline`` (how evaluate_defence scores a defended baseline) gives the x_0, qualities and sigma
    of the sigma = 0 baseline run as an agent beside itself, with every network call on N samples, not 2N.
    """
    n = 3
    kw = {**kwargs_tiny, "defence": "round", "attack_budget": 0.4}
    zeros = np.zeros((n, 1), dtype=np.float32)

    def run(mirror):
        venv = DDIMSigmaVectorEnv(num_envs=n, baseline_cache=cached, **kw)
        venv.sim.mirror_baseline = mirror
        calls = []
        hook = venv.sim.model.unet.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
        try:
            venv.reset(seed=11)
            out = []
            for _ in range(4):
                obs, r, _, _, info = venv.step(zeros)
                out += [obs["x_t"], r, info["q_agent"], info["q_baseline"], info["sigma"]]
        finally:
            hook.remove()
        return out + [venv.sim.x0_agent.numpy()], calls

    BASELINE_CACHE.clear()
    paired, paired_calls = run(False)
    mirrored, calls = run(True)
    assert 2 * n in paired_calls  # the schedule beside the baseline: 2N per step (the first run records the memo)
    assert calls and set(calls) == {n}  # mirrored: N (cached: the steps are replayed, only the prefix and reset run)
    for want, got in zip(paired, mirrored, strict=True):
        np.testing.assert_allclose(want, got, atol=1e-5)
    assert not np.allclose(paired[0], 0.0)


@pytest.mark.parametrize("threat", [{"attack": "shift", "attack_budget": 2.0}, {}])
def test_baseline_cache_replays_pool_entries_whose_baseline_draws_nothing(kwargs_tiny, threat) -> None:
    """With ``prefix_pool``, a pool entry's baseline is replayed when it uses no random draw (``shift``): the same
    rewards, infos and x_0 as without the cache, the replayed episode's network calls on N samples only. Under
    seed 000's ``gaussian`` threat the baseline depends on the episode's draws: nothing is cached."""
    n = 3
    rng = np.random.default_rng(1)
    episodes = [rng.uniform(0, 1, (4, n, 1)).astype(np.float32) for _ in range(4)]
    kw = {**kwargs_tiny, **threat, "prefix_pool": 2}

    def run(**extra):
        venv = DDIMSigmaVectorEnv(num_envs=n, **{**kw, **extra})
        out, calls = [], []
        for e, actions in enumerate(episodes):
            hook = venv.sim.model.unet.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
            try:
                venv.reset(seed=40 + n * e)
                for a in actions:
                    obs, r, _, _, info = venv.step(a)
                    out += [obs["x_t"], r, info["q_agent"], info["q_baseline"]]
            finally:
                hook.remove()
            out += [venv.sim.x0_agent.numpy(), venv.sim.x0_baseline.numpy()]
            calls.append(-1)  # episode boundary
        return out, calls, venv

    plain, _, _ = run()
    BASELINE_CACHE.clear()
    cached, calls, venv = run(baseline_cache=True)
    for want, got in zip(plain, cached, strict=True):
        np.testing.assert_allclose(want, got, atol=1e-5)
    per_episode = " ".join(map(str, calls)).split("-1")[:-1]
    assert venv.sim.baseline_is_deterministic() == (threat != {})
    if threat:
        assert len(BASELINE_CACHE) == 2 and BASELINE_CACHE.hits >= n  # both pool entries known, then replayed
        assert any(set(map(int, ep.split())) == {n} for ep in per_episode)  # a replayed episode: N samples only
    else:
        assert len(BASELINE_CACHE) == 0 and all(str(2 * n) in ep.split() for ep in per_episode)


def test_baseline_cache_keys_on_the_configuration(kwargs_tiny) -> None:
    BASELINE_CACHE.clear()
    actions = np.full((2, 1), 0.5, dtype=np.float32)
    for extra in ({}, {"attack": "shift", "attack_budget": 2.0}):
        venv = DDIMSigmaVectorEnv(num_envs=2, baseline_cache=True, **{**kwargs_tiny, **extra})
        venv.reset(seed=5)
        for _ in range(4):
            venv.step(actions)
    assert BASELINE_CACHE.hits == 0 and len(BASELINE_CACHE) == 4  # another threat: another baseline
    per_sample = BASELINE_CACHE.nbytes // 4
    small = BaselineCache(max_bytes=2 * per_sample)
    for seed in range(3):
        small.put(("config", seed), *next(iter(BASELINE_CACHE._store.values())))
    assert len(small) == 2 and small.nbytes == 2 * per_sample  # the oldest sample made room
    assert small.get_all([("config", 0)]) is None and small.get_all([("config", 1), ("config", 2)]) is not None


def test_prefix_pool_limits_the_starting_states(kwargs_tiny) -> None:
    venv = DDIMSigmaVectorEnv(num_envs=8, prefix_pool=3, **kwargs_tiny)
    starts = set()
    for seed in (0, 100):
        obs, _ = venv.reset(seed=seed)
        starts |= {x.tobytes() for x in obs["x_t"]}
    assert 1 <= len(starts) <= 3
    again = DDIMSigmaVectorEnv(num_envs=8, prefix_pool=3, **kwargs_tiny)
    np.testing.assert_array_equal(again.reset(seed=100)[0]["x_t"], obs["x_t"])


def test_eta_action_keeps_the_ddim_meaning(kwargs_tiny, tiny) -> None:
    env = DDIMSigmaEnv(**{**kwargs_tiny, "action": "eta"})
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([1.0], dtype=np.float32))
    assert info["sigma"] == pytest.approx(tiny.schedule.sigma_ddpm(4, 3), rel=1e-6)
    env = DDIMSigmaEnv(**kwargs_tiny)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([1.0], dtype=np.float32))
    assert info["sigma"] == pytest.approx(tiny.schedule.sigma_max(4, 3), rel=1e-6)
    assert tiny.schedule.sigma_max(4, 3) > 1.5 * tiny.schedule.sigma_ddpm(4, 3)  # 3.4x at t = 20
