"""Evaluation of a loaded segmentation model with mmseg's test-time procedure, image by image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset

from internimage.segmentation.inference import SegmentationInference, predict_mask
from internimage.segmentation.loading import LoadedSegmenter
from internimage.segmentation.metrics import SegmentationEvaluator

__all__ = ["evaluate_segmenter", "inference_settings", "test_settings"]

# Upstream's sliding window moves by about two thirds of the crop (341 for 512).
_STRIDE_FRACTION = 2 / 3
# mmseg's test scale is (2048, 512) for crops of 512: the long side may be 4x the short one.
_LONG_TO_SHORT = 4


def test_settings(
    crop: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    mode: str = "whole",
    ratios: Sequence[float] = (1.0,),
    flip: bool = False,
) -> SegmentationInference:
    """mmseg's test settings for a model trained on crops of ``crop``: images resized so their
    short side is the crop (long side at most 4x), then whole-image or sliding-window inference
    with windows of the crop and a stride of two thirds of it.

    Args:
        crop: Side of the training crops.
        mean: Normalisation mean of the training (RGB, [0, 1] units).
        std: Its standard deviation.
        mode: ``"whole"`` or ``"slide"``.
        ratios: Multi-scale ratios (``(1.0,)``: single scale).
        flip: Also predict the horizontal flips.
    """
    stride = max(1, int(crop * _STRIDE_FRACTION))
    return SegmentationInference(
        scale=(_LONG_TO_SHORT * crop, crop), mode=mode, crop_size=(crop, crop),
        stride=(stride, stride), ratios=tuple(ratios), flip=flip, mean=tuple(mean),
        std=tuple(std),
    )


def inference_settings(
    loaded: LoadedSegmenter,
    *,
    mode: str = "whole",
    ratios: Sequence[float] = (1.0,),
    flip: bool = False,
) -> SegmentationInference:
    """:func:`test_settings` for a loaded model (its crop size and normalisation)."""
    return test_settings(loaded.crop_size, loaded.mean, loaded.std, mode=mode, ratios=ratios,
                         flip=flip)


def evaluate_segmenter(
    loaded: LoadedSegmenter,
    dataset: Dataset,
    settings: SegmentationInference,
    *,
    progress: Any | None = None,
) -> dict[str, Any]:
    """mIoU, mAcc, aAcc and per-class IoU/accuracy of ``loaded`` on ``dataset``.

    Every image is predicted at its own size (resized for the network and back, as mmseg
    does) and counted into one confusion matrix.

    Args:
        loaded: The model with its classes.
        dataset: Items ``(uint8 image [3, H, W], int64 mask [H, W])``.
        settings: The test-time procedure.
        progress: Optional tqdm-like object with ``update(n)``.

    Returns:
        :meth:`SegmentationEvaluator.compute`'s result plus ``"images"``.

    Raises:
        DataError: Nothing to count (an empty set, or no labelled pixel).
    """
    evaluator = SegmentationEvaluator(
        len(loaded.classes), ignore_index=loaded.ignore_index, class_names=loaded.classes
    )
    count = 0
    for index in range(len(dataset)):
        image, mask = dataset[index]
        prediction = predict_mask(loaded.model, image, settings)
        evaluator.update(prediction[None].cpu(), mask[None])
        count += 1
        if progress is not None:
            progress.update(1)
    return {**evaluator.compute(), "images": count}
