"""Deterministic image transforms: evaluation resize/crop (PIL) and batch preparation (torch)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ResizeCenterCrop",
    "normalize",
    "to_float_images",
]

#: Channel statistics of ImageNet-1K in [0, 1] units, used by every released checkpoint.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_PIL_FILTERS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


class ResizeCenterCrop:
    """Resize the shorter side to ``round(size / crop_fraction)``, then centre-crop ``size``.

    With ``crop_fraction=1.0`` this is the upstream evaluation transform: shorter side to the image
    size with bicubic resampling, centre crop of the image size. Pillow resamples with
    antialiasing, as the upstream pipeline (which resizes PIL images) does.

    Args:
        size: Output side in pixels.
        crop_fraction: Fraction of the resized shorter side kept by the crop, in (0, 1].
        interpolation: Pillow filter name.

    Returns (when called on an RGB ``PIL.Image``): uint8 tensor ``[3, size, size]``.
    """

    def __init__(
        self, size: int, crop_fraction: float = 1.0, interpolation: str = "bicubic"
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        if not 0.0 < crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
        if interpolation not in _PIL_FILTERS:
            raise ValueError(f"interpolation must be one of {_PIL_FILTERS}, got {interpolation!r}")
        self.size = size
        self.crop_fraction = crop_fraction
        self.interpolation = interpolation

    def __call__(self, image: object) -> torch.Tensor:
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(image).__name__}")
        if image.mode != "RGB":
            from internimage.data.images import to_rgb8

            image = to_rgb8(image)
        # The same rounding the upstream resize uses: shorter side exactly `short`, the longer one
        # scaled and truncated.
        short = int(round(self.size / self.crop_fraction))
        width, height = image.size
        if width <= height:
            new_w, new_h = short, int(short * height / width)
        else:
            new_w, new_h = int(short * width / height), short
        resample = getattr(Image.Resampling, self.interpolation.upper())
        image = image.resize((new_w, new_h), resample=resample)
        left = int(round((new_w - self.size) / 2.0))
        top = int(round((new_h - self.size) / 2.0))
        image = image.crop((left, top, left + self.size, top + self.size))
        array = np.asarray(image, dtype=np.uint8)  # [H, W, 3]
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def to_float_images(
    images: torch.Tensor, image_size: int | None = None, *, interpolation: str = "bicubic"
) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` images to float ``[B, 3, S, S]`` in [0, 1].

    Grayscale (C = 1) is repeated to three channels, since every model takes RGB. When
    ``image_size`` differs from the input size the batch is resized (antialiased when shrinking)
    and clamped back to [0, 1] (bicubic overshoots).
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [B, 1 or 3, H, W], got shape {tuple(images.shape)}")
    x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        shrinking = min(x.shape[-2:]) > image_size
        x = F.interpolate(
            x, size=(image_size, image_size), mode=interpolation, align_corners=False,
            antialias=shrinking,
        ).clamp_(0.0, 1.0)
    return x.contiguous()


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(images - mean) / std`` per channel of float ``[B, 3, H, W]``."""
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s
