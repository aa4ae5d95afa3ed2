"""SB3 PPO and A2C on ClassifierReward-v0 (Fashion-MNIST) through the batched env and the SB3 adapter.

Each agent uses :class:`agents.features.SmallImageCNN` (SB3's default CNN needs 36 x 36 images) and
learns from the Eq. 3 reward only; its test accuracy is the deterministic (argmax) policy on the whole
Fashion-MNIST test split. ``gamma = 0``: the next image does not depend on the action, so the
immediate reward is the whole signal (the return of later images cannot be influenced).

    python -m benchmarks.sb3_classifier_reward --timesteps 200000      # writes the JSON below
    python -m benchmarks.policy_loss_study report                      # puts its table in the doc
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm

import robust_envs  # noqa: F401  (registers ClassifierReward-v0)
from agents.features import SmallImageCNN
from robust_envs.data import load_dataset
from robust_envs.wrappers import make_sb3_vec_env

OUT = Path("benchmarks/results/sb3_classifier_reward.json")
ALGOS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "a2c": A2C}


def policy_accuracy(model: BaseAlgorithm, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000) -> float:
    """Accuracy in [0, 1] of ``model``'s deterministic policy on uint8 ``images (N, C, H, W)``, ``labels (N,)``."""
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        actions, _ = model.predict(images[start : start + batch_size], deterministic=True)
        correct += int((np.asarray(actions) == labels[start : start + batch_size]).sum())
    return correct / max(1, images.shape[0])


def make_agent(algo: str, dataset: str, num_envs: int, seed: int, episode_length: int = 128) -> BaseAlgorithm:
    """A PPO or A2C agent with :class:`SmallImageCNN` on ``num_envs`` batched ClassifierReward-v0 envs.

    Raises:
        ValueError: on an unknown ``algo`` (valid: ``"ppo"``, ``"a2c"``).
    """
    if algo not in ALGOS:
        raise ValueError(f"algo must be one of {sorted(ALGOS)}, got {algo!r}")
    venv = make_sb3_vec_env("ClassifierReward-v0", num_envs=num_envs, dataset=dataset, episode_length=episode_length)
    policy_kwargs = {"features_extractor_class": SmallImageCNN, "features_extractor_kwargs": {"features_dim": 128}}
    if algo == "ppo":
        return PPO("CnnPolicy", venv, n_steps=64, batch_size=256, n_epochs=4, gamma=0.0, gae_lambda=1.0,
                   learning_rate=3e-4, ent_coef=0.0, policy_kwargs=policy_kwargs, seed=seed, verbose=0)  # fmt: skip
    return A2C("CnnPolicy", venv, n_steps=8, gamma=0.0, gae_lambda=1.0, learning_rate=7e-4, ent_coef=0.0,
               policy_kwargs=policy_kwargs, seed=seed, verbose=0)  # fmt: skip


def run(algo: str, timesteps: int, seed: int, dataset: str = "fashion_mnist", num_envs: int = 16) -> dict[str, Any]:
    """Train one agent for ``timesteps`` env steps and measure its test accuracy; returns a JSON-ready dict."""
    model = make_agent(algo, dataset, num_envs, seed)
    test = load_dataset(dataset, "test")
    start = time.time()
    model.learn(total_timesteps=timesteps)
    train_time_s = time.time() - start
    acc = policy_accuracy(model, test.images.numpy(), test.labels.numpy())
    return {"algo": algo, "dataset": dataset, "seed": seed, "timesteps": int(model.num_timesteps), "num_envs": num_envs,
            "test_acc": acc, "chance_acc": 1.0 / test.num_classes, "train_time_s": train_time_s,
            "test_points": len(test), "features_extractor": "agents.features.SmallImageCNN",
            "torch": torch.__version__}  # fmt: skip


def render_section(results: dict[str, Any]) -> str:
    """A Markdown section (for ``docs/policy_loss.md``) from the JSON this script writes."""
    rows = ["## SB3 agents on ClassifierReward-v0", "",
            f"Command: `{results['command']}`. Deterministic policy on the {results['runs'][0]['test_points']} "
            "Fashion-MNIST test images; chance is 10%.", "",
            "| agent | seed | env steps | test accuracy | training time (s) |", "|---|---|---|---|---|"]  # fmt: skip
    for r in results["runs"]:
        rows.append(f"| {r['algo'].upper()} + SmallImageCNN | {r['seed']} | {r['timesteps']} | "
                    f"{100 * r['test_acc']:.1f}% | {r['train_time_s']:.0f} |")  # fmt: skip
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timesteps", type=int, default=200_000, help="env steps per agent")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--algos", nargs="+", default=["ppo", "a2c"], choices=sorted(ALGOS))
    parser.add_argument("--out", type=Path, default=OUT)
    ns = parser.parse_args(argv)
    torch.set_num_threads(ns.threads)
    runs = []
    for algo in ns.algos:
        result = run(algo, ns.timesteps, ns.seed, num_envs=ns.num_envs)
        print(f"{algo}: test_acc={result['test_acc']:.4f} ({result['train_time_s']:.0f} s)", flush=True)
        runs.append(result)
    command = ("python -m benchmarks.sb3_classifier_reward --timesteps "
               f"{ns.timesteps} --seed {ns.seed} --num-envs {ns.num_envs}")  # fmt: skip
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = ns.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"command": command, "runs": runs}, indent=2) + "\n")
    os.replace(tmp, ns.out)
    print(f"wrote {ns.out}")


if __name__ == "__main__":
    main()
