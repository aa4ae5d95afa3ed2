"""Train the embedded levels scorer (robust_envs/assets/levels_scorer) and write its card.

A Q-Align-style scorer (five text-defined levels bad..excellent, score = expected level) for 28 x 28
grey images. Training data, all from Fashion-MNIST *train*:

- level 5 (excellent): real images;
- levels 4..1 (good, fair, poor, bad): graded degradations of real images, one of
  - Gaussian noise, std bands 0.03-0.08 / 0.08-0.16 / 0.16-0.30 / 0.30-0.60 (pixel units in [0, 1]);
  - Gaussian blur, sigma bands 0.5-0.8 / 0.8-1.2 / 1.2-1.8 / 1.8-3.0 px;
  - the embedded diffusion model's own x0 prediction (seed 000 Eq. 10) from x_t at t in
    20-80 / 80-200 / 200-400 / 400-700.

The card measures it on held-out Fashion-MNIST *test* images: the mean score per degradation and grade,
which must fall monotonically with the grade.

Usage (the commands that made the embedded scorer and its held-out replicate, ``evaluator="levels_heldout"``)::

    python scripts/train_levels_scorer.py --seed 0
    python scripts/train_levels_scorer.py --seed 1 --out robust_envs/assets/levels_scorer_heldout

The replicate differs only in the seed (initialisation, data draws); both were trained on the x0 predictions of the
same UNet weights (``unet_weights`` in ``training.json``). It exists to check that a schedule's gain is not
specific to one scorer's weights (reward over-optimisation): a gain the agent earns by exploiting the scorer it
trains on need not carry over to a scorer of the same recipe it never saw.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torchvision.transforms.functional import gaussian_blur
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from robust_envs.data import load_fashion_mnist  # noqa: E402
from robust_envs.diffusion import load_noise_model, model_timestep, predict_x0  # noqa: E402
from robust_envs.diffusion.models import model_weights_id  # noqa: E402
from robust_envs.quality.levels import EMBEDDED_LEVELS_SCORER, LEVELS, LevelsEvaluator, LevelsNet  # noqa: E402

NOISE_BANDS = [(0.30, 0.60), (0.16, 0.30), (0.08, 0.16), (0.03, 0.08)]  # level 1..4
BLUR_BANDS = [(1.8, 3.0), (1.2, 1.8), (0.8, 1.2), (0.5, 0.8)]
T_BANDS = [(400, 700), (200, 400), (80, 200), (20, 80)]


@dataclass
class Args:
    epochs: int = 2
    """passes over Fashion-MNIST train"""
    batch_size: int = 256
    """images per batch"""
    lr: float = 2e-3
    """Adam learning rate (cosine decay)"""
    pool: int = 12000
    """train images turned into diffusion x0 predictions (one forward each)"""
    n_eval: int = 2000
    """held-out test images per (degradation, grade) cell on the card"""
    seed: int = 0
    """torch seed"""
    out: str = str(EMBEDDED_LEVELS_SCORER)
    """output folder"""


def degrade_noise(x: torch.Tensor, level: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    lo = torch.tensor([b[0] for b in NOISE_BANDS])[level - 1]
    hi = torch.tensor([b[1] for b in NOISE_BANDS])[level - 1]
    std = lo + (hi - lo) * torch.rand(x.shape[0], generator=gen)
    return (x + std.view(-1, 1, 1, 1) * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def degrade_blur(x: torch.Tensor, level: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Gaussian blur; one sigma per (call, level) group, drawn uniformly in the level's band."""
    out = x.clone()
    for lv in level.unique().tolist():
        sel = level == lv
        lo, hi = BLUR_BANDS[int(lv) - 1]
        s = lo + (hi - lo) * float(torch.rand(1, generator=gen))
        out[sel] = gaussian_blur(x[sel], kernel_size=[11, 11], sigma=[s, s])
    return out


@torch.no_grad()
def diffusion_x0(x: torch.Tensor, level: torch.Tensor, gen: torch.Generator, model, batch: int = 500) -> torch.Tensor:
    """x0 prediction of the noise network from x_t = sqrt(ab) x0 + sqrt(1 - ab) eps, t in the level's band."""
    lo = torch.tensor([b[0] for b in T_BANDS])[level - 1]
    hi = torch.tensor([b[1] for b in T_BANDS])[level - 1]
    t = (lo + ((hi - lo + 1) * torch.rand(x.shape[0], generator=gen)).long()).clamp(max=999)
    out = []
    ab_all = model.schedule.alpha_bar.float()
    for s in range(0, x.shape[0], batch):
        x0 = x[s : s + batch] * 2 - 1
        tt = t[s : s + batch]
        ab = ab_all[tt].view(-1, 1, 1, 1)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * torch.randn(x0.shape, generator=gen)
        eps = model(x_t, model_timestep(tt).float())
        out.append(((predict_x0(x_t, eps, ab_all[tt]) + 1) / 2).clamp(0, 1))
    return torch.cat(out)


def main(args: Args) -> None:
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.time()
    train = load_fashion_mnist("train").float_images()
    test = load_fashion_mnist("test").float_images()
    model = load_noise_model("embedded", device="cpu")

    # a fixed pool of diffusion x0 predictions with their grades (the expensive degradation)
    pool_idx = torch.randperm(train.shape[0], generator=gen)[: args.pool]
    pool_level = torch.randint(1, 5, (args.pool,), generator=gen)
    pool = diffusion_x0(train[pool_idx], pool_level, gen, model)

    net = LevelsNet()
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    steps = args.epochs * (train.shape[0] // args.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    bar = tqdm(range(steps), desc="train levels scorer", mininterval=10)
    for _ in bar:
        idx = torch.randint(0, train.shape[0], (args.batch_size,), generator=gen)
        x = train[idx]
        level = torch.randint(1, 6, (args.batch_size,), generator=gen)  # 5 = clean
        kind = torch.randint(0, 3, (args.batch_size,), generator=gen)
        deg = level < 5
        m = deg & (kind == 0)
        x[m] = degrade_noise(x[m], level[m], gen)
        m = deg & (kind == 1)
        if m.any():
            x[m] = degrade_blur(x[m], level[m], gen)
        m = deg & (kind == 2)
        if m.any():
            # take pool items of the same level
            for lv in range(1, 5):
                sel = m & (level == lv)
                k = int(sel.sum())
                if k:
                    cand = (pool_level == lv).nonzero().flatten()
                    x[sel] = pool[cand[torch.randint(0, cand.numel(), (k,), generator=gen)]]
        x = torch.where(torch.rand(x.shape[0], 1, 1, 1, generator=gen) < 0.5, x, x.flip(-1))
        loss = F.cross_entropy(net(x), level - 1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=float(loss))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(net.state_dict(), str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({"width": net.width, "levels": LEVELS, "input": "1x28x28 in [0,1]"}))
    wall = time.time() - start

    # ---- card: held-out test images, mean score per degradation and grade ----
    evaluator = LevelsEvaluator(out)
    eval_gen = torch.Generator().manual_seed(1234)
    x = test[torch.randperm(test.shape[0], generator=eval_gen)[: args.n_eval]]
    rows = {"clean (level 5)": float(evaluator(x).mean())}
    table = {"noise": {}, "blur": {}, "diffusion_x0": {}}
    for lv in (4, 3, 2, 1):
        level = torch.full((x.shape[0],), lv)
        table["noise"][lv] = float(evaluator(degrade_noise(x, level, eval_gen)).mean())
        table["blur"][lv] = float(evaluator(degrade_blur(x, level, eval_gen)).mean())
        table["diffusion_x0"][lv] = float(evaluator(diffusion_x0(x, level, eval_gen, model)).mean())
    monotone = all(
        rows["clean (level 5)"] > table[k][4] and all(table[k][lv] > table[k][lv - 1] for lv in (4, 3, 2))
        for k in table
    )
    record = {
        "command": "python scripts/train_levels_scorer.py " + " ".join(sys.argv[1:]),
        "args": asdict(args),
        "wall_time_s": round(wall, 1),
        "hardware": f"{platform.machine()} CPU, torch threads {torch.get_num_threads()}",
        "clean_mean_score": rows["clean (level 5)"],
        "degraded_mean_score": table,
        "monotone_in_grade": monotone,
        "unet_weights": model_weights_id("embedded"),
    }
    (out / "training.json").write_text(json.dumps(record, indent=2))
    lines = [
        "# Embedded levels scorer" if out.resolve() == EMBEDDED_LEVELS_SCORER.resolve()
        else f"# Levels scorer, seed {args.seed} (held-out replicate of the embedded scorer's recipe)",
        "",
        "A Q-Align-style quality evaluator for 28 x 28 grey images: a small CNN (`robust_envs.quality.LevelsNet`,",
        f"{sum(p.numel() for p in net.parameters()):,} parameters) predicts one of five levels (bad, poor, fair, good,",
        "excellent) and reports the expected level in [1, 5].",
        "",
        f"- Command: `{record['command']}`",
        f"- Seed: {args.seed}; {args.epochs} epochs of batch {args.batch_size}; wall time {wall:.0f} s on {record['hardware']}",
        "- Data: Fashion-MNIST train (60,000 images); level 5 = real, levels 4..1 = graded Gaussian noise, Gaussian",
        "  blur and the embedded diffusion model's x0 predictions (bands in `scripts/train_levels_scorer.py`).",
        f"- UNet whose x0 predictions it saw: `{record['unet_weights']}`",
        "",
        f"## Measured on {args.n_eval} held-out Fashion-MNIST test images",
        "",
        f"Clean images: mean score **{rows['clean (level 5)']:.3f}**.",
        "",
        "| degradation | grade 4 (good) | grade 3 (fair) | grade 2 (poor) | grade 1 (bad) |",
        "|---|---|---|---|---|",
    ]
    for k, v in table.items():
        lines.append(f"| {k} | " + " | ".join(f"{v[lv]:.3f}" for lv in (4, 3, 2, 1)) + " |")
    lines += ["", f"Mean score falls monotonically with the grade for every degradation: **{monotone}**.", ""]
    (out / "CARD.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, value in asdict(Args()).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    main(Args(**vars(parser.parse_args())))
