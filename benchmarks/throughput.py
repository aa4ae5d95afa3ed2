"""Env steps per second of DDIMSigma-v0: the batched VectorEnv against a SyncVectorEnv of single envs.

For each ``num_envs``, both vector envs run the same number of full episodes (resets included, since a
reset runs the strided DDIM steps above t_c). The *floor* is what the env cannot avoid per step: one
network forward on 2N samples and one evaluator call on 2N images; its rate ignores resets. Ratios are
from one run on one machine (shared machines are noisy: compare columns, not runs).

A second table measures whole episodes at ``--pool-num-envs`` N for each ``--pool-t-c``: the batched env as is,
the batched env with ``prefix_pool=N`` (filled by warm-up resets, so the strided prefix above t_c is skipped), the
two timed in alternation episode by episode, and the episode floor (the prefix's forwards on N samples, the forward
at t_c on N, then t_c - 1 forwards and t_c scorer calls on 2N). ``--threads`` sets torch's thread count (the
benchmark grid and the learners run one thread per process).

``--pool-startup P ...`` measures what ``prefix_pool_dir`` saves a fresh process: the time until a new env holds
its whole pool of P entries (its first reset), computed and written to the folder, against read back from it
(the process cache cleared in between, as in a new process). ``--startup-only`` keeps the other tables of the JSON.

Results go to ``benchmarks/results/throughput.json`` and ``docs/throughput.md`` (generated).

Usage::

    python -m benchmarks.throughput --num-envs 1 8 64 --t-c 10 --episodes 2 --pool-t-c 10 60 --pool-num-envs 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import robust_envs  # noqa: F401
from robust_envs.envs.ddim_sigma import DDIMSigmaEnv, DDIMSigmaVectorEnv, _get_evaluator, _get_model, _resolve_device

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "throughput.json"
DOC = ROOT / "docs" / "throughput.md"

#: The clock every rate is timed with: wall time (``--clock wall``, default) or the process's CPU time
#: (``--clock cpu``: on a shared machine the work done, not the share of the cores the process got; with one
#: torch thread both agree on an idle machine).
_CLOCK = time.perf_counter


def steps_per_second(venv: gym.vector.VectorEnv, episodes: int, t_c: int, seed: int) -> float:
    """Env steps (sub-env transitions) per second over ``episodes`` full episodes, resets included."""
    n = venv.num_envs
    action = np.full((n, 1), 0.5, dtype=np.float32)
    start = _CLOCK()
    for e in range(episodes):
        venv.reset(seed=seed + 1000 * e)
        for _ in range(t_c):
            venv.step(action)
    return n * episodes * t_c / (_CLOCK() - start)


def floor_steps_per_second(kwargs: dict[str, Any], n: int, repeats: int = 5) -> float:
    """N / (time of one network forward on 2N samples + one evaluator call on 2N images)."""
    device = _resolve_device(kwargs.get("device"))
    model = _get_model(kwargs.get("model", "embedded"), device)
    evaluator = _get_evaluator(kwargs.get("evaluator", "levels"), device)
    x = torch.randn(2 * n, *model.sample_shape, device=device)
    t = torch.full((2 * n,), 5.0, device=device)
    model(x, t)  # warm-up
    start = _CLOCK()
    for _ in range(repeats):
        evaluator(((model(x, t) + 1) / 2).clamp(0, 1))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n * repeats / (_CLOCK() - start)


def episodes_per_second(venv: gym.vector.VectorEnv, episodes: int, t_c: int, seed: int) -> float:
    """Whole episodes (all sub-envs) per second, resets included."""
    return steps_per_second(venv, episodes, t_c, seed) / t_c


def paired_episodes_per_second(plain: gym.vector.VectorEnv, pooled: gym.vector.VectorEnv, episodes: int, t_c: int,
                               seed: int) -> tuple[float, float]:  # fmt: skip
    """Whole episodes per second of two envs timed in alternation (plain, pooled, plain, ...), resets included:
    on a shared machine both see the same load, so their ratio is less noisy than from two separate blocks.
    """
    took = [0.0, 0.0]
    action = np.full((plain.num_envs, 1), 0.5, dtype=np.float32)
    for e in range(episodes):
        for i, venv in enumerate((plain, pooled)):
            start = _CLOCK()
            venv.reset(seed=seed + 1000 * e)
            for _ in range(t_c):
                venv.step(action)
            took[i] += _CLOCK() - start
    return plain.num_envs * episodes / took[0], pooled.num_envs * episodes / took[1]


def episode_floor(kwargs: dict[str, Any], n: int, repeats: int = 2) -> dict[str, float]:
    """Seconds per episode of N samples that no env can avoid, returned with its two parts: ``prefix_s``, the K
    strided forwards above t_c on N samples; ``steps_s``, the forward at t_c on N (the eps of the first step),
    t_c - 1 forwards on 2N (agent and baseline; the step to x_0 needs none) and t_c scorer calls on 2N.
    """
    device = _resolve_device(kwargs.get("device"))
    model = _get_model(kwargs.get("model", "embedded"), device)
    evaluator = _get_evaluator(kwargs.get("evaluator", "levels"), device)
    t_c = kwargs["t_c"]
    k = len(model.schedule.timesteps(t_c, kwargs["stride"])) - t_c
    x1 = torch.randn(n, *model.sample_shape, device=device)
    x2 = torch.randn(2 * n, *model.sample_shape, device=device)
    t1, t2 = torch.full((n,), 500.0, device=device), torch.full((2 * n,), 5.0, device=device)
    model(x1, t1)  # warm-up
    start = _CLOCK()
    for _ in range(repeats):
        model(x1, t1)
    per_forward_n = (_CLOCK() - start) / repeats
    start = _CLOCK()
    for _ in range(repeats):
        model(x2, t2)
    per_forward_2n = (_CLOCK() - start) / repeats
    start = _CLOCK()
    for _ in range(repeats):
        evaluator(((x2 + 1) / 2).clamp(0, 1))
    per_score = (_CLOCK() - start) / repeats
    steps_s = per_forward_n + (t_c - 1) * per_forward_2n + t_c * per_score
    return {"prefix_s": k * per_forward_n, "steps_s": steps_s, "episode_s": k * per_forward_n + steps_s}


def pool_startup(kwargs: dict[str, Any], pool: int, num_envs: int) -> dict[str, Any]:
    """Seconds (of ``_CLOCK``) until a fresh env with ``prefix_pool=pool`` and ``prefix_pool_dir`` has finished its
    first reset: once computing the whole pool and writing it, once reading it back (process cache cleared before
    each, as in a new process); plus the file's size in MB.
    """
    import tempfile

    from robust_envs.envs.ddim_sigma import PREFIX_CACHE

    out: dict[str, Any] = {"t_c": kwargs["t_c"], "pool": pool, "num_envs": num_envs}
    with tempfile.TemporaryDirectory() as folder:
        for key in ("compute_s", "read_s"):
            PREFIX_CACHE.clear()
            env = DDIMSigmaVectorEnv(num_envs=num_envs, prefix_pool=pool, prefix_pool_dir=folder, **kwargs)
            start = _CLOCK()
            env.reset(seed=0)
            out[key] = _CLOCK() - start
            out["file_mb"] = env.sim.pool_file().stat().st_size / 2**20
            env.close()
    PREFIX_CACHE.clear()
    return out


def baseline_cache_row(kwargs: dict[str, Any], num_envs: int, pool: int, episodes: int) -> dict[str, Any]:
    """Whole episodes per second of the pooled env (``prefix_pool=pool``, the learners' training env) without and
    with ``baseline_cache``, timed in alternation, once every pool entry's baseline is known (full warm-up
    episodes); for a threat whose baseline uses no random draw (else the cache holds nothing).
    """
    from robust_envs.envs.ddim_sigma import BASELINE_CACHE

    BASELINE_CACHE.clear()
    plain = DDIMSigmaVectorEnv(num_envs=num_envs, prefix_pool=pool, **kwargs)
    cached = DDIMSigmaVectorEnv(num_envs=num_envs, prefix_pool=pool, baseline_cache=True, **kwargs)
    if not cached.sim.baseline_is_deterministic():
        raise ValueError(f"the baseline of {kwargs.get('attack', 'gaussian')!r} draws per episode: nothing to cache")
    action = np.full((num_envs, 1), 0.5, dtype=np.float32)
    for e in range(64):  # warm-up: full episodes until every pool entry's baseline is recorded
        for venv in (plain, cached):
            venv.reset(seed=20_000 + num_envs * e)
            for _ in range(kwargs["t_c"]):
                venv.step(action)
        if len(BASELINE_CACHE) >= pool:
            break
    rate_plain, rate_cached = paired_episodes_per_second(plain, cached, episodes, kwargs["t_c"], 0)
    BASELINE_CACHE.clear()
    return {"t_c": kwargs["t_c"], "num_envs": num_envs, "pool": pool, "attack": kwargs.get("attack"),
            "attack_budget": kwargs.get("attack_budget"), "pooled": rate_plain, "cached": rate_cached}  # fmt: skip


def render(data: dict[str, Any]) -> str:
    """Markdown report generated from the JSON."""
    m = data["meta"]
    lines = [
        "# DDIMSigma-v0 throughput",
        "",
        f"Generated by `python -m benchmarks.throughput {m['argv']}` into `benchmarks/results/throughput.json`;",
        "do not edit by hand.",
        "",
        f"t_c = {m['t_c']}, stride {m['stride']}, {m['episodes']} episodes per cell (resets included), evaluator "
        f"`{m['evaluator']}`, model `{m['model']}`. Hardware: {m['hardware']}.",
        "",
        "| num_envs | batched VectorEnv (steps/s) | SyncVectorEnv of single envs (steps/s) | speed-up | floor: net + evaluator on 2N (steps/s) | batched / floor |",
        "|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        lines.append(f"| {r['num_envs']} | {r['batched']:.1f} | {r['sync']:.1f} | {r['batched'] / r['sync']:.2f}x | "
                     f"{r['floor']:.1f} | {r['batched'] / r['floor']:.2f} |")  # fmt: skip
    lines += ["", "The batched env stays below the floor because each reset runs the strided DDIM steps above t_c "
              "(one forward on N samples per step) and each step adds the DDIM updates, the random draws "
              "(one per sub-env generator) and the numpy conversion at the API boundary."]  # fmt: skip
    if data.get("pool_rows"):
        lines += ["", "## Per episode: the prefix above t_c, and the prefix pool", "",
                  "Episodes per second (each of N samples); floor = the prefix's K forwards on N, the forward at t_c on N, "
                  "then t_c - 1 forwards and t_c scorer calls on 2N; `prefix_pool=N` skips the prefix once the pool is filled (a warm-up reset "
                  "fills it). One run per row: compare within a row."
                  + (f" Measured by `python -m benchmarks.throughput {m['pool_argv']}` ({m['pool_hardware']})."
                     if m.get("pool_argv") else ""), "",
                  "| t_c | num_envs | batched (episodes/s) | batched + prefix_pool (episodes/s) | pool speed-up | "
                  "ceiling of the speed-up (floor / floor without prefix) | "
                  "episode floor (episodes/s) | prefix share of the floor | batched / floor | pooled / floor without prefix |",
                  "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in data["pool_rows"]:
            f, n = r["floor"], r["num_envs"]  # floor seconds are per batch of n episodes; rates count episodes
            lines.append(f"| {r['t_c']} | {n} | {r['batched']:.3f} | {r['pooled']:.3f} | "
                         f"{r['pooled'] / r['batched']:.2f}x | {f['episode_s'] / f['steps_s']:.2f}x | {n / f['episode_s']:.3f} | {f['prefix_s'] / f['episode_s']:.2f} | "
                         f"{r['batched'] * f['episode_s'] / n:.2f} | {r['pooled'] * f['steps_s'] / n:.2f} |")  # fmt: skip
        lines += ["", "The pool trades x_T diversity for speed: P pool entries give P distinct x_{t_c} per configuration "
                  "(the steps from t_c down keep their own random draws). The learners train with P = 256; every "
                  "evaluation uses fresh x_T (the exact prefix cache)."]  # fmt: skip
    if data.get("startup_rows"):
        lines += ["", "### Pool start-up: computed once, then read from `prefix_pool_dir`", "",
                  "Time until a fresh env holds its whole pool (its first reset), once computing the P prefixes and "
                  "writing them, once reading them back as a new process would (process cache cleared)."
                  + (f" Measured by `python -m benchmarks.throughput {m['startup_argv']}` ({m['startup_hardware']})."
                     if m.get("startup_argv") else ""), "",
                  "| t_c | pool P | num_envs | compute + write (s) | read (s) | speed-up | file (MB) |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in data["startup_rows"]:
            lines.append(f"| {r['t_c']} | {r['pool']} | {r['num_envs']} | {r['compute_s']:.2f} | {r['read_s']:.3f} | "
                         f"{r['compute_s'] / r['read_s']:.0f}x | {r['file_mb']:.1f} |")  # fmt: skip
        lines += ["", "The file is keyed by the network's weights (sha256 of the state dict), the schedule, t_c, stride, "
                  "baseline sigma, defence, shape, P and the seed base: a retrained model or another configuration "
                  "gets its own file; an unreadable or mismatched file is named in a warning and rewritten."]  # fmt: skip
    if data.get("cache_rows"):
        lines += ["", "### Training episodes with the baseline replayed (`prefix_pool` + `baseline_cache`)", "",
                  "The learners' training env (`prefix_pool`) under a threat whose sigma = 0 baseline draws nothing "
                  "(`shift`): once a pool entry's baseline is known it is replayed, so a step runs the network and the "
                  "scorer on the agent's N samples instead of 2N. Episodes per second, the two envs timed in "
                  "alternation." + (f" Measured by `python -m benchmarks.throughput {m['cache_argv']}` "
                                    f"({m['cache_hardware']})." if m.get("cache_argv") else ""), "",
                  "| threat | t_c | num_envs | pool P | pooled (episodes/s) | pooled + baseline_cache (episodes/s) | speed-up |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in data["cache_rows"]:
            lines.append(f"| `{r['attack']}` {r['attack_budget']:g} | {r['t_c']} | {r['num_envs']} | {r['pool']} | "
                         f"{r['pooled']:.3f} | {r['cached']:.3f} | {r['cached'] / r['pooled']:.2f}x |")  # fmt: skip
        lines += ["", "The benchmark's learners train with it on (`agents/ppo_sigma.py`); under seed 000's `gaussian` "
                  "threat the baseline depends on each episode's draws and nothing is replayed."]  # fmt: skip
    lines += ["", "What a faster forward would give (channels_last, torch.compile, CUDA graphs, autocast), measured on the "
              "network alone: [unet_speed.md](unet_speed.md).", "", "GPU table: pending (no GPU has run this benchmark yet)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Measure and write the JSON and the Markdown report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--t-c", type=int, default=10)
    parser.add_argument("--stride", type=int, default=50)
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--evaluator", default="levels")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--device", default=None)
    parser.add_argument("--pool-t-c", type=int, nargs="*", default=[10, 60])
    parser.add_argument("--pool-num-envs", type=int, default=64)
    parser.add_argument("--skip-sync", action="store_true", help="only the per-episode (prefix pool) table")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="time rates in wall or process CPU time")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--pool-startup", type=int, nargs="*", default=[],
                        help="pool sizes P whose start-up from prefix_pool_dir is measured (at each --pool-t-c)")
    parser.add_argument("--startup-only", action="store_true", help="only the pool start-up rows; other tables kept")
    parser.add_argument("--cache-shift", type=float, default=None,
                        help="measure pooled training episodes without / with baseline_cache under a shift of this "
                        "many timesteps (at each --pool-t-c); with --startup-only, only these and the start-up rows")
    ns = parser.parse_args(argv)
    if ns.threads is not None:
        if ns.threads < 1:
            parser.error(f"--threads must be >= 1, got {ns.threads}")
        torch.set_num_threads(ns.threads)
    global _CLOCK
    _CLOCK = time.perf_counter if ns.clock == "wall" else time.process_time
    kwargs = {"t_c": ns.t_c, "stride": ns.stride, "evaluator": ns.evaluator, "model": ns.model, "device": ns.device}
    argv_text = " ".join(argv if argv is not None else __import__("sys").argv[1:])
    hardware = (f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
                f"{torch.cuda.get_device_name() if _resolve_device(ns.device).type == 'cuda' else 'cpu'}, "
                f"{ns.clock} clock")  # fmt: skip
    startup_rows: list[dict[str, Any]] = []
    cache_rows: list[dict[str, Any]] = []

    def startup_tables() -> tuple[dict[str, Any], dict[str, Any]]:
        startup: dict[str, Any] = {"startup_rows": startup_rows} if startup_rows else {}
        startup_meta = {"startup_argv": argv_text, "startup_hardware": hardware} if startup_rows else {}
        if cache_rows:
            startup["cache_rows"] = cache_rows
            startup_meta.update(cache_argv=argv_text, cache_hardware=hardware)
        return startup, startup_meta

    def write_startup_only() -> None:
        """Merge the rows measured so far into the results (atomically), so a kill loses at most the current row."""
        from benchmarks.leaderboard import atomic_write_json, read_json_or_warn

        old = (read_json_or_warn(RESULTS, "rerun without --startup-only") or {}) if RESULTS.is_file() else {}
        startup, startup_meta = startup_tables()
        data = {**old, "meta": {**old.get("meta", {}), **startup_meta}, **startup}
        atomic_write_json(RESULTS, data)
        DOC.write_text(render(data))

    for t_c in ns.pool_t_c:
        for pool in ns.pool_startup:
            startup_rows.append(pool_startup({**kwargs, "t_c": t_c}, pool, ns.pool_num_envs))
            print(startup_rows[-1], flush=True)
            if ns.startup_only:
                write_startup_only()
    for t_c in ns.pool_t_c if ns.cache_shift is not None else []:
        kw_shift = {**kwargs, "t_c": t_c, "attack": "shift", "attack_budget": ns.cache_shift}
        cache_rows.append(baseline_cache_row(kw_shift, ns.pool_num_envs, 256, ns.episodes))
        print(cache_rows[-1], flush=True)
        if ns.startup_only:
            write_startup_only()
    startup, startup_meta = startup_tables()
    if ns.startup_only:
        write_startup_only()
        print(DOC.read_text())
        return
    rows = []
    for n in [] if ns.skip_sync else ns.num_envs:
        batched = DDIMSigmaVectorEnv(num_envs=n, **kwargs)
        sync = gym.vector.SyncVectorEnv([lambda: DDIMSigmaEnv(**kwargs) for _ in range(n)])
        steps_per_second(batched, 1, 2, 0)  # warm-up
        row = {"num_envs": n, "batched": steps_per_second(batched, ns.episodes, ns.t_c, 0),
               "sync": steps_per_second(sync, ns.episodes, ns.t_c, 0), "floor": floor_steps_per_second(kwargs, n)}  # fmt: skip
        rows.append(row)
        print(row, flush=True)
    pool_rows = []
    for t_c in ns.pool_t_c:
        n = ns.pool_num_envs
        kw = {**kwargs, "t_c": t_c}
        plain = DDIMSigmaVectorEnv(num_envs=n, **kw)
        pooled = DDIMSigmaVectorEnv(num_envs=n, prefix_pool=n, **kw)
        drawn: set[int] = set()
        for e in range(64):  # fill the pool: reset until every entry has been drawn (so computed) once; sub-env i
            pooled.reset(seed=10_000 + n * e)  # of reset(seed=s) is seeded s + i, so fresh seeds step by n
            drawn |= set(pooled.sim.pool_index or [])
            if len(drawn) == n:
                break
        plain_rate, pooled_rate = paired_episodes_per_second(plain, pooled, ns.episodes, t_c, 0)
        row = {"t_c": t_c, "num_envs": n, "batched": plain_rate, "pooled": pooled_rate, "floor": episode_floor(kw, n)}
        pool_rows.append(row)
        print(row, flush=True)
    old_meta: dict[str, Any] = {}
    if ns.skip_sync and RESULTS.is_file():
        from benchmarks.leaderboard import read_json_or_warn

        old = read_json_or_warn(RESULTS, "rerun without --skip-sync to redo the SyncVectorEnv rows") or {}
        rows = old.get("rows", [])
        old_meta = {k: v for k, v in old.get("meta", {}).items() if not k.startswith("pool_")}
        for key in ("startup_rows", "cache_rows"):  # rows not measured this time: kept with their command
            if key not in startup and old.get(key):
                startup[key] = old[key]
    if ns.skip_sync and old_meta:  # the per-step table keeps the run that measured it
        meta = {**old_meta, "pool_argv": argv_text, "pool_hardware": hardware, **startup_meta}
        data = {"meta": meta, "rows": rows, "pool_rows": pool_rows, **startup}
        RESULTS.write_text(json.dumps(data, indent=2))
        DOC.write_text(render(data))
        print(DOC.read_text())
        return
    meta = {"argv": argv_text, "t_c": ns.t_c, "stride": ns.stride, "episodes": ns.episodes,
            "evaluator": ns.evaluator, "model": ns.model, "hardware": hardware, **startup_meta}  # fmt: skip
    data = {"meta": meta, "rows": rows, "pool_rows": pool_rows, **startup}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2))
    DOC.write_text(render(data))
    print(DOC.read_text())


if __name__ == "__main__":
    main()
