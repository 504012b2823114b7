"""The released InternImage Mask R-CNN and Cascade Mask R-CNN models, by name, with their
weights from the hub; COCO's class names and category ids.

Which files exist, and what each was trained on, is the catalogue's
(:mod:`internimage.catalog`); this module builds the detector of a release from upstream's
mmdet settings.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from torchvision.models.detection import MaskRCNN

from internimage.catalog.builders import (
    BUILDERS,
    BuiltModel,
    build_release,
    dense_backbone,
    load_release_weights,
)
from internimage.catalog.table import Release, find_release
from internimage.detection.cascade import CASCADE_STAGE_STDS
from internimage.detection.mmdet import (
    cascade_mask_rcnn_from_mmdet_config,
    convert_mmdet_state_dict,
    mask_rcnn_from_mmdet_config,
)
from internimage.detection.model import DetectorSettings
from internimage.errors import UsageError

__all__ = ["COCO_CATEGORY_IDS", "COCO_CLASSES", "cascade_mask_rcnn_for_release",
           "cascade_mask_rcnn_model_config", "create_detection_model", "mask_rcnn_for_release",
           "mask_rcnn_model_config"]

#: COCO's 80 object classes, in category-id order (model label k + 1 is class k).
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)

#: The COCO category id of each class in :data:`COCO_CLASSES` (ids run 1..90 with gaps: the
#: annotation files keep ten ids of the 2014 paper's 91 classes that were never annotated).
COCO_CATEGORY_IDS: tuple[int, ...] = (
    *range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70,
    *range(72, 83), *range(84, 91),
)


# Upstream's Mask R-CNN configs: FPN of 256 channels over the four stages with five outputs,
# RPN with one scale (8) and three ratios, two shared FCs of 1024, a mask head of 4 convs.
def mask_rcnn_model_config(release: Release, num_classes: int) -> dict[str, Any]:
    """The ``model`` dict of the release's upstream mmdet config, as :func:`from_mmdet` takes
    it."""
    backbone = dense_backbone(release)
    widths = [backbone["channels"] * 2**i for i in range(4)]
    return {
        "backbone": backbone,
        # FlashInternImage's detectors use upstream's FPN_vitdet (LayerNorms, no conv biases).
        "neck": {"type": "FPN_vitdet" if release.family == "flash_internimage" else "FPN",
                 "in_channels": widths, "out_channels": 256, "num_outs": 5},
        "rpn_head": {"in_channels": 256, "feat_channels": 256,
                     "anchor_generator": {"scales": [8], "ratios": [0.5, 1.0, 2.0],
                                          "strides": [4, 8, 16, 32, 64]}},
        "roi_head": {
            "bbox_head": {"in_channels": 256, "fc_out_channels": 1024, "roi_feat_size": 7,
                          "num_classes": num_classes},
            "mask_head": {"num_convs": 4, "in_channels": 256, "conv_out_channels": 256,
                          "num_classes": num_classes},
        },
    }


def mask_rcnn_for_release(
    release: Release, num_classes: int, settings: DetectorSettings | None = None
) -> BuiltModel:
    """The torchvision Mask R-CNN of an upstream Mask R-CNN release (random weights) and its
    key conversion.

    Args:
        release: The release.
        num_classes: Object classes (the model has one more: the background).
        settings: Resizing and post-processing (default: upstream's COCO test settings).
    """
    model, _ = mask_rcnn_from_mmdet_config(mask_rcnn_model_config(release, num_classes),
                                           settings=settings)
    return BuiltModel(model, convert_mmdet_state_dict)


# Upstream's Cascade Mask R-CNN configs: the same FPN and RPN, three ConvFCBBoxHead stages
# (4 convolutions of 256 with (Sync)BN, one FC of 1024) and three FCN mask heads.
def cascade_mask_rcnn_model_config(release: Release, num_classes: int) -> dict[str, Any]:
    """The ``model`` dict of a Cascade Mask R-CNN release's upstream mmdet config."""
    base = mask_rcnn_model_config(release, num_classes)
    box_heads = [
        {"type": "ConvFCBBoxHead", "num_shared_convs": 4, "num_shared_fcs": 1,
         "in_channels": 256, "conv_out_channels": 256, "fc_out_channels": 1024,
         "roi_feat_size": 7, "num_classes": num_classes, "reg_class_agnostic": False,
         "norm_cfg": {"type": "SyncBN", "requires_grad": True},
         "bbox_coder": {"target_means": [0.0] * 4, "target_stds": list(stds)}}
        for stds in CASCADE_STAGE_STDS
    ]
    return {
        **base,
        "type": "CascadeRCNN",
        "roi_head": {"type": "CascadeRoIHead", "num_stages": len(box_heads),
                     "bbox_head": box_heads, "mask_head": base["roi_head"]["mask_head"]},
    }


def cascade_mask_rcnn_for_release(
    release: Release, num_classes: int, settings: DetectorSettings | None = None
) -> BuiltModel:
    """The Cascade Mask R-CNN of an upstream release (random weights) and its key conversion.

    Args:
        release: The release.
        num_classes: Object classes (the model has one more: the background).
        settings: Resizing and post-processing (default: upstream's COCO test settings).
    """
    model, _ = cascade_mask_rcnn_from_mmdet_config(
        cascade_mask_rcnn_model_config(release, num_classes), settings=settings)
    return BuiltModel(model, convert_mmdet_state_dict)


def create_detection_model(
    name: str,
    *,
    pretrained: bool | str | os.PathLike[str] = False,
    num_classes: int | None = None,
    settings: DetectorSettings | None = None,
) -> MaskRCNN:
    """A released detector by name (``internimage list --task instance_segmentation``): a Mask
    R-CNN or a Cascade Mask R-CNN, as the catalogue's builder of the release says.

    Args:
        name: The release's name, file name or alias, e.g.
            ``"mask_rcnn_internimage_t_fpn_1x_coco"`` or ``"mask_rcnn_internimage_t_1x_coco"``.
        pretrained: False (random weights), True (the released mmdet checkpoint through the
            Hugging Face cache; works offline when cached), or the path of that checkpoint.
        num_classes: Object classes of a model without weights (default: the release's).
        settings: Resizing and post-processing (default: upstream's COCO test settings).

    Returns:
        The model, in eval mode when weights were loaded.

    Raises:
        UsageError: Unknown name, not a detector, a model not built yet, or released weights
            asked for with another class count.
        WeightsUnavailableError: The weights are neither cached nor downloadable.
    """
    release = find_release(name)
    if release.task not in ("instance_segmentation", "detection"):
        raise UsageError(f"{release.name} is a {release.task.replace('_', ' ')} model, not a "
                         f"detector")
    if release.builder not in BUILDERS:
        build_release(release)  # raises, saying that it is not built yet
    if pretrained is not False and num_classes not in (None, release.num_classes):
        raise UsageError(f"the released weights of {release.name} have {release.num_classes} "
                         f"classes, not {num_classes}")
    classes = release.num_classes if num_classes is None else num_classes
    # The catalogue names the builder of each release; the detection builders take settings.
    module, function = BUILDERS[release.builder].split(":")
    build: Callable[[Release, int, DetectorSettings | None], BuiltModel] = getattr(
        importlib.import_module(module), function)
    built = build(release, classes, settings)
    if pretrained is False:
        return built.model
    load_release_weights(built, release, pretrained)
    return built.model.eval()
