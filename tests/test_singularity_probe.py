"""benchmarks.singularity_probe: numbers against a hand computation, and the rounding defence."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from benchmarks.singularity_probe import render, round_timestep, summarise, timestep_sensitivity
from robust_envs.diffusion import load_noise_model


@pytest.fixture(scope="module")
def tiny(tiny_unet_dir: Path):
    return load_noise_model(str(tiny_unet_dir))


def _images(n: int = 6) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_round_timestep() -> None:
    tau = torch.tensor([0.0, 0.3, -0.05, -0.5, 4.49, 4.5, 998.7, 1049.0])
    assert round_timestep(tau, 1000).tolist() == [0.0, 0.0, 0.0, 0.0, 4.0, 5.0, 999.0, 999.0]


def test_matches_hand_computation(tiny) -> None:
    """One t and delta, recomputed by hand from the UNet, the forward process and DDIM Eq. 12."""
    x0, t, delta = _images(), 20, 0.5
    res = timestep_sensitivity(tiny, x0, [t], [delta], torch.Generator().manual_seed(3))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    ab, ab_prev = tiny.schedule.alpha_bar[t].item(), tiny.schedule.alpha_bar[t - 1].item()
    x_t = (math.sqrt(ab) * x0.double() + math.sqrt(1 - ab) * noise.double()).float()
    n = x0.shape[0]
    with torch.no_grad():
        e0 = tiny.unet(x_t, torch.full((n,), t - 1.0)).sample.double()
        e1 = tiny.unet(x_t, torch.full((n,), t - 1.0 + delta)).sample.double()
    de = (e1 - e0).flatten(1)
    eps_rel = de.norm(dim=1) / (delta * e0.flatten(1).norm(dim=1))
    x0_rate = math.sqrt((1 - ab) / ab) * de.pow(2).mean(1).sqrt() / delta
    c_prev = -math.sqrt(ab_prev) * math.sqrt((1 - ab) / ab) + math.sqrt(1 - ab_prev)
    x_prev_rate = abs(c_prev) * de.pow(2).mean(1).sqrt() / delta
    torch.testing.assert_close(res.eps_rel[0, 0], eps_rel, rtol=1e-6, atol=0)
    torch.testing.assert_close(res.x0_rate[0, 0], x0_rate, rtol=1e-5, atol=0)
    torch.testing.assert_close(res.x_prev_rate[0, 0], x_prev_rate, rtol=1e-4, atol=0)
    # the rounded run of delta = 0.5 is a whole step: eps(tau + 1)
    with torch.no_grad():
        e_r = tiny.unet(x_t, torch.full((n,), float(t))).sample.double()
    torch.testing.assert_close(
        res.eps_rel_rounded[0, 0], (e_r - e0).flatten(1).norm(dim=1) / (delta * e0.flatten(1).norm(dim=1))
    )
    assert bool((res.eps_rel[0, 0] > 0).all())


def test_rounding_removes_sub_integer_delta_exactly(tiny) -> None:
    ts, deltas = [1, 2, 1000], [0.05, -0.05, 0.3, -0.49]
    res = timestep_sensitivity(tiny, _images(), ts, deltas, torch.Generator().manual_seed(0))
    assert bool(res.rounded_exact.all())
    for key in ("eps_rel_rounded", "x0_rate_rounded", "x_prev_rate_rounded"):
        assert bool((getattr(res, key) == 0).all()), key
    assert bool((res.seed_x0_change_rounded == 0).all())
    assert bool((res.eps_rel > 0).all()) and bool((res.seed_x0_change > 0).all())  # unrounded, the input does move
    assert res.trajectory_eps_rel[-1].isnan().all() and not res.trajectory_eps_rel[:-1].isnan().any()


def test_summary_and_render(tiny) -> None:
    res = timestep_sensitivity(tiny, _images(4), [1, 2, 20], [0.05, 1.0, -0.05], torch.Generator().manual_seed(0))
    rows = summarise(res, tiny.schedule.alpha_bar)
    meta = {"argv": "--n 4", "n": 4, "model": "tiny", "seed": 0, "deltas": list(res.deltas), "ts": list(res.ts),
            "wall_s": 1.0, "hardware": "test"}  # fmt: skip
    text = render({"meta": meta, "rows": rows})
    assert "do not edit by hand" in text and "| 20 (19) |" in text
    assert "identical to the unperturbed one at every t (bit for bit)" in text
    with pytest.raises(ValueError, match="nonzero"):
        timestep_sensitivity(tiny, _images(2), [1], [0.0], torch.Generator())
    with pytest.raises(ValueError, match=r"1\.\.T=1000"):
        timestep_sensitivity(tiny, _images(2), [0], [1.0], torch.Generator())
