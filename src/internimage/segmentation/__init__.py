"""Semantic segmentation with InternImage backbones: UperNet through transformers.

Needs the ``seg`` extra (``pip install internimage[seg]``); ``import internimage`` does not.
"""

from internimage.segmentation.evaluate import test_settings
from internimage.segmentation.inference import (
    SegmentationInference,
    predict_batch,
    predict_logits,
    predict_mask,
)
from internimage.segmentation.loading import LoadedSegmenter, load_segmenter
from internimage.segmentation.metrics import SegmentationEvaluator
from internimage.segmentation.pretrained import (
    ADE20K_MODELS,
    SegmentationWeights,
    create_segmentation_model,
)
from internimage.segmentation.upernet import (
    convert_mmseg_state_dict,
    from_mmseg,
    upernet_config,
    upernet_from_mmseg_config,
)

__all__ = [
    "ADE20K_MODELS",
    "LoadedSegmenter",
    "SegmentationEvaluator",
    "SegmentationInference",
    "SegmentationWeights",
    "convert_mmseg_state_dict",
    "create_segmentation_model",
    "from_mmseg",
    "load_segmenter",
    "predict_batch",
    "predict_logits",
    "predict_mask",
    "test_settings",
    "upernet_config",
    "upernet_from_mmseg_config",
]
