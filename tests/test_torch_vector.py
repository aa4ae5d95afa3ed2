"""TorchVectorEnv: the torch API of the batched envs against their numpy API, step for step."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

import robust_envs  # noqa: F401
from robust_envs.envs import _lockstep, ddim_sigma
from robust_envs.envs.classifier_reward import ClassifierRewardVectorEnv
from robust_envs.envs.ddim_sigma import DDIMSigmaVectorEnv
from robust_envs.wrappers import TorchVectorEnv

CLF = {"dataset": "digits", "episode_length": 3}


pytestmark = pytest.mark.usefixtures("one_thread")


def _np(x):
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else x


@pytest.fixture()
def no_host_copies(monkeypatch):
    """Make every tensor -> numpy conversion (and numpy -> tensor in the DDIM env) fail while active."""

    def boom(*args, **kwargs):
        raise AssertionError("a host conversion happened on the torch path")

    def arm():
        monkeypatch.setattr(torch.Tensor, "numpy", boom)
        monkeypatch.setattr(_lockstep, "to_numpy", boom)
        monkeypatch.setattr(ddim_sigma, "to_numpy", boom)

    return arm


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_ddim_torch_path_matches_numpy_path_across_an_autoreset(kwargs_tiny, mode, no_host_copies, monkeypatch) -> None:
    n, t_c = 3, kwargs_tiny["t_c"]
    ref = DDIMSigmaVectorEnv(num_envs=n, autoreset_mode=mode, **kwargs_tiny)
    venv = TorchVectorEnv(DDIMSigmaVectorEnv(num_envs=n, autoreset_mode=mode, **kwargs_tiny))
    rng = np.random.default_rng(0)
    actions = [rng.uniform(0, 1, size=(n, 1)).astype(np.float32) for _ in range(2 * t_c + 2)]
    obs_np, info_np = ref.reset(seed=4)
    records_np = [ref.step(a) for a in actions]
    no_host_copies()
    monkeypatch.setattr(torch, "as_tensor", lambda *a, **k: pytest.fail("numpy -> torch on the torch path"))
    obs_t, info_t = venv.reset(seed=4)
    records_t = [venv.step(torch.from_numpy(a)) for a in actions]  # from_numpy: the test's own input
    monkeypatch.undo()
    assert venv.device == torch.device("cpu") and obs_t["x_t"].dtype == torch.float32
    np.testing.assert_allclose(_np(obs_t["x_t"]), obs_np["x_t"], atol=1e-6)
    np.testing.assert_array_equal(_np(info_t["t"]), info_np["t"])
    ends = 0
    for (o_n, r_n, te_n, tr_n, i_n), (o_t, r_t, te_t, tr_t, i_t) in zip(records_np, records_t, strict=True):
        assert r_t.dtype == torch.float32 and te_t.dtype == torch.bool and r_t.shape == (n,)
        np.testing.assert_allclose(_np(o_t["x_t"]), o_n["x_t"], atol=1e-5)
        np.testing.assert_array_equal(_np(o_t["t"]), o_n["t"])
        np.testing.assert_allclose(_np(r_t), r_n, atol=1e-6)
        np.testing.assert_array_equal(_np(te_t), te_n)
        np.testing.assert_array_equal(_np(tr_t), tr_n)
        for key in ("q_agent", "q_baseline", "sigma", "t"):
            if key in i_n:
                np.testing.assert_allclose(_np(i_t[key]), i_n[key], atol=1e-6)
        if "final_obs" in i_n:
            np.testing.assert_allclose(
                _np(i_t["final_obs"]["x_t"]), np.stack([f["x_t"] for f in i_n["final_obs"]]), atol=1e-5
            )
            np.testing.assert_allclose(_np(i_t["final_info"]["q0_agent"]), i_n["final_info"]["q0_agent"], atol=1e-6)
        ends += int(te_n.all())
    assert ends == 2  # two episode ends: the autoreset was crossed twice


def test_classifier_torch_path_matches_numpy_path(no_host_copies, monkeypatch) -> None:
    n = 4
    ref = ClassifierRewardVectorEnv(num_envs=n, **CLF)
    venv = TorchVectorEnv(
        gym.make_vec("ClassifierReward-v0", num_envs=n, vectorization_mode="vector_entry_point", **CLF)
    )
    rng = np.random.default_rng(1)
    actions = [rng.integers(0, 10, size=n) for _ in range(8)]
    obs_np, _ = ref.reset(seed=2)
    records_np = [ref.step(a) for a in actions]
    actions_t = [torch.from_numpy(a) for a in actions]
    no_host_copies()
    obs_t, _ = venv.reset(seed=2)
    records_t = [venv.step(a) for a in actions_t]
    monkeypatch.undo()
    assert obs_t.dtype == torch.uint8
    np.testing.assert_array_equal(obs_t.numpy(), obs_np)
    for (o_n, r_n, te_n, tr_n, i_n), (o_t, r_t, te_t, tr_t, i_t) in zip(records_np, records_t, strict=True):
        np.testing.assert_array_equal(o_t.numpy(), o_n)
        np.testing.assert_array_equal(r_t.numpy(), r_n.astype(np.float32))
        np.testing.assert_array_equal(te_t.numpy(), te_n)
        np.testing.assert_array_equal(tr_t.numpy(), tr_n)
        assert set(i_t) == set(i_n)  # empty on the autoreset steps
        if "label" in i_n:
            np.testing.assert_array_equal(i_t["label"].numpy(), i_n["label"])
            np.testing.assert_array_equal(i_t["correct"].numpy(), i_n["correct"])
            assert i_t["_label"].dtype == torch.bool and bool(i_t["_label"].all())
    assert sum(int(r[2].all()) for r in records_np) == 2  # episodes of 3: ends at steps 3 and 7 (4 and 8: resets)


@pytest.mark.parametrize(
    ("action", "error", "match"),
    [
        (torch.zeros(3, 1), ValueError, r"shape \(2, 1\).*got shape \(3, 1\)"),
        (torch.tensor([[0.5], [1.5]]), ValueError, r"finite number in \[0, 1\]; env 1 got 1.5"),
        (torch.tensor([[float("nan")], [0.5]]), ValueError, r"\[0, 1\]; env 0 got nan"),
        (torch.tensor([[0], [1]]), TypeError, r"floating-point tensor with values in \[0, 1\], got dtype torch.int64"),
        (torch.zeros(2, 1, device="meta"), ValueError, r"on the env's device cpu, got one on meta"),
    ],
)
def test_ddim_bad_tensor_actions_raise(kwargs_tiny, action, error, match) -> None:
    venv = TorchVectorEnv(DDIMSigmaVectorEnv(num_envs=2, **kwargs_tiny))
    venv.reset(seed=0)
    with pytest.raises(error, match=match):
        venv.step(action)
    venv.step(torch.full((2, 1), 0.5))  # still usable


@pytest.mark.parametrize(
    ("action", "error", "match"),
    [
        (torch.tensor([0, 1]), ValueError, r"shape \(3,\)"),
        (torch.tensor([0, 1, 10]), ValueError, r"class labels in \[0, 10\), got values in \[0, 10\]"),
        (torch.tensor([0.0, 1.0, 2.0]), TypeError, r"integers in \[0, 10\), got a tensor of dtype torch.float32"),
        (torch.zeros(3, dtype=torch.int64, device="meta"), ValueError, r"on the env's device cpu .*got one on meta"),
    ],
)
def test_classifier_bad_tensor_actions_raise(action, error, match) -> None:
    venv = TorchVectorEnv(ClassifierRewardVectorEnv(num_envs=3, **CLF))
    venv.reset(seed=0)
    with pytest.raises(error, match=match):
        venv.step(action)


def test_wrapper_refuses_envs_it_cannot_serve_natively(kwargs_tiny) -> None:
    with pytest.raises(TypeError, match="NumpyToTorch"):
        TorchVectorEnv(gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync"))
    from gymnasium.wrappers.vector import RescaleAction

    wrapped = RescaleAction(DDIMSigmaVectorEnv(num_envs=2, **kwargs_tiny), np.float32(-1.0), np.float32(1.0))
    with pytest.raises(TypeError, match="not wrapped"):
        TorchVectorEnv(wrapped)
