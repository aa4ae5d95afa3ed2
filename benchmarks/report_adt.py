"""Generate ``docs/adt.md``: ADT_EXP, ADT_EXP-AM and ADT_IMP-AM beside PGD-AT and TRADES (issue 5).

Everything in the page is computed from the leaderboard JSONs (``<results>/<dataset>/<method>_seed<k>.json``),
the trainers' configs and cost formulas, and the seed text (001, the CIFAR-10 table it quotes): mean +-
sample standard deviation (ddof = 1) over the seeds present, the number of seeds, which entries are
missing, the masking flags, the per-batch cost and wall time per epoch, and a verdict on whether the
seed's ordering (ADT_EXP above PGD-AT on A_rob) holds here.

Usage::

    python -m benchmarks.report_adt                       # benchmarks/results -> docs/adt.md
    python -m benchmarks.report_adt --results-dir R --out docs/adt.md --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.leaderboard import _get, _stats, load_results
from benchmarks.trainers import TRAINERS, AdvConfig, TrainConfig
from benchmarks.trainers.adt import BatchCost

__all__ = ["METHODS", "SeedRow", "batch_cost", "build_report", "main", "parse_seed_table"]

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED_FILE = REPO_ROOT.parent / "shared" / "seeds" / "001_bd952af792ad16c2.txt"

#: Methods on the page, in display order.
METHODS: tuple[str, ...] = ("pgd_at", "trades", "adt_exp", "adt_expam", "adt_impam")
_LABELS = {
    "pgd_at": "PGD-AT",
    "trades": "TRADES",
    "adt_exp": "ADT_EXP",
    "adt_expam": "ADT_EXP-AM",
    "adt_impam": "ADT_IMP-AM",
}
#: (column title, JSON path) of the accuracy table; A_rob is ``robust_acc`` (worst case over the Linf attacks).
_COLUMNS: tuple[tuple[str, str], ...] = (
    ("A_nat", "clean_acc"), ("FGSM", "attack_acc.fgsm"), ("PGD-20", "attack_acc.pgd20"),
    ("PGD-100", "attack_acc.pgd100"), ("MIM-20", "attack_acc.mim20"), ("C&W-30", "attack_acc.cw30"),
    ("AutoAttack", "autoattack_acc"), ("A_rob", "robust_acc"),
)  # fmt: skip


def batch_cost(method: str, config: TrainConfig) -> BatchCost:
    """Classifier (and generator) forward/backward passes per training batch of ``method`` under ``config``.

    ADT trainers state theirs (``cost_per_batch``). PGD-AT: ``attack_steps`` forward+backward to the
    input, then one forward+backward for the update. TRADES: one clean forward for the KL target, then
    ``attack_steps`` forward+backward, then a clean and an adversarial forward and one backward.
    Standard: 1 + 1.

    Raises:
        ValueError: for a method without a known cost.
    """
    cls = TRAINERS.get(method)
    if cls is not None and hasattr(cls, "cost_per_batch"):
        return cls.cost_per_batch(config)  # type: ignore[attr-defined, no-any-return]
    if method == "pgd_at" and isinstance(config, AdvConfig):
        return BatchCost(config.attack_steps + 1, config.attack_steps + 1)
    if method == "trades" and isinstance(config, AdvConfig):
        return BatchCost(config.attack_steps + 3, config.attack_steps + 1)
    if method == "standard":
        return BatchCost(1, 1)
    raise ValueError(f"no per-batch cost known for method {method!r}; known: pgd_at, trades, standard, adt_*")


@dataclass(frozen=True)
class SeedRow:
    """One row of the seed's CIFAR-10 white-box table, accuracies in percent (None where unreadable)."""

    model: str
    values: dict[str, float | None]


_SEED_COLUMNS = ("A_nat", "FGSM", "PGD-20", "PGD-100", "MIM", "C&W", "FeaAttack", "A_rob")


def parse_seed_table(text: str) -> list[SeedRow]:
    """The rows of seed 001's CIFAR-10 table (tab-separated lines of a model name and 8 percentages)."""
    rows = []
    for line in text.splitlines():
        cells = line.split("\t")
        if len(cells) != 1 + len(_SEED_COLUMNS):
            continue
        raw_name = re.sub(r"\$|\\dagger|\^|\{|\}|_", " ", re.sub(r"</?(sub|b)>", " ", cells[0]))
        name = " ".join(raw_name.split())
        values: dict[str, float | None] = {}
        for col, cell in zip(_SEED_COLUMNS, cells[1:], strict=True):
            m = re.search(r"([0-9]+(?:\.[0-9]+)?)%", cell)
            values[col] = float(m.group(1)) if m else None
        if any(v is not None for v in values.values()):
            rows.append(SeedRow(name + (" (dagger)" if "dagger" in cells[0] else ""), values))
    return rows


def _fmt(stat: tuple[float, float] | None, n: int) -> str:
    if stat is None:
        return "n/a"
    mean, std = stat
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if n > 1 else f"{100 * mean:.1f}"


def _seed_row(rows: list[SeedRow], prefix: str, dagger: bool = False) -> SeedRow | None:
    for row in rows:
        if (
            row.model.replace(" (dagger)", "").replace(" ", "") == prefix.replace(" ", "")
            and ("(dagger)" in row.model) == dagger
        ):
            return row
    return None


def _verdict(by_method: dict[str, list[dict[str, Any]]], method: str, seed_diff: float | None) -> str:
    """One sentence: is ``method`` above PGD-AT on A_rob here, and by how much relative to the seed spread."""
    label = _LABELS[method]
    a = [v for v in (_get(r, "robust_acc") for r in by_method.get(method, [])) if v is not None]
    b = [v for v in (_get(r, "robust_acc") for r in by_method.get("pgd_at", [])) if v is not None]
    seed_part = f" (seed 001, CIFAR-10: {seed_diff:+.2f} points)" if seed_diff is not None else ""
    if not a or not b:
        missing = [name for name, vals in ((label, a), ("PGD-AT", b)) if not vals]
        return f"{label} vs PGD-AT on A_rob: no verdict, no Fashion-MNIST entries for {', '.join(missing)}{seed_part}."
    diff = 100 * (sum(a) / len(a) - sum(b) / len(b))
    if len(a) < 2 or len(b) < 2:
        return (f"{label} vs PGD-AT on A_rob: {diff:+.1f} points with {len(a)} and {len(b)} seed(s); "
                f"the seed spread needs at least 2 seeds each, so the ordering is not resolved{seed_part}.")  # fmt: skip
    sd_a, sd_b = (100 * float(np.std(v, ddof=1)) for v in (a, b))
    se = math.sqrt(sd_a**2 / len(a) + sd_b**2 / len(b))
    ratio = abs(diff) / se if se > 0 else math.inf
    if diff > 0 and ratio >= 2:
        outcome = f"the seed's ordering holds ({label} above PGD-AT)"
    elif diff < 0 and ratio >= 2:
        outcome = f"the seed's ordering is reversed ({label} below PGD-AT)"
    else:
        outcome = "the seed's ordering is not resolved (difference within 2 standard errors)"
    return (f"{label} vs PGD-AT on A_rob: {outcome}: {diff:+.1f} points, {ratio:.1f} standard errors of the "
            f"difference; seed standard deviations {sd_a:.1f} and {sd_b:.1f} points over {len(a)} and {len(b)} "
            f"seeds{seed_part}.")  # fmt: skip


def build_report(results_dir: Path, out: Path, dataset: str = "fashion_mnist", seeds: Sequence[int] = (0, 1, 2),
                 seed_file: Path = SEED_FILE, variants_dir: Path | None = None) -> Path:  # fmt: skip
    """Write the ADT comparison page to ``out`` from the JSONs under ``results_dir`` and return its path.

    Missing entries (method x seed of ``seeds``) are listed, never an error; a missing seed file is noted.
    ``variants_dir`` (default: none) holds diagnostic runs with changed configs, one folder per variant,
    shown in a separate table.
    """
    records = [r for r in load_results(results_dir) if r.get("dataset") == dataset and r.get("method") in METHODS]
    by_method: dict[str, list[dict[str, Any]]] = {m: sorted([r for r in records if r["method"] == m],
                                                            key=lambda r: r["seed"]) for m in METHODS}  # fmt: skip
    lines = [
        "# ADT baselines on the leaderboard (issue 5, seed 001)",
        "",
        f"Generated by `python -m benchmarks.report_adt` from `{results_dir.name}/{dataset}/*.json`; do not edit.",
        "Accuracies in percent, mean ± sample standard deviation (ddof = 1) over the seeds present; A_rob is",
        "`robust_acc`, the per-point worst case over the white-box Linf attacks including AutoAttack.",
        "",
        f"## {dataset}: accuracy",
        "",
        "| method | seeds | " + " | ".join(c for c, _ in _COLUMNS) + " | masking flagged |",
        "| --- | --- | " + " | ".join("---" for _ in _COLUMNS) + " | --- |",
    ]
    for m in METHODS:
        recs = by_method[m]
        if not recs:
            lines.append(f"| {_LABELS[m]} | 0 | " + " | ".join("n/a" for _ in _COLUMNS) + " | n/a |")
            continue
        cells = [_fmt(_stats([_get(r, path) for r in recs]), len(recs)) for _, path in _COLUMNS]
        flagged = sum(bool(r.get("masking", {}).get("any")) for r in recs)
        lines.append(f"| {_LABELS[m]} | {len(recs)} ({', '.join(str(r['seed']) for r in recs)}) | "
                     + " | ".join(cells) + f" | {flagged}/{len(recs)} |")  # fmt: skip
    missing = [f"{m}_seed{s}" for m in METHODS for s in seeds if s not in {r["seed"] for r in by_method[m]}]
    lines += ["", "Missing entries: " + (", ".join(missing) if missing else "none") + "."]

    # Cost per batch and wall time per epoch.
    lines += [
        "",
        "## Cost per training batch and wall time per epoch",
        "",
        "Passes over one batch (a backward to the input or to the weights counts one). Wall time per epoch is",
        "`train_time_s / epochs` (wall clock on a shared machine: includes time other jobs held the cores);",
        "CPU time per epoch from `train_cpu_s` where the entry has it.",
        "",
        "| method | config | classifier fwd | classifier bwd | generator fwd | generator bwd | wall s / epoch | CPU s / epoch |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in METHODS:
        cfg = TRAINERS[m].default_config(dataset)
        cost = batch_cost(m, cfg)
        recs = by_method[m]
        wall = _stats(
            [_get(r, "train_time_s") / r["epochs"] if _get(r, "train_time_s") is not None else None for r in recs]
        )
        cpu = _stats(
            [_get(r, "train_cpu_s") / r["epochs"] if _get(r, "train_cpu_s") is not None else None for r in recs]
        )
        desc = _config_summary(m, cfg)
        w = f"{wall[0]:.0f} ± {wall[1]:.0f}" if wall else "n/a"
        c = f"{cpu[0]:.0f} ± {cpu[1]:.0f}" if cpu else "n/a"
        lines.append(f"| {_LABELS[m]} | {desc} | {cost.classifier_forward} | {cost.classifier_backward} | "
                     f"{cost.generator_forward} | {cost.generator_backward} | {w} | {c} |")  # fmt: skip

    # The seed's CIFAR-10 table and the verdict.
    lines += ["", "## Comparison with the seed's CIFAR-10 table (WRN-28-10, eps 8/255)", ""]
    seed_rows: list[SeedRow] = []
    if seed_file.is_file():
        seed_rows = parse_seed_table(seed_file.read_text())
    if not seed_rows:
        lines.append(f"Seed table not found (looked in `{seed_file}`).")
    else:
        lines += ["Quoted from the seed text (percent):", "",
                  "| model | " + " | ".join(_SEED_COLUMNS) + " |", "| --- | " + " | ".join("---" for _ in _SEED_COLUMNS) + " |"]  # fmt: skip
        for srow in seed_rows:
            lines.append(f"| {srow.model} | " + " | ".join("n/a" if srow.values[c] is None else f"{srow.values[c]:.2f}"
                                                        for c in _SEED_COLUMNS) + " |")  # fmt: skip
    at = _seed_row(seed_rows, "AT PGD")
    lines += ["", f"Difference to PGD-AT on A_rob, points (seed: CIFAR-10 against AT_PGD; here: {dataset}):", "",
              "| method | seed (CIFAR-10) | here | seeds here |", "| --- | --- | --- | --- |"]  # fmt: skip
    seed_names = {"adt_exp": "ADT EXP", "adt_expam": "ADT EXP-AM", "adt_impam": "ADT IMP-AM", "trades": None}
    verdicts = []
    for m in ("trades", "adt_exp", "adt_expam", "adt_impam"):
        name = seed_names[m]
        row: SeedRow | None = _seed_row(seed_rows, name) if name else None
        sd = (row.values["A_rob"] - at.values["A_rob"]) if row and at and row.values["A_rob"] is not None \
            and at.values["A_rob"] is not None else None  # fmt: skip
        here = _stats([_get(r, "robust_acc") for r in by_method[m]])
        base = _stats([_get(r, "robust_acc") for r in by_method["pgd_at"]])
        h = f"{100 * (here[0] - base[0]):+.1f}" if here and base else "n/a"
        lines.append(f"| {_LABELS[m]} | {'n/a (not in the table)' if sd is None else f'{sd:+.2f}'} | {h} | "
                     f"{len(by_method[m])} vs {len(by_method['pgd_at'])} |")  # fmt: skip
        if m != "trades":
            verdicts.append(_verdict(by_method, m, sd))
    lines += ["", "## Verdict", "", *[f"- {v}" for v in verdicts], ""]
    lines += _variant_section(variants_dir, dataset, by_method)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return out


def _variant_section(variants_dir: Path | None, dataset: str, by_method: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Diagnostic runs with changed configs (``<variants_dir>/<variant>/<dataset>/*.json``) beside the default
    entries of the same method and seed; the config fields that differ are read from the JSONs.
    """
    if variants_dir is None or not variants_dir.is_dir():
        return []
    lines: list[str] = []
    for folder in sorted(p for p in variants_dir.iterdir() if p.is_dir()):
        recs = [r for r in load_results(folder) if r.get("dataset") == dataset and r.get("method") in METHODS]
        if not recs:
            continue
        if not lines:
            lines += ["## Diagnostic runs (changed configs, not leaderboard entries)", "",
                      "Same protocol and seed as the entry on the right; only the listed config fields differ. "
                      "`normalize_grad_inputs`: the AM generators see the input and two input gradients of the "
                      "classifier's loss; the reference feeds them raw (our default, about 1e-4 per pixel), True "
                      "rescales each example's gradient maps to [-1, 1].", "",
                      "| variant | method | seed | changed fields | A_nat | PGD-20 | AutoAttack | A_rob | "
                      "default config: A_nat / A_rob |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for r in sorted(recs, key=lambda r: (r["method"], r["seed"])):
            base = next((b for b in by_method[r["method"]] if b["seed"] == r["seed"]), None)
            changed = {k: v for k, v in r["train_config"].items()
                       if base is None or base["train_config"].get(k) != v}  # fmt: skip
            ref = f"{100 * base['clean_acc']:.1f} / {100 * base['robust_acc']:.1f}" if base else "n/a"
            lines.append(f"| {folder.name} | {_LABELS[r['method']]} | {r['seed']} | "
                         f"{', '.join(f'{k}={v}' for k, v in changed.items()) or 'none'} | "
                         f"{100 * r['clean_acc']:.1f} | {100 * r['attack_acc']['pgd20']:.1f} | "
                         f"{100 * r['autoattack_acc']:.1f} | {100 * r['robust_acc']:.1f} | {ref} |")  # fmt: skip
    return [*lines, ""] if lines else []


def _config_summary(method: str, cfg: TrainConfig) -> str:
    parts = [f"{cfg.epochs} ep", f"batch {cfg.batch_size}"]
    for field, label in (("attack_steps", "steps"), ("inner_steps", "steps"), ("mc_samples", "MC"),
                         ("entropy_lambda", "lambda"), ("gen_width", "G width"), ("max_train_samples", "N")):  # fmt: skip
        value = getattr(cfg, field, None)
        if value is not None:
            parts.append(f"{label} {value}")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.report_adt", description=__doc__.split("\n\n")[0])
    p.add_argument("--results-dir", default=str(REPO_ROOT / "benchmarks" / "results"))
    p.add_argument("--out", default=str(REPO_ROOT / "docs" / "adt.md"))
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--seed-file", default=str(SEED_FILE))
    p.add_argument(
        "--variants-dir",
        default=str(REPO_ROOT / "benchmarks" / "results_variants"),
        help="diagnostic runs with changed configs, <dir>/<variant>/<dataset>/*.json",
    )
    args = p.parse_args(argv)
    build_report(
        Path(args.results_dir), Path(args.out), args.dataset, args.seeds, Path(args.seed_file), Path(args.variants_dir)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
