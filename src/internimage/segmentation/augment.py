"""Training augmentation for semantic segmentation on batches already on the training device.

The steps follow mmseg's ADE20K training pipeline: random rescale (``Resize`` with a ratio
range), ``RandomCrop`` with ``cat_max_ratio``, ``RandomFlip``, ``PhotoMetricDistortion`` and
``Pad`` to the crop size. Every random number comes from the global torch generator and is drawn
on the CPU, so ``torch.manual_seed`` (and a checkpointed CPU RNG state) reproduces a run on any
device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from internimage.errors import ConfigError

__all__ = ["SegmentationAugmentation", "photometric_distortion"]

# mmseg's PhotoMetricDistortion defaults, on its 0..255 scale and OpenCV's 0..180 hue scale.
_BRIGHTNESS_DELTA = 32.0 / 255.0
_CONTRAST_RANGE = (0.5, 1.5)
_SATURATION_RANGE = (0.5, 1.5)
_HUE_DELTA = 18.0 / 180.0  # fraction of the hue circle
# mmseg's RandomCrop tries this many crops to satisfy cat_max_ratio, then keeps the last.
_CROP_TRIES = 10


def _uniform(low: float, high: float, count: int) -> torch.Tensor:
    return low + (high - low) * torch.rand(count)


def photometric_distortion(images: torch.Tensor) -> torch.Tensor:
    """mmseg's ``PhotoMetricDistortion`` on float ``[B, 3, H, W]`` in [0, 1], per image.

    Each of brightness (add up to +-32/255), contrast (multiply by 0.5..1.5), saturation (scale
    HSV saturation by 0.5..1.5) and hue (shift by up to +-18/180 of the circle) is applied with
    probability 0.5; contrast comes first or last with equal odds. Values are clamped to [0, 1]
    after each step, as mmseg clips to 0..255.
    """
    from kornia.color import hsv_to_rgb, rgb_to_hsv

    batch = images.shape[0]
    device = images.device
    # [B, 4] on/off for brightness, contrast, saturation, hue; [B] contrast-first mode.
    active = torch.randint(0, 2, (batch, 4)).bool()
    contrast_first = torch.randint(0, 2, (batch,)).bool()
    delta = _uniform(-_BRIGHTNESS_DELTA, _BRIGHTNESS_DELTA, batch)
    contrast = _uniform(*_CONTRAST_RANGE, batch)
    saturation = _uniform(*_SATURATION_RANGE, batch)
    hue = _uniform(-_HUE_DELTA, _HUE_DELTA, batch)

    def per_image(values: torch.Tensor, on: torch.Tensor, neutral: float) -> torch.Tensor:
        # [B] -> [B, 1, 1, 1] on the images' device, neutral where the step is off.
        chosen = torch.where(on, values, torch.full_like(values, neutral))
        return chosen.to(device=device, dtype=torch.float32).view(batch, 1, 1, 1)

    x = images.float()
    x = (x + per_image(delta, active[:, 0], 0.0)).clamp_(0.0, 1.0)
    x = (x * per_image(contrast, active[:, 1] & contrast_first, 1.0)).clamp_(0.0, 1.0)
    colour = active[:, 2] | active[:, 3]
    if bool(colour.any()):
        hsv = rgb_to_hsv(x)  # hue in [0, 2 pi], saturation and value in [0, 1]
        h = (hsv[:, 0:1] + per_image(hue, active[:, 3], 0.0) * (2.0 * math.pi)) % (2.0 * math.pi)
        s = (hsv[:, 1:2] * per_image(saturation, active[:, 2], 1.0)).clamp_(0.0, 1.0)
        shifted = hsv_to_rgb(torch.cat([h, s, hsv[:, 2:3]], dim=1)).clamp_(0.0, 1.0)
        # The HSV round trip is not exact, so images without a colour step keep their values.
        x = torch.where(colour.to(device).view(batch, 1, 1, 1), shifted, x)
    x = (x * per_image(contrast, active[:, 1] & ~contrast_first, 1.0)).clamp_(0.0, 1.0)
    return x.to(images.dtype)


class SegmentationAugmentation(nn.Module):
    """Random rescale, crop, flip and photometric distortion of images with their label masks.

    Per image: rescale by a ratio drawn from ``scale_range`` (bilinear for the image, nearest
    for the labels, sizes rounded as mmseg does), a random crop of ``crop_size`` (retried up to
    10 times until no class covers ``cat_max_ratio`` or more of the crop's labelled pixels, as
    mmseg's ``RandomCrop``; the last try is kept otherwise), a horizontal flip of both with
    probability ``hflip``; then photometric distortion of the images only; finally padding
    bottom/right to ``crop_size`` where the rescaled image is smaller (images 0, labels
    ``ignore_index``). Padding that the inputs already carry (e.g. from ``collate_padded``) is
    treated as image content; its labels are ``ignore_index``, so the loss skips it anyway.

    Args:
        crop_size: Output ``(height, width)``, or one side for a square.
        scale_range: ``(low, high)`` rescale ratio relative to each input's size.
        hflip: Probability of a horizontal flip.
        photometric: Apply :func:`photometric_distortion`.
        ignore_index: Label of pixels the loss skips; the padding gets it and ``cat_max_ratio``
            does not count it.
        cat_max_ratio: Largest share of one class in a crop, or ``None`` (or 1) for plain crops.
    """

    def __init__(
        self,
        crop_size: int | tuple[int, int],
        *,
        scale_range: tuple[float, float] = (0.5, 2.0),
        hflip: float = 0.5,
        photometric: bool = True,
        ignore_index: int = 255,
        cat_max_ratio: float | None = 0.75,
    ) -> None:
        super().__init__()
        size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        if len(size) != 2 or any(not isinstance(s, int) or s < 1 for s in size):
            raise ConfigError(
                f"crop_size must be a positive int or (height, width), got {crop_size}"
            )
        low, high = (float(v) for v in scale_range)
        if not 0.0 < low <= high:
            raise ConfigError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        if not 0.0 <= hflip <= 1.0:
            raise ConfigError(f"hflip is a probability in [0, 1], got {hflip}")
        if cat_max_ratio is not None and not 0.0 < cat_max_ratio <= 1.0:
            raise ConfigError(f"cat_max_ratio must be in (0, 1] or None, got {cat_max_ratio}")
        self.crop_size: tuple[int, int] = (int(size[0]), int(size[1]))
        self.scale_range = (low, high)
        self.hflip = float(hflip)
        self.photometric = bool(photometric)
        self.ignore_index = int(ignore_index)
        # mmseg applies the rule only below 1: a share of 1 is no limit at all.
        self.cat_max_ratio = (
            cat_max_ratio if cat_max_ratio is not None and cat_max_ratio < 1.0 else None
        )

    def _crop_origin(self, labels: torch.Tensor) -> tuple[int, int]:
        """Top-left corner of the crop in rescaled ``labels [h, w]``."""
        crop_h, crop_w = self.crop_size
        margin_h = max(labels.shape[0] - crop_h, 0)
        margin_w = max(labels.shape[1] - crop_w, 0)
        tries = _CROP_TRIES if self.cat_max_ratio is not None else 1
        y0 = x0 = 0
        for _ in range(tries):
            y0 = int(torch.randint(0, margin_h + 1, ()))
            x0 = int(torch.randint(0, margin_w + 1, ()))
            if self.cat_max_ratio is None:
                break
            crop = labels[y0 : y0 + crop_h, x0 : x0 + crop_w]
            _, counts = torch.unique(crop[crop != self.ignore_index], return_counts=True)
            # mmseg's rule: accept only crops with at least two classes, none dominant.
            if counts.numel() > 1:
                share = float(counts.max()) / float(counts.sum())
                if share < self.cat_max_ratio:
                    break
        return y0, x0

    def forward(
        self, images: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment ``images`` float ``[B, 3, H, W]`` in [0, 1] and ``masks`` int ``[B, H, W]``.

        Returns:
            ``(images [B, 3, crop_h, crop_w], masks int64 [B, crop_h, crop_w])``.
        """
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(
                f"expected float images [B, 3, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        if masks.shape != (images.shape[0], *images.shape[2:]):
            raise ValueError(
                f"masks {tuple(masks.shape)} do not match images {tuple(images.shape)}: "
                f"expected [B, H, W]"
            )
        batch, (crop_h, crop_w) = images.shape[0], self.crop_size
        device = images.device
        out_images = images.new_zeros(batch, 3, crop_h, crop_w)
        out_masks = torch.full(
            (batch, crop_h, crop_w), self.ignore_index, dtype=torch.int64, device=device
        )
        if batch == 0:
            return out_images, out_masks
        valid = torch.zeros(batch, 1, crop_h, crop_w, dtype=torch.bool, device=device)
        low, high = self.scale_range
        ratios = _uniform(low, high, batch)
        flips = torch.rand(batch) < self.hflip
        height, width = images.shape[2:]
        for index in range(batch):
            ratio = float(ratios[index])
            # mmseg rounds rescaled sizes half up.
            new_h, new_w = max(1, int(height * ratio + 0.5)), max(1, int(width * ratio + 0.5))
            image = images[index : index + 1]  # [1, 3, H, W]
            labels = masks[index]  # [H, W]
            if (new_h, new_w) != (height, width):
                image = F.interpolate(image, (new_h, new_w), mode="bilinear", align_corners=False)
                # Nearest by index gathering: exact for any integer dtype, no float round trip.
                rows = torch.arange(new_h, device=device) * height // new_h
                cols = torch.arange(new_w, device=device) * width // new_w
                labels = labels.index_select(0, rows).index_select(1, cols)
            y0, x0 = self._crop_origin(labels)
            image = image[0, :, y0 : y0 + crop_h, x0 : x0 + crop_w]  # [3, h, w]
            labels = labels[y0 : y0 + crop_h, x0 : x0 + crop_w]  # [h, w]
            if bool(flips[index]):
                image, labels = image.flip(-1), labels.flip(-1)
            h, w = labels.shape
            out_images[index, :, :h, :w] = image
            out_masks[index, :h, :w] = labels
            valid[index, :, :h, :w] = True
        if self.photometric:
            # Padding is added after the distortion in mmseg, so it stays exactly 0 here too.
            out_images = photometric_distortion(out_images) * valid
        return out_images.clamp_(0.0, 1.0), out_masks
