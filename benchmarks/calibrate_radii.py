"""Calibrate L2 and L1 radii of comparable strength to a given Linf radius, and document the result.

Method: train (or load) a Standard model, measure its accuracy under PGD-20 (Linf), PGD-50 (L2) and
SLIDE-100 (L1) over a grid of radii on the seeded evaluation subset, and find for each norm the radius
``eps_50`` at which accuracy falls to half of the clean accuracy (the median minimal adversarial
perturbation, linear interpolation on the grid). A radius in another norm is "of comparable strength"
to the Linf radius when it sits at the same fraction of that norm's ``eps_50``:
``eps_p = eps_linf * eps_50(p) / eps_50(Linf)``.

Writes ``docs/radii_calibration.json`` (all curves), ``docs/radii_calibration.png`` and
``docs/radii.md``. Run: ``python -m benchmarks.calibrate_radii --dataset fashion_mnist``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.evaluate import eval_subset  # noqa: E402
from benchmarks.trainers import get_trainer  # noqa: E402
from robust_envs.attacks import correct_under_attack, make_attack, radii_for  # noqa: E402
from robust_envs.classifiers import make_classifier  # noqa: E402
from robust_envs.data import load_dataset  # noqa: E402

GRIDS = {
    "Linf": ("pgd", 20, [0.0, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2]),
    "L2": ("pgd_l2", 50, [0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]),
    "L1": ("slide", 100, [0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0]),
}


def crossing(eps: list[float], acc: list[float], level: float) -> float:
    """First radius where the (decreasing) accuracy curve reaches ``level`` (linear interpolation).

    Raises:
        ValueError: if the curve never reaches ``level`` on the grid.
    """
    for i in range(1, len(eps)):
        if acc[i] <= level:
            a0, a1 = acc[i - 1], acc[i]
            return eps[i - 1] + (a0 - level) / max(a0 - a1, 1e-12) * (eps[i] - eps[i - 1])
    raise ValueError(f"accuracy never falls to {level:.3f} on the grid {eps} (min {min(acc):.3f}); widen the grid")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--n-eval", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="Standard model epochs (default: the leaderboard's)")
    p.add_argument("--docs", default="docs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--checkpoint", default=None,
                   help="Standard model checkpoint (default: the leaderboard's benchmarks/checkpoints/<dataset>/"
                        "standard_seed<seed>.pt when present, else train one)")  # fmt: skip
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    trainer_cls = get_trainer("standard")
    overrides = {} if args.epochs is None else {"epochs": args.epochs}
    config = trainer_cls.default_config(args.dataset, **overrides)
    ckpt = (
        Path(args.checkpoint)
        if args.checkpoint
        else (Path(__file__).resolve().parent / "checkpoints" / args.dataset / f"standard_seed{args.seed}.pt")
    )
    train = load_dataset(args.dataset, "train")
    if ckpt.is_file():
        blob = torch.load(ckpt, map_location="cpu", weights_only=False)
        _, c, h, _ = train.images.shape
        model = make_classifier(blob["config"]["architecture"], in_channels=c, num_classes=train.num_classes,
                                image_size=h)  # fmt: skip
        model.load_state_dict(blob["state_dict"])
        model.eval()
        epochs = blob["config"]["epochs"]
    else:
        model = trainer_cls(config).train(train, seed=args.seed)
        epochs = config.epochs
    sub = eval_subset(load_dataset(args.dataset, "test"), args.n_eval, seed=0)
    clean = float(correct_under_attack(model, sub.images, sub.labels).float().mean())
    curves: dict[str, dict[str, list[float]]] = {}
    for norm, (attack, steps, grid) in GRIDS.items():
        accs = []
        for eps in grid:
            if eps == 0.0:
                accs.append(clean)
                continue
            torch.manual_seed(0)
            alpha = eps / 4 if norm == "Linf" else (eps / 5 if norm == "L2" else eps / 8)
            atk = make_attack(attack, model, eps, steps=steps, alpha=alpha)
            accs.append(float(correct_under_attack(model, sub.images, sub.labels, atk).float().mean()))
            print(f"{norm} eps={eps:g}: acc {accs[-1]:.3f}", flush=True)
        curves[norm] = {"eps": grid, "acc": accs}
    eps50 = {n: crossing(c["eps"], c["acc"], clean / 2) for n, c in curves.items()}
    current = radii_for(args.dataset)
    calibrated = {n: current.eps_linf * eps50[n] / eps50["Linf"] for n in ("L2", "L1")}
    out = {
        "dataset": args.dataset, "model": f"standard {config.architecture}, {epochs} epochs, seed {args.seed}",
        "checkpoint": os.path.relpath(ckpt, Path(__file__).resolve().parent.parent) if ckpt.is_file() else None,
        "n_eval": args.n_eval, "clean_acc": clean, "curves": curves, "eps50": eps50,
        "eps_linf": current.eps_linf, "calibrated": calibrated,
        "config": {"eps_l2": current.eps_l2, "eps_l1": current.eps_l1, "source": current.source},
        "attacks": {n: f"{a}, {s} steps" for n, (a, s, _) in GRIDS.items()},
    }  # fmt: skip
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=docs, suffix=".json.tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(out, f, indent=2)
    os.chmod(tmp, 0o644)
    os.replace(tmp, docs / "radii_calibration.json")
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, (norm, c) in zip(axes, curves.items(), strict=True):
        ax.plot(c["eps"], c["acc"], "o-")
        ax.axhline(clean / 2, color="grey", ls=":", label="clean / 2")
        chosen = current.eps(norm)
        ax.axvline(chosen, color="red", ls="--", label=f"config eps = {chosen:.3g}")
        ax.set_xlabel(f"{norm} radius")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{norm}: eps_50 = {eps50[norm]:.3g}")
        ax.legend(fontsize=8)
    fig.suptitle(f"Standard model on {args.dataset}: accuracy vs radius ({args.n_eval} test points)")
    fig.tight_layout()
    fig.savefig(docs / "radii_calibration.png", dpi=110)
    plt.close(fig)
    lines = [
        f"# Threat-model radii on {args.dataset}",
        "",
        f"Generated by `python -m benchmarks.calibrate_radii --dataset {args.dataset}` "
        "(`docs/radii_calibration.json` holds every number); do not edit by hand.",
        "",
        f"Configured radii (`robust_envs/attacks/radii.py`): Linf {current.eps_linf:g}, L2 {current.eps_l2:g}, "
        f"L1 {current.eps_l1:g}. Source: {current.source}.",
        "",
        "Calibration: a Standard model (" + out["model"] + f") on {args.n_eval} seeded test points, clean "
        f"accuracy {100 * clean:.1f} %. For each norm, the radius eps_50 at which accuracy falls to half the clean "
        "accuracy (median minimal adversarial perturbation; PGD-20 for Linf, PGD-50 for L2, SLIDE-100 for L1). "
        "A radius of comparable strength sits at the same fraction of eps_50 as Linf "
        f"{current.eps_linf:g}: eps_p = {current.eps_linf:g} * eps_50(p) / eps_50(Linf).",
        "",
        "| norm | eps_50 | calibrated radius | configured radius | accuracy at configured radius |",
        "|---|---:|---:|---:|---:|",
    ]
    for norm in ("Linf", "L2", "L1"):
        c = curves[norm]
        cfg_eps = current.eps(norm)
        acc_at = float(np.interp(cfg_eps, c["eps"], c["acc"]))
        cal = current.eps_linf if norm == "Linf" else calibrated[norm]
        lines.append(f"| {norm} | {eps50[norm]:.3g} | {cal:.3g} | {cfg_eps:g} | {100 * acc_at:.1f} % (interpolated) |")
    lines += [
        "",
        "Accuracy against radius (dashed: configured radius):",
        "",
        "![calibration](radii_calibration.png)",
        "",
    ]
    atomic_text = "\n".join(lines)
    fd, tmp = tempfile.mkstemp(dir=docs, suffix=".md.tmp")
    with os.fdopen(fd, "w") as f:
        f.write(atomic_text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, docs / "radii.md")
    print(json.dumps({"eps50": eps50, "calibrated": calibrated}, indent=2))


if __name__ == "__main__":
    main()
