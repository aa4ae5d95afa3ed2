"""The policy-loss classifier of Kim (seed 003) as a leaderboard method.

Training runs :func:`agents.policy_loss.train` unchanged: the network learns through the batched
``ClassifierReward-v0`` env (observations in, sampled actions out, rewards back), warm-up with the
alternative loss (seed 003 Eq. 12), then the policy loss (Eq. 4) once test accuracy passes ``switch_acc``.
The leaderboard then evaluates the returned LeNet-5 with the common protocol, like every other method.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from benchmarks.trainers.base import TrainConfig, Trainer
from robust_envs.data import ImageSplit, load_dataset

__all__ = ["PolicyLossConfig", "PolicyLossTrainer"]


@dataclass
class PolicyLossConfig(TrainConfig):
    """Config of the policy-loss trainer (fields of :class:`agents.policy_loss.Args`).

    Attributes:
        dataset: the env's data set (``ClassifierReward-v0`` draws its own training stream from it); must be
            the data set the leaderboard trains on.
        mode: ``eq12_eq4`` (the paper's method), ``ce_eq4`` or ``eq4`` (Table 4 ablation), ``ce``.
        lambda_1: stage-1 reward ratio r_wrong / r_correct (Eq. 12), >= 0.
        lambda_2: stage-2 reward ratio (Eq. 4), >= 0.
        switch_acc: test accuracy in [0, 1] at which Eq. 4 takes over (the paper: 0.8).
        switch_eval_points: test images used for the switch check.

    ``lr`` is the initial SGD learning rate (no momentum, as the paper), decayed x0.1 at ``lr_milestones``.
    """

    dataset: str = "fashion_mnist"
    mode: str = "eq12_eq4"
    lambda_1: float = 0.75
    lambda_2: float = 1.25
    switch_acc: float = 0.8
    switch_eval_points: int = 2000


class PolicyLossTrainer(Trainer):
    """Kim (seed 003): classification as an MDP trained with the policy loss (Eq. 4), Eq. 12 warm-up.

    Fashion-MNIST preset: the budget of ``docs/policy_loss.md`` (2 epochs of 32-image env steps, SGD 0.1
    without momentum, x0.1 at 75 % and 90 % of the steps, switch at 70 % test accuracy, lambda =
    (0.75, 1.25)); CIFAR-10: the paper's 200 epochs, switch at 80 %, decays at 25 % and 75 %.
    """

    name: ClassVar[str] = "policy_loss"
    paper: ClassVar[str] = "Kim et al., policy-loss classifier (seed 003), Eq. 4 with the Eq. 12 warm-up"
    config_cls: ClassVar[type[TrainConfig]] = PolicyLossConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "fashion_mnist": {
            "dataset": "fashion_mnist",
            "epochs": 2,
            "batch_size": 32,
            "optimizer": "sgd",
            "lr": 0.1,
            "momentum": 0.0,
            "lr_milestones": (0.75, 0.9),
            "switch_acc": 0.7,
        },  # fmt: skip
        "cifar10": {
            "dataset": "cifar10",
            "epochs": 200,
            "batch_size": 128,
            "optimizer": "sgd",
            "lr": 0.1,
            "momentum": 0.0,
            "weight_decay": 0.0,
            "lr_milestones": (0.25, 0.75),
            "augment": "none",
            "switch_acc": 0.8,
        },  # fmt: skip
        "digits": {
            "dataset": "digits",
            "epochs": 3,
            "batch_size": 32,
            "optimizer": "sgd",
            "lr": 0.1,
            "momentum": 0.0,
            "lr_milestones": (0.75, 0.9),
            "switch_acc": 0.5,
            "switch_eval_points": 0,
        },  # fmt: skip
    }

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Not used: the policy loss needs sampled actions and rewards from the env (see :meth:`train`)."""
        raise NotImplementedError("PolicyLossTrainer trains through ClassifierReward-v0; call train()")

    def train(
        self,
        data: ImageSplit,
        seed: int = 0,
        device: str | torch.device = "cpu",
        on_epoch: Callable[[int, float], None] | None = None,
    ) -> nn.Module:
        """Train through the batched ``ClassifierReward-v0`` env and return the classifier in eval mode.

        Raises:
            ValueError: if ``data`` is not the train split of ``config.dataset`` (the env loads its own
                stream), or the config is outside :class:`agents.policy_loss.Args`'s valid ranges, or
                ``optimizer`` is not SGD, ``augment`` not ``"none"`` or ``max_train_samples`` set.
        """
        from agents.policy_loss import Args
        from agents.policy_loss import train as train_policy_loss

        cfg = self.config
        assert isinstance(cfg, PolicyLossConfig)
        if cfg.optimizer != "sgd" or cfg.augment != "none" or cfg.max_train_samples is not None:
            raise ValueError(f"the policy-loss trainer uses SGD on the full train split without augmentation; "
                             f"got optimizer={cfg.optimizer!r}, augment={cfg.augment!r}, "
                             f"max_train_samples={cfg.max_train_samples!r}")  # fmt: skip
        train_split = load_dataset(cfg.dataset, "train")
        if len(train_split) != len(data) or not torch.equal(train_split.labels, data.labels):
            raise ValueError(f"data must be the train split of {cfg.dataset!r} ({len(train_split)} images), "
                             f"got {len(data)} images")  # fmt: skip
        args = Args(exp_name="leaderboard_policy_loss", seed=seed, mode=cfg.mode, dataset=cfg.dataset,
                    arch=cfg.architecture, lambda_1=cfg.lambda_1, lambda_2=cfg.lambda_2, switch_acc=cfg.switch_acc,
                    epochs=cfg.epochs, batch_size=cfg.batch_size, learning_rate=cfg.lr,
                    lr_milestones=cfg.lr_milestones, momentum=cfg.momentum,
                    eval_points=cfg.switch_eval_points, device=str(device), threads=0, track=False,
                    save_path="none", progress=False)  # fmt: skip
        result = train_policy_loss(args)
        if on_epoch is not None:
            on_epoch(cfg.epochs, math.nan)
        return result.model.eval()
