from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.evaluate import (
    EvalConfig,
    eval_subset,
    evaluate,
    input_gradient_norms,
    masking_flags,
    robustness_metrics,
)
from robust_envs.attacks import protocol_suite
from robust_envs.data import load_dataset
from tests._classifier_models import QuantizedInput, ScaledLogits, trained_digits_model

B = bool


def test_metrics_on_hand_made_table() -> None:
    # 5 points; point 4 is misclassified clean, so it counts as non-robust everywhere
    clean = np.array([1, 1, 1, 1, 0], B)
    attacks = {
        "pgd": np.array([1, 0, 1, 1, 1], B),
        "cw": np.array([1, 1, 0, 1, 1], B),
        "l2": np.array([0, 1, 1, 1, 1], B),
        "l1": np.array([1, 1, 1, 0, 1], B),
    }
    norms = {"pgd": "Linf", "cw": "Linf", "l2": "L2", "l1": "L1"}
    m = robustness_metrics(clean, attacks, norms)
    assert m.clean_acc == pytest.approx(0.8)
    assert m.attack_acc == pytest.approx({"pgd": 0.6, "cw": 0.6, "l2": 0.6, "l1": 0.6})
    assert m.robust_acc == pytest.approx(0.4)  # per-point worst over Linf: points 0 and 3
    assert m.norm_acc == pytest.approx({"Linf": 0.4, "L2": 0.6, "L1": 0.6})
    assert m.union_acc == pytest.approx(0.0)  # every point falls to some norm
    assert m.average_acc == pytest.approx((0.4 + 0.6 + 0.6) / 3)
    assert m.n_points == 5


def test_metrics_with_an_attack_on_fewer_points() -> None:
    clean = np.ones(4, B)
    attacks = {"pgd": np.array([1, 1, 0, 1], B), "aa": np.array([0, 1, 0, 0], B), "l2": np.array([1, 1, 1, 0], B)}
    evaluated = {"aa": np.array([1, 1, 0, 0], B)}  # AutoAttack only on the first two points
    m = robustness_metrics(clean, attacks, {"pgd": "Linf", "aa": "Linf", "l2": "L2"}, evaluated)
    assert m.attack_acc["aa"] == pytest.approx(0.5)
    assert m.attack_acc["pgd"] == pytest.approx(0.75)
    assert m.n_points == 2
    assert m.robust_acc == pytest.approx(0.5)  # on points 0, 1: worst of pgd and aa = [0, 1]
    assert m.union_acc == pytest.approx(0.5)


def test_metrics_errors() -> None:
    clean = np.ones(3, B)
    with pytest.raises(ValueError, match="no norm"):
        robustness_metrics(clean, {"x": np.ones(3, B)}, {})
    with pytest.raises(ValueError, match="Linf"):
        robustness_metrics(clean, {"x": np.ones(3, B)}, {"x": "L2"})
    with pytest.raises(ValueError, match="shape"):
        robustness_metrics(clean, {"x": np.ones(4, B)}, {"x": "Linf"})


def _table(**overrides: list[int]) -> dict[str, np.ndarray]:
    base = {k: [1, 1, 1, 1, 1, 1, 1, 1, 0, 0] for k in ("fgsm", "pgd20", "pgd100", "mim20", "cw30", "square")}
    base.update(overrides)
    return {k: np.array(v, B) for k, v in base.items()}


def test_masking_flags_hand_made() -> None:
    clean = np.ones(10, B)
    grads = np.ones(10)
    quiet = masking_flags(clean, _table(), grads, tol=0.05)
    assert not quiet.any and quiet.blackbox_gain == 0.0
    bb = masking_flags(clean, _table(square=[0, 0, 1, 1, 1, 1, 1, 1, 0, 0]), grads, tol=0.05)
    assert bb.blackbox_beats_whitebox and bb.blackbox_gain == pytest.approx(0.2) and bb.any
    steps = masking_flags(clean, _table(pgd20=[1, 1, 1, 1, 1, 1, 0, 0, 0, 0]), grads, tol=0.05)
    assert steps.more_steps_raise_acc and steps.steps_gain == pytest.approx(0.2)
    single = masking_flags(clean, _table(fgsm=[1, 1, 1, 1, 1, 0, 0, 0, 0, 0]), grads, tol=0.05)
    assert single.single_step_beats_iterative and not single.more_steps_raise_acc
    zero = masking_flags(clean, _table(), np.array([0.0] * 3 + [1.0] * 7), tol=0.05, grad_frac_tol=0.2)
    assert zero.near_zero_gradients and zero.zero_grad_frac == pytest.approx(0.3)
    with pytest.raises(ValueError, match="square"):
        masking_flags(clean, {k: v for k, v in _table().items() if k != "square"}, grads)


def test_eval_subset_is_seeded_and_sorted() -> None:
    test = load_dataset("digits", "test")
    a, b = eval_subset(test, 50, seed=3), eval_subset(test, 50, seed=3)
    assert torch.equal(a.indices, b.indices) and len(a.labels) == 50
    assert bool((a.indices[1:] > a.indices[:-1]).all())
    assert not torch.equal(a.indices, eval_subset(test, 50, seed=4).indices)
    assert a.images.dtype == torch.float32 and float(a.images.max()) <= 1.0
    assert len(eval_subset(test, None).labels) == len(test)
    with pytest.raises(ValueError, match="n_eval"):
        eval_subset(test, len(test) + 1)


def _quick_suite(dataset: str = "digits"):
    specs = protocol_suite(dataset, square_queries=300, autoattack=False)
    fast = {"pgd100": 40, "slide_l1": 30, "pgd_l2": 20}
    return [s if s.key not in fast else type(s)(**{**s.__dict__, "steps": fast[s.key]}) for s in specs]


def test_evaluate_end_to_end_consistency() -> None:
    model = trained_digits_model("standard")
    sub = eval_subset(load_dataset("digits", "test"), 60, seed=0)
    res = evaluate(model, sub, "digits", EvalConfig(n_eval=60), suite=_quick_suite())
    m = res.metrics
    linf = [m.attack_acc[k] for k in ("fgsm", "pgd20", "pgd100", "mim20", "cw30", "square")]
    assert m.robust_acc <= min(linf) + 1e-9
    assert m.union_acc <= min(m.norm_acc.values()) + 1e-9
    assert m.robust_acc < m.clean_acc  # a standard model is not robust at Linf 0.1
    assert not res.flags.near_zero_gradients
    assert res.n_autoattack == 0 and set(res.summary()["attacks"]) == set(res.table)


def test_saturated_softmax_is_flagged() -> None:
    """Logits x 1e4 saturate the softmax: CE gradients vanish and CE-PGD stalls; the margin-loss C&W does not."""
    masked = ScaledLogits(trained_digits_model("standard"), 1e4).eval()
    sub = eval_subset(load_dataset("digits", "test"), 60, seed=0)
    grads = input_gradient_norms(masked, sub.images, sub.labels)
    assert float((grads == 0).float().mean()) > 0.5
    res = evaluate(masked, sub, "digits", EvalConfig(n_eval=60), suite=_quick_suite())
    assert res.flags.near_zero_gradients and res.flags.any
    assert res.metrics.attack_acc["cw30"] < res.metrics.attack_acc["pgd20"] - 0.2


def test_shattered_gradients_are_flagged() -> None:
    """Input quantisation (round has zero gradient) blinds every white-box attack; Square still succeeds."""
    masked = QuantizedInput(trained_digits_model("standard"), levels=8).eval()
    sub = eval_subset(load_dataset("digits", "test"), 60, seed=0)
    res = evaluate(masked, sub, "digits", EvalConfig(n_eval=60), suite=_quick_suite())
    assert res.flags.blackbox_beats_whitebox and res.flags.blackbox_gain > 0.1
    assert res.flags.near_zero_gradients and res.flags.any
