"""MNG-AC and the multi-norm baselines: JS consistency, the generator, the lookahead, a few batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from benchmarks.trainers import TRAINERS, AdvAvgTrainer, AdvMaxTrainer, MNGACTrainer, MSDTrainer, get_trainer
from benchmarks.trainers.mng_ac import (
    NORMS,
    NoiseGenerator,
    js_consistency,
    lookahead_params,
    multi_norm_attack,
    one_cycle_lr,
    project_noise,
)
from robust_envs.classifiers import make_classifier
from robust_envs.data import ImageSplit, load_dataset

torch.set_num_threads(1)


def _js_by_hand(logits: list[list[float]]) -> float:
    p = [np.exp(v) / np.exp(v).sum() for v in map(np.asarray, logits)]
    m = sum(p) / len(p)
    return float(sum((q * np.log(q / m)).sum() for q in p) / len(p))


def test_js_consistency_against_hand_computed_values() -> None:
    a, b, c = [0.0, 0.0], [math.log(3.0), 0.0], [0.0, math.log(3.0)]
    # p = (1/2, 1/2) and (3/4, 1/4): M = (5/8, 3/8)
    expected = 0.5 * (0.5 * math.log(0.5 / 0.625) + 0.5 * math.log(0.5 / 0.375)
                      + 0.75 * math.log(0.75 / 0.625) + 0.25 * math.log(0.25 / 0.375))  # fmt: skip
    got = js_consistency([torch.tensor([a]), torch.tensor([b])])
    assert float(got) == pytest.approx(expected, rel=1e-5)
    assert float(got) == pytest.approx(_js_by_hand([a, b]), rel=1e-5)
    # three views, batch of two (batch mean)
    batch = [torch.tensor([a, b]), torch.tensor([b, c]), torch.tensor([c, a])]
    want = 0.5 * (_js_by_hand([a, b, c]) + _js_by_hand([b, c, a]))
    assert float(js_consistency(batch)) == pytest.approx(want, rel=1e-5)
    assert float(js_consistency([torch.tensor([b]), torch.tensor([b])])) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match=">= 2 predictions"):
        js_consistency([torch.tensor([a])])


def test_generator_uses_its_input() -> None:
    torch.manual_seed(0)
    gen = NoiseGenerator(channels=1, hidden=8)
    x1, x2, z = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    assert float((gen(x1, z) - gen(x2, z)).abs().max()) > 1e-4
    assert float((gen(x1, z) - gen(x1, torch.randn(2, 1, 8, 8))).abs().max()) > 1e-4  # and is stochastic
    (g,) = torch.autograd.grad(gen(x1.requires_grad_(True), z).sum(), x1)
    assert float(g.abs().sum()) > 0


@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("L2", 0.5), ("L1", 1.0)])
def test_project_noise_radius(norm: str, eps: float) -> None:
    x = torch.full((3, 1, 8, 8), 0.5)
    out = project_noise(x, torch.randn(3, 1, 8, 8), norm, eps)
    d = (out - x).flatten(1)
    size = {"Linf": d.abs().max(1).values, "L2": d.norm(dim=1), "L1": d.abs().sum(1)}[norm]
    assert bool((size <= eps * (1 + 1e-4)).all())
    with pytest.raises(ValueError, match="unknown norm"):
        project_noise(x, x, "L3", 1.0)


def test_lookahead_leaves_classifier_untouched_and_reaches_generator() -> None:
    torch.manual_seed(0)
    model = make_classifier("small_cnn", in_channels=1, num_classes=10, image_size=8)
    gen = NoiseGenerator(channels=1, hidden=8)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    params = lookahead_params(model, project_noise(x, gen(x), "L2", 0.5), y, lr=0.1)
    outer = F.cross_entropy(functional_call(model, params, (x,)), y)
    grads = torch.autograd.grad(outer, list(gen.parameters()))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters())
    assert any(float(g.abs().sum()) > 0 for g in grads)  # second-order path to the generator
    assert any(float((params[k] - before[k]).abs().max()) > 0 for k in params)  # theta' differs from theta


def test_multi_norm_attacks_stay_in_their_balls() -> None:
    torch.manual_seed(0)
    model = make_classifier("small_cnn", in_channels=1, num_classes=10, image_size=8)
    cfg = AdvAvgTrainer.default_config("digits")
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    for norm in NORMS:
        d = (multi_norm_attack(model, x, y, norm, cfg) - x).flatten(1)
        size = {"Linf": d.abs().max(1).values, "L2": d.norm(dim=1), "L1": d.abs().sum(1)}[norm]
        assert bool((size <= cfg.eps(norm) * (1 + 1e-3)).all()), norm
        assert model.training


def test_one_cycle_schedule() -> None:
    assert one_cycle_lr(0, 100, 0.2) == 0.0
    assert one_cycle_lr(40, 100, 0.2) == pytest.approx(0.2)
    assert one_cycle_lr(100, 100, 0.2) == pytest.approx(0.0)


@pytest.mark.parametrize("cls", [MNGACTrainer, AdvAvgTrainer, AdvMaxTrainer, MSDTrainer])
def test_trainer_runs_and_lowers_loss(cls: type) -> None:
    assert TRAINERS[cls.name] is cls and get_trainer(cls.name) is cls
    data = load_dataset("digits", "train")
    data = ImageSplit(images=data.images[:384], labels=data.labels[:384], classes=data.classes)
    cfg = cls.default_config("digits", epochs=4, steps_linf=2, steps_l2=2, steps_l1=2)
    losses: list[float] = []
    model = cls(cfg).train(data, seed=0, on_epoch=lambda _e, loss: losses.append(loss))
    assert not model.training and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
