from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.trainers import TRAINERS
from robust_envs.attacks import protocol_suite
from robust_envs.classifiers import make_classifier
from robust_envs.data import DatasetNotFoundError, load_dataset


def test_missing_cifar10_names_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path)):
        load_dataset("cifar10", "test", root=tmp_path)


def test_cifar10_loader_reads_python_batches(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), b"labels": [1, 2, 9]}
        (folder / name).write_bytes(pickle.dumps(batch))
    train = load_dataset("cifar10", "train", root=tmp_path)
    test = load_dataset("cifar10", "test", root=tmp_path)
    assert train.images.shape == (15, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.labels.tolist() == [1, 2, 9] and test.num_classes == 10


def test_cifar10_configs_follow_the_papers() -> None:
    for method, trainer in TRAINERS.items():
        cfg = trainer.default_config("cifar10")
        # the policy-loss trainer learns through ClassifierReward-v0, which serves the raw images (no augmentation)
        augment = "none" if method == "policy_loss" else "crop_flip"
        # DVERGE's paper uses ResNet-20 submodels; ResNet-18 is the nearest registered architecture
        arch = "resnet18" if method.startswith("dverge") else "wrn28_10"
        assert cfg.architecture == arch and cfg.optimizer == "sgd" and cfg.augment == augment, method
    assert TRAINERS["trades"].default_config("cifar10").beta == 6.0
    eps = {s.key: s.eps for s in protocol_suite("cifar10")}
    assert eps["pgd20"] == pytest.approx(8 / 255) and eps["pgd_l2"] == pytest.approx(128 / 255)
    assert eps["slide_l1"] == pytest.approx(2000 / 255)


@pytest.mark.parametrize("arch", ["resnet18", "wrn28_10"])
def test_cifar_architectures_forward(arch: str) -> None:
    model = make_classifier(arch, in_channels=3, num_classes=10, image_size=32).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
