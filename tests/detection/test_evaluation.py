"""COCO evaluation of detections: results in COCO's format, AP on a hand-made set with a known
answer, and the predictions of two processes gathered like one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("torchvision", reason="the det extra is not installed")
coco_api = pytest.importorskip("pycocotools.coco", reason="the det extra is not installed")

from internimage.detection.task import coco_results, evaluate_coco  # noqa: E402
from internimage.train.launch import free_port  # noqa: E402

H, W = 100, 120


def _ground_truth(tmp_path: Path) -> object:
    # One object of 40 x 40 pixels (COCO's "medium" size range) in image 1; image 2 is empty.
    rle_box = np.zeros((H, W), np.uint8)
    rle_box[20:60, 30:70] = 1
    from pycocotools import mask as mask_api

    rle = mask_api.encode(np.asfortranarray(rle_box))
    payload = {
        "images": [{"id": 1, "file_name": "a.png", "width": W, "height": H},
                   {"id": 2, "file_name": "b.png", "width": W, "height": H}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [30, 20, 40, 40],
                         "area": 1600, "iscrowd": 0,
                         "segmentation": {"size": [H, W],
                                          "counts": rle["counts"].decode("ascii")}}],
        "categories": [{"id": 3, "name": "three"}, {"id": 8, "name": "eight"}],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(payload))
    return coco_api.COCO(str(path))


def _output(boxes: list[list[float]], labels: list[int], scores: list[float]) -> dict:
    masks = torch.zeros(len(boxes), 1, H, W)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        masks[i, 0, int(y1) : int(y2), int(x1) : int(x2)] = 0.9
    return {"boxes": torch.tensor(boxes).reshape(-1, 4), "labels": torch.tensor(labels),
            "scores": torch.tensor(scores), "masks": masks}


def test_results_are_in_coco_format() -> None:
    results = coco_results([_output([[30, 20, 70, 60]], [1], [0.9]), _output([], [], [])],
                           [1, 2], (3, 8))
    assert len(results) == 1
    (entry,) = results
    assert entry["image_id"] == 1 and entry["category_id"] == 3
    assert entry["bbox"] == [30, 20, 40, 40] and entry["score"] == pytest.approx(0.9)
    from pycocotools import mask as mask_api

    decoded = mask_api.decode({**entry["segmentation"],
                               "counts": entry["segmentation"]["counts"].encode()})
    assert decoded.sum() == 1600 and decoded[20:60, 30:70].all()


def test_average_precision_of_a_hand_made_case(tmp_path: Path) -> None:
    gt = _ground_truth(tmp_path)
    perfect = coco_results([_output([[30, 20, 70, 60]], [1], [0.9])], [1], (3, 8))
    metrics = evaluate_coco(gt, perfect, [1, 2])
    for kind in ("bbox", "segm"):
        assert metrics[f"{kind}_AP"] == pytest.approx(100.0)
        assert metrics[f"{kind}_APm"] == pytest.approx(100.0)
        assert metrics[f"{kind}_APs"] == 0.0 and metrics[f"{kind}_APl"] == 0.0  # no such objects
    # A class-3 false positive on the empty image, ranked above the true detection: class 3's
    # precision is 1/2 at every recall level, so COCO's 101-point interpolated AP is exactly
    # 50 at every IoU threshold. The detection of class 8 (which has no object) is left out of
    # the mean over classes.
    ranked = coco_results(
        [_output([[30, 20, 70, 60], [0, 70, 20, 90]], [1, 2], [0.9, 0.99]),
         _output([[50, 50, 90, 90]], [1], [0.95])], [1, 2], (3, 8))
    metrics = evaluate_coco(gt, ranked, [1, 2])
    for kind in ("bbox", "segm"):
        for name in ("AP", "AP50", "AP75", "APm"):
            assert metrics[f"{kind}_{name}"] == pytest.approx(50.0), (kind, name)
    # Only image 1 counted: the false positive of image 2 is out, AP is 100 again.
    assert evaluate_coco(gt, ranked, [1])["bbox_AP"] == pytest.approx(100.0)
    assert evaluate_coco(gt, [], [1, 2]) == {f"{k}_{n}": 0.0 for k in ("bbox", "segm")
                                             for n in ("AP", "AP50", "AP75", "APs", "APm",
                                                       "APl")}


class _Oracle(torch.nn.Module):
    """Returns, for each image, a box at a place given by the image's mean pixel value."""

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for image in images:
            shift = float(image.mean()) * 40
            out.append(_output([[30 + shift, 20, 70 + shift, 60]], [1], [0.5 + shift / 100]))
        return out


def _evaluate_on(rank: int, world: int, port: int, tmp: str, queue: mp.Queue) -> None:
    from internimage.detection.task import DetectionTask
    from internimage.train import PRESETS, apply_overrides

    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        task = DetectionTask(apply_overrides(PRESETS["fashion-mnist-scenes-detection"], []))
        task.category_ids = (3, 8)
        task._ground_truth = _ground_truth(Path(tmp) / str(rank))
        images = [torch.full((3, H, W), v, dtype=torch.uint8) for v in (0, 64, 128, 255)]
        batches = [
            (torch.stack(images[i : i + 1]), [{"image_id": torch.tensor(1 + i % 2),
                                              "size": torch.tensor([H, W])}])
            for i in range(4) if i % world == rank
        ]
        metrics = task.evaluate(_Oracle(), batches, torch.device("cpu"), None)
        queue.put((rank, metrics))
    finally:
        if world > 1:
            dist.destroy_process_group()


def test_two_processes_evaluate_like_one(tmp_path: Path) -> None:
    for rank in range(2):
        (tmp_path / str(rank)).mkdir()
    context = mp.get_context("spawn")
    queue = context.Queue()
    _evaluate_on(0, 1, 0, str(tmp_path), queue)
    _, single = queue.get(timeout=60)
    port = free_port()
    procs = [context.Process(target=_evaluate_on, args=(r, 2, port, str(tmp_path), queue))
             for r in range(2)]
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=180) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert got[0] == got[1] == single
    assert 0 < single["bbox_AP"] < 100  # the shifted boxes make a non-trivial answer
