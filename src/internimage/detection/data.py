"""COCO-format instance datasets for the detector, batching, and the batched augmentation.

Items are ``(image uint8 [3, H, W], target)`` with ``target`` as torchvision's detectors take
it: ``boxes`` float32 ``[K, 4]`` (x1, y1, x2, y2 in pixels), ``labels`` int64 ``[K]`` (1..C,
0 is the background), ``masks`` uint8 ``[K, H, W]``, plus ``image_id`` (the COCO id). Category
ids map to labels in increasing id order (COCO's 80 ids 1..90 with gaps -> 1..80).

Resizing (keeping the aspect ratio, to several scales in training) is the detector's own
transform (torchvision's ``GeneralizedRCNNTransform``), which moves boxes and masks with the
image; :func:`flip_detection` is the flip.

What the reader checks when it is made (a clear message naming the file and the annotation or
image id): the file is COCO instances JSON, every annotation's category is declared, every
image file exists. Boxes of zero or negative size, and boxes that lie outside their image once
clipped to it, are dropped with one warning that counts them (a crash mid-epoch or a NaN loss is
what they would give otherwise). Crowd regions (``iscrowd`` 1) are not training targets; COCO's
evaluation ignores detections on them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from internimage.data.images import read_image
from internimage.errors import DataError, DataWarning, MissingDependencyError, MissingFileError

__all__ = [
    "CocoDetectionDataset",
    "DegenerateBoxWarning",
    "DetectionBatch",
    "collate_detection",
    "flip_detection",
]

#: ``(images uint8 [B, 3, H, W] zero-padded at the bottom and right, targets)``; each target
#: also holds ``size`` = ``(height, width)`` of its unpadded image.
DetectionBatch = tuple[torch.Tensor, list[dict[str, torch.Tensor]]]


class DegenerateBoxWarning(DataWarning):
    """Annotations whose boxes have no area inside their image were dropped."""


def _coco_api() -> Any:
    try:
        from pycocotools import coco
    except ImportError:
        raise MissingDependencyError(
            "reading COCO annotations needs pycocotools: pip install 'internimage[det]'"
        ) from None
    return coco


def _load_instances(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MissingFileError(f"annotation file {path} does not exist")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f"annotation file {path} is not JSON: {error}") from None
    if not isinstance(payload, Mapping):
        raise DataError(f"annotation file {path} is not COCO instances JSON (not an object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(payload.get(key), list):
            raise DataError(
                f"annotation file {path} is not COCO instances JSON: no {key!r} list"
            )
    return dict(payload)


class CocoDetectionDataset(Dataset):
    """Images of a folder with their COCO instance annotations (boxes and masks).

    Args:
        image_dir: Folder of the images (``file_name`` is relative to it).
        annotation_file: COCO instances JSON (polygons, RLE or uncompressed RLE masks).
        keep_empty: Keep images without a usable annotation (as negatives; mmdet's training
            pipelines drop them, its evaluation keeps them).

    Attributes:
        coco: The pycocotools ``COCO`` object (the ground truth for COCO's evaluation).
        classes: Category names in label order (label ``k + 1`` is ``classes[k]``).
        category_ids: The COCO id of each class.
        image_ids: The COCO ids of the images, in item order.
        dropped_boxes: How many annotations were dropped as degenerate.

    Raises:
        MissingFileError: The annotation file or an image file does not exist.
        DataError: The file is not COCO instances JSON, or an annotation names an undeclared
            category or image.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike[str],
        annotation_file: str | os.PathLike[str],
        *,
        keep_empty: bool = True,
    ) -> None:
        self.image_dir = Path(image_dir)
        path = Path(annotation_file)
        payload = _load_instances(path)
        for category in payload["categories"]:
            _require(category, ("id", "name"), "category", path)
        categories = sorted(payload["categories"], key=lambda c: int(c["id"]))
        self.category_ids = tuple(int(c["id"]) for c in categories)
        self.classes = tuple(str(c["name"]) for c in categories)
        if not self.classes:
            raise DataError(f"annotation file {path} declares no categories")
        self._label = {cid: k + 1 for k, cid in enumerate(self.category_ids)}
        images = {}
        for info in payload["images"]:
            _require(info, ("id", "file_name", "width", "height"), "image", path)
            images[int(info["id"])] = info
        for ann in payload["annotations"]:
            _require(ann, ("id", "image_id", "category_id"), "annotation", path)
            if int(ann["category_id"]) not in self._label:
                raise DataError(
                    f"annotation {ann.get('id')} in {path} has category_id {ann['category_id']}, "
                    f"which is not among the declared categories {list(self.category_ids)}"
                )
            if int(ann["image_id"]) not in images:
                raise DataError(
                    f"annotation {ann.get('id')} in {path} refers to image_id {ann['image_id']}, "
                    "which the file does not list"
                )
        for image_id, info in images.items():
            if not (self.image_dir / str(info["file_name"])).is_file():
                raise MissingFileError(
                    f"image {image_id} of {path} ({info['file_name']}) is not in {self.image_dir}"
                )

        coco_api = _coco_api()
        self.coco = coco_api.COCO()
        self.coco.dataset = payload
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            self.coco.createIndex()
        self._annotations: dict[int, list[dict[str, Any]]] = {i: [] for i in images}
        dropped: list[Any] = []
        for ann in payload["annotations"]:
            if ann.get("iscrowd", 0):
                continue
            info = images[int(ann["image_id"])]
            box = _clipped_box(ann.get("bbox"), int(info["width"]), int(info["height"]))
            if box is None:
                dropped.append(ann.get("id"))
                continue
            self._annotations[int(ann["image_id"])].append({**ann, "_box": box})
        self.dropped_boxes = len(dropped)
        if dropped:
            warnings.warn(
                f"dropped {len(dropped)} annotation(s) of {path} whose box has no area inside "
                f"its image (zero or negative size, or outside the image), e.g. id "
                f"{', '.join(map(str, dropped[:3]))}",
                DegenerateBoxWarning,
                stacklevel=2,
            )
        self.image_ids = tuple(
            i for i in sorted(images) if keep_empty or self._annotations[i]
        )
        self._images = images
        if not self.image_ids:
            raise DataError(f"{path} has no image with a usable annotation")

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image_id = self.image_ids[index]
        info = self._images[image_id]
        pixels = read_image(self.image_dir / str(info["file_name"]))  # [H, W, 3]
        height, width = pixels.shape[:2]
        if (height, width) != (int(info["height"]), int(info["width"])):
            raise DataError(
                f"image {image_id} ({info['file_name']}) is {width}x{height} pixels, its "
                f"annotation says {info['width']}x{info['height']}"
            )
        anns = self._annotations[image_id]
        boxes = torch.tensor([a["_box"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([self._label[int(a["category_id"])] for a in anns],
                              dtype=torch.int64)
        with warnings.catch_warnings():
            # pycocotools' decoder trips numpy 2's __array__ copy deprecation; nothing to act on.
            warnings.simplefilter("ignore", DeprecationWarning)
            masks = torch.from_numpy(
                np.stack([self.coco.annToMask(a) for a in anns]) if anns
                else np.zeros((0, height, width), np.uint8)
            )  # [K, H, W]
        image = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
        target = {"boxes": boxes, "labels": labels, "masks": masks,
                  "image_id": torch.tensor(image_id)}
        return image, target


def _require(entry: Any, keys: Sequence[str], what: str, path: Path) -> None:
    if not isinstance(entry, Mapping):
        raise DataError(f"{path}: each {what} must be a JSON object, got {entry!r:.80}")
    absent = [key for key in keys if key not in entry]
    if absent:
        raise DataError(
            f"{what} {entry.get('id', '(no id)')} in {path} lacks {', '.join(map(repr, absent))}"
        )


def _clipped_box(bbox: Any, width: int, height: int) -> list[float] | None:
    """COCO ``[x, y, w, h]`` -> ``[x1, y1, x2, y2]`` clipped to the image, or None without
    area."""
    if not isinstance(bbox, Sequence) or len(bbox) != 4:
        return None
    x, y, w, h = (float(v) for v in bbox)
    if not (w > 0 and h > 0):
        return None
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        return None
    return [x1, y1, x2, y2]


def collate_detection(
    batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> DetectionBatch:
    """Pad the images of a batch to its largest height and width (bottom and right, zeros) and
    keep the targets as a list, each with its image's ``size``."""
    if not batch:
        return torch.empty(0, 3, 1, 1, dtype=torch.uint8), []
    height = max(image.shape[1] for image, _ in batch)
    width = max(image.shape[2] for image, _ in batch)
    images = torch.zeros(len(batch), 3, height, width, dtype=torch.uint8)
    targets = []
    for i, (image, target) in enumerate(batch):
        images[i, :, : image.shape[1], : image.shape[2]] = image
        targets.append({**target, "size": torch.tensor(image.shape[1:])})
    return images, targets


def flip_detection(
    image: torch.Tensor, target: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mirror an image ``[3, H, W]`` and its boxes and masks left to right."""
    width = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, 0], boxes[:, 2] = width - target["boxes"][:, 2], width - target["boxes"][:, 0]
    flipped = {**target, "boxes": boxes}
    if "masks" in target:
        flipped["masks"] = target["masks"].flip(-1)
    return image.flip(-1), flipped
