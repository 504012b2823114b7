"""Palette, overlay, class shares and the rendered prediction picture against hand computations."""

from __future__ import annotations

import io
import sys
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from internimage import draw
from internimage.draw import (
    class_shares,
    overlay,
    palette,
    render_prediction,
    save_prediction,
)
from internimage.errors import MissingDependencyError

IGNORE = 255
M = draw._MARGIN  # the layout render_prediction's docstring promises


def _distinct_rows(colors: np.ndarray) -> int:
    return len({tuple(int(v) for v in row) for row in colors})


# --- palette -------------------------------------------------------------------------------


def test_palette_150_distinct_deterministic_and_prefix_stable() -> None:
    colors = palette(150)
    assert colors.shape == (150, 3) and colors.dtype == np.uint8
    assert _distinct_rows(colors) == 150
    np.testing.assert_array_equal(colors, palette(150))
    # A class keeps its colour whatever the number of classes.
    np.testing.assert_array_equal(palette(19), colors[:19])
    np.testing.assert_array_equal(palette(151)[:150], colors)
    assert tuple(colors[0]) == (64, 64, 64)  # the dark grey for a background class
    assert palette(0).shape == (0, 3)


def test_palette_well_spread_not_just_unequal() -> None:
    # Unequal is not enough for a legend: a pair 1 unit apart looks the same. The stored table
    # keeps every pair at least 15 CIELAB units apart and the first 20 at least 40.
    lab = draw._srgb_to_lab(palette(150))
    distance = np.sqrt(((lab[:, None] - lab[None]) ** 2).sum(-1))
    np.fill_diagonal(distance, np.inf)
    assert distance.min() > 15.0
    assert distance[:20, :20].min() > 40.0


def test_palette_copy_does_not_change_the_next_call() -> None:
    colors = palette(5)
    colors[:] = 0
    assert palette(5).any()


def test_fixed_table_is_what_the_generator_makes() -> None:
    # The table is stored so that it never changes; this says how it was made.
    grey = np.array([[64, 64, 64]], dtype=np.uint8)
    np.testing.assert_array_equal(draw._extend_palette(grey, 150), palette(150))


def test_palette_beyond_the_candidates_stays_distinct() -> None:
    candidates = len(draw._palette_candidates()[0])
    colors = palette(candidates + 300)  # the last ones come from the seeded random fallback
    assert _distinct_rows(colors) == len(colors)
    np.testing.assert_array_equal(colors, palette(candidates + 300))


@pytest.mark.parametrize("bad", [-1, 65537, 2.0, True, "3"])
def test_palette_rejects_bad_counts(bad: object) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        palette(bad)  # type: ignore[arg-type]


# --- overlay -------------------------------------------------------------------------------


def test_overlay_against_hand_computation() -> None:
    image = np.array(
        [[[100, 40, 200], [0, 0, 0]], [[255, 255, 255], [12, 34, 56]]], dtype=np.uint8
    )  # [2, 2, 3]
    mask = np.array([[0, 1], [1, IGNORE]])
    colors = np.array([[200, 0, 0], [0, 100, 255]], dtype=np.uint8)
    out = overlay(image, mask, colors, alpha=0.25)
    expected = np.array(
        [
            # 0.75 * (100, 40, 200) + 0.25 * (200, 0, 0) = (125, 30, 150)
            [[125, 30, 150], [0, 25, 64]],  # 0.25 * (0, 100, 255) = (0, 25, 63.75) -> 64
            # 0.75 * 255 + 0.25 * (0, 100, 255) = (191.25, 216.25, 255); the ignored pixel
            # keeps the image's colour.
            [[191, 216, 255], [12, 34, 56]],
        ],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    # Halves round up: 0.5 * 101 + 0.5 * 0 = 50.5 -> 51.
    half = overlay(np.full((1, 1, 3), 101, np.uint8), np.zeros((1, 1), int), [[0, 0, 0]])
    np.testing.assert_array_equal(half, [[[51, 51, 51]]])


def test_overlay_alpha_ends_and_input_untouched() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    before = image.copy()
    mask = rng.integers(0, 4, (5, 7))
    mask[0, 0] = IGNORE
    colors = palette(4)
    np.testing.assert_array_equal(overlay(image, mask, colors, alpha=0.0), image)
    full = overlay(image, mask, colors, alpha=1.0)
    np.testing.assert_array_equal(full[1:, :], colors[mask[1:, :]])
    np.testing.assert_array_equal(full[0, 0], image[0, 0])
    np.testing.assert_array_equal(image, before)
    # Every pixel ignored, even with no colours at all: the image comes back.
    np.testing.assert_array_equal(
        overlay(image, np.full((5, 7), IGNORE), np.zeros((0, 3), np.uint8)), image
    )


def test_overlay_names_bad_mask_values() -> None:
    image = np.zeros((2, 2, 3), np.uint8)
    with pytest.raises(ValueError, match=r"mask values 3, 7 .*3 colors"):
        overlay(image, np.array([[0, 3], [7, 1]]), palette(3))
    with pytest.raises(ValueError, match="mask values -1 "):
        overlay(image, np.array([[0, -1], [2, 1]]), palette(3))
    # The ignore index may be any value, also one far outside the palette.
    overlay(image, np.array([[0, 1000], [2, 1]]), palette(3), ignore_index=1000)


def test_overlay_names_both_shapes_on_mismatch() -> None:
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(2, 2\)"):
        overlay(np.zeros((2, 2, 3), np.uint8), np.zeros((3, 2), int), palette(2))


@pytest.mark.parametrize(
    ("image", "mask", "colors", "alpha", "message"),
    [
        (np.zeros((2, 2), np.uint8), np.zeros((2, 2), int), palette(2), 0.5, r"\[H, W, 3\]"),
        (np.zeros((2, 2, 4), np.uint8), np.zeros((2, 2), int), palette(2), 0.5, "RGBA"),
        (np.zeros((2, 2, 3), np.float32), np.zeros((2, 2), int), palette(2), 0.5, "uint8"),
        (np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), float), palette(2), 0.5, "integer"),
        (np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), bool), palette(2), 0.5, "integer"),
        (np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2, 1), int), palette(2), 0.5, r"\[H, W\]"),
        (np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), int), np.zeros((2, 4)), 0.5, r"\[K, 3\]"),
        (np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), int), [[0, 0, 256]], 0.5, "256"),
        (np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), int), palette(2), 1.5, "alpha"),
    ],
)
def test_overlay_rejects_bad_inputs(
    image: np.ndarray, mask: np.ndarray, colors: np.ndarray, alpha: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        overlay(image, mask, colors, alpha=alpha)


# --- class shares --------------------------------------------------------------------------


def test_class_shares_exact_fractions_ignore_and_order() -> None:
    names = ["background", "cat", "dog", "tree", "car"]
    # 4 x 5 = 20 pixels, 4 ignored: 16 counted. cat 8, dog 4, background 2, car 2, tree 0.
    mask = np.array(
        [
            [1, 1, 1, 1, IGNORE],
            [1, 1, 1, 1, IGNORE],
            [2, 2, 2, 2, IGNORE],
            [0, 4, 0, 4, IGNORE],
        ]
    )
    shares = class_shares(mask, names)
    assert [(s["class"], s["index"]) for s in shares] == [
        ("cat", 1),
        ("dog", 2),
        ("background", 0),  # equal shares by index
        ("car", 4),
    ]
    assert [Fraction(s["share"]) for s in shares] == [
        Fraction(1, 2),
        Fraction(1, 4),
        Fraction(1, 8),
        Fraction(1, 8),
    ]
    assert set(shares[0]) == {"class", "index", "share"}
    assert sum(s["share"] for s in shares) == pytest.approx(1.0)
    assert all(type(s["index"]) is int and type(s["share"]) is float for s in shares)


def test_class_shares_ignore_index_choice_and_empty() -> None:
    mask = np.array([[0, 0, 1], [1, 1, 1]])
    # With 0 as the ignore index, class 1 has all the counted pixels.
    assert class_shares(mask, ["a", "b"], ignore_index=0) == [
        {"class": "b", "index": 1, "share": 1.0}
    ]
    assert class_shares(np.full((3, 3), IGNORE), ["a", "b"]) == []


def test_class_shares_names_values_without_names() -> None:
    with pytest.raises(ValueError, match=r"mask values 2 .*2 class names"):
        class_shares(np.array([[0, 2]]), ["a", "b"])


# --- render_prediction ---------------------------------------------------------------------


def _scene(size: int = 64) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """An image with a gradient and a mask of 4 blocks: classes 1, 3, 5 and ignored; 8 names."""
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.stack([xx * 4 % 256, yy * 4 % 256, (xx + yy) * 2 % 256], axis=-1).astype(np.uint8)
    half = size // 2
    mask = np.full((size, size), 1)
    mask[:half, half:] = 3
    mask[half:, :half] = 5
    mask[half:, half:] = IGNORE
    mask[half:, half:][: size // 4] = 3  # class 3 gets the most pixels
    mask[half:, : size // 16] = 1  # and class 5 the fewest
    names = [f"class{i}" for i in range(8)]
    return image, mask, names


def _legend_colors(picture: np.ndarray, panel_w: int) -> dict[tuple[int, ...], int]:
    """Pixel count of each colour right of the two panels, where the legend is."""
    region = picture[:, 3 * M + 2 * panel_w :].reshape(-1, 3)
    colors, counts = np.unique(region, axis=0, return_counts=True)
    return {tuple(int(v) for v in c): int(n) for c, n in zip(colors, counts, strict=True)}


def test_render_prediction_layout_and_pixels() -> None:
    image, mask, names = _scene(64)
    picture = render_prediction(image, mask, names)
    assert isinstance(picture, Image.Image) and picture.mode == "RGB"
    # 64 px is enlarged 4 times, to 256 px panels.
    scale, panel = 4, 256
    width, height = picture.size
    assert height >= panel + 2 * M and width > 3 * M + 2 * panel
    pixels = np.asarray(picture)  # [height, width, 3]
    expected_overlay = overlay(image, mask, palette(8))
    for y, x in [(0, 0), (10, 50), (40, 5), (63, 63), (50, 40), (20, 20)]:
        # The middle of the enlarged pixel (x, y) in the left panel, then in the right one.
        top, left = M + scale * y + scale // 2, M + scale * x + scale // 2
        np.testing.assert_array_equal(pixels[top, left], expected_overlay[y, x])
        np.testing.assert_array_equal(pixels[top, left + panel + M], image[y, x])
    # Nearest enlargement: all of a 4 x 4 block is one source pixel.
    block = pixels[M + 4 * 10 : M + 4 * 11, M + 4 * 7 : M + 4 * 8]
    assert (block == expected_overlay[10, 7]).all()


def test_render_prediction_legend_lists_present_classes_only() -> None:
    image, mask, names = _scene(64)
    colors = palette(8)
    pixels = np.asarray(render_prediction(image, mask, names, colors=colors))
    found = _legend_colors(pixels, 256)
    inner = (draw._SWATCH - 2) ** 2  # a swatch without its outline
    for present in (1, 3, 5):
        assert found.get(tuple(int(v) for v in colors[present]), 0) >= inner, present
    # Absent classes (0 is left out: its dark grey can occur in the anti-aliased text).
    for absent in (2, 4, 6, 7):
        assert tuple(int(v) for v in colors[absent]) not in found, absent


def test_render_prediction_legend_order_is_largest_share_first() -> None:
    image, mask, names = _scene(64)
    colors = palette(8)
    pixels = np.asarray(render_prediction(image, mask, names, colors=colors))
    legend = pixels[:, 3 * M + 2 * 256 :]

    def top_row(index: int) -> int:
        rows = np.flatnonzero((legend == colors[index]).all(axis=-1).any(axis=1))
        return int(rows[0])

    shares = class_shares(mask, names)
    assert [s["index"] for s in shares] == [3, 1, 5]
    assert top_row(3) < top_row(1) < top_row(5)


def test_render_prediction_without_legend_and_large_image() -> None:
    image, mask, names = _scene(64)
    picture = render_prediction(image, mask, names, legend=False)
    assert picture.size == (3 * M + 2 * 256, 2 * M + 256)
    # Large enough: no enlargement, and the panels hold the pixels one to one.
    big_image = np.repeat(np.repeat(image, 5, axis=0), 5, axis=1)  # [320, 320, 3]
    big_mask = np.repeat(np.repeat(mask, 5, axis=0), 5, axis=1)
    big = np.asarray(render_prediction(big_image, big_mask, names, legend=False))
    assert big.shape == (2 * M + 320, 3 * M + 640, 3)
    np.testing.assert_array_equal(big[M : M + 320, 2 * M + 320 : 2 * M + 640], big_image)


def test_render_prediction_many_classes_wrap_into_columns() -> None:
    # 40 classes present in a 64 px image: more lines than fit beside 256 px panels.
    mask = (np.arange(64 * 64).reshape(64, 64) % 40).astype(np.int64)
    names = [f"c{i}" for i in range(40)]
    image = np.zeros((64, 64, 3), np.uint8)
    picture = render_prediction(image, mask, names)
    assert picture.size[1] == 2 * M + 256  # no taller than the panels
    found = _legend_colors(np.asarray(picture), 256)
    colors = palette(40)
    assert all(tuple(int(v) for v in colors[i]) in found for i in range(1, 40))


def test_render_prediction_all_ignored_and_small_wide_image() -> None:
    image = np.zeros((4, 100, 3), np.uint8)
    picture = render_prediction(image, np.full((4, 100), IGNORE), ["a"])
    # Shorter side 4 wants x64, but the longer side may not pass 2048 px: x20.
    assert picture.size[1] >= 2 * M + 80
    assert picture.size[0] > 3 * M + 2 * 2000


def test_render_prediction_rejects_bad_inputs() -> None:
    image, mask, names = _scene(16)
    with pytest.raises(ValueError, match=r"mask values 5 .*4 class names"):
        render_prediction(image, mask, names[:4], colors=palette(8))
    with pytest.raises(ValueError, match=r"\(8, 16\).*\(16, 16\)"):
        render_prediction(image, mask[:8], names)


def test_drawing_without_pillow_names_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    image, mask, names = _scene(16)
    monkeypatch.setitem(sys.modules, "PIL", None)  # "import PIL" now fails
    with pytest.raises(MissingDependencyError, match="Pillow"):
        render_prediction(image, mask, names)
    # What needs only numpy still works.
    assert class_shares(mask, names)[0]["index"] == 3
    overlay(image, mask, palette(8))


# --- save_prediction -----------------------------------------------------------------------


def test_save_prediction_writes_png_atomically(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    image, mask, names = _scene(32)
    calls: list[str] = []
    real_write = draw.atomic_write_bytes

    def spy(path, payload: bytes) -> None:
        calls.append(str(path))
        assert payload.startswith(b"\x89PNG\r\n\x1a\n")  # encoded in memory, in one piece
        real_write(path, payload)

    monkeypatch.setattr(draw, "atomic_write_bytes", spy)
    target = tmp_path / "out" / "pred.png"
    save_prediction(target, image, mask, names, alpha=0.7)
    assert calls == [str(target)]
    assert sorted(p.name for p in target.parent.iterdir()) == ["pred.png"]  # no temporary left
    with Image.open(target) as saved:
        assert saved.format == "PNG" and saved.mode == "RGB"
        np.testing.assert_array_equal(
            np.asarray(saved), np.asarray(render_prediction(image, mask, names, alpha=0.7))
        )


def test_save_prediction_failure_leaves_old_file(tmp_path) -> None:
    image, mask, names = _scene(16)
    target = tmp_path / "pred.png"
    target.write_bytes(b"old")
    with pytest.raises(ValueError, match="mask values"):
        save_prediction(target, image, mask, names[:2])
    assert target.read_bytes() == b"old"
    with pytest.raises(ValueError, match=r"\.png"):
        save_prediction(tmp_path / "pred.jpg", image, mask, names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.png"]


def test_save_prediction_png_round_trip_is_lossless(tmp_path) -> None:
    image, mask, names = _scene(16)
    save_prediction(tmp_path / "a.PNG", image, mask, names, legend=False)
    data = (tmp_path / "a.PNG").read_bytes()
    with Image.open(io.BytesIO(data)) as saved:
        picture = np.asarray(saved)
    panel = 16 * 16  # 16 px enlarged 16 times
    np.testing.assert_array_equal(
        picture[M : M + panel : 16, 2 * M + panel : 2 * M + 2 * panel : 16], image
    )


def test_detections_are_drawn_in_their_class_colours_inside_the_picture(tmp_path) -> None:
    from internimage.draw import render_detections, save_detections

    image = np.full((64, 80, 3), 30, np.uint8)
    masks = np.zeros((2, 64, 80), bool)
    masks[0, 10:30, 10:30] = True
    masks[1, 40:60, 60:80] = True
    boxes = np.array([[10, 10, 30, 30], [60, 40, 80, 60]], float)
    colors = np.array([[255, 0, 0], [0, 0, 255]], np.uint8)
    picture = np.asarray(render_detections(image, boxes, [1, 2], [0.9, 0.6], ["a", "b"],
                                           masks=masks, colors=colors, alpha=0.5))
    scale = draw._scale_factor(64, 80)
    assert picture.shape == (64 * scale + 2 * M, 80 * scale + 2 * M, 3)

    def at(y: int, x: int) -> list[int]:  # image pixel (y, x) in the picture
        return picture[M + y * scale + scale // 2, M + x * scale + scale // 2].tolist()

    assert at(20, 20) == [142, 15, 15]  # (30 + 255) / 2 rounded, red mask
    assert at(50, 70) == [15, 15, 142]  # blue mask
    assert at(5, 50) == [30, 30, 30]  # untouched background
    # The box outline is in the class colour on the box's left edge.
    assert picture[M + 20 * scale, M + 10 * scale].tolist() == [255, 0, 0]
    with pytest.raises(ValueError, match=r"labels must be 1\.\.2"):
        render_detections(image, boxes, [1, 3], [0.9, 0.6], ["a", "b"])
    with pytest.raises(ValueError, match=r"masks must be \[2, 64, 80\]"):
        render_detections(image, boxes, [1, 2], [0.9, 0.6], ["a", "b"], masks=masks[:, :10])
    path = tmp_path / "d.png"
    save_detections(path, image, boxes, [1, 2], [0.9, 0.6], ["a", "b"], masks=masks)
    assert Image.open(path).size == (picture.shape[1], picture.shape[0])
    with pytest.raises(ValueError, match=r"should end in \.png"):
        save_detections(tmp_path / "d.jpg", image, boxes, [1, 2], [0.9, 0.6], ["a", "b"])
    assert not (tmp_path / "d.jpg").exists()
