"""Fashion-MNIST (Zalando Research, MIT licence): the full IDX files and the bundled subset."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np

from internimage.data.idx import read_idx
from internimage.errors import MissingFileError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ENV_VAR",
    "bundled_subset_path",
    "find_fashion_mnist_root",
    "load_bundled_subset",
    "load_fashion_mnist",
]

#: Class names in label order, as the dataset's authors define them.
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: Environment variable naming a folder with the full IDX files.
FASHION_MNIST_ENV_VAR = "INTERNIMAGE_FASHION_MNIST"
# Where the Debian/Ubuntu package ``dataset-fashion-mnist`` installs them.
_SYSTEM_ROOT = Path("/usr/share/datasets/fashion-mnist")

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_SUBSET_FILE = "fashion_mnist_subset.npz"


def _check_split(split: str) -> str:
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; choose 'train' or 'test'")
    return split


def _find_file(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise MissingFileError(f"{stem}[.gz] not found in {root}")


def find_fashion_mnist_root(root: str | Path | None = None) -> Path:
    """Folder holding the full Fashion-MNIST IDX files.

    Args:
        root: Explicit folder; otherwise ``$INTERNIMAGE_FASHION_MNIST``, then
            ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).

    Raises:
        FileNotFoundError: No candidate folder holds the four files.
    """
    candidates = [Path(root)] if root is not None else []
    if root is None and os.environ.get(FASHION_MNIST_ENV_VAR):
        candidates.append(Path(os.environ[FASHION_MNIST_ENV_VAR]))
    if root is None:
        candidates.append(_SYSTEM_ROOT)
    for folder in candidates:
        try:
            for prefix in _SPLIT_PREFIX.values():
                _find_file(folder, f"{prefix}-images-idx3-ubyte")
                _find_file(folder, f"{prefix}-labels-idx1-ubyte")
        except FileNotFoundError:
            continue
        return folder
    tried = ", ".join(str(c) for c in candidates)
    raise MissingFileError(
        f"Fashion-MNIST IDX files (train/t10k-images-idx3-ubyte[.gz], ...-labels-idx1-ubyte[.gz]) "
        f"not found in: {tried}. Pass the folder, set {FASHION_MNIST_ENV_VAR}, or install the "
        f"Debian package dataset-fashion-mnist"
    )


def load_fashion_mnist(
    root: str | Path | None = None, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """The full Fashion-MNIST split from IDX files.

    Args:
        root: Folder with the IDX files (see :func:`find_fashion_mnist_root`).
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).

    Returns:
        ``(images, labels)``: uint8 ``[N, 28, 28]`` and int64 ``[N]``.
    """
    prefix = _SPLIT_PREFIX[_check_split(split)]
    folder = find_fashion_mnist_root(root)
    images = read_idx(_find_file(folder, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find_file(folder, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"Fashion-MNIST files in {folder} disagree: images {images.shape}, "
            f"labels {labels.shape}"
        )
    return images, labels


def bundled_subset_path() -> Path:
    """Path of the class-balanced subset shipped inside the package."""
    return Path(str(resources.files("internimage.data").joinpath("assets", _SUBSET_FILE)))


def load_bundled_subset(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The class-balanced Fashion-MNIST subset shipped with the package.

    Made by ``scripts/make_fashion_mnist_subset.py`` (20,000 train / 2,000 test images, the same
    number per class).

    Args:
        split: ``"train"`` or ``"test"``.

    Returns:
        ``(images, labels)``: uint8 ``[N, 28, 28]`` and int64 ``[N]``.
    """
    _check_split(split)
    with np.load(bundled_subset_path(), allow_pickle=False) as archive:
        images = archive[f"{split}_images"]
        labels = archive[f"{split}_labels"].astype(np.int64)
    return images, labels
