"""Short calibration runs of the issue-6 trainers on Fashion-MNIST: training time, clean and PGD-20 Linf accuracy.

Usage (one thread)::

    OMP_NUM_THREADS=1 python -m benchmarks.calibrate_dverge_mngac mng_ac '{"epochs": 1, "max_train_samples": 12800}'
    OMP_NUM_THREADS=1 python -m benchmarks.calibrate_dverge_mngac dverge '{"epochs": 3, "distill_steps": 5}'

Prints one JSON line: the overrides, ``train_time_s``, ``clean`` and ``pgd20_linf`` accuracy on 500 test points
(seeded), and for DVERGE methods the ``extra_metrics`` on the first 200 of them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from types import SimpleNamespace

import torch
import torchattacks

from benchmarks.trainers import DVERGETrainer, get_trainer
from robust_envs.data import load_dataset


def main(argv: list[str]) -> int:
    """Train ``argv[0]`` with JSON overrides ``argv[1]`` and print the calibration JSON line."""
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO)
    method, overrides = argv[0], json.loads(argv[1]) if len(argv) > 1 else {}
    train, test = load_dataset("fashion_mnist", "train"), load_dataset("fashion_mnist", "test")
    trainer_cls = get_trainer(method)
    cfg = trainer_cls.default_config("fashion_mnist", **overrides)
    t0 = time.perf_counter()
    model = trainer_cls(cfg).train(train, seed=0)
    train_time = time.perf_counter() - t0
    idx = torch.randperm(len(test.labels), generator=torch.Generator().manual_seed(0))[:500]
    x, y = test.float_images()[idx], test.labels[idx]
    torch.manual_seed(0)
    adv = torchattacks.PGD(model, eps=0.1, alpha=0.025, steps=20, random_start=True)(x, y)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
        robust = float((model(adv).argmax(1) == y).float().mean())
    out = {"method": method, "overrides": overrides, "train_time_s": train_time, "clean": clean, "pgd20_linf": robust}
    if issubclass(trainer_cls, DVERGETrainer):
        subset = SimpleNamespace(images=x[:200], labels=y[:200])
        out["extra"] = trainer_cls(cfg).extra_metrics(model, subset, "fashion_mnist", SimpleNamespace(attack_seed=0))
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
