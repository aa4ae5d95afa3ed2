"""The main job: train a short PPO sigma scheduler on the embedded default and evaluate it.

1. PPO (paper settings: MLP policy, clip 0.2, gamma 0.995) on ``DDIMSigma-v0`` with the embedded
   Fashion-MNIST noise network and the embedded levels scorer, under the paper's timestep attack.
2. Evaluation the paper's way (sec. 5.1.4): 500 samples under attack, mean final reward r_1 with a 95% CI
   against the fixed sigma = 0 schedule, next to constant eta 0.5 / 1.0 and random eta.
3. Writes ``runs/demo/eval.json``, ``runs/demo/eval.md`` and ``runs/demo/x0_agent_vs_baseline.png``
   and prints the table.

Usage: ``python -m agents.demo`` (flags of :mod:`agents.ppo_sigma` apply, e.g. ``--total-timesteps``),
or ``make demo`` from a fresh clone.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from agents.evaluate_sigma import (
    evaluate_policy,
    markdown_table,
    reference_policies,
    save_figure,
    summarize,
    write_report,
)
from agents.ppo_sigma import Args, env_kwargs, parse_args, train


def main(argv: list[str] | None = None) -> None:
    """Train, evaluate, write the report and the figure; ``--n-samples`` sets the evaluation size."""
    argv = sys.argv[1:] if argv is None else argv
    n_samples = 500
    if "--n-samples" in argv:  # evaluation size (the paper's 500 by default)
        i = argv.index("--n-samples")
        n_samples = int(argv[i + 1])
        argv = argv[:i] + argv[i + 2 :]
    args = parse_args(argv, defaults=Args(out_dir="runs/demo"))
    out = Path(args.out_dir)
    start = time.perf_counter()
    print(f"[1/2] training PPO on DDIMSigma-v0 (t_c={args.t_c}, {args.total_timesteps} steps, {args.num_envs} envs)")
    model = train(args)
    train_s = time.perf_counter() - start
    print(f"[2/2] evaluating on {n_samples} samples under attack against sigma = 0")
    kw = env_kwargs(args)
    results = [evaluate_policy("PPO", model, kw, n_samples=n_samples, seed=10_000)]
    results += [evaluate_policy(n, p, kw, n_samples=n_samples, seed=10_000) for n, p in reference_policies().items()]
    rows = summarize(results)
    meta = {"env_kwargs": kw, "ppo_args": vars(args), "train_seconds": round(train_s, 1), "n_samples": n_samples}
    write_report(rows, meta, out)
    save_figure(results[0], out / "x0_agent_vs_baseline.png", f"PPO vs sigma=0 under the timestep attack, t_c={args.t_c}")
    print(markdown_table(rows))
    print(f"wrote {out / 'eval.json'}, {out / 'eval.md'}, {out / 'x0_agent_vs_baseline.png'} "
          f"in {time.perf_counter() - start:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
