"""Policy-loss classifier trainer (Kim, seed 003), learning through ``ClassifierReward-v0``.

Paper: D. Kim, "Reinforcement-based Training Approach for Improving Adversarial Robustness without
Sacrificing Accuracy" (``../shared/seeds/003_8384c7e3f8130485.txt``): Eq. 3 (reward), Eq. 4 (policy
loss), Eq. 12 (alternative warm-up loss), section "Experiments" (two-stage strategy, SGD schedule,
Table 4 ablation).

Notation (code -> paper):

- ``logits`` -> ``q``; ``log_softmax(logits)`` -> ``log pi(x)`` (Eq. 1); ``actions`` -> ``a``;
- ``rewards`` -> ``r(s, a)`` from the env: ``+r_correct`` (``r_{k_1}``) or ``-r_wrong`` (``-r_{k_2}``), Eq. 3;
- ``lambda_1`` / ``lambda_2`` -> ``lambda = r_{k_2} / r_{k_1}`` of stage 1 (warm-up) / stage 2; here
  ``r_correct = 1`` and ``r_wrong = lambda``;
- a batch of ``batch_size`` images is one step of a ``batch_size``-env vector env (the paper's "batch
  as an episode"); ``C`` -> ``num_classes``.

The loop, top to bottom, per step:

1. observations (uint8 images) come from the batched env; the policy network gives ``logits``;
2. an action per image is drawn from ``pi(x)`` (stage 1: "actions are chosen randomly according to
   probability") or taken as ``argmax pi(x)`` (stage 2: Eq. 4 "without randomness"; ``stage2_actions``);
3. the env answers with Eq. 3 rewards; the policy modes learn from rewards only, the CE modes read the
   label the env reveals in ``info`` after the step (so CE sees the same images in the same order);
4. one SGD step on the stage's loss (batch mean instead of the paper's batch sum: the learning rate then
   does not depend on the batch size);
5. ``evals_per_epoch`` times per epoch the test accuracy is measured; the first time it reaches
   ``switch_acc`` the second stage starts (the paper's 80% threshold), with ``r_wrong = lambda_2``.

Modes (``mode``), the paper's runs and the Table 4 ablation:

- ``eq12_eq4``: warm-up with Eq. 12 (``lambda_1``), then Eq. 4 (``lambda_2``): the proposed method;
- ``ce_eq4``: warm-up with cross-entropy, then Eq. 4 (``lambda_2``): Table 4, row 1;
- ``eq4``: Eq. 4 (``lambda_2``) from the start: Table 4, row 3;
- ``ce``: cross-entropy throughout, the reference (same network, data stream, schedule and budget).

Schedule: plain SGD (no momentum, no weight decay: "the SGD optimizer without any additional
constraints"), learning rate 0.1 divided by 10 after 25% and 75% of the steps: the paper's 50 and 150
of 200 epochs, scaled to the ``epochs`` budget.

Run ``python -m agents.policy_loss --help``; TensorBoard logs go to ``runs/`` and the checkpoint to
``runs/<run_name>/model.pt`` unless ``save_path`` is given.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium.vector import AutoresetMode
from torch import nn
from tqdm.auto import tqdm

import robust_envs  # noqa: F401  (registers ClassifierReward-v0)
from robust_envs.classifiers import make_classifier
from robust_envs.data import load_dataset

__all__ = [
    "MODES",
    "Args",
    "TrainResult",
    "alternative_loss_eq12",
    "cross_entropy_loss",
    "evaluate_accuracy",
    "load_checkpoint",
    "policy_loss_eq4",
    "train",
]

MODES = ("eq12_eq4", "ce_eq4", "eq4", "ce")
_STAGES: dict[str, tuple[str, str | None]] = {  # mode -> (stage-1 loss, stage-2 loss or None)
    "eq12_eq4": ("eq12", "eq4"),
    "ce_eq4": ("ce", "eq4"),
    "eq4": ("eq4", None),
    "ce": ("ce", None),
}


@dataclass
class Args:
    """Train a classifier with the policy loss of Kim (seed 003) through ClassifierReward-v0."""

    exp_name: str = "policy_loss"
    """name of the experiment; the run is named ``{exp_name}__{mode}_{lambda_1}_{lambda_2}__{seed}__{unix time}``"""
    seed: int = 1
    """seed of the network initialisation, the action sampling and the env (sub-env i gets 100003 * seed + i)"""
    mode: str = "eq12_eq4"
    """training mode: eq12_eq4 (proposed), ce_eq4, eq4 (Table 4 ablation) or ce (cross-entropy reference)"""
    dataset: str = "fashion_mnist"
    """data set of the env (robust_envs.data.DATASETS): fashion_mnist or digits"""
    arch: str = "lenet5"
    """network (robust_envs.classifiers.ARCHITECTURES): lenet5 (the paper's MNIST model) or small_cnn"""
    lambda_1: float = 0.75
    """stage-1 reward ratio r_wrong / r_correct used with Eq. 12 (>= 0)"""
    lambda_2: float = 1.25
    """stage-2 reward ratio r_wrong / r_correct used with Eq. 4 (>= 0)"""
    switch_acc: float = 0.8
    """test accuracy in [0, 1] at which the second stage starts (the paper: 80%)"""
    stage2_actions: str = "greedy"
    """actions under Eq. 4: greedy (argmax, the paper's "without randomness") or sample"""
    epochs: int = 200
    """training budget in epochs; one epoch is ceil(train size / batch_size) env steps (the paper: 200)"""
    total_steps: int = 0
    """if > 0, train for exactly this many env steps instead of epochs * steps per epoch"""
    batch_size: int = 128
    """images per step = number of sub-envs of the batched env"""
    learning_rate: float = 0.1
    """initial SGD learning rate (the paper: 0.1)"""
    lr_milestones: tuple[float, ...] = (0.25, 0.75)
    """fractions of the training steps after which the learning rate is multiplied by lr_gamma"""
    lr_gamma: float = 0.1
    """learning-rate decay factor at each milestone (the paper: divide by 10)"""
    momentum: float = 0.0
    """SGD momentum (the paper: none)"""
    evals_per_epoch: int = 4
    """test-accuracy evaluations per epoch (the stage switch is checked at each)"""
    eval_points: int = 0
    """test images used by those evaluations (0: the whole test split); the final accuracy uses all"""
    episode_length: int = 128
    """images per env episode (any value: the reward does not depend on later steps)"""
    device: str = "cpu"
    """torch device of the network and the env's data"""
    threads: int = 0
    """torch CPU threads (0: torch's default)"""
    track: bool = True
    """write TensorBoard logs to runs/<run_name>"""
    save_path: str = ""
    """checkpoint file ("": runs/<run_name>/model.pt; "none": do not save)"""
    progress: bool = True
    """show a tqdm progress bar"""


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained network (eval mode), images ``(N, C, H, W)`` float in [0, 1] -> logits.
        test_acc: accuracy on the whole test split after training, in [0, 1].
        switch_step: the env step at which the second stage started (``None``: never).
        steps: env steps taken (one SGD step each).
        train_time_s: wall-clock training time in seconds, evaluations included.
        checkpoint: path of the saved checkpoint, or ``None``.
        history: one dict per evaluation: ``step``, ``epoch``, ``stage``, ``test_acc``, ``train_reward``.
    """

    model: nn.Module
    test_acc: float
    switch_step: int | None
    steps: int
    train_time_s: float
    checkpoint: Path | None
    history: list[dict[str, float]] = field(default_factory=list)


# ---- the losses -------------------------------------------------------------------------------------
def policy_loss_eq4(logits: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """Policy loss, Kim Eq. 4: ``L = -mean_s r(s, a) * log pi_a(x)`` (REINFORCE, Sutton et al. 2000).

    Shape:
        - logits: ``(N, C)`` float; actions: ``(N,)`` int64 in [0, C); rewards: ``(N,)`` float (Eq. 3).
        - output: scalar.
    """
    log_pi = F.log_softmax(logits, dim=1)
    log_pi_a = log_pi.gather(1, actions.view(-1, 1)).squeeze(1)
    return -(rewards.to(log_pi.dtype) * log_pi_a).mean()


def alternative_loss_eq12(logits: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """Alternative warm-up loss, Kim Eq. 12 (with Eq. 13's reading of its penalty term).

    Per image, with ``delta = delta(a, y)`` read from the reward sign (``r > 0`` iff the action was right,
    as Eq. 3 gives with ``r_correct > 0``)::

        correct:  -r_{k_1} * log pi_a(x)
        wrong:    -(r_{k_2} / (C - 1)) * sum_{i != a} log pi_i(x)      (r = -r_{k_2})

    i.e. a wrong action raises the log-probability of every other class uniformly instead of lowering
    that of the action (Eq. 13); the result is the batch mean.

    Shape:
        - logits: ``(N, C)`` float, ``C >= 2``; actions: ``(N,)`` int64 in [0, C); rewards: ``(N,)`` float.
        - output: scalar.

    Raises:
        ValueError: if ``C < 2``.
    """
    num_classes = logits.shape[1]
    if num_classes < 2:
        raise ValueError(f"Eq. 12 needs at least 2 classes, got logits of shape {tuple(logits.shape)}")
    log_pi = F.log_softmax(logits, dim=1)
    log_pi_a = log_pi.gather(1, actions.view(-1, 1)).squeeze(1)
    rewards = rewards.to(log_pi.dtype)
    log_pi_rest = log_pi.sum(dim=1) - log_pi_a  # sum_{i != a} log pi_i(x)
    per_image = torch.where(rewards > 0, -rewards * log_pi_a, rewards / (num_classes - 1) * log_pi_rest)
    return per_image.mean()


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Categorical cross-entropy, Kim Eq. 17 (batch mean). Shapes: ``(N, C)``, ``(N,)`` -> scalar."""
    return F.cross_entropy(logits, labels)


# ---- helpers ----------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Accuracy in [0, 1] of ``model`` on uint8 ``images (N, C, H, W)`` and int64 ``labels (N,)`` (same device)."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].float().div_(255.0)
        correct += int((model(x).argmax(1) == labels[start : start + batch_size]).sum())
    model.train(was_training)
    return correct / max(1, images.shape[0])


def _step_info(infos: dict[str, Any], key: str) -> np.ndarray:
    """A per-step info array, also on the step that ends the episodes (SAME_STEP autoreset)."""
    return infos["final_info"][key] if "final_info" in infos else infos[key]


def _validate(args: Args) -> None:
    if args.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {args.mode!r}")
    if args.stage2_actions not in ("greedy", "sample"):
        raise ValueError(f"stage2_actions must be 'greedy' or 'sample', got {args.stage2_actions!r}")
    for name in ("lambda_1", "lambda_2"):
        value = getattr(args, name)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if not 0.0 <= args.switch_acc <= 1.0:
        raise ValueError(f"switch_acc must be in [0, 1], got {args.switch_acc!r}")
    for name in ("epochs", "batch_size", "evals_per_epoch", "episode_length"):
        if getattr(args, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(args, name)!r}")
    if args.eval_points < 0 or args.threads < 0 or args.total_steps < 0:
        raise ValueError(f"eval_points, threads and total_steps must be >= 0, got {args.eval_points!r}, "
                         f"{args.threads!r}, {args.total_steps!r}")  # fmt: skip
    if not args.learning_rate > 0 or not 0 < args.lr_gamma <= 1 or any(not 0 <= m <= 1 for m in args.lr_milestones):
        raise ValueError(
            f"need learning_rate > 0, lr_gamma in (0, 1] and lr_milestones in [0, 1]; got {args.learning_rate!r}, "
            f"{args.lr_gamma!r}, {args.lr_milestones!r}"
        )


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the network saved by :func:`train` (eval mode, on ``device``).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the checkpoint holds a custom network (``arch`` None): build it and load
            ``torch.load(path)["state_dict"]`` yourself.
    """
    ckpt = torch.load(Path(path), map_location=device, weights_only=True)
    if ckpt["arch"] is None:
        raise ValueError(f"{path} holds a custom network (arch None); rebuild it and load its state_dict")
    model = make_classifier(ckpt["arch"], ckpt["in_channels"], ckpt["num_classes"], ckpt["image_size"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval()


# ---- the training loop ------------------------------------------------------------------------------
def train(args: Args, model: nn.Module | None = None) -> TrainResult:
    """Train a classifier as ``args`` says (see the module docstring); log, save and return it.

    Args:
        args: the run's configuration.
        model: a network to train instead of ``make_classifier(args.arch, ...)`` (images ``(N, C, H, W)``
            float in [0, 1] -> ``(N, num_classes)`` logits); its checkpoint then records ``arch=None``.

    Raises:
        ValueError: on invalid ``args`` (the message names the field and its valid range).
    """
    _validate(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    run_name = f"{args.exp_name}__{args.mode}_{args.lambda_1:g}_{args.lambda_2:g}__{args.seed}__{int(time.time())}"
    writer = None
    if args.track:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(f"runs/{run_name}")
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items()))

    stage_losses = _STAGES[args.mode]
    first_is_eq4 = stage_losses[0] == "eq4"
    envs = gym.make_vec(
        "ClassifierReward-v0", num_envs=args.batch_size, vectorization_mode="vector_entry_point",
        autoreset_mode=AutoresetMode.SAME_STEP, dataset=args.dataset, split="train", r_correct=1.0,
        r_wrong=args.lambda_2 if first_is_eq4 else args.lambda_1, episode_length=args.episode_length, device=device,
    )  # fmt: skip
    test = load_dataset(args.dataset, "test")
    test_images, test_labels = test.images.to(device), test.labels.to(device)
    eval_n = args.eval_points or len(test)
    channels, side = envs.single_observation_space.shape[0], envs.single_observation_space.shape[-1]
    num_classes = int(envs.single_action_space.n)
    arch: str | None = args.arch if model is None else None
    if model is None:
        model = make_classifier(args.arch, channels, num_classes, side)
    model = model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate, momentum=args.momentum)
    train_size = len(load_dataset(args.dataset, "train"))
    steps_per_epoch = math.ceil(train_size / args.batch_size)
    total_steps = args.total_steps or args.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=sorted({max(1, round(m * total_steps)) for m in args.lr_milestones}), gamma=args.lr_gamma
    )
    eval_every = max(1, steps_per_epoch // args.evals_per_epoch)

    stage, switch_step = 1, None
    history: list[dict[str, float]] = []
    obs, _ = envs.reset(seed=100_003 * args.seed)
    start = time.time()
    reward_sum, reward_count = 0.0, 0
    model.train()
    for step in tqdm(range(1, total_steps + 1), desc=run_name, disable=not args.progress, mininterval=2.0):
        loss_name = stage_losses[stage - 1]
        # 1-2. observations in, actions out
        x = torch.as_tensor(obs, device=device).float().div_(255.0)
        logits = model(x)
        sample = loss_name == "eq12" or (loss_name == "eq4" and args.stage2_actions == "sample")
        with torch.no_grad():
            if sample:
                actions = torch.distributions.Categorical(logits=logits).sample()
            else:
                actions = logits.argmax(dim=1)
        # 3. rewards back
        obs, rewards_np, _, _, infos = envs.step(actions)
        rewards = torch.as_tensor(rewards_np, device=device)
        # 4. one SGD step
        if loss_name == "eq12":
            loss = alternative_loss_eq12(logits, actions, rewards)
        elif loss_name == "eq4":
            loss = policy_loss_eq4(logits, actions, rewards)
        else:
            loss = cross_entropy_loss(logits, torch.as_tensor(_step_info(infos, "label"), device=device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        reward_sum += float(rewards_np.sum())
        reward_count += rewards_np.shape[0]
        if writer is not None and step % 50 == 0:
            writer.add_scalar("losses/loss", loss.item(), step)
            writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], step)
            writer.add_scalar("charts/stage", stage, step)
        # 5. evaluation and the stage switch
        if step % eval_every == 0 or step == total_steps:
            test_acc = evaluate_accuracy(model, test_images[:eval_n], test_labels[:eval_n])
            mean_reward = reward_sum / max(1, reward_count)
            reward_sum, reward_count = 0.0, 0
            history.append({"step": step, "epoch": step / steps_per_epoch, "stage": stage, "test_acc": test_acc,
                            "train_reward": mean_reward})  # fmt: skip
            if writer is not None:
                writer.add_scalar("charts/test_acc", test_acc, step)
                writer.add_scalar("charts/train_reward", mean_reward, step)
            if stage == 1 and stage_losses[1] is not None and test_acc >= args.switch_acc:
                stage, switch_step = 2, step
                envs.unwrapped.set_rewards(1.0, args.lambda_2)
    train_time_s = time.time() - start
    envs.close()

    model.eval()
    test_acc = evaluate_accuracy(model, test_images, test_labels)
    if writer is not None:
        writer.add_scalar("charts/final_test_acc", test_acc, total_steps)
        writer.close()
    checkpoint: Path | None = None
    if args.save_path.lower() != "none":
        checkpoint = Path(args.save_path) if args.save_path else Path("runs") / run_name / "model.pt"
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": model.state_dict(), "arch": arch, "in_channels": channels,
                    "num_classes": num_classes, "image_size": side, "args": asdict(args), "test_acc": test_acc,
                    "switch_step": switch_step}, checkpoint)  # fmt: skip
    return TrainResult(model, test_acc, switch_step, total_steps, train_time_s, checkpoint, history)


if __name__ == "__main__":
    from agents.cli import parse_args

    result = train(parse_args(Args))
    print(f"test_acc={result.test_acc:.4f} switch_step={result.switch_step} steps={result.steps} "
          f"train_time_s={result.train_time_s:.1f} checkpoint={result.checkpoint}")  # fmt: skip
