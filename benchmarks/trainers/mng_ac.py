"""MNG-AC and the multi-norm adversarial-training baselines Adv_avg and Adv_max (seed 002).

Paper: Madaan, Shin & Hwang, "Learning to Generate Noise for Multi-Attack Robustness", ICML 2021 (seed 002:
SAT, adversarial consistency, the meta noise generator; tables of clean, Linf, L1, L2, union, average
accuracy and training time). Baselines: Tramer & Boneh, "Adversarial Training and Robustness for Multiple
Perturbations", NeurIPS 2019 (Adv_avg, Adv_max); Maini, Wong & Kolter, "Adversarial Robustness Against the
Union of Multiple Perturbation Models", ICML 2020 (MSD).
Code: https://github.com/divyam3897/MNG_AC (``train_MNG.py``; reference for details, read, not copied).

Notation (code -> paper):
    ``norm`` -> the attack A_k sampled for the batch (SAT); ``x_adv`` -> A_k(x);
    ``generator`` -> g_phi, the meta noise generator; ``x_aug`` -> x + g_phi(x, z) projected onto the
    sampled norm's ball; ``lookahead_lr`` -> the inner step size of the one-step lookahead theta';
    ``js_weight`` -> beta, the weight of the adversarial-consistency (Jensen-Shannon) term.

MNG-AC, per batch (Alg. 1 of the paper, as in the reference code):
    1. SAT: sample k uniformly from {Linf, L2, L1}; x_adv = A_k(x) against the current classifier.
    2. Meta step: x_aug = x + Proj_k(g_phi(x, z)); theta' = theta - lookahead_lr * grad_theta CE(f_theta(x_aug), y)
       (functional, the classifier's parameters are not modified); phi <- phi - lr * grad_phi CE(f_theta'(x_adv), y).
    3. Classifier step: CE(f_theta(x_adv), y) + js_weight * JS(f(x), f(x_adv), f(x_aug)), x_aug from the
       updated generator (no gradient to phi).

The reference generator (``NoiseResNet3x3Conv``) draws fresh noise and ignores its input image; ours
(:class:`NoiseGenerator`) convolves the image together with the noise, so the noise is input-dependent
as the paper states (``tests/test_mng_ac.py`` checks that changing the input changes the output).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
import torchattacks
from torch import nn
from torch.func import functional_call

from benchmarks.trainers.base import (
    TrainConfig,
    Trainer,
    epoch_batches,
    make_optimizer,
    seed_everything,
    training_tensors,
)
from robust_envs.attacks import MSD, SLIDE, project_l1_ball, radii_for
from robust_envs.data import ImageSplit

__all__ = [
    "NORMS",
    "AdvAvgTrainer",
    "AdvMaxTrainer",
    "MNGACConfig",
    "MNGACTrainer",
    "MSDConfig",
    "MSDTrainer",
    "MultiNormConfig",
    "NoiseGenerator",
    "js_consistency",
    "lookahead_params",
    "multi_norm_attack",
    "one_cycle_lr",
    "project_noise",
]


NORMS: tuple[str, ...] = ("Linf", "L2", "L1")


def js_consistency(logits: Sequence[torch.Tensor], floor: float = 1e-7) -> torch.Tensor:
    """Adversarial consistency: the generalised Jensen-Shannon divergence of K predictions.

    ``JS = (1/K) sum_k KL(p_k || M)``, ``M = clamp((1/K) sum_k p_k, floor, 1)``, ``p_k = softmax(logits_k)``,
    KL summed over classes and averaged over the batch (the reference's ``kl_div(..., 'batchmean')``).

    Shape:
        - logits: K >= 2 tensors ``(B, num_classes)``; output: scalar tensor >= 0 (nats).

    Raises:
        ValueError: on fewer than two predictions or mismatched shapes.
    """
    if len(logits) < 2:
        raise ValueError(f"js_consistency needs >= 2 predictions, got {len(logits)}")
    if len({tuple(t.shape) for t in logits}) != 1:
        raise ValueError(f"all logits must have one shape, got {[tuple(t.shape) for t in logits]}")
    probs = [F.softmax(t, dim=1) for t in logits]
    log_m = torch.clamp(sum(probs) / len(probs), floor, 1.0).log()
    return sum(F.kl_div(log_m, p, reduction="batchmean") for p in probs) / len(probs)


class NoiseGenerator(nn.Module):
    """Input-dependent stochastic noise generator g_phi(x, z).

    Three 3x3 convolutions (``hidden`` channels, ReLU) on the concatenation of the image and Gaussian noise
    ``z`` of the same shape; the output is an unconstrained perturbation that :func:`project_noise` maps into
    the sampled norm's ball.

    Shape:
        - x: ``(N, C, H, W)`` float in [0, 1]; z: ``(N, C, H, W)`` (drawn when None); output ``(N, C, H, W)``.
    """

    def __init__(self, channels: int = 1, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(2 * channels, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, channels, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        if z is None:
            z = torch.randn_like(x)
        return self.net(torch.cat([x, z], dim=1))


def project_noise(x: torch.Tensor, delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """``clip(x + Proj(delta), 0, 1)``: Linf clamps to [-eps, eps]; L2 rescales each image's delta to L2
    norm eps (the reference's ``fix_perturbation_size``); L1 projects onto the L1 ball (Duchi et al.).

    Shape:
        - x, delta: ``(N, C, H, W)``; output: ``(N, C, H, W)`` in [0, 1].

    Raises:
        ValueError: on a norm outside :data:`NORMS`.
    """
    if norm == "Linf":
        d = delta.clamp(-eps, eps)
    elif norm == "L2":
        scale = eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        d = delta * scale.view(-1, *([1] * (delta.dim() - 1)))
    elif norm == "L1":
        d = project_l1_ball(delta, eps)
    else:
        raise ValueError(f"unknown norm {norm!r}; valid: {NORMS}")
    return (x + d).clamp(0.0, 1.0)


def lookahead_params(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, lr: float
) -> dict[str, torch.Tensor]:
    """One SGD step of the classifier on CE(f(images), labels), as a new parameter dict (create_graph=True).

    The model's own parameters are neither modified nor given ``.grad``; the returned tensors stay
    differentiable with respect to whatever produced ``images`` (the noise generator), so
    ``functional_call(model, params, x)`` gives the lookahead classifier f_theta'.

    Shape:
        - images: ``(B, C, H, W)``; labels: ``(B,)``; output: name -> tensor of the parameter's shape.
    """
    params = dict(model.named_parameters())
    loss = F.cross_entropy(functional_call(model, params, (images,)), labels)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    return {name: p - lr * g for (name, p), g in zip(params.items(), grads, strict=True)}


@dataclass
class MultiNormConfig(TrainConfig):
    """Config of multi-norm adversarial training (SAT, Adv_avg, Adv_max); radii from
    :func:`robust_envs.attacks.radii_for` unless set.

    Attributes:
        eps_linf, eps_l2, eps_l1: training radii (None: the data set's threat radii).
        steps_linf, steps_l2, steps_l1: attack iterations per norm, >= 1.
        alpha_linf, alpha_l2, alpha_l1: step sizes as fractions of the radius.
        l1_quantile: SLIDE's gradient quantile (the reference's top 1 %: 0.99).
        dataset: the data set the radii are read from (set by the presets).
    """

    eps_linf: float | None = None
    eps_l2: float | None = None
    eps_l1: float | None = None
    steps_linf: int = 7
    steps_l2: int = 7
    steps_l1: int = 10
    alpha_linf: float = 0.25
    alpha_l2: float = 0.25
    alpha_l1: float = 0.125
    l1_quantile: float = 0.99
    dataset: str = "fashion_mnist"

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.steps_linf, self.steps_l2, self.steps_l1) < 1:
            raise ValueError("attack steps must be >= 1")
        radii = radii_for(self.dataset)
        self.eps_linf = radii.eps_linf if self.eps_linf is None else self.eps_linf
        self.eps_l2 = radii.eps_l2 if self.eps_l2 is None else self.eps_l2
        self.eps_l1 = radii.eps_l1 if self.eps_l1 is None else self.eps_l1

    def eps(self, norm: str) -> float:
        """Training radius of ``norm``."""
        return {"Linf": self.eps_linf, "L2": self.eps_l2, "L1": self.eps_l1}[norm]  # type: ignore[return-value]


@dataclass
class MNGACConfig(MultiNormConfig):
    """MNG-AC config.

    Attributes:
        js_weight: beta, weight of the Jensen-Shannon consistency term (reference: 12).
        lookahead_lr: step size of the one-step lookahead; None: the classifier's current learning rate
            (the reference, with SGD).
        generator_hidden: channels of the noise generator.
        generator_lr: generator learning rate (None: the classifier's ``lr``); same optimiser type.
        one_cycle: the reference's triangular schedule (0 -> lr at 2/5 of the run -> 0) instead of
            ``lr_milestones``.
    """

    js_weight: float = 12.0
    lookahead_lr: float | None = None
    generator_hidden: int = 16
    generator_lr: float | None = None
    one_cycle: bool = False


def multi_norm_attack(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, norm: str, cfg: MultiNormConfig
) -> torch.Tensor:
    """Adversarial images for ``norm`` with the config's training attack: torchattacks PGD (Linf),
    PGDL2 (L2), our SLIDE (L1), all with random start. Leaves the model in train mode.

    Shape:
        - images: ``(B, C, H, W)`` in [0, 1]; labels: ``(B,)``; output: ``(B, C, H, W)`` in [0, 1].
    """
    eps = cfg.eps(norm)
    if norm == "Linf":
        atk: torchattacks.attack.Attack = torchattacks.PGD(model, eps=eps, alpha=cfg.alpha_linf * eps,
                                                           steps=cfg.steps_linf, random_start=True)  # fmt: skip
    elif norm == "L2":
        atk = torchattacks.PGDL2(model, eps=eps, alpha=cfg.alpha_l2 * eps, steps=cfg.steps_l2, random_start=True)
    elif norm == "L1":
        atk = SLIDE(model, eps=eps, alpha=cfg.alpha_l1 * eps, steps=cfg.steps_l1, q=cfg.l1_quantile, random_start=True)
    else:
        raise ValueError(f"unknown norm {norm!r}; valid: {NORMS}")
    adv = atk(images, labels)
    model.train()
    return adv


def one_cycle_lr(step: int, total_steps: int, lr_max: float) -> float:
    """The reference's triangular schedule: linear from 0 to ``lr_max`` over the first 2/5 of the run, then
    linear to 0 at ``total_steps`` (``step`` 1-based).
    """
    t = step / total_steps
    return lr_max * (t / 0.4 if t <= 0.4 else max(0.0, (1.0 - t) / 0.6))


def _dataset_presets(extra: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {ds: {"dataset": ds, **v} for ds, v in extra.items()}


# Fashion-MNIST, CPU-sized (PGD-AT's 3 epochs over all 60k images and LeNet-5; MNG-AC measured 0.48 s per
# batch of 128 on one thread, ~11 min a seed): Linf 7 steps of eps/4 (PGD-AT's attack),
# L2 7 steps of eps/4, L1 10 steps of eps/8 (SLIDE, top 1 %); threat radii 0.1 / 1.7 / 12.
# CIFAR-10: the reference's settings (train_MNG.py): WRN-28-10, 30 epochs, SGD momentum 0.9, weight decay
# 5e-4, triangular lr peaking at 0.21, batch 128, crop + flip; Linf 10 steps of 1/255 at 8/255, L2 10 steps
# of 30/255 at 128/255, L1 20 steps of 255/255 at 2000/255; js_weight 12.
_FMNIST_MN: dict[str, Any] = {"epochs": 3, "steps_linf": 7, "steps_l2": 7, "steps_l1": 10, "alpha_linf": 0.25,
                              "alpha_l2": 0.25, "alpha_l1": 0.125}  # fmt: skip
_CIFAR_MN: dict[str, Any] = {
    "epochs": 30, "lr": 0.21, "weight_decay": 5e-4, "lr_milestones": (), "steps_linf": 10, "alpha_linf": 1 / 8,
    "steps_l2": 10, "alpha_l2": 30 / 128, "steps_l1": 20, "alpha_l1": 255 / 2000,
}  # fmt: skip
_DIGITS_MN: dict[str, Any] = {"steps_linf": 3, "steps_l2": 3, "steps_l1": 3}


class _MultiNormTrainer(Trainer):
    """Shared loop of the multi-norm trainers: the base class's epochs, with a per-batch norm sample."""

    config_cls: ClassVar[type[TrainConfig]] = MultiNormConfig


class AdvAvgTrainer(_MultiNormTrainer):
    """Adv_avg (Tramer & Boneh 2019): mean over Linf, L2, L1 of CE on each norm's adversarial examples."""

    name: ClassVar[str] = "adv_avg"
    paper: ClassVar[str] = (
        "Tramer & Boneh, Adversarial Training and Robustness for Multiple Perturbations, NeurIPS 2019 (avg)"
    )
    # Fashion-MNIST: three attacks per batch cost ~2x MNG-AC per image; 3 epochs over 30,000 images (a
    # seeded half of the training set) keep a seed near 10 min on one thread.
    presets: ClassVar[dict[str, dict[str, Any]]] = _dataset_presets(
        {"fashion_mnist": {**_FMNIST_MN, "max_train_samples": 30000}, "cifar10": _CIFAR_MN, "digits": _DIGITS_MN}
    )

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(1/3) sum_k CE(f(A_k(x)), y)``; images ``(B, C, H, W)`` in [0, 1], labels ``(B,)``."""
        cfg = self.config
        assert isinstance(cfg, MultiNormConfig)
        advs = [multi_norm_attack(model, images, labels, nrm, cfg) for nrm in NORMS]
        return sum(F.cross_entropy(model(a), labels) for a in advs) / len(advs)


class AdvMaxTrainer(_MultiNormTrainer):
    """Adv_max (Tramer & Boneh 2019): per image, CE on the norm whose adversarial example has the largest loss."""

    name: ClassVar[str] = "adv_max"
    paper: ClassVar[str] = (
        "Tramer & Boneh, Adversarial Training and Robustness for Multiple Perturbations, NeurIPS 2019 (max)"
    )
    presets: ClassVar[dict[str, dict[str, Any]]] = AdvAvgTrainer.presets

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``mean_b max_k CE(f(A_k(x_b)), y_b)``; images ``(B, C, H, W)`` in [0, 1], labels ``(B,)``."""
        cfg = self.config
        assert isinstance(cfg, MultiNormConfig)
        advs = [multi_norm_attack(model, images, labels, nrm, cfg) for nrm in NORMS]
        per = torch.stack([F.cross_entropy(model(a), labels, reduction="none") for a in advs])  # (3, B)
        return per.max(0).values.mean()


@dataclass
class MSDConfig(MultiNormConfig):
    """MSD adversarial-training config: :class:`MultiNormConfig`'s radii and ``alpha_*`` step fractions, plus the fields below.

    Attributes:
        msd_steps: MSD iterations per batch, >= 1 (each: one forward/backward and three forwards).
        msd_random_start: start MSD from a uniform Linf draw instead of 0.
    """

    msd_steps: int = 10
    msd_random_start: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.msd_steps < 1:
            raise ValueError(f"msd_steps must be >= 1, got {self.msd_steps}")


class MSDTrainer(_MultiNormTrainer):
    """MSD adversarial training (Maini, Wong & Kolter, ICML 2020): CE on :class:`robust_envs.attacks.MSD`
    examples, which pick per image and iteration the steepest-ascent step (Linf, L2 or L1) with the largest
    loss. Step lengths are the config's ``alpha_*`` fractions times the radii.

    Fashion-MNIST budget: 10 MSD iterations (10 forward/backward + 30 forwards per batch, about Adv_avg's
    24 forward/backward), 3 epochs over the same seeded 30,000 images as Adv_avg / Adv_max.
    CIFAR-10: the MNG-AC radii with 50 iterations (the MSD reference's CIFAR-10 ``num_iter``).
    """

    name: ClassVar[str] = "msd"
    paper: ClassVar[str] = (
        "Maini, Wong & Kolter, Adversarial Robustness Against the Union of Multiple Perturbation Models, ICML 2020"
    )
    config_cls: ClassVar[type[TrainConfig]] = MSDConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = _dataset_presets({
        "fashion_mnist": {**_FMNIST_MN, "max_train_samples": 30000, "msd_steps": 10},
        "cifar10": {**_CIFAR_MN, "msd_steps": 50},
        "digits": {**_DIGITS_MN, "msd_steps": 3},
    })  # fmt: skip

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``CE(f(MSD(x)), y)``; images ``(B, C, H, W)`` in [0, 1], labels ``(B,)``."""
        cfg = self.config
        assert isinstance(cfg, MSDConfig)
        atk = MSD(
            model, eps_linf=cfg.eps("Linf"), eps_l2=cfg.eps("L2"), eps_l1=cfg.eps("L1"),
            alpha_linf=cfg.alpha_linf * cfg.eps("Linf"), alpha_l2=cfg.alpha_l2 * cfg.eps("L2"),
            alpha_l1=cfg.alpha_l1 * cfg.eps("L1"), steps=cfg.msd_steps, q=cfg.l1_quantile,
            random_start=cfg.msd_random_start,
        )  # fmt: skip
        adv = atk(images, labels)
        model.train()
        return F.cross_entropy(model(adv), labels)


class MNGACTrainer(Trainer):
    """MNG-AC (Madaan et al., ICML 2021): SAT + adversarial consistency + meta noise generator.

    Overrides :meth:`train` (two optimisers, the meta step); the returned model is the classifier alone.
    """

    name: ClassVar[str] = "mng_ac"
    paper: ClassVar[str] = "Madaan, Shin & Hwang, Learning to Generate Noise for Multi-Attack Robustness, ICML 2021"
    config_cls: ClassVar[type[TrainConfig]] = MNGACConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = _dataset_presets({
        "fashion_mnist": {**_FMNIST_MN, "js_weight": 12.0, "lookahead_lr": 0.1},
        "cifar10": {**_CIFAR_MN, "js_weight": 12.0, "lookahead_lr": None, "one_cycle": True},
        "digits": {**_DIGITS_MN, "js_weight": 12.0, "lookahead_lr": 0.1},
    })  # fmt: skip

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Not used by :meth:`train` (the meta step needs the generator); SAT + AC with no noise view."""
        cfg = self.config
        assert isinstance(cfg, MNGACConfig)
        adv = multi_norm_attack(model, images, labels, random.choice(NORMS), cfg)
        logits_adv = model(adv)
        return F.cross_entropy(logits_adv, labels) + cfg.js_weight * js_consistency([model(images), logits_adv])

    def meta_step(
        self, model: nn.Module, generator: NoiseGenerator, gen_opt: torch.optim.Optimizer, x: torch.Tensor,
        y: torch.Tensor, x_adv: torch.Tensor, norm: str, lookahead_lr: float,
    ) -> float:  # fmt: skip
        """Step 2: update the generator through the one-step lookahead theta'; returns CE(f_theta'(x_adv), y)."""
        cfg = self.config
        assert isinstance(cfg, MNGACConfig)
        x_aug = project_noise(x, generator(x), norm, cfg.eps(norm))
        params = lookahead_params(model, x_aug, y, lookahead_lr)
        meta_loss = F.cross_entropy(functional_call(model, params, (x_adv,)), y)
        grads = torch.autograd.grad(meta_loss, list(generator.parameters()))
        for p, g in zip(generator.parameters(), grads, strict=True):
            p.grad = g
        gen_opt.step()
        gen_opt.zero_grad(set_to_none=True)
        return float(meta_loss.detach())

    def train(
        self,
        data: ImageSplit,
        seed: int = 0,
        device: str | torch.device = "cpu",
        on_epoch: Callable[[int, float], None] | None = None,
    ) -> nn.Module:
        """Train the classifier with MNG-AC; returns it in eval mode (the generator is discarded)."""
        cfg = self.config
        assert isinstance(cfg, MNGACConfig)
        gen = seed_everything(seed)
        rng = random.Random(seed)
        model = self.build_model(data).to(device)
        generator = NoiseGenerator(data.images.shape[1], cfg.generator_hidden).to(device)
        images, labels = training_tensors(data, cfg, gen)
        opt = make_optimizer(cfg, model.parameters())
        gen_opt = make_optimizer(cfg, generator.parameters(), lr=cfg.generator_lr)  # None: the classifier's lr
        steps_per_epoch = math.ceil(len(labels) / cfg.batch_size)
        total_steps = cfg.epochs * steps_per_epoch
        milestones = [int(m * total_steps) for m in cfg.lr_milestones]
        step = 0
        for epoch in range(1, cfg.epochs + 1):
            total, count = 0.0, 0
            for x, y in epoch_batches(images, labels, cfg, gen, device):
                step += 1
                if cfg.one_cycle:
                    lr = one_cycle_lr(step, total_steps, cfg.lr)
                else:
                    lr = cfg.lr * 0.1 ** sum(step > m for m in milestones)
                for group in opt.param_groups:
                    group["lr"] = lr
                for group in gen_opt.param_groups:
                    group["lr"] = lr if cfg.generator_lr is None else cfg.generator_lr
                model.train()
                norm = rng.choice(NORMS)  # 1. SAT
                x_adv = multi_norm_attack(model, x, y, norm, cfg)
                look = cfg.lookahead_lr if cfg.lookahead_lr is not None else lr
                self.meta_step(model, generator, gen_opt, x, y, x_adv, norm, look)  # 2. meta step
                with torch.no_grad():
                    x_aug = project_noise(x, generator(x), norm, cfg.eps(norm))
                logits_clean, logits_adv, logits_aug = model(x), model(x_adv), model(x_aug)  # 3. classifier
                loss = F.cross_entropy(logits_adv, y) + cfg.js_weight * js_consistency(
                    [logits_clean, logits_adv, logits_aug]
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(y)
                count += len(y)
            self.end_epoch(epoch, total / max(count, 1), on_epoch)
        return model.eval()
