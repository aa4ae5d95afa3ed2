"""Q-Align's cost per DDIMSigma-v0 step on a GPU, in seed 000's setting (64x64 DDIM, 2N images scored per step).

Usage::

    python -m benchmarks.qalign_cost --num-envs 1 8 32 --steps 5            # random-weight CelebA-size DDIM
    python -m benchmarks.qalign_cost --model ~/.cache/robust_envs/ddim_celeba64/ckpt.pth

Per ``num_envs`` N it times, after a warm-up call: the Q-Align evaluator alone on 2N random 64x64 images (one
env step scores the agent's and the baseline's x0 predictions), the noise network alone on 2N samples, and
full vector-env steps with ``evaluator="qalign"`` and with the embedded ``"levels"`` scorer. Without ``--model``
the network is ermongroup/ddim's CelebA architecture (ch 128, ch_mult 1,2,2,2,4, attention at 16) with random
weights: the same cost as the real checkpoint. Results go to ``benchmarks/results/qalign_cost.json``; the numbers
are reported in ``docs/checkpoints.md``. Needs a CUDA GPU and the Q-Align weights (see ``python -m
robust_envs.presets check``).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "qalign_cost.json"


def _celeba_sized_model(device: torch.device) -> Any:
    from diffusers import UNet2DModel

    from robust_envs.diffusion import NoiseModel, NoiseSchedule
    from robust_envs.diffusion.checkpoints import ddim_arch

    cfg = {"model": {"ch": 128, "out_ch": 3, "ch_mult": [1, 2, 2, 2, 4], "num_res_blocks": 2, "attn_resolutions": [16],
                     "dropout": 0.1, "in_channels": 3, "resamp_with_conv": True, "ema": True},
           "data": {"image_size": 64},
           "diffusion": {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
                         "num_diffusion_timesteps": 1000}}  # fmt: skip
    unet = UNet2DModel(**ddim_arch(cfg).unet_config()).to(device).eval().requires_grad_(False)
    return NoiseModel(unet=unet, schedule=NoiseSchedule.linear(), source="random CelebA-size DDIM")


def _timed(fn: Any, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    import gymnasium as gym

    import robust_envs  # noqa: F401
    from benchmarks.leaderboard import atomic_write_json
    from robust_envs.diffusion import load_noise_model
    from robust_envs.quality import QAlignEvaluator

    p = argparse.ArgumentParser(prog="python -m benchmarks.qalign_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--num-envs", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--steps", type=int, default=5, help="timed env steps (and evaluator calls) per setting")
    p.add_argument("--batch-size", type=int, default=16, help="Q-Align images per model call")
    p.add_argument("--model", default=None, help="a checkpoint or diffusers folder (default: random CelebA-size DDIM)")
    p.add_argument("--t-c", type=int, default=20)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.qalign_cost needs a CUDA GPU (torch.cuda.is_available() is False)")
    device = torch.device("cuda")
    evaluator = QAlignEvaluator(device=device, batch_size=args.batch_size)
    model = load_noise_model(args.model, device=device) if args.model else _celeba_sized_model(device)
    c, h, w = model.sample_shape
    rows = []
    for n in args.num_envs:
        images = torch.rand(2 * n, c, h, w, device=device)
        x, t = torch.randn(2 * n, c, h, w, device=device), torch.full((2 * n,), 10.0, device=device)
        row: dict[str, Any] = {"num_envs": n, "images_per_step": 2 * n}
        row["qalign_s"] = _timed(lambda images=images: evaluator(images), args.steps)
        row["network_s"] = _timed(lambda x=x, t=t: model(x, t), args.steps)
        for name, ev in (("qalign", evaluator), ("levels", "levels")):
            venv = gym.make_vec("DDIMSigma-v0", num_envs=n, model=model, evaluator=ev, t_c=args.t_c, device=device)
            venv.reset(seed=0)
            actions = np.full((n, 1), 0.5, dtype=np.float32)
            row[f"env_step_{name}_s"] = _timed(lambda venv=venv, a=actions: venv.step(a), args.steps)
            venv.close()
        row["qalign_share_of_step"] = row["qalign_s"] / row["env_step_qalign_s"]
        rows.append(row)
        print(row)
    atomic_write_json(Path(args.out), {
        "what": "seconds per call: Q-Align on 2N images, the network on 2N samples, one vector-env step",
        "gpu": torch.cuda.get_device_name(0), "model": model.source, "batch_size": args.batch_size,
        "torch": torch.__version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": rows,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
