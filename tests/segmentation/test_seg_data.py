"""Segmentation readers (folder, ADE20K layout), padded collation and batched augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from internimage.errors import ConfigError, DataError, MissingFileError
from internimage.segmentation.augment import SegmentationAugmentation, photometric_distortion
from internimage.segmentation.data import (
    ADE20K_CLASSES,
    ADE20KDataset,
    SegmentationFolderDataset,
    collate_padded,
    collate_segmentation,
)

CLASSES = ("background", "cat", "dog")


def _palette_image(indices: np.ndarray) -> Image.Image:
    """A "P" image whose palette colours are far from their indices (index i -> 250 - 40 i)."""
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    palette = []
    for i in range(256):
        palette += [max(250 - 40 * i, 0), 17, 200]
    image.putpalette(palette)
    return image


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """images/ and masks/ with greyscale, palette, RGBA and 16-bit images; L, P, 16-bit masks.

    Returns the two folders and, per stem, the expected ``(rgb [H, W, 3], labels [H, W])``.
    """
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    expected = {}

    grey = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    Image.fromarray(grey).save(images / "a_grey.png")
    labels = rng.integers(0, 3, (5, 7))
    labels[0, 0] = 255  # the ignore index is allowed
    Image.fromarray(labels.astype(np.uint8)).save(masks / "a_grey.png")
    expected["a_grey"] = (np.repeat(grey[:, :, None], 3, axis=2), labels)

    indices = rng.integers(0, 4, (6, 4))
    _palette_image(indices).save(images / "b_palette.png")
    colours = np.asarray(_palette_image(indices).convert("RGB"))
    labels = rng.integers(0, 3, (6, 4))
    _palette_image(labels).save(masks / "b_palette.png")
    expected["b_palette"] = (colours, labels)

    rgba = rng.integers(0, 256, (4, 4, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(images / "c_rgba.png")
    labels = rng.integers(0, 3, (4, 4))
    Image.fromarray(labels.astype(np.uint16)).save(masks / "c_rgba.png")  # 16-bit mask
    expected["c_rgba"] = (rgba[:, :, :3], labels)

    deep = np.array([[0, 65535], [257, 32768]], np.uint16)
    Image.fromarray(deep).save(images / "d_deep.png")  # 16-bit image, scaled by to_rgb8
    labels = np.array([[1, 2], [0, 1]])
    Image.fromarray(labels.astype(np.uint8)).save(masks / "d_deep.jpg.png")
    (masks / "d_deep.jpg.png").rename(masks / "d_deep.png")
    expected["d_deep"] = (
        np.repeat(np.array([[0, 255], [1, 128]], np.uint8)[:, :, None], 3, axis=2),
        labels,
    )
    return images, masks, expected


def test_folder_reader_reads_pixels_and_indices(tree) -> None:
    images, masks, expected = tree
    dataset = SegmentationFolderDataset(images, masks, CLASSES)
    assert len(dataset) == 4 and dataset.num_classes == 3
    for index, stem in enumerate(sorted(expected)):
        image, mask = dataset[index]
        rgb, labels = expected[stem]
        assert image.dtype == torch.uint8 and image.shape == (3, *labels.shape)
        assert mask.dtype == torch.int64
        assert np.array_equal(image.permute(1, 2, 0).numpy(), rgb), stem
        assert np.array_equal(mask.numpy(), labels), stem


def test_reduce_zero_label_and_wide_masks(tmp_path: Path) -> None:
    images, masks = tmp_path / "i", tmp_path / "m"
    images.mkdir()
    masks.mkdir()
    Image.fromarray(np.zeros((2, 3), np.uint8)).save(images / "x.jpg")
    raw = np.array([[0, 1, 1000], [255, 2, 999]], np.uint16)
    Image.fromarray(raw).save(masks / "x.png")
    names = [f"c{i}" for i in range(1000)]
    reduced = SegmentationFolderDataset(
        images, masks, names, ignore_index=65535, reduce_zero_label=True
    )
    # 16-bit values are kept, not scaled: 0 -> ignored, k -> k - 1 (255 is a label here).
    assert reduced[0][1].tolist() == [[65535, 0, 999], [254, 1, 998]]
    with pytest.raises(DataError, match=r"value 1000 .*x\.png|x\.png.*value 1000"):
        SegmentationFolderDataset(images, masks, names, ignore_index=2000)[0]


def test_mask_errors_name_file_and_value(tree) -> None:
    images, masks, _ = tree
    Image.fromarray(np.full((5, 7), 3, np.uint8)).save(masks / "a_grey.png")
    dataset = SegmentationFolderDataset(images, masks, CLASSES)
    with pytest.raises(DataError) as caught:
        dataset[0]
    message = str(caught.value)
    assert "a_grey.png" in message and "value 3" in message and "\n" not in message
    # With reduce_zero_label the same file is fine for 3 classes (3 -> 2).
    reduced = SegmentationFolderDataset(images, masks, CLASSES, reduce_zero_label=True)
    assert reduced[0][1].max() == 2

    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(masks / "a_grey.png")
    with pytest.raises(DataError, match=r"a_grey\.png.*'RGB'.*index image"):
        dataset[0]

    Image.fromarray(np.zeros((6, 7), np.uint8)).save(masks / "a_grey.png")
    with pytest.raises(DataError, match=r"a_grey\.png is 7x5.*a_grey\.png is 7x6"):
        dataset[0]

    (masks / "a_grey.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read mask .*a_grey\.png"):
        dataset[0]

    (images / "a_grey.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match=r"cannot read image .*a_grey\.png"):
        dataset[0]


def test_pairing_errors_at_construction(tree, tmp_path: Path) -> None:
    images, masks, _ = tree
    (masks / "c_rgba.png").unlink()
    with pytest.raises(DataError, match=r"missing mask for .*c_rgba\.png"):
        SegmentationFolderDataset(images, masks, CLASSES)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(masks / "c_rgba.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(masks / "orphan.png")
    with pytest.raises(DataError, match=r"mask .*orphan\.png has no image"):
        SegmentationFolderDataset(images, masks, CLASSES)
    (masks / "orphan.png").unlink()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(images / "a_grey.jpg")
    with pytest.raises(DataError, match="share the stem 'a_grey'"):
        SegmentationFolderDataset(images, masks, CLASSES)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"empty holds no image files"):
        SegmentationFolderDataset(empty, masks, CLASSES)
    with pytest.raises(MissingFileError, match="nowhere"):
        SegmentationFolderDataset(tmp_path / "nowhere", masks, CLASSES)
    with pytest.raises(ConfigError, match="ignore_index"):
        SegmentationFolderDataset(images, masks, CLASSES, ignore_index=1)


def _ade_tree(root: Path, split: str = "training") -> None:
    data = root / "ADEChallengeData2016"
    (data / "images" / split).mkdir(parents=True)
    (data / "annotations" / split).mkdir(parents=True)
    Image.fromarray(np.full((3, 4, 3), 9, np.uint8)).save(data / "images" / split / "ADE_1.jpg")
    labels = np.array([[0, 1, 150, 2]] * 3, np.uint8)
    Image.fromarray(labels).save(data / "annotations" / split / "ADE_1.png")


def test_ade20k_layout_defaults_and_classes_file(tmp_path: Path) -> None:
    _ade_tree(tmp_path)
    assert len(ADE20K_CLASSES) == 150
    assert ADE20K_CLASSES[:5] == ("wall", "building", "sky", "floor", "tree")
    assert ADE20K_CLASSES[-2:] == ("clock", "flag")
    dataset = ADE20KDataset(tmp_path, "training")
    assert dataset.classes == ADE20K_CLASSES
    image, mask = dataset[0]
    assert image.shape == (3, 3, 4)
    assert mask[0].tolist() == [255, 0, 149, 1]
    inner = ADE20KDataset(tmp_path / "ADEChallengeData2016", "training", reduce_zero_label=False)
    assert len(inner.classes) == 151 and inner[0][1][0].tolist() == [0, 1, 150, 2]

    with pytest.raises(DataError, match=r"value 150 .*149 after reduce_zero_label"):
        ADE20KDataset(tmp_path, "training", classes=["a", "b", "c"])[0]
    (tmp_path / "ADEChallengeData2016" / "classes.txt").write_text(
        "\n".join(["bg", *[f"k{i}" for i in range(150)]]) + "\n"
    )
    assert ADE20KDataset(tmp_path, "training").classes[0] == "k0"
    assert ADE20KDataset(tmp_path, "training", reduce_zero_label=False).classes[0] == "bg"
    with pytest.raises(ConfigError, match="split"):
        ADE20KDataset(tmp_path, "train")
    with pytest.raises(MissingFileError, match="validation"):
        ADE20KDataset(tmp_path, "validation")
    with pytest.raises(MissingFileError, match="no ADE20K layout"):
        ADE20KDataset(tmp_path / "ADEChallengeData2016" / "images", "training")


def test_collate_padded_pads_images_and_masks() -> None:
    a = (torch.full((3, 2, 3), 7, dtype=torch.uint8), torch.ones(2, 3, dtype=torch.int64))
    b = (torch.full((3, 4, 1), 9, dtype=torch.uint8), torch.full((4, 1), 2, dtype=torch.int64))
    images, masks = collate_padded([a, b])
    assert images.shape == (2, 3, 4, 3) and images.dtype == torch.uint8
    assert masks.shape == (2, 4, 3) and masks.dtype == torch.int64
    assert (images[0, :, :2, :3] == 7).all() and (images[0, :, 2:] == 0).all()
    assert (masks[0, :2, :3] == 1).all() and (masks[0, 2:] == 255).all()
    assert (images[1, :, :, :1] == 9).all() and (images[1, :, :, 1:] == 0).all()
    assert (masks[1, :, :1] == 2).all() and (masks[1, :, 1:] == 255).all()
    _, masks = collate_padded([a, b], pad_value=5, ignore_index=-1)
    assert (masks[1, :, 1:] == -1).all()
    with pytest.raises(ValueError, match="batch item 0"):
        collate_padded([(torch.zeros(3, 2, 2), torch.zeros(3, 2))])


def test_collate_segmentation_records_each_size_before_padding() -> None:
    a = (torch.full((3, 2, 3), 7, dtype=torch.uint8), torch.ones(2, 3, dtype=torch.int64))
    b = (torch.full((3, 4, 1), 9, dtype=torch.uint8), torch.full((4, 1), 2, dtype=torch.int64))
    images, masks, sizes = collate_segmentation([a, b], ignore_index=-1)
    padded_images, padded_masks = collate_padded([a, b], ignore_index=-1)
    assert torch.equal(images, padded_images) and torch.equal(masks, padded_masks)
    assert sizes.tolist() == [[2, 3], [4, 1]] and sizes.dtype == torch.int64
    _, _, empty = collate_segmentation([])
    assert empty.shape == (0, 2)


def _coded_batch(batch: int = 4, size: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose first channel encodes the label (label / 10), for consistency checks."""
    masks = torch.randint(0, 5, (batch, size, size))
    images = torch.rand(batch, 3, size, size)
    images[:, 0] = masks.float() / 10.0
    return images, masks


def test_augmentation_shapes_labels_and_padding() -> None:
    images, masks = _coded_batch()
    masks[:, :3] = 255
    augment = SegmentationAugmentation((16, 20), scale_range=(0.5, 2.0))
    out_images, out_masks = augment(images, masks)
    assert out_images.shape == (4, 3, 16, 20) and out_masks.shape == (4, 16, 20)
    assert out_masks.dtype == torch.int64
    assert 0.0 <= float(out_images.min()) and float(out_images.max()) <= 1.0
    assert set(out_masks.unique().tolist()) <= {0, 1, 2, 3, 4, 255}

    # Smaller than the crop: padded bottom/right with 0 and the ignore index.
    small = SegmentationAugmentation(32, scale_range=(1.0, 1.0), ignore_index=99)
    out_images, out_masks = small(*_coded_batch(size=24))
    assert (out_masks[:, 24:] == 99).all() and (out_masks[:, :, 24:] == 99).all()
    assert (out_images[:, :, 24:] == 0).all() and (out_images[:, :, :, 24:] == 0).all()
    assert (out_masks[:, :24, :24] != 99).all()


def test_augmentation_crop_and_flip_keep_image_and_mask_together() -> None:
    images, masks = _coded_batch(batch=16)
    augment = SegmentationAugmentation(
        12, scale_range=(1.0, 1.0), hflip=0.5, photometric=False, cat_max_ratio=None
    )
    out_images, out_masks = augment(images, masks)
    assert torch.equal((out_images[:, 0] * 10).round().long(), out_masks)
    # Each output is an (optionally flipped) window of its input.
    flipped = 0
    for b in range(16):
        windows = images[b].unfold(1, 12, 1).unfold(2, 12, 1)  # [3, 13, 13, 12, 12]
        plain = (windows == out_images[b][:, None, None]).flatten(3).all(-1).all(0).any()
        mirror = (windows == out_images[b].flip(-1)[:, None, None]).flatten(3).all(-1).all(0).any()
        assert bool(plain) or bool(mirror)
        flipped += int(not plain)
    assert 0 < flipped < 16

    always = SegmentationAugmentation(24, scale_range=(1.0, 1.0), hflip=1.0, photometric=False)
    out_images, out_masks = always(images, masks)
    assert torch.equal(out_images, images.flip(-1)) and torch.equal(out_masks, masks.flip(-1))


def test_augmentation_rescale_uses_nearest_labels() -> None:
    masks = torch.tensor([[0, 7], [3, 255]]).repeat_interleave(8, 0).repeat_interleave(8, 1)
    images = torch.rand(1, 3, 16, 16)
    augment = SegmentationAugmentation(
        64, scale_range=(2.0, 2.0), hflip=0.0, photometric=False, cat_max_ratio=None
    )
    out_images, out_masks = augment(images, masks[None])
    expected = masks.repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert out_masks.shape == (1, 64, 64)
    assert torch.equal(out_masks[0, :32, :32], expected)
    assert (out_masks[0, 32:] == 255).all()
    assert set(out_masks.unique().tolist()) == {0, 3, 7, 255}
    # Odd ratios too: only input labels survive.
    odd = SegmentationAugmentation(20, scale_range=(0.37, 1.73))
    for _ in range(5):
        _, out = odd(images.repeat(3, 1, 1, 1), masks[None].repeat(3, 1, 1))
        assert set(out.unique().tolist()) <= {0, 3, 7, 255}


def test_augmentation_is_reproducible_under_manual_seed() -> None:
    images, masks = _coded_batch(batch=6, size=32)
    augment = SegmentationAugmentation(20)
    torch.manual_seed(11)
    first = augment(images, masks)
    torch.manual_seed(11)
    second = augment(images, masks)
    torch.manual_seed(12)
    third = augment(images, masks)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], third[0])


def test_cat_max_ratio_rejects_dominated_crops() -> None:
    # Left half class 1, right half class 2; a 16-wide crop of the 32-wide image keeps both
    # classes below 75 % only when it straddles the middle closely (about 7 in 17 offsets).
    masks = torch.ones(64, 8, 32, dtype=torch.int64)
    masks[:, :, 16:] = 2
    images = torch.rand(64, 3, 8, 32)

    def balanced_share(cat_max_ratio: float | None) -> int:
        augment = SegmentationAugmentation(
            (8, 16), scale_range=(1.0, 1.0), hflip=0.0, photometric=False,
            cat_max_ratio=cat_max_ratio,
        )
        _, out = augment(images, masks)
        ones = (out == 1).flatten(1).sum(1).float() / out[0].numel()
        return int(((ones > 0.25) & (ones < 0.75)).sum())

    assert balanced_share(0.75) >= 60
    assert balanced_share(None) <= 45


def test_photometric_distortion_stays_in_range_and_varies() -> None:
    images = torch.rand(8, 3, 10, 10)
    out = photometric_distortion(images)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert not torch.equal(out, images)
    augment = SegmentationAugmentation(10, scale_range=(1.0, 1.0), hflip=0.0)
    _, out_masks = augment(images, torch.zeros(8, 10, 10, dtype=torch.int64))
    assert (out_masks == 0).all()  # masks are never touched by the colour steps
    with pytest.raises(ConfigError):
        SegmentationAugmentation(0)
    with pytest.raises(ConfigError):
        SegmentationAugmentation(8, scale_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="masks"):
        augment(images, torch.zeros(8, 9, 10, dtype=torch.int64))
