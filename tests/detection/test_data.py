"""The COCO reader (polygons, RLE, crowd, empty images), the scenes as COCO, batching, the flip,
and every bad input as a clear message."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("torchvision", reason="the det extra is not installed")
mask_api = pytest.importorskip("pycocotools.mask", reason="the det extra is not installed")

from internimage.data.scenes import generate_scene, write_scenes_coco  # noqa: E402
from internimage.detection.data import (  # noqa: E402
    CocoDetectionDataset,
    DegenerateBoxWarning,
    collate_detection,
    flip_detection,
)
from internimage.errors import DataError, MissingFileError  # noqa: E402

H, W = 16, 20


def _rle(mask: np.ndarray) -> dict:
    rle = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths of the column-major pixels, zeros first."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    runs, current, count = [], 0, 0
    for value in flat:
        if value == current:
            count += 1
        else:
            runs.append(count)
            current, count = value, 1
    runs.append(count)
    return {"size": [mask.shape[0], mask.shape[1]], "counts": runs}


def _write(tmp_path: Path, annotations: list[dict], images: list[dict] | None = None,
           categories: list[dict] | None = None) -> Path:
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    images = images if images is not None else [
        {"id": 7, "file_name": "a.png", "width": W, "height": H},
        {"id": 9, "file_name": "b.png", "width": W, "height": H},
    ]
    for info in images:
        Image.fromarray(np.full((info["height"], info["width"], 3), 40, np.uint8)).save(
            folder / info["file_name"])
    categories = categories if categories is not None else [
        {"id": 5, "name": "five"}, {"id": 2, "name": "two"}]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}))
    return path


def _square(top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_polygons_rle_and_crowd(tmp_path: Path) -> None:
    rle_mask, crowd_mask = _square(8, 12, 5), _square(0, 0, 3)
    annotations = [
        # A polygon around pixels 2..5 (x) and 1..4 (y): corners on pixel edges.
        {"id": 1, "image_id": 7, "category_id": 5, "bbox": [2, 1, 4, 4], "iscrowd": 0,
         "area": 16, "segmentation": [[2, 1, 6, 1, 6, 5, 2, 5]]},
        {"id": 2, "image_id": 7, "category_id": 2, "bbox": [12, 8, 5, 5], "iscrowd": 0,
         "area": 25, "segmentation": _rle(rle_mask)},
        {"id": 3, "image_id": 7, "category_id": 2, "bbox": [0, 0, 3, 3], "iscrowd": 1,
         "area": 9, "segmentation": _uncompressed_rle(crowd_mask)},
    ]
    data = CocoDetectionDataset(tmp_path / "images", _write(tmp_path, annotations))
    assert data.classes == ("two", "five") and data.category_ids == (2, 5)
    assert data.image_ids == (7, 9) and len(data) == 2
    image, target = data[0]
    assert image.shape == (3, H, W) and image.dtype == torch.uint8
    assert target["labels"].tolist() == [2, 1]  # id 5 -> label 2, id 2 -> label 1; crowd out
    torch.testing.assert_close(target["boxes"], torch.tensor([[2.0, 1, 6, 5], [12, 8, 17, 13]]))
    polygon = target["masks"][0].numpy().astype(bool)
    ys, xs = np.nonzero(polygon)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (2, 5, 1, 4)
    assert np.array_equal(target["masks"][1].numpy().astype(bool), rle_mask)
    assert int(target["image_id"]) == 7
    # The crowd region stays in the ground truth that COCO's evaluation reads.
    assert data.coco.anns[3]["iscrowd"] == 1
    assert np.array_equal(data.coco.annToMask(data.coco.anns[3]).astype(bool), crowd_mask)
    _, empty = data[1]
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, H, W)

    kept = CocoDetectionDataset(tmp_path / "images", tmp_path / "instances.json",
                                keep_empty=False)
    assert kept.image_ids == (7,)


def test_degenerate_boxes_are_dropped_with_one_warning(tmp_path: Path) -> None:
    good = {"id": 1, "image_id": 7, "category_id": 2, "bbox": [1, 1, 4, 4], "iscrowd": 0,
            "area": 16, "segmentation": _rle(_square(1, 1, 4))}
    bad = [{**good, "id": 10, "bbox": [3, 3, 0, 5]},
           {**good, "id": 11, "bbox": [3, 3, 4, -2]},
           {**good, "id": 12, "bbox": [W + 5, 2, 4, 4]},
           {**good, "id": 13, "bbox": [-9, -9, 5, 5]}]
    clipped = {**good, "id": 14, "bbox": [W - 2, H - 3, 10, 10]}
    path = _write(tmp_path, [good, *bad, clipped])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = CocoDetectionDataset(tmp_path / "images", path)
    messages = [str(w.message) for w in caught if issubclass(w.category, DegenerateBoxWarning)]
    assert len(messages) == 1 and "dropped 4 annotation(s)" in messages[0]
    assert "10, 11, 12" in messages[0] and str(path) in messages[0]
    assert data.dropped_boxes == 4
    _, target = data[0]
    torch.testing.assert_close(target["boxes"], torch.tensor([[1.0, 1, 5, 5],
                                                              [W - 2, H - 3, W, H]]))
    assert torch.isfinite(target["boxes"]).all()


def test_bad_annotation_files_are_named(tmp_path: Path) -> None:
    ann = {"id": 4, "image_id": 7, "category_id": 3, "bbox": [1, 1, 4, 4], "iscrowd": 0,
           "area": 16, "segmentation": _rle(_square(1, 1, 4))}
    path = _write(tmp_path, [ann])
    with pytest.raises(DataError, match=r"annotation 4 .*category_id 3.*\[2, 5\]"):
        CocoDetectionDataset(tmp_path / "images", path)
    path = _write(tmp_path, [{**ann, "category_id": 2, "image_id": 8}])
    with pytest.raises(DataError, match=r"annotation 4 .*image_id 8"):
        CocoDetectionDataset(tmp_path / "images", path)
    path = _write(tmp_path, [{k: v for k, v in ann.items() if k != "category_id"}])
    with pytest.raises(DataError, match=r"annotation 4 .*lacks 'category_id'"):
        CocoDetectionDataset(tmp_path / "images", path)
    path = _write(tmp_path, [{**ann, "category_id": 2}])
    (tmp_path / "images" / "b.png").unlink()
    with pytest.raises(MissingFileError, match=r"image 9 .*b\.png"):
        CocoDetectionDataset(tmp_path / "images", path)
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"instances\.json is not JSON"):
        CocoDetectionDataset(tmp_path / "images", path)
    path.write_text(json.dumps({"images": [], "annotations": {}}))
    with pytest.raises(DataError, match=r"not COCO instances JSON: no 'annotations' list"):
        CocoDetectionDataset(tmp_path / "images", path)
    with pytest.raises(MissingFileError, match="does not exist"):
        CocoDetectionDataset(tmp_path / "images", tmp_path / "absent.json")


def test_an_image_whose_size_differs_from_its_record_is_named(tmp_path: Path) -> None:
    images = [{"id": 3, "file_name": "a.png", "width": W, "height": H}]
    path = _write(tmp_path, [], images=images)
    Image.fromarray(np.zeros((H + 1, W, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    data = CocoDetectionDataset(tmp_path / "images", path)
    with pytest.raises(DataError, match=rf"image 3 \(a\.png\) is {W}x{H + 1} pixels"):
        data[0]


def test_scenes_read_back_as_their_instances(tmp_path: Path) -> None:
    root = write_scenes_coco(tmp_path, train_count=2, val_count=2, seed=1, size=64)
    data = CocoDetectionDataset(root / "val", root / "annotations" / "instances_val.json")
    assert len(data.classes) == 10 and data.category_ids == tuple(range(1, 11))
    for index in range(2):
        scene = generate_scene("validation", index, seed=1, size=64)
        image, target = data[index]
        assert torch.equal(image, torch.from_numpy(scene.image).permute(2, 0, 1))
        assert target["labels"].tolist() == [i.category + 1 for i in scene.instances]
        assert target["boxes"].tolist() == [list(map(float, i.box)) for i in scene.instances]
        for mask, inst in zip(target["masks"], scene.instances, strict=True):
            assert np.array_equal(mask.numpy().astype(bool), inst.mask)


def test_collate_pads_and_the_flip_keeps_boxes_on_their_masks() -> None:
    torch.manual_seed(0)
    masks = torch.stack([torch.from_numpy(_square(2, 3, 6)), torch.from_numpy(_square(9, 12, 4))]
                        ).to(torch.uint8)
    target = {"boxes": torch.tensor([[3.0, 2, 9, 8], [12, 9, 16, 13]]),
              "labels": torch.tensor([1, 2]), "masks": masks}
    image = torch.randint(0, 255, (3, H, W), dtype=torch.uint8)
    flipped_image, flipped = flip_detection(image, target)
    assert torch.equal(flipped_image, image.flip(-1))
    for box, mask in zip(flipped["boxes"], flipped["masks"], strict=True):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1,
                                ys.max().item() + 1]
    assert torch.equal(target["boxes"][0], torch.tensor([3.0, 2, 9, 8]))  # input unchanged

    small = torch.ones(3, 8, 10, dtype=torch.uint8)
    images, targets = collate_detection([(image, target), (small, {"boxes": torch.zeros(0, 4)})])
    assert images.shape == (2, 3, H, W)
    assert torch.equal(images[1, :, :8, :10], small) and images[1, :, 8:].eq(0).all()
    assert [t["size"].tolist() for t in targets] == [[H, W], [8, 10]]


def test_the_detectors_resize_moves_boxes_and_masks_with_the_image() -> None:
    from internimage.detection import DetectorHeads, DetectorSettings, build_mask_rcnn
    from internimage.models import create_model

    backbone = create_model("internimage_atto", num_classes=0, depths=(1, 1, 1, 1))
    model = build_mask_rcnn(backbone, num_classes=2, heads=DetectorHeads(fpn_channels=16),
                            settings=DetectorSettings(min_size=96, max_size=200))
    masks = torch.from_numpy(np.stack([_square(2, 3, 6), _square(9, 12, 4)])).to(torch.uint8)
    target = {"boxes": torch.tensor([[3.0, 2, 9, 8], [12, 9, 16, 13]]),
              "labels": torch.tensor([1, 2]), "masks": masks}
    image = torch.rand(3, H, W)
    model.train()
    batch, (resized,) = model.transform([image], [target])
    scale = 96 / H  # the shorter side (16) becomes 96; the longer (20) 120 <= 200
    assert batch.image_sizes == [(96, 120)]
    torch.testing.assert_close(resized["boxes"], target["boxes"] * scale)
    for box, mask in zip(resized["boxes"], resized["masks"], strict=True):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        # Nearest-neighbour masks: their extent equals the scaled box up to a pixel.
        extent = [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
        assert all(abs(a - b) <= 1 for a, b in zip(extent, box.tolist(), strict=True))
