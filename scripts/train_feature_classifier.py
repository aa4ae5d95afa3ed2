"""Train the embedded Fashion-MNIST feature classifier (robust_envs/assets/fmnist_features) and write its card.

The classifier is :class:`robust_envs.classifiers.LeNet5` (LeNet-5 with ReLU and max-pooling, 61,706
parameters). Its penultimate layer (the 84 ReLU units before the last linear layer) is the feature space in
which :mod:`robust_envs.quality.fidelity` computes KID and FID against real Fashion-MNIST test images, the
way Inception-v3's pool features serve for natural images (Heusel et al. 2017; Binkowski et al. 2018).

Training: Fashion-MNIST *train* (60,000 images, no augmentation), Adam with cosine decay, cross-entropy, fixed
seed, one torch thread. The card reports the accuracy on the 10,000 *test* images, the size and the time.

Usage (the command that made the embedded asset)::

    OMP_NUM_THREADS=1 python -m scripts.train_feature_classifier --seed 0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file too
from robust_envs.classifiers import LeNet5  # noqa: E402
from robust_envs.data import FASHION_MNIST_CLASSES, load_fashion_mnist  # noqa: E402
from robust_envs.quality.fidelity import EMBEDDED_FEATURE_CLASSIFIER, NUM_FEATURES  # noqa: E402


@dataclass
class Args:
    epochs: int = 2
    """passes over Fashion-MNIST train"""
    batch_size: int = 64
    """images per batch"""
    lr: float = 2e-3
    """Adam learning rate (cosine decay to 0)"""
    seed: int = 0
    """torch seed (initialisation and batch order)"""
    threads: int = 1
    """torch CPU threads"""
    out: str = str(EMBEDDED_FEATURE_CLASSIFIER)
    """output folder"""


ROOT = Path(__file__).resolve().parents[1]


def _relative(path: Path) -> str:
    """``path`` relative to the repository root when inside it (so the record does not name a machine)."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


@torch.no_grad()
def accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    """Top-1 accuracy of ``net`` on images ``(N, 1, 28, 28)`` in [0, 1] with labels ``(N,)``."""
    net.eval()
    correct = sum(int((net(x[s : s + batch]).argmax(1) == y[s : s + batch]).sum()) for s in range(0, len(y), batch))
    return correct / len(y)


def main(args: Args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.time()
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    x_train, y_train = train.float_images(), train.labels
    x_test, y_test = test.float_images(), test.labels

    net = LeNet5(in_channels=1, num_classes=10, image_size=28)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    steps_per_epoch = x_train.shape[0] // args.batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs * steps_per_epoch)
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(x_train.shape[0], generator=gen)
        running = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * args.batch_size : (step + 1) * args.batch_size]
            loss = F.cross_entropy(net(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += float(loss.detach())
        print(f"epoch {epoch + 1}/{args.epochs}: mean train loss {running / steps_per_epoch:.4f}", flush=True)
    wall = time.time() - start
    test_acc = accuracy(net, x_test, y_test)
    train_acc = accuracy(net, x_train[:10000], y_train[:10000])

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "model.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    n_params = sum(p.numel() for p in net.parameters())
    config = {
        "architecture": "lenet5",
        "in_channels": 1,
        "num_classes": 10,
        "image_size": 28,
        "num_features": NUM_FEATURES,
        "feature_layer": "classifier[:-1] (84 ReLU units before the last linear layer)",
        "input": "(N, 1, 28, 28) float in [0, 1]",
        "classes": list(FASHION_MNIST_CLASSES),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    command = "python -m scripts.train_feature_classifier " + " ".join(sys.argv[1:])
    record = {
        "command": command.strip(),
        "args": {**asdict(args), "out": _relative(out)},
        "wall_time_s": round(wall, 1),
        "hardware": f"{platform.machine()} CPU, torch threads {torch.get_num_threads()}",
        "torch": torch.__version__,
        "n_params": n_params,
        "weights_bytes": weights.stat().st_size,
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "test_accuracy": test_acc,
        "train_accuracy_first_10000": train_acc,
        "data": "Fashion-MNIST train (60,000 images) for training, test (10,000) for the accuracy",
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    card = f"""# Embedded Fashion-MNIST feature classifier

LeNet-5 (`robust_envs.classifiers.LeNet5`, {n_params:,} parameters, weights {record["weights_bytes"] / 1024:.0f} KiB)
trained on Fashion-MNIST. Its penultimate layer ({NUM_FEATURES} ReLU units) is the feature space of
`robust_envs.quality.fidelity.FeatureFidelity` (KID and FID against the 10,000 real test images) and its
softmax gives the classifier confidence; see [docs/fidelity.md](../../../docs/fidelity.md).

- Command: `{record["command"]}`
- Seed: {args.seed}; {args.epochs} epochs of batch {args.batch_size}; Adam lr {args.lr} with cosine decay;
  wall time {wall:.0f} s on {record["hardware"]}
- Data: Fashion-MNIST train (60,000 images, no augmentation); measured on the 10,000 test images
- Test accuracy: **{100 * test_acc:.2f}%** (train accuracy on the first 10,000 train images: {100 * train_acc:.2f}%)
- Files: `model.safetensors` (sha256 `{record["weights_sha256"][:16]}...`), `config.json`, `training.json`
"""
    (out / "CARD.md").write_text(card)
    print(card)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, value in asdict(Args()).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    main(Args(**vars(parser.parse_args())))
