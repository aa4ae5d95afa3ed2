"""Is there anything for a DDIMSigma-v0 agent to learn beyond the best constant? A per-image headroom bound.

A learnt scheduler can beat every constant action only if the best action depends on what it observes. This
command measures the simplest such dependence, on the image: with ``prefix_pool = P`` the env starts every
episode from one of ``P`` fixed ``x_{t_c}`` (the strided prefix of ``P`` seeded ``x_T``) and draws the noise
``z`` and the threat's draws below ``t_c`` per episode, so each image gets many episodes with independent draws.
Every constant action of the grid runs on the same episodes (same seeds: the same image, ``z`` and attack draws
for every action; r_1 is paired against sigma = 0 as in seed 000 Eq. 18).

Per image, the episodes are split in two halves; the action with the best mean r_1 on one half is scored on the
other (two-fold cross-fitting, so the choice cannot profit from the draws it is scored on). ``cross-fit gain``
is the mean over images of that held-out r_1 minus the held-out r_1 of the best constant overall: the most a
policy that picks one action per image could gain over the best constant, estimated without selection bias
(noisy choices pull it below the true bound; a gain whose 95% CI excludes 0 is headroom). The in-sample oracle
(best action per image picked and scored on the same episodes) is also reported: an optimistic bound.

An agent is evaluated on fresh x_T, so it must carry the choice over to images it has not trained on. The
``across-image gain`` asks whether that is possible from the image alone: a 5-nearest-neighbour rule on the
x_{t_c} average-pooled to 7 x 7 picks each held-out image's constant from the training images' mean r_1 (two
folds over images), scored on the held-out image's episodes against the training images' best constant.

Writes ``benchmarks/results/sigma_headroom.json`` (one record per (threat, t_c, pool, episodes per image); a rerun
replaces its record) and
``docs/sigma_headroom.md``.

Usage::

    python -m benchmarks.sigma_headroom run --t-c 20 --threat seed --pool 32 --episodes 512
    python -m benchmarks.sigma_headroom report
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "benchmarks" / "results" / "sigma_headroom.json"
DOC = REPO_ROOT / "docs" / "sigma_headroom.md"
#: the constant actions compared per image (a = 0 is the baseline: r_1 = 0 on every episode)
GRID = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
SEED = 20_000  # episode seeds SEED + i: disjoint from the benchmark's evaluation seeds (10,000 + i, i < 500)


def constant_r1(a: float, env_kwargs: dict[str, Any], n_episodes: int, batch_size: int = 256,
                progress: bool = True) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per-episode r_1 ``(n_episodes,)`` float64 of the constant action ``a`` and each episode's pool entry
    ``(n_episodes,)`` int64 (``env_kwargs`` must set ``prefix_pool`` > 0). Episode ``i`` is env seed ``SEED + i``.
    """
    from robust_envs.envs.ddim_sigma import DDIMSigmaVectorEnv

    if int(env_kwargs.get("prefix_pool", 0)) < 1:
        raise ValueError(f"prefix_pool must be >= 1 for a per-image split, got {env_kwargs.get('prefix_pool', 0)}")
    t_c = int(env_kwargs.get("t_c", 20))
    r1, index = [], []
    done = 0
    bar = tqdm(total=n_episodes * t_c, desc=f"a={a:g}", unit="step", disable=not progress, leave=False)
    while done < n_episodes:
        n = min(batch_size, n_episodes - done)
        env = DDIMSigmaVectorEnv(num_envs=n, **env_kwargs)
        env.reset(seed=SEED + done)
        assert env.sim.pool_index is not None
        index.append(np.asarray(env.sim.pool_index, dtype=np.int64))
        action = np.full((n, 1), a, dtype=np.float32)
        terminated = False
        while not terminated:
            _, _, term, _, info = env.step(action)
            terminated = bool(term.all())
            bar.update(n)
        r1.append((info["q0_agent"] - info["q0_baseline"]).astype(np.float64))
        env.close()
        done += n
    bar.close()
    return np.concatenate(r1), np.concatenate(index)


def headroom(r1: np.ndarray, index: np.ndarray, grid: tuple[float, ...]) -> dict[str, Any]:
    """Cross-fitted per-image headroom over the best constant.

    Args:
        r1: ``(len(grid), n_episodes)`` per-episode r_1 of each constant (same episodes in every row).
        index: ``(n_episodes,)`` the image (pool entry) of each episode.
        grid: the constants of the rows.

    Returns:
        the best constant overall, the cross-fit gain per image (mean and 95% CI over images, Student t), the
        in-sample oracle gain, how often each constant is chosen, and the number of images with >= 2 episodes.
    """
    best = int(np.argmax(r1.mean(axis=1)))
    gains, oracle, chosen = [], [], np.zeros(len(grid), dtype=np.int64)
    for j in np.unique(index):
        eps = np.flatnonzero(index == j)
        if len(eps) < 2:
            continue
        halves = (eps[0::2], eps[1::2])
        held = []
        for pick, score in (halves, halves[::-1]):
            k = int(np.argmax(r1[:, pick].mean(axis=1)))
            chosen[k] += 1
            held.append((r1[k, score].mean() - r1[best, score].mean()) * len(score))
        gains.append(sum(held) / len(eps))
        oracle.append(float(r1[:, eps].mean(axis=1).max() - r1[best, eps].mean()))
    g = np.asarray(gains)
    half = float(stats.t.ppf(0.975, len(g) - 1) * g.std(ddof=1) / math.sqrt(len(g))) if len(g) > 1 else float("nan")
    return {"best_constant": grid[best], "best_constant_r1": float(r1[best].mean()),
            "crossfit_gain": float(g.mean()), "crossfit_gain_ci95": [float(g.mean()) - half, float(g.mean()) + half],
            "oracle_gain": float(np.mean(oracle)), "chosen": {f"{a:g}": int(c) for a, c in zip(grid, chosen, strict=True)},
            "n_images": int(len(g))}  # fmt: skip


def across_images(per_image: np.ndarray, features: np.ndarray, grid: tuple[float, ...], k: int = 5) -> dict[str, Any]:
    """Does the per-image headroom generalise to images the choice has not seen? A k-nearest-neighbour rule on
    image features, two-fold over images (even / odd positions): each held-out image gets the constant with the best
    mean r_1 over its ``k`` nearest training images (L2 on ``features``), scored on its own episodes against the
    constant that is best over the training images. An agent evaluated on fresh x_T needs this kind of headroom; the
    per-image :func:`headroom` (choice and score on the same image, different draws) bounds it from above.

    Args:
        per_image: ``(len(grid), n_images)`` mean r_1 of each constant on each image's episodes.
        features: ``(n_images, d)`` features of each image (e.g. the pooled x_{t_c}).
        grid: the constants of the rows.
        k: neighbours (clipped to the training fold's size).

    Returns:
        the gain over the training fold's best constant per held-out image (mean, 95% CI over images, Student t),
        how often each constant is chosen, and ``k``. Raises ValueError for fewer than 4 images or mismatched shapes.
    """
    n = per_image.shape[1]
    if n < 4 or features.shape[0] != n or per_image.shape[0] != len(grid):
        raise ValueError(f"need >= 4 images and per_image (len(grid), n) / features (n, d) shapes, got "
                         f"{per_image.shape} and {features.shape} for {len(grid)} constants")  # fmt: skip
    gains, chosen = np.zeros(n), np.zeros(len(grid), dtype=np.int64)
    folds = (np.arange(0, n, 2), np.arange(1, n, 2))
    for train, held in (folds, folds[::-1]):
        best = int(np.argmax(per_image[:, train].mean(axis=1)))
        dist = ((features[held, None, :] - features[None, train, :]) ** 2).sum(-1)  # (held, train)
        nearest = train[np.argsort(dist, axis=1)[:, : min(k, len(train))]]
        for i, nbrs in zip(held, nearest, strict=True):
            c = int(np.argmax(per_image[:, nbrs].mean(axis=1)))
            chosen[c] += 1
            gains[i] = per_image[c, i] - per_image[best, i]
    half = float(stats.t.ppf(0.975, n - 1) * gains.std(ddof=1) / math.sqrt(n))
    return {"across_gain": float(gains.mean()), "across_gain_ci95": [float(gains.mean()) - half, float(gains.mean()) + half],
            "across_chosen": {f"{a:g}": int(c) for a, c in zip(grid, chosen, strict=True)}, "across_k": k}  # fmt: skip


def image_features(env_kwargs: dict[str, Any], indices: list[int]) -> np.ndarray:
    """The pool entries' ``x_{t_c}`` average-pooled to 7 x 7 per channel: ``(len(indices), C * 49)`` float64."""
    from robust_envs.envs.ddim_sigma import DDIMSigmaVectorEnv

    env = DDIMSigmaVectorEnv(num_envs=1, **env_kwargs)
    with torch.no_grad():
        x = env.sim.pool_x(indices)
        pooled = torch.nn.functional.adaptive_avg_pool2d(x.float(), (7, 7))
    env.close()
    return pooled.flatten(1).cpu().numpy().astype(np.float64)


def run(t_c: int, threat: str, pool: int, n_episodes: int, progress: bool = True) -> dict[str, Any]:
    """Run every constant of :data:`GRID` on ``n_episodes`` episodes over ``pool`` images; store the record."""
    from agents.ppo_sigma import Args, env_kwargs
    from benchmarks.sigma_benchmark import THREATS

    if threat not in THREATS:
        raise ValueError(f"threat must be one of {sorted(THREATS)}, got {threat!r}")
    if pool < 1 or n_episodes < 2 * pool:
        raise ValueError(f"need pool >= 1 and episodes >= 2 * pool (two halves per image), got {pool}, {n_episodes}")
    kw = {**env_kwargs(Args(t_c=t_c)), **THREATS[threat], "prefix_pool": pool}
    start = time.perf_counter()
    rows, index = [], None
    for a in GRID:
        if a == 0.0:
            rows.append(None)  # the baseline itself: r_1 = 0 exactly
            continue
        r1, idx = constant_r1(a, kw, n_episodes, progress=progress)
        if index is not None and not np.array_equal(idx, index):
            raise RuntimeError("episodes drew different images for different actions; the pool pick must not "
                               "depend on the action")  # fmt: skip
        index = idx
        rows.append(r1)
    assert index is not None
    r1_all = np.stack([np.zeros(n_episodes) if r is None else r for r in rows])
    images = np.unique(index)
    per_image = np.stack([[r[index == j].mean() for j in images] for r in r1_all])
    across = across_images(per_image, image_features(kw, images.tolist()), GRID) if len(images) >= 4 else {}
    record = {"t_c": t_c, "threat": threat, "threat_kwargs": THREATS[threat], "pool": pool, "episodes": n_episodes,
              "grid": list(GRID), "mean_r1": {f"{a:g}": float(r.mean()) for a, r in zip(GRID, r1_all, strict=True)},
              **headroom(r1_all, index, GRID), **across,
              # per image (pool entry, in order) and constant: mean r_1 over its episodes
              "per_image_mean_r1": {f"{a:g}": [round(float(v), 5) for v in row] for a, row in zip(GRID, per_image,
                                                                                                   strict=True)},
              "seconds": round(time.perf_counter() - start),
              "hardware": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                          f"threads {torch.get_num_threads()}",
              "command": f"python -m benchmarks.sigma_headroom run --t-c {t_c} --threat {threat} --pool {pool} "
                         f"--episodes {n_episodes}"}  # fmt: skip
    data = _load()
    # one record per (threat, t_c, pool, episodes per image): a rerun of the same design replaces its record
    data[f"{threat}/tc{t_c}/pool{pool}x{n_episodes // pool}"] = record
    from benchmarks.leaderboard import atomic_write_json

    atomic_write_json(RESULTS, data)
    return record


def _load() -> dict[str, Any]:
    if not RESULTS.is_file():
        return {}
    try:
        return json.loads(RESULTS.read_text())
    except json.JSONDecodeError as err:
        sys.exit(f"{RESULTS} is not valid JSON ({err}); delete it and rerun the cells you need")


def render(data: dict[str, Any]) -> str:
    """docs/sigma_headroom.md from the stored records."""
    out = ["# DDIMSigma-v0: is there anything to learn beyond the best constant?", "",
           "Generated by `python -m benchmarks.sigma_headroom report` from `benchmarks/results/sigma_headroom.json`; "
           "do not edit by hand.", "", (__doc__ or "").split("\n\n")[1].replace("\n", " "), "",
           (__doc__ or "").split("\n\n")[2].replace("\n", " "), "",
           "| threat | t_c | images x episodes | mean r_1 per constant | best constant | cross-fit gain [95% CI] | "
           "in-sample oracle gain | choices (cross-fit) | across-image gain, 5-NN [95% CI] | s |",
           "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for key in sorted(data, key=lambda k: (data[k]["threat"], data[k]["t_c"], data[k]["pool"])):
        r = data[key]
        lo, hi = r["crossfit_gain_ci95"]
        means = ", ".join(f"{a} {v:+.3f}" for a, v in r["mean_r1"].items() if a != "0")
        choices = ", ".join(f"{a}: {c}" for a, c in r["chosen"].items() if c)
        out.append(f"| {r['threat']} | {r['t_c']} | {r['pool']} x {r['episodes'] // r['pool']} | {means} | "
                   f"a={r['best_constant']:g} ({r['best_constant_r1']:+.3f}) | {r['crossfit_gain']:+.4f} "
                   f"[{lo:+.4f}, {hi:+.4f}] | {r['oracle_gain']:+.4f} | {choices} | {_across_cell(r)} | "
                   f"{r['seconds']} |")  # fmt: skip
    out += ["", "## Reading", ""] + _reading(data) + ["", "Commands: " + "; ".join(
        f"`{data[k]['command']}`" for k in sorted(data)) + ". Hardware: " + "; ".join(
        sorted({data[k]["hardware"] for k in data})) + "."]  # fmt: skip
    return "\n".join(out) + "\n"


def _across_cell(r: dict[str, Any]) -> str:
    if "across_gain" not in r:
        return "- (run before this column)"
    lo, hi = r["across_gain_ci95"]
    return f"{r['across_gain']:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def _demo_resolution() -> str:
    """The 95% half-width of the demo's paired PPO - best-constant difference (docs/demo_eval.json), scaled to the
    benchmark's 500 samples; empty when that file or field is absent.
    """
    try:
        meta = json.loads((REPO_ROOT / "docs" / "demo_eval.json").read_text())["meta"]
        lo, hi = meta["paired_vs_best"]["ci95"]
        n = int(meta["n_samples"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    half = (hi - lo) / 2
    if half <= 0:  # the demo's agent played the constant exactly: its paired difference has no spread
        return ""
    return (f" (the demo's {n} paired samples gave a 95% half-width of {half:.3f}, docs/demo.md; the benchmark's 500 "
            f"give about {half * math.sqrt(n / 500):.3f})")


def _reading(data: dict[str, Any]) -> list[str]:
    lines = []
    for key in sorted(data):
        r = data[key]
        lo, hi = r["crossfit_gain_ci95"]
        cell = f"`{r['threat']}`, t_c {r['t_c']}, {r['pool']} images x {r['episodes'] // r['pool']} episodes"
        if lo > 0:
            best = f"{r['best_constant']:g}"
            other = sum(c for a, c in r["chosen"].items() if a != best)
            lines.append(f"- {cell}: a per-image choice of constant beats a={best} on held-out draws by "
                         f"{r['crossfit_gain']:+.4f} [{lo:+.4f}, {hi:+.4f}] ({r['crossfit_gain'] / r['best_constant_r1']:.0%} "
                         f"of its r_1; the choice was another constant in {other} of {2 * r['n_images']} folds): there "
                         "is headroom for an agent that conditions on x_t"
                         + (", small next to the gaps between the constants: to show it, an agent's paired difference "
                            "to the best constant must be resolved to about this size" + _demo_resolution() + "."
                            if r["crossfit_gain"] < 0.1 * r["best_constant_r1"] else
                            ", large enough that an agent which can tell from x_t which constant an image prefers "
                            "would beat every constant schedule by a clear margin (whether that choice carries over "
                            "to unseen images is the across-image check)."))  # fmt: skip
        else:
            lines.append(f"- {cell}: no measurable per-image headroom: choosing the constant per image from half the "
                         f"draws gains {r['crossfit_gain']:+.4f} [{lo:+.4f}, {hi:+.4f}] over a={r['best_constant']:g} "
                         f"on the other half (the in-sample oracle, picked and scored on the same draws, gains {r['oracle_gain']:+.4f}: an optimistic bound). An "
                         "agent here can at best match the best constant; 'matches' is the benchmark's ceiling in this "
                         "cell unless a step-wise, draw-dependent schedule gains what a per-image one cannot.")  # fmt: skip
        if "across_gain" in r:
            alo, ahi = r["across_gain_ci95"]
            lines.append(f"  Across images (each held-out image's constant chosen from its {r['across_k']} nearest "
                         f"training images, two folds over the {r['n_images']} images): {r['across_gain']:+.4f} "
                         f"[{alo:+.4f}, {ahi:+.4f}] "
                         + ("over the best constant: the per-image headroom carries over to unseen images through "
                            "what the pooled x_{t_c} shows, so a learner that reads x_{t_c} can reach it."
                            if alo > 0 else
                            "over the best constant: this simple rule does not carry the per-image headroom over to "
                            "unseen images; a learner must find image features that predict the best action better "
                            "than the pooled pixels do."))  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> None:
    """``run`` one (t_c, threat) cell, or ``report``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--t-c", type=int, default=20)
    r.add_argument("--threat", default="seed")
    r.add_argument("--pool", type=int, default=32, help="images (fixed x_{t_c}); default 32")
    r.add_argument("--episodes", type=int, default=512, help="episodes per constant, over all images; default 512")
    r.add_argument("--no-progress", action="store_true")
    sub.add_parser("report")
    args = parser.parse_args(argv)
    if args.command == "run":
        rec = run(args.t_c, args.threat, args.pool, args.episodes, progress=not args.no_progress)
        print(json.dumps({k: v for k, v in rec.items() if k not in ("hardware",)}, indent=1))
    DOC.write_text(render(_load()))
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
