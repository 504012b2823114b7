"""Classification data: in-memory image arrays, class-per-folder image trees, Fashion-MNIST, and
the training and validation sets of a ``data`` config."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from internimage.data.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    load_bundled_subset,
    load_fashion_mnist,
)
from internimage.data.images import to_rgb8
from internimage.data.transforms import ResizeCenterCrop
from internimage.errors import ConfigError, DataError, DataWarning, MissingFileError

if TYPE_CHECKING:
    from internimage.train.config import DataConfig

__all__ = [
    "ArrayImageDataset",
    "ImageFolderDataset",
    "UnreadableImageWarning",
    "build_datasets",
    "collate_skipping_unreadable",
    "fashion_mnist_dataset",
]

# Training-time resize of folder images before the on-device random resized crop: a bit larger
# than the network input so crops keep detail (the usual 224 -> 256 ratio).
_TRAIN_LOAD_RATIO = 256 / 224


class UnreadableImageWarning(DataWarning):
    """An image file could not be decoded and was left out of the batch."""


class ArrayImageDataset(Dataset):
    """Images held in a uint8 array, returned as ``([C, H, W] uint8 tensor, label)``.

    Args:
        images: ``[N, H, W]`` (grayscale) or ``[N, H, W, C]`` uint8.
        labels: ``[N]`` integer labels.
        classes: Class names in label order.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> None:
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got {images.dtype}")
        if images.ndim not in (3, 4):
            raise ValueError(f"images must be [N, H, W] or [N, H, W, C], got shape {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(
                f"labels must be [N] with N = {len(images)} images, got shape {labels.shape}"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(
                f"labels span [{labels.min()}, {labels.max()}] but there are {len(classes)} classes"
            )
        # [N, C, H, W] once, so __getitem__ is a view.
        chw = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
        self.images = torch.from_numpy(np.ascontiguousarray(chw))
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.classes = tuple(classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


def _default_extensions() -> tuple[str, ...]:
    from PIL import Image

    return tuple(sorted(ext.lower() for ext in Image.registered_extensions()))


class ImageFolderDataset(Dataset):
    """A class-per-folder image tree: ``root/<class name>/<image file>``.

    Classes are the sub-folders in sorted order; files are any format Pillow reads (chosen by
    extension). A file that fails to decode gives an :class:`UnreadableImageWarning` naming it and
    the item comes back as ``None``; :func:`collate_skipping_unreadable` leaves it out of the batch,
    so one bad file never stops an epoch.

    Args:
        root: Top folder.
        transform: Maps the decoded image, converted to 8-bit RGB by
            :func:`internimage.data.images.to_rgb8`, to a tensor (e.g.
            :class:`internimage.data.transforms.EvalImageTransform`).
        extensions: File suffixes to include (lower case, with dot); default: every suffix
            Pillow registers.
        classes: Explicit class names in label order (e.g. from a checkpoint); default: the sorted
            sub-folder names.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[object], torch.Tensor],
        *,
        extensions: Sequence[str] | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise MissingFileError(f"image folder {self.root} does not exist")
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        self.classes = tuple(classes) if classes is not None else tuple(found)
        if not self.classes:
            raise DataError(
                f"{self.root} has no class sub-folders (one folder of images per class)"
            )
        missing = [name for name in self.classes if not (self.root / name).is_dir()]
        if missing:
            raise DataError(f"class folders missing under {self.root}: {missing[:5]}")
        suffixes = tuple(extensions) if extensions is not None else _default_extensions()
        self.samples: list[tuple[str, int]] = []
        for label, name in enumerate(self.classes):
            for path in sorted((self.root / name).rglob("*")):
                if path.is_file() and path.suffix.lower() in suffixes:
                    self.samples.append((str(path), label))
        if not self.samples:
            raise DataError(f"no image files with suffixes {suffixes[:8]}... under {self.root}")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        from PIL import Image, UnidentifiedImageError

        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                rgb = to_rgb8(image)  # forces the full decode inside the try
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
            warnings.warn(
                f"skipping unreadable image {path}: {type(error).__name__}: {error}",
                UnreadableImageWarning,
                stacklevel=2,
            )
            return None
        return self.transform(rgb), label


def collate_skipping_unreadable(
    batch: list[tuple[torch.Tensor, int] | None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``default_collate`` after dropping the ``None`` items of unreadable files.

    Returns:
        ``(images [B', C, H, W], labels [B'])``; ``B'`` may be 0 when every file failed.
    """
    kept = [item for item in batch if item is not None]
    if not kept:
        return torch.empty(0, 3, 1, 1, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
    return default_collate(kept)


def fashion_mnist_dataset(
    name: str, split: str, root: str | Path | None = None
) -> ArrayImageDataset:
    """One split of Fashion-MNIST as a dataset of ``(uint8 [1, 28, 28], label)`` items.

    Args:
        name: ``"fashion-mnist-subset"`` (bundled with the package) or ``"fashion-mnist"``
            (the full IDX files under ``root``, found as
            :func:`~internimage.data.fashion_mnist.find_fashion_mnist_root` does).
        split: ``"train"`` or ``"test"``.
        root: Folder of the full IDX files (ignored for the bundled subset).
    """
    if name == "fashion-mnist-subset":
        arrays = load_bundled_subset(split)
    elif name == "fashion-mnist":
        arrays = load_fashion_mnist(root, split)
    else:
        raise ValueError(
            f"unknown Fashion-MNIST dataset {name!r}; expected 'fashion-mnist-subset' or "
            f"'fashion-mnist'"
        )
    return ArrayImageDataset(*arrays, FASHION_MNIST_CLASSES)


def build_datasets(data: DataConfig) -> tuple[Dataset, Dataset, tuple[str, ...]]:
    """Training set, validation set and class names of a classification ``data`` config.

    Items are ``(uint8 [C, H, W], label)``; folder images come resized and centre-cropped
    (training: to about 1.14x the input side, validation: the evaluation transform).
    """
    if data.dataset in ("fashion-mnist-subset", "fashion-mnist"):
        train_set: Dataset = fashion_mnist_dataset(data.dataset, "train", data.root)
        val_set: Dataset = fashion_mnist_dataset(data.dataset, "test", data.root)
        classes = FASHION_MNIST_CLASSES
    elif data.dataset == "folder":
        if data.root is None:
            raise ConfigError(
                "data.dataset='folder' needs data.root (the folder with the splits), e.g. "
                "--data-root DIR"
            )
        root = Path(data.root)
        load_size = int(round(data.image_size * _TRAIN_LOAD_RATIO))
        train_set = ImageFolderDataset(
            root / data.train_split, ResizeCenterCrop(load_size, 1.0, "bilinear")
        )
        classes = train_set.classes
        val_set = ImageFolderDataset(
            root / data.val_split,
            ResizeCenterCrop(data.image_size, data.crop_fraction, data.interpolation),
            classes=classes,
        )
    else:
        raise ConfigError(
            f"data.dataset={data.dataset!r} is not a classification dataset; use "
            f"fashion-mnist-subset, fashion-mnist or folder"
        )
    if data.train_limit is not None:
        train_set = torch.utils.data.Subset(train_set, range(min(data.train_limit, len(train_set))))
    if data.val_limit is not None:
        val_set = torch.utils.data.Subset(val_set, range(min(data.val_limit, len(val_set))))
    return train_set, val_set, tuple(classes)
