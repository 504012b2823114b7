"""mmseg's test-time procedures: resize rules, whole / slide inference, flip and multi-scale."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from internimage.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from internimage.errors import ConfigError, DataError
from internimage.segmentation.inference import (
    SegmentationInference,
    predict_batch,
    predict_logits,
    predict_mask,
    rescale_size,
    resize_to_multiple_size,
    slide_windows,
)

CLASSES = 4


class ConvModel(nn.Module):
    """Stand-in segmentation model: a fixed 3x3 conv (zero padded) from pixels to class logits.

    Border effects make a window's logits differ from the whole image's near the window's edges,
    and the kernel is not symmetric, so slide and flip mistakes show. It records its inputs.
    """

    def __init__(self, classes: int = CLASSES, kernel: int = 3) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, classes, kernel, padding=kernel // 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator))
            self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=generator))
        self.inputs: list[torch.Tensor] = []

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        self.inputs.append(pixel_values.clone())
        return SimpleNamespace(logits=self.conv(pixel_values))


def _image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)


def _direct_probs(model: nn.Module, x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """softmax(model(normalize(x))) of float ``x [1, 3, H, W]``: ``[C, H, W]``."""
    with torch.no_grad():
        return model(pixel_values=normalize(x, mean, std)).logits.softmax(dim=1)[0]


def _independent_starts(size: int, crop: int, stride: int) -> list[int]:
    """Window starts along one axis, walking (not mmseg's grid count): step by ``stride`` while
    the window ends inside the image, then one last window flush with the border."""
    starts, pos = [], 0
    while pos + crop < size:
        starts.append(pos)
        pos += stride
    starts.append(max(size - crop, 0))
    return starts


def _independent_count(height: int, width: int, crop: tuple[int, int], stride: tuple[int, int]):
    count = torch.zeros(height, width, dtype=torch.int64)
    for y in _independent_starts(height, crop[0], stride[0]):
        for x in _independent_starts(width, crop[1], stride[1]):
            count[y : y + crop[0], x : x + crop[1]] += 1
    return count


# --- resize rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "scale", "expected"),
    [
        ((512, 683), (2048, 512), (512, 683)),  # ADE20K-like, already at short side 512
        ((683, 512), (2048, 512), (683, 512)),  # portrait: same rule, either orientation
        ((375, 500), (2048, 512), (512, 683)),  # factor 512/375; 500 * 1.3653 = 682.67 -> 683
        ((500, 4000), (2048, 512), (256, 2048)),  # very wide: the long bound wins (0.512)
        ((4000, 500), (512, 2048), (2048, 256)),  # tall, and the bound's order does not matter
        ((50, 100), (2048, 512), (512, 1024)),  # small images are enlarged (factor 10.24)
        ((300, 301), (1024, 256), (256, 257)),  # 301 * 256/300 = 256.85 -> 257 (half up)
        ((3, 5), (10, 2), (2, 3)),  # 5 * 2/3 = 3.33 -> 3; 3 * 2/3 = 2
        ((2, 7), (5, 3), (1, 5)),  # long bound 5/7: 2 * 5/7 = 1.43 -> 1, 7 * 5/7 = 5.0 -> 5
    ],
)
def test_rescale_size_matches_hand_computed_sizes(size, scale, expected) -> None:
    assert rescale_size(*size, scale) == expected


def test_rescale_size_rounds_half_up_like_mmcv() -> None:
    # factor 0.5 exactly: 5 * 0.5 = 2.5 -> int(3.0) = 3 (Python's round() would give 2).
    assert rescale_size(10, 5, (5, 5)) == (5, 3)


@pytest.mark.parametrize(
    ("size", "divisor", "expected"),
    [
        ((512, 683), 32, (512, 704)),
        ((256, 2048), 32, (256, 2048)),
        ((1, 33), 32, (32, 64)),
        ((50, 70), None, (50, 70)),
    ],
)
def test_resize_to_multiple_size_rounds_up(size, divisor, expected) -> None:
    assert resize_to_multiple_size(*size, divisor) == expected


def test_pipeline_feeds_the_model_the_rescaled_multiple_and_answers_at_original_size() -> None:
    model = ConvModel()
    settings = SegmentationInference(scale=(140, 100))  # 50 x 70 -> 100 x 140 -> 128 x 160
    probs = predict_logits(model, _image(50, 70), settings)
    assert [tuple(x.shape) for x in model.inputs] == [(1, 3, 128, 160)]
    assert probs.shape == (CLASSES, 50, 70)
    assert probs.dtype == torch.float32


# --- whole --------------------------------------------------------------------------------------


def test_whole_on_a_fitting_image_is_the_direct_softmax_of_the_real_model() -> None:
    pytest.importorskip("transformers", reason="the seg extra is not installed")
    from transformers import UperNetForSemanticSegmentation

    from internimage.models.hf import InternImageHFConfig
    from internimage.segmentation.upernet import upernet_config

    torch.manual_seed(0)
    backbone = InternImageHFConfig.from_variant("internimage_atto", depths=[1, 1, 1, 1])
    model = UperNetForSemanticSegmentation(
        upernet_config(backbone, num_classes=5, hidden_size=16, auxiliary_channels=8)
    ).eval()
    image = _image(64, 96)
    # Short side 64 within 64, long 96 within 96, both multiples of 32: no resize at all.
    settings = SegmentationInference(scale=(96, 64))
    probs = predict_logits(model, image, settings)
    expected = _direct_probs(model, image.float().unsqueeze(0) / 255.0)
    assert probs.shape == (5, 64, 96)
    torch.testing.assert_close(probs, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(predict_mask(model, image, settings), expected.argmax(dim=0))

    # A crop covering the whole image makes "slide" one window: exactly "whole".
    slide = SegmentationInference(scale=(96, 64), mode="slide", crop_size=(64, 96), stride=(8, 8))
    torch.testing.assert_close(predict_logits(model, image, slide), probs, rtol=0, atol=0)
    bigger = SegmentationInference(scale=(96, 64), mode="slide", crop_size=(512, 512))
    torch.testing.assert_close(predict_logits(model, image, bigger), probs, rtol=0, atol=0)


def test_whole_resizes_logits_straight_back_to_the_original_size() -> None:
    model = ConvModel()
    image = _image(40, 60, seed=1)
    # Ratio 0.5 of (60, 40) is (30, 20): factor 0.5 -> 20 x 30, no multiple.
    settings = SegmentationInference(scale=(60, 40), size_divisor=None, ratios=(0.5,))
    x = image.float().unsqueeze(0) / 255.0
    small = F.interpolate(x, size=(20, 30), mode="bilinear", align_corners=False)
    with torch.no_grad():
        logits = model(pixel_values=normalize(small, IMAGENET_MEAN, IMAGENET_STD)).logits
    expected = F.interpolate(logits, size=(40, 60), mode="bilinear", align_corners=False)
    torch.testing.assert_close(
        predict_logits(model, image, settings), expected.softmax(dim=1)[0], rtol=1e-5, atol=1e-6
    )


def test_model_mode_is_restored_and_eval_is_used() -> None:
    model = ConvModel().train()
    seen: list[bool] = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(module.training),
                                    with_kwargs=True)
    predict_logits(model, _image(32, 32), SegmentationInference(scale=(32, 32)))
    assert seen == [False]
    assert model.training


# --- slide --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "crop", "stride"),
    [
        ((100, 150), (64, 64), (40, 40)),
        ((512, 683), (512, 512), (341, 341)),
        ((96, 97), (32, 48), (32, 16)),  # stride == crop on one axis, uneven remainder
        ((20, 30), (64, 64), (40, 40)),  # image smaller than the crop: one window, unpadded
    ],
)
def test_slide_windows_cover_the_image_as_mmseg_grid_says(size, crop, stride) -> None:
    windows = list(slide_windows(*size, crop, stride))
    count = torch.zeros(size, dtype=torch.int64)
    for y1, y2, x1, x2 in windows:
        assert (y2 - y1, x2 - x1) == (min(crop[0], size[0]), min(crop[1], size[1]))
        count[y1:y2, x1:x2] += 1
    assert torch.equal(count, _independent_count(*size, crop, stride))
    assert int(count.min()) >= 1


def test_slide_windows_for_100x150_by_hand() -> None:
    # Rows: 0, then 40 + 64 > 100 shifts back to 36. Columns: 0, 40, 80, then 120 -> 86.
    starts = sorted({(y1, x1) for y1, _, x1, _ in slide_windows(100, 150, (64, 64), (40, 40))})
    assert starts == [(y, x) for y in (0, 36) for x in (0, 40, 80, 86)]


def test_slide_runs_the_model_on_mmseg_windows_and_averages_by_the_count_map() -> None:
    height, width, crop, stride = 100, 150, (64, 64), (40, 40)
    # Channels 0 and 1 encode each pixel's row and column, so a crop tells where it was taken.
    rows = torch.arange(height, dtype=torch.float32).view(-1, 1).expand(height, width)
    cols = torch.arange(width, dtype=torch.float32).view(1, -1).expand(height, width)
    noise = torch.rand(height, width, generator=torch.Generator().manual_seed(4))
    image = torch.stack([rows / 1000, cols / 1000, noise])
    model = ConvModel()
    settings = SegmentationInference(
        scale=(width, height), size_divisor=None, mode="slide", crop_size=crop, stride=stride,
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
    )
    probs = predict_logits(model, image, settings)

    count = torch.zeros(height, width, dtype=torch.int64)
    for seen in model.inputs:
        assert seen.shape[2:] == crop
        y, x = round(float(seen[0, 0, 0, 0]) * 1000), round(float(seen[0, 1, 0, 0]) * 1000)
        count[y : y + crop[0], x : x + crop[1]] += 1
    assert torch.equal(count, _independent_count(height, width, crop, stride))

    # Expected: each window's conv logits summed in place, divided by the count, softmax.
    total = torch.zeros(CLASSES, height, width)
    with torch.no_grad():
        for y in _independent_starts(height, crop[0], stride[0]):
            for x in _independent_starts(width, crop[1], stride[1]):
                window = image[:, y : y + crop[0], x : x + crop[1]].unsqueeze(0)
                total[:, y : y + crop[0], x : x + crop[1]] += model.conv(window)[0]
    expected = (total / count).softmax(dim=0)
    torch.testing.assert_close(probs, expected, rtol=1e-5, atol=1e-6)
    # The window borders matter (zero padding), so this is not what "whole" gives.
    whole = _direct_probs(model, image.unsqueeze(0), (0.0,) * 3, (1.0,) * 3)
    assert not torch.allclose(probs, whole, atol=1e-3)


# --- flip and multi-scale -----------------------------------------------------------------------


def test_flip_averages_the_softmax_of_the_image_and_of_its_flip() -> None:
    model = ConvModel()
    image = _image(32, 64, seed=2)
    settings = SegmentationInference(scale=(64, 32), flip=True)
    x = image.float().unsqueeze(0) / 255.0
    plain = _direct_probs(model, x)
    flipped = _direct_probs(model, x.flip(-1)).flip(-1)
    assert not torch.allclose(plain, flipped, atol=1e-3)  # the kernel is not symmetric
    torch.testing.assert_close(
        predict_logits(model, image, settings), (plain + flipped) / 2, rtol=1e-5, atol=1e-6
    )


def test_multi_scale_flip_is_at_original_size_and_a_mean_of_single_passes() -> None:
    model = ConvModel()
    image = _image(45, 70, seed=3)
    ratios = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    settings = SegmentationInference(scale=(140, 64), ratios=ratios, flip=True)
    probs = predict_logits(model, image, settings)
    assert probs.shape == (CLASSES, 45, 70)
    torch.testing.assert_close(probs.sum(dim=0), torch.ones(45, 70), rtol=0, atol=1e-5)
    # One model call per ratio and flip, at mmseg's truncated scales, e.g. 0.75 -> (105, 48).
    expected_sizes = []
    for ratio in ratios:
        bound = (int(140 * ratio), int(64 * ratio))
        size = resize_to_multiple_size(*rescale_size(45, 70, bound), 32)
        expected_sizes += [(1, 3, *size)] * 2
    assert [tuple(x.shape) for x in model.inputs] == expected_sizes
    singles = [
        predict_logits(model, image, SegmentationInference(scale=(140, 64), ratios=(r,), flip=f))
        for r in ratios
        for f in (False, True)
    ]
    # A flip=True single pass is already the mean of its two halves.
    torch.testing.assert_close(probs, torch.stack(singles[1::2]).mean(dim=0), atol=1e-6, rtol=0)
    mask = predict_mask(model, image, settings)
    assert mask.dtype == torch.int64 and mask.shape == (45, 70)
    assert torch.equal(mask, probs.argmax(dim=0))


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scale": (512,)},
        {"scale": (0, 512)},
        {"scale": (2048.0, 512)},
        {"size_divisor": 0},
        {"size_divisor": True},
        {"mode": "sliding"},
        {"crop_size": (512, -1)},
        {"stride": (0, 341)},
        {"crop_size": (64, 64), "stride": (65, 32)},
        {"ratios": ()},
        {"ratios": (1.0, -0.5)},
        {"ratios": (float("nan"),)},
        {"scale": (10, 1), "ratios": (0.5,)},  # short bound int(0.5) = 0
        {"flip": 1},
        {"mean": (0.5, 0.5)},
        {"std": (0.2, 0.0, 0.2)},
    ],
)
def test_bad_settings_raise_config_error(kwargs) -> None:
    with pytest.raises(ConfigError):
        SegmentationInference(**kwargs)


def test_settings_accept_lists_and_stay_hashable() -> None:
    settings = SegmentationInference(scale=[1024, 256], ratios=[0.5, 1], mean=[0.5] * 3)
    assert settings.scale == (1024, 256) and settings.ratios == (0.5, 1.0)
    assert settings.scaled(0.5) == (512, 128)
    # mmseg truncates ratio-scaled bounds: 2047 * 0.75 = 1535.25, 511 * 1.75 = 894.25 -> 894.
    odd = SegmentationInference(scale=(2047, 511))
    assert odd.scaled(0.75) == (1535, 383) and odd.scaled(1.75) == (3582, 894)
    assert odd.scaled(0.5) == (1023, 255)  # 1023.5 and 255.5: not rounded up
    hash(settings)


@pytest.mark.parametrize(
    "image",
    [
        torch.zeros(1, 3, 8, 8, dtype=torch.uint8),
        torch.zeros(1, 8, 8, dtype=torch.uint8),
        torch.zeros(3, 8, 8, dtype=torch.int32),
        torch.full((3, 8, 8), 255.0),
    ],
)
def test_bad_images_raise_data_error(image) -> None:
    with pytest.raises(DataError):
        predict_logits(ConvModel(), image, SegmentationInference(scale=(8, 8)))


@pytest.mark.parametrize(
    "settings",
    [
        SegmentationInference(scale=(40, 20), size_divisor=8),
        SegmentationInference(scale=(64, 24), mode="slide", crop_size=(16, 16), stride=(10, 10),
                              ratios=(0.75, 1.25), flip=True),
    ],
    ids=["whole", "slide-multi-scale-flip"],
)
def test_batch_prediction_is_each_image_predicted_alone(settings) -> None:
    images = torch.stack([_image(18, 30, seed) for seed in range(3)])  # [3, 3, 18, 30]
    model = ConvModel()
    batched = predict_batch(model, images, settings)
    assert batched.shape == (3, CLASSES, 18, 30)
    for index in range(3):
        alone = predict_logits(model, images[index], settings)
        torch.testing.assert_close(batched[index], alone, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "images",
    [torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(2, 1, 8, 8, dtype=torch.uint8)],
)
def test_batch_prediction_rejects_anything_but_rgb_batches(images) -> None:
    with pytest.raises(DataError, match=r"\[B, 3, H, W\]"):
        predict_batch(ConvModel(), images, SegmentationInference(scale=(8, 8)))
