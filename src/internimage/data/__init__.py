"""Image data shared by the tasks: reading and normalising images, Fashion-MNIST (the source of the
classification demo and of the generated scenes), the scenes and the demo photos.

The classification datasets and augmentation live in :mod:`internimage.classification`; their
names stay importable from here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from internimage.data.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    bundled_subset_path,
    find_fashion_mnist_root,
    load_bundled_subset,
    load_fashion_mnist,
)
from internimage.data.idx import read_idx, write_idx
from internimage.data.images import to_rgb8
from internimage.data.photos import DEMO_PHOTOS, demo_photo, demo_photos_notice
from internimage.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ResizeCenterCrop,
    normalize,
    to_float_images,
)

# Names that moved to internimage.classification -> their module there; imported on first use,
# as that package imports this one.
_CLASSIFICATION = {
    "AugmentConfig": "augment",
    "MixupCutmix": "augment",
    "TrainAugmentation": "augment",
    "smooth_one_hot": "augment",
    "soft_target_cross_entropy": "augment",
    "ArrayImageDataset": "data",
    "ImageFolderDataset": "data",
    "UnreadableImageWarning": "data",
    "collate_skipping_unreadable": "data",
    "fashion_mnist_dataset": "data",
    "imagenet_classes": "imagenet",
}

__all__ = [
    "DEMO_PHOTOS",
    "FASHION_MNIST_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ArrayImageDataset",
    "AugmentConfig",
    "ImageFolderDataset",
    "MixupCutmix",
    "ResizeCenterCrop",
    "TrainAugmentation",
    "UnreadableImageWarning",
    "bundled_subset_path",
    "collate_skipping_unreadable",
    "demo_photo",
    "demo_photos_notice",
    "fashion_mnist_dataset",
    "find_fashion_mnist_root",
    "imagenet_classes",
    "load_bundled_subset",
    "load_fashion_mnist",
    "normalize",
    "read_idx",
    "smooth_one_hot",
    "soft_target_cross_entropy",
    "to_float_images",
    "to_rgb8",
    "write_idx",
]

if TYPE_CHECKING:
    from internimage.classification.augment import (
        AugmentConfig,
        MixupCutmix,
        TrainAugmentation,
        smooth_one_hot,
        soft_target_cross_entropy,
    )
    from internimage.classification.data import (
        ArrayImageDataset,
        ImageFolderDataset,
        UnreadableImageWarning,
        collate_skipping_unreadable,
        fashion_mnist_dataset,
    )
    from internimage.classification.imagenet import imagenet_classes


def __getattr__(name: str) -> Any:
    if name in _CLASSIFICATION:
        module = importlib.import_module(f"internimage.classification.{_CLASSIFICATION[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_CLASSIFICATION))
