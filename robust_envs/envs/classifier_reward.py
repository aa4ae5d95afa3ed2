"""ClassifierReward-v0: image classification as a Markov decision process (Kim, seed 003).

Paper: D. Kim, "Reinforcement-based Training Approach for Improving Adversarial Robustness without
Sacrificing Accuracy" (``../shared/seeds/003_8384c7e3f8130485.txt``), section "Formulation" and Eq. 3.

Notation (code -> paper):

- observation (one image ``x``) -> the state ``s`` drawn at random from the data set;
- action ``a`` -> the predicted class ``a`` in the label space;
- ``r_correct`` -> ``r_{k_1}``, ``r_wrong`` -> ``r_{k_2}`` (Eq. 3, the same for every class ``k``);
  ``lambda = r_wrong / r_correct``;
- ``episode_length`` -> ``N``, "the whole batch as an episode".

:class:`ClassifierRewardEnv` is the single env; :class:`ClassifierRewardVectorEnv` serves ``num_envs``
images per step from tensors kept on ``device`` (one gather and one comparison per step), numpy only
at the API boundary. Sub-env ``i`` of a vector env reset with ``seed`` draws exactly the images of a
single env reset with ``seed + i``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from robust_envs.data import DATASETS, load_dataset
from robust_envs.envs._lockstep import LockstepVectorEnv, same_device

__all__ = ["ClassifierRewardEnv", "ClassifierRewardVectorEnv"]

_SPLITS = ("train", "test")


class _ClassifierData:
    """Validated arguments, the data split on ``device`` and the Eq. 3 reward, shared by both envs."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    num_samples: int
    episode_length: int
    device: torch.device
    r_correct: float
    r_wrong: float

    def __init__(
        self,
        dataset: str,
        split: str,
        r_correct: float,
        r_wrong: float,
        episode_length: int,
        device: str | torch.device,
        data_root: str | None,
    ) -> None:
        if dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
        self.set_rewards(r_correct, r_wrong)
        if isinstance(episode_length, bool) or not isinstance(episode_length, numbers.Integral) or episode_length < 1:
            raise ValueError(f"episode_length must be an integer >= 1, got {episode_length!r}")
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda:0', got {device!r}") from err
        data = load_dataset(dataset, split, root=data_root)  # type: ignore[arg-type]
        self.images = data.images.to(self.device)  # (n, C, H, W) uint8
        self.labels = data.labels.to(self.device)  # (n,) int64
        self.num_classes = data.num_classes
        self.num_samples = len(data)
        self.episode_length = int(episode_length)

    def set_rewards(self, r_correct: float, r_wrong: float) -> None:
        """Validate and store the Eq. 3 reward magnitudes (both finite and >= 0)."""
        for name, value in (("r_correct", r_correct), ("r_wrong", r_wrong)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite real number >= 0 (Eq. 3: r_k_i >= 0), got {value!r}")
        self.r_correct = float(r_correct)
        self.r_wrong = float(r_wrong)

    def observation_space(self) -> spaces.Box:
        return spaces.Box(0, 255, shape=tuple(self.images.shape[1:]), dtype=np.uint8)

    def draw_episode(self, rngs: Sequence[np.random.Generator]) -> torch.Tensor:
        """Indices ``(len(rngs), episode_length)`` int64 on ``device``: i.i.d. uniform draws, row i from rngs[i]."""
        rows = [rng.integers(0, self.num_samples, size=self.episode_length) for rng in rngs]
        return torch.as_tensor(np.stack(rows), dtype=torch.int64, device=self.device)

    def reward(self, actions: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 3: ``(rewards float64, correct bool)``, both shaped like ``actions``."""
        correct = actions == self.labels[indices]
        rewards = torch.where(correct, self.r_correct, -self.r_wrong).to(torch.float64)
        return rewards, correct


def _check_scalar_action(action: Any, num_classes: int) -> int:
    """Return ``action`` as an int in [0, num_classes) or raise ``TypeError``/``ValueError``."""
    if isinstance(action, torch.Tensor):
        action = action.detach().cpu().numpy()
    arr = np.asarray(action)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iu":
        raise TypeError(
            f"action must be an integer class label in [0, {num_classes}), got {action!r} of dtype {arr.dtype}"
        )
    if arr.shape != ():
        raise ValueError(
            f"action must be a scalar class label in [0, {num_classes}), got an array of shape {arr.shape}"
        )
    value = int(arr)
    if not 0 <= value < num_classes:
        raise ValueError(f"action must be a class label in [0, {num_classes}), got {value}")
    return value


class ClassifierRewardEnv(gym.Env[np.ndarray, int]):
    """Classify one image per step; reward ``+r_correct`` if right, ``-r_wrong`` if wrong (Kim, Eq. 3).

    ## Description

    The state is an image drawn uniformly at random (with replacement) from a data set split; the agent
    answers with a class label and receives the Eq. 3 reward; the next state is another random image,
    independent of the action. An episode is ``episode_length`` images, the paper's "batch as an
    episode". The label of an image is never part of the observation; it is revealed in ``info`` only
    after the image has been classified.

    ## Action Space

    ``Discrete(num_classes)``: the predicted class, an integer in ``[0, num_classes)`` (10 for
    Fashion-MNIST and digits). Python ``int``, numpy integer scalars and 0-d integer tensors are accepted;
    anything else raises ``TypeError`` (wrong dtype) or ``ValueError`` (wrong shape, out of range).

    ## Observation Space

    | Observation | Shape                     | Dtype   | Range      | Units           |
    |-------------|---------------------------|---------|------------|-----------------|
    | image       | ``(C, H, W)`` (1, 28, 28) | uint8   | [0, 255]   | pixel intensity |

    Channels first; Fashion-MNIST gives ``(1, 28, 28)``, digits ``(1, 8, 8)``. After the last image of an
    episode (``terminated=True``) the observation is an all-zero image: no sample is left to classify.

    ## Rewards

    ``r_correct`` (paper ``r_{k_1}``, default 1.0) when the action equals the label, ``-r_wrong``
    (paper ``-r_{k_2}``, default 1.0) otherwise; ``lambda = r_wrong / r_correct``.

    ## Starting State

    The first image of an episode; the ``episode_length`` image indices are drawn at reset from
    ``self.np_random``.

    ## Episode End

    Termination after ``episode_length`` classified images. Truncation only by an outer ``TimeLimit``
    (the registered ``max_episode_steps`` is 100,000 and never binds for shorter episodes).

    ## Info

    ``reset``: ``{}``. ``step``: ``label`` (int, the true class of the image just classified) and
    ``correct`` (bool).

    ## Arguments

    | Parameter        | Type        | Default            | Description                                          |
    |------------------|-------------|--------------------|------------------------------------------------------|
    | `dataset`        | str         | `"fashion_mnist"`  | one of `robust_envs.data.DATASETS`                   |
    | `split`          | str         | `"train"`          | `"train"` or `"test"`                                |
    | `r_correct`      | float >= 0  | `1.0`              | reward for a correct label, `r_{k_1}` of Eq. 3       |
    | `r_wrong`        | float >= 0  | `1.0`              | penalty for a wrong label, `r_{k_2}` of Eq. 3        |
    | `episode_length` | int >= 1    | `128`              | images per episode (`N` of Eq. 2)                    |
    | `device`         | str         | `"cpu"`            | torch device holding the data                        |
    | `data_root`      | str or None | `None`             | directory of the data set (see `robust_envs.data`)   |
    | `render_mode`    | str or None | `None`             | `"rgb_array"`: the current image as `(H, W, 3)`      |

    ```python
    >>> import gymnasium as gym, robust_envs
    >>> env = gym.make("ClassifierReward-v0", dataset="digits", episode_length=4)
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape, obs.dtype
    ((1, 8, 8), dtype('uint8'))
    ```

    Raises:
        ValueError: on an unknown ``dataset``/``split``, a negative or non-finite reward, an
            ``episode_length`` < 1, an invalid ``device`` or ``render_mode``.

    ## Version History

    - v0: initial version (Fashion-MNIST train split by default; i.i.d. sampling with replacement).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    _data: _ClassifierData
    _t: int

    def __init__(
        self,
        dataset: str = "fashion_mnist",
        split: str = "train",
        r_correct: float = 1.0,
        r_wrong: float = 1.0,
        episode_length: int = 128,
        device: str | torch.device = "cpu",
        data_root: str | None = None,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self._data = _ClassifierData(dataset, split, r_correct, r_wrong, episode_length, device, data_root)
        self.render_mode = render_mode
        self.observation_space = self._data.observation_space()
        self.action_space = spaces.Discrete(self._data.num_classes)  # type: ignore[assignment]
        self._indices: torch.Tensor | None = None  # (episode_length,) int64
        self._t = 0
        self._obs = np.zeros(self.observation_space.shape, dtype=np.uint8)

    @property
    def r_correct(self) -> float:
        """Reward for a correct label (``r_{k_1}`` of Eq. 3)."""
        return self._data.r_correct

    @property
    def r_wrong(self) -> float:
        """Penalty magnitude for a wrong label (``r_{k_2}`` of Eq. 3)."""
        return self._data.r_wrong

    @property
    def episode_length(self) -> int:
        """Number of images per episode."""
        return self._data.episode_length

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode: draw its ``episode_length`` images; returns the first image and ``{}``."""
        super().reset(seed=seed)
        self._indices = self._data.draw_episode([self.np_random])[0]
        self._t = 0
        self._obs = self._data.images[self._indices[0]].cpu().numpy()
        return self._obs.copy(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Classify the current image with ``action`` (Eq. 3 reward).

        Returns the next image, the reward, ``terminated`` (after ``episode_length`` images), ``truncated``
        (False) and ``{"label", "correct"}``.

        Raises:
            TypeError: if ``action`` is not an integer.
            ValueError: if ``action`` is not a scalar in ``[0, num_classes)``.
            RuntimeError: before ``reset()`` or after the episode ended.
        """
        if self._indices is None:
            raise RuntimeError("call reset() before step()")
        if self._t >= self.episode_length:
            raise RuntimeError(f"the episode ended after {self.episode_length} images; call reset()")
        a = _check_scalar_action(action, self._data.num_classes)
        index = self._indices[self._t]
        rewards, correct = self._data.reward(torch.tensor([a], device=self._data.device), index.view(1))
        label = int(self._data.labels[index])
        self._t += 1
        terminated = self._t == self.episode_length
        if terminated:
            self._obs = np.zeros_like(self._obs)
        else:
            self._obs = self._data.images[self._indices[self._t]].cpu().numpy()
        return self._obs.copy(), float(rewards[0]), terminated, False, {"label": label, "correct": bool(correct[0])}

    def render(self) -> np.ndarray | None:
        """The current observation as an ``(H, W, 3)`` uint8 frame (grey replicated) for ``"rgb_array"``."""
        if self.render_mode != "rgb_array":
            return None
        frame = self._obs.transpose(1, 2, 0)
        return np.repeat(frame, 3, axis=2) if frame.shape[2] == 1 else frame[..., :3].copy()


class ClassifierRewardVectorEnv(LockstepVectorEnv):
    """``num_envs`` copies of :class:`ClassifierRewardEnv` stepped together on ``device``.

    Observations ``(num_envs, C, H, W)`` uint8; actions ``(num_envs,)`` integers in ``[0, num_classes)``
    as a numpy array or an integer torch tensor on ``device``; rewards ``(num_envs,)`` float64 (Eq. 3);
    infos ``label`` ``(num_envs,)`` int64 and ``correct`` ``(num_envs,)`` bool with their ``_label`` /
    ``_correct`` masks. All episodes last ``episode_length`` steps and end together. ``reset(seed=s)``
    seeds sub-env ``i`` with ``s + i``, so its images are those of a single env reset with ``s + i``.
    ``reset_torch`` / ``step_torch`` (or :class:`robust_envs.wrappers.TorchVectorEnv`) return the same as torch
    tensors on ``device`` with no host copy (rewards float32); the episode's image indices, drawn at reset from the
    per-sub-env numpy generators, are the one host-to-device transfer.

    Args:
        num_envs: number of sub-envs (>= 1), the batch size of one step.
        max_episode_steps: truncate every episode after this many steps when this is smaller than
            ``episode_length`` (mirrors the ``TimeLimit`` of ``gym.make``; ``gym.make_vec`` passes the
            registered value); ``None`` for no limit.
        autoreset_mode: ``"NextStep"`` (default) or ``"SameStep"`` (needed by the SB3 adapter).
        Other arguments: as :class:`ClassifierRewardEnv`.

    Raises:
        ValueError: on invalid arguments (see :class:`ClassifierRewardEnv`), ``num_envs < 1`` or
            ``max_episode_steps < 1``; on ``step``, ``TypeError``/``ValueError`` for actions of the wrong
            dtype, shape, range or device.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    _data: _ClassifierData
    _t: int
    max_episode_steps: int | None

    def __init__(
        self,
        num_envs: int = 1,
        dataset: str = "fashion_mnist",
        split: str = "train",
        r_correct: float = 1.0,
        r_wrong: float = 1.0,
        episode_length: int = 128,
        device: str | torch.device = "cpu",
        data_root: str | None = None,
        max_episode_steps: int | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(autoreset_mode)
        if isinstance(num_envs, bool) or not isinstance(num_envs, numbers.Integral) or num_envs < 1:
            raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        if max_episode_steps is not None and (
            isinstance(max_episode_steps, bool)
            or not isinstance(max_episode_steps, numbers.Integral)
            or max_episode_steps < 1
        ):
            raise ValueError(f"max_episode_steps must be None or an integer >= 1, got {max_episode_steps!r}")
        if render_mode is not None:
            raise ValueError(
                f"ClassifierRewardVectorEnv does not render; render_mode must be None, got {render_mode!r}"
            )
        self._data = _ClassifierData(dataset, split, r_correct, r_wrong, episode_length, device, data_root)
        self.num_envs = int(num_envs)
        self.max_episode_steps = max_episode_steps
        self.render_mode = None
        self.single_observation_space = self._data.observation_space()
        self.single_action_space = spaces.Discrete(self._data.num_classes)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._rngs: list[np.random.Generator] | None = None
        self._indices: torch.Tensor | None = None  # (num_envs, episode_length) int64
        self._t = 0

    @property
    def device(self) -> torch.device:
        """The torch device holding the data and computing rewards."""
        return self._data.device

    @property
    def r_correct(self) -> float:
        """Reward for a correct label (``r_{k_1}`` of Eq. 3)."""
        return self._data.r_correct

    @property
    def r_wrong(self) -> float:
        """Penalty magnitude for a wrong label (``r_{k_2}`` of Eq. 3)."""
        return self._data.r_wrong

    def set_rewards(self, r_correct: float, r_wrong: float) -> None:
        """Change the Eq. 3 rewards from the next step on (a trainer's per-stage ``lambda``).

        Raises:
            ValueError: if either value is negative, not finite or not a real number.
        """
        self._data.set_rewards(r_correct, r_wrong)

    def _check_actions(self, actions: Any) -> torch.Tensor:
        n, num_classes = self.num_envs, self._data.num_classes
        if isinstance(actions, torch.Tensor):
            if actions.dtype == torch.bool or actions.dtype.is_floating_point or actions.dtype.is_complex:
                raise TypeError(
                    f"actions must be integers in [0, {num_classes}), got a tensor of dtype {actions.dtype}"
                )
            if not same_device(actions.device, self.device):
                raise ValueError(
                    f"actions must be a tensor on the env's device {self.device} (class labels in [0, {num_classes})), "
                    f"got one on {actions.device}"
                )
            tensor = actions.to(torch.int64)
        else:
            arr = np.asarray(actions)
            if arr.dtype == np.bool_ or arr.dtype.kind not in "iu":
                raise TypeError(f"actions must be integers in [0, {num_classes}), got dtype {arr.dtype}")
            tensor = torch.as_tensor(arr.astype(np.int64, copy=False), device=self.device)
        if tuple(tensor.shape) != (n,):
            raise ValueError(f"actions must have shape ({n},) (one class label per sub-env), got {tuple(tensor.shape)}")
        low, high = int(tensor.min()), int(tensor.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"actions must be class labels in [0, {num_classes}), got values in [{low}, {high}]")
        return tensor

    def _reset_batch(self, seed: int | None, options: dict[str, Any] | None) -> tuple[torch.Tensor, dict[str, Any]]:
        if seed is not None:
            self._rngs = [seeding.np_random(seed + i)[0] for i in range(self.num_envs)]
        elif self._rngs is None:
            self._rngs = [seeding.np_random(None)[0] for _ in range(self.num_envs)]
        self._indices = self._data.draw_episode(self._rngs)
        self._t = 0
        return self._data.images[self._indices[:, 0]], {}

    def _step_batch(self, actions: Any) -> tuple[torch.Tensor, torch.Tensor, bool, bool, dict[str, Any]]:
        if self._indices is None:
            raise RuntimeError("call reset() before step()")
        acts = self._check_actions(actions)
        index = self._indices[:, self._t]
        rewards, correct = self._data.reward(acts, index)
        self._t += 1
        ended = self._t == self._data.episode_length
        truncate = not ended and self.max_episode_steps is not None and self._t >= self.max_episode_steps
        images = self._data.images
        if ended:
            obs = torch.zeros((self.num_envs, *images.shape[1:]), dtype=images.dtype, device=self.device)
        else:
            obs = images[self._indices[:, self._t]]
        everyone = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        infos = {
            "label": self._data.labels[index],
            "_label": everyone,
            "correct": correct,
            "_correct": everyone.clone(),
        }
        return obs, rewards, ended, bool(truncate), infos
