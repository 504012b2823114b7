"""Detection and instance segmentation with InternImage backbones: Mask R-CNN on torchvision.

Needs the ``det`` extra (``pip install internimage[det]``: torchvision and pycocotools);
``import internimage`` does not.
"""

from internimage.detection.mmdet import (
    convert_mmdet_state_dict,
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
    COCO_MODELS,
    DetectionWeights,
    create_detection_model,
)

__all__ = [
    "COCO_CATEGORY_IDS",
    "COCO_CLASSES",
    "COCO_MODELS",
    "DetectionWeights",
    "create_detection_model",
    "FPN_STRIDES",
    "AlignedMultiScaleRoIAlign",
    "DetectorHeads",
    "DetectorSettings",
    "FractionalAnchorGenerator",
    "InternImageFPN",
    "SymmetricClampBoxCoder",
    "build_mask_rcnn",
    "convert_mmdet_state_dict",
    "detection_param_groups",
    "from_mmdet",
    "mask_rcnn_from_mmdet_config",
]
