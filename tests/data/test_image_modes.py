"""``to_rgb8``: every Pillow mode and bit depth to 8-bit RGB, scaled and never clipped."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from internimage.data.images import to_rgb8


def _convert(image: Image.Image) -> np.ndarray:
    """Run ``to_rgb8`` with every warning an error; check the result is 8-bit RGB; return it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = to_rgb8(image)
    assert result.mode == "RGB"
    assert result.size == image.size
    pixels = np.asarray(result)
    assert pixels.dtype == np.uint8
    assert pixels.shape == (image.height, image.width, 3)
    return pixels


def _grey(values: np.ndarray) -> np.ndarray:
    """The expected RGB array for greyscale ``values``: three identical uint8 channels."""
    return np.repeat(np.asarray(values, np.uint8)[..., None], 3, axis=-1)


def _round_half_up(values: np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(values, np.float64) + 0.5).astype(np.uint8)


def _reopen(image: Image.Image, path: Path, **save_args: object) -> Image.Image:
    image.save(path, **save_args)
    reopened = Image.open(path)
    reopened.load()
    return reopened


def _with_mode(image: Image.Image, mode: str) -> Image.Image:
    """Relabel ``image`` with a mode that no decoder or constructor of this Pillow produces."""
    image._mode = mode  # Pillow >= 10.1 keeps the mode here behind a read-only property
    if image.mode != mode:  # Pillow 10.0 kept it in a plain attribute
        image.mode = mode
    assert image.mode == mode
    return image


UINT16_VALUES = np.array([[0, 1, 128, 129, 257], [32768, 40000, 65279, 65534, 65535]], np.uint16)


# --- 16-bit unsigned greyscale -------------------------------------------------------------------


def test_uint16_fromarray_gives_i16_and_is_scaled_not_clipped() -> None:
    image = Image.fromarray(UINT16_VALUES)
    assert image.mode == "I;16"
    pixels = _convert(image)
    expected = np.round(UINT16_VALUES.astype(np.float64) * 255 / 65535)
    np.testing.assert_array_equal(pixels, _grey(expected))
    # Pillow's own conversion clips: everything above 255 turns white. Scaling must not.
    assert pixels[1, 0, 0] == 128  # mid-grey 32768
    assert pixels[0, 4, 0] == 1  # 257 is one 8-bit step
    assert pixels[1, 4, 0] == 255 and pixels[0, 0, 0] == 0
    assert (np.asarray(image.convert("L")) == 255).sum() > (pixels[..., 0] == 255).sum()


def test_uint16_png_round_trips_and_is_scaled(tmp_path: Path) -> None:
    image = _reopen(Image.fromarray(UINT16_VALUES), tmp_path / "grey16.png")
    # This Pillow opens a 16-bit greyscale PNG as "I;16" (older ones gave "I"); both are handled.
    assert image.mode in ("I;16", "I")
    np.testing.assert_array_equal(np.asarray(image), UINT16_VALUES)
    expected = np.round(UINT16_VALUES.astype(np.float64) * 255 / 65535)
    np.testing.assert_array_equal(_convert(image), _grey(expected))


def test_uint16_full_range_ramp_png(tmp_path: Path) -> None:
    ramp = np.arange(0, 65536, dtype=np.uint16).reshape(256, 256)
    pixels = _convert(_reopen(Image.fromarray(ramp), tmp_path / "ramp.png"))
    expected = np.round(ramp.astype(np.float64) * 255 / 65535)
    np.testing.assert_array_equal(pixels, _grey(expected))
    # Every 8-bit level appears, roughly equally often: nothing is clipped.
    counts = np.bincount(pixels[..., 0].ravel(), minlength=256)
    assert counts.min() >= 128 and counts.max() <= 258


@pytest.mark.parametrize(("mode", "dtype"), [("I;16L", "<u2"), ("I;16B", ">u2"), ("I;16N", "=u2")])
def test_uint16_byte_orders(mode: str, dtype: str) -> None:
    height, width = UINT16_VALUES.shape
    image = Image.frombytes(mode, (width, height), UINT16_VALUES.astype(dtype).tobytes())
    assert image.mode == mode
    expected = np.round(UINT16_VALUES.astype(np.float64) * 255 / 65535)
    np.testing.assert_array_equal(_convert(image), _grey(expected))


# --- 32-bit signed greyscale ---------------------------------------------------------------------


def test_int32_within_uint16_range_is_scaled_as_16_bit() -> None:
    image = Image.fromarray(UINT16_VALUES.astype(np.int32))
    assert image.mode == "I"
    expected = np.round(UINT16_VALUES.astype(np.float64) * 255 / 65535)
    np.testing.assert_array_equal(_convert(image), _grey(expected))


def test_int32_tiff_outside_uint16_range_is_stretched(tmp_path: Path) -> None:
    values = np.array([[-1000, 0, 5000], [70000, 123456, 200000]], np.int32)
    image = _reopen(Image.fromarray(values), tmp_path / "int32.tiff")
    assert image.mode == "I"
    np.testing.assert_array_equal(np.asarray(image), values)
    low, high = values.min(), values.max()
    expected = _round_half_up((values.astype(np.float64) - low) * 255 / (high - low))
    pixels = _convert(image)
    np.testing.assert_array_equal(pixels, _grey(expected))
    assert pixels[0, 0, 0] == 0 and pixels[1, 2, 0] == 255


def test_int32_stretch_rounds_half_up() -> None:
    # (243 + 10) * 255 / 510 == 126.5 exactly: half up gives 127 (banker's rounding would give 126).
    image = Image.fromarray(np.array([[-10, 243, 500]], np.int32))
    np.testing.assert_array_equal(_convert(image), _grey([[0, 127, 255]]))


def test_int32_constant_outside_uint16_range_gives_zero() -> None:
    image = Image.fromarray(np.full((3, 4), -7, np.int32))
    np.testing.assert_array_equal(_convert(image), np.zeros((3, 4, 3), np.uint8))


# --- 32-bit float greyscale ----------------------------------------------------------------------


def test_float_unit_range_is_scaled_by_255(tmp_path: Path) -> None:
    values = np.array([[0.0, 0.1, 0.25, 0.5], [0.7, 0.999, 1.0, 0.002]], np.float32)
    image = _reopen(Image.fromarray(values), tmp_path / "float.tiff")
    assert image.mode == "F"
    np.testing.assert_array_equal(np.asarray(image), values)
    expected = _round_half_up(values.astype(np.float64) * 255)
    pixels = _convert(image)
    np.testing.assert_array_equal(pixels, _grey(expected))
    assert pixels[0, 3, 0] == 128  # 0.5 * 255 = 127.5, rounded half up


def test_float_outside_unit_range_is_stretched(tmp_path: Path) -> None:
    values = np.array([[-2.5, 0.0, 1.0], [3.75, 10.0, 7.5]], np.float32)
    image = _reopen(Image.fromarray(values), tmp_path / "wide.tiff")
    low, high = float(values.min()), float(values.max())
    expected = _round_half_up((values.astype(np.float64) - low) * 255 / (high - low))
    pixels = _convert(image)
    np.testing.assert_array_equal(pixels, _grey(expected))
    assert pixels[0, 0, 0] == 0 and pixels[1, 1, 0] == 255


def test_float_nan_gives_zero_and_is_ignored_for_the_range() -> None:
    values = np.array([[np.nan, 0.0, 0.5, 1.0]], np.float32)
    np.testing.assert_array_equal(_convert(Image.fromarray(values)), _grey([[0, 0, 128, 255]]))
    # With NaN present the finite values are still stretched over their own min..max.
    values = np.array([[np.nan, 2.0, 4.0, 6.0]], np.float32)
    np.testing.assert_array_equal(_convert(Image.fromarray(values)), _grey([[0, 0, 128, 255]]))


def test_float_infinities_saturate() -> None:
    values = np.array([[-np.inf, 0.0, 0.2, np.inf]], np.float32)
    np.testing.assert_array_equal(_convert(Image.fromarray(values)), _grey([[0, 0, 51, 255]]))


def test_float_constant_outside_unit_range_and_all_nan_give_zero() -> None:
    for values in (np.full((2, 3), 42.0, np.float32), np.full((2, 3), np.nan, np.float32)):
        np.testing.assert_array_equal(
            _convert(Image.fromarray(values)), np.zeros((2, 3, 3), np.uint8)
        )


# --- 8-bit modes Pillow converts losslessly -------------------------------------------------------


def test_one_bit_png(tmp_path: Path) -> None:
    bits = np.array([[0, 1, 1, 0], [1, 0, 0, 1]], bool)
    image = _reopen(Image.fromarray(bits), tmp_path / "bits.png")
    assert image.mode == "1"
    np.testing.assert_array_equal(_convert(image), _grey(bits * 255))


def test_l_and_rgb_are_unchanged() -> None:
    grey = np.array([[0, 1, 127, 128, 254, 255]], np.uint8)
    np.testing.assert_array_equal(_convert(Image.fromarray(grey)), _grey(grey))
    colour = np.arange(3 * 4 * 3, dtype=np.uint8).reshape(3, 4, 3) * 7
    np.testing.assert_array_equal(_convert(Image.fromarray(colour)), colour)


def test_rgbx_drops_the_padding_band() -> None:
    values = np.array([[[10, 20, 30, 99], [200, 150, 100, 0]]], np.uint8)
    image = Image.frombytes("RGBX", (2, 1), values.tobytes())
    np.testing.assert_array_equal(_convert(image), values[..., :3])


def test_palette_without_transparency(tmp_path: Path) -> None:
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255, 17, 34, 51]
    image = Image.new("P", (4, 1))
    image.putpalette(palette)
    image.putdata([3, 2, 1, 0])
    image = _reopen(image, tmp_path / "palette.png")
    assert image.mode == "P" and "transparency" not in image.info
    expected = np.array(palette, np.uint8).reshape(4, 3)[[3, 2, 1, 0]][None]
    np.testing.assert_array_equal(_convert(image), expected)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    cmyk = np.zeros((8, 16, 4), np.uint8)
    cmyk[:, :8] = [10, 20, 30, 40]
    cmyk[:, 8:] = [200, 0, 100, 5]
    image = _reopen(
        Image.frombytes("CMYK", (16, 8), cmyk.tobytes()), tmp_path / "cmyk.jpg", quality=100
    )
    assert image.mode == "CMYK"
    decoded = np.asarray(image).astype(np.float64)
    assert np.abs(decoded - cmyk).max() <= 2  # JPEG is lossy, but flat blocks barely change
    # Naive CMYK -> RGB, as Pillow does it: (255 - C) * (255 - K) / 255.
    expected = np.round((255 - decoded[..., :3]) * (255 - decoded[..., 3:]) / 255)
    np.testing.assert_array_equal(_convert(image), expected.astype(np.uint8))


def test_ycbcr_and_hsv_are_converted_to_rgb() -> None:
    ycbcr = Image.frombytes("YCbCr", (2, 1), bytes([128, 128, 128, 255, 128, 128]))
    np.testing.assert_array_equal(_convert(ycbcr), [[[128, 128, 128], [255, 255, 255]]])
    # Hue 0 is red, hue 85 (= 120 degrees of 360) is green, at full saturation and value.
    hsv = Image.frombytes("HSV", (2, 1), bytes([0, 255, 255, 85, 255, 255]))
    np.testing.assert_array_equal(_convert(hsv), [[[255, 0, 0], [0, 255, 0]]])


# --- alpha is dropped, the colour kept -----------------------------------------------------------


def test_rgba_png_drops_alpha_and_keeps_colour(tmp_path: Path) -> None:
    rgba = np.array([[[200, 100, 50, 0], [10, 20, 30, 128], [1, 2, 3, 255]]], np.uint8)
    image = _reopen(Image.fromarray(rgba), tmp_path / "rgba.png")
    assert image.mode == "RGBA"
    # Not composited on black or white: a fully transparent pixel keeps its colour.
    np.testing.assert_array_equal(_convert(image), rgba[..., :3])


def test_la_png_drops_alpha_and_keeps_luminance(tmp_path: Path) -> None:
    la = np.array([[[200, 0], [90, 128], [3, 255]]], np.uint8)
    image = _reopen(Image.fromarray(la), tmp_path / "la.png")
    assert image.mode == "LA"
    np.testing.assert_array_equal(_convert(image), _grey(la[..., 0]))


def test_premultiplied_modes_are_unpremultiplied() -> None:
    # A stored premultiplied value v at alpha a is the colour v * 255 / a (Pillow truncates it).
    rgba_stored = np.array([[[100, 50, 25, 128], [200, 100, 50, 255]]], np.uint8)
    image = Image.frombytes("RGBa", (2, 1), rgba_stored.tobytes())
    stored = rgba_stored.astype(np.float64)
    expected = np.floor(stored[..., :3] * 255 / stored[..., 3:])
    np.testing.assert_array_equal(_convert(image), expected.astype(np.uint8))

    la_stored = np.array([[[100, 128], [200, 255]]], np.uint8)
    image = Image.frombytes("La", (2, 1), la_stored.tobytes())
    stored = la_stored.astype(np.float64)
    expected = np.floor(stored[..., 0] * 255 / stored[..., 1])
    np.testing.assert_array_equal(_convert(image), _grey(expected))


def test_pa_drops_alpha_and_keeps_palette_colour() -> None:
    image = Image.new("PA", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255])
    image.putdata([(1, 0), (0, 200)])
    np.testing.assert_array_equal(_convert(image), [[[0, 0, 255], [255, 0, 0]]])


@pytest.mark.parametrize("transparency", [b"\x00\x80", 0])
def test_palette_png_with_transparency_is_silent(tmp_path: Path, transparency: object) -> None:
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255]
    image = Image.new("P", (3, 2))
    image.putpalette(palette)
    image.putdata([0, 1, 2, 2, 1, 0])
    image.info["transparency"] = transparency
    image = _reopen(image, tmp_path / "palette_alpha.png")
    assert image.mode == "P" and image.info["transparency"] == transparency
    if isinstance(transparency, bytes):
        # The warning this path must avoid really is emitted by a plain convert("RGB").
        with pytest.warns(UserWarning, match="Transparency expressed in bytes"):
            image.convert("RGB")
    # Transparent entries keep their palette colour: alpha is dropped, not composited.
    expected = np.array(palette, np.uint8).reshape(3, 3)[[[0, 1, 2], [2, 1, 0]]]
    np.testing.assert_array_equal(_convert(image), expected)


def test_lazily_opened_file_is_decoded() -> None:
    buffer = io.BytesIO()
    Image.fromarray(UINT16_VALUES).save(buffer, format="PNG")
    buffer.seek(0)
    image = Image.open(buffer)  # not loaded yet
    expected = np.round(UINT16_VALUES.astype(np.float64) * 255 / 65535)
    np.testing.assert_array_equal(_convert(image), _grey(expected))


# --- errors --------------------------------------------------------------------------------------


def test_unknown_mode_raises_value_error_naming_it() -> None:
    image = _with_mode(Image.new("L", (2, 2)), "XYZ")
    with pytest.raises(ValueError, match="'XYZ'"):
        to_rgb8(image)


def test_wide_mode_without_a_rule_raises_instead_of_clipping() -> None:
    image = _with_mode(Image.new("I", (2, 2)), "I;32")
    with pytest.raises(ValueError, match=r"'I;32'.*without clipping"):
        to_rgb8(image)


def test_pillow_conversion_failure_becomes_value_error_naming_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(self: Image.Image, mode: str | None = None, *args: object, **kwargs: object) -> None:
        raise ValueError(f"conversion from {self.mode} to {mode} not supported")

    monkeypatch.setattr(Image.Image, "convert", refuse)
    with pytest.raises(ValueError, match="'HSV'"):
        to_rgb8(Image.frombytes("HSV", (1, 1), bytes([0, 0, 0])))


def test_non_image_raises_type_error() -> None:
    with pytest.raises(TypeError, match="ndarray"):
        to_rgb8(np.zeros((2, 2, 3), np.uint8))  # type: ignore[arg-type]
