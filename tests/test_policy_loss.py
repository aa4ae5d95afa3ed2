"""Policy-loss trainer (Kim, seed 003): Eq. 4 / Eq. 12 against hand-computed values, trainer and study smoke runs."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from agents.cli import parse_args
from agents.policy_loss import (
    Args,
    alternative_loss_eq12,
    evaluate_accuracy,
    load_checkpoint,
    policy_loss_eq4,
    train,
)
from benchmarks import policy_loss_study as study
from robust_envs.attacks.masking import gradient_masking_flags, input_gradient_norms
from robust_envs.data import load_dataset

# 3-class toy: logits are log-probabilities, so pi(x) is exactly these rows
PI = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1], [0.1, 0.7, 0.2]])
LOGITS = PI.log()
ACTIONS = torch.tensor([2, 0, 1])
REWARDS = torch.tensor([1.0, -1.25, -1.25])  # sample 0 right, samples 1 and 2 wrong (lambda = 1.25)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_eq4_policy_loss_hand_computed() -> None:
    # L = -mean r * log pi_a
    expected = -(1.0 * math.log(0.5) + (-1.25) * math.log(0.6) + (-1.25) * math.log(0.7)) / 3
    assert policy_loss_eq4(LOGITS, ACTIONS, REWARDS).item() == pytest.approx(expected, rel=1e-6)


def test_eq12_alternative_loss_hand_computed() -> None:
    # right: -r1 log pi_a; wrong: -(r2 / (C - 1)) * sum_{i != a} log pi_i, with C = 3, r2 = 1.25
    right = -math.log(0.5)
    wrong_1 = -(1.25 / 2) * (math.log(0.3) + math.log(0.1))
    wrong_2 = -(1.25 / 2) * (math.log(0.1) + math.log(0.2))
    expected = (right + wrong_1 + wrong_2) / 3
    assert alternative_loss_eq12(LOGITS, ACTIONS, REWARDS).item() == pytest.approx(expected, rel=1e-6)


def test_eq12_wrong_action_spreads_mass_over_the_other_classes() -> None:
    # Eq. 13: minimising the penalty term alone drives pi_a -> 0 and the remaining classes to a uniform split
    logits = torch.tensor([[2.0, 0.5, -1.0]], requires_grad=True)
    optimizer = torch.optim.SGD([logits], lr=1.0)
    for _ in range(300):
        optimizer.zero_grad()
        alternative_loss_eq12(logits, torch.tensor([0]), torch.tensor([-1.0])).backward()
        optimizer.step()
    pi = logits.softmax(1)[0]
    assert pi[0] < 0.02
    assert pi[1].item() == pytest.approx(pi[2].item(), abs=0.02)


def test_eq4_gradient_sign_follows_reward() -> None:
    # Eq. 5: a rewarded action's probability goes up, a penalised one's goes down
    for reward, direction in ((1.0, 1), (-1.0, -1)):
        logits = torch.zeros(1, 3, requires_grad=True)
        policy_loss_eq4(logits, torch.tensor([1]), torch.tensor([reward])).backward()
        assert direction * logits.grad[0, 1] < 0  # gradient descent moves the logit in -grad


def test_eq12_needs_two_classes() -> None:
    with pytest.raises(ValueError, match="at least 2 classes"):
        alternative_loss_eq12(torch.zeros(2, 1), torch.zeros(2, dtype=torch.int64), torch.ones(2))


SMOKE = {"dataset": "digits", "arch": "small_cnn", "batch_size": 64, "threads": 1, "progress": False,
         "evals_per_epoch": 2}  # fmt: skip


def test_trainer_smoke_switches_stage_and_saves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # TensorBoard logs go to ./runs
    ckpt = tmp_path / "model.pt"
    result = train(Args(mode="eq12_eq4", epochs=2, switch_acc=0.0, save_path=str(ckpt), **SMOKE))
    steps_per_epoch = math.ceil(len(load_dataset("digits", "train")) / 64)
    assert result.steps == 2 * steps_per_epoch
    assert result.switch_step == steps_per_epoch // 2  # the first evaluation passes a 0% threshold
    assert [h["stage"] for h in result.history][:2] == [1, 2]
    assert list((tmp_path / "runs").iterdir())  # TensorBoard run folder written
    model = load_checkpoint(ckpt)
    test = load_dataset("digits", "test")
    assert evaluate_accuracy(model, test.images, test.labels) == pytest.approx(result.test_acc)


def _linear(seed: int) -> nn.Module:
    """A linear classifier on 8x8 digits: learns in a few hundred plain-SGD steps, unlike a deep CNN."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def test_trainer_learns_from_rewards_and_ce_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    common = {**SMOKE, "epochs": 6, "lr_milestones": (), "save_path": "none", "track": False}
    ce = train(Args(mode="ce", **common), model=_linear(0))
    policy = train(Args(mode="eq12_eq4", switch_acc=0.4, **common), model=_linear(0))
    never = train(Args(mode="eq12_eq4", switch_acc=1.0, **{**common, "epochs": 1}), model=_linear(0))
    assert ce.checkpoint is None and never.switch_step is None  # a 100% threshold is never passed
    assert policy.switch_step is not None
    assert ce.test_acc > 0.7 and policy.test_acc > 0.35  # chance is 0.1; Eq. 12 learns from rewards alone


@pytest.mark.parametrize("mode", ["ce_eq4", "eq4"])
def test_trainer_ablation_modes_run(mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = train(Args(mode=mode, epochs=1, switch_acc=0.0, save_path="none", track=False, **SMOKE), model=_linear(0))
    assert 0.0 <= result.test_acc <= 1.0
    assert (result.switch_step is not None) == (mode == "ce_eq4")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"mode": "adv"}, "mode must be one of"),
        ({"lambda_2": -0.5}, r"lambda_2 must be a finite number >= 0, got -0.5"),
        ({"switch_acc": 80.0}, r"switch_acc must be in \[0, 1\], got 80.0"),
        ({"stage2_actions": "eps-greedy"}, "stage2_actions"),
        ({"epochs": 0}, "epochs must be >= 1, got 0"),
    ],
)
def test_trainer_rejects_bad_args(change: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        train(Args(**{**SMOKE, **change}))


def test_cli_parses_args_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_args(Args, ["--mode", "ce", "--lambda-1", "0.5", "--lr-milestones", "0.5", "0.9", "--track", "false"])
    assert (args.mode, args.lambda_1, args.lr_milestones, args.track) == ("ce", 0.5, (0.5, 0.9), False)
    with pytest.raises(SystemExit):
        parse_args(Args, ["--help"])
    assert "test accuracy in [0, 1] at which the second stage starts" in " ".join(capsys.readouterr().out.split())


def test_input_gradient_norms_of_a_linear_model() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3, bias=False))
    weight = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0]])
    model[1].weight.data = weight
    x = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])  # logits z = (0, 2, 0): class 1 is the unique runner-up
    y = torch.tensor([0])
    # margin = z_1 - z_0, so its input gradient is W_1 - W_0
    margin = input_gradient_norms(model, x, y, "margin")
    assert margin.item() == pytest.approx((weight[1] - weight[0]).norm().item(), rel=1e-6)
    # CE gradient = sum_k (pi_k - y_k) W_k
    pi = torch.tensor([1.0, math.exp(2.0), 1.0]) / (2.0 + math.exp(2.0))
    expected = ((pi - torch.tensor([1.0, 0.0, 0.0])) @ weight).norm().item()
    assert input_gradient_norms(model, x, y, "ce").item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="loss must be one of"):
        input_gradient_norms(model, x, y, "hinge")


def test_gradient_masking_flags() -> None:
    flags = gradient_masking_flags(pgd_acc=0.6, autoattack_acc=0.2, transfer_acc=0.58, fgsm_acc=0.7,
                                   grad_norm_median=1e-5, reference_grad_norm_median=1.0)  # fmt: skip
    assert flags.autoattack_below_pgd and not flags.transfer_below_pgd and not flags.fgsm_below_pgd
    assert flags.vanishing_ce_gradient and flags.suspected
    clean = gradient_masking_flags(0.3, 0.28, 0.5, 0.4, 0.5, 1.0)
    assert not clean.suspected and clean.vanishing_ce_gradient is False
    with pytest.raises(ValueError, match=r"pgd_acc must be in \[0, 1\], got 60"):
        gradient_masking_flags(60, 0.2, 0.5, 0.4)


def test_study_smoke_train_evaluate_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The study pipeline end to end on a handful of digits images (tiny budget)."""
    monkeypatch.chdir(tmp_path)
    budget = replace(study.Budget(), dataset="digits", arch="small_cnn", epochs=1, batch_size=64, eval_points=6,
                     aa_points=3, square_queries=10, switch_eval_points=100)  # fmt: skip
    ce, pl = study.METHODS_BY_NAME["ce"], study.METHODS_BY_NAME["pl_0.75_1.25"]
    for seed in (1, 2):
        study.train_one(ce, seed, budget, tmp_path / "ckpt")
    study.train_one(pl, 1, budget, tmp_path / "ckpt")
    path = study.evaluate_one(pl, 1, [1, 2], budget, tmp_path / "results", tmp_path / "ckpt")
    entry = json.loads(path.read_text())
    for key in ("clean_acc", "fgsm_acc", "pgd_acc", "autoattack_acc", "transfer_acc"):
        assert 0.0 <= entry[key] <= 1.0
    assert entry["n_eval"] == 6 and entry["attacks"]["autoattack"]["n_points"] == 3
    assert entry["attacks"]["transfer"]["source"] == "ce__seed2"  # crafted on another seed's CE model
    assert entry["on_autoattack_points"]["clean_acc"] >= entry["autoattack_acc"]  # AA only lowers accuracy
    assert entry["grad_norm_ce_median"] > 0 and "suspected" in entry["gradient_masking"]
    assert study.evaluate_one(pl, 1, [1, 2], budget, tmp_path / "results", tmp_path / "ckpt") == path  # resumes
    study.evaluate_one(ce, 1, [1, 2], budget, tmp_path / "results", tmp_path / "ckpt")
    report = study.render_report([("tiny", study.load_results(tmp_path / "results"))])
    assert "| CE reference | 1 |" in report and "lambda = (0.75, 1.25) | 1 |" in report
    assert "Verdict" in report
