from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from robust_envs.data import DatasetNotFoundError, find_fashion_mnist, load_dataset, load_fashion_mnist


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_fmnist(root, n_train: int = 5, n_test: int = 3) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))


def test_real_fashion_mnist_shapes() -> None:
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.labels.shape == (10000,) and test.labels.dtype == torch.int64 and test.num_classes == 10
    assert set(test.labels.unique().tolist()) == set(range(10))


def test_explicit_root_and_env_var(tmp_path, monkeypatch) -> None:
    _fake_fmnist(tmp_path)
    assert len(load_fashion_mnist("train", root=tmp_path)) == 5
    monkeypatch.setenv("ROBUST_ENVS_DATA", str(tmp_path))
    assert find_fashion_mnist() == tmp_path


def test_missing_dataset_error_lists_places(tmp_path) -> None:
    with pytest.raises(
        DatasetNotFoundError, match=r"Looked in: .*empty.*apt-get install dataset-fashion-mnist.*ROBUST_ENVS_DATA"
    ):
        find_fashion_mnist(tmp_path / "empty")


def test_corrupt_file_is_named(tmp_path) -> None:
    _fake_fmnist(tmp_path)
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 0x08, 1]) + (10).to_bytes(4, "big") + b"\x01\x02")
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz is corrupt"):
        load_fashion_mnist("test", root=tmp_path)


def test_digits_and_bad_names() -> None:
    d = load_dataset("digits", "train")
    assert d.images.shape[1:] == (1, 8, 8) and d.images.dtype == torch.uint8 and len(d) == 1437
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; valid"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset("digits", "val")  # type: ignore[arg-type]


def test_truncated_gz_idx_file_is_named(tmp_path) -> None:
    _fake_fmnist(tmp_path, n_train=50)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz.*delete it and fetch it again"):
        load_fashion_mnist("train", root=tmp_path)


def test_truncated_cifar10_batch_is_named(tmp_path) -> None:
    import pickle

    from robust_envs.data import load_cifar10
    from robust_envs.fileio import CorruptFileError

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch))
    assert load_cifar10("test", root=tmp_path).images.shape == (4, 3, 32, 32)
    blob = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CorruptFileError, match=r"data_batch_3: not a complete CIFAR-10 python batch.*extract"):
        load_cifar10("train", root=tmp_path)
