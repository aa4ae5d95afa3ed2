"""ADT trainers (seed 001): math against hand-computed values, training smoke tests, eps-ball, report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import report_adt
from benchmarks.trainers import TRAINERS, PGDATTrainer
from benchmarks.trainers.adt import (
    ADTEXPAMTrainer,
    ADTEXPConfig,
    ADTEXPTrainer,
    ADTIMPAMConfig,
    ADTIMPAMTrainer,
    BatchCost,
    fit_tanh_gaussian,
    implicit_entropy_lower_bound,
    log_one_minus_tanh_sq,
    tanh_gaussian_entropy,
    tanh_gaussian_log_prob,
    tanh_gaussian_neg_log_prob,
)
from robust_envs.classifiers import make_classifier
from robust_envs.data import load_dataset

HALF_LOG_2PI = 0.9189385332046727  # log(2 pi) / 2


def test_tanh_gaussian_log_density_hand_values() -> None:
    # r = 0, mu = 0, std = 1, eps = 1: u = 0, tanh'(0) = 1, so -log p = log(2 pi) / 2.
    one = torch.ones(1, 1)
    nlp = tanh_gaussian_neg_log_prob(torch.zeros(1, 1), torch.zeros(1, 1), one, 1.0)
    assert nlp.item() == pytest.approx(HALF_LOG_2PI, abs=1e-6)
    # r = 1, mu = 0.5, std = 2, eps = 0.1: u = 2.5, 1 - tanh(2.5)^2 = 0.026592226683...
    # -log p = 1/2 + log(2 pi)/2 + log 2 + log 0.1 + log(0.0265922267) = -3.8176357...
    expected = 0.5 + HALF_LOG_2PI + math.log(2.0) + math.log(0.1) + math.log(1.0 - math.tanh(2.5) ** 2)
    assert expected == pytest.approx(-3.8176357, abs=1e-6)
    nlp = tanh_gaussian_neg_log_prob(torch.ones(1, 1), torch.full((1, 1), 0.5), torch.full((1, 1), 2.0), 0.1)
    assert nlp.item() == pytest.approx(expected, abs=1e-5)
    # per-example log density sums the two dimensions
    noise = torch.tensor([[0.0, 1.0]])
    lp = tanh_gaussian_log_prob(noise, torch.tensor([[0.0, 0.5]]), torch.tensor([[1.0, 2.0]]), 0.1)
    assert lp.shape == (1,)
    assert lp.item() == pytest.approx(-(HALF_LOG_2PI + math.log(0.1)) - expected, abs=1e-5)


def test_tanh_gaussian_matches_torch_distributions_and_is_stable() -> None:
    gen = torch.Generator().manual_seed(0)
    mu, std, noise = (
        torch.randn(4, 6, generator=gen),
        torch.rand(4, 6, generator=gen) + 0.1,
        torch.randn(4, 6, generator=gen),
    )
    eps = 0.3
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mu, std),
        [torch.distributions.TanhTransform(), torch.distributions.AffineTransform(0.0, eps)],
    )
    delta = eps * torch.tanh(mu + std * noise)
    ref = dist.log_prob(delta.double().float()).sum(1)
    assert torch.allclose(tanh_gaussian_log_prob(noise, mu, std, eps), ref, atol=1e-3)
    assert torch.isfinite(log_one_minus_tanh_sq(torch.tensor([60.0, -60.0]))).all()
    assert log_one_minus_tanh_sq(torch.tensor(30.0)).item() == pytest.approx(2 * (math.log(2) - 30), abs=1e-6)
    with pytest.raises(ValueError, match="eps"):
        tanh_gaussian_neg_log_prob(noise, mu, std, 0.0)


def test_tanh_gaussian_entropy_against_quadrature() -> None:
    # H(tanh(u)), u ~ N(0, 1), eps = 1: H(u) + E[log(1 - tanh(u)^2)], the expectation by quadrature.
    u = np.linspace(-10, 10, 200_001)
    pdf = np.exp(-(u**2) / 2) / math.sqrt(2 * math.pi)
    expected = 0.5 + HALF_LOG_2PI + float(np.sum(pdf * np.log1p(-(np.tanh(u) ** 2))) * (u[1] - u[0]))
    torch.manual_seed(0)
    noise = torch.randn(400_000)
    est = tanh_gaussian_entropy(noise, torch.zeros(()), torch.ones(()), 1.0).item()
    assert est == pytest.approx(expected, abs=0.01)


def test_implicit_entropy_lower_bound_hand_values() -> None:
    # z = 0, N(0, 1): log q = -log(2 pi)/2; bound = log 2 - 0.9189385 = -0.2257913
    z = torch.zeros(1, 1)
    assert implicit_entropy_lower_bound(z, z, torch.ones(1, 1)).item() == pytest.approx(-0.2257913, abs=1e-6)
    # z = 0.5, N(0, 0.25): log q = -0.5 - log 0.5 - 0.9189385 = -0.7257913; bound = -0.0326442
    b = implicit_entropy_lower_bound(torch.full((1, 1), 0.5), torch.zeros(1, 1), torch.full((1, 1), 0.5))
    assert b.item() == pytest.approx(-0.0326442, abs=1e-6)
    # the mean over a batch of the two
    both = implicit_entropy_lower_bound(torch.tensor([[0.0], [0.5]]), torch.zeros(2, 1), torch.tensor([[1.0], [0.5]]))
    assert both.item() == pytest.approx((-0.2257913 - 0.0326442) / 2, abs=1e-6)


def test_configs_validate_and_follow_the_reference() -> None:
    assert {"adt_exp", "adt_expam", "adt_impam"} <= set(TRAINERS)
    with pytest.raises(ValueError, match="mc_samples"):
        ADTEXPConfig(mc_samples=0)
    with pytest.raises(ValueError, match="eps_linf"):
        ADTEXPConfig(eps_linf=0.0)
    with pytest.raises(ValueError, match="entropy_lambda"):
        ADTIMPAMConfig(entropy_lambda=-1.0)
    with pytest.raises(ValueError, match="z_dim"):
        ADTIMPAMConfig(z_dim=0)
    c10 = ADTEXPTrainer.default_config("cifar10")
    assert isinstance(c10, ADTEXPConfig) and c10.architecture == "wrn28_10" and c10.eps_linf == pytest.approx(8 / 255)
    assert (c10.inner_steps, c10.mc_samples, c10.inner_lr, c10.entropy_lambda, c10.batch_size, c10.epochs) == (
        7,
        5,
        0.3,
        0.01,
        64,
        76,
    )
    assert ADTIMPAMTrainer.default_config("cifar10").entropy_lambda == 1.0
    fm = ADTEXPTrainer.default_config("fashion_mnist")
    assert fm.epochs == 3 and fm.eps_linf == 0.1 and fm.architecture == "lenet5" and fm.max_train_samples is None


def test_cost_per_batch() -> None:
    fm = ADTEXPTrainer.default_config("fashion_mnist")
    assert ADTEXPTrainer.cost_per_batch(fm) == BatchCost(8, 8)
    assert ADTEXPTrainer.cost_per_batch(ADTEXPTrainer.default_config("cifar10")) == BatchCost(36, 36)
    assert ADTEXPAMTrainer.cost_per_batch(ADTEXPAMTrainer.default_config("fashion_mnist")) == BatchCost(3, 3, 1, 1)
    assert report_adt.batch_cost("pgd_at", PGDATTrainer.default_config("fashion_mnist")) == BatchCost(8, 8)


@pytest.mark.parametrize("method", ["adt_exp", "adt_expam", "adt_impam"])
def test_trainer_lowers_training_loss(method: str) -> None:
    torch.set_num_threads(1)
    data = load_dataset("digits", "train")
    trainer = TRAINERS[method](TRAINERS[method].default_config("digits", epochs=4, max_train_samples=384))
    losses: list[float] = []
    model = trainer.train(data, seed=0, on_epoch=lambda epoch, loss: losses.append(loss))
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.1, losses
    assert not model.training and getattr(trainer, "_aux", None) is None  # generator discarded


def test_explicit_distribution_stays_in_eps_ball() -> None:
    torch.manual_seed(0)
    model = make_classifier("small_cnn", in_channels=1, num_classes=10, image_size=8).eval()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    labels = y.repeat(2)
    mu, std = fit_tanh_gaussian(
        lambda xa: torch.nn.functional.cross_entropy(model(xa), labels), x, 0.1, 3, 0.3, 2, 0.01
    )
    assert mu.shape == x.shape and (std > 0).all() and mu.abs().max() > 0.5  # moved 3 steps of 0.3
    delta = 0.1 * torch.tanh(mu + std * torch.randn_like(x))
    assert delta.abs().max() <= 0.1


@pytest.mark.parametrize("cls", [ADTEXPAMTrainer, ADTIMPAMTrainer])
def test_generator_perturbations_inside_eps_ball(cls: type[ADTEXPAMTrainer] | type[ADTIMPAMTrainer]) -> None:
    torch.manual_seed(0)
    trainer = cls(cls.default_config("fashion_mnist"))
    with pytest.raises(RuntimeError, match="setup"):
        trainer.loss(
            make_classifier("lenet5", in_channels=1, num_classes=10, image_size=28),
            torch.rand(2, 1, 28, 28),
            torch.zeros(2, dtype=torch.long),
        )
    trainer.setup(1, 28)
    model = make_classifier("lenet5", in_channels=1, num_classes=10, image_size=28)
    with torch.no_grad():  # a large output scale: tanh must still bound delta
        trainer._aux.generator.head.weight.mul_(1e3)  # type: ignore[union-attr]
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    delta, ent = trainer.perturb(model, x, y)
    assert delta.shape == x.shape and torch.isfinite(ent)
    assert delta.abs().max().item() <= 0.1 + 1e-7 and delta.abs().max().item() > 0.05


def _fake(tmp: Path, method: str, seed: int, rob: float, train_time: float = 30.0) -> None:
    rec = {"method": method, "dataset": "fashion_mnist", "seed": seed, "epochs": 3, "clean_acc": rob + 0.2,
           "robust_acc": rob, "autoattack_acc": rob, "attack_acc": {"fgsm": rob + 0.1, "pgd20": rob + 0.02},
           "masking": {"any": method == "adt_impam"}, "train_time_s": train_time}  # fmt: skip
    folder = tmp / "results" / "fashion_mnist"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{method}_seed{seed}.json").write_text(json.dumps(rec))


def test_report_from_fake_results(tmp_path: Path) -> None:
    for s, r in enumerate([0.58, 0.57, 0.59]):
        _fake(tmp_path, "pgd_at", s, r)
        _fake(tmp_path, "adt_exp", s, r + 0.05, train_time=60.0)
    _fake(tmp_path, "adt_impam", 0, 0.5)
    out = report_adt.build_report(tmp_path / "results", tmp_path / "adt.md")
    text = out.read_text()
    assert "| ADT_EXP | 3 (0, 1, 2) | 83.0 ± 1.0 | 73.0 ± 1.0 | 65.0 ± 1.0 | n/a |" in text
    assert "| PGD-AT | 3 (0, 1, 2) | 78.0 ± 1.0 |" in text and "| 58.0 ± 1.0 | 58.0 ± 1.0 | 0/3 |" in text
    assert "trades_seed0, trades_seed1, trades_seed2, adt_expam_seed0" in text and "adt_impam_seed1" in text
    assert "| ADT_IMP-AM | 1 (0) |" in text and "| 1/1 |" in text  # masking flag counted
    assert "| ADT_EXP | 3 ep, batch 128, steps 7, MC 1, lambda 0.01 | 8 | 8 | 0 | 0 | 20 ± 0 |" in text
    assert "ADT_EXP vs PGD-AT on A_rob: the seed's ordering holds (ADT_EXP above PGD-AT): +5.0 points, 6.1" in text
    if report_adt.SEED_FILE.is_file():
        assert "+2.30" in text and "| ADT EXP | 86.89 |" in text
    assert "ADT_EXP-AM vs PGD-AT on A_rob: no verdict" in text
    assert "ADT_IMP-AM vs PGD-AT on A_rob: -8.0 points with 1 and 3 seed(s)" in text
    # an empty results directory still gives a page that says what is missing
    empty = tmp_path / "none"
    (empty / "fashion_mnist").mkdir(parents=True)
    text = report_adt.build_report(empty, tmp_path / "empty.md", seed_file=tmp_path / "no_seed.txt").read_text()
    assert "pgd_at_seed0" in text and "Seed table not found" in text


def test_parse_seed_table() -> None:
    text = "Model\tA\nADT <sub>EXP</sub>\t86.89%\t60.41%\t52.18%\t51.69%\t53.27%\t52.49%\t52.38%\t50.56%\n" \
           "$AT_{PGD}^{\\dagger}$\t87.25%\t56.04%\t45.88%\t45.33%\t47.15%\t46.67%\t46.01%\t44.89%"  # fmt: skip
    rows = report_adt.parse_seed_table(text)
    assert [r.model for r in rows] == ["ADT EXP", "AT PGD (dagger)"]
    assert rows[0].values["A_rob"] == 50.56 and rows[1].values["FGSM"] == 56.04


@pytest.mark.parametrize("cls", [ADTEXPAMTrainer, ADTIMPAMTrainer])
def test_cifar_shaped_generator(cls: type[ADTEXPAMTrainer] | type[ADTIMPAMTrainer]) -> None:
    cfg = cls.default_config("cifar10", gen_width=8, gen_blocks=1)  # the preset's 3 x 128 is slow on CPU
    assert cls.default_config("cifar10").gen_blocks == 3 and cfg.eps_linf == pytest.approx(8 / 255)
    trainer = cls(cfg)
    trainer.setup(3, 32)
    model = make_classifier("small_cnn", in_channels=3, num_classes=10, image_size=32)
    delta, _ = trainer.perturb(model, torch.rand(2, 3, 32, 32), torch.tensor([0, 1]))
    assert delta.shape == (2, 3, 32, 32) and delta.abs().max().item() <= 8 / 255 + 1e-7


def test_normalized_gradient_inputs_lie_in_unit_range() -> None:
    from benchmarks.trainers.adt import _gradient_features

    torch.manual_seed(0)
    model = make_classifier("small_cnn", in_channels=1, num_classes=10, image_size=8)
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    feats = _gradient_features(model, x, y, 0.1, normalize=True)
    assert feats.shape == (4, 3, 8, 8) and torch.equal(feats[:, :1], x)
    assert torch.allclose(feats[:, 1:].flatten(2).abs().amax(2), torch.ones(4, 2))
    assert model.training


def test_leaderboard_runs_an_adt_entry(tmp_path: Path) -> None:
    from benchmarks import leaderboard

    dirs = [
        "--results-dir",
        str(tmp_path / "r"),
        "--checkpoint-dir",
        str(tmp_path / "c"),
        "--docs-dir",
        str(tmp_path / "d"),
    ]
    args = ["run", "--methods", "adt_expam", "--seeds", "0", "--datasets", "digits", "--n-eval", "40", "--no-autoattack",
            "--square-queries", "30", "--train-override", "epochs=1", "max_train_samples=256", "--no-tables", *dirs]  # fmt: skip
    assert leaderboard.main(args) == 0
    rec = json.loads((tmp_path / "r" / "digits" / "adt_expam_seed0.json").read_text())
    assert rec["method"] == "adt_expam" and 0.0 <= rec["robust_acc"] <= rec["clean_acc"] <= 1.0
    assert rec["train_config"]["gen_width"] == 8 and "masking" in rec


def test_report_lists_variant_runs_beside_the_default(tmp_path: Path) -> None:
    for folder, flag, rob in ((tmp_path / "results", False, 0.2), (tmp_path / "variants" / "norm_grads", True, 0.4)):
        (folder / "fashion_mnist").mkdir(parents=True)
        rec = {"method": "adt_expam", "dataset": "fashion_mnist", "seed": 0, "epochs": 3, "clean_acc": 0.8,
               "robust_acc": rob, "autoattack_acc": rob, "attack_acc": {"pgd20": rob + 0.05}, "masking": {"any": False},
               "train_time_s": 1.0, "train_config": {"epochs": 3, "normalize_grad_inputs": flag}}  # fmt: skip
        (folder / "fashion_mnist" / "adt_expam_seed0.json").write_text(json.dumps(rec))
    text = report_adt.build_report(tmp_path / "results", tmp_path / "adt.md", variants_dir=tmp_path / "variants",
                                   seed_file=tmp_path / "none.txt").read_text()  # fmt: skip
    assert (
        "| norm_grads | ADT_EXP-AM | 0 | normalize_grad_inputs=True | 80.0 | 45.0 | 40.0 | 40.0 | 80.0 / 20.0 |" in text
    )
    assert "Diagnostic runs" not in report_adt.build_report(tmp_path / "results", tmp_path / "b.md").read_text()
