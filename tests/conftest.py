"""Shared fixtures: a tiny random UNet (fast stand-in for the embedded default) and a cheap evaluator."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# keep the suite on few threads: CI has 2 cores
torch.set_num_threads(min(2, os.cpu_count() or 1))

from robust_envs.quality import QualityEvaluator  # noqa: E402


class ContrastEvaluator(QualityEvaluator):
    """Deterministic test evaluator: 1 + 4 * per-image standard deviation * 2, clamped to [1, 5]."""

    name = "contrast"

    def score(self, images: torch.Tensor) -> torch.Tensor:
        return 1.0 + 8.0 * images.flatten(1).std(1)


@pytest.fixture(scope="session")
def tiny_unet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers folder with a random 1x8x8 UNet2DModel and a linear scheduler config."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("tiny_unet")
    unet.save_pretrained(path)
    DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02).save_config(path)
    return path


@pytest.fixture()
def contrast_evaluator() -> ContrastEvaluator:
    return ContrastEvaluator()


@pytest.fixture()
def kwargs_tiny(tiny_unet_dir, contrast_evaluator) -> dict:
    """DDIMSigma-v0 arguments on the tiny UNet: t_c = 4, one strided step above it."""
    return {"model": str(tiny_unet_dir), "evaluator": contrast_evaluator, "t_c": 4, "stride": 250, "device": "cpu"}


@pytest.fixture()
def one_thread():
    """Small models on a shared 2-core machine run fastest on one torch thread (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
