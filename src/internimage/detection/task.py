"""Detection and instance segmentation as a task of the one training loop (Mask R-CNN).

Registered as ``task="detection"`` when imported (``internimage.train.tasks.create_task`` does
that on demand; it needs the ``det`` extra).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools  # noqa: F401 (imported here so that a missing det extra shows at once)
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from internimage.data.scenes import COCO_FOLDER, default_scenes_root, write_scenes_coco
from internimage.detection.data import (
    CocoDetectionDataset,
    DetectionBatch,
    collate_detection,
    flip_detection,
)
from internimage.detection.model import DetectorHeads, DetectorSettings, build_mask_rcnn
from internimage.errors import ConfigError, DataError
from internimage.train.distributed import on_rank_zero_first
from internimage.train.precision import autocast_context
from internimage.train.tasks import (
    TASKS,
    Autocast,
    Task,
    groups_with_heads,
    limit_sets,
    prepare_backbone,
)

__all__ = [
    "COCO_METRICS",
    "DetectionTask",
    "coco_results",
    "detect",
    "evaluate_coco",
    "gather_detections",
    "unpad_batch",
]

#: COCOeval's twelve summary numbers, named as the metrics are reported (``bbox_AP``, ...).
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def coco_results(
    outputs: Sequence[dict[str, torch.Tensor]],
    image_ids: Sequence[int],
    category_ids: Sequence[int],
    *,
    mask_threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """torchvision detections -> COCO's results format (one entry per detection).

    Args:
        outputs: Per image ``{"boxes" [K, 4] xyxy, "labels" [K], "scores" [K], "masks"
            [K, 1, H, W] (optional, probabilities)}`` in original image pixels.
        image_ids: The COCO id of each image.
        category_ids: The COCO id of each label ``k + 1``.
        mask_threshold: Probability above which a mask pixel belongs to the object.

    Returns:
        ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` dicts, with
        ``"segmentation"`` (compressed RLE, counts as text) where masks are given.
    """
    from pycocotools import mask as mask_api

    results: list[dict[str, Any]] = []
    for output, image_id in zip(outputs, image_ids, strict=True):
        boxes = output["boxes"].detach().float().cpu()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        labels = output["labels"].tolist()
        scores = output["scores"].tolist()
        masks = output.get("masks")
        rles: list[Any] = [None] * len(labels)
        if masks is not None and len(labels):
            binary = (masks[:, 0] > mask_threshold).cpu().numpy().astype(np.uint8)  # [K, H, W]
            rles = mask_api.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
        for box, label, score, rle in zip(xywh, labels, scores, rles, strict=True):
            entry: dict[str, Any] = {"image_id": int(image_id),
                                     "category_id": int(category_ids[label - 1]),
                                     "bbox": [round(v, 3) for v in box],
                                     "score": round(float(score), 5)}
            if rle is not None:
                entry["segmentation"] = {"size": list(rle["size"]),
                                         "counts": rle["counts"].decode("ascii")}
            results.append(entry)
    return results


def evaluate_coco(
    ground_truth: Any, results: list[dict[str, Any]], image_ids: Sequence[int],
    *, kinds: Sequence[str] = ("bbox", "segm"),
) -> dict[str, float]:
    """COCO's AP (pycocotools' COCOeval) of ``results`` on ``image_ids``, in percent.

    Args:
        ground_truth: A pycocotools ``COCO`` object.
        results: Detections in COCO's results format (:func:`coco_results`).
        image_ids: The images evaluated (the others of ``ground_truth`` are not counted).
        kinds: ``"bbox"`` and/or ``"segm"``.

    Returns:
        ``{f"{kind}_{name}": value}`` for the names of :data:`COCO_METRICS`; 0 for every metric
        when there is no detection at all.
    """
    from pycocotools.cocoeval import COCOeval

    metrics: dict[str, float] = {}
    for kind in kinds:
        usable = [r for r in results if kind == "bbox" or "segmentation" in r]
        if not usable:
            metrics.update({f"{kind}_{name}": 0.0 for name in COCO_METRICS})
            continue
        with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its tables
            detections = ground_truth.loadRes(usable)
            evaluator = COCOeval(ground_truth, detections, kind)
            evaluator.params.imgIds = sorted(int(i) for i in image_ids)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        for name, value in zip(COCO_METRICS, evaluator.stats[:6], strict=True):
            # COCOeval gives -1 where a size range has no ground truth.
            metrics[f"{kind}_{name}"] = max(float(value), 0.0) * 100.0
    return metrics


def unpad_batch(
    batch: DetectionBatch, device: torch.device
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """A collated batch's images unpadded, as floats in [0, 1] on ``device``, and the targets
    (boxes, labels, masks) there too."""
    padded, targets = batch
    padded = padded.to(device, non_blocking=True)
    images, moved = [], []
    for image, target in zip(padded, targets, strict=True):
        height, width = (int(v) for v in target["size"])
        images.append(image[:, :height, :width].float().div_(255.0))
        moved.append({k: v.to(device, non_blocking=True) for k, v in target.items()
                      if k in ("boxes", "labels", "masks")})
    return images, moved


@torch.no_grad()
def detect(
    model: nn.Module,
    loader: Iterable[DetectionBatch],
    device: torch.device,
    amp_dtype: torch.dtype | None,
    category_ids: Sequence[int],
    *,
    progress: Any | None = None,
) -> tuple[list[int], list[dict[str, Any]]]:
    """Run the detector over ``loader`` (this process's share): the image ids seen and the
    detections in COCO's results format. ``progress`` (a tqdm bar) advances by images."""
    was_training = model.training
    model.eval()
    image_ids: list[int] = []
    results: list[dict[str, Any]] = []
    try:
        for batch in loader:
            images, _ = unpad_batch(batch, device)
            if not images:
                continue
            with autocast_context(device, amp_dtype):
                outputs = model(images)
            ids = [int(t["image_id"]) for t in batch[1]]
            image_ids += ids
            results += coco_results(outputs, ids, category_ids)
            if progress is not None:
                progress.update(len(ids))
    finally:
        model.train(was_training)
    return image_ids, results


def gather_detections(
    image_ids: list[int], results: list[dict[str, Any]]
) -> tuple[list[int], list[dict[str, Any]]]:
    """Every process's image ids and detections, on every process (a collective under
    ``torch.distributed``; the inputs themselves in a single process)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return image_ids, results
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (image_ids, results))
    return ([i for part in gathered for i in part[0]],
            [r for part in gathered for r in part[1]])


class DetectionTask(Task):
    """Mask R-CNN (torchvision) on InternImage: the detector's own losses (RPN, box, mask),
    COCO box and mask AP from pycocotools over the whole validation set."""

    name = "detection"
    main_metric = "bbox_AP"
    curve_metrics = (("bbox_AP", "box AP"), ("segm_AP", "mask AP"))
    curve_label = "validation AP (%)"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.category_ids: tuple[int, ...] = ()
        self._ground_truth: Any = None
        self._generator: torch.Generator | None = None

    def _folder(self) -> tuple[Path, tuple[str, str]]:
        """The COCO-layout folder of the data and its (training, validation) split names."""
        data = self.config.data
        if data.dataset == "fashion-mnist-scenes":
            root = Path(data.root) if data.root is not None else default_scenes_root()
            on_rank_zero_first(lambda: write_scenes_coco(
                root, train_count=data.scenes_train, val_count=data.scenes_val,
                seed=data.scenes_seed, size=data.scene_size,
            ))
            return root / COCO_FOLDER, ("train", "val")
        if data.root is None:
            raise ConfigError("data.dataset='coco' needs data.root (--data-root DIR)")
        return Path(data.root), (data.train_split, data.val_split)

    def build_validation_set(self) -> CocoDetectionDataset:
        """Only the validation set (what evaluation needs; COCO's training annotations alone
        take gigabytes to load); sets :attr:`classes` and the ground truth."""
        folder, (_, split) = self._folder()
        val = CocoDetectionDataset(folder / split, folder / "annotations" /
                                   f"instances_{split}.json")
        self.classes = tuple(val.classes)
        self.category_ids = tuple(val.category_ids)
        self._ground_truth = val.coco
        return val

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        folder, (split, _) = self._folder()
        train_set = CocoDetectionDataset(
            folder / split, folder / "annotations" / f"instances_{split}.json",
            keep_empty=self.config.detection.keep_empty,
        )
        val = self.build_validation_set()
        if val.category_ids != train_set.category_ids:
            raise ConfigError(
                f"the training and validation annotations declare different categories: "
                f"{list(train_set.category_ids)} and {list(val.category_ids)}"
            )
        return limit_sets(self.config.data, train_set, val)

    def collate(self, batch: list[Any]) -> DetectionBatch:
        return collate_detection(batch)

    def _settings(self) -> DetectorSettings:
        data, det = self.config.data, self.config.detection
        return DetectorSettings(
            min_size=det.min_sizes[-1], max_size=det.max_size, image_mean=data.mean,
            image_std=data.std, rpn_post_nms_train=det.proposals_train,
            rpn_pre_nms_test=det.proposals_test, rpn_post_nms_test=det.proposals_test,
            rpn_batch=det.rpn_batch, roi_batch=det.roi_batch,
            score_threshold=det.score_threshold, detections_per_image=det.detections_per_image,
        )

    def build_model(self) -> nn.Module:
        import internimage

        settings, det = self.config.model, self.config.detection
        backbone = internimage.create_model(
            settings.name, num_classes=0, drop_path_rate=settings.drop_path_rate,
            **settings.architecture_overrides(),
        )
        heads = DetectorHeads(fpn_channels=det.fpn_channels,
                              box_fc_channels=det.box_fc_channels, mask_convs=det.mask_convs,
                              mask_channels=det.mask_channels)
        model = build_mask_rcnn(backbone, num_classes=len(self.classes), heads=heads,
                                settings=self._settings(), frozen_stages=det.frozen_stages)
        # Training draws the shorter side from every scale given (torchvision's transform
        # picks one per image); evaluation uses the last.
        model.transform.min_size = tuple(det.min_sizes)
        prepare_backbone(model.backbone.body, settings)
        return model

    def setup(self, device: torch.device) -> None:
        self._generator = torch.Generator().manual_seed(self.config.seed)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        optim = self.config.optim
        return groups_with_heads(model, model.backbone.body, optim.weight_decay,
                                 layer_decay=optim.layer_decay)

    def training_losses(
        self, model: nn.Module, batch: DetectionBatch, device: torch.device, autocast: Autocast
    ) -> dict[str, torch.Tensor]:
        images, targets = unpad_batch(batch, device)
        flip = self.config.detection.hflip
        if flip > 0:
            assert self._generator is not None, "setup() was not called"
            draws = torch.rand(len(images), generator=self._generator).tolist()
            for i, draw in enumerate(draws):
                if draw < flip:
                    images[i], targets[i] = flip_detection(images[i], targets[i])
        with autocast():
            losses = model(images, targets)
        total = sum(loss.float() for loss in losses.values())
        return {"loss": total, **{k: v.detach().float() for k, v in losses.items()}}

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        loader: Iterable[DetectionBatch],
        device: torch.device,
        amp_dtype: torch.dtype | None,
    ) -> dict[str, float]:
        image_ids, results = gather_detections(
            *detect(model, loader, device, amp_dtype, self.category_ids)
        )
        if not image_ids:  # known to every process after the gather
            raise DataError("no validation image to evaluate")
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        metrics: list[Any] = [None]
        if not distributed or dist.get_rank() == 0:
            metrics[0] = evaluate_coco(self._ground_truth, results, image_ids)
        if distributed:
            dist.broadcast_object_list(metrics, src=0)
        return metrics[0]

    def describe(self, metrics: dict[str, float]) -> str:
        return f"box AP {metrics['bbox_AP']:.2f} mask AP {metrics['segm_AP']:.2f}"

    def checkpoint_metadata(self) -> dict[str, Any]:
        data, det = self.config.data, self.config.detection
        return {
            "classes": list(self.classes),
            "category_ids": list(self.category_ids),
            "mean": list(data.mean),
            "std": list(data.std),
            "min_size": det.min_sizes[-1],
            "max_size": det.max_size,
        }


TASKS[DetectionTask.name] = DetectionTask
