"""DVERGE: feature distillation (Eq. 1), the mixture's logits, the trainers on a few batches."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from benchmarks.trainers import TRAINERS, DVERGEAdvTTrainer, DVERGETrainer, Ensemble, get_trainer
from benchmarks.trainers.dverge import feature_distillation, feature_layers, layer_features, transferability_matrix
from robust_envs.classifiers import make_classifier
from robust_envs.data import ImageSplit, load_dataset

torch.set_num_threads(1)


def _digits(n: int) -> ImageSplit:
    data = load_dataset("digits", "train")
    return ImageSplit(images=data.images[:n], labels=data.labels[:n], classes=data.classes)


@pytest.mark.parametrize("layer", [1, 3, 5])
def test_distillation_stays_in_ball_and_moves_features(layer: int) -> None:
    torch.manual_seed(0)
    model = make_classifier("lenet5", in_channels=1, num_classes=10, image_size=16).eval()
    source, target = torch.rand(8, 1, 16, 16), torch.rand(8, 1, 16, 16)
    eps = 0.1
    out = feature_distillation(model, source, target, layer, eps=eps, alpha=0.02, steps=10)
    assert out.shape == source.shape
    assert float((out - source).abs().max()) <= eps + 1e-6
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    with torch.no_grad():
        goal = layer_features(model, target, layer)
        before = F.mse_loss(layer_features(model, source, layer), goal)
        after = F.mse_loss(layer_features(model, out, layer), goal)
    assert float(after) < 0.9 * float(before)
    assert all(p.grad is None for p in model.parameters())


def test_layer_features_matches_forward_and_rejects_bad_layer() -> None:
    model = make_classifier("lenet5", in_channels=1, num_classes=10, image_size=16).eval()
    x = torch.rand(2, 1, 16, 16)
    n = len(feature_layers(model))
    assert n == 5
    torch.testing.assert_close(layer_features(model, x, n), model(x))
    with pytest.raises(ValueError, match="layer must be in 1..5"):
        layer_features(model, x, 6)


def test_ensemble_logits_are_log_mean_probabilities() -> None:
    torch.manual_seed(0)
    subs = [make_classifier("lenet5", in_channels=1, num_classes=10, image_size=16) for _ in range(3)]
    ens = Ensemble(subs).eval()
    x = torch.rand(4, 1, 16, 16, requires_grad=True)
    out = ens(x)
    mean_p = torch.stack([F.softmax(m(x), 1) for m in subs]).mean(0)
    torch.testing.assert_close(out.exp(), mean_p)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(4))
    (g,) = torch.autograd.grad(F.cross_entropy(out, torch.zeros(4, dtype=torch.long)), x)
    assert float(g.abs().sum()) > 0  # no clamping that hides gradients


def test_transferability_matrix_shape() -> None:
    torch.manual_seed(0)
    subs = [make_classifier("lenet5", in_channels=1, num_classes=10, image_size=16).eval() for _ in range(2)]
    m = transferability_matrix(subs, torch.rand(6, 1, 16, 16), torch.zeros(6, dtype=torch.long), 0.1)
    assert len(m) == 2 and all(len(r) == 2 and all(0.0 <= v <= 1.0 for v in r) for r in m)


@pytest.mark.parametrize("cls", [DVERGETrainer, DVERGEAdvTTrainer])
def test_trainer_runs_and_lowers_loss(cls: type[DVERGETrainer]) -> None:
    assert TRAINERS[cls.name] is cls and get_trainer(cls.name) is cls
    data = _digits(512)
    cfg = cls.default_config("digits", pretrain_epochs=1, epochs=4, samples_per_epoch=256, distill_steps=2, adv_steps=2)
    losses: list[float] = []
    model = cls(cfg).train(data, seed=0, on_epoch=lambda _e, loss: losses.append(loss))
    assert isinstance(model, Ensemble) and len(model.submodels) == 3 and not model.training
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    # the leaderboard rebuilds the checkpointed model with build_model
    rebuilt = cls(cfg).build_model(data)
    rebuilt.load_state_dict(model.state_dict())
    x = data.float_images()[:64]
    torch.testing.assert_close(rebuilt.eval()(x), model(x))
    extra = cls(cfg).extra_metrics(model, SimpleNamespace(images=x, labels=data.labels[:64]), "digits",
                                   SimpleNamespace(attack_seed=0))  # fmt: skip
    assert set(extra["accuracy"]) == {"submodel_0", "submodel_1", "submodel_2", "mixture"}
    assert set(extra["accuracy"]["mixture"]) == {"clean", "fgsm", "pgd_linf", "pgd_l2"}
    assert len(extra["transfer"]) == 3 and extra["accuracy"]["mixture"]["clean"] > 0.3
