from __future__ import annotations

import pytest
import torch

from robust_envs.attacks import (
    ATTACK_NAMES,
    ATTACK_NORMS,
    RADII,
    correct_under_attack,
    make_attack,
    margin_loss,
    perturbation_norm,
    project_l1_ball,
    protocol_suite,
    radii_for,
)
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
    keys = [s.key for s in protocol_suite("fashion_mnist")]
    assert keys == ["fgsm", "pgd20", "pgd100", "mim20", "cw30", "autoattack", "square", "pgd_l2", "slide_l1"]
    fm = radii_for("fashion_mnist")
    assert (fm.eps_linf, fm.eps_l2, fm.eps_l1) == (0.1, 1.7, 12.0)
    c10 = radii_for("cifar10")
    assert c10.eps_linf == pytest.approx(8 / 255) and c10.eps_l2 == pytest.approx(128 / 255)
    assert c10.eps_l1 == pytest.approx(2000 / 255)
    with pytest.raises(ValueError, match="valid"):
        radii_for("imagenet")
