"""Dataset loading that works on a machine without the internet.

Fashion-MNIST (Xiao et al. 2017, 60,000 train / 10,000 test grey images of 28 x 28) is looked up, in
this order:

1. an explicit ``root`` argument;
2. the directory named by the ``ROBUST_ENVS_DATA`` environment variable (the files directly in it, or
   in its ``fashion-mnist/`` sub-directory);
3. Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``);
4. torchvision's downloader into ``~/.cache/robust_envs`` (only with ``download=True``, for users
   online).

A directory qualifies when it holds the four IDX files (``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), gzipped or not,
directly or under ``raw/`` (torchvision's layout).

CIFAR-10 (Krizhevsky 2009, 50,000 / 10,000 colour images of 32 x 32) is read from the python-pickle batches
(``cifar-10-batches-py/``) in: an explicit ``root``; ``$ROBUST_ENVS_DATA`` (or its ``cifar-10-batches-py/``);
``~/.cache/robust_envs/cifar10``; torchvision's downloader with ``download=True``.

scikit-learn's bundled 8 x 8 ``digits`` (1,797 images) are available as ``dataset="digits"`` for fast
tests; their split is a fixed, seeded 80/20 partition.
"""

from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

__all__ = [
    "DEBIAN_FASHION_MNIST",
    "DATASETS",
    "DatasetNotFoundError",
    "ImageSplit",
    "find_cifar10",
    "find_fashion_mnist",
    "load_cifar10",
    "load_dataset",
    "load_fashion_mnist",
]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DATASETS = ("fashion_mnist", "cifar10", "digits")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
Split = Literal["train", "test"]


class DatasetNotFoundError(FileNotFoundError):
    """Raised when a data set is on none of the places :mod:`robust_envs.data` searches."""


@dataclass(frozen=True)
class ImageSplit:
    """One split of an image classification data set.

    Attributes:
        images: ``(N, C, H, W)`` ``torch.uint8`` in [0, 255] (Fashion-MNIST: ``C = 1, H = W = 28``).
        labels: ``(N,)`` ``torch.int64`` class indices in [0, num_classes).
        classes: class names, ``len(classes) == num_classes``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        """Number of classes, ``len(classes)``."""
        return len(self.classes)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def float_images(self) -> torch.Tensor:
        """The images as ``float32`` in [0, 1], shape ``(N, C, H, W)``."""
        return self.images.float().div_(255.0)


def _idx_path(directory: Path, stem: str) -> Path | None:
    for sub in (directory, directory / "raw", directory / "FashionMNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (sub / name).is_file():
                return sub / name
    return None


def _has_all_files(directory: Path) -> bool:
    return all(_idx_path(directory, s) is not None for pair in _FILES.values() for s in pair)


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), gzipped or not.

    Raises:
        ValueError: if the file is truncated or its header is not an unsigned-byte IDX header.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"could not read IDX file {path}: {err}; delete it and fetch it again") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (header {data[:4]!r})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise ValueError(
            f"{path} is corrupt: header says {dims} ({expected} bytes) but it holds "
            f"{len(data) - offset} bytes; delete it and fetch it again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def find_fashion_mnist(root: str | os.PathLike[str] | None = None, download: bool = False) -> Path:
    """Return the directory holding the Fashion-MNIST IDX files.

    Args:
        root: directory to use first; when given and it lacks the files, the search stops with an error.
        download: let torchvision download the data into ``~/.cache/robust_envs`` as a last resort.

    Raises:
        DatasetNotFoundError: naming every place searched and how to get the data.
    """
    tried: list[str] = []
    if root is not None:
        candidates = [Path(root)]
    else:
        candidates = []
        env = os.environ.get("ROBUST_ENVS_DATA")
        if env:
            candidates += [Path(env), Path(env) / "fashion-mnist"]
        candidates.append(DEBIAN_FASHION_MNIST)
        candidates.append(Path.home() / ".cache" / "robust_envs" / "fashion-mnist")
    for directory in candidates:
        tried.append(str(directory))
        if _has_all_files(directory):
            return directory
    if download and root is None:
        cache = Path.home() / ".cache" / "robust_envs" / "fashion-mnist"
        try:
            from torchvision.datasets import FashionMNIST

            for train in (True, False):
                FashionMNIST(str(cache), train=train, download=True)
        except Exception as err:  # noqa: BLE001 - any network failure means "not available online"
            tried.append(f"torchvision download into {cache} (failed: {err.__class__.__name__}: {err})")
        else:
            if _has_all_files(cache):
                return cache
    raise DatasetNotFoundError(
        "Fashion-MNIST not found. Looked in: "
        + "; ".join(tried)
        + ". Get it with one of: `apt-get install dataset-fashion-mnist` (Debian, puts it in "
        f"{DEBIAN_FASHION_MNIST}); put the four IDX files in a directory and pass root=... or set "
        "ROBUST_ENVS_DATA; or call with download=True on a machine online."
    )


@functools.lru_cache(maxsize=8)
def _load_fashion_mnist_cached(directory: str, split: str) -> ImageSplit:
    img_stem, lbl_stem = _FILES[split]
    img_path = _idx_path(Path(directory), img_stem)
    lbl_path = _idx_path(Path(directory), lbl_stem)
    assert img_path is not None and lbl_path is not None
    images = _read_idx(img_path)
    labels = _read_idx(lbl_path)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"Fashion-MNIST {split} files in {directory} disagree: images {images.shape}, labels {labels.shape}"
        )
    if labels.max() >= 10:
        raise ValueError(f"Fashion-MNIST {split} labels in {directory} hold {labels.max()}, expected 0..9")
    return ImageSplit(
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=FASHION_MNIST_CLASSES,
    )


def load_fashion_mnist(
    split: Split = "train", root: str | os.PathLike[str] | None = None, download: bool = False
) -> ImageSplit:
    """Load a Fashion-MNIST split as tensors.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        root: explicit directory (see the module docstring for the search order).
        download: allow torchvision's downloader as a last resort.

    Returns:
        :class:`ImageSplit` with images ``(N, 1, 28, 28)`` uint8 and labels ``(N,)`` int64.

    Raises:
        ValueError: on an unknown split or a corrupt file.
        DatasetNotFoundError: when no location holds the data.
    """
    if split not in _FILES:
        raise ValueError(f"split must be one of {tuple(_FILES)}, got {split!r}")
    directory = find_fashion_mnist(root, download=download)
    return _load_fashion_mnist_cached(str(directory), split)


CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
_CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}


def _cifar_dir(directory: Path) -> Path | None:
    for sub in (directory, directory / "cifar-10-batches-py"):
        if all((sub / f).is_file() for files in _CIFAR_FILES.values() for f in files):
            return sub
    return None


def find_cifar10(root: str | os.PathLike[str] | None = None, download: bool = False) -> Path:
    """Return the directory holding CIFAR-10's python batches (``data_batch_1..5``, ``test_batch``).

    Args:
        root: directory to use first; when given and it lacks the files, the search stops with an error.
        download: let torchvision download the data into ``~/.cache/robust_envs/cifar10`` as a last resort.

    Raises:
        DatasetNotFoundError: naming every place searched and how to get the data.
    """
    cache = Path.home() / ".cache" / "robust_envs" / "cifar10"
    candidates = [Path(root)] if root is not None else []
    if root is None:
        env = os.environ.get("ROBUST_ENVS_DATA")
        if env:
            candidates += [Path(env), Path(env) / "cifar10"]
        candidates.append(cache)
    tried: list[str] = []
    for directory in candidates:
        tried.append(str(directory))
        found = _cifar_dir(directory)
        if found is not None:
            return found
    if download and root is None:
        try:
            from torchvision.datasets import CIFAR10

            CIFAR10(str(cache), train=True, download=True)
        except Exception as err:  # noqa: BLE001 - any network failure means "not available online"
            tried.append(f"torchvision download into {cache} (failed: {err.__class__.__name__}: {err})")
        else:
            found = _cifar_dir(cache)
            if found is not None:
                return found
    raise DatasetNotFoundError(
        "CIFAR-10 not found. Looked in (for cifar-10-batches-py/ with data_batch_1..5 and test_batch): "
        + "; ".join(tried)
        + ". Get it with one of: put the extracted cifar-10-python.tar.gz in a directory and pass root=... or "
        "set ROBUST_ENVS_DATA; or call with download=True on a machine online."
    )


@functools.lru_cache(maxsize=2)
def _load_cifar10_cached(directory: str, split: str) -> ImageSplit:
    import pickle

    from robust_envs.fileio import CorruptFileError

    images, labels = [], []
    for name in _CIFAR_FILES[split]:
        path = Path(directory) / name
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")  # noqa: S301 - the data set's own format
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError, IndexError) as err:
            raise CorruptFileError(
                path,
                f"not a complete CIFAR-10 python batch ({err.__class__.__name__}: {err})",
                f"delete {Path(directory)} and extract cifar-10-python.tar.gz again (or call with download=True online)",
            ) from err
    return ImageSplit(
        images=torch.from_numpy(np.concatenate(images)),
        labels=torch.from_numpy(np.concatenate(labels)),
        classes=CIFAR10_CLASSES,
    )


def load_cifar10(
    split: Split = "train", root: str | os.PathLike[str] | None = None, download: bool = False
) -> ImageSplit:
    """Load a CIFAR-10 split: images ``(N, 3, 32, 32)`` uint8, labels ``(N,)`` int64 (N = 50,000 / 10,000).

    Raises:
        ValueError: on an unknown split, or a truncated / corrupt batch file
            (:class:`robust_envs.fileio.CorruptFileError`, naming the file and what to do).
        DatasetNotFoundError: when no location holds the data.
    """
    if split not in _CIFAR_FILES:
        raise ValueError(f"split must be one of {tuple(_CIFAR_FILES)}, got {split!r}")
    return _load_cifar10_cached(str(find_cifar10(root, download=download)), split)


@functools.lru_cache(maxsize=2)
def _load_digits(split: str) -> ImageSplit:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    cut = int(0.8 * len(labels))
    idx = order[:cut] if split == "train" else order[cut:]
    return ImageSplit(
        images=torch.from_numpy(images[idx].copy()),
        labels=torch.from_numpy(labels[idx].copy()),
        classes=tuple(str(d) for d in range(10)),
    )


def load_dataset(
    name: str = "fashion_mnist",
    split: Split = "train",
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> ImageSplit:
    """Load a data set split by name.

    Args:
        name: one of :data:`DATASETS` (``"fashion_mnist"``, ``"cifar10"``, ``"digits"``).
        split: ``"train"`` or ``"test"``.
        root: explicit directory for Fashion-MNIST / CIFAR-10.
        download: allow torchvision's downloader for Fashion-MNIST / CIFAR-10.

    Raises:
        ValueError: on an unknown data set name or split.
        DatasetNotFoundError: when Fashion-MNIST or CIFAR-10 is missing.
    """
    if split not in _FILES:
        raise ValueError(f"split must be one of {tuple(_FILES)}, got {split!r}")
    if name == "fashion_mnist":
        return load_fashion_mnist(split, root=root, download=download)
    if name == "cifar10":
        return load_cifar10(split, root=root, download=download)
    if name == "digits":
        return _load_digits(split)
    raise ValueError(f"unknown dataset {name!r}; valid: {DATASETS}")
