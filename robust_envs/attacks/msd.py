"""Multi Steepest Descent (MSD), the union-of-norms attack of Maini, Wong & Kolter (2020).

Why our own code: neither torchattacks 3.3 nor foolbox has an attack that picks among Linf, L2 and L1
steps inside one iteration; the reference (https://github.com/locuslab/robust_union) is a training script,
not a library. The L1 step is SLIDE's sparse step (:class:`robust_envs.attacks.SLIDE`), the L1 projection
:func:`robust_envs.attacks.project_l1_ball`.
"""

from __future__ import annotations

import torch
import torchattacks
from torch import nn

from robust_envs.attacks.slide import project_l1_ball, sparse_l1_direction

__all__ = ["MSD", "msd_candidates"]

_NORMS = ("Linf", "L2", "L1")


def _per_row(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (ref.dim() - 1)))


def msd_candidates(
    images: torch.Tensor, delta: torch.Tensor, grad: torch.Tensor, eps: dict[str, float],
    alpha: dict[str, float], q: float = 0.99,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """One steepest-ascent step per norm from ``delta``, each projected onto its own ball and the box.

    Maini et al. (2020), Alg. 2, inner loop: ``delta_p = Proj_{B_p(eps_p)}(delta + v_p(delta))`` with
    ``v_inf = alpha_inf * sign(g)``, ``v_2 = alpha_2 * g / ||g||_2`` and ``v_1`` SLIDE's sparse step
    (signs of the coordinates at or above the ``q``-quantile of ``|g|``, the box-blocked ones zeroed, scaled
    to L1 length ``alpha_1``); then ``clip(x + delta_p, 0, 1) - x``.

    Shape:
        - images, delta, grad: ``(N, C, H, W)``; output: norm -> ``(N, C, H, W)`` perturbation.
    """
    n = images.shape[0]
    out: dict[str, torch.Tensor] = {}
    d = (delta + alpha["Linf"] * grad.sign()).clamp(-eps["Linf"], eps["Linf"])
    out["Linf"] = (images + d).clamp(0.0, 1.0) - images
    g_norm = grad.reshape(n, -1).norm(dim=1).clamp_min(1e-12)
    d = delta + alpha["L2"] * grad / _per_row(g_norm, grad)
    d = d * _per_row((eps["L2"] / d.reshape(n, -1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0), d)
    out["L2"] = (images + d).clamp(0.0, 1.0) - images
    d = project_l1_ball(delta + alpha["L1"] * sparse_l1_direction(images + delta, grad, q), eps["L1"])
    out["L1"] = (images + d).clamp(0.0, 1.0) - images
    return out


class MSD(torchattacks.attack.Attack):
    r"""Multi Steepest Descent (Maini, Wong & Kolter, ICML 2020, "Adversarial Robustness Against the Union
    of Multiple Perturbation Models", Alg. 2).

    Each iteration takes one steepest-ascent step of each norm from the current perturbation (one shared
    gradient), projects each onto its own ball, and keeps, per image, the candidate with the largest
    cross-entropy: ``delta <- argmax_{p in {inf, 2, 1}} CE(f(x + Proj_{B_p}(delta + v_p(delta))), y)``.
    Returned, per image, is the iterate with the largest loss over all iterations (as the reference's
    ``msd_v0``); it lies in (at least) the ball of the norm that produced it, i.e. in the union of the three
    balls. Cost per iteration: one forward/backward plus three forwards.

    Arguments:
        model: classifier on ``(N, C, H, W)`` in [0, 1].
        eps_linf, eps_l2, eps_l1: radii in pixel units (L1 / L2 over all ``C * H * W`` coordinates), > 0.
        alpha_linf, alpha_l2, alpha_l1: step lengths in the same units, > 0.
        steps: iterations, >= 1.
        q: SLIDE's gradient quantile for the L1 step, in (0, 1).
        random_start: start from a uniform draw in the Linf ball of ``eps_linf`` (False: from 0, as Alg. 2).

    Shape:
        - images: ``(N, C, H, W)`` float in [0, 1]; labels: ``(N,)`` int64.
        - output: ``(N, C, H, W)`` float in [0, 1], each row inside at least one of the three balls.

    Raises:
        ValueError: on a radius or step length <= 0, ``steps < 1`` or ``q`` outside (0, 1).
    """

    def __init__(
        self, model: nn.Module, eps_linf: float = 0.1, eps_l2: float = 1.7, eps_l1: float = 12.0,
        alpha_linf: float = 0.025, alpha_l2: float = 0.425, alpha_l1: float = 1.5, steps: int = 10,
        q: float = 0.99, random_start: bool = False,
    ) -> None:  # fmt: skip
        super().__init__("MSD", model)
        values = {"eps_linf": eps_linf, "eps_l2": eps_l2, "eps_l1": eps_l1, "alpha_linf": alpha_linf,
                  "alpha_l2": alpha_l2, "alpha_l1": alpha_l1}  # fmt: skip
        for key, value in values.items():
            if not value > 0:
                raise ValueError(f"MSD {key} must be > 0, got {value}")
        if steps < 1:
            raise ValueError(f"MSD steps must be >= 1, got {steps}")
        if not 0.0 < q < 1.0:
            raise ValueError(f"MSD quantile q must be in (0, 1), got {q}")
        self.eps = {"Linf": eps_linf, "L2": eps_l2, "L1": eps_l1}
        self.alpha = {"Linf": alpha_linf, "L2": alpha_l2, "L1": alpha_l1}
        self.steps = steps
        self.q = q
        self.random_start = random_start
        self.supported_mode = ["default"]
        #: how often each norm's candidate won, summed over images and iterations of the last call
        self.last_choices: dict[str, int] = dict.fromkeys(_NORMS, 0)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Adversarial images ``(N, C, H, W)`` in [0, 1] for ``images`` and ``labels`` ``(N,)``."""
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        delta = torch.zeros_like(images)
        if self.random_start:
            delta = torch.empty_like(images).uniform_(-self.eps["Linf"], self.eps["Linf"])
            delta = (images + delta).clamp(0.0, 1.0) - images
        ce = nn.CrossEntropyLoss(reduction="none")
        choices = torch.zeros(len(_NORMS), dtype=torch.long, device=images.device)
        best_delta = delta.clone()
        best_loss = torch.full((images.shape[0],), -float("inf"), device=images.device, dtype=images.dtype)
        for _ in range(self.steps):
            adv = (images + delta).requires_grad_(True)
            grad = torch.autograd.grad(ce(self.get_logits(adv), labels).sum(), adv)[0].detach()
            cands = msd_candidates(images, delta, grad, self.eps, self.alpha, self.q)
            with torch.no_grad():
                losses = torch.stack([ce(self.get_logits(images + cands[k]), labels) for k in _NORMS])  # (3, N)
            top, best = losses.max(0)
            stacked = torch.stack([cands[k] for k in _NORMS])  # (3, N, C, H, W)
            delta = stacked[best, torch.arange(images.shape[0], device=images.device)]
            improved = top > best_loss
            best_delta[improved], best_loss[improved] = delta[improved], top[improved]
            choices += torch.bincount(best, minlength=len(_NORMS))
        self.last_choices = dict(zip(_NORMS, choices.tolist(), strict=True))  # one device sync per call
        return (images + best_delta).detach()
