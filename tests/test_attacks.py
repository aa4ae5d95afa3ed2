from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from benchmarks.evaluate import EvalConfig, eval_subset, evaluate
from robust_envs.attacks import (
    APGDL1,
    ATTACK_NAMES,
    ATTACK_NORMS,
    MSD,
    RADII,
    correct_under_attack,
    make_attack,
    margin_loss,
    msd_candidates,
    perturbation_norm,
    project_l1_ball,
    project_l1_box,
    protocol_suite,
    radii_for,
)
from robust_envs.data import load_dataset
from tests._classifier_models import correct_test_points, trained_digits_model

# cheaper settings than the protocol's, same code paths
FAST = {
    "fgsm": {},
    "pgd": {"steps": 10},
    "mim": {"steps": 10},
    "cw_pgd": {"steps": 10},
    "pgd_l2": {"steps": 20},
    "slide": {"steps": 30},
    "square": {"n_queries": 300},
    "autoattack": {"steps": 10, "square_queries": 100},
    "autoattack_l2": {"steps": 10, "square_queries": 100},
    "apgd_l1": {"steps": 20, "n_target_classes": 2},
}


@pytest.fixture(scope="module")
def model_and_points() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = trained_digits_model("standard")
    x, y = correct_test_points(model, 32)
    assert len(y) == 32
    return model, x, y


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_attack_lowers_accuracy_and_respects_radius(name: str, model_and_points) -> None:
    model, x, y = model_and_points
    norm = ATTACK_NORMS[name]
    eps = RADII["digits"].eps(norm)
    torch.manual_seed(0)
    attack = make_attack(name, model, eps, seed=0, **FAST[name])
    adv = attack(x, y).detach()
    assert adv.shape == x.shape
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    norms = perturbation_norm(adv, x, norm)
    assert float(norms.max()) <= eps * (1 + 1e-4) + 1e-6, f"{name}: max {norm} norm {float(norms.max())} > {eps}"
    with torch.no_grad():
        acc = float((model(adv).argmax(1) == y).float().mean())
    # all 32 points start correct; every attack must fool a good share of them
    assert acc <= 0.8, f"{name} left accuracy at {acc}"


def test_correct_under_attack_matches_manual(model_and_points) -> None:
    model, x, y = model_and_points
    torch.manual_seed(1)
    atk = make_attack("fgsm", model, 0.1)
    got = correct_under_attack(model, x, y, atk, batch_size=7)
    adv = atk(x, y)  # FGSM is deterministic
    with torch.no_grad():
        want = model(adv).argmax(1) == y
    assert torch.equal(got, want)
    assert bool(correct_under_attack(model, x, y).all())


def test_legacy_signature_still_works(model_and_points) -> None:
    model, x, y = model_and_points
    atk = make_attack("pgd", model, 0.1, steps=5, alpha=None, seed=0)
    assert atk.steps == 5 and atk.alpha == pytest.approx(2.5 * 0.1 / 5)


def test_make_attack_errors() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    with pytest.raises(ValueError, match="valid"):
        make_attack("nope", model, 0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_attack("pgd", model, 1.5)
    with pytest.raises(ValueError, match="> 0"):
        make_attack("slide", model, 0.0)


def _reference_l1_projection(v: torch.Tensor, eps: float) -> torch.Tensor:
    """Bisection on theta: sum(max(|v| - theta, 0)) = eps."""
    lo, hi = 0.0, float(v.abs().max())
    for _ in range(200):
        mid = (lo + hi) / 2
        if float((v.abs() - mid).clamp_min(0).sum()) > eps:
            lo = mid
        else:
            hi = mid
    return v.sign() * (v.abs() - hi).clamp_min(0)


def test_project_l1_ball_matches_bisection_and_leaves_inside_rows() -> None:
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(6, 1, 5, 5, generator=gen)
    delta[2] *= 0.01  # inside the ball: must not move (foolbox 3.3.4 would push it outward)
    eps = 3.0
    out = project_l1_ball(delta, eps)
    assert torch.equal(out[2], delta[2])
    for i in (0, 1, 3, 4, 5):
        assert float(out[i].abs().sum()) == pytest.approx(eps, rel=1e-4)
        torch.testing.assert_close(out[i].flatten(), _reference_l1_projection(delta[i].flatten(), eps), atol=1e-5,
                                   rtol=1e-4)  # fmt: skip
    with pytest.raises(ValueError):
        project_l1_ball(delta, 0.0)


def test_margin_loss_hand_values() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.5], [0.0, 2.0, 5.0]])
    labels = torch.tensor([0, 1])
    torch.testing.assert_close(margin_loss(logits, labels), torch.tensor([1.0 - 3.0, 5.0 - 2.0]))


def test_protocol_suite_and_radii() -> None:
    v1 = ["fgsm", "pgd20", "pgd100", "mim20", "cw30", "autoattack", "square", "pgd_l2", "slide_l1"]
    assert [s.key for s in protocol_suite("fashion_mnist", version=1)] == v1
    v2 = protocol_suite("fashion_mnist")
    assert [s.key for s in v2] == [*v1, "autoattack_l2", "apgd_l1"]
    # Linf is unchanged between versions; the new attacks run at the protocol's L2 / L1 radii on the AutoAttack points
    assert [s for s in v2 if s.norm == "Linf"] == [
        s for s in protocol_suite("fashion_mnist", version=1) if s.norm == "Linf"
    ]
    by = {s.key: s for s in v2}
    assert (by["autoattack_l2"].norm, by["autoattack_l2"].eps, by["autoattack_l2"].steps) == ("L2", 1.7, 100)
    assert (by["apgd_l1"].norm, by["apgd_l1"].eps) == ("L1", 12.0)
    assert {k for k, s in by.items() if s.autoattack_points} == {"autoattack", "autoattack_l2", "apgd_l1"}
    with pytest.raises(ValueError, match="valid"):
        protocol_suite("fashion_mnist", version=7)
    fm = radii_for("fashion_mnist")
    assert (fm.eps_linf, fm.eps_l2, fm.eps_l1) == (0.1, 1.7, 12.0)
    c10 = radii_for("cifar10")
    assert c10.eps_linf == pytest.approx(8 / 255) and c10.eps_l2 == pytest.approx(128 / 255)
    assert c10.eps_l1 == pytest.approx(2000 / 255)
    with pytest.raises(ValueError, match="valid"):
        radii_for("imagenet")


def test_msd_candidates_take_one_step_per_norm_inside_each_ball() -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 1, 8, 8) * 0.8 + 0.1  # away from the box so the steps are not clipped
    grad = torch.randn(4, 1, 8, 8)
    eps = {"Linf": 0.05, "L2": 0.5, "L1": 2.0}
    alpha = {"Linf": 0.01, "L2": 0.1, "L1": 0.5}
    c = msd_candidates(x, torch.zeros_like(x), grad, eps, alpha, q=0.9)
    assert torch.allclose(c["Linf"], 0.01 * grad.sign())
    assert torch.allclose(c["L2"], 0.1 * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1), atol=1e-6)
    l1 = c["L1"].flatten(1)
    assert torch.allclose(l1.abs().sum(1), torch.full((4,), 0.5), atol=1e-5)
    assert int((l1 != 0).sum(1).max()) <= 8  # the top 10 % of 64 coordinates (ties aside)
    assert bool(((l1 == 0) | (l1.sign() == grad.flatten(1).sign())).all())
    # from a perturbation outside every ball, each candidate lands in its own ball
    far = torch.full_like(x, 0.09)
    c = msd_candidates(x, far, grad, eps, alpha, q=0.9)
    for norm, e in eps.items():
        assert float(perturbation_norm(x + c[norm], x, norm).max()) <= e * (1 + 1e-5)


def test_msd_attack_in_union_of_balls_and_stronger_than_one_norm(model_and_points) -> None:
    model, x, y = model_and_points
    r = RADII["digits"]
    kw = {"eps_linf": r.eps_linf, "eps_l2": r.eps_l2, "eps_l1": r.eps_l1, "alpha_linf": r.eps_linf / 4,
          "alpha_l2": r.eps_l2 / 4, "alpha_l1": r.eps_l1 / 8, "steps": 10}  # fmt: skip
    atk = MSD(model, **kw)
    adv = atk(x, y)
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    inside = torch.zeros(len(y), dtype=torch.bool)
    for norm in ("Linf", "L2", "L1"):
        inside |= perturbation_norm(adv, x, norm) <= r.eps(norm) * (1 + 1e-4) + 1e-6
    assert bool(inside.all())
    assert sum(atk.last_choices.values()) == 10 * len(y) and sum(v > 0 for v in atk.last_choices.values()) >= 2
    ce = torch.nn.functional.cross_entropy
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ce(model(xg), y, reduction="sum"), xg)
    with torch.no_grad():
        acc_msd = float((model(adv).argmax(1) == y).float().mean())
        loss_msd = ce(model(adv), y, reduction="none")
        # the kept iterate is at least as bad for the model as the first Linf candidate (best over iterations
        # and norms), and as the clean image
        first_linf = (x + kw["alpha_linf"] * g.sign()).clamp(0, 1)
        assert bool((loss_msd >= ce(model(first_linf), y, reduction="none") - 1e-5).all())
        assert bool((loss_msd >= ce(model(x), y, reduction="none") - 1e-5).all())
    assert acc_msd <= 0.5
    with pytest.raises(ValueError, match="eps_l2 must be > 0, got -1"):
        MSD(model, eps_l2=-1.0)
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        MSD(model, steps=0)


def _bisection_l1_box(x: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    """Reference: bisection on the multiplier of clip(soft(v, lam), -x, 1 - x) (float64, 200 halvings)."""
    x, v = x.double().flatten(), v.double().flatten()
    at = lambda lam: torch.maximum(torch.minimum(v.sign() * (v.abs() - lam).clamp_min(0), 1 - x), -x)  # noqa: E731
    if float(at(0.0).abs().sum()) <= eps:
        return at(0.0)
    lo, hi = 0.0, float(v.abs().max())
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if float(at(mid).abs().sum()) <= eps else (mid, hi)
    return at(hi)


def test_project_l1_box_is_the_projection_onto_ball_and_box() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 6, 6, generator=gen)
    x[x < 0.4] = 0.0  # many pixels on the box boundary, as in Fashion-MNIST
    v = torch.randn(8, 1, 6, 6, generator=gen) * torch.tensor([0.01, 0.1, 0.5, 1, 2, 3, 0.05, 1]).view(-1, 1, 1, 1)
    for eps in (0.5, 3.0, 20.0):
        out = project_l1_box(x, v, eps)
        assert float(out.flatten(1).abs().sum(1).max()) <= eps * (1 + 1e-6)
        assert float((x + out).min()) >= 0.0 and float((x + out).max()) <= 1.0
        for i in range(8):
            torch.testing.assert_close(
                out[i].flatten().double(), _bisection_l1_box(x[i], v[i], eps), atol=1e-5, rtol=1e-4
            )
    with pytest.raises(ValueError, match="> 0"):
        project_l1_box(x, v, 0.0)


@pytest.mark.parametrize("loss", ["ce", "dlr-targeted"])
def test_apgd_l1_respects_its_ball_and_the_box_and_is_as_strong_as_slide(loss: str, model_and_points) -> None:
    model, x, y = model_and_points
    eps = RADII["digits"].eps_l1
    adv = APGDL1(model, eps=eps, steps=20, loss=loss, n_target_classes=2, seed=0)(x, y)
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert float(perturbation_norm(adv, x, "L1").max()) <= eps * (1 + 1e-5)
    torch.manual_seed(0)
    adv_slide = make_attack("slide", model, eps, steps=20, alpha=eps / 8)(x, y)
    with torch.no_grad():
        acc = float((model(adv).argmax(1) == y).float().mean())
        acc_slide = float((model(adv_slide).argmax(1) == y).float().mean())
    # on these 32 points SLIDE leaves about 0.5; L1-APGD must be in the same range (measured 0.4-0.6)
    assert acc <= acc_slide + 0.2, f"L1-APGD ({loss}) left {acc}, SLIDE {acc_slide}"
    with pytest.raises(ValueError, match="loss"):
        APGDL1(model, eps=1.0, loss="hinge")


@pytest.mark.slow
def test_l2_worst_case_over_the_ensemble_never_exceeds_pgd_l2() -> None:
    """Version 2's L2 column is the per-point worst case over PGD-50 and AutoAttack-L2: never above PGD-L2 alone."""
    model = trained_digits_model("standard")
    sub = eval_subset(load_dataset("digits", "test"), 40, seed=0)
    suite = [s for s in protocol_suite("digits", square_queries=50) if s.norm == "L2" or s.key == "fgsm"]
    suite = [dataclasses.replace(s, steps=5, options={"square_queries": 50}) if s.key == "autoattack_l2"
             else dataclasses.replace(s, steps=20) if s.key == "pgd_l2" else s for s in suite]  # fmt: skip
    assert {s.key for s in suite} == {"fgsm", "pgd_l2", "autoattack_l2"}
    res = evaluate(model, sub, "digits", EvalConfig(n_eval=40, n_autoattack=30), suite=suite)
    common = np.arange(40) < 30
    pgd_only = res.table["pgd_l2"] & res.clean
    assert res.metrics.norm_acc["L2"] <= float(pgd_only[common].mean())
    l2 = res.table["pgd_l2"] & res.table["autoattack_l2"] & res.clean
    assert res.metrics.norm_acc["L2"] == pytest.approx(float(l2[common].mean()))
    assert not res.table["autoattack_l2"][30:].any() or res.evaluated["autoattack_l2"][30:].sum() == 0
