"""Segmentation models ready for inference: from a training checkpoint or a released preset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from internimage.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from internimage.errors import UsageError
from internimage.segmentation.data import ADE20K_CLASSES

__all__ = ["LoadedSegmenter", "load_segmenter"]


@dataclass(frozen=True)
class LoadedSegmenter:
    """A segmentation model in eval mode with what its inference needs.

    Attributes:
        model: transformers' ``UperNetForSemanticSegmentation`` on its device.
        classes: Class names in label order.
        mean: Normalisation mean (RGB, [0, 1] units).
        std: Normalisation standard deviation.
        crop_size: Training crop side (the window of sliding-window inference).
        ignore_index: Label value that is not counted.
        reduce_zero_label: The labels of its data were read with ADE20K's convention.
        config: The training config of a checkpoint (its data settings), None for a preset.
    """

    model: nn.Module
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_size: int
    ignore_index: int = 255
    reduce_zero_label: bool = True
    config: object | None = None


def load_segmenter(
    *,
    checkpoint: str | Path | None = None,
    pretrained: str | None = None,
    use_ema: bool = False,
    device: torch.device | str = "cpu",
) -> LoadedSegmenter:
    """Build a segmentation model from exactly one source.

    Args:
        checkpoint: A segmentation training checkpoint of this library.
        pretrained: A released ADE20K model's name (``internimage list --task
            semantic_segmentation``).
        use_ema: Take the EMA weights of a training checkpoint.
        device: Where to put the model.

    Raises:
        UsageError: Both or neither source, a classification checkpoint, missing EMA weights.
    """
    from internimage.segmentation.pretrained import (
        create_segmentation_model,
        find_segmentation_release,
    )
    from internimage.train.tasks import load_task_checkpoint

    if (checkpoint is None) == (pretrained is None):
        raise UsageError("give exactly one of a checkpoint or a pretrained model name")
    device = torch.device(device)
    if pretrained is not None:
        release = find_segmentation_release(pretrained)
        if release.classes != "ade20k" or not isinstance(release.crop, tuple) or (
            release.crop[0] != release.crop[1]
        ):
            raise UsageError(
                f"{release.name} ({release.classes}, {release.crop[0]}x{release.crop[1]} "
                f"windows) is not an ADE20K model; inference here runs ADE20K's square windows "
                f"only: build it in Python with create_segmentation_model"
                if isinstance(release.crop, tuple) else
                f"{release.name} has no training crop; inference here needs one"
            )
        if use_ema:
            raise UsageError("released models have no EMA weights; drop --ema")
        model = create_segmentation_model(release.name, pretrained=True)
        return LoadedSegmenter(
            model=model.to(device).eval(), classes=ADE20K_CLASSES, mean=IMAGENET_MEAN,
            std=IMAGENET_STD, crop_size=release.crop[0],
        )
    task, model, payload = load_task_checkpoint(checkpoint, "segmentation", use_ema=use_ema)
    return LoadedSegmenter(
        model=model.to(device).eval(),
        classes=task.classes,
        mean=tuple(payload["mean"]),
        std=tuple(payload["std"]),
        crop_size=int(payload["image_size"]),
        ignore_index=int(payload["ignore_index"]),
        reduce_zero_label=bool(payload["reduce_zero_label"]),
        config=task.config,
    )
