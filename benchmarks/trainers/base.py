"""The interface every leaderboard method implements: a name, a config dataclass, ``train(...) -> model``.

A new method (DVERGE, ADT, MNG-AC, ...) subclasses :class:`Trainer`, sets ``name``, ``paper`` and
``config_cls`` (a dataclass deriving from :class:`TrainConfig`), gives per-data-set ``presets``, and either
implements the one hook :meth:`Trainer.loss` (the per-batch objective; the base class runs the epochs) or
overrides :meth:`Trainer.train` when it needs its own loop (ensembles, generators). It is then added to
``benchmarks.trainers.TRAINERS``; the leaderboard runner needs no change.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robust_envs.classifiers import make_classifier
from robust_envs.data import ImageSplit

__all__ = [
    "DATASET_DEFAULTS",
    "TrainConfig",
    "Trainer",
    "epoch_batches",
    "make_optimizer",
    "seed_everything",
    "training_tensors",
]

logger = logging.getLogger(__name__)

#: Settings shared by all methods on a data set (architecture, optimiser, budget); a method's
#: ``presets`` add or override fields. Fashion-MNIST: a CPU-sized budget (LeNet-5, 5 epochs, Adam).
#: CIFAR-10: the papers' settings (WRN-28-10 as in ADT's and MNG-AC's tables; SGD 0.1, momentum 0.9,
#: weight decay 2e-4, batch 128, 100 epochs with x0.1 at 75 % and 90 %, crop + flip, as TRADES).
#: digits: tiny budgets for tests.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "fashion_mnist": {"architecture": "lenet5", "epochs": 5, "batch_size": 128, "optimizer": "adam", "lr": 1e-3},
    "cifar10": {
        "architecture": "wrn28_10",
        "epochs": 100,
        "batch_size": 128,
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 2e-4,
        "lr_milestones": (0.75, 0.9),
        "augment": "crop_flip",
    },  # fmt: skip
    "digits": {"architecture": "small_cnn", "epochs": 3, "batch_size": 64, "optimizer": "adam", "lr": 2e-3},
}


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global generator (model init, attack random starts) and return a data-order generator."""
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


@dataclass
class TrainConfig:
    """Fields every method shares.

    Attributes:
        architecture: name for :func:`robust_envs.classifiers.make_classifier`.
        epochs: passes over the training set, >= 1.
        batch_size: images per optimiser step, >= 1.
        optimizer: ``"adam"`` or ``"sgd"`` (with ``momentum``).
        lr: initial learning rate.
        momentum: SGD momentum.
        weight_decay: L2 weight decay.
        lr_milestones: fractions of the run after which the learning rate is multiplied by 0.1.
        augment: ``"none"`` or ``"crop_flip"`` (4-pixel pad random crop + horizontal flip, CIFAR-10).
        max_train_samples: train on the first N images of a seeded permutation (None: all).
    """

    architecture: str = "lenet5"
    epochs: int = 5
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_milestones: tuple[float, ...] = ()
    augment: str = "none"
    max_train_samples: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.augment not in ("none", "crop_flip"):
            raise ValueError(f"augment must be 'none' or 'crop_flip', got {self.augment!r}")
        if not all(0.0 < m < 1.0 for m in self.lr_milestones):
            raise ValueError(f"lr_milestones must be fractions in (0, 1), got {self.lr_milestones}")
        self.lr_milestones = tuple(self.lr_milestones)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready field values."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def make_optimizer(cfg: TrainConfig, params: Any, lr: float | None = None) -> torch.optim.Optimizer:
    """The config's optimiser over ``params``: Adam (``lr``, ``weight_decay``) or SGD (with ``momentum``);
    ``lr`` overrides the config's learning rate (e.g. a second network's).
    """
    lr = cfg.lr if lr is None else lr
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def training_tensors(data: ImageSplit, cfg: TrainConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, C, H, W)`` float in [0, 1] and labels ``(N,)`` to train on: all of ``data``, or the first
    ``cfg.max_train_samples`` of a permutation drawn from ``gen`` (seeded data subset).
    """
    images, labels = data.float_images(), data.labels
    if cfg.max_train_samples is not None:
        keep = torch.randperm(len(labels), generator=gen)[: cfg.max_train_samples]
        images, labels = images[keep], labels[keep]
    return images, labels


def epoch_batches(
    images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig, gen: torch.Generator, device: str | torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of mini-batches ``(x, y)`` on ``device``: a permutation drawn from ``gen``, ``cfg.batch_size``
    images each (the last may be smaller), crop + flip from ``gen`` when ``cfg.augment == "crop_flip"``.

    Shape:
        - images: ``(N, C, H, W)`` float in [0, 1]; labels: ``(N,)``; yields ``(B, C, H, W)``, ``(B,)``.
    """
    order = torch.randperm(len(labels), generator=gen)
    for start in range(0, len(labels), cfg.batch_size):
        idx = order[start : start + cfg.batch_size]
        x, y = images[idx], labels[idx]
        if cfg.augment == "crop_flip":
            x = _augment_crop_flip(x, gen)
        yield x.to(device), y.to(device)


def _augment_crop_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 4-pixel-padded crop and horizontal flip per image (He et al. 2016's CIFAR augmentation)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (n,), generator=gen)
    dy = torch.randint(0, 9, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    out = torch.empty_like(x)
    for i in range(n):
        crop = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


class Trainer(abc.ABC):
    """Base class of leaderboard training methods.

    Class attributes:
        name: registry key (``"pgd_at"``).
        paper: source paper (authors, venue, year).
        config_cls: the method's config dataclass (a :class:`TrainConfig` subclass).
        presets: per-data-set field overrides applied on top of :data:`DATASET_DEFAULTS`.

    Hook: :meth:`loss` (per-batch objective). Override :meth:`train` for methods with their own loop.
    """

    name: ClassVar[str]
    paper: ClassVar[str]
    config_cls: ClassVar[type[TrainConfig]] = TrainConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, config: TrainConfig) -> None:
        if not isinstance(config, self.config_cls):
            raise TypeError(f"{type(self).__name__} needs a {self.config_cls.__name__}, got {type(config).__name__}")
        self.config = config

    @classmethod
    def default_config(cls, dataset: str, **overrides: Any) -> TrainConfig:
        """The method's config on ``dataset``: :data:`DATASET_DEFAULTS`, then ``presets``, then ``overrides``.

        Raises:
            ValueError: on a data set without defaults, or an override naming no config field.
        """
        if dataset not in DATASET_DEFAULTS:
            raise ValueError(f"no training defaults for dataset {dataset!r}; valid: {sorted(DATASET_DEFAULTS)}")
        fields = {f.name for f in dataclasses.fields(cls.config_cls)}
        bad = sorted(set(overrides) - fields)
        if bad:
            raise ValueError(f"{cls.config_cls.__name__} has no field(s) {bad}; valid: {sorted(fields)}")
        values = {k: v for k, v in DATASET_DEFAULTS[dataset].items() if k in fields}
        values.update(cls.presets.get(dataset, {}))
        values.update(overrides)
        return cls.config_cls(**values)

    @abc.abstractmethod
    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar training objective of one batch.

        Shape:
            - images: ``(B, C, H, W)`` float in [0, 1]; labels: ``(B,)`` int64. Output: scalar tensor.
        """

    def extra_metrics(self, model: nn.Module, subset: Any, dataset: str, eval_cfg: Any) -> dict[str, Any]:
        """Method-specific measurements stored under ``"extra"`` in the entry's JSON (default: none).

        Called by the leaderboard after the common protocol, with the trained ``model`` (eval mode), the
        fixed evaluation ``subset`` (a :class:`benchmarks.evaluate.EvalSubset`: images float in [0, 1], labels), the data set name and the
        :class:`benchmarks.evaluate.EvalConfig`. Ensembles override it (DVERGE: per-submodel accuracy and the
        within-ensemble transferability matrix). Must return JSON-ready values.
        """
        return {}

    def build_model(self, data: ImageSplit) -> nn.Module:
        """A fresh classifier for ``data`` (channels, classes and image size taken from it).

        The leaderboard also calls it to rebuild a checkpointed model before ``load_state_dict``, so a
        method with another architecture (an ensemble) overrides it.
        """
        _, c, h, _ = data.images.shape
        return make_classifier(self.config.architecture, in_channels=c, num_classes=data.num_classes, image_size=h)

    def train(
        self,
        data: ImageSplit,
        seed: int = 0,
        device: str | torch.device = "cpu",
        on_epoch: Callable[[int, float], None] | None = None,
    ) -> nn.Module:
        """Train a fresh model on ``data`` and return it in eval mode.

        Args:
            data: training split (images uint8 ``(N, C, H, W)``).
            seed: seeds model init, data order and attack random starts.
            device: torch device.
            on_epoch: called as ``on_epoch(epoch, mean_loss)`` after each epoch (1-based).

        Returns:
            The trained ``nn.Module`` (logits ``(N, num_classes)`` for images in [0, 1]), in eval mode.
        """
        cfg = self.config
        gen = seed_everything(seed)
        model = self.build_model(data).to(device)
        images, labels = training_tensors(data, cfg, gen)
        opt = make_optimizer(cfg, model.parameters())
        steps_per_epoch = math.ceil(len(labels) / cfg.batch_size)
        milestones = [int(m * cfg.epochs * steps_per_epoch) for m in cfg.lr_milestones]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
        for epoch in range(1, cfg.epochs + 1):
            total, count = 0.0, 0
            for x, y in epoch_batches(images, labels, cfg, gen, device):
                model.train()
                loss = self.loss(model, x, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(y)
                count += len(y)
            self.end_epoch(epoch, total / max(count, 1), on_epoch)
        return model.eval()

    def end_epoch(
        self, epoch: int, mean_loss: float, on_epoch: Callable[[int, float], None] | None, note: str = ""
    ) -> None:
        """Log ``mean_loss`` of 1-based ``epoch`` (with an optional ``note``) and call ``on_epoch`` if given."""
        logger.info("%s epoch %d/%d%s loss %.4f", self.name, epoch, self.config.epochs, note, mean_loss)
        if on_epoch is not None:
            on_epoch(epoch, mean_loss)
