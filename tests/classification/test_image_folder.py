"""Class-per-folder datasets: decoding, the evaluation transform and unreadable files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from internimage.classification.data import (
    ImageFolderDataset,
    UnreadableImageWarning,
    collate_skipping_unreadable,
)
from internimage.data import ResizeCenterCrop


def _make_tree(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for cls, fmt in (("cat", "PNG"), ("dog", "JPEG")):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, size=(20 + i, 30, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.{fmt.lower()}", format=fmt)
    # A grayscale image, which must come out as RGB.
    Image.fromarray(np.full((16, 16), 200, np.uint8), mode="L").save(root / "dog" / "gray.png")
    corrupt = root / "cat" / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (root / "cat" / "notes.txt").write_text("not an image")
    return corrupt


def test_folder_dataset_skips_corrupt_files_with_a_warning(tmp_path: Path) -> None:
    corrupt = _make_tree(tmp_path)
    dataset = ImageFolderDataset(tmp_path, ResizeCenterCrop(16))
    assert dataset.classes == ("cat", "dog")
    assert len(dataset) == 8  # 3 + broken + 3 + gray; the .txt file is not listed
    loader = DataLoader(dataset, batch_size=4, collate_fn=collate_skipping_unreadable)
    with pytest.warns(UnreadableImageWarning, match=str(corrupt)):
        batches = list(loader)
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    assert images.shape == (7, 3, 16, 16) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 1]


def test_folder_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ImageFolderDataset(tmp_path / "missing", ResizeCenterCrop(8))
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        ImageFolderDataset(tmp_path, ResizeCenterCrop(8))


def test_resize_center_crop_geometry() -> None:
    # A 40x20 (w x h) image, white in columns 6..33 and black outside: the shorter side becomes
    # 10 (width 20), the crop keeps the central 10 columns (originally 10..29), so no black
    # survives, while a crop of the wrong place or size would include black columns.
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, 6:34] = 255
    out = ResizeCenterCrop(10, 1.0)(Image.fromarray(pixels))
    assert out.shape == (3, 10, 10)
    assert out.min() >= 250
    # crop_fraction 0.5 resizes the shorter side to 20 and keeps its central half.
    out = ResizeCenterCrop(10, 0.5)(Image.fromarray(pixels))
    assert out.shape == (3, 10, 10) and out.min() >= 250


def test_resize_center_crop_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="crop_fraction"):
        ResizeCenterCrop(10, 1.5)
    with pytest.raises(TypeError, match="PIL image"):
        ResizeCenterCrop(10)(np.zeros((4, 4, 3), np.uint8))
