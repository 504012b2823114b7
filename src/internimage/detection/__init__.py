"""Detection and instance segmentation with InternImage backbones: Mask R-CNN and Cascade Mask
R-CNN on torchvision.

Needs the ``det`` extra (``pip install internimage[det]``: torchvision and pycocotools);
``import internimage`` does not.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Module -> the public names it defines, imported on first use: the task's settings
# (internimage.detection.settings) load without torchvision, as the training config needs them.
_MODULES = {
    "internimage.detection.cascade": (
        "CASCADE_STAGE_STDS", "CascadeRoIHeads", "build_cascade_mask_rcnn",
    ),
    "internimage.detection.inference": ("detect_preprocessed",),
    "internimage.detection.mmdet": (
        "cascade_mask_rcnn_from_mmdet_config", "convert_mmdet_state_dict",
        "detector_from_mmdet_config", "from_mmdet", "mask_rcnn_from_mmdet_config",
    ),
    "internimage.detection.model": (
        "FPN_STRIDES", "AlignedMultiScaleRoIAlign", "DetectorHeads", "DetectorSettings",
        "FractionalAnchorGenerator", "InternImageFPN", "SymmetricClampBoxCoder", "build_mask_rcnn",
        "detection_param_groups",
    ),
    "internimage.detection.pretrained": (
        "COCO_CATEGORY_IDS", "COCO_CLASSES", "cascade_mask_rcnn_for_release",
        "cascade_mask_rcnn_model_config", "create_detection_model", "mask_rcnn_for_release",
        "mask_rcnn_model_config",
    ),
    "internimage.detection.settings": ("DetectionConfig",),
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "CASCADE_STAGE_STDS",
    "COCO_CATEGORY_IDS",
    "COCO_CLASSES",
    "FPN_STRIDES",
    "AlignedMultiScaleRoIAlign",
    "CascadeRoIHeads",
    "DetectionConfig",
    "DetectorHeads",
    "DetectorSettings",
    "FractionalAnchorGenerator",
    "InternImageFPN",
    "SymmetricClampBoxCoder",
    "build_cascade_mask_rcnn",
    "build_mask_rcnn",
    "cascade_mask_rcnn_for_release",
    "cascade_mask_rcnn_from_mmdet_config",
    "cascade_mask_rcnn_model_config",
    "convert_mmdet_state_dict",
    "create_detection_model",
    "detect_preprocessed",
    "detection_param_groups",
    "detector_from_mmdet_config",
    "from_mmdet",
    "mask_rcnn_for_release",
    "mask_rcnn_from_mmdet_config",
    "mask_rcnn_model_config",
]

if TYPE_CHECKING:
    from internimage.detection.cascade import (
        CASCADE_STAGE_STDS,
        CascadeRoIHeads,
        build_cascade_mask_rcnn,
    )
    from internimage.detection.inference import detect_preprocessed
    from internimage.detection.mmdet import (
        cascade_mask_rcnn_from_mmdet_config,
        convert_mmdet_state_dict,
        detector_from_mmdet_config,
        from_mmdet,
        mask_rcnn_from_mmdet_config,
    )
    from internimage.detection.model import (
        FPN_STRIDES,
        AlignedMultiScaleRoIAlign,
        DetectorHeads,
        DetectorSettings,
        FractionalAnchorGenerator,
        InternImageFPN,
        SymmetricClampBoxCoder,
        build_mask_rcnn,
        detection_param_groups,
    )
    from internimage.detection.pretrained import (
        COCO_CATEGORY_IDS,
        COCO_CLASSES,
        cascade_mask_rcnn_for_release,
        cascade_mask_rcnn_model_config,
        create_detection_model,
        mask_rcnn_for_release,
        mask_rcnn_model_config,
    )
    from internimage.detection.settings import DetectionConfig


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
