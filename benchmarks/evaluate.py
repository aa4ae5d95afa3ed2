"""The robustness evaluation protocol: attacks, per-point correctness, metrics and gradient-masking flags.

Protocol (issue 4; seeds 001 and 002):

1. A fixed, seeded evaluation subset of the test split (1,000 points by default, all on request).
2. Clean accuracy, then every attack of :func:`robust_envs.attacks.protocol_suite` on every point:
   Linf FGSM, PGD-20, PGD-100, MIM-20, C&W (PGD-30 on the margin loss), AutoAttack standard (headline),
   Square (black-box); L2 PGD-50; L1 SLIDE; from protocol version 2 (issue 14) also AutoAttack-L2 (APGD-CE,
   APGD-T, FAB-T, Square in L2) and L1-APGD (CE and T), on the AutoAttack points. A point counts as robust to an
   attack only if it is also classified correctly when clean.
3. Metrics (:func:`robustness_metrics`): accuracy per attack; ``A_rob`` = per-point worst case over all
   Linf attacks (ADT's column); per-norm accuracy = per-point worst case over that norm's attacks;
   union = per-point worst case over all norms, average = mean of the per-norm accuracies (MNG-AC's
   ``Acc_adv^union`` and ``Acc_adv^avg``).
4. Gradient-masking flags (:class:`MaskingFlags`, after Athalye et al. 2018 and Carlini et al. 2019's
   checklist): a black-box attack beating the white-box ones, accuracy rising with more attack steps,
   a single-step attack beating the iterative ones, near-zero input gradients.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robust_envs.attacks import PROTOCOL_VERSION, AttackSpec, correct_under_attack, protocol_suite
from robust_envs.data import ImageSplit

__all__ = [
    "EvalConfig",
    "EvalResult",
    "EvalSubset",
    "MaskingFlags",
    "RobustnessMetrics",
    "decode_bits",
    "encode_bits",
    "eval_subset",
    "evaluate",
    "input_gradient_norms",
    "masking_flags",
    "robustness_metrics",
]

logger = logging.getLogger(__name__)

#: Attacks :func:`masking_flags` needs; a suite without them gets no flags.
MASKING_KEYS = frozenset({"fgsm", "pgd20", "pgd100", "square"})
#: White-box Linf attacks of the PGD family that the black-box and step checks compare against.
WHITE_BOX_REFERENCE = ("fgsm", "pgd20", "pgd100", "mim20", "cw30")


@dataclass(frozen=True)
class EvalConfig:
    """Settings of one evaluation.

    Attributes:
        n_eval: points of the seeded test subset (None: the full test split), >= 1.
        subset_seed: seed of the subset draw (fixed across methods so all entries see the same points).
        n_autoattack: AutoAttack runs on the first ``n_autoattack`` points of the subset (None: all);
            A_rob, union and average are then computed on those points only.
        square_queries: query budget of the Square black-box check.
        batch_size: images per attack call.
        attack_seed: seed for attack random starts.
        masking_tol: accuracy gap (fraction of points) beyond which a masking flag is raised.
        grad_tol: a point's input gradient counts as zero when its L1 norm is below this.
        grad_frac_tol: the near-zero-gradient flag is raised when more than this fraction of clean-correct
            points have zero gradient.
        autoattack: include AutoAttack (False only for quick tests).
        protocol_version: version of :func:`robust_envs.attacks.protocol_suite` (1: L2 PGD-50 and L1 SLIDE only;
            2: plus AutoAttack-L2 and L1-APGD). Part of the entry fingerprint.
    """

    n_eval: int | None = 1000
    subset_seed: int = 0
    n_autoattack: int | None = None
    square_queries: int = 5000
    batch_size: int = 500
    attack_seed: int = 0
    masking_tol: float = 0.02
    grad_tol: float = 1e-10
    grad_frac_tol: float = 0.05
    autoattack: bool = True
    protocol_version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        if self.n_eval is not None and self.n_eval < 1:
            raise ValueError(f"n_eval must be >= 1 or None (full test set), got {self.n_eval}")
        if self.n_autoattack is not None and self.n_autoattack < 1:
            raise ValueError(f"n_autoattack must be >= 1 or None, got {self.n_autoattack}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.masking_tol < 1.0:
            raise ValueError(f"masking_tol must be in [0, 1), got {self.masking_tol}")


@dataclass(frozen=True)
class EvalSubset:
    """A fixed evaluation subset.

    Attributes:
        images: ``(N, C, H, W)`` float32 in [0, 1].
        labels: ``(N,)`` int64.
        indices: ``(N,)`` int64 positions in the test split.
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor


def encode_bits(mask: np.ndarray) -> str:
    """A ``(N,)`` bool array as hex of ``np.packbits`` (big bit order): 250 characters for 1,000 points."""
    return np.packbits(np.asarray(mask, dtype=bool)).tobytes().hex()


def decode_bits(text: str, n: int) -> np.ndarray:
    """Inverse of :func:`encode_bits`: the ``(n,)`` bool array."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[:n].astype(bool)


def eval_subset(split: ImageSplit, n: int | None = 1000, seed: int = 0) -> EvalSubset:
    """The first ``n`` points of a seeded permutation of ``split`` (all points, in order, when ``n`` is None).

    Raises:
        ValueError: if ``n`` is not in [1, len(split)].
    """
    total = len(split)
    if n is None:
        idx = torch.arange(total)
    else:
        if not 1 <= n <= total:
            raise ValueError(f"n_eval must be in [1, {total}] for this split, got {n}")
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(total, generator=gen)[:n].sort().values
    return EvalSubset(images=split.images[idx].float() / 255.0, labels=split.labels[idx], indices=idx)


@dataclass(frozen=True)
class RobustnessMetrics:
    """Accuracies in [0, 1] over the evaluated points.

    Attributes:
        clean_acc: clean accuracy (all points).
        attack_acc: accuracy under each attack (key -> accuracy), over the points that attack ran on.
        norm_acc: per-norm accuracy (per-point worst case over that norm's attacks).
        robust_acc: ``A_rob``, per-point worst case over every Linf attack.
        union_acc: per-point worst case over all norms.
        average_acc: mean of ``norm_acc`` over the norms.
        n_points: points the combined metrics (robust, union, average) are computed on.
    """

    clean_acc: float
    attack_acc: dict[str, float]
    norm_acc: dict[str, float]
    robust_acc: float
    union_acc: float
    average_acc: float
    n_points: int


def robustness_metrics(
    clean: np.ndarray | torch.Tensor,
    attacks: Mapping[str, np.ndarray | torch.Tensor],
    norms: Mapping[str, str],
    evaluated: Mapping[str, np.ndarray | torch.Tensor] | None = None,
) -> RobustnessMetrics:
    """Metrics from a per-point prediction table.

    Args:
        clean: ``(N,)`` bool, clean correctness.
        attacks: key -> ``(N,)`` bool, correctness under that attack (ANDed with ``clean`` here).
        norms: key -> ``"Linf" | "L2" | "L1"``, the threat model of each attack.
        evaluated: key -> ``(N,)`` bool, the points an attack ran on (default: all). Combined metrics use
            the points every attack ran on.

    Raises:
        ValueError: on mismatched shapes, an attack without a norm, no Linf attack, or no point that
            every attack ran on.
    """
    c = np.asarray(clean, dtype=bool)
    n = c.shape[0]
    table = {k: np.asarray(v, dtype=bool) & c for k, v in attacks.items()}
    ran = {k: (np.asarray(evaluated[k], dtype=bool) if evaluated and k in evaluated else np.ones(n, bool))
           for k in table}  # fmt: skip
    for k, v in table.items():
        if v.shape != (n,) or ran[k].shape != (n,):
            raise ValueError(f"attack {k!r}: shape {v.shape} / evaluated {ran[k].shape}, expected ({n},)")
        if k not in norms:
            raise ValueError(f"attack {k!r} has no norm; give one of 'Linf', 'L2', 'L1' in norms")
    if not any(norms[k] == "Linf" for k in table):
        raise ValueError("robustness_metrics needs at least one Linf attack (for A_rob)")
    common = np.logical_and.reduce([ran[k] for k in table]) if table else np.ones(n, bool)
    if not common.any():
        raise ValueError("no point was evaluated by every attack")
    attack_acc = {k: float(v[ran[k]].mean()) for k, v in table.items()}
    norm_list = [m for m in ("Linf", "L2", "L1") if any(norms[k] == m for k in table)]
    per_norm = {m: np.logical_and.reduce([table[k] for k in table if norms[k] == m]) for m in norm_list}
    union = np.logical_and.reduce(list(per_norm.values()))
    norm_acc = {m: float(per_norm[m][common].mean()) for m in norm_list}
    return RobustnessMetrics(
        clean_acc=float(c.mean()),
        attack_acc=attack_acc,
        norm_acc=norm_acc,
        robust_acc=norm_acc["Linf"],
        union_acc=float(union[common].mean()),
        average_acc=float(np.mean(list(norm_acc.values()))),
        n_points=int(common.sum()),
    )


@dataclass(frozen=True)
class MaskingFlags:
    """Gradient-masking symptoms (Athalye et al. 2018, Sec. 3; Carlini et al. 2019, Sec. 5.2 checklist).

    Attributes:
        blackbox_gain: fraction of points the black-box attack (Square) fools that no white-box PGD-family
            Linf attack fools.
        blackbox_beats_whitebox: ``blackbox_gain > tol``.
        steps_gain: PGD-100 accuracy minus PGD-20 accuracy (positive: more steps, higher accuracy).
        more_steps_raise_acc: ``steps_gain > tol``.
        single_step_gain: iterative PGD-20 accuracy minus FGSM accuracy.
        single_step_beats_iterative: ``single_step_gain > tol``.
        zero_grad_frac: fraction of clean-correct points whose input gradient of the cross-entropy has L1
            norm below ``grad_tol``.
        near_zero_gradients: ``zero_grad_frac > grad_frac_tol``.
        tol: the accuracy tolerance used.
        any: any flag raised.
    """

    blackbox_gain: float
    blackbox_beats_whitebox: bool
    steps_gain: float
    more_steps_raise_acc: bool
    single_step_gain: float
    single_step_beats_iterative: bool
    zero_grad_frac: float
    near_zero_gradients: bool
    tol: float
    any: bool = field(init=False)

    def __post_init__(self) -> None:
        raised = (self.blackbox_beats_whitebox, self.more_steps_raise_acc, self.single_step_beats_iterative,
                  self.near_zero_gradients)  # fmt: skip
        object.__setattr__(self, "any", bool(any(raised)))


def input_gradient_norms(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500
) -> torch.Tensor:
    """Per-point L1 norm of the input gradient of the cross-entropy, ``||d CE(f(x), y) / dx||_1``.

    Shape:
        - images: ``(N, C, H, W)`` float in [0, 1]; labels ``(N,)`` int64; output ``(N,)`` float.
    """
    model.eval()
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].clone().requires_grad_(True)
        loss = F.cross_entropy(model(x), labels[start : start + batch_size], reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
        out.append(grad.reshape(grad.shape[0], -1).abs().sum(1).detach())
    return torch.cat(out) if out else torch.zeros(0)


def masking_flags(
    clean: np.ndarray,
    table: Mapping[str, np.ndarray],
    grad_norms: np.ndarray,
    tol: float = 0.02,
    grad_tol: float = 1e-10,
    grad_frac_tol: float = 0.05,
    blackbox_key: str = "square",
) -> MaskingFlags:
    """Compute :class:`MaskingFlags` from per-point correctness (``(N,)`` bool arrays, clean-ANDed or not).

    Needs keys ``fgsm``, ``pgd20``, ``pgd100`` and ``blackbox_key`` in ``table``; ``grad_norms`` is
    ``(N,)`` from :func:`input_gradient_norms`.

    Raises:
        ValueError: when a needed key is missing.
    """
    need = {"fgsm", "pgd20", "pgd100", blackbox_key}
    missing = sorted(need - set(table))
    if missing:
        raise ValueError(f"masking_flags needs attacks {missing}; got {sorted(table)}")
    c = np.asarray(clean, dtype=bool)
    t = {k: np.asarray(v, dtype=bool) & c for k, v in table.items()}
    white = np.logical_and.reduce([t[k] for k in WHITE_BOX_REFERENCE if k in t])
    blackbox_gain = float((white & ~t[blackbox_key]).mean())
    steps_gain = float(t["pgd100"].mean() - t["pgd20"].mean())
    single_gain = float(t["pgd20"].mean() - t["fgsm"].mean())
    g = np.asarray(grad_norms)[c]
    zero_frac = float((g < grad_tol).mean()) if g.size else 0.0
    return MaskingFlags(
        blackbox_gain=blackbox_gain, blackbox_beats_whitebox=blackbox_gain > tol,
        steps_gain=steps_gain, more_steps_raise_acc=steps_gain > tol,
        single_step_gain=single_gain, single_step_beats_iterative=single_gain > tol,
        zero_grad_frac=zero_frac, near_zero_gradients=zero_frac > grad_frac_tol, tol=tol,
    )  # fmt: skip


@dataclass(frozen=True)
class EvalResult:
    """Outcome of :func:`evaluate`.

    Attributes:
        metrics: :class:`RobustnessMetrics`.
        flags: :class:`MaskingFlags` (None when the suite lacks one of :data:`MASKING_KEYS`).
        clean: ``(N,)`` bool clean correctness.
        table: attack key -> ``(N,)`` bool correctness under attack (not yet ANDed with clean).
        evaluated: attack key -> ``(N,)`` bool, points the attack ran on.
        attacks: attack key -> description (threat model, radius, settings, source).
        attack_time_s: attack key -> wall-clock seconds.
        grad_norm_median: median input-gradient L1 norm over clean-correct points.
        n_eval: evaluated points; n_autoattack: points AutoAttack ran on.
    """

    metrics: RobustnessMetrics
    flags: MaskingFlags | None
    clean: np.ndarray
    table: dict[str, np.ndarray]
    evaluated: dict[str, np.ndarray]
    attacks: dict[str, dict[str, Any]]
    attack_time_s: dict[str, float]
    grad_norm_median: float
    n_eval: int
    n_autoattack: int

    def summary(self) -> dict[str, Any]:
        """JSON-ready metrics, flags and per-attack settings."""
        m = self.metrics
        return {
            "clean_acc": m.clean_acc,
            "attack_acc": m.attack_acc,
            "robust_acc": m.robust_acc,
            "autoattack_acc": m.attack_acc.get("autoattack"),
            "norm_acc": m.norm_acc,
            "union_acc": m.union_acc,
            "average_acc": m.average_acc,
            "n_eval": self.n_eval,
            "n_autoattack": self.n_autoattack,
            "n_combined": m.n_points,
            "attacks": self.attacks,
            "attack_time_s": self.attack_time_s,
            "masking": None if self.flags is None else asdict(self.flags),
            "grad_norm_median": self.grad_norm_median,
            # per-point outcomes (subset order), so that a later protocol change or a cross-check can be paired
            "per_point": {
                "encoding": "hex of numpy.packbits(bool array), big bit order; benchmarks.evaluate.decode_bits",
                "n": self.n_eval,
                "clean": encode_bits(self.clean),
                "correct": {k: encode_bits(v) for k, v in self.table.items()},
                "evaluated": {k: int(v.sum()) for k, v in self.evaluated.items()},
            },
        }


def evaluate(
    model: nn.Module,
    subset: EvalSubset,
    dataset: str,
    config: EvalConfig | None = None,
    suite: Sequence[AttackSpec] | None = None,
    n_classes: int = 10,
    on_attack: Callable[[str], None] | None = None,
) -> EvalResult:
    """Run the protocol on ``model`` over ``subset``.

    Args:
        model: classifier on ``(N, C, H, W)`` in [0, 1]; evaluated on CPU or its own device.
        subset: from :func:`eval_subset`.
        dataset: data set name (selects the radii of :func:`protocol_suite`).
        config: :class:`EvalConfig` (default settings when None).
        suite: attacks to run (default ``protocol_suite(dataset, config.square_queries, config.autoattack)``);
            the masking flags need ``fgsm``, ``pgd20``, ``pgd100`` and ``square`` (else ``flags`` is None).
        n_classes: number of classes (AutoAttack's targets).
        on_attack: called with each attack key before it runs (progress reporting).

    Returns:
        :class:`EvalResult`.
    """
    cfg = config or EvalConfig()
    specs = (
        list(suite)
        if suite is not None
        else protocol_suite(dataset, cfg.square_queries, cfg.autoattack, version=cfg.protocol_version)
    )
    device = next(model.parameters()).device
    model.eval()
    x, y = subset.images.to(device), subset.labels.to(device)
    n = int(y.shape[0])
    clean = correct_under_attack(model, x, y, batch_size=cfg.batch_size).cpu().numpy()
    table: dict[str, np.ndarray] = {}
    evaluated: dict[str, np.ndarray] = {}
    times: dict[str, float] = {}
    has_aa = any(s.autoattack_points for s in specs)
    n_aa = 0 if not has_aa else (n if cfg.n_autoattack is None else min(cfg.n_autoattack, n))
    for spec in specs:
        if on_attack is not None:
            on_attack(spec.key)
        torch.manual_seed(cfg.attack_seed)
        attack = spec.build(model, seed=cfg.attack_seed, n_classes=n_classes)
        limit = n_aa if spec.autoattack_points else n
        t0 = time.perf_counter()
        # attack only clean-correct points (the others count as non-robust anyway); saves time
        todo = np.flatnonzero(clean[:limit])
        correct = np.zeros(n, dtype=bool)
        if todo.size:
            idx = torch.as_tensor(todo, device=device)
            correct[todo] = correct_under_attack(model, x[idx], y[idx], attack, cfg.batch_size).cpu().numpy()
        times[spec.key] = time.perf_counter() - t0
        ran = np.zeros(n, dtype=bool)
        ran[:limit] = True
        table[spec.key], evaluated[spec.key] = correct, ran
        logger.info("%s: acc %.4f (%.1fs)", spec.key, correct[:limit].mean(), times[spec.key])
    metrics = robustness_metrics(clean, table, {s.key: s.norm for s in specs}, evaluated)
    grads = input_gradient_norms(model, x, y, cfg.batch_size).cpu().numpy()
    flags = (
        masking_flags(clean, table, grads, cfg.masking_tol, cfg.grad_tol, cfg.grad_frac_tol)
        if MASKING_KEYS <= set(table)
        else None
    )
    return EvalResult(
        metrics=metrics, flags=flags, clean=clean, table=table, evaluated=evaluated,
        attacks={s.key: s.describe() for s in specs}, attack_time_s=times,
        grad_norm_median=float(np.median(grads[clean])) if clean.any() else 0.0, n_eval=n, n_autoattack=n_aa,
    )  # fmt: skip
