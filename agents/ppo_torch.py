"""On-device PPO for DDIMSigma-v0: the env, the rollout buffer, the normalisers and the policy all torch on one device.

Paper: Schulman et al. 2017, "Proximal Policy Optimization Algorithms" (clipped surrogate, Eq. 7), with
generalised advantage estimation (Schulman et al. 2016, Eq. 16); seed 000 sec. 5.1.3 fixes clip 0.2 and
gamma 0.995.
Code: the layout of CleanRL's ``ppo_continuous_action.py`` (one ``Args`` dataclass, a loop read top to bottom,
TensorBoard scalars), the defaults and details of Stable-Baselines3's ``PPO`` as :mod:`agents.ppo_sigma` trains it
(the recipe of run Z in docs/sigma_tuning.md: n_steps 32 x 16 envs, minibatch 64, 10 epochs, Adam 3e-3 with eps
1e-5, Monte-Carlo advantages (GAE lambda 1) normalised per minibatch, unclipped value loss with coefficient 0.5,
gradient norm 0.5, the ``delta`` reward; for the actor and for the critic each its own gated CNN code of ``x_t``
next to ``t`` (:class:`agents.sigma_extractor.SigmaCnnExtractor`) and a 64-64 tanh MLP, SB3's orthogonal
initialisation, a state-independent log std starting at 0), so the two learners differ in where they run, not in
what they compute. ``extractor="flatten"`` gives the earlier MLP on the 784 pixels and ``t``.

Where :mod:`agents.ppo_sigma` crosses to the host every step (numpy observations through the SB3 adapter,
``VecNormalize`` in numpy, SB3's numpy rollout buffer), this trainer keeps everything on ``args.device``:

- the env is :class:`~robust_envs.envs.ddim_sigma.DDIMSigmaVectorEnv` behind
  :class:`~robust_envs.wrappers.TorchVectorEnv` (``SAME_STEP`` autoreset): observations, rewards and flags
  come back as tensors on the device and actions go in as tensors;
- observation normalisation (running mean / variance per feature, clip 10) and reward scaling (rewards divided
  by the running std of the discounted return, clip 10) are :class:`RunningMeanStd` buffers on the device,
  as SB3's ``VecNormalize`` does them in numpy;
- the rollout buffer is preallocated tensors ``(n_steps, num_envs, ...)`` on the device.

Action convention (as :mod:`agents.ppo_sigma`): the policy's Gaussian acts in [-1, 1]; the env receives
``a = (clip(u, -1, 1) + 1) / 2`` in [0, 1], the env's default ``action="sigma_frac"`` (a fraction of the largest
feasible sigma). The buffer keeps the unclipped ``u``, as SB3 does.

The host is touched only to log: one read of the episode statistics and the losses per update.

Usage::

    python -m agents.ppo_torch --t-c 20 --total-timesteps 8192 --num-envs 16
    python -m agents.evaluate_sigma --policy runs/ppo_torch --t-c 20     # the same evaluation as the SB3 PPO
    tensorboard --logdir runs/
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from torch import nn
from torch.distributions import Normal

from agents.cli import parse_args
from agents.ppo_sigma import PPO_ENT_COEF, env_kwargs
from robust_envs.envs.ddim_sigma import DDIMSigmaVectorEnv, _resolve_device
from robust_envs.wrappers import TorchVectorEnv

__all__ = ["Args", "RunningMeanStd", "SigmaActorCritic", "TorchSigmaPolicy", "TrainResult", "train"]

CHECKPOINT = "agent.pt"
#: Features of the state for the actor and the critic (see ``Args.extractor``).
EXTRACTORS = ("cnn_gated", "cnn", "flatten")


@dataclass
class Args:
    """Arguments of the on-device PPO sigma scheduler (one docstring per field, CleanRL style)."""

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
    """training reward: 'delta' (default, as agents.ppo_sigma: the return is exactly r_1, Eq. 18), 'paper' (seed 000
    Eq. 19-21) or 'final'"""
    evaluator: str = "levels"
    """quality evaluator: 'levels' (embedded), 'qalign' (GPU + weights) or a pyiqa NR metric"""
    model: str = "embedded"
    """noise network: 'embedded', a diffusers folder or a hub id in the local cache"""
    device: str = "auto"
    """torch device of everything: env networks, buffer, normalisers, policy ('auto': CUDA if available)"""
    num_envs: int = 16
    """episodes stepped in lockstep by the batched env"""
    total_timesteps: int = 32768
    """env steps of training (all envs together); rounded up to whole rollouts of num_envs * n_steps"""
    n_steps: int = 32
    """rollout length per env per update (agents.ppo_sigma's tuned default, docs/sigma_tuning.md)"""
    batch_size: int = 64
    """minibatch size"""
    n_epochs: int = 10
    """epochs per update"""
    learning_rate: float = 3e-3
    """Adam learning rate"""
    anneal_lr: bool = False
    """anneal the learning rate linearly to 0 (CleanRL's default; SB3's and ours: constant)"""
    gamma: float = 0.995
    """discount (paper: 0.995)"""
    gae_lambda: float = 1.0
    """GAE lambda (1.0: Monte-Carlo advantages, agents.ppo_sigma's default; SB3's and CleanRL's is 0.95)"""
    clip_range: float = 0.2
    """PPO clip epsilon (paper: 0.2)"""
    ent_coef: float = PPO_ENT_COEF
    """entropy bonus coefficient (agents.ppo_sigma's PPO default, 0.01: docs/sigma_tuning.md runs ZE; SB3's and
    CleanRL's is 0)"""
    vf_coef: float = 0.5
    """value loss coefficient"""
    max_grad_norm: float = 0.5
    """gradient norm clip"""
    log_std_init: float = 0.0
    """initial log std of the Gaussian policy (in the [-1, 1] action units)"""
    hidden: int = 64
    """width of the two hidden tanh layers of the actor and of the critic"""
    extractor: str = "cnn_gated"
    """features of x_t for the actor and (separately) the critic: 'cnn_gated' (default: agents.sigma_extractor's CNN
    code behind a gate started at zero, so the policy starts time-only), 'cnn' (ungated) or 'flatten' (the normalised
    pixels and t side by side, as SB3's CombinedExtractor)"""
    cnn_dim: int = 16
    """width of the CNN code of x_t"""
    normalize_obs: bool = True
    """normalise observations by running mean / std per feature (clip 10)"""
    normalize_reward: bool = True
    """scale rewards by the running std of the discounted return (clip 10)"""
    prefix_pool: int = 256
    """x_{t_c} pool size for training resets (0: run the prefix every reset); evaluation always uses fresh x_T"""
    seed: int = 0
    """seed of the env and of the learner"""
    out_dir: str = "runs/ppo_torch"
    """where the checkpoint, args and TensorBoard logs go"""
    progress_bar: bool = True
    """show a tqdm progress bar"""
    tensorboard: bool = True
    """write TensorBoard logs to <out_dir>/tb"""

    def __post_init__(self) -> None:
        for name in ("num_envs", "total_timesteps", "n_steps", "batch_size", "n_epochs", "hidden", "cnn_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.gamma <= 1.0 or not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"gamma must be in (0, 1] and gae_lambda in [0, 1], got {self.gamma}, {self.gae_lambda}")
        if self.clip_range <= 0:
            raise ValueError(f"clip_range must be > 0, got {self.clip_range}")
        if self.extractor not in EXTRACTORS:
            raise ValueError(f"extractor must be one of {EXTRACTORS}, got {self.extractor!r}")


class RunningMeanStd(nn.Module):
    """Running mean and variance of a stream of batches, as buffers on the module's device.

    The parallel update of Chan et al. (1979), the one SB3's ``RunningMeanStd`` uses; ``count`` starts at
    ``epsilon`` as there. Float32 so it runs on every device.

    Shape:
        - ``update(x)``: ``x`` is ``(B, *shape)``.
        - ``mean``, ``var``: ``shape``.
    """

    def __init__(self, shape: tuple[int, ...], epsilon: float = 1e-4) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("var", torch.ones(shape))
        self.register_buffer("count", torch.tensor(float(epsilon)))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold the batch ``x`` ``(B, *shape)`` into the statistics."""
        batch_mean, batch_var, n = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta = batch_mean - self.mean
        total = self.count + n
        m2 = self.var * self.count + batch_var * n + delta.square() * self.count * n / total
        self.mean += delta * n / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)


def _layer(layer: nn.Linear, gain: float) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class FlatCnnFeatures(nn.Module):
    """:class:`agents.sigma_extractor.SigmaCnnExtractor` on the flat normalised state ``(N, C*H*W + 1)``.

    The flat vector is split back into ``x_t`` ``(N, C, H, W)`` and ``t`` ``(N, 1)``; the output is
    ``(N, cnn_dim + 2)``. Its Linear and Conv2d layers get SB3's orthogonal init with gain sqrt(2) (what
    ``ActorCriticPolicy(ortho_init=True)`` gives a features extractor); the gate, a plain parameter, stays at zero.
    """

    def __init__(self, x_shape: tuple[int, ...], cnn_dim: int, gated: bool) -> None:
        import gymnasium as gym

        from agents.sigma_extractor import SigmaCnnExtractor

        super().__init__()
        self.x_shape = x_shape
        space = gym.spaces.Dict({"x_t": gym.spaces.Box(-np.inf, np.inf, x_shape, np.float32),
                                 "t": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)})  # fmt: skip
        self.cnn = SigmaCnnExtractor(space, cnn_dim=cnn_dim, gated=gated)
        self.features_dim = self.cnn.features_dim
        for m in self.cnn.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                nn.init.orthogonal_(m.weight, math.sqrt(2))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features[:, :-1].reshape(-1, *self.x_shape)
        return self.cnn({"x_t": x, "t": features[:, -1:]})


class SigmaActorCritic(nn.Module):
    """The policy and value networks on the normalised, flattened state ``(x_t, t)`` (seed 000 Eq. 14).

    ``normalize`` applies the observation statistics (frozen unless asked to update); ``actor_features`` and
    ``critic_features`` (one each, as SB3's ``share_features_extractor=False``) encode the state
    (``extractor``: see ``Args.extractor``; ``flatten`` passes it through); ``actor`` gives the mean of a
    Gaussian over ``u`` in [-1, 1] units with a state-independent ``log_std``; ``critic`` the value.

    Shape:
        - observation: ``x_t`` ``(N, C, H, W)`` float32, ``t`` ``(N, 1)`` float32 (the env's Dict, as tensors).
        - features: ``(N, C*H*W + 1)``; ``u``: ``(N, 1)``; value: ``(N,)``.

    Raises:
        ValueError: an ``extractor`` not in :data:`EXTRACTORS`.
    """

    def __init__(self, x_shape: tuple[int, ...], hidden: int = 64, log_std_init: float = -1.0,
                 clip_obs: float = 10.0, normalize_obs: bool = True, extractor: str = "flatten",
                 cnn_dim: int = 16) -> None:  # fmt: skip
        super().__init__()
        if extractor not in EXTRACTORS:
            raise ValueError(f"extractor must be one of {EXTRACTORS}, got {extractor!r}")
        self.x_shape = tuple(int(s) for s in x_shape)
        self.clip_obs = float(clip_obs)
        self.normalize_obs = bool(normalize_obs)
        self.hidden, self.extractor, self.cnn_dim = int(hidden), extractor, int(cnn_dim)
        self.obs_rms_x = RunningMeanStd(self.x_shape)
        self.obs_rms_t = RunningMeanStd((1,))
        dim = int(np.prod(self.x_shape)) + 1

        def encoder() -> nn.Module:
            if extractor == "flatten":
                return nn.Identity()
            return FlatCnnFeatures(self.x_shape, cnn_dim, gated=extractor == "cnn_gated")

        self.actor_features, self.critic_features = encoder(), encoder()
        if extractor != "flatten":
            dim = cnn_dim + 2

        def mlp(out: int, gain: float) -> nn.Sequential:
            return nn.Sequential(_layer(nn.Linear(dim, hidden), math.sqrt(2)), nn.Tanh(),
                                 _layer(nn.Linear(hidden, hidden), math.sqrt(2)), nn.Tanh(),
                                 _layer(nn.Linear(hidden, out), gain))  # fmt: skip

        self.actor = mlp(1, 0.01)
        self.critic = mlp(1, 1.0)
        self.log_std = nn.Parameter(torch.full((1,), float(log_std_init)))

    def normalize(self, obs: dict[str, torch.Tensor], update: bool = False) -> torch.Tensor:
        """Features ``(N, C*H*W + 1)``: each of ``x_t`` and ``t`` standardised (clip ``clip_obs``), flattened."""
        x, t = obs["x_t"].float(), obs["t"].float()
        if self.normalize_obs:
            if update:
                self.obs_rms_x.update(x)
                self.obs_rms_t.update(t)
            x = ((x - self.obs_rms_x.mean) / torch.sqrt(self.obs_rms_x.var + 1e-8)).clamp(-self.clip_obs, self.clip_obs)
            t = ((t - self.obs_rms_t.mean) / torch.sqrt(self.obs_rms_t.var + 1e-8)).clamp(-self.clip_obs, self.clip_obs)
        return torch.cat([x.flatten(1), t], dim=1)

    def value(self, features: torch.Tensor) -> torch.Tensor:
        """V(s) ``(N,)``."""
        return self.critic(self.critic_features(features)).squeeze(-1)

    def distribution(self, features: torch.Tensor) -> Normal:
        """The Gaussian over ``u`` ``(N, 1)``."""
        mean = self.actor(self.actor_features(features))
        return Normal(mean, self.log_std.exp().expand_as(mean))

    @staticmethod
    def to_env(u: torch.Tensor) -> torch.Tensor:
        """Policy units -> the env's action: ``(clip(u, -1, 1) + 1) / 2`` in [0, 1], shape kept."""
        return (u.clamp(-1.0, 1.0) + 1.0) / 2.0


class TorchSigmaPolicy:
    """A trained :class:`SigmaActorCritic` as a sigma schedule: SB3's ``predict`` interface, as
    :class:`agents.ppo_sigma.SB3SigmaPolicy`, so :func:`agents.evaluate_sigma.evaluate_policy` runs it.

    ``predict`` takes the batched Dict observation as numpy arrays (what the env's numpy API returns) or as
    tensors, applies the frozen training statistics, and returns actions ``(N, 1)`` float32 in [0, 1] as numpy
    (``deterministic``: the Gaussian's mean). :meth:`act` is the same on tensors, staying on the device.
    """

    def __init__(self, agent: SigmaActorCritic) -> None:
        self.agent = agent.eval()

    @property
    def device(self) -> torch.device:
        """Where the networks live."""
        return self.agent.log_std.device

    @torch.no_grad()
    def act(self, obs: dict[str, torch.Tensor], deterministic: bool = True) -> torch.Tensor:
        """Actions ``(N, 1)`` in [0, 1] on the device for tensor observations."""
        dist = self.agent.distribution(self.agent.normalize(obs))
        return SigmaActorCritic.to_env(dist.mean if deterministic else dist.sample())

    def predict(self, observation: dict[str, Any], state: Any = None, episode_start: Any = None,
                deterministic: bool = True) -> tuple[np.ndarray, Any]:  # fmt: skip
        obs = {k: torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v, device=self.device)
               for k, v in observation.items()}  # fmt: skip
        return self.act(obs, deterministic).cpu().numpy().astype(np.float32).reshape(-1, 1), state

    def save(self, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """``<out_dir>/agent.pt``: the state dict (networks and observation statistics) and its shape settings."""
        path = Path(out_dir) / CHECKPOINT
        a = self.agent
        torch.save({"state_dict": a.state_dict(), "x_shape": a.x_shape, "hidden": a.hidden, "clip_obs": a.clip_obs,
                    "normalize_obs": a.normalize_obs, "extractor": a.extractor, "cnn_dim": a.cnn_dim,
                    **(extra or {})}, path)  # fmt: skip
        return path

    @classmethod
    def load(cls, out_dir: str | Path, device: str | torch.device = "cpu") -> TorchSigmaPolicy:
        """Load what :meth:`save` wrote, onto ``device``.

        Raises:
            FileNotFoundError: when ``agent.pt`` is missing, naming the folder and the command that writes it.
        """
        path = Path(out_dir) / CHECKPOINT
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: train with `python -m agents.ppo_torch --out-dir {out_dir}`")
        blob = torch.load(path, map_location=device, weights_only=True)
        agent = SigmaActorCritic(tuple(blob["x_shape"]), hidden=int(blob["hidden"]), clip_obs=float(blob["clip_obs"]),
                                 normalize_obs=bool(blob["normalize_obs"]),
                                 extractor=str(blob.get("extractor", "flatten")),  # checkpoints before the CNN
                                 cnn_dim=int(blob.get("cnn_dim", 16)))  # fmt: skip
        agent.load_state_dict(blob["state_dict"])
        return cls(agent.to(device))


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        policy: the trained policy (on ``args.device``).
        env_steps: env steps taken (sub-env transitions, all envs together).
        seconds: wall time of the training loop (env construction excluded).
        updates: PPO updates done.
        last_losses: the last update's mean ``policy_loss``, ``value_loss``, ``entropy``, ``approx_kl``,
            ``clipfrac``.
        episode_r1: mean final reward r_1 of the episodes finished in each update (nan when none finished).
    """

    policy: TorchSigmaPolicy
    env_steps: int
    seconds: float
    updates: int
    last_losses: dict[str, float]
    episode_r1: list[float]


def make_env(args: Args) -> TorchVectorEnv:
    """The batched DDIMSigma-v0 env (``SAME_STEP`` autoreset, the prefix pool) behind :class:`TorchVectorEnv`."""
    kw = env_kwargs(args)
    kw["device"] = _resolve_device(None if args.device == "auto" else args.device)
    venv = DDIMSigmaVectorEnv(num_envs=args.num_envs, autoreset_mode=AutoresetMode.SAME_STEP,
                              prefix_pool=args.prefix_pool, **kw)  # fmt: skip
    return TorchVectorEnv(venv)


def train(args: Args) -> TrainResult:
    """Train on DDIMSigma-v0 without leaving ``args.device``; save ``<out_dir>/agent.pt`` and ``args.json``."""
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "args.json").write_text(json.dumps({**asdict(args), "trainer": "ppo_torch"}, indent=2, default=str))
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    envs = make_env(args)
    device = envs.device
    n, steps = args.num_envs, args.n_steps
    x_shape = tuple(envs.single_observation_space["x_t"].shape)
    agent = SigmaActorCritic(x_shape, args.hidden, args.log_std_init, normalize_obs=args.normalize_obs,
                             extractor=args.extractor, cnn_dim=args.cnn_dim).to(device)  # fmt: skip
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    ret_rms = RunningMeanStd(()).to(device)
    writer = None
    if args.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb" / "ppo_torch"))
        writer.add_text(
            "hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items())
        )
    from tqdm import tqdm

    # the rollout buffer, on the device: (n_steps, num_envs, ...)
    feat_dim = int(np.prod(x_shape)) + 1
    features = torch.zeros((steps, n, feat_dim), device=device)
    actions = torch.zeros((steps, n, 1), device=device)
    logprobs = torch.zeros((steps, n), device=device)
    rewards = torch.zeros((steps, n), device=device)
    dones = torch.zeros((steps, n), device=device)
    values = torch.zeros((steps, n), device=device)
    disc_return = torch.zeros(n, device=device)  # reward scaling: the running discounted return per env
    ep_return = torch.zeros(n, device=device)  # raw undiscounted return per env: r_1 under the "delta" reward

    num_updates = math.ceil(args.total_timesteps / (n * steps))
    bar = tqdm(total=num_updates * n * steps, desc="ppo_torch", unit="step", disable=not args.progress_bar)
    start = time.perf_counter()
    next_obs, _ = envs.reset(seed=args.seed)
    next_feat = agent.normalize(next_obs, update=True)
    next_done = torch.zeros(n, device=device)
    global_step, losses, episode_r1 = 0, {}, []
    for update in range(1, num_updates + 1):
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = args.learning_rate * (1.0 - (update - 1.0) / num_updates)
        r1_sum, r1_count = torch.zeros((), device=device), torch.zeros((), device=device)
        agent.eval()
        for step in range(steps):
            features[step], dones[step] = next_feat, next_done
            with torch.no_grad():
                dist = agent.distribution(next_feat)
                u = dist.sample()
                logprobs[step] = dist.log_prob(u).sum(-1)
                values[step] = agent.value(next_feat)
            actions[step] = u
            next_obs, reward, terminated, truncated, _ = envs.step(SigmaActorCritic.to_env(u))
            done = (terminated | truncated).float()
            ep_return = ep_return + reward
            # r_1 (Eq. 18): the episode's return under "delta", its last reward under "paper" and "final"
            r1_sum += ((ep_return if args.reward == "delta" else reward) * terminated).sum()
            r1_count += terminated.sum()
            ep_return = ep_return * (1.0 - done)
            if args.normalize_reward:  # SB3 VecNormalize's reward scaling, on the device
                disc_return = disc_return * args.gamma + reward
                ret_rms.update(disc_return)
                reward = (reward / torch.sqrt(ret_rms.var + 1e-8)).clamp(-10.0, 10.0)
                disc_return = disc_return * (1.0 - done)
            rewards[step] = reward
            next_feat = agent.normalize(next_obs, update=True)
            next_done = done
            global_step += n
            bar.update(n)

        # GAE (Schulman et al. 2016, Eq. 16); dones[t] marks features[t] as the first state of an episode
        with torch.no_grad():
            next_value = agent.value(next_feat)
            advantages = torch.zeros_like(rewards)
            last = torch.zeros(n, device=device)
            for t in reversed(range(steps)):
                not_done = 1.0 - (next_done if t == steps - 1 else dones[t + 1])
                v_next = next_value if t == steps - 1 else values[t + 1]
                delta = rewards[t] + args.gamma * v_next * not_done - values[t]
                last = delta + args.gamma * args.gae_lambda * not_done * last
                advantages[t] = last
            returns = advantages + values

        # the clipped objective (Schulman et al. 2017, Eq. 7), SB3's minibatch loop
        b_feat, b_act, b_logp = features.reshape(-1, feat_dim), actions.reshape(-1, 1), logprobs.reshape(-1)
        b_adv, b_ret = advantages.reshape(-1), returns.reshape(-1)
        total = b_feat.shape[0]
        agent.train()
        sums = {
            k: torch.zeros((), device=device) for k in ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac")
        }
        batches = 0
        for _ in range(args.n_epochs):
            perm = torch.randperm(total, device=device)
            for lo in range(0, total, args.batch_size):
                idx = perm[lo : lo + args.batch_size]
                dist = agent.distribution(b_feat[idx])
                logp = dist.log_prob(b_act[idx]).sum(-1)
                entropy = dist.entropy().sum(-1).mean()
                log_ratio = logp - b_logp[idx]
                ratio = log_ratio.exp()
                adv = b_adv[idx]
                if len(idx) > 1:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - args.clip_range, 1 + args.clip_range)).mean()
                v_loss = (agent.value(b_feat[idx]) - b_ret[idx]).square().mean()
                loss = pg_loss - args.ent_coef * entropy + args.vf_coef * v_loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()
                with torch.no_grad():
                    sums["policy_loss"] += pg_loss.detach()
                    sums["value_loss"] += v_loss.detach()
                    sums["entropy"] += entropy.detach()
                    sums["approx_kl"] += ((ratio - 1) - log_ratio).mean()
                    sums["clipfrac"] += ((ratio - 1.0).abs() > args.clip_range).float().mean()
                batches += 1

        # the one host read of the update: its statistics for the log
        stats = torch.stack([*sums.values(), r1_sum, r1_count, agent.log_std.detach()[0]]).cpu().tolist()
        losses = {k: v / batches for k, v in zip(sums, stats[: len(sums)], strict=True)}
        r1_mean = stats[len(sums)] / stats[len(sums) + 1] if stats[len(sums) + 1] > 0 else float("nan")
        episode_r1.append(r1_mean)
        if writer is not None:
            for k, v in losses.items():
                writer.add_scalar(f"train/{k}", v, global_step)
            writer.add_scalar("train/std", math.exp(stats[-1]), global_step)
            writer.add_scalar("train/learning_rate", optimizer.param_groups[0]["lr"], global_step)
            if not math.isnan(r1_mean):
                writer.add_scalar("rollout/r1_mean", r1_mean, global_step)
            writer.add_scalar("time/sps", global_step / (time.perf_counter() - start), global_step)
        bar.set_postfix(r1=f"{r1_mean:+.4f}", value_loss=f"{losses['value_loss']:.3g}")
    seconds = time.perf_counter() - start
    bar.close()
    if writer is not None:
        writer.close()
    envs.close()
    policy = TorchSigmaPolicy(agent)
    policy.save(out, {"env_steps": global_step, "seconds": seconds})
    return TrainResult(policy, global_step, seconds, num_updates, losses, episode_r1)


if __name__ == "__main__":
    parsed = parse_args(Args, description=__doc__.splitlines()[0])
    result = train(parsed)
    print(f"saved {Path(parsed.out_dir) / CHECKPOINT} after {result.env_steps} env steps in {result.seconds:.1f}s "
          f"({1e3 * result.seconds / result.env_steps:.2f} ms/step); last losses {result.last_losses}")  # fmt: skip
