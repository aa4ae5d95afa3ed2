"""DDIMSigma-v0: schedule the DDIM sigma near t = 0 under a timestep attack (seed 000, Hong).

Paper: Hong, "Learning to Schedule Resistant to Adversarial Attacks in Diffusion Probabilistic Models Under
the Threat of Lipschitz Singularities" (seed 000): state Eq. 14, action Eq. 15, transition Eq. 16,
rewards Eq. 16-21 (final reward r_1, intermediate rewards r_t). The DDIM update is Song et al. 2020, Eq. 12
(seed 000's Eq. 13 with its sqrt slip fixed; see :mod:`robust_envs.diffusion.schedule`).

Notation (code -> paper): ``t_c`` -> t_c, ``stride`` -> d, ``x_t`` -> x_t, ``sigma`` -> sigma_t^Ag,
``baseline_sigma`` -> sigma_t^Ba, ``q_agent``/``q_baseline`` -> Q_t^Ag / Q_t^Ba.

One module holds the single env :class:`DDIMSigmaEnv` and the natively batched :class:`DDIMSigmaVectorEnv`;
both run the same lockstep simulator (:class:`DDIMSigmaSimulator`), the single env with one episode.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from robust_envs.diffusion import (
    NoiseModel,
    TimestepAttack,
    TimestepDefence,
    attacked_eps,
    ddim_step,
    load_noise_model,
    predict_x0,
)
from robust_envs.diffusion.sampler import ddim_steps, randn_per_generator
from robust_envs.envs._lockstep import LockstepVectorEnv, same_device, to_numpy
from robust_envs.quality import SCORE_RANGE, QualityEvaluator, make_evaluator

__all__ = [
    "ACTIONS",
    "REWARDS",
    "DDIMSigmaEnv",
    "DDIMSigmaSimulator",
    "DDIMSigmaVectorEnv",
    "PrefixCache",
    "SimulatorStep",
]

#: What the action in [0, 1] means: a fraction of the largest feasible sigma (default) or DDIM's eta.
ACTIONS = ("sigma_frac", "eta")

#: How the per-step quality difference ``D_t = Q(x0_pred^Ag) - Q(x0_pred^Ba)`` becomes the reward:
#: ``"paper"`` (seed 000 Eq. 19-21: ``r_t = D_t`` at every step), ``"delta"`` (``r_t = D_t - D_{t+1}``, potential-based
#: shaping with potential ``D``, Ng et al. 1999: the undiscounted return is exactly the final reward r_1 of Eq. 18) or
#: ``"final"`` (0 until the last step, then r_1).
REWARDS = ("paper", "delta", "final")

_MODEL_CACHE: dict[tuple[str, str], NoiseModel] = {}
_EVALUATOR_CACHE: dict[tuple[str, str], QualityEvaluator] = {}


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _get_model(model: str | NoiseModel, device: torch.device) -> NoiseModel:
    """Load (once per process and device) a frozen noise model; a ready NoiseModel is used as given."""
    if isinstance(model, NoiseModel):
        return model
    key = (str(model), str(device))
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = load_noise_model(model, device=device)
    return _MODEL_CACHE[key]


def _get_evaluator(evaluator: str | QualityEvaluator, device: torch.device) -> QualityEvaluator:
    if isinstance(evaluator, QualityEvaluator):
        return evaluator
    key = (str(evaluator), str(device))
    if key not in _EVALUATOR_CACHE:
        _EVALUATOR_CACHE[key] = make_evaluator(evaluator, device=device)
    return _EVALUATOR_CACHE[key]


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """Model space [-1, 1] -> evaluator space [0, 1] (clamped)."""
    return ((x + 1.0) * 0.5).clamp(0.0, 1.0)


@dataclass(frozen=True)
class SimulatorStep:
    """What one lockstep step of N episodes produced (all tensors ``(N,)`` float32 on the device).

    Attributes:
        reward: ``q_agent - q_baseline`` (seed 000 Eq. 18 at t = 1, Eq. 21 above).
        q_agent: Q of the agent's x0_pred of x_{t-1} (x_0 itself at t = 1).
        q_baseline: the same for the baseline trajectory.
        sigma: the agent's sigma used for the step.
        t: the timestep the action was applied at.
        terminated: True after the step at t = 1.
    """

    reward: torch.Tensor
    q_agent: torch.Tensor
    q_baseline: torch.Tensor
    sigma: torch.Tensor
    t: int
    terminated: bool


class PrefixCache:
    """Memo of the strided, attack-free prefix ``x_T -> x_{t_c}`` (opt-in; see the env's ``prefix_cache``).

    Above ``t_c`` no threat acts and the baseline sigma is used, so with the same model, ``t_c``, stride,
    baseline sigma, defence and episode seed the prefix is the same computation every time. An entry holds
    ``x_{t_c}`` ``(C, H, W)`` on the model's device and the episode generator's state after the prefix, so a hit
    reproduces the uncached episode (up to float round-off between batch compositions, ~1e-6).

    Keys are ``(config, seed)``; at most ``max_entries`` samples are kept (oldest dropped first).
    """

    def __init__(self, max_entries: int = 65_536) -> None:
        from collections import OrderedDict

        self.max_entries = int(max_entries)
        self._store: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple) -> tuple[torch.Tensor, torch.Tensor] | None:
        item = self._store.get(key)
        if item is not None:
            self._store.move_to_end(key)
            self.hits += 1
        else:
            self.misses += 1
        return item

    def put(self, key: tuple, x: torch.Tensor, state: torch.Tensor) -> None:
        self._store[key] = (x, state)
        self._store.move_to_end(key)
        while len(self._store) > self.max_entries:
            self._store.popitem(last=False)

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        """Drop every entry and reset the hit / miss counters (a benchmark's cold start)."""
        self._store.clear()
        self.hits = self.misses = 0


#: One process-wide cache: envs with the same configuration share entries (the key holds the configuration).
PREFIX_CACHE = PrefixCache()


class BaselineCache:
    """Memo of the sigma = 0 baseline trajectory below ``t_c`` per episode seed (opt-in: ``baseline_cache``).

    The baseline never reads the agent's actions: given the configuration (model, evaluator, t_c, stride, threat,
    defence, baseline sigma) and the episode seed, its ``x_{t-1}``, x0 predictions and qualities are the same for
    every schedule, because each episode's random draws (``z``, the attack's) come from its own generator in a
    fixed order whatever the actions. Evaluating K schedules on the same seeds therefore needs the baseline
    once: a replayed step runs the network and the evaluator on the N agent samples only (about half the cost
    of a step on 2N). An entry holds, per step, the baseline's ``x_{t-1}`` and x0 ``(t_c, C, H, W)`` and its
    quality ``(t_c,)`` on the model's device (about ``2 * t_c * C * H * W * 4`` bytes per sample).

    Keys are ``(config, seed)``; at most ``max_bytes`` of tensors are kept (oldest samples dropped first; 512 MiB
    by default, e.g. 4,000 Fashion-MNIST samples at t_c = 20). When an evaluation's samples do not fit, entries
    are recomputed: results stay exact, only the saving is lost.
    """

    def __init__(self, max_bytes: int = 512 * 2**20) -> None:
        from collections import OrderedDict

        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self._store: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get_all(self, keys: list[tuple]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None:
        """The entries of every key, or None (counting one miss per absent key) if any is absent."""
        items = [self._store.get(k) for k in keys]
        if any(item is None for item in items):
            self.misses += sum(item is None for item in items)
            return None
        for k in keys:
            self._store.move_to_end(k)
        self.hits += len(keys)
        return items  # type: ignore[return-value]

    def put(self, key: tuple, x: torch.Tensor, x0: torch.Tensor, q: torch.Tensor) -> None:
        if key in self._store:
            self.nbytes -= _nbytes(self._store.pop(key))
        self._store[key] = (x, x0, q)
        self.nbytes += _nbytes((x, x0, q))
        while self.nbytes > self.max_bytes and self._store:
            self.nbytes -= _nbytes(self._store.popitem(last=False)[1])

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        """Drop every entry and reset the hit / miss counters."""
        self._store.clear()
        self.nbytes = 0
        self.hits = self.misses = 0


def _nbytes(tensors: tuple[torch.Tensor, ...]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


#: One process-wide baseline memo (the key holds the configuration).
BASELINE_CACHE = BaselineCache()
#: Pool entry ``j`` starts from ``x_T`` drawn by ``torch.Generator().manual_seed(POOL_SEED_BASE + j)``.
POOL_SEED_BASE = 1_000_003


class DDIMSigmaSimulator:
    """N (agent, baseline) DDIM trajectory pairs in lockstep, all tensors on the model's device.

    Per reset, each episode draws ``x_T`` from its own generator and both trajectories run the strided
    steps above ``t_c`` with the baseline sigma (they are identical there). From ``t_c`` down to 1 the agent
    chooses its action ``a`` in [0, 1] (``sigma = a * sigma_max`` or ``a * sigma_ddpm``); the baseline keeps
    ``baseline_sigma``. Both trajectories of an episode share ``x_T``, the per-step noise ``z`` and the attack
    draws (common random numbers), so a reward measures the schedule.

    Each step makes one attacked network call on ``2N`` samples (agent and baseline ``x_{t-1}``, at the
    network timestep ``t - 2``; a white-box threat adds its own forwards, see
    :attr:`TimestepAttack.forwards_per_call`) and one evaluator call on ``2N`` images: the call gives both the
    x0 prediction the reward scores and the ``eps`` the next step uses. The step at t = 1 ends at x_0 and
    needs only the evaluator.

    Random draws per episode and step, in order: ``z`` (shape of a sample), then one attack draw (and the
    ``"state"`` threat's random start). The sequence for episode ``i`` depends only on its generator, so
    batching does not change results.

    Prefix options (both off by default): ``prefix_cache=True`` memoises ``x_{t_c}`` per episode seed (exact:
    a seeded reset gives the same episode as without it; evaluation reuses the prefix across schedules);
    ``prefix_pool=P`` starts each episode from one of ``P`` fixed ``x_{t_c}`` (entry ``j`` from seed
    ``POOL_SEED_BASE + j``), chosen by the episode's generator, which then goes on with its own draws: only ``P``
    distinct ``x_T`` per configuration, the steps from ``t_c`` down stay stochastic per episode.

    ``baseline_cache=True`` (off by default; seeded resets, or pool entries whose baseline draws nothing: see
    :meth:`baseline_is_deterministic`) replays the sigma = 0 baseline of an episode seed
    seen before with the same configuration (:class:`BaselineCache`): steps then run the network and the evaluator
    on the N agent samples only. Exact up to float round-off between batch compositions (~1e-6).

    ``mirror_baseline`` (attribute, False by default; set it after construction) makes the agent's trajectory the
    baseline's: actions are ignored, each step runs the network and the evaluator on the N baseline samples only
    and reports them for both, so every reward is 0. It is how :func:`agents.evaluate_sigma.evaluate_defence`
    scores the baseline schedule under a defence at half the cost of running it as an agent beside itself.
    """

    def __init__(
        self,
        num_envs: int,
        model: NoiseModel,
        evaluator: QualityEvaluator,
        t_c: int,
        stride: int,
        attack: TimestepAttack,
        baseline_sigma: float,
        defence: TimestepDefence | None = None,
        action: str = "sigma_frac",
        prefix_cache: bool = False,
        prefix_pool: int = 0,
        reward: str = "paper",
        baseline_cache: bool = False,
        prefix_pool_dir: str | None = None,
    ) -> None:
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
        self.reward = reward
        self.num_envs = num_envs
        self.model = model
        self.evaluator = evaluator
        self.schedule = model.schedule
        self.device = model.device
        self.timesteps = self.schedule.timesteps(t_c, stride)
        self.t_c = t_c
        self.stride = stride
        self.attack = attack
        self.defence = defence or TimestepDefence()
        self.action = action
        self.baseline_sigma = float(baseline_sigma)
        self.prefix_cache = bool(prefix_cache)
        self.prefix_pool = int(prefix_pool)
        self.prefix_pool_dir = None if prefix_pool_dir is None else str(prefix_pool_dir)
        self._pool_on_disk_done = False
        self.baseline_cache = bool(baseline_cache)
        self.mirror_baseline = False
        #: with ``prefix_pool``: the pool entry each episode of the last reset started from (``num_envs`` ints)
        self.pool_index: list[int] | None = None
        self._weights_sha: str | None = None
        self._replay: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None  # cached baselines
        self._record: tuple[list[tuple], list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] | None = None
        self.alpha_bar = self.schedule.alpha_bar.to(self.device)  # float64: see ddim_step
        self.shape = model.sample_shape
        self.generators = [torch.Generator(device=self.device) for _ in range(num_envs)]
        self.t = 0
        self.x_agent = self.x_baseline = self.eps_agent = self.eps_baseline = torch.empty(0)
        self.x0_agent = self.x0_baseline = torch.empty(0)
        self.prev_diff = torch.empty(0)  # D_{t+1} of the last step ("delta" reward); 0 at t_c, where both agree

    # random draws and network calls -------------------------------------------------------------------
    def _normal(self) -> torch.Tensor:
        return randn_per_generator(self.generators, self.shape, self.device)

    def _eps(self, x: torch.Tensor, t: int, repeat: int = 1) -> torch.Tensor:
        """eps_theta at paper step ``t`` (network timestep ``t - 1``) under the threat and the defence."""
        timestep = torch.full((x.shape[0],), float(t - 1), device=self.device)
        return attacked_eps(self.model, x, timestep, self.attack, self.generators, self.defence)

    def _baseline_sigma(self, t: int, t_prev: int) -> float:
        return min(self.baseline_sigma, self.schedule.sigma_max(t, t_prev))

    # the attack-free prefix x_T -> x_{t_c} -------------------------------------------------------------
    def _prefix(self, generators: list[torch.Generator]) -> torch.Tensor:
        ts = self.timesteps
        k = len(ts) - self.t_c  # strided steps above t_c, then x_{t_c}
        x = randn_per_generator(generators, self.shape, self.device)
        return ddim_steps(self.model, x, ts[: k + 1], generators, self.attack, self.t_c, self.baseline_sigma,
                          self.defence)  # fmt: skip

    def _cache_config(self) -> tuple:
        return (id(self.model.unet), self.model.source, str(self.device), self.t_c, self.stride, self.baseline_sigma,
                self.defence)  # fmt: skip

    def _cached_prefix(self, seeds: list[int], generators: list[torch.Generator], restore: bool) -> torch.Tensor:
        """``x_{t_c}`` for episodes seeded ``seeds`` (generators already seeded), computing only the misses."""
        config = self._cache_config()
        items = [PREFIX_CACHE.get((config, s)) for s in seeds]
        miss = [i for i, item in enumerate(items) if item is None]
        if miss:
            x_new = self._prefix([generators[i] for i in miss])
            for j, i in enumerate(miss):
                items[i] = (x_new[j], generators[i].get_state())
                PREFIX_CACHE.put((config, seeds[i]), *items[i])  # type: ignore[misc]
        if restore:
            for i, item in enumerate(items):
                if i not in miss:
                    generators[i].set_state(item[1])  # type: ignore[index]
        return torch.stack([item[0] for item in items])  # type: ignore[index]

    def pool_x(self, indices: list[int]) -> torch.Tensor:
        """``x_{t_c}`` of prefix-pool entries ``indices`` (entry ``j`` from seed ``POOL_SEED_BASE + j``), from the
        process cache or computed: ``(len(indices), C, H, W)`` float32 in model space, on the model's device.
        With ``prefix_pool_dir`` the whole pool is read from (or computed once and written to) that folder first.
        """
        if self.prefix_pool_dir is not None and not self._pool_on_disk_done and self.prefix_pool > 0:
            self._pool_from_disk()
        gens = [torch.Generator(device=self.device).manual_seed(POOL_SEED_BASE + j) for j in indices]
        return self._cached_prefix([POOL_SEED_BASE + j for j in indices], gens, restore=False)

    def pool_file(self) -> Path:
        """The file of this configuration's pool in ``prefix_pool_dir``: ``pool_<sha256[:16]>.pt``, keyed by
        :meth:`pool_key` (the network's weights themselves, not its name: a retrained model gets a new file).

        Raises:
            ValueError: without ``prefix_pool_dir``.
        """
        if self.prefix_pool_dir is None:
            raise ValueError("pool_file needs prefix_pool_dir")
        digest = hashlib.sha256(json.dumps(self.pool_key(), sort_keys=True).encode()).hexdigest()[:16]
        return Path(self.prefix_pool_dir) / f"pool_{digest}.pt"

    def pool_key(self) -> dict[str, Any]:
        """What determines the pool's ``x_{t_c}``: the network's weights (sha256 of its state dict), the schedule,
        ``t_c``, stride, baseline sigma, defence, sample shape, pool size and seed base.
        """
        if self._weights_sha is None:
            digest = hashlib.sha256()
            for name, tensor in self.model.unet.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            self._weights_sha = digest.hexdigest()[:16]
        alpha_bar = self.schedule.alpha_bar.double().cpu().numpy().tobytes()
        return {"weights": self._weights_sha, "alpha_bar": hashlib.sha256(alpha_bar).hexdigest()[:16],
                "t_c": self.t_c, "stride": self.stride, "baseline_sigma": self.baseline_sigma,
                "defence": repr(self.defence), "shape": list(self.shape), "pool": self.prefix_pool,
                "seed_base": POOL_SEED_BASE}  # fmt: skip

    def _pool_from_disk(self) -> None:
        """Fill the process cache with the whole pool from :meth:`pool_file`; compute and write it (atomically)
        when absent. An unreadable or mismatched file is named in a warning and rewritten, never trusted.
        """
        import warnings

        from robust_envs.fileio import CorruptFileError, read_torch

        path = self.pool_file()
        seeds = [POOL_SEED_BASE + j for j in range(self.prefix_pool)]
        config = self._cache_config()
        x = None
        if path.is_file():
            try:
                saved = read_torch(path, hint="it is a cache: delete it or let the env rewrite it")
                if saved.get("key") != self.pool_key() or tuple(saved["x"].shape) != (self.prefix_pool, *self.shape):
                    raise CorruptFileError(path, "made for another configuration", "the env rewrites it")
                x = saved["x"].to(self.device)
            except (CorruptFileError, KeyError, AttributeError) as err:
                warnings.warn(f"prefix pool {path} not used ({err}); it is computed again and rewritten", stacklevel=3)
        if x is None:
            parts = []
            for i in range(0, len(seeds), 256):  # batches of 256 samples through the network
                chunk = seeds[i : i + 256]
                gens = [torch.Generator(device=self.device).manual_seed(s) for s in chunk]
                parts.append(self._cached_prefix(chunk, gens, restore=False))
            x = torch.cat(parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            torch.save({"key": self.pool_key(), "x": x.detach().cpu()}, tmp)
            os.replace(tmp, path)
        else:
            empty = torch.empty(0)
            for j, s in enumerate(seeds):
                if PREFIX_CACHE.get((config, s)) is None:
                    PREFIX_CACHE.put((config, s), x[j], empty)  # pool entries never restore a generator
        self._pool_on_disk_done = True

    # episode control ----------------------------------------------------------------------------------
    def reset(self, torch_seeds: list[int] | None) -> None:
        """Start N episodes: draw x_T, run the strided steps down to t_c (or reuse them) and predict eps at t_c."""
        if torch_seeds is not None:
            for g, s in zip(self.generators, torch_seeds, strict=True):
                g.manual_seed(int(s))
        if self.prefix_pool > 0:
            picks = [
                int(torch.randint(self.prefix_pool, (1,), generator=g, device=self.device)) for g in self.generators
            ]
            self.pool_index = picks
            x = self.pool_x(picks)
        elif self.prefix_cache and torch_seeds is not None:
            x = self._cached_prefix([int(s) for s in torch_seeds], self.generators, restore=True)
        else:
            x = self._prefix(self.generators)
        self.t = self.t_c
        self.prev_diff = torch.zeros(self.num_envs, device=self.device)  # both trajectories share x_{t_c} and eps
        eps = self._eps(x, self.t_c)
        self.x_agent, self.x_baseline = x, x.clone()
        self.eps_agent, self.eps_baseline = eps, eps.clone()
        self.x0_agent = predict_x0(x, eps, self.alpha_bar[self.t_c])
        self.x0_baseline = self.x0_agent.clone()
        self._q_now: torch.Tensor | None = None  # Q of x0_agent, scored when asked (quality_now)
        self._replay = self._record = None
        keys: list[tuple] | None = None
        if self.baseline_cache and torch_seeds is not None and self.prefix_pool == 0:
            keys = [(self._baseline_config(), int(s)) for s in torch_seeds]
        elif self.baseline_cache and self.prefix_pool > 0 and self.baseline_is_deterministic():
            keys = [(self._baseline_config(), "pool", j) for j in self.pool_index or []]
        if keys is not None:
            self._replay = BASELINE_CACHE.get_all(keys)
            if self._replay is None:
                self._record = (keys, [])

    def baseline_is_deterministic(self) -> bool:
        """True when the baseline's trajectory below ``t_c`` is a function of ``x_{t_c}`` alone: baseline sigma 0
        (no ``z``) and a threat that uses no random draw (``"none"``, ``"shift"``, ``"adaptive"``; seed 000's
        ``"gaussian"`` and ``"state"`` draw per episode). Then a pool entry's baseline can be replayed whatever
        the episode (``baseline_cache`` with ``prefix_pool``).
        """
        return self.baseline_sigma == 0.0 and (not self.attack.active or self.attack.kind in ("shift", "adaptive"))

    def _baseline_config(self) -> tuple:
        # the network and the evaluator themselves (hashed by identity), not their ids: a key keeps them alive,
        # so a freed object's id cannot be reused by another one and hit a stale entry
        return (self.model.unet, self.evaluator, self.model.source, str(self.device), self.t_c, self.stride,
                self.baseline_sigma, self.defence, self.attack)  # fmt: skip

    def quality_now(self) -> torch.Tensor:
        """Q of the agent's current x0 prediction ``(N,)`` float32 in the evaluator's range (x_0 itself after t = 1):
        the score the reward is made of, as the ``q_x0`` observation. After a step it is the step's ``q_agent``; at
        reset the evaluator scores the x0 prediction at ``t_c`` once (no random draw, so episodes are unchanged).

        Raises:
            RuntimeError: before :meth:`reset`.
        """
        if not hasattr(self, "x0_agent"):
            raise RuntimeError("DDIMSigmaSimulator.quality_now called before reset()")
        if self._q_now is None:
            self._q_now = self.evaluator(_to_unit(self.x0_agent))
        return self._q_now

    def sigma_scale(self, t: int) -> float:
        """The sigma of action 1 at step t -> t - 1: ``sigma_max`` (``"sigma_frac"``) or ``sigma_ddpm`` (``"eta"``)."""
        if self.action == "eta":
            return self.schedule.sigma_ddpm(t, t - 1)
        return self.schedule.sigma_max(t, t - 1)

    def sigma_for(self, action: torch.Tensor) -> torch.Tensor:
        """The agent's sigma ``(N,)`` for actions ``(N,)`` in [0, 1] at the current step."""
        return action * self.sigma_scale(self.t)

    def _single_step(self, x: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor | float,
                     z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """One trajectory of N samples from the current t to t - 1: ``(x_{t-1}, eps at x_{t-1}, x0, quality)``
        (at t = 1 the x0 is ``x_0`` itself and ``eps`` is returned unchanged: the episode ends).
        """
        t_prev = self.t - 1
        ab_prev = self.alpha_bar[t_prev]
        x_prev = ddim_step(x, eps, self.alpha_bar[self.t], ab_prev, sigma, z).x_prev
        if t_prev >= 1:
            eps = self._eps(x_prev, t_prev)
            x0 = predict_x0(x_prev, eps, ab_prev)
        else:
            x0 = x_prev
        return x_prev, eps, x0, self.evaluator(_to_unit(x0))

    def _replayed(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The cached baseline's ``x_{t-1}``, x0 prediction and quality at step index ``k = t_c - t``."""
        assert self._replay is not None
        return (torch.stack([e[0][k] for e in self._replay]), torch.stack([e[1][k] for e in self._replay]),
                torch.stack([e[2][k] for e in self._replay]))  # fmt: skip

    def _record_baseline(self, x_b: torch.Tensor, x0_b: torch.Tensor, q_b: torch.Tensor, t_prev: int) -> None:
        """Append a computed baseline step to the episode's record; store the record in the memo at t = 0."""
        if self._record is None:
            return
        self._record[1].append((x_b, x0_b, q_b))
        if t_prev == 0:
            steps = self._record[1]
            for i, key in enumerate(self._record[0]):
                BASELINE_CACHE.put(key, torch.stack([st[0][i] for st in steps]),
                                   torch.stack([st[1][i] for st in steps]), torch.stack([st[2][i] for st in steps]))  # fmt: skip
            self._record = None

    def step(self, action: torch.Tensor) -> SimulatorStep:
        """Apply the agents' actions ``(N,)`` in [0, 1] at the current t; returns rewards and qualities.

        Raises:
            RuntimeError: when called before :meth:`reset` or after the episode ended.
        """
        if self.t < 1:
            raise RuntimeError("DDIMSigmaSimulator.step called before reset() or after the episode ended")
        t, t_prev = self.t, self.t - 1
        ab_t, ab_prev = self.alpha_bar[t], self.alpha_bar[t_prev]
        sigma_a = self.sigma_for(action)
        z = self._normal()
        if self.mirror_baseline:  # the agent is the baseline: N samples, one trajectory
            sigma_a = torch.full_like(sigma_a, self._baseline_sigma(t, t_prev))
            if self._replay is not None:
                x_b, x0_b, q_b = self._replayed(self.t_c - t)
            else:
                x_b, self.eps_baseline, x0_b, q_b = self._single_step(self.x_baseline, self.eps_baseline,
                                                                      self._baseline_sigma(t, t_prev), z)  # fmt: skip
                self._record_baseline(x_b, x0_b, q_b, t_prev)
            self.eps_agent = self.eps_baseline
            x_a, x0_a, q_a = x_b, x0_b, q_b
        elif self._replay is not None:  # the baseline of these seeds is known: the agent's N samples only
            x_a, self.eps_agent, x0_a, q_a = self._single_step(self.x_agent, self.eps_agent, sigma_a, z)
            x_b, x0_b, q_b = self._replayed(self.t_c - t)
            q_b = q_b.to(q_a.dtype)
        else:
            x_a = ddim_step(self.x_agent, self.eps_agent, ab_t, ab_prev, sigma_a, z).x_prev
            x_b = ddim_step(self.x_baseline, self.eps_baseline, ab_t, ab_prev, self._baseline_sigma(t, t_prev), z).x_prev
            pair = torch.cat([x_a, x_b])
            if t_prev >= 1:
                eps = self._eps(pair, t_prev, repeat=2)
                x0 = predict_x0(pair, eps, ab_prev)
                self.eps_agent, self.eps_baseline = eps.chunk(2)
            else:
                x0 = pair  # x_0 itself: the final reward r_1 scores the generated images (Eq. 16-18)
            q = self.evaluator(_to_unit(x0))
            q_a, q_b = q.chunk(2)
            x0_a, x0_b = x0.chunk(2)
            self._record_baseline(x_b, x0_b, q_b, t_prev)
        self.x_agent, self.x_baseline = x_a, x_b
        self.x0_agent, self.x0_baseline = x0_a, x0_b
        self._q_now = q_a
        self.t = t_prev
        diff = q_a - q_b
        if self.reward == "paper":
            reward = diff
        elif self.reward == "delta":
            reward = diff - (self.prev_diff if self.prev_diff.numel() else torch.zeros_like(diff))
        else:  # "final"
            reward = diff if t_prev == 0 else torch.zeros_like(diff)
        self.prev_diff = diff
        return SimulatorStep(reward=reward, q_agent=q_a, q_baseline=q_b, sigma=sigma_a, t=t, terminated=t_prev == 0)


def _validated_action(action: Any, num_envs: int, device: torch.device) -> torch.Tensor:
    """Actions -> ``(num_envs,)`` float32 on ``device`` in [0, 1]; raises naming the bad value and the valid range.

    A numpy array, a Python number or a torch tensor is accepted; a tensor must be floating point and already on
    ``device`` (no silent host or device copies). Checking a tensor's range reads one bool back from the device.

    Raises:
        ValueError: on a wrong shape, a value outside [0, 1] or not finite, or a tensor on another device.
        TypeError: on a tensor that is not floating point.
    """
    if isinstance(action, torch.Tensor):
        if not same_device(action.device, device):
            raise ValueError(f"action must be a tensor on the env's device {device}, got one on {action.device}")
        if not action.dtype.is_floating_point:
            raise TypeError(f"action must be a floating-point tensor with values in [0, 1], got dtype {action.dtype}")
        shape = tuple(action.shape)
    else:
        action = np.asarray(action, dtype=np.float64)
        shape = action.shape
    if shape not in ((num_envs, 1), (num_envs,)) and not (num_envs == 1 and shape in ((), (1,), (1, 1))):
        expected = "(1,)" if num_envs == 1 else f"({num_envs}, 1)"
        raise ValueError(f"action must have shape {expected} (one number per env), got shape {shape}")
    if isinstance(action, torch.Tensor):
        a_t = action.detach().reshape(num_envs)
        bad_t = ~torch.isfinite(a_t) | (a_t < 0.0) | (a_t > 1.0)
        if bool(bad_t.any()):
            i = int(bad_t.nonzero()[0, 0])
            raise ValueError(f"action must be a finite number in [0, 1]; env {i} got {float(a_t[i])}")
        return a_t.to(torch.float32)
    a = action.reshape(num_envs)
    bad = ~np.isfinite(a) | (a < 0.0) | (a > 1.0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"action must be a finite number in [0, 1]; env {i} got {float(a[i])}")
    return torch.as_tensor(a.astype(np.float32), device=device)


#: Constructor arguments shared by the single and the vector env, with their defaults (documented on
#: :class:`DDIMSigmaEnv`).
ENV_DEFAULTS: dict[str, Any] = {
    "t_c": 20,
    "stride": 50,
    "action": "sigma_frac",
    "attack": "gaussian",
    "attack_scale": 0.01,
    "attack_clip": 0.05,
    "attack_budget": 0.0,
    "attack_budget_unit": "timesteps",
    "attack_grid": 2,
    "attack_steps": 1,
    "defence": "none",
    "defence_t_share": 100.0,
    "defence_n_share": 5,
    "evaluator": "levels",
    "model": "embedded",
    "device": None,
    "baseline_sigma": 0.0,
    "prefix_cache": False,
    "prefix_pool": 0,
    "prefix_pool_dir": None,
    "baseline_cache": False,
    "reward": "paper",
    "observe_quality": False,
    "render_mode": None,
}


class _DDIMSigmaMixin:
    """Argument checking, spaces and numpy conversion shared by the single and the vector env."""

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 4}

    def _setup(self, num_envs: int, kw: dict[str, Any]) -> None:
        render_mode, baseline_sigma = kw["render_mode"], kw["baseline_sigma"]
        t_c, stride = kw["t_c"], kw["stride"]
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        if not (isinstance(baseline_sigma, (int, float)) and math.isfinite(baseline_sigma) and baseline_sigma >= 0):
            raise ValueError(f"baseline_sigma must be a finite number >= 0, got {baseline_sigma!r}")
        for name in ("t_c", "stride", "prefix_pool"):
            value = kw[name]
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an int, got {value!r}")
        if kw["prefix_pool"] < 0:
            raise ValueError(f"prefix_pool must be >= 0 (0: off), got {kw['prefix_pool']}")
        if kw["action"] not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {kw['action']!r}")
        if kw["reward"] not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {kw['reward']!r}")
        if not isinstance(kw["observe_quality"], (bool, np.bool_)):
            raise ValueError(f"observe_quality must be a bool, got {kw['observe_quality']!r}")
        if kw["attack_budget_unit"] not in ("timesteps", "T"):
            raise ValueError(
                f"attack_budget_unit must be 'timesteps' or 'T' (a fraction of T), got {kw['attack_budget_unit']!r}"
            )
        self.render_mode = render_mode
        dev = _resolve_device(kw["device"])
        noise_model = _get_model(kw["model"], dev)
        T = noise_model.schedule.num_train_timesteps
        if not 1 <= t_c <= T:
            raise ValueError(f"t_c must be in [1, T={T}], got {t_c}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        budget = kw["attack_budget"]
        if kw["attack_budget_unit"] == "T" and kw["attack"] in ("shift", "adaptive"):
            budget = budget * T if isinstance(budget, (int, float)) and not isinstance(budget, bool) else budget
        attack = TimestepAttack(kind=kw["attack"], scale=kw["attack_scale"], clip=kw["attack_clip"], budget=budget,
                                grid=kw["attack_grid"], steps=kw["attack_steps"])  # fmt: skip
        if attack.kind in ("shift", "adaptive", "state") and not attack.active:
            raise ValueError(f"attack={attack.kind!r} needs attack_budget > 0, got {kw['attack_budget']!r}")
        self.sim = DDIMSigmaSimulator(
            num_envs=num_envs,
            model=noise_model,
            evaluator=_get_evaluator(kw["evaluator"], dev),
            t_c=int(t_c),
            stride=int(stride),
            attack=attack,
            baseline_sigma=baseline_sigma,
            defence=TimestepDefence(kind=kw["defence"], t_share=kw["defence_t_share"], n_share=kw["defence_n_share"]),
            action=kw["action"],
            prefix_cache=bool(kw["prefix_cache"]),
            prefix_pool=int(kw["prefix_pool"]),
            reward=kw["reward"],
            baseline_cache=bool(kw["baseline_cache"]),
            prefix_pool_dir=None if kw["prefix_pool_dir"] is None else str(kw["prefix_pool_dir"]),
        )
        self.t_c = int(t_c)
        self.observe_quality = bool(kw["observe_quality"])
        c, h, w = noise_model.sample_shape
        obs_spaces: dict[str, spaces.Space] = {
            "x_t": spaces.Box(-np.inf, np.inf, shape=(c, h, w), dtype=np.float32),
            "t": spaces.Box(0.0, float(T), shape=(1,), dtype=np.float32),
        }
        if self.observe_quality:
            obs_spaces["q_x0"] = spaces.Box(*SCORE_RANGE, shape=(1,), dtype=np.float32)
        self._single_obs_space = spaces.Dict(obs_spaces)
        self._single_act_space = spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)

    def _obs(self) -> dict[str, torch.Tensor]:
        """The batched observation as tensors on the device: ``x_t`` ``(N, C, H, W)``, ``t`` ``(N, 1)`` float32."""
        n, dev = self.sim.num_envs, self.sim.device
        obs = {
            "x_t": self.sim.x_agent.detach().float().clone(),  # a copy: the caller may write into it
            "t": torch.full((n, 1), float(self.sim.t), dtype=torch.float32, device=dev),
        }
        if self.observe_quality:
            obs["q_x0"] = self.sim.quality_now().detach().float().reshape(n, 1).clone()
        return obs

    def _step_info(self, out: SimulatorStep) -> dict[str, torch.Tensor]:
        """The step's infos as ``(N,)`` tensors on the device (``q0_*`` added at the end of the episode)."""
        info = {
            "q_agent": out.q_agent,
            "q_baseline": out.q_baseline,
            "sigma": out.sigma,
            "t": torch.full((self.sim.num_envs,), out.t, dtype=torch.int64, device=self.sim.device),
        }
        if out.terminated:
            info["q0_agent"] = info["q_agent"]
            info["q0_baseline"] = info["q_baseline"]
        return info

    def _frame(self, index: int, scale: int = 4) -> np.ndarray:
        """``(H*scale, 2*W*scale + scale, 3)`` uint8: agent x0_pred | baseline x0_pred."""
        a, b = _to_unit(self.sim.x0_agent[index]), _to_unit(self.sim.x0_baseline[index])
        gap = torch.ones(a.shape[0], a.shape[1], 1, device=a.device)
        img = torch.cat([a, gap, b], dim=-1)
        img = img.mean(0, keepdim=True).repeat(3, 1, 1) if img.shape[0] == 1 else img
        img = img.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        return (img.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


class DDIMSigmaEnv(_DDIMSigmaMixin, gym.Env[dict[str, np.ndarray], np.ndarray]):
    """Schedule the DDIM sigma of one sample near t = 0 while its noise network is attacked.

    ## Description
    A DDIM sampler (Song et al. 2020) runs from ``x_T ~ N(0, I)`` along ``t_c + K*d, ..., t_c + d, t_c, t_c - 1,
    ..., 1, 0`` with ``K = floor((T - t_c) / d)``. Above the critical timestep ``t_c`` the baseline sigma is
    used; from ``t_c`` to 1 (unit steps, the range seed 000 calls vulnerable to Lipschitz singularities) the
    agent picks sigma for each step while an attacker perturbs the network (seed 000 sec. 5.1.3: its
    timestep input). Measured on the embedded model, the network's timestep sensitivity peaks at the network
    timestep 1-2 and falls at 0, and the x0 prediction barely moves under the seed's attack
    (``docs/singularity.md``); stronger threats are arguments. A second, baseline trajectory with the fixed
    sigma (0: deterministic DDIM) shares ``x_T``, the noise draws and the attack draws; rewards are quality
    differences between the two (seed 000 Eq. 16-21).

    ## Action Space
    ``Box(0, 1, (1,), float32)``: ``a``. With ``action="sigma_frac"`` (default, seed 000 Eq. 15's range)
    ``sigma_t = a * sqrt(1 - alpha_bar[t-1])``: a = 1 is the largest sigma the DDIM update admits (the
    direction term vanishes: ``x_{t-1} = sqrt(ab_{t-1}) x0_pred + sigma z``). With ``action="eta"``,
    ``sigma_t = a * sqrt((1 - ab_{t-1}) / (1 - ab_t)) * sqrt(1 - ab_t / ab_{t-1})`` (DDIM Eq. 16; a = 1 is the
    DDPM posterior sigma, about 0.29 of the largest feasible sigma at t = 20 and less nearer 0). At t = 1,
    ``alpha_bar[0] = 1`` forces sigma = 0 in both modes: the last action has no effect. A NaN, infinite or
    out-of-range action, or a wrong shape, raises ``ValueError`` (no silent clipping).

    ## Observation Space
    ``Dict`` (seed 000 Eq. 14, ``s_t = (x_t, t)``), the agent trajectory's state:

    | key   | shape       | dtype   | range          | meaning                                   |
    |-------|-------------|---------|----------------|-------------------------------------------|
    | x_t   | (C, H, W)   | float32 | (-inf, inf)    | current sample in model space (data in [-1, 1]) |
    | t     | (1,)        | float32 | [0, T]         | current timestep (t_c at reset, 0 at the end) |
    | q_x0  | (1,)        | float32 | [1, 5]         | only with ``observe_quality=True``: Q of the agent's x0 prediction |

    For the embedded default, ``(C, H, W) = (1, 28, 28)`` and T = 1000. ``q_x0`` is an opt-in addition to the
    paper's state: the evaluator's score of the x0 prediction the agent's trajectory has now (the quality its
    rewards are made of; Q(x_0) after the last step). It is a function of ``(x_t, t)``, so the MDP is unchanged,
    but a learner need not discover the scorer from pixels: measured in ``docs/sigma_headroom.md``, Q of the x0
    prediction at ``t_c`` tells which constant schedule an unseen image prefers, where pooled pixels do not.

    ## Rewards
    ``r_t = Q(x0_pred(x_{t-1}^Ag)) - Q(x0_pred(x_{t-1}^Ba))`` for t = t_c..2 (Eq. 19-21) and
    ``r_1 = Q(x_0^Ag) - Q(x_0^Ba)`` at t = 1 (Eq. 16-18). ``Q`` is the evaluator (scores in [1, 5]), so each
    reward lies in [-4, 4]. ``x0_pred`` is seed 000 Eq. 10, computed from the attacked network call that the
    next transition uses. With ``reward="paper"`` (default) that is the reward; ``reward="delta"`` gives
    ``D_t - D_{t+1}`` instead (``D`` the difference above, 0 at reset: potential-based shaping, Ng et al. 1999),
    whose undiscounted return is exactly r_1, and ``reward="final"`` gives 0 before t = 1 and r_1 at t = 1. The
    paper's reward sums the quality of every intermediate x0 prediction, whose best constant schedule differs
    from the best schedule for r_1, the statistic the paper evaluates (measured in ``docs/sigma_benchmark.md``).
    x0_pred is not clipped to [-1, 1] (as in the DDIM paper; the embedded model's
    ``scheduler_config.json`` says ``clip_sample: false`` to match), only the images scored are clamped.

    ## Starting State
    ``x_{t_c}`` after the strided baseline steps from ``x_T ~ N(0, I)`` (``prefix_cache`` / ``prefix_pool``
    reuse them; see :class:`DDIMSigmaSimulator`).

    ## Episode End
    Terminates after exactly ``t_c`` steps (the step at t = 1 yields x_0). No truncation of its own; the
    registered ``max_episode_steps=1000`` never binds because ``t_c <= T``.

    ## Info
    Each step: ``q_agent``, ``q_baseline`` (the two qualities), ``sigma`` (the agent's sigma), ``t`` (the
    timestep acted at); at the end also ``q0_agent``, ``q0_baseline`` (Q of both x_0).

    ## Arguments
    - ``t_c`` (int, default 20): critical timestep, 1 <= t_c <= T; episode length.
    - ``stride`` (int, default 50): d, the DDIM stride above t_c, >= 1.
    - ``action`` (str, default ``"sigma_frac"``): ``"sigma_frac"`` (a fraction of the largest feasible sigma)
      or ``"eta"`` (DDIM's eta; v0's only meaning before this argument existed).
    - ``attack`` (str, default ``"gaussian"``): the threat at t <= t_c, one of
      :data:`robust_envs.diffusion.ATTACKS`: ``"gaussian"`` (seed 000's), ``"shift"``, ``"adaptive"``,
      ``"state"``, ``"none"`` (see :mod:`robust_envs.diffusion.attack`).
    - ``attack_scale`` (float, default 0.01), ``attack_clip`` (float, default 0.05): ``"gaussian"``, timestep units.
    - ``attack_budget`` (float): ``"shift"`` / ``"adaptive"``: timestep units (or a fraction of T with
      ``attack_budget_unit="T"``); ``"state"``: Linf radius in model space ([-1, 1] data). Required (> 0) by them.
    - ``attack_grid`` (int, default 2): ``"adaptive"`` candidates; ``attack_steps`` (int, default 1): ``"state"`` PGD steps.
    - ``defence`` (str, default ``"none"``): ``"round"`` (timestep rounded to the training grid) or
      ``"share"`` (E-TSDM-style sharing inside ``[0, defence_t_share)`` in ``defence_n_share`` intervals).
    - ``reward`` (str, default ``"paper"``): ``"paper"`` (Eq. 19-21), ``"delta"`` or ``"final"`` (see Rewards).
    - ``observe_quality`` (bool, default False): add ``q_x0`` to the observation (see Observation Space); costs
      one evaluator call on N images per reset, nothing per step; rewards and episodes are unchanged.
    - ``evaluator`` (str or QualityEvaluator, default ``"levels"``): see :func:`robust_envs.quality.make_evaluator`.
    - ``model`` (str or NoiseModel, default ``"embedded"``): see :func:`robust_envs.diffusion.load_noise_model`.
    - ``device`` (str, default: CUDA if available, else CPU).
    - ``baseline_sigma`` (float, default 0.0): the fixed sigma of the baseline (and of every step above t_c),
      clipped per step to ``sqrt(1 - alpha_bar[t_prev])`` (documented clip).
    - ``prefix_cache`` (bool, default False), ``prefix_pool`` (int, default 0: off): reuse the attack-free
      prefix above t_c (:class:`DDIMSigmaSimulator`).
    - ``prefix_pool_dir`` (str, default None): with ``prefix_pool``, keep the pool's ``x_{t_c}`` on disk in this
      folder (one ``pool_<hash>.pt`` per configuration, keyed by the network's weights, schedule, t_c, stride,
      baseline sigma, defence and pool size): the first env computes and writes it, later ones (other processes,
      later runs) read it instead of running ``P`` strided prefixes. A file of another configuration or a corrupt
      one is named in a warning and rewritten.
    - ``baseline_cache`` (bool, default False): replay the sigma = 0 baseline of a seed already run with the same
      configuration (:class:`BaselineCache`; seeded resets, no pool); evaluation of many schedules on the same
      seeds then costs about half per schedule after the first. With ``prefix_pool`` it replays the baseline of
      a pool entry instead, where that baseline uses no random draw (baseline sigma 0 and the ``none`` /
      ``shift`` / ``adaptive`` threats): training then runs the network and the scorer on the agent's N samples
      only once the pool's baselines are known. Rewards and infos are unchanged (up to float round-off, ~1e-6).
    - ``render_mode``: None or ``"rgb_array"`` (agent | baseline x0_pred, side by side).

    ## Version History
    - v0: initial release; the ``action`` argument (default ``"sigma_frac"``, seed 000's range) and the
      threats ``"shift"``, ``"adaptive"``, ``"state"`` with the ``defence`` option and the ``reward`` option
      (default ``"paper"``, as before) and ``observe_quality`` (default off) were added later under the same id;
      pass ``action="eta"`` for the earlier action.
    """

    def __init__(
        self,
        t_c: int = 20,
        stride: int = 50,
        action: str = "sigma_frac",
        attack: str = "gaussian",
        attack_scale: float = 0.01,
        attack_clip: float = 0.05,
        attack_budget: float = 0.0,
        attack_budget_unit: str = "timesteps",
        attack_grid: int = 2,
        attack_steps: int = 1,
        defence: str = "none",
        defence_t_share: float = 100.0,
        defence_n_share: int = 5,
        evaluator: str | QualityEvaluator = "levels",
        model: str | NoiseModel = "embedded",
        device: str | torch.device | None = None,
        baseline_sigma: float = 0.0,
        prefix_cache: bool = False,
        prefix_pool: int = 0,
        prefix_pool_dir: str | None = None,
        baseline_cache: bool = False,
        reward: str = "paper",
        observe_quality: bool = False,
        render_mode: str | None = None,
    ) -> None:
        kw = {k: v for k, v in locals().items() if k in ENV_DEFAULTS}
        self._setup(1, kw)
        self.observation_space = self._single_obs_space  # type: ignore[assignment]
        self.action_space = self._single_act_space
        self._needs_reset = True

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        first = self._np_random is None
        super().reset(seed=seed)
        torch_seeds = [int(self.np_random.integers(0, 2**62))] if (seed is not None or first) else None
        self.sim.reset(torch_seeds)
        self._needs_reset = False
        return {k: v[0] for k, v in to_numpy(self._obs()).items()}, {"t": self.sim.t}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], SupportsFloat, bool, bool, dict[str, Any]]:
        if self._needs_reset:
            raise RuntimeError("DDIMSigmaEnv.step called before reset() or after the episode terminated")
        out = self.sim.step(_validated_action(action, 1, self.sim.device))
        self._needs_reset = out.terminated
        info = {k: v[0].item() for k, v in to_numpy(self._step_info(out)).items()}
        obs = {k: v[0] for k, v in to_numpy(self._obs()).items()}
        return obs, float(out.reward[0]), out.terminated, False, info

    def render(self) -> np.ndarray | None:  # type: ignore[override]
        if self.render_mode != "rgb_array":
            return None
        return self._frame(0)


class DDIMSigmaVectorEnv(_DDIMSigmaMixin, LockstepVectorEnv):
    """N DDIMSigma-v0 episodes in lockstep: one network forward on 2N samples per step.

    Same arguments, spaces (batched) and semantics as :class:`DDIMSigmaEnv`, plus ``num_envs`` and
    ``autoreset_mode`` (``AutoresetMode.NEXT_STEP`` default, or ``SAME_STEP`` for SB3). Sub-env ``i`` seeded
    with ``seed + i`` reproduces ``DDIMSigmaEnv`` reset with that seed, step for step. ``max_episode_steps``
    (passed by ``gym.make_vec``) truncates episodes longer than it. Actions ``(num_envs, 1)`` in [0, 1].

    Two API boundaries serve the same steps: ``reset`` / ``step`` (numpy, Gymnasium's) and ``reset_torch`` /
    ``step_torch`` (torch tensors on :attr:`device`, no host copy; what
    :class:`robust_envs.wrappers.TorchVectorEnv` exposes). Either accepts actions as a numpy array or as a
    floating-point tensor on :attr:`device`.
    """

    def __init__(
        self,
        num_envs: int = 1,
        t_c: int = 20,
        stride: int = 50,
        action: str = "sigma_frac",
        attack: str = "gaussian",
        attack_scale: float = 0.01,
        attack_clip: float = 0.05,
        attack_budget: float = 0.0,
        attack_budget_unit: str = "timesteps",
        attack_grid: int = 2,
        attack_steps: int = 1,
        defence: str = "none",
        defence_t_share: float = 100.0,
        defence_n_share: int = 5,
        evaluator: str | QualityEvaluator = "levels",
        model: str | NoiseModel = "embedded",
        device: str | torch.device | None = None,
        baseline_sigma: float = 0.0,
        prefix_cache: bool = False,
        prefix_pool: int = 0,
        prefix_pool_dir: str | None = None,
        baseline_cache: bool = False,
        reward: str = "paper",
        observe_quality: bool = False,
        render_mode: str | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        max_episode_steps: int | None = None,
    ) -> None:
        kw = {k: v for k, v in locals().items() if k in ENV_DEFAULTS}
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1 or None, got {max_episode_steps}")
        LockstepVectorEnv.__init__(self, autoreset_mode)
        self.num_envs = int(num_envs)
        self._setup(self.num_envs, kw)
        self.single_observation_space = self._single_obs_space
        self.single_action_space = self._single_act_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.max_episode_steps = max_episode_steps
        self._elapsed = 0
        self._seeded = False
        self._needs_reset = True

    def _reset_batch(self, seed: int | None, options: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
        torch_seeds: list[int] | None = None
        if seed is not None or not self._seeded:
            rngs = [seeding.np_random(None if seed is None else seed + i)[0] for i in range(self.num_envs)]
            torch_seeds = [int(r.integers(0, 2**62)) for r in rngs]
            self._seeded = True
        self.sim.reset(torch_seeds)
        self._elapsed = 0
        self._needs_reset = False
        return self._obs(), {"t": torch.full((self.num_envs,), self.sim.t, dtype=torch.int64, device=self.sim.device)}

    def _step_batch(self, actions: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor, bool, bool, dict[str, Any]]:
        if self._needs_reset:
            raise RuntimeError("DDIMSigmaVectorEnv.step called before reset()")
        out = self.sim.step(_validated_action(actions, self.num_envs, self.sim.device))
        self._elapsed += 1
        truncated = (
            (not out.terminated) and self.max_episode_steps is not None and self._elapsed >= self.max_episode_steps
        )
        self._needs_reset = out.terminated or truncated
        return self._obs(), out.reward, out.terminated, truncated, self._step_info(out)

    @property
    def device(self) -> torch.device:
        """The torch device of the networks, the episode state and every tensor :meth:`step_torch` returns."""
        return self.sim.device

    def render(self) -> tuple[np.ndarray, ...] | None:  # type: ignore[override]
        if self.render_mode != "rgb_array":
            return None
        return tuple(self._frame(i) for i in range(self.num_envs))
