"""Datasets, readers and augmentation for training and evaluating InternImage classifiers."""

from internimage.data.augment import (
    AugmentConfig,
    MixupCutmix,
    TrainAugmentation,
    smooth_one_hot,
    soft_target_cross_entropy,
)
from internimage.data.datasets import (
    ArrayImageDataset,
    ImageFolderDataset,
    UnreadableImageWarning,
    collate_skipping_unreadable,
)
from internimage.data.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    bundled_subset_path,
    fashion_mnist_dataset,
    find_fashion_mnist_root,
    load_bundled_subset,
    load_fashion_mnist,
)
from internimage.data.idx import read_idx, write_idx
from internimage.data.imagenet import imagenet_classes
from internimage.data.images import to_rgb8
from internimage.data.photos import DEMO_PHOTOS, demo_photo, demo_photos_notice
from internimage.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ResizeCenterCrop,
    normalize,
    to_float_images,
)

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
