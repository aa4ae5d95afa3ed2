"""Measure the embedded noise network and write its card and sample grid.

Generates ``n`` samples with deterministic DDIM (sigma = 0, no attack) along the env's default timestep
sequence (stride 50 above t_c = 20, unit steps below), scores them with the embedded levels scorer next to
``n`` real Fashion-MNIST test images, and writes ``robust_envs/assets/ddpm_fmnist/CARD.md``,
``robust_envs/assets/ddpm_fmnist/quality.json`` and ``docs/figures/ddpm_fmnist_samples.png``.

Usage::

    python scripts/make_unet_card.py --n 500
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from robust_envs.data import load_fashion_mnist  # noqa: E402
from robust_envs.diffusion import EMBEDDED_UNET, TimestepAttack, load_noise_model, sample_x0  # noqa: E402
from robust_envs.diffusion.models import model_weights_id  # noqa: E402
from robust_envs.quality import LevelsEvaluator  # noqa: E402


def ci95(x: np.ndarray) -> float:
    return float(1.96 * x.std(ddof=1) / math.sqrt(len(x)))


def previous_versions(weights: str) -> list[dict]:
    """The measured versions before these weights: the stored history plus the card being replaced, if its
    weights differ (a card made before weights were recorded counts as a different version)."""
    path = EMBEDDED_UNET / "quality.json"
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    history = list(old.get("history", []))
    if old.get("weights") != weights:
        history.append({k: old.get(k) for k in ("weights", "steps_done", "mean_score_generated", "ci95_generated",
                                                "mean_score_real_test", "command")})  # fmt: skip
    return history


def history_table(history: list[dict]) -> str:
    if not history:
        return ""
    rows = [f"| {h.get('steps_done') or '?'} | {h.get('weights') or 'not recorded'} | "
            f"{h['mean_score_generated']:.3f} +- {h['ci95_generated']:.3f} | {h['mean_score_real_test']:.3f} |"
            for h in history]  # fmt: skip
    return ("\nEarlier versions (same command and samples):\n\n| steps | weights | generated | real (test) |\n"
            "|---|---|---|---|\n" + "\n".join(rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=250)
    args = parser.parse_args()
    model = load_noise_model("embedded")
    evaluator = LevelsEvaluator()
    samples = []
    for start in range(0, args.n, args.batch):
        gens = [torch.Generator().manual_seed(args.seed + i) for i in range(start, min(args.n, start + args.batch))]
        x0 = sample_x0(model, gens, t_c=20, stride=50, attack=TimestepAttack(kind="none"))
        samples.append(((x0 + 1) / 2).clamp(0, 1))
    x = torch.cat(samples)
    q_gen = evaluator(x).numpy()
    real = load_fashion_mnist("test").float_images()
    idx = torch.randperm(real.shape[0], generator=torch.Generator().manual_seed(args.seed))[: args.n]
    q_real = evaluator(real[idx]).numpy()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = x[:64].reshape(8, 8, 28, 28).permute(0, 2, 1, 3).reshape(8 * 28, 8 * 28).numpy()
    fig = plt.figure(figsize=(5, 5))
    plt.imshow(grid, cmap="gray", vmin=0, vmax=1)
    plt.axis("off")
    plt.title(f"embedded DDPM, DDIM sigma=0 (39 steps), first 64 of {args.n}", fontsize=8)
    fig.tight_layout()
    out_png = ROOT / "docs" / "figures" / "ddpm_fmnist_samples.png"
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)

    training = json.loads((EMBEDDED_UNET / "training.json").read_text())
    weights = model_weights_id("embedded")
    history = previous_versions(weights)
    quality = {
        "weights": weights, "steps_done": training["steps_done"],
        "share_generated_below_2": float((q_gen < 2).mean()), "share_real_below_2": float((q_real < 2).mean()),
        "n": args.n, "seed": args.seed, "sampler": "DDIM sigma=0, stride 50 above t_c=20, unit steps below, no attack",
        "mean_score_generated": float(q_gen.mean()), "ci95_generated": ci95(q_gen),
        "mean_score_real_test": float(q_real.mean()), "ci95_real_test": ci95(q_real),
        "command": "python scripts/make_unet_card.py " + " ".join(sys.argv[1:]),
        "history": history,
    }  # fmt: skip
    (EMBEDDED_UNET / "quality.json").write_text(json.dumps(quality, indent=2))
    n_params = sum(p.numel() for p in model.unet.parameters())
    card = f"""# Embedded noise network: DDPM on Fashion-MNIST

A diffusers `UNet2DModel` (epsilon prediction, {n_params:,} parameters, 1 x 28 x 28, channels (32, 64, 128),
attention at 7 x 7), the default `model="embedded"` of `DDIMSigma-v0`. Linear betas 1e-4..0.02, T = 1000;
network timestep `i` pairs with `alphas_cumprod[i]` (diffusers convention). EMA weights.

- Command: `{training['command']}`{' (' + training['note'] + ')' if training.get('note') else ''}
- Seed: {training['args']['seed']}; batch {training['args']['batch_size']}; AdamW lr {training['args']['lr']}; EMA {training['args']['ema_decay']}
- Steps: {training['steps_done']}; wall time {training['wall_time_s']:.0f} s (summed over the calls that resumed from `--checkpoint`, not counting the run it was initialised from); hardware: {training['hardware']}
- Data: {training['data']}
- Final training loss (mean of the last 200 steps): {training['final_loss_mean_last_200']:.4f}

## Measured sample quality

`{quality['command']}`: {args.n} samples with {quality['sampler']}, scored by the embedded
levels scorer (1 = bad .. 5 = excellent), next to {args.n} real Fashion-MNIST test images:

| images | mean score | 95% CI |
|---|---|---|
| generated | {quality['mean_score_generated']:.3f} | +- {quality['ci95_generated']:.3f} |
| real (test) | {quality['mean_score_real_test']:.3f} | +- {quality['ci95_real_test']:.3f} |

Share rated below 2 (bad): generated {quality['share_generated_below_2']:.1%}, real {quality['share_real_below_2']:.1%}.
Sample grid: `docs/figures/ddpm_fmnist_samples.png` (the first 64 samples). Weights: `{weights}`.
{history_table(history)}
## Results that depend on these weights

Every DDIMSigma-v0 number on the embedded model. Retraining it in place (`scripts/train_unet.py --checkpoint ...`
resumes exactly) makes the sigma benchmark's entries stale by themselves (their fingerprint holds the sha256 of
these weights); the rest is regenerated by its command:

- this card and the sample grid: `python scripts/make_unet_card.py --n 500`
- `python -m benchmarks.singularity_probe --n 128` (docs/singularity.md), `python -m benchmarks.attack_effect --n 500
  --t-c 10 20 30 40 50 60 --scales 0.1 0.5 2 10 --sweep-t-c 20` (docs/attack_effect.md), `python -m
  benchmarks.threat_sweep --n 200 --t-c 20 --threads 1` (docs/threats.md: it picks the benchmark's `shift` budget)
- `python -m scripts.make_fidelity_card --n 200` (docs/fidelity.md), `python -m benchmarks.eval_cost --clock cpu`
- `python -m benchmarks.sigma_headroom run ...` (the commands at the end of docs/sigma_headroom.md), the tuning
  runs (`python -m benchmarks.sigma_tuning run NAME`, docs/sigma_tuning.md), `python -m benchmarks.ppo_torch ...`
  (docs/ppo_torch.md)
- the sigma benchmark grid (`python -m benchmarks.sigma_benchmark run ...`, docs/sigma_benchmark.md) and `make demo`
- the embedded levels scorer was trained with this model's x0 predictions among its degradations
  (`scripts/train_levels_scorer.py`); it stays valid as a scorer, but its card describes the earlier model.
"""
    (EMBEDDED_UNET / "CARD.md").write_text(card)
    print(card)


if __name__ == "__main__":
    main()
