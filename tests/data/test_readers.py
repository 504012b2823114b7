"""IDX files and the bundled Fashion-MNIST subset."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from internimage.data import (
    FASHION_MNIST_CLASSES,
    bundled_subset_path,
    load_bundled_subset,
    load_fashion_mnist,
    read_idx,
    write_idx,
)


def _idx_bytes(array: np.ndarray, code: int) -> bytes:
    # Written by hand here (not with write_idx) so the reader is checked against the format itself.
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + array.tobytes()


@pytest.mark.parametrize("compressed", [False, True])
def test_read_idx_images_and_labels(tmp_path: Path, compressed: bool) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    payload = _idx_bytes(images, 0x08)
    path = tmp_path / ("images.idx.gz" if compressed else "images.idx")
    path.write_bytes(gzip.compress(payload) if compressed else payload)
    np.testing.assert_array_equal(read_idx(path), images)


def test_read_idx_big_endian_ints(tmp_path: Path) -> None:
    values = np.array([[1, -2, 70000], [3, 4, -5]], dtype=np.int32)
    path = tmp_path / "ints.idx"
    path.write_bytes(_idx_bytes(values.astype(">i4"), 0x0C))
    out = read_idx(path)
    np.testing.assert_array_equal(out, values)
    assert out.dtype.byteorder in ("=", "<", "|")


def test_write_idx_round_trip(tmp_path: Path) -> None:
    values = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    write_idx(tmp_path / "x.gz", values, compress=True)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), values)


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"\x89PNG\r\n\x1a\n....")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "junk")
    truncated = _idx_bytes(np.zeros((4, 3), np.uint8), 0x08)[:-2]
    (tmp_path / "short").write_bytes(truncated)
    with pytest.raises(ValueError, match="needs 12 bytes"):
        read_idx(tmp_path / "short")


def test_load_fashion_mnist_from_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    written = {}
    for prefix, n, compress in (("train", 6, True), ("t10k", 4, False)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        suffix = ".gz" if compress else ""
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", images, compress=compress)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress=compress)
        written["train" if prefix == "train" else "test"] = (images, labels)
    for split, (images, labels) in written.items():
        got_images, got_labels = load_fashion_mnist(tmp_path, split)
        np.testing.assert_array_equal(got_images, images)
        np.testing.assert_array_equal(got_labels, labels.astype(np.int64))
    with pytest.raises(ValueError, match="unknown Fashion-MNIST split"):
        load_fashion_mnist(tmp_path, "validation")


def test_load_fashion_mnist_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="IDX files"):
        load_fashion_mnist(tmp_path / "nowhere", "train")


def test_bundled_subset_is_balanced_and_traceable() -> None:
    assert bundled_subset_path().stat().st_size < 12_000_000
    assert (bundled_subset_path().parent / "FASHION_MNIST_LICENSE.txt").is_file()
    for split, per_class in (("train", 2000), ("test", 200)):
        images, labels = load_bundled_subset(split)
        assert images.shape == (10 * per_class, 28, 28) and images.dtype == np.uint8
        assert Counter(labels.tolist()) == {c: per_class for c in range(10)}
        # Real images, not blanks: Fashion-MNIST has a dark background and a bright object.
        assert 40 < images.mean() < 110
    with np.load(bundled_subset_path()) as archive:
        for split in ("train", "test"):
            source = archive[f"{split}_source_index"]
            assert len(np.unique(source)) == len(source)


def test_bundled_subset_matches_the_full_set_when_installed() -> None:
    try:
        full_images, full_labels = load_fashion_mnist(None, "test")
    except FileNotFoundError:
        pytest.skip("full Fashion-MNIST IDX files not installed (Debian dataset-fashion-mnist)")
    images, labels = load_bundled_subset("test")
    with np.load(bundled_subset_path()) as archive:
        source = archive["test_source_index"]
    np.testing.assert_array_equal(full_images[source], images)
    np.testing.assert_array_equal(full_labels[source], labels)


def test_fashion_mnist_class_names() -> None:
    assert len(FASHION_MNIST_CLASSES) == 10 and FASHION_MNIST_CLASSES[9] == "Ankle boot"
