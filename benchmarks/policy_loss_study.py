"""Robustness study of the policy-loss trainer (Kim, seed 003) on Fashion-MNIST with LeNet-5.

Three phases, each resumable (finished entries are skipped) and runnable in parallel processes::

    python -m benchmarks.policy_loss_study train --methods ce --seeds 1 2 3     # runs/policy_loss_study/*.pt
    python -m benchmarks.policy_loss_study evaluate --seeds 1 --all-seeds 1 2 3  # one JSON per (method, seed)
    python -m benchmarks.policy_loss_study report                              # docs/policy_loss.md from JSON

``--epochs 6 --ckpt-dir runs/policy_loss_study_6ep --results-dir benchmarks/results/policy_loss_6ep`` runs
the longer budget; ``report`` renders one section per results directory.

Methods: the cross-entropy reference, the proposed Eq. 12 -> Eq. 4 training at three points of the
paper's Table 1 grid, and the Table 4 ablation (CE warm-up -> Eq. 4; Eq. 4 alone). Every model is
trained with the same network, data stream, SGD schedule and epoch budget (:mod:`agents.policy_loss`).

Evaluation (Linf, eps 0.1, as the paper's Table 2 for MNIST) on a fixed, seeded subset of the test split:
clean, FGSM, PGD (40 steps, step 0.01, random start), AutoAttack (standard: APGD-CE, APGD-T, FAB-T,
Square; torchattacks' implementation) on the first ``aa_points`` of the subset, a transfer attack (the
same PGD crafted on the cross-entropy model of another seed), input-gradient norms, and the
gradient-masking flags of :func:`robust_envs.attacks.masking.gradient_masking_flags`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.policy_loss import Args, evaluate_accuracy, load_checkpoint, train
from robust_envs.attacks import correct_under_attack, make_attack
from robust_envs.attacks.masking import correct_under_transfer, gradient_masking_flags, input_gradient_norms
from robust_envs.data import load_dataset

SOURCE_PAPER = ("D. Kim, Reinforcement-based Training Approach for Improving Adversarial Robustness without "
                "Sacrificing Accuracy (seed 003)")  # fmt: skip
RESULTS_DIR = Path("benchmarks/results/policy_loss")
CKPT_DIR = Path("runs/policy_loss_study")
DOC_PATH = Path("docs/policy_loss.md")


@dataclass(frozen=True)
class Method:
    """One row of the study: a trainer mode and its (lambda_1, lambda_2)."""

    name: str
    mode: str
    lambda_1: float
    lambda_2: float
    label: str
    budget_fraction: float = 1.0  # fraction of the study's training steps (a clean-accuracy-matched control)


METHODS = (
    Method("ce", "ce", 0.0, 0.0, "CE reference"),
    Method("pl_0.75_1.25", "eq12_eq4", 0.75, 1.25, "Eq. 12 -> Eq. 4, lambda = (0.75, 1.25)"),
    Method("pl_0.75_0.25", "eq12_eq4", 0.75, 0.25, "Eq. 12 -> Eq. 4, lambda = (0.75, 0.25)"),
    Method("pl_1.5_1.25", "eq12_eq4", 1.5, 1.25, "Eq. 12 -> Eq. 4, lambda = (1.5, 1.25)"),
    Method("ce_short", "ce", 0.0, 0.0, "CE, 1/8 of the steps (clean-accuracy control)", budget_fraction=0.125),
    Method("ablation_ce_eq4", "ce_eq4", 0.0, 1.0, "Table 4: CE warm-up -> Eq. 4, lambda_2 = 1.0"),
    Method("ablation_eq4_only", "eq4", 0.0, 1.0, "Table 4: Eq. 4 alone, lambda_2 = 1.0"),
)
METHODS_BY_NAME = {m.name: m for m in METHODS}


@dataclass(frozen=True)
class Budget:
    """The CPU-sized budget (stated in the generated doc)."""

    dataset: str = "fashion_mnist"
    arch: str = "lenet5"
    epochs: int = 2
    batch_size: int = 32
    lr_milestones: tuple[float, ...] = (0.75, 0.9)
    switch_acc: float = 0.7
    eval_points: int = 1000
    aa_points: int = 500
    square_queries: int = 5000
    eps_linf: float = 0.1
    pgd_steps: int = 40
    pgd_alpha: float = 0.01
    switch_eval_points: int = 2000
    masking_tolerance: float = 0.05


def _atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


#: How AutoAttack is built (recorded per evaluation): the protocol's components at the reference's settings.
AUTOATTACK_IMPL = "robust_envs.attacks.autoattack_standard: APGD-CE, APGD-T, FAB-T at 100 iterations"
#: Evaluations written before that field existed used torchattacks' AutoAttack class, whose APGD / APGD-T /
#: FAB-T run torchattacks' default 10 iterations (weaker than the reference's 100).
_AUTOATTACK_IMPL_BEFORE = (
    "torchattacks.AutoAttack class: APGD-CE, APGD-T, FAB-T at torchattacks' default 10 iterations, weaker than the "
    "reference's 100; the leaderboard's `policy_loss` entries (docs/leaderboard.md) use 100"
)


def _versions() -> dict[str, str]:
    import gymnasium
    import torchattacks

    return {"torch": torch.__version__, "torchattacks": torchattacks.__version__, "gymnasium": gymnasium.__version__,
            "numpy": np.__version__, "python": platform.python_version()}  # fmt: skip


def checkpoint_path(method: Method, seed: int, ckpt_dir: Path = CKPT_DIR) -> Path:
    """Where the study keeps the model of ``method`` and ``seed``."""
    return ckpt_dir / f"{method.name}__seed{seed}.pt"


def train_one(method: Method, seed: int, budget: Budget, ckpt_dir: Path = CKPT_DIR, progress: bool = False) -> Path:
    """Train (or find) the checkpoint of one (method, seed); returns its path."""
    path = checkpoint_path(method, seed, ckpt_dir)
    if path.exists():
        return path
    args = Args(exp_name="policy_loss_study", seed=seed, mode=method.mode, dataset=budget.dataset, arch=budget.arch,
                lambda_1=method.lambda_1, lambda_2=method.lambda_2, epochs=budget.epochs, batch_size=budget.batch_size,
                lr_milestones=budget.lr_milestones, switch_acc=budget.switch_acc,
                total_steps=round(method.budget_fraction * budget.epochs * math.ceil(
                    len(load_dataset(budget.dataset, "train")) / budget.batch_size)),
                eval_points=budget.switch_eval_points, threads=1, track=True, save_path=str(path) + ".tmp",
                progress=progress)  # fmt: skip
    result = train(args)
    meta = torch.load(str(path) + ".tmp", weights_only=True)
    meta.update({"train_time_s": result.train_time_s, "history": result.history, "steps": result.steps})
    torch.save(meta, str(path) + ".tmp")
    os.replace(str(path) + ".tmp", path)
    return path


def eval_subset(n: int, dataset: str, seed: int = 0) -> torch.Tensor:
    """The fixed evaluation subset: ``n`` test indices drawn without replacement by ``numpy`` seed ``seed``."""
    size = len(load_dataset(dataset, "test"))
    return torch.as_tensor(np.random.default_rng(seed).choice(size, size=min(n, size), replace=False))


def evaluate_model(
    model: torch.nn.Module,
    source: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    budget: Budget,
    reference_grad_norm: float | None,
    seed: int = 0,
) -> dict[str, Any]:
    """All attack accuracies and gradient diagnostics of ``model`` on ``images`` (float [0, 1]) / ``labels``.

    ``source`` is the model the transfer attack is crafted on. AutoAttack runs on the first
    ``budget.aa_points`` images (its Square attack with ``budget.square_queries`` queries, 5000 in the
    standard version); the masking flags compare attacks on those same points.
    """
    eps, n_aa = budget.eps_linf, min(budget.aa_points, images.shape[0])
    torch.manual_seed(seed)
    clean = correct_under_attack(model, images, labels)
    fgsm = correct_under_attack(model, images, labels, make_attack("fgsm", model, eps))
    pgd = correct_under_attack(model, images, labels,
                               make_attack("pgd", model, eps, steps=budget.pgd_steps, alpha=budget.pgd_alpha))  # fmt: skip
    transfer = correct_under_transfer(
        make_attack("pgd", source, eps, steps=budget.pgd_steps, alpha=budget.pgd_alpha), model, images, labels
    )
    # the leaderboard's AutoAttack (robust_envs.attacks.autoattack_standard: 100 iterations, as the reference)
    autoattack = make_attack("autoattack", model, eps, seed=seed, square_queries=budget.square_queries)
    start = time.time()
    aa = correct_under_attack(model, images[:n_aa], labels[:n_aa], autoattack)
    aa_time_s = time.time() - start
    grad_ce = input_gradient_norms(model, images, labels, "ce")
    grad_margin = input_gradient_norms(model, images, labels, "margin")
    grad_ce_median = float(grad_ce.median())
    on_aa = {name: float(c[:n_aa].float().mean()) for name, c in
             (("clean", clean), ("fgsm", fgsm), ("pgd", pgd), ("transfer", transfer))}  # fmt: skip
    flags = gradient_masking_flags(on_aa["pgd"], float(aa.float().mean()), on_aa["transfer"], on_aa["fgsm"],
                                   grad_ce_median, reference_grad_norm, tolerance=budget.masking_tolerance)  # fmt: skip
    return {
        "clean_acc": float(clean.float().mean()),
        "fgsm_acc": float(fgsm.float().mean()),
        "pgd_acc": float(pgd.float().mean()),
        "transfer_acc": float(transfer.float().mean()),
        "autoattack_acc": float(aa.float().mean()),
        "autoattack_time_s": aa_time_s,
        "autoattack_impl": AUTOATTACK_IMPL,
        "on_autoattack_points": {f"{k}_acc": v for k, v in on_aa.items()},
        "grad_norm_ce_median": grad_ce_median,
        "grad_norm_ce_mean": float(grad_ce.mean()),
        "grad_norm_margin_median": float(grad_margin.median()),
        "grad_norm_ce_ratio_to_ce_reference": (grad_ce_median / reference_grad_norm) if reference_grad_norm else None,
        "gradient_masking": flags.to_dict(),
    }


def result_path(method: Method, seed: int, budget: Budget, results_dir: Path = RESULTS_DIR) -> Path:
    """One JSON per (method, dataset, seed)."""
    return results_dir / f"{method.name}__{budget.dataset}__seed{seed}.json"


def evaluate_one(
    method: Method,
    seed: int,
    seeds: list[int],
    budget: Budget,
    results_dir: Path = RESULTS_DIR,
    ckpt_dir: Path = CKPT_DIR,
) -> Path:
    """Evaluate one trained (method, seed) and write its JSON (skipped when it exists)."""
    out = result_path(method, seed, budget, results_dir)
    if out.exists():
        return out
    torch.set_num_threads(1)
    ckpt = torch.load(checkpoint_path(method, seed, ckpt_dir), weights_only=True)
    model = load_checkpoint(checkpoint_path(method, seed, ckpt_dir))
    others = [s for s in seeds if s != seed]
    source_seed = others[(seeds.index(seed)) % len(others)] if others else seed
    ce = METHODS_BY_NAME["ce"]
    source = load_checkpoint(checkpoint_path(ce, source_seed, ckpt_dir))
    reference = load_checkpoint(checkpoint_path(ce, seed, ckpt_dir))
    test = load_dataset(budget.dataset, "test")
    idx = eval_subset(budget.eval_points, budget.dataset)
    images, labels = test.float_images()[idx], test.labels[idx]
    reference_grad = float(input_gradient_norms(reference, images, labels, "ce").median())
    start = time.time()
    metrics = evaluate_model(model, source, images, labels, budget, reference_grad, seed=seed)
    eval_time_s = time.time() - start
    entry = {
        "method": method.name,
        "method_label": method.label,
        "source_paper": SOURCE_PAPER,
        "dataset": budget.dataset,
        "architecture": budget.arch,
        "mode": method.mode,
        "lambda_1": method.lambda_1 if method.mode == "eq12_eq4" else None,
        "lambda_2": method.lambda_2 if method.mode != "ce" else None,
        "seed": seed,
        "epochs": budget.epochs,
        "batch_size": budget.batch_size,
        "optimizer": f"SGD lr 0.1, no momentum, /10 after fractions {list(budget.lr_milestones)} of the steps",
        "switch_acc": budget.switch_acc,
        "switch_step": ckpt.get("switch_step"),
        "steps": ckpt.get("steps"),
        "test_acc_full": evaluate_accuracy(model, test.images, test.labels),
        "threat_model": {"norm": "Linf", "eps_linf": budget.eps_linf},
        "attacks": {
            "fgsm": {"eps_linf": budget.eps_linf},
            "pgd": {
                "eps_linf": budget.eps_linf,
                "steps": budget.pgd_steps,
                "alpha": budget.pgd_alpha,
                "random_start": True,
            },
            "autoattack": {
                "eps_linf": budget.eps_linf,
                "version": "standard",
                "implementation": "torchattacks",
                "n_points": min(budget.aa_points, budget.eval_points),
            },  # fmt: skip
            "transfer": {"attack": "pgd", "source": f"ce__seed{source_seed}", "eps_linf": budget.eps_linf},
        },
        "n_eval": int(idx.shape[0]),
        "eval_subset": f"numpy default_rng(0).choice(10000, {int(idx.shape[0])}, replace=False)",
        **metrics,
        "train_time_s": ckpt.get("train_time_s"),
        "eval_time_s": eval_time_s,
        "train_history": ckpt.get("history"),
        "hardware": f"{platform.processor() or platform.machine()}, CPU, torch threads 1",
        "versions": _versions(),
        "git_commit": _git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    _atomic_write_json(out, entry)
    return out


# ---- the report -------------------------------------------------------------------------------------
def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _cell(values: list[float], percent: bool = True) -> str:
    if not values:
        return "n/a"
    mean, std = _mean_std(values)
    scale = 100.0 if percent else 1.0
    return f"{scale * mean:.1f} ± {scale * std:.1f}" if percent else f"{mean:.3g} ± {std:.2g}"


def load_results(results_dir: Path = RESULTS_DIR) -> list[dict[str, Any]]:
    """Every result JSON under ``results_dir``, sorted by (method order, seed)."""
    order = {m.name: i for i, m in enumerate(METHODS)}
    from benchmarks.leaderboard import read_json_or_warn

    hint = "redo it with `python -m benchmarks.policy_loss_study` (docs/policy_loss.md) or delete it"
    entries = [e for p in sorted(results_dir.glob("*.json")) if isinstance(e := read_json_or_warn(p, hint), dict)]
    return sorted(entries, key=lambda e: (order.get(e["method"], len(order)), e["seed"]))


def _verdict(by_method: dict[str, list[dict[str, Any]]]) -> str:
    """The data-driven paragraph: whether the headline point's gain over CE survives AutoAttack and transfer.

    A gain "survives" an attack when the mean difference to CE exceeds both 2 points and twice the larger
    of the two seed spreads.
    """
    head, ce = by_method.get("pl_0.75_1.25"), by_method.get("ce")
    if not head or not ce:
        return "The headline point (0.75, 1.25) or the CE reference has no results yet; no verdict."

    def mean(group: list[dict[str, Any]], key: str, sub: str | None = None) -> float:
        return statistics.fmean((e[sub][key] if sub else e[key]) for e in group)

    def gap(key: str, sub: str | None = None) -> tuple[float, float]:
        spread = max(_mean_std([e[sub][key] if sub else e[key] for e in g])[1] for g in (head, ce))
        return 100 * (mean(head, key, sub) - mean(ce, key, sub)), 100 * spread

    def survives(g: float, sd: float) -> bool:
        return g > max(2.0, 2 * sd)

    clean_gap, _ = gap("clean_acc")
    fgsm_gap, _ = gap("fgsm_acc")
    pgd_gap, pgd_sd = gap("pgd_acc")
    aa_gap, aa_sd = gap("autoattack_acc")
    tr_gap, tr_sd = gap("transfer_acc")
    overstate_head = 100 * (mean(head, "pgd_acc", "on_autoattack_points") - mean(head, "autoattack_acc"))
    overstate_ce = 100 * (mean(ce, "pgd_acc", "on_autoattack_points") - mean(ce, "autoattack_acc"))
    ce_grad_ratio = mean(head, "grad_norm_ce_median") / mean(ce, "grad_norm_ce_median")
    margin_grad_ratio = mean(head, "grad_norm_margin_median") / mean(ce, "grad_norm_margin_median")
    flagged = sum(e["gradient_masking"]["suspected"] for e in head)
    lines = [
        f"Against the CE reference ({len(ce)} seeds), lambda = (0.75, 1.25) ({len(head)} seeds) changes clean "
        f"accuracy by {clean_gap:+.1f} points, FGSM accuracy by {fgsm_gap:+.1f}, PGD-40 accuracy by {pgd_gap:+.1f} "
        f"(seed spread up to {pgd_sd:.1f}), AutoAttack accuracy by {aa_gap:+.1f} (spread {aa_sd:.1f}) and "
        f"transfer-attack accuracy by {tr_gap:+.1f} (spread {tr_sd:.1f}) points at eps 0.1.",
        f"White-box PGD overstates its robustness by {overstate_head:.1f} points on the AutoAttack points (CE: "
        f"{overstate_ce:.1f}); its median CE-loss input gradient is {ce_grad_ratio:.2f}x the CE reference's and "
        f"its logit-margin gradient {margin_grad_ratio:.2f}x"
        + (
            " (a CE gradient shrunk far more than the margin's is the signature of a saturated softmax, which weakens "
            "CE-loss attacks such as FGSM and PGD)."
            if ce_grad_ratio < 0.5 * margin_grad_ratio
            else " (no sign of a saturated softmax: the CE gradient did not shrink more than the margin's)."
        )
        + f" The masking check flags {flagged} of {len(head)} seeds.",
    ]
    short = by_method.get("ce_short")
    explained_by_accuracy = False
    if short:

        def gap_to_short(key: str) -> tuple[float, float]:
            spread = max(_mean_std([e[key] for e in g])[1] for g in (head, short))
            return 100 * (mean(head, key) - mean(short, key)), 100 * spread

        aa_short, aa_short_sd = gap_to_short("autoattack_acc")
        tr_short, tr_short_sd = gap_to_short("transfer_acc")
        explained_by_accuracy = not (survives(aa_short, aa_short_sd) and survives(tr_short, tr_short_sd))
        lines.append(
            f"Clean-accuracy control: CE stopped after 1/8 of the steps ({len(short)} seeds) has "
            f"{100 * mean(short, 'clean_acc'):.1f}% clean accuracy (the policy point: {100 * mean(head, 'clean_acc'):.1f}%) "
            f"and {100 * mean(short, 'pgd_acc'):.1f}% PGD, {100 * mean(short, 'autoattack_acc'):.1f}% AutoAttack, "
            f"{100 * mean(short, 'transfer_acc'):.1f}% transfer accuracy (the policy point: "
            f"{100 * mean(head, 'pgd_acc'):.1f}%, {100 * mean(head, 'autoattack_acc'):.1f}%, "
            f"{100 * mean(head, 'transfer_acc'):.1f}%): against it the policy point's AutoAttack gap is "
            f"{aa_short:+.1f} (spread {aa_short_sd:.1f}) and its transfer gap {tr_short:+.1f} (spread {tr_short_sd:.1f}) "
            "points."
        )
    if survives(aa_gap, aa_sd) and survives(tr_gap, tr_sd) and explained_by_accuracy:
        lines.append(
            f"Verdict: the gain over the fully trained CE model survives AutoAttack ({aa_gap:+.1f}) and the transfer "
            f"attack ({tr_gap:+.1f}), and white-box PGD overstates it by only {max(0.0, overstate_head):.1f} points "
            f"(gradient masking is minor), but it comes with {-clean_gap:.1f} points less clean accuracy, and a CE model stopped "
            "at a similar clean accuracy is about as robust: in this budget the policy loss buys robustness the way "
            "less training does (accuracy traded for robustness), not for free. The paper's claim of robustness "
            "without sacrificing accuracy does not reproduce here."
        )
    elif survives(aa_gap, aa_sd) and survives(tr_gap, tr_sd):
        masked_part = overstate_head
        lines.append(
            f"Verdict: in this budget a robustness gain over CE survives AutoAttack ({aa_gap:+.1f}) and the transfer "
            f"attack ({tr_gap:+.1f}), but white-box PGD overstates its robustness by {max(0.0, masked_part):.1f} "
            "points (gradient masking)"
            + (
                f", and it costs {-clean_gap:.1f} points of clean accuracy (the paper reports none); models of such "
                "different clean accuracy are not comparable one-to-one."
                if clean_gap < -2
                else "."
            )  # fmt: skip
        )
    elif survives(pgd_gap, pgd_sd) or survives(fgsm_gap, 0.0):
        lines.append("Verdict: the gain seen with FGSM/PGD does not survive AutoAttack and/or the transfer attack "
                     "(it is within noise or reversed there): in this budget it is better explained by gradient "
                     "masking than by real robustness.")  # fmt: skip
    else:
        lines.append("Verdict: no robustness gain over CE is measured in this budget, with white-box attacks or "
                     "otherwise; the paper's gain does not reproduce here.")  # fmt: skip
    return " ".join(lines)


TRAIN_SUMMARY = Path("benchmarks/results/policy_loss_training.json")


def training_summary(ckpt_dir: Path = CKPT_DIR) -> dict[str, Any]:
    """Test accuracy, switch step and time of every trained checkpoint (robustness evaluated or not)."""
    runs = []
    for method in METHODS:
        for path in sorted(ckpt_dir.glob(f"{method.name}__seed*.pt")):
            ckpt = torch.load(path, weights_only=True)
            runs.append({"method": method.name, "method_label": method.label, "seed": ckpt["args"]["seed"],
                         "test_acc_full": ckpt["test_acc"], "switch_step": ckpt["switch_step"],
                         "steps": ckpt.get("steps"), "epochs": ckpt["args"]["epochs"],
                         "train_time_s": ckpt.get("train_time_s")})  # fmt: skip
    return {"runs": runs}


def render_training_section(summary: dict[str, Any]) -> str:
    """Clean test accuracy of every trained model (includes the Table 4 ablation) from the training summary."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for run in summary["runs"]:
        by_method.setdefault(run["method"], []).append(run)
    rows = ["## Training outcomes of every model (Table 4 ablation included)", "",
            "Test accuracy on all 10,000 test images after training; robustness is evaluated above only for the "
            "methods listed there.", "",
            "| method | seeds | steps | test acc (10k), per seed | mean ± sd | switch step |", "|---|---|---|---|---|---|"]  # fmt: skip
    for group in by_method.values():
        accs = [r["test_acc_full"] for r in group]
        rows.append(
            f"| {group[0]['method_label']} | {', '.join(str(r['seed']) for r in group)} | {group[0]['steps']} "
            f"| {', '.join(f'{100 * a:.1f}' for a in accs)} | {_cell(accs)} "
            f"| {', '.join('none' if r['switch_step'] is None else str(r['switch_step']) for r in group)} |"
        )
    return "\n".join(rows)


def render_budget_section(entries: list[dict[str, Any]], title: str) -> str:
    """One budget's section of the report: its budget, the table and the verdict, all from ``entries``."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by_method.setdefault(e["method"], []).append(e)
    rows = ["| method | seeds | clean | FGSM | PGD-40 | AutoAttack | transfer | PGD on AA points | "
            "median ‖∇x CE‖₂ | median ‖∇x margin‖₂ | masking flagged | switch step | test acc (10k) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, group in by_method.items():
        label = group[0].get("method_label", name)
        switch = [e["switch_step"] for e in group]
        rows.append(
            f"| {label} | {', '.join(str(e['seed']) for e in group)} "
            f"| {_cell([e['clean_acc'] for e in group])} | {_cell([e['fgsm_acc'] for e in group])} "
            f"| {_cell([e['pgd_acc'] for e in group])} | {_cell([e['autoattack_acc'] for e in group])} "
            f"| {_cell([e['transfer_acc'] for e in group])} "
            f"| {_cell([e['on_autoattack_points']['pgd_acc'] for e in group])} "
            f"| {_cell([e['grad_norm_ce_median'] for e in group], percent=False)} "
            f"| {_cell([e['grad_norm_margin_median'] for e in group], percent=False)} "
            f"| {sum(e['gradient_masking']['suspected'] for e in group)}/{len(group)} "
            f"| {', '.join('none' if s is None else str(s) for s in switch)} "
            f"| {_cell([e['test_acc_full'] for e in group])} |"
        )
    if not entries:
        return f"## {title}\n\nNo results yet."
    first = entries[0]
    attacks = first["attacks"]
    train_times = [e["train_time_s"] for e in entries if e.get("train_time_s")]
    text = [
        f"## {title}",
        "",
        f"- Training: {first['epochs']} epochs of {first['batch_size']}-image steps ({first['steps']} steps of the "
        f"batched `ClassifierReward-v0`; an epoch is ceil(60000 / {first['batch_size']}) steps), {first['optimizer']}; "
        f"the Eq. 12 -> Eq. 4 switch at {100 * first['switch_acc']:.0f}% test accuracy, checked 4 times per epoch. "
        f"Same network, data stream and budget for every method; mean training time "
        f"{statistics.fmean(train_times):.0f} s per model on one CPU thread of a shared 2-core machine.",
        f"- Evaluation: a fixed subset of {first['n_eval']} test images ({first['eval_subset']}), Linf eps = "
        f"{attacks['pgd']['eps_linf']}: FGSM; PGD {attacks['pgd']['steps']} steps of {attacks['pgd']['alpha']} with "
        f"random start; AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square 5000 queries; torchattacks "
        f"{first['versions']['torchattacks']}; {first.get('autoattack_impl', _AUTOATTACK_IMPL_BEFORE)}) on the first "
        f"{attacks['autoattack']['n_points']} of them; transfer: "
        "the same PGD crafted on the CE model of another seed.",
        "",
        *rows,
        "",
        "**Does the paper's robustness gain survive?** " + _verdict(by_method),
    ]
    return "\n".join(text)


def render_report(sections: list[tuple[str, list[dict[str, Any]]]], extra_sections: list[str] | None = None) -> str:
    """The Markdown of ``docs/policy_loss.md``, built from result entries (never typed by hand).

    Args:
        sections: ``(title, entries)`` per training budget, each entry a result JSON as a dict.
        extra_sections: further Markdown sections (e.g. the SB3 agents) placed before "Reproduce".
    """
    text = [
        "# Policy-loss training (seed 003) under strong attacks",
        "",
        "<!-- generated by `python -m benchmarks.policy_loss_study report` from "
        "benchmarks/results/policy_loss*/*.json; do not edit by hand -->",
        "",
        "Kim's policy-loss trainer (`agents/policy_loss.py`: warm-up with Eq. 12, then the policy loss Eq. 4 once "
        "test accuracy passes a threshold) against the cross-entropy (CE) reference, on Fashion-MNIST with "
        "LeNet-5, at Linf eps = 0.1 as in the paper's Table 2 (MNIST). A policy loss can hide gradients instead "
        "of removing adversarial examples, so besides FGSM and PGD every model faces AutoAttack, a transfer "
        "attack and a gradient-masking check.",
        "",
        "Cells are mean ± standard deviation over seeds, in percent (gradient norms: raw L2 norms of the input "
        "gradient of the CE loss and of the logit margin, medians over the evaluated points). A model is flagged "
        "for gradient masking when AutoAttack, the transfer attack or FGSM is more than 5 points below white-box "
        "PGD on the same points, or when its median CE input-gradient norm is below 1% of the CE reference's "
        "(`robust_envs.attacks.masking.gradient_masking_flags`).",
        "",
        "The budgets are CPU-sized (the paper trains 100-200 epochs); they deviate from the paper's schedule "
        "where a short budget demands it: the learning-rate decays sit at 75% and 90% of the steps (the paper: "
        "25% and 75%) and the switch threshold is 70% (the paper: 80%, on MNIST and CIFAR-10), because with the "
        "paper's schedule the Eq. 12 warm-up does not reach 80% on Fashion-MNIST before the first decay in a few "
        "epochs, and the method would never leave its warm-up. The trainer's defaults are the paper's.",
        "",
    ]
    for title, entries in sections:
        text += [render_budget_section(entries, title), ""]
    for section in extra_sections or []:
        text += [section, ""]
    text += [
        "## Reproduce",
        "",
        "```bash",
        'M="ce pl_0.75_1.25 pl_0.75_0.25 pl_1.5_1.25 ce_short ablation_ce_eq4 ablation_eq4_only"',
        "for m in $M; do python -m benchmarks.policy_loss_study train --methods $m --seeds 1 2 3 & done; wait",
        "for s in 1 2 3; do python -m benchmarks.policy_loss_study evaluate --seeds $s --all-seeds 1 2 3 & done; wait",
        "# a longer budget (not run here): add --epochs 6 --ckpt-dir runs/policy_loss_study_6ep "
        "--results-dir benchmarks/results/policy_loss_6ep to both commands",
        "python -m benchmarks.policy_loss_study summarize",
        "python -m benchmarks.sb3_classifier_reward --timesteps 20000",
        "python -m benchmarks.policy_loss_study report",
        "```",
        "",
    ]
    return "\n".join(text)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=("train", "evaluate", "summarize", "report"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds to train/evaluate")
    parser.add_argument("--all-seeds", type=int, nargs="+", default=None,
                        help="every seed of the study (transfer sources come from these); default --seeds")  # fmt: skip
    parser.add_argument("--methods", nargs="+", default=[m.name for m in METHODS], choices=[m.name for m in METHODS])
    parser.add_argument("--epochs", type=int, default=Budget.epochs, help="training epochs per model")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--report-dirs", type=Path, nargs="+", default=[RESULTS_DIR, Path(str(RESULTS_DIR) + "_6ep")],
                        help="results directories to report, one section each (missing ones are skipped)")  # fmt: skip
    parser.add_argument("--ckpt-dir", type=Path, default=CKPT_DIR)
    parser.add_argument("--doc", type=Path, default=DOC_PATH)
    parser.add_argument("--sb3-json", type=Path, default=Path("benchmarks/results/sb3_classifier_reward.json"),
                        help="SB3 PPO/A2C results to include in the report when present")  # fmt: skip
    ns = parser.parse_args(argv)
    budget = Budget(epochs=ns.epochs)
    methods = [METHODS_BY_NAME[n] for n in ns.methods]
    if ns.phase == "train":
        for seed in ns.seeds:
            for method in sorted(methods, key=lambda m: m.name != "ce"):
                t = time.time()
                path = train_one(method, seed, budget, ns.ckpt_dir)
                print(f"[train] {method.name} seed {seed}: {path} ({time.time() - t:.0f} s)", flush=True)
    elif ns.phase == "evaluate":
        all_seeds = ns.all_seeds or ns.seeds
        for seed in ns.seeds:
            for method in methods:
                t = time.time()
                path = evaluate_one(method, seed, all_seeds, budget, ns.results_dir, ns.ckpt_dir)
                print(f"[evaluate] {method.name} seed {seed}: {path} ({time.time() - t:.0f} s)", flush=True)
    elif ns.phase == "summarize":
        _atomic_write_json(TRAIN_SUMMARY, training_summary(ns.ckpt_dir))
        print(f"wrote {TRAIN_SUMMARY}")
    else:
        extra = []
        if TRAIN_SUMMARY.exists():
            extra.append(render_training_section(json.loads(TRAIN_SUMMARY.read_text())))
        if ns.sb3_json.exists():
            from benchmarks.sb3_classifier_reward import render_section

            extra.append(render_section(json.loads(ns.sb3_json.read_text())))
        ns.doc.parent.mkdir(parents=True, exist_ok=True)
        sections = []
        for directory in ns.report_dirs:
            entries = load_results(directory) if directory.exists() else []
            if entries:
                sections.append((f"Budget: {entries[0]['epochs']} epochs ({directory}/)", entries))
        ns.doc.write_text(render_report(sections, extra))
        print(f"wrote {ns.doc}")


if __name__ == "__main__":
    main()
