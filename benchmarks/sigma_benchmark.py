"""The DDIMSigma-v0 benchmark: seed 000's Fig. 7 (r_1 against t_c) per agent and threat, with fixed references.

Usage::

    python -m benchmarks.sigma_benchmark run --agents ppo --t-c 10 20 30 40 50 60 --threats seed shift --seeds 0 1 2
    python -m benchmarks.sigma_benchmark run --agents sac tqc recurrent_ppo --t-c 20 60 --threats seed shift --seeds 0 1 2
    python -m benchmarks.sigma_benchmark finer --threat shift --t-c 20 --constants 0.8 0.85 0.9 0.95
    python -m benchmarks.sigma_benchmark heldout --threat shift --t-c 20  # held-out scorer rows of older entries
    python -m benchmarks.sigma_benchmark report     # docs/sigma_benchmark.md + docs/figures/sigma_fig7.png

Entries run on the leaderboard's runner (:func:`benchmarks.leaderboard.run_leaderboard`): one JSON per entry
under ``benchmarks/results/sigma/<threat>/tc<t_c>/``, written atomically; a rerun skips every entry whose
JSON has the same fingerprint (a corrupt JSON is reported by name and redone), so an interrupted run loses
no finished entry; a progress bar over entries; ``--engine ray`` or ``--workers N`` to spread them.

Two kinds of entry per (threat, t_c):

- ``reference``: the fixed schedules, evaluated once and shared by every agent and seed: the constant
  actions :data:`agents.evaluate_sigma.CONSTANT_GRID` (a = 0 is the baseline, r_1 = 0 exactly), a ~ U(0, 1),
  and the non-RL timestep defences (``round``, ``share``) as sigma = 0 schedules against the undefended
  baseline; with the independent quality measures of each schedule's images.
- ``<agent>_seed<k>``: the agent trained with the stated budget (checkpoint under
  ``benchmarks/checkpoints/sigma/``, reused when its fingerprint matches), evaluated the paper's way: 500
  samples (``--n-eval``), r_1 with a 95% CI against sigma = 0, the same seeds as the references.

Every final image is also scored by the held-out replicate of the env's scorer (``evaluator="levels_heldout"``, same
recipe, seed 1, never trained on): per-sample ``r1_heldout``, paired in the report against the best constant to check
that an agent's gain is not specific to the scorer it was trained on (reward over-optimisation).

Aggregation across seeds uses rliable (Agarwal et al. 2021): the interquartile mean (IQM) of the per-seed mean
r_1 with stratified bootstrap 95% CIs.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.leaderboard import _git_at_import, atomic_write_json, read_json_or_warn, run_leaderboard

__all__ = ["AGENTS", "THREATS", "SigmaEntry", "build_report", "load_sigma_results", "main"]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results" / "sigma"
CHECKPOINT_DIR = REPO_ROOT / "benchmarks" / "checkpoints" / "sigma"
SCHEMA_VERSION = 1

#: Threats of the benchmark (env keyword arguments). ``seed``: seed 000 sec. 5.1.3. ``shift``: the weakest
#: threat and budget of docs/threats.md that clearly hurts the embedded model, i.e. lowers mean Q(x_0) by at
#: least 0.1 level (a tenth of the 1..5 scale; smaller budgets hurt measurably but by less than the gaps
#: between the constant schedules): a same-sign shift of the network's timestep by 20 units (0.02 T),
#: -0.255 +- 0.023 at t_c = 20 (shift 5: -0.066), where adaptive 20 gives -0.159 and state 8/255 -0.093 (measured
#: on the retrained 2,084-step UNet; on the 976-step one shift 20 gave -0.126). ``none``: no threat.
THREATS: dict[str, dict[str, Any]] = {
    "seed": {"attack": "gaussian", "attack_scale": 0.01, "attack_clip": 0.05},
    "shift": {"attack": "shift", "attack_budget": 20.0},
    "none": {"attack": "none"},
}

#: Agents and their training budgets (:class:`agents.ppo_sigma.Args` overrides). The paper's PPO (the Args
#: defaults, run ZE of docs/sigma_tuning.md: gated CNN code of x_t next to t, one CNN each for actor and critic,
#: GAE lambda 1, `delta` reward, entropy bonus 0.01, 32,768 steps); SAC, TQC
#: (SB3's learning rate and batch, log std -1, one gradient step per transition as in run K there, which used
#: the flat features and the paper's reward; here they share PPO's features and reward) and RecurrentPPO for
#: the agent-agnostic check. Budgets are sized for a 2-core CPU (docs/sigma_benchmark.md).
AGENTS: dict[str, dict[str, Any]] = {
    "ppo": {"algo": "ppo", "total_timesteps": 32768},
    "sac": {"algo": "sac", "total_timesteps": 8192, "learning_rate": 3e-4, "batch_size": 256, "log_std_init": -1.0},
    "tqc": {"algo": "tqc", "total_timesteps": 8192, "learning_rate": 3e-4, "batch_size": 256, "log_std_init": -1.0},
    "recurrent_ppo": {"algo": "recurrent_ppo", "total_timesteps": 8192},
    # the paper's PPO that also sees the scorer's Q of its current x0 prediction (run ZQ0 of docs/sigma_tuning.md)
    "ppo_q": {"algo": "ppo", "total_timesteps": 32768, "observe": "x_t,t,q", "extractor": "cnn_gated"},
    # PPO as a contextual bandit over per-image constants that also sees the scorer's Q of the x0 prediction
    # (docs/sigma_headroom.md: that feature predicts which constant an unseen image prefers; run ZQH0 of
    # docs/sigma_tuning.md): one action per episode from (x_{t_c}, t_c, q_x0), 65,536 env steps = 3,276 decisions
    # the paper's PPO with gamma 1 instead of 0.995. The env's `delta` reward is shaping without the discount
    # (r_t = D_t - D_{t+1}), so under gamma < 1 the discounted return is gamma^(T-1) r_1 plus (1 - gamma) times the
    # discounted sum of the intermediate D_t (the x0 predictions' quality difference, which injected noise lowers):
    # 1 - 0.995^59 = 26% of the objective at t_c 60, 9% at t_c 20. With gamma 1 the return is exactly r_1.
    # Measured at shift / t_c 60 (3 seeds): IQM r_1 +0.082 [+0.068, +0.092] against PPO's +0.048 [+0.025, +0.060],
    # still below a = 1 (+0.112; paired -0.044, -0.028, -0.020, two CIs containing 0); one seed in three still drops
    # to a = 0 mid-episode (PPO: two in three), so the discount is not the whole cause.
    "ppo_gamma1": {"algo": "ppo", "total_timesteps": 32768, "gamma": 1.0},
    # the same with three times the steps: at t_c 60, 32,768 env steps are 546 episodes, a third of t_c 20's 1,638.
    # Measured (seed 0): mean action 0.18, r_1 +0.035, below its own 32,768-step run (+0.068): more steps alone do not help
    "ppo_gamma1_long": {"algo": "ppo", "total_timesteps": 98304, "gamma": 1.0},
    # the paper's PPO (gamma 1) started at the constant a = 1 instead of the box's middle (residual policy learning,
    # Silver et al. 2018), with rollouts of 120 steps per env (two whole episodes at t_c 60: Monte-Carlo returns with
    # no bootstrap at the rollout's end, 32 episodes per update instead of 8.5). Screened at shift / t_c 60 (seed 0,
    # 100 samples, paired to a = 1; `run --agents ppo_gamma1 --t-c 60 --threats shift --seeds 0 --n-eval 100
    # --set ...` with its own --results-dir and --checkpoint-dir, then `report` on that folder): started at a = 1 with 32-step rollouts (`--set init_action=1.0`) it
    # drifts off (a 0.6 in the first steps, -0.042 [-0.108, +0.025]); from the middle with 120-step rollouts
    # (`--set n_steps=120`) it falls lower (-0.116 [-0.222, -0.011]); both together hold a ~ 0.98 (-0.020
    # [-0.031, -0.009]).
    "ppo_init1": {"algo": "ppo", "total_timesteps": 32768, "gamma": 1.0, "init_action": 1.0, "n_steps": 120},
    # the same start as a contextual bandit: one action per episode from x_{t_c}, held to t = 1 (`hold_action`), so each
    # exploration draw moves the whole episode and its effect on r_1 is not diluted over t_c independent per-step draws
    # (32,768 env steps = 546 decisions at t_c 60). Screened at shift / t_c 60, seed 1 (the seed where ppo_init1 drifts
    # to 0.85), 100 samples: paired to a = 1 +0.022 [-0.034, +0.078] (ppo_init1 on the same samples -0.076).
    "ppo_init1_hold": {"algo": "ppo", "total_timesteps": 32768, "gamma": 1.0, "init_action": 1.0, "hold_action": True,
                       "n_steps": 8, "batch_size": 32},
    # ppo_init1_hold without being told the cell's best constant: the learner spends 32 training episodes on each
    # constant of the grid (`warm_start`, paired on its own training seeds, counted in the budget: 7,680 of the 32,768
    # env steps at t_c 60) and starts at the best one, then learns as ppo_init1_hold. Its measured verdict per cell:
    # docs/sigma_benchmark.md, "At a glance" (a comment here would go stale as cells are added)
    "ppo_warm_hold": {"algo": "ppo", "total_timesteps": 32768, "gamma": 1.0, "warm_start": 32, "hold_action": True,
                      "n_steps": 8, "batch_size": 32},
    # ppo_warm_hold with the Gaussian's mean started one initial std past the box's edge when the warm start picks an
    # edge constant (`edge_margin`, agents/ppo_sigma.py): ppo_warm_hold starts on the edge and ends 0.003-0.014 below
    # a = 1 at seed 000's threat, t_c 30-50 (mean action 0.96-1.00), because update noise can only move a clipped
    # action inwards. Where the warm start picks an inner constant the two train alike
    "ppo_warm_hold_edge": {"algo": "ppo", "total_timesteps": 32768, "gamma": 1.0, "warm_start": 32, "hold_action": True,
                           "n_steps": 8, "batch_size": 32, "edge_margin": 1.0},
    # ppo_warm_hold_edge with the margin at the cap a = 1 only (`edge_margin_side`): at the lower edge (shift / t_c 10,
    # where the warm start picks a = 0, the sigma = 0 baseline itself) the margin cost 0.014 and 0.029 r_1 against
    # ppo_warm_hold, paired. It trains as ppo_warm_hold_edge where the warm start picks a = 1 and as ppo_warm_hold
    # where it picks a = 0 or an inner constant
    "ppo_warm_hold_cap": {"algo": "ppo", "total_timesteps": 32768, "gamma": 1.0, "warm_start": 32, "hold_action": True,
                          "n_steps": 8, "batch_size": 32, "edge_margin": 1.0, "edge_margin_side": "upper"},
    # ppo_warm_hold_cap deployed only where it is shown better than its warm start's constant on 128 validation
    # episodes of its own (`safe_improvement`, a one-sided 95% bound: Thomas et al. 2015), else that constant. Its
    # learner is ppo_warm_hold_cap's (the same training arguments: the runner reuses that entry's checkpoint where it
    # is current); the validation episodes (2 x 128 x t_c env steps) are not counted in total_timesteps
    "ppo_warm_hold_cap_safe": {"algo": "ppo", "total_timesteps": 32768, "gamma": 1.0, "warm_start": 32,
                               "hold_action": True, "n_steps": 8, "batch_size": 32, "edge_margin": 1.0,
                               "edge_margin_side": "upper", "safe_improvement": 128},
    # ppo_warm_hold_cap_safe with 4x the validation episodes: at 128 the one-sided bound does not resolve the
    # learner's 0.02-0.05 r_1 gains under `shift` at t_c 10-20 (standard errors 0.014-0.024 in those tests), so the
    # learner's `beats` became `matches`; 512 halves the standard error. Same learner (the runner reuses it)
    "ppo_warm_hold_cap_safe512": {"algo": "ppo", "total_timesteps": 32768, "gamma": 1.0, "warm_start": 32,
                                  "hold_action": True, "n_steps": 8, "batch_size": 32, "edge_margin": 1.0,
                                  "edge_margin_side": "upper", "safe_improvement": 512},
    "ppo_qh": {"algo": "ppo", "total_timesteps": 65536, "n_steps": 8, "batch_size": 32, "hold_action": True,
               "observe": "x_t,t,q", "prefix_pool": 1024, "extractor": "cnn_gated"},
}


#: Training seeds of every grid entry (issue 11: 3 seeds per agent, t_c and threat).
GRID_SEEDS = (0, 1, 2)

#: :class:`agents.ppo_sigma.Args` fields added after entries were recorded, with the value that reproduces the
#: behaviour before them: left out of :meth:`Entry.training_args` at that value, so the older entries keep their
#: fingerprint (any other value is part of it).
ADDED_ARGS: dict[str, Any] = {"init_action": 0.5, "warm_start": 0, "edge_margin": 0.0, "edge_margin_side": "both",
                              "safe_improvement": 0}

#: :class:`agents.ppo_sigma.Args` fields that act after learning (on the trained learner): two agents whose training
#: arguments differ only in these train alike, so an entry reuses the other's trained learner where that entry's
#: checkpoint is current (:meth:`SigmaEntry.training_twin`) and runs only its own post-training step.
POST_TRAINING_ARGS: dict[str, Any] = {"safe_improvement": 0}


def _hardware(device: str, threads: int) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else None
    return {"device": device, "gpu": gpu, "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": threads,
            "platform": platform.platform(), "load_avg_15min": round(os.getloadavg()[2], 2)}  # fmt: skip


def _versions() -> dict[str, str]:
    import gymnasium
    import sb3_contrib
    import stable_baselines3

    return {"python": platform.python_version(), "torch": torch.__version__, "gymnasium": gymnasium.__version__,
            "stable_baselines3": stable_baselines3.__version__, "sb3_contrib": sb3_contrib.__version__,
            "numpy": np.__version__}  # fmt: skip


@dataclass(frozen=True)
class SigmaEntry:
    """One benchmark entry: the references of a (threat, t_c) cell, or one trained agent.

    Attributes:
        agent: ``"reference"`` or a key of :data:`AGENTS`.
        t_c: critical timestep (episode length).
        threat: a key of :data:`THREATS`.
        seed: training seed of an agent (0 for the references).
        n_eval: evaluation samples (seed 000: 500).
        eval_seed: sample i of every schedule uses env seed ``eval_seed + i``.
        agent_overrides: ``(field, value)`` pairs overriding :data:`AGENTS` (e.g. a smaller budget).
        results_dir, checkpoint_dir: roots of the JSONs and of the trained policies.
        device: torch device of the env's networks (``"cpu"``, ``"cuda"``).
        threads: torch intra-op threads for this entry.
        model, evaluator, stride: the env's backends (the benchmark's are the embedded defaults).
    """

    agent: str
    t_c: int
    threat: str
    seed: int = 0
    n_eval: int = 500
    eval_seed: int = 10_000
    agent_overrides: tuple[tuple[str, Any], ...] = ()
    results_dir: str = str(RESULTS_DIR)
    checkpoint_dir: str = str(CHECKPOINT_DIR)
    device: str = "cpu"
    threads: int = 1
    model: str = "embedded"
    evaluator: str = "levels"
    stride: int = 50

    def __post_init__(self) -> None:
        if self.threat not in THREATS:
            raise ValueError(f"threat must be one of {sorted(THREATS)}, got {self.threat!r}")
        if self.agent != "reference" and self.agent not in AGENTS:
            raise ValueError(f"agent must be 'reference' or one of {sorted(AGENTS)}, got {self.agent!r}")

    @property
    def name(self) -> str:
        """``<threat>/tc<t_c>/<agent>_seed<seed>`` (``reference`` for the references)."""
        tail = "reference" if self.agent == "reference" else f"{self.agent}_seed{self.seed}"
        return f"{self.threat}/tc{self.t_c}/{tail}"

    def result_path(self) -> Path:
        """Where the entry's JSON goes."""
        return Path(self.results_dir) / f"{self.name}.json"

    def checkpoint_path(self) -> Path:
        """The trained policy's folder (agents only)."""
        return Path(self.checkpoint_dir) / self.name

    def env_kwargs(self) -> dict[str, Any]:
        """DDIMSigma-v0 arguments of this entry."""
        return {"t_c": self.t_c, "stride": self.stride, "action": "sigma_frac", "evaluator": self.evaluator,
                "model": self.model, "device": self.device, **THREATS[self.threat]}  # fmt: skip

    def agent_args(self) -> dict[str, Any]:
        """The :class:`agents.ppo_sigma.Args` fields of the agent (empty for the references)."""
        if self.agent == "reference":
            return {}
        return {**AGENTS[self.agent], **dict(self.agent_overrides)}

    def _args(self) -> Any:
        """The :class:`agents.ppo_sigma.Args` the agent trains with (no bars, no TensorBoard)."""
        from agents.ppo_sigma import Args

        env = {k: v for k, v in self.env_kwargs().items() if k in Args.__annotations__}
        return Args(**{**self.agent_args(), **env, "seed": self.seed, "progress_bar": False, "tensorboard": False})

    def training_args(self) -> dict[str, Any]:
        """Every :class:`agents.ppo_sigma.Args` field the agent trains with (defaults resolved; empty for the
        references), without the ones that do not change the result (output folder, bars, logs, device).
        """
        if self.agent == "reference":
            return {}
        from agents.ppo_sigma import resolved_ent_coef

        args = dataclasses.asdict(self._args())
        for name in ("out_dir", "progress_bar", "tensorboard", "device"):
            args.pop(name)
        args["ent_coef"] = str(resolved_ent_coef(self._args()))  # PPO's 'auto' moved from SB3's 0 to 0.01
        for name, neutral in ADDED_ARGS.items():  # at the value that reproduces older entries: left out, so they stay valid
            if name in args and args[name] == neutral:
                args.pop(name)
        return args

    def training_twin(self) -> SigmaEntry | None:
        """Another agent's entry that trains exactly as this one (training arguments equal up to
        :data:`POST_TRAINING_ARGS`, same cell and seed) and whose checkpoint is current, or None. Its trained learner
        is this entry's: only the post-training step differs (e.g. ``ppo_warm_hold_cap_safe`` and ``ppo_warm_hold_cap``).
        """
        if self.agent == "reference" or not any(k in self.agent_args() for k in POST_TRAINING_ARGS):
            return None

        def core(entry: SigmaEntry) -> dict[str, Any]:
            return {k: v for k, v in entry.training_args().items() if k not in POST_TRAINING_ARGS}

        mine = core(self)
        for other in sorted(AGENTS):
            if other == self.agent or any(AGENTS[other].get(k, v) != v for k, v in POST_TRAINING_ARGS.items()):
                continue
            overrides = tuple((k, v) for k, v in self.agent_overrides if k not in POST_TRAINING_ARGS)
            twin = dataclasses.replace(self, agent=other, agent_overrides=overrides)
            try:
                if core(twin) != mine:
                    continue
            except ValueError:  # this entry's overrides make no valid Args for that agent: not a twin
                continue
            stamp = twin.checkpoint_path() / "fingerprint.txt"
            if stamp.is_file() and stamp.read_text() == twin.fingerprint() and (twin.checkpoint_path() / "policy.zip").is_file():
                return twin
        return None

    def weights(self) -> dict[str, str]:
        """What identifies the weights the entry runs on: ``{"model": ..., "evaluator": ...}``
        (:func:`robust_envs.diffusion.models.model_weights_id`; the embedded scorer's folder hashed the same way,
        another evaluator by name). A model retrained in place changes them, so every entry runs again.
        """
        return _weights_ids(self.model, self.evaluator)

    def fingerprint(self) -> str:
        """Hash of everything that determines the entry's result, the agent's defaults resolved: a change of an
        :class:`agents.ppo_sigma.Args` default, or of the model's or the scorer's weights (:meth:`weights`),
        changes the fingerprint, so the entry is trained again.
        """
        payload = {"agent": self.agent, "args": self.training_args(), "env": self.env_kwargs(), "seed": self.seed,
                   "n_eval": self.n_eval, "eval_seed": self.eval_seed, "schema": SCHEMA_VERSION,
                   "weights": self.weights()}  # fmt: skip
        payload["env"].pop("device")  # the same entry on another device is the same entry (hardware is recorded)
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def is_done(self) -> bool:
        """True when a valid result JSON with this entry's fingerprint exists; a corrupt one is named and redone."""
        path = self.result_path()
        if not path.is_file():
            return False
        try:
            return json.loads(path.read_text()).get("fingerprint") == self.fingerprint()
        except (OSError, json.JSONDecodeError) as err:
            logger.warning("%s is unreadable (%s); the entry will be run again", path, err)
            return False

    def run(self) -> dict[str, Any]:
        """Train (or reuse) and evaluate; write the JSON atomically; return the record."""
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            record = self._reference() if self.agent == "reference" else self._agent()
        finally:
            torch.set_num_threads(previous)
        record.update({
            "schema_version": SCHEMA_VERSION, "fingerprint": self.fingerprint(), "name": self.name,
            "weights": self.weights(), "agent": self.agent, "t_c": self.t_c, "threat": self.threat, "threat_kwargs": THREATS[self.threat],
            "seed": self.seed, "n_eval": self.n_eval, "eval_seed": self.eval_seed, "env_kwargs": self.env_kwargs(),
            "agent_overrides": [list(pair) for pair in self.agent_overrides],
            "hardware": _hardware(self.device, self.threads), "library_versions": _versions(), "git": _git_at_import(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })  # fmt: skip
        atomic_write_json(self.result_path(), record)
        return record

    # ------------------------------------------------------------------------------------------- internals
    def _reference(self) -> dict[str, Any]:
        from agents.evaluate_sigma import evaluate_defence, evaluate_policy, reference_policies, summarize

        kw = self.env_kwargs()
        t0 = time.perf_counter()
        results = [evaluate_policy(n, p, kw, self.n_eval, 250, self.eval_seed, progress=False)
                   for n, p in reference_policies().items()]  # fmt: skip
        results += [evaluate_defence(d, kw, results[0], self.n_eval, 250, self.eval_seed, progress=False)
                    for d in ("round", "share")]  # fmt: skip
        rows = summarize(results)
        quality = {r.name: independent_measures(r.x0_all) for r in results}
        quality["a=0 (baseline)"] = independent_measures(results[0].x0_baseline_all)
        for row, res in zip(rows, results, strict=True):
            row["independent"] = quality[row["schedule"]]
            row["r1"] = [round(float(v), 6) for v in res.r1]  # per sample: agents are compared paired
            # a defence's own baseline is the defended one: its r_1 is against the undefended baseline of results[0]
            base = results[0].x0_baseline_all if row["schedule"].startswith("defence") else res.x0_baseline_all
            row["r1_heldout"] = heldout_r1(res.x0_all, base)
        return {"kind": "reference", "rows": rows, "baseline_independent": quality["a=0 (baseline)"],
                "heldout_scorer": heldout_scorer_id(), "eval_time_s": time.perf_counter() - t0}  # fmt: skip

    def _agent(self) -> dict[str, Any]:
        from agents.evaluate_sigma import evaluate_policy, summarize
        from agents.ppo_sigma import apply_safe_improvement, load_deployed, train

        args = self._args()
        ckpt = self.checkpoint_path()
        t0, c0 = time.perf_counter(), time.process_time()
        reused = (ckpt / "fingerprint.txt").is_file() and (ckpt / "fingerprint.txt").read_text() == self.fingerprint()
        meta = read_json_or_warn(ckpt / "train.json", "the agent is trained again") if reused else None
        reused = isinstance(meta, dict)
        if reused:
            assert isinstance(meta, dict)
            policy = load_deployed(ckpt, args.algo)
            train_time, train_cpu = meta["train_time_s"], meta["train_cpu_s"]
        else:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=ckpt.parent, prefix=f".{ckpt.name}."))
            try:
                meta = {}
                twin = self.training_twin()
                twin_json = twin.checkpoint_path() / "train.json" if twin else None
                twin_meta = read_json_or_warn(twin_json, "the agent is trained again") if twin_json and twin_json.is_file() else None
                if not isinstance(twin_meta, dict) or not {"train_time_s", "train_cpu_s"} <= set(twin_meta):
                    twin = None  # a twin whose train.json is unreadable is not reused
                if twin is None:
                    policy = train(dataclasses.replace(args, out_dir=str(tmp)))
                    train_time, train_cpu = time.perf_counter() - t0, time.process_time() - c0
                else:  # the twin's learner is this entry's: copy it, then run only the post-training step
                    assert isinstance(twin_meta, dict)
                    for f in twin.checkpoint_path().iterdir():
                        if f.is_file() and f.name not in ("fingerprint.txt", "train.json", "safe_improvement.json"):
                            shutil.copy2(f, tmp / f.name)
                    (tmp / "args.json").write_text(json.dumps(dataclasses.asdict(dataclasses.replace(
                        args, out_dir=str(tmp))), indent=2))  # fmt: skip
                    policy = (apply_safe_improvement(dataclasses.replace(args, out_dir=str(tmp)), tmp)
                              if args.safe_improvement else load_deployed(tmp, args.algo))  # fmt: skip
                    train_time = twin_meta["train_time_s"] + time.perf_counter() - t0
                    train_cpu = twin_meta["train_cpu_s"] + time.process_time() - c0
                    meta = {"training_reused_from": twin.name, "twin_fingerprint": twin.fingerprint()}
                meta.update(train_time_s=train_time, train_cpu_s=train_cpu)
                (tmp / "train.json").write_text(json.dumps(meta))
                (tmp / "fingerprint.txt").write_text(self.fingerprint())
                if ckpt.exists():
                    shutil.rmtree(ckpt)
                os.replace(tmp, ckpt)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp)
        safe_file = ckpt / "safe_improvement.json"
        safe = read_json_or_warn(safe_file, "the entry records no safe-improvement test") if safe_file.is_file() else None
        warm_file = ckpt / "warm_start.json"
        warm = read_json_or_warn(warm_file, "the entry records no warm start") if warm_file.is_file() else None
        t1 = time.perf_counter()
        cached = self._evaluation_of_the_same_policy(safe, meta)
        if cached is None:
            result = evaluate_policy(self.agent, policy, self.env_kwargs(), self.n_eval, 250, self.eval_seed,
                                     progress=False)  # fmt: skip
            row = summarize([result])[0]
            row["independent"] = independent_measures(result.x0_all)
            evaluation = {"r1": [round(float(v), 6) for v in result.r1],
                          "r1_heldout": heldout_r1(result.x0_all, result.x0_baseline_all),
                          "heldout_scorer": heldout_scorer_id()}  # fmt: skip
        else:
            row, evaluation = cached
        return {"kind": "agent", "row": row, "warm_start": warm, "safe_improvement": safe, **evaluation,
                "train_args": dataclasses.asdict(args), "train_time_s": train_time, "train_cpu_s": train_cpu,
                "checkpoint_reused": reused, "training_reused_from": (meta or {}).get("training_reused_from"),
                "eval_time_s": time.perf_counter() - t1}  # fmt: skip

    def _evaluation_of_the_same_policy(self, safe: dict[str, Any] | None,
                                       meta: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]] | None:  # fmt: skip
        """A stored evaluation of the very policy this entry deploys, on the same samples and env, or None.

        Evaluation is deterministic, so where the deployed policy is a constant ``a`` of the grid (the
        safe-improvement test kept it) the cell's current reference row ``a=<a>`` is its evaluation, and where it is
        the learner copied from a training twin, the twin's current result is. Returns ``(row, evaluation)`` with
        ``evaluation_reused_from`` naming the source; None where no such result is current (the entry is evaluated).
        """
        if safe is not None and safe.get("deployed") == "constant":
            source = dataclasses.replace(self, agent="reference", seed=0, agent_overrides=())
            stored = _current_result(source)
            rows = {r["schedule"]: r for r in (stored or {}).get("rows", [])}
            ref_row = rows.get(f"a={float(safe['constant_action']):g}")
            if stored is None or ref_row is None or "r1" not in ref_row or "r1_heldout" not in ref_row:
                return None
            row = {k: v for k, v in ref_row.items() if k not in ("r1", "r1_heldout")}
            evaluation = {"r1": ref_row["r1"], "r1_heldout": ref_row["r1_heldout"],
                          "heldout_scorer": stored.get("heldout_scorer"), "evaluation_reused_from": source.name}  # fmt: skip
        elif (meta or {}).get("training_reused_from") and (safe is None or safe.get("deployed") == "learner"):
            twin = self.training_twin()
            if twin is None or twin.name != (meta or {}).get("training_reused_from"):
                return None
            stored = _current_result(twin)
            if stored is None or stored.get("kind") != "agent":
                return None
            row = dict(stored["row"])
            evaluation = {**{k: stored.get(k) for k in ("r1", "r1_heldout", "heldout_scorer")},
                          "evaluation_reused_from": twin.name}  # fmt: skip
        else:
            return None
        row["schedule"] = self.agent
        return row, evaluation


def independent_measures(x0: np.ndarray | None) -> dict[str, float] | None:
    """Quality measures of final images ``(n, C, H, W)`` in [0, 1] that do not use the env's scorer.

    KID / FID over the embedded Fashion-MNIST feature classifier against the 10,000 real test images, the
    classifier's mean confidence and the offline pyiqa no-reference metric PIQE
    (:func:`robust_envs.quality.fidelity.independent_quality`). Returns None for images of another shape
    (the feature classifier is Fashion-MNIST's).
    """
    global _FIDELITY
    if x0 is None or tuple(x0.shape[1:]) != (1, 28, 28):
        return None
    from robust_envs.quality.fidelity import FeatureFidelity, independent_quality

    if _FIDELITY is None:
        _FIDELITY = FeatureFidelity(device="cpu")  # keeps the real features cached across calls
    return {k: float(v) for k, v in independent_quality(torch.as_tensor(x0), fidelity=_FIDELITY).items()}


_FIDELITY: Any = None
_HELDOUT: dict[str, Any] = {}


def heldout_scorer_id() -> str | None:
    """``"sha256:<16 hex>"`` of the held-out levels scorer's weights
    (:data:`robust_envs.quality.HELDOUT_LEVELS_SCORER`), None where it is absent. Stored beside ``r1_heldout``:
    per-sample rows of another scorer are not compared.
    """
    from robust_envs.fileio import weights_digest
    from robust_envs.quality import HELDOUT_LEVELS_SCORER

    if not (HELDOUT_LEVELS_SCORER / "model.safetensors").is_file():
        return None
    return "sha256:" + weights_digest(HELDOUT_LEVELS_SCORER)


def heldout_r1(x0: np.ndarray | None, x0_baseline: np.ndarray | None) -> list[float] | None:
    """Per-sample r_1 (seed 000 Eq. 18) under the held-out levels scorer, a replicate of the env's scorer (same recipe,
    seed 1) that no agent trains on: ``Q_heldout(x0) - Q_heldout(x0_baseline)``, each ``(n, 1, 28, 28)`` float in
    [0, 1], the same samples in the same order. A gain the env's scorer sees and this one does not is specific to
    the scorer's weights (reward over-optimisation), not to the images. None for other shapes or without the scorer.
    """
    if x0 is None or x0_baseline is None or tuple(x0.shape[1:]) != (1, 28, 28) or heldout_scorer_id() is None:
        return None
    if x0.shape != x0_baseline.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and x0_baseline {tuple(x0_baseline.shape)} must be the same samples")
    from robust_envs.quality import make_evaluator

    if "levels_heldout" not in _HELDOUT:
        _HELDOUT["levels_heldout"] = make_evaluator("levels_heldout")
    scorer = _HELDOUT["levels_heldout"]
    diff = scorer(torch.as_tensor(x0)) - scorer(torch.as_tensor(x0_baseline))
    return [round(float(v), 6) for v in diff]


# ----------------------------------------------------------------------------------------------- report
FINER_DIR = REPO_ROOT / "benchmarks" / "results" / "sigma_finer"


def run_finer(threat: str, t_c: int, constants: list[float], threads: int = 1, progress: bool = True,
              finer_dir: Path = FINER_DIR, **entry_kwargs: Any) -> dict[str, Any]:  # fmt: skip
    """Evaluate constant actions outside the reference grid on a cell's samples (the reference entry's env, seeds
    and ``n_eval``), so agents can be paired against a finer grid of constants than {0.25, 0.5, 0.75, 1}; merged
    into ``<finer_dir>/<threat>_tc<t_c>.json`` (atomic write; a constant already stored for these weights is
    skipped). ``entry_kwargs`` (``n_eval``, ``model``, ``evaluator``, ``stride``) must match the cell's entries.

    Raises:
        ValueError: a constant outside [0, 1], or a threat the benchmark does not define.
    """
    from agents.evaluate_sigma import evaluate_policy
    from agents.reference import ConstantAction

    bad = [a for a in constants if not 0.0 <= a <= 1.0]
    if bad:
        raise ValueError(f"constants must be in [0, 1], got {bad}")
    entry = SigmaEntry("reference", t_c, threat, **entry_kwargs)
    path = Path(finer_dir) / f"{threat}_tc{t_c}.json"
    record = read_json_or_warn(path, "it is written again") if path.is_file() else None
    if not isinstance(record, dict) or record.get("weights") != entry.weights() or record.get("n_eval") != entry.n_eval:
        record = {"threat": threat, "t_c": t_c, "n_eval": entry.n_eval, "eval_seed": entry.eval_seed,
                  "env_kwargs": entry.env_kwargs(), "weights": entry.weights(), "constants": {}}  # fmt: skip
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for a in constants:
            name = f"a={a:g}"
            if name in record["constants"]:
                continue
            t0 = time.perf_counter()
            res = evaluate_policy(name, ConstantAction(a), entry.env_kwargs(), entry.n_eval, 250, entry.eval_seed,
                                  progress=progress)  # fmt: skip
            record["constants"][name] = {"mean_r1": float(res.r1.mean()), "r1": [round(float(v), 6) for v in res.r1],
                                         "r1_heldout": heldout_r1(res.x0_all, res.x0_baseline_all),
                                         "heldout_scorer": heldout_scorer_id(),
                                         "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
            record.update({"hardware": _hardware(entry.device, threads), "git": _git_at_import(),
                           "command": "python -m benchmarks.sigma_benchmark finer --threat " + threat + f" --t-c {t_c} "
                           "--constants " + " ".join(k[2:] for k in record["constants"])})  # fmt: skip
            atomic_write_json(path, record)
    finally:
        torch.set_num_threads(previous)
    return record


def backfill_heldout(threat: str, t_c: int, results_dir: Path = RESULTS_DIR, finer_dir: Path = FINER_DIR,
                     checkpoint_dir: Path = CHECKPOINT_DIR, threads: int = 1, progress: bool = True) -> list[str]:  # fmt: skip
    """Add the held-out scorer's per-sample r_1 (:func:`heldout_r1`) to a cell's entries made before it existed.

    Re-evaluates each agent entry of the cell (its stored policy; nothing is trained) and the cell's best constant (by
    the env's scorer, over the reference grid and the `finer` constants) on the entry's own samples, checks that the
    env's scorer gives back the stored per-sample r_1 (max abs difference <= 1e-3), and writes ``r1_heldout`` and
    ``heldout_scorer`` into the JSON (atomic; everything else kept). Stale entries and entries that already hold this
    scorer's rows are skipped. Returns one line per entry filled or skipped.

    Raises:
        FileNotFoundError: without the held-out scorer, or an agent entry without its policy checkpoint.
        RuntimeError: when an entry's r_1 is not reproduced (nothing of that entry is written).
    """
    from agents.evaluate_sigma import evaluate_policy
    from agents.ppo_sigma import load_deployed
    from agents.reference import ConstantAction

    hid = heldout_scorer_id()
    if hid is None:
        raise FileNotFoundError("no held-out levels scorer; build it with `python scripts/train_levels_scorer.py "
                                "--seed 1 --out robust_envs/assets/levels_scorer_heldout`")  # fmt: skip
    cell_dir = Path(results_dir) / threat / f"tc{t_c}"
    done: list[str] = []

    def evaluate(name: str, policy: Any, entry: SigmaEntry, stored: list[float]) -> list[float] | None:
        res = evaluate_policy(name, policy, entry.env_kwargs(), entry.n_eval, 250, entry.eval_seed, progress=progress)
        gap = float(np.abs(np.asarray(res.r1, dtype=np.float64) - np.asarray(stored, dtype=np.float64)).max())
        if gap > 1e-3:
            raise RuntimeError(f"{entry.name} ({name}): r_1 not reproduced (max abs difference {gap:.2e} > 1e-3); "
                               "rerun the entry with `run` instead")  # fmt: skip
        return heldout_r1(res.x0_all, res.x0_baseline_all)

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        paths = sorted(cell_dir.glob("*.json"))
        records = {p: json.loads(p.read_text()) for p in paths}
        for path, rec in records.items():
            if rec.get("kind") != "agent":
                continue
            if (why := stale_reason(rec)) or rec.get("heldout_scorer") == hid:
                done.append(f"{rec.get('name')}: skipped ({why or 'already filled'})")
                continue
            entry = dataclasses.replace(_current_entry(rec), results_dir=str(results_dir), checkpoint_dir=str(checkpoint_dir))
            ckpt = entry.checkpoint_path()
            if not ckpt.is_dir():
                raise FileNotFoundError(f"{entry.name}: no policy checkpoint at {ckpt}; rerun the entry with `run`")
            policy = load_deployed(ckpt, rec["train_args"]["algo"])
            rec.update(r1_heldout=evaluate(rec["agent"], policy, entry, rec["r1"]), heldout_scorer=hid)
            atomic_write_json(path, rec)
            done.append(f"{entry.name}: filled")
        ref_path = cell_dir / "reference.json"
        ref = records.get(ref_path)
        if not ref or stale_reason(ref):
            return done + [f"{threat}/tc{t_c}/reference: missing or stale; its constants are not filled"]
        entry = dataclasses.replace(_current_entry(ref), results_dir=str(results_dir))
        consts: dict[str, tuple[dict[str, Any], Path, dict[str, Any]]] = {
            r["schedule"]: (r, ref_path, ref) for r in ref["rows"] if r["schedule"].startswith("a=") and "r1" in r}
        finer_path = Path(finer_dir) / f"{threat}_tc{t_c}.json"
        finer = read_json_or_warn(finer_path, "rerun `finer`") if finer_path.is_file() else None
        if isinstance(finer, dict) and finer.get("weights") == ref.get("weights"):
            consts.update({k: (v, finer_path, finer) for k, v in finer["constants"].items()})
        if not consts:
            return done
        name, (row, path, owner) = max(consts.items(), key=lambda kv: kv[1][0]["mean_r1"])
        if row.get("r1_heldout") and row.get("heldout_scorer", owner.get("heldout_scorer")) == hid:
            return done + [f"{threat}/tc{t_c} best constant {name}: skipped (already filled)"]
        row.update(r1_heldout=evaluate(name, ConstantAction(float(name[2:])), entry, row["r1"]), heldout_scorer=hid)
        atomic_write_json(path, owner)
        done.append(f"{threat}/tc{t_c} best constant {name}: filled ({path.name})")
    finally:
        torch.set_num_threads(previous)
    return done


def _finer_lines(cells: dict[tuple[str, int], dict[str, Any]], finer_dir: Path) -> list[str]:
    """Per cell with a finer-grid file: its constants and each agent seed's paired difference to the best of them."""
    from agents.evaluate_sigma import _ci95

    lines = []
    for (threat, t_c), cell in sorted(cells.items()):
        path = Path(finer_dir) / f"{threat}_tc{t_c}.json"
        rec = read_json_or_warn(path, "rerun `finer`") if path.is_file() else None
        if not isinstance(rec, dict) or not rec.get("constants"):
            continue
        if cell["reference"] is None or rec.get("weights") != cell["reference"].get("weights"):
            continue  # measured on other weights than the cell's current reference: rerun `finer`
        consts = rec["constants"]
        best = max(consts, key=lambda k: consts[k]["mean_r1"])
        txt = ", ".join(f"{k} {v['mean_r1']:+.3f}" for k, v in sorted(consts.items()))
        pairs = []
        for agent, recs in sorted(cell["agents"].items()):
            for r in sorted(recs, key=lambda r: r["seed"]):
                if r.get("weights") != rec.get("weights") or "r1" not in r:
                    continue
                diff = np.asarray(r["r1"], dtype=np.float64) - np.asarray(consts[best]["r1"], dtype=np.float64)
                lo, hi = _ci95(diff)
                pairs.append(f"{agent} seed {r['seed']} {diff.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]")
        lines.append(f"- `{threat}`, t_c {t_c}: {txt} (best {best}); paired agent - {best}: "
                     + ("; ".join(pairs) or "no agent entry on these weights") + f". `{rec.get('command', '')}`.")  # fmt: skip
    return lines


def _heldout_lines(cells: dict[tuple[str, int], dict[str, Any]], finer_dir: Path) -> list[str]:
    """Per agent seed: the paired difference to the best constant (by the env's scorer, reference grid and finer
    constants) under the env's scorer and under the held-out scorer (:func:`heldout_r1`), same samples.
    """
    from agents.evaluate_sigma import _ci95

    def ci(diff: np.ndarray) -> str:
        lo, hi = _ci95(diff)
        return f"{diff.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]"

    rows = []
    for (threat, t_c), cell in sorted(cells.items()):
        ref = cell["reference"] or {}
        consts = {r["schedule"]: {"heldout_scorer": ref.get("heldout_scorer"), **r}
                  for r in ref.get("rows", []) if r["schedule"].startswith("a=")}  # fmt: skip
        path = Path(finer_dir) / f"{threat}_tc{t_c}.json"
        finer = read_json_or_warn(path, "rerun `finer`") if path.is_file() else None
        if isinstance(finer, dict) and ref and finer.get("weights") == ref.get("weights"):
            consts.update(finer.get("constants", {}))
        consts = {k: v for k, v in consts.items() if v.get("r1_heldout") and v.get("r1")}
        if not consts:
            continue
        best = _best_constant([{**v, "schedule": k} for k, v in consts.items()])  # a = 0 where every a > 0 is below 0
        assert best is not None
        name = best["schedule"]
        b, bh = np.asarray(best["r1"], dtype=np.float64), np.asarray(best["r1_heldout"], dtype=np.float64)
        for agent, recs in sorted(cell["agents"].items()):
            for r in sorted(recs, key=lambda r: r["seed"]):
                if not r.get("r1_heldout") or r.get("heldout_scorer") != best.get("heldout_scorer"):
                    continue
                a, ah = np.asarray(r["r1"], dtype=np.float64), np.asarray(r["r1_heldout"], dtype=np.float64)
                d, dh = a - b[: len(a)], ah - bh[: len(ah)]
                # undefined where the agent plays the constant itself (no difference to correlate)
                corr = f"{np.corrcoef(d, dh)[0, 1]:+.2f}" if len(d) > 2 and min(d.std(), dh.std()) > 1e-9 else "- (no difference)"
                rows.append(f"| `{threat}` | {t_c} | {agent} | {r['seed']} | {name} | {bh.mean():+.3f} | {ah.mean():+.3f} | "
                            f"{ci(d)} | {ci(dh)} | {corr} |")  # fmt: skip
    if not rows:
        return []
    return ["", "## Held-out scorer (reward over-optimisation check)", "",
            "The same final images scored by a replicate of the env's scorer that no agent trained on (same recipe and "
            "data, seed 1: `evaluator=\"levels_heldout\"`, `robust_envs/assets/levels_scorer_heldout`). Paired to the "
            "best constant (by the env's scorer, finer constants included) on the same samples; a gain under the env's "
            "scorer that the held-out one does not see is specific to the scorer's weights, not to the images.", "",
            "| threat | t_c | agent | seed | best constant | its r_1 (held-out) | agent r_1 (held-out) | "
            "paired agent - best (env scorer) | paired agent - best (held-out scorer) | per-image correlation of the two |",
            "|---|---|---|---|---|---|---|---|---|---|", *rows]  # fmt: skip


def load_sigma_results(results_dir: Path = RESULTS_DIR) -> list[dict[str, Any]]:
    """Every readable entry JSON under ``results_dir``; an unreadable file is named in a warning and skipped."""
    records = []
    for path in sorted(Path(results_dir).glob("*/tc*/*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            print(f"warning: skipping {path}: not valid JSON ({err}); rerun `python -m benchmarks.sigma_benchmark "
                  "run ...` to redo that entry", file=sys.stderr)  # fmt: skip
    return records


def _current_result(entry: SigmaEntry) -> dict[str, Any] | None:
    """``entry``'s stored result JSON when its fingerprint is current, else None (missing, unreadable or stale)."""
    path = entry.result_path()
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("fingerprint") == entry.fingerprint() else None


def _current_entry(record: dict[str, Any]) -> SigmaEntry:
    """The entry a result JSON belongs to, as today's code defines it (raises KeyError / ValueError / TypeError)."""
    agent = record["agent"] if record.get("kind") == "agent" else "reference"
    overrides: tuple[tuple[str, Any], ...] = ()
    if "agent_overrides" in record:  # recorded since `run --set`: the entry's overrides as they were given
        overrides = tuple((str(k), v) for k, v in record["agent_overrides"])
    else:  # older entries: a budget override (`run --timesteps`) is the only one they can carry
        steps = (record.get("train_args") or {}).get("total_timesteps")
        if agent != "reference" and steps is not None and steps != AGENTS[agent].get("total_timesteps"):
            overrides = (("total_timesteps", steps),)
    kw = record.get("env_kwargs") or {}
    return SigmaEntry(agent, record["t_c"], record["threat"], seed=record.get("seed", 0), n_eval=record["n_eval"],
                      eval_seed=record["eval_seed"], agent_overrides=overrides, model=kw.get("model", "embedded"),
                      evaluator=kw.get("evaluator", "levels"), stride=kw.get("stride", 50))  # fmt: skip


_WEIGHTS_IDS: dict[tuple[str, str, float, float], dict[str, str]] = {}


def _parse_set(items: list[str]) -> tuple[tuple[str, Any], ...]:
    """``["n_steps=120", "init_action=1.0"]`` -> ``(("n_steps", 120), ("init_action", 1.0))``: each a field of
    :class:`agents.ppo_sigma.Args`, its value parsed as a Python literal (else kept as a string). Raises ValueError
    naming an item without ``=`` or a field Args does not have.
    """
    from agents.ppo_sigma import Args

    out = []
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or name not in Args.__annotations__:
            raise ValueError(f"--set takes FIELD=VALUE with FIELD an agents.ppo_sigma.Args field, got {item!r}")
        try:
            value: Any = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out.append((name, value))
    return tuple(out)


def _weights_ids(model: str, evaluator: str) -> dict[str, str]:
    """``SigmaEntry.weights``, hashed once per (model, evaluator, weight files' modification times)."""
    from robust_envs.diffusion.models import EMBEDDED_UNET, model_weights_id
    from robust_envs.fileio import weights_digest
    from robust_envs.quality import EMBEDDED_LEVELS_SCORER

    def mtime(path: Path) -> float:
        return max((f.stat().st_mtime for f in path.rglob("*") if f.is_file()), default=0.0) if path.is_dir() else 0.0

    model_path = EMBEDDED_UNET if model == "embedded" else Path(model)
    key = (model, evaluator, mtime(model_path), mtime(EMBEDDED_LEVELS_SCORER))
    if key not in _WEIGHTS_IDS:
        scorer = "sha256:" + weights_digest(EMBEDDED_LEVELS_SCORER) if evaluator == "levels" else evaluator
        _WEIGHTS_IDS[key] = {"model": model_weights_id(model), "evaluator": scorer}
    return _WEIGHTS_IDS[key]


def stale_reason(record: dict[str, Any]) -> str | None:
    """None when an entry JSON matches today's code (same fingerprint as the entry gets now); else why not: the
    training arguments that differ (``name: then -> now``), or a generic reason. `run` redoes a stale entry.
    """
    try:
        entry = _current_entry(record)
        if entry.fingerprint() == record.get("fingerprint"):
            return None
        then, now = record.get("train_args") or {}, entry.training_args()
        then, now = {**ADDED_ARGS, **then}, {**ADDED_ARGS, **now}  # an added field at its neutral value is still a value
        diff = [f"{k}: {then[k]} -> {now[k]}" for k in sorted(now) if k in then and str(then[k]) != str(now[k])]
        then_w, now_w = record.get("weights"), entry.weights()
        if then_w is not None:
            diff += [f"{k} weights {then_w.get(k)} -> {now_w[k]}" for k in now_w if then_w.get(k) != now_w[k]]
        elif not diff:
            return "made before entries recorded the model's and the scorer's weights"
        return ", ".join(diff) or "the evaluation protocol or env defaults changed"
    except (KeyError, ValueError, TypeError) as err:
        return f"not an entry of today's grid ({err})"


def _best_constant(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """:func:`agents.evaluate_sigma.best_constant`: the cell's best constant over {0, 0.25, ..., 1} (a = 0 synthetic)."""
    from agents.evaluate_sigma import best_constant

    return best_constant(rows)


def _iqm_ci(per_seed: list[float], reps: int = 2000) -> tuple[float, float, float]:
    """Rliable IQM over seeds with a stratified bootstrap 95% CI: (iqm, lo, hi). The bootstrap has its own fixed
    random state, so a regenerated report gives the same CIs (otherwise arch, under rliable, seeds a fresh generator
    from the OS each call).
    """
    from rliable import library as rly
    from rliable import metrics

    scores = {"x": np.asarray(per_seed, dtype=np.float64).reshape(-1, 1)}
    with warnings.catch_warnings():  # arch (under rliable) deprecates `random_state` for `generator`; rliable passes the former
        warnings.filterwarnings("ignore", message="random_state is deprecated", category=FutureWarning)
        point, interval = rly.get_interval_estimates(scores, lambda s: np.array([metrics.aggregate_iqm(s)]), reps=reps,
                                                     random_state=np.random.RandomState(0))  # fmt: skip
    return float(point["x"][0]), float(interval["x"][0, 0]), float(interval["x"][1, 0])


def _stale_r1(record: dict[str, Any]) -> str:
    """A stale entry's own mean r_1 (agents) or its best constant (references), as text."""
    if record.get("kind") == "reference":
        consts = [r for r in record.get("rows", []) if str(r.get("schedule", "")).startswith("a=")]
        if not consts:
            return "r_1 -"
        best = max(consts, key=lambda r: r["mean_r1"])
        return f"best constant {best['schedule']} {best['mean_r1']:+.3f}"
    return f"r_1 {np.mean(record['r1']):+.3f}" if record.get("r1") else "r_1 -"


def _cells(records: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    cells: dict[tuple[str, int], dict[str, Any]] = {}
    for r in records:
        cell = cells.setdefault((r["threat"], r["t_c"]), {"reference": None, "agents": {}})
        if r.get("kind") == "reference":
            cell["reference"] = r
        else:
            cell["agents"].setdefault(r["agent"], []).append(r)
    return cells


def build_report(results_dir: Path = RESULTS_DIR, docs_dir: Path = REPO_ROOT / "docs") -> Path:
    """Generate ``docs/sigma_benchmark.md`` and ``docs/figures/sigma_fig7.png`` from the entry JSONs.

    With no entry yet the page still gives the protocol, the budgets and the commands that run the grid.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    all_records = load_sigma_results(results_dir)  # none yet: the page states the protocol, the budgets and what to run
    # a stale entry (other weights or training arguments) is never paired with a current one: its samples were
    # generated by another model, so it is listed below with its old numbers and kept out of every table and plot
    reasons = [(r, stale_reason(r)) for r in all_records]
    stale_records = [(r, why) for r, why in reasons if why]
    records = [r for r, why in reasons if not why]
    cells = _cells(records)
    threats = sorted({k[0] for k in cells}, key=lambda t: list(THREATS).index(t) if t in THREATS else 99)
    lines = [
        "# DDIMSigma-v0 benchmark: seed 000's Fig. 7 under one protocol",
        "",
        "Generated by `python -m benchmarks.sigma_benchmark report` from `benchmarks/results/sigma/`; do not edit by hand.",
        "",
        "Protocol: embedded Fashion-MNIST DDPM, embedded levels scorer, action `sigma_frac` (sigma = a * sqrt(1 - "
        "alpha_bar[t-1]), seed 000 Eq. 15's range), stride 50 above t_c. Each entry is evaluated on the same "
        "samples (env seeds 10,000 + i) under its threat: r_1 = Q(x_0) of the schedule minus Q(x_0) of sigma = 0 "
        "(Eq. 18), mean with a 95% CI (Student t over samples). Agents: mean over seeds as rliable's IQM with a "
        "stratified bootstrap 95% CI (over seeds). Constant actions: a in {0.25, 0.5, 0.75, 1}; the best constant is "
        "the best of seed 000's grid a in {0, 0.25, 0.5, 0.75, 1}, where a = 0 is the sigma = 0 baseline itself "
        "(r_1 = 0 on every sample: it is the best constant where every other one is below 0); `round` / `share`: the non-RL timestep defences as sigma = 0 schedules, "
        "against the undefended baseline. Verdict: `beats` when every seed's paired difference to the best constant "
        "(same samples) has a 95% CI above 0 (where an entry predates per-sample rows: when the agent's CI lies above "
        "the best constant's mean; the CI over seeds alone leaves out the noise of the shared evaluation samples); "
        "`matches` when the agent's CI reaches the best constant's mean, or lies above it while a seed's paired CI "
        "still contains 0, or when no seed's paired CI lies below 0 (an agent that plays the constant itself on nearly "
        "every sample has a CI over seeds of almost no width, which can miss the constant's mean by 1e-5); `below` "
        "otherwise.",
        "",
        "Threats: " + "; ".join(f"`{k}` = `{v}`" for k, v in THREATS.items() if k in threats) + ".",
        "",
    ]
    fig, axes = plt.subplots(1, max(1, len(threats)), figsize=(5.5 * max(1, len(threats)), 5.0), squeeze=False)
    verdict_rows: list[str] = []
    glance_at = len(lines)  # the at-a-glance summary goes here once every cell's verdicts are known
    glance: dict[tuple[str, int], dict[str, tuple[str, float, int]]] = {}
    for ax, threat in zip(axes[0], threats, strict=False):
        tcs = sorted(t for (th, t) in cells if th == threat)
        lines += [f"## Threat `{threat}`", "",
                  "| t_c | agent | seeds | IQM r_1 [95% CI] | per-seed mean r_1 (mean action) | best constant (r_1) | a=1 | random | "
                  "defence round | defence share | agent vs best constant | paired agent - best constant |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        series: dict[str, list[tuple[int, float, float, float]]] = {}
        best_series: list[tuple[int, float]] = []
        share_series: list[tuple[int, float]] = []  # the non-RL E-TSDM-style defence, a reference line
        for t_c in tcs:
            cell = cells[(threat, t_c)]
            ref = cell["reference"]
            rows = {r["schedule"]: r for r in ref["rows"]} if ref else {}
            best = _best_constant(ref["rows"]) if ref else None
            if best is not None:
                best_series.append((t_c, best["mean_r1"]))
            if "defence=share" in rows:
                share_series.append((t_c, rows["defence=share"]["mean_r1"]))
            fmt = lambda name, rows=rows: f"{rows[name]['mean_r1']:+.3f}" if name in rows else "-"  # noqa: E731
            best_txt = f"{best['schedule']} ({best['mean_r1']:+.3f})" if best else "pending"
            if not cell["agents"]:
                lines.append(f"| {t_c} | - | 0 | - | - | {best_txt} | {fmt('a=1')} | {fmt('random')} | "
                             f"{fmt('defence=round')} | {fmt('defence=share')} | agents pending | - |")  # fmt: skip
            for agent, recs in sorted(cell["agents"].items()):
                per_seed = [r["row"]["mean_r1"] for r in sorted(recs, key=lambda r: r["seed"])]
                if len(per_seed) > 1:
                    iqm, lo, hi = _iqm_ci(per_seed)
                else:
                    iqm, (lo, hi) = per_seed[0], recs[0]["row"]["r1_ci95"]
                series.setdefault(agent, []).append((t_c, iqm, lo, hi))
                verdict = _verdict(recs, best, lo, hi)
                if best is not None:
                    glance.setdefault((threat, t_c), {})[agent] = (verdict, iqm - best["mean_r1"], len(per_seed))
                lines.append(f"| {t_c} | {agent} | {len(per_seed)} | {iqm:+.3f} [{lo:+.3f}, {hi:+.3f}] | "
                             + ", ".join(f"{r['row']['mean_r1']:+.3f} ({r['row'].get('mean_eta', float('nan')):.2f})"
                                         for r in sorted(recs, key=lambda r: r["seed"]))
                             + f" | {best_txt} | {fmt('a=1')} | "
                             f"{fmt('random')} | {fmt('defence=round')} | {fmt('defence=share')} | {verdict} | "
                             f"{_paired(recs, best)} |")  # fmt: skip
        lines.append("")
        for i, (agent, pts) in enumerate(sorted(series.items())):
            xs = [p[0] + 0.7 * (i - (len(series) - 1) / 2) for p in pts]  # side by side where agents share a t_c
            ax.errorbar(xs, [p[1] for p in pts], yerr=[[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]],
                        marker="o", capsize=3, label=agent)  # fmt: skip
        if best_series:  # a marker too: a cell alone draws no line
            ax.plot([p[0] for p in best_series], [p[1] for p in best_series], "k--", marker="_", markersize=16,
                    label="best constant a")  # fmt: skip
        if share_series:
            ax.plot([p[0] for p in share_series], [p[1] for p in share_series], ":", color="grey", marker="x",
                    label="defence share (sigma = 0)")  # fmt: skip
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xlabel("t_c")
        ax.set_ylabel("r_1 = Q(x_0) - Q(x_0 | sigma = 0)")
        ax.set_title(f"threat: {threat}")
        ax.set_xticks(sorted(set(tcs)))
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)  # below: the data stay clear
        verdict_rows += _fig7_verdicts(threat, cells, stats)
        verdict_rows += _share_reading(threat, dict(share_series), series)
    lines[glance_at:glance_at] = _glance_lines(glance)
    fig.tight_layout()
    (docs_dir / "figures").mkdir(parents=True, exist_ok=True)
    fig.savefig(docs_dir / "figures" / "sigma_fig7.png", dpi=120)
    plt.close(fig)
    if not records:
        lines += ["No entry has run yet: the grid below is the plan and its commands.", ""]
    lines += ["![Fig. 7](figures/sigma_fig7.png)", "", "## Seed 000's Fig. 7 claims, checked", ""]
    lines += verdict_rows or ["No PPO entry yet: no claim checked."]
    lines += ["", "How much any agent could gain over the best constant by choosing its action per image (a cross-fitted "
              "bound measured on held-out draws): [sigma_headroom.md](sigma_headroom.md)."]  # fmt: skip
    finer = _finer_lines(cells, FINER_DIR if results_dir == RESULTS_DIR else Path(results_dir).parent / "sigma_finer")
    if finer:
        lines += ["", "## Against a finer grid of constants", "",
                  "The reference grid steps a by 0.25; where the best constant may lie between its points, `finer` "
                  "evaluates more constants on the same samples, and agents are paired against the best of them:", ""]
        lines += finer
    lines += _pick_risk_lines(records) + _warm_start_lines(records) + _safe_improvement_lines(records)
    if stale_records:
        lines += ["", "Stale entries, left out of the tables and the figure above (made on other weights or training "
                  "arguments, so not comparable with the current entries; `run` retrains and re-evaluates them); "
                  "their mean r_1 as made: "
                  + "; ".join(f"`{r.get('name', '?')}` {_stale_r1(r)} ({why})"
                              for r, why in sorted(stale_records, key=lambda x: x[0].get("name", "?"))) + "."]  # fmt: skip
    lines += ["", "## Budgets and progress", ""] + _progress(records)
    lines += ["", "## Independent quality measures (reward hacking check)", "",
              "The same final images scored without the env's scorer: KID and FID over the features of the embedded "
              "Fashion-MNIST classifier (`robust_envs/assets/fmnist_features`) against the 10,000 real test images "
              "(lower is closer to real), the classifier's mean confidence (higher is more recognisable), and pyiqa's "
              "PIQE (0..100, lower is better; it runs offline, and on Fashion-MNIST it also rewards Gaussian noise, "
              "see the asset card). A schedule that raises r_1 but moves KID / FID the wrong way is gaming the "
              "scorer.", ""]  # fmt: skip
    lines += _independent_table(cells)
    lines += _heldout_lines(cells, FINER_DIR if results_dir == RESULTS_DIR else Path(results_dir).parent / "sigma_finer")
    path = docs_dir / "sigma_benchmark.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _glance_lines(glance: dict[tuple[str, int], dict[str, tuple[Any, ...]]]) -> list[str]:
    """The report's summary: one row per agent, one column per (threat, t_c) cell, each entry the agent's verdict
    against the cell's best constant (:func:`_verdict`) with its IQM r_1 minus that constant's mean r_1, and the
    number of seeds where fewer than the grid's :data:`GRID_SEEDS` have run (a value's optional third element);
    ``-`` where the agent has no current entry. Empty when no cell has both agents and references.
    """
    if not glance:
        return []
    cols = sorted(glance, key=lambda k: (list(THREATS).index(k[0]) if k[0] in THREATS else 99, k[1]))
    agents = sorted({a for v in glance.values() for a in v})
    lines = ["## At a glance", "",
             "Each agent's verdict against the cell's best constant (the protocol above), with its IQM r_1 minus the "
             "best constant's mean r_1; `-`: not run. The tables below give the CIs and the paired differences.", "",
             "| agent | " + " | ".join(f"`{th}` t_c {t}" for th, t in cols) + " |",
             "|---|" + "---|" * len(cols)]  # fmt: skip
    for agent in agents:
        cells = [glance[c].get(agent) for c in cols]
        lines.append(f"| {agent} | " + " | ".join(_glance_cell(v) for v in cells) + " |")
    counts = {c: sum(v[0] in ("beats", "matches") for v in glance[c].values()) for c in cols}
    lines.append("| *agents at or above the best constant* | " + " | ".join(str(counts[c]) for c in cols) + " |")
    return lines + [""]


def _glance_cell(value: tuple[Any, ...] | None) -> str:
    if value is None:
        return "-"
    n = value[2] if len(value) > 2 else len(GRID_SEEDS)
    seeds = f"; {n} of {len(GRID_SEEDS)} seeds" if n < len(GRID_SEEDS) else ""
    return f"{value[0]} ({value[1]:+.3f}{seeds})"


#: Episodes per constant at which :func:`constant_pick_risk` is tabulated in the report.
PICK_EPISODES = (8, 16, 32, 64, 128, 256)


def constant_pick_risk(r1_by_constant: dict[str, np.ndarray], n_episodes: int, draws: int = 4000,
                       rng_seed: int = 0) -> tuple[float, float]:  # fmt: skip
    """How well ``n_episodes`` paired episodes per constant find the best constant (explore-then-commit).

    ``r1_by_constant`` maps each constant to its per-sample r_1 on the same ``N`` samples (a reference entry's
    rows; ``a=0`` is added as zeros, r_1 = 0 by seed 000 Eq. 18). Each draw resamples ``n_episodes`` sample indices
    with replacement (the same for every constant: paired) and picks the constant with the largest mean. Returns
    ``(p_best, loss)``: the fraction of draws that pick the constant best on all ``N`` samples, and the mean r_1 given
    up by the pick (best minus picked, both on all ``N``; >= 0). A bootstrap of the ``N`` samples, so it is only
    meaningful for ``n_episodes`` well below ``N``. Raises ``ValueError`` for rows of unequal length or
    ``n_episodes < 1``.
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    names = list(r1_by_constant)
    lengths = {len(v) for v in r1_by_constant.values()}
    if len(lengths) != 1:
        raise ValueError(f"every constant needs r_1 on the same samples, got lengths {sorted(lengths)}")
    (n_samples,) = lengths
    table = np.stack([np.asarray(r1_by_constant[k], dtype=np.float64) for k in names])
    if "a=0" not in names:
        names.append("a=0")
        table = np.vstack([table, np.zeros((1, n_samples))])
    full = table.mean(1)
    idx = np.random.default_rng(rng_seed).integers(0, n_samples, size=(draws, n_episodes))
    picks = np.argmax(table[:, idx].mean(2), axis=0)  # (draws,)
    return float(np.mean(picks == np.argmax(full))), float(np.mean(full.max() - full[picks]))


def _pick_risk_lines(records: list[dict[str, Any]]) -> list[str]:
    """A table per reference cell: how many paired episodes per constant resolve the best constant
    (:func:`constant_pick_risk` at :data:`PICK_EPISODES`); empty where no reference keeps per-sample rows.
    """
    rows, sizes = [], set()
    for ref in sorted((r for r in records if r.get("kind") == "reference"), key=lambda r: (r["threat"], r["t_c"])):
        consts = {row["schedule"]: row["r1"] for row in ref.get("rows", []) if row["schedule"].startswith("a=") and row.get("r1")}
        if len(consts) < 2:
            continue
        sizes.add(len(next(iter(consts.values()))))
        risk = [constant_pick_risk(consts, n) for n in PICK_EPISODES]
        best = max(consts, key=lambda k: float(np.mean(consts[k])))
        best_text = best if np.mean(consts[best]) > 0 else "a=0"
        cells = " | ".join(f"{p:.2f} / {loss:.3f}" for p, loss in risk)
        rows.append(f"| `{ref['threat']}` | {ref['t_c']} | {best_text} | {cells} |")
    if not rows:
        return []
    return ["", "## How many episodes resolve the best constant", "",
            "The simplest learner evaluates every constant on n paired episodes and keeps the best (explore-then-"
            "commit; `warm_start` does this before learning). Resampling each reference's "
            f"{', '.join(map(str, sorted(sizes)))} per-sample r_1 "
            "(`constant_pick_risk`, 4,000 draws): the probability that n episodes per constant pick the cell's best "
            "constant / the mean r_1 the pick gives up against it. Where two constants are close the first stays low "
            "while the second is small; n near the number of samples is beyond what the bootstrap can tell.", "",
            "| threat | t_c | best constant | " + " | ".join(f"n = {n}" for n in PICK_EPISODES) + " |",
            "|---|---|---|" + "---|" * len(PICK_EPISODES)] + rows  # fmt: skip


def _warm_start_lines(records: list[dict[str, Any]]) -> list[str]:
    """A section on the agents that pick their own start (``Args.warm_start``): per entry, the mean r_1 of each
    constant on the agent's own training episodes and the start it took, next to the cell's best constant on the
    evaluation samples (the reference). Empty when no entry has a warm start.
    """
    warm = [r for r in records if isinstance(r.get("warm_start"), dict)]
    if not warm:
        return []
    from agents.ppo_sigma import WARM_START_SEED

    refs = {(r["threat"], r["t_c"]): r for r in records if r.get("kind") == "reference"}
    lines = ["", "## Warm starts", "",
             "Agents with `warm_start` evaluate every constant of the grid on their own training episodes (env seeds "
             f"{WARM_START_SEED:,} + 10,000 * seed + i, apart from the evaluation's; paired; paid from the training budget) and "
             "start at the best; the cell's best constant on the evaluation samples is shown beside it:", "",
             "| threat | t_c | agent | seed | episodes per constant | training-episode mean r_1 per constant | start | "
             "best constant (evaluation) |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in sorted(warm, key=lambda r: (r["threat"], r["t_c"], r["agent"], r["seed"])):
        w = r["warm_start"]
        means = ", ".join(f"{k} {v:+.3f}" for k, v in w["mean_r1"].items())
        ref = refs.get((r["threat"], r["t_c"]))
        best = _best_constant((ref or {}).get("rows", []))
        best_text = "-" if best is None else "a=0" if best["schedule"] == "a=0" else f"{best['schedule']} ({best['mean_r1']:+.3f})"
        lines.append(f"| `{r['threat']}` | {r['t_c']} | {r['agent']} | {r['seed']} | {w['episodes_per_constant']} | "
                     f"{means} | a={w['init_action']:g} | {best_text} |")  # fmt: skip
    return lines


def _safe_improvement_lines(records: list[dict[str, Any]]) -> list[str]:
    """A section on the agents with a safe-improvement test (``Args.safe_improvement``): per entry, the learner's
    paired mean r_1 gain over its start constant on the validation episodes, the one-sided 95% lower bound and what
    was deployed, next to what the learner alone (its training twin) scored on the evaluation samples. Empty when no
    entry has the test.
    """
    safe = [r for r in records if isinstance(r.get("safe_improvement"), dict)]
    if not safe:
        return []
    from agents.ppo_sigma import SAFE_IMPROVEMENT_SEED

    by_name = {r.get("name"): r for r in records}
    lines = ["", "## Safe policy improvement", "",
             "Agents with `safe_improvement` test the trained learner against the constant it started from on "
             f"validation episodes of their own (env seeds {SAFE_IMPROVEMENT_SEED:,} + 10,000 * seed + i, apart from the "
             "warm start's and the evaluation's; paired) and deploy it only where the one-sided 95% Student-t lower bound "
             "of its mean r_1 gain is above 0 (Thomas et al. 2015), else the constant. The learner is its training "
             "twin's (same training arguments; the checkpoint is reused), so the twin's evaluation is the learner's:", "",
             "| threat | t_c | agent | seed | episodes | learner - constant [one-sided 95% lower bound] | deployed | "
             "evaluation r_1: deployed / learner alone |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    counts: dict[str, int] = {}
    for r in sorted(safe, key=lambda r: (r["threat"], r["t_c"], r["agent"], r["seed"])):
        t = r["safe_improvement"]
        deployed = "learner" if t["deployed"] == "learner" else f"a={t['constant_action']:g}"
        key = f"{r['agent']}, {r['threat']}: {t['deployed']}"
        counts[key] = counts.get(key, 0) + 1
        twin = by_name.get(r.get("training_reused_from"))
        alone = f"{twin['row']['mean_r1']:+.3f}" if twin and twin.get("kind") == "agent" else "-"
        lines.append(f"| `{r['threat']}` | {r['t_c']} | {r['agent']} | {r['seed']} | {t['episodes']} | "
                     f"{t['mean_gain']:+.4f} [{t['lower_bound_95']:+.4f}] | {deployed} | {r['row']['mean_r1']:+.3f} / "
                     f"{alone} |")  # fmt: skip
    lines += ["", "Deployed: " + "; ".join(f"{k} {v}" for k, v in sorted(counts.items())) + "."]
    return lines


def _share_reading(threat: str, share: dict[int, float], series: dict[str, list[tuple[int, float, float, float]]]) -> list[str]:
    """One generated line: at how many t_c the non-RL ``share`` defence (a sigma = 0 schedule) lies above every
    agent's IQM r_1, the first comparison a reviewer asks for; empty when no t_c has both.
    """
    tcs = sorted(t for t in share if any(p[0] == t for pts in series.values() for p in pts))
    if not tcs:
        return []
    best_agent = {t: max(p[1] for pts in series.values() for p in pts if p[0] == t) for t in tcs}
    above = [t for t in tcs if share[t] > best_agent[t]]
    detail = "; ".join(f"t_c {t}: {share[t]:+.3f} vs {best_agent[t]:+.3f}" for t in tcs)
    return [f"- `{threat}`, the non-RL `share` defence against the best agent IQM at the same t_c: above it at "
            f"{len(above)} of {len(tcs)} t_c ({detail}). It changes the timestep the network sees, not sigma: the env's "
            "`defence` option puts it under any agent's schedule; no agent entry here combines the two yet."]


def _verdict(recs: list[dict[str, Any]], best: dict[str, Any] | None, lo: float, hi: float) -> str:
    """The agent's verdict against the best constant (the page's protocol line): ``beats`` needs every seed's paired
    95% CI above 0 where per-sample r_1 exist (else the CI over seeds ``[lo, hi]`` above the constant's mean);
    ``matches`` when ``hi`` reaches the constant's mean, or when per-sample r_1 exist and no seed's paired CI lies
    below 0 (the CI over seeds leaves out the shared samples' noise and has almost no width where the agent plays the
    constant itself); ``below`` otherwise; ``references pending`` without one.
    """
    if best is None:
        return "references pending"
    if _paired_all_above(recs, best) if _has_paired(recs, best) else lo > best["mean_r1"]:
        return "beats"
    if hi >= best["mean_r1"] or (_has_paired(recs, best) and not _paired_any_below(recs, best)):
        return "matches"
    return "below"


def _paired_any_below(recs: list[dict[str, Any]], best: dict[str, Any]) -> bool:
    """True when some seed's paired difference to the best constant has a 95% CI below 0 (same samples)."""
    from agents.evaluate_sigma import _ci95

    b = np.asarray(best["r1"], dtype=np.float64)
    return any(_ci95(np.asarray(r["r1"], dtype=np.float64) - b[: len(r["r1"])])[1] < 0 for r in recs)


def _has_paired(recs: list[dict[str, Any]], best: dict[str, Any]) -> bool:
    """True when the best constant and every seed's entry carry per-sample r_1 (a paired comparison is possible)."""
    return "r1" in best and all("r1" in r for r in recs)


def _paired_all_above(recs: list[dict[str, Any]], best: dict[str, Any]) -> bool:
    """True when every seed's paired difference to the best constant has a 95% CI above 0 (same samples)."""
    if not _has_paired(recs, best):
        return False
    from agents.evaluate_sigma import _ci95

    b = np.asarray(best["r1"], dtype=np.float64)
    return all(_ci95(np.asarray(r["r1"], dtype=np.float64) - b[: len(r["r1"])])[0] > 0 for r in recs)


def _paired(recs: list[dict[str, Any]], best: dict[str, Any] | None) -> str:
    """Per seed: mean of (agent r_1 - best constant r_1) over the same samples with a 95% CI (Student t), or '-'
    where the reference entry predates per-sample rows.
    """
    if best is None or "r1" not in best:
        return "-"
    from agents.evaluate_sigma import _ci95

    out = []
    for r in sorted(recs, key=lambda r: r["seed"]):
        diff = np.asarray(r["r1"], dtype=np.float64) - np.asarray(best["r1"], dtype=np.float64)[: len(r["r1"])]
        lo, hi = _ci95(diff)
        out.append(f"seed {r['seed']}: {diff.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]")
    return "; ".join(out)


def _fig7_verdicts(threat: str, cells: dict, stats: Any) -> list[str]:
    """The three claims of seed 000 sec. 5.2 for the paper's PPO under ``threat``, from the entries."""
    pts = [(t_c, r["row"]["mean_r1"], r["row"]["r1_ci95"]) for (th, t_c), c in sorted(cells.items()) if th == threat
           for r in c["agents"].get("ppo", [])]  # fmt: skip
    if not pts:
        return [f"- `{threat}`: no PPO entry yet."]
    low = [p for p in pts if p[0] <= 30]
    high = [p for p in pts if p[0] >= 40]
    out = []
    if low:
        zero = sum(1 for p in low if p[2][0] <= 0 <= p[2][1])
        out.append(f"- `{threat}`, claim 1 (r_1 about 0 for t_c 10-30): {zero} of {len(low)} PPO entries have a 95% CI "
                   f"containing 0 (mean r_1 {np.mean([p[1] for p in low]):+.3f}): "
                   f"{'reproduces' if zero == len(low) else 'does not reproduce'}.")  # fmt: skip
    else:
        out.append(f"- `{threat}`, claim 1 (t_c 10-30): no entry yet.")
    if high:
        pos = sum(1 for p in high if p[2][0] > 0)
        out.append(f"- `{threat}`, claim 2 (r_1 > 0 for t_c 40-60): {pos} of {len(high)} PPO entries have a CI above 0: "
                   f"{'reproduces' if pos == len(high) else 'does not reproduce'}.")  # fmt: skip
    else:
        out.append(f"- `{threat}`, claim 2 (t_c 40-60): no entry yet.")
    if len({p[0] for p in pts}) >= 3:
        rho, pval = stats.spearmanr([p[0] for p in pts], [p[1] for p in pts])
        out.append(f"- `{threat}`, claim 3 (r_1 rising with t_c): Spearman rho {rho:+.2f} (p = {pval:.3f}, "
                   f"{len(pts)} entries): {'reproduces' if rho > 0 and pval < 0.05 else 'does not reproduce'}.")  # fmt: skip
    else:
        out.append(f"- `{threat}`, claim 3 (trend in t_c): fewer than 3 t_c values so far.")
    return out


#: The full grid of issue 11: PPO at every t_c, the other learners at t_c 20 and 60, two threats, 3 seeds.
FULL_GRID: dict[str, tuple[int, ...]] = {"ppo": (10, 20, 30, 40, 50, 60), "sac": (20, 60), "tqc": (20, 60),
                                         "recurrent_ppo": (20, 60)}  # fmt: skip
GRID_THREATS = ("seed", "shift")
GRID_SEEDS = (0, 1, 2)


#: Network forwards per evaluation sample, in units of one sample's forward, as a function of t_c: the strided
#: prefix above t_c (about (T - t_c) / stride steps, T = 1000, stride 50) plus ``per_t_c`` forwards per step below
#: it: an agent entry runs its schedule and the sigma = 0 baseline (2); a reference entry its first schedule with
#: the baseline (2), three more constants and the random schedule on the cached baseline (4 x 1) and the two
#: defended baselines, each run alone (2 x 1): 8. (Reference entries made before the defended baselines ran alone
#: did 10 per step, so the rate they give overstates the time left by up to 10 / 8.)
EVAL_FORWARDS_PER_T_C = {"agent": 2, "reference": 8}


def _eval_work(kind: str, t_c: int) -> float:
    return (1000 - t_c) / 50 + EVAL_FORWARDS_PER_T_C[kind] * t_c


def estimate_seconds_left(records: list[dict[str, Any]], missing: list[tuple[str, int]]) -> float | None:
    """Seconds the ``missing`` ``(agent, t_c)`` entries should take on the hardware of ``records``.

    Training: the mean measured ``train_time_s`` of that agent (budgets are in env steps, whatever t_c); evaluation:
    the measured seconds per unit of :func:`_eval_work` of that kind, times the entry's work. ``None`` when a
    missing kind has no measured entry yet. A rough guide for planning runs, not a benchmark result.
    """
    total = 0.0
    for agent, t_c in missing:
        kind = "reference" if agent == "reference" else "agent"
        same = [r for r in records if r["agent"] == agent]
        like = [r for r in records if ("reference" if r["agent"] == "reference" else "agent") == kind]
        rate = [r["eval_time_s"] / _eval_work(kind, r["t_c"]) for r in like if r.get("eval_time_s")]
        train = [r["train_time_s"] for r in same if r.get("train_time_s") is not None]
        if not rate or (kind == "agent" and not train):
            return None
        total += float(np.mean(rate)) * _eval_work(kind, t_c) + (float(np.mean(train)) if train else 0.0)
    return total


def _loads(records: list[dict[str, Any]]) -> str:
    loads = [r["hardware"]["load_avg_15min"] for r in records if "load_avg_15min" in r.get("hardware", {})]
    return f"{min(loads):.1f} to {max(loads):.1f}" if loads else "not recorded"


def _progress(records: list[dict[str, Any]]) -> list[str]:
    """Which entries of the full grid exist, what they cost, and the commands that finish the rest."""
    have = {(r["agent"], r["threat"], r["t_c"], r["seed"]) for r in records}
    lines = ["Training budgets: " + "; ".join(f"{a} {cfg['total_timesteps']:,} env steps"
                                              + (f" (its first {cfg['warm_start']} episodes per constant pick the start)"
                                                 if cfg.get("warm_start") else "")
                                              + (f", then 2 x {cfg['safe_improvement']} validation episodes (safe "
                                                 "improvement; not counted in the budget)"
                                                 if cfg.get("safe_improvement") else "") for a, cfg in AGENTS.items())
             + " (16 envs, `agents.ppo_sigma` defaults otherwise); evaluation: 500 samples per schedule.", "",
             "| entry | done / grid | mean train s | mean eval s | hardware |", "|---|---|---|---|---|"]  # fmt: skip
    kinds = [("reference", tuple(sorted({t for v in FULL_GRID.values() for t in v})), (0,))]
    kinds += [(a, tcs, GRID_SEEDS) for a, tcs in FULL_GRID.items()]
    missing_cmds, missing_all = [], []
    for agent, tcs, seeds in kinds:
        grid = [(agent, th, t, s) for th in GRID_THREATS for t in tcs for s in seeds]
        done = [r for r in records if (r["agent"], r["threat"], r["t_c"], r["seed"]) in set(grid)]
        train = [r.get("train_time_s") for r in done if r.get("train_time_s") is not None]
        evals = [r.get("eval_time_s") for r in done if r.get("eval_time_s") is not None]
        hw = sorted({r["hardware"].get("gpu") or r["hardware"].get("cpu", "?") for r in done})
        mean_s = lambda xs: f"{np.mean(xs):.0f}" if xs else "-"  # noqa: E731 (references train nothing)
        lines.append(f"| {agent} | {len(done)} / {len(grid)} | {mean_s(train)} | {mean_s(evals)} | "
                     f"{', '.join(hw) or '-'} |" if done else f"| {agent} | 0 / {len(grid)} | - | - | - |")  # fmt: skip
        missing_all += [(agent, t) for (_, th, t, s) in grid if (agent, th, t, s) not in have]
        if len(done) < len(grid):
            missing = sorted({t for (_, th, t, s) in grid if (agent, th, t, s) not in have})
            flag = "--references-only" if agent == "reference" else f"--agents {agent}"
            missing_cmds.append(f"python -m benchmarks.sigma_benchmark run {flag} --t-c {' '.join(map(str, missing))} "
                                f"--threats {' '.join(GRID_THREATS)} --seeds {' '.join(map(str, seeds))}")  # fmt: skip
    if missing_all:
        agents = sorted({a for a, _ in missing_all}, key=lambda a: ["reference", *AGENTS].index(a))
        left = {a: estimate_seconds_left(records, [m for m in missing_all if m[0] == a]) for a in agents}
        known = {a: v for a, v in left.items() if v is not None}
        text = f"{len(missing_all)} entries left."
        if known:
            text += (" At the measured costs of the finished entries (training: the mean per agent; evaluation: "
                     "seconds per sample-forward, scaled to each t_c), the missing "
                     + ", ".join(f"{a} ({sum(m[0] == a for m in missing_all)})" for a in known)
                     + f" entries take about {sum(known.values()) / 3600:.0f} CPU-hours on this hardware (one thread "
                     f"per entry; two entries run side by side on a 2-core CPU; the entries so far ran on a shared "
                     f"machine, 15-minute load average at their end {_loads(records)}, so an idle one is faster).")  # fmt: skip
        unknown = [a for a in agents if a not in known]
        if unknown:
            text += f" Not estimated yet (no finished entry of that agent): {', '.join(unknown)}."
        lines += ["", text]
    if missing_cmds:
        lines += ["", "The rest of the grid (finished entries are skipped; `--workers 2` on a 2-core CPU):", "", "```bash",
                  *missing_cmds, "```"]  # fmt: skip
    return lines


def _independent_table(cells: dict) -> list[str]:
    head = ["| threat | t_c | schedule | r_1 | KID | FID | classifier confidence | NR metric |",
            "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    lines = []
    for (threat, t_c), cell in sorted(cells.items()):
        ref = cell["reference"]
        rows = list(ref["rows"]) if ref else []
        if ref and ref.get("baseline_independent"):
            rows.insert(0, {"schedule": "a=0 (baseline)", "mean_r1": 0.0, "independent": ref["baseline_independent"]})
        rows += [{**r["row"], "schedule": f"{a} seed {r['seed']}"} for a, recs in cell["agents"].items() for r in recs]
        for r in rows:
            ind = r.get("independent")
            if not ind:
                continue
            nr = next((f"{k} {v:.3f}" for k, v in ind.items() if k.endswith("_mean") and not k.startswith("kid")
                       and not k.startswith("classifier")), "-")  # fmt: skip
            if ind.get("piqe_undefined", 0) > 0:
                nr += f" ({ind['piqe_undefined']:.0f} images without an active block: PIQE undefined)"
            elif nr.endswith("nan"):
                nr += " (PIQE undefined on some image; rerun the entry for the mean over the others)"
            lines.append(f"| {threat} | {t_c} | {r['schedule']} | {r['mean_r1']:+.3f} | "
                         f"{ind.get('kid_mean', float('nan')):.3f} | {ind.get('fid', float('nan')):.2f} | "
                         f"{ind.get('classifier_confidence_mean', float('nan')):.3f} | {nr} |")  # fmt: skip
    return head + lines if lines else ["Not available in these entries."]


def compare_agents(agent: str, other: str, results_dir: Path = RESULTS_DIR) -> list[str]:
    """Markdown table: ``agent`` minus ``other`` per (threat, t_c, seed) where both have a current entry, paired on
    the same evaluation samples (mean r_1 difference with a 95% Student t CI) next to each one's mean action, each
    one's warm-start pick (``-`` without a warm start) and whether the two gave the same r_1 on every sample (a rerun
    of the same training configuration that reproduces to the last digit).

    Raises ``ValueError`` naming the valid agents if either is not a key of :data:`AGENTS`.
    """
    from agents.evaluate_sigma import _ci95

    for name in (agent, other):
        if name not in AGENTS:
            raise ValueError(f"agent must be one of {sorted(AGENTS)}, got {name!r}")
    records = [r for r in load_sigma_results(results_dir) if r.get("kind") == "agent" and not stale_reason(r)]
    by_key = {(r["agent"], r["threat"], r["t_c"], r["seed"]): r for r in records}
    lines = [f"| threat | t_c | seed | {agent} - {other} (paired) [95% CI] | mean action {agent} | mean action {other} "
             "| warm start a | same r_1 on every sample |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip

    def warm(r: dict[str, Any]) -> str:
        return f"{r['warm_start']['init_action']:g}" if r.get("warm_start") else "-"

    for (name, threat, t_c, seed), a in sorted(by_key.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][3])):
        b = by_key.get((other, threat, t_c, seed))
        if name != agent or b is None or "r1" not in a or "r1" not in b:
            continue
        diff = np.asarray(a["r1"], dtype=np.float64) - np.asarray(b["r1"], dtype=np.float64)
        lo, hi = _ci95(diff)
        lines.append(f"| `{threat}` | {t_c} | {seed} | {diff.mean():+.3f} [{lo:+.3f}, {hi:+.3f}] | "
                     f"{a['row'].get('mean_eta', float('nan')):.2f} | {b['row'].get('mean_eta', float('nan')):.2f} | "
                     f"{warm(a)} / {warm(b)} | {'yes' if a['r1'] == b['r1'] else 'no'} |")  # fmt: skip
    return lines if len(lines) > 2 else [f"No (threat, t_c, seed) has current entries of both {agent} and {other}."]


# ----------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> None:
    """``run`` (train + evaluate missing entries), ``finer`` / ``heldout`` (add to a cell), ``compare`` (two agents,
    paired) or ``report`` (regenerate the docs page).
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run every missing entry")
    run.add_argument("--agents", nargs="+", default=["ppo"], choices=sorted(AGENTS))
    run.add_argument("--t-c", type=int, nargs="+", default=[10, 20, 30, 40, 50, 60])
    run.add_argument("--threats", nargs="+", default=["seed", "shift"], choices=sorted(THREATS))
    run.add_argument("--seeds", type=int, nargs="+", default=list(GRID_SEEDS))
    run.add_argument("--n-eval", type=int, default=500)
    run.add_argument("--timesteps", type=int, default=None, help="override every agent's training budget")
    run.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                     help="override agents.ppo_sigma.Args fields of every agent (a screen of a variant, e.g. "
                          "`--set n_steps=120 init_action=1.0`); the entry keeps the agent's name, so give a screen "
                          "its own --results-dir and --checkpoint-dir and `report --results-dir ... --docs-dir ...`")  # fmt: skip
    run.add_argument("--no-references", action="store_true", help="skip the reference entries")
    run.add_argument("--references-only", action="store_true", help="only the reference entries")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    run.add_argument("--threads", type=int, default=1)
    run.add_argument("--engine", default="local", choices=["local", "ray"])
    run.add_argument("--workers", type=int, default=1)
    run.add_argument("--ray-address", default=None)
    run.add_argument("--results-dir", default=str(RESULTS_DIR))
    run.add_argument("--checkpoint-dir", default=str(CHECKPOINT_DIR))
    run.add_argument("--model", default="embedded", help="noise network (the benchmark's: embedded)")
    run.add_argument("--evaluator", default="levels", help="quality evaluator (the benchmark's: levels)")
    run.add_argument("--stride", type=int, default=50)
    fin = sub.add_parser("finer", help="evaluate constants outside the reference grid on a cell's samples")
    fin.add_argument("--threat", default="shift", choices=sorted(THREATS))
    fin.add_argument("--t-c", type=int, default=20)
    fin.add_argument("--constants", type=float, nargs="+", default=[0.8, 0.85, 0.9, 0.95])
    fin.add_argument("--threads", type=int, default=1)
    hel = sub.add_parser("heldout", help="add the held-out scorer's r_1 to a cell's entries (no training)")
    hel.add_argument("--threat", default="shift", choices=sorted(THREATS))
    hel.add_argument("--t-c", type=int, default=20)
    hel.add_argument("--threads", type=int, default=1)
    cmp = sub.add_parser("compare", help="one agent minus another, paired per (threat, t_c, seed) on the same samples")
    cmp.add_argument("agent", choices=sorted(AGENTS))
    cmp.add_argument("other", choices=sorted(AGENTS))
    cmp.add_argument("--results-dir", default=str(RESULTS_DIR))
    rep = sub.add_parser("report", help="regenerate docs/sigma_benchmark.md and the figure")
    rep.add_argument("--results-dir", default=str(RESULTS_DIR))
    rep.add_argument("--docs-dir", default=str(REPO_ROOT / "docs"))
    ns = parser.parse_args(argv)
    if ns.command == "finer":
        rec = run_finer(ns.threat, ns.t_c, ns.constants, threads=ns.threads)
        print({k: round(v["mean_r1"], 4) for k, v in rec["constants"].items()})
        print(build_report())
        return
    if ns.command == "heldout":
        print("\n".join(backfill_heldout(ns.threat, ns.t_c, threads=ns.threads)))
        print(build_report())
        return
    if ns.command == "compare":
        print("\n".join(compare_agents(ns.agent, ns.other, Path(ns.results_dir))))
        return
    if ns.command == "report":
        print(build_report(Path(ns.results_dir), Path(ns.docs_dir)))
        return
    common = {"n_eval": ns.n_eval, "results_dir": ns.results_dir, "checkpoint_dir": ns.checkpoint_dir,
              "device": ns.device, "threads": ns.threads, "model": ns.model, "evaluator": ns.evaluator,
              "stride": ns.stride}  # fmt: skip
    overrides = (("total_timesteps", ns.timesteps),) if ns.timesteps else ()
    overrides += _parse_set(ns.set)
    specs: list[SigmaEntry] = []
    for threat in ns.threats:
        for t_c in ns.t_c:
            if not ns.no_references:
                specs.append(SigmaEntry("reference", t_c, threat, **common))
            if not ns.references_only:
                specs += [SigmaEntry(a, t_c, threat, seed=s, agent_overrides=overrides, **common)
                          for s in ns.seeds for a in ns.agents]  # fmt: skip
    done = run_leaderboard(specs, engine=ns.engine, workers=ns.workers, ray_address=ns.ray_address, desc="sigma benchmark")
    print(f"ran {len(done)} entries; {len(specs) - len(done)} were already done")


if __name__ == "__main__":
    main()
