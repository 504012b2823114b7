"""Fashion-MNIST scenes: determinism, source splits, masks and boxes, and the ADE20K writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from internimage.data import scenes
from internimage.data.fashion_mnist import FASHION_MNIST_CLASSES, load_bundled_subset
from internimage.data.scenes import (
    ITEM_THRESHOLD,
    MIN_VISIBLE_PIXELS,
    SCENE_CLASSES,
    generate_scene,
    generate_scenes,
    write_scenes_ade,
)
from internimage.errors import ConfigError, DataError
from internimage.segmentation.data import ADE20KDataset

SIZE = 64


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _expected_full_mask(item: np.ndarray, placement: tuple[int, int, int], size: int) -> np.ndarray:
    """Independent re-render: Pillow bilinear rescale, threshold, paste at the placement."""
    y, x, side = placement
    alpha = np.asarray(Image.fromarray(item).resize((side, side), Image.Resampling.BILINEAR))
    full = np.zeros((size, size), bool)
    full[y : y + side, x : x + side] = alpha > ITEM_THRESHOLD
    return full


def test_same_seed_same_bytes_other_seed_different(tmp_path: Path) -> None:
    first = write_scenes_ade(tmp_path / "a", train_count=4, val_count=2, seed=5, size=SIZE)
    second = write_scenes_ade(tmp_path / "b", train_count=4, val_count=2, seed=5, size=SIZE)
    other = write_scenes_ade(tmp_path / "c", train_count=4, val_count=2, seed=6, size=SIZE)
    a, b, c = _tree_bytes(first), _tree_bytes(second), _tree_bytes(other)
    assert len(a) == 2 * (4 + 2) + 2  # images, annotations, classes.txt, scenes.json
    assert a == b
    assert a.keys() == c.keys()
    for name in a:
        if name.startswith("images"):
            assert a[name] != c[name], name
    # In memory too, and independent of how many scenes are asked for.
    one = generate_scene("training", 3, seed=5, size=SIZE)
    assert np.array_equal(one.image, generate_scenes("training", 4, seed=5, size=SIZE)[3].image)


def test_training_scenes_use_only_train_items(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fake subset: train items are classes 0..4, test items classes 5..9, so any test item in a
    # training scene (or train item in a validation scene) shows up in the categories.
    rng = np.random.default_rng(0)
    real_train, _ = load_bundled_subset("train")

    def fake_subset(split: str) -> tuple[np.ndarray, np.ndarray]:
        images = real_train[:50].copy()
        labels = rng.integers(0, 5, 50) if split == "train" else rng.integers(5, 10, 50)
        return images, labels.astype(np.int64)

    scenes._source.cache_clear()
    monkeypatch.setattr(scenes, "load_bundled_subset", fake_subset)
    try:
        train = generate_scenes("training", 20, seed=1, size=SIZE)
        val = generate_scenes("validation", 20, seed=1, size=SIZE)
    finally:
        scenes._source.cache_clear()
    train_categories = {inst.category for s in train for inst in s.instances}
    val_categories = {inst.category for s in val for inst in s.instances}
    assert train_categories and train_categories <= set(range(5))
    assert val_categories and val_categories <= set(range(5, 10))


def test_split_sources_are_recorded_and_match_pixels() -> None:
    for split, source_split in (("training", "train"), ("validation", "test")):
        items, labels = load_bundled_subset(source_split)
        for scene in generate_scenes(split, 10, seed=2, size=SIZE):
            assert scene.source_split == source_split
            assert all(0 <= i < len(items) for i in scene.source_indices)
            for inst in scene.instances:
                assert inst.category == labels[inst.source_index]
                full = _expected_full_mask(items[inst.source_index], inst.placement, SIZE)
                # The visible mask is part of the source item's own silhouette.
                assert not (inst.mask & ~full).any()


def test_masks_agree_with_pixels_and_occlusion() -> None:
    items, _ = load_bundled_subset("train")
    occluded = 0
    for scene in generate_scenes("training", 25, seed=3, size=SIZE):
        image = scene.image.astype(np.float64)  # [H, W, 3]
        tint = np.asarray(scene.background, np.float64)
        covered = np.zeros((SIZE, SIZE), bool)
        # Front to back: an instance is its silhouette minus the kept instances in front of it.
        for inst in reversed(scene.instances):
            full = _expected_full_mask(items[inst.source_index], inst.placement, SIZE)
            expected = full & ~covered
            occluded += int((full & covered).any())
            assert np.array_equal(inst.mask, expected)
            assert inst.area >= MIN_VISIBLE_PIXELS
            covered |= inst.mask
            # Pixels: tint + (colour - tint) * (0.4 + 0.6 * intensity), plus noise of at most 8.
            y, x, side = inst.placement
            alpha = np.asarray(
                Image.fromarray(items[inst.source_index]).resize(
                    (side, side), Image.Resampling.BILINEAR
                )
            ) / 255.0
            window = inst.mask[y : y + side, x : x + side]
            weight = 0.4 + 0.6 * alpha[window]
            colour = np.asarray(inst.color, np.float64)
            painted = tint + (colour - tint) * weight[:, None]
            actual = image[y : y + side, x : x + side][window]
            assert np.abs(actual - painted).max() <= 8.5
            assert np.abs(actual - tint).mean() > 40  # clearly not background
        # Everything outside the instances is background.
        assert np.abs(image[~covered] - tint).max() <= 8
        # Instance masks are disjoint and make up the semantic mask.
        semantic = scene.semantic_mask()
        assert np.array_equal(semantic > 0, covered)
        for inst in scene.instances:
            assert (semantic[inst.mask] == inst.category + 1).all()
    assert occluded > 0  # the seed does exercise occlusion


def test_boxes_are_tight_around_visible_masks() -> None:
    for scene in generate_scenes("validation", 15, seed=4, size=SIZE):
        assert 1 <= len(scene.instances) <= 5
        for inst in scene.instances:
            x0, y0, x1, y1 = inst.box
            assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
            inside = np.zeros_like(inst.mask)
            inside[y0:y1, x0:x1] = True
            assert not (inst.mask & ~inside).any()
            # Tight: each edge row and column holds a mask pixel.
            assert inst.mask[y0, x0:x1].any() and inst.mask[y1 - 1, x0:x1].any()
            assert inst.mask[y0:y1, x0].any() and inst.mask[y0:y1, x1 - 1].any()


def test_tiny_instances_are_dropped_and_not_painted(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fake subset: class 0 items are full squares, class 9 items a single bright pixel, which no
    # rescale (<= 64/28 px per source pixel) makes 20 px large: they must vanish entirely.
    square = np.full((28, 28), 255, np.uint8)
    dot = np.zeros((28, 28), np.uint8)
    dot[14, 14] = 255
    items = np.stack([square, dot] * 10)
    labels = np.array([0, 9] * 10, np.int64)
    scenes._source.cache_clear()
    monkeypatch.setattr(scenes, "load_bundled_subset", lambda split: (items.copy(), labels.copy()))
    try:
        made = generate_scenes("training", 30, seed=3, size=128)
    finally:
        scenes._source.cache_clear()
    kept = [inst for scene in made for inst in scene.instances]
    assert kept and {inst.category for inst in kept} == {0}
    for scene in made:
        covered = np.zeros((128, 128), bool)
        for inst in scene.instances:
            covered |= inst.mask
        tint = np.asarray(scene.background)
        assert np.abs(scene.image[~covered].astype(np.int64) - tint).max() <= 8


def test_ade_writer_round_trip_both_label_conventions(tmp_path: Path) -> None:
    root = write_scenes_ade(tmp_path, train_count=5, val_count=3, seed=7, size=SIZE)
    assert root == tmp_path / "ADEChallengeData2016"
    assert (root / "classes.txt").read_text().splitlines() == list(SCENE_CLASSES)
    for split, count in (("training", 5), ("validation", 3)):
        expected = generate_scenes(split, count, seed=7, size=SIZE)
        with_background = ADE20KDataset(tmp_path, split, reduce_zero_label=False)
        reduced = ADE20KDataset(root, split, reduce_zero_label=True)
        assert with_background.classes == SCENE_CLASSES
        assert reduced.classes == FASHION_MNIST_CLASSES
        assert len(with_background) == len(reduced) == count
        for index, scene in enumerate(expected):
            image, mask = with_background[index]
            semantic = scene.semantic_mask().astype(np.int64)
            assert image.dtype == torch.uint8 and mask.dtype == torch.int64
            assert np.array_equal(image.permute(1, 2, 0).numpy(), scene.image)
            assert np.array_equal(mask.numpy(), semantic)
            _, reduced_mask = reduced[index]
            assert np.array_equal(reduced_mask.numpy(), np.where(semantic == 0, 255, semantic - 1))
    with Image.open(root / "annotations" / "training" / "scene_training_000000.png") as label:
        assert label.mode == "L"


def test_writer_skips_identical_set_and_rewrites_changed_one(tmp_path: Path) -> None:
    root = write_scenes_ade(tmp_path, train_count=3, val_count=2, seed=0, size=SIZE)
    probe = root / "images" / "training" / "scene_training_000000.png"
    probe.write_bytes(probe.read_bytes())  # same content, new mtime: a rewrite would change it
    stamp = (probe.stat().st_ino, probe.stat().st_mtime_ns)
    write_scenes_ade(tmp_path, train_count=3, val_count=2, seed=0, size=SIZE)
    assert (probe.stat().st_ino, probe.stat().st_mtime_ns) == stamp

    write_scenes_ade(tmp_path, train_count=2, val_count=2, seed=1, size=SIZE)
    names = sorted(p.name for p in (root / "images" / "training").iterdir())
    assert names == ["scene_training_000000.png", "scene_training_000001.png"]
    assert json.loads((root / "scenes.json").read_text())["seed"] == 1
    assert len(ADE20KDataset(root, "training", reduce_zero_label=False)) == 2

    # A missing file makes the set incomplete: it is written again.
    probe.unlink()
    write_scenes_ade(tmp_path, train_count=2, val_count=2, seed=1, size=SIZE)
    assert probe.is_file()


def test_writer_refuses_foreign_folder_and_bad_arguments(tmp_path: Path) -> None:
    foreign = tmp_path / "ADEChallengeData2016" / "images"
    foreign.mkdir(parents=True)
    (foreign / "mine.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="not written by write_scenes_ade"):
        write_scenes_ade(tmp_path, train_count=1, val_count=1, seed=0, size=SIZE)
    with pytest.raises(ConfigError):
        generate_scene("test", 0, seed=0)
    with pytest.raises(ConfigError):
        write_scenes_ade(tmp_path / "x", train_count=-1, val_count=1, seed=0)
    with pytest.raises(ConfigError):
        generate_scene("training", 0, seed=-3)


def test_the_coco_writer_holds_the_same_scenes_with_boxes_and_instance_masks(
    tmp_path: Path,
) -> None:
    coco_api = pytest.importorskip("pycocotools.coco", reason="the det extra is not installed")
    from internimage.data.scenes import write_scenes_coco

    root = write_scenes_coco(tmp_path, train_count=3, val_count=2, seed=4, size=SIZE)
    ade = write_scenes_ade(tmp_path, train_count=3, val_count=2, seed=4, size=SIZE)
    for split, folder, count in (("training", "train", 3), ("validation", "val", 2)):
        coco = coco_api.COCO(str(root / "annotations" / f"instances_{folder}.json"))
        assert sorted(coco.getCatIds()) == list(range(1, 11))
        assert [coco.cats[k + 1]["name"] for k in range(10)] == list(FASHION_MNIST_CLASSES)
        assert sorted(coco.getImgIds()) == list(range(1, count + 1))
        for index in range(count):
            scene = generate_scene(split, index, seed=4, size=SIZE)
            info = coco.imgs[index + 1]
            image_path = root / folder / info["file_name"]
            # The very pixels of the ADE layout's image.
            assert image_path.read_bytes() == (ade / "images" / split / info["file_name"]
                                               ).read_bytes()
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[index + 1]))
            assert len(anns) == len(scene.instances) >= 1
            for ann, inst in zip(anns, scene.instances, strict=True):
                assert ann["category_id"] == inst.category + 1 and ann["iscrowd"] == 0
                assert np.array_equal(coco.annToMask(ann).astype(bool), inst.mask)
                ys, xs = np.nonzero(inst.mask)
                assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(),
                                       ys.max() + 1 - ys.min()]
                assert ann["area"] == inst.mask.sum()
    manifest = root / "scenes.json"
    before = manifest.stat().st_mtime_ns
    assert write_scenes_coco(tmp_path, train_count=3, val_count=2, seed=4, size=SIZE) == root
    assert manifest.stat().st_mtime_ns == before  # found complete, not rewritten
    write_scenes_coco(tmp_path, train_count=1, val_count=2, seed=4, size=SIZE)
    assert sorted(p.name for p in (root / "train").iterdir()) == ["scene_training_000000.png"]
