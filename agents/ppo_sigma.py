"""Train the paper's sigma scheduler: SB3 PPO with an MLP policy on DDIMSigma-v0 (seed 000 sec. 5.1.3).

Paper settings: PPO (Schulman et al. 2017) with clip epsilon 0.2, gamma 0.995, an MLP policy on the state
``(x_t, t)``. The rest (rollout length, batch, learning rate, budget) is not in the paper; the defaults
below are sized for a CPU demo. The batched ``DDIMSigmaVectorEnv`` feeds PPO through
:func:`robust_envs.wrappers.make_sb3_vec_env`.

Usage::

    python -m agents.ppo_sigma --t-c 20 --total-timesteps 8192 --num-envs 16
    tensorboard --logdir runs/
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from stable_baselines3 import PPO

from robust_envs.wrappers import make_sb3_vec_env

__all__ = ["Args", "env_kwargs", "train"]


@dataclass
class Args:
    """Arguments of the PPO sigma scheduler (one docstring per field, CleanRL style)."""

    t_c: int = 20
    """critical timestep: the agent schedules sigma for t = t_c..1 (episode length)"""
    stride: int = 50
    """DDIM stride d above t_c"""
    attack: str = "gaussian"
    """timestep attack: 'gaussian' (seed 000 sec. 5.1.3) or 'none'"""
    attack_scale: float = 0.01
    """std of the timestep perturbation (timestep units)"""
    attack_clip: float = 0.05
    """clip of the timestep perturbation (timestep units)"""
    evaluator: str = "levels"
    """quality evaluator: 'levels' (embedded), 'qalign' (GPU + weights) or a pyiqa NR metric"""
    model: str = "embedded"
    """noise network: 'embedded', a diffusers folder or a hub id in the local cache"""
    device: str = "auto"
    """torch device for the env's networks ('auto': CUDA if available)"""
    num_envs: int = 16
    """episodes stepped in lockstep by the batched env"""
    total_timesteps: int = 8192
    """env steps of training (all envs together)"""
    n_steps: int = 64
    """rollout length per env per PPO update"""
    batch_size: int = 256
    """PPO minibatch size"""
    n_epochs: int = 4
    """PPO epochs per update"""
    learning_rate: float = 3e-4
    """Adam learning rate"""
    gamma: float = 0.995
    """discount (paper: 0.995)"""
    clip_range: float = 0.2
    """PPO clip epsilon (paper: 0.2)"""
    seed: int = 0
    """seed of the env and of PPO"""
    out_dir: str = "runs/ppo_sigma"
    """where the checkpoint, args and TensorBoard logs go"""
    progress_bar: bool = True
    """show a tqdm/rich progress bar"""


def env_kwargs(args: Any) -> dict[str, Any]:
    """The DDIMSigma-v0 constructor arguments in ``args`` (shared by training and evaluation)."""
    return {
        "t_c": args.t_c, "stride": args.stride, "attack": args.attack, "attack_scale": args.attack_scale,
        "attack_clip": args.attack_clip, "evaluator": args.evaluator, "model": args.model,
        "device": None if args.device == "auto" else args.device,
    }  # fmt: skip


def train(args: Args) -> PPO:
    """Train PPO on DDIMSigma-v0 and save ``<out_dir>/ppo_sigma.zip`` and ``<out_dir>/args.json``."""
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "args.json").write_text(json.dumps(asdict(args), indent=2))
    torch.manual_seed(args.seed)
    venv = make_sb3_vec_env("DDIMSigma-v0", num_envs=args.num_envs, **env_kwargs(args))
    venv.seed(args.seed)
    model = PPO(
        "MultiInputPolicy",
        venv,
        n_steps=args.n_steps,
        batch_size=args.batch_size,
        n_epochs=args.n_epochs,
        learning_rate=args.learning_rate,
        gamma=args.gamma,
        clip_range=args.clip_range,
        seed=args.seed,
        tensorboard_log=str(out / "tb"),
        device="cpu",  # the MLP policy is tiny; the env's networks use args.device
        verbose=0,
    )
    model.learn(total_timesteps=args.total_timesteps, progress_bar=args.progress_bar, tb_log_name="ppo")
    model.save(out / "ppo_sigma")
    venv.close()
    return model


def parse_args(argv: list[str] | None = None, defaults: Args | None = None) -> Args:
    """Command-line flags for every :class:`Args` field (``--t-c 20`` etc.)."""
    defaults = defaults or Args()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(Args):
        value = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)
    return Args(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    trained = train(parse_args())
    print(f"saved {Path(parse_args().out_dir) / 'ppo_sigma.zip'} after {trained.num_timesteps} steps")
