"""Detectors ready for inference: from a training checkpoint or a released COCO preset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.models.detection import MaskRCNN

from internimage.errors import UsageError

__all__ = ["LoadedDetector", "load_detector"]


@dataclass(frozen=True)
class LoadedDetector:
    """A Mask R-CNN in eval mode with what its inference and evaluation need.

    Attributes:
        model: torchvision's ``MaskRCNN`` on its device (it resizes and normalises itself).
        classes: Class names in label order (label ``k + 1`` is ``classes[k]``).
        category_ids: The COCO category id of each class.
        config: The training config of a checkpoint (its data settings), None for a preset.
    """

    model: MaskRCNN
    classes: tuple[str, ...]
    category_ids: tuple[int, ...]
    config: object | None = None


def load_detector(
    *,
    checkpoint: str | Path | None = None,
    pretrained: str | None = None,
    use_ema: bool = False,
    device: torch.device | str = "cpu",
) -> LoadedDetector:
    """Build a detector from exactly one source.

    Args:
        checkpoint: A detection training checkpoint of this library.
        pretrained: A released COCO detector's name (``internimage list --task
            instance_segmentation``).
        use_ema: Take the EMA weights of a training checkpoint.
        device: Where to put the model.

    Raises:
        UsageError: Both or neither source, another task's checkpoint, missing EMA weights.
        WeightsUnavailableError: Released weights neither cached nor downloadable.
    """
    from internimage.catalog.table import find_release
    from internimage.detection.pretrained import (
        COCO_CATEGORY_IDS,
        COCO_CLASSES,
        create_detection_model,
    )
    from internimage.train.tasks import load_task_checkpoint

    if (checkpoint is None) == (pretrained is None):
        raise UsageError("give exactly one of a checkpoint or a pretrained model name")
    device = torch.device(device)
    if pretrained is not None:
        release = find_release(pretrained)
        if release.task in ("instance_segmentation", "detection") and release.classes != "coco":
            raise UsageError(f"{release.name} predicts {release.classes} classes; inference "
                             f"here runs COCO models only")
        if use_ema:
            raise UsageError("released models have no EMA weights; drop --ema")
        model = create_detection_model(release.name, pretrained=True)
        return LoadedDetector(model=model.to(device).eval(), classes=COCO_CLASSES,
                              category_ids=COCO_CATEGORY_IDS)
    task, model, payload = load_task_checkpoint(checkpoint, "detection", use_ema=use_ema)
    return LoadedDetector(
        model=model.to(device).eval(), classes=task.classes,
        category_ids=tuple(int(i) for i in payload["category_ids"]), config=task.config,
    )
