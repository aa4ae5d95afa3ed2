from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import DDIMScheduler, UNet2DModel

from robust_envs.diffusion import (
    NoiseSchedule,
    TimestepAttack,
    ddim_step,
    load_noise_model,
    model_timestep,
    predict_x0,
)


def test_linear_schedule_matches_diffusers() -> None:
    sched = NoiseSchedule.linear()
    ref = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    assert sched.num_train_timesteps == 1000
    assert sched.alpha_bar[0] == 1.0
    torch.testing.assert_close(sched.alpha_bar[1:].float(), ref.alphas_cumprod.float(), rtol=1e-5, atol=1e-7)
    assert math.isclose(float(sched.betas[0]), 1e-4) and math.isclose(float(sched.betas[-1]), 0.02)


def test_timesteps_sequence() -> None:
    sched = NoiseSchedule.linear()
    ts = sched.timesteps(t_c=20, stride=50)
    assert ts[:3] == [970, 920, 870] and ts[18:21] == [70, 20, 19] and ts[-1] == 1
    assert len(ts) == 19 + 20
    assert sched.timesteps(t_c=1000, stride=7) == list(range(1000, 0, -1))
    with pytest.raises(ValueError, match=r"t_c must be in \[1, T=1000\], got 0"):
        sched.timesteps(0, 10)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        sched.timesteps(10, 0)


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("t, t_prev", [(120, 100), (1, 0), (20, 19)])
def test_ddim_step_matches_diffusers(eta: float, t: int, t_prev: int) -> None:
    """Our step with sigma = eta * sigma_ddpm equals diffusers' DDIMScheduler.step (same eps, same noise)."""
    stride = t - t_prev
    ref = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                        clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading")  # fmt: skip
    ref.set_timesteps(1000 // stride)
    sched = NoiseSchedule.linear()
    g = torch.Generator().manual_seed(0)
    x_t, eps, z = (torch.randn(4, 1, 8, 8, generator=g) for _ in range(3))
    expected = ref.step(eps, model_timestep(t), x_t, eta=eta, variance_noise=z)
    sigma = eta * sched.sigma_ddpm(t, t_prev)
    out = ddim_step(x_t, eps, sched.alpha_bar[t], sched.alpha_bar[t_prev], sigma, z)
    torch.testing.assert_close(out.x_prev, expected.prev_sample, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.x0_pred, expected.pred_original_sample, rtol=1e-5, atol=1e-5)


def test_ddim_step_per_sample_sigma_and_bound() -> None:
    sched = NoiseSchedule.linear()
    x_t, eps, z = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    ab_t, ab_prev = sched.alpha_bar[10], sched.alpha_bar[9]
    bound = sched.sigma_max(10, 9)
    sigma = torch.tensor([0.0, 0.5 * bound, bound], dtype=torch.float64)  # float32 would round the bound
    out = ddim_step(x_t, eps, ab_t, ab_prev, sigma, z)
    for i in range(3):
        single = ddim_step(x_t[i : i + 1], eps[i : i + 1], ab_t, ab_prev, float(sigma[i]), z[i : i + 1])
        torch.testing.assert_close(out.x_prev[i : i + 1], single.x_prev)
    # at the bound the eps direction vanishes: x_prev = sqrt(ab_prev) x0_pred + sigma z
    expected = float(ab_prev.sqrt()) * predict_x0(x_t[2:], eps[2:], ab_t) + bound * z[2:]
    torch.testing.assert_close(out.x_prev[2:], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"sample 1 has sigma=.* with bound"):
        ddim_step(x_t, eps, ab_t, ab_prev, torch.tensor([0.0, 2 * bound, 0.0]), z)
    with pytest.raises(ValueError, match="sigma must be in"):
        ddim_step(x_t, eps, ab_t, ab_prev, torch.tensor([float("nan"), 0.0, 0.0]), z)
    with pytest.raises(ValueError, match="sigma must be in"):
        ddim_step(x_t, eps, sched.alpha_bar[1], sched.alpha_bar[0], 0.01, z)  # t_prev = 0: bound is 0
    with pytest.raises(ValueError, match="noise of shape"):
        ddim_step(x_t, eps, ab_t, ab_prev, 0.5 * bound, None)


def test_sigma_ddpm_within_bound() -> None:
    sched = NoiseSchedule.linear()
    for t, t_prev in [(1000, 950), (60, 59), (2, 1), (1, 0)]:
        assert 0.0 <= sched.sigma_ddpm(t, t_prev) <= sched.sigma_max(t, t_prev) + 1e-12
    assert sched.sigma_max(1, 0) == 0.0


def test_attack_draws_are_clipped_and_seeded() -> None:
    attack = TimestepAttack(scale=1.0, clip=0.05)
    gens = [torch.Generator().manual_seed(i) for i in range(200)]
    delta = attack.sample_delta(gens, "cpu")
    assert delta.shape == (200,) and delta.abs().max() <= 0.05 and (delta.abs() == 0.05).any()
    again = attack.sample_delta([torch.Generator().manual_seed(i) for i in range(200)], "cpu")
    torch.testing.assert_close(delta, again)
    paper = TimestepAttack()  # 0.01 * N(0, 1) clipped at 0.05
    d = paper.sample_delta([torch.Generator().manual_seed(i) for i in range(2000)], "cpu")
    assert 0.008 < float(d.std()) < 0.012
    assert not TimestepAttack(kind="none").sample_delta(gens, "cpu").any()
    with pytest.raises(ValueError, match="attack must be one of"):
        TimestepAttack(kind="fgsm")
    with pytest.raises(ValueError, match="attack_scale must be a finite number >= 0"):
        TimestepAttack(scale=-1.0)


def test_float_timesteps_reach_the_network(tiny_unet_dir) -> None:
    """diffusers truncates a Python float timestep to long; a float tensor keeps the fraction."""
    unet = UNet2DModel.from_pretrained(tiny_unet_dir).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        truncated = unet(x, 5.7).sample
        five = unet(x, torch.tensor([5.0, 5.0])).sample
        fractional = unet(x, torch.tensor([5.7, 5.7])).sample
    torch.testing.assert_close(truncated, five)  # the pitfall
    assert (fractional - five).abs().max() > 1e-6  # the float tensor gets through
    model = load_noise_model(tiny_unet_dir)
    torch.testing.assert_close(model(x, torch.tensor([5.7, 5.7])), fractional)
    with pytest.raises(TypeError, match="float tensor"):
        model(x, 5.7)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="float tensor"):
        model(x, torch.tensor([5, 5]))


def test_load_noise_model_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not a diffusers folder"):
        load_noise_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        load_noise_model("nobody/no-such-ddpm", local_files_only=True)
    with pytest.raises(FileNotFoundError, match="neither 'embedded'"):
        load_noise_model("no_such_thing")


def test_load_pipeline_folder_layout(tiny_unet_dir, tmp_path) -> None:
    """A pipeline folder (unet/ + scheduler/) loads like a UNet folder, schedule from scheduler_config."""
    import shutil

    shutil.copytree(tiny_unet_dir, tmp_path / "unet")
    (tmp_path / "scheduler").mkdir()
    shutil.move(str(tmp_path / "unet" / "scheduler_config.json"), tmp_path / "scheduler" / "scheduler_config.json")
    model = load_noise_model(tmp_path)
    assert model.sample_shape == (1, 8, 8) and model.schedule.num_train_timesteps == 1000


def test_embedded_model_loads_and_denoises() -> None:
    """The embedded default predicts noise well at a moderate t on real test images."""
    from robust_envs.data import load_fashion_mnist

    model = load_noise_model("embedded")
    assert model.sample_shape == (1, 28, 28)
    x0 = load_fashion_mnist("test").float_images()[:64] * 2 - 1
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(x0.shape, generator=g)
    t = 200
    ab = model.schedule.alpha_bar[t].float()
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    pred = model(x_t, torch.full((64,), float(model_timestep(t))))
    mse = float((pred - eps).pow(2).mean())
    assert mse < 0.2, f"embedded model eps MSE at t=200 is {mse:.3f} (random guessing gives ~1)"


def test_train_unet_resumes_exactly_from_its_checkpoint(tmp_path, one_thread) -> None:
    """A run stopped after one step and resumed from ``--checkpoint`` ends with the weights of an uninterrupted
    run; a checkpoint of other training fields is refused by name.
    """
    from safetensors.torch import load_file

    from scripts.train_unet import Args, main

    common = {"steps": 3, "batch_size": 4, "device": "cpu", "checkpoint_every": 1}
    main(Args(**common, out=str(tmp_path / "a"), checkpoint=str(tmp_path / "a.pt")))
    main(Args(**common, out=str(tmp_path / "b"), checkpoint=str(tmp_path / "b.pt"), max_minutes=0.0))  # one step
    assert torch.load(tmp_path / "b.pt", weights_only=False)["steps"] == 1
    main(Args(**common, out=str(tmp_path / "b"), checkpoint=str(tmp_path / "b.pt")))
    a = load_file(tmp_path / "a" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "b" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "b" / "training.json").read_text())["steps_done"] == 3
    with pytest.raises(ValueError, match="other training fields"):
        main(Args(**{**common, "batch_size": 8}, out=str(tmp_path / "b"), checkpoint=str(tmp_path / "b.pt")))
