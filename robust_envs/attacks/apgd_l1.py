"""L1-APGD (Croce & Hein, ICML 2021, "Mind the box: l1-APGD for sparse adversarial attacks on image classifiers").

Why our own code: torchattacks 3.3's ``APGD`` / ``APGDT`` take only ``norm="Linf"`` or ``"L2"``; the reference
implementation (github.com/fra31/auto-attack, ``autopgd_base.py`` with ``norm="L1"``) is installed from git only and
the ``autoattack`` name is not on PyPI; ART 1.20's ``AutoProjectedGradientDescent(norm=1)`` is the Linf/L2 algorithm
with an L1 projection, without the sparsity adaptation and the box-aware step of the paper (on our checkpoints it is
far weaker than SLIDE, docs/evaluation.md). This module follows the reference code's L1 branch:

Notation (code -> paper, Sec. 3-4): ``eps`` -> epsilon; ``k`` (``topk``) -> the fraction of coordinates a step
updates, k / d; ``step_size`` -> eta; ``project_l1_box`` -> P_S, the projection onto
S = {delta : ||delta||_1 <= eps, x + delta in [0, 1]^d}.

1. Start: a Gaussian draw projected onto S (reference ``decr_eps_pgd``).
2. Step (Sec. 3.2): keep the coordinates whose absolute gradient is in the top ``k * d``, move along their signs
   by ``eta / ||e||_0`` each (a step of L1 length eta), then project onto S; the box enters through P_S (Sec. 3.1),
   as in the reference code.
3. Adaptive sparsity and step size (Sec. 4, "Adaptive choice of k", reference ``attack_single_run``): every
   ``max(int(0.04 * n_iter), 1)`` iterations, k <- ||delta_best||_0 / (1.5 d); if the sparsity of the best point
   fell by more than 5 % since the last check, eta <- eps and restart from the best point, else eta <- eta / 1.5,
   with eta clipped to [eps / 10, eps]. k starts at ||delta_init||_0 / (1.5 d), eta at eps (``alpha = 1``).
4. Large radii first (reference ``use_largereps``, AutoAttack's L1 setting): 30 % of the iterations at 3 eps,
   30 % at 2 eps, 40 % at eps, each stage starting from the previous stage's best point projected onto the smaller
   set. Only points found inside the final set count.
5. Losses: cross-entropy (APGD-CE) and the targeted DLR loss (APGD-T, Croce & Hein 2020 Eq. 7) over the
   ``n_target_classes`` highest non-true logits; :class:`APGDL1Ensemble` runs both, like AutoAttack's L1 version
   (APGD-CE then APGD-T).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

__all__ = ["APGDL1", "APGDL1Ensemble", "dlr_targeted_loss", "project_l1_box"]


def project_l1_box(images: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Euclidean projection of ``delta`` onto S = {d : ||d||_1 <= eps, images + d in [0, 1]}, per image.

    The problem is separable: with a multiplier ``lam >= 0`` on the L1 constraint each coordinate is
    ``clip(soft(delta_i, lam), -x_i, 1 - x_i)`` (soft-thresholding, then clipping to the box, which contains 0;
    Croce & Hein 2021, Sec. 3.1 and Lemma 3.1 solve the same problem). ``lam`` is the smallest value with
    ``||d(lam)||_1 <= eps``. ``g(lam) = sum_i min(max(|delta_i| - lam, 0), c_i)``, with ``c_i`` the room the box
    leaves in the direction of ``delta_i``, is piecewise linear and non-increasing, with breakpoints at ``|delta_i|``
    (coordinate i starts moving) and ``|delta_i| - c_i`` (it reaches the box); sorting the ``2 d`` breakpoints gives
    ``g`` at each of them by cumulative sums and ``lam`` by linear interpolation (exact, ``O(d log d)`` per image).
    A last rescaling towards 0 (which stays in the box) absorbs rounding, so the result is inside S.

    Shape:
        - images, delta: ``(N, ...)`` float, ``images`` in [0, 1]; output: the projected ``delta``, same shape.

    Raises:
        ValueError: if ``eps <= 0``.
    """
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    n = delta.shape[0]
    v = delta.reshape(n, -1).double()
    x = images.reshape(n, -1).double()
    room = torch.where(v > 0, 1.0 - x, x).clamp_min(0.0)  # c_i
    out = torch.where(v > 0, torch.minimum(v, room), torch.maximum(v, -room))  # lam = 0: the box alone
    outside = out.abs().sum(1) > eps
    if bool(outside.any()):
        a, c = v[outside].abs(), room[outside]
        # breakpoints of g, descending; slope of g (as lam decreases) +1 after |v_i|, -1 after |v_i| - c_i
        points = torch.cat([a, a - c], 1)
        change = torch.cat([torch.ones_like(a), -torch.ones_like(a)], 1)
        points, order = points.sort(1, descending=True)
        change = change.gather(1, order)
        slope = change.cumsum(1)  # slope on (points[j + 1], points[j])
        gaps = points[:, :-1] - points[:, 1:]
        g = torch.cat([torch.zeros_like(points[:, :1]), (slope[:, :-1] * gaps).cumsum(1)], 1)  # g at each point
        # first breakpoint where g reaches eps (exists: g at lam = 0 exceeds eps for these rows)
        j = (g >= eps).float().argmax(1).clamp_min(1)
        g_prev = g.gather(1, (j - 1)[:, None]).squeeze(1)
        t_prev = points.gather(1, (j - 1)[:, None]).squeeze(1)
        s_prev = slope.gather(1, (j - 1)[:, None]).squeeze(1).clamp_min(1.0)
        lam = (t_prev - (eps - g_prev) / s_prev).clamp_min(0.0)
        vo = v[outside]
        soft = vo.sign() * (vo.abs() - lam[:, None]).clamp_min(0.0)
        d = torch.minimum(soft.abs(), c) * vo.sign()
        d = d * (eps / d.abs().sum(1, keepdim=True).clamp_min(1e-30)).clamp(max=1.0)
        out[outside] = d
    return out.to(delta.dtype).reshape(delta.shape)


def dlr_targeted_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Targeted DLR loss (Croce & Hein 2020, Eq. 7): ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``.

    ``z_pi1 >= z_pi2 >= ...`` are the sorted logits. Needs at least 4 classes.

    Shape:
        - logits: ``(N, K)``; labels, targets: ``(N,)`` int64; output: ``(N,)``.
    """
    srt = logits.sort(1).values
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    z_t = logits.gather(1, targets[:, None]).squeeze(1)
    return -(z_y - z_t) / (srt[:, -1] - 0.5 * (srt[:, -3] + srt[:, -4]) + 1e-12)


def _l0(delta: torch.Tensor) -> torch.Tensor:
    """Per-row count of non-zero coordinates, ``(N,)`` float."""
    return (delta.reshape(delta.shape[0], -1) != 0).sum(1).float()


class APGDL1(torchattacks.attack.Attack):
    r"""L1-APGD (Croce & Hein 2021), one loss; the steps are in the module docstring.

    Paper: "Mind the box: l1-APGD for sparse adversarial attacks on image classifiers", ICML 2021, Sec. 3-4.
    Code: https://github.com/fra31/auto-attack (``autopgd_base.py``, ``norm="L1"``, ``use_largereps=True``).

    Arguments:
        model: classifier on ``(N, C, H, W)`` in [0, 1].
        eps: L1 radius in pixel units (sum over all ``C * H * W`` coordinates), > 0.
        steps: iterations in all (split 30 / 30 / 40 % over 3, 2, 1 eps with ``large_reps``), >= 3.
        loss: ``"ce"`` (APGD-CE) or ``"dlr-targeted"`` (APGD-T; then ``n_target_classes`` runs).
        n_target_classes: targets of APGD-T: the highest non-true logits at the clean point.
        n_restarts: random restarts per run (reference 1).
        large_reps: the 3 eps / 2 eps / eps schedule (AutoAttack's L1 setting).
        seed: seed of the random starts.

    Shape:
        - images: ``(N, C, H, W)`` float in [0, 1]; labels: ``(N,)`` int64.
        - output: ``(N, C, H, W)`` float in [0, 1] with ``||x_adv - x||_1 <= eps``; a point not fooled is returned
          unchanged (the clean image).

    Raises:
        ValueError: on ``eps <= 0``, an unknown loss or ``steps < 3``.
    """

    def __init__(
        self, model: nn.Module, eps: float = 12.0, steps: int = 100, loss: str = "ce", n_target_classes: int = 9,
        n_restarts: int = 1, large_reps: bool = True, seed: int = 0,
    ) -> None:  # fmt: skip
        super().__init__("APGDL1", model)
        if eps <= 0:
            raise ValueError(f"L1-APGD eps must be > 0, got {eps}")
        if loss not in ("ce", "dlr-targeted"):
            raise ValueError(f"L1-APGD loss must be 'ce' or 'dlr-targeted', got {loss!r}")
        if steps < 3:
            raise ValueError(f"L1-APGD steps must be >= 3, got {steps}")
        self.eps, self.steps, self.loss, self.n_target_classes = eps, steps, loss, n_target_classes
        self.n_restarts, self.large_reps, self.seed = n_restarts, large_reps, seed
        self.supported_mode = ["default"]

    # ------------------------------------------------------------------------------------------------ one run
    def _loss(self, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        if target is None:
            return F.cross_entropy(logits, y, reduction="none")
        return dlr_targeted_loss(logits, y, target)

    def _single_run(
        self, x: torch.Tensor, y: torch.Tensor, x_init: torch.Tensor, eps: float, n_iter: int,
        target: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """One APGD run at radius ``eps`` from ``x_init``: (best-loss point, fooled mask, a fooling point)."""
        n = x.shape[0]
        d = x[0].numel()
        view = (-1, *([1] * (x.dim() - 1)))
        every = max(int(0.04 * n_iter), 1)  # reference: the L1 checkpoints are every 4 % of the iterations
        step_size = torch.full((n,), eps, device=x.device)
        sp_old = _l0(x_init - x)
        topk = sp_old / d / 1.5
        x_adv = x_init.clone()

        def loss_and_grad(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            z = z.clone().requires_grad_(True)
            logits = self.get_logits(z)
            per = self._loss(logits, y, target)
            (g,) = torch.autograd.grad(per.sum(), z)
            return per.detach(), g.detach(), logits.argmax(1).detach()

        loss, grad, pred = loss_and_grad(x_adv)
        fooled = pred != y
        x_best_adv = torch.where(fooled.view(view), x_adv, x)
        loss_best, x_best, grad_best = loss.clone(), x_adv.clone(), grad.clone()
        for i in range(n_iter):
            # step 2: sparse steepest ascent in L1 (top-k coordinates), then projection onto S
            g = grad.reshape(n, -1)
            srt = g.abs().sort(1).values
            k_idx = ((1.0 - topk) * d).long().clamp(0, d - 1)
            thresh = srt.gather(1, k_idx[:, None])
            direction = torch.where(g.abs() >= thresh, g.sign(), torch.zeros_like(g))
            direction = direction / (direction.abs().sum(1, keepdim=True) + 1e-10)
            x_new = x_adv + step_size.view(view) * direction.reshape(x.shape)
            x_adv = x + project_l1_box(x, x_new - x, eps)
            loss, grad, pred = loss_and_grad(x_adv)
            now = pred != y
            x_best_adv = torch.where(now.view(view), x_adv, x_best_adv)
            fooled |= now
            better = loss > loss_best
            x_best = torch.where(better.view(view), x_adv, x_best)
            grad_best = torch.where(better.view(view), grad, grad_best)
            loss_best = torch.where(better, loss, loss_best)
            if (i + 1) % every == 0:
                # step 3: adapt sparsity k and step size eta; restart from the best point when sparsity dropped
                sp_curr = _l0(x_best - x)
                red_topk = (sp_curr / sp_old.clamp_min(1.0)) < 0.95
                topk = sp_curr / d / 1.5
                step_size = torch.where(red_topk, torch.full_like(step_size, eps), step_size / 1.5)
                step_size = step_size.clamp(eps / 10.0, eps)
                sp_old = sp_curr
                x_adv = torch.where(red_topk.view(view), x_best, x_adv)
                grad = torch.where(red_topk.view(view), grad_best, grad)
        return x_best, fooled, x_best_adv

    def _attack(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, gen: torch.Generator) -> tuple[
        torch.Tensor, torch.Tensor
    ]:  # fmt: skip
        """All stages of one restart: (fooled mask, fooling points) inside the final radius."""
        if self.large_reps:
            epss = [3 * self.eps, 2 * self.eps, self.eps]
            iters = [math.ceil(0.3 * self.steps), math.ceil(0.3 * self.steps)]
            iters.append(self.steps - sum(iters))
        else:
            epss, iters = [self.eps], [self.steps]
        noise = torch.randn(x.shape, generator=gen, device="cpu").to(x)
        x_init = x + project_l1_box(x, noise, epss[0])
        fooled, x_adv = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device), x
        for eps, n_iter in zip(epss, iters, strict=True):
            x_init = x + project_l1_box(x, x_init - x, eps)
            x_init, fooled, x_adv = self._single_run(x, y, x_init, eps, n_iter, target)
        return fooled, x_adv

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Adversarial images ``(N, C, H, W)`` in [0, 1] for ``images`` and ``labels`` ``(N,)``."""
        x = images.clone().detach().to(self.device)
        y = labels.clone().detach().to(self.device)
        out = x.clone()
        with torch.no_grad():
            logits = self.get_logits(x)
        robust = logits.argmax(1) == y
        gen = torch.Generator().manual_seed(self.seed)
        runs: list[torch.Tensor | None]
        if self.loss == "ce":
            runs = [None]
        else:
            others = logits.scatter(1, y[:, None], float("-inf"))
            ranked = others.argsort(1, descending=True)  # highest non-true logits first
            runs = [ranked[:, j] for j in range(min(self.n_target_classes, logits.shape[1] - 1))]
        for target in runs:
            for _ in range(self.n_restarts):
                idx = robust.nonzero().flatten()
                if idx.numel() == 0:
                    return out.detach()
                t = None if target is None else target[idx]
                fooled, adv = self._attack(x[idx], y[idx], t, gen)
                out[idx[fooled]] = adv[fooled]
                robust[idx[fooled]] = False
        return out.detach()


class APGDL1Ensemble(torchattacks.attack.Attack):
    r"""AutoAttack's L1 version (Croce & Hein 2021, Sec. 5): L1-APGD-CE, then L1-APGD-T on the points still robust.

    Arguments:
        model: classifier on ``(N, C, H, W)`` in [0, 1].
        eps: L1 radius in pixel units, > 0.
        steps: iterations of each run (reference 100).
        n_target_classes: targets of APGD-T (reference 9).
        seed: seed of the random starts.

    Shape:
        - images: ``(N, C, H, W)`` float in [0, 1]; labels: ``(N,)`` int64; output as :class:`APGDL1`.
    """

    def __init__(self, model: nn.Module, eps: float = 12.0, steps: int = 100, n_target_classes: int = 9,
                 seed: int = 0) -> None:  # fmt: skip
        super().__init__("APGDL1Ensemble", model)
        self.ce = APGDL1(model, eps=eps, steps=steps, loss="ce", seed=seed)
        self.targeted = APGDL1(model, eps=eps, steps=steps, loss="dlr-targeted", n_target_classes=n_target_classes,
                               seed=seed)  # fmt: skip
        self.supported_mode = ["default"]

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Adversarial images ``(N, C, H, W)`` in [0, 1] for ``images`` and ``labels`` ``(N,)``."""
        adv = self.ce(images, labels)
        with torch.no_grad():
            robust = self.get_logits(adv).argmax(1) == labels.to(adv.device)
        if bool(robust.any()):
            idx = robust.nonzero().flatten()
            adv[idx] = self.targeted(images[idx].to(adv.device), labels[idx].to(adv.device))
        return adv.detach()
