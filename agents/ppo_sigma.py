"""Train a sigma scheduler on DDIMSigma-v0: the paper's PPO (seed 000 sec. 5.1.3), or SAC / TQC / RecurrentPPO.

Paper settings: PPO (Schulman et al. 2017) with clip epsilon 0.2, gamma 0.995, an MLP policy on the state
``(x_t, t)``. The rest (rollout length, batch, learning rate, budget) is not in the paper; the defaults are
sized for a CPU. The batched ``DDIMSigmaVectorEnv`` feeds SB3 through
:func:`robust_envs.wrappers.make_sb3_vec_env`.

The standard means that make the learner work on this env (each an :class:`Args` field, measured in
``docs/sigma_tuning.md``):

- the action: the env's ``Box(0, 1)`` is presented to the learner as ``Box(-1, 1)`` (Gymnasium's vector
  ``RescaleAction``), so a fresh Gaussian policy starts at the middle of the range (a = 0.5) instead of
  its lower edge with half its samples clipped; ``log_std_init`` sets the initial exploration (SB3: 0);
- observations and rewards: SB3's ``VecNormalize`` (running mean / std of each observation feature, returns
  scaled by their running std): the raw ``t`` (1..t_c) and 784 raw pixels otherwise feed a tanh MLP unscaled,
  and rewards are about 1e-2 per step;
- updates: 16 envs x 32 steps per rollout, minibatches of 64, 10 epochs, learning rate 3e-3, initial log std 0
  (SB3's defaults moved the mean action by less than 0.01 in 8,192 steps);
- features: a small CNN code of ``x_t`` next to ``t`` (SB3's flatten extractor drowns ``t`` among 784 pixels)
  behind a gate started at zero (``extractor="cnn_gated"``, ReZero: the policy starts time-only), one CNN each
  for the actor and the critic (``share_extractor=False``), and training on the ``delta`` reward (return = r_1)
  for 32,768 steps: the last steps carry little of r_1, and ``delta`` gives them twice the signal-to-noise of
  the paper's reward; Monte-Carlo advantages (``gae_lambda=1``). Measured at t_c = 20 (64 samples, against
  r_1 +0.692 for the best constant a = 1): the shared ungated CNN with SB3's lambda 0.95 reached mean action
  0.76-0.94 over three training seeds (r_1 +0.515 to +0.631), stopping short in the first steps below t_c; the
  gated one 0.92-0.99 (+0.619 to +0.681); the defaults (gated, unshared, lambda 1) 1.00, 1.00 and 0.66 (r_1
  +0.688, +0.687, +0.566: seed 2 put a ~ 0 at t = 20..18; seed 3: 0.97, +0.642), see ``docs/sigma_tuning.md``: the best mean over
  seeds so far, not yet reliable;
- resets: ``prefix_pool`` reuses the attack-free strided prefix above ``t_c`` (a pool of ``x_{t_c}``), about
  halving the cost of an episode at ``t_c = 10``;
- steps: ``baseline_cache`` replays a pool entry's sigma = 0 baseline where it draws nothing (the ``shift`` and
  ``adaptive`` threats), so a training step runs the network and the scorer on N samples, not 2N (same rewards
  up to float round-off; ``docs/throughput.md`` measures it). Under seed 000's ``gaussian`` threat it is inert;
- start and deployment: ``warm_start`` starts the learner at the best constant of its own training episodes, and
  ``safe_improvement`` deploys the trained learner only where held-out validation episodes show it better than that
  constant (a one-sided 95% bound, Thomas et al. 2015), else the constant (:func:`load_deployed`).

Usage::

    python -m agents.ppo_sigma --t-c 20 --num-envs 16
    python -m agents.ppo_sigma --algo sac --t-c 20
    tensorboard --logdir runs/
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from robust_envs.wrappers import SB3VecEnvAdapter

__all__ = ["ALGOS", "EDGE_MARGIN_SIDES", "PPO_ENT_COEF", "SAFE_IMPROVEMENT_SEED", "WARM_START_SEED", "Args",
           "SB3SigmaPolicy", "apply_safe_improvement", "env_kwargs", "initial_mean", "load_deployed", "make_train_env",
           "resolved_ent_coef", "resolved_extractor", "safe_improvement_test", "train", "warm_start_action",
           "warm_start_steps"]

#: Learners: the paper's PPO and the agent-agnostic check (sb3-contrib's TQC and RecurrentPPO, SB3's SAC).
ALGOS = ("ppo", "sac", "tqc", "recurrent_ppo")
#: PPO / RecurrentPPO's entropy bonus when ``ent_coef='auto'`` (measured: docs/sigma_tuning.md, runs ZE0/ZE2/ZE3).
PPO_ENT_COEF = 0.01

#: Values of :attr:`Args.edge_margin_side`: the box edges a margin applies at.
EDGE_MARGIN_SIDES = ("both", "upper", "lower")


@dataclass
class Args:
    """Arguments of the sigma scheduler (one docstring per field, CleanRL style)."""

    algo: str = "ppo"
    """learner: 'ppo' (seed 000), 'sac', 'tqc' or 'recurrent_ppo'"""
    t_c: int = 20
    """critical timestep: the agent schedules sigma for t = t_c..1 (episode length)"""
    stride: int = 50
    """DDIM stride d above t_c"""
    action: str = "sigma_frac"
    """what the env's action means: 'sigma_frac' (a fraction of the largest feasible sigma) or 'eta'"""
    attack: str = "gaussian"
    """threat: 'gaussian' (seed 000 sec. 5.1.3), 'shift', 'adaptive', 'state' or 'none'"""
    attack_scale: float = 0.01
    """'gaussian': std of the timestep perturbation (timestep units)"""
    attack_clip: float = 0.05
    """'gaussian': clip of the timestep perturbation (timestep units)"""
    attack_budget: float = 0.0
    """'shift' / 'adaptive': timestep units; 'state': Linf radius in model space"""
    defence: str = "none"
    """timestep defence: 'none', 'round' or 'share'"""
    reward: str = "delta"
    """training reward: 'delta' (default; shaped so that the return is exactly r_1, the paper's evaluation statistic,
    Eq. 18), 'paper' (seed 000 Eq. 19-21, per-step quality differences) or 'final'; docs/sigma_tuning.md: the
    steps t <= 10 move the paper's return by 0.06 of its per-episode std, the delta return by 0.14"""
    evaluator: str = "levels"
    """quality evaluator: 'levels' (embedded), 'qalign' (GPU + weights) or a pyiqa NR metric"""
    model: str = "embedded"
    """noise network: 'embedded', a diffusers folder or a hub id in the local cache"""
    device: str = "auto"
    """torch device for the env's networks ('auto': CUDA if available)"""
    num_envs: int = 16
    """episodes stepped in lockstep by the batched env"""
    total_timesteps: int = 32768
    """env steps of training (all envs together)"""
    n_steps: int = 32
    """PPO / RecurrentPPO: rollout length per env per update"""
    batch_size: int = 64
    """minibatch size"""
    n_epochs: int = 10
    """PPO / RecurrentPPO: epochs per update"""
    learning_rate: float = 3e-3
    """Adam learning rate"""
    gamma: float = 0.995
    """discount (paper: 0.995)"""
    clip_range: float = 0.2
    """PPO clip epsilon (paper: 0.2)"""
    gae_lambda: float = 1.0
    """PPO / RecurrentPPO: the GAE lambda (1.0, default here: Monte-Carlo advantages, the final reward reaches the
    first steps undiscounted but for gamma; SB3's default is 0.95)"""
    gradient_steps: int = -1
    """SAC / TQC: gradient steps per vector step (-1: one per env transition, i.e. num_envs; SB3's meaning)"""
    ent_coef: str = "auto"
    """SAC / TQC: entropy coefficient ('auto', 'auto_<init>' or a number, as SB3 takes it); PPO / RecurrentPPO: the
    entropy bonus of the loss ('auto': :data:`PPO_ENT_COEF` = 0.01, where SB3's default is 0; or a number).
    docs/sigma_tuning.md runs ZE0/ZE2/ZE3: with 0.01, 3 of 3 seeds reach the best constant at t_c 20; without it
    seed 2 stalls with its Gaussian mean past the box's lower edge"""
    distribution: str = "gaussian"
    """PPO's action distribution: 'gaussian' (SB3's, samples clipped to the box) or 'beta' (agents/beta_policy.py,
    Chou et al. 2017: support equal to the box, mode as the deterministic action)"""
    extractor: str = "auto"
    """features: 'cnn' (agents/sigma_extractor.py: a small CNN code of x_t next to t), 'flatten' (SB3's
    CombinedExtractor: 784 normalised pixels and t side by side, which drowns t), 'cnn_gated' (the CNN code behind
    a gate started at zero: the policy starts time-only, ReZero-style) or 'auto' (default: 'cnn_gated' when the
    learner sees x_t, 'flatten' for the time-only ablation)"""
    share_extractor: bool = False
    """PPO / RecurrentPPO: one features extractor for the actor and the critic (True, SB3's default) or one each
    (False, default here: the value loss does not shape the actor's image code)"""
    use_sde: bool = False
    """PPO / SAC / TQC: generalised state-dependent exploration (Raffin et al. 2022, SB3's gSDE): the exploration
    noise matrix is drawn once per `sde_sample_freq` steps, so one episode's 20 actions move together"""
    sde_sample_freq: int = -1
    """gSDE: redraw the noise matrix every n steps (-1: once per rollout)"""
    log_std_init: float = 0.0
    """initial log std of the Gaussian policy (SB3's default is 0; PPO / RecurrentPPO / SAC / TQC)"""
    init_action: float = 0.5
    """PPO / RecurrentPPO with the Gaussian: the policy's initial mean action a in the env's [0, 1] at every state
    (0.5, default: the middle of the box, SB3's zero bias under the rescaled action). A start at a fixed schedule,
    as residual policy learning does (Silver et al. 2018): 1.0 starts the learner at the constant a = 1 and leaves
    it to find where to move away. Set through the action head's bias; its weights start near 0 (SB3's orthogonal
    init, gain 0.01), so the start is the constant up to about 1e-2"""
    edge_margin: float = 0.0
    """PPO / RecurrentPPO with the Gaussian: where the initial action (``init_action``, or the warm start's choice) is
    an edge of the box (a = 0 or 1), start the Gaussian's mean ``edge_margin`` initial standard deviations past that
    edge (0: on it). Why: a mean on the edge plays the edge only while it stays there; a mean moved past it still
    plays the edge (the action is clipped), one moved inside plays less, so update noise can only move the played
    action inwards (measured: ppo_warm_hold ends at mean action 0.96-1.00 and 0.003-0.014 below a = 1 at seed 000's
    threat, t_c 30-50, docs/sigma_benchmark.md). With margin m a share Phi(-m) of the exploration draws still lands
    inside the box (m = 1: 16%) and carries the gradient that moves the mean where an inner action pays"""
    edge_margin_side: str = "both"
    """which edges :attr:`edge_margin` applies at: ``"both"`` (a = 0 and a = 1), ``"upper"`` (the cap a = 1 only) or
    ``"lower"`` (a = 0 only); at the other edge the mean starts on it. Why ``"upper"``: a = 0 is the sigma = 0 baseline
    itself (r_1 = 0), which learners leave on their own, and a margin there cost 0.014 and 0.029 r_1 at shift / t_c 10
    (ppo_warm_hold_edge against ppo_warm_hold, paired, docs/ddim_sigma.md)"""
    warm_start: int = 0
    """episodes per constant of :data:`agents.evaluate_sigma.CONSTANT_GRID` run before learning (0: none). The learner
    evaluates each constant schedule (and a = 0, r_1 = 0 by definition) on the same ``warm_start`` training episodes
    (env seeds :data:`WARM_START_SEED` + 10,000 * seed + i, disjoint from the benchmark's evaluation seeds 10,000 + i),
    and starts its Gaussian mean at the best one (``init_action``), so it need not be told the cell's best constant.
    The episodes count against ``total_timesteps`` (``warm_start * len(CONSTANT_GRID) * t_c`` env steps); the choice is
    written to ``<out_dir>/warm_start.json``. PPO / RecurrentPPO with the Gaussian only; ``init_action`` must stay at 0.5"""
    safe_improvement: int = 0
    """validation episodes of a safe policy improvement test after learning (0: off; else >= 2, and ``warm_start``
    must be set). The trained learner and the warm start's constant run the same ``safe_improvement`` episodes (env
    seeds :data:`SAFE_IMPROVEMENT_SEED` + 10,000 * seed + i, disjoint from the warm start's, the training env's and the
    benchmark's evaluation seeds); the learner is deployed only if the one-sided 95% Student-t lower bound of its
    paired mean r_1 gain over the constant is above 0, else the constant is (Thomas et al. 2015, "High Confidence
    Policy Improvement": never deploy a policy not shown better than the one it replaces). The choice goes to
    ``<out_dir>/safe_improvement.json`` (:func:`load_deployed` reads it). The episodes are evaluation, not learning: not
    counted in ``total_timesteps`` (as SB3's ``EvalCallback``), 2 * ``safe_improvement`` * t_c env steps on top"""
    normalize_obs: bool = True
    """VecNormalize the observations (running mean / std per feature)"""
    normalize_reward: bool = True
    """VecNormalize the rewards (scaled by the running std of the discounted return)"""
    observe: str = "x_t,t"
    """what the learner sees: 'x_t,t' (seed 000 Eq. 14, the env's whole state), 't' (an ablation: time only), or
    either with ',q' added ('x_t,t,q', 't,q'): also the scorer's Q of the current x0 prediction (the env's
    `observe_quality` key q_x0), the image feature docs/sigma_headroom.md finds predictive of the best constant"""
    hold_action: bool = False
    """one action per episode: the learner picks a from x_{t_c} at t = t_c and the env holds it down to t = 1 (a
    contextual bandit over the per-image constant schedules whose headroom docs/sigma_headroom.md bounds; the learner
    sees one decision per episode with return r_1 under the `delta` reward). `total_timesteps` still counts env
    (denoising) steps, so a budget buys t_c times fewer decisions; `n_steps` counts decisions per env and update"""
    prefix_pool: int = 256
    """x_{t_c} pool size for training resets (0: run the prefix every reset); evaluation always uses fresh x_T"""
    seed: int = 0
    """seed of the env and of the learner"""
    out_dir: str = "runs/ppo_sigma"
    """where the checkpoint, args and TensorBoard logs go"""
    progress_bar: bool = True
    """show a tqdm/rich progress bar"""
    tensorboard: bool = True
    """write TensorBoard logs to <out_dir>/tb"""

    def __post_init__(self) -> None:
        _observed_keys(self.observe)
        if self.algo not in ALGOS:
            raise ValueError(f"algo must be one of {ALGOS}, got {self.algo!r}")
        for name in ("num_envs", "total_timesteps", "n_steps", "batch_size", "n_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.distribution not in ("gaussian", "beta"):
            raise ValueError(f"distribution must be 'gaussian' or 'beta', got {self.distribution!r}")
        if self.extractor not in ("auto", "flatten", "cnn", "cnn_gated"):
            raise ValueError(f"extractor must be 'auto', 'flatten', 'cnn' or 'cnn_gated', got {self.extractor!r}")
        if self.extractor.startswith("cnn") and "x_t" not in _observed_keys(self.observe):
            raise ValueError(f"extractor={self.extractor!r} needs x_t observed ('x_t,t' or 'x_t,t,q'), got "
                             f"observe={self.observe!r}")  # fmt: skip
        if not 0.0 <= self.init_action <= 1.0:
            raise ValueError(f"init_action must be in [0, 1] (the env's action box), got {self.init_action}")
        if self.init_action != 0.5 and (self.algo not in ("ppo", "recurrent_ppo") or self.distribution != "gaussian"):
            raise ValueError(f"init_action={self.init_action} is implemented for algo 'ppo' / 'recurrent_ppo' with "
                             f"distribution='gaussian', got algo={self.algo!r}, distribution={self.distribution!r}")  # fmt: skip
        if not 0.0 <= self.edge_margin <= 5.0:
            raise ValueError(f"edge_margin must be in [0, 5] (initial standard deviations), got {self.edge_margin}")
        if self.edge_margin and (self.algo not in ("ppo", "recurrent_ppo") or self.distribution != "gaussian"):
            raise ValueError(f"edge_margin={self.edge_margin} moves the Gaussian's initial mean: algo 'ppo' / "
                             f"'recurrent_ppo' with distribution='gaussian' only, got algo={self.algo!r}, "
                             f"distribution={self.distribution!r}")  # fmt: skip
        if self.edge_margin_side not in EDGE_MARGIN_SIDES:
            raise ValueError(f"edge_margin_side must be one of {EDGE_MARGIN_SIDES}, got {self.edge_margin_side!r}")
        if self.warm_start < 0:
            raise ValueError(f"warm_start must be >= 0 (episodes per constant), got {self.warm_start}")
        if self.warm_start:
            if self.init_action != 0.5:
                raise ValueError(f"warm_start={self.warm_start} picks init_action itself; leave init_action at 0.5, got "
                                 f"{self.init_action}")  # fmt: skip
            if self.algo not in ("ppo", "recurrent_ppo") or self.distribution != "gaussian":
                raise ValueError(f"warm_start={self.warm_start} sets the Gaussian's initial mean: algo 'ppo' / "
                                 f"'recurrent_ppo' with distribution='gaussian' only, got algo={self.algo!r}, "
                                 f"distribution={self.distribution!r}")  # fmt: skip
            spent = warm_start_steps(self)
            if spent >= self.total_timesteps:
                raise ValueError(f"warm_start={self.warm_start} spends {spent} env steps (warm_start * "
                                 f"{len(_constant_grid())} constants * t_c {self.t_c}), not less than total_timesteps="
                                 f"{self.total_timesteps}")  # fmt: skip
        if self.safe_improvement < 0 or self.safe_improvement == 1:
            raise ValueError(f"safe_improvement must be 0 (off) or >= 2 validation episodes (a paired variance needs "
                             f"two), got {self.safe_improvement}")  # fmt: skip
        if self.safe_improvement and not self.warm_start:
            raise ValueError(f"safe_improvement={self.safe_improvement} tests the learner against the warm start's "
                             "constant: set warm_start >= 1 too")  # fmt: skip
        if self.distribution == "beta" and self.use_sde:
            raise ValueError("distribution='beta' and use_sde=True exclude each other (gSDE is a Gaussian)")
        if self.distribution == "beta" and self.algo != "ppo":
            raise ValueError(f"distribution='beta' is implemented for algo='ppo' only, got algo={self.algo!r}")
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"gae_lambda must be in [0, 1], got {self.gae_lambda}")
        if self.gradient_steps == 0 or self.gradient_steps < -1:
            raise ValueError(f"gradient_steps must be -1 (one per env transition) or >= 1, got {self.gradient_steps}")
        if not self.ent_coef.startswith("auto"):
            try:
                if float(self.ent_coef) < 0:
                    raise ValueError
            except ValueError:
                raise ValueError(f"ent_coef must be 'auto', 'auto_<init>' or a number >= 0, got {self.ent_coef!r}") from None
        if self.hold_action and self.algo == "recurrent_ppo":
            raise ValueError("hold_action=True leaves one decision per episode: nothing for algo='recurrent_ppo' to "
                             "remember; use 'ppo', 'sac' or 'tqc'")  # fmt: skip
        if self.hold_action and self.reward != "delta":
            raise ValueError(f"hold_action=True sums the episode's rewards into one; only reward='delta' makes that sum "
                             f"r_1 (Eq. 18), got reward={self.reward!r}")  # fmt: skip
        if self.algo in ("ppo", "recurrent_ppo") and self.ent_coef.startswith("auto_"):
            raise ValueError(f"ent_coef {self.ent_coef!r} (a learnt coefficient) is for SAC / TQC; PPO takes 'auto' ({PPO_ENT_COEF}) "
                             "or a number >= 0")  # fmt: skip


def resolved_ent_coef(args: Any) -> float | str:
    """``args.ent_coef`` as the learner takes it: PPO / RecurrentPPO 'auto' -> :data:`PPO_ENT_COEF`, a number ->
    float; SAC / TQC keep 'auto' / 'auto_<init>' (SB3's learnt coefficient) or take the number.
    """
    ent_coef = str(getattr(args, "ent_coef", "auto"))
    if ent_coef.startswith("auto"):
        return PPO_ENT_COEF if getattr(args, "algo", "ppo") in ("ppo", "recurrent_ppo") else ent_coef
    return float(ent_coef)


def resolved_extractor(args: Any) -> str:
    """``args.extractor`` with 'auto' resolved: 'cnn_gated' when the learner sees x_t, 'flatten' for time-only."""
    extractor = getattr(args, "extractor", "flatten")
    if extractor == "auto":
        return "cnn_gated" if "x_t" in _observed_keys(getattr(args, "observe", "x_t,t")) else "flatten"
    return extractor


def env_kwargs(args: Any) -> dict[str, Any]:
    """The DDIMSigma-v0 constructor arguments in ``args`` (shared by training and evaluation)."""
    kw = {
        "t_c": args.t_c, "stride": args.stride, "attack": args.attack, "attack_scale": args.attack_scale,
        "attack_clip": args.attack_clip, "evaluator": args.evaluator, "model": args.model,
        "device": None if args.device == "auto" else args.device,
    }  # fmt: skip
    for name, default in (("action", "sigma_frac"), ("attack_budget", 0.0), ("defence", "none"), ("reward", "paper")):
        kw[name] = getattr(args, name, default)
    if "q_x0" in _observed_keys(getattr(args, "observe", "x_t,t")):
        kw["observe_quality"] = True
    return kw


def make_train_env(args: Args) -> Any:
    """The SB3 VecEnv the learner sees: batched env -> RescaleAction to [-1, 1] -> SB3 adapter -> VecMonitor
    -> VecNormalize (when asked).
    """
    import gymnasium as gym
    from gymnasium.wrappers.vector import RescaleAction
    from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

    venv = gym.make_vec("DDIMSigma-v0", num_envs=args.num_envs, vectorization_mode="vector_entry_point",
                        autoreset_mode=AutoresetMode.SAME_STEP, prefix_pool=args.prefix_pool, baseline_cache=True,
                        **env_kwargs(args))  # fmt: skip
    # SB3 clips actions to [-1, 1]: the edges map to 0 and 1 exactly
    sb3: Any = SB3VecEnvAdapter(RescaleAction(venv, np.float32(-1.0), np.float32(1.0)))
    if getattr(args, "hold_action", False):
        sb3 = _hold_action_wrapper()(sb3)
    sb3 = VecMonitor(sb3)
    if args.observe not in ("x_t,t", "x_t,t,q"):
        sb3 = _KeepKeys(sb3, _observed_keys(args.observe))
    if args.normalize_obs or args.normalize_reward:
        return VecNormalize(sb3, norm_obs=args.normalize_obs, norm_reward=args.normalize_reward, gamma=args.gamma)
    return sb3


def _observed_keys(observe: str) -> list[str]:
    """The env's observation keys of ``Args.observe`` ('q' is the env's ``q_x0``); raises ValueError naming the
    valid values.
    """
    if observe not in OBSERVE:
        raise ValueError(f"observe must be one of {OBSERVE}, got {observe!r}")
    return ["q_x0" if k == "q" else k for k in observe.split(",")]


def _hold_action_wrapper() -> type:
    from stable_baselines3.common.vec_env import VecEnvWrapper

    class HoldAction(VecEnvWrapper):
        """SB3 VecEnv wrapper: one step of the learner is a whole episode of the lockstep batched env with the
        action held constant; the reward is the sum of the episode's rewards (r_1 under the `delta` reward), the
        observation the next episode's first (x_{t_c}, t_c), the info the last step's (with ``terminal_observation``).

        Raises:
            RuntimeError: when some sub-envs end before others (the batched DDIMSigma env runs in lockstep).
        """

        def reset(self) -> Any:
            return self.venv.reset()

        def step_async(self, actions: np.ndarray) -> None:
            self._actions = actions

        def step_wait(self) -> Any:
            total = np.zeros(self.num_envs, dtype=np.float64)
            while True:
                obs, reward, dones, infos = self.venv.step(self._actions)
                total += reward
                if dones.all():
                    return obs, total.astype(np.float32), dones, infos
                if dones.any():
                    raise RuntimeError(f"sub-envs {np.flatnonzero(dones).tolist()} ended before the others; "
                                       "hold_action needs the lockstep batched env")  # fmt: skip

    return HoldAction


#: What the learner may see: the env's state (seed 000 Eq. 14) or, as an ablation, the timestep only; either with
#: the scorer's Q of the current x0 prediction added (',q': the env's ``observe_quality``).
OBSERVE = ("x_t,t", "t", "x_t,t,q", "t,q")


def _keep_keys_wrapper() -> type:
    from gymnasium import spaces
    from stable_baselines3.common.vec_env import VecEnvWrapper

    class KeepKeys(VecEnvWrapper):
        """SB3 VecEnv wrapper keeping only ``keys`` of a Dict observation (terminal observations included)."""

        def __init__(self, venv: Any, keys: list[str]) -> None:
            self.keys = keys
            space = spaces.Dict({k: venv.observation_space.spaces[k] for k in keys})
            super().__init__(venv, observation_space=space)

        def _keep(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {k: obs[k] for k in self.keys}

        def reset(self) -> Any:
            return self._keep(self.venv.reset())

        def step_wait(self) -> Any:
            obs, rewards, dones, infos = self.venv.step_wait()
            for info in infos:
                if "terminal_observation" in info:
                    info["terminal_observation"] = self._keep(info["terminal_observation"])
            return self._keep(obs), rewards, dones, infos

    return KeepKeys


def _KeepKeys(venv: Any, keys: list[str]) -> Any:  # noqa: N802 (a class made on first use: SB3 imports lazily)
    return _keep_keys_wrapper()(venv, keys)


class SB3SigmaPolicy:
    """A trained SB3 learner as a sigma schedule on the raw env: SB3's ``predict`` interface.

    It applies the training-time observation normalisation (frozen statistics), calls the learner
    deterministically and maps its ``[-1, 1]`` action back to the env's ``[0, 1]``. Recurrent learners get
    their state and ``episode_start`` passed through.

    Shapes: ``observation`` is the batched Dict observation (``x_t`` ``(N, C, H, W)``, ``t`` ``(N, 1)``); the
    returned actions are ``(N, 1)`` float32 in [0, 1].
    """

    def __init__(self, model: Any, obs_rms: dict[str, Any] | None = None, clip_obs: float = 10.0,
                 epsilon: float = 1e-8, hold_action: bool = False) -> None:  # fmt: skip
        self.model = model
        self.hold_action = hold_action
        self.obs_rms = obs_rms
        self.clip_obs = clip_obs
        self.epsilon = epsilon

    @property
    def observes_quality(self) -> bool:
        """True when the learner was trained on the env's ``q_x0`` (``observe_quality=True``): evaluate it there."""
        keys = getattr(getattr(self.model, "observation_space", None), "spaces", None)
        return keys is not None and "q_x0" in keys

    def normalize(self, observation: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """VecNormalize's observation transform with the frozen training statistics (on the keys it saw).

        Raises:
            KeyError: when the observation lacks a key the learner saw (``q_x0``: an env made without
                ``observe_quality=True``).
        """
        space = getattr(self.model, "observation_space", None)
        keys = getattr(space, "spaces", None)
        if keys is not None:
            missing = sorted(set(keys) - set(observation))
            if missing:
                raise KeyError(f"the policy observes {missing} but the observation has only {sorted(observation)}"
                               + ("; make the env with observe_quality=True" if "q_x0" in missing else ""))  # fmt: skip
            observation = {k: v for k, v in observation.items() if k in keys}
        if self.obs_rms is None:
            return observation
        out = {}
        for key, value in observation.items():
            rms = self.obs_rms[key]
            out[key] = np.clip((value - rms.mean) / np.sqrt(rms.var + self.epsilon), -self.clip_obs, self.clip_obs)
        return {k: v.astype(np.float32) for k, v in out.items()}

    def predict(self, observation: dict[str, np.ndarray], state: Any = None, episode_start: Any = None,
                deterministic: bool = True) -> tuple[np.ndarray, Any]:  # fmt: skip
        if self.hold_action:  # `state` carries each episode's action; a new one is picked where an episode starts
            n = len(next(iter(observation.values())))
            start = np.ones(n, dtype=bool) if state is None or episode_start is None else np.asarray(episode_start, bool)
            held = np.zeros((n, 1), dtype=np.float32) if state is None else np.asarray(state, dtype=np.float32)
            if start.any():
                fresh, _ = self._act(observation, None, None, deterministic)
                held = np.where(start[:, None], fresh, held).astype(np.float32)
            return held.copy(), held
        return self._act(observation, state, episode_start, deterministic)

    def _act(self, observation: dict[str, np.ndarray], state: Any, episode_start: Any,
             deterministic: bool) -> tuple[np.ndarray, Any]:  # fmt: skip
        """The learner's action for every observation, mapped from [-1, 1] to the env's [0, 1]: ``(N, 1)``."""
        action, state = self.model.predict(self.normalize(observation), state=state, episode_start=episode_start,
                                           deterministic=deterministic)  # fmt: skip
        action = np.clip((np.asarray(action, dtype=np.float32) + 1.0) / 2.0, 0.0, 1.0)
        return action.reshape(-1, 1), state

    def save(self, out_dir: Path) -> None:
        """``<out_dir>/policy.zip`` (SB3) and ``<out_dir>/obs_rms.pkl``."""
        self.model.save(Path(out_dir) / "policy")
        with open(Path(out_dir) / "obs_rms.pkl", "wb") as f:
            pickle.dump(self.obs_rms, f)

    @classmethod
    def load(cls, out_dir: str | Path, algo: str | None = None) -> SB3SigmaPolicy:
        """Load what :meth:`save` wrote (``algo`` read from ``args.json`` when not given).

        Raises:
            FileNotFoundError: when ``policy.zip`` is missing, naming the folder.
        """
        out = Path(out_dir)
        if not (out / "policy.zip").is_file():
            raise FileNotFoundError(f"{out / 'policy.zip'} not found: train with `python -m agents.ppo_sigma --out-dir {out}`")
        saved = json.loads((out / "args.json").read_text()) if (out / "args.json").is_file() else {}
        algo = algo or saved.get("algo", "ppo")
        rms_path = out / "obs_rms.pkl"
        obs_rms = pickle.loads(rms_path.read_bytes()) if rms_path.is_file() else None
        return cls(_algo_class(algo).load(out / "policy", device="cpu"), obs_rms,
                   hold_action=bool(saved.get("hold_action", False)))  # fmt: skip


def _algo_class(algo: str) -> Any:
    if algo == "ppo":
        from stable_baselines3 import PPO

        return PPO
    if algo == "sac":
        from stable_baselines3 import SAC

        return SAC
    if algo == "tqc":
        from sb3_contrib import TQC

        return TQC
    if algo == "recurrent_ppo":
        from sb3_contrib import RecurrentPPO

        return RecurrentPPO
    raise ValueError(f"algo must be one of {ALGOS}, got {algo!r}")


def _learner(args: Args, venv: Any, out: Path) -> Any:
    cls = _algo_class(args.algo)
    common = {"learning_rate": args.learning_rate, "gamma": args.gamma, "seed": args.seed, "verbose": 0,
              "tensorboard_log": str(out / "tb") if args.tensorboard else None, "device": "cpu"}  # the policy is tiny; the env's nets use args.device
    policy_kwargs: dict[str, Any] = {"log_std_init": args.log_std_init}
    if resolved_extractor(args).startswith("cnn"):
        from agents.sigma_extractor import SigmaCnnExtractor

        policy_kwargs["features_extractor_class"] = SigmaCnnExtractor
        policy_kwargs["features_extractor_kwargs"] = {"gated": resolved_extractor(args) == "cnn_gated"}
    if args.algo in ("ppo", "recurrent_ppo") and not getattr(args, "share_extractor", True):  # absent: SB3's default
        policy_kwargs["share_features_extractor"] = False
    if args.algo in ("ppo", "recurrent_ppo"):
        policy: Any = "MultiInputPolicy" if args.algo == "ppo" else "MultiInputLstmPolicy"
        if getattr(args, "distribution", "gaussian") == "beta":
            from agents.beta_policy import BetaMultiInputPolicy

            policy = BetaMultiInputPolicy
        return cls(policy, venv, n_steps=args.n_steps, batch_size=args.batch_size, n_epochs=args.n_epochs,
                   clip_range=args.clip_range, gae_lambda=getattr(args, "gae_lambda", 0.95), policy_kwargs=policy_kwargs, use_sde=args.use_sde,
                   sde_sample_freq=args.sde_sample_freq,
                   ent_coef=resolved_ent_coef(args), **common)  # fmt: skip
    # SAC / TQC: `gradient_steps` per vector step (default one per env transition: a replay ratio of 1), a replay
    # buffer of the whole budget
    return cls("MultiInputPolicy", venv, batch_size=args.batch_size, learning_starts=max(args.batch_size, 4 * args.num_envs),
               buffer_size=max(args.total_timesteps, 1000), gradient_steps=args.gradient_steps, ent_coef=resolved_ent_coef(args),
               use_sde=args.use_sde, sde_sample_freq=args.sde_sample_freq, policy_kwargs=policy_kwargs, **common)  # fmt: skip


#: First env seed of the warm-start episodes (:attr:`Args.warm_start`): far from the benchmark's evaluation seeds
#: (10,000 + i, i < 500 by default) and from the training env's own seeds (``seed`` and up).
WARM_START_SEED = 1_000_000


def _constant_grid() -> tuple[float, ...]:
    from agents.evaluate_sigma import CONSTANT_GRID

    return CONSTANT_GRID


def warm_start_steps(args: Any) -> int:
    """Env steps the warm start spends: ``warm_start`` episodes of ``t_c`` steps for each constant of the grid."""
    return int(getattr(args, "warm_start", 0)) * len(_constant_grid()) * int(args.t_c)


def warm_start_action(args: Args, progress: bool = False) -> tuple[float, dict[str, Any]]:
    """Pick the learner's starting action from its own episodes: the constant schedule with the largest mean r_1.

    Each constant ``a`` of :data:`agents.evaluate_sigma.CONSTANT_GRID` runs ``args.warm_start`` episodes on env seeds
    ``WARM_START_SEED + 10_000 * args.seed + i`` (every constant the same episodes, so the comparison is paired);
    a = 0 is the env's baseline itself, r_1 = 0 exactly (seed 000 Eq. 18). Returns ``(a_best, record)`` with the
    mean r_1 of each constant and the seeds used. Raises ``ValueError`` if ``args.warm_start < 1``.
    """
    from agents.evaluate_sigma import evaluate_policy
    from agents.reference import ConstantAction

    if args.warm_start < 1:
        raise ValueError(f"warm_start must be >= 1 to pick an action, got {args.warm_start}")
    first = WARM_START_SEED + 10_000 * args.seed
    kw = env_kwargs(args)
    means: dict[str, float] = {"0": 0.0}
    for a in _constant_grid():
        res = evaluate_policy(f"warm start a={a:g}", ConstantAction(a), kw, n_samples=args.warm_start,
                              batch_size=min(args.warm_start, max(args.num_envs, 64)), seed=first, keep=0,
                              progress=progress)  # fmt: skip
        means[f"{a:g}"] = float(res.r1.mean())
    best = max(means, key=lambda k: means[k])
    record = {"episodes_per_constant": args.warm_start, "seeds": [first, first + args.warm_start - 1],
              "env_steps": warm_start_steps(args), "mean_r1": means, "init_action": float(best)}  # fmt: skip
    return float(best), record


#: First env seed of the safe-improvement validation episodes (:attr:`Args.safe_improvement`): apart from the warm
#: start's (:data:`WARM_START_SEED` + 10,000 * seed + i, i < warm_start), the evaluation's and the training env's.
SAFE_IMPROVEMENT_SEED = 2_000_000


def safe_improvement_test(args: Args, learner: Any, start_action: float, progress: bool = False) -> dict[str, Any]:
    """Test whether the trained ``learner`` beats the constant ``start_action`` it started from (:attr:`Args.safe_improvement`).

    Both run the same ``args.safe_improvement`` episodes (env seeds ``SAFE_IMPROVEMENT_SEED + 10_000 * args.seed + i``);
    ``gain`` is the per-episode paired difference of r_1 (seed 000 Eq. 18; the sigma = 0 baseline cancels). The learner
    is deployed iff the one-sided 95% Student-t lower bound of the mean gain is > 0 (Thomas et al. 2015). Returns the
    record written to ``safe_improvement.json``: ``deployed`` (``"learner"`` or ``"constant"``), ``constant_action``,
    ``mean_gain``, ``lower_bound_95``, the episodes' mean r_1 of each and the seeds.

    Raises:
        ValueError: if ``args.safe_improvement < 2``.
    """
    from scipy import stats

    from agents.evaluate_sigma import evaluate_policy
    from agents.reference import ConstantAction

    n = int(args.safe_improvement)
    if n < 2:
        raise ValueError(f"safe_improvement must be >= 2 to test the learner, got {n}")
    first = SAFE_IMPROVEMENT_SEED + 10_000 * args.seed
    kw = env_kwargs(args)
    batch = min(n, max(args.num_envs, 64))
    r1_learner = evaluate_policy("safe improvement: learner", learner, kw, n_samples=n, batch_size=batch, seed=first,
                                 keep=0, progress=progress).r1  # fmt: skip
    r1_constant = evaluate_policy(f"safe improvement: a={start_action:g}", ConstantAction(start_action), kw,
                                  n_samples=n, batch_size=batch, seed=first, keep=0, progress=progress).r1  # fmt: skip
    gain = r1_learner - r1_constant
    sd = float(gain.std(ddof=1))
    lower = float(gain.mean()) - float(stats.t.ppf(0.95, n - 1)) * sd / np.sqrt(n) if sd > 0 else float(gain.mean())
    return {"episodes": n, "seeds": [first, first + n - 1], "constant_action": float(start_action),
            "mean_r1_learner": float(r1_learner.mean()), "mean_r1_constant": float(r1_constant.mean()),
            "mean_gain": float(gain.mean()), "lower_bound_95": lower,
            "deployed": "learner" if lower > 0 else "constant", "env_steps": 2 * n * int(args.t_c)}  # fmt: skip


def load_deployed(out_dir: str | Path, algo: str | None = None) -> Any:
    """The policy a training run deployed: the learner (:meth:`SB3SigmaPolicy.load`), or the constant schedule
    (:class:`agents.reference.ConstantAction`) where its safe-improvement test (``safe_improvement.json``) kept the
    constant.

    Raises:
        FileNotFoundError: when ``policy.zip`` is missing, naming the folder.
        ValueError: when ``safe_improvement.json`` is unreadable or names neither choice (the message gives the file).
    """
    out = Path(out_dir)
    learner = SB3SigmaPolicy.load(out, algo)
    path = out / "safe_improvement.json"
    if not path.is_file():
        return learner
    try:
        record = json.loads(path.read_text())
        deployed, action = record["deployed"], float(record["constant_action"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is unreadable ({err!r}); delete the folder and train again") from err
    if deployed == "learner":
        return learner
    if deployed != "constant" or not 0.0 <= action <= 1.0:
        raise ValueError(f"{path}: deployed must be 'learner' or 'constant' with constant_action in [0, 1], got "
                         f"{deployed!r}, {action}")  # fmt: skip
    from agents.reference import ConstantAction

    return ConstantAction(action)


def apply_safe_improvement(args: Args, out_dir: str | Path, learner: SB3SigmaPolicy | None = None) -> Any:
    """Run :func:`safe_improvement_test` on a trained run folder (its ``warm_start.json`` gives the constant), write
    ``safe_improvement.json`` atomically and return the deployed policy (:func:`load_deployed`).

    Raises:
        FileNotFoundError: when the folder has no ``warm_start.json`` (it was trained without ``warm_start``).
    """
    out = Path(out_dir)
    warm = out / "warm_start.json"
    if not warm.is_file():
        raise FileNotFoundError(f"{warm} not found: safe_improvement tests against the warm start's constant; train "
                                "with warm_start >= 1")  # fmt: skip
    start = float(json.loads(warm.read_text())["init_action"])
    learner = learner or SB3SigmaPolicy.load(out, args.algo)
    record = safe_improvement_test(args, learner, start, progress=args.progress_bar)
    tmp = out / ".safe_improvement.json.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, out / "safe_improvement.json")
    return load_deployed(out, args.algo)


def initial_mean(init_action: float, edge_margin: float = 0.0, log_std_init: float = 0.0, side: str = "both") -> float:
    """The Gaussian's initial mean in the learner's rescaled action units ([-1, 1] is the box): ``2 * init_action - 1``,
    moved ``edge_margin * exp(log_std_init)`` past the box's edge where ``init_action`` is an edge that ``side``
    names (:attr:`Args.edge_margin`, :attr:`Args.edge_margin_side`: ``"both"``, ``"upper"`` for a = 1 only,
    ``"lower"`` for a = 0 only).

    Raises:
        ValueError: ``side`` not one of :data:`EDGE_MARGIN_SIDES`.
    """
    if side not in EDGE_MARGIN_SIDES:
        raise ValueError(f"side must be one of {EDGE_MARGIN_SIDES}, got {side!r}")
    mean = 2.0 * init_action - 1.0
    if (init_action == 1.0 and side in ("both", "upper")) or (init_action == 0.0 and side in ("both", "lower")):
        mean += float(np.sign(mean)) * edge_margin * float(np.exp(log_std_init))
    return mean


def _set_initial_action(model: Any, init_action: float, edge_margin: float = 0.0, log_std_init: float = 0.0,
                        side: str = "both") -> None:  # fmt: skip
    """Start the Gaussian policy's mean at ``init_action`` (env units, [0, 1]) for every state: the learner sees the
    action rescaled to [-1, 1] (``RescaleAction``), so the action head's bias is set to :func:`initial_mean`.
    """
    mean = initial_mean(init_action, edge_margin, log_std_init, side)
    if mean == 0.0:  # SB3's zero bias already means a = 0.5
        return
    with torch.no_grad():
        model.policy.action_net.bias.fill_(mean)


def train(args: Args) -> Any:
    """Train on DDIMSigma-v0; save ``<out_dir>/policy.zip``, ``obs_rms.pkl`` and ``args.json``; return the deployed
    policy: the learner (:class:`SB3SigmaPolicy`), or with ``safe_improvement`` the constant where the learner was
    not shown better (:func:`apply_safe_improvement`).
    """
    from stable_baselines3.common.vec_env import VecNormalize

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "args.json").write_text(json.dumps(asdict(args), indent=2))
    init_action, budget = args.init_action, args.total_timesteps
    if args.warm_start:
        init_action, record = warm_start_action(args, progress=args.progress_bar)
        (out / "warm_start.json").write_text(json.dumps(record, indent=2))
        budget -= warm_start_steps(args)
    torch.manual_seed(args.seed)
    venv = make_train_env(args)
    venv.seed(args.seed)
    model = _learner(args, venv, out)
    _set_initial_action(model, init_action, getattr(args, "edge_margin", 0.0), args.log_std_init,
                        getattr(args, "edge_margin_side", "both"))  # fmt: skip
    # with hold_action one learner step is a whole episode of t_c env steps
    steps = max(1, budget // args.t_c) if args.hold_action else budget
    model.learn(total_timesteps=steps, progress_bar=args.progress_bar, tb_log_name=args.algo)
    obs_rms = venv.obs_rms if isinstance(venv, VecNormalize) and args.normalize_obs else None
    policy = SB3SigmaPolicy(model, obs_rms, clip_obs=venv.clip_obs if isinstance(venv, VecNormalize) else 10.0,
                            hold_action=args.hold_action)  # fmt: skip
    policy.save(out)
    venv.close()
    if args.safe_improvement:
        return apply_safe_improvement(args, out, policy)
    return policy


def parse_args(argv: list[str] | None = None, defaults: Args | None = None) -> Args:
    """Command-line flags for every :class:`Args` field (``--t-c 20`` etc.)."""
    defaults = defaults or Args()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(Args):
        value = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)
    return Args(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    parsed = parse_args()
    trained = train(parsed)
    print(f"saved {Path(parsed.out_dir) / 'policy.zip'} after {trained.model.num_timesteps} steps")
