"""Sparse L1 Descent (SLIDE), the L1 attack of Tramer & Boneh (2019) that MNG-AC evaluates with.

Why our own code: torchattacks 3.3 has no L1 attack, the AutoAttack package (APGD-L1) is not on PyPI, and
foolbox 3.3.4's ``SparseL1DescentAttack.project`` shrinks every row of a batch as soon as one row leaves
the ball, which for the rows still inside gives a negative threshold and pushes them outward (past eps).
Here the projection (Duchi et al. 2008) touches only the rows outside the ball.
"""

from __future__ import annotations

import torch
import torchattacks
from torch import nn

__all__ = ["SLIDE", "project_l1_ball", "sparse_l1_direction"]


def project_l1_ball(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Euclidean projection of each row onto the L1 ball of radius ``eps`` (Duchi et al. 2008, Fig. 1).

    Rows already inside the ball are returned unchanged.

    Shape:
        - delta: ``(N, ...)`` float; output: same shape, each row with ``||row||_1 <= eps`` (up to float error).

    Raises:
        ValueError: if ``eps <= 0``.
    """
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    flat = delta.reshape(delta.shape[0], -1)
    norms = flat.abs().sum(1)
    outside = norms > eps
    if not bool(outside.any()):
        return delta
    v = flat[outside]
    u = v.abs()
    mu, _ = torch.sort(u, dim=1, descending=True)
    cumsum = mu.cumsum(1)
    ar = torch.arange(1, u.shape[1] + 1, device=u.device, dtype=u.dtype)
    # rho = the largest j with mu_j - (cumsum_j - eps) / j > 0 (1-based); it always exists for rows outside.
    cond = (mu - (cumsum - eps) / ar) > 0
    rho = (cond * ar).argmax(1)  # index of the last True (ar is increasing)
    theta = (cumsum.gather(1, rho[:, None]).squeeze(1) - eps) / (rho + 1).to(u.dtype)
    projected = torch.sign(v) * torch.clamp(u - theta[:, None], min=0.0)
    out = flat.clone()
    out[outside] = projected
    return out.reshape(delta.shape)


def sparse_l1_direction(adv: torch.Tensor, grad: torch.Tensor, q: float) -> torch.Tensor:
    """SLIDE's step direction: ``e = sign(g) * 1[|g| >= P_q(|g|)] / ||.||_1`` per image, after zeroing the
    coordinates where the box [0, 1] blocks the move (``adv`` at 0 with ``g < 0``, or at 1 with ``g > 0``).

    Shape:
        - adv, grad: ``(N, C, H, W)``; output: ``(N, C, H, W)``, each row of unit L1 norm (0 where ``g`` is 0).
    """
    n = adv.shape[0]
    blocked = ((adv <= 0.0) & (grad < 0)) | ((adv >= 1.0) & (grad > 0))
    flat = torch.where(blocked, torch.zeros_like(grad), grad).reshape(n, -1)
    thresh = torch.quantile(flat.abs(), q, dim=1, keepdim=True)
    direction = torch.where(flat.abs() >= thresh, flat.sign(), torch.zeros_like(flat))
    return (direction / direction.abs().sum(1, keepdim=True).clamp_min(1.0)).reshape(grad.shape)


class SLIDE(torchattacks.attack.Attack):
    r"""Sparse L1 Descent attack, SLIDE (Tramer & Boneh, NeurIPS 2019).

    Paper: "Adversarial Training and Robustness for Multiple Perturbations", Sec. 3 / App. D.
    Code: https://github.com/ftramer/MultiRobustness (reference implementation).

    Each step keeps only the coordinates whose absolute gradient lies at or above the ``q``-quantile
    (after zeroing coordinates the box [0, 1] blocks), takes their signs, scales the direction to unit L1
    norm and moves by ``alpha``; then projects onto the L1 ball and clips to [0, 1]:
    ``e = sign(g) * 1[|g| >= P_q(|g|)]``, ``delta <- Proj_{B_1(eps)}(delta + alpha * e / ||e||_1)``,
    ``x_adv = clip(x + delta, 0, 1)``. Clipping moves coordinates toward ``x``, so the L1 norm stays
    within ``eps``. MNG-AC (Madaan et al. 2021) evaluates with q = 99 %, 100 steps, alpha ~= eps / 8.

    Arguments:
        model: classifier on ``(N, C, H, W)`` in [0, 1].
        eps: L1 radius in pixel units (sum over all ``C * H * W`` coordinates), > 0.
        alpha: L1 length of each step.
        steps: number of iterations.
        q: gradient quantile in (0, 1); 0.99 updates the top 1 % of coordinates.
        random_start: start from a Laplace draw rescaled into the ball (as MNG-AC's evaluation does).

    Shape:
        - images: ``(N, C, H, W)`` float in [0, 1]; labels: ``(N,)`` int64.
        - output: ``(N, C, H, W)`` float in [0, 1] with ``||x_adv - x||_1 <= eps``.

    Raises:
        ValueError: on ``eps <= 0`` or ``q`` outside (0, 1).
    """

    def __init__(
        self, model: nn.Module, eps: float = 10.0, alpha: float = 1.0, steps: int = 100, q: float = 0.99,
        random_start: bool = False,
    ) -> None:  # fmt: skip
        super().__init__("SLIDE", model)
        if eps <= 0:
            raise ValueError(f"SLIDE eps must be > 0, got {eps}")
        if not 0.0 < q < 1.0:
            raise ValueError(f"SLIDE quantile q must be in (0, 1), got {q}")
        self.eps = eps
        self.alpha = alpha
        self.steps = steps
        self.q = q
        self.random_start = random_start
        self.supported_mode = ["default"]

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Adversarial images ``(N, C, H, W)`` in [0, 1] for ``images`` and ``labels`` ``(N,)``."""
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        n = images.shape[0]
        delta = torch.zeros_like(images)
        if self.random_start:
            delta = torch.distributions.Laplace(0.0, 1.0).sample(images.shape).to(images)
            norms = delta.reshape(n, -1).abs().sum(1).clamp_min(1e-12)
            radius = torch.rand(n, device=images.device, dtype=images.dtype) * self.eps
            delta = delta * (radius / norms).view(n, *([1] * (images.dim() - 1)))
            delta = torch.clamp(images + delta, 0.0, 1.0) - images
        loss = nn.CrossEntropyLoss(reduction="sum")
        for _ in range(self.steps):
            adv = (images + delta).requires_grad_(True)
            grad = torch.autograd.grad(loss(self.get_logits(adv), labels), adv)[0].detach()
            delta = delta + self.alpha * sparse_l1_direction(adv.detach(), grad, self.q)
            delta = project_l1_ball(delta, self.eps)
            delta = torch.clamp(images + delta, 0.0, 1.0) - images
        return (images + delta).detach()
