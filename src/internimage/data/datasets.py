"""Map-style datasets: in-memory image arrays and class-per-folder image trees."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from internimage.data.images import to_rgb8
from internimage.errors import DataError, DataWarning, MissingFileError

__all__ = [
    "ArrayImageDataset",
    "ImageFolderDataset",
    "UnreadableImageWarning",
    "collate_skipping_unreadable",
]


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
