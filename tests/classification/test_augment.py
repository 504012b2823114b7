"""Batched augmentation and mixed targets."""

from __future__ import annotations

import pytest
import torch

from internimage.classification.augment import (
    AugmentConfig,
    MixupCutmix,
    TrainAugmentation,
    smooth_one_hot,
    soft_target_cross_entropy,
)
from internimage.data import to_float_images


def test_train_augmentation_shapes_range_and_seeding() -> None:
    augment = TrainAugmentation(AugmentConfig(), image_size=24)
    images = torch.rand(6, 3, 32, 32)
    torch.manual_seed(3)
    first = augment(images)
    torch.manual_seed(3)
    second = augment(images)
    torch.manual_seed(4)
    third = augment(images)
    assert first.shape == (6, 3, 24, 24)
    assert 0.0 <= float(first.min()) and float(first.max()) <= 1.0
    assert torch.equal(first, second)
    assert not torch.equal(first, third)


def test_padding_crop_and_flip_keep_content() -> None:
    config = AugmentConfig(
        random_resized_crop=False, crop_padding=2, hflip=1.0, randaugment_ops=0,
        random_erasing=0.0,
    )
    augment = TrainAugmentation(config, image_size=16)
    images = torch.rand(4, 3, 16, 16)
    out = augment(images)
    assert out.shape == images.shape
    # A shift of at most 2 pixels plus a flip: the central 12x12 of the flipped input survives
    # somewhere within a 2-pixel window.
    flipped = images.flip(-1)
    for b in range(4):
        matches = [
            torch.allclose(out[b, :, 2 + dy : 14 + dy, 2 + dx : 14 + dx], flipped[b, :, 2:14, 2:14])
            for dy in range(-2, 3) for dx in range(-2, 3)
        ]
        assert any(matches)


def test_random_erasing_sets_a_rectangle_to_zero() -> None:
    config = AugmentConfig(random_erasing=1.0)
    augment = TrainAugmentation(config, image_size=16)
    normalized = torch.randn(3, 3, 16, 16) + 5.0  # no zeros before erasing
    out = augment.erase(normalized)
    for b in range(3):
        zero = (out[b] == 0).all(dim=0)
        assert zero.any()
        rows, cols = zero.nonzero(as_tuple=True)
        box = zero[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert bool(box.all())  # one solid rectangle


def test_smooth_one_hot() -> None:
    targets = smooth_one_hot(torch.tensor([2, 0]), 4, 0.1)
    assert torch.allclose(targets.sum(1), torch.ones(2))
    assert targets[0, 2] == pytest.approx(0.9 + 0.025) and targets[0, 1] == pytest.approx(0.025)


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_mixed_targets_sum_to_one_and_match_the_images(mode: str) -> None:
    config = AugmentConfig(
        mixup_alpha=0.8 if mode == "mixup" else 0.0,
        cutmix_alpha=1.0 if mode == "cutmix" else 0.0,
        label_smoothing=0.0,
    )
    mixer = MixupCutmix(config, num_classes=5)
    # Constant images equal to their label, so the mixing weight can be read off the pixels.
    labels = torch.tensor([0, 1, 2, 3])
    images = labels.float().view(4, 1, 1, 1).expand(4, 3, 8, 8).clone()
    torch.manual_seed(0)
    mixed, targets = mixer(images, labels)
    assert torch.allclose(targets.sum(1), torch.ones(4))
    for b in range(4):
        own, partner = int(labels[b]), int(labels.flip(0)[b])
        lam = float(targets[b, own])
        assert float(targets[b, partner]) == pytest.approx(1.0 - lam, abs=1e-6)
        # The mean pixel is lam * own + (1 - lam) * partner for both mixup and cutmix.
        expected = lam * own + (1.0 - lam) * partner
        assert float(mixed[b].mean()) == pytest.approx(expected, abs=1e-5)


def test_no_mixing_gives_smoothed_labels() -> None:
    config = AugmentConfig(mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.2)
    images = torch.rand(3, 3, 4, 4)
    out, targets = MixupCutmix(config, 3)(images, torch.tensor([0, 1, 2]))
    assert torch.equal(out, images)
    assert torch.allclose(targets, smooth_one_hot(torch.tensor([0, 1, 2]), 3, 0.2))


def test_soft_target_cross_entropy_equals_hard_cross_entropy_for_one_hot() -> None:
    logits = torch.randn(5, 7)
    labels = torch.randint(0, 7, (5,))
    expected = torch.nn.functional.cross_entropy(logits, labels)
    got = soft_target_cross_entropy(logits, smooth_one_hot(labels, 7, 0.0))
    assert torch.allclose(got, expected)


def test_to_float_images_gray_to_rgb_and_resize() -> None:
    gray = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    out = to_float_images(gray, 32)
    assert out.shape == (2, 3, 32, 32)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    same = to_float_images(gray, 28)
    assert torch.allclose(same[:, 0], gray[:, 0].float() / 255)
    with pytest.raises(ValueError, match="expected images"):
        to_float_images(torch.zeros(2, 4, 8, 8, dtype=torch.uint8))


def test_bad_augment_settings_raise() -> None:
    with pytest.raises(ValueError, match="hflip"):
        AugmentConfig(hflip=1.5)
    with pytest.raises(ValueError, match="randaugment_magnitude"):
        AugmentConfig(randaugment_magnitude=12)
