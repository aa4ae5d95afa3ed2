"""Budget sweep of every DDIMSigma-v0 threat, with and without the timestep defences, on one model.

For each configuration (threat, budget, defence) ``n`` samples are generated with the fixed sigma = 0 schedule
from the same seeds (the same ``x_T`` and draws): the attack-free prefix down to ``t_c`` is computed once and
every configuration runs the ``t_c`` attacked unit steps from it. The statistics, all paired against the
clean run (no threat, no defence): the mean change of ``Q(x_0)`` with its 95% CI (Student t), and the mean
absolute pixel change of ``x_0`` (images in [0, 1]). A configuration "measurably hurts" when the CI of its
Q change lies below 0. Wall time per configuration is recorded, with the threat's network forwards per
attacked call.

Results: ``benchmarks/results/threat_sweep.json`` (rewritten atomically after each configuration; a rerun
skips finished ones), report ``docs/threats.md`` (generated; do not edit).

Usage::

    python -m benchmarks.threat_sweep --n 200 --t-c 20
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from tqdm import tqdm

from benchmarks.leaderboard import atomic_write_json
from robust_envs.diffusion import TimestepAttack, TimestepDefence, ddim_steps, load_noise_model, randn_per_generator
from robust_envs.diffusion.models import model_weights_id
from robust_envs.quality import make_evaluator

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "threat_sweep.json"
DOC = ROOT / "docs" / "threats.md"

#: (threat, budgets, unit) of the default sweep. Timestep budgets in network timestep units; the state
#: threat's Linf budget in model space (data in [-1, 1]: 2/255 is one 8-bit grey level).
DEFAULT_SWEEP: list[tuple[str, list[float]]] = [
    ("gaussian", [0.01]),  # seed 000's scale (clip 5 x scale)
    ("shift", [1.0, 5.0, 20.0, 50.0, 100.0]),
    ("adaptive", [0.05, 0.4, 1.0, 5.0, 20.0]),
    ("state", [2 / 255, 8 / 255]),
]
#: (threat, budget, defence) cells measured with a defence on. Cells whose outcome follows by construction are
#: not run (tests/test_threats.py checks them): ``round`` leaves the clean run, integer shifts and the state
#: threat unchanged, and removes ``gaussian`` (|delta| <= 0.05) and ``adaptive`` with budget < 0.5 exactly.
DEFENDED: list[tuple[str, float, str]] = [
    ("none", 0.0, "share"),
    ("shift", 50.0, "share"),
    ("adaptive", 5.0, "round"),
    ("adaptive", 20.0, "round"),
]


def mean_ci(x: np.ndarray) -> dict[str, float]:
    """Mean and 95% CI half-width (Student t) of ``x`` ``(n,)``."""
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")
    return {"mean": float(x.mean()), "ci95": half}


def make_attack(kind: str, budget: float, grid: int = 2, steps: int = 1) -> TimestepAttack:
    """The threat of a sweep cell; ``"gaussian"`` takes ``budget`` as its scale, clip 5 x scale (paper's ratio)."""
    if kind == "gaussian":
        return TimestepAttack("gaussian", scale=budget, clip=5 * budget)
    return TimestepAttack(kind, budget=budget, grid=grid, steps=steps)


def cell_key(kind: str, budget: float, defence: str) -> str:
    """The JSON key of a cell."""
    return f"{kind}|{budget:.6g}|{defence}"


class Sweep:
    """Runs cells from shared prefixes: ``x_{t_c}`` and each generator's state after the prefix, per defence."""

    def __init__(self, model_name: str, evaluator: str, n: int, t_c: int, stride: int, seed: int, device: str) -> None:
        self.model = load_noise_model(model_name, device=device)
        self.evaluator = make_evaluator(evaluator, device=device)
        self.n, self.t_c, self.stride, self.seed = n, t_c, stride, seed
        self._prefix: dict[str, tuple[torch.Tensor, list[torch.Tensor]]] = {}

    def _gens(self) -> list[torch.Generator]:
        return [torch.Generator(device=self.model.device).manual_seed(self.seed + i) for i in range(self.n)]

    def prefix(self, defence: TimestepDefence) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``x_{t_c}`` ``(n, C, H, W)`` and the generator states after the prefix (``"round"`` shares "none"'s)."""
        key = "share" if defence.kind == "share" else "none"
        if key not in self._prefix:
            gens = self._gens()
            ts = self.model.schedule.timesteps(self.t_c, self.stride)
            x = randn_per_generator(gens, self.model.sample_shape, self.model.device)
            x = ddim_steps(self.model, x, ts[: len(ts) - self.t_c + 1], gens, TimestepAttack("none"), self.t_c, 0.0,
                           defence)  # fmt: skip
            self._prefix[key] = (x, [g.get_state() for g in gens])
        return self._prefix[key]

    def x0(self, attack: TimestepAttack, defence: TimestepDefence) -> torch.Tensor:
        """Final images ``(n, C, H, W)`` in [0, 1] of the sigma = 0 schedule under ``attack`` and ``defence``."""
        x, states = self.prefix(defence)
        gens = self._gens()
        for g, s in zip(gens, states, strict=True):
            g.set_state(s)
        seq = [*range(self.t_c, 0, -1), 0]
        x0 = ddim_steps(self.model, x.clone(), seq, gens, attack, self.t_c, 0.0, defence)
        return ((x0 + 1) / 2).clamp(0, 1)


def render(data: dict[str, Any]) -> str:
    """docs/threats.md from the JSON."""
    meta = data["meta"]
    cells = data["cells"]
    lines = [
        "# Threats on DDIMSigma-v0's noise network: budget sweep and defences",
        "",
        f"Generated by `python -m benchmarks.threat_sweep {meta['argv']}` from `benchmarks/results/threat_sweep.json`;",
        "do not edit by hand.",
        "",
        f"Model `{meta['model']}`, evaluator `{meta['evaluator']}` (scores 1..5), sigma = 0 (deterministic DDIM), "
        f"stride {meta['stride']} above t_c = {meta['t_c']}, threat at every step t <= t_c; {meta['n']} samples, the "
        "same seeds (x_T, draws) in every cell, so every change is paired against the clean run (no threat, no "
        f"defence). Model weights: {meta.get('model_weights', 'not recorded')}. Hardware: {meta['hardware']}.",
        "",
        "Threats (see `robust_envs/diffusion/attack.py`): `gaussian` is seed 000's (budget = scale, clip 5 x scale); "
        "`shift` adds +budget network timesteps; `adaptive` searches delta in {-budget, +budget} per sample and step "
        "for the largest change of the x0 prediction (white-box, 3 forwards per call); `state` is a 1-step Linf PGD on "
        "the sample the network sees (budget in model space, data in [-1, 1]; 2/255 = one grey level), 3 forwards and "
        "1 backward per call. Defences: `round` rounds the network's timestep to the integer grid; `share` is "
        "E-TSDM-style sharing of the condition inside [0, 100) in 5 intervals, applied at inference. Defended cells "
        "whose outcome follows by construction are not run (each is a test in `tests/test_threats.py`): `round` "
        "leaves the clean run, integer shifts and the state threat unchanged, and removes seed 000's attack "
        "(|delta| <= 0.05) and any `adaptive` budget below 0.5 exactly: under `round` seed 000's attack is gone.",
        "",
        "| threat | budget | budget / T | defence | mean Q(x_0) | paired change vs clean | mean abs pixel change | hurts | s per cell |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    T = meta["T"]
    for c in sorted(cells.values(), key=lambda c: (c["defence"] != "none", c["threat"], c["budget"])):
        d = c["change"]
        hurts = d["mean"] + d["ci95"] < 0
        frac = f"{c['budget'] / T:.2g}" if c["threat"] in ("shift", "adaptive", "gaussian") else "-"
        lines.append(f"| {c['threat']} | {c['budget']:.4g} | {frac} | {c['defence']} | {c['q']['mean']:.4f} | "
                     f"{d['mean']:+.4f} +- {d['ci95']:.4f} | {c['pixel_change']:.5f} | {'yes' if hurts else 'no'} | "
                     f"{c['seconds']:.0f} |")  # fmt: skip
    lines += ["", "## Reading", ""]
    undefended = [c for c in cells.values() if c["defence"] == "none" and c["threat"] != "none"]
    for kind in ("gaussian", "shift", "adaptive", "state"):
        rows = sorted([c for c in undefended if c["threat"] == kind], key=lambda c: c["budget"])
        if not rows:
            continue
        hurt = [c for c in rows if c["change"]["mean"] + c["change"]["ci95"] < 0]
        if hurt:
            first, worst = hurt[0], rows[-1]
            lines.append(f"- `{kind}`: the smallest budget that measurably lowers Q(x_0) is {first['budget']:.4g} "
                         f"(change {first['change']['mean']:+.4f} +- {first['change']['ci95']:.4f}, pixels "
                         f"{first['pixel_change']:.4f}); at {worst['budget']:.4g}: {worst['change']['mean']:+.4f}.")  # fmt: skip
        else:
            lines.append(f"- `{kind}`: no budget up to {rows[-1]['budget']:.4g} measurably lowers Q(x_0) "
                         f"(largest change {rows[-1]['change']['mean']:+.4f} +- {rows[-1]['change']['ci95']:.4f}).")  # fmt: skip
    for c in sorted((c for c in cells.values() if c["defence"] != "none"), key=lambda c: (c["threat"], c["budget"])):
        base = cells.get(cell_key(c["threat"], c["budget"], "none"))
        ref = "" if base is None else f" (undefended {base['change']['mean']:+.4f})"
        lines.append(f"- `{c['defence']}` under `{c['threat']}` {c['budget']:.4g}: change "
                     f"{c['change']['mean']:+.4f} +- {c['change']['ci95']:.4f}{ref}.")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Run the missing cells, saving after each."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--t-c", type=int, default=20)
    parser.add_argument("--stride", type=int, default=50)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--evaluator", default="levels")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=30_000)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--only", nargs="*", default=None, help="threat kinds to run (default: all)")
    ns = parser.parse_args(argv)
    if ns.threads:
        torch.set_num_threads(ns.threads)
    sweep = Sweep(ns.model, ns.evaluator, ns.n, ns.t_c, ns.stride, ns.seed, ns.device)
    meta = {"argv": " ".join(sys.argv[1:] if argv is None else argv), "n": ns.n, "t_c": ns.t_c, "stride": ns.stride,
            "model": ns.model, "model_weights": model_weights_id(ns.model), "evaluator": ns.evaluator, "seed": ns.seed,
            "T": sweep.model.schedule.num_train_timesteps,
            "hardware": f"{platform.machine()}, {ns.device}, torch {torch.__version__}, {torch.get_num_threads()} threads"}  # fmt: skip
    same = ("n", "t_c", "stride", "model", "model_weights", "evaluator", "seed")  # new weights: start afresh
    data: dict[str, Any] = {"meta": meta, "cells": {}}
    if RESULTS.is_file():
        try:
            old = json.loads(RESULTS.read_text())
        except json.JSONDecodeError:
            print(f"warning: {RESULTS} is not valid JSON; starting the sweep afresh", file=sys.stderr)
            old = None
        if old and all(old["meta"].get(k) == meta[k] for k in same):
            data["cells"] = old["cells"]
    cells = [(k, b, "none") for k, budgets in DEFAULT_SWEEP for b in budgets] + DEFENDED
    if ns.only:
        cells = [c for c in cells if c[0] in ns.only or c[0] == "none"]
    todo = [c for c in cells if cell_key(*c) not in data["cells"]]
    clean_x0 = sweep.x0(TimestepAttack("none"), TimestepDefence())
    q_clean = sweep.evaluator(clean_x0).double().cpu().numpy()
    for kind, budget, defence in tqdm(todo, desc="threat sweep", unit="cell"):
        attack = TimestepAttack("none") if kind == "none" else make_attack(kind, budget)
        t0 = time.perf_counter()
        x0 = sweep.x0(attack, TimestepDefence(defence))
        seconds = time.perf_counter() - t0
        q = sweep.evaluator(x0).double().cpu().numpy()
        data["cells"][cell_key(kind, budget, defence)] = {
            "threat": kind, "budget": budget, "defence": defence, "attack": asdict(attack),
            "forwards_per_call": attack.forwards_per_call, "q": mean_ci(q), "change": mean_ci(q - q_clean),
            "pixel_change": float((x0 - clean_x0).abs().mean()), "seconds": seconds,
        }  # fmt: skip
        data["meta"] = meta
        atomic_write_json(RESULTS, data)
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(render(data))
    print(DOC.read_text())


if __name__ == "__main__":
    main()
