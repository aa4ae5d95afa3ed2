"""First leaderboard methods: standard training, PGD adversarial training, TRADES."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

from benchmarks.trainers.base import TrainConfig, Trainer

__all__ = ["AdvConfig", "PGDATTrainer", "StandardTrainer", "TRADESConfig", "TRADESTrainer"]


@dataclass
class AdvConfig(TrainConfig):
    """Training config with an Linf inner attack.

    Attributes:
        eps_linf: Linf radius of training perturbations, pixel units in [0, 1].
        attack_steps: inner-maximisation iterations, >= 1.
        attack_alpha: inner step size, pixel units.
    """

    eps_linf: float = 0.1
    attack_steps: int = 10
    attack_alpha: float = 0.025

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.eps_linf <= 1.0:
            raise ValueError(f"eps_linf must be in [0, 1], got {self.eps_linf}")
        if self.attack_steps < 1:
            raise ValueError(f"attack_steps must be >= 1, got {self.attack_steps}")


@dataclass
class TRADESConfig(AdvConfig):
    """TRADES config.

    Attributes:
        beta: weight of the KL robustness term (Zhang et al. 2019 use 6 on CIFAR-10 and MNIST), >= 0.
    """

    beta: float = 6.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")


# Fashion-MNIST, a CPU-sized budget: 3 epochs; inner attack eps 0.1 with 7 steps of eps / 4, the step
# count and step-to-radius ratio of Madry et al.'s CIFAR-10 setting (7 steps of 2/255 at 8/255).
# CIFAR-10: the papers' settings.
_FMNIST_ADV: dict[str, Any] = {"epochs": 3, "eps_linf": 0.1, "attack_steps": 7, "attack_alpha": 0.025}
_DIGITS_ADV: dict[str, Any] = {"eps_linf": 0.1, "attack_steps": 5, "attack_alpha": 0.04}


class StandardTrainer(Trainer):
    """Standard training: mean softmax cross-entropy on clean images (the "Standard" / "Nat" row)."""

    name: ClassVar[str] = "standard"
    paper: ClassVar[str] = "standard empirical risk minimisation (cross-entropy)"
    config_cls: ClassVar[type[TrainConfig]] = TrainConfig

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of ``model(images)``; images ``(B, C, H, W)`` in [0, 1], labels ``(B,)``."""
        return F.cross_entropy(model(images), labels)


class PGDATTrainer(Trainer):
    """PGD adversarial training (Madry et al., ICLR 2018).

    Paper: "Towards Deep Learning Models Resistant to Adversarial Attacks", Eq. 2.1: ``min_theta E[max_{||delta||_inf <= eps} CE(f(x + delta), y)]`` with
    the inner max solved by PGD with uniform random start (torchattacks.PGD, model in eval mode).

    CIFAR-10 preset: eps 8/255, 10 steps of 2/255 (Madry et al. use 7 steps of 2/255; 10 steps as in
    ADT's AT_PGD and Rice et al. 2020).
    """

    name: ClassVar[str] = "pgd_at"
    paper: ClassVar[str] = "Madry et al., Towards Deep Learning Models Resistant to Adversarial Attacks, ICLR 2018"
    config_cls: ClassVar[type[TrainConfig]] = AdvConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "fashion_mnist": _FMNIST_ADV,
        "cifar10": {"eps_linf": 8 / 255, "attack_steps": 10, "attack_alpha": 2 / 255},
        "digits": _DIGITS_ADV,
    }

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy on PGD adversarial images; images ``(B, C, H, W)`` in [0, 1], labels ``(B,)``."""
        cfg = self.config
        assert isinstance(cfg, AdvConfig)
        attack = torchattacks.PGD(model, eps=cfg.eps_linf, alpha=cfg.attack_alpha, steps=cfg.attack_steps,
                                  random_start=True)  # fmt: skip
        adv = attack(images, labels)
        model.train()
        return F.cross_entropy(model(adv), labels)


class TRADESTrainer(Trainer):
    """TRADES (Zhang et al., ICML 2019).

    Paper: "Theoretically Principled Trade-off between Robustness and Accuracy", Eq. 5 and Alg. 1:
    ``CE(f(x), y) + beta * max_{||x' - x||_inf <= eps} KL(softmax f(x) || softmax f(x'))``, the inner
    max by sign-gradient ascent on the KL from ``x + 0.001 N(0, I)`` (torchattacks.TPGD, eval mode);
    KL summed over classes and averaged over the batch, as the reference code.

    CIFAR-10 preset: eps 0.031, 10 steps of 0.007, beta 6 (the paper's settings).
    """

    name: ClassVar[str] = "trades"
    paper: ClassVar[str] = "Zhang et al., Theoretically Principled Trade-off between Robustness and Accuracy, ICML 2019"
    config_cls: ClassVar[type[TrainConfig]] = TRADESConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "fashion_mnist": {**_FMNIST_ADV, "beta": 6.0},
        "cifar10": {"eps_linf": 0.031, "attack_steps": 10, "attack_alpha": 0.007, "beta": 6.0},
        "digits": {**_DIGITS_ADV, "beta": 6.0},
    }

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """TRADES objective (Eq. 5); images ``(B, C, H, W)`` in [0, 1], labels ``(B,)``."""
        cfg = self.config
        assert isinstance(cfg, TRADESConfig)
        attack = torchattacks.TPGD(model, eps=cfg.eps_linf, alpha=cfg.attack_alpha, steps=cfg.attack_steps)
        adv = attack(images, labels)
        model.train()
        logits = model(images)
        logits_adv = model(adv)
        kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1), reduction="batchmean")
        return F.cross_entropy(logits, labels) + cfg.beta * kl
