"""GPU checks, skipped without CUDA (``pytest tests/test_cuda.py`` on a machine with one): CPU and CUDA episodes agree, CUDA episodes are deterministic for a seed, the
torch API (TorchVectorEnv) and the on-device PPO run on CUDA, and the leaderboard's evaluation protocol runs on CUDA
on a tiny classifier.

Random draws and devices: each episode's generator lives on the env's device, and for one seed CUDA's generator
(Philox) does not produce the numbers of the CPU's (Mersenne Twister). A seed therefore reproduces an episode on one
device; CPU-CUDA agreement is checked under common draws (:func:`shared_draws`: every seeded ``torch.randn`` is drawn
from a CPU generator with the episode generator's seed and moved to the device), which isolates the numerics (network,
DDIM update, scorer) from the random streams. TF32 is switched off for the comparison (PyTorch enables it for cuDNN
convolutions by default, ~1e-3 relative error).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")


@pytest.fixture()
def no_tf32():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture()
def shared_draws(monkeypatch):
    """Every ``torch.randn(..., generator=g)`` drawn on the CPU from a generator seeded with ``g.initial_seed()``."""
    randn = torch.randn
    # keyed by id and seed; the value keeps the episode generator alive so that its id is never reused
    cpu_generators: dict[tuple[int, int], tuple[torch.Generator, torch.Generator]] = {}

    def shared(*size, generator=None, device=None, **kwargs):
        if generator is None:
            return randn(*size, device=device, **kwargs)
        key = (id(generator), generator.initial_seed())
        if key not in cpu_generators:
            cpu_generators[key] = (generator, torch.Generator().manual_seed(generator.initial_seed()))
        out = randn(*size, generator=cpu_generators[key][1], **kwargs)
        return out if device is None else out.to(device)

    monkeypatch.setattr(torch, "randn", shared)


def episode(kwargs: dict, device: str | torch.device, seed: int, actions: list[np.ndarray]) -> dict[str, np.ndarray]:
    """One lockstep episode through the numpy API: observations, rewards and infos stacked over steps."""
    from robust_envs.envs.ddim_sigma import DDIMSigmaVectorEnv

    venv = DDIMSigmaVectorEnv(num_envs=actions[0].shape[0], **{**kwargs, "device": device})
    obs, _ = venv.reset(seed=seed)
    xs, rewards, q_agent, terminated = [obs["x_t"]], [], [], []
    for a in actions:
        obs, r, term, _, info = venv.step(a)
        xs.append(obs["x_t"])
        rewards.append(r)
        q_agent.append(info["q_agent"])
        terminated.append(term)
    return {"x_t": np.stack(xs), "reward": np.stack(rewards), "q_agent": np.stack(q_agent),
            "terminated": np.stack(terminated)}  # fmt: skip


def _actions(n: int, t_c: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 1, size=(n, 1)).astype(np.float32) for _ in range(t_c)]


def test_cpu_and_cuda_episodes_agree_under_common_draws(kwargs_tiny, no_tf32, shared_draws) -> None:
    kw = {**kwargs_tiny, "attack_scale": 0.5, "attack_clip": 1.0}  # an attack that moves the timestep visibly
    actions = _actions(3, kw["t_c"])
    cpu, cuda = episode(kw, "cpu", 5, actions), episode(kw, CUDA, 5, actions)
    np.testing.assert_allclose(cuda["x_t"], cpu["x_t"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cuda["reward"], cpu["reward"], atol=1e-4)
    np.testing.assert_allclose(cuda["q_agent"], cpu["q_agent"], atol=1e-4)
    np.testing.assert_array_equal(cuda["terminated"], cpu["terminated"])
    assert cpu["terminated"][-1].all()


@pytest.mark.slow
def test_cpu_and_cuda_agree_on_the_embedded_model(no_tf32, shared_draws) -> None:
    kw = {"t_c": 3, "stride": 100}  # the embedded UNet and levels scorer
    actions = _actions(4, 3, seed=1)
    cpu, cuda = episode(kw, "cpu", 0, actions), episode(kw, CUDA, 0, actions)
    np.testing.assert_allclose(cuda["x_t"], cpu["x_t"], rtol=1e-3, atol=2e-3)
    np.testing.assert_allclose(cuda["reward"], cpu["reward"], atol=2e-3)


def test_cuda_episodes_are_deterministic_for_a_seed(kwargs_tiny) -> None:
    actions = _actions(3, kwargs_tiny["t_c"])
    a, b = episode(kwargs_tiny, CUDA, 7, actions), episode(kwargs_tiny, CUDA, 7, actions)
    other = episode(kwargs_tiny, CUDA, 8, actions)
    for key in ("x_t", "reward", "q_agent"):
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6)
    assert not np.allclose(a["x_t"][0], other["x_t"][0])


def test_torch_api_on_cuda_matches_numpy_api_and_stays_on_the_device(kwargs_tiny) -> None:
    from robust_envs.envs.ddim_sigma import DDIMSigmaVectorEnv
    from robust_envs.wrappers import TorchVectorEnv

    kw = {**kwargs_tiny, "device": CUDA}
    ref = DDIMSigmaVectorEnv(num_envs=2, **kw)
    venv = TorchVectorEnv(DDIMSigmaVectorEnv(num_envs=2, **kw))
    assert venv.device.type == "cuda"
    obs_n, _ = ref.reset(seed=3)
    obs_t, info_t = venv.reset(seed=3)
    assert obs_t["x_t"].is_cuda and obs_t["t"].is_cuda and info_t["t"].is_cuda
    np.testing.assert_allclose(obs_t["x_t"].cpu().numpy(), obs_n["x_t"], atol=1e-6)
    for a in _actions(2, kw["t_c"] + 1, seed=2):  # one more step than an episode: the NEXT_STEP autoreset
        obs_n, r_n, term_n, _, _ = ref.step(a)
        obs_t, r_t, term_t, trunc_t, _ = venv.step(torch.from_numpy(a).to(CUDA))
        assert obs_t["x_t"].is_cuda and r_t.is_cuda and term_t.is_cuda and trunc_t.is_cuda
        np.testing.assert_allclose(obs_t["x_t"].cpu().numpy(), obs_n["x_t"], atol=1e-5)
        np.testing.assert_allclose(r_t.cpu().numpy(), r_n, atol=1e-6)
        np.testing.assert_array_equal(term_t.cpu().numpy(), term_n)
    with pytest.raises(ValueError, match="on the env's device cuda.*got one on cpu"):
        venv.step(torch.full((2, 1), 0.5))


def test_classifier_torch_api_on_cuda() -> None:
    from robust_envs.envs.classifier_reward import ClassifierRewardVectorEnv
    from robust_envs.wrappers import TorchVectorEnv

    kw = {"num_envs": 3, "dataset": "digits", "episode_length": 2, "device": "cuda"}
    ref, venv = ClassifierRewardVectorEnv(**kw), TorchVectorEnv(ClassifierRewardVectorEnv(**kw))
    obs_n, _ = ref.reset(seed=1)
    obs_t, _ = venv.reset(seed=1)
    assert obs_t.is_cuda and obs_t.dtype == torch.uint8
    np.testing.assert_array_equal(obs_t.cpu().numpy(), obs_n)
    for _ in range(3):
        actions = torch.tensor([0, 1, 2], device=CUDA)
        obs_n, r_n, term_n, _, _ = ref.step(actions)
        obs_t, r_t, term_t, _, info_t = venv.step(actions)
        np.testing.assert_array_equal(obs_t.cpu().numpy(), obs_n)
        np.testing.assert_array_equal(r_t.cpu().numpy(), r_n.astype(np.float32))
        np.testing.assert_array_equal(term_t.cpu().numpy(), term_n)
    with pytest.raises(ValueError, match="device"):
        venv.step(torch.tensor([0, 1, 2]))


@pytest.mark.slow
def test_ppo_torch_trains_on_cuda(kwargs_tiny, tmp_path) -> None:
    from agents.evaluate_sigma import evaluate_policy
    from agents.ppo_torch import Args, TorchSigmaPolicy, train

    kw = {k: v for k, v in kwargs_tiny.items() if k != "device"}
    args = Args(**kw, device="cuda", num_envs=4, total_timesteps=128, n_steps=16, batch_size=32, n_epochs=2,
                prefix_pool=4, progress_bar=False, tensorboard=False, out_dir=str(tmp_path / "run"))  # fmt: skip
    result = train(args)
    assert result.env_steps == 128 and all(np.isfinite(v) for v in result.last_losses.values())
    assert result.policy.device.type == "cuda"
    loaded = TorchSigmaPolicy.load(tmp_path / "run", device="cuda")
    res = evaluate_policy("ppo_torch", loaded, {**kwargs_tiny, "device": "cuda"}, n_samples=4, batch_size=4,
                          progress=False)  # fmt: skip
    assert res.r1.shape == (4,) and np.isfinite(res.r1).all()


@pytest.mark.slow
def test_leaderboard_evaluation_runs_on_cuda_on_a_tiny_classifier() -> None:
    """The leaderboard's protocol (benchmarks.evaluate.evaluate, AutoAttack aside) on a digits SmallCNN on CUDA."""
    from benchmarks.evaluate import EvalConfig, eval_subset, evaluate
    from benchmarks.trainers import get_trainer
    from robust_envs.attacks import protocol_suite
    from robust_envs.data import load_dataset
    from tests._classifier_models import trained_digits_model

    specs = protocol_suite("digits", square_queries=100, autoattack=False)
    fast = {"pgd100": 20, "slide_l1": 20, "pgd_l2": 10}
    suite = [s if s.key not in fast else type(s)(**{**s.__dict__, "steps": fast[s.key]}) for s in specs]
    sub = eval_subset(load_dataset("digits", "test"), 40, seed=0)
    cfg = EvalConfig(n_eval=40)
    cpu_model = trained_digits_model("standard")
    on_cpu = evaluate(cpu_model, sub, "digits", cfg, suite=suite)
    on_cuda = evaluate(copy.deepcopy(cpu_model).to(CUDA), sub, "digits", cfg, suite=suite)
    assert on_cuda.metrics.clean_acc == on_cpu.metrics.clean_acc
    for key, acc in on_cpu.metrics.attack_acc.items():
        assert abs(on_cuda.metrics.attack_acc[key] - acc) <= 0.15, key  # 6 of 40 points: random draws differ by device
    trainer = get_trainer("standard")
    model = trainer(trainer.default_config("digits", epochs=1)).train(load_dataset("digits", "train"), 0, device=CUDA)
    assert next(model.parameters()).is_cuda
    res = evaluate(model, sub, "digits", cfg, suite=suite)
    assert 0.0 <= res.metrics.robust_acc <= res.metrics.clean_acc <= 1.0
