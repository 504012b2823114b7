"""Image classification with InternImage: datasets and augmentation, the training task, evaluation
and inference."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Module -> the public names it defines, imported on first use: internimage.data and
# internimage.train re-export some of them, and the modules here import those two packages.
_MODULES = {
    "internimage.classification.augment": (
        "AugmentConfig", "MixupCutmix", "TrainAugmentation", "smooth_one_hot",
        "soft_target_cross_entropy",
    ),
    "internimage.classification.data": (
        "ArrayImageDataset", "ImageFolderDataset", "UnreadableImageWarning", "build_datasets",
        "collate_skipping_unreadable", "fashion_mnist_dataset",
    ),
    "internimage.classification.evaluate": ("evaluate", "prepare_batch"),
    "internimage.classification.imagenet": ("imagenet_classes",),
    "internimage.classification.inference": ("LoadedClassifier", "load_classifier"),
    "internimage.classification.task": ("ClassificationTask", "create_classifier"),
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "ArrayImageDataset",
    "AugmentConfig",
    "ClassificationTask",
    "ImageFolderDataset",
    "LoadedClassifier",
    "MixupCutmix",
    "TrainAugmentation",
    "UnreadableImageWarning",
    "build_datasets",
    "collate_skipping_unreadable",
    "create_classifier",
    "evaluate",
    "fashion_mnist_dataset",
    "imagenet_classes",
    "load_classifier",
    "prepare_batch",
    "smooth_one_hot",
    "soft_target_cross_entropy",
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
        build_datasets,
        collate_skipping_unreadable,
        fashion_mnist_dataset,
    )
    from internimage.classification.evaluate import evaluate, prepare_batch
    from internimage.classification.imagenet import imagenet_classes
    from internimage.classification.inference import LoadedClassifier, load_classifier
    from internimage.classification.task import ClassificationTask, create_classifier


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
