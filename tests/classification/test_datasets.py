"""Fashion-MNIST as a classification dataset and the ImageNet class list."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from internimage.classification.data import fashion_mnist_dataset
from internimage.classification.imagenet import imagenet_classes
from internimage.data import load_bundled_subset


def test_imagenet_class_names() -> None:
    names = imagenet_classes()
    assert len(names) == 1000
    assert names[0] == "tench" and names[1] == "goldfish" and names[999] == "toilet tissue"
    assert names[151] == "Chihuahua" and names[281] == "tabby" and names[409] == "analog clock"
    # ImageNet-1K has two pairs of classes that share a name (crane: bird/machine, maillot).
    duplicates = {n for n, c in Counter(names).items() if c > 1}
    assert duplicates == {"crane", "maillot"}


def test_fashion_mnist_dataset_names_its_split_and_rejects_unknown_names() -> None:
    test_set = fashion_mnist_dataset("fashion-mnist-subset", "test")
    images, labels = load_bundled_subset("test")
    assert len(test_set) == len(labels)
    image, label = test_set[0]
    assert label == int(labels[0])
    assert torch.equal(torch.as_tensor(image).flatten(), torch.as_tensor(images[0]).flatten())
    with pytest.raises(ValueError, match="unknown Fashion-MNIST dataset 'mnist'"):
        fashion_mnist_dataset("mnist", "test")
