"""The released InternImage Mask R-CNN COCO models, by name, with their weights from the hub;
COCO's class names and category ids."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchvision.models.detection import MaskRCNN

from internimage.detection.mmdet import from_mmdet, mask_rcnn_from_mmdet_config
from internimage.detection.model import DetectorSettings
from internimage.errors import UsageError
from internimage.models.pretrained import dense_backbone_arguments, released_file

__all__ = ["COCO_CATEGORY_IDS", "COCO_CLASSES", "COCO_MODELS", "DetectionWeights",
           "create_detection_model"]

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


@dataclass(frozen=True)
class DetectionWeights:
    """A released COCO Mask R-CNN model.

    Attributes:
        name: Name for :func:`create_detection_model`.
        variant: The backbone variant.
        file_name: The mmdet checkpoint in the hub repository
            :data:`~internimage.models.pretrained.HUB_REPO`.
        schedule: ``"1x"`` (12 epochs) or ``"3x"`` (36 epochs, multi-scale training).
        ap: Published COCO val2017 box AP and mask AP.
        backbone_overrides: Backbone settings of the dense config that differ from the
            classifier's (InternImage-T has layer scale 1.0 there, the classifier none).
    """

    name: str
    variant: str
    file_name: str
    schedule: str
    ap: tuple[float, float]
    backbone_overrides: tuple[tuple[str, Any], ...] = ()

    def model_config(self, num_classes: int = 80) -> dict[str, Any]:
        """The ``model`` dict of the upstream mmdet config, as :func:`from_mmdet` takes it."""
        backbone = dense_backbone_arguments(self.variant, self.backbone_overrides)
        widths = [backbone["channels"] * 2**i for i in range(4)]
        return {
            "backbone": backbone,
            "neck": {"in_channels": widths, "out_channels": 256, "num_outs": 5},
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


def _weights(variant: str, schedule: str, ap: tuple[float, float]) -> DetectionWeights:
    letter = variant.rsplit("_", 1)[1]
    overrides = (("layer_scale", 1.0),) if letter == "t" else ()
    return DetectionWeights(
        f"mask_rcnn_internimage_{letter}_{schedule}_coco", variant,
        f"mask_rcnn_internimage_{letter}_fpn_{schedule}_coco.pth", schedule, ap, overrides,
    )


COCO_MODELS: dict[str, DetectionWeights] = {
    w.name: w
    for w in (
        _weights("internimage_t", "1x", (47.2, 42.5)),
        _weights("internimage_t", "3x", (49.1, 43.7)),
        _weights("internimage_s", "1x", (47.8, 43.3)),
        _weights("internimage_s", "3x", (49.7, 44.5)),
        _weights("internimage_b", "1x", (48.8, 44.0)),
        _weights("internimage_b", "3x", (50.3, 44.8)),
    )
}


def create_detection_model(
    name: str,
    *,
    pretrained: bool | str | os.PathLike[str] = False,
    num_classes: int = 80,
    settings: DetectorSettings | None = None,
) -> MaskRCNN:
    """A released COCO Mask R-CNN by name (see :data:`COCO_MODELS`).

    Args:
        name: E.g. ``"mask_rcnn_internimage_t_1x_coco"``.
        pretrained: False (random weights), True (the released mmdet checkpoint through the
            Hugging Face cache; works offline when cached), or the path of that checkpoint.
        num_classes: Object classes of a model without weights (the released ones have 80).
        settings: Resizing and post-processing (default: upstream's COCO test settings).

    Raises:
        UsageError: Unknown name, or released weights asked for with another class count.
        WeightsUnavailableError: The weights are neither cached nor downloadable.
    """
    if name not in COCO_MODELS:
        raise UsageError(f"unknown detection model {name!r}; available: {', '.join(COCO_MODELS)}")
    weights = COCO_MODELS[name]
    if pretrained is False:
        model, _ = mask_rcnn_from_mmdet_config(weights.model_config(num_classes),
                                               settings=settings)
        return model
    if num_classes != 80:
        raise UsageError(f"the released weights of {name} have 80 COCO classes, not {num_classes}")
    path = released_file(weights.file_name) if pretrained is True else Path(pretrained)
    return from_mmdet(path, weights.model_config(), settings=settings)
