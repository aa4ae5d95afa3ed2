"""The main job: train a short PPO sigma scheduler on the embedded default and evaluate it.

1. PPO (paper settings: MLP policy, clip 0.2, gamma 0.995; centred action, VecNormalize, see
   :mod:`agents.ppo_sigma`) on ``DDIMSigma-v0`` with the embedded Fashion-MNIST noise network and the
   embedded levels scorer, action ``sigma_frac`` (seed 000 Eq. 15's range), under the benchmark's threat
   (:data:`DEMO_THREAT`: every timestep t <= t_c the network sees is shifted by +20 units) at t_c = 10, the
   cell of docs/sigma_benchmark.md where the benchmark's PPO beats every constant schedule in 3 of 3 seeds.
   ``--attack gaussian --t-c 20`` gives the paper's own attack (no measurable effect on this model:
   docs/attack_effect.md; the best schedule there is the constant a = 1 at the box's edge).
2. Evaluation the paper's way (sec. 5.1.4) on 200 samples under the threat (``--n-samples``; the evaluation
   command ``python -m agents.evaluate_sigma`` uses the paper's 500): mean final reward r_1 with a 95% CI
   against the fixed sigma = 0 schedule, next to every constant action of the grid and a random action, and
   what the threat costs the sigma = 0 schedule (the same samples without it).
3. Writes ``runs/demo/eval.json``, ``runs/demo/eval.md`` and ``runs/demo/x0_agent_vs_baseline.png``
   and prints the table.

Usage: ``python -m agents.demo`` (flags of :mod:`agents.ppo_sigma` apply, e.g. ``--total-timesteps``),
or ``make demo`` from a fresh clone; ``--docs docs`` also writes docs/demo.md; ``--docs-from-run runs/demo``
writes it from a finished run without training.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from agents.evaluate_sigma import (
    _ci95,
    best_constant,
    evaluate_policy,
    markdown_table,
    reference_policies,
    save_figure,
    summarize,
    write_report,
)
from agents.ppo_sigma import Args, env_kwargs, parse_args, train
from agents.reference import ConstantAction

#: The demo's training budget: the benchmark's 32,768 steps (docs/sigma_benchmark.md).
DEMO_TIMESTEPS = 32768
#: The demo's cell: t_c and the benchmark's `shift` threat (benchmarks.sigma_benchmark.THREATS; a test keeps them
#: equal). Until 2026-12-01 the demo ran the paper's attack at t_c = 20, where the best constant is the box's edge
#: a = 1 and the recipe reached it in 3 of 5 runs measured (CPU training is not bit-reproducible across thread
#: counts); at this cell the benchmark's PPO beats every constant in 3 of 3 seeds (paired CIs above 0), and the demo
#: did in 4 of 4 runs measured (seeds 0 / 1 / 2 on two threads, seed 0 on one; paired +0.047..+0.054; README).
DEMO_T_C = 10
DEMO_THREAT: dict[str, Any] = {"attack": "shift", "attack_budget": 20.0}


def main(argv: list[str] | None = None) -> None:
    """Train, evaluate, write the report and the figure; ``--n-samples`` sets the evaluation size."""
    argv = sys.argv[1:] if argv is None else argv
    command = " ".join(argv)
    n_samples, docs = 200, None
    if "--n-samples" in argv:  # evaluation size (200 here to keep the demo short; agents.evaluate_sigma uses 500)
        i = argv.index("--n-samples")
        n_samples = int(argv[i + 1])
        argv = argv[:i] + argv[i + 2 :]
    if "--docs" in argv:  # also write docs/demo.md and docs/figures/demo_x0.png from this run
        i = argv.index("--docs")
        docs = Path(argv[i + 1])
        argv = argv[:i] + argv[i + 2 :]
    if "--docs-from-run" in argv:  # only write the docs from a finished run's eval.json (e.g. after `make demo`)
        i = argv.index("--docs-from-run")
        run_dir = Path(argv[i + 1])
        data = read_eval(run_dir)
        write_docs(data["rows"], data["meta"], run_dir, docs or Path("docs"), data["meta"].get("command", ""))
        print(f"wrote {(docs or Path('docs')) / 'demo.md'} from {run_dir / 'eval.json'}")
        return
    args = parse_args(argv, defaults=Args(out_dir="runs/demo", total_timesteps=DEMO_TIMESTEPS, t_c=DEMO_T_C, **DEMO_THREAT))
    out = Path(args.out_dir)
    start = time.perf_counter()
    print(f"[1/2] training PPO on DDIMSigma-v0 (t_c={args.t_c}, {args.total_timesteps} steps, {args.num_envs} envs)")
    model = train(args)
    train_s = time.perf_counter() - start
    kw = env_kwargs(args)
    print(f"[2/2] evaluating PPO and {len(reference_policies())} reference schedules on {n_samples} samples under "
          f"{threat_text(kw)} against sigma = 0")  # fmt: skip
    results = [evaluate_policy("PPO", model, kw, n_samples=n_samples, seed=10_000)]
    results += [evaluate_policy(n, p, kw, n_samples=n_samples, seed=10_000) for n, p in reference_policies().items()]
    rows = summarize(results)
    meta = {"env_kwargs": kw, "ppo_args": vars(args), "train_seconds": round(train_s, 1), "n_samples": n_samples,
            "command": command,
            "ppo_action_by_t": [round(float(v), 3) for v in results[0].action_by_t],
            "paired_vs_best": _paired_vs_best(results, rows),
            "threat_cost": _threat_cost(results[0], kw, n_samples)}  # fmt: skip
    write_report(rows, meta, out)
    save_figure(results[0], out / "x0_agent_vs_baseline.png", f"PPO vs sigma=0, attack={args.attack}, t_c={args.t_c}")
    print(markdown_table(rows))
    print(_reading(rows, meta))
    print("The full benchmark (every t_c, threats, agents, seeds): docs/sigma_benchmark.md "
          "(python -m benchmarks.sigma_benchmark)")  # fmt: skip
    if docs is not None:
        write_docs(rows, read_eval(out)["meta"], out, docs, command)  # the meta as recorded (hardware added)
    print(f"wrote {out / 'eval.json'}, {out / 'eval.md'}, {out / 'x0_agent_vs_baseline.png'} "
          f"in {time.perf_counter() - start:.0f} s")  # fmt: skip


def read_eval(run_dir: Path) -> dict:
    """``{"meta", "rows"}`` of ``<run_dir>/eval.json``.

    Raises:
        FileNotFoundError: no eval.json there (the message says how to make one).
        ValueError: the file is not a demo evaluation (names the file).
    """
    import json

    path = Path(run_dir) / "eval.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `python -m agents.demo --out-dir {run_dir}` first")
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not {"meta", "rows"} <= set(data):
            raise ValueError("no 'meta' and 'rows'")
    except ValueError as err:
        raise ValueError(f"{path} is not a demo evaluation ({err}); rerun the demo") from None
    return data


def threat_text(kw: dict) -> str:
    """The env's threat in words, from its keyword arguments (``attack``, ``attack_budget``, ...)."""
    attack, budget = kw.get("attack", "gaussian"), kw.get("attack_budget", 0.0)
    if attack == "gaussian":
        return (f"the paper's timestep attack (Gaussian, std {kw.get('attack_scale', 0.01):g}, clip "
                f"{kw.get('attack_clip', 0.05):g} timestep units)")  # fmt: skip
    if attack == "shift":
        return f"the shift threat (every t <= t_c seen by the network as t + {budget:g})"
    if attack == "none":
        return "no threat"
    return f"the {attack!r} threat (budget {budget:g})"


def _threat_cost(attacked: Any, kw: dict, n_samples: int) -> dict | None:
    """What the threat costs the sigma = 0 schedule: Q(x_0) without it minus under it, paired on the same samples.

    ``attacked`` is a result of :func:`evaluate_policy` under ``kw`` (its ``q0_baseline`` is the attacked sigma = 0
    schedule); the unattacked one runs alone (``mirror_baseline``) on the same seeds. None when ``kw`` has no threat.
    """
    if kw.get("attack", "gaussian") == "none":
        return None
    clean = evaluate_policy("sigma=0, no threat", ConstantAction(0.0), {**kw, "attack": "none"}, n_samples=n_samples,
                            seed=10_000, mirror_baseline=True)  # fmt: skip
    diff = attacked.q0_baseline - clean.q0_agent  # negative: the threat lowers Q
    return {"q0_no_threat": float(clean.q0_agent.mean()), "q0_threat": float(attacked.q0_baseline.mean()),
            "mean": float(diff.mean()), "ci95": list(_ci95(diff))}  # fmt: skip


def _paired_vs_best(results: list, rows: list[dict]) -> dict:
    """PPO's r_1 minus the best constant's on the same samples: mean and a 95% t-interval of the paired difference."""
    best = best_constant(rows)
    assert best is not None, "the demo evaluates the constant grid"
    ppo_r1 = next(r for r in results if r.name == "PPO").r1
    # a = 0 (best where every a > 0 is below 0) is the sigma = 0 baseline itself: r_1 = 0 on every sample
    const_r1 = next((r.r1 for r in results if r.name == best["schedule"]), np.zeros_like(ppo_r1))
    diff = ppo_r1 - const_r1
    return {"best": best["schedule"], "mean": float(diff.mean()), "ci95": list(_ci95(diff))}


def _reading(rows: list[dict], meta: dict | None = None) -> str:
    """One generated paragraph: how the learnt policy compares with the best reference schedule, and what the
    threat costs the sigma = 0 schedule.

    Verdict: ``beats`` when PPO minus the best constant, paired on the same samples, has a 95% CI above 0 (as the
    benchmark's verdict; without the paired record: when PPO's CI lies above the best constant's mean), ``matches``
    when PPO's CI reaches the best constant's mean, ``is below`` otherwise.
    """
    ppo = next(r for r in rows if r["schedule"] == "PPO")
    best = best_constant(rows)
    assert best is not None, "the demo evaluates the constant grid"
    lo, hi = ppo["r1_ci95"]
    pv = (meta or {}).get("paired_vs_best")
    if best["schedule"] == "a=0":  # paired to the sigma = 0 baseline itself: PPO's own r_1 and CI
        pv = {"best": "a=0", "mean": ppo["mean_r1"], "ci95": [lo, hi]}
    elif pv and pv.get("best") != best["schedule"]:
        pv = None  # recorded against another constant: fall back to the unpaired reading
    above = pv["ci95"][0] > 0 if pv else lo > best["mean_r1"]
    verdict = "beats" if above else "matches" if hi >= best["mean_r1"] else "is below"
    paired = ""
    if pv:
        paired = (f" Paired on the same samples, PPO minus {pv['best']}: {pv['mean']:+.4f} "
                  f"[{pv['ci95'][0]:+.4f}, {pv['ci95'][1]:+.4f}].")  # fmt: skip
    by_t = ""
    if meta and meta.get("ppo_action_by_t"):
        a = meta["ppo_action_by_t"]
        by_t = f" PPO's deterministic action from t = {len(a)} down to t = 1: {', '.join(f'{v:.2f}' for v in a)}."
    kw = (meta or {}).get("env_kwargs", {})
    cost = (meta or {}).get("threat_cost")
    if kw.get("attack", "gaussian") == "gaussian":
        threat = (" On this model the paper's timestep attack has no measurable effect ([attack_effect.md]"
                  "(attack_effect.md), [threats.md](threats.md)), so the gain over sigma = 0 comes from the stochastic "
                  "steps near t = 0 as the embedded scorer rates them.")  # fmt: skip
    elif cost:
        threat = (f" Under {threat_text(kw)}, the sigma = 0 schedule's mean Q(x_0) is {cost['q0_threat']:.4f}, against "
                  f"{cost['q0_no_threat']:.4f} on the same samples without it (paired {cost['mean']:+.4f} "
                  f"[{cost['ci95'][0]:+.4f}, {cost['ci95'][1]:+.4f}]; [threats.md](threats.md)): r_1 is what a sigma "
                  "schedule wins back under the threat.")  # fmt: skip
    else:
        threat = f" Threat: {threat_text(kw)}."
    return (f"PPO (mean action {ppo['mean_eta']:.2f}) {verdict} the best constant action of the grid, "
            f"{best['schedule']}{' (sigma = 0 itself: every a > 0 is below it)' if best['schedule'] == 'a=0' else ''} "
            f"(mean r_1 {best['mean_r1']:+.4f}; PPO {ppo['mean_r1']:+.4f} [{lo:+.4f}, {hi:+.4f}]; "
            "'beats': the paired difference's 95% CI is above 0; 'matches': PPO's 95% CI reaches the best constant's "
            "mean)." + paired + by_t + threat + " [fidelity.md](fidelity.md) checks the scorer against independent "
            "quality measures. "
            + ("Why a learner can stop short of the best constant, and what was tried: "
               if verdict == "is below" else "What the learner needed to get here, and what did not help: ")
            + "[sigma_tuning.md](sigma_tuning.md). How much any agent could gain over the best constant by "
            "choosing the action per image: [sigma_headroom.md](sigma_headroom.md).")


def _features(ppo_args: dict) -> str:
    if ppo_args.get("observe", "x_t,t") == "t":
        return "t only (ablation)"
    from types import SimpleNamespace

    from agents.ppo_sigma import resolved_extractor

    extractor = resolved_extractor(SimpleNamespace(**ppo_args))
    if extractor == "flatten":
        return "flat x_t and t"
    code = "a small CNN code of x_t" + (" behind a gate started at zero" if extractor == "cnn_gated" else "")
    return code + " next to t" + ("" if ppo_args.get("share_extractor", True) else ", one CNN each for actor and critic")


def write_docs(rows: list[dict], meta: dict, out: Path, docs: Path, command: str) -> None:
    """docs/demo.md (generated from this run's rows) and the figure, copied to docs/figures/demo_x0.png."""
    import shutil

    (docs / "figures").mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "x0_agent_vs_baseline.png", docs / "figures" / "demo_x0.png")
    shutil.copy(out / "eval.json", docs / "demo_eval.json")
    sig = [r["schedule"] for r in rows if r["significant"]]
    text = [
        "# The main job: PPO sigma scheduler on DDIMSigma-v0",
        "",
        f"Generated by `python -m agents.demo{' ' + command if command else ''}` (the README's `make demo` runs "
        "`python -m agents.demo`);",
        "do not edit by hand. Raw data: [demo_eval.json](demo_eval.json) (a copy of that run's `runs/demo/eval.json`).",
        "",
        f"Env: `{meta['env_kwargs']}`. PPO: {meta['ppo_args']['total_timesteps']} steps, {meta['ppo_args']['num_envs']} envs, "
        f"gamma {meta['ppo_args']['gamma']}, clip {meta['ppo_args']['clip_range']}, MLP policy on "
        f"{_features(meta['ppo_args'])}, trained on the `{meta['ppo_args'].get('reward', 'paper')}` reward; training took "
        f"{meta['train_seconds']:.0f} s ({meta.get('hardware', 'hardware not recorded')}). Evaluation: {meta['n_samples']} samples under "
        f"{threat_text(meta['env_kwargs'])}, the same "
        "x_T and draws for every schedule; r_1 = Q(x_0) of the schedule minus Q(x_0) of sigma = 0 (seed 000 Eq. 18). "
        "Action a: sigma = a * sqrt(1 - alpha_bar[t-1]) (a = 0 is the sigma = 0 baseline itself).",
        "",
        markdown_table(rows),
        "",
        "Schedules whose mean r_1 differs from 0 at 95% confidence: " + (", ".join(sig) if sig else "none") + ".",
        "",
        _reading(rows, meta),
        "",
        "The whole benchmark (every t_c, both threats, PPO / SAC / TQC / RecurrentPPO, seeds, rliable aggregates): "
        "[sigma_benchmark.md](sigma_benchmark.md) (`python -m benchmarks.sigma_benchmark`).",
        "",
        "![agent vs baseline](figures/demo_x0.png)",
        "",
    ]
    (docs / "demo.md").write_text("\n".join(text))


if __name__ == "__main__":
    main()
