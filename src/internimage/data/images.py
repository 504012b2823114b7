"""Read images of any mode and bit depth as 8-bit RGB, scaling rather than clipping."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from internimage.errors import DataError

if TYPE_CHECKING:  # Pillow is an optional dependency; only type checkers import it here.
    from PIL import Image

__all__ = ["DECODE_ERRORS", "read_image", "to_rgb8"]

#: What Pillow raises for files it cannot decode (truncated, not an image, bad header).
DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, SyntaxError)

# Unsigned 16-bit greyscale in its byte orders ("I;16" is little-endian, "N" is native).
_UINT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
# Pillow's numpy type strings for 8-bit (and 1-bit) samples, which it converts to RGB losslessly.
# This covers the alpha modes too: Pillow's ``convert("RGB")`` drops "RGBA", "LA" and "PA" alpha
# keeping the colour, and un-premultiplies "RGBa" first, so the true colour is kept.
_EIGHT_BIT_TYPESTRS = frozenset({"|u1", "|b1"})
_UINT16_MAX = 65535


def read_image(path: str | Path) -> np.ndarray:
    """uint8 ``[H, W, 3]`` RGB pixels of an image file of any mode and bit depth.

    Raises:
        DataError: Pillow cannot decode the file (the message names it).
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            rgb = to_rgb8(image)  # decodes inside the try
    except DECODE_ERRORS as error:
        raise DataError(f"cannot read image {path}: {type(error).__name__}: {error}") from None
    return np.asarray(rgb)


def to_rgb8(image: Image.Image) -> Image.Image:
    """Convert a decoded Pillow image of any mode and bit depth to an 8-bit ``"RGB"`` image.

    Samples are *scaled* from the mode's nominal range to 0..255, never clipped: Pillow's own
    ``convert("RGB")`` clips 16- and 32-bit greyscale, so a 16-bit PNG holding 0..65535 comes out
    almost all white. The scaling rules below round half up. The rules, by mode:

    - ``"1"``, ``"L"``, ``"P"`` (no transparency), ``"RGB"``, ``"RGBX"``, ``"CMYK"``,
      ``"YCbCr"``, ``"HSV"``, ``"LAB"`` and any other mode with 8-bit (or 1-bit) samples:
      Pillow's ``convert("RGB")``, which takes 8 bits to 8 bits and so clips nothing.
    - Alpha modes ``"RGBA"``, ``"RGBa"``, ``"LA"``, ``"La"``, ``"PA"`` and ``"P"`` with a
      ``"transparency"`` entry: the alpha channel is dropped and the colour values are kept (as
      torchvision and timm loaders do). Premultiplied ``"RGBa"``/``"La"`` are un-premultiplied
      first (by Pillow, which truncates ``v * 255 / alpha``). ``"P"`` with transparency is
      converted through ``"RGBA"``, so Pillow does not warn that palette transparency expressed
      in bytes should be converted to RGBA.
    - ``"I;16"``, ``"I;16L"``, ``"I;16B"``, ``"I;16N"`` (16-bit unsigned): ``v * 255 / 65535``
      rounded (65535 -> 255, 32768 -> 128, 257 -> 1, 0 -> 0).
    - ``"I"`` (32-bit signed; some Pillow versions open 16-bit PNGs and TIFFs this way): if every
      value lies in [0, 65535] the samples are 16-bit and scaled as for ``"I;16"``; otherwise the
      image's min..max is stretched linearly to 0..255 (a constant image gives 0).
    - ``"F"`` (32-bit float): if every finite value lies in [0, 1] it is scaled by 255 and
      rounded; otherwise the min..max of the finite values is stretched linearly to 0..255 (a
      constant image gives 0). NaN gives 0; +inf gives 255 and -inf gives 0.
    - Greyscale results are replicated to three identical channels.

    Args:
        image: A Pillow image of any mode. Lazily opened files are decoded here.

    Returns:
        A new ``"RGB"`` image of the same size with 8-bit samples.

    Raises:
        TypeError: ``image`` is not a ``PIL.Image.Image``.
        ValueError: Pillow cannot convert the image's mode to RGB, or the mode has samples wider
            than 8 bits for which no scaling rule above applies; the message names the mode.
    """
    # Imported here because Pillow is optional: ``import internimage`` must work without it.
    from PIL import Image, ImageMode

    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL.Image.Image, got {type(image).__name__}")
    mode = image.mode

    if mode in _UINT16_MODES:
        return _grey_to_rgb(_scale_uint16(np.asarray(image)))
    if mode == "I":
        return _grey_to_rgb(_scale_int32(np.asarray(image)))
    if mode == "F":
        return _grey_to_rgb(_scale_float(np.asarray(image)))
    if mode == "P" and "transparency" in image.info:
        # Going through RGBA applies the palette's transparency the way Pillow recommends (and
        # keeps it silent); dropping the alpha afterwards leaves the palette colours untouched.
        return image.convert("RGBA").convert("RGB")
    if mode == "La":
        # Pillow has no direct La -> RGB conversion; La -> LA un-premultiplies the luminance.
        return image.convert("LA").convert("RGB")

    try:
        typestr = ImageMode.getmode(mode).typestr
    except KeyError:
        raise ValueError(f"cannot convert image mode {mode!r} to RGB: unknown mode") from None
    if typestr not in _EIGHT_BIT_TYPESTRS:
        # Pillow would clip these samples to 8 bits, which is exactly what this function avoids.
        raise ValueError(
            f"cannot convert image mode {mode!r} ({typestr} samples) to 8-bit RGB without clipping"
        )
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise ValueError(f"cannot convert image mode {mode!r} to RGB: {error}") from error


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    """Wrap an ``[H, W]`` uint8 array as an RGB image with three identical channels."""
    from PIL import Image

    # An [H, W, 3] uint8 array is always taken as "RGB", so no (deprecated) mode argument.
    return Image.fromarray(np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2)))


def _scale_uint16(values: np.ndarray) -> np.ndarray:
    """Scale 16-bit samples by 255/65535, rounding half up in exact integer arithmetic."""
    wide = values.astype(np.int64)
    # 255/65535 == 1/257 and no sample sits exactly on a half, so this equals round(v / 257).
    return ((wide * 255 + _UINT16_MAX // 2) // _UINT16_MAX).astype(np.uint8)


def _scale_int32(values: np.ndarray) -> np.ndarray:
    """Scale 32-bit signed samples: as 16-bit when they fit in [0, 65535], else min..max."""
    if values.size == 0:
        return np.zeros(values.shape, np.uint8)
    wide = values.astype(np.int64)
    low, high = int(wide.min()), int(wide.max())
    if low >= 0 and high <= _UINT16_MAX:
        return _scale_uint16(wide)
    # A stretch is the only lossless choice left: the nominal int32 range would crush any real
    # image into one or two grey levels. Integer arithmetic gives exact half-up rounding.
    span = high - low
    if span == 0:  # a constant image outside [0, 65535] has no range to stretch
        return np.zeros(values.shape, np.uint8)
    return (((wide - low) * 510 + span) // (2 * span)).astype(np.uint8)


def _scale_float(values: np.ndarray) -> np.ndarray:
    """Scale float samples: by 255 when the finite ones lie in [0, 1], else their min..max."""
    wide = values.astype(np.float64)
    finite = np.isfinite(wide)
    scaled = np.zeros(wide.shape, np.float64)
    if finite.any():
        low, high = float(wide[finite].min()), float(wide[finite].max())
        if low >= 0.0 and high <= 1.0:
            scaled[finite] = wide[finite] * 255.0
        elif high > low:
            scaled[finite] = (wide[finite] - low) * 255.0 / (high - low)
        # else: a constant image outside [0, 1] has no range to stretch, so it stays 0.
    # Infinities saturate to the ends of the range; NaN carries no value and stays 0.
    scaled[wide == np.inf] = 255.0
    # Half-up rounding; the clip only absorbs float error at the ends, the values are in range.
    return np.clip(np.floor(scaled + 0.5), 0, 255).astype(np.uint8)
