"""Diffusion backend: noise schedules, the DDIM step with per-sample sigma, the timestep attack, loading."""

from robust_envs.diffusion.attack import ATTACKS, DEFENCES, TimestepAttack, TimestepDefence, attacked_eps
from robust_envs.diffusion.models import EMBEDDED_UNET, NoiseModel, load_noise_model
from robust_envs.diffusion.sampler import ddim_steps, randn_per_generator, sample_x0
from robust_envs.diffusion.schedule import DDIMStepOutput, NoiseSchedule, ddim_step, model_timestep, predict_x0

__all__ = [
    "ATTACKS",
    "DEFENCES",
    "EMBEDDED_UNET",
    "DDIMStepOutput",
    "NoiseModel",
    "NoiseSchedule",
    "TimestepAttack",
    "TimestepDefence",
    "attacked_eps",
    "ddim_step",
    "ddim_steps",
    "randn_per_generator",
    "sample_x0",
    "load_noise_model",
    "model_timestep",
    "predict_x0",
]
