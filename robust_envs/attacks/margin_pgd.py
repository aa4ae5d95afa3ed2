"""Linf PGD on the Carlini-Wagner margin loss (the "C&W" column of ADT's table)."""

from __future__ import annotations

import torch
import torchattacks

__all__ = ["MarginPGD", "margin_loss"]


def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample Carlini-Wagner margin ``max_{j != y} z_j - z_y`` (Carlini & Wagner 2017, loss f_6 with kappa = inf).

    Positive exactly when the sample is misclassified; an attack maximises it.

    Shape:
        - logits: ``(N, K)`` float; labels: ``(N,)`` int64 in [0, K).
        - output: ``(N,)`` float.
    """
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.clone()
    others.scatter_(1, labels[:, None], float("-inf"))
    return others.max(1).values - true


class MarginPGD(torchattacks.attack.Attack):
    r"""Linf PGD with random start that ascends the C&W margin loss instead of cross-entropy.

    This is the "C&W" attack of Madry et al. (2018) and TRADES / ADT evaluation tables
    (Dong et al. 2020, seed 001: "C&W" = PGD-30 on the margin loss ``max_{j != y} z_j - z_y``):
    ``x_{k+1} = Proj_{B_inf(x, eps) cap [0,1]^d}(x_k + alpha * sign(grad margin(x_k)))``.
    The margin does not saturate the way softmax cross-entropy does, so it still has a gradient on
    confidently classified points.

    Arguments:
        model: classifier on ``(N, C, H, W)`` in [0, 1].
        eps: Linf radius in [0, 1] pixel units.
        alpha: step size in pixel units.
        steps: number of iterations.
        random_start: start at a uniform point of the Linf ball (Madry et al. 2018).

    Shape:
        - images: ``(N, C, H, W)`` float in [0, 1]; labels: ``(N,)`` int64.
        - output: ``(N, C, H, W)`` float in [0, 1] with ``|x_adv - x|_inf <= eps``.
    """

    def __init__(
        self, model: torch.nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 30,
        random_start: bool = True,
    ) -> None:  # fmt: skip
        super().__init__("MarginPGD", model)
        self.eps = eps
        self.alpha = alpha
        self.steps = steps
        self.random_start = random_start
        self.supported_mode = ["default"]

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Adversarial images ``(N, C, H, W)`` in [0, 1] for ``images`` and ``labels`` ``(N,)``."""
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        adv = images.clone()
        if self.random_start:
            adv = torch.clamp(adv + torch.empty_like(adv).uniform_(-self.eps, self.eps), 0.0, 1.0)
        for _ in range(self.steps):
            adv.requires_grad_(True)
            cost = margin_loss(self.get_logits(adv), labels).sum()
            grad = torch.autograd.grad(cost, adv)[0]
            adv = adv.detach() + self.alpha * grad.sign()
            adv = torch.clamp(images + torch.clamp(adv - images, -self.eps, self.eps), 0.0, 1.0).detach()
        return adv
