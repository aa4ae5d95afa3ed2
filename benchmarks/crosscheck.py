"""A second attack library checks every leaderboard entry: the Adversarial Robustness Toolbox (ART) on a seeded subset.

Usage::

    python -m benchmarks.crosscheck                       # every entry not yet checked against its current numbers
    python -m benchmarks.crosscheck --methods trades --seeds 0 --n-points 300

For each entry: restore the checkpoint (never retrain), draw ``n_points`` of the points every protocol attack ran on
(the first ``n_combined`` of the entry's evaluation subset; seeded), and attack them with ART 1.20's
``AutoProjectedGradientDescent`` (Croce & Hein 2020) in each norm at the protocol's radius, with the cross-entropy
and the DLR loss (``max_iter`` 100, one random start each, first step ``2 eps`` in Linf / L2 and ``eps`` in L1 as
in the reference APGD). A point is robust under ART in a norm when it is clean-correct and survives both.

Rule (stated in docs/evaluation.md): a norm is flagged when ART's robust accuracy is more than ``margin`` (2 points)
below the protocol's beyond sampling error: a one-sided test of H0 "ART accuracy - protocol accuracy >= -margin"
rejected at level ``alpha`` (0.05). With the entry's per-point outcomes (protocol version 2 entries) the test is
paired on the same points (Wald test for the difference of paired proportions, the McNemar setting with a margin:
``d = (c - b) / n``, ``se = sqrt((b + c) / n - d^2) / sqrt(n)``, b = points the protocol leaves robust and ART
breaks, c = the reverse); without them (version 1 entries) it compares ART's accuracy on the checked points with the
protocol's accuracy on its ``n_combined`` points as two independent proportions (a larger standard error: the
check is then weaker, never stricter). ``z = (d + margin) / se``; flag when ``z < -1.645``.

The result goes into the entry's JSON as ``crosscheck`` (atomic rewrite; no other field changes); the leaderboard
tables show it beside the gradient-masking flags.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.evaluate import decode_bits, eval_subset
from benchmarks.leaderboard import (
    REPO_ROOT,
    _load_checkpoint,
    _spec_of,
    atomic_write_json,
    build_tables,
    protocol_version,
    read_json_or_warn,
    redo_command,
)
from robust_envs.attacks import PROTOCOL_VERSION, radii_for
from robust_envs.data import load_dataset
from robust_envs.fileio import read_json

__all__ = ["CrossCheckConfig", "art_robust", "check_positions", "crosscheck_entry", "main", "noninferiority_test"]

logger = logging.getLogger(__name__)

_ART_NORM = {"Linf": np.inf, "L2": 2, "L1": 1}


@dataclass(frozen=True)
class CrossCheckConfig:
    """Settings of the cross-check.

    Attributes:
        n_points: points checked per entry (drawn from the entry's ``n_combined`` points), >= 1.
        seed: seed of the draw and of ART's random starts.
        max_iter: APGD iterations per loss.
        losses: ART ``loss_type`` values run in every norm.
        norms: norms checked.
        margin: accuracy gap (fraction) tolerated before a flag.
        alpha: one-sided test level.
        batch_size: ART batch size.
    """

    n_points: int = 300
    seed: int = 0
    max_iter: int = 100
    losses: tuple[str, ...] = ("cross_entropy", "difference_logits_ratio")
    norms: tuple[str, ...] = ("Linf", "L2", "L1")
    margin: float = 0.02
    alpha: float = 0.05
    batch_size: int = 100

    def __post_init__(self) -> None:
        if self.n_points < 1:
            raise ValueError(f"n_points must be >= 1, got {self.n_points}")
        bad = sorted(set(self.norms) - set(_ART_NORM))
        if bad:
            raise ValueError(f"unknown norm(s) {bad}; valid: {sorted(_ART_NORM)}")


def noninferiority_test(
    art: np.ndarray, protocol: np.ndarray | None = None, protocol_acc: float | None = None,
    protocol_n: int | None = None, margin: float = 0.02, alpha: float = 0.05,
) -> dict[str, Any]:  # fmt: skip
    """One-sided test of H0 "ART accuracy - protocol accuracy >= -margin" (see the module docstring).

    Args:
        art: ``(n,)`` bool, robust under ART (clean-correct and not broken).
        protocol: ``(n,)`` bool, robust under the protocol on the same points (paired test), or None.
        protocol_acc, protocol_n: the protocol's accuracy and its number of points (unpaired test; when
            ``protocol`` is None).
        margin, alpha: tolerated gap (fraction) and test level.

    Returns:
        JSON-ready dict: ``art_acc``, ``protocol_acc``, ``diff`` (ART - protocol), ``se``, ``z``, ``p_value``,
        ``paired``, ``b`` / ``c`` (paired only), ``flag``.

    Raises:
        ValueError: on mismatched shapes or neither ``protocol`` nor ``protocol_acc`` given.
    """
    a = np.asarray(art, dtype=bool)
    n = a.size
    out: dict[str, Any] = {"n": int(n), "art_acc": float(a.mean())}
    if protocol is not None:
        p = np.asarray(protocol, dtype=bool)
        if p.shape != a.shape:
            raise ValueError(f"art {a.shape} and protocol {p.shape} outcomes differ in shape")
        b, c = int((p & ~a).sum()), int((~p & a).sum())
        d = (c - b) / n
        se = math.sqrt(max((b + c) / n - d * d, 0.0) / n)
        out.update(protocol_acc=float(p.mean()), paired=True, b=b, c=c)
    elif protocol_acc is not None and protocol_n:
        d = out["art_acc"] - protocol_acc
        se = math.sqrt(out["art_acc"] * (1 - out["art_acc"]) / n + protocol_acc * (1 - protocol_acc) / protocol_n)
        out.update(protocol_acc=float(protocol_acc), paired=False, protocol_n=int(protocol_n))
    else:
        raise ValueError("give the protocol's per-point outcomes, or its accuracy and number of points")
    if se > 0:
        z = (d + margin) / se
        p_value = 0.5 * math.erfc(-z / math.sqrt(2))  # Phi(z)
    else:
        z, p_value = (-math.inf, 0.0) if d < -margin else (math.inf, 1.0)
    out.update(diff=d, se=se, z=z if math.isfinite(z) else None, p_value=p_value,
               flag=bool(d < -margin and p_value < alpha))  # fmt: skip
    return out


def check_positions(record: dict[str, Any], n_points: int, seed: int) -> np.ndarray:
    """Sorted positions (in the entry's evaluation subset) of the checked points: a seeded draw of ``n_points`` from
    the first ``n_combined`` (where every protocol attack ran), all of them when there are fewer.
    """
    total = int(record.get("n_combined") or record["n_eval"])
    if n_points >= total:
        return np.arange(total)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=gen)[:n_points].sort().values.numpy()


def _protocol_per_point(record: dict[str, Any], norm: str, positions: np.ndarray) -> np.ndarray | None:
    """The protocol's per-point robustness in ``norm`` at ``positions`` (None when the entry lacks per-point data)."""
    pp = record.get("per_point")
    if not isinstance(pp, dict):
        return None
    n = int(pp["n"])
    robust = decode_bits(pp["clean"], n)
    keys = [k for k, a in record["attacks"].items() if a["norm"] == norm]
    for k in keys:
        if pp["evaluated"][k] <= int(positions.max()):
            return None  # the attack did not run on every checked point
        robust = robust & decode_bits(pp["correct"][k], n)
    return robust[positions]


def art_robust(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: dict[str, float], cfg: CrossCheckConfig,
    n_classes: int = 10,
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]], dict[str, float]]:  # fmt: skip
    """Per-point robustness under ART's APGD in each norm of ``cfg.norms``.

    Shape:
        - images: ``(N, C, H, W)`` float in [0, 1]; labels: ``(N,)`` int64.

    Returns:
        (norm -> ``(N,)`` bool robust (clean-correct and unbroken by every loss), attack descriptions, seconds).

    Raises:
        ImportError: without ART (``pip install 'robust-envs[art]'``).
    """
    try:
        import art
        from art.attacks.evasion import AutoProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier
    except ImportError as err:
        raise ImportError("the cross-check needs ART: pip install 'robust-envs[art]'") from err
    model.eval()
    clf = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(images.shape[1:]),
                            nb_classes=n_classes, clip_values=(0.0, 1.0), device_type="cpu")  # fmt: skip
    x = images.numpy().astype(np.float32)
    y = labels.numpy()
    clean = clf.predict(x, batch_size=cfg.batch_size).argmax(1) == y
    robust: dict[str, np.ndarray] = {}
    described: dict[str, dict[str, Any]] = {}
    times: dict[str, float] = {}
    for norm in cfg.norms:
        ok = clean.copy()
        t0 = time.perf_counter()
        for loss in cfg.losses:
            np.random.seed(cfg.seed)
            torch.manual_seed(cfg.seed)
            step = eps[norm] if norm == "L1" else 2 * eps[norm]
            attack = AutoProjectedGradientDescent(
                clf, norm=_ART_NORM[norm], eps=eps[norm], eps_step=step, max_iter=cfg.max_iter, targeted=False,
                nb_random_init=1, batch_size=cfg.batch_size, loss_type=loss, verbose=False,
            )  # fmt: skip
            idx = np.flatnonzero(ok)
            if idx.size:
                adv = attack.generate(x[idx], y[idx])
                ok[idx] = clf.predict(adv, batch_size=cfg.batch_size).argmax(1) == y[idx]
            described[f"{norm}/{loss}"] = {"attack": "AutoProjectedGradientDescent", "norm": norm, "eps": eps[norm],
                                          "eps_step": step, "max_iter": cfg.max_iter, "loss_type": loss,
                                          "nb_random_init": 1, "library": f"adversarial-robustness-toolbox "
                                          f"{art.__version__}"}  # fmt: skip
        robust[norm] = ok
        times[norm] = time.perf_counter() - t0
    return robust, described, times


def crosscheck_entry(path: Path, checkpoint_dir: Path, cfg: CrossCheckConfig | None = None) -> dict[str, Any]:
    """Cross-check the entry at ``path`` with ART; store and return ``record["crosscheck"]`` (atomic rewrite).

    Raises:
        FileNotFoundError, ValueError: when the checkpoint is missing or does not match the entry.
    """
    cfg = cfg or CrossCheckConfig()
    record = read_json(path, hint="redo the entry with `python -m benchmarks.leaderboard run`")
    spec = _spec_of(record, path.parent.parent, checkpoint_dir, threads=1)
    model = _load_checkpoint(spec, record)
    test = load_dataset(record["dataset"], "test")
    subset = eval_subset(test, record["n_eval"], record["subset_seed"])
    positions = check_positions(record, cfg.n_points, cfg.seed)
    idx = torch.as_tensor(positions)
    radii = radii_for(record["dataset"])
    eps = {m: radii.eps(m) for m in cfg.norms}
    t0 = time.perf_counter()
    robust, described, times = art_robust(model, subset.images[idx], subset.labels[idx], eps, cfg,
                                          n_classes=test.num_classes)  # fmt: skip
    norms: dict[str, Any] = {}
    for norm in cfg.norms:
        paired = _protocol_per_point(record, norm, positions)
        if paired is not None:
            norms[norm] = noninferiority_test(robust[norm], paired, margin=cfg.margin, alpha=cfg.alpha)
        else:
            norms[norm] = noninferiority_test(robust[norm], protocol_acc=record["norm_acc"][norm],
                                              protocol_n=int(record.get("n_combined") or record["n_eval"]),
                                              margin=cfg.margin, alpha=cfg.alpha)  # fmt: skip
    result = {
        "library": described[next(iter(described))]["library"] if described else "adversarial-robustness-toolbox",
        "protocol_version": protocol_version(record),
        "config": asdict(cfg),
        "positions": "seeded draw from the first n_combined points of the evaluation subset "
        "(benchmarks.crosscheck.check_positions)",
        "attacks": described,
        "norms": norms,
        "flag": any(v["flag"] for v in norms.values()),
        "flagged_norms": [m for m, v in norms.items() if v["flag"]],
        "rule": f"flag a norm when ART accuracy - protocol accuracy < -{cfg.margin} and a one-sided test of "
        f"H0: difference >= -{cfg.margin} rejects at level {cfg.alpha} (paired Wald/McNemar when per-point "
        "outcomes exist, else two independent proportions)",
        "time_s": time.perf_counter() - t0,
        "attack_time_s": times,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    record["crosscheck"] = result
    atomic_write_json(path, record)
    return result


def _is_checked(record: dict[str, Any], cfg: CrossCheckConfig) -> bool:
    cc = record.get("crosscheck")
    return (isinstance(cc, dict) and cc.get("protocol_version") == protocol_version(record)
            and cc.get("config") == {**asdict(cfg), "losses": list(cfg.losses), "norms": list(cfg.norms)})  # fmt: skip


def crosscheck_all(
    results_dir: Path, checkpoint_dir: Path, cfg: CrossCheckConfig, methods: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None, limit: int | None = None, redo: bool = False, include_stale: bool = False,
) -> list[str]:  # fmt: skip
    """Cross-check every matching entry not yet checked with ``cfg`` against its current numbers, one at a time
    (resumable: each entry is rewritten atomically when its check is done). Returns the entries checked now.

    Entries evaluated under an older protocol version are skipped (with a warning naming them) unless
    ``include_stale``: their re-evaluation (``python -m benchmarks.leaderboard reevaluate``) sets the check aside,
    so checking them first is wasted, and a check running while the re-evaluation rewrites the same file would race.
    """
    done: list[str] = []
    for path in sorted(Path(results_dir).glob("*/*.json")):
        if limit is not None and len(done) >= limit:
            break
        rec = read_json_or_warn(path, redo_command(path))
        if not isinstance(rec, dict) or not {"method", "seed", "norm_acc", "eval_config"} <= set(rec):
            continue
        if (methods and rec["method"] not in methods) or (seeds and int(rec["seed"]) not in seeds):
            continue
        if not redo and _is_checked(rec, cfg):
            continue
        if not include_stale and protocol_version(rec) != PROTOCOL_VERSION:
            logger.warning("%s: skipped, evaluated under protocol v%d (current v%d): re-evaluate it first, or pass "
                           "--include-stale", path.name, protocol_version(rec), PROTOCOL_VERSION)  # fmt: skip
            continue
        res = crosscheck_entry(path, checkpoint_dir, cfg)
        summary = ", ".join(
            f"{m} {100 * v['art_acc']:.1f} vs {100 * v['protocol_acc']:.1f}" for m, v in res["norms"].items()
        )
        logger.warning("%s: %s%s (%.0f s)", path.name, summary, " FLAGGED" if res["flag"] else "", res["time_s"])
        done.append(f"{path.parent.name}/{path.name}")
    return done


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.crosscheck", description=__doc__.split("\n\n")[0])
    p.add_argument("--results-dir", default=str(REPO_ROOT / "benchmarks" / "results"))
    p.add_argument("--checkpoint-dir", default=str(REPO_ROOT / "benchmarks" / "checkpoints"))
    p.add_argument("--docs-dir", default=str(REPO_ROOT / "docs"))
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--n-points", type=int, default=CrossCheckConfig.n_points)
    p.add_argument("--max-iter", type=int, default=CrossCheckConfig.max_iter)
    p.add_argument("--seed", type=int, default=CrossCheckConfig.seed)
    p.add_argument("--limit", type=int, default=None, help="at most N entries in this call")
    p.add_argument("--redo", action="store_true", help="check again entries already checked")
    p.add_argument("--include-stale", action="store_true",
                   help="also check entries evaluated under an older protocol version (skipped by default)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-tables", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    cfg = CrossCheckConfig(n_points=args.n_points, max_iter=args.max_iter, seed=args.seed)
    t0 = time.perf_counter()
    done = crosscheck_all(Path(args.results_dir), Path(args.checkpoint_dir), cfg, args.methods, args.seeds, args.limit,
                          args.redo, args.include_stale)  # fmt: skip
    print(f"cross-checked {len(done)} entries in {time.perf_counter() - t0:.0f}s: {', '.join(done) or 'none'}")
    if not args.no_tables and done:
        paths = build_tables(Path(args.results_dir), Path(args.docs_dir))
        print("wrote " + ", ".join(str(v) for v in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
