"""Where the Lipschitz singularity is: the noise network's sensitivity to its timestep input, measured.

Seed 000 (Hong, sec. 5.1.3) attacks DDIM sampling by perturbing the *timestep* the noise network sees, near
t = 0, where Yang et al. 2023 ("Eliminating Lipschitz Singularities in Diffusion Models", E-TSDM, Eq. 1)
show ``d eps / d t`` blows up. This probe measures, on real Fashion-MNIST test images pushed through the
forward process, how much a timestep perturbation ``delta`` moves

1. the noise prediction (relative): ``S_eps = ||eps(x_t, tau + delta) - eps(x_t, tau)|| / (|delta| ||eps(x_t, tau)||)``;
2. the x0 prediction (seed 000 Eq. 10, absolute, per-pixel RMS per timestep unit):
   ``S_x0 = rms(x0(x_t, tau + delta) - x0(x_t, tau)) / |delta|`` with ``x0(x_t, s) = (x_t - sqrt(1 - ab_t)
   eps(x_t, s)) / sqrt(ab_t)``; ``ab_t = alpha_bar[t]`` stays fixed, only the network input moves (as in
   the attack), so ``S_x0 = sqrt((1 - ab_t) / ab_t) * rms(delta eps) / |delta|``;
3. x_{t-1} after one deterministic DDIM step (sigma = 0, DDIM Eq. 12) from x_t with the perturbed eps,
   same units as 2.

Notation (code -> paper): ``t`` is the *paper* step (1..T, ``alpha_bar[t]``); ``tau = t - 1`` is the
*network* timestep it is fed (diffusers convention, :func:`robust_envs.diffusion.model_timestep`);
``delta`` is added to ``tau`` as a float tensor so fractional values reach the sinusoidal embedding.
Norms are per image over all pixels; each statistic is a per-image value, then mean and 95% CI (Student t)
over images. Also measured, per t:

- the finite difference along the forward trajectory (same x0, same noise): ``||eps(x_{t+1}, tau + 1) -
  eps(x_t, tau)|| / ||eps(x_t, tau)||`` (per unit step; data and timestep move together);
- the seed's attack itself: one draw ``clip(0.01 N(0, 1), -0.05, 0.05)`` per image, and the RMS change of
  x0 it causes (absolute, not per unit);
- the E-TSDM-style inference defence of rounding the network's timestep to the training grid:
  ``round(tau + delta)`` (nearest integer, ties up: ``floor(s + 0.5)``), clamped to ``[0, T - 1]``.
  Every |delta| < 0.5 maps back to ``tau`` exactly; the probe checks it with a separate forward pass.

Results go to ``benchmarks/results/singularity_probe.json`` (atomic write); ``docs/singularity.md`` and
``docs/figures/singularity.png`` are generated from it.

Usage::

    python -m benchmarks.singularity_probe --n 256
    python -m benchmarks.singularity_probe --render-only     # regenerate the doc and figure from the JSON
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from robust_envs.diffusion import NoiseModel, TimestepAttack, ddim_step, load_noise_model, model_timestep

__all__ = [
    "DEFAULT_DELTAS",
    "DEFAULT_TS",
    "TimestepSensitivity",
    "main",
    "render",
    "round_timestep",
    "summarise",
    "timestep_sensitivity",
]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "singularity_probe.json"
DOC = ROOT / "docs" / "singularity.md"
FIGURE = ROOT / "docs" / "figures" / "singularity.png"

#: paper steps t (1..T = 1000), roughly log-spaced
DEFAULT_TS = (1, 2, 3, 4, 5, 7, 10, 14, 20, 30, 40, 50, 70, 100, 140, 200, 300, 400, 500, 600, 700, 800, 900, 1000)
#: timestep perturbations, network timestep units; the negative ones reach tau < 0 at t = 1, as the seed's attack does
DEFAULT_DELTAS = (0.05, 0.5, 1.0, 5.0, 50.0, -0.05, -0.5, -1.0)
#: rows of the doc's tables (paper steps)
TABLE_TS = (1, 2, 3, 5, 10, 20, 50, 100, 500, 1000)


def round_timestep(tau: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """The E-TSDM-style defence: a network timestep rounded to the training grid.

    ``floor(tau + 0.5)`` (nearest integer, ties up), clamped to ``[0, T - 1]``; dtype and shape kept.
    Any ``tau = k + delta`` with integer ``k`` in the grid and ``-0.5 <= delta < 0.5`` maps to ``k`` exactly.
    """
    return torch.floor(tau + 0.5).clamp_(0, num_train_timesteps - 1)


@dataclass(frozen=True)
class TimestepSensitivity:
    """Per-image results of :func:`timestep_sensitivity`; ``n_t = len(ts)``, ``n_d = len(deltas)``, N images.

    All tensors are float64 on the CPU. "rate" means per network-timestep unit (divided by ``|delta|``),
    "rms" a root mean square over the pixels of one image (data space, images in [-1, 1]).

    Attributes:
        ts: paper steps t (the network sees ``tau = t - 1``).
        deltas: perturbations of tau, timestep units.
        eps_rel: ``(n_t, n_d, N)`` ``||eps(tau + delta) - eps(tau)|| / (|delta| ||eps(tau)||)``.
        x0_rate: ``(n_t, n_d, N)`` ``rms(x0(tau + delta) - x0(tau)) / |delta|`` (alpha_bar_t fixed).
        x_prev_rate: ``(n_t, n_d, N)`` the same for x_{t-1} after one sigma = 0 DDIM step t -> t - 1.
        eps_rel_rounded, x0_rate_rounded, x_prev_rate_rounded: the same with the network fed
            ``round_timestep(tau + delta)`` (still divided by the unrounded ``|delta|``).
        rounded_exact: ``(n_t, n_d)`` bool, the rounded forward pass equals the unperturbed one bit for bit.
        eps_rms: ``(n_t, N)`` rms of eps(x_t, tau) per image (about 1 for a good model).
        trajectory_eps_rel: ``(n_t, N)`` ``||eps(x_{t+1}, tau + 1) - eps(x_t, tau)|| / ||eps(x_t, tau)||``
            along the forward path (same x0 and noise); NaN at t = T.
        seed_delta: ``(n_t, N)`` the seed's draw ``clip(0.01 N(0,1), -0.05, 0.05)`` per image.
        seed_x0_change: ``(n_t, N)`` rms x0 change under that draw (absolute, not per unit).
        seed_x0_change_rounded: ``(n_t, N)`` the same with rounding (0 when the defence removes it).
    """

    ts: tuple[int, ...]
    deltas: tuple[float, ...]
    eps_rel: torch.Tensor
    x0_rate: torch.Tensor
    x_prev_rate: torch.Tensor
    eps_rel_rounded: torch.Tensor
    x0_rate_rounded: torch.Tensor
    x_prev_rate_rounded: torch.Tensor
    rounded_exact: torch.Tensor
    eps_rms: torch.Tensor
    trajectory_eps_rel: torch.Tensor
    seed_delta: torch.Tensor
    seed_x0_change: torch.Tensor
    seed_x0_change_rounded: torch.Tensor


_PER_DELTA = ("eps_rel", "x0_rate", "x_prev_rate", "eps_rel_rounded", "x0_rate_rounded", "x_prev_rate_rounded")


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).pow(2).mean(1).sqrt()


def _norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1)


def _effect(
    x_t: torch.Tensor, e: torch.Tensor, e0: torch.Tensor, step0: Any, ab_t: float, ab_prev: float, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image (S_eps, S_x0, S_x_{t-1}) of the perturbed eps ``e`` against ``e0`` (``step0``: its DDIM step)."""
    step = ddim_step(x_t, e, ab_t, ab_prev, 0.0)
    return (_norm(e - e0) / (scale * _norm(e0)), _rms(step.x0_pred - step0.x0_pred) / scale,
            _rms(step.x_prev - step0.x_prev) / scale)  # fmt: skip


@torch.no_grad()
def timestep_sensitivity(
    model: NoiseModel | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    ts: Sequence[int],
    deltas: Sequence[float],
    generator: torch.Generator,
    alpha_bar: torch.Tensor | None = None,
    progress: Callable[[int], None] | None = None,
) -> TimestepSensitivity:
    """Measure the timestep sensitivity of eps, x0_pred and x_{t-1} (see the module docstring).

    Args:
        model: the noise network ``model(x_t, tau)`` with ``tau`` an ``(N,)`` float tensor (a
            :class:`~robust_envs.diffusion.NoiseModel`, whose schedule is used unless ``alpha_bar`` is given).
        x0: ``(N, C, H, W)`` float images in [-1, 1] on the model's device.
        ts: paper steps in 1..T.
        deltas: nonzero perturbations of the network timestep, timestep units.
        generator: draws the forward-process noise (one ``(N, C, H, W)`` draw shared by every t, so the
            trajectory difference compares the same path) and then the seed's attack draws (one per t).
        alpha_bar: ``(T + 1,)`` schedule; default ``model.schedule.alpha_bar``.
        progress: called with 1 after each t.

    Returns:
        :class:`TimestepSensitivity`, per-image values.

    Raises:
        ValueError: if a t is outside 1..T or a delta is 0.
    """
    if alpha_bar is None:
        alpha_bar = model.schedule.alpha_bar  # type: ignore[union-attr]
    alpha_bar = alpha_bar.to(torch.float64).cpu()
    T = alpha_bar.numel() - 1
    ts, deltas = tuple(int(t) for t in ts), tuple(float(d) for d in deltas)
    if any(not 1 <= t <= T for t in ts):
        raise ValueError(f"every t must be in 1..T={T}, got {ts}")
    if any(d == 0 or not math.isfinite(d) for d in deltas):
        raise ValueError(f"deltas must be finite and nonzero, got {deltas}")
    n, device = x0.shape[0], x0.device
    noise = torch.randn(x0.shape, generator=generator, device=device, dtype=torch.float32)
    attack = TimestepAttack()  # the seed's: scale 0.01, clip 0.05

    def x_at(t: int) -> torch.Tensor:
        ab = float(alpha_bar[t])
        return (math.sqrt(ab) * x0.double() + math.sqrt(1 - ab) * noise.double()).float()

    def eps_at(x: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
        tau = tau if torch.is_tensor(tau) else torch.full((n,), tau, dtype=torch.float32, device=device)
        return model(x, tau.to(device, torch.float32)).double()

    shape = (len(ts), len(deltas), n)
    out = {k: torch.zeros(shape, dtype=torch.float64) for k in _PER_DELTA}
    rounded_exact = torch.zeros(shape[:2], dtype=torch.bool)
    per_t = {k: torch.full((len(ts), n), math.nan, dtype=torch.float64) for k in
             ("eps_rms", "trajectory_eps_rel", "seed_delta", "seed_x0_change", "seed_x0_change_rounded")}  # fmt: skip
    for i, t in enumerate(ts):
        tau = float(model_timestep(t))
        ab_t, ab_prev = float(alpha_bar[t]), float(alpha_bar[t - 1])
        x_t = x_at(t)
        x_t64 = x_t.double()
        e0 = eps_at(x_t, tau)
        step0 = ddim_step(x_t64, e0, ab_t, ab_prev, 0.0)
        cache: dict[float, torch.Tensor] = {}  # unrounded forwards, keyed by the float32 timestep value
        cache_r: dict[float, torch.Tensor] = {}  # rounded forwards: separate passes, so exactness is measured

        for j, d in enumerate(deltas):
            s = float(torch.tensor(tau + d, dtype=torch.float32))
            if s not in cache:
                cache[s] = eps_at(x_t, s)
            r = float(round_timestep(torch.tensor(tau + d, dtype=torch.float32), T))
            if r not in cache_r:
                cache_r[r] = eps_at(x_t, r)
            for suffix, e in (("", cache[s]), ("_rounded", cache_r[r])):
                vals = _effect(x_t64, e, e0, step0, ab_t, ab_prev, abs(d))
                for key, val in zip(("eps_rel", "x0_rate", "x_prev_rate"), vals, strict=True):
                    out[key + suffix][i, j] = val.cpu()
            rounded_exact[i, j] = bool(torch.equal(cache_r[r], e0))
        per_t["eps_rms"][i] = _rms(e0).cpu()
        if t < T:
            e_next = eps_at(x_at(t + 1), tau + 1)
            per_t["trajectory_eps_rel"][i] = (_norm(e_next - e0) / _norm(e0)).cpu()
        gens = [generator] * n
        delta = attack.sample_delta(gens, device)
        tau_vec = torch.full((n,), tau, dtype=torch.float32, device=device) + delta
        x0_att = ddim_step(x_t64, eps_at(x_t, tau_vec), ab_t, ab_prev, 0.0).x0_pred
        x0_att_r = ddim_step(x_t64, eps_at(x_t, round_timestep(tau_vec, T)), ab_t, ab_prev, 0.0).x0_pred
        per_t["seed_delta"][i] = delta.double().cpu()
        per_t["seed_x0_change"][i] = _rms(x0_att - step0.x0_pred).cpu()
        per_t["seed_x0_change_rounded"][i] = _rms(x0_att_r - step0.x0_pred).cpu()
        if progress is not None:
            progress(1)
    return TimestepSensitivity(ts=ts, deltas=deltas, rounded_exact=rounded_exact, **out, **per_t)


def mean_ci(x: torch.Tensor | np.ndarray) -> dict[str, float]:
    """Mean and 95% CI half-width (Student t) over the finite entries of ``x``."""
    a = np.asarray(x, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size < 2:
        return {"mean": float(a.mean()) if a.size else math.nan, "ci95": math.nan}
    half = float(stats.t.ppf(0.975, a.size - 1) * a.std(ddof=1) / math.sqrt(a.size))
    return {"mean": float(a.mean()), "ci95": half}


def summarise(res: TimestepSensitivity, alpha_bar: torch.Tensor) -> list[dict[str, Any]]:
    """One JSON row per t: schedule values, per-delta mean +- CI of every statistic, the per-t statistics."""
    rows = []
    for i, t in enumerate(res.ts):
        ab = float(alpha_bar[t])
        row: dict[str, Any] = {
            "t": t, "tau": t - 1, "alpha_bar": ab, "sqrt_one_minus_alpha_bar": math.sqrt(1 - ab),
            "x0_eps_weight": math.sqrt((1 - ab) / ab), "eps_rms": mean_ci(res.eps_rms[i]),
            "trajectory_eps_rel": mean_ci(res.trajectory_eps_rel[i]),
            "seed_abs_delta": mean_ci(res.seed_delta[i].abs()),
            "seed_x0_change": mean_ci(res.seed_x0_change[i]),
            "seed_x0_change_rounded_max": float(res.seed_x0_change_rounded[i].max()),
            "deltas": [],
        }  # fmt: skip
        for j, d in enumerate(res.deltas):
            cell: dict[str, Any] = {"delta": d, "rounded_exact": bool(res.rounded_exact[i, j])}
            for key in _PER_DELTA:
                cell[key] = mean_ci(getattr(res, key)[i, j])
            row["deltas"].append(cell)
        rows.append(row)
    return rows


def save(data: dict[str, Any], path: Path = RESULTS) -> None:
    """Write the results JSON atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------- rendering


def _cell(row: dict[str, Any], delta: float) -> dict[str, Any]:
    return next(c for c in row["deltas"] if c["delta"] == delta)


def _fmt(v: dict[str, float]) -> str:
    return f"{v['mean']:.3g} ± {v['ci95']:.2g}"


def plot(data: dict[str, Any], path: Path = FIGURE) -> None:
    """Log-log figure: sensitivity vs t, one line per positive delta; eps / x0 / x_{t-1} panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    ts = np.array([r["t"] for r in rows], dtype=float)
    deltas = [d for d in data["meta"]["deltas"] if d > 0]
    panels = (("eps_rel", "eps: ||Δeps|| / (|δ| ||eps||)"), ("x0_rate", "x0_pred: rms Δx0 / |δ|"),
              ("x_prev_rate", "x_{t-1} (DDIM σ=0): rms Δx / |δ|"))  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(deltas)))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for d, c in zip(deltas, colors, strict=True):
            m = np.array([_cell(r, d)[key]["mean"] for r in rows])
            h = np.array([_cell(r, d)[key]["ci95"] for r in rows])
            ax.plot(ts, m, "o-", ms=3, color=c, label=f"δ = {d:g}")
            ax.fill_between(ts, np.clip(m - h, 1e-12, None), m + h, color=c, alpha=0.2)
        if key == "eps_rel":
            tr = np.array([r["trajectory_eps_rel"]["mean"] for r in rows])
            ax.plot(ts, tr, "k--", lw=1, label="along the trajectory\n(x_t and t both move, per step)")
        if key == "x0_rate":
            for y, name, va in ((2 / 255, "one grey level (2/255)", "top"), (0.01, "0.01", "bottom")):
                ax.axhline(y, color="grey", lw=0.7, ls=":")
                ax.text(ts[0], y, f" {name} per unit", va=va, ha="left", fontsize=7, color="grey")
        ax.set(xscale="log", yscale="log", xlabel="paper step t (network sees t - 1 + δ)", title=title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Timestep sensitivity of `{data['meta']['model']}` on {data['meta']['n']} Fashion-MNIST test "
                 "images (mean, 95% CI)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(data: dict[str, Any]) -> str:
    """The Markdown report, generated from the JSON."""
    meta, rows = data["meta"], data["rows"]
    by_t = {r["t"]: r for r in rows}
    table_ts = [t for t in TABLE_TS if t in by_t]
    pos = [d for d in meta["deltas"] if d > 0]
    neg = [d for d in meta["deltas"] if d < 0]
    lines = [
        "# Where the singularity is, measured",
        "",
        "Generated by `python -m benchmarks.singularity_probe " + meta["argv"] + "` from",
        "`benchmarks/results/singularity_probe.json`; do not edit by hand.",
        "",
        f"Model: `{meta['model']}`; {meta['n']} Fashion-MNIST test images (the first {meta['n']}, scaled to [-1, 1]),",
        "pushed through the forward process `x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) z` with one seeded noise draw z",
        f"(seed {meta['seed']}) shared by every t. Hardware: {meta['hardware']}; wall time {meta['wall_s']:.0f} s.",
        "",
        "**Conventions.** `t` is the paper step (1..T = 1000, `alpha_bar[t]`); the network is fed `tau = t - 1`",
        "(diffusers convention), and the perturbation `δ` is added to `tau` as a float tensor. Every statistic is",
        "computed per image, then averaged; `±` is the 95% CI (Student t) over images. Only the network's input",
        "moves; `alpha_bar[t]` in the x0 formula stays fixed, as in the seed's attack.",
        "",
        "- `S_eps = ||eps(x_t, tau+δ) - eps(x_t, tau)|| / (|δ| ||eps(x_t, tau)||)`: relative, per timestep unit.",
        "- `S_x0 = rms(x0(tau+δ) - x0(tau)) / |δ|` with `x0 = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)` (seed 000",
        "  Eq. 10): absolute, per pixel (images in [-1, 1]), per timestep unit. `S_x0 = sqrt((1-ab_t)/ab_t) *",
        "  rms(Δeps) / |δ|`: the eps change is weighted by `sqrt((1-ab_t)/ab_t)`, 0.01 at t = 1.",
        "- `S_x_{t-1}`: the same for x_{t-1} after one deterministic DDIM step (σ = 0) t -> t - 1 with the",
        "  perturbed eps.",
        "- Near t = T: `tau + 50` leaves the training range (0..999) for t > 950, and the x0 weight",
        "  `sqrt((1-ab_t)/ab_t)` is about 160 at t = 1000, which is why S_x0 rises there.",
        "",
        "![timestep sensitivity](figures/singularity.png)",
        "",
    ]
    for key, title in (("eps_rel", "S_eps (relative, per unit)"), ("x0_rate", "S_x0 (per pixel rms, per unit)"),
                       ("x_prev_rate", "S_x_{t-1} (per pixel rms, per unit)")):  # fmt: skip
        lines += [f"## {title}, δ > 0", "",
                  "| t (tau) | sqrt(1-ab_t) | " + " | ".join(f"δ = {d:g}" for d in pos) + " |",
                  "|---" * (2 + len(pos)) + "|"]  # fmt: skip
        for t in table_ts:
            r = by_t[t]
            lines.append(f"| {t} ({t - 1}) | {r['sqrt_one_minus_alpha_bar']:.4f} | "
                         + " | ".join(_fmt(_cell(r, d)[key]) for d in pos) + " |")  # fmt: skip
        lines.append("")
    if neg:
        lines += ["## Negative δ (S_eps / S_x0)", "",
                  "At t = 1 (tau = 0) a negative δ feeds the network a timestep below its training range, as the "
                  "seed's attack does half the time.", "",
                  "| t (tau) | " + " | ".join(f"δ = {d:g}" for d in neg) + " |", "|---" * (1 + len(neg)) + "|"]  # fmt: skip
        for t in table_ts:
            r = by_t[t]
            lines.append(f"| {t} ({t - 1}) | " + " | ".join(
                f"{_cell(r, d)['eps_rel']['mean']:.3g} / {_cell(r, d)['x0_rate']['mean']:.3g}" for d in neg) + " |")  # fmt: skip
        lines.append("")
    lines += ["## Along the trajectory, and the seed's attack", "",
              "`traj` = `||eps(x_{t+1}, tau+1) - eps(x_t, tau)|| / ||eps(x_t, tau)||` on the forward path (same x0 "
              "and noise: data and timestep move together by one step). `seed |δ|`, `seed Δx0`: one draw "
              "`clip(0.01 N(0,1), ±0.05)` per image and the rms x0 change it causes (absolute); `rounded`: the largest "
              "rms x0 change over the images when the network's timestep is rounded.", "",
              "| t (tau) | rms eps | traj | seed mean abs δ | seed Δx0 (rms/pixel) | seed Δx0, rounded (max) |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for t in table_ts:
        r = by_t[t]
        tr = r["trajectory_eps_rel"]
        lines.append(f"| {t} ({t - 1}) | {r['eps_rms']['mean']:.3f} | "
                     f"{_fmt(tr) if math.isfinite(tr['mean']) else 'n/a (t = T)'} | {r['seed_abs_delta']['mean']:.4f} | "
                     f"{r['seed_x0_change']['mean']:.2e} ± {r['seed_x0_change']['ci95']:.1e} | "
                     f"{r['seed_x0_change_rounded_max']:.1e} |")  # fmt: skip
    lines.append("")
    lines += _rounding_section(data) + _reading(data)
    return "\n".join(lines) + "\n"


def _rounding_section(data: dict[str, Any]) -> list[str]:
    meta, rows = data["meta"], data["rows"]
    sub = [d for d in meta["deltas"] if abs(d) < 0.5 or d == -0.5]
    exact = all(_cell(r, d)["rounded_exact"] for r in rows for d in sub)
    seed_zero = max(r["seed_x0_change_rounded_max"] for r in rows)
    lines = ["## The rounding defence", "",
             "The network is fed `floor(tau + δ + 0.5)` clamped to [0, T - 1] (nearest grid point, ties up), an "
             "inference-time E-TSDM-style option. Each rounded timestep was run through the network as its own "
             "forward pass and compared bit for bit with the unperturbed one.", "",
             f"- δ in {{{', '.join(f'{d:g}' for d in sub)}}} (all |δ| < 0.5, and δ = -0.5, which rounds up to tau): "
             f"output {'identical to the unperturbed one at every t (bit for bit)' if exact else 'NOT identical everywhere'}. "
             f"Under the seed's own draws (|δ| <= 0.05) the largest rms x0 change with rounding, over all t and "
             f"images, is {seed_zero:.1g}"
             + (": rounding removes the seed's attack entirely." if seed_zero == 0 else "."),
             "- δ >= 0.5 survives rounding: it becomes a whole step (δ = 0.5 -> +1, δ = 5 and 50 unchanged, except "
             "where tau + δ passes T - 1 and the clamp cuts it). The rounded sensitivity, still divided by the "
             "unrounded |δ|:", "",
             "| t (tau) | " + " | ".join(f"δ = {d:g}: S_eps / S_x0" for d in meta["deltas"] if d >= 0.5) + " |",
             "|---" * (1 + len([d for d in meta["deltas"] if d >= 0.5])) + "|"]  # fmt: skip
    by_t = {r["t"]: r for r in rows}
    for t in [t for t in TABLE_TS if t in by_t]:
        r = by_t[t]
        lines.append(f"| {t} ({t - 1}) | " + " | ".join(
            f"{_cell(r, d)['eps_rel_rounded']['mean']:.3g} / {_cell(r, d)['x0_rate_rounded']['mean']:.3g}"
            for d in meta["deltas"] if d >= 0.5) + " |")  # fmt: skip
    return lines + [""]


def _reading(data: dict[str, Any]) -> list[str]:
    meta, rows = data["meta"], data["rows"]
    by_t = {r["t"]: r for r in rows}
    small = min((d for d in meta["deltas"] if d > 0), default=None)
    if small is None:
        return []
    eps = {r["t"]: _cell(r, small)["eps_rel"]["mean"] for r in rows}
    x0 = {r["t"]: _cell(r, small)["x0_rate"]["mean"] for r in rows}
    unit = {r["t"]: _cell(r, 1.0)["eps_rel"]["mean"] for r in rows} if 1.0 in meta["deltas"] else eps
    peak_t = max(eps, key=eps.get)
    peak_unit = max(unit, key=unit.get)
    mid = 500 if 500 in eps else sorted(eps)[len(eps) // 2]
    low = [t for t in eps if t <= 20]
    lines = ["## Reading", "",
             f"- **Where the spike is.** At δ = {small:g} the eps sensitivity peaks at paper step t = {peak_t} "
             f"(network timestep {peak_t - 1}) with {eps[peak_t]:.3g} per unit, {eps[peak_t] / eps[mid]:.3g}x its value at "
             f"t = {mid} ({eps[mid]:.3g}). At δ = 1 (a whole step) the peak is at t = {peak_unit} (tau {peak_unit - 1}). "
             f"Values at t = 1, 2, 3 (tau 0, 1, 2), δ = {small:g}: "
             + ", ".join(f"{eps[t]:.3g}" for t in (1, 2, 3) if t in eps) + "."]  # fmt: skip
    seed_abs = float(np.mean([by_t[t]["seed_abs_delta"]["mean"] for t in low]))
    x0_low_max = max(x0[t] for t in low)
    x0_low_min = min(x0[t] for t in low)
    lines.append(f"- **x0 barely moves.** For t <= 20 the x0 prediction moves {x0_low_min:.2g} to {x0_low_max:.2g} "
                 "per pixel (rms, [-1, 1] scale) per timestep unit: the eps change is multiplied by "
                 f"sqrt((1 - ab_t)/ab_t), {by_t[min(low)]['x0_eps_weight']:.3f} at t = {min(low)} and "
                 f"{by_t[max(low)]['x0_eps_weight']:.3f} at t = {max(low)}, so S_x0 at t = {min(low)} is "
                 f"{x0[min(low)] / x0[max(low)]:.2g}x its value at t = {max(low)} while S_eps there is "
                 f"{eps[min(low)] / eps[max(low)]:.2g}x.")  # fmt: skip
    lines.append(f"- **The seed's threat model.** Its draw has mean |δ| = {seed_abs:.4f} (clip 0.05), so the expected x0 "
                 f"change at t <= 20 is about {x0_low_min * seed_abs:.1e} to {x0_low_max * seed_abs:.1e} per pixel "
                 f"(at most {x0_low_max * 0.05:.1e} at the clip), measured directly: "
                 + ", ".join(f"t = {t}: {by_t[t]['seed_x0_change']['mean']:.1e}" for t in (1, 2, 5, 10, 20) if t in by_t)
                 + ". One grey level is 1/255 of [0, 1], i.e. 2/255 = 0.0078 on the [-1, 1] scale.")  # fmt: skip
    for target, name in ((2 / 255, "one grey level (1/255 of [0, 1] = 0.0078 in [-1, 1])"), (0.01, "0.01 in [-1, 1]")):
        need = {t: target / x0[t] for t in low}
        lines.append(f"- **Budget for {name}** per pixel (rms), linear estimate `target / S_x0(δ = {small:g})`: "
                     + ", ".join(f"t = {t}: {need[t]:.3g}" for t in sorted(need) if t in TABLE_TS)
                     + " timestep units, i.e. "
                     f"{min(need.values()) / 0.05:.0f}x to {max(need.values()) / 0.05:.0f}x the seed's clip of 0.05.")  # fmt: skip
    big = [d for d in meta["deltas"] if d >= 1]
    if big:
        cells = []
        for t in (1, 5, 20):
            if t in by_t:
                cells.append(f"t = {t}: " + ", ".join(
                    f"δ = {d:g} moves x0 by {_cell(by_t[t], d)['x0_rate']['mean'] * d:.3g}" for d in big))  # fmt: skip
        lines.append("- **Measured at whole-step budgets** (total rms x0 change, not per unit; the response is not "
                     "linear in δ, so the estimates above are only a guide): " + "; ".join(cells) + ".")  # fmt: skip
        reach = []
        for t in sorted(low):
            hit = [d for d in sorted(big) if _cell(by_t[t], d)["x0_rate"]["mean"] * d >= 2 / 255]
            reach.append(f"t = {t}: {'δ = ' + format(hit[0], 'g') if hit else f'none up to δ = {max(big):g}'}")
        lines.append("- **Smallest measured δ > 0 that moves x0 by one grey level** (2/255 rms in [-1, 1]): "
                     + "; ".join(reach) + ".")  # fmt: skip
    first_look = [t for t in (1, 2, 500) if t in by_t]
    if unit is not eps and len(first_look) == 3:
        lines.append("- **Against the first look in issue 11** (eps about 0.1-0.15 per unit at t = 1-2, about 0.001 at "
                     "t = 500; x0 about 0.0005-0.001 per unit at t <= 20): measured at δ = "
                     f"{small:g} / δ = 1, S_eps is {eps[1]:.3g} / {unit[1]:.3g} at t = 1, {eps[2]:.3g} / {unit[2]:.3g} at "
                     f"t = 2, {eps[3]:.3g} / {unit[3]:.3g} at t = 3 and {eps[500]:.2g} / {unit[500]:.2g} at t = 500 "
                     f"(ratio of the peak to t = 500: {max(eps.values()) / eps[500]:.0f}x at δ = {small:g}, "
                     f"{max(unit.values()) / unit[500]:.0f}x at δ = 1); S_x0 at t <= 20 spans {x0_low_min:.2g} to "
                     f"{x0_low_max:.2g}. Read t as the paper step: in network timesteps the peak is at tau = {peak_t - 1} "
                     f"and S_eps falls to {eps[1]:.3g} at tau = 0 (δ = {small:g}).")  # fmt: skip
    worst_seed = max(by_t[t]["seed_x0_change"]["mean"] for t in low)
    lines.append(f"- **Consequence for seed 000's threat model.** With the seed's draws the mean rms x0 change at t <= 20 "
                 f"is at most {worst_seed:.1e}, {2 / 255 / worst_seed:.0f}x below one grey level (compare "
                 "[attack_effect.md](attack_effect.md), which measures Q(x_0) under the same attack). The spike in S_eps "
                 "sits where eps barely enters x0 (weight sqrt((1 - ab_t)/ab_t)); a timestep threat that moves pixels "
                 "near t = 0 needs budgets of many timesteps (above). Rounding the timestep to the training grid "
                 "removes every |δ| < 0.5 exactly, the seed's attack included; it does nothing against whole-step "
                 "shifts.")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> None:
    """Run the probe, write the JSON atomically, then the doc and the figure."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=256, help="Fashion-MNIST test images (the first n)")
    parser.add_argument("--ts", type=int, nargs="+", default=list(DEFAULT_TS), help="paper steps t in 1..T")
    parser.add_argument("--deltas", type=float, nargs="+", default=list(DEFAULT_DELTAS), help="timestep units")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--render-only", action="store_true", help="regenerate the doc and figure from the JSON")
    ns = parser.parse_args(argv)
    if ns.render_only:
        from robust_envs.fileio import read_json

        data = read_json(RESULTS, hint="rerun `python -m benchmarks.singularity_probe` without --render-only")
    else:
        torch.set_num_threads(ns.threads)
        from tqdm import tqdm

        from robust_envs.data import load_fashion_mnist

        start = time.perf_counter()
        model = load_noise_model(ns.model, device=ns.device)
        images = load_fashion_mnist("test").float_images()[: ns.n].to(ns.device) * 2 - 1
        with tqdm(total=len(ns.ts), desc="singularity probe (t)") as bar:
            res = timestep_sensitivity(model, images, ns.ts, ns.deltas, torch.Generator(ns.device).manual_seed(ns.seed),
                                       progress=bar.update)  # fmt: skip
        meta = {"argv": " ".join(argv if argv is not None else sys.argv[1:]), "n": ns.n, "model": ns.model,
                "seed": ns.seed, "deltas": list(res.deltas), "ts": list(res.ts),
                "wall_s": time.perf_counter() - start,
                "hardware": f"{platform.machine()}, {ns.device}, torch {torch.__version__}, "
                            f"{torch.get_num_threads()} thread(s)"}  # fmt: skip
        data = {"meta": meta, "rows": summarise(res, model.schedule.alpha_bar)}
        save(data)
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(render(data))
    plot(data)
    print(DOC.read_text())


if __name__ == "__main__":
    main()
