"""Train the embedded default noise network of DDIMSigma-v0 on Fashion-MNIST train.

A diffusers ``UNet2DModel`` (epsilon prediction) is fitted with the DDPM objective (Ho et al. 2020,
Eq. 14: ``|| eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t) ||^2`` with ``t``
uniform) on the linear beta schedule 1e-4..0.02, T = 1000. Timesteps follow diffusers: the network
input ``i`` in [0, 999] pairs with ``alphas_cumprod[i]``. The EMA weights are saved as a diffusers
folder (``config.json``, ``diffusion_pytorch_model.safetensors``, ``scheduler_config.json``) plus
``training.json`` recording the command, seed, steps, wall time and hardware.

Usage (the command that made ``robust_envs/assets/ddpm_fmnist``)::

    python scripts/train_unet.py --steps 2400 --max-minutes 45 --seed 0
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from robust_envs.data import load_fashion_mnist  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "robust_envs" / "assets" / "ddpm_fmnist"


@dataclass
class Args:
    steps: int = 2400
    """optimiser steps (batches)"""
    max_minutes: float = 45.0
    """stop early after this wall time, keeping what was learnt"""
    batch_size: int = 128
    """images per batch"""
    lr: float = 1e-3
    """AdamW peak learning rate (linear warm-up, cosine decay)"""
    ema_decay: float = 0.999
    """decay of the exponential moving average of the weights that is saved"""
    seed: int = 0
    """seed of torch (weights, batches, noise)"""
    out: str = str(DEFAULT_OUT)
    """output diffusers folder"""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """torch device"""
    init_from: str = ""
    """resume: a diffusers folder (the EMA weights of an earlier run) to start model and EMA from"""
    previous_steps: int = 0
    """resume: steps that earlier run made (the LR schedule continues from there; counted in steps_done)"""
    checkpoint: str = ""
    """full training state (model, EMA, optimiser, LR schedule, RNG, losses), written atomically every
    ``checkpoint_every`` steps; when the file exists the run resumes from it exactly (its training fields
    must match), so a killed run loses at most ``checkpoint_every`` steps"""
    checkpoint_every: int = 50
    """steps between two writes of ``checkpoint``"""


def build_unet() -> UNet2DModel:
    """The embedded architecture: 28 x 28 x 1, channels (32, 64, 128), attention at 7 x 7 only."""
    return UNet2DModel(
        sample_size=28,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )


def main(args: Args) -> None:
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    data = load_fashion_mnist("train").images.float().div(127.5).sub(1.0).to(device)
    unet = build_unet().to(device)
    if args.init_from:
        unet.load_state_dict(UNet2DModel.from_pretrained(args.init_from).state_dict())
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                              clip_sample=False)  # the env's DDIM does not clip x0
    alphas_cumprod = scheduler.alphas_cumprod.to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = 100 if not args.init_from else 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup)
        * 0.5
        * (1 + math.cos(math.pi * min(s + args.previous_steps, args.steps) / args.steps)),
    )
    start = time.time()
    losses: list[float] = []
    first, wall_before = args.previous_steps, 0.0
    ckpt = Path(args.checkpoint) if args.checkpoint else None
    if ckpt is not None and ckpt.is_file():
        first, wall_before, losses = _resume(ckpt, args, unet, ema, opt, sched)
    done = first
    bar = tqdm(range(first, args.steps), desc="train unet", mininterval=10, initial=first, total=args.steps)
    for step in bar:
        idx = torch.randint(0, data.shape[0], (args.batch_size,), device=device)
        x0 = data[idx]
        x0 = torch.where(torch.rand(x0.shape[0], 1, 1, 1, device=device) < 0.5, x0, x0.flip(-1))
        t = torch.randint(0, 1000, (x0.shape[0],), device=device)
        eps = torch.randn_like(x0)
        ab = alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        loss = (unet(x_t, t).sample - eps).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = min(args.ema_decay, (1 + step) / (10 + step))  # step counts from previous_steps
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), unet.parameters(), strict=True):
                p_ema.lerp_(p, 1 - decay)
        losses.append(loss.item())
        done = step + 1
        if step % 50 == 0:
            bar.set_postfix(loss=sum(losses[-50:]) / len(losses[-50:]))
        over_time = time.time() - start > 60 * args.max_minutes
        if ckpt is not None and ((step + 1) % args.checkpoint_every == 0 or over_time):
            _checkpoint(ckpt, args, done, wall_before + time.time() - start, losses, unet, ema, opt, sched)
        if done % 200 == 0 or over_time:
            save(ema, scheduler, args, done, wall_before + time.time() - start, losses)
        if over_time:
            break
    if ckpt is not None:
        _checkpoint(ckpt, args, done, wall_before + time.time() - start, losses, unet, ema, opt, sched)
    save(ema, scheduler, args, done, wall_before + time.time() - start, losses)


# Fields that must match for a checkpoint to be resumed (the others, e.g. max_minutes, may change per call).
_RESUME_FIELDS = ("steps", "batch_size", "lr", "ema_decay", "seed", "init_from", "previous_steps")


def _checkpoint(path: Path, args: Args, steps: int, wall: float, losses: list[float], unet: UNet2DModel,
                ema: UNet2DModel, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Write the full training state to ``path`` atomically (temporary file, then rename)."""
    state = {"args": {k: getattr(args, k) for k in _RESUME_FIELDS}, "steps": steps, "wall_time_s": wall,
             "losses": losses, "unet": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
             "sched": sched.state_dict(), "rng": torch.get_rng_state()}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _resume(path: Path, args: Args, unet: UNet2DModel, ema: UNet2DModel, opt: torch.optim.Optimizer,
            sched: torch.optim.lr_scheduler.LambdaLR) -> tuple[int, float, list[float]]:
    """Load a :func:`_checkpoint` file; return (steps done, wall time so far in s, losses).

    Raises:
        ValueError: the file is not a checkpoint of this script, or its training fields differ from ``args``.
    """
    try:
        state = torch.load(path, map_location=args.device, weights_only=False)
        saved = state["args"]
    except Exception as err:  # a truncated or foreign file: say which, keep it for inspection
        raise ValueError(f"cannot resume from {path}: not a train_unet.py checkpoint ({err})") from err
    wanted = {k: getattr(args, k) for k in _RESUME_FIELDS}
    if saved != wanted:
        diff = {k: (saved.get(k), wanted[k]) for k in wanted if saved.get(k) != wanted[k]}
        raise ValueError(f"checkpoint {path} was made with other training fields (saved, given): {diff}; "
                         "pass the same ones or another --checkpoint")
    unet.load_state_dict(state["unet"])
    ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    torch.set_rng_state(state["rng"].cpu())
    print(f"resumed from {path} at step {state['steps']} ({state['wall_time_s']:.0f} s of training so far)")
    return int(state["steps"]), float(state["wall_time_s"]), list(state["losses"])


def save(ema: UNet2DModel, scheduler: DDPMScheduler, args: Args, steps: int, wall: float, losses: list[float]) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ema.save_pretrained(out, safe_serialization=True)
    scheduler.save_config(out)
    record = {
        "command": "python scripts/train_unet.py " + " ".join(sys.argv[1:]),
        "note": "steps_done counts the steps of the run resumed from (init_from) too" if args.init_from else "",
        "args": asdict(args),
        "steps_done": steps,
        "wall_time_s": round(wall, 1),  # summed over the calls that resumed from --checkpoint
        "hardware": f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
        f"device {args.device}",
        "torch": torch.__version__,
        "final_loss_mean_last_200": sum(losses[-200:]) / max(1, len(losses[-200:])),
        "data": "Fashion-MNIST train (60,000 images), horizontal flips",
    }
    (out / "training.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, value in asdict(Args()).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    main(Args(**vars(parser.parse_args())))
