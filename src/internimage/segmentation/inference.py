"""mmseg's test-time procedures for one image or a batch of one size: keep-ratio resize, whole or
sliding-window inference, multi-scale and flip averaging.

The defaults are the test pipeline of upstream InternImage's ADE20K configs::

    MultiScaleFlipAug(img_scale=(2048, 512), flip=False, transforms=[
        Resize(keep_ratio=True), ResizeToMultiple(size_divisor=32), RandomFlip(), Normalize(...)])
    test_cfg = dict(mode="whole")  # some configs: mode="slide", crop_size=512, stride=341

Per augmentation (scale ratio, flip) the image is

1. resized keeping its aspect ratio to fit ``scale`` (mmcv's ``rescale_size``,
   :func:`rescale_size`),
2. stretched up to a multiple of ``size_divisor`` per side (``ResizeToMultiple``,
   :func:`resize_to_multiple_size`),
3. flipped horizontally (when the augmentation flips) and normalised,
4. run through the model whole or window by window (``whole_inference`` / ``slide_inference``);
   logits are resized bilinearly to the network input, then straight to the original image size,
5. turned into class probabilities by a softmax (and flipped back).

The probabilities of all augmentations are averaged, as mmseg's ``aug_test`` does; the predicted
mask is their argmax.

Differences from mmseg, small (a fraction of a grey level per resize; not measured against mmseg
here): mmcv resizes uint8 images with OpenCV (fixed-point bilinear, result rounded back to uint8);
here the resize is ``F.interpolate`` in float32 (``mode="bilinear"``, ``align_corners=False``,
``antialias=False``: OpenCV's ``INTER_LINEAR`` samples at pixel centres and does not antialias
either) and the image stays float between the steps. Logits are resized and averaged in float32
whatever the model's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from internimage.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from internimage.errors import ConfigError, DataError

__all__ = [
    "SegmentationInference",
    "predict_batch",
    "predict_logits",
    "predict_mask",
    "rescale_size",
    "resize_to_multiple_size",
    "slide_windows",
]

_MODES = ("whole", "slide")


def _is_int(value: Any) -> bool:
    # bool is an int subclass; True as a size is a mistake, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_pair(name: str, value: Any) -> tuple[int, int]:
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 2
        or not all(_is_int(v) and v > 0 for v in value)
    ):
        raise ConfigError(f"{name} must be two positive integers, got {value!r}")
    return (int(value[0]), int(value[1]))


def _triple(name: str, value: Any, *, positive: bool) -> tuple[float, float, float]:
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 3
        or not all(_is_number(v) and math.isfinite(v) for v in value)
        or (positive and not all(v > 0 for v in value))
    ):
        kind = "positive " if positive else ""
        raise ConfigError(f"{name} must be three finite {kind}numbers (R, G, B), got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


@dataclass(frozen=True)
class SegmentationInference:
    """Test-time settings, mmseg's names and defaults (upstream's ADE20K single-scale test).

    Attributes:
        scale: mmseg's ``img_scale`` ``(long, short)`` bound of the keep-ratio resize: the image is
            scaled by ``min(long / max(h, w), short / min(h, w))`` (up or down), so it fits within
            ``long x short`` in either orientation. The order of the two numbers does not matter.
        size_divisor: ``ResizeToMultiple``: each side is then stretched up to the next multiple of
            this (the aspect ratio changes slightly). ``None`` skips the step.
        mode: ``"whole"`` runs the model on the whole resized image; ``"slide"`` on windows of
            ``crop_size`` every ``stride`` pixels, averaging the logits where windows overlap.
        crop_size: ``(height, width)`` of a sliding window (``mode="slide"``).
        stride: ``(height, width)`` step between sliding windows; at most ``crop_size`` so that the
            windows cover the image.
        ratios: Multi-scale test: the image is predicted once per ratio, at
            ``scale = (int(long * ratio), int(short * ratio))`` (mmseg's ``img_ratios``), e.g.
            ``(0.5, 0.75, 1.0, 1.25, 1.5, 1.75)``. ``(1.0,)`` is the single-scale test.
        flip: Also predict each scale flipped horizontally (and flip the result back).
        mean: Per-channel mean in [0, 1] units subtracted after resizing.
        std: Per-channel standard deviation in [0, 1] units.
    """

    scale: tuple[int, int] = (2048, 512)
    size_divisor: int | None = 32
    mode: str = "whole"
    crop_size: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (341, 341)
    ratios: tuple[float, ...] = (1.0,)
    flip: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        # Lists (from a config file) become tuples, so that the settings stay hashable.
        set_ = object.__setattr__
        set_(self, "scale", _positive_pair("scale", self.scale))
        if self.size_divisor is not None and not (_is_int(self.size_divisor)
                                                  and self.size_divisor > 0):
            raise ConfigError(
                f"size_divisor must be a positive integer or None, got {self.size_divisor!r}"
            )
        if self.mode not in _MODES:
            raise ConfigError(f"mode must be one of {_MODES}, got {self.mode!r}")
        crop = _positive_pair("crop_size", self.crop_size)
        stride = _positive_pair("stride", self.stride)
        if stride[0] > crop[0] or stride[1] > crop[1]:
            # mmseg's grid leaves gaps between windows then (its count map has zeros).
            raise ConfigError(f"stride {stride} must not exceed crop_size {crop} on either side")
        set_(self, "crop_size", crop)
        set_(self, "stride", stride)
        ratios = self.ratios
        if (
            not isinstance(ratios, Sequence)
            or isinstance(ratios, str)
            or len(ratios) == 0
            or not all(_is_number(r) and math.isfinite(r) and r > 0 for r in ratios)
        ):
            raise ConfigError(f"ratios must be one or more positive numbers, got {ratios!r}")
        ratios = tuple(float(r) for r in ratios)
        for ratio in ratios:
            if min(self.scaled(ratio)) < 1:
                raise ConfigError(
                    f"ratio {ratio} makes scale {self.scale} smaller than one pixel"
                )
        set_(self, "ratios", ratios)
        if not isinstance(self.flip, bool):
            raise ConfigError(f"flip must be true or false, got {self.flip!r}")
        set_(self, "mean", _triple("mean", self.mean, positive=False))
        set_(self, "std", _triple("std", self.std, positive=True))

    def scaled(self, ratio: float) -> tuple[int, int]:
        """The ``(long, short)`` bound at one multi-scale ratio, truncated as mmseg does."""
        return (int(self.scale[0] * ratio), int(self.scale[1] * ratio))


def rescale_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv's ``rescale_size`` for a ``(long, short)`` bound: the keep-ratio resize of mmseg's test.

    ``factor = min(max(scale) / max(h, w), min(scale) / min(h, w))``, each side ``int(side *
    factor + 0.5)`` (mmcv's ``_scale_size``), e.g. 375 x 500 -> 512 x 683 and 500 x 4000 ->
    256 x 2048 for the default ``(2048, 512)``. Images smaller than the bound are enlarged.

    Args:
        height: Image height in pixels.
        width: Image width in pixels.
        scale: ``(long, short)`` bound (either order).

    Returns:
        ``(new_height, new_width)``.
    """
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * float(factor) + 0.5), int(width * float(factor) + 0.5)


def resize_to_multiple_size(height: int, width: int, divisor: int | None) -> tuple[int, int]:
    """mmseg's ``ResizeToMultiple``: each side rounded *up* to a multiple of ``divisor``.

    Returns:
        ``(new_height, new_width)``; unchanged when ``divisor`` is ``None``.
    """
    if divisor is None:
        return height, width
    return math.ceil(height / divisor) * divisor, math.ceil(width / divisor) * divisor


def slide_windows(
    height: int, width: int, crop_size: tuple[int, int], stride: tuple[int, int]
) -> Iterator[tuple[int, int, int, int]]:
    """mmseg's ``slide_inference`` windows over a ``height x width`` image, row by row.

    ``grids = max(size - crop + stride - 1, 0) // stride + 1`` per axis; window ``i`` starts at
    ``i * stride`` and is shifted back so that it ends inside the image (``y1 = max(y2 - crop,
    0)``), so the last window of a row or column touches the border and overlaps its neighbour
    more. Every window is ``min(crop, size)`` pixels long: images smaller than the crop are run
    whole, not padded.

    Yields:
        ``(y1, y2, x1, x2)``, half-open pixel ranges.
    """
    (h_crop, w_crop), (h_stride, w_stride) = crop_size, stride
    h_grids = max(height - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(width - w_crop + w_stride - 1, 0) // w_stride + 1
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * h_stride + h_crop, height)
            x2 = min(w_idx * w_stride + w_crop, width)
            yield max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2


def _model_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    for param in model.parameters():
        return param.dtype, param.device
    return torch.float32, torch.device("cpu")


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, pixel-centre aligned, not antialiased: OpenCV's / mmseg's ``resize``."""
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)


def _encode_decode(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, C, h, w]`` (float32) of normalised ``x [B, 3, h, w]`` at its own size."""
    output = model(pixel_values=x)
    logits = getattr(output, "logits", output).float()
    # transformers' UperNet already upsamples to the input; other heads may not.
    return _resize(logits, (x.shape[2], x.shape[3]))


def _slide(model: nn.Module, x: torch.Tensor, settings: SegmentationInference) -> torch.Tensor:
    """mmseg's ``slide_inference`` (before the resize to the original size): ``[B, C, h, w]``."""
    height, width = x.shape[2], x.shape[3]
    preds: torch.Tensor | None = None
    count = torch.zeros(1, 1, height, width, device=x.device)
    # One window at a time, like mmseg: memory stays that of one crop whatever the image size.
    for y1, y2, x1, x2 in slide_windows(height, width, settings.crop_size, settings.stride):
        logits = _encode_decode(model, x[:, :, y1:y2, x1:x2])
        if preds is None:
            preds = logits.new_zeros(x.shape[0], logits.shape[1], height, width)
        preds[:, :, y1:y2, x1:x2] += logits
        count[:, :, y1:y2, x1:x2] += 1
    assert preds is not None  # there is always at least one window
    return preds / count


def _as_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 or [0, 1] float ``[B, 3, H, W]`` -> float32 in [0, 1]."""
    if images.dim() != 4 or images.shape[1] != 3 or min(images.shape[2:]) < 1:
        raise DataError(f"expected RGB images [B, 3, H, W], got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.is_floating_point():
        raise DataError(f"expected uint8 or float images, got {images.dtype}")
    x = images.float()
    low, high = float(x.min()), float(x.max())
    if not (0.0 <= low and high <= 1.0):
        # A float image in 0..255 would otherwise be normalised into nonsense silently.
        raise DataError(f"float images must lie in [0, 1], got values in [{low:g}, {high:g}]")
    return x


@torch.no_grad()
def predict_batch(
    model: nn.Module, images: torch.Tensor, settings: SegmentationInference | None = None
) -> torch.Tensor:
    """Class probabilities of images of one size at that size, by mmseg's test procedure.

    For each ratio of ``settings.ratios`` (and, with ``settings.flip``, its horizontal flip): the
    keep-ratio resize, ``ResizeToMultiple``, normalisation, whole or sliding-window inference, a
    bilinear resize of the logits straight to the original size and a softmax. The result is the
    mean of those softmaxes (mmseg's ``aug_test``). A single pass returns its softmax, not the raw
    logits: the argmax is the same, and single- and multi-scale results are comparable. Every
    image of the batch goes through the same steps as it would alone (the resize depends only on
    the size, which they share), so batching changes the speed, not the result.

    Image resizes are bilinear with ``align_corners=False`` and no antialiasing, as OpenCV's (which
    mmcv uses) are. The model runs in eval mode under ``torch.no_grad`` on its own device and dtype
    (its mode is restored afterwards); the returned tensor is float32 on that device.

    Args:
        model: Segmentation model called as ``model(pixel_values=x)`` with normalised
            ``x [B, 3, h, w]``, returning an object with ``.logits [B, C, h', w']`` (e.g.
            transformers' ``UperNetForSemanticSegmentation``). Logits at another size than the
            input are resized to it bilinearly.
        images: ``[B, 3, H, W]`` at their original size, uint8 or float in [0, 1].
        settings: Test-time settings; ``None`` for the defaults (upstream's ADE20K single-scale).

    Returns:
        Float32 probabilities ``[B, C, H, W]`` that sum to 1 over ``C`` at each pixel.

    Raises:
        DataError: ``images`` are not RGB images of a supported dtype and range.
    """
    settings = SegmentationInference() if settings is None else settings
    dtype, device = _model_dtype_device(model)
    x = _as_float_images(images).to(device)  # [B, 3, H, W]
    height, width = x.shape[2], x.shape[3]
    flips = (False, True) if settings.flip else (False,)
    total: torch.Tensor | None = None
    was_training = model.training
    model.eval()
    try:
        # The order of mmseg's MultiScaleFlipAug: each scale, unflipped then flipped.
        for ratio in settings.ratios:
            size = rescale_size(height, width, settings.scaled(ratio))
            size = resize_to_multiple_size(*size, settings.size_divisor)
            resized = normalize(_resize(x, size), settings.mean, settings.std).to(dtype)
            for flip in flips:
                net_input = resized.flip(-1) if flip else resized
                if settings.mode == "slide":
                    logits = _slide(model, net_input, settings)
                else:
                    logits = _encode_decode(model, net_input)
                probs = _resize(logits, (height, width)).softmax(dim=1)  # [B, C, H, W]
                if flip:
                    probs = probs.flip(-1)
                total = probs if total is None else total + probs
    finally:
        model.train(was_training)
    assert total is not None  # ratios is never empty
    return total / (len(settings.ratios) * len(flips))


def predict_logits(
    model: nn.Module, image: torch.Tensor, settings: SegmentationInference | None = None
) -> torch.Tensor:
    """Class probabilities of one image at its original size: :func:`predict_batch` of one.

    Args:
        model: See :func:`predict_batch`.
        image: One image ``[3, H, W]`` at its original size, uint8 or float in [0, 1].
        settings: Test-time settings; ``None`` for the defaults (upstream's ADE20K single-scale).

    Returns:
        Float32 probabilities ``[C, H, W]`` that sum to 1 over ``C`` at each pixel.

    Raises:
        DataError: ``image`` is not one RGB image of a supported dtype and range.
    """
    if image.dim() != 3 or image.shape[0] != 3 or min(image.shape[1:]) < 1:
        raise DataError(f"expected one RGB image [3, H, W], got shape {tuple(image.shape)}")
    return predict_batch(model, image.unsqueeze(0), settings)[0]


def predict_mask(
    model: nn.Module, image: torch.Tensor, settings: SegmentationInference | None = None
) -> torch.Tensor:
    """Predicted class per pixel of one image: the argmax of :func:`predict_logits`.

    Args:
        model: See :func:`predict_logits`.
        image: One image ``[3, H, W]`` at its original size, uint8 or float in [0, 1].
        settings: Test-time settings; ``None`` for the defaults.

    Returns:
        int64 ``[H, W]`` class indices.
    """
    return predict_logits(model, image, settings).argmax(dim=0)
