"""Why the learners do or do not reach the best constant schedule on DDIMSigma-v0: short tuning runs.

Each named run trains one learner (:func:`agents.ppo_sigma.train`, ``Args`` defaults plus the run's overrides,
t_c = 20, the seed's attack) and evaluates it on 64 samples (env seeds 10,000 + i, the benchmark's first 64)
against sigma = 0: mean r_1, mean action and the mean action per t. ``consts`` evaluates constant actions on
the same samples with both the mean r_1 and the mean episode return of the paper's reward, to check whether the
reward the learner maximises and the statistic the paper evaluates share their best constant.

Results are appended to ``benchmarks/results/sigma_tuning.json`` (one record per run; a rerun of a name
replaces it) and rendered into ``docs/sigma_tuning.md``.

Usage::

    python -m benchmarks.sigma_tuning run B          # one named run of RUNS
    python -m benchmarks.sigma_tuning consts         # constant actions: r_1 and the paper's return
    python -m benchmarks.sigma_tuning align          # time-only schedules: do the paper reward and r_1 agree?
    python -m benchmarks.sigma_tuning marginal       # what the noise of each window of steps adds to r_1
    python -m benchmarks.sigma_tuning report
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "benchmarks" / "results" / "sigma_tuning.json"
DOC = REPO_ROOT / "docs" / "sigma_tuning.md"
N_EVAL, EVAL_SEED = 64, 10_000

#: The Args defaults when runs A-S were made, pinned so that each run reproduces after the defaults moved to run
#: R's (CNN extractor, `delta` reward, 32,768 steps) and then Z's (gated CNN, one per actor and critic, GAE lambda 1);
#: the table lists only each run's differences from these.
_PPO = {"n_steps": 32, "batch_size": 64, "n_epochs": 10, "log_std_init": 0.0}
_BASE = {"extractor": "flatten", "reward": "paper", "total_timesteps": 8192, "share_extractor": True,
         "gae_lambda": 0.95}
#: Named runs (``agents.ppo_sigma.Args`` overrides). The first PPO tries of the previous session (n_steps 64,
#: lr 3e-4, log_std -1) stayed at the initial a = 0.5; these vary the update count, the learning rate, the
#: budget, the reward option and the learner.
RUNS: dict[str, dict[str, Any]] = {
    "A": {**_PPO, "learning_rate": 1e-3},
    "B": {**_PPO, "learning_rate": 3e-3},
    "C": {**_PPO, "n_steps": 16, "learning_rate": 3e-3, "total_timesteps": 16384},
    "D": {**_PPO, "learning_rate": 3e-3, "total_timesteps": 16384},
    "E": {**_PPO, "learning_rate": 3e-3, "reward": "delta"},
    "F": {**_PPO, "learning_rate": 3e-3, "reward": "final"},
    "G": {"algo": "sac", "learning_rate": 3e-4, "batch_size": 256, "log_std_init": -1.0, "gradient_steps": 1},
    "H": {"algo": "tqc", "learning_rate": 3e-4, "batch_size": 256, "log_std_init": -1.0, "gradient_steps": 1},
    "I": {"algo": "sac", "learning_rate": 3e-3, "batch_size": 256, "log_std_init": -1.0, "gradient_steps": 1},
    "J": {**_PPO, "learning_rate": 3e-3, "observe": "t"},
    # G / H gave 512 gradient steps in all (one per vector step of 16 envs); K / L take one per env transition
    "K": {"algo": "sac", "learning_rate": 3e-4, "batch_size": 256, "log_std_init": -1.0, "gradient_steps": -1},
    "L": {"algo": "tqc", "learning_rate": 3e-4, "batch_size": 256, "log_std_init": -1.0, "gradient_steps": -1},
    # the paper's PPO with a Beta policy (Chou et al. 2017): support equal to the box, no clipped samples
    "M": {**_PPO, "learning_rate": 3e-3, "distribution": "beta"},
    # gSDE (Raffin et al. 2022): exploration noise held for the rollout, so an episode's actions move together
    "N": {**_PPO, "learning_rate": 3e-3, "use_sde": True, "log_std_init": -2.0},
    # x_t through a small CNN code next to t, instead of 784 flat pixels beside one t
    "O": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn"},
    # the time-only ablation with four times the budget: is the budget the limit once the input is not?
    "P": {**_PPO, "learning_rate": 3e-3, "observe": "t", "total_timesteps": 32768},
    "Q": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn", "total_timesteps": 16384},
    # `align` shows the steps t <= 10 move the paper's return by ~6% of its per-episode std; `delta` (return = r_1)
    # has about twice that signal-to-noise there
    "R": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn", "reward": "delta", "total_timesteps": 32768},
    "S": {**_PPO, "learning_rate": 3e-3, "observe": "t", "reward": "delta", "total_timesteps": 32768},
    # R's recipe (the Args defaults until Z's) with other training seeds: how much does one run vary?
    "R1": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn", "reward": "delta", "total_timesteps": 32768, "seed": 1},
    "R2": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn", "reward": "delta", "total_timesteps": 32768, "seed": 2},
    # R1 and R2 stopped at low a near t_c where the time-only S did not: is it the image code? T: the actor and
    # critic each get their own CNN (the value loss no longer shapes the actor's code); U: the code behind a gate
    # started at zero (ReZero), so the learner starts time-only. On R1's seed, then R2's.
    "T1": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn", "reward": "delta", "total_timesteps": 32768, "seed": 1,
           "share_extractor": False},
    "U1": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn_gated", "reward": "delta", "total_timesteps": 32768,
           "seed": 1},
    "T2": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn", "reward": "delta", "total_timesteps": 32768, "seed": 2,
           "share_extractor": False},
    "U2": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn_gated", "reward": "delta", "total_timesteps": 32768,
           "seed": 2},
    "U0": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn_gated", "reward": "delta", "total_timesteps": 32768},
    # both: the gated code, and an own CNN for the actor and for the critic
    "W1": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn_gated", "reward": "delta", "total_timesteps": 32768,
           "seed": 1, "share_extractor": False},
    "W2": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn_gated", "reward": "delta", "total_timesteps": 32768,
           "seed": 2, "share_extractor": False},
    # U0 put low a at t = 20..17, the steps whose effect on r_1 reaches the reward last: with SB3's GAE lambda 0.95
    # the final reward reaches the advantage at t = 20 weighted (0.995 * 0.95)^19 = 0.34, the rest bootstraps from
    # the critic. Y0: U0 with Monte-Carlo advantages (lambda = 1)
    "Y0": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn_gated", "reward": "delta", "total_timesteps": 32768,
           "gae_lambda": 1.0},
    "Y2": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn_gated", "reward": "delta", "total_timesteps": 32768,
           "gae_lambda": 1.0, "seed": 2},
    # everything that helped somewhere: gated code, one CNN each for actor and critic, Monte-Carlo advantages
    "Z0": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn_gated", "reward": "delta", "total_timesteps": 32768,
           "gae_lambda": 1.0, "share_extractor": False},
    "Z1": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn_gated", "reward": "delta", "total_timesteps": 32768,
           "gae_lambda": 1.0, "share_extractor": False, "seed": 1},
    "Z2": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn_gated", "reward": "delta", "total_timesteps": 32768,
           "gae_lambda": 1.0, "share_extractor": False, "seed": 2},
    "Z3": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn_gated", "reward": "delta", "total_timesteps": 32768,
           "gae_lambda": 1.0, "share_extractor": False, "seed": 3},
    # Z2 put a = 0.01-0.02 at t = 20..18, at the box's lower edge, where a Gaussian's samples beyond the edge all clip
    # to a = 0 and its gradient is biased (Chou et al. 2017); a Beta policy has support equal to the box. Z + Beta:
    "ZB2": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn_gated", "reward": "delta", "total_timesteps": 32768,
            "gae_lambda": 1.0, "share_extractor": False, "seed": 2, "distribution": "beta"},
    "ZB0": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn_gated", "reward": "delta", "total_timesteps": 32768,
            "gae_lambda": 1.0, "share_extractor": False, "distribution": "beta"},
    "ZB1": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn_gated", "reward": "delta", "total_timesteps": 32768,
            "gae_lambda": 1.0, "share_extractor": False, "distribution": "beta", "seed": 1},
    "ZB3": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn_gated", "reward": "delta", "total_timesteps": 32768,
            "gae_lambda": 1.0, "share_extractor": False, "distribution": "beta", "seed": 3},
    # Z2 stalled with a Gaussian mean past the lower edge (a = 0.01 at t = 20..18): every sample there clips to a = 0,
    # so no sample tells the policy to come back. An entropy bonus keeps the std up; Z + ent_coef 0.01 (SB3 PPO: 0):
    "ZE2": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn_gated", "reward": "delta", "total_timesteps": 32768,
            "gae_lambda": 1.0, "share_extractor": False, "seed": 2, "ent_coef": "0.01"},
    "ZE0": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn_gated", "reward": "delta", "total_timesteps": 32768,
            "gae_lambda": 1.0, "share_extractor": False, "ent_coef": "0.01"},
    "ZE3": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn_gated", "reward": "delta", "total_timesteps": 32768,
            "gae_lambda": 1.0, "share_extractor": False, "seed": 3, "ent_coef": "0.01"},
    # under the shift threat (the benchmark's threat (b): every t <= t_c seen as t + 20), where docs/sigma_headroom.md
    # finds a per-image constant 38% above a = 1: can the learner find that headroom? ZE's recipe (entropy bonus)
    "ZS0": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn_gated", "reward": "delta", "total_timesteps": 32768,
            "gae_lambda": 1.0, "share_extractor": False, "ent_coef": "0.01", "attack": "shift", "attack_budget": 20.0},
    # ZS0 (32,768 steps, 256 pooled x_{t_c}) ended between a = 1 and the best constant: twice the budget and four
    # times the images (the headroom is per image, so the learner must generalise from the pool to fresh x_T)
    "ZSL0": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn_gated", "reward": "delta", "total_timesteps": 65536,
             "gae_lambda": 1.0, "share_extractor": False, "ent_coef": "0.01", "attack": "shift", "attack_budget": 20.0,
             "prefix_pool": 1024},
    # the learner restricted to the class the headroom bound measures: one action per episode, picked from x_{t_c}
    # (hold_action: a contextual bandit, one decision per episode with return r_1); 8 decisions per env and update
    "ZH0": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn_gated", "reward": "delta", "total_timesteps": 65536,
            "gae_lambda": 1.0, "share_extractor": False, "ent_coef": "0.01", "attack": "shift", "attack_budget": 20.0,
            "prefix_pool": 1024, "hold_action": True, "n_steps": 8, "batch_size": 32},
    # docs/sigma_headroom.md: the scorer's Q of the x0 prediction at t_c predicts which constant an unseen image prefers
    # (5-NN on it carries most of the per-image headroom), pooled pixels do not. ZH0 and ZS0 seeing it too
    # (observe 'x_t,t,q': the env's observe_quality, passed next to t outside the CNN's gate)
    "ZQH0": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn_gated", "reward": "delta", "total_timesteps": 65536,
             "gae_lambda": 1.0, "share_extractor": False, "ent_coef": "0.01", "attack": "shift", "attack_budget": 20.0,
             "prefix_pool": 1024, "hold_action": True, "n_steps": 8, "batch_size": 32, "observe": "x_t,t,q"},
    "ZQ0": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn_gated", "reward": "delta", "total_timesteps": 32768,
            "gae_lambda": 1.0, "share_extractor": False, "ent_coef": "0.01", "attack": "shift", "attack_budget": 20.0,
            "observe": "x_t,t,q"},
    # the benchmark's SAC entry (benchmarks/sigma_benchmark.AGENTS): K with Z's features and reward, 8,192 steps
    "KZ": {"algo": "sac", "learning_rate": 3e-4, "batch_size": 256, "log_std_init": -1.0, "gradient_steps": -1,
           "extractor": "cnn_gated", "reward": "delta", "share_extractor": False, "gae_lambda": 1.0},
    # Z's recipe at half the budget: can `make demo` (about 10 minutes asked) train 16,384 steps and still match?
    "Zh0": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn_gated", "reward": "delta", "total_timesteps": 16384,
            "gae_lambda": 1.0, "share_extractor": False},
    "Zh1": {**_PPO, "learning_rate": 3e-3, "extractor": "cnn_gated", "reward": "delta", "total_timesteps": 16384,
            "gae_lambda": 1.0, "share_extractor": False, "seed": 1},
}


def _load() -> dict[str, Any]:
    if not RESULTS.is_file():
        return {"runs": {}, "consts": None}
    try:
        return json.loads(RESULTS.read_text())
    except json.JSONDecodeError as err:
        sys.exit(f"{RESULTS} is not valid JSON ({err}); delete it and rerun the runs you need")


def _save(data: dict[str, Any]) -> None:
    from benchmarks.leaderboard import atomic_write_json

    atomic_write_json(RESULTS, data)


def _weights(kw: dict[str, Any]) -> str:
    """The weights id of the env's model (stored with each record; the page's note reads it)."""
    from robust_envs.diffusion.models import model_weights_id

    return model_weights_id(kw.get("model", "embedded"))


def _hardware() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}"


def run(name: str, out_root: Path) -> dict[str, Any]:
    """Train run ``name`` of :data:`RUNS` and evaluate it on the 64 samples; returns and stores the record."""
    from agents.evaluate_sigma import evaluate_policy
    from agents.ppo_sigma import Args, env_kwargs, train

    if name not in RUNS:
        raise ValueError(f"unknown run {name!r}; valid: {', '.join(RUNS)}")
    base = dict(_BASE)
    if RUNS[name].get("algo", "ppo") in ("ppo", "recurrent_ppo"):
        base["ent_coef"] = "0"  # PPO's 'auto' was SB3's 0 when these runs were made (now 0.01)
    args = Args(out_dir=str(out_root / name), progress_bar=False, tensorboard=False, **{**base, **RUNS[name]})
    start = time.perf_counter()
    policy = train(args)
    train_s = time.perf_counter() - start
    res = evaluate_policy(name, policy, env_kwargs(args), n_samples=N_EVAL, seed=EVAL_SEED, progress=False)
    log_std = getattr(getattr(policy.model, "policy", None), "log_std", None)
    record = {"overrides": RUNS[name], "total_timesteps": args.total_timesteps, "train_s": round(train_s),
              "r1": float(res.r1.mean()), "mean_a": float(res.mean_eta.mean()),
              "a_by_t": [round(float(v), 3) for v in res.action_by_t],
              "final_log_std": float(log_std.detach().mean()) if isinstance(log_std, torch.Tensor) else None,
              "hardware": _hardware(), "model_weights": _weights(env_kwargs(args))}  # fmt: skip
    data = _load()
    data["runs"][name] = record
    _save(data)
    return record


#: Threats other than the seed's that tuning runs use (``consts --threat``); the benchmark's definitions.
SHIFT = {"attack": "shift", "attack_budget": 20.0}


def consts(grid: tuple[float, ...] = (0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), threat: str = "seed") -> list[dict[str, Any]]:
    """Constant actions on the 64 samples: mean r_1 and mean return of the paper's reward (Eq. 19-21), under the
    seed's threat (stored as ``consts``) or the shift threat (``consts_shift``).
    """
    from agents.evaluate_sigma import evaluate_policy
    from agents.ppo_sigma import Args, env_kwargs
    from agents.reference import ConstantAction

    if threat not in ("seed", "shift"):
        raise ValueError(f"threat must be 'seed' or 'shift', got {threat!r}")
    kw = env_kwargs(Args(**(SHIFT if threat == "shift" else {})))
    rows = []
    for a in grid:
        res = evaluate_policy(f"a={a}", ConstantAction(a), kw, n_samples=N_EVAL, seed=EVAL_SEED, progress=False)
        rows.append({"a": a, "r1": float(res.r1.mean()), "r1_std": float(res.r1.std(ddof=1)),
                     "return": float(res.episode_return.mean()), "return_std": float(res.episode_return.std(ddof=1))})  # fmt: skip
        print(rows[-1], flush=True)
    data = _load()
    section = "consts" if threat == "seed" else f"consts_{threat}"
    data[section] = rows
    data.setdefault("model_weights", {})[section] = _weights(kw)
    _save(data)
    return rows


#: Time-only schedules at t_c = 20 (index 0 is t = 20): the edge everywhere, and the two halves at the edge
#: with the other half at 0.66 (the level the time-only learner P settled at for t <= 10).
ALIGN_SCHEDULES: dict[str, list[float]] = {
    "a=1": [1.0] * 20,
    "1 for t > 10, 0.66 for t <= 10": [1.0] * 10 + [0.66] * 10,
    "0.66 for t > 10, 1 for t <= 10": [0.66] * 10 + [1.0] * 10,
    "1 for t > 10, 0 for t <= 10": [1.0] * 10 + [0.0] * 10,
}


def align() -> list[dict[str, Any]]:
    """Do the paper's per-step reward (Eq. 19-21) and r_1 rank time-dependent schedules alike? Each schedule of
    :data:`ALIGN_SCHEDULES` on the 64 samples: mean r_1, and the mean return of the 'paper' and 'delta' rewards.
    """
    from agents.evaluate_sigma import evaluate_policy
    from agents.ppo_sigma import Args, env_kwargs
    from agents.reference import TimeSchedule

    rows = []
    for name, actions in ALIGN_SCHEDULES.items():
        row: dict[str, Any] = {"schedule": name}
        for reward in ("paper", "delta"):
            res = evaluate_policy(name, TimeSchedule(actions), {**env_kwargs(Args()), "reward": reward},
                                  n_samples=N_EVAL, seed=EVAL_SEED, progress=False)  # fmt: skip
            row["r1"] = float(res.r1.mean())
            row[f"return_{reward}"] = float(res.episode_return.mean())
            row[f"return_{reward}_std"] = float(res.episode_return.std(ddof=1))
        rows.append(row)
        print(row, flush=True)
    data = _load()
    data["align"] = rows
    data.setdefault("model_weights", {})["align"] = _weights(env_kwargs(Args()))
    _save(data)
    return rows


#: Windows of steps (t values, t_c = 20) where ``marginal`` sets a = 0 inside an a = 1 schedule.
MARGINAL_WINDOWS: dict[str, tuple[int, ...]] = {
    "t = 20": (20,), "t = 20..17": (20, 19, 18, 17), "t = 16..11": tuple(range(16, 10, -1)),
    "t = 10..3": tuple(range(10, 2, -1)), "t = 2..1": (2, 1), "t = 1": (1,),
}


def marginal() -> list[dict[str, Any]]:
    """What the noise of each window of steps adds to r_1: a = 1 everywhere against a = 1 with a = 0 inside the
    window, paired on the same 64 samples (same x_T, noise and attack draws). Returns and stores one row per window:
    the mean of ``r_1(a = 1) - r_1(window off)`` with a Student-t 95% CI over samples.
    """
    import numpy as np
    from scipy import stats

    from agents.evaluate_sigma import evaluate_policy
    from agents.ppo_sigma import Args, env_kwargs
    from agents.reference import TimeSchedule

    kw = env_kwargs(Args())
    t_c = int(kw["t_c"])
    full = evaluate_policy("a=1", TimeSchedule([1.0] * t_c), kw, n_samples=N_EVAL, seed=EVAL_SEED, progress=False)
    rows = []
    for name, window in MARGINAL_WINDOWS.items():
        actions = [0.0 if t in window else 1.0 for t in range(t_c, 0, -1)]
        res = evaluate_policy(name, TimeSchedule(actions), kw, n_samples=N_EVAL, seed=EVAL_SEED, progress=False)
        diff = full.r1 - res.r1
        half = float(stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff)))
        rows.append({"window": name, "steps": len(window), "r1_off": float(res.r1.mean()), "gain": float(diff.mean()),
                     "ci95": [float(diff.mean()) - half, float(diff.mean()) + half]})  # fmt: skip
        print(rows[-1], flush=True)
    data = _load()
    data["marginal"] = {"r1_full": float(full.r1.mean()), "rows": rows}
    data.setdefault("model_weights", {})["marginal"] = _weights(kw)
    _save(data)
    return rows


def render(data: dict[str, Any]) -> str:
    """``docs/sigma_tuning.md`` from the stored records."""
    from benchmarks.weights_note import stale_weights_note

    sections = data.get("model_weights", {})
    rows = {**{f"run {n}": r.get("model_weights") for n, r in sorted(data.get("runs", {}).items())},
            **{k: sections.get(k) for k in ("consts", "consts_shift", "align", "marginal") if data.get(k)}}  # fmt: skip
    note = stale_weights_note(rows, "records",
                              "Rerun one with `python -m benchmarks.sigma_tuning run <name>` (or `consts`, `consts "
                              "--threat shift`, `align`, `marginal`).")  # fmt: skip
    lines = ["# DDIMSigma-v0: what the learners need to reach the best constant", "", *note,
             "Generated by `python -m benchmarks.sigma_tuning report` from `benchmarks/results/sigma_tuning.json` "
             "(each row by `python -m benchmarks.sigma_tuning run <name>`); do not edit by hand.", "",
             f"t_c = 20, the seed's attack, embedded model and levels scorer, action `sigma_frac`; every run is evaluated "
             f"on the same {N_EVAL} samples (env seeds {EVAL_SEED:,} + i) against sigma = 0. Runs were made on a shared "
             "2-core CPU: train times are wall times under load, for orientation only.", ""]  # fmt: skip
    if data.get("consts"):
        lines += ["## Constant actions: r_1 and the paper's return", "",
                  "| a | mean r_1 | std r_1 | mean return (Eq. 19-21) | std return |", "|---|---|---|---|---|"]  # fmt: skip
        for r in data["consts"]:
            r1_std = "-" if r.get("r1_std") is None else f"{r['r1_std']:.3f}"
            lines.append(f"| {r['a']} | {r['r1']:+.3f} | {r1_std} | {r['return']:+.2f} | {r['return_std']:.2f} |")
        lines.append("")
    lines += ["## Learner runs", "", "| run | learner and overrides | env steps | mean r_1 | mean action | action at t = 20 / 10 / 1 "
              "| final log std | train s |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in sorted(data.get("runs", {}).items()):
        over = ", ".join(f"{k}={v}" for k, v in r["overrides"].items())
        by_t = r["a_by_t"]
        std = "-" if r.get("final_log_std") is None else f"{r['final_log_std']:+.2f}"
        lines.append(f"| {name} | {over} | {r['total_timesteps']:,} | {r['r1']:+.3f} | {r['mean_a']:.3f} | "
                     f"{by_t[0]:.2f} / {by_t[len(by_t) // 2]:.2f} / {by_t[-1]:.2f} | {std} | {r['train_s']} |")  # fmt: skip
    if data.get("align"):
        lines += ["", "## Does the paper's per-step reward rank schedules like r_1?", "",
                  "Time-only schedules on the same 64 samples (`python -m benchmarks.sigma_tuning align`): r_1 and the "
                  "mean return of the paper's reward (Eq. 19-21, what the learners above maximise) and of `delta` "
                  "(whose return is r_1 itself).", "",
                  "| schedule (t_c = 20) | mean r_1 | mean return, paper | mean return, delta |", "|---|---|---|---|"]  # fmt: skip
        for r in data["align"]:
            lines.append(f"| {r['schedule']} | {r['r1']:+.3f} | {r['return_paper']:+.2f} | {r['return_delta']:+.3f} |")
    if data.get("marginal"):
        m = data["marginal"]
        lines += ["", "## What each window of steps adds", "",
                  f"`python -m benchmarks.sigma_tuning marginal`: a = 1 at every step (r_1 {m['r1_full']:+.3f}) against the "
                  "same schedule with a = 0 inside one window, paired on the same 64 samples: the gain is what the "
                  "noise in that window adds to r_1 (Student-t 95% CI over samples).", "",
                  "| a = 0 at | steps | r_1 | gain of a = 1 there [95% CI] | gain per step |", "|---|---|---|---|---|"]  # fmt: skip
        for r in m["rows"]:
            lines.append(f"| {r['window']} | {r['steps']} | {r['r1_off']:+.3f} | {r['gain']:+.3f} "
                         f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}] | {r['gain'] / r['steps']:+.4f} |")  # fmt: skip
    lines += ["", "## Reading", ""] + _reading(data)
    return "\n".join(lines) + "\n"


def _demo_sentence() -> str:
    """The demo's run of the default recipe (docs/demo_eval.json), for comparison; empty if absent or if the demo
    runs another cell than these runs (t_c 20 under the seed's threat): its numbers would not be comparable.
    """
    path = Path(__file__).parents[1] / "docs" / "demo_eval.json"
    try:
        demo = json.loads(path.read_text())
        rows = {r["schedule"]: r for r in demo["rows"]}
        ppo, edge = rows["PPO"], rows["a=1"]
        env = demo["meta"]["env_kwargs"]
    except (OSError, KeyError, ValueError, TypeError):
        return ""
    if env.get("t_c") != 20 or env.get("attack") != "gaussian":
        return ""
    verdict = "reaches" if ppo["r1_ci95"][1] >= edge["mean_r1"] else "stays below"
    return (f" The demo's run of the defaults ({ppo['n']} samples, [demo.md](demo.md)): mean action "
            f"{ppo['mean_eta']:.2f}, r_1 {ppo['mean_r1']:+.3f} [{ppo['r1_ci95'][0]:+.3f}, {ppo['r1_ci95'][1]:+.3f}], whose "
            f"CI {verdict} a = 1's {edge['mean_r1']:+.3f}.")


def _reading(data: dict[str, Any]) -> list[str]:
    """Generated statements: do the reward and r_1 share their best constant, and how far the learners got."""
    out = []
    c = data.get("consts") or []
    if c:
        by_r1 = max(c, key=lambda r: r["r1"])
        by_ret = max(c, key=lambda r: r["return"])
        mono = all(b["r1"] > a["r1"] and b["return"] > a["return"] for a, b in zip(c, c[1:], strict=False))
        out.append(f"- Among the constants, r_1 is largest at a = {by_r1['a']} ({by_r1['r1']:+.3f}) and the paper's return "
                   f"at a = {by_ret['a']} ({by_ret['return']:+.2f}); both rise {'monotonically' if mono else 'not monotonically'} "
                   "with a. The reward the learner maximises and the statistic the paper evaluates agree on the best "
                   "constant" + (" (the edge of the action box)." if by_r1["a"] == 1.0 else "."))  # fmt: skip
    al = {r["schedule"]: r for r in data.get("align") or []}
    if al:
        rank_r1 = sorted(al, key=lambda k: -al[k]["r1"])
        rank_paper = sorted(al, key=lambda k: -al[k]["return_paper"])
        out.append(f"- The paper's return ranks the time-only schedules {'as' if rank_r1 == rank_paper else 'unlike'} "
                   f"r_1 does (best: {rank_paper[0]}): no sign here that the per-step reward pays for a schedule the "
                   "final statistic does not prefer." if rank_r1 == rank_paper else
                   f"- The paper's return ranks the time-only schedules unlike r_1 (paper: {', '.join(rank_paper)}; "
                   f"r_1: {', '.join(rank_r1)}).")  # fmt: skip
        full, half = al.get("a=1"), al.get("1 for t > 10, 0 for t <= 10")
        if full and half:
            d_r1, d_paper = full["r1"] - half["r1"], full["return_paper"] - half["return_paper"]
            out.append(f"- Noise in the last 10 steps (a = 1 against 0 for t <= 10) adds r_1 {d_r1:+.3f} of {full['r1']:+.3f}; "
                       f"per episode that is {d_paper / full['return_paper_std']:.2f} std of the paper's return and "
                       f"{d_r1 / full['return_delta_std']:.2f} std of the `delta` return (r_1): a weak signal for any "
                       "learner, and about twice as weak under the paper's reward.")  # fmt: skip
            split = [n for n, r in sorted(data.get("runs", {}).items())
                     if len(r["a_by_t"]) == 20 and max(r["a_by_t"][:10]) >= 0.95 and min(r["a_by_t"][10:-1]) < 0.9]  # fmt: skip
            if split:
                out.append(f"- Runs {', '.join(split)} reach the box edge (a >= 0.95) at some t > 10 but stay below 0.9 "
                           "somewhere in 2 <= t <= 10: they stop short where the signal is weakest (t = 1 excluded: "
                           "that action has no effect).")  # fmt: skip
    runs = data.get("runs", {})
    if runs:
        best = max(runs.items(), key=lambda kv: kv[1]["r1"])
        out.append(f"- The best run, {best[0]}, reaches r_1 {best[1]['r1']:+.3f} with mean action {best[1]['mean_a']:.2f}"
                   + (f", against {by_r1['r1']:+.3f} for a = {by_r1['a']}" if c else "") + ".")  # fmt: skip
        pairs = [("B", "D", "twice the budget"), ("B", "C", "twice the budget and twice the updates"),
                 ("B", "E", "the shaped reward `delta`"), ("B", "F", "the sparse reward `final`"),
                 ("B", "M", "a Beta policy (Chou et al. 2017) instead of the clipped Gaussian"),
                 ("B", "N", "gSDE exploration (noise held for the rollout)"),
                 ("B", "O", "a small CNN code of x_t next to t instead of 784 flat pixels"),
                 ("O", "Q", "twice the budget with the CNN extractor"),
                 ("J", "P", "four times the budget for the time-only ablation"),
                 ("Q", "R", "the `delta` reward and twice the budget with the CNN extractor"),
                 ("P", "S", "the `delta` reward for the time-only ablation at 32,768 steps"),
                 ("G", "K", "SAC with one gradient step per env transition (16x the updates of G)"),
                 ("H", "L", "TQC with one gradient step per env transition")]  # fmt: skip
        for a, b, what in pairs:
            if a in runs and b in runs:
                out.append(f"- {what} ({b} against {a}): mean action {runs[a]['mean_a']:.2f} -> {runs[b]['mean_a']:.2f}, "
                           f"r_1 {runs[a]['r1']:+.3f} -> {runs[b]['r1']:+.3f} (one training seed, 64 samples, "
                           "no CI: a trend, not a test).")  # fmt: skip
        off = [n for n in ("G", "H") if n in runs]
        if off:
            out.append("- " + ", ".join(f"{runs[n]['overrides'].get('algo', '?').upper()} ({n}): mean action "
                                        f"{runs[n]['mean_a']:.2f}, r_1 {runs[n]['r1']:+.3f}" for n in off)
                       + ": with SB3's learning rate and one gradient step per vector step (512 in all) the "
                       "off-policy learners stay at the initial a = 0.5.")  # fmt: skip
        if "J" in runs and "B" in runs:
            j = runs["J"]
            out.append(f"- Time-only ablation (J against B, the same settings, the learner sees t but not x_t): mean "
                       f"action {runs['B']['mean_a']:.2f} -> {j['mean_a']:.2f} (a = {j['a_by_t'][0]:.2f} at t = 20 down to "
                       f"{j['a_by_t'][-1]:.2f} at t = 1), r_1 {runs['B']['r1']:+.3f} -> {j['r1']:+.3f}.")  # fmt: skip
        if "R" in runs and "S" in runs and c:
            r, s_ = runs["R"], runs["S"]
            out.append(f"- What moved the learners furthest: the `delta` reward (return = r_1, twice the signal of the "
                       f"paper's reward in the last steps) and 32,768 steps. The time-only learner S then settles at "
                       f"mean action {s_['mean_a']:.2f} (r_1 {s_['r1']:+.3f}; a = 1: {by_r1['r1']:+.3f}); the paper's "
                       f"learner, seeing x_t through the CNN code next to t (R), at mean action {r['mean_a']:.2f} and "
                       f"lowest {min(r['a_by_t']):.2f} (r_1 {r['r1']:+.3f}). R's settings were the defaults of "
                       "`agents.ppo_sigma` until Z's (below) replaced them.")  # fmt: skip
            seeds = [n for n in ("R", "R1", "R2") if n in runs]
            if len(seeds) > 1:
                out.append("- R's recipe across training seeds: " + "; ".join(
                    f"{n} (seed {runs[n]['overrides'].get('seed', 0)}): mean action {runs[n]['mean_a']:.2f}, r_1 "
                    f"{runs[n]['r1']:+.3f}" for n in seeds) + ".")  # fmt: skip
        out += _image_code_lines(runs, by_r1 if c else None, data.get("consts_shift"))
        for n in ("O", "Q"):
            if n in runs:
                by_t = runs[n]["a_by_t"]
                lo = min(range(len(by_t)), key=lambda i: by_t[i])
                beaten = [r for r in c if r["r1"] < runs[n]["r1"]]
                versus = (f"; its r_1 {runs[n]['r1']:+.3f} is above that of the constant a = {max(r['a'] for r in beaten)} "
                          f"while its mean action is lower (one seed, 64 samples): where in the episode the noise goes matters, and the "
                          "learnt schedule spends it in the first steps below t_c") if beaten else ""
                out.append(f"- Run {n}'s schedule is not constant: a = {by_t[0]:.2f} at t = {len(by_t)}, "
                           f"{min(by_t):.2f} at t = {len(by_t) - lo}, {by_t[-1]:.2f} at t = 1 (mean {runs[n]['mean_a']:.2f})"
                           + versus + ".")  # fmt: skip
                break
    return out


def _image_code_lines(runs: dict[str, Any], edge: dict[str, Any] | None,
                      data_consts_shift: list[dict[str, Any]] | None = None) -> list[str]:
    """R / T / U / W / Y / Z per training seed (shared CNN code, unshared, gated, gated + unshared, gated with
    Monte-Carlo advantages, all three).
    """

    def cell(n: str) -> str:
        return f"{n} {runs[n]['mean_a']:.2f} / {runs[n]['r1']:+.3f}" if n in runs else f"{n} -"

    def low_start(n: str) -> str:
        by_t = runs[n]["a_by_t"]
        low = [f"{by_t[i]:.2f}" for i in range(min(4, len(by_t))) if by_t[i] < 0.9]
        return f"{n} ({' / '.join(low)})" if low else ""

    out = []
    names = ("R", "T", "U", "W", "Y", "Z")
    rows = [(seed, [("R" if seed == 0 else f"R{seed}") if k == "R" else f"{k}{seed}" for k in names]) for seed in (0, 1, 2, 3)]
    rows = [(seed, row) for seed, row in rows if any(n in runs for n in row[1:])]
    if rows:
        out.append("- The image code, per training seed (mean action / r_1; R: one CNN shared by actor and critic, the "
                   "defaults before; T: actor and critic each with its own CNN; U: the code behind a gate started at zero, "
                   "ReZero; W: U and T together; Y: U with Monte-Carlo advantages, GAE lambda 1; Z: all three, the "
                   "defaults now): "
                   + "; ".join(f"seed {seed}: " + ", ".join(cell(n) for n in row if n in runs) for seed, row in rows)
                   + (f" (a = 1: {edge['r1']:+.3f})" if edge else "") + ".")  # fmt: skip
        for key, what in (("U", "The gated code"), ("Y", "The gated code with lambda = 1"),
                          ("Z", "The default recipe (gated, unshared, lambda = 1)")):
            done = [row[names.index(key)] for _, row in rows if row[names.index(key)] in runs]
            if done:
                low = [n for n in done if runs[n]["mean_a"] < 0.95]
                out.append(f"- {what} reaches mean action >= 0.95 in {len(done) - len(low)} of {len(done)} seeds "
                           f"({', '.join(done)})" + (f"; not in {', '.join(low)}" if low else "") + "."
                           + (_demo_sentence() if key == "Z" else ""))  # fmt: skip
        starts = [e for _, row in rows for n in row if n in runs for e in [low_start(n)] if e]
        ends = [n for _, row in rows for n in row if n in runs and runs[n]["a_by_t"][-1] < 0.9]
        if starts:
            out.append("- Where the runs stop short of a = 1 that costs r_1: a < 0.9 in the first four steps below t_c "
                       "(t = 20..17): " + "; ".join(starts) + ". Those steps' noise adds r_1 of its own (the "
                       "marginal table) and reaches the reward last.")  # fmt: skip
        if ends:
            out.append(f"- Low a at t = 1 ({', '.join(ends)}) costs nothing: alpha_bar_0 = 1 forces sigma = 0 at the "
                       "last step (the env card), so that action has no effect (the marginal table's t = 1 row is 0 "
                       "exactly); the mean action column still counts it.")  # fmt: skip
    beta = [n for n in ("ZB0", "ZB1", "ZB2", "ZB3") if n in runs]
    if beta:
        out.append("- Z with the Beta policy (support equal to the box: no sample is clipped at its edges): "
                   + ", ".join(f"{cell(n)} (Gaussian: {cell(n.replace('B', ''))}"
                               + (f"; a < 0.9 in the first steps: {low_start(n)}" if low_start(n) else "") + ")"
                               for n in beta) + ".")  # fmt: skip
    entropy = [n for n in ("ZE0", "ZE2", "ZE3") if n in runs]
    if entropy:
        out.append("- Z with an entropy bonus (ent_coef 0.01; SB3's PPO default is 0; since these runs, the default "
                   "of `agents.ppo_sigma`, and runs A-Zh are pinned at 0): "
                   + ", ".join(f"{cell(n)} (without: {cell(n.replace('E', ''))}"
                               + (f"; a < 0.9 in the first steps: {low_start(n)}" if low_start(n) else "") + ")"
                               for n in entropy) + ".")  # fmt: skip
    if "ZS0" in runs:
        shift = {f"a={c['a']:g}": c["r1"] for c in (data_consts_shift or [])}
        best = max(shift, key=lambda k: shift[k]) if shift else None
        longer = f" (twice the budget, a pool of 1,024 x_{{t_c}}: {cell('ZSL0')})" if "ZSL0" in runs else ""
        if "ZH0" in runs:
            longer += f" (the same, one action held per episode, a contextual bandit over x_{{t_c}}: {cell('ZH0')})"
        seeing_q = [cell(n) for n in ("ZQ0", "ZQH0") if n in runs]
        if seeing_q:
            longer += (" (seeing the scorer's Q of the x0 prediction too, `observe='x_t,t,q'`, which docs/sigma_headroom.md "
                       "finds predictive of the best constant per image: " + ", ".join(seeing_q) + ")")
        out.append(f"- Under the shift threat (20 timesteps), ZE's recipe: {cell('ZS0')}{longer}; the constants on the same samples "
                   "under that threat: " + (", ".join(f"{k} {v:+.3f}" for k, v in shift.items()) + f" (best {best})"
                   if shift else "not measured yet (`consts --threat shift`)") + ".")  # fmt: skip
    paired = [n for n in beta if n.replace("B", "") in runs]
    if len(paired) >= 3:
        ok_b = [n for n in paired if runs[n]["mean_a"] >= 0.95]
        ok_g = [n.replace("B", "") for n in paired if runs[n.replace("B", "")]["mean_a"] >= 0.95]
        verdict = ("so the Beta policy is the better default" if len(ok_b) == len(paired) and len(ok_g) < len(paired)
                   else "so the Beta policy moves the failures to other seeds rather than removing them, and the "
                   "default stays SB3's Gaussian" if len(ok_b) <= len(ok_g) else "a gain, but not on every seed")  # fmt: skip
        out.append(f"- Seeds on which the learner reaches a mean action >= 0.95 (the best constant is a = 1): Beta "
                   f"{len(ok_b)} of {len(paired)} ({', '.join(ok_b) or 'none'}), Gaussian {len(ok_g)} of {len(paired)} "
                   f"({', '.join(ok_g) or 'none'}), {verdict}.")  # fmt: skip
    half = [n for n in ("Zh0", "Zh1") if n in runs]
    if half:
        out.append("- Z's recipe at half the budget (16,384 steps, for a shorter `make demo`): "
                   + ", ".join(f"{cell(n)} (full budget: {cell(n.replace('h', ''))})" for n in half) + ".")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    """``run <name>``, ``consts`` or ``report``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("names", nargs="+", choices=sorted(RUNS))
    r.add_argument("--out-root", default="runs/sigma_tuning")
    c = sub.add_parser("consts")
    c.add_argument("--threat", choices=["seed", "shift"], default="seed")
    sub.add_parser("align")
    sub.add_parser("marginal")
    sub.add_parser("report")
    ns = parser.parse_args(argv)
    if ns.command == "run":
        for name in ns.names:
            print(name, run(name, Path(ns.out_root)), flush=True)
    elif ns.command == "consts":
        consts(threat=ns.threat)
    elif ns.command == "align":
        align()
    elif ns.command == "marginal":
        marginal()
    DOC.write_text(render(_load()))
    print(DOC)


if __name__ == "__main__":
    main()
